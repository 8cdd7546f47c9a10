//! The BEP 10 extension handshake: the bencoded dictionary carried by the
//! extended message with sub-id 0.
//!
//! Decoding is tolerant (unknown keys are ignored, a known key with the wrong
//! type is treated as absent, as libtorrent does) and bounded (the payload is
//! already capped by [`super::WireLimits::max_extended_len`]; the bencode
//! decoder is given a small depth and token limit; at most
//! [`MAX_EXTENSIONS`] entries of `m` are kept and strings are truncated).

use crate::bencode::{self, DecodeLimits, OwnedValue};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Our local id for `ut_metadata` (BEP 9): peers send their metadata
/// requests (to a torrent we have) and pieces (to a fetch, see
/// [`crate::metadata`]) on it.
pub const UT_METADATA_ID: u8 = 1;

/// Our local id for `ut_pex` (BEP 11): peers send their peer-exchange
/// messages on it (see [`crate::pex`]). Not advertised on private torrents.
pub const UT_PEX_ID: u8 = 2;

/// Most entries of a peer's `m` dictionary we keep; real clients send < 10.
pub const MAX_EXTENSIONS: usize = 32;

/// Longest extension name we keep; longer names are ignored.
pub const MAX_EXTENSION_NAME_LEN: usize = 64;

/// Longest client name (`v`) we keep; longer ones are truncated.
pub const MAX_CLIENT_NAME_LEN: usize = 64;

/// Bencode limits for the handshake dictionary: `m` is the deepest value
/// (depth 2); 1,000 values are plenty for any honest client.
const DECODE_LIMITS: DecodeLimits = DecodeLimits { depth_max: 8, tokens_max: 1_000 };

/// Our client name in `v`.
pub const CLIENT_NAME: &str = concat!("ringbit ", env!("CARGO_PKG_VERSION"));

/// A BEP 10 handshake dictionary (ours or a peer's). Every field is optional
/// on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExtensionHandshake {
    /// `m`: extension name -> the id the *sender* wants that extension's
    /// messages sent to it with. Id 0 means "disabled" and is not kept.
    pub extensions: Vec<(String, u8)>,
    /// `v`: client name and version.
    pub client: Option<String>,
    /// `reqq`: how many outstanding requests the sender keeps queued for us
    /// (BEP 10 says libtorrent's default, 250, applies when absent).
    pub reqq: Option<u32>,
    /// `p`: the sender's listen port.
    pub listen_port: Option<u16>,
    /// `yourip`: our address as the sender sees it.
    pub your_ip: Option<IpAddr>,
    /// `metadata_size` (BEP 9): the size of the info dictionary in bytes.
    pub metadata_size: Option<u64>,
}

/// Why an extension handshake could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    #[error("extension handshake is not valid bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("extension handshake is a {0}, not a dictionary")]
    NotADictionary(&'static str),
}

impl ExtensionHandshake {
    /// What we send: `ut_metadata` (see [`UT_METADATA_ID`]), `ut_pex`
    /// ([`UT_PEX_ID`]; the peer drops it for private torrents), our client name,
    /// the request queue depth we serve (`reqq`), our listen port, the
    /// address we see the peer at, and the metadata size when we have it.
    pub fn ours(
        reqq: u32,
        listen_port: Option<u16>,
        your_ip: Option<IpAddr>,
        metadata_size: Option<u64>,
    ) -> ExtensionHandshake {
        ExtensionHandshake {
            extensions: vec![
                ("ut_metadata".to_string(), UT_METADATA_ID),
                ("ut_pex".to_string(), UT_PEX_ID),
            ],
            client: Some(CLIENT_NAME.to_string()),
            reqq: Some(reqq),
            listen_port,
            your_ip,
            metadata_size,
        }
    }

    /// The id the sender listens on for extension `name`, if it supports it.
    pub fn extension_id(&self, name: &str) -> Option<u8> {
        self.extensions.iter().find(|(n, _)| n == name).map(|&(_, id)| id)
    }

