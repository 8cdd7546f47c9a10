//! Magnet links end to end (issue 12, BEP 9): `ringbit download 'magnet:?…'`
//! fetches the metadata from a libtorrent seeder, then the data; libtorrent,
//! aria2 and transmission leechers that start from a magnet link get the
//! metadata from a `ringbit seed` alone; hostile metadata peers (a 4 GiB
//! `metadata_size`, metadata that does not hash to the info hash) are
//! dropped while the download completes from the honest seeder.
//!
//! Every ringbit here gets its own `--state-dir` (the fetched .torrent is
//! saved there; payloads are deterministic, so a shared state dir would let
//! one test find another's metadata). Every wait is bounded.

use crate::helpers::{self, ChildGuard};
use crate::peers::{self, Leecher, Payload, PeerKind, Seeder};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A whole magnet download of a few MiB over loopback (metadata included).
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(60);
/// Seeder start-up (recheck of a few MiB, listen, announce).
const SEED_READY_LIMIT: Duration = Duration::from_secs(30);
/// Shutdown after SIGINT.
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// 256 KiB pieces.
const PIECE_LOG2: u32 = 18;
/// Bound on each read of the scripted hostile peers.
const FAKE_IO_LIMIT: Duration = Duration::from_secs(20);

fn magnet(info_hash: &str, trackers: &[String], peers: &[SocketAddr]) -> String {
    let mut uri = format!("magnet:?xt=urn:btih:{info_hash}&dn=test");
    for t in trackers {
        uri.push_str(&format!("&tr={t}"));
    }
    for p in peers {
        uri.push_str(&format!("&x.pe={p}"));
    }
    uri
}

/// `ringbit download URI -o OUT` with its own state dir, output to a log.
struct RingbitDownload {
    guard: ChildGuard,
    log: PathBuf,
    port: u16,
    started: Instant,
}

