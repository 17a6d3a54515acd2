//! What each subcommand does: open what it needs, make its accesses, and
//! return what it prints (text or JSON) for `main` to write.

use std::ops::Range;

use barmap::pci::VFIO_PCI_DRIVER;
use barmap::{Device, MapPolicy, PciAddress, Result, Sysfs};
use serde_json::{json, Value};

use crate::cli::{Cli, RegionArgs, Register};
use crate::format::{self, AccessPath};
use crate::hexdump::{hexdump, Repeats};
use crate::opened::Opened;
use crate::parse::Width;
use crate::record::DriverRecords;
use crate::Outcome;
use crate::{devices, header};

/// What `dump` shows when no LEN is given: at most this many bytes.
const DEFAULT_DUMP_LEN: u64 = 256;

/// A JSON document as printed: pretty, with a final newline.
fn json_doc(value: &Value) -> String {
    format!("{value:#}\n")
}

/// `barpoke list`: every PCI device sysfs shows.
pub fn list(cli: &Cli) -> Outcome {
    let devices = Sysfs::default().devices()?;
    if cli.json {
        return Ok(json_doc(&Value::Array(
            devices.iter().map(devices::device_json).collect(),
        )));
    }
    let rows: Vec<Vec<String>> = devices.iter().map(devices::device_row).collect();
    Ok(format::columns(&rows))
}

/// `barpoke bind ADDR`: binds the device to vfio-pci, recording the driver it leaves.
pub fn bind(cli: &Cli, addr: PciAddress) -> Outcome {
    let sysfs = Sysfs::default();
    let bind = sysfs.prepare_vfio_bind(addr)?;
    // The driver to give the device back to on unbind, recorded before the
    // device leaves it; a device already on vfio-pci keeps its record.
    match bind.current_driver() {
        Some(VFIO_PCI_DRIVER) => {}
        current => DriverRecords::default().remember(addr, current)?,
    }
    let group = bind.bind()?;
    Ok(if cli.json {
        json_doc(&json!({"address": addr.to_string(), "driver": "vfio-pci", "iommu_group": group}))
    } else {
        format!("{addr} driver vfio-pci group {group}\n")
    })
}

/// `barpoke unbind ADDR`: gives the device back to the driver recorded at bind (or the default).
pub fn unbind(cli: &Cli, addr: PciAddress) -> Outcome {
    let sysfs = Sysfs::default();
    let records = DriverRecords::default();
    // The library leaves a device of another driver alone; barpoke leaves its record alone then.
    let from_vfio = sysfs.driver(addr)?.is_none_or(|d| d == VFIO_PCI_DRIVER);
    let previous = if from_vfio {
        records.previous_driver(addr)?
    } else {
        None
    };
    let driver = sysfs.unbind(addr, previous.as_deref())?;
    if from_vfio {
        records.forget(addr)?;
    }
    Ok(if cli.json {
        json_doc(&json!({"address": addr.to_string(), "driver": driver}))
    } else {
        format!("{addr} driver {}\n", driver.as_deref().unwrap_or("none"))
    })
}

/// `barpoke info ADDR`: one row per region, with the path `--via auto` takes.
pub fn info(cli: &Cli, addr: PciAddress) -> Outcome {
    let device = Device::open(addr)?;
    let mut regions = Vec::new();
    // What `--via auto` would do: the fault handler where there is one.
    let slow = if cfg!(target_arch = "x86_64") {
        AccessPath::Fault
    } else {
        AccessPath::Syscall
    };
    for info in device.regions().iter().filter(|r| r.size > 0) {
        let region = device.region(info.index, MapPolicy::Direct)?;
        let kind = info.index.bar_number().and_then(|n| device.bar_kind(n));
        regions.push((info, kind, region.mapped_ranges().to_vec(), slow));
    }
    if cli.json {
        let regions: Vec<Value> = regions
            .iter()
            .map(|(r, kind, mapped, slow)| devices::region_json(r, *kind, mapped, *slow))
            .collect();
        return Ok(json_doc(&json!({
            "address": addr.to_string(),
            "iommu_group": device.iommu_group(),
            "interface": format::interface_name(device.interface()),
            "interface_description": device.interface().to_string(),
            "regions": regions,
        })));
    }
    let heading = format!("{addr} through the {}\n", device.interface());
    let mut rows = vec![devices::region_header()];
    rows.extend(
        regions
            .iter()
            .map(|(r, kind, mapped, slow)| devices::region_row(r, *kind, mapped, *slow)),
    );
    Ok(heading + &format::columns(&rows))
}

