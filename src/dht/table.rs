//! The routing table of one address family (BEP 5 Kademlia).
//!
//! Layer: pure core. Buckets are indexed by the number of leading bits a
//! node shares with our id; only the last bucket (the one holding our own
//! id's neighbourhood) splits, so the table is at most [`BUCKETS_MAX`] x
//! [`K`] nodes plus [`REPLACEMENTS_PER_BUCKET`] spares per bucket.
//!
//! Node states: *good* answered a query of ours within [`GOOD_FOR_SECS`] (or
//! answered once and queried us within it); *bad* failed [`FAILS_BAD`] queries
//! in a row; *questionable* otherwise. A full bucket takes a newcomer only in
//! place of a bad node, or of a node with a non-conforming BEP 42 id when the
//! newcomer conforms; otherwise the newcomer waits in the replacement cache
//! and the caller pings the bucket's most stale questionable node.
//!
//! Invariants: only nodes that answered us are in a bucket; an id is in the
//! table once; with `restrict_ips`, one node per non-local IP.

use super::bep42::is_local;
use super::{NodeId, NodeInfo};
use rand::Rng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Nodes per bucket (BEP 5).
pub const K: usize = 8;
/// Buckets at most (one per bit of the id).
pub const BUCKETS_MAX: usize = 160;
/// Spare nodes kept per bucket.
pub const REPLACEMENTS_PER_BUCKET: usize = 8;
/// A node that answered within this long is good (BEP 5: 15 minutes).
pub const GOOD_FOR_SECS: u64 = 15 * 60;
/// Failed queries in a row that make a node bad.
pub const FAILS_BAD: u8 = 2;
/// A bucket with no change for this long is refreshed (BEP 5: 15 minutes).
pub const REFRESH_AFTER_SECS: u64 = 15 * 60;
/// A questionable node is pinged at most this often.
pub const PING_INTERVAL_SECS: u64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    Good,
    Questionable,
    Bad,
}

#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub last_response: Instant,
    pub last_heard: Instant,
    pub last_pinged: Option<Instant>,
    pub fails: u8,
    pub conforming: bool,
}

impl Entry {
    pub fn status(&self, now: Instant) -> NodeStatus {
        let good_for = Duration::from_secs(GOOD_FOR_SECS);
        if self.fails >= FAILS_BAD {
            NodeStatus::Bad
        } else if now.saturating_duration_since(self.last_response) < good_for
            || now.saturating_duration_since(self.last_heard) < good_for
        {
            NodeStatus::Good
        } else {
            NodeStatus::Questionable
        }
    }

    pub fn info(&self) -> NodeInfo {
        NodeInfo { id: self.id, addr: self.addr }
    }
}

#[derive(Debug)]
struct Bucket {
    nodes: Vec<Entry>,
    replacements: Vec<Entry>,
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket { nodes: Vec::with_capacity(K), replacements: Vec::new(), last_changed: now }
    }
}

/// What [`Table::responded`] did with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    Added,
    Updated,
    /// The bucket is full: kept as a replacement; ping this questionable node.
    Full {
        ping: Option<NodeInfo>,
    },
    /// Refused: the id is known at another address, or the IP is already in.
    Refused,
}

#[derive(Debug)]
pub struct Table {
    own: NodeId,
    buckets: Vec<Bucket>,
    restrict_ips: bool,
    len: usize,
}

