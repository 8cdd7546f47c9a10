//! `ringbit seed` against real leechers (issue 6): libtorrent, transmission
//! and aria2 download a multi-file torrent from it, alone and all at once; a
//! hand-written hostile leecher asking for pieces we lack or flooding
//! requests gets rejects and is dropped while an honest leecher completes;
//! corrupt data refuses to seed; `--upload-limit` holds a leecher to the rate;
//! a choked peer is offered and served its allowed-fast pieces.
//!
//! Every seeder runs `ringbit seed T DIR --port P --bind 127.0.0.1` on a
//! fresh port, its output in a log file quoted on failure; every wait is
//! bounded. How each leecher meets the seeder: libtorrent dials it (`--peer`);
//! aria2 learns it from opentracker; transmission never dials 127.0.0.1, so
//! the seeder must learn it from the tracker (`--reannounce-secs`) and dial it.

use crate::helpers::{self, ChildGuard, Opentracker};
use crate::peers::{self, Leecher, Payload, PeerKind};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Seeder start-up (recheck of a few MiB, listen, announce).
const SEED_READY_LIMIT: Duration = Duration::from_secs(30);
/// One leecher's whole download (transmission waits up to 10 s to request).
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(50);
/// Shutdown after SIGINT (trackers hear `stopped` within 5 s).
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// Re-announce period given to the seeder when a leecher must be dialled.
const REANNOUNCE_SECS: &str = "2";
/// 256 KiB pieces.
const PIECE_LOG2: u32 = 18;

/// A running `ringbit seed`.
pub(crate) struct RingbitSeed {
    guard: ChildGuard,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RingbitSeed {
    /// Starts seeding and returns once it listens and, with `tracker`, once
    /// opentracker counts it as a seeder of `info_hash`.
    pub(crate) fn start(
        torrent: &Path,
        data_dir: &Path,
        extra: &[&str],
        tracker: Option<(&Opentracker, &str)>,
    ) -> RingbitSeed {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("seed.log");
        let port = helpers::free_port();
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = helpers::ringbit();
        cmd.arg("seed")
            .arg(torrent)
            .arg(data_dir)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let mut seed = RingbitSeed {
            guard: ChildGuard::spawn("ringbit seed", &mut cmd),
            port,
            log,
            _dir: dir,
        };
        let ready = helpers::wait_until(SEED_READY_LIMIT, || {
            peers::is_listening(port) || seed.guard.child.try_wait().unwrap().is_some()
        });
        if !ready || seed.guard.child.try_wait().unwrap().is_some() {
            panic!("ringbit seed did not start listening:\n{}", seed.log_text());
        }
        if let Some((tracker, hash)) = tracker {
            if !peers::wait_scrape(tracker, hash, SEED_READY_LIMIT, |s, _| s >= 1) {
                panic!("ringbit seed never announced as a seeder:\n{}", seed.log_text());
            }
        }
        seed
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT, then waits for a clean exit.
    fn stop(mut self) -> (ExitStatus, String) {
        self.guard.signal(libc::SIGINT);
        let status = self
            .guard
            .wait_timeout(STOP_LIMIT)
            .unwrap_or_else(|| panic!("ringbit seed ignored SIGINT:\n{}", self.log_text()));
        (status, self.log_text())
    }

    /// Stops it and asserts it exited 0 having uploaded something.
    pub(crate) fn stop_ok(self) {
        let (status, log) = self.stop();
        assert!(status.success(), "ringbit seed exited {status}:\n{log}");
        assert!(log.contains("stopped seeding"), "no final line:\n{log}");
    }
}

fn check_leecher(leecher: &mut Leecher, payload: &Payload, seed: &RingbitSeed) {
    if let Err(e) = leecher.wait_complete(DOWNLOAD_LIMIT) {
        panic!(
            "{} from ringbit seed: {e}\nseeder log:\n{}",
            leecher_name(leecher),
            seed.log_text()
        );
    }
    leecher.assert_same_as(&payload.save_path);
}

fn leecher_name(leecher: &Leecher) -> &'static str {
    leecher.kind.name()
}

// ---------------------------------------------------------------------------
// Real leechers

/// Goal: libtorrent downloads a multi-file torrent (empty files, odd sizes,
/// nested directories) from `ringbit seed` byte for byte.
/// Setup: no tracker; libtorrent dials the seeder.
/// Check: libtorrent exits 0, the trees are identical, the seeder stops
/// cleanly on SIGINT.
#[test]
fn libtorrent_downloads_multi_file_from_ringbit_seed() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seed = RingbitSeed::start(&torrent, &payload.save_path, &[], None);
    let out = tempfile::tempdir().unwrap();
    let mut lt = Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[seed.addr()], None);
    check_leecher(&mut lt, &payload, &seed);
    seed.stop_ok();
}

