//! Durability against a disk that fails (issue 11, section 4): a flush that
//! fails must leave resume state claiming none of the pieces it may have
//! lost, `download` must exit 1, and a filesystem without fallocate must get
//! an error that names the `--allocation` option.
//!
//! Owns: [`FailFs`], a FUSE passthrough filesystem (`tests/peers/failfs.py`,
//! Debian's python3-fusepy) that drops writes and fails fsync with EIO while
//! a control file exists, the way a failed writeback looks to a program on
//! Linux; device-mapper's error/flakey targets are not in every kernel these
//! tests run on, /dev/fuse is. Layer: integration tests; they mount, so they
//! run as root (as CI does), and unmount what they mounted.
//!
//! Every scenario is documented as goal / setup / check; every wait is
//! bounded.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::download::{Ringbit, DOWNLOAD_LIMIT};
use crate::helpers::{self, ChildGuard};
use crate::peers::{is_listening, Payload};

/// How long the FUSE filesystem may take to appear in the mount table.
const MOUNT_LIMIT: Duration = Duration::from_secs(20);

/// A mounted `failfs.py`: ROOT (backing directory) served at MOUNTPOINT;
/// failing while CONTROL exists. Unmounted (lazily) and its process reaped
/// when dropped.
pub(crate) struct FailFs {
    guard: ChildGuard,
    pub(crate) mountpoint: PathBuf,
    control: PathBuf,
    log: PathBuf,
}

impl FailFs {
    pub(crate) fn mount(root: &Path, mountpoint: &Path, control: &Path) -> FailFs {
        std::fs::create_dir_all(root).unwrap();
        std::fs::create_dir_all(mountpoint).unwrap();
        let python = helpers::require_tool("python3");
        let check = Command::new(&python).args(["-c", "import fusepy"]).output().unwrap();
        assert!(check.status.success(), "python3-fusepy is not installed: run scripts/test.sh");
        assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing: load the fuse module");
        let log = mountpoint.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(python);
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/failfs.py"))
            .arg(root)
            .arg(mountpoint)
            .arg(control)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let guard = ChildGuard::spawn("failfs", &mut cmd);
        let fs = FailFs {
            guard,
            mountpoint: mountpoint.to_path_buf(),
            control: control.to_path_buf(),
            log,
        };
        let mounted = helpers::wait_until(MOUNT_LIMIT, || is_mounted(mountpoint));
        assert!(mounted, "failfs did not mount; log:\n{}", fs.log());
        fs
    }

