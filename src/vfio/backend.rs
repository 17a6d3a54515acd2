//! The seam between barmap and the kernel's VFIO interfaces.
//!
//! Everything barmap asks of the kernel about a device or its IOMMU address
//! space goes through two small traits: [`IommuBackend`] (a container of the
//! legacy interface or an IOAS of iommufd: opening devices in it, its IOVA
//! ranges, DMA mappings; or for a container without an IOMMU the
//! [`PhysicalMemory`] its buffers come from)
//! and [`DeviceBackend`] (an open device: its info, region and interrupt
//! info, `VFIO_DEVICE_SET_IRQS`, resets, and the descriptor its regions are
//! read, written and mapped through). What the interfaces share (argument
//! building, parsing, bookkeeping, errors) lives above the seam in
//! [`crate::Device`], [`crate::Container`], [`crate::irq`] and [`crate::dma`],
//! and is tested on the host against a scripted kernel behind it.
//!
//! The methods speak the kernel's language (raw info buffers, errnos as
//! [`io::Error`]s) so that every backend reports the same facts the same
//! way, and the code above turns them into typed [`crate::Error`]s once.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use vm_memory::MmapRegion;

use super::Interface;

use crate::dma::IommuInfo;
use crate::pci::{PciAddress, Sysfs};

/// An address space that devices are opened in: a type1v2 container, an
/// IOAS of an iommufd, or a container without an IOMMU.
pub(crate) trait IommuBackend: Send + Sync {
    /// The kernel interface.
    fn interface(&self) -> Interface;

    /// `None` (the default) where an IOMMU translates the device's DMA: its
    /// buffers are mapped at IOVAs with [`IommuBackend::map_dma`]. Without an
    /// IOMMU, the memory buffers come from and whose physical addresses the
    /// device uses instead; the IOMMU calls are then never made.
    fn physical_memory(&self) -> Option<&dyn PhysicalMemory> {
        None
    }

    /// Opens the device at `addr`, already found bound to vfio-pci in the
    /// viable IOMMU group `group` through `sysfs`, and attaches it to this
    /// address space.
    fn open_device(
        &self,
        sysfs: &Sysfs,
        addr: PciAddress,
        group: u32,
    ) -> Result<Box<dyn DeviceBackend>, OpenFailure>;

    /// The page sizes, valid IOVA ranges and DMA-mapping limit.
    fn iommu_info(&self) -> io::Result<IommuInfo>;

    /// Maps `size` bytes of this process's memory at `host` for DMA at `iova`.
    ///
    /// # Safety
    ///
    /// `host..host + size` must stay mapped, and be reached only through raw
    /// pointers or volatile accesses, until [`IommuBackend::unmap_dma`] of the
    /// same range succeeds: the device reads and writes it at any time.
    unsafe fn map_dma(&self, iova: u64, size: u64, host: *mut u8) -> io::Result<()>;

    /// Removes the DMA mapping of `size` bytes at `iova`.
    fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()>;
}

/// Memory for DMA without an IOMMU, as the kernel gives it: locked
/// mappings and the page frames behind them.
pub(crate) trait PhysicalMemory: Send + Sync {
    /// Maps `len` bytes (a multiple of `page`) of fresh anonymous shared
    /// memory backed by pages of `page` bytes (4 KiB, or 2 MiB or 1 GiB huge
    /// pages: `MAP_HUGETLB`), and locks it in memory (`mlock`).
    fn map(&self, len: usize, page: u64) -> Result<MmapRegion, MapFailure>;

    /// Reads the `/proc/self/pagemap` entries of `entries.len()` virtual
    /// pages of 4 KiB from page number `first` on.
    fn pagemap(&self, first: u64, entries: &mut [u64]) -> io::Result<()>;
}

/// Which step of [`PhysicalMemory::map`] failed.
#[derive(Debug)]
pub(crate) enum MapFailure {
    /// `mmap` (for huge pages: `ENOMEM` when none is free, `EINVAL` for a
    /// size the CPU lacks).
    Map(io::Error),
    /// `mlock` (`ENOMEM` or `EPERM` past `RLIMIT_MEMLOCK`).
    Lock(io::Error),
}

