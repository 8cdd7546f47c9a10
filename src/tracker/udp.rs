//! UDP tracker packets (BEP 15) with BEP 41 URLData options.
//!
//! Layer: pure core. Owns the byte layout of connect/announce/scrape requests
//! and the decoding of connect/announce/scrape/error replies. Retransmission,
//! connection-id caching and transaction-id checks against what was sent are
//! the driver's (`net::tracker_udp`); this module only reports the ids.
//!
//! Invariants: decoders never panic and never read past the datagram; a
//! request encoder writes into a caller's buffer (cleared first) so a driver
//! reuses one buffer per tracker.

use super::{bounded_text, push_compact_v4, push_compact_v6, AnnounceReply, AnnounceRequest};
use super::{ScrapeStats, MAX_PEERS_PER_REPLY};
use crate::metainfo::InfoHash;

/// The magic constant that opens every connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;

/// How long a connection id may be reused (BEP 15: one minute).
pub const CONNECTION_ID_LIFETIME_SECS: u64 = 60;

/// Bytes of a connect request.
pub const CONNECT_REQUEST_BYTES: usize = 16;

/// Bytes of an announce request before BEP 41 options.
pub const ANNOUNCE_REQUEST_BYTES: usize = 98;

/// Most info hashes in one scrape request (BEP 15: fits a 1500-byte MTU).
pub const MAX_SCRAPE_HASHES: usize = 74;

/// Longest BEP 41 URLData (path + query) sent, in bytes.
pub const MAX_URL_DATA_BYTES: usize = 1024;

/// Receive buffer size for one reply datagram: a full
/// [`MAX_PEERS_PER_REPLY`] IPv6 list is cut, smaller ones fit.
pub const MAX_REPLY_DATAGRAM_BYTES: usize = 16 * 1024;

/// BEP 15 action codes.
pub const ACTION_CONNECT: u32 = 0;
pub const ACTION_ANNOUNCE: u32 = 1;
pub const ACTION_SCRAPE: u32 = 2;
pub const ACTION_ERROR: u32 = 3;

/// BEP 41 option types.
const OPTION_URL_DATA: u8 = 2;

/// The address family the request went out on, which fixes the compact peer
/// size of the announce reply (BEP 15: 6 bytes over IPv4, 18 over IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerFamily {
    V4,
    V6,
}

impl PeerFamily {
    fn peer_bytes(self) -> usize {
        match self {
            PeerFamily::V4 => 6,
            PeerFamily::V6 => 18,
        }
    }
}

/// A decoded UDP tracker reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdpReply {
    Connect { transaction_id: u32, connection_id: u64 },
    Announce { transaction_id: u32, reply: AnnounceReply },
    Scrape { transaction_id: u32, stats: Vec<ScrapeStats> },
    Error { transaction_id: u32, message: String },
}

impl UdpReply {
    pub fn transaction_id(&self) -> u32 {
        match self {
            UdpReply::Connect { transaction_id, .. }
            | UdpReply::Announce { transaction_id, .. }
            | UdpReply::Scrape { transaction_id, .. }
            | UdpReply::Error { transaction_id, .. } => *transaction_id,
        }
    }
}

/// A malformed request or reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    #[error("truncated UDP tracker reply: {len} bytes, {action_name} needs at least {needed}")]
    Truncated { action_name: &'static str, len: usize, needed: usize },
    #[error("tracker refused the announce (a bare reply header; opentracker does this for a torrent not on its whitelist)")]
    AnnounceRefused { transaction_id: u32 },
    #[error("unknown UDP tracker action {0}")]
    UnknownAction(u32),
    #[error("UDP announce reply peer list of {len} bytes is not a multiple of {stride}")]
    PeerListLength { len: usize, stride: usize },
    #[error("UDP scrape reply body of {0} bytes is not a multiple of 12")]
    ScrapeLength(usize),
    #[error("BEP 41 URL data is {0} bytes, more than {MAX_URL_DATA_BYTES}")]
    UrlDataTooLong(usize),
    #[error("a scrape asks for {0} info hashes, more than {MAX_SCRAPE_HASHES}")]
    TooManyHashes(usize),
}

