//! The daemon's registry: which torrents it holds, persisted under
//! `<state_dir>/torrents/` as `<info hash hex>.torrent` (the file as added)
//! and `<info hash hex>.json` (where its data lives, paused or not, where it
//! came from). Resume state (verified pieces) is separate: `storage::resume`.
//!
//! Layer: driver (files). Invariants:
//! * every write is atomic (temporary file, fsync, rename, fsync of the
//!   directory): a crash leaves the old entry or the new one;
//! * the `.torrent` is written before its `.json`, and [`Registry::load_all`]
//!   lists entries by their `.json`, so a half-added entry is never loaded;
//! * loading never fails as a whole: an entry that cannot be read is reported
//!   and skipped, the others load.

use crate::metainfo::{InfoHash, Metainfo};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest `.json` sidecar read.
const META_FILE_MAX_BYTES: u64 = 64 * 1024;
/// Largest `labels.json` read (1,000 categories and 1,000 tags of at most
/// 255 bytes, with their save paths, fit with room to spare).
pub const LABELS_FILE_MAX_BYTES: u64 = 4 << 20;
/// Largest `totals.json` read (about 150 bytes per torrent).
pub const TOTALS_FILE_MAX_BYTES: u64 = 64 << 20;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io { action, path: path.to_path_buf(), source }
}

/// Where a torrent came from (a watched file is stopped when the file goes).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    Api,
    Watch { path: PathBuf },
}

/// A torrent's qBittorrent-API labels and share limits (persisted in its
/// sidecar; absent in sidecars written before they existed).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct Labels {
    /// "" = none.
    pub category: String,
    pub tags: BTreeSet<String>,
    /// Ratio limit: [`LIMIT_GLOBAL`] (the global one), [`LIMIT_NONE`], or >= 0.
    pub ratio_limit: f64,
    /// Seeding-time limit in minutes: [`LIMIT_GLOBAL`] as f64, [`LIMIT_NONE`], or >= 0.
    pub seeding_time_limit_mins: i64,
}

/// A share limit that defers to the global one (qBittorrent's -2).
pub const LIMIT_GLOBAL: i64 = -2;
/// No share limit for this torrent (qBittorrent's -1).
pub const LIMIT_NONE: i64 = -1;

impl Default for Labels {
    fn default() -> Labels {
        Labels {
            category: String::new(),
            tags: BTreeSet::new(),
            ratio_limit: LIMIT_GLOBAL as f64,
            seeding_time_limit_mins: LIMIT_GLOBAL,
        }
    }
}

/// What a torrent did over all its runs (`totals.json`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(default)]
pub struct Totals {
    pub uploaded: u64,
    pub downloaded: u64,
    /// Seconds spent running with every piece.
    pub seeding_secs: u64,
    /// Seconds since the Unix epoch when it was first seen complete (0: not yet).
    pub completed_at: u64,
}

/// The `.json` sidecar of an entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EntryMeta {
    /// Directory the torrent's file or top directory lives in.
    pub download_dir: PathBuf,
    pub paused: bool,
    pub source: Source,
    /// Seconds since the Unix epoch.
    pub added_at: u64,
    /// This torrent's own limits in bytes per second (0 = none; the
    /// process-wide limits apply on top).
    #[serde(default)]
    pub upload_rate_limit: u64,
    #[serde(default)]
    pub download_rate_limit: u64,
    #[serde(default)]
    pub labels: Labels,
}

/// One entry as loaded.
pub struct Loaded {
    pub metainfo: Arc<Metainfo>,
    pub meta: EntryMeta,
}

