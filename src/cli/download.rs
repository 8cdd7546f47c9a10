//! `ringbit download`: fetch a torrent into a directory, verify every piece,
//! and exit 0 when the wanted data is complete (or keep seeding with `--seed`).
//!
//! Layer: edge. Builds a [`Session`], adds one torrent, shows progress, and
//! handles Ctrl-C (SIGINT/SIGTERM): the torrent stops cleanly, trackers hear
//! `stopped`, and a later run continues from the pieces already on disk.

use super::engine_args::EngineArgs;
use crate::metainfo::Metainfo;
use crate::picker::wanted_pieces;
use crate::session::{AddTorrent, Session};
use crate::shard::engine::TorrentStatus;
use crate::storage::check::CheckOptions;
use crate::storage::{partfile, resume};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `ringbit download`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .torrent file or magnet link (`magnet:?xt=urn:btih:...`) to
    /// download. A magnet link's metadata is fetched from its peers (`x.pe`,
    /// `--peer`) and trackers (`tr`), then saved beside the resume state.
    pub torrent: PathBuf,

    /// Directory to download into (created if missing). A multi-file torrent
    /// gets its own sub-directory named after the torrent.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,

    /// Keep seeding after the download completes, until Ctrl-C.
    #[arg(long)]
    pub seed: bool,

    /// Download only the files whose path (as `ringbit info` shows it, with
    /// or without the torrent's top directory) matches one of these globs,
    /// e.g. `--only '*.iso' --only 'docs/**'`.
    #[arg(long, value_name = "GLOB")]
    pub only: Vec<String>,

    /// Where resume state is kept (default: $XDG_STATE_HOME/ringbit, else
    /// ~/.local/state/ringbit).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The default resume-state directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ringbit");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/ringbit"),
        None => PathBuf::from("/var/lib/ringbit"),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut fetched = None;
    let metainfo = match super::fetch::magnet_argument(&args.torrent) {
        Some(uri) => {
            let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
            let stop = super::engine_args::stop_flag()?;
            let Some(resolved) = super::fetch::resolve(uri, &state_dir, &args.engine, &stop)?
            else {
                eprintln!("ringbit: interrupted before the metadata arrived");
                return Ok(ExitCode::from(130));
            };
            let metainfo = resolved.metainfo.clone();
            fetched = Some((resolved, stop));
            metainfo
        }
        None => Arc::new(
            Metainfo::from_file(&args.torrent)
                .with_context(|| format!("cannot load {}", args.torrent.display()))?,
        ),
    };
    let info = &metainfo.info;
    let selector = build_selector(&args.only)?;
    // A multi-file torrent's paths start with its name (`multi/sub/c.bin`);
    // a glob may name the file with or without it (`sub/*` as in the help).
    let selected: Vec<bool> = info
        .files
        .iter()
        .map(|f| {
            selector.as_ref().is_none_or(|set| {
                set.is_match(f.path.join("/"))
                    || (f.path.len() > 1
                        && f.path[0] == info.name
                        && set.is_match(f.path[1..].join("/")))
            })
        })
        .collect();
    let wanted =
        wanted_pieces(&info.files, info.piece_length, info.piece_count(), |i, _| selected[i]);
    if wanted.count() == 0 {
        anyhow::bail!("--only matches no file of the torrent");
    }
    // With unselected files, storage (and recheck, and resume state) works on
    // a view of the torrent in which those files are never created: the
    // bytes of theirs that share a wanted piece live in part files.
    let metainfo = match partfile::store_info(info, metainfo.info_hash, &selected, &wanted) {
        Some(store_info) => Arc::new(Metainfo { info: store_info, ..(*metainfo).clone() }),
        None => metainfo,
    };
    let info = &metainfo.info;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let have = existing_pieces(&metainfo, &args.output, &state_dir)?;
    let already = (0..info.piece_count()).all(|p| !wanted.get(p) || have.get(p));
    if already && !args.seed {
        if let Some(session) = fetched.and_then(|(r, _)| r.session) {
            session.shutdown();
        }
        println!("{}: already complete in {}", info.name, args.output.display());
        return Ok(ExitCode::SUCCESS);
    }

    // A magnet link's fetch already started the session (and learned peers).
    let (session, stop, mut peers) = match fetched {
        Some((resolved, stop)) => match resolved.session {
            Some(session) => (session, stop, resolved.peers),
            None => (Session::start(session_options(&args, &state_dir)?)?, stop, resolved.peers),
        },
        None => (
            Session::start(session_options(&args, &state_dir)?)?,
            super::engine_args::stop_flag()?,
            Vec::new(),
        ),
    };
    peers.extend(args.engine.peers()?);
    let status = session.add(AddTorrent {
        metainfo: metainfo.clone(),
        download_dir: args.output.clone(),
        have,
        wanted: wanted.clone(),
        store_options: args.engine.store_options(),
        peers,
    })?;
    tracing::info!(port = session.listen_port(), info_hash = %metainfo.info_hash, "downloading");
    let outcome = watch(&metainfo, &status, &stop, args.seed);
    // Shutdown flushes every store; resume state then claims only what a
    // successful flush made durable, and marks for recheck what a failed
    // one may have lost.
    session.shutdown();
    let durability = status.durability();
    let suspect = durability.suspect();
    let saved = resume::save_marked(
        &state_dir,
        metainfo.info_hash,
        info,
        &args.output,
        durability.durable(),
        Some(suspect),
    );
    if let Err(error) = saved {
        eprintln!("ringbit: warning: cannot save resume state: {error}");
    }
    if durability.flush_failures() > 0 {
        // The data may not be on disk whatever the download reached: the
        // command did not do its job.
        let error = status.error().unwrap_or_else(|| "flush failed".into());
        anyhow::bail!(
            "{error} ({} of {} pieces durable, {} to recheck)",
            durability.durable().count(),
            status.piece_count,
            suspect.count()
        );
    }
    match outcome {
        Outcome::Complete => {
            println!(
                "{}: complete, {} pieces verified in {}",
                info.name,
                wanted.count(),
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Interrupted => {
            eprintln!(
                "ringbit: interrupted with {} of {} pieces verified; run the same command again to continue",
                status.have_pieces.load(Ordering::Relaxed),
                status.piece_count
            );
            Ok(ExitCode::from(130))
        }
        Outcome::Failed(error) => anyhow::bail!("{error}"),
    }
}

/// The session options of a download: the engine's, with the DHT's state
/// kept beside the resume state.
pub(super) fn session_options(
    args: &Args,
    state_dir: &Path,
) -> anyhow::Result<crate::session::SessionOptions> {
    let mut options = args.engine.session_options()?;
    if let Some(dht) = options.dht.as_mut() {
        dht.state_dir = Some(state_dir.to_path_buf());
    }
    Ok(options)
}

fn build_selector(globs: &[String]) -> anyhow::Result<Option<globset::GlobSet>> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut set = globset::GlobSetBuilder::new();
    for glob in globs {
        set.add(globset::Glob::new(glob).with_context(|| format!("bad --only glob {glob:?}"))?);
    }
    Ok(Some(set.build()?))
}

