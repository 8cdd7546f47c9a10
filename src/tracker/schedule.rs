//! The BEP 12 multi-tracker schedule of one torrent, as a sans-IO state machine.
//!
//! Layer: pure core. Owns *which* tracker gets the next announce, *when*, and
//! with which event; records each tracker's last result. The driver calls
//! [`Announcer::poll`] with `now`, carries out the returned [`AnnounceJob`],
//! and reports back with [`Announcer::on_reply`] / [`Announcer::on_failure`].
//!
//! Rules (BEP 12):
//! * tiers are shuffled once, when the torrent is added (seeded, so tests are
//!   deterministic);
//! * an announce cycle walks the tiers in order, the trackers of a tier in
//!   order, skipping trackers still in failure backoff, until one answers;
//! * a tracker that answers moves to the front of its tier and the cycle ends;
//!   the next cycle starts after its `interval` (clamped to
//!   [`ScheduleConfig::min_interval_floor_secs`]..=[`ScheduleConfig::max_interval_secs`]);
//! * a failure backs that tracker off exponentially
//!   ([`ScheduleConfig::backoff_base_secs`] doubling up to
//!   [`ScheduleConfig::backoff_max_secs`]) and the cycle moves to the next one;
//! * `started` is repeated until a tracker accepts it; `completed` likewise;
//!   `stopped` goes to every tracker that accepted us.
//!
//! Invariants: at most one announce in flight; a result for any job other
//! than the one in flight is ignored; when [`Announcer::poll`] returns `None`
//! and nothing is in flight, no cycle is half-walked.

use super::{AnnounceReply, Event};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::time::{Duration, Instant};

/// Most trackers kept per torrent (the rest of a huge announce-list is dropped).
pub const MAX_TRACKERS_PER_TORRENT: usize = 64;
/// Used when a reply's `interval` is 0 or missing.
pub const DEFAULT_INTERVAL_SECS: u32 = 1800;
/// Never announce to a tracker more often than this, whatever it says.
pub const MIN_INTERVAL_FLOOR_SECS: u32 = 60;
/// Announce at least this often, whatever the tracker says.
pub const MAX_INTERVAL_SECS: u32 = 4 * 3600;
/// First retry delay after a failure; doubles per consecutive failure.
pub const BACKOFF_BASE_SECS: u32 = 15;
/// Longest failure backoff.
pub const BACKOFF_MAX_SECS: u32 = 3600;

/// The schedule's tunables; defaults are the constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    pub default_interval_secs: u32,
    pub min_interval_floor_secs: u32,
    pub max_interval_secs: u32,
    pub backoff_base_secs: u32,
    pub backoff_max_secs: u32,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            default_interval_secs: DEFAULT_INTERVAL_SECS,
            min_interval_floor_secs: MIN_INTERVAL_FLOOR_SECS,
            max_interval_secs: MAX_INTERVAL_SECS,
            backoff_base_secs: BACKOFF_BASE_SECS,
            backoff_max_secs: BACKOFF_MAX_SECS,
        }
    }
}

impl ScheduleConfig {
    /// Delay before retrying a tracker after `failures` consecutive failures (>= 1).
    pub fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        let secs = (self.backoff_base_secs as u64) << shift;
        Duration::from_secs(secs.min(self.backoff_max_secs as u64))
    }
}

/// One announce the driver must carry out now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceJob {
    /// Echo it back in [`Announcer::on_reply`] / [`Announcer::on_failure`].
    pub id: u64,
    pub url: String,
    pub event: Event,
    /// The `tracker id` this tracker gave us before (HTTP).
    pub tracker_id: Option<Vec<u8>>,
}

/// A tracker's last result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerOutcome {
    Answered {
        /// Peers in the reply (before filtering).
        peers: usize,
        seeders: Option<u32>,
        leechers: Option<u32>,
        interval_secs: u32,
        warning: Option<String>,
    },
    Failed(String),
}

