//! The DHT driver: one thread (`ringbit-dht`) with a current-thread tokio
//! runtime owns the UDP sockets and drives the pure [`Dht`] core with
//! datagrams and the clock; peers it finds go to the owning shard through
//! the same per-shard [`PeerSink`]s the trackers use.
//!
//! Layer: driver. Never on a shard thread; nothing a shard or the session
//! calls blocks (commands go through a bounded queue with `try_send`).
//!
//! One UDP socket per address family, bound to the peer port, which uTP and
//! UDP trackers may later share: datagrams are demultiplexed by content
//! ([`is_dht_datagram`]: bencode starts with `d`); anything else goes to the
//! [`ForeignDatagrams`] hook when one is set, else it is counted and dropped.
//!
//! Invariants: a datagram longer than [`krpc::DATAGRAM_BYTES_MAX`] is never
//! parsed; sends use `try_send_to` (a full socket buffer drops the datagram,
//! as UDP would); the state file is read with a size bound and written
//! atomically (temporary file + rename) every [`STATE_SAVE_INTERVAL_SECS`]
//! and at shutdown.

use super::trackers::{is_own_address, PeerBatch, PeerSink};
use crate::dht::state::STATE_FILE_BYTES_MAX;
use crate::dht::{krpc, Dht, DhtConfig, DhtEvent, DhtState, DhtStats};
use crate::metainfo::InfoHash;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// The routers a node asks first (2026: these two answer; router.utorrent.com
/// and router.bittorrent.com no longer do reliably).
pub const DEFAULT_BOOTSTRAP: &[&str] = &["dht.libtorrent.org:25401", "dht.transmissionbt.com:6881"];
/// Overrides [`DEFAULT_BOOTSTRAP`] when set: comma-separated `HOST:PORT`s, or
/// `none` for no routers (tests set it so nothing ever leaves loopback).
pub const BOOTSTRAP_ENV: &str = "RINGBIT_DHT_BOOTSTRAP";
/// Commands queued from the session and shards at most.
pub const COMMAND_QUEUE_DEPTH: usize = 4096;
/// Receive buffer: a larger datagram is truncated, then refused by size.
const RECEIVE_BUFFER_BYTES: usize = 65_536;
/// Name of the state file in the state directory.
pub const STATE_FILE_NAME: &str = "dht.dat";
pub const STATE_SAVE_INTERVAL_SECS: u64 = 10 * 60;
/// Bound on resolving each bootstrap host name.
pub const RESOLVE_TIMEOUT_MS: u64 = 5_000;
/// Longest [`DhtHandle::shutdown`] waits for the thread.
pub const SHUTDOWN_TIMEOUT_MS: u64 = 2_000;
/// How often the published statistics are refreshed.
const STATS_INTERVAL_MS: u64 = 1_000;

/// Receives the datagrams on the shared port that are not DHT messages
/// (uTP, UDP tracker replies), with the socket's local address.
pub type ForeignDatagrams = Arc<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

/// True when a datagram on the shared port is for the DHT: KRPC is a
/// bencoded dictionary. uTP (version 1 in the low nibble of byte 0) and
/// UDP tracker replies (a 4-byte action 0..=3) never start with `d` (0x64).
pub fn is_dht_datagram(datagram: &[u8]) -> bool {
    datagram.first() == Some(&b'd')
}

/// The driver's settings.
#[derive(Clone)]
pub struct DhtOptions {
    /// UDP port (the peer port; 0 picks one).
    pub port: u16,
    /// Addresses to bind (the first IPv4 and the first IPv6 one are used).
    pub bind_ips: Vec<IpAddr>,
    /// `HOST:PORT` routers and nodes to bootstrap from.
    pub bootstrap: Vec<String>,
    /// Where `dht.dat` lives; `None`: nothing is persisted.
    pub state_dir: Option<PathBuf>,
    /// The core's settings (its `bootstrap` is filled from `bootstrap`).
    pub core: DhtConfig,
    pub foreign: Option<ForeignDatagrams>,
}

