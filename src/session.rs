//! Session: starts the shards, the hash pool, the tracker subsystem, the
//! listener and the DHT; adds and removes torrents, routing each to
//! `shard_of(info_hash)`; shuts everything down in order.
//!
//! Layer: driver (top). Runs on the caller's thread and never on a shard; every
//! call here returns once the owning shard answered.
//!
//! Shutdown order: trackers announce `stopped` (bounded), the listener stops
//! accepting, every shard stops its torrents (connections closed, storage
//! flushed), then the hash pool's workers are joined.

use crate::bitfield::Bitfield;
use crate::config::Config;
use crate::fd_budget::FdBudget;
use crate::hash::HashPool;
use crate::memory_budget::ShardMemory;
use crate::metainfo::InfoHash;
use crate::net::dht::{DhtHandle, DhtOptions};
use crate::net::listener::{ListenConfig, ListenError, Listener};
use crate::net::mse_io::TorrentKeys;
use crate::net::trackers::TorrentCounters;
use crate::net::trackers::{PeerSink, TrackerConfig, TrackerHandle, TrackersError};
use crate::net::udp::{UdpOptions, UdpPort};
use crate::peer::PeerConfig;
use crate::rate_limit::ProcessRateLimits;
pub use crate::shard::engine::AddTorrent;
use crate::shard::engine::{TorrentSpec, TorrentStatus};
use crate::shard::metadata::FetchSpec;
pub use crate::shard::metadata::FetchStatus;
use crate::shard::{ShardCommand, ShardError, ShardInit, ShardSet};
use crate::torrent::TorrentConfig;
use crate::wire::PeerId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Peer batches queued from the trackers to one shard at most.
pub const PEER_BATCH_QUEUE: usize = 256;

/// Longest [`Session::add`] waits for room in the tracker queue.
pub const TRACKER_BUSY_WAIT: Duration = Duration::from_secs(10);

/// Why the session or a torrent could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Shards(#[from] ShardError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("tracker subsystem: {0}")]
    Trackers(#[from] TrackersError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot start hash workers: {0}")]
    HashPool(std::io::Error),
    #[error("torrent {0} is already in the session")]
    Duplicate(InfoHash),
    #[error("torrent {0} is not in the session")]
    NotFound(InfoHash),
    #[error("torrent {info_hash}: {reason}")]
    Torrent { info_hash: InfoHash, reason: String },
}

/// Session-level settings beyond [`Config`].
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub config: Config,
    /// IPs the listener binds (default `0.0.0.0` and `::`).
    pub listen_ips: Vec<IpAddr>,
    /// Announce to trackers (off for `--peer`-only runs and tests).
    pub trackers: bool,
    /// Tracker settings (peer id and timeouts); `None` for defaults.
    pub tracker_config: Option<TrackerConfig>,
    /// The mainline DHT (`None`: off). Its port and bind addresses are
    /// replaced by the listener's, so DHT and peers share one port number.
    pub dht: Option<DhtOptions>,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            config: Config::default(),
            listen_ips: vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([0u16; 8])],
            trackers: true,
            tracker_config: None,
            dht: None,
        }
    }
}

/// The running engine.
pub struct Session {
    config: Arc<Config>,
    shards: ShardSet,
    listener: Listener,
    /// The UDP port's driver (uTP), when uTP is on.
    udp: Option<UdpPort>,
    trackers: Option<TrackerHandle>,
    dht: Option<DhtHandle>,
    peer_id: PeerId,
    torrents: Mutex<HashMap<InfoHash, Arc<TorrentStatus>>>,
    /// Tracker counters of magnet links whose metadata is being fetched:
    /// the trackers keep reading them, so the torrent takes them over.
    fetch_counters: Mutex<HashMap<InfoHash, Arc<TorrentCounters>>>,
    /// Every torrent by its MSE req2 hash, for the listener.
    torrent_keys: Arc<TorrentKeys>,
    rate_limits: Arc<ProcessRateLimits>,
    /// Each shard's byte budgets (read by `/metrics`).
    memory: Vec<ShardMemory>,
    /// How the fd limit was shared out at start.
    fd_budget: FdBudget,
    _hash_pool: Arc<HashPool>,
}

