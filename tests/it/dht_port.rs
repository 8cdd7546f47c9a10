//! The BEP 5 `PORT` message (issue 12): ringbit tells DHT peers its node's
//! port, and a peer's `PORT` feeds ringbit's DHT table.
//!
//! A scripted peer on 127.0.0.1 speaks to a `ringbit seed` with its DHT on
//! (no bootstrap routers); every wait is bounded.

use crate::helpers::{self, ChildGuard};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// Reads one length-prefixed peer message (id and payload; keep-alives
/// skipped).
fn read_message(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            continue;
        }
        assert!(len <= 1 << 20, "message of {len} bytes");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        return Ok((body[0], body[1..].to_vec()));
    }
}

/// Goal: PORT both ways.
/// Setup: `ringbit seed` with its DHT on (no routers); a scripted peer
/// connects with the DHT bit set, reads ringbit's messages, then sends its
/// own `PORT` naming a UDP socket it holds.
/// Check: ringbit's handshake sets the DHT bit and a `PORT` (id 9) with a
/// non-zero port follows its bitfield; ringbit's DHT then sends a KRPC query
/// to the scripted peer's UDP socket (it pings or bootstraps from that node).
#[test]
fn port_messages_go_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("port.bin"), helpers::payload_bytes(300_000, 9)).unwrap();
    let torrent = dir.path().join("port.torrent");
    helpers::run_ok(
        helpers::ringbit().arg("create").arg(data.join("port.bin")).arg("-o").arg(&torrent),
        LIMIT,
    );
    let info_hash = ringbit::metainfo::Metainfo::from_file(&torrent).unwrap().info_hash;
    let port = helpers::free_port();
    let log = dir.path().join("seed.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = helpers::ringbit();
    cmd.arg("seed").arg(&torrent).arg(&data).args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--no-trackers",
        "--encryption",
        "disable",
    ]);
    cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
    let _seed = ChildGuard::spawn("ringbit seed", &mut cmd);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut stream = None;
    let connected = helpers::wait_until(LIMIT, || {
        stream = TcpStream::connect(("127.0.0.1", port)).ok();
        stream.is_some()
    });
    assert!(connected, "ringbit seed not listening:\n{}", log_text());
    let mut s = stream.unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut hs = Vec::with_capacity(68);
    hs.push(19);
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x05]);
    hs.extend_from_slice(&info_hash.0);
    hs.extend_from_slice(b"-XX0001-portscript01");
    s.write_all(&hs).unwrap();
    let mut theirs = [0u8; 68];
    s.read_exact(&mut theirs).unwrap();
    assert_eq!(theirs[27] & 0x01, 0x01, "ringbit's handshake lacks the DHT bit");

    let deadline = Instant::now() + LIMIT;
    let mut dht_port = None;
    while dht_port.is_none() && Instant::now() < deadline {
        let (id, payload) = read_message(&mut s).unwrap();
        if id == 9 {
            assert_eq!(payload.len(), 2);
            dht_port = Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    let dht_port = dht_port.unwrap_or_else(|| panic!("no PORT from ringbit:\n{}", log_text()));
    assert_ne!(dht_port, 0);

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let ours = udp.local_addr().unwrap().port();
    let mut msg = vec![0, 0, 0, 3, 9];
    msg.extend_from_slice(&ours.to_be_bytes());
    s.write_all(&msg).unwrap();
    let mut buf = [0u8; 2048];
    let got = helpers::wait_until(LIMIT, || match udp.recv_from(&mut buf) {
        Ok((n, from)) => {
            from.port() == dht_port && buf[..n].starts_with(b"d") && contains(&buf[..n], b"1:y1:q")
        }
        Err(_) => false,
    });
    assert!(got, "ringbit's DHT never queried the node named by PORT:\n{}", log_text());
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
