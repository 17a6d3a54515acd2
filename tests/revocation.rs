//! Revocation and reset: vfio-pci zaps every BAR mapping while memory
//! decoding is off or a reset runs. Accesses through a region then reach the
//! fault handler (SIGBUS on a mapped page, SIGSEGV on a trapped one), which
//! serves them with pread/pwrite; a device that refuses gets PCIe's answer
//! (all-ones reads, dropped writes) and the region records it.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use barmap::config::regs::{PCI_CAPABILITY_LIST, PCI_CAP_ID_VNDR, PCI_COMMAND, PCI_COMMAND_MEMORY};
use barmap::{Device, Error, MapPolicy, Region, RegionIndex, ResetKind};
use common::child::{in_child, run_ignored_child};
use common::{edu, edu_reg, flr_dev, sentinel};

/// Turns memory decoding of `dev` on or off through its command register.
fn set_decode(dev: &Device, on: bool) {
    let config = dev.config().unwrap();
    let command = config.read16(PCI_COMMAND).unwrap();
    let command = if on {
        command | PCI_COMMAND_MEMORY
    } else {
        command & !PCI_COMMAND_MEMORY
    };
    config.write16(PCI_COMMAND, command).unwrap();
}

/// Reads edu's ID register through `region`'s pointer.
fn id_through_pointer(region: &Region) -> u32 {
    let p = region.as_ptr().unwrap();
    // SAFETY: offset 0 is inside BAR0 and 4-byte aligned; the region is live.
    unsafe { p.add(edu_reg::ID as usize).cast::<u32>().read_volatile() }
}

