//! An open VFIO PCI device and its regions.

use std::fmt;
use std::io;
use std::mem::offset_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{vfio_region_info, VFIO_REGION_INFO_FLAG_CAPS};

use super::backend::{DeviceBackend, IrqSet, OpenFailure};
use super::{Container, Interface};
use crate::access::{Region, RegionBuilder};
use crate::config::{BarKind, ConfigSpace};
use crate::dma::physical::RetiredMemory;
use crate::error::{Error, Result};
use crate::map::MapPolicy;
use crate::pci::{PciAddress, Sysfs, VFIO_PCI_DRIVER};
use crate::region::{parse_region_caps, u32_at, u64_at, FdRegion, RegionFlags, RegionIndex, RegionInfo};

/// A PCI device opened through VFIO.
///
/// Opening checks, in order, that the device exists, is bound to `vfio-pci`,
/// has an IOMMU group and that the group is viable, then opens it through
/// one kernel interface ([`Interface`]: its group in a type1v2 container, or
/// its cdev bound to an iommufd) and reads every region's info. Each failure
/// is a distinct [`Error`] naming the address (and the interface tried).
///
/// A `Device` is a cheap, shareable handle (an `Arc` inside): clones, and
/// every [`Region`] opened from it, keep the VFIO device open; it closes when
/// the last of them is dropped.
///
/// ```no_run
/// use barmap::Device;
/// let edu = Device::open("0000:00:02.0".parse()?)?;
/// for region in edu.regions() {
///     println!("{} {:#x} {}", region.index, region.size, region.flags);
/// }
/// let bar0 = edu.bar(0)?;
/// assert_eq!(bar0.read::<u32>(0)?, 0x010000ed);
/// # Ok::<(), barmap::Error>(())
/// ```
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

/// What every handle on one open device shares.
struct Inner {
    addr: PciAddress,
    group: u32,
    /// `VFIO_DEVICE_GET_INFO` flags (`VFIO_DEVICE_FLAGS_*`).
    flags: u32,
    regions: Vec<RegionInfo>,
    bar_kinds: [Option<BarKind>; 6],
    config: Option<FdRegion>,
    /// The device as the kernel interface opened it: held so that the device
    /// stays open and attached while any handle lives. Its descriptor is
    /// shared by the regions' slow paths (and so by the fault handler's
    /// table while they are registered).
    backend: Box<dyn DeviceBackend>,
    /// Memory of dropped no-IOMMU DMA buffers, which the device might still
    /// write: declared after `backend`, so it is freed after the device is
    /// closed.
    retired_dma: RetiredMemory,
    container: Container,
    /// Which interrupt indices are enabled, against a second enable.
    irqs: crate::irq::IrqState,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("addr", &self.inner.addr)
            .field("group", &self.inner.group)
            .field("interface", &self.interface())
            .field("regions", &self.inner.regions)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the device at `addr` in a container of its own, through its
    /// VFIO cdev when it has one (`/sys/bus/pci/devices/ADDR/vfio-dev/vfioN`)
    /// and `/dev/iommu` opens, otherwise through its IOMMU group (the reason
    /// is logged at debug level). [`Device::builder`] chooses explicitly.
    ///
    /// A device in a no-IOMMU group is refused
    /// ([`Error::NoIommuWithoutOptIn`]): it opens only in
    /// [`Container::noiommu_device_reaches_all_memory`].
    pub fn open(addr: PciAddress) -> Result<Device> {
        Device::builder(addr).open()
    }

    /// Opens the device at `addr` in `container`, sharing its IOMMU mappings.
    ///
    /// A device in a no-IOMMU group opens only in a container made by
    /// [`Container::noiommu_device_reaches_all_memory`], and such a container
    /// takes no other ([`Error::NoIommuWithoutOptIn`], [`Error::NotNoIommu`]).
    pub fn open_in(container: &Container, addr: PciAddress) -> Result<Device> {
        Device::open_with(&Sysfs::default(), container, addr)
    }

    /// Checks the device in `sysfs`, opens it through `container`'s kernel
    /// interface and reads its regions.
    pub(crate) fn open_with(sysfs: &Sysfs, container: &Container, addr: PciAddress) -> Result<Device> {
        let group = check_openable(sysfs, addr)?;
        Device::attach(sysfs, container, addr, group)
    }

