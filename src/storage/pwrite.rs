//! The pwrite backend: `pwrite`/`pread` through std's `FileExt`, with files
//! opened on demand and closed when idle.
//!
//! Layer: driver. Synchronous: each call completes before it returns (the
//! page cache absorbs the write; measured 1.5 GB/s for whole pieces, twice the
//! mmap backend). A full disk (sparse allocation) is ENOSPC here, never SIGBUS.
//!
//! File descriptors follow activity, not the torrent's life: a seed box with
//! 10,000 idle torrents must not hold an fd per data file (it ran into
//! RLIMIT_NOFILE). [`super::PieceStore::open`] creates and allocates every
//! file, then closes it; a read or write (re)opens the file it touches
//! (read-write, never create or truncate: a file deleted while closed is a
//! [`StorageError::Io`] with op `"open"`, not an empty file served as data);
//! [`PwriteStore::close_idle_files`] closes those unused for the idle time.
//!
//! Invariants:
//! * `open` lists exactly the files whose handle is `Some`;
//! * a file written since the last [`PwriteStore::flush`] (`dirty`) is open
//!   and stays open until a flush synced it: closing never syncs, so the
//!   flush that resume state waits for syncs through the fd that wrote (a
//!   writeback error cannot slip past it on a since-closed fd), and a
//!   closed file holds nothing to make durable;
//! * single-threaded: the store lives on one shard (`Cell`/`RefCell`, so
//!   it is `Send` but not `Sync`), and no borrow is held across a call out.

use super::open_files::{self, FdSlot};
use super::{append_block_with, read_block_with, write_piece_with, StorageError};
use crate::layout::{FileSpan, Layout};
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One non-pad file of the torrent: where it is, and a handle while in use.
struct LazyFile {
    path: PathBuf,
    /// The fd while open, counted among the process's data fds.
    handle: RefCell<Option<(File, FdSlot)>>,
    /// Read or written since the last [`PwriteStore::close_idle_files`].
    used: Cell<bool>,
    /// Written since the last successful sync (see the module invariants).
    dirty: Cell<bool>,
    /// The sweep that last saw the file used (`None` until one has).
    used_at: Cell<Option<Instant>>,
}

impl LazyFile {
    /// Drops the handle (closing the fd) and forgets when it was used.
    fn close(&self) {
        drop(self.handle.borrow_mut().take());
        self.used.set(false);
        self.used_at.set(None);
    }
}

/// The torrent's files, opened while in use, addressed through the layout.
pub struct PwriteStore {
    layout: Layout,
    files: Vec<Option<LazyFile>>,
    /// Indices into `files` of the open ones: a sweep and a flush visit only
    /// these, so both cost nothing for an idle torrent.
    open: RefCell<Vec<usize>>,
    idle_close: Duration,
    /// The fd pressure generation this store last swept for
    /// ([`open_files`]).
    pressure_seen: Cell<u64>,
}

