//! Runtime configuration of the engine: every limit and timeout the drivers
//! use, units last, each with its documented default.
//!
//! Layer: shared plain data (no I/O). The CLI and the daemon's TOML file fill a
//! [`Config`]; nothing below them reads arguments or the environment. The
//! listen addresses are [`crate::session::SessionOptions::listen_ips`].
//!
//! Every field is read: the session turns the peer timers into each
//! torrent's [`PeerConfig`](crate::peer::PeerConfig) and the choke intervals
//! into its choker; [`Config::validate`] refuses values that would make the
//! engine misbehave (a zero timer, a zero bound).

pub use crate::mse::EncryptionPolicy;
pub use crate::utp::UtpPolicy;
use std::path::PathBuf;

/// Engine-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of shard threads (default: one per core).
    pub shards: usize,
    /// Which I/O driver the shards run (default `auto`: io_uring where the
    /// kernel allows it, else epoll).
    pub io_driver: IoDriverChoice,
    /// Pin shard `i` to core `i` (default true).
    pub pin_shards: bool,
    /// TCP port to listen on for peers; 0 picks a free one (default 6881).
    pub listen_port: u16,
    /// Where resume state lives (default `~/.local/state/ringbit`).
    pub state_dir: Option<PathBuf>,
    /// Connected peers per torrent at most (default 80).
    pub max_peers_per_torrent: usize,
    /// Connected peers per process at most (default 2000).
    pub max_peers_total: usize,
    /// Handshakes being read at once by the listener at most (default 256).
    pub max_pending_handshakes: usize,
    /// Handshakes being read at once from one IP at most (default 8): one
    /// host holding idle sockets cannot shut everyone else out.
    pub max_pending_handshakes_per_ip: usize,
    /// Outgoing connects in flight per shard at most (default 64).
    pub max_half_open_per_shard: usize,
    /// Outgoing connects in flight in the whole process at most (default 128).
    pub max_half_open_total: usize,
    /// Peer addresses remembered per torrent for dialing at most (default
    /// 2000); failed and oldest ones are evicted first.
    pub max_known_peers_per_torrent: usize,
    /// How long an IP banned for bad data stays banned (default 1 h).
    pub ban_duration_ms: u64,
    /// Give up on an outgoing connect after this long (default 10 s).
    pub connect_timeout_ms: u64,
    /// Give up on a handshake after this long (default 10 s).
    pub handshake_timeout_ms: u64,
    /// A requested block not received after this long (since it was sent or
    /// since the peer's last block, whichever is later) may be requested from
    /// another peer, and the peer counts as snubbed (default 20 s).
    pub request_timeout_ms: u64,
    /// Send a keep-alive after this long without sending (default 90 s).
    pub keepalive_interval_ms: u64,
    /// Drop a peer that sent nothing for this long (default 180 s).
    pub peer_idle_timeout_ms: u64,
    /// Bytes read from a peer socket per read (default 256 KiB; large reads
    /// move ~4x more per syscall than 16 KiB ones on io_uring).
    pub read_buffer_bytes: usize,
    /// Upload slots per torrent (default 8).
    pub upload_slots: usize,
    /// Re-run the choker this often (default 10 s).
    pub choke_interval_ms: u64,
    /// Rotate the optimistic unchoke this often (default 30 s).
    pub optimistic_unchoke_interval_ms: u64,
    /// Process-wide download limit in bytes/s, 0 = unlimited.
    pub download_rate_limit_bytes_per_s: u64,
    /// Process-wide upload limit in bytes/s, 0 = unlimited.
    pub upload_rate_limit_bytes_per_s: u64,
    /// MSE/PE policy (default `prefer`: both accepted, MSE tried first
    /// outgoing with a plaintext retry).
    pub encryption: EncryptionPolicy,
    /// uTP policy (default `prefer-tcp`: incoming uTP accepted on the peer
    /// port, outgoing TCP first with a uTP fallback).
    pub utp: UtpPolicy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            shards: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            io_driver: IoDriverChoice::Auto,
            pin_shards: true,
            listen_port: 6881,
            state_dir: None,
            max_peers_per_torrent: 80,
            max_peers_total: 2000,
            max_pending_handshakes: 256,
            max_pending_handshakes_per_ip: 8,
            max_half_open_per_shard: 64,
            max_half_open_total: 128,
            max_known_peers_per_torrent: 2000,
            ban_duration_ms: 3_600_000,
            connect_timeout_ms: 10_000,
            handshake_timeout_ms: 10_000,
            request_timeout_ms: 20_000,
            keepalive_interval_ms: 90_000,
            peer_idle_timeout_ms: 180_000,
            read_buffer_bytes: 256 * 1024,
            upload_slots: 8,
            choke_interval_ms: 10_000,
            optimistic_unchoke_interval_ms: 30_000,
            download_rate_limit_bytes_per_s: 0,
            upload_rate_limit_bytes_per_s: 0,
            encryption: EncryptionPolicy::Prefer,
            utp: UtpPolicy::PreferTcp,
        }
    }
}