impl std::fmt::Debug for DhtOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtOptions")
            .field("port", &self.port)
            .field("bind_ips", &self.bind_ips)
            .field("bootstrap", &self.bootstrap)
            .field("state_dir", &self.state_dir)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl Default for DhtOptions {
    fn default() -> DhtOptions {
        DhtOptions {
            port: 6881,
            bind_ips: vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([0u16; 8])],
            bootstrap: default_bootstrap(),
            state_dir: None,
            core: DhtConfig { seed: rand::random(), ..DhtConfig::default() },
            foreign: None,
        }
    }
}

/// [`DEFAULT_BOOTSTRAP`], or what [`BOOTSTRAP_ENV`] says.
pub fn default_bootstrap() -> Vec<String> {
    match std::env::var(BOOTSTRAP_ENV) {
        Ok(value) => parse_bootstrap_list(&value),
        Err(_) => DEFAULT_BOOTSTRAP.iter().map(|s| s.to_string()).collect(),
    }
}

/// `a:1,b:2` -> `["a:1", "b:2"]`; `none` or empty -> no routers.
pub fn parse_bootstrap_list(value: &str) -> Vec<String> {
    if value.trim().eq_ignore_ascii_case("none") {
        return Vec::new();
    }
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("cannot bind a DHT UDP socket: {0}")]
    Bind(String),
    #[error("could not start the DHT thread: {0}")]
    Start(String),
    #[error("the DHT command queue is full ({COMMAND_QUEUE_DEPTH} commands)")]
    Busy,
    #[error("the DHT is shut down")]
    ShutDown,
}

enum Command {
    AddTorrent { info_hash: InfoHash, port: u16 },
    RemoveTorrent(InfoHash),
    LookupNow(InfoHash),
    AddNode(SocketAddr),
}

/// Published by the thread; read by `/metrics` and tests.
#[derive(Clone, Debug, Default)]
pub struct DhtReport {
    pub stats: DhtStats,
    /// Peers handed to shards (after removing our own address).
    pub peers_delivered: u64,
    /// Datagrams on the port that were not DHT messages.
    pub foreign_datagrams: u64,
    pub send_errors: u64,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    report: Mutex<DhtReport>,
    local_addrs: Vec<SocketAddr>,
    stop: tokio::sync::Notify,
    thread: Mutex<Option<(std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<()>)>>,
}

/// The DHT as the session and the shards see it. `Send + Clone`; every
/// method returns at once.
#[derive(Clone)]
pub struct DhtHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DhtHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtHandle").field("local_addrs", &self.shared.local_addrs).finish()
    }
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds `port` on `ip`, or any port when that one is taken (the TCP
/// listener picked the number; UDP may have it in use).
fn bind_family(ip: IpAddr, port: u16) -> Option<std::net::UdpSocket> {
    match bind(ip, port) {
        Ok(socket) => Some(socket),
        Err(error) if port != 0 => {
            tracing::warn!(%ip, port, %error, "DHT: UDP port taken, using another");
            bind(ip, 0).ok()
        }
        Err(error) => {
            tracing::warn!(%ip, %error, "DHT: cannot bind UDP");
            None
        }
    }
}

fn load_state(dir: &Path) -> Option<DhtState> {
    let path = dir.join(STATE_FILE_NAME);
    let file = std::fs::File::open(&path).ok()?;
    let mut bytes = Vec::new();
    file.take(STATE_FILE_BYTES_MAX).read_to_end(&mut bytes).ok()?;
    match DhtState::decode(&bytes) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "DHT: ignoring the state file");
            None
        }
    }
}

fn save_state(dir: &Path, state: &DhtState) {
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut file, &state.encode())?;
        file.persist(dir.join(STATE_FILE_NAME)).map_err(|e| e.error)?;
        Ok(())
    })();
    if let Err(error) = result {
        tracing::warn!(dir = %dir.display(), %error, "DHT: cannot save the state file");
    }
}

impl DhtHandle {
    /// Binds the sockets and starts the thread. `sinks[i]` receives the
    /// peers of shard `i`'s torrents; `listen_port` is our TCP peer port
    /// (peers at our own address are not delivered).
    pub fn start(
        options: DhtOptions,
        sinks: Vec<PeerSink>,
        listen_port: u16,
    ) -> Result<DhtHandle, DhtError> {
        DhtHandle::start_on(options, sinks, listen_port, None)
    }

