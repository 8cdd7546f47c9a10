//! Per-torrent core: ties every connection's protocol state ([`Peer`]) to the
//! piece picker, the pieces we have, the piece buffers being filled and the
//! upload queue.
//!
//! Layer: pure core (sans-IO). The shard driver feeds it bytes, `now` and the
//! results of the work it asked for (hashing, disk writes, disk reads), and
//! carries out the [`Action`]s it polls. It never touches a socket, a file or
//! the clock, so a whole swarm of cores can be linked in memory and run on
//! virtual time (see the tests).
//!
//! ```text
//!            on_data / tick / connected / closed
//!   driver ─────────────────────────────────────────> TorrentCore
//!          <───────────── poll_action ───────────────   │  Peer (per connection)
//!   HashPiece ─> hash pool ─> piece_hashed ──────────>  │  Picker
//!   WritePiece ─> storage ──> piece_written ─────────>  │  have: Bitfield
//!   ReadBlock ──> storage ──> block_read ────────────>  │  piece buffers
//!          <───────────── take_outgoing(conn) ────────
//! ```
//!
//! Anatomy of a block fetch: `pick_blocks` reserves blocks for a peer ->
//! `Peer::request` queues `request` messages -> the driver sends them -> a
//! `piece` message arrives in `on_data` -> `Peer` matches it to an outstanding
//! request ([`Event::Block`]) -> the picker accepts it -> its bytes are copied
//! into the piece's buffer -> the last block makes the piece complete ->
//! [`Action::HashPiece`] -> pass: [`Action::WritePiece`] -> written: the piece
//! is had, `have` goes to every peer. A piece that fails its hash is discarded
//! and re-requested. When one peer sent all its blocks, that peer gets a strike
//! and is banned at [`MAX_BAD_PIECES_PER_PEER`]. When several did, nobody can
//! be blamed (striking all of them banned honest seeders beside a corrupt
//! peer): the piece goes on *parole*, its blocks are then requested from one
//! peer only (the first that picks it), so the next failure has one culprit.
//! The failed data of up to [`MAX_EVIDENCE_PIECES`] such pieces is kept with
//! the sender of each block; when the piece later passes, every peer whose
//! block differed from the good one is banned (proven bad data).
//! Bans are for such evidence only and expire after
//! [`TorrentConfig::ban_duration`] ([`bans`]); a protocol slip or breach (a
//! malformed message, too many requests, a bad `have`) disconnects without a
//! ban, since an IP ban also hits every user behind the same NAT.
//!
//! Rate limits: each direction has the torrent's own token bucket
//! ([`TorrentConfig::upload_rate_limit_bytes_per_s`],
//! [`TorrentConfig::download_rate_limit_bytes_per_s`], changed at run time with
//! [`TorrentCore::set_rate_limits`]) and, when the driver gave one, the
//! process-wide bucket shared with every other torrent
//! ([`TorrentCore::set_process_limits`], see [`crate::rate_limit`]). A block
//! is served only once both granted its length (the peer's request waits in
//! its queue meanwhile: delayed, never dropped), and a block request is sent
//! only once both granted its length. Work held back asks the driver for a
//! wake-up ([`TorrentCore::rate_limit_wakeup`], then
//! [`TorrentCore::rate_limit_tick`]); the limits count block data, not
//! protocol overhead.
//!
//! Allowed fast (BEP 6): every fast-extension peer gets the canonical
//! allowed-fast set for its address ([`crate::wire::allowed_fast_set`],
//! [`TorrentConfig::allowed_fast_set_size`] pieces): right after our bitfield
//! for the pieces of the set we have, later for each one we verify. Requests
//! for those pieces are served even while the peer is choked (upload slots
//! do not apply; rate limits do).
//!
//! Invariants:
//! * a piece is in `have` only after it hashed correctly *and* was written;
//! * a piece buffer exists only for a piece with received blocks that is not
//!   yet handed to the driver; at most [`MAX_PIECE_BUFFERS`] exist at once
//!   (fewer for large pieces: [`MAX_PIECE_BUFFER_BYTES`]);
//! * every connection in `conns` with a completed handshake is known to the
//!   picker under its unique [`PeerKey`];
//! * reads for uploads in flight per connection stay below
//!   [`MAX_UPLOAD_READS_IN_FLIGHT`], and none starts while the outgoing buffer
//!   holds [`UPLOAD_BUFFER_HIGH_WATER`] bytes or more (back-pressure on slow
//!   readers instead of memory growth);
//! * every block read for an upload holds its length in upload tokens until
//!   it is sent; a block not sent (read failed, peer choked or gone) gives
//!   them back.

use crate::bitfield::Bitfield;
use crate::choker::{ChokeMode, Choker, ChokerConfig, ChokerError, PeerSnapshot, TokenBucket};
use crate::metainfo::{InfoHash, Metainfo};
use crate::peer::{Event, Peer, PeerConfig, PeerSetup, MAX_ALLOWED_FAST};
use crate::pex::{PexInbox, PexMessage, PexSender, FLAG_REACHABLE, FLAG_SEED, UT_PEX_ID};
use crate::picker::{BlockOutcome, PeerKey, Picker, PickerConfig, PickerError, BLOCK_SIZE};
use crate::rate_limit::{burst_bytes, ProcessRateLimits, SharedTokenBucket, RATE_LIMIT_MIN_WAKE};
use crate::wire::extension::UT_METADATA_ID;
use crate::wire::ut_metadata::{self, MetadataMessage, METADATA_PIECE_LEN};
use crate::wire::{allowed_fast_set, BlockRequest, Handshake, PeerId, ALLOWED_FAST_SET_SIZE};
use bans::BanList;
use slab::Slab;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The sender of each accepted block of a piece: (offset in the piece, peer).
type BlockSenders = Vec<(u32, SocketAddr)>;

/// Identifies a connection to the driver (a slab slot, reused after close).
pub type ConnId = usize;

/// A peer that sent data for this many pieces that failed their hash is banned.
pub const MAX_BAD_PIECES_PER_PEER: u32 = 2;

/// Banned IPs remembered per torrent at most (the ban ending first makes
/// room).
pub const MAX_BANNED_IPS: usize = 4096;

/// How long a ban lasts by default (see [`TorrentConfig::ban_duration`]).
pub const DEFAULT_BAN_DURATION: Duration = Duration::from_secs(3600);

/// Pieces on parole (failed with blocks from several peers) at most; past it
/// a failed piece is re-requested from anyone, as before parole.
pub const MAX_PAROLE_PIECES: usize = 256;

/// Failed pieces whose data is kept as evidence at most (memory bound: this
/// many piece buffers).
pub const MAX_EVIDENCE_PIECES: usize = 8;

/// Most piece buffers (complete or being filled) held at once; past it no new
/// piece is started until one is written. Bounds memory per torrent.
pub const MAX_PIECE_BUFFERS: usize = 512;

/// Most bytes of piece buffers (complete or being filled) held at once, as a
/// count of pieces never below [`MIN_PIECE_BUFFERS`]. With `O_DIRECT` writes
/// a piece waits for the disk, not the page cache: without a byte bound a
/// leecher faster than its disk held hundreds of MiB of pieces. 32 MiB is
/// 40 ms at 800 MB/s, many times one piece write's latency.
pub const MAX_PIECE_BUFFER_BYTES: u64 = 32 << 20;

/// Piece buffers allowed whatever their size (16 MiB pieces still download
/// from several peers at once).
pub const MIN_PIECE_BUFFERS: usize = 4;

/// A peer whose requests for pieces we do not have (we sent it our bitfield:
/// an honest peer never asks) were rejected this many times is dropped.
pub const MAX_REJECTED_REQUESTS_PER_PEER: u32 = 64;

/// Disk reads for one peer's uploads in flight at most.
pub const MAX_UPLOAD_READS_IN_FLIGHT: usize = 64;

/// No new upload read starts while this many bytes wait to be sent to a peer.
pub const UPLOAD_BUFFER_HIGH_WATER: usize = 2 * 1024 * 1024;

/// Metadata pieces (BEP 9) served to one connection at most, beyond one
/// full copy of the info dictionary: past it requests are rejected (a peer
/// asking again and again for 16 KiB answers is an amplifier, not a leecher).
pub const MAX_METADATA_PIECES_SERVED_EXTRA: u32 = 16;

