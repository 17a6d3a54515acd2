//! The VFIO container: one IOMMU address space, shareable by several devices.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioError};

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
        })
    }

    pub(crate) fn inner(&self) -> &Arc<VfioContainer> {
        &self.inner
    }
}
