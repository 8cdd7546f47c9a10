//! Share limits, as qBittorrent defines them: a complete torrent whose ratio
//! or seeding time reaches its limit (its own, or the global one when it
//! defers) is stopped or removed, as the global `max_ratio_act` says.
//!
//! Layer: pure (no clock, no files): the daemon's share thread
//! ([`super::Daemon::share_tick`]) feeds `now` and the torrents' counters.
//!
//! Invariants: a torrent's seeding time grows only while it runs with every
//! piece, by at most [`SEEDING_STEP_MAX`] per observation (a stalled thread
//! or a suspended machine does not count as seeding); totals of earlier runs
//! are folded in when a run ends, so ratio and seeding time survive pauses
//! and restarts.

use super::registry::{Labels, Totals, LIMIT_GLOBAL};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// qBittorrent's largest ratio (shown when nothing was downloaded).
pub const RATIO_MAX: f64 = 9999.0;
/// Most seeding time one observation adds.
pub const SEEDING_STEP_MAX: Duration = Duration::from_secs(10);
/// Largest ratio limit accepted.
pub const RATIO_LIMIT_MAX: f64 = RATIO_MAX;
/// Largest seeding-time limit accepted, in minutes (qBittorrent's: 525,600
/// minutes, a year).
pub const SEEDING_TIME_LIMIT_MAX_MINS: i64 = 525_600;

/// What happens when a limit is reached (qBittorrent's `max_ratio_act`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShareAction {
    /// 0: stop (pause) the torrent.
    #[default]
    Stop,
    /// 1: remove it, keeping its files.
    Remove,
    /// 3: remove it and delete its files.
    RemoveWithFiles,
}

impl ShareAction {
    /// From qBittorrent's number (2, super seeding, is not supported).
    pub fn from_qbt(code: i64) -> Result<ShareAction, String> {
        match code {
            0 => Ok(ShareAction::Stop),
            1 => Ok(ShareAction::Remove),
            3 => Ok(ShareAction::RemoveWithFiles),
            2 => Err("max_ratio_act 2 (super seeding) is not supported".into()),
            other => Err(format!("max_ratio_act {other} is not 0, 1 or 3")),
        }
    }

    pub fn to_qbt(self) -> i64 {
        match self {
            ShareAction::Stop => 0,
            ShareAction::Remove => 1,
            ShareAction::RemoveWithFiles => 3,
        }
    }
}

/// The global limits (`app/preferences`), persisted in `labels.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct GlobalShare {
    pub ratio_enabled: bool,
    pub ratio: f64,
    pub seeding_time_enabled: bool,
    pub seeding_time_mins: i64,
    pub action: ShareAction,
}

impl Default for GlobalShare {
    fn default() -> GlobalShare {
        GlobalShare {
            ratio_enabled: false,
            ratio: 1.0,
            seeding_time_enabled: false,
            seeding_time_mins: 1440,
            action: ShareAction::Stop,
        }
    }
}

/// Checks a ratio limit as an API client gives it (-2, -1 or 0..=9999).
pub fn check_ratio_limit(value: f64) -> Result<f64, String> {
    if value == LIMIT_GLOBAL as f64 || value == -1.0 || (0.0..=RATIO_LIMIT_MAX).contains(&value) {
        Ok(value)
    } else {
        Err(format!("ratio limit {value} is not -2, -1 or 0 to {RATIO_LIMIT_MAX}"))
    }
}

/// Checks a seeding-time limit in minutes (-2, -1 or 0..=525600).
pub fn check_seeding_time_limit(value: i64) -> Result<i64, String> {
    if value == LIMIT_GLOBAL || value == -1 || (0..=SEEDING_TIME_LIMIT_MAX_MINS).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "seeding time limit {value} is not -2, -1 or 0 to {SEEDING_TIME_LIMIT_MAX_MINS} minutes"
        ))
    }
}

