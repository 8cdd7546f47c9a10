//! Piece picker: which block to request from which peer.
//!
//! Layer: pure core (no clock, no I/O; randomness from a caller-seeded rng so
//! every run with the same seed and inputs picks the same blocks).
//!
//! Owns, for one torrent: availability (how many connected peers have each
//! piece), which pieces we have and want, the block states of partially
//! downloaded pieces, and every peer's block reservations. It decides
//! rarest-first with random tie-breaks, finishes partial pieces first, hands a
//! free block to one peer only (outside endgame and snub recovery), duplicates
//! the last outstanding blocks in endgame, and reports who to cancel when a
//! duplicated block arrives.
//!
//! Vocabulary: a *piece* is the hashed unit; a *block* is [`BLOCK_SIZE`] bytes of
//! one piece (the last block of a piece may be shorter, and a block never spans
//! two pieces).
//!
//! Invariants (checked by [`Picker::check_invariants`], documented with every
//! transition in `docs/picker.md`):
//! * every block of every piece is in exactly one state: free, requested (by
//!   1..=[`MAX_REQUESTERS`] distinct peers), received (from one peer), or have;
//! * a piece is *partial* (has a block table) iff it is not had and at least one
//!   of its blocks is requested or received;
//! * `availability(p)` equals the number of connected peers that have `p`;
//! * a block lists peer `x` as a requester iff `x`'s reservation list holds it;
//! * the rarity order holds exactly the wanted, missing pieces, grouped by
//!   availability.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slab::Slab;

use crate::bitfield::Bitfield;
use crate::metainfo::FileEntry;

/// Bytes in a block, the unit of `request` messages (what every client sends).
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// Largest piece length the picker accepts: the metainfo limit
/// ([`crate::metainfo::PIECE_LENGTH_MAX`], 128 MiB = 8,192 blocks), so every
/// torrent that loads runs.
pub const MAX_PIECE_LENGTH: u32 = crate::metainfo::PIECE_LENGTH_MAX as u32;

/// Largest number of pieces the picker accepts (16 bytes of state each): the
/// metainfo limit ([`crate::metainfo::PIECE_COUNT_MAX`]).
pub const MAX_PIECES: u32 = crate::metainfo::PIECE_COUNT_MAX;

/// Most connected peers a picker can track (availability counts are `u16`).
pub const MAX_PEERS_LIMIT: usize = 8192;

/// Most peers that may hold a request for the same block at once (the
/// original requester plus endgame or snub-recovery duplicates).
pub const MAX_REQUESTERS: usize = 4;

/// Most outstanding requests the picker keeps for one peer (libtorrent's
/// default `max_out_request_queue` is 500; a `reqq` beyond this is clamped).
pub const MAX_REQUESTS_PER_PEER_LIMIT: usize = 4096;

/// Identity of a connected peer as the caller names it. It must not be reused
/// for another connection of the same torrent while the picker may still
/// remember it as the contributor of a block (use a connection counter, not a
/// recycled slab index), so ban accounting never blames the wrong peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct PeerKey(pub u64);

/// One block to request: the wire codec's type, so requests pass between
/// the picker and the peer state machine unchanged.
pub use crate::wire::BlockRequest;

/// Picker limits, from [`crate::config`] in the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickerConfig {
    /// Connected peers at once (at most [`MAX_PEERS_LIMIT`]).
    pub max_peers: usize,
    /// Peers that may request the same block in endgame, the original
    /// requester included (2..=[`MAX_REQUESTERS`]).
    pub endgame_requesters_max: usize,
    /// Outstanding requests per peer (at most [`MAX_REQUESTS_PER_PEER_LIMIT`]).
    pub max_requests_per_peer: usize,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig { max_peers: 512, endgame_requesters_max: 3, max_requests_per_peer: 1024 }
    }
}

/// What went wrong; all of these are caller or peer errors, never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickerError {
    #[error("piece length {0} is not in 1..={MAX_PIECE_LENGTH}")]
    BadPieceLength(u32),
    #[error("{pieces} pieces exceed the limit of {MAX_PIECES}")]
    TooManyPieces { pieces: u64 },
    #[error("bitfield has {got} pieces, the torrent has {expected}")]
    BitfieldLength { got: u32, expected: u32 },
    #[error("invalid picker config: {0}")]
    BadConfig(&'static str),
    #[error("peer limit of {limit} reached")]
    TooManyPeers { limit: usize },
    #[error("peer {0:?} is not known to the picker")]
    UnknownPeer(PeerKey),
    #[error("peer {0:?} is already known to the picker")]
    DuplicatePeer(PeerKey),
    #[error("piece {piece} out of range ({pieces} pieces)")]
    PieceOutOfRange { piece: u32, pieces: u32 },
    #[error(
        "block (piece {piece}, begin {begin}, length {length}) is not a block of this torrent"
    )]
    InvalidBlock { piece: u32, begin: u32, length: u32 },
    #[error("piece {0} has not received all its blocks")]
    PieceNotComplete(u32),
}

/// What [`Picker::block_received`] made of a block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockOutcome {
    /// New data; the piece still misses blocks. Store it.
    Accepted,
    /// New data and the last missing block: store it and hash the piece, then
    /// call [`Picker::piece_verified`] or [`Picker::piece_failed`].
    PieceComplete,
    /// Already received (an endgame duplicate that lost the race): discard.
    Duplicate,
    /// We have the piece, or it is not being downloaded (unrequested data,
    /// or a request released long ago): discard. Never allocates state.
    NotNeeded,
}

/// Which pieces a peer has. Have-all peers are counted apart (`seeds`), as
/// libtorrent does, so a seed connecting costs O(1) and keeps the order.
#[derive(Clone, Debug)]
enum PeerPieces {
    All,
    Some(Bitfield),
}

#[derive(Debug)]
struct PeerEntry {
    key: PeerKey,
    pieces: PeerPieces,
    snubbed: bool,
    /// Outstanding reservations (piece, block index), oldest first: blocks
    /// mostly arrive in request order, so removal finds them near the front.
    requests: VecDeque<(u32, u16)>,
}

