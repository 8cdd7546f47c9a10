//! A scripted BitTorrent peer in the test process, and the hostile-peer
//! scenarios of issue 5 that use it.
//!
//! Owns: [`ScriptedPeer`], a `std::net::TcpListener` on 127.0.0.1 whose
//! threads speak the peer wire protocol by hand (handshake, bitfield, unchoke,
//! then requests answered as its [`Behaviour`] says), counting the payload
//! bytes it serves and noticing when ringbit closes its socket. Honest and
//! throttled, it is the slow seeder the kill/Ctrl-C tests of `download.rs`
//! need; hostile, it sends bad piece data, oversized message lengths,
//! out-of-range piece indices or garbage. Layer: test support + tests.
//!
//! It serves one single-file payload and advertises no extension bits (no
//! fast extension, no BEP 10), so ringbit speaks plain BEP 3 to it.
//!
//! Invariants: every socket has read and write timeouts; every thread ends
//! when the peer is dropped (stop flag) or after [`PEER_LIFETIME_LIMIT`].

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::download::{Ringbit, DOWNLOAD_LIMIT};
use crate::helpers;
use crate::peers::{Payload, PeerKind, Seeder};

/// ringbit's flags against a [`ScriptedPeer`]: it speaks plaintext only.
pub const PLAINTEXT_ARGS: [&str; 3] = ["--no-trackers", "--encryption", "disable"];
/// The same, seeding on after the download.
const PLAINTEXT_SEED_ARGS: [&str; 4] = ["--seed", "--no-trackers", "--encryption", "disable"];

/// How long any scripted peer thread lives at most.
pub const PEER_LIFETIME_LIMIT: Duration = Duration::from_secs(300);
/// Read/write timeout of a scripted connection (it polls the stop flag).
const SOCKET_POLL: Duration = Duration::from_millis(200);
/// Largest message the scripted peer accepts from ringbit (a bitfield of a
/// test payload or a request is far smaller).
const MAX_INCOMING_MESSAGE_BYTES: usize = 1 << 20;
/// How long ringbit may take to drop a peer that broke the protocol.
const DROP_LIMIT: Duration = Duration::from_secs(30);

/// What the scripted peer does once the handshake is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers every request with the right bytes, sleeping `block_delay`
    /// before each block (a slow seeder).
    Honest { block_delay: Duration },
    /// Answers every request with wrong bytes of the right length.
    BadData,
    /// Sends a `piece` message whose length prefix is near 2^31.
    OversizedLength,
    /// Sends `have` and `piece` messages for a piece index past the last.
    OutOfRangeIndex,
    /// Sends pseudo-random bytes instead of messages.
    Garbage,
}

/// Counters shared with the connection threads.
#[derive(Default)]
pub struct PeerStats {
    /// Connections ringbit opened to us.
    pub connections: AtomicUsize,
    /// Payload bytes sent in `piece` messages (honest or not).
    pub served_bytes: AtomicU64,
    /// Connections that ringbit closed (EOF or reset seen while reading).
    pub closed_by_remote: AtomicUsize,
    /// Requests received.
    pub requests: AtomicUsize,
}

/// A scripted peer listening on 127.0.0.1.
pub struct ScriptedPeer {
    pub addr: SocketAddr,
    pub stats: Arc<PeerStats>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
}

struct Script {
    behaviour: Behaviour,
    info_hash: [u8; 20],
    data: Arc<Vec<u8>>,
    piece_length: u64,
    piece_count: u32,
}