impl Session {
    /// Starts every thread of the engine.
    pub fn start(options: SessionOptions) -> Result<Session, SessionError> {
        options.config.validate()?;
        let mut config = options.config.clone();
        let fd_budget = FdBudget::derive(raise_open_file_limit(), &config);
        fd_budget.apply(&mut config);
        crate::storage::open_files::set_max_open_files(fd_budget.data_files);
        tracing::info!(
            nofile = fd_budget.nofile,
            reserve = fd_budget.reserve,
            peers = config.max_peers_total,
            half_open = config.max_half_open_total,
            data_files = fd_budget.data_files,
            "file descriptors shared out (RLIMIT_NOFILE)"
        );
        let config = Arc::new(config);
        let shard_count = config.shards.max(1);
        let hash_pool = Arc::new(
            HashPool::new(crate::hash::default_threads()).map_err(SessionError::HashPool)?,
        );
        let peer_id = match &options.tracker_config {
            Some(t) => PeerId(t.peer_id),
            None => PeerId::ours(rand::random()),
        };
        // Trackers and the DHT share each shard's peer sink.
        let mut receivers = Vec::new();
        let mut sinks = Vec::new();
        if options.trackers || options.dht.is_some() {
            for _ in 0..shard_count {
                let (sink, receiver) = PeerSink::channel(PEER_BATCH_QUEUE);
                sinks.push(sink);
                receivers.push(Some(receiver));
            }
        } else {
            receivers.extend((0..shard_count).map(|_| None));
        }
        let trackers = if options.trackers {
            let mut tracker_config =
                options.tracker_config.clone().unwrap_or_else(|| TrackerConfig::new(peer_id.0));
            tracker_config.encryption = config.encryption;
            Some(TrackerHandle::start(tracker_config, sinks.clone())?)
        } else {
            None
        };
        let rate_limits = Arc::new(ProcessRateLimits::new(
            config.upload_rate_limit_bytes_per_s,
            config.download_rate_limit_bytes_per_s,
            Instant::now(),
        ));
        let memory: Vec<ShardMemory> = (0..shard_count)
            .map(|_| {
                ShardMemory::new(
                    config.max_piece_buffer_bytes_per_shard,
                    config.max_send_buffer_bytes_per_shard,
                )
            })
            .collect();
        let dht_slot = Arc::new(std::sync::OnceLock::new());
        // The uTP connector goes to the shards now; its driver starts once
        // the listener fixed the port number (uTP shares it).
        let (utp_connector, utp_input) = if config.utp.enabled() {
            let (connector, input) = crate::net::udp::channel();
            (Some(connector), Some(input))
        } else {
            (None, None)
        };
        let inits = receivers
            .into_iter()
            .zip(&memory)
            .map(|(peers, memory)| ShardInit {
                config: config.clone(),
                hash_pool: hash_pool.clone(),
                trackers: trackers.clone(),
                peers,
                rate_limits: rate_limits.clone(),
                memory: memory.clone(),
                dht: dht_slot.clone(),
                utp: utp_connector.clone(),
            })
            .collect();
        let shards = ShardSet::start(inits, config.pin_shards)?;
        let senders: Vec<_> = (0..shards.len()).map(|i| shards.sender(i)).collect();
        let udp_senders = senders.clone();
        let torrent_keys = Arc::new(TorrentKeys::default());
        let listener = Listener::start(
            ListenConfig {
                ips: options.listen_ips.clone(),
                port: config.listen_port,
                max_pending_handshakes: config.max_pending_handshakes,
                max_pending_handshakes_per_ip: config.max_pending_handshakes_per_ip,
                handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
                encryption: config.encryption,
                torrents: torrent_keys.clone(),
            },
            Box::new(move |peer| {
                let shard = peer.handshake.info_hash.shard(senders.len());
                senders[shard].try_send(ShardCommand::Incoming(peer)).is_ok()
            }),
        )?;
        let udp = match utp_input {
            Some(input) => {
                start_udp(&config, &options, listener.port(), input, udp_senders, &torrent_keys)
            }
            None => None,
        };
        let dht = match options.dht.clone() {
            Some(mut dht_options) => {
                dht_options.port = listener.port();
                dht_options.bind_ips = options.listen_ips.clone();
                // Peers still come from trackers and --peer without it.
                // On the UDP driver's socket when uTP is on (one port).
                let shared = udp.as_ref().and_then(|udp| match udp.attach_dht() {
                    Ok(shared) => Some(shared),
                    Err(error) => {
                        tracing::warn!(%error, "DHT: cannot share the UDP port");
                        None
                    }
                });
                match DhtHandle::start_on(dht_options, sinks, listener.port(), shared) {
                    Ok(dht) => {
                        let _ = dht_slot.set(dht.clone());
                        Some(dht)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "DHT not started");
                        None
                    }
                }
            }
            None => None,
        };
        Ok(Session {
            config,
            shards,
            listener,
            udp,
            trackers,
            dht,
            peer_id,
            torrents: Mutex::new(HashMap::new()),
            fetch_counters: Mutex::new(HashMap::new()),
            torrent_keys,
            rate_limits,
            memory,
            fd_budget,
            _hash_pool: hash_pool,
        })
    }

    /// How `RLIMIT_NOFILE` was shared out at start (peers, connects, data
    /// files); the config's caps were lowered to it.
    pub fn fd_budget(&self) -> FdBudget {
        self.fd_budget
    }

    /// Each shard's byte budgets: piece buffers and outgoing bytes, their
    /// limits and what is in use now.
    pub fn shard_memory(&self) -> &[ShardMemory] {
        &self.memory
    }

    /// The TCP port peers reach us on.
    pub fn listen_port(&self) -> u16 {
        self.listener.port()
    }

    /// Shard threads running.
    /// The I/O driver the shards run, and why it was chosen.
    pub fn io_driver(&self) -> &crate::shard::driver::DriverSelection {
        self.shards.driver()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard a torrent lives on.
    pub fn shard_of(&self, info_hash: &InfoHash) -> usize {
        self.shards.shard_of(info_hash)
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn trackers(&self) -> Option<&TrackerHandle> {
        self.trackers.as_ref()
    }

    /// The DHT, when on.
    pub fn dht(&self) -> Option<&DhtHandle> {
        self.dht.as_ref()
    }

    /// Starts a torrent on its shard and, when trackers are on, announces it.
    pub fn add(&self, add: AddTorrent) -> Result<Arc<TorrentStatus>, SessionError> {
        let info_hash = add.metainfo.info_hash;
        if self.torrents.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&info_hash) {
            return Err(SessionError::Duplicate(info_hash));
        }
        let info = &add.metainfo.info;
        let left: u64 = (0..info.piece_count())
            .filter(|&p| add.wanted.get(p) && !add.have.get(p))
            .map(|p| info.piece_size(p) as u64)
            .sum();
        let mut status = TorrentStatus::new(info_hash, &add.have, left);
        let fetched =
            self.fetch_counters.lock().unwrap_or_else(|e| e.into_inner()).remove(&info_hash);
        if let (Some(counters), Some(fresh)) = (fetched, Arc::get_mut(&mut status)) {
            // The trackers announced this torrent during its metadata fetch
            // and keep reading these counters.
            counters.left.store(left, std::sync::atomic::Ordering::Relaxed);
            fresh.counters = counters;
        }
        let ms = Duration::from_millis;
        let config = &self.config;
        let torrent_config = TorrentConfig {
            peer: PeerConfig {
                keepalive_interval: ms(config.keepalive_interval_ms),
                idle_timeout: ms(config.peer_idle_timeout_ms),
                handshake_timeout: ms(config.handshake_timeout_ms),
                request_timeout: ms(config.request_timeout_ms),
                ..PeerConfig::default()
            },
            max_connections: config.max_peers_per_torrent,
            upload_slots: config.upload_slots,
            seed: rand::random(),
            ban_duration: ms(config.ban_duration_ms),
            choke_interval_ms: config.choke_interval_ms,
            optimistic_unchoke_interval_ms: config.optimistic_unchoke_interval_ms,
            // BEP 5 `PORT`: our DHT node's port, for public torrents.
            dht_port: self
                .dht
                .as_ref()
                .filter(|_| !add.metainfo.info.private)
                .and_then(|d| d.local_addrs().first())
                .map(|a| a.port()),
            ..TorrentConfig::default()
        };
        let tiers = add.metainfo.tracker_tiers();
        // BEP 27: a private torrent's peers come from its trackers only.
        let use_dht = !add.metainfo.info.private;
        let spec = TorrentSpec {
            torrent: add,
            peer_id: self.peer_id,
            listen_port: self.listen_port(),
            torrent_config,
            status: status.clone(),
        };
        self.start_on_shard(info_hash, |reply| ShardCommand::AddTorrent(Box::new(spec), reply))?;
        if let Some(trackers) = &self.trackers {
            if !tiers.is_empty() {
                self.announce(trackers, info_hash, tiers, &status.counters)?;
            }
        }
        match (&self.dht, use_dht) {
            (Some(dht), true) => {
                if let Err(error) = dht.add_torrent(info_hash, self.listen_port()) {
                    tracing::warn!(%info_hash, %error, "not announced on the DHT");
                }
            }
            // Private, possibly after a magnet fetch that looked it up.
            (Some(dht), false) => {
                let _ = dht.remove_torrent(info_hash);
            }
            (None, _) => {}
        }
        self.torrents.lock().unwrap_or_else(|e| e.into_inner()).insert(info_hash, status.clone());
        self.torrent_keys.insert(info_hash);
        Ok(status)
    }

    /// Starts fetching a magnet link's metadata (BEP 9) on the shard that
    /// will own the torrent, and announces it to `trackers` at once (peers
    /// they return are routed to the fetch). Poll the returned status; once
    /// it has the metadata, build the torrent and [`Session::add`] it with
    /// [`FetchStatus::sources`] among its peers. `left` is what trackers hear
    /// meanwhile (the magnet's `xl`, when it has one).
    pub fn fetch_metadata(
        &self,
        info_hash: InfoHash,
        trackers: Vec<Vec<String>>,
        peers: Vec<std::net::SocketAddr>,
        left: u64,
    ) -> Result<Arc<FetchStatus>, SessionError> {
        if self.torrents.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&info_hash) {
            return Err(SessionError::Duplicate(info_hash));
        }
        let status = FetchStatus::new(info_hash, left);
        let spec = FetchSpec {
            info_hash,
            peer_id: self.peer_id,
            listen_port: self.listen_port(),
            peers,
            status: status.clone(),
        };
        self.start_on_shard(info_hash, |reply| ShardCommand::FetchMetadata(Box::new(spec), reply))?;
        if let Some(handle) = &self.trackers {
            if !trackers.is_empty() {
                self.announce(handle, info_hash, trackers, &status.counters)?;
                self.fetch_counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(info_hash, status.counters.clone());
            }
        }
        // A magnet link does not say whether its torrent is private: it is
        // looked up on the DHT until the metadata says otherwise (then
        // [`Session::add`] takes it off, BEP 27), as libtorrent does.
        if let Some(dht) = &self.dht {
            if let Err(error) = dht.add_torrent(info_hash, self.listen_port()) {
                tracing::warn!(%info_hash, %error, "metadata fetch not looked up on the DHT");
            }
        }
        Ok(status)
    }

    /// Stops a metadata fetch (its trackers hear `stopped`).
    pub fn cancel_fetch(&self, info_hash: InfoHash) {
        let counters =
            self.fetch_counters.lock().unwrap_or_else(|e| e.into_inner()).remove(&info_hash);
        if let (Some(trackers), Some(_)) = (&self.trackers, counters) {
            let _ = trackers.remove(info_hash);
        }
        if let Some(dht) = &self.dht {
            let _ = dht.remove_torrent(info_hash);
        }
        let (reply, done) = oneshot::channel();
        let shard = self.shards.shard_of(&info_hash);
        if self.shards.send_blocking(shard, ShardCommand::RemoveTorrent(info_hash, reply)).is_ok() {
            let _ = done.blocking_recv();
        }
    }

    /// Sends the command that starts a torrent (or a metadata fetch) to the
    /// shard that owns `info_hash` and waits for its answer.
    fn start_on_shard(
        &self,
        info_hash: InfoHash,
        command: impl FnOnce(oneshot::Sender<Result<(), String>>) -> ShardCommand,
    ) -> Result<(), SessionError> {
        let (reply, answer) = oneshot::channel();
        let shard = self.shards.shard_of(&info_hash);
        self.shards.send_blocking(shard, command(reply))?;
        match answer.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(SessionError::Torrent { info_hash, reason }),
            Err(_) => Err(ShardError::Stopped { index: shard }.into()),
        }
    }

    /// Hands a torrent to the trackers, waiting while their queue is full (a
    /// daemon adding thousands of torrents at start outruns the tracker
    /// thread), at most [`TRACKER_BUSY_WAIT`].
    fn announce(
        &self,
        trackers: &TrackerHandle,
        info_hash: InfoHash,
        tiers: Vec<Vec<String>>,
        counters: &Arc<TorrentCounters>,
    ) -> Result<(), SessionError> {
        let deadline = std::time::Instant::now() + TRACKER_BUSY_WAIT;
        loop {
            let result = trackers.add_torrent(
                info_hash,
                tiers.clone(),
                self.listen_port(),
                counters.clone(),
            );
            match result {
                Err(TrackersError::Busy) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => return Ok(other?),
            }
        }
    }

    /// Flushes a torrent's storage and returns the pieces verified before
    /// the flush, all durable now: what resume state may claim while the
    /// torrent keeps running. `None` when the torrent is not running.
    pub fn checkpoint(&self, info_hash: InfoHash) -> Option<Result<Bitfield, SessionError>> {
        let (reply, answer) = oneshot::channel();
        let shard = self.shards.shard_of(&info_hash);
        if let Err(e) = self.shards.send_blocking(shard, ShardCommand::Checkpoint(info_hash, reply))
        {
            return Some(Err(e.into()));
        }
        match answer.blocking_recv() {
            Ok(None) => None,
            Ok(Some(Ok(have))) => Some(Ok(have)),
            Ok(Some(Err(reason))) => Some(Err(SessionError::Torrent { info_hash, reason })),
            Err(_) => Some(Err(ShardError::Stopped { index: shard }.into())),
        }
    }

    /// Stops a torrent: trackers hear `stopped`, connections close, storage
    /// is flushed. Returns its final status.
    pub fn remove(&self, info_hash: InfoHash) -> Option<Arc<TorrentStatus>> {
        let status = self.torrents.lock().unwrap_or_else(|e| e.into_inner()).remove(&info_hash)?;
        self.torrent_keys.remove(&info_hash);
        if let Some(trackers) = &self.trackers {
            let _ = trackers.remove(info_hash);
        }
        if let Some(dht) = &self.dht {
            let _ = dht.remove_torrent(info_hash);
        }
        let (reply, done) = oneshot::channel();
        let shard = self.shards.shard_of(&info_hash);
        if self.shards.send_blocking(shard, ShardCommand::RemoveTorrent(info_hash, reply)).is_ok() {
            let _ = done.blocking_recv();
        }
        Some(status)
    }

    /// Changes the process-wide limits (bytes per second of block data, 0 =
    /// unlimited); every shard sees the change at its next block.
    pub fn set_rate_limits(&self, upload_bytes_per_s: u64, download_bytes_per_s: u64) {
        self.rate_limits.set(upload_bytes_per_s, download_bytes_per_s);
    }

    /// The process-wide limits (upload, download), bytes per second.
    pub fn rate_limits(&self) -> (u64, u64) {
        (self.rate_limits.upload.rate_bytes_per_s(), self.rate_limits.download.rate_bytes_per_s())
    }

    /// Changes one torrent's own limits (bytes per second, 0 = unlimited); the
    /// process-wide limits still apply on top.
    pub fn set_torrent_rate_limits(
        &self,
        info_hash: InfoHash,
        upload_bytes_per_s: u64,
        download_bytes_per_s: u64,
    ) -> Result<(), SessionError> {
        let (reply, answer) = oneshot::channel();
        let shard = self.shards.shard_of(&info_hash);
        let command = ShardCommand::SetRateLimits {
            info_hash,
            upload_bytes_per_s,
            download_bytes_per_s,
            reply,
        };
        self.shards.send_blocking(shard, command)?;
        match answer.blocking_recv() {
            Ok(true) => Ok(()),
            Ok(false) => Err(SessionError::NotFound(info_hash)),
            Err(_) => Err(ShardError::Stopped { index: shard }.into()),
        }
    }

    /// Status of every torrent.
    pub fn torrents(&self) -> Vec<Arc<TorrentStatus>> {
        self.torrents.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Stops everything in order (see the module docs).
    pub fn shutdown(mut self) {
        if let Some(trackers) = self.trackers.take() {
            let _ = trackers.shutdown();
        }
        if let Some(dht) = self.dht.take() {
            dht.shutdown();
        }
        self.listener.shutdown();
        self.shards.shutdown();
        if let Some(mut udp) = self.udp.take() {
            udp.shutdown();
        }
    }

    /// The UDP port's driver (uTP), when on.
    pub fn udp(&self) -> Option<&UdpPort> {
        self.udp.as_ref()
    }
}

