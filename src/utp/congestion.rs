//! Congestion control for uTP: the [`CongestionController`] trait and LEDBAT
//! (RFC 6817, as BEP 29 uses it).
//!
//! Layer: pure core. A controller sees acknowledgements (bytes, one-way delay
//! samples), losses and timeouts, and answers one question: how many bytes may
//! be in flight. It knows nothing of packets or sockets, so it is tested alone
//! on recorded delay traces.
//!
//! LEDBAT keeps the queuing delay it adds near a target (100 ms): queuing
//! delay = current one-way delay - base delay, where the base delay is the
//! smallest sample of the last two minutes (kept as two one-minute minima, so
//! a route change to a longer path is learnt within two minutes) and the
//! current delay the smallest of the last [`CURRENT_DELAY_SAMPLES`] samples
//! (filters single delayed acks). Per acknowledgement the window moves by
//! `gain * off_target / target * bytes_acked / window`, at most
//! `max_increase_bytes_per_rtt` per round trip (libutp's 3000 bytes). A
//! slow start doubles the window per round trip until the delay reaches half
//! the target or a loss. Losses halve the window, timeouts drop it to one
//! packet. Delay samples carry the two clocks' offset; only differences of
//! samples are used, compared in wrapping 32-bit arithmetic.
//!
//! Invariant: `min_window_bytes <= window_bytes() <= max_window_bytes`.

use std::time::{Duration, Instant};

/// Delay samples the current delay is the minimum of.
pub const CURRENT_DELAY_SAMPLES: usize = 3;

/// Length of one base-delay bucket; two buckets make the 2-minute history.
pub const BASE_DELAY_BUCKET: Duration = Duration::from_secs(60);

/// What an acknowledgement tells the controller.
#[derive(Debug, Clone, Copy)]
pub struct AckSample {
    /// Payload bytes newly acknowledged.
    pub bytes_acked: u32,
    /// The peer's `timestamp_difference` (our one-way delay plus the clocks'
    /// offset), when it sent one.
    pub delay_sample_us: Option<u32>,
    /// Whether the window was full when the acked data was sent (growth is
    /// only earned by using the window).
    pub window_limited: bool,
}

/// The send window of one connection.
pub trait CongestionController: Send {
    /// Data was acknowledged.
    fn on_ack(&mut self, now: Instant, ack: AckSample);
    /// A packet was lost (fast retransmit); called at most once per window.
    fn on_loss(&mut self, now: Instant);
    /// The retransmission timer fired.
    fn on_timeout(&mut self, now: Instant);
    /// Bytes that may be in flight.
    fn window_bytes(&self) -> u32;
}

/// LEDBAT parameters.
#[derive(Debug, Clone, Copy)]
pub struct LedbatConfig {
    /// Queuing delay aimed at (BEP 29: 100 ms).
    pub target_delay_us: u32,
    /// Most the window grows in one round trip outside slow start.
    pub max_increase_bytes_per_rtt: u32,
    /// Floor (one packet).
    pub min_window_bytes: u32,
    /// Ceiling (bounded by the send buffer).
    pub max_window_bytes: u32,
    /// Window at start.
    pub initial_window_bytes: u32,
}

impl Default for LedbatConfig {
    fn default() -> Self {
        Self {
            target_delay_us: 100_000,
            max_increase_bytes_per_rtt: 3000,
            min_window_bytes: 1500,
            max_window_bytes: 4 * 1024 * 1024,
            initial_window_bytes: 2 * 1500,
        }
    }
}

/// LEDBAT state of one connection.
#[derive(Debug, Clone)]
pub struct Ledbat {
    config: LedbatConfig,
    /// Bytes; fractional so that gains of a few bytes per ack add up.
    window: f64,
    slow_start: bool,
    slow_start_threshold: u32,
    /// Minimum of the current and the previous minute (wrapping order).
    base_buckets: [Option<u32>; 2],
    bucket_started: Option<Instant>,
    recent: [u32; CURRENT_DELAY_SAMPLES],
    recent_len: usize,
    recent_next: usize,
}

