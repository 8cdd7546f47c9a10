//! Sizes as people type them on the command line.
//!
//! Layer: edge.

/// `262144`, `256K`, `256KiB`, `1M`, `1G` (binary multiples; case-insensitive).
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let trimmed = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, multiplier) = match trimmed.as_bytes().last() {
        Some(b'k') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some(b'm') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some(b'g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        Some(b't') => (&trimmed[..trimmed.len() - 1], 1 << 40),
        _ => (trimmed, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("262144"), Some(262144));
        assert_eq!(parse_size("256K"), Some(256 << 10));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
