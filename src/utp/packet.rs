//! uTP packet format (BEP 29): the 20-byte header, the extension chain and
//! the selective ACK bitmask.
//!
//! Layer: pure core. Owns the byte layout and nothing else (no connection
//! state). Decoding borrows the datagram (the payload and the SACK bitmask
//! are slices of it) and never allocates; encoding writes into a caller's
//! buffer.
//!
//! ```text
//!  0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! +---------------+---------------+---------------+---------------+
//! | timestamp_difference_microseconds                             |
//! +---------------+---------------+---------------+---------------+
//! | wnd_size                                                      |
//! +---------------+---------------+---------------+---------------+
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Extensions follow the header as a chain of `[next type][len][len bytes]`,
//! the first type named by the header's `extension` byte. Type 1 is the
//! selective ACK: bit `i` of the bitmask (byte `i / 8`, bit `i % 8`, least
//! significant first) acknowledges `ack_nr + 2 + i`.
//!
//! Invariants: `decode` returns without panicking for every input, walks at
//! most [`MAX_EXTENSIONS`] extensions, and accepts a SACK of at most
//! [`MAX_SACK_BYTES`]; for every header `h`, `decode(encode(h))` gives `h` back.

/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 20;

/// The only protocol version (low nibble of byte 0).
pub const VERSION: u8 = 1;

/// Extension type of the selective ACK.
pub const EXTENSION_SACK: u8 = 1;

/// Most extensions walked in one packet (real peers send at most two: SACK
/// and libtorrent's close reason). A longer chain is an error.
pub const MAX_EXTENSIONS: usize = 8;

/// Longest selective ACK bitmask accepted and sent (256 packets past
/// `ack_nr + 1`; libtorrent sends at most 32 bytes as well).
pub const MAX_SACK_BYTES: usize = 32;

/// The five packet types (high nibble of byte 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Payload (`ST_DATA`).
    Data = 0,
    /// End of the sender's stream (`ST_FIN`); its `seq_nr` is the last one.
    Fin = 1,
    /// An acknowledgement without payload (`ST_STATE`).
    State = 2,
    /// Abort the connection (`ST_RESET`).
    Reset = 3,
    /// Open a connection (`ST_SYN`).
    Syn = 4,
}

impl PacketType {
    fn from_nibble(n: u8) -> Option<Self> {
        Some(match n {
            0 => Self::Data,
            1 => Self::Fin,
            2 => Self::State,
            3 => Self::Reset,
            4 => Self::Syn,
            _ => return None,
        })
    }
}

/// Why a datagram is not a uTP packet we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the 20-byte header.
    #[error("datagram of {len} bytes is shorter than the 20-byte uTP header")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Not version 1.
    #[error("uTP version {version} is not 1")]
    BadVersion {
        /// The low nibble of byte 0.
        version: u8,
    },
    /// Type nibble above 4.
    #[error("uTP packet type {kind} is unknown")]
    BadType {
        /// The high nibble of byte 0.
        kind: u8,
    },
    /// An extension runs past the end of the datagram.
    #[error("uTP extension runs past the end of the datagram")]
    TruncatedExtension,
    /// More than [`MAX_EXTENSIONS`] extensions.
    #[error("more than {MAX_EXTENSIONS} uTP extensions")]
    TooManyExtensions,
    /// A SACK longer than [`MAX_SACK_BYTES`] or empty.
    #[error("selective ACK of {len} bytes (accepted: 1..={MAX_SACK_BYTES})")]
    BadSack {
        /// Its length.
        len: usize,
    },
}

/// The fixed header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet type.
    pub kind: PacketType,
    /// The receiver's id for the connection (the initiator's own id in a SYN).
    pub connection_id: u16,
    /// The sender's clock when it sent the packet, in microseconds (wraps).
    pub timestamp_us: u32,
    /// The sender's clock minus our timestamp in the last packet it received
    /// from us: our one-way delay plus the clocks' offset (0 when unknown).
    pub timestamp_difference_us: u32,
    /// Bytes the sender can still receive.
    pub wnd_size: u32,
    /// Sequence number of this packet (of the next data packet for STATE).
    pub seq_nr: u16,
    /// Last sequence number the sender received in order.
    pub ack_nr: u16,
}

