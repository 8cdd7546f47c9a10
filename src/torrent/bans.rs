//! The IPs a torrent refuses, each for a while.
//!
//! Layer: pure core (time comes in as `now`). A ban is evidence-based (bad
//! piece data, see the torrent module docs) and an IP ban also hits every
//! user behind the same carrier NAT, so every ban expires after
//! [`TorrentConfig::ban_duration`](super::TorrentConfig::ban_duration).
//!
//! Invariants:
//! * at most `max_entries` IPs are held; banning one more first drops the ban
//!   that ends soonest (bounded memory against a swarm of liars);
//! * a ban made before the core has seen any `now` starts at the next
//!   [`BanList::expire`] (the core never reads the clock).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Banned IPs of one torrent with their end times.
#[derive(Debug, Clone)]
pub struct BanList {
    /// IP -> when its ban ends (`None`: starts at the next `expire`).
    until: HashMap<IpAddr, Option<Instant>>,
    duration: Duration,
    max_entries: usize,
}

impl BanList {
    /// An empty list whose bans last `duration`, holding `max_entries` IPs
    /// at most (at least one).
    pub fn new(duration: Duration, max_entries: usize) -> BanList {
        BanList { until: HashMap::new(), duration, max_entries: max_entries.max(1) }
    }

    /// Bans `ip` from `now` (or from the next [`BanList::expire`] when `now`
    /// is unknown) for the list's duration.
    pub fn ban(&mut self, ip: IpAddr, now: Option<Instant>) {
        if !self.until.contains_key(&ip) && self.until.len() >= self.max_entries {
            // Drop the ban that ends first (unstarted ones end last).
            let soonest = self
                .until
                .iter()
                .min_by_key(|(_, until)| until.map_or((1, None), |u| (0, Some(u))))
                .map(|(ip, _)| *ip);
            if let Some(soonest) = soonest {
                self.until.remove(&soonest);
            }
        }
        self.until.insert(ip, now.map(|n| n + self.duration));
    }

    /// Whether `ip` is banned at `now`.
    pub fn is_banned(&self, ip: IpAddr, now: Option<Instant>) -> bool {
        match (self.until.get(&ip), now) {
            (None, _) => false,
            (Some(None), _) | (Some(Some(_)), None) => true,
            (Some(Some(until)), Some(now)) => now < *until,
        }
    }

    /// Whether `ip` is on the list (expired or not).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.until.contains_key(&ip)
    }

    /// Drops ended bans and starts those made without a time.
    pub fn expire(&mut self, now: Instant) {
        let duration = self.duration;
        self.until.retain(|_, until| {
            let end = *until.get_or_insert(now + duration);
            now < end
        });
    }

    /// IPs on the list.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// No IP is banned.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn bans_expire() {
        let t0 = Instant::now();
        let mut bans = BanList::new(Duration::from_secs(60), 8);
        bans.ban(ip(1), Some(t0));
        assert!(bans.is_banned(ip(1), Some(t0 + Duration::from_secs(59))));
        assert!(!bans.is_banned(ip(2), Some(t0)));
        assert!(!bans.is_banned(ip(1), Some(t0 + Duration::from_secs(60))));
        bans.expire(t0 + Duration::from_secs(60));
        assert!(bans.is_empty());
    }

    #[test]
    fn a_ban_without_a_time_starts_at_the_next_expire() {
        let t0 = Instant::now();
        let mut bans = BanList::new(Duration::from_secs(10), 8);
        bans.ban(ip(1), None);
        assert!(bans.is_banned(ip(1), Some(t0 + Duration::from_secs(3600))));
        bans.expire(t0 + Duration::from_secs(100));
        assert!(bans.is_banned(ip(1), Some(t0 + Duration::from_secs(109))));
        bans.expire(t0 + Duration::from_secs(110));
        assert!(!bans.contains(ip(1)));
    }

    #[test]
    fn the_list_is_bounded_and_drops_the_soonest_end() {
        let t0 = Instant::now();
        let mut bans = BanList::new(Duration::from_secs(60), 3);
        for n in 0..3 {
            bans.ban(ip(n), Some(t0 + Duration::from_secs(u64::from(n))));
        }
        bans.ban(ip(9), Some(t0 + Duration::from_secs(5)));
        assert_eq!(bans.len(), 3);
        assert!(!bans.contains(ip(0)), "the ban ending first made room");
        assert!(bans.contains(ip(1)) && bans.contains(ip(2)) && bans.contains(ip(9)));
        // Re-banning a listed IP does not evict anyone, and extends it.
        bans.ban(ip(1), Some(t0 + Duration::from_secs(30)));
        assert_eq!(bans.len(), 3);
        assert!(bans.is_banned(ip(1), Some(t0 + Duration::from_secs(80))));
    }
}