/// qBittorrent's ratio: uploaded over downloaded; when less than 1% of the
/// completed bytes were downloaded (data that was already there), over the
/// completed bytes; [`RATIO_MAX`] at most.
pub fn ratio(uploaded: u64, downloaded: u64, done_bytes: u64) -> f64 {
    let base = if (downloaded as f64) < done_bytes as f64 * 0.01 { done_bytes } else { downloaded };
    if base == 0 {
        return if uploaded == 0 { 0.0 } else { RATIO_MAX };
    }
    (uploaded as f64 / base as f64).min(RATIO_MAX)
}

/// The limits that apply to a torrent: (ratio, seeding seconds); `None` = none.
pub fn effective_limits(labels: &Labels, global: &GlobalShare) -> (Option<f64>, Option<u64>) {
    let ratio = if labels.ratio_limit == LIMIT_GLOBAL as f64 {
        global.ratio_enabled.then_some(global.ratio)
    } else {
        Some(labels.ratio_limit)
    };
    let mins = if labels.seeding_time_limit_mins == LIMIT_GLOBAL {
        global.seeding_time_enabled.then_some(global.seeding_time_mins)
    } else {
        Some(labels.seeding_time_limit_mins)
    };
    (ratio.filter(|r| *r >= 0.0), mins.filter(|m| *m >= 0).map(|m| m as u64 * 60))
}

/// Whether a complete torrent with `ratio` and `seeding_secs` has reached a
/// limit.
pub fn limit_reached(ratio: f64, seeding_secs: u64, labels: &Labels, global: &GlobalShare) -> bool {
    let (ratio_limit, seconds_limit) = effective_limits(labels, global);
    ratio_limit.is_some_and(|limit| ratio >= limit)
        || seconds_limit.is_some_and(|limit| seeding_secs >= limit)
}

/// A torrent's totals over its runs, and the clock of its seeding time.
#[derive(Debug, Clone, Default)]
pub struct ShareTracker {
    /// Totals of the runs that ended, and the seeding time so far.
    pub totals: Totals,
    seeding_ms_carry: u64,
    last_seen: Option<Instant>,
}

impl ShareTracker {
    pub fn new(totals: Totals) -> ShareTracker {
        ShareTracker { totals, seeding_ms_carry: 0, last_seen: None }
    }

    /// One observation at `now`: whether it is running with every piece
    /// (`unix_now` stamps its first completion). Returns true when the
    /// totals changed in a way worth saving (a first completion).
    pub fn observe(&mut self, now: Instant, seeding: bool, unix_now: u64) -> bool {
        let mut changed = false;
        if seeding {
            if self.totals.completed_at == 0 {
                self.totals.completed_at = unix_now.max(1);
                changed = true;
            }
            if let Some(last) = self.last_seen {
                let step = now.saturating_duration_since(last).min(SEEDING_STEP_MAX);
                let ms = self.seeding_ms_carry + step.as_millis() as u64;
                self.totals.seeding_secs += ms / 1000;
                self.seeding_ms_carry = ms % 1000;
            }
            self.last_seen = Some(now);
        } else {
            self.last_seen = None;
        }
        changed
    }

    /// The totals with the current run's counters added.
    pub fn with_run(&self, uploaded: u64, downloaded: u64) -> Totals {
        Totals {
            uploaded: self.totals.uploaded + uploaded,
            downloaded: self.totals.downloaded + downloaded,
            ..self.totals
        }
    }

    /// A run ended with these counters: fold them in.
    pub fn end_run(&mut self, uploaded: u64, downloaded: u64) {
        self.totals = self.with_run(uploaded, downloaded);
        self.last_seen = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ratio: f64, mins: i64) -> Labels {
        Labels { ratio_limit: ratio, seeding_time_limit_mins: mins, ..Labels::default() }
    }

    #[test]
    fn ratio_follows_qbittorrent() {
        assert_eq!(ratio(0, 0, 0), 0.0);
        assert_eq!(ratio(5, 0, 0), RATIO_MAX);
        assert_eq!(ratio(50, 100, 100), 0.5);
        // Seeded from data already there: over the completed bytes.
        assert_eq!(ratio(200, 0, 100), 2.0);
        assert_eq!(ratio(u64::MAX, 1, 1), RATIO_MAX);
    }

