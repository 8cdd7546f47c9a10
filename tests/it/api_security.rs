//! The control API holds against the people who can reach it (issue 11 §1):
//! local users and other machines without the token, web pages open in the
//! operator's browser (cross-site forms, DNS rebinding), clients asking for
//! data outside the download roots, and slow clients.
//!
//! Each test runs the real `ringbit daemon` on loopback with ephemeral
//! ports, speaks raw HTTP/1.1 (so every header is the test's choice), and
//! compares a snapshot of the files on disk before and after: a refused
//! request changes nothing. Every wait is bounded.

use crate::daemon::{small_torrent, Daemon};
use crate::helpers;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One request's round trip on a loaded machine.
const HTTP_LIMIT: Duration = Duration::from_secs(20);
/// Largest reply read.
const REPLY_MAX: u64 = 1 << 20;
/// The config's `header_read_timeout_secs` in the slow-client test.
const HEADER_TIMEOUT_SECS: u64 = 3;
/// A torrent leaving `checking` (one small file) or a session expiring.
const STATE_LIMIT: Duration = Duration::from_secs(60);

/// A reply: status, head (lower-cased), body.
struct Reply {
    code: u16,
    head: String,
    body: String,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.body)
    }
}

/// Sends `method path` with exactly `headers` (plus Content-Length and
/// `Connection: close`) and `body`; reads the whole reply.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    try_send(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`send`], with connection errors as values.
fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_LIMIT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(HTTP_LIMIT)).unwrap();
    s.set_write_timeout(Some(HTTP_LIMIT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.take(REPLY_MAX).read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no reply head")?;
    let head = String::from_utf8_lossy(&reply[..end]).to_ascii_lowercase();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("no status code")?;
    Ok(Reply { code, head, body: String::from_utf8_lossy(&reply[end + 4..]).to_string() })
}

/// Every file under `dir`: size and SHA-1 of its content; symlinks by target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            let what = if kind.is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if kind.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                let bytes = std::fs::read(&path).unwrap();
                format!("{} {:02x?}", bytes.len(), ringbit::hash::sha1(&bytes))
            };
            out.insert(path, what);
        }
    }
    out
}

/// A daemon in `dir/box` (config, state, data, watch) with `extra` config
/// lines; its log is outside `dir/box`, so the snapshot sees only its files.
fn start(dir: &Path, extra: &str) -> (Daemon, PathBuf) {
    let root = dir.join("box");
    std::fs::create_dir_all(root.join("data")).unwrap();
    let config = root.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\ndownload_dir = \"data\"\nwatch_dir = \"watch\"\n\
             listen_port = {}\nbind = [\"127.0.0.1\"]\napi_listen = \"127.0.0.1:0\"\n\
             shards = 1\ntrackers = false\n{extra}",
            helpers::free_port()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, &root.join("state"), &dir.join("daemon.log"));
    (daemon, root)
}

fn host(daemon: &Daemon) -> String {
    daemon.api.to_string()
}

