//! Bulk transfers of one explicit width: a run of scalar accesses checked
//! once for the whole range.

use super::region::Region;
use super::scalar::{load, store, Scalar};
use crate::error::{Error, Result};
use crate::shadow::AccessKind;

/// Elements per step of the mapped loops. The accesses stay one per element,
/// in ascending order; unrolling only spares loop overhead, which LLVM does
/// not do on its own around `asm!` (a 4-way unroll took the 64 MiB read in the
/// TCG guest from 0.80x to the raw `read_volatile` loop's speed).
const UNROLL: usize = 4;

/// Loads `values.len()` consecutive `T`s from `base + at` into `values`, one
/// pinned load each, in ascending order.
///
/// # Safety
/// `base + at .. base + at + size_of_val(values)` must be readable device
/// memory (or memory valid for volatile reads), and `base + at` aligned for `T`.
#[inline(always)]
unsafe fn load_run<T: Scalar>(base: *const u8, at: usize, values: &mut [T]) {
    let (chunks, rest) = values.as_chunks_mut::<UNROLL>();
    let mut offset = at;
    for chunk in chunks {
        for value in chunk {
            // SAFETY: offset..offset + T::WIDTH is inside the range the caller vouches for.
            *value = unsafe { load::<T>(base, offset) };
            offset += T::WIDTH;
        }
    }
    for value in rest {
        // SAFETY: as above.
        *value = unsafe { load::<T>(base, offset) };
        offset += T::WIDTH;
    }
}

/// Stores `values` consecutively at `base + at`, one pinned store each, in
/// ascending order.
///
/// # Safety
/// As for [`load_run`], for writing.
#[inline(always)]
unsafe fn store_run<T: Scalar>(base: *mut u8, at: usize, values: &[T]) {
    let (chunks, rest) = values.as_chunks::<UNROLL>();
    let mut offset = at;
    for chunk in chunks {
        for value in chunk {
            // SAFETY: offset..offset + T::WIDTH is inside the range the caller vouches for.
            unsafe { store::<T>(base, offset, *value) };
            offset += T::WIDTH;
        }
    }
    for value in rest {
        // SAFETY: as above.
        unsafe { store::<T>(base, offset, *value) };
        offset += T::WIDTH;
    }
}

/// A stretch of a bulk transfer that is either directly mapped or not.
struct Run {
    mapped: bool,
    /// How many elements of the transfer it covers (at least one).
    len: usize,
}

