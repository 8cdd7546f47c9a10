//! The incoming peer listener: accepts connections, reads each one's 68-byte
//! handshake, and hands the connection to whoever owns the torrent.
//!
//! Layer: driver. Runs on its own thread with an ordinary current-thread tokio
//! runtime, not on a shard: tokio-uring's runtime hangs on drop while an
//! `accept` is outstanding, and a shard must never wait on strangers. The
//! session passes a `route` callback that sends the connection to the shard
//! that owns `handshake.info_hash`; this module knows nothing of shards.
//!
//! Invariants:
//! * at most `max_pending_handshakes` handshakes are being read at once, and
//!   at most `max_pending_handshakes_per_ip` from one IP; connections past
//!   either are closed at once (a flood costs nothing, and one host holding
//!   idle sockets cannot shut everyone else out);
//! * a handshake that does not arrive within `handshake_timeout` closes the
//!   connection; the timeout is on the handshake, and the socket is handed
//!   over only after the read completed, so no read is ever left in flight;
//! * [`Listener::shutdown`] stops accepting and joins the thread;
//! * the first 20 bytes tell a plaintext handshake (`\x13BitTorrent
//!   protocol`) from an MSE one; the MSE responder ([`super::mse_io`]) runs
//!   here under the same permit and timeout, and the connection is handed on
//!   with its ciphers and the payload already read, decrypted.

use super::mse_io::{self, HandshakeIo, PeerCipher, TorrentKeys};
use super::peer_io::IncomingStream;
use crate::mse::EncryptionPolicy;
use crate::wire::{decode_handshake, Handshake, HandshakeDecoded, HANDSHAKE_LEN};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// The kernel's accept backlog for each listening socket.
pub const LISTEN_BACKLOG: i32 = 1024;

/// A connection whose handshake arrived: for the torrent's shard.
#[derive(Debug)]
pub struct IncomingPeer {
    /// A blocking-mode std socket ready for adoption by a shard's ring, or
    /// a uTP stream from the UDP driver.
    pub stream: IncomingStream,
    pub addr: SocketAddr,
    pub handshake: Handshake,
    /// Payload ciphers (plaintext unless MSE selected RC4).
    pub cipher: PeerCipher,
    /// Payload that arrived after the handshake, decrypted (MSE only).
    pub leftover: Vec<u8>,
}

/// Where accepted connections go. Returns false when nobody wants it (the
/// connection is then closed).
pub type Route = Box<dyn Fn(IncomingPeer) -> bool + Send + Sync>;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no address to listen on")]
    NoAddress,
    #[error("cannot start the listener thread: {0}")]
    Start(std::io::Error),
}

/// Settings of the listener.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// IPs to listen on, all with the same port.
    pub ips: Vec<IpAddr>,
    /// 0 picks a free port (the same one for every IP).
    pub port: u16,
    pub max_pending_handshakes: usize,
    /// Handshakes being read from one IP at most.
    pub max_pending_handshakes_per_ip: usize,
    pub handshake_timeout: Duration,
    /// Which handshakes are accepted: plaintext, MSE, or both.
    pub encryption: EncryptionPolicy,
    /// Torrents an MSE responder may find by their req2 hash.
    pub torrents: Arc<TorrentKeys>,
}

/// Pending handshakes per IP (its entries number at most the total pending
/// bound: an IP is listed only while it has one).
#[derive(Default)]
struct PerIp {
    pending: Mutex<HashMap<IpAddr, usize>>,
}

/// One pending handshake's place in its IP's count, given back when dropped.
struct IpPermit {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_acquire(table: &Arc<PerIp>, ip: IpAddr, max: usize) -> Option<IpPermit> {
        let mut pending = table.pending.lock().unwrap_or_else(|e| e.into_inner());
        let count = pending.entry(ip).or_insert(0);
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(IpPermit { table: table.clone(), ip })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut pending = self.table.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = pending.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.ip);
            }
        }
    }
}

