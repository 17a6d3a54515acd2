//! A sysfs tree in a temporary directory, laid out like the kernel's, and a
//! writer that plays the kernel's part on it: the fixture of the sysfs tests.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::attr::write_attr;
use super::Sysfs;
use crate::pci::PciAddress;

/// The address most tests use.
pub(crate) const A: &str = "0000:00:03.0";

/// Parses a test address.
pub(crate) fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// A sysfs tree laid out like the kernel's: device directories under
/// `devices/pci0000:00/`, linked from `bus/pci/devices/` and from their IOMMU
/// group, with `driver` and `iommu_group` as relative symlinks.
pub(crate) struct FakeSys {
    dir: TempDir,
}

impl FakeSys {
    /// The set-up most tests share: device [`A`] in IOMMU group `group` (if
    /// any), with the `loaded` drivers loaded, bound to `bound` (if any).
    pub(crate) fn with_device(group: Option<u32>, loaded: &[&str], bound: Option<&str>) -> Self {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        if let Some(group) = group {
            fake.set_group(A, group);
        }
        for driver in loaded {
            fake.add_driver(driver);
        }
        if let Some(driver) = bound {
            fake.set_driver(A, driver);
        }
        fake
    }

    /// An empty tree: no devices, no drivers.
    pub(super) fn new() -> Self {
        let fake = FakeSys {
            dir: TempDir::new().unwrap(),
        };
        for sub in [
            "bus/pci/devices",
            "bus/pci/drivers",
            "kernel/iommu_groups",
            "devices/pci0000:00",
        ] {
            fs::create_dir_all(fake.root().join(sub)).unwrap();
        }
        fs::write(fake.root().join("bus/pci/drivers_probe"), "").unwrap();
        fake
    }

    pub(super) fn root(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    /// A handle whose writes also do what the kernel would do (see [`fake_kernel_write`]).
    pub(crate) fn sysfs(&self) -> Sysfs {
        Sysfs::with_root(self.root()).with_writer(fake_kernel_write)
    }

    /// A handle on a kernel that accepts writes but never binds anything.
    pub(super) fn inert_sysfs(&self) -> Sysfs {
        Sysfs::with_root(self.root())
    }

    /// A handle that fails the test on any write.
    pub(super) fn no_write_sysfs(&self) -> Sysfs {
        self.inert_sysfs()
            .with_writer(|path, value| panic!("unexpected write of {value:?} to {}", path.display()))
    }

    pub(super) fn add_driver(&self, name: &str) {
        let dir = self.root().join("bus/pci/drivers").join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("bind"), "").unwrap();
        fs::write(dir.join("unbind"), "").unwrap();
    }

    pub(super) fn device_dir(&self, addr: &str) -> PathBuf {
        self.root().join("devices/pci0000:00").join(addr)
    }

    /// Adds a device with the given ids (as sysfs prints them), unbound and without group.
    pub(super) fn add_device(&self, addr: &str, vendor: &str, device: &str, class: &str) -> PathBuf {
        let dir = self.device_dir(addr);
        fs::create_dir_all(&dir).unwrap();
        for (attr, value) in [
            ("vendor", vendor),
            ("device", device),
            ("class", class),
            ("subsystem_vendor", "0x1af4"),
            ("subsystem_device", "0x1100"),
            ("driver_override", "(null)"),
        ] {
            fs::write(dir.join(attr), format!("{value}\n")).unwrap();
        }
        let link = format!("../../../devices/pci0000:00/{addr}");
        symlink(link, self.root().join("bus/pci/devices").join(addr)).unwrap();
        dir
    }

    pub(super) fn add_plain_device(&self, addr: &str) -> PathBuf {
        self.add_device(addr, "0x1234", "0x11e8", "0x00ff00")
    }

    pub(super) fn set_driver(&self, addr: &str, driver: &str) {
        link_driver(&self.root(), addr, driver).unwrap();
    }

    pub(super) fn set_group(&self, addr: &str, group: u32) {
        let members = self.root().join(format!("kernel/iommu_groups/{group}/devices"));
        fs::create_dir_all(&members).unwrap();
        symlink(
            format!("../../../../devices/pci0000:00/{addr}"),
            members.join(addr),
        )
        .unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            self.device_dir(addr).join("iommu_group"),
        )
        .unwrap();
    }

    /// Gives IOMMU group `group` a `name` file (VFIO's no-IOMMU groups have
    /// `vfio-noiommu`).
    pub(crate) fn set_group_name(&self, group: u32, name: &str) {
        fs::write(
            self.root().join(format!("kernel/iommu_groups/{group}/name")),
            name,
        )
        .unwrap();
    }

    /// Names the driver the fake kernel's `drivers_probe` picks when no override is set.
    pub(super) fn set_default_driver(&self, addr: &str, driver: &str) {
        fs::write(self.device_dir(addr).join("default_driver"), driver).unwrap();
    }

    pub(super) fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root().join(rel)).unwrap()
    }
}

fn link_driver(root: &Path, addr: &str, driver: &str) -> io::Result<()> {
    symlink(
        format!("../../../bus/pci/drivers/{driver}"),
        root.join("devices/pci0000:00").join(addr).join("driver"),
    )
}

/// Writes like sysfs, then does what the kernel does on that write:
/// `driver/unbind` drops the `driver` link, `drivers/X/bind` makes it, and
/// `drivers_probe` binds the device to its `driver_override` (or to the
/// test's `default_driver`) if that driver is loaded and the device is free.
fn fake_kernel_write(path: &Path, value: &str) -> io::Result<()> {
    write_attr(path, value)?;
    let real = path.canonicalize()?;
    let addr = value.trim();
    let nth_parent = |n| real.ancestors().nth(n).unwrap().to_path_buf();
    match real.file_name().and_then(|n| n.to_str()) {
        Some("unbind") => fs::remove_file(nth_parent(5).join("devices/pci0000:00").join(addr).join("driver")),
        Some("bind") => {
            let driver = real.parent().unwrap().file_name().unwrap().to_str().unwrap();
            link_driver(&nth_parent(5), addr, driver)
        }
        Some("drivers_probe") => {
            let root = nth_parent(3);
            let dev = root.join("devices/pci0000:00").join(addr);
            if dev.join("driver").symlink_metadata().is_ok() {
                return Ok(());
            }
            let wanted = fs::read_to_string(dev.join("driver_override"))?;
            let wanted = match wanted.trim() {
                "" | "(null)" => fs::read_to_string(dev.join("default_driver")).unwrap_or_default(),
                name => name.to_string(),
            };
            if !wanted.is_empty() && root.join("bus/pci/drivers").join(&wanted).is_dir() {
                link_driver(&root, addr, &wanted)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
