//! Trackers: `ringbit announce` against a real opentracker (HTTP and UDP) and
//! against in-test fake trackers that misbehave; the tracker subsystem
//! (tiers fall-through, peers reaching the shard's sink, stopped on removal
//! and shutdown) at library level.
//!
//! Fake trackers are std threads on 127.0.0.1 ephemeral ports; every loop in
//! them and in the tests is bounded by a deadline.

use crate::helpers::{free_port, require_tool, ringbit, run_bounded, wait_until, Opentracker};
use ringbit::metainfo::{InfoHash, Metainfo};
use ringbit::net::tracker_udp::UdpRetryConfig;
use ringbit::net::trackers::{
    generate_peer_id, PeerSink, TorrentCounters, TorrentEvent, TrackerConfig, TrackerHandle,
};
use ringbit::tracker::schedule::TrackerOutcome;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any fake tracker thread lives.
const FAKE_LIFETIME: Duration = Duration::from_secs(60);
/// Bound on one `ringbit announce` run.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn random_info_hash() -> InfoHash {
    InfoHash(rand::random())
}

fn magnet(info_hash: &InfoHash, trackers: &[String]) -> String {
    let mut uri = format!("magnet:?xt=urn:btih:{}", info_hash.to_hex());
    for t in trackers {
        uri.push_str("&tr=");
        uri.extend(percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC));
    }
    uri
}

/// Runs `ringbit announce --json` and returns (exit success, parsed JSON).
fn announce_json(target: &str, extra: &[&str]) -> (bool, serde_json::Value) {
    let mut cmd = ringbit();
    cmd.args(["announce", "--json", target]).args(extra);
    let out = run_bounded(&mut cmd, RUN_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "announce output is not JSON ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json)
}

fn result_for<'a>(json: &'a serde_json::Value, url: &str) -> &'a serde_json::Value {
    json["trackers"]
        .as_array()
        .expect("trackers array")
        .iter()
        .find(|t| t["url"] == url)
        .unwrap_or_else(|| panic!("no result for {url} in {json:#}"))
}

fn peers_of(result: &serde_json::Value) -> Vec<String> {
    result["peers"].as_array().expect("peers").iter().map(|p| p.as_str().unwrap().into()).collect()
}

fn error_of(result: &serde_json::Value) -> String {
    assert_eq!(result["ok"], false, "expected an error: {result:#}");
    result["error"].as_str().expect("error text").to_string()
}

// ---------------------------------------------------------------------------
// Fake trackers

/// What a fake HTTP tracker answers.
#[derive(Clone)]
enum HttpBehavior {
    /// Status code and body.
    Reply(u16, Vec<u8>),
    /// 302 to the same path: a redirect loop.
    RedirectLoop,
}