/// Goal: without the token or a live session nothing is read or changed,
/// and a browser cannot be used against the API: not by a cross-site form
/// (text/plain, form encodings, no content type), not under another Host
/// name (DNS rebinding), not with another site's Origin or Referer.
/// Setup: a daemon with a username and password and 2 s sessions; a
/// .torrent the attacker wants added.
/// Check: each attempt gets 401/403/415 with a message; the token, a right
/// login and a same-origin request work; a session stops working once
/// expired and after logout; the files on disk are the same as before.
#[test]
fn api_refuses_requests_without_credentials_or_from_other_sites() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, root) = start(
        dir.path(),
        "[api]\nusername = \"admin\"\npassword = \"correct horse\"\nsession_ttl_secs = 2\n",
    );
    daemon.wait_seeding(0);
    let addr = daemon.api;
    let host = host(&daemon);
    let token = format!("Bearer {}", daemon.token);
    let wrong = format!("Bearer {}", "0".repeat(64));
    let torrent =
        small_torrent("attack.bin", &helpers::payload_bytes(20_000, 7), "http://127.0.0.1:1/a");
    let token_file = root.join("state/api.token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is the owner's alone");
    let before = snapshot(&root);

    // No token, a wrong token, a malformed one: 401, for reads too.
    for auth in [None, Some(wrong.as_str()), Some("Bearer"), Some("Basic YWRtaW46eA==")] {
        let mut headers = vec![("Host", host.as_str())];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        for (method, path) in
            [("GET", "/api/v1/status"), ("GET", "/api/v1/torrents"), ("GET", "/metrics")]
        {
            let r = send(addr, method, path, &headers, b"");
            assert_eq!(r.code, 401, "{method} {path} with {auth:?}: {r:?}");
            assert!(r.body.contains("api.token"), "the refusal says how to authenticate: {r:?}");
        }
        let mut post = headers.clone();
        post.push(("Content-Type", "application/x-bittorrent"));
        let r = send(addr, "POST", "/api/v1/torrents", &post, &torrent);
        assert_eq!(r.code, 401, "{auth:?}: {r:?}");
        assert!(r.head.contains("www-authenticate: bearer"), "{}", r.head);
    }

    // A cross-site form POST (what a page can send without a CORS
    // preflight), without and even with credentials: never an add.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut headers = vec![("Host", host.as_str()), ("Origin", "http://attacker.example")];
        if let Some(t) = content_type {
            headers.push(("Content-Type", t));
        }
        let r = send(addr, "POST", "/api/v1/torrents", &headers, &torrent);
        assert!(matches!(r.code, 401 | 403), "{content_type:?}: {r:?}");
        // With the token and no Origin (not a browser): the type is refused.
        let mut headers = vec![("Host", host.as_str()), ("Authorization", token.as_str())];
        if let Some(t) = content_type {
            headers.push(("Content-Type", t));
        }
        let r = send(addr, "POST", "/api/v1/torrents", &headers, &torrent);
        assert_eq!(r.code, 415, "{content_type:?}: {r:?}");
    }

    // DNS rebinding: the attacker's name in Host, even with valid
    // credentials (a rebinding page cannot have them, but the check must
    // not depend on that). No Host at all is refused too.
    for bad_host in ["attacker.example", "attacker.example:80", "127.0.0.1.attacker.example"] {
        let headers = [("Host", bad_host), ("Authorization", token.as_str())];
        let r = send(addr, "GET", "/api/v1/status", &headers, b"");
        assert_eq!(r.code, 403, "{bad_host}: {r:?}");
        assert!(r.body.contains("DNS rebinding"), "{r:?}");
    }
    let r = send(addr, "GET", "/api/v1/status", &[("Authorization", token.as_str())], b"");
    assert_eq!(r.code, 403, "no Host: {r:?}");
    for name in ["localhost", "127.0.0.1"] {
        let h = format!("{name}:{}", addr.port());
        let r =
            send(addr, "GET", "/api/v1/status", &[("Host", &h), ("Authorization", &token)], b"");
        assert_eq!(r.code, 200, "{h}: {r:?}");
    }

    // Another site's Origin or Referer on a state-changing request: 403,
    // with credentials too. The API's own origin passes.
    let json = ("Content-Type", "application/json");
    let limits = br#"{"upload_rate": 1000}"#;
    for (name, value) in [
        ("Origin", "http://attacker.example"),
        ("Origin", "null"),
        ("Referer", "http://attacker.example/x.html"),
    ] {
        let headers =
            [("Host", host.as_str()), ("Authorization", token.as_str()), json, (name, value)];
        let r = send(addr, "POST", "/api/v1/limits", &headers, limits);
        assert_eq!(r.code, 403, "{name}: {value}: {r:?}");
    }

    // Login: wrong password, wrong user, not JSON: refused, no cookie.
    for body in [
        r#"{"username":"admin","password":"wrong"}"#,
        r#"{"username":"root","password":"correct horse"}"#,
    ] {
        let r = send(addr, "POST", "/api/v1/auth/login", &[("Host", &host), json], body.as_bytes());
        assert_eq!(r.code, 401, "{body}: {r:?}");
        assert!(!r.head.contains("set-cookie"), "{}", r.head);
    }
    let form = b"username=admin&password=correct+horse";
    let r = send(
        addr,
        "POST",
        "/api/v1/auth/login",
        &[("Host", &host), ("Content-Type", "application/x-www-form-urlencoded")],
        form,
    );
    assert_eq!(r.code, 415, "{r:?}");
    let cross = [("Host", host.as_str()), json, ("Origin", "http://attacker.example")];
    let r = send(
        addr,
        "POST",
        "/api/v1/auth/login",
        &cross,
        br#"{"username":"admin","password":"correct horse"}"#,
    );
    assert_eq!(r.code, 403, "login CSRF: {r:?}");

    // A right login gives an HttpOnly, SameSite=Strict cookie that works
    // for reads and for same-origin changes, and expires.
    let origin = format!("http://{host}");
    let own = [("Host", host.as_str()), json, ("Origin", origin.as_str())];
    let r = send(
        addr,
        "POST",
        "/api/v1/auth/login",
        &own,
        br#"{"username":"admin","password":"correct horse"}"#,
    );
    assert_eq!(r.code, 200, "{r:?}");
    let set_cookie =
        r.head.lines().find(|l| l.starts_with("set-cookie:")).expect("a cookie").to_string();
    assert!(
        set_cookie.contains("httponly") && set_cookie.contains("samesite=strict"),
        "{set_cookie}"
    );
    let pair = set_cookie["set-cookie:".len()..].trim().split(';').next().unwrap().to_string();
    let cookie = ("Cookie", pair.as_str());
    let r = send(addr, "GET", "/api/v1/status", &[("Host", &host), cookie], b"");
    assert_eq!(r.code, 200, "the session works: {r:?}");
    let r = send(
        addr,
        "POST",
        "/api/v1/limits",
        &[("Host", &host), cookie, json, ("Origin", &origin)],
        br#"{}"#,
    );
    assert_eq!(r.code, 200, "a same-origin change with the session: {r:?}");
    let r = send(
        addr,
        "POST",
        "/api/v1/limits",
        &[("Host", &host), cookie, json, ("Origin", "http://attacker.example")],
        limits,
    );
    assert_eq!(r.code, 403, "{r:?}");
    let expired = helpers::wait_until(STATE_LIMIT, || {
        send(addr, "GET", "/api/v1/status", &[("Host", &host), cookie], b"").code == 401
    });
    assert!(expired, "the 2 s session never expired");
    // A fresh session ends at logout.
    let r = send(
        addr,
        "POST",
        "/api/v1/auth/login",
        &own,
        br#"{"username":"admin","password":"correct horse"}"#,
    );
    let set_cookie =
        r.head.lines().find(|l| l.starts_with("set-cookie:")).expect("a cookie").to_string();
    let pair = set_cookie["set-cookie:".len()..].trim().split(';').next().unwrap().to_string();
    let r = send(
        addr,
        "POST",
        "/api/v1/auth/logout",
        &[("Host", &host), ("Cookie", &pair), ("Origin", &origin)],
        b"",
    );
    assert_eq!(r.code, 200, "{r:?}");
    let r = send(addr, "GET", "/api/v1/status", &[("Host", &host), ("Cookie", &pair)], b"");
    assert_eq!(r.code, 401, "after logout: {r:?}");

    // Nothing was added, nothing on disk changed, the process limits are
    // what the one allowed (empty) change left.
    let status = daemon.get_json("/api/v1/status");
    assert_eq!(status["torrents"], 0, "{status}");
    assert_eq!(status["upload_rate_limit"], 0, "{status}");
    assert_eq!(snapshot(&root), before);
    daemon.stop();
}

