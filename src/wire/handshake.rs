//! The 68-byte handshake (BEP 3), its reserved bits (BEP 5, 6, 10) and our
//! Azureus-style peer id.
//!
//! ```text
//! <19><"BitTorrent protocol"><8 reserved bytes><20-byte info hash><20-byte peer id>
//! ```

use super::WireError;
use crate::metainfo::InfoHash;
use std::fmt;

/// The protocol string, preceded on the wire by its length (19).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Bytes in a handshake.
pub const HANDSHAKE_LEN: usize = 68;

/// Offset of the info hash in a handshake: enough to route an incoming
/// connection to its torrent before the peer id arrives.
const INFO_HASH_END: usize = 48;

/// A peer's 20-byte id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// Our Azureus-style client prefix: ringbit (`RB`) version 0.0.0.1.
    pub const PREFIX: &'static [u8; 8] = b"-RB0001-";

    /// Our peer id: [`PeerId::PREFIX`] followed by 12 characters drawn from
    /// `random` (mapped onto `[0-9A-Za-z]` so ids stay printable in logs and
    /// tracker URLs). Pure: the caller supplies the randomness.
    pub fn ours(random: [u8; 12]) -> PeerId {
        const ALPHABET: &[u8; 62] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(Self::PREFIX);
        for (slot, r) in id[8..].iter_mut().zip(random) {
            *slot = ALPHABET[r as usize % ALPHABET.len()];
        }
        PeerId(id)
    }

    /// The Azureus-style client tag (`-XX1234-` -> `XX1234`), if it has one.
    pub fn client(&self) -> Option<&str> {
        let id = &self.0;
        if id[0] == b'-' && id[7] == b'-' {
            std::str::from_utf8(&id[1..7]).ok().filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
        } else {
            None
        }
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerId(")?;
        for &b in &self.0 {
            if b.is_ascii_graphic() {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str(")")
    }
}

/// The 8 reserved bytes: which protocol extensions a peer supports.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Reserved(pub [u8; 8]);

impl Reserved {
    /// What we send: the fast extension (BEP 6) and the extension protocol
    /// (BEP 10); the DHT bit is added by [`Reserved::with_dht`] when our DHT
    /// node runs for the torrent.
    pub const OURS: Reserved = Reserved([0, 0, 0, 0, 0, 0x10, 0, 0x04]);

    /// These bits with the DHT bit (BEP 5) set.
    pub const fn with_dht(self) -> Reserved {
        let mut b = self.0;
        b[7] |= 0x01;
        Reserved(b)
    }

    /// BEP 10 extension protocol: bit 0x10 of byte 5.
    pub fn extensions(&self) -> bool {
        self.0[5] & 0x10 != 0
    }

    /// BEP 6 fast extension: bit 0x04 of byte 7.
    pub fn fast(&self) -> bool {
        self.0[7] & 0x04 != 0
    }

    /// BEP 5 DHT: bit 0x01 of byte 7.
    pub fn dht(&self) -> bool {
        self.0[7] & 0x01 != 0
    }
}

/// A decoded handshake.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Handshake {
    pub reserved: Reserved,
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
}

/// The result of [`decode_handshake`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HandshakeDecoded {
    /// A whole handshake; it used [`HANDSHAKE_LEN`] bytes.
    Done(Handshake),
    /// This many more bytes are needed.
    NeedMore(usize),
}

impl Handshake {
    /// Our handshake for `info_hash`, with [`Reserved::OURS`].
    pub fn ours(info_hash: InfoHash, peer_id: PeerId) -> Handshake {
        Handshake { reserved: Reserved::OURS, info_hash, peer_id }
    }

    /// The handshake's wire bytes.
    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut b = [0u8; HANDSHAKE_LEN];
        b[0] = PROTOCOL.len() as u8;
        b[1..20].copy_from_slice(PROTOCOL);
        b[20..28].copy_from_slice(&self.reserved.0);
        b[28..48].copy_from_slice(&self.info_hash.0);
        b[48..68].copy_from_slice(&self.peer_id.0);
        b
    }

    /// Appends the handshake to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }
}

