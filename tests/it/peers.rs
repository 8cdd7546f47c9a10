//! Real-peer harness for interop tests: start libtorrent, transmission, aria2
//! (and `ringbit` itself) as seeders or leechers on 127.0.0.1, make payloads
//! and torrents, and talk to opentracker.
//!
//! Owns: the knowledge of how each real peer is started, when it is ready,
//! how it learns of peers and how it signals completion (the traps are listed
//! in /work/shared/PEERS.md and docs/testing.md). Layer: test support only.
//!
//! Invariants:
//! - every wait is bounded by a named limit or by the caller's timeout;
//! - every process is a `ChildGuard` (killed by pid when dropped), and every
//!   file it writes lives in a temp dir owned by the value that started it;
//! - each `Seeder`/`Leecher` is a fresh process with fresh state on a fresh
//!   port (libtorrent will not redial an ip:port for 60 s; transmission keys
//!   peers by IP and must be restarted between runs);
//! - peer output goes to log files, never to pipes nobody reads (transmission
//!   prints a progress line every second and would block on a full pipe).

#![allow(dead_code)]

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{self, ChildGuard, Opentracker};

/// How long a seeder may take to listen, verify and announce.
pub const SEEDER_READY_LIMIT: Duration = Duration::from_secs(60);
/// How long a leecher may take to start listening.
pub const LEECHER_READY_LIMIT: Duration = Duration::from_secs(30);
/// Bound on one HTTP exchange with opentracker (scrape or announce).
pub const TRACKER_IO_LIMIT: Duration = Duration::from_secs(5);
/// Largest tracker reply read; opentracker's replies here are tiny.
const MAX_TRACKER_REPLY_BYTES: u64 = 64 * 1024;
/// Lines of a peer's log quoted in an error.
const LOG_TAIL_LINES: usize = 40;
/// How long tools that run to completion (mktorrent, lt_tool info) may take.
const TOOL_LIMIT: Duration = Duration::from_secs(120);
/// Flags that keep aria2 on loopback with nothing but the torrent's swarm.
const ARIA2_COMMON: &[&str] = &[
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--interface=127.0.0.1",
    "--disable-ipv6=true",
    "--summary-interval=0",
    "--console-log-level=notice",
    "--enable-color=false",
    "--auto-file-renaming=false",
    "--check-certificate=false",
];

/// libtorrent settings for a peer that speaks only MSE/PE (`enc_policy`
/// forced = 0; `allowed_enc_level` rc4 = 2, both = 3): a seeder that insists
/// on an RC4 payload, a leecher that takes either.
const LT_FORCED_RC4: &[&str] =
    &["out_enc_policy=0", "in_enc_policy=0", "allowed_enc_level=2", "prefer_rc4=true"];
const LT_FORCED_BOTH: &[&str] = &["out_enc_policy=0", "in_enc_policy=0", "allowed_enc_level=3"];
/// libtorrent settings for a peer without MSE: it hangs up on an MSE
/// handshake (`enc_policy` disabled = 2).
const LT_DISABLED: &[&str] = &["out_enc_policy=2", "in_enc_policy=2"];
/// aria2 flags for a peer that speaks only MSE with RC4.
const ARIA2_REQUIRE_CRYPTO: &[&str] = &["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"];
/// transmission's `encryption` setting: 0 prefer plaintext, 2 required.
const TRANSMISSION_PLAINTEXT: u32 = 0;
const TRANSMISSION_REQUIRED: u32 = 2;

/// libtorrent settings for a peer that speaks uTP only (issue 13).
const LT_UTP_ONLY: &[&str] = &[
    "enable_outgoing_tcp=false",
    "enable_incoming_tcp=false",
    "enable_outgoing_utp=true",
    "enable_incoming_utp=true",
];

/// Which transports a real peer speaks (issue 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// Each peer's usual settings in this harness (TCP; uTP off).
    #[default]
    Tcp,
    /// uTP only: libtorrent with TCP off both ways; transmission with uTP
    /// on (it cannot turn TCP off, but never dials loopback, so a ringbit
    /// dialling it over uTP is the only connection); ringbit `--utp only`.
    UtpOnly,
}

