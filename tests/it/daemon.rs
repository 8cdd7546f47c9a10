//! `ringbit daemon` (issue 6, the seed box): 1,000 small torrents across 2
//! shards announce to a real opentracker, a real libtorrent leecher downloads
//! one of them, the API lists all 1,000, SIGTERM stops cleanly (trackers hear
//! `stopped`), and a restart loads them all from resume state without
//! hashing a piece. Beside it: the control API (add by path and by upload,
//! pause, resume, remove), the watch directory, `/metrics`, config errors.
//!
//! Every daemon runs on fresh ports with its log in a file quoted on
//! failure; every wait is bounded.

use crate::helpers::{self, ChildGuard, Opentracker};
use crate::peers::{self, Leecher, Payload, PeerKind, Seeder};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Torrents in the seed-box test.
const TORRENTS: usize = 1000;
/// Payload bytes per torrent: two 16 KiB pieces, the second short.
const TORRENT_BYTES: usize = 20_000;
/// Daemon start-up, including checking every torrent the first time.
const STARTUP_LIMIT: Duration = Duration::from_secs(120);
/// The leecher's download of one small torrent.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(60);
/// SIGTERM to exit (trackers hear `stopped`, bounded at 5 s + margin).
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// One API request.
const HTTP_LIMIT: Duration = Duration::from_secs(20);
/// Data files closed after `file_idle_close_secs = 1` (the sweep runs every
/// second; a generous margin for a loaded machine).
const IDLE_CLOSE_LIMIT: Duration = Duration::from_secs(20);
/// Largest API reply read (the list of 1,000 torrents is ~700 KB).
const HTTP_REPLY_MAX: u64 = 64 << 20;

/// The bencoded single-file torrent of `data` (16 KiB pieces).
pub(crate) fn small_torrent(name: &str, data: &[u8], announce: &str) -> Vec<u8> {
    let mut pieces = Vec::new();
    for chunk in data.chunks(16384) {
        pieces.extend_from_slice(&ringbit::hash::sha1(chunk));
    }
    let mut out = Vec::new();
    out.extend_from_slice(format!("d8:announce{}:{announce}4:info", announce.len()).as_bytes());
    out.extend_from_slice(
        format!(
            "d6:lengthi{}e4:name{}:{name}12:piece lengthi16384e6:pieces{}:",
            data.len(),
            name.len(),
            pieces.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&pieces);
    out.extend_from_slice(b"ee");
    out
}

/// `count` torrents: data files in `data_dir`, .torrent files in
/// `torrent_dir`; returns their info hashes (hex) in order.
fn make_torrents(count: usize, data_dir: &Path, torrent_dir: &Path, announce: &str) -> Vec<String> {
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::create_dir_all(torrent_dir).unwrap();
    (0..count)
        .map(|i| {
            let name = format!("item-{i:05}.bin");
            let data = helpers::payload_bytes(TORRENT_BYTES, 1000 + i as u64);
            std::fs::write(data_dir.join(&name), &data).unwrap();
            let torrent = small_torrent(&name, &data, announce);
            std::fs::write(torrent_dir.join(format!("item-{i:05}.torrent")), &torrent).unwrap();
            ringbit::metainfo::Metainfo::from_bytes(&torrent).unwrap().info_hash.to_hex()
        })
        .collect()
}

/// A running `ringbit daemon` (also used by `api_security`).
pub(crate) struct Daemon {
    pub(crate) guard: ChildGuard,
    log: PathBuf,
    pub(crate) api: SocketAddr,
    /// The API token the daemon wrote to `<state_dir>/api.token`.
    pub(crate) token: String,
}

impl Daemon {
    /// Starts the daemon on `config` and waits until its API answers.
    pub(crate) fn start(config: &Path, state_dir: &Path, log: &Path) -> Daemon {
        let _ = std::fs::remove_file(state_dir.join("api.addr"));
        let log_file = std::fs::File::create(log).unwrap();
        let mut cmd = helpers::ringbit();
        cmd.arg("daemon")
            .arg("--config")
            .arg(config)
            .arg("-v")
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let mut guard = ChildGuard::spawn("ringbit daemon", &mut cmd);
        let addr_file = state_dir.join("api.addr");
        let up = helpers::wait_until(STARTUP_LIMIT, || {
            guard.child.try_wait().unwrap().is_some()
                || std::fs::read_to_string(&addr_file).is_ok_and(|s| s.ends_with('\n'))
        });
        let log = log.to_path_buf();
        assert!(
            up && guard.child.try_wait().unwrap().is_none(),
            "daemon did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let api = std::fs::read_to_string(&addr_file).unwrap().trim().parse().unwrap();
        let token =
            std::fs::read_to_string(state_dir.join("api.token")).unwrap().trim().to_string();
        Daemon { guard, log, api, token }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        http(self.api, method, path, content_type, body, Some(&self.token))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()))
    }

    pub(crate) fn get_json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.request("GET", path, "", b"");
        assert_eq!(code, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    fn status(&self) -> serde_json::Value {
        self.get_json("/api/v1/status")
    }

    /// Waits until start-up is done and `seeding` torrents are seeding.
    pub(crate) fn wait_seeding(&self, seeding: usize) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let ok = helpers::wait_until(STARTUP_LIMIT, || {
            last = self.status();
            last["startup"]["done"] == true && last["by_state"]["seeding"] == seeding
        });
        assert!(ok, "not {seeding} seeding: {last}\n{}", self.log());
        last
    }

    /// SIGTERM, then a clean exit 0 within STOP_LIMIT.
    pub(crate) fn stop(mut self) -> String {
        self.guard.signal(libc::SIGTERM);
        let status = self.guard.wait_timeout(STOP_LIMIT);
        let log = self.log();
        assert!(
            status.is_some_and(|s| s.success()),
            "daemon did not stop cleanly ({status:?}):\n{log}"
        );
        assert!(log.contains("daemon stopped"), "{log}");
        log
    }
}

