//! A seeded, virtual-time swarm simulation: several [`TorrentCore`]s linked in
//! memory with latency, bandwidth, jitter and stalls, driven exactly as the
//! shard driver drives them (bytes in, actions out, rate-limit wake-ups
//! honoured when due). No sockets, no clock.
//!
//! Every failure message carries the seed; rerun one with
//! `RINGBIT_SIM_SEED=<seed> cargo test --lib torrent::sim`.

use super::*;
use crate::hash::sha1;
use crate::wire::{decode_handshake, HandshakeDecoded, HANDSHAKE_LEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const STEP: Duration = Duration::from_millis(1);

/// One direction of a connection: bytes in flight with their arrival time.
struct Pipe {
    in_flight: VecDeque<(Instant, Vec<u8>)>,
    /// Bytes not yet fed to the receiver (partial messages stay here).
    pending: Vec<u8>,
    /// Earliest time the next chunk may leave (bandwidth).
    free_at: Instant,
}

struct Link {
    a: usize,
    b: usize,
    a_conn: Option<ConnId>,
    b_conn: Option<ConnId>,
    a_to_b: Pipe,
    b_to_a: Pipe,
    closed: bool,
}

struct Node {
    core: TorrentCore,
    data: Vec<u8>,
    /// Sends garbage in place of every block it serves.
    corrupt: bool,
    completed_at: Option<Instant>,
}

struct Swarm {
    rng: StdRng,
    seed: u64,
    now: Instant,
    start: Instant,
    nodes: Vec<Node>,
    links: Vec<Link>,
    latency: Duration,
    jitter_ms: u64,
    bytes_per_ms: usize,
    /// Chance in a million per chunk of a 200 ms stall (a TCP retransmit).
    stall_ppm: u32,
    payload: Vec<u8>,
}

fn pipe(now: Instant) -> Pipe {
    Pipe { in_flight: VecDeque::new(), pending: Vec::new(), free_at: now }
}

impl Swarm {
    fn new(seed: u64, payload_len: usize, piece_length: u32, leechers: usize) -> Swarm {
        let mut rng = StdRng::seed_from_u64(seed);
        let payload: Vec<u8> = (0..payload_len).map(|_| rng.gen()).collect();
        let piece_hashes: Vec<[u8; 20]> = payload.chunks(piece_length as usize).map(sha1).collect();
        let count = piece_hashes.len() as u32;
        let now = Instant::now();
        let mut nodes = Vec::new();
        for i in 0..=leechers {
            let mut id = [0u8; 12];
            rng.fill(&mut id);
            let params = TorrentParams {
                info_hash: InfoHash([7; 20]),
                piece_length,
                total_length: payload_len as u64,
                piece_hashes: piece_hashes.clone(),
                our_peer_id: PeerId::ours(id),
                listen_port: Some(6000 + i as u16),
                metadata_size: None,
            };
            let config = TorrentConfig { seed: rng.gen(), ..TorrentConfig::default() };
            let seeder = i == 0;
            let have = if seeder { Bitfield::full(count) } else { Bitfield::new(count) };
            let data = if seeder { payload.clone() } else { vec![0; payload_len] };
            let core = TorrentCore::new(params, config, have, &Bitfield::full(count)).unwrap();
            nodes.push(Node { core, data, corrupt: false, completed_at: None });
        }
        Swarm {
            rng,
            seed,
            now,
            start: now,
            nodes,
            links: Vec::new(),
            latency: Duration::from_millis(20),
            jitter_ms: 5,
            bytes_per_ms: 64 * 1024,
            stall_ppm: 2000,
            payload,
        }
    }

    /// Node `n` claims every piece but serves garbage.
    fn make_corrupt_seed(&mut self, n: usize) {
        let count = self.nodes[n].core.have().len();
        let params = self.nodes[n].core.params.clone();
        let full = Bitfield::full(count);
        self.nodes[n].core =
            TorrentCore::new(params, TorrentConfig::default(), full.clone(), &full).unwrap();
        self.nodes[n].corrupt = true;
        self.nodes[n].completed_at = Some(self.now);
    }

    /// Node `n` becomes a second honest seed (every piece, the real data).
    fn make_seed(&mut self, n: usize) {
        let count = self.nodes[n].core.have().len();
        let params = self.nodes[n].core.params.clone();
        let full = Bitfield::full(count);
        self.nodes[n].core =
            TorrentCore::new(params, TorrentConfig::default(), full.clone(), &full).unwrap();
        self.nodes[n].data = self.payload.clone();
        self.nodes[n].completed_at = Some(self.now);
    }

    /// Seconds from the start until every leecher in `leechers` completed.
    fn completion_secs(&self, leechers: std::ops::RangeInclusive<usize>) -> f64 {
        leechers
            .map(|i| {
                let at = self.nodes[i]
                    .completed_at
                    .unwrap_or_else(|| panic!("seed {}: leecher {i} did not complete", self.seed));
                (at - self.start).as_secs_f64()
            })
            .fold(0.0, f64::max)
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i as u8 + 1], 6000 + i as u16))
    }

    /// `a` dials `b`.
    fn connect(&mut self, a: usize, b: usize) {
        let conn = self.nodes[a].core.connected(Self::addr(b), self.now).unwrap();
        self.links.push(Link {
            a,
            b,
            a_conn: Some(conn),
            b_conn: None,
            a_to_b: pipe(self.now),
            b_to_a: pipe(self.now),
            closed: false,
        });
    }

    fn run(&mut self, limit: Duration) {
        let mut next_tick = self.now;
        while self.now - self.start < limit {
            if self.nodes[1..].iter().all(|n| n.completed_at.is_some()) {
                return;
            }
            if self.now >= next_tick {
                for node in &mut self.nodes {
                    node.core.tick(self.now);
                }
                next_tick += Duration::from_secs(1);
            }
            for node in &mut self.nodes {
                if node.core.rate_limit_wakeup().is_some_and(|at| at <= self.now) {
                    node.core.rate_limit_tick(self.now);
                }
            }
            for l in 0..self.links.len() {
                self.pump(l);
            }
            for n in 0..self.nodes.len() {
                self.run_actions(n);
            }
            for n in 1..self.nodes.len() {
                let node = &mut self.nodes[n];
                if node.completed_at.is_none() && node.core.is_finished() {
                    node.completed_at = Some(self.now);
                }
            }
            self.now += STEP;
        }
    }

    /// Moves bytes across one link in both directions.
    fn pump(&mut self, l: usize) {
        if self.links[l].closed {
            return;
        }
        for dir in 0..2 {
            let (from, to) = if dir == 0 {
                (self.links[l].a, self.links[l].b)
            } else {
                (self.links[l].b, self.links[l].a)
            };
            // Sender side: take what the core queued, schedule its arrival.
            let from_conn = if dir == 0 { self.links[l].a_conn } else { self.links[l].b_conn };
            if let Some(conn) = from_conn {
                let mut out = Vec::new();
                self.nodes[from].core.take_outgoing(conn, &mut out);
                if !out.is_empty() {
                    let stall = self.rng.gen_range(0..1_000_000) < self.stall_ppm;
                    let jitter = Duration::from_millis(self.rng.gen_range(0..=self.jitter_ms));
                    let transmit = Duration::from_millis((out.len() / self.bytes_per_ms) as u64);
                    let link = &mut self.links[l];
                    let p = if dir == 0 { &mut link.a_to_b } else { &mut link.b_to_a };
                    let leave = p.free_at.max(self.now) + transmit;
                    p.free_at = leave;
                    let mut arrive = leave + self.latency + jitter;
                    if stall {
                        arrive += Duration::from_millis(200);
                    }
                    // TCP keeps order: never arrive before the previous chunk.
                    if let Some((last, _)) = p.in_flight.back() {
                        arrive = arrive.max(*last);
                    }
                    p.in_flight.push_back((arrive, out));
                }
            }
            // Receiver side: deliver what has arrived.
            let now = self.now;
            let link = &mut self.links[l];
            let p = if dir == 0 { &mut link.a_to_b } else { &mut link.b_to_a };
            while p.in_flight.front().is_some_and(|(t, _)| *t <= now) {
                let (_, bytes) = p.in_flight.pop_front().unwrap();
                p.pending.extend_from_slice(&bytes);
            }
            if p.pending.is_empty() {
                continue;
            }
            let mut pending = std::mem::take(&mut p.pending);
            let to_conn = if dir == 0 { link.b_conn } else { link.a_conn };
            let to_conn = match to_conn {
                Some(c) => c,
                None => {
                    // The accepting side routes on the handshake, as the
                    // listener does.
                    match decode_handshake(&pending) {
                        Ok(HandshakeDecoded::Done(hs)) => {
                            let from_addr = Self::addr(from);
                            match self.nodes[to].core.accepted(from_addr, hs, now) {
                                Ok(c) => {
                                    pending.drain(..HANDSHAKE_LEN);
                                    self.links[l].b_conn = Some(c);
                                    c
                                }
                                Err(_) => {
                                    self.links[l].closed = true;
                                    return;
                                }
                            }
                        }
                        Ok(HandshakeDecoded::NeedMore(_)) => {
                            let link = &mut self.links[l];
                            let p = if dir == 0 { &mut link.a_to_b } else { &mut link.b_to_a };
                            p.pending = pending;
                            continue;
                        }
                        Err(_) => {
                            self.links[l].closed = true;
                            return;
                        }
                    }
                }
            };
            let used = self.nodes[to].core.on_data(to_conn, &pending, now);
            pending.drain(..used);
            let link = &mut self.links[l];
            let p = if dir == 0 { &mut link.a_to_b } else { &mut link.b_to_a };
            p.pending = pending;
        }
    }

    fn run_actions(&mut self, n: usize) {
        while let Some(action) = self.nodes[n].core.poll_action() {
            let now = self.now;
            let node = &mut self.nodes[n];
            match action {
                Action::HashPiece { piece, data, expected } => {
                    let ok = sha1(&data) == expected;
                    node.core.piece_hashed(piece, ok, data);
                }
                Action::WritePiece { piece, data } => {
                    let start = piece as usize * node.core.params.piece_length as usize;
                    node.data[start..start + data.len()].copy_from_slice(&data);
                    node.core.piece_written(piece, true, data, now);
                }
                Action::ReadBlock { conn, request } => {
                    let start = request.piece as usize * node.core.params.piece_length as usize
                        + request.begin as usize;
                    let mut block = node.data[start..start + request.length as usize].to_vec();
                    if node.corrupt {
                        block.iter_mut().for_each(|b| *b = !*b);
                    }
                    node.core.block_read(conn, request, Some(&block), now);
                }
                Action::Disconnect { conn, .. } => {
                    for link in &mut self.links {
                        if (link.a == n && link.a_conn == Some(conn))
                            || (link.b == n && link.b_conn == Some(conn))
                        {
                            link.closed = true;
                            let (other, other_conn) = if link.a == n {
                                (link.b, link.b_conn)
                            } else {
                                (link.a, link.a_conn)
                            };
                            if let Some(c) = other_conn {
                                self.nodes[other].core.closed(c);
                            }
                            if link.a == n {
                                link.a_conn = None;
                            } else {
                                link.b_conn = None;
                            }
                            break;
                        }
                    }
                }
                Action::Completed | Action::Peers(_) | Action::WebSeedDisabled { .. } => {}
                Action::FetchWebSeed { .. } => {}
            }
        }
    }

    fn assert_complete(&self) {
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            if node.corrupt {
                continue;
            }
            assert!(
                node.completed_at.is_some(),
                "seed {}: leecher {i} did not complete ({} of {} pieces)",
                self.seed,
                node.core.have().count(),
                node.core.have().len()
            );
            assert!(node.data == self.payload, "seed {}: leecher {i} data differs", self.seed);
            node.core.picker.check_invariants();
        }
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("RINGBIT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RINGBIT_SIM_SEED is a number")],
        Err(_) => vec![1, 2, 3, 0xdead_beef],
    }
}

