//! The `ut_metadata` extension message (BEP 9): a bencoded dictionary
//! (`msg_type`, `piece`, and `total_size` for data) followed, for data, by the
//! raw bytes of one 16 KiB piece of the info dictionary.
//!
//! Layer: pure core (format only; the fetch state machine is
//! [`crate::metadata`], serving is in [`crate::torrent`]).
//!
//! Invariants: decoding never allocates more than the small dictionary and
//! never panics; a piece index is a `u32`; a `total_size` above
//! [`METADATA_SIZE_MAX`] is refused here, before anyone sizes a buffer by it.

use crate::bencode::{self, DecodeLimits, OwnedValue};

/// Bytes per metadata piece (BEP 9); the last piece may be shorter.
pub const METADATA_PIECE_LEN: u32 = 16 * 1024;

/// Largest info dictionary we fetch or believe a peer about (libtorrent's
/// `max_metadata_size` is 30 MiB too); checked before any buffer is sized.
pub const METADATA_SIZE_MAX: u64 = 30 * 1024 * 1024;

/// The message dictionary holds three integers: depth 1, a few tokens.
const DECODE_LIMITS: DecodeLimits = DecodeLimits { depth_max: 2, tokens_max: 32 };

/// One `ut_metadata` message; `data` borrows the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataMessage<'a> {
    Request { piece: u32 },
    Data { piece: u32, total_size: u64, data: &'a [u8] },
    Reject { piece: u32 },
}

/// Why a `ut_metadata` payload is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UtMetadataError {
    #[error("ut_metadata message is not valid bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("ut_metadata message is not a dictionary")]
    NotADictionary,
    #[error("ut_metadata message lacks `{0}` or it is not a valid integer")]
    Missing(&'static str),
    #[error("ut_metadata msg_type {0} is unknown")]
    UnknownType(i64),
    #[error("ut_metadata total_size {0} is over the limit of {METADATA_SIZE_MAX} bytes")]
    TooLarge(u64),
}

/// Number of 16 KiB pieces of an info dictionary of `size` bytes.
pub fn piece_count(size: u32) -> u32 {
    size.div_ceil(METADATA_PIECE_LEN)
}

/// Length of piece `piece` of an info dictionary of `size` bytes (0 when out
/// of range).
pub fn piece_len(size: u32, piece: u32) -> u32 {
    let start = u64::from(piece) * u64::from(METADATA_PIECE_LEN);
    (u64::from(size).saturating_sub(start)).min(u64::from(METADATA_PIECE_LEN)) as u32
}

impl<'a> MetadataMessage<'a> {
    /// Reads a message (the extended message's payload after its sub-id).
    pub fn decode(payload: &'a [u8]) -> Result<MetadataMessage<'a>, UtMetadataError> {
        let (value, used) = bencode::decode_prefix(payload, DECODE_LIMITS)?;
        let dict = value.as_dict().ok_or(UtMetadataError::NotADictionary)?;
        let int = |key: &'static str| {
            dict.get(key.as_bytes())
                .and_then(|v| v.as_int())
                .filter(|&i| i >= 0)
                .ok_or(UtMetadataError::Missing(key))
        };
        let msg_type = int("msg_type")?;
        let piece = u32::try_from(int("piece")?).map_err(|_| UtMetadataError::Missing("piece"))?;
        match msg_type {
            0 => Ok(MetadataMessage::Request { piece }),
            1 => {
                let total_size = int("total_size")? as u64;
                if total_size > METADATA_SIZE_MAX {
                    return Err(UtMetadataError::TooLarge(total_size));
                }
                Ok(MetadataMessage::Data { piece, total_size, data: &payload[used..] })
            }
            2 => Ok(MetadataMessage::Reject { piece }),
            other => Err(UtMetadataError::UnknownType(other)),
        }
    }

    /// Appends the payload (dictionary, then data for a data message).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (msg_type, piece) = match *self {
            MetadataMessage::Request { piece } => (0, piece),
            MetadataMessage::Data { piece, .. } => (1, piece),
            MetadataMessage::Reject { piece } => (2, piece),
        };
        let mut d = OwnedValue::dict().with("msg_type", msg_type).with("piece", i64::from(piece));
        if let MetadataMessage::Data { total_size, .. } = *self {
            d.insert("total_size", i64::try_from(total_size).unwrap_or(i64::MAX));
        }
        d.encode_into(out);
        if let MetadataMessage::Data { data, .. } = *self {
            out.extend_from_slice(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_canonical_bytes() {
        let data = [7u8; 100];
        for m in [
            MetadataMessage::Request { piece: 3 },
            MetadataMessage::Reject { piece: 0 },
            MetadataMessage::Data { piece: 1, total_size: 16484, data: &data },
        ] {
            let mut out = Vec::new();
            m.encode(&mut out);
            assert_eq!(MetadataMessage::decode(&out), Ok(m));
        }
        let mut out = Vec::new();
        MetadataMessage::Request { piece: 2 }.encode(&mut out);
        assert_eq!(out, b"d8:msg_typei0e5:piecei2ee");
    }

    #[test]
    fn bad_messages_are_errors() {
        let cases: [&[u8]; 7] = [
            b"",
            b"le",
            b"d5:piecei0ee",
            b"d8:msg_typei0ee",
            b"d8:msg_typei7e5:piecei0ee",
            b"d8:msg_typei1e5:piecei0ee",
            b"d8:msg_typei0e5:piecei-1ee",
        ];
        for case in cases {
            assert!(MetadataMessage::decode(case).is_err(), "{case:?}");
        }
        let huge = b"d8:msg_typei1e5:piecei0e10:total_sizei4294967296ee";
        assert_eq!(MetadataMessage::decode(huge), Err(UtMetadataError::TooLarge(1 << 32)));
        let deep = [b"d1:x".as_slice(), &[b'l'; 10], &[b'e'; 11]].concat();
        assert!(MetadataMessage::decode(&deep).is_err());
    }

    #[test]
    fn piece_arithmetic() {
        assert_eq!(piece_count(1), 1);
        assert_eq!(piece_count(16384), 1);
        assert_eq!(piece_count(16385), 2);
        assert_eq!(piece_len(16385, 0), 16384);
        assert_eq!(piece_len(16385, 1), 1);
        assert_eq!(piece_len(16385, 2), 0);
        assert_eq!(piece_len(100, u32::MAX), 0);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = MetadataMessage::decode(&buf);
        }
    }
}