/// One HTTP/1.1 request with `Connection: close` (with the API token when
/// given); returns status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    token: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_LIMIT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(HTTP_LIMIT)).unwrap();
    s.set_write_timeout(Some(HTTP_LIMIT)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.take(HTTP_REPLY_MAX).read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no header end")?;
    let head = String::from_utf8_lossy(&reply[..end]).to_string();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("no status")?;
    let mut body = reply[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((code, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.trim(), 16).map_err(|e| e.to_string())?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("short chunk")?);
        data = data.get(size + 2..).ok_or("short chunk")?;
    }
}

/// A daemon config in `dir` whose `download_roots` is `dir` itself.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    write_config_roots(dir, &[dir], extra)
}

/// A daemon config in `dir` with `download_roots` (API clients may put data
/// and read .torrent files only there).
fn write_config_roots(dir: &Path, roots: &[&Path], extra: &str) -> PathBuf {
    let config = dir.join("daemon.toml");
    let roots: Vec<String> =
        roots.iter().map(|r| format!("{:?}", r.display().to_string())).collect();
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\ndownload_dir = \"data\"\nwatch_dir = \"watch\"\n\
             watch_interval_secs = 1\nlisten_port = {}\nbind = [\"127.0.0.1\"]\n\
             api_listen = \"127.0.0.1:0\"\nshards = 2\ndownload_roots = [{}]\n{extra}",
            helpers::free_port(),
            roots.join(", ")
        ),
    )
    .unwrap();
    config
}

/// Open fds of process `pid` on files under `dir` (its `/proc/<pid>/fd`
/// links); panics when the process is gone (0 would then prove nothing).
fn fds_under(pid: u32, dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .flatten()
        .filter(|link| std::fs::read_link(link.path()).is_ok_and(|target| target.starts_with(&dir)))
        .count()
}

