//! Part files: where a partial download (`download --only`) keeps the bytes
//! of unselected files that share a piece with a selected one, so that the
//! unselected file itself is never created nor preallocated (libtorrent's
//! `.parts` file does the same job).
//!
//! Layer: pure (a function from a torrent's [`Info`] and a file selection to
//! the [`Info`] the storage and recheck use); the backends then need no
//! knowledge of part files at all.
//!
//! How: the *store info* has the same pieces, piece length and total length
//! as the torrent, and its file list is the torrent's with every unselected
//! file replaced by up to three contiguous entries:
//!
//! ```text
//!  pieces   |  wanted P  |  unwanted  |  unwanted  |  wanted Q  |
//!  files    | sel. A |      unselected file F          | sel. B |
//!  store    | A      | head (part) |   gap (pad)   | tail (part)| B |
//! ```
//!
//! * the *head*: F's bytes inside its first piece, when that piece is wanted
//!   (it touches a selected file), stored in the part file
//!   `<download dir>/.<info hash>.parts/<file index>.<offset in F>`;
//! * the *gap*: the bytes no wanted piece touches, a pad entry: never
//!   created, never written, read as zeros (nothing reads them: no piece
//!   that holds them is wanted, so none is downloaded or served);
//! * the *tail*: F's bytes inside its last piece, when that piece is wanted.
//!
//! Only a file's first and last pieces can be wanted without the file being
//! selected (every piece in between lies inside the file alone), so two part
//! entries per file suffice. A boundary piece is written, read for upload
//! and rechecked through ordinary file entries; resume state stamps the part
//! entries like any file.
//!
//! Invariants of [`store_info`]: the entries are contiguous, in stream order,
//! and add up to the torrent's total length (so [`Layout::new`] accepts it
//! exactly when it accepts the torrent); a selected file, a pad file and
//! every piece boundary are unchanged; no entry of an unselected file other
//! than its part entries is a real file.
//!
//! Limit: changing the selection later does not move bytes out of the part
//! files; a newly selected file's boundary piece is downloaded again.

use crate::bitfield::Bitfield;
use crate::layout::Layout;
use crate::metainfo::{FileEntry, Info, InfoHash};

/// The directory, under the download dir, holding a torrent's part files.
pub fn parts_dir_name(info_hash: InfoHash) -> String {
    format!(".{}.parts", info_hash.to_hex())
}

/// The storage view of `info` for a download of the files with
/// `selected[i]` set, where `wanted` is the set of pieces touching a selected
/// file (`picker::wanted_pieces`). `None` when every file is selected (the
/// torrent's own info is the store info).
pub fn store_info(
    info: &Info,
    info_hash: InfoHash,
    selected: &[bool],
    wanted: &Bitfield,
) -> Option<Info> {
    let unselected = |i: usize, f: &FileEntry| !f.pad && !selected.get(i).copied().unwrap_or(true);
    if !info.files.iter().enumerate().any(|(i, f)| unselected(i, f)) {
        return None;
    }
    let dir = parts_dir_name(info_hash);
    let plen = info.piece_length as u64;
    let mut files = Vec::with_capacity(info.files.len() + 2);
    for (i, f) in info.files.iter().enumerate() {
        if !unselected(i, f) {
            files.push(f.clone());
            continue;
        }
        let (start, end) = (f.offset, f.offset + f.length);
        if f.length == 0 {
            // In no piece: nothing to keep, and the file is not created.
            files.push(pad_entry(&dir, i, start, 0));
            continue;
        }
        let first = (start / plen) as u32;
        let last = ((end - 1) / plen) as u32;
        let head_end = if wanted.get(first) { end.min((first as u64 + 1) * plen) } else { start };
        let tail_start =
            if wanted.get(last) { head_end.max(last as u64 * plen) } else { end.max(head_end) };
        if head_end > start {
            files.push(part_entry(&dir, i, f, start, head_end));
        }
        if tail_start > head_end {
            files.push(pad_entry(&dir, i, head_end, tail_start - head_end));
        }
        if end > tail_start {
            files.push(part_entry(&dir, i, f, tail_start, end));
        }
    }
    Some(Info { files, ..info.clone() })
}

/// A part entry for bytes `from..to` (stream offsets) of file `index`.
fn part_entry(dir: &str, index: usize, f: &FileEntry, from: u64, to: u64) -> FileEntry {
    FileEntry {
        path: vec![dir.to_string(), format!("{index}.{}", from - f.offset)],
        length: to - from,
        offset: from,
        pad: false,
    }
}

/// A pad entry standing for bytes no wanted piece holds (never on disk).
fn pad_entry(dir: &str, index: usize, offset: u64, length: u64) -> FileEntry {
    FileEntry { path: vec![dir.to_string(), format!("{index}.gap")], length, offset, pad: true }
}

