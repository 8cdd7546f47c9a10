//! Message stream encryption (MSE/PE): the obfuscated handshake that many
//! peers require before the BitTorrent handshake, as a sans-IO state machine
//! for both sides.
//!
//! Layer: pure core. Bytes in, bytes out: the driver feeds what it read with
//! `feed`, sends what `take_output` appends, and once the state is
//! [`Status::Done`] takes the [`Outcome`]: the two payload ciphers (RC4 or
//! plaintext, as selected) and the payload bytes that arrived with the
//! handshake, already decrypted. Randomness (private keys, pads) comes in as
//! arguments, so tests are deterministic.
//!
//! The exchange (A dials, B answers; `S` is the DH secret, `SKEY` the info
//! hash):
//!
//! ```text
//! 1 A->B: Ya, PadA
//! 2 B->A: Yb, PadB
//! 3 A->B: HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A: ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload)
//! 5 A->B: ENCRYPT2(payload)
//! ```
//!
//! Invariants:
//! * every scan is bounded as the spec says: the `req1` hash must start
//!   within [`PAD_MAX_LEN`] bytes after `Ya`, the encrypted VC within
//!   [`PAD_MAX_LEN`] bytes after `Yb`; pads are at most [`PAD_MAX_LEN`] and
//!   the initial payload at most [`INITIAL_PAYLOAD_MAX_LEN`] bytes, so the
//!   bytes buffered before the handshake finishes stay under
//!   [`HANDSHAKE_MAX_BYTES`] plus one read;
//! * hostile input gives an [`MseError`], never a panic; after an error every
//!   call returns [`MseError::Failed`];
//! * a selected cipher is exactly one method both sides allow.

use num_bigint::BigUint;
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};
use std::sync::OnceLock;

/// Bytes of a DH public value (768 bits).
pub const PUBLIC_KEY_LEN: usize = 96;
/// Bytes of a DH private key (160 bits).
pub const PRIVATE_KEY_LEN: usize = 20;
/// Longest pad (PadA, PadB, PadC, PadD) the spec allows.
pub const PAD_MAX_LEN: usize = 512;
/// Bytes of the verification constant (eight zeros).
pub const VC_LEN: usize = 8;
/// Keystream bytes thrown away after keying RC4 (the spec's RC4-drop1024).
pub const KEYSTREAM_DISCARD_LEN: usize = 1024;
/// Largest initial payload (IA) accepted. The field allows 65535; a real one
/// is a 68-byte BitTorrent handshake, perhaps with a few messages behind it.
pub const INITIAL_PAYLOAD_MAX_LEN: usize = 16 * 1024;
/// `crypto_provide`/`crypto_select` bit: plaintext payload after the handshake.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
/// `crypto_provide`/`crypto_select` bit: RC4 payload.
pub const CRYPTO_RC4: u32 = 0x02;
/// Bytes the initiator scans after `Yb` for the encrypted VC.
pub const VC_SCAN_MAX_LEN: usize = PAD_MAX_LEN + VC_LEN;
/// Bytes the responder scans after `Ya` for `HASH('req1', S)`.
pub const REQ1_SCAN_MAX_LEN: usize = PAD_MAX_LEN + HASH_LEN;
/// Most bytes either side buffers before the handshake is done: the longest
/// legal responder input (Ya, PadA, two hashes, the encrypted header, PadC,
/// the IA).
pub const HANDSHAKE_MAX_BYTES: usize = PUBLIC_KEY_LEN
    + PAD_MAX_LEN
    + 2 * HASH_LEN
    + VC_LEN
    + 4
    + 2
    + PAD_MAX_LEN
    + 2
    + INITIAL_PAYLOAD_MAX_LEN;

const HASH_LEN: usize = 20;

/// Keystream bytes generated at a time by [`Cipher::apply`] (on the stack).
const KEYSTREAM_CHUNK_LEN: usize = 4096;

/// The 768-bit safe prime of the spec (Oakley group 1), generator 2.
const PRIME_HEX: &[u8] = b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";