/// The value of the first sample of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_thousand_torrents_announce_serve_stop_and_restart_without_rehash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let watch = dir.path().join("watch");
    // The tracker needs the info hashes first (whitelist): make the
    // torrents with a placeholder port, then rewrite them with the real one.
    let scratch = tempfile::tempdir().unwrap();
    let hashes = make_torrents(TORRENTS, &data, scratch.path(), "http://127.0.0.1:1/announce");
    let tracker = Opentracker::start(&hashes);
    let announce = tracker.http_announce();
    let again = make_torrents(TORRENTS, &data, &watch, &announce);
    assert_eq!(hashes, again, "the announce URL is outside the info dictionary");
    let config = write_config(dir.path(), "trackers = true\n");
    let state = dir.path().join("state");

    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon-1.log"));
    let status = daemon.wait_seeding(TORRENTS);
    assert_eq!(status["torrents"], TORRENTS);
    assert_eq!(status["shards"], 2);
    // Loading a seeding torrent opens no data file for good (pwrite backend).
    assert_eq!(fds_under(daemon.guard.child.id(), &data), 0);

    // The API lists all 1,000, on both shards, each fully verified.
    let list = daemon.get_json("/api/v1/torrents");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), TORRENTS);
    let mut listed: Vec<&str> = list.iter().map(|t| t["info_hash"].as_str().unwrap()).collect();
    listed.sort();
    let mut expected: Vec<&str> = hashes.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(list.iter().all(|t| t["state"] == "seeding" && t["progress"] == 1.0));
    for shard in 0..2 {
        let n = list.iter().filter(|t| t["shard"] == shard).count();
        assert!(n > 300, "shard {shard} holds only {n} of {TORRENTS} torrents");
    }

    // Every torrent announced: opentracker lists a seeder for each.
    let announced = helpers::wait_until(Duration::from_secs(60), || {
        hashes.iter().all(|h| peers::scrape(&tracker, h).is_ok_and(|(seeders, _)| seeders >= 1))
    });
    let missing: Vec<_> = hashes
        .iter()
        .filter(|h| !peers::scrape(&tracker, h).is_ok_and(|(s, _)| s >= 1))
        .take(5)
        .collect();
    assert!(announced, "not announced, e.g. {missing:?}\n{}", daemon.log());
    let metrics = String::from_utf8(daemon.request("GET", "/metrics", "", b"").1).unwrap();
    let ok = metric(&metrics, "ringbit_tracker_announces_total", "result=\"ok\"").unwrap();
    assert!(ok >= TORRENTS as f64, "announces ok: {ok}");
    assert_eq!(metric(&metrics, "ringbit_torrents", "state=\"seeding\""), Some(TORRENTS as f64));

    // A real leecher finds the daemon through the tracker and downloads one.
    let pick = 617;
    let torrent = watch.join(format!("item-{pick:05}.torrent"));
    let out = dir.path().join("leech");
    let mut leecher = Leecher::start(PeerKind::Libtorrent, &torrent, &out, &[], None);
    leecher.wait_complete(DOWNLOAD_LIMIT).unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    let name = format!("item-{pick:05}.bin");
    assert_eq!(std::fs::read(out.join(&name)).unwrap(), std::fs::read(data.join(&name)).unwrap());
    // Counters are published once a second.
    let mut view = serde_json::Value::Null;
    let counted = helpers::wait_until(Duration::from_secs(10), || {
        view = daemon.get_json(&format!("/api/v1/torrents/{}", hashes[pick]));
        view["uploaded"].as_u64().unwrap() >= TORRENT_BYTES as u64
    });
    assert!(counted, "{view}");
    assert_eq!(view["trackers"][0]["status"], "ok", "{view}");
    drop(leecher);

    // SIGTERM: clean exit, trackers told `stopped`.
    daemon.stop();
    let (seeders, _) = peers::scrape(&tracker, &hashes[0]).unwrap();
    assert_eq!(seeders, 0, "opentracker still lists the daemon as a seeder after `stopped`");

    // Restart: every torrent from resume state, not a piece hashed.
    let resumes = std::fs::read_dir(&state)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "resume"))
        .count();
    assert_eq!(resumes, TORRENTS);
    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon-2.log"));
    let status = daemon.wait_seeding(TORRENTS);
    assert_eq!(status["startup"]["expected"], TORRENTS);
    assert_eq!(status["startup"]["rechecked_pieces"], 0, "{status}");
    assert!(status["startup"]["errors"].as_array().unwrap().is_empty(), "{status}");
    let list = daemon.get_json("/api/v1/torrents");
    assert!(list.as_array().unwrap().iter().all(|t| t["rechecked_pieces"] == 0));
    daemon.stop();
}

