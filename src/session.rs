//! Session: add and remove torrents, route them to `shard_of(info_hash)`,
//! statistics and shutdown.
//!
//! Layer: driver (top).
