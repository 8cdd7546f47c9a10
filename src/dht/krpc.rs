//! KRPC (BEP 5) messages: decode a datagram into a [`Message`], encode one
//! into a caller's buffer.
//!
//! Layer: pure core, over the bounded bencode decoder. Every field has a
//! bound ([`DATAGRAM_BYTES_MAX`], [`DECODE_LIMITS`], [`TRANSACTION_ID_BYTES_MAX`],
//! [`NODES_PER_FIELD_MAX`], [`VALUES_MAX`], [`TOKEN_BYTES_MAX`]); anything
//! outside them is an error, never a panic. Encoding writes canonical bencode
//! (keys sorted) by hand into one reused buffer.

use super::{canonical, NodeId, NodeInfo};
use crate::bencode::{decode_with, encode_bytes, encode_int, DecodeError, DecodeLimits, Value};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest datagram parsed; larger ones are dropped unread. Real KRPC
/// messages fit one Ethernet frame (~1,500 bytes).
pub const DATAGRAM_BYTES_MAX: usize = 4096;
/// Nesting and value limits for one message (a `values` list of
/// [`VALUES_MAX`] strings is the largest legitimate structure).
pub const DECODE_LIMITS: DecodeLimits = DecodeLimits { depth_max: 4, tokens_max: 512 };
/// Longest transaction id accepted (libtorrent sends 2 bytes, others 4).
pub const TRANSACTION_ID_BYTES_MAX: usize = 16;
/// Compact nodes read from one `nodes` / `nodes6` field at most.
pub const NODES_PER_FIELD_MAX: usize = 64;
/// Peers read from one `values` list at most.
pub const VALUES_MAX: usize = 256;
/// Longest write token accepted.
pub const TOKEN_BYTES_MAX: usize = 64;
/// Longest query method name or error message kept.
pub const TEXT_BYTES_MAX: usize = 256;

/// KRPC error codes (BEP 5).
pub const ERROR_GENERIC: i64 = 201;
pub const ERROR_PROTOCOL: i64 = 203;
pub const ERROR_METHOD_UNKNOWN: i64 = 204;

/// Which address families a `find_node` / `get_peers` asks nodes for (BEP 32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    pub v4: bool,
    pub v6: bool,
}

/// A query's arguments (the sender's `id` is in [`Body::Query`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Ping,
    FindNode {
        target: NodeId,
        want: Want,
    },
    GetPeers {
        info_hash: NodeId,
        want: Want,
        noseed: bool,
    },
    AnnouncePeer {
        info_hash: NodeId,
        port: u16,
        implied_port: bool,
        token: Vec<u8>,
        seed: bool,
    },
    /// A method we do not implement (answered with error 204).
    Unknown(Vec<u8>),
}

impl Query {
    pub fn method(&self) -> &[u8] {
        match self {
            Query::Ping => b"ping",
            Query::FindNode { .. } => b"find_node",
            Query::GetPeers { .. } => b"get_peers",
            Query::AnnouncePeer { .. } => b"announce_peer",
            Query::Unknown(name) => name,
        }
    }
}

/// A response's fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub id: Option<NodeId>,
    pub nodes: Vec<NodeInfo>,
    pub nodes6: Vec<NodeInfo>,
    pub values: Vec<SocketAddr>,
    pub token: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Query { id: NodeId, query: Query },
    Response(Response),
    Error { code: i64, message: String },
}

/// One KRPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub transaction: Vec<u8>,
    pub body: Body,
    /// BEP 42: the address the sender sees us at (responses carry it).
    pub ip: Option<SocketAddr>,
    /// BEP 43: the sender is read-only (do not add it to a table).
    pub read_only: bool,
}

