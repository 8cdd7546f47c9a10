//! Process-wide rate limits shared by every shard: one lock-free token bucket
//! per direction.
//!
//! Layer: pure core (no I/O; time comes in as `now`). The session builds one
//! [`ProcessRateLimits`] and hands an `Arc` of it to every shard; each
//! [`TorrentCore`](crate::torrent::TorrentCore) takes tokens from it next to
//! its own per-torrent [`TokenBucket`](crate::choker::TokenBucket) before it
//! issues a block request (download) or starts serving a block (upload).
//!
//! Why a shared atomic bucket, and not per-shard shares of the budget:
//! * it is *exact*: a limit of X bytes/s yields X bytes/s in total whether one
//!   torrent on one shard is busy or a thousand on every shard. Per-shard
//!   shares leave an idle shard's share unused until the next re-balance, so a
//!   single busy torrent would get X / shards until then;
//! * it costs one compare-and-swap per 16 KiB block granted (about 20,000 per
//!   second at 300 MB/s across all shards), which is nothing next to the
//!   syscalls that move the block; with no limit set it costs one relaxed load;
//! * shards never wait on each other: a failed CAS retries at once with the
//!   value the winner wrote (lock-free), and a bucket that is empty answers
//!   "no" with the time to wait, never blocks. Shards share no lock on the
//!   data path.
//!
//! The bucket is a GCRA ("virtual scheduling"): a single `AtomicU64` holds the
//! theoretical arrival time `tat`, the instant at which everything granted so
//! far has been paid for at the configured rate. Taking `n` bytes pushes `tat`
//! forward by `n / rate`; a take is allowed while `tat - now` stays within the
//! burst. This is a token bucket of capacity [`burst_bytes`] in which one
//! word holds the whole state, so one CAS updates it.
//!
//! Invariants: over any interval of length T the bytes granted are at most
//! `rate x T + burst_bytes(rate)`; a rate of 0 means unlimited (every take
//! succeeds and nothing is recorded).

use crate::wire::MAX_REQUEST_LEN;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A limited bucket holds this many milliseconds of its rate: enough that a
/// driver waking every [`RATE_LIMIT_MIN_WAKE`] never finds it overflowing,
/// small enough that a limited transfer does not start with a visible spike.
pub const RATE_LIMIT_BURST_MS: u64 = 100;

/// Work held back by a rate limit is retried no sooner than this: bounds the
/// wake-ups of one throttled torrent to 50 per second, whatever the rate.
pub const RATE_LIMIT_MIN_WAKE: Duration = Duration::from_millis(20);

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// The burst (bucket capacity) for `rate_bytes_per_s`: [`RATE_LIMIT_BURST_MS`]
/// of the rate, but at least [`MAX_REQUEST_LEN`] so the largest request we
/// serve always fits (a bucket smaller than one request would never grant it).
pub fn burst_bytes(rate_bytes_per_s: u64) -> u64 {
    (rate_bytes_per_s.saturating_mul(RATE_LIMIT_BURST_MS) / 1000).max(u64::from(MAX_REQUEST_LEN))
}

/// Nanoseconds it takes to earn `bytes` at `rate` (> 0), rounded up.
fn cost_nanos(bytes: u64, rate_bytes_per_s: u64) -> u64 {
    let nanos = (u128::from(bytes) * NANOS_PER_SECOND).div_ceil(u128::from(rate_bytes_per_s));
    nanos.min(u128::from(u64::MAX)) as u64
}

/// A token bucket several threads take from without a lock (see the module
/// docs). All methods take `&self`.
#[derive(Debug)]
pub struct SharedTokenBucket {
    /// Time zero of `tat_nanos`.
    epoch: Instant,
    /// 0 = unlimited.
    rate_bytes_per_s: AtomicU64,
    /// Theoretical arrival time, nanoseconds after `epoch`.
    tat_nanos: AtomicU64,
}

impl SharedTokenBucket {
    /// A full bucket (`rate` 0: unlimited).
    pub fn new(rate_bytes_per_s: u64, now: Instant) -> SharedTokenBucket {
        SharedTokenBucket {
            epoch: now,
            rate_bytes_per_s: AtomicU64::new(rate_bytes_per_s),
            tat_nanos: AtomicU64::new(0),
        }
    }

    /// Configured rate (0: unlimited).
    pub fn rate_bytes_per_s(&self) -> u64 {
        // Relaxed everywhere: the counters publish no other memory, and each
        // is updated atomically on its own.
        self.rate_bytes_per_s.load(Ordering::Relaxed)
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate_bytes_per_s() == 0
    }

