//! Which kernel interface a device is reached through.

use std::fmt;

/// The kernel interface a [`crate::Container`] and the devices opened in it
/// go through.
///
/// ```
/// use barmap::Interface;
/// assert_eq!(Interface::Iommufd.to_string(), "VFIO device cdev (iommufd)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Interface {
    /// The legacy interface: an IOMMU group (`/dev/vfio/GROUP`) attached to
    /// a type1v2 container (`/dev/vfio/vfio`).
    Group,
    /// The device's own node (`/dev/vfio/devices/vfioN`) bound to an
    /// iommufd (`/dev/iommu`), with DMA through an IOAS.
    Iommufd,
    /// A no-IOMMU group (`/dev/vfio/noiommu-N`): no DMA protection at all.
    NoIommu,
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interface::Group => "VFIO group (type1v2 container)",
            Interface::Iommufd => "VFIO device cdev (iommufd)",
            Interface::NoIommu => "no-IOMMU VFIO group",
        })
    }
}
