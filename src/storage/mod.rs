//! Piece storage: one narrow interface per torrent over its files on disk, with
//! three backends (mmap, pwrite, io_uring), the recheck reader and the resume
//! file's atomic I/O.
//!
//! Layer: driver (touches files, mmap and io_uring; `tokio_uring` is imported
//! only in [`uring`]). The engine calls [`PieceStore`] from a shard:
//! whole verified pieces go in with [`PieceStore::write_piece`], blocks for
//! peers come out with [`PieceStore::read_block`]; buffers are owned and always
//! handed back, so they return to the caller's pool.
//!
//! Invariants:
//! * files are created under the download dir with the torrent's directory
//!   structure (paths from [`FileEntry::path`](crate::metainfo::FileEntry),
//!   already path-safe); pad files are never created, read as zeros and their
//!   bytes are never written;
//! * every offset is checked against the [`Layout`] before any I/O: a piece
//!   index, block range or buffer length out of bounds is an error, not a
//!   write past a file's end;
//! * the mmap backend only ever maps fully allocated files (`fallocate`
//!   succeeded): writing through a mapping of a sparse file on a full disk
//!   raises SIGBUS and kills the process, so a full disk must surface at
//!   [`PieceStore::open`] as [`StorageError::DiskFull`] instead;
//! * a full disk or an I/O error is a [`StorageError`] for that torrent, never a
//!   panic; pieces already written stay on disk untouched;
//! * [`PieceStore::open`] creates and allocates every file the same way for
//!   every backend; mmap and io_uring then hold every file for the store's
//!   life, pwrite holds a file only while it is in use (reopened on demand,
//!   never re-created; closed by [`PieceStore::close_idle_files`] once idle
//!   and flushed), so fds follow active torrents, not loaded ones;
//! * after [`PieceStore::flush`] returns `Ok` every byte written before it is
//!   durable, for every backend.

pub mod align;
pub mod blocking;
pub mod check;
mod mmap;
pub mod partfile;
mod pool;
mod pwrite;
pub mod resume;
pub mod sigbus;
mod uring;

use crate::bitfield::Bitfield;
use crate::layout::{FileSpan, Layout, LayoutError};
use crate::metainfo::{FileEntry, Info};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use mmap::MmapStore;
pub use pool::PoolStore;
pub use pwrite::PwriteStore;
pub use uring::{UringStore, DIRECT_IO_ALIGN};

/// Which I/O path a [`PieceStore`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// memmap2 shared mappings of preallocated files.
    Mmap,
    /// `pwrite`/`pread` through std's `FileExt` (synchronous, completes at
    /// once, on the calling thread).
    Pwrite,
    /// Every file operation through the shard's io_uring (open, read,
    /// write, `O_DIRECT` writes, fdatasync, close); needs a tokio-uring
    /// runtime (a shard thread). The default: a shard never blocks on disk.
    #[default]
    Uring,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "mmap" => Ok(Backend::Mmap),
            "pwrite" => Ok(Backend::Pwrite),
            "uring" | "io_uring" => Ok(Backend::Uring),
            other => Err(format!("unknown storage backend {other:?} (mmap, pwrite, uring)")),
        }
    }
}

/// Backend of the download engine: io_uring, so that no piece write,
/// upload read, fdatasync, open or close blocks a shard thread (the pwrite
/// backend made every peer of a shard wait while one ran; see
/// docs/storage.md).
pub const DEFAULT_WRITE_BACKEND: Backend = Backend::Uring;

/// How file space is reserved at [`PieceStore::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Allocation {
    /// `fallocate` every file to its full length: a torrent that does not fit
    /// fails at open with [`StorageError::DiskFull`], never mid-download.
    #[default]
    Full,
    /// Only set the file length (sparse files); a full disk surfaces at the
    /// write that hits it. Refused by the mmap backend.
    Sparse,
}

impl std::str::FromStr for Allocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Allocation, String> {
        match s {
            "full" => Ok(Allocation::Full),
            "sparse" => Ok(Allocation::Sparse),
            other => Err(format!("unknown allocation {other:?} (full, sparse)")),
        }
    }
}

/// How long the pwrite backend keeps a file open after its last read or
/// write, by default. Reopening costs one `open(2)` (microseconds), so this
/// is not about cost but about fds following activity: a file served to an
/// unchoked peer is read several times a second and a peer served only by
/// the optimistic unchoke comes back every 30 s, so 60 s keeps the files of
/// any torrent being served open, while an idle seed releases them within a
/// minute or two (10,000 idle seeding torrents hold no data-file fds).
pub const FILE_IDLE_CLOSE_SECS: u64 = 60;

/// Options of [`PieceStore::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    pub backend: Backend,
    pub allocation: Allocation,
    /// Pwrite and io_uring backends: close a file unused for this long (see
    /// [`PieceStore::close_idle_files`]); mmap holds every file.
    pub file_idle_close_secs: u64,
    /// io_uring backend: write verified pieces with `O_DIRECT` where aligned
    /// (no copy into the page cache). Turned off for a store whose
    /// filesystem refuses it (EINVAL: tmpfs before Linux 6.6), with a log line.
    pub direct_io: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            backend: Backend::default(),
            allocation: Allocation::default(),
            file_idle_close_secs: FILE_IDLE_CLOSE_SECS,
            direct_io: true,
        }
    }
}