#[test]
fn api_adds_pauses_resumes_and_removes_and_the_watch_directory_follows_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let staging = dir.path().join("staging");
    let hashes = make_torrents(4, &data, &staging, "http://127.0.0.1:1/announce");
    std::fs::create_dir_all(dir.path().join("watch")).unwrap();
    let config = write_config(dir.path(), "trackers = false\n");
    let state = dir.path().join("state");
    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon.log"));
    daemon.wait_seeding(0);

    // Add by path (JSON) and by upload (raw bytes).
    let path_body = format!("{{\"path\": \"{}\"}}", staging.join("item-00000.torrent").display());
    let (code, body) =
        daemon.request("POST", "/api/v1/torrents", "application/json", path_body.as_bytes());
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let upload = std::fs::read(staging.join("item-00001.torrent")).unwrap();
    let (code, body) =
        daemon.request("POST", "/api/v1/torrents", "application/x-bittorrent", &upload);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["info_hash"], hashes[1].as_str());
    // Twice: a conflict. Garbage: a bad request naming the problem.
    let (code, _) = daemon.request("POST", "/api/v1/torrents", "application/x-bittorrent", &upload);
    assert_eq!(code, 409);
    let (code, body) =
        daemon.request("POST", "/api/v1/torrents", "application/x-bittorrent", b"d4:infoi1ee");
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("not a valid .torrent"));
    let (code, _) =
        daemon.request("GET", &format!("/api/v1/torrents/{}", "ab".repeat(20)), "", b"");
    assert_eq!(code, 404);
    daemon.wait_seeding(2);

    // Pause, resume.
    let one = format!("/api/v1/torrents/{}", hashes[0]);
    assert_eq!(daemon.request("POST", &format!("{one}/pause"), "", b"").0, 200);
    assert_eq!(daemon.get_json(&one)["state"], "paused");
    assert_eq!(daemon.status()["by_state"]["paused"], 1);
    assert_eq!(daemon.request("POST", &format!("{one}/resume"), "", b"").0, 200);
    daemon.wait_seeding(2);

    // Rate limits: per torrent (remembered) and for the process.
    let limits = format!("/api/v1/torrents/{}/limits", hashes[1]);
    let (code, body) =
        daemon.request("POST", &limits, "application/json", br#"{"upload_rate": "512K"}"#);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let view = daemon.get_json(&format!("/api/v1/torrents/{}", hashes[1]));
    assert_eq!(view["upload_rate_limit"], 512 * 1024);
    assert_eq!(view["download_rate_limit"], 0);
    let (code, _) =
        daemon.request("POST", &limits, "application/json", br#"{"upload_rate": "fast"}"#);
    assert_eq!(code, 400);
    let (code, body) = daemon.request(
        "POST",
        "/api/v1/limits",
        "application/json",
        br#"{"download_rate": 1000000}"#,
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(daemon.status()["download_rate_limit"], 1_000_000);

    // The watch directory: a new file is added, a removed one stopped.
    let watched = dir.path().join("watch").join("item-00002.torrent");
    std::fs::copy(staging.join("item-00002.torrent"), &watched).unwrap();
    daemon.wait_seeding(3);
    // A watch directory that reads empty (an unmounted mount point, an NFS
    // hiccup) removes nothing, however many scans (1 s apart) see it so.
    let resume_file = state.join(format!("{}.resume", hashes[2]));
    assert!(resume_file.exists());
    std::fs::remove_file(&watched).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(daemon.status()["torrents"], 3, "{}", daemon.log());
    assert!(resume_file.exists(), "resume state kept");
    // With the directory plainly there (another file in it), the file's
    // absence over several scans removes its torrent.
    std::fs::write(dir.path().join("watch").join(".keep"), b"").unwrap();
    let gone = helpers::wait_until(Duration::from_secs(20), || daemon.status()["torrents"] == 2);
    assert!(gone, "{}", daemon.log());
    assert!(!resume_file.exists(), "a removed torrent's resume state goes");

    // Remove through the API; the data stays.
    assert_eq!(daemon.request("DELETE", &one, "", b"").0, 200);
    assert_eq!(daemon.request("GET", &one, "", b"").0, 404);
    assert!(data.join("item-00000.bin").exists());
    let metrics = String::from_utf8(daemon.request("GET", "/metrics", "", b"").1).unwrap();
    assert_eq!(metric(&metrics, "ringbit_torrents", "state=\"seeding\""), Some(1.0));
    assert!(metrics.contains(&format!("info_hash=\"{}\"", hashes[1])), "{metrics}");
    assert!(metrics.contains("ringbit_shard_torrents{shard=\"0\"}"));
    let piece_limit = "shard=\"0\",budget=\"piece_buffers\"";
    assert_eq!(
        metric(&metrics, "ringbit_shard_memory_limit_bytes", piece_limit),
        Some((256u64 << 20) as f64),
        "{metrics}"
    );
    assert!(metric(&metrics, "ringbit_fd_budget", "share=\"data_files\"").unwrap() >= 1.0);
    assert!(metric(&metrics, "ringbit_open_fds", "").unwrap() >= 1.0);
    daemon.stop();

    // What was removed stays removed; what is left comes back.
    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon-2.log"));
    let status = daemon.wait_seeding(1);
    assert_eq!(status["torrents"], 1);
    assert_eq!(status["startup"]["rechecked_pieces"], 0);
    let view = daemon.get_json(&format!("/api/v1/torrents/{}", hashes[1]));
    assert_eq!(view["upload_rate_limit"], 512 * 1024, "per-torrent limits survive a restart");
    daemon.stop();
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "state_dir = \"s\"\ndownload_dir = \"d\"\n[limits]\nupload_slots = 0\n",
    )
    .unwrap();
    let out = helpers::run_bounded(
        helpers::ringbit().arg("daemon").arg("--config").arg(&config),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.upload_slots"), "{stderr}");
    let out = helpers::run_bounded(
        helpers::ringbit().args(["daemon", "--example-config"]),
        Duration::from_secs(20),
    );
    assert!(out.status.success());
    // The example parses.
    std::fs::write(&config, &out.stdout).unwrap();
    assert!(ringbit::daemon::config::DaemonConfig::load(&config).is_ok());
}

/// Goal: the daemon downloads too, and its periodic checkpoint makes the
/// progress durable: after SIGKILL (no clean shutdown) a restart trusts the
/// resume state the checkpoint wrote.
/// Setup: a libtorrent seeder of an 8 MiB multi-file torrent behind
/// opentracker; the torrent is added through the API with an empty download
/// directory; checkpoints every second.
/// Check: the daemon reaches `seeding` with identical files; after SIGKILL
/// and a restart the torrent is seeding with no piece rehashed.
#[test]
fn daemon_downloads_checkpoints_and_survives_sigkill() {
    let payload = Payload::multi_file("multi", 18);
    let tracker = payload.tracker();
    let torrent = payload.torrent_http(&tracker);
    let _seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, Some(&tracker));
    let dir = tempfile::tempdir().unwrap();
    let torrents = torrent.parent().unwrap();
    let config = write_config_roots(
        dir.path(),
        &[dir.path(), torrents],
        "trackers = true\nresume_save_interval_secs = 1\n[limits]\nfile_idle_close_secs = 1\n",
    );
    let state = dir.path().join("state");
    let mut daemon = Daemon::start(&config, &state, &dir.path().join("daemon.log"));
    let body = format!("{{\"path\": \"{}\"}}", torrent.display());
    let (code, reply) =
        daemon.request("POST", "/api/v1/torrents", "application/json", body.as_bytes());
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&reply));
    let mut view = serde_json::Value::Null;
    let done = helpers::wait_until(DOWNLOAD_LIMIT, || {
        view = daemon.get_json(&format!("/api/v1/torrents/{}", payload.info_hash));
        view["state"] == "seeding"
    });
    assert!(done, "{view}\n{}", daemon.log());
    assert!(view["downloaded"].as_u64().unwrap() > 0, "{view}");
    helpers::assert_same_tree(&payload.save_path, &dir.path().join("data"));

    // Wait for a checkpoint to write the complete state, then SIGKILL.
    let resume = state.join(format!("{}.resume", payload.info_hash));
    let metainfo = ringbit::metainfo::Metainfo::from_file(&torrent).unwrap();
    let (piece_count, files) = (metainfo.info.piece_count(), metainfo.info.files.len());
    let saved = helpers::wait_until(Duration::from_secs(20), || {
        std::fs::read(&resume).is_ok_and(|bytes| {
            ringbit::resume::decode(&bytes, metainfo.info_hash, piece_count, files)
                .is_ok_and(|s| s.have.is_full())
        })
    });
    assert!(saved, "no complete checkpoint written\n{}", daemon.log());
    // Written files stay open until a flush made them durable, then close
    // once idle: after the checkpoint none is open.
    let data = dir.path().join("data");
    let pid = daemon.guard.child.id();
    let closed = helpers::wait_until(IDLE_CLOSE_LIMIT, || fds_under(pid, &data) == 0);
    assert!(closed, "{} data files still open\n{}", fds_under(pid, &data), daemon.log());
    daemon.guard.signal(libc::SIGKILL);
    daemon.guard.wait_timeout(STOP_LIMIT).expect("SIGKILL ends it");

    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon-2.log"));
    let status = daemon.wait_seeding(1);
    assert_eq!(status["startup"]["rechecked_pieces"], 0, "{status}");
    daemon.stop();
}

