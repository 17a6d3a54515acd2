//! PCI configuration space: the standard header and the capability lists.
//!
//! [`ConfigSpace`] reads config space through any [`RegionIo`]: the VFIO
//! config region of an open device, or a [`MemoryRegion`](crate::MemoryRegion)
//! holding the bytes of sysfs's `config` file or a test fixture. All values
//! are little-endian; accesses are 1, 2 or 4 bytes, naturally aligned, as on
//! the bus. Offsets are named once here, with the Linux `pci_regs.h` names.
//!
//! ```
//! use barmap::config::{ConfigSpace, PCI_CAP_ID_MSI, PCI_CAPABILITY_LIST, PCI_STATUS, PCI_STATUS_CAP_LIST};
//! use barmap::{MemoryRegion, PciAddress};
//!
//! // The first bytes of QEMU's edu device: 1234:11e8, one MSI capability at 0x40.
//! let mut bytes = vec![0u8; 256];
//! bytes[0..4].copy_from_slice(&[0x34, 0x12, 0xe8, 0x11]);
//! bytes[usize::from(PCI_STATUS)] = PCI_STATUS_CAP_LIST as u8;
//! bytes[usize::from(PCI_CAPABILITY_LIST)] = 0x40;
//! bytes[0x40..0x44].copy_from_slice(&0x0080_0005u32.to_le_bytes());
//! let region = MemoryRegion::new(bytes);
//!
//! let config = ConfigSpace::new(&region, "00:03.0".parse()?);
//! let header = config.header()?;
//! assert_eq!((header.vendor_id, header.device_id), (0x1234, 0x11e8));
//! let caps = config.capabilities()?;
//! assert_eq!(caps.len(), 1);
//! assert_eq!((caps[0].id, caps[0].offset), (PCI_CAP_ID_MSI, 0x40));
//! assert_eq!(caps[0].name(), Some("MSI"));
//! assert!(config.extended_capabilities()?.is_empty()); // 256 bytes: no extended space
//! # Ok::<(), barmap::Error>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;

use crate::error::{Error, Result};
use crate::pci::PciAddress;
use crate::region::{RegionIndex, RegionIo};

/// Vendor ID (16 bits).
pub const PCI_VENDOR_ID: u16 = 0x00;
/// Device ID (16 bits).
pub const PCI_DEVICE_ID: u16 = 0x02;
/// Command register (16 bits).
pub const PCI_COMMAND: u16 = 0x04;
/// Status register (16 bits).
pub const PCI_STATUS: u16 = 0x06;
/// Revision ID (8 bits).
pub const PCI_REVISION_ID: u16 = 0x08;
/// Class code (24 bits: base class, subclass, programming interface), from the programming interface up.
pub const PCI_CLASS_PROG: u16 = 0x09;
/// Cache line size (8 bits).
pub const PCI_CACHE_LINE_SIZE: u16 = 0x0c;
/// Latency timer (8 bits).
pub const PCI_LATENCY_TIMER: u16 = 0x0d;
/// Header type (8 bits): layout in bits 0-6, multi-function in bit 7.
pub const PCI_HEADER_TYPE: u16 = 0x0e;
/// First base address register (32 bits); the others follow every 4 bytes.
pub const PCI_BASE_ADDRESS_0: u16 = 0x10;
/// CardBus bridges: the capability list pointer (8 bits).
pub const PCI_CB_CAPABILITY_LIST: u16 = 0x14;
/// Type-0 headers: subsystem vendor ID (16 bits).
pub const PCI_SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Type-0 headers: subsystem ID (16 bits).
pub const PCI_SUBSYSTEM_ID: u16 = 0x2e;
/// Type-0 and type-1 headers: the capability list pointer (8 bits).
pub const PCI_CAPABILITY_LIST: u16 = 0x34;
/// Interrupt line (8 bits).
pub const PCI_INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin (8 bits): 0 none, 1-4 INTA-INTD.
pub const PCI_INTERRUPT_PIN: u16 = 0x3d;
/// Size of the standard header; capabilities live above it.
pub const PCI_STD_HEADER_SIZEOF: u16 = 0x40;
/// Size of conventional config space; PCIe extended capabilities start here.
pub const PCI_CFG_SPACE_SIZE: u16 = 0x100;

/// Command bit: respond to I/O space accesses.
pub const PCI_COMMAND_IO: u16 = 0x1;
/// Command bit: respond to memory space accesses.
pub const PCI_COMMAND_MEMORY: u16 = 0x2;
/// Command bit: bus mastering (DMA, and MSI writes) enabled.
pub const PCI_COMMAND_MASTER: u16 = 0x4;
/// Command bit: INTx emulation disabled.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x400;
/// Status bit: INTx is asserted.
pub const PCI_STATUS_INTERRUPT: u16 = 0x8;
/// Status bit: the capability list is present.
pub const PCI_STATUS_CAP_LIST: u16 = 0x10;

/// Header type bits that give the layout.
pub const PCI_HEADER_TYPE_MASK: u8 = 0x7f;
/// Header type bit: the device has more than one function.
pub const PCI_HEADER_TYPE_MFD: u8 = 0x80;
/// Header layout of an ordinary device (type 0).
pub const PCI_HEADER_TYPE_NORMAL: u8 = 0;
/// Header layout of a PCI-to-PCI bridge (type 1).
pub const PCI_HEADER_TYPE_BRIDGE: u8 = 1;
/// Header layout of a CardBus bridge (type 2).
pub const PCI_HEADER_TYPE_CARDBUS: u8 = 2;

/// Offset of the next-capability pointer within a standard capability.
pub const PCI_CAP_LIST_NEXT: u16 = 1;
/// Capability pointers are dword aligned; the low two bits are reserved.
const PCI_CAP_POINTER_MASK: u8 = 0xfc;

