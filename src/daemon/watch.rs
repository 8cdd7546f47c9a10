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
//! * at most [`WATCH_FILES_MAX`] files are considered per scan.

use super::registry::Source;
use super::{Daemon, DaemonError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `.torrent` files looked at per scan at most.
pub const WATCH_FILES_MAX: usize = 200_000;

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
}

/// What one scan asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Files to read and add now.
    pub ready: Vec<PathBuf>,
    /// Files that disappeared: stop their torrents.
    pub gone: Vec<PathBuf>,
}

/// Compares a scan with what is known and updates `known`.
pub fn diff(known: &mut HashMap<PathBuf, Known>, scan: &HashMap<PathBuf, Stamp>) -> Changes {
    let mut changes = Changes::default();
    known.retain(|path, _| {
        let present = scan.contains_key(path);
        if !present {
            changes.gone.push(path.clone());
        }
        present
    });
    for (path, &stamp) in scan {
        match known.get(path) {
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

/// The `.torrent` files in `dir` with their stamps.
pub fn scan(dir: &Path) -> std::io::Result<HashMap<PathBuf, Stamp>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        // `.magnet`: a file holding one magnet link (see `magnets`).
        if path.extension().is_none_or(|x| x != "torrent" && x != "magnet") {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !meta.is_file() {
            continue;
        }
        if out.len() >= WATCH_FILES_MAX {
            tracing::warn!(dir = %dir.display(), "more than {WATCH_FILES_MAX} .torrent files; the rest are ignored");
            break;
        }
        let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
        out.insert(path, Stamp { len: meta.len(), mtime_ns });
    }
    Ok(out)
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
    let first = scan(&dir).unwrap_or_default();
    for path in daemon.watched_paths() {
        let state = match first.get(&path) {
            Some(&stamp) => Known::Done(stamp),
            None => Known::Done(Stamp { len: u64::MAX, mtime_ns: 0 }),
        };
        known.insert(path, state);
    }
    let mut reported_error = false;
    loop {
        match scan(&dir) {
            Ok(files) => {
                reported_error = false;
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

    #[test]
    fn a_file_is_added_once_it_stops_changing_and_gone_when_removed() {
        let mut known = HashMap::new();
        let a = PathBuf::from("/w/a.torrent");
        let mut scan = HashMap::from([(a.clone(), stamp(10, 1))]);
        assert_eq!(diff(&mut known, &scan), Changes::default(), "first sight: settling");
        scan.insert(a.clone(), stamp(20, 2));
        assert_eq!(diff(&mut known, &scan), Changes::default(), "still being written");
        let changes = diff(&mut known, &scan);
        assert_eq!(changes.ready, vec![a.clone()]);
        assert_eq!(diff(&mut known, &scan), Changes::default(), "handled once");
        scan.clear();
        assert_eq!(diff(&mut known, &scan).gone, vec![a.clone()]);
        assert!(known.is_empty());
    }

    #[test]
    fn a_rewritten_file_is_read_again() {
        let a = PathBuf::from("/w/a.torrent");
        let mut known = HashMap::from([(a.clone(), Known::Done(stamp(10, 1)))]);
        let scan = HashMap::from([(a.clone(), stamp(11, 5))]);
        assert!(diff(&mut known, &scan).ready.is_empty());
        assert_eq!(diff(&mut known, &scan).ready, vec![a]);
    }

    #[test]
    fn scan_lists_only_torrent_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.torrent"), b"x").unwrap();
        std::fs::write(dir.path().join("b.txt"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("c.torrent")).unwrap();
        let files = scan(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[&dir.path().join("a.torrent")].len, 1);
    }
}
