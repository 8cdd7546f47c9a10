//! The io_uring backend (the default): every file operation of the data path
//! goes through the shard's ring, so a shard thread never makes a blocking
//! file syscall in steady state.
//!
//! Layer: driver; the only `tokio_uring` import of the storage module (with
//! [`prepare_files`]). A [`UringStore`] is `!Send`: it lives on the shard
//! thread that opened it and every call runs inside that thread's tokio-uring
//! runtime.
//!
//! What goes through the ring: `mkdirat`, `statx`, `openat`, `fallocate`,
//! `read`, `write`, `fsync(DATASYNC)` and `close`. What does not (see
//! [`super::blocking`]): `ftruncate` and the readahead hint, which tokio-uring
//! 0.5 cannot express.
//!
//! Writes: verified pieces are written with `O_DIRECT` (no copy into the page
//! cache; the disk reads the piece buffer) where the memory and the file range
//! are [`DIRECT_IO_ALIGN`]-aligned; the unaligned head and tail of a span (a
//! multi-file piece, a file's last bytes) go through the page cache on the
//! ordinary fd. A filesystem that refuses `O_DIRECT` (`EINVAL` at open: tmpfs
//! before Linux 6.6, some FUSE)
//! turns direct writes off for the store, with one log line. Reads always use
//! the ordinary fd: the kernel invalidates cached pages a direct write
//! covers, so a read after a direct write sees the new bytes.
//!
//! Files follow activity like the pwrite backend's: [`super::prepare_files`]
//! creates and sizes each file and closes it again; a read or write opens it
//! on the ring; [`UringStore::close_idle_files`] closes those idle for the idle
//! time. Closing goes through the ring too ([`RingFile`]'s drop).
//!
//! Invariants:
//! * `open` lists exactly the files whose `handle` is `Some`;
//! * a file with a write not yet covered by a successful flush is *dirty*
//!   and is never closed by a sweep. Dirty is counted in write sequence
//!   numbers, stamped when a write starts and again when it ends, so a
//!   flush that raced with a write in flight never marks that write durable;
//! * the kernel owns a buffer while an operation is in flight; it always
//!   comes back, error or not.

use super::open_files::{self, FdSlot};
use super::{blocking, check_block, check_piece, Allocation, StorageError};
use crate::layout::Layout;
use crate::metainfo::FileEntry;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio_uring::buf::BoundedBuf;

/// Alignment of memory, file offset and length for an `O_DIRECT` write. 4 KiB
/// covers every logical block size in use (512 B and 4 KiB sectors); piece
/// buffers are allocated 4 KiB-aligned (see [`super::align`]).
pub const DIRECT_IO_ALIGN: usize = 4096;

/// A file on the ring whose drop closes it through the ring (tokio-uring's own
/// drop would call `close(2)` on the shard thread). Outside a runtime (a test
/// dropping a store after its runtime ended) it falls back to that drop.
struct RingFile(Option<tokio_uring::fs::File>, FdSlot);

impl RingFile {
    fn get(&self) -> &tokio_uring::fs::File {
        self.0.as_ref().expect("only taken in drop")
    }
}

impl Drop for RingFile {
    fn drop(&mut self) {
        let Some(file) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio_uring::spawn(async move {
                let _ = file.close().await;
            });
        }
    }
}

/// One non-pad file of the torrent: where it is, and its fds while in use.
struct LazyFile {
    path: PathBuf,
    /// Read-write, buffered: reads, and the unaligned parts of writes.
    handle: RefCell<Option<Rc<RingFile>>>,
    /// Write-only `O_DIRECT`, opened at the first direct write.
    direct: RefCell<Option<Rc<RingFile>>>,
    /// Read or written since the last sweep.
    used: Cell<bool>,
    /// The sweep that last saw the file used (`None` until one has).
    used_at: Cell<Option<Instant>>,
    /// Sequence number of the last write start or end on this file.
    written_seq: Cell<u64>,
    /// Writes up to this sequence number are durable.
    synced_seq: Cell<u64>,
}

impl LazyFile {
    fn dirty(&self) -> bool {
        self.written_seq.get() > self.synced_seq.get()
    }

    fn close(&self) {
        drop(self.handle.borrow_mut().take());
        drop(self.direct.borrow_mut().take());
        self.used.set(false);
        self.used_at.set(None);
    }
}

