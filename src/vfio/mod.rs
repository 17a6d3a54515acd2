//! Opening devices through VFIO: container (type1v2 IOMMU), group, device,
//! all through one seam ([`backend`]) that a kernel interface implements.

mod backend;
mod container;
mod device;
#[cfg(test)]
pub(crate) mod fake;
mod ioctl;
mod legacy;
mod reset;
#[cfg(test)]
mod tests;

pub use container::Container;
pub use device::Device;
pub use reset::ResetKind;
