//! Per-peer protocol state machine (sans-IO).
//!
//! Layer: pure core. Owns one connection's protocol state: handshake phase,
//! the four choke/interest flags, the peer's pieces, our requests to the peer
//! and the peer's requests to us, keep-alive and request timers, byte counters
//! and rate estimates. It never touches a socket or the clock: the driver feeds
//! it bytes and `now`, drains [`Event`]s and the outgoing byte buffer, and the
//! torrent core ties it to the picker (this module knows nothing of the picker).
//!
//! ```text
//!  driver ── handle_bytes(buf, now) ──> Peer ── poll_event() ──> torrent core
//!         <── swap_outgoing(buf) ─────        <── request / choke / send_have ...
//!         ── tick(now) (every ~second) ─>
//! ```
//!
//! Invariants:
//! * `outstanding.len() <= config.max_outstanding_requests` and
//!   `peer_requests.len() <= config.max_peer_requests`;
//! * every request in `outstanding` was for a piece the peer had, sent while
//!   it unchoked us or allowed the piece fast;
//! * while we choke the peer, every request in `peer_requests` is for a piece
//!   of our allowed-fast set (`our_allowed_fast`, BEP 6): a choke rejects the
//!   others, and new ones are rejected on arrival;
//! * a `Block` event is produced only for a block in `outstanding`, and removes
//!   it: the torrent never sees data it did not ask for (those bytes are
//!   counted in [`PeerStats::unrequested_bytes`]);
//! * the event queue stops accepting input at [`MAX_QUEUED_EVENTS`]: a single
//!   message adds at most `max_outstanding_requests` more (a choke dropping
//!   every request) or, once per piece, `piece_count` (a late bitfield taken
//!   as haves), so the queue is bounded;
//! * hostile input becomes a [`Violation`] (disconnect with a reason), never a
//!   panic.

use crate::bitfield::{Bitfield, BitfieldError};
use crate::metainfo::InfoHash;
use crate::wire::{
    self, decode_handshake, BlockRequest, Decoded, ExtensionError, ExtensionHandshake, Handshake,
    HandshakeDecoded, Message, MessageId, PeerId, WireError, WireLimits, BLOCK_LEN, HANDSHAKE_LEN,
    PIECE_HEADER_LEN,
};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Most events queued before [`Peer::handle_bytes`] stops consuming input:
/// the driver must drain them (back-pressure instead of unbounded buffering).
pub const MAX_QUEUED_EVENTS: usize = 1024;

/// Most allowed-fast pieces (BEP 6) we remember per peer, in each direction;
/// libtorrent sends 10.
pub const MAX_ALLOWED_FAST: usize = 32;

/// A peer may send this many times our `reqq` requests past a full queue,
/// with no room freed in between, before it is disconnected (without a ban):
/// a few past the queue is a slip, thousands is a flood.
pub const OVERFLOW_REQUESTS_FACTOR: usize = 4;

/// Longest message with an id we do not know (BEP 3 extensions we do not
/// speak, e.g. id 21 for BEP 52 hash requests) that is skipped; a longer one
/// is a violation. As long as our extended-message limit.
pub const MAX_UNKNOWN_MESSAGE_LEN: u32 = wire::DEFAULT_MAX_EXTENDED_LEN;

/// The peer's request queue depth when it does not say (BEP 10: libtorrent's
/// default).
pub const DEFAULT_PEER_REQQ: u32 = 250;

/// Timers and limits of one connection. Defaults follow libtorrent's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Send a keep-alive after this long without sending anything.
    pub keepalive_interval: Duration,
    /// Drop a peer that sent nothing (not even a keep-alive) for this long.
    pub idle_timeout: Duration,
    /// Drop a connection whose handshake has not completed in this time.
    pub handshake_timeout: Duration,
    /// A request times out when nothing arrived from the peer for this long
    /// since it was sent (or since the last block, whichever is later): deep
    /// pipelines stay healthy while data flows, a stalled peer is snubbed.
    pub request_timeout: Duration,
    /// Most of the peer's requests we queue; also the `reqq` we advertise
    /// (2000, as libtorrent). Past it a fast-extension peer gets `reject`,
    /// others are ignored (see [`OVERFLOW_REQUESTS_FACTOR`]). A queued request
    /// is 12 bytes: 24 KiB per connection at most.
    pub max_peer_requests: usize,
    /// Most requests we keep outstanding to one peer, whatever its `reqq`.
    pub max_outstanding_requests: usize,
    /// Smallest request pipeline (before the rate is known).
    pub min_request_depth: usize,
    /// Pipeline sizing: keep `download rate x request_queue_time` bytes
    /// requested (bandwidth x delay, with the delay generous enough to cover
    /// the peer's disk and scheduling as well as the network).
    pub request_queue_time: Duration,
}

impl Default for PeerConfig {
    fn default() -> PeerConfig {
        PeerConfig {
            keepalive_interval: Duration::from_secs(90),
            idle_timeout: Duration::from_secs(180),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            // libtorrent's `max_allowed_in_request_queue`. transmission 3.00
            // keeps rate x 10 s of requests out, capped by our `reqq`: at 500
            // it got half the rate a libtorrent seeder (reqq 2000) gives it,
            // because it refills its pipeline only every half second or so.
            max_peer_requests: 2000,
            max_outstanding_requests: 500,
            min_request_depth: 4,
            request_queue_time: Duration::from_secs(3),
        }
    }
}

/// What the connection is about: our identity and the torrent's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSetup {
    pub info_hash: InfoHash,
    pub our_peer_id: PeerId,
    pub piece_count: u32,
    /// Bytes per piece (the last piece may be shorter).
    pub piece_length: u32,
    /// Bytes in the torrent.
    pub total_length: u64,
    /// Our listen port, sent in the extension handshake (`p`).
    pub listen_port: Option<u16>,
    /// The peer's address, sent back as `yourip`.
    pub peer_ip: Option<IpAddr>,
    /// The info dictionary's size (`metadata_size`), once we have it.
    pub metadata_size: Option<u64>,
    /// Our DHT node's UDP port when the DHT runs for this torrent: we set
    /// the DHT bit in our handshake and send `PORT` to peers that set
    /// theirs (BEP 5).
    pub dht_port: Option<u16>,
}

/// Something the torrent core must know about. Ranges index the buffer given
/// to the [`Peer::handle_bytes`] call that produced the event: drain events
/// before discarding those bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The peer's handshake arrived and is valid. The torrent checks for
    /// duplicate connections, then calls [`Peer::send_bitfield`].
    Handshake {
        peer_id: PeerId,
    },
    /// The peer's extension handshake arrived (or was updated): see
    /// [`Peer::extension_handshake`].
    ExtensionHandshake,
    /// The peer's whole piece set is known (bitfield, have-all, have-none):
    /// see [`Peer::pieces`].
    Bitfield,
    /// The peer has a new piece (only sent once per piece).
    Have(u32),
    /// The peer choked us. Without the fast extension this also dropped our
    /// requests (each reported as `RequestDropped`).
    Choked,
    Unchoked,
    Interested,
    NotInterested,
    /// A block we requested: `buf[data]` is its data.
    Block {
        piece: u32,
        begin: u32,
        data: Range<usize>,
    },
    /// A request of ours will not be answered (rejected, or dropped by a
    /// choke): give the block back to the picker.
    RequestDropped(BlockRequest),
    /// A request of ours has waited past the timeout. It stays outstanding
    /// (it may still arrive) and the peer is snubbed; the picker may ask
    /// another peer for the block.
    RequestTimedOut(BlockRequest),
    /// The peer lets us request this piece while it chokes us (BEP 6).
    AllowedFast(u32),
    /// The peer suggests we download this piece (BEP 6).
    Suggest(u32),
    /// An extended message on one of our extension ids: `buf[payload]`.
    Extended {
        id: u8,
        payload: Range<usize>,
    },
    /// The peer's `PORT` message (BEP 5): its DHT node listens on this UDP
    /// port (only the first `PORT` of a connection from a peer that set the
    /// DHT bit, and never port 0).
    DhtPort(u16),
}

/// Why we drop a peer. Protocol breaches and timeouts alike: the connection
/// is closed and the reason logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("malformed message: {0}")]
    Wire(#[from] WireError),
    #[error("handshake for another torrent ({0})")]
    WrongInfoHash(InfoHash),
    #[error("connected to ourselves")]
    ConnectedToSelf,
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("peer silent for {0:?}")]
    Idle(Duration),
    #[error("bad bitfield: {0}")]
    BadBitfield(#[from] BitfieldError),
    #[error("piece {piece} out of range (torrent has {piece_count})")]
    PieceOutOfRange { piece: u32, piece_count: u32 },
    #[error("request {0:?} outside its piece")]
    RequestOutOfRange(BlockRequest),
    #[error("more than {max} queued requests")]
    TooManyRequests { max: usize },
    #[error("{count} requests while choked")]
    RequestsWhileChoked { count: usize },
    #[error("fast-extension message {0:?} without the fast extension")]
    FastNotNegotiated(MessageId),
    #[error("extended message without the extension protocol")]
    ExtensionsNotNegotiated,
    #[error("bad extension handshake: {0}")]
    BadExtensionHandshake(#[from] ExtensionError),
}

/// Why [`Peer::request`] refused to send a request (a torrent-core decision
/// error, not the peer's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefused {
    #[error("handshake not complete")]
    NotConnected,
    #[error("peer chokes us and the piece is not allowed fast")]
    Choked,
    #[error("peer does not have the piece")]
    PeerLacksPiece,
    #[error("request outside its piece or longer than a block")]
    OutOfRange,
    #[error("pipeline full")]
    PipelineFull,
    #[error("already requested")]
    Duplicate,
}

/// Byte counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Block data received for our requests.
    pub downloaded_bytes: u64,
    /// Block data sent.
    pub uploaded_bytes: u64,
    /// Block data received that we had not requested (or had cancelled).
    pub unrequested_bytes: u64,
    /// Every byte read and written, protocol overhead included.
    pub received_bytes: u64,
    pub sent_bytes: u64,
    /// Requests of ours that timed out.
    pub timed_out_requests: u64,
    /// The peer's requests past the `reqq` we advertised (rejected or ignored).
    pub overflow_requests: u64,
    /// Messages with an id we do not know, skipped.
    pub unknown_messages: u64,
}

