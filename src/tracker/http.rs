//! HTTP tracker requests and replies (BEP 3, BEP 23 compact peers, BEP 7
//! `peers6`, BEP 24 `external ip`, BEP 48 scrape).
//!
//! Layer: pure core. Owns announce and scrape URL building and the parsing of
//! bencoded reply bodies; the HTTP client itself is `net::tracker_http`.
//!
//! Invariants: `info_hash`, `peer_id` and `trackerid` are percent-encoded byte
//! by byte (only RFC 3986 unreserved bytes stay literal); reply parsing is
//! bounded ([`MAX_HTTP_REPLY_BYTES`], [`REPLY_DECODE_LIMITS`],
//! [`super::MAX_PEERS_PER_REPLY`]) and never panics.

use super::{bounded_text, push_compact_v4, push_compact_v6, AnnounceReply, AnnounceRequest};
use super::{ScrapeStats, MAX_PEERS_PER_REPLY};
use crate::bencode::{self, DecodeError, DecodeLimits, Value};
use crate::metainfo::InfoHash;
use crate::mse::EncryptionPolicy;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest reply body read from an HTTP tracker, in bytes (200 dictionary
/// peers are ~20 KiB; this leaves room for big scrapes).
pub const MAX_HTTP_REPLY_BYTES: usize = 2 * 1024 * 1024;

/// Bencode limits for a tracker reply: the deepest legitimate reply (a
/// dictionary peer list) nests 3 levels.
pub const REPLY_DECODE_LIMITS: DecodeLimits = DecodeLimits { depth_max: 16, tokens_max: 200_000 };

/// Bytes kept literal in a query value: RFC 3986 unreserved characters.
const QUERY_VALUE: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A reply that is not a usable announce or scrape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpReplyError {
    /// The tracker refused: its `failure reason`, verbatim.
    #[error("tracker failure: {0}")]
    Failure(String),
    #[error("reply body of {0} bytes is larger than {MAX_HTTP_REPLY_BYTES}")]
    TooLarge(usize),
    #[error("reply is not bencode ({0})")]
    Bencode(DecodeError),
    #[error("reply is a bencoded {0}, not a dictionary")]
    NotADictionary(&'static str),
    #[error("reply field `{field}` {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("reply `{field}` of {len} bytes is not a multiple of {stride}")]
    PeerListLength { field: &'static str, len: usize, stride: usize },
    #[error("scrape reply has no entry for this torrent")]
    NotInScrape,
}

/// The announce URL for `request`: `base` plus the BEP 3 query parameters
/// (joined with `&` when `base` already has a query, e.g. a passkey).
pub fn announce_url(base: &str, request: &AnnounceRequest) -> String {
    let mut url = String::with_capacity(base.len() + 256);
    url.push_str(base);
    url.push(if base.contains('?') { '&' } else { '?' });
    url.push_str("info_hash=");
    url.extend(percent_encode(&request.info_hash.0, QUERY_VALUE));
    url.push_str("&peer_id=");
    url.extend(percent_encode(&request.peer_id, QUERY_VALUE));
    // Writing to a String cannot fail.
    let _ = write!(
        url,
        "&port={}&uploaded={}&downloaded={}&left={}&compact=1&key={:08x}",
        request.port, request.uploaded, request.downloaded, request.left, request.key
    );
    if let Some(event) = request.event.http_name() {
        url.push_str("&event=");
        url.push_str(event);
    }
    if let Some(numwant) = request.numwant {
        let _ = write!(url, "&numwant={numwant}");
    }
    if let Some(id) = &request.tracker_id {
        url.push_str("&trackerid=");
        url.extend(percent_encode(id, QUERY_VALUE));
    }
    match request.encryption {
        EncryptionPolicy::Disable => {}
        EncryptionPolicy::Prefer => url.push_str("&supportcrypto=1"),
        EncryptionPolicy::Require => url.push_str("&supportcrypto=1&requirecrypto=1"),
    }
    url
}

/// The scrape URL of an announce URL (BEP 48): the last path element must
/// start with `announce`, which becomes `scrape`; otherwise the tracker has
/// no scrape convention and `None` is returned.
pub fn scrape_url(announce: &str) -> Option<String> {
    let (path_part, query) = match announce.find('?') {
        Some(q) => announce.split_at(q),
        None => (announce, ""),
    };
    let slash = path_part.rfind('/')?;
    // "http://host" has its only slashes in the scheme.
    if path_part[..slash].ends_with('/') || path_part[..slash].ends_with(':') {
        return None;
    }
    let last = &path_part[slash + 1..];
    let rest = last.strip_prefix("announce")?;
    Some(format!("{}/scrape{rest}{query}", &path_part[..slash]))
}

/// The scrape request URL for `info_hashes` on the scrape URL `base`.
pub fn scrape_request_url(base: &str, info_hashes: &[InfoHash]) -> String {
    let mut url = String::with_capacity(base.len() + info_hashes.len() * 72);
    url.push_str(base);
    let mut separator = if base.contains('?') { '&' } else { '?' };
    for hash in info_hashes {
        url.push(separator);
        url.push_str("info_hash=");
        url.extend(percent_encode(&hash.0, QUERY_VALUE));
        separator = '&';
    }
    url
}

fn decode_reply(body: &[u8]) -> Result<Value<'_>, HttpReplyError> {
    if body.len() > MAX_HTTP_REPLY_BYTES {
        return Err(HttpReplyError::TooLarge(body.len()));
    }
    // Some trackers append a newline or HTML after the dictionary: the value
    // at the start is the reply, whatever follows.
    let (value, _used) =
        bencode::decode_prefix(body, REPLY_DECODE_LIMITS).map_err(HttpReplyError::Bencode)?;
    if value.as_dict().is_none() {
        return Err(HttpReplyError::NotADictionary(value.type_name()));
    }
    if let Some(reason) = value.get(b"failure reason") {
        let text = reason.as_bytes().map(bounded_text).unwrap_or_else(|| "(not a string)".into());
        return Err(HttpReplyError::Failure(text));
    }
    Ok(value)
}

fn optional_u32(dict: &Value<'_>, field: &'static str) -> Result<Option<u32>, HttpReplyError> {
    match dict.get(field.as_bytes()) {
        None => Ok(None),
        Some(v) => match v.as_int() {
            // Negative counts from broken trackers read as 0; huge ones saturate.
            Some(i) => Ok(Some(i.clamp(0, u32::MAX as i64) as u32)),
            None => Err(HttpReplyError::BadField {
                field,
                reason: format!("is a {}, not an integer", v.type_name()),
            }),
        },
    }
}

fn parse_peer_dict(peer: &Value<'_>) -> Option<SocketAddr> {
    let ip: IpAddr = peer.get(b"ip")?.as_str()?.trim().parse().ok()?;
    let port = peer.get(b"port")?.as_int()?;
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    Some(SocketAddr::new(ip, port))
}

/// Parses an announce reply body.
pub fn parse_announce_reply(body: &[u8]) -> Result<AnnounceReply, HttpReplyError> {
    let root = decode_reply(body)?;
    let mut reply = AnnounceReply {
        interval_secs: optional_u32(&root, "interval")?.unwrap_or(0),
        min_interval_secs: optional_u32(&root, "min interval")?,
        seeders: optional_u32(&root, "complete")?,
        leechers: optional_u32(&root, "incomplete")?,
        tracker_id: root.get(b"tracker id").and_then(Value::as_bytes).map(<[u8]>::to_vec),
        warning: root.get(b"warning message").and_then(Value::as_bytes).map(bounded_text),
        external_ip: root.get(b"external ip").and_then(Value::as_bytes).and_then(|b| {
            match b.len() {
                4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
                16 => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(b);
                    Some(IpAddr::V6(Ipv6Addr::from(o)))
                }
                _ => None,
            }
        }),
        peers: Vec::new(),
    };
    match root.get(b"peers") {
        None => {}
        Some(peers) => {
            if let Some(bytes) = peers.as_bytes() {
                if bytes.len() % 6 != 0 {
                    return Err(HttpReplyError::PeerListLength {
                        field: "peers",
                        len: bytes.len(),
                        stride: 6,
                    });
                }
                push_compact_v4(bytes, &mut reply.peers);
            } else if let Some(list) = peers.as_list() {
                // Entries that are not dictionaries with an IP literal and a
                // valid port (a hostname, say) are skipped, not fatal.
                reply
                    .peers
                    .extend(list.iter().filter_map(parse_peer_dict).take(MAX_PEERS_PER_REPLY));
            } else {
                return Err(HttpReplyError::BadField {
                    field: "peers",
                    reason: format!("is a {}, not a string or list", peers.type_name()),
                });
            }
        }
    }
    if let Some(bytes) = root.get(b"peers6").and_then(Value::as_bytes) {
        if bytes.len() % 18 != 0 {
            return Err(HttpReplyError::PeerListLength {
                field: "peers6",
                len: bytes.len(),
                stride: 18,
            });
        }
        push_compact_v6(bytes, &mut reply.peers);
    }
    Ok(reply)
}

/// Parses a scrape reply body and returns the stats of `info_hash`.
pub fn parse_scrape_reply(
    body: &[u8],
    info_hash: &InfoHash,
) -> Result<ScrapeStats, HttpReplyError> {
    let root = decode_reply(body)?;
    let files = root
        .get(b"files")
        .ok_or(HttpReplyError::BadField { field: "files", reason: "is missing".into() })?;
    let entry = files.get(&info_hash.0).ok_or(HttpReplyError::NotInScrape)?;
    Ok(ScrapeStats {
        seeders: optional_u32(entry, "complete")?.unwrap_or(0),
        completed: optional_u32(entry, "downloaded")?.unwrap_or(0),
        leechers: optional_u32(entry, "incomplete")?.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::test_fixture as fixture;
    use crate::tracker::Event;
    use proptest::prelude::*;

    fn request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: InfoHash([
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
                0xef, 0x12, 0x34, 0x56, 0x78, 0x9a,
            ]),
            peer_id: *b"-RB0100-a.b_c~d e/f%",
            port: 6881,
            uploaded: 10,
            downloaded: 20,
            left: 30,
            event: Event::Started,
            numwant: Some(50),
            key: 0xab,
            tracker_id: Some(b"t 1".to_vec()),
            encryption: EncryptionPolicy::Disable,
        }
    }

    #[test]
    fn announce_url_encodes_byte_by_byte() {
        let url = announce_url("http://t.example/announce", &request());
        assert_eq!(
            url,
            "http://t.example/announce?info_hash=%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A\
             &peer_id=-RB0100-a.b_c~d%20e%2Ff%25&port=6881&uploaded=10&downloaded=20&left=30\
             &compact=1&key=000000ab&event=started&numwant=50&trackerid=t%201"
        );
        let mut periodic = request();
        periodic.event = Event::None;
        periodic.numwant = None;
        periodic.tracker_id = None;
        let url = announce_url("https://t.example/a.php?passkey=xyz", &periodic);
        assert!(url.starts_with("https://t.example/a.php?passkey=xyz&info_hash="), "{url}");
        assert!(!url.contains("event=") && !url.contains("numwant") && !url.contains("trackerid"));
        assert!(!url.contains("crypto"), "encryption disabled: no crypto parameters");
        periodic.encryption = EncryptionPolicy::Prefer;
        let url = announce_url("http://t/announce", &periodic);
        assert!(url.ends_with("&supportcrypto=1") && !url.contains("requirecrypto"), "{url}");
        periodic.encryption = EncryptionPolicy::Require;
        let url = announce_url("http://t/announce", &periodic);
        assert!(url.ends_with("&supportcrypto=1&requirecrypto=1"), "{url}");
    }

    #[test]
    fn scrape_urls_follow_bep48() {
        let cases = [
            ("http://example.com/announce", Some("http://example.com/scrape")),
            ("http://example.com/x/announce", Some("http://example.com/x/scrape")),
            ("http://example.com/announce.php", Some("http://example.com/scrape.php")),
            ("http://example.com/a", None),
            ("http://example.com/announce?x2%0644", Some("http://example.com/scrape?x2%0644")),
            ("http://example.com/announce?x=2/4", Some("http://example.com/scrape?x=2/4")),
            ("http://example.com/x%064announce", None),
            ("http://example.com", None),
        ];
        for (announce, scrape) in cases {
            assert_eq!(scrape_url(announce).as_deref(), scrape, "{announce}");
        }
        assert_eq!(
            scrape_request_url("http://e/scrape?k=1", &[InfoHash([0x41; 20]), InfoHash([0; 20])]),
            format!(
                "http://e/scrape?k=1&info_hash={}&info_hash={}",
                "A".repeat(20),
                "%00".repeat(20)
            )
        );
    }

    #[test]
    fn parses_compact_fixture() {
        // Captured from opentracker: complete, downloaded, incomplete,
        // interval, min interval, compact peers.
        let reply = parse_announce_reply(&fixture("announce_compact.bencode")).unwrap();
        assert_eq!(reply.interval_secs, 1879);
        assert_eq!(reply.min_interval_secs, Some(939));
        assert_eq!(reply.seeders, Some(1));
        assert_eq!(reply.leechers, Some(1));
        assert_eq!(
            reply.peers,
            vec!["127.0.0.1:51413".parse().unwrap(), "127.0.0.1:6881".parse().unwrap()]
        );
    }

    #[test]
    fn parses_dictionary_fixture() {
        let reply = parse_announce_reply(&fixture("announce_dict.bencode")).unwrap();
        assert_eq!(reply.interval_secs, 900);
        assert_eq!(reply.tracker_id.as_deref(), Some(&b"abc"[..]));
        assert_eq!(reply.warning.as_deref(), Some("be nice"));
        // A hostname and a port 0 entry are skipped.
        assert_eq!(
            reply.peers,
            vec!["192.168.1.5:6881".parse().unwrap(), "[2001:db8::1]:7000".parse().unwrap()]
        );
    }

    #[test]
    fn parses_peers6_fixture() {
        let reply = parse_announce_reply(&fixture("announce_peers6.bencode")).unwrap();
        assert_eq!(reply.external_ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(
            reply.peers,
            vec!["127.0.0.1:6881".parse().unwrap(), "[::1]:6882".parse().unwrap()]
        );
    }

    #[test]
    fn failure_fixture_is_a_failure() {
        assert_eq!(
            parse_announce_reply(&fixture("announce_failure.bencode")),
            Err(HttpReplyError::Failure(
                "Requested download is not authorized for use with this tracker.".into()
            ))
        );
    }

    #[test]
    fn parses_scrape_fixture() {
        let body = fixture("scrape.bencode");
        let stats = parse_scrape_reply(&body, &InfoHash([0x41; 20])).unwrap();
        assert_eq!(stats, ScrapeStats { seeders: 1, completed: 0, leechers: 1 });
        assert_eq!(
            parse_scrape_reply(&body, &InfoHash([0x42; 20])),
            Err(HttpReplyError::NotInScrape)
        );
    }

    #[test]
    fn bad_replies_are_typed_errors() {
        assert!(matches!(
            parse_announce_reply(b"<html>500</html>"),
            Err(HttpReplyError::Bencode(_))
        ));
        assert!(matches!(parse_announce_reply(b""), Err(HttpReplyError::Bencode(_))));
        assert_eq!(parse_announce_reply(b"li1ee"), Err(HttpReplyError::NotADictionary("list")));
        assert!(matches!(
            parse_announce_reply(b"d8:intervali1800e5:peers5:abcdee"),
            Err(HttpReplyError::PeerListLength { field: "peers", len: 5, stride: 6 })
        ));
        assert!(matches!(
            parse_announce_reply(b"d8:interval2:xxe"),
            Err(HttpReplyError::BadField { field: "interval", .. })
        ));
        assert!(matches!(
            parse_announce_reply(b"d5:peersi3ee"),
            Err(HttpReplyError::BadField { field: "peers", .. })
        ));
        let deep = format!("d5:peers{}{}e", "l".repeat(100), "e".repeat(100));
        assert!(matches!(parse_announce_reply(deep.as_bytes()), Err(HttpReplyError::Bencode(_))));
        let big = vec![b'x'; MAX_HTTP_REPLY_BYTES + 1];
        assert_eq!(parse_announce_reply(&big), Err(HttpReplyError::TooLarge(big.len())));
        // Trailing junk after a good dictionary is tolerated; negative counts read as 0.
        let reply = parse_announce_reply(b"d8:completei-5e8:intervali60ee\n<br>").unwrap();
        assert_eq!((reply.interval_secs, reply.seeders), (60, Some(0)));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_announce_reply(&bytes);
            let _ = parse_scrape_reply(&bytes, &InfoHash([0; 20]));
        }

        #[test]
        fn parsers_never_panic_on_near_valid_replies(
            interval in any::<i64>(),
            peers in proptest::collection::vec(any::<u8>(), 0..64),
            peers6 in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut body = format!("d8:intervali{interval}e5:peers{}:", peers.len()).into_bytes();
            body.extend_from_slice(&peers);
            body.extend_from_slice(format!("6:peers6{}:", peers6.len()).as_bytes());
            body.extend_from_slice(&peers6);
            body.push(b'e');
            let _ = parse_announce_reply(&body);
        }
    }
}