/// Whether a real peer may talk plaintext or must use MSE/PE (issue 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crypto {
    /// Each peer's usual settings in this harness (plaintext handshakes).
    Usual,
    /// Only MSE/PE handshakes, RC4 payload where the peer can insist on it.
    Required,
    /// No MSE at all: an MSE handshake is refused (libtorrent only).
    Disabled,
}

/// Which real peer to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// python3-libtorrent 2.0: `tests/peers/lt_extra.py seed`, `lt_tool.py leech`.
    Libtorrent,
    /// transmission-cli 3.00.
    Transmission,
    /// aria2c 1.36.
    Aria2,
    /// This crate's binary: `ringbit seed` / `ringbit download` (issues 5, 6).
    Ringbit,
}

impl PeerKind {
    pub const REAL: [PeerKind; 3] = [PeerKind::Libtorrent, PeerKind::Transmission, PeerKind::Aria2];

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Libtorrent => "libtorrent",
            PeerKind::Transmission => "transmission",
            PeerKind::Aria2 => "aria2",
            PeerKind::Ringbit => "ringbit",
        }
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// Payloads and torrents

/// Files on disk plus the facts a test needs about their torrent. The torrent
/// itself is made per tracker by `torrent()`: the info hash does not depend on
/// the announce URL, so opentracker can be whitelisted before the torrent that
/// names it exists.
pub struct Payload {
    dir: tempfile::TempDir,
    /// The directory that holds the payload: pass it as a seeder's data dir and
    /// compare it with a leecher's out dir (`helpers::assert_same_tree`).
    pub save_path: PathBuf,
    /// The torrent's name: the file (single-file) or top directory (multi-file).
    pub name: String,
    /// Hex info hash (v1), lower case.
    pub info_hash: String,
    pub total_size: u64,
    pub piece_length: u64,
    piece_log2: u32,
    torrents_made: std::cell::Cell<u32>,
}

/// The multi-file layout: empty files, odd sizes, a file shorter than a piece,
/// files that straddle piece boundaries, nested directories.
pub const MULTI_FILE_LAYOUT: &[(&str, usize)] = &[
    ("a.bin", 1_000_003),
    ("empty-1", 0),
    ("sub/b.bin", 5 * 1024 * 1024 + 17),
    ("sub/empty-2", 0),
    ("sub/deeper/c.bin", 262_143),
    ("sub/deeper/d.bin", 2 * 1024 * 1024 + 1),
    ("tiny", 1),
];

impl Payload {
    /// One file `name` of `size` bytes, pieces of 2^`piece_log2` bytes.
    pub fn single_file(name: &str, size: usize, piece_log2: u32) -> Payload {
        let dir = tempfile::tempdir().unwrap();
        let save_path = dir.path().join("data");
        helpers::write_payload(&save_path, &[(name, size)]);
        Payload::finish(dir, save_path, name, piece_log2)
    }

    /// `MULTI_FILE_LAYOUT` under a directory `name`.
    pub fn multi_file(name: &str, piece_log2: u32) -> Payload {
        let dir = tempfile::tempdir().unwrap();
        let save_path = dir.path().join("data");
        let files: Vec<(String, usize)> =
            MULTI_FILE_LAYOUT.iter().map(|(rel, len)| (format!("{name}/{rel}"), *len)).collect();
        let refs: Vec<(&str, usize)> = files.iter().map(|(p, l)| (p.as_str(), *l)).collect();
        helpers::write_payload(&save_path, &refs);
        Payload::finish(dir, save_path, name, piece_log2)
    }

    /// `count` files of `len` bytes each under `name/` (`f0000.bin`...).
    pub fn many_files(name: &str, count: usize, len: usize, piece_log2: u32) -> Payload {
        let dir = tempfile::tempdir().unwrap();
        let save_path = dir.path().join("data");
        let files: Vec<(String, usize)> =
            (0..count).map(|i| (format!("{name}/f{i:04}.bin"), len)).collect();
        let refs: Vec<(&str, usize)> = files.iter().map(|(p, l)| (p.as_str(), *l)).collect();
        helpers::write_payload(&save_path, &refs);
        Payload::finish(dir, save_path, name, piece_log2)
    }

