//! Fetching a torrent's info dictionary from peers (BEP 9, `ut_metadata`)
//! for a magnet link: the sans-IO core.
//!
//! Layer: pure core. Owns the connections of one metadata fetch (their
//! handshakes, extension handshakes and `ut_metadata` traffic), which
//! metadata piece is asked of whom, the assembled bytes and the verdict on
//! them. The driver (`shard::metadata`) dials peers, feeds bytes, `now` and
//! ticks in, sends what [`MetadataFetch::take_outgoing`] gives and carries out
//! the [`FetchAction`]s. Peer addresses come from a source list the driver
//! keeps (magnet `x.pe`, `--peer`, trackers, later the DHT): this core only
//! says which addresses it refuses ([`MetadataFetch::wants_connection`]).
//!
//! ```text
//!  connected/accepted ─> handshake ─> extension handshake (ut_metadata, size)
//!    size <= METADATA_SIZE_MAX ─> buffer sized ─> requests (16 KiB pieces,
//!    MAX_REQUESTS_PER_PEER each, spread over every ready peer) ─> data
//!    ─> all pieces ─> SHA1 == info hash ? Complete : blame and refetch
//! ```
//!
//! Blame: when the assembled bytes do not hash to the info hash and one peer
//! sent every piece, that peer is dropped and never dialled again. When
//! several did, nobody can be blamed yet: the fetch goes on *parole* and the
//! next attempt takes every piece from one peer, so the next failure has a
//! single culprit (the same rule as the torrent core's piece parole).
//!
//! Invariants:
//! * the metadata buffer exists only once a size `<=` [`METADATA_SIZE_MAX`]
//!   was chosen, and has exactly that size;
//! * a piece is `Requested` from at most one connection, and a connection has
//!   at most [`MAX_REQUESTS_PER_PEER`] pieces requested;
//! * only bytes whose SHA1 equals the info hash are ever handed out;
//! * hostile input becomes a disconnect with a reason, never a panic.

use crate::metainfo::InfoHash;
use crate::wire::ut_metadata::{self, MetadataMessage, METADATA_PIECE_LEN, METADATA_SIZE_MAX};
use crate::wire::{
    decode, decode_handshake, Decoded, ExtensionHandshake, Handshake, HandshakeDecoded, Message,
    PeerId, Reserved, WireLimits,
};
use sha1::{Digest, Sha1};
use slab::Slab;
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Identifies a connection of the fetch to the driver (reused after close).
pub type FetchConnId = usize;

/// Metadata pieces asked of one peer at once at most.
pub const MAX_REQUESTS_PER_PEER: usize = 16;

/// Connections one fetch keeps at most.
pub const MAX_FETCH_CONNECTIONS: usize = 50;

/// Addresses refused for the rest of the fetch (bad metadata, absurd size)
/// remembered at most.
pub const MAX_BANNED_ADDRS: usize = 1024;