/// Pieces already verified on disk: trusted from the resume state for files
/// that did not change since it was written, rechecked otherwise, so an
/// interrupted download continues where it stopped.
fn existing_pieces(
    metainfo: &Metainfo,
    dir: &Path,
    state_dir: &Path,
) -> anyhow::Result<crate::bitfield::Bitfield> {
    let info = &metainfo.info;
    let resumed =
        resume::load_or_recheck(state_dir, metainfo.info_hash, info, dir, CheckOptions::default())
            .with_context(|| format!("cannot check existing data in {}", dir.display()))?;
    if let Some(warning) = &resumed.warning {
        eprintln!("ringbit: warning: {warning}");
    }
    tracing::info!(
        have = resumed.have.count(),
        of = info.piece_count(),
        rechecked = resumed.rechecked,
        full_recheck = resumed.full_recheck,
        "existing data checked"
    );
    Ok(resumed.have)
}

/// How often the progress display is redrawn.
const REDRAW_INTERVAL: Duration = Duration::from_millis(200);

/// How often completion is checked: the command (and the benchmark that
/// times it by its "download finished" line) learns of it this late at most.
const COMPLETION_POLL: Duration = Duration::from_millis(10);

enum Outcome {
    Complete,
    Interrupted,
    Failed(String),
}

/// Shows progress until the download completes (and, with `seed`, until
/// Ctrl-C), the torrent fails, or Ctrl-C.
fn watch(metainfo: &Metainfo, status: &TorrentStatus, stop: &AtomicBool, seed: bool) -> Outcome {
    let total = metainfo.info.total_length;
    let display = super::progress::Transfer::new(total, &metainfo.info.name);
    let started = Instant::now();
    let mut last_redraw = started - REDRAW_INTERVAL;
    loop {
        if let Some(error) = status.error() {
            display.finish();
            return Outcome::Failed(error);
        }
        let complete = status.completed.load(Ordering::Acquire);
        if stop.load(Ordering::Relaxed) {
            display.finish();
            return if complete { Outcome::Complete } else { Outcome::Interrupted };
        }
        if complete && !seed {
            display.finish();
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "download finished");
            return Outcome::Complete;
        }
        if last_redraw.elapsed() >= REDRAW_INTERVAL {
            display.update(status, complete);
            last_redraw = Instant::now();
        }
        std::thread::sleep(COMPLETION_POLL);
    }
}