/// The running listener.
pub struct Listener {
    port: u16,
    shutdown: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // One socket per family, so [::] does not also claim IPv4.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

impl Listener {
    /// Binds every IP (the first fixes the port when `port` is 0) and starts
    /// accepting. An IPv6 address that cannot be bound (no IPv6 on the host)
    /// is skipped with a warning when another address is bound.
    pub fn start(config: ListenConfig, route: Route) -> Result<Listener, ListenError> {
        let mut port = config.port;
        let mut sockets = Vec::new();
        for ip in &config.ips {
            let addr = SocketAddr::new(*ip, port);
            match bind(addr) {
                Ok(socket) => {
                    port = socket.local_addr().map_err(ListenError::Start)?.port();
                    sockets.push(socket);
                }
                Err(source) if ip.is_ipv6() && !config.ips.iter().all(|i| i.is_ipv6()) => {
                    tracing::warn!(%addr, %source, "not listening on IPv6");
                }
                Err(source) => return Err(ListenError::Bind { addr, source }),
            }
        }
        if sockets.is_empty() {
            return Err(ListenError::NoAddress);
        }
        let shutdown = Arc::new(Notify::new());
        let stop = shutdown.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ListenError::Start)?;
        let thread = std::thread::Builder::new()
            .name("ringbit-listener".into())
            .spawn(move || {
                runtime.block_on(accept_all(sockets, config, Arc::new(route), stop));
            })
            .map_err(ListenError::Start)?;
        Ok(Listener { port, shutdown, thread: Some(thread) })
    }

    /// The port every address listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting and joins the thread (pending handshakes are dropped).
    pub fn shutdown(&mut self) {
        self.shutdown.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_all(
    sockets: Vec<std::net::TcpListener>,
    config: ListenConfig,
    route: Arc<Route>,
    stop: Arc<Notify>,
) {
    let pending = Arc::new(Semaphore::new(config.max_pending_handshakes.max(1)));
    let per_ip = Arc::new(PerIp::default());
    let mut tasks = tokio::task::JoinSet::new();
    for socket in sockets {
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(error) => {
                tracing::error!(%error, "listener socket");
                continue;
            }
        };
        let pending = pending.clone();
        let per_ip = per_ip.clone();
        let max_per_ip = config.max_pending_handshakes_per_ip;
        let route = route.clone();
        let timeout = config.handshake_timeout;
        let (encryption, torrents) = (config.encryption, config.torrents.clone());
        tasks.spawn(async move {
            loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Per IP first: a busy host does not use up the total.
                let Some(ip_permit) = PerIp::try_acquire(&per_ip, addr.ip(), max_per_ip) else {
                    tracing::debug!(%addr, "too many pending handshakes from this IP: closed");
                    continue;
                };
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::debug!(%addr, "too many pending handshakes: closed");
                    continue;
                };
                let route = route.clone();
                let torrents = torrents.clone();
                tokio::spawn(async move {
                    let _permits = (permit, ip_permit);
                    match read_handshake(stream, timeout, encryption, &torrents).await {
                        Ok((stream, handshake, cipher, leftover)) => {
                            let stream = IncomingStream::Tcp(stream);
                            let peer = IncomingPeer { stream, addr, handshake, cipher, leftover };
                            if !route(peer) {
                                tracing::debug!(%addr, "no torrent for handshake");
                            }
                        }
                        Err(reason) => tracing::debug!(%addr, reason, "handshake failed"),
                    }
                });
            }
        });
    }
    stop.notified().await;
    tasks.shutdown().await;
}

type Accepted = (std::net::TcpStream, Handshake, PeerCipher, Vec<u8>);

async fn read_handshake(
    mut stream: tokio::net::TcpStream,
    timeout: Duration,
    encryption: EncryptionPolicy,
    torrents: &TorrentKeys,
) -> Result<Accepted, String> {
    let (handshake, cipher, leftover) =
        match tokio::time::timeout(timeout, negotiate(&mut stream, encryption, torrents)).await {
            Err(_) => return Err(format!("no handshake within {timeout:?}")),
            Ok(result) => result?,
        };
    let stream = stream.into_std().map_err(|e| e.to_string())?;
    // io_uring reads and writes on the shard expect a blocking-mode socket.
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    Ok((stream, handshake, cipher, leftover))
}

