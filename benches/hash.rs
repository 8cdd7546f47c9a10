//! SHA1 throughput: one core (`sha1`), the engine's `HashPool` on every core
//! (batches of 256 KiB pieces), and `hash_pieces_parallel` from memory.
//! `sha1_backends` compares the `sha1` crate with OpenSSL on one core (needs
//! `--features openssl-sha1`; scripts/bench-sha1.sh also runs it with the
//! SHA extensions masked, as on a CPU without SHA-NI).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringbit::hash::{default_threads, hash_pieces_parallel, sha1, HashPool, PieceJob};

const PIECE: usize = 256 << 10;
const PIECES: usize = 64; // 16 MiB per iteration

fn bench(c: &mut Criterion) {
    let data: Vec<Vec<u8>> =
        (0..PIECES).map(|i| (0..PIECE).map(|j| (i * 31 + j * 7) as u8).collect()).collect();
    let expected: Vec<[u8; 20]> = data.iter().map(|d| sha1(d)).collect();
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes((PIECE * PIECES) as u64));
    g.sample_size(10);

    g.bench_function("sha1_one_core", |b| {
        b.iter(|| {
            for d in &data {
                std::hint::black_box(sha1(d));
            }
        })
    });

    let pool = HashPool::new(default_threads()).unwrap();
    let mut bufs = Some(data.clone());
    g.bench_function(format!("pool_batch_{}_threads", default_threads()), |b| {
        b.iter(|| {
            let jobs: Vec<PieceJob> = bufs
                .take()
                .unwrap()
                .into_iter()
                .enumerate()
                .map(|(i, buf)| PieceJob { index: i as u32, buf, expected: expected[i] })
                .collect();
            let verdicts = pool.submit_batch(jobs).unwrap().blocking_recv().unwrap();
            assert!(verdicts.iter().all(|v| v.ok));
            // Buffers come back with their verdicts: reuse them.
            bufs = Some(verdicts.into_iter().map(|v| v.buf).collect());
        })
    });

    g.bench_function(format!("pool_single_{}_threads", default_threads()), |b| {
        b.iter(|| {
            let mut current = bufs.take().unwrap();
            let rxs: Vec<_> = current
                .drain(..)
                .enumerate()
                .map(|(i, buf)| pool.submit(i as u32, buf, expected[i]).unwrap())
                .collect();
            for rx in rxs {
                let v = rx.blocking_recv().unwrap();
                assert!(v.ok);
                current.push(v.buf);
            }
            bufs = Some(current);
        })
    });

    g.bench_function(format!("parallel_from_memory_{}_threads", default_threads()), |b| {
        b.iter(|| {
            hash_pieces_parallel::<(), _, _>(
                PIECES as u32,
                default_threads(),
                |i, buf| {
                    buf.extend_from_slice(&data[i as usize]);
                    Ok(())
                },
                |_| {},
            )
            .unwrap()
        })
    });
    g.finish();
}

fn backends(c: &mut Criterion) {
    use sha1::Digest;
    let data: Vec<u8> = (0..(4usize << 20)).map(|j| (j * 7 + j / 4099) as u8).collect();
    let mut g = c.benchmark_group("sha1_backends");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("sha1_crate", |b| {
        b.iter(|| {
            let digest: [u8; 20] = sha1::Sha1::digest(std::hint::black_box(&data)).into();
            digest
        })
    });
    #[cfg(feature = "openssl-sha1")]
    g.bench_function("openssl", |b| b.iter(|| openssl::sha::sha1(std::hint::black_box(&data))));
    g.finish();
}

criterion_group!(benches, bench, backends);
criterion_main!(benches);