#[test]
fn one_seeder_one_leecher_completes() {
    for seed in seeds() {
        let mut swarm = Swarm::new(seed, 1_000_003, 32 * 1024, 1);
        swarm.connect(1, 0);
        swarm.run(Duration::from_secs(120));
        swarm.assert_complete();
    }
}

#[test]
fn swarm_of_four_leechers_completes_with_stalls_and_trading() {
    for seed in seeds() {
        let mut swarm = Swarm::new(seed, 3 * 1024 * 1024 + 17, 64 * 1024, 4);
        swarm.bytes_per_ms = 16 * 1024;
        swarm.stall_ppm = 20_000;
        // Every leecher dials the seeder and each other: pieces flow between
        // leechers as well as from the seeder.
        for a in 1..=4 {
            swarm.connect(a, 0);
            for b in (a + 1)..=4 {
                swarm.connect(a, b);
            }
        }
        swarm.run(Duration::from_secs(300));
        swarm.assert_complete();
        let uploaded_by_leechers: u64 =
            swarm.nodes[1..].iter().map(|n| n.core.stats().uploaded_bytes).sum();
        assert!(uploaded_by_leechers > 0, "seed {seed}: leechers never traded pieces");
    }
}

#[test]
fn corrupt_peer_is_banned_and_download_completes_from_honest_seeder() {
    for seed in seeds() {
        let mut swarm = Swarm::new(seed, 600_000, 32 * 1024, 2);
        swarm.make_corrupt_seed(2);
        swarm.connect(1, 2);
        swarm.connect(1, 0);
        swarm.run(Duration::from_secs(120));
        swarm.assert_complete();
        let leecher = &swarm.nodes[1].core;
        assert!(leecher.stats().pieces_failed >= 1, "seed {seed}: garbage never detected");
        assert!(
            leecher.banned.contains(Swarm::addr(2).ip()),
            "seed {seed}: corrupt peer not banned"
        );
    }
}

