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
//!
//! ## Decisions
//! * Path safety is by **rejection**, never sanitising: a `name` or path
//!   element that is empty, `.`, `..`, contains `/`, `\` or NUL (so also any
//!   absolute path) makes the whole torrent invalid. A torrent that needs such
//!   a path is hostile or broken, and renaming files silently would make the
//!   data on disk disagree with what every other client writes.
//! * `name.utf-8` / `path.utf-8` are preferred when present and valid UTF-8;
//!   otherwise non-UTF-8 names are converted lossily (U+FFFD), which is safe.
//! * The `info` dictionary is strict (wrong types are errors). Fields outside
//!   it (trackers, web seeds, comment, dates) are lenient: entries of the
//!   wrong type are skipped, as libtorrent does, since they do not change
//!   what is downloaded.
//! * Pad files: BEP 47 `attr` containing `p`, and the older BitComet
//!   `_____padding_file_` names. Pad files may share a path; other files may
//!   not (two files with one path would overwrite each other).
//! * Hybrid (v1 + v2) torrents load as v1; v2-only ones are refused with
//!   [`MetainfoError::V2Only`].

use crate::bencode::{self, DecodeError, Value};
use std::fmt;
use std::path::Path;

/// Largest `.torrent` file [`Metainfo::from_file`] reads. 64 MiB holds
/// 3.3 million piece hashes; real torrents are well under 10 MiB.
pub const METAINFO_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Largest accepted `piece length`: 128 MiB, libtorrent's limit too. The one
/// source of this limit: the picker ([`crate::picker::MAX_PIECE_LENGTH`]) and
/// `create` use it, so a torrent that loads also runs.
pub const PIECE_LENGTH_MAX: u64 = 128 * 1024 * 1024;

/// Most pieces a torrent may have (its bitfield is then 512 KiB). The one
/// source of this limit: the wire's bitfield bound
/// ([`crate::wire::MAX_PIECES`]) and the picker's ([`crate::picker::MAX_PIECES`])
/// are this constant, so a torrent that loads also runs. With 16 KiB pieces
/// that is 64 GiB; bigger payloads use bigger pieces.
pub const PIECE_COUNT_MAX: u32 = 4 * 1024 * 1024;

/// Most bencode values in one `.torrent` (libtorrent's limit too): ~7 per
/// file, so about 280,000 files.
pub const METAINFO_TOKENS_MAX: usize = 2_000_000;

/// The decode limits for `.torrent` files and `info` dictionaries.
pub const METAINFO_DECODE_LIMITS: bencode::DecodeLimits = bencode::DecodeLimits {
    depth_max: bencode::DEPTH_MAX_DEFAULT,
    tokens_max: METAINFO_TOKENS_MAX,
};

/// Why a `.torrent` was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error("{0}")]
    Bencode(DecodeError),
    #[error("the torrent is not a bencoded dictionary")]
    NotADictionary,
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("`{key}` must be {expected}, not {found}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    #[error("v2-only torrents are not supported yet")]
    V2Only,
    #[error("unsupported `meta version` {0}")]
    UnsupportedVersion(i64),
    #[error("unsafe path in {what}: element {element:?} {reason}")]
    UnsafePath { what: String, element: String, reason: &'static str },
    #[error("file {index} has a negative length ({length})")]
    NegativeLength { index: usize, length: i64 },
    #[error("the total length of the files overflows 64 bits")]
    TotalLengthOverflow,
    #[error("the torrent has no files")]
    NoFiles,
    #[error("the torrent holds no data (total length 0)")]
    Empty,
    #[error("the info dictionary has both `length` and `files`")]
    LengthAndFiles,
    #[error("two files have the same path {0:?}")]
    DuplicatePath(String),
    #[error("`piece length` {0} is invalid: it must be positive and at most {PIECE_LENGTH_MAX}")]
    PieceLength(i64),
    #[error("`pieces` is {0} bytes, not a multiple of 20")]
    PiecesNotMultipleOf20(usize),
    #[error(
        "`pieces` has {found} hashes, but {total_length} bytes in pieces of {piece_length} need {expected}"
    )]
    PieceCount { found: usize, expected: u64, total_length: u64, piece_length: u64 },
    #[error("the torrent has {0} pieces, more than the limit of {PIECE_COUNT_MAX}")]
    TooManyPieces(u64),
    #[error("the torrent file is {size} bytes, more than the limit of {METAINFO_FILE_MAX_BYTES}")]
    FileTooLarge { size: u64 },
    #[error("reading {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

