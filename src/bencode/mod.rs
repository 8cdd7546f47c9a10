//! Bencode (BEP 3): a bounded, non-recursive decoder that returns byte spans,
//! and a canonical encoder.
//!
//! Layer: pure core.
