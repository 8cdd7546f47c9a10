//! Piece picker hot paths on a 10,000-piece torrent (256 KiB pieces, 16 blocks
//! each) with 50 peers: 40 with random half-full bitfields and 10 seeds.
//!
//! * `pick_blocks`: one call picks 16 blocks for the next peer in turn;
//!   throughput is blocks picked per second. Between calls (untimed) the
//!   blocks are delivered and complete pieces verified, so the picker stays in
//!   its steady state: some partial pieces, rarest-first over the rest.
//! * `block_received`: one delivered block, same steady state.
//!
//! Also prints the picker's memory per piece.
//!
//! Run: `cargo bench --bench picker`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringbit::bitfield::Bitfield;
use ringbit::picker::{BlockOutcome, BlockRequest, PeerKey, Picker, PickerConfig, BLOCK_SIZE};

const PIECES: u32 = 10_000;
const PIECE_LENGTH: u32 = 16 * BLOCK_SIZE;
const PEERS: u64 = 50;
const SEEDS: u64 = 10;
const PICK: usize = 16;

fn swarm(seed: u64) -> Picker {
    let total = PIECES as u64 * PIECE_LENGTH as u64 - 1000;
    let mut p = Picker::new(
        PickerConfig::default(),
        PIECE_LENGTH,
        total,
        &Bitfield::new(PIECES),
        &Bitfield::full(PIECES),
        seed,
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for k in 0..PEERS {
        if k < SEEDS {
            p.add_peer_have_all(PeerKey(k)).unwrap();
        } else {
            let mut b = Bitfield::new(PIECES);
            for i in 0..PIECES {
                if rng.gen_bool(0.5) {
                    b.set(i);
                }
            }
            p.add_peer_bitfield(PeerKey(k), &b).unwrap();
        }
    }
    p
}

/// The steady-state loop: `pick` for peer `turn % PEERS`, then deliver what
/// was picked. Times only the operation under test.
struct Steady {
    picker: Picker,
    out: Vec<BlockRequest>,
    cancel: Vec<PeerKey>,
    turn: u64,
    seed: u64,
}

impl Steady {
    fn new() -> Steady {
        Steady {
            picker: swarm(1),
            out: Vec::with_capacity(64),
            cancel: Vec::new(),
            turn: 0,
            seed: 1,
        }
    }

    fn next_peer(&mut self) -> PeerKey {
        if self.picker.is_finished() {
            self.seed += 1;
            self.picker = swarm(self.seed);
        }
        self.turn += 1;
        PeerKey(self.turn % PEERS)
    }

    fn deliver(&mut self, peer: PeerKey) -> Duration {
        let mut timed = Duration::ZERO;
        for i in 0..self.out.len() {
            let b = self.out[i];
            self.cancel.clear();
            let start = Instant::now();
            let r = self.picker.block_received(peer, b, &mut self.cancel).unwrap();
            timed += start.elapsed();
            if r == BlockOutcome::PieceComplete {
                self.picker.piece_verified(b.piece).unwrap();
            }
        }
        timed
    }
}

fn bench(c: &mut Criterion) {
    let p = swarm(1);
    eprintln!(
        "picker memory: {} bytes for {PIECES} pieces and {PEERS} peers = {:.1} bytes/piece",
        p.memory_bytes(),
        p.memory_bytes() as f64 / PIECES as f64
    );
    let mut g = c.benchmark_group("picker_10k_pieces_50_peers");
    g.throughput(Throughput::Elements(PICK as u64));
    g.bench_function("pick_blocks_16", |b| {
        let mut s = Steady::new();
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let peer = s.next_peer();
                s.out.clear();
                let start = Instant::now();
                s.picker.pick_blocks(peer, PICK, None, &mut s.out).unwrap();
                timed += start.elapsed();
                s.deliver(peer);
            }
            timed
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("block_received", |b| {
        let mut s = Steady::new();
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let peer = s.next_peer();
                s.out.clear();
                s.picker.pick_blocks(peer, PICK, None, &mut s.out).unwrap();
                let n = (s.out.len() as u64).min(iters - done);
                s.out.truncate(n as usize);
                timed += s.deliver(peer);
                done += n.max(1);
            }
            timed
        })
    });
    g.finish();
    let mut s = Steady::new();
    let mut full_run = || {
        let start = Instant::now();
        let mut blocks = 0u64;
        while !s.picker.is_finished() {
            let peer = PeerKey(s.turn % PEERS);
            s.turn += 1;
            s.out.clear();
            s.picker.pick_blocks(peer, PICK, None, &mut s.out).unwrap();
            blocks += s.out.len() as u64;
            s.deliver(peer);
        }
        (blocks, start.elapsed())
    };
    let (blocks, took) = full_run();
    eprintln!(
        "whole download of {blocks} blocks (pick + receive + verify): {:?} = {:.1} M blocks/s",
        took,
        blocks as f64 / took.as_secs_f64() / 1e6
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
