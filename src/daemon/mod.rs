//! `ringbit daemon`: the seed box. Holds many torrents in one [`Session`]
//! (each on the shard its info hash picks), remembers them across restarts
//! ([`registry`] + resume state), adds and stops torrents from a watch
//! directory ([`watch`]) and an HTTP control API with Prometheus metrics
//! ([`api`], [`metrics`]).
//!
//! Layer: driver (top), beside the CLI edge. Nothing here runs on a shard
//! thread: starter threads check data and call the blocking [`Session`]
//! methods; the API runs on its own thread and runtime.
//!
//! Torrent lifecycle: `queued` → `checking` (resume state trusted for files
//! that did not change, the rest rehashed) → `downloading` / `seeding`;
//! `paused` (stopped on its shard, trackers told `stopped`, resume saved);
//! `error` (storage failed or data could not be checked).
//!
//! Invariants:
//! * a torrent is in the session exactly while its entry is `Running`;
//!   state changes that add or remove it happen under the `ops` lock, so a
//!   pause racing a start cannot leave a torrent running unseen;
//! * resume state claims only durable pieces: it is written after a check
//!   (pieces read back from disk), after a checkpoint (the shard flushed), or
//!   after the torrent stopped (its store flushed), always from the
//!   torrent's [`Durability`](crate::resume::Durability): a failed flush
//!   stops the torrent (state `error`, the message in its `error` field,
//!   logged, counted in `/metrics` as `ringbit_storage_flush_failures`), and
//!   the pieces it may have lost are left out and their files marked for
//!   recheck; it is rewritten only when the verified pieces changed, so
//!   stopping 10,000 seeding torrents writes nothing;
//! * at most `limits.max_torrents` torrents.

pub mod api;
pub mod auth;
pub mod config;
pub mod labels;
pub mod magnets;
pub mod metrics;
pub mod qbt;
pub mod qbt_sync;
pub mod registry;
pub mod roots;
pub mod share;
pub mod watch;

use crate::bitfield::Bitfield;
use crate::metainfo::{InfoHash, Metainfo};
use crate::net::trackers::TrackerConfig;
use crate::session::{AddTorrent, Session, SessionError, SessionOptions};
use crate::shard::engine::TorrentStatus;
use crate::storage::check::CheckOptions;
use crate::storage::{resume, StoreOptions};
use crate::tracker::schedule::TrackerStatus;
use crate::wire::PeerId;
use config::DaemonConfig;
use crossbeam_channel::{Receiver, Sender};
use registry::{EntryMeta, Labels, Registry, RegistryError, Source, Totals};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Threads that check torrents' data and start them, at least.
pub const STARTER_THREADS_MIN: usize = 4;

