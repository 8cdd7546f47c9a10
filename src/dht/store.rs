//! The peers other nodes announce to us (`announce_peer`), served back in
//! `get_peers` replies.
//!
//! Layer: pure core. Bounded: at most [`StoreLimits::torrents_max`] info
//! hashes and [`StoreLimits::peers_per_torrent_max`] peers each; a peer not
//! re-announced within [`StoreLimits::peer_ttl_secs`] expires. A full torrent
//! replaces its oldest peer; a full store refuses new info hashes until
//! entries expire.

use super::{Family, NodeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    pub torrents_max: usize,
    pub peers_per_torrent_max: usize,
    pub peer_ttl_secs: u64,
}

impl Default for StoreLimits {
    fn default() -> StoreLimits {
        // libtorrent: 2000 torrents, 500 peers each; peers expire after 45 min.
        StoreLimits { torrents_max: 2000, peers_per_torrent_max: 500, peer_ttl_secs: 45 * 60 }
    }
}

#[derive(Clone, Copy, Debug)]
struct StoredPeer {
    addr: SocketAddr,
    seed: bool,
    expires_at: Instant,
}

#[derive(Debug, Default)]
pub struct Store {
    limits: StoreLimits,
    torrents: HashMap<NodeId, Vec<StoredPeer>>,
    peers: usize,
}

impl Store {
    pub fn new(limits: StoreLimits) -> Store {
        Store { limits, ..Store::default() }
    }

    /// Stores (or refreshes) a peer; false when the store is full.
    pub fn announce(
        &mut self,
        info_hash: NodeId,
        addr: SocketAddr,
        seed: bool,
        now: Instant,
    ) -> bool {
        let expires_at = now + Duration::from_secs(self.limits.peer_ttl_secs);
        if !self.torrents.contains_key(&info_hash)
            && self.torrents.len() >= self.limits.torrents_max
        {
            return false;
        }
        let peers = self.torrents.entry(info_hash).or_default();
        if let Some(peer) = peers.iter_mut().find(|p| p.addr == addr) {
            peer.seed = seed;
            peer.expires_at = expires_at;
            return true;
        }
        let peer = StoredPeer { addr, seed, expires_at };
        if peers.len() >= self.limits.peers_per_torrent_max {
            let oldest = (0..peers.len()).min_by_key(|&i| peers[i].expires_at).expect("not empty");
            peers[oldest] = peer;
        } else {
            peers.push(peer);
            self.peers += 1;
        }
        true
    }

    /// Up to `max` live peers of `family` for `info_hash`, newest first;
    /// `noseed` leaves seeds out (BEP 33).
    pub fn get(
        &self,
        info_hash: &NodeId,
        family: Family,
        noseed: bool,
        max: usize,
        now: Instant,
        out: &mut Vec<SocketAddr>,
    ) {
        let Some(peers) = self.torrents.get(info_hash) else { return };
        let live = peers
            .iter()
            .rev()
            .filter(|p| p.expires_at > now && Family::of(&p.addr) == family && !(noseed && p.seed));
        out.extend(live.take(max).map(|p| p.addr));
    }

    /// Drops expired peers and empty torrents.
    pub fn expire(&mut self, now: Instant) {
        let mut removed = 0;
        self.torrents.retain(|_, peers| {
            let before = peers.len();
            peers.retain(|p| p.expires_at > now);
            removed += before - peers.len();
            !peers.is_empty()
        });
        self.peers -= removed;
    }

    pub fn torrent_count(&self) -> usize {
        self.torrents.len()
    }

    pub fn peer_count(&self) -> usize {
        self.peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let limits = StoreLimits { torrents_max: 2, peers_per_torrent_max: 3, peer_ttl_secs: 60 };
        let mut store = Store::new(limits);
        let now = Instant::now();
        let a = NodeId([1; 20]);
        for port in 1..=5u16 {
            assert!(store.announce(
                a,
                SocketAddr::from(([10, 0, 0, 1], port)),
                false,
                now + Duration::from_secs(port.into())
            ));
        }
        assert_eq!(store.peer_count(), 3);
        let mut out = Vec::new();
        store.get(&a, Family::V4, false, 10, now, &mut out);
        let ports: Vec<u16> = out.iter().map(SocketAddr::port).collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.contains(&5) && ports.contains(&4) && !ports.contains(&1));
        assert!(store.announce(NodeId([2; 20]), "10.0.0.2:1".parse().unwrap(), true, now));
        assert!(!store.announce(NodeId([3; 20]), "10.0.0.3:1".parse().unwrap(), false, now));
        out.clear();
        store.get(&NodeId([2; 20]), Family::V4, true, 10, now, &mut out);
        assert!(out.is_empty(), "noseed leaves seeds out");
        store.get(&NodeId([2; 20]), Family::V6, false, 10, now, &mut out);
        assert!(out.is_empty(), "families are apart");
        store.expire(now + Duration::from_secs(61));
        assert_eq!((store.torrent_count(), store.peer_count()), (1, 3));
        store.expire(now + Duration::from_secs(3600));
        assert_eq!((store.torrent_count(), store.peer_count()), (0, 0));
    }
}
