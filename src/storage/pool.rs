//! The pool backend: the pwrite store run on the shard runtime's bounded
//! blocking pool, for shards on the epoll driver (which have no ring).
//!
//! Layer: driver. Every positioned read, write and fdatasync runs on a pool
//! thread (`tokio::task::spawn_blocking` of the epoll shard's runtime, at
//! most [`EPOLL_BLOCKING_THREADS_MAX`](crate::shard::driver::EPOLL_BLOCKING_THREADS_MAX)
//! threads), so the shard thread never waits on the disk; buffers are owned
//! and handed back, as with io_uring.
//!
//! Invariants:
//! * the [`PwriteStore`] is only ever locked on pool threads, never on the
//!   shard: the idle-file sweeps, which the shard calls synchronously, are
//!   handed to the pool too (and skipped when the store is busy: the next
//!   sweep does them);
//! * durability is the pwrite store's: after [`PoolStore::flush`] returns `Ok`
//!   every byte written before it is on disk.

use super::pwrite::PwriteStore;
use super::StorageError;
use crate::layout::Layout;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// See the module docs.
pub struct PoolStore {
    layout: Layout,
    inner: Arc<Mutex<PwriteStore>>,
}

fn lock(store: &Mutex<PwriteStore>) -> MutexGuard<'_, PwriteStore> {
    // A panic on a pool thread poisons the lock, not the data: the store's
    // state is a set of lazily opened files, valid whatever was interrupted.
    store.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool_gone(error: tokio::task::JoinError) -> StorageError {
    StorageError::Io {
        path: std::path::PathBuf::new(),
        op: "blocking pool",
        source: std::io::Error::other(error.to_string()),
    }
}

impl PoolStore {
    pub(crate) fn new(store: PwriteStore) -> PoolStore {
        PoolStore { layout: store.layout().clone(), inner: Arc::new(Mutex::new(store)) }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub async fn write_piece(
        &self,
        index: u32,
        buf: Vec<u8>,
    ) -> (Result<(), StorageError>, Vec<u8>) {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || {
            let result = lock(&inner).write_piece(index, &buf);
            (result, buf)
        })
        .await
        {
            Ok(done) => done,
            Err(error) => (Err(pool_gone(error)), Vec::new()),
        }
    }

    pub async fn read_block(
        &self,
        index: u32,
        begin: u32,
        len: u32,
        mut buf: Vec<u8>,
    ) -> (Result<usize, StorageError>, Vec<u8>) {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || {
            let result = lock(&inner).read_block(index, begin, len, &mut buf);
            (result, buf)
        })
        .await
        {
            Ok(done) => done,
            Err(error) => (Err(pool_gone(error)), Vec::new()),
        }
    }

    pub async fn flush(&self) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || lock(&inner).flush()).await.map_err(pool_gone)?
    }

    /// Hands the sweep to the pool when a file is open (a store with none,
    /// the common case for a seed box, costs one `try_lock`); a store busy
    /// with I/O is swept next time.
    pub fn close_idle_files(&self, now: Instant) {
        if self.open_file_count() == 0 {
            return;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(store) = inner.try_lock() {
                store.close_idle_files(now);
            }
        });
    }

    pub fn close_clean_files(&self) {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || lock(&inner).close_clean_files());
    }

    /// Files open now; 0 while the pool holds the store (a count for
    /// metrics, never a decision).
    pub fn open_file_count(&self) -> usize {
        self.inner.try_lock().map(|s| s.open_file_count()).unwrap_or(0)
    }

    /// Synchronous access for tools and tests (never on a shard).
    pub fn with_store<R>(&self, f: impl FnOnce(&PwriteStore) -> R) -> R {
        f(&lock(&self.inner))
    }
}