    /// [`DhtHandle::start`], sharing the peer port with the UDP driver
    /// when `shared` is given: its socket is then used for sending only,
    /// and the DHT's datagrams arrive through the inbox (the UDP driver
    /// receives every datagram of the port and demultiplexes them). IPv6
    /// still gets a socket of its own.
    pub fn start_on(
        mut options: DhtOptions,
        sinks: Vec<PeerSink>,
        listen_port: u16,
        shared: Option<(std::net::UdpSocket, crate::net::udp::DhtDatagrams)>,
    ) -> Result<DhtHandle, DhtError> {
        let v4_ip = options.bind_ips.iter().copied().find(IpAddr::is_ipv4);
        let v6_ip = options.bind_ips.iter().copied().find(IpAddr::is_ipv6);
        let (v4, inbox) = match shared {
            Some((socket, inbox)) => (Some(socket), Some(inbox)),
            None => (v4_ip.and_then(|ip| bind_family(ip, options.port)), None),
        };
        let v6 = v6_ip.and_then(|ip| bind_family(ip, options.port));
        if v4.is_none() && v6.is_none() {
            return Err(DhtError::Bind(format!("no usable address in {:?}", options.bind_ips)));
        }
        options.core.ipv4 = v4.is_some();
        options.core.ipv6 = v6.is_some();
        let local_addrs: Vec<SocketAddr> =
            [&v4, &v6].into_iter().flatten().filter_map(|s| s.local_addr().ok()).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DhtError::Start(e.to_string()))?;
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_DEPTH);
        let (done_sender, done) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            commands,
            report: Mutex::new(DhtReport::default()),
            local_addrs,
            stop: tokio::sync::Notify::new(),
            thread: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ringbit-dht".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let to_tokio = |s: Option<std::net::UdpSocket>| {
                        s.and_then(|s| match UdpSocket::from_std(s) {
                            Ok(s) => Some(s),
                            Err(error) => {
                                tracing::warn!(%error, "DHT: socket unusable");
                                None
                            }
                        })
                    };
                    let driver = Driver {
                        v4: to_tokio(v4),
                        v6: to_tokio(v6),
                        sinks,
                        listen_port,
                        shared: thread_shared,
                        report: DhtReport::default(),
                        foreign: options.foreign.clone(),
                    };
                    driver.run(options, receiver, inbox).await;
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
                let _ = done_sender.send(());
            })
            .map_err(|e| DhtError::Start(e.to_string()))?;
        *shared.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some((thread, done));
        Ok(DhtHandle { shared })
    }

    fn send(&self, command: Command) -> Result<(), DhtError> {
        self.shared.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => DhtError::Busy,
            mpsc::error::TrySendError::Closed(_) => DhtError::ShutDown,
        })
    }

    /// Announces a torrent (never call this for a private one, BEP 27).
    pub fn add_torrent(&self, info_hash: InfoHash, port: u16) -> Result<(), DhtError> {
        self.send(Command::AddTorrent { info_hash, port })
    }

    pub fn remove_torrent(&self, info_hash: InfoHash) -> Result<(), DhtError> {
        self.send(Command::RemoveTorrent(info_hash))
    }

    /// Looks the torrent up again as soon as the start rate allows.
    pub fn lookup_now(&self, info_hash: InfoHash) -> Result<(), DhtError> {
        self.send(Command::LookupNow(info_hash))
    }

    /// A node to learn from: a peer's `PORT` message (its IP, that port).
    pub fn add_node(&self, addr: SocketAddr) -> Result<(), DhtError> {
        self.send(Command::AddNode(addr))
    }

    /// The sockets' addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.shared.local_addrs
    }

    /// The latest published statistics (refreshed every second).
    pub fn report(&self) -> DhtReport {
        self.shared.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Saves the state and stops the thread, waiting at most
    /// [`SHUTDOWN_TIMEOUT_MS`]. Later calls return at once.
    pub fn shutdown(&self) {
        let Some((thread, done)) =
            self.shared.thread.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        self.shared.stop.notify_one();
        if done.recv_timeout(Duration::from_millis(SHUTDOWN_TIMEOUT_MS)).is_ok() {
            let _ = thread.join();
        }
    }
}

