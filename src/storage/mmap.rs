//! The mmap backend: one shared read-write mapping per (non-empty, non-pad)
//! file. The only place ringbit maps writable files.
//!
//! Layer: driver. Files are mapped only after `fallocate` reserved all their
//! blocks ([`super::open_files`] with `Allocation::Full`): a store through a
//! mapping of a sparse file on a full disk raises SIGBUS and kills the
//! process, so that case must fail at open instead. The mapping's length is
//! the file's length from the layout and never changes while mapped.
//!
//! Remaining hazard, documented rather than handled: another process
//! truncating a mapped file makes accesses past its new end raise SIGBUS.

use super::{append_block_with, read_block_with, write_piece_with, OpenFile, StorageError};
use crate::layout::{FileSpan, Layout};
use memmap2::{Advice, MmapOptions, MmapRaw};

struct Mapped {
    file: OpenFile,
    map: MmapRaw,
}

/// Mapped files, addressed through the layout.
pub struct MmapStore {
    layout: Layout,
    files: Vec<Option<Mapped>>,
}

impl MmapStore {
    pub(crate) fn new(
        layout: Layout,
        files: Vec<Option<OpenFile>>,
    ) -> Result<MmapStore, StorageError> {
        let mut mapped = Vec::with_capacity(files.len());
        for f in files {
            match f {
                Some(f) if f.length > 0 => {
                    let map = MmapOptions::new()
                        .len(f.length as usize)
                        .map_raw(&f.file)
                        .map_err(|e| StorageError::io(&f.path, "mmap", e, 0))?;
                    // Peers ask for blocks in any order and pieces arrive in
                    // any order: kernel readahead around each fault mostly
                    // reads pages nobody asked for yet.
                    let _ = map.advise(Advice::Random);
                    mapped.push(Some(Mapped { file: f, map }));
                }
                // Pad files are not on disk; zero-length files hold no bytes.
                _ => mapped.push(None),
            }
        }
        Ok(MmapStore { layout, files: mapped })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Files held open (all of them, for the store's life).
    pub fn open_file_count(&self) -> usize {
        self.files.iter().flatten().count()
    }

    pub fn write_piece(&self, index: u32, data: &[u8]) -> Result<(), StorageError> {
        write_piece_with(&self.layout, index, data, |span, src| {
            let m = self.files[span.file_index].as_ref().expect("non-empty file is mapped");
            assert!(span.file_offset + span.len as u64 <= m.map.len() as u64);
            // SAFETY: the range [file_offset, file_offset + len) lies inside
            // the mapping (asserted above; the layout guarantees it), the
            // mapping is alive for `&self`, its file was fully allocated by
            // fallocate before mapping (no SIGBUS on a full disk), and `src`
            // is a separate heap buffer so the ranges cannot overlap. The
            // engine writes each piece once and never reads a piece while
            // writing it, so no other access races with this copy.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    m.map.as_mut_ptr().add(span.file_offset as usize),
                    src.len(),
                );
            }
            Ok(())
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
            self.copy_span(span, out);
            Ok(())
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
            self.copy_span(span, out);
            Ok(())
        })
    }

    /// Appends the span's bytes from the mapping to `out` (one copy, no
    /// zero-fill first).
    fn copy_span(&self, span: &FileSpan, out: &mut Vec<u8>) {
        let m = self.files[span.file_index].as_ref().expect("non-empty file is mapped");
        assert!(span.file_offset + span.len as u64 <= m.map.len() as u64);
        let len = span.len as usize;
        out.reserve(len);
        // SAFETY: the source is in bounds of the live mapping (asserted
        // above); the destination is `len` bytes of `out`'s spare capacity
        // (reserved above), our own heap memory, distinct from the mapping;
        // blocks are read only from verified pieces, which are never written
        // again. After the copy those `len` bytes are initialised, so the
        // length may cover them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                m.map.as_ptr().add(span.file_offset as usize),
                out.as_mut_ptr().add(out.len()),
                len,
            );
            out.set_len(out.len() + len);
        }
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        for m in self.files.iter().flatten() {
            m.map.flush().map_err(|e| StorageError::io(&m.file.path, "msync", e, 0))?;
        }
        Ok(())
    }
}
