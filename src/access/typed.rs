//! Typed, checked accesses of a [`Region`]: one scalar (inlined where the
//! region is fully mapped, else one `pread`/`pwrite` of the same width), a
//! runtime width, and byte runs; and the checks they share.

use std::io;
use std::sync::atomic::{compiler_fence, Ordering};

use super::scalar::{load, store, Scalar};
use super::window::Limits;
use super::Region;
use crate::error::{Error, Result};
use crate::region::{pread_exact, pwrite_all};
use crate::shadow::{Access, AccessKind};

impl Region {
    /// Reads one `T` at `offset`.
    ///
    /// On a fully mapped region this is a bounds and alignment check and one
    /// volatile load, inlined; anything else (holes, slow path, errors) goes
    /// out of line.
    ///
    /// While vfio-pci has revoked the mapping (memory decoding off, a reset
    /// in progress), the load faults and is served by the fault handler with
    /// `pread`, which waits out a reset. On a page that is not mapped, the
    /// read is a `pread`. Either way, if the device refuses it, `read`
    /// returns [`Error::Refused`] (see
    /// [refused accesses](Region#refused-accesses)).
    #[inline]
    pub fn read<T: Scalar>(&self, offset: u64) -> Result<T> {
        match self.fast.at(offset, T::WIDTH, self.fast.read_end) {
            Some(at) => {
                // SAFETY: the fast window covers only a whole, live MAP_SHARED mapping
                // owned by self, and `at` checked bounds and natural alignment.
                let value = unsafe { load::<T>(self.fast.base(), at) };
                if value == T::ALL_ONES {
                    return self.check_refused(value);
                }
                Ok(value)
            }
            None => {
                std::hint::cold_path();
                self.read_slow(offset)
            }
        }
    }

