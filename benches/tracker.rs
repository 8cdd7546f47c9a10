//! Tracker codec speed: parsing a 200-peer HTTP compact reply and a 200-peer
//! UDP announce reply, and building an announce URL. Not a hot path (one
//! announce per torrent per ~30 minutes); this guards against regressions
//! that would make a 10,000-torrent seeder's announces expensive.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringbit::metainfo::InfoHash;
use ringbit::tracker::http::{announce_url, parse_announce_reply};
use ringbit::tracker::udp::{decode_reply, PeerFamily};
use ringbit::tracker::{AnnounceRequest, Event};

const PEERS: usize = 200;

fn compact_peers() -> Vec<u8> {
    (0..PEERS as u32).flat_map(|i| [10, 0, (i >> 8) as u8, i as u8, 0x1a, 0xe1]).collect()
}

fn bench(c: &mut Criterion) {
    let mut http = b"d8:completei10e10:incompletei20e8:intervali1800e5:peers1200:".to_vec();
    http.extend_from_slice(&compact_peers());
    http.push(b'e');
    c.bench_function("http_parse_announce_200_peers", |b| {
        b.iter(|| parse_announce_reply(black_box(&http)).unwrap())
    });

    let mut udp = vec![0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 7, 8, 0, 0, 0, 20, 0, 0, 0, 10];
    udp.extend_from_slice(&compact_peers());
    c.bench_function("udp_decode_announce_200_peers", |b| {
        b.iter(|| decode_reply(black_box(&udp), PeerFamily::V4).unwrap())
    });

    let request = AnnounceRequest {
        info_hash: InfoHash([0xab; 20]),
        peer_id: *b"-RB0100-abcdefghijkl",
        port: 6881,
        uploaded: 1 << 40,
        downloaded: 1 << 30,
        left: 0,
        event: Event::None,
        numwant: Some(200),
        key: 7,
        tracker_id: None,
        encryption: ringbit::mse::EncryptionPolicy::Prefer,
    };
    c.bench_function("http_announce_url", |b| {
        b.iter(|| announce_url(black_box("http://tracker.example:6969/announce"), &request))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