fn prime() -> &'static BigUint {
    static PRIME: OnceLock<BigUint> = OnceLock::new();
    PRIME.get_or_init(|| BigUint::parse_bytes(PRIME_HEX, 16).expect("the constant is valid hex"))
}

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MseError {
    #[error("the peer's DH public value is degenerate (0, 1, p-1 or larger)")]
    BadPublicKey,
    #[error("no encrypted verification constant within {VC_SCAN_MAX_LEN} bytes after Yb")]
    VcNotFound,
    #[error("no req1 hash within {REQ1_SCAN_MAX_LEN} bytes after Ya")]
    Req1NotFound,
    #[error("the req2 hash matches no torrent here (unknown SKEY)")]
    UnknownTorrent,
    #[error("the verification constant did not decrypt to zeros (wrong SKEY)")]
    BadVc,
    #[error("pad length {0} exceeds {PAD_MAX_LEN}")]
    PadTooLong(usize),
    #[error("initial payload length {0} exceeds {INITIAL_PAYLOAD_MAX_LEN}")]
    InitialPayloadTooLong(usize),
    #[error("the peer provides crypto {provided:#x}; this side allows {allowed:#x}")]
    NoCommonCrypto { provided: u32, allowed: u32 },
    #[error("the peer selected crypto {selected:#x}; we provided {provided:#x}")]
    BadSelect { selected: u32, provided: u32 },
    #[error("more than {HANDSHAKE_MAX_BYTES} bytes buffered before the handshake finished")]
    TooMuchData,
    #[error("the handshake already failed")]
    Failed,
}

/// The encryption policy (`--encryption`, daemon key `encryption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncryptionPolicy {
    /// Plaintext only: no MSE either way.
    Disable,
    /// Both ways in: outgoing tries MSE first (payload plaintext or RC4, the
    /// responder chooses) and retries in plaintext; incoming accepts both and
    /// selects plaintext payload when offered.
    #[default]
    Prefer,
    /// MSE with an RC4 payload only, both ways.
    Require,
}

impl EncryptionPolicy {
    /// The `crypto_provide` bits we offer as initiator.
    pub fn crypto_provide(self) -> u32 {
        match self {
            EncryptionPolicy::Disable => 0,
            EncryptionPolicy::Prefer => CRYPTO_PLAINTEXT | CRYPTO_RC4,
            EncryptionPolicy::Require => CRYPTO_RC4,
        }
    }

    /// The method we select as responder from the peer's `crypto_provide`.
    pub fn crypto_select(self, provided: u32) -> Option<u32> {
        match self {
            EncryptionPolicy::Disable => None,
            EncryptionPolicy::Prefer if provided & CRYPTO_PLAINTEXT != 0 => Some(CRYPTO_PLAINTEXT),
            EncryptionPolicy::Prefer | EncryptionPolicy::Require => {
                (provided & CRYPTO_RC4 != 0).then_some(CRYPTO_RC4)
            }
        }
    }

    /// Incoming plaintext BitTorrent handshakes are accepted.
    pub fn accepts_plaintext(self) -> bool {
        self != EncryptionPolicy::Require
    }

    /// MSE handshakes are spoken (incoming accepted, outgoing tried).
    pub fn uses_mse(self) -> bool {
        self != EncryptionPolicy::Disable
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EncryptionPolicy::Disable => "disable",
            EncryptionPolicy::Prefer => "prefer",
            EncryptionPolicy::Require => "require",
        }
    }
}

impl std::str::FromStr for EncryptionPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(EncryptionPolicy::Disable),
            "prefer" => Ok(EncryptionPolicy::Prefer),
            "require" => Ok(EncryptionPolicy::Require),
            _ => Err(format!("bad encryption policy {s:?}: expected prefer, require or disable")),
        }
    }
}

impl std::fmt::Display for EncryptionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One direction of the payload stream: RC4 or nothing. Applying it is the
/// same for both directions (RC4 is an XOR keystream) and works in place.
pub enum Cipher {
    Plaintext,
    /// Boxed: the state is 258 bytes and most connections are plaintext.
    Rc4(Box<Rc4>),
}

