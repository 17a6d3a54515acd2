//! The standard header: the first 64 bytes of a function's config space.

use super::regs::{
    PCI_BASE_ADDRESS_0, PCI_CACHE_LINE_SIZE, PCI_CAPABILITY_LIST, PCI_CB_CAPABILITY_LIST, PCI_CLASS_PROG,
    PCI_COMMAND, PCI_DEVICE_ID, PCI_HEADER_TYPE, PCI_HEADER_TYPE_BRIDGE, PCI_HEADER_TYPE_CARDBUS,
    PCI_HEADER_TYPE_MASK, PCI_HEADER_TYPE_MFD, PCI_HEADER_TYPE_NORMAL, PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN,
    PCI_LATENCY_TIMER, PCI_REVISION_ID, PCI_STATUS, PCI_STATUS_CAP_LIST, PCI_STD_HEADER_SIZEOF,
    PCI_SUBSYSTEM_ID, PCI_SUBSYSTEM_VENDOR_ID, PCI_VENDOR_ID,
};

/// The decoded standard header (the first 64 bytes) of a function's config space.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigHeader {
    /// Vendor ID; 0xffff if nothing answers.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Command register (see the `PCI_COMMAND_*` bits in [`regs`](super::regs)).
    pub command: u16,
    /// Status register (see the `PCI_STATUS_*` bits in [`regs`](super::regs)).
    pub status: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Class code, 24 bits: base class << 16 | subclass << 8 | programming interface.
    pub class_code: u32,
    /// Cache line size, in dwords.
    pub cache_line_size: u8,
    /// Latency timer.
    pub latency_timer: u8,
    /// Header type as read: layout in bits 0-6, multi-function in bit 7.
    pub header_type: u8,
    /// The base address registers as read: 6 for a type-0 header, 2 for a
    /// PCI-to-PCI bridge, 1 for a CardBus bridge, none for unknown layouts. A
    /// 64-bit BAR takes two entries (low dword first).
    pub bars: Vec<u32>,
    /// Subsystem vendor ID (type-0 headers only).
    pub subsystem_vendor_id: Option<u16>,
    /// Subsystem ID (type-0 headers only).
    pub subsystem_id: Option<u16>,
    /// The capability list pointer as read (its low 2 bits are reserved); 0
    /// for a layout without one.
    pub capabilities_pointer: u8,
    /// Interrupt line (for the OS; meaningless to the device).
    pub interrupt_line: u8,
    /// Interrupt pin: 0 none, 1-4 INTA-INTD.
    pub interrupt_pin: u8,
}

impl ConfigHeader {
    /// Decodes the standard header from its 64 bytes, as read from offset 0.
    pub(super) fn decode(raw: &[u8; PCI_STD_HEADER_SIZEOF as usize]) -> Self {
        let byte = |at: u16| raw[usize::from(at)];
        let word = |at: u16| u16::from_le_bytes([byte(at), byte(at + 1)]);
        let dword = |at: u16| u32::from_le_bytes([byte(at), byte(at + 1), byte(at + 2), byte(at + 3)]);

        let header_type = byte(PCI_HEADER_TYPE);
        let layout = header_type & PCI_HEADER_TYPE_MASK;
        let (cap_list, bar_count) = layout_info(layout);
        let normal = layout == PCI_HEADER_TYPE_NORMAL;
        ConfigHeader {
            vendor_id: word(PCI_VENDOR_ID),
            device_id: word(PCI_DEVICE_ID),
            command: word(PCI_COMMAND),
            status: word(PCI_STATUS),
            revision_id: byte(PCI_REVISION_ID),
            class_code: u32::from_le_bytes([
                byte(PCI_CLASS_PROG),
                byte(PCI_CLASS_PROG + 1),
                byte(PCI_CLASS_PROG + 2),
                0,
            ]),
            cache_line_size: byte(PCI_CACHE_LINE_SIZE),
            latency_timer: byte(PCI_LATENCY_TIMER),
            header_type,
            bars: (0..bar_count as u16)
                .map(|n| dword(PCI_BASE_ADDRESS_0 + 4 * n))
                .collect(),
            subsystem_vendor_id: normal.then(|| word(PCI_SUBSYSTEM_VENDOR_ID)),
            subsystem_id: normal.then(|| word(PCI_SUBSYSTEM_ID)),
            capabilities_pointer: cap_list.map_or(0, byte),
            interrupt_line: byte(PCI_INTERRUPT_LINE),
            interrupt_pin: byte(PCI_INTERRUPT_PIN),
        }
    }

    /// The header layout: [`PCI_HEADER_TYPE_NORMAL`], [`PCI_HEADER_TYPE_BRIDGE`], ...
    pub fn layout(&self) -> u8 {
        self.header_type & PCI_HEADER_TYPE_MASK
    }