const NONE: u32 = u32::MAX;
const NO_SLOT: u16 = u16::MAX;
const FLAG_HAVE: u8 = 1;
const FLAG_WANTED: u8 = 2;

/// Per-piece state: 8 bytes, plus 8 for the rarity order (`order` and `pos`).
#[derive(Clone, Copy, Debug)]
struct Piece {
    /// Connected peers with a bitfield (not have-all) that have this piece.
    avail: u16,
    flags: u8,
    /// Index into `partials`, or `NONE`.
    partial: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BlockState {
    Free,
    Requested,
    Received,
}

#[derive(Clone, Copy, Debug)]
struct Block {
    state: BlockState,
    /// Number of valid entries in `requesters` (only when `Requested`).
    requester_count: u8,
    requesters: [u16; MAX_REQUESTERS],
    /// Who delivered it (only when `Received`), for ban accounting.
    from: PeerKey,
}

const FREE_BLOCK: Block = Block {
    state: BlockState::Free,
    requester_count: 0,
    requesters: [NO_SLOT; MAX_REQUESTERS],
    from: PeerKey(0),
};

#[derive(Debug, Default)]
struct PartialPiece {
    piece: u32,
    blocks: Vec<Block>,
    free: u16,
    requested: u16,
    received: u16,
    /// Peer slot that last reserved a block here: it is offered this piece
    /// first, so a piece tends to come from one peer (one peer to blame).
    last_peer: u16,
    /// Position in `partial_list`.
    list_pos: u32,
    in_use: bool,
}

/// The piece picker of one torrent. See the module docs.
#[derive(Debug)]
pub struct Picker {
    config: PickerConfig,
    piece_length: u32,
    total_length: u64,
    pieces: Vec<Piece>,
    /// All pieces, grouped by key (0 = not a candidate; `avail + 1` for a
    /// wanted missing piece), bucket `k` being `order[bucket_start[k]..bucket_start[k+1]]`.
    order: Vec<u32>,
    /// `pos[p]` is the index of piece `p` in `order`.
    pos: Vec<u32>,
    bucket_start: Vec<u32>,
    partials: Vec<PartialPiece>,
    partial_free: Vec<u32>,
    partial_list: Vec<u32>,
    peers: Slab<PeerEntry>,
    peer_slots: HashMap<PeerKey, u16>,
    seeds: u16,
    snubbed_peers: usize,
    /// Free blocks in wanted, missing pieces; 0 with pieces left = endgame.
    free_blocks: u64,
    have_count: u32,
    wanted_missing: u32,
    rng: StdRng,
}

impl Picker {
    /// A picker for a torrent of `total_length` bytes in pieces of
    /// `piece_length`, with the pieces we already `have` and those we `want`
    /// (use [`wanted_pieces`] for a file selection). `seed` fixes the random
    /// tie-breaks.
    pub fn new(
        config: PickerConfig,
        piece_length: u32,
        total_length: u64,
        have: &Bitfield,
        wanted: &Bitfield,
        seed: u64,
    ) -> Result<Picker, PickerError> {
        if piece_length == 0 || piece_length > MAX_PIECE_LENGTH {
            return Err(PickerError::BadPieceLength(piece_length));
        }
        let count64 = total_length.div_ceil(piece_length as u64);
        if count64 > MAX_PIECES as u64 {
            return Err(PickerError::TooManyPieces { pieces: count64 });
        }
        if config.max_peers == 0 || config.max_peers > MAX_PEERS_LIMIT {
            return Err(PickerError::BadConfig("max_peers must be in 1..=MAX_PEERS_LIMIT"));
        }
        if config.endgame_requesters_max < 2 || config.endgame_requesters_max > MAX_REQUESTERS {
            return Err(PickerError::BadConfig(
                "endgame_requesters_max must be in 2..=MAX_REQUESTERS",
            ));
        }
        if config.max_requests_per_peer == 0
            || config.max_requests_per_peer > MAX_REQUESTS_PER_PEER_LIMIT
        {
            return Err(PickerError::BadConfig(
                "max_requests_per_peer must be in 1..=MAX_REQUESTS_PER_PEER_LIMIT",
            ));
        }
        let count = count64 as u32;
        for b in [have, wanted] {
            if b.len() != count {
                return Err(PickerError::BitfieldLength { got: b.len(), expected: count });
            }
        }
        let keys = config.max_peers + 2;
        let mut bucket_start = vec![count; keys + 1];
        bucket_start[0] = 0;
        let mut picker = Picker {
            config,
            piece_length,
            total_length,
            pieces: vec![Piece { avail: 0, flags: 0, partial: NONE }; count as usize],
            order: (0..count).collect(),
            pos: (0..count).collect(),
            bucket_start,
            partials: Vec::new(),
            partial_free: Vec::new(),
            partial_list: Vec::new(),
            peers: Slab::new(),
            peer_slots: HashMap::new(),
            seeds: 0,
            snubbed_peers: 0,
            free_blocks: 0,
            have_count: 0,
            wanted_missing: 0,
            rng: StdRng::seed_from_u64(seed),
        };
        for p in 0..count {
            let mut flags = 0;
            if have.get(p) {
                flags |= FLAG_HAVE;
                picker.have_count += 1;
            }
            if wanted.get(p) {
                flags |= FLAG_WANTED;
            }
            picker.pieces[p as usize].flags = flags;
            if flags == FLAG_WANTED {
                picker.shift_up(p, 0);
                picker.free_blocks += picker.blocks_in_piece(p) as u64;
                picker.wanted_missing += 1;
            }
        }
        Ok(picker)
    }

    // ----- queries -----

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Bytes in piece `piece` (the last piece may be shorter).
    pub fn piece_size(&self, piece: u32) -> u32 {
        let start = piece as u64 * self.piece_length as u64;
        (self.total_length - start).min(self.piece_length as u64) as u32
    }

    /// Blocks in piece `piece`.
    pub fn blocks_in_piece(&self, piece: u32) -> u32 {
        self.piece_size(piece).div_ceil(BLOCK_SIZE)
    }

