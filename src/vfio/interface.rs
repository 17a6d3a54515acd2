//! Which kernel interface a device or container is reached through.

use std::fmt;

/// The kernel interface barmap reaches a device and its DMA through.
///
/// ```
/// use barmap::Interface;
/// assert_eq!(Interface::NoIommu.to_string(), "no-IOMMU VFIO group");
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interface {
    /// An IOMMU group (`/dev/vfio/GROUP`) in a type1v2 container (`/dev/vfio/vfio`).
    Group,
    /// The VFIO device cdev (`/dev/vfio/devices/vfioN`) bound to iommufd (`/dev/iommu`).
    Iommufd,
    /// A no-IOMMU group (`/dev/vfio/noiommu-N`) in a `VFIO_NOIOMMU_IOMMU`
    /// container: DMA is not translated, and the device reaches all memory.
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
