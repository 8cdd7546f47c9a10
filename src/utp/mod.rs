//! uTP (BEP 29): a reliable, ordered byte stream over UDP whose congestion
//! control (LEDBAT) yields to other traffic.
//!
//! Layer: pure core (sans-IO). Datagrams and `now` go in, datagrams, stream
//! bytes and events come out; no socket, clock or runtime is touched, so two
//! endpoints can be linked in memory and run on virtual time (see `sim`).
//! The UDP driver (one port shared with the DHT and UDP trackers) feeds it.
//!
//! * [`packet`]: the 20-byte header, extensions, selective ACK.
//! * [`congestion`]: the [`CongestionController`] trait and [`Ledbat`].
//! * `conn`: one connection's state machine (SYN/DATA/STATE/FIN/RESET,
//!   retransmission, fast retransmit, reorder buffer, windows).
//! * [`Endpoint`]: the multiplexer. It owns every connection of one UDP
//!   socket, keyed by (peer address, our receive connection id), and
//!   demultiplexes datagrams to them. The model is quinn-proto's
//!   `handle_*`/`poll_*` split:
//!
//! ```text
//!   driver                                 Endpoint
//!   ── handle_datagram(now, from, bytes) ──>  route by (addr, conn id) -> Connection
//!   ── handle_timeout(now) ────────────────>  retransmit, keepalive, expire
//!   <─ poll_transmit(now, buf) ────────────   next packet (written into buf)
//!   <─ poll_event() ───────────────────────   Incoming / Connected / Readable / Writable / Closed
//!   <─ poll_timeout() ─────────────────────   when to call handle_timeout
//!   ── connect / write / read / close ─────>  the application's stream
//! ```
//!
//! Connection ids (BEP 29): the initiator picks `id`, sends its SYN with it
//! and receives on it; it sends everything else with `id + 1`, on which the
//! acceptor receives. So every connection is found by (address, the
//! connection id in the packet).
//!
//! Invariants and bounds (see [`UtpConfig`] and the limits below):
//! * at most `max_connections` connections (open, closing, or closed and not
//!   yet released), of which at most `max_half_open` are half-open;
//!   a SYN past either cap is ignored;
//! * a datagram that is not uTP, names no connection we have, or falls
//!   outside a connection's windows is dropped ([`Ignored`] says why) and
//!   changes nothing: stray packets never allocate;
//! * per connection, the send buffer holds at most `send_buffer_bytes`, the
//!   receive and reorder buffers together at most `recv_window_bytes`, and at
//!   most [`MAX_PACKETS_IN_FLIGHT`] packets are unacknowledged;
//! * the endpoint's queues hold each connection at most once, plus at most
//!   [`MAX_PENDING_RESETS`] resets.

pub mod congestion;
mod conn;
pub mod packet;
#[cfg(test)]
mod sim;

pub use congestion::{AckSample, CongestionController, Ledbat, LedbatConfig};
pub use conn::{ConnStats, Dropped, State, DUPLICATE_ACKS_BEFORE_RESEND, REORDER_OVERHEAD_BYTES};
pub use packet::{looks_like_utp, PacketError};

