//! Piece picker.
//!
//! Layer: pure core.
