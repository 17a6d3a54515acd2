//! Register-block pointers from a region: bounds, alignment and permissions
//! checked once, here.

use std::mem::{align_of, size_of};
use std::ptr::NonNull;

use super::ptr::{SharedMmioPtr, UniqueMmioPtr};
use crate::error::{Error, Result};
use crate::Region;

impl Region {
    /// A unique pointer to the register block `B` at `offset`, for all of its
    /// registers' accesses (see [`crate::mmio`]). It borrows the region
    /// mutably, so while it lives no other access goes through this handle.
    ///
    /// Checked once, here: `offset..offset + size_of::<B>()` lies in the
    /// region ([`Error::OutOfRange`]), the address is aligned for `B`
    /// ([`Error::Misaligned`], with `B`'s alignment as the width), and the
    /// region allows reads ([`Error::NotReadable`]) and writes
    /// ([`Error::ReadOnly`]; use [`Region::shared_block`] on a read-only
    /// region). Off x86-64, a region with unmapped pages gives
    /// [`Error::Unsupported`], as [`Region::as_ptr`] does.
    pub fn block<B>(&mut self, offset: u64) -> Result<UniqueMmioPtr<'_, B>> {
        if !self.info().flags.writable() {
            return Err(Error::ReadOnly {
                addr: self.address(),
                region: self.index(),
            });
        }
        let ptr = self.block_ptr::<B>(offset)?;
        // SAFETY: `block_ptr` checked that the block lies, aligned, in this
        // readable region, and the region is writable; the mutable borrow keeps
        // it live and unreached through this handle for the pointer's lifetime.
        Ok(unsafe { UniqueMmioPtr::new(ptr) })
    }

    /// A shared pointer to the register block `B` at `offset`, for pure reads
    /// only ([`crate::mmio::ReadPure`], [`crate::mmio::ReadPureWrite`]).
    /// Checked as in [`Region::block`], except that the region need not allow
    /// writes.
    pub fn shared_block<B>(&self, offset: u64) -> Result<SharedMmioPtr<'_, B>> {
        let ptr = self.block_ptr::<B>(offset)?;
        // SAFETY: `block_ptr` checked that the block lies, aligned, in this
        // readable region, which the borrow keeps live.
        Ok(unsafe { SharedMmioPtr::new(ptr) })
    }

    /// The address of a `B` at `offset`, checked for bounds, alignment and
    /// readability.
    fn block_ptr<B>(&self, offset: u64) -> Result<NonNull<B>> {
        let (addr, region, size) = (self.address(), self.index(), self.size());
        let len = size_of::<B>() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                addr,
                region,
                offset,
                len,
                size,
            });
        }
        if !self.info().flags.readable() {
            return Err(Error::NotReadable { addr, region });
        }
        let base = self.as_mut_ptr()?;
        if !(base as usize)
            .wrapping_add(offset as usize)
            .is_multiple_of(align_of::<B>())
        {
            return Err(Error::Misaligned {
                addr,
                region,
                offset,
                width: align_of::<B>(),
            });
        }
        // SAFETY: offset + size_of::<B>() <= size, the length of the range
        // `base` starts, so the result stays inside it; that range is a mapping
        // the kernel placed, never at address 0, so the result is not null.
        Ok(unsafe { NonNull::new_unchecked(base.add(offset as usize).cast()) })
    }
}