/// Capability ID: Power Management.
pub const PCI_CAP_ID_PM: u8 = 0x01;
/// Capability ID: Accelerated Graphics Port.
pub const PCI_CAP_ID_AGP: u8 = 0x02;
/// Capability ID: Vital Product Data.
pub const PCI_CAP_ID_VPD: u8 = 0x03;
/// Capability ID: Slot Identification.
pub const PCI_CAP_ID_SLOTID: u8 = 0x04;
/// Capability ID: Message Signalled Interrupts.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// Capability ID: CompactPCI Hot Swap.
pub const PCI_CAP_ID_CHSWP: u8 = 0x06;
/// Capability ID: PCI-X.
pub const PCI_CAP_ID_PCIX: u8 = 0x07;
/// Capability ID: HyperTransport.
pub const PCI_CAP_ID_HT: u8 = 0x08;
/// Capability ID: Vendor-Specific.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// Capability ID: Debug port.
pub const PCI_CAP_ID_DBG: u8 = 0x0a;
/// Capability ID: CompactPCI Central Resource Control.
pub const PCI_CAP_ID_CCRC: u8 = 0x0b;
/// Capability ID: PCI Standard Hot-Plug Controller.
pub const PCI_CAP_ID_SHPC: u8 = 0x0c;
/// Capability ID: Bridge subsystem vendor/device ID.
pub const PCI_CAP_ID_SSVID: u8 = 0x0d;
/// Capability ID: AGP Target PCI-PCI bridge.
pub const PCI_CAP_ID_AGP3: u8 = 0x0e;
/// Capability ID: Secure Device.
pub const PCI_CAP_ID_SECDEV: u8 = 0x0f;
/// Capability ID: PCI Express.
pub const PCI_CAP_ID_EXP: u8 = 0x10;
/// Capability ID: MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// Capability ID: SATA Data/Index Configuration.
pub const PCI_CAP_ID_SATA: u8 = 0x12;
/// Capability ID: PCI Advanced Features.
pub const PCI_CAP_ID_AF: u8 = 0x13;
/// Capability ID: Enhanced Allocation.
pub const PCI_CAP_ID_EA: u8 = 0x14;

/// Extended capability ID 0: a null capability (VFIO uses it to hide the first one and keep the list).
pub const PCI_EXT_CAP_ID_NULL: u16 = 0x00;
/// Extended capability ID: Advanced Error Reporting.
pub const PCI_EXT_CAP_ID_ERR: u16 = 0x01;
/// Extended capability ID: Virtual Channel.
pub const PCI_EXT_CAP_ID_VC: u16 = 0x02;
/// Extended capability ID: Device Serial Number.
pub const PCI_EXT_CAP_ID_DSN: u16 = 0x03;
/// Extended capability ID: Power Budgeting.
pub const PCI_EXT_CAP_ID_PWR: u16 = 0x04;
/// Extended capability ID: Root Complex Link Declaration.
pub const PCI_EXT_CAP_ID_RCLD: u16 = 0x05;
/// Extended capability ID: Root Complex Internal Link Control.
pub const PCI_EXT_CAP_ID_RCILC: u16 = 0x06;
/// Extended capability ID: Root Complex Event Collector Endpoint Association.
pub const PCI_EXT_CAP_ID_RCEC: u16 = 0x07;
/// Extended capability ID: Multi-Function Virtual Channel.
pub const PCI_EXT_CAP_ID_MFVC: u16 = 0x08;
/// Extended capability ID: Virtual Channel (when an MFVC capability is also present).
pub const PCI_EXT_CAP_ID_VC9: u16 = 0x09;
/// Extended capability ID: Root Complex Register Block.
pub const PCI_EXT_CAP_ID_RCRB: u16 = 0x0a;
/// Extended capability ID: Vendor-Specific.
pub const PCI_EXT_CAP_ID_VNDR: u16 = 0x0b;
/// Extended capability ID: Config Access Correlation.
pub const PCI_EXT_CAP_ID_CAC: u16 = 0x0c;
/// Extended capability ID: Access Control Services.
pub const PCI_EXT_CAP_ID_ACS: u16 = 0x0d;
/// Extended capability ID: Alternative Routing-ID Interpretation.
pub const PCI_EXT_CAP_ID_ARI: u16 = 0x0e;
/// Extended capability ID: Address Translation Services.
pub const PCI_EXT_CAP_ID_ATS: u16 = 0x0f;
/// Extended capability ID: Single Root I/O Virtualization.
pub const PCI_EXT_CAP_ID_SRIOV: u16 = 0x10;
/// Extended capability ID: Multi Root I/O Virtualization.
pub const PCI_EXT_CAP_ID_MRIOV: u16 = 0x11;
/// Extended capability ID: Multicast.
pub const PCI_EXT_CAP_ID_MCAST: u16 = 0x12;
/// Extended capability ID: Page Request Interface.
pub const PCI_EXT_CAP_ID_PRI: u16 = 0x13;
/// Extended capability ID: Resizable BAR.
pub const PCI_EXT_CAP_ID_REBAR: u16 = 0x15;
/// Extended capability ID: Dynamic Power Allocation.
pub const PCI_EXT_CAP_ID_DPA: u16 = 0x16;
/// Extended capability ID: TLP Processing Hints requester.
pub const PCI_EXT_CAP_ID_TPH: u16 = 0x17;
/// Extended capability ID: Latency Tolerance Reporting.
pub const PCI_EXT_CAP_ID_LTR: u16 = 0x18;
/// Extended capability ID: Secondary PCI Express.
pub const PCI_EXT_CAP_ID_SECPCI: u16 = 0x19;
/// Extended capability ID: Protocol Multiplexing.
pub const PCI_EXT_CAP_ID_PMUX: u16 = 0x1a;
/// Extended capability ID: Process Address Space ID.
pub const PCI_EXT_CAP_ID_PASID: u16 = 0x1b;
/// Extended capability ID: LN Requester.
pub const PCI_EXT_CAP_ID_LNR: u16 = 0x1c;
/// Extended capability ID: Downstream Port Containment.
pub const PCI_EXT_CAP_ID_DPC: u16 = 0x1d;
/// Extended capability ID: L1 PM Substates.
pub const PCI_EXT_CAP_ID_L1SS: u16 = 0x1e;
/// Extended capability ID: Precision Time Measurement.
pub const PCI_EXT_CAP_ID_PTM: u16 = 0x1f;
/// Extended capability ID: Designated Vendor-Specific.
pub const PCI_EXT_CAP_ID_DVSEC: u16 = 0x23;
/// Extended capability ID: VF Resizable BAR.
pub const PCI_EXT_CAP_ID_VF_REBAR: u16 = 0x24;
/// Extended capability ID: Data Link Feature.
pub const PCI_EXT_CAP_ID_DLF: u16 = 0x25;
/// Extended capability ID: Physical Layer 16.0 GT/s.
pub const PCI_EXT_CAP_ID_PL_16GT: u16 = 0x26;
/// Extended capability ID: Native PCIe Enclosure Management.
pub const PCI_EXT_CAP_ID_NPEM: u16 = 0x29;
/// Extended capability ID: Physical Layer 32.0 GT/s.
pub const PCI_EXT_CAP_ID_PL_32GT: u16 = 0x2a;
/// Extended capability ID: Data Object Exchange.
pub const PCI_EXT_CAP_ID_DOE: u16 = 0x2e;
/// Extended capability ID: Physical Layer 64.0 GT/s.
pub const PCI_EXT_CAP_ID_PL_64GT: u16 = 0x31;

