//! Recheck: read a torrent's data from disk and verify every piece's SHA1 on
//! every core (`ringbit verify`, resume recheck).
//!
//! Layer: driver (reads files) feeding [`crate::hash`]'s SHA1. Workers take
//! runs of consecutive pieces from a shared counter, so each reads mostly
//! sequentially and no core idles while another still has work.
//!
//! Two read paths, chosen by [`ReadMethod`]:
//! * `Mmap` (default): hash straight from a read-only mapping guarded by
//!   [`super::sigbus`]: a file truncated underneath (or a failing disk) makes
//!   the faulting page read as zeros instead of killing the process with
//!   SIGBUS, the fault is counted, and the piece is redone with `pread`,
//!   which reports it as missing or unreadable. Saves the copy out of the
//!   page cache, about a quarter of recheck's CPU on hot data. A file whose
//!   mapping cannot be guarded (no free slot) is read with `pread`.
//! * `Pread`: `pread` in chunks of [`CHECK_READ_CHUNK_BYTES`] into one reused
//!   buffer per worker, hashed while the chunk is still in the core's cache.
//!   A file truncated underneath or a failing disk is a short read or an
//!   `EIO`, reported per piece.
//!
//! Readahead: each file is opened with `POSIX_FADV_SEQUENTIAL`, and a worker
//! that takes a run of pieces asks for the run's bytes with
//! `POSIX_FADV_WILLNEED` first, so on cold data the disk reads ahead of the
//! hashing instead of each worker stalling on its own reads.
//!
//! Missing files and files shorter than the torrent says are not errors: the
//! pieces that need their bytes are *missing*, distinct from *corrupt* pieces
//! (bytes present, hash wrong). Invariant: each checked piece is in exactly
//! one of `have`, `missing`, `corrupt`.

use super::file_path;
use super::sigbus::GuardedMap;
use crate::bitfield::Bitfield;
use crate::hash::PieceHasher;
use crate::layout::{Layout, LayoutError};
use crate::metainfo::Info;
use memmap2::MmapOptions;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bytes of consecutive pieces one worker takes at a time: long enough for
/// sequential reads and readahead, short enough to balance the last pieces.
pub const CHECK_RUN_BYTES: u64 = 4 << 20;

/// Bytes read per `pread` on the default path: small enough that the chunk
/// is still in the core's L2 cache when SHA1 reads it (the copy out of the
/// page cache is then the only extra memory traffic), large enough that the
/// syscall cost is noise (4 syscalls per 256 KiB piece).
pub const CHECK_READ_CHUNK_BYTES: usize = 64 << 10;

/// Most read errors kept for the report (the count is always exact).
pub const CHECK_ERRORS_MAX: usize = 16;

/// How recheck reads piece bytes. A recheck runs at `verify`, `seed` and
/// daemon start-up on data another process may be truncating (or on a
/// failing disk): both paths turn that into a missing or unreadable piece,
/// never a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMethod {
    /// Hash in place from a SIGBUS-guarded read-only mapping; a piece that
    /// faulted is redone with `pread`.
    #[default]
    Mmap,
    /// `pread` in chunks into a reused buffer.
    Pread,
}

impl std::str::FromStr for ReadMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<ReadMethod, String> {
        match s {
            "mmap" => Ok(ReadMethod::Mmap),
            "pread" => Ok(ReadMethod::Pread),
            other => Err(format!("unknown read method {other:?} (mmap, pread)")),
        }
    }
}

/// What recheck found for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    /// Present with at least the torrent's length.
    Present,
    /// Not there (or not a regular file).
    Missing,
    /// Shorter than the torrent says.
    Short { len: u64 },
    /// A pad file: never on disk.
    Pad,
}

/// The result of a recheck.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Pieces whose hash matched.
    pub have: Bitfield,
    /// Pieces that need bytes of a missing or short file (or unreadable).
    pub missing: Bitfield,
    /// Pieces whose bytes are there but hash wrong.
    pub corrupt: Bitfield,
    /// Pieces checked (the rest were not asked for).
    pub checked: u32,
    pub files: Vec<FileState>,
    /// Read errors other than missing/short files, as messages (at most
    /// [`CHECK_ERRORS_MAX`]); their pieces count as missing.
    pub read_errors: Vec<String>,
    pub read_error_count: usize,
}

/// Recheck settings.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    pub threads: usize,
    pub method: ReadMethod,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions { threads: crate::hash::default_threads(), method: ReadMethod::default() }
    }
}

enum Source {
    Pad,
    Missing,
    File { file: File, len: u64, map: Option<GuardedMap> },
}

enum Outcome {
    Ok,
    Corrupt,
    Missing,
    Unreadable(String),
}

