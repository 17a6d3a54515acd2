//! The no-IOMMU backend: VFIO's unsafe no-IOMMU mode, where a device
//! without an IOMMU sits in a group of its own (`/dev/vfio/noiommu-N`) and
//! its container has the `VFIO_NOIOMMU_IOMMU` "IOMMU", which translates
//! nothing: the device's DMA reaches physical memory directly.
//!
//! The open sequence is barmap's own, over the vfio-bindings constants
//! (vfio-ioctls' container insists on type1v2): open `/dev/vfio/vfio`,
//! check the API version and `VFIO_CHECK_EXTENSION(VFIO_NOIOMMU_IOMMU)`
//! (0 unless the kernel has `CONFIG_VFIO_NOIOMMU` and vfio's
//! `enable_unsafe_noiommu_mode` is on); per device open the group node,
//! check `VFIO_GROUP_GET_STATUS` viability, `VFIO_GROUP_SET_CONTAINER`,
//! `VFIO_SET_IOMMU(VFIO_NOIOMMU_IOMMU)` for the first group of the
//! container, and `VFIO_GROUP_GET_DEVICE_FD`. The kernel refuses the group
//! open, the attach, the IOMMU and the device to a process without
//! `CAP_SYS_RAWIO` (`EPERM`). The calls go through [`NoIommuCalls`] so a
//! test's fake kernel can stand in; the device itself is then reached like
//! one of the legacy backend ([`super::legacy::LegacyDevice`]).
//!
//! DMA memory comes from [`ProcMemory`]: locked mappings (huge pages for
//! more than 4 KiB) and `/proc/self/pagemap`.

mod kernel;
mod memory;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_NOIOMMU_IOMMU};

pub(crate) use kernel::NoIommuKernel;
pub(crate) use memory::ProcMemory;

use super::backend::{DeviceBackend, IommuBackend, OpenFailure, PhysicalMemory};
use super::Interface;
use crate::dma::IommuInfo;
use crate::error::{Error, Result};
use crate::pci::{PciAddress, Sysfs};

/// The VFIO container node.
pub(crate) const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// The node of no-IOMMU group `group`.
pub(crate) fn group_path(group: u32) -> PathBuf {
    PathBuf::from(format!("/dev/vfio/noiommu-{group}"))
}

