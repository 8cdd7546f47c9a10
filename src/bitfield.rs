//! A fixed-length bit set of pieces, in BitTorrent's wire order (bit 7 of byte 0
//! is piece 0).
//!
//! Layer: pure core. Invariant: bits past `len` in the last byte are always zero,
//! so the bytes can be sent as a `bitfield` message and compared directly.

/// Which pieces are present.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    ones: u32,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

/// A wire bitfield had the wrong length or set spare bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    #[error("bitfield is {got} bytes, expected {expected} for {pieces} pieces")]
    WrongLength { got: usize, expected: usize, pieces: u32 },
    #[error("bitfield sets bits past the last piece")]
    SpareBitsSet,
}

impl Bitfield {
    /// All pieces missing.
    pub fn new(len: u32) -> Bitfield {
        Bitfield { bytes: vec![0; (len as usize).div_ceil(8)], len, ones: 0 }
    }

    /// All pieces present.
    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// From wire bytes; the length must match `len` exactly and spare bits be zero.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Bitfield, BitfieldError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength { got: bytes.len(), expected, pieces: len });
        }
        if len % 8 != 0 {
            let mask = 0xffu8 >> (len % 8);
            if bytes[expected - 1] & mask != 0 {
                return Err(BitfieldError::SpareBitsSet);
            }
        }
        let ones = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield { bytes: bytes.to_vec(), len, ones })
    }

    /// Number of pieces (bits).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when there are no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Every piece present.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Is piece `i` present? Out of range reads as false.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Marks piece `i` present. Panics when out of range (a programmer error:
    /// callers validate peer-supplied indices first).
    pub fn set(&mut self, i: u32) {
        assert!(i < self.len, "piece {i} out of range {}", self.len);
        let byte = &mut self.bytes[(i / 8) as usize];
        let bit = 0x80 >> (i % 8);
        if *byte & bit == 0 {
            *byte |= bit;
            self.ones += 1;
        }
    }

    /// Marks piece `i` missing. Panics when out of range.
    pub fn clear(&mut self, i: u32) {
        assert!(i < self.len, "piece {i} out of range {}", self.len);
        let byte = &mut self.bytes[(i / 8) as usize];
        let bit = 0x80 >> (i % 8);
        if *byte & bit != 0 {
            *byte &= !bit;
            self.ones -= 1;
        }
    }

    /// Indices of present pieces, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_spare_bits() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        b.set(9);
        assert_eq!(b.count(), 2);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(b.get(9) && !b.get(8) && !b.get(10));
        b.clear(0);
        assert_eq!(b.count(), 1);
        assert_eq!(Bitfield::from_bytes(&[0, 0x40], 10).unwrap(), b);
        assert_eq!(Bitfield::from_bytes(&[0, 0x20], 10), Err(BitfieldError::SpareBitsSet));
        assert!(matches!(Bitfield::from_bytes(&[0], 10), Err(BitfieldError::WrongLength { .. })));
        assert!(Bitfield::full(10).is_full());
        assert_eq!(Bitfield::full(10).iter_ones().count(), 10);
    }
}
