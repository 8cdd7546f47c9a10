//! Piece <-> file spans: where each piece's bytes live among a torrent's files.
//!
//! Layer: pure core (no files, no I/O). Owns the mapping between the torrent's
//! concatenated byte stream, cut into pieces, and its files, cut by file
//! boundaries.
//!
//! ```text
//!   byte stream  0                                                   total_length
//!                |---------------------------------------------------------|
//!   pieces       |  piece 0   |  piece 1   |  piece 2   |  piece 3   | p4 |   <- last piece short
//!   files        | a (len 9)      |b|  c (len 0, no bytes)  | pad |  d        |
//!                |----------------|-|                       |-----|----------|
//!
//!   piece 1 = [ a: file_offset 5.., len 4 ][ b: 0.., len 1 ][ pad: 0.., len 2 ][ d: 0.., ... ]
//!              piece_offset 0              4                 5                 7
//! ```
//!
//! Invariants of a [`Layout`] (checked by [`Layout::new`]):
//! * file offsets are contiguous: each file starts where the previous ended,
//!   and the last ends at `total_length`;
//! * `piece_count == ceil(total_length / piece_length)` and `piece_length > 0`;
//! * [`Layout::piece_spans`] yields, for every piece, spans in stream order
//!   that cover `0..piece_size` exactly once, never a zero-length span, so a
//!   zero-length file appears in no piece;
//! * spans in pad files (BEP 47) are yielded with `pad = true`: storage never
//!   writes them to disk, and reads of them yield zeros.

use crate::bitfield::Bitfield;
use crate::metainfo::Info;
use std::ops::Range;

/// One contiguous run of a piece's bytes that lies inside one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSpan {
    /// Index into the torrent's files (pad files included).
    pub file_index: usize,
    /// Offset of the span's first byte in that file.
    pub file_offset: u64,
    /// Offset of the span's first byte in the piece.
    pub piece_offset: u32,
    /// Length in bytes (never 0).
    pub len: u32,
    /// The span is in a pad file: never on disk, its bytes are zeros.
    pub pad: bool,
}

/// Why an [`Info`] has no consistent layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("piece length is 0")]
    ZeroPieceLength,
    #[error("file {index} starts at {offset}, expected {expected} (files must be contiguous)")]
    FileOffset { index: usize, offset: u64, expected: u64 },
    #[error("files add up to {sum} bytes but total_length is {total}")]
    TotalLength { sum: u64, total: u64 },
    #[error(
        "{got} piece hashes for {total} bytes in {piece_length}-byte pieces (expected {expected})"
    )]
    PieceCount { got: u64, expected: u64, total: u64, piece_length: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileExtent {
    offset: u64,
    length: u64,
    pad: bool,
}

/// The piece/file geometry of one torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    piece_length: u32,
    total_length: u64,
    piece_count: u32,
    files: Vec<FileExtent>,
}

impl Layout {
    /// Builds and checks the layout of `info`.
    pub fn new(info: &Info) -> Result<Layout, LayoutError> {
        let files: Vec<(u64, u64, bool)> =
            info.files.iter().map(|f| (f.offset, f.length, f.pad)).collect();
        Layout::from_parts(info.piece_length, info.total_length, info.pieces.len() as u64, &files)
    }

    /// Builds a layout from `(offset, length, pad)` per file.
    pub fn from_parts(
        piece_length: u32,
        total_length: u64,
        piece_count: u64,
        files: &[(u64, u64, bool)],
    ) -> Result<Layout, LayoutError> {
        if piece_length == 0 {
            return Err(LayoutError::ZeroPieceLength);
        }
        let mut expected = 0u64;
        let mut extents = Vec::with_capacity(files.len());
        for (index, &(offset, length, pad)) in files.iter().enumerate() {
            if offset != expected {
                return Err(LayoutError::FileOffset { index, offset, expected });
            }
            expected = expected
                .checked_add(length)
                .ok_or(LayoutError::TotalLength { sum: u64::MAX, total: total_length })?;
            extents.push(FileExtent { offset, length, pad });
        }
        if expected != total_length {
            return Err(LayoutError::TotalLength { sum: expected, total: total_length });
        }
        let want = total_length.div_ceil(piece_length as u64);
        if piece_count != want || want > u32::MAX as u64 {
            return Err(LayoutError::PieceCount {
                got: piece_count,
                expected: want,
                total: total_length,
                piece_length,
            });
        }
        Ok(Layout { piece_length, total_length, piece_count: want as u32, files: extents })
    }

    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Length of file `file_index`.
    pub fn file_length(&self, file_index: usize) -> u64 {
        self.files[file_index].length
    }

    /// Is file `file_index` a pad file?
    pub fn file_is_pad(&self, file_index: usize) -> bool {
        self.files[file_index].pad
    }

    /// Length of piece `index` (the last may be short); 0 when out of range.
    pub fn piece_size(&self, index: u32) -> u32 {
        if index >= self.piece_count {
            return 0;
        }
        let start = index as u64 * self.piece_length as u64;
        (self.total_length - start).min(self.piece_length as u64) as u32
    }