use conn::{Connection, EVENT_CLOSED, EVENT_CONNECTED, EVENT_READABLE, EVENT_WRITABLE};
use packet::{Header, PacketType, HEADER_LEN, MAX_SACK_BYTES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Most unacknowledged packets per connection (a 16-bit sequence space
/// needs far less than half of it in flight; 4096 x 1400 B = 5.7 MB).
pub const MAX_PACKETS_IN_FLIGHT: usize = 4096;

/// Furthest ahead of the next expected sequence number a packet is buffered.
pub const MAX_REORDER_PACKETS: usize = 4096;

/// Largest payload per packet a configuration may ask for.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Smallest payload per packet (keeps the header overhead sane).
pub const MIN_PAYLOAD_BYTES: usize = 150;

/// A buffer passed to [`Endpoint::poll_transmit`] must hold this many bytes.
pub const MAX_DATAGRAM_BYTES: usize = MAX_PAYLOAD_BYTES + HEADER_LEN + 2 + MAX_SACK_BYTES;

/// Resets waiting to be sent at most (from aborted connections); more are
/// dropped, the peer then times out instead.
pub const MAX_PENDING_RESETS: usize = 256;

/// Largest send buffer and receive window a configuration may ask for.
pub const MAX_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Tries to find a free connection id for an outgoing connection.
const CONNECTION_ID_TRIES: usize = 16;

/// uTP settings. Defaults follow libutp and libtorrent where peers depend on
/// them, and the issue where it set them.
#[derive(Debug, Clone, Copy)]
pub struct UtpConfig {
    /// Payload per data packet (1400: fits a 1500-byte MTU with IPv6 and
    /// tunnel headers to spare).
    pub payload_bytes: usize,
    /// Bytes written and not yet acknowledged, per connection.
    pub send_buffer_bytes: usize,
    /// Receive window: unread in-order bytes plus the reorder buffer.
    pub recv_window_bytes: usize,
    /// Connections per endpoint.
    pub max_connections: usize,
    /// Incoming connections that acknowledged a SYN and heard nothing since.
    pub max_half_open: usize,
    /// Half-open incoming connections from one IP at most: one host's SYN
    /// flood cannot take every half-open place from other peers.
    pub max_half_open_per_ip: usize,
    /// A half-open incoming connection is dropped after this long.
    pub half_open_timeout_ms: u64,
    /// Retransmission timeouts of a SYN before the connect fails.
    pub syn_timeouts_max: u32,
    /// Consecutive retransmission timeouts before a connection fails.
    pub timeouts_max: u32,
    /// Floor of the retransmission timeout (BEP 29: 500 ms).
    pub min_rto_ms: u64,
    /// Ceiling of the doubled retransmission timeout.
    pub max_rto_ms: u64,
    /// A connection that heard nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// An otherwise silent connection sends a STATE this often (NAT mappings).
    pub keepalive_ms: u64,
    /// After our FIN is acknowledged, the peer's FIN is awaited this long.
    pub fin_linger_ms: u64,
    /// Accept incoming connections.
    pub accept_incoming: bool,
    /// LEDBAT (its window is also bounded by the send buffer).
    pub ledbat: LedbatConfig,
}

impl Default for UtpConfig {
    fn default() -> Self {
        Self {
            payload_bytes: 1400,
            send_buffer_bytes: 4 * 1024 * 1024,
            recv_window_bytes: 4 * 1024 * 1024,
            max_connections: 4096,
            max_half_open: 64,
            max_half_open_per_ip: 8,
            half_open_timeout_ms: 10_000,
            syn_timeouts_max: 3,
            timeouts_max: 6,
            min_rto_ms: 500,
            max_rto_ms: 60_000,
            idle_timeout_ms: 300_000,
            keepalive_ms: 29_000,
            fin_linger_ms: 60_000,
            accept_incoming: true,
            ledbat: LedbatConfig::default(),
        }
    }
}

/// A configuration outside the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Payload outside [`MIN_PAYLOAD_BYTES`]..=[`MAX_PAYLOAD_BYTES`].
    #[error("uTP payload of {0} bytes (allowed: {MIN_PAYLOAD_BYTES}..={MAX_PAYLOAD_BYTES})")]
    Payload(usize),
    /// A buffer smaller than a packet or above [`MAX_BUFFER_BYTES`].
    #[error("uTP buffer of {0} bytes (allowed: one payload..={MAX_BUFFER_BYTES})")]
    Buffer(usize),
    /// Zero connections or half-open connections.
    #[error("uTP connection caps must be at least 1")]
    Caps,
}

impl UtpConfig {
    /// Checks every limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&self.payload_bytes) {
            return Err(ConfigError::Payload(self.payload_bytes));
        }
        for b in [self.send_buffer_bytes, self.recv_window_bytes] {
            if b < self.payload_bytes || b > MAX_BUFFER_BYTES {
                return Err(ConfigError::Buffer(b));
            }
        }
        if self.max_connections == 0 || self.max_half_open == 0 || self.max_half_open_per_ip == 0 {
            return Err(ConfigError::Caps);
        }
        Ok(())
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent a FIN (or ours was acked and the peer's never came
    /// within `fin_linger_ms`).
    Finished,
    /// The peer sent a RESET.
    Reset,
    /// Retransmissions, the handshake or the idle timer ran out.
    TimedOut,
    /// We released it before it finished.
    Aborted,
}

/// A connection, as the application holds it. Stale handles (of released
/// connections) are recognised by their generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnHandle {
    index: u32,
    generation: u32,
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A peer opened a connection (accepted; release it to refuse).
    Incoming,
    /// The handshake completed (for outgoing and incoming connections).
    Connected,
    /// Bytes (or the end of the stream) can be read.
    Readable,
    /// The send buffer has room again.
    Writable,
    /// The connection is over; read what is buffered, then release it.
    Closed(CloseReason),
}

