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

/// The Sonarr-like flow's whole run (its bounded waits are 90 s each).
const FLOW_LIMIT: Duration = Duration::from_secs(400);
/// The .torrent appearing in the daemon once the script added it.
const ADDED_LIMIT: Duration = Duration::from_secs(120);

/// Goal: the issue 16 flow with real peers: a qBittorrent client adds a
/// .torrent and a magnet link with a category and tags, real libtorrent
/// seeders deliver them, share limits are enforced, bad input changes
/// nothing, and categories, tags, limits and totals survive a restart.
/// Setup: two single-file payloads, each seeded by libtorrent (the magnet
/// names its seeder with `x.pe`; the .torrent's seeder dials the daemon once
/// the torrent is in); a daemon answering as qBittorrent 5; no trackers.
/// Check: `tests/peers/qbt_flow.py` passes (see its docstring); both
/// downloads are byte-identical to the payloads; after a restart the stopped
/// torrent keeps its category, tags, ratio limit, state `stoppedUP` and
/// download total, the category and the global share settings are there;
/// `torrents/delete` with `deleteFiles` removes its file.
#[test]
fn sonarr_flow_with_libtorrent_seeders_categories_tags_and_share_limits() {
    use crate::peers::{Payload, PeerKind, Seeder};
    let python = helpers::require_tool("python3");
    let episode = Payload::single_file("show.S02E03.mkv", 700 * 1024 + 11, 16);
    let season = Payload::single_file("season.pack.bin", 900 * 1024 + 5, 16);
    let episode_torrent = episode.torrent(&[]);
    let mut episode_seeder =
        Seeder::start(PeerKind::Libtorrent, &episode_torrent, &episode.save_path, None);
    let season_seeder =
        Seeder::start(PeerKind::Libtorrent, &season.torrent(&[]), &season.save_path, None);
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&dn={}&x.pe={}",
        season.info_hash,
        season.name,
        season_seeder.addr()
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let state = dir.path().join("state");
    let port = helpers::free_port();
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\ndownload_dir = \"data\"\nlisten_port = {port}\n\
             bind = [\"127.0.0.1\"]\napi_listen = \"127.0.0.1:0\"\nshards = 1\ntrackers = false\n\
             [api]\nusername = \"sonarr\"\npassword = \"s3cret\"\nqbittorrent_version = 5\n",
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon.log"));
    let out_file = dir.path().join("flow.out");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/qbt_flow.py");
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(script)
        .args(["--port", &daemon.api.port().to_string()])
        .args(["--username", "sonarr", "--password", "s3cret"])
        .arg("--save-path")
        .arg(&data_dir)
        .arg("--outside")
        .arg(dir.path().join("outside"))
        .arg("--torrent")
        .arg(&episode_torrent)
        .args(["--torrent-hash", &episode.info_hash, "--torrent-name", &episode.name])
        .args(["--magnet", &magnet, "--magnet-hash", &season.info_hash])
        .args(["--magnet-name", &season.name, "--dead-magnet-hash", &"e1".repeat(20)])
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(dir.path().join("flow.err")).unwrap());
    let mut flow = helpers::ChildGuard::spawn("qbt_flow.py", &mut cmd);
    let report = |what: &str| {
        format!(
            "{what}\n--- flow stdout\n{}\n--- flow stderr\n{}\n--- daemon\n{}",
            std::fs::read_to_string(&out_file).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("flow.err")).unwrap_or_default(),
            daemon.log()
        )
    };
    // The .torrent has no peers of its own: its seeder dials in once it is added.
    let path = format!("/api/v1/torrents/{}", episode.info_hash);
    let added = helpers::wait_until(ADDED_LIMIT, || {
        daemon.request("GET", &path, "", b"").0 == 200 || flow.child.try_wait().unwrap().is_some()
    });
    assert!(added, "{}", report("the .torrent was never added"));
    if daemon.request("GET", &path, "", b"").0 == 200 {
        episode_seeder.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    }
    let status = flow.wait_timeout(FLOW_LIMIT);
    assert!(status.is_some_and(|s| s.success()), "{}", report("qbt_flow.py failed"));
    helpers::assert_same_tree(&episode.save_path, &data_dir.join("tv"));
    helpers::assert_same_tree(&season.save_path, &data_dir.join("magnets"));
    daemon.stop();

    // Restart: labels, limits, totals and settings are still there.
    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon2.log"));
    let rows = daemon.get_json("/api/v2/torrents/info");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let t = &rows[0];
    assert_eq!(t["hash"], episode.info_hash.as_str());
    assert_eq!(t["category"], "tv");
    assert_eq!(t["tags"], "ep, sonarr");
    assert_eq!(t["ratio_limit"], 0.0);
    assert_eq!(t["state"], "stoppedUP");
    assert_eq!(t["up_limit"], 123456);
    assert_eq!(t["downloaded"], episode.total_size, "totals.json kept the download: {t}");
    assert!(t["completion_on"].as_i64().unwrap() > 0, "{t}");
    let categories = daemon.get_json("/api/v2/torrents/categories");
    assert!(categories.get("tv").is_some(), "{categories}");
    let prefs = daemon.get_json("/api/v2/app/preferences");
    assert_eq!(prefs["max_ratio_act"], 1, "{prefs}");
    assert_eq!(prefs["max_ratio_enabled"], true, "{prefs}");
    let file = data_dir.join("tv").join(&episode.name);
    assert!(file.is_file());
    let form = format!("hashes={}&deleteFiles=true", episode.info_hash);
    let (code, body) = daemon.request(
        "POST",
        "/api/v2/torrents/delete",
        "application/x-www-form-urlencoded",
        form.as_bytes(),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(helpers::wait_until(Duration::from_secs(30), || !file.exists()), "file left");
    assert_eq!(daemon.get_json("/api/v2/torrents/info"), serde_json::json!([]));
    daemon.stop();
}