/// Goal: aria2 downloads the multi-file torrent from `ringbit seed`.
/// Setup: aria2 learns peers only from trackers: the harness announces the
/// seeder to a private opentracker aria2 is pointed at.
/// Check: aria2 exits 0, the trees are identical.
#[test]
fn aria2_downloads_multi_file_from_ringbit_seed() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seed = RingbitSeed::start(&torrent, &payload.save_path, &[], None);
    let out = tempfile::tempdir().unwrap();
    let mut aria = Leecher::start(PeerKind::Aria2, &torrent, out.path(), &[seed.addr()], None);
    check_leecher(&mut aria, &payload, &seed);
    seed.stop_ok();
}

/// Goal: transmission, which never dials 127.0.0.1, downloads from `ringbit
/// seed`: the seeder re-announces, learns transmission's address from the
/// tracker and dials it.
/// Setup: opentracker; the seeder announces first (`--reannounce-secs 2`),
/// transmission starts after it with no peers.
/// Check: transmission completes, files identical (it skips empty files);
/// after SIGINT the tracker no longer counts the seeder (`stopped`).
#[test]
fn transmission_downloads_multi_file_from_ringbit_seed_that_dials_it() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let tracker = payload.tracker();
    let torrent = payload.torrent_http(&tracker);
    let seed = RingbitSeed::start(
        &torrent,
        &payload.save_path,
        &["--reannounce-secs", REANNOUNCE_SECS],
        Some((&tracker, &payload.info_hash)),
    );
    let out = tempfile::tempdir().unwrap();
    let mut tr = Leecher::start(PeerKind::Transmission, &torrent, out.path(), &[], None);
    check_leecher(&mut tr, &payload, &seed);
    seed.stop_ok();
    // `stopped` reached the tracker: only transmission (now a seeder) is left.
    assert!(
        peers::wait_scrape(&tracker, &payload.info_hash, STOP_LIMIT, |s, l| s + l <= 1),
        "tracker still counts the stopped seeder: {:?}",
        peers::scrape(&tracker, &payload.info_hash)
    );
}

/// Goal: one `ringbit seed` serves libtorrent, aria2 and transmission at once.
/// Setup: one opentracker; the seeder announces, then the three leechers
/// start together (libtorrent dials, aria2 finds the seeder at the tracker,
/// transmission is dialled after a re-announce).
/// Check: all three complete with identical files.
#[test]
fn three_real_leechers_at_once_from_ringbit_seed() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let tracker = payload.tracker();
    let torrent = payload.torrent_http(&tracker);
    let seed = RingbitSeed::start(
        &torrent,
        &payload.save_path,
        &["--reannounce-secs", REANNOUNCE_SECS],
        Some((&tracker, &payload.info_hash)),
    );
    let outs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut leechers = vec![
        Leecher::start(PeerKind::Libtorrent, &torrent, outs[0].path(), &[seed.addr()], None),
        Leecher::start(PeerKind::Aria2, &torrent, outs[1].path(), &[], None),
        Leecher::start(PeerKind::Transmission, &torrent, outs[2].path(), &[], None),
    ];
    for leecher in &mut leechers {
        check_leecher(leecher, &payload, &seed);
    }
    seed.stop_ok();
}

// ---------------------------------------------------------------------------
// Rate limits

