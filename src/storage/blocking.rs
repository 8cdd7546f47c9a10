//! A small bounded pool of threads for the few file operations io_uring (as
//! tokio-uring 0.5 exposes it) cannot do, so a shard never makes them itself.
//!
//! Layer: driver. Which operations come here, and why:
//! * `ftruncate` (sizing a sparse file): `IORING_OP_FTRUNCATE` exists only since Linux 6.9 and tokio-uring
//!   0.5 has no call for it;
//! * `posix_fadvise(WILLNEED)` readahead hints for upload reads:
//!   `IORING_OP_FADVISE` exists (5.6) but tokio-uring 0.5 has no call for it;
//! * opening a whole store of the pwrite or mmap backend (those backends open,
//!   allocate and map synchronously).
//!
//! Everything else on the data path (open, statx, mkdir, fallocate, read,
//! write, fdatasync, close) goes through the shard's ring (see [`super::uring`]).
//!
//! Invariants:
//! * at most [`BLOCKING_QUEUE_DEPTH`] jobs are queued or running at once: a
//!   caller past that waits asynchronously for a slot ([`run`]) or is told no
//!   ([`try_spawn`], for hints that may be dropped);
//! * [`BLOCKING_THREADS`] threads, started on first use, named
//!   `ringbit-blocking-N`, never a shard thread;
//! * a job that panics loses its answer (the caller sees [`PoolGone`]), not
//!   the thread.

use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// Threads of the pool. Its operations are rare (torrent start, a truncate)
/// or cheap hints: two threads keep a slow disk from serialising them all.
pub const BLOCKING_THREADS: usize = 2;

/// Jobs queued or running at most (back-pressure past it).
pub const BLOCKING_QUEUE_DEPTH: usize = 256;

type Job = Box<dyn FnOnce() + Send>;

/// The pool's answer was lost: its thread died in the job.
#[derive(Debug, thiserror::Error)]
#[error("the blocking file-operation pool dropped the job")]
pub struct PoolGone;

struct Pool {
    jobs: crossbeam_channel::Sender<Job>,
    slots: Arc<Semaphore>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, receiver) = crossbeam_channel::unbounded::<Job>();
        for index in 0..BLOCKING_THREADS {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ringbit-blocking-{index}"))
                .spawn(move || {
                    while let Ok(job) = receiver.recv() {
                        // A panicking job drops its reply sender (the caller
                        // gets `PoolGone`) and its slot; the thread goes on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a blocking file-operation thread");
            }
        }
        Pool { jobs, slots: Arc::new(Semaphore::new(BLOCKING_QUEUE_DEPTH)) }
    })
}

/// Runs `job` on the pool and waits (asynchronously) for its result. Waits
/// for a slot first when [`BLOCKING_QUEUE_DEPTH`] jobs are already in.
pub async fn run<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PoolGone> {
    let pool = pool();
    let slot = pool.slots.clone().acquire_owned().await.map_err(|_| PoolGone)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result = job();
        drop(slot);
        let _ = reply.send(result);
    });
    pool.jobs.send(job).map_err(|_| PoolGone)?;
    answer.await.map_err(|_| PoolGone)
}

/// Starts `job` on the pool if a slot is free now; false (and `job` dropped)
/// when the pool is full. For hints whose loss costs nothing but speed.
pub fn try_spawn(job: impl FnOnce() + Send + 'static) -> bool {
    let pool = pool();
    let Ok(slot) = pool.slots.clone().try_acquire_owned() else { return false };
    let job: Job = Box::new(move || {
        job();
        drop(slot);
    });
    pool.jobs.send(job).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_off_the_calling_thread_and_survives_a_panicking_job() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let name = run(|| std::thread::current().name().map(str::to_owned)).await.unwrap();
            assert!(name.unwrap().starts_with("ringbit-blocking-"));
            assert!(run(|| panic!("job panics")).await.is_err());
            // Every thread still works after the panic.
            for i in 0..(BLOCKING_THREADS * 4) {
                assert_eq!(run(move || i * 2).await.unwrap(), i * 2);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            assert!(try_spawn(move || {
                let _ = tx.send(7);
            }));
            assert_eq!(rx.await.unwrap(), 7);
        });
    }
}