    /// Length of block `block` of `piece` (the last block may be shorter).
    pub fn block_length(&self, piece: u32, block: u32) -> u32 {
        (self.piece_size(piece) - block * BLOCK_SIZE).min(BLOCK_SIZE)
    }

    /// Do we have (verified) `piece`?
    pub fn have(&self, piece: u32) -> bool {
        self.pieces.get(piece as usize).is_some_and(|p| p.flags & FLAG_HAVE != 0)
    }

    /// Do we want `piece` (file selection)?
    pub fn wanted(&self, piece: u32) -> bool {
        self.pieces.get(piece as usize).is_some_and(|p| p.flags & FLAG_WANTED != 0)
    }

    /// Verified pieces.
    pub fn have_count(&self) -> u32 {
        self.have_count
    }

    /// Wanted pieces we do not have yet.
    pub fn wanted_missing(&self) -> u32 {
        self.wanted_missing
    }

    /// Every wanted piece is verified: the download is done.
    pub fn is_finished(&self) -> bool {
        self.wanted_missing == 0
    }

    /// Every missing wanted block is requested or received: picks now
    /// duplicate outstanding requests.
    pub fn in_endgame(&self) -> bool {
        self.free_blocks == 0 && self.wanted_missing > 0
    }

    /// Connected peers that have `piece`.
    pub fn availability(&self, piece: u32) -> u32 {
        self.pieces.get(piece as usize).map_or(0, |p| p.avail as u32 + self.seeds as u32)
    }

    /// Pieces with a block table (started, not verified).
    pub fn partial_count(&self) -> usize {
        self.partial_list.len()
    }

    /// Connected peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Outstanding reservations of `peer`.
    pub fn outstanding(&self, peer: PeerKey) -> Result<usize, PickerError> {
        Ok(self.peers[self.slot(peer)? as usize].requests.len())
    }

    /// Does `peer` have a piece we want and lack (should we be interested)?
    /// O(1) for seeds, O(missing wanted pieces) otherwise; call it on bitfield,
    /// not on every `have` (use the return of [`Picker::peer_has`] there).
    pub fn is_interesting(&self, peer: PeerKey) -> Result<bool, PickerError> {
        let slot = self.slot(peer)? as usize;
        let candidates = &self.order[self.bucket_start[1] as usize..];
        Ok(match &self.peers[slot].pieces {
            PeerPieces::All => !candidates.is_empty(),
            PeerPieces::Some(b) => candidates.iter().any(|&p| b.get(p)),
        })
    }

    /// Memory the picker holds, in bytes (approximate: vectors' capacities).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let mut n = self.pieces.capacity() * size_of::<Piece>()
            + (self.order.capacity() + self.pos.capacity() + self.bucket_start.capacity()) * 4
            + self.partials.capacity() * size_of::<PartialPiece>()
            + (self.partial_free.capacity() + self.partial_list.capacity()) * 4;
        for pp in &self.partials {
            n += pp.blocks.capacity() * size_of::<Block>();
        }
        for (_, peer) in &self.peers {
            n += size_of::<PeerEntry>() + peer.requests.capacity() * 8;
            if let PeerPieces::Some(b) = &peer.pieces {
                n += b.as_bytes().len();
            }
        }
        n + self.peer_slots.capacity() * 16
    }

    // ----- peers and availability -----

    /// A peer connected and knows nothing yet (as after `have-none`).
    pub fn add_peer(&mut self, peer: PeerKey) -> Result<(), PickerError> {
        if self.peer_slots.contains_key(&peer) {
            return Err(PickerError::DuplicatePeer(peer));
        }
        if self.peers.len() >= self.config.max_peers {
            return Err(PickerError::TooManyPeers { limit: self.config.max_peers });
        }
        let slot = self.peers.insert(PeerEntry {
            key: peer,
            pieces: PeerPieces::Some(Bitfield::new(self.piece_count())),
            snubbed: false,
            requests: VecDeque::new(),
        });
        self.peer_slots.insert(peer, slot as u16);
        Ok(())
    }

    /// The peer's `bitfield` message (adds the peer when unknown; replaces its
    /// piece set when known). A full bitfield counts the peer as a seed.
    pub fn add_peer_bitfield(&mut self, peer: PeerKey, has: &Bitfield) -> Result<(), PickerError> {
        if has.len() != self.piece_count() {
            return Err(PickerError::BitfieldLength {
                got: has.len(),
                expected: self.piece_count(),
            });
        }
        if !self.peer_slots.contains_key(&peer) {
            self.add_peer(peer)?;
        }
        let slot = self.slot(peer)?;
        self.forget_pieces(slot);
        if has.is_full() {
            self.peers[slot as usize].pieces = PeerPieces::All;
            self.seeds += 1;
        } else {
            for p in has.iter_ones() {
                self.inc_avail(p);
            }
            self.peers[slot as usize].pieces = PeerPieces::Some(has.clone());
        }
        Ok(())
    }

    /// The peer's `have-all` message (adds the peer when unknown).
    pub fn add_peer_have_all(&mut self, peer: PeerKey) -> Result<(), PickerError> {
        let full = Bitfield::full(self.piece_count());
        self.add_peer_bitfield(peer, &full)
    }

    /// The peer's `have` message. Returns true when the piece is one we want
    /// and lack (a reason to become interested).
    pub fn peer_has(&mut self, peer: PeerKey, piece: u32) -> Result<bool, PickerError> {
        self.check_piece(piece)?;
        let slot = self.slot(peer)? as usize;
        let interesting = self.pieces[piece as usize].flags == FLAG_WANTED;
        match &mut self.peers[slot].pieces {
            PeerPieces::All => return Ok(interesting),
            PeerPieces::Some(b) => {
                if b.get(piece) {
                    return Ok(interesting);
                }
                b.set(piece);
            }
        }
        self.inc_avail(piece);
        Ok(interesting)
    }