    /// Opens the (checked) device through `container`'s kernel interface and
    /// reads its regions.
    ///
    /// A no-IOMMU group and a container of another interface (or the other
    /// way round) are refused before any kernel call.
    pub(super) fn attach(
        sysfs: &Sysfs,
        container: &Container,
        addr: PciAddress,
        group: u32,
    ) -> Result<Device> {
        let interface = container.interface();
        check_interface(sysfs, addr, group, interface)?;
        let backend = container
            .backend()
            .open_device(sysfs, addr, group)
            .map_err(|e| open_error(sysfs, addr, group, interface, e))?;
        let step = |step: &'static str| {
            move |e: io::Error| Error::Vfio {
                addr,
                step,
                source: Box::new(e),
            }
        };
        let device_info = backend.device_info().map_err(step("get device info"))?;
        let count = device_info.num_regions;
        let regions = (0..count)
            .map(|index| read_region_info(&*backend, addr, RegionIndex::new(index)))
            .collect::<Result<Vec<_>>>()?;
        let config = regions
            .iter()
            .find(|r| r.index == RegionIndex::CONFIG && r.size > 0 && r.flags.readable())
            .map(|r| FdRegion::new(backend.fd().clone(), r.offset, r.size));
        let mut bar_kinds = [None; 6];
        if let Some(io) = &config {
            let space = ConfigSpace::new(io, addr);
            for region in regions.iter().filter(|r| r.size > 0) {
                if let Some(n) = region.index.bar_number() {
                    bar_kinds[n as usize] = Some(space.bar_kind(n as u8)?);
                }
            }
        }
        log::debug!("opened {addr} (IOMMU group {group}, {interface}) with {count} regions");
        Ok(Device {
            inner: Arc::new(Inner {
                addr,
                group,
                flags: device_info.flags,
                regions,
                bar_kinds,
                config,
                backend,
                retired_dma: RetiredMemory::default(),
                container: container.clone(),
                irqs: crate::irq::IrqState::default(),
            }),
        })
    }

    /// The device's PCI address.
    pub fn address(&self) -> PciAddress {
        self.inner.addr
    }

    /// Memory of the device's dropped no-IOMMU DMA buffers.
    pub(crate) fn retired_dma(&self) -> &RetiredMemory {
        &self.inner.retired_dma
    }

    /// The device's IOMMU group.
    pub fn iommu_group(&self) -> u32 {
        self.inner.group
    }

    /// The container the device is attached to.
    pub fn container(&self) -> &Container {
        &self.inner.container
    }

    /// Every region the device reports, in index order (unimplemented BARs have size 0).
    pub fn regions(&self) -> &[RegionInfo] {
        &self.inner.regions
    }

    /// The info of one region; [`Error::NoSuchRegion`] if the device has no such
    /// region or it has size 0.
    pub fn region_info(&self, index: RegionIndex) -> Result<&RegionInfo> {
        self.inner
            .regions
            .iter()
            .find(|r| r.index == index && r.size > 0)
            .ok_or_else(|| self.no_such_region(index))
    }

    /// What BAR `n` decodes, from its register in config space (read once, at
    /// open); `None` for a BAR the device does not implement.
    pub fn bar_kind(&self, n: u32) -> Option<BarKind> {
        self.inner.bar_kinds.get(n as usize).copied().flatten()
    }

    /// Typed access to the device's config space (through pread/pwrite; vfio-pci
    /// virtualizes parts of it, such as the BAR registers).
    ///
    /// ```no_run
    /// let edu = barmap::Device::open("0000:00:02.0".parse()?)?;
    /// let config = edu.config()?;
    /// assert_eq!(config.header()?.vendor_id, 0x1234);
    /// for cap in config.capabilities()? {
    ///     println!("{cap}");
    /// }
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn config(&self) -> Result<ConfigSpace<'_>> {
        let io = self
            .inner
            .config
            .as_ref()
            .ok_or_else(|| self.no_such_region(RegionIndex::CONFIG))?;
        Ok(ConfigSpace::new(io, self.inner.addr))
    }

    /// Opens BAR `n` with [`MapPolicy::Direct`]: every mmapable area mapped, the
    /// rest (or all of an I/O BAR) through pread/pwrite.
    pub fn bar(&self, n: u32) -> Result<Region> {
        let index = RegionIndex::bar(n).ok_or_else(|| self.no_such_region(RegionIndex::new(n)))?;
        self.region(index, MapPolicy::Direct)
    }

    /// Opens any region (BAR, `rom`, `config`) with the given policy.
    ///
    /// ```no_run
    /// use barmap::{Device, MapPolicy, RegionIndex};
    /// let edu = Device::open("0000:00:02.0".parse()?)?;
    /// // Map BAR0 except its first page, whose accesses take the slow path.
    /// let bar0 = edu.region(RegionIndex::bar(0).unwrap(), MapPolicy::trap_range(0..0x1000))?;
    /// assert!(bar0.is_trapped(0) && !bar0.is_trapped(0x1000));
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn region(&self, index: RegionIndex, policy: MapPolicy) -> Result<Region> {
        self.region_builder(index)?.policy(policy).build()
    }

    /// A [`RegionBuilder`] for region `index`, to choose a policy and an
    /// access hook before opening it.
    pub fn region_builder(&self, index: RegionIndex) -> Result<RegionBuilder<'static>> {
        let info = self.region_info(index)?;
        let fd = self.inner.backend.fd();
        let io = FdRegion::new(fd.clone(), info.offset, info.size);
        Ok(RegionBuilder::for_device(self.clone(), info, io, fd.clone()))
    }

    /// The config space's slow path, if the device has a readable config region.
    #[cfg(feature = "kvm")]
    pub(crate) fn config_io(&self) -> Option<&FdRegion> {
        self.inner.config.as_ref()
    }

    /// The `VFIO_DEVICE_GET_INFO` flags.
    pub(crate) fn device_flags(&self) -> u32 {
        self.inner.flags
    }

    fn no_such_region(&self, region: RegionIndex) -> Error {
        Error::NoSuchRegion {
            addr: self.inner.addr,
            region,
            count: self.inner.regions.len() as u32,
        }
    }
}

