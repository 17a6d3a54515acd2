//! A BAR passed through to a guest: memory slots for its mapped parts, exit
//! dispatch for the rest.

use std::mem::ManuallyDrop;
use std::ops::Range;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VcpuFd;

use super::exit::{self, serve, Exit};
use super::vm::{kvm_error, Vm};
use crate::config::BarKind;
use crate::error::{Error, Result};
use crate::Region;

/// Guest pages are 4 KiB: slots and guest addresses are aligned to them.
const GUEST_PAGE: u64 = 0x1000;

/// One past the last I/O port.
const PORT_SPACE: u64 = 0x1_0000;

/// One KVM memory slot: a directly mapped range of the region.
#[derive(Debug)]
struct Slot {
    number: u32,
    range: Range<u64>,
}

impl Slot {
    /// The slot's size: the range in whole pages. Only a range that ends at
    /// the region's end can end inside a page, and its mapping covers that
    /// whole page (vfio-pci maps a BAR smaller than a page as a page).
    fn len(&self) -> u64 {
        self.range.end.next_multiple_of(GUEST_PAGE) - self.range.start
    }
}

/// One BAR of a device placed in a guest's physical address space (or, for
/// an I/O BAR, its port space).
///
/// Each directly mapped range of the region is a KVM memory slot: the guest
/// reaches it with no exit. Everything else in the BAR (holes, pages trapped
/// with [`MapPolicy::Trap`](crate::MapPolicy::Trap) or
/// [`MapPolicy::TrapAll`](crate::MapPolicy::TrapAll), a whole I/O BAR) makes
/// the vCPU exit, and [`BarPassthrough::handle_exit`] serves the exit through
/// the region's slow path (`pread`/`pwrite` of the guest's width) and its
/// access hook: a trapped page is one exit and one device access per guest
/// access.
///
/// A region that is not writable becomes read-only slots
/// (`KVM_MEM_READONLY`): guest writes to them exit as MMIO, and
/// [`BarPassthrough::handle_exit`] refuses them with [`Error::ReadOnly`],
/// as the region's typed accesses do (the write is dropped).
///
/// A memory BAR smaller than a page is mapped as its whole page, and its
/// slot is that page: the guest reaches the rest of the page, past the
/// BAR's end, without an exit. vfio-pci maps such a BAR only if it starts a
/// page, and it reserves the rest of the page on the host (a resource named
/// "vfio sub-page reserved"), so no other device is placed there: the guest
/// reaches address space no device decodes (on PCIe, reads return all-ones
/// and writes are dropped; the BAR does not repeat there). The guest page is
/// taken whole too: the VMM must place nothing else in it.
///
/// Dropping it removes the slots; the region (and the device) close with it.
/// If KVM refuses to delete a slot, the region (its mapping and device) is
/// leaked rather than unmapped while a slot still points at it: the guest
/// could otherwise reach whatever is mapped at that address later.
#[derive(Debug)]
pub struct BarPassthrough {
    vm: Vm,
    /// Dropped in `Drop` once no slot points at its mapping, leaked otherwise.
    region: ManuallyDrop<Region>,
    io: bool,
    base: u64,
    slots: Vec<Slot>,
}

