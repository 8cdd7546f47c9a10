//! Magnet parser: never panics; an accepted link survives a round trip
//! through `to_uri`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbit::magnet::Magnet;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(m) = Magnet::parse(s) {
            let uri = m.to_uri();
            // Escaping can grow a link past the length limit; that is fine.
            if uri.len() > ringbit::magnet::MAGNET_URI_MAX_BYTES {
                return;
            }
            let again = Magnet::parse(&uri).expect("to_uri output parses");
            assert_eq!(again.info_hash, m.info_hash);
            assert_eq!(again.trackers, m.trackers);
        }
    }
});
