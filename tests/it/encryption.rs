//! MSE/PE (message stream encryption, issue 13) against real peers that
//! insist on it, both directions, byte-identical; the plaintext retry
//! against a peer without MSE; and hostile handshakes at the listener.
//!
//! Owns: the encryption scenarios. The peers' encryption settings live in
//! `peers.rs` ([`Crypto::Required`]): libtorrent forced (RC4 only as a
//! seeder, either payload as a leecher), transmission `encryption: 2`, aria2
//! `--bt-require-crypto=true --bt-min-crypto-level=arc4`. Each of them
//! refuses a plaintext handshake, so a completed transfer proves the MSE
//! path carried it. Layer: integration tests.
//!
//! Every wait is bounded; every process is stopped by its pid.

use crate::download::{Ringbit, DOWNLOAD_LIMIT};
use crate::helpers;
use crate::peers::{is_listening, Crypto, Leecher, Payload, PeerKind, Seeder};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Payload of each transfer: 8 MiB in 256 KiB pieces (seconds on loopback).
const SIZE_BYTES: usize = 8 << 20;
const PIECE_LOG2: u32 = 18;
/// How long a seeding ringbit may take to start listening.
const LISTEN_LIMIT: Duration = Duration::from_secs(60);
/// How long the listener may take to drop a handshake that never finishes:
/// its handshake timeout (10 s) plus slack for a loaded machine.
const STALLED_CLOSE_LIMIT: Duration = Duration::from_secs(40);

fn payload(name: &str) -> Payload {
    Payload::single_file(name, SIZE_BYTES, PIECE_LOG2)
}

/// ringbit (`--encryption` as given in `extra`, default `prefer`) downloads
/// from a `kind` seeder that requires MSE; ringbit dials it.
fn download_from_required(kind: PeerKind, extra: &[&str]) {
    let payload = payload(&format!("enc-from-{kind}.bin"));
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start_with(kind, &torrent, &payload.save_path, None, Crypto::Required);
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["--no-trackers"];
    args.extend_from_slice(extra);
    let mut rb = Ringbit::download(&torrent, out.path(), &[seeder.addr()], &args);
    rb.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    drop(seeder);
}

/// A seeding ringbit with `--encryption require` (so a plaintext handshake
/// could not carry the transfer), dialling `peers`.
fn ringbit_seed_requiring_mse(payload: &Payload, peers: &[SocketAddr]) -> Ringbit {
    let torrent = payload.torrent(&[]);
    let mut seed = Ringbit::download(
        &torrent,
        &payload.save_path,
        peers,
        &["--seed", "--no-trackers", "--encryption", "require"],
    );
    assert!(
        helpers::wait_until(LISTEN_LIMIT, || is_listening(seed.port) || !seed.is_running()),
        "ringbit seeder never listened; log:\n{}",
        seed.log_tail()
    );
    assert!(seed.is_running(), "ringbit seeder exited; log:\n{}", seed.log_tail());
    seed
}

/// A `kind` leecher that requires MSE downloads from a ringbit seeder that
/// requires it too; `leecher_dials`: it dials ringbit (libtorrent, aria2),
/// else ringbit dials it (transmission never dials 127.0.0.1).
fn upload_to_required(kind: PeerKind, leecher_dials: bool) {
    let payload = payload(&format!("enc-to-{kind}.bin"));
    let torrent = payload.torrent(&[]);
    let out = tempfile::tempdir().unwrap();
    let (seed, mut leecher) = if leecher_dials {
        let seed = ringbit_seed_requiring_mse(&payload, &[]);
        let leecher =
            Leecher::start_with(kind, &torrent, out.path(), &[seed.addr()], None, Crypto::Required);
        (seed, leecher)
    } else {
        let leecher = Leecher::start_with(kind, &torrent, out.path(), &[], None, Crypto::Required);
        (ringbit_seed_requiring_mse(&payload, &[leecher.addr()]), leecher)
    };
    if let Err(e) = leecher.wait_complete(DOWNLOAD_LIMIT) {
        panic!("{kind} from ringbit over MSE: {e}\nseeder log:\n{}", seed.log_tail());
    }
    leecher.assert_same_as(&payload.save_path);
    let mut seed = seed;
    assert!(seed.is_running(), "ringbit seeder exited; log:\n{}", seed.log_tail());
    seed.interrupt_and_wait(0);
}

/// Goal: ringbit downloads from libtorrent forced to MSE with an RC4 payload.
/// Setup: libtorrent seeds with out/in_enc_policy forced, allowed_enc_level
/// rc4; ringbit (default `prefer`) dials it.
/// Check: exit 0, byte-identical.
#[test]
fn mse_download_from_libtorrent_forced_rc4() {
    download_from_required(PeerKind::Libtorrent, &[]);
}

/// Goal: ringbit downloads from transmission with `encryption: 2`.
/// Setup: transmission seeds, requiring encryption; ringbit `--encryption
/// require` dials it.
/// Check: exit 0, byte-identical.
#[test]
fn mse_download_from_transmission_required() {
    download_from_required(PeerKind::Transmission, &["--encryption", "require"]);
}

/// Goal: ringbit downloads from aria2 requiring arc4.
/// Setup: aria2 seeds with --bt-require-crypto and arc4; ringbit dials it.
/// Check: exit 0, byte-identical.
#[test]
fn mse_download_from_aria2_required() {
    download_from_required(PeerKind::Aria2, &[]);
}

