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
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest `.json` sidecar read.
const META_FILE_MAX_BYTES: u64 = 64 * 1024;

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

/// The `.json` sidecar of an entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Directory the torrent's file or top directory lives in.
    pub download_dir: PathBuf,
    pub paused: bool,
    pub source: Source,
    /// Seconds since the Unix epoch.
    pub added_at: u64,
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
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
