//! HTTP tracker reply parsers (BEP 3/23/7/48) and tracker URL handling:
//! never panic on any body or URL; peer lists stay within their bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbit::metainfo::InfoHash;
use ringbit::tracker::http::{parse_announce_reply, parse_scrape_reply, scrape_url};
use ringbit::tracker::{TrackerUrl, MAX_PEERS_PER_REPLY};

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = parse_announce_reply(data) {
        assert!(reply.peers.len() <= MAX_PEERS_PER_REPLY);
    }
    let _ = parse_scrape_reply(data, &InfoHash([0x41; 20]));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TrackerUrl::parse(text);
        let _ = scrape_url(text);
    }
});