/// Most actions queued before the driver polls them (programmer error if
/// exceeded: the driver drains after every call).
pub const MAX_QUEUED_ACTIONS: usize = 1 << 16;

/// What the torrent is.
#[derive(Clone, Debug)]
pub struct TorrentParams {
    pub info_hash: InfoHash,
    pub piece_length: u32,
    pub total_length: u64,
    /// Expected SHA1 of every piece.
    pub piece_hashes: Vec<[u8; 20]>,
    pub our_peer_id: PeerId,
    pub listen_port: Option<u16>,
    /// The info dictionary's size, advertised as `metadata_size`.
    pub metadata_size: Option<u64>,
}

/// Limits and policy of one torrent.
#[derive(Clone, Debug)]
pub struct TorrentConfig {
    pub peer: PeerConfig,
    pub picker: PickerConfig,
    /// Connections at once at most.
    pub max_connections: usize,
    /// Peers we unchoke at once.
    pub upload_slots: usize,
    /// Seed for the picker's random tie-breaks.
    pub seed: u64,
    /// Block data this torrent serves per second at most, 0 = unlimited.
    pub upload_rate_limit_bytes_per_s: u64,
    /// Block data this torrent requests per second at most, 0 = unlimited.
    pub download_rate_limit_bytes_per_s: u64,
    /// Pieces in the allowed-fast set each fast-extension peer gets (BEP 6;
    /// at most [`MAX_ALLOWED_FAST`]), 0 = none.
    pub allowed_fast_set_size: u32,
    /// How long an IP banned for bad data stays banned.
    pub ban_duration: Duration,
    /// Re-run the choker this often.
    pub choke_interval_ms: u64,
    /// Rotate the optimistic unchoke this often.
    pub optimistic_unchoke_interval_ms: u64,
    /// Below this many peers unchoking us, web seeds fetch any piece;
    /// otherwise only pieces no connected peer has (see [`webseed`]).
    pub web_seed_peer_threshold: usize,
}

impl Default for TorrentConfig {
    fn default() -> TorrentConfig {
        TorrentConfig {
            peer: PeerConfig::default(),
            picker: PickerConfig::default(),
            max_connections: 80,
            upload_slots: 8,
            seed: 0x5eed,
            upload_rate_limit_bytes_per_s: 0,
            download_rate_limit_bytes_per_s: 0,
            allowed_fast_set_size: ALLOWED_FAST_SET_SIZE,
            ban_duration: DEFAULT_BAN_DURATION,
            choke_interval_ms: ChokerConfig::default().rechoke_interval_ms,
            optimistic_unchoke_interval_ms: ChokerConfig::default().optimistic_interval_ms,
            web_seed_peer_threshold: crate::webseed::WEB_SEED_PEER_THRESHOLD_DEFAULT,
        }
    }
}

/// Work for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Hash the complete piece and call [`TorrentCore::piece_hashed`] with
    /// the buffer.
    HashPiece { piece: u32, data: Vec<u8>, expected: [u8; 20] },
    /// Write the verified piece and call [`TorrentCore::piece_written`].
    WritePiece { piece: u32, data: Vec<u8> },
    /// Read a block we have for an upload and call [`TorrentCore::block_read`].
    ReadBlock { conn: ConnId, request: BlockRequest },
    /// Close the connection (the core has already forgotten it).
    Disconnect { conn: ConnId, reason: String, ban: bool },
    /// Peer addresses learned from peers (PEX): candidates to dial.
    Peers(Vec<SocketAddr>),
    /// Every wanted piece is verified and written.
    Completed,
    /// Fetch a whole piece from web seed `seed` (BEP 19) over HTTP and call
    /// [`TorrentCore::web_seed_fetched`] (see [`webseed`]).
    FetchWebSeed { seed: usize, fetch: Box<crate::webseed::PieceFetch> },
    /// A web seed was disabled for the rest of the run (log the reason).
    WebSeedDisabled { url: String, reason: String },
}

