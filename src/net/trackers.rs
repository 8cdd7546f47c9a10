//! The tracker subsystem: announces every torrent to its trackers and hands
//! the peers it learns to the shard that owns the torrent.
//!
//! Layer: driver. Owns one thread (`ringbit-trackers`) running an ordinary
//! current-thread tokio runtime, never a shard's io_uring runtime. Each torrent
//! is one task driving its pure [`Announcer`] (BEP 12 schedule) with the HTTP
//! and UDP transports.
//!
//! Invariants:
//! * nothing a shard calls blocks: commands go through a bounded queue with
//!   `try_send` ([`TrackersError::Busy`] when full); peers go out through each
//!   shard's bounded [`PeerSink`] with `try_send`, and a full sink drops the
//!   batch and counts it ([`PeerSink::dropped_peers`]);
//! * a torrent's peers are delivered once each (a per-torrent set, bounded by
//!   [`TrackerConfig::known_peers_max`]), never our own listen address;
//! * `stopped` announces (on [`TrackerHandle::remove`] and
//!   [`TrackerHandle::shutdown`]) are bounded by
//!   [`TrackerConfig::stop_timeout_ms`]; shutdown waits at most that plus
//!   [`SHUTDOWN_MARGIN_MS`];
//! * at most [`ANNOUNCES_IN_FLIGHT_MAX`] announces run at once, whatever the
//!   number of torrents (a seed box starting 10,000 torrents must not open
//!   10,000 sockets at once); the others wait their turn;
//! * every announce is counted per tracker URL ([`TrackerCounters`]) for the
//!   daemon's metrics; the map is bounded by [`TRACKER_COUNTERS_MAX`].

use super::tracker_http::{HttpTracker, HttpTrackerError, HTTP_TIMEOUT_MS_DEFAULT};
use super::tracker_udp::{UdpRetryConfig, UdpTracker, UdpTrackerError};
use crate::metainfo::InfoHash;
use crate::tracker::schedule::{AnnounceJob, Announcer, ScheduleConfig, TrackerStatus};
use crate::tracker::{AnnounceReply, AnnounceRequest, Event, ScrapeStats, TrackerUrl, UrlError};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;

/// Announces (HTTP or UDP) running at once at most, over every torrent.
pub const ANNOUNCES_IN_FLIGHT_MAX: usize = 64;

/// Tracker URLs with their own counters at most; later ones share the
/// `"other"` entry.
pub const TRACKER_COUNTERS_MAX: usize = 10_000;

/// Commands queued from shards and the session before `add_torrent` etc. fail
/// with [`TrackersError::Busy`].
pub const COMMAND_QUEUE_DEPTH: usize = 4096;
/// Most torrents announced at once; more are refused with a warning.
pub const TORRENTS_MAX: usize = 100_000;
/// Commands queued per torrent task.
const TORRENT_QUEUE_DEPTH: usize = 16;
/// Default number of peers asked for per announce.
pub const NUMWANT_DEFAULT: u32 = 200;
/// Default bound on one announce, whatever the transport: a dead UDP tracker
/// would otherwise hold the tier walk for the whole BEP 15 schedule (2 h).
pub const ANNOUNCE_TIMEOUT_MS_DEFAULT: u64 = 120_000;
/// Default bound on the `stopped` announces at removal and shutdown.
pub const STOP_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Extra time `shutdown` waits for the thread beyond the stop timeout.
pub const SHUTDOWN_MARGIN_MS: u64 = 2_000;
/// Default number of peers remembered per torrent for de-duplication.
pub const KNOWN_PEERS_MAX_DEFAULT: usize = 10_000;

/// The subsystem's settings.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    pub peer_id: [u8; 20],
    /// Sent as `key`; random per session.
    pub key: u32,
    pub numwant: u32,
    pub http_timeout_ms: u64,
    pub udp_retry: UdpRetryConfig,
    pub announce_timeout_ms: u64,
    pub stop_timeout_ms: u64,
    pub schedule: ScheduleConfig,
    /// Seeds the per-torrent tier shuffles (random in production).
    pub shuffle_seed: u64,
    /// Addresses that are us besides loopback/unspecified (e.g. a public IP):
    /// peers at one of them with our listen port are dropped.
    pub own_ips: Vec<IpAddr>,
    pub known_peers_max: usize,
    /// MSE policy announced to HTTP trackers (the session sets the engine's).
    pub encryption: crate::mse::EncryptionPolicy,
}

