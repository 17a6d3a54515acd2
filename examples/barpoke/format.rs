//! barpoke's output primitives: pure functions from values to the text it
//! prints (register values, trace lines, hexdumps, aligned columns), and the
//! access path an access takes.

use std::fmt::Write as _;
use std::ops::Range;

use barmap::shadow::Refusal;
use barmap::{Interface, RegionIndex};

use crate::parse::Width;

/// How one access reaches the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessPath {
    /// A volatile load or store on the direct mapping.
    Mmap,
    /// A pread or pwrite on the VFIO device descriptor.
    Syscall,
    /// A volatile load or store on a trapped page of the shadow region, served
    /// by barmap's fault handler with a pread or pwrite.
    Fault,
}

impl AccessPath {
    /// The path's name, as `--via` spells it.
    pub fn name(self) -> &'static str {
        match self {
            AccessPath::Mmap => "mmap",
            AccessPath::Syscall => "syscall",
            AccessPath::Fault => "fault",
        }
    }

    /// The path an access of `len` bytes at `offset` takes, given the directly
    /// mapped ranges and the path (`slow`) of everything else.
    pub fn of(mapped: &[Range<u64>], slow: AccessPath, offset: u64, len: u64) -> AccessPath {
        let end = offset.saturating_add(len);
        if mapped.iter().any(|r| r.start <= offset && end <= r.end) {
            AccessPath::Mmap
        } else {
            slow
        }
    }
}

/// The short name of a kernel interface in JSON output (what the guest
/// harness's `BARMAP_INTERFACE` holds).
pub fn interface_name(interface: Interface) -> &'static str {
    match interface {
        Interface::Group => "group",
        Interface::Iommufd => "iommufd",
        Interface::NoIommu => "noiommu",
        _ => "other",
    }
}

/// A register value as `read` prints it: `0x` and lowercase hex, zero-padded to `width / 4` digits.
pub fn hex_value(value: u64, width: Width) -> String {
    format!("0x{value:0digits$x}", digits = width.bits() as usize / 4)
}

/// `--trace` line of one access, e.g. `trace: read bar0+0x0 w32 = 0x010000ed via mmap`;
/// one the fault handler refused ends with what became of it:
/// `trace: write bar0+0x4 w32 = 0x00000001 via fault, dropped (device answered EIO)`.
pub fn trace_line(
    op: &str,
    region: RegionIndex,
    offset: u64,
    width: Width,
    value: u64,
    path: AccessPath,
    refused: Option<Refusal>,
) -> String {
    let mut line = format!(
        "trace: {op} {region}+{offset:#x} w{width} = {} via {}",
        hex_value(value, width),
        path.name()
    );
    if let Some(refusal) = refused {
        let fate = if op == "write" { "dropped" } else { "refused" };
        let _ = write!(line, ", {fate} ({})", refusal.reason());
    }
    line
}