/// The torrent's files on the shard's ring, addressed through the layout.
pub struct UringStore {
    layout: Layout,
    files: Vec<Option<LazyFile>>,
    /// Indices into `files` of the open ones (a sweep and a flush visit only
    /// these).
    open: RefCell<Vec<usize>>,
    idle_close: Duration,
    /// Direct writes wanted and not refused by the filesystem.
    direct: Cell<bool>,
    /// Store-wide write sequence (see the dirty invariant).
    seq: Cell<u64>,
    /// The fd pressure generation this store last swept for
    /// ([`open_files`]).
    pressure_seen: Cell<u64>,
    /// A sync made to free an fd failed: the file and errno, reported by
    /// every later flush.
    sync_failed: RefCell<Option<(PathBuf, Option<i32>)>>,
}

impl UringStore {
    /// A store over `paths` (one per file of the layout, `None` for pad
    /// files), all created and sized already ([`prepare_files`]), none open.
    pub(crate) fn new(
        layout: Layout,
        paths: Vec<Option<PathBuf>>,
        idle_close: Duration,
        direct_io: bool,
    ) -> UringStore {
        let files = paths
            .into_iter()
            .map(|p| {
                p.map(|path| LazyFile {
                    path,
                    handle: RefCell::new(None),
                    direct: RefCell::new(None),
                    used: Cell::new(false),
                    used_at: Cell::new(None),
                    written_seq: Cell::new(0),
                    synced_seq: Cell::new(0),
                })
            })
            .collect();
        UringStore {
            layout,
            files,
            open: RefCell::new(Vec::new()),
            idle_close,
            direct: Cell::new(direct_io),
            seq: Cell::new(0),
            pressure_seen: Cell::new(open_files::pressure()),
            sync_failed: RefCell::new(None),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Files with an open descriptor now.
    pub fn open_file_count(&self) -> usize {
        self.open.borrow().len()
    }

    /// True while writes go direct (asked for, and not refused).
    pub fn direct_io(&self) -> bool {
        self.direct.get()
    }

    fn lazy(&self, index: usize) -> &LazyFile {
        self.files[index].as_ref().expect("file spans never name a pad file")
    }

    fn stamp_write(&self, f: &LazyFile) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        f.written_seq.set(seq);
    }

    /// The buffered fd of file `index`, opened on the ring if closed (read-write,
    /// never create or truncate: a file deleted while closed is an error,
    /// not an empty file served as data).
    async fn file(&self, index: usize) -> Result<Rc<RingFile>, StorageError> {
        let f = self.lazy(index);
        f.used.set(true);
        if let Some(h) = &*f.handle.borrow() {
            return Ok(h.clone());
        }
        if open_files::at_cap() {
            // The process holds its share of data fds: make room here
            // first, and ask every store for the files it is not using.
            self.make_room(index).await?;
        }
        let mut options = tokio_uring::fs::OpenOptions::new();
        options.read(true).write(true);
        let file = match options.open(&f.path).await {
            Err(e) if open_files::is_fd_exhausted(&e) => {
                self.make_room(index).await?;
                options.open(&f.path).await
            }
            other => other,
        }
        .map_err(|e| StorageError::io(&f.path, "open", e, 0))?;
        let file = Rc::new(RingFile(Some(file), FdSlot::new()));
        let mut slot = f.handle.borrow_mut();
        if let Some(h) = &*slot {
            // Another task opened it meanwhile: ours closes on drop.
            return Ok(h.clone());
        }
        *slot = Some(file.clone());
        drop(slot);
        self.open.borrow_mut().push(index);
        Ok(file)
    }

    /// The `O_DIRECT` fd of file `index` (the buffered one must be open: it
    /// is what `open` lists). `None` when the filesystem refuses direct I/O;
    /// direct writes are then off for the store.
    async fn direct_file(&self, index: usize) -> Option<Rc<RingFile>> {
        let f = self.lazy(index);
        if let Some(h) = &*f.direct.borrow() {
            return Some(h.clone());
        }
        let opened = tokio_uring::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&f.path)
            .await;
        match opened {
            Ok(file) => {
                let file = Rc::new(RingFile(Some(file), FdSlot::new()));
                let mut slot = f.direct.borrow_mut();
                if let Some(h) = &*slot {
                    return Some(h.clone());
                }
                // Only kept while the buffered fd is open (listed in `open`),
                // so the idle sweep closes both.
                if f.handle.borrow().is_some() {
                    *slot = Some(file.clone());
                }
                Some(file)
            }
            // No free fd: this write goes buffered, later ones try again.
            Err(error) if open_files::is_fd_exhausted(&error) => None,
            Err(error) => {
                self.refuse_direct(&f.path, &error);
                None
            }
        }
    }

