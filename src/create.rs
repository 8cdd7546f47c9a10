//! Building a `.torrent` from files on disk (`ringbit create`).
//!
//! Layer: driver-side helper (reads files), hashing through [`crate::hash`].
