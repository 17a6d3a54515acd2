//! PCI addresses and the sysfs view of PCI devices.

mod address;
mod sysfs;

pub use address::PciAddress;
pub use sysfs::{PciDeviceInfo, Sysfs, VfioBind, VFIO_PCI_DRIVER};
