//! The wire codec and per-peer state machine against a real libtorrent, with
//! a minimal blocking test driver (std sockets) in place of the shard drivers.
//!
//! * `peer_downloads_from_a_libtorrent_seeder` — goal: our `Peer` speaks
//!   libtorrent's dialect (handshake, extension handshake, have-all,
//!   allowed-fast, unchoke, pipelined requests). Setup: libtorrent seeds a
//!   3 MiB + 1234 byte file in 256 KiB pieces; we dial it. Check: every block
//!   arrives, reassembled bytes equal the source, no unrequested bytes.
//! * `peer_downloads_from_an_aria2_seeder`, `..._a_transmission_seeder` —
//!   the same download against the other two clients' dialects (message
//!   order, fast/extension support, pipelining).
//! * `libtorrent_downloads_from_our_peer` — goal: our upload path (incoming
//!   handshake, have-all, unchoke, `piece` headers + data) is what libtorrent
//!   expects. Setup: we listen, a libtorrent leecher dials us. Check: the
//!   leecher completes (it verifies every piece's SHA1) and its file equals
//!   the source.

use crate::helpers::{free_port, lt_tool, payload_bytes, require_tool, wait_until, ChildGuard};
use ringbit::bitfield::Bitfield;
use ringbit::metainfo::InfoHash;
use ringbit::peer::{Event, Peer, PeerConfig, PeerSetup};
use ringbit::wire::{decode_handshake, BlockRequest, HandshakeDecoded, PeerId, BLOCK_LEN};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

const PIECE_LEN: u32 = 256 * 1024;
const TOTAL: usize = 3 * 1024 * 1024 + 1234;
/// Bound on each exchange; loopback moves 3 MiB in well under a second.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(60);

struct Torrent {
    dir: tempfile::TempDir,
    data: Vec<u8>,
    torrent: std::path::PathBuf,
    setup: PeerSetup,
}

