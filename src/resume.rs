//! Resume state: the verified-piece bitfield and each file's size and mtime,
//! encoded as versioned bencode.
//!
//! Layer: pure core (encode/decode only; the atomic write, the file stamps and
//! the recheck decision live in [`crate::storage::resume`]).
//!
//! Format (a bencoded dictionary, keys sorted):
//!
//! ```text
//! d
//!   5:files   l d 6:lengthi<bytes>e 8:mtime_nsi<ns since epoch>e e  ... e
//!                (an empty dictionary `de` for a pad file or a file that was absent)
//!   4:have    <ceil(pieces/8) bytes: wire-order bitfield>
//!   9:info_hash 20:<sha1>
//!   6:pieces  i<piece count>e
//!   7:version i1e
//! e
//! ```
//!
//! [`Durability`] is the bookkeeping that decides which pieces resume state
//! may claim: only those a successful flush made durable, never the ones
//! written before a flush that failed (Linux reports a later `fdatasync` as
//! successful even though the data of the failed writeback is gone).
//!
//! Invariants: [`decode`] never panics and accepts only a state whose version
//! is [`RESUME_VERSION`], whose info hash, piece count and file count match the
//! torrent's, and whose bitfield has no spare bits set; anything else is a
//! [`ResumeError`] (the caller then rechecks everything).

use crate::bencode::{self, DecodeLimits, OwnedValue};
use crate::bitfield::{Bitfield, BitfieldError};
use crate::metainfo::InfoHash;

/// The format version written by this code.
pub const RESUME_VERSION: i64 = 1;

/// Largest resume file accepted: a bitfield of 2^24 pieces (2 MiB) plus a
/// million files at ~40 bytes each fits well inside.
pub const RESUME_BYTES_MAX: usize = 64 << 20;

/// A file's identity on disk when the state was saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub length: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// One torrent's resume state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeState {
    pub info_hash: InfoHash,
    /// Pieces verified and durably written when the state was saved.
    pub have: Bitfield,
    /// One per torrent file, in torrent order; `None` for pad files and files
    /// that did not exist.
    pub files: Vec<Option<FileStamp>>,
}

