//! PCI configuration space: the standard header and the capability lists.
//!
//! [`ConfigSpace`] reads config space through any [`RegionIo`](crate::RegionIo): the VFIO
//! config region of an open device, or a [`MemoryRegion`](crate::MemoryRegion)
//! holding the bytes of sysfs's `config` file or a test fixture. All values
//! are little-endian; accesses are 1, 2 or 4 bytes, naturally aligned, as on
//! the bus. Register offsets, bits and capability IDs are named once, in
//! [`regs`], with the Linux `pci_regs.h` names.
//!
//! | module | holds |
//! | --- | --- |
//! | [`regs`] | the `PCI_*` constants |
//! | `space` | [`ConfigSpace`]: checked 1/2/4-byte reads and writes |
//! | `header` | [`ConfigHeader`], the decoded standard header |
//! | `caps` | [`Capability`] and the standard list walk |
//! | `ext_caps` | [`ExtendedCapability`] and the PCIe extended list walk |
//! | `bar` | [`BarKind`]: what a BAR register says it decodes |
//!
//! ```
//! use barmap::config::regs::{PCI_CAP_ID_MSI, PCI_CAPABILITY_LIST, PCI_STATUS, PCI_STATUS_CAP_LIST};
//! use barmap::config::ConfigSpace;
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

mod bar;
mod caps;
mod ext_caps;
#[cfg(test)]
mod fixture;
mod header;
pub mod regs;
mod space;

pub use bar::BarKind;
pub use caps::Capability;
pub use ext_caps::ExtendedCapability;
pub use header::ConfigHeader;
pub use space::ConfigSpace;

#[cfg(test)]
mod tests {
    use super::fixture::{addr, ext_caps, pcie, std_caps};
    use super::regs::*;
    use super::*;
    use crate::error::Error;
    use crate::region::MemoryRegion;

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