/// Why a datagram changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not a uTP packet.
    Malformed,
    /// No connection with this address and id.
    UnknownConnection,
    /// A SYN while `max_connections` are open.
    TableFull,
    /// A SYN while `max_half_open` connections are half-open, or
    /// `max_half_open_per_ip` from the sender's IP.
    HalfOpenFull,
    /// A SYN while incoming connections are refused.
    NotAccepting,
    /// The connection dropped it.
    Dropped(Dropped),
}

/// An application call on a connection that cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The handle names a released connection.
    #[error("uTP connection handle is stale")]
    StaleHandle,
    /// The connection is closed (or closing: no more writes).
    #[error("uTP connection is closed")]
    Closed,
}

/// A connection could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// `max_connections` are open.
    #[error("uTP connection table is full")]
    TableFull,
    /// No free connection id toward that address after a few tries.
    #[error("no free uTP connection id toward the peer")]
    NoConnectionId,
}

/// The result of [`Endpoint::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were read.
    Data(usize),
    /// Nothing buffered yet.
    WouldBlock,
    /// The peer finished its stream and every byte was read.
    Finished,
}

/// A datagram [`Endpoint::poll_transmit`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where it goes.
    pub addr: SocketAddr,
    /// Its length at the front of the caller's buffer.
    pub len: usize,
}

struct Slot {
    conn: Connection,
    generation: u32,
    queued_tx: bool,
    queued_event: bool,
    mapped: bool,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams handed to [`Endpoint::handle_datagram`].
    pub datagrams_in: u64,
    /// Datagrams written by [`Endpoint::poll_transmit`].
    pub datagrams_out: u64,
    /// Datagrams dropped (every [`Ignored`] reason).
    pub ignored: u64,
    /// SYNs refused by a cap.
    pub syns_refused: u64,
}

/// The multiplexer: every uTP connection of one UDP socket.
pub struct Endpoint {
    config: UtpConfig,
    epoch: Instant,
    rng: StdRng,
    slots: Slab<Slot>,
    routes: HashMap<(SocketAddr, u16), usize>,
    next_generation: u32,
    half_open: usize,
    /// Half-open connections per peer IP (entries only while non-zero, so
    /// at most `max_half_open` of them).
    half_open_by_ip: HashMap<IpAddr, usize>,
    tx_queue: VecDeque<usize>,
    event_queue: VecDeque<usize>,
    incoming: VecDeque<usize>,
    resets: VecDeque<(SocketAddr, Header)>,
    next_deadline: Option<Instant>,
    stats: EndpointStats,
}

