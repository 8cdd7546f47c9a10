//! A torrent's web seeds (BEP 19) inside the torrent core: when they fetch,
//! which piece, and how their data joins the peers' path.
//!
//! Layer: pure core (a child of `torrent`, so it shares [`TorrentCore`]'s
//! state; the HTTP codec and per-seed record are [`crate::webseed`]'s).
//!
//! Each web seed is a picker peer of its own ([`PeerKey`], no pieces
//! announced) that takes *whole* pieces with
//! [`Picker::pick_whole_piece`](crate::picker::Picker::pick_whole_piece):
//! every block of the piece is reserved for it, so no peer requests them
//! (outside endgame, where a peer's copy simply wins and the web seed's is a
//! duplicate). A fetch is an [`Action::FetchWebSeed`]; the driver runs the
//! HTTP requests, takes download tokens from
//! [`TorrentCore::web_seed_take_download`] for every chunk it reads (the
//! same buckets as peer requests), and returns the piece with
//! [`TorrentCore::web_seed_fetched`]. The blocks are then received through
//! the picker as a peer's would be, and the complete piece is hashed and
//! written by the same [`Action::HashPiece`] / [`Action::WritePiece`] path.
//! A piece that fails its hash and came from a web seed alone counts against
//! that web seed ([`crate::webseed::MAX_WEB_SEED_BAD_PIECES`] disable it).
//!
//! When: at each tick and after each fetch, every web seed that may fetch
//! ([`WebSeed::may_fetch`]) takes pieces while piece buffers allow: any
//! piece (rarest first) while fewer than
//! [`TorrentConfig::web_seed_peer_threshold`] peers unchoke us (the only
//! source included), otherwise only pieces no connected peer has.
//!
//! Invariants: a web seed's picker reservations are exactly the blocks of
//! its pieces in flight ([`WebSeed::in_flight`], at most
//! [`crate::webseed::WEB_SEED_PIECES_IN_FLIGHT`]); each piece in flight has
//! one [`PieceFetch`] buffer with the driver, so web seeds add at most
//! [`MAX_WEB_SEEDS_PER_TORRENT`] x that many piece buffers.