impl TrackerConfig {
    /// Defaults with a given peer id; `key` and `shuffle_seed` random.
    pub fn new(peer_id: [u8; 20]) -> TrackerConfig {
        TrackerConfig {
            peer_id,
            key: rand::random(),
            numwant: NUMWANT_DEFAULT,
            http_timeout_ms: HTTP_TIMEOUT_MS_DEFAULT,
            udp_retry: UdpRetryConfig::default(),
            announce_timeout_ms: ANNOUNCE_TIMEOUT_MS_DEFAULT,
            stop_timeout_ms: STOP_TIMEOUT_MS_DEFAULT,
            schedule: ScheduleConfig::default(),
            shuffle_seed: rand::random(),
            own_ips: Vec::new(),
            known_peers_max: KNOWN_PEERS_MAX_DEFAULT,
            encryption: crate::mse::EncryptionPolicy::Prefer,
        }
    }
}

/// A peer id in the Azureus style: `-RB0100-` and 12 random alphanumerics.
pub fn generate_peer_id() -> [u8; 20] {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut id = *b"-RB0100-000000000000";
    let mut rng = rand::thread_rng();
    for byte in &mut id[8..] {
        *byte = ALPHABET[rng.gen_range(0..ALPHABET.len())];
    }
    id
}

/// Transfer totals of one torrent, updated by its shard, read at each announce.
#[derive(Debug, Default)]
pub struct TorrentCounters {
    pub uploaded: AtomicU64,
    pub downloaded: AtomicU64,
    pub left: AtomicU64,
}

impl TorrentCounters {
    pub fn new(left: u64) -> Arc<TorrentCounters> {
        let counters = TorrentCounters::default();
        counters.left.store(left, Ordering::Relaxed);
        Arc::new(counters)
    }
}

/// Events a torrent reports to its trackers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorrentEvent {
    /// The download finished.
    Completed,
}

/// New peers for one torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBatch {
    pub info_hash: InfoHash,
    pub peers: Vec<SocketAddr>,
}

/// A shard's receiving end: works on any runtime (tokio_uring included).
pub type PeerReceiver = mpsc::Receiver<PeerBatch>;

/// The tracker thread's sending end towards one shard.
#[derive(Clone, Debug)]
pub struct PeerSink {
    sender: mpsc::Sender<PeerBatch>,
    dropped_peers: Arc<AtomicU64>,
}

