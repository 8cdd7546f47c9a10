//! `ringbit daemon --config FILE`: the seed box. Loads the TOML config,
//! starts the [`Daemon`], its control API and watch directory, and runs until
//! SIGTERM or SIGINT, then shuts down cleanly (trackers hear `stopped`,
//! storage is flushed, changed resume state is written) and exits 0.
//!
//! Layer: edge.

use crate::daemon::auth::{self, PasswordHash};
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
api_listen = "127.0.0.1:9091"         # HTTP control API and /metrics
# download_roots = ["/srv/torrents"]  # where API clients may put data (default: download_dir)
trackers = true
dht = true                            # mainline DHT (never for private torrents)
# dht_bootstrap = ["dht.libtorrent.org:25401", "dht.transmissionbt.com:6881"]
# dht_read_only = false               # look up peers, never answer or announce
# reannounce_secs = 1800              # announce at least this often
# backend = "pwrite"                  # pwrite, mmap or uring
# io_driver = "auto"                  # auto (io_uring, else epoll), uring, epoll
# resume_save_interval_secs = 300

[limits]
# max_torrents = 100000
# max_peers_per_torrent = 80
# max_peers_total = 2000
# upload_slots = 8
# upload_rate = "50M"                 # bytes per second for the whole process; 0 = unlimited
# download_rate = 0
# file_idle_close_secs = 60           # pwrite backend: close a data file unused this long
# piece_buffer_memory_per_shard = "256M" # pieces being received/hashed/written, per shard
# send_buffer_memory_per_shard = "64M"   # block data on its way to peers, per shard

[api]
# Every request needs `Authorization: Bearer <token>` (the token is created
# in <state_dir>/api.token, mode 0600) or a login session cookie.
# username = "admin"                  # enables POST /api/v1/auth/login
# password_hash = "pbkdf2-sha256$..." # from `ringbit daemon --hash-password`
# session_ttl_secs = 86400
# hosts = ["seedbox.example"]         # Host names accepted besides IP addresses and localhost
# origins = ["https://seedbox.example"] # web UIs allowed to change state
# metrics_public = false              # true: /metrics without credentials
# header_read_timeout_secs = 10       # also the idle keep-alive timeout
# request_timeout_secs = 120
# max_connections = 256
"#;

/// Arguments of `ringbit daemon`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The TOML config file (see --example-config and docs/daemon.md).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["example_config", "hash_password"])]
    pub config: Option<PathBuf>,

    /// I/O driver (`auto`, `uring`, `epoll`); overrides the config's `io_driver`
    /// (see `ringbit download --help`).
    #[arg(
        long,
        value_name = "DRIVER",
        env = "RINGBIT_IO_DRIVER",
        value_parser = super::engine_args::parse_io_driver
    )]
    pub io_driver: Option<crate::config::IoDriverChoice>,

    /// Print an example config file and exit.
    #[arg(long)]
    pub example_config: bool,

    /// Read a password from stdin, print its `password_hash` for the
    /// config's `[api]` section, and exit.
    #[arg(long, conflicts_with = "example_config")]
    pub hash_password: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.example_config {
        print!("{EXAMPLE_CONFIG}");
        return Ok(ExitCode::SUCCESS);
    }
    if args.hash_password {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(!password.is_empty(), "empty password");
        let hash = PasswordHash::new(password, auth::PASSWORD_ROUNDS_DEFAULT);
        println!("{hash}");
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.config.expect("clap requires --config");
    let mut config = DaemonConfig::load(&path)?;
    if let Some(io_driver) = args.io_driver {
        config.engine.io_driver = io_driver;
    }
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
        "ringbit: daemon listening for peers on port {}, control API on http://{api_addr} \
         (token in {})",
        daemon.listen_port(),
        config.state_dir.join(auth::TOKEN_FILE).display()
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL_INTERVAL);
    }
    eprintln!("ringbit: stopping");
    daemon.shutdown();
    eprintln!("ringbit: daemon stopped");
    Ok(ExitCode::SUCCESS)
}
