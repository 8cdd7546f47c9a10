//! The I/O driver seam: which runtime a shard thread runs, io_uring or epoll.
//!
//! Layer: driver. Two implementations of the same shape sit behind
//! [`IoDriver`]:
//! * **io_uring** (the fast path): a `tokio_uring` runtime per shard; peer
//!   sockets and the `uring` storage backend submit to its ring;
//! * **epoll**: a plain tokio current-thread runtime with a `LocalSet` per
//!   shard, for places that refuse io_uring (Docker's default seccomp profile,
//!   `kernel.io_uring_disabled`, gVisor). Peer sockets are tokio's readiness
//!   based `TcpStream`; file I/O that would block runs on tokio's bounded
//!   blocking pool.
//!
//! Everything else is the same on both: tasks are `spawn_local`ed
//! ([`spawn`]), timers are tokio's, and the engine and the sans-IO core do not
//! know which driver carries them. The seam is this file plus the two
//! variants of [`PeerStream`](crate::net::peer_io::PeerStream).
//!
//! Invariants:
//! * the driver is chosen once per process, before any shard starts
//!   ([`select`]), and every shard runs the same one;
//! * `tokio_uring` is named here only in the [`ShardRuntime::Uring`] variant.

use super::probe::{probe_io_uring, UringUnavailable};
pub use crate::config::IoDriverChoice;
use std::future::Future;

/// Threads of the blocking pool of each epoll shard runtime, at most: file
/// I/O of one shard never needs more than a few at once (piece writes are
/// bounded by the piece buffers, upload reads by the per-peer reads in
/// flight), and a bound keeps a stalled disk from spawning threads without
/// limit.
pub const EPOLL_BLOCKING_THREADS_MAX: usize = 8;

/// The driver a shard runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoDriver {
    /// One `tokio_uring` runtime per shard: sockets and files through io_uring.
    Uring,
    /// One tokio current-thread runtime (epoll) per shard; blocking file I/O
    /// on a bounded pool.
    Epoll,
}

impl IoDriver {
    pub fn name(self) -> &'static str {
        match self {
            IoDriver::Uring => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

impl std::fmt::Display for IoDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The driver chosen for this process and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverSelection {
    pub driver: IoDriver,
    /// Why, in words (logged at start, shown in the daemon's status).
    pub reason: String,
}

/// Chooses the driver: probes io_uring unless epoll was asked for. `Auto`
/// falls back to epoll when the kernel refuses io_uring, with the probe's
/// explanation as the reason; `Uring` fails with it.
pub fn select(choice: IoDriverChoice) -> Result<DriverSelection, UringUnavailable> {
    match choice {
        IoDriverChoice::Epoll => Ok(DriverSelection {
            driver: IoDriver::Epoll,
            reason: "epoll was asked for (--io-driver epoll)".to_string(),
        }),
        IoDriverChoice::Uring => probe_io_uring().map(|()| DriverSelection {
            driver: IoDriver::Uring,
            reason: "io_uring was asked for and works".to_string(),
        }),
        IoDriverChoice::Auto => Ok(match probe_io_uring() {
            Ok(()) => DriverSelection {
                driver: IoDriver::Uring,
                reason: "io_uring works on this kernel".to_string(),
            },
            Err(unavailable) => DriverSelection {
                driver: IoDriver::Epoll,
                reason: format!("io_uring is unavailable: {}", unavailable.cause),
            },
        }),
    }
}

/// One shard's runtime.
pub enum ShardRuntime {
    Uring(tokio_uring::Runtime),
    Epoll(tokio::runtime::Runtime, tokio::task::LocalSet),
}

impl ShardRuntime {
    /// Creates the runtime of `driver` on the calling thread.
    pub fn new(driver: IoDriver) -> std::io::Result<ShardRuntime> {
        match driver {
            IoDriver::Uring => {
                Ok(ShardRuntime::Uring(tokio_uring::Runtime::new(&tokio_uring::builder())?))
            }
            IoDriver::Epoll => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(EPOLL_BLOCKING_THREADS_MAX)
                    .build()?;
                Ok(ShardRuntime::Epoll(runtime, tokio::task::LocalSet::new()))
            }
        }
    }

    pub fn driver(&self) -> IoDriver {
        match self {
            ShardRuntime::Uring(_) => IoDriver::Uring,
            ShardRuntime::Epoll(..) => IoDriver::Epoll,
        }
    }

    /// Runs `future` to completion on this thread, with [`spawn`] available.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        match self {
            ShardRuntime::Uring(runtime) => runtime.block_on(future),
            ShardRuntime::Epoll(runtime, local) => local.block_on(runtime, future),
        }
    }
}

/// Runs `future` on a fresh runtime of `driver` on the calling thread (tests,
/// benches, one-shot tools).
pub fn block_on<F: Future>(driver: IoDriver, future: F) -> std::io::Result<F::Output> {
    Ok(ShardRuntime::new(driver)?.block_on(future))
}

/// Spawns a task on the current shard's runtime (either driver).
pub fn spawn<F: Future + 'static>(future: F) -> tokio::task::JoinHandle<F::Output> {
    tokio::task::spawn_local(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_name_the_valid_ones() {
        assert_eq!("auto".parse::<IoDriverChoice>(), Ok(IoDriverChoice::Auto));
        assert_eq!("uring".parse::<IoDriverChoice>(), Ok(IoDriverChoice::Uring));
        assert_eq!("io_uring".parse::<IoDriverChoice>(), Ok(IoDriverChoice::Uring));
        assert_eq!("epoll".parse::<IoDriverChoice>(), Ok(IoDriverChoice::Epoll));
        let err = "kqueue".parse::<IoDriverChoice>().unwrap_err();
        assert!(err.contains("auto, uring, epoll"), "{err}");
    }

    #[test]
    fn epoll_is_chosen_when_asked_and_auto_takes_io_uring_where_it_works() {
        assert_eq!(select(IoDriverChoice::Epoll).unwrap().driver, IoDriver::Epoll);
        // The test machines run Linux 6.x with io_uring enabled.
        assert_eq!(select(IoDriverChoice::Auto).unwrap().driver, IoDriver::Uring);
        assert_eq!(select(IoDriverChoice::Uring).unwrap().driver, IoDriver::Uring);
    }

    #[test]
    fn both_runtimes_run_local_tasks_and_timers() {
        for driver in [IoDriver::Uring, IoDriver::Epoll] {
            let got = block_on(driver, async {
                let shared = std::rc::Rc::new(std::cell::Cell::new(1));
                let inner = shared.clone();
                spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    inner.set(inner.get() + 41);
                })
                .await
                .unwrap();
                shared.get()
            })
            .unwrap();
            assert_eq!(got, 42, "{driver}");
        }
    }
}
