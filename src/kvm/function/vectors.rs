//! The function's MSI-X table and PBA accesses, and its MSI and MSI-X
//! vectors following the guest's capability and table.

use std::ops::Range;

use kvm_ioctls::VcpuFd;

use super::interrupts::{Mode, Vectors};
use super::msix::VectorState;
use super::{VirtualFunction, GUEST_PAGE};
use crate::error::{Error, Result};
use crate::kvm::exit::{self, Exit};
use crate::{IrqIndex, RegionIndex};

impl VirtualFunction {
    /// Whether `offset` in memory BAR `i` is in a page of its MSI-X table or PBA.
    pub(super) fn in_msix(&self, i: usize, offset: u64) -> bool {
        let Some(msix) = self.emu.msix.as_ref() else {
            return false;
        };
        let pages = |r: &Range<u64>| {
            r.start & !(GUEST_PAGE - 1) <= offset && offset < r.end.next_multiple_of(GUEST_PAGE)
        };
        (msix.table_bar as usize == i && pages(&msix.table))
            || (msix.pba_bar as usize == i && pages(&msix.pba))
    }

    /// Serves an MSI-X table or PBA access at `offset` of BAR `i`.
    pub(super) fn msix_exit(&mut self, vcpu: &mut VcpuFd, i: usize, offset: u64) -> Result<()> {
        let addr = self.device.address();
        let region = RegionIndex::bar(i as u32).expect("0-5");
        self.collect_pending()?;
        let Ok(Exit::Mmio { data, write, .. }) = exit::read(vcpu, self.vm.run_size()) else {
            return Ok(());
        };
        let width = data.len();
        let refuse = |data: &mut [u8], e: Error| {
            data.fill(0xff);
            Err(e)
        };
        if !matches!(width, 1 | 2 | 4 | 8) {
            return refuse(data, Error::UnsupportedWidth { addr, region, width });
        }
        if !offset.is_multiple_of(width as u64) {
            return refuse(
                data,
                Error::Misaligned {
                    addr,
                    region,
                    offset,
                    width,
                },
            );
        }
        let msix = self.emu.msix.as_mut().expect("in_msix checked");
        let mut word = [0u8; 8];
        word[..width].copy_from_slice(data);
        let value = u64::from_le_bytes(word);
        let in_table_pages = msix.table_bar as usize == i
            && msix.table.start & !(GUEST_PAGE - 1) <= offset
            && offset < msix.table.end.next_multiple_of(GUEST_PAGE);
        let changed = if msix.pba_bar as usize == i && msix.pba.contains(&offset) {
            if !write {
                let at = offset - msix.pba.start;
                data.copy_from_slice(&msix.read_pba(at, width).to_le_bytes()[..width]);
            }
            false
        } else if in_table_pages {
            let count = msix.len();
            // Before the table's first entry, in its page: no entry.
            let at = offset.checked_sub(msix.table.start).ok_or(u64::from(count));
            let done = at.and_then(|at| {
                if write {
                    msix.write_table(at, width, value).map(|n| n.is_some())
                } else {
                    msix.read_table(at, width).map(|v| {
                        data.copy_from_slice(&v.to_le_bytes()[..width]);
                        false
                    })
                }
            });
            match done {
                Ok(changed) => changed,
                Err(entry) => {
                    return refuse(
                        data,
                        Error::IrqVectorOutOfRange {
                            addr,
                            index: IrqIndex::Msix,
                            vector: u32::try_from(entry).unwrap_or(u32::MAX),
                            count,
                        },
                    )
                }
            }
        } else {
            // The rest of a PBA page: reads 0, writes dropped.
            if !write {
                data.fill(0);
            }
            false
        };
        if changed {
            self.sync_msix()?;
        }
        Ok(())
    }

    /// Sets the pending bit of each masked vector that fired.
    pub(super) fn collect_pending(&mut self) -> Result<()> {
        match &self.mode {
            Mode::Msix(vectors) => {
                if let Some(msix) = self.emu.msix.as_mut() {
                    for n in 0..vectors.len() {
                        if msix.state(n) == VectorState::Masked && vectors.fired(n)? {
                            msix.set_pending(n);
                        }
                    }
                }
            }
            Mode::Msi(vectors) => {
                if let Some(msi) = self.emu.msi.as_mut() {
                    for n in 0..vectors.len() {
                        if msi.state(n) == VectorState::Masked && vectors.fired(n)? {
                            msi.set_pending(n);
                        }
                    }
                }
            }
            Mode::None | Mode::Intx(_) => {}
        }
        Ok(())
    }

    /// Makes the device's MSI-X vectors and their routes follow the guest's
    /// capability and table: enabled on the device as the guest enables
    /// them (growing where the kernel allows, all at once where it does
    /// not), routed while unmasked.
    pub(super) fn sync_msix(&mut self) -> Result<()> {
        let Some(msix) = self.emu.msix.as_ref() else {
            return Ok(());
        };
        if !msix.enabled() {
            if matches!(self.mode, Mode::Msix(_)) {
                self.enable_intx_or_none()?;
            }
            return Ok(());
        }
        self.collect_pending()?;
        let msix = self.emu.msix.as_mut().expect("checked above");
        if !matches!(self.mode, Mode::Msix(_)) {
            self.mode = Mode::None;
            let info = self.device.irq_info(IrqIndex::Msix)?;
            let n = if info.flags.noresize() {
                msix.len()
            } else {
                msix.vectors_needed()
            };
            self.mode = Mode::Msix(Vectors::new(&self.device, IrqIndex::Msix, n.min(info.count))?);
        }
        let Mode::Msix(vectors) = &mut self.mode else {
            unreachable!("set above")
        };
        let needed = msix.vectors_needed().min(vectors.capacity());
        if needed > vectors.len() && vectors.can_grow() {
            vectors.grow(needed)?;
        }
        for n in 0..vectors.len() {
            let state = msix.state(n);
            let pending = matches!(state, VectorState::Live(_)) && msix.take_pending(n);
            vectors.apply(&self.vm, n, state, pending)?;
        }
        Ok(())
    }

    /// The same for MSI: the enabled vector count from the capability (the
    /// device's vectors enabled again when it changes).
    pub(super) fn sync_msi(&mut self) -> Result<()> {
        let Some(msi) = self.emu.msi.as_ref() else {
            return Ok(());
        };
        if !msi.enabled() {
            if matches!(self.mode, Mode::Msi(_)) {
                self.enable_intx_or_none()?;
            }
            return Ok(());
        }
        self.collect_pending()?;
        let msi = self.emu.msi.as_mut().expect("checked above");
        let n = msi.vectors();
        if !matches!(&self.mode, Mode::Msi(v) if v.len() >= n) {
            self.mode = Mode::None;
            self.mode = Mode::Msi(Vectors::new(&self.device, IrqIndex::Msi, n)?);
        }
        let Mode::Msi(vectors) = &mut self.mode else {
            unreachable!("set above")
        };
        for n in 0..vectors.len() {
            let state = msi.state(n);
            let pending = matches!(state, VectorState::Live(_)) && msi.take_pending(n);
            vectors.apply(&self.vm, n, state, pending)?;
        }
        Ok(())
    }

    fn enable_intx_or_none(&mut self) -> Result<()> {
        self.mode = Mode::None;
        self.enable_intx()
    }
}
