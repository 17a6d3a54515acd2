//! The IOVA allocator on the host: ranges, holes, mask, alignment,
//! exhaustion, free and reuse, fragmentation, with property tests.

use barmap::dma::{IovaAllocator, IovaError};
use proptest::prelude::*;

const PAGE: u64 = 0x1000;

/// The guest's intel-iommu: the MSI window reserved, 39 address bits.
fn intel_iommu() -> IovaAllocator {
    IovaAllocator::new([0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff], PAGE)
}

#[test]
fn allocations_skip_the_msi_window() {
    let mut iova = intel_iommu();
    let below = iova.alloc(0xfee0_0000, PAGE, u64::MAX).unwrap();
    assert_eq!(below, 0);
    let next = iova.alloc(0x10_0000, PAGE, u64::MAX).unwrap();
    assert_eq!(next, 0xfef0_0000, "the 1 MiB MSI window is skipped");
}

#[test]
fn the_mask_bounds_allocations_and_too_large_differs_from_exhausted() {
    let mut iova = intel_iommu();
    let mask28 = (1 << 28) - 1;
    assert_eq!(
        iova.alloc((1 << 28) + PAGE, PAGE, mask28),
        Err(IovaError::TooLarge {
            size: (1 << 28) + PAGE,
            space: 1 << 28,
            limit: mask28
        })
    );
    let half = iova.alloc(1 << 27, PAGE, mask28).unwrap();
    let other = iova.alloc(1 << 27, PAGE, mask28).unwrap();
    assert_eq!((half, other), (0, 1 << 27));
    assert!(matches!(
        iova.alloc(PAGE, PAGE, mask28),
        Err(IovaError::Exhausted { largest_free: 0, .. })
    ));
    // Without the mask there is plenty left.
    assert_eq!(iova.alloc(PAGE, PAGE, u64::MAX), Ok(1 << 28));
    iova.free(half);
    assert_eq!(
        iova.alloc(PAGE, PAGE, mask28),
        Ok(0),
        "freed space is reused first"
    );
}

#[test]
fn fragmentation_leaves_small_holes_that_large_requests_cannot_use() {
    let mut iova = IovaAllocator::new([0..=0xf_ffff], PAGE); // 256 pages
    let pages: Vec<u64> = (0..256)
        .map(|_| iova.alloc(PAGE, PAGE, u64::MAX).unwrap())
        .collect();
    for page in pages.iter().step_by(2) {
        iova.free(*page);
    }
    assert!(matches!(
        iova.alloc(2 * PAGE, PAGE, u64::MAX),
        Err(IovaError::Exhausted {
            largest_free: PAGE,
            ..
        })
    ));
    assert_eq!(iova.alloc(PAGE, PAGE, u64::MAX), Ok(0));
    iova.free(pages[1]);
    assert_eq!(
        iova.alloc(2 * PAGE, PAGE, u64::MAX),
        Ok(PAGE),
        "freeing merges neighbours"
    );
}

#[test]
fn free_of_an_unknown_address_is_refused() {
    let mut iova = intel_iommu();
    let a = iova.alloc(2 * PAGE, PAGE, u64::MAX).unwrap();
    assert_eq!(iova.free(a + PAGE), None);
    assert_eq!(iova.free(a), Some(2 * PAGE));
    assert_eq!(iova.free(a), None);
}

#[test]
fn zero_sizes_and_overflowing_sizes_are_errors() {
    let mut iova = intel_iommu();
    assert_eq!(iova.alloc(0, PAGE, u64::MAX), Err(IovaError::ZeroSize));
    assert!(matches!(
        iova.alloc(u64::MAX, PAGE, u64::MAX),
        Err(IovaError::TooLarge { .. })
    ));
    assert!(matches!(
        iova.reserve(u64::MAX - 0xfff, 0x2000, u64::MAX),
        Err(IovaError::Outside { .. })
    ));
}

#[test]
fn alignments_that_are_not_powers_of_two_are_refused_not_clamped() {
    let mut iova = IovaAllocator::new([0..=u64::MAX], PAGE);
    for align in [u64::MAX, (1 << 63) + 1, 0x3000, 0] {
        assert_eq!(
            iova.alloc(PAGE, align, u64::MAX),
            Err(IovaError::BadAlignment { align }),
            "align {align:#x}"
        );
    }
    assert!(iova.used().next().is_none(), "nothing was allocated");
    assert_eq!(iova.alloc(PAGE, 1 << 63, u64::MAX), Ok(0));
    assert_eq!(iova.alloc(PAGE, 1 << 63, u64::MAX), Ok(1 << 63));
    assert_eq!(
        iova.alloc(PAGE, 16, u64::MAX),
        Ok(PAGE),
        "an alignment below the granule is raised to it"
    );
}

