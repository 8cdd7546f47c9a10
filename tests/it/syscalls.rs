//! No blocking file syscall on a shard thread (issue 14, item 1), checked with
//! `strace` on the real binary.
//!
//! Owns: [`Traced`], a ringbit process run under `strace -f -Y` (each line
//! names the thread's `comm`; shard threads are named `ringbit-shard-N`), and
//! the scenarios. Layer: integration tests.
//!
//! Goal: a download and a seed, in steady state, make no `pwrite64`,
//! `pread64`, `fdatasync`, `fsync` (nor the vector, truncate, allocate and
//! open variants) on a shard thread: file I/O goes through io_uring, or the
//! blocking pool (`ringbit-blocking-N`).
//! Setup: ringbit seeds 16 MiB under strace; a second ringbit, under strace
//! too, downloads it by `--peer`; the seeder is stopped with SIGINT (its final
//! flush is traced too).
//! Check: byte-identical download; each trace shows shard threads submitting
//! to their ring (`io_uring_enter`: proof that shard threads are traced and
//! named) and none of the forbidden calls on a shard thread. A control run
//! with `--backend pwrite` must show `pwrite64` on a shard thread, so the
//! check can fail.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::download::DOWNLOAD_LIMIT;
use crate::helpers::{self, ChildGuard};
use crate::peers::{is_listening, Payload};

/// Syscalls a shard thread must never make (blocking file I/O).
const FORBIDDEN: &[&str] = &[
    "pwrite64",
    "pread64",
    "pwritev",
    "preadv",
    "pwritev2",
    "preadv2",
    "fdatasync",
    "fsync",
    "fallocate",
    "ftruncate",
    "openat",
];

/// How long a traced ringbit may take to start listening or to exit.
const TRACED_LIMIT: Duration = Duration::from_secs(60);

/// A ringbit process under `strace -f -Y`.
struct Traced {
    strace: ChildGuard,
    trace: PathBuf,
    log: PathBuf,
}

