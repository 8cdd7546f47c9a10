//! The bounded, non-recursive bencode decoder.
//!
//! Nesting is kept on an explicit stack of open lists and dictionaries, so a
//! hostile input can never overflow the thread's stack; the stack itself is
//! bounded by [`DecodeLimits::depth_max`] and the number of values by
//! [`DecodeLimits::tokens_max`]. A string's length is checked against the
//! bytes left before anything is sliced; strings are never copied.

use std::ops::Range;

/// Default nesting limit. Real torrents nest 4-5 levels (`info` / `files` /
/// file / `path` / element); libtorrent allows 100.
pub const DEPTH_MAX_DEFAULT: usize = 64;

/// Default limit on the number of values (integers, strings, lists,
/// dictionaries) in one input. A 50,000-file torrent has ~400,000; libtorrent
/// allows 2,000,000.
pub const TOKENS_MAX_DEFAULT: usize = 1_000_000;

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Maximum number of lists/dictionaries open at once.
    pub depth_max: usize,
    /// Maximum number of values in the input.
    pub tokens_max: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { depth_max: DEPTH_MAX_DEFAULT, tokens_max: TOKENS_MAX_DEFAULT }
    }
}

/// Why an input is not valid bencode; every variant says where (a byte offset
/// into the input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bencode: input is empty")]
    Empty,
    #[error("bencode: input ends at byte {offset} inside the value started at byte {start}")]
    Unterminated { offset: usize, start: usize },
    #[error("bencode: invalid integer at byte {offset}: {reason}")]
    InvalidInteger { offset: usize, reason: &'static str },
    #[error("bencode: invalid string length at byte {offset}: {reason}")]
    InvalidLength { offset: usize, reason: &'static str },
    #[error("bencode: string at byte {offset} claims {length} bytes but only {remaining} remain")]
    LengthPastEnd { offset: usize, length: u64, remaining: usize },
    #[error("bencode: {count} trailing bytes after the value, at byte {offset}")]
    TrailingBytes { offset: usize, count: usize },
    #[error("bencode: dictionary key at byte {offset} is not a byte string")]
    NonStringKey { offset: usize },
    #[error("bencode: duplicate dictionary key {key:?} at byte {offset}")]
    DuplicateKey { offset: usize, key: String },
    #[error("bencode: dictionary closed at byte {offset} has a key without a value")]
    MissingValue { offset: usize },
    #[error("bencode: nesting deeper than {limit} levels at byte {offset}")]
    TooDeep { offset: usize, limit: usize },
    #[error("bencode: more than {limit} values, at byte {offset}")]
    TooManyTokens { offset: usize, limit: usize },
    #[error("bencode: unexpected byte 0x{byte:02x} at byte {offset}")]
    UnexpectedByte { offset: usize, byte: u8 },
}

impl DecodeError {
    /// The byte offset the error refers to.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::Empty => 0,
            DecodeError::Unterminated { offset, .. }
            | DecodeError::InvalidInteger { offset, .. }
            | DecodeError::InvalidLength { offset, .. }
            | DecodeError::LengthPastEnd { offset, .. }
            | DecodeError::TrailingBytes { offset, .. }
            | DecodeError::NonStringKey { offset }
            | DecodeError::DuplicateKey { offset, .. }
            | DecodeError::MissingValue { offset }
            | DecodeError::TooDeep { offset, .. }
            | DecodeError::TooManyTokens { offset, .. }
            | DecodeError::UnexpectedByte { offset, .. } => offset,
        }
    }
}

/// A decoded value and the bytes of the input it was decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value<'a> {
    pub kind: Kind<'a>,
    /// `input[span]` is this value exactly as written (prefix and `e` included).
    pub span: Range<usize>,
}

/// The four bencode types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    Dict(Dict<'a>),
}

/// A dictionary in file order, keys unique.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Dict<'a> {
    entries: Vec<(&'a [u8], Value<'a>)>,
    /// Keys strictly increasing as raw bytes (canonical): lookups binary-search.
    sorted: bool,
}

