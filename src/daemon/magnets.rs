//! Magnet links in the daemon: the API and the watch directory hand a
//! `magnet:?` link (the body of `POST /api/v1/torrents`, or a `.magnet` file
//! holding one link) to [`Daemon::add_magnet`]; one thread fetches the
//! metadata of every pending link (BEP 9, on the shard that will own the
//! torrent) and, once it is verified, adds the torrent as if its .torrent had
//! been given.
//!
//! Layer: driver (control plane; never on a shard). A pending link is kept as
//! `<state_dir>/magnets/<info hash>.magnet` until its torrent is registered,
//! so a restart resumes the fetch; the fetched .torrent is saved beside the
//! resume state (`<info hash>.torrent`), so a link added again later needs no
//! fetch.
//!
//! Invariants: at most [`MAX_PENDING_MAGNETS`] links are fetched at once; a
//! link is either pending here or registered, never both; its torrent is
//! added only from metadata whose SHA1 is its info hash (the fetch core
//! checks it, and `Metainfo::from_bytes` recomputes it).

use super::registry::Source;
use super::{lock, AddExtra, Daemon, DaemonError};
use crate::magnet::{torrent_file_bytes_with_web_seeds, Magnet};
use crate::metainfo::{InfoHash, Metainfo};
use crate::session::FetchStatus;
use crate::shard::metadata::METADATA_UNKNOWN_LEFT_BYTES;
use crate::storage::resume;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Links whose metadata is being fetched at once at most.
pub const MAX_PENDING_MAGNETS: usize = 256;

/// How often the fetch thread looks at its fetches.
const MAGNET_POLL: Duration = Duration::from_millis(50);

/// Largest pending-link file read back at start.
const PENDING_FILE_MAX_BYTES: u64 = 128 * 1024;

/// A link waiting for its metadata (also its file under `magnets/`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct MagnetJob {
    pub uri: String,
    pub download_dir: PathBuf,
    pub source: Source,
    pub paused: bool,
    /// Labels and limits its torrent is added with.
    #[serde(default)]
    pub extra: AddExtra,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub added_at: u64,
}

/// What the daemon keeps of its pending links.
#[derive(Default)]
pub struct Pending {
    /// Info hash -> display name, for duplicate checks and views.
    pub names: HashMap<InfoHash, String>,
    /// Info hash -> its job, for views (same keys as `names`).
    pub jobs: HashMap<InfoHash, MagnetJob>,
}

fn pending_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("magnets")
}

fn pending_path(state_dir: &Path, info_hash: InfoHash) -> PathBuf {
    pending_dir(state_dir).join(format!("{}.magnet", info_hash.to_hex()))
}

/// Whether `bytes` (an API body or a watched file) is a magnet link.
pub fn is_magnet(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii_start();
    trimmed.len() >= 7 && trimmed[..7].eq_ignore_ascii_case(b"magnet:")
}

impl Daemon {
    /// Adds a magnet link: at once from the .torrent an earlier fetch saved,
    /// else its metadata is fetched in the background and the torrent added
    /// when it arrives. Returns the info hash and the link's display name.
    pub fn add_magnet(
        &self,
        uri: &str,
        download_dir: Option<PathBuf>,
        source: Source,
        paused: bool,
    ) -> Result<(InfoHash, String), DaemonError> {
        self.add_magnet_with(uri, download_dir, source, paused, AddExtra::default())
    }

