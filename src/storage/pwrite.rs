//! The pwrite backend: `pwrite`/`pread` through std's `FileExt`.
//!
//! Layer: driver. Synchronous: each call completes before it returns (the
//! page cache absorbs the write; measured 1.5 GB/s for whole pieces, twice the
//! mmap backend). A full disk (sparse allocation) is ENOSPC here, never SIGBUS.

use super::{read_block_with, write_piece_with, OpenFile, StorageError};
use crate::layout::Layout;
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
            let f = self.files[span.file_index].as_ref().expect("non-pad file is open");
            f.file
                .read_exact_at(out, span.file_offset)
                .map_err(|e| StorageError::io(&f.path, "read", e, 0))
        })
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        for f in self.files.iter().flatten() {
            f.file.sync_data().map_err(|e| StorageError::io(&f.path, "fdatasync", e, 0))?;
        }
        Ok(())
    }
}