impl Cipher {
    /// En- or decrypts `data` in place, advancing the keystream.
    ///
    /// The keystream is written into a stack buffer and XORed in after: the
    /// crate's in-place path writes each byte through a pointer that may
    /// alias the cipher state, so the compiler reloads the state indices per
    /// byte; a separate `&mut [u8]` keeps them in registers, and the XOR
    /// vectorises.
    #[inline]
    pub fn apply(&mut self, data: &mut [u8]) {
        if let Cipher::Rc4(rc4) = self {
            let mut keystream = [0u8; KEYSTREAM_CHUNK_LEN];
            for chunk in data.chunks_mut(KEYSTREAM_CHUNK_LEN) {
                let keystream = &mut keystream[..chunk.len()];
                // RC4 has no keystream end: the unchecked call cannot overrun.
                rc4.unchecked_write_keystream(keystream);
                chunk.iter_mut().zip(keystream.iter()).for_each(|(d, k)| *d ^= k);
            }
        }
    }

    pub fn is_rc4(&self) -> bool {
        matches!(self, Cipher::Rc4(_))
    }
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_rc4() { "Rc4" } else { "Plaintext" })
    }
}

/// What a finished handshake leaves.
#[derive(Debug)]
pub struct Outcome {
    /// The torrent (SKEY) both sides proved they know.
    pub info_hash: [u8; 20],
    /// [`CRYPTO_PLAINTEXT`] or [`CRYPTO_RC4`].
    pub selected: u32,
    /// For what we send from now on.
    pub encrypt: Cipher,
    /// For what we read from now on.
    pub decrypt: Cipher,
    /// Payload that arrived with the handshake, decrypted (for the responder
    /// the IA first): normally the start of the BitTorrent handshake.
    pub payload: Vec<u8>,
}

/// Where a handshake stands after a `feed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Send any output, read more, feed again.
    NeedMore,
    /// Send any output, then take the [`Outcome`].
    Done,
}

