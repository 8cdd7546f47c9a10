//! Unit tests of the core's rate limits and allowed-fast set, on a simulated
//! clock: one core, peers played by hand with wire messages.

use super::*;
use crate::wire::{decode, Decoded, Message, Reserved, WireLimits, HANDSHAKE_LEN};
use std::net::IpAddr;
use std::time::Duration;

const PIECE_LEN: u32 = 32 * 1024;
/// 160 KiB/s: 10 blocks a second; the burst is the 128 KiB floor (8 blocks).
const LIMIT: u64 = 160 * 1024;
const BURST_BLOCKS: u64 = 8;

fn params(pieces: u32) -> TorrentParams {
    TorrentParams::for_tests(PIECE_LEN, pieces)
}

fn core(pieces: u32, have: Bitfield, wanted: &Bitfield, config: TorrentConfig) -> TorrentCore {
    TorrentCore::new(params(pieces), config, have, wanted).unwrap()
}

/// A fast-extension peer from `10.0.0.<n>` that connected to us.
fn accept(core: &mut TorrentCore, n: u8, now: Instant) -> ConnId {
    let hs = Handshake {
        reserved: Reserved::OURS,
        info_hash: InfoHash([3; 20]),
        peer_id: PeerId([n; 20]),
    };
    core.accepted(SocketAddr::from(([10, 0, 0, n], 7000)), hs, now).unwrap()
}

fn send(core: &mut TorrentCore, conn: ConnId, msgs: &[Message<'_>], now: Instant) {
    let mut bytes = Vec::new();
    for m in msgs {
        m.encode(&mut bytes);
    }
    assert_eq!(core.on_data(conn, &bytes, now), bytes.len());
}

/// What the core queued for `conn`, one short line per message.
fn sent(core: &mut TorrentCore, conn: ConnId, pieces: u32) -> Vec<String> {
    let mut out = Vec::new();
    core.take_outgoing(conn, &mut out);
    let limits = WireLimits::for_pieces(pieces);
    // Our handshake, when this is the first call for a connection.
    let mut at = if out.starts_with(b"\x13BitTorrent protocol") { HANDSHAKE_LEN } else { 0 };
    let mut names = Vec::new();
    while let Ok(Decoded::Message { message, consumed }) = decode(&out[at..], &limits) {
        names.push(match message {
            Message::Request(r) => format!("request {} {}", r.piece, r.begin),
            Message::Reject(r) => format!("reject {}", r.piece),
            Message::Piece { piece, begin, .. } => format!("piece {piece} {begin}"),
            Message::AllowedFast { piece } => format!("allowed_fast {piece}"),
            Message::Have { piece } => format!("have {piece}"),
            other => format!("{:?}", other.id()),
        });
        at += consumed;
    }
    names
}

/// Carries out the core's reads at once (every block is zeros) and returns
/// how many there were.
fn serve_reads(core: &mut TorrentCore, now: Instant) -> u64 {
    let mut reads = 0;
    while let Some(action) = core.poll_action() {
        if let Action::ReadBlock { conn, request } = action {
            core.block_read(conn, request, Some(&vec![0; request.length as usize]), now);
            reads += 1;
        }
    }
    reads
}

/// A full seed (sharing `process` limits, if any) whose one fast peer is
/// unchoked and has queued `requests` block requests (cycling over the
/// torrent's blocks).
fn seed_with_requests(
    limit: u64,
    process: Option<Arc<ProcessRateLimits>>,
    requests: u32,
    now: Instant,
) -> (TorrentCore, ConnId) {
    let full = Bitfield::full(4);
    let config = TorrentConfig { upload_rate_limit_bytes_per_s: limit, ..TorrentConfig::default() };
    let mut core = core(4, full.clone(), &full, config);
    if let Some(process) = process {
        core.set_process_limits(process);
    }
    let conn = accept(&mut core, 2, now);
    send(&mut core, conn, &[Message::Interested], now);
    send(&mut core, conn, &block_requests(requests), now);
    (core, conn)
}

/// `n` requests cycling over the 8 blocks of the 4-piece torrent.
fn block_requests(n: u32) -> Vec<Message<'static>> {
    (0..n)
        .map(|i| {
            let block = i % 8;
            Message::Request(BlockRequest {
                piece: block / 2,
                begin: (block % 2) * BLOCK_SIZE,
                length: BLOCK_SIZE,
            })
        })
        .collect()
}

