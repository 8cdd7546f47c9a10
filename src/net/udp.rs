//! The UDP driver: one thread (`ringbit-udp`) owns the UDP socket on the
//! peer port, runs the sans-IO uTP [`Endpoint`] on it, and hands each uTP
//! connection to whoever uses it as a [`UtpStream`].
//!
//! Layer: driver. An ordinary current-thread tokio runtime, never a shard:
//! one socket per process is shared by every shard's connections and by the
//! DHT, so it lives where no shard waits on another (see
//! docs/transports.md, "The UDP driver", for why not one socket per shard).
//!
//! * **Port demultiplexing** by the first byte of each datagram: bencode
//!   (`d`) goes to the DHT's inbox when one is attached, a uTP header
//!   ([`crate::utp::looks_like_utp`]) to the endpoint, anything else is
//!   counted and dropped.
//! * **Batched datagram I/O**: `recvmmsg` and `sendmmsg` over
//!   [`BATCH_DATAGRAMS`] preallocated buffers; nothing is allocated per
//!   datagram (the endpoint writes each packet into the send batch).
//! * **Streams**: a shard reads a connection through a bounded channel of
//!   byte chunks ([`READ_QUEUE_CHUNKS`] of at most [`READ_CHUNK_BYTES`]);
//!   while it is full the driver leaves the bytes in the endpoint, whose
//!   receive window then shuts (back-pressure reaches the peer). Writes take
//!   byte credits from the connection's [`STREAM_SEND_QUEUE_BYTES`] budget
//!   and give them back once the endpoint's send buffer took the bytes.
//! * **Incoming** connections run the same handshake code as the TCP
//!   listener ([`super::listener::negotiate`]: plaintext or MSE) on this
//!   thread, at most `max_pending_handshakes` at once and each within
//!   `handshake_timeout`, then go to `route` (the owning shard).
//! * **Outgoing**: [`UtpConnector::connect`] (any thread) asks the driver;
//!   the stream comes back once the uTP handshake completed.
//!
//! Invariants: every connection of the endpoint has exactly one
//! [`UtpStream`]; it is released when that stream is dropped and the
//! endpoint reports it closed (a dropped stream first closes with a FIN).
//! Commands are one per write chunk (bounded by the byte budget), per
//! connect (bounded by the shards' half-open caps) or per stream (open
//! connections are bounded by `UtpConfig::max_connections`).

use super::listener::{negotiate, IncomingPeer, Route};
use super::mse_io::{HandshakeIo, TorrentKeys};
use super::peer_io::IncomingStream;
use crate::mse::EncryptionPolicy;
use crate::utp::{CloseReason, ConnHandle, Endpoint, Event, ReadOutcome, UtpConfig};
use socket2::SockAddr;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

/// Datagrams received or sent per `recvmmsg`/`sendmmsg` call.
pub const BATCH_DATAGRAMS: usize = 32;
/// Room for one received datagram: a uTP packet of the largest payload
/// [`crate::utp::MAX_DATAGRAM_BYTES`] fits; a longer one is truncated by
/// the kernel and dropped (so is an oversized DHT message).
pub const RECV_DATAGRAM_BYTES: usize = crate::utp::MAX_DATAGRAM_BYTES;
/// Bytes moved from the endpoint to a stream's reader in one chunk at most.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks waiting for a stream's reader at most (with [`READ_CHUNK_BYTES`]:
/// 512 KiB per connection outside the endpoint's receive window).
pub const READ_QUEUE_CHUNKS: usize = 8;
/// Bytes a stream's writer may have queued toward the driver and not yet
/// taken by the endpoint's send buffer.
pub const STREAM_SEND_QUEUE_BYTES: usize = 1024 * 1024;
/// One write command carries at most this many bytes.
pub const WRITE_CHUNK_BYTES: usize = 256 * 1024;
/// Datagrams for the DHT waiting for its thread at most (then dropped).
pub const DHT_INBOX_DATAGRAMS: usize = 1024;
/// Kernel socket buffers asked for (each way): bursts of a window of
/// datagrams must not be dropped by the socket on a fast path.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Batches received in a row before timers and commands get a turn.
const RECV_BATCHES_PER_TURN: usize = 8;