    pub(crate) fn set_failing(&self, failing: bool) {
        if failing {
            std::fs::write(&self.control, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(&self.control);
        }
    }

    /// `failed_syncs` as counted by the filesystem.
    pub(crate) fn failed_syncs(&self) -> u64 {
        let stats = std::fs::read_to_string(format!("{}.stats", self.control.display()))
            .unwrap_or_default();
        stats
            .lines()
            .find_map(|l| l.strip_prefix("failed_syncs="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FailFs {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()).unwrap();
        // SAFETY: umount2(2) with a NUL-terminated path we own; MNT_DETACH
        // so a file still open somewhere cannot keep the mount busy.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        // The filesystem process exits once unmounted; the guard kills it
        // (by its pid) if it has not.
        let _ = self.guard.wait_timeout(Duration::from_secs(5));
    }
}

/// True when `path` is a mount point in this process's mount table.
fn is_mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    table.lines().any(|line| line.split(' ').nth(4) == Some(&*want))
}

/// Goal: a flush that fails never lets resume state claim the pieces it may
/// have lost; `download` exits 1 saying so; a later run rechecks and fetches
/// them again. And a filesystem that refuses fallocate gets an error naming
/// `--allocation sparse`.
/// Setup: a ringbit seeder of 4 MiB (256 KiB pieces) on the local disk; the
/// leecher downloads into a FUSE filesystem. First that filesystem is shown
/// to fail fsync for real (EIO) while failing and to pass it otherwise. Then
/// (healthy) a download with the default allocation; then (failing: writes
/// dropped, fsync EIO) a download with `--allocation sparse`; then (healthy)
/// the same command again.
/// Check: the first download exits 1 naming `--allocation sparse`; the
/// second exits 1 with "flush failed", failfs counted failed syncs, and the
/// resume file claims no piece and leaves the file unstamped (recheck); the
/// third exits 0, found nothing to trust on disk, and the data is
/// byte-identical to the source.
#[test]
fn a_failed_flush_claims_no_lost_piece_and_download_exits_1() {
    let payload = Payload::single_file("durable.bin", 4 << 20, 18);
    let torrent = payload.torrent(&[]);
    let mut seeder =
        Ringbit::download(&torrent, &payload.save_path, &[], &["--seed", "--no-trackers"]);
    assert!(
        helpers::wait_until(Duration::from_secs(60), || is_listening(seeder.port)
            || !seeder.is_running()),
        "ringbit seeder never listened; log:\n{}",
        seeder.log_tail()
    );

    let dir = tempfile::tempdir().unwrap();
    let fs = FailFs::mount(
        &dir.path().join("backing"),
        &dir.path().join("mnt"),
        &dir.path().join("failing"),
    );
    let out = fs.mountpoint.join("out");
    std::fs::create_dir_all(&out).unwrap();

    // The filesystem really fails fsync while failing, and only then.
    {
        use std::io::Write;
        let mut probe = std::fs::File::create(out.join("probe")).unwrap();
        probe.write_all(b"kept").unwrap();
        probe.sync_data().expect("healthy fsync");
        fs.set_failing(true);
        probe.write_all(b"lost").unwrap();
        let error = probe.sync_data().expect_err("fsync must fail while failing");
        assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
        fs.set_failing(false);
        drop(probe);
        assert!(std::fs::read(out.join("probe")).unwrap().starts_with(b"kept"));
        std::fs::remove_file(out.join("probe")).unwrap();
    }

    // No fallocate on this filesystem: the error names the option.
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let mut rb = Ringbit::download(
        &torrent,
        &out,
        &[seeder.addr()],
        &["--no-trackers", "--state-dir", state_arg],
    );
    let status = rb.wait_exit(DOWNLOAD_LIMIT);
    assert_eq!(status.code(), Some(1), "log:\n{}", rb.log_tail());
    assert!(rb.log().contains("--allocation sparse"), "log:\n{}", rb.log_tail());

    // Failing disk: every piece arrives and verifies in memory, the final
    // flush fails.
    fs.set_failing(true);
    let args = ["--no-trackers", "--state-dir", state_arg, "--allocation", "sparse"];
    let mut rb = Ringbit::download(&torrent, &out, &[seeder.addr()], &args);
    let status = rb.wait_exit(DOWNLOAD_LIMIT);
    assert_eq!(status.code(), Some(1), "a failed final flush exits 1; log:\n{}", rb.log_tail());
    let log = rb.log();
    assert!(log.contains("flush failed"), "log:\n{}", rb.log_tail());
    assert!(fs.failed_syncs() >= 1, "failfs saw no fsync; its log:\n{}", fs.log());
    let info = ringbit::metainfo::Metainfo::from_file(&torrent).unwrap();
    let bytes = std::fs::read(state.join(format!("{}.resume", payload.info_hash))).unwrap();
    let resume =
        ringbit::resume::decode(&bytes, info.info_hash, info.info.piece_count(), 1).unwrap();
    assert_eq!(resume.have.count(), 0, "resume state claims pieces a failed flush may have lost");
    assert_eq!(resume.files, vec![None], "the file is left unstamped: rechecked at the next start");

    // Healthy again: the same command rechecks, fetches everything again
    // and ends with the source's bytes.
    fs.set_failing(false);
    let mut rb = Ringbit::download(&torrent, &out, &[seeder.addr()], &args);
    rb.wait_success(DOWNLOAD_LIMIT);
    assert_eq!(rb.existing_have(), Some(0), "log:\n{}", rb.log_tail());
    let want = std::fs::read(payload.save_path.join("durable.bin")).unwrap();
    let got = std::fs::read(dir.path().join("backing/out/durable.bin")).unwrap();
    assert!(want == got, "data differs after the rerun");
    seeder.interrupt_and_wait(0);
}