/// Regression (found by tests/it/hostile_peer.rs against a real libtorrent
/// seeder): with pieces of many blocks, a failed piece usually holds blocks
/// from the honest seeder too. Striking every contributor banned the honest
/// seeder along with the corrupt peer, and the download stalled.
#[test]
fn honest_peer_sharing_failed_pieces_with_a_corrupt_peer_is_never_struck() {
    for seed in seeds() {
        let mut swarm = Swarm::new(seed, 4 * 1024 * 1024, 256 * 1024, 2);
        swarm.make_corrupt_seed(2);
        swarm.connect(1, 2);
        swarm.connect(1, 0);
        swarm.run(Duration::from_secs(120));
        swarm.assert_complete();
        let leecher = &swarm.nodes[1].core;
        assert!(leecher.stats().pieces_failed >= 1, "seed {seed}: garbage never detected");
        assert!(
            !leecher.strikes.contains_key(&Swarm::addr(0)),
            "seed {seed}: the honest seeder was struck for the corrupt peer's blocks"
        );
        assert!(
            leecher.banned.contains(Swarm::addr(2).ip()),
            "seed {seed}: corrupt peer not banned"
        );
    }
}

/// Rates and sizes of the rate-limit simulations: 2 MiB at 512 KiB/s should
/// take 4 s; the links carry 64 MiB/s, so unlimited it takes well under 1 s.
const LIMITED_PAYLOAD: usize = 2 * 1024 * 1024;
const LIMIT_BYTES_PER_S: u64 = 512 * 1024;