/// Extended capability header bits that give the ID.
const PCI_EXT_CAP_ID_MASK: u32 = 0xffff;
/// Shift and mask of the version in an extended capability header.
const PCI_EXT_CAP_VER_SHIFT: u32 = 16;
const PCI_EXT_CAP_VER_MASK: u32 = 0xf;
/// Shift and mask of the next pointer (dword aligned) in an extended capability header.
const PCI_EXT_CAP_NEXT_SHIFT: u32 = 20;
const PCI_EXT_CAP_NEXT_MASK: u32 = 0xffc;

/// The decoded standard header (the first 64 bytes) of a function's config space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigHeader {
    /// Vendor ID; 0xffff if nothing answers.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Command register (see the `PCI_COMMAND_*` bits).
    pub command: u16,
    /// Status register (see the `PCI_STATUS_*` bits).
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
    /// The header layout: [`PCI_HEADER_TYPE_NORMAL`], [`PCI_HEADER_TYPE_BRIDGE`], ...
    pub fn layout(&self) -> u8 {
        self.header_type & PCI_HEADER_TYPE_MASK
    }

    /// Whether the device reports more than one function.
    pub fn is_multi_function(&self) -> bool {
        self.header_type & PCI_HEADER_TYPE_MFD != 0
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

/// A capability in the standard list (config offsets 0x40-0xff).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID (`PCI_CAP_ID_*`).
    pub id: u8,
    /// Offset of the capability in config space.
    pub offset: u8,
}

impl Capability {
    /// The name of a known capability ID.
    pub fn name(&self) -> Option<&'static str> {
        Some(match self.id {
            PCI_CAP_ID_PM => "Power Management",
            PCI_CAP_ID_AGP => "AGP",
            PCI_CAP_ID_VPD => "Vital Product Data",
            PCI_CAP_ID_SLOTID => "Slot Identification",
            PCI_CAP_ID_MSI => "MSI",
            PCI_CAP_ID_CHSWP => "CompactPCI Hot Swap",
            PCI_CAP_ID_PCIX => "PCI-X",
            PCI_CAP_ID_HT => "HyperTransport",
            PCI_CAP_ID_VNDR => "Vendor-Specific",
            PCI_CAP_ID_DBG => "Debug Port",
            PCI_CAP_ID_CCRC => "CompactPCI Central Resource Control",
            PCI_CAP_ID_SHPC => "Standard Hot-Plug Controller",
            PCI_CAP_ID_SSVID => "Bridge Subsystem Vendor ID",
            PCI_CAP_ID_AGP3 => "AGP Target PCI-PCI Bridge",
            PCI_CAP_ID_SECDEV => "Secure Device",
            PCI_CAP_ID_EXP => "PCI Express",
            PCI_CAP_ID_MSIX => "MSI-X",
            PCI_CAP_ID_SATA => "SATA Data/Index Configuration",
            PCI_CAP_ID_AF => "Advanced Features",
            PCI_CAP_ID_EA => "Enhanced Allocation",
            _ => return None,
        })
    }
}

impl fmt::Display for Capability {
    /// `MSI (0x05) at 0x40`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:#04x}) at {:#x}",
            self.name().unwrap_or("unknown"),
            self.id,
            self.offset
        )
    }
}

/// A PCI Express extended capability (config offsets 0x100-0xfff).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendedCapability {
    /// Extended capability ID (`PCI_EXT_CAP_ID_*`).
    pub id: u16,
    /// Capability version (4 bits).
    pub version: u8,
    /// Offset of the capability in config space.
    pub offset: u16,
}

impl ExtendedCapability {
    /// The name of a known extended capability ID.
    pub fn name(&self) -> Option<&'static str> {
        Some(match self.id {
            PCI_EXT_CAP_ID_ERR => "Advanced Error Reporting",
            PCI_EXT_CAP_ID_VC | PCI_EXT_CAP_ID_VC9 => "Virtual Channel",
            PCI_EXT_CAP_ID_DSN => "Device Serial Number",
            PCI_EXT_CAP_ID_PWR => "Power Budgeting",
            PCI_EXT_CAP_ID_RCLD => "Root Complex Link Declaration",
            PCI_EXT_CAP_ID_RCILC => "Root Complex Internal Link Control",
            PCI_EXT_CAP_ID_RCEC => "Root Complex Event Collector",
            PCI_EXT_CAP_ID_MFVC => "Multi-Function Virtual Channel",
            PCI_EXT_CAP_ID_RCRB => "Root Complex Register Block",
            PCI_EXT_CAP_ID_VNDR => "Vendor-Specific",
            PCI_EXT_CAP_ID_CAC => "Config Access Correlation",
            PCI_EXT_CAP_ID_ACS => "Access Control Services",
            PCI_EXT_CAP_ID_ARI => "Alternative Routing-ID Interpretation",
            PCI_EXT_CAP_ID_ATS => "Address Translation Services",
            PCI_EXT_CAP_ID_SRIOV => "SR-IOV",
            PCI_EXT_CAP_ID_MRIOV => "MR-IOV",
            PCI_EXT_CAP_ID_MCAST => "Multicast",
            PCI_EXT_CAP_ID_PRI => "Page Request Interface",
            PCI_EXT_CAP_ID_REBAR => "Resizable BAR",
            PCI_EXT_CAP_ID_DPA => "Dynamic Power Allocation",
            PCI_EXT_CAP_ID_TPH => "TPH Requester",
            PCI_EXT_CAP_ID_LTR => "Latency Tolerance Reporting",
            PCI_EXT_CAP_ID_SECPCI => "Secondary PCI Express",
            PCI_EXT_CAP_ID_PMUX => "Protocol Multiplexing",
            PCI_EXT_CAP_ID_PASID => "Process Address Space ID",
            PCI_EXT_CAP_ID_LNR => "LN Requester",
            PCI_EXT_CAP_ID_DPC => "Downstream Port Containment",
            PCI_EXT_CAP_ID_L1SS => "L1 PM Substates",
            PCI_EXT_CAP_ID_PTM => "Precision Time Measurement",
            PCI_EXT_CAP_ID_DVSEC => "Designated Vendor-Specific",
            PCI_EXT_CAP_ID_VF_REBAR => "VF Resizable BAR",
            PCI_EXT_CAP_ID_DLF => "Data Link Feature",
            PCI_EXT_CAP_ID_PL_16GT => "Physical Layer 16.0 GT/s",
            PCI_EXT_CAP_ID_NPEM => "Native PCIe Enclosure Management",
            PCI_EXT_CAP_ID_PL_32GT => "Physical Layer 32.0 GT/s",
            PCI_EXT_CAP_ID_DOE => "Data Object Exchange",
            PCI_EXT_CAP_ID_PL_64GT => "Physical Layer 64.0 GT/s",
            _ => return None,
        })
    }
}

