//! Peer wire protocol codec (BEP 3, 6, 10): bytes <-> messages.
//!
//! Layer: pure core. Owns the byte format of the peer protocol and nothing else:
//! no connection state (that is [`crate::peer`]), no sockets, no clock.
//!
//! * [`decode`] reads one message from the front of a buffer and returns it
//!   with the number of bytes it used, or [`Decoded::NeedMore`] with how many
//!   more bytes are needed. A `piece` message's data borrows the input (zero
//!   copy).
//! * Every length is checked against a [`WireLimits`] before the payload is
//!   waited for or touched, so a hostile length prefix can neither make the
//!   caller buffer megabytes nor allocate anything: decoding never allocates.
//! * Encoders append to a caller's `Vec<u8>` (reused: no allocation per message
//!   in steady state). A `piece` message's 13-byte header can be written on its
//!   own ([`piece_header`]) so a driver can send header and block data with
//!   one vectored write, without copying the block.
//! * [`handshake`]: the 68-byte handshake, reserved bits, Azureus-style peer id.
//! * [`extension`]: the BEP 10 extension handshake dictionary.
//! * [`allowed_fast`]: the canonical BEP 6 allowed-fast set of a peer.
//! * [`ut_metadata`]: the BEP 9 metadata exchange message.
//!
//! Invariant: for every message `m`, `decode(encode(m)) == m` and uses exactly
//! the encoded length; for every input, `decode` returns without panicking.

pub mod allowed_fast;
pub mod extension;
pub mod handshake;
mod message;
pub mod ut_metadata;

pub use allowed_fast::{allowed_fast_set, ALLOWED_FAST_SET_SIZE};
pub use extension::{ExtensionError, ExtensionHandshake};
pub use handshake::{
    decode_handshake, peek_info_hash, Handshake, HandshakeDecoded, PeerId, Reserved, HANDSHAKE_LEN,
    PROTOCOL,
};
pub use message::{decode, piece_header, BlockRequest, Decoded, Message, MessageId};

/// A block: the unit of transfer inside a piece. Every client requests 16 KiB.
pub const BLOCK_LEN: u32 = 16 * 1024;

/// The longest `request` we serve. Clients send [`BLOCK_LEN`]; a few old ones
/// asked for up to 128 KiB, which libtorrent and transmission still accept.
pub const MAX_REQUEST_LEN: u32 = 128 * 1024;

/// Bytes before a `piece` message's block data: length prefix (4), id (1),
/// piece index (4), begin offset (4).
pub const PIECE_HEADER_LEN: usize = 13;

/// Default longest extended (BEP 10) message payload: a ut_metadata piece is
/// 16 KiB plus a small dictionary, an extension handshake a few hundred bytes,
/// a ut_pex message at most a few KiB. 1 MiB leaves room for all of them.
pub const DEFAULT_MAX_EXTENDED_LEN: u32 = 1024 * 1024;

/// Most pieces a torrent may have (so its bitfield is at most 512 KiB): the
/// metainfo limit ([`crate::metainfo::PIECE_COUNT_MAX`]), so a torrent that
/// loads never meets a bitfield bound smaller than itself.
pub const MAX_PIECES: u32 = crate::metainfo::PIECE_COUNT_MAX;

/// Size limits the decoder enforces; a torrent sets them from its piece count.
///
/// All limits are on the message *payload* (after the 4-byte length prefix and
/// the 1-byte id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireLimits {
    /// Longest block data in a `piece` message. We request [`BLOCK_LEN`]
    /// blocks, so anything longer was never requested.
    pub max_block_len: u32,
    /// Longest `request` length we accept from a peer.
    pub max_request_len: u32,
    /// Longest `bitfield` payload: `ceil(piece_count / 8)`.
    pub max_bitfield_len: u32,
    /// Longest extended message payload, sub-id included.
    pub max_extended_len: u32,
}

impl WireLimits {
    /// Limits for a torrent of `piece_count` pieces (clamped to [`MAX_PIECES`]).
    pub fn for_pieces(piece_count: u32) -> WireLimits {
        WireLimits {
            max_block_len: BLOCK_LEN,
            max_request_len: MAX_REQUEST_LEN,
            max_bitfield_len: piece_count.min(MAX_PIECES).div_ceil(8),
            max_extended_len: DEFAULT_MAX_EXTENDED_LEN,
        }
    }

    /// The longest whole message (length prefix included) these limits admit:
    /// the size a receive buffer must have to always hold one message.
    pub fn max_frame_len(&self) -> usize {
        let payload = (self.max_block_len as usize + 8)
            .max(self.max_bitfield_len as usize)
            .max(self.max_extended_len as usize)
            .max(12);
        4 + 1 + payload
    }
}

impl Default for WireLimits {
    /// Limits for the largest torrent we accept ([`MAX_PIECES`] pieces).
    fn default() -> WireLimits {
        WireLimits::for_pieces(MAX_PIECES)
    }
}

/// Why bytes from a peer are not a valid message. Any of these means the peer
/// is broken or hostile: the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message id {0} is not part of the protocol")]
    UnknownMessageId(u8),
    #[error("message {id} has length {received}, expected {expected}")]
    IncorrectLength { id: u8, received: u32, expected: u32 },
    #[error("message {id} has length {len}, longer than the limit {max}")]
    MessageTooLong { id: u8, len: u32, max: u32 },
    #[error("request for {len} bytes: must be between 1 and {max}")]
    BadRequestLength { len: u32, max: u32 },
    #[error("handshake does not start with the BitTorrent protocol string")]
    NotBitTorrent,
}