impl Region {
    /// Reads `buf.len()` consecutive `T`s starting at `offset`, each as one
    /// access of exactly `T`'s width (never a `memcpy`, which could use any
    /// width on the bus), in ascending order.
    ///
    /// This is the wide bulk path for device memory where accesses of `T`'s
    /// width are valid (`read_slice::<u64>` on a RAM-like BAR moves 8 bytes
    /// per access; [`Region::read_bytes`] never goes beyond 4). Bounds,
    /// natural alignment of `offset` and the region's read flag are checked
    /// once for the whole range ([`Error::OutOfRange`], [`Error::Misaligned`],
    /// [`Error::NotReadable`]), and nothing is read if a check fails.
    ///
    /// Directly mapped parts are read with a loop of pinned loads (one `mov`
    /// each on x86-64, as [`crate::mmio`]'s accessors); other parts (holes,
    /// trapped pages, a region without a mapping) take the slow path, one
    /// `pread` of `T`'s width per element, which the region's hook and trace
    /// see like any typed access. vfio-pci performs an 8-byte `pread` as one
    /// device access only since Linux 6.11; earlier kernels split it in two
    /// 4-byte ones.
    ///
    /// If the device refused any of its accesses (memory decoding off, a
    /// reset), the call returns [`Error::Refused`] and the contents of `buf`
    /// are unspecified (see [refused accesses](Region#refused-accesses)).
    ///
    /// ```no_run
    /// let ivshmem = barmap::Device::open("0000:00:06.0".parse()?)?;
    /// let shm = ivshmem.bar(2)?; // RAM behind the BAR: 8-byte accesses are fine
    /// let mut words = vec![0u64; 512];
    /// shm.read_slice(0x1000, &mut words)?; // 512 loads of 8 bytes
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn read_slice<T: Scalar>(&self, offset: u64, buf: &mut [T]) -> Result<()> {
        self.check_slice::<T>(offset, buf.len(), AccessKind::Read)?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + (done * T::WIDTH) as u64;
            let run = self.run::<T>(at, buf.len() - done);
            let part = &mut buf[done..done + run.len];
            if run.mapped {
                // SAFETY: `run` found at..at + part's bytes inside one directly
                // mapped range of the live MAP_SHARED mapping owned by self, and
                // `check_slice` checked that `at` (a multiple of the width past
                // `offset`) is naturally aligned.
                unsafe { load_run(self.mapping.base(), at as usize, part) };
            } else {
                for (i, value) in part.iter_mut().enumerate() {
                    *value = self.read::<T>(at + (i * T::WIDTH) as u64)?;
                }
            }
            done += run.len;
        }
        self.no_refusals()
    }

    /// Writes the `T`s of `data` consecutively from `offset`, each as one
    /// access of exactly `T`'s width, in ascending order: the counterpart of
    /// [`Region::read_slice`], with the same single check (the region's write
    /// flag instead of its read flag, [`Error::ReadOnly`]), pinned stores on
    /// mapped parts and one `pwrite` per element elsewhere.
    ///
    /// Returns [`Error::Refused`] if the device refused any of its accesses
    /// (its stores were dropped, as PCIe drops them; see
    /// [refused accesses](Region#refused-accesses)).
    ///
    /// ```no_run
    /// let ivshmem = barmap::Device::open("0000:00:06.0".parse()?)?;
    /// let shm = ivshmem.bar(2)?;
    /// shm.write_slice::<u64>(0, &[1, 2, 3, 4])?; // four 8-byte stores
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn write_slice<T: Scalar>(&self, offset: u64, data: &[T]) -> Result<()> {
        self.check_slice::<T>(offset, data.len(), AccessKind::Write)?;
        let mut done = 0;
        while done < data.len() {
            let at = offset + (done * T::WIDTH) as u64;
            let run = self.run::<T>(at, data.len() - done);
            let part = &data[done..done + run.len];
            if run.mapped {
                // SAFETY: as in `read_slice`; the region allows writes (checked).
                unsafe { store_run(self.mapping.base(), at as usize, part) };
            } else {
                for (i, value) in part.iter().enumerate() {
                    self.write::<T>(at + (i * T::WIDTH) as u64, *value)?;
                }
            }
            done += run.len;
        }
        self.no_refusals()
    }

    /// The checks of a bulk transfer of `count` `T`s at `offset`, done once.
    fn check_slice<T: Scalar>(&self, offset: u64, count: usize, kind: AccessKind) -> Result<()> {
        // A slice never holds more than isize::MAX bytes, so this cannot overflow.
        let len = (count * T::WIDTH) as u64;
        self.check_range(offset, len, kind)?;
        if !offset.is_multiple_of(T::WIDTH as u64) {
            return Err(Error::Misaligned {
                addr: self.address(),
                region: self.index(),
                offset,
                width: T::WIDTH,
            });
        }
        Ok(())
    }

    /// The run of elements from `at` (at most `left` of them) that is directly
    /// mapped throughout, or the run up to the next mapped range that is not.
    /// An element that straddles the end of a mapped range goes with the
    /// unmapped run, so every mapped run is whole elements inside one range.
    fn run<T: Scalar>(&self, at: u64, left: usize) -> Run {
        let width = T::WIDTH as u64;
        let end = at + left as u64 * width;
        if self.mapping.is_whole() {
            return Run {
                mapped: true,
                len: left,
            };
        }
        let ranges = self.mapped_ranges();
        if let Some(range) = ranges.iter().find(|r| r.start <= at && at < r.end) {
            let len = ((range.end.min(end) - at) / width) as usize;
            if len > 0 {
                return Run { mapped: true, len };
            }
            return Run {
                mapped: false,
                len: 1,
            };
        }
        let next = ranges
            .iter()
            .map(|r| r.start)
            .filter(|&s| s > at)
            .min()
            .unwrap_or(end);
        let len = (next.min(end) - at).div_ceil(width) as usize;
        Run { mapped: false, len }
    }
}
