//! The IOVA allocator: which I/O virtual addresses of a container are free.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

/// Why an IOVA range could not be allocated or reserved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IovaError {
    /// A mapping of zero bytes.
    #[error("a DMA mapping of 0 bytes")]
    ZeroSize,
    /// Larger than all the IOVA space under the limit together: it can never fit.
    #[error("{size:#x} bytes is more than the {space:#x} bytes of IOVA space at or below {limit:#x}")]
    TooLarge {
        /// The size asked for (rounded up to the granule).
        size: u64,
        /// The usable IOVA space at or below the limit.
        space: u64,
        /// The highest usable address (from the DMA mask).
        limit: u64,
    },
    /// No free hole at or below the limit is large enough (now: freeing may help).
    #[error("no free {size:#x}-byte IOVA range aligned to {align:#x} at or below {limit:#x} (largest free: {largest_free:#x})")]
    Exhausted {
        /// The size asked for (rounded up to the granule).
        size: u64,
        /// The alignment asked for.
        align: u64,
        /// The highest usable address.
        limit: u64,
        /// The largest free hole at or below the limit.
        largest_free: u64,
    },
    /// A chosen range reaches above the limit (the device's DMA mask).
    #[error("IOVA range {iova:#x}+{size:#x} reaches above {limit:#x}, the device's DMA mask")]
    OverLimit {
        /// Start of the range.
        iova: u64,
        /// Its size.
        size: u64,
        /// The highest usable address.
        limit: u64,
    },
    /// A chosen range is not (wholly) in the container's valid IOVA ranges:
    /// it touches a reserved window (such as the MSI window at 0xfee00000) or
    /// lies past the IOMMU's address width.
    #[error("IOVA range {iova:#x}+{size:#x} is not inside the container's valid IOVA ranges")]
    Outside {
        /// Start of the range.
        iova: u64,
        /// Its size.
        size: u64,
    },
    /// A chosen range overlaps a mapping that exists.
    #[error(
        "IOVA range {iova:#x}+{size:#x} overlaps the mapping at {existing_start:#x}..={existing_last:#x}"
    )]
    Overlap {
        /// Start of the range.
        iova: u64,
        /// Its size.
        size: u64,
        /// First address of the existing mapping.
        existing_start: u64,
        /// Last address of the existing mapping.
        existing_last: u64,
    },
    /// An alignment that is not a power of two (0 included).
    #[error("IOVA alignment {align:#x} is not a power of two")]
    BadAlignment {
        /// The alignment asked for.
        align: u64,
    },
    /// A chosen range does not start and end on the IOMMU's page granule.
    #[error("IOVA range {iova:#x}+{size:#x} is not aligned to the IOMMU page size {granule:#x}")]
    Misaligned {
        /// Start of the range.
        iova: u64,
        /// Its size.
        size: u64,
        /// The smallest IOMMU page size.
        granule: u64,
    },
}

/// First-fit allocator of IOVA ranges inside a set of valid ranges.
///
/// It hands out the lowest free range that fits, is aligned, and stays at or
/// below a limit (a device's DMA mask), so a freed range is the first to be
/// reused; ranges the caller chooses can be reserved too. Free holes are
/// merged when freed, and never across a gap between valid ranges. All sizes
/// and addresses are in multiples of the granule (the IOMMU's smallest page).
///
/// ```
/// use barmap::dma::{IovaAllocator, IovaError};
/// // The intel-iommu's ranges: everything but the MSI window, 39 address bits.
/// let mut iova = IovaAllocator::new([0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff], 0x1000);
/// let limit = (1 << 28) - 1; // edu's 28-bit DMA mask
/// let a = iova.alloc(0x1000, 0x1000, limit)?;
/// let b = iova.alloc(0x2000, 0x1000, limit)?;
/// assert_eq!((a, b), (0, 0x1000));
/// iova.free(a);
/// assert_eq!(iova.alloc(0x800, 0x1000, limit)?, 0); // reused, size rounded up
/// assert!(matches!(iova.alloc((1 << 28) + 0x1000, 0x1000, limit), Err(IovaError::TooLarge { .. })));
/// assert!(matches!(iova.reserve(0xfee0_0000, 0x1000, u64::MAX), Err(IovaError::Outside { .. })));
/// # Ok::<(), IovaError>(())
/// ```
#[derive(Clone, Debug)]
pub struct IovaAllocator {
    granule: u64,
    ranges: Vec<(u64, u64)>,
    /// Free holes: first address → last address.
    free: BTreeMap<u64, u64>,
    /// Allocated or reserved ranges: first address → last address.
    used: BTreeMap<u64, u64>,
}

