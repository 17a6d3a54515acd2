//! The region handle's own logic on any host: bounds, alignment, widths,
//! permissions, the mapped fast path and the slow path, over an emulated
//! device (a memfd mapped where the "kernel" allows it, and a recording
//! `RegionIo` for the rest). What needs a real device stays in the guest tests.

mod common;

use barmap::shadow::AccessKind;
use barmap::{Error, MapPolicy, PciAddress, Region, RegionBuilder, RegionFlags, RegionIndex, SparseArea};
use common::emulated::{Device, PAGE};

const READ: u32 = 1;
const WRITE: u32 = 2;
const MMAP: u32 = 4;

/// A device's memory (byte i holds i * 13 + 5, mod 256), reached through a
/// recording slow path.
fn device(size: u64) -> Device {
    Device::with_pattern(size, |i| (i * 13 + 5) as u8)
}

fn addr() -> PciAddress {
    "0000:ee:01.0".parse().unwrap()
}

/// BAR2 of `dev` with `flags`, mapping `areas`.
fn builder<'a>(dev: &'a Device, flags: u32, areas: &[SparseArea]) -> RegionBuilder<'a> {
    Region::builder(addr(), RegionIndex::bar(2).unwrap(), dev.io())
        .flags(RegionFlags::from_bits(flags))
        .map_from(&dev.fd, 0, areas)
}

/// BAR2 of `dev` mapped whole.
fn mapped(dev: &Device, flags: u32) -> Region {
    builder(dev, flags, &[dev.whole()]).build().unwrap()
}

/// The slow-path accesses since the last call: (offset, len, write).
fn take(dev: &Device) -> Vec<(u64, usize, bool)> {
    dev.log
        .take()
        .into_iter()
        .map(|r| (r.offset, r.width, r.write))
        .collect()
}

#[test]
fn a_region_owns_what_it_needs() {
    fn owned<T: Send + Sync + 'static>() {}
    owned::<Region>();
    owned::<barmap::Device>();
    let e = device(2 * PAGE);
    let region = mapped(&e, READ | WRITE | MMAP);
    let slow = e.slow.clone();
    drop(e); // the memfd's last outside handle: the region still works
    assert_eq!(
        region.read::<u32>(0x10).unwrap(),
        u32::from_le_bytes(std::array::from_fn(|i| ((0x10 + i as u64) * 13 + 5) as u8))
    );
    assert_eq!(slow.calls(), 0, "a mapped access never takes the slow path");
}

#[test]
fn fast_path_reads_and_writes_the_mapping_only() {
    let e = device(2 * PAGE);
    let region = mapped(&e, READ | WRITE | MMAP);
    assert!(region.is_fully_mapped());
    assert_eq!(
        region.mapping_address() % (2 * PAGE) as usize,
        0,
        "aligned to its size"
    );
    for (offset, width) in [(0u64, 1usize), (2, 2), (4, 4), (8, 8), (2 * PAGE - 8, 8)] {
        assert_eq!(
            region.read_width(offset, width).unwrap(),
            e.peek_word(offset, width),
            "{width} at {offset:#x}"
        );
    }
    region.write::<u64>(0x100, 0x1122_3344_5566_7788).unwrap();
    region.write::<u16>(0x10a, 0xbeef).unwrap();
    assert_eq!(e.peek_word(0x100, 8), 0x1122_3344_5566_7788);
    assert_eq!(e.peek_word(0x10a, 2), 0xbeef);
    assert!(take(&e).is_empty());
}