/// Goal: API clients put data and read .torrent files only under the
/// configured roots, however the path is spelled; a file ringbit did not
/// write is never cut or overwritten; data of the right size is adopted.
/// Setup: roots = `box/data`; beside it `outside/` holding a .torrent and a
/// file an attacker wants overwritten; `data/link` is a symlink to
/// `outside/`; `data/victim/` holds a file with the torrent's name, longer
/// than the torrent says; `data/good/` holds the right data.
/// Check: every download_dir outside (absolute, `..`, through the symlink,
/// a new directory below the symlink) and every .torrent path outside is
/// refused with a message naming the roots, and `outside/` is unchanged;
/// the torrent added over the longer file waits in `error` ("exists with
/// another size") and the file is byte-identical; the right data is
/// rechecked and seeds.
#[test]
fn api_keeps_data_under_the_roots_and_never_cuts_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let data = helpers::payload_bytes(40_000, 11);
    let torrent = small_torrent("payload.bin", &data, "http://127.0.0.1:1/a");
    let info_hash = ringbit::metainfo::Metainfo::from_bytes(&torrent).unwrap().info_hash.to_hex();
    std::fs::write(outside.join("x.torrent"), &torrent).unwrap();
    std::fs::write(outside.join("payload.bin"), b"precious bytes that are not the torrent's")
        .unwrap();
    let (daemon, root) = start(dir.path(), "");
    daemon.wait_seeding(0);
    let box_data = root.join("data");
    std::os::unix::fs::symlink(&outside, box_data.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("x.torrent"), box_data.join("x-link.torrent")).unwrap();
    let mut victim_bytes = data.clone();
    victim_bytes.extend_from_slice(b"-- and the operator's own bytes after it");
    std::fs::create_dir_all(box_data.join("victim")).unwrap();
    std::fs::write(box_data.join("victim/payload.bin"), &victim_bytes).unwrap();
    let outside_before = snapshot(&outside);
    let root_before = snapshot(&root);
    let bittorrent = "application/x-bittorrent";

    let refused_dirs = [
        outside.display().to_string(),
        format!("{}/../../outside", box_data.display()),
        format!("{}/link", box_data.display()),
        format!("{}/link/new", box_data.display()),
        "/etc".to_string(),
        "relative/dir".to_string(),
    ];
    for target in &refused_dirs {
        let query = format!("/api/v1/torrents?download_dir={}", urlencode(target));
        let (code, body) = daemon.request("POST", &query, bittorrent, &torrent);
        let body = String::from_utf8_lossy(&body);
        assert!(matches!(code, 400 | 403), "{target}: {code} {body}");
        assert!(
            body.contains("outside the allowed roots") || body.contains("not an absolute"),
            "{target}: {body}"
        );
        let json = format!(
            "{{\"path\": {:?}, \"download_dir\": {:?}}}",
            box_data.join("none.torrent").display().to_string(),
            target
        );
        let (code, _) =
            daemon.request("POST", "/api/v1/torrents", "application/json", json.as_bytes());
        assert!(matches!(code, 400 | 403), "{target}: {code}");
    }
    // .torrent files are read only under the roots or the watch dir.
    for path in [
        outside.join("x.torrent"),
        box_data.join("x-link.torrent"),
        box_data.join("../../outside/x.torrent"),
        PathBuf::from("/etc/passwd"),
    ] {
        let json = format!("{{\"path\": {:?}}}", path.display().to_string());
        let (code, body) =
            daemon.request("POST", "/api/v1/torrents", "application/json", json.as_bytes());
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 403, "{}: {body}", path.display());
        assert!(body.contains("outside the allowed roots"), "{body}");
    }
    assert_eq!(daemon.get_json("/api/v1/status")["torrents"], 0);
    assert_eq!(snapshot(&outside), outside_before, "nothing outside the roots changed");
    assert_eq!(snapshot(&root), root_before, "nothing inside changed either");

    // Over a longer file of the same name: added, waits in error, file intact.
    let victim = box_data.join("victim");
    let query =
        format!("/api/v1/torrents?download_dir={}", urlencode(&victim.display().to_string()));
    let (code, body) = daemon.request("POST", &query, bittorrent, &torrent);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let one = format!("/api/v1/torrents/{info_hash}");
    let mut view = serde_json::Value::Null;
    let failed = helpers::wait_until(STATE_LIMIT, || {
        view = daemon.get_json(&one);
        view["state"] == "error"
    });
    assert!(failed, "{view}\n{}", daemon.log());
    let error = view["error"].as_str().unwrap_or_default();
    assert!(error.contains("exists with another size"), "{error}");
    assert_eq!(std::fs::read(victim.join("payload.bin")).unwrap(), victim_bytes, "byte-identical");
    // Resuming does not get past it either.
    assert_eq!(daemon.request("POST", &format!("{one}/resume"), "", b"").0, 200);
    let failed_again = helpers::wait_until(STATE_LIMIT, || {
        view = daemon.get_json(&one);
        view["state"] == "error"
    });
    assert!(failed_again, "{view}");
    assert_eq!(std::fs::read(victim.join("payload.bin")).unwrap(), victim_bytes);
    assert_eq!(daemon.request("DELETE", &one, "", b"").0, 200);

    // The right data under the roots (through `..` that stays inside) is
    // rechecked and adopted: it seeds, unchanged.
    let good = box_data.join("good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(good.join("payload.bin"), &data).unwrap();
    let spelled = format!("{}/victim/../good", box_data.display());
    let query = format!("/api/v1/torrents?download_dir={}", urlencode(&spelled));
    let (code, body) = daemon.request("POST", &query, bittorrent, &torrent);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    daemon.wait_seeding(1);
    let view = daemon.get_json(&one);
    assert_eq!(view["rechecked_pieces"], 3, "{view}");
    assert_eq!(std::fs::read(good.join("payload.bin")).unwrap(), data);
    assert_eq!(snapshot(&outside), outside_before);
    daemon.stop();
}

