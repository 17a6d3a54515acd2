//! `list` and `info` output: one row (or JSON element) per device and per
//! region.

use std::ops::Range;

use barmap::{BarKind, PciDeviceInfo, RegionCap, RegionIndex, RegionInfo};
use serde_json::{json, Value};

use crate::format::AccessPath;

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

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one mapped range, not a range of values
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use barmap::{RegionFlags, SparseArea, Sysfs};

    use super::*;
    use crate::format::columns;

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
    fn region_paths_say_mmap_the_slow_path_or_both() {
        let mapped = [0x1000..0x2000, 0x3000..0x4000];
        let (syscall, fault) = (AccessPath::Syscall, AccessPath::Fault);
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
}