fn sha1_parts(parts: &[&[u8]]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// `HASH('req2', SKEY)`: the key of the responder's torrent map.
pub fn req2_hash(info_hash: &[u8; 20]) -> [u8; 20] {
    sha1_parts(&[b"req2", info_hash])
}

fn to_fixed(value: &BigUint) -> [u8; PUBLIC_KEY_LEN] {
    let bytes = value.to_bytes_be();
    let mut out = [0u8; PUBLIC_KEY_LEN];
    // Values are < p < 2^768, so they fit; left-pad with zeros.
    out[PUBLIC_KEY_LEN - bytes.len()..].copy_from_slice(&bytes);
    out
}

/// `2^x mod p`, 96 bytes big-endian.
pub fn public_key(private_key: &[u8; PRIVATE_KEY_LEN]) -> [u8; PUBLIC_KEY_LEN] {
    let x = BigUint::from_bytes_be(private_key);
    to_fixed(&BigUint::from(2u32).modpow(&x, prime()))
}

/// `Y^x mod p`, 96 bytes big-endian; refuses degenerate `Y`.
pub fn shared_secret(
    private_key: &[u8; PRIVATE_KEY_LEN],
    remote_public: &[u8],
) -> Result<[u8; PUBLIC_KEY_LEN], MseError> {
    let y = BigUint::from_bytes_be(remote_public);
    let p = prime();
    if y < BigUint::from(2u32) || y >= p - 1u32 {
        return Err(MseError::BadPublicKey);
    }
    Ok(to_fixed(&y.modpow(&BigUint::from_bytes_be(private_key), p)))
}

/// RC4 keyed with `HASH(label, S, SKEY)`, its first 1024 bytes discarded.
fn keyed_rc4(label: &[u8; 4], secret: &[u8; PUBLIC_KEY_LEN], skey: &[u8; 20]) -> Rc4 {
    let key = sha1_parts(&[label, secret, skey]);
    let mut rc4 = Rc4::new_from_slice(&key).expect("RC4 takes 1..=256-byte keys; this one has 20");
    let mut discard = [0u8; KEYSTREAM_DISCARD_LEN];
    rc4.apply_keystream(&mut discard);
    rc4
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn be_u16(bytes: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Input buffered by either side: bytes before `pos` are consumed.
#[derive(Default)]
struct Input {
    bytes: Vec<u8>,
    pos: usize,
}

impl Input {
    fn available(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    /// Takes `n` bytes, decrypting them in place with `cipher`.
    fn take(&mut self, n: usize, cipher: &mut Rc4) -> &[u8] {
        let start = self.pos;
        self.pos += n;
        let field = &mut self.bytes[start..self.pos];
        cipher.apply_keystream(field);
        field
    }

    /// What is left after the handshake, decrypted with `cipher`.
    fn into_payload(mut self, prefix: Vec<u8>, cipher: &mut Cipher) -> Vec<u8> {
        let rest = &mut self.bytes[self.pos..];
        cipher.apply(rest);
        if prefix.is_empty() {
            self.bytes.drain(..self.pos);
            self.bytes
        } else {
            let mut payload = prefix;
            payload.extend_from_slice(rest);
            payload
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitiatorState {
    AwaitPublicKey,
    AwaitVc,
    AwaitSelect,
    AwaitPadD { len: usize },
    Done,
    Failed,
}

/// The side that dialled (A).
pub struct Initiator {
    private_key: [u8; PRIVATE_KEY_LEN],
    info_hash: [u8; 20],
    provide: u32,
    initial_payload: Vec<u8>,
    state: InitiatorState,
    input: Input,
    output: Vec<u8>,
    encrypt: Option<Rc4>,
    decrypt: Option<Rc4>,
    vc_encrypted: [u8; VC_LEN],
    selected: u32,
}

impl Initiator {
    /// Starts a handshake for `info_hash` offering `provide`
    /// ([`CRYPTO_PLAINTEXT`] and/or [`CRYPTO_RC4`]). `pad` is PadA (random
    /// bytes, at most [`PAD_MAX_LEN`], longer is cut); `initial_payload` (IA,
    /// may be empty) goes encrypted in message 3. `Ya` and PadA are output
    /// at once.
    pub fn new(
        info_hash: [u8; 20],
        private_key: [u8; PRIVATE_KEY_LEN],
        provide: u32,
        pad: &[u8],
        initial_payload: Vec<u8>,
    ) -> Result<Initiator, MseError> {
        if initial_payload.len() > INITIAL_PAYLOAD_MAX_LEN {
            return Err(MseError::InitialPayloadTooLong(initial_payload.len()));
        }
        let mut output = Vec::with_capacity(PUBLIC_KEY_LEN + PAD_MAX_LEN);
        output.extend_from_slice(&public_key(&private_key));
        output.extend_from_slice(&pad[..pad.len().min(PAD_MAX_LEN)]);
        Ok(Initiator {
            private_key,
            info_hash,
            provide,
            initial_payload,
            state: InitiatorState::AwaitPublicKey,
            input: Input::default(),
            output,
            encrypt: None,
            decrypt: None,
            vc_encrypted: [0; VC_LEN],
            selected: 0,
        })
    }

    /// Appends the bytes to send to `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.output);
    }

    /// Feeds bytes read from the peer.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Status, MseError> {
        match self.state {
            InitiatorState::Failed => return Err(MseError::Failed),
            InitiatorState::Done => {
                self.input.bytes.extend_from_slice(bytes);
                return Ok(Status::Done);
            }
            _ => {}
        }
        self.input.bytes.extend_from_slice(bytes);
        let result = self.advance();
        match &result {
            Err(_) => self.state = InitiatorState::Failed,
            Ok(Status::NeedMore) if self.input.bytes.len() > HANDSHAKE_MAX_BYTES => {
                self.state = InitiatorState::Failed;
                return Err(MseError::TooMuchData);
            }
            Ok(_) => {}
        }
        result
    }

    fn advance(&mut self) -> Result<Status, MseError> {
        loop {
            match self.state {
                InitiatorState::AwaitPublicKey => {
                    if self.input.available() < PUBLIC_KEY_LEN {
                        return Ok(Status::NeedMore);
                    }
                    let yb = &self.input.rest()[..PUBLIC_KEY_LEN];
                    let secret = shared_secret(&self.private_key, yb)?;
                    self.input.pos += PUBLIC_KEY_LEN;
                    self.send_request(&secret);
                    self.state = InitiatorState::AwaitVc;
                }
                InitiatorState::AwaitVc => {
                    let window = &self.input.rest()[..self.input.available().min(VC_SCAN_MAX_LEN)];
                    match find(window, &self.vc_encrypted) {
                        Some(at) => {
                            self.input.pos += at + VC_LEN;
                            self.state = InitiatorState::AwaitSelect;
                        }
                        None if window.len() >= VC_SCAN_MAX_LEN => {
                            return Err(MseError::VcNotFound)
                        }
                        None => return Ok(Status::NeedMore),
                    }
                }
                InitiatorState::AwaitSelect => {
                    if self.input.available() < 6 {
                        return Ok(Status::NeedMore);
                    }
                    let decrypt = self.decrypt.as_mut().expect("keyed with the secret");
                    let field = self.input.take(6, decrypt);
                    let selected = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                    let len = be_u16(&field[4..]);
                    let exactly_one = selected == CRYPTO_PLAINTEXT || selected == CRYPTO_RC4;
                    if !exactly_one || selected & self.provide == 0 {
                        return Err(MseError::BadSelect { selected, provided: self.provide });
                    }
                    if len > PAD_MAX_LEN {
                        return Err(MseError::PadTooLong(len));
                    }
                    self.selected = selected;
                    self.state = InitiatorState::AwaitPadD { len };
                }
                InitiatorState::AwaitPadD { len } => {
                    if self.input.available() < len {
                        return Ok(Status::NeedMore);
                    }
                    let decrypt = self.decrypt.as_mut().expect("keyed with the secret");
                    self.input.take(len, decrypt);
                    self.state = InitiatorState::Done;
                    return Ok(Status::Done);
                }
                InitiatorState::Done => return Ok(Status::Done),
                InitiatorState::Failed => return Err(MseError::Failed),
            }
        }
    }

    /// Message 3, and the ciphers keyed from `S`.
    fn send_request(&mut self, secret: &[u8; PUBLIC_KEY_LEN]) {
        let mut encrypt = keyed_rc4(b"keyA", secret, &self.info_hash);
        let mut decrypt = keyed_rc4(b"keyB", secret, &self.info_hash);
        // The peer's first 8 encrypted bytes are its VC: the keystream itself.
        decrypt.apply_keystream(&mut self.vc_encrypted);
        let req3 = sha1_parts(&[b"req3", secret]);
        let mut req2_xor = req2_hash(&self.info_hash);
        req2_xor.iter_mut().zip(req3).for_each(|(a, b)| *a ^= b);
        let out = &mut self.output;
        out.extend_from_slice(&sha1_parts(&[b"req1", secret]));
        out.extend_from_slice(&req2_xor);
        let start = out.len();
        out.extend_from_slice(&[0; VC_LEN]);
        out.extend_from_slice(&self.provide.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes()); // len(PadC): no pad.
                                                    // Checked at construction: the IA fits in 16 bits.
        out.extend_from_slice(&(self.initial_payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.initial_payload);
        encrypt.apply_keystream(&mut out[start..]);
        self.initial_payload = Vec::new();
        self.encrypt = Some(encrypt);
        self.decrypt = Some(decrypt);
    }

    /// The ciphers and leftover payload once [`Status::Done`]; `None` before.
    pub fn finish(self) -> Option<Outcome> {
        if self.state != InitiatorState::Done {
            return None;
        }
        let (encrypt, decrypt) = (self.encrypt?, self.decrypt?);
        let (encrypt, mut decrypt) = if self.selected == CRYPTO_RC4 {
            (Cipher::Rc4(Box::new(encrypt)), Cipher::Rc4(Box::new(decrypt)))
        } else {
            (Cipher::Plaintext, Cipher::Plaintext)
        };
        let payload = self.input.into_payload(Vec::new(), &mut decrypt);
        Some(Outcome {
            info_hash: self.info_hash,
            selected: self.selected,
            encrypt,
            decrypt,
            payload,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponderState {
    AwaitPublicKey,
    AwaitReq1,
    AwaitReq2,
    AwaitProvide,
    AwaitPadC { len: usize },
    AwaitInitialPayload { len: usize },
    Done,
    Failed,
}

/// The side that accepted (B).
pub struct Responder {
    private_key: [u8; PRIVATE_KEY_LEN],
    pad: Vec<u8>,
    policy: EncryptionPolicy,
    state: ResponderState,
    input: Input,
    output: Vec<u8>,
    secret: [u8; PUBLIC_KEY_LEN],
    req1: [u8; HASH_LEN],
    info_hash: [u8; 20],
    provided: u32,
    selected: u32,
    encrypt: Option<Rc4>,
    decrypt: Option<Rc4>,
    initial_payload: Vec<u8>,
}

impl Responder {
    /// Waits for `Ya`. `pad` is PadB (random bytes, at most
    /// [`PAD_MAX_LEN`], longer is cut), sent after `Yb`; `policy` selects
    /// the payload cipher.
    pub fn new(
        private_key: [u8; PRIVATE_KEY_LEN],
        pad: &[u8],
        policy: EncryptionPolicy,
    ) -> Responder {
        Responder {
            private_key,
            pad: pad[..pad.len().min(PAD_MAX_LEN)].to_vec(),
            policy,
            state: ResponderState::AwaitPublicKey,
            input: Input::default(),
            output: Vec::new(),
            secret: [0; PUBLIC_KEY_LEN],
            req1: [0; HASH_LEN],
            info_hash: [0; 20],
            provided: 0,
            selected: 0,
            encrypt: None,
            decrypt: None,
            initial_payload: Vec::new(),
        }
    }

    /// Appends the bytes to send to `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.output);
    }

    /// Feeds bytes read from the peer. `find_torrent` maps
    /// `HASH('req2', SKEY)` to the info hash of a torrent we serve.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        find_torrent: impl FnMut(&[u8; 20]) -> Option<[u8; 20]>,
    ) -> Result<Status, MseError> {
        match self.state {
            ResponderState::Failed => return Err(MseError::Failed),
            ResponderState::Done => {
                self.input.bytes.extend_from_slice(bytes);
                return Ok(Status::Done);
            }
            _ => {}
        }
        self.input.bytes.extend_from_slice(bytes);
        let result = self.advance(find_torrent);
        match &result {
            Err(_) => self.state = ResponderState::Failed,
            Ok(Status::NeedMore) if self.input.bytes.len() > HANDSHAKE_MAX_BYTES => {
                self.state = ResponderState::Failed;
                return Err(MseError::TooMuchData);
            }
            Ok(_) => {}
        }
        result
    }

    fn advance(
        &mut self,
        mut find_torrent: impl FnMut(&[u8; 20]) -> Option<[u8; 20]>,
    ) -> Result<Status, MseError> {
        loop {
            match self.state {
                ResponderState::AwaitPublicKey => {
                    if self.input.available() < PUBLIC_KEY_LEN {
                        return Ok(Status::NeedMore);
                    }
                    let ya = &self.input.rest()[..PUBLIC_KEY_LEN];
                    self.secret = shared_secret(&self.private_key, ya)?;
                    self.input.pos += PUBLIC_KEY_LEN;
                    self.req1 = sha1_parts(&[b"req1", &self.secret]);
                    self.output.extend_from_slice(&public_key(&self.private_key));
                    self.output.append(&mut self.pad);
                    self.state = ResponderState::AwaitReq1;
                }
                ResponderState::AwaitReq1 => {
                    let window =
                        &self.input.rest()[..self.input.available().min(REQ1_SCAN_MAX_LEN)];
                    match find(window, &self.req1) {
                        Some(at) => {
                            self.input.pos += at + HASH_LEN;
                            self.state = ResponderState::AwaitReq2;
                        }
                        None if window.len() >= REQ1_SCAN_MAX_LEN => {
                            return Err(MseError::Req1NotFound)
                        }
                        None => return Ok(Status::NeedMore),
                    }
                }
                ResponderState::AwaitReq2 => {
                    if self.input.available() < HASH_LEN {
                        return Ok(Status::NeedMore);
                    }
                    let mut req2 = sha1_parts(&[b"req3", &self.secret]);
                    let xored = &self.input.rest()[..HASH_LEN];
                    req2.iter_mut().zip(xored).for_each(|(a, b)| *a ^= b);
                    self.input.pos += HASH_LEN;
                    self.info_hash = find_torrent(&req2).ok_or(MseError::UnknownTorrent)?;
                    self.decrypt = Some(keyed_rc4(b"keyA", &self.secret, &self.info_hash));
                    self.encrypt = Some(keyed_rc4(b"keyB", &self.secret, &self.info_hash));
                    self.state = ResponderState::AwaitProvide;
                }
                ResponderState::AwaitProvide => {
                    const LEN: usize = VC_LEN + 4 + 2;
                    if self.input.available() < LEN {
                        return Ok(Status::NeedMore);
                    }
                    let decrypt = self.decrypt.as_mut().expect("keyed after req2");
                    let field = self.input.take(LEN, decrypt);
                    if field[..VC_LEN] != [0; VC_LEN] {
                        return Err(MseError::BadVc);
                    }
                    let provided = u32::from_be_bytes([field[8], field[9], field[10], field[11]]);
                    let len = be_u16(&field[12..]);
                    let selected =
                        self.policy.crypto_select(provided).ok_or(MseError::NoCommonCrypto {
                            provided,
                            allowed: self.policy.crypto_provide(),
                        })?;
                    if len > PAD_MAX_LEN {
                        return Err(MseError::PadTooLong(len));
                    }
                    self.provided = provided;
                    self.selected = selected;
                    self.state = ResponderState::AwaitPadC { len };
                }
                ResponderState::AwaitPadC { len } => {
                    if self.input.available() < len + 2 {
                        return Ok(Status::NeedMore);
                    }
                    let decrypt = self.decrypt.as_mut().expect("keyed after req2");
                    let field = self.input.take(len + 2, decrypt);
                    let ia_len = be_u16(&field[len..]);
                    if ia_len > INITIAL_PAYLOAD_MAX_LEN {
                        return Err(MseError::InitialPayloadTooLong(ia_len));
                    }
                    self.state = ResponderState::AwaitInitialPayload { len: ia_len };
                }
                ResponderState::AwaitInitialPayload { len } => {
                    if self.input.available() < len {
                        return Ok(Status::NeedMore);
                    }
                    let decrypt = self.decrypt.as_mut().expect("keyed after req2");
                    self.initial_payload = self.input.take(len, decrypt).to_vec();
                    let encrypt = self.encrypt.as_mut().expect("keyed after req2");
                    let start = self.output.len();
                    self.output.extend_from_slice(&[0; VC_LEN]);
                    self.output.extend_from_slice(&self.selected.to_be_bytes());
                    self.output.extend_from_slice(&0u16.to_be_bytes()); // len(PadD): no pad.
                    encrypt.apply_keystream(&mut self.output[start..]);
                    self.state = ResponderState::Done;
                    return Ok(Status::Done);
                }
                ResponderState::Done => return Ok(Status::Done),
                ResponderState::Failed => return Err(MseError::Failed),
            }
        }
    }

    /// The ciphers and payload (IA first) once [`Status::Done`]; `None` before.
    pub fn finish(self) -> Option<Outcome> {
        if self.state != ResponderState::Done {
            return None;
        }
        let (encrypt, decrypt) = (self.encrypt?, self.decrypt?);
        let (encrypt, mut decrypt) = if self.selected == CRYPTO_RC4 {
            (Cipher::Rc4(Box::new(encrypt)), Cipher::Rc4(Box::new(decrypt)))
        } else {
            (Cipher::Plaintext, Cipher::Plaintext)
        };
        let payload = self.input.into_payload(self.initial_payload, &mut decrypt);
        Some(Outcome {
            info_hash: self.info_hash,
            selected: self.selected,
            encrypt,
            decrypt,
            payload,
        })
    }
}

#[cfg(test)]
mod tests;
