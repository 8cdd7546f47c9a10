//! Progress display: a bar on a terminal, a log line every few seconds
//! otherwise.
//!
//! Layer: edge.

use crate::shard::engine::TorrentStatus;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Seconds between progress lines when stderr is not a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// A counting bar (pieces checked, pieces hashed), hidden when stderr is not
/// a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !super::stderr_is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Download progress: percent, rates, peers, ETA.
pub struct Transfer {
    bar: Option<ProgressBar>,
    total: u64,
    name: String,
    last_log: Cell<Instant>,
}

impl Transfer {
    pub fn new(total: u64, name: &str) -> Transfer {
        let bar = super::stderr_is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            bar
        });
        Transfer { bar, total, name: name.to_string(), last_log: Cell::new(Instant::now()) }
    }

    pub fn update(&self, status: &TorrentStatus, complete: bool) {
        let left = status.counters.left.load(Ordering::Relaxed);
        let done = self.total.saturating_sub(left);
        let down = status.download_rate.load(Ordering::Relaxed);
        let up = status.upload_rate.load(Ordering::Relaxed);
        let peers = status.peers.load(Ordering::Relaxed);
        let eta = if complete {
            "seeding".to_string()
        } else {
            left.checked_div(down).map_or("ETA -".to_string(), |s| format!("ETA {s}s"))
        };
        let msg =
            format!("down {}/s up {}/s peers {peers} {eta}", HumanBytes(down), HumanBytes(up));
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(msg);
            }
            None => {
                if self.last_log.get().elapsed() >= LOG_INTERVAL {
                    self.last_log.set(Instant::now());
                    let percent = (done * 100).checked_div(self.total).unwrap_or(100);
                    eprintln!(
                        "{}: {percent}% {}/{} {msg}",
                        self.name,
                        HumanBytes(done),
                        HumanBytes(self.total)
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
