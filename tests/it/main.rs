//! ringbit's integration tests: one test binary that runs the real `ringbit`
//! binary and real peers (libtorrent, transmission, aria2, opentracker,
//! mktorrent) on 127.0.0.1 with ephemeral ports.
//!
//! The peers are installed by `scripts/test.sh`; a missing peer fails the test
//! with a message naming the package, it never skips.

mod helpers;

mod api_security;
mod daemon;
mod dht;
mod download;
mod drivers;
mod durability;
mod encryption;
mod foundation;
mod hostile_peer;
mod magnet;
mod peer_harness_selftest;
mod peers;
mod pex;
mod qbt_api;
mod seeding;
mod storage;
mod syscalls;
mod trackers;
mod webseed;
mod wire;
