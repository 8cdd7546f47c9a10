//! `ringbit verify <torrent> <data dir>`: recheck downloaded data on every core.
//!
//! Layer: edge. Parses the torrent, runs [`ringbit::storage::check::recheck`],
//! prints pieces complete / missing / corrupt and per-file completion (text or
//! `--json`). Exit 0 only when every piece is present and correct, else 1.

use crate::bitfield::Bitfield;
use crate::layout::Layout;
use crate::metainfo::Metainfo;
use crate::storage::check::{recheck, CheckOptions, CheckReport, FileState, ReadMethod};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Most piece ranges listed per category in text output (JSON lists all).
const TEXT_RANGES_MAX: usize = 32;

/// Arguments of `ringbit verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The directory holding the torrent's data (the directory `ringbit`
    /// downloads into: a multi-file torrent's files are under <dir>/<name>/).
    pub data_dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Hashing threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How to read the data: `mmap` (default: hashes in place from the page
    /// cache; a file truncated or a disk failing during the check is caught
    /// by a SIGBUS guard and that piece is reread with pread) or `pread`
    /// (copies every byte out first: more CPU, same answers).
    #[arg(long, default_value = "mmap")]
    pub read: ReadMethod,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let meta = Metainfo::from_file(&args.torrent)
        .with_context(|| format!("reading {}", args.torrent.display()))?;
    let info = &meta.info;
    let layout = Layout::new(info).context("inconsistent torrent layout")?;
    let options = CheckOptions {
        threads: args.threads.unwrap_or_else(crate::hash::default_threads),
        method: args.read,
    };
    let bar = if super::stderr_is_terminal() && !args.json {
        let bar = indicatif::ProgressBar::new(info.total_length);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("static template"),
        );
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let on_piece = |index: u32| {
        if let Some(bar) = &bar {
            bar.inc(layout.piece_size(index) as u64);
        }
    };
    let report = recheck(info, &args.data_dir, None, options, &on_piece)?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let complete = report.have.is_full();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(&meta, &layout, &report, seconds))?
        );
    } else {
        print_text(&meta, &layout, &report, seconds);
    }
    for e in &report.read_errors {
        eprintln!("ringbit: read error: {e}");
    }
    Ok(if complete { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn state_name(s: &FileState) -> &'static str {
    match s {
        FileState::Present => "present",
        FileState::Missing => "missing",
        FileState::Short { .. } => "short",
        FileState::Pad => "pad",
    }
}

fn json_report(
    meta: &Metainfo,
    layout: &Layout,
    r: &CheckReport,
    seconds: f64,
) -> serde_json::Value {
    let files: Vec<serde_json::Value> = meta
        .info
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.pad)
        .map(|(i, f)| {
            let mut v = serde_json::json!({
                "path": f.path.join("/"),
                "length": f.length,
                "offset": f.offset,
                "state": state_name(&r.files[i]),
                "bytes_complete": layout.file_bytes_complete(i, &r.have),
            });
            if let FileState::Short { len } = r.files[i] {
                v["on_disk_length"] = len.into();
            }
            v
        })
        .collect();
    serde_json::json!({
        "name": meta.info.name,
        "info_hash": meta.info_hash.to_hex(),
        "complete": r.have.is_full(),
        "seconds": seconds,
        "bytes": meta.info.total_length,
        "pieces": {
            "total": layout.piece_count(),
            "have": r.have.count(),
            "missing": r.missing.iter_ones().collect::<Vec<_>>(),
            "corrupt": r.corrupt.iter_ones().collect::<Vec<_>>(),
        },
        "read_errors": r.read_error_count,
        "files": files,
    })
}

/// "0-3, 6, 9-12" (at most `TEXT_RANGES_MAX` ranges, then "...").
fn ranges(b: &Bitfield) -> String {
    let mut out = Vec::new();
    let mut it = b.iter_ones().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().expect("peeked");
        }
        if out.len() == TEXT_RANGES_MAX {
            out.push("...".to_string());
            break;
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(", ")
}

fn print_text(meta: &Metainfo, layout: &Layout, r: &CheckReport, seconds: f64) {
    let info = &meta.info;
    println!("torrent: {} ({})", info.name, meta.info_hash);
    println!(
        "pieces: {} total, {} complete, {} missing, {} corrupt",
        layout.piece_count(),
        r.have.count(),
        r.missing.count(),
        r.corrupt.count()
    );
    if r.corrupt.count() > 0 {
        println!("corrupt pieces: {}", ranges(&r.corrupt));
    }
    if r.missing.count() > 0 {
        println!("missing pieces: {}", ranges(&r.missing));
    }
    println!("files:");
    for (i, f) in info.files.iter().enumerate().filter(|(_, f)| !f.pad) {
        let done = layout.file_bytes_complete(i, &r.have);
        let pct = if f.length == 0 { 100.0 } else { done as f64 * 100.0 / f.length as f64 };
        let state = match &r.files[i] {
            FileState::Short { len } => format!("short ({len} of {} bytes)", f.length),
            s => state_name(s).to_string(),
        };
        println!("  {pct:6.2}%  {:<8} {}", state, f.path.join("/"));
    }
    let rate = info.total_length as f64 / seconds.max(1e-9) / 1e6;
    if r.have.is_full() {
        println!(
            "result: complete ({} bytes in {seconds:.3} s, {rate:.0} MB/s)",
            info.total_length
        );
    } else {
        println!("result: incomplete");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_compact_and_bounded() {
        let mut b = Bitfield::new(20);
        for i in [0, 1, 2, 3, 6, 9, 10, 19] {
            b.set(i);
        }
        assert_eq!(ranges(&b), "0-3, 6, 9-10, 19");
        let mut many = Bitfield::new(200);
        for i in (0..200).step_by(2) {
            many.set(i);
        }
        assert!(ranges(&many).ends_with("..."));
        assert_eq!(ranges(&many).split(", ").count(), TEXT_RANGES_MAX + 1);
    }
}