/// Why the core refused a call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TorrentError {
    #[error("torrent shape rejected by the picker: {0}")]
    Picker(#[from] PickerError),
    #[error("{0} piece hashes for {1} pieces")]
    PieceCount(usize, u32),
    #[error("connection limit of {0} reached")]
    TooManyConnections(usize),
    #[error("peer {0} is banned")]
    Banned(SocketAddr),
    #[error(transparent)]
    Choker(#[from] ChokerError),
}

struct Conn {
    key: PeerKey,
    addr: SocketAddr,
    peer: Peer,
    /// Known to the picker (handshake done).
    joined: bool,
    upload_reads: usize,
    /// Requests for pieces we lack, rejected so far.
    rejected_requests: u32,
    /// For the choker's new-peer weighting.
    connected_at: Instant,
    /// `ut_metadata` pieces sent to this peer.
    metadata_served: u32,
    /// We dialled it (its address is a listening one).
    outgoing: bool,
    /// What PEX told this peer, and when.
    pex: PexSender,
    /// When its last PEX message arrived.
    pex_received_at: Option<Instant>,
    /// The peer's canonical allowed-fast set (fast-extension peers only):
    /// each piece of it is offered once we have it.
    fast_set: Vec<u32>,
}

/// One direction's limit inside the core: the torrent's token bucket (made
/// full at first use, when `now` is known) and when work it held back should
/// be retried.
#[derive(Debug)]
struct RateGate {
    rate_bytes_per_s: u64,
    bucket: Option<TokenBucket>,
    wake_at: Option<Instant>,
}

impl RateGate {
    fn new(rate_bytes_per_s: u64) -> RateGate {
        RateGate { rate_bytes_per_s, bucket: None, wake_at: None }
    }

    fn set_rate(&mut self, now: Instant, rate_bytes_per_s: u64) {
        self.rate_bytes_per_s = rate_bytes_per_s;
        match &mut self.bucket {
            _ if rate_bytes_per_s == 0 => self.bucket = None,
            Some(bucket) => bucket.set_rate(now, rate_bytes_per_s, burst_bytes(rate_bytes_per_s)),
            None => {}
        }
    }

    /// The torrent's bucket, or `None` when unlimited.
    fn bucket(&mut self, now: Instant) -> Option<&mut TokenBucket> {
        let rate = self.rate_bytes_per_s;
        if rate == 0 {
            return None;
        }
        Some(self.bucket.get_or_insert_with(|| TokenBucket::new(rate, burst_bytes(rate), now)))
    }

    /// Bytes both buckets would grant now (`u64::MAX`: no limit at all).
    fn available(&mut self, now: Instant, shared: Option<&SharedTokenBucket>) -> u64 {
        let own = self.bucket(now).map_or(u64::MAX, |b| b.available(now));
        own.min(shared.map_or(u64::MAX, |s| s.available(now)))
    }

    /// How long until both buckets could grant `bytes`.
    fn wait_for(
        &mut self,
        now: Instant,
        shared: Option<&SharedTokenBucket>,
        bytes: u64,
    ) -> Duration {
        let own = self.bucket(now).map_or(Duration::ZERO, |b| b.wait_for(now, bytes));
        own.max(shared.map_or(Duration::ZERO, |s| s.wait_for(now, bytes)))
    }

    /// Takes `bytes` from both buckets, or from neither; when refused,
    /// schedules a retry for when they could be granted.
    fn try_take(&mut self, now: Instant, shared: Option<&SharedTokenBucket>, bytes: u64) -> bool {
        if let Some(bucket) = self.bucket(now) {
            if !bucket.try_take(now, bytes) {
                let wait = bucket.wait_for(now, bytes);
                self.hold(now, wait);
                return false;
            }
        }
        if let Some(shared) = shared {
            if !shared.try_take(now, bytes) {
                if let Some(bucket) = &mut self.bucket {
                    bucket.give_back(bytes);
                }
                self.hold(now, shared.wait_for(now, bytes));
                return false;
            }
        }
        true
    }

    /// Returns tokens taken for a transfer that did not happen.
    fn give_back(&mut self, shared: Option<&SharedTokenBucket>, bytes: u64) {
        if let Some(bucket) = &mut self.bucket {
            bucket.give_back(bytes);
        }
        if let Some(shared) = shared {
            shared.give_back(bytes);
        }
    }

    /// Work is held back: retry after `wait`, but not sooner than
    /// [`RATE_LIMIT_MIN_WAKE`] (bounds the wake-ups).
    fn hold(&mut self, now: Instant, wait: Duration) {
        let at = now + wait.max(RATE_LIMIT_MIN_WAKE);
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// Transfer counters of the torrent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TorrentStats {
    /// Verified piece bytes downloaded.
    pub downloaded_bytes: u64,
    /// Block bytes uploaded.
    pub uploaded_bytes: u64,
    /// Bytes of pieces that failed their hash.
    pub failed_bytes: u64,
    pub pieces_failed: u64,
    pub connections: usize,
}

/// The core of one torrent. See the module docs.
pub struct TorrentCore {
    params: TorrentParams,
    config: TorrentConfig,
    piece_count: u32,
    have: Bitfield,
    picker: Picker,
    conns: Slab<Conn>,
    next_key: u64,
    keys: HashMap<PeerKey, ConnId>,
    /// Data of pieces being received.
    buffers: HashMap<u32, Vec<u8>>,
    /// Pieces with the driver (hashing or writing): buffers counted apart.
    in_flight: HashSet<u32>,
    /// Spare piece buffers for reuse.
    spare_buffers: Vec<Vec<u8>>,
    strikes: HashMap<SocketAddr, u32>,
    /// Pieces that failed with blocks from several peers, and the peer that
    /// alone may fetch them now (`None` until one picks a block of it).
    parole: HashMap<u32, Option<SocketAddr>>,
    /// Who sent each accepted block (offset, peer) of the pieces being received.
    senders: HashMap<u32, BlockSenders>,
    /// Failed data and its senders of pieces on parole (see module docs).
    evidence: HashMap<u32, (Vec<u8>, BlockSenders)>,
    /// IPs refused for a while: only for evidence of bad data (see
    /// [`bans`]); protocol slips disconnect without a ban.
    pub(crate) banned: BanList,
    /// The latest `now` the driver gave (bans made by calls without a time
    /// start from it).
    clock: Option<Instant>,
    actions: VecDeque<Action>,
    completed_reported: bool,
    stats: TorrentStats,
    scratch_requests: Vec<crate::picker::BlockRequest>,
    scratch_keys: Vec<PeerKey>,
    choker: Choker,
    /// A slot holder left or lost interest: rechoke at the next tick.
    rechoke_soon: bool,
    scratch_snapshots: Vec<PeerSnapshot>,
    scratch_unchoke: Vec<PeerKey>,
    upload_gate: RateGate,
    download_gate: RateGate,
    /// The process-wide buckets shared with every torrent (see
    /// [`crate::rate_limit`]); `None`: only this torrent's limits apply.
    process_limits: Option<Arc<ProcessRateLimits>>,
    /// Where the next [`TorrentCore::rate_limit_tick`] starts among the
    /// connections, so the first one does not always get the budget.
    rate_cursor: usize,
    scratch_conns: Vec<ConnId>,
    /// The torrent's metainfo, whose raw info dictionary is served to peers
    /// over `ut_metadata` (`None`: requests are rejected).
    metadata: Option<Arc<Metainfo>>,
    /// Reused for `ut_metadata` answers.
    scratch_metadata: Vec<u8>,
    /// Addresses peers told us of (PEX), bounded.
    pex_inbox: PexInbox,
    /// Web seeds (BEP 19), see [`webseed`].
    web: webseed::WebSeeds,
}

impl TorrentCore {
    /// A core that has the pieces in `have` and wants those in `wanted`.
    pub fn new(
        params: TorrentParams,
        config: TorrentConfig,
        have: Bitfield,
        wanted: &Bitfield,
    ) -> Result<TorrentCore, TorrentError> {
        let picker = Picker::new(
            config.picker.clone(),
            params.piece_length,
            params.total_length,
            &have,
            wanted,
            config.seed,
        )?;
        let piece_count = picker.piece_count();
        let choker = Choker::new(choker_config(&config), config.seed)?;
        if params.piece_hashes.len() != piece_count as usize {
            return Err(TorrentError::PieceCount(params.piece_hashes.len(), piece_count));
        }
        let banned = BanList::new(config.ban_duration, MAX_BANNED_IPS);
        let upload_gate = RateGate::new(config.upload_rate_limit_bytes_per_s);
        let download_gate = RateGate::new(config.download_rate_limit_bytes_per_s);
        let mut core = TorrentCore {
            params,
            config,
            piece_count,
            have,
            picker,
            conns: Slab::new(),
            next_key: 1,
            keys: HashMap::new(),
            buffers: HashMap::new(),
            in_flight: HashSet::new(),
            spare_buffers: Vec::new(),
            strikes: HashMap::new(),
            parole: HashMap::new(),
            senders: HashMap::new(),
            evidence: HashMap::new(),
            banned,
            clock: None,
            actions: VecDeque::new(),
            completed_reported: false,
            stats: TorrentStats::default(),
            scratch_requests: Vec::new(),
            scratch_keys: Vec::new(),
            choker,
            rechoke_soon: false,
            scratch_snapshots: Vec::new(),
            scratch_unchoke: Vec::new(),
            upload_gate,
            download_gate,
            process_limits: None,
            rate_cursor: 0,
            scratch_conns: Vec::new(),
            metadata: None,
            scratch_metadata: Vec::new(),
            pex_inbox: PexInbox::default(),
            web: webseed::WebSeeds::default(),
        };
        core.check_completed();
        Ok(core)
    }

    /// Serves `metainfo`'s info dictionary to peers that ask over
    /// `ut_metadata` (BEP 9), so leechers starting from a magnet link can
    /// get it from us. Its info hash must be this torrent's.
    pub fn serve_metadata(&mut self, metainfo: Arc<Metainfo>) {
        debug_assert_eq!(metainfo.info_hash, self.params.info_hash);
        if metainfo.info_hash == self.params.info_hash {
            self.metadata = Some(metainfo);
        }
    }

    /// Whether PEX runs: only for a torrent whose metadata says it is
    /// public (BEP 27: private torrents never use PEX).
    pub fn pex_enabled(&self) -> bool {
        self.metadata.as_ref().is_some_and(|m| !m.info.private)
    }

    /// Addresses learned by PEX so far, and those ignored by its bounds.
    pub fn pex_counts(&self) -> (usize, u64) {
        (self.pex_inbox.learned(), self.pex_inbox.ignored)
    }

    // ---- queries ----------------------------------------------------------

    pub fn info_hash(&self) -> InfoHash {
        self.params.info_hash
    }

    /// Pieces verified and written.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Every wanted piece is had.
    pub fn is_finished(&self) -> bool {
        self.picker.is_finished()
    }

    /// Bytes of wanted pieces still missing (for trackers' `left`).
    pub fn left_bytes(&self) -> u64 {
        (0..self.piece_count)
            .filter(|&p| self.picker.wanted(p) && !self.have.get(p))
            .map(|p| self.picker.piece_size(p) as u64)
            .sum()
    }

    pub fn stats(&self) -> TorrentStats {
        TorrentStats { connections: self.conns.len(), ..self.stats }
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The peer addresses connected now.
    pub fn connected_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.conns.iter().map(|(_, c)| c.addr)
    }

    /// Connections at once at most.
    pub fn max_connections(&self) -> usize {
        self.config.max_connections
    }

    /// Whether `ip` is banned now (bad data; bans expire).
    pub fn is_banned(&self, ip: std::net::IpAddr) -> bool {
        self.banned.is_banned(ip, self.clock)
    }

    /// Whether a new connection to `addr` may be opened.
    pub fn wants_connection(&self, addr: SocketAddr) -> bool {
        self.conns.len() < self.config.max_connections
            && !self.banned.is_banned(addr.ip(), self.clock)
            && !self.conns.iter().any(|(_, c)| c.addr == addr)
    }

    /// Download and upload rate of every connection (bytes/s), summed.
    pub fn rates(&self) -> (u64, u64) {
        self.conns
            .iter()
            .fold((0, 0), |(d, u), (_, c)| (d + c.peer.download_rate(), u + c.peer.upload_rate()))
    }

    /// This torrent's limits (upload, download) in bytes per second, 0 =
    /// unlimited.
    pub fn rate_limits(&self) -> (u64, u64) {
        (self.upload_gate.rate_bytes_per_s, self.download_gate.rate_bytes_per_s)
    }

    /// When work held back by a rate limit should be retried with
    /// [`TorrentCore::rate_limit_tick`] (`None`: nothing is held back).
    pub fn rate_limit_wakeup(&self) -> Option<Instant> {
        match (self.upload_gate.wake_at, self.download_gate.wake_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn peer_setup(&self, addr: SocketAddr) -> PeerSetup {
        PeerSetup {
            info_hash: self.params.info_hash,
            our_peer_id: self.params.our_peer_id,
            piece_count: self.piece_count,
            piece_length: self.params.piece_length,
            total_length: self.params.total_length,
            listen_port: self.params.listen_port,
            peer_ip: Some(addr.ip()),
            metadata_size: self.params.metadata_size,
        }
    }

    // ---- connections ------------------------------------------------------

    /// We opened a connection to `addr`; our handshake is queued.
    pub fn connected(&mut self, addr: SocketAddr, now: Instant) -> Result<ConnId, TorrentError> {
        self.observe(now);
        self.admit(addr)?;
        let peer = Peer::outgoing(self.config.peer.clone(), self.peer_setup(addr), now);
        let conn = self.insert(addr, peer, now);
        self.conns[conn].outgoing = true;
        Ok(conn)
    }

    /// The listener accepted `addr` and read its `handshake`; ours is queued.
    pub fn accepted(
        &mut self,
        addr: SocketAddr,
        handshake: Handshake,
        now: Instant,
    ) -> Result<ConnId, TorrentError> {
        self.observe(now);
        self.admit(addr)?;
        let setup = self.peer_setup(addr);
        let conn = match Peer::incoming(self.config.peer.clone(), setup.clone(), handshake, now) {
            Ok(peer) => self.insert(addr, peer, now),
            Err(violation) => {
                // Keep the slot long enough to report the disconnect the
                // driver expects for every ConnId it was given.
                let peer = Peer::outgoing(self.config.peer.clone(), setup, now);
                let conn = self.insert(addr, peer, now);
                self.drop_conn(conn, violation.to_string(), false);
                return Ok(conn);
            }
        };
        self.process_events(conn, &[], now);
        Ok(conn)
    }

    fn observe(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    fn admit(&self, addr: SocketAddr) -> Result<(), TorrentError> {
        if self.banned.is_banned(addr.ip(), self.clock) {
            return Err(TorrentError::Banned(addr));
        }
        if self.conns.len() >= self.config.max_connections {
            return Err(TorrentError::TooManyConnections(self.config.max_connections));
        }
        Ok(())
    }

    fn insert(&mut self, addr: SocketAddr, mut peer: Peer, now: Instant) -> ConnId {
        peer.set_pex(self.pex_enabled());
        let key = PeerKey(self.next_key);
        self.next_key += 1;
        let conn = self.conns.insert(Conn {
            key,
            addr,
            peer,
            joined: false,
            upload_reads: 0,
            rejected_requests: 0,
            connected_at: now,
            metadata_served: 0,
            outgoing: false,
            pex: PexSender::default(),
            pex_received_at: None,
            fast_set: Vec::new(),
        });
        self.keys.insert(key, conn);
        conn
    }

    /// The driver saw the connection close (EOF, error): forget it.
    /// Returns whether the handshake had completed (a peer that hangs up
    /// before it may not have loaded the torrent yet: worth redialing).
    pub fn closed(&mut self, conn: ConnId) -> bool {
        self.forget(conn).is_some_and(|c| c.joined)
    }

    fn forget(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.try_remove(conn)?;
        self.keys.remove(&c.key);
        self.rechoke_soon |= !c.peer.am_choking();
        if c.joined {
            // The picker releases the peer's reservations and availability.
            let _ = self.picker.remove_peer(c.key);
        }
        Some(c)
    }

    fn drop_conn(&mut self, conn: ConnId, reason: String, ban: bool) {
        if let Some(c) = self.forget(conn) {
            if ban {
                self.banned.ban(c.addr.ip(), self.clock);
            }
            self.push(Action::Disconnect { conn, reason, ban });
        }
    }

    // ---- input ------------------------------------------------------------

    /// Bytes arrived on `conn`. Returns how many were consumed; the caller
    /// keeps the rest and offers them again with more appended. A protocol
    /// violation queues [`Action::Disconnect`] and returns the whole length.
    pub fn on_data(&mut self, conn: ConnId, buf: &[u8], now: Instant) -> usize {
        self.observe(now);
        let mut consumed = 0;
        loop {
            let Some(c) = self.conns.get_mut(conn) else { return buf.len() };
            let result = c.peer.handle_bytes(&buf[consumed..], now);
            match result {
                Ok(n) => {
                    let base = consumed;
                    consumed += n;
                    self.process_events(conn, &buf[base..], now);
                    if n == 0 || consumed == buf.len() {
                        break;
                    }
                }
                Err(violation) => {
                    // Events queued before the violation are still processed
                    // (a verified block is not thrown away), then the peer goes.
                    self.process_events(conn, &buf[consumed..], now);
                    // A protocol slip or breach is not evidence of bad data:
                    // disconnect, never ban (an IP ban also hits every user
                    // behind the same NAT).
                    self.drop_conn(conn, violation.to_string(), false);
                    return buf.len();
                }
            }
        }
        if self.conns.contains(conn) {
            self.fill_requests(conn, now);
            self.start_uploads(conn, now);
        }
        consumed
    }

    /// Changes this torrent's limits at run time (bytes per second of block
    /// data, 0 = unlimited). Tokens already earned are kept up to the new
    /// burst; work a looser limit now allows starts at once.
    pub fn set_rate_limits(
        &mut self,
        now: Instant,
        upload_bytes_per_s: u64,
        download_bytes_per_s: u64,
    ) {
        self.config.upload_rate_limit_bytes_per_s = upload_bytes_per_s;
        self.config.download_rate_limit_bytes_per_s = download_bytes_per_s;
        self.upload_gate.set_rate(now, upload_bytes_per_s);
        self.download_gate.set_rate(now, download_bytes_per_s);
        self.rate_limit_tick(now);
    }

    /// Shares the process-wide limits with this torrent (the driver does
    /// this once, for every torrent of the process).
    pub fn set_process_limits(&mut self, limits: Arc<ProcessRateLimits>) {
        self.process_limits = Some(limits);
    }

    /// Retries the work rate limits held back (due at
    /// [`TorrentCore::rate_limit_wakeup`]): new block requests and uploads on
    /// every connection, starting with a different one each time. Whatever is
    /// still over budget asks for the next wake-up.
    pub fn rate_limit_tick(&mut self, now: Instant) {
        self.upload_gate.wake_at = None;
        self.download_gate.wake_at = None;
        let mut conns = std::mem::take(&mut self.scratch_conns);
        conns.clear();
        conns.extend(self.conns.iter().map(|(id, _)| id));
        if !conns.is_empty() {
            let start = self.rate_cursor % conns.len();
            conns.rotate_left(start);
            self.rate_cursor = self.rate_cursor.wrapping_add(1);
        }
        for &conn in &conns {
            if self.conns.contains(conn) {
                self.fill_requests(conn, now);
            }
            if self.conns.contains(conn) {
                self.start_uploads(conn, now);
            }
        }
        self.scratch_conns = conns;
    }

    /// Timers: call about once a second.
    pub fn tick(&mut self, now: Instant) {
        self.observe(now);
        self.banned.expire(now);
        let conns: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for conn in conns {
            let Some(c) = self.conns.get_mut(conn) else { continue };
            if let Err(violation) = c.peer.tick(now) {
                self.drop_conn(conn, violation.to_string(), false);
                continue;
            }
            self.process_events(conn, &[], now);
            if self.conns.contains(conn) {
                self.fill_requests(conn, now);
                self.start_uploads(conn, now);
            }
        }
        if self.rechoke_soon || self.choker.rechoke_due(now) {
            self.rechoke(now);
        }
        self.send_pex(now);
        self.web_seed_tick(now);
    }

    fn process_events(&mut self, conn: ConnId, buf: &[u8], now: Instant) {
        while let Some(event) = self.conns.get_mut(conn).and_then(|c| c.peer.poll_event()) {
            self.on_event(conn, event, buf, now);
            if !self.conns.contains(conn) {
                return;
            }
        }
    }

    fn on_event(&mut self, conn: ConnId, event: Event, buf: &[u8], now: Instant) {
        let c = &mut self.conns[conn];
        let key = c.key;
        match event {
            Event::Handshake { .. } => {
                if self.picker.add_peer(key).is_err() {
                    self.drop_conn(conn, "picker is full".into(), false);
                    return;
                }
                let c = &mut self.conns[conn];
                c.joined = true;
                c.peer.send_bitfield(&self.have, now);
                if c.peer.supports_fast() && self.config.allowed_fast_set_size > 0 {
                    let k = self.config.allowed_fast_set_size.min(MAX_ALLOWED_FAST as u32);
                    c.fast_set =
                        allowed_fast_set(c.addr.ip(), &self.params.info_hash, self.piece_count, k);
                    for &piece in &c.fast_set {
                        if self.have.get(piece) {
                            c.peer.allow_fast(piece, now);
                        }
                    }
                }
                self.choke_policy(conn, now);
            }
            Event::Bitfield => {
                let result = if c.peer.pieces().is_full() {
                    self.picker.add_peer_have_all(key)
                } else {
                    self.picker.add_peer_bitfield(key, c.peer.pieces())
                };
                if let Err(e) = result {
                    self.drop_conn(conn, e.to_string(), false);
                    return;
                }
                self.update_interest(conn, now);
            }
            Event::Have(piece) => {
                if self.picker.peer_has(key, piece).is_err() {
                    self.drop_conn(conn, format!("bad have {piece}"), false);
                    return;
                }
                self.update_interest(conn, now);
            }
            Event::Block { piece, begin, data } => {
                let block = BlockRequest { piece, begin, length: data.len() as u32 };
                self.on_block(conn, block, &buf[data], now);
            }
            Event::RequestDropped(request) => {
                let _ = self.picker.request_rejected(key, request);
                // The block will not come: its download tokens are unused.
                let shared = self.process_limits.as_deref().map(|p| &p.download);
                self.download_gate.give_back(shared, u64::from(request.length));
            }
            Event::RequestTimedOut(request) => {
                let _ = self.picker.request_timed_out(key, request);
                let _ = self.picker.set_snubbed(key, true);
            }
            Event::Interested | Event::NotInterested => self.choke_policy(conn, now),
            Event::Choked
            | Event::Unchoked
            | Event::AllowedFast(_)
            | Event::Suggest(_)
            | Event::ExtensionHandshake => {}
            Event::Extended { id, payload } => {
                if id == UT_METADATA_ID {
                    self.on_ut_metadata(conn, &buf[payload], now);
                } else if id == UT_PEX_ID && self.pex_enabled() {
                    self.on_pex(conn, &buf[payload], now);
                }
            }
        }
    }

    /// A `ut_pex` message: new addresses go to the driver's candidates
    /// (bounded and deduplicated by [`PexInbox`]).
    fn on_pex(&mut self, conn: ConnId, payload: &[u8], now: Instant) {
        let last = self.conns[conn].pex_received_at;
        match self.pex_inbox.receive(payload, last, now) {
            Ok(fresh) => {
                self.conns[conn].pex_received_at = Some(now);
                let fresh: Vec<SocketAddr> =
                    fresh.into_iter().filter(|a| !self.is_banned(a.ip())).collect();
                if !fresh.is_empty() {
                    self.push(Action::Peers(fresh));
                }
            }
            Err(error) => self.drop_conn(conn, error.to_string(), false),
        }
    }

    /// Sends each PEX peer whose minute is up what changed among our
    /// connections: only peers we are connected to, by listen address (an
    /// incoming peer only once it told us its port), with true flags.
    fn send_pex(&mut self, now: Instant) {
        if !self.pex_enabled() {
            return;
        }
        let mut connected: Vec<(ConnId, SocketAddr, u8)> = Vec::new();
        for (id, c) in self.conns.iter() {
            if !c.joined {
                continue;
            }
            let listen = if c.outgoing {
                Some(c.addr)
            } else {
                c.peer
                    .extension_handshake()
                    .and_then(|e| e.listen_port)
                    .map(|port| SocketAddr::new(c.addr.ip(), port))
            };
            let Some(listen) = listen else { continue };
            let mut flags = 0;
            if c.peer.pieces().is_full() {
                flags |= FLAG_SEED;
            }
            if c.outgoing {
                flags |= FLAG_REACHABLE;
            }
            connected.push((id, listen, flags));
        }
        let mut others: Vec<(SocketAddr, u8)> = Vec::with_capacity(connected.len());
        let mut body = Vec::new();
        let ids: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            let c = &mut self.conns[id];
            let Some(their_id) =
                c.peer.extension_handshake().and_then(|e| e.extension_id("ut_pex"))
            else {
                continue;
            };
            if !c.joined {
                continue;
            }
            others.clear();
            others.extend(connected.iter().filter(|(o, _, _)| *o != id).map(|&(_, a, f)| (a, f)));
            let Some(msg): Option<PexMessage> = c.pex.poll(&others, now) else { continue };
            body.clear();
            msg.encode(&mut body);
            c.peer.send_extended(their_id, &body, now);
        }
    }

    /// A `ut_metadata` message from a peer: requests are answered from the
    /// info dictionary we hold, or rejected when we cannot (no metadata,
    /// piece out of range, the peer asked too often, its outgoing buffer is
    /// full). Data and rejects are ignored: a torrent never fetches.
    fn on_ut_metadata(&mut self, conn: ConnId, payload: &[u8], now: Instant) {
        let piece = match MetadataMessage::decode(payload) {
            Ok(MetadataMessage::Request { piece }) => piece,
            Ok(_) => return,
            Err(error) => {
                self.drop_conn(conn, error.to_string(), false);
                return;
            }
        };
        let c = &mut self.conns[conn];
        let Some(their_id) =
            c.peer.extension_handshake().and_then(|e| e.extension_id("ut_metadata"))
        else {
            return;
        };
        let mut out = std::mem::take(&mut self.scratch_metadata);
        out.clear();
        let info = self.metadata.as_deref().map(|m| m.info_bytes.as_slice());
        let size = info.map_or(0, |i| i.len() as u32);
        let count = ut_metadata::piece_count(size);
        let may_serve = info.is_some()
            && piece < count
            && c.metadata_served < count.saturating_add(MAX_METADATA_PIECES_SERVED_EXTRA)
            && c.peer.outgoing_len() < UPLOAD_BUFFER_HIGH_WATER;
        match info {
            Some(info) if may_serve => {
                let start = piece as usize * METADATA_PIECE_LEN as usize;
                let len = ut_metadata::piece_len(size, piece) as usize;
                let data = &info[start..start + len];
                MetadataMessage::Data { piece, total_size: u64::from(size), data }.encode(&mut out);
                c.metadata_served += 1;
            }
            _ => MetadataMessage::Reject { piece }.encode(&mut out),
        }
        c.peer.send_extended(their_id, &out, now);
        self.scratch_metadata = out;
    }

    fn on_block(&mut self, conn: ConnId, block: BlockRequest, data: &[u8], now: Instant) {
        let key = self.conns[conn].key;
        let _ = self.picker.set_snubbed(key, false);
        self.scratch_keys.clear();
        let mut cancel = std::mem::take(&mut self.scratch_keys);
        let outcome = self.picker.block_received(key, block, &mut cancel);
        for other in cancel.drain(..) {
            if let Some(&oc) = self.keys.get(&other) {
                self.conns[oc].peer.cancel(block, now);
            }
        }
        self.scratch_keys = cancel;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.drop_conn(conn, format!("block {block:?}: {e}"), false);
                return;
            }
        };
        if matches!(outcome, BlockOutcome::Accepted | BlockOutcome::PieceComplete) {
            let size = self.picker.piece_size(block.piece) as usize;
            let buffer = match self.buffers.get_mut(&block.piece) {
                Some(b) => b,
                None => {
                    let b = match self.spare_buffers.pop() {
                        // Reused as it is, stale bytes and all: a piece is
                        // complete (hashed, written) only once every one of
                        // its blocks was accepted and copied in below, so
                        // no stale byte reaches the hash, the disk or a peer.
                        // Zero-filling 1 MiB per piece was 8% of a leecher.
                        Some(b) if b.len() == size => b,
                        // Fresh zeroed memory from the allocator (calloc:
                        // untouched pages, no memset).
                        _ => vec![0; size],
                    };
                    self.buffers.entry(block.piece).or_insert(b)
                }
            };
            let begin = block.begin as usize;
            buffer[begin..begin + data.len()].copy_from_slice(data);
            let addr = self.conns[conn].addr;
            self.senders.entry(block.piece).or_default().push((block.begin, addr));
        }
        if outcome == BlockOutcome::PieceComplete {
            if let Some(data) = self.buffers.remove(&block.piece) {
                self.in_flight.insert(block.piece);
                let expected = self.params.piece_hashes[block.piece as usize];
                self.push(Action::HashPiece { piece: block.piece, data, expected });
            }
        }
    }

    /// The hash of `piece` came back from the pool.
    pub fn piece_hashed(&mut self, piece: u32, passed: bool, data: Vec<u8>) {
        if !self.in_flight.contains(&piece) {
            self.give_buffer(data);
            return;
        }
        let senders = self.senders.remove(&piece).unwrap_or_default();
        if passed {
            if let Some((bad, bad_senders)) = self.evidence.remove(&piece) {
                self.convict(piece, &data, &bad, &bad_senders);
                self.give_buffer(bad);
            }
            self.push(Action::WritePiece { piece, data });
            return;
        }
        self.in_flight.remove(&piece);
        self.stats.pieces_failed += 1;
        self.stats.failed_bytes += data.len() as u64;
        let several = senders.iter().any(|(_, a)| *a != senders[0].1);
        if several
            && !self.evidence.contains_key(&piece)
            && self.evidence.len() < MAX_EVIDENCE_PIECES
        {
            self.evidence.insert(piece, (data, senders));
        } else {
            self.give_buffer(data);
        }
        let mut contributors = Vec::new();
        if self.picker.piece_failed(piece, &mut contributors).is_err() {
            return;
        }
        if contributors.len() > 1 {
            // Several senders: no culprit yet. Parole makes the next attempt
            // come from a single peer (see `fill_requests`).
            if self.parole.len() < MAX_PAROLE_PIECES || self.parole.contains_key(&piece) {
                self.parole.insert(piece, None);
            }
            return;
        }
        if let Some(owner) = self.parole.get_mut(&piece) {
            // The sole sender failed it: let another peer try next.
            *owner = None;
        }
        for key in contributors {
            if self.web_seed_blamed(key, piece) {
                continue;
            }
            let Some(&conn) = self.keys.get(&key) else { continue };
            let addr = self.conns[conn].addr;
            let strikes = {
                let count = self.strikes.entry(addr).or_insert(0);
                *count += 1;
                *count
            };
            if strikes >= MAX_BAD_PIECES_PER_PEER {
                self.drop_conn(
                    conn,
                    format!("sent data for {strikes} pieces that failed their hash"),
                    true,
                );
            }
        }
    }

    /// The verified `piece` was written (or failed to be). Returns the buffer
    /// for the driver's pool. On a write error the piece is given back to the
    /// picker; the driver stops the torrent (see `storage`).
    pub fn piece_written(&mut self, piece: u32, ok: bool, data: Vec<u8>, now: Instant) {
        self.give_buffer(data);
        if !self.in_flight.remove(&piece) {
            return;
        }
        if !ok {
            let mut contributors = Vec::new();
            let _ = self.picker.piece_failed(piece, &mut contributors);
            return;
        }
        if self.picker.piece_verified(piece).is_err() {
            return;
        }
        self.parole.remove(&piece);
        self.have.set(piece);
        self.stats.downloaded_bytes += self.picker.piece_size(piece) as u64;
        let conns: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for conn in conns {
            let c = &mut self.conns[conn];
            c.peer.send_have(piece, now);
            if c.fast_set.contains(&piece) {
                c.peer.allow_fast(piece, now);
            }
            self.update_interest(conn, now);
        }
        self.check_completed();
    }

    /// The block for an upload was read from disk (or `data` is `None` when
    /// the read failed: the request is rejected).
    pub fn block_read(
        &mut self,
        conn: ConnId,
        request: BlockRequest,
        data: Option<&[u8]>,
        now: Instant,
    ) {
        let shared = self.process_limits.as_deref().map(|p| &p.upload);
        let Some(c) = self.conns.get_mut(conn) else {
            self.upload_abandoned(request);
            return;
        };
        c.upload_reads = c.upload_reads.saturating_sub(1);
        match data {
            Some(data)
                if data.len() == request.length as usize && c.peer.may_upload(request.piece) =>
            {
                c.peer.send_block(request, data, now);
                self.stats.uploaded_bytes += data.len() as u64;
            }
            _ => {
                // The read failed, or we choked the peer while reading (the
                // choke rejected only what was still queued): BEP 6 answers
                // every request, so reject this one too (silence without the
                // fast extension), and its tokens are unused.
                c.peer.reject(request, now);
                self.upload_gate.give_back(shared, u64::from(request.length));
            }
        }
        self.start_uploads(conn, now);
    }

    /// Serves `request` (asked for by an [`Action::ReadBlock`]) from storage
    /// that reads at once: `read` appends the block straight to the
    /// connection's outgoing bytes (one copy, no staging buffer). Otherwise
    /// the same as [`TorrentCore::block_read`]: a failed read, or a peer we
    /// choked meanwhile, gets a reject and its tokens back; a read error is
    /// handed back.
    pub fn serve_block<E>(
        &mut self,
        conn: ConnId,
        request: BlockRequest,
        now: Instant,
        read: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let shared = self.process_limits.as_deref().map(|p| &p.upload);
        let Some(c) = self.conns.get_mut(conn) else {
            self.upload_abandoned(request);
            return Ok(());
        };
        c.upload_reads = c.upload_reads.saturating_sub(1);
        let mut result = Ok(());
        let served = c.peer.may_upload(request.piece)
            && match c.peer.send_block_with(request, now, read) {
                Ok(()) => true,
                Err(e) => {
                    result = Err(e);
                    false
                }
            };
        if served {
            self.stats.uploaded_bytes += u64::from(request.length);
        } else {
            c.peer.reject(request, now);
            self.upload_gate.give_back(shared, u64::from(request.length));
        }
        self.start_uploads(conn, now);
        result
    }

    /// A block read for an upload (an [`Action::ReadBlock`]) will not be
    /// delivered: its connection is gone. Its upload tokens are returned.
    pub fn upload_abandoned(&mut self, request: BlockRequest) {
        let shared = self.process_limits.as_deref().map(|p| &p.upload);
        self.upload_gate.give_back(shared, u64::from(request.length));
    }

    /// The driver sent what was queued for `conn`: uploads held back by
    /// [`UPLOAD_BUFFER_HIGH_WATER`] may start again.
    pub fn writable(&mut self, conn: ConnId, now: Instant) {
        if self.conns.contains(conn) {
            self.start_uploads(conn, now);
        }
    }

    /// Hands the bytes queued for `conn` to the driver: swaps them with
    /// `spare` (an empty buffer from the driver's pool).
    pub fn take_outgoing(&mut self, conn: ConnId, spare: &mut Vec<u8>) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.peer.swap_outgoing(spare);
        }
    }

    /// Bytes waiting to be sent on `conn`.
    pub fn outgoing_len(&self, conn: ConnId) -> usize {
        self.conns.get(conn).map_or(0, |c| c.peer.outgoing_len())
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ---- policy -----------------------------------------------------------

    fn push(&mut self, action: Action) {
        debug_assert!(self.actions.len() < MAX_QUEUED_ACTIONS, "driver must drain actions");
        self.actions.push_back(action);
    }

    fn give_buffer(&mut self, data: Vec<u8>) {
        if self.spare_buffers.len() < 8 {
            self.spare_buffers.push(data);
        }
    }

    fn check_completed(&mut self) {
        if !self.completed_reported && self.picker.is_finished() {
            self.completed_reported = true;
            self.push(Action::Completed);
        }
    }

    fn update_interest(&mut self, conn: ConnId, now: Instant) {
        let c = &mut self.conns[conn];
        if !c.joined {
            return;
        }
        let interested = self.picker.is_interesting(c.key).unwrap_or(false);
        if interested != c.peer.am_interested() {
            c.peer.set_interested(interested, now);
        }
    }

    /// A peer joined or changed its interest: a newcomer gets a free slot at
    /// once (no 10 s wait for the next rechoke), a peer that lost interest
    /// gives its slot back. The choker decides the rest at each rechoke.
    fn choke_policy(&mut self, conn: ConnId, now: Instant) {
        let unchoked = self.conns.iter().filter(|(_, c)| !c.peer.am_choking()).count();
        let c = &mut self.conns[conn];
        if !c.peer.is_active() {
            return;
        }
        if c.peer.peer_interested() && c.peer.am_choking() && unchoked < self.config.upload_slots {
            c.peer.unchoke(now);
        } else if !c.peer.peer_interested() && !c.peer.am_choking() {
            c.peer.choke(now);
            self.rechoke_soon = true;
        }
    }

    /// Runs the choker (tit-for-tat while leeching, round-robin while
    /// seeding, one optimistic slot) and applies its unchoke set.
    fn rechoke(&mut self, now: Instant) {
        self.rechoke_soon = false;
        let mut snapshots = std::mem::take(&mut self.scratch_snapshots);
        snapshots.clear();
        snapshots.extend(self.conns.iter().filter(|(_, c)| c.joined && c.peer.is_active()).map(
            |(_, c)| PeerSnapshot {
                key: c.key,
                interested: c.peer.peer_interested(),
                download_rate: c.peer.download_rate(),
                upload_rate: c.peer.upload_rate(),
                connected_at: c.connected_at,
                snubbed: c.peer.is_snubbed(),
            },
        ));
        let mode = if self.picker.is_finished() { ChokeMode::Seeding } else { ChokeMode::Leeching };
        let mut unchoke = std::mem::take(&mut self.scratch_unchoke);
        self.choker.rechoke(now, mode, &snapshots, &mut unchoke);
        for (_, c) in self.conns.iter_mut().filter(|(_, c)| c.joined && c.peer.is_active()) {
            let chosen = unchoke.contains(&c.key);
            if chosen && c.peer.am_choking() {
                c.peer.unchoke(now);
            } else if !chosen && !c.peer.am_choking() {
                c.peer.choke(now);
            }
        }
        self.scratch_snapshots = snapshots;
        self.scratch_unchoke = unchoke;
    }

    /// Piece buffers allowed at once: [`MAX_PIECE_BUFFERS`], and no more
    /// than [`MAX_PIECE_BUFFER_BYTES`] of them (at least [`MIN_PIECE_BUFFERS`]).
    fn max_piece_buffers(&self) -> usize {
        let by_bytes = MAX_PIECE_BUFFER_BYTES / u64::from(self.params.piece_length.max(1));
        usize::try_from(by_bytes).unwrap_or(usize::MAX).clamp(MIN_PIECE_BUFFERS, MAX_PIECE_BUFFERS)
    }

    fn fill_requests(&mut self, conn: ConnId, now: Instant) {
        let max_buffers = self.max_piece_buffers();
        let c = &mut self.conns[conn];
        if !c.joined || !c.peer.am_interested() {
            return;
        }
        let slots = c.peer.request_slots();
        if slots == 0 {
            return;
        }
        if self.buffers.len() + self.in_flight.len() >= max_buffers {
            return;
        }
        let choked = c.peer.peer_choking().then(|| c.peer.allowed_fast().to_vec());
        if choked.as_ref().is_some_and(|fast| fast.is_empty()) {
            return;
        }
        let key = c.key;
        let addr = c.addr;
        // Download limit: no more requests than the budget covers now; the
        // rest wait for the wake-up. (A clone of the Arc: `parole_allows`
        // below borrows the whole core.)
        let process = self.process_limits.clone();
        let shared = process.as_deref().map(|p| &p.download);
        let budget = self.download_gate.available(now, shared);
        let mut slots = slots;
        if budget != u64::MAX {
            let blocks = usize::try_from(budget / u64::from(BLOCK_SIZE)).unwrap_or(usize::MAX);
            if blocks < slots {
                slots = blocks;
                let wait = self.download_gate.wait_for(now, shared, u64::from(BLOCK_SIZE));
                self.download_gate.hold(now, wait);
            }
            if slots == 0 {
                return;
            }
        }
        let mut picks = std::mem::take(&mut self.scratch_requests);
        picks.clear();
        let _ = self.picker.pick_blocks(key, slots, choked.as_deref(), &mut picks);
        for request in picks.drain(..) {
            if !self.parole_allows(request.piece, addr) {
                let _ = self.picker.request_rejected(key, request);
                continue;
            }
            let length = u64::from(request.length);
            // Another shard may have taken the process budget meanwhile.
            if !self.download_gate.try_take(now, shared, length) {
                let _ = self.picker.request_rejected(key, request);
                continue;
            }
            if self.conns[conn].peer.request(request, now).is_err() {
                let _ = self.picker.request_rejected(key, request);
                self.download_gate.give_back(shared, length);
            }
        }
        self.scratch_requests = picks;
    }

    /// `piece` passed as `good` after failing as `bad`: each peer that sent a
    /// block of `bad` that differs from `good` sent bad data; ban it.
    fn convict(&mut self, piece: u32, good: &[u8], bad: &[u8], senders: &[(u32, SocketAddr)]) {
        for &(begin, addr) in senders {
            let begin = begin as usize;
            let end = (begin + crate::picker::BLOCK_SIZE as usize).min(good.len());
            if bad.get(begin..end) == good.get(begin..end) {
                continue;
            }
            self.strikes.insert(addr, MAX_BAD_PIECES_PER_PEER);
            let guilty: Vec<ConnId> =
                self.conns.iter().filter(|(_, c)| c.addr == addr).map(|(id, _)| id).collect();
            for conn in guilty {
                self.drop_conn(conn, format!("sent a bad block of piece {piece}"), true);
            }
            self.banned.ban(addr.ip(), self.clock);
        }
    }

    /// Whether `addr` may fetch blocks of `piece`: any peer unless the piece
    /// is on parole; then only its owner, which is `addr` when the piece has
    /// none yet or the owner left.
    fn parole_allows(&mut self, piece: u32, addr: SocketAddr) -> bool {
        let Some(owner) = self.parole.get(&piece).copied() else { return true };
        match owner {
            Some(o) if o == addr => true,
            Some(o) if self.conns.iter().any(|(_, c)| c.addr == o) => false,
            _ => {
                self.parole.insert(piece, Some(addr));
                true
            }
        }
    }

    fn start_uploads(&mut self, conn: ConnId, now: Instant) {
        loop {
            let c = &mut self.conns[conn];
            if c.upload_reads >= MAX_UPLOAD_READS_IN_FLIGHT
                || c.peer.outgoing_len() >= UPLOAD_BUFFER_HIGH_WATER
            {
                return;
            }
            let Some(request) = c.peer.peek_upload() else { return };
            if self.have.get(request.piece) {
                // Upload limit: the request waits in the peer's queue until
                // both buckets grant its length (delayed, never dropped).
                let shared = self.process_limits.as_deref().map(|p| &p.upload);
                if !self.upload_gate.try_take(now, shared, u64::from(request.length)) {
                    return;
                }
            }
            c.peer.next_upload();
            if !self.have.get(request.piece) {
                c.peer.reject(request, now);
                c.rejected_requests += 1;
                if c.rejected_requests > MAX_REJECTED_REQUESTS_PER_PEER {
                    let reason =
                        format!("{} requests for pieces we do not have", c.rejected_requests);
                    self.drop_conn(conn, reason, false);
                    return;
                }
                continue;
            }
            c.upload_reads += 1;
            self.push(Action::ReadBlock { conn, request });
        }
    }
}

/// The choker's slots for `upload_slots` peers unchoked at once (one of
/// them optimistic when there are two or more) and its intervals.
fn choker_config(config: &TorrentConfig) -> ChokerConfig {
    let upload_slots = config.upload_slots;
    let optimistic_slots = usize::from(upload_slots >= 2);
    ChokerConfig {
        upload_slots: upload_slots.max(1) - optimistic_slots,
        optimistic_slots,
        rechoke_interval_ms: config.choke_interval_ms,
        optimistic_interval_ms: config.optimistic_unchoke_interval_ms,
        ..ChokerConfig::default()
    }
}

pub mod bans;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod sim;
pub mod webseed;

#[cfg(test)]
impl TorrentParams {
    /// `pieces` pieces of `piece_length` with zero hashes (unit tests that
    /// never hash), info hash `[3; 20]`, our peer id `[1; 20]`.
    pub(crate) fn for_tests(piece_length: u32, pieces: u32) -> TorrentParams {
        TorrentParams {
            info_hash: InfoHash([3; 20]),
            piece_length,
            total_length: u64::from(piece_length) * u64::from(pieces),
            piece_hashes: vec![[0; 20]; pieces as usize],
            our_peer_id: PeerId([1; 20]),
            listen_port: None,
            metadata_size: None,
        }
    }
}

#[cfg(test)]
mod serve_tests {
    use super::*;
    use crate::wire::{decode, Decoded, Message, Reserved, WireLimits, HANDSHAKE_LEN};

    const PIECE_LEN: u32 = 32 * 1024;
    const PIECES: u32 = 4;

    /// A torrent of [`PIECES`] pieces of [`PIECE_LEN`] (hashes are not checked).
    fn test_params() -> TorrentParams {
        TorrentParams::for_tests(PIECE_LEN, PIECES)
    }

    /// A core that has piece 0 only, with one fast-extension peer connected.
    fn partial_seed() -> (TorrentCore, ConnId, Instant) {
        let now = Instant::now();
        let params = test_params();
        let mut have = Bitfield::new(PIECES);
        have.set(0);
        let mut core =
            TorrentCore::new(params, TorrentConfig::default(), have.clone(), &have).expect("core");
        let hs = Handshake {
            reserved: Reserved::OURS,
            info_hash: InfoHash([3; 20]),
            peer_id: PeerId([7; 20]),
        };
        let conn = core.accepted(SocketAddr::from(([10, 0, 0, 2], 7000)), hs, now).unwrap();
        let mut out = Vec::new();
        core.take_outgoing(conn, &mut out);
        assert!(out.len() >= HANDSHAKE_LEN);
        let mut bytes = Vec::new();
        Message::Interested.encode(&mut bytes);
        core.on_data(conn, &bytes, now);
        assert!(sent(&mut core, conn).contains(&"unchoke".to_string()));
        (core, conn, now)
    }

    /// Names of the messages queued for `conn` (requests/rejects with their piece).
    fn sent(core: &mut TorrentCore, conn: ConnId) -> Vec<String> {
        let mut out = Vec::new();
        core.take_outgoing(conn, &mut out);
        let limits = WireLimits::for_pieces(PIECES);
        let mut at = 0;
        let mut names = Vec::new();
        while let Ok(Decoded::Message { message, consumed }) = decode(&out[at..], &limits) {
            names.push(match message {
                Message::Unchoke => "unchoke".to_string(),
                Message::Reject(r) => format!("reject {}", r.piece),
                other => format!("{other:?}"),
            });
            at += consumed;
        }
        names
    }

    fn request(piece: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        Message::Request(BlockRequest { piece, begin: 0, length: 16 * 1024 }).encode(&mut bytes);
        bytes
    }

    /// Goal: the choker is wired in: a seed with 2 upload slots and 4
    /// interested peers rotates its slots (round-robin + optimistic) so every
    /// peer is served within two minutes, never more than 2 at once.
    #[test]
    fn seeding_rotates_upload_slots_among_interested_peers() {
        let t0 = Instant::now();
        let params = test_params();
        let full = Bitfield::full(PIECES);
        let config = TorrentConfig { upload_slots: 2, ..TorrentConfig::default() };
        let mut core = TorrentCore::new(params, config, full.clone(), &full).unwrap();
        let mut interested = Vec::new();
        Message::Interested.encode(&mut interested);
        let conns: Vec<ConnId> = (0..4u8)
            .map(|i| {
                let hs = Handshake {
                    reserved: Reserved::OURS,
                    info_hash: InfoHash([3; 20]),
                    peer_id: PeerId([10 + i; 20]),
                };
                let addr = SocketAddr::from(([10, 0, 0, 10 + i], 7000));
                let conn = core.accepted(addr, hs, t0).unwrap();
                core.on_data(conn, &interested, t0);
                conn
            })
            .collect();
        let mut served = HashSet::new();
        for second in 0..120 {
            let now = t0 + std::time::Duration::from_secs(second);
            core.tick(now);
            let unchoked: Vec<ConnId> =
                conns.iter().copied().filter(|&c| !core.conns[c].peer.am_choking()).collect();
            assert!(unchoked.len() <= 2, "at {second} s: {unchoked:?} unchoked");
            served.extend(unchoked);
            // Keep the peers alive (keep-alive) so none idles out.
            for &c in &conns {
                core.on_data(c, &[0, 0, 0, 0], now);
                let mut out = Vec::new();
                core.take_outgoing(c, &mut out);
            }
        }
        assert_eq!(served.len(), 4, "only {served:?} ever unchoked");
    }

    #[test]
    fn requests_for_pieces_we_lack_are_rejected_and_served_ones_read() {
        let (mut core, conn, now) = partial_seed();
        core.on_data(conn, &request(2), now);
        assert_eq!(sent(&mut core, conn), ["reject 2"]);
        core.on_data(conn, &request(0), now);
        let actions: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::ReadBlock { request, .. } if request.piece == 0)));
        assert!(!actions.iter().any(|a| matches!(a, Action::Disconnect { .. })));
    }

    /// The request of the one ReadBlock among the queued actions.
    fn read_asked(core: &mut TorrentCore) -> BlockRequest {
        let actions: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
        let reads: Vec<BlockRequest> = actions
            .iter()
            .filter_map(|a| match a {
                Action::ReadBlock { request, .. } => Some(*request),
                _ => None,
            })
            .collect();
        assert_eq!(reads.len(), 1, "{actions:?}");
        reads[0]
    }

    /// serve_block puts the piece message (header and the bytes the reader
    /// appended) in the outgoing stream and counts it; a failed read becomes
    /// a reject, with nothing of the block left queued.
    #[test]
    fn served_blocks_go_straight_to_the_stream_and_failed_reads_are_rejected() {
        let (mut core, conn, now) = partial_seed();
        core.on_data(conn, &request(0), now);
        let r = read_asked(&mut core);
        let served = core.serve_block(conn, r, now, |out: &mut Vec<u8>| {
            out.extend((0..r.length).map(|i| i as u8));
            Ok::<(), ()>(())
        });
        assert_eq!(served, Ok(()));
        assert_eq!(core.stats().uploaded_bytes, u64::from(r.length));
        let mut out = Vec::new();
        core.take_outgoing(conn, &mut out);
        let limits = WireLimits::for_pieces(PIECES);
        let Ok(Decoded::Message { message: Message::Piece { piece, begin, data }, consumed }) =
            decode(&out, &limits)
        else {
            panic!("not a piece message: {out:?}")
        };
        assert_eq!((piece, begin, consumed), (0, 0, out.len()));
        assert!(data.iter().enumerate().all(|(i, &b)| b == i as u8));

        core.on_data(conn, &request(0), now);
        let r = read_asked(&mut core);
        let failed = core.serve_block(conn, r, now, |out: &mut Vec<u8>| {
            out.extend_from_slice(b"partial");
            Err("disk gone")
        });
        assert_eq!(failed, Err("disk gone"));
        // The peer cut back the partial bytes; only the reject is queued.
        assert_eq!(sent(&mut core, conn), ["reject 0"]);
        assert_eq!(core.stats().uploaded_bytes, u64::from(r.length));
    }

    #[test]
    fn a_peer_that_keeps_asking_for_pieces_we_lack_is_dropped() {
        let (mut core, conn, now) = partial_seed();
        for i in 0..MAX_REJECTED_REQUESTS_PER_PEER {
            core.on_data(conn, &request(1 + i % (PIECES - 1)), now);
        }
        assert_eq!(core.connection_count(), 1, "dropped too early");
        core.on_data(conn, &request(3), now);
        assert_eq!(core.connection_count(), 0);
        let actions: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
        assert!(
            actions.iter().any(|a| matches!(a, Action::Disconnect { conn: c, .. } if *c == conn)),
            "{actions:?}"
        );
    }
}
