//! Canonical bencode encoding: dictionary keys sorted as raw bytes, integers
//! without leading zeros. Writes into a caller's `Vec<u8>` so hot paths can
//! reuse one buffer. Encoding walks an explicit stack, like the decoder.

use super::decode::{Kind, Value};
use std::collections::BTreeMap;

/// An owned bencode value for building messages and `.torrent` files.
/// Dictionaries are `BTreeMap`s, so keys come out sorted as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedValue {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<OwnedValue>),
    Dict(BTreeMap<Vec<u8>, OwnedValue>),
}

impl OwnedValue {
    /// An empty dictionary.
    pub fn dict() -> OwnedValue {
        OwnedValue::Dict(BTreeMap::new())
    }

    /// Builder: `self[key] = value` (self must be a dictionary).
    pub fn with(mut self, key: impl AsRef<[u8]>, value: impl Into<OwnedValue>) -> OwnedValue {
        self.insert(key, value);
        self
    }

    /// `self[key] = value`. Panics when `self` is not a dictionary: that is a
    /// programming error, never input-driven.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<OwnedValue>) {
        match self {
            OwnedValue::Dict(map) => {
                map.insert(key.as_ref().to_vec(), value.into());
            }
            _ => panic!("OwnedValue::insert on a non-dictionary"),
        }
    }

    /// Canonical encoding as a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        enum Open<'v> {
            List(std::slice::Iter<'v, OwnedValue>),
            Dict(std::collections::btree_map::Iter<'v, Vec<u8>, OwnedValue>),
        }
        let mut stack: Vec<Open<'_>> = Vec::new();
        let mut next = Some(self);
        loop {
            if let Some(value) = next.take() {
                match value {
                    OwnedValue::Int(i) => encode_int(out, *i),
                    OwnedValue::Bytes(b) => encode_bytes(out, b),
                    OwnedValue::List(items) => {
                        out.push(b'l');
                        stack.push(Open::List(items.iter()));
                    }
                    OwnedValue::Dict(map) => {
                        out.push(b'd');
                        stack.push(Open::Dict(map.iter()));
                    }
                }
            }
            let Some(top) = stack.last_mut() else { return };
            match top {
                Open::List(iter) => next = iter.next(),
                Open::Dict(iter) => {
                    next = iter.next().map(|(k, v)| {
                        encode_bytes(out, k);
                        v
                    })
                }
            }
            if next.is_none() {
                out.push(b'e');
                stack.pop();
            }
        }
    }

    /// An owned copy of a decoded value (its depth is already bounded by the
    /// decoder's limits).
    pub fn from_value(value: &Value<'_>) -> OwnedValue {
        match &value.kind {
            Kind::Int(i) => OwnedValue::Int(*i),
            Kind::Bytes(b) => OwnedValue::Bytes(b.to_vec()),
            Kind::List(items) => {
                OwnedValue::List(items.iter().map(OwnedValue::from_value).collect())
            }
            Kind::Dict(d) => OwnedValue::Dict(
                d.iter().map(|(k, v)| (k.to_vec(), OwnedValue::from_value(v))).collect(),
            ),
        }
    }
}

impl From<i64> for OwnedValue {
    fn from(i: i64) -> Self {
        OwnedValue::Int(i)
    }
}

impl From<&str> for OwnedValue {
    fn from(s: &str) -> Self {
        OwnedValue::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for OwnedValue {
    fn from(s: String) -> Self {
        OwnedValue::Bytes(s.into_bytes())
    }
}

impl From<&[u8]> for OwnedValue {
    fn from(b: &[u8]) -> Self {
        OwnedValue::Bytes(b.to_vec())
    }
}

impl From<Vec<u8>> for OwnedValue {
    fn from(b: Vec<u8>) -> Self {
        OwnedValue::Bytes(b)
    }
}

impl From<Vec<OwnedValue>> for OwnedValue {
    fn from(items: Vec<OwnedValue>) -> Self {
        OwnedValue::List(items)
    }
}

/// Appends `i<n>e`.
pub fn encode_int(out: &mut Vec<u8>, n: i64) {
    out.push(b'i');
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b'e');
}

/// Appends `<len>:<bytes>`.
pub fn encode_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Appends the canonical encoding of a decoded value (dictionaries whose
/// keys were out of order come out sorted).
pub fn encode_value(out: &mut Vec<u8>, value: &Value<'_>) {
    OwnedValue::from_value(value).encode_into(out);
}

#[cfg(test)]
mod tests {
    use super::super::decode::{decode, decode_prefix, DecodeLimits};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_order() {
        let v = OwnedValue::dict()
            .with("zz", 1)
            .with("a", "x")
            .with("b", vec![OwnedValue::Int(-3), OwnedValue::dict()])
            .with(b"\xff".as_slice(), OwnedValue::List(vec![]));
        assert_eq!(v.encode(), b"d1:a1:x1:bli-3edee2:zzi1e1:\xfflee");
    }

    #[test]
    fn reencodes_unsorted_input_sorted() {
        let v = decode(b"d1:bi1e1:ai2ee").unwrap();
        let mut out = Vec::new();
        encode_value(&mut out, &v);
        assert_eq!(out, b"d1:ai2e1:bi1ee");
    }

    fn arb_value() -> impl Strategy<Value = OwnedValue> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(OwnedValue::Int),
            proptest::collection::vec(any::<u8>(), 0..24).prop_map(OwnedValue::Bytes),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(OwnedValue::List),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 0..8),
                    inner,
                    0..8
                )
                .prop_map(OwnedValue::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(v in arb_value()) {
            let bytes = v.encode();
            let decoded = decode(&bytes).unwrap();
            prop_assert_eq!(decoded.span.clone(), 0..bytes.len());
            prop_assert_eq!(OwnedValue::from_value(&decoded), v);
        }

        #[test]
        fn truncated_never_panics_and_fails(v in arb_value(), cut in any::<prop::sample::Index>()) {
            let bytes = v.encode();
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let _ = decode_prefix(&bytes, DecodeLimits { depth_max: 4, tokens_max: 16 });
        }

        #[test]
        fn mutated_never_panics(v in arb_value(), at in any::<prop::sample::Index>(), b in any::<u8>()) {
            let mut bytes = v.encode();
            let i = at.index(bytes.len());
            bytes[i] = b;
            if let Ok(d) = decode(&bytes) {
                // Whatever decodes re-encodes to something that decodes.
                let again = OwnedValue::from_value(&d).encode();
                prop_assert!(decode(&again).is_ok());
            }
        }

        #[test]
        fn oversized_lengths_are_rejected(len in 1u64..u64::MAX, tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut bytes = format!("{len}:").into_bytes();
            bytes.extend_from_slice(&tail);
            let r = decode(&bytes);
            if len as usize != tail.len() {
                prop_assert!(r.is_err());
            }
        }
    }
}
