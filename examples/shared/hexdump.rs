//! Bytes as `hexdump -C` prints them, shared by the examples that show
//! device memory (barpoke's `dump`, the NVMe driver's `read`).

use std::fmt::Write as _;

/// What happens to a line of 16 bytes equal to the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeats {
    /// Every line is printed (`hexdump -C -v`).
    Shown,
    /// A run of equal lines after the first becomes one `*` (`hexdump -C`).
    Squeezed,
}

/// `bytes` read from `start` on, formatted like `hexdump -C`: lines of 16
/// bytes starting at `start`, each with its offset, the bytes in two groups
/// of 8 and their printable ASCII between bars, then a last line with the
/// end offset.
pub fn hexdump(start: u64, bytes: &[u8], repeats: Repeats) -> String {
    let mut out = String::new();
    let mut previous: Option<&[u8]> = None;
    let mut squeezed = false;
    for (n, line) in bytes.chunks(16).enumerate() {
        if repeats == Repeats::Squeezed && previous == Some(line) {
            if !squeezed {
                out.push_str("*\n");
                squeezed = true;
            }
            continue;
        }
        (previous, squeezed) = (Some(line), false);
        let _ = write!(out, "{:08x} ", start + 16 * n as u64);
        for i in 0..16 {
            if i % 8 == 0 {
                out.push(' ');
            }
            match line.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, " |{ascii}|");
    }
    let _ = writeln!(out, "{:08x}", start + bytes.len() as u64);
    out
}

#[cfg(test)]
mod tests {
    use super::{hexdump, Repeats};

    #[test]
    fn hexdump_matches_hexdump_c() {
        // Reference: printf 'hello\nworld, this is a longer line!' | hexdump -C
        let expected = "\
00000000  68 65 6c 6c 6f 0a 77 6f  72 6c 64 2c 20 74 68 69  |hello.world, thi|
00000010  73 20 69 73 20 61 20 6c  6f 6e 67 65 72 20 6c 69  |s is a longer li|
00000020  6e 65 21                                          |ne!|
00000023
";
        let bytes = b"hello\nworld, this is a longer line!";
        assert_eq!(hexdump(0, bytes, Repeats::Shown), expected);
        assert_eq!(hexdump(0, bytes, Repeats::Squeezed), expected, "no line repeats");
    }

    #[test]
    fn hexdump_starts_at_the_offset_and_pads_short_lines() {
        let bytes = [0xed, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x41];
        let expected = "\
00000104  ed 00 00 01 ff ff ff ff  41                       |........A|
0000010d
";
        assert_eq!(hexdump(0x104, &bytes, Repeats::Shown), expected);
        assert_eq!(hexdump(0x20, &[], Repeats::Shown), "00000020\n");
        assert!(hexdump(0x1_0000_0000, &[0], Repeats::Shown).starts_with("100000000  00 "));
    }

    #[test]
    fn squeezed_runs_of_equal_lines_are_one_star_as_hexdump_c_prints_them() {
        // Reference: 64 zero bytes, "0123456789abcdef", 16 zero bytes | hexdump -C
        let mut bytes = vec![0u8; 64];
        bytes.extend_from_slice(b"0123456789abcdef");
        bytes.extend_from_slice(&[0; 16]);
        let expected = "\
00000200  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
*
00000240  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|
00000250  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
00000260
";
        assert_eq!(hexdump(0x200, &bytes, Repeats::Squeezed), expected);
        assert_eq!(
            hexdump(0x200, &bytes, Repeats::Shown).lines().count(),
            7,
            "six lines and the end"
        );
    }
}
