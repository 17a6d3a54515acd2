//! Bad input gives a clear, typed error and leaves the device and the process intact.

mod common;

use barmap::{Device, Error, ErrorKind, MapPolicy, PciAddress, RegionIndex};
use common::group_holder::GroupHolder;
use common::{edu, missing_address, testdev};

#[test]
fn malformed_addresses_are_refused() {
    for bad in ["", "0000:00:03", "00:03.8", "00:20.0", "xx:03.0", "0000:00:03.0/"] {
        let err = bad.parse::<PciAddress>().unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }), "{bad:?}: {err}");
    }
}

#[test]
fn a_missing_device_is_named() {
    let addr = missing_address();
    let err = Device::open(addr).unwrap_err();
    assert!(
        matches!(err, Error::DeviceNotFound { addr: a, .. } if a == addr),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert_eq!((err.kind(), err.errno()), (ErrorKind::NotFound, None));
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_device_without_vfio_pci_is_refused() {
    // The q35 host bridge has no driver in the test guest.
    let bridge: PciAddress = "0000:00:00.0".parse().unwrap();
    let err = Device::open(bridge).unwrap_err();
    assert!(matches!(err, Error::NotBoundToVfio { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
    assert!(
        err.to_string().contains("0000:00:00.0") && err.to_string().contains("vfio-pci"),
        "{err}"
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn regions_that_do_not_exist_are_refused() {
    let dev = Device::open(testdev()).unwrap();
    for n in [2, 3, 4, 5, 6, 100] {
        let err = dev.bar(n).unwrap_err();
        assert!(matches!(err, Error::NoSuchRegion { .. }), "bar{n}: {err}");
    }
    let err = dev.region(RegionIndex::new(42), MapPolicy::Direct).unwrap_err();
    assert!(
        matches!(err, Error::NoSuchRegion { region, .. } if region == RegionIndex::new(42)),
        "{err}"
    );
    // edu has no expansion ROM (pci-testdev gets one from qemu-scripts).
    let edu_dev = Device::open(edu()).unwrap();
    assert!(matches!(
        edu_dev.region(RegionIndex::ROM, MapPolicy::Direct),
        Err(Error::NoSuchRegion { .. })
    ));
    assert!(
        dev.bar(0).unwrap().read::<u32>(0).is_ok(),
        "the device still works"
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_group_held_by_another_process_is_busy() {
    let addr = edu();
    // Through the group interface, which every guest kernel has (on the
    // iommufd kernel, tests/interface.rs covers the cdev's answer).
    let open = || Device::builder(addr).interface(barmap::Interface::Group).open();
    let group = open().unwrap().iommu_group();
    let result = {
        let _holder = GroupHolder::hold(group);
        open()
    };
    let err = result.unwrap_err();
    assert!(
        matches!(err, Error::GroupBusy { group: g, .. } if g == group),
        "{err}"
    );
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Busy, Some(libc::EBUSY)));
    let text = err.to_string();
    assert!(
        text.contains(&format!("group {group}")) && text.contains("busy"),
        "{text}"
    );
    // Once the other process is gone the device opens again.
    assert_eq!(
        open().unwrap().bar(0).unwrap().read::<u32>(0).unwrap(),
        0x0100_00ed
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn config_space_goes_through_the_syscall_path() {
    let dev = Device::open(edu()).unwrap();
    let config = dev.region(RegionIndex::CONFIG, MapPolicy::Direct).unwrap();
    assert!(config.mapped_ranges().is_empty(), "config space is never mapped");
    assert_eq!(config.read::<u16>(0).unwrap(), 0x1234);
    assert!(matches!(
        config.read::<u32>(0x100).unwrap_err(),
        Error::OutOfRange { .. }
    ));
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn unbinding_and_rebinding_through_sysfs() {
    let sysfs = barmap::Sysfs::default();
    let addr = testdev();
    let group = sysfs
        .device(addr)
        .unwrap()
        .iommu_group
        .expect("pci-testdev has an IOMMU group");
    // pci-testdev has no kernel driver of its own: unbinding leaves it driverless.
    assert_eq!(sysfs.unbind(addr, None).unwrap(), None);
    assert_eq!(sysfs.device(addr).unwrap().driver, None);
    let err = Device::open(addr).unwrap_err();
    assert!(matches!(err, Error::NotBoundToVfio { driver: None, .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert_eq!(sysfs.bind_vfio(addr).unwrap(), group);
    assert_eq!(sysfs.bind_vfio(addr).unwrap(), group, "binding again is a no-op");
    assert_eq!(sysfs.device(addr).unwrap().driver.as_deref(), Some("vfio-pci"));
    assert!(Device::open(addr).unwrap().bar(0).unwrap().read::<u8>(1).is_ok());
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn the_expansion_rom_is_read_only() {
    // qemu-scripts gives pci-testdev a 4 KiB ROM image (see testdev_rom in qemu-scripts/lib.sh).
    let dev = Device::open(testdev()).unwrap();
    let info = dev.region_info(RegionIndex::ROM).unwrap();
    assert_eq!(info.size, 0x1000);
    assert!(
        info.flags.readable() && !info.flags.writable() && !info.flags.mmapable(),
        "{}",
        info.flags
    );
    let rom = dev.region(RegionIndex::ROM, MapPolicy::Direct).unwrap();
    assert_eq!(rom.read::<u16>(0).unwrap(), 0xaa55, "ROM signature");
    let mut text = [0u8; 22];
    rom.read_bytes(0x40, &mut text).unwrap();
    assert_eq!(&text, b"barmap pci-testdev ROM");
    let err = rom.write::<u32>(0, 0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ReadOnly {
                region: RegionIndex::ROM,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("read-only") && err.to_string().contains("rom"),
        "{err}"
    );
    assert!(matches!(
        rom.write_bytes(0x40, b"x").unwrap_err(),
        Error::ReadOnly { .. }
    ));
    assert_eq!(
        rom.read::<u16>(0).unwrap(),
        0xaa55,
        "unchanged after the refused writes"
    );
}
