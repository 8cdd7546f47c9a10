//! Command-line edge: clap definitions and dispatch. No clap type leaves `src/cli`.
//!
//! Layer: edge. The only place (with `main.rs`) that uses `anyhow`; every
//! command turns its arguments into plain config and calls the library.
//!
//! Exit codes: 0 success, 1 failure (bad input, I/O error, incomplete data),
//! 2 usage error (clap's own).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod announce;
mod bench;
mod create;
mod daemon;
mod download;
mod engine_args;
mod fetch;
mod info;
mod progress;
mod seed;
mod units;
mod verify;

/// ringbit: a thread-per-core io_uring BitTorrent client for Linux servers.
#[derive(Parser, Debug)]
#[command(name = "ringbit", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show what a .torrent file or magnet link describes.
    Info(info::Args),
    /// Make a .torrent from a file or directory.
    Create(create::Args),
    /// Recheck downloaded data against a .torrent.
    Verify(verify::Args),
    /// Announce once to every tracker of a torrent and print each result.
    Announce(announce::Args),
    /// Download a torrent, verifying every piece; exit 0 when complete.
    Download(download::Args),
    /// Seed a generated payload from one ringbit process to others over
    /// loopback and report throughput, CPU and memory (no internet needed).
    Bench(bench::Args),
    /// Serve a torrent's verified data to leechers until Ctrl-C.
    Seed(seed::Args),
    /// Run the seed box: many torrents, a watch directory, an HTTP control
    /// API and Prometheus metrics, configured by a TOML file.
    Daemon(daemon::Args),
}

/// Parses the command line, sets up logging and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // Every command, before it opens any file (a recheck opens many): the
    // soft fd limit goes up to the hard one; the session shares it out.
    crate::session::raise_open_file_limit();
    let result = match cli.command {
        Command::Info(args) => info::run(args),
        Command::Create(args) => create::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Announce(args) => announce::run(args),
        Command::Download(args) => download::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Seed(args) => seed::run(args),
        Command::Daemon(args) => daemon::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ringbit: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// True when stderr is a terminal: progress bars only then.
pub(crate) fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