    /// Appends the bencoded dictionary (the extended message's payload after
    /// the sub-id) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut m = OwnedValue::dict();
        for (name, id) in &self.extensions {
            m.insert(name, i64::from(*id));
        }
        let mut d = OwnedValue::dict().with("m", m);
        if let Some(v) = &self.client {
            d.insert("v", v.as_str());
        }
        if let Some(reqq) = self.reqq {
            d.insert("reqq", i64::from(reqq));
        }
        if let Some(p) = self.listen_port {
            d.insert("p", i64::from(p));
        }
        if let Some(ip) = self.your_ip {
            let bytes = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            d.insert("yourip", bytes);
        }
        if let Some(size) = self.metadata_size {
            d.insert("metadata_size", i64::try_from(size).unwrap_or(i64::MAX));
        }
        d.encode_into(out);
    }

    /// Reads a peer's handshake dictionary.
    pub fn decode(payload: &[u8]) -> Result<ExtensionHandshake, ExtensionError> {
        let value = bencode::decode_with(payload, DECODE_LIMITS)?;
        let dict = value.as_dict().ok_or(ExtensionError::NotADictionary(value.type_name()))?;
        let mut hs = ExtensionHandshake::default();
        if let Some(m) = dict.get(b"m").and_then(|m| m.as_dict()) {
            for (name, id) in m.iter() {
                let Ok(name) = std::str::from_utf8(name) else { continue };
                let Some(id) = id.as_int().and_then(|i| u8::try_from(i).ok()) else { continue };
                if id == 0 || name.len() > MAX_EXTENSION_NAME_LEN {
                    continue;
                }
                if hs.extensions.len() == MAX_EXTENSIONS {
                    break;
                }
                hs.extensions.push((name.to_string(), id));
            }
        }
        hs.client = dict.get(b"v").and_then(|v| v.as_bytes()).map(|v| {
            let v = &v[..v.len().min(MAX_CLIENT_NAME_LEN)];
            String::from_utf8_lossy(v).into_owned()
        });
        let uint = |key: &[u8]| dict.get(key).and_then(|v| v.as_int()).filter(|&i| i >= 0);
        hs.reqq = uint(b"reqq").map(|i| u32::try_from(i).unwrap_or(u32::MAX));
        hs.listen_port = uint(b"p").and_then(|i| u16::try_from(i).ok()).filter(|&p| p != 0);
        hs.metadata_size = uint(b"metadata_size").map(|i| i as u64);
        hs.your_ip = dict.get(b"yourip").and_then(|v| v.as_bytes()).and_then(|b| {
            if let Ok(v4) = <[u8; 4]>::try_from(b) {
                Some(IpAddr::V4(Ipv4Addr::from(v4)))
            } else {
                <[u8; 16]>::try_from(b).ok().map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
            }
        });
        Ok(hs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ours_round_trips() {
        for ip in
            [None, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), Some(IpAddr::V6(Ipv6Addr::LOCALHOST))]
        {
            let hs = ExtensionHandshake::ours(500, Some(6881), ip, Some(12345));
            let mut out = Vec::new();
            hs.encode(&mut out);
            assert_eq!(ExtensionHandshake::decode(&out), Ok(hs.clone()));
            assert_eq!(hs.extension_id("ut_metadata"), Some(UT_METADATA_ID));
            assert_eq!(hs.extension_id("ut_pex"), Some(UT_PEX_ID));
            assert_eq!(hs.extension_id("lt_donthave"), None);
        }
    }

    #[test]
    fn canonical_bytes() {
        let hs = ExtensionHandshake {
            extensions: vec![("ut_metadata".into(), 1)],
            client: Some("x".into()),
            reqq: Some(250),
            listen_port: Some(1),
            your_ip: None,
            metadata_size: None,
        };
        let mut out = Vec::new();
        hs.encode(&mut out);
        assert_eq!(out, b"d1:md11:ut_metadatai1ee1:pi1e4:reqqi250e1:v1:xe");
    }

    #[test]
    fn tolerant_of_unknown_keys_and_wrong_types() {
        // A libtorrent-like handshake with extra keys, a disabled extension,
        // a string where an int belongs and an out-of-range port.
        let payload = b"d1:ei0e4:ipv616:abcdefghijklmnop1:md11:lt_donthavei7e11:ut_metadatai3e6:ut_pexi0e5:weirdi999ee13:metadata_sizei31235e1:pi70000e4:reqq3:abc1:v13:libtorrent2.06:yourip4:\x7f\x00\x00\x01e";
        let hs = ExtensionHandshake::decode(payload).unwrap();
        assert_eq!(
            hs.extensions,
            vec![("lt_donthave".to_string(), 7), ("ut_metadata".to_string(), 3)]
        );
        assert_eq!(hs.metadata_size, Some(31235));
        assert_eq!(hs.listen_port, None);
        assert_eq!(hs.reqq, None);
        assert_eq!(hs.client.as_deref(), Some("libtorrent2.0"));
        assert_eq!(hs.your_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(ExtensionHandshake::decode(b"de"), Ok(ExtensionHandshake::default()));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            ExtensionHandshake::decode(b"li1ee"),
            Err(ExtensionError::NotADictionary(_))
        ));
        assert!(matches!(ExtensionHandshake::decode(b"d1:m"), Err(ExtensionError::Bencode(_))));
        assert!(matches!(ExtensionHandshake::decode(b""), Err(ExtensionError::Bencode(_))));
        let deep = [b"d1:m".as_slice(), &[b'l'; 20], &[b'e'; 21]].concat();
        assert!(matches!(ExtensionHandshake::decode(&deep), Err(ExtensionError::Bencode(_))));
    }

    #[test]
    fn extension_count_and_strings_are_bounded() {
        let mut m = OwnedValue::dict();
        for i in 0..100 {
            m.insert(format!("ext{i:03}"), 1i64);
        }
        m.insert("x".repeat(100), 1i64);
        let d = OwnedValue::dict().with("m", m).with("v", "v".repeat(1000));
        let hs = ExtensionHandshake::decode(&d.encode()).unwrap();
        assert_eq!(hs.extensions.len(), MAX_EXTENSIONS);
        assert_eq!(hs.client.unwrap().len(), MAX_CLIENT_NAME_LEN);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ExtensionHandshake::decode(&buf);
        }
    }
}
