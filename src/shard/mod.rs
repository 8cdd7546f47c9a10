//! Shards: one pinned thread per core, each running its own runtime: io_uring,
//! or epoll where the kernel refuses io_uring ([`driver`]).
//!
//! Layer: driver. A torrent lives on exactly one shard,
//! [`InfoHash::shard`](crate::metainfo::InfoHash::shard)`(shard_count)`; shards
//! share no locks on the data path and hear from the rest of the process only
//! through their bounded command channel ([`SHARD_COMMAND_QUEUE`]).
//!
//! Invariants:
//! * every shard thread runs exactly one runtime ([`driver::ShardRuntime`])
//!   for its whole life, so everything spawned on it is `!Send` and
//!   single-threaded; every shard of a process runs the same driver;
//! * a shard thread never blocks on anything but its own runtime;
//! * [`ShardSet::shutdown`] returns only after every shard thread has exited,
//!   and never waits on a full command queue: the stop signal is a
//!   [`Notify`] beside the queue, not a command in it;
//! * outgoing connects in flight in the whole process stay within
//!   [`Config::max_half_open_total`] (one counter shared by every shard).

pub mod bufpool;
pub mod driver;
pub mod engine;
pub mod metadata;
pub mod probe;

use crate::bitfield::Bitfield;
use crate::config::Config;
use crate::hash::HashPool;
use crate::metainfo::InfoHash;
use crate::net::listener::IncomingPeer;
use crate::net::trackers::{PeerReceiver, TrackerHandle};
use crate::rate_limit::ProcessRateLimits;
use engine::{ShardContext, ShardShared, TorrentSpec, TorrentTask};
use metadata::{FetchSpec, FetchTask};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::sync::Notify;

use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// Most commands queued to one shard before senders wait: back-pressure on
/// whoever floods a shard (listener, trackers, control plane).
pub const SHARD_COMMAND_QUEUE: usize = 4096;

/// What one shard reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Index of this shard, `0..shard_count`.
    pub index: usize,
    /// The core the thread is pinned to, when pinning succeeded.
    pub core: Option<usize>,
}

/// A message to a shard.
pub enum ShardCommand {
    /// Report [`ShardInfo`].
    Info(oneshot::Sender<ShardInfo>),
    /// Start a torrent; the reply says whether its storage opened.
    AddTorrent(Box<TorrentSpec>, oneshot::Sender<Result<(), String>>),
    /// Fetch a magnet link's metadata (BEP 9) on this shard: the fetch's
    /// [`metadata::FetchStatus`] reports progress and the verified bytes.
    /// The reply is an error when the torrent or a fetch for it runs here.
    FetchMetadata(Box<FetchSpec>, oneshot::Sender<Result<(), String>>),
    /// Stop a torrent (connections closed, storage flushed) or a metadata
    /// fetch, then reply.
    RemoveTorrent(InfoHash, oneshot::Sender<()>),
    /// Flush a torrent's storage and reply with the pieces that were verified
    /// before the flush (so all of them are durable); `None` for an unknown
    /// torrent.
    Checkpoint(InfoHash, oneshot::Sender<Option<Result<Bitfield, String>>>),
    /// Change a torrent's rate limits (bytes per second, 0 = unlimited); the
    /// reply says whether the torrent runs on this shard.
    SetRateLimits {
        info_hash: InfoHash,
        upload_bytes_per_s: u64,
        download_bytes_per_s: u64,
        reply: oneshot::Sender<bool>,
    },
    /// An incoming connection for one of this shard's torrents.
    Incoming(IncomingPeer),
    /// Stop every torrent, then leave the runtime.
    Shutdown,
}

impl std::fmt::Debug for ShardCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardCommand::Info(_) => f.write_str("Info"),
            ShardCommand::AddTorrent(spec, _) => {
                write!(f, "AddTorrent({})", spec.torrent.metainfo.info_hash)
            }
            ShardCommand::FetchMetadata(spec, _) => write!(f, "FetchMetadata({})", spec.info_hash),
            ShardCommand::RemoveTorrent(h, _) => write!(f, "RemoveTorrent({h})"),
            ShardCommand::Checkpoint(h, _) => write!(f, "Checkpoint({h})"),
            ShardCommand::SetRateLimits { info_hash, .. } => {
                write!(f, "SetRateLimits({info_hash})")
            }
            ShardCommand::Incoming(p) => write!(f, "Incoming({})", p.addr),
            ShardCommand::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// What a shard is given at start.
