//! The VM handle: the VMM's `VmFd`, borrowed, with the memory slots and the
//! routing table it shares with barmap, and the KVM-VFIO device.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use std::os::fd::RawFd;
use std::path::Path;

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_VFIO, KVM_DEV_VFIO_FILE,
    KVM_DEV_VFIO_FILE_ADD, KVM_DEV_VFIO_FILE_DEL,
};
use kvm_ioctls::{DeviceFd, Kvm, VmFd};
use vfio_ioctls::VfioDeviceFd;

use super::routes::{GsiRoutes, Numbers};
use crate::error::{Error, Result};
use crate::pci::{PciAddress, Sysfs};
use crate::vfio::iommufd::{open_iommufd_node, VfioFileRegistry, CDEV_DIR};
use crate::vfio::select::{choose, Choice};
use crate::{Container, Device};

/// A KVM VM as barmap's passthrough sees it: the VMM's `VmFd` (shared, never
/// taken over), the memory slots barmap may use, the VM's [`GsiRoutes`], and
/// the container whose devices (cdevs) or groups are registered with the
/// VM's KVM-VFIO device.
///
/// KVM cannot be asked which slots or routes are in use. So the VMM gives
/// barmap a range of memory slot numbers (the others stay the VMM's: its
/// RAM, its own devices) and the routing table it owns, in which barmap
/// allocates its GSIs from the range the table was made with, beside the
/// VMM's routes.
///
/// A `Vm` is a cheap, shareable handle (an `Arc` inside).
///
/// ```no_run
/// use std::sync::Arc;
/// use barmap::kvm::{GsiRoutes, Vm};
/// let kvm = kvm_ioctls::Kvm::new().unwrap();
/// let fd = Arc::new(kvm.create_vm().unwrap());
/// // Slot 0 stays the VMM's (its RAM); GSIs 0..24 are the IOAPIC's.
/// let routes = GsiRoutes::new(fd.clone(), 24..u32::MAX);
/// let vm = Vm::new(&kvm, routes, 1..u32::MAX);
/// let edu = vm.open_device("0000:00:02.0".parse()?)?;
/// # let _ = edu;
/// # Ok::<(), barmap::Error>(())
/// ```
#[derive(Clone)]
pub struct Vm {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Mutex<Numbers>,
    routes: GsiRoutes,
    /// The size of a vCPU's `kvm_run` mapping (`KVM_GET_VCPU_MMAP_SIZE`), 0 if unknown.
    run_size: usize,
    /// The container of every device opened with [`Vm::open_device`].
    container: Mutex<Option<Container>>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("slots", &*lock(&self.inner.slots))
            .field("routes", &self.inner.routes)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// barmap's view of the VM whose routing table `routes` is (the VMM's,
    /// made with [`GsiRoutes::new`] over its `Arc<VmFd>`): barmap allocates
    /// memory slots from `slots` (its end lowered to `KVM_CAP_NR_MEMSLOTS`)
    /// and GSIs from `routes`. The `VmFd` and the table stay the VMM's: it
    /// keeps its clones and uses them as before.
    pub fn new(kvm: &Kvm, routes: GsiRoutes, slots: Range<u32>) -> Vm {
        let slot_limit = u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX);
        Vm {
            inner: Arc::new(Inner {
                slots: Mutex::new(Numbers::new(slots.start..slots.end.min(slot_limit))),
                routes,
                run_size: kvm.get_vcpu_mmap_size().unwrap_or(0),
                container: Mutex::new(None),
            }),
        }
    }

    /// The VM's descriptor.
    pub fn fd(&self) -> &VmFd {
        self.inner.routes.fd()
    }

    /// The VM's routing table (the one given to [`Vm::new`]).
    pub fn routes(&self) -> &GsiRoutes {
        &self.inner.routes
    }

    /// Opens the device at `addr` for this VM: in the VM's one container
    /// (created with the first device, so that guest RAM mapped for DMA is
    /// shared by every passed-through device), registered with the VM's
    /// KVM-VFIO device (`KVM_CREATE_DEVICE` of type `KVM_DEV_TYPE_VFIO`,
    /// then `KVM_DEV_VFIO_FILE_ADD`; removed again when the device closes).
    ///
    /// The container's interface is chosen with the first device as
    /// [`Device::open`] chooses: an IOAS of an iommufd when the device has a
    /// VFIO cdev and `/dev/iommu` opens (each device cdev is registered
    /// before it is bound, as QEMU does), a type1v2 container otherwise
    /// (vfio-ioctls registers each group as it is attached). Later devices
    /// go through the same interface.
    ///
    /// ```no_run
    /// # let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// # let fd = std::sync::Arc::new(kvm.create_vm().unwrap());
    /// # let vm = barmap::kvm::Vm::new(&kvm, barmap::kvm::GsiRoutes::new(fd, 24..1024), 1..32);
    /// let edu = vm.open_device("0000:00:02.0".parse()?)?;
    /// let testdev = vm.open_device("0000:00:03.0".parse()?)?;
    /// # let _ = (edu, testdev);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn open_device(&self, addr: PciAddress) -> Result<Device> {
        let mut container = lock(&self.inner.container);
        if container.is_none() {
            let mut create = kvm_create_device {
                type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
                fd: 0,
                flags: 0,
            };
            let kvm_vfio = self
                .fd()
                .create_device(&mut create)
                .map_err(|e| kvm_error(addr, "create the KVM-VFIO device", e))?;
            *container = Some(
                match choose(&Sysfs::default(), addr, Path::new(CDEV_DIR), open_iommufd_node) {
                    Choice::Iommufd(file) => {
                        Container::iommufd_with(file, Some(Arc::new(KvmVfioFiles(kvm_vfio))))?
                    }
                    Choice::Group => {
                        Container::with_device_fd(Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio))))?
                    }
                },
            );
        }
        let container = container.as_ref().expect("created above");
        Device::open_in(container, addr)
    }

    /// A free memory slot number.
    pub(super) fn alloc_slot(&self) -> Option<u32> {
        lock(&self.inner.slots).alloc()
    }

    pub(super) fn free_slot(&self, slot: u32) {
        lock(&self.inner.slots).free(slot);
    }

    /// The first memory slot number barmap may use and one past the last.
    pub(super) fn slot_span(&self) -> (u32, u32) {
        let slots = lock(&self.inner.slots);
        (slots.first, slots.limit)
    }

    /// The size of a vCPU's `kvm_run` mapping, 0 if KVM did not say.
    pub(super) fn run_size(&self) -> usize {
        self.inner.run_size
    }
}

