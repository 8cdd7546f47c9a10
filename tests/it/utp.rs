//! uTP (BEP 29, issue 13) against real peers that speak nothing else, both
//! directions, byte-identical; a download through a lossy, slow UDP relay;
//! and hostile datagrams at a seeding ringbit's UDP port.
//!
//! Owns: the uTP scenarios. The peers' uTP settings live in `peers.rs`
//! ([`Transport::UtpOnly`]): libtorrent with TCP off both ways
//! (`enable_outgoing_tcp`/`enable_incoming_tcp` false), so a completed
//! transfer proves uTP carried it; transmission with uTP on, dialled by a
//! ringbit that dials uTP only (transmission never dials loopback).
//! Layer: integration tests.
//!
//! Every wait is bounded; every process is stopped by its pid; only
//! 127.0.0.1 is used.

use crate::download::{Ringbit, DOWNLOAD_LIMIT};
use crate::helpers;
use crate::peers::{is_listening, Crypto, Leecher, Payload, PeerKind, Seeder, Transport};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payload of each transfer: 8 MiB in 256 KiB pieces (seconds on loopback).
const SIZE_BYTES: usize = 8 << 20;
const PIECE_LOG2: u32 = 18;
/// How long a seeding ringbit may take to start listening.
const LISTEN_LIMIT: Duration = Duration::from_secs(60);

fn payload(name: &str) -> Payload {
    Payload::single_file(name, SIZE_BYTES, PIECE_LOG2)
}

/// A seeding ringbit that dials only over uTP (`--utp only`), dialling
/// `peers`.
fn ringbit_seed_utp_only(payload: &Payload, peers: &[SocketAddr]) -> Ringbit {
    let torrent = payload.torrent(&[]);
    let mut seed = Ringbit::download(
        &torrent,
        &payload.save_path,
        peers,
        &["--seed", "--no-trackers", "--utp", "only"],
    );
    assert!(
        helpers::wait_until(LISTEN_LIMIT, || is_listening(seed.port) || !seed.is_running()),
        "ringbit seeder never listened; log:\n{}",
        seed.log_tail()
    );
    assert!(seed.is_running(), "ringbit seeder exited; log:\n{}", seed.log_tail());
    seed
}

/// Goal: ringbit downloads from a libtorrent that speaks only uTP.
/// Setup: libtorrent seeding with TCP off both ways; ringbit `download
/// --utp only --peer` it.
/// Check: the download is byte-identical (no TCP connection could carry it).
#[test]
fn ringbit_downloads_from_libtorrent_over_utp_only() {
    let payload = payload("utp-from-lt.bin");
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start_over(
        PeerKind::Libtorrent,
        &torrent,
        &payload.save_path,
        None,
        Crypto::Usual,
        Transport::UtpOnly,
    );
    let out = tempfile::tempdir().unwrap();
    let mut rb = Ringbit::download(
        &torrent,
        out.path(),
        &[seeder.addr()],
        &["--no-trackers", "--utp", "only"],
    );
    rb.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    drop(seeder);
}

/// Goal: a libtorrent that speaks only uTP downloads from ringbit (the
/// incoming path: the uTP handshake read on the UDP driver's thread, the
/// connection handed to the torrent's shard).
/// Setup: ringbit seeding with `--utp only`; libtorrent with TCP off both
/// ways dials it.
/// Check: libtorrent completes, byte-identical.
#[test]
fn libtorrent_downloads_from_ringbit_over_utp_only() {
    let payload = payload("utp-to-lt.bin");
    let torrent = payload.torrent(&[]);
    let seed = ringbit_seed_utp_only(&payload, &[]);
    let out = tempfile::tempdir().unwrap();
    let mut leecher = Leecher::start_over(
        PeerKind::Libtorrent,
        &torrent,
        out.path(),
        &[seed.addr()],
        None,
        Crypto::Usual,
        Transport::UtpOnly,
    );
    let result = leecher.wait_complete(DOWNLOAD_LIMIT);
    result.unwrap_or_else(|e| panic!("{e}\nringbit log:\n{}", seed.log_tail()));
    leecher.assert_same_as(&payload.save_path);
    drop(seed);
}

