//! The VM handle: barmap's share of KVM's memory slots and GSI routes, and
//! the KVM-VFIO device.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_irq_routing_entry, KvmIrqRouting,
    KVM_IRQ_ROUTING_IRQCHIP,
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
/// it hands over with [`Vm::keep_route`]: any number per GSI (KVM's default
/// x86 table gives GSIs 0-15 two each, the PIC's and the IOAPIC's), all below
/// `first_gsi`.
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
    /// The size of a vCPU's `kvm_run` mapping (`KVM_GET_VCPU_MMAP_SIZE`), 0 if unknown.
    run_size: usize,
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

/// The GSI routing table: the VMM's routes (any number per GSI, all below
/// barmap's GSIs) and barmap's (one per GSI it allocated).
struct Routes {
    gsis: Numbers,
    kept: Vec<kvm_irq_routing_entry>,
    own: BTreeMap<u32, kvm_irq_routing_entry>,
}

impl Routes {
    fn new(first: u32, limit: u32) -> Routes {
        Routes {
            gsis: Numbers {
                first,
                limit,
                used: BTreeSet::new(),
            },
            kept: Vec::new(),
            own: BTreeMap::new(),
        }
    }

    /// Keeps the VMM's `entry`, replacing a kept one KVM would not take
    /// beside it; refuses a GSI in barmap's range.
    fn keep(&mut self, entry: kvm_irq_routing_entry) -> Result<()> {
        let (first, limit) = (self.gsis.first, self.gsis.limit);
        if (first..limit).contains(&entry.gsi) {
            return Err(Error::KvmGsiReserved {
                gsi: entry.gsi,
                first,
                limit,
            });
        }
        self.kept.retain(|kept| !clash(kept, &entry));
        self.kept.push(entry);
        Ok(())
    }

    /// Allocates a GSI and stores `entry(gsi)` as its route; `None` if no GSI is free.
    fn add(&mut self, entry: impl FnOnce(u32) -> kvm_irq_routing_entry) -> Option<u32> {
        let gsi = self.gsis.alloc()?;
        self.own.insert(gsi, entry(gsi));
        Some(gsi)
    }

    /// Replaces the route of one of barmap's GSIs.
    fn set(&mut self, entry: kvm_irq_routing_entry) {
        self.own.insert(entry.gsi, entry);
    }

    /// Removes the route of one of barmap's GSIs and frees the GSI.
    fn remove(&mut self, gsi: u32) {
        self.own.remove(&gsi);
        self.gsis.free(gsi);
    }

    /// Every route, the VMM's first.
    fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        self.kept.iter().chain(self.own.values()).copied().collect()
    }
}