/// What `ringbit` shows about one tracker of a torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerStatus {
    pub url: String,
    /// Tier index (0 first).
    pub tier: usize,
    /// `None` until the tracker was tried.
    pub last: Option<TrackerOutcome>,
    pub last_announce_at: Option<Instant>,
    /// Earliest time this tracker may be announced to again (it is only
    /// contacted then if the trackers before it fail).
    pub next_announce_at: Option<Instant>,
    pub consecutive_failures: u32,
    /// An announce to it is in flight.
    pub updating: bool,
}

#[derive(Debug)]
struct Tracker {
    url: String,
    failures: u32,
    retry_at: Option<Instant>,
    last: Option<TrackerOutcome>,
    last_at: Option<Instant>,
    /// It accepted an announce, so it lists us: it gets `stopped`.
    knows_us: bool,
    tracker_id: Option<Vec<u8>>,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    url: String,
    event: Event,
}

/// One torrent's tracker schedule.
#[derive(Debug)]
pub struct Announcer {
    config: ScheduleConfig,
    tiers: Vec<Vec<Tracker>>,
    /// When the next cycle starts.
    next_cycle_at: Instant,
    /// Earliest a manual re-announce may start a cycle (`min interval`).
    min_next_at: Instant,
    /// Position of the next tracker to try in the current cycle.
    cursor: Option<(usize, usize)>,
    in_flight: Option<InFlight>,
    pending_event: Event,
    next_job_id: u64,
    stopped: bool,
}