impl RingbitDownload {
    fn start(uri: &str, out: &Path, state: &Path, extra: &[&str]) -> RingbitDownload {
        let log = state.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let port = helpers::free_port();
        let mut cmd = helpers::ringbit();
        cmd.args(["-v", "download", uri, "-o"])
            .arg(out)
            .arg("--state-dir")
            .arg(state)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        RingbitDownload {
            guard: ChildGuard::spawn("ringbit download", &mut cmd),
            log,
            port,
            started: Instant::now(),
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for exit 0 within `limit`; panics with the log otherwise.
    fn wait_ok(&mut self, limit: Duration) -> Duration {
        match self.guard.wait_timeout(limit) {
            Some(status) if status.success() => self.started.elapsed(),
            Some(status) => panic!("ringbit download exited {status}:\n{}", self.log_text()),
            None => panic!("ringbit download overran {limit:?}:\n{}", self.log_text()),
        }
    }
}

/// A running `ringbit seed` on a fresh port.
struct RingbitSeed {
    guard: ChildGuard,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RingbitSeed {
    fn start(torrent: &Path, data_dir: &Path, extra: &[&str]) -> RingbitSeed {
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
        assert!(
            ready && seed.guard.child.try_wait().unwrap().is_none(),
            "ringbit seed did not start listening:\n{}",
            seed.log_text()
        );
        seed
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop_ok(mut self) {
        self.guard.signal(libc::SIGINT);
        let status = self
            .guard
            .wait_timeout(STOP_LIMIT)
            .unwrap_or_else(|| panic!("ringbit seed ignored SIGINT:\n{}", self.log_text()));
        assert!(status.success(), "ringbit seed exited {status}:\n{}", self.log_text());
    }
}

/// Goal: `ringbit download 'magnet:?xt=…&x.pe=…'` gets the metadata and the
/// data from a libtorrent seeder, saves the .torrent beside its resume state,
/// and a second run uses the saved .torrent instead of fetching again.
/// Setup: a multi-file payload seeded by libtorrent; no tracker.
/// Check: exit 0, trees identical, "fetching metadata (" and "metadata
/// received" in the log, `<state>/<hash>.torrent` exists and is the same
/// torrent; a rerun with no reachable peer says "already complete".
#[test]
fn magnet_download_from_libtorrent_seeder() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let state = work.path().join("state");
    let uri = magnet(&payload.info_hash, &[], &[seeder.addr()]);
    let mut dl = RingbitDownload::start(&uri, &out, &state, &["--no-trackers"]);
    dl.wait_ok(DOWNLOAD_LIMIT);
    let log = dl.log_text();
    assert!(log.contains("fetching metadata ("), "no progress line:\n{log}");
    assert!(log.contains("metadata received"), "{log}");
    helpers::assert_same_tree(&payload.save_path, &out);
    let saved = state.join(format!("{}.torrent", payload.info_hash));
    let info = peers::TorrentInfo::read(&saved);
    assert_eq!(info.info_hash, payload.info_hash);
    // Restart: the saved .torrent is used; nothing to fetch, nothing to dial.
    drop(seeder);
    let dead = SocketAddr::from(([127, 0, 0, 1], helpers::free_port()));
    let uri = magnet(&payload.info_hash, &[], &[dead]);
    let mut again = RingbitDownload::start(&uri, &out, &state, &["--no-trackers"]);
    again.wait_ok(Duration::from_secs(30));
    let log = again.log_text();
    assert!(log.contains("already complete"), "{log}");
    assert!(!log.contains("fetching metadata"), "{log}");
}

/// Goal: libtorrent, aria2 and transmission leechers that start from a magnet
/// link get the metadata from a `ringbit seed` alone, then the data.
/// Setup: opentracker; transmission starts first (it never dials loopback, and
/// before it has the metadata it announces `left=0`, so a seeding client is
/// never told of it by the tracker): ringbit seeds with `--peer` transmission's
/// address and dials it. libtorrent dials the seeder (`x.pe`); aria2 finds it
/// at the tracker. transmission restarts its torrent once the metadata is in
/// (closing every connection, and it will not dial us back): when its log says
/// so, a second `ringbit seed` dials it for the data.
/// Check: all three complete with identical files, every byte from ringbit.
#[test]
fn real_leechers_get_metadata_from_ringbit_seed_alone() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let tracker = payload.tracker();
    let torrent = payload.torrent_http(&tracker);
    let trackers = [tracker.http_announce()];
    let plain = magnet(&payload.info_hash, &trackers, &[]);
    let outs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tr = Leecher::start(PeerKind::Transmission, Path::new(&plain), outs[2].path(), &[], None);
    let tr_addr = tr.addr().to_string();
    let seed = RingbitSeed::start(
        &torrent,
        &payload.save_path,
        // 4 MiB/s: each leecher takes seconds, so the harness sees it
        // listen before it is done.
        &["--peer", &tr_addr, "--encryption", "disable", "--upload-limit", "4M"],
    );
    assert!(
        peers::wait_scrape(&tracker, &payload.info_hash, SEED_READY_LIMIT, |s, _| s >= 1),
        "ringbit seed never announced:\n{}",
        seed.log_text()
    );
    let with_peer = magnet(&payload.info_hash, &trackers, &[seed.addr()]);
    let mut leechers = vec![
        Leecher::start(PeerKind::Libtorrent, Path::new(&with_peer), outs[0].path(), &[], None),
        Leecher::start(PeerKind::Aria2, Path::new(&plain), outs[1].path(), &[], None),
        tr,
    ];
    let tr_restarted =
        helpers::wait_until(DOWNLOAD_LIMIT, || leechers[2].log().contains("Magnet Verify"));
    assert!(
        tr_restarted,
        "transmission got no metadata:\n{}\nseeder log:\n{}",
        leechers[2].log(),
        seed.log_text()
    );
    let data_seed = RingbitSeed::start(
        &torrent,
        &payload.save_path,
        &["--peer", &tr_addr, "--encryption", "disable"],
    );
    for leecher in &mut leechers {
        if let Err(e) = leecher.wait_complete(DOWNLOAD_LIMIT) {
            panic!("{} from a magnet link: {e}\nseeder log:\n{}", leecher.kind, seed.log_text());
        }
        leecher.assert_same_as(&payload.save_path);
    }
    seed.stop_ok();
    data_seed.stop_ok();
}

/// What a scripted hostile metadata peer does.
#[derive(Clone, Copy)]
enum Hostile {
    /// Claims `metadata_size` 4 GiB.
    HugeSize,
    /// Claims the right size and answers every request with garbage.
    WrongMetadata { size: u64 },
}

/// Serves one BitTorrent connection at a time on 127.0.0.1 as `behaviour`
/// says, until the test ends (the listener thread ends with the process).
fn hostile_peer(info_hash: [u8; 20], behaviour: Hostile) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(stream) = stream else { continue };
            let _ = serve_hostile(stream, info_hash, behaviour);
        }
    });
    addr
}