    /// Changes the rate from the next take on (0: unlimited). What was
    /// granted before stays paid for in time, at whichever rate it was taken.
    pub fn set_rate(&self, rate_bytes_per_s: u64) {
        self.rate_bytes_per_s.store(rate_bytes_per_s, Ordering::Relaxed);
    }

    fn now_nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos().min(u128::from(u64::MAX)) as u64
    }

    /// Takes `bytes` tokens if they are all there; otherwise takes none.
    pub fn try_take(&self, now: Instant, bytes: u64) -> bool {
        let rate = self.rate_bytes_per_s();
        if rate == 0 {
            return true;
        }
        let now = self.now_nanos(now);
        let cost = cost_nanos(bytes, rate);
        let burst = cost_nanos(burst_bytes(rate), rate);
        let mut tat = self.tat_nanos.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(cost);
            if new_tat - now > burst {
                return false;
            }
            match self.tat_nanos.compare_exchange_weak(
                tat,
                new_tat,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }

    /// Returns tokens taken but not used (the torrent's own bucket refused,
    /// or the block was never sent). Never fills the bucket past its burst.
    pub fn give_back(&self, bytes: u64) {
        let rate = self.rate_bytes_per_s();
        if rate == 0 {
            return;
        }
        let cost = cost_nanos(bytes, rate);
        // A tat in the past already means "full"; moving it further back
        // changes nothing, so a plain saturating subtraction is exact.
        let _ = self.tat_nanos.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
            Some(tat.saturating_sub(cost))
        });
    }

    /// Bytes that could be taken at `now` (`u64::MAX` when unlimited).
    pub fn available(&self, now: Instant) -> u64 {
        let rate = self.rate_bytes_per_s();
        if rate == 0 {
            return u64::MAX;
        }
        let now = self.now_nanos(now);
        let backlog = self.tat_nanos.load(Ordering::Relaxed).saturating_sub(now);
        let burst = cost_nanos(burst_bytes(rate), rate);
        let free_nanos = burst.saturating_sub(backlog);
        (u128::from(free_nanos) * u128::from(rate) / NANOS_PER_SECOND) as u64
    }

    /// How long until `bytes` (capped at the burst) could be taken.
    pub fn wait_for(&self, now: Instant, bytes: u64) -> Duration {
        let rate = self.rate_bytes_per_s();
        if rate == 0 {
            return Duration::ZERO;
        }
        let now = self.now_nanos(now);
        let burst_len = burst_bytes(rate);
        let cost = cost_nanos(bytes.min(burst_len), rate);
        let burst = cost_nanos(burst_len, rate);
        let tat = self.tat_nanos.load(Ordering::Relaxed);
        let after = tat.max(now).saturating_add(cost) - now;
        Duration::from_nanos(after.saturating_sub(burst))
    }
}

/// The process-wide limits, one bucket per direction (see the module docs).
#[derive(Debug)]
pub struct ProcessRateLimits {
    pub upload: SharedTokenBucket,
    pub download: SharedTokenBucket,
}

impl ProcessRateLimits {
    /// Limits in bytes per second, 0 = unlimited.
    pub fn new(
        upload_bytes_per_s: u64,
        download_bytes_per_s: u64,
        now: Instant,
    ) -> ProcessRateLimits {
        ProcessRateLimits {
            upload: SharedTokenBucket::new(upload_bytes_per_s, now),
            download: SharedTokenBucket::new(download_bytes_per_s, now),
        }
    }

    /// No limit in either direction.
    pub fn unlimited(now: Instant) -> ProcessRateLimits {
        ProcessRateLimits::new(0, 0, now)
    }

