//! What a BAR decodes, from its register in config space.

use std::fmt;

use super::regs::PCI_BASE_ADDRESS_0;
use super::ConfigSpace;
use crate::error::Result;

/// What a BAR decodes, from its register in config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// A memory BAR with a 32-bit address.
    Memory32 {
        /// Whether the BAR is prefetchable.
        prefetchable: bool,
    },
    /// A memory BAR with a 64-bit address (it uses the next BAR register too).
    Memory64 {
        /// Whether the BAR is prefetchable.
        prefetchable: bool,
    },
    /// An I/O port BAR: never mmapable.
    Io,
}

impl BarKind {
    /// Decodes the low dword of a BAR register.
    pub fn from_register(value: u32) -> BarKind {
        if value & 1 == 1 {
            return BarKind::Io;
        }
        let prefetchable = value & 0x8 != 0;
        if (value >> 1) & 0x3 == 0x2 {
            BarKind::Memory64 { prefetchable }
        } else {
            BarKind::Memory32 { prefetchable }
        }
    }
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pf = |p: bool| if p { ", prefetchable" } else { "" };
        match *self {
            BarKind::Memory32 { prefetchable } => write!(f, "mem32{}", pf(prefetchable)),
            BarKind::Memory64 { prefetchable } => write!(f, "mem64{}", pf(prefetchable)),
            BarKind::Io => f.write_str("io"),
        }
    }
}

impl ConfigSpace<'_> {
    /// What BAR `n` (0..=5) decodes, from its register (for a 64-bit BAR,
    /// `n` is its lower half).
    pub fn bar_kind(&self, n: u8) -> Result<BarKind> {
        self.read32(PCI_BASE_ADDRESS_0 + 4 * u16::from(n))
            .map(BarKind::from_register)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bar_registers() {
        assert_eq!(
            BarKind::from_register(0xfff0_0000),
            BarKind::Memory32 { prefetchable: false }
        );
        assert_eq!(
            BarKind::from_register(0x0000_000c),
            BarKind::Memory64 { prefetchable: true }
        );
        assert_eq!(BarKind::from_register(0x0000_c001), BarKind::Io);
        assert_eq!(
            BarKind::from_register(0x0000_0008),
            BarKind::Memory32 { prefetchable: true }
        );
    }
}