    /// The spans of piece `index`, in order. Empty when out of range.
    pub fn piece_spans(&self, index: u32) -> PieceSpans<'_> {
        let size = self.piece_size(index);
        let start = index as u64 * self.piece_length as u64;
        // First file whose end lies past the piece's start: it holds the
        // piece's first byte (zero-length files end where they start, so they
        // are skipped here and in the iterator).
        let file = self.files.partition_point(|f| f.offset + f.length <= start);
        PieceSpans { layout: self, file, stream_pos: start, stream_end: start + size as u64, start }
    }

    /// The spans covering bytes `begin..begin+len` of piece `index` (a block),
    /// in order. The range is clamped to the piece.
    pub fn block_spans(&self, index: u32, begin: u32, len: u32) -> PieceSpans<'_> {
        let size = self.piece_size(index);
        let begin = begin.min(size);
        let end = begin.saturating_add(len).min(size);
        let start = index as u64 * self.piece_length as u64;
        let from = start + begin as u64;
        let file = self.files.partition_point(|f| f.offset + f.length <= from);
        PieceSpans { layout: self, file, stream_pos: from, stream_end: start + end as u64, start }
    }

    /// Pieces that hold at least one byte of file `file_index`; empty (at the
    /// piece where it would start) for a zero-length file.
    pub fn file_piece_range(&self, file_index: usize) -> Range<u32> {
        let f = &self.files[file_index];
        let plen = self.piece_length as u64;
        let first = (f.offset / plen) as u32;
        if f.length == 0 {
            return first..first;
        }
        let last = ((f.offset + f.length - 1) / plen) as u32;
        first..last + 1
    }

    /// Bytes of file `file_index` that lie in pieces set in `have`.
    pub fn file_bytes_complete(&self, file_index: usize, have: &Bitfield) -> u64 {
        let f = &self.files[file_index];
        let plen = self.piece_length as u64;
        self.file_piece_range(file_index)
            .filter(|&p| have.get(p))
            .map(|p| {
                let ps = p as u64 * plen;
                let pe = ps + self.piece_size(p) as u64;
                pe.min(f.offset + f.length) - ps.max(f.offset)
            })
            .sum()
    }
}

/// Iterator over the [`FileSpan`]s of a piece (or a block of one).
#[derive(Clone, Debug)]
pub struct PieceSpans<'a> {
    layout: &'a Layout,
    file: usize,
    stream_pos: u64,
    stream_end: u64,
    /// Stream offset of the piece's first byte.
    start: u64,
}

