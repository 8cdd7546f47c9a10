//! Resume file I/O: the atomic save of a torrent's resume state and the
//! load-or-recheck decision the engine makes when a torrent starts. The codec
//! is [`crate::resume`].
//!
//! Layer: driver (files, fsync). Invariants:
//! * a resume file is replaced atomically: written to `<infohash>.resume.tmp`,
//!   fsynced, renamed over `<infohash>.resume`, then the directory fsynced, so
//!   a crash leaves the old state or the new one, never a torn file;
//! * [`save`] must be called only after [`PieceStore::flush`](super::PieceStore::flush)
//!   succeeded, so every piece the bitfield claims is durably on disk; after
//!   a failed flush, [`save_marked`] claims only the durable pieces and
//!   leaves the files of the suspect ones unstamped, so the next start
//!   rechecks them whatever their size and mtime say;
//! * on load, a file whose size and mtime match its stamp is trusted; a file
//!   that changed (or appeared, or vanished) gets exactly its pieces
//!   rechecked; a missing, corrupt, truncated, wrong-version or foreign resume
//!   file means a full recheck with a warning, never a crash.

use super::check::{recheck, CheckOptions};
use super::{file_path, StorageError};
use crate::bitfield::Bitfield;
use crate::layout::Layout;
use crate::metainfo::{Info, InfoHash};
use crate::resume::{self, FileStamp, ResumeState, RESUME_BYTES_MAX};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// `<state_dir>/<infohash hex>.resume`.
pub fn resume_path(state_dir: &Path, info_hash: InfoHash) -> PathBuf {
    state_dir.join(format!("{}.resume", info_hash.to_hex()))
}

/// Each torrent file's size and mtime as found on disk now (`None` for pad
/// files and files that are not there).
pub fn stamp_files(info: &Info, data_dir: &Path) -> Vec<Option<FileStamp>> {
    info.files
        .iter()
        .map(|f| {
            if f.pad {
                return None;
            }
            let meta = std::fs::metadata(file_path(data_dir, &f.path)).ok()?;
            if !meta.is_file() {
                return None;
            }
            use std::os::unix::fs::MetadataExt;
            let mtime_ns =
                meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
            Some(FileStamp { length: meta.len(), mtime_ns })
        })
        .collect()
}

/// Atomically writes the resume state of a torrent whose verified pieces are
/// `have` (after a successful flush of its store).
pub fn save(
    state_dir: &Path,
    info_hash: InfoHash,
    info: &Info,
    data_dir: &Path,
    have: &Bitfield,
) -> Result<(), StorageError> {
    save_marked(state_dir, info_hash, info, data_dir, have, None)
}

/// [`save`], with the files holding any byte of a `recheck` piece left
/// unstamped (`{}`): on load they no longer match what is on disk, so their
/// pieces are hashed again. For the pieces a failed flush made suspect
/// ([`crate::resume::Durability::suspect`]): the data the kernel reported
/// lost may or may not be there, and only a recheck can say.
pub fn save_marked(
    state_dir: &Path,
    info_hash: InfoHash,
    info: &Info,
    data_dir: &Path,
    have: &Bitfield,
    recheck: Option<&Bitfield>,
) -> Result<(), StorageError> {
    let mut files = stamp_files(info, data_dir);
    if let Some(recheck) = recheck.filter(|r| r.count() > 0) {
        let layout = Layout::new(info)?;
        for piece in recheck.iter_ones().filter(|&p| p < layout.piece_count()) {
            for span in layout.piece_spans(piece) {
                files[span.file_index] = None;
            }
        }
    }
    let state = ResumeState { info_hash, have: have.clone(), files };
    let bytes = resume::encode(&state);
    write_atomically(state_dir, &resume_path(state_dir, info_hash), &bytes)
}

/// `<state_dir>/<infohash hex>.torrent`: the metainfo of a torrent that
/// started from a magnet link, saved once its metadata arrived so a restart
/// does not fetch it again.
pub fn torrent_path(state_dir: &Path, info_hash: InfoHash) -> PathBuf {
    state_dir.join(format!("{}.torrent", info_hash.to_hex()))
}

/// Atomically writes a fetched torrent's metainfo beside its resume state.
pub fn save_torrent(
    state_dir: &Path,
    info_hash: InfoHash,
    bytes: &[u8],
) -> Result<(), StorageError> {
    write_atomically(state_dir, &torrent_path(state_dir, info_hash), bytes)
}