/// Goal: `--upload-limit` holds the seeder to its rate: a correctness check
/// of the limit (a lower bound on the time), not a speed target.
/// Setup: a 6 MiB single-file payload seeded with `--upload-limit 2M`
/// (2 MiB/s); libtorrent dials the seeder and downloads it.
/// Check: libtorrent completes with identical data, no sooner than 80% of
/// size / limit (3 s; the first burst is 0.1 s of the rate, and libtorrent's
/// own start-up only adds time). Measured here: 4.7-5.3 s limited, 1.5-1.7 s
/// unlimited (libtorrent's start-up included), so the bound tells them apart.
#[test]
fn upload_limit_holds_libtorrent_leecher_to_the_rate() {
    const SIZE: usize = 6 * 1024 * 1024;
    const LIMIT_BYTES_PER_S: f64 = 2.0 * 1024.0 * 1024.0;
    let payload = Payload::single_file("limited.bin", SIZE, PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seed = RingbitSeed::start(&torrent, &payload.save_path, &["--upload-limit", "2M"], None);
    let out = tempfile::tempdir().unwrap();
    let mut lt = Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[seed.addr()], None);
    let elapsed = match lt.wait_complete(Duration::from_secs(15)) {
        Ok(elapsed) => elapsed,
        Err(e) => panic!("libtorrent from a limited seed: {e}\nseeder log:\n{}", seed.log_text()),
    };
    lt.assert_same_as(&payload.save_path);
    let floor = 0.8 * SIZE as f64 / LIMIT_BYTES_PER_S;
    assert!(
        elapsed.as_secs_f64() >= floor,
        "6 MiB at 2 MiB/s arrived in {elapsed:?} (at least {floor:.1} s expected)"
    );
    seed.stop_ok();
}

// ---------------------------------------------------------------------------
// Hostile leechers

const MSG_UNCHOKE: u8 = 1;
const MSG_INTERESTED: u8 = 2;
const MSG_BITFIELD: u8 = 5;
const MSG_REQUEST: u8 = 6;
const MSG_PIECE: u8 = 7;
const MSG_HAVE_ALL: u8 = 14;
const MSG_REJECT: u8 = 16;
const MSG_ALLOWED_FAST: u8 = 17;
const BLOCK: u32 = 16 * 1024;
/// Longest message the hand-written leecher accepts (a block plus header).
const MAX_MESSAGE: usize = BLOCK as usize + 64;
/// How long the hand-written leecher waits for any one answer.
const WIRE_LIMIT: Duration = Duration::from_secs(20);

/// A minimal BitTorrent peer over std `TcpStream`, speaking the fast extension.
struct RawPeer {
    stream: TcpStream,
}

/// What the hostile peer received.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Message(u8, Vec<u8>),
    Closed,
}

impl RawPeer {
    /// Handshakes (fast bit only) and returns the seeder's pieces (`None`
    /// entries: have-all).
    fn connect(addr: SocketAddr, info_hash_hex: &str) -> (RawPeer, Vec<bool>, u32) {
        let stream = TcpStream::connect_timeout(&addr, WIRE_LIMIT).unwrap();
        stream.set_read_timeout(Some(WIRE_LIMIT)).unwrap();
        let mut peer = RawPeer { stream };
        let mut hs = Vec::with_capacity(68);
        hs.push(19);
        hs.extend_from_slice(b"BitTorrent protocol");
        hs.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x04]);
        hs.extend_from_slice(&hex(info_hash_hex));
        hs.extend_from_slice(b"-XX0001-hostile-peer");
        peer.stream.write_all(&hs).unwrap();
        let mut theirs = [0u8; 68];
        peer.stream.read_exact(&mut theirs).unwrap();
        assert_eq!(&theirs[28..48], &hex(info_hash_hex)[..], "handshake for another torrent");
        assert_ne!(theirs[27] & 0x04, 0, "seeder does not offer the fast extension");
        loop {
            match peer.next() {
                Got::Message(MSG_BITFIELD, bits) => {
                    let have: Vec<bool> =
                        (0..bits.len() * 8).map(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0).collect();
                    let count = have.iter().filter(|h| **h).count() as u32;
                    return (peer, have, count);
                }
                Got::Message(MSG_HAVE_ALL, _) => return (peer, Vec::new(), u32::MAX),
                Got::Message(..) => continue,
                Got::Closed => panic!("seeder closed before its bitfield"),
            }
        }
    }

    fn send(&mut self, id: u8, payload: &[u8]) {
        let mut msg = Vec::with_capacity(5 + payload.len());
        msg.extend_from_slice(&(1 + payload.len() as u32).to_be_bytes());
        msg.push(id);
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg).unwrap();
    }

    /// Interested, then waits for the unchoke.
    fn get_unchoked(&mut self) {
        self.send(MSG_INTERESTED, &[]);
        loop {
            match self.next() {
                Got::Message(MSG_UNCHOKE, _) => return,
                Got::Message(..) => continue,
                Got::Closed => panic!("seeder closed instead of unchoking"),
            }
        }
    }

    /// The next message (keep-alives skipped); `Closed` on EOF or reset.
    /// Panics when nothing arrives within `WIRE_LIMIT`.
    fn next(&mut self) -> Got {
        loop {
            let mut len = [0u8; 4];
            if let Err(e) = self.stream.read_exact(&mut len) {
                return closed_or_panic(e);
            }
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                continue;
            }
            assert!(len <= MAX_MESSAGE, "message of {len} bytes");
            let mut body = vec![0u8; len];
            if let Err(e) = self.stream.read_exact(&mut body) {
                return closed_or_panic(e);
            }
            let id = body[0];
            return Got::Message(id, body[1..].to_vec());
        }
    }
}