/// A decoded packet: header, selective ACK bitmask and payload, borrowed from
/// the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The header.
    pub header: Header,
    /// The SACK bitmask, when the packet carries one.
    pub sack: Option<&'a [u8]>,
    /// The payload after the extensions.
    pub payload: &'a [u8],
}

/// Looks at byte 0 only: is this datagram plausibly uTP v1? The shared UDP
/// port uses it to tell uTP from DHT (`d...`) and tracker replies.
pub fn looks_like_utp(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram[0] & 0x0f == VERSION
        && PacketType::from_nibble(datagram[0] >> 4).is_some()
}

/// Decodes one datagram.
pub fn decode(datagram: &[u8]) -> Result<Packet<'_>, PacketError> {
    if datagram.len() < HEADER_LEN {
        return Err(PacketError::TooShort { len: datagram.len() });
    }
    let version = datagram[0] & 0x0f;
    if version != VERSION {
        return Err(PacketError::BadVersion { version });
    }
    let kind = PacketType::from_nibble(datagram[0] >> 4)
        .ok_or(PacketError::BadType { kind: datagram[0] >> 4 })?;
    let be16 = |at: usize| u16::from_be_bytes([datagram[at], datagram[at + 1]]);
    let be32 = |at: usize| {
        u32::from_be_bytes([datagram[at], datagram[at + 1], datagram[at + 2], datagram[at + 3]])
    };
    let header = Header {
        kind,
        connection_id: be16(2),
        timestamp_us: be32(4),
        timestamp_difference_us: be32(8),
        wnd_size: be32(12),
        seq_nr: be16(16),
        ack_nr: be16(18),
    };
    let mut next = datagram[1];
    let mut at = HEADER_LEN;
    let mut sack = None;
    let mut walked = 0;
    while next != 0 {
        walked += 1;
        if walked > MAX_EXTENSIONS {
            return Err(PacketError::TooManyExtensions);
        }
        if datagram.len() < at + 2 {
            return Err(PacketError::TruncatedExtension);
        }
        let (kind, len) = (next, datagram[at + 1] as usize);
        next = datagram[at];
        let body = datagram.get(at + 2..at + 2 + len).ok_or(PacketError::TruncatedExtension)?;
        if kind == EXTENSION_SACK {
            if len == 0 || len > MAX_SACK_BYTES {
                return Err(PacketError::BadSack { len });
            }
            sack = Some(body);
        }
        at += 2 + len;
    }
    Ok(Packet { header, sack, payload: &datagram[at..] })
}

/// Writes a header and, when given, a SACK extension into `out`; returns the
/// bytes written (the payload goes right after). `out` must hold
/// [`HEADER_LEN`] + 2 + [`MAX_SACK_BYTES`] bytes.
pub fn encode_header(header: &Header, sack: Option<&[u8]>, out: &mut [u8]) -> usize {
    let sack = sack.filter(|s| !s.is_empty());
    out[0] = ((header.kind as u8) << 4) | VERSION;
    out[1] = if sack.is_some() { EXTENSION_SACK } else { 0 };
    out[2..4].copy_from_slice(&header.connection_id.to_be_bytes());
    out[4..8].copy_from_slice(&header.timestamp_us.to_be_bytes());
    out[8..12].copy_from_slice(&header.timestamp_difference_us.to_be_bytes());
    out[12..16].copy_from_slice(&header.wnd_size.to_be_bytes());
    out[16..18].copy_from_slice(&header.seq_nr.to_be_bytes());
    out[18..20].copy_from_slice(&header.ack_nr.to_be_bytes());
    match sack {
        Some(bits) => {
            let len = bits.len().min(MAX_SACK_BYTES);
            out[20] = 0;
            out[21] = len as u8;
            out[22..22 + len].copy_from_slice(&bits[..len]);
            22 + len
        }
        None => HEADER_LEN,
    }
}