/// A storage failure for one torrent.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{}: no space left on device (the torrent's files need {needed} more bytes)", path.display())]
    DiskFull { path: PathBuf, needed: u64 },
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot preallocate: this filesystem refuses fallocate ({source}); use sparse allocation here (`--allocation sparse`, or `allocation = \"sparse\"` in the daemon config) with the pwrite or io_uring backend", path.display())]
    PreallocateUnsupported {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists and is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} exists with another size ({size} bytes, the torrent says {expected}): not cut, nothing written", path.display())]
    ExistsWithAnotherSize { path: PathBuf, size: u64, expected: u64 },
    #[error("piece {index} out of range ({count} pieces)")]
    PieceOutOfRange { index: u32, count: u32 },
    #[error("piece {index} buffer is {got} bytes, expected {expected}")]
    WrongPieceLength { index: u32, got: usize, expected: u32 },
    #[error("block {begin}+{len} lies outside piece {index} of {size} bytes")]
    BlockOutOfRange { index: u32, begin: u32, len: u32, size: u32 },
    #[error("the mmap backend needs fully allocated files (Allocation::Full)")]
    MmapNeedsFullAllocation,
    #[error("the io_uring backend needs a tokio-uring runtime (a shard thread)")]
    NotInUringRuntime,
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl StorageError {
    /// Classifies an I/O error: ENOSPC and EDQUOT become [`StorageError::DiskFull`].
    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error, needed: u64) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                StorageError::DiskFull { path: path.to_path_buf(), needed }
            }
            _ => StorageError::Io { path: path.to_path_buf(), op, source },
        }
    }

    /// True for a full disk (the torrent stops; space may be freed and it resumed).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::DiskFull { .. })
    }
}

/// How complete one file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCompletion {
    pub path: PathBuf,
    pub length: u64,
    /// Bytes of the file lying in verified pieces.
    pub bytes_complete: u64,
    pub pad: bool,
}

/// Per-file completion of `info` from a verified-piece bitfield (pad files
/// included, flagged).
pub fn file_completion(info: &Info, layout: &Layout, have: &Bitfield) -> Vec<FileCompletion> {
    info.files
        .iter()
        .enumerate()
        .map(|(i, f)| FileCompletion {
            path: f.path.iter().collect(),
            length: f.length,
            bytes_complete: layout.file_bytes_complete(i, have),
            pad: f.pad,
        })
        .collect()
}

/// Drops the pages of the file at `path` from the page cache, after
/// writing back its dirty ones (`fdatasync`, then `POSIX_FADV_DONTNEED` on
/// the whole file). For cold-cache benchmarks: unlike writing to
/// `/proc/sys/vm/drop_caches` it needs no root and evicts only this file
/// (pages mapped by a running process stay).
pub fn drop_page_cache(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    file.sync_data()?;
    // SAFETY: posix_fadvise on an fd we own; it touches no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    match rc {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Where file `entry` of a torrent lives under `dir`.
pub fn file_path(dir: &Path, path: &[String]) -> PathBuf {
    let mut p = dir.to_path_buf();
    p.extend(path);
    p
}

/// An open file of the torrent (pad files have none).
pub(crate) struct OpenFile {
    pub path: PathBuf,
    pub file: File,
    pub length: u64,
}

/// Creates (or opens) every non-pad file read-write, with its directories,
/// and reserves its space (see [`open_file`]); pad files are `None`.
pub(crate) fn open_files(
    info: &Info,
    dir: &Path,
    allocation: Allocation,
) -> Result<Vec<Option<OpenFile>>, StorageError> {
    info.files
        .iter()
        .map(|entry| (!entry.pad).then(|| open_file(entry, dir, allocation)).transpose())
        .collect()
}

/// Creates and sizes every non-pad file of `info` under `dir`, one at a time,
/// closing each (the lazily opening backends hold no fd until use); `None`
/// for pad files.
fn create_files(
    info: &Info,
    dir: &Path,
    allocation: Allocation,
) -> Result<Vec<Option<PathBuf>>, StorageError> {
    info.files
        .iter()
        .map(|entry| match entry.pad {
            true => Ok(None),
            // The `OpenFile` is dropped here: its fd is closed.
            false => Ok(Some(open_file(entry, dir, allocation)?.path)),
        })
        .collect()
}

/// Creates (or opens) the non-pad file `entry` read-write under `dir`, with
/// its directories, and reserves its space. A file longer than the torrent
/// says is refused, never cut: it is not one ringbit wrote (ringbit sizes
/// every file at its first open). Zero-length files are created and left
/// empty.
pub(crate) fn open_file(
    entry: &FileEntry,
    dir: &Path,
    allocation: Allocation,
) -> Result<OpenFile, StorageError> {
    let path = file_path(dir, &entry.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StorageError::io(parent, "create directory", e, 0))?;
    }
    if path.exists() && !path.is_file() {
        return Err(StorageError::NotAFile { path });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io(&path, "open", e, entry.length))?;
    let meta = file.metadata().map_err(|e| StorageError::io(&path, "stat", e, 0))?;
    let current = meta.len();
    if current > entry.length {
        return Err(StorageError::ExistsWithAnotherSize {
            path,
            size: current,
            expected: entry.length,
        });
    }
    // A file already at its length with every block allocated (a
    // complete download) needs no fallocate, and must not get one:
    // fallocate bumps the mtime even when it allocates nothing, and a
    // changed mtime makes the next start recheck the file.
    use std::os::unix::fs::MetadataExt;
    let allocated = current == entry.length && meta.blocks().saturating_mul(512) >= current;
    if entry.length > 0 && !allocated {
        reserve(&file, &path, entry.length, current, allocation)?;
    }
    Ok(OpenFile { path, file, length: entry.length })
}