impl<'a> Dict<'a> {
    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        if self.sorted {
            self.entries.binary_search_by(|(k, _)| (*k).cmp(key)).ok().map(|i| &self.entries[i].1)
        } else {
            self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
        }
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &Value<'a>)> + '_ {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when the keys were written in canonical (sorted) order.
    pub fn is_sorted(&self) -> bool {
        self.sorted
    }
}

impl<'a> Value<'a> {
    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Kind::Int(i) => Some(i),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self.kind {
            Kind::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The string as UTF-8, `None` when it is not a string or not UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match &self.kind {
            Kind::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&Dict<'a>> {
        match &self.kind {
            Kind::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// `self[key]` when `self` is a dictionary.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.as_dict().and_then(|d| d.get(key))
    }

    /// "integer", "string", "list" or "dictionary", for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Int(_) => "integer",
            Kind::Bytes(_) => "string",
            Kind::List(_) => "list",
            Kind::Dict(_) => "dictionary",
        }
    }
}

/// Decodes exactly one value spanning the whole input, with default limits.
pub fn decode(input: &[u8]) -> Result<Value<'_>, DecodeError> {
    decode_with(input, DecodeLimits::default())
}

/// Decodes exactly one value spanning the whole input.
pub fn decode_with(input: &[u8], limits: DecodeLimits) -> Result<Value<'_>, DecodeError> {
    let (value, used) = decode_prefix(input, limits)?;
    if used != input.len() {
        return Err(DecodeError::TrailingBytes { offset: used, count: input.len() - used });
    }
    Ok(value)
}

