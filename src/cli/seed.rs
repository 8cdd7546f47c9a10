//! `ringbit seed`: serve a torrent's complete (or, with `--partial`, partial)
//! data to leechers until Ctrl-C, then announce `stopped` and exit 0.
//!
//! Layer: edge. Trusts resume state that matches the data (every file's size
//! and mtime as when ringbit verified it; `--recheck` overrides), otherwise
//! verifies the data with every core (`storage::check::recheck`) and saves
//! resume state; refuses missing or corrupt pieces unless `--partial`, builds a [`Session`]
//! with the torrent added as `have` = what verified and `wanted` = the same
//! (a seed never downloads), and prints a status line until SIGINT/SIGTERM.
//!
//! Re-announce: a seeder learns of leechers that arrive after its last
//! announce only by announcing again, and some leechers (transmission on
//! loopback) are reachable only when we dial them. `--reannounce-secs N`
//! caps the tracker schedule's interval at N seconds (and lowers its politeness
//! floor to N), so the trackers announce every N seconds whatever `interval` /
//! `min interval` the tracker asked for; the shard dials every new peer the
//! replies carry. (`TrackerHandle::reannounce` alone cannot do this: it
//! honours the tracker's `min interval`, which is 15 minutes on opentracker.)

use super::engine_args::EngineArgs;
use crate::bitfield::Bitfield;
use crate::metainfo::Metainfo;
use crate::net::trackers::TrackerConfig;
use crate::session::{AddTorrent, Session};
use crate::shard::engine::TorrentStatus;
use crate::storage::check::{recheck, CheckOptions, CheckReport, FileState};
use crate::storage::resume;
use crate::wire::PeerId;
use anyhow::Context;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds between status lines when stderr is not a terminal.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// How often the main thread looks at the stop flag and the torrent.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Shortest `--reannounce-secs` accepted (a tracker is not a busy loop).
pub const MIN_REANNOUNCE_SECS: u32 = 1;

/// Files named in the refusal message at most (the rest are counted).
const FILES_LISTED_MAX: usize = 8;

/// Arguments of `ringbit seed`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .torrent file to seed.
    pub torrent: PathBuf,

    /// Directory that holds the torrent's data: its file (single-file
    /// torrent) or its top directory (multi-file), as `download -o` wrote it.
    pub data_dir: PathBuf,

    /// Seed the pieces that verify even when others are missing or corrupt
    /// (by default any bad piece refuses to start).
    #[arg(long)]
    pub partial: bool,

    /// Announce to the trackers every N seconds (default: the tracker's
    /// interval), so leechers that arrive later are learned and dialled.
    #[arg(long, value_name = "N")]
    pub reannounce_secs: Option<u32>,

    /// Where resume state lives (default: $XDG_STATE_HOME/ringbit or
    /// ~/.local/state/ringbit). When it matches the data (every file's size
    /// and mtime unchanged since ringbit verified it), the recheck is skipped.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Recheck every piece even when resume state matches.
    #[arg(long)]
    pub recheck: bool,

    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let metainfo = Arc::new(
        Metainfo::from_file(&args.torrent)
            .with_context(|| format!("cannot load {}", args.torrent.display()))?,
    );
    let info = &metainfo.info;
    if let Some(secs) = args.reannounce_secs {
        anyhow::ensure!(
            secs >= MIN_REANNOUNCE_SECS,
            "--reannounce-secs must be at least {MIN_REANNOUNCE_SECS}"
        );
    }
    anyhow::ensure!(
        args.data_dir.is_dir(),
        "data directory {} does not exist",
        args.data_dir.display()
    );
    let stop = super::engine_args::stop_flag()?;

    let state_dir = args.state_dir.clone().unwrap_or_else(super::download::default_state_dir);
    let trusted = if args.recheck {
        None
    } else {
        resume::load_trusted(&state_dir, metainfo.info_hash, info, &args.data_dir)
            .filter(|have| have.is_full() || (args.partial && have.count() > 0))
    };
    let have = match trusted {
        Some(have) => {
            eprintln!(
                "ringbit: resume state matches the data: {} of {} pieces verified, not rechecking",
                have.count(),
                info.piece_count()
            );
            have
        }
        None => {
            let have = verified_pieces(&metainfo, &args.data_dir, args.partial)?;
            // Read back from disk, so durable: the next start may trust it.
            let saved = resume::save(&state_dir, metainfo.info_hash, info, &args.data_dir, &have);
            if let Err(error) = saved {
                eprintln!("ringbit: warning: cannot save resume state: {error}");
            }
            have
        }
    };
    if stop.load(Ordering::Relaxed) {
        return Ok(ExitCode::from(130));
    }

    let mut options = args.engine.session_options()?;
    if let Some(dht) = options.dht.as_mut() {
        dht.state_dir = Some(state_dir.clone());
    }
    if let Some(secs) = args.reannounce_secs {
        let mut trackers = TrackerConfig::new(PeerId::ours(rand::random()).0);
        trackers.schedule.max_interval_secs = secs;
        trackers.schedule.min_interval_floor_secs =
            trackers.schedule.min_interval_floor_secs.min(secs);
        options.tracker_config = Some(trackers);
    }
    let session = Session::start(options)?;
    let status = session.add(AddTorrent {
        metainfo: metainfo.clone(),
        download_dir: args.data_dir.clone(),
        // A seed wants only what it has: it never downloads.
        wanted: have.clone(),
        have: have.clone(),
        store_options: args.engine.store_options(),
        peers: args.engine.peers()?,
    })?;
    eprintln!(
        "ringbit: seeding {} ({} of {} pieces, {}) on port {}",
        info.name,
        have.count(),
        info.piece_count(),
        HumanBytes(info.total_length),
        session.listen_port()
    );
    let outcome = serve(&status, &stop);
    let uploaded = status.counters.uploaded.load(Ordering::Relaxed);
    session.shutdown();
    eprintln!("ringbit: stopped seeding {}, uploaded {}", info.name, HumanBytes(uploaded));
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => anyhow::bail!("{error}"),
    }
}

