//! Opening devices through VFIO: container (type1v2 IOMMU, or no IOMMU),
//! group, device, all through one seam ([`backend`]) that a kernel interface
//! implements.

mod backend;
mod container;
mod device;
#[cfg(test)]
pub(crate) mod fake;
mod interface;
mod ioctl;
mod legacy;
mod noiommu;
mod reset;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_noiommu;

pub(crate) use backend::PhysicalMemory;
pub use container::Container;
pub use device::Device;
pub use interface::Interface;
pub use reset::ResetKind;
