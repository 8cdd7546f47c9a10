//! `ringbit info`: what a `.torrent` file or a magnet link describes, for
//! people (a file tree) or scripts (`--json`, one object).
//!
//! Layer: edge.

use crate::magnet::Magnet;
use crate::metainfo::Metainfo;
use anyhow::Context;
use serde_json::json;
use std::process::ExitCode;

/// Arguments of `ringbit info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .torrent file or a `magnet:?` link.
    pub input: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let is_magnet = args.input.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("magnet:"));
    if is_magnet {
        let magnet = Magnet::parse(&args.input).context("invalid magnet link")?;
        if args.json {
            println!("{}", magnet_json(&magnet));
        } else {
            print_magnet(&magnet);
        }
    } else {
        let metainfo = Metainfo::from_file(std::path::Path::new(&args.input))
            .with_context(|| format!("{}: invalid torrent", args.input))?;
        if args.json {
            println!("{}", torrent_json(&metainfo));
        } else {
            print_torrent(&metainfo);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn magnet_json(m: &Magnet) -> serde_json::Value {
    json!({
        "kind": "magnet",
        "info_hash": m.info_hash.to_hex(),
        "name": m.display_name,
        "total_size": m.exact_length,
        // A magnet's trackers have no tiers; each is its own (BEP 9).
        "trackers": m.trackers.iter().map(|t| vec![t]).collect::<Vec<_>>(),
        "peers": m.peers,
    })
}

fn torrent_json(m: &Metainfo) -> serde_json::Value {
    let files: Vec<_> = m
        .info
        .user_files()
        .map(|f| json!({ "path": f.path.join("/"), "length": f.length }))
        .collect();
    json!({
        "kind": "torrent",
        "name": m.info.name,
        "info_hash": m.info_hash.to_hex(),
        "total_size": m.info.total_length,
        "piece_count": m.info.piece_count(),
        "piece_length": m.info.piece_length,
        "files": files,
        "trackers": m.tracker_tiers(),
        "web_seeds": m.url_list,
        "private": m.info.private,
        "created_by": m.created_by,
        "creation_date": m.creation_date,
        "comment": m.comment,
        "source": m.info.source,
    })
}

fn print_magnet(m: &Magnet) {
    println!("magnet link");
    println!("  name:       {}", m.display_name.as_deref().unwrap_or("(none)"));
    println!("  info hash:  {}", m.info_hash);
    if let Some(xl) = m.exact_length {
        println!("  size:       {}", human_size(xl));
    }
    print_list("trackers", &m.trackers);
    print_list("peers", &m.peers);
}

fn print_list(title: &str, items: &[String]) {
    if !items.is_empty() {
        println!("  {title}:");
        for item in items {
            println!("    {item}");
        }
    }
}

fn print_torrent(m: &Metainfo) {
    let info = &m.info;
    println!("name:          {}", info.name);
    println!("info hash:     {}", m.info_hash);
    println!("size:          {}", human_size(info.total_length));
    println!("pieces:        {} x {}", info.piece_count(), human_size(info.piece_length as u64));
    println!("private:       {}", if info.private { "yes" } else { "no" });
    if let Some(by) = &m.created_by {
        println!("created by:    {by}");
    }
    if let Some(date) = m.creation_date {
        println!("creation date: {}", utc_date(date));
    }
    if let Some(comment) = &m.comment {
        println!("comment:       {comment}");
    }
    if let Some(source) = &info.source {
        println!("source:        {source}");
    }
    let tiers = m.tracker_tiers();
    if !tiers.is_empty() {
        println!("trackers:");
        for (i, tier) in tiers.iter().enumerate() {
            println!("  tier {}: {}", i + 1, tier.join(", "));
        }
    }
    if !m.url_list.is_empty() {
        println!("web seeds:");
        for url in &m.url_list {
            println!("  {url}");
        }
    }
    let files: Vec<_> = info.user_files().collect();
    println!("files ({}):", files.len());
    // A tree in torrent order: print each directory the first time a file
    // below it appears.
    let mut open: &[String] = &[];
    for f in files {
        let (dirs, file_name) = f.path.split_at(f.path.len() - 1);
        let common = open.iter().zip(dirs).take_while(|(a, b)| a == b).count();
        for (depth, dir) in dirs.iter().enumerate().skip(common) {
            println!("{}{dir}/", "  ".repeat(depth + 1));
        }
        open = dirs;
        println!("{}{}  ({})", "  ".repeat(dirs.len() + 1), file_name[0], human_size(f.length));
    }
}

/// `1.5 MiB (1572864 bytes)`.
fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        format!("{} ({bytes} bytes)", short_size(bytes))
    }
}

/// `1.50 MiB`.
fn short_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// `2024-01-31 12:00:00 UTC` from seconds since the epoch (civil-from-days,
/// proleptic Gregorian).
fn utc_date(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(human_size(5), "5 B");
        assert_eq!(human_size(1536), "1.50 KiB (1536 bytes)");
    }
}
