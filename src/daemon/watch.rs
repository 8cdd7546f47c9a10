//! The watch directory: a `.torrent` file (or a `.magnet` file holding one
//! magnet link) that appears there is added to the
//! daemon; when the file goes, its torrent is stopped and forgotten.
//!
//! Layer: driver (a polling thread). Polling every `watch_interval_secs`
//! rather than inotify: it works on every filesystem (NFS, bind mounts), sees
//! changes made while the daemon was down, and a scan of a directory is cheap
//! next to a torrent's life. The diff itself ([`diff`]) is pure.
//!
//! Invariants:
//! * a file is read only once its size and mtime were the same in two scans
//!   in a row, so a .torrent still being copied in is not read half-written;
//! * a file that does not parse is reported once per version (size, mtime),
//!   not on every scan;
//! * at most [`WATCH_FILES_MAX`] files are considered per scan;
//! * removing a torrent (which deletes its resume state) needs evidence: the
//!   file must be absent from [`WATCH_GONE_SCANS`] consecutive *complete*
//!   scans. A scan is incomplete, and removes nothing, when the directory
//!   cannot be read, reads with no entries at all (an unmounted mount point
//!   or an NFS hiccup looks exactly like that; keep any other file there,
//!   such as `.keep`, to let the last `.torrent` be removed by deleting it),
//!   sits on another device than at the first scan (the mount went away
//!   under it), or hit [`WATCH_FILES_MAX`]. A `.torrent` whose `stat` fails
//!   counts as present at its last known version.

use super::registry::Source;
use super::{Daemon, DaemonError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `.torrent` files looked at per scan at most.
pub const WATCH_FILES_MAX: usize = 200_000;

/// Consecutive complete scans a watched file must be absent from before its
/// torrent is removed (with the default 5 s interval: 15 s of absence).
pub const WATCH_GONE_SCANS: u32 = 3;

/// A file's version: size and mtime in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub len: u64,
    pub mtime_ns: i128,
}

/// What the watcher knows about one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Seen once at this version; read it if the next scan sees the same.
    Settling(Stamp),
    /// Handled at this version (added, a duplicate, or refused).
    Done(Stamp),
    /// Handled, then absent from this many consecutive complete scans.
    Missing(Stamp, u32),
}

/// One scan of the watch directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The `.torrent` files listed and stat'ed, with their versions.
    pub files: HashMap<PathBuf, Stamp>,
    /// `.torrent` files listed whose `stat` failed: present, version unknown.
    pub unreadable: Vec<PathBuf>,
    /// The listing can prove a file is gone (see the module invariants).
    pub complete: bool,
}

/// What one scan asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Files to read and add now.
    pub ready: Vec<PathBuf>,
    /// Files gone for [`WATCH_GONE_SCANS`] complete scans: stop their torrents.
    pub gone: Vec<PathBuf>,
}

/// Compares a scan with what is known and updates `known`.
pub fn diff(known: &mut HashMap<PathBuf, Known>, scan: &Scan) -> Changes {
    let mut changes = Changes::default();
    known.retain(|path, state| {
        if scan.files.contains_key(path) || scan.unreadable.contains(path) {
            return true;
        }
        let stamp = match *state {
            // Never handled: nothing to remove, forget it.
            Known::Settling(_) => return false,
            Known::Done(stamp) => (stamp, 0),
            Known::Missing(stamp, n) => (stamp, n),
        };
        if !scan.complete {
            // No evidence either way: keep the count where it is.
            return true;
        }
        let missed = stamp.1 + 1;
        if missed >= WATCH_GONE_SCANS {
            changes.gone.push(path.clone());
            return false;
        }
        *state = Known::Missing(stamp.0, missed);
        true
    });
    for (path, &stamp) in &scan.files {
        match known.get(path) {
            // Back after a gap at the same version: handled already.
            Some(Known::Missing(s, _)) if *s == stamp => {
                known.insert(path.clone(), Known::Done(stamp));
            }
            Some(Known::Done(s)) if *s == stamp => {}
            Some(Known::Settling(s)) if *s == stamp => {
                changes.ready.push(path.clone());
                known.insert(path.clone(), Known::Done(stamp));
            }
            _ => {
                known.insert(path.clone(), Known::Settling(stamp));
            }
        }
    }
    changes.ready.sort();
    changes.gone.sort();
    changes
}

