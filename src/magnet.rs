//! Magnet URIs (BEP 9 `xt=urn:btih:`, `dn`, `tr`, `x.pe`, `xl`; BEP 19 `ws`).
//!
//! Layer: pure core. Owns turning a `magnet:?` URI into a [`Magnet`].
//!
//! Invariants of a parsed [`Magnet`]: it has a v1 info hash; every tracker
//! and peer string is percent-decoded UTF-8; the URI, the tracker list and
//! the peer list are bounded by the `*_MAX` constants.
//!
//! Decisions: a magnet with only `urn:btmh` (BitTorrent v2) is refused with
//! the same message as v2-only torrents; a hybrid magnet (both `btih` and
//! `btmh`) uses its `btih`. `+` means a space only in `dn` (display name),
//! never in URLs. Unknown parameters are ignored, as BEP 9 asks.

use crate::metainfo::InfoHash;
use percent_encoding::percent_decode_str;

/// Longest magnet URI accepted (a URI with 256 trackers of 200 bytes fits).
pub const MAGNET_URI_MAX_BYTES: usize = 64 * 1024;
/// Most `tr` parameters accepted.
pub const TRACKERS_MAX: usize = 256;
/// Most `x.pe` parameters accepted.
pub const PEERS_MAX: usize = 1024;
/// Most `ws` (web seed) parameters accepted.
pub const WEB_SEEDS_MAX: usize = 64;

/// A parsed magnet link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    /// `dn`.
    pub display_name: Option<String>,
    /// `tr`, in URI order, duplicates removed.
    pub trackers: Vec<String>,
    /// `x.pe`: `host:port`, `ipv4:port` or `[ipv6]:port`.
    pub peers: Vec<String>,
    /// `xl`: total size in bytes.
    pub exact_length: Option<u64>,
    /// `ws`: web seeds (BEP 19), in URI order, duplicates removed.
    pub web_seeds: Vec<String>,
}

/// Why a magnet URI was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("not a magnet link (it must start with `magnet:?`)")]
    NotMagnet,
    #[error("magnet link is {0} bytes, more than the limit of {MAGNET_URI_MAX_BYTES}")]
    TooLong(usize),
    #[error("magnet link has no `xt=urn:btih:` info hash")]
    NoInfoHash,
    #[error("magnet link info hash {0:?} is neither 40 hex digits nor 32 base32 characters")]
    BadInfoHash(String),
    #[error("v2-only torrents are not supported yet (magnet link has only `urn:btmh`)")]
    V2Only,
    #[error("magnet link parameter `{key}` is not valid percent-encoded UTF-8")]
    BadEncoding { key: String },
    #[error("magnet link `xl` {0:?} is not a byte count")]
    BadLength(String),
    #[error("magnet link peer {0:?} is not host:port")]
    BadPeer(String),
    #[error("magnet link has more than {limit} `{key}` parameters")]
    TooMany { key: &'static str, limit: usize },
}

