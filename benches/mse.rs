//! MSE/PE costs: RC4 en/decryption in place over a 256 KiB buffer (one
//! socket read or write of a peer connection), and one whole handshake
//! (two 768-bit DH exponentiations per side, the scans, RC4 keying with its
//! 1024-byte discard).
//!
//! Run: `cargo bench --bench mse`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringbit::mse::{
    Cipher, EncryptionPolicy, Initiator, Responder, Status, CRYPTO_PLAINTEXT, CRYPTO_RC4,
};
use std::hint::black_box;

const BUFFER_BYTES: usize = 256 * 1024;
const HASH: [u8; 20] = [5; 20];

/// Runs a handshake to the end; returns the initiator's cipher.
fn handshake(provide: u32, policy: EncryptionPolicy) -> (Cipher, Cipher) {
    let mut a = Initiator::new(HASH, [1; 20], provide, &[0; 64], Vec::new()).unwrap();
    let mut b = Responder::new([2; 20], &[0; 64], policy);
    let find = |_: &[u8; 20]| Some(HASH);
    let mut buf = Vec::new();
    loop {
        a.take_output(&mut buf);
        let b_status = b.feed(&buf, find).unwrap();
        buf.clear();
        b.take_output(&mut buf);
        let a_status = a.feed(&buf).unwrap();
        buf.clear();
        if a_status == Status::Done && b_status == Status::Done {
            break;
        }
    }
    (a.finish().unwrap().encrypt, b.finish().unwrap().decrypt)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("mse");
    group.throughput(Throughput::Bytes(BUFFER_BYTES as u64));
    let (mut encrypt, _) = handshake(CRYPTO_RC4, EncryptionPolicy::Require);
    let mut buf = vec![0x5au8; BUFFER_BYTES];
    group.bench_function("rc4_in_place_256k", |b| {
        b.iter(|| {
            encrypt.apply(black_box(&mut buf));
        })
    });
    let (mut plain, _) = handshake(CRYPTO_PLAINTEXT | CRYPTO_RC4, EncryptionPolicy::Prefer);
    group.bench_function("plaintext_pass_256k", |b| {
        b.iter(|| {
            plain.apply(black_box(&mut buf));
        })
    });
    group.finish();
    c.bench_function("mse_handshake_both_sides", |b| {
        b.iter(|| handshake(CRYPTO_RC4, EncryptionPolicy::Require))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
