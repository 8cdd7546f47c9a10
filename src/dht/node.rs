//! [`Dht`]: one DHT node over both address families: answers queries,
//! keeps the routing tables, runs lookups and schedules every torrent's
//! `get_peers` + `announce_peer`.
//!
//! Layer: pure core (see the module docs of `dht`). Inputs:
//! [`Dht::handle_datagram`], [`Dht::handle_timeout`], [`Dht::add_torrent`],
//! [`Dht::remove_torrent`], [`Dht::lookup_now`], [`Dht::add_node`]. Outputs:
//! [`Dht::poll_transmit`], [`Dht::poll_event`], [`Dht::poll_timeout`],
//! [`Dht::stats`], [`Dht::export`].
//!
//! Bounds: [`DhtConfig::outstanding_max`] queries awaiting an answer,
//! [`TRANSMIT_QUEUE_MAX`] datagrams and [`EVENT_QUEUE_MAX`] events queued,
//! [`DhtConfig::queries_per_ip_per_s`] queries answered per source IP (token
//! bucket, [`RATE_TABLE_MAX`] IPs), [`TORRENTS_MAX`] torrents announced,
//! [`DhtConfig::announce_lookups_max`] torrent lookups at once, started at
//! most one per [`DhtConfig::lookup_start_interval_ms`] (a seed box adding
//! 10,000 torrents spreads their announces instead of sending them at once).

use super::bep42::{self, IpVotes};
use super::krpc::{self, Body, Message, Query, Response, Want};
use super::lookup::{Lookup, LOOKUP_TIMEOUT_SECS};
use super::state::DhtState;
use super::store::{Store, StoreLimits};
use super::table::{Insert, Table, K};
use super::token::Tokens;
use super::{canonical, Family, NodeId, NodeInfo};
use crate::metainfo::InfoHash;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Datagrams queued for the driver at most; more are dropped and counted.
pub const TRANSMIT_QUEUE_MAX: usize = 2048;
/// Events queued for the driver at most; more are dropped.
pub const EVENT_QUEUE_MAX: usize = 4096;
/// Source IPs whose query rate is tracked at most.
pub const RATE_TABLE_MAX: usize = 10_000;
/// Torrents announced at most.
pub const TORRENTS_MAX: usize = 100_000;
/// Peers returned in one `get_peers` reply (fits one datagram).
pub const VALUES_PER_REPLY_MAX: usize = 50;
/// Spare send buffers kept.
const BUFFERS_KEPT: usize = 64;
/// Housekeeping period.
const TICK_MS: u64 = 1000;
/// First wait before bootstrapping again while the table stays small; it
/// doubles up to [`BOOTSTRAP_RETRY_MAX_SECS`].
pub const BOOTSTRAP_RETRY_SECS: u64 = 5;
pub const BOOTSTRAP_RETRY_MAX_SECS: u64 = 15 * 60;
/// A torrent due while both tables are empty waits this long.
const EMPTY_TABLE_RETRY_SECS: u64 = 5;

#[derive(Clone, Debug, PartialEq)]
pub struct DhtConfig {
    /// BEP 43: query only, never answer, never announce; others keep us out
    /// of their tables.
    pub read_only: bool,
    /// Routers and nodes to bootstrap from (resolved by the driver).
    pub bootstrap: Vec<SocketAddr>,
    pub ipv4: bool,
    pub ipv6: bool,
    /// A query not answered within this long has failed.
    pub query_timeout_ms: u64,
    pub outstanding_max: usize,
    /// Queries answered per source IP per second (token bucket rate) ...
    pub queries_per_ip_per_s: u32,
    /// ... and burst.
    pub queries_per_ip_burst: u32,
    /// Each torrent's `get_peers` + `announce_peer` repeats this often.
    pub announce_interval_secs: u64,
    pub announce_lookups_max: usize,
    pub lookup_start_interval_ms: u64,
    pub store: StoreLimits,
    /// One table node per non-local IP.
    pub restrict_routing_ips: bool,
    /// Seeds ids, tids, secrets (random in production, fixed in tests).
    pub seed: u64,
}