/// Bytes per second, as an exponentially weighted moving average of samples
/// taken at most every [`RateEstimator::SAMPLE_INTERVAL`].
#[derive(Clone, Debug)]
pub struct RateEstimator {
    sample_start: Instant,
    sample_bytes: u64,
    rate: f64,
    sampled: bool,
}

impl RateEstimator {
    /// How often a sample is folded into the average.
    pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
    /// Weight of the newest sample: about 2 s of memory at 0.5 s samples.
    const WEIGHT: f64 = 0.25;

    pub fn new(now: Instant) -> RateEstimator {
        RateEstimator { sample_start: now, sample_bytes: 0, rate: 0.0, sampled: false }
    }

    /// Counts `bytes` transferred at `now`.
    pub fn add(&mut self, bytes: u64, now: Instant) {
        self.sample_bytes += bytes;
        self.update(now);
    }

    /// Folds the current sample in when it is old enough.
    pub fn update(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.sample_start);
        if elapsed < Self::SAMPLE_INTERVAL {
            return;
        }
        let sample = self.sample_bytes as f64 / elapsed.as_secs_f64();
        self.rate =
            if self.sampled { self.rate + (sample - self.rate) * Self::WEIGHT } else { sample };
        self.sampled = true;
        self.sample_start = now;
        self.sample_bytes = 0;
    }

    /// Bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.rate as u64
    }
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    request: BlockRequest,
    sent_at: Instant,
    timed_out: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// We are waiting for the peer's handshake.
    Handshake,
    /// Handshakes exchanged; the peer may still send its bitfield.
    Active,
}

/// One connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct Peer {
    config: PeerConfig,
    setup: PeerSetup,
    limits: WireLimits,
    phase: Phase,
    peer_id: Option<PeerId>,
    /// Both sides set the fast-extension bit.
    fast: bool,
    /// Both sides set the extension-protocol bit.
    extensions: bool,
    /// The peer set the DHT bit (BEP 5).
    peer_dht: bool,
    /// A `PORT` message was reported already (later ones are ignored).
    port_seen: bool,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    /// The peer's pieces.
    pieces: Bitfield,
    /// No message other than keep-alive or extended yet: a bitfield,
    /// have-all or have-none is still allowed.
    bitfield_allowed: bool,
    /// We sent our bitfield (so `have`s may follow).
    bitfield_sent: bool,
    allowed_fast: Vec<u32>,
    /// Pieces we told the peer it may request while we choke it.
    our_allowed_fast: Vec<u32>,
    peer_extension: Option<ExtensionHandshake>,
    /// Offer `ut_pex` in our extension handshake (off for private torrents).
    pex: bool,
    /// Our requests to the peer, oldest first.
    outstanding: VecDeque<Outstanding>,
    /// The peer's requests to us, oldest first.
    peer_requests: VecDeque<BlockRequest>,
    /// Requests the peer sent while we choke it (no fast extension): a few
    /// are in flight when we choke; many mean a broken peer.
    requests_while_choked: usize,
    /// Requests past a full queue since the queue last had room (rejected or
    /// ignored); see [`OVERFLOW_REQUESTS_FACTOR`].
    overflow_requests: usize,
    snubbed: bool,
    events: VecDeque<Event>,
    out: Vec<u8>,
    created_at: Instant,
    last_received: Instant,
    last_sent: Instant,
    last_block: Instant,
    stats: PeerStats,
    download_rate: RateEstimator,
    upload_rate: RateEstimator,
}

impl Peer {
    fn new(config: PeerConfig, setup: PeerSetup, now: Instant) -> Peer {
        let limits = WireLimits::for_pieces(setup.piece_count);
        let pieces = Bitfield::new(setup.piece_count);
        Peer {
            config,
            setup,
            limits,
            phase: Phase::Handshake,
            peer_id: None,
            fast: false,
            extensions: false,
            peer_dht: false,
            port_seen: false,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            pieces,
            bitfield_allowed: true,
            bitfield_sent: false,
            allowed_fast: Vec::new(),
            our_allowed_fast: Vec::new(),
            peer_extension: None,
            pex: true,
            outstanding: VecDeque::new(),
            peer_requests: VecDeque::new(),
            requests_while_choked: 0,
            overflow_requests: 0,
            snubbed: false,
            events: VecDeque::new(),
            out: Vec::with_capacity(HANDSHAKE_LEN + 1024),
            created_at: now,
            last_received: now,
            last_sent: now,
            last_block: now,
            stats: PeerStats::default(),
            download_rate: RateEstimator::new(now),
            upload_rate: RateEstimator::new(now),
        }
    }

    /// A connection we opened: our handshake is queued at once; the peer's
    /// arrives through [`Peer::handle_bytes`].
    pub fn outgoing(config: PeerConfig, setup: PeerSetup, now: Instant) -> Peer {
        let mut peer = Peer::new(config, setup, now);
        peer.send_handshake(now);
        peer
    }

    /// A connection the listener accepted and whose handshake it already
    /// read (to route it here): checks it, queues ours in reply and queues
    /// [`Event::Handshake`].
    pub fn incoming(
        config: PeerConfig,
        setup: PeerSetup,
        handshake: Handshake,
        now: Instant,
    ) -> Result<Peer, Violation> {
        let mut peer = Peer::new(config, setup, now);
        peer.stats.received_bytes += HANDSHAKE_LEN as u64;
        peer.on_handshake(handshake)?;
        peer.send_handshake(now);
        Ok(peer)
    }

    fn send_handshake(&mut self, now: Instant) {
        let mut ours = Handshake::ours(self.setup.info_hash, self.setup.our_peer_id);
        if self.setup.dht_port.is_some() {
            ours.reserved = ours.reserved.with_dht();
        }
        ours.encode(&mut self.out);
        self.sent(HANDSHAKE_LEN, now);
    }

    fn on_handshake(&mut self, hs: Handshake) -> Result<(), Violation> {
        if hs.info_hash != self.setup.info_hash {
            return Err(Violation::WrongInfoHash(hs.info_hash));
        }
        if hs.peer_id == self.setup.our_peer_id {
            return Err(Violation::ConnectedToSelf);
        }
        let ours = wire::Reserved::OURS;
        self.fast = ours.fast() && hs.reserved.fast();
        self.extensions = ours.extensions() && hs.reserved.extensions();
        self.peer_dht = hs.reserved.dht();
        self.peer_id = Some(hs.peer_id);
        self.phase = Phase::Active;
        self.events.push_back(Event::Handshake { peer_id: hs.peer_id });
        Ok(())
    }

    // ---- input ----------------------------------------------------------