    fn finish(dir: tempfile::TempDir, save_path: PathBuf, name: &str, piece_log2: u32) -> Payload {
        let mut p = Payload {
            dir,
            save_path,
            name: name.to_string(),
            info_hash: String::new(),
            total_size: 0,
            piece_length: 1 << piece_log2,
            piece_log2,
            torrents_made: std::cell::Cell::new(0),
        };
        let plain = p.torrent(&[]);
        let info = TorrentInfo::read(&plain);
        assert_eq!(info.name, p.name);
        assert_eq!(info.piece_length, p.piece_length);
        p.info_hash = info.info_hash;
        p.total_size = info.total_size;
        p
    }

    /// A torrent for this payload made by `mktorrent -d -l LOG2 [-a URL]...`
    /// (each URL its own tier); asserts its info hash is the payload's.
    pub fn torrent(&self, announce: &[String]) -> PathBuf {
        let n = self.torrents_made.get();
        self.torrents_made.set(n + 1);
        let out = self.dir.path().join(format!("{}-{n}.torrent", self.name));
        let mut cmd = Command::new(helpers::require_tool("mktorrent"));
        cmd.arg("-d").arg("-l").arg(self.piece_log2.to_string());
        for url in announce {
            cmd.arg("-a").arg(url);
        }
        cmd.arg("-o").arg(&out).arg(self.save_path.join(&self.name));
        helpers::run_ok(&mut cmd, TOOL_LIMIT);
        if !self.info_hash.is_empty() {
            assert_eq!(TorrentInfo::read(&out).info_hash, self.info_hash, "{}", out.display());
        }
        out
    }

    /// The torrent announcing to `tracker` over HTTP.
    pub fn torrent_http(&self, tracker: &Opentracker) -> PathBuf {
        self.torrent(&[tracker.http_announce()])
    }

    /// The torrent announcing to `tracker` over UDP (BEP 15).
    pub fn torrent_udp(&self, tracker: &Opentracker) -> PathBuf {
        self.torrent(&[tracker.udp_announce()])
    }

    /// A whitelisted opentracker for this payload.
    pub fn tracker(&self) -> Opentracker {
        Opentracker::start(std::slice::from_ref(&self.info_hash))
    }
}

/// What libtorrent reads from a .torrent file (`lt_tool.py info`).
#[derive(Clone, Debug)]
pub struct TorrentInfo {
    pub info_hash: String,
    pub name: String,
    pub num_files: u64,
    pub total_size: u64,
    pub num_pieces: u64,
    pub piece_length: u64,
}

impl TorrentInfo {
    pub fn read(torrent: &Path) -> TorrentInfo {
        let out = helpers::run_ok(helpers::lt_tool().arg("info").arg(torrent), TOOL_LIMIT);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("lt_tool info json");
        let num = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("lt_tool info: no {k}"));
        TorrentInfo {
            info_hash: v["info_hash"].as_str().expect("info_hash").to_string(),
            name: v["name"].as_str().expect("name").to_string(),
            num_files: num("num_files"),
            total_size: num("total_size"),
            num_pieces: num("num_pieces"),
            piece_length: num("piece_length"),
        }
    }
}

// ---------------------------------------------------------------------------
// opentracker: scrape, and announcing on a peer's behalf

