//! The iommufd backend: a device's own VFIO node (`/dev/vfio/devices/vfioN`)
//! bound to an iommufd (`/dev/iommu`), its DMA through one IOAS that every
//! device opened in the container shares.
//!
//! iommufd-ioctls allocates the IOAS (and destroys it, `IOMMU_DESTROY`, on
//! drop) and maps and unmaps DMA in it (`IOMMU_IOAS_MAP`/`UNMAP`). The rest
//! is barmap's own ([`ioctl`]): finding and opening the cdev, binding and
//! attaching it, the IOAS's IOVA ranges, and registering the device with the
//! KVM-VFIO device. vfio-ioctls' cdev path was not taken: it pulls kvm-ioctls
//! into every build, panics in its `Drop` when a detach fails, reports a
//! missing cdev and a failed open alike, and queries no IOVA ranges.

pub(crate) mod ioctl;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iommufd_bindings::{
    iommu_ioas_map, iommu_ioas_unmap, iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE, iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
};
use iommufd_ioctls::{IommuFd, IommufdError, IommufdIoas};

use super::backend::{
    DeviceBackend, DeviceInfo, HotResetInfo, IommuBackend, IrqSet, OpenFailure, RawIrqInfo,
};
use super::{ioctl as vfio, Interface};
use crate::dma::IommuInfo;
use crate::error::{Error, Result};
use crate::pci::{PciAddress, Sysfs};

/// The iommufd node.
pub(crate) const IOMMUFD_PATH: &str = "/dev/iommu";
/// Where the kernel puts the device cdevs.
pub(crate) const CDEV_DIR: &str = "/dev/vfio/devices";

/// The hypervisor's VFIO device (KVM's `KVM_DEV_TYPE_VFIO`), which every
/// device cdev of a VM is registered with (`KVM_DEV_VFIO_FILE_ADD`/`DEL`).
pub(crate) trait VfioFileRegistry: Send + Sync {
    /// Registers the VFIO file `fd`.
    fn add(&self, fd: RawFd) -> io::Result<()>;
    /// Removes the VFIO file `fd`.
    fn remove(&self, fd: RawFd) -> io::Result<()>;
}

/// Opens `/dev/iommu`; a failure says why, naming the interface.
pub(crate) fn open_iommufd() -> Result<File> {
    open_iommufd_node().map_err(|source| Error::VfioUnavailable {
        interface: Interface::Iommufd,
        path: PathBuf::from(IOMMUFD_PATH),
        reason: match source.raw_os_error() {
            Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => "the kernel has no iommufd (CONFIG_IOMMUFD)",
            Some(libc::EACCES | libc::EPERM) => "permission denied: run as root",
            _ => "it could not be opened",
        },
        source: Box::new(source),
    })
}

/// Opens `/dev/iommu`.
pub(crate) fn open_iommufd_node() -> io::Result<File> {
    open_rw(Path::new(IOMMUFD_PATH))
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// The name of the device's cdev (`vfioN`) from its sysfs `vfio-dev`
/// directory; `None` if it has none (a kernel without
/// CONFIG_VFIO_DEVICE_CDEV, or a device not bound to vfio-pci).
pub(crate) fn cdev_name(sysfs: &Sysfs, addr: PciAddress) -> io::Result<Option<String>> {
    let dir = vfio_dev_dir(sysfs, addr);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str().filter(|n| is_cdev_name(n)) {
            return Ok(Some(name.to_string()));
        }
    }
    Ok(None)
}

/// The device's sysfs `vfio-dev` directory.
pub(crate) fn vfio_dev_dir(sysfs: &Sysfs, addr: PciAddress) -> PathBuf {
    sysfs.device_path(addr).join("vfio-dev")
}