use super::{Action, TorrentCore};
use crate::layout::Layout;
use crate::metainfo::Metainfo;
use crate::picker::{BlockOutcome, BlockRequest, PeerKey, BLOCK_SIZE};
use crate::rate_limit::RATE_LIMIT_MIN_WAKE;
use crate::webseed::{
    availability_limit, PieceFetch, WebSeed, WebSeedError, WebSeedStatus, MAX_WEB_SEEDS_PER_TORRENT,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The web seeds of one torrent.
#[derive(Debug, Default)]
pub(super) struct WebSeeds {
    seeds: Vec<(PeerKey, WebSeed)>,
    metainfo: Option<Arc<Metainfo>>,
    layout: Option<Layout>,
}

impl TorrentCore {
    /// Uses the web seeds in `metainfo`'s `url-list` (the first
    /// [`MAX_WEB_SEEDS_PER_TORRENT`] usable ones). Returns those refused,
    /// with why.
    pub fn add_web_seeds(&mut self, metainfo: Arc<Metainfo>) -> Vec<(String, WebSeedError)> {
        let mut refused = Vec::new();
        let Ok(layout) = Layout::new(&metainfo.info) else { return refused };
        for text in &metainfo.url_list {
            if self.web.seeds.iter().any(|(_, s)| s.url_text == *text) {
                continue;
            }
            if self.web.seeds.len() >= MAX_WEB_SEEDS_PER_TORRENT {
                let why = format!("more than {MAX_WEB_SEEDS_PER_TORRENT} web seeds");
                refused.push((text.clone(), WebSeedError::BadUrl(why)));
                continue;
            }
            let seed = match WebSeed::new(text) {
                Ok(seed) => seed,
                Err(error) => {
                    refused.push((text.clone(), error));
                    continue;
                }
            };
            let key = PeerKey(self.next_key);
            self.next_key += 1;
            if let Err(error) = self.picker.add_peer(key) {
                refused.push((text.clone(), WebSeedError::BadUrl(error.to_string())));
                continue;
            }
            self.web.seeds.push((key, seed));
        }
        if !self.web.seeds.is_empty() {
            self.web.metainfo = Some(metainfo);
            self.web.layout = Some(layout);
        }
        refused
    }

    /// What each web seed is doing.
    pub fn web_seed_status(&self, now: Instant) -> Vec<WebSeedStatus> {
        self.web.seeds.iter().map(|(_, s)| s.status(now)).collect()
    }

    /// Starts the web seed fetches that are due (see the module docs).
    pub(super) fn web_seed_tick(&mut self, now: Instant) {
        if self.web.seeds.is_empty() || self.picker.is_finished() {
            return;
        }
        let (Some(metainfo), Some(layout)) = (&self.web.metainfo, &self.web.layout) else {
            return;
        };
        let unchoked =
            self.conns.iter().filter(|(_, c)| c.joined && !c.peer.peer_choking()).count();
        let max_availability = availability_limit(unchoked, self.config.web_seed_peer_threshold);
        let max_buffers = self.max_piece_buffers();
        let mut blocks = std::mem::take(&mut self.scratch_requests);
        for i in 0..self.web.seeds.len() {
            loop {
                let web_in_flight: usize =
                    self.web.seeds.iter().map(|(_, s)| s.in_flight.len()).sum();
                let (key, seed) = &mut self.web.seeds[i];
                if !seed.may_fetch(now)
                    || self.buffers.len() + self.in_flight.len() + web_in_flight >= max_buffers
                {
                    break;
                }
                blocks.clear();
                let piece = match self.picker.pick_whole_piece(*key, max_availability, &mut blocks)
                {
                    Ok(Some(piece)) => piece,
                    _ => break,
                };
                let buffer = self.spare_buffers.pop().unwrap_or_default();
                match PieceFetch::new(seed, &metainfo.info, layout, piece, buffer) {
                    Ok(fetch) => {
                        seed.in_flight.push(piece);
                        self.actions
                            .push_back(Action::FetchWebSeed { seed: i, fetch: Box::new(fetch) });
                    }
                    Err(error) => {
                        // No URL can be built for this torrent's files.
                        for block in blocks.drain(..) {
                            let _ = self.picker.request_timed_out(*key, block);
                        }
                        if seed.disabled.is_none() {
                            let reason = format!("no usable URL: {error}");
                            seed.disabled = Some(reason.clone());
                            let url = seed.url_text.clone();
                            self.actions.push_back(Action::WebSeedDisabled { url, reason });
                        }
                        break;
                    }
                }
            }
        }
        blocks.clear();
        self.scratch_requests = blocks;
    }

    /// Download tokens for `bytes` of web seed data just read (the torrent's
    /// and the process's buckets, as for peer requests): `None` when granted,
    /// else how long to wait before asking again.
    pub fn web_seed_take_download(&mut self, now: Instant, bytes: u64) -> Option<Duration> {
        let process = self.process_limits.clone();
        let shared = process.as_deref().map(|p| &p.download);
        if self.download_gate.try_take(now, shared, bytes) {
            return None;
        }
        Some(self.download_gate.wait_for(now, shared, bytes).max(RATE_LIMIT_MIN_WAKE))
    }

    /// A web seed fetch ended: complete (`error` is `None`), or failed. A
    /// complete piece joins the peers' path (hash, write); a failed one goes
    /// back to the picker and the web seed backs off. Further fetches start.
    pub fn web_seed_fetched(
        &mut self,
        seed: usize,
        fetch: PieceFetch,
        error: Option<WebSeedError>,
        now: Instant,
    ) {
        self.observe(now);
        let piece = fetch.piece();
        let Some((key, _)) = self.web.seeds.get(seed) else {
            self.give_buffer(fetch.into_buffer());
            return;
        };
        let key = *key;
        let error = match error {
            None if fetch.is_complete() => None,
            None => Some(WebSeedError::Transport("fetch ended early".into())),
            Some(error) => Some(error),
        };
        match error {
            Some(error) => {
                self.release_web_piece(key, piece);
                self.give_buffer(fetch.into_buffer());
                let entry = &mut self.web.seeds[seed].1;
                if let Some(reason) = entry.fetch_failed(piece, &error, now) {
                    let url = entry.url_text.clone();
                    self.push(Action::WebSeedDisabled { url, reason });
                }
            }
            None => {
                let (piece, data, learned) = fetch.finish();
                self.web.seeds[seed].1.fetch_done(piece, data.len() as u64, learned);
                self.web_piece_received(key, piece, data, now);
            }
        }
        self.web_seed_tick(now);
    }

    /// Gives the blocks a web seed reserved for `piece` back to the picker.
    fn release_web_piece(&mut self, key: PeerKey, piece: u32) {
        for b in 0..self.picker.blocks_in_piece(piece) {
            let block = BlockRequest {
                piece,
                begin: b * BLOCK_SIZE,
                length: self.picker.block_length(piece, b),
            };
            let _ = self.picker.request_timed_out(key, block);
        }
    }

    /// A web seed's whole `piece`: each block is received through the
    /// picker (blocks a peer delivered first in endgame are duplicates and
    /// keep the peer's bytes); a complete piece is hashed.
    fn web_piece_received(&mut self, key: PeerKey, piece: u32, data: Vec<u8>, now: Instant) {
        let blocks = self.picker.blocks_in_piece(piece);
        let mut accepted = Vec::new();
        let mut complete = false;
        let mut cancel = std::mem::take(&mut self.scratch_keys);
        for b in 0..blocks {
            let block = BlockRequest {
                piece,
                begin: b * BLOCK_SIZE,
                length: self.picker.block_length(piece, b),
            };
            cancel.clear();
            let outcome = self.picker.block_received(key, block, &mut cancel);
            for other in cancel.drain(..) {
                if let Some(&oc) = self.keys.get(&other) {
                    self.conns[oc].peer.cancel(block, now);
                }
            }
            match outcome {
                Ok(BlockOutcome::Accepted) => accepted.push(block),
                Ok(BlockOutcome::PieceComplete) => {
                    accepted.push(block);
                    complete = true;
                }
                Ok(BlockOutcome::Duplicate | BlockOutcome::NotNeeded) | Err(_) => {}
            }
        }
        self.scratch_keys = cancel;
        if accepted.is_empty() {
            self.give_buffer(data);
            return;
        }
        let buffer = match self.buffers.remove(&piece) {
            // Peers delivered some blocks: copy the web seed's others in.
            Some(mut buffer) => {
                for block in &accepted {
                    let range = block.begin as usize..(block.begin + block.length) as usize;
                    buffer[range.clone()].copy_from_slice(&data[range]);
                }
                self.give_buffer(data);
                buffer
            }
            // The web seed's buffer is the piece: no copy.
            None => data,
        };
        if complete {
            self.in_flight.insert(piece);
            let expected = self.params.piece_hashes[piece as usize];
            self.push(Action::HashPiece { piece, data: buffer, expected });
        } else {
            self.buffers.insert(piece, buffer);
        }
    }

    /// `key` contributed all of failed `piece`: when it is a web seed, the
    /// failure counts against it. Returns whether it was one.
    pub(super) fn web_seed_blamed(&mut self, key: PeerKey, piece: u32) -> bool {
        let Some((_, seed)) = self.web.seeds.iter_mut().find(|(k, _)| *k == key) else {
            return false;
        };
        if let Some(reason) = seed.bad_piece(piece) {
            let url = seed.url_text.clone();
            self.push(Action::WebSeedDisabled { url, reason });
        }
        true
    }
}