    fn refuse_direct(&self, path: &Path, error: &io::Error) {
        if self.direct.replace(false) {
            tracing::info!(
                path = %path.display(),
                %error,
                "O_DIRECT refused by the filesystem: piece writes go through the page cache"
            );
        }
    }

    pub async fn write_piece(
        &self,
        index: u32,
        mut buf: Vec<u8>,
    ) -> (Result<(), StorageError>, Vec<u8>) {
        if let Err(e) = check_piece(&self.layout, index, buf.len()) {
            return (Err(e), buf);
        }
        for span in self.layout.piece_spans(index) {
            if span.pad {
                continue;
            }
            let f = self.lazy(span.file_index);
            let file = match self.file(span.file_index).await {
                Ok(file) => file,
                Err(e) => return (Err(e), buf),
            };
            self.stamp_write(f);
            let start = span.piece_offset as usize;
            let (r, b) = self
                .write_span(&file, span.file_index, buf, start, span.len as usize, span.file_offset)
                .await;
            buf = b;
            self.stamp_write(f);
            if let Err(e) = r {
                return (Err(StorageError::io(&f.path, "write", e, span.len as u64)), buf);
            }
        }
        (Ok(()), buf)
    }

    /// Writes `buf[start..start + len]` at `offset` of file `index`: the
    /// aligned middle direct (when on), the rest through `file`.
    async fn write_span(
        &self,
        file: &RingFile,
        index: usize,
        mut buf: Vec<u8>,
        start: usize,
        len: usize,
        offset: u64,
    ) -> (io::Result<()>, Vec<u8>) {
        let (head, middle) = match self.direct.get() {
            true => direct_split(buf.as_ptr() as usize + start, offset, len),
            false => (len, 0),
        };
        let mut parts =
            [(0, head, false), (head, middle, true), (head + middle, len - head - middle, false)];
        for part in &mut parts {
            let (at, part_len, direct) = *part;
            if part_len == 0 {
                continue;
            }
            let from = start + at;
            let pos = offset + at as u64;
            if direct {
                if let Some(direct_file) = self.direct_file(index).await {
                    let (r, slice) =
                        direct_file.get().write_all_at(buf.slice(from..from + part_len), pos).await;
                    buf = slice.into_inner();
                    match r {
                        Ok(()) => continue,
                        // Refused after all (alignment the device wants is
                        // larger): fall back for this write and the next.
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            self.refuse_direct(&self.lazy(index).path, &e);
                        }
                        Err(e) => return (Err(e), buf),
                    }
                }
            }
            let (r, slice) = file.get().write_all_at(buf.slice(from..from + part_len), pos).await;
            buf = slice.into_inner();
            if let Err(e) = r {
                return (Err(e), buf);
            }
        }
        (Ok(()), buf)
    }

    /// Reads `len` bytes at `begin` of piece `index` into `buf` (cleared; its
    /// spare capacity is read into, nothing is zero-filled but pad bytes).
    pub async fn read_block(
        &self,
        index: u32,
        begin: u32,
        len: u32,
        mut buf: Vec<u8>,
    ) -> (Result<usize, StorageError>, Vec<u8>) {
        if let Err(e) = check_block(&self.layout, index, begin, len) {
            return (Err(e), buf);
        }
        buf.clear();
        buf.reserve(len as usize);
        for span in self.layout.block_spans(index, begin, len) {
            let start = (span.piece_offset - begin) as usize;
            debug_assert_eq!(buf.len(), start, "spans come in order");
            if span.pad {
                buf.resize(start + span.len as usize, 0);
                continue;
            }
            let f = self.lazy(span.file_index);
            let file = match self.file(span.file_index).await {
                Ok(file) => file,
                Err(e) => return (Err(e), buf),
            };
            if begin == 0 && span.piece_offset == 0 {
                // The first block of a piece: the peer will likely want the
                // rest; ask the kernel to read the piece ahead (cold data).
                readahead_hint(&f.path, span.file_offset, self.layout.piece_size(index) as u64);
            }
            let (r, slice) = file
                .get()
                .read_exact_at(buf.slice(start..start + span.len as usize), span.file_offset)
                .await;
            buf = slice.into_inner();
            if let Err(e) = r {
                buf.clear();
                return (Err(StorageError::io(&f.path, "read", e, 0)), buf);
            }
        }
        (Ok(len as usize), buf)
    }

    /// Makes every write durable: `fdatasync` on the ring for each file with
    /// a write not yet synced (all open: a dirty file is never closed).
    pub async fn flush(&self) -> Result<(), StorageError> {
        if let Some((path, errno)) = &*self.sync_failed.borrow() {
            let source = match errno {
                Some(errno) => io::Error::from_raw_os_error(*errno),
                None => io::Error::other("sync failed"),
            };
            return Err(StorageError::io(path, "fdatasync", source, 0));
        }
        let open: Vec<usize> = self.open.borrow().clone();
        for index in open {
            let f = self.lazy(index);
            if !f.dirty() {
                continue;
            }
            let seq = f.written_seq.get();
            let Some(file) = f.handle.borrow().clone() else { continue };
            file.get()
                .sync_data()
                .await
                .map_err(|e| StorageError::io(&f.path, "fdatasync", e, 0))?;
            f.synced_seq.set(f.synced_seq.get().max(seq));
        }
        Ok(())
    }

    /// Closes every clean file unused for the idle time (as
    /// [`super::PwriteStore::close_idle_files`]), or unused since the last
    /// sweep when the process is short of fds ([`open_files`]). Closing runs
    /// on the ring.
    pub fn close_idle_files(&self, now: Instant) {
        let mut open = self.open.borrow_mut();
        if open.is_empty() {
            return;
        }
        let pressure = open_files::pressure();
        let pressed = pressure != self.pressure_seen.replace(pressure) || open_files::at_cap();
        open.retain(|&index| {
            let f = self.lazy(index);
            let used_at = match f.used_at.get() {
                Some(at) if !f.used.get() => at,
                _ => {
                    f.used.set(false);
                    f.used_at.set(Some(now));
                    return true;
                }
            };
            if f.dirty() || (!pressed && now.saturating_duration_since(used_at) < self.idle_close) {
                return true;
            }
            f.close();
            false
        });
    }

    /// The process is short of data fds: closes this store's clean files
    /// but `keep`, and when every other open file has unflushed writes,
    /// syncs them first (`fdatasync` on the ring) and closes them. A failed
    /// sync is kept for the next [`UringStore::flush`] to report (the
    /// kernel reports a writeback error once per fd: a later flush would
    /// miss it). Asks every other store to give files back too.
    async fn make_room(&self, keep: usize) -> Result<(), StorageError> {
        open_files::raise_pressure();
        let before = self.open.borrow().len();
        self.close_clean_except(keep);
        if self.open.borrow().len() < before {
            return Ok(());
        }
        let dirty: Vec<usize> = self.open.borrow().iter().copied().filter(|&i| i != keep).collect();
        for index in dirty {
            let f = self.lazy(index);
            let seq = f.written_seq.get();
            let Some(file) = f.handle.borrow().clone() else { continue };
            if let Err(e) = file.get().sync_data().await {
                self.sync_failed.replace(Some((f.path.clone(), e.raw_os_error())));
                return Err(StorageError::io(&f.path, "fdatasync", e, 0));
            }
            f.synced_seq.set(f.synced_seq.get().max(seq));
        }
        self.close_clean_except(keep);
        Ok(())
    }

    /// Closes every clean open file but `keep` (the process is short of
    /// fds). A file an operation still holds closes when it ends.
    fn close_clean_except(&self, keep: usize) {
        self.open.borrow_mut().retain(|&index| {
            let f = self.lazy(index);
            if index == keep || f.dirty() {
                return true;
            }
            f.close();
            false
        });
    }

    /// Closes every open file with no unflushed write, used or not.
    pub fn close_clean_files(&self) {
        self.open.borrow_mut().retain(|&index| {
            let f = self.lazy(index);
            if f.dirty() {
                return true;
            }
            f.close();
            false
        });
    }
}

