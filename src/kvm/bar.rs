//! A BAR passed through to a guest: memory slots for its mapped parts, exit
//! dispatch for the rest.

use std::ops::Range;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VcpuExit;

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
/// Dropping it removes the slots; the region (and the device) close with it.
#[derive(Debug)]
pub struct BarPassthrough {
    vm: Vm,
    region: Region,
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
    /// # let vm = Vm::new(&kvm, kvm.create_vm().unwrap(), 1, 24);
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
            region,
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
            bar.set_slot(slot, base, slot.range.end - slot.range.start)
                .inspect_err(|_| {
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
    /// # let vm = barmap::kvm::Vm::new(&kvm, kvm.create_vm().unwrap(), 1, 24);
    /// # let edu = vm.open_device("0000:00:02.0".parse()?)?;
    /// let mut bar0 = barmap::kvm::BarPassthrough::new(&vm, edu.bar(0)?, 0x20000)?;
    /// bar0.move_to(0x4000_0000)?;
    /// assert_eq!(bar0.guest_address(), 0x4000_0000);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn move_to(&mut self, base: u64) -> Result<()> {
        self.check_placement(base)?;
        for (done, slot) in self.slots.iter().enumerate() {
            if let Err(e) = self.set_slot(slot, base, slot.range.end - slot.range.start) {
                for slot in &self.slots[..done] {
                    // The old placement was accepted before: moving back is expected to work.
                    if let Err(back) = self.set_slot(slot, self.base, slot.range.end - slot.range.start) {
                        log::error!("{back}");
                    }
                }
                return Err(e);
            }
        }
        self.base = base;
        Ok(())
    }

    /// Serves `exit` if it is an MMIO exit (memory BAR) or a port I/O exit
    /// (I/O BAR) inside the BAR: the access is made on the device through the
    /// region with the guest's width, a read's value stored in the exit's
    /// data; returns `Ok(true)`. Returns `Ok(false)` for any other exit.
    ///
    /// An access the region refuses (a width other than 1, 2, 4 or 8,
    /// misaligned, read-only region) or that fails on the device returns its
    /// error; a read then gives the guest all-ones, as PCIe does.
    pub fn handle_exit(&self, exit: &mut VcpuExit<'_>) -> Result<bool> {
        match exit {
            VcpuExit::MmioRead(addr, data) if !self.io => self.read(*addr, data),
            VcpuExit::MmioWrite(addr, data) if !self.io => self.write(*addr, data),
            VcpuExit::IoIn(port, data) if self.io => self.read(u64::from(*port), data),
            VcpuExit::IoOut(port, data) if self.io => self.write(u64::from(*port), data),
            _ => Ok(false),
        }
    }

    /// The region offset of the `len`-byte access at guest address `addr`, if it is inside the BAR.
    fn offset(&self, addr: u64, len: usize) -> Option<u64> {
        let offset = addr.checked_sub(self.base)?;
        (offset.checked_add(len as u64)? <= self.region.size()).then_some(offset)
    }

    fn read(&self, addr: u64, data: &mut [u8]) -> Result<bool> {
        let Some(offset) = self.offset(addr, data.len()) else {
            return Ok(false);
        };
        match self.region.read_width(offset, data.len()) {
            Ok(value) => {
                data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
                Ok(true)
            }
            Err(e) => {
                data.fill(0xff);
                Err(e)
            }
        }
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<bool> {
        let Some(offset) = self.offset(addr, data.len()) else {
            return Ok(false);
        };
        let mut word = [0u8; 8];
        let len = data.len().min(8);
        word[..len].copy_from_slice(&data[..len]);
        self.region
            .write_width(offset, data.len(), u64::from_le_bytes(word))
            .map(|()| true)
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
            flags: 0,
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
        for slot in &self.slots {
            match self.set_slot(slot, self.base, 0) {
                Ok(()) => self.vm.free_slot(slot.number),
                // The guest may still reach the mapping through the slot: keep
                // the number taken; the region's unmap still ends the access
                // (KVM's MMU notifier drops the pages).
                Err(e) => log::error!("{e}; memory slot {} stays taken", slot.number),
            }
        }
    }
}