impl Magnet {
    /// Parses a `magnet:?` URI.
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        if uri.len() > MAGNET_URI_MAX_BYTES {
            return Err(MagnetError::TooLong(uri.len()));
        }
        let query = uri
            .get(..8)
            .filter(|scheme| scheme.eq_ignore_ascii_case("magnet:?"))
            .map(|_| &uri[8..])
            .ok_or(MagnetError::NotMagnet)?;
        let mut info_hash = None;
        let mut saw_btmh = false;
        let mut magnet = Magnet {
            info_hash: InfoHash::default(),
            display_name: None,
            trackers: Vec::new(),
            peers: Vec::new(),
            exact_length: None,
            web_seeds: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |raw: &str| -> Result<String, MagnetError> {
                percent_decode_str(raw)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| MagnetError::BadEncoding { key: key.to_string() })
            };
            // `xt.1`, `tr.2`...: BEP 9 allows numbered repeats.
            let base = key.split_once('.').map_or(key, |(b, n)| {
                if n.bytes().all(|c| c.is_ascii_digit()) {
                    b
                } else {
                    key
                }
            });
            match base {
                "xt" => {
                    let value = decode(raw)?;
                    let lower = value.to_ascii_lowercase();
                    if let Some(hash) = lower.strip_prefix("urn:btih:") {
                        if info_hash.is_none() {
                            info_hash = Some(parse_btih(&value[value.len() - hash.len()..])?);
                        }
                    } else if lower.starts_with("urn:btmh:") {
                        saw_btmh = true;
                    }
                }
                "dn" => {
                    let value = decode(&raw.replace('+', " "))?;
                    magnet.display_name = Some(value);
                }
                "tr" => {
                    let value = decode(raw)?;
                    if !magnet.trackers.contains(&value) {
                        if magnet.trackers.len() == TRACKERS_MAX {
                            return Err(MagnetError::TooMany { key: "tr", limit: TRACKERS_MAX });
                        }
                        magnet.trackers.push(value);
                    }
                }
                "x.pe" => {
                    let value = decode(raw)?;
                    let port =
                        value.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
                    match port {
                        Some((host, Ok(_))) if !host.is_empty() => {}
                        _ => return Err(MagnetError::BadPeer(value)),
                    }
                    if magnet.peers.len() == PEERS_MAX {
                        return Err(MagnetError::TooMany { key: "x.pe", limit: PEERS_MAX });
                    }
                    magnet.peers.push(value);
                }
                "ws" => {
                    let value = decode(raw)?;
                    if !magnet.web_seeds.contains(&value) {
                        if magnet.web_seeds.len() == WEB_SEEDS_MAX {
                            return Err(MagnetError::TooMany { key: "ws", limit: WEB_SEEDS_MAX });
                        }
                        magnet.web_seeds.push(value);
                    }
                }
                "xl" => {
                    let value = decode(raw)?;
                    magnet.exact_length =
                        Some(value.parse().map_err(|_| MagnetError::BadLength(value))?);
                }
                _ => {}
            }
        }
        magnet.info_hash = match info_hash {
            Some(h) => h,
            None if saw_btmh => return Err(MagnetError::V2Only),
            None => return Err(MagnetError::NoInfoHash),
        };
        Ok(magnet)
    }

    /// The magnet URI for this link (hex info hash, parameters percent-encoded).
    pub fn to_uri(&self) -> String {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let mut uri = format!("magnet:?xt=urn:btih:{}", self.info_hash.to_hex());
        if let Some(dn) = &self.display_name {
            uri.push_str(&format!("&dn={}", utf8_percent_encode(dn, NON_ALPHANUMERIC)));
        }
        if let Some(xl) = self.exact_length {
            uri.push_str(&format!("&xl={xl}"));
        }
        for tr in &self.trackers {
            uri.push_str(&format!("&tr={}", utf8_percent_encode(tr, NON_ALPHANUMERIC)));
        }
        for pe in &self.peers {
            uri.push_str(&format!("&x.pe={}", utf8_percent_encode(pe, NON_ALPHANUMERIC)));
        }
        for ws in &self.web_seeds {
            uri.push_str(&format!("&ws={}", utf8_percent_encode(ws, NON_ALPHANUMERIC)));
        }
        uri
    }
}

/// The bytes of a .torrent file for an info dictionary fetched from peers
/// (`info_bytes`, kept verbatim so the info hash stays the same) and a
/// magnet's trackers (each its own tier, as libtorrent does for `tr=`).
pub fn torrent_file_bytes(info_bytes: &[u8], trackers: &[String]) -> Vec<u8> {
    torrent_file_bytes_with_web_seeds(info_bytes, trackers, &[])
}

/// [`torrent_file_bytes`] with a magnet's web seeds as `url-list` (BEP 19).
pub fn torrent_file_bytes_with_web_seeds(
    info_bytes: &[u8],
    trackers: &[String],
    web_seeds: &[String],
) -> Vec<u8> {
    use crate::bencode::{encode_bytes, OwnedValue};
    let mut out = Vec::with_capacity(info_bytes.len() + 64 + trackers.len() * 64);
    out.push(b'd');
    if let Some(first) = trackers.first() {
        encode_bytes(&mut out, b"announce");
        encode_bytes(&mut out, first.as_bytes());
        encode_bytes(&mut out, b"announce-list");
        let tiers: Vec<OwnedValue> =
            trackers.iter().map(|t| OwnedValue::List(vec![OwnedValue::from(t.as_str())])).collect();
        OwnedValue::List(tiers).encode_into(&mut out);
    }
    encode_bytes(&mut out, b"info");
    out.extend_from_slice(info_bytes);
    if !web_seeds.is_empty() {
        // Keys in order: `url-list` sorts after `info`.
        encode_bytes(&mut out, b"url-list");
        let urls: Vec<OwnedValue> =
            web_seeds.iter().map(|u| OwnedValue::from(u.as_str())).collect();
        OwnedValue::List(urls).encode_into(&mut out);
    }
    out.push(b'e');
    out
}