/// Why the daemon or one of its operations failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("not a valid .torrent: {0}")]
    BadTorrent(String),
    #[error("cannot read {path}: {source}")]
    ReadTorrent { path: PathBuf, source: std::io::Error },
    #[error("torrent {0} is already in the daemon")]
    Duplicate(InfoHash),
    #[error("no torrent {0} in the daemon")]
    NotFound(InfoHash),
    #[error("the daemon holds {0} torrents, its limit (limits.max_torrents)")]
    TooMany(usize),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("cannot start the control API on {addr}: {source}")]
    Api { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Roots(#[from] roots::RootsError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Label(#[from] labels::LabelError),
    #[error("download_dir {} is not under any of download_roots", .0.display())]
    DownloadDirOutsideRoots(PathBuf),
}

/// Where a torrent is in its lifecycle.
enum EntryState {
    Queued,
    Checking,
    Running(Arc<TorrentStatus>),
    Paused,
    Failed(String),
}

struct Entry {
    metainfo: Arc<Metainfo>,
    meta: EntryMeta,
    state: EntryState,
    /// Pieces hashed when it was last started.
    rechecked_pieces: u32,
    /// The verified pieces the resume file on disk claims (`None`: no file).
    saved: Option<Bitfield>,
    /// Loaded at daemon start and not yet started (for the startup report).
    in_startup: bool,
    /// Flush failures of its current run already added to
    /// [`Daemon::flush_failures`].
    flush_failures_counted: u64,
    /// Totals of its earlier runs and its seeding time ([`share`]).
    share: share::ShareTracker,
}

/// What a torrent is added with besides its bytes, place and source (the
/// qBittorrent API's options; all default to none).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(default)]
pub struct AddExtra {
    pub labels: Labels,
    /// Bytes per second, 0 = none.
    pub upload_rate_limit: u64,
    pub download_rate_limit: u64,
}

/// Daemon start-up progress (the registry's torrents being checked and started).
#[derive(Default)]
struct Startup {
    pending: AtomicUsize,
    expected: AtomicUsize,
    rechecked_pieces: AtomicU64,
    done_after: Mutex<Option<Duration>>,
    errors: Mutex<Vec<String>>,
}

/// The running seed box.
pub struct Daemon {
    config: DaemonConfig,
    /// `download_roots`, canonical: the only places API clients may put
    /// data or read .torrent files from.
    roots: Vec<PathBuf>,
    /// The watch dir, canonical (its files may be read by path too).
    watch_root: Option<PathBuf>,
    /// `None` once shut down.
    session: RwLock<Option<Session>>,
    listen_port: u16,
    shard_count: usize,
    io_driver: crate::shard::driver::DriverSelection,
    registry: Registry,
    torrents: Mutex<BTreeMap<InfoHash, Entry>>,
    /// Serializes the operations that add a torrent to or remove it from the
    /// session.
    ops: Mutex<()>,
    start_jobs: Sender<InfoHash>,
    /// Dropped at shutdown: every helper thread waiting on it wakes and ends.
    stop_signal: Mutex<Option<Sender<()>>>,
    stop_receiver: Receiver<()>,
    stopping: AtomicBool,
    started_at: Instant,
    startup: Startup,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Magnet links whose metadata is being fetched ([`magnets`]).
    magnets: Mutex<magnets::Pending>,
    magnet_jobs: Sender<magnets::MagnetJob>,
    /// Peers a finished fetch learned, for its torrent's first dials.
    magnet_peers: Mutex<std::collections::HashMap<InfoHash, Vec<std::net::SocketAddr>>>,
    /// Storage flushes that failed since the daemon started (all torrents).
    flush_failures: AtomicU64,
    /// Categories, tags and global share limits ([`labels`]).
    labels: Mutex<labels::LabelStore>,
    /// `totals.json` as last written.
    saved_totals: Mutex<BTreeMap<String, Totals>>,
    /// Totals read at start, handed to the torrents as they load.
    loaded_totals: Mutex<BTreeMap<String, Totals>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn create_dir(path: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(path)
        .map_err(|source| DaemonError::CreateDir { path: path.to_path_buf(), source })
}

impl Daemon {
    /// Starts the engine, loads every registered torrent (checked and started
    /// by starter threads in the background; see [`Daemon::status`]'s
    /// `startup`), and the resume saver. The API and the watch directory are
    /// started by [`api::start`] and [`watch::start`].
    pub fn start(config: DaemonConfig) -> Result<Arc<Daemon>, DaemonError> {
        raise_open_file_limit();
        create_dir(&config.state_dir)?;
        create_dir(&config.download_dir)?;
        if let Some(watch) = &config.watch_dir {
            create_dir(watch)?;
        }
        let roots = roots::canonical_roots(&config.download_roots)?;
        let download_dir = config.download_dir.canonicalize().map_err(|source| {
            DaemonError::CreateDir { path: config.download_dir.clone(), source }
        })?;
        if !roots::is_under(&download_dir, &roots) {
            return Err(DaemonError::DownloadDirOutsideRoots(config.download_dir.clone()));
        }
        let watch_root = match &config.watch_dir {
            Some(w) => Some(roots::canonical_roots(std::slice::from_ref(w))?.remove(0)),
            None => None,
        };
        let registry = Registry::open(&config.state_dir)?;
        let labels = Daemon::load_labels(&registry);
        let totals = registry.load_totals().unwrap_or_else(|error| {
            tracing::error!(%error, "totals.json unreadable; ratios and seeding times restart");
            BTreeMap::new()
        });
        let peer_id = PeerId::ours(rand::random());
        let mut tracker_config = TrackerConfig::new(peer_id.0);
        if let Some(secs) = config.reannounce_secs {
            tracker_config.schedule.max_interval_secs = secs;
            tracker_config.schedule.min_interval_floor_secs =
                tracker_config.schedule.min_interval_floor_secs.min(secs);
        }
        let mut options = SessionOptions {
            config: config.engine.clone(),
            trackers: config.trackers,
            tracker_config: Some(tracker_config),
            ..SessionOptions::default()
        };
        if !config.bind.is_empty() {
            options.listen_ips = config.bind.clone();
        }
        if config.dht {
            let mut dht = crate::net::dht::DhtOptions {
                bootstrap: config.dht_bootstrap.clone(),
                state_dir: Some(config.state_dir.clone()),
                ..crate::net::dht::DhtOptions::default()
            };
            dht.core.read_only = config.dht_read_only;
            options.dht = Some(dht);
        }
        let session = Session::start(options)?;
        let (start_jobs, jobs) = crossbeam_channel::unbounded();
        let (stop_signal, stop_receiver) = crossbeam_channel::bounded(0);
        let (magnet_jobs, magnet_receiver) = crossbeam_channel::unbounded();
        let daemon = Arc::new(Daemon {
            listen_port: session.listen_port(),
            shard_count: session.shard_count(),
            io_driver: session.io_driver().clone(),
            session: RwLock::new(Some(session)),
            config,
            roots,
            watch_root,
            registry,
            torrents: Mutex::new(BTreeMap::new()),
            ops: Mutex::new(()),
            start_jobs,
            stop_signal: Mutex::new(Some(stop_signal)),
            stop_receiver,
            stopping: AtomicBool::new(false),
            started_at: Instant::now(),
            startup: Startup::default(),
            threads: Mutex::new(Vec::new()),
            magnets: Mutex::new(magnets::Pending::default()),
            magnet_jobs,
            magnet_peers: Mutex::new(std::collections::HashMap::new()),
            flush_failures: AtomicU64::new(0),
            labels: Mutex::new(labels),
            saved_totals: Mutex::new(totals.clone()),
            loaded_totals: Mutex::new(totals),
        });
        let starters = (crate::hash::default_threads() * 2).max(STARTER_THREADS_MIN);
        for i in 0..starters {
            let d = daemon.clone();
            let jobs = jobs.clone();
            daemon.spawn(&format!("ringbit-start-{i}"), move || d.run_starter(jobs))?;
        }
        daemon.load_registry();
        let d = daemon.clone();
        daemon.spawn("ringbit-magnets", move || d.run_magnets(magnet_receiver))?;
        let d = daemon.clone();
        daemon.spawn("ringbit-resume", move || d.run_resume_saver())?;
        let d = daemon.clone();
        daemon.spawn("ringbit-share", move || d.run_share_limits())?;
        Ok(daemon)
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), DaemonError> {
        let handle =
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(DaemonError::Thread)?;
        lock(&self.threads).push(handle);
        Ok(())
    }

    /// Queues every registered torrent for its start check.
    fn load_registry(&self) {
        let (loaded, errors) = self.registry.load_all(crate::hash::default_threads() * 2);
        for error in errors {
            tracing::error!(%error, "registry entry skipped");
            lock(&self.startup.errors).push(error.to_string());
        }
        // A paused torrent is not checked until resumed: what its resume
        // file claims (when its files did not change) is its progress.
        let paused_have: Vec<Option<Bitfield>> = loaded
            .iter()
            .map(|entry| {
                entry.meta.paused.then(|| {
                    resume::load_trusted(
                        &self.config.state_dir,
                        entry.metainfo.info_hash,
                        &entry.metainfo.info,
                        &entry.meta.download_dir,
                    )
                })?
            })
            .collect();
        let mut torrents = lock(&self.torrents);
        let mut queued = Vec::new();
        let mut totals = std::mem::take(&mut *lock(&self.loaded_totals));
        for (entry, saved) in loaded.into_iter().zip(paused_have) {
            let info_hash = entry.metainfo.info_hash;
            let paused = entry.meta.paused;
            let share =
                share::ShareTracker::new(totals.remove(&info_hash.to_hex()).unwrap_or_default());
            torrents.insert(
                info_hash,
                Entry {
                    metainfo: entry.metainfo,
                    meta: entry.meta,
                    state: if paused { EntryState::Paused } else { EntryState::Queued },
                    rechecked_pieces: 0,
                    saved,
                    in_startup: !paused,
                    flush_failures_counted: 0,
                    share,
                },
            );
            if !paused {
                queued.push(info_hash);
            }
        }
        self.startup.expected.store(queued.len(), Ordering::Relaxed);
        self.startup.pending.store(queued.len(), Ordering::Relaxed);
        drop(torrents);
        if queued.is_empty() {
            *lock(&self.startup.done_after) = Some(self.started_at.elapsed());
        }
        tracing::info!(torrents = queued.len(), "starting registered torrents");
        for info_hash in queued {
            let _ = self.start_jobs.send(info_hash);
        }
    }

    /// The peer listen port.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// Runs `f` with the session, unless the daemon has shut down.
    fn with_session<R>(&self, f: impl FnOnce(&Session) -> R) -> Option<R> {
        let guard = self.session.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(f)
    }

    fn run_starter(self: Arc<Self>, jobs: Receiver<InfoHash>) {
        loop {
            crossbeam_channel::select! {
                recv(jobs) -> job => match job {
                    Ok(info_hash) => self.start_torrent(info_hash),
                    Err(_) => return,
                },
                recv(self.stop_receiver) -> _ => return,
            }
        }
    }

    /// Checks a queued torrent's data and starts it on its shard.
    fn start_torrent(&self, info_hash: InfoHash) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        let (metainfo, dir, limits) = {
            let mut torrents = lock(&self.torrents);
            let Some(entry) = torrents.get_mut(&info_hash) else { return };
            if !matches!(entry.state, EntryState::Queued) {
                return;
            }
            entry.state = EntryState::Checking;
            let limits = (entry.meta.upload_rate_limit, entry.meta.download_rate_limit);
            (entry.metainfo.clone(), entry.meta.download_dir.clone(), limits)
        };
        let info = &metainfo.info;
        // Data of another program is never cut or overwritten: a file of
        // another size is not ours (ringbit sizes every file at its first
        // open), so the torrent waits in `error` and nothing is written.
        let placed = roots::resolve_under(&dir, &self.roots)
            .map_err(|e| e.to_string())
            .and_then(|_| foreign_file(info, &dir).map_or(Ok(()), Err));
        if let Err(error) = placed {
            self.finish_start(info_hash, EntryState::Failed(error), 0, None);
            return;
        }
        let options = CheckOptions { threads: 1, ..CheckOptions::default() };
        let state_dir = &self.config.state_dir;
        let checked = resume::load_or_recheck(state_dir, info_hash, info, &dir, options);
        let resumed = match checked {
            Ok(resumed) => resumed,
            Err(error) => {
                self.finish_start(info_hash, EntryState::Failed(error.to_string()), 0, None);
                return;
            }
        };
        if let Some(warning) = &resumed.warning {
            tracing::warn!(%info_hash, "{warning}");
        }
        // What the resume file now on disk says: the loaded state when it
        // was trusted as is; otherwise write what the check found (read back
        // from disk, so durable).
        let trusted = resumed.rechecked == 0 && !resumed.full_recheck;
        let saved = if trusted {
            Some(resumed.have.clone())
        } else {
            match resume::save(state_dir, info_hash, info, &dir, &resumed.have) {
                Ok(()) => Some(resumed.have.clone()),
                Err(error) => {
                    tracing::warn!(%info_hash, %error, "cannot save resume state");
                    None
                }
            }
        };
        let _ops = lock(&self.ops);
        let still_wanted = lock(&self.torrents)
            .get(&info_hash)
            .is_some_and(|e| matches!(e.state, EntryState::Checking));
        if !still_wanted || self.stopping.load(Ordering::Relaxed) {
            // Paused, removed or shutting down while checking.
            self.settle_startup(info_hash);
            return;
        }
        let add = AddTorrent {
            metainfo: metainfo.clone(),
            download_dir: dir,
            wanted: Bitfield::full(info.piece_count()),
            have: resumed.have,
            store_options: StoreOptions {
                backend: self.config.backend,
                allocation: self.config.allocation,
                file_idle_close_secs: self.config.file_idle_close_secs,
                direct_io: self.config.direct_io,
            },
            peers: lock(&self.magnet_peers).remove(&info_hash).unwrap_or_default(),
        };
        let started = self.with_session(|s| {
            let status = s.add(add)?;
            if limits != (0, 0) {
                s.set_torrent_rate_limits(info_hash, limits.0, limits.1)?;
            }
            Ok::<_, SessionError>(status)
        });
        let state = match started {
            Some(Ok(status)) => EntryState::Running(status),
            Some(Err(error)) => EntryState::Failed(error.to_string()),
            None => EntryState::Failed("the daemon is shutting down".into()),
        };
        self.finish_start(info_hash, state, resumed.rechecked, saved);
    }

    fn finish_start(
        &self,
        info_hash: InfoHash,
        state: EntryState,
        rechecked: u32,
        saved: Option<Bitfield>,
    ) {
        if let EntryState::Failed(error) = &state {
            tracing::error!(%info_hash, %error, "torrent not started");
        }
        {
            let mut torrents = lock(&self.torrents);
            if let Some(entry) = torrents.get_mut(&info_hash) {
                if entry.in_startup {
                    self.startup.rechecked_pieces.fetch_add(rechecked as u64, Ordering::Relaxed);
                }
                entry.state = state;
                entry.rechecked_pieces = rechecked;
                entry.saved = saved;
                entry.flush_failures_counted = 0; // a new run, a new status
            }
        }
        self.settle_startup(info_hash);
    }

    /// Counts a start-up torrent as done (once).
    fn settle_startup(&self, info_hash: InfoHash) {
        let was = {
            let mut torrents = lock(&self.torrents);
            torrents.get_mut(&info_hash).map(|e| std::mem::take(&mut e.in_startup))
        };
        if was != Some(true) {
            return;
        }
        if self.startup.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let elapsed = self.started_at.elapsed();
            *lock(&self.startup.done_after) = Some(elapsed);
            tracing::info!(
                torrents = self.startup.expected.load(Ordering::Relaxed),
                seconds = elapsed.as_secs_f64(),
                rechecked_pieces = self.startup.rechecked_pieces.load(Ordering::Relaxed),
                "all registered torrents started"
            );
        }
    }

    /// Adds a torrent from its .torrent bytes (or a magnet link: see
    /// [`Daemon::add_magnet`]): registered, then checked and started in the
    /// background. Returns its info hash and name.
    pub fn add_torrent(
        &self,
        bytes: Vec<u8>,
        download_dir: Option<PathBuf>,
        source: Source,
        paused: bool,
    ) -> Result<(InfoHash, String), DaemonError> {
        self.add_torrent_with(bytes, download_dir, source, paused, AddExtra::default())
    }

    /// [`Daemon::add_torrent`] with labels, share and rate limits.
    pub fn add_torrent_with(
        &self,
        bytes: Vec<u8>,
        download_dir: Option<PathBuf>,
        source: Source,
        paused: bool,
        extra: AddExtra,
    ) -> Result<(InfoHash, String), DaemonError> {
        if magnets::is_magnet(&bytes) {
            let uri = std::str::from_utf8(&bytes)
                .map_err(|_| DaemonError::BadTorrent("magnet link is not UTF-8".into()))?;
            return self.add_magnet_with(uri, download_dir, source, paused, extra);
        }
        let metainfo =
            Metainfo::from_bytes(&bytes).map_err(|e| DaemonError::BadTorrent(e.to_string()))?;
        let info_hash = metainfo.info_hash;
        let name = metainfo.info.name.clone();
        // A directory from a client must resolve (symlinks and `..`
        // followed) to a place under the roots; it is created only then.
        let download_dir = match download_dir {
            Some(dir) => roots::resolve_under(&dir, &self.roots)?,
            None => self.config.download_dir.clone(),
        };
        let _ops = lock(&self.ops);
        if self.stopping.load(Ordering::Relaxed) {
            return Err(DaemonError::ShuttingDown);
        }
        {
            let torrents = lock(&self.torrents);
            if torrents.contains_key(&info_hash) {
                return Err(DaemonError::Duplicate(info_hash));
            }
            if torrents.len() >= self.config.max_torrents {
                return Err(DaemonError::TooMany(torrents.len()));
            }
        }
        let download_dir = roots::create_dir_under(&download_dir, &self.roots)?;
        let meta = EntryMeta {
            download_dir,
            paused,
            source,
            added_at: unix_now(),
            upload_rate_limit: extra.upload_rate_limit,
            download_rate_limit: extra.download_rate_limit,
            labels: extra.labels,
        };
        self.registry.insert(info_hash, &bytes, &meta)?;
        lock(&self.torrents).insert(
            info_hash,
            Entry {
                metainfo: Arc::new(metainfo),
                meta,
                state: if paused { EntryState::Paused } else { EntryState::Queued },
                rechecked_pieces: 0,
                saved: None,
                in_startup: false,
                flush_failures_counted: 0,
                share: share::ShareTracker::default(),
            },
        );
        if !paused {
            let _ = self.start_jobs.send(info_hash);
        }
        tracing::info!(%info_hash, %name, "torrent added");
        Ok((info_hash, name))
    }

    /// Adds the .torrent file at `path` (see [`Daemon::add_torrent`]).
    pub fn add_torrent_file(
        &self,
        path: &Path,
        download_dir: Option<PathBuf>,
        source: Source,
        paused: bool,
    ) -> Result<(InfoHash, String), DaemonError> {
        // Only files under the roots or the watch dir are read: the path
        // comes from an API client, and the daemon may read what it cannot.
        let allowed: Vec<PathBuf> = self.roots.iter().chain(&self.watch_root).cloned().collect();
        let path = roots::resolve_under(path, &allowed)?;
        let bytes = read_torrent_file(&path)?;
        self.add_torrent(bytes, download_dir, source, paused)
    }

    /// A torrent's metainfo.
    pub fn metainfo(&self, info_hash: InfoHash) -> Option<Arc<Metainfo>> {
        lock(&self.torrents).get(&info_hash).map(|e| e.metainfo.clone())
    }

    /// A torrent's verified pieces (running: now; otherwise what its resume
    /// state says, empty when none).
    pub fn have_pieces(&self, info_hash: InfoHash) -> Option<Bitfield> {
        let torrents = lock(&self.torrents);
        let entry = torrents.get(&info_hash)?;
        Some(match &entry.state {
            EntryState::Running(status) => {
                status.have.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
            _ => entry
                .saved
                .clone()
                .unwrap_or_else(|| Bitfield::new(entry.metainfo.info.piece_count())),
        })
    }

    /// Checks a torrent's data again from scratch: a running one is stopped,
    /// its resume state deleted and it is queued (its pieces are hashed
    /// before it runs again); a paused one is checked when resumed. One
    /// being checked or queued already is left alone.
    pub fn recheck(&self, info_hash: InfoHash) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        let (was, paused) = {
            let mut torrents = lock(&self.torrents);
            let entry = torrents.get_mut(&info_hash).ok_or(DaemonError::NotFound(info_hash))?;
            if matches!(entry.state, EntryState::Queued | EntryState::Checking) {
                return Ok(());
            }
            if let EntryState::Running(status) = &entry.state {
                entry.share.end_run(
                    status.counters.uploaded.load(Ordering::Relaxed),
                    status.counters.downloaded.load(Ordering::Relaxed),
                );
            }
            let paused = entry.meta.paused;
            let next = if paused { EntryState::Paused } else { EntryState::Queued };
            entry.saved = None;
            (std::mem::replace(&mut entry.state, next), paused)
        };
        if let EntryState::Running(_) = was {
            self.with_session(|s| s.remove(info_hash));
        }
        let path = resume::resume_path(&self.config.state_dir, info_hash);
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "cannot delete resume state");
            }
        }
        if !paused {
            let _ = self.start_jobs.send(info_hash);
        }
        tracing::info!(%info_hash, "torrent queued for a full recheck");
        Ok(())
    }

    /// Announces a running torrent to its trackers now.
    pub fn reannounce(&self, info_hash: InfoHash) -> Result<(), DaemonError> {
        let running = lock(&self.torrents)
            .get(&info_hash)
            .map(|e| matches!(e.state, EntryState::Running(_)))
            .ok_or(DaemonError::NotFound(info_hash))?;
        if running {
            self.with_session(|s| s.trackers().map(|t| t.reannounce(info_hash)));
        }
        Ok(())
    }

    /// Stops a torrent and remembers it as paused.
    pub fn pause(&self, info_hash: InfoHash) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        let state = {
            let mut torrents = lock(&self.torrents);
            let entry = torrents.get_mut(&info_hash).ok_or(DaemonError::NotFound(info_hash))?;
            if matches!(entry.state, EntryState::Paused) {
                return Ok(());
            }
            entry.meta.paused = true;
            self.registry.update(info_hash, &entry.meta)?;
            if let EntryState::Running(status) = &entry.state {
                entry.share.end_run(
                    status.counters.uploaded.load(Ordering::Relaxed),
                    status.counters.downloaded.load(Ordering::Relaxed),
                );
            }
            std::mem::replace(&mut entry.state, EntryState::Paused)
        };
        if let EntryState::Running(status) = state {
            self.with_session(|s| s.remove(info_hash));
            self.save_if_changed(info_hash, &status);
        }
        self.settle_startup(info_hash);
        tracing::info!(%info_hash, "torrent paused");
        Ok(())
    }

    /// Starts a paused (or failed) torrent again.
    pub fn resume(&self, info_hash: InfoHash) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        let mut torrents = lock(&self.torrents);
        let entry = torrents.get_mut(&info_hash).ok_or(DaemonError::NotFound(info_hash))?;
        if !matches!(entry.state, EntryState::Paused | EntryState::Failed(_)) {
            return Ok(());
        }
        entry.meta.paused = false;
        self.registry.update(info_hash, &entry.meta)?;
        entry.state = EntryState::Queued;
        drop(torrents);
        let _ = self.start_jobs.send(info_hash);
        tracing::info!(%info_hash, "torrent resumed");
        Ok(())
    }

    /// Sets a torrent's own rate limits (bytes per second, 0 = none),
    /// remembered across restarts.
    pub fn set_torrent_limits(
        &self,
        info_hash: InfoHash,
        upload_rate_limit: u64,
        download_rate_limit: u64,
    ) -> Result<(), DaemonError> {
        let _ops = lock(&self.ops);
        let running = {
            let mut torrents = lock(&self.torrents);
            let entry = torrents.get_mut(&info_hash).ok_or(DaemonError::NotFound(info_hash))?;
            entry.meta.upload_rate_limit = upload_rate_limit;
            entry.meta.download_rate_limit = download_rate_limit;
            self.registry.update(info_hash, &entry.meta)?;
            matches!(entry.state, EntryState::Running(_))
        };
        if running {
            self.with_session(|s| {
                s.set_torrent_rate_limits(info_hash, upload_rate_limit, download_rate_limit)
            })
            .ok_or(DaemonError::ShuttingDown)??;
        }
        Ok(())
    }

    /// Sets the process-wide rate limits until the next restart (the config
    /// file's `limits.upload_rate` / `download_rate` apply again then).
    pub fn set_process_limits(&self, upload_rate_limit: u64, download_rate_limit: u64) {
        self.with_session(|s| s.set_rate_limits(upload_rate_limit, download_rate_limit));
    }

    /// The process-wide rate limits (upload, download), bytes per second.
    pub fn process_limits(&self) -> (u64, u64) {
        self.with_session(|s| s.rate_limits()).unwrap_or((0, 0))
    }

    /// Stops a torrent and forgets it (its data stays on disk; its resume
    /// state is deleted).
    pub fn remove(&self, info_hash: InfoHash) -> Result<(), DaemonError> {
        if self.remove_magnet(info_hash) {
            return Ok(());
        }
        let _ops = lock(&self.ops);
        self.settle_startup(info_hash);
        let entry =
            lock(&self.torrents).remove(&info_hash).ok_or(DaemonError::NotFound(info_hash))?;
        if let EntryState::Running(_) = entry.state {
            self.with_session(|s| s.remove(info_hash));
        }
        self.registry.remove(info_hash)?;
        let path = resume::resume_path(&self.config.state_dir, info_hash);
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "cannot delete resume state");
            }
        }
        tracing::info!(%info_hash, "torrent removed");
        Ok(())
    }

    /// [`Daemon::remove`], then deletes the torrent's data files (and the
    /// directories of a multi-file torrent left empty). Only files of the
    /// torrent's own layout under its download dir, itself under the roots,
    /// are touched.
    pub fn remove_with_data(&self, info_hash: InfoHash) -> Result<(), DaemonError> {
        let (metainfo, dir) = {
            let torrents = lock(&self.torrents);
            let entry = torrents.get(&info_hash).ok_or(DaemonError::NotFound(info_hash))?;
            (entry.metainfo.clone(), entry.meta.download_dir.clone())
        };
        self.remove(info_hash)?;
        let dir = roots::resolve_under(&dir, &self.roots)?;
        let mut parents = std::collections::BTreeSet::new();
        for file in metainfo.info.files.iter().filter(|f| !f.pad) {
            let path = crate::storage::file_path(&dir, &file.path);
            if let Err(error) = std::fs::remove_file(&path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "cannot delete a data file");
                }
            }
            let mut parent = path.parent();
            while let Some(p) = parent.filter(|p| p.starts_with(&dir) && *p != dir) {
                parents.insert(p.to_path_buf());
                parent = p.parent();
            }
        }
        // Deepest first; a directory that still holds other files stays.
        for p in parents.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
        tracing::info!(%info_hash, "torrent data deleted");
        Ok(())
    }

    /// Removes the torrents added from the watch directory file `path`.
    pub fn remove_watched(&self, path: &Path) {
        let hashes: Vec<InfoHash> = lock(&self.torrents)
            .iter()
            .filter(|(_, e)| matches!(&e.meta.source, Source::Watch { path: p } if p == path))
            .map(|(h, _)| *h)
            .collect();
        for info_hash in hashes {
            if let Err(error) = self.remove(info_hash) {
                tracing::warn!(%info_hash, %error, "cannot remove watched torrent");
            }
        }
    }

    /// Watch-directory files the registry knows (their torrents are loaded).
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        lock(&self.torrents)
            .values()
            .filter_map(|e| match &e.meta.source {
                Source::Watch { path } => Some(path.clone()),
                Source::Api => None,
            })
            .collect()
    }

    /// Writes a stopped (or failed) torrent's resume state from what its
    /// flushes made durable, if that changed, and counts its flush failures.
    fn save_if_changed(&self, info_hash: InfoHash, status: &TorrentStatus) {
        let durability = status.durability();
        self.count_flush_failures(info_hash, durability.flush_failures());
        let suspect = durability.suspect();
        let suspect = (suspect.count() > 0).then_some(suspect);
        self.save_resume(info_hash, durability.durable().clone(), suspect);
    }

    /// Adds the flush failures of a torrent's run not counted yet to the
    /// daemon's total.
    fn count_flush_failures(&self, info_hash: InfoHash, failures: u64) {
        if let Some(entry) = lock(&self.torrents).get_mut(&info_hash) {
            let new = failures.saturating_sub(entry.flush_failures_counted);
            entry.flush_failures_counted = entry.flush_failures_counted.max(failures);
            self.flush_failures.fetch_add(new, Ordering::Relaxed);
        }
    }

    /// Writes `have` (durable pieces) as the torrent's resume state unless the
    /// file already says exactly that; the files of `recheck` pieces (a
    /// failed flush's) are left unstamped so the next start rechecks them.
    fn save_resume(&self, info_hash: InfoHash, have: Bitfield, recheck: Option<&Bitfield>) {
        let (metainfo, dir) = {
            let torrents = lock(&self.torrents);
            let Some(entry) = torrents.get(&info_hash) else { return };
            if entry.saved.as_ref() == Some(&have) && recheck.is_none() {
                return;
            }
            (entry.metainfo.clone(), entry.meta.download_dir.clone())
        };
        let state_dir = &self.config.state_dir;
        let result =
            resume::save_marked(state_dir, info_hash, &metainfo.info, &dir, &have, recheck);
        match result {
            Ok(()) => {
                if let Some(entry) = lock(&self.torrents).get_mut(&info_hash) {
                    entry.saved = Some(have);
                }
            }
            Err(error) => tracing::warn!(%info_hash, %error, "cannot save resume state"),
        }
    }

    /// Every `resume_save_interval_secs`, checkpoints the running torrents
    /// whose verified pieces changed and saves their resume state, so a
    /// crash loses at most that much progress (never integrity).
    fn run_resume_saver(self: Arc<Self>) {
        let interval = Duration::from_secs(self.config.resume_save_interval_secs);
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            self.stop_receiver.recv_timeout(interval)
        {
            self.checkpoint_changed();
            self.save_totals();
        }
    }

    /// Checkpoints and saves every running torrent whose pieces changed
    /// since its resume state was written. Returns how many were saved.
    pub fn checkpoint_changed(&self) -> usize {
        let changed: Vec<InfoHash> = lock(&self.torrents)
            .iter()
            .filter_map(|(h, e)| match &e.state {
                EntryState::Running(status) => {
                    let have = status.have_pieces.load(Ordering::Relaxed);
                    (e.saved.as_ref().map(|b| b.count()) != Some(have)).then_some(*h)
                }
                _ => None,
            })
            .collect();
        let mut saved = 0;
        for info_hash in changed {
            match self.with_session(|s| s.checkpoint(info_hash)) {
                Some(Some(Ok(durable))) => {
                    self.save_resume(info_hash, durable, None);
                    saved += 1;
                }
                Some(Some(Err(error))) => {
                    tracing::error!(%info_hash, %error, "checkpoint failed");
                    // A failed flush stopped the torrent: save what is
                    // durable and mark the rest for recheck now, not at
                    // the next pause or shutdown.
                    let status = match &lock(&self.torrents).get(&info_hash).map(|e| &e.state) {
                        Some(EntryState::Running(status)) => Some(status.clone()),
                        _ => None,
                    };
                    if let Some(status) = status {
                        self.save_if_changed(info_hash, &status);
                    }
                }
                _ => {}
            }
        }
        saved
    }

    /// Stops everything: the helper threads, then the session (trackers
    /// hear `stopped`, shards close connections and flush), then writes the
    /// resume state of every torrent whose pieces changed. Idempotent.
    pub fn shutdown(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!("shutting down");
        drop(lock(&self.stop_signal).take());
        let _ops = lock(&self.ops);
        let session = self.session.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(session) = session {
            session.shutdown();
        }
        let running: Vec<(InfoHash, Arc<TorrentStatus>)> = lock(&self.torrents)
            .iter()
            .filter_map(|(h, e)| match &e.state {
                EntryState::Running(status) => Some((*h, status.clone())),
                _ => None,
            })
            .collect();
        for (info_hash, status) in running {
            self.save_if_changed(info_hash, &status);
        }
        self.save_totals();
        drop(_ops);
        // Starter threads busy with a long recheck are not waited for: they
        // see `stopping` and add nothing.
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for handle in threads {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
        tracing::info!("shut down");
    }

    /// A receiver that disconnects when the daemon shuts down.
    pub fn stop_receiver(&self) -> Receiver<()> {
        self.stop_receiver.clone()
    }

    /// Every torrent's view, by info hash.
    pub fn torrents(&self) -> Vec<TorrentView> {
        let torrents = lock(&self.torrents);
        self.with_session(|s| torrents.iter().map(|(h, e)| self.view(*h, e, Some(s))).collect())
            .unwrap_or_else(|| torrents.iter().map(|(h, e)| self.view(*h, e, None)).collect())
    }

    /// One torrent's view.
    pub fn torrent(&self, info_hash: InfoHash) -> Option<TorrentView> {
        let torrents = lock(&self.torrents);
        let entry = torrents.get(&info_hash)?;
        self.with_session(|s| self.view(info_hash, entry, Some(s)))
            .or_else(|| Some(self.view(info_hash, entry, None)))
    }

    fn view(&self, info_hash: InfoHash, entry: &Entry, session: Option<&Session>) -> TorrentView {
        let info = &entry.metainfo.info;
        let brief = Brief::of(entry);
        let mut view = TorrentView {
            info_hash: info_hash.to_hex(),
            name: info.name.clone(),
            state: brief.state,
            size: info.total_length,
            piece_count: info.piece_count(),
            have_pieces: brief.have_pieces,
            progress: 0.0,
            downloaded: brief.downloaded,
            uploaded: brief.uploaded,
            download_rate: brief.download_rate,
            upload_rate: brief.upload_rate,
            peers: brief.peers,
            shard: info_hash.shard(self.shard_count),
            download_dir: entry.meta.download_dir.clone(),
            source: entry.meta.source.clone(),
            added_at: entry.meta.added_at,
            rechecked_pieces: entry.rechecked_pieces,
            upload_rate_limit: entry.meta.upload_rate_limit,
            download_rate_limit: entry.meta.download_rate_limit,
            error: brief.error,
            trackers: Vec::new(),
            labels: entry.meta.labels.clone(),
            totals: entry.share.with_run(brief.uploaded, brief.downloaded),
            piece_length: info.piece_length as u64,
        };
        if let (EntryState::Running(_), Some(trackers)) =
            (&entry.state, session.and_then(Session::trackers))
        {
            let now = Instant::now();
            view.trackers =
                trackers.status(&info_hash).iter().map(|t| tracker_view(t, now)).collect();
        }
        if view.piece_count > 0 {
            view.progress = view.have_pieces as f64 / view.piece_count as f64;
        }
        view
    }

    /// The daemon as a whole.
    pub fn status(&self) -> StatusView {
        // Counting must stay cheap with 10,000 torrents (scripts poll this):
        // no names, paths or tracker states, only the counters.
        let torrents: Vec<Brief> = lock(&self.torrents).values().map(Brief::of).collect();
        let mut by_state: BTreeMap<&'static str, usize> =
            ["queued", "checking", "downloading", "seeding", "paused", "error"]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
        let mut status = StatusView {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started_at.elapsed().as_secs_f64(),
            listen_port: self.listen_port,
            shards: self.shard_count,
            io_driver: self.io_driver.driver.name(),
            io_driver_reason: self.io_driver.reason.clone(),
            torrents: torrents.len(),
            by_state: BTreeMap::new(),
            download_rate: 0,
            upload_rate: 0,
            downloaded: 0,
            uploaded: 0,
            peers: 0,
            upload_rate_limit: 0,
            download_rate_limit: 0,
            startup: StartupView {
                done: false,
                seconds: None,
                expected: self.startup.expected.load(Ordering::Relaxed),
                pending: self.startup.pending.load(Ordering::Relaxed),
                rechecked_pieces: self.startup.rechecked_pieces.load(Ordering::Relaxed),
                errors: lock(&self.startup.errors).clone(),
            },
            shutting_down: self.stopping.load(Ordering::Relaxed),
            flush_failures: self.flush_failures.load(Ordering::Relaxed),
        };
        if let Some(after) = *lock(&self.startup.done_after) {
            status.startup.done = true;
            status.startup.seconds = Some(after.as_secs_f64());
        }
        for t in &torrents {
            *by_state.entry(t.state).or_default() += 1;
            status.download_rate += t.download_rate;
            status.upload_rate += t.upload_rate;
            status.downloaded += t.downloaded;
            status.uploaded += t.uploaded;
            status.peers += t.peers;
        }
        status.by_state = by_state;
        (status.upload_rate_limit, status.download_rate_limit) = self.process_limits();
        status
    }

    /// Per-URL tracker totals (empty when trackers are off).
    pub fn tracker_counters(&self) -> Vec<(String, crate::net::trackers::TrackerCounters)> {
        self.with_session(|s| s.trackers().map(|t| t.counters()).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// The DHT's latest statistics, `None` when it is off.
    pub fn dht_report(&self) -> Option<crate::net::dht::DhtReport> {
        self.with_session(|s| s.dht().map(|d| d.report())).flatten()
    }
}

/// The state and counters of one torrent, without the strings of a view.
struct Brief {
    state: &'static str,
    have_pieces: u32,
    downloaded: u64,
    uploaded: u64,
    download_rate: u64,
    upload_rate: u64,
    peers: usize,
    error: Option<String>,
}

impl Brief {
    fn of(entry: &Entry) -> Brief {
        let mut brief = Brief {
            state: "queued",
            have_pieces: entry.saved.as_ref().map_or(0, Bitfield::count),
            downloaded: 0,
            uploaded: 0,
            download_rate: 0,
            upload_rate: 0,
            peers: 0,
            error: None,
        };
        match &entry.state {
            EntryState::Queued => {}
            EntryState::Checking => brief.state = "checking",
            EntryState::Paused => brief.state = "paused",
            EntryState::Failed(error) => {
                brief.state = "error";
                brief.error = Some(error.clone());
            }
            EntryState::Running(status) => {
                brief.have_pieces = status.have_pieces.load(Ordering::Relaxed);
                brief.downloaded = status.counters.downloaded.load(Ordering::Relaxed);
                brief.uploaded = status.counters.uploaded.load(Ordering::Relaxed);
                brief.download_rate = status.download_rate.load(Ordering::Relaxed);
                brief.upload_rate = status.upload_rate.load(Ordering::Relaxed);
                brief.peers = status.peers.load(Ordering::Relaxed);
                brief.state =
                    if brief.have_pieces == status.piece_count { "seeding" } else { "downloading" };
                if let Some(error) = status.error() {
                    brief.state = "error";
                    brief.error = Some(error);
                }
            }
        }
        brief
    }
}

/// The first file of `info` under `dir` that exists with another size than
/// the torrent's (or is not a regular file), as an error message. An empty
/// file holds nothing to lose: it is what an interrupted first open leaves.
fn foreign_file(info: &crate::metainfo::Info, dir: &Path) -> Option<String> {
    info.files.iter().filter(|f| !f.pad).find_map(|f| {
        let path = crate::storage::file_path(dir, &f.path);
        // Followed: seeding through a symlinked data file is legitimate.
        let meta = std::fs::metadata(&path).ok()?;
        if !meta.is_file() {
            return Some(format!("{} exists and is not a regular file", path.display()));
        }
        (meta.len() != f.length && meta.len() != 0).then(|| {
            format!(
                "{} exists with another size ({} bytes, the torrent says {}); nothing was \
                 written: move it away or pick another download_dir, then resume",
                path.display(),
                meta.len(),
                f.length
            )
        })
    })
}

/// Reads a .torrent file, bounded by the metainfo size limit.
pub fn read_torrent_file(path: &Path) -> Result<Vec<u8>, DaemonError> {
    use std::io::Read;
    let read_error = |source| DaemonError::ReadTorrent { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let max = crate::metainfo::METAINFO_FILE_MAX_BYTES;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(DaemonError::BadTorrent(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Raises the soft open-file limit to the hard limit: every peer is a
/// socket, the files of active torrents are open (pwrite and io_uring: those
/// read or written in the last `file_idle_close_secs`), and the mmap backend
/// keeps every file of every torrent open.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!("cannot raise the open-file limit above {}", limit.rlim_cur);
            }
        }
    }
}

fn tracker_view(t: &TrackerStatus, now: Instant) -> TrackerView {
    use crate::tracker::schedule::TrackerOutcome;
    let mut view = TrackerView {
        url: t.url.clone(),
        tier: t.tier,
        status: if t.updating { "updating" } else { "not contacted" },
        message: None,
        seeders: None,
        leechers: None,
        peers: None,
        last_announce_secs_ago: t.last_announce_at.map(|at| now.duration_since(at).as_secs_f64()),
        next_announce_in_secs: t
            .next_announce_at
            .map(|at| at.saturating_duration_since(now).as_secs_f64()),
        consecutive_failures: t.consecutive_failures,
    };
    match &t.last {
        Some(TrackerOutcome::Answered { peers, seeders, leechers, warning, .. }) => {
            if !t.updating {
                view.status = "ok";
            }
            view.peers = Some(*peers);
            view.seeders = *seeders;
            view.leechers = *leechers;
            view.message = warning.clone();
        }
        Some(TrackerOutcome::Failed(message)) => {
            if !t.updating {
                view.status = "failed";
            }
            view.message = Some(message.clone());
        }
        None => {}
    }
    view
}

/// A torrent as the API shows it.
#[derive(serde::Serialize, Debug, Clone)]
pub struct TorrentView {
    pub info_hash: String,
    pub name: String,
    /// queued, checking, downloading, seeding, paused or error.
    pub state: &'static str,
    pub size: u64,
    pub piece_count: u32,
    pub have_pieces: u32,
    /// 0.0 to 1.0.
    pub progress: f64,
    pub downloaded: u64,
    pub uploaded: u64,
    /// Bytes per second.
    pub download_rate: u64,
    pub upload_rate: u64,
    pub peers: usize,
    pub shard: usize,
    pub download_dir: PathBuf,
    pub source: Source,
    /// Seconds since the Unix epoch.
    pub added_at: u64,
    /// Pieces hashed the last time it started (0 when resume state was trusted).
    pub rechecked_pieces: u32,
    /// This torrent's own limits, bytes per second (0 = none).
    pub upload_rate_limit: u64,
    pub download_rate_limit: u64,
    pub error: Option<String>,
    pub trackers: Vec<TrackerView>,
    /// Category, tags and share limits (the qBittorrent API's).
    pub labels: Labels,
    /// Over every run: bytes uploaded and downloaded, seconds seeded, when
    /// it completed.
    pub totals: Totals,
    pub piece_length: u64,
}

/// One tracker of a torrent as the API shows it.
#[derive(serde::Serialize, Debug, Clone)]
pub struct TrackerView {
    pub url: String,
    pub tier: usize,
    /// ok, failed, updating or "not contacted".
    pub status: &'static str,
    /// The failure reason or the tracker's warning.
    pub message: Option<String>,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
    pub peers: Option<usize>,
    pub last_announce_secs_ago: Option<f64>,
    pub next_announce_in_secs: Option<f64>,
    pub consecutive_failures: u32,
}

/// The daemon as the API shows it.
#[derive(serde::Serialize, Debug, Clone)]
pub struct StatusView {
    pub version: &'static str,
    pub uptime_secs: f64,
    pub listen_port: u16,
    pub shards: usize,
    /// The I/O driver of the shards (`io_uring` or `epoll`) and why.
    pub io_driver: &'static str,
    pub io_driver_reason: String,
    pub torrents: usize,
    pub by_state: BTreeMap<&'static str, usize>,
    pub download_rate: u64,
    pub upload_rate: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub peers: usize,
    /// Process-wide limits, bytes per second (0 = none).
    pub upload_rate_limit: u64,
    pub download_rate_limit: u64,
    pub startup: StartupView,
    pub shutting_down: bool,
    /// Storage flushes that failed since the daemon started (each stopped
    /// its torrent; see the torrent's `error`).
    pub flush_failures: u64,
}

/// Progress of loading the registered torrents at start.
#[derive(serde::Serialize, Debug, Clone)]
pub struct StartupView {
    /// Every registered torrent has been checked and started (or failed).
    pub done: bool,
    /// Seconds from daemon start until done.
    pub seconds: Option<f64>,
    pub expected: usize,
    pub pending: usize,
    /// Pieces hashed while starting (0 when every resume state was trusted).
    pub rechecked_pieces: u64,
    pub errors: Vec<String>,
}
