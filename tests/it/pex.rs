//! Peer exchange (issue 12, BEP 11): ringbit learns a seeder only through a
//! libtorrent peer's PEX; a PEX flood of 10,000 addresses is held to its
//! bounds while the download completes.
//!
//! Every ringbit gets `--no-trackers` and its own `--state-dir`; every wait is
//! bounded; only 127.0.0.0/8 addresses are used (the flood's addresses are
//! loopback ones on port 1, where nothing listens).

use crate::helpers::{self, ChildGuard};
use crate::peers::{lt_extra, Payload, PeerKind, Seeder};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A download of a few MiB over loopback, PEX's first message included.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(60);
/// 256 KiB pieces.
const PIECE_LOG2: u32 = 18;

fn ringbit_download(
    torrent: &Path,
    out: &Path,
    work: &Path,
    peers: &[SocketAddr],
) -> (ChildGuard, PathBuf) {
    let log = work.join("download.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = helpers::ringbit();
    cmd.args(["-v", "download"])
        .arg(torrent)
        .arg("-o")
        .arg(out)
        .arg("--state-dir")
        .arg(work.join("state"))
        .args([
            "--port",
            &helpers::free_port().to_string(),
            "--bind",
            "127.0.0.1",
            "--no-trackers",
            // 2 MiB at 512 KiB/s: the flood is read before the download ends.
            "--download-limit",
            "512K",
            // The scripted peer speaks plaintext and takes one connection.
            "--encryption",
            "disable",
        ]);
    for p in peers {
        cmd.args(["--peer", &p.to_string()]);
    }
    cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
    (ChildGuard::spawn("ringbit download", &mut cmd), log)
}

fn wait_ok(guard: &mut ChildGuard, log: &Path) -> String {
    let status = guard.wait_timeout(DOWNLOAD_LIMIT);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(s) if s.success() => text,
        Some(s) => panic!("ringbit download exited {s}:\n{text}"),
        None => panic!("ringbit download overran {DOWNLOAD_LIMIT:?}:\n{text}"),
    }
}

/// The log without terminal colour codes (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Serves one connection: handshake, extension handshake offering ut_pex,
/// then one ut_pex message listing `count` loopback addresses (port 1).
fn pex_flooder(info_hash: [u8; 20], count: u32) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Some(Ok(stream)) = listener.incoming().next() {
            let _ = flood(stream, info_hash, count);
        }
    });
    addr
}

fn flood(mut s: TcpStream, info_hash: [u8; 20], count: u32) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut hs = [0u8; 68];
    s.read_exact(&mut hs)?;
    let mut ours = Vec::with_capacity(68);
    ours.push(19);
    ours.extend_from_slice(b"BitTorrent protocol");
    ours.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
    ours.extend_from_slice(&info_hash);
    ours.extend_from_slice(b"-XX0001-pexflooder01");
    s.write_all(&ours)?;
    write_extended(&mut s, 0, b"d1:md6:ut_pexi1eee")?;
    let mut added = Vec::with_capacity(count as usize * 6);
    for i in 0..count {
        let b = i.to_be_bytes();
        added.extend_from_slice(&[127, 2 + b[1], b[2], b[3], 0, 1]);
    }
    let mut body = format!("d5:added{}:", added.len()).into_bytes();
    body.extend_from_slice(&added);
    body.push(b'e');
    // ringbit's ut_pex id is 2.
    write_extended(&mut s, 2, &body)?;
    // Then the same again at once (must be ignored: too soon).
    write_extended(&mut s, 2, &body)?;
    let mut sink = [0u8; 4096];
    while s.read(&mut sink)? > 0 {}
    Ok(())
}

fn write_extended(s: &mut TcpStream, id: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(payload.len() + 6);
    msg.extend_from_slice(&(payload.len() as u32 + 2).to_be_bytes());
    msg.push(20);
    msg.push(id);
    msg.extend_from_slice(payload);
    s.write_all(&msg)
}

/// Goal: a PEX flood of 10,000 addresses keeps its bounds.
/// Setup: a scripted peer sends ringbit one `ut_pex` message with 10,000
/// loopback addresses (and the same message again at once); a libtorrent
/// seeder is the real source.
/// Check: the download completes byte-identical; ringbit logs at most
/// `MAX_PEX_ACCEPTED_PER_MESSAGE` (100) addresses learned and the rest
/// ignored.
#[test]
fn pex_flood_of_ten_thousand_addresses_keeps_bounds() {
    let payload = Payload::single_file("flood.bin", 2 * 1024 * 1024 + 9, PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let mut hash = [0u8; 20];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(&payload.info_hash[2 * i..2 * i + 2], 16).unwrap();
    }
    let flooder = pex_flooder(hash, 10_000);
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let (mut dl, log) = ringbit_download(&torrent, &out, work.path(), &[flooder, seeder.addr()]);
    let text = wait_ok(&mut dl, &log);
    helpers::assert_same_tree(&payload.save_path, &out);
    let text = strip_ansi(&text);
    let line = text
        .lines()
        .find(|l| l.contains("peers learned from PEX"))
        .unwrap_or_else(|| panic!("no PEX line:\n{text}"));
    let field = |name: &str| -> u64 {
        let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {line}"));
        line[at + name.len() + 1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    };
    assert_eq!(field("count"), 100, "{line}");
    assert!(field("ignored") >= 9_900, "{line}");
    assert!(!text.contains("panicked"), "{text}");
}

/// Goal: ringbit learns a second seeder only through PEX from a libtorrent
/// peer, and gets the data from it.
/// Setup: libtorrent seeder B; libtorrent leecher A dials B (`--peer`) with
/// a torrent download limit of 20 KB/s, so it stays a leecher connected to B
/// and cannot itself supply the payload; ringbit knows only A (`--peer`),
/// no trackers, no DHT.
/// Check: ringbit logs peers learned from PEX and completes 4 MiB
/// byte-identical within `DOWNLOAD_LIMIT` (60 s): A could have sent at most
/// 1.2 MB in that time, so the data came from B, which ringbit could only
/// have learned from A's `ut_pex`.
#[test]
fn ringbit_learns_a_seeder_only_through_libtorrent_pex() {
    let payload = Payload::single_file("pex-relay.bin", 4 * 1024 * 1024 + 21, PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let work = tempfile::tempdir().unwrap();
    let relay_out = work.path().join("relay");
    std::fs::create_dir_all(&relay_out).unwrap();
    let relay_port = helpers::free_port();
    let relay_log = work.path().join("relay.log");
    let mut cmd = lt_extra();
    cmd.arg("leech")
        .arg(&torrent)
        .arg(&relay_out)
        .args(["--port", &relay_port.to_string()])
        .args(["--peer", &seeder.addr().to_string()])
        .args(["--torrent-download-limit", "20000", "--timeout", "120"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&relay_log).unwrap())
        .stderr(Stdio::null());
    let _relay = ChildGuard::spawn("libtorrent relay", &mut cmd);
    let listening = helpers::wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&relay_log).unwrap_or_default().contains("listening")
    });
    assert!(listening, "relay did not start");
    let relay: SocketAddr = ([127, 0, 0, 1], relay_port).into();
    let out = work.path().join("out");
    let (mut dl, log) = ringbit_download(&torrent, &out, work.path(), &[relay]);
    let text = strip_ansi(&wait_ok(&mut dl, &log));
    helpers::assert_same_tree(&payload.save_path, &out);
    assert!(text.contains("peers learned from PEX"), "{text}");
    let relay_text = std::fs::read_to_string(&relay_log).unwrap_or_default();
    assert!(!relay_text.contains("\"done\""), "the relay completed: {relay_text}");
}
