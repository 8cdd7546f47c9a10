//! MSE/PE on real sockets: the responder for the listener (ordinary tokio)
//! and the initiator for a shard's outgoing connects (tokio-uring), both
//! thin loops around the sans-IO [`crate::mse`] state machines.
//!
//! Layer: driver. Also holds [`TorrentKeys`], the `HASH('req2', info hash)`
//! map the listener's responders look torrents up in; the session adds and
//! removes entries, so it spans every shard's torrents.
//!
//! Invariants:
//! * reads go into a fixed buffer of [`MSE_READ_BYTES`]; the state machines
//!   bound what they keep ([`crate::mse::HANDSHAKE_MAX_BYTES`]), and the
//!   caller bounds the time (the listener's handshake timeout, the dialler's
//!   `handshake_timeout_ms`);
//! * private keys and pads come from the thread's CSPRNG, fresh per attempt;
//! * the payload handed on is plaintext: what arrived with the handshake is
//!   decrypted here, everything later by the connection's [`PeerCipher`].

use crate::metainfo::InfoHash;
use crate::mse::{
    self, Cipher, EncryptionPolicy, Initiator, MseError, Responder, Status, PAD_MAX_LEN,
    PRIVATE_KEY_LEN,
};
use crate::net::peer_io::PeerStream;
use crate::wire::{decode_handshake, Handshake, HandshakeDecoded, HANDSHAKE_LEN};
use rand::Rng;
use std::collections::HashMap;
use std::sync::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes read from the socket per read during an MSE handshake.
pub const MSE_READ_BYTES: usize = 4096;

/// Both directions' payload ciphers of one connection, carried from the
/// handshake to the connection's reader (decrypt) and writer (encrypt).
#[derive(Debug)]
pub struct PeerCipher {
    pub encrypt: Cipher,
    pub decrypt: Cipher,
}

impl PeerCipher {
    pub fn plaintext() -> PeerCipher {
        PeerCipher { encrypt: Cipher::Plaintext, decrypt: Cipher::Plaintext }
    }

    pub fn is_rc4(&self) -> bool {
        self.encrypt.is_rc4()
    }
}

/// Why an MSE exchange on a socket failed.
#[derive(Debug, thiserror::Error)]
pub enum MseIoError {
    #[error("MSE: {0}")]
    Protocol(#[from] MseError),
    #[error("MSE: socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("MSE: the peer closed the connection during the handshake")]
    Closed,
    #[error("MSE: bad BitTorrent handshake inside the stream: {0}")]
    Handshake(String),
    #[error("MSE: the BitTorrent handshake names another torrent than the req2 hash")]
    TorrentMismatch,
}

/// Every running torrent by `HASH('req2', info hash)`, read by the
/// listener's responders, written by the session when torrents come and go
/// (never on a shard, never per message).
#[derive(Debug, Default)]
pub struct TorrentKeys {
    map: RwLock<HashMap<[u8; 20], InfoHash>>,
}

impl TorrentKeys {
    pub fn insert(&self, info_hash: InfoHash) {
        let key = mse::req2_hash(&info_hash.0);
        self.map.write().unwrap_or_else(|e| e.into_inner()).insert(key, info_hash);
    }

    pub fn remove(&self, info_hash: &InfoHash) {
        let key = mse::req2_hash(&info_hash.0);
        self.map.write().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }

    pub fn find(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(req2).map(|h| h.0)
    }
}

fn random_key_and_pad() -> ([u8; PRIVATE_KEY_LEN], Vec<u8>) {
    let mut rng = rand::thread_rng();
    let key: [u8; PRIVATE_KEY_LEN] = rng.gen();
    let mut pad = vec![0u8; rng.gen_range(0..=PAD_MAX_LEN)];
    rng.fill(&mut pad[..]);
    (key, pad)
}

/// What an incoming MSE connection gave: the peer's BitTorrent handshake,
/// the ciphers, and plaintext payload that came after the handshake.
pub struct Responded {
    pub handshake: Handshake,
    pub cipher: PeerCipher,
    pub leftover: Vec<u8>,
}

/// A stream the incoming handshakes (plaintext or MSE) are read from: a
/// TCP socket on the listener's runtime or a uTP stream on the UDP driver's.
#[allow(async_fn_in_trait)]
pub trait HandshakeIo {
    /// Reads once; 0 at end of stream.
    async fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    async fn write_all_bytes(&mut self, buf: &[u8]) -> std::io::Result<()>;
}

impl HandshakeIo for tokio::net::TcpStream {
    async fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf).await
    }

    async fn write_all_bytes(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.write_all(buf).await
    }
}

