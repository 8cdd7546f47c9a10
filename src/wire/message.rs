//! Length-prefixed peer messages: decode one from a buffer, encode into a `Vec`.

use super::{WireError, WireLimits, PIECE_HEADER_LEN};

/// Message ids (the byte after the length prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageId {
    Choke = 0,
    Unchoke = 1,
    Interested = 2,
    NotInterested = 3,
    Have = 4,
    Bitfield = 5,
    Request = 6,
    Piece = 7,
    Cancel = 8,
    /// BEP 5 DHT port: parsed and ignored (we do not run a DHT node).
    Port = 9,
    /// BEP 6 (fast extension) from here to `AllowedFast`.
    Suggest = 13,
    HaveAll = 14,
    HaveNone = 15,
    Reject = 16,
    AllowedFast = 17,
    /// BEP 10 extension protocol.
    Extended = 20,
}

impl MessageId {
    fn from_u8(id: u8) -> Option<MessageId> {
        use MessageId::*;
        Some(match id {
            0 => Choke,
            1 => Unchoke,
            2 => Interested,
            3 => NotInterested,
            4 => Have,
            5 => Bitfield,
            6 => Request,
            7 => Piece,
            8 => Cancel,
            9 => Port,
            13 => Suggest,
            14 => HaveAll,
            15 => HaveNone,
            16 => Reject,
            17 => AllowedFast,
            20 => Extended,
            _ => return None,
        })
    }
}

/// A block of a piece: what `request`, `cancel` and `reject` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRequest {
    pub piece: u32,
    /// Byte offset of the block inside the piece.
    pub begin: u32,
    pub length: u32,
}

/// One peer message. Payloads borrow the buffer they were decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have {
        piece: u32,
    },
    /// Raw bitfield bytes; [`crate::bitfield::Bitfield::from_bytes`] checks
    /// them against the piece count.
    Bitfield(&'a [u8]),
    Request(BlockRequest),
    Piece {
        piece: u32,
        begin: u32,
        data: &'a [u8],
    },
    Cancel(BlockRequest),
    Port(u16),
    Suggest {
        piece: u32,
    },
    HaveAll,
    HaveNone,
    Reject(BlockRequest),
    AllowedFast {
        piece: u32,
    },
    /// BEP 10: `id` 0 is the extension handshake, others are the ids we
    /// advertised in our handshake's `m` dictionary.
    Extended {
        id: u8,
        payload: &'a [u8],
    },
}

/// The result of [`decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole message and the number of bytes it used from the front of the
    /// buffer.
    Message { message: Message<'a>, consumed: usize },
    /// The buffer holds only part of a message: at least this many more bytes
    /// are needed (exactly, once the length prefix has been read).
    NeedMore(usize),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes the message at the front of `buf`.
///
/// The length prefix is checked against `limits` (and fixed-size messages
/// against their exact size) as soon as the id byte is there, before the
/// payload is waited for: an oversized message is refused after 5 bytes.
pub fn decode<'a>(buf: &'a [u8], limits: &WireLimits) -> Result<Decoded<'a>, WireError> {
    if buf.len() < 4 {
        return Ok(Decoded::NeedMore(4 - buf.len()));
    }
    let len = be32(buf);
    if len == 0 {
        return Ok(Decoded::Message { message: Message::KeepAlive, consumed: 4 });
    }
    if buf.len() < 5 {
        return Ok(Decoded::NeedMore(1));
    }
    let raw_id = buf[4];
    let id = MessageId::from_u8(raw_id).ok_or(WireError::UnknownMessageId(raw_id))?;
    check_length(id, len, limits)?;
    // Saturating: a u32 length plus 4 could overflow a 32-bit usize.
    let frame = (len as usize).saturating_add(4);
    if buf.len() < frame {
        return Ok(Decoded::NeedMore(frame - buf.len()));
    }
    let p = &buf[5..frame];
    let block =
        |p: &[u8]| BlockRequest { piece: be32(p), begin: be32(&p[4..]), length: be32(&p[8..]) };
    let message = match id {
        MessageId::Choke => Message::Choke,
        MessageId::Unchoke => Message::Unchoke,
        MessageId::Interested => Message::Interested,
        MessageId::NotInterested => Message::NotInterested,
        MessageId::Have => Message::Have { piece: be32(p) },
        MessageId::Bitfield => Message::Bitfield(p),
        MessageId::Request => {
            let request = block(p);
            if request.length == 0 || request.length > limits.max_request_len {
                return Err(WireError::BadRequestLength {
                    len: request.length,
                    max: limits.max_request_len,
                });
            }
            Message::Request(request)
        }
        MessageId::Piece => Message::Piece { piece: be32(p), begin: be32(&p[4..]), data: &p[8..] },
        MessageId::Cancel => Message::Cancel(block(p)),
        MessageId::Port => Message::Port(u16::from_be_bytes([p[0], p[1]])),
        MessageId::Suggest => Message::Suggest { piece: be32(p) },
        MessageId::HaveAll => Message::HaveAll,
        MessageId::HaveNone => Message::HaveNone,
        MessageId::Reject => Message::Reject(block(p)),
        MessageId::AllowedFast => Message::AllowedFast { piece: be32(p) },
        MessageId::Extended => Message::Extended { id: p[0], payload: &p[1..] },
    };
    Ok(Decoded::Message { message, consumed: frame })
}

