//! One uTP connection: the sequence-number state machine of both directions.
//!
//! Layer: pure core, owned by [`super::Endpoint`] (which routes datagrams to
//! it and drains its packets). Inputs: decoded packets, `now`, the
//! application's writes, reads and close. Outputs: packets written into the
//! caller's buffer by [`Connection::poll_transmit`], event flags, a deadline.
//!
//! Send side: written bytes wait in `send_buf` (one ring, bounded by
//! `send_buffer_bytes`); a packet is a range of that stream, so sending,
//! resending and acknowledging never allocate. `out` holds every packet sent
//! and not yet acknowledged, oldest first (`out[0].seq` = first unacked).
//! Receive side: in-order payload goes to `recv_buf`; packets ahead of a gap
//! wait in `reorder` (slot `i` holds `ack_nr + 1 + i`), their buffers reused
//! from a small pool. Both count against the advertised window.
//!
//! Invariants:
//! * `out.len() <= MAX_PACKETS_IN_FLIGHT`, and `out[i].seq == out[0].seq + i`;
//! * `in_flight_bytes` is the sum of `len` over packets with `in_flight`;
//! * `recv_buf.len() + reorder_bytes <= recv_window_bytes` (a packet that does
//!   not fit is dropped, not buffered);
//! * `reorder.len() <= MAX_REORDER_PACKETS`, and `reorder[0]` is empty (it
//!   would have been delivered);
//! * a packet acknowledged is never sent again; the stream's bytes leave
//!   `send_buf` only when every packet before and including them is acked.

use super::congestion::{AckSample, CongestionController, Ledbat};
use super::packet::{self, Header, Packet, PacketType, MAX_SACK_BYTES};
use super::{CloseReason, UtpConfig, MAX_PACKETS_IN_FLIGHT, MAX_REORDER_PACKETS};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Duplicate acknowledgements (or packets selectively acked past a hole)
/// that mark a packet lost (BEP 29: 3).
pub const DUPLICATE_ACKS_BEFORE_RESEND: u32 = 3;

/// Bytes a buffered out-of-order packet costs beyond its payload (its slot
/// and buffer header): counted against the window so a flood of one-byte
/// packets cannot hold more memory than the window promises.
pub const REORDER_OVERHEAD_BYTES: usize = 64;

/// Most payload buffers kept for reuse by the reorder buffer.
const REORDER_POOL_MAX: usize = 64;

/// The retransmission timeout before the first RTT sample (RFC 6298).
const INITIAL_RTO: Duration = Duration::from_millis(1000);

/// Event flags (one bit each, drained by the endpoint).
pub(crate) const EVENT_CONNECTED: u8 = 1;
pub(crate) const EVENT_READABLE: u8 = 2;
pub(crate) const EVENT_WRITABLE: u8 = 4;
pub(crate) const EVENT_CLOSED: u8 = 8;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// We sent a SYN and wait for its acknowledgement.
    SynSent,
    /// We acknowledged a SYN; nothing else from the initiator yet
    /// (half-open: counted against the endpoint's cap).
    SynRecv,
    /// Both directions open (either may have sent or received a FIN).
    Connected,
    /// Over: both FINs done, reset, timed out or aborted.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy)]
struct OutPacket {
    seq: u16,
    kind: PacketType,
    /// Stream offset of the payload (data packets).
    offset: u64,
    len: u32,
    sent_at: Option<Instant>,
    transmissions: u32,
    acked: bool,
    in_flight: bool,
    need_resend: bool,
    /// Marked lost by duplicate/selective acks once; not again until a
    /// timeout (else every further SACK would resend it).
    fast_resent: bool,
}

/// Connection statistics (for tests, logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Packets sent (including retransmissions and acks).
    pub packets_sent: u64,
    /// Data/FIN/SYN packets sent again.
    pub retransmissions: u64,
    /// Packets marked lost by duplicate or selective acks.
    pub fast_retransmits: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Packets received and accepted.
    pub packets_received: u64,
    /// Data packets received that we already had.
    pub duplicates_received: u64,
    /// Smoothed round-trip time.
    pub rtt_us: u64,
    /// The congestion window.
    pub window_bytes: u32,
}

/// Why a packet was dropped by a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// It acknowledges a sequence number we never sent.
    AckOutOfWindow,
    /// Its sequence number is beyond the reorder window.
    SeqOutOfWindow,
    /// Its payload does not fit the receive window.
    WindowFull,
    /// Not acceptable in the connection's state.
    WrongState,
}

