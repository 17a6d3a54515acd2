//! PCI addresses and the sysfs view of PCI devices.

mod address;
mod sysfs;

#[cfg(test)]
pub(crate) use sysfs::fake;

pub use address::PciAddress;
pub use sysfs::{PciDeviceInfo, Sysfs, VfioBind, VFIO_PCI_DRIVER};
