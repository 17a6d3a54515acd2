//! IOMMU groups: their members, and whether VFIO can use them.

use std::fs;
use std::io;

use super::attr::{link_name, read_addresses};
use super::{Sysfs, VFIO_PCI_DRIVER};
use crate::error::{Error, Result};
use crate::pci::PciAddress;

/// The `name` VFIO gives the IOMMU groups it makes in no-IOMMU mode.
const NOIOMMU_GROUP_NAME: &str = "vfio-noiommu";

/// The other driver that leaves an IOMMU group viable: it claims a device and does nothing with it.
const PCI_STUB_DRIVER: &str = "pci-stub";

impl Sysfs {
    /// The members of IOMMU group `group`, sorted by address, each with the driver it is bound to.
    pub fn group_devices(&self, group: u32) -> Result<Vec<(PciAddress, Option<String>)>> {
        let dir = self.group_dir(group).join("devices");
        read_addresses(&dir)?
            .into_iter()
            .map(|addr| Ok((addr, link_name(&dir.join(addr.to_string()).join("driver"))?)))
            .collect()
    }

    /// Whether IOMMU group `group` is one VFIO made for a device without an
    /// IOMMU in its unsafe no-IOMMU mode: its `name` is `vfio-noiommu` (its
    /// node is then `/dev/vfio/noiommu-GROUP`). Groups of an IOMMU have no
    /// `name`, or another one.
    ///
    /// ```no_run
    /// let sysfs = barmap::pci::Sysfs::default();
    /// assert!(!sysfs.is_noiommu_group(0)?);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn is_noiommu_group(&self, group: u32) -> Result<bool> {
        let path = self.group_dir(group).join("name");
        match fs::read_to_string(&path) {
            Ok(name) => Ok(name.trim_end() == NOIOMMU_GROUP_NAME),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Sysfs { path, source }),
        }
    }

    /// The members of IOMMU group `group` that keep VFIO from using it, as
    /// `"0000:00:1f.2 (ahci)"`: every member bound to a driver other than
    /// vfio-pci or pci-stub. An empty list means the group is viable.
    ///
    /// ```no_run
    /// use barmap::{pci::Sysfs, Error, PciAddress};
    ///
    /// let sysfs = Sysfs::default();
    /// let addr: PciAddress = "0000:00:03.0".parse()?;
    /// let group = sysfs.iommu_group(addr)?.ok_or(Error::NoIommuGroup { addr })?;
    /// let blockers = sysfs.group_blockers(group)?;
    /// if !blockers.is_empty() {
    ///     return Err(Error::GroupNotViable { addr, group, blockers });
    /// }
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn group_blockers(&self, group: u32) -> Result<Vec<String>> {
        Ok(self
            .group_devices(group)?
            .into_iter()
            .filter_map(|(addr, driver)| match driver {
                Some(d) if d != VFIO_PCI_DRIVER && d != PCI_STUB_DRIVER => Some(format!("{addr} ({d})")),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::sysfs::fake::{addr, FakeSys};

    #[test]
    fn group_members_and_blockers() {
        let fake = FakeSys::new();
        let members = [
            ("0000:00:1f.2", Some("ahci")),
            ("0000:00:03.0", Some(VFIO_PCI_DRIVER)),
            ("0000:00:1f.0", None),
            ("0000:00:1f.3", Some("pci-stub")),
            ("0000:00:1f.4", Some("i801_smbus")),
        ];
        for (a, driver) in members {
            fake.add_plain_device(a);
            fake.set_group(a, 7);
            if let Some(d) = driver {
                fake.add_driver(d);
                fake.set_driver(a, d);
            }
        }
        let sysfs = fake.sysfs();
        let listed = sysfs.group_devices(7).unwrap();
        let expected: Vec<(PciAddress, Option<String>)> = [
            ("0000:00:03.0", Some(VFIO_PCI_DRIVER)),
            ("0000:00:1f.0", None),
            ("0000:00:1f.2", Some("ahci")),
            ("0000:00:1f.3", Some("pci-stub")),
            ("0000:00:1f.4", Some("i801_smbus")),
        ]
        .into_iter()
        .map(|(a, d)| (addr(a), d.map(str::to_string)))
        .collect();
        assert_eq!(listed, expected);
        assert_eq!(
            sysfs.group_blockers(7).unwrap(),
            ["0000:00:1f.2 (ahci)", "0000:00:1f.4 (i801_smbus)"]
        );
    }

    #[test]
    fn viable_group_has_no_blockers() {
        let fake = FakeSys::with_device(Some(2), &[], None);
        assert_eq!(fake.sysfs().group_blockers(2).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_group_named_vfio_noiommu_is_a_noiommu_group() {
        let fake = FakeSys::with_device(Some(2), &[], None);
        let sysfs = fake.sysfs();
        assert!(!sysfs.is_noiommu_group(2).unwrap(), "no name");
        fake.set_group_name(2, "DMA\n");
        assert!(!sysfs.is_noiommu_group(2).unwrap());
        fake.set_group_name(2, "vfio-noiommu\n");
        assert!(sysfs.is_noiommu_group(2).unwrap());
    }

    #[test]
    fn missing_group_is_a_sysfs_error() {
        let fake = FakeSys::new();
        let err = fake.sysfs().group_devices(42).unwrap_err();
        assert!(
            matches!(&err, Error::Sysfs { path, .. } if path.ends_with("iommu_groups/42/devices")),
            "{err:?}"
        );
    }
}
