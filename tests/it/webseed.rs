//! Web seeds (issue 12, BEP 19): a local HTTP server with Range support
//! (`tests/peers/http_seed.py`, python's http.server on 127.0.0.1, port 0)
//! serves the payload.
//!
//! Every ringbit gets `--no-trackers` and its own `--state-dir`; every wait is
//! bounded; only 127.0.0.1 is used.

use crate::helpers::{self, ChildGuard};
use crate::peers::{Payload, PeerKind, Seeder};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A few MiB over loopback from python's http.server.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(90);
/// Until the web seed prints its port.
const SERVER_READY_LIMIT: Duration = Duration::from_secs(20);
/// 256 KiB pieces.
const PIECE_LOG2: u32 = 18;

/// `tests/peers/http_seed.py ROOT` on 127.0.0.1; its request log is kept.
struct HttpSeed {
    _guard: ChildGuard,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HttpSeed {
    fn start(root: &Path, corrupt: bool) -> HttpSeed {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let log = dir.path().join("requests.log");
        let mut cmd = Command::new(helpers::require_tool("python3"));
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/http_seed.py")).arg(root);
        if corrupt {
            cmd.arg("--corrupt");
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&port_file).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        let guard = ChildGuard::spawn("http_seed.py", &mut cmd);
        let mut port = 0;
        let ready = helpers::wait_until(SERVER_READY_LIMIT, || {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            match text.lines().next().map(str::parse::<u16>) {
                Some(Ok(p)) if text.ends_with('\n') => {
                    port = p;
                    true
                }
                _ => false,
            }
        });
        assert!(ready, "http_seed.py printed no port within {SERVER_READY_LIMIT:?}");
        HttpSeed { _guard: guard, port, log, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The requests served (`GET <path> <range> <status>` lines).
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().map(String::from).collect()
    }

    /// Range replies (206) served.
    fn ranges_served(&self) -> usize {
        self.requests().iter().filter(|l| l.ends_with(" 206")).count()
    }
}

/// `mktorrent -d -l LOG2 -w URL... -o OUT DIR/NAME` (a torrent with a
/// `url-list`; the info hash is the payload's whatever the URLs).
fn torrent_with_web_seeds(save_path: &Path, name: &str, urls: &[String], out: &Path) -> PathBuf {
    let mut cmd = Command::new(helpers::require_tool("mktorrent"));
    cmd.args(["-d", "-l", &PIECE_LOG2.to_string()]);
    for url in urls {
        cmd.arg("-w").arg(url);
    }
    cmd.arg("-o").arg(out).arg(save_path.join(name));
    helpers::run_ok(&mut cmd, Duration::from_secs(60));
    out.to_path_buf()
}

fn ringbit_download(
    torrent: &Path,
    out: &Path,
    work: &Path,
    peers: &[SocketAddr],
    extra: &[&str],
) -> (ChildGuard, PathBuf) {
    let log = work.join("download.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = helpers::ringbit();
    cmd.args(["-v", "download"])
        .arg(torrent)
        .arg("-o")
        .arg(out)
        .arg("--state-dir")
        .arg(work.join("state"))
        .args([
            "--port",
            &helpers::free_port().to_string(),
            "--bind",
            "127.0.0.1",
            "--no-trackers",
            "--no-dht",
        ])
        .args(extra);
    for p in peers {
        cmd.args(["--peer", &p.to_string()]);
    }
    cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
    (ChildGuard::spawn("ringbit download", &mut cmd), log)
}

fn wait_ok(guard: &mut ChildGuard, log: &Path) -> String {
    let status = guard.wait_timeout(DOWNLOAD_LIMIT);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(s) if s.success() => text,
        Some(s) => panic!("ringbit download exited {s}:\n{text}"),
        None => panic!("ringbit download overran {DOWNLOAD_LIMIT:?}:\n{text}"),
    }
}

/// Goal: a web seed alone serves a single-file torrent.
/// Setup: the payload's directory behind the HTTP server; the torrent's
/// `url-list` is the directory's URL ending in `/` (BEP 19: the name is
/// appended); no tracker, no peer, no DHT.
/// Check: byte-identical; every piece came as a 206 range reply.
#[test]
fn web_seed_is_the_only_source_single_file() {
    let payload = Payload::single_file("web seed single.bin", 3 * 1024 * 1024 + 7, PIECE_LOG2);
    let server = HttpSeed::start(&payload.save_path, false);
    let work = tempfile::tempdir().unwrap();
    let torrent = torrent_with_web_seeds(
        &payload.save_path,
        &payload.name,
        &[server.url("/ws/")],
        &work.path().join("single.torrent"),
    );
    let out = work.path().join("out");
    let (mut dl, log) = ringbit_download(&torrent, &out, work.path(), &[], &[]);
    let text = wait_ok(&mut dl, &log);
    helpers::assert_same_tree(&payload.save_path, &out);
    let pieces = payload.total_size.div_ceil(payload.piece_length) as usize;
    let served = server.ranges_served();
    assert!(served >= pieces, "{served} ranges for {pieces} pieces:\n{text}");
    assert!(
        server.requests().iter().all(|l| l.starts_with("GET /ws/web%20seed%20single.bin ")),
        "{:?}",
        server.requests()
    );
}

/// Goal: a web seed alone serves a multi-file torrent, following a redirect
/// per file, with names that need percent-encoding.
/// Setup: files with spaces, `%` and non-ASCII names, an empty file, pieces
/// across file boundaries; the `url-list` is `http://…/r` (no trailing
/// slash), which the server redirects (302) to `/ws/…` for every file.
/// Check: byte-identical; redirects and range replies were both served.
#[test]
fn web_seed_is_the_only_source_multi_file_with_redirects() {
    let root = tempfile::tempdir().unwrap();
    let save_path = root.path().join("data");
    let name = "web seed multi";
    helpers::write_payload(
        &save_path,
        &[
            (&format!("{name}/a b.bin"), 700_001),
            (&format!("{name}/empty"), 0),
            (&format!("{name}/sub/100%.bin"), 1_300_000),
            (&format!("{name}/sub/é.bin"), 300_000),
        ],
    );
    let server = HttpSeed::start(&save_path, false);
    let work = tempfile::tempdir().unwrap();
    let torrent = torrent_with_web_seeds(
        &save_path,
        name,
        &[server.url("/r")],
        &work.path().join("multi.torrent"),
    );
    let out = work.path().join("out");
    let (mut dl, log) = ringbit_download(&torrent, &out, work.path(), &[], &[]);
    let text = wait_ok(&mut dl, &log);
    helpers::assert_same_tree(&save_path, &out);
    let requests = server.requests();
    let redirects = requests.iter().filter(|l| l.ends_with(" 302")).count();
    assert!(redirects >= 1, "no redirect served: {requests:?}\n{text}");
    // Redirect targets are remembered per file: at most one redirect per
    // file and piece in flight, not one per request.
    assert!(redirects <= 3 * 2, "{redirects} redirects: {requests:?}");
    assert!(server.ranges_served() >= 4, "{requests:?}");
    assert!(requests.iter().any(|l| l.contains("/sub/100%25.bin ")), "{requests:?}");
}

/// Goal: a web seed and a peer together.
/// Setup: a libtorrent seeder (dialled with `--peer`) and the web seed, for
/// a 16 MiB torrent; fewer peers than the web seed threshold unchoke us, so
/// the web seed takes pieces too, the picker keeping the two apart.
/// Check: byte-identical; the web seed served at least one piece.
#[test]
fn web_seed_and_a_libtorrent_peer() {
    let payload = Payload::single_file("ws-and-peer.bin", 16 * 1024 * 1024 + 3, PIECE_LOG2);
    let server = HttpSeed::start(&payload.save_path, false);
    let work = tempfile::tempdir().unwrap();
    let torrent = torrent_with_web_seeds(
        &payload.save_path,
        &payload.name,
        &[server.url("/ws/")],
        &work.path().join("both.torrent"),
    );
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let out = work.path().join("out");
    let (mut dl, log) = ringbit_download(&torrent, &out, work.path(), &[seeder.addr()], &[]);
    let text = wait_ok(&mut dl, &log);
    helpers::assert_same_tree(&payload.save_path, &out);
    assert!(server.ranges_served() >= 1, "web seed unused:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// Goal: a web seed that serves corrupt data is disabled, and the download
/// completes from the peer.
/// Setup: the web seed flips every byte it serves; a libtorrent seeder is
/// the good source; `--download-limit 1M` keeps the 4 MiB download long
/// enough (about 4 s) for the web seed's first pieces to be hashed.
/// Check: byte-identical; ringbit logs the web seed disabled because its
/// pieces failed their hash; it served no more than the allowed bad pieces
/// plus those already in flight.
#[test]
fn corrupt_web_seed_is_disabled_and_the_peer_completes() {
    let payload = Payload::single_file("ws-corrupt.bin", 4 * 1024 * 1024 + 11, PIECE_LOG2);
    let server = HttpSeed::start(&payload.save_path, true);
    let work = tempfile::tempdir().unwrap();
    let torrent = torrent_with_web_seeds(
        &payload.save_path,
        &payload.name,
        &[server.url("/ws/")],
        &work.path().join("corrupt.torrent"),
    );
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let out = work.path().join("out");
    let (mut dl, log) = ringbit_download(
        &torrent,
        &out,
        work.path(),
        &[seeder.addr()],
        &["--download-limit", "1M"],
    );
    let text = wait_ok(&mut dl, &log);
    helpers::assert_same_tree(&payload.save_path, &out);
    let line = text
        .lines()
        .find(|l| l.contains("web seed disabled"))
        .unwrap_or_else(|| panic!("web seed never disabled:\n{text}"));
    assert!(line.contains("failed their hash"), "{line}");
    let served = server.ranges_served();
    assert!(
        (3..=3 + ringbit::webseed::WEB_SEED_PIECES_IN_FLIGHT).contains(&served),
        "{served} corrupt pieces served:\n{text}"
    );
}
