//! Virtual-time tests of the uTP engine: two (or more) [`Endpoint`]s linked in
//! memory through a seeded link with latency, jitter, a bandwidth bottleneck
//! with a bounded queue, loss, reordering and duplication. Transfers must
//! arrive byte-identical; hostile datagrams must change nothing.
//!
//! Every run prints its seed when it fails; `RINGBIT_UTP_SEED` reruns one.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// A one-way path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkConfig {
    pub latency: Duration,
    pub jitter: Duration,
    /// Bottleneck rate; 0 = unlimited.
    pub bytes_per_s: u64,
    /// Tail drop when the bottleneck queue holds more than this delay.
    pub max_queue: Duration,
    pub loss: f64,
    pub duplicate: f64,
    /// Chance that a packet is held back by an extra latency (reordering).
    pub reorder: f64,
}

impl LinkConfig {
    pub(crate) fn clean(latency_ms: u64) -> Self {
        Self {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::ZERO,
            bytes_per_s: 0,
            max_queue: Duration::from_secs(1),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

struct InFlight {
    at: Instant,
    order: u64,
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// Two endpoints and the link between them.
pub(crate) struct Net {
    pub now: Instant,
    pub eps: Vec<Endpoint>,
    pub addrs: Vec<SocketAddr>,
    links: Vec<LinkConfig>,
    link_free_at: Vec<Instant>,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    rng: StdRng,
    buf: Vec<u8>,
    pub delivered: u64,
    pub dropped: u64,
    /// Datagrams an endpoint ignored, by (endpoint, reason).
    pub ignored: std::collections::BTreeMap<(usize, String), u64>,
}

pub(crate) fn seed_or(default: u64) -> u64 {
    std::env::var("RINGBIT_UTP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

impl Net {
    /// `links[i]`: the path *into* endpoint `i`.
    pub(crate) fn new(configs: &[UtpConfig], links: &[LinkConfig], seed: u64) -> Self {
        let now = Instant::now();
        let eps = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Endpoint::new(*c, seed.wrapping_add(i as u64 * 7919), now).unwrap())
            .collect();
        Self {
            now,
            eps,
            addrs: (0..configs.len())
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 6881 + i as u16)))
                .collect(),
            links: links.to_vec(),
            link_free_at: vec![now; configs.len()],
            queue: BinaryHeap::new(),
            order: 0,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            buf: vec![0; MAX_DATAGRAM_BYTES],
            delivered: 0,
            dropped: 0,
            ignored: Default::default(),
        }
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.addrs.iter().position(|a| *a == addr)
    }

    /// Puts one datagram on the wire toward `to`.
    pub(crate) fn send_raw(&mut self, from: SocketAddr, to: usize, bytes: Vec<u8>) {
        let link = self.links[to];
        if self.rng.gen_bool(link.loss) {
            self.dropped += 1;
            return;
        }
        let mut at = self.now;
        // A bottleneck: serialisation time per datagram (28 bytes of IP and
        // UDP headers), a queue of bounded delay.
        let wire_ns = ((bytes.len() as u64 + 28) * 1_000_000_000).checked_div(link.bytes_per_s);
        if let Some(wire_ns) = wire_ns {
            let start = self.link_free_at[to].max(self.now);
            if start.saturating_duration_since(self.now) > link.max_queue {
                self.dropped += 1;
                return;
            }
            let serialise = Duration::from_nanos(wire_ns);
            self.link_free_at[to] = start + serialise;
            at = start + serialise;
        }
        at += link.latency;
        if !link.jitter.is_zero() {
            at += link.jitter.mul_f64(self.rng.gen::<f64>());
        }
        if self.rng.gen_bool(link.reorder) {
            at += link.latency.max(Duration::from_millis(1)) * 2;
        }
        let copies = if self.rng.gen_bool(link.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            self.order += 1;
            self.queue.push(Reverse(InFlight {
                at,
                order: self.order,
                to,
                from,
                bytes: bytes.clone(),
            }));
        }
    }

    /// Drains every endpoint's transmits onto the link.
    pub(crate) fn flush(&mut self) {
        for i in 0..self.eps.len() {
            let mut sent = 0u32;
            while let Some(t) = self.eps[i].poll_transmit(self.now, &mut self.buf) {
                sent += 1;
                assert!(
                    sent < 1_000_000,
                    "endpoint {i} transmits without end: {:?}",
                    &self.buf[..20]
                );
                let bytes = self.buf[..t.len].to_vec();
                if let Some(to) = self.index_of(t.addr) {
                    let from = self.addrs[i];
                    self.send_raw(from, to, bytes);
                }
            }
        }
    }

    /// Advances to the next delivery or timer; false when nothing is left.
    pub(crate) fn step(&mut self) -> bool {
        self.flush();
        let next_packet = self.queue.peek().map(|r| r.0.at);
        let next_timer = self.eps.iter().filter_map(|e| e.poll_timeout()).min();
        let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        while self.queue.peek().is_some_and(|r| r.0.at <= self.now) {
            let Reverse(p) = self.queue.pop().unwrap();
            self.delivered += 1;
            if let Err(e) = self.eps[p.to].handle_datagram(self.now, p.from, &p.bytes) {
                *self.ignored.entry((p.to, format!("{e:?}"))).or_default() += 1;
            }
        }
        for e in &mut self.eps {
            e.handle_timeout(self.now);
        }
        true
    }
}

/// What one side of a transfer does with its connection.
struct Side {
    conn: Option<ConnHandle>,
    to_send: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
    finished: bool,
    closed: Option<CloseReason>,
    /// Reads are held off until this time (zero-window tests).
    read_after: Option<Instant>,
}

impl Side {
    fn new(to_send: Vec<u8>) -> Self {
        Self {
            conn: None,
            to_send,
            sent: 0,
            received: Vec::new(),
            finished: false,
            closed: None,
            read_after: None,
        }
    }

    /// Writes, reads and closes as far as the endpoint allows.
    fn drive(&mut self, ep: &mut Endpoint, now: Instant) {
        let Some(h) = self.conn else { return };
        while self.closed.is_none() && self.sent < self.to_send.len() {
            match ep.write(h, &self.to_send[self.sent..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.sent += n,
            }
        }
        if self.closed.is_none() && self.sent == self.to_send.len() {
            let _ = ep.close(h);
        }
        if self.read_after.is_some_and(|t| now < t) {
            return;
        }
        let mut buf = [0u8; 64 * 1024];
        loop {
            match ep.read(h, &mut buf) {
                Ok(ReadOutcome::Data(n)) => self.received.extend_from_slice(&buf[..n]),
                Ok(ReadOutcome::Finished) => {
                    self.finished = true;
                    break;
                }
                _ => break,
            }
        }
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

struct Outcome {
    elapsed: Duration,
    client_stats: ConnStats,
    server_stats: ConnStats,
}

/// Client (endpoint 0) connects to server (endpoint 1); each sends its bytes
/// and closes; both must receive the other's bytes exactly and finish.
fn transfer(
    seed: u64,
    config: UtpConfig,
    links: [LinkConfig; 2],
    client_bytes: usize,
    server_bytes: usize,
    server_read_after: Option<Duration>,
    max_virtual: Duration,
) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut net = Net::new(&[config, config], &links, seed);
    let start = net.now;
    let mut client = Side::new(random_bytes(&mut rng, client_bytes));
    let mut server = Side::new(random_bytes(&mut rng, server_bytes));
    server.read_after = server_read_after.map(|d| start + d);
    let server_addr = net.addrs[1];
    client.conn = Some(net.eps[0].connect(net.now, server_addr).unwrap());
    let mut steps = 0u64;
    loop {
        for (i, side) in [&mut client, &mut server].into_iter().enumerate() {
            while let Some((h, ev)) = net.eps[i].poll_event() {
                match ev {
                    Event::Incoming => {
                        assert!(side.conn.is_none(), "seed {seed}: second incoming connection");
                        side.conn = Some(h);
                    }
                    Event::Closed(r) => side.closed = Some(r),
                    _ => {}
                }
            }
            side.drive(&mut net.eps[i], net.now);
        }
        if client.closed.is_some() && server.closed.is_some() {
            break;
        }
        steps += 1;
        assert!(steps < 50_000_000, "seed {seed}: step bound");
        assert!(
            net.now - start < max_virtual,
            "seed {seed}: not done after {max_virtual:?}: client sent {}/{} got {}/{}, server got {}",
            client.sent,
            client_bytes,
            client.received.len(),
            server_bytes,
            server.received.len()
        );
        if !net.step() {
            panic!("seed {seed}: stalled with nothing scheduled");
        }
    }
    if client.closed != Some(CloseReason::Finished) || server.closed != Some(CloseReason::Finished)
    {
        eprintln!(
            "seed {seed} at {:?}: client {:?} {:?}",
            net.now - start,
            client.closed,
            net.eps[0].conn_stats(client.conn.unwrap())
        );
        eprintln!("server {:?} {:?}", server.closed, server.conn.map(|s| net.eps[1].conn_stats(s)));
        eprintln!("ignored {:?}", net.ignored);
        eprintln!(
            "sent {} recv {} / {} {}",
            client.sent,
            server.received.len(),
            server.sent,
            client.received.len()
        );
    }
    // Drain the last reads.
    for (i, side) in [&mut client, &mut server].into_iter().enumerate() {
        side.drive(&mut net.eps[i], net.now);
    }
    assert_eq!(client.closed, Some(CloseReason::Finished), "seed {seed}");
    assert_eq!(server.closed, Some(CloseReason::Finished), "seed {seed}");
    assert!(server.received == client.to_send, "seed {seed}: client->server bytes differ");
    assert!(client.received == server.to_send, "seed {seed}: server->client bytes differ");
    assert!(client.finished && server.finished, "seed {seed}: EOF not seen");
    let client_stats = net.eps[0].conn_stats(client.conn.unwrap()).unwrap();
    let server_stats = net.eps[1].conn_stats(server.conn.unwrap()).unwrap();
    for (ep, side) in [(0, &client), (1, &server)] {
        net.eps[ep].release(side.conn.unwrap()).unwrap();
        assert_eq!(net.eps[ep].connection_count(), 0);
        assert_eq!(net.eps[ep].half_open_count(), 0);
    }
    Outcome { elapsed: net.now - start, client_stats, server_stats }
}

const MB: usize = 1024 * 1024;

#[test]
fn clean_link_moves_megabytes_both_ways() {
    let seed = seed_or(1);
    let link = LinkConfig { bytes_per_s: 50 * MB as u64, ..LinkConfig::clean(10) };
    let out = transfer(
        seed,
        UtpConfig::default(),
        [link, link],
        4 * MB,
        2 * MB,
        None,
        Duration::from_secs(60),
    );
    assert_eq!(out.client_stats.timeouts, 0);
    assert_eq!(out.client_stats.retransmissions, 0);
    // 4 MiB at 50 MiB/s with a 20 ms round trip: well under two seconds.
    assert!(out.elapsed < Duration::from_secs(2), "took {:?}", out.elapsed);
}

#[test]
fn lossy_reordering_duplicating_link_stays_byte_identical() {
    let base = seed_or(100);
    for seed in base..base + 6 {
        let link = LinkConfig {
            latency: Duration::from_millis(25),
            jitter: Duration::from_millis(5),
            bytes_per_s: 20 * MB as u64,
            max_queue: Duration::from_millis(300),
            loss: 0.03,
            duplicate: 0.02,
            reorder: 0.03,
        };
        let out = transfer(
            seed,
            UtpConfig::default(),
            [link, link],
            2 * MB,
            MB / 2,
            None,
            Duration::from_secs(120),
        );
        assert!(out.client_stats.retransmissions > 0, "seed {seed}: loss without resends?");
        assert!(out.client_stats.fast_retransmits > 0, "seed {seed}: no fast retransmit");
    }
}

#[test]
fn heavy_loss_still_completes() {
    let base = seed_or(200);
    for seed in base..base + 4 {
        let link = LinkConfig { loss: 0.2, ..LinkConfig::clean(20) };
        transfer(
            seed,
            UtpConfig::default(),
            [link, link],
            256 * 1024,
            64 * 1024,
            None,
            Duration::from_secs(600),
        );
    }
}

#[test]
fn one_percent_loss_and_fifty_ms_delay() {
    // The lossy path: 1% loss, 50 ms delay each way.
    let seed = seed_or(300);
    let link = LinkConfig {
        loss: 0.01,
        bytes_per_s: 10 * MB as u64,
        max_queue: Duration::from_millis(500),
        ..LinkConfig::clean(50)
    };
    let out = transfer(
        seed,
        UtpConfig::default(),
        [link, link],
        4 * MB,
        0,
        None,
        Duration::from_secs(120),
    );
    // Random 1% loss at a 100 ms RTT caps any loss-reacting sender (Reno:
    // 1.22 * MSS / (RTT * sqrt(p)) = 170 KB/s, 25 s for 4 MiB); fast
    // retransmit keeps timeouts rare and the transfer well under that.
    assert!(out.elapsed < Duration::from_secs(20), "took {:?}", out.elapsed);
    assert!(out.client_stats.fast_retransmits > out.client_stats.timeouts);
}

#[test]
fn ledbat_keeps_the_bottleneck_queue_near_the_target() {
    // A 2 MB/s bottleneck with a deep (2 s) queue: a loss-based sender would
    // fill it; LEDBAT must hold queuing delay near 100 ms.
    let seed = seed_or(400);
    let mut link = LinkConfig::clean(20);
    link.bytes_per_s = 2 * MB as u64;
    link.max_queue = Duration::from_secs(2);
    let mut net = Net::new(&[UtpConfig::default(); 2], &[link, link], seed);
    let h = net.eps[0].connect(net.now, net.addrs[1]).unwrap();
    let data = vec![7u8; 64 * 1024];
    let start = net.now;
    let mut server = None;
    let mut max_queue_after_warmup = Duration::ZERO;
    let mut buf = vec![0u8; 64 * 1024];
    while net.now - start < Duration::from_secs(20) {
        while net.eps[0].write(h, &data).unwrap_or(0) > 0 {}
        while let Some((c, ev)) = net.eps[1].poll_event() {
            if ev == Event::Incoming {
                server = Some(c);
            }
        }
        if let Some(s) = server {
            while let Ok(ReadOutcome::Data(_)) = net.eps[1].read(s, &mut buf) {}
        }
        assert!(net.step());
        if net.now - start > Duration::from_secs(10) {
            let queued = net.link_free_at[1].saturating_duration_since(net.now);
            max_queue_after_warmup = max_queue_after_warmup.max(queued);
        }
    }
    let stats = net.eps[0].conn_stats(h).unwrap();
    assert!(
        max_queue_after_warmup < Duration::from_millis(250),
        "queue reached {max_queue_after_warmup:?} (window {})",
        stats.window_bytes
    );
    assert!(stats.window_bytes > 50_000, "window collapsed: {}", stats.window_bytes);
}

#[test]
fn a_reader_that_stops_closes_the_window_and_the_stream_resumes() {
    let seed = seed_or(500);
    let config = UtpConfig { recv_window_bytes: 64 * 1024, ..UtpConfig::default() };
    let link = LinkConfig::clean(5);
    let out = transfer(
        seed,
        config,
        [link, link],
        MB,
        0,
        Some(Duration::from_secs(3)),
        Duration::from_secs(60),
    );
    // Nothing was lost: the sender respected the window instead of resending.
    assert_eq!(out.client_stats.timeouts, 0);
    assert!(out.elapsed > Duration::from_secs(3));
    let _ = out.server_stats;
}

#[test]
fn a_vanished_peer_times_out() {
    let seed = seed_or(600);
    let mut net = Net::new(&[UtpConfig::default(); 2], &[LinkConfig::clean(5); 2], seed);
    let h = net.eps[0].connect(net.now, net.addrs[1]).unwrap();
    // Handshake, some data, then the link into endpoint 0 and 1 dies.
    net.eps[0].write(h, &[1u8; 10_000]).unwrap();
    for _ in 0..50 {
        net.step();
    }
    assert_eq!(net.eps[0].state(h).unwrap(), State::Connected);
    net.links = vec![LinkConfig { loss: 1.0, ..LinkConfig::clean(5) }; 2];
    net.eps[0].write(h, &[2u8; 10_000]).unwrap();
    let start = net.now;
    let mut closed = None;
    while closed.is_none() && net.now - start < Duration::from_secs(600) {
        assert!(net.step());
        while let Some((c, ev)) = net.eps[0].poll_event() {
            if let (true, Event::Closed(r)) = (c == h, ev) {
                closed = Some(r);
            }
        }
    }
    assert_eq!(closed, Some(CloseReason::TimedOut));
    // 0.5+1+2+4+8+16+32 s of doubling timeouts, not minutes of idling.
    assert!(net.now - start < Duration::from_secs(90), "{:?}", net.now - start);
}

#[test]
fn a_connect_to_nobody_fails_after_the_syn_retries() {
    let mut net = Net::new(&[UtpConfig::default()], &[LinkConfig::clean(5)], 1);
    let nobody = SocketAddr::from(([127, 0, 0, 1], 9));
    let h = net.eps[0].connect(net.now, nobody).unwrap();
    let start = net.now;
    let mut closed = None;
    while net.step() {
        while let Some((_, ev)) = net.eps[0].poll_event() {
            if let Event::Closed(r) = ev {
                closed = Some(r);
            }
        }
        if closed.is_some() {
            break;
        }
    }
    assert_eq!(closed, Some(CloseReason::TimedOut));
    assert_eq!(net.eps[0].state(h).unwrap(), State::Closed(CloseReason::TimedOut));
    // 1 + 2 + 4 + 8 s.
    assert!(net.now - start <= Duration::from_secs(16), "{:?}", net.now - start);
}

#[test]
fn release_sends_a_reset_the_peer_sees() {
    let mut net = Net::new(&[UtpConfig::default(); 2], &[LinkConfig::clean(5); 2], 2);
    let h = net.eps[0].connect(net.now, net.addrs[1]).unwrap();
    net.eps[0].write(h, b"hello").unwrap();
    let mut server = None;
    for _ in 0..20 {
        net.step();
        while let Some((c, ev)) = net.eps[1].poll_event() {
            if ev == Event::Incoming {
                server = Some(c);
            }
        }
    }
    let s = server.expect("incoming");
    assert_eq!(net.eps[1].state(s).unwrap(), State::Connected);
    net.eps[0].release(h).unwrap();
    assert_eq!(net.eps[0].write(h, b"x"), Err(StreamError::StaleHandle));
    for _ in 0..5 {
        net.step();
    }
    assert_eq!(net.eps[1].state(s).unwrap(), State::Closed(CloseReason::Reset));
}

// ---- hostile input ----

fn established(seed: u64) -> (Net, ConnHandle, ConnHandle) {
    let mut net = Net::new(&[UtpConfig::default(); 2], &[LinkConfig::clean(5); 2], seed);
    let c = net.eps[0].connect(net.now, net.addrs[1]).unwrap();
    net.eps[0].write(c, b"ping").unwrap();
    let mut s = None;
    for _ in 0..20 {
        net.step();
        while let Some((h, ev)) = net.eps[1].poll_event() {
            if ev == Event::Incoming {
                s = Some(h);
            }
        }
    }
    let s = s.expect("incoming");
    assert_eq!(net.eps[0].state(c).unwrap(), State::Connected);
    (net, c, s)
}

fn raw(kind: PacketType, id: u16, seq: u16, ack: u16, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        kind,
        connection_id: id,
        timestamp_us: 0,
        timestamp_difference_us: 0,
        wnd_size: 1 << 20,
        seq_nr: seq,
        ack_nr: ack,
    };
    let mut b = vec![0u8; 64];
    let n = packet::encode_header(&h, None, &mut b);
    b.truncate(n);
    b.extend_from_slice(payload);
    b
}

#[test]
fn bogus_connection_ids_are_ignored() {
    let (mut net, _c, s) = established(10);
    let client = net.addrs[0];
    let before = net.eps[1].conn_stats(s).unwrap();
    for id in [0u16, 1, 0xffff, 12345] {
        for kind in [PacketType::Data, PacketType::State, PacketType::Fin, PacketType::Reset] {
            let r = net.eps[1].handle_datagram(net.now, client, &raw(kind, id, 1, 1, b"junk"));
            // The one real id may collide; all others must be unknown.
            if r != Err(Ignored::UnknownConnection) {
                assert!(matches!(r, Err(Ignored::Dropped(_))), "{r:?}");
            }
        }
    }
    // The right id from the wrong address is unknown as well.
    let stranger = SocketAddr::from(([127, 0, 0, 2], 6881));
    for id in 0..=u16::MAX {
        let r =
            net.eps[1].handle_datagram(net.now, stranger, &raw(PacketType::Reset, id, 0, 0, &[]));
        assert_eq!(r, Err(Ignored::UnknownConnection));
    }
    assert_eq!(net.eps[1].state(s).unwrap(), State::Connected);
    assert_eq!(net.eps[1].conn_stats(s).unwrap().packets_received, before.packets_received);
    assert_eq!(net.eps[1].connection_count(), 1);
}

#[test]
fn sequence_numbers_outside_the_window_are_dropped() {
    let (mut net, c, s) = established(11);
    let client = net.addrs[0];
    // Learn the ids and numbers from a real packet of the client.
    net.eps[0].write(c, b"x").unwrap();
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    let t = net.eps[0].poll_transmit(net.now, &mut buf).unwrap();
    let real = packet::decode(&buf[..t.len]).unwrap().header;
    // Far ahead of the window: dropped, nothing buffered.
    for ahead in [MAX_REORDER_PACKETS as u16, 5000, 0x7fff] {
        let pkt = raw(
            PacketType::Data,
            real.connection_id,
            real.seq_nr.wrapping_add(ahead),
            real.ack_nr,
            &[9; 1000],
        );
        assert_eq!(
            net.eps[1].handle_datagram(net.now, client, &pkt),
            Err(Ignored::Dropped(Dropped::SeqOutOfWindow))
        );
    }
    // Acknowledging packets the server never sent.
    let pkt =
        raw(PacketType::State, real.connection_id, real.seq_nr, real.ack_nr.wrapping_add(100), &[]);
    assert_eq!(
        net.eps[1].handle_datagram(net.now, client, &pkt),
        Err(Ignored::Dropped(Dropped::AckOutOfWindow))
    );
    // An old duplicate is acknowledged again, not delivered twice.
    let old = raw(
        PacketType::Data,
        real.connection_id,
        real.seq_nr.wrapping_sub(1),
        real.ack_nr,
        b"ping",
    );
    assert_eq!(net.eps[1].handle_datagram(net.now, client, &old), Ok(()));
    let mut got = [0u8; 16];
    assert_eq!(net.eps[1].read(s, &mut got), Ok(ReadOutcome::Data(4)));
    assert_eq!(&got[..4], b"ping");
    assert_eq!(net.eps[1].read(s, &mut got), Ok(ReadOutcome::WouldBlock));
    // A flood of one-byte packets across the reorder window stays within the
    // receive window's byte budget.
    for i in 2..MAX_REORDER_PACKETS as u16 {
        let p = raw(
            PacketType::Data,
            real.connection_id,
            real.seq_nr.wrapping_add(i),
            real.ack_nr,
            &[1],
        );
        let _ = net.eps[1].handle_datagram(net.now, client, &p);
    }
    let conn = &net.eps[1].slots[net.eps[1].slot_index(s).unwrap()].conn;
    assert!(conn.reorder_bytes_for_test() <= UtpConfig::default().recv_window_bytes);
    assert!(conn.reorder_len_for_test() <= MAX_REORDER_PACKETS);
    // The real packet still arrives and the stream goes on.
    net.eps[1].handle_datagram(net.now, client, &buf[..t.len]).unwrap();
    assert_eq!(net.eps[1].state(s).unwrap(), State::Connected);
}

#[test]
fn a_syn_flood_is_capped_and_expires() {
    let config = UtpConfig {
        max_half_open: 16,
        max_connections: 64,
        half_open_timeout_ms: 5000,
        ..UtpConfig::default()
    };
    let mut net = Net::new(&[config, config], &[LinkConfig::clean(5); 2], 12);
    let now = net.now;
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..10_000u32 {
        let from = SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 1000 + (i % 7) as u16));
        let syn = raw(PacketType::Syn, i as u16, i as u16, 0, &[]);
        match net.eps[1].handle_datagram(now, from, &syn) {
            Ok(()) => accepted += 1,
            Err(Ignored::HalfOpenFull) => refused += 1,
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(accepted, 16);
    assert_eq!(refused, 10_000 - 16);
    assert_eq!(net.eps[1].half_open_count(), 16);
    assert_eq!(net.eps[1].connection_count(), 16);
    // A real client is refused while the flood holds the half-open slots ...
    let c = net.eps[0].connect(now, net.addrs[1]).unwrap();
    net.step();
    net.step();
    assert_eq!(net.eps[0].state(c).unwrap(), State::SynSent);
    // ... and gets in once they expire (its SYN is retried).
    let mut connected = false;
    for _ in 0..10_000 {
        if !net.step() {
            break;
        }
        if net.eps[0].state(c).unwrap() == State::Connected {
            connected = true;
            break;
        }
    }
    assert!(connected, "connect after the flood expired");
    assert!(net.now - now <= Duration::from_secs(16));
    // The flood's connections were closed (timed out), never established.
    let mut timed_out = 0;
    while let Some((h, ev)) = net.eps[1].poll_event() {
        if ev == Event::Closed(CloseReason::TimedOut) {
            timed_out += 1;
            net.eps[1].release(h).unwrap();
        }
    }
    assert_eq!(timed_out, 16);
    // Only the real client's connection is left, half-open until it speaks.
    assert_eq!(net.eps[1].half_open_count(), 1);
    assert_eq!(net.eps[1].connection_count(), 1);
}

/// Goal: one host's SYN flood takes only its own share of the half-open
/// places (`max_half_open_per_ip`); another host still gets in at once.
#[test]
fn a_syn_flood_from_one_ip_leaves_room_for_others() {
    let config = UtpConfig { max_half_open: 64, max_half_open_per_ip: 8, ..UtpConfig::default() };
    let mut ep = Endpoint::new(config, 5, Instant::now()).unwrap();
    let now = Instant::now();
    let mut accepted = 0;
    for i in 0..1000u16 {
        let from = SocketAddr::from(([127, 0, 0, 9], 1000 + i % 50));
        match ep.handle_datagram(now, from, &raw(PacketType::Syn, i, 1, 0, &[])) {
            Ok(()) => accepted += 1,
            Err(Ignored::HalfOpenFull) => {}
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(accepted, 8);
    assert_eq!(ep.half_open_count(), 8);
    let other = SocketAddr::from(([127, 0, 0, 1], 2000));
    assert_eq!(ep.handle_datagram(now, other, &raw(PacketType::Syn, 7, 1, 0, &[])), Ok(()));
    assert_eq!(ep.half_open_count(), 9);
    // Released half-open connections give their IP's places back.
    let mut handles = Vec::new();
    while let Some((h, ev)) = ep.poll_event() {
        if ev == Event::Incoming && ep.peer_addr(h).unwrap().ip() != other.ip() {
            handles.push(h);
        }
    }
    for h in handles {
        ep.release(h).unwrap();
    }
    assert_eq!(ep.half_open_count(), 1);
    let from = SocketAddr::from(([127, 0, 0, 9], 5000));
    assert_eq!(ep.handle_datagram(now, from, &raw(PacketType::Syn, 4000, 1, 0, &[])), Ok(()));
}

#[test]
fn the_connection_table_is_capped() {
    let config = UtpConfig { max_half_open: 100, max_connections: 8, ..UtpConfig::default() };
    let mut ep = Endpoint::new(config, 3, Instant::now()).unwrap();
    let now = Instant::now();
    for i in 0..8u16 {
        let from = SocketAddr::from(([127, 0, 0, 1], 2000 + i));
        assert_eq!(ep.handle_datagram(now, from, &raw(PacketType::Syn, i, 1, 0, &[])), Ok(()));
    }
    let from = SocketAddr::from(([127, 0, 0, 1], 3000));
    assert_eq!(
        ep.handle_datagram(now, from, &raw(PacketType::Syn, 1, 1, 0, &[])),
        Err(Ignored::TableFull)
    );
    assert_eq!(ep.connect(now, from), Err(ConnectError::TableFull));
}

#[test]
fn a_duplicate_syn_is_acknowledged_again_not_accepted_twice() {
    let mut ep = Endpoint::new(UtpConfig::default(), 4, Instant::now()).unwrap();
    let now = Instant::now();
    let from = SocketAddr::from(([127, 0, 0, 1], 2000));
    let syn = raw(PacketType::Syn, 77, 500, 0, &[]);
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    for _ in 0..3 {
        assert_eq!(ep.handle_datagram(now, from, &syn), Ok(()));
        let t = ep.poll_transmit(now, &mut buf).expect("a SYN-ACK each time");
        let h = packet::decode(&buf[..t.len]).unwrap().header;
        assert_eq!((h.kind, h.connection_id, h.ack_nr), (PacketType::State, 77, 500));
        assert!(ep.poll_transmit(now, &mut buf).is_none());
    }
    assert_eq!(ep.connection_count(), 1);
    assert_eq!(ep.half_open_count(), 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Arbitrary datagrams, some dressed with the real connection's id and
    /// numbers, into an established connection: no panic, bounds hold, and
    /// the endpoint can still move data.
    #[test]
    fn arbitrary_datagrams_never_panic(
        seed in 0u64..1000,
        datagrams in proptest::collection::vec(
            (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0u8..4, proptest::prelude::any::<u16>()),
            1..200),
    ) {
        let (mut net, c, s) = established(seed);
        let client = net.addrs[0];
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
        net.eps[0].write(c, b"x").unwrap();
        let t = net.eps[0].poll_transmit(net.now, &mut buf).unwrap();
        let real = packet::decode(&buf[..t.len]).unwrap().header;
        for (bytes, mode, delta) in datagrams {
            let d = match mode {
                // Pure garbage.
                0 => bytes,
                // A valid header with the real id and random numbers.
                m => {
                    let kind = [PacketType::Data, PacketType::State, PacketType::Fin][(m - 1) as usize % 3];
                    raw(kind, real.connection_id, real.seq_nr.wrapping_add(delta % 64),
                        real.ack_nr.wrapping_add(delta >> 8), &bytes)
                }
            };
            let _ = net.eps[1].handle_datagram(net.now, client, &d);
            while net.eps[1].poll_transmit(net.now, &mut buf).is_some() {}
            while net.eps[1].poll_event().is_some() {}
            net.now += Duration::from_millis(1);
            net.eps[1].handle_timeout(net.now);
        }
        proptest::prop_assert!(net.eps[1].connection_count() <= 1);
        let conn = &net.eps[1].slots[net.eps[1].slot_index(s).unwrap()].conn;
        proptest::prop_assert!(conn.reorder_bytes_for_test() <= UtpConfig::default().recv_window_bytes);
    }
}