impl IovaAllocator {
    /// An allocator over `ranges` (inclusive, in any order, overlaps merged),
    /// each shrunk to whole granules; `granule` is rounded up to a power of two.
    pub fn new(ranges: impl IntoIterator<Item = RangeInclusive<u64>>, granule: u64) -> Self {
        let granule = granule.max(1).checked_next_power_of_two().unwrap_or(1 << 63);
        let mut sorted: Vec<(u64, u64)> = ranges
            .into_iter()
            .filter_map(|r| {
                let start = align_up(*r.start(), granule)?;
                // The last address of the last whole granule in the range.
                let last = match r.end().checked_add(1) {
                    Some(end) => (end & !(granule - 1)).checked_sub(1)?,
                    None => u64::MAX,
                };
                (start <= last).then_some((start, last))
            })
            .collect();
        sorted.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (start, last) in sorted {
            match merged.last_mut() {
                Some(prev) if prev.1.checked_add(1).is_none_or(|next| start <= next) => {
                    prev.1 = prev.1.max(last)
                }
                _ => merged.push((start, last)),
            }
        }
        IovaAllocator {
            granule,
            free: merged.iter().copied().collect(),
            ranges: merged,
            used: BTreeMap::new(),
        }
    }

    /// The granule: sizes are rounded up to it, addresses aligned to it.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// The valid ranges, sorted and merged, as `(first, last)` addresses.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// The allocated and reserved ranges, in address order, as `(first, last)`.
    pub fn used(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.used.iter().map(|(s, l)| (*s, *l))
    }

    /// The free holes, in address order, as `(first, last)`.
    pub fn free_holes(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(s, l)| (*s, *l))
    }

    /// `size` rounded up to the granule (`None` on overflow).
    pub fn round_size(&self, size: u64) -> Option<u64> {
        align_up(size, self.granule)
    }

    /// `size` rounded up to the granule, checked against the space at or
    /// below `limit`: [`IovaError::ZeroSize`] for 0, and
    /// [`IovaError::TooLarge`] if the rounded size (or the rounding itself)
    /// exceeds it.
    pub fn rounded_size(&self, size: u64, limit: u64) -> Result<u64, IovaError> {
        if size == 0 {
            return Err(IovaError::ZeroSize);
        }
        let space = self.space_below(limit);
        match self.round_size(size) {
            Some(rounded) if rounded <= space => Ok(rounded),
            rounded => Err(IovaError::TooLarge {
                size: rounded.unwrap_or(size),
                space,
                limit,
            }),
        }
    }

    /// Allocates the lowest free range of `size` bytes (rounded up to the
    /// granule) that starts on a multiple of `align` and ends at or below
    /// `limit`; returns its first address. `align` must be a power of two
    /// ([`IovaError::BadAlignment`] otherwise); one below the granule is
    /// raised to it.
    pub fn alloc(&mut self, size: u64, align: u64, limit: u64) -> Result<u64, IovaError> {
        let size = self.rounded_size(size, limit)?;
        if !align.is_power_of_two() {
            return Err(IovaError::BadAlignment { align });
        }
        let align = align.max(self.granule);
        let found = self.free.iter().find_map(|(&start, &last)| {
            let first = align_up(start, align)?;
            let end = first.checked_add(size - 1)?;
            (end <= last && end <= limit).then_some((start, first, end))
        });
        let Some((hole, first, end)) = found else {
            return Err(IovaError::Exhausted {
                size,
                align,
                limit,
                largest_free: self.largest_free(limit),
            });
        };
        self.take(hole, first, end);
        Ok(first)
    }

    /// Reserves `iova..iova + size`, chosen by the caller: it must be
    /// granule-aligned, at or below `limit`, inside the valid ranges and free.
    pub fn reserve(&mut self, iova: u64, size: u64, limit: u64) -> Result<(), IovaError> {
        if size == 0 {
            return Err(IovaError::ZeroSize);
        }
        if !iova.is_multiple_of(self.granule) || !size.is_multiple_of(self.granule) {
            return Err(IovaError::Misaligned {
                iova,
                size,
                granule: self.granule,
            });
        }
        let last = iova
            .checked_add(size - 1)
            .ok_or(IovaError::Outside { iova, size })?;
        if last > limit {
            return Err(IovaError::OverLimit { iova, size, limit });
        }
        if let Some((&hole, &hole_last)) = self.free.range(..=iova).next_back() {
            if hole_last >= last {
                self.take(hole, iova, last);
                return Ok(());
            }
        }
        if let Some((&existing_start, &existing_last)) = self.used.range(..=last).next_back() {
            if existing_last >= iova {
                return Err(IovaError::Overlap {
                    iova,
                    size,
                    existing_start,
                    existing_last,
                });
            }
        }
        Err(IovaError::Outside { iova, size })
    }

    /// Frees the range that starts at `iova`; returns its size, or `None` if
    /// no range starts there.
    pub fn free(&mut self, iova: u64) -> Option<u64> {
        let last = self.used.remove(&iova)?;
        let (mut start, mut end) = (iova, last);
        if let Some((&prev, &prev_last)) = self.free.range(..iova).next_back() {
            if prev_last.checked_add(1) == Some(iova) {
                self.free.remove(&prev);
                start = prev;
            }
        }
        if let Some(next) = last.checked_add(1) {
            if let Some(next_last) = self.free.remove(&next) {
                end = next_last;
            }
        }
        self.free.insert(start, end);
        Some(last - iova + 1)
    }

    /// The size of the largest free hole, counting only its part at or below `limit`.
    pub fn largest_free(&self, limit: u64) -> u64 {
        self.free
            .iter()
            .filter(|(s, _)| **s <= limit)
            .map(|(s, l)| (*l).min(limit) - s + 1)
            .max()
            .unwrap_or(0)
    }

    /// The bytes of valid space at or below `limit`, saturated at `u64::MAX`.
    fn space_below(&self, limit: u64) -> u64 {
        self.ranges
            .iter()
            .filter(|(s, _)| *s <= limit)
            .map(|(s, l)| u128::from((*l).min(limit) - s) + 1)
            .sum::<u128>()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// Takes `first..=end` out of the free hole starting at `hole`.
    fn take(&mut self, hole: u64, first: u64, end: u64) {
        let hole_last = self.free.remove(&hole).unwrap_or(end);
        if first > hole {
            self.free.insert(hole, first - 1);
        }
        if end < hole_last {
            self.free.insert(end + 1, hole_last);
        }
        self.used.insert(first, end);
    }
}