impl BarPassthrough {
    /// Places `region` in the guest at `base`: a guest-physical address for a
    /// memory BAR, a port number for an I/O BAR (what
    /// [`Device::bar_kind`](crate::Device::bar_kind) says it is). Each mapped
    /// range becomes a memory slot (`KVM_SET_USER_MEMORY_REGION`) with a free
    /// slot number of `vm`.
    ///
    /// Errors: [`Error::GuestPlacement`] if `base` is not page-aligned or the
    /// BAR does not fit there, [`Error::KvmNoFreeSlot`], [`Error::Kvm`] if
    /// KVM refuses a slot (e.g. it overlaps another one).
    ///
    /// ```no_run
    /// use barmap::kvm::{BarPassthrough, Vm};
    /// use barmap::{MapPolicy, RegionIndex};
    /// # let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// # let vm = barmap::kvm::Vm::new(&kvm, barmap::kvm::GsiRoutes::new(std::sync::Arc::new(kvm.create_vm().unwrap()), 24..1024), 1..32);
    /// let edu = vm.open_device("0000:00:02.0".parse()?)?;
    /// // BAR0 at 0x20000, its first page exiting on every access.
    /// let bar0 = edu.region(RegionIndex::bar(0).unwrap(), MapPolicy::trap_range(0..0x1000))?;
    /// let bar0 = BarPassthrough::new(&vm, bar0, 0x20000)?;
    /// assert_eq!(bar0.slots().len(), 1);
    /// let testdev = vm.open_device("0000:00:03.0".parse()?)?;
    /// let ports = BarPassthrough::new(&vm, testdev.bar(1)?, 0x1000)?; // ports 0x1000..0x1100
    /// assert!(ports.is_io() && ports.slots().is_empty());
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn new(vm: &Vm, region: Region, base: u64) -> Result<BarPassthrough> {
        let io = region
            .info()
            .index
            .bar_number()
            .and_then(|n| region.device()?.bar_kind(n))
            == Some(BarKind::Io);
        let mut bar = BarPassthrough {
            vm: vm.clone(),
            region: ManuallyDrop::new(region),
            io,
            base,
            slots: Vec::new(),
        };
        bar.check_placement(base)?;
        let ranges = bar.region.mapped_ranges().to_vec();
        for range in ranges {
            let number = bar.vm.alloc_slot().ok_or_else(|| {
                let (first, limit) = bar.vm.slot_span();
                Error::KvmNoFreeSlot {
                    addr: bar.region.address(),
                    region: bar.region.info().index,
                    first,
                    limit,
                }
            })?;
            // Pushed first, so that a failure drops `bar` and frees the number.
            bar.slots.push(Slot { number, range });
            let slot = bar.slots.last().expect("pushed above");
            bar.set_slot(slot, base, slot.len()).inspect_err(|_| {
                bar.slots
                    .pop()
                    .into_iter()
                    .for_each(|s| bar.vm.free_slot(s.number))
            })?;
        }
        Ok(bar)
    }

    /// The region passed through.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Where the BAR is in the guest: a guest-physical address, or a port for an I/O BAR.
    pub fn guest_address(&self) -> u64 {
        self.base
    }

    /// Whether the BAR is an I/O BAR, served on `KVM_EXIT_IO`.
    pub fn is_io(&self) -> bool {
        self.io
    }