struct FakeHttp {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHttp {
    fn start(behavior: HttpBehavior) -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (requests2, stop2) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + FAKE_LIFETIME;
            while Instant::now() < deadline && !stop2.load(Ordering::Relaxed) {
                let (mut stream, _) = match listener.accept() {
                    Ok(s) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                stream.set_nonblocking(false).unwrap();
                // A TLS ClientHello never ends in a blank line: give up on it soon.
                stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut byte) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&byte[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                requests2.lock().unwrap().push(path.clone());
                let response = match &behavior {
                    HttpBehavior::Reply(status, body) => {
                        let mut r = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    HttpBehavior::RedirectLoop => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                };
                let _ = stream.write_all(&response);
            }
        });
        FakeHttp { port, requests, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a fake UDP tracker does.
#[derive(Clone, Copy, PartialEq)]
enum UdpBehavior {
    /// Never answers.
    Silent,
    /// Answers connect, then an announce reply cut to 13 bytes.
    Truncated,
    /// Answers every request with another transaction id.
    WrongTransactionId,
    /// Answers connect, then a BEP 15 error.
    Error,
    /// Answers connect and announce; announce replies carry two IPv6 peers
    /// ([::2]:7000, [::3]:7001) when bound on ::1, else two IPv4 ones.
    Good,
}

struct FakeUdp {
    port: u16,
    datagrams: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeUdp {
    fn start(behavior: UdpBehavior) -> FakeUdp {
        FakeUdp::start_on("127.0.0.1:0", behavior)
    }

    fn start_on(bind: &str, behavior: UdpBehavior) -> FakeUdp {
        let socket = UdpSocket::bind(bind).unwrap();
        let v6 = socket.local_addr().unwrap().is_ipv6();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (datagrams2, stop2) = (datagrams.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + FAKE_LIFETIME;
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline && !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let packet = buf[..n].to_vec();
                datagrams2.lock().unwrap().push(packet.clone());
                if n < 16 {
                    continue;
                }
                let action = u32::from_be_bytes(packet[8..12].try_into().unwrap());
                let mut txid = u32::from_be_bytes(packet[12..16].try_into().unwrap());
                let mut reply = Vec::new();
                match (behavior, action) {
                    (UdpBehavior::Silent, _) => continue,
                    (UdpBehavior::WrongTransactionId, _) => {
                        txid = txid.wrapping_add(1);
                        reply.extend_from_slice(&0u32.to_be_bytes());
                        reply.extend_from_slice(&txid.to_be_bytes());
                        reply.extend_from_slice(&7u64.to_be_bytes());
                    }
                    (_, 0) => {
                        reply.extend_from_slice(&0u32.to_be_bytes());
                        reply.extend_from_slice(&txid.to_be_bytes());
                        reply.extend_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
                    }
                    (UdpBehavior::Truncated, _) => {
                        reply.extend_from_slice(&1u32.to_be_bytes());
                        reply.extend_from_slice(&txid.to_be_bytes());
                        reply.extend_from_slice(&[0, 0, 7, 8, 0]);
                    }
                    (UdpBehavior::Error, _) => {
                        reply.extend_from_slice(&3u32.to_be_bytes());
                        reply.extend_from_slice(&txid.to_be_bytes());
                        reply.extend_from_slice(b"fake tracker says no");
                    }
                    (UdpBehavior::Good, _) => {
                        reply.extend_from_slice(&1u32.to_be_bytes());
                        reply.extend_from_slice(&txid.to_be_bytes());
                        for n in [1800u32, 1, 1] {
                            reply.extend_from_slice(&n.to_be_bytes());
                        }
                        for (last, port) in [(2u8, 7000u16), (3, 7001)] {
                            if v6 {
                                let mut ip = [0u8; 16];
                                ip[15] = last;
                                reply.extend_from_slice(&ip);
                            } else {
                                reply.extend_from_slice(&[10, 0, 0, last]);
                            }
                            reply.extend_from_slice(&port.to_be_bytes());
                        }
                    }
                }
                let _ = socket.send_to(&reply, from);
            }
        });
        FakeUdp { port, datagrams, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.port)
    }

    fn datagrams(&self) -> Vec<Vec<u8>> {
        self.datagrams.lock().unwrap().clone()
    }

    fn datagram_count(&self) -> usize {
        self.datagrams.lock().unwrap().len()
    }
}

impl Drop for FakeUdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn compact_reply(interval: u32, peers: &[SocketAddr]) -> Vec<u8> {
    let mut compact = Vec::new();
    for p in peers {
        let SocketAddr::V4(v4) = p else { panic!("v4 only") };
        compact.extend_from_slice(&v4.ip().octets());
        compact.extend_from_slice(&v4.port().to_be_bytes());
    }
    let mut body =
        format!("d8:completei1e10:incompletei2e8:intervali{interval}e5:peers{}:", compact.len())
            .into_bytes();
    body.extend_from_slice(&compact);
    body.push(b'e');
    body
}

// ---------------------------------------------------------------------------
// Against opentracker

/// opentracker with `info_hash` whitelisted, once it really serves it: it
/// accepts connections before its whitelist is loaded and before its UDP
/// socket is bound. Probed with announces (then `stopped`, so the swarm stays
/// empty), a bounded number of times.
fn ready_opentracker(info_hash: &InfoHash) -> Opentracker {
    let tracker = Opentracker::start(&[info_hash.to_hex()]);
    let probe = magnet(info_hash, &[tracker.http_announce(), tracker.udp_announce()]);
    let port = free_port().to_string();
    let mut last = serde_json::Value::Null;
    let ready = wait_until(Duration::from_secs(15), || {
        let (_, json) = announce_json(&probe, &["--port", &port, "--timeout-secs", "2"]);
        let all_ok = json["trackers"].as_array().is_some_and(|t| t.iter().all(|r| r["ok"] == true));
        last = json;
        all_ok
    });
    assert!(ready, "opentracker never served the torrent: {last:#}");
    tracker
}

/// Goal: two announces for one torrent from different ports see each other
/// through a real tracker, and `stopped` really removes us.
/// Setup: opentracker with the torrent whitelisted; run A with `--no-stopped`,
/// then B (with `--scrape`), then C. Check: B lists A's port and its scrape
/// counts both; C lists A but not B (B announced `stopped`).
fn two_announces_see_each_other(url_of: impl Fn(&Opentracker) -> String) {
    let info_hash = random_info_hash();
    let tracker = ready_opentracker(&info_hash);
    let url = url_of(&tracker);
    let target = magnet(&info_hash, std::slice::from_ref(&url));
    let (a, b, c) = (free_port(), free_port(), free_port());
    let (ok, first) = announce_json(&target, &["--port", &a.to_string(), "--no-stopped"]);
    assert!(ok, "{first:#}");
    assert_eq!(result_for(&first, &url)["ok"], true);

    let (ok, second) = announce_json(&target, &["--port", &b.to_string(), "--scrape"]);
    assert!(ok, "{second:#}");
    let seen = peers_of(result_for(&second, &url));
    assert!(seen.contains(&format!("127.0.0.1:{a}")), "B should see A: {second:#}");
    assert!(!seen.contains(&format!("127.0.0.1:{b}")), "our own address is filtered: {second:#}");
    assert!(result_for(&second, &url)["leechers"].as_u64().unwrap() >= 2);
    // The scrape (after B's announce, before its stopped) counts A and B.
    let scrape = &result_for(&second, &url)["scrape"];
    assert!(scrape["leechers"].as_u64().is_some_and(|n| n >= 2), "{second:#}");

    let (ok, third) = announce_json(&target, &["--port", &c.to_string()]);
    assert!(ok, "{third:#}");
    let seen = peers_of(result_for(&third, &url));
    assert!(seen.contains(&format!("127.0.0.1:{a}")), "C should see A: {third:#}");
    assert!(!seen.contains(&format!("127.0.0.1:{b}")), "B announced stopped: {third:#}");
}

#[test]
fn opentracker_http_announces_see_each_other() {
    two_announces_see_each_other(|t| t.http_announce());
}

#[test]
fn opentracker_udp_announces_see_each_other() {
    // The URL's path goes out as a BEP 41 option, which opentracker must accept.
    two_announces_see_each_other(|t| format!("udp://127.0.0.1:{}/announce?k=v", t.port));
}

/// Goal: a .torrent with BEP 12 tiers is read and every tracker announced to.
/// Setup: mktorrent with an opentracker HTTP tier and a UDP tier. Check:
/// both answer, text output names them, exit 0.
#[test]
fn announce_reads_a_torrent_file_with_tiers() {
    let mktorrent = require_tool("mktorrent");
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::write_payload(dir.path(), &[("payload.bin", 100_000)]);
    let torrent = dir.path().join("t.torrent");
    // The tracker port is only known after the info hash, which does not
    // depend on the announce URLs: make the torrent twice.
    let make = |http: &str, udp: &str| {
        let _ = std::fs::remove_file(&torrent);
        let out = Command::new(&mktorrent)
            .args(["-d", "-l", "15", "-a", http, "-a", udp, "-o"])
            .arg(&torrent)
            .arg(dir.path().join("payload.bin"))
            .output()
            .unwrap();
        assert!(out.status.success(), "mktorrent: {}", String::from_utf8_lossy(&out.stderr));
    };
    make("http://127.0.0.1:1/announce", "udp://127.0.0.1:1");
    let info_hash = Metainfo::from_file(&torrent).unwrap().info_hash;
    let tracker = ready_opentracker(&info_hash);
    make(&tracker.http_announce(), &tracker.udp_announce());
    let meta = Metainfo::from_file(&torrent).unwrap();
    assert_eq!(meta.tracker_tiers().len(), 2, "{:?}", meta.tracker_tiers());

    let mut cmd = ringbit();
    cmd.arg("announce").arg(&torrent).args(["--port", &free_port().to_string()]);
    let out = run_bounded(&mut cmd, RUN_LIMIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&info_hash.to_hex()), "{text}");
    assert!(text.contains(&format!("{} (tier 0)", tracker.http_announce())), "{text}");
    assert!(text.contains(&format!("{} (tier 1)", tracker.udp_announce())), "{text}");
    assert_eq!(text.matches("  ok: ").count(), 2, "{text}");
}

// ---------------------------------------------------------------------------
// Against misbehaving fakes: clear per-tracker errors, nothing panics.

const SHORT_UDP: [&str; 4] = ["--udp-timeout-ms", "100", "--udp-retries", "2"];

/// Goal: every broken tracker yields its own clear error while a good one
/// still answers. Setup: one magnet listing nine broken fakes and a real
/// opentracker. Check: exit 0, each error names its cause, opentracker ok.
#[test]
fn broken_trackers_give_clear_errors_and_the_good_one_answers() {
    let info_hash = random_info_hash();
    let good = ready_opentracker(&info_hash);
    let failure = FakeHttp::start(HttpBehavior::Reply(
        200,
        b"d14:failure reason20:you are not welcome!e".to_vec(),
    ));
    let garbage = FakeHttp::start(HttpBehavior::Reply(200, b"<html>hello</html>".to_vec()));
    let status500 = FakeHttp::start(HttpBehavior::Reply(500, b"oops".to_vec()));
    let redirect = FakeHttp::start(HttpBehavior::RedirectLoop);
    let truncated = FakeUdp::start(UdpBehavior::Truncated);
    let wrong_txid = FakeUdp::start(UdpBehavior::WrongTransactionId);
    let silent = FakeUdp::start(UdpBehavior::Silent);
    let error = FakeUdp::start(UdpBehavior::Error);
    // HTTPS to a plain-HTTP server: the rustls handshake fails cleanly.
    let plain = FakeHttp::start(HttpBehavior::Reply(200, compact_reply(60, &[])));
    let https = format!("https://127.0.0.1:{}/announce", plain.port);
    let urls = vec![
        https.clone(),
        failure.url(),
        garbage.url(),
        status500.url(),
        redirect.url(),
        truncated.url(),
        wrong_txid.url(),
        silent.url(),
        error.url(),
        good.http_announce(),
    ];
    let mut extra = vec!["--port", "7001"];
    extra.extend(SHORT_UDP);
    let (ok, json) = announce_json(&magnet(&info_hash, &urls), &extra);
    assert!(ok, "one tracker answered: {json:#}");
    assert_eq!(result_for(&json, &good.http_announce())["ok"], true, "{json:#}");

    let e = error_of(result_for(&json, &failure.url()));
    assert_eq!(e, "tracker failure: you are not welcome!");
    let e = error_of(result_for(&json, &garbage.url()));
    assert!(e.starts_with("reply is not bencode"), "{e}");
    let e = error_of(result_for(&json, &status500.url()));
    assert_eq!(e, "HTTP status 500: Internal Server Error");
    let e = error_of(result_for(&json, &redirect.url()));
    assert!(e.contains("too many redirects"), "{e}");
    assert_eq!(redirect.requests().len(), 6, "the first request and 5 redirects");
    let e = error_of(result_for(&json, &truncated.url()));
    assert!(e.contains("truncated UDP tracker reply: 13 bytes"), "{e}");
    let e = error_of(result_for(&json, &wrong_txid.url()));
    assert!(e.contains("no reply after 3 sends") && e.contains("wrong transaction id"), "{e}");
    let e = error_of(result_for(&json, &silent.url()));
    assert!(e.starts_with("no reply after 3 sends over 700 ms"), "{e}");
    // 100 + 200 + 400 ms: three connect attempts, then it gave up.
    assert_eq!(silent.datagram_count(), 3);
    let e = error_of(result_for(&json, &error.url()));
    assert_eq!(e, "tracker error: fake tracker says no");
    let e = error_of(result_for(&json, &https));
    assert!(e.starts_with("HTTP request failed"), "{e}");
}

/// Goal: exit status 1 when no tracker answers, and the HTTP announce carries
/// the BEP 3 parameters. Setup: one fake that refuses. Check: exit 1, the
/// request's query.
#[test]
fn announce_fails_when_no_tracker_answers() {
    let info_hash = InfoHash([0x5a; 20]);
    let refusing = FakeHttp::start(HttpBehavior::Reply(200, b"d14:failure reason2:noe".to_vec()));
    let (ok, json) = announce_json(
        &magnet(&info_hash, &[refusing.url()]),
        &["--port", "6999", "--numwant", "7"],
    );
    assert!(!ok, "{json:#}");
    assert_eq!(error_of(result_for(&json, &refusing.url())), "tracker failure: no");
    let requests = refusing.requests();
    assert_eq!(requests.len(), 1, "no stopped after a failure: {requests:?}");
    let query = &requests[0];
    for part in [
        "info_hash=ZZZZZZZZZZZZZZZZZZZZ",
        "peer_id=-RB0100-",
        "port=6999",
        "compact=1",
        "event=started",
        "numwant=7",
        "left=16384",
    ] {
        assert!(query.contains(part), "{part} missing from {query}");
    }
}

// ---------------------------------------------------------------------------
// The subsystem at library level

fn test_config() -> TrackerConfig {
    let mut config = TrackerConfig::new(generate_peer_id());
    config.udp_retry = UdpRetryConfig { base_timeout_ms: 100, max_retries: 1 };
    config.http_timeout_ms = 5_000;
    config.announce_timeout_ms = 5_000;
    config.stop_timeout_ms = 2_000;
    // Let a reannounce go out at once.
    config.schedule.min_interval_floor_secs = 0;
    config.shuffle_seed = 1;
    config
}

/// Goal: BEP 12 fall-through inside the subsystem, peers delivered to the
/// owning shard's sink without duplicates or our own address, `completed`
/// and re-announce reach the tracker, `stopped` on removal.
/// Setup: tier 0 = HTTP 500 + silent UDP, tier 1 = garbage, tier 2 = a good
/// fake. Two shards' sinks. Check: status shows each failure and the good
/// answer; the sink gets exactly the two foreign peers once.
#[test]
fn subsystem_falls_through_tiers_and_feeds_the_shard() {
    let listen_port = 7100;
    let bad500 = FakeHttp::start(HttpBehavior::Reply(500, Vec::new()));
    let silent = FakeUdp::start(UdpBehavior::Silent);
    let garbage = FakeHttp::start(HttpBehavior::Reply(200, b"garbage".to_vec()));
    let peers: Vec<SocketAddr> = vec![
        format!("127.0.0.1:{listen_port}").parse().unwrap(),
        "10.0.0.1:6881".parse().unwrap(),
        "10.0.0.1:6881".parse().unwrap(),
        "10.0.0.2:6882".parse().unwrap(),
    ];
    let good = FakeHttp::start(HttpBehavior::Reply(200, compact_reply(1800, &peers)));

    let (sink0, mut rx0) = PeerSink::channel(16);
    let (sink1, mut rx1) = PeerSink::channel(16);
    let handle = TrackerHandle::start(test_config(), vec![sink0, sink1]).unwrap();
    let info_hash = random_info_hash();
    let counters = TorrentCounters::new(12345);
    let tiers = vec![vec![bad500.url(), silent.url()], vec![garbage.url()], vec![good.url()]];
    handle.add_torrent(info_hash, tiers, listen_port, counters.clone()).unwrap();

    let (mine, other) =
        if info_hash.shard(2) == 0 { (&mut rx0, &mut rx1) } else { (&mut rx1, &mut rx0) };
    let mut batch = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            batch = mine.try_recv().ok();
            batch.is_some()
        }),
        "no peers reached the shard; status: {:#?}",
        handle.status(&info_hash)
    );
    let batch = batch.unwrap();
    assert_eq!(batch.info_hash, info_hash);
    assert_eq!(batch.peers, vec![peers[1], peers[3]], "own address and duplicates filtered");
    assert!(other.try_recv().is_err(), "the other shard gets nothing");

    let status = handle.status(&info_hash);
    assert_eq!(status.len(), 4, "{status:#?}");
    let by_url = |url: &str| status.iter().find(|s| s.url == url).unwrap().clone();
    assert!(
        matches!(&by_url(&bad500.url()).last, Some(TrackerOutcome::Failed(e)) if e.contains("500")),
        "{status:#?}"
    );
    assert!(
        matches!(&by_url(&silent.url()).last, Some(TrackerOutcome::Failed(e)) if e.contains("no reply")),
        "{status:#?}"
    );
    assert!(
        matches!(&by_url(&garbage.url()).last, Some(TrackerOutcome::Failed(e)) if e.contains("bencode")),
        "{status:#?}"
    );
    let good_status = by_url(&good.url());
    assert_eq!(good_status.tier, 2);
    assert!(
        matches!(
            good_status.last,
            Some(TrackerOutcome::Answered {
                peers: 4,
                seeders: Some(1),
                leechers: Some(2),
                interval_secs: 1800,
                ..
            })
        ),
        "{good_status:#?}"
    );
    assert!(good_status.next_announce_at.is_some());
    let first = good.requests();
    assert_eq!(first.len(), 1);
    assert!(first[0].contains("event=started") && first[0].contains("left=12345"), "{first:?}");

    // Completed: announced at once, with the shard's counters. The failed
    // trackers are backing off, so the good one is asked directly.
    counters.left.store(0, Ordering::Relaxed);
    counters.downloaded.store(12345, Ordering::Relaxed);
    handle.event(info_hash, TorrentEvent::Completed).unwrap();
    assert!(wait_until(Duration::from_secs(10), || good.requests().len() >= 2));
    let second = &good.requests()[1];
    assert!(second.contains("event=completed") && second.contains("left=0"), "{second}");
    assert!(second.contains("downloaded=12345"), "{second}");

    // Re-announce: the same peers again are not delivered again.
    handle.reannounce(info_hash).unwrap();
    assert!(wait_until(Duration::from_secs(10), || good.requests().len() >= 3));
    assert!(!good.requests()[2].contains("event="), "a regular announce");
    std::thread::sleep(Duration::from_millis(200));
    assert!(mine.try_recv().is_err(), "duplicates are not delivered");

    // Removal announces stopped to the tracker that knew us, and only to it.
    handle.remove(info_hash).unwrap();
    assert!(wait_until(Duration::from_secs(10), || good.requests().len() >= 4));
    assert!(good.requests()[3].contains("event=stopped"), "{:?}", good.requests());
    assert!(handle.status(&info_hash).is_empty());
    assert_eq!(bad500.requests().len(), 1, "failed trackers get no stopped");
    handle.shutdown().unwrap();
    assert!(handle.add_torrent(info_hash, vec![], 1, TorrentCounters::new(0)).is_err());
}