/// Splits a span of `len` bytes at memory address `addr` and file offset
/// `offset` into (buffered head, direct middle); the rest is a buffered
/// tail. The middle starts and ends on [`DIRECT_IO_ALIGN`] in the file and
/// its memory is aligned too; memory and file misaligned differently give no
/// direct part at all.
pub(crate) fn direct_split(addr: usize, offset: u64, len: usize) -> (usize, usize) {
    let align = DIRECT_IO_ALIGN as u64;
    let head = ((align - offset % align) % align) as usize;
    if head >= len || (addr + head) % DIRECT_IO_ALIGN != 0 {
        return (len, 0);
    }
    let middle = (len - head) / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN;
    if middle == 0 {
        return (len, 0);
    }
    (head, middle)
}

/// Asks the kernel to read `len` bytes at `offset` of `path` into the page
/// cache, from the blocking pool (io_uring's `FADVISE` is not in tokio-uring
/// 0.5). The hint is on the file's page cache, so a separate fd serves. A
/// full pool drops the hint.
fn readahead_hint(path: &Path, offset: u64, len: u64) {
    let path = path.to_path_buf();
    blocking::try_spawn(move || {
        use std::os::fd::AsRawFd;
        let Ok(file) = std::fs::File::open(&path) else { return };
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return;
        };
        // SAFETY: posix_fadvise on an fd we own for the call; it reads no
        // memory of ours.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
    });
}