/// Goal: libtorrent forced to MSE downloads from ringbit (the listener's
/// responder path). Setup: ringbit seeds with `--encryption require`;
/// libtorrent (forced, either payload) dials it.
/// Check: libtorrent completes, byte-identical.
#[test]
fn mse_upload_to_libtorrent_forced() {
    upload_to_required(PeerKind::Libtorrent, true);
}

/// Goal: aria2 requiring arc4 downloads from ringbit through the listener.
/// Setup: aria2 learns the seeder from a private tracker and dials it.
/// Check: aria2 completes, byte-identical.
#[test]
fn mse_upload_to_aria2_required() {
    upload_to_required(PeerKind::Aria2, true);
}

/// Goal: transmission with `encryption: 2` downloads from ringbit.
/// Setup: transmission never dials loopback: ringbit (`--peer`) dials it,
/// running the initiator as a seeder.
/// Check: transmission completes, byte-identical.
#[test]
fn mse_upload_to_transmission_required() {
    upload_to_required(PeerKind::Transmission, false);
}

/// Goal: under `prefer`, a failed MSE attempt falls back to plaintext.
/// Setup: libtorrent seeds with in_enc_policy disabled (it hangs up on an
/// MSE handshake); ringbit (default `prefer`, debug log) dials it.
/// Check: the download completes byte-identical, and ringbit logged the
/// failed attempt and its plaintext retry.
#[test]
fn mse_attempt_falls_back_to_plaintext() {
    let payload = payload("enc-fallback.bin");
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start_with(
        PeerKind::Libtorrent,
        &torrent,
        &payload.save_path,
        None,
        Crypto::Disabled,
    );
    let out = tempfile::tempdir().unwrap();
    let mut rb =
        Ringbit::download(&torrent, out.path(), &[seeder.addr()], &["--no-trackers", "-vv"]);
    rb.wait_success(DOWNLOAD_LIMIT);
    helpers::assert_same_tree(&payload.save_path, out.path());
    assert!(
        rb.log().contains("MSE failed: retrying in plaintext"),
        "no plaintext retry logged:\n{}",
        rb.log_tail()
    );
}

/// Reads until the peer closes (Ok(bytes read)) or `limit` passes (Err).
fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + limit;
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("still open after {limit:?} ({total} bytes read)"));
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            // A reset is a close too.
            Err(_) => return Ok(total),
        }
    }
}

/// Goal: hostile MSE handshakes cost the listener a bounded wait and leave
/// it usable.
/// Setup: a ringbit seeder (`prefer`); one connection sends a valid DH key
/// then garbage that never holds the req1 hash (past the 512-byte pad
/// limit); others send a valid DH key and the largest pad, then nothing.
/// Check: the garbage connection is closed after ringbit sent at most its
/// key and largest pad; the stalled ones are closed (handshake timeout);
/// meanwhile libtorrent, forced to MSE, downloads byte-identical.
#[test]
fn mse_hostile_handshakes_leave_the_listener_usable() {
    use ringbit::mse::{public_key, PAD_MAX_LEN, PUBLIC_KEY_LEN, REQ1_SCAN_MAX_LEN};
    let payload = payload("enc-hostile.bin");
    let torrent = payload.torrent(&[]);
    let mut seed =
        Ringbit::download(&torrent, &payload.save_path, &[], &["--seed", "--no-trackers"]);
    assert!(
        helpers::wait_until(LISTEN_LIMIT, || is_listening(seed.port) || !seed.is_running()),
        "ringbit seeder never listened; log:\n{}",
        seed.log_tail()
    );
    let ya = public_key(&[0x42; 20]);
    // Stalled: key plus the largest pad, then silence.
    let mut stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(seed.addr()).unwrap();
            s.write_all(&ya).unwrap();
            s.write_all(&[0x5a; PAD_MAX_LEN]).unwrap();
            s
        })
        .collect();
    // Garbage: key plus more than the req1 scan allows.
    let mut garbage = TcpStream::connect(seed.addr()).unwrap();
    garbage.write_all(&ya).unwrap();
    garbage.write_all(&vec![0xa5; REQ1_SCAN_MAX_LEN + 64]).unwrap();
    // An honest MSE leecher at the same time.
    let out = tempfile::tempdir().unwrap();
    let mut lt = Leecher::start_with(
        PeerKind::Libtorrent,
        &torrent,
        out.path(),
        &[seed.addr()],
        None,
        Crypto::Required,
    );
    let sent = wait_closed(&mut garbage, STALLED_CLOSE_LIMIT)
        .unwrap_or_else(|e| panic!("garbage MSE connection: {e}; log:\n{}", seed.log_tail()));
    assert!(sent <= PUBLIC_KEY_LEN + PAD_MAX_LEN, "ringbit sent {sent} bytes to garbage");
    if let Err(e) = lt.wait_complete(DOWNLOAD_LIMIT) {
        panic!("libtorrent beside hostile handshakes: {e}\nseeder log:\n{}", seed.log_tail());
    }
    lt.assert_same_as(&payload.save_path);
    for s in &mut stalled {
        let sent = wait_closed(s, STALLED_CLOSE_LIMIT)
            .unwrap_or_else(|e| panic!("stalled MSE connection: {e}; log:\n{}", seed.log_tail()));
        assert!(sent <= PUBLIC_KEY_LEN + PAD_MAX_LEN, "ringbit sent {sent} bytes to a stall");
    }
    assert!(seed.is_running(), "ringbit seeder exited; log:\n{}", seed.log_tail());
    seed.interrupt_and_wait(0);
}
