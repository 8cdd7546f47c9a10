//! `ringbit daemon --config FILE`: the seed box. Loads the TOML config,
//! starts the [`Daemon`], its control API and watch directory, and runs until
//! SIGTERM or SIGINT, then shuts down cleanly (trackers hear `stopped`,
//! storage is flushed, changed resume state is written) and exits 0.
//!
//! Layer: edge.

use crate::daemon::config::DaemonConfig;
use crate::daemon::{api, watch, Daemon};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the main thread looks at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// An example config, printed by `--example-config`.
pub const EXAMPLE_CONFIG: &str = r#"# ringbit daemon configuration (TOML). Relative paths are relative to this file.
state_dir = "/var/lib/ringbit"        # registry of torrents and resume state
download_dir = "/srv/torrents"        # where new torrents' data goes
# watch_dir = "/srv/watch"            # .torrent files here are added; removing one stops it
# watch_interval_secs = 2
listen_port = 6881                    # peers connect here
# bind = ["0.0.0.0", "::"]
# shards = 4                          # default: one per core
api_listen = "127.0.0.1:9091"         # HTTP control API and /metrics (no auth: keep it local)
trackers = true
dht = true                            # mainline DHT (never for private torrents)
# dht_bootstrap = ["dht.libtorrent.org:25401", "dht.transmissionbt.com:6881"]
# dht_read_only = false               # look up peers, never answer or announce
# reannounce_secs = 1800              # announce at least this often
# backend = "pwrite"                  # pwrite, mmap or uring
# resume_save_interval_secs = 300

[limits]
# max_torrents = 100000
# max_peers_per_torrent = 80
# max_peers_total = 2000
# upload_slots = 8
# upload_rate = "50M"                 # bytes per second for the whole process; 0 = unlimited
# download_rate = 0
# file_idle_close_secs = 60           # pwrite backend: close a data file unused this long
"#;

/// Arguments of `ringbit daemon`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The TOML config file (see --example-config and docs/daemon.md).
    #[arg(long, value_name = "FILE", required_unless_present = "example_config")]
    pub config: Option<PathBuf>,

    /// Print an example config file and exit.
    #[arg(long)]
    pub example_config: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.example_config {
        print!("{EXAMPLE_CONFIG}");
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.config.expect("clap requires --config");
    let config = DaemonConfig::load(&path)?;
    let stop = super::engine_args::stop_flag()?;
    let daemon = Daemon::start(config.clone()).context("cannot start the daemon")?;
    let api_addr = match api::start(daemon.clone()) {
        Ok(addr) => addr,
        Err(error) => {
            daemon.shutdown();
            return Err(error.into());
        }
    };
    // Scripts and tests find an ephemeral API port here.
    let addr_file = config.state_dir.join("api.addr");
    if let Err(error) = std::fs::write(&addr_file, format!("{api_addr}\n")) {
        tracing::warn!(path = %addr_file.display(), %error, "cannot write the API address");
    }
    if let Some(dir) = &config.watch_dir {
        watch::start(daemon.clone(), dir.clone())?;
    }
    eprintln!(
        "ringbit: daemon listening for peers on port {}, control API on http://{api_addr}",
        daemon.listen_port()
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL_INTERVAL);
    }
    eprintln!("ringbit: stopping");
    daemon.shutdown();
    eprintln!("ringbit: daemon stopped");
    Ok(ExitCode::SUCCESS)
}
