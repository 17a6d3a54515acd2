//! The GSI routing table of a VM, owned by the VMM and shared with barmap.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP,
};
use kvm_ioctls::{Cap, VmFd};

use crate::error::{Error, Result};

/// The GSI routing table of a VM: one object the VMM creates, adds its own
/// routes to, and hands to barmap's [`Vm`](super::Vm), which adds the routes
/// of the device vectors it delivers.
///
/// `KVM_SET_GSI_ROUTING` replaces the whole table and KVM cannot be asked
/// what is in it, so every route of the VM lives here, and every change
/// commits the whole table to KVM. barmap allocates its GSIs from the range
/// the VMM gives; the VMM's own routes (the IOAPIC's pins, its own
/// emulated devices' MSIs) must lie outside it, any number per GSI.
///
/// A `GsiRoutes` is a cheap, shareable handle (an `Arc` inside): clones are
/// the same table.
///
/// ```no_run
/// use std::sync::Arc;
/// use barmap::kvm::{GsiRoutes, Vm};
/// let kvm = kvm_ioctls::Kvm::new().unwrap();
/// let fd = Arc::new(kvm.create_vm().unwrap());
/// fd.create_irq_chip().unwrap();
/// // GSIs 0..24 are the IOAPIC's (the VMM's), barmap takes them from 24 on.
/// let routes = GsiRoutes::new(fd.clone(), 24..u32::MAX);
/// routes.add_x86_defaults()?;
/// let vm = Vm::new(&kvm, routes.clone(), 1..u32::MAX);
/// # let _ = vm;
/// # Ok::<(), barmap::Error>(())
/// ```
#[derive(Clone)]
pub struct GsiRoutes {
    inner: Arc<Shared>,
}

struct Shared {
    fd: Arc<VmFd>,
    table: Mutex<Table>,
}

impl fmt::Debug for GsiRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.table();
        f.debug_struct("GsiRoutes")
            .field("barmap", &(table.gsis.first..table.gsis.limit))
            .field("routes", &(table.vmm.len() + table.own.len()))
            .finish()
    }
}

impl GsiRoutes {
    /// An empty table for the VM of `fd`; barmap allocates its GSIs from
    /// `barmap` (its end lowered to the number of GSIs KVM routes,
    /// `KVM_CAP_IRQ_ROUTING`). Nothing is committed until the first change.
    pub fn new(fd: Arc<VmFd>, barmap: Range<u32>) -> GsiRoutes {
        let limit = u32::try_from(fd.check_extension_int(Cap::IrqRouting)).unwrap_or(0);
        GsiRoutes {
            inner: Arc::new(Shared {
                fd,
                table: Mutex::new(Table::new(barmap.start, barmap.end.min(limit))),
            }),
        }
    }

    /// Adds `entry`, one of the VMM's own routes, and commits the table.
    ///
    /// A GSI may have several routes: add each (KVM's default x86 table
    /// routes GSIs 0-15 to both the PIC and the IOAPIC). A route of the
    /// VMM's that KVM would refuse beside `entry` (the same GSI, unless both
    /// go to different irqchips) is replaced by it, so adding an updated MSI
    /// route replaces the old one.
    ///
    /// Errors: [`Error::KvmGsiReserved`] if `entry`'s GSI is one barmap
    /// allocates; [`Error::KvmRouting`] if KVM refuses the table. The table
    /// is unchanged after either.
    ///
    /// ```no_run
    /// use kvm_bindings::{kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQ_ROUTING_IRQCHIP};
    /// # let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// # let fd = std::sync::Arc::new(kvm.create_vm().unwrap());
    /// let routes = barmap::kvm::GsiRoutes::new(fd, 24..1024);
    /// for (chip, pin) in [(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)] {
    ///     let mut entry = kvm_irq_routing_entry { gsi: 4, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
    ///     entry.u.irqchip.irqchip = chip;
    ///     entry.u.irqchip.pin = pin;
    ///     routes.add(entry)?; // both routes of GSI 4 stay
    /// }
    /// let msi = kvm_irq_routing_entry { gsi: 30, ..Default::default() };
    /// assert!(routes.add(msi).is_err()); // GSIs from 24 on are barmap's
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn add(&self, entry: kvm_irq_routing_entry) -> Result<()> {
        self.add_all(&[entry])
    }