impl PeerSink {
    /// A sink holding up to `capacity` batches, and the shard's receiver.
    pub fn channel(capacity: usize) -> (PeerSink, PeerReceiver) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (PeerSink { sender, dropped_peers: Arc::new(AtomicU64::new(0)) }, receiver)
    }

    /// Peers dropped because the shard's queue was full or closed.
    pub fn dropped_peers(&self) -> u64 {
        self.dropped_peers.load(Ordering::Relaxed)
    }

    /// Never blocks: a full or closed queue drops the batch and counts it.
    /// (The DHT driver delivers through the same sinks.)
    pub(crate) fn deliver(&self, batch: PeerBatch) {
        let count = batch.peers.len() as u64;
        if self.sender.try_send(batch).is_err() {
            self.dropped_peers.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// Errors of the subsystem's API.
#[derive(Debug, thiserror::Error)]
pub enum TrackersError {
    #[error("at least one peer sink (one per shard) is needed")]
    NoSinks,
    #[error("could not start the tracker thread: {0}")]
    Start(String),
    #[error("the tracker command queue is full ({COMMAND_QUEUE_DEPTH} commands)")]
    Busy,
    #[error("the tracker subsystem is shut down")]
    ShutDown,
    #[error("tracker shutdown did not finish within {0} ms")]
    ShutdownTimedOut(u64),
    #[error("{0}")]
    Http(#[from] HttpTrackerError),
}

/// Why one announce (or scrape) failed: the per-tracker error `ringbit` shows.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("{0}")]
    Url(#[from] UrlError),
    #[error("{0}")]
    Http(#[from] HttpTrackerError),
    #[error("{0}")]
    Udp(#[from] UdpTrackerError),
    #[error("no answer within {0} ms")]
    TimedOut(u64),
}

/// The two transports, shared by every torrent (and by `ringbit announce`).
#[derive(Clone, Debug)]
pub struct Transports {
    pub http: HttpTracker,
    pub udp: UdpTracker,
}

impl Transports {
    pub fn new(
        http_timeout_ms: u64,
        udp_retry: UdpRetryConfig,
    ) -> Result<Transports, HttpTrackerError> {
        Ok(Transports { http: HttpTracker::new(http_timeout_ms)?, udp: UdpTracker::new(udp_retry) })
    }

    /// One announce to `url`, bounded by `timeout_ms`. Must run on a tokio runtime.
    pub async fn announce(
        &self,
        url: &str,
        request: &AnnounceRequest,
        timeout_ms: u64,
    ) -> Result<AnnounceReply, AnnounceError> {
        let work = async {
            match TrackerUrl::parse(url)? {
                TrackerUrl::Http(url) => Ok(self.http.announce(&url, request).await?),
                TrackerUrl::Udp { host, port, path_query } => {
                    Ok(self.udp.announce(&host, port, &path_query, request).await?)
                }
            }
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
            Ok(result) => result,
            Err(_elapsed) => Err(AnnounceError::TimedOut(timeout_ms)),
        }
    }
}

impl Transports {
    /// Scrapes one torrent from the tracker behind the announce URL `url`
    /// (HTTP: BEP 48 URL convention; UDP: BEP 15 scrape), bounded by `timeout_ms`.
    pub async fn scrape(
        &self,
        url: &str,
        info_hash: &InfoHash,
        timeout_ms: u64,
    ) -> Result<ScrapeStats, AnnounceError> {
        let work = async {
            match TrackerUrl::parse(url)? {
                TrackerUrl::Http(url) => Ok(self.http.scrape(&url, info_hash).await?),
                TrackerUrl::Udp { host, port, .. } => {
                    Ok(self.udp.scrape(&host, port, info_hash).await?)
                }
            }
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
            Ok(result) => result,
            Err(_elapsed) => Err(AnnounceError::TimedOut(timeout_ms)),
        }
    }
}

/// True when `peer` is our own listening address.
pub fn is_own_address(peer: &SocketAddr, listen_port: u16, own_ips: &[IpAddr]) -> bool {
    peer.port() == listen_port
        && (peer.ip().is_loopback() || peer.ip().is_unspecified() || own_ips.contains(&peer.ip()))
}

enum Command {
    Add {
        info_hash: InfoHash,
        tiers: Vec<Vec<String>>,
        listen_port: u16,
        counters: Arc<TorrentCounters>,
    },
    Completed(InfoHash),
    Reannounce(InfoHash),
    Remove(InfoHash),
}

enum TorrentCommand {
    Completed,
    Reannounce,
    Stop,
}

type StatusMap = Arc<Mutex<HashMap<InfoHash, Vec<TrackerStatus>>>>;

/// Totals for one tracker URL since start (monotonic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerCounters {
    pub announces_ok: u64,
    pub announces_failed: u64,
    /// Peers in the replies, before filtering.
    pub peers_received: u64,
}

type CounterMap = Arc<Mutex<HashMap<String, TrackerCounters>>>;

fn count_announce(counters: &CounterMap, url: &str, result: &Result<AnnounceReply, AnnounceError>) {
    let mut map = counters.lock().unwrap_or_else(|p| p.into_inner());
    let key =
        if map.len() >= TRACKER_COUNTERS_MAX && !map.contains_key(url) { "other" } else { url };
    let entry = map.entry(key.to_string()).or_default();
    match result {
        Ok(reply) => {
            entry.announces_ok += 1;
            entry.peers_received += reply.peers.len() as u64;
        }
        Err(_) => entry.announces_failed += 1,
    }
}

struct Shared {
    commands: mpsc::Sender<Command>,
    shutdown: Arc<Notify>,
    status: StatusMap,
    counters: CounterMap,
    /// Taken by the first `shutdown`.
    thread: Mutex<Option<(std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>)>>,
    stop_timeout_ms: u64,
}

/// The handle shards and the session use. `Send + Clone`; every method
/// returns at once.
#[derive(Clone)]
pub struct TrackerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TrackerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerHandle").finish_non_exhaustive()
    }
}

impl TrackerHandle {
    /// Starts the tracker thread. `sinks[i]` receives the peers of the
    /// torrents of shard `i` (`info_hash.shard(sinks.len())`).
    pub fn start(
        config: TrackerConfig,
        sinks: Vec<PeerSink>,
    ) -> Result<TrackerHandle, TrackersError> {
        if sinks.is_empty() {
            return Err(TrackersError::NoSinks);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TrackersError::Start(e.to_string()))?;
        // Built on the caller's thread so a bad TLS setup fails here, loudly.
        let transports = {
            let _guard = runtime.enter();
            Transports::new(config.http_timeout_ms, config.udp_retry)?
        };
        let (commands, command_receiver) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let shutdown = Arc::new(Notify::new());
        let status: StatusMap = Arc::default();
        let counters: CounterMap = Arc::default();
        let in_flight = Arc::new(Semaphore::new(ANNOUNCES_IN_FLIGHT_MAX));
        let (done_sender, done_receiver) = std::sync::mpsc::channel();
        let stop_timeout_ms = config.stop_timeout_ms;
        let context = Arc::new(Context {
            config,
            transports,
            sinks,
            status: status.clone(),
            counters: counters.clone(),
            in_flight,
        });
        let thread_shutdown = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("ringbit-trackers".into())
            .spawn(move || {
                runtime.block_on(dispatch(context, command_receiver, thread_shutdown));
                // Blocking DNS lookups may linger: do not wait for them.
                runtime.shutdown_timeout(Duration::from_millis(100));
                let _ = done_sender.send(());
            })
            .map_err(|e| TrackersError::Start(e.to_string()))?;
        Ok(TrackerHandle {
            shared: Arc::new(Shared {
                commands,
                shutdown,
                status,
                counters,
                thread: Mutex::new(Some((thread, done_receiver))),
                stop_timeout_ms,
            }),
        })
    }

    fn send(&self, command: Command) -> Result<(), TrackersError> {
        self.shared.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TrackersError::Busy,
            mpsc::error::TrySendError::Closed(_) => TrackersError::ShutDown,
        })
    }

    /// Starts announcing a torrent (event `started`). `tiers` as in the
    /// metainfo (BEP 12); `counters` are read at every announce. Adding a
    /// torrent that is already there does nothing.
    pub fn add_torrent(
        &self,
        info_hash: InfoHash,
        tiers: Vec<Vec<String>>,
        listen_port: u16,
        counters: Arc<TorrentCounters>,
    ) -> Result<(), TrackersError> {
        self.send(Command::Add { info_hash, tiers, listen_port, counters })
    }

    /// Reports an event (announced as soon as possible).
    pub fn event(&self, info_hash: InfoHash, event: TorrentEvent) -> Result<(), TrackersError> {
        match event {
            TorrentEvent::Completed => self.send(Command::Completed(info_hash)),
        }
    }

    /// Asks for an early announce, no earlier than the tracker's `min interval`.
    pub fn reannounce(&self, info_hash: InfoHash) -> Result<(), TrackersError> {
        self.send(Command::Reannounce(info_hash))
    }

    /// Stops announcing a torrent; trackers that knew it get `stopped`.
    pub fn remove(&self, info_hash: InfoHash) -> Result<(), TrackersError> {
        self.send(Command::Remove(info_hash))
    }

    /// Each tracker's last result for a torrent, in tier order (empty for an
    /// unknown torrent or before its first schedule step).
    pub fn status(&self, info_hash: &InfoHash) -> Vec<TrackerStatus> {
        let map = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        map.get(info_hash).cloned().unwrap_or_default()
    }

    /// Announce totals per tracker URL since start.
    pub fn counters(&self) -> Vec<(String, TrackerCounters)> {
        let map = self.shared.counters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(url, c)| (url.clone(), c.clone())).collect()
    }

    /// Announces `stopped` for every torrent and stops the thread, waiting
    /// at most `stop_timeout_ms + SHUTDOWN_MARGIN_MS`. Later calls return at once.
    pub fn shutdown(&self) -> Result<(), TrackersError> {
        let Some((thread, done)) =
            self.shared.thread.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return Ok(());
        };
        self.shared.shutdown.notify_one();
        let limit_ms = self.shared.stop_timeout_ms + SHUTDOWN_MARGIN_MS;
        match done.recv_timeout(Duration::from_millis(limit_ms)) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                Ok(())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(TrackersError::ShutdownTimedOut(limit_ms))
            }
        }
    }
}