impl ScriptedPeer {
    /// Serves the single-file `payload` (read into memory) as `behaviour` says.
    pub fn start(payload: &Payload, behaviour: Behaviour) -> ScriptedPeer {
        let data =
            std::fs::read(payload.save_path.join(&payload.name)).expect("single-file payload");
        let piece_count = data.len().div_ceil(payload.piece_length as usize) as u32;
        let script = Arc::new(Script {
            behaviour,
            info_hash: hex20(&payload.info_hash),
            data: Arc::new(data),
            piece_length: payload.piece_length,
            piece_count,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(PeerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let accept_thread = {
            let (stats, stop, threads) = (stats.clone(), stop.clone(), threads.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + PEER_LIFETIME_LIMIT;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stats.connections.fetch_add(1, Ordering::Relaxed);
                            let (script, stats, stop) =
                                (script.clone(), stats.clone(), stop.clone());
                            let t = std::thread::spawn(move || {
                                let _ = serve(stream, &script, &stats, &stop, deadline);
                            });
                            threads.lock().unwrap().push(t);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        ScriptedPeer { addr, stats, stop, threads, accept_thread: Some(accept_thread) }
    }

    pub fn served_bytes(&self) -> u64 {
        self.stats.served_bytes.load(Ordering::Relaxed)
    }

    /// Waits up to `limit` until ringbit has closed at least one connection.
    pub fn wait_closed_by_ringbit(&self, limit: Duration) -> bool {
        helpers::wait_until(limit, || self.stats.closed_by_remote.load(Ordering::Relaxed) > 0)
    }
}

impl Drop for ScriptedPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

fn hex20(hex: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Reads exactly `buf.len()` bytes, polling `stop`. Ok(false): ringbit closed.
fn read_full(
    s: &mut TcpStream,
    buf: &mut [u8],
    stop: &AtomicBool,
    deadline: Instant,
) -> std::io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        match s.read(&mut buf[at..]) {
            Ok(0) => return Ok(false),
            Ok(n) => at += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// One connection from ringbit. Returns when ringbit closes it (counted in
/// `closed_by_remote`), on stop, or on an I/O error.
fn serve(
    mut s: TcpStream,
    script: &Script,
    stats: &PeerStats,
    stop: &AtomicBool,
    deadline: Instant,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(SOCKET_POLL))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let closed = |stats: &PeerStats| {
        stats.closed_by_remote.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    let mut hs = [0u8; 68];
    if !read_full(&mut s, &mut hs, stop, deadline)? {
        return closed(stats);
    }
    assert_eq!(&hs[..20], b"\x13BitTorrent protocol", "ringbit's handshake");
    assert_eq!(hs[28..48], script.info_hash, "ringbit asked for another torrent");
    let mut ours = Vec::with_capacity(68);
    ours.extend_from_slice(b"\x13BitTorrent protocol");
    ours.extend_from_slice(&[0u8; 8]);
    ours.extend_from_slice(&script.info_hash);
    ours.extend_from_slice(b"-HX0001-scripted0000");
    // bitfield: every piece, spare bits zero.
    let bytes = script.piece_count.div_ceil(8) as usize;
    let mut bits = vec![0xffu8; bytes];
    let spare = bytes * 8 - script.piece_count as usize;
    if spare > 0 {
        bits[bytes - 1] = 0xffu8 << spare;
    }
    ours.extend_from_slice(&(1 + bytes as u32).to_be_bytes());
    ours.push(5);
    ours.extend_from_slice(&bits);
    // unchoke
    ours.extend_from_slice(&[0, 0, 0, 1, 1]);
    s.write_all(&ours)?;

    match script.behaviour {
        Behaviour::OversizedLength => {
            s.write_all(&[0x7f, 0xff, 0xff, 0xf0, 7, 0, 0, 0, 0])?;
        }
        Behaviour::OutOfRangeIndex => {
            let bad = script.piece_count + 1000;
            let mut m = vec![0, 0, 0, 5, 4];
            m.extend_from_slice(&bad.to_be_bytes());
            // and a piece message for it, as if answering a request
            m.extend_from_slice(&(9u32 + 16).to_be_bytes());
            m.push(7);
            m.extend_from_slice(&bad.to_be_bytes());
            m.extend_from_slice(&0u32.to_be_bytes());
            m.extend_from_slice(&[0u8; 16]);
            s.write_all(&m)?;
        }
        Behaviour::Garbage => {
            // Random bytes: almost surely an absurd length prefix or an
            // unknown message; either way a protocol violation.
            let mut g = helpers::payload_bytes(64 * 1024, 0x6a7b);
            g[..4].copy_from_slice(&[0, 0, 0, 3]); // a message too short for its id
            g[4] = 4; // "have" needs 4 bytes of index, gets 2
            s.write_all(&g)?;
        }
        Behaviour::Honest { .. } | Behaviour::BadData => {}
    }

    // Message loop: answer requests, ignore the rest, until ringbit closes.
    let mut len = [0u8; 4];
    let mut body = Vec::new();
    let mut out = Vec::new();
    loop {
        if !read_full(&mut s, &mut len, stop, deadline)? {
            return closed(stats);
        }
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 {
            continue;
        }
        assert!(n <= MAX_INCOMING_MESSAGE_BYTES, "ringbit sent a {n}-byte message");
        body.resize(n, 0);
        if !read_full(&mut s, &mut body, stop, deadline)? {
            return closed(stats);
        }
        if body[0] != 6 || n != 13 {
            continue;
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let piece = u32::from_be_bytes(body[1..5].try_into().unwrap());
        let begin = u32::from_be_bytes(body[5..9].try_into().unwrap());
        let length = u32::from_be_bytes(body[9..13].try_into().unwrap());
        let at = piece as u64 * script.piece_length + begin as u64;
        let end = at + length as u64;
        assert!(end <= script.data.len() as u64, "ringbit requested past the end");
        let block = &script.data[at as usize..end as usize];
        match script.behaviour {
            Behaviour::Honest { block_delay } => {
                if !block_delay.is_zero() {
                    std::thread::sleep(block_delay);
                }
            }
            Behaviour::BadData => {}
            // The other behaviours already broke the protocol: stay silent.
            _ => continue,
        }
        out.clear();
        out.extend_from_slice(&(9 + length).to_be_bytes());
        out.push(7);
        out.extend_from_slice(&piece.to_be_bytes());
        out.extend_from_slice(&begin.to_be_bytes());
        if script.behaviour == Behaviour::BadData {
            out.extend(block.iter().map(|b| !b));
        } else {
            out.extend_from_slice(block);
        }
        if let Err(e) = s.write_all(&out) {
            return if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) {
                closed(stats)
            } else {
                Err(e)
            };
        }
        stats.served_bytes.fetch_add(length as u64, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Scenarios

/// Runs `ringbit download --seed` (so it keeps running after the download,
/// and a close we observe was ringbit's decision, not its exit) from an
/// honest libtorrent seeder plus `hostile` scripted peers, all via `--peer`.
/// Checks: the download completes, every hostile peer saw ringbit close its
/// socket while ringbit still ran, and the data is byte-identical.
fn download_beside_hostile_peers(hostile: &[Behaviour]) {
    let payload = Payload::single_file("victim.bin", 16 << 20, 18);
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let bad: Vec<ScriptedPeer> =
        hostile.iter().map(|b| ScriptedPeer::start(&payload, *b)).collect();
    let out = tempfile::tempdir().unwrap();
    // Hostile peers first: ringbit meets them before (or while) the honest one serves.
    let mut peers: Vec<SocketAddr> = bad.iter().map(|p| p.addr).collect();
    peers.push(seeder.addr());
    // The scripted peer speaks plaintext only (it would hang up on MSE, and
    // the plaintext retry would reach it after the honest seeder finished).
    let mut rb = Ringbit::download(&torrent, out.path(), &peers, &PLAINTEXT_SEED_ARGS);
    rb.wait_log("download complete", DOWNLOAD_LIMIT);
    for (peer, behaviour) in bad.iter().zip(hostile) {
        assert!(
            peer.stats.connections.load(Ordering::Relaxed) >= 1,
            "{behaviour:?}: ringbit never connected; log:\n{}",
            rb.log_tail()
        );
        assert!(
            peer.wait_closed_by_ringbit(DROP_LIMIT),
            "{behaviour:?}: ringbit kept the connection; log:\n{}",
            rb.log_tail()
        );
    }
    assert!(rb.is_running(), "ringbit --seed exited; log:\n{}", rb.log_tail());
    rb.interrupt_and_wait(0);
    helpers::assert_same_tree(&payload.save_path, out.path());
    for (peer, behaviour) in bad.iter().zip(hostile) {
        if *behaviour == Behaviour::BadData {
            assert!(peer.served_bytes() > 0, "the bad-data peer was never asked for a block");
        }
    }
}

/// Goal: a peer that answers requests with wrong bytes does not corrupt the
/// download and gets dropped (issue 5, hostile peer).
/// Setup: 16 MiB single file (256 KiB pieces); libtorrent seeds it; a scripted
/// peer advertises every piece, unchokes, and answers every request with the
/// bitwise complement of the right block; ringbit `download --seed` dials both.
/// Check: the download completes, the bad peer served blocks and ringbit closed
/// its socket while still running, the data is byte-identical.
#[test]
fn hostile_bad_piece_data_is_dropped_and_never_written() {
    download_beside_hostile_peers(&[Behaviour::BadData]);
}

/// Goal: protocol violations (oversized length prefix, out-of-range piece
/// index, garbage bytes) get the peer disconnected without harming the
/// download from an honest peer.
/// Setup: as above, with three scripted peers: one sends a `piece` length
/// prefix of 2^31-16, one a `have` and a `piece` for index count+1000, one 64
/// KiB of garbage starting with a truncated `have`.
/// Check: each sees ringbit close its socket while ringbit keeps running; the
/// download completes byte-identical from libtorrent.
#[test]
fn hostile_malformed_messages_are_dropped() {
    download_beside_hostile_peers(&[
        Behaviour::OversizedLength,
        Behaviour::OutOfRangeIndex,
        Behaviour::Garbage,
    ]);
}

/// Goal: the scripted peer itself is a faithful seeder (otherwise the hostile
/// and interruption tests prove nothing).
/// Setup: 4 MiB single file; one honest scripted peer; ringbit dials it.
/// Check: exit 0, byte-identical, served bytes = the payload size (no piece
/// fetched twice from a single peer).
#[test]
fn scripted_honest_peer_seeds_ringbit() {
    let payload = Payload::single_file("plain.bin", 4 << 20, 18);
    let torrent = payload.torrent(&[]);
    let peer = ScriptedPeer::start(&payload, Behaviour::Honest { block_delay: Duration::ZERO });
    let out = tempfile::tempdir().unwrap();
    let mut rb = Ringbit::download(&torrent, out.path(), &[peer.addr], &PLAINTEXT_ARGS);
    let status = rb.wait_exit(DOWNLOAD_LIMIT);
    assert!(status.success(), "ringbit failed: {status}; log:\n{}", rb.log_tail());
    helpers::assert_same_tree(&payload.save_path, out.path());
    assert_eq!(peer.served_bytes(), payload.total_size);
}
