//! Fuzz target for the peer wire codec and the per-peer state machine.
//!
//! Input: byte 0 picks the reserved bits (fast / extension protocol) of the
//! remote handshake, the rest is what the remote sends after it, cut into
//! reads at the sizes bytes 1..3 suggest. Checks: nothing panics; decode
//! consumes only what it was given; a re-encoded message decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringbit::metainfo::InfoHash;
use ringbit::peer::{Peer, PeerConfig, PeerSetup};
use ringbit::wire::{
    decode, decode_handshake, ExtensionHandshake, Handshake, PeerId, Reserved, WireLimits,
    Decoded,
};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, rest) = data.split_at(4);

    // The codec alone: walk the buffer, round-trip every message.
    let limits = WireLimits::for_pieces(37);
    let mut at = 0;
    let mut scratch = Vec::new();
    while let Ok(Decoded::Message { message, consumed }) = decode(&rest[at..], &limits) {
        assert!(consumed <= rest.len() - at);
        scratch.clear();
        message.encode(&mut scratch);
        assert_eq!(decode(&scratch, &limits), Ok(Decoded::Message { message, consumed: scratch.len() }));
        at += consumed;
    }
    let _ = decode_handshake(rest);
    let _ = ExtensionHandshake::decode(rest);

    // The state machine: remote handshake, then `rest` in chunks.
    let now = Instant::now();
    let setup = PeerSetup {
        info_hash: InfoHash([1; 20]),
        our_peer_id: PeerId::ours([0; 12]),
        piece_count: 37,
        piece_length: 32 * 1024,
        total_length: 36 * 32 * 1024 + 77,
        listen_port: Some(6881),
        peer_ip: None,
        metadata_size: None,
        dht_port: None,
    };
    let mut peer = Peer::outgoing(PeerConfig::default(), setup, now);
    let reserved = Reserved([0, 0, 0, 0, 0, head[0] & 0x10, 0, head[0] & 0x04]);
    let hs = Handshake { reserved, info_hash: InfoHash([1; 20]), peer_id: PeerId([2; 20]) };
    if peer.handle_bytes(&hs.to_bytes(), now).is_err() {
        return;
    }
    let mut inbox = Vec::new();
    let mut out = Vec::new();
    let chunk = usize::from(head[1]).max(1) * usize::from(head[2]).max(1);
    for (i, piece) in rest.chunks(chunk).enumerate() {
        let t = now + Duration::from_secs(i as u64 * u64::from(head[3] % 8));
        inbox.extend_from_slice(piece);
        loop {
            match peer.handle_bytes(&inbox, t) {
                Ok(used) => {
                    while let Some(e) = peer.poll_event() {
                        if let ringbit::peer::Event::Block { data, .. } = e {
                            assert!(data.end <= inbox.len());
                        }
                    }
                    inbox.drain(..used);
                    if used == 0 {
                        break;
                    }
                }
                Err(_) => return,
            }
        }
        if i % 3 == 0 {
            peer.unchoke(t);
            while let Some(r) = peer.next_upload() {
                let _ = peer.upload_header(r, t);
            }
        }
        if peer.tick(t).is_err() {
            return;
        }
        peer.swap_outgoing(&mut out);
    }
});