/// Why a resume file cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("resume file is {len} bytes, more than the {RESUME_BYTES_MAX} limit")]
    TooLarge { len: usize },
    #[error("resume file is not valid bencode: {0}")]
    Bencode(String),
    #[error("resume file field {0:?} is missing or has the wrong type")]
    Field(&'static str),
    #[error("resume file version {got}, this ringbit reads version {RESUME_VERSION}")]
    Version { got: i64 },
    #[error("resume file is for torrent {got}, expected {expected}")]
    InfoHash { got: InfoHash, expected: InfoHash },
    #[error("resume file has {got} pieces, the torrent has {expected}")]
    PieceCount { got: i64, expected: u32 },
    #[error("resume file lists {got} files, the torrent has {expected}")]
    FileCount { got: usize, expected: usize },
    #[error("resume file bitfield: {0}")]
    Bitfield(#[from] BitfieldError),
}

/// Encodes `state` as canonical bencode.
pub fn encode(state: &ResumeState) -> Vec<u8> {
    let files: Vec<OwnedValue> = state
        .files
        .iter()
        .map(|f| match f {
            Some(s) => OwnedValue::dict()
                .with("length", s.length.min(i64::MAX as u64) as i64)
                .with("mtime_ns", s.mtime_ns),
            None => OwnedValue::dict(),
        })
        .collect();
    OwnedValue::dict()
        .with("version", RESUME_VERSION)
        .with("info_hash", &state.info_hash.0[..])
        .with("pieces", state.have.len() as i64)
        .with("have", state.have.as_bytes())
        .with("files", files)
        .encode()
}

/// Decodes and checks a resume file against the torrent it should describe.
pub fn decode(
    bytes: &[u8],
    expected_hash: InfoHash,
    piece_count: u32,
    file_count: usize,
) -> Result<ResumeState, ResumeError> {
    if bytes.len() > RESUME_BYTES_MAX {
        return Err(ResumeError::TooLarge { len: bytes.len() });
    }
    // Depth 3 is all the format needs (dict > list > dict); tokens are bounded
    // by a few per file.
    let limits = DecodeLimits { depth_max: 4, tokens_max: 8 + 8 * (file_count + 1) };
    let root =
        bencode::decode_with(bytes, limits).map_err(|e| ResumeError::Bencode(e.to_string()))?;
    let dict = root.as_dict().ok_or(ResumeError::Field("root"))?;
    let int = |key: &'static str| {
        dict.get(key.as_bytes()).and_then(|v| v.as_int()).ok_or(ResumeError::Field(key))
    };
    let version = int("version")?;
    if version != RESUME_VERSION {
        return Err(ResumeError::Version { got: version });
    }
    let hash = dict
        .get(b"info_hash")
        .and_then(|v| v.as_bytes())
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
        .ok_or(ResumeError::Field("info_hash"))?;
    if InfoHash(hash) != expected_hash {
        return Err(ResumeError::InfoHash { got: InfoHash(hash), expected: expected_hash });
    }
    let pieces = int("pieces")?;
    if pieces != piece_count as i64 {
        return Err(ResumeError::PieceCount { got: pieces, expected: piece_count });
    }
    let have_bytes =
        dict.get(b"have").and_then(|v| v.as_bytes()).ok_or(ResumeError::Field("have"))?;
    let have = Bitfield::from_bytes(have_bytes, piece_count)?;
    let list = dict.get(b"files").and_then(|v| v.as_list()).ok_or(ResumeError::Field("files"))?;
    if list.len() != file_count {
        return Err(ResumeError::FileCount { got: list.len(), expected: file_count });
    }
    let mut files = Vec::with_capacity(list.len());
    for entry in list {
        let d = entry.as_dict().ok_or(ResumeError::Field("files"))?;
        if d.is_empty() {
            files.push(None);
            continue;
        }
        let length = d.get(b"length").and_then(|v| v.as_int()).filter(|&n| n >= 0);
        let mtime_ns = d.get(b"mtime_ns").and_then(|v| v.as_int());
        match (length, mtime_ns) {
            (Some(length), Some(mtime_ns)) => {
                files.push(Some(FileStamp { length: length as u64, mtime_ns }))
            }
            _ => return Err(ResumeError::Field("files")),
        }
    }
    Ok(ResumeState { info_hash: expected_hash, have, files })
}

/// Which verified pieces are durably on disk, as flushes succeed and fail.
///
/// The engine snapshots the pieces it has before each flush and reports the
/// outcome here. A piece is *durable* once a flush that began after it was
/// written succeeded. When a flush fails, every piece written since the last
/// good flush becomes *suspect* for the rest of the torrent's run: the kernel
/// may have dropped its pages, and a later flush that succeeds proves
/// nothing about them (the writeback error was reported once and cleared).
/// Resume state claims [`Durability::durable`] and marks the suspect pieces'
/// files for recheck.
///
/// Invariants: `durable` and `suspect` are disjoint; a suspect piece never
/// becomes durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durability {
    durable: Bitfield,
    suspect: Bitfield,
    flush_failures: u64,
}

impl Durability {
    /// Starts from the pieces found on disk (checked or trusted from resume
    /// state), which are durable already.
    pub fn new(have: &Bitfield) -> Durability {
        Durability { durable: have.clone(), suspect: Bitfield::new(have.len()), flush_failures: 0 }
    }

    /// A flush that began when the torrent had `have` succeeded.
    pub fn flushed(&mut self, have: &Bitfield) {
        let mut durable = have.clone();
        for p in self.suspect.iter_ones() {
            durable.clear(p);
        }
        self.durable = durable;
    }

    /// A flush that began when the torrent had `have` failed: every piece of
    /// it not durable yet is suspect from now on.
    pub fn flush_failed(&mut self, have: &Bitfield) {
        for p in have.iter_ones() {
            if !self.durable.get(p) {
                self.suspect.set(p);
            }
        }
        self.flush_failures += 1;
    }

