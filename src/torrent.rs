//! Per-torrent core: owns the picker, peers' protocol state and verified pieces.
//!
//! Layer: pure core.
