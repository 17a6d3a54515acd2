//! How a region is laid out in its reserved range: which pages map the device
//! directly and which are trapped.

use std::ops::Range;

use crate::region::SparseArea;

/// How a region is laid out when it is opened: which pages are mapped
/// directly and which are trapped (reached with `pread`/`pwrite` by typed
/// accesses, and served by the fault handler for accesses through
/// [`crate::Region::as_ptr`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapPolicy {
    /// Map every page the kernel lets us mmap; trap only the rest: holes
    /// between sparse-mmap areas, partial pages at unaligned area edges, and
    /// whole regions that are not mmapable (I/O port BARs, config space).
    #[default]
    Direct,
    /// Like `Direct`, but also trap the pages covering these offset ranges,
    /// e.g. to watch a few registers through the access hook. Each range is
    /// widened to whole pages: a page is either mapped or trapped.
    Trap(Vec<Range<u64>>),
    /// Map nothing (like QEMU's `x-no-mmap`): typed accesses use
    /// `pread`/`pwrite`, and every access through the pointer is trapped,
    /// e.g. to trace them all.
    TrapAll,
}

impl MapPolicy {
    /// [`MapPolicy::Trap`] of one range.
    ///
    /// ```
    /// use barmap::MapPolicy;
    /// assert_eq!(MapPolicy::trap_range(0..0x1000), MapPolicy::Trap(vec![0..0x1000]));
    /// ```
    pub fn trap_range(range: Range<u64>) -> MapPolicy {
        MapPolicy::Trap(vec![range])
    }
}

/// A layout that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LayoutError {
    /// A mmapable area reaches outside the region, or keeps the region's last
    /// page, which ends past `u64::MAX` (a size near `u64::MAX`).
    AreaOutside(SparseArea),
    /// A range to trap reaches outside the region (or is reversed).
    TrapOutside(Range<u64>),
}

/// `x` rounded up to a multiple of `page`, or `None` if that is past `u64::MAX`.
fn round_up(x: u64, page: u64) -> Option<u64> {
    x.checked_next_multiple_of(page)
}

fn round_down(x: u64, page: u64) -> u64 {
    x / page * page
}

