//! QEMU edu through a real VFIO device (run in the guest with --include-ignored).

mod common;

use barmap::{BarKind, Device, Error, MapPolicy, RegionIndex};
use common::{edu, edu_factorial, edu_reg::*, proc_maps, vm_flags};

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn identification_register() {
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    assert_eq!(bar0.read::<u32>(ID).unwrap(), ID_VALUE);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn liveness_returns_inverse() {
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    for x in [0x1234_5678u32, 0, 0xffff_ffff, 0xdead_beef, 0x8000_0001] {
        bar0.write::<u32>(LIVENESS, x).unwrap();
        assert_eq!(
            bar0.read::<u32>(LIVENESS).unwrap(),
            !x,
            "liveness after writing {x:#x}"
        );
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn factorial_by_polling() {
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    assert_eq!(edu_factorial(&bar0, 5), 120);
    assert_eq!(edu_factorial(&bar0, 12), 479_001_600);
    assert_eq!(edu_factorial(&bar0, 0), 1);
    assert_eq!(edu_factorial(&bar0, 13), 0x7328_cc00);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn bar0_is_a_one_mib_mmapable_memory_bar() {
    let dev = Device::open(edu()).unwrap();
    let info = dev.region_info(RegionIndex::bar(0).unwrap()).unwrap();
    assert_eq!(info.size, 0x10_0000);
    assert!(info.flags.readable() && info.flags.writable() && info.flags.mmapable());
    assert_eq!(dev.bar_kind(0), Some(BarKind::Memory32 { prefetchable: false }));
    for n in 1..6 {
        let err = dev.bar(n).unwrap_err();
        assert!(matches!(err, Error::NoSuchRegion { .. }), "bar{n}: {err}");
    }
    let bar0 = dev.bar(0).unwrap();
    assert!(bar0.is_fully_mapped());
    assert_eq!(bar0.mapped_ranges(), vec![0..0x10_0000]);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn mapping_is_device_memory_and_goes_away_on_drop() {
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    let addr = bar0.mapping_address();
    assert_eq!(addr % 0x10_0000, 0, "the reservation is aligned to the BAR size");
    bar0.read::<u32>(ID).unwrap();
    let flags = vm_flags(addr).expect("the mapping is in /proc/self/smaps");
    let words: Vec<&str> = flags.split_whitespace().collect();
    assert!(words.contains(&"io") && words.contains(&"pf"), "{flags}");
    let start = format!("{addr:x}-");
    assert!(proc_maps().lines().any(|l| l.starts_with(&start)));
    drop(bar0);
    assert!(
        !proc_maps().lines().any(|l| l.starts_with(&start)),
        "mapping still present after drop"
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn syscall_path_agrees_with_the_mapping() {
    let dev = Device::open(edu()).unwrap();
    let mapped = dev.bar(0).unwrap();
    let syscall = dev
        .region(RegionIndex::bar(0).unwrap(), MapPolicy::TrapAll)
        .unwrap();
    assert!(syscall.mapped_ranges().is_empty());
    assert_eq!(syscall.read::<u32>(ID).unwrap(), ID_VALUE);
    syscall.write::<u32>(LIVENESS, 0x0f0f_0f0f).unwrap();
    assert_eq!(mapped.read::<u32>(LIVENESS).unwrap(), 0xf0f0_f0f0);
    mapped.write::<u32>(LIVENESS, 0x1111_2222).unwrap();
    assert_eq!(syscall.read::<u32>(LIVENESS).unwrap(), !0x1111_2222);
    assert_eq!(edu_factorial(&syscall, 5), 120);
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    mapped.read_bytes(0, &mut a).unwrap();
    syscall.read_bytes(0, &mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(&a[..4], &ID_VALUE.to_le_bytes());
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn sixty_four_bit_registers_and_rejected_widths() {
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    common::wait_idle(&bar0);
    bar0.write::<u64>(DMA_SRC, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(bar0.read::<u64>(DMA_SRC).unwrap(), 0x1122_3344_5566_7788);
    assert_eq!(bar0.read::<u32>(DMA_SRC).unwrap(), 0x5566_7788);
    assert_eq!(bar0.read::<u32>(DMA_SRC + 4).unwrap(), 0xffff_ffff);
    bar0.write::<u64>(DMA_SRC, 0).unwrap();
    // edu accepts only 4- and 8-byte accesses: narrower ones read 0 and writes are dropped.
    bar0.write::<u32>(LIVENESS, 0x1234_5678).unwrap();
    bar0.write::<u8>(LIVENESS, 0x11).unwrap();
    bar0.write::<u16>(LIVENESS, 0x1111).unwrap();
    assert_eq!(bar0.read::<u32>(LIVENESS).unwrap(), 0xedcb_a987);
    assert_eq!(bar0.read::<u8>(ID).unwrap(), 0);
    assert_eq!(bar0.read::<u16>(ID).unwrap(), 0);
    assert_eq!(bar0.read::<u64>(ID).unwrap(), u64::MAX);
    for undefined in [0x0c, 0x7c, 0x100, 0x40000, 0xffffc] {
        assert_eq!(
            bar0.read::<u32>(undefined).unwrap(),
            0xffff_ffff,
            "offset {undefined:#x}"
        );
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn register_state_survives_close_and_reopen() {
    let dev = Device::open(edu()).unwrap();
    dev.bar(0).unwrap().write::<u32>(LIVENESS, 0x5a5a_0001).unwrap();
    drop(dev);
    let dev = Device::open(edu()).unwrap();
    assert_eq!(dev.bar(0).unwrap().read::<u32>(LIVENESS).unwrap(), !0x5a5a_0001);
    drop(dev);
    for _ in 0..3 {
        let dev = Device::open(edu()).unwrap();
        assert_eq!(dev.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn one_container_serves_two_devices() {
    let container = barmap::Container::new().unwrap();
    let edu_dev = Device::open_in(&container, edu()).unwrap();
    let testdev = Device::open_in(&container, common::testdev()).unwrap();
    assert_ne!(
        edu_dev.iommu_group(),
        testdev.iommu_group(),
        "the devices sit in groups of their own"
    );
    assert_eq!(edu_dev.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
    testdev.bar(0).unwrap().write::<u8>(0, 0).unwrap();
    assert_eq!(testdev.bar(1).unwrap().read::<u32>(4).unwrap(), 0x800);
    testdev.bar(0).unwrap().write::<u8>(0, 0xff).unwrap();
    drop(edu_dev);
    // The container stays usable for the other device and for reopening.
    let edu_again = Device::open_in(&container, edu()).unwrap();
    assert_eq!(edu_again.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
}