fn serve_hostile(mut s: TcpStream, info_hash: [u8; 20], behaviour: Hostile) -> std::io::Result<()> {
    s.set_read_timeout(Some(FAKE_IO_LIMIT))?;
    let mut hs = [0u8; 68];
    s.read_exact(&mut hs)?;
    let mut ours = Vec::with_capacity(68);
    ours.push(19);
    ours.extend_from_slice(b"BitTorrent protocol");
    ours.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
    ours.extend_from_slice(&info_hash);
    ours.extend_from_slice(b"-XX0001-hostilepeer1");
    s.write_all(&ours)?;
    let size = match behaviour {
        Hostile::HugeSize => 4u64 << 30,
        Hostile::WrongMetadata { size } => size,
    };
    let dict = format!("d1:md11:ut_metadatai2ee13:metadata_sizei{size}ee");
    write_extended(&mut s, 0, dict.as_bytes())?;
    // Answer every ut_metadata request (sent to our id 2) with garbage of the
    // right length; ignore everything else. Bounded by the read timeout and
    // by the number of messages.
    for _ in 0..10_000 {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 1 << 20 {
            return Ok(());
        }
        let mut msg = vec![0u8; len];
        s.read_exact(&mut msg)?;
        if msg.len() < 2 || msg[0] != 20 || msg[1] != 2 {
            continue;
        }
        let text = String::from_utf8_lossy(&msg[2..]).to_string();
        let Some(piece) = text
            .split("5:piecei")
            .nth(1)
            .and_then(|rest| rest.split('e').next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let start = piece * 16384;
        let piece_len = size.saturating_sub(start).min(16384) as usize;
        let mut body = format!("d8:msg_typei1e5:piecei{piece}e10:total_sizei{size}ee").into_bytes();
        body.extend(std::iter::repeat_n(0xAB, piece_len));
        // The id the fetch asked us to use for its ut_metadata: 1 (ringbit's).
        write_extended(&mut s, 1, &body)?;
    }
    Ok(())
}

fn write_extended(s: &mut TcpStream, id: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(payload.len() + 6);
    msg.extend_from_slice(&(payload.len() as u32 + 2).to_be_bytes());
    msg.push(20);
    msg.push(id);
    msg.extend_from_slice(payload);
    s.write_all(&msg)
}

fn hash_bytes(hex: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Goal: hostile metadata peers cannot stop a magnet download: one claims a
/// 4 GiB `metadata_size` (refused before anything is allocated), one sends
/// metadata that does not hash to the info hash (dropped, never dialled
/// again); the metadata then comes from an honest peer.
/// Setup: the two hostile peers are the magnet's only `x.pe`; once ringbit
/// has dropped both, a libtorrent seeder starts and dials ringbit (an
/// incoming connection to a fetch).
/// Check: both faults are logged before the seeder exists and no metadata
/// was accepted from them; then the download completes byte-identical.
#[test]
fn hostile_metadata_peers_are_dropped_and_download_completes() {
    let payload = Payload::single_file("one.bin", 3 * 1024 * 1024 + 5, PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let hash = hash_bytes(&payload.info_hash);
    let huge = hostile_peer(hash, Hostile::HugeSize);
    // The info dictionary's real size, so the garbage reaches the hash check.
    let real_size = {
        let bytes = std::fs::read(&torrent).unwrap();
        let at = bytes.windows(7).position(|w| w == b"4:infod").unwrap() + 6;
        (bytes.len() - 1 - at) as u64
    };
    let liar = hostile_peer(hash, Hostile::WrongMetadata { size: real_size });
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let state = work.path().join("state");
    let uri = magnet(&payload.info_hash, &[], &[huge, liar]);
    let mut dl = RingbitDownload::start(&uri, &out, &state, &["--no-trackers"]);
    let both = helpers::wait_until(Duration::from_secs(30), || {
        let log = dl.log_text();
        log.contains("over the limit") && log.contains("does not match the info hash")
    });
    let log = dl.log_text();
    assert!(both, "hostile peers not both dropped:\n{log}");
    assert!(!log.contains("metadata received"), "{log}");
    let mut seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    seeder.connect(dl.addr()).unwrap();
    dl.wait_ok(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, &out);
    assert!(dl.log_text().contains("metadata received"));
}