/// An open list or dictionary on the decoder's explicit stack.
enum Frame<'a> {
    List { start: usize, items: Vec<Value<'a>> },
    Dict { start: usize, entries: Vec<(&'a [u8], Value<'a>)>, sorted: bool, key: Option<&'a [u8]> },
}

/// Decodes one value at the start of `input`; returns it and the number of
/// bytes it used (the rest is left to the caller).
pub fn decode_prefix(
    input: &[u8],
    limits: DecodeLimits,
) -> Result<(Value<'_>, usize), DecodeError> {
    if input.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut pos = 0usize;
    let mut tokens = 0usize;
    loop {
        let Some(&byte) = input.get(pos) else {
            let start = match stack.last() {
                Some(Frame::List { start, .. } | Frame::Dict { start, .. }) => *start,
                None => 0,
            };
            return Err(DecodeError::Unterminated { offset: pos, start });
        };
        let value = if byte == b'e' && !stack.is_empty() {
            let frame = stack.pop().expect("stack is not empty");
            pos += 1;
            match frame {
                Frame::List { start, items } => Value { kind: Kind::List(items), span: start..pos },
                Frame::Dict { start, entries, sorted, key } => {
                    if key.is_some() {
                        return Err(DecodeError::MissingValue { offset: pos - 1 });
                    }
                    if !sorted {
                        check_unique(&entries, start)?;
                    }
                    Value { kind: Kind::Dict(Dict { entries, sorted }), span: start..pos }
                }
            }
        } else {
            let expecting_key = matches!(stack.last(), Some(Frame::Dict { key: None, .. }));
            if expecting_key && !byte.is_ascii_digit() {
                return Err(DecodeError::NonStringKey { offset: pos });
            }
            tokens += 1;
            if tokens > limits.tokens_max {
                return Err(DecodeError::TooManyTokens { offset: pos, limit: limits.tokens_max });
            }
            match byte {
                b'i' => {
                    let (int, end) = parse_int(input, pos)?;
                    let value = Value { kind: Kind::Int(int), span: pos..end };
                    pos = end;
                    value
                }
                b'0'..=b'9' => {
                    let start = pos;
                    let (bytes, end) = parse_bytes(input, pos)?;
                    pos = end;
                    if expecting_key {
                        let Some(Frame::Dict { entries, sorted, key, .. }) = stack.last_mut()
                        else {
                            unreachable!("expecting_key implies an open dictionary")
                        };
                        if let Some((last, _)) = entries.last() {
                            match (*last).cmp(bytes) {
                                std::cmp::Ordering::Less => {}
                                std::cmp::Ordering::Equal => {
                                    return Err(DecodeError::DuplicateKey {
                                        offset: start,
                                        key: String::from_utf8_lossy(bytes).into_owned(),
                                    })
                                }
                                std::cmp::Ordering::Greater => *sorted = false,
                            }
                        }
                        *key = Some(bytes);
                        continue;
                    }
                    Value { kind: Kind::Bytes(bytes), span: start..end }
                }
                b'l' | b'd' => {
                    if stack.len() >= limits.depth_max {
                        return Err(DecodeError::TooDeep { offset: pos, limit: limits.depth_max });
                    }
                    stack.push(if byte == b'l' {
                        Frame::List { start: pos, items: Vec::new() }
                    } else {
                        Frame::Dict { start: pos, entries: Vec::new(), sorted: true, key: None }
                    });
                    pos += 1;
                    continue;
                }
                _ => return Err(DecodeError::UnexpectedByte { offset: pos, byte }),
            }
        };
        match stack.last_mut() {
            None => return Ok((value, pos)),
            Some(Frame::List { items, .. }) => items.push(value),
            Some(Frame::Dict { entries, key, .. }) => {
                let k = key.take().expect("a value in a dictionary follows its key");
                entries.push((k, value));
            }
        }
    }
}

/// Rejects duplicate keys in a dictionary whose keys were out of order (the
/// in-order case is checked key by key as they arrive).
fn check_unique(entries: &[(&[u8], Value<'_>)], dict_start: usize) -> Result<(), DecodeError> {
    let mut keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    for pair in keys.windows(2) {
        if pair[0] == pair[1] {
            return Err(DecodeError::DuplicateKey {
                offset: dict_start,
                key: String::from_utf8_lossy(pair[0]).into_owned(),
            });
        }
    }
    Ok(())
}

/// Parses `i<digits>e` at `start`; returns the integer and the end offset.
fn parse_int(input: &[u8], start: usize) -> Result<(i64, usize), DecodeError> {
    let mut pos = start + 1;
    let negative = input.get(pos) == Some(&b'-');
    if negative {
        pos += 1;
    }
    let digits_start = pos;
    // Accumulate toward the sign so i64::MIN parses without overflow.
    let mut value: i64 = 0;
    loop {
        match input.get(pos) {
            None => return Err(DecodeError::Unterminated { offset: pos, start }),
            Some(b'e') => break,
            Some(&d @ b'0'..=b'9') => {
                let digit = (d - b'0') as i64;
                value = value
                    .checked_mul(10)
                    .and_then(
                        |v| if negative { v.checked_sub(digit) } else { v.checked_add(digit) },
                    )
                    .ok_or(DecodeError::InvalidInteger {
                        offset: start,
                        reason: "does not fit in 64 bits",
                    })?;
                pos += 1;
            }
            Some(&byte) => return Err(DecodeError::UnexpectedByte { offset: pos, byte }),
        }
    }
    let digits = &input[digits_start..pos];
    if digits.is_empty() {
        return Err(DecodeError::InvalidInteger { offset: start, reason: "no digits" });
    }
    if digits[0] == b'0' && (digits.len() > 1 || negative) {
        let reason = if negative { "negative zero" } else { "leading zero" };
        return Err(DecodeError::InvalidInteger { offset: start, reason });
    }
    Ok((value, pos + 1))
}

/// Parses `<length>:<bytes>` at `start`; returns the bytes and the end offset.
fn parse_bytes(input: &[u8], start: usize) -> Result<(&[u8], usize), DecodeError> {
    let mut pos = start;
    let mut length: u64 = 0;
    loop {
        match input.get(pos) {
            None => return Err(DecodeError::Unterminated { offset: pos, start }),
            Some(b':') => break,
            Some(&d @ b'0'..=b'9') => {
                length = length
                    .checked_mul(10)
                    .and_then(|l| l.checked_add((d - b'0') as u64))
                    .ok_or(DecodeError::InvalidLength { offset: start, reason: "too large" })?;
                pos += 1;
            }
            Some(&byte) => return Err(DecodeError::UnexpectedByte { offset: pos, byte }),
        }
    }
    if pos - start > 1 && input[start] == b'0' {
        return Err(DecodeError::InvalidLength { offset: start, reason: "leading zero" });
    }
    let data_start = pos + 1;
    let remaining = input.len() - data_start;
    if length > remaining as u64 {
        return Err(DecodeError::LengthPastEnd { offset: start, length, remaining });
    }
    let end = data_start + length as usize;
    Ok((&input[data_start..end], end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &[u8]) -> DecodeError {
        decode(input).expect_err("must fail")
    }

    #[test]
    fn scalars() {
        assert_eq!(decode(b"i42e").unwrap().as_int(), Some(42));
        assert_eq!(decode(b"i-42e").unwrap().as_int(), Some(-42));
        assert_eq!(decode(b"i0e").unwrap().as_int(), Some(0));
        assert_eq!(decode(b"i9223372036854775807e").unwrap().as_int(), Some(i64::MAX));
        assert_eq!(decode(b"i-9223372036854775808e").unwrap().as_int(), Some(i64::MIN));
        assert_eq!(decode(b"4:spam").unwrap().as_bytes(), Some(&b"spam"[..]));
        assert_eq!(decode(b"0:").unwrap().as_bytes(), Some(&b""[..]));
    }

    #[test]
    fn spans_cover_the_bytes_as_written() {
        let input = b"d8:announce3:url4:infod4:name1:a6:lengthi5eee";
        let v = decode(input).unwrap();
        assert_eq!(v.span, 0..input.len());
        let info = v.get(b"info").unwrap();
        assert_eq!(&input[info.span.clone()], b"d4:name1:a6:lengthi5ee");
        // Unsorted keys are accepted and looked up correctly.
        assert!(!info.as_dict().unwrap().is_sorted());
        assert_eq!(info.get(b"length").unwrap().as_int(), Some(5));
        assert_eq!(info.get(b"name").unwrap().as_str(), Some("a"));
        assert!(v.as_dict().unwrap().is_sorted());
        assert_eq!(v.get(b"announce").unwrap().span, 11..16);
    }

    #[test]
    fn rejects_bad_integers() {
        assert!(matches!(
            err(b"i-0e"),
            DecodeError::InvalidInteger { reason: "negative zero", .. }
        ));
        assert!(matches!(err(b"i03e"), DecodeError::InvalidInteger { reason: "leading zero", .. }));
        assert!(matches!(err(b"ie"), DecodeError::InvalidInteger { reason: "no digits", .. }));
        assert!(matches!(err(b"i-e"), DecodeError::InvalidInteger { .. }));
        assert!(matches!(err(b"i9223372036854775808e"), DecodeError::InvalidInteger { .. }));
        assert!(matches!(err(b"i1x"), DecodeError::UnexpectedByte { offset: 2, byte: b'x' }));
        assert!(matches!(err(b"i12"), DecodeError::Unterminated { offset: 3, start: 0 }));
    }

    #[test]
    fn rejects_bad_strings() {
        assert!(matches!(
            err(b"5:abc"),
            DecodeError::LengthPastEnd { length: 5, remaining: 3, .. }
        ));
        assert!(matches!(err(b"03:abc"), DecodeError::InvalidLength { .. }));
        assert!(matches!(err(b"99999999999999999999999:"), DecodeError::InvalidLength { .. }));
        assert!(matches!(
            err(b"18446744073709551615:x"),
            DecodeError::LengthPastEnd { remaining: 1, .. }
        ));
        assert!(matches!(err(b"3"), DecodeError::Unterminated { .. }));
    }

    #[test]
    fn rejects_structure_errors() {
        assert_eq!(err(b""), DecodeError::Empty);
        assert_eq!(err(b"i1ei2e"), DecodeError::TrailingBytes { offset: 3, count: 3 });
        assert_eq!(err(b"di1ei2ee"), DecodeError::NonStringKey { offset: 1 });
        assert_eq!(err(b"d1:ae"), DecodeError::MissingValue { offset: 4 });
        assert!(matches!(err(b"d1:ai1e1:ai2ee"), DecodeError::DuplicateKey { offset: 7, .. }));
        assert!(matches!(err(b"d1:bi1e1:ai2e1:bi3ee"), DecodeError::DuplicateKey { .. }));
        assert!(matches!(err(b"l"), DecodeError::Unterminated { offset: 1, start: 0 }));
        assert!(matches!(err(b"li1e"), DecodeError::Unterminated { .. }));
        assert!(matches!(err(b"e"), DecodeError::UnexpectedByte { offset: 0, byte: b'e' }));
        assert!(matches!(err(b"x"), DecodeError::UnexpectedByte { .. }));
    }

    #[test]
    fn limits_are_enforced() {
        let deep = "l".repeat(10_000) + &"e".repeat(10_000);
        assert!(matches!(
            err(deep.as_bytes()),
            DecodeError::TooDeep { offset: 64, limit: DEPTH_MAX_DEFAULT }
        ));
        let ok = "l".repeat(64) + &"e".repeat(64);
        assert!(decode(ok.as_bytes()).is_ok());
        let limits = DecodeLimits { depth_max: 8, tokens_max: 3 };
        assert!(decode_with(b"li1ei2ee", limits).is_ok());
        assert!(matches!(
            decode_with(b"li1ei2ei3ee", limits),
            Err(DecodeError::TooManyTokens { offset: 7, limit: 3 })
        ));
    }

    #[test]
    fn prefix_reports_bytes_used() {
        let (v, used) = decode_prefix(b"d1:ai1eeRAWDATA", DecodeLimits::default()).unwrap();
        assert_eq!(used, 8);
        assert_eq!(v.get(b"a").unwrap().as_int(), Some(1));
    }
}
