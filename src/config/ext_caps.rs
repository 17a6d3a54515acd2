//! The PCI Express extended capability list (config offsets 0x100-0xfff).

use std::collections::BTreeSet;
use std::fmt;

use super::regs::*;
use super::ConfigSpace;
use crate::error::Result;

/// Extended capability header bits that give the ID.
const PCI_EXT_CAP_ID_MASK: u32 = 0xffff;
/// Shift and mask of the version in an extended capability header.
const PCI_EXT_CAP_VER_SHIFT: u32 = 16;
const PCI_EXT_CAP_VER_MASK: u32 = 0xf;
/// Shift and mask of the next pointer (dword aligned) in an extended capability header.
const PCI_EXT_CAP_NEXT_SHIFT: u32 = 20;
const PCI_EXT_CAP_NEXT_MASK: u32 = 0xffc;

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

impl ConfigSpace<'_> {
    /// Walks the PCI Express extended capability list.
    ///
    /// Empty for a config space of 256 bytes or less, and when the header at
    /// 0x100 is 0 or all ones (no extended capabilities; a conventional device
    /// reads all ones there). Null capabilities (ID 0, as VFIO leaves at 0x100
    /// when it hides the first capability) are followed but not listed. A next
    /// pointer below 0x100 or past the end, an all-ones header reached through
    /// a pointer, and a loop are [`Error::MalformedConfig`](crate::Error::MalformedConfig), whose offset is
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixture::{assert_malformed, edu, ext_caps, pcie, Fixture};

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
}
