//! Tracker protocol codecs (HTTP BEP 3/23/7, UDP BEP 15/41) and the BEP 12
//! tier schedule.
//!
//! Layer: pure core. Nothing here opens a socket, reads the clock or names a
//! runtime: codecs turn requests into bytes and bytes into typed replies, and
//! [`schedule::Announcer`] decides *which* tracker to announce to *when*, given
//! the `now` its driver passes in. The transports live in `src/net`.
//!
//! Invariants:
//! * every decoder is total: arbitrary bytes give a typed error, never a panic;
//! * every decoded list is bounded ([`MAX_PEERS_PER_REPLY`], message lengths
//!   [`MAX_TRACKER_MESSAGE_BYTES`]).

pub mod http;
pub mod schedule;
pub mod udp;

use crate::metainfo::InfoHash;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Most peers kept from one reply (a tracker asked for `numwant` 200 never
/// legitimately sends thousands; more is truncated, not an error).
pub const MAX_PEERS_PER_REPLY: usize = 2000;

/// Longest `failure reason` / `warning message` / UDP error text kept, in bytes.
pub const MAX_TRACKER_MESSAGE_BYTES: usize = 1024;

/// Longest tracker URL accepted, in bytes.
pub const MAX_TRACKER_URL_BYTES: usize = 2048;

/// Announce event (BEP 3; UDP codes from BEP 15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Event {
    /// A regular, periodic announce.
    #[default]
    None,
    Started,
    Completed,
    Stopped,
}

impl Event {
    /// The HTTP `event=` value, or `None` for a periodic announce.
    pub fn http_name(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }

    /// The BEP 15 event code.
    pub fn udp_code(self) -> u32 {
        match self {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.http_name().unwrap_or("none"))
    }
}

/// Everything one announce says about us, whatever the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    /// Our listening port.
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes we still miss (0 for a seeder).
    pub left: u64,
    pub event: Event,
    /// Peers wanted; `None` lets the tracker choose.
    pub numwant: Option<u32>,
    /// Random per session, lets a tracker recognise us across IP changes.
    pub key: u32,
    /// The `tracker id` a previous HTTP reply gave (BEP 3), sent back.
    pub tracker_id: Option<Vec<u8>>,
    /// Our MSE policy, told to HTTP trackers as `supportcrypto=1`
    /// (`prefer`) or also `requirecrypto=1` (`require`).
    pub encryption: crate::mse::EncryptionPolicy,
}

/// A successful announce reply, whatever the transport.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceReply {
    /// Seconds until the tracker wants the next regular announce.
    pub interval_secs: u32,
    /// Seconds we must wait at least before announcing again (HTTP only).
    pub min_interval_secs: Option<u32>,
    pub tracker_id: Option<Vec<u8>>,
    /// `complete`: peers with the whole torrent.
    pub seeders: Option<u32>,
    /// `incomplete`: peers still downloading.
    pub leechers: Option<u32>,
    /// At most [`MAX_PEERS_PER_REPLY`], in the tracker's order, unfiltered.
    pub peers: Vec<SocketAddr>,
    pub warning: Option<String>,
    /// BEP 24 `external ip`: how the tracker sees us.
    pub external_ip: Option<IpAddr>,
}

/// One torrent's scrape numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    pub seeders: u32,
    /// Times the torrent was downloaded completely (`downloaded`).
    pub completed: u32,
    pub leechers: u32,
}

/// A tracker URL, classified by transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerUrl {
    /// `http://` or `https://`, kept as written.
    Http(String),
    /// `udp://host:port[/path?query]`.
    Udp {
        host: String,
        port: u16,
        /// Path and query, sent as BEP 41 URLData (empty when the URL has none).
        path_query: String,
    },
}

/// Why a tracker URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("tracker URL is longer than {MAX_TRACKER_URL_BYTES} bytes")]
    TooLong,
    #[error("tracker URL is not a valid URL: {0}")]
    Invalid(String),
    #[error("unsupported tracker scheme `{0}` (http, https and udp are supported)")]
    UnsupportedScheme(String),
    #[error("tracker URL has no host")]
    NoHost,
    #[error("UDP tracker URL has no port")]
    NoPort,
}