/// 40 hex digits or 32 base32 characters (either case) -> info hash.
fn parse_btih(s: &str) -> Result<InfoHash, MagnetError> {
    let bad = || MagnetError::BadInfoHash(s.chars().take(64).collect());
    match s.len() {
        40 => InfoHash::from_hex(s).ok_or_else(bad),
        32 => {
            let bytes = data_encoding::BASE32_NOPAD
                .decode(s.to_ascii_uppercase().as_bytes())
                .map_err(|_| bad())?;
            let array: [u8; 20] = bytes.try_into().map_err(|_| bad())?;
            Ok(InfoHash(array))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c9e15763f722f23e98a29decdfae341b98d53056";

    #[test]
    fn full_link() {
        let uri = format!(
            "magnet:?xt=urn:btih:{}&dn=Big+Buck%20Bunny&tr=udp%3A%2F%2Ft1%3A80&tr=http://t2/a?x=1%2B2\
             &tr=udp%3A%2F%2Ft1%3A80&x.pe=127.0.0.1:6881&x.pe=[::1]:7000&xl=1234&so=0-3",
            HEX.to_uppercase()
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.info_hash.to_hex(), HEX);
        assert_eq!(m.display_name.as_deref(), Some("Big Buck Bunny"));
        assert_eq!(m.trackers, vec!["udp://t1:80", "http://t2/a?x=1+2"]);
        assert_eq!(m.peers, vec!["127.0.0.1:6881", "[::1]:7000"]);
        assert_eq!(m.exact_length, Some(1234));
        assert_eq!(Magnet::parse(&m.to_uri()).unwrap(), m);
    }

    #[test]
    fn base32() {
        let h = InfoHash::from_hex(HEX).unwrap();
        let b32 = data_encoding::BASE32_NOPAD.encode(&h.0);
        assert_eq!(b32.len(), 32);
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", b32.to_lowercase())).unwrap();
        assert_eq!(m.info_hash, h);
    }

    #[test]
    fn errors() {
        assert_eq!(Magnet::parse("http://x"), Err(MagnetError::NotMagnet));
        assert_eq!(Magnet::parse("magnet:?dn=x"), Err(MagnetError::NoInfoHash));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:1234"),
            Err(MagnetError::BadInfoHash(_))
        ));
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{}", "z".repeat(40))),
            Err(MagnetError::BadInfoHash(_))
        ));
        let v2 = "magnet:?xt=urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e";
        assert_eq!(Magnet::parse(v2), Err(MagnetError::V2Only));
        let hybrid = format!("{v2}&xt=urn:btih:{HEX}");
        assert_eq!(Magnet::parse(&hybrid).unwrap().info_hash.to_hex(), HEX);
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&tr=%FF")),
            Err(MagnetError::BadEncoding { .. })
        ));
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&xl=-1")),
            Err(MagnetError::BadLength(_))
        ));
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&x.pe=nope")),
            Err(MagnetError::BadPeer(_))
        ));
        let many: String = (0..=TRACKERS_MAX).map(|i| format!("&tr=u{i}")).collect();
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}{many}")),
            Err(MagnetError::TooMany { key: "tr", .. })
        ));
        assert!(matches!(Magnet::parse(&"a".repeat(100_000)), Err(MagnetError::TooLong(_))));
    }

    #[test]
    fn torrent_file_keeps_the_info_bytes() {
        use crate::bencode::OwnedValue;
        let pieces = vec![7u8; 20];
        let info = OwnedValue::dict()
            .with("length", 5i64)
            .with("name", "a.bin")
            .with("piece length", 16384i64)
            .with("pieces", pieces)
            .encode();
        let trackers = ["http://127.0.0.1:1/announce".to_string(), "udp://t:2".to_string()];
        for trackers in [&trackers[..], &[]] {
            let bytes = torrent_file_bytes(&info, trackers);
            let m = crate::metainfo::Metainfo::from_bytes(&bytes).unwrap();
            assert_eq!(m.info_bytes, info);
            assert_eq!(m.info.name, "a.bin");
            assert_eq!(m.tracker_tiers().concat(), trackers);
        }
        // BEP 19 `ws=`: parsed, deduplicated, round-tripped, kept as url-list.
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&ws=http%3A%2F%2F127.0.0.1%3A8%2Fa%20b%2F&ws=http://h/x&ws=http://h/x"
        );
        let magnet = Magnet::parse(&uri).unwrap();
        assert_eq!(magnet.web_seeds, ["http://127.0.0.1:8/a b/", "http://h/x"]);
        assert_eq!(Magnet::parse(&magnet.to_uri()).unwrap(), magnet);
        let bytes = torrent_file_bytes_with_web_seeds(&info, &trackers, &magnet.web_seeds);
        let m = crate::metainfo::Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(m.info_bytes, info);
        assert_eq!(m.url_list, magnet.web_seeds);
        let many: String = (0..=WEB_SEEDS_MAX).map(|i| format!("&ws=http://h/{i}")).collect();
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}{many}")),
            Err(MagnetError::TooMany { key: "ws", .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = Magnet::parse(&s);
            let _ = Magnet::parse(&format!("magnet:?{s}"));
            let _ = Magnet::parse(&format!("magnet:?xt=urn:btih:{s}"));
        }
    }
}
