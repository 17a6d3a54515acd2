//! Choosing the kernel interface a device is opened through:
//! [`Device::open`]'s automatic choice and [`DeviceBuilder`]'s explicit one.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::iommufd::{cdev_name, open_iommufd_node, CDEV_DIR, IOMMUFD_PATH};
use super::{Container, Device, Interface};
use crate::error::{Error, Result};
use crate::pci::{PciAddress, Sysfs};

/// What [`choose`] decided.
#[derive(Debug)]
pub(crate) enum Choice {
    /// The device has a cdev and `/dev/iommu` opened: here it is.
    Iommufd(File),
    /// The group.
    Group,
}

/// The automatic choice for the device at `addr`: its cdev when sysfs names
/// one (`vfio-dev/vfioN`), its node is in `cdev_dir` (sysfs has the entry
/// on kernels without CONFIG_VFIO_DEVICE_CDEV too) and `open_iommufd`
/// opens `/dev/iommu`; otherwise its group. The reason is logged.
pub(crate) fn choose(
    sysfs: &Sysfs,
    addr: PciAddress,
    cdev_dir: &Path,
    open_iommufd: impl FnOnce() -> io::Result<File>,
) -> Choice {
    let name = match cdev_name(sysfs, addr) {
        Ok(Some(name)) if cdev_dir.join(&name).exists() => name,
        Ok(Some(name)) => {
            log::debug!(
                "{addr}: sysfs names {name} but {} has no such node (no CONFIG_VFIO_DEVICE_CDEV): opening it through its group",
                cdev_dir.display()
            );
            return Choice::Group;
        }
        Ok(None) => {
            log::debug!("{addr}: no VFIO cdev in sysfs (vfio-dev): opening it through its group");
            return Choice::Group;
        }
        Err(e) => {
            log::debug!("{addr}: sysfs vfio-dev unreadable ({e}): opening it through its group");
            return Choice::Group;
        }
    };
    match open_iommufd() {
        Ok(file) => {
            log::debug!("{addr}: has VFIO cdev {name} and {IOMMUFD_PATH} opens: opening it through the cdev");
            Choice::Iommufd(file)
        }
        Err(e) => {
            log::debug!("{addr}: has VFIO cdev {name} but {IOMMUFD_PATH} does not open ({e}): opening it through its group");
            Choice::Group
        }
    }
}

/// Opens a device with the kernel interface or the container chosen,
/// made by [`Device::builder`].
///
/// Without either, [`DeviceBuilder::open`] chooses as [`Device::open`] does.
///
/// ```no_run
/// use barmap::{Device, Interface};
/// let addr = "0000:00:02.0".parse()?;
/// let edu = Device::builder(addr).interface(Interface::Group).open()?;
/// assert_eq!(edu.interface(), Interface::Group);
/// # Ok::<(), barmap::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct DeviceBuilder {
    addr: PciAddress,
    interface: Option<Interface>,
    container: Option<Container>,
    sysfs: Sysfs,
}

impl DeviceBuilder {
    /// Opens the device through `interface`, in a container of its own
    /// (or, with [`DeviceBuilder::container`] too, checks that the
    /// container is of that interface). [`Interface::NoIommu`] is refused
    /// here: no-IOMMU devices open only in
    /// `Container::noiommu_device_reaches_all_memory()`, given with
    /// [`DeviceBuilder::container`].
    pub fn interface(mut self, interface: Interface) -> DeviceBuilder {
        self.interface = Some(interface);
        self
    }

    /// Opens the device in `container`, sharing its IOMMU mappings, through
    /// the container's interface.
    pub fn container(mut self, container: &Container) -> DeviceBuilder {
        self.container = Some(container.clone());
        self
    }

    /// The sysfs the device is looked up in (tests).
    #[cfg(test)]
    pub(crate) fn sysfs(mut self, sysfs: Sysfs) -> DeviceBuilder {
        self.sysfs = sysfs;
        self
    }

    /// Checks the device in sysfs, makes or takes the container and opens
    /// the device in it.
    ///
    /// Errors name the interface tried: [`Error::VfioUnavailable`] when its
    /// node does not open (no `/dev/iommu`: "the kernel has no iommufd
    /// (CONFIG_IOMMUFD)"), [`Error::InterfaceUnavailable`] when the device
    /// has no cdev (CONFIG_VFIO_DEVICE_CDEV) or the interface cannot be
    /// chosen here, [`Error::DeviceBusy`] when its cdev is bound by another
    /// open, [`Error::PermissionDenied`].
    pub fn open(self) -> Result<Device> {
        let addr = self.addr;
        let group = super::device::check_openable(&self.sysfs, addr)?;
        let container = match (self.container, self.interface) {
            (Some(container), Some(wanted)) if container.interface() != wanted => {
                return Err(Error::InterfaceUnavailable {
                    addr,
                    interface: wanted,
                    path: self.sysfs.device_path(addr),
                    reason: "the container given goes through another interface",
                    source: None,
                })
            }
            (Some(container), _) => container,
            (None, Some(Interface::Group)) => Container::new()?,
            (None, Some(Interface::Iommufd)) => Container::iommufd()?,
            (None, Some(Interface::NoIommu)) => {
                return Err(Error::InterfaceUnavailable {
                    addr,
                    interface: Interface::NoIommu,
                    path: PathBuf::from(format!("/dev/vfio/noiommu-{group}")),
                    reason: "a no-IOMMU device reaches all memory: open it only in \
                             Container::noiommu_device_reaches_all_memory(), passed with .container()",
                    source: None,
                })
            }
            (None, None) => match choose(&self.sysfs, addr, Path::new(CDEV_DIR), open_iommufd_node) {
                Choice::Iommufd(file) => Container::iommufd_with(file, None)?,
                Choice::Group => Container::new()?,
            },
        };
        Device::attach(&self.sysfs, &container, addr, group)
    }
}

impl Device {
    /// A [`DeviceBuilder`] for the device at `addr`, to choose the kernel
    /// interface or the container before opening it.
    pub fn builder(addr: PciAddress) -> DeviceBuilder {
        DeviceBuilder {
            addr,
            interface: None,
            container: None,
            sysfs: Sysfs::default(),
        }
    }

    /// The kernel interface the device is reached through (its container's).
    pub fn interface(&self) -> Interface {
        self.container().interface()
    }
}
