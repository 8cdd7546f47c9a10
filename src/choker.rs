//! Choker: which peers get our upload slots, and token buckets for rate limits.
//!
//! Layer: pure core (time comes in as `now`; randomness from a caller-seeded
//! rng, so the same inputs and seed always unchoke the same peers).
//!
//! Owns, for one torrent, the unchoke decision of BEP 3's tit-for-tat:
//! * a fixed number of regular upload slots, re-evaluated every
//!   `rechoke_interval_ms` (10 s);
//! * while leeching, regular slots go to the interested peers that send us the
//!   most (download rate from them), ties broken at random;
//! * while seeding, regular slots rotate round-robin: a peer keeps its slot for
//!   one turn (`seeding_turn_ms`), then peers that waited longest get a turn;
//! * optimistic slots go to a random other interested peer, rotated every
//!   `optimistic_interval_ms` (30 s); peers connected within
//!   `new_peer_window_ms` are `new_peer_weight` (3) times as likely, so
//!   newcomers with nothing to offer yet can earn their first pieces;
//! * snubbed peers and peers not interested in us are never unchoked.
//!
//! Invariants: the unchoke set has at most `upload_slots + optimistic_slots`
//! peers, all interested and not snubbed, no peer twice; regular and
//! optimistic sets are disjoint.
//!
//! [`TokenBucket`] is a torrent's own rate limiter: the torrent core keeps one
//! per direction. The process-wide limit, shared by every shard, is
//! [`SharedTokenBucket`](crate::rate_limit::SharedTokenBucket).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::picker::{PeerKey, BLOCK_SIZE};

/// Most upload slots (regular or optimistic) one torrent may configure.
pub const MAX_UPLOAD_SLOTS: usize = 1024;

/// Most peer snapshots one rechoke considers; the rest are left choked.
pub const MAX_CHOKER_PEERS: usize = 8192;

/// Choking policy settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChokerConfig {
    /// Regular (tit-for-tat or round-robin) upload slots.
    pub upload_slots: usize,
    /// Optimistic slots on top of the regular ones.
    pub optimistic_slots: usize,
    /// How often the caller should call [`Choker::rechoke`].
    pub rechoke_interval_ms: u64,
    /// How long an optimistic unchoke lasts before it rotates.
    pub optimistic_interval_ms: u64,
    /// A peer connected this recently counts as new for optimistic unchoking.
    pub new_peer_window_ms: u64,
    /// Weight of a new peer in the optimistic draw (others weigh 1).
    pub new_peer_weight: u32,
    /// While seeding, how long a peer keeps a regular slot before peers that
    /// are waiting take it.
    pub seeding_turn_ms: u64,
}

impl Default for ChokerConfig {
    fn default() -> Self {
        ChokerConfig {
            upload_slots: 4,
            optimistic_slots: 1,
            rechoke_interval_ms: 10_000,
            optimistic_interval_ms: 30_000,
            // Three optimistic rotations, as mainline's "new peers are three
            // times as likely" rule counts them.
            new_peer_window_ms: 90_000,
            new_peer_weight: 3,
            seeding_turn_ms: 30_000,
        }
    }
}

/// A config outside the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChokerError {
    #[error("invalid choker config: {0}")]
    BadConfig(&'static str),
}

/// What the choker needs to know about one connected peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub key: PeerKey,
    /// The peer told us it is interested in our pieces.
    pub interested: bool,
    /// Bytes per second the peer has been sending us (recent average).
    pub download_rate: u64,
    /// Bytes per second we have been sending the peer (recent average).
    pub upload_rate: u64,
    pub connected_at: Instant,
    /// The peer stopped delivering what we requested.
    pub snubbed: bool,
}

/// Whether the torrent still downloads (tit-for-tat) or only seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChokeMode {
    Leeching,
    Seeding,
}

#[derive(Clone, Copy, Debug, Default)]
struct SlotHistory {
    /// When the peer got its current regular slot.
    regular_since: Option<Instant>,
    /// When the peer last lost a regular slot (for round-robin fairness).
    last_regular_end: Option<Instant>,
    /// Seen in the latest snapshot (others are pruned).
    seen: bool,
}

/// The choker of one torrent. See the module docs.
#[derive(Debug)]
pub struct Choker {
    config: ChokerConfig,
    rng: StdRng,
    next_rechoke: Option<Instant>,
    optimistic: Vec<PeerKey>,
    optimistic_since: Option<Instant>,
    regular: Vec<PeerKey>,
    history: HashMap<PeerKey, SlotHistory>,
    /// Reused between rechokes.
    candidates: Vec<usize>,
}

