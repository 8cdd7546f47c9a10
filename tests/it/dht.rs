//! The mainline DHT against real libtorrent nodes on loopback (issue 12).
//!
//! Every test passes explicit loopback bootstrap nodes; `helpers::ringbit`
//! sets `RINGBIT_DHT_BOOTSTRAP=none`, and `tests/peers/lt_dht.py` empties
//! libtorrent's `dht_bootstrap_nodes`, so nothing asks the internet routers.
//!
//! * `libtorrent_finds_ringbit_seed_through_the_dht` — goal: a libtorrent
//!   leecher with no trackers finds a `ringbit seed` through a loopback DHT
//!   of three libtorrent nodes. Check: the download completes, byte-identical.
//! * `ringbit_download_finds_libtorrent_seed_through_the_dht` — goal: ringbit
//!   `download` of a tracker-less .torrent finds a libtorrent seeder through
//!   the DHT alone. Check: byte-identical download.
//! * `ringbit_magnet_download_finds_libtorrent_seed_through_the_dht` — goal:
//!   a magnet link with no `tr=` and no `x.pe=`: the metadata and the data
//!   come from a libtorrent seeder found through the DHT alone. Check:
//!   "metadata received" in the log, byte-identical download.
//! * `hostile_datagrams_leave_the_dht_answering` — garbage, oversized
//!   datagrams and a flood of unsolicited replies at ringbit's DHT port; it
//!   still answers a well-formed ping and keeps seeding.

use crate::helpers::{self, lt_tool, ChildGuard};
use std::net::UdpSocket;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const DOWNLOAD_LIMIT_SECS: u64 = 90;

fn lt_dht() -> std::process::Command {
    let python = helpers::require_tool("python3");
    // Fails loudly when libtorrent's binding is missing.
    drop(lt_tool());
    let mut cmd = std::process::Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/lt_dht.py"));
    cmd
}

/// A payload and its tracker-less .torrent.
fn payload(dir: &Path, seed: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("dht.bin"), helpers::payload_bytes(3 * 1024 * 1024 + 123, seed))
        .unwrap();
    let torrent = dir.join("dht.torrent");
    helpers::run_ok(
        helpers::ringbit()
            .arg("create")
            .arg(data.join("dht.bin"))
            .arg("-o")
            .arg(&torrent)
            .args(["--piece-length", "256K"]),
        LIMIT,
    );
    (data, torrent)
}

fn ports(n: usize) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        let p = helpers::free_port();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn joined(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn start_seed(torrent: &Path, data: &Path, port: u16, bootstrap: &[u16], log: &Path) -> ChildGuard {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = helpers::ringbit();
    cmd.arg("seed").arg(torrent).arg(data).args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--no-trackers",
    ]);
    for p in bootstrap {
        cmd.args(["--dht-bootstrap", &format!("127.0.0.1:{p}")]);
    }
    cmd.env("RUST_LOG", "ringbit=debug")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    ChildGuard::spawn("ringbit seed", &mut cmd)
}

#[test]
fn libtorrent_finds_ringbit_seed_through_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let (data, torrent) = payload(dir.path(), 12);
    let lt_ports = ports(4);
    let seed_port = helpers::free_port();
    let log = dir.path().join("seed.log");
    let mut seed = start_seed(&torrent, &data, seed_port, &lt_ports[..3], &log);
    let save = dir.path().join("leech");
    std::fs::create_dir_all(&save).unwrap();
    let output = helpers::run_bounded(
        lt_dht()
            .args(["--ports", &joined(&lt_ports)])
            .args(["--node", &format!("127.0.0.1:{seed_port}")])
            .arg("leech")
            .arg(&torrent)
            .arg(&save)
            .args(["--timeout", &DOWNLOAD_LIMIT_SECS.to_string()]),
        LIMIT,
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        output.status.success(),
        "libtorrent did not finish: {}\n{}\nringbit:\n{log_text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read(save.join("dht.bin")).unwrap(),
        std::fs::read(data.join("dht.bin")).unwrap()
    );
    seed.signal(libc::SIGINT);
    assert!(seed.wait_timeout(Duration::from_secs(20)).is_some_and(|s| s.success()), "{log_text}");
}

