//! An open VFIO PCI device and its regions.

use std::fmt;
use std::io;
use std::mem::offset_of;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use vfio_bindings::bindings::vfio::{vfio_region_info, VFIO_REGION_INFO_FLAG_CAPS};
use vfio_ioctls::{VfioDevice, VfioError};

use super::{ioctl, Container};
use crate::config::{regs::PCI_BASE_ADDRESS_0, ConfigSpace};
use crate::error::{Error, Result};
use crate::pci::{PciAddress, Sysfs, VFIO_PCI_DRIVER};
use crate::region::{
    parse_region_caps, u32_at, u64_at, BarKind, FdRegion, RegionFlags, RegionIndex, RegionInfo,
};

/// A PCI device opened through VFIO.
///
/// Opening checks, in order, that the device exists, is bound to `vfio-pci`,
/// has an IOMMU group and that the group is viable, then attaches the group to
/// a type1v2 container and reads every region's info. Each failure is a
/// distinct [`Error`] naming the address.
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
pub struct Device {
    addr: PciAddress,
    group: u32,
    regions: Vec<RegionInfo>,
    config: Option<FdRegion>,
    vfio: VfioDevice,
    container: Container,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("addr", &self.addr)
            .field("group", &self.group)
            .field("regions", &self.regions)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the device at `addr` in a container of its own.
    pub fn open(addr: PciAddress) -> Result<Device> {
        let sysfs = Sysfs::default();
        let group = check_openable(&sysfs, addr)?;
        Device::attach(&sysfs, &Container::new()?, addr, group)
    }

    /// Opens the device at `addr` in `container`, sharing its IOMMU mappings.
    pub fn open_in(container: &Container, addr: PciAddress) -> Result<Device> {
        let sysfs = Sysfs::default();
        let group = check_openable(&sysfs, addr)?;
        Device::attach(&sysfs, container, addr, group)
    }

    /// Attaches the (checked) device's group to `container` and reads its regions.
    fn attach(sysfs: &Sysfs, container: &Container, addr: PciAddress, group: u32) -> Result<Device> {
        let vfio = VfioDevice::new(&sysfs.device_path(addr), container.inner().clone(), false)
            .map_err(|e| open_error(sysfs, addr, group, e))?;
        let fd = vfio.as_raw_fd();
        let step = |step: &'static str| {
            move |e: io::Error| Error::Vfio {
                addr,
                step,
                source: Box::new(e),
            }
        };
        let count = ioctl::device_info(fd)
            .map_err(step("get device info"))?
            .num_regions;
        let mut regions = (0..count)
            .map(|index| read_region_info(fd, addr, index))
            .collect::<Result<Vec<_>>>()?;
        let config = regions
            .iter()
            .find(|r| r.index == RegionIndex::CONFIG && r.size > 0 && r.flags.readable())
            // SAFETY: `fd` is the device descriptor, owned by the Device built
            // below together with this FdRegion, and closed only when it drops.
            .map(|r| unsafe { FdRegion::new(fd, r.offset, r.size) });
        if let Some(io) = &config {
            let space = ConfigSpace::new(io, addr);
            for region in regions.iter_mut().filter(|r| r.size > 0) {
                if let Some(n) = region.index.bar_number() {
                    let register = space.read32(PCI_BASE_ADDRESS_0 + 4 * n as u16)?;
                    region.bar_kind = Some(BarKind::from_register(register));
                }
            }
        }
        log::debug!("opened {addr} (IOMMU group {group}) with {count} regions");
        Ok(Device {
            addr,
            group,
            regions,
            config,
            vfio,
            container: container.clone(),
        })
    }

    /// The device's PCI address.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// The device's IOMMU group.
    pub fn iommu_group(&self) -> u32 {
        self.group
    }

    /// The container the device is attached to.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// Every region the device reports, in index order (unimplemented BARs have size 0).
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    /// The info of one region; [`Error::NoSuchRegion`] if the device has no such
    /// region or it has size 0.
    pub fn region_info(&self, index: RegionIndex) -> Result<&RegionInfo> {
        self.regions
            .iter()
            .find(|r| r.index == index && r.size > 0)
            .ok_or(Error::NoSuchRegion {
                addr: self.addr,
                region: index,
                count: self.regions.len() as u32,
            })
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
        let io = self.config.as_ref().ok_or(Error::NoSuchRegion {
            addr: self.addr,
            region: RegionIndex::CONFIG,
            count: self.regions.len() as u32,
        })?;
        Ok(ConfigSpace::new(io, self.addr))
    }

    /// The slow-path I/O of a region: pread/pwrite on the device descriptor.
    pub(crate) fn region_io(&self, info: &RegionInfo) -> FdRegion {
        // SAFETY: the descriptor lives as long as `self`; callers keep the
        // FdRegion no longer than their borrow of the device (a Bar borrows it).
        unsafe { FdRegion::new(self.raw_fd(), info.offset, info.size) }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.vfio.as_raw_fd()
    }
}

impl AsRawFd for Device {
    /// The VFIO device descriptor, for calls barmap does not wrap (pread at a
    /// region's [`RegionInfo::offset`], ioctls). Closing it is not allowed.
    fn as_raw_fd(&self) -> RawFd {
        self.raw_fd()
    }
}

/// Checks that `addr` exists, is bound to vfio-pci and sits in a viable IOMMU
/// group; returns the group.
fn check_openable(sysfs: &Sysfs, addr: PciAddress) -> Result<u32> {
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

/// Reads and parses one region's info, capabilities included.
///
/// vfio-pci counts the VGA region among its regions but refuses its info with
/// `EINVAL` on devices without VGA: such a region is reported with size 0.
fn read_region_info(fd: RawFd, addr: PciAddress, index: u32) -> Result<RegionInfo> {
    let bytes = match ioctl::region_info_bytes(fd, index) {
        Ok(bytes) => bytes,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::debug!("{addr}: region {} is not implemented", RegionIndex(index));
            return Ok(RegionInfo {
                index: RegionIndex(index),
                size: 0,
                offset: 0,
                flags: RegionFlags(0),
                caps: vec![],
                bar_kind: None,
            });
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
        parse_region_caps(&bytes, cap_offset)?
    } else {
        vec![]
    };
    Ok(RegionInfo {
        index: RegionIndex(index),
        size,
        offset,
        flags: RegionFlags(flags),
        caps,
        bar_kind: None,
    })
}

/// Turns a vfio-ioctls open failure into the error that says what happened.
fn open_error(sysfs: &Sysfs, addr: PciAddress, group: u32, err: VfioError) -> Error {
    match err {
        VfioError::OpenGroup(source, _) => match source.raw_os_error() {
            Some(libc::EBUSY) => Error::GroupBusy { addr, group },
            Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied {
                addr,
                path: PathBuf::from(format!("/dev/vfio/{group}")),
            },
            _ => Error::Vfio {
                addr,
                step: "open group",
                source: Box::new(source),
            },
        },
        VfioError::GroupViable => Error::GroupNotViable {
            addr,
            group,
            blockers: sysfs.group_blockers(group).unwrap_or_default(),
        },
        other => Error::Vfio {
            addr,
            step: "attach group and open device",
            source: Box::new(other),
        },
    }
}
