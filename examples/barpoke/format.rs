//! barpoke's output primitives: pure functions from values to the text it
//! prints (register values, trace lines, aligned columns), and the
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