    /// [`GsiRoutes::add`] of each of `entries`, committed once; on an error
    /// none of them is added.
    pub fn add_all(&self, entries: &[kvm_irq_routing_entry]) -> Result<()> {
        let mut table = self.table();
        let before = table.vmm.clone();
        let added = entries.iter().try_for_each(|e| table.keep(*e));
        let result = added.and_then(|()| {
            self.commit(&table)
                .map_err(|source| routing_error(entries.first().map_or(0, |e| e.gsi), source))
        });
        if result.is_err() {
            table.vmm = before;
        }
        result
    }

    /// Adds KVM's default x86 routes (what the VM has before anyone sets a
    /// table): GSIs 0-15 to the PIC and the IOAPIC pin of the same number,
    /// 16-23 to the IOAPIC only. A VMM with an in-kernel irqchip needs them
    /// once the table is set, or its legacy interrupts stop.
    pub fn add_x86_defaults(&self) -> Result<()> {
        self.add_all(&x86_defaults())
    }

    /// Removes every route of the VMM's on `gsi` and commits the table.
    ///
    /// Errors: [`Error::KvmGsiReserved`] for one of barmap's GSIs,
    /// [`Error::KvmRouting`] if KVM refuses the table (the routes then stay).
    pub fn remove(&self, gsi: u32) -> Result<()> {
        let mut table = self.table();
        table.check_vmm(gsi)?;
        let before = table.vmm.clone();
        table.vmm.retain(|e| e.gsi != gsi);
        self.commit(&table).map_err(|source| {
            table.vmm = before;
            routing_error(gsi, source)
        })
    }

    /// Every route in the table, the VMM's first.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        self.table().entries()
    }

    /// The GSIs barmap allocates from.
    pub fn barmap_gsis(&self) -> Range<u32> {
        let table = self.table();
        table.gsis.first..table.gsis.limit
    }

    /// The descriptor of the VM whose table this is.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.inner.fd
    }

    /// Allocates one of barmap's GSIs, stores `entry(gsi)` as its route and
    /// commits; `None` if no GSI is free. On a KVM error the GSI is freed.
    pub(super) fn alloc(
        &self,
        entry: impl FnOnce(u32) -> kvm_irq_routing_entry,
    ) -> Option<std::result::Result<u32, kvm_ioctls::Error>> {
        let mut table = self.table();
        let gsi = table.add(entry)?;
        Some(match self.commit(&table) {
            Ok(()) => Ok(gsi),
            Err(e) => {
                table.remove(gsi);
                Err(e)
            }
        })
    }

    /// Replaces the route of one of barmap's GSIs and commits. If KVM refuses
    /// the new route (a guest's message it finds invalid, or no memory), the
    /// previous one is put back, so that the refused entry never poisons
    /// later commits of the table.
    pub(super) fn set(&self, entry: kvm_irq_routing_entry) -> std::result::Result<(), kvm_ioctls::Error> {
        let mut table = self.table();
        let previous = table.own.insert(entry.gsi, entry);
        self.commit(&table).inspect_err(|_| match previous {
            Some(previous) => {
                table.own.insert(entry.gsi, previous);
            }
            None => {
                table.own.remove(&entry.gsi);
            }
        })
    }

    /// Removes the route of one of barmap's GSIs, commits and frees the GSI.
    pub(super) fn free(&self, gsi: u32) -> std::result::Result<(), kvm_ioctls::Error> {
        let mut table = self.table();
        table.remove(gsi);
        self.commit(&table)
    }

    /// One past the last GSI barmap may allocate.
    pub(super) fn limit(&self) -> u32 {
        self.table().gsis.limit
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `KVM_SET_GSI_ROUTING` with every route in `table`.
    fn commit(&self, table: &Table) -> std::result::Result<(), kvm_ioctls::Error> {
        let routing =
            KvmIrqRouting::from_entries(&table.entries()).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        self.inner.fd.set_gsi_routing(&routing)
    }
}

