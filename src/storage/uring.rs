//! The io_uring backend: tokio-uring `write_at`/`read_at` with owned buffers.
//!
//! Layer: driver; the only `tokio_uring` import of the storage module. A
//! [`UringStore`] is `!Send`: it lives on the shard thread that opened it and
//! every call must run inside that thread's tokio-uring runtime.
//!
//! Throughput comes from several operations in flight, not from one: measured
//! here, 16 KiB writes one at a time reach 0.2 GB/s, whole 256 KiB pieces with
//! 4 in flight 1.55 GB/s. So the engine writes whole verified pieces and keeps
//! several `write_piece` futures running at once (each call is one operation
//! per file span, usually one). The kernel owns the buffer while an operation
//! is in flight; it always comes back, error or not.

use super::{check_block, check_piece, OpenFile, StorageError};
use crate::layout::Layout;
use std::path::PathBuf;
use tokio_uring::buf::BoundedBuf;

struct UringFile {
    path: PathBuf,
    file: tokio_uring::fs::File,
}

/// Files registered with the shard's io_uring, addressed through the layout.
pub struct UringStore {
    layout: Layout,
    files: Vec<Option<UringFile>>,
}

impl UringStore {
    pub(crate) fn new(
        layout: Layout,
        files: Vec<Option<OpenFile>>,
    ) -> Result<UringStore, StorageError> {
        let files = files
            .into_iter()
            .map(|f| {
                f.map(|f| UringFile { path: f.path, file: tokio_uring::fs::File::from_std(f.file) })
            })
            .collect();
        Ok(UringStore { layout, files })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Files held open (all of them, for the store's life).
    pub fn open_file_count(&self) -> usize {
        self.files.iter().flatten().count()
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
            let f = self.files[span.file_index].as_ref().expect("non-pad file is open");
            let start = span.piece_offset as usize;
            let (r, slice) = f
                .file
                .write_all_at(buf.slice(start..start + span.len as usize), span.file_offset)
                .await;
            buf = slice.into_inner();
            if let Err(e) = r {
                return (Err(StorageError::io(&f.path, "write", e, span.len as u64)), buf);
            }
        }
        (Ok(()), buf)
    }

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
        buf.resize(len as usize, 0);
        for span in self.layout.block_spans(index, begin, len) {
            let start = (span.piece_offset - begin) as usize;
            if span.pad {
                buf[start..start + span.len as usize].fill(0);
                continue;
            }
            let f = self.files[span.file_index].as_ref().expect("non-pad file is open");
            let (r, slice) = f
                .file
                .read_exact_at(buf.slice(start..start + span.len as usize), span.file_offset)
                .await;
            buf = slice.into_inner();
            if let Err(e) = r {
                return (Err(StorageError::io(&f.path, "read", e, 0)), buf);
            }
        }
        (Ok(len as usize), buf)
    }

    pub async fn flush(&self) -> Result<(), StorageError> {
        for f in self.files.iter().flatten() {
            f.file.sync_data().await.map_err(|e| StorageError::io(&f.path, "fdatasync", e, 0))?;
        }
        Ok(())
    }
}
