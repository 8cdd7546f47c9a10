//! Picker tests. States are built from strings, one character per piece, as
//! libtorrent's `test_piece_picker.cpp` does: `have` ('1' = had), `avail` (a
//! digit d = peers 1..=d have the piece), `wanted` ('1' = wanted; empty = all).
//! `check_invariants` runs after every step.

use super::*;
use proptest::prelude::*;

/// Four blocks per piece unless a test says otherwise.
const PL: u32 = 4 * BLOCK_SIZE;
const SEED_A: PeerKey = PeerKey(100);
const SEED_B: PeerKey = PeerKey(101);
const SEED_C: PeerKey = PeerKey(102);
const SEED_D: PeerKey = PeerKey(103);

fn bits(s: &str, on: impl Fn(char) -> bool) -> Bitfield {
    let mut b = Bitfield::new(s.len() as u32);
    for (i, c) in s.chars().enumerate() {
        if on(c) {
            b.set(i as u32);
        }
    }
    b
}

fn setup_full(have: &str, avail: &str, wanted: &str, total: u64, seed: u64) -> Picker {
    let n = have.len();
    assert_eq!(avail.len(), n);
    let wanted = if wanted.is_empty() { "1".repeat(n) } else { wanted.to_string() };
    let mut p = Picker::new(
        PickerConfig::default(),
        PL,
        total,
        &bits(have, |c| c == '1'),
        &bits(&wanted, |c| c == '1'),
        seed,
    )
    .unwrap();
    let digits: Vec<u32> = avail.chars().map(|c| c.to_digit(10).unwrap_or(0)).collect();
    let max = digits.iter().copied().max().unwrap_or(0);
    for k in 1..=max {
        let mut b = Bitfield::new(n as u32);
        for (i, &d) in digits.iter().enumerate() {
            if d >= k {
                b.set(i as u32);
            }
        }
        p.add_peer_bitfield(PeerKey(k as u64), &b).unwrap();
        p.check_invariants();
    }
    p
}

fn setup(have: &str, avail: &str) -> Picker {
    setup_full(have, avail, "", have.len() as u64 * PL as u64, 1)
}

/// Like `setup`, plus `partial`: a digit d = d blocks of that piece already
/// received (from a peer that has since disconnected), as libtorrent's
/// `setup_picker(..., partial)` does.
fn setup_partial(have: &str, avail: &str, partial: &str) -> Picker {
    let mut p = setup(have, avail);
    let helper = PeerKey(999);
    p.add_peer_have_all(helper).unwrap();
    for (piece, c) in partial.chars().enumerate() {
        let d = c.to_digit(10).unwrap_or(0) as usize;
        if d == 0 {
            continue;
        }
        let mut out = Vec::new();
        p.pick_blocks(helper, d, Some(&[piece as u32]), &mut out).unwrap();
        assert_eq!(out.len(), d);
        for b in out {
            p.block_received(helper, b, &mut Vec::new()).unwrap();
        }
    }
    p.remove_peer(helper).unwrap();
    p.check_invariants();
    p
}

fn pick(p: &mut Picker, peer: PeerKey, max: usize) -> Vec<BlockRequest> {
    let mut out = Vec::new();
    let n = p.pick_blocks(peer, max, None, &mut out).unwrap();
    assert_eq!(n, out.len());
    p.check_invariants();
    out
}

fn receive(p: &mut Picker, peer: PeerKey, b: BlockRequest) -> (BlockOutcome, Vec<PeerKey>) {
    let mut cancel = Vec::new();
    let r = p.block_received(peer, b, &mut cancel).unwrap();
    p.check_invariants();
    (r, cancel)
}

fn blk(piece: u32, index: u32) -> BlockRequest {
    BlockRequest { piece, begin: index * BLOCK_SIZE, length: BLOCK_SIZE }
}

fn pieces_of(reqs: &[BlockRequest]) -> Vec<u32> {
    let mut v: Vec<u32> = reqs.iter().map(|r| r.piece).collect();
    v.dedup();
    v
}

#[test]
fn rarest_first() {
    let mut p = setup("0000000", "7115432");
    p.add_peer_have_all(SEED_A).unwrap();
    p.add_peer_have_all(SEED_B).unwrap();
    p.add_peer_have_all(SEED_C).unwrap();
    assert_eq!(p.availability(1), 4, "1 peer with a bitfield + 3 seeds");
    let a = pieces_of(&pick(&mut p, SEED_A, 4));
    let b = pieces_of(&pick(&mut p, SEED_B, 4));
    let mut ab = [a[0], b[0]];
    ab.sort();
    assert_eq!((a.len(), b.len()), (1, 1), "one whole piece each");
    assert_eq!(ab, [1, 2], "the two pieces with availability 1 go first");
    assert_eq!(pieces_of(&pick(&mut p, SEED_C, 4)), vec![6], "then availability 2");
}