pub(crate) struct Connection {
    pub(crate) state: State,
    pub(crate) addr: SocketAddr,
    pub(crate) recv_id: u16,
    pub(crate) send_id: u16,
    /// The seq of the SYN that opened it (acceptor: the peer's; initiator: ours).
    pub(crate) syn_seq: u16,
    created_at: Instant,
    payload_bytes: u32,
    recv_window_bytes: usize,
    send_buffer_bytes: usize,
    syn_timeouts_max: u32,
    timeouts_max: u32,
    min_rto: Duration,
    max_rto: Duration,
    half_open_timeout: Duration,
    idle_timeout: Duration,
    keepalive: Duration,
    fin_linger: Duration,

    // Send side.
    seq_nr: u16,
    send_buf: VecDeque<u8>,
    send_base: u64,
    packetized: u64,
    out: VecDeque<OutPacket>,
    resends_pending: usize,
    in_flight_bytes: u32,
    peer_wnd: u32,
    cc: Box<dyn CongestionController>,
    rtt_us: u64,
    rtt_var_us: u64,
    rto: Duration,
    rto_deadline: Option<Instant>,
    consecutive_timeouts: u32,
    duplicate_acks: u32,
    /// No second window cut for losses of packets sent before this seq.
    recovery_until: Option<u16>,
    zero_window_probe_at: Option<Instant>,
    probe_allowed: bool,
    write_blocked: bool,
    close_requested: bool,
    fin_sent: bool,
    fin_acked_at: Option<Instant>,
    time_wait_until: Option<Instant>,

    // Receive side.
    ack_nr: u16,
    recv_buf: VecDeque<u8>,
    reorder: VecDeque<Option<Vec<u8>>>,
    reorder_bytes: usize,
    pool: Vec<Vec<u8>>,
    eof_seq: Option<u16>,
    eof_reached: bool,
    reply_micro: u32,
    ack_pending: bool,
    advertised_wnd: u32,
    last_recv: Instant,
    last_send: Instant,

    pub(crate) events: u8,
    pub(crate) stats: ConnStats,
}

/// Copies `dst.len()` bytes starting at `start` out of a ring.
fn copy_from_ring(ring: &VecDeque<u8>, start: usize, dst: &mut [u8]) {
    let (a, b) = ring.as_slices();
    let mut done = 0;
    if start < a.len() {
        let n = (a.len() - start).min(dst.len());
        dst[..n].copy_from_slice(&a[start..start + n]);
        done = n;
    }
    if done < dst.len() {
        let from = start + done - a.len();
        let n = dst.len() - done;
        dst[done..].copy_from_slice(&b[from..from + n]);
    }
}