    /// The peer is gone: its reservations go back to free, its pieces leave
    /// the availability counts. Blocks it delivered stay credited to it.
    pub fn remove_peer(&mut self, peer: PeerKey) -> Result<(), PickerError> {
        let slot = self.slot(peer)?;
        self.release_all(slot);
        self.forget_pieces(slot);
        let entry = self.peers.remove(slot as usize);
        if entry.snubbed {
            self.snubbed_peers -= 1;
        }
        self.peer_slots.remove(&peer);
        Ok(())
    }

    /// Marks a peer snubbed (it stopped delivering) or not. While snubbed,
    /// blocks only it has requested may be requested again from other peers;
    /// it never takes over other peers' blocks.
    pub fn set_snubbed(&mut self, peer: PeerKey, snubbed: bool) -> Result<(), PickerError> {
        let slot = self.slot(peer)? as usize;
        let entry = &mut self.peers[slot];
        if entry.snubbed != snubbed {
            entry.snubbed = snubbed;
            if snubbed {
                self.snubbed_peers += 1;
            } else {
                self.snubbed_peers -= 1;
            }
        }
        Ok(())
    }

    /// A request to `peer` timed out (or was rejected): the block is no longer
    /// reserved by it. Returns whether it was.
    pub fn request_timed_out(
        &mut self,
        peer: PeerKey,
        block: BlockRequest,
    ) -> Result<bool, PickerError> {
        let slot = self.slot(peer)?;
        let (piece, index) = self.block_index(block)?;
        let pidx = self.pieces[piece as usize].partial;
        if pidx == NONE {
            return Ok(false);
        }
        let b = &self.partials[pidx as usize].blocks[index as usize];
        if b.state != BlockState::Requested || !requesters(b).contains(&slot) {
            return Ok(false);
        }
        remove_from_queue(&mut self.peers[slot as usize].requests, piece, index);
        self.drop_requester(pidx, index, slot);
        self.release_partial_if_idle(pidx);
        Ok(true)
    }

    /// Releases every reservation of `peer` but keeps it connected: the
    /// peer choked us without the fast extension, which discards all our
    /// requests (BEP 3). Returns how many were released.
    pub fn release_requests(&mut self, peer: PeerKey) -> Result<usize, PickerError> {
        let slot = self.slot(peer)?;
        let n = self.peers[slot as usize].requests.len();
        self.release_all(slot);
        Ok(n)
    }

    /// Our choke or a `reject`: like a timeout for that one block.
    pub fn request_rejected(
        &mut self,
        peer: PeerKey,
        block: BlockRequest,
    ) -> Result<bool, PickerError> {
        self.request_timed_out(peer, block)
    }

    // ----- wanted pieces -----

    /// Changes whether `piece` is wanted (file priorities). Requests already
    /// made for an unwanted piece may complete; no new ones are picked.
    pub fn set_wanted(&mut self, piece: u32, wanted: bool) -> Result<(), PickerError> {
        self.check_piece(piece)?;
        let p = self.pieces[piece as usize];
        if (p.flags & FLAG_WANTED != 0) == wanted {
            return Ok(());
        }
        let missing = p.flags & FLAG_HAVE == 0;
        let free = if p.partial == NONE {
            self.blocks_in_piece(piece) as u64
        } else {
            self.partials[p.partial as usize].free as u64
        };
        let key = self.key(piece);
        if wanted {
            self.pieces[piece as usize].flags |= FLAG_WANTED;
            if missing {
                self.move_key(piece, key, self.key(piece));
                self.free_blocks += free;
                self.wanted_missing += 1;
            }
        } else {
            self.pieces[piece as usize].flags &= !FLAG_WANTED;
            if missing {
                self.move_key(piece, key, 0);
                self.free_blocks -= free;
                self.wanted_missing -= 1;
            }
        }
        Ok(())
    }

    // ----- picking -----

    /// Appends up to `max` new block requests for `peer` to `out` (never more
    /// than `max_requests_per_peer` outstanding) and returns how many.
    ///
    /// `choked` is `None` when the peer unchokes us, else the pieces it allowed
    /// fast (BEP 6): only those are picked.
    ///
    /// Order: partial pieces this peer was working on, other partial pieces,
    /// then new pieces rarest first (random among equally rare; most common
    /// first for a snubbed peer), and in endgame
    /// duplicates of outstanding blocks (fewest requesters first, at most
    /// `endgame_requesters_max` per block). Without endgame, a block requested
    /// by a non-snubbed peer is never handed out again.
    pub fn pick_blocks(
        &mut self,
        peer: PeerKey,
        max: usize,
        choked: Option<&[u32]>,
        out: &mut Vec<BlockRequest>,
    ) -> Result<usize, PickerError> {
        let slot = self.slot(peer)?;
        let entry = &self.peers[slot as usize];
        let room = self.config.max_requests_per_peer.saturating_sub(entry.requests.len());
        let snubbed = entry.snubbed;
        let steal = !snubbed && self.snubbed_peers > 0;
        let start = out.len();
        let mut left = max.min(room);
        if left == 0 {
            return Ok(0);
        }
        match choked {
            Some(fast) => {
                for &piece in fast {
                    if left == 0 {
                        break;
                    }
                    if piece >= self.piece_count() || !self.can_pick(slot, piece) {
                        continue;
                    }
                    let mut pidx = self.pieces[piece as usize].partial;
                    if pidx == NONE {
                        pidx = self.start_partial(piece);
                    }
                    left -= self.take_blocks(slot, pidx, left, steal, out);
                    self.release_partial_if_idle(pidx);
                }
            }
            None => {
                // Partial pieces, this peer's own first.
                for own in [true, false] {
                    let mut i = 0;
                    while i < self.partial_list.len() && left > 0 {
                        let pidx = self.partial_list[i];
                        i += 1;
                        let pp = &self.partials[pidx as usize];
                        if (pp.last_peer == slot) != own
                            || (pp.free == 0 && !steal)
                            || !self.can_pick(slot, pp.piece)
                        {
                            continue;
                        }
                        left -= self.take_blocks(slot, pidx, left, steal, out);
                    }
                }
                // New pieces, rarest first. A non-seed peer has no piece whose
                // count (without seeds) is 0, so skip that bucket for it. A
                // snubbed peer goes the other way, most common first, so a
                // slow peer never holds a rare piece hostage (libtorrent's
                // reverse picking).
                let first_key = match self.peers[slot as usize].pieces {
                    PeerPieces::All => 1,
                    PeerPieces::Some(_) => 2,
                };
                let buckets = self.bucket_start.len() - 1;
                let mut step = 0;
                while left > 0 && first_key + step < buckets {
                    let key = if snubbed { buckets - 1 - step } else { first_key + step };
                    step += 1;
                    let s = self.bucket_start[key] as usize;
                    let e = self.bucket_start[key + 1] as usize;
                    if s == e {
                        continue;
                    }
                    let len = e - s;
                    let offset = self.rng.gen_range(0..len);
                    for i in 0..len {
                        if left == 0 {
                            break;
                        }
                        let piece = self.order[s + (offset + i) % len];
                        if self.pieces[piece as usize].partial != NONE
                            || !self.peer_has_piece(slot, piece)
                        {
                            continue;
                        }
                        let pidx = self.start_partial(piece);
                        left -= self.take_blocks(slot, pidx, left, false, out);
                    }
                }
            }
        }
        if left > 0 && self.in_endgame() {
            self.pick_endgame(slot, &mut left, choked, out);
        }
        Ok(out.len() - start)
    }

