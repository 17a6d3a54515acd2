//! Config space fixtures for the tests: byte images of QEMU's devices and of
//! a PCIe endpoint, and the checks the walks' tests share.

use std::fmt;

use super::regs::{
    PCI_BASE_ADDRESS_0, PCI_CAPABILITY_LIST, PCI_CAP_ID_EXP, PCI_CAP_ID_MSI, PCI_CAP_ID_PM, PCI_COMMAND,
    PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_DEVICE_ID, PCI_EXT_CAP_ID_DSN, PCI_EXT_CAP_ID_ERR,
    PCI_HEADER_TYPE, PCI_HEADER_TYPE_MFD, PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN, PCI_REVISION_ID, PCI_STATUS,
    PCI_STATUS_CAP_LIST, PCI_SUBSYSTEM_ID, PCI_SUBSYSTEM_VENDOR_ID, PCI_VENDOR_ID,
};
use super::{Capability, ConfigSpace, ExtendedCapability};
use crate::error::{Error, Result};
use crate::pci::PciAddress;
use crate::region::MemoryRegion;

/// Config space bytes under construction.
pub(super) struct Fixture(pub(super) Vec<u8>);

impl Fixture {
    pub(super) fn new(size: usize) -> Self {
        Fixture(vec![0; size])
    }

    pub(super) fn set8(&mut self, at: u16, value: u8) -> &mut Self {
        self.0[usize::from(at)] = value;
        self
    }

    pub(super) fn set16(&mut self, at: u16, value: u16) -> &mut Self {
        let at = usize::from(at);
        self.0[at..at + 2].copy_from_slice(&value.to_le_bytes());
        self
    }

    pub(super) fn set32(&mut self, at: u16, value: u32) -> &mut Self {
        let at = usize::from(at);
        self.0[at..at + 4].copy_from_slice(&value.to_le_bytes());
        self
    }

    /// A standard capability: ID, next pointer, then one dword of body.
    pub(super) fn cap(&mut self, at: u8, id: u8, next: u8) -> &mut Self {
        self.set8(u16::from(at), id).set8(u16::from(at) + 1, next)
    }

    /// An extended capability header.
    pub(super) fn ext_cap(&mut self, at: u16, id: u16, version: u8, next: u16) -> &mut Self {
        self.set32(
            at,
            u32::from(id) | u32::from(version) << 16 | u32::from(next) << 20,
        )
    }

    pub(super) fn region(&self) -> MemoryRegion {
        MemoryRegion::new(self.0.clone())
    }
}

pub(super) fn addr() -> PciAddress {
    PciAddress::new(0, 0, 3, 0).unwrap()
}

/// QEMU 7.2's edu device as the firmware leaves it: 256 bytes, one MSI
/// capability at 0x40, INTA. BAR0 holds a 1 MiB-aligned address.
pub(super) fn edu() -> Fixture {
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

/// QEMU 7.2's pci-testdev: no capabilities, no interrupt pin, a memory BAR0
/// and an I/O BAR1.
pub(super) fn pci_testdev() -> Fixture {
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
pub(super) fn pcie() -> Fixture {
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
pub(super) fn assert_malformed<T: fmt::Debug>(result: Result<T>, offset: u64) {
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

pub(super) fn std_caps(f: &Fixture) -> Result<Vec<Capability>> {
    ConfigSpace::new(&f.region(), addr()).capabilities()
}

pub(super) fn ext_caps(f: &Fixture) -> Result<Vec<ExtendedCapability>> {
    ConfigSpace::new(&f.region(), addr()).extended_capabilities()
}