#[test]
fn ringbit_download_finds_libtorrent_seed_through_the_dht() {
    download_from_libtorrent_through_the_dht(false);
}

#[test]
fn ringbit_magnet_download_finds_libtorrent_seed_through_the_dht() {
    download_from_libtorrent_through_the_dht(true);
}

/// `ringbit download` of the .torrent, or of a bare magnet link (`magnet`),
/// with the DHT as the only source of peers.
fn download_from_libtorrent_through_the_dht(magnet: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (data, torrent) = payload(dir.path(), if magnet { 14 } else { 13 });
    let lt_ports = ports(4);
    let mut seeder = lt_dht();
    seeder
        .args(["--ports", &joined(&lt_ports)])
        .arg("seed")
        .arg(&torrent)
        .arg(&data)
        .args(["--timeout", "150"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _seeder = ChildGuard::spawn("libtorrent DHT seeder", &mut seeder);
    let out = dir.path().join("out");
    let mut cmd = helpers::ringbit();
    cmd.arg("download");
    if magnet {
        let info_hash = crate::peers::TorrentInfo::read(&torrent).info_hash;
        cmd.arg(format!("magnet:?xt=urn:btih:{info_hash}"));
        cmd.arg("--state-dir").arg(dir.path().join("state"));
    } else {
        cmd.arg(&torrent);
    }
    cmd.arg("-o").arg(&out).args([
        "--port",
        &helpers::free_port().to_string(),
        "--bind",
        "127.0.0.1",
        "--no-trackers",
    ]);
    for p in &lt_ports[..3] {
        cmd.args(["--dht-bootstrap", &format!("127.0.0.1:{p}")]);
    }
    cmd.env("RUST_LOG", "ringbit=debug");
    let output = helpers::run_bounded(&mut cmd, LIMIT);
    assert!(
        output.status.success(),
        "ringbit download failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if magnet {
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(log.contains("metadata received"), "{log}");
    }
    assert_eq!(
        std::fs::read(out.join("dht.bin")).unwrap(),
        std::fs::read(data.join("dht.bin")).unwrap()
    );
}

#[test]
fn hostile_datagrams_leave_the_dht_answering() {
    let dir = tempfile::tempdir().unwrap();
    let (data, torrent) = payload(dir.path(), 14);
    let port = helpers::free_port();
    let log = dir.path().join("seed.log");
    let mut seed = start_seed(&torrent, &data, port, &[], &log);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let target = ("127.0.0.1", port);
    let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:pp1:y1:qe";
    let mut buffer = [0u8; 2048];
    let answered = |socket: &UdpSocket, buffer: &mut [u8]| {
        socket.send_to(ping, target).unwrap();
        (0..4).any(|_| matches!(socket.recv_from(buffer), Ok((n, _)) if buffer[..n].windows(5).any(|w| w == b"1:t2:")))
    };
    assert!(
        helpers::wait_until(Duration::from_secs(20), || answered(&socket, &mut buffer)),
        "no answer to a ping:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut x: u64 = 0x9e37_79b9;
    for i in 0..3000usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = [1usize, 20, 300, 1400, 5000, 60_000][i % 6];
        let mut garbage: Vec<u8> = (0..len).map(|j| (x >> (j % 56)) as u8).collect();
        if i % 2 == 0 {
            garbage[0] = b'd';
        }
        let _ = socket.send_to(&garbage, target);
        // A reply to a query never sent.
        let reply = format!("d1:rd2:id20:{:020}5:nodes26:{:026}e1:t2:{:02}1:y1:re", i, i, i % 100);
        let _ = socket.send_to(reply.as_bytes(), target);
    }
    // Drain what the flood made it say, then it must still answer.
    while socket.recv_from(&mut buffer).is_ok() {}
    std::thread::sleep(Duration::from_secs(5)); // the per-IP query budget refills
    assert!(answered(&socket, &mut buffer), "the DHT stopped answering after the flood");
    assert!(seed.child.try_wait().unwrap().is_none(), "ringbit died");
    seed.signal(libc::SIGINT);
    let status = seed.wait_timeout(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
