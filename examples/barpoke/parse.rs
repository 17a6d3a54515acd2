//! barpoke's argument parsers: pure functions that clap calls as value parsers,
//! so malformed input is a usage error (exit status 2) with clap's message.

use std::fmt;

/// Parses a decimal number or a `0x`-prefixed hexadecimal one into a `u64`.
///
/// Signs, spaces, underscores and an empty digit string are refused, and so is
/// a value that does not fit in 64 bits.
pub fn number(s: &str) -> Result<u64, String> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    // from_str_radix accepts a leading '+': check the digits first.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!("{s:?} is not a number: use decimal or 0x-prefixed hex"));
    }
    u64::from_str_radix(digits, radix).map_err(|_| format!("{s:?} does not fit in 64 bits"))
}

/// The width of one register access, in bits: 8, 16, 32 or 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Width(u32);

impl Width {
    /// 32-bit accesses: the default, and the width `dump` reads with.
    pub const W32: Width = Width(32);

    /// The width in bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The width in bytes.
    pub fn bytes(self) -> usize {
        self.0 as usize / 8
    }
}

impl fmt::Display for Width {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Parses an access width in bits (`-w`): 8, 16, 32 or 64.
pub fn width(s: &str) -> Result<Width, String> {
    match number(s) {
        Ok(bits @ (8 | 16 | 32 | 64)) => Ok(Width(bits as u32)),
        _ => Err(format!(
            "{s:?} is not an access width: use 8, 16, 32 or 64 (bits)"
        )),
    }
}

/// Parses a value count (`-n`): a number of at least 1.
pub fn count(s: &str) -> Result<u64, String> {
    match number(s)? {
        0 => Err("the count must be at least 1".to_string()),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_decimal_or_prefixed_hex() {
        assert_eq!(number("0"), Ok(0));
        assert_eq!(number("4096"), Ok(4096));
        assert_eq!(number("0x10"), Ok(16));
        assert_eq!(number("0X1f"), Ok(31));
        assert_eq!(number("0xEDCBA987"), Ok(0xedcb_a987));
        assert_eq!(number("0xffffffffffffffff"), Ok(u64::MAX));
        assert_eq!(number("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(number("010"), Ok(10), "a leading zero is not octal");
    }

    #[test]
    fn garbage_and_overflow_are_refused_with_the_input_named() {
        for bad in [
            "", "0x", "x10", "10h", "ff", "-1", "+1", "0x+1", "1_000", " 1", "1 ", "0b101", "1e3",
        ] {
            let err = number(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("not a number"),
                "{bad:?}: {err}"
            );
        }
        for big in ["0x10000000000000000", "18446744073709551616"] {
            assert!(
                number(big).unwrap_err().contains("does not fit in 64 bits"),
                "{big}"
            );
        }
    }

    #[test]
    fn widths_are_bits() {
        for (s, bytes) in [("8", 1), ("16", 2), ("32", 4), ("64", 8), ("0x20", 4)] {
            let w = width(s).unwrap();
            assert_eq!(w.bytes(), bytes, "{s}");
            assert_eq!(w.bits() as usize, bytes * 8);
        }
        assert_eq!(Width::W32.to_string(), "32");
        for bad in ["4", "1", "2", "0", "12", "128", "w32", ""] {
            assert!(width(bad).unwrap_err().contains("8, 16, 32 or 64"), "{bad}");
        }
    }

    #[test]
    fn counts_start_at_one() {
        assert_eq!(count("1"), Ok(1));
        assert_eq!(count("0x10"), Ok(16));
        assert!(count("0").unwrap_err().contains("at least 1"));
        assert!(count("many").unwrap_err().contains("not a number"));
    }
}