/// Goal: a seed box holds an fd for a data file only while the file is in
/// use (pwrite backend), so thousands of idle torrents do not exhaust
/// RLIMIT_NOFILE.
/// Setup: the daemon with `file_idle_close_secs = 1` seeds the 8 MiB
/// multi-file payload in place (added through the API, checked at add); a
/// libtorrent leecher downloads it from the daemon alone.
/// Check: seeding with no data file open; files open while the leecher is
/// served (reopened on demand) and the download is byte-identical; after the
/// leecher leaves, no data file is open again (bounded wait).
#[test]
fn daemon_opens_data_files_only_while_serving_them() {
    let payload = Payload::multi_file("multi", 18);
    let torrent = payload.torrent(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_roots(
        dir.path(),
        &[dir.path(), torrent.parent().unwrap()],
        "trackers = false\n[limits]\nfile_idle_close_secs = 1\n",
    );
    let state = dir.path().join("state");
    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon.log"));
    let body = format!(
        "{{\"path\": \"{}\", \"download_dir\": \"{}\"}}",
        torrent.display(),
        payload.save_path.display()
    );
    let (code, reply) =
        daemon.request("POST", "/api/v1/torrents", "application/json", body.as_bytes());
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&reply));
    let status = daemon.wait_seeding(1);
    let pid = daemon.guard.child.id();
    let data = &payload.save_path;
    assert_eq!(fds_under(pid, data), 0, "open creates and checks, then closes");

    let port = status["listen_port"].as_u64().unwrap() as u16;
    let out = tempfile::tempdir().unwrap();
    let mut leecher = Leecher::start(
        PeerKind::Libtorrent,
        &torrent,
        out.path(),
        &[SocketAddr::from(([127, 0, 0, 1], port))],
        None,
    );
    // Watch the daemon's fds while it serves: a file stays open at least a
    // second after its last read, so a 10 ms poll cannot miss it.
    let done = std::sync::atomic::AtomicBool::new(false);
    let most_open = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(fds_under(pid, data));
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        });
        let result = leecher.wait_complete(DOWNLOAD_LIMIT);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        result.unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
        watcher.join().unwrap()
    });
    leecher.assert_same_as(data);
    assert!(most_open > 0, "no data file was ever open while serving");
    drop(leecher);
    let closed = helpers::wait_until(IDLE_CLOSE_LIMIT, || fds_under(pid, data) == 0);
    assert!(closed, "{} data files still open\n{}", fds_under(pid, data), daemon.log());
    daemon.stop();
}

