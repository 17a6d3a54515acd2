//! The standard capability list (config offsets 0x40-0xff).

use std::fmt;

use super::regs::*;
use super::ConfigSpace;
use crate::error::Result;

/// Capability pointers are dword aligned; the low two bits are reserved.
const PCI_CAP_POINTER_MASK: u8 = 0xfc;

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

impl ConfigSpace<'_> {
    /// Walks the standard capability list.
    ///
    /// The list is empty unless the status register has
    /// [`PCI_STATUS_CAP_LIST`] set. Pointers are masked to dword alignment (the
    /// low two bits are reserved) and 0 ends the list. These are
    /// [`Error::MalformedConfig`](crate::Error::MalformedConfig), whose offset is that of the bad register,
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
        let Some(mut from) = header.capability_pointer_offset() else {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::{
        addr, assert_malformed, edu, ext_caps, pci_testdev, pcie, std_caps, Fixture,
    };
    use crate::config::regs::{PCI_CAPABILITY_LIST, PCI_EXT_CAP_ID_ERR, PCI_STATUS};

    #[test]
    fn edu_has_one_msi_capability() {
        let region = edu().region();
        let config = ConfigSpace::new(&region, addr());
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
}
