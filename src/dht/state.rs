//! The DHT state kept across restarts: our node ids and the nodes of both
//! tables, as a bencoded dictionary (`id`, `id6`, `nodes`, `nodes6` in the
//! compact node format of KRPC).
//!
//! Layer: pure core (the driver reads and writes the file). Bounded: at most
//! [`STATE_NODES_MAX`] nodes per family are read.

use super::krpc::{decode_compact_addr, encode_compact_addr};
use super::{NodeId, NodeInfo};
use crate::bencode::{decode_with, encode_bytes, DecodeLimits, Value};

/// Nodes per family read from a state file at most.
pub const STATE_NODES_MAX: usize = 2000;
/// Largest state file read.
pub const STATE_FILE_BYTES_MAX: u64 = 256 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhtState {
    pub id: Option<NodeId>,
    pub id6: Option<NodeId>,
    pub nodes: Vec<NodeInfo>,
    pub nodes6: Vec<NodeInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("DHT state: not bencode: {0}")]
    Bencode(#[from] crate::bencode::DecodeError),
    #[error("DHT state: not a dictionary")]
    NotADictionary,
}

fn nodes_of(value: Option<&Value<'_>>, addr_len: usize) -> Vec<NodeInfo> {
    let Some(bytes) = value.and_then(Value::as_bytes) else { return Vec::new() };
    bytes
        .chunks_exact(20 + addr_len)
        .take(STATE_NODES_MAX)
        .filter_map(|chunk| {
            let id = NodeId(chunk[..20].try_into().ok()?);
            let addr = decode_compact_addr(&chunk[20..])?;
            (addr.port() != 0).then_some(NodeInfo { id, addr })
        })
        .collect()
}

impl DhtState {
    pub fn decode(bytes: &[u8]) -> Result<DhtState, StateError> {
        let root = decode_with(bytes, DecodeLimits { depth_max: 2, tokens_max: 64 })?;
        let dict = root.as_dict().ok_or(StateError::NotADictionary)?;
        let id = |key: &[u8]| {
            dict.get(key).and_then(Value::as_bytes).and_then(|b| b.try_into().ok()).map(NodeId)
        };
        Ok(DhtState {
            id: id(b"id"),
            id6: id(b"id6"),
            nodes: nodes_of(dict.get(b"nodes"), 6),
            nodes6: nodes_of(dict.get(b"nodes6"), 18),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![b'd'];
        let nodes = |out: &mut Vec<u8>, key: &[u8], list: &[NodeInfo]| {
            let mut compact = Vec::with_capacity(list.len() * 38);
            for node in list.iter().take(STATE_NODES_MAX) {
                compact.extend_from_slice(&node.id.0);
                encode_compact_addr(&mut compact, &node.addr);
            }
            encode_bytes(out, key);
            encode_bytes(out, &compact);
        };
        if let Some(id) = self.id {
            encode_bytes(&mut out, b"id");
            encode_bytes(&mut out, &id.0);
        }
        if let Some(id) = self.id6 {
            encode_bytes(&mut out, b"id6");
            encode_bytes(&mut out, &id.0);
        }
        nodes(&mut out, b"nodes", &self.nodes);
        nodes(&mut out, b"nodes6", &self.nodes6);
        out.push(b'e');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let state = DhtState {
            id: Some(NodeId([1; 20])),
            id6: None,
            nodes: vec![NodeInfo { id: NodeId([2; 20]), addr: "10.0.0.1:6881".parse().unwrap() }],
            nodes6: vec![NodeInfo {
                id: NodeId([3; 20]),
                addr: "[2001:db8::1]:1".parse().unwrap(),
            }],
        };
        assert_eq!(DhtState::decode(&state.encode()).unwrap(), state);
        assert!(DhtState::decode(b"garbage").is_err());
        assert!(DhtState::decode(b"le").is_err());
        assert_eq!(DhtState::decode(b"de").unwrap(), DhtState::default());
    }
}
