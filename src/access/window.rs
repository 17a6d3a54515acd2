//! The checks of a typed access, flattened into a few integers at open time,
//! so that the inlined fast path, the syscall path and the general slow path
//! each test an access with a couple of comparisons, not one branch per rule.

use std::os::fd::RawFd;

use super::slow::SlowPath;
use crate::map::Mapping;
use crate::region::RegionInfo;

/// How far reads and writes of a region may go: its size, or 0 for a
/// direction its flags do not allow.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Limits {
    pub(super) read_end: u64,
    pub(super) write_end: u64,
}

impl Limits {
    pub(super) fn new(info: &RegionInfo) -> Limits {
        Limits {
            read_end: if info.flags.readable() { info.size } else { 0 },
            write_end: if info.flags.writable() { info.size } else { 0 },
        }
    }

    /// Whether a `width`-byte access at `offset` is naturally aligned and
    /// ends at or below `end` (one of the limits): bounds, alignment and
    /// permission in one comparison. `width` is 1, 2, 4 or 8.
    ///
    /// With `k = log2(width)`, rotating `offset` right by `k` gives
    /// `offset / width` if it is aligned, and a value of at least
    /// `2^(64 - k)` (a low bit moved to the top) if not; `end >> k`, the
    /// number of aligned `width`-byte slots below `end`, is less than that.
    /// So the rotated offset is below `end >> k` exactly when the offset is
    /// aligned and its slot is one of those below `end`.
    #[inline(always)]
    pub(super) fn allows(offset: u64, width: usize, end: u64) -> bool {
        let k = width.trailing_zeros();
        offset.rotate_right(k) < end >> k
    }
}

/// What the inlined fast path of [`crate::Region::read`] and
/// [`crate::Region::write`] needs: a fully mapped region's base address and
/// its limits (0 when the region is not fully mapped or its size is not a
/// multiple of 8). Everything else takes the out-of-line slow path, which
/// tests the region's [`Limits`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FastWindow {
    base: usize,
    pub(super) read_end: u64,
    pub(super) write_end: u64,
}

impl FastWindow {
    pub(super) fn new(info: &RegionInfo, mapping: &Mapping) -> FastWindow {
        if !mapping.is_whole() || !info.size.is_multiple_of(8) {
            return FastWindow::default();
        }
        let limits = Limits::new(info);
        FastWindow {
            base: mapping.base() as usize,
            read_end: limits.read_end,
            write_end: limits.write_end,
        }
    }

    /// `offset` as an index from the base if a naturally aligned
    /// `width`-byte access there stays below `end`. `end` is a multiple of 8
    /// (or 0), so an aligned access of at most 8 bytes that starts below it
    /// also ends at or below it.
    #[inline(always)]
    pub(super) fn at(&self, offset: u64, width: usize, end: u64) -> Option<usize> {
        let fits = (offset < end) & (offset & (width as u64 - 1) == 0);
        fits.then_some(offset as usize)
    }

    pub(super) fn base(&self) -> *mut u8 {
        self.base as *mut u8
    }
}

/// What the syscall path of a region with nothing mapped needs, flattened:
/// the descriptor, the file position of the region's start, and the
/// region's limits (0 unless nothing is mapped, the slow path is a
/// descriptor whose every offset has a file position, and no hook or trace
/// watches). An access inside is one `pread`/`pwrite` with no other test;
/// everything else takes the general slow path.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SyscallWindow {
    pub(super) fd: RawFd,
    pub(super) file_offset: u64,
    pub(super) read_end: u64,
    pub(super) write_end: u64,
}

impl SyscallWindow {
    pub(super) fn new(info: &RegionInfo, io: &SlowPath, mapping: &Mapping, observed: bool) -> SyscallWindow {
        let SlowPath::Fd(io) = io else {
            return SyscallWindow::default();
        };
        match io.direct() {
            Some((fd, file_offset)) if mapping.mapped().is_empty() && !observed => {
                let limits = Limits::new(info);
                SyscallWindow {
                    fd,
                    file_offset,
                    read_end: limits.read_end,
                    write_end: limits.write_end,
                }
            }
            _ => SyscallWindow::default(),
        }
    }

    /// The file position of `offset`, which [`Limits::allows`] found inside.
    #[inline(always)]
    pub(super) fn position(&self, offset: u64) -> libc::off_t {
        // `FdRegion::direct` promises that `file_offset + size` is an off_t,
        // and `offset` is below `size`.
        (self.file_offset + offset) as libc::off_t
    }
}

#[cfg(test)]
mod tests {
    use super::Limits;

    #[test]
    fn limits_allow_exactly_the_aligned_accesses_inside() {
        for end in [0u64, 1, 7, 8, 0x13, 0x1000, u64::MAX - 8, u64::MAX] {
            for width in [1usize, 2, 4, 8] {
                let w = width as u64;
                let near_end = (0..0x20).map(|d| end.wrapping_sub(d));
                let high = (0..0x20)
                    .map(|d| u64::MAX - d)
                    .chain((0..0x20).map(|d| (1 << 63) + d));
                for offset in (0..0x20).chain(near_end).chain(high) {
                    let want = offset.checked_add(w).is_some_and(|e| e <= end) && offset.is_multiple_of(w);
                    assert_eq!(
                        Limits::allows(offset, width, end),
                        want,
                        "{width} at {offset:#x}, end {end:#x}"
                    );
                }
            }
        }
    }
}
