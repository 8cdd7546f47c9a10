//! Storage backends: write whole 256 KiB pieces in random order, read 16 KiB
//! blocks in random order (seeding), and recheck reads (mmap vs pread), on
//! files in a temp dir (`RINGBIT_BENCH_DIR`, default the system temp dir).
//! Size: `RINGBIT_BENCH_MIB` (default 256).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use ringbit::metainfo::{FileEntry, Info};
use ringbit::storage::check::{recheck, CheckOptions, ReadMethod};
use ringbit::storage::{Allocation, Backend, PieceStore, StoreOptions};
use std::rc::Rc;

const PIECE: u32 = 256 << 10;
const BLOCK: u32 = 16 << 10;
/// io_uring operations in flight for the uring backend.
const IN_FLIGHT: usize = 4;

fn size() -> u64 {
    std::env::var("RINGBIT_BENCH_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(256u64) << 20
}

fn info(len: u64, pieces: Vec<[u8; 20]>) -> Info {
    Info {
        name: "bench".into(),
        piece_length: PIECE,
        pieces,
        files: vec![FileEntry { path: vec!["bench".into()], length: len, offset: 0, pad: false }],
        total_length: len,
        private: false,
        multi_file: false,
        source: None,
    }
}

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("RINGBIT_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn write_all(backend: Backend, info: &Info, dir: &std::path::Path, order: &[u32], piece: &[u8]) {
    let opts = StoreOptions { backend, allocation: Allocation::Full, ..Default::default() };
    match backend {
        Backend::Uring => tokio_uring::start(async {
            let store = Rc::new(PieceStore::open(info, dir, opts).unwrap());
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let mut handles = Vec::with_capacity(order.len());
            for &i in order {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let store = store.clone();
                let buf = piece.to_vec();
                handles.push(tokio_uring::spawn(async move {
                    let (r, _) = store.write_piece(i, buf).await;
                    drop(permit);
                    r.unwrap();
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
        }),
        _ => {
            let store = PieceStore::open(info, dir, opts).unwrap();
            for &i in order {
                store.write_piece_sync(i, piece).unwrap();
            }
        }
    }
}

fn read_blocks(backend: Backend, info: &Info, dir: &std::path::Path, blocks: &[(u32, u32)]) {
    let opts = StoreOptions { backend, allocation: Allocation::Full, ..Default::default() };
    match backend {
        Backend::Uring => tokio_uring::start(async {
            let store = Rc::new(PieceStore::open(info, dir, opts).unwrap());
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT * 4));
            let mut handles = Vec::with_capacity(blocks.len());
            for &(i, begin) in blocks {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let store = store.clone();
                handles.push(tokio_uring::spawn(async move {
                    let (r, _) =
                        store.read_block(i, begin, BLOCK, Vec::with_capacity(BLOCK as usize)).await;
                    drop(permit);
                    r.unwrap();
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
        }),
        _ => {
            let store = PieceStore::open(info, dir, opts).unwrap();
            let mut buf = Vec::with_capacity(BLOCK as usize);
            for &(i, begin) in blocks {
                store.read_block_sync(i, begin, BLOCK, &mut buf).unwrap();
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let len = size();
    let count = len.div_ceil(PIECE as u64) as u32;
    let piece: Vec<u8> = (0..PIECE).map(|i| (i * 7 + 3) as u8).collect();
    let digest = ringbit::hash::sha1(&piece);
    let info = info(len, vec![digest; count as usize]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut order: Vec<u32> = (0..count).collect();
    order.shuffle(&mut rng);
    let mut blocks: Vec<(u32, u32)> =
        (0..count).flat_map(|i| (0..PIECE / BLOCK).map(move |b| (i, b * BLOCK))).collect();
    blocks.shuffle(&mut rng);

    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Bytes(len));
    g.sample_size(10);
    for backend in [Backend::Pwrite, Backend::Mmap, Backend::Uring] {
        // Each write sample starts from fresh (fallocated, unwritten) files.
        g.bench_function(format!("write_pieces_{backend:?}"), |b| {
            b.iter_batched(
                tempdir,
                |dir| write_all(backend, &info, dir.path(), &order, &piece),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    let dir = tempdir();
    write_all(Backend::Pwrite, &info, dir.path(), &order, &piece);
    for backend in [Backend::Pwrite, Backend::Mmap, Backend::Uring] {
        g.bench_function(format!("read_blocks_{backend:?}"), |b| {
            b.iter(|| read_blocks(backend, &info, dir.path(), &blocks))
        });
    }
    for method in [ReadMethod::Mmap, ReadMethod::Pread] {
        g.bench_function(format!("recheck_{method:?}"), |b| {
            b.iter(|| {
                let opts = CheckOptions { method, ..Default::default() };
                let r = recheck(&info, dir.path(), None, opts, &|_| {}).unwrap();
                assert!(r.have.is_full());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
