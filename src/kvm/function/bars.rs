//! The virtual BAR registers the guest sizes and places: plain data over
//! the device's BAR kinds and sizes.

use crate::config::regs::{
    PCI_BASE_ADDRESS_MEM_PREFETCH, PCI_BASE_ADDRESS_MEM_TYPE_64, PCI_BASE_ADDRESS_SPACE_IO,
    PCI_ROM_ADDRESS_ENABLE, PCI_ROM_ADDRESS_MASK,
};
use crate::config::BarKind;

/// Guest pages are 4 KiB: a memory BAR the guest sees is at least one.
pub(super) const GUEST_PAGE: u64 = 0x1000;

/// One BAR of the function as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct VirtualBar {
    pub(super) kind: BarKind,
    /// The size the guest sizes: a power of two, at least a page for memory.
    pub(super) size: u64,
    /// The address the guest programmed, its low bits (below the size) clear.
    pub(super) address: u64,
}

impl VirtualBar {
    /// A BAR of `kind` over a region of `region_size` bytes. A memory BAR
    /// smaller than a page is shown as a page, so that the guest places it
    /// page-aligned and its slot (the whole page vfio-pci maps) fits.
    pub(super) fn new(kind: BarKind, region_size: u64) -> VirtualBar {
        let min = if kind == BarKind::Io { 4 } else { GUEST_PAGE };
        VirtualBar {
            kind,
            size: region_size.max(min).next_power_of_two(),
            address: 0,
        }
    }

    /// Whether the BAR decodes I/O ports.
    pub(super) fn is_io(&self) -> bool {
        self.kind == BarKind::Io
    }

    /// The low dword of the register: address bits and the kind's flags.
    pub(super) fn low(&self) -> u32 {
        let flags = match self.kind {
            BarKind::Io => PCI_BASE_ADDRESS_SPACE_IO,
            BarKind::Memory32 { prefetchable } => prefetch(prefetchable),
            BarKind::Memory64 { prefetchable } => PCI_BASE_ADDRESS_MEM_TYPE_64 | prefetch(prefetchable),
        };
        (self.address as u32 & self.mask() as u32) | flags
    }

    /// The high dword of a 64-bit BAR's register.
    pub(super) fn high(&self) -> u32 {
        ((self.address & self.mask()) >> 32) as u32
    }

    /// A guest write of the low dword: the address bits the size leaves
    /// writable take it (all-ones reads back the size mask), the flags stay.
    pub(super) fn write_low(&mut self, value: u32) {
        let high = self.address & !0xffff_ffff;
        self.address = (high | u64::from(value)) & self.mask();
    }

    /// A guest write of a 64-bit BAR's high dword.
    pub(super) fn write_high(&mut self, value: u32) {
        let low = self.address & 0xffff_ffff;
        self.address = (u64::from(value) << 32 | low) & self.mask();
    }

    /// The address bits the size leaves writable.
    fn mask(&self) -> u64 {
        let bits = match self.kind {
            BarKind::Io => 0xffff_u64,
            BarKind::Memory32 { .. } => 0xffff_ffff,
            BarKind::Memory64 { .. } => u64::MAX,
        };
        !(self.size - 1) & bits
    }
}

fn prefetch(prefetchable: bool) -> u32 {
    if prefetchable {
        PCI_BASE_ADDRESS_MEM_PREFETCH
    } else {
        0
    }
}

/// The expansion ROM BAR as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct VirtualRom {
    /// A power of two, at least 2 KiB (the register's address bits start at 11).
    pub(super) size: u64,
    /// The register as the guest programmed it: address and enable bit.
    register: u32,
}

impl VirtualRom {
    pub(super) fn new(region_size: u64) -> VirtualRom {
        VirtualRom {
            size: region_size.max(GUEST_PAGE).next_power_of_two(),
            register: 0,
        }
    }

    pub(super) fn read(&self) -> u32 {
        self.register
    }

    pub(super) fn write(&mut self, value: u32) {
        let mask = PCI_ROM_ADDRESS_MASK & !(self.size as u32).wrapping_sub(1);
        self.register = value & (mask | PCI_ROM_ADDRESS_ENABLE);
    }

    /// The address the guest gave it, if it enabled it.
    pub(super) fn enabled_at(&self) -> Option<u64> {
        (self.register & PCI_ROM_ADDRESS_ENABLE != 0)
            .then_some(u64::from(self.register & PCI_ROM_ADDRESS_MASK))
    }
}