impl Connection {
    fn new(
        config: &UtpConfig,
        now: Instant,
        addr: SocketAddr,
        recv_id: u16,
        send_id: u16,
        seq_nr: u16,
        state: State,
    ) -> Self {
        let mut ledbat = config.ledbat;
        ledbat.max_window_bytes = ledbat.max_window_bytes.min(config.send_buffer_bytes as u32);
        ledbat.min_window_bytes = ledbat.min_window_bytes.max(config.payload_bytes as u32);
        Self {
            state,
            addr,
            recv_id,
            send_id,
            syn_seq: 0,
            created_at: now,
            payload_bytes: config.payload_bytes as u32,
            recv_window_bytes: config.recv_window_bytes,
            send_buffer_bytes: config.send_buffer_bytes,
            syn_timeouts_max: config.syn_timeouts_max,
            timeouts_max: config.timeouts_max,
            min_rto: Duration::from_millis(config.min_rto_ms),
            max_rto: Duration::from_millis(config.max_rto_ms),
            half_open_timeout: Duration::from_millis(config.half_open_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            keepalive: Duration::from_millis(config.keepalive_ms),
            fin_linger: Duration::from_millis(config.fin_linger_ms),
            seq_nr,
            send_buf: VecDeque::new(),
            send_base: 0,
            packetized: 0,
            out: VecDeque::new(),
            resends_pending: 0,
            in_flight_bytes: 0,
            peer_wnd: config.payload_bytes as u32,
            cc: Box::new(Ledbat::new(ledbat)),
            rtt_us: 0,
            rtt_var_us: 0,
            rto: INITIAL_RTO.max(Duration::from_millis(config.min_rto_ms)),
            rto_deadline: None,
            consecutive_timeouts: 0,
            duplicate_acks: 0,
            recovery_until: None,
            zero_window_probe_at: None,
            probe_allowed: false,
            write_blocked: false,
            close_requested: false,
            fin_sent: false,
            fin_acked_at: None,
            time_wait_until: None,
            ack_nr: 0,
            recv_buf: VecDeque::new(),
            reorder: VecDeque::new(),
            reorder_bytes: 0,
            pool: Vec::new(),
            eof_seq: None,
            eof_reached: false,
            reply_micro: 0,
            ack_pending: false,
            advertised_wnd: config.recv_window_bytes as u32,
            last_recv: now,
            last_send: now,
            events: 0,
            stats: ConnStats::default(),
        }
    }

    /// An outgoing connection: the SYN is queued. Our receive id is `id`, the
    /// peer's `id + 1`.
    pub(crate) fn connect(
        config: &UtpConfig,
        now: Instant,
        addr: SocketAddr,
        id: u16,
        seq: u16,
    ) -> Self {
        let mut c = Self::new(config, now, addr, id, id.wrapping_add(1), seq, State::SynSent);
        c.syn_seq = seq;
        c.out.push_back(OutPacket {
            seq,
            kind: PacketType::Syn,
            offset: 0,
            len: 0,
            sent_at: None,
            transmissions: 0,
            acked: false,
            in_flight: false,
            need_resend: true,
            fast_resent: false,
        });
        c.resends_pending = 1;
        c.seq_nr = seq.wrapping_add(1);
        c
    }

    /// An incoming connection from a SYN: its acknowledgement is queued.
    pub(crate) fn accept(
        config: &UtpConfig,
        now: Instant,
        addr: SocketAddr,
        syn: &Header,
        seq: u16,
    ) -> Self {
        let id = syn.connection_id;
        let mut c = Self::new(config, now, addr, id.wrapping_add(1), id, seq, State::SynRecv);
        c.syn_seq = syn.seq_nr;
        c.ack_nr = syn.seq_nr;
        c.peer_wnd = syn.wnd_size;
        c.ack_pending = true;
        c
    }

    pub(crate) fn is_half_open(&self) -> bool {
        self.state == State::SynRecv
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// Nothing left to send: a closed connection in this state can leave the
    /// endpoint's routing table.
    pub(crate) fn is_drained(&self) -> bool {
        self.is_closed() && !self.ack_pending && self.time_wait_until.is_none()
    }

    fn close_with(&mut self, now: Instant, reason: CloseReason) {
        if !self.is_closed() {
            self.state = State::Closed(reason);
            if reason == CloseReason::Finished {
                // Stay reachable a while to acknowledge a resent FIN (our
                // last ack may be lost), like TCP's TIME-WAIT.
                self.time_wait_until = Some(now + self.fin_linger);
            }
            self.events |= EVENT_CLOSED;
            self.rto_deadline = None;
            if reason != CloseReason::Finished {
                self.ack_pending = false;
            }
        }
    }

    fn our_window(&self) -> u32 {
        self.recv_window_bytes.saturating_sub(self.recv_buf.len() + self.reorder_bytes) as u32
    }

    fn set_rto_deadline(&mut self, now: Instant) {
        self.rto_deadline = Some(now + self.rto);
    }

    // ---- application side ----

    /// Appends up to the send buffer's free space; returns the bytes taken.
    pub(crate) fn write(&mut self, data: &[u8]) -> usize {
        if self.close_requested || self.is_closed() {
            return 0;
        }
        let free = self.send_buffer_bytes.saturating_sub(self.send_buf.len());
        let n = free.min(data.len());
        self.send_buf.extend(&data[..n]);
        if n < data.len() {
            self.write_blocked = true;
        }
        n
    }

    /// Bytes written and not yet acknowledged.
    pub(crate) fn send_buffered(&self) -> usize {
        self.send_buf.len()
    }

    /// Moves in-order bytes into `buf`; returns how many (0: none buffered).
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.recv_buf.len());
        copy_from_ring(&self.recv_buf, 0, &mut buf[..n]);
        self.recv_buf.drain(..n);
        // Reopen a window we had (nearly) closed: tell the peer at once.
        if n > 0
            && self.advertised_wnd < self.payload_bytes
            && self.our_window() >= self.payload_bytes
        {
            self.ack_pending = true;
        }
        n
    }

    pub(crate) fn readable_bytes(&self) -> usize {
        self.recv_buf.len()
    }

    /// The peer's FIN arrived and every byte before it was read.
    pub(crate) fn at_eof(&self) -> bool {
        self.eof_reached && self.recv_buf.is_empty()
    }

    /// Graceful close: a FIN goes out after the buffered bytes.
    pub(crate) fn close(&mut self) {
        if !self.is_closed() {
            self.close_requested = true;
        }
    }

