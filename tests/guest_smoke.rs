//! Temporary smoke test for the QEMU guest harness (`qemu-scripts/guest-test.sh`): checks that the guest
//! loaded VFIO and bound both test devices to vfio-pci. To be replaced by real device tests.

use std::path::{Path, PathBuf};

/// The PCI address the harness exported in `var`, e.g. `0000:00:03.0`.
fn device_from_env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run this test in the QEMU guest"))
}

/// The sysfs directory of a PCI device.
fn sysfs_dir(addr: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(addr)
}

/// Asserts that the device in `var` is bound to vfio-pci.
fn assert_bound_to_vfio_pci(var: &str) {
    let addr = device_from_env(var);
    let driver = std::fs::read_link(sysfs_dir(&addr).join("driver"))
        .unwrap_or_else(|e| panic!("{var}={addr} has no driver link: {e}"));
    assert_eq!(
        driver.file_name().and_then(|n| n.to_str()),
        Some("vfio-pci"),
        "{var}={addr}"
    );
}

#[test]
#[ignore = "needs the QEMU guest"]
fn guest_has_vfio_and_bound_devices() {
    assert!(Path::new("/dev/vfio/vfio").exists(), "/dev/vfio/vfio is missing");
    assert_bound_to_vfio_pci("BARMAP_EDU");
    assert_bound_to_vfio_pci("BARMAP_TESTDEV");
    let edu = device_from_env("BARMAP_EDU");
    assert!(
        sysfs_dir(&edu).join("iommu_group").exists(),
        "{edu} has no iommu_group"
    );
}