/// `a < b` for delay samples that may wrap.
fn wrapping_less(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Ledbat {
    /// A controller at its initial window, in slow start.
    pub fn new(config: LedbatConfig) -> Self {
        let window = config
            .initial_window_bytes
            .clamp(config.min_window_bytes, config.max_window_bytes) as f64;
        Self {
            config,
            window,
            slow_start: true,
            slow_start_threshold: config.max_window_bytes,
            base_buckets: [None; 2],
            bucket_started: None,
            recent: [0; CURRENT_DELAY_SAMPLES],
            recent_len: 0,
            recent_next: 0,
        }
    }

    /// The base delay (minimum over the last one to two minutes).
    pub fn base_delay_us(&self) -> Option<u32> {
        match self.base_buckets {
            [Some(a), Some(b)] => Some(if wrapping_less(a, b) { a } else { b }),
            [a, b] => a.or(b),
        }
    }

    /// The latest queuing delay estimate (current - base), when known.
    pub fn queuing_delay_us(&self) -> Option<u32> {
        let base = self.base_delay_us()?;
        let current = self.recent[..self.recent_len].iter().copied().reduce(|a, b| {
            if wrapping_less(a, b) {
                a
            } else {
                b
            }
        })?;
        let delay = current.wrapping_sub(base) as i32;
        Some(delay.max(0) as u32)
    }

    /// Whether the controller is still in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    fn add_sample(&mut self, now: Instant, sample: u32) {
        let started = *self.bucket_started.get_or_insert(now);
        if now.saturating_duration_since(started) >= BASE_DELAY_BUCKET {
            // Rotate: the previous minute is forgotten, the current becomes it.
            self.base_buckets = [None, self.base_buckets[0]];
            self.bucket_started = Some(now);
        }
        let bucket = &mut self.base_buckets[0];
        if bucket.is_none_or(|min| wrapping_less(sample, min)) {
            *bucket = Some(sample);
        }
        self.recent[self.recent_next] = sample;
        self.recent_next = (self.recent_next + 1) % CURRENT_DELAY_SAMPLES;
        self.recent_len = (self.recent_len + 1).min(CURRENT_DELAY_SAMPLES);
    }

    fn clamp(&mut self) {
        self.window = self
            .window
            .clamp(self.config.min_window_bytes as f64, self.config.max_window_bytes as f64);
    }
}

impl CongestionController for Ledbat {
    fn on_ack(&mut self, now: Instant, ack: AckSample) {
        if let Some(sample) = ack.delay_sample_us {
            self.add_sample(now, sample);
        }
        let target = self.config.target_delay_us.max(1) as f64;
        // Without delay information the link looks empty: full gain.
        let queuing = self.queuing_delay_us().unwrap_or(0) as f64;
        let off_target = (target - queuing) / target;
        let acked = ack.bytes_acked as f64;
        let mut gain = if off_target >= 0.0 {
            self.config.max_increase_bytes_per_rtt as f64 * off_target * acked / self.window
        } else {
            // Above the target, shrink in proportion to the excess (LEDBAT++):
            // at most half the window per round trip, so an overshoot (a slow
            // start, a route change) is undone in a few round trips.
            (off_target * acked).max(-acked / 2.0)
        };
        if self.slow_start {
            if queuing * 2.0 > target || self.window >= self.slow_start_threshold as f64 {
                self.slow_start = false;
            } else {
                gain = gain.max(acked);
            }
        }
        if gain > 0.0 && !ack.window_limited {
            // Not using the window: do not grow it on credit.
            gain = 0.0;
        }
        self.window += gain;
        self.clamp();
    }

    fn on_loss(&mut self, _now: Instant) {
        self.slow_start = false;
        self.window /= 2.0;
        self.clamp();
    }

    fn on_timeout(&mut self, _now: Instant) {
        self.slow_start_threshold = ((self.window / 2.0) as u32).max(self.config.min_window_bytes);
        self.slow_start = true;
        self.window = self.config.min_window_bytes as f64;
        self.clamp();
    }