/// Runs the core's rate-limit wake-ups as a driver would, every `step`
/// until `end`, serving reads; returns (blocks served, wake-ups).
fn run_wakeups(core: &mut TorrentCore, from: Instant, end: Instant) -> (u64, u32) {
    let (mut served, mut wakeups) = (0, 0);
    let mut now = from;
    while now < end {
        now += Duration::from_millis(1);
        if core.rate_limit_wakeup().is_some_and(|at| at <= now) {
            wakeups += 1;
            core.rate_limit_tick(now);
            served += serve_reads(core, now);
        }
    }
    (served, wakeups)
}

/// Goal: an upload limit delays serving, never drops requests.
/// Setup: a seed limited to 160 KiB/s; its unchoked peer queues 60 requests.
/// Check: the first burst (8 blocks) is served at once and the rest wait (no
/// reject); each wake-up serves what was earned: 10 blocks a second, so 20
/// more after 2 s, with at most 50 wake-ups a second; the queue still holds
/// the remainder.
#[test]
fn upload_limit_delays_serving_and_never_drops_requests() {
    let t0 = Instant::now();
    let (mut core, conn) = seed_with_requests(LIMIT, None, 60, t0);
    assert_eq!(serve_reads(&mut core, t0), BURST_BLOCKS);
    let names = sent(&mut core, conn, 4);
    assert!(!names.iter().any(|n| n.starts_with("reject")), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("piece")).count() as u64, BURST_BLOCKS);
    let wake = core.rate_limit_wakeup().expect("held-back uploads ask for a wake-up");
    assert!(wake > t0);
    // Nothing more before the wake-up, whatever the peer does.
    core.tick(t0 + Duration::from_millis(1));
    assert_eq!(serve_reads(&mut core, t0), 0);

    let end = t0 + Duration::from_secs(2);
    let (served, wakeups) = run_wakeups(&mut core, t0, end);
    assert!((19..=21).contains(&served), "served {served} blocks in 2 s at 10 a second");
    assert!(wakeups <= 100, "{wakeups} wake-ups in 2 s");
    let names = sent(&mut core, conn, 4);
    assert!(!names.iter().any(|n| n.starts_with("reject")), "{names:?}");
    assert_eq!(
        core.conns[conn].peer.queued_peer_requests() as u64,
        60 - BURST_BLOCKS - served,
        "held-back requests stay queued"
    );
}

/// Goal: limits change at run time: lifting the limit serves every held-back
/// request at once; setting one again holds them back again.
#[test]
fn rate_limits_change_at_run_time() {
    let t0 = Instant::now();
    let (mut core, conn) = seed_with_requests(LIMIT, None, 40, t0);
    assert_eq!(serve_reads(&mut core, t0), BURST_BLOCKS);
    assert_eq!(core.rate_limits(), (LIMIT, 0));
    core.set_rate_limits(t0, 0, 0);
    assert_eq!(core.rate_limits(), (0, 0));
    assert_eq!(serve_reads(&mut core, t0), 40 - BURST_BLOCKS, "unlimited: all served at once");
    sent(&mut core, conn, 4);

    core.set_rate_limits(t0, LIMIT, 0);
    send(&mut core, conn, &block_requests(20), t0);
    assert_eq!(serve_reads(&mut core, t0), BURST_BLOCKS, "a new limit starts with one burst");
}

