//! Opening devices through VFIO: container (type1v2 IOMMU), group, device.

mod container;
mod device;
mod ioctl;
mod reset;

pub use container::Container;
pub use device::Device;
pub use reset::ResetKind;