/// The pieces to seed, rechecked: every piece must verify unless `partial`.
fn verified_pieces(metainfo: &Metainfo, dir: &Path, partial: bool) -> anyhow::Result<Bitfield> {
    let info = &metainfo.info;
    let bar = super::progress::bar(info.piece_count() as u64, "checking");
    let started = Instant::now();
    let report = recheck(info, dir, None, CheckOptions::default(), &|_| bar.inc(1))
        .with_context(|| format!("cannot check {}", dir.display()))?;
    bar.finish_and_clear();
    tracing::info!(
        have = report.have.count(),
        of = info.piece_count(),
        seconds = started.elapsed().as_secs_f64(),
        "data checked"
    );
    if report.have.is_full() {
        return Ok(report.have);
    }
    let problem = describe_problem(metainfo, &report);
    if !partial {
        anyhow::bail!(
            "{} in {} is not complete: {problem}; refusing to seed (use --partial to seed the \
             pieces that verify)",
            info.name,
            dir.display()
        );
    }
    anyhow::ensure!(
        report.have.count() > 0,
        "{} in {}: no piece verifies ({problem}); nothing to seed",
        info.name,
        dir.display()
    );
    eprintln!(
        "ringbit: --partial: {problem}; seeding the {} pieces that verify",
        report.have.count()
    );
    Ok(report.have)
}

/// "N pieces missing, M corrupt; missing files: a, b" for the refusal message.
fn describe_problem(metainfo: &Metainfo, report: &CheckReport) -> String {
    let mut text =
        format!("{} pieces missing, {} corrupt", report.missing.count(), report.corrupt.count());
    let bad_files: Vec<String> = metainfo
        .info
        .files
        .iter()
        .zip(&report.files)
        .filter_map(|(entry, state)| match state {
            FileState::Missing => Some(format!("{} (missing)", entry.path.join("/"))),
            FileState::Short { len } => {
                Some(format!("{} (short: {len} of {} bytes)", entry.path.join("/"), entry.length))
            }
            FileState::Present | FileState::Pad => None,
        })
        .collect();
    if !bad_files.is_empty() {
        let shown = bad_files.iter().take(FILES_LISTED_MAX).cloned().collect::<Vec<_>>();
        text.push_str("; files: ");
        text.push_str(&shown.join(", "));
        if bad_files.len() > shown.len() {
            text.push_str(&format!(" and {} more", bad_files.len() - shown.len()));
        }
    }
    if let Some(first) = report.read_errors.first() {
        text.push_str(&format!("; {} read errors, first: {first}", report.read_error_count));
    }
    text
}

/// Shows the status until the stop flag is set or the torrent fails.
fn serve(status: &TorrentStatus, stop: &AtomicBool) -> Result<(), String> {
    let bar = super::stderr_is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        bar
    });
    let mut last_line = Instant::now();
    let result = loop {
        if let Some(error) = status.error() {
            break Err(error);
        }
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let line = status_line(status);
        match &bar {
            Some(bar) => {
                bar.set_message(line);
                bar.tick();
            }
            None if last_line.elapsed() >= STATUS_INTERVAL => {
                last_line = Instant::now();
                eprintln!("{line}");
            }
            None => {}
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

fn status_line(status: &TorrentStatus) -> String {
    format!(
        "seeding: peers {} up {}/s uploaded {}",
        status.peers.load(Ordering::Relaxed),
        HumanBytes(status.upload_rate.load(Ordering::Relaxed)),
        HumanBytes(status.counters.uploaded.load(Ordering::Relaxed)),
    )
}