impl Default for DhtConfig {
    fn default() -> DhtConfig {
        DhtConfig {
            read_only: false,
            bootstrap: Vec::new(),
            ipv4: true,
            ipv6: true,
            query_timeout_ms: 4000,
            outstanding_max: 512,
            queries_per_ip_per_s: 25,
            queries_per_ip_burst: 100,
            announce_interval_secs: 15 * 60,
            announce_lookups_max: 8,
            lookup_start_interval_ms: 100,
            store: StoreLimits::default(),
            restrict_routing_ips: true,
            seed: 0,
        }
    }
}

/// What the DHT tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DhtEvent {
    /// Peers for a torrent, each reported once per lookup.
    Peers { info_hash: InfoHash, peers: Vec<SocketAddr> },
    /// A torrent's lookup in one family ended.
    LookupDone { info_hash: InfoHash, family: Family, responded: usize, announced: usize },
    /// Our id changed after enough `ip` votes (BEP 42).
    IdChanged { family: Family, external_ip: IpAddr },
}

/// Counters since start and gauges now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhtStats {
    pub nodes_v4: u64,
    pub nodes_v6: u64,
    pub queries_in: u64,
    pub queries_out: u64,
    pub responses_in: u64,
    pub errors_in: u64,
    pub timeouts: u64,
    pub peers_found: u64,
    pub announces_out: u64,
    pub dropped_rate_limited: u64,
    pub dropped_malformed: u64,
    pub dropped_unmatched: u64,
    pub dropped_queue_full: u64,
    pub stored_torrents: u64,
    pub stored_peers: u64,
    pub lookups_active: u64,
    pub torrents: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LookupPurpose {
    Bootstrap,
    Refresh,
    Torrent(InfoHash),
}

struct LookupEntry {
    lookup: Lookup,
    family: Family,
    purpose: LookupPurpose,
    deadline: Instant,
}

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Ping,
    Lookup(u64),
    Announce,
}

struct Outstanding {
    addr: SocketAddr,
    deadline: Instant,
    purpose: Purpose,
}

struct FamilyState {
    table: Table,
    votes: IpVotes,
    external_ip: Option<IpAddr>,
    bootstrap: Option<u64>,
    refresh: Option<u64>,
    next_bootstrap_at: Instant,
    bootstrap_backoff_secs: u64,
    /// Nodes from the state file, asked at the first bootstrap.
    saved: Vec<NodeInfo>,
}

struct TorrentEntry {
    port: u16,
    active_lookups: u8,
    /// When due (also the key in `due`); `None` while its lookups run.
    next_at: Option<Instant>,
}

struct RateBucket {
    tokens: f32,
    updated: Instant,
}

pub struct Dht {
    config: DhtConfig,
    v4: FamilyState,
    v6: FamilyState,
    rng: StdRng,
    tokens: Tokens,
    store: Store,
    outstanding: HashMap<u16, Outstanding>,
    /// (deadline, tid) in send order; deadlines only grow.
    deadlines: VecDeque<(Instant, u16)>,
    next_tid: u16,
    lookups: HashMap<u64, LookupEntry>,
    next_lookup_id: u64,
    torrent_lookups: usize,
    torrents: HashMap<InfoHash, TorrentEntry>,
    due: BTreeSet<(Instant, InfoHash)>,
    next_lookup_start_at: Instant,
    rates: HashMap<IpAddr, RateBucket>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    buffers: Vec<Vec<u8>>,
    events: VecDeque<DhtEvent>,
    stats: DhtStats,
    next_tick_at: Instant,
    next_expire_at: Instant,
}

