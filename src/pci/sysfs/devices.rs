//! Enumeration: what sysfs tells about each PCI function.

use super::attr::{group_of, link_name, parse_hex, parse_optional_hex, read_addresses};
use super::{Sysfs, VFIO_PCI_DRIVER};
use crate::error::{Error, Result};
use crate::pci::PciAddress;

/// What sysfs tells about one PCI function.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PciDeviceInfo {
    /// The device's address.
    pub address: PciAddress,
    /// PCI vendor id (`vendor`).
    pub vendor: u16,
    /// PCI device id (`device`).
    pub device: u16,
    /// 24-bit class code: base class, subclass, programming interface (`class`).
    pub class: u32,
    /// Subsystem vendor id (`subsystem_vendor`), if the kernel exposes one.
    pub subsystem_vendor: Option<u16>,
    /// Subsystem device id (`subsystem_device`), if the kernel exposes one.
    pub subsystem_device: Option<u16>,
    /// The driver the device is bound to (basename of the `driver` link), if any.
    pub driver: Option<String>,
    /// The device's IOMMU group (basename of the `iommu_group` link), if it has one.
    pub iommu_group: Option<u32>,
}

impl PciDeviceInfo {
    /// Whether the device is bound to vfio-pci.
    pub fn is_bound_to_vfio(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_PCI_DRIVER)
    }
}