pub struct ShardInit {
    pub config: Arc<Config>,
    pub hash_pool: Arc<HashPool>,
    pub trackers: Option<TrackerHandle>,
    /// Peers the trackers found for this shard's torrents.
    pub peers: Option<PeerReceiver>,
    /// The process-wide rate limits (the same `Arc` for every shard).
    pub rate_limits: Arc<ProcessRateLimits>,
    /// This shard's byte budgets (piece buffers, outgoing bytes).
    pub memory: crate::memory_budget::ShardMemory,
    /// The DHT, once the session started it (after the shards): peers'
    /// `PORT` messages go to it.
    pub dht: Arc<std::sync::OnceLock<crate::net::dht::DhtHandle>>,
    /// Opens uTP connections (`None`: uTP is off).
    pub utp: Option<crate::net::udp::UtpConnector>,
}

/// Why the shards could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Uring(#[from] probe::UringUnavailable),
    #[error("cannot spawn shard thread {index}: {source}")]
    Spawn { index: usize, source: std::io::Error },
    #[error("shard {index} failed to start its runtime: {source}")]
    Runtime { index: usize, source: std::io::Error },
    #[error("shard {index} has stopped")]
    Stopped { index: usize },
}

/// A running shard: its command channel and thread.
struct Shard {
    commands: mpsc::Sender<ShardCommand>,
    /// Tells the shard to stop even when its command queue is full.
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

/// All shards of the process.
pub struct ShardSet {
    shards: Vec<Shard>,
    driver: driver::DriverSelection,
}

impl ShardSet {
    /// Chooses the I/O driver (`config.io_driver` of the first init; see
    /// [`driver::select`]), then starts one shard thread per `inits` entry (at
    /// least one), shard `i` pinned to core `i % cores` when `pin` is set.
    pub fn start(inits: Vec<ShardInit>, pin: bool) -> Result<ShardSet, ShardError> {
        let count = inits.len();
        assert!(count > 0, "at least one shard");
        let selection = driver::select(inits[0].config.io_driver)?;
        if selection.driver == driver::IoDriver::Epoll
            && inits[0].config.io_driver == crate::config::IoDriverChoice::Auto
        {
            tracing::warn!(reason = %selection.reason, "I/O driver: epoll (io_uring refused)");
        } else {
            tracing::info!(driver = %selection.driver, reason = %selection.reason, "I/O driver");
        }
        tracing::info!(backend = crate::hash::sha1_backend().name(), "SHA1");
        let io_driver = selection.driver;
        let cores =
            if pin { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
        let mut shards = Vec::with_capacity(count);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, std::io::Result<()>)>();
        let process_half_open = Arc::new(AtomicUsize::new(0));
        for (index, init) in inits.into_iter().enumerate() {
            let (commands, receiver) = mpsc::channel(SHARD_COMMAND_QUEUE);
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let ready = ready_tx.clone();
            let stop = Arc::new(Notify::new());
            let signals = ShardSignals {
                stop: stop.clone(),
                half_open: process_half_open.clone(),
                io_driver,
            };
            let thread = std::thread::Builder::new()
                .name(format!("ringbit-shard-{index}"))
                .spawn(move || shard_thread(index, count, core, init, signals, receiver, ready))
                .map_err(|source| ShardError::Spawn { index, source })?;
            shards.push(Shard { commands, stop, thread: Some(thread) });
        }
        drop(ready_tx);
        let mut set = ShardSet { shards, driver: selection };
        for _ in 0..count {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(source))) => {
                    set.shutdown();
                    return Err(ShardError::Runtime { index, source });
                }
                Err(_) => {
                    set.shutdown();
                    return Err(ShardError::Stopped { index: 0 });
                }
            }
        }
        Ok(set)
    }

    /// The I/O driver every shard runs, and why it was chosen.
    pub fn driver(&self) -> &driver::DriverSelection {
        &self.driver
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: a set has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The shard that owns a torrent.
    pub fn shard_of(&self, info_hash: &InfoHash) -> usize {
        info_hash.shard(self.shards.len())
    }

    /// Sends a command to shard `index`, waiting while its queue is full.
    /// Must not be called from a shard thread (it would block that shard).
    pub fn send_blocking(&self, index: usize, command: ShardCommand) -> Result<(), ShardError> {
        self.shards[index]
            .commands
            .blocking_send(command)
            .map_err(|_| ShardError::Stopped { index })
    }

    /// A sender for shard `index`, for async callers (trackers, listener).
    pub fn sender(&self, index: usize) -> mpsc::Sender<ShardCommand> {
        self.shards[index].commands.clone()
    }

    /// Asks every shard for its [`ShardInfo`].
    pub fn info(&self) -> Result<Vec<ShardInfo>, ShardError> {
        (0..self.len())
            .map(|index| {
                let (tx, rx) = oneshot::channel();
                self.send_blocking(index, ShardCommand::Info(tx))?;
                rx.blocking_recv().map_err(|_| ShardError::Stopped { index })
            })
            .collect()
    }

    /// Stops every shard and joins its thread. Never waits on a full
    /// command queue: the stop signal goes beside it.
    pub fn shutdown(&mut self) {
        for shard in &self.shards {
            // A permit is stored if the shard is not waiting right now.
            shard.stop.notify_one();
        }
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for ShardSet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What [`ShardSet`] shares with each shard thread.
struct ShardSignals {
    stop: Arc<Notify>,
    /// Outgoing connects in flight in the whole process.
    half_open: Arc<AtomicUsize>,
    /// The I/O driver every shard runs.
    io_driver: driver::IoDriver,
}

fn shard_thread(
    index: usize,
    count: usize,
    core: Option<core_affinity::CoreId>,
    init: ShardInit,
    signals: ShardSignals,
    mut commands: mpsc::Receiver<ShardCommand>,
    ready: std::sync::mpsc::Sender<(usize, std::io::Result<()>)>,
) {
    let pinned = core.filter(|&c| core_affinity::set_for_current(c)).map(|c| c.id);
    let io_driver = signals.io_driver;
    let runtime = match driver::ShardRuntime::new(io_driver) {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send((index, Err(error)));
            return;
        }
    };
    let _ = ready.send((index, Ok(())));
    drop(ready);
    let ctx = ShardContext::new(
        index,
        count,
        ShardShared {
            config: init.config,
            hash_pool: init.hash_pool,
            trackers: init.trackers,
            rate_limits: init.rate_limits,
            memory: init.memory,
            dht: init.dht,
            process_half_open: signals.half_open,
            driver: io_driver,
            utp: init.utp,
        },
    );
    let stop = signals.stop;
    let mut peers = init.peers;
    runtime.block_on(async move {
        let info = ShardInfo { index, core: pinned };
        // Metadata fetches of magnet links whose torrents will live here.
        let fetches: RefCell<HashMap<InfoHash, Rc<FetchTask>>> = RefCell::new(HashMap::new());
        let fetch_of = |info_hash: &InfoHash| {
            let mut fetches = fetches.borrow_mut();
            fetches.retain(|_, f| !f.is_done());
            fetches.get(info_hash).cloned()
        };
        loop {
            let command = tokio::select! {
                // First: a shutdown is never stuck behind a full queue.
                biased;
                _ = stop.notified() => break,
                command = commands.recv() => command,
                Some(batch) = recv_peers(&mut peers) => {
                    let task = ctx.torrents.borrow().get(&batch.info_hash).cloned();
                    if let Some(task) = task {
                        task.add_peers(&batch.peers);
                    } else if let Some(fetch) = fetch_of(&batch.info_hash) {
                        fetch.add_peers(&batch.peers);
                    }
                    continue;
                }
            };
            let Some(command) = command else { break };
            match command {
                ShardCommand::Info(reply) => {
                    let _ = reply.send(info.clone());
                }
                ShardCommand::AddTorrent(spec, reply) => {
                    let info_hash = spec.torrent.metainfo.info_hash;
                    if ctx.torrents.borrow().contains_key(&info_hash)
                        || ctx.opening.borrow().contains_key(&info_hash)
                    {
                        let _ = reply.send(Err(format!("torrent {info_hash} is already running")));
                        continue;
                    }
                    // Opening storage waits on the ring (or the blocking
                    // pool): run it beside the loop so other torrents go on.
                    ctx.opening.borrow_mut().insert(info_hash, false);
                    let ctx = ctx.clone();
                    driver::spawn(async move {
                        let started = TorrentTask::start(ctx.clone(), *spec).await;
                        let removed = ctx.opening.borrow_mut().remove(&info_hash) == Some(true);
                        match started {
                            Ok(task) if removed => {
                                task.stop(None).await;
                                let _ = reply.send(Err(format!("torrent {info_hash} was removed")));
                            }
                            Ok(task) => {
                                ctx.torrents.borrow_mut().insert(info_hash, task);
                                let _ = reply.send(Ok(()));
                            }
                            Err(error) => {
                                let _ = reply.send(Err(error));
                            }
                        }
                    });
                }
                ShardCommand::FetchMetadata(spec, reply) => {
                    let info_hash = spec.info_hash;
                    if ctx.torrents.borrow().contains_key(&info_hash)
                        || fetch_of(&info_hash).is_some()
                    {
                        let _ = reply.send(Err(format!("torrent {info_hash} is already running")));
                        continue;
                    }
                    let fetch = FetchTask::start(ctx.clone(), *spec);
                    fetches.borrow_mut().insert(info_hash, fetch);
                    let _ = reply.send(Ok(()));
                }
                ShardCommand::RemoveTorrent(info_hash, reply) => {
                    if let Some(fetch) = fetches.borrow_mut().remove(&info_hash) {
                        fetch.stop();
                    }
                    // Still opening: it stops as soon as its storage is open.
                    if let Some(removed) = ctx.opening.borrow_mut().get_mut(&info_hash) {
                        *removed = true;
                    }
                    let task = ctx.torrents.borrow_mut().remove(&info_hash);
                    if let Some(task) = task {
                        task.stop(None).await;
                    }
                    let _ = reply.send(());
                }
                ShardCommand::Checkpoint(info_hash, reply) => {
                    let task = ctx.torrents.borrow().get(&info_hash).cloned();
                    match task {
                        // Flushing waits on the ring: run it beside the loop.
                        Some(task) => {
                            driver::spawn(async move {
                                let _ = reply.send(Some(task.checkpoint().await));
                            });
                        }
                        None => {
                            let _ = reply.send(None);
                        }
                    }
                }
                ShardCommand::SetRateLimits {
                    info_hash,
                    upload_bytes_per_s,
                    download_bytes_per_s,
                    reply,
                } => {
                    let task = ctx.torrents.borrow().get(&info_hash).cloned();
                    if let Some(task) = &task {
                        task.set_rate_limits(upload_bytes_per_s, download_bytes_per_s);
                    }
                    let _ = reply.send(task.is_some());
                }
                ShardCommand::Incoming(peer) => {
                    let task = ctx.torrents.borrow().get(&peer.handshake.info_hash).cloned();
                    if let Some(task) = task {
                        task.accept(
                            peer.stream,
                            peer.addr,
                            peer.handshake,
                            peer.cipher,
                            peer.leftover,
                        );
                    } else if let Some(fetch) = fetch_of(&peer.handshake.info_hash) {
                        // A fetch speaks plaintext only (MSE responders
                        // know running torrents, not fetches).
                        if !peer.cipher.is_rc4() {
                            fetch.accept(peer.stream, peer.addr, peer.handshake, peer.leftover);
                        }
                    }
                }
                ShardCommand::Shutdown => break,
            }
        }
        for (_, fetch) in fetches.borrow_mut().drain() {
            fetch.stop();
        }
        let tasks: Vec<Rc<TorrentTask>> =
            ctx.torrents.borrow_mut().drain().map(|(_, t)| t).collect();
        for task in tasks {
            task.stop(None).await;
        }
    });
    // Operations still in flight (a connect to an unresponsive address) would
    // make dropping an io_uring runtime wait for them (tokio-uring waits for
    // every operation on drop), and an epoll runtime would wait for its
    // blocking pool. The shard is done: leave the runtime until the process
    // exits rather than hang shutdown.
    std::mem::forget(runtime);
    tracing::debug!(shard = index, "shard stopped");
}

async fn recv_peers(peers: &mut Option<PeerReceiver>) -> Option<crate::net::trackers::PeerBatch> {
    match peers {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_start_report_and_stop() {
        let inits = (0..3)
            .map(|_| ShardInit {
                config: Arc::new(Config::default()),
                hash_pool: Arc::new(HashPool::new(1).unwrap()),
                trackers: None,
                peers: None,
                rate_limits: Arc::new(ProcessRateLimits::unlimited(std::time::Instant::now())),
                memory: crate::memory_budget::ShardMemory::unlimited(),
                dht: Arc::default(),
                utp: None,
            })
            .collect();
        let mut set = ShardSet::start(inits, true).unwrap();
        let info = set.info().unwrap();
        assert_eq!(info.iter().map(|i| i.index).collect::<Vec<_>>(), vec![0, 1, 2]);
        let cores = core_affinity::get_core_ids().unwrap_or_default().len();
        if cores > 0 {
            assert_eq!(info[2].core, Some(2 % cores));
        }
        set.shutdown();
        assert!(matches!(
            set.send_blocking(0, ShardCommand::Shutdown),
            Err(ShardError::Stopped { .. })
        ));
    }

    /// Goal: shutdown never hangs, even when a shard's command queue is full
    /// (a `Shutdown` command could not be queued then).
    #[test]
    fn shutdown_does_not_wait_on_a_full_queue() {
        let init = ShardInit {
            config: Arc::new(Config::default()),
            hash_pool: Arc::new(HashPool::new(1).unwrap()),
            trackers: None,
            peers: None,
            rate_limits: Arc::new(ProcessRateLimits::unlimited(std::time::Instant::now())),
            memory: crate::memory_budget::ShardMemory::unlimited(),
            dht: Arc::default(),
            utp: None,
        };
        let mut set = ShardSet::start(vec![init], false).unwrap();
        let sender = set.sender(0);
        let mut full = false;
        // Until the queue is full, within a bound: the shard drains it on the
        // other core, and a sender preempted mid-fill (other tests running)
        // must get another time slice rather than a fixed number of tries.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let (tx, _rx) = oneshot::channel();
            if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(ShardCommand::Info(tx))
            {
                full = true;
                break;
            }
        }
        assert!(full, "the queue never filled: the test proves nothing");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            set.shutdown();
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("shutdown hung with a full command queue");
    }
}