/// What every torrent task shares.
struct Context {
    config: TrackerConfig,
    transports: Transports,
    sinks: Vec<PeerSink>,
    status: StatusMap,
    counters: CounterMap,
    /// Permits for [`ANNOUNCES_IN_FLIGHT_MAX`].
    in_flight: Arc<Semaphore>,
}

impl Context {
    /// One announce, waiting for a free slot first; counted per URL.
    async fn announce(
        &self,
        url: &str,
        request: &AnnounceRequest,
        timeout_ms: u64,
    ) -> Result<AnnounceReply, AnnounceError> {
        // The semaphore is never closed, so acquire only fails if it were.
        let _permit = self.in_flight.acquire().await;
        let result = self.transports.announce(url, request, timeout_ms).await;
        count_announce(&self.counters, url, &result);
        result
    }
}

struct TorrentTask {
    commands: mpsc::Sender<TorrentCommand>,
    join: JoinHandle<()>,
    /// Set (under the status lock) when the torrent is removed, so the task
    /// never republishes a status the dispatcher has just withdrawn.
    removed: Arc<AtomicBool>,
}

async fn dispatch(
    context: Arc<Context>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: Arc<Notify>,
) {
    let mut torrents: HashMap<InfoHash, TorrentTask> = HashMap::new();
    // Tasks of removed torrents still sending `stopped`.
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let command = tokio::select! {
            command = commands.recv() => command,
            _ = shutdown.notified() => None,
        };
        stopping.retain(|join| !join.is_finished());
        let Some(command) = command else { break };
        match command {
            Command::Add { info_hash, tiers, listen_port, counters } => {
                if torrents.contains_key(&info_hash) {
                    continue;
                }
                if torrents.len() >= TORRENTS_MAX {
                    tracing::warn!(%info_hash, "tracker subsystem full ({TORRENTS_MAX} torrents): not announced");
                    continue;
                }
                let (sender, receiver) = mpsc::channel(TORRENT_QUEUE_DEPTH);
                let removed = Arc::new(AtomicBool::new(false));
                let seed = context.config.shuffle_seed ^ u64::from_le_bytes(first8(&info_hash));
                let announcer =
                    Announcer::new(&tiers, seed, context.config.schedule, Instant::now());
                let task = run_torrent(
                    context.clone(),
                    info_hash,
                    announcer,
                    listen_port,
                    counters,
                    receiver,
                    removed.clone(),
                );
                let join = tokio::spawn(task);
                torrents.insert(info_hash, TorrentTask { commands: sender, join, removed });
            }
            Command::Completed(info_hash) => {
                forward(&torrents, &info_hash, TorrentCommand::Completed)
            }
            Command::Reannounce(info_hash) => {
                forward(&torrents, &info_hash, TorrentCommand::Reannounce)
            }
            Command::Remove(info_hash) => {
                if let Some(task) = torrents.remove(&info_hash) {
                    {
                        let mut status = context.status.lock().unwrap_or_else(|p| p.into_inner());
                        task.removed.store(true, Ordering::Relaxed);
                        status.remove(&info_hash);
                    }
                    // A full queue means the task is busy; Stop still has to
                    // arrive, so wait for room (bounded by the task's progress).
                    let _ = task.commands.send(TorrentCommand::Stop).await;
                    stopping.push(task.join);
                }
            }
        }
    }
    // Shutdown: every torrent announces `stopped`, bounded.
    for task in torrents.values() {
        let _ = task.commands.try_send(TorrentCommand::Stop);
    }
    let mut joins: Vec<JoinHandle<()>> = torrents.into_values().map(|t| t.join).collect();
    joins.append(&mut stopping);
    let limit = Duration::from_millis(context.config.stop_timeout_ms + SHUTDOWN_MARGIN_MS / 2);
    let _ = tokio::time::timeout(limit, async {
        for join in joins {
            let _ = join.await;
        }
    })
    .await;
}