/// Checks the protocol-string prefix of `buf` (as much of it as is there), so
/// garbage or an encrypted (MSE) stream is refused from its first byte.
fn check_protocol_prefix(buf: &[u8]) -> Result<(), WireError> {
    let mut expected = [0u8; 20];
    expected[0] = PROTOCOL.len() as u8;
    expected[1..].copy_from_slice(PROTOCOL);
    let n = buf.len().min(expected.len());
    if buf[..n] == expected[..n] {
        Ok(())
    } else {
        Err(WireError::NotBitTorrent)
    }
}

/// Decodes the handshake at the front of `buf`.
pub fn decode_handshake(buf: &[u8]) -> Result<HandshakeDecoded, WireError> {
    check_protocol_prefix(buf)?;
    if buf.len() < HANDSHAKE_LEN {
        return Ok(HandshakeDecoded::NeedMore(HANDSHAKE_LEN - buf.len()));
    }
    let mut reserved = [0u8; 8];
    reserved.copy_from_slice(&buf[20..28]);
    let mut info_hash = [0u8; 20];
    info_hash.copy_from_slice(&buf[28..48]);
    let mut peer_id = [0u8; 20];
    peer_id.copy_from_slice(&buf[48..68]);
    Ok(HandshakeDecoded::Done(Handshake {
        reserved: Reserved(reserved),
        info_hash: InfoHash(info_hash),
        peer_id: PeerId(peer_id),
    }))
}

/// The info hash of an incoming handshake once its first 48 bytes are there
/// (`Ok(None)` before): lets a listener route the connection to the shard that
/// owns the torrent before the peer id arrives (BEP 3 lets the initiator wait
/// for our handshake before sending its id).
pub fn peek_info_hash(buf: &[u8]) -> Result<Option<InfoHash>, WireError> {
    check_protocol_prefix(buf)?;
    if buf.len() < INFO_HASH_END {
        return Ok(None);
    }
    let mut info_hash = [0u8; 20];
    info_hash.copy_from_slice(&buf[28..48]);
    Ok(Some(InfoHash(info_hash)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_truncation() {
        let hs = Handshake::ours(InfoHash([7; 20]), PeerId::ours([0; 12]));
        let bytes = hs.to_bytes();
        assert_eq!(&bytes[..20], b"\x13BitTorrent protocol");
        assert_eq!(bytes[25], 0x10);
        assert_eq!(bytes[27], 0x04);
        assert_eq!(decode_handshake(&bytes), Ok(HandshakeDecoded::Done(hs)));
        for cut in 0..HANDSHAKE_LEN {
            assert_eq!(
                decode_handshake(&bytes[..cut]),
                Ok(HandshakeDecoded::NeedMore(HANDSHAKE_LEN - cut))
            );
            let peeked = peek_info_hash(&bytes[..cut]).unwrap();
            assert_eq!(peeked, (cut >= 48).then_some(InfoHash([7; 20])));
        }
        // Trailing bytes (the first message) are not the handshake's concern.
        let mut more = bytes.to_vec();
        more.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_handshake(&more), Ok(HandshakeDecoded::Done(hs)));
    }

    #[test]
    fn reserved_bits() {
        assert!(Reserved::OURS.fast() && Reserved::OURS.extensions() && !Reserved::OURS.dht());
        assert!(!Reserved::default().fast() && !Reserved::default().extensions());
        assert!(Reserved([0, 0, 0, 0, 0, 0, 0, 1]).dht());
    }

    #[test]
    fn garbage_is_refused_at_its_first_wrong_byte() {
        assert_eq!(decode_handshake(&[18]), Err(WireError::NotBitTorrent));
        assert_eq!(decode_handshake(b"\x13BitTorrent protocoL"), Err(WireError::NotBitTorrent));
        assert_eq!(peek_info_hash(b"GET / HTTP/1.1"), Err(WireError::NotBitTorrent));
    }

    #[test]
    fn peer_id_is_azureus_style_and_printable() {
        let id = PeerId::ours([0, 1, 61, 62, 255, 10, 36, 35, 9, 100, 200, 7]);
        assert_eq!(&id.0[..8], b"-RB0001-");
        assert!(id.0.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'));
        assert_eq!(&id.0[8..12], b"01z0");
        assert_eq!(id.client(), Some("RB0001"));
        assert_eq!(PeerId([0; 20]).client(), None);
        assert_eq!(format!("{:?}", PeerId::ours([0; 12])), "PeerId(-RB0001-000000000000)");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_handshake(&buf);
            let _ = peek_info_hash(&buf);
        }
    }
}
