//! # ringbit
//!
//! A BitTorrent seeder/leecher for Linux servers: one shard thread per core, each
//! running its own io_uring runtime for socket and file I/O; torrents live on the
//! shard chosen from their info hash.
//!
//! ## Layers
//!
//! Dependencies point down only: `cli -> session -> shard -> net/storage -> core`.
//!
//! * **Pure core** (no sockets, files, clock or runtime; bytes and `now` in,
//!   actions out): [`bencode`], [`metainfo`], [`magnet`], [`bitfield`],
//!   [`layout`], [`wire`], [`mse`], [`peer`], [`picker`], [`choker`], [`torrent`],
//!   [`metadata`], [`pex`], [`rate_limit`], [`tracker`], [`resume`], [`utp`],
//!   [`webseed`].
//! * **CPU work**: [`hash`] (batch SHA1 over every core).
//! * **Drivers** (the only code that touches io_uring, fds, mmap or the clock):
//!   [`storage`], [`net`], [`shard`], [`session`].
//! * **Control plane**: [`daemon`] (the seed box: registry, watch directory,
//!   HTTP API and metrics on their own threads, never on a shard).
//! * **Edge**: [`cli`] turns arguments into [`config::Config`] and runs a command.
//!
//! Every tokio-uring import lives under `src/shard`, `src/net` or `src/storage`.

pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod cli;
pub mod config;
pub mod create;
pub mod daemon;
pub mod dht;
pub mod hash;
pub mod layout;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod mse;
pub mod net;
pub mod peer;
pub mod peer_book;
pub mod pex;
pub mod picker;
pub mod rate_limit;
pub mod resume;
pub mod session;
pub mod shard;
pub mod storage;
pub mod torrent;
pub mod tracker;
pub mod utp;
pub mod webseed;
pub mod wire;