    /// Reserves every block of one whole new piece for `peer` (a web seed,
    /// BEP 19: it fetches whole pieces) and appends them to `out`. Only a
    /// wanted, missing piece nobody has started qualifies, and only one whose
    /// availability among connected peers is at most `max_availability`
    /// (0: pieces no connected peer has); rarest first, random among equals.
    /// The peer's piece set is not consulted (a web seed has every piece).
    /// Returns the piece, or `None` when none qualifies.
    pub fn pick_whole_piece(
        &mut self,
        peer: PeerKey,
        max_availability: u32,
        out: &mut Vec<BlockRequest>,
    ) -> Result<Option<u32>, PickerError> {
        let slot = self.slot(peer)?;
        let buckets = self.bucket_start.len() - 1;
        // Bucket `key` holds the pieces with `avail == key - 1`; seeds (have-
        // all peers) add to every piece's availability.
        let seeds = u32::from(self.seeds);
        if seeds > max_availability {
            return Ok(None);
        }
        let last_key =
            (max_availability - seeds).saturating_add(1).min(buckets as u32 - 1) as usize;
        for key in 1..=last_key {
            let s = self.bucket_start[key] as usize;
            let e = self.bucket_start[key + 1] as usize;
            if s == e {
                continue;
            }
            let len = e - s;
            let offset = self.rng.gen_range(0..len);
            for i in 0..len {
                let piece = self.order[s + (offset + i) % len];
                if self.pieces[piece as usize].partial != NONE {
                    continue;
                }
                // Not bounded by `max_requests_per_peer`: a web seed's
                // reservations are its pieces in flight, whole (the caller
                // bounds those).
                let blocks = self.blocks_in_piece(piece) as usize;
                let pidx = self.start_partial(piece);
                self.take_blocks(slot, pidx, blocks, false, out);
                return Ok(Some(piece));
            }
        }
        Ok(None)
    }

    fn pick_endgame(
        &mut self,
        slot: u16,
        left: &mut usize,
        choked: Option<&[u32]>,
        out: &mut Vec<BlockRequest>,
    ) {
        for level in 1..self.config.endgame_requesters_max {
            let mut i = 0;
            while i < self.partial_list.len() && *left > 0 {
                let pidx = self.partial_list[i];
                i += 1;
                let piece = self.partials[pidx as usize].piece;
                if !self.can_pick(slot, piece) || choked.is_some_and(|f| !f.contains(&piece)) {
                    continue;
                }
                for b in 0..self.partials[pidx as usize].blocks.len() {
                    if *left == 0 {
                        break;
                    }
                    let block = &self.partials[pidx as usize].blocks[b];
                    if block.state == BlockState::Requested
                        && block.requester_count as usize == level
                        && !requesters(block).contains(&slot)
                    {
                        self.add_requester(slot, pidx, b as u16, out);
                        *left -= 1;
                    }
                }
            }
        }
    }

    // ----- block and piece lifecycle -----

    /// A block arrived from `from`. Other peers that had requested it are
    /// appended to `cancel` (send them `cancel`); their reservations are gone.
    pub fn block_received(
        &mut self,
        from: PeerKey,
        block: BlockRequest,
        cancel: &mut Vec<PeerKey>,
    ) -> Result<BlockOutcome, PickerError> {
        let slot = self.slot(from)?;
        let (piece, index) = self.block_index(block)?;
        let pidx = self.pieces[piece as usize].partial;
        if pidx == NONE {
            return Ok(BlockOutcome::NotNeeded);
        }
        let b = self.partials[pidx as usize].blocks[index as usize];
        match b.state {
            BlockState::Received => {
                // A late duplicate still held a reservation only if it is the
                // same peer delivering twice; nothing is reserved any more.
                return Ok(BlockOutcome::Duplicate);
            }
            BlockState::Free => {
                let wanted = self.pieces[piece as usize].flags & FLAG_WANTED != 0;
                let pp = &mut self.partials[pidx as usize];
                pp.free -= 1;
                if wanted {
                    self.free_blocks -= 1;
                }
            }
            BlockState::Requested => {
                for &r in requesters(&b) {
                    remove_from_queue(&mut self.peers[r as usize].requests, piece, index);
                    if r != slot {
                        cancel.push(self.peers[r as usize].key);
                    }
                }
                self.partials[pidx as usize].requested -= 1;
            }
        }
        let pp = &mut self.partials[pidx as usize];
        pp.blocks[index as usize] = Block {
            state: BlockState::Received,
            requester_count: 0,
            requesters: [NO_SLOT; MAX_REQUESTERS],
            from,
        };
        pp.received += 1;
        if pp.received as usize == pp.blocks.len() {
            Ok(BlockOutcome::PieceComplete)
        } else {
            Ok(BlockOutcome::Accepted)
        }
    }