#[test]
fn holes_take_the_slow_path_at_the_same_width() {
    let e = device(3 * PAGE);
    let region = builder(
        &e,
        READ | WRITE | MMAP,
        &[
            SparseArea {
                offset: 0,
                size: PAGE,
            },
            SparseArea {
                offset: 2 * PAGE,
                size: PAGE,
            },
        ],
    )
    .build()
    .unwrap();
    assert_eq!(region.mapped_ranges(), [0..PAGE, 2 * PAGE..3 * PAGE]);
    assert!(!region.is_fully_mapped() && region.is_trapped(PAGE) && !region.is_trapped(2 * PAGE));
    assert_eq!(region.read::<u32>(4).unwrap() as u64, e.peek_word(4, 4));
    assert_eq!(
        region.read::<u64>(2 * PAGE + 8).unwrap(),
        e.peek_word(2 * PAGE + 8, 8)
    );
    assert!(take(&e).is_empty(), "mapped pages are direct");
    for width in [1usize, 2, 4, 8] {
        let offset = PAGE + 8 * width as u64;
        assert_eq!(
            region.read_width(offset, width).unwrap(),
            e.peek_word(offset, width)
        );
        region.write_width(offset, width, 0x5a).unwrap();
        assert_eq!(e.peek_word(offset, width), 0x5a);
        assert_eq!(
            take(&e),
            vec![(offset, width, false), (offset, width, true)],
            "width {width}"
        );
    }
}

#[test]
fn trap_policies_keep_pages_off_the_mapping() {
    let e = device(4 * PAGE);
    let whole = [SparseArea {
        offset: 0,
        size: 4 * PAGE,
    }];
    let region = builder(&e, READ | WRITE | MMAP, &whole)
        .policy(MapPolicy::trap_range(PAGE + 4..PAGE + 8))
        .build()
        .unwrap();
    assert_eq!(region.mapped_ranges(), [0..PAGE, 2 * PAGE..4 * PAGE]);
    region.read::<u32>(PAGE + 4).unwrap();
    region.read::<u32>(PAGE + 0x800).unwrap();
    region.read::<u32>(0).unwrap();
    assert_eq!(take(&e), vec![(PAGE + 4, 4, false), (PAGE + 0x800, 4, false)]);
    let all = builder(&e, READ | WRITE | MMAP, &whole)
        .policy(MapPolicy::TrapAll)
        .build()
        .unwrap();
    assert!(all.mapped_ranges().is_empty() && all.is_trapped(0) && all.is_trapped(4 * PAGE - 1));
    assert!(!all.is_trapped(4 * PAGE), "past the end is not in the region");
    all.read::<u8>(0).unwrap();
    assert_eq!(take(&e), vec![(0, 1, false)]);
}

#[test]
fn out_of_range_is_refused_with_the_region_named() {
    let e = device(PAGE);
    let region = mapped(&e, READ | WRITE | MMAP);
    for (offset, width) in [
        (PAGE, 1usize),
        (PAGE - 2, 4),
        (PAGE - 4, 8),
        (u64::MAX - 1, 4),
        (u64::MAX, 1),
    ] {
        let err = region.read_width(offset, width).unwrap_err();
        assert!(
            matches!(err, Error::OutOfRange { addr: a, region: r, offset: o, len, size: PAGE } if a == addr() && r == RegionIndex::bar(2).unwrap() && o == offset && len == width as u64),
            "{err:?}"
        );
        assert!(region.write_width(offset, width, 0).is_err());
    }
    let err = region.read::<u32>(PAGE).unwrap_err().to_string();
    assert!(err.contains("0000:ee:01.0") && err.contains("bar2"), "{err}");
    let mut buf = [0u8; 16];
    assert!(matches!(
        region.read_bytes(PAGE - 8, &mut buf),
        Err(Error::OutOfRange { len: 16, .. })
    ));
    assert!(matches!(
        region.write_bytes(u64::MAX - 3, &buf),
        Err(Error::OutOfRange { .. })
    ));
    assert!(take(&e).is_empty(), "a refused access never reaches the device");
}