impl Table {
    pub fn new(own: NodeId, restrict_ips: bool, now: Instant) -> Table {
        Table { own, buckets: vec![Bucket::new(now)], restrict_ips, len: 0 }
    }

    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// Nodes in buckets (replacements not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    fn bucket_index(&self, id: &NodeId) -> usize {
        self.own.common_prefix_bits(id).min(self.buckets.len() - 1)
    }

    fn find(&self, id: &NodeId) -> Option<(usize, usize)> {
        let b = self.bucket_index(id);
        self.buckets[b].nodes.iter().position(|e| e.id == *id).map(|i| (b, i))
    }

    fn find_addr(&self, addr: &SocketAddr) -> Option<(usize, usize)> {
        self.buckets.iter().enumerate().find_map(|(b, bucket)| {
            bucket.nodes.iter().position(|e| e.addr == *addr).map(|i| (b, i))
        })
    }

    fn ip_taken(&self, addr: &SocketAddr) -> bool {
        self.restrict_ips
            && !is_local(&addr.ip())
            && self.buckets.iter().any(|b| b.nodes.iter().any(|e| e.addr.ip() == addr.ip()))
    }

    /// A node that queried us: refreshes it when known. Returns true when
    /// it is unknown and its bucket has room (worth a ping to verify it).
    pub fn heard(&mut self, id: &NodeId, addr: &SocketAddr, now: Instant) -> bool {
        if *id == self.own {
            return false;
        }
        match self.find(id) {
            Some((b, i)) => {
                let entry = &mut self.buckets[b].nodes[i];
                if entry.addr == *addr {
                    entry.last_heard = now;
                }
                false
            }
            None => {
                let b = self.bucket_index(id);
                let bucket = &self.buckets[b];
                !self.ip_taken(addr)
                    && (bucket.nodes.len() < K
                        || b == self.buckets.len() - 1
                        || bucket.nodes.iter().any(|e| e.status(now) == NodeStatus::Bad))
            }
        }
    }

    /// A node answered one of our queries.
    pub fn responded(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        conforming: bool,
        now: Instant,
    ) -> Insert {
        if id == self.own {
            return Insert::Refused;
        }
        if let Some((b, i)) = self.find(&id) {
            let entry = &mut self.buckets[b].nodes[i];
            if entry.addr != addr {
                return Insert::Refused;
            }
            entry.last_response = now;
            entry.last_heard = now;
            entry.fails = 0;
            self.buckets[b].last_changed = now;
            return Insert::Updated;
        }
        // The same address under a new id: the node restarted.
        if let Some((b, i)) = self.find_addr(&addr) {
            self.buckets[b].nodes.swap_remove(i);
            self.len -= 1;
        }
        if self.ip_taken(&addr) {
            return Insert::Refused;
        }
        let entry = Entry {
            id,
            addr,
            last_response: now,
            last_heard: now,
            last_pinged: None,
            fails: 0,
            conforming,
        };
        loop {
            let b = self.bucket_index(&id);
            let last = self.buckets.len() - 1;
            let can_split = b == last && self.buckets.len() < BUCKETS_MAX;
            let bucket = &mut self.buckets[b];
            if bucket.nodes.len() < K {
                bucket.nodes.push(entry);
                bucket.last_changed = now;
                bucket.replacements.retain(|r| r.id != id);
                self.len += 1;
                return Insert::Added;
            }
            let victim =
                bucket.nodes.iter().position(|e| e.status(now) == NodeStatus::Bad).or_else(|| {
                    conforming.then(|| bucket.nodes.iter().position(|e| !e.conforming)).flatten()
                });
            if let Some(v) = victim {
                bucket.nodes[v] = entry;
                bucket.last_changed = now;
                return Insert::Added;
            }
            if can_split {
                self.split(now);
                continue;
            }
            if !bucket.replacements.iter().any(|r| r.id == id || r.addr == addr) {
                if bucket.replacements.len() >= REPLACEMENTS_PER_BUCKET {
                    bucket.replacements.remove(0);
                }
                bucket.replacements.push(entry);
            }
            let ping_after = Duration::from_secs(PING_INTERVAL_SECS);
            let ping = bucket
                .nodes
                .iter()
                .filter(|e| e.status(now) == NodeStatus::Questionable)
                .filter(|e| {
                    e.last_pinged.is_none_or(|t| now.saturating_duration_since(t) >= ping_after)
                })
                .min_by_key(|e| e.last_heard)
                .map(Entry::info);
            return Insert::Full { ping };
        }
    }

    fn split(&mut self, now: Instant) {
        let index = self.buckets.len() - 1;
        let own = self.own;
        let mut fresh = Bucket::new(now);
        let old = &mut self.buckets[index];
        fresh.last_changed = old.last_changed;
        let (stay, go): (Vec<Entry>, Vec<Entry>) =
            old.nodes.drain(..).partition(|e| own.common_prefix_bits(&e.id) == index);
        old.nodes = stay;
        fresh.nodes = go;
        let (stay, go): (Vec<Entry>, Vec<Entry>) =
            old.replacements.drain(..).partition(|e| own.common_prefix_bits(&e.id) == index);
        old.replacements = stay;
        fresh.replacements = go;
        self.buckets.push(fresh);
    }

    /// We sent a query to `addr` (for the ping interval).
    pub fn pinged(&mut self, addr: &SocketAddr, now: Instant) {
        if let Some((b, i)) = self.find_addr(addr) {
            self.buckets[b].nodes[i].last_pinged = Some(now);
        }
    }

    /// A query to `addr` timed out. A node turning bad is replaced by the
    /// newest spare of its bucket.
    pub fn failed(&mut self, addr: &SocketAddr, now: Instant) {
        let Some((b, i)) = self.find_addr(addr) else { return };
        let bucket = &mut self.buckets[b];
        let entry = &mut bucket.nodes[i];
        entry.fails = entry.fails.saturating_add(1);
        if entry.status(now) == NodeStatus::Bad {
            if let Some(spare) = bucket.replacements.pop() {
                bucket.nodes[i] = spare;
                bucket.last_changed = now;
            }
        }
    }

    /// Removes a node outright (it answered with garbage, or says it is us).
    pub fn remove(&mut self, addr: &SocketAddr) {
        if let Some((b, i)) = self.find_addr(addr) {
            self.buckets[b].nodes.swap_remove(i);
            self.len -= 1;
        }
    }

    /// The `count` non-bad nodes closest to `target`.
    pub fn closest(&self, target: &NodeId, count: usize, now: Instant) -> Vec<NodeInfo> {
        let mut all: Vec<&Entry> = self
            .buckets
            .iter()
            .flat_map(|b| b.nodes.iter())
            .filter(|e| e.status(now) != NodeStatus::Bad)
            .collect();
        all.sort_unstable_by_key(|e| e.id.distance(target));
        all.into_iter().take(count).map(Entry::info).collect()
    }

    /// One node to ping because it went questionable, at most one per
    /// [`PING_INTERVAL_SECS`] each.
    pub fn stale_node(&self, now: Instant) -> Option<NodeInfo> {
        let ping_after = Duration::from_secs(PING_INTERVAL_SECS);
        self.buckets
            .iter()
            .flat_map(|b| b.nodes.iter())
            .filter(|e| e.status(now) == NodeStatus::Questionable)
            .filter(|e| {
                e.last_pinged.is_none_or(|t| now.saturating_duration_since(t) >= ping_after)
            })
            .min_by_key(|e| e.last_heard)
            .map(Entry::info)
    }

    /// A random target inside the first bucket untouched for
    /// [`REFRESH_AFTER_SECS`], and marks it touched (a refresh is under way).
    pub fn refresh_target(&mut self, now: Instant, rng: &mut impl Rng) -> Option<NodeId> {
        let after = Duration::from_secs(REFRESH_AFTER_SECS);
        let index = self
            .buckets
            .iter()
            .position(|b| now.saturating_duration_since(b.last_changed) >= after)?;
        self.buckets[index].last_changed = now;
        let mut target = NodeId::random(rng);
        // Share `index` leading bits with our id, then differ (the last
        // bucket covers everything closer, so keep our bit there too).
        for bit in 0..=index.min(159) {
            let byte = bit / 8;
            let mask = 0x80u8 >> (bit % 8);
            let ours = self.own.0[byte] & mask;
            let want =
                if bit == index && index + 1 < self.buckets.len() { ours ^ mask } else { ours };
            target.0[byte] = (target.0[byte] & !mask) | want;
        }
        Some(target)
    }

    /// Every node in the buckets.
    pub fn nodes(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// The same nodes under a new own id (after a BEP 42 id change).
    pub fn rebuilt(&self, own: NodeId, now: Instant) -> Table {
        let mut table = Table::new(own, self.restrict_ips, now);
        for entry in self.nodes() {
            if entry.id != own {
                let _ =
                    table.responded(entry.id, entry.addr, entry.conforming, entry.last_response);
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 6881))
    }

    #[test]
    fn splits_only_around_our_id_and_stays_bounded() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let own = NodeId::random(&mut rng);
        let mut table = Table::new(own, false, now);
        for i in 0..5000 {
            table.responded(NodeId::random(&mut rng), addr(i), true, now);
        }
        // Random ids fill the far buckets; each holds K at most.
        assert!(table.len() <= table.bucket_count() * K);
        assert!(table.bucket_count() < 20, "random ids do not split deep");
        for (b, bucket) in table.buckets.iter().enumerate() {
            assert!(
                bucket.nodes.len() <= K && bucket.replacements.len() <= REPLACEMENTS_PER_BUCKET
            );
            for e in &bucket.nodes {
                let cpl = own.common_prefix_bits(&e.id);
                if b + 1 < table.bucket_count() {
                    assert_eq!(cpl, b);
                } else {
                    assert!(cpl >= b);
                }
            }
        }
        let target = NodeId::random(&mut rng);
        let closest = table.closest(&target, K, now);
        assert_eq!(closest.len(), K);
        let mut all: Vec<_> = table.nodes().map(|e| e.id.distance(&target)).collect();
        all.sort();
        assert_eq!(closest[K - 1].id.distance(&target), all[K - 1]);
    }

    #[test]
    fn bad_nodes_are_replaced_and_stale_ones_pinged() {
        let now = Instant::now();
        let own = NodeId([0; 20]);
        let mut table = Table::new(own, false, now);
        // Ids with the top bit set all land in bucket 0 (which cannot split
        // once bucket 1 exists): fill bucket 1 first to force the split.
        let far = |i: u8| {
            let mut id = [0u8; 20];
            id[0] = 0x80;
            id[19] = i;
            NodeId(id)
        };
        let near = |i: u8| {
            let mut id = [0u8; 20];
            id[0] = 0x40;
            id[19] = i;
            NodeId(id)
        };
        for i in 0..K as u8 {
            assert_eq!(table.responded(far(i), addr(i.into()), true, now), Insert::Added);
        }
        assert_eq!(table.responded(near(0), addr(100), true, now), Insert::Added);
        assert_eq!(table.bucket_count(), 2);
        let later = now + Duration::from_secs(GOOD_FOR_SECS + 1);
        let Insert::Full { ping: Some(stale) } = table.responded(far(50), addr(50), true, later)
        else {
            panic!("full bucket")
        };
        table.pinged(&stale.addr, later);
        table.failed(&stale.addr, later);
        table.failed(&stale.addr, later);
        assert!(table.nodes().any(|e| e.id == far(50)), "the spare took the bad node's place");
        assert!(!table.nodes().any(|e| e.addr == stale.addr));
        // A non-conforming node gives way to a conforming one.
        let mut t2 = Table::new(own, false, now);
        for i in 0..K as u8 {
            t2.responded(far(i), addr(i.into()), i != 3, now);
        }
        t2.responded(near(0), addr(100), true, now);
        assert_eq!(t2.responded(far(60), addr(60), true, now), Insert::Added);
        assert!(!t2.nodes().any(|e| e.id == far(3)));
    }

    #[test]
    fn one_node_per_public_ip_and_ids_keep_their_address() {
        let now = Instant::now();
        let mut table = Table::new(NodeId([0; 20]), true, now);
        let public: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let same_ip: SocketAddr = "198.51.100.1:2".parse().unwrap();
        assert_eq!(table.responded(NodeId([1; 20]), public, true, now), Insert::Added);
        assert_eq!(table.responded(NodeId([2; 20]), same_ip, true, now), Insert::Refused);
        assert_eq!(table.responded(NodeId([1; 20]), same_ip, true, now), Insert::Refused);
        let local: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(table.responded(NodeId([3; 20]), local, true, now), Insert::Added);
        assert_eq!(
            table.responded(NodeId([4; 20]), "127.0.0.1:3".parse().unwrap(), true, now),
            Insert::Added
        );
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn refresh_targets_land_in_their_bucket() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(7);
        let own = NodeId::random(&mut rng);
        let mut table = Table::new(own, false, now);
        for i in 0..500 {
            table.responded(NodeId::random(&mut rng), addr(i), true, now);
        }
        let later = now + Duration::from_secs(REFRESH_AFTER_SECS);
        let first = table.refresh_target(later, &mut rng).unwrap();
        assert_eq!(own.common_prefix_bits(&first), 0);
        let mut seen = 1;
        while let Some(target) = table.refresh_target(later, &mut rng) {
            let cpl = own.common_prefix_bits(&target);
            assert!(cpl == seen || (seen == table.bucket_count() - 1 && cpl >= seen));
            seen += 1;
        }
        assert_eq!(seen, table.bucket_count());
    }
}
