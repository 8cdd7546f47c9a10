//! Magnet URIs (BEP 9 `xt=urn:btih:`, BEP 53 `so`, `x.pe`).
//!
//! Layer: pure core.
