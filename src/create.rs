//! Building a `.torrent` from files on disk (`ringbit create`).
//!
//! Layer: driver-side helper (reads files), hashing through [`crate::hash`].
//! Owns: walking the source tree, choosing the piece length, hashing the byte
//! stream and writing the metainfo dictionary.
//!
//! Decisions (so the output is deterministic and never surprising):
//! * Files are sorted by path, comparing path elements as raw bytes, so the
//!   same tree gives the same torrent on every machine.
//! * Nothing is skipped silently: hidden files and empty files are included
//!   (like mktorrent without `-e`). Empty directories cannot be expressed in
//!   a torrent and are the only thing left out.
//! * Symlinks are followed (a link to a file adds that file's bytes under the
//!   link's name); a link back to one of its own ancestor directories is a
//!   loop and refused. Names that are not UTF-8 are refused (a torrent stores
//!   text names, and a lossy rename would not match the data on disk).
//! * A single file gives a single-file torrent whose info dictionary has
//!   exactly `length`, `name`, `piece length`, `pieces` (+ `private` when
//!   set, `source` when given), as mktorrent and libtorrent write it, so the
//!   info hashes match theirs.
//! * Pieces span files: piece `i` is bytes `i * piece_length ..` of all files
//!   concatenated in torrent order, read across file boundaries.

use crate::bencode::OwnedValue;
use crate::metainfo::{InfoHash, PIECE_LENGTH_MAX};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Smallest piece length `create` accepts and auto picks (one block).
pub const PIECE_LENGTH_MIN: u32 = 16 * 1024;
/// Largest piece length the auto rule picks.
pub const AUTO_PIECE_LENGTH_MAX: u32 = 16 * 1024 * 1024;
/// The auto rule picks the smallest power of two giving at most this many pieces.
pub const AUTO_PIECES_TARGET_MAX: u64 = 2000;
/// Most files one torrent may hold.
pub const FILES_MAX: usize = 1_000_000;
/// Deepest directory nesting walked.
pub const DIRECTORY_DEPTH_MAX: usize = 256;

/// What goes into the torrent besides the files.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Tracker tiers (BEP 12); the first URL becomes `announce`.
    pub trackers: Vec<Vec<String>>,
    /// `None` picks one with [`auto_piece_length`].
    pub piece_length: Option<u32>,
    pub private: bool,
    pub comment: Option<String>,
    /// BEP 19 `url-list`.
    pub web_seeds: Vec<String>,
    /// Seconds since the epoch; `None` leaves `creation date` out.
    pub creation_date: Option<i64>,
    pub source: Option<String>,
    pub created_by: Option<String>,
    /// Hashing threads (0 = every core).
    pub threads: usize,
}

/// A file found under the source path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path elements below the root (empty for a single-file torrent).
    pub path: Vec<String>,
    /// Where to read it.
    pub disk_path: PathBuf,
    pub length: u64,
}

/// The result of [`create`].
#[derive(Clone, Debug)]
pub struct CreatedTorrent {
    /// The whole `.torrent` file.
    pub bytes: Vec<u8>,
    pub info_hash: InfoHash,
    pub piece_length: u32,
    pub piece_count: u32,
    pub total_length: u64,
    pub file_count: usize,
}

/// Why a torrent could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{0}: not a regular file or directory")]
    NotFileOrDirectory(PathBuf),
    #[error("{0}: the name is not UTF-8")]
    NameNotUtf8(PathBuf),
    #[error("{0}: symlink loop (a link to one of its own parent directories)")]
    SymlinkLoop(PathBuf),
    #[error("{0}: directories nest deeper than {DIRECTORY_DEPTH_MAX}")]
    TooDeep(PathBuf),
    #[error("more than {FILES_MAX} files")]
    TooManyFiles,
    #[error("{0}: nothing to share (no data in any file)")]
    Empty(PathBuf),
    #[error(
        "piece length {0} is invalid: it must be a power of two from {PIECE_LENGTH_MIN} to {PIECE_LENGTH_MAX}"
    )]
    PieceLength(u64),
    #[error("the data needs more than 2^32 pieces; use a larger piece length")]
    TooManyPieces,
    #[error("{0}: the file changed size while it was being hashed")]
    FileChanged(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CreateError + '_ {
    move |error| CreateError::Io { path: path.to_path_buf(), error }
}