fn first8(info_hash: &InfoHash) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&info_hash.0[..8]);
    out
}

fn forward(
    torrents: &HashMap<InfoHash, TorrentTask>,
    info_hash: &InfoHash,
    command: TorrentCommand,
) {
    if let Some(task) = torrents.get(info_hash) {
        // A full per-torrent queue already holds an equivalent request.
        let _ = task.commands.try_send(command);
    }
}

fn request_for(
    context: &Context,
    info_hash: InfoHash,
    listen_port: u16,
    counters: &TorrentCounters,
    job: &AnnounceJob,
) -> AnnounceRequest {
    AnnounceRequest {
        info_hash,
        peer_id: context.config.peer_id,
        port: listen_port,
        uploaded: counters.uploaded.load(Ordering::Relaxed),
        downloaded: counters.downloaded.load(Ordering::Relaxed),
        left: counters.left.load(Ordering::Relaxed),
        event: job.event,
        numwant: Some(if job.event == Event::Stopped { 0 } else { context.config.numwant }),
        key: context.config.key,
        tracker_id: job.tracker_id.clone(),
        encryption: context.config.encryption,
    }
}

async fn run_torrent(
    context: Arc<Context>,
    info_hash: InfoHash,
    mut announcer: Announcer,
    listen_port: u16,
    counters: Arc<TorrentCounters>,
    mut commands: mpsc::Receiver<TorrentCommand>,
    removed: Arc<AtomicBool>,
) {
    let sink = &context.sinks[info_hash.shard(context.sinks.len())];
    let mut known: HashSet<SocketAddr> = HashSet::new();
    let mut in_flight: Option<(u64, JoinHandle<Result<AnnounceReply, AnnounceError>>)> = None;
    loop {
        let now = Instant::now();
        if in_flight.is_none() {
            if let Some(job) = announcer.poll(now) {
                let request = request_for(&context, info_hash, listen_port, &counters, &job);
                let task_context = context.clone();
                let timeout_ms = context.config.announce_timeout_ms;
                let url = job.url.clone();
                let join =
                    tokio::spawn(
                        async move { task_context.announce(&url, &request, timeout_ms).await },
                    );
                in_flight = Some((job.id, join));
            }
        }
        publish(&context, info_hash, &announcer, &removed);
        let wake = announcer.next_wakeup().map(tokio::time::Instant::from_std);
        tokio::select! {
            result = async { (&mut in_flight.as_mut().expect("guarded").1).await },
                if in_flight.is_some() =>
            {
                let (id, _) = in_flight.take().expect("guarded");
                let now = Instant::now();
                match result {
                    Ok(Ok(reply)) => {
                        announcer.on_reply(id, &reply, now);
                        let peers = fresh_peers(&context, &reply, listen_port, &mut known);
                        if !peers.is_empty() {
                            sink.deliver(PeerBatch { info_hash, peers });
                        }
                    }
                    Ok(Err(error)) => announcer.on_failure(id, error.to_string(), now),
                    Err(join_error) => {
                        announcer.on_failure(id, format!("announce task failed: {join_error}"), now)
                    }
                }
            }
            command = commands.recv() => match command {
                Some(TorrentCommand::Completed) => announcer.completed(Instant::now()),
                Some(TorrentCommand::Reannounce) => announcer.reannounce(Instant::now()),
                Some(TorrentCommand::Stop) | None => {
                    if let Some((_, join)) = in_flight.take() {
                        join.abort();
                    }
                    stop(&context, info_hash, listen_port, &counters, &mut announcer).await;
                    return;
                }
            },
            _ = sleep_until_or_forever(wake) => {}
        }
    }
}