/// Creates (or opens) the non-pad file `entry` under `dir` on the ring, with
/// its directories, refuses it if it is longer than the torrent says, and
/// reserves its space, then closes it: the ring version of
/// [`super::open_file`], same rules. Returns its path.
pub(crate) async fn prepare_file(
    entry: &FileEntry,
    dir: &Path,
    allocation: Allocation,
) -> Result<PathBuf, StorageError> {
    let path = super::file_path(dir, &entry.path);
    if let Some(parent) = path.parent() {
        tokio_uring::fs::DirBuilder::new()
            .recursive(true)
            .create(parent)
            .await
            .map_err(|e| StorageError::io(parent, "create directory", e, 0))?;
    }
    match tokio_uring::fs::statx(&path).await {
        Ok(st) if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFREG => {
            return Err(StorageError::NotAFile { path });
        }
        _ => {}
    }
    let file = tokio_uring::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .open(&path)
        .await
        .map_err(|e| StorageError::io(&path, "open", e, entry.length))?;
    let file = RingFile(Some(file), FdSlot::new());
    let st = file.get().statx().await.map_err(|e| StorageError::io(&path, "stat", e, 0))?;
    let current = st.stx_size;
    if current > entry.length {
        // Longer than the torrent says: not a file ringbit wrote (it sizes
        // every file at its first open); refused, never cut.
        return Err(StorageError::ExistsWithAnotherSize {
            path,
            size: current,
            expected: entry.length,
        });
    }
    // Complete already (every block allocated): no fallocate, which would
    // bump the mtime and make the next start recheck the file.
    let allocated = current == entry.length && st.stx_blocks.saturating_mul(512) >= current;
    if entry.length > 0 && !allocated {
        match allocation {
            Allocation::Sparse => {
                if current < entry.length {
                    set_len(&path, entry.length).await?;
                }
            }
            Allocation::Full => {
                if let Err(err) = file.get().fallocate(0, entry.length, 0).await {
                    return Err(match err.raw_os_error() {
                        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                            StorageError::PreallocateUnsupported { path, source: err }
                        }
                        _ => StorageError::io(
                            &path,
                            "fallocate",
                            err,
                            entry.length.saturating_sub(current),
                        ),
                    });
                }
            }
        }
    }
    Ok(path)
}

/// `ftruncate` from the blocking pool (no ring op for it in tokio-uring 0.5).
async fn set_len(path: &Path, length: u64) -> Result<(), StorageError> {
    let owned = path.to_path_buf();
    let result = blocking::run(move || {
        std::fs::OpenOptions::new().write(true).open(&owned)?.set_len(length)
    })
    .await
    .unwrap_or_else(|gone| Err(io::Error::other(gone)));
    result.map_err(|e| StorageError::io(path, "set length", e, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_split_keeps_only_aligned_middles() {
        const A: usize = DIRECT_IO_ALIGN;
        // Aligned memory and file: all direct.
        assert_eq!(direct_split(A, 0, 4 * A), (0, 4 * A));
        // A tail shorter than a page stays buffered.
        assert_eq!(direct_split(A, 0, 4 * A + 10), (0, 4 * A));
        // Unaligned file offset with memory misaligned the same way.
        assert_eq!(direct_split(A + 100, 100, 3 * A), (A - 100, 2 * A));
        // Memory and file misaligned differently: nothing direct.
        assert_eq!(direct_split(A + 1, 0, 4 * A), (4 * A, 0));
        // Too short for a whole aligned page.
        assert_eq!(direct_split(A + 100, 100, A), (A, 0));
        assert_eq!(direct_split(A, 0, A - 1), (A - 1, 0));
        assert_eq!(direct_split(A, 0, 0), (0, 0));
    }
}