#[test]
fn rarest_first_for_a_peer_without_the_rarest_piece() {
    let mut p = setup("0000", "3211");
    // Peer 2 has pieces 0 and 1 only; the rarest it has is piece 1.
    assert_eq!(pieces_of(&pick(&mut p, PeerKey(2), 4)), vec![1]);
    // Peer 3 has piece 0 only.
    assert_eq!(pieces_of(&pick(&mut p, PeerKey(3), 8)), vec![0]);
}

#[test]
fn ties_are_random_but_deterministic_by_seed() {
    let first = |seed| {
        let mut p = setup_full("0000000000", "1111111111", "", 10 * PL as u64, seed);
        p.add_peer_have_all(SEED_A).unwrap();
        pick(&mut p, SEED_A, 1)[0].piece
    };
    let picks: Vec<u32> = (0..40).map(first).collect();
    let again: Vec<u32> = (0..40).map(first).collect();
    assert_eq!(picks, again, "same seed, same picks");
    let mut distinct = picks.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 5, "ties spread over pieces: {picks:?}");
}

#[test]
fn partial_pieces_first() {
    // Piece 3 is common (availability 3) and the rest rare, but once peer 3
    // started piece 3, a seed finishes it before starting a rare piece.
    let mut p = setup("00000", "11131");
    assert_eq!(pick(&mut p, PeerKey(3), 2), vec![blk(3, 0), blk(3, 1)]);
    p.add_peer_have_all(SEED_A).unwrap();
    assert_eq!(pick(&mut p, SEED_A, 2), vec![blk(3, 2), blk(3, 3)]);
    assert_eq!(p.partial_count(), 1);
}

#[test]
fn partial_pieces_from_strings() {
    // Piece 2 is the most common but half done: it goes first, then the
    // rarest (piece 0), then piece 3 which is partial with one block.
    let mut p = setup_partial("0000", "1239", "0021");
    assert_eq!(p.partial_count(), 2);
    p.add_peer_have_all(SEED_A).unwrap();
    let r = pick(&mut p, SEED_A, 9);
    let partial_first: Vec<u32> = r[..5].iter().map(|b| b.piece).collect();
    let mut sorted = partial_first.clone();
    sorted.sort();
    assert_eq!(sorted, vec![2, 2, 3, 3, 3], "the five missing blocks of partial pieces");
    assert_eq!(pieces_of(&r[5..]), vec![0], "then the rarest new piece");
    assert!(!r.contains(&blk(2, 0)) && !r.contains(&blk(3, 0)), "received blocks are not picked");
}

#[test]
fn memory_is_16_bytes_per_piece_without_peers() {
    let n = 10_000;
    let p = Picker::new(
        PickerConfig::default(),
        PL,
        n as u64 * PL as u64,
        &Bitfield::new(n),
        &Bitfield::full(n),
        0,
    )
    .unwrap();
    let per_piece = 16 * n as usize;
    let fixed = (PickerConfig::default().max_peers + 3) * 4 + 1024;
    assert!(p.memory_bytes() <= per_piece + fixed, "{} bytes", p.memory_bytes());
}

#[test]
fn partial_pieces_of_the_same_peer_first() {
    let mut p = setup("0000", "0000");
    p.add_peer_have_all(SEED_A).unwrap();
    p.add_peer_have_all(SEED_B).unwrap();
    let a = pick(&mut p, SEED_A, 2);
    let b = pick(&mut p, SEED_B, 5);
    // B finished A's piece (2 blocks) and started another piece (3 blocks).
    assert_eq!(pieces_of(&b).len(), 2);
    assert_eq!(b[0].piece, a[0].piece);
    let b_piece = b[4].piece;
    // A's next pick continues the piece B last touched only after its own;
    // A's own piece is full, so it takes B's remaining block.
    let a2 = pick(&mut p, SEED_A, 1);
    assert_eq!(a2, vec![blk(b_piece, 3)]);
    // B's next pick starts a new piece: nothing partial is left.
    let b2 = pick(&mut p, SEED_B, 1);
    assert!(b2[0].piece != a[0].piece && b2[0].piece != b_piece);
}

