//! barpoke's output: pure functions from values to the text and JSON it prints.

use std::fmt::Write as _;
use std::ops::Range;

use barmap::config::regs::{
    PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_IO, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_HEADER_TYPE_BRIDGE,
    PCI_HEADER_TYPE_CARDBUS, PCI_HEADER_TYPE_NORMAL, PCI_STATUS_CAP_LIST, PCI_STATUS_INTERRUPT,
};
use barmap::config::{Capability, ConfigHeader, ExtendedCapability};
use barmap::{BarKind, PciAddress, PciDeviceInfo, RegionCap, RegionIndex, RegionInfo};
use serde_json::{json, Value};

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

/// A register value as `read` prints it: `0x` and lowercase hex, zero-padded to `width / 4` digits.
pub fn hex_value(value: u64, width: Width) -> String {
    format!("0x{value:0digits$x}", digits = width.bits() as usize / 4)
}

/// `--trace` line of one access, e.g. `trace: read bar0+0x0 w32 = 0x010000ed via mmap`.
pub fn trace_line(
    op: &str,
    region: RegionIndex,
    offset: u64,
    width: Width,
    value: u64,
    path: AccessPath,
) -> String {
    format!(
        "trace: {op} {region}+{offset:#x} w{width} = {} via {}",
        hex_value(value, width),
        path.name()
    )
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

/// A driver name, or `none`.
fn driver_name(driver: Option<&str>) -> &str {
    driver.unwrap_or("none")
}

/// `list` row: `0000:00:03.0 1234:11e8 class 00ff00 driver vfio-pci group 5`.
pub fn device_row(dev: &PciDeviceInfo) -> Vec<String> {
    vec![
        dev.address.to_string(),
        format!("{:04x}:{:04x}", dev.vendor, dev.device),
        "class".to_string(),
        format!("{:06x}", dev.class),
        "driver".to_string(),
        driver_name(dev.driver.as_deref()).to_string(),
        "group".to_string(),
        dev.iommu_group.map_or("none".to_string(), |g| g.to_string()),
    ]
}

/// `list --json` element.
pub fn device_json(dev: &PciDeviceInfo) -> Value {
    json!({
        "address": dev.address.to_string(),
        "vendor": dev.vendor,
        "device": dev.device,
        "id": format!("{:04x}:{:04x}", dev.vendor, dev.device),
        "class": dev.class,
        "class_hex": format!("{:06x}", dev.class),
        "subsystem_vendor": dev.subsystem_vendor,
        "subsystem_device": dev.subsystem_device,
        "driver": dev.driver,
        "iommu_group": dev.iommu_group,
    })
}

/// The access path `--via auto` takes through a region of `size` bytes with
/// these mapped ranges, `slow` being the path of the rest: `mmap`,
/// `mmap+fault` (partly mapped) or `fault`; `syscall` where there is no shadow region.
pub fn region_path(size: u64, mapped: &[Range<u64>], slow: AccessPath) -> String {
    let covered: u64 = mapped.iter().map(|r| r.end.saturating_sub(r.start)).sum();
    match covered {
        0 => slow.name().to_string(),
        c if c >= size => "mmap".to_string(),
        _ => format!("mmap+{}", slow.name()),
    }
}

/// What a region is: the BAR kind (`mem32`, `mem64, prefetchable`, `io`), `rom`, `config` or `-`.
pub fn region_kind(info: &RegionInfo, kind: Option<BarKind>) -> String {
    match (kind, info.index) {
        (Some(kind), _) => kind.to_string(),
        (None, RegionIndex::ROM) => "rom".to_string(),
        (None, RegionIndex::CONFIG) => "config".to_string(),
        (None, _) => "-".to_string(),
    }
}

/// One capability, e.g. `sparse(0x0+0x1000,0x3000+0x1000)`, `msix-mappable`, `type(1:2)`.
pub fn cap_text(cap: &RegionCap) -> String {
    match cap {
        RegionCap::SparseMmap(areas) => {
            let areas: Vec<String> = areas
                .iter()
                .map(|a| format!("{:#x}+{:#x}", a.offset, a.size))
                .collect();
            format!("sparse({})", areas.join(","))
        }
        RegionCap::MsixMappable => "msix-mappable".to_string(),
        RegionCap::Type { type_, subtype } => format!("type({type_}:{subtype})"),
        RegionCap::Unknown { id, version } => format!("cap(id {id} v{version})"),
    }
}

/// `info` row: name, size, flags, kind, access path, capabilities (`-` for none).
pub fn region_row(
    info: &RegionInfo,
    kind: Option<BarKind>,
    mapped: &[Range<u64>],
    slow: AccessPath,
) -> Vec<String> {
    let caps: Vec<String> = info.caps.iter().map(cap_text).collect();
    vec![
        info.index.to_string(),
        format!("{:#x}", info.size),
        info.flags.to_string(),
        region_kind(info, kind),
        region_path(info.size, mapped, slow),
        if caps.is_empty() {
            "-".to_string()
        } else {
            caps.join(" ")
        },
    ]
}

/// The header row of `info`.
pub fn region_header() -> Vec<String> {
    ["REGION", "SIZE", "FLAGS", "KIND", "ACCESS", "CAPS"]
        .map(String::from)
        .to_vec()
}

/// `info --json` element.
pub fn region_json(
    info: &RegionInfo,
    kind: Option<BarKind>,
    mapped: &[Range<u64>],
    slow: AccessPath,
) -> Value {
    json!({
        "region": info.index.to_string(),
        "index": info.index.get(),
        "size": info.size,
        "flags": info.flags.to_string(),
        "readable": info.flags.readable(),
        "writable": info.flags.writable(),
        "mmapable": info.flags.mmapable(),
        "kind": region_kind(info, kind),
        "access": region_path(info.size, mapped, slow),
        "mapped": mapped.iter().map(|r| json!([r.start, r.end])).collect::<Vec<_>>(),
        "caps": info.caps.iter().map(cap_text).collect::<Vec<_>>(),
    })
}

/// The command register bits `config` names.
const COMMAND_BITS: [(u16, &str); 4] = [
    (PCI_COMMAND_IO, "io"),
    (PCI_COMMAND_MEMORY, "mem"),
    (PCI_COMMAND_MASTER, "master"),
    (PCI_COMMAND_INTX_DISABLE, "intx-disable"),
];

/// The status register bits `config` names.
const STATUS_BITS: [(u16, &str); 2] = [
    (PCI_STATUS_INTERRUPT, "interrupt"),
    (PCI_STATUS_CAP_LIST, "cap-list"),
];

/// A 16-bit register in hex followed by the names of its set bits among `names`.
fn register_bits(value: u16, names: &[(u16, &str)]) -> String {
    let mut out = format!("{value:#06x}");
    for (bit, name) in names {
        if value & bit != 0 {
            out.push(' ');
            out.push_str(name);
        }
    }
    out
}

/// The header layout's name.
fn layout_name(layout: u8) -> &'static str {
    match layout {
        PCI_HEADER_TYPE_NORMAL => "normal",
        PCI_HEADER_TYPE_BRIDGE => "bridge",
        PCI_HEADER_TYPE_CARDBUS => "cardbus",
        _ => "unknown",
    }
}

