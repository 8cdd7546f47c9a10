//! Storage backends: write whole 256 KiB pieces in random order and flush,
//! read 16 KiB blocks in random order (seeding) from a warm and from a cold
//! page cache, and recheck reads (mmap vs pread), on files in a temp dir
//! (`RINGBIT_BENCH_DIR`, default the system temp dir). Size:
//! `RINGBIT_BENCH_MIB` (default 256).
//!
//! Only the I/O is timed (`iter_custom`): creating and fallocating the files,
//! opening the store and building the io_uring runtime happen before the
//! clock starts, once per sample. Writes are timed up to a successful flush
//! (so a page-cache write and an `O_DIRECT` one are compared on the same
//! terms: bytes durable). Cold reads start with the file's pages dropped
//! from the page cache (`fdatasync` then `POSIX_FADV_DONTNEED` on the file:
//! no root needed, only this file is evicted, other processes keep theirs).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use ringbit::metainfo::{FileEntry, Info};
use ringbit::storage::check::{recheck, CheckOptions, ReadMethod};
use ringbit::storage::{Allocation, Backend, PieceStore, StoreOptions};
use std::rc::Rc;
use std::time::{Duration, Instant};

const PIECE: u32 = 256 << 10;
const BLOCK: u32 = 16 << 10;
/// Whole-piece writes in flight for the uring backend (the engine writes
/// every verified piece at once; a handful are in flight at a time).
const WRITES_IN_FLIGHT: usize = 8;
/// Block reads in flight for the uring backend (the engine allows 64 per
/// connection; 32 is the floor per shard).
const READS_IN_FLIGHT: usize = 32;

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

/// A write variant: backend, and O_DIRECT for uring.
#[derive(Clone, Copy, Debug)]
struct Variant {
    backend: Backend,
    direct_io: bool,
}

impl Variant {
    fn name(self) -> String {
        match (self.backend, self.direct_io) {
            (Backend::Uring, true) => "Uring_direct".into(),
            (Backend::Uring, false) => "Uring_buffered".into(),
            (b, _) => format!("{b:?}"),
        }
    }

    fn options(self) -> StoreOptions {
        StoreOptions {
            backend: self.backend,
            allocation: Allocation::Full,
            direct_io: self.direct_io,
            ..Default::default()
        }
    }
}

/// Writes every piece in `order` and flushes; returns the time of that alone
/// (the store is opened, files fallocated, before the clock starts).
fn timed_write(
    rt: &tokio_uring::Runtime,
    v: Variant,
    info: &Info,
    dir: &std::path::Path,
    order: &[u32],
    piece: &[u8],
) -> Duration {
    let store = PieceStore::open(info, dir, v.options()).unwrap();
    match v.backend {
        Backend::Uring => rt.block_on(async {
            let store = Rc::new(store);
            // Buffers made before the clock (the engine's come from its pool).
            let mut buffers: Vec<Vec<u8>> = (0..WRITES_IN_FLIGHT).map(|_| piece.to_vec()).collect();
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT));
            let (back_tx, mut back_rx) = tokio::sync::mpsc::unbounded_channel();
            let start = Instant::now();
            let mut handles = Vec::with_capacity(order.len());
            for &i in order {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let buf = match buffers.pop() {
                    Some(b) => b,
                    None => back_rx.recv().await.unwrap(),
                };
                let store = store.clone();
                let back = back_tx.clone();
                handles.push(tokio_uring::spawn(async move {
                    let (r, buf) = store.write_piece(i, buf).await;
                    r.unwrap();
                    let _ = back.send(buf);
                    drop(permit);
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
            store.flush().await.unwrap();
            start.elapsed()
        }),
        _ => {
            let start = Instant::now();
            for &i in order {
                store.write_piece_sync(i, piece).unwrap();
            }
            rt.block_on(store.flush()).unwrap();
            start.elapsed()
        }
    }
}

/// Reads every block of `blocks`; returns the time of the reads alone.
fn timed_read(
    rt: &tokio_uring::Runtime,
    backend: Backend,
    info: &Info,
    dir: &std::path::Path,
    blocks: &[(u32, u32)],
) -> Duration {
    let opts = StoreOptions { backend, allocation: Allocation::Full, ..Default::default() };
    let store = PieceStore::open(info, dir, opts).unwrap();
    match backend {
        Backend::Uring => rt.block_on(async {
            let store = Rc::new(store);
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT));
            let start = Instant::now();
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
            start.elapsed()
        }),
        _ => {
            let mut buf = Vec::with_capacity(BLOCK as usize);
            let start = Instant::now();
            for &(i, begin) in blocks {
                store.read_block_sync(i, begin, BLOCK, &mut buf).unwrap();
            }
            start.elapsed()
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
    // One runtime for every sample: building a ring is not what is measured.
    let rt = tokio_uring::Runtime::new(&tokio_uring::builder()).unwrap();

    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Bytes(len));
    g.sample_size(10);
    let variants = [
        Variant { backend: Backend::Pwrite, direct_io: false },
        Variant { backend: Backend::Mmap, direct_io: false },
        Variant { backend: Backend::Uring, direct_io: false },
        Variant { backend: Backend::Uring, direct_io: true },
    ];
    for v in variants {
        // Each sample writes fresh (fallocated, unwritten) files, made
        // before its clock starts.
        g.bench_function(format!("write_pieces_flushed_{}", v.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempdir();
                    // Open once untimed: creates and fallocates the file.
                    drop(PieceStore::open(&info, dir.path(), v.options()).unwrap());
                    total += timed_write(&rt, v, &info, dir.path(), &order, &piece);
                }
                total
            })
        });
    }
    let dir = tempdir();
    {
        let src = PieceStore::open(&info, dir.path(), variants[0].options()).unwrap();
        for &i in &order {
            src.write_piece_sync(i, &piece).unwrap();
        }
        rt.block_on(src.flush()).unwrap();
    }
    let file = dir.path().join("bench");
    for backend in [Backend::Pwrite, Backend::Mmap, Backend::Uring] {
        g.bench_function(format!("read_blocks_warm_{backend:?}"), |b| {
            b.iter_custom(|iters| {
                (0..iters).map(|_| timed_read(&rt, backend, &info, dir.path(), &blocks)).sum()
            })
        });
        g.bench_function(format!("read_blocks_cold_{backend:?}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        ringbit::storage::drop_page_cache(&file).unwrap();
                        timed_read(&rt, backend, &info, dir.path(), &blocks)
                    })
                    .sum()
            })
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
