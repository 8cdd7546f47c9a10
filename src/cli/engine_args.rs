//! Options shared by the commands that run the engine (`download`, `seed`),
//! and their translation into [`SessionOptions`].
//!
//! Layer: edge.

use crate::config::Config;
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
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse()
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
        let mut options =
            SessionOptions { config, trackers: !self.no_trackers, ..SessionOptions::default() };
        if !self.bind.is_empty() {
            options.listen_ips = self.bind.clone();
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