impl Announcer {
    /// A schedule whose first cycle (event `started`) is due at `now`. Tiers
    /// are shuffled with `seed`; duplicate and empty URLs are dropped and at
    /// most [`MAX_TRACKERS_PER_TORRENT`] kept.
    pub fn new(tiers: &[Vec<String>], seed: u64, config: ScheduleConfig, now: Instant) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut seen = std::collections::HashSet::new();
        let mut kept = 0usize;
        let mut out: Vec<Vec<Tracker>> = Vec::new();
        for tier in tiers {
            let mut urls: Vec<String> = Vec::new();
            for url in tier {
                let url = url.trim();
                if url.is_empty()
                    || kept >= MAX_TRACKERS_PER_TORRENT
                    || !seen.insert(url.to_string())
                {
                    continue;
                }
                kept += 1;
                urls.push(url.to_string());
            }
            if urls.is_empty() {
                continue;
            }
            urls.shuffle(&mut rng);
            out.push(
                urls.into_iter()
                    .map(|url| Tracker {
                        url,
                        failures: 0,
                        retry_at: None,
                        last: None,
                        last_at: None,
                        knows_us: false,
                        tracker_id: None,
                    })
                    .collect(),
            );
        }
        Announcer {
            config,
            tiers: out,
            next_cycle_at: now,
            min_next_at: now,
            cursor: None,
            in_flight: None,
            pending_event: Event::Started,
            next_job_id: 1,
            stopped: false,
        }
    }

    /// The tiers in their current order (after shuffling and promotions).
    pub fn tiers(&self) -> Vec<Vec<String>> {
        self.tiers.iter().map(|t| t.iter().map(|tr| tr.url.clone()).collect()).collect()
    }

    /// True after [`Announcer::stop`].
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The announce to make now, if any. Call until it returns `None` after
    /// every input; then sleep until [`Announcer::next_wakeup`].
    pub fn poll(&mut self, now: Instant) -> Option<AnnounceJob> {
        if self.stopped || self.in_flight.is_some() || self.tiers.is_empty() {
            return None;
        }
        let (mut tier, mut index) = match self.cursor {
            Some(pos) => pos,
            None if now >= self.next_cycle_at => (0, 0),
            None => return None,
        };
        // Two passes at most: the rest of this cycle, then (if a backoff has
        // already ended) a fresh cycle, which finds that tracker.
        for _pass in 0..2 {
            while tier < self.tiers.len() {
                if index >= self.tiers[tier].len() {
                    tier += 1;
                    index = 0;
                    continue;
                }
                let tracker = &self.tiers[tier][index];
                if tracker.retry_at.is_none_or(|at| at <= now) {
                    let id = self.next_job_id;
                    self.next_job_id += 1;
                    self.cursor = Some((tier, index));
                    self.in_flight =
                        Some(InFlight { id, url: tracker.url.clone(), event: self.pending_event });
                    return Some(AnnounceJob {
                        id,
                        url: tracker.url.clone(),
                        event: self.pending_event,
                        tracker_id: tracker.tracker_id.clone(),
                    });
                }
                index += 1;
            }
            // Every tracker failed or is backing off: the next cycle starts
            // when the first backoff ends.
            self.cursor = None;
            let earliest = self.trackers().filter_map(|t| t.retry_at).min();
            self.next_cycle_at = earliest.unwrap_or_else(|| now + self.config.backoff(1));
            if self.next_cycle_at > now {
                return None;
            }
            (tier, index) = (0, 0);
        }
        None
    }

    /// When to call [`Announcer::poll`] next, if nothing else happens; `None`
    /// while an announce is in flight, when stopped, or with no trackers.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.stopped || self.in_flight.is_some() || self.tiers.is_empty() {
            return None;
        }
        Some(self.next_cycle_at)
    }

    /// The in-flight job `id` got a reply.
    pub fn on_reply(&mut self, id: u64, reply: &AnnounceReply, now: Instant) {
        let Some(job) = self.take_in_flight(id) else { return };
        let Some((tier, index)) = self.position(&job.url) else { return };
        let config = self.config;
        let interval_secs = if reply.interval_secs == 0 {
            config.default_interval_secs
        } else {
            reply.interval_secs
        }
        .clamp(config.min_interval_floor_secs, config.max_interval_secs.max(1));
        let min_interval_secs = reply.min_interval_secs.unwrap_or(0).clamp(
            config.min_interval_floor_secs,
            interval_secs.max(config.min_interval_floor_secs),
        );
        let tracker = &mut self.tiers[tier][index];
        tracker.failures = 0;
        tracker.retry_at = None;
        tracker.last_at = Some(now);
        tracker.knows_us = job.event != Event::Stopped;
        if reply.tracker_id.is_some() {
            tracker.tracker_id = reply.tracker_id.clone();
        }
        tracker.last = Some(TrackerOutcome::Answered {
            peers: reply.peers.len(),
            seeders: reply.seeders,
            leechers: reply.leechers,
            interval_secs,
            warning: reply.warning.clone(),
        });
        // BEP 12: the tracker that answered moves to the front of its tier.
        let answered = self.tiers[tier].remove(index);
        self.tiers[tier].insert(0, answered);
        if job.event == self.pending_event {
            self.pending_event = Event::None;
        }
        self.cursor = None;
        self.next_cycle_at = now + Duration::from_secs(interval_secs as u64);
        self.min_next_at = now + Duration::from_secs(min_interval_secs as u64);
    }

    /// The in-flight job `id` failed with `error` (already human-readable).
    pub fn on_failure(&mut self, id: u64, error: String, now: Instant) {
        let Some(job) = self.take_in_flight(id) else { return };
        let Some((tier, index)) = self.position(&job.url) else { return };
        let backoff_config = self.config;
        let tracker = &mut self.tiers[tier][index];
        tracker.failures = tracker.failures.saturating_add(1);
        tracker.retry_at = Some(now + backoff_config.backoff(tracker.failures));
        tracker.last_at = Some(now);
        tracker.last = Some(TrackerOutcome::Failed(error));
        // Fall through to the next tracker (or tier) at once.
        self.cursor = Some((tier, index + 1));
    }

    /// The download finished: announce `completed` as soon as possible.
    pub fn completed(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.pending_event = Event::Completed;
        if self.cursor.is_none() && self.in_flight.is_none() {
            self.next_cycle_at = now;
        }
    }

    /// Asks for an early announce (a seeder wanting fresh leechers), no
    /// earlier than the last reply's `min interval` allows.
    pub fn reannounce(&mut self, now: Instant) {
        if self.stopped || self.cursor.is_some() || self.in_flight.is_some() {
            return;
        }
        self.next_cycle_at = self.next_cycle_at.min(now.max(self.min_next_at));
    }

    /// Stops the schedule; returns one `stopped` announce per tracker that
    /// accepted us (fire and forget: their results are not needed).
    pub fn stop(&mut self) -> Vec<AnnounceJob> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        self.in_flight = None;
        self.cursor = None;
        let mut jobs = Vec::new();
        for tier in &self.tiers {
            for tracker in tier.iter().filter(|t| t.knows_us) {
                jobs.push(AnnounceJob {
                    id: self.next_job_id,
                    url: tracker.url.clone(),
                    event: Event::Stopped,
                    tracker_id: tracker.tracker_id.clone(),
                });
                self.next_job_id += 1;
            }
        }
        jobs
    }

    /// Every tracker's last result, in tier order.
    pub fn status(&self) -> Vec<TrackerStatus> {
        let in_flight = self.in_flight.as_ref().map(|j| j.url.as_str());
        let mut out = Vec::new();
        for (tier_index, tier) in self.tiers.iter().enumerate() {
            for tracker in tier {
                let next = if self.stopped {
                    None
                } else {
                    Some(tracker.retry_at.map_or(self.next_cycle_at, |r| r.max(self.next_cycle_at)))
                };
                out.push(TrackerStatus {
                    url: tracker.url.clone(),
                    tier: tier_index,
                    last: tracker.last.clone(),
                    last_announce_at: tracker.last_at,
                    next_announce_at: next,
                    consecutive_failures: tracker.failures,
                    updating: in_flight == Some(tracker.url.as_str()),
                });
            }
        }
        out
    }

    fn trackers(&self) -> impl Iterator<Item = &Tracker> {
        self.tiers.iter().flatten()
    }

    fn take_in_flight(&mut self, id: u64) -> Option<InFlight> {
        if self.in_flight.as_ref().is_some_and(|j| j.id == id) {
            self.in_flight.take()
        } else {
            None
        }
    }

    fn position(&self, url: &str) -> Option<(usize, usize)> {
        self.tiers
            .iter()
            .enumerate()
            .find_map(|(t, tier)| tier.iter().position(|tr| tr.url == url).map(|i| (t, i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers(spec: &[&[&str]]) -> Vec<Vec<String>> {
        spec.iter().map(|t| t.iter().map(|s| s.to_string()).collect()).collect()
    }

    fn reply(interval_secs: u32) -> AnnounceReply {
        AnnounceReply { interval_secs, ..AnnounceReply::default() }
    }

    /// Finds a seed that keeps the given tiers in written order, so tests can
    /// name trackers by position.
    fn unshuffled(spec: &[&[&str]], now: Instant) -> Announcer {
        let want = tiers(spec);
        for seed in 0..10_000 {
            let a = Announcer::new(&want, seed, ScheduleConfig::default(), now);
            if a.tiers() == want {
                return a;
            }
        }
        panic!("no seed keeps the order");
    }

    #[test]
    fn shuffle_is_seeded_and_drops_duplicates() {
        let now = Instant::now();
        let spec = tiers(&[&["a", "b", "c", "d", "e"], &[], &["f", "a", " "]]);
        let one = Announcer::new(&spec, 7, ScheduleConfig::default(), now);
        let two = Announcer::new(&spec, 7, ScheduleConfig::default(), now);
        assert_eq!(one.tiers(), two.tiers());
        assert_eq!(one.tiers().len(), 2);
        assert_eq!(one.tiers()[1], vec!["f".to_string()]);
        let mut first = one.tiers()[0].clone();
        first.sort();
        assert_eq!(first, vec!["a", "b", "c", "d", "e"]);
        let orders: std::collections::HashSet<_> = (0..50)
            .map(|s| Announcer::new(&spec, s, ScheduleConfig::default(), now).tiers())
            .collect();
        assert!(orders.len() > 1, "the seed changes the order");
    }

    #[test]
    fn bounds_the_tracker_count() {
        let many: Vec<String> =
            (0..MAX_TRACKERS_PER_TORRENT + 10).map(|i| format!("u{i}")).collect();
        let a = Announcer::new(&[many], 1, ScheduleConfig::default(), Instant::now());
        assert_eq!(a.status().len(), MAX_TRACKERS_PER_TORRENT);
    }

    #[test]
    fn falls_through_the_tier_then_the_next_tier_and_promotes_the_answer() {
        let t0 = Instant::now();
        let mut a = unshuffled(&[&["a", "b"], &["c", "d"]], t0);
        let job = a.poll(t0).unwrap();
        assert_eq!((job.url.as_str(), job.event), ("a", Event::Started));
        assert_eq!(a.poll(t0), None, "one announce in flight at a time");
        a.on_failure(job.id, "refused".into(), t0);
        let job = a.poll(t0).unwrap();
        assert_eq!(job.url, "b");
        a.on_failure(job.id, "timeout".into(), t0);
        let job = a.poll(t0).unwrap();
        assert_eq!(job.url, "c");
        a.on_failure(job.id, "garbage".into(), t0);
        let job = a.poll(t0).unwrap();
        assert_eq!((job.url.as_str(), job.event), ("d", Event::Started));
        a.on_reply(job.id, &reply(900), t0);
        assert_eq!(a.tiers(), tiers(&[&["a", "b"], &["d", "c"]]));
        assert_eq!(a.poll(t0), None);
        assert_eq!(a.next_wakeup(), Some(t0 + Duration::from_secs(900)));

        // Next cycle: a and b are backed off for 15 s only, so they are retried
        // first, with no event now that `started` was accepted.
        let t1 = t0 + Duration::from_secs(900);
        let job = a.poll(t1).unwrap();
        assert_eq!((job.url.as_str(), job.event), ("a", Event::None));
        a.on_reply(job.id, &reply(1800), t1);
        let status = a.status();
        assert_eq!(status[0].url, "a");
        assert!(matches!(
            status[0].last,
            Some(TrackerOutcome::Answered { interval_secs: 1800, .. })
        ));
        assert_eq!(status[1].last, Some(TrackerOutcome::Failed("timeout".into())));
        assert_eq!(status[1].consecutive_failures, 1);
        assert_eq!(status[3].tier, 1);
    }

    #[test]
    fn all_failing_backs_off_exponentially() {
        let t0 = Instant::now();
        let mut a = unshuffled(&[&["a"]], t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            let job = a.poll(now).expect("due");
            assert_eq!(job.event, Event::Started, "started repeats until accepted");
            a.on_failure(job.id, "down".into(), now);
            assert_eq!(a.poll(now), None);
            let wake = a.next_wakeup().unwrap();
            waits.push((wake - now).as_secs());
            assert_eq!(a.poll(wake - Duration::from_millis(1)), None, "not before the backoff");
            now = wake;
        }
        assert_eq!(waits, vec![15, 30, 60, 120, 240]);
        let config = ScheduleConfig::default();
        assert_eq!(config.backoff(100), Duration::from_secs(BACKOFF_MAX_SECS as u64));
    }

    #[test]
    fn intervals_are_clamped_and_min_interval_limits_reannounce() {
        let t0 = Instant::now();
        let mut a = unshuffled(&[&["a"]], t0);
        let job = a.poll(t0).unwrap();
        a.on_reply(job.id, &AnnounceReply { interval_secs: 1, ..reply(1) }, t0);
        assert_eq!(a.next_wakeup(), Some(t0 + Duration::from_secs(MIN_INTERVAL_FLOOR_SECS as u64)));
        let t1 = t0 + Duration::from_secs(60);
        let job = a.poll(t1).unwrap();
        a.on_reply(
            job.id,
            &AnnounceReply { interval_secs: 1800, min_interval_secs: Some(300), ..reply(0) },
            t1,
        );
        // Re-announce asked 10 s later: delayed to the min interval.
        a.reannounce(t1 + Duration::from_secs(10));
        assert_eq!(a.next_wakeup(), Some(t1 + Duration::from_secs(300)));
        assert_eq!(a.poll(t1 + Duration::from_secs(299)), None);
        let job = a.poll(t1 + Duration::from_secs(300)).unwrap();
        assert_eq!(job.event, Event::None);
        // A missing interval means the default.
        a.on_reply(job.id, &reply(0), t1);
        assert_eq!(a.next_wakeup(), Some(t1 + Duration::from_secs(DEFAULT_INTERVAL_SECS as u64)));
    }

    #[test]
    fn completed_is_announced_at_once_and_stopped_goes_to_trackers_that_know_us() {
        let t0 = Instant::now();
        let mut a = unshuffled(&[&["a", "b"], &["c"]], t0);
        let job = a.poll(t0).unwrap();
        a.on_reply(job.id, &reply(1800), t0);
        let t1 = t0 + Duration::from_secs(5);
        a.completed(t1);
        let job = a.poll(t1).unwrap();
        assert_eq!((job.url.as_str(), job.event), ("a", Event::Completed));
        a.on_failure(job.id, "flaky".into(), t1);
        let job = a.poll(t1).unwrap();
        assert_eq!((job.url.as_str(), job.event), ("b", Event::Completed));
        a.on_reply(job.id, &AnnounceReply { tracker_id: Some(b"xyz".to_vec()), ..reply(1800) }, t1);
        assert_eq!(a.tiers(), tiers(&[&["b", "a"], &["c"]]));
        let stops = a.stop();
        let urls: Vec<_> = stops.iter().map(|j| (j.url.as_str(), j.event)).collect();
        assert_eq!(urls, vec![("b", Event::Stopped), ("a", Event::Stopped)]);
        assert_eq!(stops[0].tracker_id.as_deref(), Some(&b"xyz"[..]));
        assert!(a.is_stopped());
        assert_eq!(a.poll(t1 + Duration::from_secs(10_000)), None);
        assert!(a.stop().is_empty());
    }

    #[test]
    fn stale_results_are_ignored() {
        let t0 = Instant::now();
        let mut a = unshuffled(&[&["a", "b"]], t0);
        let job = a.poll(t0).unwrap();
        a.on_reply(job.id + 100, &reply(1800), t0);
        a.on_failure(job.id + 100, "x".into(), t0);
        assert!(a.status()[0].updating);
        assert_eq!(a.poll(t0), None);
        a.on_failure(job.id, "down".into(), t0);
        a.on_reply(job.id, &reply(1800), t0);
        assert_eq!(a.status()[0].last, Some(TrackerOutcome::Failed("down".into())));
    }

    proptest::proptest! {
        /// Random replies, failures, events and clock jumps: never more than
        /// one job in flight, the tracker set never changes, and a schedule
        /// that is idle always has a next wakeup.
        #[test]
        fn random_drives_keep_the_invariants(
            seed in 0u64..1000,
            ops in proptest::collection::vec((0u8..6, 0u32..4000), 1..200),
        ) {
            let t0 = Instant::now();
            let spec = tiers(&[&["a", "b", "c"], &["d"], &["e", "f"]]);
            let mut a = Announcer::new(&spec, seed, ScheduleConfig::default(), t0);
            let mut now = t0;
            let mut in_flight: Option<AnnounceJob> = None;
            for (op, n) in ops {
                match op {
                    0 => now += Duration::from_secs(n as u64),
                    1 => if let Some(job) = in_flight.take() {
                        a.on_reply(job.id, &reply(n), now);
                    },
                    2 => if let Some(job) = in_flight.take() {
                        a.on_failure(job.id, "x".into(), now);
                    },
                    3 => a.completed(now),
                    4 => a.reannounce(now),
                    _ => {
                        // A stale or foreign result must change nothing.
                        a.on_reply(u64::MAX - n as u64, &reply(n), now);
                    }
                }
                if let Some(job) = a.poll(now) {
                    proptest::prop_assert!(in_flight.is_none(), "two jobs in flight");
                    in_flight = Some(job);
                }
                proptest::prop_assert_eq!(a.poll(now), None);
                proptest::prop_assert_eq!(a.status().len(), 6);
                if in_flight.is_none() {
                    proptest::prop_assert!(a.next_wakeup().is_some_and(|w| w > now));
                    proptest::prop_assert!(a.cursor.is_none(), "no half-walked cycle when idle");
                }
            }
            let stops = a.stop();
            proptest::prop_assert!(stops.iter().all(|j| j.event == Event::Stopped));
            proptest::prop_assert_eq!(a.poll(now + Duration::from_secs(1 << 20)), None);
        }
    }

    #[test]
    fn no_trackers_means_no_work() {
        let mut a = Announcer::new(&[], 1, ScheduleConfig::default(), Instant::now());
        assert_eq!(a.poll(Instant::now()), None);
        assert_eq!(a.next_wakeup(), None);
        assert!(a.stop().is_empty());
    }
}
