//! Both sides of the MSE handshake against each other, every failure mode,
//! and arbitrary input.

use super::*;
use proptest::prelude::*;

const HASH: [u8; 20] = [7; 20];
const KEY_A: [u8; 20] = [0x11; 20];
const KEY_B: [u8; 20] = [0x22; 20];

fn known(req2: &[u8; 20]) -> Option<[u8; 20]> {
    (*req2 == req2_hash(&HASH)).then_some(HASH)
}

fn nobody(_: &[u8; 20]) -> Option<[u8; 20]> {
    None
}

/// Runs both sides, passing bytes `chunk` at a time, until both are done.
fn run(
    initiator: &mut Initiator,
    responder: &mut Responder,
    chunk: usize,
) -> Result<(), (&'static str, MseError)> {
    let (mut a_done, mut b_done) = (false, false);
    for _ in 0..10_000 {
        let mut to_b = Vec::new();
        initiator.take_output(&mut to_b);
        for piece in to_b.chunks(chunk) {
            b_done = responder.feed(piece, known).map_err(|e| ("responder", e))? == Status::Done;
        }
        let mut to_a = Vec::new();
        responder.take_output(&mut to_a);
        for piece in to_a.chunks(chunk) {
            a_done = initiator.feed(piece).map_err(|e| ("initiator", e))? == Status::Done;
        }
        if a_done && b_done {
            let (mut rest_a, mut rest_b) = (Vec::new(), Vec::new());
            initiator.take_output(&mut rest_a);
            responder.take_output(&mut rest_b);
            assert!(rest_a.is_empty() && rest_b.is_empty(), "nothing left to send when done");
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn pair(
    provide: u32,
    policy: EncryptionPolicy,
    pad_a: usize,
    pad_b: usize,
    ia: &[u8],
) -> (Initiator, Responder) {
    let initiator = Initiator::new(HASH, KEY_A, provide, &vec![0xaa; pad_a], ia.to_vec()).unwrap();
    let responder = Responder::new(KEY_B, &vec![0xbb; pad_b], policy);
    (initiator, responder)
}

#[test]
fn dh_agrees_and_values_are_96_bytes() {
    let ya = public_key(&KEY_A);
    let yb = public_key(&KEY_B);
    assert_eq!(shared_secret(&KEY_A, &yb).unwrap(), shared_secret(&KEY_B, &ya).unwrap());
    // 2^x for a small x is mostly leading zeros: still 96 bytes, left-padded.
    let mut small = [0u8; 20];
    small[19] = 3;
    let y = public_key(&small);
    assert_eq!(y[95], 8);
    assert!(y[..95].iter().all(|&b| b == 0));
}

#[test]
fn degenerate_public_values_are_refused() {
    let p = prime().to_bytes_be();
    let p_minus_1 = to_fixed(&(prime() - 1u32));
    for y in [[0u8; 96], to_fixed(&BigUint::from(1u32)), p_minus_1] {
        assert_eq!(shared_secret(&KEY_A, &y), Err(MseError::BadPublicKey));
    }
    assert_eq!(shared_secret(&KEY_A, &p), Err(MseError::BadPublicKey));
    assert_eq!(shared_secret(&KEY_A, &[0xff; 96]), Err(MseError::BadPublicKey));
}

#[test]
fn rc4_both_ways_with_max_pads_and_an_initial_payload() {
    let ia = b"\x13BitTorrent protocol and more";
    for chunk in [1, 7, 100, 100_000] {
        let (mut a, mut b) =
            pair(CRYPTO_RC4, EncryptionPolicy::Require, PAD_MAX_LEN, PAD_MAX_LEN, ia);
        run(&mut a, &mut b, chunk).unwrap();
        let mut a = a.finish().unwrap();
        let mut b = b.finish().unwrap();
        assert_eq!((a.selected, b.selected), (CRYPTO_RC4, CRYPTO_RC4));
        assert_eq!(b.info_hash, HASH);
        assert_eq!(b.payload, ia, "the responder gets the IA in plaintext");
        assert!(a.payload.is_empty());
        // Payload both ways through the ciphers, in place.
        let mut msg = b"interested".to_vec();
        a.encrypt.apply(&mut msg);
        assert_ne!(msg, b"interested");
        b.decrypt.apply(&mut msg);
        assert_eq!(msg, b"interested");
        let mut reply = b"unchoke".to_vec();
        b.encrypt.apply(&mut reply);
        a.decrypt.apply(&mut reply);
        assert_eq!(reply, b"unchoke");
    }
}

#[test]
fn cipher_apply_matches_the_crate_across_chunk_boundaries() {
    let secret = [3u8; PUBLIC_KEY_LEN];
    let mut ours = Cipher::Rc4(Box::new(keyed_rc4(b"keyA", &secret, &HASH)));
    let mut reference = keyed_rc4(b"keyA", &secret, &HASH);
    for len in [0, 1, KEYSTREAM_CHUNK_LEN - 1, KEYSTREAM_CHUNK_LEN + 1, 3 * KEYSTREAM_CHUNK_LEN] {
        let mut a: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut b = a.clone();
        ours.apply(&mut a);
        reference.apply_keystream(&mut b);
        assert_eq!(a, b, "length {len}");
    }
}

#[test]
fn prefer_selects_plaintext_when_offered_and_rc4_otherwise() {
    let (mut a, mut b) = pair(CRYPTO_PLAINTEXT | CRYPTO_RC4, EncryptionPolicy::Prefer, 0, 0, b"");
    run(&mut a, &mut b, 1000).unwrap();
    let (mut a, b) = (a.finish().unwrap(), b.finish().unwrap());
    assert_eq!((a.selected, b.selected), (CRYPTO_PLAINTEXT, CRYPTO_PLAINTEXT));
    assert!(!a.encrypt.is_rc4() && !b.decrypt.is_rc4());
    let mut msg = b"plain".to_vec();
    a.encrypt.apply(&mut msg);
    assert_eq!(msg, b"plain");

    let (mut a, mut b) = pair(CRYPTO_RC4, EncryptionPolicy::Prefer, 3, 5, b"x");
    run(&mut a, &mut b, 1000).unwrap();
    assert_eq!(b.finish().unwrap().selected, CRYPTO_RC4);
    // Require takes RC4 even when plaintext is offered too.
    let (mut a, mut b) = pair(CRYPTO_PLAINTEXT | CRYPTO_RC4, EncryptionPolicy::Require, 0, 0, b"");
    run(&mut a, &mut b, 1000).unwrap();
    assert_eq!(a.finish().unwrap().selected, CRYPTO_RC4);
}

#[test]
fn payload_behind_the_handshake_is_decrypted_per_the_selection() {
    for (provide, policy) in [
        (CRYPTO_RC4, EncryptionPolicy::Require),
        (CRYPTO_PLAINTEXT | CRYPTO_RC4, EncryptionPolicy::Prefer),
    ] {
        let (mut a, mut b) = pair(provide, policy, 10, 20, b"IA");
        // Drive by hand so the responder's payload rides with message 4 and
        // the initiator's with message 3's reply.
        let mut to_b = Vec::new();
        a.take_output(&mut to_b);
        assert_eq!(b.feed(&to_b, known).unwrap(), Status::NeedMore);
        let mut to_a = Vec::new();
        b.take_output(&mut to_a);
        assert_eq!(a.feed(&to_a).unwrap(), Status::NeedMore);
        let mut to_b = Vec::new();
        a.take_output(&mut to_b);
        to_b.extend_from_slice(b"early"); // sent before message 4 arrived
        assert_eq!(b.feed(&to_b, known).unwrap(), Status::Done);
        let mut to_a = Vec::new();
        b.take_output(&mut to_a);
        let b_out = b.finish().unwrap();
        // The "early" bytes were sent as payload by a side that did not know
        // the selection: they decrypt only with a plaintext selection.
        if b_out.selected == CRYPTO_PLAINTEXT {
            assert_eq!(b_out.payload, b"IAearly");
        } else {
            assert_eq!(&b_out.payload[..2], b"IA");
        }
        let mut b_out = b_out;
        let mut reply = b"BT handshake".to_vec();
        b_out.encrypt.apply(&mut reply);
        to_a.extend_from_slice(&reply);
        assert_eq!(a.feed(&to_a).unwrap(), Status::Done);
        assert_eq!(a.finish().unwrap().payload, b"BT handshake");
    }
}

#[test]
fn wrong_skey_unknown_torrent() {
    let mut a = Initiator::new([9; 20], KEY_A, CRYPTO_RC4, &[], Vec::new()).unwrap();
    let mut b = Responder::new(KEY_B, &[], EncryptionPolicy::Prefer);
    let err = run(&mut a, &mut b, 1000).unwrap_err();
    assert_eq!(err, ("responder", MseError::UnknownTorrent));
    assert_eq!(b.feed(b"more", known), Err(MseError::Failed), "a failed handshake stays failed");
    // A responder whose map says the req2 hash belongs to another torrent:
    // the keys differ, so the VC decrypts to garbage.
    let mut a = Initiator::new(HASH, KEY_A, CRYPTO_RC4, &[], Vec::new()).unwrap();
    let mut b = Responder::new(KEY_B, &[], EncryptionPolicy::Prefer);
    let mut to_b = Vec::new();
    a.take_output(&mut to_b);
    b.feed(&to_b, nobody).unwrap();
    let mut to_a = Vec::new();
    b.take_output(&mut to_a);
    a.feed(&to_a).unwrap();
    let mut to_b = Vec::new();
    a.take_output(&mut to_b);
    assert_eq!(b.feed(&to_b, |_| Some([1; 20])), Err(MseError::BadVc));
}

#[test]
fn no_common_crypto_is_refused() {
    let (mut a, mut b) = pair(CRYPTO_PLAINTEXT, EncryptionPolicy::Require, 0, 0, b"");
    let err = run(&mut a, &mut b, 1000).unwrap_err();
    assert_eq!(
        err,
        ("responder", MseError::NoCommonCrypto { provided: CRYPTO_PLAINTEXT, allowed: CRYPTO_RC4 })
    );
    let (mut a, mut b) = pair(0x10, EncryptionPolicy::Prefer, 0, 0, b"");
    assert!(matches!(
        run(&mut a, &mut b, 1000),
        Err(("responder", MseError::NoCommonCrypto { .. }))
    ));
}

/// A responder that answers message 3 with a chosen `crypto_select` and pad
/// length, for the initiator's checks.
fn fake_reply(a: &mut Initiator, selected: u32, pad_len: u16, garbage: usize) -> Vec<u8> {
    let mut to_b = Vec::new();
    a.take_output(&mut to_b);
    let ya = &to_b[..PUBLIC_KEY_LEN];
    let secret = shared_secret(&KEY_B, ya).unwrap();
    let mut out = public_key(&KEY_B).to_vec();
    out.extend(std::iter::repeat_n(0x5a, garbage));
    let mut encrypt = keyed_rc4(b"keyB", &secret, &HASH);
    let mut tail = vec![0u8; VC_LEN];
    tail.extend_from_slice(&selected.to_be_bytes());
    tail.extend_from_slice(&pad_len.to_be_bytes());
    encrypt.apply_keystream(&mut tail);
    out.extend_from_slice(&tail);
    out
}

#[test]
fn initiator_refuses_bad_crypto_select() {
    for selected in [0, CRYPTO_PLAINTEXT | CRYPTO_RC4, 0x04, CRYPTO_PLAINTEXT] {
        let mut a = Initiator::new(HASH, KEY_A, CRYPTO_RC4, &[], Vec::new()).unwrap();
        let reply = fake_reply(&mut a, selected, 0, 0);
        assert_eq!(
            a.feed(&reply),
            Err(MseError::BadSelect { selected, provided: CRYPTO_RC4 }),
            "select {selected:#x}"
        );
    }
    let mut a = Initiator::new(HASH, KEY_A, CRYPTO_RC4, &[], Vec::new()).unwrap();
    let reply = fake_reply(&mut a, CRYPTO_RC4, 513, 0);
    assert_eq!(a.feed(&reply), Err(MseError::PadTooLong(513)));
    // The largest PadB is fine, and the reply is found behind it.
    let mut a = Initiator::new(HASH, KEY_A, CRYPTO_RC4, &[], Vec::new()).unwrap();
    let reply = fake_reply(&mut a, CRYPTO_RC4, 0, PAD_MAX_LEN);
    assert_eq!(a.feed(&reply), Ok(Status::Done));
}

#[test]
fn garbage_before_the_vc_fails_once_the_scan_limit_passes() {
    let mut a = Initiator::new(HASH, KEY_A, CRYPTO_RC4, &[], Vec::new()).unwrap();
    let reply = fake_reply(&mut a, CRYPTO_RC4, 0, PAD_MAX_LEN + 1);
    assert_eq!(a.feed(&reply), Err(MseError::VcNotFound));
    // Garbage that never holds the VC: the initiator stops after Yb + 520.
    let mut a = Initiator::new(HASH, KEY_A, CRYPTO_RC4, &[], Vec::new()).unwrap();
    let mut out = Vec::new();
    a.take_output(&mut out);
    assert_eq!(a.feed(&public_key(&KEY_B)), Ok(Status::NeedMore));
    assert_eq!(a.feed(&[0x5a; VC_SCAN_MAX_LEN - 1]), Ok(Status::NeedMore));
    assert_eq!(a.feed(&[0x5a]), Err(MseError::VcNotFound));
}

#[test]
fn responder_scans_for_req1_no_further_than_the_largest_pad() {
    let mut b = Responder::new(KEY_B, &[], EncryptionPolicy::Prefer);
    assert_eq!(b.feed(&public_key(&KEY_A), known), Ok(Status::NeedMore));
    // A pad of the largest size that never finishes: still waiting...
    assert_eq!(b.feed(&[0x33; REQ1_SCAN_MAX_LEN - 1], known), Ok(Status::NeedMore));
    // ...until the scan limit, which fails.
    assert_eq!(b.feed(&[0x33], known), Err(MseError::Req1NotFound));
    // A largest PadA before req1 still works.
    let (mut a, mut b) = pair(CRYPTO_RC4, EncryptionPolicy::Prefer, PAD_MAX_LEN, 0, b"");
    run(&mut a, &mut b, 64).unwrap();
}

#[test]
fn oversized_pad_c_and_initial_payload_are_refused() {
    assert_eq!(
        Initiator::new(HASH, KEY_A, CRYPTO_RC4, &[], vec![0; INITIAL_PAYLOAD_MAX_LEN + 1]).err(),
        Some(MseError::InitialPayloadTooLong(INITIAL_PAYLOAD_MAX_LEN + 1))
    );
    // Build message 3 by hand with a PadC length of 513, then with an IA of
    // 16 KiB + 1.
    for (pad_c, ia_len, want) in [
        (513u16, 0u16, MseError::PadTooLong(513)),
        (0, INITIAL_PAYLOAD_MAX_LEN as u16 + 1, MseError::InitialPayloadTooLong(16385)),
    ] {
        let mut b = Responder::new(KEY_B, &[], EncryptionPolicy::Prefer);
        b.feed(&public_key(&KEY_A), known).unwrap();
        let mut yb = Vec::new();
        b.take_output(&mut yb);
        let secret = shared_secret(&KEY_A, &yb[..PUBLIC_KEY_LEN]).unwrap();
        let mut msg = sha1_parts(&[b"req1", &secret]).to_vec();
        let mut x = req2_hash(&HASH);
        x.iter_mut().zip(sha1_parts(&[b"req3", &secret])).for_each(|(a, b)| *a ^= b);
        msg.extend_from_slice(&x);
        let mut tail = vec![0u8; VC_LEN];
        tail.extend_from_slice(&CRYPTO_RC4.to_be_bytes());
        tail.extend_from_slice(&pad_c.to_be_bytes());
        if pad_c == 0 {
            tail.extend_from_slice(&ia_len.to_be_bytes());
        }
        keyed_rc4(b"keyA", &secret, &HASH).apply_keystream(&mut tail);
        msg.extend_from_slice(&tail);
        assert_eq!(b.feed(&msg, known), Err(want));
    }
}

#[test]
fn finish_before_done_is_none() {
    let a = Initiator::new(HASH, KEY_A, CRYPTO_RC4, &[], Vec::new()).unwrap();
    assert!(a.finish().is_none());
    assert!(Responder::new(KEY_B, &[], EncryptionPolicy::Prefer).finish().is_none());
}

#[test]
fn policy_parses_and_prints() {
    for p in [EncryptionPolicy::Disable, EncryptionPolicy::Prefer, EncryptionPolicy::Require] {
        assert_eq!(p.to_string().parse::<EncryptionPolicy>(), Ok(p));
    }
    assert!("always".parse::<EncryptionPolicy>().is_err());
    assert_eq!(EncryptionPolicy::Disable.crypto_select(3), None);
    assert!(!EncryptionPolicy::Require.accepts_plaintext());
    assert!(!EncryptionPolicy::Disable.uses_mse());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn responder_never_panics_and_stays_bounded(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 0..40)
    ) {
        let mut b = Responder::new(KEY_B, &[1, 2, 3], EncryptionPolicy::Prefer);
        for chunk in &chunks {
            match b.feed(chunk, |_| Some(HASH)) {
                Ok(Status::NeedMore) => {
                    prop_assert!(b.input.bytes.len() <= HANDSHAKE_MAX_BYTES);
                }
                Ok(Status::Done) | Err(_) => break,
            }
        }
    }

    #[test]
    fn initiator_never_panics_and_stays_bounded(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..700), 0..40)
    ) {
        let mut a = Initiator::new(HASH, KEY_A, CRYPTO_RC4 | CRYPTO_PLAINTEXT, &[], Vec::new()).unwrap();
        for chunk in &chunks {
            match a.feed(chunk) {
                Ok(Status::NeedMore) => prop_assert!(a.input.bytes.len() <= HANDSHAKE_MAX_BYTES),
                Ok(Status::Done) | Err(_) => break,
            }
        }
    }

    /// A real message 3 with arbitrary bytes flipped: an error or a
    /// finished handshake, never a panic.
    #[test]
    fn corrupted_request_never_panics(flip_at in 0usize..800, value in any::<u8>(), pad in 0usize..=512) {
        let (mut a, mut b) = pair(CRYPTO_RC4, EncryptionPolicy::Prefer, pad, 0, b"ia");
        let mut to_b = Vec::new();
        a.take_output(&mut to_b);
        let _ = b.feed(&to_b, known);
        let mut to_a = Vec::new();
        b.take_output(&mut to_a);
        let _ = a.feed(&to_a);
        let mut msg3 = Vec::new();
        a.take_output(&mut msg3);
        if let Some(byte) = msg3.get_mut(flip_at) {
            *byte ^= value;
        }
        let _ = b.feed(&msg3, known);
    }
}
