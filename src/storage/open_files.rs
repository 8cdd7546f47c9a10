//! The process's open data-file descriptors: how many the stores hold, the
//! cap the session derived from `RLIMIT_NOFILE`
//! ([`crate::fd_budget::FdBudget::data_files`]), and the pressure signal
//! that makes every store give back files it is not using.
//!
//! Layer: driver support (atomics only; every shard's stores share them,
//! as fds are a process-wide resource). Opens are rare next to reads and
//! writes (a store keeps a file open while it is used), so a shared counter
//! costs nothing on the data path.
//!
//! Policy: a store about to open a file while the process is at the cap, or
//! whose open failed with `EMFILE`/`ENFILE`, first closes its own clean
//! files that nothing uses now ([`super::uring`], [`super::pwrite`]) and
//! raises the pressure; every store's next idle sweep (each torrent's tick,
//! once a second) then closes its clean files unused since the sweep before,
//! whatever the idle time. A piece write that still finds no fd is retried
//! by the shard with a back-off ([`FD_RETRY_DELAYS_MS`]); a torrent is never
//! stopped for good over a busy fd table.
//!
//! Invariant: [`open_files`] counts the live [`FdSlot`]s: one per open data
//! fd (the io_uring backend's `O_DIRECT` fd counts apart).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static OPEN_FILES: AtomicUsize = AtomicUsize::new(0);
static MAX_OPEN_FILES: AtomicUsize = AtomicUsize::new(usize::MAX);
static PRESSURE: AtomicU64 = AtomicU64::new(0);

/// Waits between retries of a piece write that found no free fd: about
/// 30 s in all, time for every store's sweep (once a second) to give fds
/// back many times over.
pub const FD_RETRY_DELAYS_MS: [u64; 12] =
    [10, 50, 100, 250, 500, 1000, 2000, 3000, 4000, 5000, 6000, 8000];

/// Sets the cap on open data files for the whole process.
pub fn set_max_open_files(max: usize) {
    MAX_OPEN_FILES.store(max.max(1), Ordering::Relaxed);
}

/// The cap on open data files.
pub fn max_open_files() -> usize {
    MAX_OPEN_FILES.load(Ordering::Relaxed)
}

/// Data-file descriptors open now.
pub fn open_files() -> usize {
    OPEN_FILES.load(Ordering::Relaxed)
}

/// Whether opening one more data file would pass the cap.
pub(crate) fn at_cap() -> bool {
    open_files() >= max_open_files()
}

/// Asks every store to give back the files it is not using.
pub(crate) fn raise_pressure() {
    PRESSURE.fetch_add(1, Ordering::Relaxed);
}

/// The pressure generation: a store that sees it change sweeps harder.
pub(crate) fn pressure() -> u64 {
    PRESSURE.load(Ordering::Relaxed)
}

/// True for an error that says the process or the system has no free fd.
pub fn is_fd_exhausted(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// One open data fd, counted while it lives.
#[derive(Debug)]
pub(crate) struct FdSlot(());

impl FdSlot {
    pub(crate) fn new() -> FdSlot {
        OPEN_FILES.fetch_add(1, Ordering::Relaxed);
        FdSlot(())
    }
}

impl Drop for FdSlot {
    fn drop(&mut self) {
        OPEN_FILES.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_fd_exhaustion() {
        assert!(is_fd_exhausted(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_fd_exhausted(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_fd_exhausted(&std::io::Error::from_raw_os_error(libc::ENOENT)));
    }

    #[test]
    fn slots_count_while_they_live() {
        // Other tests open stores concurrently: compare with a margin-free
        // difference of this thread's own slots only via drop order.
        let slots: Vec<FdSlot> = (0..5).map(|_| FdSlot::new()).collect();
        assert!(open_files() >= 5);
        let before = pressure();
        raise_pressure();
        assert!(pressure() > before);
        drop(slots);
    }
}