/// The `.torrent` files in `dir` with their stamps. `device` is the
/// directory's device at the first scan (`None`: this is the first); a
/// different one now makes the scan incomplete.
pub fn scan(dir: &Path, device: Option<u64>) -> std::io::Result<Scan> {
    use std::os::unix::fs::MetadataExt;
    let dir_device = std::fs::metadata(dir)?.dev();
    let mut out = Scan::default();
    let mut entries = 0usize;
    let mut complete = device.is_none_or(|d| d == dir_device);
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else {
            complete = false;
            continue;
        };
        entries += 1;
        let path = entry.path();
        // `.magnet`: a file holding one magnet link (see `magnets`).
        if path.extension().is_none_or(|x| x != "torrent" && x != "magnet") {
            continue;
        }
        if out.files.len() + out.unreadable.len() >= WATCH_FILES_MAX {
            tracing::warn!(dir = %dir.display(), "more than {WATCH_FILES_MAX} .torrent files; the rest are ignored");
            complete = false;
            break;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // just deleted
            Err(_) => {
                out.unreadable.push(path);
                continue;
            }
        };
        if !meta.is_file() {
            continue;
        }
        let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
        out.files.insert(path, Stamp { len: meta.len(), mtime_ns });
    }
    out.complete = complete && entries > 0;
    Ok(out)
}

/// The device the watch directory is on, for [`scan`].
fn device_of(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.dev())
}

/// Starts the watch thread (ends when the daemon shuts down).
pub fn start(daemon: Arc<Daemon>, dir: PathBuf) -> Result<(), DaemonError> {
    let interval = Duration::from_secs(daemon.config().watch_interval_secs);
    let d = daemon.clone();
    daemon.spawn("ringbit-watch", move || run(d, dir, interval))
}