    /// `value` (all-ones), or [`Error::Refused`] if the device refused
    /// accesses since the record was last taken.
    #[cold]
    #[inline(never)]
    fn check_refused<T>(&self, value: T) -> Result<T> {
        match self.take_error() {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }

    /// The test after accesses to the mapping whose values say nothing (a
    /// store, a bulk run; a refused one faulted and the fault handler
    /// recorded it): `Ok`, or [`Error::Refused`] with the record. One load of
    /// the count while nothing was refused.
    #[inline(always)]
    pub(super) fn no_refusals(&self) -> Result<()> {
        // The fault handler raises the count inside the accesses before this
        // (a signal on this thread), which the compiler cannot see through
        // `asm!` loads marked `readonly`: keep the load after them. No
        // instruction is emitted.
        compiler_fence(Ordering::SeqCst);
        if self.refusals.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        self.check_refused(())
    }

    /// Writes one `T` at `offset`: on a fully mapped region, one volatile
    /// store, then one load of the region's count of refused accesses.
    ///
    /// A write the device refused (dropped while the mapping is revoked, or
    /// a `pwrite` failing with `EIO`) returns [`Error::Refused`], as every
    /// typed access does (see [refused accesses](Region#refused-accesses)).
    #[inline]
    pub fn write<T: Scalar>(&self, offset: u64, value: T) -> Result<()> {
        match self.fast.at(offset, T::WIDTH, self.fast.write_end) {
            Some(at) => {
                // SAFETY: as in `read`.
                unsafe { store::<T>(self.fast.base(), at, value) };
                self.no_refusals()
            }
            None => {
                std::hint::cold_path();
                self.write_slow(offset, value)
            }
        }
    }

    /// Everything [`Region::read`] does not inline. On a region with nothing
    /// mapped (where this is the common case, so it is not marked cold), an
    /// access inside its syscall window is one `pread` and nothing else;
    /// the rest goes on to `read_general`.
    #[inline(never)]
    fn read_slow<T: Scalar>(&self, offset: u64) -> Result<T> {
        let window = &self.syscall;
        if !Limits::allows(offset, T::WIDTH, window.read_end) {
            return self.read_general(offset);
        }
        let mut word = [0u8; 8];
        match pread_exact(window.fd, window.position(offset), &mut word[..T::WIDTH]) {
            Ok(()) => Ok(T::from_le_word(word)),
            Err(e) => Err(self.access_error(offset, T::WIDTH, e)),
        }
    }

    /// The checked slow path of a read: refusals, mapped parts of a region
    /// that is not fully mapped, any [`crate::region::RegionIo`], and the
    /// hook and trace.
    #[inline(never)]
    fn read_general<T: Scalar>(&self, offset: u64) -> Result<T> {
        if !Limits::allows(offset, T::WIDTH, self.limits.read_end) {
            return Err(self.refusal(offset, T::WIDTH, AccessKind::Read));
        }
        if let Some(ptr) = self.mapped_ptr(offset, T::WIDTH) {
            // SAFETY: `mapped_ptr` returns a pointer only for an in-bounds range of a
            // live MAP_SHARED mapping owned by self; `allows` ensured natural alignment.
            let value = unsafe { load::<T>(ptr, 0) };
            if value == T::ALL_ONES {
                return self.check_refused(value);
            }
            return Ok(value);
        }
        let mut word = [0u8; 8];
        if let Err(e) = self.io.read_inside(offset, &mut word[..T::WIDTH]) {
            return Err(self.access_error(offset, T::WIDTH, e));
        }
        let value = T::from_le_word(word);
        if self.observed {
            self.record(offset, T::WIDTH, value.to_u64(), AccessKind::Read);
        }
        Ok(value)
    }

    /// Everything [`Region::write`] does not inline, as in `read_slow`.
    #[inline(never)]
    fn write_slow<T: Scalar>(&self, offset: u64, value: T) -> Result<()> {
        let window = &self.syscall;
        if !Limits::allows(offset, T::WIDTH, window.write_end) {
            return self.write_general(offset, value);
        }
        let word = value.to_le_word();
        match pwrite_all(window.fd, window.position(offset), &word[..T::WIDTH]) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.access_error(offset, T::WIDTH, e)),
        }
    }

    /// The checked slow path of a write, as `read_general`.
    #[inline(never)]
    fn write_general<T: Scalar>(&self, offset: u64, value: T) -> Result<()> {
        if !Limits::allows(offset, T::WIDTH, self.limits.write_end) {
            return Err(self.refusal(offset, T::WIDTH, AccessKind::Write));
        }
        if let Some(ptr) = self.mapped_ptr(offset, T::WIDTH) {
            // SAFETY: as in `read_general`.
            unsafe { store::<T>(ptr, 0, value) };
            return self.no_refusals();
        }
        let word = value.to_le_word();
        if let Err(e) = self.io.write_inside(offset, &word[..T::WIDTH]) {
            return Err(self.access_error(offset, T::WIDTH, e));
        }
        if self.observed {
            self.record(offset, T::WIDTH, value.to_u64(), AccessKind::Write);
        }
        Ok(())
    }

    /// Tells the hook and the trace about a typed access that took the slow
    /// path (the caller checked that they watch).
    #[cold]
    #[inline(never)]
    fn record(&self, offset: u64, width: usize, value: u64, kind: AccessKind) {
        self.mapping.record(&Access::new(offset, width, value, kind));
    }

    /// Reads one access of `width` bytes (1, 2, 4 or 8) at `offset`, zero-extended:
    /// the runtime-width form of [`Region::read`], for tools that take the width as input.
    pub fn read_width(&self, offset: u64, width: usize) -> Result<u64> {
        match width {
            1 => self.read::<u8>(offset).map(u64::from),
            2 => self.read::<u16>(offset).map(u64::from),
            4 => self.read::<u32>(offset).map(u64::from),
            8 => self.read::<u64>(offset),
            _ => Err(self.unsupported_width(width)),
        }
    }

    /// Writes the low `width` bytes (1, 2, 4 or 8) of `value` at `offset` as one
    /// access; a value that does not fit in `width` bytes is refused.
    pub fn write_width(&self, offset: u64, width: usize, value: u64) -> Result<()> {
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(self.unsupported_width(width));
        }
        if width < 8 && value >> (8 * width) != 0 {
            return Err(Error::ValueTooWide {
                addr: self.addr,
                region: self.info.index,
                value,
                width,
            });
        }
        match width {
            1 => self.write::<u8>(offset, value as u8),
            2 => self.write::<u16>(offset, value as u16),
            4 => self.write::<u32>(offset, value as u32),
            _ => self.write::<u64>(offset, value),
        }
    }

    /// Reads `buf.len()` bytes from `offset`, as a run of naturally aligned
    /// 4-, 2- and 1-byte accesses (never a wider or unaligned one, and never a
    /// `memcpy`, which could use any width on the bus). It stops at the
    /// first access the device refuses, with [`Error::Refused`].
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64, AccessKind::Read)?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let width = chunk_width(at, buf.len() - pos);
            let word = match width {
                4 => self.read::<u32>(at)?.to_le_word(),
                2 => self.read::<u16>(at)?.to_le_word(),
                _ => self.read::<u8>(at)?.to_le_word(),
            };
            buf[pos..pos + width].copy_from_slice(&word[..width]);
            pos += width;
        }
        Ok(())
    }

    /// Writes `data` at `offset`, as a run of naturally aligned 4-, 2- and
    /// 1-byte accesses. It stops at the first access the device refuses,
    /// with [`Error::Refused`].
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64, AccessKind::Write)?;
        let mut pos = 0usize;
        while pos < data.len() {
            let at = offset + pos as u64;
            let width = chunk_width(at, data.len() - pos);
            let mut word = [0u8; 8];
            word[..width].copy_from_slice(&data[pos..pos + width]);
            match width {
                4 => self.write::<u32>(at, u32::from_le_word(word))?,
                2 => self.write::<u16>(at, u16::from_le_word(word))?,
                _ => self.write::<u8>(at, u8::from_le_word(word))?,
            }
            pos += width;
        }
        Ok(())
    }

    /// Checks one access of `width` bytes at `offset` exactly as
    /// [`Region::read`] and [`Region::write`] do (width 1, 2, 4 or 8, inside
    /// the region, naturally aligned, allowed by the region's flags), for
    /// callers that then make the access themselves through [`Region::as_ptr`].
    ///
    /// ```no_run
    /// use barmap::shadow::AccessKind;
    /// let testdev = barmap::Device::open("0000:00:03.0".parse()?)?;
    /// let io = testdev.bar(1)?;
    /// io.check_access(4, 4, AccessKind::Read)?;
    /// // SAFETY: just checked: inside the BAR and 4-byte aligned.
    /// let offset = unsafe { io.as_ptr()?.add(4).cast::<u32>().read_volatile() };
    /// # let _ = offset;
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn check_access(&self, offset: u64, width: usize, kind: AccessKind) -> Result<()> {
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(self.unsupported_width(width));
        }
        self.check(offset, width, kind)
    }

    /// Bounds, alignment and permission checks of one access.
    #[inline(always)]
    fn check(&self, offset: u64, width: usize, kind: AccessKind) -> Result<()> {
        let end = match kind {
            AccessKind::Read => self.limits.read_end,
            AccessKind::Write => self.limits.write_end,
        };
        if Limits::allows(offset, width, end) {
            return Ok(());
        }
        Err(self.refusal(offset, width, kind))
    }

    /// The error for an access of `width` bytes at `offset` that the
    /// region's limits refused: out of range, not allowed by the flags, or
    /// (inside and allowed, so the one rule left) misaligned.
    #[cold]
    #[inline(never)]
    fn refusal(&self, offset: u64, width: usize, kind: AccessKind) -> Error {
        if let Err(error) = self.check_range(offset, width as u64, kind) {
            return error;
        }
        Error::Misaligned {
            addr: self.addr,
            region: self.info.index,
            offset,
            width,
        }
    }

    #[inline(always)]
    pub(super) fn check_range(&self, offset: u64, len: u64, kind: AccessKind) -> Result<()> {
        let (addr, region) = (self.addr, self.info.index);
        if offset.checked_add(len).is_none_or(|end| end > self.info.size) {
            return Err(Error::OutOfRange {
                addr,
                region,
                offset,
                len,
                size: self.info.size,
            });
        }
        match kind {
            AccessKind::Read if !self.info.flags.readable() => Err(Error::NotReadable { addr, region }),
            AccessKind::Write if !self.info.flags.writable() => Err(Error::ReadOnly { addr, region }),
            _ => Ok(()),
        }
    }

    /// A pointer to `offset` if `offset..offset + width` is directly mapped
    /// (a whole mapping is one range; a region without one has none, and
    /// this is one test).
    #[inline(always)]
    fn mapped_ptr(&self, offset: u64, width: usize) -> Option<*mut u8> {
        let end = offset + width as u64;
        let inside = self
            .mapping
            .mapped()
            .iter()
            .any(|r| r.start <= offset && end <= r.end);
        // SAFETY: offset + width <= size <= the reservation's length, checked by
        // the caller, so the result stays inside the reservation.
        inside.then(|| unsafe { self.mapping.base().add(offset as usize) })
    }

    fn unsupported_width(&self, width: usize) -> Error {
        Error::UnsupportedWidth {
            addr: self.addr,
            region: self.info.index,
            width,
        }
    }

    /// The error for a slow-path access of `len` bytes at `offset` that
    /// failed with `source`: [`Error::Refused`] if the device refused it
    /// (`EIO`, as the fault handler takes it), counting it and the refusals
    /// recorded before it; else [`Error::Io`].
    #[cold]
    #[inline(never)]
    fn access_error(&self, offset: u64, len: usize, source: io::Error) -> Error {
        if source.raw_os_error() != Some(libc::EIO) {
            return self.io_error(offset, len, source);
        }
        let earlier = self.mapping.take_refused().map_or(0, |(count, _)| count);
        Error::Refused {
            addr: self.addr,
            region: self.info.index,
            count: earlier + 1,
            source,
        }
    }

    fn io_error(&self, offset: u64, len: usize, source: io::Error) -> Error {
        Error::Io {
            addr: self.addr,
            region: self.info.index,
            offset,
            len: len as u64,
            source,
        }
    }
}

/// The widest naturally aligned access of at most 4 bytes that fits at `at` with `left` bytes to go.
fn chunk_width(at: u64, left: usize) -> usize {
    [4usize, 2, 1]
        .into_iter()
        .find(|w| at.is_multiple_of(*w as u64) && left >= *w)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::chunk_width;

    #[test]
    fn chunks_are_aligned_and_at_most_four_bytes() {
        assert_eq!(chunk_width(0, 16), 4);
        assert_eq!(chunk_width(0, 3), 2);
        assert_eq!(chunk_width(2, 16), 2);
        assert_eq!(chunk_width(1, 16), 1);
        assert_eq!(chunk_width(4, 1), 1);
    }
}
