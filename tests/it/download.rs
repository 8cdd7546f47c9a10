//! `ringbit download` against real seeders and through interruptions (issue 5).
//!
//! Owns: [`Ringbit`], a runner for `ringbit download` that always binds
//! 127.0.0.1 on a fresh port, logs at `-v` to a file, and can be killed or
//! interrupted; and the interop, `--only`, ringbit-to-ringbit, kill -9 and
//! Ctrl-C scenarios. The hostile-peer scenarios and the scripted (slow or
//! hostile) peer live in `hostile_peer.rs`. Layer: integration tests.
//!
//! Every scenario is documented as goal / setup / check; every wait is
//! bounded ([`DOWNLOAD_LIMIT`] and friends). The real peers' traps
//! (transmission never dials loopback, aria2 takes peers only from trackers)
//! are handled by `peers.rs`: ringbit always dials the seeders here, by
//! `--peer` or from opentracker's reply.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::helpers::{self, ChildGuard};
use crate::hostile_peer::{Behaviour, ScriptedPeer, PLAINTEXT_ARGS};
use crate::peers::{is_listening, Payload, PeerKind, Seeder};

/// How long one ringbit download may take (64 MiB; transmission waits up to
/// 10 s before its first unchoke).
pub const DOWNLOAD_LIMIT: Duration = Duration::from_secs(120);
/// How long ringbit may take to exit after SIGINT.
const INTERRUPT_LIMIT: Duration = Duration::from_secs(20);
/// Lines of ringbit's log quoted in an error.
const LOG_TAIL_LINES: usize = 60;

/// A `ringbit download` process, bound to 127.0.0.1 on a fresh port, with
/// its stderr/stdout in a log file.
pub struct Ringbit {
    guard: ChildGuard,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
    exit: Option<ExitStatus>,
}

impl Ringbit {
    /// `ringbit -v download TORRENT -o OUT --bind 127.0.0.1 --port P
    /// [--peer A]... EXTRA...`.
    pub fn download(torrent: &Path, out: &Path, peers: &[SocketAddr], extra: &[&str]) -> Ringbit {
        Ringbit::download_by(helpers::ringbit(), torrent, out, peers, extra)
    }