fn assert_refused(error: Option<Error>, at_least: u64) {
    match error {
        Some(Error::Refused { count, source, .. }) => {
            assert!(count >= at_least, "{count} refused, expected at least {at_least}");
            assert_eq!(source.raw_os_error(), Some(libc::EIO), "{source}");
        }
        other => panic!("expected a refused-access record, got {other:?}"),
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn decode_off_gives_typed_errors_or_all_ones_and_kills_nothing() {
    let dev = Device::open(edu()).unwrap();
    let mapped = dev.bar(0).unwrap();
    let trapped = dev
        .region(RegionIndex::bar(0).unwrap(), MapPolicy::TrapAll)
        .unwrap();
    assert!(mapped.is_fully_mapped() && trapped.mapped_ranges().is_empty());
    assert_eq!(mapped.read::<u32>(edu_reg::ID).unwrap(), edu_reg::ID_VALUE);

    set_decode(&dev, false);
    // Typed read of the mapping: SIGBUS, served with pread, refused: a typed error.
    let err = mapped.read::<u32>(edu_reg::ID).unwrap_err();
    assert!(matches!(&err, Error::Refused { count: 1, .. }), "{err:?}");
    // Through the pointer: PCIe's all-ones, recorded.
    assert_eq!(id_through_pointer(&mapped), u32::MAX);
    assert_refused(mapped.take_error(), 1);
    assert!(mapped.take_error().is_none(), "taking the record clears it");
    // A typed write is dropped and says so, on the mapping and on the syscall path.
    let err = mapped.write::<u32>(edu_reg::LIVENESS, 0x1234_5678).unwrap_err();
    assert!(matches!(&err, Error::Refused { count: 1, .. }), "{err:?}");
    let err = trapped.write::<u32>(edu_reg::LIVENESS, 0x1234_5678).unwrap_err();
    assert!(matches!(&err, Error::Refused { count: 1, .. }), "{err:?}");
    assert!(mapped.take_error().is_none() && trapped.take_error().is_none());
    // The trapped region: the pointer gets all-ones, recorded; a typed read
    // says Refused, as on the mapping.
    assert_eq!(id_through_pointer(&trapped), u32::MAX);
    assert_refused(trapped.take_error(), 1);
    let err = trapped.read::<u32>(edu_reg::ID).unwrap_err();
    assert!(
        matches!(&err, Error::Refused { count: 1, source, .. } if source.raw_os_error() == Some(libc::EIO)),
        "{err:?}"
    );

    set_decode(&dev, true);
    assert_eq!(mapped.read::<u32>(edu_reg::ID).unwrap(), edu_reg::ID_VALUE);
    assert_eq!(id_through_pointer(&mapped), edu_reg::ID_VALUE);
    assert_eq!(id_through_pointer(&trapped), edu_reg::ID_VALUE);
    assert!(mapped.take_error().is_none() && trapped.take_error().is_none());
    // The dropped write never reached the device.
    mapped.write::<u32>(edu_reg::LIVENESS, 7).unwrap();
    assert_eq!(mapped.read::<u32>(edu_reg::LIVENESS).unwrap(), !7);
}

/// Printed by the child of the test below once it has checked everything.
const UNSERVED_CHECKED: &str = "edu without the fault handler: all checked";

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_without_the_fault_handler_works_and_leaves_the_signal_handlers_alone() {
    if !in_child() {
        // A child of its own: it installs process-wide signal handlers, and
        // must see no other region's.
        let child =
            run_ignored_child("edu_without_the_fault_handler_works_and_leaves_the_signal_handlers_alone");
        child.assert_passed();
        assert!(
            child.stdout.contains(UNSERVED_CHECKED),
            "the child did not get to its end: {child}"
        );
        return;
    }
    sentinel::install();
    let dev = Device::open(edu()).unwrap();
    let builder = || {
        dev.region_builder(RegionIndex::bar(0).unwrap())
            .unwrap()
            .without_fault_handler()
    };
    // Fully mapped: typed accesses and the pointer reach the device directly.
    let bar0 = builder().build().unwrap();
    assert!(bar0.is_fully_mapped());
    assert_eq!(bar0.read::<u32>(edu_reg::ID).unwrap(), edu_reg::ID_VALUE);
    bar0.write::<u32>(edu_reg::LIVENESS, 0x1234_5678).unwrap();
    assert_eq!(bar0.read::<u32>(edu_reg::LIVENESS).unwrap(), !0x1234_5678);
    assert_eq!(id_through_pointer(&bar0), edu_reg::ID_VALUE);
    // Nothing mapped: the syscall path, which needs no handler, and says
    // Refused while decoding is off where a mapping would raise SIGBUS.
    let io_only = builder().policy(MapPolicy::TrapAll).build().unwrap();
    assert!(io_only.mapped_ranges().is_empty() && io_only.as_ptr().is_err());
    assert_eq!(io_only.read::<u32>(edu_reg::ID).unwrap(), edu_reg::ID_VALUE);
    set_decode(&dev, false);
    let err = io_only.read::<u32>(edu_reg::ID).unwrap_err();
    assert!(matches!(&err, Error::Refused { count: 1, .. }), "{err:?}");
    let err = io_only.write::<u32>(edu_reg::LIVENESS, 1).unwrap_err();
    assert!(matches!(&err, Error::Refused { count: 1, .. }), "{err:?}");
    set_decode(&dev, true);
    assert_eq!(bar0.read::<u32>(edu_reg::ID).unwrap(), edu_reg::ID_VALUE);
    assert_eq!(
        sentinel::in_place(),
        [true, true],
        "barmap installed a signal handler"
    );
    println!("{UNSERVED_CHECKED}");
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn threads_see_right_values_or_recorded_all_ones_while_decode_toggles() {
    let dev = Device::open(edu()).unwrap();
    let mapped = Arc::new(dev.bar(0).unwrap());
    let trapped = Arc::new(
        dev.region(RegionIndex::bar(0).unwrap(), MapPolicy::TrapAll)
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ones = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let refused = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let readers: Vec<_> = (0..8)
        .map(|t| {
            let region = if t % 2 == 0 {
                mapped.clone()
            } else {
                trapped.clone()
            };
            let (stop, ones, refused) = (stop.clone(), ones.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let value = id_through_pointer(&region);
                    assert!(
                        value == edu_reg::ID_VALUE || value == u32::MAX,
                        "thread {t} read {value:#x}"
                    );
                    if value == u32::MAX {
                        ones[t % 2].fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(Error::Refused { count, .. }) = region.take_error() {
                        refused[t % 2].fetch_add(count, Ordering::Relaxed);
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for _ in 0..40 {
        set_decode(&dev, false);
        std::thread::sleep(Duration::from_millis(3));
        set_decode(&dev, true);
        std::thread::sleep(Duration::from_millis(3));
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers
        .into_iter()
        .map(|r| r.join().expect("a reader died"))
        .sum();
    for (i, region) in [&mapped, &trapped].into_iter().enumerate() {
        if let Some(Error::Refused { count, .. }) = region.take_error() {
            refused[i].fetch_add(count, Ordering::Relaxed);
        }
        let (ones, refused) = (
            ones[i].load(Ordering::Relaxed),
            refused[i].load(Ordering::Relaxed),
        );
        assert!(
            refused >= ones,
            "region {i}: {ones} all-ones reads but {refused} recorded refusals"
        );
        assert_eq!(id_through_pointer(region), edu_reg::ID_VALUE);
    }
    assert!(reads > 0);
}

/// The offset in BAR `bar` of a virtio device's common configuration, from
/// its vendor capabilities (cfg_type 1).
fn virtio_common_cfg(dev: &Device) -> (u32, u64) {
    let config = dev.config().unwrap();
    let mut at = config.read8(PCI_CAPABILITY_LIST).unwrap() as u16;
    while at != 0 {
        if config.read8(at).unwrap() == PCI_CAP_ID_VNDR && config.read8(at + 3).unwrap() == 1 {
            let bar = u32::from(config.read8(at + 4).unwrap());
            return (bar, u64::from(config.read32(at + 8).unwrap()));
        }
        at = config.read8(at + 1).unwrap() as u16;
    }
    panic!("no virtio common configuration capability on {}", dev.address());
}

/// `device_status` in virtio's common configuration.
const VIRTIO_DEVICE_STATUS: u64 = 0x14;

#[test]
#[ignore = "needs QEMU's virtio-rng behind a PCIe root port bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_function_reset_resets_the_device_and_mappings_work_after() {
    let dev = Device::open(flr_dev()).unwrap();
    let (bar, common) = virtio_common_cfg(&dev);
    let region = dev.bar(bar).unwrap();
    let status = common + VIRTIO_DEVICE_STATUS;
    region.write::<u8>(status, 1).unwrap(); // ACKNOWLEDGE
    assert_eq!(region.read::<u8>(status).unwrap(), 1);
    assert_eq!(dev.reset().unwrap(), ResetKind::Function);
    assert_reset_cleared_status(&region, status, "the reset");
}

/// Renames `/dev/vfio/GROUP` until dropped, so that no open file of this
/// process links to that path: a search of /proc/self/fd for the group's
/// descriptor finds nothing, as when its number was closed and reused.
struct HiddenGroupNode {
    node: PathBuf,
    hidden: PathBuf,
}

impl HiddenGroupNode {
    fn new(group: u32) -> HiddenGroupNode {
        let node = PathBuf::from(format!("/dev/vfio/{group}"));
        let hidden = PathBuf::from(format!("/dev/vfio/hidden-{group}"));
        std::fs::rename(&node, &hidden).unwrap();
        HiddenGroupNode { node, hidden }
    }
}

impl Drop for HiddenGroupNode {
    fn drop(&mut self) {
        let _ = std::fs::rename(&self.hidden, &self.node);
    }
}

#[test]
#[ignore = "needs QEMU's virtio-rng behind a PCIe root port bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_bus_reset_uses_the_group_descriptor_the_device_holds() {
    // Group descriptors prove ownership only through the group interface.
    let open = || {
        Device::builder(flr_dev())
            .interface(barmap::Interface::Group)
            .open()
    };
    let dev = open().unwrap();
    let (bar, common) = virtio_common_cfg(&dev);
    let region = dev.bar(bar).unwrap();
    let status = common + VIRTIO_DEVICE_STATUS;
    region.write::<u8>(status, 1).unwrap(); // ACKNOWLEDGE
    assert_eq!(region.read::<u8>(status).unwrap(), 1);
    let reset = {
        let _hidden = HiddenGroupNode::new(dev.iommu_group());
        dev.reset_bus()
    };
    // The kernel checks the group descriptors first (EINVAL or EBADF when
    // they are not the groups'); what fails after that is the reset itself:
    // 6.12 gives ENOTTY when the root port's link does not come back within
    // 100 ms, which QEMU's root port under TCG can miss.
    match &reset {
        Ok(()) => {}
        Err(Error::Vfio { source, .. }) => {
            let errno = source
                .downcast_ref::<std::io::Error>()
                .and_then(|e| e.raw_os_error());
            assert!(
                !matches!(errno, Some(libc::EINVAL | libc::EBADF)),
                "the kernel refused the group descriptors: {reset:?}"
            );
            return;
        }
        Err(e) => panic!("{e:?}"),
    }
    assert_reset_cleared_status(&region, status, "the bus reset");
    drop((region, dev));
    // The held descriptor closes with the device: the group can be opened again.
    let again = open().unwrap();
    assert_eq!(again.reset().unwrap(), ResetKind::Function);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_bus_reset_of_the_root_bus_is_unsupported() {
    let dev = Device::open(edu()).unwrap();
    let err = dev.reset_bus().unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { addr, .. } if *addr == dev.address()),
        "{err:?}"
    );
}

#[test]
#[ignore = "needs QEMU's virtio-rng behind a PCIe root port bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn accesses_during_resets_wait_them_out() {
    let dev = Device::open(flr_dev()).unwrap();
    let (bar, common) = virtio_common_cfg(&dev);
    let region = Arc::new(dev.bar(bar).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (region, stop) = (region.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // num_queues: 1 for virtio-rng, whatever the reset state.
                    match region.read::<u16>(common + 0x12) {
                        Ok(queues) => assert_eq!(queues, 1),
                        Err(e) => panic!("a read during a reset failed: {e}"),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for _ in 0..10 {
        assert_eq!(dev.reset().unwrap(), ResetKind::Function);
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers
        .into_iter()
        .map(|r| r.join().expect("a reader died"))
        .sum();
    assert!(reads > 0);
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_device_without_any_reset_says_so() {
    let dev = Device::open(edu()).unwrap();
    let err = dev.reset().unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { addr, .. } if *addr == dev.address()),
        "{err:?}"
    );
    assert_eq!(
        dev.bar(0).unwrap().read::<u32>(edu_reg::ID).unwrap(),
        edu_reg::ID_VALUE
    );
}

/// After a reset (`what`), virtio's `device_status` at `status` reads 0, the
/// mapping still works, and no access was refused.
fn assert_reset_cleared_status(region: &Region, status: u64, what: &str) {
    assert_eq!(
        region.read::<u8>(status).unwrap(),
        0,
        "{what} cleared device_status"
    );
    region.write::<u8>(status, 1).unwrap();
    assert_eq!(
        region.read::<u8>(status).unwrap(),
        1,
        "the mapping works after {what}"
    );
    region.write::<u8>(status, 0).unwrap();
    assert!(region.take_error().is_none());
}
