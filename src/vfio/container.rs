//! The container: one IOMMU address space, shareable by several devices.

use std::fmt;
use std::fs::File;
use std::sync::Arc;

use super::backend::IommuBackend;
use super::iommufd::{self, IommufdContainer, VfioFileRegistry};
use super::legacy::LegacyContainer;
use super::noiommu::{NoIommuContainer, NoIommuKernel, ProcMemory};
use super::Interface;
use crate::error::Result;

/// One DMA address space that devices are opened in: a VFIO container with
/// the type1v2 IOMMU ([`Container::new`], the group interface), or an IOAS
/// of an iommufd ([`Container::iommufd`], the device cdev interface); or
/// none, without an IOMMU ([`Container::noiommu_device_reaches_all_memory`]).
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

    /// [`Container::new`], with the hypervisor's VFIO device (the KVM-VFIO
    /// device) that vfio-ioctls registers each group with as it is attached.
    pub(crate) fn with_device_fd(device_fd: Option<Arc<vfio_ioctls::VfioDeviceFd>>) -> Result<Container> {
        Ok(Container::with_backend(Arc::new(LegacyContainer::open(
            device_fd,
        )?)))
    }

    /// A container without an IOMMU, for devices in VFIO's unsafe no-IOMMU
    /// mode: **the device can read and write all of memory**, the kernel's
    /// and every process's, and nothing checks the addresses it is given.
    ///
    /// This is the only way barmap opens a device in a no-IOMMU group
    /// (`/dev/vfio/noiommu-N`, on a kernel with `CONFIG_VFIO_NOIOMMU` and
    /// the vfio module's `enable_unsafe_noiommu_mode=1`); [`Device::open`]
    /// refuses such a device with [`Error::NoIommuWithoutOptIn`], and
    /// [`Device::open_in`] this container refuses a device in a group with
    /// an IOMMU ([`Error::NotNoIommu`]). The process needs `CAP_SYS_RAWIO`
    /// to open the group and `CAP_SYS_ADMIN` to learn its buffers' physical
    /// addresses ([`Error::MissingCapability`] otherwise).
    ///
    /// DMA buffers ([`crate::Dma::alloc`]) are locked memory at physical
    /// addresses: see [`crate::dma`] for what backs them and what can still
    /// move a page. barmap opens the container, checks
    /// `VFIO_CHECK_EXTENSION(VFIO_NOIOMMU_IOMMU)`, and at the first device
    /// attaches its group and sets `VFIO_NOIOMMU_IOMMU` itself, over the
    /// vfio-bindings constants: vfio-ioctls' container accepts only type1v2.
    ///
    /// ```no_run
    /// use barmap::{Container, Device, Interface};
    /// let container = Container::noiommu_device_reaches_all_memory()?;
    /// let edu = Device::open_in(&container, "0000:00:02.0".parse()?)?;
    /// assert_eq!(edu.interface(), Interface::NoIommu);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    ///
    /// [`Device::open`]: crate::Device::open
    /// [`Device::open_in`]: crate::Device::open_in
    /// [`Error::NoIommuWithoutOptIn`]: crate::Error::NoIommuWithoutOptIn
    /// [`Error::NotNoIommu`]: crate::Error::NotNoIommu
    /// [`Error::MissingCapability`]: crate::Error::MissingCapability
    pub fn noiommu_device_reaches_all_memory() -> Result<Container> {
        Ok(Container::with_backend(Arc::new(NoIommuContainer::open(
            Arc::new(NoIommuKernel),
            Box::new(ProcMemory),
        )?)))
    }

    /// The kernel interface the container's devices go through.
    pub fn interface(&self) -> Interface {
        self.backend.interface()
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