/// Goal: the process-wide bucket bounds the sum over torrents.
/// Setup: two seeds without limits of their own share a 160 KiB/s process
/// bucket; each has a peer with 40 requests.
/// Check: together they serve one burst at once and 10 blocks a second after
/// (each alone would be unlimited).
#[test]
fn process_limit_bounds_the_sum_over_torrents() {
    let t0 = Instant::now();
    let limits = Arc::new(ProcessRateLimits::new(LIMIT, 0, t0));
    let (mut a, _) = seed_with_requests(0, Some(limits.clone()), 40, t0);
    let (mut b, _) = seed_with_requests(0, Some(limits), 40, t0);
    let first = serve_reads(&mut a, t0) + serve_reads(&mut b, t0);
    assert_eq!(first, BURST_BLOCKS, "one burst for the whole process");
    let end = t0 + Duration::from_secs(2);
    let mut served = 0;
    let mut now = t0;
    while now < end {
        now += Duration::from_millis(1);
        for core in [&mut a, &mut b] {
            if core.rate_limit_wakeup().is_some_and(|at| at <= now) {
                core.rate_limit_tick(now);
                served += serve_reads(core, now);
            }
        }
    }
    assert!((19..=21).contains(&served), "served {served} blocks in 2 s, process-wide");
}

/// Goal: a download limit holds back block requests, not data.
/// Setup: a leecher of 64 pieces limited to 160 KiB/s; a fast peer has
/// everything and unchokes it; the pipeline would allow 64 requests.
/// Check: one burst (8 requests) goes out at once; after 2 s of wake-ups,
/// 20 more; a rejected request's tokens come back at once.
#[test]
fn download_limit_holds_back_requests() {
    let t0 = Instant::now();
    let pieces = 64;
    let none = Bitfield::new(pieces);
    let config = TorrentConfig {
        download_rate_limit_bytes_per_s: LIMIT,
        peer: PeerConfig { min_request_depth: 64, ..PeerConfig::default() },
        ..TorrentConfig::default()
    };
    let mut core = core(pieces, none, &Bitfield::full(pieces), config);
    let conn = accept(&mut core, 2, t0);
    sent(&mut core, conn, pieces);
    send(&mut core, conn, &[Message::HaveAll, Message::Unchoke], t0);
    let requests = |core: &mut TorrentCore| {
        sent(core, conn, pieces)
            .into_iter()
            .filter(|n| n.starts_with("request"))
            .collect::<Vec<_>>()
    };
    let first = requests(&mut core);
    assert_eq!(first.len() as u64, BURST_BLOCKS, "{first:?}");
    assert!(core.rate_limit_wakeup().is_some());

    let mut now = t0;
    let mut later = 0;
    while now < t0 + Duration::from_secs(2) {
        now += Duration::from_millis(1);
        if core.rate_limit_wakeup().is_some_and(|at| at <= now) {
            core.rate_limit_tick(now);
            later += requests(&mut core).len();
        }
    }
    assert!((19..=21).contains(&later), "{later} requests in 2 s at 10 a second");

    // The peer rejects one: its 16 KiB of budget is returned, so one more
    // request goes out at once (before any wake-up is due).
    let parts: Vec<&str> = first[0].split(' ').collect();
    let rejected = BlockRequest {
        piece: parts[1].parse().unwrap(),
        begin: parts[2].parse().unwrap(),
        length: BLOCK_SIZE,
    };
    send(&mut core, conn, &[Message::Reject(rejected)], now);
    assert_eq!(requests(&mut core).len(), 1);
}

