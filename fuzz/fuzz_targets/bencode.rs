//! bencode decoder: never panics; whatever decodes re-encodes canonically to
//! bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbit::bencode::{decode, decode_prefix, DecodeLimits, OwnedValue};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode(data) {
        assert_eq!(value.span, 0..data.len());
        let owned = OwnedValue::from_value(&value);
        let again = owned.encode();
        let reparsed = decode(&again).expect("canonical output decodes");
        assert_eq!(OwnedValue::from_value(&reparsed), owned);
    }
    if let Ok((_, used)) = decode_prefix(data, DecodeLimits { depth_max: 8, tokens_max: 64 }) {
        assert!(used <= data.len());
    }
});