impl fmt::Display for ExtendedCapability {
    /// `Advanced Error Reporting (0x0001) v2 at 0x100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:#06x}) v{} at {:#x}",
            self.name().unwrap_or("unknown"),
            self.id,
            self.version,
            self.offset
        )
    }
}

/// Typed reads and writes of one function's config space over a [`RegionIo`].
///
/// Every access is one [`RegionIo`] call of 1, 2 or 4 bytes, naturally aligned
/// and inside the region, little-endian; [`header`](Self::header) reads the
/// 64-byte header in one call. Errors name the device given at construction
/// and the [`RegionIndex::CONFIG`] region. Through VFIO, the kernel
/// virtualizes parts of config space (e.g. BARs, MSI, hidden capabilities):
/// what is read is what the kernel lets userspace see.
#[derive(Clone, Copy)]
pub struct ConfigSpace<'a> {
    io: &'a dyn RegionIo,
    addr: PciAddress,
}

impl fmt::Debug for ConfigSpace<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("addr", &self.addr)
            .field("size", &self.io.size())
            .finish()
    }
}

impl<'a> ConfigSpace<'a> {
    /// Config space of the device at `addr`, read through `io` (the VFIO config
    /// region, or a [`MemoryRegion`](crate::MemoryRegion) of its bytes).
    pub fn new(io: &'a dyn RegionIo, addr: PciAddress) -> Self {
        ConfigSpace { io, addr }
    }

    /// The device this config space belongs to.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// Size of the config space in bytes: 256 for conventional PCI, 4096 for PCIe.
    pub fn size(&self) -> u64 {
        self.io.size()
    }

    /// Reads the byte at `offset`.
    pub fn read8(&self, offset: u16) -> Result<u8> {
        self.read::<1>(offset).map(u8::from_le_bytes)
    }

    /// Reads the 16-bit register at `offset` (2-byte aligned).
    pub fn read16(&self, offset: u16) -> Result<u16> {
        self.read::<2>(offset).map(u16::from_le_bytes)
    }

    /// Reads the 32-bit register at `offset` (4-byte aligned).
    pub fn read32(&self, offset: u16) -> Result<u32> {
        self.read::<4>(offset).map(u32::from_le_bytes)
    }

    /// Writes the byte at `offset`.
    pub fn write8(&self, offset: u16, value: u8) -> Result<()> {
        self.write(offset, value.to_le_bytes())
    }

    /// Writes the 16-bit register at `offset` (2-byte aligned), e.g. [`PCI_COMMAND`].
    pub fn write16(&self, offset: u16, value: u16) -> Result<()> {
        self.write(offset, value.to_le_bytes())
    }

    /// Writes the 32-bit register at `offset` (4-byte aligned), e.g. a BAR for sizing.
    pub fn write32(&self, offset: u16, value: u32) -> Result<()> {
        self.write(offset, value.to_le_bytes())
    }

    /// Reads and decodes the standard 64-byte header.
    pub fn header(&self) -> Result<ConfigHeader> {
        let mut raw = [0u8; PCI_STD_HEADER_SIZEOF as usize];
        self.check(0, raw.len(), 1)?;
        self.io
            .read_at(0, &mut raw)
            .map_err(|source| self.io_error(0, raw.len(), source))?;
        let byte = |at: u16| raw[usize::from(at)];
        let word = |at: u16| u16::from_le_bytes([byte(at), byte(at + 1)]);
        let dword = |at: u16| u32::from_le_bytes([byte(at), byte(at + 1), byte(at + 2), byte(at + 3)]);

        let header_type = byte(PCI_HEADER_TYPE);
        let layout = header_type & PCI_HEADER_TYPE_MASK;
        let (cap_list, bar_count) = layout_info(layout);
        let normal = layout == PCI_HEADER_TYPE_NORMAL;
        Ok(ConfigHeader {
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
        })
    }

    /// Walks the standard capability list.
    ///
    /// The list is empty unless the status register has
    /// [`PCI_STATUS_CAP_LIST`] set. Pointers are masked to dword alignment (the
    /// low two bits are reserved) and 0 ends the list. These are
    /// [`Error::MalformedConfig`], whose offset is that of the bad register,
    /// pointer or capability:
    /// - a vendor ID of 0xffff: config space reads all ones, the device is gone
    ///   or in reset;
    /// - a pointer below 0x40, into the header;
    /// - a capability visited twice: a loop (with at most 48 dword slots in
    ///   0x40..0x100, the walk is bounded);
    /// - a capability ID of 0xff: the capability reads all ones.
    pub fn capabilities(&self) -> Result<Vec<Capability>> {
        let header = self.header()?;
        if header.vendor_id == u16::MAX {
            return Err(self.malformed(
                PCI_VENDOR_ID,
                "vendor ID 0xffff: config space reads all ones (device gone or in reset?)",
            ));
        }
        let (Some(mut from), _) = layout_info(header.layout()) else {
            return Ok(Vec::new());
        };
        if !header.has_capabilities() {
            return Ok(Vec::new());
        }
        let mut caps = Vec::new();
        let mut visited = [false; PCI_CFG_SPACE_SIZE as usize / 4];
        let mut at = header.capabilities_pointer & PCI_CAP_POINTER_MASK;
        while at != 0 {
            if u16::from(at) < PCI_STD_HEADER_SIZEOF {
                return Err(self.malformed(from, "capability pointer points into the standard header"));
            }
            let slot = &mut visited[usize::from(at) / 4];
            if *slot {
                return Err(self.malformed(u16::from(at), "capability list loops"));
            }
            *slot = true;
            let [id, next] = self.read16(u16::from(at))?.to_le_bytes();
            if id == 0xff {
                return Err(self.malformed(
                    u16::from(at),
                    "capability ID 0xff: config space reads all ones (device gone or in reset?)",
                ));
            }
            caps.push(Capability { id, offset: at });
            from = u16::from(at) + PCI_CAP_LIST_NEXT;
            at = next & PCI_CAP_POINTER_MASK;
        }
        Ok(caps)
    }