/// `bytes` read from `start` on, formatted like `hexdump -C` (without squeezing
/// repeated lines into `*`, as `hexdump -C -v`): lines of 16 bytes starting at
/// `start`, each with its offset, the bytes in two groups of 8 and their
/// printable ASCII between bars, then a last line with the end offset.
pub fn hexdump(start: u64, bytes: &[u8]) -> String {
    let mut out = String::new();
    for (n, line) in bytes.chunks(16).enumerate() {
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

/// Rows of cells as lines with every column but the last padded to its widest cell.
pub fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join(" ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::parse::width;

    #[test]
    fn values_are_zero_padded_to_the_width() {
        assert_eq!(hex_value(0x0100_00ed, Width::W32), "0x010000ed");
        assert_eq!(hex_value(0, width("8").unwrap()), "0x00");
        assert_eq!(hex_value(0xbeef, width("16").unwrap()), "0xbeef");
        assert_eq!(hex_value(u64::MAX, width("64").unwrap()), "0xffffffffffffffff");
        assert_eq!(hex_value(0x78, width("64").unwrap()), "0x0000000000000078");
    }

    #[test]
    fn trace_lines_name_offset_width_value_and_path() {
        assert_eq!(
            trace_line(
                "read",
                RegionIndex::new(0),
                0,
                Width::W32,
                0x0100_00ed,
                AccessPath::Mmap,
                None
            ),
            "trace: read bar0+0x0 w32 = 0x010000ed via mmap"
        );
        assert_eq!(
            trace_line(
                "write",
                RegionIndex::new(1),
                0x83,
                width("8").unwrap(),
                0xfa,
                AccessPath::Syscall,
                None
            ),
            "trace: write bar1+0x83 w8 = 0xfa via syscall"
        );
        assert_eq!(
            trace_line(
                "read",
                RegionIndex::new(1),
                4,
                Width::W32,
                0x83,
                AccessPath::Fault,
                None
            ),
            "trace: read bar1+0x4 w32 = 0x00000083 via fault"
        );
    }

    #[test]
    fn trace_lines_show_refused_accesses_as_refused() {
        assert_eq!(
            trace_line(
                "write",
                RegionIndex::new(0),
                4,
                Width::W32,
                1,
                AccessPath::Fault,
                Some(Refusal::Revoked)
            ),
            "trace: write bar0+0x4 w32 = 0x00000001 via fault, dropped (device answered EIO)"
        );
        assert_eq!(
            trace_line(
                "read",
                RegionIndex::new(0),
                0x10,
                width("16").unwrap(),
                0xffff,
                AccessPath::Fault,
                Some(Refusal::WriteOnly)
            ),
            "trace: read bar0+0x10 w16 = 0xffff via fault, refused (write-only region)"
        );
    }

    #[test]
    fn hexdump_matches_hexdump_c() {
        // Reference: printf 'hello\nworld, this is a longer line!' | hexdump -C
        let expected = "\
00000000  68 65 6c 6c 6f 0a 77 6f  72 6c 64 2c 20 74 68 69  |hello.world, thi|
00000010  73 20 69 73 20 61 20 6c  6f 6e 67 65 72 20 6c 69  |s is a longer li|
00000020  6e 65 21                                          |ne!|
00000023
";
        assert_eq!(hexdump(0, b"hello\nworld, this is a longer line!"), expected);
    }

    #[test]
    fn hexdump_starts_at_the_offset_and_pads_short_lines() {
        let bytes = [0xed, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x41];
        let expected = "\
00000104  ed 00 00 01 ff ff ff ff  41                       |........A|
0000010d
";
        assert_eq!(hexdump(0x104, &bytes), expected);
        assert_eq!(hexdump(0x20, &[]), "00000020\n");
        assert!(hexdump(0x1_0000_0000, &[0]).starts_with("100000000  00 "));
    }

    #[test]
    fn columns_are_aligned_without_trailing_spaces() {
        let rows = vec![
            vec!["a".to_string(), "long".to_string(), "x".to_string()],
            vec!["bbb".to_string(), "s".to_string(), "".to_string()],
        ];
        assert_eq!(columns(&rows), "a   long x\nbbb s\n");
        assert_eq!(columns(&[]), "");
    }

    #[test]
    fn access_paths() {
        let mapped = [0x1000..0x2000, 0x3000..0x4000];
        let (syscall, fault) = (AccessPath::Syscall, AccessPath::Fault);
        assert_eq!(AccessPath::of(&mapped, syscall, 0x1000, 4), AccessPath::Mmap);
        assert_eq!(AccessPath::of(&mapped, fault, 0x1ffc, 4), AccessPath::Mmap);
        assert_eq!(AccessPath::of(&mapped, syscall, 0x1ffc, 8), syscall);
        assert_eq!(AccessPath::of(&mapped, fault, 0x1ffc, 8), fault);
        assert_eq!(AccessPath::of(&mapped, syscall, 0x2000, 4), syscall);
        assert_eq!(AccessPath::of(&[], fault, 0, 1), fault);
        assert_eq!(AccessPath::of(&mapped, syscall, u64::MAX, 4), syscall);
    }
}
