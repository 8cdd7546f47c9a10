//! Peer exchange (BEP 11, `ut_pex`): the message codec and the per-peer
//! send/receive state.
//!
//! Layer: pure core. The torrent core ([`crate::torrent`]) owns one
//! [`PexSender`] per connection and one [`PexInbox`] per torrent; it decides
//! which addresses are ours to share (only peers we are connected to, by
//! their listen address) and feeds what peers tell us to the driver's
//! candidate list.
//!
//! Sending: at most one message per [`PEX_INTERVAL`] per peer; the first one
//! lists up to [`MAX_PEX_FIRST_ADDED`] peers, later ones at most
//! [`MAX_PEX_ADDED`] added and [`MAX_PEX_DROPPED`] dropped, and a peer is
//! listed as dropped only after we listed it as added (`sent` holds exactly
//! what the peer was told is connected).
//!
//! Receiving: a message is refused past [`MAX_PEX_MESSAGE_BYTES`]; at most
//! [`MAX_PEX_ACCEPTED_PER_MESSAGE`] addresses of one message are taken, a
//! peer's messages closer than [`MIN_PEX_RECEIVE_INTERVAL`] are ignored, and
//! a torrent keeps at most [`MAX_PEX_PEERS`] addresses learned this way, so
//! PEX never fills the whole candidate list (trackers and the DHT keep
//! room). Duplicates are ignored. Private torrents (BEP 27) never use PEX:
//! the torrent core neither sends nor reads it for them.

use crate::bencode::{self, DecodeLimits, OwnedValue};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Our extension id for `ut_pex` (in our extension handshake).
pub const UT_PEX_ID: u8 = crate::wire::extension::UT_PEX_ID;

/// One message per peer this often at most (BEP 11).
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);

/// Added peers in the first message at most.
pub const MAX_PEX_FIRST_ADDED: usize = 200;

/// Added peers in each later message at most (BEP 11).
pub const MAX_PEX_ADDED: usize = 50;

/// Dropped peers in each later message at most (BEP 11).
pub const MAX_PEX_DROPPED: usize = 50;

/// Longest `ut_pex` payload read (10,000 IPv6 entries fit in 200 KiB; an
/// honest message is at most a few KiB).
pub const MAX_PEX_MESSAGE_BYTES: usize = 256 * 1024;

/// Addresses taken from one received message at most; the rest are ignored.
pub const MAX_PEX_ACCEPTED_PER_MESSAGE: usize = 100;

/// Addresses learned by PEX kept per torrent at most.
pub const MAX_PEX_PEERS: usize = 500;

/// A peer's messages closer together than this are ignored (BEP 11 asks for
/// one a minute; a little slack for timer jitter).
pub const MIN_PEX_RECEIVE_INTERVAL: Duration = Duration::from_secs(45);

/// Flag bits of `added.f` (BEP 11).
pub const FLAG_ENCRYPTION: u8 = 0x01;
pub const FLAG_SEED: u8 = 0x02;
pub const FLAG_UTP: u8 = 0x04;
pub const FLAG_HOLEPUNCH: u8 = 0x08;
pub const FLAG_REACHABLE: u8 = 0x10;

/// Bencode limits: a flat dictionary of byte strings.
const DECODE_LIMITS: DecodeLimits = DecodeLimits { depth_max: 2, tokens_max: 64 };

/// A decoded `ut_pex` message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Added peers and their flags (0 when the sender gave none).
    pub added: Vec<(SocketAddr, u8)>,
    pub dropped: Vec<SocketAddr>,
}

/// Why a `ut_pex` message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PexError {
    #[error("ut_pex message is {0} bytes, over the limit of {MAX_PEX_MESSAGE_BYTES}")]
    TooLong(usize),
    #[error("ut_pex message is not valid bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("ut_pex message is not a dictionary")]
    NotADictionary,
}

impl PexMessage {
    /// Reads a message; at most `max_entries` addresses of each list are
    /// kept (the rest are counted in the returned number).
    pub fn decode(payload: &[u8], max_entries: usize) -> Result<(PexMessage, usize), PexError> {
        if payload.len() > MAX_PEX_MESSAGE_BYTES {
            return Err(PexError::TooLong(payload.len()));
        }
        let value = bencode::decode_with(payload, DECODE_LIMITS)?;
        let dict = value.as_dict().ok_or(PexError::NotADictionary)?;
        let bytes = |key: &[u8]| dict.get(key).and_then(|v| v.as_bytes()).unwrap_or(&[]);
        let mut msg = PexMessage::default();
        let mut ignored = 0;
        for (list, flags, len) in
            [(&b"added"[..], &b"added.f"[..], 6), (b"added6", b"added6.f", 18)]
        {
            let entries = bytes(list).chunks_exact(len);
            let flags = bytes(flags);
            for (i, entry) in entries.enumerate() {
                if msg.added.len() >= max_entries {
                    ignored += 1;
                    continue;
                }
                if let Some(addr) = compact(entry) {
                    msg.added.push((addr, flags.get(i).copied().unwrap_or(0)));
                }
            }
        }
        for (list, len) in [(&b"dropped"[..], 6), (b"dropped6", 18)] {
            for entry in bytes(list).chunks_exact(len) {
                if msg.dropped.len() >= max_entries {
                    ignored += 1;
                    continue;
                }
                msg.dropped.extend(compact(entry));
            }
        }
        Ok((msg, ignored))
    }