struct Driver {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    sinks: Vec<PeerSink>,
    listen_port: u16,
    shared: Arc<Shared>,
    report: DhtReport,
    foreign: Option<ForeignDatagrams>,
}

async fn resolve(hosts: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for host in hosts {
        let lookup = tokio::net::lookup_host(host.as_str());
        match tokio::time::timeout(Duration::from_millis(RESOLVE_TIMEOUT_MS), lookup).await {
            Ok(Ok(addrs)) => out.extend(addrs),
            Ok(Err(error)) => tracing::warn!(%host, %error, "DHT: cannot resolve bootstrap node"),
            Err(_) => tracing::warn!(%host, "DHT: resolving the bootstrap node timed out"),
        }
    }
    out
}

impl Driver {
    async fn run(
        mut self,
        options: DhtOptions,
        mut commands: mpsc::Receiver<Command>,
        mut inbox: Option<crate::net::udp::DhtDatagrams>,
    ) {
        // With an inbox the v4 socket is shared: the UDP driver reads it.
        let read_v4 = inbox.is_none();
        let mut config = options.core.clone();
        config.bootstrap = resolve(&options.bootstrap).await;
        // Saved nodes are reused, saved ids are not: several processes may
        // share a state directory (tests do), and two nodes with one id
        // refuse each other. A BEP 42 id follows the external IP anyway.
        let state = options.state_dir.as_deref().and_then(load_state).map(|state| DhtState {
            id: None,
            id6: None,
            ..state
        });
        let mut dht = Dht::new(config, state, Instant::now());
        let mut buffer4 = vec![0u8; RECEIVE_BUFFER_BYTES];
        let mut buffer6 = vec![0u8; RECEIVE_BUFFER_BYTES];
        let mut next_save = Instant::now() + Duration::from_secs(STATE_SAVE_INTERVAL_SECS);
        let mut next_stats = Instant::now();
        dht.handle_timeout(Instant::now());
        loop {
            self.flush(&mut dht);
            let now = Instant::now();
            if now >= next_stats {
                next_stats = now + Duration::from_millis(STATS_INTERVAL_MS);
                self.publish(&dht);
            }
            if now >= next_save {
                next_save = now + Duration::from_secs(STATE_SAVE_INTERVAL_SECS);
                if let Some(dir) = &options.state_dir {
                    save_state(dir, &dht.export());
                }
            }
            let wake = dht.poll_timeout().min(next_stats).min(next_save);
            tokio::select! {
                received = recv(self.v4.as_ref().filter(|_| read_v4), &mut buffer4) => {
                    if let Some((len, from)) = received {
                        self.datagram(&mut dht, from, &buffer4[..len], len);
                    }
                }
                received = recv(self.v6.as_ref(), &mut buffer6) => {
                    if let Some((len, from)) = received {
                        self.datagram(&mut dht, from, &buffer6[..len], len);
                    }
                }
                Some((from, bytes)) = recv_inbox(&mut inbox) => {
                    self.datagram(&mut dht, from, &bytes, bytes.len());
                }
                command = commands.recv() => {
                    let now = Instant::now();
                    match command {
                        Some(Command::AddTorrent { info_hash, port }) => {
                            if !dht.add_torrent(info_hash, port, now) {
                                tracing::warn!(%info_hash, "DHT: too many torrents, not announced");
                            }
                        }
                        Some(Command::RemoveTorrent(info_hash)) => dht.remove_torrent(&info_hash),
                        Some(Command::LookupNow(info_hash)) => dht.lookup_now(&info_hash, now),
                        Some(Command::AddNode(addr)) => dht.add_node(addr, now),
                        None => break,
                    }
                    dht.handle_timeout(now);
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    dht.handle_timeout(Instant::now());
                }
                _ = self.shared.stop.notified() => break,
            }
        }
        self.publish(&dht);
        if let Some(dir) = &options.state_dir {
            save_state(dir, &dht.export());
        }
    }

    fn datagram(&mut self, dht: &mut Dht, from: SocketAddr, bytes: &[u8], len: usize) {
        if !is_dht_datagram(bytes) {
            self.report.foreign_datagrams += 1;
            if let Some(foreign) = &self.foreign {
                foreign(from, bytes);
            }
            return;
        }
        if len >= RECEIVE_BUFFER_BYTES {
            // Truncated by the kernel: far over the size limit anyway.
            return dht.handle_datagram(
                from,
                &[b'd'; krpc::DATAGRAM_BYTES_MAX + 1],
                Instant::now(),
            );
        }
        dht.handle_datagram(from, bytes, Instant::now());
    }

