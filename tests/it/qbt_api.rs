//! The qBittorrent-compatible API (issue 16) driven by the real PyPI client
//! `qbittorrent-api` (installed by scripts/install-test-peers.sh), as a
//! Sonarr-like tool would: login, versions, preferences, the torrent list
//! with filters and sort, pause and resume, transfer info, delete with files.

use crate::daemon::{small_torrent, Daemon};
use crate::helpers;
use std::time::Duration;

/// The client script's whole run (bounded waits inside are 60 s each).
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// Goal: a qBittorrent client library can drive the daemon.
/// Setup: a daemon with a username and password; one small torrent's data
/// in its download dir and its .torrent beside.
/// Check: `tests/peers/qbt_client.py` passes: 403 without a session, a
/// wrong password refused, versions `v4.6.7`/`2.9.3`, `torrents/add`
/// (multipart) refuses a save path outside the roots (403, nothing
/// created), adds the torrent (`Ok.`, then `Fails.` for the duplicate), which
/// is rechecked and listed
/// with its name, progress, state (`stalledUP`) and save path, filters,
/// pause (`pausedUP`) and resume, transfer info, unknown hashes skipped and
/// malformed ones refused, delete with files removing the data.
#[test]
fn qbittorrent_api_client_drives_the_daemon() {
    let python = helpers::require_tool("python3");
    let check =
        std::process::Command::new(&python).args(["-c", "import qbittorrentapi"]).output().unwrap();
    assert!(
        check.status.success(),
        "qbittorrent-api is not installed: run scripts/install-test-peers.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let data = helpers::payload_bytes(50_000, 3);
    std::fs::write(data_dir.join("show.S01E01.mkv"), &data).unwrap();
    let torrent = small_torrent("show.S01E01.mkv", &data, "http://127.0.0.1:1/announce");
    let info_hash = ringbit::metainfo::Metainfo::from_bytes(&torrent).unwrap().info_hash.to_hex();
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\ndownload_dir = \"data\"\nlisten_port = {}\n\
             bind = [\"127.0.0.1\"]\napi_listen = \"127.0.0.1:0\"\nshards = 1\ntrackers = false\n\
             [api]\nusername = \"sonarr\"\npassword = \"s3cret\"\n",
            helpers::free_port()
        ),
    )
    .unwrap();
    let torrent_file = dir.path().join("show.torrent");
    std::fs::write(&torrent_file, &torrent).unwrap();
    let daemon = Daemon::start(&config, &dir.path().join("state"), &dir.path().join("daemon.log"));
    daemon.wait_seeding(0);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/qbt_client.py");
    let out = helpers::run_bounded(
        std::process::Command::new(&python)
            .arg(script)
            .args(["--port", &daemon.api.port().to_string()])
            .args(["--username", "sonarr", "--password", "s3cret"])
            .args(["--hash", &info_hash, "--name", "show.S01E01.mkv"])
            .arg("--save-path")
            .arg(&data_dir)
            .arg("--torrent")
            .arg(&torrent_file)
            .arg("--outside")
            .arg(dir.path().join("outside")),
        SCRIPT_LIMIT,
    );
    assert!(
        out.status.success(),
        "qbt_client.py failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    assert!(!data_dir.join("show.S01E01.mkv").exists());
    daemon.stop();
}