impl PwriteStore {
    /// A store over `paths` (one per file of the layout, `None` for pad
    /// files), all created and allocated already and none open.
    pub(crate) fn new(
        layout: Layout,
        paths: Vec<Option<PathBuf>>,
        idle_close: Duration,
    ) -> PwriteStore {
        let files = paths
            .into_iter()
            .map(|p| {
                p.map(|path| LazyFile {
                    path,
                    handle: RefCell::new(None),
                    used: Cell::new(false),
                    dirty: Cell::new(false),
                    used_at: Cell::new(None),
                })
            })
            .collect();
        PwriteStore {
            layout,
            files,
            open: RefCell::new(Vec::new()),
            idle_close,
            pressure_seen: Cell::new(open_files::pressure()),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn write_piece(&self, index: u32, data: &[u8]) -> Result<(), StorageError> {
        write_piece_with(&self.layout, index, data, |span, bytes| {
            self.with_file(span.file_index, true, |file| file.write_all_at(bytes, span.file_offset))
                .map_err(|(path, op, e)| StorageError::io(path, op, e, span.len as u64))
        })
    }

    pub fn read_block(
        &self,
        index: u32,
        begin: u32,
        len: u32,
        buf: &mut Vec<u8>,
    ) -> Result<usize, StorageError> {
        read_block_with(&self.layout, index, begin, len, buf, |span, out| {
            self.pread_span(span, out)
        })
    }

    /// Appends a block to `out` (see [`super::PieceStore::append_block`]).
    pub fn append_block(
        &self,
        index: u32,
        begin: u32,
        len: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        append_block_with(&self.layout, index, begin, len, out, |span, out| {
            self.pread_span(span, out)
        })
    }

    fn pread_span(&self, span: &FileSpan, out: &mut Vec<u8>) -> Result<(), StorageError> {
        self.with_file(span.file_index, false, |file| {
            pread_append(file, span.file_offset, span.len as usize, out)
        })
        .map_err(|(path, op, e)| StorageError::io(path, op, e, 0))
    }

    /// Runs `io` on file `index`, opening it first if it is closed. A
    /// `write` marks the file dirty before it starts (a failed write may
    /// have stored part of its bytes). Errors name the file and the
    /// operation (`"open"`, `"write"` or `"read"`).
    fn with_file<T>(
        &self,
        index: usize,
        write: bool,
        io: impl FnOnce(&File) -> io::Result<T>,
    ) -> Result<T, (&std::path::Path, &'static str, io::Error)> {
        let f = self.files[index].as_ref().expect("file spans never name a pad file");
        if f.handle.borrow().is_none() && open_files::at_cap() {
            // The process holds its share of data fds: make room here first,
            // and ask every store for the files it is not using.
            self.close_clean_except(index);
            open_files::raise_pressure();
        }
        let mut handle = f.handle.borrow_mut();
        let file: &File = match &mut *handle {
            Some((file, _)) => file,
            slot @ None => {
                // Read-write, no create, no truncate: the file was created
                // and sized at open; if it is gone now, serving or filling
                // an empty replacement would be wrong.
                let mut options = std::fs::OpenOptions::new();
                options.read(true).write(true);
                let file = match options.open(&f.path) {
                    Err(e) if open_files::is_fd_exhausted(&e) => {
                        self.close_clean_except(index);
                        open_files::raise_pressure();
                        options.open(&f.path)
                    }
                    other => other,
                }
                .map_err(|e| (f.path.as_path(), "open", e))?;
                self.open.borrow_mut().push(index);
                &slot.insert((file, FdSlot::new())).0
            }
        };
        f.used.set(true);
        if write {
            f.dirty.set(true);
        }
        io(file).map_err(|e| (f.path.as_path(), if write { "write" } else { "read" }, e))
    }

    /// Makes every write durable: `fdatasync` of each file written since
    /// the last flush. Those are all open (a dirty file is never closed); a
    /// closed file holds nothing unsynced.
    pub fn flush(&self) -> Result<(), StorageError> {
        for &index in self.open.borrow().iter() {
            let Some(f) = &self.files[index] else { continue };
            if !f.dirty.get() {
                continue;
            }
            if let Some((file, _)) = &*f.handle.borrow() {
                file.sync_data().map_err(|e| StorageError::io(&f.path, "fdatasync", e, 0))?;
            }
            f.dirty.set(false);
        }
        Ok(())
    }

    /// Closes every clean file that no read or write touched for at least
    /// the idle time, as seen by the calls to this: a file used since the
    /// previous call is stamped `now`, and closed by the first call at
    /// least the idle time later that finds it unused since. Dirty files
    /// wait for the next [`PwriteStore::flush`]. Costs one check when no
    /// file is open, otherwise a visit of the open ones.
    pub fn close_idle_files(&self, now: Instant) {
        let mut open = self.open.borrow_mut();
        if open.is_empty() {
            return;
        }
        // Short of fds (see [`open_files`]): files unused since the last
        // sweep close whatever the idle time.
        let pressure = open_files::pressure();
        let pressed = pressure != self.pressure_seen.replace(pressure) || open_files::at_cap();
        open.retain(|&index| {
            let Some(f) = &self.files[index] else { return false };
            let used_at = match f.used_at.get() {
                Some(at) if !f.used.get() => at,
                _ => {
                    f.used.set(false);
                    f.used_at.set(Some(now));
                    return true;
                }
            };
            if f.dirty.get()
                || (!pressed && now.saturating_duration_since(used_at) < self.idle_close)
            {
                return true;
            }
            f.close();
            false
        });
    }

    /// Closes every clean open file but `keep` (the process is short of
    /// fds).
    fn close_clean_except(&self, keep: usize) {
        self.open.borrow_mut().retain(|&index| {
            let Some(f) = &self.files[index] else { return false };
            if index == keep || f.dirty.get() {
                return true;
            }
            f.close();
            false
        });
    }

    /// Closes every open file with no unflushed write, used or not.
    pub fn close_clean_files(&self) {
        self.open.borrow_mut().retain(|&index| {
            let Some(f) = &self.files[index] else { return false };
            if f.dirty.get() {
                return true;
            }
            f.close();
            false
        });
    }

    /// Files with an open descriptor now.
    pub fn open_file_count(&self) -> usize {
        self.open.borrow().len()
    }
}

/// Appends exactly `len` bytes of `file` at `offset` to `out` with `pread`,
/// straight into `out`'s spare capacity (no zero-fill first). A file shorter
/// than `offset + len` is an `UnexpectedEof` error; on error `out` may have
/// grown by part of the bytes (the caller cuts it back).
fn pread_append(file: &File, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
    out.reserve(len);
    let mut done = 0;
    while done < len {
        let spare = out.spare_capacity_mut();
        let want = len - done;
        debug_assert!(spare.len() >= want);
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: the fd is open for the duration of the call (`file` is
        // borrowed); the destination is `want` bytes of `out`'s spare
        // capacity, which `reserve` made at least `len - done` long, so the
        // kernel writes only memory we own and nobody else references.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), want, at) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than its span"));
        }
        let n = n as usize;
        // SAFETY: pread initialised the first `n` (<= `want`) bytes of the
        // spare capacity, right after the current length.
        unsafe { out.set_len(out.len() + n) };
        done += n;
    }
    Ok(())
}
