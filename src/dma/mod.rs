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
mod space;

pub use buffer::{DmaBuffer, GuestMapping};
pub(crate) use iommu::{parse_iommu_info, IommuInfo};
pub use iova::{IovaAllocator, IovaError};
pub(crate) use space::ContainerDma;
pub use space::{Dma, DmaMask};
