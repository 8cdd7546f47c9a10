//! Write tokens for `announce_peer` (BEP 5): `SHA1(secret | ip)`, truncated.
//!
//! Layer: pure core. The secret rotates every [`TOKEN_ROTATE_SECS`]; the
//! previous secret stays valid, so a token is accepted for up to twice that
//! (10 minutes), as BEP 5 asks.

use sha1::{Digest, Sha1};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often the secret changes.
pub const TOKEN_ROTATE_SECS: u64 = 5 * 60;
/// Bytes of the digest sent as the token.
pub const TOKEN_BYTES: usize = 8;

#[derive(Debug)]
pub struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
    rotated_at: Instant,
}

fn make(secret: &[u8; 16], ip: &IpAddr) -> [u8; TOKEN_BYTES] {
    let mut hasher = Sha1::new();
    hasher.update(secret);
    match ip {
        IpAddr::V4(v4) => hasher.update(v4.octets()),
        IpAddr::V6(v6) => hasher.update(v6.octets()),
    }
    let digest = hasher.finalize();
    let mut out = [0u8; TOKEN_BYTES];
    out.copy_from_slice(&digest[..TOKEN_BYTES]);
    out
}

impl Tokens {
    pub fn new(secret: [u8; 16], now: Instant) -> Tokens {
        Tokens { current: secret, previous: secret, rotated_at: now }
    }

    /// Rotates when the current secret is [`TOKEN_ROTATE_SECS`] old;
    /// `fresh` is the next secret (random).
    pub fn rotate_if_due(&mut self, now: Instant, fresh: impl FnOnce() -> [u8; 16]) {
        if now.saturating_duration_since(self.rotated_at) >= Duration::from_secs(TOKEN_ROTATE_SECS)
        {
            self.previous = self.current;
            self.current = fresh();
            self.rotated_at = now;
        }
    }

    /// The token we hand to `ip` now.
    pub fn token(&self, ip: &IpAddr) -> [u8; TOKEN_BYTES] {
        make(&self.current, ip)
    }

    /// True when `token` was handed to `ip` under the current or previous secret.
    pub fn is_valid(&self, ip: &IpAddr, token: &[u8]) -> bool {
        token == make(&self.current, ip) || token == make(&self.previous, ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_live_for_two_rotations() {
        let start = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut tokens = Tokens::new([1; 16], start);
        let token = tokens.token(&ip);
        assert!(tokens.is_valid(&ip, &token));
        assert!(!tokens.is_valid(&other, &token));
        let mut next = 2u8;
        let mut fresh = || {
            next += 1;
            [next; 16]
        };
        tokens.rotate_if_due(start + Duration::from_secs(60), &mut fresh);
        tokens.rotate_if_due(start + Duration::from_secs(TOKEN_ROTATE_SECS), &mut fresh);
        assert!(tokens.is_valid(&ip, &token), "one rotation later (5 min)");
        tokens.rotate_if_due(start + Duration::from_secs(2 * TOKEN_ROTATE_SECS), &mut fresh);
        assert!(!tokens.is_valid(&ip, &token), "two rotations later (10 min)");
        assert!(!tokens.is_valid(&ip, b"short"));
    }
}