/// The interrupt pin's name: `none` or `INTA`..`INTD`.
fn pin_name(pin: u8) -> String {
    match pin {
        0 => "none".to_string(),
        1..=4 => format!("INT{}", char::from(b'A' + pin - 1)),
        _ => format!("invalid ({pin})"),
    }
}

/// The BAR registers with what each decodes: `mem32`, `io`, ..., `upper half`
/// for the second register of a 64-bit BAR, `-` for an unimplemented one.
fn bar_registers(bars: &[u32]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut upper = false;
    for &value in bars {
        let kind = if upper {
            upper = false;
            "upper half".to_string()
        } else if value == 0 {
            "-".to_string()
        } else {
            let kind = BarKind::from_register(value);
            upper = matches!(kind, BarKind::Memory64 { .. });
            kind.to_string()
        };
        out.push((value, kind));
    }
    out
}

/// `config` rows: the decoded header, then one row per capability.
pub fn config_rows(
    addr: PciAddress,
    header: &ConfigHeader,
    caps: &[Capability],
    ext: &[ExtendedCapability],
) -> Vec<Vec<String>> {
    let row = |key: &str, value: String| vec![key.to_string(), value];
    let mut rows = vec![
        row("address", addr.to_string()),
        row("id", format!("{:04x}:{:04x}", header.vendor_id, header.device_id)),
        row("revision", format!("{:#04x}", header.revision_id)),
        row("class", format!("{:06x}", header.class_code)),
        row(
            "header-type",
            format!(
                "{:#04x} {}{}",
                header.header_type,
                layout_name(header.layout()),
                if header.is_multi_function() {
                    " multi-function"
                } else {
                    ""
                }
            ),
        ),
    ];
    if let (Some(vendor), Some(id)) = (header.subsystem_vendor_id, header.subsystem_id) {
        rows.push(row("subsystem", format!("{vendor:04x}:{id:04x}")));
    }
    rows.push(row("command", register_bits(header.command, &COMMAND_BITS)));
    rows.push(row("status", register_bits(header.status, &STATUS_BITS)));
    for (n, (value, kind)) in bar_registers(&header.bars).into_iter().enumerate() {
        rows.push(row(&format!("bar{n}"), format!("{value:#010x} {kind}")));
    }
    rows.push(row(
        "interrupt",
        format!(
            "pin {} line {}",
            pin_name(header.interrupt_pin),
            header.interrupt_line
        ),
    ));
    if caps.is_empty() {
        rows.push(row("capabilities", "none".to_string()));
    }
    rows.extend(caps.iter().map(|c| row("capability", c.to_string())));
    rows.extend(ext.iter().map(|c| row("extended", c.to_string())));
    rows
}

