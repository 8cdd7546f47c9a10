//! `.torrent` files (BEP 3, 12, 19, 27, 47) -> [`Metainfo`].
//!
//! Layer: pure core. Owns the validated, path-safe view of a torrent's metadata.
//!
//! Invariants of a [`Metainfo`] returned by [`Metainfo::from_bytes`]:
//! * `info_hash` is the SHA1 of the `info` dictionary's bytes exactly as they
//!   appear in the file (never a re-encoding); `info_bytes` are those bytes.
//! * `info.pieces.len() == ceil(info.total_length / info.piece_length)`.
//! * every [`FileEntry::path`] element is safe: non-empty, not `.` or `..`,
//!   free of `/`, `\` and NUL, so joining the path onto a download directory
//!   can never leave it.
//! * `files` are in torrent order, pad files included (flagged `pad`), and
//!   `offset` is each file's first byte in the torrent's byte stream.

use std::fmt;

/// The 20-byte SHA1 of a torrent's bencoded `info` dictionary (BitTorrent v1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Lower-case hex, as trackers' whitelists and most UIs show it.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(40);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses 40 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<InfoHash> {
        let bytes = s.as_bytes();
        if bytes.len() != 40 {
            return None;
        }
        let mut out = [0u8; 20];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(InfoHash(out))
    }

    /// The shard that owns this torrent among `shard_count` shards: a pure
    /// function of the info hash, so every thread routes the same way.
    pub fn shard(&self, shard_count: usize) -> usize {
        assert!(shard_count > 0, "at least one shard");
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        (u64::from_le_bytes(first) % shard_count as u64) as usize
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

/// One file of a torrent, in torrent order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the download directory, as safe elements. For a
    /// multi-file torrent the first element is the torrent's `name`.
    pub path: Vec<String>,
    /// Length in bytes.
    pub length: u64,
    /// Offset of the file's first byte in the torrent's concatenated byte stream.
    pub offset: u64,
    /// A BEP 47 pad file (`attr` contains `p`): occupies piece space, is never
    /// shown to the user nor written to disk; its bytes are zeros.
    pub pad: bool,
}

/// The `info` dictionary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Safe name (`name.utf-8` preferred when present).
    pub name: String,
    /// Bytes per piece; every piece but the last has exactly this length.
    pub piece_length: u32,
    /// One SHA1 per piece.
    pub pieces: Vec<[u8; 20]>,
    /// Files in torrent order, pad files included.
    pub files: Vec<FileEntry>,
    /// Sum of all file lengths, pad files included.
    pub total_length: u64,
    /// BEP 27 private flag.
    pub private: bool,
    /// True when the torrent has a `files` list (even of one file).
    pub multi_file: bool,
    /// `source` (private trackers use it to make the info hash unique).
    pub source: Option<String>,
}

impl Info {
    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Length of piece `index` (the last piece may be shorter).
    pub fn piece_size(&self, index: u32) -> u32 {
        let start = index as u64 * self.piece_length as u64;
        let end = (start + self.piece_length as u64).min(self.total_length);
        end.saturating_sub(start) as u32
    }
}

/// A parsed, validated `.torrent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metainfo {
    pub info_hash: InfoHash,
    pub info: Info,
    /// The raw bencoded `info` dictionary (served to peers over BEP 9).
    pub info_bytes: Vec<u8>,
    /// `announce`.
    pub announce: Option<String>,
    /// BEP 12 tiers as written in the file (not shuffled).
    pub announce_list: Vec<Vec<String>>,
    /// BEP 19 web seeds.
    pub url_list: Vec<String>,
    pub creation_date: Option<i64>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
}

impl Metainfo {
    /// Tracker tiers to use: `announce-list` when present and non-empty,
    /// otherwise `announce` as a single tier (BEP 12).
    pub fn tracker_tiers(&self) -> Vec<Vec<String>> {
        if self.announce_list.iter().any(|tier| !tier.is_empty()) {
            self.announce_list.iter().filter(|tier| !tier.is_empty()).cloned().collect()
        } else {
            self.announce.iter().map(|a| vec![a.clone()]).collect()
        }
    }
}