/// `value` rounded up to a multiple of `align` (a power of two); `None` on overflow.
fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 0x1000;

    #[test]
    fn ranges_are_shrunk_to_granules_sorted_and_merged() {
        let iova = IovaAllocator::new(
            [0x5000..=0x8fff, 0x800..=0x2fff, 0x3000..=0x3fff, 0x10..=0x20],
            PAGE,
        );
        assert_eq!(iova.ranges(), &[(0x1000, 0x3fff), (0x5000, 0x8fff)]);
        let top = IovaAllocator::new([u64::MAX - 0x1fff..=u64::MAX], PAGE);
        assert_eq!(top.ranges(), &[(u64::MAX - 0x1fff, u64::MAX)]);
    }

    #[test]
    fn the_top_page_of_the_space_can_be_allocated_and_freed() {
        let mut iova = IovaAllocator::new([u64::MAX - 0x1fff..=u64::MAX], PAGE);
        assert_eq!(iova.alloc(0x2000, PAGE, u64::MAX), Ok(u64::MAX - 0x1fff));
        assert_eq!(iova.free(u64::MAX - 0x1fff), Some(0x2000));
        assert_eq!(
            iova.free_holes().collect::<Vec<_>>(),
            vec![(u64::MAX - 0x1fff, u64::MAX)]
        );
    }

    #[test]
    fn alignment_skips_to_the_next_aligned_address_and_keeps_the_gap() {
        let mut iova = IovaAllocator::new([0..=0xff_ffff], PAGE);
        assert_eq!(iova.alloc(PAGE, PAGE, u64::MAX), Ok(0));
        assert_eq!(iova.alloc(0x20_0000, 0x20_0000, u64::MAX), Ok(0x20_0000));
        assert_eq!(
            iova.alloc(PAGE, PAGE, u64::MAX),
            Ok(PAGE),
            "the gap below the aligned range is still free"
        );
    }

    #[test]
    fn holes_between_ranges_are_never_handed_out() {
        let mut iova = IovaAllocator::new([0..=0x1fff, 0x4000..=0x7fff], PAGE);
        assert_eq!(iova.alloc(0x3000, PAGE, u64::MAX), Ok(0x4000));
        assert!(matches!(
            iova.alloc(0x3000, PAGE, u64::MAX),
            Err(IovaError::Exhausted {
                largest_free: 0x2000,
                ..
            })
        ));
        assert_eq!(
            iova.reserve(0x1000, 0x2000, u64::MAX),
            Err(IovaError::Outside {
                iova: 0x1000,
                size: 0x2000
            })
        );
    }

    #[test]
    fn reserve_reports_overlap_with_the_existing_range() {
        let mut iova = IovaAllocator::new([0..=0xffff], PAGE);
        iova.reserve(0x2000, 0x2000, u64::MAX).unwrap();
        assert_eq!(
            iova.reserve(0x3000, 0x2000, u64::MAX),
            Err(IovaError::Overlap {
                iova: 0x3000,
                size: 0x2000,
                existing_start: 0x2000,
                existing_last: 0x3fff
            })
        );
        assert!(matches!(
            iova.reserve(0x800, 0x1000, u64::MAX),
            Err(IovaError::Misaligned { .. })
        ));
        assert!(matches!(
            iova.reserve(0x8000, 0x1000, 0x7fff),
            Err(IovaError::OverLimit { .. })
        ));
        assert_eq!(iova.alloc(0x1000, PAGE, u64::MAX), Ok(0));
        assert_eq!(iova.alloc(0x2000, PAGE, u64::MAX), Ok(0x4000));
    }
}
