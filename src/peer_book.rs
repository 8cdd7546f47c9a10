//! The peers a torrent knows and may dial: a bounded book with eviction and
//! redial backoff.
//!
//! Layer: pure core (time comes in as `now`; no sockets). The shard driver
//! adds addresses (trackers, `--peer`), asks [`PeerBook::next_due`] whom to
//! dial, and reports every outcome: [`PeerBook::dial_failed`],
//! [`PeerBook::connected`], [`PeerBook::disconnected`].
//!
//! Policy:
//! * a failed dial (refused, timed out, hung up before the handshake) is
//!   retried after `base_backoff x 2^(failures-1)` (capped at `max_backoff`);
//!   after `max_failures` in a row the address is forgotten;
//! * a good peer (handshake done) that disconnects is redialled after
//!   `base_backoff x 2^(reconnects-1)`, so a peer that keeps dropping us is
//!   tried less and less often, and one that stays is tried again at once;
//! * when the book is full, a new address evicts the idle entry with the most
//!   failures, oldest first among equals; entries being dialled or connected
//!   are never evicted. (Before this book, the list filled at 2,000 and then
//!   no new peer was ever dialled.)
//!
//! Invariants:
//! * at most `max_entries` addresses are held;
//! * an idle entry is in `due` exactly once, under its redial time; entries
//!   being dialled or connected are not in `due`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Limits and backoff of a [`PeerBook`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBookConfig {
    /// Addresses held at most.
    pub max_entries: usize,
    /// Failed dials in a row after which an address is forgotten.
    pub max_failures: u32,
    /// First redial delay; doubles with every failure or reconnect.
    pub base_backoff: Duration,
    /// Longest redial delay.
    pub max_backoff: Duration,
}

impl Default for PeerBookConfig {
    fn default() -> PeerBookConfig {
        PeerBookConfig {
            max_entries: 2000,
            max_failures: 6,
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting in `due` for its dial time.
    Idle,
    /// A connect is in flight.
    Dialing,
    /// Connected (by our dial).
    Connected,
}

#[derive(Clone, Debug)]
struct Entry {
    state: State,
    /// Failed dials in a row.
    failures: u32,
    /// Good sessions that ended (handshake done, then closed).
    reconnects: u32,
    /// Order of insertion (older = smaller), for eviction ties.
    added: u64,
    /// The key under which an idle entry sits in `due`.
    due_at: Option<(Instant, u64)>,
}

/// What happened to an address handed to [`PeerBook::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// New in the book.
    New,
    /// Already known: nothing changed.
    Known,
    /// New, and another address was evicted to make room.
    Evicted(SocketAddr),
    /// The book is full of entries being dialled or connected.
    Full,
}

/// A torrent's known peers. See the module docs.
#[derive(Debug)]
pub struct PeerBook {
    config: PeerBookConfig,
    entries: HashMap<SocketAddr, Entry>,
    /// Idle entries by redial time (time, insertion sequence, address).
    due: BTreeSet<(Instant, u64, SocketAddr)>,
    seq: u64,
}

impl PeerBook {
    pub fn new(config: PeerBookConfig) -> PeerBook {
        PeerBook { config, entries: HashMap::new(), due: BTreeSet::new(), seq: 0 }
    }

    /// Addresses held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `addr` is in the book.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.entries.contains_key(&addr)
    }

    /// Idle addresses whose dial time has come.
    pub fn due_count(&self, now: Instant) -> usize {
        self.due.iter().take_while(|(at, _, _)| *at <= now).count()
    }

    /// Learns `addr`, to be dialled from `now`.
    pub fn add(&mut self, addr: SocketAddr, now: Instant) -> Added {
        if self.entries.contains_key(&addr) {
            return Added::Known;
        }
        let mut evicted = None;
        if self.entries.len() >= self.config.max_entries.max(1) {
            match self.victim() {
                Some(victim) => {
                    self.remove(victim);
                    evicted = Some(victim);
                }
                None => return Added::Full,
            }
        }
        self.seq += 1;
        let entry =
            Entry { state: State::Idle, failures: 0, reconnects: 0, added: self.seq, due_at: None };
        self.entries.insert(addr, entry);
        self.schedule(addr, now);
        match evicted {
            Some(victim) => Added::Evicted(victim),
            None => Added::New,
        }
    }