    /// [`Daemon::add_magnet`] with labels and limits for its torrent.
    pub fn add_magnet_with(
        &self,
        uri: &str,
        download_dir: Option<PathBuf>,
        source: Source,
        paused: bool,
        extra: AddExtra,
    ) -> Result<(InfoHash, String), DaemonError> {
        let magnet =
            Magnet::parse(uri.trim()).map_err(|e| DaemonError::BadTorrent(e.to_string()))?;
        let info_hash = magnet.info_hash;
        let saved = resume::torrent_path(&self.config.state_dir, info_hash);
        if let Ok(bytes) = std::fs::read(&saved) {
            if Metainfo::from_bytes(&bytes).is_ok_and(|m| m.info_hash == info_hash) {
                return self.add_torrent_with(bytes, download_dir, source, paused, extra);
            }
        }
        // Checked now (the torrent is added later, from the fetch thread).
        let download_dir = match download_dir {
            Some(dir) => super::roots::resolve_under(&dir, &self.roots)?,
            None => self.config.download_dir.clone(),
        };
        let name = magnet.display_name.clone().unwrap_or_else(|| info_hash.to_hex());
        let job = MagnetJob {
            uri: magnet.to_uri(),
            download_dir,
            source,
            paused,
            extra,
            added_at: super::unix_now(),
        };
        {
            let _ops = lock(&self.ops);
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(DaemonError::ShuttingDown);
            }
            let mut pending = lock(&self.magnets);
            if lock(&self.torrents).contains_key(&info_hash)
                || pending.names.contains_key(&info_hash)
            {
                return Err(DaemonError::Duplicate(info_hash));
            }
            if pending.names.len() >= MAX_PENDING_MAGNETS {
                return Err(DaemonError::BadTorrent(format!(
                    "{MAX_PENDING_MAGNETS} magnet links are already fetching their metadata"
                )));
            }
            let torrents = lock(&self.torrents).len();
            if torrents + pending.names.len() >= self.config.max_torrents {
                return Err(DaemonError::TooMany(torrents));
            }
            let path = pending_path(&self.config.state_dir, info_hash);
            super::create_dir(&pending_dir(&self.config.state_dir))?;
            let text = serde_json::to_vec(&job).expect("a job serializes");
            std::fs::write(&path, text)
                .map_err(|source| DaemonError::ReadTorrent { path: path.clone(), source })?;
            pending.names.insert(info_hash, name.clone());
            pending.jobs.insert(info_hash, job.clone());
        }
        let _ = self.magnet_jobs.send(job);
        tracing::info!(%info_hash, %name, "magnet link added; fetching its metadata");
        Ok((info_hash, name))
    }

    /// Links fetching their metadata now (info hash, name).
    pub fn pending_magnets(&self) -> Vec<(InfoHash, String)> {
        lock(&self.magnets).names.iter().map(|(h, n)| (*h, n.clone())).collect()
    }

    /// Views of the links fetching their metadata (state `metadata`,
    /// nothing known but the name and where it will go).
    pub fn pending_magnet_views(&self) -> Vec<super::TorrentView> {
        let pending = lock(&self.magnets);
        let mut views: Vec<super::TorrentView> = pending
            .jobs
            .iter()
            .map(|(info_hash, job)| super::TorrentView {
                info_hash: info_hash.to_hex(),
                name: pending.names.get(info_hash).cloned().unwrap_or_default(),
                state: "metadata",
                size: 0,
                piece_count: 0,
                have_pieces: 0,
                progress: 0.0,
                downloaded: 0,
                uploaded: 0,
                download_rate: 0,
                upload_rate: 0,
                peers: 0,
                shard: info_hash.shard(self.shard_count),
                download_dir: job.download_dir.clone(),
                source: job.source.clone(),
                added_at: job.added_at,
                rechecked_pieces: 0,
                upload_rate_limit: job.extra.upload_rate_limit,
                download_rate_limit: job.extra.download_rate_limit,
                error: None,
                trackers: Vec::new(),
                labels: job.extra.labels.clone(),
                totals: Default::default(),
                piece_length: 0,
            })
            .collect();
        drop(pending);
        // A link whose torrent was just registered stays pending until the
        // registration returned (so it is never in neither list): show it
        // once, as the torrent.
        {
            let torrents = lock(&self.torrents);
            views.retain(|v| {
                InfoHash::from_hex(&v.info_hash).is_none_or(|h| !torrents.contains_key(&h))
            });
        }
        views.sort_by(|a, b| a.info_hash.cmp(&b.info_hash));
        views
    }

    /// Stops fetching a pending link and forgets it; false when it is not
    /// pending.
    pub(super) fn remove_magnet(&self, info_hash: InfoHash) -> bool {
        {
            let mut pending = lock(&self.magnets);
            pending.jobs.remove(&info_hash);
            if pending.names.remove(&info_hash).is_none() {
                return false;
            }
        }
        self.with_session(|s| s.cancel_fetch(info_hash));
        let _ = std::fs::remove_file(pending_path(&self.config.state_dir, info_hash));
        tracing::info!(%info_hash, "magnet link removed before its metadata arrived");
        true
    }

    /// The fetch thread: starts a fetch per job, and adds each torrent whose
    /// metadata arrived. Ends when the daemon shuts down.
    pub(super) fn run_magnets(self: Arc<Self>, jobs: Receiver<MagnetJob>) {
        for job in self.load_pending() {
            self.queue_loaded(job);
        }
        let mut active: Vec<(InfoHash, MagnetJob, Arc<FetchStatus>)> = Vec::new();
        loop {
            match jobs.recv_timeout(MAGNET_POLL) {
                Ok(job) => {
                    if let Some(started) = self.start_fetch(job) {
                        active.push(started);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            active.retain(|(info_hash, job, status)| {
                if !lock(&self.magnets).names.contains_key(info_hash) {
                    return false; // removed meanwhile
                }
                match status.take_metadata() {
                    Some(info_bytes) => {
                        self.fetched(*info_hash, job, &info_bytes, status);
                        false
                    }
                    None => !status.done.load(std::sync::atomic::Ordering::Acquire),
                }
            });
        }
    }

    /// Pending links from the last run (bad files are logged and deleted).
    fn load_pending(&self) -> Vec<MagnetJob> {
        let dir = pending_dir(&self.config.state_dir);
        let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
        let mut jobs = Vec::new();
        for entry in entries.flatten().take(MAX_PENDING_MAGNETS) {
            let path = entry.path();
            let len = entry.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            let job = (len <= PENDING_FILE_MAX_BYTES)
                .then(|| std::fs::read(&path).ok())
                .flatten()
                .and_then(|b| serde_json::from_slice::<MagnetJob>(&b).ok());
            match job {
                Some(job) => jobs.push(job),
                None => {
                    tracing::warn!(path = %path.display(), "unreadable pending magnet link deleted");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        jobs
    }

    fn queue_loaded(&self, job: MagnetJob) {
        let Ok(magnet) = Magnet::parse(&job.uri) else { return };
        let name = magnet.display_name.unwrap_or_else(|| magnet.info_hash.to_hex());
        let mut pending = lock(&self.magnets);
        pending.names.insert(magnet.info_hash, name);
        pending.jobs.insert(magnet.info_hash, job.clone());
        drop(pending);
        let _ = self.magnet_jobs.send(job);
    }

    fn start_fetch(&self, job: MagnetJob) -> Option<(InfoHash, MagnetJob, Arc<FetchStatus>)> {
        let magnet = Magnet::parse(&job.uri).ok()?;
        let info_hash = magnet.info_hash;
        if !lock(&self.magnets).names.contains_key(&info_hash) {
            return None;
        }
        let peers: Vec<std::net::SocketAddr> = magnet
            .peers
            .iter()
            .filter_map(|p| std::net::ToSocketAddrs::to_socket_addrs(p).ok())
            .flatten()
            .collect();
        let trackers: Vec<Vec<String>> = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
        let left = magnet.exact_length.unwrap_or(METADATA_UNKNOWN_LEFT_BYTES);
        match self.with_session(|s| s.fetch_metadata(info_hash, trackers, peers, left))? {
            Ok(status) => Some((info_hash, job, status)),
            Err(error) => {
                tracing::error!(%info_hash, %error, "cannot fetch the metadata");
                None
            }
        }
    }

    /// The metadata of a pending link arrived: save the .torrent, register
    /// the torrent, forget the pending link.
    fn fetched(
        &self,
        info_hash: InfoHash,
        job: &MagnetJob,
        info_bytes: &[u8],
        status: &FetchStatus,
    ) {
        let (trackers, web_seeds) =
            Magnet::parse(&job.uri).map(|m| (m.trackers, m.web_seeds)).unwrap_or_default();
        let bytes = torrent_file_bytes_with_web_seeds(info_bytes, &trackers, &web_seeds);
        if let Err(error) = resume::save_torrent(&self.config.state_dir, info_hash, &bytes) {
            tracing::warn!(%info_hash, %error, "cannot save the fetched torrent");
        }
        // The fetch's peers are worth dialling at once.
        lock(&self.magnet_peers).insert(info_hash, status.sources());
        let added = self.add_torrent_with(
            bytes,
            Some(job.download_dir.clone()),
            job.source.clone(),
            job.paused,
            job.extra.clone(),
        );
        // Forgotten only now: a listing between the two steps would
        // otherwise find the torrent in neither list (qBittorrent clients
        // read that as "removed").
        {
            let mut pending = lock(&self.magnets);
            pending.names.remove(&info_hash);
            pending.jobs.remove(&info_hash);
        }
        let _ = std::fs::remove_file(pending_path(&self.config.state_dir, info_hash));
        match added {
            Ok((_, name)) => tracing::info!(%info_hash, %name, "metadata received; torrent added"),
            Err(error) => tracing::error!(%info_hash, %error, "fetched torrent not added"),
        }
    }
}