/// Why a datagram is not a KRPC message we accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KrpcError {
    #[error("datagram of {0} bytes is over the {DATAGRAM_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("not bencode: {0}")]
    Bencode(#[from] DecodeError),
    #[error("message is not a dictionary")]
    NotADictionary,
    #[error("missing or invalid transaction id")]
    Transaction,
    #[error("unknown message type")]
    MessageType,
    /// A query we can answer with error 203: its transaction id is readable.
    #[error("bad query: {reason}")]
    BadQuery { transaction: Vec<u8>, reason: &'static str },
    #[error("bad response: {0}")]
    BadResponse(&'static str),
}

fn node_id(value: Option<&Value<'_>>) -> Option<NodeId> {
    let bytes = value?.as_bytes()?;
    Some(NodeId(bytes.try_into().ok()?))
}

/// A compact IPv4 (6 bytes) or IPv6 (18 bytes) address.
pub fn decode_compact_addr(bytes: &[u8]) -> Option<SocketAddr> {
    match bytes.len() {
        6 => {
            let ip = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
            Some(SocketAddr::from((ip, u16::from_be_bytes([bytes[4], bytes[5]]))))
        }
        18 => {
            let octets: [u8; 16] = bytes[..16].try_into().ok()?;
            let port = u16::from_be_bytes([bytes[16], bytes[17]]);
            Some(canonical(SocketAddr::from((Ipv6Addr::from(octets), port))))
        }
        _ => None,
    }
}

/// Appends `addr` in compact form (6 or 18 bytes).
pub fn encode_compact_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match canonical(*addr) {
        SocketAddr::V4(v4) => out.extend_from_slice(&v4.ip().octets()),
        SocketAddr::V6(v6) => out.extend_from_slice(&v6.ip().octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Compact node entries: 20-byte id + compact address of `addr_len` bytes.
fn decode_nodes(bytes: &[u8], addr_len: usize) -> Result<Vec<NodeInfo>, &'static str> {
    let entry = 20 + addr_len;
    if bytes.len() % entry != 0 {
        return Err("compact node list length is not a multiple of the entry size");
    }
    let mut out = Vec::with_capacity((bytes.len() / entry).min(NODES_PER_FIELD_MAX));
    for chunk in bytes.chunks_exact(entry).take(NODES_PER_FIELD_MAX) {
        let id = NodeId(chunk[..20].try_into().expect("20 bytes"));
        let addr = decode_compact_addr(&chunk[20..]).expect("checked length");
        if addr.port() == 0 {
            continue;
        }
        out.push(NodeInfo { id, addr });
    }
    Ok(out)
}

fn decode_want(value: Option<&Value<'_>>) -> Want {
    let mut want = Want::default();
    for item in value.and_then(Value::as_list).unwrap_or(&[]) {
        match item.as_bytes() {
            Some(b"n4") => want.v4 = true,
            Some(b"n6") => want.v6 = true,
            _ => {}
        }
    }
    want
}

/// Decodes one datagram.
pub fn decode(datagram: &[u8]) -> Result<Message, KrpcError> {
    if datagram.len() > DATAGRAM_BYTES_MAX {
        return Err(KrpcError::TooLarge(datagram.len()));
    }
    let root = decode_with(datagram, DECODE_LIMITS)?;
    let dict = root.as_dict().ok_or(KrpcError::NotADictionary)?;
    let transaction = dict
        .get(b"t")
        .and_then(Value::as_bytes)
        .filter(|t| t.len() <= TRANSACTION_ID_BYTES_MAX)
        .ok_or(KrpcError::Transaction)?
        .to_vec();
    let ip = dict.get(b"ip").and_then(Value::as_bytes).and_then(decode_compact_addr);
    let read_only = dict.get(b"ro").and_then(Value::as_int) == Some(1);
    let body = match dict.get(b"y").and_then(Value::as_bytes) {
        Some(b"q") => decode_query(dict.get(b"q"), dict.get(b"a"), &transaction)?,
        Some(b"r") => decode_response(dict.get(b"r"))?,
        Some(b"e") => {
            let list = dict.get(b"e").and_then(Value::as_list).unwrap_or(&[]);
            let code = list.first().and_then(Value::as_int).unwrap_or(ERROR_GENERIC);
            let message = list.get(1).and_then(Value::as_bytes).unwrap_or(b"");
            let message = &message[..message.len().min(TEXT_BYTES_MAX)];
            Body::Error { code, message: String::from_utf8_lossy(message).into_owned() }
        }
        _ => return Err(KrpcError::MessageType),
    };
    Ok(Message { transaction, body, ip, read_only })
}

fn decode_query(
    method: Option<&Value<'_>>,
    args: Option<&Value<'_>>,
    transaction: &[u8],
) -> Result<Body, KrpcError> {
    let bad = |reason| KrpcError::BadQuery { transaction: transaction.to_vec(), reason };
    let method = method.and_then(Value::as_bytes).ok_or_else(|| bad("missing method"))?;
    let args = args.and_then(Value::as_dict).ok_or_else(|| bad("missing arguments"))?;
    let id = node_id(args.get(b"id")).ok_or_else(|| bad("missing or invalid id"))?;
    let query = match method {
        b"ping" => Query::Ping,
        b"find_node" => Query::FindNode {
            target: node_id(args.get(b"target")).ok_or_else(|| bad("invalid target"))?,
            want: decode_want(args.get(b"want")),
        },
        b"get_peers" => Query::GetPeers {
            info_hash: node_id(args.get(b"info_hash")).ok_or_else(|| bad("invalid info_hash"))?,
            want: decode_want(args.get(b"want")),
            noseed: args.get(b"noseed").and_then(Value::as_int) == Some(1),
        },
        b"announce_peer" => {
            let info_hash =
                node_id(args.get(b"info_hash")).ok_or_else(|| bad("invalid info_hash"))?;
            let implied_port = args.get(b"implied_port").and_then(Value::as_int) == Some(1);
            let port = args.get(b"port").and_then(Value::as_int).unwrap_or(0);
            let port = u16::try_from(port).map_err(|_| bad("invalid port"))?;
            if port == 0 && !implied_port {
                return Err(bad("invalid port"));
            }
            let token = args
                .get(b"token")
                .and_then(Value::as_bytes)
                .filter(|t| t.len() <= TOKEN_BYTES_MAX)
                .ok_or_else(|| bad("missing or invalid token"))?
                .to_vec();
            let seed = args.get(b"seed").and_then(Value::as_int) == Some(1);
            Query::AnnouncePeer { info_hash, port, implied_port, token, seed }
        }
        other => Query::Unknown(other[..other.len().min(TEXT_BYTES_MAX)].to_vec()),
    };
    Ok(Body::Query { id, query })
}

fn decode_response(fields: Option<&Value<'_>>) -> Result<Body, KrpcError> {
    let fields =
        fields.and_then(Value::as_dict).ok_or(KrpcError::BadResponse("no r dictionary"))?;
    let mut response = Response { id: node_id(fields.get(b"id")), ..Response::default() };
    if let Some(nodes) = fields.get(b"nodes").and_then(Value::as_bytes) {
        response.nodes = decode_nodes(nodes, 6).map_err(KrpcError::BadResponse)?;
    }
    if let Some(nodes) = fields.get(b"nodes6").and_then(Value::as_bytes) {
        response.nodes6 = decode_nodes(nodes, 18).map_err(KrpcError::BadResponse)?;
    }
    if let Some(values) = fields.get(b"values").and_then(Value::as_list) {
        response.values = values
            .iter()
            .take(VALUES_MAX)
            .filter_map(|v| v.as_bytes().and_then(decode_compact_addr))
            .filter(|a| a.port() != 0)
            .collect();
    }
    response.token = fields
        .get(b"token")
        .and_then(Value::as_bytes)
        .filter(|t| t.len() <= TOKEN_BYTES_MAX)
        .map(<[u8]>::to_vec);
    Ok(Body::Response(response))
}

fn key(out: &mut Vec<u8>, name: &[u8]) {
    encode_bytes(out, name);
}

fn encode_want(out: &mut Vec<u8>, want: Want) {
    if want.v4 || want.v6 {
        key(out, b"want");
        out.push(b'l');
        if want.v4 {
            encode_bytes(out, b"n4");
        }
        if want.v6 {
            encode_bytes(out, b"n6");
        }
        out.push(b'e');
    }
}

fn encode_nodes(out: &mut Vec<u8>, nodes: &[NodeInfo], scratch: &mut Vec<u8>) {
    scratch.clear();
    for node in nodes {
        scratch.extend_from_slice(&node.id.0);
        encode_compact_addr(scratch, &node.addr);
    }
    encode_bytes(out, scratch);
}

/// Appends the encoding of `message`, sent with our `id` (ignored for
/// errors; a response's id is in [`Response::id`]).
pub fn encode(out: &mut Vec<u8>, message: &Message) {
    let mut scratch = Vec::new();
    out.push(b'd');
    match &message.body {
        Body::Query { id, query } => {
            key(out, b"a");
            out.push(b'd');
            key(out, b"id");
            encode_bytes(out, &id.0);
            match query {
                Query::Ping | Query::Unknown(_) => {}
                Query::FindNode { target, want } => {
                    key(out, b"target");
                    encode_bytes(out, &target.0);
                    encode_want(out, *want);
                }
                Query::GetPeers { info_hash, want, noseed } => {
                    key(out, b"info_hash");
                    encode_bytes(out, &info_hash.0);
                    if *noseed {
                        key(out, b"noseed");
                        encode_int(out, 1);
                    }
                    encode_want(out, *want);
                }
                Query::AnnouncePeer { info_hash, port, implied_port, token, seed } => {
                    if *implied_port {
                        key(out, b"implied_port");
                        encode_int(out, 1);
                    }
                    key(out, b"info_hash");
                    encode_bytes(out, &info_hash.0);
                    key(out, b"port");
                    encode_int(out, i64::from(*port));
                    if *seed {
                        key(out, b"seed");
                        encode_int(out, 1);
                    }
                    key(out, b"token");
                    encode_bytes(out, token);
                }
            }
            out.push(b'e');
        }
        Body::Error { code, message } => {
            key(out, b"e");
            out.push(b'l');
            encode_int(out, *code);
            encode_bytes(out, message.as_bytes());
            out.push(b'e');
        }
        Body::Response(_) => {}
    }
    if let Some(ip) = &message.ip {
        key(out, b"ip");
        scratch.clear();
        encode_compact_addr(&mut scratch, ip);
        encode_bytes(out, &scratch);
    }
    if let Body::Query { query, .. } = &message.body {
        key(out, b"q");
        encode_bytes(out, query.method());
    }
    if let Body::Response(response) = &message.body {
        key(out, b"r");
        out.push(b'd');
        if let Some(id) = &response.id {
            key(out, b"id");
            encode_bytes(out, &id.0);
        }
        if !response.nodes.is_empty() {
            key(out, b"nodes");
            encode_nodes(out, &response.nodes, &mut scratch);
        }
        if !response.nodes6.is_empty() {
            key(out, b"nodes6");
            encode_nodes(out, &response.nodes6, &mut scratch);
        }
        if let Some(token) = &response.token {
            key(out, b"token");
            encode_bytes(out, token);
        }
        if !response.values.is_empty() {
            key(out, b"values");
            out.push(b'l');
            for value in &response.values {
                scratch.clear();
                encode_compact_addr(&mut scratch, value);
                encode_bytes(out, &scratch);
            }
            out.push(b'e');
        }
        out.push(b'e');
    }
    if message.read_only {
        key(out, b"ro");
        encode_int(out, 1);
    }
    key(out, b"t");
    encode_bytes(out, &message.transaction);
    key(out, b"v");
    encode_bytes(out, CLIENT_VERSION);
    key(out, b"y");
    encode_bytes(
        out,
        match message.body {
            Body::Query { .. } => b"q",
            Body::Response(_) => b"r",
            Body::Error { .. } => b"e",
        },
    );
    out.push(b'e');
}

/// `v`: two letters for the client and two version bytes (BEP 20 style).
pub const CLIENT_VERSION: &[u8] = b"RB\x01\x00";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(message: &Message) -> Message {
        let mut out = Vec::new();
        encode(&mut out, message);
        crate::bencode::decode(&out).expect("valid bencode");
        decode(&out).expect("decodes")
    }

    #[test]
    fn bep5_ping_example_decodes() {
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let message = decode(ping).unwrap();
        assert_eq!(message.transaction, b"aa");
        assert_eq!(
            message.body,
            Body::Query { id: NodeId(*b"abcdefghij0123456789"), query: Query::Ping }
        );
        let reply = b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re";
        let Body::Response(r) = decode(reply).unwrap().body else { panic!() };
        assert_eq!(r.id, Some(NodeId(*b"mnopqrstuvwxyz123456")));
    }

    #[test]
    fn bep5_announce_and_error_examples_decode() {
        let announce = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe";
        let Body::Query { query, .. } = decode(announce).unwrap().body else { panic!() };
        assert_eq!(
            query,
            Query::AnnouncePeer {
                info_hash: NodeId(*b"mnopqrstuvwxyz123456"),
                port: 6881,
                implied_port: false,
                token: b"aoeusnth".to_vec(),
                seed: false
            }
        );
        let error = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        assert_eq!(
            decode(error).unwrap().body,
            Body::Error { code: 201, message: "A Generic Error Ocurred".into() }
        );
    }

    #[test]
    fn every_kind_round_trips() {
        let id = NodeId([7; 20]);
        let queries = [
            Query::Ping,
            Query::FindNode { target: NodeId([1; 20]), want: Want { v4: true, v6: true } },
            Query::GetPeers { info_hash: NodeId([2; 20]), want: Want::default(), noseed: true },
            Query::AnnouncePeer {
                info_hash: NodeId([3; 20]),
                port: 0,
                implied_port: true,
                token: vec![9; 8],
                seed: true,
            },
        ];
        for query in queries {
            let message = Message {
                transaction: vec![0, 1],
                body: Body::Query { id, query },
                ip: None,
                read_only: true,
            };
            assert_eq!(round_trip(&message), message);
        }
        let response = Message {
            transaction: vec![5],
            body: Body::Response(Response {
                id: Some(id),
                nodes: vec![NodeInfo { id: NodeId([4; 20]), addr: "10.1.2.3:4".parse().unwrap() }],
                nodes6: vec![NodeInfo {
                    id: NodeId([5; 20]),
                    addr: "[2001:db8::1]:9".parse().unwrap(),
                }],
                values: vec!["1.2.3.4:5".parse().unwrap(), "[2001:db8::2]:6".parse().unwrap()],
                token: Some(b"tok".to_vec()),
            }),
            ip: Some("203.0.113.5:6881".parse().unwrap()),
            read_only: false,
        };
        assert_eq!(round_trip(&response), response);
        let error = Message {
            transaction: vec![],
            body: Body::Error { code: 204, message: "Method Unknown".into() },
            ip: None,
            read_only: false,
        };
        assert_eq!(round_trip(&error), error);
    }

    #[test]
    fn bad_queries_keep_their_transaction() {
        let no_id = b"d1:ad6:target20:abcdefghij0123456789e1:q9:find_node1:t2:xy1:y1:qe";
        assert_eq!(
            decode(no_id),
            Err(KrpcError::BadQuery {
                transaction: b"xy".to_vec(),
                reason: "missing or invalid id"
            })
        );
        let unknown = b"d1:ad2:id20:abcdefghij0123456789e1:q3:foo1:t1:z1:y1:qe";
        let Body::Query { query, .. } = decode(unknown).unwrap().body else { panic!() };
        assert_eq!(query, Query::Unknown(b"foo".to_vec()));
    }

    #[test]
    fn limits_hold() {
        assert_eq!(decode(&vec![b'd'; 5000]), Err(KrpcError::TooLarge(5000)));
        let long_t = format!("d1:t17:{}1:y1:re", "x".repeat(17));
        assert_eq!(decode(long_t.as_bytes()), Err(KrpcError::Transaction));
        let deep = b"d1:rd1:xllllleeeeee1:t1:a1:y1:re";
        assert!(matches!(decode(deep), Err(KrpcError::Bencode(_))));
        let ragged = b"d1:rd2:id20:abcdefghij01234567895:nodes5:abcdee1:t1:a1:y1:re";
        assert!(matches!(decode(ragged), Err(KrpcError::BadResponse(_))));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(flip in 0usize..200, byte in any::<u8>()) {
            let mut bytes = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe".to_vec();
            let at = flip % bytes.len();
            bytes[at] = byte;
            let _ = decode(&bytes);
        }
    }
}