/// The KVM-VFIO device, as the iommufd backend registers device cdevs with it.
struct KvmVfioFiles(DeviceFd);

impl KvmVfioFiles {
    /// `KVM_SET_DEVICE_ATTR` of group `KVM_DEV_VFIO_FILE`, attribute `attr`, on `fd`.
    fn set(&self, attr: u32, fd: RawFd) -> std::io::Result<()> {
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_VFIO_FILE,
            attr: u64::from(attr),
            addr: &fd as *const RawFd as u64,
        };
        self.0
            .set_device_attr(&attr)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

impl VfioFileRegistry for KvmVfioFiles {
    fn add(&self, fd: RawFd) -> std::io::Result<()> {
        self.set(KVM_DEV_VFIO_FILE_ADD, fd)
    }

    fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.set(KVM_DEV_VFIO_FILE_DEL, fd)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`Error::Kvm`] for a KVM call made for the device at `addr`.
pub(super) fn kvm_error(addr: PciAddress, step: &'static str, source: kvm_ioctls::Error) -> Error {
    Error::Kvm {
        addr,
        step,
        source: std::io::Error::from_raw_os_error(source.errno()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kvm_error_keeps_the_kernel_errno() {
        let addr = "00:03.0".parse().unwrap();
        let err = super::kvm_error(addr, "route a GSI", kvm_ioctls::Error::new(libc::EEXIST));
        assert_eq!(
            (err.kind(), err.errno()),
            (crate::ErrorKind::Io, Some(libc::EEXIST))
        );
    }
}
