//! The torrent driver that runs on a shard: carries out what a
//! [`TorrentCore`] asks for with io_uring sockets and storage, the hash pool
//! and the clock.
//!
//! Layer: driver (single-threaded: everything here lives on one shard's
//! tokio-uring runtime, shared through `Rc`/`RefCell`). The core is never
//! borrowed across an `.await`.
//!
//! Tasks per torrent: one ticker (timers, dialing, status, closing storage
//! files left idle: [`PieceStore::close_idle_files`]), and per
//! connection one reader and one writer. Work the core asks for (hash, write,
//! read) runs in short tasks that feed the result back to the core.
//!
//! Connection identity: the core reuses a [`ConnId`] once a connection is
//! gone, so the driver tags each connection with a token and every task checks
//! the token before touching the core: a late reader can never act on a newer
//! connection that got the same id.
//!
//! Rate limits: every core shares the process-wide buckets in
//! [`ShardContext::rate_limits`] (lock-free, see [`crate::rate_limit`]) and
//! has its own. When a core holds work back for lack of tokens it names a
//! wake-up time ([`TorrentCore::rate_limit_wakeup`]); after every call into
//! the core the driver arms the ticker's timer for it, and the ticker runs
//! [`TorrentCore::rate_limit_tick`] when it fires. Nothing polls.
//!
//! Encryption (MSE/PE, [`crate::mse`]): an outgoing connect runs the MSE
//! initiator first when the policy says so (`prefer` retries in plaintext on
//! a fresh connection when it fails); incoming MSE was answered by the
//! listener. Each connection's reader then decrypts in place the bytes it
//! just read, and its writer encrypts its buffer in place before the write:
//! one call each, nothing copied; plaintext connections pass through.
//!
//! Invariants:
//! * a connection is in `conns` exactly while the core knows it;
//! * outgoing connects in flight stay within [`MAX_HALF_OPEN_PER_TORRENT`]
//!   per torrent, [`Config::max_half_open_per_shard`] per shard and
//!   [`Config::max_half_open_total`] per process; each holds a
//!   [`HalfOpenPermit`] until its connect ends, and a connect that times out
//!   closes its socket at once (see [`peer_io::connect`]);
//! * whom to dial is decided by the torrent's [`PeerBook`] (bounded, with
//!   eviction and redial backoff); every dial and every close of a
//!   connection we dialled is reported to it;
//! * a storage error stops the torrent (its connections close, the error is
//!   reported in [`TorrentStatus`]); pieces already verified stay on disk;
//! * every flush goes through [`TorrentTask::flush_durable`], which records
//!   its outcome in [`TorrentStatus::durability`]: resume state claims only
//!   what a successful flush covered, and a failed flush stops the torrent
//!   (its unflushed pieces may be lost, and serving them would send peers
//!   bad data).

