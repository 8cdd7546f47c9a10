//! An iterative lookup (BEP 5): `find_node` towards a target, or
//! `get_peers` for an info hash, walking closer nodes until the [`K`]
//! closest known nodes have all answered.
//!
//! Layer: pure core, a state machine over responses and timeouts: the owner
//! asks [`Lookup::next_query`] whom to query next (at most [`ALPHA`] in
//! flight), and reports each answer ([`Lookup::on_response`]) or timeout
//! ([`Lookup::on_failure`]). Modelled on libtorrent's `traversal_algorithm`.
//!
//! Bounds: [`CANDIDATES_MAX`] candidates (the farthest idle ones are
//! dropped), [`QUERIES_MAX`] queries in all, and a deadline checked by the
//! owner ([`LOOKUP_TIMEOUT_SECS`]).

use super::table::K;
use super::{NodeId, NodeInfo};
use std::collections::HashSet;
use std::net::SocketAddr;

/// Queries in flight per lookup.
pub const ALPHA: usize = 3;
/// Candidates remembered per lookup at most.
pub const CANDIDATES_MAX: usize = 64;
/// Queries sent per lookup at most.
pub const QUERIES_MAX: usize = 96;
/// A lookup is abandoned (finished with what it has) after this long.
pub const LOOKUP_TIMEOUT_SECS: u64 = 60;
/// Distinct peers remembered per lookup (for de-duplication).
pub const PEERS_SEEN_MAX: usize = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Fresh,
    InFlight,
    Responded,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    /// Unknown for bootstrap routers and saved addresses.
    id: Option<NodeId>,
    addr: SocketAddr,
    state: State,
    token: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct Lookup {
    target: NodeId,
    /// Sorted by distance to the target; unknown ids last.
    candidates: Vec<Candidate>,
    in_flight: usize,
    queries: usize,
    peers_seen: HashSet<SocketAddr>,
}

fn sort_key(target: &NodeId, id: &Option<NodeId>) -> ([u8; 20], bool) {
    match id {
        Some(id) => (id.distance(target), false),
        None => ([0xff; 20], true),
    }
}

impl Lookup {
    /// A lookup starting from `seeds` (table nodes, routers with no id).
    pub fn new(
        target: NodeId,
        seeds: impl IntoIterator<Item = (Option<NodeId>, SocketAddr)>,
    ) -> Lookup {
        let mut lookup = Lookup {
            target,
            candidates: Vec::new(),
            in_flight: 0,
            queries: 0,
            peers_seen: HashSet::new(),
        };
        for (id, addr) in seeds {
            lookup.add_candidate(id, addr);
        }
        lookup
    }

    pub fn target(&self) -> NodeId {
        self.target
    }

    fn add_candidate(&mut self, id: Option<NodeId>, addr: SocketAddr) {
        if self.candidates.iter().any(|c| c.addr == addr || (id.is_some() && c.id == id)) {
            return;
        }
        let key = sort_key(&self.target, &id);
        let at = self.candidates.partition_point(|c| sort_key(&self.target, &c.id) <= key);
        if at >= CANDIDATES_MAX {
            return;
        }
        self.candidates.insert(at, Candidate { id, addr, state: State::Fresh, token: None });
        if self.candidates.len() > CANDIDATES_MAX {
            // Drop the farthest candidate that is not being waited on.
            if let Some(i) = self.candidates.iter().rposition(|c| c.state != State::InFlight) {
                self.candidates.remove(i);
            }
        }
    }

    /// The next node to query, marked in flight; `None` when [`ALPHA`]
    /// queries are out or nothing worth asking is left.
    pub fn next_query(&mut self) -> Option<SocketAddr> {
        if self.in_flight >= ALPHA || self.queries >= QUERIES_MAX {
            return None;
        }
        let mut answered = 0;
        for c in &mut self.candidates {
            if answered >= K {
                return None;
            }
            match c.state {
                State::Fresh => {
                    c.state = State::InFlight;
                    self.in_flight += 1;
                    self.queries += 1;
                    return Some(c.addr);
                }
                State::Responded => answered += 1,
                State::InFlight | State::Failed => {}
            }
        }
        None
    }

    fn find(&mut self, addr: &SocketAddr) -> Option<&mut Candidate> {
        self.candidates.iter_mut().find(|c| c.addr == *addr && c.state == State::InFlight)
    }

