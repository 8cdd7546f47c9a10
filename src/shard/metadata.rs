//! The metadata-fetch driver: runs a [`MetadataFetch`] (BEP 9) for a magnet
//! link on the shard that will own the torrent, with io_uring sockets.
//!
//! Layer: driver (single-threaded, on one shard's tokio-uring runtime). Like
//! the torrent driver: a ticker (timers, dialing), and per connection a
//! reader and a writer; the core is never borrowed across an `.await`.
//!
//! Peers come from a *source list*: the magnet's `x.pe` and `--peer`
//! addresses at start, then whatever the shard routes here
//! ([`FetchTask::add_peers`]: tracker batches today, the DHT later) and
//! incoming connections ([`FetchTask::accept`]). Every address learned is also
//! published in [`FetchStatus::sources`], so the torrent that starts once the
//! metadata is in dials them without waiting for a tracker to repeat them.
//!
//! Invariants: at most [`MAX_FETCH_HALF_OPEN`] connects in flight; at most
//! [`MAX_FETCH_SOURCES`] addresses remembered; the metadata is published only
//! once the core verified it against the info hash.

use super::engine::ShardContext;
use crate::metadata::{FetchAction, FetchConnId, FetchParams, MetadataFetch};
use crate::metainfo::InfoHash;
use crate::net::peer_io::{self, IncomingStream, PeerStream};
use crate::net::trackers::TorrentCounters;
use crate::wire::{Handshake, PeerId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Outgoing connects in flight per fetch at most.
pub const MAX_FETCH_HALF_OPEN: usize = 16;

/// Peer addresses remembered per fetch at most.
pub const MAX_FETCH_SOURCES: usize = 2000;

/// Redials of a source that refused or hung up before its handshake.
pub const MAX_FETCH_REDIALS: u32 = 6;

/// Wait before such a redial.
pub const FETCH_REDIAL_DELAY: Duration = Duration::from_secs(2);

/// How often the fetch's timers run and new sources are dialled.
pub const FETCH_TICK_INTERVAL: Duration = Duration::from_millis(500);

/// `left` announced for a magnet link without `xl` until the size is known:
/// 16 KiB, like `ringbit announce`, so trackers do not count us as a seed
/// (and hand us seeds).
pub const METADATA_UNKNOWN_LEFT_BYTES: u64 = 16 * 1024;

/// Read buffer per fetch connection (a metadata piece is 16 KiB plus a few
/// bytes; a peer's bitfield may be larger and grows it up to the wire limits).
const FETCH_READ_BUFFER_BYTES: usize = 64 * 1024;

/// A metadata fetch as the rest of the process sees it.
#[derive(Debug)]
pub struct FetchStatus {
    pub info_hash: InfoHash,
    /// Peers whose handshake completed (the "N peers" of the progress line).
    pub peers: AtomicUsize,
    /// Addresses known (dialled, queued or connected to us).
    pub known_peers: AtomicUsize,
    /// The counters the trackers read while the metadata is fetched; the
    /// torrent keeps them once it starts.
    pub counters: Arc<TorrentCounters>,
    /// The fetch ended (metadata in, or stopped).
    pub done: AtomicBool,
    metadata: Mutex<Option<Vec<u8>>>,
    sources: Mutex<Vec<SocketAddr>>,
    /// When the first connection to a peer was up (for the benchmark line).
    pub first_connect: Mutex<Option<Instant>>,
}

impl FetchStatus {
    /// `left` is what the trackers hear until the size is known (the
    /// magnet's `xl`, or [`METADATA_UNKNOWN_LEFT_BYTES`]).
    pub fn new(info_hash: InfoHash, left: u64) -> Arc<FetchStatus> {
        Arc::new(FetchStatus {
            info_hash,
            peers: AtomicUsize::new(0),
            known_peers: AtomicUsize::new(0),
            counters: TorrentCounters::new(left.max(1)),
            done: AtomicBool::new(false),
            metadata: Mutex::new(None),
            sources: Mutex::new(Vec::new()),
            first_connect: Mutex::new(None),
        })
    }

    /// The verified info dictionary, once (`None` before, or if taken).
    pub fn take_metadata(&self) -> Option<Vec<u8>> {
        self.metadata.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Every peer address the fetch learned, for the torrent to dial.
    pub fn sources(&self) -> Vec<SocketAddr> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the shard needs to start a fetch.
pub struct FetchSpec {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub listen_port: u16,
    /// Peers to dial at once (`x.pe`, `--peer`).
    pub peers: Vec<SocketAddr>,
    pub status: Arc<FetchStatus>,
}

struct FetchConnEntry {
    token: u64,
    outgoing: bool,
    addr: SocketAddr,
    stream: Rc<PeerStream>,
    wake: Rc<Notify>,
}

/// One metadata fetch on this shard.
pub struct FetchTask {
    ctx: Rc<ShardContext>,
    core: RefCell<MetadataFetch>,
    status: Arc<FetchStatus>,
    conns: RefCell<HashMap<FetchConnId, FetchConnEntry>>,
    next_token: Cell<u64>,
    candidates: RefCell<VecDeque<SocketAddr>>,
    known: RefCell<HashSet<SocketAddr>>,
    half_open: Cell<usize>,
    redials: RefCell<HashMap<SocketAddr, u32>>,
    stop: Notify,
    stopped: Cell<bool>,
    started: Instant,
}

impl FetchTask {
    pub fn start(ctx: Rc<ShardContext>, spec: FetchSpec) -> Rc<FetchTask> {
        let core = MetadataFetch::new(FetchParams {
            info_hash: spec.info_hash,
            our_peer_id: spec.peer_id,
            listen_port: Some(spec.listen_port),
        });
        let task = Rc::new(FetchTask {
            ctx,
            core: RefCell::new(core),
            status: spec.status,
            conns: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            candidates: RefCell::new(VecDeque::new()),
            known: RefCell::new(HashSet::new()),
            half_open: Cell::new(0),
            redials: RefCell::new(HashMap::new()),
            stop: Notify::new(),
            stopped: Cell::new(false),
            started: Instant::now(),
        });
        task.add_peers(&spec.peers);
        let ticker = task.clone();
        super::driver::spawn(async move { ticker.run_ticker().await });
        task
    }

    /// Whether the fetch ended (its entry may be dropped).
    pub fn is_done(&self) -> bool {
        self.stopped.get()
    }

    /// New sources (duplicates and overflow dropped); dialled at once.
    pub fn add_peers(self: &Rc<Self>, peers: &[SocketAddr]) {
        {
            let mut known = self.known.borrow_mut();
            let mut candidates = self.candidates.borrow_mut();
            let mut sources = self.status.sources.lock().unwrap_or_else(|e| e.into_inner());
            for &addr in peers {
                if known.len() < MAX_FETCH_SOURCES && known.insert(addr) {
                    candidates.push_back(addr);
                    sources.push(addr);
                }
            }
            self.status.known_peers.store(known.len(), Ordering::Relaxed);
        }
        self.dial();
    }

    /// Stops the fetch: closes every connection.
    pub fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        let conns: Vec<FetchConnId> = self.conns.borrow().keys().copied().collect();
        for conn in conns {
            self.core.borrow_mut().closed(conn);
            self.forget(conn);
        }
        self.status.peers.store(0, Ordering::Relaxed);
        self.status.done.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }

    async fn run_ticker(self: Rc<Self>) {
        let mut interval = tokio::time::interval(FETCH_TICK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.stop.notified() => break,
            }
            if self.stopped.get() {
                break;
            }
            self.core.borrow_mut().tick(Instant::now());
            self.drain_actions();
            self.dial();
            self.status.peers.store(self.core.borrow().peer_count(), Ordering::Relaxed);
        }
    }

    fn dial(self: &Rc<Self>) {
        let timeout = Duration::from_millis(self.ctx.config.connect_timeout_ms);
        while !self.stopped.get()
            && self.half_open.get() < MAX_FETCH_HALF_OPEN
            && self.ctx.connections.get() + self.half_open.get() < self.ctx.max_connections
        {
            let Some(addr) = self.candidates.borrow_mut().pop_front() else { break };
            if !self.core.borrow().wants_connection(addr) {
                continue;
            }
            self.half_open.set(self.half_open.get() + 1);
            let task = self.clone();
            super::driver::spawn(async move {
                let result = peer_io::connect(task.ctx.driver, addr, timeout).await;
                task.half_open.set(task.half_open.get() - 1);
                match result {
                    Ok(stream) if !task.stopped.get() => {
                        if !task.core.borrow().wants_connection(addr) {
                            return;
                        }
                        let conn = task.core.borrow_mut().connected(addr, Instant::now());
                        task.run_connection(conn, stream, addr, true, Vec::new());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%addr, %error, "metadata fetch: connect failed");
                        task.retry_later(addr);
                    }
                }
            });
        }
    }

    fn retry_later(self: &Rc<Self>, addr: SocketAddr) {
        {
            let mut redials = self.redials.borrow_mut();
            if redials.len() >= MAX_FETCH_SOURCES && !redials.contains_key(&addr) {
                return;
            }
            let count = redials.entry(addr).or_insert(0);
            *count += 1;
            if *count > MAX_FETCH_REDIALS {
                return;
            }
        }
        let task = self.clone();
        super::driver::spawn(async move {
            tokio::time::sleep(FETCH_REDIAL_DELAY).await;
            if !task.stopped.get() {
                task.candidates.borrow_mut().push_back(addr);
                task.dial();
            }
        });
    }

    /// A connection the listener accepted for this info hash.
    pub fn accept(
        self: &Rc<Self>,
        stream: IncomingStream,
        addr: SocketAddr,
        hs: Handshake,
        leftover: Vec<u8>,
    ) {
        if self.stopped.get()
            || self.ctx.connections.get() >= self.ctx.max_connections
            || !self.core.borrow().wants_connection(addr)
        {
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
        self.run_connection(conn, stream, addr, false, leftover);
    }

    fn run_connection(
        self: &Rc<Self>,
        conn: FetchConnId,
        stream: PeerStream,
        addr: SocketAddr,
        outgoing: bool,
        leftover: Vec<u8>,
    ) {
        {
            let mut first = self.status.first_connect.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(Instant::now);
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let stream = Rc::new(stream);
        let wake = Rc::new(Notify::new());
        self.conns.borrow_mut().insert(
            conn,
            FetchConnEntry { token, outgoing, addr, stream: stream.clone(), wake: wake.clone() },
        );
        self.ctx.connections.set(self.ctx.connections.get() + 1);
        self.drain_actions();
        if !self.is_current(conn, token) {
            return;
        }
        let reader = self.clone();
        let read_stream = stream.clone();
        super::driver::spawn(
            async move { reader.read_loop(conn, token, read_stream, leftover).await },
        );
        let writer = self.clone();
        super::driver::spawn(async move { writer.write_loop(conn, token, stream, wake).await });
    }

    fn is_current(&self, conn: FetchConnId, token: u64) -> bool {
        self.conns.borrow().get(&conn).is_some_and(|e| e.token == token)
    }

    async fn read_loop(
        self: Rc<Self>,
        conn: FetchConnId,
        token: u64,
        stream: Rc<PeerStream>,
        leftover: Vec<u8>,
    ) {
        let mut buf = Vec::with_capacity(FETCH_READ_BUFFER_BYTES.max(leftover.len() * 2));
        let mut handshake_seen = !leftover.is_empty();
        if !leftover.is_empty() {
            // Bytes the listener read after the handshake.
            buf.extend_from_slice(&leftover);
            let used = self.core.borrow_mut().on_data(conn, &buf, Instant::now());
            buf.drain(..used);
            self.drain_actions();
        }
        loop {
            if buf.len() == buf.capacity() {
                // The core's wire limits bound how large one message may get.
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
            handshake_seen |= buf.len() >= crate::wire::HANDSHAKE_LEN;
            let used = self.core.borrow_mut().on_data(conn, &buf, Instant::now());
            buf.drain(..used);
            self.drain_actions();
        }
        if self.is_current(conn, token) {
            let redial = self.conns.borrow().get(&conn).filter(|e| e.outgoing).map(|e| e.addr);
            self.core.borrow_mut().closed(conn);
            self.forget(conn);
            self.drain_actions();
            // A peer that hangs up before its handshake may not have loaded
            // the torrent yet (libtorrent does this): try it again.
            if let (false, Some(addr)) = (handshake_seen, redial) {
                self.retry_later(addr);
            }
        }
    }

    async fn write_loop(
        self: Rc<Self>,
        conn: FetchConnId,
        token: u64,
        stream: Rc<PeerStream>,
        wake: Rc<Notify>,
    ) {
        let mut spare = Vec::new();
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
        }
    }

    fn forget(&self, conn: FetchConnId) {
        if let Some(entry) = self.conns.borrow_mut().remove(&conn) {
            peer_io::shutdown(&entry.stream);
            entry.wake.notify_one();
            self.ctx.connections.set(self.ctx.connections.get().saturating_sub(1));
        }
    }

    fn drain_actions(self: &Rc<Self>) {
        let learned = self.core.borrow_mut().take_learned();
        if !learned.is_empty() {
            // Incoming peers' listen addresses: the torrent dials them back.
            let mut known = self.known.borrow_mut();
            let mut sources = self.status.sources.lock().unwrap_or_else(|e| e.into_inner());
            for addr in learned {
                if known.len() < MAX_FETCH_SOURCES && known.insert(addr) {
                    sources.push(addr);
                }
            }
        }
        loop {
            let action = self.core.borrow_mut().poll_action();
            let Some(action) = action else { break };
            match action {
                FetchAction::Disconnect { conn, reason } => {
                    let addr = self.conns.borrow().get(&conn).map(|e| e.addr);
                    tracing::debug!(?addr, %reason, "metadata fetch: disconnect");
                    if let Some(addr) = addr.filter(|_| reason != "metadata complete") {
                        tracing::info!(%addr, %reason, "metadata fetch: peer dropped");
                    }
                    self.forget(conn);
                }
                FetchAction::Complete => {
                    let metadata = self.core.borrow_mut().take_metadata();
                    let first =
                        *self.status.first_connect.lock().unwrap_or_else(|e| e.into_inner());
                    tracing::info!(
                        info_hash = %self.status.info_hash,
                        bytes = metadata.as_ref().map_or(0, |m| m.len()),
                        seconds = self.started.elapsed().as_secs_f64(),
                        seconds_after_first_connect =
                            first.map_or(0.0, |f| f.elapsed().as_secs_f64()),
                        "metadata received"
                    );
                    {
                        // Peers refused for bad metadata are not worth a dial.
                        let core = self.core.borrow();
                        let mut sources =
                            self.status.sources.lock().unwrap_or_else(|e| e.into_inner());
                        sources.retain(|a| !core.is_banned(*a));
                    }
                    *self.status.metadata.lock().unwrap_or_else(|e| e.into_inner()) = metadata;
                    self.stop();
                    return;
                }
            }
        }
        for entry in self.conns.borrow().values() {
            entry.wake.notify_one();
        }
        self.status.peers.store(self.core.borrow().peer_count(), Ordering::Relaxed);
    }
}