/// The driver's settings.
#[derive(Clone)]
pub struct UdpOptions {
    pub utp: UtpConfig,
    /// Incoming uTP handshakes being read at once at most.
    pub max_pending_handshakes: usize,
    pub handshake_timeout: Duration,
    pub encryption: EncryptionPolicy,
    pub torrents: Arc<TorrentKeys>,
}

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("uTP configuration: {0}")]
    Config(#[from] crate::utp::ConfigError),
    #[error("cannot start the UDP thread: {0}")]
    Start(io::Error),
}

enum Command {
    Connect { addr: SocketAddr, reply: oneshot::Sender<io::Result<UtpStream>> },
    Write { handle: ConnHandle, data: Vec<u8> },
    Shutdown(ConnHandle),
    Dropped(ConnHandle),
}

/// Counters of the driver, readable from any thread.
#[derive(Debug, Default)]
pub struct UdpStats {
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    /// Neither uTP nor DHT, truncated, or a full DHT inbox.
    pub datagrams_dropped: AtomicU64,
    /// Datagrams the endpoint ignored (stray, outside a window, refused SYN).
    pub utp_ignored: AtomicU64,
    pub recv_calls: AtomicU64,
    pub send_calls: AtomicU64,
    /// uTP connections open now.
    pub utp_connections: AtomicU64,
    /// Incoming uTP connections refused because too many handshakes ran.
    pub handshakes_refused: AtomicU64,
}

struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    /// A reader took a chunk: blocked connections may move again.
    wake: Notify,
    stop: Notify,
    stats: UdpStats,
}

/// Opens uTP connections through the driver; cheap to clone, usable from
/// any thread (shards hold one).
#[derive(Clone)]
pub struct UtpConnector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UtpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UtpConnector")
    }
}

/// The receiving half of [`channel`], for [`UdpPort::start`].
pub struct DriverInput {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
}

/// The connector (for the shards, which start first) and what the driver
/// thread takes once the port is known.
pub fn channel() -> (UtpConnector, DriverInput) {
    let (commands, receiver) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        commands,
        wake: Notify::new(),
        stop: Notify::new(),
        stats: UdpStats::default(),
    });
    (UtpConnector { shared: shared.clone() }, DriverInput { shared, commands: receiver })
}

impl UtpConnector {
    /// Opens a uTP connection to `addr`, giving up after `timeout` (the
    /// half-made connection is then released by the driver).
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<UtpStream> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Connect { addr, reply })
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "uTP driver stopped"))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(io::Error::new(io::ErrorKind::NotConnected, "uTP driver stopped")),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "uTP connect timed out")),
        }
    }

    pub fn stats(&self) -> &UdpStats {
        &self.shared.stats
    }
}

struct Reader {
    chunks: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

/// One uTP connection as a byte stream. Reads and writes take `&self`, so a
/// connection's reader and writer tasks share it (one of each at a time).
pub struct UtpStream {
    handle: ConnHandle,
    peer: SocketAddr,
    shared: Arc<Shared>,
    send_budget: Arc<Semaphore>,
    reader: tokio::sync::Mutex<Reader>,
}

impl std::fmt::Debug for UtpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UtpStream").field("peer", &self.peer).finish()
    }
}

impl UtpStream {
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Waits for bytes (false: end of stream) and returns the reader with
    /// an unread chunk.
    async fn next_chunk(&self) -> (tokio::sync::MutexGuard<'_, Reader>, bool) {
        let mut reader = self.reader.lock().await;
        if reader.pos < reader.chunk.len() {
            return (reader, true);
        }
        match reader.chunks.recv().await {
            Some(chunk) => {
                reader.chunk = chunk;
                reader.pos = 0;
                // The queue has room again: the driver may move more bytes.
                self.shared.wake.notify_one();
                (reader, true)
            }
            None => (reader, false),
        }
    }

    /// Reads once into `out`; 0 at end of stream.
    pub async fn read_some(&self, out: &mut [u8]) -> io::Result<usize> {
        let (mut reader, open) = self.next_chunk().await;
        if !open || out.is_empty() {
            return Ok(0);
        }
        let n = out.len().min(reader.chunk.len() - reader.pos);
        let pos = reader.pos;
        out[..n].copy_from_slice(&reader.chunk[pos..pos + n]);
        reader.pos += n;
        Ok(n)
    }

