//! The VM handle: barmap's share of KVM's memory slots and GSI routes, and
//! the KVM-VFIO device.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_irq_routing_entry, KvmIrqRouting,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vfio_ioctls::VfioDeviceFd;

use crate::error::{Error, Result};
use crate::pci::PciAddress;
use crate::{Container, Device};

/// A KVM VM as barmap's passthrough sees it: the `VmFd`, the memory slots and
/// GSIs barmap may use, the GSI routing table, and the VFIO container whose
/// groups are registered with the VM's KVM-VFIO device.
///
/// KVM cannot be asked which slots or routes are in use, and
/// `KVM_SET_GSI_ROUTING` replaces the whole table. So the VMM gives barmap
/// the numbers from which on it may allocate: memory slots `first_slot..` and
/// GSIs `first_gsi..` (below them are the VMM's own: its RAM slots, the
/// IOAPIC's 24 pins). Routes of its own that the VMM wants kept in the table
/// it hands over with [`Vm::keep_route`].
///
/// A `Vm` is a cheap, shareable handle (an `Arc` inside).
///
/// ```no_run
/// use kvm_ioctls::Kvm;
/// let kvm = Kvm::new().unwrap();
/// // Slot 0 stays the VMM's (its RAM); GSIs 0..24 are the IOAPIC's.
/// let vm = barmap::kvm::Vm::new(&kvm, kvm.create_vm().unwrap(), 1, 24);
/// let edu = vm.open_device("0000:00:02.0".parse()?)?;
/// # let _ = edu;
/// # Ok::<(), barmap::Error>(())
/// ```
#[derive(Clone)]
pub struct Vm {
    inner: Arc<Inner>,
}

struct Inner {
    fd: VmFd,
    slots: Mutex<Numbers>,
    routes: Mutex<Routes>,
    /// The container of every device opened with [`Vm::open_device`].
    container: Mutex<Option<Container>>,
}

/// Numbers `first..limit` handed out one at a time.
struct Numbers {
    first: u32,
    limit: u32,
    used: BTreeSet<u32>,
}

impl Numbers {
    fn alloc(&mut self) -> Option<u32> {
        let n = (self.first..self.limit).find(|n| !self.used.contains(n))?;
        self.used.insert(n);
        Some(n)
    }

    fn free(&mut self, n: u32) {
        self.used.remove(&n);
    }
}

/// The GSI routing table: the VMM's routes and barmap's, by GSI.
struct Routes {
    gsis: Numbers,
    entries: BTreeMap<u32, kvm_irq_routing_entry>,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm").finish_non_exhaustive()
    }
}

impl Vm {
    /// Takes `fd` over; barmap allocates memory slots from `first_slot` and
    /// GSIs from `first_gsi` on, up to what `kvm` reports
    /// (`KVM_CAP_NR_MEMSLOTS`, `KVM_CAP_IRQ_ROUTING`).
    pub fn new(kvm: &Kvm, fd: VmFd, first_slot: u32, first_gsi: u32) -> Vm {
        let slot_limit = u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX);
        let gsi_limit = u32::try_from(fd.check_extension_int(Cap::IrqRouting)).unwrap_or(0);
        Vm {
            inner: Arc::new(Inner {
                fd,
                slots: Mutex::new(Numbers {
                    first: first_slot,
                    limit: slot_limit,
                    used: BTreeSet::new(),
                }),
                routes: Mutex::new(Routes {
                    gsis: Numbers {
                        first: first_gsi,
                        limit: gsi_limit,
                        used: BTreeSet::new(),
                    },
                    entries: BTreeMap::new(),
                }),
                container: Mutex::new(None),
            }),
        }
    }

    /// The VM's descriptor, for the VMM's own calls (vCPUs, its RAM slots, the irqchip).
    pub fn fd(&self) -> &VmFd {
        &self.inner.fd
    }

    /// Keeps `entry` (one of the VMM's own routes, e.g. an IOAPIC pin) in the
    /// GSI routing table barmap installs with `KVM_SET_GSI_ROUTING`; it takes
    /// effect with barmap's next routing change.
    pub fn keep_route(&self, entry: kvm_irq_routing_entry) {
        lock(&self.inner.routes).entries.insert(entry.gsi, entry);
    }

    /// Opens the device at `addr` for this VM: in the VM's one VFIO container
    /// (created with the first device, so that guest RAM mapped for DMA is
    /// shared by every passed-through device), whose groups vfio-ioctls
    /// registers with the VM's KVM-VFIO device (`KVM_CREATE_DEVICE` of type
    /// `KVM_DEV_TYPE_VFIO`, then `KVM_DEV_VFIO_FILE_ADD` per group; removed
    /// again when the device closes).
    ///
    /// ```no_run
    /// # let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// # let vm = barmap::kvm::Vm::new(&kvm, kvm.create_vm().unwrap(), 1, 24);
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
            let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio));
            *container = Some(Container::with_device_fd(Some(handle))?);
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

    /// The first memory slot number barmap may use and the number of slots.
    pub(super) fn slot_span(&self) -> (u32, u32) {
        let slots = lock(&self.inner.slots);
        (slots.first, slots.limit)
    }

    /// Allocates a GSI, stores `entry(gsi)` as its route and installs the
    /// table; `None` if no GSI is free.
    pub(super) fn add_route(
        &self,
        entry: impl FnOnce(u32) -> kvm_irq_routing_entry,
    ) -> Option<std::result::Result<u32, kvm_ioctls::Error>> {
        let mut routes = lock(&self.inner.routes);
        let gsi = routes.gsis.alloc()?;
        routes.entries.insert(gsi, entry(gsi));
        Some(match self.install(&routes) {
            Ok(()) => Ok(gsi),
            Err(e) => {
                routes.entries.remove(&gsi);
                routes.gsis.free(gsi);
                Err(e)
            }
        })
    }

    /// Replaces the route of `gsi` and installs the table.
    pub(super) fn set_route(
        &self,
        entry: kvm_irq_routing_entry,
    ) -> std::result::Result<(), kvm_ioctls::Error> {
        let mut routes = lock(&self.inner.routes);
        routes.entries.insert(entry.gsi, entry);
        self.install(&routes)
    }

    /// Removes the route of `gsi`, installs the table and frees the GSI.
    pub(super) fn remove_route(&self, gsi: u32) -> std::result::Result<(), kvm_ioctls::Error> {
        let mut routes = lock(&self.inner.routes);
        routes.entries.remove(&gsi);
        routes.gsis.free(gsi);
        self.install(&routes)
    }

    /// The number of GSIs barmap may route.
    pub(super) fn gsi_limit(&self) -> u32 {
        lock(&self.inner.routes).gsis.limit
    }

    /// `KVM_SET_GSI_ROUTING` with every route in the table.
    fn install(&self, routes: &Routes) -> std::result::Result<(), kvm_ioctls::Error> {
        let entries: Vec<kvm_irq_routing_entry> = routes.entries.values().copied().collect();
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        self.fd().set_gsi_routing(&table)
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
    use super::Numbers;
    use std::collections::BTreeSet;

    #[test]
    fn numbers_reuse_freed_ones_and_stop_at_the_limit() {
        let mut n = Numbers {
            first: 2,
            limit: 5,
            used: BTreeSet::new(),
        };
        assert_eq!(
            (n.alloc(), n.alloc(), n.alloc(), n.alloc()),
            (Some(2), Some(3), Some(4), None)
        );
        n.free(3);
        assert_eq!(n.alloc(), Some(3));
    }

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