impl Endpoint {
    /// An endpoint; `seed` drives connection ids and initial sequence numbers
    /// (the driver seeds from the OS, tests from a fixed number), `now` is
    /// the zero of the microsecond timestamps.
    pub fn new(config: UtpConfig, seed: u64, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            epoch: now,
            rng: StdRng::seed_from_u64(seed),
            slots: Slab::new(),
            routes: HashMap::new(),
            next_generation: 0,
            half_open: 0,
            half_open_by_ip: HashMap::new(),
            tx_queue: VecDeque::new(),
            event_queue: VecDeque::new(),
            incoming: VecDeque::new(),
            resets: VecDeque::new(),
            next_deadline: None,
            stats: EndpointStats::default(),
        })
    }

    fn forget_half_open(table: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
        if let Some(count) = table.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                table.remove(&ip);
            }
        }
    }

    fn now_us(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    /// Connections held (including closed ones not yet released).
    pub fn connection_count(&self) -> usize {
        self.slots.len()
    }

    /// Half-open incoming connections.
    pub fn half_open_count(&self) -> usize {
        self.half_open
    }

    /// Endpoint counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    fn handle(&self, index: usize) -> ConnHandle {
        ConnHandle { index: index as u32, generation: self.slots[index].generation }
    }

    fn slot_index(&self, h: ConnHandle) -> Result<usize, StreamError> {
        match self.slots.get(h.index as usize) {
            Some(s) if s.generation == h.generation => Ok(h.index as usize),
            _ => Err(StreamError::StaleHandle),
        }
    }

    fn insert(&mut self, conn: Connection) -> usize {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = (conn.addr, conn.recv_id);
        let half_open = conn.is_half_open();
        let ip = conn.addr.ip();
        let index = self.slots.insert(Slot {
            conn,
            generation,
            queued_tx: false,
            queued_event: false,
            mapped: true,
        });
        self.routes.insert(key, index);
        if half_open {
            self.half_open += 1;
            *self.half_open_by_ip.entry(ip).or_insert(0) += 1;
        }
        index
    }

    /// Bookkeeping after anything touched a connection: queues, the
    /// half-open count, the routing table, the earliest deadline.
    fn touched(&mut self, index: usize, was_half_open: bool) {
        self.touched_with(index, was_half_open, true);
    }

    /// [`Self::touched`]; `may_transmit` false: do not queue it to transmit
    /// (it just had its turn and produced nothing: window or Nagle wait for
    /// an ack or a timer, which queue it again).
    fn touched_with(&mut self, index: usize, was_half_open: bool, may_transmit: bool) {
        let slot = &mut self.slots[index];
        let is_half_open = slot.conn.is_half_open();
        if was_half_open && !is_half_open {
            let ip = slot.conn.addr.ip();
            self.half_open -= 1;
            Self::forget_half_open(&mut self.half_open_by_ip, ip);
        }
        if may_transmit && slot.conn.wants_transmit() && !slot.queued_tx {
            slot.queued_tx = true;
            self.tx_queue.push_back(index);
        }
        if slot.conn.events != 0 && !slot.queued_event {
            slot.queued_event = true;
            self.event_queue.push_back(index);
        }
        if slot.mapped && slot.conn.is_drained() {
            slot.mapped = false;
            self.routes.remove(&(slot.conn.addr, slot.conn.recv_id));
        }
        if let Some(d) = slot.conn.deadline() {
            if self.next_deadline.is_none_or(|n| d < n) {
                self.next_deadline = Some(d);
            }
        }
    }

    /// Opens a connection to `addr`; the SYN goes out with the next
    /// [`Self::poll_transmit`].
    pub fn connect(&mut self, now: Instant, addr: SocketAddr) -> Result<ConnHandle, ConnectError> {
        if self.slots.len() >= self.config.max_connections {
            return Err(ConnectError::TableFull);
        }
        for _ in 0..CONNECTION_ID_TRIES {
            let id: u16 = self.rng.gen();
            if self.routes.contains_key(&(addr, id))
                || self.routes.contains_key(&(addr, id.wrapping_add(1)))
            {
                continue;
            }
            let seq: u16 = self.rng.gen();
            let conn = Connection::connect(&self.config, now, addr, id, seq);
            let index = self.insert(conn);
            self.touched(index, false);
            return Ok(self.handle(index));
        }
        Err(ConnectError::NoConnectionId)
    }

    /// Feeds one received datagram.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Ignored> {
        self.stats.datagrams_in += 1;
        let result = self.route(now, from, datagram);
        if result.is_err() {
            self.stats.ignored += 1;
        }
        result
    }

    fn route(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> Result<(), Ignored> {
        let pkt = packet::decode(datagram).map_err(|_| Ignored::Malformed)?;
        let id = pkt.header.connection_id;
        let now_us = self.now_us(now);
        if pkt.header.kind == PacketType::Syn {
            // A SYN names the initiator's id; ours for it is id + 1.
            if let Some(&index) = self.routes.get(&(from, id.wrapping_add(1))) {
                let was = self.slots[index].conn.is_half_open();
                let r = self.slots[index].conn.handle_packet(now, now_us, &pkt);
                self.touched(index, was);
                return r.map_err(Ignored::Dropped);
            }
            if !self.config.accept_incoming {
                self.stats.syns_refused += 1;
                return Err(Ignored::NotAccepting);
            }
            if self.slots.len() >= self.config.max_connections {
                self.stats.syns_refused += 1;
                return Err(Ignored::TableFull);
            }
            let from_ip = self.half_open_by_ip.get(&from.ip()).copied().unwrap_or(0);
            if self.half_open >= self.config.max_half_open
                || from_ip >= self.config.max_half_open_per_ip
            {
                self.stats.syns_refused += 1;
                return Err(Ignored::HalfOpenFull);
            }
            let seq: u16 = self.rng.gen();
            let conn = Connection::accept(&self.config, now, from, &pkt.header, seq);
            let index = self.insert(conn);
            self.incoming.push_back(index);
            self.touched(index, true);
            return Ok(());
        }
        let &index = self.routes.get(&(from, id)).ok_or(Ignored::UnknownConnection)?;
        let was = self.slots[index].conn.is_half_open();
        let r = self.slots[index].conn.handle_packet(now, now_us, &pkt);
        self.touched(index, was);
        r.map_err(Ignored::Dropped)
    }

    /// When [`Self::handle_timeout`] next has work (`None`: no connection).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_deadline
    }

    /// Runs every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_deadline.is_none_or(|d| d > now) {
            return;
        }
        self.next_deadline = None;
        // Slab indices run below its capacity; no list is built (no allocation).
        for index in 0..self.slots.capacity() {
            if !self.slots.contains(index) {
                continue;
            }
            let was = self.slots[index].conn.is_half_open();
            self.slots[index].conn.handle_timeout(now);
            self.touched(index, was);
        }
    }

    /// Writes the next datagram to send into `buf` (at least
    /// [`MAX_DATAGRAM_BYTES`] long). Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        assert!(buf.len() >= MAX_DATAGRAM_BYTES, "poll_transmit buffer too small");
        let now_us = self.now_us(now);
        if let Some((addr, header)) = self.resets.pop_front() {
            let header = Header { timestamp_us: now_us, ..header };
            let len = packet::encode_header(&header, None, buf);
            self.stats.datagrams_out += 1;
            return Some(Transmit { addr, len });
        }
        while let Some(index) = self.tx_queue.pop_front() {
            let Some(slot) = self.slots.get_mut(index) else { continue };
            slot.queued_tx = false;
            let was = slot.conn.is_half_open();
            let sent = slot.conn.poll_transmit(now, now_us, buf);
            let addr = slot.conn.addr;
            // Round robin: a connection with more to send goes to the back.
            self.touched_with(index, was, sent.is_some());
            if let Some(len) = sent {
                self.stats.datagrams_out += 1;
                return Some(Transmit { addr, len });
            }
        }
        None
    }

    /// The next event of any connection.
    pub fn poll_event(&mut self) -> Option<(ConnHandle, Event)> {
        if let Some(index) = self.incoming.pop_front() {
            if self.slots.contains(index) {
                return Some((self.handle(index), Event::Incoming));
            }
        }
        while let Some(&index) = self.event_queue.front() {
            let Some(slot) = self.slots.get_mut(index) else {
                self.event_queue.pop_front();
                continue;
            };
            let flags = slot.conn.events;
            let (flag, event) = if flags & EVENT_CONNECTED != 0 {
                (EVENT_CONNECTED, Event::Connected)
            } else if flags & EVENT_READABLE != 0 {
                (EVENT_READABLE, Event::Readable)
            } else if flags & EVENT_WRITABLE != 0 {
                (EVENT_WRITABLE, Event::Writable)
            } else if flags & EVENT_CLOSED != 0 {
                let reason = match slot.conn.state {
                    State::Closed(r) => r,
                    _ => CloseReason::Aborted,
                };
                (EVENT_CLOSED, Event::Closed(reason))
            } else {
                slot.queued_event = false;
                self.event_queue.pop_front();
                continue;
            };
            slot.conn.events &= !flag;
            if slot.conn.events == 0 {
                slot.queued_event = false;
                self.event_queue.pop_front();
            }
            return Some((self.handle(index), event));
        }
        None
    }

    /// Queues bytes to send; returns how many fit in the send buffer (the
    /// rest: wait for [`Event::Writable`]).
    pub fn write(&mut self, h: ConnHandle, data: &[u8]) -> Result<usize, StreamError> {
        let index = self.slot_index(h)?;
        let conn = &mut self.slots[index].conn;
        if conn.is_closed() {
            return Err(StreamError::Closed);
        }
        let n = conn.write(data);
        let was = conn.is_half_open();
        self.touched(index, was);
        Ok(n)
    }

    /// Reads received bytes in order.
    pub fn read(&mut self, h: ConnHandle, buf: &mut [u8]) -> Result<ReadOutcome, StreamError> {
        let index = self.slot_index(h)?;
        let conn = &mut self.slots[index].conn;
        let n = conn.read(buf);
        let at_eof = conn.at_eof();
        let was = conn.is_half_open();
        self.touched(index, was);
        Ok(if n > 0 {
            ReadOutcome::Data(n)
        } else if at_eof {
            ReadOutcome::Finished
        } else {
            ReadOutcome::WouldBlock
        })
    }

    /// Bytes ready to read.
    pub fn readable_bytes(&self, h: ConnHandle) -> Result<usize, StreamError> {
        Ok(self.slots[self.slot_index(h)?].conn.readable_bytes())
    }

    /// Bytes written and not yet acknowledged.
    pub fn send_buffered(&self, h: ConnHandle) -> Result<usize, StreamError> {
        Ok(self.slots[self.slot_index(h)?].conn.send_buffered())
    }

    /// The connection's state.
    pub fn state(&self, h: ConnHandle) -> Result<State, StreamError> {
        Ok(self.slots[self.slot_index(h)?].conn.state)
    }

    /// The connection's statistics.
    pub fn conn_stats(&mut self, h: ConnHandle) -> Result<ConnStats, StreamError> {
        let index = self.slot_index(h)?;
        Ok(self.slots[index].conn.refresh_stats())
    }

    /// The peer's address.
    pub fn peer_addr(&self, h: ConnHandle) -> Result<SocketAddr, StreamError> {
        Ok(self.slots[self.slot_index(h)?].conn.addr)
    }

    /// Ends our side of the stream: a FIN follows the buffered bytes.
    pub fn close(&mut self, h: ConnHandle) -> Result<(), StreamError> {
        let index = self.slot_index(h)?;
        let was = self.slots[index].conn.is_half_open();
        self.slots[index].conn.close();
        self.touched(index, was);
        Ok(())
    }

    /// Forgets the connection; one still open is aborted with a RESET.
    pub fn release(&mut self, h: ConnHandle) -> Result<(), StreamError> {
        let index = self.slot_index(h)?;
        let mut slot = self.slots.remove(index);
        if slot.conn.is_half_open() {
            self.half_open -= 1;
            Self::forget_half_open(&mut self.half_open_by_ip, slot.conn.addr.ip());
        }
        if !slot.conn.is_closed() {
            if self.resets.len() < MAX_PENDING_RESETS {
                let header = slot.conn.reset_header(0);
                self.resets.push_back((slot.conn.addr, header));
            }
            slot.conn.abort(self.epoch);
        }
        if slot.mapped {
            self.routes.remove(&(slot.conn.addr, slot.conn.recv_id));
        }
        // The slot will be reused: no queue may name it any more.
        if slot.queued_tx {
            self.tx_queue.retain(|&i| i != index);
        }
        if slot.queued_event {
            self.event_queue.retain(|&i| i != index);
        }
        self.incoming.retain(|&i| i != index);
        Ok(())
    }
}

