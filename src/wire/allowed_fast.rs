//! The canonical allowed-fast set of BEP 6: the pieces a peer may request
//! from us while we choke it.
//!
//! Layer: pure core. The set depends only on the peer's address, the info
//! hash and the piece count, so every client computes the same pieces for the
//! same peer, and a peer that opens many connections from one network gets
//! one set, not one per connection.
//!
//! Algorithm (BEP 6, "Allowed Fast Set Generation"): `x` = the peer's IPv4
//! address with the last octet zeroed (its /24, 4 bytes) followed by the
//! 20-byte info hash; repeatedly `x = SHA1(x)`, read the 20 bytes as five
//! big-endian `u32`s, and add each `value % piece_count` not yet in the set,
//! until the set has `k` pieces.
//!
//! IPv6 (BEP 6 has no provision for it): the first 6 bytes of the address,
//! its /48, stand in for the /24. A /48 is what one site is usually given, so
//! like the /24 it keeps one network to one set; a /64 or smaller would let a
//! single host (which often gets a whole /64) claim a set per address. An
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is treated as its IPv4 address.
//!
//! Invariants: the result has `min(k, piece_count)` distinct pieces, each
//! `< piece_count`; generation stops after [`MAX_SHA1_ROUNDS`] whatever the
//! input.

use crate::hash::sha1;
use crate::metainfo::InfoHash;
use std::net::IpAddr;

/// Pieces in the allowed-fast set we give each fast-extension peer (BEP 6:
/// "We currently set k to 10"; libtorrent's default too).
pub const ALLOWED_FAST_SET_SIZE: u32 = 10;

/// SHA1 rounds at most per set (each yields 5 candidates). Drawing 32 distinct
/// pieces of 32 needs about 26 rounds on average; the bound only guarantees
/// the loop ends.
pub const MAX_SHA1_ROUNDS: usize = 10_000;

/// The allowed-fast set of `k` pieces for the peer at `ip`, in generation
/// order (so a set of k is a prefix of the set of k + 1).
pub fn allowed_fast_set(ip: IpAddr, info_hash: &InfoHash, piece_count: u32, k: u32) -> Vec<u32> {
    let k = k.min(piece_count) as usize;
    let mut set = Vec::with_capacity(k);
    if k == 0 {
        return set;
    }
    let mut x = Vec::with_capacity(26);
    match ip {
        IpAddr::V4(v4) => x.extend_from_slice(&(u32::from(v4) & 0xffff_ff00).to_be_bytes()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => x.extend_from_slice(&(u32::from(v4) & 0xffff_ff00).to_be_bytes()),
            None => x.extend_from_slice(&v6.octets()[..6]),
        },
    }
    x.extend_from_slice(&info_hash.0);
    let mut digest = sha1(&x);
    for round in 0..MAX_SHA1_ROUNDS {
        if round > 0 {
            digest = sha1(&digest);
        }
        for word in digest.chunks_exact(4) {
            if set.len() == k {
                return set;
            }
            let value = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            let piece = value % piece_count;
            if !set.contains(&piece) {
                set.push(piece);
            }
        }
        if set.len() == k {
            break;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const BEP6_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(80, 4, 4, 200));
    const BEP6_HASH: InfoHash = InfoHash([0xaa; 20]);

    /// The example results printed in BEP 6.
    #[test]
    fn matches_the_bep6_test_vectors() {
        assert_eq!(
            allowed_fast_set(BEP6_IP, &BEP6_HASH, 1313, 7),
            [1059, 431, 808, 1217, 287, 376, 1188]
        );
        assert_eq!(
            allowed_fast_set(BEP6_IP, &BEP6_HASH, 1313, 9),
            [1059, 431, 808, 1217, 287, 376, 1188, 353, 508]
        );
    }

    #[test]
    fn the_last_octet_does_not_matter_and_mapped_v4_is_v4() {
        let set = allowed_fast_set(BEP6_IP, &BEP6_HASH, 1313, 10);
        let neighbour = IpAddr::V4(Ipv4Addr::new(80, 4, 4, 1));
        assert_eq!(allowed_fast_set(neighbour, &BEP6_HASH, 1313, 10), set);
        let mapped = IpAddr::V6(Ipv4Addr::new(80, 4, 4, 200).to_ipv6_mapped());
        assert_eq!(allowed_fast_set(mapped, &BEP6_HASH, 1313, 10), set);
        let other_net = IpAddr::V4(Ipv4Addr::new(80, 4, 5, 200));
        assert_ne!(allowed_fast_set(other_net, &BEP6_HASH, 1313, 10), set);
    }

    #[test]
    fn ipv6_uses_the_48_bit_prefix() {
        let a: Ipv6Addr = "2001:db8:1234:1::1".parse().unwrap();
        let same_site: Ipv6Addr = "2001:db8:1234:ffff:1:2:3:4".parse().unwrap();
        let other_site: Ipv6Addr = "2001:db8:1235::1".parse().unwrap();
        let set = allowed_fast_set(IpAddr::V6(a), &BEP6_HASH, 5000, 10);
        assert_eq!(set.len(), 10);
        assert_eq!(allowed_fast_set(IpAddr::V6(same_site), &BEP6_HASH, 5000, 10), set);
        assert_ne!(allowed_fast_set(IpAddr::V6(other_site), &BEP6_HASH, 5000, 10), set);
    }

    #[test]
    fn small_torrents_get_every_piece_once_and_empty_ones_nothing() {
        let mut set = allowed_fast_set(BEP6_IP, &BEP6_HASH, 4, 10);
        set.sort();
        assert_eq!(set, [0, 1, 2, 3]);
        assert!(allowed_fast_set(BEP6_IP, &BEP6_HASH, 0, 10).is_empty());
        assert!(allowed_fast_set(BEP6_IP, &BEP6_HASH, 100, 0).is_empty());
        for count in 1..64 {
            let set = allowed_fast_set(BEP6_IP, &InfoHash([count as u8; 20]), count, 32);
            assert_eq!(set.len(), count.min(32) as usize);
            assert!(set.iter().all(|&p| p < count));
        }
    }
}
