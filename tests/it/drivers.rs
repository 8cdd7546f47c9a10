//! The two I/O drivers (issue 15): ringbit falls back to epoll where io_uring
//! is refused, and works there.
//!
//! Owns the seccomp scenarios: `tests/peers/seccomp_exec.py` runs ringbit
//! under a filter that makes `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register` fail with EPERM, exactly as Docker's default seccomp
//! profile does. The download, seeding and daemon suites run on both drivers
//! through `RINGBIT_IO_DRIVER` (scripts/test.sh runs them a second time with
//! `epoll`). Layer: integration tests.

use crate::download::{Ringbit, DOWNLOAD_LIMIT};
use crate::helpers;
use crate::peers::{Payload, PeerKind, Seeder};
use std::time::Duration;

const SECCOMP_EXEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/seccomp_exec.py");

/// Goal: the seccomp filter the tests use really refuses io_uring here, so
/// the scenarios below test what they claim.
/// Setup: `seccomp_exec.py --check` loads the filter and calls
/// `io_uring_setup`. Check: it fails with EPERM.
#[test]
fn seccomp_filter_refuses_io_uring_with_eperm() {
    let out = helpers::run_bounded(
        std::process::Command::new("/usr/bin/python3").args([SECCOMP_EXEC, "--check", "--"]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "the seccomp filter does not refuse io_uring (is python3-seccomp installed?): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Goal: under Docker's default seccomp profile (io_uring refused) ringbit
/// still downloads, on the epoll driver, and says why.
/// Setup: libtorrent seeds 64 MiB; ringbit `download --peer` (driver `auto`,
/// the default) runs under the filter. Check: exit 0, byte-identical, and the
/// log names epoll and the seccomp cause.
#[test]
fn download_under_a_seccomp_filter_that_refuses_io_uring_uses_epoll() {
    let payload = Payload::single_file("seccomp.bin", 64 << 20, 18);
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let out = tempfile::tempdir().unwrap();
    let cmd = helpers::ringbit_under(&["/usr/bin/python3", SECCOMP_EXEC, "--"]);
    let mut rb = Ringbit::download_by(
        cmd,
        &torrent,
        out.path(),
        &[seeder.addr()],
        &["--no-trackers", "--io-driver", "auto"],
    );
    rb.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    let log = rb.log();
    assert!(log.contains("I/O driver: epoll"), "log does not say epoll was chosen:\n{log}");
    assert!(log.contains("seccomp"), "log does not say why (seccomp):\n{log}");
    drop(seeder);
}

/// Goal: `--io-driver uring` never falls back: under the filter it fails at
/// start with the cause and the fix.
/// Setup: the same filter, `ringbit download --io-driver uring`.
/// Check: exit 1, the message names seccomp and the syscalls to allow.
#[test]
fn io_driver_uring_under_the_filter_fails_with_the_cause() {
    let payload = Payload::single_file("seccomp-uring.bin", 1 << 20, 16);
    let torrent = payload.torrent(&[]);
    let out = tempfile::tempdir().unwrap();
    let mut rb = Ringbit::download_by(
        helpers::ringbit_under(&["/usr/bin/python3", SECCOMP_EXEC, "--"]),
        &torrent,
        out.path(),
        &[],
        &["--no-trackers", "--io-driver", "uring"],
    );
    let status = rb.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "log:\n{}", rb.log());
    let log = rb.log();
    assert!(log.contains("seccomp") && log.contains("io_uring_setup"), "{log}");
}