impl Traced {
    fn start(dir: &Path, name: &str, args: &[&std::ffi::OsStr]) -> Traced {
        let strace = helpers::require_tool("strace");
        let trace = dir.join(format!("{name}.trace"));
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut syscalls = FORBIDDEN.to_vec();
        syscalls.push("io_uring_enter");
        let ringbit = helpers::ringbit();
        let mut cmd = std::process::Command::new(strace);
        cmd.args(["-f", "-qq", "-Y", "-o"])
            .arg(&trace)
            .arg("-e")
            .arg(format!("trace={}", syscalls.join(",")))
            .arg(ringbit.get_program())
            .args(args)
            .envs(ringbit.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        Traced { strace: ChildGuard::spawn("strace", &mut cmd), trace, log }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The traced ringbit's pid (strace's only child).
    fn ringbit_pid(&self) -> Option<i32> {
        let pid = self.strace.pid();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        match self.strace.wait_timeout(limit) {
            Some(status) => status,
            None => panic!("traced ringbit still running after {limit:?}; log:\n{}", self.log()),
        }
    }

    /// Trace lines of shard threads: (syscall, line).
    fn shard_calls(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (_, rest) = line.split_once("<ringbit-shard-")?;
                let (_, call) = rest.split_once("> ")?;
                let name = call.split('(').next()?.trim().to_string();
                Some((name, line.to_string()))
            })
            .collect()
    }
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// Checks the shard threads of `traced` entered their ring and made none of
/// [`FORBIDDEN`].
fn assert_no_blocking_file_io(traced: &Traced, what: &str) {
    let calls = traced.shard_calls();
    assert!(
        calls.iter().any(|(name, _)| name == "io_uring_enter"),
        "{what}: no io_uring_enter from a shard thread in the trace (not traced?); log:\n{}",
        traced.log()
    );
    let bad: Vec<&String> = calls
        .iter()
        .filter(|(name, _)| FORBIDDEN.contains(&name.as_str()))
        .map(|(_, l)| l)
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} blocking file syscalls on shard threads, first ones:\n{}",
        bad.len(),
        bad.iter().take(10).map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn shard_threads_make_no_blocking_file_syscalls() {
    let payload = Payload::single_file("syscalls.bin", 16 << 20, 18);
    let torrent = payload.torrent(&[]);
    let work = tempfile::tempdir().unwrap();
    let seed_port = helpers::free_port();
    let seed_port_s = seed_port.to_string();
    let mut seeder = Traced::start(
        work.path(),
        "seed",
        &[
            os("seed"),
            torrent.as_os_str(),
            payload.save_path.as_os_str(),
            os("--no-trackers"),
            os("--bind"),
            os("127.0.0.1"),
            os("--port"),
            os(&seed_port_s),
        ],
    );
    assert!(
        helpers::wait_until(TRACED_LIMIT, || is_listening(seed_port)),
        "traced seeder never listened; log:\n{}",
        seeder.log()
    );
    let out = tempfile::tempdir().unwrap();
    let peer = format!("127.0.0.1:{seed_port}");
    let leech_port = helpers::free_port().to_string();
    let mut leecher = Traced::start(
        work.path(),
        "leech",
        &[
            os("download"),
            torrent.as_os_str(),
            os("-o"),
            out.path().as_os_str(),
            os("--peer"),
            os(&peer),
            os("--no-trackers"),
            os("--bind"),
            os("127.0.0.1"),
            os("--port"),
            os(&leech_port),
        ],
    );
    let status = leecher.wait(DOWNLOAD_LIMIT);
    assert!(status.success(), "traced download failed ({status}); log:\n{}", leecher.log());
    helpers::assert_same_tree(&payload.save_path, out.path());

    let pid = seeder.ringbit_pid().expect("the traced seeder's pid");
    // SAFETY: kill(2) on the ringbit this test started (strace's child).
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = seeder.wait(TRACED_LIMIT);
    assert!(status.success(), "traced seeder exited with {status}; log:\n{}", seeder.log());

    assert_no_blocking_file_io(&leecher, "download");
    assert_no_blocking_file_io(&seeder, "seed");
}

/// The control: the pwrite backend writes on the shard thread, and the same
/// check sees it (so the check above can fail).
#[test]
fn syscall_check_sees_pwrite_on_a_shard_thread() {
    let payload = Payload::single_file("syscalls-control.bin", 4 << 20, 18);
    let torrent = payload.torrent(&[]);
    let work = tempfile::tempdir().unwrap();
    let mut seeder = crate::download::Ringbit::download(
        &torrent,
        &payload.save_path,
        &[],
        &["--seed", "--no-trackers"],
    );
    assert!(
        helpers::wait_until(TRACED_LIMIT, || is_listening(seeder.port) || !seeder.is_running()),
        "seeder never listened; log:\n{}",
        seeder.log_tail()
    );
    let out = tempfile::tempdir().unwrap();
    let peer = seeder.addr().to_string();
    let leech_port = helpers::free_port().to_string();
    let mut leecher = Traced::start(
        work.path(),
        "leech-pwrite",
        &[
            os("download"),
            torrent.as_os_str(),
            os("-o"),
            out.path().as_os_str(),
            os("--peer"),
            os(&peer),
            os("--no-trackers"),
            os("--backend"),
            os("pwrite"),
            os("--bind"),
            os("127.0.0.1"),
            os("--port"),
            os(&leech_port),
        ],
    );
    let status = leecher.wait(DOWNLOAD_LIMIT);
    assert!(status.success(), "traced download failed ({status}); log:\n{}", leecher.log());
    helpers::assert_same_tree(&payload.save_path, out.path());
    seeder.interrupt_and_wait(0);
    let calls = leecher.shard_calls();
    assert!(
        calls.iter().any(|(name, _)| name == "pwrite64"),
        "the pwrite backend's writes were not seen on a shard thread; {} shard calls traced",
        calls.len()
    );
}