impl AsFd for Device {
    /// The VFIO device descriptor (a duplicate of the one vfio-ioctls opened:
    /// the same open device), for calls barmap does not wrap (pread at a
    /// region's [`RegionInfo::offset`], ioctls).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.backend.fd().as_fd()
    }
}

impl AsRawFd for Device {
    /// The VFIO device descriptor, as [`AsFd::as_fd`].
    fn as_raw_fd(&self) -> RawFd {
        self.inner.backend.fd().as_raw_fd()
    }
}

/// Checks that `addr` exists, is bound to vfio-pci and sits in a viable IOMMU
/// group; returns the group.
pub(super) fn check_openable(sysfs: &Sysfs, addr: PciAddress) -> Result<u32> {
    let info = sysfs.device(addr)?;
    if info.driver.as_deref() != Some(VFIO_PCI_DRIVER) {
        return Err(Error::NotBoundToVfio {
            addr,
            driver: info.driver,
        });
    }
    let group = info.iommu_group.ok_or(Error::NoIommuGroup { addr })?;
    let blockers = sysfs.group_blockers(group)?;
    if !blockers.is_empty() {
        return Err(Error::GroupNotViable {
            addr,
            group,
            blockers,
        });
    }
    Ok(group)
}

/// Checks that the device's group and the interface it is to be opened
/// through agree: a no-IOMMU group only through [`Interface::NoIommu`], and
/// that only for a no-IOMMU group.
fn check_interface(sysfs: &Sysfs, addr: PciAddress, group: u32, interface: Interface) -> Result<()> {
    match (sysfs.is_noiommu_group(group)?, interface == Interface::NoIommu) {
        (true, false) => Err(Error::NoIommuWithoutOptIn {
            addr,
            group,
            interface,
        }),
        (false, true) => Err(Error::NotNoIommu {
            addr,
            group,
            interface,
        }),
        _ => Ok(()),
    }
}

/// Reads and parses one region's info, capabilities included.
///
/// vfio-pci counts the VGA region among its regions but refuses its info with
/// `EINVAL` on devices without VGA: such a region is reported with size 0.
fn read_region_info(backend: &dyn DeviceBackend, addr: PciAddress, index: RegionIndex) -> Result<RegionInfo> {
    let bytes = match backend.region_info(index.get()) {
        Ok(bytes) => bytes,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::debug!("{addr}: region {index} is not implemented");
            return Ok(RegionInfo::new(index, 0, 0, RegionFlags::default(), vec![]));
        }
        Err(e) => {
            return Err(Error::Vfio {
                addr,
                step: "get region info",
                source: Box::new(e),
            })
        }
    };
    // region_info_bytes returns at least the whole struct, so every field is there.
    let field32 = |at| u32_at(&bytes, at).unwrap_or_default();
    let field64 = |at| u64_at(&bytes, at).unwrap_or_default();
    let flags = field32(offset_of!(vfio_region_info, flags));
    let cap_offset = field32(offset_of!(vfio_region_info, cap_offset));
    let size = field64(offset_of!(vfio_region_info, size));
    let offset = field64(offset_of!(vfio_region_info, offset));
    let caps = if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
        parse_region_caps(&bytes, cap_offset).map_err(|e| Error::MalformedCapability {
            addr,
            region: index,
            offset: e.offset,
            reason: e.reason,
        })?
    } else {
        vec![]
    };
    Ok(RegionInfo::new(
        index,
        size,
        offset,
        RegionFlags::from_bits(flags),
        caps,
    ))
}

