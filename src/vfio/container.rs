//! The VFIO container: one IOMMU address space, shareable by several devices.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioError};

use super::ioctl;
use crate::error::{Error, Result};

/// The VFIO container node.
const VFIO_CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// A VFIO container with the type1v2 IOMMU: one DMA address space.
///
/// Cloning is cheap and shares the container; every [`crate::Device`] opened
/// with [`crate::Device::open_in`] on clones of one `Container` shares its IOMMU
/// mappings. [`crate::Device::open`] makes a private container per device.
///
/// ```no_run
/// use barmap::{Container, Device};
/// let container = Container::new()?;
/// let edu = Device::open_in(&container, "0000:00:02.0".parse()?)?;
/// let testdev = Device::open_in(&container, "0000:00:03.0".parse()?)?;
/// # Ok::<(), barmap::Error>(())
/// ```
#[derive(Clone)]
pub struct Container {
    inner: Arc<VfioContainer>,
    /// The IOVA space and DMA-mapping count, shared by every clone.
    dma: Arc<crate::dma::ContainerDma>,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container").finish_non_exhaustive()
    }
}

impl Container {
    /// Opens `/dev/vfio/vfio` and checks the API version and type1v2 support.
    pub fn new() -> Result<Container> {
        let inner = VfioContainer::new(None).map_err(|e| match e {
            VfioError::OpenContainer(source) => Error::VfioUnavailable {
                path: PathBuf::from(VFIO_CONTAINER_PATH),
                reason: match source.kind() {
                    io::ErrorKind::NotFound => "the node is missing: load the vfio and vfio-pci modules",
                    io::ErrorKind::PermissionDenied => "permission denied: run as root",
                    _ => "it could not be opened",
                },
                source: Box::new(source),
            },
            other => Error::VfioUnavailable {
                path: PathBuf::from(VFIO_CONTAINER_PATH),
                reason: "the kernel's VFIO API version or type1v2 IOMMU support is missing",
                source: Box::new(other),
            },
        })?;
        log::debug!("opened VFIO container {VFIO_CONTAINER_PATH}");
        Ok(Container {
            inner: Arc::new(inner),
            dma: Arc::default(),
        })
    }

    pub(crate) fn inner(&self) -> &Arc<VfioContainer> {
        &self.inner
    }
}

/// What the DMA module needs of a container.
impl Container {
    /// The container's IOVA space and mapping count.
    pub(crate) fn dma_state(&self) -> &crate::dma::ContainerDma {
        &self.dma
    }

    /// `VFIO_IOMMU_GET_INFO` (see [`ioctl::iommu_info_bytes`]): vfio-ioctls
    /// has no call for it, so the IOVA-range and DMA-available capabilities
    /// are read with barmap's own.
    pub(crate) fn iommu_info_bytes(&self) -> io::Result<Vec<u8>> {
        ioctl::iommu_info_bytes(self.inner.as_raw_fd())
    }
}