/// The registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// Opens (creating) `<state_dir>/torrents`.
    pub fn open(state_dir: &Path) -> Result<Registry, RegistryError> {
        let dir = state_dir.join("torrents");
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(Registry { dir })
    }

    fn torrent_path(&self, info_hash: InfoHash) -> PathBuf {
        self.dir.join(format!("{}.torrent", info_hash.to_hex()))
    }

    fn meta_path(&self, info_hash: InfoHash) -> PathBuf {
        self.dir.join(format!("{}.json", info_hash.to_hex()))
    }

    /// Records a new entry: its .torrent bytes, then its sidecar.
    pub fn insert(
        &self,
        info_hash: InfoHash,
        torrent: &[u8],
        meta: &EntryMeta,
    ) -> Result<(), RegistryError> {
        write_atomic(&self.torrent_path(info_hash), torrent)?;
        self.update(info_hash, meta)
    }

    /// Replaces an entry's sidecar.
    pub fn update(&self, info_hash: InfoHash, meta: &EntryMeta) -> Result<(), RegistryError> {
        let json = serde_json::to_vec_pretty(meta).expect("plain data serializes");
        write_atomic(&self.meta_path(info_hash), &json)?;
        sync_dir(&self.dir)
    }

    /// Forgets an entry (sidecar first, so a crash in between leaves an
    /// orphan .torrent that is never loaded, not a torrentless sidecar).
    pub fn remove(&self, info_hash: InfoHash) -> Result<(), RegistryError> {
        for path in [self.meta_path(info_hash), self.torrent_path(info_hash)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
        }
        sync_dir(&self.dir)
    }

    fn state_dir(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Writes `labels.json` (atomically).
    pub fn save_labels(&self, json: &[u8]) -> Result<(), RegistryError> {
        let path = self.state_dir().join("labels.json");
        write_atomic(&path, json)?;
        sync_dir(self.state_dir())
    }

    /// Reads `labels.json` (`None` when absent).
    pub fn load_labels(&self) -> Result<Option<Vec<u8>>, RegistryError> {
        read_bounded(&self.state_dir().join("labels.json"), LABELS_FILE_MAX_BYTES)
    }

    /// Writes every torrent's totals as `totals.json` (atomically).
    pub fn save_totals(&self, totals: &BTreeMap<String, Totals>) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(totals).expect("plain data serializes");
        let path = self.state_dir().join("totals.json");
        write_atomic(&path, &json)?;
        sync_dir(self.state_dir())
    }

    /// Reads `totals.json` (empty when absent; a corrupt file is an error
    /// the caller logs: totals are statistics, never a reason not to start).
    pub fn load_totals(&self) -> Result<BTreeMap<String, Totals>, RegistryError> {
        let path = self.state_dir().join("totals.json");
        match read_bounded(&path, TOTALS_FILE_MAX_BYTES)? {
            None => Ok(BTreeMap::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Corrupt { path, message: e.to_string() }),
        }
    }

    /// Loads every entry with `threads` threads. Entries that cannot be read
    /// come back as errors beside the others.
    pub fn load_all(&self, threads: usize) -> (Vec<Loaded>, Vec<RegistryError>) {
        let metas: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(e) => return (Vec::new(), vec![io("list", &self.dir)(e)]),
        };
        let threads = threads.clamp(1, 64);
        let chunk = metas.len().div_ceil(threads).max(1);
        let results: Vec<Vec<Result<Loaded, RegistryError>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = metas
                .chunks(chunk)
                .map(|paths| scope.spawn(move || paths.iter().map(|p| load_one(p)).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        let mut loaded = Vec::with_capacity(metas.len());
        let mut errors = Vec::new();
        for result in results.into_iter().flatten() {
            match result {
                Ok(entry) => loaded.push(entry),
                Err(e) => errors.push(e),
            }
        }
        (loaded, errors)
    }
}