/// Goal: the daemon takes magnet links (issue 12): as the raw body of
/// `POST /api/v1/torrents` and as a `.magnet` file in the watch directory; it
/// fetches each one's metadata (BEP 9) from the link's `x.pe` peer, saves the
/// .torrent beside the resume state and downloads the data.
/// Setup: two single-file payloads, each seeded by its own libtorrent; no
/// tracker.
/// Check: the API answers 201 with the link's info hash; both torrents end up
/// seeding with byte-identical data, and both .torrent files are saved.
#[test]
fn magnet_links_by_api_and_watch_dir_are_fetched_and_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "trackers = false\n");
    let state = dir.path().join("state");
    let payloads = [
        Payload::single_file("by-api.bin", 1024 * 1024 + 7, 18),
        Payload::single_file("by-watch.bin", 768 * 1024 + 3, 18),
    ];
    let seeders: Vec<Seeder> = payloads
        .iter()
        .map(|p| Seeder::start(PeerKind::Libtorrent, &p.torrent(&[]), &p.save_path, None))
        .collect();
    let links: Vec<String> = payloads
        .iter()
        .zip(&seeders)
        .map(|(p, s)| {
            format!("magnet:?xt=urn:btih:{}&dn={}&x.pe={}", p.info_hash, p.name, s.addr())
        })
        .collect();
    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon.log"));
    let (code, body) =
        daemon.request("POST", "/api/v1/torrents", "application/x-bittorrent", links[0].as_bytes());
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["info_hash"], payloads[0].info_hash);
    std::fs::write(dir.path().join("watch/b.magnet"), &links[1]).unwrap();
    let mut last = serde_json::Value::Null;
    let both = helpers::wait_until(DOWNLOAD_LIMIT, || {
        last = daemon.status();
        last["by_state"]["seeding"] == 2
    });
    assert!(both, "not both seeding: {last}\n{}", daemon.log());
    for p in &payloads {
        helpers::assert_same_tree(&p.save_path, &dir.path().join("data"));
        assert!(state.join(format!("{}.torrent", p.info_hash)).exists());
    }
    daemon.stop();
}

