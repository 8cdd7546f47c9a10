//! A DHT of several [`Dht`] cores linked in memory, on virtual time, with
//! latency and loss: the cores must find each other's peers. Seeded;
//! `RINGBIT_SIM_SEED` reruns one seed.

use super::node::{Dht, DhtConfig, DhtEvent};
use super::table::K;
use crate::metainfo::InfoHash;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// (arrival, sequence, to, from, bytes)
type InFlight = Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>;

struct Net {
    nodes: Vec<(SocketAddr, Dht)>,
    index: HashMap<SocketAddr, usize>,
    wire: BinaryHeap<InFlight>,
    sequence: u64,
    now: Instant,
    rng: StdRng,
    loss: f64,
    events: Vec<(usize, DhtEvent)>,
    delivered: u64,
}

fn seed() -> u64 {
    std::env::var("RINGBIT_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

impl Net {
    /// `count` nodes at public-looking addresses (so BEP 42 and the one
    /// node per IP rule apply), all bootstrapping from node 0.
    fn new(count: usize, seed: u64, loss: f64, configure: impl Fn(usize, &mut DhtConfig)) -> Net {
        let now = Instant::now();
        let addr =
            |i: usize| SocketAddr::from(([198, 51, (i / 250) as u8, (i % 250) as u8 + 1], 6881));
        let mut nodes = Vec::new();
        for i in 0..count {
            let mut config = DhtConfig {
                bootstrap: if i == 0 { Vec::new() } else { vec![addr(0)] },
                ipv6: false,
                seed: seed ^ (i as u64) << 32,
                ..DhtConfig::default()
            };
            configure(i, &mut config);
            nodes.push((addr(i), Dht::new(config, None, now)));
        }
        let index = nodes.iter().enumerate().map(|(i, (a, _))| (*a, i)).collect();
        Net {
            nodes,
            index,
            wire: BinaryHeap::new(),
            sequence: 0,
            now,
            rng: StdRng::seed_from_u64(seed),
            loss,
            events: Vec::new(),
            delivered: 0,
        }
    }

    fn flush(&mut self, i: usize) {
        let from = self.nodes[i].0;
        while let Some((to, bytes)) = self.nodes[i].1.poll_transmit() {
            if self.rng.gen_bool(self.loss) {
                continue;
            }
            let latency = Duration::from_millis(self.rng.gen_range(5..80));
            self.sequence += 1;
            self.wire.push(Reverse((self.now + latency, self.sequence, to, from, bytes)));
        }
        while let Some(event) = self.nodes[i].1.poll_event() {
            self.events.push((i, event));
        }
    }

    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            let timer = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, (_, d))| (d.poll_timeout(), i))
                .min()
                .expect("nodes");
            let packet = self.wire.peek().map(|Reverse(p)| p.0);
            let next = packet.map_or(timer.0, |p| p.min(timer.0)).max(self.now);
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            if packet == Some(next) {
                let Reverse((_, _, to, from, bytes)) = self.wire.pop().expect("peeked");
                if let Some(&i) = self.index.get(&to) {
                    self.nodes[i].1.handle_datagram(from, &bytes, self.now);
                    self.delivered += 1;
                    self.flush(i);
                }
            } else {
                let i = timer.1;
                self.nodes[i].1.handle_timeout(self.now);
                self.flush(i);
            }
        }
    }

    fn peers_found(&self, node: usize, info_hash: InfoHash) -> Vec<SocketAddr> {
        self.events
            .iter()
            .filter(|(i, _)| *i == node)
            .filter_map(|(_, e)| match e {
                DhtEvent::Peers { info_hash: h, peers } if *h == info_hash => Some(peers.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

#[test]
fn nodes_find_each_others_peers() {
    let seed = seed();
    eprintln!("RINGBIT_SIM_SEED={seed}");
    let mut net = Net::new(40, seed, 0.05, |_, _| {});
    net.run_for(Duration::from_secs(60));
    for (addr, dht) in &net.nodes {
        let stats = dht.stats();
        assert!(stats.nodes_v4 >= K as u64, "{addr} knows {} nodes (seed {seed})", stats.nodes_v4);
    }
    let torrent = InfoHash([0x42; 20]);
    let now = net.now;
    net.nodes[7].1.add_torrent(torrent, 7000, now);
    net.run_for(Duration::from_secs(30));
    net.nodes[31].1.add_torrent(torrent, 7001, now);
    net.run_for(Duration::from_secs(30));
    // Tables of 40 nodes are partial: a downloader asks again.
    let now = net.now;
    net.nodes[31].1.lookup_now(&torrent, now);
    net.run_for(Duration::from_secs(30));
    let found = net.peers_found(31, torrent);
    let seeder = SocketAddr::new(net.nodes[7].0.ip(), 7000);
    assert!(found.contains(&seeder), "node 31 found {found:?}, not {seeder} (seed {seed})");
    // The announce went to several nodes, not one.
    let holders = net.nodes.iter().filter(|(_, d)| d.stats().stored_peers > 0).count();
    assert!(holders >= 3, "{holders} nodes store the peer (seed {seed})");
    // BEP 42: enough nodes told each node its address to move its id.
    let conforming = net
        .nodes
        .iter()
        .filter(|(a, d)| super::bep42::conforms(&d.id(super::Family::V4), &a.ip()))
        .count();
    assert!(conforming >= 30, "{conforming} of 40 ids conform (seed {seed})");
}

#[test]
fn read_only_nodes_query_but_are_never_stored_or_asked() {
    let seed = seed();
    eprintln!("RINGBIT_SIM_SEED={seed}");
    let mut net = Net::new(20, seed, 0.0, |i, c| c.read_only = i == 19);
    net.run_for(Duration::from_secs(30));
    let torrent = InfoHash([7; 20]);
    let now = net.now;
    net.nodes[3].1.add_torrent(torrent, 5000, now);
    net.run_for(Duration::from_secs(20));
    net.nodes[19].1.add_torrent(torrent, 5001, now);
    net.run_for(Duration::from_secs(20));
    assert!(net.peers_found(19, torrent).contains(&SocketAddr::new(net.nodes[3].0.ip(), 5000)));
    let ro = net.nodes[19].0;
    for (addr, dht) in &net.nodes[..19] {
        assert!(
            !dht.export().nodes.iter().any(|n| n.addr == ro),
            "{addr} keeps the read-only node"
        );
    }
    assert_eq!(net.nodes[19].1.stats().announces_out, 0);
}

#[test]
fn ten_thousand_torrents_announce_on_a_schedule() {
    let seed = seed();
    let mut net = Net::new(12, seed, 0.0, |_, _| {});
    net.run_for(Duration::from_secs(20));
    let now = net.now;
    for i in 0..10_000u32 {
        let mut hash = [0u8; 20];
        hash[..4].copy_from_slice(&i.to_be_bytes());
        hash[4] = 0x5a;
        assert!(net.nodes[1].1.add_torrent(InfoHash(hash), 6881, now));
    }
    let before = net.nodes[1].1.stats().queries_out;
    net.run_for(Duration::from_secs(1));
    let stats = net.nodes[1].1.stats();
    let config = DhtConfig::default();
    assert!(stats.lookups_active <= config.announce_lookups_max as u64 + 2);
    let started_per_s = 1000 / config.lookup_start_interval_ms + 1;
    let done = net
        .events
        .iter()
        .filter(|(i, e)| *i == 1 && matches!(e, DhtEvent::LookupDone { .. }))
        .count() as u64;
    assert!(done <= started_per_s, "{done} lookups in the first second");
    let sent = stats.queries_out - before;
    assert!(sent < 40 * started_per_s, "{sent} queries in the first second");
}

#[test]
fn hostile_floods_are_bounded() {
    let seed = seed();
    let mut net = Net::new(10, seed, 0.0, |_, _| {});
    net.run_for(Duration::from_secs(20));
    let victim = &mut net.nodes[0].1;
    let now = net.now;
    let attacker: SocketAddr = "203.0.113.66:4000".parse().unwrap();
    // A reply flood: responses to queries never sent.
    let before = victim.stats();
    for i in 0..5000u32 {
        let reply = format!("d1:rd2:id20:{:020}e1:t2:{}1:y1:re", i, "zz");
        victim.handle_datagram(attacker, reply.as_bytes(), now);
    }
    let after = victim.stats();
    assert_eq!(after.dropped_unmatched - before.dropped_unmatched, 5000);
    assert_eq!(after.nodes_v4, before.nodes_v4);
    // A query flood from one IP: answered up to the burst, then dropped.
    while victim.poll_transmit().is_some() {}
    for _ in 0..1000 {
        victim.handle_datagram(
            attacker,
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
            now,
        );
    }
    let mut answers = 0;
    while victim.poll_transmit().is_some() {
        answers += 1;
    }
    let config = DhtConfig::default();
    assert!(answers <= config.queries_per_ip_burst as usize + 1, "{answers} answers");
    assert!(victim.stats().dropped_rate_limited >= 1000 - answers as u64 - 1);
    // Garbage of every size.
    let mut rng = StdRng::seed_from_u64(seed);
    for len in [0usize, 1, 5, 100, 1500, 4096, 4097, 65_000] {
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        victim.handle_datagram(attacker, &bytes, now);
        let mut d = bytes.clone();
        if !d.is_empty() {
            d[0] = b'd';
        }
        victim.handle_datagram(attacker, &d, now);
    }
    // Still answers a well-behaved node.
    victim.handle_datagram(
        "203.0.113.67:1".parse().unwrap(),
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:ab1:y1:qe",
        now,
    );
    assert!(victim.poll_transmit().is_some());
}
