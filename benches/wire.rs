//! Wire codec hot paths: decoding a 1 MiB receive buffer of mixed `piece` and
//! `have` messages (what a leecher's socket read holds), the same buffer
//! through the per-peer state machine, and encoding requests.
//!
//! Run: `cargo bench --bench wire`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringbit::bitfield::Bitfield;
use ringbit::metainfo::InfoHash;
use ringbit::peer::{Peer, PeerConfig, PeerSetup};
use ringbit::wire::{
    decode, BlockRequest, Decoded, Handshake, Message, PeerId, Reserved, WireLimits, BLOCK_LEN,
};
use std::hint::black_box;
use std::time::Instant;

const PIECES: u32 = 1024;
const PIECE_LEN: u32 = 1 << 20;

/// 1 MiB of messages: each 16 KiB block followed by 8 `have`s.
fn mixed_buffer() -> (Vec<u8>, Vec<BlockRequest>) {
    let data = vec![0xabu8; BLOCK_LEN as usize];
    let mut buf = Vec::with_capacity(1 << 21);
    let mut requests = Vec::new();
    let mut i = 0u32;
    while buf.len() < 1 << 20 {
        let r = BlockRequest {
            piece: i / (PIECE_LEN / BLOCK_LEN),
            begin: (i % (PIECE_LEN / BLOCK_LEN)) * BLOCK_LEN,
            length: BLOCK_LEN,
        };
        Message::Piece { piece: r.piece, begin: r.begin, data: &data }.encode(&mut buf);
        requests.push(r);
        for h in 0..8 {
            Message::Have { piece: (i * 8 + h) % PIECES }.encode(&mut buf);
        }
        i += 1;
    }
    (buf, requests)
}

fn bench_decode(c: &mut Criterion) {
    let (buf, _) = mixed_buffer();
    let limits = WireLimits::for_pieces(PIECES);
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("decode_1MiB_piece_have", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0u32;
            while let Ok(Decoded::Message { message, consumed }) = decode(&buf[at..], &limits) {
                black_box(&message);
                at += consumed;
                n += 1;
            }
            black_box((at, n))
        })
    });

    let (buf, requests) = mixed_buffer();
    let now = Instant::now();
    let setup = PeerSetup {
        info_hash: InfoHash([1; 20]),
        our_peer_id: PeerId::ours([0; 12]),
        piece_count: PIECES,
        piece_length: PIECE_LEN,
        total_length: u64::from(PIECES) * u64::from(PIECE_LEN),
        listen_port: None,
        peer_ip: None,
        metadata_size: None,
        dht_port: None,
    };
    let config = PeerConfig { max_outstanding_requests: 1000, ..PeerConfig::default() };
    let make_peer = || {
        let hs = Handshake {
            reserved: Reserved::OURS,
            ..Handshake::ours(InfoHash([1; 20]), PeerId([2; 20]))
        };
        let mut peer = Peer::outgoing(config.clone(), setup.clone(), now);
        peer.handle_bytes(&hs.to_bytes(), now).unwrap();
        let mut start = Vec::new();
        Message::HaveNone.encode(&mut start);
        Message::Unchoke.encode(&mut start);
        peer.handle_bytes(&start, now).unwrap();
        peer.send_bitfield(&Bitfield::new(PIECES), now);
        while peer.poll_event().is_some() {}
        // The peer "has" every piece through the haves in the buffer; mark
        // them up front so requests are allowed.
        let mut haves = Vec::new();
        for p in 0..PIECES {
            Message::Have { piece: p }.encode(&mut haves);
        }
        let mut at = 0;
        while at < haves.len() {
            at += peer.handle_bytes(&haves[at..], now).unwrap();
            while peer.poll_event().is_some() {}
        }
        for r in &requests {
            peer.request(*r, now).unwrap();
        }
        peer
    };
    g.bench_function("peer_handle_bytes_1MiB_piece_have", |b| {
        b.iter_batched(
            make_peer,
            |mut peer| {
                let mut at = 0;
                let mut blocks = 0;
                while at < buf.len() {
                    at += peer.handle_bytes(&buf[at..], now).unwrap();
                    while let Some(e) = peer.poll_event() {
                        if let ringbit::peer::Event::Block { data, .. } = e {
                            black_box(&buf[data]);
                            blocks += 1;
                        }
                    }
                }
                assert_eq!(blocks, requests.len());
                peer
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1000));
    let mut out = Vec::with_capacity(17 * 1000);
    g.bench_function("encode_1000_requests", |b| {
        b.iter(|| {
            out.clear();
            for i in 0..1000u32 {
                Message::Request(BlockRequest {
                    piece: i / 64,
                    begin: (i % 64) * BLOCK_LEN,
                    length: BLOCK_LEN,
                })
                .encode(&mut out);
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