/// Seeders and leechers opentracker counts for an info hash (0, 0 when it
/// has never seen it).
pub fn scrape(tracker: &Opentracker, info_hash_hex: &str) -> Result<(u64, u64), String> {
    let path = format!("/scrape?info_hash={}", percent_hex(info_hash_hex));
    let body = http_get(tracker.port, &path)?;
    let count = |key: &[u8]| -> u64 {
        find(&body, key)
            .map(|at| {
                body[at + key.len()..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')))
            })
            .unwrap_or(0)
    };
    Ok((count(b"8:completei"), count(b"10:incompletei")))
}

/// Registers `peer` (an address on 127.0.0.1; opentracker records the address
/// the announce comes from) as a seeder of `info_hash_hex`, so clients that
/// only learn peers from trackers (aria2) are told about it.
pub fn announce_peer(
    tracker: &Opentracker,
    info_hash_hex: &str,
    peer: SocketAddr,
) -> Result<(), String> {
    if peer.ip() != std::net::IpAddr::from([127, 0, 0, 1]) {
        return Err(format!("{peer}: opentracker records the announcing address, 127.0.0.1"));
    }
    // A distinct peer id per port, so opentracker keeps each as its own peer.
    let peer_id = format!("-HX0001-{:012}", peer.port());
    let path = format!(
        "/announce?info_hash={}&peer_id={peer_id}&port={}&uploaded=0&downloaded=0&left=0\
         &event=started&compact=1&numwant=0",
        percent_hex(info_hash_hex),
        peer.port()
    );
    let body = http_get(tracker.port, &path)?;
    if find(&body, b"failure reason").is_some() {
        return Err(format!("announce refused: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

fn percent_hex(hex: &str) -> String {
    assert!(hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "bad info hash {hex}");
    hex.as_bytes()
        .chunks(2)
        .map(|pair| format!("%{}", std::str::from_utf8(pair).unwrap()))
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP/1.0 GET to 127.0.0.1:`port`; returns the body.
fn http_get(port: u16, path: &str) -> Result<Vec<u8>, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, TRACKER_IO_LIMIT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TRACKER_IO_LIMIT)).unwrap();
    s.set_write_timeout(Some(TRACKER_IO_LIMIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.take(MAX_TRACKER_REPLY_BYTES).read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let at = find(&reply, b"\r\n\r\n").ok_or("tracker reply without a header end")?;
    Ok(reply[at + 4..].to_vec())
}

/// Waits up to `limit` until opentracker's counts for the info hash satisfy
/// `pred(seeders, leechers)` (e.g. a leecher has announced, so a seeder that
/// re-announces now will learn of it).
pub fn wait_scrape(
    tracker: &Opentracker,
    info_hash_hex: &str,
    limit: Duration,
    pred: impl Fn(u64, u64) -> bool,
) -> bool {
    helpers::wait_until(limit, || scrape(tracker, info_hash_hex).is_ok_and(|(s, l)| pred(s, l)))
}

// ---------------------------------------------------------------------------
// Process plumbing shared by seeders and leechers

/// True when something listens on TCP `port` (any local address), read from
/// /proc/net/tcp{,6}: no probe connection that a peer would count as a peer.
pub fn is_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        let Ok(text) = std::fs::read_to_string(table) else { return false };
        text.lines().skip(1).any(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1).unwrap_or("");
            let state = cols.nth(1).unwrap_or("");
            state == "0A"
                && local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    .is_some_and(|p| p == port)
        })
    })
}

/// A started peer process: its guard, its state dir and its log.
struct Proc {
    guard: ChildGuard,
    kind: PeerKind,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr to `<dir>/<kind>.log`; stdin is a
    /// pipe when `stdin` (lt_extra takes commands there and exits on EOF).
    fn spawn(kind: PeerKind, dir: tempfile::TempDir, cmd: &mut Command, stdin: bool) -> Proc {
        let log = dir.path().join(format!("{kind}.log"));
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdout(out.try_clone().unwrap()).stderr(out).stdin(if stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let guard = ChildGuard::spawn(kind.name(), cmd);
        Proc { guard, kind, dir, log }
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).replace('\r', "\n")
    }