    #[test]
    fn own_limits_win_and_global_applies_only_when_deferred_and_enabled() {
        let off = GlobalShare::default();
        let on = GlobalShare {
            ratio_enabled: true,
            ratio: 2.0,
            seeding_time_enabled: true,
            seeding_time_mins: 10,
            ..GlobalShare::default()
        };
        let deferring = labels(-2.0, -2);
        assert!(!limit_reached(100.0, 1_000_000, &deferring, &off));
        assert!(limit_reached(2.0, 0, &deferring, &on));
        assert!(!limit_reached(1.9, 599, &deferring, &on));
        assert!(limit_reached(0.0, 600, &deferring, &on));
        // -1: no limit even with the global one on.
        assert!(!limit_reached(100.0, 1_000_000, &labels(-1.0, -1), &on));
        // Its own: 0 is reached at once (qBittorrent does the same).
        assert!(limit_reached(0.0, 0, &labels(0.0, -1), &off));
        assert!(limit_reached(0.0, 60, &labels(-1.0, 1), &off));
        assert!(!limit_reached(0.0, 59, &labels(-1.0, 1), &off));
        assert_eq!(effective_limits(&labels(3.0, -2), &on), (Some(3.0), Some(600)));
    }

    #[test]
    fn limits_and_actions_are_checked() {
        assert!(check_ratio_limit(-2.0).is_ok() && check_ratio_limit(0.5).is_ok());
        assert!(check_ratio_limit(-3.0).is_err() && check_ratio_limit(1e9).is_err());
        assert!(check_ratio_limit(f64::NAN).is_err());
        assert!(check_seeding_time_limit(-1).is_ok() && check_seeding_time_limit(-5).is_err());
        assert!(check_seeding_time_limit(SEEDING_TIME_LIMIT_MAX_MINS + 1).is_err());
        for code in [0, 1, 3] {
            assert_eq!(ShareAction::from_qbt(code).unwrap().to_qbt(), code);
        }
        assert!(ShareAction::from_qbt(2).unwrap_err().contains("super seeding"));
        assert!(ShareAction::from_qbt(7).is_err());
    }

    #[test]
    fn seeding_time_on_virtual_time() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut tracker = ShareTracker::new(Totals::default());
        assert!(!tracker.observe(at(0), false, 100));
        // First complete observation stamps completion, counts nothing yet.
        assert!(tracker.observe(at(1000), true, 100));
        assert_eq!(tracker.totals.completed_at, 100);
        assert!(!tracker.observe(at(1600), true, 101));
        assert!(!tracker.observe(at(2200), true, 102));
        assert_eq!(tracker.totals.seeding_secs, 1); // 1.2 s seen, 0.2 s carried
                                                    // A long gap (suspended machine) counts at most SEEDING_STEP_MAX.
        tracker.observe(at(3_600_000), true, 200);
        assert_eq!(tracker.totals.seeding_secs, 11);
        // Paused: the gap is not seeding.
        tracker.observe(at(3_601_000), false, 201);
        tracker.observe(at(3_700_000), true, 300);
        assert_eq!(tracker.totals.seeding_secs, 11);
        tracker.observe(at(3_705_000), true, 305);
        assert_eq!(tracker.totals.seeding_secs, 16);
        assert_eq!(tracker.totals.completed_at, 100, "completion is stamped once");
        // Runs fold into the totals.
        tracker.end_run(10, 20);
        tracker.end_run(5, 0);
        assert_eq!(tracker.with_run(1, 1).uploaded, 16);
        assert_eq!(tracker.totals.downloaded, 20);
        // A limit of 1 minute is reached after 60 seconds of seeding.
        let one_minute = labels(-1.0, 1);
        let mut t = ShareTracker::new(Totals::default());
        let mut now = 0;
        while !limit_reached(0.0, t.totals.seeding_secs, &one_minute, &GlobalShare::default()) {
            t.observe(at(now), true, 1);
            now += 1000;
            assert!(now < 100_000, "never reached");
        }
        assert_eq!(now, 61_000);
    }
}