    /// Changes both limits at run time (bytes per second, 0 = unlimited).
    pub fn set(&self, upload_bytes_per_s: u64, download_bytes_per_s: u64) {
        self.upload.set_rate(upload_bytes_per_s);
        self.download.set_rate(download_bytes_per_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const BLOCK: u64 = 16 * 1024;

    #[test]
    fn burst_is_a_tenth_of_a_second_but_at_least_one_large_request() {
        assert_eq!(burst_bytes(10_000_000), 1_000_000);
        assert_eq!(burst_bytes(1000), u64::from(MAX_REQUEST_LEN));
        assert_eq!(burst_bytes(u64::MAX), u64::MAX / 1000);
    }

    #[test]
    fn starts_full_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let rate = 2 * 1024 * 1024;
        let b = SharedTokenBucket::new(rate, t0);
        let burst = burst_bytes(rate);
        assert_eq!(b.available(t0), burst);
        let mut granted = 0;
        while b.try_take(t0, BLOCK) {
            granted += BLOCK;
        }
        assert_eq!(granted, burst / BLOCK * BLOCK, "a full bucket grants exactly its burst");
        assert!(b.available(t0) < BLOCK);
        // One more block needs (BLOCK - leftover) / rate seconds.
        let wait = b.wait_for(t0, BLOCK);
        let leftover = burst - granted;
        let expected = Duration::from_nanos(cost_nanos(BLOCK - leftover, rate));
        assert!(wait.abs_diff(expected) < Duration::from_micros(1), "{wait:?} vs {expected:?}");
        assert!(!b.try_take(t0 + wait - Duration::from_micros(5), BLOCK));
        assert!(b.try_take(t0 + wait, BLOCK));
        // Capped at the burst however long it idles.
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), burst);
    }

    #[test]
    fn long_run_throughput_is_the_rate() {
        let t0 = Instant::now();
        let rate = 1_000_000;
        let b = SharedTokenBucket::new(rate, t0);
        let mut sent = 0;
        let mut now = t0;
        // A sender that tries a block every 100 µs for 10 simulated seconds.
        for _ in 0..100_000 {
            now += Duration::from_micros(100);
            if b.try_take(now, BLOCK) {
                sent += BLOCK;
            }
        }
        assert!(sent <= 10 * rate + burst_bytes(rate), "sent {sent}");
        assert!(sent >= 10 * rate - BLOCK, "sent {sent}");
    }

    #[test]
    fn give_back_refunds_but_never_past_the_burst() {
        let t0 = Instant::now();
        let b = SharedTokenBucket::new(1_000_000, t0);
        let burst = burst_bytes(1_000_000);
        assert!(b.try_take(t0, BLOCK));
        assert!(b.available(t0).abs_diff(burst - BLOCK) <= 1);
        b.give_back(BLOCK);
        assert_eq!(b.available(t0), burst);
        b.give_back(10 * BLOCK);
        assert_eq!(b.available(t0), burst, "refunds do not overfill");
    }

    #[test]
    fn unlimited_and_rate_changes() {
        let t0 = Instant::now();
        let b = SharedTokenBucket::new(0, t0);
        assert!(b.is_unlimited());
        for _ in 0..1000 {
            assert!(b.try_take(t0, u64::MAX));
        }
        assert_eq!(b.wait_for(t0, u64::MAX), Duration::ZERO);
        assert_eq!(b.available(t0), u64::MAX);
        b.set_rate(200_000);
        assert!(!b.is_unlimited());
        assert_eq!(b.available(t0), burst_bytes(200_000), "nothing was recorded while unlimited");
        while b.try_take(t0, BLOCK) {}
        assert!(!b.try_take(t0, BLOCK));
        b.set_rate(0);
        assert!(b.try_take(t0, BLOCK), "lifting the limit takes effect at once");
    }

    #[test]
    fn time_going_backwards_grants_nothing_extra_and_does_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let b = SharedTokenBucket::new(1_000_000, t0);
        while b.try_take(t0, BLOCK) {}
        let earlier = t0 - Duration::from_secs(5);
        assert!(!b.try_take(earlier, BLOCK));
        assert_eq!(b.available(earlier), 0);
        assert!(b.wait_for(earlier, BLOCK) > Duration::ZERO);
    }

    /// Goal: shards taking at once neither lose nor duplicate tokens.
    /// Setup: 4 threads race for 16 KiB blocks at one fixed instant.
    /// Check: together they get exactly the blocks a full bucket holds.
    #[test]
    fn threads_racing_for_tokens_get_exactly_the_burst() {
        let t0 = Instant::now();
        let rate = 50 * 1024 * 1024;
        let bucket = Arc::new(SharedTokenBucket::new(rate, t0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let bucket = bucket.clone();
                std::thread::spawn(move || {
                    let mut granted = 0u64;
                    while bucket.try_take(t0, BLOCK) {
                        granted += 1;
                    }
                    granted
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, burst_bytes(rate) / BLOCK);
    }

    #[test]
    fn process_limits_set_both_directions() {
        let t0 = Instant::now();
        let limits = ProcessRateLimits::unlimited(t0);
        assert!(limits.upload.is_unlimited() && limits.download.is_unlimited());
        limits.set(1000, 2000);
        assert_eq!(limits.upload.rate_bytes_per_s(), 1000);
        assert_eq!(limits.download.rate_bytes_per_s(), 2000);
    }
}
