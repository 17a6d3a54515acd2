//! `config` output: the config header decoded field by field, then the
//! capability lists, as rows or one JSON document.

use barmap::config::regs::{
    PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_IO, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_HEADER_TYPE_BRIDGE,
    PCI_HEADER_TYPE_CARDBUS, PCI_HEADER_TYPE_NORMAL, PCI_STATUS_CAP_LIST, PCI_STATUS_INTERRUPT,
};
use barmap::config::{Capability, ConfigHeader, ExtendedCapability};
use barmap::{BarKind, PciAddress};
use serde_json::{json, Value};

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
mod tests {
    use barmap::config::regs::{
        PCI_BASE_ADDRESS_0, PCI_CAPABILITY_LIST, PCI_COMMAND, PCI_INTERRUPT_LINE, PCI_REVISION_ID,
        PCI_SUBSYSTEM_VENDOR_ID, PCI_VENDOR_ID,
    };
    use barmap::{ConfigSpace, MemoryRegion};

    use super::*;
    use crate::format::columns;

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