/// The page-aligned offset ranges of a region of `size` bytes to map
/// directly, sorted and merged, given the areas the kernel allows to mmap and
/// what `policy` asks to trap. Everything else in `0..round_up(size, page)` is
/// trapped.
///
/// Areas are shrunk to the whole pages inside them, except that an area
/// reaching the region's end keeps its last partial page (the kernel maps
/// BARs in whole pages).
pub(crate) fn direct_ranges(
    size: u64,
    page: u64,
    areas: &[SparseArea],
    policy: &MapPolicy,
) -> Result<Vec<Range<u64>>, LayoutError> {
    if let Some(bad) = areas
        .iter()
        .find(|a| a.offset.checked_add(a.size).is_none_or(|end| end > size))
    {
        return Err(LayoutError::AreaOutside(*bad));
    }
    let trapped: Vec<Range<u64>> = match policy {
        MapPolicy::TrapAll => return Ok(Vec::new()),
        MapPolicy::Direct => Vec::new(),
        MapPolicy::Trap(ranges) => {
            if let Some(bad) = ranges.iter().find(|r| r.start > r.end || r.end > size) {
                return Err(LayoutError::TrapOutside(bad.clone()));
            }
            // A range reaching into a last page that ends past `u64::MAX`
            // traps up to `u64::MAX`: no mapped range goes further.
            ranges
                .iter()
                .filter(|r| !r.is_empty())
                .map(|r| round_down(r.start, page)..round_up(r.end, page).unwrap_or(u64::MAX))
                .collect()
        }
    };
    let mut mapped: Vec<Range<u64>> = Vec::with_capacity(areas.len());
    for a in areas {
        let end = a.offset + a.size;
        let end = if end == size {
            round_up(end, page).ok_or(LayoutError::AreaOutside(*a))?
        } else {
            round_down(end, page)
        };
        // No whole page starts at or after `a.offset` if this overflows.
        match round_up(a.offset, page) {
            Some(start) if start < end => mapped.push(start..end),
            _ => {}
        }
    }
    mapped.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(mapped.len());
    for r in mapped {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    for t in &trapped {
        merged = merged
            .into_iter()
            .flat_map(|r| {
                let left = r.start..r.end.min(t.start);
                let right = r.start.max(t.end)..r.end;
                [left, right].into_iter().filter(|p| !p.is_empty())
            })
            .collect();
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 0x1000;

    fn area(offset: u64, size: u64) -> SparseArea {
        SparseArea { offset, size }
    }

    #[test]
    fn whole_region_maps_whole() {
        let got = direct_ranges(0x4000, PAGE, &[area(0, 0x4000)], &MapPolicy::Direct).unwrap();
        assert_eq!(got, vec![0..0x4000]);
        assert_eq!(
            direct_ranges(0x4000, PAGE, &[area(0, 0x4000)], &MapPolicy::TrapAll).unwrap(),
            vec![]
        );
        assert_eq!(
            direct_ranges(0x100, PAGE, &[], &MapPolicy::Direct).unwrap(),
            vec![]
        );
    }

    #[test]
    fn small_region_maps_its_page() {
        assert_eq!(
            direct_ranges(0x100, PAGE, &[area(0, 0x100)], &MapPolicy::Direct).unwrap(),
            vec![0..PAGE]
        );
    }

    #[test]
    fn unaligned_areas_shrink_to_whole_pages() {
        let areas = [area(0x800, 0x2000), area(0x3000, 0x1800)];
        let got = direct_ranges(0x5000, PAGE, &areas, &MapPolicy::Direct).unwrap();
        assert_eq!(got, vec![0x1000..0x2000, 0x3000..0x4000]);
    }

    #[test]
    fn areas_are_sorted_and_merged() {
        let areas = [area(0x3000, 0x3000), area(0, 0x1000), area(0x1000, 0x1000)];
        let got = direct_ranges(0x6000, PAGE, &areas, &MapPolicy::Direct).unwrap();
        assert_eq!(got, vec![0..0x2000, 0x3000..0x6000]);
    }

    #[test]
    fn area_outside_region_is_refused() {
        let bad = area(0x3000, 0x9000);
        assert_eq!(
            direct_ranges(0x6000, PAGE, &[area(0, 0x1000), bad], &MapPolicy::Direct),
            Err(LayoutError::AreaOutside(bad))
        );
        let wraps = area(u64::MAX, 2);
        assert_eq!(
            direct_ranges(0x6000, PAGE, &[wraps], &MapPolicy::Direct),
            Err(LayoutError::AreaOutside(wraps))
        );
    }

    #[test]
    fn trap_ranges_widen_to_pages_and_split_areas() {
        let trap = MapPolicy::Trap(vec![0x10..0x14, 0x2ff0..0x3004, 0x5000..0x5000]);
        let got = direct_ranges(0x8000, PAGE, &[area(0, 0x8000)], &trap).unwrap();
        assert_eq!(got, vec![0x1000..0x2000, 0x4000..0x8000]);
    }

    #[test]
    fn sizes_near_the_top_do_not_overflow() {
        let max = u64::MAX;
        // The region's last page would end past u64::MAX: it cannot be kept.
        let whole = area(0, max);
        assert_eq!(
            direct_ranges(max, PAGE, &[whole], &MapPolicy::Direct),
            Err(LayoutError::AreaOutside(whole))
        );
        let tail = area(max - 0x10, 0x10);
        assert_eq!(
            direct_ranges(max, PAGE, &[tail], &MapPolicy::Direct),
            Err(LayoutError::AreaOutside(tail))
        );
        // Areas that do not reach the end shrink as usual, even inside the last page.
        let areas = [area(0, 0x4000), area(max - 0x10, 0x8)];
        assert_eq!(
            direct_ranges(max, PAGE, &areas, &MapPolicy::Direct).unwrap(),
            vec![0..0x4000]
        );
        assert_eq!(
            direct_ranges(max, PAGE, &areas, &MapPolicy::TrapAll).unwrap(),
            vec![]
        );
        // A trap range up to the end covers the last page.
        let trap = MapPolicy::Trap(vec![0x1000..0x1004, 0x3000..max]);
        assert_eq!(
            direct_ranges(max, PAGE, &areas, &trap).unwrap(),
            vec![0..0x1000, 0x2000..0x3000]
        );
        let trap = MapPolicy::Trap(vec![0x1000..0x1004, max - 1..max]);
        assert_eq!(
            direct_ranges(max, PAGE, &areas, &trap).unwrap(),
            vec![0..0x1000, 0x2000..0x4000]
        );
        assert_eq!(round_up(max, PAGE), None);
        assert_eq!(round_up(max - PAGE, PAGE), Some(max - PAGE + 1));
    }

    #[test]
    fn trap_outside_region_is_refused() {
        let trap = MapPolicy::Trap(vec![0..0x10, 0x7000..0x9000]);
        assert_eq!(
            direct_ranges(0x8000, PAGE, &[area(0, 0x8000)], &trap),
            Err(LayoutError::TrapOutside(0x7000..0x9000))
        );
    }
}