/// `secs` is about `LIMITED_PAYLOAD / LIMIT_BYTES_PER_S`: within 15% (the
/// first burst and the ramp-up pull opposite ways).
fn assert_takes_size_over_limit(secs: f64, seed: u64, what: &str) {
    let expected = LIMITED_PAYLOAD as f64 / LIMIT_BYTES_PER_S as f64;
    assert!(
        (expected * 0.85..=expected * 1.15).contains(&secs),
        "seed {seed}: {what} took {secs:.2} s, expected about {expected:.2} s"
    );
}

/// Goal: an upload limit on the seeder paces the whole transfer.
/// Setup: 1 seeder with a 512 KiB/s upload limit, 1 leecher, 2 MiB over a
/// 64 MiB/s link; the same swarm again unlimited.
/// Check: limited, completion takes size / limit (4 s, within 15%);
/// unlimited, under a quarter of that.
#[test]
fn upload_limit_makes_a_transfer_take_size_over_limit() {
    for seed in seeds() {
        let mut swarm = Swarm::new(seed, LIMITED_PAYLOAD, 64 * 1024, 1);
        swarm.connect(1, 0);
        swarm.run(Duration::from_secs(60));
        swarm.assert_complete();
        let unlimited = swarm.completion_secs(1..=1);

        let mut swarm = Swarm::new(seed, LIMITED_PAYLOAD, 64 * 1024, 1);
        let now = swarm.now;
        swarm.nodes[0].core.set_rate_limits(now, LIMIT_BYTES_PER_S, 0);
        swarm.connect(1, 0);
        swarm.run(Duration::from_secs(60));
        swarm.assert_complete();
        let limited = swarm.completion_secs(1..=1);
        assert_takes_size_over_limit(limited, seed, "upload-limited transfer");
        assert!(unlimited < limited / 4.0, "seed {seed}: unlimited took {unlimited:.2} s");
    }
}