#[test]
fn reservations_are_exclusive_until_endgame() {
    let mut p = setup("000", "000");
    for s in [SEED_A, SEED_B, SEED_C, SEED_D] {
        p.add_peer_have_all(s).unwrap();
    }
    let mut all = pick(&mut p, SEED_A, 5);
    all.extend(pick(&mut p, SEED_B, 5));
    assert!(!p.in_endgame());
    all.extend(pick(&mut p, SEED_C, 2));
    let mut unique = all.clone();
    unique.sort_by_key(|b| (b.piece, b.begin));
    unique.dedup();
    assert_eq!(unique.len(), 12, "every block handed out once");
    assert!(p.in_endgame(), "every missing block is reserved");
    assert_eq!(p.outstanding(SEED_A).unwrap(), 5);
}

#[test]
fn endgame_duplicates_and_cancels() {
    let mut p = setup("0", "0");
    for s in [SEED_A, SEED_B, SEED_C, SEED_D] {
        p.add_peer_have_all(s).unwrap();
    }
    assert_eq!(pick(&mut p, SEED_A, 10).len(), 4);
    assert!(p.in_endgame());
    assert_eq!(pick(&mut p, SEED_B, 10).len(), 4, "B duplicates all four");
    assert_eq!(pick(&mut p, SEED_C, 2), vec![blk(0, 0), blk(0, 1)]);
    assert!(pick(&mut p, SEED_A, 10).is_empty(), "A already requested every block");
    // Blocks 0 and 1 have 3 requesters (the default limit), 2 and 3 have 2.
    assert_eq!(pick(&mut p, SEED_D, 10), vec![blk(0, 2), blk(0, 3)]);
    let (r, mut cancel) = receive(&mut p, SEED_B, blk(0, 0));
    assert_eq!(r, BlockOutcome::Accepted);
    cancel.sort();
    assert_eq!(cancel, vec![SEED_A, SEED_C]);
    assert_eq!(p.outstanding(SEED_A).unwrap(), 3);
    assert_eq!(p.outstanding(SEED_C).unwrap(), 1);
    let (r, cancel) = receive(&mut p, SEED_A, blk(0, 0));
    assert_eq!((r, cancel.len()), (BlockOutcome::Duplicate, 0), "the loser of the race");
    for i in 1..4 {
        let (r, _) = receive(&mut p, SEED_D, blk(0, i));
        assert_eq!(r, if i == 3 { BlockOutcome::PieceComplete } else { BlockOutcome::Accepted });
    }
    for s in [SEED_A, SEED_B, SEED_C, SEED_D] {
        assert_eq!(p.outstanding(s).unwrap(), 0, "every reservation was cancelled");
    }
    p.piece_verified(0).unwrap();
    p.check_invariants();
    assert!(p.is_finished() && !p.in_endgame());
}

#[test]
fn failed_piece_is_picked_again_and_names_its_contributors() {
    let mut p = setup("00", "00");
    p.add_peer_have_all(SEED_A).unwrap();
    p.add_peer_have_all(SEED_B).unwrap();
    let a = pick(&mut p, SEED_A, 2);
    let b = pick(&mut p, SEED_B, 2);
    assert_eq!(a[0].piece, b[0].piece);
    let piece = a[0].piece;
    receive(&mut p, SEED_A, a[0]);
    receive(&mut p, SEED_B, b[0]);
    receive(&mut p, SEED_A, a[1]);
    assert_eq!(receive(&mut p, SEED_B, b[1]).0, BlockOutcome::PieceComplete);
    assert_eq!(p.piece_verified(1 - piece), Err(PickerError::PieceNotComplete(1 - piece)));
    let mut contributors = Vec::new();
    p.piece_failed(piece, &mut contributors).unwrap();
    p.check_invariants();
    assert_eq!(contributors, vec![SEED_A, SEED_B]);
    assert_eq!(p.partial_count(), 0);
    assert!(!p.have(piece));
    // Both pieces are free again; a pick can take the failed one.
    let again = pick(&mut p, SEED_A, 8);
    assert_eq!(again.len(), 8);
    assert!(again.iter().filter(|r| r.piece == piece).count() == 4);
}

#[test]
fn disconnect_releases_reservations_and_availability() {
    let mut p = setup("00", "21");
    assert_eq!(pick(&mut p, PeerKey(1), 8).len(), 8);
    assert!(p.in_endgame());
    p.remove_peer(PeerKey(1)).unwrap();
    p.check_invariants();
    assert!(!p.in_endgame());
    assert_eq!(p.partial_count(), 0);
    assert_eq!((p.availability(0), p.availability(1)), (1, 0));
    assert_eq!(pieces_of(&pick(&mut p, PeerKey(2), 8)), vec![0]);
    assert_eq!(p.remove_peer(PeerKey(1)), Err(PickerError::UnknownPeer(PeerKey(1))));
}