fn routing_error(gsi: u32, source: kvm_ioctls::Error) -> Error {
    Error::KvmRouting {
        gsi,
        source: std::io::Error::from_raw_os_error(source.errno()),
    }
}

/// An irqchip route of `gsi` to `pin` of `chip`.
fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = chip;
    entry.u.irqchip.pin = pin;
    entry
}

/// KVM's default x86 table (`kvm_setup_default_irq_routing`).
fn x86_defaults() -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::new();
    for gsi in 0..24 {
        if gsi < 8 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    entries
}

/// Numbers `first..limit` handed out one at a time.
#[derive(Debug)]
pub(super) struct Numbers {
    pub(super) first: u32,
    pub(super) limit: u32,
    used: BTreeSet<u32>,
}

impl Numbers {
    pub(super) fn new(range: Range<u32>) -> Numbers {
        Numbers {
            first: range.start,
            limit: range.end,
            used: BTreeSet::new(),
        }
    }

    pub(super) fn alloc(&mut self) -> Option<u32> {
        let n = (self.first..self.limit).find(|n| !self.used.contains(n))?;
        self.used.insert(n);
        Some(n)
    }

    pub(super) fn free(&mut self, n: u32) {
        self.used.remove(&n);
    }
}

/// The table: the VMM's routes (any number per GSI, none in barmap's range)
/// and barmap's (one per GSI it allocated).
struct Table {
    gsis: Numbers,
    vmm: Vec<kvm_irq_routing_entry>,
    own: BTreeMap<u32, kvm_irq_routing_entry>,
}

impl Table {
    fn new(first: u32, limit: u32) -> Table {
        Table {
            gsis: Numbers::new(first..limit),
            vmm: Vec::new(),
            own: BTreeMap::new(),
        }
    }

    fn check_vmm(&self, gsi: u32) -> Result<()> {
        let (first, limit) = (self.gsis.first, self.gsis.limit);
        if (first..limit).contains(&gsi) {
            return Err(Error::KvmGsiReserved { gsi, first, limit });
        }
        Ok(())
    }

    /// Keeps the VMM's `entry`, replacing a route of the VMM's that KVM
    /// would not take beside it; refuses a GSI in barmap's range.
    fn keep(&mut self, entry: kvm_irq_routing_entry) -> Result<()> {
        self.check_vmm(entry.gsi)?;
        self.vmm.retain(|kept| !clash(kept, &entry));
        self.vmm.push(entry);
        Ok(())
    }

    /// Allocates a GSI and stores `entry(gsi)` as its route; `None` if no GSI is free.
    fn add(&mut self, entry: impl FnOnce(u32) -> kvm_irq_routing_entry) -> Option<u32> {
        let gsi = self.gsis.alloc()?;
        self.own.insert(gsi, entry(gsi));
        Some(gsi)
    }

    /// Removes the route of one of barmap's GSIs and frees the GSI.
    fn remove(&mut self, gsi: u32) {
        self.own.remove(&gsi);
        self.gsis.free(gsi);
    }

    /// Every route, the VMM's first.
    fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        self.vmm.iter().chain(self.own.values()).copied().collect()
    }
}