    /// The complete `piece` hashed correctly: it is had from now on.
    pub fn piece_verified(&mut self, piece: u32) -> Result<(), PickerError> {
        let pidx = self.complete_partial(piece)?;
        let key = self.key(piece);
        self.pieces[piece as usize].flags |= FLAG_HAVE;
        self.move_key(piece, key, 0);
        self.have_count += 1;
        if self.pieces[piece as usize].flags & FLAG_WANTED != 0 {
            self.wanted_missing -= 1;
        }
        self.free_partial(pidx);
        Ok(())
    }

    /// The complete `piece` failed its hash: every block goes back to free and
    /// the peers that delivered its blocks are appended (once each) to
    /// `contributors` for ban accounting.
    pub fn piece_failed(
        &mut self,
        piece: u32,
        contributors: &mut Vec<PeerKey>,
    ) -> Result<(), PickerError> {
        let pidx = self.complete_partial(piece)?;
        let first = contributors.len();
        for b in &self.partials[pidx as usize].blocks {
            if !contributors[first..].contains(&b.from) {
                contributors.push(b.from);
            }
        }
        if self.pieces[piece as usize].flags & FLAG_WANTED != 0 {
            self.free_blocks += self.partials[pidx as usize].blocks.len() as u64;
        }
        self.free_partial(pidx);
        Ok(())
    }

    // ----- internals -----

    fn slot(&self, peer: PeerKey) -> Result<u16, PickerError> {
        self.peer_slots.get(&peer).copied().ok_or(PickerError::UnknownPeer(peer))
    }

    fn check_piece(&self, piece: u32) -> Result<(), PickerError> {
        if piece >= self.piece_count() {
            return Err(PickerError::PieceOutOfRange { piece, pieces: self.piece_count() });
        }
        Ok(())
    }

    fn block_index(&self, b: BlockRequest) -> Result<(u32, u16), PickerError> {
        let bad = PickerError::InvalidBlock { piece: b.piece, begin: b.begin, length: b.length };
        if b.piece >= self.piece_count() || b.begin % BLOCK_SIZE != 0 {
            return Err(bad);
        }
        let index = b.begin / BLOCK_SIZE;
        if index >= self.blocks_in_piece(b.piece) || b.length != self.block_length(b.piece, index) {
            return Err(bad);
        }
        Ok((b.piece, index as u16))
    }

    fn peer_has_piece(&self, slot: u16, piece: u32) -> bool {
        match &self.peers[slot as usize].pieces {
            PeerPieces::All => true,
            PeerPieces::Some(b) => b.get(piece),
        }
    }

    /// Wanted, missing, not yet complete, and the peer has it.
    fn can_pick(&self, slot: u16, piece: u32) -> bool {
        let p = &self.pieces[piece as usize];
        p.flags == FLAG_WANTED
            && (p.partial == NONE || {
                let pp = &self.partials[p.partial as usize];
                (pp.received as usize) < pp.blocks.len()
            })
            && self.peer_has_piece(slot, piece)
    }

    fn key(&self, piece: u32) -> usize {
        let p = &self.pieces[piece as usize];
        if p.flags == FLAG_WANTED {
            p.avail as usize + 1
        } else {
            0
        }
    }

    fn swap_order(&mut self, a: usize, b: usize) {
        self.order.swap(a, b);
        self.pos[self.order[a] as usize] = a as u32;
        self.pos[self.order[b] as usize] = b as u32;
    }

    /// Moves `piece` from bucket `key` to `key + 1` in O(1): swap it to the
    /// end of its bucket, then move the boundary down by one.
    fn shift_up(&mut self, piece: u32, key: usize) {
        let last = self.bucket_start[key + 1] as usize - 1;
        self.swap_order(self.pos[piece as usize] as usize, last);
        self.bucket_start[key + 1] -= 1;
    }

    /// Moves `piece` from bucket `key` to `key - 1` in O(1).
    fn shift_down(&mut self, piece: u32, key: usize) {
        let first = self.bucket_start[key] as usize;
        self.swap_order(self.pos[piece as usize] as usize, first);
        self.bucket_start[key] += 1;
    }

    fn move_key(&mut self, piece: u32, mut from: usize, to: usize) {
        while from < to {
            self.shift_up(piece, from);
            from += 1;
        }
        while from > to {
            self.shift_down(piece, from);
            from -= 1;
        }
    }

    fn inc_avail(&mut self, piece: u32) {
        let key = self.key(piece);
        self.pieces[piece as usize].avail += 1;
        if key > 0 {
            self.shift_up(piece, key);
        }
    }

    fn dec_avail(&mut self, piece: u32) {
        let key = self.key(piece);
        self.pieces[piece as usize].avail -= 1;
        if key > 0 {
            self.shift_down(piece, key);
        }
    }

    fn forget_pieces(&mut self, slot: u16) {
        let pieces = std::mem::replace(
            &mut self.peers[slot as usize].pieces,
            PeerPieces::Some(Bitfield::new(0)),
        );
        match &pieces {
            PeerPieces::All => self.seeds -= 1,
            PeerPieces::Some(b) => {
                for p in b.iter_ones() {
                    self.dec_avail(p);
                }
            }
        }
        self.peers[slot as usize].pieces = match pieces {
            PeerPieces::All => PeerPieces::Some(Bitfield::new(self.piece_count())),
            PeerPieces::Some(mut b) => {
                for p in 0..b.len() {
                    b.clear(p);
                }
                PeerPieces::Some(b)
            }
        };
    }

    fn start_partial(&mut self, piece: u32) -> u32 {
        let n = self.blocks_in_piece(piece) as usize;
        let pidx = match self.partial_free.pop() {
            Some(i) => i,
            None => {
                self.partials.push(PartialPiece::default());
                self.partials.len() as u32 - 1
            }
        };
        let list_pos = self.partial_list.len() as u32;
        self.partial_list.push(pidx);
        let pp = &mut self.partials[pidx as usize];
        pp.piece = piece;
        pp.blocks.clear();
        pp.blocks.resize(n, FREE_BLOCK);
        pp.free = n as u16;
        pp.requested = 0;
        pp.received = 0;
        pp.last_peer = NO_SLOT;
        pp.list_pos = list_pos;
        pp.in_use = true;
        self.pieces[piece as usize].partial = pidx;
        pidx
    }

