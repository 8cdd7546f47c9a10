//! Resume file I/O: atomic save and load-or-recheck of a torrent's resume
//! state (the codec is [`crate::resume`]).
//!
//! Layer: driver.