#[test]
fn disconnect_keeps_received_blocks() {
    let mut p = setup("0", "1");
    let r = pick(&mut p, PeerKey(1), 4);
    receive(&mut p, PeerKey(1), r[0]);
    p.remove_peer(PeerKey(1)).unwrap();
    p.check_invariants();
    assert_eq!(p.partial_count(), 1, "the received block is kept");
    p.add_peer_have_all(SEED_A).unwrap();
    assert_eq!(pick(&mut p, SEED_A, 8), vec![blk(0, 1), blk(0, 2), blk(0, 3)]);
}

#[test]
fn timeout_releases_one_block() {
    let mut p = setup("00", "11");
    p.add_peer_have_all(SEED_A).unwrap();
    let r = pick(&mut p, PeerKey(1), 4);
    let piece = r[0].piece;
    assert!(p.request_timed_out(PeerKey(1), r[1]).unwrap());
    p.check_invariants();
    assert!(!p.request_timed_out(PeerKey(1), r[1]).unwrap(), "released once");
    assert_eq!(pick(&mut p, SEED_A, 1), vec![blk(piece, 1)]);
    // The slow answer still counts if it arrives: A is cancelled.
    let (outcome, cancel) = receive(&mut p, PeerKey(1), r[1]);
    assert_eq!((outcome, cancel), (BlockOutcome::Accepted, vec![SEED_A]));
}

#[test]
fn choke_without_fast_extension_releases_everything() {
    let mut p = setup("00", "22");
    let r = pick(&mut p, PeerKey(1), 6);
    receive(&mut p, PeerKey(1), r[0]);
    assert_eq!(p.release_requests(PeerKey(1)).unwrap(), 5);
    p.check_invariants();
    assert_eq!(p.outstanding(PeerKey(1)).unwrap(), 0);
    assert_eq!(p.partial_count(), 1, "only the piece with a received block keeps its table");
    assert_eq!(p.availability(0), 2, "still connected");
    assert_eq!(
        pick(&mut p, PeerKey(2), 3),
        vec![blk(r[0].piece, 1), blk(r[0].piece, 2), blk(r[0].piece, 3)]
    );
}

#[test]
fn timing_out_every_block_drops_the_table() {
    let mut p = setup("0", "1");
    for r in pick(&mut p, PeerKey(1), 4) {
        p.request_timed_out(PeerKey(1), r).unwrap();
        p.check_invariants();
    }
    assert_eq!(p.partial_count(), 0);
    // A block arriving for an unstarted piece is not taken.
    assert_eq!(receive(&mut p, PeerKey(1), blk(0, 0)).0, BlockOutcome::NotNeeded);
}

#[test]
fn snubbed_peers_blocks_can_be_repicked() {
    let mut p = setup("000", "100");
    p.add_peer_have_all(SEED_A).unwrap();
    let slow = pick(&mut p, PeerKey(1), 4);
    assert_eq!(pieces_of(&slow), vec![0]);
    // Not snubbed: A starts another piece.
    let own = pieces_of(&pick(&mut p, SEED_A, 1));
    assert_ne!(own, vec![0]);
    p.set_snubbed(PeerKey(1), true).unwrap();
    p.check_invariants();
    // Snubbed: A finishes its own piece, then takes over piece 0's blocks
    // (duplicates) rather than starting a new piece.
    assert_eq!(pieces_of(&pick(&mut p, SEED_A, 3)), own);
    assert_eq!(pick(&mut p, SEED_A, 2), vec![blk(0, 0), blk(0, 1)]);
    assert!(!p.in_endgame());
    // The snubbed peer never takes over others' blocks.
    assert!(pick(&mut p, PeerKey(1), 4).is_empty());
    let (_, cancel) = receive(&mut p, SEED_A, blk(0, 0));
    assert_eq!(cancel, vec![PeerKey(1)]);
    p.set_snubbed(PeerKey(1), false).unwrap();
    p.check_invariants();
}

#[test]
fn snubbed_peers_pick_common_pieces_first() {
    let mut p = setup("0000", "1321");
    p.add_peer_have_all(SEED_A).unwrap();
    p.set_snubbed(SEED_A, true).unwrap();
    assert_eq!(pieces_of(&pick(&mut p, SEED_A, 4)), vec![1], "the most common piece");
    p.set_snubbed(SEED_A, false).unwrap();
    let next = pieces_of(&pick(&mut p, SEED_A, 4));
    assert!(next == vec![0] || next == vec![3], "rarest again: {next:?}");
}