/// Reads a plaintext handshake, or answers an MSE one and reads the
/// handshake inside it, as the policy allows (over TCP here, over uTP in
/// the UDP driver). The caller bounds the time.
pub async fn negotiate<S: HandshakeIo>(
    stream: &mut S,
    encryption: EncryptionPolicy,
    torrents: &TorrentKeys,
) -> Result<(Handshake, PeerCipher, Vec<u8>), String> {
    // 20 bytes: the protocol string of a plaintext handshake, or the start
    // of an MSE public key (which is at least 96 bytes).
    let mut buf = [0u8; HANDSHAKE_LEN];
    mse_io::read_exact(stream, &mut buf[..20]).await.map_err(|e| e.to_string())?;
    let plaintext = buf[0] == 19 && &buf[1..20] == crate::wire::PROTOCOL;
    if !plaintext {
        if !encryption.uses_mse() {
            return Err("not a BitTorrent handshake (encryption disabled)".into());
        }
        let done = mse_io::respond(stream, &buf[..20], encryption, torrents)
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(rc4 = done.cipher.is_rc4(), "incoming MSE handshake done");
        return Ok((done.handshake, done.cipher, done.leftover));
    }
    if !encryption.accepts_plaintext() {
        return Err("plaintext handshake refused (encryption required)".into());
    }
    mse_io::read_exact(stream, &mut buf[20..]).await.map_err(|e| e.to_string())?;
    match decode_handshake(&buf) {
        Ok(HandshakeDecoded::Done(h)) => Ok((h, PeerCipher::plaintext(), Vec::new())),
        Ok(HandshakeDecoded::NeedMore(_)) => Err("short handshake".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::InfoHash;
    use crate::wire::PeerId;
    use std::io::Write;
    use std::sync::Mutex;

    #[test]
    fn routes_complete_handshakes_and_drops_the_rest() {
        let got: Arc<Mutex<Vec<IncomingPeer>>> = Arc::default();
        let sink = got.clone();
        let mut listener = Listener::start(
            ListenConfig {
                ips: vec!["127.0.0.1".parse().unwrap()],
                port: 0,
                max_pending_handshakes: 4,
                max_pending_handshakes_per_ip: 4,
                handshake_timeout: Duration::from_millis(300),
                encryption: EncryptionPolicy::Prefer,
                torrents: Arc::default(),
            },
            Box::new(move |peer| {
                sink.lock().unwrap().push(peer);
                true
            }),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], listener.port()));
        // A good handshake followed by the first message.
        let hs = Handshake::ours(InfoHash([9; 20]), PeerId::ours([1; 12]));
        let mut good = std::net::TcpStream::connect(addr).unwrap();
        good.write_all(&hs.to_bytes()).unwrap();
        good.write_all(&[0, 0, 0, 1, 2]).unwrap();
        // Garbage, and a silent peer that must time out.
        let mut bad = std::net::TcpStream::connect(addr).unwrap();
        bad.write_all(&[0xff; 68]).unwrap();
        let _silent = std::net::TcpStream::connect(addr).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut got = got.lock().unwrap();
        assert_eq!(got.len(), 1, "only the good handshake is routed");
        assert_eq!(got[0].handshake.info_hash, InfoHash([9; 20]));
        // The bytes after the handshake are still in the socket for the shard.
        let mut next = [0u8; 5];
        let IncomingStream::Tcp(stream) = &mut got[0].stream else { panic!("a TCP stream") };
        std::io::Read::read_exact(stream, &mut next).unwrap();
        assert_eq!(next, [0, 0, 0, 1, 2]);
        drop(got);
        listener.shutdown();
    }

    /// Goal: one IP holding idle sockets uses up only its own share of the
    /// pending handshakes; another IP still gets through at once.
    /// Setup: a listener on 127.0.0.1 allowing 2 pending handshakes per IP
    /// and 16 in total; 20 silent connections from 127.0.0.2.
    /// Check: a handshake from 127.0.0.3 is routed while they are held, and
    /// the surplus silent connections are closed without waiting.
    #[test]
    fn one_ip_cannot_take_every_pending_handshake() {
        let got: Arc<Mutex<Vec<IncomingPeer>>> = Arc::default();
        let sink = got.clone();
        let mut listener = Listener::start(
            ListenConfig {
                ips: vec!["127.0.0.1".parse().unwrap()],
                port: 0,
                max_pending_handshakes: 16,
                max_pending_handshakes_per_ip: 2,
                handshake_timeout: Duration::from_secs(20),
                encryption: EncryptionPolicy::Prefer,
                torrents: Arc::default(),
            },
            Box::new(move |peer| {
                sink.lock().unwrap().push(peer);
                true
            }),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], listener.port()));
        let from = |ip: [u8; 4]| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
            socket.connect_timeout(&addr.into(), Duration::from_secs(5)).unwrap();
            std::net::TcpStream::from(socket)
        };
        let mut idle: Vec<std::net::TcpStream> = (0..20).map(|_| from([127, 0, 0, 2])).collect();
        let hs = Handshake::ours(InfoHash([5; 20]), PeerId::ours([2; 12]));
        let mut good = from([127, 0, 0, 3]);
        good.write_all(&hs.to_bytes()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(got.lock().unwrap().len(), 1, "the other IP's handshake was routed");
        // All but 2 of the idle sockets were closed at accept (EOF on read).
        let mut closed = 0;
        for s in &mut idle {
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut b = [0u8; 1];
            if let Ok(0) = std::io::Read::read(s, &mut b) {
                closed += 1;
            }
        }
        assert_eq!(closed, 18, "surplus connections from one IP are closed at once");
        listener.shutdown();
    }
}
