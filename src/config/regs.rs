//! Config space register offsets, bits and capability IDs, with the Linux
//! `pci_regs.h` names.
//!
//! Offsets are `u16` (config space is at most 4 KiB); bits have the width of
//! their register; standard capability IDs are `u8` and extended ones `u16`,
//! as [`Capability::id`](super::Capability::id) and
//! [`ExtendedCapability::id`](super::ExtendedCapability::id) hold them.

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

/// Type-0 headers: the expansion ROM base address register (32 bits).
pub const PCI_ROM_ADDRESS: u16 = 0x30;
/// Expansion ROM register bit: the ROM decodes (with memory decode on).
pub const PCI_ROM_ADDRESS_ENABLE: u32 = 0x1;
/// Expansion ROM register bits that hold the address.
pub const PCI_ROM_ADDRESS_MASK: u32 = !0x7ff;
/// BAR register bit: an I/O BAR.
pub const PCI_BASE_ADDRESS_SPACE_IO: u32 = 0x1;
/// BAR register bits: a 64-bit memory BAR.
pub const PCI_BASE_ADDRESS_MEM_TYPE_64: u32 = 0x4;
/// BAR register bit: a prefetchable memory BAR.
pub const PCI_BASE_ADDRESS_MEM_PREFETCH: u32 = 0x8;

/// MSI capability: message control (16 bits), from the capability's start.
pub const PCI_MSI_FLAGS: u16 = 2;
/// MSI control bit: MSI enabled.
pub const PCI_MSI_FLAGS_ENABLE: u16 = 0x1;
/// MSI control bits: the log2 of the vectors the function can request.
pub const PCI_MSI_FLAGS_QMASK: u16 = 0xe;
/// MSI control bits: the log2 of the vectors enabled.
pub const PCI_MSI_FLAGS_QSIZE: u16 = 0x70;
/// MSI control bit: 64-bit message addresses.
pub const PCI_MSI_FLAGS_64BIT: u16 = 0x80;
/// MSI control bit: per-vector masking.
pub const PCI_MSI_FLAGS_MASKBIT: u16 = 0x100;

/// MSI-X capability: message control (16 bits), from the capability's start.
pub const PCI_MSIX_FLAGS: u16 = 2;
/// MSI-X control bits: the table size minus one.
pub const PCI_MSIX_FLAGS_QSIZE: u16 = 0x7ff;
/// MSI-X control bit: the function mask.
pub const PCI_MSIX_FLAGS_MASKALL: u16 = 0x4000;
/// MSI-X control bit: MSI-X enabled.
pub const PCI_MSIX_FLAGS_ENABLE: u16 = 0x8000;
/// MSI-X capability: table offset and BAR indicator (32 bits).
pub const PCI_MSIX_TABLE: u16 = 4;
/// MSI-X capability: PBA offset and BAR indicator (32 bits).
pub const PCI_MSIX_PBA: u16 = 8;
/// MSI-X table and PBA registers: the BAR indicator bits.
pub const PCI_MSIX_BIR: u32 = 0x7;
/// Bytes per MSI-X table entry.
pub const PCI_MSIX_ENTRY_SIZE: u64 = 16;
/// MSI-X entry vector control bit: the vector is masked.
pub const PCI_MSIX_ENTRY_CTRL_MASKBIT: u32 = 0x1;

/// Power Management capability: control and status (PMCSR, 16 bits).
pub const PCI_PM_CTRL: u16 = 4;
/// PMCSR: the power state field (D0 to D3hot).
pub const PCI_PM_CTRL_STATE_MASK: u16 = 0x0003;

/// PCI Express capability: device capabilities (32 bits).
pub const PCI_EXP_DEVCAP: u16 = 4;
/// Device capabilities bit: function-level reset.
pub const PCI_EXP_DEVCAP_FLR: u32 = 0x1000_0000;
/// PCI Express capability: device control (16 bits).
pub const PCI_EXP_DEVCTL: u16 = 8;
/// Device control bit: initiate a function-level reset.
pub const PCI_EXP_DEVCTL_BCR_FLR: u16 = 0x8000;