    /// Returns a partial piece's table to the pool; the piece becomes free
    /// (blocks are counted back by the caller where needed).
    fn free_partial(&mut self, pidx: u32) {
        let pp = &mut self.partials[pidx as usize];
        pp.in_use = false;
        let piece = pp.piece;
        let list_pos = pp.list_pos as usize;
        self.pieces[piece as usize].partial = NONE;
        self.partial_list.swap_remove(list_pos);
        if let Some(&moved) = self.partial_list.get(list_pos) {
            self.partials[moved as usize].list_pos = list_pos as u32;
        }
        self.partial_free.push(pidx);
    }

    /// A partial piece with nothing requested and nothing received is just a
    /// free piece: drop its table so partials stay bounded by requests.
    fn release_partial_if_idle(&mut self, pidx: u32) {
        let pp = &self.partials[pidx as usize];
        if pp.in_use && pp.requested == 0 && pp.received == 0 {
            self.free_partial(pidx);
        }
    }

    fn complete_partial(&self, piece: u32) -> Result<u32, PickerError> {
        self.check_piece(piece)?;
        let pidx = self.pieces[piece as usize].partial;
        if pidx == NONE
            || self.partials[pidx as usize].received as usize
                != self.partials[pidx as usize].blocks.len()
        {
            return Err(PickerError::PieceNotComplete(piece));
        }
        Ok(pidx)
    }

    /// Reserves free blocks (and, with `steal`, blocks requested only by
    /// snubbed peers) of partial `pidx` for `slot`, in block order.
    fn take_blocks(
        &mut self,
        slot: u16,
        pidx: u32,
        max: usize,
        steal: bool,
        out: &mut Vec<BlockRequest>,
    ) -> usize {
        let mut taken = 0;
        let n = self.partials[pidx as usize].blocks.len();
        for b in 0..n {
            if taken == max {
                break;
            }
            let pp = &self.partials[pidx as usize];
            if pp.free == 0 && !steal {
                break;
            }
            let block = &pp.blocks[b];
            let ok = match block.state {
                BlockState::Free => true,
                BlockState::Requested => {
                    steal
                        && (block.requester_count as usize) < MAX_REQUESTERS
                        && requesters(block).iter().all(|&r| self.peers[r as usize].snubbed)
                        && !requesters(block).contains(&slot)
                }
                BlockState::Received => false,
            };
            if ok {
                self.add_requester(slot, pidx, b as u16, out);
                taken += 1;
            }
        }
        taken
    }

    fn add_requester(&mut self, slot: u16, pidx: u32, index: u16, out: &mut Vec<BlockRequest>) {
        let pp = &mut self.partials[pidx as usize];
        let piece = pp.piece;
        let block = &mut pp.blocks[index as usize];
        if block.state == BlockState::Free {
            block.state = BlockState::Requested;
            pp.free -= 1;
            pp.requested += 1;
            if self.pieces[piece as usize].flags & FLAG_WANTED != 0 {
                self.free_blocks -= 1;
            }
        }
        block.requesters[block.requester_count as usize] = slot;
        block.requester_count += 1;
        pp.last_peer = slot;
        self.peers[slot as usize].requests.push_back((piece, index));
        out.push(BlockRequest {
            piece,
            begin: index as u32 * BLOCK_SIZE,
            length: self.block_length(piece, index as u32),
        });
    }

    /// Removes `slot` from a block's requesters (its queue entry is removed by
    /// the caller); a block left with no requester becomes free.
    fn drop_requester(&mut self, pidx: u32, index: u16, slot: u16) {
        let pp = &mut self.partials[pidx as usize];
        let piece = pp.piece;
        let block = &mut pp.blocks[index as usize];
        let n = block.requester_count as usize;
        if let Some(i) = block.requesters[..n].iter().position(|&r| r == slot) {
            block.requesters[i] = block.requesters[n - 1];
            block.requesters[n - 1] = NO_SLOT;
            block.requester_count -= 1;
        }
        if block.requester_count == 0 {
            block.state = BlockState::Free;
            pp.requested -= 1;
            pp.free += 1;
            if self.pieces[piece as usize].flags & FLAG_WANTED != 0 {
                self.free_blocks += 1;
            }
        }
    }

    fn release_all(&mut self, slot: u16) {
        let mut requests = std::mem::take(&mut self.peers[slot as usize].requests);
        for &(piece, index) in &requests {
            let pidx = self.pieces[piece as usize].partial;
            self.drop_requester(pidx, index, slot);
            self.release_partial_if_idle(pidx);
        }
        requests.clear();
        self.peers[slot as usize].requests = requests;
    }