/// A [`Config`] value the engine cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {field} must be at least {min} (got {value})")]
pub struct ConfigError {
    pub field: &'static str,
    pub value: u64,
    pub min: u64,
}

impl Config {
    /// Checks every timer and bound that must not be zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, u64, u64); 14] = [
            ("shards", self.shards as u64, 1),
            ("max_peers_per_torrent", self.max_peers_per_torrent as u64, 1),
            ("max_peers_total", self.max_peers_total as u64, 1),
            ("max_pending_handshakes", self.max_pending_handshakes as u64, 1),
            ("max_pending_handshakes_per_ip", self.max_pending_handshakes_per_ip as u64, 1),
            ("max_half_open_per_shard", self.max_half_open_per_shard as u64, 1),
            ("max_half_open_total", self.max_half_open_total as u64, 1),
            ("connect_timeout_ms", self.connect_timeout_ms, 1),
            ("handshake_timeout_ms", self.handshake_timeout_ms, 1),
            ("request_timeout_ms", self.request_timeout_ms, 1),
            ("keepalive_interval_ms", self.keepalive_interval_ms, 1),
            ("peer_idle_timeout_ms", self.peer_idle_timeout_ms, 1),
            ("choke_interval_ms", self.choke_interval_ms, 1),
            ("optimistic_unchoke_interval_ms", self.optimistic_unchoke_interval_ms, 1),
        ];
        for (field, value, min) in checks {
            if value < min {
                return Err(ConfigError { field, value, min });
            }
        }
        Ok(())
    }
}

/// `262144`, `256K`, `256KiB`, `1M`, `1G` (binary multiples; case-insensitive).
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let trimmed = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, multiplier) = match trimmed.as_bytes().last() {
        Some(b'k') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some(b'm') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some(b'g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        Some(b't') => (&trimmed[..trimmed.len() - 1], 1 << 40),
        _ => (trimmed, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// What the operator asked for (`--io-driver`, `io_driver` in the daemon
/// config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoDriverChoice {
    /// io_uring when the kernel allows it, else epoll (default).
    #[default]
    Auto,
    /// io_uring or fail with the reason it is unavailable.
    Uring,
    /// epoll even where io_uring works.
    Epoll,
}

impl std::str::FromStr for IoDriverChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<IoDriverChoice, String> {
        match s {
            "auto" => Ok(IoDriverChoice::Auto),
            "uring" | "io_uring" => Ok(IoDriverChoice::Uring),
            "epoll" => Ok(IoDriverChoice::Epoll),
            other => Err(format!("unknown I/O driver {other:?} (auto, uring, epoll)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("262144"), Some(262144));
        assert_eq!(parse_size("256K"), Some(256 << 10));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