fn closed_or_panic(e: std::io::Error) -> Got {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => Got::Closed,
        _ => panic!("no answer from the seeder within {WIRE_LIMIT:?}: {e}"),
    }
}

fn request(piece: u32, begin: u32, length: u32) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[..4].copy_from_slice(&piece.to_be_bytes());
    r[4..8].copy_from_slice(&begin.to_be_bytes());
    r[8..].copy_from_slice(&length.to_be_bytes());
    r
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Goal: requests for pieces the seeder lacks get a fast-extension reject and
/// no data, while a piece it has is served; an out-of-range request ends the
/// connection without data.
/// Setup: a multi-file payload with one file deleted, seeded with
/// `--partial`; a hand-written leecher (std TcpStream, fast bit).
/// Check: reject for the missing piece's block, piece for the present one;
/// the out-of-range request closes the connection; the seeder keeps running
/// and exits 0 on SIGINT.
#[test]
fn requests_for_missing_pieces_are_rejected_by_a_partial_seed() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    std::fs::remove_file(payload.save_path.join("multi/sub/b.bin")).unwrap();
    let seed = RingbitSeed::start(&torrent, &payload.save_path, &["--partial"], None);
    assert!(seed.log_text().contains("sub/b.bin (missing)"), "{}", seed.log_text());

    let (mut peer, have, count) = RawPeer::connect(seed.addr(), &payload.info_hash);
    let pieces = payload.total_size.div_ceil(payload.piece_length) as usize;
    assert!(
        count != u32::MAX && count > 0 && (count as usize) < pieces,
        "have {count} of {pieces}"
    );
    let missing = (0..pieces).find(|&p| !have[p]).unwrap() as u32;
    let present = (0..pieces).find(|&p| have[p]).unwrap() as u32;
    peer.get_unchoked();
    peer.send(MSG_REQUEST, &request(missing, 0, BLOCK));
    peer.send(MSG_REQUEST, &request(present, 0, BLOCK));
    let (mut rejected, mut served) = (false, false);
    while !(rejected && served) {
        match peer.next() {
            Got::Message(MSG_REJECT, r) => {
                assert_eq!(r, request(missing, 0, BLOCK), "reject for another request");
                rejected = true;
            }
            Got::Message(MSG_PIECE, p) => {
                let piece = u32::from_be_bytes(p[..4].try_into().unwrap());
                assert_eq!(piece, present, "got data of a piece the seeder lacks");
                assert_eq!(p.len() - 8, BLOCK as usize);
                served = true;
            }
            Got::Message(..) => {}
            Got::Closed => panic!("closed before answering:\n{}", seed.log_text()),
        }
    }
    // Out of range: the torrent has `pieces` pieces.
    peer.send(MSG_REQUEST, &request(pieces as u32 + 5, 0, BLOCK));
    loop {
        match peer.next() {
            Got::Message(MSG_PIECE, _) => panic!("data for an out-of-range request"),
            Got::Message(..) => {}
            Got::Closed => break,
        }
    }
    seed.stop_ok();
}