/// Goal: transmission (libutp) downloads from ringbit over uTP.
/// Setup: transmission with uTP on, no peers (it never dials loopback);
/// ringbit seeding with `--utp only` dials it, so the one connection
/// between them is uTP.
/// Check: transmission completes, byte-identical.
#[test]
fn transmission_downloads_from_ringbit_over_utp() {
    let payload = payload("utp-to-tr.bin");
    let torrent = payload.torrent(&[]);
    let out = tempfile::tempdir().unwrap();
    let mut leecher = Leecher::start_over(
        PeerKind::Transmission,
        &torrent,
        out.path(),
        &[],
        None,
        Crypto::Usual,
        Transport::UtpOnly,
    );
    let seed = ringbit_seed_utp_only(&payload, &[leecher.addr()]);
    let result = leecher.wait_complete(DOWNLOAD_LIMIT);
    result.unwrap_or_else(|e| panic!("{e}\nringbit log:\n{}", seed.log_tail()));
    leecher.assert_same_as(&payload.save_path);
    drop(seed);
}

/// A UDP relay on 127.0.0.1 between one client and `upstream` that drops
/// `loss_per_mille` of the datagrams each way and delays the rest by
/// `delay` (netem is not in this kernel). Runs until dropped.
struct LossyRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Datagrams the relay holds back at most (beyond: dropped, like a full queue).
const RELAY_QUEUE_DATAGRAMS: usize = 100_000;