/// Why [`IommuBackend::open_device`] failed, in terms the code above the seam
/// turns into the error that says what happened.
#[derive(Debug)]
pub(crate) enum OpenFailure {
    /// The group's node (`/dev/vfio/GROUP`) could not be opened.
    Group(io::Error),
    /// The kernel says the group is not viable (a member is bound to another driver).
    NotViable,
    /// The backend found what failed itself, as the error to return.
    Error(crate::Error),
    /// The device has no VFIO cdev: `path` (its sysfs `vfio-dev` directory)
    /// is missing or holds no `vfioN`.
    NoCdev {
        /// The sysfs directory looked in.
        path: PathBuf,
    },
    /// The device's cdev node could not be opened.
    Cdev {
        /// The node (`/dev/vfio/devices/vfioN`).
        path: PathBuf,
        /// The OS error of the open.
        source: io::Error,
    },
    /// `VFIO_DEVICE_BIND_IOMMUFD` failed.
    Bind {
        /// The cdev node.
        path: PathBuf,
        /// The kernel's error.
        source: io::Error,
    },
    /// Another step of the open sequence failed.
    Step {
        /// Which step.
        step: &'static str,
        /// What the kernel or the library said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An open VFIO device, as a backend reaches it.
pub(crate) trait DeviceBackend: Send + Sync {
    /// The device descriptor: regions are read and written with pread and
    /// pwrite on it, and mapped with mmap, at their info's offsets.
    fn fd(&self) -> &Arc<OwnedFd>;

    /// `VFIO_DEVICE_GET_INFO`.
    fn device_info(&self) -> io::Result<DeviceInfo>;

    /// `VFIO_DEVICE_GET_REGION_INFO` for `index`: the whole info buffer, the
    /// `vfio_region_info` header followed by its capability chain.
    fn region_info(&self, index: u32) -> io::Result<Vec<u8>>;

    /// `VFIO_DEVICE_GET_IRQ_INFO` for `index`.
    fn irq_info(&self, index: u32) -> io::Result<RawIrqInfo>;

    /// `VFIO_DEVICE_SET_IRQS`.
    fn set_irqs(&self, set: &IrqSet<'_>) -> io::Result<()>;

    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> io::Result<()>;

    /// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: every device a hot reset of this
    /// one's bus would reset.
    fn hot_reset_info(&self) -> io::Result<HotResetInfo>;

    /// A descriptor of IOMMU group `group` held by this process, to prove
    /// ownership in a hot reset; `None` if the process holds none.
    fn group_fd(&self, group: u32) -> Option<OwnedFd>;

    /// `VFIO_DEVICE_PCI_HOT_RESET` with the group descriptors `group_fds`
    /// (none for a device opened through its cdev: the kernel checks that
    /// every affected device is bound to the same iommufd).
    fn hot_reset(&self, group_fds: &[RawFd]) -> io::Result<()>;
}

/// What `VFIO_DEVICE_GET_INFO` says of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// How many regions the device has.
    pub num_regions: u32,
    /// How many interrupt indices it has.
    pub num_irqs: u32,
}

/// What `VFIO_DEVICE_GET_IRQ_INFO` says of one interrupt index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawIrqInfo {
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// How many vectors it has.
    pub count: u32,
}

/// The arguments of one `VFIO_DEVICE_SET_IRQS`: vectors `start..start + count`
/// of interrupt `index`, with the action and data type in `flags`.
///
/// With `VFIO_IRQ_SET_DATA_EVENTFD`, `fds` holds one descriptor per vector
/// (`-1` tears a vector's trigger down) and `count` is `fds.len()`; with
/// `VFIO_IRQ_SET_DATA_NONE`, `fds` is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IrqSet<'a> {
    /// The interrupt index (`VFIO_PCI_*_IRQ_INDEX`).
    pub index: u32,
    /// `VFIO_IRQ_SET_DATA_*` | `VFIO_IRQ_SET_ACTION_*`.
    pub flags: u32,
    /// The first vector.
    pub start: u32,
    /// How many vectors.
    pub count: u32,
    /// One eventfd per vector, for `VFIO_IRQ_SET_DATA_EVENTFD`.
    pub fds: &'a [RawFd],
}

/// What `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HotResetInfo {
    /// `VFIO_PCI_HOT_RESET_FLAG_*`: with `DEV_ID`, [`DependentDevice::group`]
    /// is an iommufd device id instead (a device opened through its cdev),
    /// and `DEV_ID_OWNED` says every one of them is owned by its iommufd.
    pub flags: u32,
    /// The devices.
    pub devices: Vec<DependentDevice>,
}

/// One device a hot reset would reset (`vfio_pci_dependent_device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DependentDevice {
    /// Its IOMMU group; with `VFIO_PCI_HOT_RESET_FLAG_DEV_ID`, its iommufd
    /// device id (`VFIO_PCI_DEVID_OWNED`, 0, for a device owned through a
    /// shared group; `VFIO_PCI_DEVID_NOT_OWNED` for one not owned).
    pub group: u32,
    /// Its PCI address.
    pub addr: PciAddress,
}