/// Writes `<path>.tmp`, fsyncs it, renames it over `path` and fsyncs the
/// directory: a crash leaves the old file or the new one, never a torn one.
fn write_atomically(state_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| StorageError::io(state_dir, "create directory", e, 0))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let len = bytes.len() as u64;
    {
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| StorageError::io(&tmp, "create", e, len))?;
        f.write_all(bytes).map_err(|e| StorageError::io(&tmp, "write", e, len))?;
        f.sync_all().map_err(|e| StorageError::io(&tmp, "fsync", e, 0))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| StorageError::io(path, "rename", e, 0))?;
    // The rename is durable only once the directory entry is.
    let dir =
        std::fs::File::open(state_dir).map_err(|e| StorageError::io(state_dir, "open", e, 0))?;
    dir.sync_all().map_err(|e| StorageError::io(state_dir, "fsync", e, 0))?;
    Ok(())
}

/// What [`load_or_recheck`] did.
#[derive(Clone, Debug)]
pub struct Resumed {
    /// Verified pieces: trusted from the resume file or rechecked now.
    pub have: Bitfield,
    /// Pieces hashed during this load.
    pub rechecked: u32,
    /// Every piece was rechecked (no usable resume file).
    pub full_recheck: bool,
    /// Why the resume file was not used, when it existed but was rejected.
    pub warning: Option<String>,
}

/// Decides which pieces of a starting torrent are verified: trusts the resume
/// file for files that did not change, rechecks the rest.
pub fn load_or_recheck(
    state_dir: &Path,
    info_hash: InfoHash,
    info: &Info,
    data_dir: &Path,
    options: CheckOptions,
) -> Result<Resumed, StorageError> {
    let layout = Layout::new(info)?;
    let path = resume_path(state_dir, info_hash);
    let (state, warning) = match read_bounded(&path) {
        Ok(None) => (None, None),
        Ok(Some(bytes)) => {
            match resume::decode(&bytes, info_hash, layout.piece_count(), info.files.len()) {
                Ok(state) => (Some(state), None),
                Err(e) => (None, Some(format!("{}: {e}; rechecking every piece", path.display()))),
            }
        }
        Err(e) => (None, Some(format!("{}: {e}; rechecking every piece", path.display()))),
    };
    if let Some(w) = &warning {
        tracing::warn!("{w}");
    }
    let Some(state) = state else {
        let report = recheck(info, data_dir, None, options, &|_| {})?;
        return Ok(Resumed {
            have: report.have,
            rechecked: report.checked,
            full_recheck: true,
            warning,
        });
    };

    let now = stamp_files(info, data_dir);
    let mut stale = Bitfield::new(layout.piece_count());
    for (i, (then, now)) in state.files.iter().zip(&now).enumerate() {
        if then != now && !info.files[i].pad {
            for p in layout.file_piece_range(i) {
                stale.set(p);
            }
        }
    }
    let mut have = state.have;
    let mut rechecked = 0;
    if stale.count() > 0 {
        let report = recheck(info, data_dir, Some(&stale), options, &|_| {})?;
        for p in stale.iter_ones() {
            if report.have.get(p) {
                have.set(p);
            } else {
                have.clear(p);
            }
        }
        rechecked = report.checked;
    }
    Ok(Resumed { have, rechecked, full_recheck: false, warning: None })
}

/// The verified pieces the resume file claims, only when it is valid and
/// every file is exactly as it was when the state was written (same size and
/// mtime); `None` otherwise, and the caller rechecks. For `ringbit seed`,
/// which wants a full report when anything changed.
pub fn load_trusted(
    state_dir: &Path,
    info_hash: InfoHash,
    info: &Info,
    data_dir: &Path,
) -> Option<Bitfield> {
    let layout = Layout::new(info).ok()?;
    let bytes = read_bounded(&resume_path(state_dir, info_hash)).ok()??;
    let state = resume::decode(&bytes, info_hash, layout.piece_count(), info.files.len()).ok()?;
    (state.files == stamp_files(info, data_dir)).then_some(state.have)
}

/// The resume file's bytes; `None` when there is none. Larger than
/// [`RESUME_BYTES_MAX`] is an error (never read into memory).
fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    f.take(RESUME_BYTES_MAX as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > RESUME_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "resume file larger than {RESUME_BYTES_MAX} bytes"
        )));
    }
    Ok(Some(bytes))
}
