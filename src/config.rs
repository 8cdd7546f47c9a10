//! Runtime configuration: every limit and timeout the drivers use, units last,
//! with documented defaults.
//!
//! Layer: shared plain data (no I/O).
