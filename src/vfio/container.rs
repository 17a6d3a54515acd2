//! The VFIO container: one IOMMU address space, shareable by several devices.

use std::fmt;
use std::sync::Arc;

use super::backend::IommuBackend;
use super::legacy::LegacyContainer;
use crate::error::Result;

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
    backend: Arc<dyn IommuBackend>,
    /// The IOVA space and DMA-mapping count, shared by every clone.
    dma: Arc<crate::dma::ContainerDma>,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("interface", &self.backend.interface())
            .finish_non_exhaustive()
    }
}

impl Container {
    /// Opens `/dev/vfio/vfio` and checks the API version and type1v2 support.
    pub fn new() -> Result<Container> {
        Container::with_device_fd(None)
    }

    /// [`Container::new`], with the hypervisor's VFIO device (the KVM-VFIO
    /// device) that vfio-ioctls registers each group with as it is attached.
    pub(crate) fn with_device_fd(device_fd: Option<Arc<vfio_ioctls::VfioDeviceFd>>) -> Result<Container> {
        Ok(Container::with_backend(Arc::new(LegacyContainer::open(
            device_fd,
        )?)))
    }

    /// A container over any backend (the legacy one, or a test's fake kernel).
    pub(crate) fn with_backend(backend: Arc<dyn IommuBackend>) -> Container {
        Container {
            backend,
            dma: Arc::default(),
        }
    }

    /// The kernel interface behind the container.
    pub(crate) fn backend(&self) -> &dyn IommuBackend {
        &*self.backend
    }

    /// The container's IOVA space and mapping count.
    pub(crate) fn dma_state(&self) -> &crate::dma::ContainerDma {
        &self.dma
    }
}