impl Dht {
    pub fn new(config: DhtConfig, state: Option<DhtState>, now: Instant) -> Dht {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let state = state.unwrap_or_default();
        let family = |id: Option<NodeId>, saved: Vec<NodeInfo>, rng: &mut StdRng| {
            let id = id.unwrap_or_else(|| NodeId::random(rng));
            FamilyState {
                table: Table::new(id, config.restrict_routing_ips, now),
                votes: IpVotes::default(),
                external_ip: None,
                bootstrap: None,
                refresh: None,
                next_bootstrap_at: now,
                bootstrap_backoff_secs: BOOTSTRAP_RETRY_SECS,
                saved,
            }
        };
        let v4 = family(state.id, state.nodes, &mut rng);
        let v6 = family(state.id6, state.nodes6, &mut rng);
        let secret: [u8; 16] = rng.gen();
        Dht {
            tokens: Tokens::new(secret, now),
            store: Store::new(config.store),
            config,
            v4,
            v6,
            rng,
            outstanding: HashMap::new(),
            deadlines: VecDeque::new(),
            next_tid: 0,
            lookups: HashMap::new(),
            next_lookup_id: 0,
            torrent_lookups: 0,
            torrents: HashMap::new(),
            due: BTreeSet::new(),
            next_lookup_start_at: now,
            rates: HashMap::new(),
            transmits: VecDeque::new(),
            buffers: Vec::new(),
            events: VecDeque::new(),
            stats: DhtStats::default(),
            next_tick_at: now,
            next_expire_at: now,
        }
    }

    fn family(&self, family: Family) -> &FamilyState {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: Family) -> &mut FamilyState {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    fn enabled(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.config.ipv4,
            Family::V6 => self.config.ipv6,
        }
    }

    /// Our id in one family.
    pub fn id(&self, family: Family) -> NodeId {
        self.family(family).table.own_id()
    }

