//! Resume state: the verified-piece bitfield and each file's size and mtime,
//! encoded as versioned bencode.
//!
//! Layer: pure core (encode/decode only; the atomic write lives in `storage`).
