//! BEP 42: node ids derived from the external IP, and the `ip` votes that
//! tell us that IP.
//!
//! Layer: pure core. A node's id must start with 21 bits of
//! `crc32c((ip & mask) | r << 29)` (IPv4; IPv6 uses the first 8 bytes), `r`
//! being the id's last byte & 7. Local addresses (loopback, private,
//! link-local, unique-local) are exempt: every id conforms there, and a vote
//! for a local address never changes our id.
//!
//! Invariant: our id changes only when [`VOTES_NEEDED`] distinct voter IPs
//! agree on an external IP that differs from the one we have; the vote table
//! is bounded by [`VOTERS_MAX`].

use super::NodeId;
use std::collections::HashMap;
use std::net::IpAddr;

/// Distinct voter IPs that must agree before our external IP (and id) changes.
pub const VOTES_NEEDED: usize = 5;
/// Voters remembered at most; the table restarts when full.
pub const VOTERS_MAX: usize = 64;

const V4_MASK: [u8; 4] = [0x03, 0x0f, 0x3f, 0xff];
const V6_MASK: [u8; 8] = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];

/// True for addresses BEP 42 does not apply to.
pub fn is_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// The CRC the id prefix must match, for the 3-bit `r`.
fn prefix_crc(ip: &IpAddr, r: u8) -> u32 {
    match ip {
        IpAddr::V4(v4) => {
            let mut bytes = v4.octets();
            for (b, m) in bytes.iter_mut().zip(V4_MASK) {
                *b &= m;
            }
            bytes[0] |= (r & 7) << 5;
            crc32c::crc32c(&bytes)
        }
        IpAddr::V6(v6) => {
            let octets = v6.octets();
            let mut bytes = [0u8; 8];
            for i in 0..8 {
                bytes[i] = octets[i] & V6_MASK[i];
            }
            bytes[0] |= (r & 7) << 5;
            crc32c::crc32c(&bytes)
        }
    }
}

/// A conforming id for `ip`, the rest of it from `random`.
pub fn node_id_for(ip: &IpAddr, random: [u8; 20]) -> NodeId {
    let mut id = random;
    let crc = prefix_crc(ip, id[19]);
    id[0] = (crc >> 24) as u8;
    id[1] = (crc >> 16) as u8;
    id[2] = ((crc >> 8) as u8 & 0xf8) | (id[2] & 0x07);
    NodeId(id)
}

/// True when `id` is a valid BEP 42 id for `ip`, or `ip` is local.
pub fn conforms(id: &NodeId, ip: &IpAddr) -> bool {
    if is_local(ip) {
        return true;
    }
    let crc = prefix_crc(ip, id.0[19]);
    id.0[0] == (crc >> 24) as u8
        && id.0[1] == (crc >> 16) as u8
        && (id.0[2] & 0xf8) == ((crc >> 8) as u8 & 0xf8)
}

/// The `ip` fields of responses, one vote per voter IP.
#[derive(Debug, Default)]
pub struct IpVotes {
    votes: HashMap<IpAddr, IpAddr>,
}

impl IpVotes {
    /// Records that `voter` sees us at `seen`; returns the new external IP
    /// when enough distinct voters agree on one that is not `current`.
    pub fn vote(&mut self, voter: IpAddr, seen: IpAddr, current: Option<IpAddr>) -> Option<IpAddr> {
        if is_local(&seen) || is_local(&voter) {
            return None;
        }
        if self.votes.len() >= VOTERS_MAX && !self.votes.contains_key(&voter) {
            self.votes.clear();
        }
        self.votes.insert(voter, seen);
        if Some(seen) == current {
            return None;
        }
        let agreeing = self.votes.values().filter(|v| **v == seen).count();
        if agreeing >= VOTES_NEEDED {
            self.votes.clear();
            return Some(seen);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; 20] {
        let mut out = [0u8; 20];
        for i in 0..20 {
            out[i] = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// The test vectors of BEP 42.
    #[test]
    fn bep42_vectors() {
        let vectors = [
            ("124.31.75.21", "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401"),
            ("21.75.31.124", "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256"),
            ("65.23.51.170", "a5d43220bc8f112a3d426c84764f8c2a1150e616"),
            ("84.124.73.14", "1b0321dd1bb1fe518101ceef99462b947a01ff41"),
            ("43.213.53.83", "e56f6cbf5b7c4be0237986d5243b87aa6d51305a"),
        ];
        for (ip, id) in vectors {
            let ip: IpAddr = ip.parse().unwrap();
            let id = NodeId(hex(id));
            assert!(conforms(&id, &ip), "{ip}");
            let mut random = [0x55u8; 20];
            random[19] = id.0[19];
            let made = node_id_for(&ip, random);
            assert_eq!(made.0[..2], id.0[..2]);
            assert_eq!(made.0[2] & 0xf8, id.0[2] & 0xf8);
            assert!(conforms(&made, &ip));
            assert!(!conforms(&NodeId([0x55; 20]), &ip));
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(conforms(&node_id_for(&v6, [9; 20]), &v6));
    }

    #[test]
    fn local_addresses_are_exempt() {
        for ip in ["127.0.0.1", "10.1.1.1", "192.168.0.2", "::1", "fd00::1", "fe80::1"] {
            assert!(conforms(&NodeId([0; 20]), &ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn id_changes_only_after_enough_votes() {
        let mut votes = IpVotes::default();
        let seen: IpAddr = "198.51.100.7".parse().unwrap();
        for i in 1..VOTES_NEEDED {
            let voter = IpAddr::from([203, 0, 113, i as u8]);
            assert_eq!(votes.vote(voter, seen, None), None);
            // The same voter again does not count twice.
            assert_eq!(votes.vote(voter, seen, None), None);
        }
        assert_eq!(votes.vote("127.0.0.1".parse().unwrap(), seen, None), None);
        assert_eq!(votes.vote(IpAddr::from([203, 0, 113, 200]), seen, None), Some(seen));
        let local: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..10 {
            assert_eq!(votes.vote(IpAddr::from([198, 18, 0, i]), local, None), None);
        }
    }
}
