//! The legacy backend: a type1v2 container and IOMMU groups.
//!
//! vfio-ioctls opens the container (API version and type1v2 checks), the
//! group (viability, `VFIO_GROUP_SET_CONTAINER`, `VFIO_SET_IOMMU` for the
//! first group, the KVM-VFIO registration) and the device
//! (`VFIO_GROUP_GET_DEVICE_FD`), and maps and unmaps DMA. Every other call
//! is barmap's own ([`super::ioctl`]), on a duplicate of the device
//! descriptor.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};

use super::backend::{
    DeviceBackend, DeviceInfo, HotResetInfo, IommuBackend, IrqSet, OpenFailure, RawIrqInfo,
};
use super::{ioctl, reset, Interface};
use crate::dma::{parse_iommu_info, IommuInfo};
use crate::error::{Error, Result};
use crate::pci::{PciAddress, Sysfs};

/// The VFIO container node.
const VFIO_CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// A type1v2 container, as vfio-ioctls opened it.
pub(super) struct LegacyContainer {
    container: Arc<VfioContainer>,
}

impl LegacyContainer {
    /// Opens `/dev/vfio/vfio` and checks the API version and type1v2 support;
    /// each group attached later is registered with the hypervisor's VFIO
    /// device `device_fd` (the KVM-VFIO device), if given.
    pub(super) fn open(device_fd: Option<Arc<VfioDeviceFd>>) -> Result<LegacyContainer> {
        let container = VfioContainer::new(device_fd).map_err(|e| match e {
            VfioError::OpenContainer(source) => Error::VfioUnavailable {
                interface: Interface::Group,
                path: PathBuf::from(VFIO_CONTAINER_PATH),
                reason: match source.kind() {
                    io::ErrorKind::NotFound => "the node is missing: load the vfio and vfio-pci modules",
                    io::ErrorKind::PermissionDenied => "permission denied: run as root",
                    _ => "it could not be opened",
                },
                source: Box::new(source),
            },
            other => Error::VfioUnavailable {
                interface: Interface::Group,
                path: PathBuf::from(VFIO_CONTAINER_PATH),
                reason: "the kernel's VFIO API version or type1v2 IOMMU support is missing",
                source: Box::new(other),
            },
        })?;
        log::debug!("opened VFIO container {VFIO_CONTAINER_PATH}");
        Ok(LegacyContainer {
            container: Arc::new(container),
        })
    }
}

impl IommuBackend for LegacyContainer {
    fn interface(&self) -> Interface {
        Interface::Group
    }

    fn open_device(
        &self,
        sysfs: &Sysfs,
        addr: PciAddress,
        group: u32,
    ) -> std::result::Result<Box<dyn DeviceBackend>, OpenFailure> {
        let vfio =
            VfioDevice::new(&sysfs.device_path(addr), self.container.clone(), false).map_err(
                |e| match e {
                    VfioError::OpenGroup(source, _) => OpenFailure::Group(source),
                    VfioError::GroupViable => OpenFailure::NotViable,
                    other => OpenFailure::Step {
                        step: "attach group and open device",
                        source: Box::new(other),
                    },
                },
            )?;
        // SAFETY: `vfio` owns this descriptor and keeps it open for the borrow,
        // which ends with the duplication.
        let fd = unsafe { BorrowedFd::borrow_raw(vfio.as_raw_fd()) }
            .try_clone_to_owned()
            .map(Arc::new)
            .map_err(|e| OpenFailure::Step {
                step: "duplicate the device descriptor",
                source: Box::new(e),
            })?;
        let group_fd = reset::find_group_fd(group);
        if group_fd.is_none() {
            log::debug!("{addr}: the descriptor of IOMMU group {group} was not found: the kernel will refuse hot resets");
        }
        Ok(Box::new(LegacyDevice::new(fd, group, group_fd, Box::new(vfio))))
    }

    fn iommu_info(&self) -> io::Result<IommuInfo> {
        let bytes = ioctl::iommu_info_bytes(self.container.as_raw_fd())?;
        parse_iommu_info(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    unsafe fn map_dma(&self, iova: u64, size: u64, host: *mut u8) -> io::Result<()> {
        let size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the caller keeps `host..host + size` mapped and reached only
        // through raw pointers until the mapping is removed, as vfio-ioctls asks.
        unsafe { self.container.vfio_dma_map(iova, size, host) }.map_err(io::Error::other)
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()> {
        let size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.container
            .vfio_dma_unmap(iova, size)
            .map_err(io::Error::other)
    }
}

/// A device opened through its group (of this backend, or of the no-IOMMU one).
pub(super) struct LegacyDevice {
    /// A duplicate of the device descriptor, shared by the regions' slow
    /// paths (and so by the fault handler's table while they are registered).
    fd: Arc<OwnedFd>,
    group: u32,
    /// A duplicate of the group's descriptor, for hot resets: a descriptor
    /// of our own, so its number cannot be closed and reused under us.
    /// `None` if it could not be found at open (no /proc).
    group_fd: Option<OwnedFd>,
    /// What keeps the device open and its group attached while the backend
    /// lives (the device as vfio-ioctls opened it, for this backend).
    _open: Box<dyn Send + Sync>,
}

impl LegacyDevice {
    /// The device whose descriptor is `fd`, in group `group` (whose
    /// descriptor `group_fd` is, if known), kept open by `open`.
    pub(super) fn new(
        fd: Arc<OwnedFd>,
        group: u32,
        group_fd: Option<OwnedFd>,
        open: Box<dyn Send + Sync>,
    ) -> LegacyDevice {
        LegacyDevice {
            fd,
            group,
            group_fd,
            _open: open,
        }
    }
}

impl DeviceBackend for LegacyDevice {
    fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    fn device_info(&self) -> io::Result<DeviceInfo> {
        let info = ioctl::device_info(self.fd.as_raw_fd())?;
        Ok(DeviceInfo {
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    fn region_info(&self, index: u32) -> io::Result<Vec<u8>> {
        ioctl::region_info_bytes(self.fd.as_raw_fd(), index)
    }

    fn irq_info(&self, index: u32) -> io::Result<RawIrqInfo> {
        let info = ioctl::irq_info(self.fd.as_raw_fd(), index)?;
        Ok(RawIrqInfo {
            flags: info.flags,
            count: info.count,
        })
    }

    fn set_irqs(&self, set: &IrqSet<'_>) -> io::Result<()> {
        ioctl::set_irqs(self.fd.as_raw_fd(), set)
    }

    fn reset(&self) -> io::Result<()> {
        ioctl::device_reset(self.fd.as_raw_fd())
    }

    fn hot_reset_info(&self) -> io::Result<HotResetInfo> {
        ioctl::hot_reset_info(self.fd.as_raw_fd())
    }

    fn group_fd(&self, group: u32) -> Option<OwnedFd> {
        if group == self.group {
            self.group_fd
                .as_ref()?
                .try_clone()
                .inspect_err(|e| {
                    log::warn!("group {group}: duplicating its descriptor for a hot reset failed: {e}")
                })
                .ok()
        } else {
            reset::find_group_fd(group)
        }
    }

    fn hot_reset(&self, group_fds: &[RawFd]) -> io::Result<()> {
        ioctl::hot_reset(self.fd.as_raw_fd(), group_fds)
    }
}