/// Goal: shutdown announces `stopped` for every torrent, bounded in time,
/// even with a tracker that never answers. Setup: two torrents on one good
/// fake, a third on a silent UDP tracker. Check: both stopped announces
/// arrive; shutdown returns Ok.
#[test]
fn subsystem_shutdown_announces_stopped_for_all() {
    let good = FakeHttp::start(HttpBehavior::Reply(200, compact_reply(1800, &[])));
    let silent = FakeUdp::start(UdpBehavior::Silent);
    let (sink, _rx) = PeerSink::channel(4);
    let handle = TrackerHandle::start(test_config(), vec![sink]).unwrap();
    let (one, two, three) = (random_info_hash(), InfoHash([7; 20]), InfoHash([8; 20]));
    handle.add_torrent(one, vec![vec![good.url()]], 7200, TorrentCounters::new(1)).unwrap();
    handle.add_torrent(two, vec![vec![good.url()]], 7200, TorrentCounters::new(1)).unwrap();
    handle.add_torrent(three, vec![vec![silent.url()]], 7200, TorrentCounters::new(1)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || good.requests().len() >= 2));
    let clone = handle.clone();
    clone.shutdown().unwrap();
    let requests = good.requests();
    let stopped = requests.iter().filter(|r| r.contains("event=stopped")).count();
    assert_eq!(stopped, 2, "{requests:?}");
    assert!(handle.shutdown().is_ok(), "a second shutdown is a no-op");
}