fn run(daemon: Arc<Daemon>, dir: PathBuf, interval: Duration) {
    let stop = daemon.stop_receiver();
    // Files whose torrents the registry holds are handled at their current
    // version; registered files that are gone are reported by the first scan.
    let mut known: HashMap<PathBuf, Known> = HashMap::new();
    let device = device_of(&dir);
    let first = scan(&dir, device).unwrap_or_default();
    for path in daemon.watched_paths() {
        let state = match first.files.get(&path) {
            Some(&stamp) => Known::Done(stamp),
            None => Known::Done(Stamp { len: u64::MAX, mtime_ns: 0 }),
        };
        known.insert(path, state);
    }
    let mut reported_error = false;
    let mut reported_incomplete = false;
    loop {
        match scan(&dir, device) {
            Ok(files) => {
                reported_error = false;
                if !files.complete && !reported_incomplete && !known.is_empty() {
                    tracing::warn!(dir = %dir.display(), "the watch directory reads empty or changed device; no watched torrent is removed until it reads normally");
                }
                reported_incomplete = !files.complete;
                let changes = diff(&mut known, &files);
                for path in &changes.gone {
                    tracing::info!(path = %path.display(), "watched .torrent removed");
                    daemon.remove_watched(path);
                }
                for path in changes.ready {
                    add(&daemon, &path);
                }
            }
            Err(error) if !reported_error => {
                reported_error = true;
                tracing::error!(dir = %dir.display(), %error, "cannot scan the watch directory");
            }
            Err(_) => {}
        }
        match stop.recv_timeout(interval) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

fn add(daemon: &Daemon, path: &Path) {
    let source = Source::Watch { path: path.to_path_buf() };
    match daemon.add_torrent_file(path, None, source, false) {
        Ok((info_hash, name)) => {
            tracing::info!(path = %path.display(), %info_hash, %name, "added from watch directory")
        }
        Err(DaemonError::Duplicate(info_hash)) => {
            tracing::info!(path = %path.display(), %info_hash, "already in the daemon")
        }
        Err(error) => tracing::error!(path = %path.display(), %error, "watched .torrent refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(len: u64, mtime_ns: i128) -> Stamp {
        Stamp { len, mtime_ns }
    }

    fn listing(files: &[(&PathBuf, Stamp)]) -> Scan {
        Scan {
            files: files.iter().map(|(p, s)| ((*p).clone(), *s)).collect(),
            unreadable: Vec::new(),
            complete: true,
        }
    }

    /// Handles `a` at stamp (10, 1) and returns the watcher's state.
    fn handled(a: &PathBuf) -> HashMap<PathBuf, Known> {
        let mut known = HashMap::new();
        let scan = listing(&[(a, stamp(10, 1))]);
        diff(&mut known, &scan);
        assert_eq!(diff(&mut known, &scan).ready, vec![a.clone()]);
        known
    }

    #[test]
    fn a_file_is_added_once_it_stops_changing_and_gone_after_several_scans() {
        let mut known = HashMap::new();
        let a = PathBuf::from("/w/a.torrent");
        let mut scan = listing(&[(&a, stamp(10, 1))]);
        assert_eq!(diff(&mut known, &scan), Changes::default(), "first sight: settling");
        scan.files.insert(a.clone(), stamp(20, 2));
        assert_eq!(diff(&mut known, &scan), Changes::default(), "still being written");
        let changes = diff(&mut known, &scan);
        assert_eq!(changes.ready, vec![a.clone()]);
        assert_eq!(diff(&mut known, &scan), Changes::default(), "handled once");
        scan.files.clear();
        for _ in 1..WATCH_GONE_SCANS {
            assert_eq!(diff(&mut known, &scan), Changes::default(), "not gone yet");
        }
        assert_eq!(diff(&mut known, &scan).gone, vec![a.clone()]);
        assert!(known.is_empty());
    }

    #[test]
    fn a_rewritten_file_is_read_again() {
        let a = PathBuf::from("/w/a.torrent");
        let mut known = HashMap::from([(a.clone(), Known::Done(stamp(10, 1)))]);
        let scan = listing(&[(&a, stamp(11, 5))]);
        assert!(diff(&mut known, &scan).ready.is_empty());
        assert_eq!(diff(&mut known, &scan).ready, vec![a]);
    }

    /// An unmounted or flaky watch directory (incomplete scans), and a file
    /// whose stat fails, never remove anything, however long it lasts; a
    /// file absent for fewer than the required scans that comes back at the
    /// same version is neither removed nor read again.
    #[test]
    fn incomplete_scans_and_unreadable_files_never_remove_torrents() {
        let a = PathBuf::from("/w/a.torrent");
        let mut known = handled(&a);
        let empty = Scan { complete: false, ..Scan::default() };
        for _ in 0..10 * WATCH_GONE_SCANS {
            assert_eq!(diff(&mut known, &empty), Changes::default());
        }
        let unreadable = Scan { unreadable: vec![a.clone()], complete: true, ..Scan::default() };
        for _ in 0..10 * WATCH_GONE_SCANS {
            assert_eq!(diff(&mut known, &unreadable), Changes::default());
        }
        // Gone from complete scans one short of the limit, interleaved with
        // incomplete ones (which neither count nor reset), then back.
        let gone = listing(&[]);
        for _ in 1..WATCH_GONE_SCANS {
            assert_eq!(diff(&mut known, &gone), Changes::default());
            assert_eq!(diff(&mut known, &empty), Changes::default());
        }
        let back = listing(&[(&a, stamp(10, 1))]);
        assert_eq!(diff(&mut known, &back), Changes::default(), "back: not read again");
        assert_eq!(known[&a], Known::Done(stamp(10, 1)));
        for _ in 1..WATCH_GONE_SCANS {
            assert_eq!(diff(&mut known, &gone), Changes::default(), "count restarted");
        }
        assert_eq!(diff(&mut known, &gone).gone, vec![a]);
    }

    #[test]
    fn scan_lists_only_torrent_files_and_an_empty_directory_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let empty = scan(dir.path(), None).unwrap();
        assert!(empty.files.is_empty() && !empty.complete, "empty: proves nothing");
        std::fs::write(dir.path().join("a.torrent"), b"x").unwrap();
        std::fs::write(dir.path().join("b.txt"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("c.torrent")).unwrap();
        let device = device_of(dir.path());
        let files = scan(dir.path(), device).unwrap();
        assert_eq!(files.files.len(), 1);
        assert_eq!(files.files[&dir.path().join("a.torrent")].len, 1);
        assert!(files.complete);
        let other = scan(dir.path(), device.map(|d| d + 1)).unwrap();
        assert!(!other.complete, "another device than at the first scan");
        // A dangling symlink named .torrent: its stat fails with NotFound,
        // the same as a file deleted between listing and stat: absent.
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("d.torrent"))
            .unwrap();
        let files = scan(dir.path(), device).unwrap();
        assert_eq!(files.files.len(), 1);
        assert!(files.unreadable.is_empty());
        assert!(scan(&dir.path().join("missing"), device).is_err());
    }
}