/// Reads exactly `buf.len()` bytes.
pub async fn read_exact<S: HandshakeIo>(stream: &mut S, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = stream.read_some(&mut buf[done..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}

/// Answers an MSE handshake whose first bytes (`first`, already read) were
/// not a plaintext BitTorrent handshake, then reads the BitTorrent
/// handshake inside it. The caller bounds the time.
pub async fn respond<S: HandshakeIo>(
    stream: &mut S,
    first: &[u8],
    policy: EncryptionPolicy,
    torrents: &TorrentKeys,
) -> Result<Responded, MseIoError> {
    let (key, pad) = random_key_and_pad();
    let mut responder = Responder::new(key, &pad, policy);
    let find = |req2: &[u8; 20]| torrents.find(req2);
    let mut status = responder.feed(first, find)?;
    let mut buf = vec![0u8; MSE_READ_BYTES];
    let mut out = Vec::new();
    loop {
        responder.take_output(&mut out);
        if !out.is_empty() {
            stream.write_all_bytes(&out).await?;
            out.clear();
        }
        if status == Status::Done {
            break;
        }
        let n = stream.read_some(&mut buf).await?;
        if n == 0 {
            return Err(MseIoError::Closed);
        }
        status = responder.feed(&buf[..n], find)?;
    }
    let outcome = responder.finish().expect("the responder is done");
    let mut cipher = PeerCipher { encrypt: outcome.encrypt, decrypt: outcome.decrypt };
    let mut payload = outcome.payload;
    while payload.len() < HANDSHAKE_LEN {
        let n = stream.read_some(&mut buf).await?;
        if n == 0 {
            return Err(MseIoError::Closed);
        }
        cipher.decrypt.apply(&mut buf[..n]);
        payload.extend_from_slice(&buf[..n]);
    }
    let handshake = match decode_handshake(&payload) {
        Ok(HandshakeDecoded::Done(h)) => h,
        Ok(HandshakeDecoded::NeedMore(_)) => unreachable!("at least HANDSHAKE_LEN bytes"),
        Err(e) => return Err(MseIoError::Handshake(e.to_string())),
    };
    if handshake.info_hash.0 != outcome.info_hash {
        return Err(MseIoError::TorrentMismatch);
    }
    payload.drain(..HANDSHAKE_LEN);
    Ok(Responded { handshake, cipher, leftover: payload })
}

/// Runs the initiator on a fresh outgoing connection (no initial payload:
/// the BitTorrent handshake follows through the returned cipher). Returns
/// the ciphers and any plaintext payload that came with the reply. The
/// caller bounds the time and drops the connection on error.
pub async fn initiate(
    stream: &PeerStream,
    info_hash: InfoHash,
    policy: EncryptionPolicy,
) -> Result<(PeerCipher, Vec<u8>), MseIoError> {
    let (key, pad) = random_key_and_pad();
    let mut initiator =
        Initiator::new(info_hash.0, key, policy.crypto_provide(), &pad, Vec::new())?;
    let mut read_buf = Vec::with_capacity(MSE_READ_BYTES);
    loop {
        let mut out = Vec::new();
        initiator.take_output(&mut out);
        if !out.is_empty() {
            let (result, _) = crate::net::peer_io::write_all(stream, out).await;
            result?;
        }
        read_buf.clear();
        let (result, buf) = crate::net::peer_io::read_into_spare(stream, read_buf).await;
        read_buf = buf;
        if result? == 0 {
            return Err(MseIoError::Closed);
        }
        if initiator.feed(&read_buf)? == Status::Done {
            break;
        }
    }
    let outcome = initiator.finish().expect("the initiator is done");
    Ok((PeerCipher { encrypt: outcome.encrypt, decrypt: outcome.decrypt }, outcome.payload))
}
