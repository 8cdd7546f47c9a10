//! Bencode (BEP 3): a bounded, non-recursive decoder that returns byte spans,
//! and a canonical encoder.
//!
//! Layer: pure core. No I/O, no allocation proportional to anything but the
//! input (every string is a borrowed slice of it).
//!
//! * [`decode`] / [`decode_with`] parse one complete value; [`decode_prefix`]
//!   parses one value at the start of a buffer and says how many bytes it used
//!   (BEP 9 `ut_metadata` messages carry raw bytes after the dictionary).
//! * Every [`Value`] carries the byte span it came from, so a torrent's info
//!   hash is `SHA1(&input[info.span])`: the bytes as written, never a
//!   re-encoding.
//! * [`OwnedValue`] and the `encode_*` functions write canonical bencode
//!   (dictionary keys sorted as raw bytes).
//!
//! Invariants of a decoded [`Value`]:
//! * nesting depth <= [`DecodeLimits::depth_max`], token count <=
//!   [`DecodeLimits::tokens_max`];
//! * integers are canonical (no leading zeros, no `-0`) and fit an `i64`;
//! * dictionary keys are byte strings and unique. Keys out of order are
//!   accepted (many torrents in the wild have them) but recorded
//!   ([`Dict::is_sorted`]); lookups stay correct either way.

mod decode;
mod encode;

pub use decode::{
    decode, decode_prefix, decode_with, DecodeError, DecodeLimits, Dict, Kind, Value,
    DEPTH_MAX_DEFAULT, TOKENS_MAX_DEFAULT,
};
pub use encode::{encode_bytes, encode_int, encode_value, OwnedValue};