    /// Walks the PCI Express extended capability list.
    ///
    /// Empty for a config space of 256 bytes or less, and when the header at
    /// 0x100 is 0 or all ones (no extended capabilities; a conventional device
    /// reads all ones there). Null capabilities (ID 0, as VFIO leaves at 0x100
    /// when it hides the first capability) are followed but not listed. A next
    /// pointer below 0x100 or past the end, an all-ones header reached through
    /// a pointer, and a loop are [`Error::MalformedConfig`], whose offset is
    /// that of the capability holding the bad header or pointer.
    pub fn extended_capabilities(&self) -> Result<Vec<ExtendedCapability>> {
        if self.size() <= u64::from(PCI_CFG_SPACE_SIZE) {
            return Ok(Vec::new());
        }
        let mut at = PCI_CFG_SPACE_SIZE;
        let mut header = self.read32(at)?;
        if header == 0 || header == u32::MAX {
            return Ok(Vec::new());
        }
        let mut caps = Vec::new();
        let mut visited = BTreeSet::new();
        loop {
            if !visited.insert(at) {
                return Err(self.malformed(at, "extended capability list loops"));
            }
            if header == u32::MAX {
                return Err(self.malformed(
                    at,
                    "extended capability header reads all ones (device gone or in reset?)",
                ));
            }
            let id = (header & PCI_EXT_CAP_ID_MASK) as u16;
            let version = ((header >> PCI_EXT_CAP_VER_SHIFT) & PCI_EXT_CAP_VER_MASK) as u8;
            let next = ((header >> PCI_EXT_CAP_NEXT_SHIFT) & PCI_EXT_CAP_NEXT_MASK) as u16;
            if id != PCI_EXT_CAP_ID_NULL {
                caps.push(ExtendedCapability {
                    id,
                    version,
                    offset: at,
                });
            }
            if next == 0 {
                return Ok(caps);
            }
            if next < PCI_CFG_SPACE_SIZE {
                return Err(self.malformed(at, "next extended capability points below 0x100"));
            }
            if u64::from(next) + 4 > self.size() {
                return Err(self.malformed(at, "next extended capability lies past the end of config space"));
            }
            at = next;
            header = self.read32(at)?;
        }
    }

    fn read<const N: usize>(&self, offset: u16) -> Result<[u8; N]> {
        self.check(offset, N, N)?;
        let mut buf = [0u8; N];
        self.io
            .read_at(u64::from(offset), &mut buf)
            .map_err(|source| self.io_error(offset, N, source))?;
        Ok(buf)
    }

    fn write<const N: usize>(&self, offset: u16, data: [u8; N]) -> Result<()> {
        self.check(offset, N, N)?;
        self.io
            .write_at(u64::from(offset), &data)
            .map_err(|source| self.io_error(offset, N, source))
    }

    /// Checks that `len` bytes at `offset` are inside the region and `align`-aligned.
    fn check(&self, offset: u16, len: usize, align: usize) -> Result<()> {
        if !usize::from(offset).is_multiple_of(align) {
            return Err(Error::Misaligned {
                addr: self.addr,
                region: RegionIndex::CONFIG,
                offset: u64::from(offset),
                width: len,
            });
        }
        if u64::from(offset) + len as u64 > self.size() {
            return Err(Error::OutOfRange {
                addr: self.addr,
                region: RegionIndex::CONFIG,
                offset: u64::from(offset),
                len: len as u64,
                size: self.size(),
            });
        }
        Ok(())
    }

    fn io_error(&self, offset: u16, len: usize, source: std::io::Error) -> Error {
        Error::Io {
            addr: self.addr,
            region: RegionIndex::CONFIG,
            offset: u64::from(offset),
            len: len as u64,
            source,
        }
    }