#[test]
fn wanted_subset_only() {
    let mut p = setup_full("00000", "11111", "00110", 5 * PL as u64, 1);
    assert_eq!(p.wanted_missing(), 2);
    let r = pick(&mut p, PeerKey(1), 100);
    assert_eq!(pieces_of(&r).len(), 2);
    assert!(r.iter().all(|b| b.piece == 2 || b.piece == 3));
    for b in &r {
        receive(&mut p, PeerKey(1), *b);
    }
    p.piece_verified(2).unwrap();
    p.piece_verified(3).unwrap();
    p.check_invariants();
    assert!(p.is_finished());
    assert!(!p.is_interesting(PeerKey(1)).unwrap());
    p.set_wanted(0, true).unwrap();
    p.check_invariants();
    assert!(p.is_interesting(PeerKey(1)).unwrap());
    assert_eq!(pieces_of(&pick(&mut p, PeerKey(1), 100)), vec![0]);
    p.set_wanted(0, false).unwrap();
    p.check_invariants();
    assert!(pick(&mut p, PeerKey(1), 100).is_empty(), "no new picks in an unwanted piece");
}

#[test]
fn wanted_pieces_include_edges_shared_with_unwanted_files() {
    let file = |offset, length, pad| FileEntry { path: vec!["f".into()], length, offset, pad };
    // Pieces of 100 bytes: a = [0, 150), b = [150, 250) empty c at 250, d = [250, 420).
    let files =
        [file(0, 150, false), file(150, 100, false), file(250, 0, false), file(250, 170, false)];
    let w = wanted_pieces(&files, 100, 5, |i, _| i == 1);
    assert_eq!((0..5).map(|p| w.get(p)).collect::<Vec<_>>(), [false, true, true, false, false]);
    let w = wanted_pieces(&files, 100, 5, |i, _| i == 2);
    assert_eq!(w.count(), 0, "an empty file needs no piece");
    let w = wanted_pieces(&files, 100, 5, |i, _| i == 3);
    assert_eq!((0..5).map(|p| w.get(p)).collect::<Vec<_>>(), [false, false, true, true, true]);
    let padded = [file(0, 100, false), file(100, 50, true), file(150, 100, false)];
    let w = wanted_pieces(&padded, 100, 3, |i, _| i != 2);
    assert_eq!((0..3).map(|p| w.get(p)).collect::<Vec<_>>(), [true, false, false]);
}

#[test]
fn last_piece_and_last_block_are_shorter() {
    let total = 2 * PL as u64 + BLOCK_SIZE as u64 + 1000;
    let mut p = setup_full("000", "001", "", total, 1);
    assert_eq!(p.piece_size(2), BLOCK_SIZE + 1000);
    assert_eq!(p.blocks_in_piece(2), 2);
    let r = pick(&mut p, PeerKey(1), 10);
    assert_eq!(r, vec![blk(2, 0), BlockRequest { piece: 2, begin: BLOCK_SIZE, length: 1000 }]);
    let wrong = BlockRequest { piece: 2, begin: BLOCK_SIZE, length: BLOCK_SIZE };
    assert!(matches!(
        p.block_received(PeerKey(1), wrong, &mut Vec::new()),
        Err(PickerError::InvalidBlock { .. })
    ));
    receive(&mut p, PeerKey(1), r[0]);
    assert_eq!(receive(&mut p, PeerKey(1), r[1]).0, BlockOutcome::PieceComplete);
}

#[test]
fn allowed_fast_only_when_choked() {
    let mut p = setup("1000", "1111");
    let mut out = Vec::new();
    p.pick_blocks(PeerKey(1), 10, Some(&[]), &mut out).unwrap();
    assert!(out.is_empty(), "choked without allowed-fast pieces: nothing");
    // Piece 0 we have, 9 is out of range: both ignored.
    p.pick_blocks(PeerKey(1), 10, Some(&[0, 9, 3]), &mut out).unwrap();
    p.check_invariants();
    assert_eq!(pieces_of(&out), vec![3]);
    assert_eq!(out.len(), 4);
    out.clear();
    p.pick_blocks(PeerKey(1), 10, Some(&[3]), &mut out).unwrap();
    assert!(out.is_empty(), "piece 3 is fully reserved");
}