fn load_one(meta_path: &Path) -> Result<Loaded, RegistryError> {
    let corrupt =
        |message: String| RegistryError::Corrupt { path: meta_path.to_path_buf(), message };
    let size = std::fs::metadata(meta_path).map_err(io("stat", meta_path))?.len();
    if size > META_FILE_MAX_BYTES {
        return Err(corrupt(format!("larger than {META_FILE_MAX_BYTES} bytes")));
    }
    let json = std::fs::read(meta_path).map_err(io("read", meta_path))?;
    let meta: EntryMeta = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
    let torrent_path = meta_path.with_extension("torrent");
    let metainfo = Metainfo::from_file(&torrent_path).map_err(|e| RegistryError::Corrupt {
        path: torrent_path.clone(),
        message: e.to_string(),
    })?;
    let stem = meta_path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem != metainfo.info_hash.to_hex() {
        return Err(corrupt(format!("holds torrent {}, not {stem}", metainfo.info_hash)));
    }
    Ok(Loaded { metainfo: Arc::new(metainfo), meta })
}

/// A whole file of at most `max` bytes; `None` when it does not exist.
fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, RegistryError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(io("read", path))?;
    if bytes.len() as u64 > max {
        return Err(RegistryError::Corrupt {
            path: path.to_path_buf(),
            message: format!("larger than {max} bytes"),
        });
    }
    Ok(Some(bytes))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torrent_bytes(name: &str) -> Vec<u8> {
        let info = format!(
            "d6:lengthi5e4:name{}:{}12:piece lengthi16384e6:pieces20:{}e",
            name.len(),
            name,
            "a".repeat(20)
        );
        format!("d4:info{info}e").into_bytes()
    }

    #[test]
    fn entries_survive_reload_and_bad_ones_are_reported() {
        let state = tempfile::tempdir().unwrap();
        let registry = Registry::open(state.path()).unwrap();
        let mut hashes = Vec::new();
        for name in ["a", "b", "c"] {
            let bytes = torrent_bytes(name);
            let metainfo = Metainfo::from_bytes(&bytes).unwrap();
            let meta = EntryMeta {
                download_dir: "/data".into(),
                paused: name == "b",
                source: Source::Watch { path: format!("/watch/{name}.torrent").into() },
                added_at: 1,
                upload_rate_limit: 0,
                download_rate_limit: 0,
                labels: Labels {
                    category: name.into(),
                    tags: [name.to_string()].into(),
                    ratio_limit: 1.5,
                    seeding_time_limit_mins: 30,
                },
            };
            registry.insert(metainfo.info_hash, &bytes, &meta).unwrap();
            hashes.push(metainfo.info_hash);
        }
        registry.remove(hashes[2]).unwrap();
        // A sidecar whose .torrent is garbage.
        std::fs::write(registry.dir.join("00.json"), b"{}").unwrap();
        let (loaded, errors) = registry.load_all(2);
        let mut names: Vec<_> = loaded.iter().map(|l| l.metainfo.info.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert!(loaded.iter().any(|l| l.meta.paused));
        assert!(loaded.iter().all(|l| l.meta.labels.category == l.metainfo.info.name));
        assert!(loaded.iter().all(|l| l.meta.labels.ratio_limit == 1.5));
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn old_sidecars_load_with_default_labels_and_totals_round_trip() {
        let old = r#"{"download_dir":"/d","paused":false,"source":{"kind":"api"},"added_at":5}"#;
        let meta: EntryMeta = serde_json::from_str(old).unwrap();
        assert_eq!(meta.labels, Labels::default());
        assert_eq!(meta.labels.ratio_limit, LIMIT_GLOBAL as f64);
        let state = tempfile::tempdir().unwrap();
        let registry = Registry::open(state.path()).unwrap();
        assert!(registry.load_totals().unwrap().is_empty());
        assert_eq!(registry.load_labels().unwrap(), None);
        let totals: BTreeMap<String, Totals> = [(
            "ab".repeat(20),
            Totals { uploaded: 1, downloaded: 2, seeding_secs: 3, completed_at: 4 },
        )]
        .into();
        registry.save_totals(&totals).unwrap();
        assert_eq!(registry.load_totals().unwrap(), totals);
        registry.save_labels(b"{}").unwrap();
        assert_eq!(registry.load_labels().unwrap().unwrap(), b"{}");
        // The registry lists entries by `.json` in torrents/: the state
        // files beside it are not entries.
        assert!(registry.load_all(1).0.is_empty());
    }
}