/// A connection whose BitTorrent and extension handshakes are not both in
/// after this long is dropped.
pub const FETCH_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A metadata piece not answered in this time is asked of another peer and
/// the slow one dropped.
pub const METADATA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection silent (not even a keep-alive) this long is dropped.
pub const FETCH_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Outgoing bytes queued per connection at most (our messages are small;
/// past this a peer that never reads is dropped).
pub const MAX_FETCH_OUTGOING_BYTES: usize = 256 * 1024;

/// Our extension id for `ut_metadata` (the one in our extension handshake).
pub const OUR_UT_METADATA_ID: u8 = crate::wire::extension::UT_METADATA_ID;

/// Reserved bits of a fetch connection: the extension protocol only (no fast
/// extension, so no piece set is owed to the peer).
const FETCH_RESERVED: Reserved = Reserved([0, 0, 0, 0, 0, 0x10, 0, 0]);

/// What the fetch is for.
#[derive(Clone, Debug)]
pub struct FetchParams {
    pub info_hash: InfoHash,
    pub our_peer_id: PeerId,
    /// Sent as `p` in our extension handshake.
    pub listen_port: Option<u16>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchAction {
    /// Close the connection (the core has forgotten it).
    Disconnect { conn: FetchConnId, reason: String },
    /// The metadata is complete and verified: take it with
    /// [`MetadataFetch::take_metadata`]. Reported once.
    Complete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's BitTorrent handshake.
    Handshake,
    /// Handshake done, waiting for its extension handshake.
    Extensions,
    /// Ready (or useless: see `ut_metadata_id`).
    Active,
}

#[derive(Debug)]
struct FetchConn {
    key: u64,
    addr: SocketAddr,
    phase: Phase,
    /// The id the peer wants our `ut_metadata` messages on.
    ut_metadata_id: Option<u8>,
    /// The metadata size the peer claims.
    metadata_size: Option<u32>,
    /// The peer rejected a request: it cannot serve (yet).
    rejected: bool,
    /// It dialled us (its address is not a listening one).
    incoming: bool,
    requested: usize,
    outgoing: Vec<u8>,
    connected_at: Instant,
    last_received: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Missing,
    Requested { key: u64, at: Instant },
    Received { from: SocketAddr },
}

/// Why a piece of the metadata was refused (the peer is dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("metadata_size {size} is over the limit of {METADATA_SIZE_MAX} bytes")]
    SizeTooLarge { size: u64 },
    #[error("metadata_size 0")]
    SizeZero,
    #[error("metadata piece {piece} is {got} bytes, expected {expected}")]
    PieceLength { piece: u32, got: usize, expected: u32 },
    #[error("metadata total_size {got} differs from the {expected} bytes being fetched")]
    TotalSize { got: u64, expected: u32 },
}

/// One magnet link's metadata fetch.
#[derive(Debug)]
pub struct MetadataFetch {
    params: FetchParams,
    conns: Slab<FetchConn>,
    next_key: u64,
    /// The size being fetched, once a peer told it.
    size: Option<u32>,
    buffer: Vec<u8>,
    slots: Vec<Slot>,
    /// After a failure with pieces from several peers: every piece must come
    /// from one peer; `Some(key)` once one was chosen.
    parole: bool,
    parole_source: Option<u64>,
    banned: HashSet<std::net::IpAddr>,
    banned_addrs: HashSet<SocketAddr>,
    actions: VecDeque<FetchAction>,
    metadata: Option<Vec<u8>>,
    completed: bool,
    hash_failures: u32,
    limits: WireLimits,
    /// Listen addresses of peers that dialled us (their IP and the `p` of
    /// their extension handshake), for the driver's source list.
    learned: Vec<SocketAddr>,
}

impl MetadataFetch {
    pub fn new(params: FetchParams) -> MetadataFetch {
        MetadataFetch {
            params,
            conns: Slab::new(),
            next_key: 1,
            size: None,
            buffer: Vec::new(),
            slots: Vec::new(),
            parole: false,
            parole_source: None,
            banned: HashSet::new(),
            banned_addrs: HashSet::new(),
            actions: VecDeque::new(),
            metadata: None,
            completed: false,
            hash_failures: 0,
            limits: WireLimits::default(),
            learned: Vec::new(),
        }
    }

    // ---- queries ------------------------------------------------------------

    pub fn info_hash(&self) -> InfoHash {
        self.params.info_hash
    }

    /// Connections whose handshake completed (the "N peers" of the progress).
    pub fn peer_count(&self) -> usize {
        self.conns.iter().filter(|(_, c)| c.phase != Phase::Handshake).count()
    }

    /// Connections open (handshaking or not).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The size being fetched, once known.
    pub fn metadata_size(&self) -> Option<u32> {
        self.size
    }

    /// Times the assembled metadata failed its hash.
    pub fn hash_failures(&self) -> u32 {
        self.hash_failures
    }

    pub fn is_complete(&self) -> bool {
        self.completed
    }

    /// Whether a connection to `addr` may be opened (not full, not refused,
    /// not already connected, not done).
    pub fn wants_connection(&self, addr: SocketAddr) -> bool {
        !self.completed
            && self.conns.len() < MAX_FETCH_CONNECTIONS
            && !self.banned_addrs.contains(&addr)
            && !self.banned.contains(&addr.ip())
            && !self.conns.iter().any(|(_, c)| c.addr == addr)
    }

    /// Whether `addr` was refused for the rest of the fetch (bad metadata,
    /// absurd size): the torrent should not dial it either.
    pub fn is_banned(&self, addr: SocketAddr) -> bool {
        self.banned_addrs.contains(&addr) || self.banned.contains(&addr.ip())
    }

    /// Listen addresses of peers that dialled us, learned since the last
    /// call (the driver adds them to its source list, so the torrent can
    /// dial them back once the metadata is in).
    pub fn take_learned(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.learned)
    }

    /// The verified info dictionary, once (after [`FetchAction::Complete`]).
    pub fn take_metadata(&mut self) -> Option<Vec<u8>> {
        self.metadata.take()
    }

    // ---- connections ----------------------------------------------------------

    /// We connected to `addr`: our handshake is queued.
    pub fn connected(&mut self, addr: SocketAddr, now: Instant) -> FetchConnId {
        let conn = self.insert(addr, now);
        let hs = Handshake {
            reserved: FETCH_RESERVED,
            info_hash: self.params.info_hash,
            peer_id: self.params.our_peer_id,
        };
        hs.encode(&mut self.conns[conn].outgoing);
        conn
    }

    /// The listener accepted `addr` and read its handshake: ours and our
    /// extension handshake are queued (or the connection is refused).
    pub fn accepted(
        &mut self,
        addr: SocketAddr,
        handshake: Handshake,
        now: Instant,
    ) -> FetchConnId {
        let conn = self.connected(addr, now);
        self.conns[conn].incoming = true;
        self.on_handshake(conn, handshake);
        conn
    }

    fn insert(&mut self, addr: SocketAddr, now: Instant) -> FetchConnId {
        let key = self.next_key;
        self.next_key += 1;
        self.conns.insert(FetchConn {
            key,
            addr,
            phase: Phase::Handshake,
            ut_metadata_id: None,
            metadata_size: None,
            rejected: false,
            incoming: false,
            requested: 0,
            outgoing: Vec::new(),
            connected_at: now,
            last_received: now,
        })
    }

    /// The driver saw the connection close.
    pub fn closed(&mut self, conn: FetchConnId) {
        self.forget(conn);
        self.assign_all();
    }

    fn forget(&mut self, conn: FetchConnId) -> Option<FetchConn> {
        let c = self.conns.try_remove(conn)?;
        for slot in &mut self.slots {
            if matches!(*slot, Slot::Requested { key, .. } if key == c.key) {
                *slot = Slot::Missing;
            }
        }
        if self.parole_source == Some(c.key) {
            // Pieces from a parole source that left would mix with the next
            // one's: start over with the next.
            self.parole_source = None;
            self.reset_pieces();
        }
        Some(c)
    }

    fn drop_conn(&mut self, conn: FetchConnId, reason: String, ban: bool) {
        if let Some(c) = self.forget(conn) {
            if ban && self.banned_addrs.len() < MAX_BANNED_ADDRS {
                self.banned_addrs.insert(c.addr);
                if !c.addr.ip().is_loopback() {
                    self.banned.insert(c.addr.ip());
                }
            }
            self.actions.push_back(FetchAction::Disconnect { conn, reason });
        }
    }

    // ---- input ----------------------------------------------------------------

    /// Bytes arrived on `conn`; returns how many were consumed (keep the rest
    /// and offer it again with more appended). A violation queues a
    /// disconnect and consumes everything.
    pub fn on_data(&mut self, conn: FetchConnId, buf: &[u8], now: Instant) -> usize {
        let mut at = 0;
        loop {
            let Some(c) = self.conns.get_mut(conn) else { return buf.len() };
            if self.completed {
                return buf.len();
            }
            c.last_received = now;
            if c.phase == Phase::Handshake {
                match decode_handshake(&buf[at..]) {
                    Ok(HandshakeDecoded::NeedMore(_)) => break,
                    Ok(HandshakeDecoded::Done(hs)) => {
                        at += crate::wire::HANDSHAKE_LEN;
                        self.on_handshake(conn, hs);
                        continue;
                    }
                    Err(e) => {
                        self.drop_conn(conn, e.to_string(), false);
                        return buf.len();
                    }
                }
            }
            match decode(&buf[at..], &self.limits) {
                Ok(Decoded::NeedMore(_)) => break,
                Ok(Decoded::Message { message, consumed }) => {
                    at += consumed;
                    if let Message::Extended { id, payload } = message {
                        self.on_extended(conn, id, payload, now);
                    }
                    // Everything else (piece sets, choking) is for the torrent
                    // that starts once the metadata is here.
                }
                Err(e) => {
                    self.drop_conn(conn, e.to_string(), true);
                    return buf.len();
                }
            }
        }
        self.fill_requests(conn, now);
        at
    }

    fn on_handshake(&mut self, conn: FetchConnId, hs: Handshake) {
        let reason = if hs.info_hash != self.params.info_hash {
            Some("handshake for another torrent")
        } else if hs.peer_id == self.params.our_peer_id {
            Some("connected to ourselves")
        } else if !hs.reserved.extensions() {
            Some("peer does not speak the extension protocol (no ut_metadata)")
        } else {
            None
        };
        if let Some(reason) = reason {
            let ban = hs.peer_id == self.params.our_peer_id;
            self.drop_conn(conn, reason.to_string(), ban);
            return;
        }
        let ours = ExtensionHandshake {
            extensions: vec![("ut_metadata".to_string(), OUR_UT_METADATA_ID)],
            client: Some(crate::wire::extension::CLIENT_NAME.to_string()),
            reqq: None,
            listen_port: self.params.listen_port,
            your_ip: Some(self.conns[conn].addr.ip()),
            metadata_size: None,
        };
        let mut payload = Vec::new();
        ours.encode(&mut payload);
        let c = &mut self.conns[conn];
        Message::Extended { id: 0, payload: &payload }.encode(&mut c.outgoing);
        c.phase = Phase::Extensions;
    }

    fn on_extended(&mut self, conn: FetchConnId, id: u8, payload: &[u8], now: Instant) {
        if id == 0 {
            let hs = match ExtensionHandshake::decode(payload) {
                Ok(hs) => hs,
                Err(e) => return self.drop_conn(conn, e.to_string(), true),
            };
            let c = &mut self.conns[conn];
            c.phase = Phase::Active;
            c.ut_metadata_id = hs.extension_id("ut_metadata");
            if let (true, Some(port)) = (c.incoming, hs.listen_port) {
                if self.learned.len() < MAX_FETCH_CONNECTIONS {
                    self.learned.push(SocketAddr::new(c.addr.ip(), port));
                }
            }
            if c.ut_metadata_id.is_none() {
                return self.drop_conn(conn, "peer does not offer ut_metadata".into(), false);
            }
            match hs.metadata_size {
                Some(0) => return self.drop_conn(conn, FetchError::SizeZero.to_string(), true),
                Some(size) if size > METADATA_SIZE_MAX => {
                    let reason = FetchError::SizeTooLarge { size }.to_string();
                    return self.drop_conn(conn, reason, true);
                }
                Some(size) => c.metadata_size = Some(size as u32),
                // A peer without the metadata yet (another magnet leecher).
                None => {}
            }
            self.choose_size();
            self.assign_all_at(now);
            return;
        }
        if id != OUR_UT_METADATA_ID {
            return;
        }
        let message = match MetadataMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => return self.drop_conn(conn, e.to_string(), true),
        };
        match message {
            MetadataMessage::Request { piece } => {
                // We have nothing to serve yet: reject politely.
                let c = &mut self.conns[conn];
                if let Some(their_id) = c.ut_metadata_id {
                    if c.outgoing.len() < MAX_FETCH_OUTGOING_BYTES {
                        let mut body = Vec::with_capacity(32);
                        MetadataMessage::Reject { piece }.encode(&mut body);
                        Message::Extended { id: their_id, payload: &body }.encode(&mut c.outgoing);
                    }
                }
            }
            MetadataMessage::Reject { piece } => {
                let key = self.conns[conn].key;
                if let Some(slot) = self.slots.get_mut(piece as usize) {
                    if matches!(*slot, Slot::Requested { key: k, .. } if k == key) {
                        *slot = Slot::Missing;
                        self.conns[conn].requested -= 1;
                    }
                }
                self.conns[conn].rejected = true;
                self.assign_all_at(now);
            }
            MetadataMessage::Data { piece, total_size, data } => {
                self.on_piece(conn, piece, total_size, data, now);
            }
        }
    }

    fn on_piece(&mut self, conn: FetchConnId, piece: u32, total: u64, data: &[u8], now: Instant) {
        let key = self.conns[conn].key;
        let Some(size) = self.size else { return };
        let requested = matches!(
            self.slots.get(piece as usize),
            Some(Slot::Requested { key: k, .. }) if *k == key
        );
        if !requested {
            // Unasked (or asked of another peer after a timeout): ignored.
            return;
        }
        if total != u64::from(size) {
            let reason = FetchError::TotalSize { got: total, expected: size }.to_string();
            return self.drop_conn(conn, reason, true);
        }
        let expected = ut_metadata::piece_len(size, piece);
        if data.len() != expected as usize {
            let reason = FetchError::PieceLength { piece, got: data.len(), expected }.to_string();
            return self.drop_conn(conn, reason, true);
        }
        let start = piece as usize * METADATA_PIECE_LEN as usize;
        self.buffer[start..start + data.len()].copy_from_slice(data);
        let c = &mut self.conns[conn];
        c.requested -= 1;
        self.slots[piece as usize] = Slot::Received { from: c.addr };
        if self.slots.iter().all(|s| matches!(s, Slot::Received { .. })) {
            self.verify();
        } else {
            self.fill_requests(conn, now);
        }
    }

    /// Every piece is in: hash, then hand out or blame.
    fn verify(&mut self) {
        let digest: [u8; 20] = Sha1::digest(&self.buffer).into();
        if digest == self.params.info_hash.0 {
            self.completed = true;
            self.metadata = Some(std::mem::take(&mut self.buffer));
            self.slots.clear();
            let conns: Vec<FetchConnId> = self.conns.iter().map(|(id, _)| id).collect();
            for conn in conns {
                self.drop_conn(conn, "metadata complete".into(), false);
            }
            self.actions.push_back(FetchAction::Complete);
            return;
        }
        self.hash_failures += 1;
        let senders: HashSet<SocketAddr> = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Received { from } => Some(*from),
                _ => None,
            })
            .collect();
        self.reset_pieces();
        if senders.len() == 1 {
            let culprit = *senders.iter().next().expect("one sender");
            let found = self.conns.iter().find(|(_, c)| c.addr == culprit).map(|(id, _)| id);
            if let Some(conn) = found {
                self.drop_conn(conn, "metadata does not match the info hash".into(), true);
            } else if self.banned_addrs.len() < MAX_BANNED_ADDRS {
                self.banned_addrs.insert(culprit);
            }
            self.parole = false;
            self.parole_source = None;
            // The size came from someone; if it was the liar, another peer's
            // size may be right: choose again among those left.
            self.size = None;
            self.buffer = Vec::new();
            self.slots.clear();
            self.choose_size();
        } else {
            self.parole = true;
            self.parole_source = None;
        }
        self.assign_all();
    }

    fn reset_pieces(&mut self) {
        for slot in &mut self.slots {
            *slot = Slot::Missing;
        }
        for (_, c) in self.conns.iter_mut() {
            c.requested = 0;
        }
    }

    /// Picks the size to fetch from the ready peers' claims (the most
    /// common one), and sizes the buffer for it.
    fn choose_size(&mut self) {
        if self.size.is_some() {
            return;
        }
        let mut claims: Vec<(u32, usize)> = Vec::new();
        for (_, c) in self.conns.iter() {
            if let Some(s) = c.metadata_size {
                match claims.iter_mut().find(|(size, _)| *size == s) {
                    Some((_, n)) => *n += 1,
                    None => claims.push((s, 1)),
                }
            }
        }
        let Some(&(size, _)) = claims.iter().max_by_key(|(_, n)| *n) else { return };
        debug_assert!(u64::from(size) <= METADATA_SIZE_MAX);
        self.size = Some(size);
        self.buffer = vec![0; size as usize];
        self.slots = vec![Slot::Missing; ut_metadata::piece_count(size) as usize];
    }

    fn assign_all(&mut self) {
        // Requests carry their send time; any recent `now` works, and the
        // connection's last activity is one.
        let now = self.conns.iter().map(|(_, c)| c.last_received).max();
        if let Some(now) = now {
            self.assign_all_at(now);
        }
    }

    fn assign_all_at(&mut self, now: Instant) {
        let conns: Vec<FetchConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for conn in conns {
            self.fill_requests(conn, now);
        }
    }

    /// Asks `conn` for missing pieces, up to [`MAX_REQUESTS_PER_PEER`].
    fn fill_requests(&mut self, conn: FetchConnId, now: Instant) {
        let Some(size) = self.size else { return };
        let Some(c) = self.conns.get_mut(conn) else { return };
        let Some(their_id) = c.ut_metadata_id else { return };
        if c.phase != Phase::Active || c.rejected || c.metadata_size != Some(size) {
            return;
        }
        if self.parole {
            match self.parole_source {
                Some(key) if key != c.key => return,
                Some(_) => {}
                None => self.parole_source = Some(c.key),
            }
        }
        let mut body = Vec::with_capacity(32);
        for (piece, slot) in self.slots.iter_mut().enumerate() {
            if c.requested >= MAX_REQUESTS_PER_PEER {
                break;
            }
            if *slot == Slot::Missing {
                *slot = Slot::Requested { key: c.key, at: now };
                c.requested += 1;
                body.clear();
                MetadataMessage::Request { piece: piece as u32 }.encode(&mut body);
                Message::Extended { id: their_id, payload: &body }.encode(&mut c.outgoing);
            }
        }
    }

    /// Timers: handshakes, requests, silence. Call about once a second.
    pub fn tick(&mut self, now: Instant) {
        let mut drops = Vec::new();
        for (id, c) in self.conns.iter() {
            let since = |t: Instant| now.saturating_duration_since(t);
            if c.phase != Phase::Active && since(c.connected_at) > FETCH_HANDSHAKE_TIMEOUT {
                drops.push((id, format!("no handshake within {FETCH_HANDSHAKE_TIMEOUT:?}")));
            } else if since(c.last_received) > FETCH_IDLE_TIMEOUT {
                drops.push((id, format!("peer silent for {FETCH_IDLE_TIMEOUT:?}")));
            } else if c.outgoing.len() > MAX_FETCH_OUTGOING_BYTES {
                drops.push((id, "peer does not read".to_string()));
            } else if self.slots.iter().any(|s| {
                matches!(*s, Slot::Requested { key, at }
                    if key == c.key && since(at) > METADATA_REQUEST_TIMEOUT)
            }) {
                drops.push((
                    id,
                    format!("metadata request unanswered for {METADATA_REQUEST_TIMEOUT:?}"),
                ));
            }
        }
        for (conn, reason) in drops {
            self.drop_conn(conn, reason, false);
        }
        self.assign_all_at(now);
    }

    // ---- output ---------------------------------------------------------------

    /// Swaps the connection's queued bytes into `spare` (which must be empty).
    pub fn take_outgoing(&mut self, conn: FetchConnId, spare: &mut Vec<u8>) {
        if let Some(c) = self.conns.get_mut(conn) {
            std::mem::swap(&mut c.outgoing, spare);
        }
    }

    /// Bytes waiting to be sent on `conn`.
    pub fn outgoing_len(&self, conn: FetchConnId) -> usize {
        self.conns.get(conn).map_or(0, |c| c.outgoing.len())
    }

    pub fn poll_action(&mut self) -> Option<FetchAction> {
        self.actions.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::OwnedValue;

    /// A scripted remote peer that holds `metadata` and answers requests,
    /// optionally corrupting what it sends.
    struct Remote {
        metadata: Vec<u8>,
        claimed_size: Option<u64>,
        corrupt: bool,
        ut_id: u8,
        inbox: Vec<u8>,
        handshook: bool,
    }

    impl Remote {
        fn new(metadata: &[u8]) -> Remote {
            Remote {
                metadata: metadata.to_vec(),
                claimed_size: Some(metadata.len() as u64),
                corrupt: false,
                ut_id: 3,
                inbox: Vec::new(),
                handshook: false,
            }
        }

        fn hello(&self, info_hash: InfoHash) -> Vec<u8> {
            let mut out = Vec::new();
            Handshake::ours(info_hash, PeerId([9; 20])).encode(&mut out);
            let hs = ExtensionHandshake {
                extensions: vec![("ut_metadata".into(), self.ut_id)],
                metadata_size: self.claimed_size,
                ..Default::default()
            };
            let mut payload = Vec::new();
            hs.encode(&mut payload);
            Message::Extended { id: 0, payload: &payload }.encode(&mut out);
            out
        }

        /// Reads what the fetch sent and returns the replies.
        fn answer(&mut self, bytes: &[u8]) -> Vec<u8> {
            self.inbox.extend_from_slice(bytes);
            let mut out = Vec::new();
            if !self.handshook {
                if self.inbox.len() < 68 {
                    return out;
                }
                self.inbox.drain(..68);
                self.handshook = true;
            }
            let limits = WireLimits::default();
            loop {
                let (msg_id, payload, used) = match decode(&self.inbox, &limits).unwrap() {
                    Decoded::NeedMore(_) => break,
                    Decoded::Message { message: Message::Extended { id, payload }, consumed } => {
                        (id, payload.to_vec(), consumed)
                    }
                    Decoded::Message { consumed, .. } => {
                        self.inbox.drain(..consumed);
                        continue;
                    }
                };
                self.inbox.drain(..used);
                if msg_id != self.ut_id {
                    continue;
                }
                if let Ok(MetadataMessage::Request { piece }) = MetadataMessage::decode(&payload) {
                    let size = self.metadata.len() as u32;
                    let start = (piece * METADATA_PIECE_LEN) as usize;
                    let len = ut_metadata::piece_len(size, piece) as usize;
                    let mut data = self.metadata[start..start + len].to_vec();
                    if self.corrupt {
                        data[0] ^= 0xff;
                    }
                    let mut body = Vec::new();
                    MetadataMessage::Data { piece, total_size: u64::from(size), data: &data }
                        .encode(&mut body);
                    Message::Extended { id: OUR_UT_METADATA_ID, payload: &body }.encode(&mut out);
                }
            }
            out
        }
    }

    fn info_dict(len: usize) -> (Vec<u8>, InfoHash) {
        let bytes = OwnedValue::dict().with("name", "x").with("pad", vec![b'p'; len]).encode();
        let hash = InfoHash(Sha1::digest(&bytes).into());
        (bytes, hash)
    }

    fn fetch(info_hash: InfoHash) -> MetadataFetch {
        MetadataFetch::new(FetchParams {
            info_hash,
            our_peer_id: PeerId([1; 20]),
            listen_port: Some(1),
        })
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 6881))
    }

    /// Runs the fetch against remotes until nothing moves; returns the
    /// disconnect reasons.
    fn run(
        f: &mut MetadataFetch,
        remotes: &mut [(FetchConnId, Remote)],
        now: Instant,
    ) -> Vec<String> {
        let mut reasons = Vec::new();
        for _ in 0..100 {
            let mut moved = false;
            for (conn, remote) in remotes.iter_mut() {
                let mut out = Vec::new();
                f.take_outgoing(*conn, &mut out);
                if out.is_empty() {
                    continue;
                }
                moved = true;
                let reply = remote.answer(&out);
                if !reply.is_empty() {
                    let n = f.on_data(*conn, &reply, now);
                    assert_eq!(n, reply.len());
                }
            }
            while let Some(action) = f.poll_action() {
                if let FetchAction::Disconnect { reason, .. } = action {
                    reasons.push(reason);
                }
            }
            if !moved {
                break;
            }
        }
        reasons
    }

    fn start(f: &mut MetadataFetch, remote: Remote, n: u8, now: Instant) -> (FetchConnId, Remote) {
        let conn = f.connected(addr(n), now);
        let hello = remote.hello(f.info_hash());
        assert_eq!(f.on_data(conn, &hello, now), hello.len());
        (conn, remote)
    }

    #[test]
    fn fetches_from_one_peer() {
        let (bytes, hash) = info_dict(40_000);
        let now = Instant::now();
        let mut f = fetch(hash);
        let mut remotes = vec![start(&mut f, Remote::new(&bytes), 1, now)];
        assert_eq!(f.peer_count(), 1);
        run(&mut f, &mut remotes, now);
        assert!(f.is_complete());
        assert_eq!(f.take_metadata().unwrap(), bytes);
    }

    #[test]
    fn spreads_requests_over_peers_and_completes() {
        let (bytes, hash) = info_dict(16384 * 40 + 5);
        let now = Instant::now();
        let mut f = fetch(hash);
        let mut remotes: Vec<_> =
            (1..=3).map(|n| start(&mut f, Remote::new(&bytes), n, now)).collect();
        // Each peer was asked for its share before anything came back.
        for (conn, _) in &remotes {
            assert!(f.outgoing_len(*conn) > 0);
        }
        run(&mut f, &mut remotes, now);
        assert_eq!(f.take_metadata().unwrap(), bytes);
    }

    #[test]
    fn huge_metadata_size_is_refused_before_allocating() {
        let (bytes, hash) = info_dict(100);
        let now = Instant::now();
        let mut f = fetch(hash);
        let mut liar = Remote::new(&bytes);
        liar.claimed_size = Some(4 << 30);
        let conn = f.connected(addr(1), now);
        let hello = liar.hello(hash);
        f.on_data(conn, &hello, now);
        let Some(FetchAction::Disconnect { reason, .. }) = f.poll_action() else { panic!() };
        assert!(reason.contains("over the limit"), "{reason}");
        assert_eq!(f.metadata_size(), None);
        assert!(f.buffer.capacity() == 0);
        assert!(!f.wants_connection(addr(1)));
        // An honest peer then serves it.
        let mut remotes = vec![start(&mut f, Remote::new(&bytes), 2, now)];
        run(&mut f, &mut remotes, now);
        assert_eq!(f.take_metadata().unwrap(), bytes);
    }

    #[test]
    fn lone_corrupt_peer_is_dropped_and_another_serves() {
        let (bytes, hash) = info_dict(50_000);
        let now = Instant::now();
        let mut f = fetch(hash);
        let mut bad = Remote::new(&bytes);
        bad.corrupt = true;
        let mut remotes = vec![start(&mut f, bad, 1, now)];
        let reasons = run(&mut f, &mut remotes, now);
        assert!(reasons.iter().any(|r| r.contains("does not match")), "{reasons:?}");
        assert!(!f.is_complete());
        assert_eq!(f.hash_failures(), 1);
        assert!(!f.wants_connection(addr(1)));
        let mut remotes = vec![start(&mut f, Remote::new(&bytes), 2, now)];
        run(&mut f, &mut remotes, now);
        assert_eq!(f.take_metadata().unwrap(), bytes);
    }

    #[test]
    fn corrupt_peer_among_honest_ones_is_found_by_parole() {
        let (bytes, hash) = info_dict(16384 * 40);
        let now = Instant::now();
        let mut f = fetch(hash);
        let mut bad = Remote::new(&bytes);
        bad.corrupt = true;
        // The liar connects first, so parole picks it as the single source.
        let mut remotes =
            vec![start(&mut f, bad, 1, now), start(&mut f, Remote::new(&bytes), 2, now)];
        let reasons = run(&mut f, &mut remotes, now);
        // First failure: mixed senders (parole); second: the liar alone.
        assert_eq!(f.hash_failures(), 2, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("does not match")));
        // The honest peer completes it after the liar is dropped.
        remotes.retain(|(conn, _)| f.conns.contains(*conn));
        for (conn, _) in &remotes {
            assert_eq!(f.conns[*conn].addr, addr(2));
        }
        run(&mut f, &mut remotes, now);
        assert_eq!(f.take_metadata().unwrap(), bytes);
    }

    #[test]
    fn hostile_messages_disconnect_without_panic() {
        let (bytes, hash) = info_dict(100);
        let now = Instant::now();
        for payload in [
            b"garbage".as_slice(),
            b"d8:msg_typei1e5:piecei0e10:total_sizei99999999999ee",
            b"d8:msg_typei1e5:piecei0e10:total_sizei5ee12345",
        ] {
            let mut f = fetch(hash);
            let (conn, _) = start(&mut f, Remote::new(&bytes), 1, now);
            let mut out = Vec::new();
            f.take_outgoing(conn, &mut out);
            let mut msg = Vec::new();
            Message::Extended { id: OUR_UT_METADATA_ID, payload }.encode(&mut msg);
            f.on_data(conn, &msg, now);
            assert!(matches!(f.poll_action(), Some(FetchAction::Disconnect { .. })), "{payload:?}");
            assert_eq!(f.connection_count(), 0);
        }
        // Wrong info hash, our own id, no extension bit.
        let mut f = fetch(hash);
        let conn = f.connected(addr(1), now);
        let mut hs = Vec::new();
        Handshake::ours(InfoHash([7; 20]), PeerId([2; 20])).encode(&mut hs);
        f.on_data(conn, &hs, now);
        assert!(matches!(f.poll_action(), Some(FetchAction::Disconnect { .. })));
    }

    #[test]
    fn requests_to_us_are_rejected_and_timeouts_move_pieces() {
        let (bytes, hash) = info_dict(100);
        let t0 = Instant::now();
        let mut f = fetch(hash);
        let (conn, remote) = start(&mut f, Remote::new(&bytes), 1, t0);
        let mut out = Vec::new();
        f.take_outgoing(conn, &mut out);
        // A request from the peer gets a reject on its id.
        let mut msg = Vec::new();
        let mut body = Vec::new();
        MetadataMessage::Request { piece: 0 }.encode(&mut body);
        Message::Extended { id: OUR_UT_METADATA_ID, payload: &body }.encode(&mut msg);
        f.on_data(conn, &msg, t0);
        let mut out = Vec::new();
        f.take_outgoing(conn, &mut out);
        let Decoded::Message { message: Message::Extended { id, payload }, .. } =
            decode(&out, &WireLimits::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(id, remote.ut_id);
        assert_eq!(MetadataMessage::decode(payload), Ok(MetadataMessage::Reject { piece: 0 }));
        // The unanswered request times out: the peer goes.
        f.tick(t0 + METADATA_REQUEST_TIMEOUT + Duration::from_secs(1));
        assert!(matches!(f.poll_action(), Some(FetchAction::Disconnect { .. })));
        assert_eq!(f.slots, vec![Slot::Missing]);
    }
}
