//! The kernel interface a device is opened through, against a real kernel:
//! the automatic choice matches what the guest harness says the kernel has
//! (`BARMAP_INTERFACE`: `group` on 6.1, 6.12 and 7.3, `iommufd` on the
//! iommufd kernel), forced interfaces, devices held by another open, DMA
//! through a shared IOAS and hot resets through the cdev (run in the guest
//! with --include-ignored).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use barmap::dma::DmaMask;
use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::{Container, Device, Error, ErrorKind, Interface};
use common::edu_dma::{self, contents, CMD_START, CMD_TO_RAM, EDU_BUF, SAFE_LEN};
use common::group_holder::GroupHolder;
use common::{edu, edu_reg::*, flr_dev, testdev};

/// The interface the harness says this kernel's devices go through.
fn harness_interface() -> Interface {
    match std::env::var("BARMAP_INTERFACE").as_deref() {
        Ok("group") => Interface::Group,
        Ok("iommufd") => Interface::Iommufd,
        Ok("noiommu") => Interface::NoIommu,
        other => panic!("BARMAP_INTERFACE is {other:?}: the guest harness names the interface (group, iommufd or noiommu)"),
    }
}

fn assert_edu_works(dev: &Device) {
    let bar0 = dev.bar(0).unwrap();
    assert_eq!(bar0.read::<u32>(ID).unwrap(), ID_VALUE);
    bar0.write::<u32>(LIVENESS, 0x1234_5678).unwrap();
    assert_eq!(bar0.read::<u32>(LIVENESS).unwrap(), !0x1234_5678);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn device_open_picks_the_interface_the_harness_names() {
    let wanted = harness_interface();
    for addr in [edu(), testdev()] {
        let dev = Device::open(addr).unwrap();
        assert_eq!(dev.interface(), wanted, "{addr}");
        assert_eq!(dev.container().interface(), wanted);
        assert!(format!("{dev:?}").contains(&format!("{wanted:?}")), "{dev:?}");
    }
    assert_edu_works(&Device::open(edu()).unwrap());
    // sysfs lists vfio-dev/vfioN on kernels without cdevs too (6.12 does):
    // the node and /dev/iommu decide.
    let vfio_dev = std::fs::read_dir(format!("/sys/bus/pci/devices/{}/vfio-dev", edu()))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let has_node = std::path::Path::new("/dev/vfio/devices").join(vfio_dev).exists();
    let has_iommufd = std::path::Path::new("/dev/iommu").exists();
    assert_eq!(
        has_node && has_iommufd,
        wanted == Interface::Iommufd,
        "the cdev is taken exactly where its node and /dev/iommu exist"
    );
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn forcing_an_interface_uses_it_or_is_the_typed_error_naming_it() {
    let group = Device::builder(edu()).interface(Interface::Group).open().unwrap();
    assert_eq!(group.interface(), Interface::Group);
    assert_edu_works(&group);
    drop(group);
    let forced = Device::builder(edu()).interface(Interface::Iommufd).open();
    if harness_interface() == Interface::Iommufd {
        let dev = forced.unwrap();
        assert_eq!(dev.interface(), Interface::Iommufd);
        assert_edu_works(&dev);
        return;
    }
    let err = forced.unwrap_err();
    match &err {
        Error::VfioUnavailable { interface, path, .. } => {
            assert_eq!(
                (*interface, path.to_str()),
                (Interface::Iommufd, Some("/dev/iommu"))
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (err.kind(), err.errno()),
        (ErrorKind::NotConfigured, Some(libc::ENOENT))
    );
    let text = err.to_string();
    assert!(
        text.contains("VFIO device cdev (iommufd)") && text.contains("CONFIG_IOMMUFD"),
        "{text}"
    );
    let err = Device::builder(edu())
        .interface(Interface::NoIommu)
        .open()
        .unwrap_err();
    assert!(
        err.to_string().contains("noiommu_device_reaches_all_memory"),
        "{err}"
    );
    assert_edu_works(&Device::open(edu()).unwrap());
}

/// Asserts that `err` is the busy error of an open through `interface`:
/// the group's EBUSY, or the cdev's `DeviceBusy` with errno `cdev_errno`.
fn assert_busy(err: &Error, interface: Interface, cdev_errno: i32) {
    assert_eq!(err.kind(), ErrorKind::Busy, "{err:?}");
    if interface == Interface::Iommufd {
        assert!(
            matches!(
                err,
                Error::DeviceBusy {
                    interface: Interface::Iommufd,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.errno(), Some(cdev_errno), "{err:?}");
    } else {
        assert!(matches!(err, Error::GroupBusy { .. }), "{err:?}");
        assert_eq!(err.errno(), Some(libc::EBUSY));
    }
}

/// 6.12 refuses a second open of a bound cdev with EINVAL.
const CDEV_SECOND_OPEN: i32 = libc::EINVAL;

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_second_open_of_a_held_device_is_busy_and_the_first_keeps_working() {
    let interface = harness_interface();
    let first = Device::builder(edu()).interface(interface).open().unwrap();
    let err = Device::builder(edu()).interface(interface).open().unwrap_err();
    assert_busy(&err, interface, CDEV_SECOND_OPEN);
    assert_edu_works(&first);
    drop(first);
    assert_edu_works(&Device::builder(edu()).interface(interface).open().unwrap());
}

/// Set in the child of [`a_device_held_by_another_process_is_busy_and_opens_once_it_is_gone`].
const HOLDER_ENV: &str = "BARMAP_TEST_HOLD_EDU";
const HELD: &str = "barmap test child: edu held";

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_device_held_by_another_process_is_busy_and_opens_once_it_is_gone() {
    if std::env::var_os(HOLDER_ENV).is_some() {
        // The child: hold edu open until the parent closes our stdin.
        let dev = Device::open(edu()).unwrap();
        assert_edu_works(&dev);
        println!("{HELD}");
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        return;
    }
    let name = "a_device_held_by_another_process_is_busy_and_opens_once_it_is_gone";
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let held = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains(HELD));
    let result = Device::open(edu());
    drop(child.stdin.take());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(held, "the child never held edu: {rest:?}");
    assert!(status.success(), "the child failed: {rest:?}");
    assert_busy(&result.unwrap_err(), harness_interface(), CDEV_SECOND_OPEN);
    assert_edu_works(&Device::open(edu()).unwrap());
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_group_open_elsewhere_blocks_the_device_with_ebusy() {
    let interface = harness_interface();
    let group = Device::open(edu()).unwrap().iommu_group();
    let result = {
        let _holder = GroupHolder::hold(group);
        Device::open(edu())
    };
    let err = result.unwrap_err();
    // The cdev's bind sees the open group: EBUSY as well.
    assert_busy(&err, interface, libc::EBUSY);
    if interface == Interface::Iommufd {
        assert!(err.to_string().contains("group is open"), "{err}");
    }
    assert_edu_works(&Device::open(edu()).unwrap());
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn dma_round_trip_on_edu_through_an_address_space_shared_with_testdev() {
    let interface = harness_interface();
    let container = match interface {
        Interface::Iommufd => Container::iommufd().unwrap(),
        _ => Container::new().unwrap(),
    };
    assert_eq!(container.interface(), interface);
    let edu_dev = Device::builder(edu()).container(&container).open().unwrap();
    let testdev_dev = Device::builder(testdev()).container(&container).open().unwrap();
    assert_eq!(
        (edu_dev.interface(), testdev_dev.interface()),
        (interface, interface)
    );
    let bar0 = edu_dev.bar(0).unwrap();
    let dma = edu_dev.dma(DmaMask::bits(28)).unwrap();
    let ranges = dma.iova_ranges().unwrap();
    assert!(!ranges.is_empty());
    assert!(
        ranges
            .iter()
            .all(|&(first, last)| last < 0xfee0_0000 || first > 0xfeef_ffff),
        "the MSI window is reserved: {ranges:x?}"
    );
    let a = dma.alloc(4096).unwrap();
    let b = dma.alloc(4096).unwrap();
    // The other device's buffers come from the same IOVA space.
    let other = testdev_dev.dma(DmaMask::bits(28)).unwrap().alloc(4096).unwrap();
    let iovas = [a.iova(), b.iova(), other.iova()];
    assert!(
        iovas[0] != iovas[1] && iovas[1] != iovas[2] && iovas[0] != iovas[2],
        "{iovas:x?}"
    );
    let sent: Vec<u8> = (0..4096).map(|i| (i * 13 + 5) as u8).collect();
    a.as_volatile_slice().write_slice(&sent, 0).unwrap();
    b.as_volatile_slice().write_slice(&[0xee; 4096], 0).unwrap();
    edu_dma::dma(&bar0, a.iova(), EDU_BUF, SAFE_LEN, CMD_START);
    edu_dma::dma(&bar0, EDU_BUF, b.iova(), SAFE_LEN, CMD_START | CMD_TO_RAM);
    let got = contents(&b);
    assert_eq!(got[..SAFE_LEN], sent[..SAFE_LEN], "byte-identical round trip");
    assert_eq!(got[SAFE_LEN..], [0xee], "nothing past the transfer");
    // Dropping one device leaves the address space to the other.
    drop((a, b, dma, bar0, edu_dev));
    let again = Device::builder(edu()).container(&container).open().unwrap();
    assert_edu_works(&again);
    drop(other);
}

#[test]
#[ignore = "needs QEMU's virtio-rng behind a PCIe root port bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_bus_reset_goes_through_the_interface_the_device_is_opened_through() {
    let dev = Device::open(flr_dev()).unwrap();
    assert_eq!(dev.interface(), harness_interface());
    let config = dev.config().unwrap();
    let vendor = config.read16(0).unwrap();
    let reset = dev.reset_bus();
    eprintln!("bus reset through the {}: {reset:?}", dev.interface());
    match reset {
        Ok(()) => {}
        // 6.12 gives ENOTTY when the root port's link does not come back
        // within 100 ms, which QEMU's root port under TCG can miss; the
        // ownership checks (EINVAL, EPERM, HotResetNotOwned) came before.
        Err(Error::Vfio { ref source, .. })
            if source
                .downcast_ref::<std::io::Error>()
                .and_then(|e| e.raw_os_error())
                == Some(libc::ENOTTY) => {}
        Err(e) => panic!("{e:?}"),
    }
    assert_eq!(
        dev.config().unwrap().read16(0).unwrap(),
        vendor,
        "the device answers after the reset"
    );
    assert_eq!(dev.reset().unwrap(), barmap::ResetKind::Function);
}