impl Sysfs {
    /// Reads ids, class, driver and IOMMU group of the device at `addr`.
    ///
    /// Fails with [`Error::DeviceNotFound`] if sysfs has no such device, and
    /// with [`Error::Sysfs`] or [`Error::SysfsParse`] if an attribute cannot be
    /// read or parsed.
    ///
    /// ```no_run
    /// use barmap::{pci::Sysfs, PciAddress};
    ///
    /// let addr: PciAddress = "0000:00:03.0".parse()?;
    /// let info = Sysfs::default().device(addr)?;
    /// println!("{:04x}:{:04x} group {:?}", info.vendor, info.device, info.iommu_group);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn device(&self, addr: PciAddress) -> Result<PciDeviceInfo> {
        let dir = self.existing_device_dir(addr)?;
        let class: u32 = parse_hex(&dir.join("class"), "a 24-bit class code")?;
        if class > 0xff_ffff {
            return Err(Error::SysfsParse {
                path: dir.join("class"),
                content: format!("{class:#x}"),
                expected: "a 24-bit class code",
            });
        }
        Ok(PciDeviceInfo {
            address: addr,
            vendor: parse_hex(&dir.join("vendor"), "a 16-bit vendor id")?,
            device: parse_hex(&dir.join("device"), "a 16-bit device id")?,
            class,
            subsystem_vendor: parse_optional_hex(&dir.join("subsystem_vendor"), "a 16-bit vendor id")?,
            subsystem_device: parse_optional_hex(&dir.join("subsystem_device"), "a 16-bit device id")?,
            driver: link_name(&dir.join("driver"))?,
            iommu_group: group_of(&dir)?,
        })
    }

    /// Reads every PCI device under `bus/pci/devices`, sorted by address.
    ///
    /// A device whose attributes cannot be read makes the whole call fail with
    /// an error naming it; nothing is skipped.
    pub fn devices(&self) -> Result<Vec<PciDeviceInfo>> {
        let addrs = read_addresses(&self.devices_dir())?;
        addrs.into_iter().map(|addr| self.device(addr)).collect()
    }

    /// The driver the device at `addr` is bound to, if any.
    pub fn driver(&self, addr: PciAddress) -> Result<Option<String>> {
        link_name(&self.existing_device_dir(addr)?.join("driver"))
    }

    /// The IOMMU group of the device at `addr`, or `None` if it has none (IOMMU off or absent).
    pub fn iommu_group(&self, addr: PciAddress) -> Result<Option<u32>> {
        group_of(&self.existing_device_dir(addr)?)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::pci::sysfs::fake::{addr, FakeSys, A};

    #[test]
    fn reads_ids_class_driver_and_group() {
        let fake = FakeSys::new();
        fake.add_device(A, "0x8086", "0x10d3", "0x020000");
        fake.add_driver("e1000e");
        fake.set_driver(A, "e1000e");
        fake.set_group(A, 5);
        let info = fake.sysfs().device(addr(A)).unwrap();
        assert_eq!(
            info,
            PciDeviceInfo {
                address: addr(A),
                vendor: 0x8086,
                device: 0x10d3,
                class: 0x02_0000,
                subsystem_vendor: Some(0x1af4),
                subsystem_device: Some(0x1100),
                driver: Some("e1000e".to_string()),
                iommu_group: Some(5),
            }
        );
        assert!(!info.is_bound_to_vfio());
        assert_eq!(fake.sysfs().driver(addr(A)).unwrap().as_deref(), Some("e1000e"));
        assert_eq!(fake.sysfs().iommu_group(addr(A)).unwrap(), Some(5));
    }

    #[test]
    fn subsystem_ids_are_optional() {
        let fake = FakeSys::new();
        let dir = fake.add_device(A, "0xffff", "0x0000", "0xffffff");
        fs::remove_file(dir.join("subsystem_vendor")).unwrap();
        fs::remove_file(dir.join("subsystem_device")).unwrap();
        let info = fake.sysfs().device(addr(A)).unwrap();
        assert_eq!((info.vendor, info.device, info.class), (0xffff, 0, 0xff_ffff));
        assert_eq!((info.subsystem_vendor, info.subsystem_device), (None, None));
        assert_eq!((info.driver, info.iommu_group), (None, None));
    }

    #[test]
    fn missing_device_is_named() {
        let fake = FakeSys::new();
        for err in [
            fake.sysfs().device(addr(A)).unwrap_err(),
            fake.sysfs().bind_vfio(addr(A)).unwrap_err(),
            fake.sysfs().unbind(addr(A), None).unwrap_err(),
        ] {
            assert!(
                matches!(&err, Error::DeviceNotFound { addr: a, .. } if *a == addr(A)),
                "{err:?}"
            );
            assert!(err.to_string().contains(A), "{err}");
        }
    }

    #[test]
    fn unparsable_attributes_are_errors_naming_the_file() {
        for (attr, value) in [
            ("vendor", "0xzzzz"),
            ("vendor", "0x10000"),
            ("device", ""),
            ("device", "0x+123"),
            ("class", "0x1000000"),
            ("subsystem_device", "nonsense"),
        ] {
            let fake = FakeSys::with_device(None, &[], None);
            fs::write(fake.device_dir(A).join(attr), format!("{value}\n")).unwrap();
            let err = fake.sysfs().device(addr(A)).unwrap_err();
            match &err {
                Error::SysfsParse { path, .. } => assert!(path.ends_with(attr), "{err}"),
                _ => panic!("{attr}={value:?} gave {err:?}"),
            }
            let listed = fake.sysfs().devices().unwrap_err();
            assert!(listed.to_string().contains(A), "{listed}");
        }
    }

    #[test]
    fn missing_attribute_is_a_sysfs_error() {
        let fake = FakeSys::with_device(None, &[], None);
        fs::remove_file(fake.device_dir(A).join("class")).unwrap();
        let err = fake.sysfs().device(addr(A)).unwrap_err();
        assert!(
            matches!(&err, Error::Sysfs { path, .. } if path.ends_with("class")),
            "{err:?}"
        );
    }

    #[test]
    fn unparsable_group_link_is_an_error() {
        let fake = FakeSys::with_device(None, &[], None);
        symlink(
            "../../../kernel/iommu_groups/x5",
            fake.device_dir(A).join("iommu_group"),
        )
        .unwrap();
        let err = fake.sysfs().iommu_group(addr(A)).unwrap_err();
        assert!(
            matches!(&err, Error::SysfsParse { content, .. } if content == "x5"),
            "{err:?}"
        );
    }

    #[test]
    fn devices_are_listed_sorted() {
        let fake = FakeSys::new();
        for a in ["0000:01:00.0", "0000:00:1f.2", "0000:00:03.0", "0001:00:00.0"] {
            fake.add_plain_device(a);
        }
        let listed: Vec<String> = fake
            .sysfs()
            .devices()
            .unwrap()
            .iter()
            .map(|d| d.address.to_string())
            .collect();
        assert_eq!(
            listed,
            ["0000:00:03.0", "0000:00:1f.2", "0000:01:00.0", "0001:00:00.0"]
        );
    }

    #[test]
    fn stray_entry_in_devices_is_an_error() {
        let fake = FakeSys::with_device(None, &[], None);
        fs::create_dir(fake.root().join("bus/pci/devices/not-a-device")).unwrap();
        let err = fake.sysfs().devices().unwrap_err();
        assert!(
            matches!(&err, Error::SysfsParse { content, .. } if content == "not-a-device"),
            "{err:?}"
        );
    }

    #[test]
    fn reads_the_real_sysfs() {
        let sysfs = Sysfs::default();
        let devices = sysfs.devices().expect("reading /sys/bus/pci/devices");
        let count = fs::read_dir("/sys/bus/pci/devices").unwrap().count();
        assert_eq!(devices.len(), count);
        for dev in &devices {
            assert!(dev.class <= 0xff_ffff);
            assert_eq!(sysfs.device(dev.address).unwrap(), *dev);
        }
    }
}