    pub(crate) fn abort(&mut self, now: Instant) {
        self.close_with(now, CloseReason::Aborted);
    }

    // ---- packets in ----

    /// Handles a packet routed to this connection.
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        now_us: u32,
        pkt: &Packet<'_>,
    ) -> Result<(), Dropped> {
        let h = &pkt.header;
        if self.is_closed() {
            if self.time_wait_until.is_some() && h.kind == PacketType::Fin {
                self.ack_pending = true;
                return Ok(());
            }
            return Err(Dropped::WrongState);
        }
        match h.kind {
            PacketType::Reset => {
                self.close_with(now, CloseReason::Reset);
                return Ok(());
            }
            PacketType::Syn => {
                // A SYN again (our acknowledgement was lost): acknowledge again.
                if self.state != State::SynSent && h.seq_nr == self.syn_seq {
                    self.ack_pending = true;
                    return Ok(());
                }
                return Err(Dropped::WrongState);
            }
            _ => {}
        }
        if self.state == State::SynSent {
            if h.kind != PacketType::State || h.ack_nr != self.syn_seq {
                return Err(Dropped::WrongState);
            }
            // A STATE carries the seq of the peer's next data packet.
            self.ack_nr = h.seq_nr.wrapping_sub(1);
            self.state = State::Connected;
            self.events |= EVENT_CONNECTED | EVENT_WRITABLE;
        }
        // The acknowledgement must name a packet we sent.
        let first_unacked = self.seq_nr.wrapping_sub(self.out.len() as u16);
        let newly_acked = h.ack_nr.wrapping_sub(first_unacked.wrapping_sub(1)) as usize;
        if newly_acked > self.out.len() {
            return Err(Dropped::AckOutOfWindow);
        }
        // Where the packet's seq falls in our receive window.
        let dist = h.seq_nr.wrapping_sub(self.ack_nr.wrapping_add(1));
        let carries_seq = matches!(h.kind, PacketType::Data | PacketType::Fin);
        let old_duplicate = carries_seq && dist >= 0x8000;
        if carries_seq && !old_duplicate && dist as usize >= MAX_REORDER_PACKETS {
            return Err(Dropped::SeqOutOfWindow);
        }
        if self.state == State::SynRecv {
            self.state = State::Connected;
            self.events |= EVENT_CONNECTED | EVENT_WRITABLE;
        }
        self.stats.packets_received += 1;
        self.last_recv = now;
        self.reply_micro = now_us.wrapping_sub(h.timestamp_us);
        self.peer_wnd = h.wnd_size;
        if self.peer_wnd >= self.payload_bytes {
            self.zero_window_probe_at = None;
        }
        self.process_ack(now, h, pkt.sack, newly_acked, carries_seq || !pkt.payload.is_empty());

        match h.kind {
            PacketType::Data if old_duplicate => {
                self.stats.duplicates_received += 1;
                self.ack_pending = true;
                Ok(())
            }
            PacketType::Data => self.receive_data(now, dist as usize, pkt.payload),
            PacketType::Fin => {
                self.ack_pending = true;
                if old_duplicate {
                    return Ok(());
                }
                match self.eof_seq {
                    None => self.eof_seq = Some(h.seq_nr),
                    Some(s) if s != h.seq_nr => return Err(Dropped::WrongState),
                    Some(_) => {}
                }
                self.advance_eof(now);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn receive_data(&mut self, now: Instant, dist: usize, payload: &[u8]) -> Result<(), Dropped> {
        self.ack_pending = true;
        if let Some(eof) = self.eof_seq {
            // Nothing past the FIN exists.
            if eof.wrapping_sub(self.ack_nr.wrapping_add(1)) as usize <= dist {
                return Err(Dropped::SeqOutOfWindow);
            }
        }
        if dist == 0 {
            if self.recv_buf.len() + self.reorder_bytes + payload.len() > self.recv_window_bytes {
                return Err(Dropped::WindowFull);
            }
            self.recv_buf.extend(payload);
            self.ack_nr = self.ack_nr.wrapping_add(1);
            if !self.reorder.is_empty() {
                self.reorder.pop_front();
            }
            // Deliver what the gap held back.
            while let Some(Some(_)) = self.reorder.front() {
                let buf = self.reorder.pop_front().flatten().unwrap_or_default();
                self.reorder_bytes -= buf.len() + REORDER_OVERHEAD_BYTES;
                self.recv_buf.extend(&buf[..]);
                self.ack_nr = self.ack_nr.wrapping_add(1);
                if self.pool.len() < REORDER_POOL_MAX {
                    let mut buf = buf;
                    buf.clear();
                    self.pool.push(buf);
                }
            }
            if self.reorder.iter().all(Option::is_none) {
                self.reorder.clear();
            }
            self.events |= EVENT_READABLE;
            self.advance_eof(now);
            return Ok(());
        }
        if self.reorder.get(dist).is_some_and(Option::is_some) {
            self.stats.duplicates_received += 1;
            return Ok(());
        }
        let cost = payload.len() + REORDER_OVERHEAD_BYTES;
        if self.recv_buf.len() + self.reorder_bytes + cost > self.recv_window_bytes {
            return Err(Dropped::WindowFull);
        }
        if self.reorder.len() <= dist {
            self.reorder.resize(dist + 1, None);
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.extend_from_slice(payload);
        self.reorder[dist] = Some(buf);
        self.reorder_bytes += cost;
        Ok(())
    }

    /// The FIN is next in order: the peer's stream is complete.
    fn advance_eof(&mut self, now: Instant) {
        if let Some(eof) = self.eof_seq {
            if !self.eof_reached && eof == self.ack_nr.wrapping_add(1) {
                self.ack_nr = eof;
                self.eof_reached = true;
                self.reorder.clear();
                self.events |= EVENT_READABLE;
            }
        }
        if self.eof_reached && self.fin_acked_at.is_some() {
            self.close_with(now, CloseReason::Finished);
        }
    }

    /// Marks a packet for resending; `fast`: by acks (at most once per
    /// packet), else by a timeout.
    fn mark_lost(&mut self, index: usize, fast: bool) -> bool {
        let p = &mut self.out[index];
        if p.acked || p.need_resend || (fast && p.fast_resent) {
            return false;
        }
        p.fast_resent = fast;
        p.need_resend = true;
        if p.in_flight {
            p.in_flight = false;
            self.in_flight_bytes -= p.len;
        }
        self.resends_pending += 1;
        true
    }

    fn process_ack(
        &mut self,
        now: Instant,
        h: &Header,
        sack: Option<&[u8]>,
        newly_acked: usize,
        carries_data: bool,
    ) {
        let window_limited =
            self.in_flight_bytes + self.payload_bytes > self.window_bytes().saturating_sub(1);
        let mut bytes_acked = 0u32;
        let mut rtt_sample: Option<Duration> = None;
        let mut ack_one = |this: &mut Self, i: usize| {
            let p = &mut this.out[i];
            if p.acked {
                return;
            }
            p.acked = true;
            if p.in_flight {
                p.in_flight = false;
                this.in_flight_bytes -= p.len;
            }
            if p.need_resend {
                p.need_resend = false;
                this.resends_pending -= 1;
            }
            bytes_acked += p.len;
            if p.transmissions == 1 {
                if let Some(sent) = p.sent_at {
                    // The newest packet acked gives the sample: older ones
                    // in a cumulative ack after a hole was filled waited
                    // for the hole, not for the path.
                    let sample = now.saturating_duration_since(sent);
                    rtt_sample = Some(rtt_sample.map_or(sample, |r: Duration| r.min(sample)));
                }
            }
            if p.kind == PacketType::Fin {
                this.fin_acked_at = Some(now);
            }
        };
        for i in 0..newly_acked {
            ack_one(self, i);
        }
        let mut highest_sacked = None;
        if let Some(bits) = sack {
            let first_unacked = self.seq_nr.wrapping_sub(self.out.len() as u16);
            for (byte_index, byte) in bits.iter().enumerate().take(MAX_SACK_BYTES) {
                for bit in 0..8 {
                    if byte & (1 << bit) == 0 {
                        continue;
                    }
                    let seq = h.ack_nr.wrapping_add(2 + (byte_index * 8 + bit) as u16);
                    let index = seq.wrapping_sub(first_unacked) as usize;
                    if index < self.out.len() {
                        ack_one(self, index);
                        highest_sacked = Some(index);
                    }
                }
            }
        }
        if let Some(sample) = rtt_sample {
            self.update_rtt(sample);
        }
        if newly_acked > 0 || bytes_acked > 0 {
            self.consecutive_timeouts = 0;
        }
        if newly_acked > 0 {
            self.duplicate_acks = 0;
        }

        // Losses: a hole with DUPLICATE_ACKS_BEFORE_RESEND packets acked after
        // it, or the same ack three times over with data outstanding.
        let mut lost_seq = None;
        if let Some(highest) = highest_sacked {
            let mut acked_after = 0;
            for i in (0..self.out.len().min(highest + 1)).rev() {
                if self.out[i].acked {
                    acked_after += 1;
                } else if acked_after >= DUPLICATE_ACKS_BEFORE_RESEND && self.mark_lost(i, true) {
                    self.stats.fast_retransmits += 1;
                    lost_seq = Some(self.out[i].seq);
                }
            }
        } else if newly_acked == 0 && !carries_data && !self.out.is_empty() {
            self.duplicate_acks += 1;
            if self.duplicate_acks == DUPLICATE_ACKS_BEFORE_RESEND && self.mark_lost(0, true) {
                self.stats.fast_retransmits += 1;
                lost_seq = Some(self.out[0].seq);
            }
        }
        // Drop the acknowledged front and its bytes.
        while let Some(p) = self.out.front() {
            if !p.acked {
                break;
            }
            if p.kind == PacketType::Data {
                self.send_buf.drain(..p.len as usize);
                self.send_base += p.len as u64;
            }
            self.out.pop_front();
        }
        if let Some(seq) = lost_seq {
            let in_recovery = self.recovery_until.is_some_and(|end| packet::seq_less(seq, end));
            if !in_recovery {
                self.cc.on_loss(now);
                self.recovery_until = Some(self.seq_nr);
            }
        }

        if bytes_acked > 0 || newly_acked > 0 {
            let delay = (h.timestamp_difference_us != 0).then_some(h.timestamp_difference_us);
            self.cc.on_ack(now, AckSample { bytes_acked, delay_sample_us: delay, window_limited });
            if self.out.is_empty() {
                self.rto_deadline = None;
            } else {
                self.set_rto_deadline(now);
            }
            if self.write_blocked && self.send_buf.len() < self.send_buffer_bytes {
                self.write_blocked = false;
                self.events |= EVENT_WRITABLE;
            }
        }
        if self.fin_acked_at.is_some() && self.eof_reached {
            self.close_with(now, CloseReason::Finished);
        }
    }

    fn update_rtt(&mut self, sample: Duration) {
        let sample_us = sample.as_micros().min(u64::MAX as u128) as u64;
        if self.rtt_us == 0 {
            self.rtt_us = sample_us.max(1);
            self.rtt_var_us = sample_us / 2;
        } else {
            let delta = self.rtt_us.abs_diff(sample_us);
            self.rtt_var_us = (3 * self.rtt_var_us + delta) / 4;
            self.rtt_us = (7 * self.rtt_us + sample_us) / 8;
        }
        let rto = Duration::from_micros(self.rtt_us + 4 * self.rtt_var_us);
        self.rto = rto.clamp(self.min_rto, self.max_rto);
        self.stats.rtt_us = self.rtt_us;
    }

    fn window_bytes(&self) -> u32 {
        self.cc.window_bytes()
    }

    /// May `len` more bytes go out now?
    fn window_allows(&self, len: u32) -> bool {
        let window = self.window_bytes().min(self.peer_wnd);
        if self.in_flight_bytes + len <= window {
            return true;
        }
        // One packet may always be in flight when the peer has room (our
        // window is never smaller than a packet) or a zero-window probe is due.
        self.in_flight_bytes == 0 && (self.peer_wnd >= len || self.probe_allowed)
    }

    // ---- timers ----

    /// The earliest time [`Self::handle_timeout`] has work.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.is_closed() {
            return self.time_wait_until;
        }
        let mut d = self.last_recv + self.idle_timeout;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                d = d.min(t);
            }
        };
        consider(self.rto_deadline);
        consider(self.zero_window_probe_at);
        if self.state == State::SynRecv {
            consider(Some(self.created_at + self.half_open_timeout));
        }
        if self.state == State::Connected {
            consider(Some(self.last_send + self.keepalive));
        }
        consider(self.fin_acked_at.map(|t| t.max(self.last_recv) + self.fin_linger));
        Some(d)
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            if self.time_wait_until.is_some_and(|t| now >= t) {
                self.time_wait_until = None;
            }
            return;
        }
        if now >= self.last_recv + self.idle_timeout {
            self.close_with(now, CloseReason::TimedOut);
            return;
        }
        if self.state == State::SynRecv && now >= self.created_at + self.half_open_timeout {
            self.close_with(now, CloseReason::TimedOut);
            return;
        }
        if let Some(t) = self.fin_acked_at {
            if now >= t.max(self.last_recv) + self.fin_linger {
                // Our FIN is acknowledged and the peer, silent since, never
                // sent its own (a peer still sending keeps it open).
                self.close_with(now, CloseReason::Finished);
                self.time_wait_until = None;
                return;
            }
        }
        if self.out.is_empty() {
            self.rto_deadline = None;
        }
        let first_len = self.out.front().map_or(0, |p| p.len.max(1));
        if self.rto_deadline.is_some_and(|t| now >= t) && self.peer_wnd < first_len {
            // The peer's window is shut: the packet was a probe, and the peer
            // answers (it is alive). Probe again; no loss, no back-off count.
            for i in 0..self.out.len() {
                self.mark_lost(i, false);
            }
            self.set_rto_deadline(now);
        }
        if self.rto_deadline.is_some_and(|t| now >= t) {
            self.consecutive_timeouts += 1;
            self.stats.timeouts += 1;
            let limit = if self.state == State::SynSent {
                self.syn_timeouts_max
            } else {
                self.timeouts_max
            };
            if self.consecutive_timeouts > limit {
                self.close_with(now, CloseReason::TimedOut);
                return;
            }
            self.rto = (self.rto * 2).min(self.max_rto);
            self.cc.on_timeout(now);
            for i in 0..self.out.len() {
                self.mark_lost(i, false);
            }
            self.recovery_until = Some(self.seq_nr);
            self.duplicate_acks = 0;
            self.set_rto_deadline(now);
        }
        if self.zero_window_probe_at.is_some_and(|t| now >= t) {
            self.zero_window_probe_at = None;
            self.probe_allowed = true;
        }
        if self.state == State::Connected && now >= self.last_send + self.keepalive {
            self.ack_pending = true;
        }
    }

    /// Whether [`Self::poll_transmit`] may produce a packet.
    pub(crate) fn wants_transmit(&self) -> bool {
        if self.is_closed() {
            return self.ack_pending;
        }
        self.ack_pending
            || self.resends_pending > 0
            || (self.packetized < self.send_base + self.send_buf.len() as u64)
            || (self.close_requested && !self.fin_sent)
    }

    // ---- packets out ----

    fn header(&mut self, kind: PacketType, seq_nr: u16, now_us: u32) -> Header {
        let wnd = self.our_window();
        self.advertised_wnd = wnd;
        Header {
            kind,
            connection_id: if kind == PacketType::Syn { self.recv_id } else { self.send_id },
            timestamp_us: now_us,
            timestamp_difference_us: self.reply_micro,
            wnd_size: wnd,
            seq_nr,
            ack_nr: if kind == PacketType::Syn { 0 } else { self.ack_nr },
        }
    }

    /// Writes the selective ACK bitmask of the reorder buffer into `bits`;
    /// returns its length (0: nothing to acknowledge selectively).
    fn sack_bits(&self, bits: &mut [u8; MAX_SACK_BYTES]) -> usize {
        if self.reorder.len() < 2 {
            return 0;
        }
        let mut len = 0;
        // Slot i + 1 holds ack_nr + 2 + i.
        for (i, slot) in self.reorder.iter().skip(1).take(MAX_SACK_BYTES * 8).enumerate() {
            if slot.is_some() {
                bits[i / 8] |= 1 << (i % 8);
                len = i / 8 + 1;
            }
        }
        len.div_ceil(4) * 4
    }

    fn write_packet(
        &mut self,
        kind: PacketType,
        seq_nr: u16,
        now: Instant,
        now_us: u32,
        buf: &mut [u8],
    ) -> usize {
        let header = self.header(kind, seq_nr, now_us);
        let mut bits = [0u8; MAX_SACK_BYTES];
        let sack_len = if kind == PacketType::Syn { 0 } else { self.sack_bits(&mut bits) };
        let n = packet::encode_header(&header, Some(&bits[..sack_len]), buf);
        self.ack_pending = false;
        self.last_send = now;
        self.stats.packets_sent += 1;
        n
    }

    /// Writes the next packet into `buf` (at least
    /// [`super::MAX_DATAGRAM_BYTES`] long); returns its length.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        now_us: u32,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.is_closed() {
            if self.ack_pending && self.state == State::Closed(CloseReason::Finished) {
                let seq = self.seq_nr;
                return Some(self.write_packet(PacketType::State, seq, now, now_us, buf));
            }
            self.ack_pending = false;
            return None;
        }
        // 1. Packets to send again (and the first SYN).
        if self.resends_pending > 0 {
            if let Some(i) = self.out.iter().position(|p| p.need_resend) {
                let p = self.out[i];
                if self.window_allows(p.len) {
                    let n = self.write_packet(p.kind, p.seq, now, now_us, buf);
                    if p.kind == PacketType::Data {
                        let start = (p.offset - self.send_base) as usize;
                        copy_from_ring(&self.send_buf, start, &mut buf[n..n + p.len as usize]);
                    }
                    let q = &mut self.out[i];
                    if q.transmissions > 0 {
                        self.stats.retransmissions += 1;
                    }
                    q.transmissions += 1;
                    q.sent_at = Some(now);
                    q.need_resend = false;
                    q.in_flight = true;
                    self.resends_pending -= 1;
                    self.in_flight_bytes += p.len;
                    self.probe_allowed = false;
                    if self.rto_deadline.is_none() {
                        self.set_rto_deadline(now);
                    }
                    return Some(n + p.len as usize);
                }
            }
        }
        // The acceptor waits for the initiator's first packet: before it, the
        // initiator may not know the connection yet (its SYN-ACK may be lost).
        let can_send_data = self.state == State::Connected;
        // 2. New data.
        let buffered_end = self.send_base + self.send_buf.len() as u64;
        let unsent = buffered_end - self.packetized;
        if can_send_data
            && unsent > 0
            && self.out.len() < MAX_PACKETS_IN_FLIGHT
            && self.resends_pending == 0
        {
            let mut len = unsent.min(self.payload_bytes as u64) as u32;
            if self.in_flight_bytes == 0 && self.peer_wnd < len {
                // The peer's window is nearly shut: send what fits (at least
                // one byte, a probe, once the probe timer allows).
                len = self.peer_wnd.max(1);
            }
            // Nagle: a short packet only when nothing is in flight.
            let short_ok = len == self.payload_bytes || self.in_flight_bytes == 0;
            if short_ok && self.window_allows(len) {
                let seq = self.seq_nr;
                let n = self.write_packet(PacketType::Data, seq, now, now_us, buf);
                let start = (self.packetized - self.send_base) as usize;
                copy_from_ring(&self.send_buf, start, &mut buf[n..n + len as usize]);
                self.out.push_back(OutPacket {
                    seq,
                    kind: PacketType::Data,
                    offset: self.packetized,
                    len,
                    sent_at: Some(now),
                    transmissions: 1,
                    acked: false,
                    in_flight: true,
                    need_resend: false,
                    fast_resent: false,
                });
                self.packetized += len as u64;
                self.seq_nr = seq.wrapping_add(1);
                self.in_flight_bytes += len;
                self.probe_allowed = false;
                if self.rto_deadline.is_none() {
                    self.set_rto_deadline(now);
                }
                return Some(n + len as usize);
            }
            if self.in_flight_bytes == 0
                && self.peer_wnd < len
                && self.zero_window_probe_at.is_none()
                && !self.probe_allowed
            {
                // The peer's window is shut: probe it after a timeout in case
                // its window update is lost.
                self.zero_window_probe_at = Some(now + self.rto);
            }
        }
        // 3. The FIN after the last byte.
        if can_send_data
            && self.close_requested
            && !self.fin_sent
            && unsent == 0
            && self.resends_pending == 0
            && self.out.len() < MAX_PACKETS_IN_FLIGHT
        {
            let seq = self.seq_nr;
            let n = self.write_packet(PacketType::Fin, seq, now, now_us, buf);
            self.out.push_back(OutPacket {
                seq,
                kind: PacketType::Fin,
                offset: self.packetized,
                len: 0,
                sent_at: Some(now),
                transmissions: 1,
                acked: false,
                in_flight: true,
                need_resend: false,
                fast_resent: false,
            });
            self.seq_nr = seq.wrapping_add(1);
            self.fin_sent = true;
            if self.rto_deadline.is_none() {
                self.set_rto_deadline(now);
            }
            return Some(n);
        }
        // 4. A bare acknowledgement.
        if self.ack_pending && self.state != State::SynSent {
            let seq = self.seq_nr;
            return Some(self.write_packet(PacketType::State, seq, now, now_us, buf));
        }
        None
    }

    pub(crate) fn reset_header(&self, now_us: u32) -> Header {
        Header {
            kind: PacketType::Reset,
            connection_id: self.send_id,
            timestamp_us: now_us,
            timestamp_difference_us: 0,
            wnd_size: 0,
            seq_nr: self.seq_nr,
            ack_nr: self.ack_nr,
        }
    }

    pub(crate) fn refresh_stats(&mut self) -> ConnStats {
        self.stats.window_bytes = self.window_bytes();
        self.stats
    }
}

#[cfg(test)]
impl Connection {
    pub(crate) fn reorder_bytes_for_test(&self) -> usize {
        self.recv_buf.len() + self.reorder_bytes
    }

    pub(crate) fn reorder_len_for_test(&self) -> usize {
        self.reorder.len()
    }
}