fn reserve(
    file: &File,
    path: &Path,
    length: u64,
    current: u64,
    allocation: Allocation,
) -> Result<(), StorageError> {
    if allocation == Allocation::Sparse {
        if current < length {
            file.set_len(length).map_err(|e| StorageError::io(path, "set length", e, length))?;
        }
        return Ok(());
    }
    // SAFETY: fallocate(2) on an fd we own, mode 0 (allocate and extend the
    // size); it touches no memory of ours.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            Err(StorageError::PreallocateUnsupported { path: path.to_path_buf(), source: err })
        }
        _ => Err(StorageError::io(path, "fallocate", err, length.saturating_sub(current))),
    }
}

/// Checks a whole-piece write against the layout.
pub(crate) fn check_piece(layout: &Layout, index: u32, len: usize) -> Result<(), StorageError> {
    if index >= layout.piece_count() {
        return Err(StorageError::PieceOutOfRange { index, count: layout.piece_count() });
    }
    let expected = layout.piece_size(index);
    if len != expected as usize {
        return Err(StorageError::WrongPieceLength { index, got: len, expected });
    }
    Ok(())
}

/// Checks a block read against the layout.
pub(crate) fn check_block(
    layout: &Layout,
    index: u32,
    begin: u32,
    len: u32,
) -> Result<(), StorageError> {
    if index >= layout.piece_count() {
        return Err(StorageError::PieceOutOfRange { index, count: layout.piece_count() });
    }
    let size = layout.piece_size(index);
    if len == 0 || begin.checked_add(len).is_none_or(|end| end > size) {
        return Err(StorageError::BlockOutOfRange { index, begin, len, size });
    }
    Ok(())
}