impl LossyRelay {
    fn start(upstream: SocketAddr, loss_per_mille: u64, delay: Duration) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        front.set_nonblocking(true).unwrap();
        back.set_nonblocking(true).unwrap();
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (stop2, fwd2, drop2) = (stop.clone(), forwarded.clone(), dropped.clone());
        let thread = std::thread::spawn(move || {
            // A fixed-seed xorshift: the same losses every run.
            let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut client: Option<SocketAddr> = None;
            // (due, to_upstream, bytes): a queue in arrival order; every
            // datagram has the same delay, so it is also in due order.
            let mut queue: std::collections::VecDeque<(Instant, bool, Vec<u8>)> =
                std::collections::VecDeque::new();
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                let mut idle = true;
                for (socket, to_upstream) in [(&front, true), (&back, false)] {
                    for _ in 0..256 {
                        let Ok((n, from)) = socket.recv_from(&mut buf) else { break };
                        idle = false;
                        if to_upstream {
                            client = Some(from);
                        }
                        if next() % 1000 < loss_per_mille || queue.len() >= RELAY_QUEUE_DATAGRAMS {
                            drop2.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        queue.push_back((Instant::now() + delay, to_upstream, buf[..n].to_vec()));
                    }
                }
                let now = Instant::now();
                while queue.front().is_some_and(|(due, _, _)| *due <= now) {
                    let (_, to_upstream, bytes) = queue.pop_front().unwrap();
                    let sent = if to_upstream {
                        back.send_to(&bytes, upstream).is_ok()
                    } else {
                        client.is_some_and(|c| front.send_to(&bytes, c).is_ok())
                    };
                    if sent {
                        fwd2.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        LossyRelay { addr, stop, forwarded, dropped, thread: Some(thread) }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Goal: a uTP download survives a lossy, slow path (the 1% loss
/// and 50 ms delay; netem is not available, so a relay in the test).
/// Setup: ringbit seeding with `--utp only`; a relay in front of its UDP
/// port dropping 1% of datagrams each way and delaying the rest by 50 ms;
/// ringbit `download --utp only` dials the relay.
/// Check: the download is byte-identical, the relay carried it (datagrams
/// forwarded) and really dropped some.
#[test]
fn utp_download_through_a_lossy_slow_relay() {
    let payload = payload("utp-lossy.bin");
    let torrent = payload.torrent(&[]);
    let seed = ringbit_seed_utp_only(&payload, &[]);
    let relay = LossyRelay::start(seed.addr(), 10, Duration::from_millis(50));
    let out = tempfile::tempdir().unwrap();
    let mut rb =
        Ringbit::download(&torrent, out.path(), &[relay.addr], &["--no-trackers", "--utp", "only"]);
    rb.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    let forwarded = relay.forwarded.load(Ordering::Relaxed);
    let dropped = relay.dropped.load(Ordering::Relaxed);
    // 8 MiB in 1400-byte payloads is ~6000 data packets, plus acks.
    assert!(forwarded > 6000, "the relay carried the transfer: {forwarded} datagrams");
    assert!(dropped > 0, "the relay dropped datagrams: {dropped} of {forwarded}");
    drop(seed);
}

/// A uTP header (BEP 29): type, connection id, sequence and ack numbers.
fn utp_header(kind: u8, connection_id: u16, seq_nr: u16, ack_nr: u16) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = (kind << 4) | 1;
    h[2..4].copy_from_slice(&connection_id.to_be_bytes());
    h[12..16].copy_from_slice(&(1u32 << 20).to_be_bytes());
    h[16..18].copy_from_slice(&seq_nr.to_be_bytes());
    h[18..20].copy_from_slice(&ack_nr.to_be_bytes());
    h
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Goal: hostile datagrams at the UDP port leave the process and its
/// transfers unharmed, and the bounds hold (issue 13: bogus connection ids,
/// sequence numbers outside the window, a SYN flood).
/// Setup: ringbit seeding with `--utp only`; from two sockets of our own on
/// 127.0.0.2,
/// 20,000 SYNs with distinct connection ids, 20,000 DATA/STATE/FIN packets
/// with random ids and sequence numbers far outside any window, 2,000
/// datagrams of garbage; while they fly, a uTP-only libtorrent downloads.
/// Check: libtorrent completes byte-identical; the seeder still runs; its
/// resident memory grew by less than 64 MiB; a ringbit `--utp only`
/// leecher downloads after the flood too.
#[test]
fn hostile_datagrams_leave_utp_transfers_unharmed() {
    let payload = payload("utp-hostile.bin");
    let torrent = payload.torrent(&[]);
    let mut seed = ringbit_seed_utp_only(&payload, &[]);
    let rss_before = rss_kib(seed.pid());
    let target = seed.addr();
    let flood = std::thread::spawn(move || {
        // From another loopback address than the real peers: the flood
        // gets only its own IP's share of the half-open places.
        let a = UdpSocket::bind("127.0.0.2:0").unwrap();
        let b = UdpSocket::bind("127.0.0.2:0").unwrap();
        let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 0..20_000u32 {
            let r = next();
            // SYN (type 4) with a fresh id each time.
            let _ = a.send_to(&utp_header(4, i as u16, r as u16, 0), target);
            // DATA/FIN/STATE (0, 1, 2) on random ids, with a payload.
            let mut pkt = utp_header((r >> 16) as u8 % 3, (r >> 24) as u16, (r >> 40) as u16, 0);
            pkt[1] = 0;
            let _ = b.send_to(&[&pkt[..], &[0xAB; 200][..]].concat(), target);
            if i % 10 == 0 {
                // Garbage: wrong version, short headers, a bad extension chain.
                let _ = b.send_to(&[0x42; 7], target);
                let mut bad = utp_header(0, r as u16, 0, 0);
                bad[1] = 1; // a SACK extension that runs off the end
                let _ = b.send_to(&bad, target);
            }
            if i % 2000 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let out = tempfile::tempdir().unwrap();
    let mut leecher = Leecher::start_over(
        PeerKind::Libtorrent,
        &torrent,
        out.path(),
        &[seed.addr()],
        None,
        Crypto::Usual,
        Transport::UtpOnly,
    );
    let result = leecher.wait_complete(DOWNLOAD_LIMIT);
    flood.join().unwrap();
    result.unwrap_or_else(|e| panic!("{e}\nringbit log:\n{}", seed.log_tail()));
    leecher.assert_same_as(&payload.save_path);
    assert!(seed.is_running(), "the seeder survived; log:\n{}", seed.log_tail());
    let rss_after = rss_kib(seed.pid());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory stayed bounded: {rss_before} KiB before, {rss_after} KiB after"
    );
    // Another uTP peer gets in after the flood too.
    let out2 = tempfile::tempdir().unwrap();
    let mut rb = Ringbit::download(
        &torrent,
        out2.path(),
        &[seed.addr()],
        &["--no-trackers", "--utp", "only"],
    );
    rb.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out2.path());
    drop(seed);
}