#[test]
fn a_size_whose_rounding_overflows_is_too_large_not_zero() {
    let iova = intel_iommu();
    let space = 0x7f_ffff_ffff + 1 - 0x10_0000;
    for size in [u64::MAX, u64::MAX - PAGE + 2] {
        assert_eq!(
            iova.rounded_size(size, u64::MAX),
            Err(IovaError::TooLarge {
                size,
                space,
                limit: u64::MAX
            }),
            "size {size:#x}"
        );
    }
    assert_eq!(iova.rounded_size(0, u64::MAX), Err(IovaError::ZeroSize));
    assert_eq!(iova.rounded_size(1, u64::MAX), Ok(PAGE));
    assert_eq!(iova.rounded_size(space, u64::MAX), Ok(space));
    assert!(matches!(
        iova.rounded_size(space + 1, u64::MAX),
        Err(IovaError::TooLarge { size, .. }) if size == space + PAGE
    ));
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        pages: u64,
        align_log: u32,
        mask_bits: u32,
    },
    Reserve {
        page: u64,
        pages: u64,
    },
    Free {
        which: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..64, 12u32..18, 16u32..24).prop_map(|(pages, align_log, mask_bits)| Op::Alloc {
            pages,
            align_log,
            mask_bits
        }),
        (0u64..4096, 1u64..16).prop_map(|(page, pages)| Op::Reserve { page, pages }),
        any::<usize>().prop_map(|which| Op::Free { which }),
    ]
}

/// Valid ranges: up to 4 disjoint page-aligned ranges below 16 MiB.
fn ranges() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..4096, 1u64..1024), 1..5).prop_map(|v| {
        v.into_iter()
            .map(|(page, pages)| (page * PAGE, (page + pages) * PAGE - 1))
            .collect()
    })
}

fn inside(ranges: &[(u64, u64)], first: u64, last: u64) -> bool {
    ranges.iter().any(|(s, l)| *s <= first && last <= *l)
}

proptest! {
    #[test]
    fn allocations_never_overlap_stay_in_ranges_and_bytes_are_conserved(
        input in ranges(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut iova = IovaAllocator::new(input.iter().map(|(s, l)| *s..=*l), PAGE);
        let valid = iova.ranges().to_vec();
        let total: u64 = valid.iter().map(|(s, l)| l - s + 1).sum();
        let mut live: Vec<u64> = vec![];
        for op in ops {
            match op {
                Op::Alloc { pages, align_log, mask_bits } => {
                    let limit = (1u64 << mask_bits) - 1;
                    let align = 1u64 << align_log;
                    match iova.alloc(pages * PAGE, align, limit) {
                        Ok(first) => {
                            let last = first + pages * PAGE - 1;
                            prop_assert_eq!(first % align, 0);
                            prop_assert!(last <= limit);
                            prop_assert!(inside(&valid, first, last));
                            // First fit: no lower free hole could have held it.
                            for (s, l) in iova.free_holes() {
                                let aligned = s.div_ceil(align) * align;
                                if aligned < first {
                                    prop_assert!(aligned + pages * PAGE - 1 > l.min(limit));
                                }
                            }
                            live.push(first);
                        }
                        Err(IovaError::Exhausted { largest_free, .. }) => {
                            prop_assert!(largest_free < pages * PAGE || align > PAGE);
                        }
                        Err(IovaError::TooLarge { size, space, .. }) => prop_assert!(size > space),
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Reserve { page, pages } => {
                    let (first, last) = (page * PAGE, (page + pages) * PAGE - 1);
                    let overlaps = iova.used().any(|(s, l)| s <= last && first <= l);
                    match iova.reserve(first, pages * PAGE, u64::MAX) {
                        Ok(()) => {
                            prop_assert!(!overlaps && inside(&valid, first, last));
                            live.push(first);
                        }
                        Err(IovaError::Overlap { .. }) => prop_assert!(overlaps),
                        Err(IovaError::Outside { .. }) => prop_assert!(!inside(&valid, first, last)),
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Free { which } => {
                    if !live.is_empty() {
                        let first = live.swap_remove(which % live.len());
                        prop_assert!(iova.free(first).is_some());
                    }
                }
            }
            let used: Vec<(u64, u64)> = iova.used().collect();
            for pair in used.windows(2) {
                prop_assert!(pair[0].1 < pair[1].0, "overlap: {:x?}", pair);
            }
            let holes: Vec<(u64, u64)> = iova.free_holes().collect();
            for pair in holes.windows(2) {
                prop_assert!(pair[0].1 + 1 < pair[1].0, "unmerged holes: {:x?}", pair);
            }
            let used_bytes: u64 = used.iter().map(|(s, l)| l - s + 1).sum();
            let free_bytes: u64 = holes.iter().map(|(s, l)| l - s + 1).sum();
            prop_assert_eq!(used_bytes + free_bytes, total);
        }
        for first in live {
            prop_assert!(iova.free(first).is_some());
        }
        prop_assert_eq!(iova.free_holes().collect::<Vec<_>>(), valid);
    }

    #[test]
    fn after_freeing_everything_the_same_sequence_gets_the_same_addresses(
        sizes in proptest::collection::vec(1u64..32, 1..40),
    ) {
        let mut iova = intel_iommu();
        let first: Vec<u64> = sizes.iter().map(|p| iova.alloc(p * PAGE, PAGE, u64::MAX).unwrap()).collect();
        for a in &first {
            iova.free(*a);
        }
        let again: Vec<u64> = sizes.iter().map(|p| iova.alloc(p * PAGE, PAGE, u64::MAX).unwrap()).collect();
        prop_assert_eq!(first, again);
    }
}
