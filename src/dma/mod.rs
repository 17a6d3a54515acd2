//! DMA: memory the device may read and write, mapped into the container's
//! IOMMU address space at IOVAs barmap allocates.
//!
//! [`Device::dma`](crate::Device::dma) turns bus mastering on and returns a
//! [`Dma`] handle with the device's DMA mask. [`Dma::alloc`] makes a
//! page-aligned [`DmaBuffer`] (an anonymous shared mapping, through
//! vm-memory), maps it with `VFIO_IOMMU_MAP_DMA` at the lowest free IOVA the
//! mask allows, and unmaps it and frees the IOVA when dropped. The CPU side
//! is vm-memory's [`VolatileMemory`](vm_memory::VolatileMemory): volatile
//! slices, never references, since the device writes behind the compiler's back.
//! [`Dma::map_guest_memory`] maps a VMM's own [`GuestMemoryMmap`](vm_memory::GuestMemoryMmap)
//! at its guest addresses.
//!
//! A device without an IOMMU (a container made by
//! [`Container::noiommu_device_reaches_all_memory`](crate::Container::noiommu_device_reaches_all_memory))
//! has no IOVAs: [`Dma::alloc`] gives it locked memory at a physical
//! address, which [`DmaBuffer::iova`] returns. A buffer of more than 4 KiB
//! is backed by huge pages, so that it is physically contiguous (2 MiB up to
//! 2 MiB, 1 GiB beyond; the host must reserve them, or the allocation fails
//! with [`PhysicalDmaError::NoHugePages`]). The addresses come from
//! `/proc/self/pagemap`, which shows them only to a process with
//! `CAP_SYS_ADMIN` ([`Error::MissingCapability`](crate::Error::MissingCapability)
//! otherwise). `mlock` keeps a buffer in memory, but does not pin its frames:
//! the kernel may still migrate a locked 4 KiB page (compaction, unless
//! `vm.compact_unevictable_allowed` is 0) and, rarely, a huge page (to make
//! room for a contiguous allocation such as CMA or a 1 GiB page, or to take
//! memory offline). Keep such a host's memory quiet: compaction off for
//! locked pages, no memory hot-unplug, huge pages reserved at boot. Nothing
//! revokes a device's access to physical memory, so a dropped buffer's
//! memory is not given back while the device is open: the device keeps it,
//! locked, hands it zeroed to the next buffer of the same size, and frees it
//! once it is closed (when vfio-pci has turned its bus mastering off).
//! [`Dma::map_guest_memory`] is unsupported there.
//!
//! The allocator ([`IovaAllocator`]) is the container's: it honours the
//! IOVA ranges the kernel reports (the intel-iommu reserves the MSI window at
//! 0xfee00000), and the container's count of mappings is held to the
//! kernel's limit.
//!
//! ```no_run
//! use barmap::dma::DmaMask;
//! use barmap::vm_memory::{Bytes, VolatileMemory};
//! use barmap::Device;
//!
//! let edu = Device::open("0000:00:02.0".parse()?)?;
//! let dma = edu.dma(DmaMask::bits(28))?; // bus mastering on; IOVAs below 256 MiB
//! let buf = dma.alloc(4096)?;
//! buf.as_volatile_slice().write_slice(b"hello", 0).unwrap();
//! println!("device address {:#x}", buf.iova());
//! # Ok::<(), barmap::Error>(())
//! ```

mod buffer;
mod iommu;
mod iova;
pub(crate) mod physical;
mod space;

pub use buffer::{DmaBuffer, GuestMapping};
pub(crate) use iommu::{parse_iommu_info, IommuInfo};
pub use iova::{IovaAllocator, IovaError};
pub use physical::PhysicalDmaError;
pub(crate) use space::ContainerDma;
pub use space::{Dma, DmaMask};
