//! The no-IOMMU backend in a guest without an IOMMU (kernel with
//! CONFIG_VFIO_NOIOMMU, `vfio.enable_unsafe_noiommu_mode=1`, huge pages
//! reserved, `BARMAP_INTERFACE=noiommu`; run with --include-ignored): the
//! opt-in, DMA round trips on edu through buffers at physical addresses,
//! NVMe Identify through the userspace driver of examples/nvme, and the
//! kernel's refusals to a child process without `CAP_SYS_RAWIO` (the group)
//! or `CAP_SYS_ADMIN` (the physical addresses in pagemap), and a hot reset of
//! a bus whose two functions are in no-IOMMU groups of their own.
//!
//! QEMU 7.2's edu aborts the VM on a transfer of 0 bytes or one that touches
//! its buffer's byte 0xfff: every transfer here stays inside 0x40000..0x40fff.
//! edu strips DMA addresses to its `dma_mask`: 28 bits by default, which a
//! buffer at a physical address anywhere in the guest's 2 GiB would exceed,
//! so the harness gives the no-IOMMU guest's edu `dma_mask=0xffffffff`
//! (qemu-scripts/lib.sh); barmap refuses a buffer above the mask given.

mod common;
#[allow(dead_code, unused_imports)] // the example's driver: these tests use part of its API
#[path = "../examples/nvme/driver/mod.rs"]
mod driver;

use std::time::Duration;

use barmap::dma::DmaMask;
use barmap::{Container, Device, DmaBuffer, Error, Interface, Region};
use common::capability::{self, report_without, CAP_SYS_ADMIN, CAP_SYS_RAWIO};
use common::edu_dma::{self, *};
use common::nvme_admin::{MODEL, SERIAL};
use common::{edu, edu_reg::*, function_pair, nvme};
use driver::{Controller, Mode, Options};

/// edu's DMA mask in the no-IOMMU guest.
const EDU_MASK: DmaMask = DmaMask::bits(32);

fn noiommu() -> Container {
    Container::noiommu_device_reaches_all_memory().unwrap()
}

fn quiet_edu() -> (Device, Region) {
    let dev = Device::open_in(&noiommu(), edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    edu_dma::quiet(&bar0);
    (dev, bar0)
}

/// A round trip of `len` bytes: `a[from..]` to edu's buffer and back into
/// `b[to..]`; exactly those bytes of `b` change, to `a`'s.
fn round_trip(bar0: &Region, a: &DmaBuffer, from: usize, b: &DmaBuffer, to: usize, len: usize) {
    fill(a, |i| (i * 7 + 3) as u8);
    fill(b, |_| 0xee);
    dma(bar0, a.iova() + from as u64, EDU_BUF, len, CMD_START);
    dma(bar0, EDU_BUF, b.iova() + to as u64, len, CMD_START | CMD_TO_RAM);
    let (a, b) = (contents(a), contents(b));
    assert_eq!(&b[to..to + len], &a[from..from + len], "the copied bytes");
    assert!(
        b[..to].iter().chain(&b[to + len..]).all(|&x| x == 0xee),
        "the rest untouched"
    );
}

#[test]
#[ignore = "needs a no-IOMMU guest (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_guest_is_the_interface_the_harness_says() {
    assert_eq!(std::env::var("BARMAP_INTERFACE").as_deref(), Ok("noiommu"));
    let dev = Device::open_in(&noiommu(), edu()).unwrap();
    assert_eq!(dev.interface(), Interface::NoIommu);
    assert_eq!(dev.container().interface(), Interface::NoIommu);
    assert_eq!(dev.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
}

#[test]
#[ignore = "needs a no-IOMMU guest (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_edu_without_the_opt_in_is_refused_and_opens_after_it() {
    let err = Device::open(edu()).unwrap_err();
    assert!(
        matches!(err, Error::NoIommuWithoutOptIn { addr, .. } if addr == edu()),
        "{err:?}"
    );
    assert!(err.to_string().contains("reach all memory"), "{err}");
    let dev = Device::open_in(&noiommu(), edu()).unwrap();
    assert_eq!(dev.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
}

#[test]
#[ignore = "needs a no-IOMMU guest (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_edu_dma_round_trip_through_page_buffers_at_physical_addresses() {
    let (dev, bar0) = quiet_edu();
    let dma = dev.dma(EDU_MASK).unwrap();
    let a = dma.alloc(4096).unwrap();
    let b = dma.alloc(4096).unwrap();
    assert_eq!((a.size(), b.size()), (4096, 4096));
    assert_ne!(a.iova(), b.iova());
    assert!(a.iova() % 4096 == 0 && a.iova() != 0, "{:#x}", a.iova());
    round_trip(&bar0, &a, 0, &b, 0, SAFE_LEN);
    round_trip(&bar0, &a, 17, &b, 100, 1000);
}