fn make_torrent(seed: u64) -> Torrent {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data = payload_bytes(TOTAL, seed);
    std::fs::write(src.join("blob"), &data).unwrap();
    let torrent = dir.path().join("t.torrent");
    let out = lt_tool()
        .args(["create"])
        .arg(src.join("blob"))
        .arg(&torrent)
        .args(["--piece-length", &PIECE_LEN.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "lt_tool create: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let info_hash = InfoHash::from_hex(json["info_hash"].as_str().unwrap()).unwrap();
    let setup = PeerSetup {
        info_hash,
        our_peer_id: PeerId::ours(*b"wiretest0001"),
        piece_count: (TOTAL as u32).div_ceil(PIECE_LEN),
        piece_length: PIECE_LEN,
        total_length: TOTAL as u64,
        listen_port: None,
        peer_ip: None,
        metadata_size: None,
        dht_port: None,
    };
    Torrent { dir, data, torrent, setup }
}

/// One connection driven with blocking std sockets: write what the peer
/// queued, read what arrived, feed it, hand the events to `on_event`.
struct Conn {
    stream: TcpStream,
    peer: Peer,
    inbox: Vec<u8>,
    spare: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream, peer: Peer) -> Conn {
        stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream, peer, inbox: Vec::new(), spare: Vec::new() }
    }

    fn flush(&mut self) {
        self.peer.swap_outgoing(&mut self.spare);
        self.stream.write_all(&self.spare).unwrap();
    }

    /// One round: flush, read (up to 20 ms), handle. Returns the events with
    /// any block data copied out, or `None` once libtorrent closed the
    /// connection.
    fn round(&mut self) -> Option<Vec<(Event, Vec<u8>)>> {
        self.flush();
        let mut buf = vec![0u8; 256 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
        let now = Instant::now();
        let mut events = Vec::new();
        loop {
            let used = self.peer.handle_bytes(&self.inbox, now).expect("libtorrent broke no rule");
            while let Some(e) = self.peer.poll_event() {
                let data = match &e {
                    Event::Block { data, .. } => self.inbox[data.clone()].to_vec(),
                    _ => Vec::new(),
                };
                events.push((e, data));
            }
            self.inbox.drain(..used);
            if used == 0 {
                break;
            }
        }
        self.peer.tick(now).expect("connection alive");
        Some(events)
    }
}

fn all_blocks(setup: &PeerSetup) -> VecDeque<BlockRequest> {
    let mut blocks = VecDeque::new();
    let mut offset = 0u64;
    while offset < setup.total_length {
        let piece = (offset / u64::from(setup.piece_length)) as u32;
        let begin = (offset % u64::from(setup.piece_length)) as u32;
        let length = (setup.total_length - offset).min(u64::from(BLOCK_LEN)) as u32;
        let length = length.min(setup.piece_length - begin);
        blocks.push_back(BlockRequest { piece, begin, length });
        offset += u64::from(length);
    }
    blocks
}

fn first_line(child: &mut ChildGuard) -> serde_json::Value {
    let stdout = child.child.stdout.as_mut().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: {e}: {line:?}", child.name))
}

/// Dials the seeder at `port` until it answers our handshake (seeders
/// listen before their torrent is ready and hang up on handshakes for
/// torrents they do not have yet), downloads every block with the pipeline
/// the `Peer` asks for, and checks the bytes. Returns the connection for
/// client-specific checks.
fn download_from(port: u16, t: &Torrent, who: &str) -> Conn {
    let mut dialed = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
            let peer = Peer::outgoing(PeerConfig::default(), t.setup.clone(), Instant::now());
            let mut conn = Conn::new(stream, peer);
            let mut events = Vec::new();
            for _ in 0..50 {
                match conn.round() {
                    None => return false,
                    Some(e) => events.extend(e),
                }
                if conn.peer.is_active() {
                    dialed = Some((conn, events));
                    return true;
                }
            }
            false
        }),
        "{who} never answered our handshake"
    );
    let (mut conn, mut pending) = dialed.unwrap();

    let mut wanted = all_blocks(&t.setup);
    let block_count = wanted.len();
    let mut got = vec![0u8; TOTAL];
    let mut received = 0;
    let deadline = Instant::now() + EXCHANGE_LIMIT;
    while received < block_count {
        assert!(
            Instant::now() < deadline,
            "{who}: download incomplete: {received}/{block_count} blocks"
        );
        let mut events = std::mem::take(&mut pending);
        events.extend(
            conn.round().unwrap_or_else(|| panic!("{who} closed the connection mid-download")),
        );
        for (event, data) in events {
            let now = Instant::now();
            match event {
                Event::Handshake { .. } => {
                    conn.peer.send_bitfield(&Bitfield::new(t.setup.piece_count), now)
                }
                Event::Bitfield | Event::Have(_) => conn.peer.set_interested(true, now),
                Event::Block { piece, begin, .. } => {
                    let start = piece as usize * PIECE_LEN as usize + begin as usize;
                    got[start..start + data.len()].copy_from_slice(&data);
                    received += 1;
                }
                Event::RequestDropped(r) | Event::RequestTimedOut(r) => wanted.push_back(r),
                _ => {}
            }
        }
        let now = Instant::now();
        for _ in 0..conn.peer.request_slots() {
            let Some(&r) = wanted.front() else { break };
            if conn.peer.request(r, now).is_err() {
                break;
            }
            wanted.pop_front();
        }
    }
    assert!(got == t.data, "{who}: reassembled bytes differ from the source");
    assert!(conn.peer.pieces().is_full(), "{who} is a seeder");
    assert_eq!(conn.peer.stats().unrequested_bytes, 0);
    assert_eq!(conn.peer.stats().downloaded_bytes, TOTAL as u64);
    conn
}

#[test]
fn peer_downloads_from_a_libtorrent_seeder() {
    let t = make_torrent(11);
    let port = free_port();
    let mut seeder = ChildGuard::spawn(
        "libtorrent seeder",
        lt_tool()
            .arg("seed")
            .arg(&t.torrent)
            .arg(t.dir.path().join("src"))
            .args(["--port", &port.to_string(), "--timeout", "120"])
            .stdout(Stdio::piped()),
    );
    assert_eq!(first_line(&mut seeder)["listening"], port);
    let conn = download_from(port, &t, "libtorrent");
    let ext = conn.peer.extension_handshake().expect("libtorrent sends an extension handshake");
    assert!(ext.extension_id("ut_metadata").is_some(), "{ext:?}");
    assert!(conn.peer.supports_fast() && conn.peer.supports_extensions());
}

