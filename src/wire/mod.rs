//! Peer wire protocol codec (BEP 3, 6, 10).
//!
//! Layer: pure core.