#[test]
#[ignore = "needs a no-IOMMU guest with huge pages reserved (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_edu_dma_round_trip_across_pages_of_a_huge_page_buffer() {
    let (dev, bar0) = quiet_edu();
    let dma = dev.dma(EDU_MASK).unwrap();
    let a = dma.alloc(5 * 4096).unwrap();
    let b = dma.alloc(3 * 4096).unwrap();
    assert_eq!(
        (a.size(), b.size()),
        (2 << 20, 2 << 20),
        "one 2 MiB huge page each"
    );
    assert_eq!(a.iova() % (2 << 20), 0, "{:#x}", a.iova());
    // Both copies cross a 4 KiB page boundary of the buffers: only physical
    // contiguity makes the bytes land where the CPU sees them.
    round_trip(&bar0, &a, 0x3800, &b, 0x1c00, SAFE_LEN);
    round_trip(&bar0, &a, (2 << 20) - 2000, &b, 0x1ff0, 2000);
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001) in a no-IOMMU guest (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_nvme_identify_through_the_userspace_driver() {
    let dev = Device::open_in(&noiommu(), nvme()).unwrap();
    assert_eq!(dev.interface(), Interface::NoIommu);
    let opts = Options {
        queues: 1,
        depth: 4,
        mode: Mode::Poll,
        timeout: Duration::from_secs(10),
    };
    let mut ctrl = Controller::open_device(dev, opts).unwrap();
    assert_eq!(
        (ctrl.info().serial.as_str(), ctrl.info().model.as_str()),
        (SERIAL, MODEL)
    );
    assert_eq!(ctrl.info().vendor, 0x1b36);
    let ids: Vec<u32> = ctrl.namespaces().iter().map(|ns| ns.id).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(ctrl.device().interface(), Interface::NoIommu);
    ctrl.shutdown().unwrap();
}

#[test]
#[ignore = "needs a no-IOMMU guest (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_group_without_cap_sys_rawio_is_missing_capability_from_the_kernels_eperm() {
    assert!(capability::has(CAP_SYS_RAWIO), "the suite runs as root");
    let report = report_without(CAP_SYS_RAWIO, || {
        let container = match Container::noiommu_device_reaches_all_memory() {
            Ok(container) => container,
            Err(e) => return format!("container: {e:?}"),
        };
        match Device::open_in(&container, edu()) {
            Ok(_) => "opened".to_string(),
            Err(
                e @ Error::MissingCapability {
                    capability: "CAP_SYS_RAWIO",
                    interface: Interface::NoIommu,
                    ..
                },
            ) => format!("refused {:?}", e.errno()),
            Err(e) => format!("error: {e:?}"),
        }
    });
    assert_eq!(report, format!("refused {:?}", Some(libc::EPERM)));
    assert!(
        Device::open_in(&noiommu(), edu()).is_ok(),
        "with the capability it opens"
    );
}

#[test]
#[ignore = "needs a no-IOMMU guest (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_dma_without_cap_sys_admin_is_missing_capability_as_pagemap_hides_the_frames() {
    let (dev, _bar0) = quiet_edu();
    let dma = dev.dma(EDU_MASK).unwrap();
    let report = report_without(CAP_SYS_ADMIN, || match dma.alloc(4096) {
        Ok(buf) => format!("allocated at {:#x}", buf.iova()),
        Err(Error::MissingCapability {
            capability: "CAP_SYS_ADMIN",
            interface: Interface::NoIommu,
            ..
        }) => "frames hidden".to_string(),
        Err(e) => format!("error: {e:?}"),
    });
    assert_eq!(report, "frames hidden");
    assert_ne!(dma.alloc(4096).unwrap().iova(), 0, "with the capability");
}