/// Goal: a download limit on the leecher paces the transfer the same way.
/// Setup: 1 seeder, 1 leecher with a 512 KiB/s download limit, 2 MiB.
/// Check: completion takes size / limit (within 15%).
#[test]
fn download_limit_makes_a_transfer_take_size_over_limit() {
    for seed in seeds() {
        let mut swarm = Swarm::new(seed, LIMITED_PAYLOAD, 64 * 1024, 1);
        let now = swarm.now;
        swarm.nodes[1].core.set_rate_limits(now, 0, LIMIT_BYTES_PER_S);
        swarm.connect(1, 0);
        swarm.run(Duration::from_secs(60));
        swarm.assert_complete();
        let secs = swarm.completion_secs(1..=1);
        assert_takes_size_over_limit(secs, seed, "download-limited transfer");
    }
}

/// Goal: the process-wide limit is honest across torrents: X bytes/s in
/// total, not X per torrent.
/// Setup: two seeders (two torrents of one process, as on two shards) share
/// one 512 KiB/s process upload bucket; one leecher downloads from both.
/// Check: completion takes size / limit, as with a single limited seeder
/// (two independent 512 KiB/s limits would take half as long); both seeders
/// served a share.
#[test]
fn process_upload_limit_is_shared_by_every_torrent() {
    for seed in seeds() {
        let mut swarm = Swarm::new(seed, LIMITED_PAYLOAD, 64 * 1024, 2);
        swarm.make_seed(2);
        let limits = Arc::new(ProcessRateLimits::new(LIMIT_BYTES_PER_S, 0, swarm.now));
        swarm.nodes[0].core.set_process_limits(limits.clone());
        swarm.nodes[2].core.set_process_limits(limits);
        swarm.connect(1, 0);
        swarm.connect(1, 2);
        swarm.run(Duration::from_secs(60));
        swarm.assert_complete();
        let secs = swarm.completion_secs(1..=1);
        assert_takes_size_over_limit(secs, seed, "transfer from two seeders sharing one limit");
        for s in [0, 2] {
            let up = swarm.nodes[s].core.stats().uploaded_bytes;
            assert!(up > 0, "seed {seed}: seeder {s} served nothing");
        }
    }
}
