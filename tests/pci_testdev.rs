//! QEMU pci-testdev through a real VFIO device: BAR0 (memory, mapped) and BAR1
//! (I/O port, syscall path only) running the device's test protocol.

mod common;

use barmap::{BarKind, Device, Error, Region, RegionIndex};
use common::{read_header, testdev, TESTDEV_TESTS};

/// Writing a selector of 3 or more deselects every test.
const DESELECT: u8 = 0xff;

fn select(bar: &Region, n: u8) {
    bar.write::<u8>(0, n).unwrap();
}

/// Runs one test through `bar` with accesses of `width` bytes and checks its
/// header, name, and (for the no-eventfd tests) that its write counts.
fn run_protocol(bar: &Region, bar_number: u32, width: usize) {
    for (selector, on_bar, test, offset, data, name) in TESTDEV_TESTS {
        if on_bar != bar_number {
            continue;
        }
        select(bar, selector);
        let header = read_header(bar, width);
        assert_eq!(
            (
                header.test,
                header.width,
                header.offset,
                header.data,
                header.name.as_str()
            ),
            (test, 1, offset, data, name),
            "bar{bar_number} width {width} selector {selector}"
        );
        let before = header.count;
        // The test's write: its data byte at its offset, at the access width
        // (wider writes are split into bytes by the device; the low byte lands on `offset`).
        let at = u64::from(offset) / width as u64 * width as u64;
        let shift = 8 * (u64::from(offset) - at);
        bar.write_width(at, width, u64::from(data) << shift).unwrap();
        let after = read_header(bar, width).count;
        // Only tests 0 and 3 count: the others are absorbed by an ioeventfd.
        if test == 0 || test == 3 {
            assert_eq!(
                after,
                before + 1,
                "{name}: count after the matching write (width {width})"
            );
            bar.write_width(at, width, 0xce << shift).unwrap();
            assert_eq!(
                read_header(bar, width).count,
                after,
                "{name}: a non-matching byte must not count"
            );
        }
    }
    select(bar, DESELECT);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn regions_are_a_mapped_memory_bar_and_an_io_bar() {
    let dev = Device::open(testdev()).unwrap();
    let bar0 = dev.region_info(RegionIndex::bar(0).unwrap()).unwrap();
    assert_eq!((bar0.size, bar0.flags.mmapable()), (0x1000, true));
    assert_eq!(dev.bar_kind(0), Some(BarKind::Memory32 { prefetchable: false }));
    let bar1 = dev.region_info(RegionIndex::bar(1).unwrap()).unwrap();
    assert_eq!(
        (
            bar1.size,
            bar1.flags.readable(),
            bar1.flags.writable(),
            bar1.flags.mmapable()
        ),
        (0x100, true, true, false)
    );
    assert_eq!(dev.bar_kind(1), Some(BarKind::Io));
    assert!(dev.bar(0).unwrap().is_fully_mapped());
    let io = dev.bar(1).unwrap();
    assert!(io.mapped_ranges().is_empty() && io.is_trapped(0) && io.is_trapped(0xff));
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn memory_bar_runs_the_protocol_through_the_mapping() {
    let dev = Device::open(testdev()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    for width in [1, 2, 4] {
        run_protocol(&bar0, 0, width);
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn io_bar_runs_the_protocol_through_the_syscall_path() {
    let dev = Device::open(testdev()).unwrap();
    let bar1 = dev.bar(1).unwrap();
    for width in [1, 2, 4] {
        run_protocol(&bar1, 1, width);
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn selection_is_shared_between_the_bars() {
    let dev = Device::open(testdev()).unwrap();
    let (bar0, bar1) = (dev.bar(0).unwrap(), dev.bar(1).unwrap());
    select(&bar0, 0);
    let through_io = read_header(&bar1, 4);
    assert_eq!(
        (through_io.test, through_io.name.as_str()),
        (0, "mmio-no-eventfd")
    );
    assert_eq!(through_io, read_header(&bar0, 4));
    assert_eq!(bar0.read::<u32>(4).unwrap(), 0x800);
    assert_eq!(bar0.read::<u32>(8).unwrap(), 0xfa);
    assert_eq!(bar0.read::<u8>(0x800).unwrap(), 0);
    assert_eq!(bar0.read::<u32>(0xffc).unwrap(), 0);
    select(&bar1, 1);
    assert_eq!(read_header(&bar0, 1).name, "portio-wildcard-eventfd");
    select(&bar0, DESELECT);
    assert_eq!(bar0.read::<u32>(0).unwrap(), 0);
    assert_eq!(bar1.read::<u32>(4).unwrap(), 0);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn io_bar_bounds_are_checked() {
    let dev = Device::open(testdev()).unwrap();
    let bar1 = dev.bar(1).unwrap();
    assert!(matches!(
        bar1.read::<u8>(0x100).unwrap_err(),
        Error::OutOfRange { offset: 0x100, .. }
    ));
    assert!(matches!(
        bar1.read::<u32>(0xfe).unwrap_err(),
        Error::OutOfRange { .. }
    ));
    assert!(matches!(
        bar1.read::<u16>(0x81).unwrap_err(),
        Error::Misaligned { .. }
    ));
    assert_eq!(bar1.read::<u8>(0xff).unwrap(), 0);
}
