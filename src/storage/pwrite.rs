//! The pwrite backend: `pwrite`/`pread` through std's `FileExt`.
//!
//! Layer: driver. Synchronous: each call completes before it returns (the
//! page cache absorbs the write; measured 1.5 GB/s for whole pieces, twice the
//! mmap backend). A full disk (sparse allocation) is ENOSPC here, never SIGBUS.

use super::{append_block_with, read_block_with, write_piece_with, OpenFile, StorageError};
use crate::layout::{FileSpan, Layout};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Files opened read-write, addressed through the layout.
pub struct PwriteStore {
    layout: Layout,
    files: Vec<Option<OpenFile>>,
}

impl PwriteStore {
    pub(crate) fn new(layout: Layout, files: Vec<Option<OpenFile>>) -> PwriteStore {
        PwriteStore { layout, files }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn write_piece(&self, index: u32, data: &[u8]) -> Result<(), StorageError> {
        write_piece_with(&self.layout, index, data, |span, bytes| {
            let f = self.files[span.file_index].as_ref().expect("non-pad file is open");
            f.file
                .write_all_at(bytes, span.file_offset)
                .map_err(|e| StorageError::io(&f.path, "write", e, span.len as u64))
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
        let f = self.files[span.file_index].as_ref().expect("non-pad file is open");
        pread_append(&f.file, span.file_offset, span.len as usize, out)
            .map_err(|e| StorageError::io(&f.path, "read", e, 0))
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        for f in self.files.iter().flatten() {
            f.file.sync_data().map_err(|e| StorageError::io(&f.path, "fdatasync", e, 0))?;
        }
        Ok(())
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
