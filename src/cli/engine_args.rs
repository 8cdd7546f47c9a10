//! Options shared by the commands that run the engine (`download`, `seed`),
//! and their translation into [`SessionOptions`].
//!
//! Layer: edge.

use super::units::parse_size;
use crate::config::{Config, EncryptionPolicy, IoDriverChoice};
use crate::net::dht::{parse_bootstrap_list, DhtOptions};
use crate::session::SessionOptions;
use crate::storage::{Allocation, Backend, StoreOptions};
use anyhow::Context;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Engine options.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// TCP port to accept peers on (0 picks a free one).
    #[arg(long, default_value_t = 6881)]
    pub port: u16,

    /// IP address to listen on (repeatable; default: every IPv4 and IPv6 address).
    #[arg(long, value_name = "IP")]
    pub bind: Vec<IpAddr>,

    /// Dial this peer directly (repeatable), besides those the trackers give.
    #[arg(long, value_name = "HOST:PORT")]
    pub peer: Vec<String>,

    /// Do not announce to the torrent's trackers (use only --peer and incoming peers).
    #[arg(long)]
    pub no_trackers: bool,

    /// Do not use the mainline DHT (BEP 5) to find peers or be found.
    #[arg(long)]
    pub no_dht: bool,

    /// DHT router or node to bootstrap from (repeatable; default:
    /// dht.libtorrent.org:25401 and dht.transmissionbt.com:6881, or the
    /// comma-separated list in RINGBIT_DHT_BOOTSTRAP; `none` for no router).
    #[arg(long, value_name = "HOST:PORT")]
    pub dht_bootstrap: Vec<String>,

    /// Use the DHT read-only (BEP 43): look peers up, never answer queries or
    /// announce ourselves.
    #[arg(long)]
    pub dht_read_only: bool,

    /// Shard threads, one io_uring runtime each (default: one per core).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    /// I/O driver of the shards: `auto` uses io_uring where the kernel allows it
    /// and falls back to epoll where it is refused (Docker's default seccomp
    /// profile, kernel.io_uring_disabled), saying why; `uring` fails instead of
    /// falling back; `epoll` always uses epoll.
    #[arg(
        long,
        value_name = "DRIVER",
        env = "RINGBIT_IO_DRIVER",
        default_value = "auto",
        value_parser = parse_io_driver
    )]
    pub io_driver: IoDriverChoice,

    /// Storage backend for piece writes and upload reads (uring: every file
    /// operation on the shard's io_uring; pwrite, mmap: synchronous).
    #[arg(long, default_value = "uring", value_parser = parse_backend)]
    pub backend: Backend,

    /// How data files are reserved: `full` (fallocate the whole file, so a
    /// torrent that does not fit fails at start) or `sparse` (set the length
    /// only; for filesystems without fallocate such as NFSv3 and some FUSE).
    #[arg(long, default_value = "full", value_parser = parse_allocation)]
    pub allocation: Allocation,
    /// Write pieces through the page cache instead of with O_DIRECT (uring
    /// backend; O_DIRECT is also turned off by itself where the filesystem
    /// refuses it, such as tmpfs before Linux 6.6).
    #[arg(long)]
    pub no_direct_io: bool,

    /// Connected peers per torrent at most.
    #[arg(long, default_value_t = Config::default().max_peers_per_torrent)]
    pub max_peers: usize,

    /// Give up on an outgoing connect after this many milliseconds (its
    /// socket is closed at once).
    #[arg(long, value_name = "MS", default_value_t = Config::default().connect_timeout_ms)]
    pub connect_timeout_ms: u64,

    /// Upload slots (peers unchoked at once) per torrent.
    #[arg(long, default_value_t = Config::default().upload_slots)]
    pub upload_slots: usize,

    /// Upload limit for the whole process, in bytes per second (`512K`, `10M`;
    /// 0 = unlimited). Counts block data; all torrents share it.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate)]
    pub upload_limit: u64,

    /// Download limit for the whole process, in bytes per second (`512K`,
    /// `10M`; 0 = unlimited). Counts block data; all torrents share it.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate)]
    pub download_limit: u64,

    /// Message stream encryption (MSE/PE): `prefer` accepts both and tries it
    /// first when dialling, falling back to plaintext; `require` speaks only
    /// MSE with an RC4 payload; `disable` speaks only plaintext.
    #[arg(long, value_name = "POLICY", default_value = "prefer")]
    pub encryption: EncryptionPolicy,

    /// uTP (BEP 29) on the peer port's UDP socket: `prefer-tcp` accepts uTP
    /// and dials TCP first, falling back to uTP; `on` dials uTP first,
    /// falling back to TCP; `only` dials uTP alone (tests, benchmarks);
    /// `off` opens no UDP socket for it.
    #[arg(long, value_name = "POLICY", default_value = "prefer-tcp")]
    pub utp: crate::config::UtpPolicy,
}