async fn sleep_until_or_forever(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends `stopped` to every tracker that knew us, concurrently, bounded.
async fn stop(
    context: &Arc<Context>,
    info_hash: InfoHash,
    listen_port: u16,
    counters: &TorrentCounters,
    announcer: &mut Announcer,
) {
    let jobs = announcer.stop();
    let timeout_ms = context.config.stop_timeout_ms;
    let mut tasks = Vec::with_capacity(jobs.len());
    for job in jobs {
        let request = request_for(context, info_hash, listen_port, counters, &job);
        let task_context = context.clone();
        tasks.push(tokio::spawn(async move {
            let result = task_context.announce(&job.url, &request, timeout_ms).await;
            if let Err(error) = result {
                tracing::debug!(url = %job.url, %error, "stopped announce failed");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// The reply's peers minus our own address and peers already delivered.
fn fresh_peers(
    context: &Context,
    reply: &AnnounceReply,
    listen_port: u16,
    known: &mut HashSet<SocketAddr>,
) -> Vec<SocketAddr> {
    let mut own_ips = context.config.own_ips.clone();
    own_ips.extend(reply.external_ip);
    let mut fresh = Vec::new();
    for peer in &reply.peers {
        if peer.port() == 0 || is_own_address(peer, listen_port, &own_ips) {
            continue;
        }
        if known.len() >= context.config.known_peers_max {
            // Forgetting old peers only risks a duplicate delivery later.
            known.clear();
        }
        if known.insert(*peer) {
            fresh.push(*peer);
        }
    }
    fresh
}

fn publish(context: &Context, info_hash: InfoHash, announcer: &Announcer, removed: &AtomicBool) {
    if announcer.is_stopped() {
        return;
    }
    let status = announcer.status();
    let mut map = context.status.lock().unwrap_or_else(|p| p.into_inner());
    if !removed.load(Ordering::Relaxed) {
        map.insert(info_hash, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_address_is_recognised() {
        let own: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(is_own_address(&"127.0.0.1:6881".parse().unwrap(), 6881, &[]));
        assert!(is_own_address(&"[::1]:6881".parse().unwrap(), 6881, &[]));
        assert!(is_own_address(&"203.0.113.9:6881".parse().unwrap(), 6881, &[own]));
        assert!(!is_own_address(&"127.0.0.1:6882".parse().unwrap(), 6881, &[]));
        assert!(!is_own_address(&"10.0.0.1:6881".parse().unwrap(), 6881, &[own]));
    }

    #[test]
    fn peer_ids_are_azureus_style() {
        let id = generate_peer_id();
        assert!(id.starts_with(b"-RB0100-"));
        assert!(id[8..].iter().all(u8::is_ascii_alphanumeric));
        assert_ne!(generate_peer_id(), id);
    }

    #[test]
    fn a_full_sink_drops_and_counts() {
        let (sink, mut receiver) = PeerSink::channel(1);
        let batch = PeerBatch {
            info_hash: InfoHash([1; 20]),
            peers: vec!["10.0.0.1:1".parse().unwrap(); 3],
        };
        sink.deliver(batch.clone());
        sink.deliver(batch.clone());
        assert_eq!(sink.dropped_peers(), 3);
        assert_eq!(receiver.try_recv().unwrap(), batch);
    }

    #[test]
    fn start_needs_a_sink() {
        assert!(matches!(
            TrackerHandle::start(TrackerConfig::new(generate_peer_id()), Vec::new()),
            Err(TrackersError::NoSinks)
        ));
    }
}
