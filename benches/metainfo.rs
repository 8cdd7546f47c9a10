//! Metainfo and magnet parsing speed.
//!
//! Decodes a generated .torrent with 50,000 files (bencode alone, then the
//! full validated `Metainfo::from_bytes`), and parses a magnet link. The
//! torrent is also written to `target/bench-metainfo-50000.torrent` so
//! `scripts/bench-metainfo.sh` can time libtorrent's `torrent_info` on the
//! very same bytes.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringbit::bencode::{self, OwnedValue};
use ringbit::magnet::Magnet;
use ringbit::metainfo::Metainfo;

const FILE_COUNT: usize = 50_000;
const PIECE_LENGTH: u64 = 4 << 20;

/// A deterministic multi-file torrent: 50 directories of 1,000 files each.
fn large_torrent() -> Vec<u8> {
    let mut files = Vec::with_capacity(FILE_COUNT);
    let mut total = 0u64;
    for i in 0..FILE_COUNT {
        let length = (i as u64 * 7919) % 1_000_000 + 1;
        total += length;
        let path = vec![
            OwnedValue::from(format!("directory-{:03}", i / 1000)),
            OwnedValue::from(format!("file-{i:06}-with-a-longish-name.bin")),
        ];
        files.push(OwnedValue::dict().with("length", length as i64).with("path", path));
    }
    let piece_count = total.div_ceil(PIECE_LENGTH) as usize;
    let pieces: Vec<u8> = (0..piece_count * 20).map(|i| (i * 31 % 251) as u8).collect();
    let info = OwnedValue::dict()
        .with("name", "bench-payload")
        .with("piece length", PIECE_LENGTH as i64)
        .with("pieces", pieces)
        .with("files", files);
    OwnedValue::dict()
        .with("announce", "http://127.0.0.1:6969/announce")
        .with("created by", "ringbit bench")
        .with("info", info)
        .encode()
}

fn bench(c: &mut Criterion) {
    let bytes = large_torrent();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-metainfo-50000.torrent");
    std::fs::write(&out, &bytes).expect("write the generated torrent");

    let mut group = c.benchmark_group("metainfo");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(20);
    group.bench_function("bencode_decode_50000_files", |b| {
        b.iter(|| bencode::decode(black_box(&bytes)).unwrap())
    });
    group.bench_function("from_bytes_50000_files", |b| {
        b.iter(|| Metainfo::from_bytes(black_box(&bytes)).unwrap())
    });
    group.finish();

    let uri = "magnet:?xt=urn:btih:c9e15763f722f23e98a29decdfae341b98d53056\
               &dn=Some%20Linux%20Distribution%20x86_64.iso\
               &tr=udp%3A%2F%2Ftracker.example.org%3A6969%2Fannounce\
               &tr=http%3A%2F%2Ftracker.example.net%2Fannounce\
               &x.pe=127.0.0.1:6881&xl=4294967296";
    let mut group = c.benchmark_group("magnet");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| b.iter(|| Magnet::parse(black_box(uri)).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
