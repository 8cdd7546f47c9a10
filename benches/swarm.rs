//! A whole loopback transfer between two ringbit sessions in one process:
//! one seeds a 64 MiB torrent, a fresh session downloads it per iteration
//! (every piece hashed and written), so swarm throughput can be tracked with
//! criterion. `ringbit bench` measures the same between processes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringbit::bitfield::Bitfield;
use ringbit::create::{create, CreateOptions};
use ringbit::metainfo::Metainfo;
use ringbit::session::{AddTorrent, Session, SessionOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD_BYTES: usize = 64 << 20;
const PIECE_LENGTH: u32 = 1 << 20;
/// A transfer that takes longer than this is a failure, not a sample.
const TRANSFER_LIMIT: Duration = Duration::from_secs(120);

fn loopback_options() -> SessionOptions {
    let mut options = SessionOptions {
        listen_ips: vec![IpAddr::from([127, 0, 0, 1])],
        trackers: false,
        ..SessionOptions::default()
    };
    options.config.listen_port = 0;
    options
}

fn swarm(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let payload = seed_dir.join("payload.bin");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let bytes: Vec<u8> = (0..PAYLOAD_BYTES / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(&payload, &bytes).unwrap();
    let options = CreateOptions { piece_length: Some(PIECE_LENGTH), ..CreateOptions::default() };
    let created = create(&payload, &options, |_| {}).unwrap();
    let metainfo = Arc::new(Metainfo::from_bytes(&created.bytes).unwrap());
    let count = metainfo.info.piece_count();

    let seeder = Session::start(loopback_options()).unwrap();
    seeder
        .add(AddTorrent {
            metainfo: metainfo.clone(),
            download_dir: seed_dir,
            have: Bitfield::full(count),
            wanted: Bitfield::full(count),
            store_options: Default::default(),
            peers: Vec::new(),
        })
        .unwrap();
    let seeder_addr = SocketAddr::from(([127, 0, 0, 1], seeder.listen_port()));

    let mut group = c.benchmark_group("swarm");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(PAYLOAD_BYTES as u64));
    let mut run = 0;
    group.bench_function("loopback_64MiB_ringbit_to_ringbit", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                run += 1;
                let out = dir.path().join(format!("leech{run}"));
                let leecher = Session::start(loopback_options()).unwrap();
                let started = Instant::now();
                let status = leecher
                    .add(AddTorrent {
                        metainfo: metainfo.clone(),
                        download_dir: out.clone(),
                        have: Bitfield::new(count),
                        wanted: Bitfield::full(count),
                        store_options: Default::default(),
                        peers: vec![seeder_addr],
                    })
                    .unwrap();
                while !status.completed.load(Ordering::Acquire) {
                    assert!(started.elapsed() < TRANSFER_LIMIT, "transfer stalled");
                    assert!(status.error().is_none(), "{:?}", status.error());
                    std::thread::sleep(Duration::from_millis(1));
                }
                total += started.elapsed();
                leecher.shutdown();
                std::fs::remove_dir_all(&out).unwrap();
            }
            total
        })
    });
    group.finish();
    seeder.shutdown();
}

criterion_group!(benches, swarm);
criterion_main!(benches);