/// Checks a length prefix (id byte included) against the message's fixed size
/// or its limit.
fn check_length(id: MessageId, len: u32, limits: &WireLimits) -> Result<(), WireError> {
    let exact = |expected: u32| {
        if len == expected {
            Ok(())
        } else {
            Err(WireError::IncorrectLength { id: id as u8, received: len, expected })
        }
    };
    // Variable-length messages: at least `min` (id and fixed fields), at most
    // the fixed part plus the payload limit.
    let ranged = |min: u32, max_payload: u32| {
        let max = min.saturating_add(max_payload);
        if len < min {
            Err(WireError::IncorrectLength { id: id as u8, received: len, expected: min })
        } else if len > max {
            Err(WireError::MessageTooLong { id: id as u8, len, max })
        } else {
            Ok(())
        }
    };
    match id {
        MessageId::Choke
        | MessageId::Unchoke
        | MessageId::Interested
        | MessageId::NotInterested
        | MessageId::HaveAll
        | MessageId::HaveNone => exact(1),
        MessageId::Have | MessageId::Suggest | MessageId::AllowedFast => exact(5),
        MessageId::Request | MessageId::Cancel | MessageId::Reject => exact(13),
        MessageId::Port => exact(3),
        MessageId::Bitfield => ranged(1, limits.max_bitfield_len),
        MessageId::Piece => ranged(9, limits.max_block_len),
        MessageId::Extended => ranged(2, limits.max_extended_len.saturating_sub(1)),
    }
}