    // ---- outputs ----

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// Gives a sent datagram's buffer back for reuse.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.buffers.len() < BUFFERS_KEPT {
            buffer.clear();
            self.buffers.push(buffer);
        }
    }

    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// When [`Dht::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_tick_at;
        if let Some((deadline, _)) = self.deadlines.front() {
            at = at.min(*deadline);
        }
        if self.torrent_lookups < self.config.announce_lookups_max {
            if let Some((due, _)) = self.due.first() {
                at = at.min((*due).max(self.next_lookup_start_at));
            }
        }
        at
    }

    pub fn stats(&self) -> DhtStats {
        let mut stats = self.stats.clone();
        stats.nodes_v4 = self.v4.table.len() as u64;
        stats.nodes_v6 = self.v6.table.len() as u64;
        stats.stored_torrents = self.store.torrent_count() as u64;
        stats.stored_peers = self.store.peer_count() as u64;
        stats.lookups_active = self.lookups.len() as u64;
        stats.torrents = self.torrents.len() as u64;
        stats
    }

    /// What to save for the next start.
    pub fn export(&self) -> DhtState {
        DhtState {
            id: Some(self.v4.table.own_id()),
            id6: Some(self.v6.table.own_id()),
            nodes: self.v4.table.nodes().map(|e| e.info()).collect(),
            nodes6: self.v6.table.nodes().map(|e| e.info()).collect(),
        }
    }

    fn emit(&mut self, event: DhtEvent) {
        if self.events.len() < EVENT_QUEUE_MAX {
            self.events.push_back(event);
        }
    }

    fn send(&mut self, to: SocketAddr, message: &Message) {
        if self.transmits.len() >= TRANSMIT_QUEUE_MAX {
            self.stats.dropped_queue_full += 1;
            return;
        }
        let mut buffer = self.buffers.pop().unwrap_or_default();
        krpc::encode(&mut buffer, message);
        self.transmits.push_back((to, buffer));
    }

    fn send_query(&mut self, to: SocketAddr, query: Query, purpose: Purpose, now: Instant) -> bool {
        let family = Family::of(&to);
        if !self.enabled(family) || self.outstanding.len() >= self.config.outstanding_max {
            return false;
        }
        let tid = loop {
            self.next_tid = self.next_tid.wrapping_add(1);
            if !self.outstanding.contains_key(&self.next_tid) {
                break self.next_tid;
            }
        };
        let id = self.id(family);
        let message = Message {
            transaction: tid.to_be_bytes().to_vec(),
            body: Body::Query { id, query },
            ip: None,
            read_only: self.config.read_only,
        };
        self.send(to, &message);
        let deadline = now + Duration::from_millis(self.config.query_timeout_ms);
        self.outstanding.insert(tid, Outstanding { addr: to, deadline, purpose });
        self.deadlines.push_back((deadline, tid));
        self.family_mut(family).table.pinged(&to, now);
        self.stats.queries_out += 1;
        true
    }

    fn ping(&mut self, to: SocketAddr, now: Instant) {
        // Pings are the first thing to give up under load, and a node gets
        // one at a time (a flood of queries must not become a flood of pings).
        if self.outstanding.len() < self.config.outstanding_max / 2
            && !self.outstanding.values().any(|o| o.addr == to)
        {
            self.send_query(to, Query::Ping, Purpose::Ping, now);
        }
    }

    // ---- inputs ----

    /// Starts announcing a torrent: its first lookup runs as soon as the
    /// start rate allows, then every `announce_interval_secs`. False when
    /// [`TORRENTS_MAX`] torrents are announced already.
    pub fn add_torrent(&mut self, info_hash: InfoHash, port: u16, now: Instant) -> bool {
        if let Some(entry) = self.torrents.get_mut(&info_hash) {
            entry.port = port;
            return true;
        }
        if self.torrents.len() >= TORRENTS_MAX {
            return false;
        }
        self.torrents
            .insert(info_hash, TorrentEntry { port, active_lookups: 0, next_at: Some(now) });
        self.due.insert((now, info_hash));
        true
    }

    pub fn remove_torrent(&mut self, info_hash: &InfoHash) {
        if let Some(entry) = self.torrents.remove(info_hash) {
            if let Some(at) = entry.next_at {
                self.due.remove(&(at, *info_hash));
            }
        }
    }

    /// Runs a torrent's lookup as soon as the start rate allows (a
    /// download that needs peers now).
    pub fn lookup_now(&mut self, info_hash: &InfoHash, now: Instant) {
        if let Some(entry) = self.torrents.get_mut(info_hash) {
            if let Some(at) = entry.next_at {
                if at > now {
                    self.due.remove(&(at, *info_hash));
                    self.due.insert((now, *info_hash));
                    entry.next_at = Some(now);
                }
            }
        }
    }

    /// A node to learn from (a peer's `PORT` message, a configured node):
    /// bootstraps from it while the table is small, else pings it.
    pub fn add_node(&mut self, addr: SocketAddr, now: Instant) {
        let addr = canonical(addr);
        let family = Family::of(&addr);
        if !self.enabled(family) || addr.port() == 0 {
            return;
        }
        if self.family(family).table.len() >= K {
            self.ping(addr, now);
            return;
        }
        match self.family(family).bootstrap {
            Some(id) => {
                if let Some(entry) = self.lookups.get_mut(&id) {
                    entry.lookup.add_seed(None, addr);
                }
            }
            None => self.start_bootstrap(family, vec![(None, addr)], now),
        }
        self.drive_lookups(now);
    }

    /// One datagram from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let from = canonical(from);
        if !self.enabled(Family::of(&from)) || from.port() == 0 {
            return;
        }
        let message = match krpc::decode(datagram) {
            Ok(message) => message,
            Err(krpc::KrpcError::BadQuery { transaction, reason }) => {
                self.stats.dropped_malformed += 1;
                if !self.config.read_only && self.allow_query(from.ip(), now) {
                    self.send_error(from, transaction, krpc::ERROR_PROTOCOL, reason);
                }
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        match message.body {
            Body::Query { id, query } => {
                self.on_query(from, message.transaction, id, query, message.read_only, now)
            }
            Body::Response(response) => {
                self.on_response(from, &message.transaction, response, message.ip, now)
            }
            Body::Error { .. } => self.on_error(from, &message.transaction, now),
        }
        self.drive_lookups(now);
    }

    /// Timeouts, housekeeping and scheduled lookups due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, tid)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let matches = self.outstanding.get(&tid).is_some_and(|o| o.deadline == deadline);
            if !matches {
                continue;
            }
            let out = self.outstanding.remove(&tid).expect("checked");
            self.stats.timeouts += 1;
            self.family_mut(Family::of(&out.addr)).table.failed(&out.addr, now);
            if let Purpose::Lookup(id) = out.purpose {
                if let Some(entry) = self.lookups.get_mut(&id) {
                    entry.lookup.on_failure(&out.addr);
                }
            }
        }
        if now >= self.next_tick_at {
            self.next_tick_at = now + Duration::from_millis(TICK_MS);
            self.tick(now);
        }
        self.start_due(now);
        self.drive_lookups(now);
    }

    fn tick(&mut self, now: Instant) {
        let rng = &mut self.rng;
        self.tokens.rotate_if_due(now, || rng.gen());
        if now >= self.next_expire_at {
            self.next_expire_at = now + Duration::from_secs(60);
            self.store.expire(now);
            let burst = self.config.queries_per_ip_burst as f32;
            let rate = self.config.queries_per_ip_per_s as f32;
            // Buckets that refilled completely carry no information.
            self.rates.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f32() * rate < burst
            });
        }
        for family in [Family::V4, Family::V6] {
            if !self.enabled(family) {
                continue;
            }
            let state = self.family(family);
            if state.bootstrap.is_none() && state.table.len() < K && now >= state.next_bootstrap_at
            {
                self.start_bootstrap(family, Vec::new(), now);
            } else if state.table.len() >= K {
                self.family_mut(family).bootstrap_backoff_secs = BOOTSTRAP_RETRY_SECS;
            }
            let target = {
                let rng = &mut self.rng;
                let state = match family {
                    Family::V4 => &mut self.v4,
                    Family::V6 => &mut self.v6,
                };
                if state.refresh.is_none() && !state.table.is_empty() {
                    state.table.refresh_target(now, rng)
                } else {
                    None
                }
            };
            {
                if let Some(target) = target {
                    let seeds = self.family(family).table.closest(&target, K, now);
                    let id = self.start_lookup(
                        family,
                        target,
                        LookupPurpose::Refresh,
                        seeds.into_iter().map(|n| (Some(n.id), n.addr)).collect(),
                        now,
                    );
                    self.family_mut(family).refresh = Some(id);
                }
            }
            if let Some(node) = self.family(family).table.stale_node(now) {
                self.ping(node.addr, now);
            }
        }
    }

    fn start_bootstrap(
        &mut self,
        family: Family,
        mut seeds: Vec<(Option<NodeId>, SocketAddr)>,
        now: Instant,
    ) {
        let own = self.id(family);
        let config_nodes = self.config.bootstrap.iter().map(|a| canonical(*a));
        seeds.extend(config_nodes.filter(|a| Family::of(a) == family).map(|a| (None, a)));
        let state = self.family_mut(family);
        seeds.extend(state.saved.drain(..).map(|n| (Some(n.id), n.addr)));
        seeds.extend(state.table.closest(&own, K, now).into_iter().map(|n| (Some(n.id), n.addr)));
        state.next_bootstrap_at = now + Duration::from_secs(state.bootstrap_backoff_secs);
        state.bootstrap_backoff_secs =
            (state.bootstrap_backoff_secs * 2).min(BOOTSTRAP_RETRY_MAX_SECS);
        if seeds.is_empty() {
            return;
        }
        let id = self.start_lookup(family, own, LookupPurpose::Bootstrap, seeds, now);
        self.family_mut(family).bootstrap = Some(id);
    }

    fn start_lookup(
        &mut self,
        family: Family,
        target: NodeId,
        purpose: LookupPurpose,
        seeds: Vec<(Option<NodeId>, SocketAddr)>,
        now: Instant,
    ) -> u64 {
        let id = self.next_lookup_id;
        self.next_lookup_id += 1;
        let deadline = now + Duration::from_secs(LOOKUP_TIMEOUT_SECS);
        self.lookups.insert(
            id,
            LookupEntry { lookup: Lookup::new(target, seeds), family, purpose, deadline },
        );
        if matches!(purpose, LookupPurpose::Torrent(_)) {
            self.torrent_lookups += 1;
        }
        id
    }

    /// Starts the lookups of due torrents, within the start rate and the
    /// concurrency bound.
    fn start_due(&mut self, now: Instant) {
        while self.torrent_lookups < self.config.announce_lookups_max
            && now >= self.next_lookup_start_at
        {
            let Some(&(at, info_hash)) = self.due.first() else { break };
            if at > now {
                break;
            }
            self.due.pop_first();
            let target = NodeId(info_hash.0);
            let mut started = 0u8;
            for family in [Family::V4, Family::V6] {
                if !self.enabled(family) || self.family(family).table.is_empty() {
                    continue;
                }
                let seeds = self.family(family).table.closest(&target, K * 2, now);
                let seeds = seeds.into_iter().map(|n| (Some(n.id), n.addr)).collect();
                self.start_lookup(family, target, LookupPurpose::Torrent(info_hash), seeds, now);
                started += 1;
            }
            let entry = self.torrents.get_mut(&info_hash).expect("due torrents are known");
            if started == 0 {
                let retry = now + Duration::from_secs(EMPTY_TABLE_RETRY_SECS);
                entry.next_at = Some(retry);
                self.due.insert((retry, info_hash));
            } else {
                entry.next_at = None;
                entry.active_lookups = started;
                self.next_lookup_start_at =
                    now + Duration::from_millis(self.config.lookup_start_interval_ms);
            }
        }
    }

    /// Sends what every lookup wants sent; finishes the ones that are done.
    fn drive_lookups(&mut self, now: Instant) {
        let ids: Vec<u64> = self.lookups.keys().copied().collect();
        for id in ids {
            loop {
                if self.outstanding.len() >= self.config.outstanding_max {
                    break;
                }
                let Some(entry) = self.lookups.get_mut(&id) else { break };
                let Some(addr) = entry.lookup.next_query() else { break };
                let target = entry.lookup.target();
                let want = Want { v4: entry.family == Family::V4, v6: entry.family == Family::V6 };
                let query = match entry.purpose {
                    LookupPurpose::Torrent(_) => {
                        Query::GetPeers { info_hash: target, want, noseed: false }
                    }
                    _ => Query::FindNode { target, want },
                };
                if !self.send_query(addr, query, Purpose::Lookup(id), now) {
                    if let Some(entry) = self.lookups.get_mut(&id) {
                        entry.lookup.on_failure(&addr);
                    }
                    break;
                }
            }
            let finished =
                self.lookups.get(&id).is_some_and(|e| e.lookup.is_finished() || now >= e.deadline);
            if finished {
                self.finish_lookup(id, now);
            }
        }
    }

    fn finish_lookup(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.lookups.remove(&id) else { return };
        let state = self.family_mut(entry.family);
        match entry.purpose {
            LookupPurpose::Bootstrap => {
                if state.bootstrap == Some(id) {
                    state.bootstrap = None;
                }
            }
            LookupPurpose::Refresh => {
                if state.refresh == Some(id) {
                    state.refresh = None;
                }
            }
            LookupPurpose::Torrent(info_hash) => {
                self.torrent_lookups -= 1;
                let mut announced = 0;
                if let Some(torrent) = self.torrents.get_mut(&info_hash) {
                    let port = torrent.port;
                    torrent.active_lookups = torrent.active_lookups.saturating_sub(1);
                    if torrent.active_lookups == 0 {
                        let next = now + Duration::from_secs(self.config.announce_interval_secs);
                        torrent.next_at = Some(next);
                        self.due.insert((next, info_hash));
                    }
                    if !self.config.read_only {
                        for (addr, token) in entry.lookup.announce_targets() {
                            let query = Query::AnnouncePeer {
                                info_hash: NodeId(info_hash.0),
                                port,
                                implied_port: false,
                                token,
                                seed: false,
                            };
                            if self.send_query(addr, query, Purpose::Announce, now) {
                                announced += 1;
                                self.stats.announces_out += 1;
                            }
                        }
                    }
                }
                let responded = entry.lookup.responded_count();
                self.emit(DhtEvent::LookupDone {
                    info_hash,
                    family: entry.family,
                    responded,
                    announced,
                });
            }
        }
    }

    /// True when `ip` may have another query answered (token bucket).
    fn allow_query(&mut self, ip: IpAddr, now: Instant) -> bool {
        let burst = self.config.queries_per_ip_burst as f32;
        let rate = self.config.queries_per_ip_per_s as f32;
        if self.rates.len() >= RATE_TABLE_MAX && !self.rates.contains_key(&ip) {
            // A flood from many addresses: forget the table rather than grow.
            self.rates.clear();
        }
        let bucket = self.rates.entry(ip).or_insert(RateBucket { tokens: burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f32();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            self.stats.dropped_rate_limited += 1;
            false
        }
    }

    fn send_error(&mut self, to: SocketAddr, transaction: Vec<u8>, code: i64, text: &str) {
        let message = Message {
            transaction,
            body: Body::Error { code, message: text.to_string() },
            ip: None,
            read_only: false,
        };
        self.send(to, &message);
    }

    fn nodes_for(
        &self,
        target: &NodeId,
        want: Want,
        from: Family,
        now: Instant,
    ) -> (Vec<NodeInfo>, Vec<NodeInfo>) {
        let (v4, v6) = if want.v4 || want.v6 {
            (want.v4, want.v6)
        } else {
            (from == Family::V4, from == Family::V6)
        };
        let nodes =
            if v4 && self.config.ipv4 { self.v4.table.closest(target, K, now) } else { Vec::new() };
        let nodes6 =
            if v6 && self.config.ipv6 { self.v6.table.closest(target, K, now) } else { Vec::new() };
        (nodes, nodes6)
    }

    fn on_query(
        &mut self,
        from: SocketAddr,
        transaction: Vec<u8>,
        id: NodeId,
        query: Query,
        sender_read_only: bool,
        now: Instant,
    ) {
        self.stats.queries_in += 1;
        if self.config.read_only || !self.allow_query(from.ip(), now) {
            return;
        }
        let family = Family::of(&from);
        if !sender_read_only && self.family_mut(family).table.heard(&id, &from, now) {
            self.ping(from, now);
        }
        let own = self.id(family);
        let mut response = Response { id: Some(own), ..Response::default() };
        match query {
            Query::Ping => {}
            Query::FindNode { target, want } => {
                (response.nodes, response.nodes6) = self.nodes_for(&target, want, family, now);
            }
            Query::GetPeers { info_hash, want, noseed } => {
                (response.nodes, response.nodes6) = self.nodes_for(&info_hash, want, family, now);
                response.token = Some(self.tokens.token(&from.ip()).to_vec());
                let max = match family {
                    Family::V4 => VALUES_PER_REPLY_MAX,
                    // 18-byte peers: fewer fit one datagram.
                    Family::V6 => VALUES_PER_REPLY_MAX / 2,
                };
                self.store.get(&info_hash, family, noseed, max, now, &mut response.values);
            }
            Query::AnnouncePeer { info_hash, port, implied_port, token, seed } => {
                if !self.tokens.is_valid(&from.ip(), &token) {
                    self.send_error(from, transaction, krpc::ERROR_PROTOCOL, "bad token");
                    return;
                }
                let port = if implied_port { from.port() } else { port };
                self.store.announce(info_hash, SocketAddr::new(from.ip(), port), seed, now);
            }
            Query::Unknown(_) => {
                self.send_error(from, transaction, krpc::ERROR_METHOD_UNKNOWN, "Method Unknown");
                return;
            }
        }
        let message = Message {
            transaction,
            body: Body::Response(response),
            ip: Some(from),
            read_only: false,
        };
        self.send(from, &message);
    }

    fn take_outstanding(&mut self, from: SocketAddr, transaction: &[u8]) -> Option<Outstanding> {
        let tid = u16::from_be_bytes(transaction.try_into().ok()?);
        if self.outstanding.get(&tid)?.addr != from {
            return None;
        }
        self.outstanding.remove(&tid)
    }

    fn on_error(&mut self, from: SocketAddr, transaction: &[u8], now: Instant) {
        let Some(out) = self.take_outstanding(from, transaction) else {
            self.stats.dropped_unmatched += 1;
            return;
        };
        self.stats.errors_in += 1;
        if let Purpose::Lookup(id) = out.purpose {
            if let Some(entry) = self.lookups.get_mut(&id) {
                entry.lookup.on_failure(&from);
            }
        }
        let _ = now;
    }

    fn on_response(
        &mut self,
        from: SocketAddr,
        transaction: &[u8],
        response: Response,
        ip: Option<SocketAddr>,
        now: Instant,
    ) {
        let Some(out) = self.take_outstanding(from, transaction) else {
            self.stats.dropped_unmatched += 1;
            return;
        };
        self.stats.responses_in += 1;
        let family = Family::of(&from);
        if let Some(seen) = ip {
            self.vote(family, from.ip(), canonical(seen).ip(), now);
        }
        let own = self.id(family);
        let id = response.id.filter(|id| *id != own);
        match id {
            Some(id) => {
                let conforming = bep42::conforms(&id, &from.ip());
                if let Insert::Full { ping: Some(node) } =
                    self.family_mut(family).table.responded(id, from, conforming, now)
                {
                    self.ping(node.addr, now);
                }
            }
            None => {
                // No id (or ours): not a node we can use.
                if let Purpose::Lookup(lookup) = out.purpose {
                    if let Some(entry) = self.lookups.get_mut(&lookup) {
                        entry.lookup.on_failure(&from);
                    }
                }
                return;
            }
        }
        let Purpose::Lookup(lookup) = out.purpose else { return };
        let Some(entry) = self.lookups.get_mut(&lookup) else { return };
        let nodes = match entry.family {
            Family::V4 => &response.nodes,
            Family::V6 => &response.nodes6,
        };
        let nodes: Vec<NodeInfo> = nodes
            .iter()
            .filter(|n| n.id != own && Family::of(&n.addr) == entry.family)
            .copied()
            .collect();
        let peers = entry.lookup.on_response(&from, id, &nodes, response.token, &response.values);
        if let LookupPurpose::Torrent(info_hash) = entry.purpose {
            if !peers.is_empty() {
                self.stats.peers_found += peers.len() as u64;
                self.emit(DhtEvent::Peers { info_hash, peers });
            }
        }
    }

    fn vote(&mut self, family: Family, voter: IpAddr, seen: IpAddr, now: Instant) {
        if Family::of(&SocketAddr::new(seen, 1)) != family {
            return;
        }
        let state = self.family_mut(family);
        let Some(external) = state.votes.vote(voter, seen, state.external_ip) else { return };
        state.external_ip = Some(external);
        if bep42::conforms(&state.table.own_id(), &external) {
            return;
        }
        let new_id = bep42::node_id_for(&external, self.rng.gen());
        let state = self.family_mut(family);
        state.table = state.table.rebuilt(new_id, now);
        self.emit(DhtEvent::IdChanged { family, external_ip: external });
    }
}