#[test]
fn misaligned_and_odd_widths_are_refused() {
    let e = device(PAGE);
    for region in [
        mapped(&e, READ | WRITE | MMAP),
        builder(&e, READ | WRITE, &[]).build().unwrap(),
    ] {
        for (offset, width) in [(1u64, 2usize), (2, 4), (4, 8), (0x101, 8)] {
            let err = region.read_width(offset, width).unwrap_err();
            assert!(
                matches!(err, Error::Misaligned { offset: o, width: w, .. } if o == offset && w == width),
                "{err:?}"
            );
            assert!(matches!(
                region.write_width(offset, width, 0),
                Err(Error::Misaligned { .. })
            ));
            assert!(matches!(
                region.check_access(offset, width, AccessKind::Read),
                Err(Error::Misaligned { .. })
            ));
        }
        for width in [0usize, 3, 5, 16] {
            assert!(
                matches!(region.read_width(0, width), Err(Error::UnsupportedWidth { width: w, .. }) if w == width)
            );
            assert!(matches!(
                region.write_width(0, width, 0),
                Err(Error::UnsupportedWidth { .. })
            ));
            assert!(matches!(
                region.check_access(0, width, AccessKind::Write),
                Err(Error::UnsupportedWidth { .. })
            ));
        }
        assert!(matches!(
            region.write_width(4, 1, 0x100),
            Err(Error::ValueTooWide {
                value: 0x100,
                width: 1,
                ..
            })
        ));
        assert!(matches!(
            region.write_width(4, 4, 1 << 32),
            Err(Error::ValueTooWide { .. })
        ));
        region.check_access(8, 8, AccessKind::Write).unwrap();
    }
    assert!(take(&e).is_empty());
}

#[test]
fn permissions_follow_the_region_flags() {
    let e = device(PAGE);
    let rom = mapped(&e, READ | MMAP);
    assert!(rom.is_fully_mapped());
    assert_eq!(rom.read::<u32>(0).unwrap() as u64, e.peek_word(0, 4));
    for err in [
        rom.write::<u32>(0, 1).unwrap_err(),
        rom.write_bytes(0, &[1, 2]).unwrap_err(),
        rom.check_access(0, 4, AccessKind::Write).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::ReadOnly { addr: a, .. } if a == addr()),
            "{err:?}"
        );
    }
    let write_only = builder(&e, WRITE, &[]).build().unwrap();
    assert!(matches!(write_only.read::<u8>(0), Err(Error::NotReadable { .. })));
    write_only.write::<u8>(0, 0x42).unwrap();
    assert_eq!(e.peek(0, 1)[0], 0x42);
    assert_eq!(take(&e), vec![(0, 1, true)]);
    // The read-only mapping really is read-only: its page is mapped without PROT_WRITE.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let start = format!("{:x}-", rom.mapping_address());
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .expect("the mapping is listed");
    assert!(
        line.split_whitespace().nth(1).unwrap().starts_with("r-"),
        "{line}"
    );
}

#[test]
fn bulk_accesses_are_aligned_runs_of_at_most_four_bytes() {
    let e = device(PAGE);
    let region = builder(&e, READ | WRITE, &[]).build().unwrap();
    let data: Vec<u8> = (0..11).collect();
    region.write_bytes(0x21, &data).unwrap();
    assert_eq!(
        take(&e),
        vec![(0x21, 1, true), (0x22, 2, true), (0x24, 4, true), (0x28, 4, true)],
    );
    let mut back = [0u8; 11];
    region.read_bytes(0x21, &mut back).unwrap();
    assert_eq!(back.to_vec(), data);
    assert!(take(&e)
        .iter()
        .all(|&(offset, len, write)| !write && len <= 4 && offset % len as u64 == 0));
}

#[test]
fn dropping_the_region_unmaps_it() {
    let e = device(PAGE);
    let region = mapped(&e, READ | WRITE | MMAP);
    let start = format!("{:x}-", region.mapping_address());
    let listed = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| l.starts_with(&start))
    };
    assert!(listed());
    drop(region);
    assert!(!listed());
}