impl Iterator for PieceSpans<'_> {
    type Item = FileSpan;

    fn next(&mut self) -> Option<FileSpan> {
        while self.stream_pos < self.stream_end {
            let f = self.layout.files.get(self.file)?;
            let file_end = f.offset + f.length;
            if file_end <= self.stream_pos {
                // Zero-length file (or one already consumed): no bytes here.
                self.file += 1;
                continue;
            }
            let end = file_end.min(self.stream_end);
            let span = FileSpan {
                file_index: self.file,
                file_offset: self.stream_pos - f.offset,
                piece_offset: (self.stream_pos - self.start) as u32,
                len: (end - self.stream_pos) as u32,
                pad: f.pad,
            };
            self.stream_pos = end;
            self.file += 1;
            return Some(span);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(piece_length: u32, sizes: &[(u64, bool)]) -> Layout {
        let mut off = 0;
        let files: Vec<_> = sizes
            .iter()
            .map(|&(len, pad)| {
                let f = (off, len, pad);
                off += len;
                f
            })
            .collect();
        Layout::from_parts(piece_length, off, off.div_ceil(piece_length as u64), &files).unwrap()
    }

    /// Every piece's spans cover it exactly once, in order, and map to the
    /// right file bytes; every file byte is covered by exactly one span.
    fn check_layout(l: &Layout) {
        let mut file_cover: Vec<u64> = vec![0; l.file_count()];
        let mut stream = 0u64;
        for p in 0..l.piece_count() {
            let mut at = 0u32;
            for s in l.piece_spans(p) {
                assert!(s.len > 0, "zero-length span in piece {p}");
                assert_eq!(s.piece_offset, at, "piece {p} spans out of order");
                let f = &l.files[s.file_index];
                assert_eq!(f.offset + s.file_offset, stream, "piece {p} span maps to wrong byte");
                assert!(s.file_offset + s.len as u64 <= f.length);
                assert_eq!(s.pad, f.pad);
                assert_eq!(file_cover[s.file_index], s.file_offset, "file bytes covered in order");
                file_cover[s.file_index] += s.len as u64;
                assert!(l.file_piece_range(s.file_index).contains(&p));
                at += s.len;
                stream += s.len as u64;
            }
            assert_eq!(at, l.piece_size(p), "piece {p} not fully covered");
        }
        assert_eq!(stream, l.total_length());
        for (i, f) in l.files.iter().enumerate() {
            assert_eq!(file_cover[i], f.length, "file {i} not fully covered");
            let r = l.file_piece_range(i);
            if f.length == 0 {
                assert!(r.is_empty());
            } else {
                assert_eq!(r.start as u64, f.offset / l.piece_length() as u64);
                assert!(r.end <= l.piece_count());
            }
        }
        assert_eq!(l.piece_spans(l.piece_count()).count(), 0);
    }

    #[test]
    fn every_piece_of_every_order_of_edge_sizes() {
        for plen in [1u32, 2, 3, 7, 16] {
            let p = plen as u64;
            let sizes = [0, 1, p.saturating_sub(1), p, p + 1, 2 * p + 3];
            // Every ordered choice of 1..=4 sizes (with repetition) covers
            // zero-length files between, before and after others.
            let mut orders: Vec<Vec<u64>> = vec![vec![]];
            for _ in 0..4 {
                let mut next = Vec::new();
                for o in &orders {
                    for &s in &sizes {
                        let mut n = o.clone();
                        n.push(s);
                        next.push(n);
                    }
                }
                orders.extend(next.iter().cloned());
                orders.retain(|o| o.len() <= 4);
                orders.sort();
                orders.dedup();
            }
            for order in orders.iter().filter(|o| !o.is_empty()) {
                for pad_mask in 0..(1u32 << order.len()) {
                    let files: Vec<(u64, bool)> = order
                        .iter()
                        .enumerate()
                        .map(|(i, &s)| (s, pad_mask >> i & 1 == 1))
                        .collect();
                    check_layout(&layout(plen, &files));
                }
            }
        }
    }

    #[test]
    fn piece_spanning_many_files() {
        let l = layout(16, &[(3, false), (0, false), (1, false), (2, true), (20, false)]);
        let spans: Vec<_> = l.piece_spans(0).collect();
        assert_eq!(
            spans,
            vec![
                FileSpan { file_index: 0, file_offset: 0, piece_offset: 0, len: 3, pad: false },
                FileSpan { file_index: 2, file_offset: 0, piece_offset: 3, len: 1, pad: false },
                FileSpan { file_index: 3, file_offset: 0, piece_offset: 4, len: 2, pad: true },
                FileSpan { file_index: 4, file_offset: 0, piece_offset: 6, len: 10, pad: false },
            ]
        );
        let last: Vec<_> = l.piece_spans(1).collect();
        assert_eq!(
            last,
            vec![FileSpan { file_index: 4, file_offset: 10, piece_offset: 0, len: 10, pad: false }]
        );
        assert_eq!(l.piece_size(1), 10);
        assert_eq!(l.file_piece_range(1), 0..0);
        assert_eq!(l.file_piece_range(4), 0..2);
        let block: Vec<_> = l.block_spans(0, 2, 3).collect();
        assert_eq!(block.len(), 3);
        assert_eq!(
            block[0],
            FileSpan { file_index: 0, file_offset: 2, piece_offset: 2, len: 1, pad: false }
        );
        assert_eq!(block[2].len, 1);
        check_layout(&l);
    }

    #[test]
    fn block_spans_match_piece_spans() {
        let l = layout(8, &[(5, false), (0, false), (9, true), (1, false), (13, false)]);
        for p in 0..l.piece_count() {
            let size = l.piece_size(p);
            for begin in 0..size {
                for len in 1..=size - begin {
                    let got: Vec<_> = l.block_spans(p, begin, len).collect();
                    let total: u32 = got.iter().map(|s| s.len).sum();
                    assert_eq!(total, len);
                    assert_eq!(got[0].piece_offset, begin);
                }
            }
        }
    }

    #[test]
    fn file_completion_counts_bytes_of_present_pieces() {
        let l = layout(4, &[(6, false), (3, false)]);
        let mut have = Bitfield::new(l.piece_count());
        assert_eq!(l.file_bytes_complete(0, &have), 0);
        have.set(1); // bytes 4..8: file 0 bytes 4..6, file 1 bytes 0..2
        assert_eq!(l.file_bytes_complete(0, &have), 2);
        assert_eq!(l.file_bytes_complete(1, &have), 2);
        have.set(0);
        have.set(2);
        assert_eq!(l.file_bytes_complete(0, &have), 6);
        assert_eq!(l.file_bytes_complete(1, &have), 3);
    }

    #[test]
    fn inconsistent_info_is_an_error() {
        assert_eq!(Layout::from_parts(0, 0, 0, &[]), Err(LayoutError::ZeroPieceLength));
        assert!(matches!(
            Layout::from_parts(4, 8, 2, &[(0, 4, false), (5, 3, false)]),
            Err(LayoutError::FileOffset { index: 1, .. })
        ));
        assert!(matches!(
            Layout::from_parts(4, 9, 3, &[(0, 4, false), (4, 3, false)]),
            Err(LayoutError::TotalLength { .. })
        ));
        assert!(matches!(
            Layout::from_parts(4, 8, 3, &[(0, 8, false)]),
            Err(LayoutError::PieceCount { .. })
        ));
        assert!(Layout::from_parts(4, 0, 0, &[(0, 0, false)]).unwrap().piece_count() == 0);
    }
}