// By hand rather than `#[from]`, which would also make the decode error the
// `source()` and print it twice in an error chain.
impl From<DecodeError> for MetainfoError {
    fn from(e: DecodeError) -> Self {
        MetainfoError::Bencode(e)
    }
}

/// The 20-byte SHA1 of a torrent's bencoded `info` dictionary (BitTorrent v1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Lower-case hex, as trackers' whitelists and most UIs show it.
    ///
    /// A nibble table, not `format!` per byte: the daemon's status and list
    /// calls render every torrent's hash, and 20 formatted allocations per
    /// hash were 15% of its CPU while 10,000 torrents started under polling.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(40);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 0x0f)] as char);
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
    /// Parses and validates a bencoded `info` dictionary (as fetched over
    /// BEP 9), returning it with its info hash.
    pub fn from_bytes(info_bytes: &[u8]) -> Result<(InfoHash, Info), MetainfoError> {
        let value = bencode::decode_with(info_bytes, METAINFO_DECODE_LIMITS)?;
        let info = parse_info(&value)?;
        Ok((InfoHash(crate::hash::sha1(info_bytes)), info))
    }

    /// Files the user sees and storage writes: pad files left out.
    pub fn user_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.iter().filter(|f| !f.pad)
    }

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
    /// Parses and validates a `.torrent` file's bytes.
    pub fn from_bytes(input: &[u8]) -> Result<Metainfo, MetainfoError> {
        let root = bencode::decode_with(input, METAINFO_DECODE_LIMITS)?;
        let dict = root.as_dict().ok_or(MetainfoError::NotADictionary)?;
        let info_value = dict.get(b"info").ok_or(MetainfoError::Missing("info"))?;
        let info = parse_info(info_value)?;
        let info_bytes = input[info_value.span.clone()].to_vec();
        let info_hash = InfoHash(crate::hash::sha1(&info_bytes));

        let announce = root.get(b"announce").and_then(text);
        let announce_list = root
            .get(b"announce-list")
            .and_then(Value::as_list)
            .map(|tiers| {
                tiers
                    .iter()
                    .filter_map(Value::as_list)
                    .map(|tier| tier.iter().filter_map(text).collect::<Vec<_>>())
                    .filter(|tier| !tier.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        // BEP 19: a single URL or a list of them.
        let url_list = match root.get(b"url-list") {
            Some(v) if v.as_list().is_some() => {
                v.as_list().unwrap_or_default().iter().filter_map(text).collect()
            }
            Some(v) => text(v).into_iter().collect(),
            None => Vec::new(),
        };
        let comment = root
            .get(b"comment.utf-8")
            .and_then(text)
            .or_else(|| root.get(b"comment").and_then(text));
        let created_by = root.get(b"created by").and_then(text);
        let creation_date = root.get(b"creation date").and_then(Value::as_int);
        Ok(Metainfo {
            info_hash,
            info,
            info_bytes,
            announce,
            announce_list,
            url_list,
            creation_date,
            comment,
            created_by,
        })
    }

    /// Reads and parses a `.torrent` file of at most [`METAINFO_FILE_MAX_BYTES`].
    pub fn from_file(path: &Path) -> Result<Metainfo, MetainfoError> {
        use std::io::Read;
        let io = |error| MetainfoError::Io { path: path.display().to_string(), error };
        let file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > METAINFO_FILE_MAX_BYTES {
            return Err(MetainfoError::FileTooLarge { size });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // The file may grow after the size check: read one byte past the cap
        // at most.
        file.take(METAINFO_FILE_MAX_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > METAINFO_FILE_MAX_BYTES {
            return Err(MetainfoError::FileTooLarge { size: bytes.len() as u64 });
        }
        Metainfo::from_bytes(&bytes)
    }

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

/// A UTF-8 string field, lossily converted when it is not valid UTF-8 (for
/// lenient, display-only fields).
fn text(value: &Value<'_>) -> Option<String> {
    value.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn wrong_type(key: &str, expected: &'static str, found: &Value<'_>) -> MetainfoError {
    MetainfoError::WrongType { key: key.to_string(), expected, found: found.type_name() }
}

/// `key` as a string, preferring `key.utf-8` when it is present and valid.
fn utf8_preferred(
    dict: &Value<'_>,
    key: &'static str,
    utf8_key: &str,
) -> Result<Option<String>, MetainfoError> {
    if let Some(s) = dict.get(utf8_key.as_bytes()).and_then(Value::as_str) {
        return Ok(Some(s.to_string()));
    }
    match dict.get(key.as_bytes()) {
        None => Ok(None),
        Some(v) => v
            .as_bytes()
            .map(|b| Some(String::from_utf8_lossy(b).into_owned()))
            .ok_or_else(|| wrong_type(key, "a string", v)),
    }
}

/// Why a path element is unsafe to join onto a download directory, if it is.
fn unsafe_element(element: &str) -> Option<&'static str> {
    if element.is_empty() {
        Some("is empty")
    } else if element == "." || element == ".." {
        Some("is a relative directory reference")
    } else if element.contains('/') || element.contains('\\') {
        Some("contains a path separator (or makes an absolute path)")
    } else if element.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
}

fn check_element(what: impl FnOnce() -> String, element: &str) -> Result<(), MetainfoError> {
    match unsafe_element(element) {
        None => Ok(()),
        Some(reason) => {
            Err(MetainfoError::UnsafePath { what: what(), element: element.to_string(), reason })
        }
    }
}

fn file_length(index: usize, value: Option<&Value<'_>>) -> Result<u64, MetainfoError> {
    let v = value.ok_or(MetainfoError::Missing("length"))?;
    let length = v.as_int().ok_or_else(|| wrong_type("length", "an integer", v))?;
    u64::try_from(length).map_err(|_| MetainfoError::NegativeLength { index, length })
}

/// Rejects two non-pad files with one path (they would overwrite each
/// other). Sorting references costs no allocation per file, and torrents are
/// usually sorted already.
fn check_distinct_paths(files: &[FileEntry]) -> Result<(), MetainfoError> {
    let mut paths: Vec<&[String]> =
        files.iter().filter(|f| !f.pad).map(|f| f.path.as_slice()).collect();
    paths.sort_unstable();
    match paths.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(MetainfoError::DuplicatePath(pair[0].join("/"))),
        None => Ok(()),
    }
}

/// Validates the `info` dictionary (see the module invariants).
fn parse_info(value: &Value<'_>) -> Result<Info, MetainfoError> {
    let dict = value.as_dict().ok_or_else(|| wrong_type("info", "a dictionary", value))?;
    let meta_version = match dict.get(b"meta version") {
        None => 1,
        Some(v) => v.as_int().ok_or_else(|| wrong_type("meta version", "an integer", v))?,
    };
    if dict.get(b"pieces").is_none() && (meta_version == 2 || dict.get(b"file tree").is_some()) {
        return Err(MetainfoError::V2Only);
    }
    if meta_version != 1 && meta_version != 2 {
        return Err(MetainfoError::UnsupportedVersion(meta_version));
    }

    let name =
        utf8_preferred(value, "name", "name.utf-8")?.ok_or(MetainfoError::Missing("name"))?;
    check_element(|| "`name`".to_string(), &name)?;

    let piece_length_value =
        dict.get(b"piece length").ok_or(MetainfoError::Missing("piece length"))?;
    let piece_length = piece_length_value
        .as_int()
        .ok_or_else(|| wrong_type("piece length", "an integer", piece_length_value))?;
    if piece_length <= 0 || piece_length as u64 > PIECE_LENGTH_MAX {
        return Err(MetainfoError::PieceLength(piece_length));
    }

    let pieces_value = dict.get(b"pieces").ok_or(MetainfoError::Missing("pieces"))?;
    let pieces_bytes =
        pieces_value.as_bytes().ok_or_else(|| wrong_type("pieces", "a string", pieces_value))?;
    if pieces_bytes.len() % 20 != 0 {
        return Err(MetainfoError::PiecesNotMultipleOf20(pieces_bytes.len()));
    }

    let (files, multi_file) = match (dict.get(b"length"), dict.get(b"files")) {
        (Some(_), Some(_)) => return Err(MetainfoError::LengthAndFiles),
        (None, None) => return Err(MetainfoError::Missing("length or files")),
        (Some(length), None) => {
            let length = file_length(0, Some(length))?;
            // A single-file torrent's one file is its data, whatever `attr` says.
            (vec![FileEntry { path: vec![name.clone()], length, offset: 0, pad: false }], false)
        }
        (None, Some(list)) => {
            let list = list.as_list().ok_or_else(|| wrong_type("files", "a list", list))?;
            if list.is_empty() {
                return Err(MetainfoError::NoFiles);
            }
            let mut files = Vec::with_capacity(list.len());
            let mut offset = 0u64;
            for (index, file) in list.iter().enumerate() {
                if file.as_dict().is_none() {
                    return Err(wrong_type(&format!("files[{index}]"), "a dictionary", file));
                }
                let length = file_length(index, file.get(b"length"))?;
                let path_value = file
                    .get(b"path.utf-8")
                    .filter(|p| p.as_list().is_some_and(|l| l.iter().all(|e| e.as_str().is_some())))
                    .or_else(|| file.get(b"path"))
                    .ok_or(MetainfoError::Missing("path"))?;
                let elements =
                    path_value.as_list().ok_or_else(|| wrong_type("path", "a list", path_value))?;
                if elements.is_empty() {
                    return Err(MetainfoError::UnsafePath {
                        what: format!("file {index}"),
                        element: String::new(),
                        reason: "is an empty path",
                    });
                }
                let mut path = Vec::with_capacity(elements.len() + 1);
                path.push(name.clone());
                for e in elements {
                    let bytes =
                        e.as_bytes().ok_or_else(|| wrong_type("path element", "a string", e))?;
                    let element = String::from_utf8_lossy(bytes).into_owned();
                    check_element(|| format!("file {index}"), &element)?;
                    path.push(element);
                }
                let pad =
                    file.get(b"attr").and_then(Value::as_bytes).is_some_and(|a| a.contains(&b'p'))
                        || path.last().is_some_and(|p| p.starts_with("_____padding_file_"));
                files.push(FileEntry { path, length, offset, pad });
                offset = offset.checked_add(length).ok_or(MetainfoError::TotalLengthOverflow)?;
            }
            check_distinct_paths(&files)?;
            (files, true)
        }
    };
    let total_length = files
        .iter()
        .try_fold(0u64, |sum, f| sum.checked_add(f.length))
        .ok_or(MetainfoError::TotalLengthOverflow)?;
    if total_length == 0 {
        return Err(MetainfoError::Empty);
    }
    let piece_length = piece_length as u64;
    let expected = total_length.div_ceil(piece_length);
    if expected > PIECE_COUNT_MAX as u64 {
        return Err(MetainfoError::TooManyPieces(expected));
    }
    let found = pieces_bytes.len() / 20;
    if expected != found as u64 {
        return Err(MetainfoError::PieceCount { found, expected, total_length, piece_length });
    }
    let pieces = pieces_bytes
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            h
        })
        .collect();
    let private = dict.get(b"private").and_then(Value::as_int) == Some(1);
    let source = dict.get(b"source").and_then(text);
    Ok(Info {
        name,
        piece_length: piece_length as u32,
        pieces,
        files,
        total_length,
        private,
        multi_file,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::OwnedValue;

    #[test]
    fn info_hash_hex_is_lower_case_and_round_trips_every_byte() {
        let mut bytes = [0u8; 20];
        for start in (0..=255u8).step_by(20) {
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = start.wrapping_add(i as u8);
            }
            let hash = InfoHash(bytes);
            let hex = hash.to_hex();
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, expected);
            assert_eq!(InfoHash::from_hex(&hex), Some(hash));
        }
    }

    fn pieces(n: usize) -> OwnedValue {
        OwnedValue::Bytes(vec![7u8; 20 * n])
    }

    fn single(length: i64, piece_length: i64, n: usize) -> OwnedValue {
        OwnedValue::dict()
            .with("name", "file.bin")
            .with("length", length)
            .with("piece length", piece_length)
            .with("pieces", pieces(n))
    }

    fn file(path: &[&str], length: i64) -> OwnedValue {
        OwnedValue::dict()
            .with("length", length)
            .with("path", path.iter().map(|p| OwnedValue::from(*p)).collect::<Vec<_>>())
    }

    fn multi(files: Vec<OwnedValue>, piece_length: i64, n: usize) -> OwnedValue {
        OwnedValue::dict()
            .with("name", "dir")
            .with("files", files)
            .with("piece length", piece_length)
            .with("pieces", pieces(n))
    }

    fn torrent(info: OwnedValue) -> Vec<u8> {
        OwnedValue::dict().with("announce", "http://t/announce").with("info", info).encode()
    }

    fn parse(info: OwnedValue) -> Result<Metainfo, MetainfoError> {
        Metainfo::from_bytes(&torrent(info))
    }

    #[test]
    fn single_file() {
        let bytes = torrent(single(100_000, 32768, 4).with("private", 1).with("source", "X"));
        let m = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(m.info.name, "file.bin");
        assert_eq!(m.info.total_length, 100_000);
        assert_eq!(m.info.piece_count(), 4);
        assert_eq!(m.info.piece_size(3), 100_000 - 3 * 32768);
        assert!(m.info.private && !m.info.multi_file);
        assert_eq!(m.info.source.as_deref(), Some("X"));
        assert_eq!(m.tracker_tiers(), vec![vec!["http://t/announce".to_string()]]);
        // The info hash is over the bytes as written.
        let root = bencode::decode(&bytes).unwrap();
        let span = root.get(b"info").unwrap().span.clone();
        assert_eq!(m.info_bytes, &bytes[span.clone()]);
        assert_eq!(m.info_hash.0, crate::hash::sha1(&bytes[span]));
        let (h, info) = Info::from_bytes(&m.info_bytes).unwrap();
        assert_eq!((h, info), (m.info_hash, m.info));
    }

    /// The three piece limits agree (#11): a torrent at the metainfo
    /// limits builds a running core (picker included) and its bitfield
    /// fits the wire's bound; one past them is refused at load.
    #[test]
    fn a_torrent_at_the_limits_loads_and_runs() {
        let plen = PIECE_LENGTH_MAX as i64;
        let m = parse(single(2 * plen - 1, plen, 2)).unwrap();
        let params = crate::torrent::TorrentParams {
            info_hash: m.info_hash,
            piece_length: m.info.piece_length,
            total_length: m.info.total_length,
            piece_hashes: m.info.pieces.clone(),
            our_peer_id: crate::wire::PeerId([1; 20]),
            listen_port: None,
            metadata_size: None,
        };
        let none = crate::bitfield::Bitfield::new(2);
        let full = crate::bitfield::Bitfield::full(2);
        let config = crate::torrent::TorrentConfig::default();
        assert!(crate::torrent::TorrentCore::new(params, config, none, &full).is_ok());
        assert!(matches!(
            parse(single(2 * plen + 2, plen + 1, 2)),
            Err(MetainfoError::PieceLength(_))
        ));

        // The piece count: refused before the hashes are even counted.
        let count = PIECE_COUNT_MAX as i64;
        assert!(matches!(
            parse(single((count + 1) * 16384, 16384, 1)),
            Err(MetainfoError::TooManyPieces(n)) if n == count as u64 + 1
        ));
        let picker = crate::picker::Picker::new(
            crate::picker::PickerConfig::default(),
            16384,
            count as u64 * 16384,
            &crate::bitfield::Bitfield::new(PIECE_COUNT_MAX),
            &crate::bitfield::Bitfield::full(PIECE_COUNT_MAX),
            0,
        );
        assert!(picker.is_ok(), "the picker takes every piece count metainfo accepts");
        let wire = crate::wire::WireLimits::for_pieces(PIECE_COUNT_MAX);
        assert_eq!(wire.max_bitfield_len, PIECE_COUNT_MAX / 8);
        assert_eq!(crate::wire::MAX_PIECES, PIECE_COUNT_MAX);
    }

    #[test]
    fn multi_file_offsets_and_pads() {
        let pad = file(&[".pad", "10"], 10).with("attr", "p");
        let m = parse(multi(vec![file(&["a", "b"], 6), pad, file(&["c"], 20)], 16, 3)).unwrap();
        let offsets: Vec<_> = m.info.files.iter().map(|f| (f.offset, f.pad)).collect();
        assert_eq!(offsets, vec![(0, false), (6, true), (16, false)]);
        assert_eq!(m.info.files[0].path, vec!["dir", "a", "b"]);
        assert_eq!(m.info.user_files().count(), 2);
        assert!(m.info.multi_file);
    }

    #[test]
    fn utf8_variants_preferred() {
        let info =
            multi(vec![file(&["x"], 5).with("path.utf-8", vec![OwnedValue::from("ü")])], 16, 1)
                .with("name.utf-8", "Dïr");
        let m = parse(info).unwrap();
        assert_eq!(m.info.files[0].path, vec!["Dïr", "ü"]);
    }

    #[test]
    fn unsafe_paths_rejected() {
        for bad in ["..", ".", "", "a/b", "/etc", "a\\b", "nul\0"] {
            let r = parse(multi(vec![file(&["ok", bad], 5)], 16, 1));
            assert!(matches!(r, Err(MetainfoError::UnsafePath { .. })), "{bad:?}: {r:?}");
            let r = parse(single(5, 16, 1).with("name", bad));
            assert!(matches!(r, Err(MetainfoError::UnsafePath { .. })), "{bad:?}: {r:?}");
        }
        assert!(matches!(
            parse(multi(vec![file(&[], 5)], 16, 1)),
            Err(MetainfoError::UnsafePath { .. })
        ));
        let dup = multi(vec![file(&["a"], 5), file(&["a"], 5)], 16, 1);
        assert!(matches!(parse(dup), Err(MetainfoError::DuplicatePath(_))));
    }

    #[test]
    fn validation_errors() {
        assert!(matches!(
            parse(single(100, 16, 6)),
            Err(MetainfoError::PieceCount { expected: 7, .. })
        ));
        assert!(matches!(parse(single(-1, 16, 1)), Err(MetainfoError::NegativeLength { .. })));
        assert!(matches!(parse(single(5, 0, 1)), Err(MetainfoError::PieceLength(0))));
        assert!(matches!(parse(single(5, 1 << 40, 1)), Err(MetainfoError::PieceLength(_))));
        assert!(matches!(parse(single(0, 16, 0)), Err(MetainfoError::Empty)));
        let odd = single(5, 16, 1).with("pieces", OwnedValue::Bytes(vec![0; 19]));
        assert!(matches!(parse(odd), Err(MetainfoError::PiecesNotMultipleOf20(19))));
        let huge = multi(
            vec![file(&["a"], i64::MAX), file(&["b"], i64::MAX), file(&["c"], 2)],
            1 << 20,
            1,
        );
        assert!(matches!(parse(huge), Err(MetainfoError::TotalLengthOverflow)));
        assert!(matches!(parse(multi(vec![], 16, 0)), Err(MetainfoError::NoFiles)));
        assert!(matches!(
            parse(single(5, 16, 1).with("files", Vec::<OwnedValue>::new())),
            Err(MetainfoError::LengthAndFiles)
        ));
        assert!(matches!(
            parse(single(5, 16, 1).with("length", "5")),
            Err(MetainfoError::WrongType { .. })
        ));
        assert!(matches!(Metainfo::from_bytes(b"i1e"), Err(MetainfoError::NotADictionary)));
        assert!(matches!(Metainfo::from_bytes(b"de"), Err(MetainfoError::Missing("info"))));
    }

    #[test]
    fn v2_only_refused_hybrid_loads() {
        let v2 = OwnedValue::dict()
            .with("name", "x")
            .with("meta version", 2)
            .with("piece length", 16384)
            .with("file tree", OwnedValue::dict());
        let e = parse(v2).unwrap_err();
        assert_eq!(e.to_string(), "v2-only torrents are not supported yet");
        let hybrid = single(5, 16, 1).with("meta version", 2).with("file tree", OwnedValue::dict());
        assert_eq!(parse(hybrid).unwrap().info.total_length, 5);
    }

    #[test]
    fn lenient_outer_fields() {
        let bytes = OwnedValue::dict()
            .with("info", single(5, 16, 1))
            .with(
                "announce-list",
                vec![
                    vec![OwnedValue::from("a"), OwnedValue::from("b")].into(),
                    OwnedValue::Int(3),
                    vec![OwnedValue::Int(1)].into(),
                    vec![OwnedValue::from("c")].into(),
                ],
            )
            .with("url-list", "http://seed/")
            .with("comment", OwnedValue::Int(4))
            .with("creation date", 1_700_000_000)
            .encode();
        let m = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(m.announce_list, vec![vec!["a", "b"], vec!["c"]]);
        assert_eq!(m.url_list, vec!["http://seed/"]);
        assert_eq!(m.comment, None);
        assert_eq!(m.creation_date, Some(1_700_000_000));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = Metainfo::from_bytes(&bytes);
        }

        #[test]
        fn mutated_torrent_never_panics(at in proptest::prelude::any::<proptest::sample::Index>(), b in proptest::prelude::any::<u8>()) {
            let mut bytes = torrent(multi(vec![file(&["a", "b"], 6), file(&["c"], 20)], 16, 2));
            let i = at.index(bytes.len());
            bytes[i] = b;
            if let Ok(m) = Metainfo::from_bytes(&bytes) {
                for f in &m.info.files {
                    for e in &f.path {
                        proptest::prop_assert!(unsafe_element(e).is_none());
                    }
                }
            }
        }
    }
}