/// Goal: the daemon logs a failed flush, shows it in the torrent's `error`
/// field, counts it in `/metrics`, and its resume state claims none of the
/// pieces the failed flush may have lost (issue 11, section 4).
/// Setup: the daemon's download dir on `durability::FailFs` (failing: writes
/// dropped, fsync EIO; no fallocate, so `allocation = "sparse"`), checkpoints
/// every second; a libtorrent seeder of 8 MiB dials it once the torrent is
/// added by upload.
/// Check: the torrent goes to state `error` with "flush failed" in its
/// error; `ringbit_storage_flush_failures_total` >= 1 and `flush_failures`
/// in the status agree; the log has "checkpoint failed"; the resume file
/// claims no piece; failfs counted failed fsyncs; the daemon stops cleanly.
#[test]
fn a_failed_checkpoint_stops_the_torrent_and_is_reported() {
    let payload = Payload::single_file("daemon-durable.bin", 8 << 20, 18);
    let torrent = payload.torrent(&[]);
    let mut seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let dir = tempfile::tempdir().unwrap();
    let fs = crate::durability::FailFs::mount(
        &dir.path().join("backing"),
        &dir.path().join("mnt"),
        &dir.path().join("failing"),
    );
    fs.set_failing(true);
    let port = helpers::free_port();
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\ndownload_dir = \"{}\"\nlisten_port = {port}\n\
             bind = [\"127.0.0.1\"]\napi_listen = \"127.0.0.1:0\"\nshards = 1\n\
             trackers = false\nallocation = \"sparse\"\nresume_save_interval_secs = 1\n",
            fs.mountpoint.join("data").display()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let daemon = Daemon::start(&config, &state, &dir.path().join("daemon.log"));
    let upload = std::fs::read(&torrent).unwrap();
    let (code, body) =
        daemon.request("POST", "/api/v1/torrents", "application/x-bittorrent", &upload);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    seeder.connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();

    let path = format!("/api/v1/torrents/{}", payload.info_hash);
    let mut view = serde_json::Value::Null;
    let failed = helpers::wait_until(DOWNLOAD_LIMIT, || {
        view = daemon.get_json(&path);
        view["state"] == "error"
    });
    assert!(failed, "no error state: {view}\n{}", daemon.log());
    let error = view["error"].as_str().unwrap_or_default();
    assert!(error.contains("flush failed"), "{view}");
    assert!(fs.failed_syncs() >= 1, "failfs saw no fsync:\n{}", fs.log());
    let metrics = String::from_utf8(daemon.request("GET", "/metrics", "", b"").1).unwrap();
    let counted = metric(&metrics, "ringbit_storage_flush_failures_total", "").unwrap_or(0.0);
    assert!(counted >= 1.0, "{metrics}");
    assert_eq!(daemon.status()["flush_failures"].as_f64(), Some(counted));
    assert!(daemon.log().contains("checkpoint failed"), "{}", daemon.log());
    let bytes = std::fs::read(state.join(format!("{}.resume", payload.info_hash))).unwrap();
    let info = ringbit::metainfo::Metainfo::from_file(&torrent).unwrap();
    let resume =
        ringbit::resume::decode(&bytes, info.info_hash, info.info.piece_count(), 1).unwrap();
    assert_eq!(resume.have.count(), 0, "resume state claims pieces a failed flush may have lost");
    daemon.stop();
}