    /// The last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.guard.child.try_wait().expect("try_wait")
    }

    fn fail(&mut self, what: &str) -> String {
        let status = match self.exited() {
            Some(s) => format!("exited with {s}"),
            None => "still running".to_string(),
        };
        format!(
            "{} (pid {}) {what}, {status}; log:\n{}",
            self.kind,
            self.guard.pid(),
            self.log_tail()
        )
    }

    /// Waits until the process listens on `port`; panics with its log if it
    /// exits or overruns `limit`.
    fn wait_listening(&mut self, port: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !is_listening(port) {
            if self.exited().is_some() || Instant::now() >= deadline {
                panic!("{}", self.fail(&format!("is not listening on port {port}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.guard.child.stdin.as_mut().ok_or("no command pipe")?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("{}: {e}", self.kind))
    }
}

/// transmission-cli's config dir: settings.json for loopback, and the `-f`
/// script that writes `marker` when the torrent is complete (after the
/// download, or after verifying existing data when seeding).
fn transmission_config(
    dir: &Path,
    port: u16,
    marker: &Path,
    crypto: Crypto,
    transport: Transport,
) -> (PathBuf, PathBuf) {
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let settings = serde_json::json!({
        "dht-enabled": false,
        "utp-enabled": transport == Transport::UtpOnly,
        "lpd-enabled": false,
        "pex-enabled": false,
        "port-forwarding-enabled": false,
        // 0 = prefer plaintext (transmission has no flag for this in -g mode).
        "encryption": match crypto {
            Crypto::Usual => TRANSMISSION_PLAINTEXT,
            Crypto::Required => TRANSMISSION_REQUIRED,
            Crypto::Disabled => panic!("transmission cannot refuse MSE"),
        },
        "peer-port": port,
        "bind-address-ipv4": "127.0.0.1",
        "bind-address-ipv6": "::1",
        "blocklist-enabled": false,
        "ratio-limit-enabled": false,
        "idle-seeding-limit-enabled": false,
        "speed-limit-down-enabled": false,
        "speed-limit-up-enabled": false,
        "alt-speed-enabled": false,
        "rpc-enabled": false,
        "incomplete-dir-enabled": false,
        "message-level": 2,
    });
    std::fs::write(config.join("settings.json"), settings.to_string()).unwrap();
    let script = dir.join("on-complete.sh");
    std::fs::write(&script, format!("#!/bin/sh\n: > '{}'\n", marker.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (config, script)
}

fn transmission_cmd(
    dir: &Path,
    port: u16,
    marker: &Path,
    crypto: Crypto,
    transport: Transport,
) -> Command {
    let (config, script) = transmission_config(dir, port, marker, crypto, transport);
    let mut cmd = Command::new(helpers::require_tool("transmission-cli"));
    // No -e flag: settings.json's "encryption": 0 (prefer plaintext) holds.
    cmd.arg("-g")
        .arg(config)
        .arg("-p")
        .arg(port.to_string())
        .arg("-f")
        .arg(script)
        .args(["-M", "-D", "-U"]);
    cmd
}

fn aria2_cmd(crypto: Crypto) -> Command {
    let mut cmd = Command::new(helpers::require_tool("aria2c"));
    cmd.args(ARIA2_COMMON);
    match crypto {
        Crypto::Usual => {}
        Crypto::Required => {
            cmd.args(ARIA2_REQUIRE_CRYPTO);
        }
        Crypto::Disabled => panic!("aria2 cannot refuse MSE"),
    }
    cmd
}

/// `--set NAME=VALUE` for each libtorrent setting.
fn lt_settings(cmd: &mut Command, settings: &[&str]) {
    for s in settings {
        cmd.args(["--set", s]);
    }
}

pub fn lt_extra() -> Command {
    // lt_tool() checks that Debian's python can import libtorrent.
    drop(helpers::lt_tool());
    let mut cmd = Command::new(helpers::require_tool("python3"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/lt_extra.py"));
    cmd
}

// ---------------------------------------------------------------------------
// Seeder

/// A real peer seeding existing data on 127.0.0.1:`port`.
pub struct Seeder {
    pub kind: PeerKind,
    pub port: u16,
    proc_: Proc,
}

impl Seeder {
    /// Starts `kind` seeding `torrent` from `data_dir` (the directory that
    /// holds the torrent's file or top directory) on a fresh port. Returns
    /// when it is ready to serve: listening, data verified (transmission),
    /// and — when `tracker` is given — registered there (scrape counts one
    /// more peer). The torrent must name `tracker` for that. Panics with the
    /// peer's log when it fails or overruns `SEEDER_READY_LIMIT`.
    pub fn start(
        kind: PeerKind,
        torrent: &Path,
        data_dir: &Path,
        tracker: Option<&Opentracker>,
    ) -> Seeder {
        Seeder::start_with(kind, torrent, data_dir, tracker, Crypto::Usual)
    }

    /// [`Seeder::start`] with a choice of [`Crypto`] (`Required`: libtorrent
    /// forced with RC4 only, transmission `encryption: 2`, aria2
    /// `--bt-require-crypto`, ringbit `--encryption require`).
    pub fn start_with(
        kind: PeerKind,
        torrent: &Path,
        data_dir: &Path,
        tracker: Option<&Opentracker>,
        crypto: Crypto,
    ) -> Seeder {
        Seeder::start_over(kind, torrent, data_dir, tracker, crypto, Transport::Tcp)
    }

    /// [`Seeder::start_with`] with a choice of [`Transport`].
    pub fn start_over(
        kind: PeerKind,
        torrent: &Path,
        data_dir: &Path,
        tracker: Option<&Opentracker>,
        crypto: Crypto,
        transport: Transport,
    ) -> Seeder {
        let before = tracker.map(|t| {
            let hash = TorrentInfo::read(torrent).info_hash;
            let (s, l) = scrape(t, &hash).unwrap_or_else(|e| panic!("scrape: {e}"));
            (hash, s + l)
        });
        let dir = tempfile::tempdir().unwrap();
        let port = helpers::free_port();
        let deadline = Instant::now() + SEEDER_READY_LIMIT;
        let mut proc_ = match kind {
            PeerKind::Libtorrent => {
                let mut cmd = lt_extra();
                cmd.arg("seed").arg(torrent).arg(data_dir).args(["--port", &port.to_string()]);
                match crypto {
                    Crypto::Usual => {}
                    Crypto::Required => lt_settings(&mut cmd, LT_FORCED_RC4),
                    Crypto::Disabled => lt_settings(&mut cmd, LT_DISABLED),
                }
                if transport == Transport::UtpOnly {
                    lt_settings(&mut cmd, LT_UTP_ONLY);
                }
                Proc::spawn(kind, dir, &mut cmd, true)
            }
            PeerKind::Transmission => {
                let marker = dir.path().join("verified");
                let mut cmd = transmission_cmd(dir.path(), port, &marker, crypto, transport);
                cmd.arg("-w").arg(data_dir).arg(torrent);
                let mut p = Proc::spawn(kind, dir, &mut cmd, false);
                // It announces while verifying: only a verified transmission
                // serves. Its -f script runs when verification finds all data.
                while !marker.exists() {
                    if p.exited().is_some() || Instant::now() >= deadline {
                        panic!("{}", p.fail("did not verify its data"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                p
            }
            PeerKind::Aria2 => {
                let mut cmd = aria2_cmd(crypto);
                cmd.args([
                    "--bt-seed-unverified=true",
                    "--seed-ratio=0.0",
                    "--check-integrity=false",
                ])
                .arg(format!("--listen-port={port}"))
                .arg("-d")
                .arg(data_dir)
                .arg(torrent);
                Proc::spawn(kind, dir, &mut cmd, false)
            }
            PeerKind::Ringbit => {
                let mut cmd = helpers::ringbit();
                cmd.arg("seed").arg(torrent).arg(data_dir).args(["--port", &port.to_string()]);
                match crypto {
                    Crypto::Usual => {}
                    Crypto::Required => {
                        cmd.args(["--encryption", "require"]);
                    }
                    Crypto::Disabled => {
                        cmd.args(["--encryption", "disable"]);
                    }
                }
                if transport == Transport::UtpOnly {
                    cmd.args(["--utp", "only"]);
                }
                Proc::spawn(kind, dir, &mut cmd, false)
            }
        };
        proc_.wait_listening(port, deadline.saturating_duration_since(Instant::now()));
        if let (Some(t), Some((hash, before))) = (tracker, before) {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_scrape(t, &hash, left, |s, l| s + l > before) {
                panic!("{}", proc_.fail("never announced to the tracker"));
            }
        }
        Seeder { kind, port, proc_ }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.proc_.guard.pid()
    }

    /// Dials `peer` (libtorrent only: `connect_peer`). This is how a
    /// transmission leecher gets data: it never dials 127.0.0.1 itself.
    pub fn connect(&mut self, peer: SocketAddr) -> Result<(), String> {
        match self.kind {
            PeerKind::Libtorrent => self.proc_.send(&format!("connect {peer}")),
            other => Err(format!("{other} cannot be told to dial a peer")),
        }
    }

    /// Announces again now, to learn of leechers that arrived after its
    /// first announce (opentracker's interval is 30 minutes). libtorrent:
    /// `force_reannounce`; transmission: SIGHUP; aria2 cannot.
    pub fn reannounce(&mut self) -> Result<(), String> {
        match self.kind {
            PeerKind::Libtorrent => self.proc_.send("reannounce"),
            PeerKind::Transmission => {
                self.proc_.guard.signal(libc::SIGHUP);
                Ok(())
            }
            other => Err(format!("{other} cannot be told to re-announce")),
        }
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.proc_.exited().is_none()
    }

    /// The peer's output so far (for assertions on what it logged).
    pub fn log(&self) -> String {
        self.proc_.log_text()
    }
}

// ---------------------------------------------------------------------------
// Leecher

/// A real peer downloading into `out_dir`, listening on 127.0.0.1:`port`.
pub struct Leecher {
    pub kind: PeerKind,
    pub port: u16,
    pub out_dir: PathBuf,
    started: Instant,
    /// Set when transmission's -f script ran (it never exits by itself).
    marker: PathBuf,
    proc_: Proc,
    /// The private tracker that tells aria2 about `peers` when no tracker
    /// was given (aria2 has no option to add a peer by address).
    _own_tracker: Option<Opentracker>,
}

impl Leecher {
    /// Starts `kind` downloading `torrent` into `out_dir` on a fresh port, and
    /// returns once it listens (`LEECHER_READY_LIMIT`). How each kind meets
    /// `peers` (addresses on 127.0.0.1):
    /// - libtorrent, ringbit: dials them (`--peer`), and uses the torrent's
    ///   trackers too;
    /// - aria2: learns peers only from trackers, so each peer is announced on
    ///   its behalf to `tracker` (which the torrent must name), or, without
    ///   one, to a private opentracker that replaces the torrent's trackers;
    /// - transmission: never dials 127.0.0.1 (it drops loopback peers as
    ///   "martian"), so `peers` must be empty: the seeder must dial
    ///   `leecher.addr()` (`Seeder::connect`, or a ringbit seeder after it
    ///   re-announces). It downloads nothing until dialled.
    pub fn start(
        kind: PeerKind,
        torrent: &Path,
        out_dir: &Path,
        peers: &[SocketAddr],
        tracker: Option<&Opentracker>,
    ) -> Leecher {
        Leecher::start_with(kind, torrent, out_dir, peers, tracker, Crypto::Usual)
    }

    /// [`Leecher::start`] with a choice of [`Crypto`] (`Required`: libtorrent
    /// forced, RC4 or plaintext payload, through `lt_extra.py leech`;
    /// transmission `encryption: 2`; aria2 `--bt-require-crypto`; ringbit
    /// `--encryption require`).
    pub fn start_with(
        kind: PeerKind,
        torrent: &Path,
        out_dir: &Path,
        peers: &[SocketAddr],
        tracker: Option<&Opentracker>,
        crypto: Crypto,
    ) -> Leecher {
        Leecher::start_over(kind, torrent, out_dir, peers, tracker, crypto, Transport::Tcp)
    }

    /// [`Leecher::start_with`] with a choice of [`Transport`].
    pub fn start_over(
        kind: PeerKind,
        torrent: &Path,
        out_dir: &Path,
        peers: &[SocketAddr],
        tracker: Option<&Opentracker>,
        crypto: Crypto,
        transport: Transport,
    ) -> Leecher {
        std::fs::create_dir_all(out_dir).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = helpers::free_port();
        let marker = dir.path().join("complete");
        let peer_args: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        let mut own_tracker = None;
        let started = Instant::now();
        let mut proc_ = match kind {
            PeerKind::Libtorrent => {
                // lt_tool has no settings; lt_extra's leech takes --set.
                let mut cmd = match (crypto, transport) {
                    (Crypto::Usual, Transport::Tcp) => helpers::lt_tool(),
                    _ => lt_extra(),
                };
                cmd.arg("leech").arg(torrent).arg(out_dir).args(["--port", &port.to_string()]);
                match crypto {
                    Crypto::Usual => {}
                    Crypto::Required => lt_settings(&mut cmd, LT_FORCED_BOTH),
                    Crypto::Disabled => lt_settings(&mut cmd, LT_DISABLED),
                }
                if transport == Transport::UtpOnly {
                    lt_settings(&mut cmd, LT_UTP_ONLY);
                }
                // The harness bounds the wait (wait_complete); this only stops
                // an orphan.
                cmd.args(["--timeout", "3600"]);
                for p in &peer_args {
                    cmd.args(["--peer", p]);
                }
                Proc::spawn(kind, dir, &mut cmd, false)
            }
            PeerKind::Transmission => {
                assert!(
                    peers.is_empty(),
                    "transmission never dials 127.0.0.1 peers: start it with no peers and have \
                     the seeder dial leecher.addr()"
                );
                let mut cmd = transmission_cmd(dir.path(), port, &marker, crypto, transport);
                cmd.arg("-w").arg(out_dir).arg(torrent);
                Proc::spawn(kind, dir, &mut cmd, false)
            }
            PeerKind::Aria2 => {
                let mut cmd = aria2_cmd(crypto);
                cmd.args(["--seed-time=0", "--file-allocation=none"])
                    .arg(format!("--listen-port={port}"))
                    .arg("-d")
                    .arg(out_dir);
                if !peers.is_empty() {
                    let hash = TorrentInfo::read(torrent).info_hash;
                    let t = match tracker {
                        Some(t) => t,
                        None => {
                            let own = Opentracker::start(std::slice::from_ref(&hash));
                            cmd.arg("--bt-exclude-tracker=*")
                                .arg(format!("--bt-tracker={}", own.http_announce()));
                            &*own_tracker.insert(own)
                        }
                    };
                    for p in peers {
                        announce_peer(t, &hash, *p).unwrap_or_else(|e| panic!("announce {p}: {e}"));
                    }
                }
                cmd.arg(torrent);
                Proc::spawn(kind, dir, &mut cmd, false)
            }
            PeerKind::Ringbit => {
                let mut cmd = helpers::ringbit();
                cmd.arg("download")
                    .arg(torrent)
                    .arg("-o")
                    .arg(out_dir)
                    .args(["--port", &port.to_string()]);
                match crypto {
                    Crypto::Usual => {}
                    Crypto::Required => {
                        cmd.args(["--encryption", "require"]);
                    }
                    Crypto::Disabled => {
                        cmd.args(["--encryption", "disable"]);
                    }
                }
                if transport == Transport::UtpOnly {
                    cmd.args(["--utp", "only"]);
                }
                for p in &peer_args {
                    cmd.args(["--peer", p]);
                }
                Proc::spawn(kind, dir, &mut cmd, false)
            }
        };
        proc_.wait_listening(port, LEECHER_READY_LIMIT);
        Leecher {
            kind,
            port,
            out_dir: out_dir.to_path_buf(),
            started,
            marker,
            proc_,
            _own_tracker: own_tracker,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.proc_.guard.pid()
    }

    /// Waits up to `timeout` for the download to complete and returns the time
    /// since `start` was called. Complete means: libtorrent, aria2, ringbit
    /// exited 0 (they exit when done); transmission ran its -f script (it
    /// keeps running and seeding until dropped). Err (with the log) when it
    /// exits without completing or overruns `timeout`.
    pub fn wait_complete(&mut self, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.kind == PeerKind::Transmission && self.marker.exists() {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.proc_.exited() {
                let elapsed = self.started.elapsed();
                return match (self.kind, status.success()) {
                    (PeerKind::Transmission, _) | (_, false) => {
                        Err(self.proc_.fail("did not complete"))
                    }
                    (_, true) => Ok(elapsed),
                };
            }
            if Instant::now() >= deadline {
                return Err(self.proc_.fail(&format!("did not complete within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the download under `out_dir` equals `expected` (a payload's
    /// `save_path`), byte for byte, with one allowance: transmission 3.00 never
    /// creates zero-length files, so for it (only) a missing file passes when
    /// the expected one is empty. Every other kind must match exactly
    /// (`helpers::assert_same_tree`).
    pub fn assert_same_as(&self, expected: &Path) {
        if self.kind != PeerKind::Transmission {
            return helpers::assert_same_tree(expected, &self.out_dir);
        }
        let mut stack = vec![PathBuf::new()];
        let mut compared = 0;
        while let Some(rel) = stack.pop() {
            let e = expected.join(&rel);
            if e.is_dir() {
                for entry in std::fs::read_dir(&e).unwrap() {
                    stack.push(rel.join(entry.unwrap().file_name()));
                }
                continue;
            }
            let a = self.out_dir.join(&rel);
            let want = std::fs::read(&e).unwrap();
            if want.is_empty() && !a.exists() {
                continue;
            }
            let got = std::fs::read(&a).unwrap_or_else(|err| panic!("{}: {err}", a.display()));
            assert!(want == got, "{} differs from {}", a.display(), e.display());
            compared += 1;
        }
        assert!(compared > 0, "no files compared under {}", expected.display());
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.proc_.exited().is_none()
    }

    /// The peer's output so far.
    pub fn log(&self) -> String {
        self.proc_.log_text()
    }
}