    /// The memory slot numbers in use, one per mapped range.
    pub fn slots(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.number).collect()
    }

    /// Moves the BAR to `base`, as a guest that reprograms the BAR register
    /// asks: each slot is moved in place (`KVM_SET_USER_MEMORY_REGION` with
    /// the same slot and host range, `KVM_MR_MOVE`), and exits are then
    /// matched at the new address. On an error, slots already moved are moved
    /// back.
    ///
    /// ```no_run
    /// # let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// # let vm = barmap::kvm::Vm::new(&kvm, barmap::kvm::GsiRoutes::new(std::sync::Arc::new(kvm.create_vm().unwrap()), 24..1024), 1..32);
    /// # let edu = vm.open_device("0000:00:02.0".parse()?)?;
    /// let mut bar0 = barmap::kvm::BarPassthrough::new(&vm, edu.bar(0)?, 0x20000)?;
    /// bar0.move_to(0x4000_0000)?;
    /// assert_eq!(bar0.guest_address(), 0x4000_0000);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn move_to(&mut self, base: u64) -> Result<()> {
        self.check_placement(base)?;
        for (done, slot) in self.slots.iter().enumerate() {
            if let Err(e) = self.set_slot(slot, base, slot.len()) {
                for slot in &self.slots[..done] {
                    // The old placement was accepted before: moving back is expected to work.
                    if let Err(back) = self.set_slot(slot, self.base, slot.len()) {
                        log::error!("{back}");
                    }
                }
                return Err(e);
            }
        }
        self.base = base;
        Ok(())
    }

    /// Serves the exit `vcpu` just returned from `KVM_RUN` if it is an MMIO
    /// exit (memory BAR) or a port I/O exit (I/O BAR) inside the BAR, and
    /// returns `Ok(true)`; returns `Ok(false)` for any other exit. Each access
    /// is made on the device through the region with the guest's width, a
    /// read's value stored in the exit's data for the guest to pick up when
    /// it resumes.
    ///
    /// String port I/O (`rep ins`/`rep outs`), which KVM batches into one
    /// exit of up to 1,024 elements, is one device access per element, each
    /// of the element's width and all at the same port, as the instruction
    /// does. An access must lie inside the BAR whole, or the exit is not the
    /// BAR's (`Ok(false)`).
    ///
    /// The exit is read from the vCPU's `kvm_run`, since kvm-ioctls'
    /// `VcpuExit::IoIn`/`IoOut` do not say the element size. So call this
    /// after `vcpu.run()` with the `VcpuExit` no longer borrowed, e.g. in the
    /// arm of your exit `match` that takes the MMIO and port I/O exits you do
    /// not serve yourself:
    ///
    /// ```no_run
    /// use kvm_ioctls::VcpuExit;
    /// # let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// # let vm = barmap::kvm::Vm::new(&kvm, barmap::kvm::GsiRoutes::new(std::sync::Arc::new(kvm.create_vm().unwrap()), 24..1024), 1..32);
    /// # let testdev = vm.open_device("0000:00:03.0".parse()?)?;
    /// let ports = barmap::kvm::BarPassthrough::new(&vm, testdev.bar(1)?, 0x1000)?;
    /// let mut vcpu = vm.fd().create_vcpu(0).unwrap();
    /// loop {
    ///     match vcpu.run().unwrap() {
    ///         VcpuExit::Hlt => break,
    ///         VcpuExit::IoOut(0x3f8, data) => print!("{}", String::from_utf8_lossy(data)),
    ///         VcpuExit::IoIn(..) | VcpuExit::IoOut(..) | VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => {
    ///             if !ports.handle_exit(&mut vcpu)? {
    ///                 // nobody's: a real VMM gives reads all-ones
    ///             }
    ///         }
    ///         other => println!("{other:?}"),
    ///     }
    /// }
    /// # Ok::<(), barmap::Error>(())
    /// ```
    ///
    /// An access the region refuses (a width other than 1, 2, 4 or 8,
    /// misaligned, a write to a read-only region) or that fails on the device
    /// returns its error; the exit is then complete: reads from that element
    /// on give the guest all-ones, as PCIe does, and writes from it on are
    /// dropped. [`Error::Kvm`] if `kvm_run` holds a malformed port I/O exit.
    pub fn handle_exit(&self, vcpu: &mut VcpuFd) -> Result<bool> {
        let exit = exit::read(vcpu, self.vm.run_size())
            .map_err(|step| kvm_error(self.region.address(), step, kvm_ioctls::Error::new(libc::EINVAL)))?;
        let (addr, size, data, write) = match exit {
            Exit::Mmio { addr, data, write } if !self.io => (addr, data.len(), data, write),
            Exit::Io {
                port,
                size,
                data,
                write,
            } if self.io => (u64::from(port), size, data, write),
            _ => return Ok(false),
        };
        let Some(offset) = self.offset(addr, size) else {
            return Ok(false);
        };
        serve(&self.region, offset, size, data, write).map(|()| true)
    }

    /// The region offset of the `len`-byte access at guest address `addr`, if it is inside the BAR.
    fn offset(&self, addr: u64, len: usize) -> Option<u64> {
        let offset = addr.checked_sub(self.base)?;
        (offset.checked_add(len as u64)? <= self.region.size()).then_some(offset)
    }

    /// Checks that the BAR can sit at `base`: page-aligned for a memory BAR,
    /// inside the port space for an I/O BAR, and not wrapping around.
    fn check_placement(&self, base: u64) -> Result<()> {
        let size = self.region.size();
        let reason = if self.io {
            (base.checked_add(size).is_none_or(|end| end > PORT_SPACE))
                .then_some("the I/O BAR does not fit in the 64 KiB port space")
        } else if !base.is_multiple_of(GUEST_PAGE) {
            Some("a memory BAR's guest address must be page-aligned (4 KiB)")
        } else {
            base.checked_add(size.next_multiple_of(GUEST_PAGE))
                .is_none()
                .then_some("the BAR would end past the top of the guest address space")
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(Error::GuestPlacement {
                addr: self.region.address(),
                region: self.region.info().index,
                base,
                reason,
            }),
        }
    }

    /// `KVM_SET_USER_MEMORY_REGION` of `slot` at `base` with `size` bytes (0 deletes it).
    fn set_slot(&self, slot: &Slot, base: u64, size: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot: slot.number,
            flags: if self.region.info().flags.writable() {
                0
            } else {
                KVM_MEM_READONLY
            },
            guest_phys_addr: base + slot.range.start,
            memory_size: size,
            userspace_addr: (self.region.mapping_address() as u64) + slot.range.start,
        };
        // SAFETY: the host range is a directly mapped range of `self.region`: a
        // live MAP_SHARED device mapping, page-aligned, that `self` owns and keeps
        // until `Drop` has deleted the slot. The guest's accesses to it go to the
        // device; no Rust reference to it exists.
        unsafe { self.vm.fd().set_user_memory_region(region) }
            .map_err(|e| kvm_error(self.region.address(), "set a user memory region for a BAR", e))
    }
}