    /// Checks every invariant listed in the module docs; panics with the
    /// broken one. O(pieces x peers): for tests.
    pub fn check_invariants(&self) {
        let count = self.piece_count() as usize;
        // Order is a permutation grouped by key.
        assert_eq!(self.order.len(), count, "order holds every piece");
        assert_eq!(self.bucket_start[0], 0, "bucket 0 starts the order");
        assert_eq!(
            *self.bucket_start.last().unwrap() as usize,
            count,
            "last bucket ends the order"
        );
        for k in 0..self.bucket_start.len() - 1 {
            let (s, e) = (self.bucket_start[k] as usize, self.bucket_start[k + 1] as usize);
            assert!(s <= e, "bucket {k} bounds {s}..{e} inverted");
            for i in s..e {
                let p = self.order[i];
                assert_eq!(
                    self.pos[p as usize] as usize, i,
                    "pos of piece {p} disagrees with order"
                );
                assert_eq!(
                    self.key(p),
                    k,
                    "piece {p} in bucket {k} but its key is {}",
                    self.key(p)
                );
            }
        }
        // Availability == sum over peers.
        let mut avail = vec![0u32; count];
        let mut seeds = 0;
        let mut snubbed = 0;
        for (slot, peer) in &self.peers {
            assert_eq!(
                self.peer_slots.get(&peer.key),
                Some(&(slot as u16)),
                "peer map disagrees for {slot}"
            );
            snubbed += peer.snubbed as usize;
            match &peer.pieces {
                PeerPieces::All => seeds += 1,
                PeerPieces::Some(b) => {
                    assert_eq!(b.len() as usize, count, "peer {:?} bitfield length", peer.key);
                    for p in b.iter_ones() {
                        avail[p as usize] += 1;
                    }
                }
            }
            for (i, &(piece, index)) in peer.requests.iter().enumerate() {
                assert!(
                    !peer.requests.iter().skip(i + 1).any(|&r| r == (piece, index)),
                    "peer {:?} holds ({piece}, {index}) twice",
                    peer.key
                );
                let pidx = self.pieces[piece as usize].partial;
                assert_ne!(
                    pidx, NONE,
                    "peer {:?} reserves a block of unstarted piece {piece}",
                    peer.key
                );
                let b = &self.partials[pidx as usize].blocks[index as usize];
                assert!(
                    b.state == BlockState::Requested && requesters(b).contains(&(slot as u16)),
                    "peer {:?} lists ({piece}, {index}) but the block does not list it",
                    peer.key
                );
            }
        }
        assert_eq!(self.peer_slots.len(), self.peers.len(), "peer map size");
        assert_eq!(seeds, self.seeds as usize, "seed count");
        assert_eq!(snubbed, self.snubbed_peers, "snubbed count");
        for (p, (&counted, piece)) in avail.iter().zip(&self.pieces).enumerate() {
            assert_eq!(counted, piece.avail as u32, "availability of piece {p}");
        }
        // Partials and block states.
        assert_eq!(
            self.partial_list.len() + self.partial_free.len(),
            self.partials.len(),
            "partial slots are either listed or free"
        );
        let mut free_blocks = 0u64;
        let (mut have, mut wanted_missing) = (0, 0);
        for (p, piece) in self.pieces.iter().enumerate() {
            let p = p as u32;
            let is_have = piece.flags & FLAG_HAVE != 0;
            let is_wanted = piece.flags & FLAG_WANTED != 0;
            have += is_have as u32;
            wanted_missing += (is_wanted && !is_have) as u32;
            if piece.partial == NONE {
                if is_wanted && !is_have {
                    free_blocks += self.blocks_in_piece(p) as u64;
                }
                continue;
            }
            assert!(!is_have, "had piece {p} still has a block table");
            let pp = &self.partials[piece.partial as usize];
            assert!(pp.in_use && pp.piece == p, "piece {p} points at a foreign table");
            assert_eq!(
                self.partial_list[pp.list_pos as usize], piece.partial,
                "list_pos of piece {p}"
            );
            assert_eq!(pp.blocks.len() as u32, self.blocks_in_piece(p), "block count of piece {p}");
            let (mut f, mut r, mut d) = (0, 0, 0);
            for (i, b) in pp.blocks.iter().enumerate() {
                let n = b.requester_count as usize;
                match b.state {
                    BlockState::Free => {
                        assert_eq!(n, 0, "free block ({p}, {i}) has requesters");
                        f += 1;
                    }
                    BlockState::Received => {
                        assert_eq!(n, 0, "received block ({p}, {i}) has requesters");
                        d += 1;
                    }
                    BlockState::Requested => {
                        assert!(
                            (1..=MAX_REQUESTERS).contains(&n),
                            "block ({p}, {i}) has {n} requesters"
                        );
                        r += 1;
                        for (j, &slot) in requesters(b).iter().enumerate() {
                            assert!(
                                !requesters(b)[j + 1..].contains(&slot),
                                "block ({p}, {i}) lists a peer twice"
                            );
                            let peer = self.peers.get(slot as usize).unwrap_or_else(|| {
                                panic!("block ({p}, {i}) requested by vacant slot {slot}")
                            });
                            assert!(
                                peer.requests.contains(&(p, i as u16)),
                                "block ({p}, {i}) lists peer {:?} which does not list it",
                                peer.key
                            );
                        }
                    }
                }
            }
            assert_eq!(
                (pp.free, pp.requested, pp.received),
                (f, r, d),
                "block counts of piece {p}"
            );
            assert!(r + d > 0, "partial piece {p} has nothing requested or received");
            if is_wanted {
                free_blocks += f as u64;
            }
        }
        for &pidx in &self.partial_list {
            let pp = &self.partials[pidx as usize];
            assert_eq!(
                self.pieces[pp.piece as usize].partial, pidx,
                "listed table {pidx} is orphaned"
            );
        }
        assert_eq!(free_blocks, self.free_blocks, "free block count");
        assert_eq!(have, self.have_count, "have count");
        assert_eq!(wanted_missing, self.wanted_missing, "wanted missing count");
    }
}

fn requesters(b: &Block) -> &[u16] {
    &b.requesters[..b.requester_count as usize]
}

fn remove_from_queue(queue: &mut VecDeque<(u32, u16)>, piece: u32, index: u16) {
    if let Some(i) = queue.iter().position(|&r| r == (piece, index)) {
        queue.remove(i);
    }
}

/// Pieces to download for a file selection: every piece that holds at least
/// one byte of a selected file (so pieces at the edges, shared with unselected
/// files, are wanted too). Empty files and pad files select nothing.
pub fn wanted_pieces(
    files: &[FileEntry],
    piece_length: u32,
    piece_count: u32,
    mut selected: impl FnMut(usize, &FileEntry) -> bool,
) -> Bitfield {
    let mut wanted = Bitfield::new(piece_count);
    let pl = piece_length.max(1) as u64;
    for (i, f) in files.iter().enumerate() {
        if f.length == 0 || f.pad || !selected(i, f) {
            continue;
        }
        let first = f.offset / pl;
        let last = (f.offset + f.length - 1) / pl;
        for p in first..=last.min(piece_count as u64 - 1) {
            wanted.set(p as u32);
        }
    }
    wanted
}

#[cfg(test)]
mod tests;