/// Writes the whole piece `index` from `data`, skipping pad spans, every
/// file span through `write_span(span, bytes)`. The sync backends share this
/// walk and differ only in how one span is stored.
pub(crate) fn write_piece_with(
    layout: &Layout,
    index: u32,
    data: &[u8],
    mut write_span: impl FnMut(&FileSpan, &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    check_piece(layout, index, data.len())?;
    for span in layout.piece_spans(index) {
        if span.pad {
            continue;
        }
        write_span(&span, &data[span.piece_offset as usize..][..span.len as usize])?;
    }
    Ok(())
}

/// Appends the `len` bytes at `begin` of piece `index` to `out`: pad spans
/// as zeros, every file span through `append_span(span, out)`, which must
/// append exactly `span.len` bytes. Nothing is zero-filled first (a block is
/// copied once, straight into `out`). On error `out` is cut back to its
/// length before the call. The sync backends share this walk and differ only
/// in how one span is copied.
pub(crate) fn append_block_with(
    layout: &Layout,
    index: u32,
    begin: u32,
    len: u32,
    out: &mut Vec<u8>,
    mut append_span: impl FnMut(&FileSpan, &mut Vec<u8>) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    check_block(layout, index, begin, len)?;
    let start = out.len();
    out.reserve(len as usize);
    for span in layout.block_spans(index, begin, len) {
        let before = out.len();
        let result = if span.pad {
            out.resize(before + span.len as usize, 0);
            Ok(())
        } else {
            append_span(&span, out)
        };
        if let Err(e) = result {
            out.truncate(start);
            return Err(e);
        }
        debug_assert_eq!(out.len() - before, span.len as usize);
    }
    Ok(())
}

/// Fills `buf` (cleared first) with the `len` bytes at `begin` of piece
/// `index`, through [`append_block_with`].
pub(crate) fn read_block_with(
    layout: &Layout,
    index: u32,
    begin: u32,
    len: u32,
    buf: &mut Vec<u8>,
    append_span: impl FnMut(&FileSpan, &mut Vec<u8>) -> Result<(), StorageError>,
) -> Result<usize, StorageError> {
    buf.clear();
    append_block_with(layout, index, begin, len, buf, append_span)?;
    Ok(len as usize)
}

/// One torrent's storage, as the engine calls it from a shard. The sync
/// backends complete at once; the io_uring one awaits its operations.
pub enum PieceStore {
    Mmap(MmapStore),
    Pwrite(PwriteStore),
    Uring(UringStore),
    /// The pwrite store on the runtime's blocking pool (epoll shards).
    Pool(PoolStore),
}

impl PieceStore {
    /// Opens or creates the torrent's files under `dir` and reserves their
    /// space (see [`Allocation`]). For [`Backend::Uring`] it must run on a
    /// tokio-uring runtime thread, which then owns the store.
    pub fn open(
        info: &Info,
        dir: &Path,
        options: StoreOptions,
    ) -> Result<PieceStore, StorageError> {
        let layout = Layout::new(info)?;
        match options.backend {
            Backend::Mmap => {
                if options.allocation != Allocation::Full {
                    return Err(StorageError::MmapNeedsFullAllocation);
                }
                let files = open_files(info, dir, Allocation::Full)?;
                Ok(PieceStore::Mmap(MmapStore::new(layout, files)?))
            }
            Backend::Pwrite => {
                // One file open at a time, closed once created and sized: a
                // torrent with more files than the fd limit still loads,
                // and an idle one holds no fd (see [`pwrite`]).
                let paths = create_files(info, dir, options.allocation)?;
                let idle_close = Duration::from_secs(options.file_idle_close_secs);
                Ok(PieceStore::Pwrite(PwriteStore::new(layout, paths, idle_close)))
            }
            Backend::Uring => {
                // Created and sized here with std calls (this may run outside
                // a ring: tools, tests); the shard uses `open_async`.
                let paths = create_files(info, dir, options.allocation)?;
                let idle_close = Duration::from_secs(options.file_idle_close_secs);
                Ok(PieceStore::Uring(UringStore::new(layout, paths, idle_close, options.direct_io)))
            }
        }
    }

    /// [`PieceStore::open`] for a shard: nothing blocks the calling thread.
    /// io_uring: directories, files and their space are made on the ring
    /// (`ftruncate` on the blocking pool); pwrite and mmap: the whole open
    /// runs on the blocking pool ([`blocking`]).
    pub async fn open_async(
        info: &std::sync::Arc<crate::metainfo::Metainfo>,
        dir: &Path,
        options: StoreOptions,
    ) -> Result<PieceStore, StorageError> {
        if options.backend != Backend::Uring {
            /// The sync backends' stores, which may cross threads.
            enum Opened {
                Mmap(MmapStore),
                Pwrite(PwriteStore),
            }
            let metainfo = info.clone();
            let dir = dir.to_path_buf();
            let opened =
                blocking::run(move || match PieceStore::open(&metainfo.info, &dir, options)? {
                    PieceStore::Mmap(s) => Ok(Opened::Mmap(s)),
                    PieceStore::Pwrite(s) => Ok(Opened::Pwrite(s)),
                    PieceStore::Uring(_) | PieceStore::Pool(_) => unreachable!("not asked for"),
                })
                .await
                .unwrap_or_else(|gone| {
                    Err(StorageError::Io {
                        path: PathBuf::new(),
                        op: "open",
                        source: std::io::Error::other(gone),
                    })
                });
            return opened.map(|o| match o {
                Opened::Mmap(s) => PieceStore::Mmap(s),
                Opened::Pwrite(s) => PieceStore::Pwrite(s),
            });
        }
        let info = &info.info;
        let layout = Layout::new(info)?;
        let mut paths = Vec::with_capacity(info.files.len());
        for entry in &info.files {
            let path = match entry.pad {
                true => None,
                false => Some(uring::prepare_file(entry, dir, options.allocation).await?),
            };
            paths.push(path);
        }
        let idle_close = Duration::from_secs(options.file_idle_close_secs);
        Ok(PieceStore::Uring(UringStore::new(layout, paths, idle_close, options.direct_io)))
    }

    /// [`PieceStore::open_async`] for a shard on the epoll driver: the mmap
    /// backend as asked, every other one as the pwrite store on the
    /// runtime's blocking pool ([`PoolStore`]), since there is no ring.
    pub async fn open_on_pool(
        info: &std::sync::Arc<crate::metainfo::Metainfo>,
        dir: &Path,
        options: StoreOptions,
    ) -> Result<PieceStore, StorageError> {
        let backend = match options.backend {
            Backend::Mmap => Backend::Mmap,
            Backend::Pwrite | Backend::Uring => Backend::Pwrite,
        };
        match PieceStore::open_async(info, dir, StoreOptions { backend, ..options }).await? {
            PieceStore::Pwrite(store) => Ok(PieceStore::Pool(PoolStore::new(store))),
            other => Ok(other),
        }
    }

    pub fn layout(&self) -> &Layout {
        match self {
            PieceStore::Mmap(s) => s.layout(),
            PieceStore::Pwrite(s) => s.layout(),
            PieceStore::Uring(s) => s.layout(),
            PieceStore::Pool(s) => s.layout(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            PieceStore::Mmap(_) => Backend::Mmap,
            PieceStore::Pwrite(_) => Backend::Pwrite,
            PieceStore::Uring(_) => Backend::Uring,
            PieceStore::Pool(_) => Backend::Pwrite,
        }
    }

    /// Writes a whole verified piece (`buf.len()` must equal the piece's
    /// size). The buffer is handed back whatever happens.
    pub async fn write_piece(
        &self,
        index: u32,
        buf: Vec<u8>,
    ) -> (Result<(), StorageError>, Vec<u8>) {
        match self {
            PieceStore::Mmap(s) => {
                let r = s.write_piece(index, &buf);
                (r, buf)
            }
            PieceStore::Pwrite(s) => {
                let r = s.write_piece(index, &buf);
                (r, buf)
            }
            PieceStore::Uring(s) => s.write_piece(index, buf).await,
            PieceStore::Pool(s) => s.write_piece(index, buf).await,
        }
    }

    /// Reads `len` bytes at `begin` of piece `index` into `buf` (cleared,
    /// resized to `len`; its capacity is reused). Returns the bytes read.
    pub async fn read_block(
        &self,
        index: u32,
        begin: u32,
        len: u32,
        mut buf: Vec<u8>,
    ) -> (Result<usize, StorageError>, Vec<u8>) {
        match self {
            PieceStore::Mmap(s) => {
                let r = s.read_block(index, begin, len, &mut buf);
                (r, buf)
            }
            PieceStore::Pwrite(s) => {
                let r = s.read_block(index, begin, len, &mut buf);
                (r, buf)
            }
            PieceStore::Uring(s) => s.read_block(index, begin, len, buf).await,
            PieceStore::Pool(s) => s.read_block(index, begin, len, buf).await,
        }
    }

    /// True when reads complete at once (the mmap and pwrite backends), so
    /// [`PieceStore::append_block`] can serve a block with no await.
    pub fn reads_at_once(&self) -> bool {
        !matches!(self, PieceStore::Uring(_) | PieceStore::Pool(_))
    }

    /// Appends the `len` bytes at `begin` of piece `index` to `out` (the
    /// sync backends: one copy, straight into the caller's buffer, nothing
    /// zero-filled). On error `out` keeps its length from before the call.
    /// The io_uring backend answers [`StorageError::NotInUringRuntime`]: use
    /// [`PieceStore::read_block`] with it.
    pub fn append_block(
        &self,
        index: u32,
        begin: u32,
        len: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        match self {
            PieceStore::Mmap(s) => s.append_block(index, begin, len, out),
            PieceStore::Pwrite(s) => s.append_block(index, begin, len, out),
            PieceStore::Uring(_) | PieceStore::Pool(_) => Err(StorageError::NotInUringRuntime),
        }
    }

    /// Makes every written piece durable (msync / fdatasync).
    pub async fn flush(&self) -> Result<(), StorageError> {
        match self {
            PieceStore::Mmap(s) => s.flush(),
            PieceStore::Pwrite(s) => s.flush(),
            PieceStore::Uring(s) => s.flush().await,
            PieceStore::Pool(s) => s.flush().await,
        }
    }

    /// Pwrite and io_uring backends: closes the files no read or write
    /// touched for at least [`StoreOptions::file_idle_close_secs`] before
    /// `now` (as seen by successive calls; call it periodically), except
    /// those written since the last [`PieceStore::flush`], which wait for it.
    /// The next read or write reopens a file. Cheap when no file is open.
    /// The mmap backend holds every file for the store's life: a no-op.
    pub fn close_idle_files(&self, now: Instant) {
        match self {
            PieceStore::Pwrite(s) => s.close_idle_files(now),
            PieceStore::Uring(s) => s.close_idle_files(now),
            PieceStore::Pool(s) => s.close_idle_files(now),
            PieceStore::Mmap(_) => {}
        }
    }

    /// Pwrite and io_uring backends: closes every open file that holds no
    /// write since the last [`PieceStore::flush`], however recently used (a
    /// stopped torrent, whose ticker no longer calls
    /// [`PieceStore::close_idle_files`]). A no-op for mmap.
    pub fn close_clean_files(&self) {
        match self {
            PieceStore::Pwrite(s) => s.close_clean_files(),
            PieceStore::Uring(s) => s.close_clean_files(),
            PieceStore::Pool(s) => s.close_clean_files(),
            PieceStore::Mmap(_) => {}
        }
    }

    /// Files this store holds open now (pwrite and io_uring: those in use;
    /// mmap: the mapped ones).
    pub fn open_file_count(&self) -> usize {
        match self {
            PieceStore::Mmap(s) => s.open_file_count(),
            PieceStore::Pwrite(s) => s.open_file_count(),
            PieceStore::Uring(s) => s.open_file_count(),
            PieceStore::Pool(s) => s.open_file_count(),
        }
    }

    /// Synchronous write for the sync backends (tests, tools); the io_uring
    /// backend answers [`StorageError::NotInUringRuntime`].
    pub fn write_piece_sync(&self, index: u32, buf: &[u8]) -> Result<(), StorageError> {
        match self {
            PieceStore::Mmap(s) => s.write_piece(index, buf),
            PieceStore::Pwrite(s) => s.write_piece(index, buf),
            PieceStore::Pool(s) => s.with_store(|s| s.write_piece(index, buf)),
            PieceStore::Uring(_) => Err(StorageError::NotInUringRuntime),
        }
    }

    /// Synchronous block read for the sync backends.
    pub fn read_block_sync(
        &self,
        index: u32,
        begin: u32,
        len: u32,
        buf: &mut Vec<u8>,
    ) -> Result<usize, StorageError> {
        match self {
            PieceStore::Mmap(s) => s.read_block(index, begin, len, buf),
            PieceStore::Pwrite(s) => s.read_block(index, begin, len, buf),
            PieceStore::Pool(s) => s.with_store(|s| s.read_block(index, begin, len, buf)),
            PieceStore::Uring(_) => Err(StorageError::NotInUringRuntime),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::FileEntry;

    pub(crate) fn info(piece_length: u32, files: &[(&str, u64, bool)]) -> Info {
        let mut offset = 0;
        let files: Vec<FileEntry> = files
            .iter()
            .map(|&(name, length, pad)| {
                let f = FileEntry { path: vec!["t".into(), name.into()], length, offset, pad };
                offset += length;
                f
            })
            .collect();
        let count = offset.div_ceil(piece_length as u64) as usize;
        Info {
            name: "t".into(),
            piece_length,
            pieces: vec![[0; 20]; count],
            files,
            total_length: offset,
            private: false,
            multi_file: true,
            source: None,
        }
    }

    /// The pwrite backend (tests of its lazy files and sync calls).
    fn pwrite_options() -> StoreOptions {
        StoreOptions { backend: Backend::Pwrite, ..Default::default() }
    }

    fn stream(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8 + 1).collect()
    }

    /// Writes every piece (in a scrambled order) and reads every block back,
    /// then checks the files on disk hold the stream minus pad bytes.
    fn round_trip(backend: Backend) {
        let info = info(
            16,
            &[
                ("a", 5, false),
                ("z", 0, false),
                ("pad", 11, true),
                ("b", 37, false),
                ("c", 1, false),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let store =
            PieceStore::open(&info, dir.path(), StoreOptions { backend, ..Default::default() })
                .unwrap();
        let mut data = stream(info.total_length as usize);
        data[5..16].fill(0); // pad bytes are zeros
        let count = store.layout().piece_count();
        let run = async {
            for i in (0..count).rev() {
                let s = i as usize * 16;
                let piece = data[s..(s + 16).min(data.len())].to_vec();
                let (r, back) = store.write_piece(i, piece.clone()).await;
                r.unwrap();
                assert_eq!(back, piece);
            }
            store.flush().await.unwrap();
            let mut buf = Vec::with_capacity(64);
            for i in 0..count {
                let size = store.layout().piece_size(i);
                for begin in 0..size {
                    let len = (size - begin).min(7);
                    let (r, b) = store.read_block(i, begin, len, buf).await;
                    buf = b;
                    assert_eq!(r.unwrap(), len as usize);
                    let s = i as usize * 16 + begin as usize;
                    assert_eq!(buf, &data[s..s + len as usize], "piece {i} begin {begin}");
                }
            }
            let (r, _) = store.read_block(count, 0, 1, Vec::new()).await;
            assert!(matches!(r, Err(StorageError::PieceOutOfRange { .. })));
            let (r, _) = store.read_block(0, 10, 7, Vec::new()).await;
            assert!(matches!(r, Err(StorageError::BlockOutOfRange { .. })));
            let (r, _) = store.write_piece(0, vec![0; 3]).await;
            assert!(matches!(r, Err(StorageError::WrongPieceLength { .. })));
        };
        if backend == Backend::Uring {
            tokio_uring::start(run);
        } else {
            futures_lite_block_on(run);
        }
        drop(store);
        let t = dir.path().join("t");
        assert_eq!(std::fs::read(t.join("a")).unwrap(), &data[..5]);
        assert_eq!(std::fs::read(t.join("z")).unwrap(), b"");
        assert!(!t.join("pad").exists(), "pad files are never created");
        assert_eq!(std::fs::read(t.join("b")).unwrap(), &data[16..53]);
        assert_eq!(std::fs::read(t.join("c")).unwrap(), &data[53..]);
    }

    /// The sync backends' futures are ready at once: poll them on a
    /// current-thread tokio runtime.
    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn round_trip_mmap() {
        round_trip(Backend::Mmap);
    }

    #[test]
    fn round_trip_pwrite() {
        round_trip(Backend::Pwrite);
    }

    #[test]
    fn round_trip_uring() {
        round_trip(Backend::Uring);
    }

    /// append_block adds exactly the block after what `out` already holds
    /// (pad bytes as zeros) and leaves `out` as it was on error.
    #[test]
    fn append_block_appends_after_existing_bytes_and_cuts_back_on_error() {
        let info = info(16, &[("a", 5, false), ("pad", 11, true), ("b", 37, false)]);
        let mut data = stream(info.total_length as usize);
        data[5..16].fill(0);
        for backend in [Backend::Mmap, Backend::Pwrite] {
            let dir = tempfile::tempdir().unwrap();
            let store =
                PieceStore::open(&info, dir.path(), StoreOptions { backend, ..Default::default() })
                    .unwrap();
            assert!(store.reads_at_once());
            for i in 0..store.layout().piece_count() {
                let s = i as usize * 16;
                store.write_piece_sync(i, &data[s..(s + 16).min(data.len())]).unwrap();
            }
            let mut out = b"head".to_vec();
            store.append_block(0, 3, 13, &mut out).unwrap();
            store.append_block(1, 0, 16, &mut out).unwrap();
            let mut want = b"head".to_vec();
            want.extend_from_slice(&data[3..32]);
            assert_eq!(out, want, "{backend:?}");
            let r = store.append_block(0, 10, 7, &mut out);
            assert!(matches!(r, Err(StorageError::BlockOutOfRange { .. })));
            assert_eq!(out, want, "{backend:?}: untouched after a refused read");
        }
        // A file cut short under the pwrite store: the read fails and `out`
        // is cut back to what it held (the mmap store would fault: see the
        // module docs).
        let dir = tempfile::tempdir().unwrap();
        let store = PieceStore::open(&info, dir.path(), pwrite_options()).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("t").join("b"))
            .unwrap()
            .set_len(20)
            .unwrap();
        let mut out = b"head".to_vec();
        let r = store.append_block(2, 0, 16, &mut out);
        assert!(matches!(r, Err(StorageError::Io { .. })), "{r:?}");
        assert_eq!(out, b"head");
    }

    #[test]
    fn mmap_refuses_sparse_allocation() {
        let info = info(16, &[("a", 40, false)]);
        let dir = tempfile::tempdir().unwrap();
        let r = PieceStore::open(
            &info,
            dir.path(),
            StoreOptions {
                backend: Backend::Mmap,
                allocation: Allocation::Sparse,
                ..Default::default()
            },
        );
        assert!(matches!(r, Err(StorageError::MmapNeedsFullAllocation)));
    }

    #[test]
    fn existing_data_survives_reopen() {
        let info = info(16, &[("a", 40, false)]);
        let dir = tempfile::tempdir().unwrap();
        let data = stream(40);
        {
            let s = PieceStore::open(&info, dir.path(), pwrite_options()).unwrap();
            s.write_piece_sync(1, &data[16..32]).unwrap();
        }
        for backend in [Backend::Mmap, Backend::Pwrite] {
            let s =
                PieceStore::open(&info, dir.path(), StoreOptions { backend, ..Default::default() })
                    .unwrap();
            let mut buf = Vec::new();
            s.read_block_sync(1, 0, 16, &mut buf).unwrap();
            assert_eq!(buf, &data[16..32]);
        }
    }

    /// A pwrite store over `a` (5 bytes), a pad file, `b` (37 bytes) and an
    /// empty `z`, every piece written through a first store and flushed.
    fn written_pwrite_store(dir: &Path) -> (PieceStore, Vec<u8>) {
        let info =
            info(16, &[("a", 5, false), ("pad", 11, true), ("b", 37, false), ("z", 0, false)]);
        let mut data = stream(info.total_length as usize);
        data[5..16].fill(0);
        {
            let store = PieceStore::open(&info, dir, pwrite_options()).unwrap();
            for i in 0..store.layout().piece_count() {
                let s = i as usize * 16;
                store.write_piece_sync(i, &data[s..(s + 16).min(data.len())]).unwrap();
            }
            futures_lite_block_on(store.flush()).unwrap();
        }
        let store = PieceStore::open(&info, dir, pwrite_options()).unwrap();
        (store, data)
    }

    fn read(store: &PieceStore, index: u32, begin: u32, len: u32) -> Result<Vec<u8>, StorageError> {
        let mut buf = Vec::new();
        store.read_block_sync(index, begin, len, &mut buf).map(|_| buf)
    }

    const IDLE: Duration = Duration::from_secs(FILE_IDLE_CLOSE_SECS);

    #[test]
    fn pwrite_opens_files_on_demand_and_closes_them_after_the_idle_time() {
        let dir = tempfile::tempdir().unwrap();
        let (store, data) = written_pwrite_store(dir.path());
        assert_eq!(store.open_file_count(), 0, "open creates and sizes, then closes");
        let t0 = Instant::now();
        store.close_idle_files(t0);
        assert_eq!(store.open_file_count(), 0);

        assert_eq!(read(&store, 0, 0, 5).unwrap(), &data[..5]); // a
        assert_eq!(read(&store, 2, 0, 16).unwrap(), &data[32..48]); // b
        assert_eq!(store.open_file_count(), 2);
        store.close_idle_files(t0); // both seen in use now
        store.close_idle_files(t0 + IDLE - Duration::from_millis(1));
        assert_eq!(store.open_file_count(), 2, "not idle long enough");
        assert_eq!(read(&store, 0, 1, 2).unwrap(), &data[1..3]); // a used again
        store.close_idle_files(t0 + IDLE);
        assert_eq!(store.open_file_count(), 1, "b closed, a used since the last call");
        store.close_idle_files(t0 + IDLE + IDLE);
        assert_eq!(store.open_file_count(), 0);

        // Reopened transparently, same bytes, and through append_block too.
        assert_eq!(read(&store, 1, 0, 16).unwrap(), &data[16..32]);
        let mut out = b"x".to_vec();
        store.append_block(0, 0, 16, &mut out).unwrap();
        assert_eq!(&out[1..], &data[..16]);
        assert_eq!(store.open_file_count(), 2);
        store.close_clean_files();
        assert_eq!(store.open_file_count(), 0);
    }

    #[test]
    fn mmap_keeps_its_files_whatever_the_idle_sweep() {
        let info = info(16, &[("a", 5, false), ("b", 37, false), ("z", 0, false)]);
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { backend: Backend::Mmap, ..Default::default() };
        let store = PieceStore::open(&info, dir.path(), options).unwrap();
        assert_eq!(store.open_file_count(), 2, "the two non-empty files are mapped");
        store.close_idle_files(Instant::now() + 10 * IDLE);
        store.close_clean_files();
        assert_eq!(store.open_file_count(), 2);
    }

    /// The io_uring store opens files on the ring when used, keeps a written
    /// file open until a flush synced it, and closes idle ones; opened on
    /// the ring (`open_async`) it makes the same files as the std open.
    #[test]
    fn uring_opens_on_demand_closes_when_idle_and_keeps_dirty_files() {
        let info =
            info(16, &[("a", 5, false), ("pad", 11, true), ("b", 37, false), ("z", 0, false)]);
        let mut data = stream(info.total_length as usize);
        data[5..16].fill(0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let metainfo = std::sync::Arc::new(crate::metainfo::Metainfo {
            info_hash: crate::metainfo::InfoHash([1; 20]),
            info: info.clone(),
            info_bytes: Vec::new(),
            announce: None,
            announce_list: Vec::new(),
            url_list: Vec::new(),
            creation_date: None,
            comment: None,
            created_by: None,
        });
        tokio_uring::start(async move {
            let options = StoreOptions { backend: Backend::Uring, ..Default::default() };
            let store = PieceStore::open_async(&metainfo, &path, options).await.unwrap();
            assert_eq!(store.open_file_count(), 0, "created and sized, then closed");
            let t = path.join("t");
            assert_eq!(std::fs::metadata(t.join("b")).unwrap().len(), 37);
            assert_eq!(std::fs::metadata(t.join("z")).unwrap().len(), 0);
            assert!(!t.join("pad").exists());
            for i in 0..store.layout().piece_count() {
                let s = i as usize * 16;
                let (r, _) = store.write_piece(i, data[s..(s + 16).min(data.len())].to_vec()).await;
                r.unwrap();
            }
            assert_eq!(store.open_file_count(), 2);
            let t0 = Instant::now();
            store.close_idle_files(t0);
            store.close_idle_files(t0 + 10 * IDLE);
            store.close_clean_files();
            assert_eq!(store.open_file_count(), 2, "dirty: kept for the flush");
            store.flush().await.unwrap();
            store.close_idle_files(t0 + 10 * IDLE);
            assert_eq!(store.open_file_count(), 0, "clean and idle: closed");
            let (r, buf) = store.read_block(2, 0, 16, Vec::with_capacity(16)).await;
            assert_eq!(r.unwrap(), 16);
            assert_eq!(buf, &data[32..48]);
            let (r, buf) = store.read_block(0, 3, 13, buf).await;
            assert_eq!(r.unwrap(), 13);
            assert_eq!(buf, &data[3..16], "pad bytes read as zeros");
            assert_eq!(store.open_file_count(), 2);
            // A file deleted while closed is an open error, never re-created.
            store.close_clean_files();
            std::fs::remove_file(t.join("b")).unwrap();
            let (r, _) = store.read_block(2, 0, 16, Vec::new()).await;
            assert!(matches!(r, Err(StorageError::Io { op: "open", .. })), "{r:?}");
            assert!(!t.join("b").exists());
        });
    }

    /// A file written since the last flush stays open (closing never
    /// syncs) until a flush made it durable; then the sweep closes it.
    #[test]
    fn pwrite_keeps_a_written_file_open_until_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut data) = written_pwrite_store(dir.path());
        let piece: Vec<u8> = (0..16).map(|i| 200 + i as u8).collect();
        store.write_piece_sync(2, &piece).unwrap(); // b
        data[32..48].copy_from_slice(&piece);
        assert_eq!(store.open_file_count(), 1);
        let t0 = Instant::now();
        store.close_idle_files(t0);
        store.close_idle_files(t0 + 10 * IDLE);
        store.close_clean_files();
        assert_eq!(store.open_file_count(), 1, "dirty: kept for the flush");
        futures_lite_block_on(store.flush()).unwrap();
        store.close_idle_files(t0 + 10 * IDLE);
        assert_eq!(store.open_file_count(), 0, "clean and idle since t0: closed");
        assert_eq!(read(&store, 2, 0, 16).unwrap(), piece);
        // A write refused before any I/O opens and dirties nothing.
        assert!(store.write_piece_sync(9, &piece).is_err());
        store.close_clean_files();
        assert_eq!(store.open_file_count(), 0);
        drop(store);
        assert_eq!(std::fs::read(dir.path().join("t").join("b")).unwrap(), &data[16..]);
    }

    /// A user deleting a seeded file: the next read or write while it is
    /// closed fails naming the file and "open", only for that file, and
    /// the file is not created again (an empty file would be served or
    /// half-filled as if it were the torrent's).
    #[test]
    fn pwrite_never_recreates_a_file_deleted_while_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, data) = written_pwrite_store(dir.path());
        let b = dir.path().join("t").join("b");
        std::fs::remove_file(&b).unwrap();
        let error = read(&store, 2, 0, 16).unwrap_err();
        match &error {
            StorageError::Io { path, op, source } => {
                assert_eq!(path, &b);
                assert_eq!(*op, "open");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        let text = error.to_string();
        assert!(text.contains(&*b.to_string_lossy()) && text.contains("open"), "{text}");
        let mut out = b"head".to_vec();
        assert!(store.append_block(1, 0, 16, &mut out).is_err());
        assert_eq!(out, b"head", "cut back after the failed span");
        let r = store.write_piece_sync(2, &data[32..48]);
        assert!(matches!(r, Err(StorageError::Io { op: "open", .. })), "{r:?}");
        assert!(!b.exists(), "never re-created");
        assert_eq!(store.open_file_count(), 0);
        futures_lite_block_on(store.flush()).unwrap();
        // The other files still serve.
        assert_eq!(read(&store, 0, 0, 5).unwrap(), &data[..5]);
        assert_eq!(store.open_file_count(), 1);
    }

    #[test]
    fn a_longer_existing_file_is_refused_never_cut() {
        let info = info(16, &[("a", 40, false)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t").join("a");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let theirs: Vec<u8> = (0..100u8).collect();
        std::fs::write(&path, &theirs).unwrap();
        for backend in [Backend::Pwrite, Backend::Mmap] {
            let options = StoreOptions { backend, ..StoreOptions::default() };
            let r = PieceStore::open(&info, dir.path(), options);
            assert!(
                matches!(
                    r,
                    Err(StorageError::ExistsWithAnotherSize { size: 100, expected: 40, .. })
                ),
                "{backend:?}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), theirs, "{backend:?}: byte-identical");
        }
        // The shard's open, on the ring, refuses it the same way.
        let metainfo = std::sync::Arc::new(crate::metainfo::Metainfo {
            info_hash: crate::metainfo::InfoHash([2; 20]),
            info,
            info_bytes: Vec::new(),
            announce: None,
            announce_list: Vec::new(),
            url_list: Vec::new(),
            creation_date: None,
            comment: None,
            created_by: None,
        });
        let dir_path = dir.path().to_path_buf();
        let r = tokio_uring::start(async move {
            let options = StoreOptions { backend: Backend::Uring, ..StoreOptions::default() };
            PieceStore::open_async(&metainfo, &dir_path, options).await.map(|_| ())
        });
        assert!(
            matches!(r, Err(StorageError::ExistsWithAnotherSize { size: 100, expected: 40, .. })),
            "uring: {r:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), theirs, "uring: byte-identical");
    }
}