/// Goal: BEP 6 allowed fast on the serving side of the core.
/// Setup: a core with pieces 0 and 2 of 4 that wants all 4; a fast peer
/// connects and stays choked (never interested).
/// Check: it is told `allowed_fast` for the pieces of its canonical set we
/// have (all 4 pieces are in the set of a 4-piece torrent); a request for
/// an allowed piece is served while choked, one for a piece we lack is
/// rejected; once we verify piece 1, it is allowed fast too.
#[test]
fn allowed_fast_set_is_sent_and_served_while_choked() {
    let t0 = Instant::now();
    let mut have = Bitfield::new(4);
    have.set(0);
    have.set(2);
    let mut core = core(4, have, &Bitfield::full(4), TorrentConfig::default());
    let conn = accept(&mut core, 2, t0);
    let set = allowed_fast_set(IpAddr::from([10, 0, 0, 2]), &InfoHash([3; 20]), 4, 10);
    assert_eq!(set.len(), 4);
    let names = sent(&mut core, conn, 4);
    let offered: Vec<&String> = names.iter().filter(|n| n.starts_with("allowed_fast")).collect();
    let expected: Vec<String> =
        set.iter().filter(|&&p| p == 0 || p == 2).map(|p| format!("allowed_fast {p}")).collect();
    assert_eq!(offered, expected.iter().collect::<Vec<_>>(), "{names:?}");
    assert!(core.conns[conn].peer.am_choking());

    let block = |piece| Message::Request(BlockRequest { piece, begin: 0, length: BLOCK_SIZE });
    send(&mut core, conn, &[block(2), block(1)], t0);
    assert_eq!(serve_reads(&mut core, t0), 1);
    assert_eq!(sent(&mut core, conn, 4), ["reject 1", "piece 2 0"]);

    // We download piece 1 from the peer, verify and write it: it is offered.
    send(&mut core, conn, &[Message::HaveAll, Message::Unchoke], t0);
    let mut data = vec![7u8; PIECE_LEN as usize];
    for name in sent(&mut core, conn, 4) {
        let parts: Vec<u32> = name
            .strip_prefix("request ")
            .map_or(Vec::new(), |r| r.split(' ').map(|x| x.parse().unwrap()).collect());
        if parts.first() == Some(&1) {
            let begin = parts[1] as usize;
            let msg = Message::Piece {
                piece: 1,
                begin: parts[1],
                data: &data[begin..begin + BLOCK_SIZE as usize],
            };
            send(&mut core, conn, &[msg], t0);
        }
    }
    while let Some(action) = core.poll_action() {
        match action {
            Action::HashPiece { piece: 1, data: d, .. } => core.piece_hashed(1, true, d),
            Action::WritePiece { piece: 1, data: d } => {
                core.piece_written(1, true, d, t0);
                data.clear();
            }
            _ => {}
        }
    }
    assert!(data.is_empty(), "piece 1 was never requested, hashed and written");
    let names = sent(&mut core, conn, 4);
    assert!(
        names.windows(2).any(|w| w == ["have 1", "allowed_fast 1"]),
        "piece 1 not offered after it was verified: {names:?}"
    );
}

/// Goal: with `allowed_fast_set_size` 0, or a peer without the fast
/// extension, nothing is offered.
#[test]
fn no_allowed_fast_when_disabled_or_not_negotiated() {
    let t0 = Instant::now();
    let full = Bitfield::full(4);
    let config = TorrentConfig { allowed_fast_set_size: 0, ..TorrentConfig::default() };
    let mut off = core(4, full.clone(), &full, config);
    let conn = accept(&mut off, 2, t0);
    let names = sent(&mut off, conn, 4);
    assert!(names.contains(&"Some(HaveAll)".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("allowed_fast")), "{names:?}");

    let mut plain = core(4, full.clone(), &full, TorrentConfig::default());
    let hs = Handshake {
        reserved: Reserved::default(),
        info_hash: InfoHash([3; 20]),
        peer_id: PeerId([9; 20]),
    };
    let conn = plain.accepted(SocketAddr::from(([10, 0, 0, 9], 7000)), hs, t0).unwrap();
    let names = sent(&mut plain, conn, 4);
    assert!(names.contains(&"Some(Bitfield)".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("allowed_fast")), "{names:?}");
}

/// The piece-buffer byte bound: large pieces allow fewer buffers, never
/// fewer than `MIN_PIECE_BUFFERS`, never more than `MAX_PIECE_BUFFERS`.
#[test]
fn piece_buffers_are_bounded_in_bytes() {
    let wanted = Bitfield::full(4);
    let limit = |piece_length: u32| {
        let params = TorrentParams::for_tests(piece_length, 4);
        TorrentCore::new(params, TorrentConfig::default(), Bitfield::new(4), &wanted)
            .unwrap()
            .max_piece_buffers()
    };
    assert_eq!(limit(16 * 1024), MAX_PIECE_BUFFERS, "2048 by bytes, capped by count");
    assert_eq!(limit(1 << 20), (MAX_PIECE_BUFFER_BYTES >> 20) as usize);
    assert_eq!(limit(4 << 20), 8);
    assert_eq!(limit(64 << 20), MIN_PIECE_BUFFERS);
}