    fn malformed(&self, offset: u16, reason: &'static str) -> Error {
        Error::MalformedConfig {
            addr: self.addr,
            offset: u64::from(offset),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::region::MemoryRegion;

    /// Config space bytes under construction.
    struct Fixture(Vec<u8>);

    impl Fixture {
        fn new(size: usize) -> Self {
            Fixture(vec![0; size])
        }

        fn set8(&mut self, at: u16, value: u8) -> &mut Self {
            self.0[usize::from(at)] = value;
            self
        }

        fn set16(&mut self, at: u16, value: u16) -> &mut Self {
            let at = usize::from(at);
            self.0[at..at + 2].copy_from_slice(&value.to_le_bytes());
            self
        }

        fn set32(&mut self, at: u16, value: u32) -> &mut Self {
            let at = usize::from(at);
            self.0[at..at + 4].copy_from_slice(&value.to_le_bytes());
            self
        }

        /// A standard capability: ID, next pointer, then one dword of body.
        fn cap(&mut self, at: u8, id: u8, next: u8) -> &mut Self {
            self.set8(u16::from(at), id).set8(u16::from(at) + 1, next)
        }

        /// An extended capability header.
        fn ext_cap(&mut self, at: u16, id: u16, version: u8, next: u16) -> &mut Self {
            self.set32(
                at,
                u32::from(id) | u32::from(version) << 16 | u32::from(next) << 20,
            )
        }

        fn region(&self) -> MemoryRegion {
            MemoryRegion::new(self.0.clone())
        }
    }

    fn addr() -> PciAddress {
        PciAddress::new(0, 0, 3, 0).unwrap()
    }

    /// QEMU 7.2's edu device as the firmware leaves it (devices.md §1): 256
    /// bytes, one MSI capability. BAR0 holds a 1 MiB-aligned address.
    fn edu() -> Fixture {
        let mut f = Fixture::new(256);
        f.set16(PCI_VENDOR_ID, 0x1234)
            .set16(PCI_DEVICE_ID, 0x11e8)
            .set16(PCI_COMMAND, PCI_COMMAND_MEMORY)
            .set16(PCI_STATUS, PCI_STATUS_CAP_LIST)
            .set32(PCI_REVISION_ID, 0x00ff_0010)
            .set32(PCI_BASE_ADDRESS_0, 0xfea0_0000)
            .set16(PCI_SUBSYSTEM_VENDOR_ID, 0x1af4)
            .set16(PCI_SUBSYSTEM_ID, 0x1100)
            .set8(PCI_CAPABILITY_LIST, 0x40)
            .set8(PCI_INTERRUPT_LINE, 11)
            .set8(PCI_INTERRUPT_PIN, 1)
            .set32(0x40, 0x0080_0005);
        f
    }

    /// QEMU 7.2's pci-testdev (devices.md §2): no capabilities, no interrupt pin,
    /// a memory BAR0 and an I/O BAR1.
    fn pci_testdev() -> Fixture {
        let mut f = Fixture::new(256);
        f.set16(PCI_VENDOR_ID, 0x1b36)
            .set16(PCI_DEVICE_ID, 0x0005)
            .set16(PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY)
            .set32(PCI_REVISION_ID, 0x00ff_0000)
            .set32(PCI_BASE_ADDRESS_0, 0xfebf_f000)
            .set32(PCI_BASE_ADDRESS_0 + 4, 0x0000_c041)
            .set16(PCI_SUBSYSTEM_VENDOR_ID, 0x1af4)
            .set16(PCI_SUBSYSTEM_ID, 0x1100)
            .set8(PCI_INTERRUPT_LINE, 0xff);
        f
    }

    /// A 4 KiB PCIe endpoint: PM -> MSI -> PCIe in the standard list (not in
    /// address order), AER v2 -> DSN in the extended list, 64-bit BAR0/1.
    fn pcie() -> Fixture {
        let mut f = Fixture::new(4096);
        f.set16(PCI_VENDOR_ID, 0x8086)
            .set16(PCI_DEVICE_ID, 0x10d3)
            .set16(PCI_STATUS, PCI_STATUS_CAP_LIST)
            .set32(PCI_REVISION_ID, 0x0200_0001)
            .set8(PCI_HEADER_TYPE, PCI_HEADER_TYPE_MFD)
            .set32(PCI_BASE_ADDRESS_0, 0xf000_000c)
            .set32(PCI_BASE_ADDRESS_0 + 4, 0x0000_0001)
            .set8(PCI_CAPABILITY_LIST, 0xc8)
            .cap(0xc8, PCI_CAP_ID_PM, 0xd0)
            .cap(0xd0, PCI_CAP_ID_MSI, 0xe0)
            .cap(0xe0, PCI_CAP_ID_EXP, 0)
            .ext_cap(0x100, PCI_EXT_CAP_ID_ERR, 2, 0x140)
            .ext_cap(0x140, PCI_EXT_CAP_ID_DSN, 1, 0);
        f
    }

    #[track_caller]
    fn assert_malformed<T: fmt::Debug>(result: Result<T>, offset: u64) {
        match result {
            Err(Error::MalformedConfig {
                addr: got_addr,
                offset: got,
                reason,
            }) => {
                assert_eq!(got_addr, addr());
                assert_eq!(got, offset, "wrong offset for {reason:?}");
            }
            other => panic!("expected MalformedConfig at {offset:#x}, got {other:?}"),
        }
    }

    fn std_caps(f: &Fixture) -> Result<Vec<Capability>> {
        ConfigSpace::new(&f.region(), addr()).capabilities()
    }

    fn ext_caps(f: &Fixture) -> Result<Vec<ExtendedCapability>> {
        ConfigSpace::new(&f.region(), addr()).extended_capabilities()
    }

    #[test]
    fn edu_header_and_capabilities() {
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

        let caps = config.capabilities().unwrap();
        assert_eq!(
            caps,
            vec![Capability {
                id: PCI_CAP_ID_MSI,
                offset: 0x40
            }]
        );
        assert_eq!(caps[0].to_string(), "MSI (0x05) at 0x40");
        assert_eq!(config.read32(0x40).unwrap(), 0x0080_0005);
        assert_eq!(config.extended_capabilities().unwrap(), vec![]);

        // The acceptance dwords of devices.md §4.1.
        assert_eq!(config.read32(PCI_VENDOR_ID).unwrap(), 0x11e8_1234);
        assert_eq!(config.read32(PCI_REVISION_ID).unwrap(), 0x00ff_0010);
        assert_eq!(config.read32(PCI_SUBSYSTEM_VENDOR_ID).unwrap(), 0x1100_1af4);
    }

    #[test]
    fn pci_testdev_has_no_capabilities() {
        let region = pci_testdev().region();
        let config = ConfigSpace::new(&region, addr());
        let header = config.header().unwrap();
        assert_eq!((header.vendor_id, header.device_id), (0x1b36, 0x0005));
        assert_eq!((header.revision_id, header.class_code), (0, 0x00ff00));
        assert_eq!((header.status, header.capabilities_pointer), (0, 0));
        assert_eq!(header.interrupt_pin, 0);
        assert_eq!(header.bars, vec![0xfebf_f000, 0x0000_c041, 0, 0, 0, 0]);
        assert!(!header.has_capabilities());
        assert_eq!(config.capabilities().unwrap(), vec![]);
        assert_eq!(config.extended_capabilities().unwrap(), vec![]);
    }

    #[test]
    fn capability_pointer_is_ignored_without_the_status_bit() {
        let mut f = edu();
        f.set16(PCI_STATUS, 0);
        assert_eq!(std_caps(&f).unwrap(), vec![]);
        // Even a pointer that would be malformed.
        f.set8(PCI_CAPABILITY_LIST, 0x10);
        assert_eq!(std_caps(&f).unwrap(), vec![]);
    }

    #[test]
    fn pcie_standard_and_extended_lists() {
        let f = pcie();
        let region = f.region();
        let config = ConfigSpace::new(&region, addr());
        let header = config.header().unwrap();
        assert_eq!(header.class_code, 0x020000);
        assert_eq!(header.revision_id, 1);
        assert!(header.is_multi_function());
        assert_eq!(header.layout(), PCI_HEADER_TYPE_NORMAL);
        assert_eq!(header.bars[..2], [0xf000_000c, 1]);

        let caps = config.capabilities().unwrap();
        let ids: Vec<_> = caps.iter().map(|c| (c.id, c.offset)).collect();
        assert_eq!(
            ids,
            [
                (PCI_CAP_ID_PM, 0xc8),
                (PCI_CAP_ID_MSI, 0xd0),
                (PCI_CAP_ID_EXP, 0xe0)
            ]
        );
        let names: Vec<_> = caps.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [Some("Power Management"), Some("MSI"), Some("PCI Express")]
        );

        let ext = config.extended_capabilities().unwrap();
        assert_eq!(
            ext,
            [
                ExtendedCapability {
                    id: PCI_EXT_CAP_ID_ERR,
                    version: 2,
                    offset: 0x100
                },
                ExtendedCapability {
                    id: PCI_EXT_CAP_ID_DSN,
                    version: 1,
                    offset: 0x140
                },
            ]
        );
        assert_eq!(
            ext[0].to_string(),
            "Advanced Error Reporting (0x0001) v2 at 0x100"
        );
        assert_eq!(ext[1].name(), Some("Device Serial Number"));
    }

    #[test]
    fn reserved_pointer_bits_are_masked() {
        let mut f = pcie();
        f.set8(PCI_CAPABILITY_LIST, 0xcb).cap(0xc8, PCI_CAP_ID_PM, 0xd2);
        let offsets: Vec<_> = std_caps(&f).unwrap().iter().map(|c| c.offset).collect();
        assert_eq!(offsets, [0xc8, 0xd0, 0xe0]);
        // The extended next field's low two bits are reserved too.
        f.ext_cap(0x100, PCI_EXT_CAP_ID_ERR, 2, 0x143);
        let offsets: Vec<_> = ext_caps(&f).unwrap().iter().map(|c| c.offset).collect();
        assert_eq!(offsets, [0x100, 0x140]);
    }

    #[test]
    fn pointer_zero_with_the_status_bit_is_an_empty_list() {
        let mut f = edu();
        f.set8(PCI_CAPABILITY_LIST, 0);
        assert_eq!(std_caps(&f).unwrap(), vec![]);
        f.set8(PCI_CAPABILITY_LIST, 0x03);
        assert_eq!(std_caps(&f).unwrap(), vec![], "0x03 masks to 0");
    }

    #[test]
    fn unknown_ids_are_listed_without_a_name() {
        let mut f = pcie();
        f.cap(0xe0, 0x42, 0).ext_cap(0x140, 0x7777, 3, 0);
        let caps = std_caps(&f).unwrap();
        assert_eq!(
            caps[2],
            Capability {
                id: 0x42,
                offset: 0xe0
            }
        );
        assert_eq!(caps[2].name(), None);
        assert_eq!(caps[2].to_string(), "unknown (0x42) at 0xe0");
        let ext = ext_caps(&f).unwrap();
        assert_eq!(
            ext[1],
            ExtendedCapability {
                id: 0x7777,
                version: 3,
                offset: 0x140
            }
        );
        assert_eq!(ext[1].name(), None);
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

    #[test]
    fn standard_loops_are_refused() {
        let mut f = edu();
        f.cap(0x40, PCI_CAP_ID_MSI, 0x40);
        assert_malformed(std_caps(&f), 0x40);

        let mut f = pcie();
        f.cap(0xe0, PCI_CAP_ID_EXP, 0xc8);
        assert_malformed(std_caps(&f), 0xc8);

        // A loop back into the middle of the list, through masked bits.
        let mut f = pcie();
        f.cap(0xe0, PCI_CAP_ID_EXP, 0xd3);
        assert_malformed(std_caps(&f), 0xd0);
    }

    #[test]
    fn pointers_into_the_header_are_refused() {
        let mut f = edu();
        f.set8(PCI_CAPABILITY_LIST, 0x20);
        assert_malformed(std_caps(&f), u64::from(PCI_CAPABILITY_LIST));
        f.set8(PCI_CAPABILITY_LIST, 0x3c);
        assert_malformed(std_caps(&f), u64::from(PCI_CAPABILITY_LIST));

        let mut f = pcie();
        f.cap(0xd0, PCI_CAP_ID_MSI, 0x34);
        assert_malformed(std_caps(&f), 0xd1);
        f.cap(0xd0, PCI_CAP_ID_MSI, 0x04);
        assert_malformed(std_caps(&f), 0xd1);
    }

    #[test]
    fn all_ones_config_space_is_refused_not_looped() {
        let f = Fixture(vec![0xff; 4096]);
        let region = f.region();
        let config = ConfigSpace::new(&region, addr());
        let header = config.header().unwrap();
        assert_eq!((header.vendor_id, header.device_id), (0xffff, 0xffff));
        assert_malformed(config.capabilities(), 0);
        assert_eq!(
            config.extended_capabilities().unwrap(),
            vec![],
            "all ones at 0x100: none"
        );

        // A device that answers the header but reads all ones from its capabilities.
        let mut f = edu();
        f.set32(0x40, u32::MAX);
        assert_malformed(std_caps(&f), 0x40);
    }

    #[test]
    fn extended_list_ends() {
        let mut f = pcie();
        f.set32(0x100, 0);
        assert_eq!(ext_caps(&f).unwrap(), vec![], "a zero header at 0x100 means none");
        f.set32(0x100, u32::MAX);
        assert_eq!(ext_caps(&f).unwrap(), vec![], "all ones at 0x100 means none");

        // A 256-byte config space has no extended list, whatever its size would allow.
        let mut small = edu();
        small.set32(0xfc, 0xffff_ffff);
        assert_eq!(ext_caps(&small).unwrap(), vec![]);
    }

    #[test]
    fn vfio_hidden_first_extended_capability_is_skipped() {
        // vfio-pci hides an unsupported capability at 0x100 by zeroing its ID and
        // version but keeping the next pointer, to anchor the list.
        let mut f = pcie();
        f.ext_cap(0x100, PCI_EXT_CAP_ID_NULL, 0, 0x140)
            .ext_cap(0x140, PCI_EXT_CAP_ID_SRIOV, 1, 0x180)
            .ext_cap(0x180, PCI_EXT_CAP_ID_ACS, 1, 0);
        let ext = ext_caps(&f).unwrap();
        assert_eq!(
            ext,
            [
                ExtendedCapability {
                    id: PCI_EXT_CAP_ID_SRIOV,
                    version: 1,
                    offset: 0x140
                },
                ExtendedCapability {
                    id: PCI_EXT_CAP_ID_ACS,
                    version: 1,
                    offset: 0x180
                },
            ]
        );
        assert_eq!(ext[0].name(), Some("SR-IOV"));
    }

    #[test]
    fn extended_loops_are_refused() {
        let mut f = pcie();
        f.ext_cap(0x140, PCI_EXT_CAP_ID_DSN, 1, 0x100);
        assert_malformed(ext_caps(&f), 0x100);

        let mut f = pcie();
        f.ext_cap(0x140, PCI_EXT_CAP_ID_DSN, 1, 0x140);
        assert_malformed(ext_caps(&f), 0x140);
    }

    #[test]
    fn bad_extended_pointers_are_refused() {
        // All ones reached through a pointer: the device stopped answering.
        let mut f = pcie();
        f.set32(0x140, u32::MAX);
        assert_malformed(ext_caps(&f), 0x140);

        // A pointer into conventional config space.
        let mut f = pcie();
        f.ext_cap(0x140, PCI_EXT_CAP_ID_DSN, 1, 0xfc);
        assert_malformed(ext_caps(&f), 0x140);

        // A pointer past the end of a config region smaller than 4 KiB.
        let mut f = Fixture(pcie().0[..0x200].to_vec());
        f.ext_cap(0x140, PCI_EXT_CAP_ID_DSN, 1, 0x200);
        assert_malformed(ext_caps(&f), 0x140);
        f.ext_cap(0x140, PCI_EXT_CAP_ID_DSN, 1, 0x1fc)
            .ext_cap(0x1fc, PCI_EXT_CAP_ID_VNDR, 1, 0);
        assert_eq!(ext_caps(&f).unwrap().len(), 3, "the last dword is still inside");
    }

    #[test]
    fn register_accesses_are_checked() {
        let region = edu().region();
        let config = ConfigSpace::new(&region, addr());
        assert_eq!(config.read8(PCI_INTERRUPT_PIN).unwrap(), 1);
        assert_eq!(config.read16(PCI_DEVICE_ID).unwrap(), 0x11e8);
        assert_eq!(config.read32(0xfc).unwrap(), 0);

        assert!(matches!(
            config.read16(0x41),
            Err(Error::Misaligned {
                offset: 0x41,
                width: 2,
                region: RegionIndex::CONFIG,
                ..
            })
        ));
        assert!(matches!(
            config.read32(0x42),
            Err(Error::Misaligned {
                offset: 0x42,
                width: 4,
                ..
            })
        ));
        assert!(matches!(config.write32(0x06, 0), Err(Error::Misaligned { .. })));
        assert!(matches!(
            config.read32(0x100),
            Err(Error::OutOfRange {
                offset: 0x100,
                len: 4,
                size: 256,
                ..
            })
        ));
        assert!(matches!(config.read8(0x100), Err(Error::OutOfRange { .. })));
        assert!(matches!(config.write16(0xfffe, 0), Err(Error::OutOfRange { .. })));
        assert_eq!(region.bytes(), edu().0, "refused writes change nothing");
    }

    #[test]
    fn writes_land_little_endian() {
        let region = edu().region();
        let config = ConfigSpace::new(&region, addr());
        config
            .write16(PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
            .unwrap();
        config.write32(PCI_BASE_ADDRESS_0, 0xffff_ffff).unwrap();
        config.write8(PCI_INTERRUPT_LINE, 5).unwrap();
        assert_eq!(config.header().unwrap().command, 0x6);
        assert_eq!(config.read32(PCI_BASE_ADDRESS_0).unwrap(), 0xffff_ffff);
        let bytes = region.bytes();
        assert_eq!(bytes[4..6], [0x06, 0x00]);
        assert_eq!(bytes[0x3c], 5);
    }

    #[test]
    fn truncated_config_is_out_of_range_not_a_panic() {
        // Unprivileged readers of sysfs `config` get only the first 64 bytes.
        let f = Fixture(edu().0[..64].to_vec());
        let region = f.region();
        let config = ConfigSpace::new(&region, addr());
        assert_eq!(config.header().unwrap().vendor_id, 0x1234);
        assert!(matches!(
            config.capabilities(),
            Err(Error::OutOfRange {
                offset: 0x40,
                len: 2,
                size: 64,
                ..
            })
        ));
        let f = Fixture(edu().0[..63].to_vec());
        assert!(matches!(
            ConfigSpace::new(&f.region(), addr()).header(),
            Err(Error::OutOfRange {
                offset: 0,
                len: 64,
                size: 63,
                ..
            })
        ));
    }

    /// A config region whose every access fails, like a device whose memory
    /// decode was turned off under VFIO.
    struct Failing;

    // SAFETY: every method returns at once, touching nothing.
    unsafe impl RegionIo for Failing {
        fn size(&self) -> u64 {
            4096
        }

        fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }

        fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }

    #[test]
    fn io_errors_carry_device_region_and_offset() {
        let config = ConfigSpace::new(&Failing, addr());
        match config.read16(PCI_STATUS) {
            Err(Error::Io {
                addr: a,
                region,
                offset,
                len,
                source,
            }) => {
                assert_eq!((a, region, offset, len), (addr(), RegionIndex::CONFIG, 6, 2));
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(matches!(
            config.header(),
            Err(Error::Io {
                offset: 0,
                len: 64,
                ..
            })
        ));
        assert!(matches!(
            config.write32(PCI_BASE_ADDRESS_0, 0),
            Err(Error::Io {
                offset: 0x10,
                len: 4,
                ..
            })
        ));
        assert!(matches!(
            config.extended_capabilities(),
            Err(Error::Io {
                offset: 0x100,
                len: 4,
                ..
            })
        ));
        let message = config.read8(PCI_INTERRUPT_PIN).unwrap_err().to_string();
        assert!(
            message.contains("0000:00:03.0 config") && message.contains("0x3d"),
            "{message}"
        );
    }

    /// Walks both lists and checks that the outcome is a list or a typed error.
    fn walk_is_well_behaved(bytes: &[u8], what: &str) {
        let region = MemoryRegion::new(bytes.to_vec());
        let config = ConfigSpace::new(&region, addr());
        match config.capabilities() {
            Ok(caps) => assert!(caps.len() <= 48, "{what}: {} standard capabilities", caps.len()),
            Err(Error::MalformedConfig { .. }) => {}
            Err(other) => panic!("{what}: unexpected error {other}"),
        }
        match config.extended_capabilities() {
            Ok(caps) => assert!(caps.len() <= (4096 - 256) / 4, "{what}: {} extended", caps.len()),
            Err(Error::MalformedConfig { .. }) => {}
            Err(other) => panic!("{what}: unexpected error {other}"),
        }
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        let f = pcie();
        let mut bytes = f.0.clone();
        // The header's status/type/pointer bytes, the standard list and the extended headers.
        let positions = (0..0x40)
            .chain(0xc8..0xe4)
            .chain(0x100..0x104)
            .chain(0x140..0x144);
        for pos in positions {
            let original = bytes[pos];
            for value in 0..=u8::MAX {
                bytes[pos] = value;
                walk_is_well_behaved(&bytes, &format!("byte {pos:#x} = {value:#x}"));
            }
            bytes[pos] = original;
        }
    }

    #[test]
    fn random_config_spaces_are_handled() {
        // A fixed xorshift sequence: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..300 {
            let mut bytes: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
            // Make most rounds reach the lists, with pointers inside the space.
            bytes[usize::from(PCI_STATUS)] |= PCI_STATUS_CAP_LIST as u8;
            bytes[usize::from(PCI_HEADER_TYPE)] &= PCI_HEADER_TYPE_MFD;
            walk_is_well_behaved(&bytes, &format!("round {round}"));
        }
    }
}