/// True when `store` is a valid storage view of `info` (same pieces and
/// stream): what [`store_info`] guarantees, checked by tests and debug
/// builds.
pub fn is_consistent(info: &Info, store: &Info) -> bool {
    Layout::new(store).is_ok()
        && store.total_length == info.total_length
        && store.piece_length == info.piece_length
        && store.pieces == info.pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picker::wanted_pieces;

    fn info(piece_length: u32, files: &[(&str, u64, bool)]) -> Info {
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

    const HASH: InfoHash = InfoHash([0xab; 20]);

    fn view(info: &Info, selected: &[bool]) -> (Option<Info>, Bitfield) {
        let wanted =
            wanted_pieces(&info.files, info.piece_length, info.piece_count(), |i, _| selected[i]);
        (store_info(info, HASH, selected, &wanted), wanted)
    }

    fn describe(store: &Info) -> Vec<(String, u64, u64, bool)> {
        store.files.iter().map(|f| (f.path.join("/"), f.offset, f.length, f.pad)).collect()
    }

    #[test]
    fn every_file_selected_needs_no_store_info() {
        let t = info(16, &[("a", 20, false), ("b", 20, false)]);
        assert!(view(&t, &[true, true]).0.is_none());
        let padded = info(16, &[("a", 5, false), ("p", 11, true), ("b", 20, false)]);
        assert!(view(&padded, &[true, false, true]).0.is_none(), "pad files count as selected");
    }

    /// The picture in the module docs: a selected A, an unselected F over
    /// several pieces, a selected B.
    #[test]
    fn an_unselected_file_keeps_its_head_and_tail_in_part_files() {
        let t = info(16, &[("a", 10, false), ("f", 50, false), ("b", 4, false)]);
        // Stream: a 0..10, f 10..60, b 60..64. Pieces of 16: 0..16 (a+f),
        // 16..32, 32..48 (f only), 48..64 (f+b).
        let (store, wanted) = view(&t, &[true, false, true]);
        let store = store.unwrap();
        assert_eq!(wanted.iter_ones().collect::<Vec<_>>(), vec![0, 3]);
        let d = ".abababababababababababababababababababab.parts";
        assert_eq!(
            describe(&store),
            vec![
                ("t/a".into(), 0, 10, false),
                (format!("{d}/1.0"), 10, 6, false),
                (format!("{d}/1.gap"), 16, 32, true),
                (format!("{d}/1.38"), 48, 12, false),
                ("t/b".into(), 60, 4, false),
            ]
        );
        assert!(is_consistent(&t, &store));
    }

    /// Exhaustive over small torrents: every selection of every layout of
    /// 1-4 files (zero-length, pad and piece-sized files included) gives a
    /// consistent view in which every byte of a wanted piece is in a real
    /// file (never a pad entry, unless the torrent's own pad file), and no
    /// unselected file keeps its own path.
    #[test]
    fn every_selection_of_small_torrents_is_consistent() {
        let sizes = [0u64, 1, 7, 15, 16, 17, 33];
        let mut cases = 0;
        for n in 1..=3usize {
            let mut idx = vec![0usize; n];
            loop {
                let spec: Vec<(String, u64, bool)> = idx
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| (format!("f{i}"), sizes[s], false))
                    .collect();
                let specs: Vec<(&str, u64, bool)> =
                    spec.iter().map(|(n, l, p)| (n.as_str(), *l, *p)).collect();
                if specs.iter().map(|s| s.1).sum::<u64>() > 0 {
                    let t = info(16, &specs);
                    for mask in 0..(1u32 << n) {
                        let selected: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
                        check(&t, &selected);
                        cases += 1;
                    }
                }
                // Next combination of sizes.
                let mut k = 0;
                while k < n {
                    idx[k] += 1;
                    if idx[k] < sizes.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == n {
                    break;
                }
            }
        }
        assert!(cases > 1000, "{cases}");
    }

    fn check(t: &Info, selected: &[bool]) {
        let (store, wanted) = view(t, selected);
        let Some(store) = store else {
            assert!(t.files.iter().zip(selected).all(|(f, &s)| s || f.pad));
            return;
        };
        assert!(is_consistent(t, &store), "{:?} {selected:?}", describe(&store));
        let layout = Layout::new(&store).unwrap();
        for p in wanted.iter_ones() {
            for span in layout.piece_spans(p) {
                assert!(!store.files[span.file_index].pad, "wanted piece {p} in a gap");
            }
        }
        for (i, f) in t.files.iter().enumerate() {
            if !selected[i] {
                assert!(!store.files.iter().any(|s| s.path == f.path), "file {i} kept its path");
            }
        }
    }
}