/// Goal: slow clients hold only their own connection: a slow-loris client
/// (a request head sent a byte at a time, never finished) does not delay
/// another client, is cut off after `header_read_timeout_secs`, and so is
/// an idle connection; past `max_connections` a new connection is closed
/// at once.
/// Setup: a daemon with a 3 s header timeout and at most 24 connections;
/// 16 slow-loris connections trickling a byte every 200 ms.
/// Check: while all 16 are still open, another client's request is
/// answered; the 16 and an idle connection are closed by the server within
/// a bounded wait; 24 held connections make the 25th close unanswered, and
/// once they are gone requests are served again. Nothing on disk changes.
#[test]
fn slow_clients_do_not_delay_others() {
    let dir = tempfile::tempdir().unwrap();
    let extra =
        format!("[api]\nheader_read_timeout_secs = {HEADER_TIMEOUT_SECS}\nmax_connections = 24\n");
    let (daemon, root) = start(dir.path(), &extra);
    daemon.wait_seeding(0);
    let addr = daemon.api;
    let before = snapshot(&root);
    let slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let s = TcpStream::connect_timeout(&addr, HTTP_LIMIT).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let idle = TcpStream::connect_timeout(&addr, HTTP_LIMIT).unwrap();
    idle.set_nonblocking(true).unwrap();
    let partial = format!("GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
    let started = Instant::now();
    let mut sent = 0;
    // Trickle the head for a second: every connection has begun a request.
    while started.elapsed() < Duration::from_secs(1) {
        for mut s in &slow {
            let _ = s.write(&partial.as_bytes()[sent..sent + 1]);
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let asked = Instant::now();
    let reply = send(
        addr,
        "GET",
        "/api/v1/status",
        &[("Host", &addr.to_string()), ("Authorization", &format!("Bearer {}", daemon.token))],
        b"",
    );
    let answered_in = asked.elapsed();
    assert_eq!(reply.code, 200, "{reply:?}");
    let still_open = slow.iter().filter(|s| is_open(s)).count();
    assert_eq!(
        still_open, 16,
        "the other client was answered in {answered_in:?} while the slow clients were open"
    );
    eprintln!("another client answered in {answered_in:?} beside 16 slow-loris connections");
    // The server cuts them off (bounded: the timeout plus a wide margin).
    let cut = helpers::wait_until(Duration::from_secs(HEADER_TIMEOUT_SECS + 30), || {
        for mut s in &slow {
            let _ = s.write(b"x");
        }
        slow.iter().all(|s| !is_open(s)) && !is_open(&idle)
    });
    assert!(cut, "slow or idle connections still open after the header timeout\n{}", daemon.log());

    // The connection cap: 24 held, the 25th is closed without a reply.
    let held: Vec<TcpStream> =
        (0..24).map(|_| TcpStream::connect_timeout(&addr, HTTP_LIMIT).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra_conn = TcpStream::connect_timeout(&addr, HTTP_LIMIT).unwrap();
    extra_conn.set_read_timeout(Some(HTTP_LIMIT)).unwrap();
    let _ = extra_conn
        .write_all(format!("GET /api/v1/status HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    let mut buf = [0u8; 64];
    let n = extra_conn.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a connection past max_connections got a reply");
    drop(held);
    // Their slots come back as the server sees them close; until then a
    // new connection may still be closed unanswered.
    let bearer = format!("Bearer {}", daemon.token);
    let host = addr.to_string();
    let headers = [("Host", host.as_str()), ("Authorization", bearer.as_str())];
    let served = helpers::wait_until(Duration::from_secs(HEADER_TIMEOUT_SECS + 30), || {
        try_send(addr, "GET", "/api/v1/status", &headers, b"").is_ok_and(|r| r.code == 200)
    });
    assert!(served, "{}", daemon.log());
    assert_eq!(snapshot(&root), before);
    daemon.stop();
}

/// Goal: the API is never served beyond loopback without authentication.
/// Setup: `api_listen` on a non-loopback address (TEST-NET-1, never
/// assigned here, so nothing can be sent) with `[api] auth = false`.
/// Check: the daemon exits 1 and says why, naming the key.
#[test]
fn api_without_auth_beyond_loopback_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("daemon.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\ndownload_dir = \"data\"\napi_listen = \"192.0.2.1:0\"\n\
         trackers = false\n[api]\nauth = false\n",
    )
    .unwrap();
    let out = helpers::run_bounded(
        helpers::ringbit().arg("daemon").arg("--config").arg(&config),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("api.auth") && stderr.contains("without authentication"), "{stderr}");
    assert!(!dir.path().join("state").exists(), "refused before touching anything");
}

/// True while the peer has not closed `s` (a non-blocking read would block).
fn is_open(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// Percent-encodes a query value.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
