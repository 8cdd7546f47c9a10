//! uTP engine alone: two `Endpoint`s linked in memory (no sockets, no loss),
//! moving 16 MiB one way. Measures the engine's cost per byte and per packet
//! (header, windows, SACK, LEDBAT, copies into and out of the rings): the
//! ceiling a driver can reach before syscalls.
//!
//! Run: `cargo bench --bench utp`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringbit::utp::{Endpoint, Event, ReadOutcome, UtpConfig, MAX_DATAGRAM_BYTES};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TRANSFER_BYTES: usize = 16 * 1024 * 1024;

/// Moves `TRANSFER_BYTES` from a to b; returns the datagrams exchanged.
fn transfer(config: UtpConfig) -> u64 {
    let mut now = Instant::now();
    let a_addr = SocketAddr::from(([127, 0, 0, 1], 1));
    let b_addr = SocketAddr::from(([127, 0, 0, 1], 2));
    let mut a = Endpoint::new(config, 1, now).unwrap();
    let mut b = Endpoint::new(config, 2, now).unwrap();
    let conn = a.connect(now, b_addr).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let mut read_buf = vec![0u8; 256 * 1024];
    let mut packet = vec![0u8; MAX_DATAGRAM_BYTES];
    let (mut written, mut received, mut datagrams) = (0usize, 0usize, 0u64);
    let mut server = None;
    let mut rounds = 0u64;
    while received < TRANSFER_BYTES {
        rounds += 1;
        assert!(rounds < 50_000_000, "transfer stalled at {received} bytes");
        while written < TRANSFER_BYTES {
            let end = (TRANSFER_BYTES - written).min(chunk.len());
            match a.write(conn, &chunk[..end]) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n,
            }
        }
        while let Some(t) = a.poll_transmit(now, &mut packet) {
            let _ = b.handle_datagram(now, a_addr, &packet[..t.len]);
            datagrams += 1;
        }
        while let Some((h, ev)) = b.poll_event() {
            if ev == Event::Incoming {
                server = Some(h);
            }
        }
        if let Some(s) = server {
            while let Ok(ReadOutcome::Data(n)) = b.read(s, &mut read_buf) {
                received += n;
                black_box(&read_buf[..n]);
            }
        }
        while let Some(t) = b.poll_transmit(now, &mut packet) {
            let _ = a.handle_datagram(now, b_addr, &packet[..t.len]);
            datagrams += 1;
        }
        while a.poll_event().is_some() {}
        // A 20 µs round trip of virtual time, so RTT samples are real.
        now += Duration::from_micros(20);
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    datagrams
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("utp");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(TRANSFER_BYTES as u64));
    g.bench_function("linked_endpoints_16MiB_1400B_payload", |bench| {
        bench.iter(|| black_box(transfer(UtpConfig::default())))
    });
    let jumbo = UtpConfig { payload_bytes: 16 * 1024, ..UtpConfig::default() };
    g.bench_function("linked_endpoints_16MiB_16KiB_payload", |bench| {
        bench.iter(|| black_box(transfer(jumbo)))
    });
    g.finish();
    // Packets per second for the report.
    let start = Instant::now();
    let datagrams = transfer(UtpConfig::default());
    let secs = start.elapsed().as_secs_f64();
    println!(
        "utp engine: {datagrams} datagrams for 16 MiB in {secs:.3} s = {:.0} datagrams/s, {:.0} MiB/s",
        datagrams as f64 / secs,
        16.0 / secs
    );
}

criterion_group!(benches, engine);
criterion_main!(benches);
