//! Shards: one pinned thread per core, each running its own io_uring runtime.
//!
//! Layer: driver.