/// Turns a failure of the open sequence through `interface` into the error
/// that says what happened.
fn open_error(
    sysfs: &Sysfs,
    addr: PciAddress,
    group: u32,
    interface: Interface,
    failure: OpenFailure,
) -> Error {
    match failure {
        OpenFailure::Group(source) => match source.raw_os_error() {
            Some(libc::EBUSY) => Error::GroupBusy { addr, group, source },
            Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied {
                addr,
                interface,
                path: PathBuf::from(format!("/dev/vfio/{group}")),
                source,
            },
            _ => Error::Vfio {
                addr,
                step: "open group",
                source: Box::new(source),
            },
        },
        OpenFailure::NotViable => Error::GroupNotViable {
            addr,
            group,
            blockers: sysfs.group_blockers(group).unwrap_or_default(),
        },
        OpenFailure::Error(e) => e,
        OpenFailure::NoCdev { path } => Error::InterfaceUnavailable {
            addr,
            interface,
            path,
            reason: "sysfs has no vfio-dev entry for it: the kernel predates VFIO device cdevs (6.6, CONFIG_VFIO_DEVICE_CDEV)",
            source: None,
        },
        OpenFailure::Cdev { path, source } => match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied {
                addr,
                interface,
                path,
                source,
            },
            Some(libc::ENOENT) => Error::InterfaceUnavailable {
                addr,
                interface,
                path,
                reason: "the kernel has no VFIO device cdevs (CONFIG_VFIO_DEVICE_CDEV), or devtmpfs is not on /dev",
                source: Some(source),
            },
            _ => Error::Vfio {
                addr,
                step: "open the device cdev",
                source: Box::new(source),
            },
        },
        OpenFailure::Bind { path, source } => match source.raw_os_error() {
            Some(libc::EBUSY) => Error::DeviceBusy {
                addr,
                interface,
                path,
                reason: "its IOMMU group is open through the group interface (here or in another process)",
                source,
            },
            // 6.6 to 6.12 (vfio_df_open) refuse a second open of a device
            // through the cdev path with EINVAL; barmap's own arguments are valid.
            Some(libc::EINVAL) => Error::DeviceBusy {
                addr,
                interface,
                path,
                reason: "the cdev is bound to an iommufd already, by another descriptor or process",
                source,
            },
            Some(libc::EPERM | libc::EACCES) => Error::InterfaceUnavailable {
                addr,
                interface,
                path,
                reason: "the kernel refused the bind: iommufd needs interrupt remapping                          (or iommufd's allow_unsafe_interrupts), and the rights to the device",
                source: Some(source),
            },
            _ => Error::Vfio {
                addr,
                step: "bind the device cdev to iommufd",
                source: Box::new(source),
            },
        },
        OpenFailure::Step { step, source } => Error::Vfio { addr, step, source },
    }
}

/// What the interrupt, reset and DMA modules need of an open device.
impl Device {
    /// The kernel interface the device is reached through.
    pub(crate) fn backend(&self) -> &dyn DeviceBackend {
        &*self.inner.backend
    }

    /// Which interrupt indices are enabled.
    pub(crate) fn irq_state(&self) -> &crate::irq::IrqState {
        &self.inner.irqs
    }

    /// `VFIO_DEVICE_SET_IRQS` on vectors `start..start + count` of `index`
    /// with the action and data type in `flags` (see [`IrqSet`]).
    pub(crate) fn set_irqs(
        &self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[RawFd],
    ) -> io::Result<()> {
        self.inner.backend.set_irqs(&IrqSet {
            index,
            flags,
            start,
            count,
            fds,
        })
    }
}