    fn flush(&mut self, dht: &mut Dht) {
        while let Some((to, datagram)) = dht.poll_transmit() {
            let socket = if to.is_ipv4() { &self.v4 } else { &self.v6 };
            match socket {
                Some(socket) => {
                    if socket.try_send_to(&datagram, to).is_err() {
                        self.report.send_errors += 1;
                    }
                }
                None => self.report.send_errors += 1,
            }
            dht.recycle(datagram);
        }
        while let Some(event) = dht.poll_event() {
            match event {
                DhtEvent::Peers { info_hash, peers } => {
                    let peers: Vec<SocketAddr> = peers
                        .into_iter()
                        .filter(|p| !is_own_address(p, self.listen_port, &[]))
                        .collect();
                    if peers.is_empty() || self.sinks.is_empty() {
                        continue;
                    }
                    self.report.peers_delivered += peers.len() as u64;
                    tracing::debug!(%info_hash, count = peers.len(), "DHT: peers found");
                    self.sinks[info_hash.shard(self.sinks.len())]
                        .deliver(PeerBatch { info_hash, peers });
                }
                DhtEvent::LookupDone { info_hash, family, responded, announced } => {
                    tracing::debug!(%info_hash, ?family, responded, announced, "DHT: lookup done");
                }
                DhtEvent::IdChanged { family, external_ip } => {
                    tracing::info!(?family, %external_ip, "DHT: node id follows the external IP (BEP 42)");
                }
            }
        }
    }

    fn publish(&mut self, dht: &Dht) {
        self.report.stats = dht.stats();
        *self.shared.report.lock().unwrap_or_else(|p| p.into_inner()) = self.report.clone();
    }
}

/// Receives on `socket`, or waits forever when there is none. Errors (an
/// ICMP port unreachable surfacing as ECONNREFUSED) are skipped.
async fn recv(socket: Option<&UdpSocket>, buffer: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buffer).await.ok(),
        None => std::future::pending().await,
    }
}

/// The next datagram the UDP driver passed on, or never without an inbox
/// (or once the driver is gone).
async fn recv_inbox(
    inbox: &mut Option<crate::net::udp::DhtDatagrams>,
) -> Option<(SocketAddr, Vec<u8>)> {
    match inbox {
        Some(inbox) => match inbox.recv().await {
            Some(datagram) => Some(datagram),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demultiplexing_by_content() {
        assert!(is_dht_datagram(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"));
        assert!(!is_dht_datagram(&[0x41, 0, 0, 0])); // uTP v1 ST_SYN
        assert!(!is_dht_datagram(&[0, 0, 0, 1, 0, 0, 0, 0])); // UDP tracker announce reply
        assert!(!is_dht_datagram(b""));
    }

    #[test]
    fn bootstrap_lists() {
        assert_eq!(parse_bootstrap_list("none"), Vec::<String>::new());
        assert_eq!(parse_bootstrap_list(""), Vec::<String>::new());
        assert_eq!(parse_bootstrap_list("a:1, b:2"), vec!["a:1".to_string(), "b:2".to_string()]);
    }

    #[test]
    fn two_drivers_answer_each_other_on_loopback() {
        let options = |bootstrap: Vec<String>| DhtOptions {
            port: 0,
            bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
            bootstrap,
            state_dir: None,
            core: DhtConfig { seed: rand::random(), ..DhtConfig::default() },
            foreign: None,
        };
        let a = DhtHandle::start(options(Vec::new()), Vec::new(), 1).unwrap();
        let a_addr = a.local_addrs()[0];
        let b = DhtHandle::start(options(vec![a_addr.to_string()]), Vec::new(), 2).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && (a.report().stats.nodes_v4 == 0 || b.report().stats.nodes_v4 == 0)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(a.report().stats.nodes_v4, 1, "{:?}", a.report());
        assert_eq!(b.report().stats.nodes_v4, 1, "{:?}", b.report());
        a.shutdown();
        b.shutdown();
    }
}