/// Goal: a leecher flooding requests (thousands past the advertised queue
/// limit) is dropped, and an honest leecher downloading at the same time is
/// not affected.
/// Setup: full seed on 127.0.0.1 and ::1; libtorrent leeches over
/// 127.0.0.1; a hand-written fast-extension peer over ::1 gets unchoked and sends 20,000 requests in one go (from a thread, while
/// the main thread reads).
/// Check: the flooder's connection is closed by the seeder; libtorrent
/// completes with identical files.
#[test]
fn request_flooder_is_dropped_while_an_honest_leecher_completes() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    // The flooder comes from ::1: a dropped flooder's address is banned, and
    // the honest leecher must not share it (as on the Internet).
    let seed = RingbitSeed::start(&torrent, &payload.save_path, &["--bind", "::1"], None);
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, seed.port));
    let (mut peer, _, count) = RawPeer::connect(v6, &payload.info_hash);
    assert_eq!(count, u32::MAX, "a full seed sends have-all to a fast peer");
    peer.get_unchoked();
    let out = tempfile::tempdir().unwrap();
    let mut lt = Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[seed.addr()], None);

    let pieces = payload.total_size.div_ceil(payload.piece_length) as u32;
    let mut flood = Vec::new();
    for i in 0..20_000u32 {
        let r = request(i % pieces.min(20), 0, BLOCK);
        flood.extend_from_slice(&13u32.to_be_bytes());
        flood.push(MSG_REQUEST);
        flood.extend_from_slice(&r);
    }
    let mut writer = peer.stream.try_clone().unwrap();
    writer.set_write_timeout(Some(WIRE_LIMIT)).unwrap();
    // The seeder may close mid-flood: a write error is the expected outcome.
    let flooder = std::thread::spawn(move || writer.write_all(&flood).is_ok());
    let deadline = Instant::now() + DOWNLOAD_LIMIT;
    let mut blocks = 0u32;
    loop {
        assert!(Instant::now() < deadline, "flooder never dropped:\n{}", seed.log_text());
        match peer.next() {
            Got::Message(MSG_PIECE, _) => blocks += 1,
            Got::Message(..) => {}
            Got::Closed => break,
        }
    }
    let _ = flooder.join();
    assert!(blocks <= 20_000, "{blocks} blocks");
    check_leecher(&mut lt, &payload, &seed);
    seed.stop_ok();
}

/// Goal: BEP 6 allowed fast from the real binary: a choked fast-extension
/// peer is offered its canonical allowed-fast set and served those pieces
/// while still choked; other pieces are rejected.
/// Setup: a full seed; a hand-written fast peer connects and never says it is
/// interested (so it is never unchoked).
/// Check: after have-all it gets 10 `allowed_fast` messages, exactly
/// `wire::allowed_fast_set` for 127.0.0.1; a block of the first is served
/// and a block of a piece outside the set is rejected, with no unchoke.
#[test]
fn choked_peer_is_offered_and_served_its_allowed_fast_pieces() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seed = RingbitSeed::start(&torrent, &payload.save_path, &[], None);
    let (mut peer, _, count) = RawPeer::connect(seed.addr(), &payload.info_hash);
    assert_eq!(count, u32::MAX, "a full seed sends have-all to a fast peer");
    let pieces = payload.total_size.div_ceil(payload.piece_length) as u32;
    let info_hash = ringbit::metainfo::InfoHash(hex(&payload.info_hash).try_into().unwrap());
    let expected = ringbit::wire::allowed_fast_set(
        std::net::Ipv4Addr::LOCALHOST.into(),
        &info_hash,
        pieces,
        ringbit::wire::ALLOWED_FAST_SET_SIZE,
    );
    assert_eq!(expected.len(), 10);
    let mut offered = Vec::new();
    while offered.len() < expected.len() {
        match peer.next() {
            Got::Message(MSG_ALLOWED_FAST, p) => {
                offered.push(u32::from_be_bytes(p[..4].try_into().unwrap()))
            }
            Got::Message(MSG_UNCHOKE, _) => panic!("unchoked without asking"),
            Got::Message(..) => {}
            Got::Closed => panic!("closed before allowed fast:\n{}", seed.log_text()),
        }
    }
    assert_eq!(offered, expected);
    let fast = offered[0];
    let other = (0..pieces).find(|p| !offered.contains(p)).unwrap();
    peer.send(MSG_REQUEST, &request(other, 0, BLOCK));
    peer.send(MSG_REQUEST, &request(fast, 0, BLOCK));
    let (mut rejected, mut served) = (false, false);
    while !(rejected && served) {
        match peer.next() {
            Got::Message(MSG_REJECT, r) => {
                assert_eq!(r, request(other, 0, BLOCK), "reject for another request");
                rejected = true;
            }
            Got::Message(MSG_PIECE, p) => {
                let piece = u32::from_be_bytes(p[..4].try_into().unwrap());
                assert_eq!(piece, fast, "data of a piece outside the allowed-fast set");
                served = true;
            }
            Got::Message(MSG_UNCHOKE, _) => panic!("unchoked without asking"),
            Got::Message(..) => {}
            Got::Closed => panic!("closed before answering:\n{}", seed.log_text()),
        }
    }
    seed.stop_ok();
}

