//! `ringbit create`: make a `.torrent` from a file or directory.
//!
//! Layer: edge. Parses the options into [`crate::create::CreateOptions`],
//! shows a progress bar when stderr is a terminal, writes the file
//! atomically (temporary file + rename) and prints the info hash.

use crate::create::{create_from_files, CreateOptions};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `ringbit create`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file or directory to share.
    pub path: PathBuf,
    /// Where to write the .torrent (default: <name>.torrent here).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(short, long)]
    pub force: bool,
    /// Tracker URL. Repeat for more tiers; comma-separated URLs share one tier
    /// (as mktorrent's -a).
    #[arg(short = 't', long = "tracker", value_name = "URL[,URL...]")]
    pub trackers: Vec<String>,
    /// Piece length in bytes (262144, 256K, 1M) or `auto` (1000-2000 pieces).
    #[arg(long, default_value = "auto", value_parser = parse_piece_length)]
    pub piece_length: PieceLength,
    /// Mark the torrent private (BEP 27): no DHT or peer exchange.
    #[arg(long)]
    pub private: bool,
    #[arg(long)]
    pub comment: Option<String>,
    /// Web seed URL (BEP 19); repeatable.
    #[arg(long = "web-seed", value_name = "URL")]
    pub web_seeds: Vec<String>,
    /// Leave out the creation date (reproducible output).
    #[arg(long)]
    pub no_date: bool,
    /// `source` in the info dictionary (private trackers use it).
    #[arg(long)]
    pub source: Option<String>,
    /// `created by` (default: ringbit/<version>).
    #[arg(long)]
    pub created_by: Option<String>,
    /// Hashing threads (default: every core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// `--piece-length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceLength {
    Auto,
    Bytes(u64),
}

fn parse_piece_length(s: &str) -> Result<PieceLength, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(PieceLength::Auto);
    }
    super::units::parse_size(s)
        .map(PieceLength::Bytes)
        .ok_or_else(|| format!("{s:?} is not a piece length (try 262144, 256K, 1M or auto)"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let piece_length = match args.piece_length {
        PieceLength::Auto => None,
        PieceLength::Bytes(n) => Some(crate::create::check_piece_length(n)?),
    };
    let trackers: Vec<Vec<String>> = args
        .trackers
        .iter()
        .map(|t| t.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect())
        .filter(|tier: &Vec<String>| !tier.is_empty())
        .collect();
    let creation_date = if args.no_date {
        None
    } else {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Some(now.as_secs() as i64)
    };
    let options = CreateOptions {
        trackers,
        piece_length,
        private: args.private,
        comment: args.comment,
        web_seeds: args.web_seeds,
        creation_date,
        source: args.source,
        created_by: Some(
            args.created_by.unwrap_or_else(|| format!("ringbit/{}", env!("CARGO_PKG_VERSION"))),
        ),
        threads: args.threads,
    };
    let output = match args.output {
        Some(o) => o,
        None => {
            let canonical =
                args.path.canonicalize().with_context(|| args.path.display().to_string())?;
            let name = canonical.file_name().context("the path has no name")?;
            let mut o = PathBuf::from(name);
            o.as_mut_os_string().push(".torrent");
            o
        }
    };
    if output.exists() && !args.force {
        anyhow::bail!("{} exists (use --force to overwrite)", output.display());
    }

    let bar = if super::stderr_is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "hashing {bar:40} {pos}/{len} pieces, eta {eta}",
            )
            .expect("valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let name = crate::create::torrent_name(&args.path)?;
    let files = crate::create::scan(&args.path)?;
    if let Some(bar) = &bar {
        let total: u64 = files.iter().map(|f| f.length).sum();
        let piece_length = crate::create::effective_piece_length(&options, total)?;
        bar.set_length(total.div_ceil(piece_length as u64));
    }
    let made = create_from_files(&name, files, &options, |_| {
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let made = made?;

    let tmp = output.with_extension("torrent.partial");
    std::fs::write(&tmp, &made.bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &output).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "created {}: {} file(s), {} bytes, {} pieces of {} bytes",
        output.display(),
        made.file_count,
        made.total_length,
        made.piece_count,
        made.piece_length
    );
    println!("info hash: {}", made.info_hash);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_lengths() {
        assert_eq!(parse_piece_length("auto"), Ok(PieceLength::Auto));
        assert_eq!(parse_piece_length("262144"), Ok(PieceLength::Bytes(262144)));
        assert_eq!(parse_piece_length("256K"), Ok(PieceLength::Bytes(262144)));
        assert_eq!(parse_piece_length("256KiB"), Ok(PieceLength::Bytes(262144)));
        assert_eq!(parse_piece_length("1M"), Ok(PieceLength::Bytes(1 << 20)));
        assert!(parse_piece_length("x").is_err());
        assert!(parse_piece_length("").is_err());
        assert!(parse_piece_length("99999999999999999999G").is_err());
    }
}