impl TrackerUrl {
    /// Parses and classifies a tracker URL.
    pub fn parse(url: &str) -> Result<TrackerUrl, UrlError> {
        if url.len() > MAX_TRACKER_URL_BYTES {
            return Err(UrlError::TooLong);
        }
        let parsed = url::Url::parse(url).map_err(|e| UrlError::Invalid(e.to_string()))?;
        match parsed.scheme() {
            "http" | "https" => {
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(UrlError::NoHost);
                }
                Ok(TrackerUrl::Http(url.to_string()))
            }
            "udp" => {
                let host = match parsed.host() {
                    Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
                    Some(url::Host::Ipv4(ip)) => ip.to_string(),
                    // Kept without brackets: it is resolved, not re-joined.
                    Some(url::Host::Ipv6(ip)) => ip.to_string(),
                    _ => return Err(UrlError::NoHost),
                };
                let port = parsed.port().ok_or(UrlError::NoPort)?;
                let mut path_query = parsed.path().to_string();
                if path_query == "/" {
                    path_query.clear();
                }
                if let Some(q) = parsed.query() {
                    path_query.push('?');
                    path_query.push_str(q);
                }
                Ok(TrackerUrl::Udp { host, port, path_query })
            }
            other => Err(UrlError::UnsupportedScheme(other.to_string())),
        }
    }
}

/// Appends compact IPv4 peers (6 bytes each: address, port, big-endian) to
/// `out`, stopping at [`MAX_PEERS_PER_REPLY`]. `bytes.len()` must be a
/// multiple of 6 (checked by callers, who know how to report it).
pub(crate) fn push_compact_v4(bytes: &[u8], out: &mut Vec<SocketAddr>) {
    for chunk in bytes.chunks_exact(6) {
        if out.len() >= MAX_PEERS_PER_REPLY {
            return;
        }
        let ip = Ipv4Addr::new(chunk[0], chunk[1], chunk[2], chunk[3]);
        let port = u16::from_be_bytes([chunk[4], chunk[5]]);
        out.push(SocketAddr::V4(SocketAddrV4::new(ip, port)));
    }
}

/// Appends compact IPv6 peers (18 bytes each), like [`push_compact_v4`].
pub(crate) fn push_compact_v6(bytes: &[u8], out: &mut Vec<SocketAddr>) {
    for chunk in bytes.chunks_exact(18) {
        if out.len() >= MAX_PEERS_PER_REPLY {
            return;
        }
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&chunk[..16]);
        let port = u16::from_be_bytes([chunk[16], chunk[17]]);
        out.push(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, 0)));
    }
}

/// Text from a tracker, lossily decoded and cut to [`MAX_TRACKER_MESSAGE_BYTES`].
pub(crate) fn bounded_text(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_TRACKER_MESSAGE_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

/// A captured tracker reply from `tests/data/tracker/` (codec tests).
#[cfg(test)]
pub(crate) fn test_fixture(name: &str) -> Vec<u8> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tracker").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_urls() {
        assert_eq!(
            TrackerUrl::parse("http://t.example/announce?x=1").unwrap(),
            TrackerUrl::Http("http://t.example/announce?x=1".into())
        );
        assert!(matches!(TrackerUrl::parse("https://t.example/a"), Ok(TrackerUrl::Http(_))));
        assert_eq!(
            TrackerUrl::parse("udp://tracker.example:6969/announce?passkey=ab").unwrap(),
            TrackerUrl::Udp {
                host: "tracker.example".into(),
                port: 6969,
                path_query: "/announce?passkey=ab".into()
            }
        );
        assert_eq!(
            TrackerUrl::parse("udp://[::1]:80").unwrap(),
            TrackerUrl::Udp { host: "::1".into(), port: 80, path_query: String::new() }
        );
        assert_eq!(TrackerUrl::parse("udp://t.example/announce"), Err(UrlError::NoPort));
        assert!(matches!(
            TrackerUrl::parse("wss://t.example"),
            Err(UrlError::UnsupportedScheme(_))
        ));
        assert!(matches!(TrackerUrl::parse("not a url"), Err(UrlError::Invalid(_))));
        let long = format!("http://t.example/{}", "a".repeat(MAX_TRACKER_URL_BYTES));
        assert_eq!(TrackerUrl::parse(&long), Err(UrlError::TooLong));
    }

    #[test]
    fn compact_peers_decode_and_stop_at_the_bound() {
        let mut out = Vec::new();
        push_compact_v4(&[127, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0, 80], &mut out);
        assert_eq!(out, vec!["127.0.0.1:6881".parse().unwrap(), "10.0.0.2:80".parse().unwrap()]);
        let mut v6 = [0u8; 18];
        v6[15] = 1;
        v6[17] = 7;
        out.clear();
        push_compact_v6(&v6, &mut out);
        assert_eq!(out, vec!["[::1]:7".parse().unwrap()]);
        out.clear();
        push_compact_v4(&vec![1u8; 6 * (MAX_PEERS_PER_REPLY + 5)], &mut out);
        assert_eq!(out.len(), MAX_PEERS_PER_REPLY);
    }
}
