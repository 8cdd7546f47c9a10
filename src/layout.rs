//! Piece <-> file spans.
//!
//! Layer: pure core.
