//! Sizes as people type them on the command line (the parser is shared with
//! the daemon's config file, so it lives in [`crate::config`]).
//!
//! Layer: edge.

pub use crate::config::parse_size;