    fn window_bytes(&self) -> u32 {
        self.window as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1400;

    /// Replays a trace of (delay in µs as the peer reports it, including a
    /// clock offset) with one full window acked per round trip of `rtt`.
    fn replay(l: &mut Ledbat, start: Instant, trace: &[(Duration, u32)], rtt: Duration) {
        for &(at, delay) in trace {
            let now = start + at;
            let _ = rtt;
            let window = l.window_bytes();
            // One window's worth of acks, one per packet.
            let mut acked = 0;
            while acked < window {
                let n = MSS.min(window - acked);
                l.on_ack(
                    now,
                    AckSample {
                        bytes_acked: n,
                        delay_sample_us: Some(delay),
                        window_limited: true,
                    },
                );
                acked += n;
            }
        }
    }

    fn trace(
        from_s: u64,
        to_s: u64,
        step_ms: u64,
        delay: impl Fn(u64) -> u32,
    ) -> Vec<(Duration, u32)> {
        (from_s * 1000..to_s * 1000)
            .step_by(step_ms as usize)
            .map(|ms| (Duration::from_millis(ms), delay(ms)))
            .collect()
    }

    #[test]
    fn grows_on_an_empty_path_and_stays_in_bounds() {
        let start = Instant::now();
        let mut l = Ledbat::new(LedbatConfig::default());
        // Clock offset near u32::MAX: samples wrap, differences do not.
        let offset = u32::MAX - 20_000;
        replay(&mut l, start, &trace(0, 5, 50, |_| offset.wrapping_add(30_000)), Duration::ZERO);
        assert_eq!(l.window_bytes(), LedbatConfig::default().max_window_bytes);
        assert_eq!(l.queuing_delay_us(), Some(0));
    }

    #[test]
    fn backs_off_when_queuing_delay_passes_the_target() {
        let start = Instant::now();
        let mut l = Ledbat::new(LedbatConfig::default());
        // 20 ms base for a second, then the queue builds to 250 ms.
        let mut t = trace(0, 1, 50, |_| 20_000);
        t.extend(trace(1, 20, 50, |_| 270_000));
        replay(&mut l, start, &t, Duration::ZERO);
        assert_eq!(l.queuing_delay_us(), Some(250_000));
        assert!(!l.in_slow_start());
        assert_eq!(l.window_bytes(), LedbatConfig::default().min_window_bytes);
    }

    #[test]
    fn settles_near_the_target() {
        let start = Instant::now();
        let mut l = Ledbat::new(LedbatConfig::default());
        // Queuing delay follows the window: 1 ms per 10 KB in flight (a
        // 10 MB/s bottleneck). The window must settle near 100 ms = 1 MB.
        let mut now = start;
        let base = 40_000u32;
        for _ in 0..400_000 {
            let delay = base + l.window_bytes() / 10;
            l.on_ack(
                now,
                AckSample { bytes_acked: MSS, delay_sample_us: Some(delay), window_limited: true },
            );
            // 100 s in all: within the base delay's memory (a queue that
            // never drains would otherwise become the new base).
            now += Duration::from_micros(250);
        }
        let w = l.window_bytes();
        assert!((800_000..=1_200_000).contains(&w), "window {w}");
    }

    #[test]
    fn base_delay_is_the_minimum_of_two_minutes() {
        let start = Instant::now();
        let mut l = Ledbat::new(LedbatConfig::default());
        replay(&mut l, start, &trace(0, 10, 100, |_| 10_000), Duration::ZERO);
        assert_eq!(l.base_delay_us(), Some(10_000));
        // Route change: the path is now 150 ms longer. At first it looks like
        // queuing delay and the window falls to the floor ...
        replay(&mut l, start, &trace(10, 70, 100, |_| 160_000), Duration::ZERO);
        assert_eq!(l.window_bytes(), LedbatConfig::default().min_window_bytes);
        assert_eq!(l.base_delay_us(), Some(10_000));
        // ... and once the old minimum is two minutes old it is forgotten.
        replay(&mut l, start, &trace(70, 200, 100, |_| 160_000), Duration::ZERO);
        assert_eq!(l.base_delay_us(), Some(160_000));
        assert_eq!(l.queuing_delay_us(), Some(0));
        assert!(l.window_bytes() > 100_000, "window {}", l.window_bytes());
    }

    #[test]
    fn current_delay_filters_one_late_sample() {
        let start = Instant::now();
        let mut l = Ledbat::new(LedbatConfig::default());
        for (i, delay) in [50_000, 51_000, 50_500, 52_000, 900_000].into_iter().enumerate() {
            l.on_ack(
                start + Duration::from_millis(10 * i as u64),
                AckSample { bytes_acked: MSS, delay_sample_us: Some(delay), window_limited: true },
            );
        }
        assert_eq!(l.queuing_delay_us(), Some(500));
        assert!(l.in_slow_start());
    }

    #[test]
    fn loss_halves_and_timeout_resets_to_one_packet() {
        let start = Instant::now();
        let mut l = Ledbat::new(LedbatConfig::default());
        replay(&mut l, start, &trace(0, 1, 100, |_| 1000), Duration::ZERO);
        let w = l.window_bytes();
        l.on_loss(start);
        assert_eq!(l.window_bytes(), w / 2);
        assert!(!l.in_slow_start());
        l.on_timeout(start);
        assert_eq!(l.window_bytes(), LedbatConfig::default().min_window_bytes);
        assert!(l.in_slow_start());
    }

    #[test]
    fn an_application_limited_sender_does_not_grow() {
        let start = Instant::now();
        let mut l = Ledbat::new(LedbatConfig::default());
        let w = l.window_bytes();
        for i in 0..1000 {
            l.on_ack(
                start + Duration::from_millis(i),
                AckSample { bytes_acked: MSS, delay_sample_us: Some(5000), window_limited: false },
            );
        }
        assert_eq!(l.window_bytes(), w);
    }
}