/// The smallest power of two giving at most [`AUTO_PIECES_TARGET_MAX`] pieces
/// (so 1000-2000 pieces for large data), clamped to
/// [`PIECE_LENGTH_MIN`]..=[`AUTO_PIECE_LENGTH_MAX`].
pub fn auto_piece_length(total_length: u64) -> u32 {
    let mut piece_length = PIECE_LENGTH_MIN;
    while piece_length < AUTO_PIECE_LENGTH_MAX
        && total_length.div_ceil(piece_length as u64) > AUTO_PIECES_TARGET_MAX
    {
        piece_length *= 2;
    }
    piece_length
}

/// Checks a user-chosen piece length.
pub fn check_piece_length(piece_length: u64) -> Result<u32, CreateError> {
    if piece_length.is_power_of_two()
        && piece_length >= PIECE_LENGTH_MIN as u64
        && piece_length <= PIECE_LENGTH_MAX
    {
        Ok(piece_length as u32)
    } else {
        Err(CreateError::PieceLength(piece_length))
    }
}

fn utf8_name(path: &Path, name: &std::ffi::OsStr) -> Result<String, CreateError> {
    name.to_str().map(str::to_string).ok_or_else(|| CreateError::NameNotUtf8(path.to_path_buf()))
}

/// Lists the files under `root` (or `root` itself when it is a file), sorted
/// by path elements. Walks with an explicit stack, following symlinks.
pub fn scan(root: &Path) -> Result<Vec<SourceFile>, CreateError> {
    let meta = std::fs::metadata(root).map_err(io_error(root))?;
    if meta.is_file() {
        return Ok(vec![SourceFile {
            path: Vec::new(),
            disk_path: root.to_path_buf(),
            length: meta.len(),
        }]);
    }
    if !meta.is_dir() {
        return Err(CreateError::NotFileOrDirectory(root.to_path_buf()));
    }
    use std::os::unix::fs::MetadataExt;
    /// A directory still to visit: where it is, its path elements, and the
    /// (device, inode) of itself and its ancestors, to recognise loops.
    type Pending = (PathBuf, Vec<String>, Vec<(u64, u64)>);
    let mut stack: Vec<Pending> =
        vec![(root.to_path_buf(), Vec::new(), vec![(meta.dev(), meta.ino())])];
    let mut files = Vec::new();
    while let Some((dir, elements, ancestors)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let entry = entry.map_err(io_error(&dir))?;
            let disk_path = entry.path();
            let name = utf8_name(&disk_path, &entry.file_name())?;
            let meta = std::fs::metadata(&disk_path).map_err(io_error(&disk_path))?;
            let mut path = elements.clone();
            path.push(name);
            if meta.is_file() {
                if files.len() == FILES_MAX {
                    return Err(CreateError::TooManyFiles);
                }
                files.push(SourceFile { path, disk_path, length: meta.len() });
            } else if meta.is_dir() {
                let id = (meta.dev(), meta.ino());
                if ancestors.contains(&id) {
                    return Err(CreateError::SymlinkLoop(disk_path));
                }
                if ancestors.len() >= DIRECTORY_DEPTH_MAX {
                    return Err(CreateError::TooDeep(disk_path));
                }
                let mut below = ancestors.clone();
                below.push(id);
                stack.push((disk_path, path, below));
            } else {
                return Err(CreateError::NotFileOrDirectory(disk_path));
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Reads piece `index` (bytes `index * piece_length ..`) of the files'
/// concatenated stream into `buf`. `offsets[i]` is file `i`'s first byte.
fn read_piece(
    files: &[SourceFile],
    offsets: &[u64],
    total_length: u64,
    piece_length: u32,
    index: u32,
    buf: &mut Vec<u8>,
) -> Result<(), CreateError> {
    let start = index as u64 * piece_length as u64;
    let end = (start + piece_length as u64).min(total_length);
    buf.resize((end - start) as usize, 0);
    // The last file starting at or before `start` (skipping empty files is
    // automatic: their range is empty).
    let mut i = offsets.partition_point(|&o| o <= start).saturating_sub(1);
    let mut filled = 0usize;
    while filled < buf.len() {
        let file = files.get(i).ok_or_else(|| CreateError::FileChanged(PathBuf::new()))?;
        let pos = start + filled as u64;
        let file_end = offsets[i] + file.length;
        if pos >= file_end {
            i += 1;
            continue;
        }
        let take = ((file_end - pos) as usize).min(buf.len() - filled);
        let f = std::fs::File::open(&file.disk_path).map_err(io_error(&file.disk_path))?;
        f.read_exact_at(&mut buf[filled..filled + take], pos - offsets[i]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                CreateError::FileChanged(file.disk_path.clone())
            } else {
                CreateError::Io { path: file.disk_path.clone(), error: e }
            }
        })?;
        filled += take;
        i += 1;
    }
    Ok(())
}

/// Makes a torrent of `root` (a file or a directory). `on_piece(index)` is
/// called from the hashing threads after each piece (for progress).
pub fn create(
    root: &Path,
    options: &CreateOptions,
    on_piece: impl Fn(u32) + Sync,
) -> Result<CreatedTorrent, CreateError> {
    let files = scan(root)?;
    create_from_files(&torrent_name(root)?, files, options, on_piece)
}

/// The torrent's `name`: the last element of `root` (of its canonical form
/// for paths like `.`).
pub fn torrent_name(root: &Path) -> Result<String, CreateError> {
    match root.file_name() {
        Some(n) => utf8_name(root, n),
        None => {
            let canonical = root.canonicalize().map_err(io_error(root))?;
            let n = canonical.file_name().ok_or_else(|| CreateError::Empty(root.into()))?;
            utf8_name(root, n)
        }
    }
}

/// The piece length `options` give for `total_length` bytes.
pub fn effective_piece_length(
    options: &CreateOptions,
    total_length: u64,
) -> Result<u32, CreateError> {
    match options.piece_length {
        Some(p) => check_piece_length(p as u64),
        None => Ok(auto_piece_length(total_length)),
    }
}

/// Makes a torrent named `name` of `files`, which must be sorted as [`scan`]
/// sorts them (a single file with an empty path gives a single-file torrent).
pub fn create_from_files(
    name: &str,
    files: Vec<SourceFile>,
    options: &CreateOptions,
    on_piece: impl Fn(u32) + Sync,
) -> Result<CreatedTorrent, CreateError> {
    let mut offsets = Vec::with_capacity(files.len());
    let mut total_length = 0u64;
    for f in &files {
        offsets.push(total_length);
        total_length += f.length;
    }
    if total_length == 0 {
        return Err(CreateError::Empty(PathBuf::from(name)));
    }
    let piece_length = effective_piece_length(options, total_length)?;
    let piece_count = u32::try_from(total_length.div_ceil(piece_length as u64))
        .map_err(|_| CreateError::TooManyPieces)?;
    let threads =
        if options.threads == 0 { crate::hash::default_threads() } else { options.threads };
    let hashes = crate::hash::hash_pieces_parallel(
        piece_count,
        threads,
        |index, buf| read_piece(&files, &offsets, total_length, piece_length, index, buf),
        on_piece,
    )?;

    let single = files.len() == 1 && files[0].path.is_empty();
    let mut info = OwnedValue::dict()
        .with("name", name)
        .with("piece length", piece_length as i64)
        .with("pieces", hashes.concat());
    if single {
        info.insert("length", files[0].length as i64);
    } else {
        let list: Vec<OwnedValue> = files
            .iter()
            .map(|f| {
                OwnedValue::dict().with("length", f.length as i64).with(
                    "path",
                    f.path.iter().map(|e| OwnedValue::from(e.as_str())).collect::<Vec<_>>(),
                )
            })
            .collect();
        info.insert("files", list);
    }
    if options.private {
        info.insert("private", 1);
    }
    if let Some(source) = &options.source {
        info.insert("source", source.as_str());
    }
    let info_bytes = info.encode();
    let info_hash = InfoHash(crate::hash::sha1(&info_bytes));

    let mut root = OwnedValue::dict().with("info", info);
    let tiers: Vec<&Vec<String>> = options.trackers.iter().filter(|t| !t.is_empty()).collect();
    if let Some(first) = tiers.first() {
        root.insert("announce", first[0].as_str());
    }
    // Like mktorrent: `announce-list` only when there is more than one URL.
    if tiers.iter().map(|t| t.len()).sum::<usize>() > 1 {
        let list: Vec<OwnedValue> = tiers
            .iter()
            .map(|t| OwnedValue::List(t.iter().map(|u| OwnedValue::from(u.as_str())).collect()))
            .collect();
        root.insert("announce-list", list);
    }
    if let Some(comment) = &options.comment {
        root.insert("comment", comment.as_str());
    }
    if let Some(created_by) = &options.created_by {
        root.insert("created by", created_by.as_str());
    }
    if let Some(date) = options.creation_date {
        root.insert("creation date", date);
    }
    match options.web_seeds.as_slice() {
        [] => {}
        [one] => root.insert("url-list", one.as_str()),
        many => root.insert(
            "url-list",
            many.iter().map(|u| OwnedValue::from(u.as_str())).collect::<Vec<_>>(),
        ),
    }
    Ok(CreatedTorrent {
        bytes: root.encode(),
        info_hash,
        piece_length,
        piece_count,
        total_length,
        file_count: files.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::Metainfo;

    #[test]
    fn auto_rule() {
        assert_eq!(auto_piece_length(1), PIECE_LENGTH_MIN);
        assert_eq!(auto_piece_length(2000 * 16384), 16384);
        assert_eq!(auto_piece_length(2000 * 16384 + 1), 32768);
        let gib = 1u64 << 30;
        let p = auto_piece_length(gib) as u64;
        assert!((1000..=2000).contains(&gib.div_ceil(p)), "{p}");
        assert_eq!(auto_piece_length(u64::MAX / 2), AUTO_PIECE_LENGTH_MAX);
    }

    #[test]
    fn piece_length_checks() {
        assert!(check_piece_length(262144).is_ok());
        assert!(check_piece_length(300000).is_err());
        assert!(check_piece_length(8192).is_err());
        assert!(check_piece_length(1 << 29).is_err());
    }

    #[test]
    fn multi_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("payload");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("b.bin"), &data[..40_000]).unwrap();
        std::fs::write(root.join("sub/deeper/c"), &data[40_000..40_001]).unwrap();
        std::fs::write(root.join("sub/empty"), b"").unwrap();
        std::fs::write(root.join(".hidden"), &data[40_001..]).unwrap();
        let options = CreateOptions {
            trackers: vec![vec!["http://a/announce".into(), "http://b/announce".into()]],
            piece_length: Some(16384),
            threads: 2,
            ..Default::default()
        };
        let t = create(&root, &options, |_| {}).unwrap();
        let m = Metainfo::from_bytes(&t.bytes).unwrap();
        assert_eq!(m.info_hash, t.info_hash);
        let paths: Vec<String> = m.info.files.iter().map(|f| f.path.join("/")).collect();
        assert_eq!(
            paths,
            ["payload/.hidden", "payload/b.bin", "payload/sub/deeper/c", "payload/sub/empty"]
        );
        assert_eq!(m.info.total_length, 100_000);
        // Pieces cover the concatenation in sorted order.
        let mut stream = data[40_001..].to_vec();
        stream.extend_from_slice(&data[..40_000]);
        stream.extend_from_slice(&data[40_000..40_001]);
        for (i, chunk) in stream.chunks(16384).enumerate() {
            assert_eq!(m.info.pieces[i], crate::hash::sha1(chunk), "piece {i}");
        }
        assert_eq!(m.announce.as_deref(), Some("http://a/announce"));
        assert_eq!(m.announce_list.len(), 1);
    }

    #[test]
    fn symlink_loop_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(&root, root.join("d/loop")).unwrap();
        assert!(matches!(scan(&root), Err(CreateError::SymlinkLoop(_))));
    }

    #[test]
    fn empty_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("e"), b"").unwrap();
        let r = create(dir.path(), &CreateOptions::default(), |_| {});
        assert!(matches!(r, Err(CreateError::Empty(_))));
    }
}
