//! The mainline DHT (BEP 5), with IPv6 (BEP 32) and node ids derived from
//! the external IP (BEP 42).
//!
//! Layer: pure core. Datagrams and `now` go in ([`Dht::handle_datagram`],
//! [`Dht::handle_timeout`], [`Dht::add_torrent`], [`Dht::add_node`]);
//! datagrams to send, peers found and the next deadline come out
//! ([`Dht::poll_transmit`], [`Dht::poll_event`], [`Dht::poll_timeout`]).
//! Nothing here names a socket, a runtime or the clock; the driver is
//! `net::dht`. Randomness comes from a seeded generator, so tests on
//! virtual time are reproducible.
//!
//! Parts, modelled on libtorrent's `kademlia/` (read, not copied):
//! * [`krpc`]: the KRPC message codec over the bounded bencode decoder;
//! * [`table`]: the routing table (K = 8, buckets split only around our id,
//!   good / questionable / bad nodes, replacement caches);
//! * [`lookup`]: iterative `find_node` / `get_peers` lookups as state machines
//!   over responses and timeouts;
//! * [`store`]: the bounded peer store behind `announce_peer`;
//! * [`token`]: write tokens from a rotating secret;
//! * [`bep42`]: node ids from the external IP, and the `ip` votes;
//! * [`node`]: [`Dht`], which ties them together and schedules announces;
//! * [`state`]: the persisted table (ids and nodes), as bencode.
//!
//! Invariants: every table, queue and parsed field has a named bound; hostile
//! datagrams are counted and dropped (or answered with a KRPC error), never a
//! panic; only nodes that answered one of our queries enter the table.

pub mod bep42;
pub mod krpc;
pub mod lookup;
pub mod node;
pub mod state;
pub mod store;
pub mod table;
pub mod token;

#[cfg(test)]
mod sim;

pub use node::{Dht, DhtConfig, DhtEvent, DhtStats};
pub use state::DhtState;

use rand::Rng;
use std::net::SocketAddr;

/// A 160-bit node id (or lookup target: an info hash is one too).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 20]);

impl NodeId {
    pub fn random(rng: &mut impl Rng) -> NodeId {
        let mut id = [0u8; 20];
        rng.fill(&mut id[..]);
        NodeId(id)
    }

    /// The XOR distance, compared as a big-endian number.
    pub fn distance(&self, other: &NodeId) -> [u8; 20] {
        let mut out = [0u8; 20];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        out
    }

    /// Leading bits shared with `other` (160 when equal).
    pub fn common_prefix_bits(&self, other: &NodeId) -> usize {
        for i in 0..20 {
            let x = self.0[i] ^ other.0[i];
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        160
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…")
    }
}

/// A node we know by id and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// The address family of a table (BEP 32 keeps IPv4 and IPv6 apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        match addr {
            SocketAddr::V4(_) => Family::V4,
            // An IPv4-mapped IPv6 address is an IPv4 node.
            SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_distance() {
        let a = NodeId([0; 20]);
        let mut b = a;
        b.0[1] = 0b0010_0000;
        assert_eq!(a.common_prefix_bits(&b), 10);
        assert_eq!(a.common_prefix_bits(&a), 160);
        assert_eq!(a.distance(&b)[1], 0b0010_0000);
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        assert_eq!(Family::of(&mapped), Family::V4);
        assert_eq!(canonical(mapped), "10.0.0.1:5".parse::<SocketAddr>().unwrap());
    }
}