    /// Appends the bencoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut added = Vec::new();
        let mut added_f = Vec::new();
        let mut added6 = Vec::new();
        let mut added6_f = Vec::new();
        for &(addr, flags) in &self.added {
            match addr {
                SocketAddr::V4(_) => {
                    put_compact(&mut added, addr);
                    added_f.push(flags);
                }
                SocketAddr::V6(_) => {
                    put_compact(&mut added6, addr);
                    added6_f.push(flags);
                }
            }
        }
        let mut dropped = Vec::new();
        let mut dropped6 = Vec::new();
        for &addr in &self.dropped {
            match addr {
                SocketAddr::V4(_) => put_compact(&mut dropped, addr),
                SocketAddr::V6(_) => put_compact(&mut dropped6, addr),
            }
        }
        OwnedValue::dict()
            .with("added", added)
            .with("added.f", added_f)
            .with("added6", added6)
            .with("added6.f", added6_f)
            .with("dropped", dropped)
            .with("dropped6", dropped6)
            .encode_into(out);
    }
}

fn compact(entry: &[u8]) -> Option<SocketAddr> {
    let (ip, port): (IpAddr, &[u8]) = match entry.len() {
        6 => (Ipv4Addr::new(entry[0], entry[1], entry[2], entry[3]).into(), &entry[4..]),
        18 => {
            let octets: [u8; 16] = entry[..16].try_into().ok()?;
            (Ipv6Addr::from(octets).into(), &entry[16..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    (port != 0 && !ip.is_unspecified() && !ip.is_multicast()).then_some(SocketAddr::new(ip, port))
}

fn put_compact(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// What we told one peer, and when.
#[derive(Debug, Default)]
pub struct PexSender {
    /// The peers this peer was told are connected (added, not dropped since).
    sent: HashSet<SocketAddr>,
    last_sent: Option<Instant>,
    /// Scratch set reused between rounds.
    scratch: HashSet<SocketAddr>,
}

impl PexSender {
    /// The next message for this peer, if one is due: `connected` is every
    /// peer we are connected to now (listen address and flags), excluding
    /// the peer itself. `None` when not due or nothing changed.
    pub fn poll(&mut self, connected: &[(SocketAddr, u8)], now: Instant) -> Option<PexMessage> {
        if self.last_sent.is_some_and(|t| now.saturating_duration_since(t) < PEX_INTERVAL) {
            return None;
        }
        let first = self.last_sent.is_none();
        let max_added = if first { MAX_PEX_FIRST_ADDED } else { MAX_PEX_ADDED };
        let mut msg = PexMessage::default();
        self.scratch.clear();
        self.scratch.extend(connected.iter().map(|&(a, _)| a));
        for &(addr, flags) in connected {
            if msg.added.len() == max_added {
                break;
            }
            if !self.sent.contains(&addr) {
                msg.added.push((addr, flags));
            }
        }
        for &addr in &self.sent {
            if msg.dropped.len() == MAX_PEX_DROPPED {
                break;
            }
            if !self.scratch.contains(&addr) {
                msg.dropped.push(addr);
            }
        }
        if msg.added.is_empty() && msg.dropped.is_empty() {
            return None;
        }
        for &(addr, _) in &msg.added {
            self.sent.insert(addr);
        }
        for addr in &msg.dropped {
            self.sent.remove(addr);
        }
        self.last_sent = Some(now);
        Some(msg)
    }

    /// Peers this peer was told are connected now.
    pub fn sent(&self) -> &HashSet<SocketAddr> {
        &self.sent
    }
}

/// The addresses one torrent learned by PEX.
#[derive(Debug, Default)]
pub struct PexInbox {
    learned: HashSet<SocketAddr>,
    /// Addresses ignored because of the bounds (for logs and tests).
    pub ignored: u64,
}

impl PexInbox {
    /// Takes the new addresses of a message from a peer (whose previous
    /// message was at `last`): returns those never seen before, within the
    /// per-message and per-torrent bounds.
    pub fn receive(
        &mut self,
        payload: &[u8],
        last: Option<Instant>,
        now: Instant,
    ) -> Result<Vec<SocketAddr>, PexError> {
        if last.is_some_and(|t| now.saturating_duration_since(t) < MIN_PEX_RECEIVE_INTERVAL) {
            self.ignored += 1;
            return Ok(Vec::new());
        }
        let (msg, ignored) = PexMessage::decode(payload, MAX_PEX_ACCEPTED_PER_MESSAGE)?;
        self.ignored += ignored as u64;
        let mut fresh = Vec::new();
        for (addr, _) in msg.added {
            if self.learned.len() >= MAX_PEX_PEERS {
                self.ignored += 1;
                continue;
            }
            if self.learned.insert(addr) {
                fresh.push(addr);
            }
        }
        Ok(fresh)
    }

    /// Addresses learned so far.
    pub fn learned(&self) -> usize {
        self.learned.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(n: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], port))
    }

    #[test]
    fn round_trip_v4_and_v6() {
        let msg = PexMessage {
            added: vec![
                (v4(1, 6881), FLAG_SEED | FLAG_REACHABLE),
                ("[::1]:7000".parse().unwrap(), 0),
            ],
            dropped: vec![v4(2, 1), "[fe80::1]:9".parse().unwrap()],
        };
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(PexMessage::decode(&out, 100).unwrap(), (msg, 0));
    }

    #[test]
    fn decode_is_tolerant_and_bounded() {
        // Missing flags, a short trailing entry, port 0: tolerated or skipped.
        let d = OwnedValue::dict()
            .with("added", [10, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0, 0, 9, 9].to_vec())
            .encode();
        let (msg, ignored) = PexMessage::decode(&d, 100).unwrap();
        assert_eq!(msg.added, vec![(v4(1, 6881), 0)]);
        assert_eq!(ignored, 0);
        // 10,000 entries: 100 kept, the rest counted.
        let many: Vec<u8> = (0..10_000u32)
            .flat_map(|i| {
                let b = i.to_be_bytes();
                [127, b[1], b[2], b[3], 0x1a, 0xe1]
            })
            .collect();
        let d = OwnedValue::dict().with("added", many).encode();
        let (msg, ignored) = PexMessage::decode(&d, 100).unwrap();
        assert_eq!((msg.added.len(), ignored), (100, 9_900));
        assert!(PexMessage::decode(b"le", 10).is_err());
        assert!(PexMessage::decode(&vec![b'x'; MAX_PEX_MESSAGE_BYTES + 1], 10).is_err());
    }

    #[test]
    fn sender_paces_bounds_and_matches_dropped() {
        let t0 = Instant::now();
        let mut s = PexSender::default();
        let peers: Vec<_> = (1..=120).map(|n| (v4(n, 1000), 0)).collect();
        let first = s.poll(&peers, t0).unwrap();
        assert_eq!(first.added.len(), 120);
        assert!(first.dropped.is_empty());
        // Not again within the minute, whatever changed.
        assert!(s.poll(&peers[..10], t0 + Duration::from_secs(59)).is_none());
        // A minute later: 110 gone, 60 new; bounded to 50 each.
        let mut now: Vec<_> = peers[..10].to_vec();
        now.extend((121..=180).map(|n| (v4(n, 1000), 0)));
        let t1 = t0 + PEX_INTERVAL;
        let second = s.poll(&now, t1).unwrap();
        assert_eq!(second.added.len(), MAX_PEX_ADDED);
        assert_eq!(second.dropped.len(), MAX_PEX_DROPPED);
        // Every dropped peer had been sent as added.
        for d in &second.dropped {
            assert!(peers.iter().any(|(a, _)| a == d));
        }
        // The rest follow in later minutes; in the end `sent` is exactly `now`.
        let mut t = t1;
        for _ in 0..10 {
            t += PEX_INTERVAL;
            if s.poll(&now, t).is_none() {
                break;
            }
        }
        let want: HashSet<_> = now.iter().map(|(a, _)| *a).collect();
        assert_eq!(s.sent(), &want);
    }

    #[test]
    fn inbox_ignores_duplicates_floods_and_fast_senders() {
        let t0 = Instant::now();
        let mut inbox = PexInbox::default();
        let msg = |range: std::ops::Range<u32>| {
            let m = PexMessage {
                added: range
                    .map(|i| (SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 7)), 0))
                    .collect(),
                dropped: vec![],
            };
            let mut out = Vec::new();
            m.encode(&mut out);
            out
        };
        assert_eq!(inbox.receive(&msg(0..10), None, t0).unwrap().len(), 10);
        // Same peers again: nothing new.
        let t1 = t0 + PEX_INTERVAL;
        assert!(inbox.receive(&msg(0..10), Some(t0), t1).unwrap().is_empty());
        // Too soon after the last one: ignored whole.
        assert!(inbox
            .receive(&msg(10..20), Some(t1), t1 + Duration::from_secs(1))
            .unwrap()
            .is_empty());
        // Floods: per-message and per-torrent bounds.
        let mut t = t1;
        for round in 0..20u32 {
            t += PEX_INTERVAL;
            let fresh =
                inbox.receive(&msg(1000 + round * 1000..2000 + round * 1000), None, t).unwrap();
            assert!(fresh.len() <= MAX_PEX_ACCEPTED_PER_MESSAGE);
        }
        assert_eq!(inbox.learned(), MAX_PEX_PEERS);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = PexMessage::decode(&buf, 50);
        }
    }
}
