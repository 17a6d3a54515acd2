//! Config space through VFIO against the kernel's own view in sysfs.

mod common;

use barmap::{Device, MemoryRegion, PciAddress, Sysfs};
use common::{edu, testdev};

/// The device's config space as sysfs shows it (the kernel's copy, not vfio-pci's virtualized one).
fn sysfs_config(addr: PciAddress) -> MemoryRegion {
    let path = Sysfs::default().device_path(addr).join("config");
    MemoryRegion::new(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn check_against_sysfs(addr: PciAddress, expect_caps: &[u8]) {
    let dev = Device::open(addr).unwrap();
    let config = dev.config().unwrap();
    let header = config.header().unwrap();
    let info = Sysfs::default().device(addr).unwrap();
    assert_eq!(
        (header.vendor_id, header.device_id, header.class_code),
        (info.vendor, info.device, info.class)
    );
    assert_eq!(header.subsystem_vendor_id, info.subsystem_vendor);
    assert_eq!(header.subsystem_id, info.subsystem_device);
    let sysfs_bytes = sysfs_config(addr);
    let from_sysfs = barmap::ConfigSpace::new(&sysfs_bytes, addr);
    let ours = config.capabilities().unwrap();
    assert_eq!(
        ours,
        from_sysfs.capabilities().unwrap(),
        "standard capabilities of {addr}"
    );
    assert_eq!(ours.iter().map(|c| c.id).collect::<Vec<_>>(), expect_caps);
    assert_eq!(
        config.extended_capabilities().unwrap(),
        from_sysfs.extended_capabilities().unwrap()
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_header_and_capabilities_match_sysfs() {
    check_against_sysfs(edu(), &[barmap::config::regs::PCI_CAP_ID_MSI]);
    let dev = Device::open(edu()).unwrap();
    let config = dev.config().unwrap();
    assert_eq!(config.read32(0x00).unwrap(), 0x11e8_1234);
    assert_eq!(config.read32(0x08).unwrap(), 0x00ff_0010);
    assert_eq!(config.read32(0x2c).unwrap(), 0x1100_1af4);
    assert_eq!(
        config.read32(0x40).unwrap() & 0xffff,
        0x0000_0005,
        "MSI capability with next 0"
    );
    assert_eq!(config.header().unwrap().interrupt_pin, 1);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn testdev_header_matches_sysfs_and_has_no_capabilities() {
    check_against_sysfs(testdev(), &[]);
    let dev = Device::open(testdev()).unwrap();
    let header = dev.config().unwrap().header().unwrap();
    assert_eq!(
        (header.vendor_id, header.device_id, header.class_code),
        (0x1b36, 0x0005, 0x00ff00)
    );
    assert_eq!(header.interrupt_pin, 0);
    assert!(!header.has_capabilities());
}

/// Sizes BAR `n` the classic way: write all ones, read back, restore.
fn size_bar(dev: &Device, n: u16) -> u32 {
    let config = dev.config().unwrap();
    let at = barmap::config::regs::PCI_BASE_ADDRESS_0 + 4 * n;
    let saved = config.read32(at).unwrap();
    config.write32(at, 0xffff_ffff).unwrap();
    let sized = config.read32(at).unwrap();
    config.write32(at, saved).unwrap();
    assert_eq!(config.read32(at).unwrap(), saved, "BAR{n} restored");
    sized
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn bar_sizing_through_the_vfio_config_region() {
    let dev = Device::open(edu()).unwrap();
    assert_eq!(size_bar(&dev, 0), 0xfff0_0000);
    for n in 1..6 {
        assert_eq!(size_bar(&dev, n), 0, "edu BAR{n}");
    }
    assert_eq!(
        dev.bar(0).unwrap().read::<u32>(0).unwrap(),
        0x0100_00ed,
        "BAR0 still decodes"
    );
    let dev = Device::open(testdev()).unwrap();
    assert_eq!(size_bar(&dev, 0), 0xffff_f000);
    assert_eq!(size_bar(&dev, 1), 0xffff_ff01);
    for n in 2..6 {
        assert_eq!(size_bar(&dev, n), 0, "pci-testdev BAR{n}");
    }
}
