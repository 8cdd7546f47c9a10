//! .torrent parser: never panics, and every accepted torrent upholds the
//! Metainfo invariants (safe paths, piece count, offsets).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbit::metainfo::Metainfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_bytes(data) {
        let info = &m.info;
        let expected = info.total_length.div_ceil(info.piece_length as u64);
        assert_eq!(info.pieces.len() as u64, expected);
        let mut offset = 0u64;
        for f in &info.files {
            assert_eq!(f.offset, offset);
            offset += f.length;
            for e in &f.path {
                assert!(!e.is_empty() && e != "." && e != "..");
                assert!(!e.contains('/') && !e.contains('\\') && !e.contains('\0'));
            }
        }
        assert_eq!(offset, info.total_length);
        assert_eq!(m.info_hash.0, ringbit::hash::sha1(&m.info_bytes));
    }
});