/// Requests `core` queued for `conn`, as (piece, begin).
fn requested(core: &mut TorrentCore, conn: ConnId, pieces: u32) -> Vec<(u32, u32)> {
    sent(core, conn, pieces)
        .iter()
        .filter_map(|n| n.strip_prefix("request "))
        .map(|r| {
            let mut parts = r.split(' ').map(|x| x.parse::<u32>().unwrap());
            (parts.next().unwrap(), parts.next().unwrap())
        })
        .collect()
}

/// Hashes (as passed) and writes every piece the core hands over, as a
/// driver would; returns how many were written.
fn pass_and_write(core: &mut TorrentCore, now: Instant) -> usize {
    let mut written = 0;
    while let Some(action) = core.poll_action() {
        match action {
            Action::HashPiece { piece, data, .. } => core.piece_hashed(piece, true, data),
            Action::WritePiece { piece, data } => {
                core.piece_written(piece, true, data, now);
                written += 1;
            }
            _ => {}
        }
    }
    written
}

/// Goal: the shard's piece budget, shared by its torrents, stops new pieces
/// (not the open ones) and lets every torrent go on once bytes come back.
/// Setup: two leechers of 8 pieces of 64 KiB on one shard budget of 64 KiB
/// (one piece); each has a seed peer; A asks 8 blocks at a time (two
/// pieces).
/// Check: one block of a piece fills the budget; B then requests nothing;
/// A's other piece, rejected by its peer, is not asked again (not open),
/// while A may finish the open one; once it is written the budget is empty,
/// wakes, and B requests. Dropping the cores gives every byte back.
#[test]
fn shard_piece_budget_stops_new_pieces_until_bytes_come_back() {
    use crate::memory_budget::ShardMemory;
    let t0 = Instant::now();
    let piece_len = 64 * 1024;
    let pieces = 8;
    let memory = ShardMemory::new(u64::from(piece_len), u64::MAX);
    let leecher = || {
        let config = TorrentConfig {
            peer: PeerConfig {
                min_request_depth: 8,
                max_outstanding_requests: 8,
                ..PeerConfig::default()
            },
            ..TorrentConfig::default()
        };
        let params = TorrentParams::for_tests(piece_len, pieces);
        let full = Bitfield::full(pieces);
        let mut core = TorrentCore::new(params, config, Bitfield::new(pieces), &full).unwrap();
        core.set_memory_budgets(memory.pieces.clone(), memory.send.clone());
        core
    };
    let (mut a, mut b) = (leecher(), leecher());
    let conn_a = accept(&mut a, 2, t0);
    sent(&mut a, conn_a, pieces);
    send(&mut a, conn_a, &[Message::HaveAll, Message::Unchoke], t0);
    let asked = requested(&mut a, conn_a, pieces);
    assert_eq!(asked.len(), 8, "{asked:?}");
    let (open, other) = (asked[0].0, asked[4].0);
    assert_ne!(open, other, "two pieces asked");

    let data = vec![5u8; BLOCK_SIZE as usize];
    let block = |piece, begin| Message::Piece { piece, begin, data: &data };
    send(&mut a, conn_a, &[block(open, 0)], t0);
    assert_eq!(memory.pieces.used_bytes(), u64::from(piece_len), "a whole piece buffer");
    assert!(requested(&mut a, conn_a, pieces).is_empty(), "every block of the open piece asked");

    let conn_b = accept(&mut b, 3, t0);
    sent(&mut b, conn_b, pieces);
    send(&mut b, conn_b, &[Message::HaveAll, Message::Unchoke], t0);
    assert!(requested(&mut b, conn_b, pieces).is_empty(), "budget spent: no new piece");

    // A's peer rejects the other piece: it is not open, so not asked again.
    let rejects: Vec<Message<'_>> = (0..4)
        .map(|i| {
            Message::Reject(BlockRequest {
                piece: other,
                begin: i * BLOCK_SIZE,
                length: BLOCK_SIZE,
            })
        })
        .collect();
    send(&mut a, conn_a, &rejects, t0);
    assert!(requested(&mut a, conn_a, pieces).is_empty(), "no new piece past the budget");

    // A finishes the open piece; its buffer comes back.
    let rest: Vec<Message<'_>> = (1..4).map(|i| block(open, i * BLOCK_SIZE)).collect();
    send(&mut a, conn_a, &rest, t0);
    assert_eq!(pass_and_write(&mut a, t0), 1);
    assert_eq!(memory.pieces.used_bytes(), 0, "the buffer is freed, not kept spare, when spent");
    assert!(memory.pieces.take_wake(), "work was held back: wake the shard");
    b.budget_freed(t0);
    let asked = requested(&mut b, conn_b, pieces);
    assert!(!asked.is_empty(), "B starts once bytes came back");

    send(&mut b, conn_b, &[block(asked[0].0, asked[0].1)], t0);
    assert_eq!(memory.pieces.used_bytes(), u64::from(piece_len));
    drop(a);
    drop(b);
    assert_eq!(memory.pieces.used_bytes(), 0, "dropped cores give their bytes back");
}