/// Checks the pieces set in `only` (every piece when `None`) of `info`'s
/// files under `dir`. `on_piece` is called after each piece (progress).
pub fn recheck(
    info: &Info,
    dir: &Path,
    only: Option<&Bitfield>,
    options: CheckOptions,
    on_piece: &(dyn Fn(u32) + Sync),
) -> Result<CheckReport, LayoutError> {
    let layout = Layout::new(info)?;
    let mut files = Vec::with_capacity(info.files.len());
    let mut sources = Vec::with_capacity(info.files.len());
    for entry in &info.files {
        if entry.pad {
            files.push(FileState::Pad);
            sources.push(Source::Pad);
            continue;
        }
        let path = file_path(dir, &entry.path);
        match open_source(&path, entry.length, options.method) {
            Some((source, len)) => {
                files.push(if len < entry.length {
                    FileState::Short { len }
                } else {
                    FileState::Present
                });
                sources.push(source);
            }
            None => {
                files.push(FileState::Missing);
                sources.push(Source::Missing);
            }
        }
    }

    let pieces: Vec<u32> = match only {
        Some(set) => set.iter_ones().filter(|&p| p < layout.piece_count()).collect(),
        None => (0..layout.piece_count()).collect(),
    };
    let run = (CHECK_RUN_BYTES / layout.piece_length() as u64).max(1) as usize;
    let next = AtomicUsize::new(0);
    let errors = Mutex::new((Vec::new(), 0usize));
    let threads = options.threads.clamp(1, 256).min(pieces.len().max(1));
    let results: Vec<Vec<(u32, bool, bool)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    // One chunk buffer per worker for its whole life: zeroed
                    // once here, then only ever overwritten by `pread`.
                    let mut buf = match options.method {
                        ReadMethod::Pread => vec![0u8; CHECK_READ_CHUNK_BYTES],
                        ReadMethod::Mmap => Vec::new(),
                    };
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(run, Ordering::Relaxed);
                        if start >= pieces.len() {
                            return out;
                        }
                        let batch = &pieces[start..(start + run).min(pieces.len())];
                        if options.method == ReadMethod::Pread {
                            advise_willneed(info, &layout, &sources, batch);
                        }
                        for &index in batch {
                            let outcome = check_piece(
                                info,
                                &layout,
                                &sources,
                                index,
                                options.method,
                                &mut buf,
                            );
                            let (ok, corrupt) = match outcome {
                                Outcome::Ok => (true, false),
                                Outcome::Corrupt => (false, true),
                                Outcome::Missing => (false, false),
                                Outcome::Unreadable(msg) => {
                                    let mut e = errors.lock().unwrap_or_else(|e| e.into_inner());
                                    e.1 += 1;
                                    if e.0.len() < CHECK_ERRORS_MAX {
                                        e.0.push(msg);
                                    }
                                    (false, false)
                                }
                            };
                            out.push((index, ok, corrupt));
                            on_piece(index);
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("check worker panicked")).collect()
    });

    let count = layout.piece_count();
    let mut report = CheckReport {
        have: Bitfield::new(count),
        missing: Bitfield::new(count),
        corrupt: Bitfield::new(count),
        checked: pieces.len() as u32,
        files,
        read_errors: Vec::new(),
        read_error_count: 0,
    };
    for (index, ok, corrupt) in results.into_iter().flatten() {
        if ok {
            report.have.set(index);
        } else if corrupt {
            report.corrupt.set(index);
        } else {
            report.missing.set(index);
        }
    }
    let (msgs, n) = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    report.read_errors = msgs;
    report.read_error_count = n;
    Ok(report)
}

fn open_source(path: &PathBuf, want: u64, method: ReadMethod) -> Option<(Source, u64)> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let len = meta.len();
    if method == ReadMethod::Pread {
        // SAFETY: posix_fadvise(2) on an fd we own; it only sets readahead
        // policy and touches no memory of ours. A refusal is harmless.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    }
    let map = if method == ReadMethod::Mmap && len > 0 {
        // Map only the bytes the torrent covers (and that exist).
        let map_len = len.min(want) as usize;
        // SAFETY: a read-only shared mapping of a regular file; we only
        // read it. If another process truncates the file while we hash,
        // reads past the new end would raise SIGBUS: the mapping is only
        // used once `GuardedMap` has registered it with the SIGBUS guard,
        // which turns such a fault into a zero page and a counted fault.
        let map = unsafe { MmapOptions::new().len(map_len).map(&file) };
        match map.map(GuardedMap::new) {
            Ok(Ok(m)) => {
                let _ = m.bytes_advise_sequential();
                Some(m)
            }
            // No guard or no mapping: pread for this file.
            Ok(Err(_)) | Err(_) => None,
        }
    } else {
        None
    };
    Some((Source::File { file, len, map }, len))
}