/// The 16-byte connect request.
pub fn encode_connect(transaction_id: u32) -> [u8; CONNECT_REQUEST_BYTES] {
    let mut out = [0u8; CONNECT_REQUEST_BYTES];
    out[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    out[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    out[12..].copy_from_slice(&transaction_id.to_be_bytes());
    out
}

/// Writes an announce request into `buf` (cleared first): the 98 BEP 15 bytes,
/// then `url_data` (the tracker URL's path and query) as BEP 41 URLData
/// options of at most 255 bytes each.
pub fn encode_announce(
    buf: &mut Vec<u8>,
    connection_id: u64,
    transaction_id: u32,
    request: &AnnounceRequest,
    url_data: &[u8],
) -> Result<(), UdpError> {
    if url_data.len() > MAX_URL_DATA_BYTES {
        return Err(UdpError::UrlDataTooLong(url_data.len()));
    }
    buf.clear();
    buf.extend_from_slice(&connection_id.to_be_bytes());
    buf.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    buf.extend_from_slice(&transaction_id.to_be_bytes());
    buf.extend_from_slice(&request.info_hash.0);
    buf.extend_from_slice(&request.peer_id);
    buf.extend_from_slice(&request.downloaded.to_be_bytes());
    buf.extend_from_slice(&request.left.to_be_bytes());
    buf.extend_from_slice(&request.uploaded.to_be_bytes());
    buf.extend_from_slice(&request.event.udp_code().to_be_bytes());
    // IP address 0: the tracker uses the datagram's source address.
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf.extend_from_slice(&request.key.to_be_bytes());
    // -1 asks for the tracker's default.
    let numwant = request.numwant.map(|n| n.min(i32::MAX as u32) as i32).unwrap_or(-1);
    buf.extend_from_slice(&numwant.to_be_bytes());
    buf.extend_from_slice(&request.port.to_be_bytes());
    debug_assert_eq!(buf.len(), ANNOUNCE_REQUEST_BYTES);
    for chunk in url_data.chunks(255) {
        buf.push(OPTION_URL_DATA);
        buf.push(chunk.len() as u8);
        buf.extend_from_slice(chunk);
    }
    Ok(())
}

/// Writes a scrape request for up to [`MAX_SCRAPE_HASHES`] torrents into `buf`.
pub fn encode_scrape(
    buf: &mut Vec<u8>,
    connection_id: u64,
    transaction_id: u32,
    info_hashes: &[InfoHash],
) -> Result<(), UdpError> {
    if info_hashes.len() > MAX_SCRAPE_HASHES {
        return Err(UdpError::TooManyHashes(info_hashes.len()));
    }
    buf.clear();
    buf.extend_from_slice(&connection_id.to_be_bytes());
    buf.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    buf.extend_from_slice(&transaction_id.to_be_bytes());
    for hash in info_hashes {
        buf.extend_from_slice(&hash.0);
    }
    Ok(())
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn need(datagram: &[u8], action_name: &'static str, needed: usize) -> Result<(), UdpError> {
    if datagram.len() < needed {
        return Err(UdpError::Truncated { action_name, len: datagram.len(), needed });
    }
    Ok(())
}

/// Decodes one reply datagram. `family` is the family the request was sent
/// on. Extra bytes after a connect reply are ignored (BEP 15: "at least").
pub fn decode_reply(datagram: &[u8], family: PeerFamily) -> Result<UdpReply, UdpError> {
    need(datagram, "a reply header", 8)?;
    let action = be_u32(datagram, 0);
    let transaction_id = be_u32(datagram, 4);
    match action {
        ACTION_CONNECT => {
            need(datagram, "a connect reply", 16)?;
            let mut id = [0u8; 8];
            id.copy_from_slice(&datagram[8..16]);
            Ok(UdpReply::Connect { transaction_id, connection_id: u64::from_be_bytes(id) })
        }
        ACTION_ANNOUNCE => {
            if datagram.len() == 8 {
                return Err(UdpError::AnnounceRefused { transaction_id });
            }
            need(datagram, "an announce reply", 20)?;
            let body = &datagram[20..];
            let stride = family.peer_bytes();
            if body.len() % stride != 0 {
                return Err(UdpError::PeerListLength { len: body.len(), stride });
            }
            let mut peers = Vec::with_capacity((body.len() / stride).min(MAX_PEERS_PER_REPLY));
            match family {
                PeerFamily::V4 => push_compact_v4(body, &mut peers),
                PeerFamily::V6 => push_compact_v6(body, &mut peers),
            }
            let reply = AnnounceReply {
                interval_secs: be_u32(datagram, 8),
                leechers: Some(be_u32(datagram, 12)),
                seeders: Some(be_u32(datagram, 16)),
                peers,
                ..AnnounceReply::default()
            };
            Ok(UdpReply::Announce { transaction_id, reply })
        }
        ACTION_SCRAPE => {
            let body = &datagram[8..];
            if body.len() % 12 != 0 {
                return Err(UdpError::ScrapeLength(body.len()));
            }
            let stats = body
                .chunks_exact(12)
                .take(MAX_SCRAPE_HASHES)
                .map(|c| ScrapeStats {
                    seeders: be_u32(c, 0),
                    completed: be_u32(c, 4),
                    leechers: be_u32(c, 8),
                })
                .collect();
            Ok(UdpReply::Scrape { transaction_id, stats })
        }
        ACTION_ERROR => {
            Ok(UdpReply::Error { transaction_id, message: bounded_text(&datagram[8..]) })
        }
        other => Err(UdpError::UnknownAction(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::test_fixture as fixture;
    use crate::tracker::Event;
    use proptest::prelude::*;

    fn request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: InfoHash([0xab; 20]),
            peer_id: *b"-RB0100-abcdefghijkl",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Event::Started,
            numwant: Some(50),
            key: 0xdead_beef,
            tracker_id: None,
            encryption: crate::mse::EncryptionPolicy::Prefer,
        }
    }

    #[test]
    fn connect_request_layout() {
        let req = encode_connect(0x0102_0304);
        assert_eq!(&req[..8], &[0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80]);
        assert_eq!(&req[8..12], &[0, 0, 0, 0]);
        assert_eq!(&req[12..], &[1, 2, 3, 4]);
    }

    #[test]
    fn announce_request_layout_and_bep41_options() {
        let mut buf = Vec::new();
        encode_announce(&mut buf, 0x1122_3344_5566_7788, 7, &request(), b"").unwrap();
        assert_eq!(buf.len(), ANNOUNCE_REQUEST_BYTES);
        assert_eq!(&buf[..8], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(be_u32(&buf, 8), ACTION_ANNOUNCE);
        assert_eq!(be_u32(&buf, 12), 7);
        assert_eq!(&buf[16..36], &[0xab; 20]);
        assert_eq!(&buf[36..56], b"-RB0100-abcdefghijkl");
        assert_eq!(&buf[56..64], &2u64.to_be_bytes()); // downloaded
        assert_eq!(&buf[64..72], &3u64.to_be_bytes()); // left
        assert_eq!(&buf[72..80], &1u64.to_be_bytes()); // uploaded
        assert_eq!(be_u32(&buf, 80), 2); // started
        assert_eq!(be_u32(&buf, 84), 0); // ip
        assert_eq!(be_u32(&buf, 88), 0xdead_beef);
        assert_eq!(be_u32(&buf, 92), 50);
        assert_eq!(&buf[96..98], &6881u16.to_be_bytes());

        let path = vec![b'a'; 300];
        encode_announce(&mut buf, 1, 7, &request(), &path).unwrap();
        assert_eq!(buf.len(), ANNOUNCE_REQUEST_BYTES + 2 + 255 + 2 + 45);
        assert_eq!(&buf[98..100], &[2, 255]);
        assert_eq!(&buf[355..357], &[2, 45]);

        let mut no_numwant = request();
        no_numwant.numwant = None;
        encode_announce(&mut buf, 1, 7, &no_numwant, b"").unwrap();
        assert_eq!(&buf[92..96], &[0xff; 4]);
        assert_eq!(
            encode_announce(&mut buf, 1, 7, &request(), &[0; MAX_URL_DATA_BYTES + 1]),
            Err(UdpError::UrlDataTooLong(MAX_URL_DATA_BYTES + 1))
        );
    }

    #[test]
    fn scrape_request_layout_and_bound() {
        let mut buf = Vec::new();
        encode_scrape(&mut buf, 5, 6, &[InfoHash([1; 20]), InfoHash([2; 20])]).unwrap();
        assert_eq!(buf.len(), 16 + 40);
        assert_eq!(be_u32(&buf, 8), ACTION_SCRAPE);
        let many = vec![InfoHash::default(); MAX_SCRAPE_HASHES + 1];
        assert_eq!(encode_scrape(&mut buf, 5, 6, &many), Err(UdpError::TooManyHashes(75)));
    }

    #[test]
    fn decodes_connect_fixture() {
        assert_eq!(
            decode_reply(&fixture("udp_connect.bin"), PeerFamily::V4).unwrap(),
            UdpReply::Connect { transaction_id: 0x1234, connection_id: 0x0980_c6a9_5303_94de }
        );
    }

    #[test]
    fn decodes_announce_fixture() {
        let UdpReply::Announce { transaction_id, reply } =
            decode_reply(&fixture("udp_announce.bin"), PeerFamily::V4).unwrap()
        else {
            panic!("not an announce reply")
        };
        assert_eq!(transaction_id, 0x5678);
        assert_eq!(reply.interval_secs, 1670);
        assert_eq!(reply.leechers, Some(2));
        assert_eq!(reply.seeders, Some(1));
        assert_eq!(
            reply.peers,
            vec![
                "127.0.0.1:7777".parse().unwrap(),
                "127.0.0.1:51413".parse().unwrap(),
                "127.0.0.1:6881".parse().unwrap()
            ]
        );
    }

    #[test]
    fn decodes_ipv6_announce() {
        let mut reply = fixture("udp_announce.bin")[..20].to_vec();
        let mut peer = [0u8; 18];
        peer[15] = 1;
        peer[16..].copy_from_slice(&51413u16.to_be_bytes());
        reply.extend_from_slice(&peer);
        let UdpReply::Announce { reply: decoded, .. } =
            decode_reply(&reply, PeerFamily::V6).unwrap()
        else {
            panic!("not an announce reply")
        };
        assert_eq!(decoded.peers, vec!["[::1]:51413".parse().unwrap()]);
        reply.push(0);
        assert_eq!(
            decode_reply(&reply, PeerFamily::V6),
            Err(UdpError::PeerListLength { len: 19, stride: 18 })
        );
    }

    #[test]
    fn decodes_scrape_and_error_fixtures() {
        assert_eq!(
            decode_reply(&fixture("udp_scrape.bin"), PeerFamily::V4).unwrap(),
            UdpReply::Scrape {
                transaction_id: 0xdef0,
                stats: vec![ScrapeStats { seeders: 1, completed: 0, leechers: 2 }]
            }
        );
        let reply = decode_reply(&fixture("udp_error.bin"), PeerFamily::V4).unwrap();
        assert_eq!(reply.transaction_id(), 42);
        assert_eq!(
            reply,
            UdpReply::Error {
                transaction_id: 42,
                message: "Requested download is not authorized for use with this tracker.".into()
            }
        );
        // opentracker refuses a torrent off its whitelist with a bare header.
        assert_eq!(
            decode_reply(&fixture("udp_announce_refused.bin"), PeerFamily::V4),
            Err(UdpError::AnnounceRefused { transaction_id: 0x9abc })
        );
    }

    #[test]
    fn truncated_and_unknown_replies_are_errors() {
        assert!(matches!(
            decode_reply(&fixture("udp_connect.bin")[..12], PeerFamily::V4),
            Err(UdpError::Truncated { needed: 16, len: 12, .. })
        ));
        assert!(matches!(
            decode_reply(&fixture("udp_announce.bin")[..19], PeerFamily::V4),
            Err(UdpError::Truncated { needed: 20, .. })
        ));
        assert!(matches!(
            decode_reply(&[0, 0, 0], PeerFamily::V4),
            Err(UdpError::Truncated { .. })
        ));
        assert_eq!(
            decode_reply(&[0, 0, 0, 9, 0, 0, 0, 0], PeerFamily::V4),
            Err(UdpError::UnknownAction(9))
        );
        assert_eq!(
            decode_reply(&fixture("udp_scrape.bin")[..19], PeerFamily::V4),
            Err(UdpError::ScrapeLength(11))
        );
        let mut odd = fixture("udp_announce.bin");
        odd.push(0);
        assert_eq!(
            decode_reply(&odd, PeerFamily::V4),
            Err(UdpError::PeerListLength { len: 19, stride: 6 })
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), v6 in any::<bool>()) {
            let family = if v6 { PeerFamily::V6 } else { PeerFamily::V4 };
            let _ = decode_reply(&bytes, family);
        }

        #[test]
        fn decode_never_panics_on_valid_headers(action in 0u32..5, tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = action.to_be_bytes().to_vec();
            bytes.extend_from_slice(&tail);
            let _ = decode_reply(&bytes, PeerFamily::V4);
            let _ = decode_reply(&bytes, PeerFamily::V6);
        }
    }
}