    /// [`Ringbit::download`] run by `cmd` (the binary, or a wrapper that
    /// runs it: [`helpers::ringbit_under`]).
    pub fn download_by(
        mut cmd: std::process::Command,
        torrent: &Path,
        out: &Path,
        peers: &[SocketAddr],
        extra: &[&str],
    ) -> Ringbit {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ringbit.log");
        let file = std::fs::File::create(&log).unwrap();
        let port = helpers::free_port();
        cmd.env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            // RINGBIT_IT_VERBOSITY=-vv for debug logs when a test fails.
            .arg(std::env::var("RINGBIT_IT_VERBOSITY").unwrap_or_else(|_| "-v".into()))
            .arg("download")
            .arg(torrent)
            .arg("-o")
            .arg(out)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
        for p in peers {
            cmd.args(["--peer", &p.to_string()]);
        }
        cmd.args(extra);
        cmd.stdin(std::process::Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        let guard = ChildGuard::spawn("ringbit", &mut cmd);
        Ringbit { guard, port, log, _dir: dir, exit: None }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The log so far, ANSI escapes removed.
    pub fn log(&self) -> String {
        let raw =
            String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned();
        strip_ansi(&raw)
    }

    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.guard.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Waits for the process to exit; panics with the log past `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("ringbit still running after {limit:?}; log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit 0 and that nothing else happened; panics with the log.
    pub fn wait_success(&mut self, limit: Duration) {
        let status = self.wait_exit(limit);
        assert!(status.success(), "ringbit exited with {status}; log:\n{}", self.log_tail());
    }

    /// Waits until the log contains `needle` (panics with the log on exit or
    /// past `limit`).
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            if let Some(status) = self.poll_exit() {
                panic!(
                    "ringbit exited ({status}) before logging {needle:?}; log:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "ringbit did not log {needle:?} within {limit:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, then asserts the exit code is `code`.
    pub fn interrupt_and_wait(&mut self, code: i32) {
        self.guard.signal(libc::SIGINT);
        let status = self.wait_exit(INTERRUPT_LIMIT);
        assert_eq!(status.code(), Some(code), "exit after SIGINT; log:\n{}", self.log_tail());
    }

    pub fn kill9(&mut self) {
        self.guard.signal(libc::SIGKILL);
        let status = self.wait_exit(INTERRUPT_LIMIT);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// `have=N` of the "existing data checked" line (a rerun's recheck), if any.
    pub fn existing_have(&self) -> Option<u64> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("existing data checked"))?;
        let at = line.find("have=")? + 5;
        line[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// Interop: real seeders

/// How ringbit learns of the seeders in an interop scenario.
#[derive(Clone, Copy, Debug)]
enum Discovery {
    /// `--peer` for each seeder, `--no-trackers`.
    Direct,
    /// From opentracker over HTTP.
    Http,
    /// From opentracker over UDP (BEP 15).
    Udp,
}

/// ringbit downloads `payload` from one seeder of each of `kinds` (one data
/// dir, all seeding at once) and must produce byte-identical files.
fn download_from(kinds: &[PeerKind], payload: Payload, discovery: Discovery) {
    let tracker = payload.tracker();
    let torrent = match discovery {
        Discovery::Direct => payload.torrent(&[]),
        Discovery::Http => payload.torrent_http(&tracker),
        Discovery::Udp => payload.torrent_udp(&tracker),
    };
    let with_tracker = !matches!(discovery, Discovery::Direct);
    let seeders: Vec<Seeder> = kinds
        .iter()
        .map(|k| Seeder::start(*k, &torrent, &payload.save_path, with_tracker.then_some(&tracker)))
        .collect();
    let out = tempfile::tempdir().unwrap();
    let mut rb = match discovery {
        Discovery::Direct => {
            let addrs: Vec<SocketAddr> = seeders.iter().map(|s| s.addr()).collect();
            Ringbit::download(&torrent, out.path(), &addrs, &["--no-trackers"])
        }
        Discovery::Http | Discovery::Udp => Ringbit::download(&torrent, out.path(), &[], &[]),
    };
    rb.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    drop(seeders);
}

fn single_64mib() -> Payload {
    Payload::single_file("single.bin", 64 << 20, 18)
}

fn multi() -> Payload {
    Payload::multi_file("multi", 18)
}

/// Goal: ringbit downloads a 64 MiB single-file torrent from libtorrent.
/// Setup: libtorrent (`lt_extra.py seed`) seeds 64 MiB, 256 KiB pieces, and
/// announces to opentracker; ringbit gets no `--peer`, only the HTTP tracker.
/// Check: exit 0, byte-identical.
#[test]
fn download_single_from_libtorrent_http_tracker() {
    download_from(&[PeerKind::Libtorrent], single_64mib(), Discovery::Http);
}

/// Goal: multi-file torrent (empty files, odd sizes, nested dirs) from libtorrent.
/// Setup: `Payload::multi_file`; ringbit dials the seeder by `--peer`.
/// Check: exit 0, the tree (empty files included) byte-identical.
#[test]
fn download_multi_from_libtorrent_direct() {
    download_from(&[PeerKind::Libtorrent], multi(), Discovery::Direct);
}

/// Goal: 64 MiB single file from transmission 3.00.
/// Setup: transmission seeds (ready after its verify); ringbit finds it through
/// opentracker over UDP and dials it (transmission accepts loopback dials).
/// Check: exit 0, byte-identical.
#[test]
fn download_single_from_transmission_udp_tracker() {
    download_from(&[PeerKind::Transmission], single_64mib(), Discovery::Udp);
}

/// Goal: multi-file torrent from transmission.
/// Setup: `Payload::multi_file`; ringbit dials transmission by `--peer`.
/// Check: exit 0, byte-identical (ringbit creates the empty files itself).
#[test]
fn download_multi_from_transmission_direct() {
    download_from(&[PeerKind::Transmission], multi(), Discovery::Direct);
}

/// Goal: 64 MiB single file from aria2 1.36.
/// Setup: aria2 seeds (`--bt-seed-unverified`); ringbit dials it by `--peer`.
/// Check: exit 0, byte-identical.
#[test]
fn download_single_from_aria2_direct() {
    download_from(&[PeerKind::Aria2], single_64mib(), Discovery::Direct);
}

/// Goal: multi-file torrent from aria2.
/// Setup: aria2 seeds and announces to opentracker; ringbit finds it over HTTP.
/// Check: exit 0, byte-identical.
#[test]
fn download_multi_from_aria2_http_tracker() {
    download_from(&[PeerKind::Aria2], multi(), Discovery::Http);
}

/// Goal: one swarm of three different seeders at once.
/// Setup: libtorrent, transmission and aria2 seed the same 64 MiB file and all
/// announce to opentracker over HTTP (aria2 1.36 has no UDP tracker support:
/// "udp is not supported yet"); ringbit learns all three from it.
/// Check: exit 0, byte-identical.
#[test]
fn download_single_from_all_three_http_tracker() {
    download_from(
        &[PeerKind::Libtorrent, PeerKind::Transmission, PeerKind::Aria2],
        single_64mib(),
        Discovery::Http,
    );
}

/// Goal: the multi-file torrent from all three seeders at once, by `--peer`.
/// Setup: the three seed one data dir; ringbit dials each.
/// Check: exit 0, byte-identical.
#[test]
fn download_multi_from_all_three_direct() {
    download_from(
        &[PeerKind::Libtorrent, PeerKind::Transmission, PeerKind::Aria2],
        multi(),
        Discovery::Direct,
    );
}

// ---------------------------------------------------------------------------
// --only

/// Goal: `--only GLOB` fetches only the pieces of the matching files, and
/// never creates an unselected file: the bytes of unselected files that
/// share a piece with a selected one live in part files.
/// Setup: `Payload::multi_file` (256 KiB pieces) seeded by libtorrent;
/// `ringbit download --only 'sub/deeper/*'` (c.bin, d.bin: 2.25 MiB of 8.25;
/// b.bin shares c.bin's first piece, tiny shares d.bin's last). Then the
/// same command with a fresh state dir, so everything is rechecked from disk.
/// Check: exit 0; sub/deeper/c.bin and d.bin byte-identical; no unselected
/// file exists (a.bin, b.bin, tiny, the empty ones); the part files dir
/// `.<info hash>.parts` exists; the rerun finds the download complete by
/// recheck alone (the boundary pieces verify from the part files), without
/// a peer.
#[test]
fn download_only_glob_fetches_matching_files() {
    let payload = multi();
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let out = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap();
    let only = ["--no-trackers", "--only", "sub/deeper/*", "--state-dir", state_arg];
    let mut rb = Ringbit::download(&torrent, out.path(), &[seeder.addr()], &only);
    rb.wait_success(DOWNLOAD_LIMIT);
    let src = payload.save_path.join(&payload.name);
    let dst = out.path().join(&payload.name);
    for f in ["sub/deeper/c.bin", "sub/deeper/d.bin"] {
        let want = std::fs::read(src.join(f)).unwrap();
        let got = std::fs::read(dst.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(want == got, "{f} differs");
    }
    for f in ["a.bin", "empty-1", "sub/b.bin", "sub/empty-2", "tiny"] {
        assert!(!dst.join(f).exists(), "{f} was created though --only excludes it");
    }
    let parts = out.path().join(format!(".{}.parts", payload.info_hash));
    assert!(parts.is_dir(), "no part files in {}", out.path().display());
    drop(seeder);

    let fresh = tempfile::tempdir().unwrap();
    let fresh_arg = fresh.path().to_str().unwrap();
    let again = ["--no-trackers", "--only", "sub/deeper/*", "--state-dir", fresh_arg];
    let mut rb = Ringbit::download(&torrent, out.path(), &[], &again);
    rb.wait_success(DOWNLOAD_LIMIT);
    assert!(rb.log().contains("already complete"), "log:\n{}", rb.log_tail());
    for f in ["a.bin", "sub/b.bin", "tiny"] {
        assert!(!dst.join(f).exists(), "{f} was created by the rerun");
    }
}

// ---------------------------------------------------------------------------
// ringbit to ringbit

/// Goal: ringbit seeds to ringbit.
/// Setup: `ringbit download --seed` on a complete copy of a 64 MiB file (it
/// rechecks, finds every piece and seeds); a second ringbit dials it by `--peer`.
/// Check: the seeder logged have=all pieces; the leecher exits 0 with
/// byte-identical data; the seeder still runs and exits 0 on SIGINT.
#[test]
fn download_from_ringbit_seeder() {
    let payload = single_64mib();
    let torrent = payload.torrent(&[]);
    let mut seeder =
        Ringbit::download(&torrent, &payload.save_path, &[], &["--seed", "--no-trackers"]);
    assert!(
        helpers::wait_until(Duration::from_secs(60), || is_listening(seeder.port)
            || !seeder.is_running()),
        "ringbit seeder never listened; log:\n{}",
        seeder.log_tail()
    );
    assert!(seeder.is_running(), "ringbit seeder exited; log:\n{}", seeder.log_tail());
    let pieces = payload.total_size.div_ceil(payload.piece_length);
    assert_eq!(seeder.existing_have(), Some(pieces), "log:\n{}", seeder.log_tail());
    let out = tempfile::tempdir().unwrap();
    let mut leecher = Ringbit::download(&torrent, out.path(), &[seeder.addr()], &["--no-trackers"]);
    leecher.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    assert!(seeder.is_running(), "ringbit seeder exited; log:\n{}", seeder.log_tail());
    seeder.interrupt_and_wait(0);
}

// ---------------------------------------------------------------------------
// Interruptions

/// How a download is interrupted.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill9,
    SigInt,
}

/// Starts a download from a slow scripted seeder, stops it with `how` once a
/// third of the payload was served, then reruns it against a fresh, fast
/// scripted seeder. Checks the rerun found verified pieces, fetched fewer than
/// all bytes, and completes byte-identical.
fn interrupt_and_resume(how: Stop) {
    // 16 MiB in 256 KiB pieces (64 pieces); 2 ms per block ~ 8 MB/s, 2 s.
    let payload = Payload::single_file("resume.bin", 16 << 20, 18);
    let torrent = payload.torrent(&[]);
    let out = tempfile::tempdir().unwrap();
    {
        let slow = ScriptedPeer::start(
            &payload,
            Behaviour::Honest { block_delay: Duration::from_millis(2) },
        );
        let mut rb = Ringbit::download(&torrent, out.path(), &[slow.addr], &PLAINTEXT_ARGS);
        let third = payload.total_size / 3;
        assert!(
            helpers::wait_until(DOWNLOAD_LIMIT, || slow.served_bytes() >= third
                || !rb.is_running()),
            "the slow seeder served only {} bytes; log:\n{}",
            slow.served_bytes(),
            rb.log_tail()
        );
        assert!(rb.is_running(), "finished before the interruption; log:\n{}", rb.log_tail());
        // Let a few pieces pass the hash check and reach the disk.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            slow.served_bytes() < payload.total_size,
            "the whole payload was served before the interruption"
        );
        match how {
            Stop::Kill9 => rb.kill9(),
            Stop::SigInt => {
                rb.interrupt_and_wait(130);
                assert!(rb.log().contains("interrupted with"), "log:\n{}", rb.log_tail());
            }
        }
    }
    let fast = ScriptedPeer::start(&payload, Behaviour::Honest { block_delay: Duration::ZERO });
    let mut rb = Ringbit::download(&torrent, out.path(), &[fast.addr], &PLAINTEXT_ARGS);
    rb.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    let have = rb.existing_have().unwrap_or_else(|| {
        panic!("the rerun did not check existing data; log:\n{}", rb.log_tail())
    });
    assert!(have > 0, "{how:?}: no verified piece survived; log:\n{}", rb.log_tail());
    let left = payload.total_size - have * payload.piece_length;
    assert!(
        fast.served_bytes() <= left,
        "{how:?}: rerun fetched {} bytes, but only {left} were missing (have={have})",
        fast.served_bytes()
    );
}

/// Goal: kill -9 mid-download loses no verified piece; a rerun completes and
/// does not fetch verified pieces again.
/// Setup: 16 MiB (64 pieces) from a scripted seeder throttled to ~8 MB/s;
/// SIGKILL once a third was served; rerun against a fresh unthrottled seeder.
/// Check: the rerun logs `existing data checked have=N` with N > 0, the second
/// seeder served at most (64 - N) pieces' bytes, the data is byte-identical.
#[test]
fn download_resumes_after_kill_9() {
    interrupt_and_resume(Stop::Kill9);
}

/// Goal: Ctrl-C stops a download cleanly and a rerun continues.
/// Setup: as the kill -9 test, with SIGINT instead.
/// Check: exit code 130 and the "interrupted with" message; the rerun finds
/// N > 0 pieces, fetches at most the rest, and completes byte-identical.
#[test]
fn download_ctrl_c_exits_130_and_resumes() {
    interrupt_and_resume(Stop::SigInt);
}
