//! Opening devices through VFIO: a type1v2 container and groups, or device
//! cdevs bound to an iommufd, all through one seam ([`backend`]) that a
//! kernel interface implements; [`select`] chooses between them.

mod backend;
mod container;
mod device;
#[cfg(test)]
pub(crate) mod fake;
mod interface;
mod ioctl;
pub(crate) mod iommufd;
mod legacy;
mod noiommu;
mod reset;
pub(crate) mod select;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_iommufd;
#[cfg(test)]
mod tests_noiommu;

pub(crate) use backend::{MapFailure, PhysicalMemory};
pub use container::Container;
pub use device::Device;
pub use interface::Interface;
pub use reset::ResetKind;
pub use select::DeviceBuilder;
