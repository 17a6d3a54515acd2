//! # barmap
//!
//! Safe, fast userspace access to PCI devices through Linux VFIO.
//!
//! barmap opens a device bound to `vfio-pci` by its PCI address, lists its
//! regions and their capabilities, and maps its BARs straight into the
//! process: uncached, page-aligned, unmapped on drop, with typed,
//! bounds-checked volatile access. Where a BAR cannot be mapped (I/O port
//! BARs, sparse BARs, parts trapped on purpose), it falls back to the VFIO file
//! descriptor, and on x86-64 can still hand out one raw pointer over the whole
//! BAR whose unmapped parts are served by a fault handler.
//!
//! The modules follow the data path: [`pci`] (addresses, sysfs) →
//! VFIO container/group/device → [`region`] info → mapping and
//! [`shadow`] fault handling → typed access through a [`Region`]. [`config`]
//! reads config space (header and capability lists) through the same
//! region I/O.
//!
//! Handles own what they need: a [`Device`] is a shareable handle, and a
//! [`Region`] keeps its device open, so a driver can hold both in one struct.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod access;
pub mod config;
pub mod dma;
mod error;
pub mod irq;
#[cfg(feature = "kvm")]
pub mod kvm;
mod map;
pub mod mmio;
pub mod pci;
pub mod region;
pub mod shadow;
mod vfio;

pub use access::{Region, RegionBuilder, Scalar};
pub use config::{BarKind, ConfigSpace};
pub use dma::{Dma, DmaBuffer, DmaMask};
pub use error::{Error, ErrorKind, Result};
pub use irq::{Interrupts, IrqIndex, IrqInfo, Vector};
pub use map::MapPolicy;
pub use pci::{PciAddress, PciDeviceInfo, Sysfs};
pub use region::{
    FdRegion, MemoryRegion, RegionCap, RegionFlags, RegionIndex, RegionInfo, RegionIo, SparseArea,
};
pub use vfio::{Container, Device, Interface, ResetKind};
/// The vm-memory crate barmap's DMA buffers are built on (its `Bytes` and
/// `VolatileMemory` traits reach their contents).
pub use vm_memory;

/// The README's examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