/// `config --json` document.
pub fn config_json(
    addr: PciAddress,
    header: &ConfigHeader,
    caps: &[Capability],
    ext: &[ExtendedCapability],
) -> Value {
    let bars: Vec<Value> = bar_registers(&header.bars)
        .into_iter()
        .map(|(value, kind)| json!({"value": value, "kind": kind}))
        .collect();
    let caps: Vec<Value> = caps
        .iter()
        .map(|c| json!({"id": c.id, "offset": c.offset, "name": c.name()}))
        .collect();
    let ext: Vec<Value> = ext
        .iter()
        .map(|c| json!({"id": c.id, "version": c.version, "offset": c.offset, "name": c.name()}))
        .collect();
    json!({
        "address": addr.to_string(),
        "vendor_id": header.vendor_id,
        "device_id": header.device_id,
        "id": format!("{:04x}:{:04x}", header.vendor_id, header.device_id),
        "revision_id": header.revision_id,
        "class_code": header.class_code,
        "class_hex": format!("{:06x}", header.class_code),
        "header_type": header.header_type,
        "subsystem_vendor_id": header.subsystem_vendor_id,
        "subsystem_id": header.subsystem_id,
        "command": header.command,
        "status": header.status,
        "bars": bars,
        "capabilities_pointer": header.capabilities_pointer,
        "interrupt_line": header.interrupt_line,
        "interrupt_pin": header.interrupt_pin,
        "capabilities": caps,
        "extended_capabilities": ext,
    })
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one mapped range, not a range of values
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use barmap::config::regs::{
        PCI_BASE_ADDRESS_0, PCI_CAPABILITY_LIST, PCI_COMMAND, PCI_INTERRUPT_LINE, PCI_REVISION_ID,
        PCI_SUBSYSTEM_VENDOR_ID, PCI_VENDOR_ID,
    };
    use barmap::{BarKind, ConfigSpace, MemoryRegion, RegionFlags, SparseArea, Sysfs};

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
                AccessPath::Mmap
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
                AccessPath::Syscall
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
                AccessPath::Fault
            ),
            "trace: read bar1+0x4 w32 = 0x00000083 via fault"
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

    /// edu as sysfs shows it, read from a tree of its attribute files.
    fn edu_info(driver: Option<&str>) -> PciDeviceInfo {
        let root = tempfile::TempDir::new().unwrap();
        let dir = root.path().join("bus/pci/devices/0000:00:03.0");
        fs::create_dir_all(&dir).unwrap();
        for (attr, value) in [
            ("vendor", "0x1234"),
            ("device", "0x11e8"),
            ("class", "0x00ff00"),
            ("subsystem_vendor", "0x1af4"),
            ("subsystem_device", "0x1100"),
        ] {
            fs::write(dir.join(attr), format!("{value}\n")).unwrap();
        }
        if let Some(driver) = driver {
            symlink(format!("../../drivers/{driver}"), dir.join("driver")).unwrap();
        }
        symlink("../../../../kernel/iommu_groups/5", dir.join("iommu_group")).unwrap();
        Sysfs::with_root(root.path())
            .device("00:03.0".parse().unwrap())
            .unwrap()
    }

    #[test]
    fn device_rows_and_json() {
        assert_eq!(
            columns(&[device_row(&edu_info(Some("vfio-pci")))]),
            "0000:00:03.0 1234:11e8 class 00ff00 driver vfio-pci group 5\n"
        );
        let mut no_group = edu_info(None);
        no_group.iommu_group = None;
        assert_eq!(device_row(&no_group)[4..].join(" "), "driver none group none");
        let v = device_json(&edu_info(Some("vfio-pci")));
        assert_eq!(v["address"], "0000:00:03.0");
        assert_eq!(v["vendor"], 0x1234);
        assert_eq!(v["device"], 0x11e8);
        assert_eq!(v["id"], "1234:11e8");
        assert_eq!(v["class"], 0xff00);
        assert_eq!(v["class_hex"], "00ff00");
        assert_eq!(v["driver"], "vfio-pci");
        assert_eq!(v["iommu_group"], 5);
        assert_eq!(device_json(&no_group)["driver"], Value::Null);
        assert_eq!(device_json(&no_group)["iommu_group"], Value::Null);
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
        assert_eq!(region_path(0x4000, &[0..0x4000], fault), "mmap");
        assert_eq!(region_path(0x100, &[0..0x100], syscall), "mmap");
        assert_eq!(region_path(0x4000, &mapped, syscall), "mmap+syscall");
        assert_eq!(region_path(0x4000, &mapped, fault), "mmap+fault");
        assert_eq!(region_path(0x100, &[], syscall), "syscall");
        assert_eq!(region_path(0x100, &[], fault), "fault");
    }

    fn region(
        index: u32,
        size: u64,
        flags: u32,
        caps: Vec<RegionCap>,
        kind: Option<BarKind>,
    ) -> (RegionInfo, Option<BarKind>) {
        let info = RegionInfo::new(
            RegionIndex::new(index),
            size,
            0,
            RegionFlags::from_bits(flags),
            caps,
        );
        (info, kind)
    }

    #[test]
    fn region_rows_name_size_flags_kind_path_and_caps() {
        let edu = region(
            0,
            0x10_0000,
            0x7,
            vec![],
            Some(BarKind::Memory32 { prefetchable: false }),
        );
        let io = region(1, 0x100, 0x3, vec![], Some(BarKind::Io));
        let config = region(7, 0x100, 0x3, vec![], None);
        let rom = region(6, 0x8000, 0x1, vec![], None);
        let sparse = region(
            2,
            0x4000,
            0xf,
            vec![
                RegionCap::SparseMmap(vec![SparseArea {
                    offset: 0,
                    size: 0x1000,
                }]),
                RegionCap::MsixMappable,
                RegionCap::Type { type_: 1, subtype: 2 },
                RegionCap::Unknown { id: 9, version: 1 },
            ],
            Some(BarKind::Memory64 { prefetchable: true }),
        );
        let table = columns(&[
            region_header(),
            region_row(&edu.0, edu.1, &[0..0x10_0000], AccessPath::Fault),
            region_row(&io.0, io.1, &[], AccessPath::Fault),
            region_row(&config.0, config.1, &[], AccessPath::Syscall),
            region_row(&rom.0, rom.1, &[], AccessPath::Fault),
            region_row(&sparse.0, sparse.1, &[0..0x1000], AccessPath::Fault),
        ]);
        let expected = "\
REGION SIZE     FLAGS KIND                ACCESS     CAPS
bar0   0x100000 rwm   mem32               mmap       -
bar1   0x100    rw-   io                  fault      -
config 0x100    rw-   config              syscall    -
rom    0x8000   r--   rom                 fault      -
bar2   0x4000   rwm   mem64, prefetchable mmap+fault sparse(0x0+0x1000) msix-mappable type(1:2) cap(id 9 v1)
";
        assert_eq!(table, expected);
        let v = region_json(&sparse.0, sparse.1, &[0..0x1000], AccessPath::Fault);
        assert_eq!(v["region"], "bar2");
        assert_eq!(v["index"], 2);
        assert_eq!(v["size"], 0x4000);
        assert_eq!(v["flags"], "rwm");
        assert_eq!(
            (v["readable"].clone(), v["mmapable"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(v["kind"], "mem64, prefetchable");
        assert_eq!(v["access"], "mmap+fault");
        assert_eq!(v["mapped"], json!([[0, 0x1000]]));
        assert_eq!(v["caps"][0], "sparse(0x0+0x1000)");
        assert_eq!(
            region_json(&io.0, io.1, &[], AccessPath::Syscall)["caps"],
            json!([])
        );
    }

    /// edu's header, with more kinds of BAR than edu has, decoded from its
    /// bytes as barpoke gets it.
    fn edu_header() -> ConfigHeader {
        let mut bytes = vec![0u8; 64];
        for (at, dword) in [
            (PCI_VENDOR_ID, 0x11e8_1234u32),
            (PCI_COMMAND, 0x0010_0503),
            (PCI_REVISION_ID, 0x00ff_0010),
            (PCI_BASE_ADDRESS_0, 0xfea0_0000),
            (PCI_BASE_ADDRESS_0 + 8, 0xc00c),
            (PCI_BASE_ADDRESS_0 + 12, 0x1),
            (PCI_BASE_ADDRESS_0 + 16, 0xc001),
            (PCI_SUBSYSTEM_VENDOR_ID, 0x1100_1af4),
            (PCI_CAPABILITY_LIST, 0x40),
            (PCI_INTERRUPT_LINE, 0x0100 | 11),
        ] {
            let at = usize::from(at);
            bytes[at..at + 4].copy_from_slice(&dword.to_le_bytes());
        }
        let region = MemoryRegion::new(bytes);
        ConfigSpace::new(&region, "00:03.0".parse().unwrap())
            .header()
            .unwrap()
    }

    #[test]
    fn config_is_decoded_header_then_capabilities() {
        let addr: PciAddress = "00:03.0".parse().unwrap();
        let msi = Capability { id: 5, offset: 0x40 };
        let aer = ExtendedCapability {
            id: 1,
            version: 2,
            offset: 0x100,
        };
        let expected = "\
address     0000:00:03.0
id          1234:11e8
revision    0x10
class       00ff00
header-type 0x00 normal
subsystem   1af4:1100
command     0x0503 io mem intx-disable
status      0x0010 cap-list
bar0        0xfea00000 mem32
bar1        0x00000000 -
bar2        0x0000c00c mem64, prefetchable
bar3        0x00000001 upper half
bar4        0x0000c001 io
bar5        0x00000000 -
interrupt   pin INTA line 11
capability  MSI (0x05) at 0x40
extended    Advanced Error Reporting (0x0001) v2 at 0x100
";
        assert_eq!(
            columns(&config_rows(addr, &edu_header(), &[msi], &[aer])),
            expected
        );
        let mut testdev = edu_header();
        testdev.header_type = 0x80;
        testdev.interrupt_pin = 0;
        let rows: Vec<String> = config_rows(addr, &testdev, &[], &[])
            .iter()
            .map(|r| r.join(" "))
            .collect();
        assert!(rows.contains(&"capabilities none".to_string()), "{rows:?}");
        assert!(
            rows.contains(&"header-type 0x80 normal multi-function".to_string()),
            "{rows:?}"
        );
        assert!(
            rows.contains(&"interrupt pin none line 11".to_string()),
            "{rows:?}"
        );

        let v = config_json(addr, &edu_header(), &[msi], &[aer]);
        assert_eq!(v["address"], "0000:00:03.0");
        assert_eq!(
            (v["vendor_id"].clone(), v["device_id"].clone()),
            (json!(0x1234), json!(0x11e8))
        );
        assert_eq!(v["id"], "1234:11e8");
        assert_eq!(v["class_hex"], "00ff00");
        assert_eq!(v["subsystem_vendor_id"], 0x1af4);
        assert_eq!(v["bars"][0], json!({"value": 0xfea0_0000u32, "kind": "mem32"}));
        assert_eq!(v["bars"][3]["kind"], "upper half");
        assert_eq!(
            v["capabilities"],
            json!([{"id": 5, "offset": 0x40, "name": "MSI"}])
        );
        assert_eq!(v["extended_capabilities"][0]["name"], "Advanced Error Reporting");
        assert_eq!(pin_name(4), "INTD");
        assert_eq!(layout_name(1), "bridge");
    }
}