/// `vfio` followed by a decimal number.
fn is_cdev_name(name: &str) -> bool {
    name.strip_prefix("vfio")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// An iommufd with one IOAS, as iommufd-ioctls holds them.
pub(super) struct IommufdContainer {
    iommufd: Arc<IommuFd>,
    ioas: IommufdIoas,
    kvm: Option<Arc<dyn VfioFileRegistry>>,
}

impl IommufdContainer {
    /// Allocates an IOAS in the open iommufd `file`; every device opened
    /// later is registered with `kvm`, if given, before it is bound.
    pub(super) fn new(file: File, kvm: Option<Arc<dyn VfioFileRegistry>>) -> Result<IommufdContainer> {
        let iommufd = Arc::new(IommuFd::new_from_fd(file));
        let ioas = IommufdIoas::new(iommufd.clone()).map_err(|e| Error::VfioUnavailable {
            interface: Interface::Iommufd,
            path: PathBuf::from(IOMMUFD_PATH),
            reason: "the kernel refused to allocate an IOAS (IOMMU_IOAS_ALLOC)",
            source: Box::new(to_io(e)),
        })?;
        log::debug!("opened {IOMMUFD_PATH} with IOAS {}", ioas.id());
        Ok(IommufdContainer { iommufd, ioas, kvm })
    }
}

/// The errno inside an iommufd-ioctls error.
fn to_io(e: IommufdError) -> io::Error {
    match e {
        IommufdError::OpenIommufd(e) | IommufdError::AttachHwpt(e) => e,
        IommufdError::IommuDestroy(e)
        | IommufdError::IommuIoasAlloc(e)
        | IommufdError::IommuIoasMap(e)
        | IommufdError::IommuIoasUnmap(e) => io::Error::from_raw_os_error(e.errno()),
        other => io::Error::other(other),
    }
}

impl IommuBackend for IommufdContainer {
    fn interface(&self) -> Interface {
        Interface::Iommufd
    }

    /// Finds and opens the cdev, registers it with the KVM-VFIO device (as
    /// QEMU does, before the bind), binds it to the iommufd and attaches
    /// it to the IOAS.
    fn open_device(
        &self,
        sysfs: &Sysfs,
        addr: PciAddress,
        _group: u32,
    ) -> std::result::Result<Box<dyn DeviceBackend>, OpenFailure> {
        let step = |step: &'static str| {
            move |e: io::Error| OpenFailure::Step {
                step,
                source: Box::new(e),
            }
        };
        let name = cdev_name(sysfs, addr)
            .map_err(step("read the sysfs vfio-dev directory"))?
            .ok_or_else(|| OpenFailure::NoCdev {
                path: vfio_dev_dir(sysfs, addr),
            })?;
        let path = Path::new(CDEV_DIR).join(&name);
        let fd: OwnedFd = open_rw(&path)
            .map_err(|source| OpenFailure::Cdev {
                path: path.clone(),
                source,
            })?
            .into();
        let registered = Registered::new(self.kvm.clone(), fd.as_raw_fd())
            .map_err(step("register the device cdev with the KVM-VFIO device"))?;
        let devid = ioctl::bind(fd.as_raw_fd(), self.iommufd.as_raw_fd())
            .map_err(|source| OpenFailure::Bind { path, source })?;
        ioctl::attach(fd.as_raw_fd(), self.ioas.id()).map_err(step("attach the device to the IOAS"))?;
        log::debug!(
            "{addr}: {name} bound to {IOMMUFD_PATH} as device {devid}, attached to IOAS {}",
            self.ioas.id()
        );
        Ok(Box::new(CdevDevice {
            _registered: registered,
            fd: Arc::new(fd),
        }))
    }

    fn iommu_info(&self) -> io::Result<IommuInfo> {
        ioctl::iova_ranges(self.iommufd.as_raw_fd(), self.ioas.id()).map(iommu_info)
    }

    unsafe fn map_dma(&self, iova: u64, size: u64, host: *mut u8) -> io::Result<()> {
        let map = iommu_ioas_map {
            size: size_of::<iommu_ioas_map>() as u32,
            flags: iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA
                | iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE
                | iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: self.ioas.id(),
            __reserved: 0,
            user_va: host as u64,
            length: size,
            iova,
        };
        self.iommufd.map_iommu_ioas(&map).map_err(to_io)
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut unmap = iommu_ioas_unmap {
            size: size_of::<iommu_ioas_unmap>() as u32,
            ioas_id: self.ioas.id(),
            iova,
            length: size,
        };
        self.iommufd.unmap_iommu_ioas(&mut unmap).map_err(to_io)?;
        if unmap.length != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the kernel unmapped {:#x} bytes of {size:#x}", unmap.length),
            ));
        }
        Ok(())
    }
}

/// What the DMA allocator takes from an IOAS's IOVA ranges: the ranges, and
/// the alignment as the granule (iommufd has no mapping limit to report).
pub(crate) fn iommu_info(ranges: ioctl::IovaRanges) -> IommuInfo {
    IommuInfo {
        pgsizes: ranges.alignment,
        ranges: ranges.ranges,
        dma_avail: None,
    }
}

/// A descriptor registered with the KVM-VFIO device, removed again on drop.
struct Registered {
    kvm: Option<Arc<dyn VfioFileRegistry>>,
    fd: RawFd,
}

impl Registered {
    fn new(kvm: Option<Arc<dyn VfioFileRegistry>>, fd: RawFd) -> io::Result<Registered> {
        if let Some(kvm) = &kvm {
            kvm.add(fd)?;
        }
        Ok(Registered { kvm, fd })
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.kvm.as_ref().map(|kvm| kvm.remove(self.fd)) {
            log::warn!(
                "removing VFIO file {} from the KVM-VFIO device failed: {e}",
                self.fd
            );
        }
    }
}

/// A device opened through its cdev.
struct CdevDevice {
    /// The KVM-VFIO registration, removed while the descriptor is still
    /// open (fields drop in order; KVM finds the file by its descriptor).
    _registered: Registered,
    /// The cdev, shared by the regions' slow paths (and so by the fault
    /// handler's table while they are registered). Closing its last
    /// descriptor unbinds the device from the iommufd and detaches it from
    /// the IOAS.
    fd: Arc<OwnedFd>,
}

impl DeviceBackend for CdevDevice {
    fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    fn device_info(&self) -> io::Result<DeviceInfo> {
        let info = vfio::device_info(self.fd.as_raw_fd())?;
        Ok(DeviceInfo {
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    fn region_info(&self, index: u32) -> io::Result<Vec<u8>> {
        vfio::region_info_bytes(self.fd.as_raw_fd(), index)
    }

    fn irq_info(&self, index: u32) -> io::Result<RawIrqInfo> {
        let info = vfio::irq_info(self.fd.as_raw_fd(), index)?;
        Ok(RawIrqInfo {
            flags: info.flags,
            count: info.count,
        })
    }

    fn set_irqs(&self, set: &IrqSet<'_>) -> io::Result<()> {
        vfio::set_irqs(self.fd.as_raw_fd(), set)
    }

    fn reset(&self) -> io::Result<()> {
        vfio::device_reset(self.fd.as_raw_fd())
    }

    fn hot_reset_info(&self) -> io::Result<HotResetInfo> {
        vfio::hot_reset_info(self.fd.as_raw_fd())
    }

    /// A cdev-opened device proves ownership through its iommufd, not with
    /// group descriptors.
    fn group_fd(&self, _group: u32) -> Option<OwnedFd> {
        None
    }

    fn hot_reset(&self, group_fds: &[RawFd]) -> io::Result<()> {
        vfio::hot_reset(self.fd.as_raw_fd(), group_fds)
    }
}