/// Asks the kernel to read ahead every file byte of the pieces in `batch`
/// (consecutive pieces: one range per file they touch), so on cold data the
/// disk works ahead of the hashing.
fn advise_willneed(info: &Info, layout: &Layout, sources: &[Source], batch: &[u32]) {
    let (Some(&first), Some(&last)) = (batch.first(), batch.last()) else { return };
    let plen = layout.piece_length() as u64;
    let lo = first as u64 * plen;
    let hi = last as u64 * plen + layout.piece_size(last) as u64;
    // Files are in stream order: skip those ending before `lo`.
    let start = info.files.partition_point(|f| f.offset + f.length <= lo);
    for (entry, source) in info.files[start..].iter().zip(&sources[start..]) {
        if entry.offset >= hi {
            break;
        }
        let Source::File { file, .. } = source else { continue };
        let from = lo.saturating_sub(entry.offset);
        let to = (hi - entry.offset).min(entry.length);
        if to > from {
            // SAFETY: posix_fadvise(2) on an fd we own; it starts readahead
            // and touches no memory of ours. A refusal is harmless.
            unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    from as libc::off_t,
                    (to - from) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
        }
    }
}

static ZEROS: [u8; 16384] = [0; 16384];

fn check_piece(
    info: &Info,
    layout: &Layout,
    sources: &[Source],
    index: u32,
    method: ReadMethod,
    buf: &mut Vec<u8>,
) -> Outcome {
    let mut hasher = PieceHasher::new();
    for span in layout.piece_spans(index) {
        let end = span.file_offset + span.len as u64;
        match &sources[span.file_index] {
            Source::Pad => {
                let mut left = span.len as usize;
                while left > 0 {
                    let n = left.min(ZEROS.len());
                    hasher.update(&ZEROS[..n]);
                    left -= n;
                }
            }
            Source::Missing => return Outcome::Missing,
            Source::File { len, .. } if *len < end => return Outcome::Missing,
            Source::File { file, map, .. } => match (map, method) {
                (Some(map), ReadMethod::Mmap) if map.faults() == 0 => {
                    hasher.update(&map.bytes()[span.file_offset as usize..end as usize]);
                    if map.faults() != 0 {
                        // The file was cut while we hashed: what we hashed
                        // may include zero pages. pread tells what is there.
                        return check_piece(info, layout, sources, index, ReadMethod::Pread, buf);
                    }
                }
                _ => {
                    if buf.len() < CHECK_READ_CHUNK_BYTES {
                        buf.resize(CHECK_READ_CHUNK_BYTES, 0);
                    }
                    let mut offset = span.file_offset;
                    while offset < end {
                        let n = ((end - offset) as usize).min(CHECK_READ_CHUNK_BYTES);
                        let chunk = &mut buf[..n];
                        if let Err(e) = file.read_exact_at(chunk, offset) {
                            // A short read: the file was cut while we checked
                            // it (its length was fine at open).
                            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                                return Outcome::Missing;
                            }
                            let path = file_path(Path::new(""), &info.files[span.file_index].path);
                            return Outcome::Unreadable(format!("{}: {e}", path.display()));
                        }
                        hasher.update(&*chunk);
                        offset += n as u64;
                    }
                }
            },
        }
    }
    let digest = hasher.finish();
    if digest == info.pieces[index as usize] {
        Outcome::Ok
    } else {
        Outcome::Corrupt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::FileEntry;

    fn make(dir: &Path, piece_length: u32, files: &[(&str, usize, bool)]) -> (Info, Vec<u8>) {
        let mut stream = Vec::new();
        let mut entries = Vec::new();
        for (i, &(name, len, pad)) in files.iter().enumerate() {
            let bytes: Vec<u8> =
                if pad { vec![0; len] } else { (0..len).map(|j| (j * 13 + i * 7) as u8).collect() };
            if !pad {
                let p = dir.join("t").join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, &bytes).unwrap();
            }
            entries.push(FileEntry {
                path: vec!["t".into(), name.into()],
                length: len as u64,
                offset: stream.len() as u64,
                pad,
            });
            stream.extend_from_slice(&bytes);
        }
        let pieces =
            stream.chunks(piece_length as usize).map(crate::hash::sha1).collect::<Vec<_>>();
        let info = Info {
            name: "t".into(),
            piece_length,
            pieces,
            files: entries,
            total_length: stream.len() as u64,
            private: false,
            multi_file: true,
            source: None,
        };
        (info, stream)
    }

    /// Another process cuts a file short while the recheck runs: the pieces
    /// past the cut are missing, the ones before it verified, and neither
    /// read path faults (through an unguarded mapping, the first read past
    /// the new end would raise SIGBUS and kill this test process).
    #[test]
    fn a_file_truncated_during_the_recheck_is_reported_not_fatal() {
        assert_eq!(CheckOptions::default().method, ReadMethod::Mmap, "the guarded map is default");
        for method in [ReadMethod::Mmap, ReadMethod::Pread] {
            let dir = tempfile::tempdir().unwrap();
            let plen = 16384u32;
            let (info, _) = make(dir.path(), plen, &[("big", 40 * plen as usize, false)]);
            let path = dir.path().join("t/big");
            let cut = std::sync::atomic::AtomicBool::new(false);
            let on_piece = |index: u32| {
                if index == 3 && !cut.swap(true, Ordering::SeqCst) {
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.set_len(5 * plen as u64 + 100).unwrap();
                }
            };
            let options = CheckOptions { threads: 1, method };
            let r = recheck(&info, dir.path(), None, options, &on_piece).unwrap();
            assert!(cut.load(Ordering::SeqCst));
            let have: Vec<u32> = r.have.iter_ones().collect();
            assert_eq!(have, (0..5).collect::<Vec<_>>(), "{method:?}");
            let missing: Vec<u32> = r.missing.iter_ones().collect();
            assert_eq!(missing, (5..40).collect::<Vec<_>>(), "{method:?}");
            assert_eq!(r.corrupt.count(), 0, "{method:?}");
            assert_eq!(r.files[0], FileState::Present, "as found when the check began");
        }
    }

    /// A piece longer than the read chunk is hashed chunk by chunk, across
    /// file boundaries, to the same verdicts.
    #[test]
    fn pieces_larger_than_a_read_chunk_hash_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let plen = (CHECK_READ_CHUNK_BYTES * 2 + CHECK_READ_CHUNK_BYTES / 2) as u32;
        let files = [("a", plen as usize + 7, false), ("b", 2 * plen as usize + 3, false)];
        let (info, _) = make(dir.path(), plen, &files);
        for method in [ReadMethod::Mmap, ReadMethod::Pread] {
            let options = CheckOptions { method, ..CheckOptions::default() };
            let r = recheck(&info, dir.path(), None, options, &|_| {}).unwrap();
            assert!(r.have.is_full(), "{method:?}: {:?}", r.missing);
        }
    }

    #[test]
    fn complete_corrupt_missing_and_short() {
        for method in [ReadMethod::Mmap, ReadMethod::Pread] {
            let dir = tempfile::tempdir().unwrap();
            let files = [
                ("a", 100, false),
                ("p", 28, true),
                ("e", 0, false),
                ("b", 64, false),
                ("c", 70, false),
            ];
            let (info, _) = make(dir.path(), 32, &files);
            let opts = CheckOptions { threads: 2, method };
            let r = recheck(&info, dir.path(), None, opts, &|_| {}).unwrap();
            assert!(r.have.is_full(), "{method:?}");
            assert_eq!(r.files[1], FileState::Pad);

            // Corrupt one byte of b (stream offset 128 + 40 = 168: piece 5).
            let b = dir.path().join("t/b");
            let mut bytes = std::fs::read(&b).unwrap();
            bytes[40] ^= 1;
            std::fs::write(&b, &bytes).unwrap();
            // Truncate c to 10 bytes (stream 192..262 -> pieces 6..=8; piece 6
            // holds c[0..32], so all of 6, 7, 8 need missing bytes).
            std::fs::write(dir.path().join("t/c"), &[0u8; 10][..]).unwrap();
            // Remove a: pieces 0..=3 need its bytes.
            std::fs::remove_file(dir.path().join("t/a")).unwrap();
            let r = recheck(&info, dir.path(), None, opts, &|_| {}).unwrap();
            assert_eq!(r.corrupt.iter_ones().collect::<Vec<_>>(), vec![5]);
            assert_eq!(r.missing.iter_ones().collect::<Vec<_>>(), vec![0, 1, 2, 3, 6, 7, 8]);
            assert_eq!(r.have.iter_ones().collect::<Vec<_>>(), vec![4]);
            assert_eq!(r.files[0], FileState::Missing);
            assert_eq!(r.files[4], FileState::Short { len: 10 });
            assert_eq!(r.checked, 9);

            let mut only = Bitfield::new(9);
            only.set(4);
            only.set(5);
            let r = recheck(&info, dir.path(), Some(&only), opts, &|_| {}).unwrap();
            assert_eq!(r.checked, 2);
            assert_eq!(r.have.iter_ones().collect::<Vec<_>>(), vec![4]);
            assert_eq!(r.corrupt.iter_ones().collect::<Vec<_>>(), vec![5]);
            assert_eq!(r.missing.count(), 0);
        }
    }
}