/// `a` comes before `b` in 16-bit sequence space (half the space ahead).
pub fn seq_less(a: u16, b: u16) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: PacketType) -> Header {
        Header {
            kind,
            connection_id: 0xbeef,
            timestamp_us: 0x0102_0304,
            timestamp_difference_us: 0xa0b0_c0d0,
            wnd_size: 1 << 20,
            seq_nr: 65535,
            ack_nr: 7,
        }
    }

    #[test]
    fn round_trip_with_and_without_sack() {
        let mut buf = [0u8; 128];
        for kind in [
            PacketType::Data,
            PacketType::Fin,
            PacketType::State,
            PacketType::Reset,
            PacketType::Syn,
        ] {
            let h = header(kind);
            let n = encode_header(&h, None, &mut buf);
            assert_eq!(n, HEADER_LEN);
            buf[n..n + 3].copy_from_slice(b"abc");
            let p = decode(&buf[..n + 3]).unwrap();
            assert_eq!(p.header, h);
            assert_eq!(p.sack, None);
            assert_eq!(p.payload, b"abc");
            let n = encode_header(&h, Some(&[1, 2, 3, 4]), &mut buf);
            assert_eq!(n, 26);
            let p = decode(&buf[..n]).unwrap();
            assert_eq!(p.header, h);
            assert_eq!(p.sack, Some(&[1u8, 2, 3, 4][..]));
            assert!(p.payload.is_empty());
            assert!(looks_like_utp(&buf[..n]));
        }
    }

    #[test]
    fn known_bytes_from_the_spec_layout() {
        // A SYN as libtorrent sends it: type 4, version 1 -> 0x41.
        let mut d = [0u8; 20];
        d[0] = 0x41;
        d[2..4].copy_from_slice(&1234u16.to_be_bytes());
        d[16..18].copy_from_slice(&1u16.to_be_bytes());
        let p = decode(&d).unwrap();
        assert_eq!(p.header.kind, PacketType::Syn);
        assert_eq!(p.header.connection_id, 1234);
        assert_eq!(p.header.seq_nr, 1);
    }

    #[test]
    fn rejects_bad_input_with_clear_errors() {
        assert_eq!(decode(&[0x41; 19]), Err(PacketError::TooShort { len: 19 }));
        let mut d = [0u8; 20];
        d[0] = 0x42;
        assert_eq!(decode(&d), Err(PacketError::BadVersion { version: 2 }));
        d[0] = 0x51;
        assert_eq!(decode(&d), Err(PacketError::BadType { kind: 5 }));
        // A bencoded DHT message is not uTP.
        assert!(!looks_like_utp(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"));
        let mut d = vec![0x21, 1];
        d.extend_from_slice(&[0; 18]);
        assert_eq!(decode(&d), Err(PacketError::TruncatedExtension));
        d.extend_from_slice(&[0, 40]);
        d.extend_from_slice(&[0; 40]);
        assert_eq!(decode(&d), Err(PacketError::BadSack { len: 40 }));
        // A chain of unknown extensions that never ends.
        let mut d = vec![0x21, 9];
        d.extend_from_slice(&[0; 18]);
        for _ in 0..20 {
            d.extend_from_slice(&[9, 0]);
        }
        assert_eq!(decode(&d), Err(PacketError::TooManyExtensions));
    }

    #[test]
    fn sequence_order_wraps() {
        assert!(seq_less(1, 2));
        assert!(seq_less(65535, 0));
        assert!(!seq_less(0, 65535));
        assert!(!seq_less(5, 5));
    }

    proptest! {
        #[test]
        fn decode_never_panics(d in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&d);
            let _ = looks_like_utp(&d);
        }

        #[test]
        fn header_round_trips(kind in 0u8..5, id: u16, ts: u32, diff: u32, wnd: u32,
                              seq: u16, ack: u16, sack in proptest::collection::vec(any::<u8>(), 0..=32)) {
            let h = Header {
                kind: PacketType::from_nibble(kind).unwrap(),
                connection_id: id, timestamp_us: ts, timestamp_difference_us: diff,
                wnd_size: wnd, seq_nr: seq, ack_nr: ack,
            };
            let mut buf = [0u8; 64];
            let n = encode_header(&h, Some(&sack), &mut buf);
            let p = decode(&buf[..n]).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.sack.unwrap_or(&[]), &sack[..]);
        }
    }
}