    /// Pieces resume state may claim.
    pub fn durable(&self) -> &Bitfield {
        &self.durable
    }

    /// Pieces written before a failed flush: their data may be lost.
    pub fn suspect(&self) -> &Bitfield {
        &self.suspect
    }

    /// Flushes that failed during this run.
    pub fn flush_failures(&self) -> u64 {
        self.flush_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> ResumeState {
        let mut have = Bitfield::new(11);
        for i in [0, 3, 10] {
            have.set(i);
        }
        ResumeState {
            info_hash: InfoHash([7; 20]),
            have,
            files: vec![
                Some(FileStamp { length: 5, mtime_ns: 1_700_000_000_123_456_789 }),
                None,
                Some(FileStamp { length: 0, mtime_ns: -5 }),
            ],
        }
    }

    fn bits(len: u32, ones: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for &i in ones {
            b.set(i);
        }
        b
    }

    /// The sequence the issue describes: pieces written, a flush fails, more
    /// pieces written, a later flush "succeeds": only pieces from before the
    /// failure's window that a good flush covered, and pieces written after
    /// the failure, are claimed.
    #[test]
    fn a_failed_flush_makes_its_pieces_suspect_for_good() {
        let mut d = Durability::new(&bits(8, &[0]));
        assert_eq!(d.durable(), &bits(8, &[0]));
        d.flushed(&bits(8, &[0, 1]));
        assert_eq!(d.durable(), &bits(8, &[0, 1]));
        d.flush_failed(&bits(8, &[0, 1, 2, 3]));
        assert_eq!(d.suspect(), &bits(8, &[2, 3]));
        assert_eq!(d.durable(), &bits(8, &[0, 1]), "a failure claims nothing new");
        d.flushed(&bits(8, &[0, 1, 2, 3, 4]));
        assert_eq!(d.durable(), &bits(8, &[0, 1, 4]), "a later success clears no suspicion");
        d.flush_failed(&bits(8, &[0, 1, 2, 3, 4, 5]));
        assert_eq!(d.suspect(), &bits(8, &[2, 3, 5]));
        assert_eq!(d.flush_failures(), 2);
        for p in 0..8 {
            assert!(!(d.durable().get(p) && d.suspect().get(p)), "disjoint at {p}");
        }
    }

    #[test]
    fn round_trip() {
        let s = state();
        let bytes = encode(&s);
        assert_eq!(decode(&bytes, s.info_hash, 11, 3), Ok(s));
    }

    #[test]
    fn mismatches_and_damage_are_errors() {
        let s = state();
        let bytes = encode(&s);
        assert!(matches!(
            decode(&bytes, InfoHash([8; 20]), 11, 3),
            Err(ResumeError::InfoHash { .. })
        ));
        assert!(matches!(decode(&bytes, s.info_hash, 12, 3), Err(ResumeError::PieceCount { .. })));
        assert!(matches!(decode(&bytes, s.info_hash, 11, 2), Err(ResumeError::FileCount { .. })));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], s.info_hash, 11, 3).is_err(), "truncated at {cut}");
        }
        let mut v2 = bytes.clone();
        let at = v2.windows(12).position(|w| w == b"7:versioni1e").unwrap();
        v2[at + 10] = b'2';
        assert_eq!(decode(&v2, s.info_hash, 11, 3), Err(ResumeError::Version { got: 2 }));
        assert!(matches!(decode(b"i1e", s.info_hash, 11, 3), Err(ResumeError::Field("root"))));
        let too_big = vec![b'x'; RESUME_BYTES_MAX + 1];
        assert!(matches!(decode(&too_big, s.info_hash, 11, 3), Err(ResumeError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, InfoHash([7; 20]), 11, 3);
        }

        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..200, bit in 0u8..8) {
            let mut bytes = encode(&state());
            let i = pos % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = decode(&bytes, InfoHash([7; 20]), 11, 3);
        }
    }
}