#[test]
fn have_messages_and_interest() {
    let mut p = setup("10", "00");
    p.add_peer(PeerKey(7)).unwrap();
    assert_eq!(p.add_peer(PeerKey(7)), Err(PickerError::DuplicatePeer(PeerKey(7))));
    assert!(!p.is_interesting(PeerKey(7)).unwrap());
    assert!(!p.peer_has(PeerKey(7), 0).unwrap(), "we have piece 0");
    assert!(p.peer_has(PeerKey(7), 1).unwrap());
    assert!(p.peer_has(PeerKey(7), 1).unwrap(), "a repeated have changes nothing");
    p.check_invariants();
    assert_eq!(p.availability(1), 1);
    assert!(p.is_interesting(PeerKey(7)).unwrap());
    assert!(matches!(p.peer_has(PeerKey(7), 2), Err(PickerError::PieceOutOfRange { .. })));
    // A full bitfield makes it a seed; replacing it with a partial one undoes it.
    p.add_peer_bitfield(PeerKey(7), &Bitfield::full(2)).unwrap();
    p.check_invariants();
    p.add_peer_bitfield(PeerKey(7), &bits("10", |c| c == '1')).unwrap();
    p.check_invariants();
    assert_eq!(p.availability(1), 0);
    assert!(matches!(
        p.add_peer_bitfield(PeerKey(7), &Bitfield::new(3)),
        Err(PickerError::BitfieldLength { got: 3, expected: 2 })
    ));
}

#[test]
fn bad_inputs_are_errors() {
    let none = Bitfield::new(1);
    assert!(Picker::new(PickerConfig::default(), 0, 10, &none, &none, 0).is_err());
    assert!(
        Picker::new(PickerConfig::default(), MAX_PIECE_LENGTH + 1, 10, &none, &none, 0).is_err()
    );
    assert!(Picker::new(PickerConfig::default(), 16, 10, &Bitfield::new(2), &none, 0).is_err());
    let cfg = PickerConfig { endgame_requesters_max: 9, ..PickerConfig::default() };
    assert!(matches!(Picker::new(cfg, 16, 10, &none, &none, 0), Err(PickerError::BadConfig(_))));
    let cfg = PickerConfig { max_peers: 1, ..PickerConfig::default() };
    let mut p = Picker::new(cfg, 16, 10, &none, &none, 0).unwrap();
    p.add_peer(PeerKey(1)).unwrap();
    assert_eq!(p.add_peer(PeerKey(2)), Err(PickerError::TooManyPeers { limit: 1 }));
    let mut p = setup("00", "11");
    let mut out = Vec::new();
    assert_eq!(
        p.pick_blocks(PeerKey(9), 1, None, &mut out),
        Err(PickerError::UnknownPeer(PeerKey(9)))
    );
    for b in [
        BlockRequest { piece: 2, begin: 0, length: BLOCK_SIZE },
        BlockRequest { piece: 0, begin: 1, length: BLOCK_SIZE },
        BlockRequest { piece: 0, begin: 4 * BLOCK_SIZE, length: BLOCK_SIZE },
        BlockRequest { piece: 0, begin: 0, length: 0 },
    ] {
        assert!(matches!(
            p.block_received(PeerKey(1), b, &mut Vec::new()),
            Err(PickerError::InvalidBlock { .. })
        ));
        assert!(p.request_timed_out(PeerKey(1), b).is_err());
    }
    let mut c = Vec::new();
    assert_eq!(p.piece_failed(0, &mut c), Err(PickerError::PieceNotComplete(0)));
    assert!(matches!(p.piece_verified(5), Err(PickerError::PieceOutOfRange { .. })));
    assert!(matches!(p.set_wanted(5, true), Err(PickerError::PieceOutOfRange { .. })));
    p.check_invariants();
}

#[test]
fn request_limit_per_peer() {
    let cfg = PickerConfig { max_requests_per_peer: 3, ..PickerConfig::default() };
    let n = 4;
    let mut p =
        Picker::new(cfg, PL, n * PL as u64, &Bitfield::new(4), &Bitfield::full(4), 3).unwrap();
    p.add_peer_have_all(SEED_A).unwrap();
    assert_eq!(pick(&mut p, SEED_A, 10).len(), 3);
    assert_eq!(pick(&mut p, SEED_A, 10).len(), 0);
}

#[test]
fn empty_torrent_is_finished() {
    let p = Picker::new(PickerConfig::default(), PL, 0, &Bitfield::new(0), &Bitfield::new(0), 0)
        .unwrap();
    p.check_invariants();
    assert!(p.is_finished());
}