#[test]
#[ignore = "needs the no-IOMMU guest's two-function virtio-rng (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_bus_reset_passes_the_noiommu_group_of_every_function_this_process_holds() {
    let container = noiommu();
    let (first, second) = function_pair();
    let a = Device::open_in(&container, first).unwrap();
    let vendor = a.config().unwrap().read16(0).unwrap();
    assert_eq!(vendor, 0x1af4);
    // The bus also holds the second function, whose group is not open here:
    // the kernel refuses with EINVAL, and the error says why.
    let err = a.reset_bus().unwrap_err();
    assert!(
        matches!(err, Error::Vfio { .. }) && err.errno() == Some(libc::EINVAL),
        "{err:?}"
    );
    assert!(err.to_string().contains("not open in this process"), "{err}");
    let b = Device::open_in(&container, second).unwrap();
    assert_ne!(a.iommu_group(), b.iommu_group(), "a no-IOMMU group per function");
    assert!(
        std::path::Path::new(&format!("/dev/vfio/noiommu-{}", b.iommu_group())).exists(),
        "the second function's group is a no-IOMMU group"
    );
    // With both groups held, the kernel takes the descriptors; what can fail
    // after that is the reset itself (6.12 gives ENOTTY when the root port's
    // link does not come back within 100 ms, which QEMU under TCG can miss).
    let reset = a.reset_bus();
    eprintln!("bus reset with both no-IOMMU groups held: {reset:?}");
    if let Err(err) = &reset {
        assert!(
            matches!(err, Error::Vfio { .. }) && err.errno() == Some(libc::ENOTTY),
            "{err:?}"
        );
    }
    assert_eq!(
        a.config().unwrap().read16(0).unwrap(),
        vendor,
        "the first answers"
    );
    assert_eq!(
        b.config().unwrap().read16(0).unwrap(),
        vendor,
        "the second answers"
    );
}

#[test]
#[ignore = "needs a no-IOMMU guest (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_devices_share_one_container_whose_iommu_the_first_set() {
    let container = noiommu();
    let edu_dev = Device::open_in(&container, edu()).unwrap();
    // The kernel refuses to set the IOMMU again (EINVAL): the second group
    // joins the one the first set.
    let testdev_dev = Device::open_in(&container, common::testdev()).unwrap();
    assert_ne!(edu_dev.iommu_group(), testdev_dev.iommu_group());
    assert_eq!(edu_dev.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
    assert_eq!(testdev_dev.config().unwrap().read16(0).unwrap(), 0x1b36);
    drop(edu_dev);
    // The container still has testdev's group, and edu joins it again.
    let again = Device::open_in(&container, edu()).unwrap();
    assert_eq!(again.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
    drop((again, testdev_dev));
    // With every group gone the kernel dropped the IOMMU; the next open sets it.
    let last = Device::open_in(&container, edu()).unwrap();
    assert_eq!(last.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
}

#[test]
#[ignore = "needs a no-IOMMU guest with huge pages reserved (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_a_dropped_buffers_memory_is_reused_zeroed_at_the_same_physical_address() {
    let (dev, bar0) = quiet_edu();
    let dma = dev.dma(EDU_MASK).unwrap();
    for size in [4096, 8192] {
        let first = dma.alloc(size).unwrap();
        fill(&first, |_| 0x5a);
        let bus = first.iova();
        drop(first);
        let again = dma.alloc(size).unwrap();
        assert_eq!(again.iova(), bus, "size {size:#x}: the retired memory");
        assert!(contents(&again).iter().all(|&b| b == 0), "handed out zeroed");
        round_trip(&bar0, &again, 0, &dma.alloc(size).unwrap(), 0, 100);
    }
}