impl Choker {
    /// A choker; `seed` fixes its random choices.
    pub fn new(config: ChokerConfig, seed: u64) -> Result<Choker, ChokerError> {
        if config.upload_slots > MAX_UPLOAD_SLOTS || config.optimistic_slots > MAX_UPLOAD_SLOTS {
            return Err(ChokerError::BadConfig("upload slots exceed MAX_UPLOAD_SLOTS"));
        }
        if config.rechoke_interval_ms == 0 || config.optimistic_interval_ms == 0 {
            return Err(ChokerError::BadConfig(
                "rechoke and optimistic intervals must be positive",
            ));
        }
        if config.new_peer_weight == 0 || config.new_peer_weight > 1000 {
            return Err(ChokerError::BadConfig("new_peer_weight must be in 1..=1000"));
        }
        Ok(Choker {
            config,
            rng: StdRng::seed_from_u64(seed),
            next_rechoke: None,
            optimistic: Vec::new(),
            optimistic_since: None,
            regular: Vec::new(),
            history: HashMap::new(),
            candidates: Vec::new(),
        })
    }

    /// Is it time for [`Choker::rechoke`]? (Also call it at once when a peer
    /// that holds a slot disconnects or stops being interested.)
    pub fn rechoke_due(&self, now: Instant) -> bool {
        self.next_rechoke.is_none_or(|t| now >= t)
    }

    /// When the next rechoke is due (`None` before the first).
    pub fn next_rechoke_at(&self) -> Option<Instant> {
        self.next_rechoke
    }

    /// Peers holding regular slots after the last rechoke.
    pub fn regular(&self) -> &[PeerKey] {
        &self.regular
    }

    /// Peers holding optimistic slots after the last rechoke.
    pub fn optimistic(&self) -> &[PeerKey] {
        &self.optimistic
    }

    /// Decides the unchoke set from `peers` at `now`: clears `unchoke` and
    /// fills it with the peers to unchoke; every other peer is to be choked.
    pub fn rechoke(
        &mut self,
        now: Instant,
        mode: ChokeMode,
        peers: &[PeerSnapshot],
        unchoke: &mut Vec<PeerKey>,
    ) {
        let peers = &peers[..peers.len().min(MAX_CHOKER_PEERS)];
        self.next_rechoke = Some(now + Duration::from_millis(self.config.rechoke_interval_ms));
        for h in self.history.values_mut() {
            h.seen = false;
        }
        for p in peers {
            self.history.entry(p.key).or_default().seen = true;
        }
        self.history.retain(|_, h| h.seen);

        // Candidates in random order, so equal keys below are random ties.
        self.candidates.clear();
        self.candidates
            .extend((0..peers.len()).filter(|&i| peers[i].interested && !peers[i].snubbed));
        self.candidates.shuffle(&mut self.rng);
        match mode {
            ChokeMode::Leeching => {
                self.candidates.sort_by_key(|&i| std::cmp::Reverse(peers[i].download_rate));
            }
            ChokeMode::Seeding => {
                let turn = Duration::from_millis(self.config.seeding_turn_ms);
                let history = &self.history;
                // Class 0: mid-turn holders (fastest first); class 1: waiting
                // peers, longest wait first (never served = longest); class 2:
                // holders whose turn is over, who keep a slot only if no one waits.
                self.candidates.sort_by_key(|&i| {
                    let h = history.get(&peers[i].key).copied().unwrap_or_default();
                    match h.regular_since {
                        Some(since) if now.saturating_duration_since(since) < turn => {
                            (0, None, std::cmp::Reverse(peers[i].upload_rate))
                        }
                        Some(since) => (2, Some(since), std::cmp::Reverse(0)),
                        None => (1, h.last_regular_end, std::cmp::Reverse(0)),
                    }
                });
            }
        }
        let regular_count = self.config.upload_slots.min(self.candidates.len());
        let old_regular = std::mem::take(&mut self.regular);
        self.regular.extend(self.candidates[..regular_count].iter().map(|&i| peers[i].key));
        for key in &old_regular {
            if !self.regular.contains(key) {
                if let Some(h) = self.history.get_mut(key) {
                    h.regular_since = None;
                    h.last_regular_end = Some(now);
                }
            }
        }
        for key in &self.regular {
            let h = self.history.entry(*key).or_default();
            h.regular_since.get_or_insert(now);
        }

        // Optimistic slots: keep the current ones until their interval ends
        // (if still eligible), then draw new ones, weighting new peers.
        let others = &self.candidates[regular_count..];
        let rotate = self.optimistic_since.is_none_or(|since| {
            now.saturating_duration_since(since)
                >= Duration::from_millis(self.config.optimistic_interval_ms)
        });
        let previous = std::mem::take(&mut self.optimistic);
        if !rotate {
            self.optimistic.extend(
                previous.iter().copied().filter(|k| others.iter().any(|&i| peers[i].key == *k)),
            );
        } else {
            self.optimistic_since = Some(now);
        }
        let window = Duration::from_millis(self.config.new_peer_window_ms);
        let weight = |p: &PeerSnapshot| {
            if now.saturating_duration_since(p.connected_at) < window {
                self.config.new_peer_weight as u64
            } else {
                1
            }
        };
        while self.optimistic.len() < self.config.optimistic_slots {
            // Prefer someone other than the peers that just had the slot.
            let eligible = |i: &usize, avoid_previous: bool| {
                let k = peers[*i].key;
                !self.optimistic.contains(&k) && (!avoid_previous || !previous.contains(&k))
            };
            let avoid = rotate && others.iter().any(|i| eligible(i, true));
            let total: u64 =
                others.iter().filter(|i| eligible(i, avoid)).map(|&i| weight(&peers[i])).sum();
            if total == 0 {
                break;
            }
            let mut ticket = self.rng.gen_range(0..total);
            let mut chosen = None;
            for &i in others.iter().filter(|i| eligible(i, avoid)) {
                let w = weight(&peers[i]);
                if ticket < w {
                    chosen = Some(peers[i].key);
                    break;
                }
                ticket -= w;
            }
            match chosen {
                Some(k) => self.optimistic.push(k),
                None => break,
            }
        }

        unchoke.clear();
        unchoke.extend_from_slice(&self.regular);
        unchoke.extend_from_slice(&self.optimistic);
    }
}