    /// Consumes the complete messages at the front of `buf` and returns how
    /// many bytes they used; the rest (a partial message) must be offered
    /// again with more bytes appended. Stops early once
    /// [`MAX_QUEUED_EVENTS`] events are queued: drain [`Peer::poll_event`]
    /// after every call, before dropping the consumed bytes (event ranges
    /// point into `buf`).
    pub fn handle_bytes(&mut self, buf: &[u8], now: Instant) -> Result<usize, Violation> {
        let mut at = 0;
        while self.events.len() < MAX_QUEUED_EVENTS {
            let rest = &buf[at..];
            if self.phase == Phase::Handshake {
                match decode_handshake(rest)? {
                    HandshakeDecoded::NeedMore(_) => break,
                    HandshakeDecoded::Done(hs) => {
                        self.on_handshake(hs)?;
                        at += HANDSHAKE_LEN;
                    }
                }
                continue;
            }
            match wire::decode(rest, &self.limits) {
                Ok(Decoded::NeedMore(_)) => break,
                Ok(Decoded::Message { message, consumed }) => {
                    self.handle_message(message, at, now)?;
                    at += consumed;
                }
                // An id we do not speak: skipped whole, as libtorrent does
                // (a newer client may try a message before checking).
                Err(WireError::UnknownMessageId(id)) => {
                    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    if len > MAX_UNKNOWN_MESSAGE_LEN {
                        return Err(Violation::Wire(WireError::MessageTooLong {
                            id,
                            len,
                            max: MAX_UNKNOWN_MESSAGE_LEN,
                        }));
                    }
                    let frame = len as usize + 4;
                    if rest.len() < frame {
                        break;
                    }
                    self.stats.unknown_messages += 1;
                    at += frame;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if at > 0 {
            self.last_received = now;
            self.stats.received_bytes += at as u64;
        }
        self.download_rate.update(now);
        Ok(at)
    }

    /// One decoded message; `at` is its offset in the caller's buffer (for
    /// event ranges).
    fn handle_message(
        &mut self,
        msg: Message<'_>,
        at: usize,
        now: Instant,
    ) -> Result<(), Violation> {
        if let Some(id) = msg.id() {
            let is_fast_only = matches!(
                id,
                MessageId::Suggest
                    | MessageId::HaveAll
                    | MessageId::HaveNone
                    | MessageId::Reject
                    | MessageId::AllowedFast
            );
            if is_fast_only && !self.fast {
                return Err(Violation::FastNotNegotiated(id));
            }
        }
        let first = self.bitfield_allowed;
        self.bitfield_allowed =
            first && matches!(msg, Message::KeepAlive | Message::Extended { .. });
        match msg {
            Message::KeepAlive => {}
            Message::Port(port) => {
                // One report per connection (a peer repeating PORT cannot
                // make us ping nodes in a loop), and only from a peer that
                // set the DHT bit.
                if port != 0 && self.peer_dht && !self.port_seen {
                    self.port_seen = true;
                    self.events.push_back(Event::DhtPort(port));
                }
            }
            Message::Choke => {
                self.peer_choking = true;
                self.events.push_back(Event::Choked);
                if !self.fast {
                    // BEP 3: a choke discards every pending request.
                    for o in self.outstanding.drain(..) {
                        self.events.push_back(Event::RequestDropped(o.request));
                    }
                }
            }
            Message::Unchoke => {
                self.peer_choking = false;
                self.events.push_back(Event::Unchoked);
            }
            Message::Interested => {
                self.peer_interested = true;
                self.events.push_back(Event::Interested);
            }
            Message::NotInterested => {
                self.peer_interested = false;
                self.events.push_back(Event::NotInterested);
            }
            Message::Have { piece } => {
                self.check_piece(piece)?;
                if !self.pieces.get(piece) {
                    self.pieces.set(piece);
                    self.events.push_back(Event::Have(piece));
                }
            }
            Message::Bitfield(bytes) => {
                let pieces = Bitfield::from_bytes(bytes, self.setup.piece_count)?;
                if !first {
                    // aria2 batches its haves into a bitfield (or have-all)
                    // mid-connection: take it as haves of the new pieces.
                    self.late_bitfield(|p| pieces.get(p));
                    return Ok(());
                }
                self.pieces = pieces;
                self.events.push_back(Event::Bitfield);
            }
            Message::HaveAll | Message::HaveNone => {
                if !first {
                    if msg == Message::HaveAll {
                        self.late_bitfield(|_| true);
                    }
                    // A late have-none adds nothing (pieces are never lost).
                    return Ok(());
                }
                self.pieces = if msg == Message::HaveAll {
                    Bitfield::full(self.setup.piece_count)
                } else {
                    Bitfield::new(self.setup.piece_count)
                };
                self.events.push_back(Event::Bitfield);
            }
            Message::Request(request) => self.on_peer_request(request, now)?,
            Message::Cancel(request) => {
                if let Some(i) = self.peer_requests.iter().position(|r| *r == request) {
                    self.peer_requests.remove(i);
                    if self.fast {
                        // BEP 6: every request is answered, a cancelled one
                        // with a reject.
                        self.send(Message::Reject(request), now);
                    }
                }
            }
            Message::Piece { piece, begin, data } => {
                let len = data.len() as u64;
                let found = self.outstanding.iter().position(|o| {
                    o.request.piece == piece
                        && o.request.begin == begin
                        && o.request.length as usize == data.len()
                });
                match found {
                    Some(i) => {
                        self.outstanding.remove(i);
                        self.stats.downloaded_bytes += len;
                        self.download_rate.add(len, now);
                        self.last_block = now;
                        self.snubbed = false;
                        let start = at + PIECE_HEADER_LEN;
                        self.events.push_back(Event::Block {
                            piece,
                            begin,
                            data: start..start + data.len(),
                        });
                    }
                    // Cancelled in endgame, or never asked for: not an
                    // attack worth a disconnect, but never passed on.
                    None => self.stats.unrequested_bytes += len,
                }
            }
            Message::Reject(request) => {
                if let Some(i) = self.outstanding.iter().position(|o| o.request == request) {
                    self.outstanding.remove(i);
                    self.events.push_back(Event::RequestDropped(request));
                }
            }
            Message::AllowedFast { piece } => {
                // Out-of-range or surplus entries are harmless: ignored.
                if piece < self.setup.piece_count
                    && !self.allowed_fast.contains(&piece)
                    && self.allowed_fast.len() < MAX_ALLOWED_FAST
                {
                    self.allowed_fast.push(piece);
                    self.events.push_back(Event::AllowedFast(piece));
                }
            }
            Message::Suggest { piece } => {
                if piece < self.setup.piece_count {
                    self.events.push_back(Event::Suggest(piece));
                }
            }
            Message::Extended { id, payload } => {
                if !self.extensions {
                    return Err(Violation::ExtensionsNotNegotiated);
                }
                if id == 0 {
                    self.peer_extension = Some(ExtensionHandshake::decode(payload)?);
                    self.events.push_back(Event::ExtensionHandshake);
                } else {
                    let start = at + 6;
                    self.events
                        .push_back(Event::Extended { id, payload: start..start + payload.len() });
                }
            }
        }
        Ok(())
    }

    /// A bitfield (or have-all) after other messages: every piece it sets
    /// that we did not know of becomes an [`Event::Have`] (at most once per
    /// piece per connection, so at most `piece_count` events in all).
    fn late_bitfield(&mut self, has: impl Fn(u32) -> bool) {
        for piece in 0..self.setup.piece_count {
            if has(piece) && !self.pieces.get(piece) {
                self.pieces.set(piece);
                self.events.push_back(Event::Have(piece));
            }
        }
    }

    fn check_piece(&self, piece: u32) -> Result<(), Violation> {
        if piece < self.setup.piece_count {
            Ok(())
        } else {
            Err(Violation::PieceOutOfRange { piece, piece_count: self.setup.piece_count })
        }
    }

    /// Bytes in piece `piece` (which must be in range).
    fn piece_len(&self, piece: u32) -> u64 {
        let start = u64::from(piece) * u64::from(self.setup.piece_length);
        self.setup.total_length.saturating_sub(start).min(u64::from(self.setup.piece_length))
    }

    fn in_piece(&self, r: &BlockRequest) -> bool {
        r.piece < self.setup.piece_count
            && r.length > 0
            && u64::from(r.begin) + u64::from(r.length) <= self.piece_len(r.piece)
    }

    fn on_peer_request(&mut self, request: BlockRequest, now: Instant) -> Result<(), Violation> {
        if !self.in_piece(&request) {
            return Err(Violation::RequestOutOfRange(request));
        }
        if self.am_choking && !self.our_allowed_fast.contains(&request.piece) {
            if self.fast {
                self.send(Message::Reject(request), now);
            } else {
                // Requests sent before our choke reached the peer are
                // normal; a whole queue's worth more is not.
                self.requests_while_choked += 1;
                if self.requests_while_choked > self.config.max_peer_requests {
                    return Err(Violation::RequestsWhileChoked {
                        count: self.requests_while_choked,
                    });
                }
            }
            return Ok(());
        }
        if self.peer_requests.len() >= self.config.max_peer_requests {
            // Past the `reqq` we advertised: a slip (real clients pipeline
            // a little past it), never a reason to ban. A fast peer gets a
            // reject (BEP 6: every request is answered), a plain one silence
            // (it re-requests after its timeout). Only a flood far past the
            // queue, with no room freed in between, ends the connection, and
            // then without a ban.
            self.overflow_requests += 1;
            self.stats.overflow_requests += 1;
            if self.overflow_requests > OVERFLOW_REQUESTS_FACTOR * self.config.max_peer_requests {
                return Err(Violation::TooManyRequests { max: self.config.max_peer_requests });
            }
            if self.fast {
                self.send(Message::Reject(request), now);
            }
            return Ok(());
        }
        self.overflow_requests = 0;
        self.peer_requests.push_back(request);
        Ok(())
    }

    // ---- output ---------------------------------------------------------

    /// The next event for the torrent core.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Hands the queued outgoing bytes to the driver: `spare` (cleared
    /// first) and the internal buffer swap, so two buffers ping-pong and
    /// nothing is copied or allocated in steady state.
    pub fn swap_outgoing(&mut self, spare: &mut Vec<u8>) {
        spare.clear();
        std::mem::swap(&mut self.out, spare);
    }

    /// Queued outgoing bytes (not yet handed over).
    pub fn outgoing_len(&self) -> usize {
        self.out.len()
    }

    fn send(&mut self, msg: Message<'_>, now: Instant) {
        msg.encode(&mut self.out);
        self.sent(msg.encoded_len(), now);
    }

    fn sent(&mut self, bytes: usize, now: Instant) {
        self.stats.sent_bytes += bytes as u64;
        self.last_sent = now;
    }

    /// Timers; call about once a second. Queues keep-alives, times out
    /// requests (as events) and reports a dead connection as a violation.
    pub fn tick(&mut self, now: Instant) -> Result<(), Violation> {
        if self.phase == Phase::Handshake {
            if now.saturating_duration_since(self.created_at) >= self.config.handshake_timeout {
                return Err(Violation::HandshakeTimeout(self.config.handshake_timeout));
            }
            return Ok(());
        }
        let silent = now.saturating_duration_since(self.last_received);
        if silent >= self.config.idle_timeout {
            return Err(Violation::Idle(silent));
        }
        if now.saturating_duration_since(self.last_sent) >= self.config.keepalive_interval {
            self.send(Message::KeepAlive, now);
        }
        let timeout = self.config.request_timeout;
        let last_block = self.last_block;
        for o in self.outstanding.iter_mut().filter(|o| !o.timed_out) {
            if now.saturating_duration_since(o.sent_at.max(last_block)) >= timeout {
                o.timed_out = true;
                self.snubbed = true;
                self.stats.timed_out_requests += 1;
                self.events.push_back(Event::RequestTimedOut(o.request));
            }
        }
        self.download_rate.update(now);
        self.upload_rate.update(now);
        Ok(())
    }

    // ---- commands from the torrent core --------------------------------

    /// Sends our pieces: `have-all`/`have-none` when both sides speak the
    /// fast extension and they fit, else a `bitfield` (omitted when empty,
    /// as BEP 3 allows); then our extension handshake when both sides speak
    /// BEP 10. Call once, on [`Event::Handshake`]; later calls do nothing.
    pub fn send_bitfield(&mut self, ours: &Bitfield, now: Instant) {
        if self.phase != Phase::Active || self.bitfield_sent {
            return;
        }
        self.bitfield_sent = true;
        if self.fast && ours.is_full() {
            self.send(Message::HaveAll, now);
        } else if self.fast && ours.count() == 0 {
            self.send(Message::HaveNone, now);
        } else if ours.count() > 0 {
            self.send(Message::Bitfield(ours.as_bytes()), now);
        }
        if self.extensions {
            let hs = ExtensionHandshake::ours(
                u32::try_from(self.config.max_peer_requests).unwrap_or(u32::MAX),
                self.setup.listen_port,
                self.setup.peer_ip,
                self.setup.metadata_size,
            );
            let mut hs = hs;
            if !self.pex {
                hs.extensions.retain(|(name, _)| name != "ut_pex");
            }
            let mut payload = Vec::new();
            hs.encode(&mut payload);
            self.send(Message::Extended { id: 0, payload: &payload }, now);
        }
    }

    /// Whether our extension handshake offers `ut_pex` (BEP 11); the
    /// torrent turns it off for private torrents (BEP 27). Call before the
    /// handshake completes.
    pub fn set_pex(&mut self, offer: bool) {
        self.pex = offer;
    }

    /// Sends a BEP 10 extension message on `id`, the id the peer gave the
    /// extension in its handshake (`ut_metadata` answers, `ut_pex`). Does
    /// nothing when the extension protocol was not negotiated.
    pub fn send_extended(&mut self, id: u8, payload: &[u8], now: Instant) {
        if self.phase == Phase::Active && self.extensions && id != 0 {
            self.send(Message::Extended { id, payload }, now);
        }
    }

    /// Sends `PORT` with our DHT node's port (BEP 5) when our DHT runs for
    /// this torrent and the peer set the DHT bit. Call it after the
    /// bitfield (a bitfield must be the first message).
    pub fn send_dht_port(&mut self, now: Instant) {
        if let (Phase::Active, true, Some(port)) = (self.phase, self.peer_dht, self.setup.dht_port)
        {
            self.send(Message::Port(port), now);
        }
    }

    /// Announces a newly verified piece. Before our bitfield went out the
    /// piece is left to the bitfield (the torrent takes it when it sends).
    pub fn send_have(&mut self, piece: u32, now: Instant) {
        if self.bitfield_sent {
            self.send(Message::Have { piece }, now);
        }
    }

    /// Tells the peer whether we want its pieces.
    pub fn set_interested(&mut self, interested: bool, now: Instant) {
        if self.phase == Phase::Active && self.am_interested != interested {
            self.am_interested = interested;
            let msg = if interested { Message::Interested } else { Message::NotInterested };
            self.send(msg, now);
        }
    }

    /// Chokes the peer: its queued requests are dropped (with a `reject`
    /// each under the fast extension), except those for pieces of our
    /// allowed-fast set, which BEP 6 says to keep serving.
    pub fn choke(&mut self, now: Instant) {
        if self.phase != Phase::Active || self.am_choking {
            return;
        }
        self.am_choking = true;
        self.send(Message::Choke, now);
        let mut queued = std::mem::take(&mut self.peer_requests);
        for r in queued.drain(..) {
            if self.our_allowed_fast.contains(&r.piece) {
                self.peer_requests.push_back(r);
            } else if self.fast {
                self.send(Message::Reject(r), now);
            }
        }
    }

    /// Lets the peer request `piece` while we choke it (BEP 6 `allowed fast`;
    /// the torrent sends its canonical set, pieces we have). Ignored without
    /// the fast extension, before the handshake, for a piece out of range or
    /// already allowed, and past [`MAX_ALLOWED_FAST`].
    pub fn allow_fast(&mut self, piece: u32, now: Instant) {
        if !self.fast
            || self.phase != Phase::Active
            || piece >= self.setup.piece_count
            || self.our_allowed_fast.contains(&piece)
            || self.our_allowed_fast.len() >= MAX_ALLOWED_FAST
        {
            return;
        }
        self.our_allowed_fast.push(piece);
        self.send(Message::AllowedFast { piece }, now);
    }

    /// Unchokes the peer: it may request blocks.
    pub fn unchoke(&mut self, now: Instant) {
        if self.phase != Phase::Active || !self.am_choking {
            return;
        }
        self.am_choking = false;
        self.requests_while_choked = 0;
        self.send(Message::Unchoke, now);
    }

    /// Whether a request for `piece` may be sent now (pipeline aside).
    pub fn can_request(&self, piece: u32) -> bool {
        self.phase == Phase::Active
            && self.pieces.get(piece)
            && (!self.peer_choking || (self.fast && self.allowed_fast.contains(&piece)))
    }

    /// Requests a block from the peer.
    pub fn request(&mut self, request: BlockRequest, now: Instant) -> Result<(), RequestRefused> {
        if self.phase != Phase::Active {
            return Err(RequestRefused::NotConnected);
        }
        if !self.in_piece(&request) || request.length > BLOCK_LEN {
            return Err(RequestRefused::OutOfRange);
        }
        if !self.pieces.get(request.piece) {
            return Err(RequestRefused::PeerLacksPiece);
        }
        if !self.can_request(request.piece) {
            return Err(RequestRefused::Choked);
        }
        if self.outstanding.len() >= self.config.max_outstanding_requests {
            return Err(RequestRefused::PipelineFull);
        }
        if self.outstanding.iter().any(|o| o.request == request) {
            return Err(RequestRefused::Duplicate);
        }
        self.outstanding.push_back(Outstanding { request, sent_at: now, timed_out: false });
        self.send(Message::Request(request), now);
        Ok(())
    }

    /// Withdraws a request (endgame: another peer delivered the block). A
    /// block that still arrives counts as unrequested. Returns whether it was
    /// outstanding.
    pub fn cancel(&mut self, request: BlockRequest, now: Instant) -> bool {
        match self.outstanding.iter().position(|o| o.request == request) {
            Some(i) => {
                self.outstanding.remove(i);
                self.send(Message::Cancel(request), now);
                true
            }
            None => false,
        }
    }

    /// The peer's oldest queued request, taken off the queue. The torrent
    /// checks that we have the piece, reads the block, and sends it with
    /// [`Peer::upload_header`]. While we choke the peer, only requests for
    /// our allowed-fast pieces (the only ones queued then).
    pub fn next_upload(&mut self) -> Option<BlockRequest> {
        let next = self.peek_upload()?;
        self.peer_requests.pop_front();
        Some(next)
    }

    /// What [`Peer::next_upload`] would return, left on the queue (the
    /// torrent looks before it has the upload budget to serve it).
    pub fn peek_upload(&self) -> Option<BlockRequest> {
        let next = *self.peer_requests.front()?;
        self.may_upload(next.piece).then_some(next)
    }

    /// Whether a block of `piece` may be sent now: the peer is unchoked, or
    /// the piece is in our allowed-fast set.
    pub fn may_upload(&self, piece: u32) -> bool {
        !self.am_choking || self.our_allowed_fast.contains(&piece)
    }

    /// Tells the peer we will not serve `request` (after [`Peer::next_upload`]
    /// returned it and we found we lack the piece): a `reject` under the fast
    /// extension, silence otherwise.
    pub fn reject(&mut self, request: BlockRequest, now: Instant) {
        if self.fast {
            self.send(Message::Reject(request), now);
        }
    }

    /// The `piece` message header for a block the driver is about to send:
    /// write the outgoing buffer first, then these 13 bytes, then exactly
    /// `request.length` bytes of data. Counts the upload.
    pub fn upload_header(&mut self, request: BlockRequest, now: Instant) -> [u8; PIECE_HEADER_LEN] {
        let len = u64::from(request.length);
        self.stats.uploaded_bytes += len;
        self.upload_rate.add(len, now);
        self.sent(PIECE_HEADER_LEN + request.length as usize, now);
        wire::piece_header(request.piece, request.begin, request.length)
    }

    /// Queues a whole `piece` message carrying `data` for `request` behind
    /// the bytes already queued (the simple path when the block was read into
    /// a separate buffer). Counts the upload like [`Peer::upload_header`].
    pub fn send_block(&mut self, request: BlockRequest, data: &[u8], now: Instant) {
        debug_assert_eq!(data.len(), request.length as usize);
        let header = self.upload_header(request, now);
        self.out.extend_from_slice(&header);
        self.out.extend_from_slice(data);
    }

    /// Queues a `piece` message for `request` whose data `fill` appends
    /// straight to the outgoing buffer: storage that reads at once copies the
    /// block once, into the bytes the driver will send, with no staging
    /// buffer. `fill` must append exactly `request.length` bytes or fail; on
    /// failure nothing stays queued and nothing is counted. Counts the upload
    /// like [`Peer::upload_header`].
    pub fn send_block_with<E>(
        &mut self,
        request: BlockRequest,
        now: Instant,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.out.len();
        let end = start + PIECE_HEADER_LEN + request.length as usize;
        self.out.reserve(end - start);
        self.out.extend_from_slice(&wire::piece_header(
            request.piece,
            request.begin,
            request.length,
        ));
        if let Err(e) = fill(&mut self.out) {
            self.out.truncate(start);
            return Err(e);
        }
        // The storage contract, not peer input: a short or long block would
        // corrupt the stream for every message after it.
        assert_eq!(self.out.len(), end, "fill appended the wrong number of bytes");
        let _ = self.upload_header(request, now);
        Ok(())
    }

    // ---- state ------------------------------------------------------------

    /// Handshakes exchanged.
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }
    pub fn peer_id(&self) -> Option<PeerId> {
        self.peer_id
    }
    /// Both sides speak the fast extension (BEP 6).
    pub fn supports_fast(&self) -> bool {
        self.fast
    }
    /// Both sides speak the extension protocol (BEP 10).
    pub fn supports_extensions(&self) -> bool {
        self.extensions
    }
    pub fn am_choking(&self) -> bool {
        self.am_choking
    }
    pub fn am_interested(&self) -> bool {
        self.am_interested
    }
    pub fn peer_choking(&self) -> bool {
        self.peer_choking
    }
    pub fn peer_interested(&self) -> bool {
        self.peer_interested
    }
    /// The peer's pieces.
    pub fn pieces(&self) -> &Bitfield {
        &self.pieces
    }
    /// Pieces the peer lets us request while it chokes us.
    pub fn allowed_fast(&self) -> &[u32] {
        &self.allowed_fast
    }
    /// Pieces we let the peer request while we choke it.
    pub fn our_allowed_fast(&self) -> &[u32] {
        &self.our_allowed_fast
    }
    pub fn extension_handshake(&self) -> Option<&ExtensionHandshake> {
        self.peer_extension.as_ref()
    }
    /// A request timed out and no block has arrived since.
    pub fn is_snubbed(&self) -> bool {
        self.snubbed
    }
    pub fn stats(&self) -> PeerStats {
        self.stats
    }
    /// Block data received per second.
    pub fn download_rate(&self) -> u64 {
        self.download_rate.bytes_per_second()
    }
    /// Block data sent per second.
    pub fn upload_rate(&self) -> u64 {
        self.upload_rate.bytes_per_second()
    }
    /// Our requests waiting for an answer, oldest first.
    pub fn outstanding(&self) -> impl Iterator<Item = BlockRequest> + '_ {
        self.outstanding.iter().map(|o| o.request)
    }
    /// The peer's requests we have not served yet.
    pub fn queued_peer_requests(&self) -> usize {
        self.peer_requests.len()
    }
    /// The decoder's limits, and `max_frame_len()` the receive buffer needs.
    pub fn wire_limits(&self) -> &WireLimits {
        &self.limits
    }

    /// How many requests the pipeline should hold: bandwidth x delay / block
    /// size, at least `min_request_depth`, at most the peer's `reqq` and our
    /// `max_outstanding_requests`; 1 while snubbed.
    pub fn desired_requests(&self) -> usize {
        if self.snubbed {
            return 1;
        }
        let reqq = self.peer_extension.as_ref().and_then(|e| e.reqq).unwrap_or(DEFAULT_PEER_REQQ);
        let cap = (reqq as usize).clamp(1, self.config.max_outstanding_requests.max(1));
        let bdp = self.download_rate() as f64 * self.config.request_queue_time.as_secs_f64()
            / f64::from(BLOCK_LEN);
        (bdp as usize).max(self.config.min_request_depth).min(cap)
    }

    /// How many more requests to send now.
    pub fn request_slots(&self) -> usize {
        self.desired_requests().saturating_sub(self.outstanding.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Reserved, MAX_REQUEST_LEN};
    use proptest::prelude::*;

    const PIECE_LEN: u32 = 2 * BLOCK_LEN;
    const PIECES: u32 = 10;
    /// The last piece is 5,000 bytes.
    const TOTAL: u64 = 9 * PIECE_LEN as u64 + 5000;

    fn setup(id: u8) -> PeerSetup {
        PeerSetup {
            info_hash: InfoHash([9; 20]),
            our_peer_id: PeerId::ours([id; 12]),
            piece_count: PIECES,
            piece_length: PIECE_LEN,
            total_length: TOTAL,
            listen_port: Some(6881),
            peer_ip: None,
            metadata_size: None,
            dht_port: None,
        }
    }

    fn payload() -> Vec<u8> {
        (0..TOTAL).map(|i| (i % 251) as u8).collect()
    }

    fn block_data(r: &BlockRequest) -> Vec<u8> {
        let start = (u64::from(r.piece) * u64::from(PIECE_LEN) + u64::from(r.begin)) as usize;
        payload()[start..start + r.length as usize].to_vec()
    }

    fn events(peer: &mut Peer) -> Vec<Event> {
        std::iter::from_fn(|| peer.poll_event()).collect()
    }

    fn outgoing(peer: &mut Peer) -> Vec<u8> {
        let mut buf = Vec::new();
        peer.swap_outgoing(&mut buf);
        buf
    }

    fn encode(msgs: &[Message<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            m.encode(&mut out);
        }
        out
    }

    fn decode_all(bytes: &[u8]) -> Vec<Message<'_>> {
        let limits = WireLimits::for_pieces(PIECES);
        let mut at = 0;
        let mut msgs = Vec::new();
        while let Decoded::Message { message, consumed } =
            wire::decode(&bytes[at..], &limits).unwrap()
        {
            msgs.push(message);
            at += consumed;
        }
        assert_eq!(at, bytes.len(), "whole messages only");
        msgs
    }

    /// An outgoing peer whose remote answered with `reserved`; the handshake
    /// event and our handshake bytes are drained.
    fn connected(reserved: Reserved, now: Instant) -> Peer {
        let mut peer = Peer::outgoing(PeerConfig::default(), setup(1), now);
        let remote = Handshake { reserved, info_hash: InfoHash([9; 20]), peer_id: PeerId([7; 20]) };
        assert_eq!(peer.handle_bytes(&remote.to_bytes(), now), Ok(HANDSHAKE_LEN));
        assert_eq!(events(&mut peer), [Event::Handshake { peer_id: PeerId([7; 20]) }]);
        outgoing(&mut peer);
        peer
    }

    fn plain() -> Reserved {
        Reserved::default()
    }

    /// A driver for one side of an in-memory connection: its receive buffer
    /// and what its events said.
    struct Side {
        peer: Peer,
        inbox: Vec<u8>,
        /// Blocks received, with their data copied out of `inbox`.
        blocks: Vec<(u32, u32, Vec<u8>)>,
        log: Vec<Event>,
    }

    impl Side {
        fn new(peer: Peer) -> Side {
            Side { peer, inbox: Vec::new(), blocks: Vec::new(), log: Vec::new() }
        }

        /// Feeds `bytes` the way a driver does: append, parse, drain events
        /// (copying block data out), then drop the consumed bytes.
        fn receive(&mut self, bytes: &[u8], now: Instant) -> Result<(), Violation> {
            self.inbox.extend_from_slice(bytes);
            loop {
                let used = self.peer.handle_bytes(&self.inbox, now)?;
                while let Some(e) = self.peer.poll_event() {
                    if let Event::Block { piece, begin, data } = &e {
                        self.blocks.push((*piece, *begin, self.inbox[data.clone()].to_vec()));
                    }
                    self.log.push(e);
                }
                self.inbox.drain(..used);
                if used == 0 {
                    return Ok(());
                }
            }
        }

        /// What the side sends: queued messages, then any uploads it serves
        /// (`piece` headers + data), like the driver's vectored write.
        fn send(&mut self, serve: bool, now: Instant) -> Vec<u8> {
            let mut wire = outgoing(&mut self.peer);
            while let Some(r) = serve.then(|| self.peer.next_upload()).flatten() {
                wire.extend_from_slice(&self.peer.upload_header(r, now));
                wire.extend_from_slice(&block_data(&r));
            }
            wire
        }
    }

    #[test]
    fn whole_exchange_with_virtual_time() {
        let t0 = Instant::now();
        let cfg = PeerConfig::default();
        // Leecher dials the seeder. The listener reads the first 68 bytes to
        // route the connection, then the seeder's Peer is built from them.
        let mut leecher = Side::new(Peer::outgoing(cfg.clone(), setup(1), t0));
        let hello = outgoing(&mut leecher.peer);
        let HandshakeDecoded::Done(hs) = decode_handshake(&hello).unwrap() else { panic!() };
        let mut seeder = Side::new(Peer::incoming(cfg.clone(), setup(2), hs, t0).unwrap());
        assert_eq!(
            seeder.peer.poll_event(),
            Some(Event::Handshake { peer_id: setup(1).our_peer_id })
        );
        seeder.peer.send_bitfield(&Bitfield::full(PIECES), t0);
        assert!(seeder.peer.supports_fast() && seeder.peer.supports_extensions());

        // Seeder -> leecher: handshake, have-all, extension handshake.
        let t = t0 + Duration::from_millis(1);
        leecher.receive(&seeder.send(false, t), t).unwrap();
        assert_eq!(
            leecher.log,
            [
                Event::Handshake { peer_id: setup(2).our_peer_id },
                Event::Bitfield,
                Event::ExtensionHandshake
            ]
        );
        assert!(leecher.peer.pieces().is_full());
        let ext = leecher.peer.extension_handshake().unwrap();
        assert_eq!(ext.reqq, Some(cfg.max_peer_requests as u32));
        assert_eq!(ext.listen_port, Some(6881));
        leecher.peer.send_bitfield(&Bitfield::new(PIECES), t);
        leecher.peer.set_interested(true, t);
        // Choked: requests are refused locally, not sent.
        let r0 = BlockRequest { piece: 0, begin: 0, length: BLOCK_LEN };
        assert_eq!(leecher.peer.request(r0, t), Err(RequestRefused::Choked));

        // Leecher -> seeder: have-none, extension handshake, interested.
        seeder.receive(&leecher.send(false, t), t).unwrap();
        assert_eq!(seeder.log, [Event::Bitfield, Event::ExtensionHandshake, Event::Interested]);
        assert_eq!(seeder.peer.pieces().count(), 0);
        seeder.peer.unchoke(t);
        leecher.receive(&seeder.send(false, t), t).unwrap();
        assert_eq!(leecher.log.last(), Some(&Event::Unchoked));

        // Request every block of pieces 0..9 and the short last piece, as
        // far as the pipeline allows, until the torrent is done.
        let mut wanted: VecDeque<BlockRequest> = (0..PIECES)
            .flat_map(|piece| {
                let len = if piece == PIECES - 1 { 5000 } else { PIECE_LEN };
                (0..len).step_by(BLOCK_LEN as usize).map(move |begin| BlockRequest {
                    piece,
                    begin,
                    length: (len - begin).min(BLOCK_LEN),
                })
            })
            .collect();
        let total_blocks = wanted.len();
        let mut now = t;
        for _round in 0..100 {
            if wanted.is_empty() && leecher.peer.outstanding().count() == 0 {
                break;
            }
            for _ in 0..leecher.peer.request_slots() {
                let Some(r) = wanted.pop_front() else { break };
                leecher.peer.request(r, now).unwrap();
            }
            assert!(leecher.peer.outstanding().count() <= leecher.peer.desired_requests());
            now += Duration::from_millis(100);
            seeder.receive(&leecher.send(false, now), now).unwrap();
            now += Duration::from_millis(100);
            leecher.receive(&seeder.send(true, now), now).unwrap();
        }
        assert_eq!(leecher.blocks.len(), total_blocks);
        let mut got = vec![0u8; TOTAL as usize];
        for (piece, begin, data) in &leecher.blocks {
            let start = (*piece as usize) * PIECE_LEN as usize + *begin as usize;
            got[start..start + data.len()].copy_from_slice(data);
        }
        assert!(got == payload(), "every block arrived intact");
        assert_eq!(leecher.peer.stats().downloaded_bytes, TOTAL);
        assert_eq!(seeder.peer.stats().uploaded_bytes, TOTAL);
        assert_eq!(leecher.peer.stats().unrequested_bytes, 0);
        assert!(leecher.peer.download_rate() > 0);

        // The seeder stalls: requests go unanswered past the timeout.
        leecher.peer.request(r0, now).unwrap();
        let stall = now;
        seeder.receive(&leecher.send(false, now), now).unwrap();
        leecher.peer.tick(stall + cfg.request_timeout - Duration::from_millis(1)).unwrap();
        assert_eq!(leecher.peer.poll_event(), None);
        now = stall + cfg.request_timeout;
        leecher.peer.tick(now).unwrap();
        assert_eq!(events(&mut leecher.peer), [Event::RequestTimedOut(r0)]);
        assert!(leecher.peer.is_snubbed());
        assert_eq!(leecher.peer.desired_requests(), 1);
        leecher.peer.tick(now + Duration::from_secs(1)).unwrap();
        assert_eq!(leecher.peer.poll_event(), None, "a timeout is reported once");
        // Late delivery still counts (the request stayed outstanding).
        leecher.receive(&seeder.send(true, now), now).unwrap();
        assert!(matches!(leecher.log.last(), Some(Event::Block { piece: 0, begin: 0, .. })));
        assert!(!leecher.peer.is_snubbed());

        // Keep-alives: nothing sent for 90 s -> one keep-alive each way.
        let quiet = now;
        now = quiet + cfg.keepalive_interval;
        leecher.peer.tick(now).unwrap();
        seeder.peer.tick(now).unwrap();
        assert_eq!(leecher.send(false, now), [0, 0, 0, 0]);
        let seeder_keepalive = seeder.send(true, now);
        assert_eq!(seeder_keepalive, [0, 0, 0, 0]);
        leecher.peer.tick(now + Duration::from_secs(1)).unwrap();
        assert_eq!(leecher.peer.outgoing_len(), 0, "not again right away");
        // The keep-alive keeps the leecher's view of the seeder alive...
        leecher.receive(&seeder_keepalive, now).unwrap();
        leecher.peer.tick(quiet + cfg.idle_timeout).unwrap();
        // ...but silence past the idle timeout drops it.
        assert_eq!(
            leecher.peer.tick(now + cfg.idle_timeout),
            Err(Violation::Idle(cfg.idle_timeout))
        );
    }

    #[test]
    fn plain_peer_gets_a_bitfield_and_no_extension_handshake() {
        let now = Instant::now();
        let mut peer = connected(plain(), now);
        let mut ours = Bitfield::new(PIECES);
        ours.set(3);
        peer.send_bitfield(&ours, now);
        peer.send_bitfield(&ours, now);
        peer.send_have(4, now);
        let out = outgoing(&mut peer);
        assert_eq!(
            decode_all(&out),
            [Message::Bitfield(ours.as_bytes()), Message::Have { piece: 4 }]
        );
        // An empty bitfield is not sent at all to a peer without have-none.
        let mut peer = connected(plain(), now);
        peer.send_have(1, now);
        peer.send_bitfield(&Bitfield::new(PIECES), now);
        assert!(outgoing(&mut peer).is_empty(), "have before bitfield is folded into it");
    }

    #[test]
    fn handshake_problems() {
        let now = Instant::now();
        let mut peer = Peer::outgoing(PeerConfig::default(), setup(1), now);
        let mut hs = Handshake::ours(InfoHash([8; 20]), PeerId([7; 20]));
        assert_eq!(
            peer.handle_bytes(&hs.to_bytes(), now),
            Err(Violation::WrongInfoHash(InfoHash([8; 20])))
        );
        hs = Handshake::ours(InfoHash([9; 20]), setup(1).our_peer_id);
        let mut peer = Peer::outgoing(PeerConfig::default(), setup(1), now);
        assert_eq!(peer.handle_bytes(&hs.to_bytes(), now), Err(Violation::ConnectedToSelf));
        assert!(Peer::incoming(PeerConfig::default(), setup(1), hs, now).is_err());
        let mut peer = Peer::outgoing(PeerConfig::default(), setup(1), now);
        assert_eq!(peer.handle_bytes(b"\x13BitTorrent", now), Ok(0));
        assert_eq!(
            peer.handle_bytes(b"GET /announce", now),
            Err(Violation::Wire(WireError::NotBitTorrent))
        );
        let cfg = PeerConfig::default();
        let mut peer = Peer::outgoing(cfg.clone(), setup(1), now);
        assert_eq!(peer.tick(now + cfg.handshake_timeout - Duration::from_millis(1)), Ok(()));
        assert_eq!(
            peer.tick(now + cfg.handshake_timeout),
            Err(Violation::HandshakeTimeout(cfg.handshake_timeout))
        );
        // Commands before the handshake do nothing.
        let mut peer = Peer::outgoing(cfg, setup(1), now);
        outgoing(&mut peer);
        peer.unchoke(now);
        peer.set_interested(true, now);
        assert_eq!(
            peer.request(BlockRequest { piece: 0, begin: 0, length: 1 }, now),
            Err(RequestRefused::NotConnected)
        );
        assert_eq!(peer.outgoing_len(), 0);
    }

    #[test]
    fn handshake_and_first_messages_in_one_read() {
        let now = Instant::now();
        let mut peer = Peer::outgoing(PeerConfig::default(), setup(1), now);
        let mut bytes = Handshake::ours(InfoHash([9; 20]), PeerId([7; 20])).to_bytes().to_vec();
        bytes.extend(encode(&[Message::HaveAll, Message::Unchoke, Message::Have { piece: 2 }]));
        bytes.extend_from_slice(&[0, 0, 0]); // part of the next message
        assert_eq!(peer.handle_bytes(&bytes, now), Ok(bytes.len() - 3));
        assert_eq!(
            events(&mut peer),
            [Event::Handshake { peer_id: PeerId([7; 20]) }, Event::Bitfield, Event::Unchoked]
        );
    }

    #[test]
    fn bitfield_rules() {
        let now = Instant::now();
        let bf = [0xffu8, 0xc0];
        // Good bitfield after a keep-alive and an extended message.
        let mut peer = connected(Reserved::OURS, now);
        let bytes = encode(&[
            Message::KeepAlive,
            Message::Extended { id: 0, payload: b"de" },
            Message::Bitfield(&bf),
            Message::Have { piece: 1 },
            Message::Have { piece: 1 },
        ]);
        assert_eq!(peer.handle_bytes(&bytes, now), Ok(bytes.len()));
        assert_eq!(events(&mut peer), [Event::ExtensionHandshake, Event::Bitfield]);
        assert!(peer.pieces().is_full());
        // A late bitfield or have-all (aria2 batches haves so) adds haves of
        // the new pieces only; a late have-none changes nothing.
        let all_but_0: Vec<Event> = (1..10).map(Event::Have).collect();
        for (first, then, expected) in [
            (Message::Have { piece: 0 }, Message::Bitfield(&bf), all_but_0.clone()),
            (Message::Have { piece: 0 }, Message::HaveAll, all_but_0.clone()),
            (Message::Bitfield(&bf), Message::Bitfield(&bf), vec![]),
            (Message::Bitfield(&bf), Message::HaveNone, vec![]),
            (Message::HaveNone, Message::HaveAll, (0..10).map(Event::Have).collect()),
        ] {
            let mut peer = connected(Reserved::OURS, now);
            let bytes = encode(&[first, then]);
            assert_eq!(peer.handle_bytes(&bytes, now), Ok(bytes.len()));
            let got = events(&mut peer);
            assert_eq!(&got[1..], &expected[..], "{first:?} then {then:?}");
            assert!(peer.pieces().is_full() || expected.is_empty());
        }
        // Wrong length, spare bits set.
        let mut peer = connected(plain(), now);
        assert!(matches!(
            peer.handle_bytes(&encode(&[Message::Bitfield(&[0xff])]), now),
            Err(Violation::BadBitfield(BitfieldError::WrongLength { .. }))
        ));
        let mut peer = connected(plain(), now);
        assert_eq!(
            peer.handle_bytes(&encode(&[Message::Bitfield(&[0xff, 0xe0])]), now),
            Err(Violation::BadBitfield(BitfieldError::SpareBitsSet))
        );
        // Longer than the torrent's limit: refused by the decoder.
        let mut peer = connected(plain(), now);
        assert!(matches!(
            peer.handle_bytes(&encode(&[Message::Bitfield(&[0; 3])]), now),
            Err(Violation::Wire(WireError::MessageTooLong { id: 5, .. }))
        ));
    }

    #[test]
    fn out_of_range_and_unnegotiated_messages() {
        let now = Instant::now();
        let cases: [(Reserved, Message<'_>, Violation); 5] = [
            (
                plain(),
                Message::Have { piece: PIECES },
                Violation::PieceOutOfRange { piece: PIECES, piece_count: PIECES },
            ),
            (plain(), Message::HaveAll, Violation::FastNotNegotiated(MessageId::HaveAll)),
            (
                plain(),
                Message::Reject(BlockRequest { piece: 0, begin: 0, length: 1 }),
                Violation::FastNotNegotiated(MessageId::Reject),
            ),
            (
                plain(),
                Message::Extended { id: 0, payload: b"de" },
                Violation::ExtensionsNotNegotiated,
            ),
            (
                Reserved::OURS,
                Message::Extended { id: 0, payload: b"i1e" },
                Violation::BadExtensionHandshake(ExtensionError::NotADictionary("integer")),
            ),
        ];
        for (reserved, msg, violation) in cases {
            let mut peer = connected(reserved, now);
            assert_eq!(peer.handle_bytes(&encode(&[msg]), now), Err(violation), "{msg:?}");
        }
        // Harmless out-of-range hints are ignored.
        let mut peer = connected(Reserved::OURS, now);
        let bytes = encode(&[
            Message::Suggest { piece: PIECES },
            Message::AllowedFast { piece: PIECES },
            Message::AllowedFast { piece: 2 },
            Message::AllowedFast { piece: 2 },
            Message::Port(6881),
            Message::Extended { id: 3, payload: b"xyz" },
        ]);
        assert_eq!(peer.handle_bytes(&bytes, now), Ok(bytes.len()));
        let ext_at = bytes.len() - 3;
        assert_eq!(
            events(&mut peer),
            [Event::AllowedFast(2), Event::Extended { id: 3, payload: ext_at..bytes.len() }]
        );
    }

    #[test]
    fn blocks_must_match_a_request() {
        let now = Instant::now();
        let mut peer = connected(Reserved::OURS, now);
        let r = BlockRequest { piece: 9, begin: 0, length: 5000 };
        let bytes = encode(&[Message::HaveAll, Message::Unchoke]);
        peer.handle_bytes(&bytes, now).unwrap();
        events(&mut peer);
        assert_eq!(
            peer.request(BlockRequest { piece: 9, begin: 0, length: 5001 }, now),
            Err(RequestRefused::OutOfRange)
        );
        peer.request(r, now).unwrap();
        assert_eq!(peer.request(r, now), Err(RequestRefused::Duplicate));
        let data = vec![1u8; 5000];
        // Wrong offset, wrong length, wrong piece: unrequested, no event.
        let junk = encode(&[
            Message::Piece { piece: 9, begin: 1, data: &data[1..] },
            Message::Piece { piece: 9, begin: 0, data: &data[..4999] },
            Message::Piece { piece: 8, begin: 0, data: &data },
        ]);
        assert_eq!(peer.handle_bytes(&junk, now), Ok(junk.len()));
        assert_eq!(peer.poll_event(), None);
        assert_eq!(peer.stats().unrequested_bytes, 4999 + 4999 + 5000);
        let good = encode(&[Message::Piece { piece: 9, begin: 0, data: &data }]);
        peer.handle_bytes(&good, now).unwrap();
        assert_eq!(events(&mut peer), [Event::Block { piece: 9, begin: 0, data: 13..5013 }]);
        // The same block again: we no longer want it.
        peer.handle_bytes(&good, now).unwrap();
        assert_eq!(peer.poll_event(), None);
        // A cancelled block that still arrives is not passed on either.
        peer.request(r, now).unwrap();
        assert!(peer.cancel(r, now));
        assert!(!peer.cancel(r, now));
        peer.handle_bytes(&good, now).unwrap();
        assert_eq!(peer.poll_event(), None);
        assert_eq!(peer.stats().downloaded_bytes, 5000);
    }

    #[test]
    fn choke_drops_requests_only_without_the_fast_extension() {
        let now = Instant::now();
        let r = BlockRequest { piece: 0, begin: 0, length: BLOCK_LEN };
        let r2 = BlockRequest { piece: 0, begin: BLOCK_LEN, length: BLOCK_LEN };
        for reserved in [plain(), Reserved::OURS] {
            let mut peer = connected(reserved, now);
            let start = encode(&[Message::Bitfield(&[0x80, 0]), Message::Unchoke]);
            peer.handle_bytes(&start, now).unwrap();
            events(&mut peer);
            peer.request(r, now).unwrap();
            peer.request(r2, now).unwrap();
            assert_eq!(
                peer.request(BlockRequest { piece: 1, begin: 0, length: 1 }, now),
                Err(RequestRefused::PeerLacksPiece)
            );
            peer.handle_bytes(&encode(&[Message::Choke]), now).unwrap();
            if reserved.fast() {
                assert_eq!(events(&mut peer), [Event::Choked]);
                assert_eq!(peer.outstanding().count(), 2);
                peer.handle_bytes(&encode(&[Message::Reject(r)]), now).unwrap();
                assert_eq!(events(&mut peer), [Event::RequestDropped(r)]);
                // A reject for something never requested is ignored.
                peer.handle_bytes(&encode(&[Message::Reject(r)]), now).unwrap();
                assert_eq!(peer.poll_event(), None);
                assert_eq!(peer.outstanding().collect::<Vec<_>>(), [r2]);
            } else {
                assert_eq!(
                    events(&mut peer),
                    [Event::Choked, Event::RequestDropped(r), Event::RequestDropped(r2)]
                );
                assert_eq!(peer.outstanding().count(), 0);
            }
            assert_eq!(peer.request(r, now), Err(RequestRefused::Choked));
        }
        // Allowed-fast pieces may be requested while choked.
        let mut peer = connected(Reserved::OURS, now);
        peer.handle_bytes(&encode(&[Message::HaveAll, Message::AllowedFast { piece: 0 }]), now)
            .unwrap();
        assert!(peer.can_request(0) && !peer.can_request(1));
        assert_eq!(peer.request(r, now), Ok(()));
    }

    /// The seeding side: a peer that unchoked us and sends `requests`.
    fn serving(reserved: Reserved, cfg: PeerConfig) -> Peer {
        let now = Instant::now();
        let mut peer = Peer::outgoing(cfg, setup(1), now);
        let remote = Handshake { reserved, info_hash: InfoHash([9; 20]), peer_id: PeerId([7; 20]) };
        peer.handle_bytes(&remote.to_bytes(), now).unwrap();
        peer.send_bitfield(&Bitfield::full(PIECES), now);
        events(&mut peer);
        outgoing(&mut peer);
        peer
    }

    /// Goal: BEP 6 on the serving side: requests for pieces of our
    /// allowed-fast set are queued and served while the peer is choked, and
    /// survive a choke; every other request is rejected.
    #[test]
    fn allowed_fast_pieces_are_served_while_choked() {
        let now = Instant::now();
        let req = |piece| BlockRequest { piece, begin: 0, length: BLOCK_LEN };
        let mut peer = serving(Reserved::OURS, PeerConfig::default());
        peer.allow_fast(3, now);
        peer.allow_fast(3, now); // once only
        peer.allow_fast(PIECES, now); // out of range: ignored
        assert_eq!(decode_all(&outgoing(&mut peer)), [Message::AllowedFast { piece: 3 }]);
        assert_eq!(peer.our_allowed_fast(), [3]);
        assert!(peer.am_choking() && peer.may_upload(3) && !peer.may_upload(4));
        peer.handle_bytes(&encode(&[Message::Request(req(4)), Message::Request(req(3))]), now)
            .unwrap();
        assert_eq!(decode_all(&outgoing(&mut peer)), [Message::Reject(req(4))]);
        assert_eq!(peer.peek_upload(), Some(req(3)));
        assert_eq!(peer.next_upload(), Some(req(3)));
        assert_eq!(peer.next_upload(), None);

        // Unchoked: both queue; a choke then rejects only the other piece.
        peer.unchoke(now);
        peer.handle_bytes(&encode(&[Message::Request(req(4)), Message::Request(req(3))]), now)
            .unwrap();
        outgoing(&mut peer);
        peer.choke(now);
        assert_eq!(decode_all(&outgoing(&mut peer)), [Message::Choke, Message::Reject(req(4))]);
        assert_eq!(peer.queued_peer_requests(), 1);
        assert_eq!(peer.next_upload(), Some(req(3)));

        // Without the fast extension nothing is allowed fast.
        let mut plain_peer = serving(plain(), PeerConfig::default());
        plain_peer.allow_fast(3, now);
        assert!(outgoing(&mut plain_peer).is_empty());
        plain_peer.handle_bytes(&encode(&[Message::Request(req(3))]), now).unwrap();
        assert_eq!(plain_peer.next_upload(), None);
    }

    #[test]
    fn unknown_message_ids_are_skipped_and_bounded() {
        let now = Instant::now();
        let mut peer = serving(plain(), PeerConfig::default());
        let mut bytes = Vec::new();
        // id 21 (BEP 52 hash request) with a 48-byte payload, then id 250.
        bytes.extend_from_slice(&49u32.to_be_bytes());
        bytes.push(21);
        bytes.extend_from_slice(&[7; 48]);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.push(250);
        bytes.extend_from_slice(&encode(&[Message::Interested]));
        // Split: the unknown message waits for its whole frame.
        assert_eq!(peer.handle_bytes(&bytes[..20], now), Ok(0));
        assert_eq!(peer.handle_bytes(&bytes, now), Ok(bytes.len()));
        assert_eq!(peer.stats().unknown_messages, 2);
        assert_eq!(events(&mut peer), [Event::Interested]);
        // An oversized one is refused from its header.
        let mut huge = (MAX_UNKNOWN_MESSAGE_LEN + 1).to_be_bytes().to_vec();
        huge.push(99);
        assert!(matches!(
            peer.handle_bytes(&huge, now),
            Err(Violation::Wire(WireError::MessageTooLong { id: 99, .. }))
        ));
    }

    #[test]
    fn peer_requests_are_checked_and_bounded() {
        let now = Instant::now();
        let cfg = PeerConfig { max_peer_requests: 3, ..PeerConfig::default() };
        let req = |piece, begin, length| Message::Request(BlockRequest { piece, begin, length });
        // Out of the piece, past the last piece's end, out of range, too long.
        for (msg, bad) in [
            (req(0, PIECE_LEN - 10, 11), true),
            (req(9, 0, 5001), true),
            (req(9, 4999, 1), false),
            (req(PIECES, 0, 1), true),
        ] {
            let mut peer = serving(plain(), cfg.clone());
            let got = peer.handle_bytes(&encode(&[msg]), now);
            assert_eq!(got.is_err(), bad, "{msg:?}: {got:?}");
            if bad {
                assert!(matches!(got, Err(Violation::RequestOutOfRange(_))));
            }
        }
        let mut peer = serving(plain(), cfg.clone());
        let mut huge = encode(&[req(0, 0, 1)]);
        huge[13..17].copy_from_slice(&(MAX_REQUEST_LEN + 1).to_be_bytes());
        assert!(matches!(
            peer.handle_bytes(&huge, now),
            Err(Violation::Wire(WireError::BadRequestLength { .. }))
        ));

        // While choked: a plain peer's requests are ignored up to a bound,
        // a fast peer's are rejected.
        // (The last piece is shorter than a block: never requested here.)
        let r = |i: u32| BlockRequest { piece: i % (PIECES - 1), begin: 0, length: BLOCK_LEN };
        let mut peer = serving(plain(), cfg.clone());
        for i in 0..3 {
            peer.handle_bytes(&encode(&[Message::Request(r(i))]), now).unwrap();
        }
        assert_eq!(peer.next_upload(), None);
        assert_eq!(
            peer.handle_bytes(&encode(&[Message::Request(r(3))]), now),
            Err(Violation::RequestsWhileChoked { count: 4 })
        );
        let mut peer = serving(Reserved::OURS, cfg.clone());
        peer.handle_bytes(&encode(&[Message::Request(r(0))]), now).unwrap();
        assert_eq!(decode_all(&outgoing(&mut peer)), [Message::Reject(r(0))]);

        // Unchoked: the queue holds max_peer_requests; then reject or drop.
        for reserved in [plain(), Reserved::OURS] {
            let mut peer = serving(reserved, cfg.clone());
            peer.unchoke(now);
            outgoing(&mut peer);
            let three =
                encode(&[Message::Request(r(0)), Message::Request(r(1)), Message::Request(r(2))]);
            peer.handle_bytes(&three, now).unwrap();
            assert_eq!(peer.queued_peer_requests(), 3);
            let fourth = peer.handle_bytes(&encode(&[Message::Request(r(3))]), now);
            // Past `reqq`: a slip, never a violation. Fast: a reject;
            // plain: ignored (the peer re-requests after its timeout).
            assert_eq!(fourth, Ok(17));
            if reserved.fast() {
                assert_eq!(decode_all(&outgoing(&mut peer)), [Message::Reject(r(3))]);
            } else {
                assert!(outgoing(&mut peer).is_empty());
            }
            assert_eq!(peer.stats().overflow_requests, 1);
            // A peer that keeps overflowing the queue, with no room freed in
            // between, is dropped after OVERFLOW_REQUESTS_FACTOR queues' worth.
            let mut flooder = serving(reserved, cfg.clone());
            flooder.unchoke(now);
            flooder.handle_bytes(&three, now).unwrap();
            for i in 0..OVERFLOW_REQUESTS_FACTOR as u32 * 3 {
                flooder.handle_bytes(&encode(&[Message::Request(r(10 + i))]), now).unwrap();
            }
            assert_eq!(
                flooder.handle_bytes(&encode(&[Message::Request(r(20))]), now),
                Err(Violation::TooManyRequests { max: 3 })
            );
            // One that overflows a little, again and again, while we serve
            // it (room freed in between) is never dropped.
            let mut eager = serving(reserved, cfg.clone());
            eager.unchoke(now);
            eager.handle_bytes(&three, now).unwrap();
            for round in 0..100u32 {
                for i in 0..OVERFLOW_REQUESTS_FACTOR as u32 * 3 {
                    eager.handle_bytes(&encode(&[Message::Request(r(round + i))]), now).unwrap();
                }
                assert!(eager.next_upload().is_some());
                eager.handle_bytes(&encode(&[Message::Request(r(round))]), now).unwrap();
            }
            if !reserved.fast() {
                continue;
            }
            // Cancel removes a queued request (and, fast, answers with reject).
            peer.handle_bytes(&encode(&[Message::Cancel(r(1))]), now).unwrap();
            assert_eq!(decode_all(&outgoing(&mut peer)), [Message::Reject(r(1))]);
            assert_eq!(peer.next_upload(), Some(r(0)));
            let header = peer.upload_header(r(0), now);
            assert_eq!(header, wire::piece_header(0, 0, BLOCK_LEN));
            // Choking rejects what is left.
            peer.choke(now);
            assert_eq!(decode_all(&outgoing(&mut peer)), [Message::Choke, Message::Reject(r(2))]);
            assert_eq!(peer.next_upload(), None);
            assert_eq!(peer.stats().uploaded_bytes, u64::from(BLOCK_LEN));
        }
    }

    #[test]
    fn dht_port_is_exchanged_once_and_only_with_dht_peers() {
        let now = Instant::now();
        let dht_setup = PeerSetup { dht_port: Some(6999), ..setup(1) };
        for (their_bit, expect_port) in [(true, true), (false, false)] {
            let mut peer = Peer::outgoing(PeerConfig::default(), dht_setup.clone(), now);
            let ours = outgoing(&mut peer);
            assert_eq!(ours[20 + 7] & 0x01, 0x01, "our handshake sets the DHT bit");
            let reserved = if their_bit { Reserved::OURS.with_dht() } else { Reserved::OURS };
            let remote =
                Handshake { reserved, info_hash: InfoHash([9; 20]), peer_id: PeerId([7; 20]) };
            peer.handle_bytes(&remote.to_bytes(), now).unwrap();
            events(&mut peer);
            peer.send_bitfield(&Bitfield::new(PIECES), now);
            outgoing(&mut peer);
            peer.send_dht_port(now);
            let sent = outgoing(&mut peer);
            assert_eq!(sent == encode(&[Message::Port(6999)]), expect_port, "{sent:?}");
        }
        // Without our DHT: no bit, no PORT.
        let mut peer = Peer::outgoing(PeerConfig::default(), setup(1), now);
        assert_eq!(outgoing(&mut peer)[20 + 7] & 0x01, 0);
        // Their PORT: reported once, never port 0.
        let mut peer = connected(Reserved::OURS.with_dht(), now);
        let bytes = encode(&[Message::Port(0), Message::Port(7001), Message::Port(7002)]);
        peer.handle_bytes(&bytes, now).unwrap();
        assert_eq!(events(&mut peer), [Event::DhtPort(7001)]);
    }

    #[test]
    fn events_apply_back_pressure() {
        let now = Instant::now();
        let mut peer = connected(Reserved::OURS, now);
        let many: Vec<Message<'_>> =
            (0..MAX_QUEUED_EVENTS + 10).map(|_| Message::Interested).collect();
        let bytes = encode(&many);
        let first = peer.handle_bytes(&bytes, now).unwrap();
        assert_eq!(first, MAX_QUEUED_EVENTS * 5);
        assert_eq!(peer.handle_bytes(&bytes[first..], now), Ok(0), "full until drained");
        assert_eq!(events(&mut peer).len(), MAX_QUEUED_EVENTS);
        assert_eq!(peer.handle_bytes(&bytes[first..], now), Ok(50));
    }

    #[test]
    fn pipeline_follows_the_rate_and_the_peers_reqq() {
        let t0 = Instant::now();
        let cfg = PeerConfig::default();
        let mut peer = connected(Reserved::OURS, t0);
        assert_eq!(peer.desired_requests(), cfg.min_request_depth);
        let ext = ExtensionHandshake { reqq: Some(40), ..Default::default() };
        let mut payload = Vec::new();
        ext.encode(&mut payload);
        let bytes = encode(&[
            Message::HaveAll,
            Message::Unchoke,
            Message::Extended { id: 0, payload: &payload },
        ]);
        peer.handle_bytes(&bytes, t0).unwrap();
        // 8 blocks per 100 ms = 1.25 MiB/s -> x 3 s / 16 KiB = 240, capped at reqq 40.
        let data = vec![0u8; BLOCK_LEN as usize];
        let mut now = t0;
        for step in 0..10u32 {
            for i in 0..8 {
                let r = BlockRequest {
                    piece: (step * 8 + i) / 2 % PIECES,
                    begin: (i % 2) * BLOCK_LEN,
                    length: BLOCK_LEN,
                };
                if peer.request(r, now).is_ok() {
                    peer.handle_bytes(
                        &encode(&[Message::Piece { piece: r.piece, begin: r.begin, data: &data }]),
                        now,
                    )
                    .unwrap();
                }
            }
            now += Duration::from_millis(100);
            peer.tick(now).unwrap();
        }
        let rate = peer.download_rate();
        assert!((1_000_000..1_500_000).contains(&rate), "{rate}");
        assert_eq!(peer.desired_requests(), 40);
        assert_eq!(peer.request_slots(), 40);
    }

    #[test]
    fn rate_estimator_averages_samples() {
        let t0 = Instant::now();
        let mut rate = RateEstimator::new(t0);
        rate.add(1000, t0 + Duration::from_millis(100));
        assert_eq!(rate.bytes_per_second(), 0, "no sample before the interval");
        rate.add(0, t0 + Duration::from_secs(1));
        assert_eq!(rate.bytes_per_second(), 1000);
        rate.update(t0 + Duration::from_secs(2));
        assert_eq!(rate.bytes_per_second(), 750, "decays toward the new sample");
    }

    proptest! {
        #[test]
        fn garbage_after_the_handshake_never_panics(
            fast in any::<bool>(),
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        ) {
            let now = Instant::now();
            let mut peer = connected(if fast { Reserved::OURS } else { plain() }, now);
            let mut inbox = Vec::new();
            for chunk in chunks {
                inbox.extend_from_slice(&chunk);
                match peer.handle_bytes(&inbox, now) {
                    Ok(used) => { inbox.drain(..used); }
                    Err(_) => break,
                }
                events(&mut peer);
                let _ = peer.tick(now + Duration::from_secs(30));
            }
        }

        #[test]
        fn valid_message_soup_never_panics(
            msgs in proptest::collection::vec((0u8..18, 0u32..12, 0u32..40_000, 0u32..20_000), 0..40),
        ) {
            // Well-formed messages in arbitrary order and with arbitrary
            // indices: only ever events or a Violation.
            let now = Instant::now();
            let mut peer = connected(Reserved::OURS, now);
            let data = vec![0u8; 20_000];
            for (kind, piece, begin, length) in msgs {
                let r = BlockRequest { piece, begin, length: length.max(1) };
                let m = match kind {
                    0 => Message::Choke, 1 => Message::Unchoke, 2 => Message::Interested,
                    3 => Message::NotInterested, 4 => Message::Have { piece },
                    5 => Message::Bitfield(&data[..2]), 6 => Message::Request(r),
                    7 => Message::Piece { piece, begin, data: &data[..(length as usize).min(BLOCK_LEN as usize)] },
                    8 => Message::Cancel(r), 9 => Message::Port(1), 10 => Message::Suggest { piece },
                    11 => Message::HaveAll, 12 => Message::HaveNone, 13 => Message::Reject(r),
                    14 => Message::AllowedFast { piece }, 15 => Message::Extended { id: 0, payload: b"de" },
                    _ => Message::KeepAlive,
                };
                if kind == 16 { let _ = peer.request(r, now); }
                if kind == 17 { peer.unchoke(now); }
                if peer.handle_bytes(&encode(&[m]), now).is_err() { break; }
                events(&mut peer);
            }
        }
    }
}