/// `barpoke read`: `count` values of `width` from the register on.
pub fn read(cli: &Cli, at: &Register, width: Width, count: u64) -> Outcome {
    let (addr, index, offset) = at.parts();
    let device = Device::open(addr)?;
    let region = Opened::open(&device, index, cli.via)?;
    let step = width.bytes() as u64;
    region.check_span(offset, count.saturating_mul(step))?;
    let values = (0..count)
        .map(|i| region.read(offset + i * step, width, cli.trace))
        .collect::<Result<Vec<u64>>>()?;
    let hex: Vec<String> = values.iter().map(|v| format::hex_value(*v, width)).collect();
    if cli.json {
        return Ok(json_doc(&json!({
            "address": addr.to_string(),
            "region": index.to_string(),
            "offset": offset,
            "width": width.bits(),
            "via": cli.via.name(),
            "values": values,
            "hex": hex,
        })));
    }
    Ok(hex.iter().map(|h| format!("{h}\n")).collect())
}

/// `barpoke write`: one access of `width` writing `value`.
pub fn write(cli: &Cli, at: &Register, value: u64, width: Width) -> Outcome {
    let (addr, index, offset) = at.parts();
    let device = Device::open(addr)?;
    let region = Opened::open(&device, index, cli.via)?;
    region.write(offset, width, value, cli.trace)?;
    Ok(if cli.json {
        json_doc(&json!({
            "address": addr.to_string(),
            "region": index.to_string(),
            "offset": offset,
            "width": width.bits(),
            "via": cli.via.name(),
            "value": value,
        }))
    } else {
        String::new()
    })
}

/// The aligned 32-bit words that cover `offset..offset + len`, as a byte range.
fn dword_span(offset: u64, len: u64) -> Range<u64> {
    let start = offset / 4 * 4;
    let end = (offset + len).next_multiple_of(4);
    start..end
}

/// `barpoke dump`: part of a region as `hexdump -C` shows it, read with 32-bit accesses.
pub fn dump(cli: &Cli, at: &RegionArgs, offset: Option<u64>, len: Option<u64>) -> Outcome {
    let (addr, index) = (at.device.addr, at.index);
    let device = Device::open(addr)?;
    let region = Opened::open(&device, index, cli.via)?;
    let offset = offset.unwrap_or(0);
    let len = len.unwrap_or_else(|| region.size().saturating_sub(offset).min(DEFAULT_DUMP_LEN));
    // A dump must start inside the region even when it shows nothing.
    region.check_span(offset, len.max(1))?;
    let span = dword_span(offset, len);
    region.check_span(span.start, span.end - span.start)?;
    let mut bytes = Vec::new();
    for at in span.clone().step_by(4) {
        let word = region.read(at, Width::W32, cli.trace)? as u32;
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let skip = (offset - span.start) as usize;
    let shown = &bytes[skip..skip + len as usize];
    if cli.json {
        return Ok(json_doc(&json!({
            "address": addr.to_string(),
            "region": index.to_string(),
            "offset": offset,
            "len": len,
            "via": cli.via.name(),
            "bytes": shown,
        })));
    }
    Ok(hexdump(offset, shown, Repeats::Shown))
}

/// `barpoke config ADDR`: the decoded config header and capability lists.
pub fn config(cli: &Cli, addr: PciAddress) -> Outcome {
    let device = Device::open(addr)?;
    let config = device.config()?;
    let header = config.header()?;
    let caps = config.capabilities()?;
    let ext = config.extended_capabilities()?;
    Ok(if cli.json {
        json_doc(&header::config_json(addr, &header, &caps, &ext))
    } else {
        format::columns(&header::config_rows(addr, &header, &caps, &ext))
    })
}

#[cfg(test)]
mod tests {
    use super::dword_span;

    #[test]
    fn dump_reads_the_covering_dwords() {
        assert_eq!(dword_span(0, 0x20), 0..0x20);
        assert_eq!(dword_span(1, 2), 0..4);
        assert_eq!(dword_span(3, 2), 0..8);
        assert_eq!(dword_span(0x104, 9), 0x104..0x110);
        assert_eq!(dword_span(8, 0), 8..8);
    }
}