// ---------------------------------------------------------------------------
// Refusals

/// Goal: `ringbit seed` refuses to serve corrupt data.
/// Setup: a multi-file payload with one byte of one file flipped (same size).
/// Check: exit status 1 and a message naming the corrupt piece count and
/// `--partial`; no listener is left behind (the process exited).
#[test]
fn seed_refuses_corrupt_data_without_partial() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let file = payload.save_path.join("multi/sub/deeper/d.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let port = helpers::free_port();
    let out = helpers::run_bounded(
        helpers::ringbit().arg("seed").arg(&torrent).arg(&payload.save_path).args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]),
        SEED_READY_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("0 pieces missing, 1 corrupt"), "stderr:\n{stderr}");
    assert!(stderr.contains("--partial"), "stderr:\n{stderr}");
}

/// Goal: `ringbit seed` trusts resume state that matches the data and
/// rechecks when the data changed.
/// Setup: seed once (full check, resume saved), stop; seed again; then flip a
/// byte of one file (same size, new mtime) and seed a third time.
/// Check: the second run says it is not rechecking; the third rechecks and
/// refuses the corrupt piece (never trusting stale state).
#[test]
fn seed_trusts_matching_resume_state_and_rechecks_changed_data() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap().to_string();
    let extra = ["--no-trackers", "--state-dir", state_arg.as_str()];
    let first = RingbitSeed::start(&torrent, &payload.save_path, &extra, None);
    let (status, log) = first.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("not rechecking"), "nothing to trust the first time:\n{log}");
    let second = RingbitSeed::start(&torrent, &payload.save_path, &extra, None);
    let (status, log) = second.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("resume state matches the data"), "{log}");

    let file = payload.save_path.join("multi/sub/deeper/d.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0xff;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, bytes).unwrap();
    let port = helpers::free_port().to_string();
    let out = helpers::run_bounded(
        helpers::ringbit()
            .arg("seed")
            .arg(&torrent)
            .arg(&payload.save_path)
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(extra),
        SEED_READY_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stale resume state was trusted:\n{stderr}");
    assert!(stderr.contains("1 corrupt"), "{stderr}");
}

/// `ringbit bench`, the README's main job: two leechers download a generated
/// payload from a ringbit seeder, every byte is compared, and the report
/// times each leecher to its "download finished" line, before its exit flush.
#[test]
fn bench_moves_the_payload_between_ringbit_processes_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = helpers::run_bounded(
        helpers::ringbit()
            .arg("bench")
            .args(["--size", "6M", "--piece-length", "256K", "--leechers", "2", "--json"])
            .args(["--timeout-secs", "120", "--dir"])
            .arg(dir.path()),
        Duration::from_secs(180),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["verified"], true);
    assert_eq!(report["size_bytes"], 6 << 20);
    let leechers = report["leechers"].as_array().unwrap();
    assert_eq!(leechers.len(), 2, "{report}");
    for leecher in leechers {
        let finished = leecher["seconds"].as_f64().unwrap();
        let exited = leecher["exit_seconds"].as_f64().unwrap();
        assert!(finished > 0.0 && finished <= exited, "{leecher}");
        let rate = leecher["mb_per_s"].as_f64().unwrap();
        assert!((rate - 6.0 * 1048576.0 / finished / 1e6).abs() < 1e-6, "{leecher}");
    }
    assert!(report["seeder"]["mb_per_s"].as_f64().unwrap() > 0.0, "{report}");
    // Both downloads are where --dir says, byte-identical to the payload
    // (bench compared them; check one here too).
    let payload = std::fs::read(dir.path().join("seed/payload.bin")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("leech0/payload.bin")).unwrap(), payload);
}