/// The kernel calls of the no-IOMMU open sequence, one each: the real ones
/// ([`NoIommuKernel`]) or a test's fake kernel.
pub(crate) trait NoIommuCalls: Send + Sync {
    /// Opens the container node, `/dev/vfio/vfio`.
    fn open_container(&self) -> io::Result<OwnedFd>;
    /// `VFIO_GET_API_VERSION`.
    fn api_version(&self, container: BorrowedFd<'_>) -> io::Result<i32>;
    /// `VFIO_CHECK_EXTENSION` of `extension`.
    fn check_extension(&self, container: BorrowedFd<'_>, extension: u32) -> io::Result<i32>;
    /// Opens the group node at `path`.
    fn open_group(&self, path: &Path) -> io::Result<OwnedFd>;
    /// `VFIO_GROUP_GET_STATUS`: the group's `VFIO_GROUP_FLAGS_*`.
    fn group_status(&self, group: BorrowedFd<'_>) -> io::Result<u32>;
    /// `VFIO_GROUP_SET_CONTAINER`.
    fn set_container(&self, group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> io::Result<()>;
    /// `VFIO_SET_IOMMU` with IOMMU type `iommu`.
    fn set_iommu(&self, container: BorrowedFd<'_>, iommu: u32) -> io::Result<()>;
    /// `VFIO_GROUP_GET_DEVICE_FD` for the device named `name`.
    fn device_fd(&self, group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd>;
    /// The backend of the device open at `fd` in group `group` (whose
    /// descriptor is `group_fd`), holding `keep` while it lives.
    fn device(
        &self,
        fd: OwnedFd,
        group: u32,
        group_fd: OwnedFd,
        keep: Box<dyn Send + Sync>,
    ) -> Box<dyn DeviceBackend>;
}

/// A container in no-IOMMU mode.
pub(crate) struct NoIommuContainer {
    shared: Arc<Shared>,
    memory: Box<dyn PhysicalMemory>,
}

/// What the container and every device opened in it share.
struct Shared {
    calls: Arc<dyn NoIommuCalls>,
    container: OwnedFd,
}

impl NoIommuContainer {
    /// Opens the container node and checks that the kernel offers no-IOMMU
    /// mode; DMA memory will come from `memory`.
    pub(crate) fn open(
        calls: Arc<dyn NoIommuCalls>,
        memory: Box<dyn PhysicalMemory>,
    ) -> Result<NoIommuContainer> {
        let unavailable = |reason, source: Box<dyn std::error::Error + Send + Sync>| Error::VfioUnavailable {
            interface: Interface::NoIommu,
            path: PathBuf::from(CONTAINER_PATH),
            reason,
            source,
        };
        let container = calls.open_container().map_err(|e| {
            let reason = match e.kind() {
                io::ErrorKind::NotFound => "the node is missing: load the vfio module",
                io::ErrorKind::PermissionDenied => "permission denied: run as root",
                _ => "it could not be opened",
            };
            unavailable(reason, Box::new(e))
        })?;
        let version = calls
            .api_version(container.as_fd())
            .map_err(|e| unavailable("VFIO_GET_API_VERSION failed", Box::new(e)))?;
        if version != VFIO_API_VERSION as i32 {
            return Err(unavailable(
                "the kernel's VFIO API version is not the one barmap knows",
                format!("VFIO_GET_API_VERSION returned {version}").into(),
            ));
        }
        let off = "no-IOMMU mode is off: it needs a kernel with CONFIG_VFIO_NOIOMMU and the vfio module's \
                   enable_unsafe_noiommu_mode=1";
        match calls.check_extension(container.as_fd(), VFIO_NOIOMMU_IOMMU) {
            Ok(n) if n > 0 => {}
            Ok(n) => {
                return Err(unavailable(
                    off,
                    format!("VFIO_CHECK_EXTENSION(VFIO_NOIOMMU_IOMMU) returned {n}").into(),
                ))
            }
            Err(e) => return Err(unavailable(off, Box::new(e))),
        }
        log::debug!("opened VFIO container {CONTAINER_PATH} in no-IOMMU mode");
        Ok(NoIommuContainer {
            shared: Arc::new(Shared { calls, container }),
            memory,
        })
    }
}

/// The error of open step `step` on `path`: `EPERM` is the missing
/// `CAP_SYS_RAWIO` (the only reason the kernel gives it for these steps).
fn step_error(addr: PciAddress, step: &'static str, path: &Path, source: io::Error) -> OpenFailure {
    let interface = Interface::NoIommu;
    let path = path.to_path_buf();
    OpenFailure::Error(match source.raw_os_error() {
        Some(libc::EPERM) => Error::MissingCapability {
            addr,
            interface,
            step,
            path,
            capability: "CAP_SYS_RAWIO",
            source: Some(source),
        },
        _ => Error::Open {
            addr,
            interface,
            step,
            path,
            source,
        },
    })
}

impl IommuBackend for NoIommuContainer {
    fn interface(&self) -> Interface {
        Interface::NoIommu
    }

    fn physical_memory(&self) -> Option<&dyn PhysicalMemory> {
        Some(&*self.memory)
    }

    fn open_device(
        &self,
        _: &Sysfs,
        addr: PciAddress,
        group: u32,
    ) -> std::result::Result<Box<dyn DeviceBackend>, OpenFailure> {
        let shared = &self.shared;
        let calls = &*shared.calls;
        let node = group_path(group);
        let container = Path::new(CONTAINER_PATH);
        let group_fd = calls
            .open_group(&node)
            .map_err(|e| step_error(addr, "open the group node", &node, e))?;
        let flags = calls
            .group_status(group_fd.as_fd())
            .map_err(|e| step_error(addr, "get the group's status", &node, e))?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(OpenFailure::NotViable);
        }
        calls
            .set_container(group_fd.as_fd(), shared.container.as_fd())
            .map_err(|e| step_error(addr, "attach the group to the container", &node, e))?;
        // The kernel keeps the container's IOMMU while any group is attached
        // (through a group or device descriptor, in this process or a child
        // that inherited one), and refuses to set it again with EINVAL; once
        // the group is attached that is the only reason it gives, and the
        // group joins the IOMMU already set.
        match calls.set_iommu(shared.container.as_fd(), VFIO_NOIOMMU_IOMMU) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::debug!("{addr}: the no-IOMMU container's IOMMU is already set");
            }
            Err(e) => {
                return Err(step_error(
                    addr,
                    "set the container's IOMMU to VFIO_NOIOMMU_IOMMU",
                    container,
                    e,
                ))
            }
        }
        let fd = calls
            .device_fd(group_fd.as_fd(), &addr.to_string())
            .map_err(|e| step_error(addr, "get the device's descriptor", &node, e))?;
        let held = group_fd
            .try_clone()
            .map_err(|e| step_error(addr, "duplicate the group descriptor", &node, e))?;
        let keep = (group_fd, shared.clone());
        log::warn!("{addr}: opened in no-IOMMU mode: the device can read and write all of memory");
        Ok(calls.device(fd, group, held, Box::new(keep)))
    }

    /// No IOMMU: nothing to report (the DMA code asks [`Self::physical_memory`] instead).
    fn iommu_info(&self) -> io::Result<IommuInfo> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }

    /// No IOMMU: nothing maps (the DMA code never asks).
    unsafe fn map_dma(&self, _: u64, _: u64, _: *mut u8) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }

    /// No IOMMU: nothing unmaps (the DMA code never asks).
    fn unmap_dma(&self, _: u64, _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
}