    /// The next address to dial now, marked as being dialled; report the
    /// outcome with [`PeerBook::dial_failed`] or [`PeerBook::connected`].
    pub fn next_due(&mut self, now: Instant) -> Option<SocketAddr> {
        let &first = self.due.first()?;
        if first.0 > now {
            return None;
        }
        self.due.remove(&first);
        let addr = first.2;
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.due_at = None;
            entry.state = State::Dialing;
        }
        Some(addr)
    }

    /// A dial of `addr` failed (refused, timed out, hung up before the
    /// handshake, or the torrent would not take it): redial with backoff, or
    /// forget it after `max_failures` in a row. Returns whether it is kept.
    pub fn dial_failed(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(&addr) else { return false };
        entry.failures += 1;
        let failures = entry.failures;
        if failures >= self.config.max_failures {
            self.remove(addr);
            return false;
        }
        entry.state = State::Idle;
        let delay = self.backoff(failures);
        self.schedule(addr, now + delay);
        true
    }

    /// Our dial of `addr` connected.
    pub fn connected(&mut self, addr: SocketAddr) {
        if let Some(at) = self.entries.get_mut(&addr).and_then(|e| e.due_at.take()) {
            self.due.remove(&(at.0, at.1, addr));
        }
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.state = State::Connected;
        }
    }

    /// Our connection to `addr` closed. With `handshake_done` it was a good
    /// peer: its failures are cleared and it is redialled after a backoff
    /// that grows with each such reconnect. Without, it counts as a failed
    /// dial (a peer that hangs up before the handshake may not have loaded
    /// the torrent yet: libtorrent does this).
    pub fn disconnected(&mut self, addr: SocketAddr, handshake_done: bool, now: Instant) {
        if !handshake_done {
            self.dial_failed(addr, now);
            return;
        }
        let Some(entry) = self.entries.get_mut(&addr) else { return };
        entry.failures = 0;
        entry.reconnects = entry.reconnects.saturating_add(1);
        entry.state = State::Idle;
        let reconnects = entry.reconnects;
        let delay = self.backoff(reconnects);
        self.schedule(addr, now + delay);
    }

    /// Drops `addr` from the book.
    pub fn remove(&mut self, addr: SocketAddr) {
        if let Some(entry) = self.entries.remove(&addr) {
            if let Some((at, seq)) = entry.due_at {
                self.due.remove(&(at, seq, addr));
            }
        }
    }

    fn backoff(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(1).min(20);
        self.config.base_backoff.saturating_mul(1 << doublings).min(self.config.max_backoff)
    }

    fn schedule(&mut self, addr: SocketAddr, at: Instant) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(entry) = self.entries.get_mut(&addr) {
            if let Some((old_at, old_seq)) = entry.due_at.replace((at, seq)) {
                self.due.remove(&(old_at, old_seq, addr));
            }
            self.due.insert((at, seq, addr));
        }
    }

    /// The idle entry to evict: most failures first, then oldest.
    fn victim(&self) -> Option<SocketAddr> {
        self.entries
            .iter()
            .filter(|(_, e)| e.state == State::Idle)
            .max_by_key(|(_, e)| (e.failures, std::cmp::Reverse(e.added)))
            .map(|(addr, _)| *addr)
    }

    /// Checks the invariants (tests).
    #[cfg(test)]
    fn check(&self) {
        assert!(self.entries.len() <= self.config.max_entries.max(1));
        let idle = self.entries.values().filter(|e| e.state == State::Idle).count();
        assert_eq!(idle, self.due.len());
        for (at, seq, addr) in &self.due {
            assert_eq!(self.entries[addr].due_at, Some((*at, *seq)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 6881))
    }

    fn book(max_entries: usize) -> PeerBook {
        PeerBook::new(PeerBookConfig { max_entries, ..PeerBookConfig::default() })
    }

    #[test]
    fn new_peers_are_dialled_in_order() {
        let t0 = Instant::now();
        let mut b = book(10);
        assert_eq!(b.add(addr(1), t0), Added::New);
        assert_eq!(b.add(addr(2), t0), Added::New);
        assert_eq!(b.add(addr(1), t0), Added::Known);
        assert_eq!(b.next_due(t0), Some(addr(1)));
        assert_eq!(b.next_due(t0), Some(addr(2)));
        assert_eq!(b.next_due(t0), None);
        b.check();
    }

    #[test]
    fn failed_dials_back_off_and_are_forgotten() {
        let t0 = Instant::now();
        let mut b = book(10);
        b.add(addr(1), t0);
        let mut now = t0;
        let mut delays = Vec::new();
        loop {
            assert_eq!(b.next_due(now), Some(addr(1)));
            if !b.dial_failed(addr(1), now) {
                break;
            }
            // Not due before its backoff ends.
            let first = b.due.first().unwrap().0;
            delays.push(first - now);
            assert_eq!(b.next_due(first - Duration::from_millis(1)), None);
            now = first;
            b.check();
        }
        let secs: Vec<u64> = delays.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32], "doubling from 2 s, forgotten at 6 failures");
        assert!(b.is_empty());
    }

    #[test]
    fn good_peers_are_redialled_with_growing_backoff() {
        let t0 = Instant::now();
        let mut b = book(10);
        b.add(addr(1), t0);
        let mut now = t0;
        for expected_secs in [2u64, 4, 8, 16] {
            assert_eq!(b.next_due(now), Some(addr(1)));
            b.connected(addr(1));
            assert_eq!(b.next_due(now + Duration::from_secs(3600)), None, "not while connected");
            b.disconnected(addr(1), true, now);
            let at = b.due.first().unwrap().0;
            assert_eq!((at - now).as_secs(), expected_secs);
            now = at;
            b.check();
        }
        // A good peer is never forgotten for its reconnects, and a failed
        // dial after good sessions starts its own count.
        assert!(b.contains(addr(1)));
        assert_eq!(b.next_due(now), Some(addr(1)));
        assert!(b.dial_failed(addr(1), now));
        // Capped.
        let mut b = book(10);
        b.add(addr(1), t0);
        for _ in 0..40 {
            b.next_due(t0 + Duration::from_secs(1 << 30));
            b.connected(addr(1));
            b.disconnected(addr(1), true, t0);
        }
        assert_eq!(b.due.first().unwrap().0 - t0, PeerBookConfig::default().max_backoff);
    }

    #[test]
    fn a_hang_up_before_the_handshake_counts_as_a_failure() {
        let t0 = Instant::now();
        let mut b = book(10);
        b.add(addr(1), t0);
        for _ in 0..5 {
            let at = b.due.first().unwrap().0;
            assert_eq!(b.next_due(at), Some(addr(1)));
            b.connected(addr(1));
            b.disconnected(addr(1), false, at);
        }
        let at = b.due.first().unwrap().0;
        b.next_due(at);
        b.connected(addr(1));
        b.disconnected(addr(1), false, at);
        assert!(!b.contains(addr(1)), "forgotten after max_failures");
        b.check();
    }

    #[test]
    fn a_full_book_evicts_failed_then_oldest_never_active_ones() {
        let t0 = Instant::now();
        let mut b = book(4);
        for n in 1..=4 {
            b.add(addr(n), t0);
        }
        // 1 is connected, 2 failed once, 3 and 4 are idle.
        assert_eq!(b.next_due(t0), Some(addr(1)));
        b.connected(addr(1));
        assert_eq!(b.next_due(t0), Some(addr(2)));
        b.dial_failed(addr(2), t0);
        assert_eq!(b.add(addr(5), t0), Added::Evicted(addr(2)), "the failed one first");
        assert_eq!(b.add(addr(6), t0), Added::Evicted(addr(3)), "then the oldest");
        assert_eq!(b.add(addr(7), t0), Added::Evicted(addr(4)));
        assert!(b.contains(addr(1)), "a connected peer is never evicted");
        b.check();
        // Full of peers being dialled or connected: new ones wait.
        while b.next_due(t0).is_some() {}
        assert_eq!(b.add(addr(8), t0), Added::Full);
        assert_eq!(b.len(), 4);
        b.check();
    }

    #[test]
    fn new_peers_keep_being_dialled_after_thousands_failed() {
        // The bug this book fixes: the list filled at 2,000 and then nothing
        // new was ever dialled.
        let t0 = Instant::now();
        let mut b = book(2000);
        let mut now = t0;
        for n in 0..5000u16 {
            b.add(addr(n), now);
            let dialled = b.next_due(now).expect("a due peer");
            b.dial_failed(dialled, now);
            now += Duration::from_millis(10);
        }
        assert!(b.len() <= 2000);
        let fresh = addr(9999);
        assert!(matches!(b.add(fresh, now), Added::New | Added::Evicted(_)));
        // It is due at once; older failures wait for their backoff.
        let mut got = Vec::new();
        while let Some(a) = b.next_due(now) {
            got.push(a);
            b.dial_failed(a, now);
        }
        assert!(got.contains(&fresh));
        b.check();
    }
}