    /// Whether the device reports more than one function.
    pub fn is_multi_function(&self) -> bool {
        self.header_type & PCI_HEADER_TYPE_MFD != 0
    }

    /// Where this header's layout keeps the capability list pointer, if it has one.
    pub(super) fn capability_pointer_offset(&self) -> Option<u16> {
        layout_info(self.layout()).0
    }

    /// Whether the status register announces a capability list.
    pub fn has_capabilities(&self) -> bool {
        self.status & PCI_STATUS_CAP_LIST != 0
    }
}

/// Where a header layout keeps its capability pointer, and how many BARs it has.
fn layout_info(layout: u8) -> (Option<u16>, usize) {
    match layout {
        PCI_HEADER_TYPE_NORMAL => (Some(PCI_CAPABILITY_LIST), 6),
        PCI_HEADER_TYPE_BRIDGE => (Some(PCI_CAPABILITY_LIST), 2),
        PCI_HEADER_TYPE_CARDBUS => (Some(PCI_CB_CAPABILITY_LIST), 1),
        _ => (None, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::{addr, edu, pcie, std_caps};
    use crate::config::regs::PCI_COMMAND_MEMORY;
    use crate::config::ConfigSpace;

    #[test]
    fn edu_header() {
        let region = edu().region();
        let config = ConfigSpace::new(&region, addr());
        assert_eq!(config.address(), addr());
        assert_eq!(config.size(), 256);
        let header = config.header().unwrap();
        assert_eq!(
            header,
            ConfigHeader {
                vendor_id: 0x1234,
                device_id: 0x11e8,
                command: PCI_COMMAND_MEMORY,
                status: 0x0010,
                revision_id: 0x10,
                class_code: 0x00ff00,
                cache_line_size: 0,
                latency_timer: 0,
                header_type: 0,
                bars: vec![0xfea0_0000, 0, 0, 0, 0, 0],
                subsystem_vendor_id: Some(0x1af4),
                subsystem_id: Some(0x1100),
                capabilities_pointer: 0x40,
                interrupt_line: 11,
                interrupt_pin: 1,
            }
        );
        assert_eq!(header.layout(), PCI_HEADER_TYPE_NORMAL);
        assert!(!header.is_multi_function());
        assert!(header.has_capabilities());

        // Read as 32-bit registers: device and vendor ID, class and revision,
        // subsystem and subsystem vendor ID.
        assert_eq!(config.read32(PCI_VENDOR_ID).unwrap(), 0x11e8_1234);
        assert_eq!(config.read32(PCI_REVISION_ID).unwrap(), 0x00ff_0010);
        assert_eq!(config.read32(PCI_SUBSYSTEM_VENDOR_ID).unwrap(), 0x1100_1af4);
    }

    #[test]
    fn bridge_and_cardbus_layouts() {
        let mut f = pcie();
        f.set8(PCI_HEADER_TYPE, PCI_HEADER_TYPE_BRIDGE)
            .set32(PCI_BASE_ADDRESS_0, 0xfe00_0000)
            .set32(PCI_BASE_ADDRESS_0 + 4, 0)
            .set32(0x18, 0x0002_0100); // bus numbers: not BARs
        let region = f.region();
        let config = ConfigSpace::new(&region, addr());
        let header = config.header().unwrap();
        assert_eq!(header.layout(), PCI_HEADER_TYPE_BRIDGE);
        assert_eq!(header.bars, vec![0xfe00_0000, 0]);
        assert_eq!((header.subsystem_vendor_id, header.subsystem_id), (None, None));
        assert_eq!(config.capabilities().unwrap().len(), 3);

        let mut f = pcie();
        f.set8(PCI_HEADER_TYPE, PCI_HEADER_TYPE_CARDBUS)
            .set8(PCI_CB_CAPABILITY_LIST, 0xd0)
            .set8(PCI_CAPABILITY_LIST, 0x02);
        let region = f.region();
        let config = ConfigSpace::new(&region, addr());
        let header = config.header().unwrap();
        assert_eq!((header.bars.len(), header.capabilities_pointer), (1, 0xd0));
        let offsets: Vec<_> = config.capabilities().unwrap().iter().map(|c| c.offset).collect();
        assert_eq!(offsets, [0xd0, 0xe0]);

        // An unknown layout has no BARs and no capability list we could find.
        let mut f = pcie();
        f.set8(PCI_HEADER_TYPE, 0x7f);
        let header = ConfigSpace::new(&f.region(), addr()).header().unwrap();
        assert_eq!((header.bars.len(), header.capabilities_pointer), (0, 0));
        assert_eq!(std_caps(&f).unwrap(), vec![]);
    }
}