/// When the engine speaks uTP (`--utp`, daemon key `utp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UtpPolicy {
    /// No uTP: no UDP socket for it, TCP only.
    Off,
    /// Incoming uTP accepted; outgoing dials TCP first and falls back to uTP
    /// when the TCP connect fails (the default: servers usually reach peers
    /// over TCP, and TCP is cheaper per byte).
    #[default]
    PreferTcp,
    /// Incoming uTP accepted; outgoing dials uTP first and falls back to TCP
    /// when the uTP connect fails (libtorrent's order).
    On,
    /// Outgoing connections over uTP only (tests and benchmarks); incoming
    /// TCP is still accepted.
    Only,
}

impl UtpPolicy {
    /// A UDP socket is opened for uTP.
    pub fn enabled(self) -> bool {
        self != UtpPolicy::Off
    }

    /// The transports an outgoing connection tries, in order (`true` = uTP).
    pub fn dial_order(self) -> &'static [bool] {
        match self {
            UtpPolicy::Off => &[false],
            UtpPolicy::PreferTcp => &[false, true],
            UtpPolicy::On => &[true, false],
            UtpPolicy::Only => &[true],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UtpPolicy::Off => "off",
            UtpPolicy::PreferTcp => "prefer-tcp",
            UtpPolicy::On => "on",
            UtpPolicy::Only => "only",
        }
    }
}

impl std::str::FromStr for UtpPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(UtpPolicy::Off),
            "prefer-tcp" => Ok(UtpPolicy::PreferTcp),
            "on" => Ok(UtpPolicy::On),
            "only" => Ok(UtpPolicy::Only),
            _ => Err(format!("bad uTP policy {s:?}: expected on, off, prefer-tcp or only")),
        }
    }
}

impl std::fmt::Display for UtpPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod policy_tests {
    use super::UtpPolicy;

    #[test]
    fn policy_parses_and_orders_dials() {
        for p in [UtpPolicy::Off, UtpPolicy::PreferTcp, UtpPolicy::On, UtpPolicy::Only] {
            assert_eq!(p.as_str().parse::<UtpPolicy>().unwrap(), p);
        }
        assert!("maybe".parse::<UtpPolicy>().is_err());
        assert_eq!(UtpPolicy::default(), UtpPolicy::PreferTcp);
        assert_eq!(UtpPolicy::PreferTcp.dial_order(), &[false, true]);
        assert_eq!(UtpPolicy::Only.dial_order(), &[true]);
        assert!(!UtpPolicy::Off.enabled());
    }
}
