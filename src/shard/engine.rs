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
//! Invariants:
//! * a connection is in `conns` exactly while the core knows it;
//! * at most [`MAX_HALF_OPEN`] outgoing connects per torrent are in flight;
//! * a storage error stops the torrent (its connections close, the error is
//!   reported in [`TorrentStatus`]); pieces already verified stay on disk.

use super::bufpool::BufPool;
use super::driver::IoDriver;
use crate::bitfield::Bitfield;
use crate::config::Config;
use crate::hash::{HashPool, SubmitError};
use crate::metainfo::{InfoHash, Metainfo};
use crate::net::peer_io::{self, PeerStream};
use crate::net::trackers::{TorrentCounters, TorrentEvent, TrackerHandle};
use crate::rate_limit::ProcessRateLimits;
use crate::storage::{Backend, PieceStore, StoreOptions};
use crate::torrent::{Action, ConnId, TorrentConfig, TorrentCore, TorrentParams};
use crate::wire::{Handshake, PeerId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Outgoing connects in flight per torrent at most.
pub const MAX_HALF_OPEN: usize = 16;

/// Peer addresses remembered per torrent for dialing at most.
pub const MAX_CANDIDATES: usize = 2000;

/// Redials of a peer that hung up before finishing its handshake (libtorrent
/// does until its torrent is loaded) or refused the connection.
pub const MAX_REDIALS: u32 = 6;

/// Wait before redialing such a peer.
pub const REDIAL_DELAY: Duration = Duration::from_secs(2);

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
    /// Verified pieces, refreshed by the ticker when they change (for resume
    /// state at shutdown).
    pub have: Mutex<Bitfield>,
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
        })
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
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
    /// Connections open on this shard.
    pub connections: Cell<usize>,
    /// This shard's share of `max_peers_total`.
    pub max_connections: usize,
    pub write_buffers: BufPool,
    pub block_buffers: BufPool,
    /// The process-wide rate limits, shared by every shard.
    pub rate_limits: Arc<ProcessRateLimits>,
    /// The I/O driver this shard runs.
    pub driver: IoDriver,
}

