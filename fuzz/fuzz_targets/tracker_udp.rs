//! UDP tracker reply decoder (BEP 15): never panics on any datagram, and an
//! accepted announce reply never holds more peers than its bytes can carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbit::tracker::udp::{decode_reply, PeerFamily, UdpReply};
use ringbit::tracker::MAX_PEERS_PER_REPLY;

fuzz_target!(|data: &[u8]| {
    for (family, stride) in [(PeerFamily::V4, 6), (PeerFamily::V6, 18)] {
        if let Ok(UdpReply::Announce { reply, .. }) = decode_reply(data, family) {
            assert!(reply.peers.len() <= MAX_PEERS_PER_REPLY);
            assert!(reply.peers.len() <= data.len().saturating_sub(20) / stride);
        }
    }
});