use super::bufpool::BufPool;
use super::driver::IoDriver;
use crate::bitfield::Bitfield;
use crate::config::Config;
use crate::hash::{HashPool, SubmitError};
use crate::metainfo::{InfoHash, Metainfo};
use crate::mse::{Cipher, EncryptionPolicy};
use crate::net::mse_io::{self, PeerCipher};
use crate::net::peer_io::{self, PeerStream};
use crate::net::trackers::{TorrentCounters, TorrentEvent, TrackerHandle};
use crate::net::webseed_http::{self, Tokens};
use crate::peer_book::{PeerBook, PeerBookConfig};
use crate::rate_limit::ProcessRateLimits;
use crate::resume::Durability;
use crate::storage::{PieceStore, StoreOptions};
use crate::torrent::{Action, ConnId, TorrentConfig, TorrentCore, TorrentParams};
use crate::webseed::PieceFetch;
use crate::wire::{Handshake, PeerId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Outgoing connects in flight per torrent at most (the shard's and the
/// process's bounds, [`Config::max_half_open_per_shard`] and
/// [`Config::max_half_open_total`], apply on top), so one torrent with many
/// unreachable peers leaves room for the others.
pub const MAX_HALF_OPEN_PER_TORRENT: usize = 16;

/// How often the ticker runs the core's timers and dials.
pub const TICK_INTERVAL: Duration = Duration::from_millis(1000);

/// Wait before offering a piece again to a full hash pool.
pub const HASH_RETRY: Duration = Duration::from_millis(2);

/// Capacity of each connection's write buffer from the shard's pool.
pub const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// A torrent's state as the rest of the process sees it (shared, read
/// without locks except `error` and `have`).
#[derive(Debug)]
pub struct TorrentStatus {
    pub info_hash: InfoHash,
    pub counters: Arc<TorrentCounters>,
    pub piece_count: u32,
    pub have_pieces: AtomicU32,
    pub peers: AtomicUsize,
    pub download_rate: AtomicU64,
    pub upload_rate: AtomicU64,
    pub completed: AtomicBool,
    /// The torrent task ended (removed, shut down, or failed).
    pub stopped: AtomicBool,
    pub error: Mutex<Option<String>>,
    /// Verified pieces, refreshed by the ticker when they change.
    pub have: Mutex<Bitfield>,
    /// What flushes made durable (what resume state may claim) and which
    /// pieces a failed flush made suspect; updated at each flush only.
    pub durability: Mutex<Durability>,
    /// The torrent's web seeds (BEP 19), refreshed by the ticker.
    pub web_seeds: Mutex<Vec<crate::webseed::WebSeedStatus>>,
}

impl TorrentStatus {
    pub fn new(info_hash: InfoHash, have: &Bitfield, left: u64) -> Arc<TorrentStatus> {
        Arc::new(TorrentStatus {
            info_hash,
            counters: TorrentCounters::new(left),
            piece_count: have.len(),
            have_pieces: AtomicU32::new(have.count()),
            peers: AtomicUsize::new(0),
            download_rate: AtomicU64::new(0),
            upload_rate: AtomicU64::new(0),
            completed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            error: Mutex::new(None),
            have: Mutex::new(have.clone()),
            durability: Mutex::new(Durability::new(have)),
            web_seeds: Mutex::new(Vec::new()),
        })
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A copy of the durability record (what resume state may claim).
    pub fn durability(&self) -> Durability {
        self.durability.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The status error of a torrent whose flush failed.
fn flush_failed_message(error: &str) -> String {
    format!(
        "flush failed, torrent stopped: {error}; pieces written since the last successful flush \
         are not claimed by resume state and will be rechecked"
    )
}

/// A torrent to run: what the caller decides.
pub struct AddTorrent {
    pub metainfo: Arc<Metainfo>,
    pub download_dir: PathBuf,
    /// Pieces already verified on disk.
    pub have: Bitfield,
    /// Pieces to download (all for a whole torrent; see `picker::wanted_pieces`).
    pub wanted: Bitfield,
    pub store_options: StoreOptions,
    /// Peers to dial besides the trackers' (`--peer`).
    pub peers: Vec<SocketAddr>,
}

/// Everything a shard needs to run a torrent (sent to the shard): the
/// caller's [`AddTorrent`] plus what the session decides.
pub struct TorrentSpec {
    pub torrent: AddTorrent,
    pub peer_id: PeerId,
    pub listen_port: u16,
    pub torrent_config: TorrentConfig,
    pub status: Arc<TorrentStatus>,
}

/// What every torrent of one shard shares.
pub struct ShardContext {
    pub index: usize,
    pub config: Arc<Config>,
    pub hash_pool: Arc<HashPool>,
    pub trackers: Option<TrackerHandle>,
    pub torrents: RefCell<HashMap<InfoHash, Rc<TorrentTask>>>,
    /// Torrents whose storage is being opened, and whether a remove came
    /// meanwhile (it then stops once open).
    pub opening: RefCell<HashMap<InfoHash, bool>>,
    /// Connections open on this shard.
    pub connections: Cell<usize>,
    /// This shard's share of `max_peers_total`.
    pub max_connections: usize,
    pub write_buffers: BufPool,
    pub block_buffers: BufPool,
    /// The process-wide rate limits, shared by every shard.
    pub rate_limits: Arc<ProcessRateLimits>,
    /// Outgoing connects in flight on this shard.
    pub half_open: Cell<usize>,
    /// Outgoing connects in flight in the whole process (shared by every
    /// shard).
    pub process_half_open: Arc<AtomicUsize>,
    /// The I/O driver this shard runs.
    pub driver: IoDriver,
}

/// One outgoing connect's place in the shard's and the process's half-open
/// bounds, given back when dropped (the connect ended either way).
pub struct HalfOpenPermit {
    ctx: Rc<ShardContext>,
}

impl HalfOpenPermit {
    /// A place for one more connect, or `None` when the shard or the process
    /// is at its bound.
    pub fn try_acquire(ctx: &Rc<ShardContext>) -> Option<HalfOpenPermit> {
        if ctx.half_open.get() >= ctx.config.max_half_open_per_shard {
            return None;
        }
        let max_total = ctx.config.max_half_open_total;
        ctx.process_half_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max_total).then_some(n + 1))
            .ok()?;
        ctx.half_open.set(ctx.half_open.get() + 1);
        Some(HalfOpenPermit { ctx: ctx.clone() })
    }
}

impl Drop for HalfOpenPermit {
    fn drop(&mut self) {
        self.ctx.half_open.set(self.ctx.half_open.get().saturating_sub(1));
        self.ctx.process_half_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a shard's context is built from: the process-wide parts every
/// shard shares.
pub struct ShardShared {
    pub config: Arc<Config>,
    pub hash_pool: Arc<HashPool>,
    pub trackers: Option<TrackerHandle>,
    pub rate_limits: Arc<ProcessRateLimits>,
    /// Outgoing connects in flight in the whole process.
    pub process_half_open: Arc<AtomicUsize>,
    pub driver: IoDriver,
}

impl ShardContext {
    pub fn new(index: usize, shard_count: usize, shared: ShardShared) -> Rc<ShardContext> {
        let ShardShared { config, hash_pool, trackers, rate_limits, process_half_open, driver } =
            shared;
        let max_connections = config.max_peers_total.div_ceil(shard_count.max(1));
        Rc::new(ShardContext {
            index,
            config,
            hash_pool,
            trackers,
            torrents: RefCell::new(HashMap::new()),
            opening: RefCell::new(HashMap::new()),
            connections: Cell::new(0),
            max_connections,
            write_buffers: BufPool::new(WRITE_BUFFER_BYTES, 64),
            block_buffers: BufPool::new(crate::wire::BLOCK_LEN as usize, 256),
            rate_limits,
            half_open: Cell::new(0),
            process_half_open,
            driver,
        })
    }
}

struct ConnEntry {
    token: u64,
    /// We dialled it (so its address is a listening one we may dial again).
    outgoing: bool,
    addr: SocketAddr,
    stream: Rc<PeerStream>,
    wake: Rc<Notify>,
}

/// One torrent on this shard.
pub struct TorrentTask {
    ctx: Rc<ShardContext>,
    info_hash: InfoHash,
    core: RefCell<TorrentCore>,
    store: PieceStore,
    status: Arc<TorrentStatus>,
    conns: RefCell<HashMap<ConnId, ConnEntry>>,
    next_token: Cell<u64>,
    /// Peers we may dial (see [`PeerBook`]).
    book: RefCell<PeerBook>,
    /// This torrent's connects in flight.
    half_open: Cell<usize>,
    stop: Notify,
    stopped: Cell<bool>,
    have_published: Cell<u32>,
    /// When the ticker's rate-limit timer is armed for (`None`: not armed).
    rate_wake_at: Cell<Option<Instant>>,
    /// Tells the ticker to re-arm its timer for an earlier `rate_wake_at`.
    rate_rearm: Notify,
}

impl TorrentTask {
    /// Opens storage on this shard (on the ring, or the blocking pool for the
    /// sync backends: the shard thread never waits on the disk, and other
    /// torrents run meanwhile), builds the core and starts the ticker.
    pub async fn start(
        ctx: Rc<ShardContext>,
        spec: TorrentSpec,
    ) -> Result<Rc<TorrentTask>, String> {
        let TorrentSpec { torrent, peer_id, listen_port, torrent_config, status } = spec;
        let (metainfo, dir, options) =
            (&torrent.metainfo, &torrent.download_dir, torrent.store_options);
        let store = match ctx.driver {
            IoDriver::Uring => PieceStore::open_async(metainfo, dir, options).await,
            // No ring: file I/O on the runtime's bounded blocking pool.
            IoDriver::Epoll => PieceStore::open_on_pool(metainfo, dir, options).await,
        }
        .map_err(|e| e.to_string())?;
        let info = &torrent.metainfo.info;
        let params = TorrentParams {
            info_hash: torrent.metainfo.info_hash,
            piece_length: info.piece_length,
            total_length: info.total_length,
            piece_hashes: info.pieces.clone(),
            our_peer_id: peer_id,
            listen_port: Some(listen_port),
            metadata_size: Some(torrent.metainfo.info_bytes.len() as u64),
        };
        let mut core = TorrentCore::new(params, torrent_config, torrent.have, &torrent.wanted)
            .map_err(|e| e.to_string())?;
        // Complete from the start (a seed): trackers must not hear
        // `completed` for a download that did not happen now.
        if core.left_bytes() == 0 {
            status.completed.store(true, Ordering::Release);
        }
        core.set_process_limits(ctx.rate_limits.clone());
        core.serve_metadata(torrent.metainfo.clone());
        for (url, error) in core.add_web_seeds(torrent.metainfo.clone()) {
            tracing::warn!(info_hash = %torrent.metainfo.info_hash, %url, %error, "web seed not used");
        }
        let book = PeerBook::new(PeerBookConfig {
            max_entries: ctx.config.max_known_peers_per_torrent,
            ..PeerBookConfig::default()
        });
        let task = Rc::new(TorrentTask {
            ctx,
            info_hash: torrent.metainfo.info_hash,
            core: RefCell::new(core),
            store,
            status,
            conns: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            book: RefCell::new(book),
            half_open: Cell::new(0),
            stop: Notify::new(),
            stopped: Cell::new(false),
            have_published: Cell::new(u32::MAX),
            rate_wake_at: Cell::new(None),
            rate_rearm: Notify::new(),
        });
        task.add_peers(&torrent.peers);
        task.drain_actions();
        let ticker = task.clone();
        super::driver::spawn(async move { ticker.run_ticker().await });
        Ok(task)
    }

    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// Changes this torrent's rate limits (bytes per second, 0 = unlimited).
    pub fn set_rate_limits(self: &Rc<Self>, upload_bytes_per_s: u64, download_bytes_per_s: u64) {
        self.core.borrow_mut().set_rate_limits(
            Instant::now(),
            upload_bytes_per_s,
            download_bytes_per_s,
        );
        self.drain_actions();
    }

    /// Remembers peers to dial (duplicates are ignored; a full book evicts
    /// failed and old entries, see [`PeerBook`]).
    pub fn add_peers(&self, peers: &[SocketAddr]) {
        let now = Instant::now();
        let mut book = self.book.borrow_mut();
        for &addr in peers {
            book.add(addr, now);
        }
    }

    /// Stops the torrent: closes every connection, flushes storage, and
    /// publishes the final state.
    pub async fn stop(self: &Rc<Self>, error: Option<String>) {
        if self.stopped.replace(true) {
            return;
        }
        if let Some(error) = error {
            tracing::error!(info_hash = %self.info_hash, %error, "torrent stopped");
            *self.status.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        }
        let conns: Vec<ConnId> = self.conns.borrow().keys().copied().collect();
        for conn in conns {
            self.close(conn);
        }
        if let Err(error) = self.flush_durable().await {
            tracing::error!(info_hash = %self.info_hash, %error, "flush at stop failed");
            let mut slot = self.status.error.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(flush_failed_message(&error));
            }
        }
        // The ticker stops sweeping idle files now: release the flushed ones
        // (a torrent stopped by an error may stay listed for a long time).
        self.store.close_clean_files();
        self.publish_status();
        self.stop.notify_waiters();
        self.status.stopped.store(true, Ordering::Release);
    }

    /// Flushes storage and returns the durable pieces (see
    /// [`TorrentTask::flush_durable`]), which resume state may claim. A
    /// failed flush stops the torrent with the error in its status.
    pub async fn checkpoint(self: &Rc<Self>) -> Result<Bitfield, String> {
        match self.flush_durable().await {
            Ok(durable) => Ok(durable),
            Err(error) => {
                let message = flush_failed_message(&error);
                self.stop(Some(message.clone())).await;
                Err(message)
            }
        }
    }

    /// Flushes storage and records the outcome in the status's
    /// [`Durability`]: on success the pieces verified before the flush
    /// (less any a failed flush made suspect) are durable; on failure those
    /// not yet durable become suspect. Returns the durable pieces.
    async fn flush_durable(&self) -> Result<Bitfield, String> {
        let have = self.core.borrow().have().clone();
        let result = self.store.flush().await;
        let mut durability = self.status.durability.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                durability.flushed(&have);
                Ok(durability.durable().clone())
            }
            Err(error) => {
                durability.flush_failed(&have);
                Err(error.to_string())
            }
        }
    }

    fn publish_status(&self) {
        let core = self.core.borrow();
        let have = core.have();
        if self.have_published.get() != have.count() {
            self.have_published.set(have.count());
            self.status.have_pieces.store(have.count(), Ordering::Relaxed);
            *self.status.have.lock().unwrap_or_else(|e| e.into_inner()) = have.clone();
        }
        let stats = core.stats();
        let (down, up) = core.rates();
        let counters = &self.status.counters;
        counters.downloaded.store(stats.downloaded_bytes, Ordering::Relaxed);
        counters.uploaded.store(stats.uploaded_bytes, Ordering::Relaxed);
        counters.left.store(core.left_bytes(), Ordering::Relaxed);
        self.status.peers.store(core.connection_count(), Ordering::Relaxed);
        self.status.download_rate.store(down, Ordering::Relaxed);
        self.status.upload_rate.store(up, Ordering::Relaxed);
        let web_seeds = core.web_seed_status(Instant::now());
        if !web_seeds.is_empty() {
            *self.status.web_seeds.lock().unwrap_or_else(|e| e.into_inner()) = web_seeds;
        }
    }

    async fn run_ticker(self: Rc<Self>) {
        let mut interval = tokio::time::interval(TICK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let rate_wake_at = self.rate_wake_at.get();
            let rate_due = async move {
                match rate_wake_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = interval.tick() => {}
                _ = rate_due => {
                    // Work held back by a rate limit may go on now.
                    self.rate_wake_at.set(None);
                    if self.stopped.get() {
                        break;
                    }
                    self.core.borrow_mut().rate_limit_tick(Instant::now());
                    self.drain_actions();
                    continue;
                }
                // An earlier wake-up was asked for: re-arm.
                _ = self.rate_rearm.notified() => continue,
                _ = self.stop.notified() => break,
            }
            if self.stopped.get() {
                break;
            }
            self.core.borrow_mut().tick(Instant::now());
            self.drain_actions();
            self.dial();
            self.publish_status();
            // Fds follow activity: files unused for the store's idle time
            // are closed (one check when none is open; see the storage docs).
            self.store.close_idle_files(Instant::now());
        }
    }

    fn dial(self: &Rc<Self>) {
        let timeout = Duration::from_millis(self.ctx.config.connect_timeout_ms);
        let max_connections = self.core.borrow().max_connections();
        let now = Instant::now();
        while self.half_open.get() < MAX_HALF_OPEN_PER_TORRENT
            && self.core.borrow().connection_count() + self.half_open.get() < max_connections
            && self.ctx.connections.get() + self.ctx.half_open.get() < self.ctx.max_connections
        {
            let Some(permit) = HalfOpenPermit::try_acquire(&self.ctx) else { break };
            let Some(addr) = self.book.borrow_mut().next_due(now) else { break };
            if !self.core.borrow().wants_connection(addr) {
                // Banned, or already connected (it dialled us).
                self.book.borrow_mut().dial_failed(addr, now);
                continue;
            }
            self.half_open.set(self.half_open.get() + 1);
            let task = self.clone();
            super::driver::spawn(async move {
                let result = task.open(addr, timeout).await;
                drop(permit);
                task.half_open.set(task.half_open.get() - 1);
                let now = Instant::now();
                match result {
                    Ok((stream, cipher, leftover)) if !task.stopped.get() => {
                        let conn = task.core.borrow_mut().connected(addr, now);
                        match conn {
                            Ok(conn) => {
                                task.book.borrow_mut().connected(addr);
                                task.run_connection(conn, stream, addr, true, cipher, leftover);
                            }
                            Err(error) => {
                                tracing::debug!(%addr, %error, "not connecting");
                                task.book.borrow_mut().dial_failed(addr, now);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%addr, %error, "connect failed");
                        // Dialled again after a backoff (it may not be
                        // listening yet), forgotten after several failures.
                        task.book.borrow_mut().dial_failed(addr, now);
                    }
                }
                // The place is free: dial the next due peer now rather than
                // at the next tick (the book's backoff bounds the pace).
                if !task.stopped.get() {
                    task.dial();
                }
            });
        }
    }

    /// A connection we dialled to `addr` closed: the book schedules the
    /// redial (or forgets a banned peer).
    fn dialled_closed(&self, addr: SocketAddr, handshake_done: bool) {
        let now = Instant::now();
        let mut book = self.book.borrow_mut();
        if self.core.borrow().is_banned(addr.ip()) {
            book.remove(addr);
        } else {
            book.disconnected(addr, handshake_done, now);
        }
    }

    /// Connects to `addr` and runs the MSE initiator as the encryption
    /// policy says; under `prefer` a failed MSE attempt is retried in
    /// plaintext on a fresh connection (a plaintext-only peer hangs up on
    /// the DH key). Returns the stream, its ciphers and plaintext payload
    /// that came with the MSE reply.
    async fn open(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<(PeerStream, PeerCipher, Vec<u8>)> {
        let stream = peer_io::connect(self.ctx.driver, addr, timeout).await?;
        let policy = self.ctx.config.encryption;
        if !policy.uses_mse() {
            return Ok((stream, PeerCipher::plaintext(), Vec::new()));
        }
        let limit = Duration::from_millis(self.ctx.config.handshake_timeout_ms);
        let attempt = mse_io::initiate(&stream, self.info_hash, policy);
        let error = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok((cipher, leftover))) => {
                tracing::debug!(%addr, rc4 = cipher.is_rc4(), "MSE handshake done");
                return Ok((stream, cipher, leftover));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("MSE: no reply within {limit:?}"),
        };
        // The connection is dropped: a read left in flight by the timeout
        // ends with the shutdown.
        peer_io::shutdown(&stream);
        drop(stream);
        if policy != EncryptionPolicy::Prefer {
            return Err(std::io::Error::other(error));
        }
        tracing::debug!(%addr, %error, "MSE failed: retrying in plaintext");
        let stream = peer_io::connect(self.ctx.driver, addr, timeout).await?;
        Ok((stream, PeerCipher::plaintext(), Vec::new()))
    }

    /// A connection the listener accepted for this torrent, with its
    /// ciphers and the (decrypted) payload read after its handshake.
    pub fn accept(
        self: &Rc<Self>,
        stream: std::net::TcpStream,
        addr: SocketAddr,
        hs: Handshake,
        cipher: PeerCipher,
        leftover: Vec<u8>,
    ) {
        if self.stopped.get() || self.ctx.connections.get() >= self.ctx.max_connections {
            return;
        }
        let stream = match peer_io::adopt(self.ctx.driver, stream) {
            Ok(s) => s,
            Err(error) => {
                tracing::debug!(%addr, %error, "adopt");
                return;
            }
        };
        let conn = self.core.borrow_mut().accepted(addr, hs, Instant::now());
        match conn {
            Ok(conn) => self.run_connection(conn, stream, addr, false, cipher, leftover),
            Err(error) => tracing::debug!(%addr, %error, "refused incoming"),
        }
        self.drain_actions();
    }

    fn run_connection(
        self: &Rc<Self>,
        conn: ConnId,
        stream: PeerStream,
        addr: SocketAddr,
        outgoing: bool,
        cipher: PeerCipher,
        leftover: Vec<u8>,
    ) {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let stream = Rc::new(stream);
        let wake = Rc::new(Notify::new());
        self.conns.borrow_mut().insert(
            conn,
            ConnEntry { token, outgoing, addr, stream: stream.clone(), wake: wake.clone() },
        );
        self.ctx.connections.set(self.ctx.connections.get() + 1);
        // The core may already have dropped it (a bad incoming handshake):
        // drain so the Disconnect closes what was just registered.
        self.drain_actions();
        if !self.is_current(conn, token) {
            return;
        }
        wake.notify_one();
        let PeerCipher { encrypt, decrypt } = cipher;
        let reader = self.clone();
        let read_stream = stream.clone();
        super::driver::spawn(async move {
            reader.read_loop(conn, token, read_stream, decrypt, leftover).await
        });
        let writer = self.clone();
        super::driver::spawn(
            async move { writer.write_loop(conn, token, stream, wake, encrypt).await },
        );
    }

    fn is_current(&self, conn: ConnId, token: u64) -> bool {
        self.conns.borrow().get(&conn).is_some_and(|e| e.token == token)
    }

    async fn read_loop(
        self: Rc<Self>,
        conn: ConnId,
        token: u64,
        stream: Rc<PeerStream>,
        mut decrypt: Cipher,
        leftover: Vec<u8>,
    ) {
        let mut buf = Vec::with_capacity(self.ctx.config.read_buffer_bytes.max(leftover.len()));
        if !leftover.is_empty() {
            // Payload that came with an MSE handshake, already decrypted.
            buf.extend_from_slice(&leftover);
            let used = self.core.borrow_mut().on_data(conn, &buf, Instant::now());
            buf.drain(..used);
            self.drain_actions();
        }
        loop {
            if buf.len() == buf.capacity() {
                // A message larger than what is buffered: the core's wire
                // limits bound how large it may get before it is refused.
                buf.reserve(buf.capacity());
            }
            let filled = buf.len();
            let (result, b) = peer_io::read_into_spare(&stream, buf).await;
            buf = b;
            match result {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // MSE: only the bytes just read, in place.
            decrypt.apply(&mut buf[filled..]);
            if !self.is_current(conn, token) {
                return;
            }
            let used = self.core.borrow_mut().on_data(conn, &buf, Instant::now());
            buf.drain(..used);
            self.drain_actions();
        }
        if self.is_current(conn, token) {
            let handshake_done = self.core.borrow_mut().closed(conn);
            if let Some(entry) = self.forget(conn) {
                if entry.outgoing {
                    self.dialled_closed(entry.addr, handshake_done);
                }
            }
            self.drain_actions();
        }
    }

    async fn write_loop(
        self: Rc<Self>,
        conn: ConnId,
        token: u64,
        stream: Rc<PeerStream>,
        wake: Rc<Notify>,
        mut encrypt: Cipher,
    ) {
        let mut spare = self.ctx.write_buffers.take();
        loop {
            if !self.is_current(conn, token) {
                break;
            }
            spare.clear();
            self.core.borrow_mut().take_outgoing(conn, &mut spare);
            if spare.is_empty() {
                wake.notified().await;
                continue;
            }
            // MSE: in place in the outgoing buffer, just before the write.
            encrypt.apply(&mut spare);
            let (result, buf) = peer_io::write_all(&stream, spare).await;
            spare = buf;
            if result.is_err() {
                peer_io::shutdown(&stream);
                break;
            }
            if self.is_current(conn, token) {
                self.core.borrow_mut().writable(conn, Instant::now());
                self.drain_actions();
            }
        }
        self.ctx.write_buffers.give(spare);
    }

    fn forget(&self, conn: ConnId) -> Option<ConnEntry> {
        let entry = self.conns.borrow_mut().remove(&conn)?;
        peer_io::shutdown(&entry.stream);
        entry.wake.notify_one();
        self.ctx.connections.set(self.ctx.connections.get().saturating_sub(1));
        Some(entry)
    }

    fn close(&self, conn: ConnId) {
        self.core.borrow_mut().closed(conn);
        self.forget(conn);
    }

    /// Carries out everything the core asked for, then wakes the writers of
    /// connections with bytes to send.
    fn drain_actions(self: &Rc<Self>) {
        loop {
            let action = self.core.borrow_mut().poll_action();
            let Some(action) = action else { break };
            match action {
                Action::HashPiece { piece, data, expected } => self.hash(piece, data, expected),
                Action::WritePiece { piece, data } => {
                    let task = self.clone();
                    super::driver::spawn(async move { task.write_piece(piece, data).await });
                }
                Action::ReadBlock { conn, request } if self.store.reads_at_once() => {
                    // Straight into the connection's outgoing bytes: no
                    // task, no staging buffer, one copy. Served within the
                    // drain that follows the core call which asked for it,
                    // so `conn` is still the connection that asked (ids are
                    // reused only when the driver adds a connection).
                    let store = &self.store;
                    let result =
                        self.core.borrow_mut().serve_block(conn, request, Instant::now(), |out| {
                            store.append_block(request.piece, request.begin, request.length, out)
                        });
                    if let Err(error) = result {
                        tracing::warn!(%error, "read for upload");
                    }
                }
                Action::ReadBlock { conn, request } => {
                    let task = self.clone();
                    let buf = self.ctx.block_buffers.take();
                    let token = self.conns.borrow().get(&conn).map(|e| e.token);
                    super::driver::spawn(async move {
                        let (result, buf) = task
                            .store
                            .read_block(request.piece, request.begin, request.length, buf)
                            .await;
                        let now = Instant::now();
                        let current = token.is_some_and(|t| task.is_current(conn, t));
                        match result {
                            // The connection closed during the read and its
                            // id may belong to a new one that never asked
                            // for this block.
                            _ if !current => task.core.borrow_mut().upload_abandoned(request),
                            Ok(_) => {
                                task.core.borrow_mut().block_read(conn, request, Some(&buf), now)
                            }
                            Err(error) => {
                                tracing::warn!(%error, "read for upload");
                                task.core.borrow_mut().block_read(conn, request, None, now);
                            }
                        }
                        task.ctx.block_buffers.give(buf);
                        task.drain_actions();
                    });
                }
                Action::Disconnect { conn, reason, ban } => {
                    tracing::debug!(conn, %reason, ban, "disconnect");
                    if let Some(entry) = self.forget(conn) {
                        // The core dropped it (a breach, a timeout, bad
                        // data): a failure for the book, or gone if banned.
                        if entry.outgoing && !self.stopped.get() {
                            self.dialled_closed(entry.addr, false);
                        }
                    }
                }
                Action::Peers(peers) => {
                    let (learned, ignored) = self.core.borrow().pex_counts();
                    tracing::info!(count = peers.len(), learned, ignored, "peers learned from PEX");
                    self.add_peers(&peers);
                }
                Action::FetchWebSeed { seed, fetch } => {
                    let task = self.clone();
                    super::driver::spawn(async move { task.fetch_web_seed(seed, fetch).await });
                }
                Action::WebSeedDisabled { url, reason } => {
                    tracing::warn!(info_hash = %self.info_hash, %url, %reason, "web seed disabled");
                }
                Action::Completed => {
                    if self.status.completed.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    self.status.counters.left.store(0, Ordering::Relaxed);
                    if let Some(trackers) = &self.ctx.trackers {
                        let _ = trackers.event(self.info_hash, TorrentEvent::Completed);
                    }
                    tracing::info!(info_hash = %self.info_hash, "download complete");
                }
            }
        }
        for entry in self.conns.borrow().values() {
            entry.wake.notify_one();
        }
        // Work held back by a rate limit: make sure the ticker wakes for it.
        if let Some(at) = self.core.borrow().rate_limit_wakeup() {
            if self.rate_wake_at.get().is_none_or(|armed| at < armed) {
                self.rate_wake_at.set(Some(at));
                self.rate_rearm.notify_one();
            }
        }
    }

    fn hash(self: &Rc<Self>, piece: u32, data: Vec<u8>, expected: [u8; 20]) {
        match self.ctx.hash_pool.submit(piece, data, expected) {
            Ok(verdict) => {
                let task = self.clone();
                super::driver::spawn(async move {
                    let Ok(verdict) = verdict.await else { return };
                    task.core.borrow_mut().piece_hashed(verdict.index, verdict.ok, verdict.buf);
                    task.drain_actions();
                });
            }
            // Every core is busy hashing (this shard's pieces or another's):
            // offer it again shortly; the piece's buffer waits. (A batch error
            // is not produced by single submissions.)
            Err(SubmitError::Full(data)) | Err(SubmitError::BatchTooLarge { jobs: data, .. }) => {
                let task = self.clone();
                super::driver::spawn(async move {
                    tokio::time::sleep(HASH_RETRY).await;
                    if !task.stopped.get() {
                        task.hash(piece, data, expected);
                    }
                });
            }
        }
    }

    /// Runs one web seed fetch (HTTP on this shard's runtime, rate limited
    /// by the core's buckets) and hands the piece back to the core.
    async fn fetch_web_seed(self: Rc<Self>, seed: usize, mut fetch: Box<PieceFetch>) {
        let result = webseed_http::fetch_piece(&mut fetch, |bytes| {
            if self.stopped.get() {
                return Tokens::Stop;
            }
            match self.core.borrow_mut().web_seed_take_download(Instant::now(), bytes) {
                None => Tokens::Granted,
                Some(wait) => Tokens::Wait(wait),
            }
        })
        .await;
        if self.stopped.get() {
            return;
        }
        if let Err(error) = &result {
            tracing::debug!(seed, piece = fetch.piece(), %error, "web seed fetch failed");
        }
        self.core.borrow_mut().web_seed_fetched(seed, *fetch, result.err(), Instant::now());
        self.drain_actions();
    }

    async fn write_piece(self: Rc<Self>, piece: u32, data: Vec<u8>) {
        let (result, data) = self.store.write_piece(piece, data).await;
        let ok = result.is_ok();
        self.core.borrow_mut().piece_written(piece, ok, data, Instant::now());
        self.drain_actions();
        if let Err(error) = result {
            self.stop(Some(format!("storage failed, torrent stopped: {error}"))).await;
        }
    }
}
