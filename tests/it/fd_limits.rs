//! File descriptors under a tiny `RLIMIT_NOFILE` (issue 11 §2): the session
//! shares the limit out (peers, connects, data files) and a store short of
//! fds closes idle files and retries instead of stopping its torrent.
//!
//! Layer: integration tests (the real binary under `prlimit`, loopback
//! only, every wait bounded).

use crate::download::{Ringbit, DOWNLOAD_LIMIT};
use crate::helpers;
use crate::peers::{is_listening, Payload};
use std::time::Duration;

/// Files in the torrent: several times what the limit lets either process
/// hold open at once.
const FILES: usize = 400;

/// The soft and hard fd limit both processes run under.
const NOFILE: u64 = 128;

/// Goal: a torrent with more files than the fd limit allows open seeds and
/// downloads byte-identical, and the shares of the limit are logged.
/// Setup: 400 files of 40 KiB (256 KiB pieces, so most pieces span several
/// files); `ringbit download --seed` seeds it and a second ringbit
/// downloads it from the first, both run by `prlimit --nofile=128:128`.
/// Check: the seeder's recheck finds every piece; both log the derived
/// shares (data files far below 400); the
/// download exits 0 with every byte the same; neither stopped a torrent.
#[test]
fn many_files_seed_and_download_under_a_tiny_fd_limit() {
    let payload = Payload::many_files("many", FILES, 40 * 1024, 18);
    let torrent = payload.torrent(&[]);
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let prlimit = helpers::require_tool("prlimit");
    let wrapper = [prlimit.to_str().unwrap(), limit.as_str(), "--"];
    let extra = ["--no-trackers", "--no-dht"];
    let mut seed_args = vec!["--seed"];
    seed_args.extend(extra);
    let mut seeder = Ringbit::download_by(
        helpers::ringbit_under(&wrapper),
        &torrent,
        &payload.save_path,
        &[],
        &seed_args,
    );
    assert!(
        helpers::wait_until(Duration::from_secs(60), || is_listening(seeder.port)
            || !seeder.is_running()),
        "seeder never listened; log:\n{}",
        seeder.log_tail()
    );
    assert!(seeder.is_running(), "seeder exited; log:\n{}", seeder.log_tail());
    // The recheck reads every file, more than it may keep open.
    let pieces = payload.total_size.div_ceil(payload.piece_length);
    assert_eq!(seeder.existing_have(), Some(pieces), "log:\n{}", seeder.log_tail());
    let shares = share_line(&seeder.log());
    assert!(shares.contains(&format!("nofile={NOFILE}")), "{shares}");
    let data_files = field(&shares, "data_files");
    assert!(data_files < FILES as u64 / 4, "{shares}");

    let out = tempfile::tempdir().unwrap();
    let mut leecher = Ringbit::download_by(
        helpers::ringbit_under(&wrapper),
        &torrent,
        out.path(),
        &[seeder.addr()],
        &extra,
    );
    leecher.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    assert!(share_line(&leecher.log()).contains(&format!("nofile={NOFILE}")));
    for (who, log) in [("seeder", seeder.log()), ("leecher", leecher.log())] {
        assert!(!log.contains("torrent stopped"), "{who} stopped a torrent:\n{log}");
    }
    assert!(seeder.is_running(), "seeder exited; log:\n{}", seeder.log_tail());
    seeder.interrupt_and_wait(0);
}

/// The log line that gives the shares of the fd limit.
fn share_line(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("file descriptors shared out"))
        .unwrap_or_else(|| panic!("no fd shares logged:\n{log}"))
        .to_string()
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {line}"));
    line[at + name.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {line}"))
}