/// The 13 bytes that precede a block's data in a `piece` message. Send them
/// followed by exactly `data_len` bytes of block data.
pub fn piece_header(piece: u32, begin: u32, data_len: u32) -> [u8; PIECE_HEADER_LEN] {
    let mut h = [0u8; PIECE_HEADER_LEN];
    h[..4].copy_from_slice(&(9 + data_len).to_be_bytes());
    h[4] = MessageId::Piece as u8;
    h[5..9].copy_from_slice(&piece.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    h
}

impl Message<'_> {
    /// Bytes this message takes on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have { .. } | Message::Suggest { .. } | Message::AllowedFast { .. } => 5,
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => 13,
            Message::Port(_) => 3,
            Message::Bitfield(b) => 1 + b.len(),
            Message::Piece { data, .. } => 9 + data.len(),
            Message::Extended { payload, .. } => 2 + payload.len(),
        }
    }

    /// The message id byte, `None` for a keep-alive.
    pub fn id(&self) -> Option<MessageId> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => MessageId::Choke,
            Message::Unchoke => MessageId::Unchoke,
            Message::Interested => MessageId::Interested,
            Message::NotInterested => MessageId::NotInterested,
            Message::Have { .. } => MessageId::Have,
            Message::Bitfield(_) => MessageId::Bitfield,
            Message::Request(_) => MessageId::Request,
            Message::Piece { .. } => MessageId::Piece,
            Message::Cancel(_) => MessageId::Cancel,
            Message::Port(_) => MessageId::Port,
            Message::Suggest { .. } => MessageId::Suggest,
            Message::HaveAll => MessageId::HaveAll,
            Message::HaveNone => MessageId::HaveNone,
            Message::Reject(_) => MessageId::Reject,
            Message::AllowedFast { .. } => MessageId::AllowedFast,
            Message::Extended { .. } => MessageId::Extended,
        })
    }

    /// Appends the message to `out`. Reusing `out` across messages means no
    /// allocation once it has grown to the connection's usual burst.
    ///
    /// Panics if a payload is longer than 4 GiB (a programmer error: we never
    /// build such messages).
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Header and fixed fields are assembled on the stack and appended
        // with one copy; only a variable payload is appended separately.
        let mut head = [0u8; 18];
        let total = self.encoded_len();
        let payload: &[u8] = match self {
            Message::Bitfield(b) => b,
            Message::Piece { data, .. } => data,
            Message::Extended { payload, .. } => payload,
            _ => &[],
        };
        let len = u32::try_from(total - 4).expect("message payload fits in u32");
        head[..4].copy_from_slice(&len.to_be_bytes());
        let head_len = match self.id() {
            None => 4,
            Some(id) => {
                head[4] = id as u8;
                let mut put =
                    |at: usize, v: u32| head[at..at + 4].copy_from_slice(&v.to_be_bytes());
                match self {
                    Message::Have { piece }
                    | Message::Suggest { piece }
                    | Message::AllowedFast { piece } => {
                        put(5, *piece);
                        9
                    }
                    Message::Request(r) | Message::Cancel(r) | Message::Reject(r) => {
                        put(5, r.piece);
                        put(9, r.begin);
                        put(13, r.length);
                        17
                    }
                    Message::Piece { piece, begin, .. } => {
                        put(5, *piece);
                        put(9, *begin);
                        13
                    }
                    Message::Port(port) => {
                        head[5..7].copy_from_slice(&port.to_be_bytes());
                        7
                    }
                    Message::Extended { id, .. } => {
                        head[5] = *id;
                        6
                    }
                    _ => 5,
                }
            }
        };
        debug_assert_eq!(head_len + payload.len(), total);
        out.reserve(total);
        out.extend_from_slice(&head[..head_len]);
        out.extend_from_slice(payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{BLOCK_LEN, MAX_REQUEST_LEN};
    use proptest::prelude::*;

    fn limits() -> WireLimits {
        WireLimits::for_pieces(100)
    }

    fn all_messages(data: &[u8]) -> Vec<Message<'_>> {
        let r = BlockRequest { piece: 7, begin: 16384, length: 16384 };
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have { piece: 0xdead_beef },
            Message::Bitfield(&[0xff; 13]),
            Message::Bitfield(&[]),
            Message::Request(r),
            Message::Piece { piece: 3, begin: 32768, data },
            Message::Piece { piece: 3, begin: 0, data: &[] },
            Message::Cancel(r),
            Message::Port(6881),
            Message::Suggest { piece: 9 },
            Message::HaveAll,
            Message::HaveNone,
            Message::Reject(r),
            Message::AllowedFast { piece: 99 },
            Message::Extended { id: 0, payload: b"d1:md11:ut_metadatai3eee" },
            Message::Extended { id: 3, payload: &[] },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let data: Vec<u8> = (0..BLOCK_LEN).map(|i| i as u8).collect();
        for m in all_messages(&data) {
            let mut out = vec![0xAA]; // encoders append: existing bytes are kept
            m.encode(&mut out);
            assert_eq!(out.len(), 1 + m.encoded_len(), "{m:?}");
            assert_eq!(
                decode(&out[1..], &limits()),
                Ok(Decoded::Message { message: m, consumed: m.encoded_len() }),
            );
        }
    }

    #[test]
    fn known_bytes() {
        let mut out = Vec::new();
        Message::Request(BlockRequest { piece: 1, begin: 2, length: 16384 }).encode(&mut out);
        assert_eq!(out, [0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0x40, 0]);
        out.clear();
        Message::Have { piece: 258 }.encode(&mut out);
        assert_eq!(out, [0, 0, 0, 5, 4, 0, 0, 1, 2]);
        assert_eq!(piece_header(1, 2, 3), [0, 0, 0, 12, 7, 0, 0, 0, 1, 0, 0, 0, 2]);
    }

    #[test]
    fn truncated_input_needs_more_at_every_cut() {
        let data = vec![5u8; 100];
        for m in all_messages(&data) {
            let mut out = Vec::new();
            m.encode(&mut out);
            for cut in 0..out.len() {
                match decode(&out[..cut], &limits()) {
                    Ok(Decoded::NeedMore(n)) => {
                        assert!(n >= 1 && cut + n <= out.len(), "{m:?} cut {cut} need {n}");
                        if cut >= 5 {
                            assert_eq!(cut + n, out.len(), "exact once the length is known");
                        }
                    }
                    other => panic!("{m:?} cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut out = Vec::new();
        Message::Have { piece: 1 }.encode(&mut out);
        Message::KeepAlive.encode(&mut out);
        Message::Piece { piece: 2, begin: 0, data: b"abc" }.encode(&mut out);
        let mut at = 0;
        let mut seen = Vec::new();
        while let Decoded::Message { message, consumed } = decode(&out[at..], &limits()).unwrap() {
            seen.push(message);
            at += consumed;
        }
        assert_eq!(at, out.len());
        assert_eq!(
            seen,
            [
                Message::Have { piece: 1 },
                Message::KeepAlive,
                Message::Piece { piece: 2, begin: 0, data: b"abc" }
            ]
        );
    }

    #[test]
    fn oversized_lengths_are_refused_from_the_header_alone() {
        // Only 5 bytes: a length prefix and an id. The decoder must refuse
        // without asking for (and so without the caller buffering) the payload.
        let header = |len: u32, id: u8| {
            let mut h = len.to_be_bytes().to_vec();
            h.push(id);
            h
        };
        let l = limits();
        assert_eq!(
            decode(&header(u32::MAX, 7), &l),
            Err(WireError::MessageTooLong { id: 7, len: u32::MAX, max: 9 + BLOCK_LEN })
        );
        assert_eq!(
            decode(&header(9 + BLOCK_LEN + 1, 7), &l),
            Err(WireError::MessageTooLong { id: 7, len: 9 + BLOCK_LEN + 1, max: 9 + BLOCK_LEN })
        );
        assert_eq!(
            decode(&header(1 + 14, 5), &l),
            Err(WireError::MessageTooLong { id: 5, len: 15, max: 14 })
        );
        assert!(matches!(decode(&header(1 + 13, 5), &l), Ok(Decoded::NeedMore(13))));
        assert_eq!(
            decode(&header(2 + (1 << 20), 20), &l),
            Err(WireError::MessageTooLong { id: 20, len: 2 + (1 << 20), max: 1 + (1 << 20) })
        );
        assert_eq!(
            decode(&header(14, 6), &l),
            Err(WireError::IncorrectLength { id: 6, received: 14, expected: 13 })
        );
        assert_eq!(
            decode(&header(2, 0), &l),
            Err(WireError::IncorrectLength { id: 0, received: 2, expected: 1 })
        );
        assert_eq!(
            decode(&header(1, 20), &l),
            Err(WireError::IncorrectLength { id: 20, received: 1, expected: 2 })
        );
        assert_eq!(
            decode(&header(8, 7), &l),
            Err(WireError::IncorrectLength { id: 7, received: 8, expected: 9 })
        );
        assert_eq!(decode(&header(1, 10), &l), Err(WireError::UnknownMessageId(10)));
        assert_eq!(decode(&header(1, 255), &l), Err(WireError::UnknownMessageId(255)));
    }

    #[test]
    fn request_lengths_are_bounded() {
        let mut out = Vec::new();
        let req = |length| Message::Request(BlockRequest { piece: 0, begin: 0, length });
        for (length, ok) in
            [(0, false), (1, true), (MAX_REQUEST_LEN, true), (MAX_REQUEST_LEN + 1, false)]
        {
            out.clear();
            req(length).encode(&mut out);
            let got = decode(&out, &limits());
            assert_eq!(got.is_ok(), ok, "{length}: {got:?}");
        }
    }

    #[test]
    fn max_frame_len_holds_the_largest_message() {
        let l = WireLimits::for_pieces(1_000_000);
        let bitfield = vec![0u8; l.max_bitfield_len as usize];
        let ext = vec![0u8; l.max_extended_len as usize - 1];
        let block = vec![0u8; l.max_block_len as usize];
        for m in [
            Message::Bitfield(&bitfield),
            Message::Extended { id: 1, payload: &ext },
            Message::Piece { piece: 0, begin: 0, data: &block },
        ] {
            assert!(m.encoded_len() <= l.max_frame_len());
            let mut out = Vec::new();
            m.encode(&mut out);
            assert!(decode(&out, &l).is_ok());
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let l = WireLimits::for_pieces(64);
            // Walk the buffer like a driver does; every step either consumes
            // bytes, asks for more, or errors.
            let mut at = 0;
            while let Ok(Decoded::Message { consumed, .. }) = decode(&buf[at..], &l) {
                prop_assert!(consumed >= 4 && at + consumed <= buf.len());
                at += consumed;
            }
        }

        #[test]
        fn garbage_after_a_valid_header_never_panics(
            id in prop_oneof![0u8..=20, any::<u8>()],
            len in prop_oneof![0u32..40, any::<u32>()],
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = len.to_be_bytes().to_vec();
            buf.push(id);
            buf.extend_from_slice(&tail);
            let _ = decode(&buf, &WireLimits::for_pieces(64));
        }

        #[test]
        fn requests_round_trip(piece: u32, begin: u32, length in 1..=MAX_REQUEST_LEN) {
            let m = Message::Request(BlockRequest { piece, begin, length });
            let mut out = Vec::new();
            m.encode(&mut out);
            prop_assert_eq!(decode(&out, &limits()), Ok(Decoded::Message { message: m, consumed: 17 }));
        }
    }
}
