//! Self-tests of the real-peer harness (tests/it/peers.rs): the real peers
//! download from EACH OTHER through it, byte-identical, so later ringbit
//! interop tests can trust every path the harness offers — direct peers,
//! opentracker over HTTP and UDP, aria2's announced-on-its-behalf peers, a
//! seeder dialling transmission — and a stalled download is reported, not
//! waited on forever.

use std::time::Duration;

use crate::helpers::assert_same_tree;
use crate::peers::{scrape, wait_scrape, Leecher, Payload, PeerKind, Seeder};

/// Payloads stay small so each test takes seconds (transmission's first
/// request can take up to its 10 s rechoke period).
const SINGLE_FILE_BYTES: usize = 16 * 1024 * 1024;
/// 256 KiB pieces, as mktorrent -l 18.
const PIECE_LOG2: u32 = 18;
/// Bound on one download in these tests; they finish far sooner.
const DOWNLOAD_LIMIT: Duration = Duration::from_secs(90);

fn out_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn complete(leecher: &mut Leecher) {
    if let Err(e) = leecher.wait_complete(DOWNLOAD_LIMIT) {
        panic!("{e}");
    }
}

#[test]
fn libtorrent_seeds_aria2_leeches_multi_file_via_http_tracker() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let tracker = payload.tracker();
    let torrent = payload.torrent_http(&tracker);
    let _seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, Some(&tracker));
    assert_eq!(scrape(&tracker, &payload.info_hash).unwrap().0, 1, "the seeder counts as complete");
    let out = out_dir();
    let mut leecher = Leecher::start(PeerKind::Aria2, &torrent, out.path(), &[], Some(&tracker));
    complete(&mut leecher);
    assert_same_tree(&payload.save_path, out.path());
}

#[test]
fn libtorrent_seeds_libtorrent_leeches_direct_peer() {
    let payload = Payload::single_file("single.bin", SINGLE_FILE_BYTES, PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let out = out_dir();
    let mut leecher =
        Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[seeder.addr()], None);
    complete(&mut leecher);
    assert_same_tree(&payload.save_path, out.path());
}

#[test]
fn aria2_seeds_libtorrent_leeches_multi_file_direct_peer() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Aria2, &torrent, &payload.save_path, None);
    let out = out_dir();
    let mut leecher =
        Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[seeder.addr()], None);
    complete(&mut leecher);
    assert_same_tree(&payload.save_path, out.path());
}

#[test]
fn transmission_seeds_libtorrent_leeches_via_udp_tracker() {
    let payload = Payload::single_file("single.bin", SINGLE_FILE_BYTES, PIECE_LOG2);
    let tracker = payload.tracker();
    let torrent = payload.torrent_udp(&tracker);
    let _seeder =
        Seeder::start(PeerKind::Transmission, &torrent, &payload.save_path, Some(&tracker));
    let out = out_dir();
    // No --peer: the leecher finds transmission only through the tracker.
    let mut leecher =
        Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[], Some(&tracker));
    complete(&mut leecher);
    assert_same_tree(&payload.save_path, out.path());
}

#[test]
fn transmission_seeds_multi_file_libtorrent_leeches_direct_peer() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Transmission, &torrent, &payload.save_path, None);
    let out = out_dir();
    let mut leecher =
        Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[seeder.addr()], None);
    complete(&mut leecher);
    assert_same_tree(&payload.save_path, out.path());
}

#[test]
fn libtorrent_seeder_dials_transmission_leecher_multi_file() {
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let mut seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let out = out_dir();
    let mut leecher = Leecher::start(PeerKind::Transmission, &torrent, out.path(), &[], None);
    seeder.connect(leecher.addr()).unwrap();
    complete(&mut leecher);
    // transmission 3.00 does not create the empty files: that is the only
    // difference assert_same_as allows, and only for transmission.
    assert!(!out.path().join("multi/empty-1").exists());
    leecher.assert_same_as(&payload.save_path);
}

#[test]
fn libtorrent_seeder_reaches_transmission_leecher_after_reannounce() {
    // The path a ringbit seeder takes (issue 6): transmission announces and
    // waits to be dialled; the seeder learns its address only by announcing
    // again (opentracker's interval is 30 minutes) and must dial it.
    let payload = Payload::single_file("single.bin", SINGLE_FILE_BYTES, PIECE_LOG2);
    let tracker = payload.tracker();
    let torrent = payload.torrent_http(&tracker);
    let mut seeder =
        Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, Some(&tracker));
    let out = out_dir();
    let mut leecher = Leecher::start(PeerKind::Transmission, &torrent, out.path(), &[], None);
    assert!(
        wait_scrape(&tracker, &payload.info_hash, Duration::from_secs(30), |_, l| l >= 1),
        "transmission never announced"
    );
    seeder.reannounce().unwrap();
    complete(&mut leecher);
    assert_same_tree(&payload.save_path, out.path());
}

#[test]
fn aria2_leeches_a_peer_given_by_address() {
    // aria2 has no option to add a peer: the harness announces the seeder on
    // its behalf to a private opentracker.
    let payload = Payload::single_file("single.bin", SINGLE_FILE_BYTES, PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let seeder = Seeder::start(PeerKind::Libtorrent, &torrent, &payload.save_path, None);
    let out = out_dir();
    let mut leecher = Leecher::start(PeerKind::Aria2, &torrent, out.path(), &[seeder.addr()], None);
    complete(&mut leecher);
    assert_same_tree(&payload.save_path, out.path());
}

#[test]
fn libtorrent_leeches_multi_file_from_all_three_at_once() {
    // Three seeders share one data dir: none of them writes there.
    let payload = Payload::multi_file("multi", PIECE_LOG2);
    let tracker = payload.tracker();
    let torrent = payload.torrent_http(&tracker);
    let seeders: Vec<Seeder> = PeerKind::REAL
        .iter()
        .map(|&kind| Seeder::start(kind, &torrent, &payload.save_path, Some(&tracker)))
        .collect();
    assert_eq!(scrape(&tracker, &payload.info_hash).unwrap().0, 3);
    let peers: Vec<_> = seeders.iter().map(Seeder::addr).collect();
    let out = out_dir();
    let mut leecher =
        Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &peers, Some(&tracker));
    complete(&mut leecher);
    assert_same_tree(&payload.save_path, out.path());
}

#[test]
fn a_leecher_without_peers_is_reported_not_complete() {
    let payload = Payload::single_file("single.bin", 1024 * 1024, PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let out = out_dir();
    let mut leecher = Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[], None);
    let err = leecher.wait_complete(Duration::from_secs(2)).unwrap_err();
    assert!(err.contains("did not complete within"), "{err}");
    assert!(leecher.is_running());
}

#[test]
fn a_seeder_with_corrupt_data_does_not_yield_identical_output() {
    // The comparison the other tests rely on must be able to fail: aria2
    // seeds unverified data, so a flipped byte reaches the leecher's disk
    // only as a failed piece, never as a complete download.
    let payload = Payload::single_file("single.bin", 1024 * 1024, PIECE_LOG2);
    let torrent = payload.torrent(&[]);
    let path = payload.save_path.join("single.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[300_000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let seeder = Seeder::start(PeerKind::Aria2, &torrent, &payload.save_path, None);
    let out = out_dir();
    let mut leecher =
        Leecher::start(PeerKind::Libtorrent, &torrent, out.path(), &[seeder.addr()], None);
    assert!(
        leecher.wait_complete(Duration::from_secs(8)).is_err(),
        "a corrupt piece passed the hash check"
    );
}