impl ShardContext {
    pub fn new(
        index: usize,
        shard_count: usize,
        config: Arc<Config>,
        hash_pool: Arc<HashPool>,
        trackers: Option<TrackerHandle>,
        rate_limits: Arc<ProcessRateLimits>,
        driver: IoDriver,
    ) -> Rc<ShardContext> {
        let max_connections = config.max_peers_total.div_ceil(shard_count.max(1));
        Rc::new(ShardContext {
            index,
            config,
            hash_pool,
            trackers,
            torrents: RefCell::new(HashMap::new()),
            connections: Cell::new(0),
            max_connections,
            write_buffers: BufPool::new(WRITE_BUFFER_BYTES, 64),
            block_buffers: BufPool::new(crate::wire::BLOCK_LEN as usize, 256),
            rate_limits,
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
    candidates: RefCell<VecDeque<SocketAddr>>,
    known: RefCell<HashSet<SocketAddr>>,
    half_open: Cell<usize>,
    redials: RefCell<HashMap<SocketAddr, u32>>,
    stop: Notify,
    stopped: Cell<bool>,
    have_published: Cell<u32>,
    /// When the ticker's rate-limit timer is armed for (`None`: not armed).
    rate_wake_at: Cell<Option<Instant>>,
    /// Tells the ticker to re-arm its timer for an earlier `rate_wake_at`.
    rate_rearm: Notify,
}

impl TorrentTask {
    /// Opens storage on this shard, builds the core and starts the ticker.
    pub fn start(ctx: Rc<ShardContext>, spec: TorrentSpec) -> Result<Rc<TorrentTask>, String> {
        let TorrentSpec { torrent, peer_id, listen_port, torrent_config, status } = spec;
        let info = &torrent.metainfo.info;
        let mut store_options = torrent.store_options;
        if ctx.driver == IoDriver::Epoll && store_options.backend == Backend::Uring {
            // The uring backend submits to the shard's ring, which an epoll
            // shard does not have.
            tracing::warn!("storage backend uring needs the io_uring driver; using pwrite");
            store_options.backend = Backend::Pwrite;
        }
        let store = PieceStore::open(info, &torrent.download_dir, store_options)
            .map_err(|e| e.to_string())?;
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
        let task = Rc::new(TorrentTask {
            ctx,
            info_hash: torrent.metainfo.info_hash,
            core: RefCell::new(core),
            store,
            status,
            conns: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            candidates: RefCell::new(VecDeque::new()),
            known: RefCell::new(HashSet::new()),
            half_open: Cell::new(0),
            redials: RefCell::new(HashMap::new()),
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

    /// Remembers peers to dial (duplicates and overflow are dropped).
    pub fn add_peers(&self, peers: &[SocketAddr]) {
        let mut known = self.known.borrow_mut();
        let mut candidates = self.candidates.borrow_mut();
        for &addr in peers {
            if known.len() < MAX_CANDIDATES && known.insert(addr) {
                candidates.push_back(addr);
            }
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
        if let Err(error) = self.store.flush().await {
            tracing::warn!(info_hash = %self.info_hash, %error, "flush at stop");
        }
        // The ticker stops sweeping idle files now: release the flushed ones
        // (a torrent stopped by an error may stay listed for a long time).
        self.store.close_clean_files();
        self.publish_status();
        self.stop.notify_waiters();
        self.status.stopped.store(true, Ordering::Release);
    }

    /// Flushes storage and returns the pieces verified before the flush: every
    /// one of them is durable once this returns `Ok`, so resume state may
    /// claim them.
    pub async fn checkpoint(&self) -> Result<Bitfield, String> {
        let have = self.core.borrow().have().clone();
        self.store.flush().await.map_err(|e| e.to_string())?;
        Ok(have)
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
        let config = &self.ctx.config;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let io_driver = self.ctx.driver;
        while self.half_open.get() < MAX_HALF_OPEN
            && self.ctx.connections.get() + self.half_open.get() < self.ctx.max_connections
        {
            let Some(addr) = self.candidates.borrow_mut().pop_front() else { break };
            if !self.core.borrow().wants_connection(addr) {
                continue;
            }
            self.half_open.set(self.half_open.get() + 1);
            let task = self.clone();
            super::driver::spawn(async move {
                let result = peer_io::connect(io_driver, addr, timeout).await;
                task.half_open.set(task.half_open.get() - 1);
                match result {
                    Ok(stream) if !task.stopped.get() => {
                        let conn = task.core.borrow_mut().connected(addr, Instant::now());
                        match conn {
                            Ok(conn) => task.run_connection(conn, stream, addr, true),
                            Err(error) => tracing::debug!(%addr, %error, "not connecting"),
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%addr, %error, "connect failed");
                        // Dial it again later (it may not be listening yet).
                        task.retry_later(addr);
                    }
                }
            });
        }
    }

    /// Dials `addr` again after [`REDIAL_DELAY`], at most [`MAX_REDIALS`] times.
    fn retry_later(self: &Rc<Self>, addr: SocketAddr) {
        {
            let mut redials = self.redials.borrow_mut();
            if redials.len() >= MAX_CANDIDATES && !redials.contains_key(&addr) {
                return;
            }
            let count = redials.entry(addr).or_insert(0);
            *count += 1;
            if *count > MAX_REDIALS {
                return;
            }
        }
        let task = self.clone();
        super::driver::spawn(async move {
            tokio::time::sleep(REDIAL_DELAY).await;
            if !task.stopped.get() {
                task.candidates.borrow_mut().push_back(addr);
            }
        });
    }

    /// A connection the listener accepted for this torrent.
    pub fn accept(self: &Rc<Self>, stream: std::net::TcpStream, addr: SocketAddr, hs: Handshake) {
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
        // The peer dialled us: no need to dial it as well.
        self.known.borrow_mut().insert(addr);
        let conn = self.core.borrow_mut().accepted(addr, hs, Instant::now());
        match conn {
            Ok(conn) => self.run_connection(conn, stream, addr, false),
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
        let reader = self.clone();
        let read_stream = stream.clone();
        super::driver::spawn(async move { reader.read_loop(conn, token, read_stream).await });
        let writer = self.clone();
        super::driver::spawn(async move { writer.write_loop(conn, token, stream, wake).await });
    }

    fn is_current(&self, conn: ConnId, token: u64) -> bool {
        self.conns.borrow().get(&conn).is_some_and(|e| e.token == token)
    }

    async fn read_loop(self: Rc<Self>, conn: ConnId, token: u64, stream: Rc<PeerStream>) {
        let mut buf = Vec::with_capacity(self.ctx.config.read_buffer_bytes);
        loop {
            if buf.len() == buf.capacity() {
                // A message larger than what is buffered: the core's wire
                // limits bound how large it may get before it is refused.
                buf.reserve(buf.capacity());
            }
            let (result, b) = peer_io::read_into_spare(&stream, buf).await;
            buf = b;
            match result {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !self.is_current(conn, token) {
                return;
            }
            let used = self.core.borrow_mut().on_data(conn, &buf, Instant::now());
            buf.drain(..used);
            self.drain_actions();
        }
        if self.is_current(conn, token) {
            let handshake_done = self.core.borrow_mut().closed(conn);
            let redial = self.conns.borrow().get(&conn).filter(|e| e.outgoing).map(|e| e.addr);
            self.forget(conn);
            self.drain_actions();
            if let (false, Some(addr)) = (handshake_done, redial) {
                self.retry_later(addr);
            }
        }
    }

    async fn write_loop(
        self: Rc<Self>,
        conn: ConnId,
        token: u64,
        stream: Rc<PeerStream>,
        wake: Rc<Notify>,
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

    fn forget(&self, conn: ConnId) {
        if let Some(entry) = self.conns.borrow_mut().remove(&conn) {
            peer_io::shutdown(&entry.stream);
            entry.wake.notify_one();
            self.ctx.connections.set(self.ctx.connections.get().saturating_sub(1));
        }
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
                    self.forget(conn);
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