/// Whether KVM refuses `a` and `b` in one table: the same GSI, unless both
/// go to different irqchips (KVM's rule in `setup_routing_entry`).
fn clash(a: &kvm_irq_routing_entry, b: &kvm_irq_routing_entry) -> bool {
    let irqchip = |e: &kvm_irq_routing_entry| {
        // SAFETY: every member of the union is plain integers, so any bit
        // pattern is a valid `kvm_irq_routing_irqchip`; the value counts only
        // where `type_` says that member is in use.
        let chip = unsafe { e.u.irqchip.irqchip };
        (e.type_ == KVM_IRQ_ROUTING_IRQCHIP).then_some(chip)
    };
    a.gsi == b.gsi
        && match (irqchip(a), irqchip(b)) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
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
                routes: Mutex::new(Routes::new(first_gsi, gsi_limit)),
                run_size: kvm.get_vcpu_mmap_size().unwrap_or(0),
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
    ///
    /// A GSI may have several routes: hand over each (KVM's default x86
    /// table routes GSIs 0-15 to both the PIC and the IOAPIC). A kept route
    /// that KVM would refuse beside `entry` (the same GSI, unless both go to
    /// different irqchips) is replaced by it, so keeping an updated MSI route
    /// of the VMM's replaces the old one.
    ///
    /// Errors: [`Error::KvmGsiReserved`] if `entry`'s GSI is one barmap
    /// allocates from (`first_gsi..` of [`Vm::new`]); the table is unchanged.
    ///
    /// ```no_run
    /// use kvm_bindings::{kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQ_ROUTING_IRQCHIP};
    /// # let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// let vm = barmap::kvm::Vm::new(&kvm, kvm.create_vm().unwrap(), 1, 24);
    /// for (chip, pin) in [(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)] {
    ///     let mut entry = kvm_irq_routing_entry { gsi: 4, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
    ///     entry.u.irqchip.irqchip = chip;
    ///     entry.u.irqchip.pin = pin;
    ///     vm.keep_route(entry)?; // both routes of GSI 4 stay
    /// }
    /// let msi = kvm_irq_routing_entry { gsi: 30, ..Default::default() };
    /// assert!(vm.keep_route(msi).is_err()); // GSIs from 24 on are barmap's
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn keep_route(&self, entry: kvm_irq_routing_entry) -> Result<()> {
        lock(&self.inner.routes).keep(entry)
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
        let gsi = routes.add(entry)?;
        Some(match self.install(&routes) {
            Ok(()) => Ok(gsi),
            Err(e) => {
                routes.remove(gsi);
                Err(e)
            }
        })
    }

    /// Replaces the route of `gsi` (one of barmap's) and installs the table.
    pub(super) fn set_route(
        &self,
        entry: kvm_irq_routing_entry,
    ) -> std::result::Result<(), kvm_ioctls::Error> {
        let mut routes = lock(&self.inner.routes);
        routes.set(entry);
        self.install(&routes)
    }

    /// Removes the route of `gsi`, installs the table and frees the GSI.
    pub(super) fn remove_route(&self, gsi: u32) -> std::result::Result<(), kvm_ioctls::Error> {
        let mut routes = lock(&self.inner.routes);
        routes.remove(gsi);
        self.install(&routes)
    }

    /// The number of GSIs barmap may route.
    pub(super) fn gsi_limit(&self) -> u32 {
        lock(&self.inner.routes).gsis.limit
    }

    /// The size of a vCPU's `kvm_run` mapping, 0 if KVM did not say.
    pub(super) fn run_size(&self) -> usize {
        self.inner.run_size
    }

    /// `KVM_SET_GSI_ROUTING` with every route in the table.
    fn install(&self, routes: &Routes) -> std::result::Result<(), kvm_ioctls::Error> {
        let table = KvmIrqRouting::from_entries(&routes.entries())
            .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
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
    use super::{Numbers, Routes};
    use crate::error::Error;
    use kvm_bindings::{
        kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    };
    use std::collections::BTreeSet;

    fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    }

    fn msi(gsi: u32, data: u32) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = 0xfee0_0000;
        e.u.msi.data = data;
        e
    }

    /// (gsi, type, irqchip or MSI data) of every entry, in table order.
    fn summary(routes: &Routes) -> Vec<(u32, u32, u32)> {
        routes
            .entries()
            .iter()
            .map(|e| {
                // SAFETY: the union is plain integers; `type_` says which member is in use.
                let what = unsafe {
                    if e.type_ == KVM_IRQ_ROUTING_IRQCHIP {
                        e.u.irqchip.irqchip * 100 + e.u.irqchip.pin
                    } else {
                        e.u.msi.data
                    }
                };
                (e.gsi, e.type_, what)
            })
            .collect()
    }

    #[test]
    fn routes_keep_both_default_routes_of_a_legacy_gsi() {
        let mut routes = Routes::new(24, 1024);
        for gsi in 0..16 {
            routes.keep(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi)).unwrap();
            routes.keep(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi)).unwrap();
        }
        assert_eq!(routes.entries().len(), 32, "two routes for each of GSIs 0-15");
        let gsi4: Vec<_> = summary(&routes).into_iter().filter(|e| e.0 == 4).collect();
        assert_eq!(
            gsi4,
            [
                (4, KVM_IRQ_ROUTING_IRQCHIP, 4),
                (4, KVM_IRQ_ROUTING_IRQCHIP, 200 + 4)
            ]
        );
        // barmap's route goes beside them, not over them.
        let gsi = routes.add(|gsi| msi(gsi, 0x40)).unwrap();
        assert_eq!(gsi, 24);
        assert_eq!(routes.entries().len(), 33);
    }

    #[test]
    fn routes_keeping_again_replaces_what_kvm_would_refuse_beside_it() {
        let mut routes = Routes::new(24, 1024);
        routes.keep(irqchip(9, KVM_IRQCHIP_PIC_SLAVE, 1)).unwrap();
        routes.keep(irqchip(9, KVM_IRQCHIP_IOAPIC, 9)).unwrap();
        // The same chip again: the new pin replaces the old one.
        routes.keep(irqchip(9, KVM_IRQCHIP_IOAPIC, 10)).unwrap();
        // The VMM's own MSI route of GSI 20, reprogrammed by the guest.
        routes.keep(msi(20, 0x30)).unwrap();
        routes.keep(msi(20, 0x31)).unwrap();
        assert_eq!(
            summary(&routes),
            [
                (9, KVM_IRQ_ROUTING_IRQCHIP, 100 + 1),
                (9, KVM_IRQ_ROUTING_IRQCHIP, 200 + 10),
                (20, KVM_IRQ_ROUTING_MSI, 0x31),
            ]
        );
        // An MSI route and an irqchip route cannot share a GSI.
        routes.keep(msi(9, 0x50)).unwrap();
        assert_eq!(summary(&routes)[..1], [(20, KVM_IRQ_ROUTING_MSI, 0x31)]);
        assert_eq!(summary(&routes)[1..], [(9, KVM_IRQ_ROUTING_MSI, 0x50)]);
    }

    #[test]
    fn routes_refuse_a_kept_route_in_barmaps_range() {
        let mut routes = Routes::new(24, 1024);
        let gsi = routes.add(|gsi| msi(gsi, 0x40)).unwrap();
        for bad in [24, 25, 1023] {
            match routes.keep(msi(bad, 0x99)) {
                Err(Error::KvmGsiReserved { gsi, first, limit }) => {
                    assert_eq!((gsi, first, limit), (bad, 24, 1024))
                }
                other => panic!("keep of GSI {bad}: {other:?}"),
            }
        }
        routes.keep(msi(23, 0x41)).unwrap(); // the one below barmap's is the VMM's
                                             // barmap's route is intact, and the next one takes the next GSI.
        assert_eq!(routes.add(|gsi| msi(gsi, 0x42)), Some(25));
        assert_eq!(
            summary(&routes),
            [
                (23, KVM_IRQ_ROUTING_MSI, 0x41),
                (gsi, KVM_IRQ_ROUTING_MSI, 0x40),
                (25, KVM_IRQ_ROUTING_MSI, 0x42),
            ]
        );
        routes.remove(gsi);
        assert_eq!(
            routes.add(|gsi| msi(gsi, 0x43)),
            Some(24),
            "a removed route frees its GSI"
        );
    }

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