/// Goal: a UDP tracker reached over IPv6 answers with 18-byte peers, the
/// connection id is reused within its minute, and the URL path goes out as a
/// BEP 41 option. Setup: a fake UDP tracker on [::1], one torrent, one
/// re-announce. Check: both IPv6 peers reach the sink; the tracker saw
/// connect, announce, announce; the announce ends with URLData "/announce".
#[test]
fn subsystem_udp_over_ipv6_reuses_the_connection_id() {
    let fake = FakeUdp::start_on("[::1]:0", UdpBehavior::Good);
    let url = format!("udp://[::1]:{}/announce", fake.port);
    let (sink, mut rx) = PeerSink::channel(4);
    let handle = TrackerHandle::start(test_config(), vec![sink]).unwrap();
    let info_hash = random_info_hash();
    handle.add_torrent(info_hash, vec![vec![url]], 7300, TorrentCounters::new(1)).unwrap();
    let mut batch = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            batch = rx.try_recv().ok();
            batch.is_some()
        }),
        "no peers; status: {:#?}",
        handle.status(&info_hash)
    );
    let expected: Vec<SocketAddr> =
        vec!["[::2]:7000".parse().unwrap(), "[::3]:7001".parse().unwrap()];
    assert_eq!(batch.unwrap().peers, expected);
    handle.reannounce(info_hash).unwrap();
    assert!(wait_until(Duration::from_secs(10), || fake.datagram_count() >= 3));
    handle.shutdown().unwrap();
    let actions: Vec<u32> =
        fake.datagrams().iter().map(|d| u32::from_be_bytes(d[8..12].try_into().unwrap())).collect();
    // connect, announce (started), announce (regular), announce (stopped)
    assert_eq!(actions, vec![0, 1, 1, 1], "one connect for every announce within a minute");
    let announce = &fake.datagrams()[1];
    assert_eq!(&announce[98..], b"\x02\x09/announce", "BEP 41 URLData");
    assert_eq!(u32::from_be_bytes(announce[80..84].try_into().unwrap()), 2, "event started");
}