// ----- property test: random operations keep the invariants, and a seed then finishes the torrent -----

#[derive(Debug, Clone)]
enum Op {
    Connect(u8, Vec<bool>),
    ConnectSeed(u8),
    Have(u8, u8),
    Pick(u8, u8, bool),
    Deliver(u8, u16),
    Timeout(u8, u16),
    Snub(u8, bool),
    Disconnect(u8),
    Choke(u8),
    Hash(u8, bool),
    Want(u8, bool),
}

fn op(pieces: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6u8, proptest::collection::vec(any::<bool>(), pieces))
            .prop_map(|(p, b)| Op::Connect(p, b)),
        (0..6u8).prop_map(Op::ConnectSeed),
        (0..6u8, any::<u8>()).prop_map(|(p, i)| Op::Have(p, i)),
        (0..6u8, 0..12u8, any::<bool>()).prop_map(|(p, m, c)| Op::Pick(p, m, c)),
        (0..6u8, any::<u16>()).prop_map(|(p, i)| Op::Deliver(p, i)),
        (0..6u8, any::<u16>()).prop_map(|(p, i)| Op::Timeout(p, i)),
        (0..6u8, any::<bool>()).prop_map(|(p, s)| Op::Snub(p, s)),
        (0..6u8).prop_map(Op::Disconnect),
        (0..6u8).prop_map(Op::Choke),
        (any::<u8>(), any::<bool>()).prop_map(|(i, ok)| Op::Hash(i, ok)),
        (any::<u8>(), any::<bool>()).prop_map(|(i, w)| Op::Want(i, w)),
    ]
}

/// What a driver remembers: outstanding requests per peer, completed pieces.
struct Driver {
    outstanding: HashMap<PeerKey, Vec<BlockRequest>>,
    complete: Vec<u32>,
}

impl Driver {
    fn deliver(&mut self, p: &mut Picker, peer: PeerKey, b: BlockRequest) {
        let mut cancel = Vec::new();
        let r = p.block_received(peer, b, &mut cancel).unwrap();
        if let Some(v) = self.outstanding.get_mut(&peer) {
            v.retain(|x| *x != b);
        }
        for c in cancel {
            assert_ne!(c, peer);
            let v = self.outstanding.get_mut(&c).expect("cancel names a connected peer");
            assert!(v.contains(&b), "cancel for a block {c:?} did not request");
            v.retain(|x| *x != b);
        }
        if r == BlockOutcome::PieceComplete {
            self.complete.push(b.piece);
        }
    }
}