/// Smallest burst a bucket accepts: one block, so a block can always pass.
pub const MIN_BURST_BYTES: u64 = BLOCK_SIZE as u64;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// A token bucket: `rate_bytes_per_s` tokens per second accrue up to
/// `burst_bytes`; sending n bytes takes n tokens. A rate of 0 means
/// unlimited. Tokens are kept in byte-nanoseconds so no fraction is lost
/// between refills, however often `now` advances.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    burst_bytes: u64,
    /// Tokens times 1e9.
    tokens_nanos: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `burst_bytes` below [`MIN_BURST_BYTES`] is raised to it.
    pub fn new(rate_bytes_per_s: u64, burst_bytes: u64, now: Instant) -> TokenBucket {
        let burst_bytes = burst_bytes.max(MIN_BURST_BYTES);
        TokenBucket {
            rate_bytes_per_s,
            burst_bytes,
            tokens_nanos: burst_bytes as u128 * NANOS_PER_SECOND,
            last: now,
        }
    }

    /// A bucket that never limits.
    pub fn unlimited(now: Instant) -> TokenBucket {
        TokenBucket::new(0, MIN_BURST_BYTES, now)
    }

    /// Rate 0: no limit.
    pub fn is_unlimited(&self) -> bool {
        self.rate_bytes_per_s == 0
    }

    /// Configured rate.
    pub fn rate_bytes_per_s(&self) -> u64 {
        self.rate_bytes_per_s
    }

    /// Changes the limits, keeping the tokens accrued so far (capped).
    pub fn set_rate(&mut self, now: Instant, rate_bytes_per_s: u64, burst_bytes: u64) {
        self.refill(now);
        self.rate_bytes_per_s = rate_bytes_per_s;
        self.burst_bytes = burst_bytes.max(MIN_BURST_BYTES);
        self.tokens_nanos = self.tokens_nanos.min(self.burst_bytes as u128 * NANOS_PER_SECOND);
    }

    fn refill(&mut self, now: Instant) {
        // A `now` earlier than the last one (a caller bug or reordered
        // events) adds nothing rather than panicking.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if now > self.last {
            self.last = now;
        }
        let cap = self.burst_bytes as u128 * NANOS_PER_SECOND;
        self.tokens_nanos = (self.tokens_nanos + elapsed * self.rate_bytes_per_s as u128).min(cap);
    }

    /// Bytes that may be sent now.
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.is_unlimited() {
            return u64::MAX;
        }
        self.refill(now);
        (self.tokens_nanos / NANOS_PER_SECOND) as u64
    }

    /// Takes `bytes` tokens if all are there; otherwise takes none.
    pub fn try_take(&mut self, now: Instant, bytes: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        let need = bytes as u128 * NANOS_PER_SECOND;
        if self.tokens_nanos >= need {
            self.tokens_nanos -= need;
            true
        } else {
            false
        }
    }

    /// Takes as many tokens as are there, up to `bytes`; returns how many.
    pub fn take_up_to(&mut self, now: Instant, bytes: u64) -> u64 {
        let n = self.available(now).min(bytes);
        if !self.is_unlimited() {
            self.tokens_nanos -= n as u128 * NANOS_PER_SECOND;
        }
        n
    }

    /// Returns tokens taken but not used (e.g. the process bucket refused
    /// what the torrent bucket granted).
    pub fn give_back(&mut self, bytes: u64) {
        let cap = self.burst_bytes as u128 * NANOS_PER_SECOND;
        self.tokens_nanos = (self.tokens_nanos + bytes as u128 * NANOS_PER_SECOND).min(cap);
    }

    /// How long until `bytes` (at most the burst) can be taken: the delay for
    /// the driver's timer. Zero when they can be taken now.
    pub fn wait_for(&mut self, now: Instant, bytes: u64) -> Duration {
        if self.is_unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        let need = bytes.min(self.burst_bytes) as u128 * NANOS_PER_SECOND;
        if self.tokens_nanos >= need {
            return Duration::ZERO;
        }
        let nanos = (need - self.tokens_nanos).div_ceil(self.rate_bytes_per_s as u128);
        Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(t0: Instant, key: u64, interested: bool, down: u64, up: u64) -> PeerSnapshot {
        PeerSnapshot {
            key: PeerKey(key),
            interested,
            download_rate: down,
            upload_rate: up,
            connected_at: t0,
            snubbed: false,
        }
    }

    fn sorted(mut v: Vec<PeerKey>) -> Vec<PeerKey> {
        v.sort();
        v
    }

    fn keys(v: &[u64]) -> Vec<PeerKey> {
        v.iter().map(|&k| PeerKey(k)).collect()
    }

    fn check(choker: &Choker, peers: &[PeerSnapshot], unchoke: &[PeerKey], config: &ChokerConfig) {
        assert!(unchoke.len() <= config.upload_slots + config.optimistic_slots);
        let mut u = unchoke.to_vec();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), unchoke.len(), "no peer twice");
        for k in unchoke {
            let p = peers.iter().find(|p| p.key == *k).expect("unchoked peer exists");
            assert!(p.interested && !p.snubbed, "only interested, unsnubbed peers");
        }
        assert!(choker.regular().iter().all(|k| !choker.optimistic().contains(k)));
    }

    #[test]
    fn leeching_slots_go_to_the_fastest_senders() {
        let t0 = Instant::now();
        let config =
            ChokerConfig { upload_slots: 3, optimistic_slots: 1, ..ChokerConfig::default() };
        let mut c = Choker::new(config.clone(), 7).unwrap();
        let peers = [
            peer(t0, 1, true, 100, 0),
            peer(t0, 2, true, 500, 0),
            peer(t0, 3, false, 900, 0), // not interested: never unchoked
            peer(t0, 4, true, 300, 0),
            peer(t0, 5, true, 200, 0),
            peer(t0, 6, true, 0, 0),
        ];
        let mut u = Vec::new();
        assert!(c.rechoke_due(t0));
        c.rechoke(t0, ChokeMode::Leeching, &peers, &mut u);
        check(&c, &peers, &u, &config);
        assert_eq!(c.regular(), &keys(&[2, 4, 5])[..]);
        assert_eq!(c.optimistic().len(), 1);
        assert!([PeerKey(1), PeerKey(6)].contains(&c.optimistic()[0]));
        assert!(!c.rechoke_due(t0 + Duration::from_secs(9)));
        assert!(c.rechoke_due(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn snubbed_peers_are_excluded() {
        let t0 = Instant::now();
        let config =
            ChokerConfig { upload_slots: 2, optimistic_slots: 1, ..ChokerConfig::default() };
        let mut c = Choker::new(config.clone(), 1).unwrap();
        let mut peers = vec![peer(t0, 1, true, 900, 0), peer(t0, 2, true, 10, 0)];
        peers[0].snubbed = true;
        let mut u = Vec::new();
        for step in 0..10 {
            c.rechoke(t0 + Duration::from_secs(10 * step), ChokeMode::Leeching, &peers, &mut u);
            check(&c, &peers, &u, &config);
            assert_eq!(u, keys(&[2]));
        }
    }

    #[test]
    fn optimistic_unchoke_rotates_every_30_seconds() {
        let t0 = Instant::now();
        let config =
            ChokerConfig { upload_slots: 1, optimistic_slots: 1, ..ChokerConfig::default() };
        let mut c = Choker::new(config.clone(), 3).unwrap();
        // Old peers (connected long before), so all weigh the same.
        let old = t0 - Duration::from_secs(3600);
        let peers: Vec<_> =
            (1..=6).map(|k| peer(old, k, true, if k == 1 { 1000 } else { 0 }, 0)).collect();
        let mut u = Vec::new();
        let mut history = Vec::new();
        for step in 0..30u64 {
            let now = t0 + Duration::from_secs(10 * step);
            c.rechoke(now, ChokeMode::Leeching, &peers, &mut u);
            check(&c, &peers, &u, &config);
            assert_eq!(c.regular(), &keys(&[1])[..], "the fastest sender keeps its slot");
            history.push(c.optimistic()[0]);
        }
        for (step, w) in history.windows(2).enumerate() {
            let rotated_at = (step + 1) % 3 == 0;
            if rotated_at {
                assert_ne!(w[0], w[1], "rotation at step {} picks another peer", step + 1);
            } else {
                assert_eq!(w[0], w[1], "no rotation within 30 s (step {})", step + 1);
            }
        }
        let mut seen = history.clone();
        seen.sort();
        seen.dedup();
        assert!(seen.len() >= 4, "rotation reaches most peers: {history:?}");
        // Same seed, same history.
        let mut c2 = Choker::new(config, 3).unwrap();
        let again: Vec<PeerKey> = (0..30u64)
            .map(|step| {
                c2.rechoke(
                    t0 + Duration::from_secs(10 * step),
                    ChokeMode::Leeching,
                    &peers,
                    &mut u,
                );
                c2.optimistic()[0]
            })
            .collect();
        assert_eq!(again, history);
    }

    #[test]
    fn optimistic_slot_is_refilled_when_its_peer_leaves() {
        let t0 = Instant::now();
        let config =
            ChokerConfig { upload_slots: 0, optimistic_slots: 1, ..ChokerConfig::default() };
        let mut c = Choker::new(config, 3).unwrap();
        let peers: Vec<_> = (1..=3).map(|k| peer(t0, k, true, 0, 0)).collect();
        let mut u = Vec::new();
        c.rechoke(t0, ChokeMode::Leeching, &peers, &mut u);
        let gone = u[0];
        let rest: Vec<_> = peers.iter().copied().filter(|p| p.key != gone).collect();
        c.rechoke(t0 + Duration::from_secs(10), ChokeMode::Leeching, &rest, &mut u);
        assert_eq!(u.len(), 1);
        assert_ne!(u[0], gone);
    }

    #[test]
    fn new_peers_are_three_times_as_likely_to_be_optimistic() {
        let t0 = Instant::now() + Duration::from_secs(3600);
        let config =
            ChokerConfig { upload_slots: 0, optimistic_slots: 1, ..ChokerConfig::default() };
        let old = t0 - Duration::from_secs(3600);
        // One new peer among four old ones: expected share 3 / 7.
        let mut peers: Vec<_> = (1..=4).map(|k| peer(old, k, true, 0, 0)).collect();
        peers.push(peer(t0, 9, true, 0, 0));
        let mut new_wins = 0;
        let draws = 700;
        let mut u = Vec::new();
        for seed in 0..draws {
            let mut c = Choker::new(config.clone(), seed).unwrap();
            c.rechoke(t0, ChokeMode::Leeching, &peers, &mut u);
            new_wins += (u == keys(&[9])) as u32;
        }
        // 300 expected; a uniform draw would give 140.
        assert!((240..=360).contains(&new_wins), "new peer won {new_wins} of {draws}");
    }

    #[test]
    fn seeding_round_robin_gives_everyone_a_turn() {
        let t0 = Instant::now();
        let config =
            ChokerConfig { upload_slots: 2, optimistic_slots: 0, ..ChokerConfig::default() };
        let mut c = Choker::new(config.clone(), 5).unwrap();
        // Peer 1 downloads fastest from us, but seeding does not favour it forever.
        let peers: Vec<_> =
            (1..=6).map(|k| peer(t0, k, true, 0, if k == 1 { 10_000 } else { 10 })).collect();
        let mut u = Vec::new();
        let mut turns: HashMap<PeerKey, u32> = HashMap::new();
        let mut previous: Vec<PeerKey> = Vec::new();
        for step in 0..18u64 {
            c.rechoke(t0 + Duration::from_secs(10 * step), ChokeMode::Seeding, &peers, &mut u);
            check(&c, &peers, &u, &config);
            assert_eq!(u.len(), 2);
            for k in &u {
                if !previous.contains(k) {
                    *turns.entry(*k).or_default() += 1;
                }
            }
            if step % 3 != 0 {
                assert_eq!(sorted(u.clone()), sorted(previous.clone()), "a turn lasts 30 s");
            } else if step > 0 {
                assert!(u.iter().all(|k| !previous.contains(k)), "turns rotate when others wait");
            }
            previous = u.clone();
        }
        // 6 turns of 2 slots over 6 peers: each peer had exactly 2 turns.
        assert_eq!(turns.len(), 6, "{turns:?}");
        assert!(turns.values().all(|&n| n == 2), "{turns:?}");
    }

    #[test]
    fn seeding_holders_keep_slots_when_nobody_waits() {
        let t0 = Instant::now();
        let config =
            ChokerConfig { upload_slots: 3, optimistic_slots: 1, ..ChokerConfig::default() };
        let mut c = Choker::new(config, 5).unwrap();
        let peers: Vec<_> = (1..=2).map(|k| peer(t0, k, true, 0, 5)).collect();
        let mut u = Vec::new();
        for step in 0..10u64 {
            c.rechoke(t0 + Duration::from_secs(10 * step), ChokeMode::Seeding, &peers, &mut u);
            assert_eq!(sorted(u.clone()), keys(&[1, 2]));
        }
    }

    #[test]
    fn bad_config_is_an_error() {
        let bad = ChokerConfig { rechoke_interval_ms: 0, ..ChokerConfig::default() };
        assert!(Choker::new(bad, 0).is_err());
        let bad = ChokerConfig { upload_slots: MAX_UPLOAD_SLOTS + 1, ..ChokerConfig::default() };
        assert!(Choker::new(bad, 0).is_err());
        let bad = ChokerConfig { new_peer_weight: 0, ..ChokerConfig::default() };
        assert!(Choker::new(bad, 0).is_err());
    }

    #[test]
    fn token_bucket_refills_at_its_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, 50_000, t0);
        assert_eq!(b.available(t0), 50_000, "starts full");
        assert!(b.try_take(t0, 50_000));
        assert!(!b.try_take(t0, 1));
        assert_eq!(b.wait_for(t0, 10_000), Duration::from_millis(100));
        // 10 ms at 100 kB/s = 1,000 bytes, in many small steps: no fraction lost.
        let mut now = t0;
        for _ in 0..10_000 {
            now += Duration::from_micros(1);
            b.available(now);
        }
        assert_eq!(b.available(now), 1_000);
        assert_eq!(b.take_up_to(now, 5_000), 1_000);
        assert_eq!(b.available(now), 0);
        b.give_back(400);
        assert_eq!(b.available(now), 400);
        // Capped at the burst however long it idles.
        assert_eq!(b.available(now + Duration::from_secs(3600)), 50_000);
        // Time going backwards adds nothing and does not panic.
        assert_eq!(b.available(t0), 50_000);
    }

    #[test]
    fn token_bucket_limits_long_run_throughput() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, 64 * 1024, t0);
        let mut sent = 0u64;
        let mut now = t0;
        // A sender that tries a block every millisecond for 10 simulated seconds.
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            if b.try_take(now, BLOCK_SIZE as u64) {
                sent += BLOCK_SIZE as u64;
            }
        }
        // At most rate x time + burst.
        assert!(sent <= 10_000_000 + 64 * 1024, "sent {sent}");
        assert!(sent >= 10_000_000 - BLOCK_SIZE as u64, "sent {sent}");
    }

    #[test]
    fn token_bucket_minimum_burst_and_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 1, t0);
        assert!(b.try_take(t0, BLOCK_SIZE as u64), "the burst is at least one block");
        let mut u = TokenBucket::unlimited(t0);
        assert!(u.is_unlimited());
        assert!(u.try_take(t0, u64::MAX));
        assert_eq!(u.wait_for(t0, 1 << 40), Duration::ZERO);
        b.set_rate(t0, 1000, 2000);
        assert_eq!(b.rate_bytes_per_s(), 1000);
        assert_eq!(b.wait_for(t0, 1000), Duration::from_secs(1));
    }
}