    /// Reads once into the spare capacity of `buf` (never growing it); 0 at
    /// end of stream. Chunks already queued are taken too, up to the space.
    pub async fn read_into_spare(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let (mut reader, open) = self.next_chunk().await;
        if !open {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let spare = buf.capacity() - buf.len();
            let n = spare.min(reader.chunk.len() - reader.pos);
            let pos = reader.pos;
            buf.extend_from_slice(&reader.chunk[pos..pos + n]);
            reader.pos += n;
            total += n;
            if buf.len() == buf.capacity() {
                break;
            }
            match reader.chunks.try_recv() {
                Ok(chunk) => {
                    reader.chunk = chunk;
                    reader.pos = 0;
                    self.shared.wake.notify_one();
                }
                Err(_) => break,
            }
        }
        Ok(total)
    }

    /// Queues all of `data` toward the peer, waiting while the connection's
    /// send budget is used up.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        for piece in data.chunks(WRITE_CHUNK_BYTES) {
            let permit = self
                .send_budget
                .acquire_many(piece.len() as u32)
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            // The driver gives the credit back once the endpoint took it.
            permit.forget();
            self.shared
                .commands
                .send(Command::Write { handle: self.handle, data: piece.to_vec() })
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }

    /// Ends both directions: a FIN follows what was written, and a read
    /// waiting (or the next one) returns end of stream.
    pub fn shutdown(&self) {
        let _ = self.shared.commands.send(Command::Shutdown(self.handle));
    }
}

impl Drop for UtpStream {
    fn drop(&mut self) {
        let _ = self.shared.commands.send(Command::Dropped(self.handle));
    }
}

impl HandshakeIo for UtpStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        UtpStream::read_some(self, buf).await
    }

    async fn write_all_bytes(&mut self, buf: &[u8]) -> io::Result<()> {
        UtpStream::write_all(self, buf).await
    }
}

/// Datagrams for the DHT, when it shares the port.
pub type DhtInbox = mpsc::Sender<(SocketAddr, Vec<u8>)>;
/// The DHT's end of [`DhtInbox`].
pub type DhtDatagrams = mpsc::Receiver<(SocketAddr, Vec<u8>)>;

/// The running driver thread.
pub struct UdpPort {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    socket: std::net::UdpSocket,
    dht: Arc<Mutex<Option<DhtInbox>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Binds the UDP socket of the peer port (non-blocking, large buffers).
pub fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, UdpError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_error = |source| UdpError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_error)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(bind_error)?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    Ok(socket.into())
}