pub(crate) fn parse_io_driver(s: &str) -> Result<IoDriverChoice, String> {
    s.parse()
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse()
}

fn parse_allocation(s: &str) -> Result<Allocation, String> {
    s.parse()
}

/// A rate in bytes per second, written as a size: `2M` is 2 MiB/s.
fn parse_rate(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| {
        format!("bad rate {s:?}: expected bytes per second such as 512K, 10M or 0 (unlimited)")
    })
}

impl EngineArgs {
    pub fn session_options(&self) -> anyhow::Result<SessionOptions> {
        let mut config = Config { listen_port: self.port, ..Config::default() };
        if let Some(shards) = self.shards {
            anyhow::ensure!(shards >= 1, "--shards must be at least 1");
            config.shards = shards;
        }
        anyhow::ensure!(self.max_peers >= 1, "--max-peers must be at least 1");
        config.max_peers_per_torrent = self.max_peers;
        config.io_driver = self.io_driver;
        config.upload_slots = self.upload_slots;
        anyhow::ensure!(self.connect_timeout_ms >= 1, "--connect-timeout-ms must be at least 1");
        config.connect_timeout_ms = self.connect_timeout_ms;
        config.upload_rate_limit_bytes_per_s = self.upload_limit;
        config.download_rate_limit_bytes_per_s = self.download_limit;
        config.encryption = self.encryption;
        config.utp = self.utp;
        let mut options =
            SessionOptions { config, trackers: !self.no_trackers, ..SessionOptions::default() };
        if !self.bind.is_empty() {
            options.listen_ips = self.bind.clone();
        }
        if !self.no_dht {
            let mut dht = DhtOptions::default();
            if !self.dht_bootstrap.is_empty() {
                dht.bootstrap =
                    self.dht_bootstrap.iter().flat_map(|s| parse_bootstrap_list(s)).collect();
            }
            dht.core.read_only = self.dht_read_only;
            options.dht = Some(dht);
        }
        Ok(options)
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            backend: self.backend,
            allocation: self.allocation,
            direct_io: !self.no_direct_io,
            ..StoreOptions::default()
        }
    }

    /// `--peer` addresses, resolved.
    pub fn peers(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let mut out = Vec::new();
        for peer in &self.peer {
            let addrs = peer
                .to_socket_addrs()
                .with_context(|| format!("bad --peer {peer:?} (expected HOST:PORT)"))?;
            out.extend(addrs);
        }
        Ok(out)
    }
}

/// A flag set by SIGINT or SIGTERM, so the command can stop cleanly.
pub fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone())
            .context("cannot install the signal handler")?;
    }
    Ok(flag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[test]
    fn rate_limits_parse_as_sizes_per_second() {
        let cli =
            Cli::try_parse_from(["x", "--upload-limit", "2M", "--download-limit", "512K"]).unwrap();
        let config = cli.engine.session_options().unwrap().config;
        assert_eq!(config.upload_rate_limit_bytes_per_s, 2 << 20);
        assert_eq!(config.download_rate_limit_bytes_per_s, 512 << 10);
        let unlimited = Cli::try_parse_from(["x"]).unwrap().engine.session_options().unwrap();
        assert_eq!(unlimited.config.upload_rate_limit_bytes_per_s, 0);
        assert_eq!(unlimited.config.download_rate_limit_bytes_per_s, 0);
        assert!(Cli::try_parse_from(["x", "--upload-limit", "fast"]).is_err());
    }

    #[test]
    fn allocation_is_full_unless_asked() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.engine.store_options().allocation, Allocation::Full);
        let cli = Cli::try_parse_from(["x", "--allocation", "sparse"]).unwrap();
        assert_eq!(cli.engine.store_options().allocation, Allocation::Sparse);
        assert!(Cli::try_parse_from(["x", "--allocation", "lazy"]).is_err());
    }

    #[test]
    fn encryption_policy_defaults_to_prefer() {
        let config = Cli::try_parse_from(["x"]).unwrap().engine.session_options().unwrap().config;
        assert_eq!(config.encryption, EncryptionPolicy::Prefer);
        let cli = Cli::try_parse_from(["x", "--encryption", "require"]).unwrap();
        assert_eq!(
            cli.engine.session_options().unwrap().config.encryption,
            EncryptionPolicy::Require
        );
        assert!(Cli::try_parse_from(["x", "--encryption", "maybe"]).is_err());
        let config = Cli::try_parse_from(["x"]).unwrap().engine.session_options().unwrap().config;
        assert_eq!(config.utp, crate::config::UtpPolicy::PreferTcp);
        let cli = Cli::try_parse_from(["x", "--utp", "only"]).unwrap();
        assert_eq!(
            cli.engine.session_options().unwrap().config.utp,
            crate::config::UtpPolicy::Only
        );
        assert!(Cli::try_parse_from(["x", "--utp", "maybe"]).is_err());
    }
}