/// Whether KVM refuses `a` and `b` in one table: the same GSI, unless both
/// go to different irqchips (KVM's rule in `setup_routing_entry`).
fn clash(a: &kvm_irq_routing_entry, b: &kvm_irq_routing_entry) -> bool {
    let chip = |e: &kvm_irq_routing_entry| {
        // SAFETY: every member of the union is plain integers, so any bit
        // pattern is a valid `kvm_irq_routing_irqchip`; the value counts only
        // where `type_` says that member is in use.
        let chip = unsafe { e.u.irqchip.irqchip };
        (e.type_ == KVM_IRQ_ROUTING_IRQCHIP).then_some(chip)
    };
    a.gsi == b.gsi
        && match (chip(a), chip(b)) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::{irqchip, x86_defaults, Numbers, Table};
    use crate::error::Error;
    use kvm_bindings::{
        kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
        KVM_IRQ_ROUTING_MSI,
    };

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
    fn summary(table: &Table) -> Vec<(u32, u32, u32)> {
        table
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
        let mut table = Table::new(24, 1024);
        for e in x86_defaults() {
            table.keep(e).unwrap();
        }
        assert_eq!(
            table.entries().len(),
            16 * 2 + 8,
            "two routes for GSIs 0-15, one for 16-23"
        );
        let gsi = |n| {
            summary(&table)
                .into_iter()
                .filter(|e| e.0 == n)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            gsi(4),
            [
                (4, KVM_IRQ_ROUTING_IRQCHIP, 4),
                (4, KVM_IRQ_ROUTING_IRQCHIP, 200 + 4)
            ]
        );
        assert_eq!(
            gsi(9),
            [
                (9, KVM_IRQ_ROUTING_IRQCHIP, 100 + 1),
                (9, KVM_IRQ_ROUTING_IRQCHIP, 200 + 9)
            ]
        );
        assert_eq!(gsi(20), [(20, KVM_IRQ_ROUTING_IRQCHIP, 200 + 20)]);
        // barmap's route goes beside them, not over them.
        let gsi = table.add(|gsi| msi(gsi, 0x40)).unwrap();
        assert_eq!(gsi, 24);
        assert_eq!(table.entries().len(), 41);
    }

    #[test]
    fn routes_keeping_again_replaces_what_kvm_would_refuse_beside_it() {
        let mut table = Table::new(24, 1024);
        table.keep(irqchip(9, KVM_IRQCHIP_PIC_SLAVE, 1)).unwrap();
        table.keep(irqchip(9, KVM_IRQCHIP_IOAPIC, 9)).unwrap();
        // The same chip again: the new pin replaces the old one.
        table.keep(irqchip(9, KVM_IRQCHIP_IOAPIC, 10)).unwrap();
        // The VMM's own MSI route of GSI 20, reprogrammed by the guest.
        table.keep(msi(20, 0x30)).unwrap();
        table.keep(msi(20, 0x31)).unwrap();
        assert_eq!(
            summary(&table),
            [
                (9, KVM_IRQ_ROUTING_IRQCHIP, 100 + 1),
                (9, KVM_IRQ_ROUTING_IRQCHIP, 200 + 10),
                (20, KVM_IRQ_ROUTING_MSI, 0x31),
            ]
        );
        // An MSI route and an irqchip route cannot share a GSI.
        table.keep(msi(9, 0x50)).unwrap();
        assert_eq!(summary(&table)[..1], [(20, KVM_IRQ_ROUTING_MSI, 0x31)]);
        assert_eq!(summary(&table)[1..], [(9, KVM_IRQ_ROUTING_MSI, 0x50)]);
    }

    #[test]
    fn routes_refuse_a_kept_route_in_barmaps_range() {
        let mut table = Table::new(24, 1024);
        let gsi = table.add(|gsi| msi(gsi, 0x40)).unwrap();
        for bad in [24, 25, 1023] {
            match table.keep(msi(bad, 0x99)) {
                Err(Error::KvmGsiReserved { gsi, first, limit }) => {
                    assert_eq!((gsi, first, limit), (bad, 24, 1024))
                }
                other => panic!("keep of GSI {bad}: {other:?}"),
            }
        }
        // The one below barmap's is the VMM's.
        table.keep(msi(23, 0x41)).unwrap();
        // barmap's route is intact, and the next one takes the next GSI.
        assert_eq!(table.add(|gsi| msi(gsi, 0x42)), Some(25));
        assert_eq!(
            summary(&table),
            [
                (23, KVM_IRQ_ROUTING_MSI, 0x41),
                (gsi, KVM_IRQ_ROUTING_MSI, 0x40),
                (25, KVM_IRQ_ROUTING_MSI, 0x42),
            ]
        );
        table.remove(gsi);
        assert_eq!(
            table.add(|gsi| msi(gsi, 0x43)),
            Some(24),
            "a removed route frees its GSI"
        );
    }

    #[test]
    fn numbers_reuse_freed_ones_and_stop_at_the_limit() {
        let mut n = Numbers::new(2..5);
        assert_eq!(
            (n.alloc(), n.alloc(), n.alloc(), n.alloc()),
            (Some(2), Some(3), Some(4), None)
        );
        n.free(3);
        assert_eq!(n.alloc(), Some(3));
    }
}
