//! How the process's file descriptors are shared out: peers, data files and
//! outgoing connects, under `RLIMIT_NOFILE` with a reserve for everything
//! else.
//!
//! Layer: pure (numbers in, numbers out). The session reads the limit
//! (raising the soft limit to the hard one first), derives an [`FdBudget`]
//! from it and the configured caps, logs it, lowers the config's peer and
//! half-open caps to it and gives the data-file cap to storage
//! ([`crate::storage::open_files`]); `/metrics` shows it.
//!
//! Split of what is left after the reserve: a quarter for data files (at
//! most [`DATA_FILES_MAX`]), an eighth for connects in flight (at most the
//! configured cap), the rest for connected peers (at most the configured
//! cap). Invariant: `reserve + peers + half_open + data_files <= nofile`
//! whenever `nofile >= FD_MIN`.

use crate::config::Config;

/// Descriptors kept for everything that is not a peer, a connect or a data
/// file: stdio, logs, the listener sockets, each shard's ring or epoll and
/// eventfds, the API server and its clients, tracker and DHT sockets,
/// resume and registry files being written.
pub const FD_RESERVE: u64 = 64;

/// Data files open at once at most, however high the limit (a store keeps
/// a file open only while it is used).
pub const DATA_FILES_MAX: usize = 16_384;

/// The smallest limit the split makes sense for; below it every share is 1
/// and the reserve is what is left.
pub const FD_MIN: u64 = 32;

/// The derived shares (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` the process runs with.
    pub nofile: u64,
    /// Descriptors kept for the rest of the process.
    pub reserve: u64,
    /// Connected peers at most (the lower of this and the configured cap).
    pub peers: usize,
    /// Outgoing connects in flight at most.
    pub half_open: usize,
    /// Data files open at most.
    pub data_files: usize,
}

impl FdBudget {
    /// Shares `nofile` descriptors, never granting more than `config` asks.
    pub fn derive(nofile: u64, config: &Config) -> FdBudget {
        let reserve = FD_RESERVE.min(nofile / 2);
        let usable = nofile.saturating_sub(reserve);
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let data_files = to_usize(usable / 4).clamp(1, DATA_FILES_MAX);
        let half_open = to_usize(usable / 8).clamp(1, config.max_half_open_total.max(1));
        let rest = usable.saturating_sub((data_files + half_open) as u64);
        let peers = to_usize(rest).clamp(1, config.max_peers_total.max(1));
        FdBudget { nofile, reserve, peers, half_open, data_files }
    }

    /// Lowers `config`'s caps to this budget (never raises them).
    pub fn apply(&self, config: &mut Config) {
        config.max_peers_total = config.max_peers_total.min(self.peers);
        config.max_half_open_total = config.max_half_open_total.min(self.half_open);
        config.max_half_open_per_shard = config.max_half_open_per_shard.min(self.half_open);
        config.max_pending_handshakes = config.max_pending_handshakes.min(self.peers.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_high_limit_keeps_the_configured_caps() {
        let config = Config::default();
        let b = FdBudget::derive(1 << 20, &config);
        assert_eq!(b.reserve, FD_RESERVE);
        assert_eq!(b.peers, config.max_peers_total);
        assert_eq!(b.half_open, config.max_half_open_total);
        assert_eq!(b.data_files, DATA_FILES_MAX);
    }

    #[test]
    fn the_default_soft_limit_is_shared_out_within_it() {
        let config = Config::default();
        let b = FdBudget::derive(1024, &config);
        assert_eq!((b.reserve, b.data_files, b.half_open, b.peers), (64, 240, 120, 600));
        assert!(b.reserve + (b.peers + b.half_open + b.data_files) as u64 <= 1024);
        let mut capped = config.clone();
        b.apply(&mut capped);
        assert_eq!(capped.max_peers_total, 600);
        assert_eq!(capped.max_half_open_total, 120);
        assert_eq!(capped.max_half_open_per_shard, 64, "already lower");
    }

    #[test]
    fn every_limit_from_the_minimum_up_fits() {
        let config = Config::default();
        for nofile in FD_MIN..4096 {
            let b = FdBudget::derive(nofile, &config);
            let used = b.reserve + (b.peers + b.half_open + b.data_files) as u64;
            assert!(used <= nofile, "{nofile}: {b:?}");
            assert!(b.peers >= 1 && b.half_open >= 1 && b.data_files >= 1);
        }
    }
}
