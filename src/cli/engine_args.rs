//! Options shared by the commands that run the engine (`download`, `seed`),
//! and their translation into [`SessionOptions`].
//!
//! Layer: edge.

use super::units::parse_size;
use crate::config::Config;
use crate::net::dht::{parse_bootstrap_list, DhtOptions};
use crate::session::SessionOptions;
use crate::storage::{Backend, StoreOptions};
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

    /// Storage backend for piece writes and upload reads.
    #[arg(long, default_value = "pwrite", value_parser = parse_backend)]
    pub backend: Backend,

    /// Connected peers per torrent at most.
    #[arg(long, default_value_t = Config::default().max_peers_per_torrent)]
    pub max_peers: usize,

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
}

fn parse_backend(s: &str) -> Result<Backend, String> {
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
        config.upload_slots = self.upload_slots;
        config.upload_rate_limit_bytes_per_s = self.upload_limit;
        config.download_rate_limit_bytes_per_s = self.download_limit;
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
        StoreOptions { backend: self.backend, ..StoreOptions::default() }
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
}