impl UdpPort {
    /// Starts the thread on a bound `socket`; incoming connections whose
    /// handshake completed go to `route`.
    pub fn start(
        socket: std::net::UdpSocket,
        input: DriverInput,
        options: UdpOptions,
        route: Route,
    ) -> Result<UdpPort, UdpError> {
        options.utp.validate()?;
        let local_addr = socket.local_addr().map_err(UdpError::Start)?;
        let endpoint = Endpoint::new(options.utp, rand::random(), Instant::now())?;
        let send_socket = socket.try_clone().map_err(UdpError::Start)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(UdpError::Start)?;
        let shared = input.shared.clone();
        let dht: Arc<Mutex<Option<DhtInbox>>> = Arc::default();
        let dht_slot = dht.clone();
        let thread = std::thread::Builder::new()
            .name("ringbit-udp".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let socket = match tokio::net::UdpSocket::from_std(socket) {
                        Ok(s) => s,
                        Err(error) => {
                            tracing::error!(%error, "UDP socket unusable: no uTP");
                            return;
                        }
                    };
                    let driver = Driver {
                        endpoint,
                        links: HashMap::new(),
                        blocked: Vec::new(),
                        shared: input.shared.clone(),
                        handshakes: Arc::new(Semaphore::new(options.max_pending_handshakes.max(1))),
                        route: Arc::new(route),
                        options,
                        dht: dht_slot,
                        scratch: vec![0u8; READ_CHUNK_BYTES],
                    };
                    driver.run(socket, input.commands).await;
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(UdpError::Start)?;
        Ok(UdpPort { shared, local_addr, socket: send_socket, dht, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends DHT datagrams through the shared port from another thread
    /// (a second handle to the same socket) and receives them from the
    /// returned inbox.
    pub fn attach_dht(&self) -> io::Result<(std::net::UdpSocket, DhtDatagrams)> {
        let (sender, receiver) = mpsc::channel(DHT_INBOX_DATAGRAMS);
        *self.dht.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        Ok((self.socket.try_clone()?, receiver))
    }

    pub fn stats(&self) -> &UdpStats {
        &self.shared.stats
    }

    /// Stops the thread (open connections are dropped without a FIN).
    pub fn shutdown(&mut self) {
        self.shared.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for UdpPort {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum ReadStep {
    More,
    Stop,
    EndReader,
}

/// The driver's side of one connection.
struct Link {
    /// Chunks for the stream's reader; `None` once the reader was told the
    /// stream ended (or shut down): later bytes are discarded.
    chunks: Option<mpsc::Sender<Vec<u8>>>,
    send_budget: Arc<Semaphore>,
    /// Write commands the endpoint's send buffer has not taken yet, with
    /// the offset taken so far.
    writes: VecDeque<(Vec<u8>, usize)>,
    /// An outgoing connection's stream, until the handshake completes.
    connect: Option<(oneshot::Sender<io::Result<UtpStream>>, UtpStream)>,
    in_blocked: bool,
    /// The endpoint reported it closed.
    closed: bool,
    /// The stream was dropped.
    dropped: bool,
}

struct Driver {
    endpoint: Endpoint,
    links: HashMap<ConnHandle, Link>,
    /// Connections whose reader queue was full.
    blocked: Vec<ConnHandle>,
    shared: Arc<Shared>,
    handshakes: Arc<Semaphore>,
    route: Arc<Route>,
    options: UdpOptions,
    dht: Arc<Mutex<Option<DhtInbox>>>,
    /// Where discarded bytes are read to.
    scratch: Vec<u8>,
}

/// Preallocated `recvmmsg`/`sendmmsg` state: the buffers, addresses and
/// headers of one batch.
struct Batch {
    buffers: Vec<Vec<u8>>,
    lens: [usize; BATCH_DATAGRAMS],
    addrs: Vec<SockAddr>,
    peers: [Option<SocketAddr>; BATCH_DATAGRAMS],
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(bytes: usize) -> Batch {
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        Batch {
            buffers: (0..BATCH_DATAGRAMS).map(|_| vec![0u8; bytes]).collect(),
            lens: [0; BATCH_DATAGRAMS],
            addrs: vec![unspecified; BATCH_DATAGRAMS],
            peers: [None; BATCH_DATAGRAMS],
            iovecs: Vec::with_capacity(BATCH_DATAGRAMS),
            // SAFETY: mmsghdr is a plain C struct of integers and pointers;
            // all zeroes is its documented empty value.
            headers: (0..BATCH_DATAGRAMS).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    /// Points the headers at buffers `from..to` (for sending: their `lens`
    /// and `addrs`; for receiving: their whole room and fresh addresses).
    fn prepare(&mut self, from: usize, to: usize, receive: bool) {
        self.iovecs.clear();
        for i in from..to {
            let len = if receive { self.buffers[i].len() } else { self.lens[i] };
            self.iovecs
                .push(libc::iovec { iov_base: self.buffers[i].as_mut_ptr().cast(), iov_len: len });
        }
        for (k, i) in (from..to).enumerate() {
            let header = &mut self.headers[k];
            // SAFETY: as in `new`, zeroes are a valid mmsghdr.
            *header = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = &mut self.iovecs[k];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
            header.msg_hdr.msg_namelen = if receive {
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t
            } else {
                self.addrs[i].len()
            };
        }
    }
}

fn recv_batch(socket: &tokio::net::UdpSocket, batch: &mut Batch) -> io::Result<usize> {
    batch.prepare(0, BATCH_DATAGRAMS, true);
    let fd = socket.as_raw_fd();
    let count = socket.try_io(Interest::READABLE, || {
        // SAFETY: every header points at a live iovec over a buffer of the
        // stated length and at a sockaddr_storage-sized address, all owned
        // by `batch`, which outlives the call; the kernel writes within them.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                batch.headers.as_mut_ptr(),
                BATCH_DATAGRAMS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })?;
    for i in 0..count {
        let header = &batch.headers[i];
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        batch.lens[i] = if truncated { 0 } else { header.msg_len as usize };
        let storage = batch.addrs[i].as_ptr();
        let len = header.msg_hdr.msg_namelen;
        // SAFETY: the kernel wrote a socket address of `len` bytes into the
        // sockaddr_storage at `storage`; reading it back as one is sound.
        let addr = unsafe { SockAddr::new(std::ptr::read(storage.cast()), len) };
        batch.peers[i] = addr.as_socket();
    }
    Ok(count)
}

/// Sends datagrams `from..to` of the batch; returns how many went out.
fn send_batch(
    socket: &tokio::net::UdpSocket,
    batch: &mut Batch,
    from: usize,
    to: usize,
) -> io::Result<usize> {
    batch.prepare(from, to, false);
    let fd = socket.as_raw_fd();
    socket.try_io(Interest::WRITABLE, || {
        // SAFETY: headers 0..to-from point at live iovecs, buffers and
        // addresses owned by `batch` (prepared just above); the kernel
        // only reads them.
        let n = unsafe {
            libc::sendmmsg(fd, batch.headers.as_mut_ptr(), (to - from) as libc::c_uint, 0)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

impl Driver {
    async fn run(
        mut self,
        socket: tokio::net::UdpSocket,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut rx = Batch::new(RECV_DATAGRAM_BYTES);
        let mut tx = Batch::new(crate::utp::MAX_DATAGRAM_BYTES);
        let shared = self.shared.clone();
        loop {
            self.process_events();
            self.flush(&socket, &mut tx).await;
            let wake = self
                .endpoint
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shared.stop.notified() => break,
                ready = socket.readable() => {
                    if ready.is_ok() {
                        self.receive(&socket, &mut rx);
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    self.command(command);
                    // Take what else is queued (bounded: one turn's worth).
                    for _ in 0..256 {
                        match commands.try_recv() {
                            Ok(command) => self.command(command),
                            Err(_) => break,
                        }
                    }
                }
                _ = shared.wake.notified() => self.unblock(),
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
            self.endpoint.handle_timeout(Instant::now());
            self.publish();
        }
    }

    fn publish(&self) {
        let stats = &self.shared.stats;
        let e = self.endpoint.stats();
        stats.utp_ignored.store(e.ignored, Ordering::Relaxed);
        stats.utp_connections.store(self.endpoint.connection_count() as u64, Ordering::Relaxed);
    }

    fn receive(&mut self, socket: &tokio::net::UdpSocket, rx: &mut Batch) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        for _ in 0..RECV_BATCHES_PER_TURN {
            let count = match recv_batch(socket, rx) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here (ECONNREFUSED): skip them.
                Err(_) => continue,
            };
            stats.recv_calls.fetch_add(1, Ordering::Relaxed);
            stats.datagrams_in.fetch_add(count as u64, Ordering::Relaxed);
            let now = Instant::now();
            for i in 0..count {
                let (len, Some(from)) = (rx.lens[i], rx.peers[i]) else {
                    stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let datagram = &rx.buffers[i][..len];
                if super::dht::is_dht_datagram(datagram) {
                    let sent = self
                        .dht
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .is_some_and(|inbox| inbox.try_send((from, datagram.to_vec())).is_ok());
                    if !sent {
                        stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                } else if crate::utp::looks_like_utp(datagram) {
                    let _ = self.endpoint.handle_datagram(now, from, datagram);
                } else {
                    stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.process_events();
            if count < BATCH_DATAGRAMS {
                return;
            }
        }
    }

    /// Sends everything the endpoint has to send, a batch per syscall.
    async fn flush(&mut self, socket: &tokio::net::UdpSocket, tx: &mut Batch) {
        loop {
            let now = Instant::now();
            let mut count = 0;
            while count < BATCH_DATAGRAMS {
                let Some(t) = self.endpoint.poll_transmit(now, &mut tx.buffers[count]) else {
                    break;
                };
                tx.lens[count] = t.len;
                tx.addrs[count] = SockAddr::from(t.addr);
                count += 1;
            }
            if count == 0 {
                return;
            }
            let mut sent = 0;
            while sent < count {
                match send_batch(socket, tx, sent, count) {
                    Ok(n) => {
                        self.shared.stats.send_calls.fetch_add(1, Ordering::Relaxed);
                        self.shared.stats.datagrams_out.fetch_add(n as u64, Ordering::Relaxed);
                        sent += n.max(1);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if socket.writable().await.is_err() {
                            return;
                        }
                    }
                    // Unreachable peer and the like: that datagram is lost
                    // (uTP resends), the rest still go.
                    Err(_) => sent += 1,
                }
            }
        }
    }

    fn new_stream(&mut self, handle: ConnHandle, peer: SocketAddr) -> UtpStream {
        let (sender, chunks) = mpsc::channel(READ_QUEUE_CHUNKS);
        let send_budget = Arc::new(Semaphore::new(STREAM_SEND_QUEUE_BYTES));
        self.links.insert(
            handle,
            Link {
                chunks: Some(sender),
                send_budget: send_budget.clone(),
                writes: VecDeque::new(),
                connect: None,
                in_blocked: false,
                closed: false,
                dropped: false,
            },
        );
        UtpStream {
            handle,
            peer,
            shared: self.shared.clone(),
            send_budget,
            reader: tokio::sync::Mutex::new(Reader { chunks, chunk: Vec::new(), pos: 0 }),
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Connect { addr, reply } => match self.endpoint.connect(Instant::now(), addr) {
                Ok(handle) => {
                    let stream = self.new_stream(handle, addr);
                    if let Some(link) = self.links.get_mut(&handle) {
                        link.connect = Some((reply, stream));
                    }
                }
                Err(error) => {
                    let _ = reply.send(Err(io::Error::other(error)));
                }
            },
            Command::Write { handle, data } => {
                let Some(link) = self.links.get_mut(&handle) else { return };
                if link.closed {
                    return;
                }
                link.writes.push_back((data, 0));
                self.pump_write(handle);
            }
            Command::Shutdown(handle) => {
                if let Some(link) = self.links.get_mut(&handle) {
                    link.chunks = None;
                    link.send_budget.close();
                    let _ = self.endpoint.close(handle);
                }
            }
            Command::Dropped(handle) => {
                let Some(link) = self.links.get_mut(&handle) else { return };
                link.dropped = true;
                link.chunks = None;
                link.send_budget.close();
                if link.closed {
                    self.links.remove(&handle);
                    let _ = self.endpoint.release(handle);
                } else {
                    // A FIN after what was written; released once closed.
                    let _ = self.endpoint.close(handle);
                    self.pump_read(handle);
                }
            }
        }
    }

    fn process_events(&mut self) {
        while let Some((handle, event)) = self.endpoint.poll_event() {
            match event {
                Event::Incoming => self.incoming(handle),
                Event::Connected => {
                    let Some(link) = self.links.get_mut(&handle) else { continue };
                    if let Some((reply, stream)) = link.connect.take() {
                        // A connect given up on drops the stream: released.
                        let _ = reply.send(Ok(stream));
                    }
                }
                Event::Readable => self.pump_read(handle),
                Event::Writable => self.pump_write(handle),
                Event::Closed(reason) => self.closed(handle, reason),
            }
        }
    }

    fn incoming(&mut self, handle: ConnHandle) {
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            self.shared.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            let _ = self.endpoint.release(handle);
            return;
        };
        let Ok(addr) = self.endpoint.peer_addr(handle) else { return };
        let mut stream = self.new_stream(handle, addr);
        let route = self.route.clone();
        let timeout = self.options.handshake_timeout;
        let encryption = self.options.encryption;
        let torrents = self.options.torrents.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result =
                tokio::time::timeout(timeout, negotiate(&mut stream, encryption, &torrents)).await;
            match result {
                Ok(Ok((handshake, cipher, leftover))) => {
                    let stream = IncomingStream::Utp(Box::new(stream));
                    let peer = IncomingPeer { stream, addr, handshake, cipher, leftover };
                    if !route(peer) {
                        tracing::debug!(%addr, "uTP: no torrent for handshake");
                    }
                }
                Ok(Err(reason)) => tracing::debug!(%addr, reason, "uTP handshake failed"),
                Err(_) => tracing::debug!(%addr, "uTP: no handshake within {timeout:?}"),
            }
        });
    }

    fn closed(&mut self, handle: ConnHandle, reason: CloseReason) {
        let Some(link) = self.links.get_mut(&handle) else {
            // Not ours (refused before a stream existed): forget it.
            let _ = self.endpoint.release(handle);
            return;
        };
        link.closed = true;
        link.writes.clear();
        link.send_budget.close();
        if let Some((reply, stream)) = link.connect.take() {
            let kind = match reason {
                CloseReason::Reset => io::ErrorKind::ConnectionRefused,
                _ => io::ErrorKind::TimedOut,
            };
            let _ = reply.send(Err(io::Error::new(kind, "uTP connect failed")));
            // Dropping the stream queues its release.
            drop(stream);
        }
        if link.dropped {
            self.links.remove(&handle);
            let _ = self.endpoint.release(handle);
            return;
        }
        // What arrived before the end is still delivered, then end of stream.
        self.pump_read(handle);
    }

    /// Moves readable bytes to the stream's reader while its queue has room.
    fn pump_read(&mut self, handle: ConnHandle) {
        loop {
            match self.read_step(handle) {
                ReadStep::More => {}
                ReadStep::Stop => return,
                ReadStep::EndReader => {
                    // End of stream for the reader; later bytes are discarded.
                    if let Some(link) = self.links.get_mut(&handle) {
                        link.chunks = None;
                    }
                }
            }
        }
    }

    fn read_step(&mut self, handle: ConnHandle) -> ReadStep {
        let Some(link) = self.links.get_mut(&handle) else { return ReadStep::Stop };
        let Some(sender) = &link.chunks else {
            // Nobody reads: discard, so the window stays open and the
            // peer's FIN can arrive.
            while let Ok(ReadOutcome::Data(_)) = self.endpoint.read(handle, &mut self.scratch) {}
            return ReadStep::Stop;
        };
        let permit = match sender.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => {
                if !link.in_blocked {
                    link.in_blocked = true;
                    self.blocked.push(handle);
                }
                return ReadStep::Stop;
            }
            // The reader is gone.
            Err(mpsc::error::TrySendError::Closed(())) => return ReadStep::EndReader,
        };
        let available = self.endpoint.readable_bytes(handle).unwrap_or(0);
        if available == 0 {
            let finished = matches!(self.endpoint.read(handle, &mut []), Ok(ReadOutcome::Finished));
            return if finished || link.closed { ReadStep::EndReader } else { ReadStep::Stop };
        }
        let mut chunk = vec![0u8; available.min(READ_CHUNK_BYTES)];
        match self.endpoint.read(handle, &mut chunk) {
            Ok(ReadOutcome::Data(n)) => {
                chunk.truncate(n);
                permit.send(chunk);
                ReadStep::More
            }
            _ => ReadStep::Stop,
        }
    }

    fn pump_write(&mut self, handle: ConnHandle) {
        let Some(link) = self.links.get_mut(&handle) else { return };
        while let Some((data, offset)) = link.writes.front_mut() {
            match self.endpoint.write(handle, &data[*offset..]) {
                Ok(n) => *offset += n,
                Err(_) => {
                    link.writes.clear();
                    link.send_budget.close();
                    return;
                }
            }
            if *offset < data.len() {
                // The send buffer is full: wait for Writable.
                return;
            }
            link.send_budget.add_permits(data.len());
            link.writes.pop_front();
        }
    }

    /// A reader took chunks: move bytes to the connections that waited.
    fn unblock(&mut self) {
        let blocked = std::mem::take(&mut self.blocked);
        for &handle in &blocked {
            if let Some(link) = self.links.get_mut(&handle) {
                link.in_blocked = false;
            }
            self.pump_read(handle);
        }
        // Keep the list's allocation.
        let mut blocked = blocked;
        blocked.clear();
        if self.blocked.is_empty() {
            self.blocked = blocked;
        }
    }
}