impl Drop for BarPassthrough {
    fn drop(&mut self) {
        // SAFETY: `self.region` is taken once, here, and not used afterwards.
        let region = unsafe { ManuallyDrop::take(&mut self.region) };
        release(
            region,
            &self.slots,
            |slot| self.set_slot(slot, self.base, 0),
            |number| self.vm.free_slot(number),
        );
    }
}

/// Deletes every slot with `delete` and frees the numbers of those deleted
/// with `free`, then drops `region`; if a slot stays (its delete failed), its
/// number stays taken and `region` is leaked instead, so that no slot ever
/// points at a range that is unmapped and maybe mapped again for something
/// else. Returns whether every slot went.
fn release(
    region: Region,
    slots: &[Slot],
    mut delete: impl FnMut(&Slot) -> Result<()>,
    mut free: impl FnMut(u32),
) -> bool {
    let mut stays = Vec::new();
    for slot in slots {
        match delete(slot) {
            Ok(()) => free(slot.number),
            Err(e) => {
                log::error!("{e}");
                stays.push(slot.number);
            }
        }
    }
    if stays.is_empty() {
        return true;
    }
    log::error!(
        "{} {}: memory slots {stays:?} could not be deleted: leaking the region's mapping and device so that the slots never point at unmapped memory",
        region.address(),
        region.info().index
    );
    std::mem::forget(region);
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{release, Slot};
    use crate::error::Error;
    use crate::region::{MemoryRegion, SparseArea};
    use crate::{Region, RegionIndex};

    #[test]
    fn release_leaks_the_region_while_a_slot_stays() {
        let memfd = tempfile::tempfile().unwrap();
        memfd.set_len(0x2000).unwrap();
        let region = Region::builder(
            "0000:00:04.0".parse().unwrap(),
            RegionIndex::bar(0).unwrap(),
            Arc::new(MemoryRegion::new(vec![0; 0x2000])),
        )
        .map_from(
            &memfd,
            0,
            &[SparseArea {
                offset: 0,
                size: 0x2000,
            }],
        )
        .build()
        .unwrap();
        region.write::<u32>(0x1000, 0x1234_5678).unwrap();
        let base = region.mapping_address();
        let slots = [
            Slot {
                number: 3,
                range: 0..0x1000,
            },
            Slot {
                number: 4,
                range: 0x1000..0x2000,
            },
            Slot {
                number: 5,
                range: 0x2000..0x2000,
            },
        ];
        let mut tried = Vec::new();
        let mut freed = Vec::new();
        let all = release(
            region,
            &slots,
            |slot| {
                tried.push(slot.number);
                match slot.number {
                    4 => Err(Error::Kvm {
                        addr: "0000:00:04.0".parse().unwrap(),
                        step: "delete a memory slot",
                        source: std::io::Error::from_raw_os_error(libc::ENOMEM),
                    }),
                    _ => Ok(()),
                }
            },
            |number| freed.push(number),
        );
        assert!(!all);
        assert_eq!(tried, [3, 4, 5], "every slot is tried");
        assert_eq!(freed, [3, 5], "the slot that stays keeps its number");
        // The mapping slot 4 points at is still there, with the device's data.
        // SAFETY: msync only asks the kernel about the range.
        let mapped = unsafe { libc::msync(base as *mut libc::c_void, 0x2000, libc::MS_ASYNC) };
        assert_eq!(mapped, 0, "msync: {}", std::io::Error::last_os_error());
        // SAFETY: the range is mapped (just checked) and leaked, so it stays.
        let value = unsafe { ((base + 0x1000) as *const u32).read_volatile() };
        assert_eq!(value, 0x1234_5678);
    }

    #[test]
    fn release_drops_the_region_when_every_slot_goes() {
        let region = Region::builder(
            "0000:00:04.0".parse().unwrap(),
            RegionIndex::bar(0).unwrap(),
            Arc::new(MemoryRegion::new(vec![0; 0x100])),
        )
        .build()
        .unwrap();
        let slots = [Slot {
            number: 7,
            range: 0..0x100,
        }];
        let mut freed = Vec::new();
        assert!(release(region, &slots, |_| Ok(()), |n| freed.push(n)));
        assert_eq!(freed, [7]);
    }

    #[test]
    fn a_sub_page_slot_is_its_whole_page() {
        let sub_page = Slot {
            number: 1,
            range: 0..0x100,
        };
        let tail = Slot {
            number: 2,
            range: 0x3000..0x3800,
        };
        let whole = Slot {
            number: 3,
            range: 0x1000..0x3000,
        };
        assert_eq!(
            (sub_page.len(), tail.len(), whole.len()),
            (0x1000, 0x1000, 0x2000)
        );
    }
}