fn run_ops(pieces: u32, total: u64, seed: u64, ops: Vec<Op>) {
    let mut p = Picker::new(
        PickerConfig::default(),
        PL,
        total,
        &Bitfield::new(pieces),
        &Bitfield::full(pieces),
        seed,
    )
    .unwrap();
    let mut d = Driver { outstanding: HashMap::new(), complete: Vec::new() };
    let key = |i: u8| PeerKey(i as u64);
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Connect(i, b) => {
                let mut bf = Bitfield::new(pieces);
                for (j, &on) in b.iter().enumerate() {
                    if on {
                        bf.set(j as u32);
                    }
                }
                if d.outstanding.contains_key(&key(i)) {
                    continue;
                }
                p.add_peer_bitfield(key(i), &bf).unwrap();
                d.outstanding.insert(key(i), Vec::new());
            }
            Op::ConnectSeed(i) => {
                if d.outstanding.contains_key(&key(i)) {
                    continue;
                }
                p.add_peer_have_all(key(i)).unwrap();
                d.outstanding.insert(key(i), Vec::new());
            }
            Op::Have(i, piece) => {
                let r = p.peer_has(key(i), piece as u32 % pieces);
                assert_eq!(r.is_ok(), d.outstanding.contains_key(&key(i)));
            }
            Op::Pick(i, max, choked) => {
                out.clear();
                let fast = [0, pieces / 2];
                let r = p.pick_blocks(key(i), max as usize, choked.then_some(&fast[..]), &mut out);
                let Some(v) = d.outstanding.get_mut(&key(i)) else {
                    assert!(r.is_err());
                    continue;
                };
                for b in &out {
                    assert!(!v.contains(b), "a peer is never asked for a block twice");
                    if choked {
                        assert!(fast.contains(&b.piece));
                    }
                }
                v.extend_from_slice(&out);
            }
            Op::Deliver(i, n) => {
                let Some(v) = d.outstanding.get(&key(i)) else { continue };
                if v.is_empty() {
                    continue;
                }
                let b = v[n as usize % v.len()];
                d.deliver(&mut p, key(i), b);
            }
            Op::Timeout(i, n) => {
                let Some(v) = d.outstanding.get_mut(&key(i)) else { continue };
                if v.is_empty() {
                    continue;
                }
                let b = v.remove(n as usize % v.len());
                assert!(p.request_timed_out(key(i), b).unwrap());
            }
            Op::Snub(i, s) => {
                assert_eq!(p.set_snubbed(key(i), s).is_ok(), d.outstanding.contains_key(&key(i)));
            }
            Op::Disconnect(i) => {
                assert_eq!(p.remove_peer(key(i)).is_ok(), d.outstanding.remove(&key(i)).is_some());
            }
            Op::Choke(i) => {
                let Some(v) = d.outstanding.get_mut(&key(i)) else { continue };
                assert_eq!(p.release_requests(key(i)).unwrap(), v.len());
                v.clear();
            }
            Op::Hash(i, ok) => {
                if d.complete.is_empty() {
                    continue;
                }
                let piece = d.complete.remove(i as usize % d.complete.len());
                if ok {
                    p.piece_verified(piece).unwrap();
                } else {
                    let mut c = Vec::new();
                    p.piece_failed(piece, &mut c).unwrap();
                    assert!(!c.is_empty());
                }
            }
            Op::Want(i, w) => p.set_wanted(i as u32 % pieces, w).unwrap(),
        }
        p.check_invariants();
    }
    // Finish: want everything, a seed connects, pending hashes pass, and
    // every peer delivers what it has outstanding, until done (bounded).
    for piece in 0..pieces {
        p.set_wanted(piece, true).unwrap();
    }
    let finisher = PeerKey(1000);
    p.add_peer_have_all(finisher).unwrap();
    d.outstanding.insert(finisher, Vec::new());
    for _round in 0..(pieces as usize * 8 + 16) {
        for piece in std::mem::take(&mut d.complete) {
            p.piece_verified(piece).unwrap();
        }
        if p.is_finished() {
            break;
        }
        out.clear();
        p.pick_blocks(finisher, 16, None, &mut out).unwrap();
        d.outstanding.get_mut(&finisher).unwrap().extend_from_slice(&out);
        let peers: Vec<PeerKey> = d.outstanding.keys().copied().collect();
        for peer in peers {
            while let Some(b) = d.outstanding.get_mut(&peer).and_then(|v| v.pop()) {
                d.deliver(&mut p, peer, b);
            }
        }
        p.check_invariants();
    }
    assert!(p.is_finished(), "every wanted piece completes");
    p.check_invariants();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_keep_invariants_and_finish(
        seed in any::<u64>(),
        short in 1..(4 * BLOCK_SIZE as u64),
        ops in proptest::collection::vec(op(9), 0..200),
    ) {
        run_ops(9, 8 * PL as u64 + short, seed, ops);
    }
}

/// Goal: a web seed takes whole new pieces, rarest first, only up to the
/// availability asked for, and never a piece a peer has started.
#[test]
fn whole_piece_picks_are_whole_rare_and_untouched() {
    let mut p = Picker::new(
        PickerConfig::default(),
        2 * BLOCK_SIZE,
        4 * 2 * BLOCK_SIZE as u64,
        &Bitfield::new(4),
        &Bitfield::full(4),
        1,
    )
    .unwrap();
    let web = PeerKey(100);
    let peer = PeerKey(1);
    p.add_peer(web).unwrap();
    let mut has = Bitfield::new(4);
    has.set(0);
    has.set(1);
    p.add_peer_bitfield(peer, &has).unwrap();
    // The peer starts piece 0 or 1.
    let mut out = Vec::new();
    p.pick_blocks(peer, 1, None, &mut out).unwrap();
    let started = out[0].piece;
    // Only pieces nobody has: 2 and 3, whole.
    let mut picked = Vec::new();
    for _ in 0..2 {
        out.clear();
        let piece = p.pick_whole_piece(web, 0, &mut out).unwrap().unwrap();
        assert!(piece >= 2);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.piece == piece));
        picked.push(piece);
    }
    out.clear();
    assert_eq!(p.pick_whole_piece(web, 0, &mut out).unwrap(), None);
    // With a higher limit, the piece the peer has and did not start.
    let piece = p.pick_whole_piece(web, u32::MAX, &mut out).unwrap().unwrap();
    assert!(piece < 2 && piece != started);
    assert_eq!(p.pick_whole_piece(web, u32::MAX, &mut out).unwrap(), None);
    p.check_invariants();
}