/// Binds the peer port's UDP socket (the first IPv4 listen address, else
/// the first one) and starts the uTP driver on it; without it the engine
/// runs on TCP alone (uTP connects then fail at once).
fn start_udp(
    config: &Config,
    options: &SessionOptions,
    port: u16,
    input: crate::net::udp::DriverInput,
    senders: Vec<tokio::sync::mpsc::Sender<ShardCommand>>,
    torrent_keys: &Arc<TorrentKeys>,
) -> Option<UdpPort> {
    let ip = options
        .listen_ips
        .iter()
        .copied()
        .find(IpAddr::is_ipv4)
        .or_else(|| options.listen_ips.first().copied())?;
    let addr = std::net::SocketAddr::new(ip, port);
    let udp_options = UdpOptions {
        utp: crate::utp::UtpConfig::default(),
        max_pending_handshakes: config.max_pending_handshakes,
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        encryption: config.encryption,
        torrents: torrent_keys.clone(),
    };
    let route: crate::net::listener::Route = Box::new(move |peer| {
        let shard = peer.handshake.info_hash.shard(senders.len());
        senders[shard].try_send(ShardCommand::Incoming(peer)).is_ok()
    });
    let started = crate::net::udp::bind(addr)
        .and_then(|socket| UdpPort::start(socket, input, udp_options, route));
    match started {
        Ok(udp) => Some(udp),
        Err(error) => {
            tracing::warn!(%error, "uTP not started");
            None
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft
/// limit the process now runs with: every peer is a socket, and the files
/// of active torrents are open (pwrite and io_uring: those used in the last
/// `file_idle_close_secs`; mmap: all of them). Every command starts its
/// engine here, so this is the one place the limit is read.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            tracing::warn!("cannot read the open-file limit; assuming 1024");
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                limit.rlim_cur = limit.rlim_max;
            } else {
                tracing::warn!("cannot raise the open-file limit above {}", limit.rlim_cur);
            }
        }
    }
    // RLIM_INFINITY is u64::MAX: the shares are capped by the config anyway.
    limit.rlim_cur
}
