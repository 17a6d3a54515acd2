//! PCI addresses and the sysfs view of PCI devices.

mod address;

pub use address::PciAddress;
