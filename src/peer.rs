//! Per-peer protocol state machine.
//!
//! Layer: pure core.