    /// `addr` answered: its id, the closer nodes it knows, its token, and
    /// peers (get_peers). Returns the peers not seen before in this lookup.
    pub fn on_response(
        &mut self,
        addr: &SocketAddr,
        id: Option<NodeId>,
        nodes: &[NodeInfo],
        token: Option<Vec<u8>>,
        values: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let target = self.target;
        let Some(c) = self.find(addr) else { return Vec::new() };
        c.state = State::Responded;
        c.token = token;
        // A node that changed its id (BEP 42) answers under the new one.
        let id_changed = id.is_some() && c.id != id;
        if id_changed {
            c.id = id;
        }
        self.in_flight -= 1;
        if id_changed {
            self.candidates.sort_by_key(|c| sort_key(&target, &c.id));
        }
        for node in nodes {
            self.add_candidate(Some(node.id), node.addr);
        }
        let mut fresh = Vec::new();
        for peer in values {
            if self.peers_seen.len() < PEERS_SEEN_MAX && self.peers_seen.insert(*peer) {
                fresh.push(*peer);
            }
        }
        fresh
    }

    /// A query to `addr` timed out or was answered with an error.
    pub fn on_failure(&mut self, addr: &SocketAddr) {
        if let Some(c) = self.find(addr) {
            c.state = State::Failed;
            self.in_flight -= 1;
        }
    }

    /// True when nothing is in flight and nothing more is worth asking.
    pub fn is_finished(&self) -> bool {
        if self.in_flight > 0 {
            return false;
        }
        if self.queries >= QUERIES_MAX {
            return true;
        }
        let mut answered = 0;
        for c in &self.candidates {
            if answered >= K {
                return true;
            }
            match c.state {
                State::Fresh => return false,
                State::Responded => answered += 1,
                State::InFlight | State::Failed => {}
            }
        }
        true
    }

    /// Nodes that answered (closest first) with the token they gave: whom to
    /// `announce_peer` to.
    pub fn announce_targets(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.candidates
            .iter()
            .filter(|c| c.state == State::Responded)
            .filter_map(|c| Some((c.addr, c.token.clone()?)))
            .take(K)
            .collect()
    }

    pub fn responded_count(&self) -> usize {
        self.candidates.iter().filter(|c| c.state == State::Responded).count()
    }

    pub fn queries_sent(&self) -> usize {
        self.queries
    }

    /// Adds a node to ask (a node learned while the lookup runs).
    pub fn add_seed(&mut self, id: Option<NodeId>, addr: SocketAddr) {
        self.add_candidate(id, addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 20])
    }

    fn addr(b: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, b], 1000))
    }

    #[test]
    fn walks_closer_and_finishes() {
        let target = id(0);
        let mut lookup = Lookup::new(target, [(None, addr(200)), (Some(id(0x80)), addr(0x80))]);
        let first = lookup.next_query().unwrap();
        assert_eq!(first, addr(0x80), "known ids before unknown ones");
        let second = lookup.next_query().unwrap();
        assert_eq!(second, addr(200));
        assert_eq!(lookup.next_query(), None);
        // The router knows closer nodes.
        let closer: Vec<NodeInfo> =
            (1..=10).map(|b| NodeInfo { id: id(b), addr: addr(b) }).collect();
        lookup.on_response(&addr(200), Some(id(0xf0)), &closer, None, &[]);
        lookup.on_failure(&addr(0x80));
        let mut asked = Vec::new();
        while !lookup.is_finished() {
            while let Some(a) = lookup.next_query() {
                asked.push(a);
            }
            let a = asked.pop().unwrap();
            let b = a.ip().to_string().rsplit('.').next().unwrap().parse::<u8>().unwrap();
            let peers = lookup.on_response(&a, Some(id(b)), &[], Some(vec![b]), &[addr(99)]);
            assert!(peers.len() <= 1);
        }
        // The 8 closest (ids 1..=8) answered; 9 and 10 never needed asking.
        let targets = lookup.announce_targets();
        assert_eq!(targets.len(), K);
        assert!(targets.iter().all(|(a, _)| a
            .ip()
            .to_string()
            .rsplit('.')
            .next()
            .unwrap()
            .parse::<u8>()
            .unwrap()
            <= 9));
        assert!(lookup.queries_sent() <= 12);
    }

    #[test]
    fn bounded_candidates_and_queries() {
        let mut lookup = Lookup::new(id(0), [(None, addr(1))]);
        lookup.next_query();
        let many: Vec<NodeInfo> = (0..200u32)
            .map(|i| NodeInfo {
                id: NodeId([(i % 250) as u8 + 1; 20]),
                addr: SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], 1)),
            })
            .collect();
        lookup.on_response(&addr(1), None, &many, None, &[]);
        assert!(lookup.candidates.len() <= CANDIDATES_MAX);
        let mut sent = 0;
        while let Some(a) = lookup.next_query() {
            lookup.on_failure(&a);
            sent += 1;
        }
        assert!(sent <= QUERIES_MAX);
        assert!(lookup.is_finished());
    }
}