#[test]
fn peer_downloads_from_an_aria2_seeder() {
    let t = make_torrent(13);
    let port = free_port();
    let _seeder = ChildGuard::spawn(
        "aria2 seeder",
        std::process::Command::new(require_tool("aria2c"))
            .args(["--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false"])
            .args(["--enable-peer-exchange=false", "--interface=127.0.0.1", "--disable-ipv6=true"])
            .args(["--bt-seed-unverified=true", "--seed-ratio=0.0", "--quiet=true"])
            .arg(format!("--listen-port={port}"))
            .arg("-d")
            .arg(t.dir.path().join("src"))
            .arg(&t.torrent)
            .stdout(Stdio::null()),
    );
    let conn = download_from(port, &t, "aria2");
    assert!(conn.peer.supports_extensions(), "aria2 speaks BEP 10");
}

#[test]
fn peer_downloads_from_a_transmission_seeder() {
    let t = make_torrent(14);
    let port = free_port();
    let config = t.dir.path().join("transmission");
    std::fs::create_dir(&config).unwrap();
    // Plaintext preferred, nothing that reaches past loopback.
    std::fs::write(
        config.join("settings.json"),
        r#"{"dht-enabled": false, "lpd-enabled": false, "pex-enabled": false,
            "utp-enabled": false, "port-forwarding-enabled": false, "encryption": 0,
            "bind-address-ipv4": "127.0.0.1", "bind-address-ipv6": "::1"}"#,
    )
    .unwrap();
    let _seeder = ChildGuard::spawn(
        "transmission seeder",
        std::process::Command::new(require_tool("transmission-cli"))
            .arg("-g")
            .arg(&config)
            .arg("-w")
            .arg(t.dir.path().join("src"))
            .args(["-p", &port.to_string()])
            .arg(&t.torrent)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let conn = download_from(port, &t, "transmission");
    assert!(conn.peer.supports_fast() && conn.peer.supports_extensions());
}

#[test]
fn libtorrent_downloads_from_our_peer() {
    let t = make_torrent(12);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let our_port = listener.local_addr().unwrap().port();
    let dst = t.dir.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let mut leecher = ChildGuard::spawn(
        "libtorrent leecher",
        lt_tool()
            .arg("leech")
            .arg(&t.torrent)
            .arg(&dst)
            .args(["--port", &free_port().to_string(), "--timeout", "60"])
            .args(["--peer", &format!("127.0.0.1:{our_port}")])
            .stdout(Stdio::piped()),
    );
    listener.set_nonblocking(true).unwrap();
    let mut accepted = None;
    assert!(wait_until(Duration::from_secs(20), || {
        accepted = listener.accept().ok();
        accepted.is_some()
    }));
    let (mut stream, addr) = accepted.unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // What the listener does: read the handshake to route the connection.
    let mut hello = [0u8; 68];
    stream.read_exact(&mut hello).unwrap();
    let HandshakeDecoded::Done(hs) = decode_handshake(&hello).unwrap() else { unreachable!() };
    let setup = PeerSetup { peer_ip: Some(addr.ip()), ..t.setup.clone() };
    let peer = Peer::incoming(PeerConfig::default(), setup, hs, Instant::now()).unwrap();
    let mut conn = Conn::new(stream, peer);
    conn.peer.send_bitfield(&Bitfield::full(t.setup.piece_count), Instant::now());

    let deadline = Instant::now() + EXCHANGE_LIMIT;
    let mut served = 0u64;
    let status = loop {
        assert!(Instant::now() < deadline, "libtorrent did not finish; served {served} bytes");
        if let Some(status) = leecher.child.try_wait().unwrap() {
            break status;
        }
        let Some(events) = conn.round() else {
            // The leecher hung up (done, or it gave up): its exit says which.
            break leecher.wait_timeout(Duration::from_secs(30)).expect("leecher exits");
        };
        for (event, _) in events {
            if event == Event::Interested {
                conn.peer.unchoke(Instant::now());
            }
        }
        while let Some(r) = conn.peer.next_upload() {
            let start = r.piece as usize * PIECE_LEN as usize + r.begin as usize;
            let header = conn.peer.upload_header(r, Instant::now());
            conn.flush();
            conn.stream.write_all(&header).unwrap();
            conn.stream.write_all(&t.data[start..start + r.length as usize]).unwrap();
            served += u64::from(r.length);
        }
    };
    let report = first_line(&mut leecher);
    assert!(status.success(), "leecher failed: {report}");
    assert_eq!(report["bytes"], TOTAL as u64);
    assert!(std::fs::read(dst.join("blob")).unwrap() == t.data, "leecher's file differs");
    assert!(served >= TOTAL as u64);
    assert!(conn.peer.peer_interested());
}