/// Goal: the shard's send budget defers upload reads (never drops the
/// requests) and gives bytes back once written or when the peer goes.
/// Setup: two seeds on one send budget of 4 blocks; A's peer asks 10
/// blocks.
/// Check: 4 reads start; B's peer's requests wait (no read); A's blocks stay
/// charged until written; `writable` frees them and B's reads start after
/// the wake; closing a connection gives back what it held.
#[test]
fn shard_send_budget_defers_reads_until_bytes_are_written() {
    use crate::memory_budget::ShardMemory;
    let t0 = Instant::now();
    let memory = ShardMemory::new(u64::MAX, 4 * u64::from(BLOCK_SIZE));
    let seed = || {
        let full = Bitfield::full(4);
        let mut core = core(4, full.clone(), &full, TorrentConfig::default());
        core.set_memory_budgets(memory.pieces.clone(), memory.send.clone());
        core
    };
    let (mut a, mut b) = (seed(), seed());
    let conn_a = accept(&mut a, 2, t0);
    send(&mut a, conn_a, &[Message::Interested], t0);
    send(&mut a, conn_a, &block_requests(10), t0);
    assert_eq!(serve_reads(&mut a, t0), 4, "reads stop at the budget");
    assert_eq!(memory.send.used_bytes(), 4 * u64::from(BLOCK_SIZE));

    let conn_b = accept(&mut b, 3, t0);
    send(&mut b, conn_b, &[Message::Interested], t0);
    send(&mut b, conn_b, &block_requests(2), t0);
    assert_eq!(serve_reads(&mut b, t0), 0, "B's requests wait");

    let names = sent(&mut a, conn_a, 4);
    assert_eq!(names.iter().filter(|n| n.starts_with("piece")).count(), 4, "{names:?}");
    assert_eq!(memory.send.used_bytes(), 4 * u64::from(BLOCK_SIZE), "charged until written");
    a.writable(conn_a, t0);
    assert_eq!(serve_reads(&mut a, t0), 4, "A goes on with the freed budget");
    // A refilled the budget: B still waits until it drains to the low mark.
    sent(&mut a, conn_a, 4);
    a.writable(conn_a, t0);
    assert!(memory.send.take_wake());
    b.budget_freed(t0);
    assert_eq!(serve_reads(&mut b, t0), 2, "B is served after the wake");
    let held = memory.send.used_bytes();
    assert!(held > 0);
    a.closed(conn_a);
    b.closed(conn_b);
    assert_eq!(memory.send.used_bytes(), 0, "closed connections give everything back");
}
