//! The container: one IOMMU address space, shareable by several devices.

use std::fmt;
use std::fs::File;
use std::sync::Arc;

use super::backend::IommuBackend;
use super::iommufd::{self, IommufdContainer, VfioFileRegistry};
use super::legacy::LegacyContainer;
use super::Interface;
use crate::error::Result;

/// One DMA address space that devices are opened in: a VFIO container with
/// the type1v2 IOMMU ([`Container::new`], the group interface), or an IOAS
/// of an iommufd ([`Container::iommufd`], the device cdev interface).
///
/// Cloning is cheap and shares the container; every [`crate::Device`] opened
/// with [`crate::Device::open_in`] (or a builder's
/// [`container`](crate::DeviceBuilder::container)) on clones of one
/// `Container` shares its IOMMU mappings. [`crate::Device::open`] makes a
/// private container per device.
///
/// ```no_run
/// use barmap::{Container, Device, Interface};
/// let container = Container::new()?;
/// let edu = Device::open_in(&container, "0000:00:02.0".parse()?)?;
/// let testdev = Device::open_in(&container, "0000:00:03.0".parse()?)?;
/// assert_eq!(container.interface(), Interface::Group);
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

    /// Opens `/dev/iommu` and allocates an IOAS in it (`IOMMU_IOAS_ALLOC`):
    /// the devices opened in this container go through their VFIO cdev
    /// (`/dev/vfio/devices/vfioN`), bound to this iommufd and attached to
    /// this IOAS, and share its DMA mappings. The IOAS is destroyed when the
    /// last clone and device are gone.
    ///
    /// A kernel without iommufd is [`crate::Error::VfioUnavailable`] naming
    /// [`Interface::Iommufd`] ("the kernel has no iommufd (CONFIG_IOMMUFD)").
    ///
    /// ```no_run
    /// use barmap::{Container, Device, Interface};
    /// let ioas = Container::iommufd()?;
    /// let edu = Device::builder("0000:00:02.0".parse()?).container(&ioas).open()?;
    /// assert_eq!(edu.interface(), Interface::Iommufd);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn iommufd() -> Result<Container> {
        Container::iommufd_with(iommufd::open_iommufd()?, None)
    }

    /// The kernel interface the container's devices go through.
    pub fn interface(&self) -> Interface {
        self.backend.interface()
    }

    /// [`Container::new`], with the hypervisor's VFIO device (the KVM-VFIO
    /// device) that vfio-ioctls registers each group with as it is attached.
    pub(crate) fn with_device_fd(device_fd: Option<Arc<vfio_ioctls::VfioDeviceFd>>) -> Result<Container> {
        Ok(Container::with_backend(Arc::new(LegacyContainer::open(
            device_fd,
        )?)))
    }

    /// An IOAS in the open iommufd `file`, whose devices are registered
    /// with the hypervisor's VFIO device `kvm`, if given, before they are bound.
    pub(crate) fn iommufd_with(file: File, kvm: Option<Arc<dyn VfioFileRegistry>>) -> Result<Container> {
        Ok(Container::with_backend(Arc::new(IommufdContainer::new(
            file, kvm,
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
