//! Interrupts of QEMU edu through VFIO: MSI, INTx, the raise register, the
//! release request, and the error cases (run in the guest with --include-ignored).

mod common;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use barmap::config::regs::PCI_STATUS;
use barmap::{Device, Error, IrqIndex, Region};
use common::{edu, edu_reg::*};

const IRQ_RAISE: u64 = 0x60;
const STATUS_IRQ_ON_DONE: u32 = 0x80;
/// Config status bit 3: the INTx line is asserted.
const PCI_STATUS_INTERRUPT: u16 = 0x08;

/// edu with no interrupt pending and no factorial interrupt armed.
fn quiet_edu() -> (Device, Region) {
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    common::wait_idle(&bar0);
    bar0.write::<u32>(STATUS, 0).unwrap();
    bar0.write::<u32>(IRQ_ACK, 0xffff_ffff).unwrap();
    (dev, bar0)
}

/// Starts n! with the interrupt-on-completion bit set.
fn factorial_with_irq(bar0: &Region, n: u32) {
    bar0.write::<u32>(STATUS, STATUS_IRQ_ON_DONE).unwrap();
    bar0.write::<u32>(FACTORIAL, n).unwrap();
}

fn intx_asserted(dev: &Device) -> bool {
    dev.config().unwrap().read16(PCI_STATUS).unwrap() & PCI_STATUS_INTERRUPT != 0
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_irq_info_matches_the_device() {
    let dev = Device::open(edu()).unwrap();
    let intx = dev.irq_info(IrqIndex::Intx).unwrap();
    assert_eq!((intx.count, intx.flags.bits()), (1, 0x7), "{}", intx.flags);
    assert!(intx.flags.eventfd() && intx.flags.maskable() && intx.flags.automasked());
    let msi = dev.irq_info(IrqIndex::Msi).unwrap();
    assert_eq!(msi.count, 1);
    assert!(msi.flags.eventfd() && msi.flags.noresize() && !msi.flags.maskable());
    assert_eq!(dev.irq_info(IrqIndex::Msix).unwrap().count, 0);
    assert_eq!(dev.irq_info(IrqIndex::Req).unwrap().count, 1);
    // ERR (AER reporting) is refused for edu, a conventional PCI device, by
    // kernels before 7.x; newer ones report the index, with what count they
    // choose. barmap says what the kernel says, and lists exactly those.
    let err = dev.irq_info(IrqIndex::Err);
    match &err {
        Err(Error::NoSuchIrq {
            index: IrqIndex::Err, ..
        }) => {}
        Ok(info) => assert_eq!(info.index, IrqIndex::Err),
        other => panic!("ERR info: {other:?}"),
    }
    assert_eq!(dev.irq_infos().len(), 4 + usize::from(err.is_ok()));
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_factorial_over_msi_then_intx() {
    let (dev, bar0) = quiet_edu();

    let msi = dev.enable_msi(1).unwrap();
    assert!(
        dev.bus_master().unwrap(),
        "MSI needs bus mastering: enabling MSI turns it on"
    );
    let vector = msi.vector(0).unwrap();
    assert_eq!(vector.try_wait().unwrap(), None);
    for (n, result) in [(6, 720), (7, 5040)] {
        factorial_with_irq(&bar0, n);
        assert!(vector.wait(Duration::from_secs(2)).unwrap() >= 1, "MSI for {n}!");
        assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 1);
        assert_eq!(bar0.read::<u32>(FACTORIAL).unwrap(), result);
        assert!(!intx_asserted(&dev), "MSI does not assert INTx");
        bar0.write::<u32>(IRQ_ACK, 1).unwrap();
        assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 0);
    }
    assert_eq!(vector.try_wait().unwrap(), None);
    drop(msi);

    let intx = dev.enable_intx().unwrap();
    let vector = intx.vector(0).unwrap();
    for (n, result) in [(5, 120), (8, 40320)] {
        factorial_with_irq(&bar0, n);
        // The wait unmasks the line the previous interrupt left masked.
        assert!(vector.wait(Duration::from_secs(2)).unwrap() >= 1, "INTx for {n}!");
        assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 1);
        assert_eq!(bar0.read::<u32>(FACTORIAL).unwrap(), result);
        assert!(intx_asserted(&dev), "the line is up until acknowledged");
        bar0.write::<u32>(IRQ_ACK, 1).unwrap();
        assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 0);
        assert!(!intx_asserted(&dev));
    }
    vector.unmask().unwrap();
    assert!(matches!(
        vector.wait(Duration::from_millis(100)),
        Err(Error::IrqTimeout { .. })
    ));
    // Masked, an interrupt is held back until the unmask.
    vector.mask().unwrap();
    factorial_with_irq(&bar0, 3);
    common::wait_idle(&bar0);
    assert_eq!(vector.try_wait().unwrap(), None);
    vector.unmask().unwrap();
    assert!(vector.wait(Duration::from_secs(2)).unwrap() >= 1);
    bar0.write::<u32>(IRQ_ACK, 1).unwrap();
    bar0.write::<u32>(STATUS, 0).unwrap();
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_raise_register_fires_msi_and_ack_clears() {
    let (dev, bar0) = quiet_edu();
    let msi = dev.enable_msi(1).unwrap();
    let vector = msi.vector(0).unwrap();
    bar0.write::<u32>(IRQ_RAISE, 0x1234_0000).unwrap();
    assert!(vector.wait(Duration::from_secs(2)).unwrap() >= 1);
    assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 0x1234_0000);
    bar0.write::<u32>(IRQ_RAISE, 5).unwrap();
    assert!(vector.wait(Duration::from_secs(2)).unwrap() >= 1);
    assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 0x1234_0005);
    bar0.write::<u32>(IRQ_ACK, 0x1234_0000).unwrap();
    assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 5);
    bar0.write::<u32>(IRQ_ACK, 0xffff_ffff).unwrap();
    assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 0);
    // Every raise is one more MSI: two raises count 2.
    bar0.write::<u32>(IRQ_RAISE, 1).unwrap();
    bar0.write::<u32>(IRQ_RAISE, 2).unwrap();
    let mut total = 0;
    while total < 2 {
        total += vector.wait(Duration::from_secs(2)).unwrap();
    }
    assert_eq!(total, 2);
    bar0.write::<u32>(IRQ_ACK, 3).unwrap();
    // wait_any over MSI and the release request: the MSI wins.
    let req = dev.enable_req().unwrap();
    bar0.write::<u32>(IRQ_RAISE, 0x40).unwrap();
    let (which, count) =
        barmap::irq::wait_any(&[req.vector(0).unwrap(), vector], Duration::from_secs(2)).unwrap();
    assert_eq!((which, count), (1, 1));
    assert!(matches!(
        msi.wait_any(Duration::from_millis(50)),
        Err(Error::IrqTimeout {
            index: IrqIndex::Msi,
            ..
        })
    ));
    bar0.write::<u32>(IRQ_ACK, 0x40).unwrap();
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_irq_errors() {
    let (dev, _bar0) = quiet_edu();
    let msi = dev.enable_msi(1).unwrap();
    let start = Instant::now();
    let err = msi
        .vector(0)
        .unwrap()
        .wait(Duration::from_millis(200))
        .unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(
            err,
            Error::IrqTimeout {
                index: IrqIndex::Msi,
                vector: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(matches!(
        msi.vector(1),
        Err(Error::IrqVectorOutOfRange {
            vector: 1,
            count: 1,
            ..
        })
    ));
    assert!(matches!(
        msi.vector(0).unwrap().mask(),
        Err(Error::IrqNotMaskable { .. })
    ));
    assert!(matches!(
        dev.enable_msi(1),
        Err(Error::IrqAlreadyEnabled {
            index: IrqIndex::Msi,
            active: IrqIndex::Msi,
            ..
        })
    ));
    assert!(matches!(
        dev.enable_intx(),
        Err(Error::IrqAlreadyEnabled {
            index: IrqIndex::Intx,
            active: IrqIndex::Msi,
            ..
        })
    ));
    msi.disable().unwrap();
    assert!(matches!(
        dev.enable_msi(2),
        Err(Error::IrqVectorOutOfRange {
            vector: 1,
            count: 1,
            ..
        })
    ));
    assert!(matches!(
        dev.enable_msix(1),
        Err(Error::NoSuchIrq {
            index: IrqIndex::Msix,
            ..
        })
    ));
    // ERR where the kernel refuses it or reports no vector: NoSuchIrq;
    // where it reports one (newer kernels), it can be enabled.
    let err_vectors = dev.irq_info(IrqIndex::Err).map_or(0, |info| info.count);
    match dev.enable_irqs(IrqIndex::Err, 1) {
        Err(Error::NoSuchIrq {
            index: IrqIndex::Err, ..
        }) => assert_eq!(err_vectors, 0),
        Ok(set) => {
            assert!(err_vectors >= 1);
            set.disable().unwrap();
        }
        other => panic!("enabling ERR: {other:?}"),
    }
    // After the disable the index is free again, and INTx with it.
    drop(dev.enable_msi(1).unwrap());
    let mut intx = dev.enable_intx().unwrap();
    assert!(matches!(intx.grow(2), Err(Error::IrqVectorOutOfRange { .. })));
}

#[test]
fn waiting_on_no_vector_is_a_typed_error() {
    for timeout in [Duration::ZERO, Duration::from_secs(1), Duration::MAX] {
        let err = barmap::irq::wait_any(&[], timeout).unwrap_err();
        assert!(matches!(err, Error::IrqNoVectors), "{timeout:?}: {err}");
    }
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_waits_without_a_deadline_return_the_interrupt() {
    let (dev, bar0) = quiet_edu();
    let msi = dev.enable_msi(1).unwrap();
    let vector = msi.vector(0).unwrap();
    bar0.write::<u32>(IRQ_RAISE, 1).unwrap();
    assert!(vector.wait(Duration::MAX).unwrap() >= 1);
    bar0.write::<u32>(IRQ_RAISE, 2).unwrap();
    let (which, count) = msi.wait_any(Duration::MAX).unwrap();
    assert!(which == 0 && count >= 1, "{which} {count}");
    // A wait that blocks before the interrupt arrives.
    let (which, count) = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            bar0.write::<u32>(IRQ_RAISE, 4).unwrap();
        });
        let started = Instant::now();
        let got = barmap::irq::wait_any(&[vector], Duration::MAX).unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        got
    });
    assert!(which == 0 && count >= 1, "{which} {count}");
    assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), 7);
    bar0.write::<u32>(IRQ_ACK, 7).unwrap();
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_intx_masked_by_the_caller_stays_masked_across_waits() {
    let (dev, bar0) = quiet_edu();
    let intx = dev.enable_intx().unwrap();
    let vector = intx.vector(0).unwrap();
    bar0.write::<u32>(IRQ_RAISE, 1).unwrap();
    assert!(vector.wait(Duration::from_secs(2)).unwrap() >= 1);
    bar0.write::<u32>(IRQ_ACK, 1).unwrap();
    // The kernel automasked the line; the caller masks it too, then the
    // device raises it again.
    vector.mask().unwrap();
    bar0.write::<u32>(IRQ_RAISE, 2).unwrap();
    assert!(intx_asserted(&dev));
    let waited = vector.wait(Duration::from_millis(200));
    assert!(
        matches!(waited, Err(Error::IrqTimeout { .. })),
        "the wait unmasked the line the caller masked: {waited:?}"
    );
    assert_eq!(vector.try_wait().unwrap(), None, "try_wait unmasked it");
    assert_eq!(vector.try_wait().unwrap(), None);
    vector.unmask().unwrap();
    assert!(
        vector.wait(Duration::from_secs(2)).unwrap() >= 1,
        "the held-back interrupt arrives on unmask"
    );
    bar0.write::<u32>(IRQ_ACK, 2).unwrap();
    // After the unmask, waits unmask the automasked line again.
    bar0.write::<u32>(IRQ_RAISE, 4).unwrap();
    assert!(vector.wait(Duration::from_secs(2)).unwrap() >= 1);
    bar0.write::<u32>(IRQ_ACK, 4).unwrap();
}

/// Points the device's own descriptor ([`Device::as_raw_fd`], which its
/// config-space accesses use) at a write-only `/dev/null` until dropped, so
/// reading config space fails with `EBADF`. vfio-ioctls' descriptor, which
/// enables and disables interrupts, is untouched.
struct BrokenConfig {
    fd: RawFd,
    saved: OwnedFd,
}

impl BrokenConfig {
    fn new(dev: &Device) -> BrokenConfig {
        let fd = dev.as_raw_fd();
        let saved = dev.as_fd().try_clone_to_owned().unwrap();
        let null = File::options().write(true).open("/dev/null").unwrap();
        // SAFETY: both descriptors are open; dup2 swaps the file behind `fd`
        // atomically, and `saved` keeps the device's file for the restore.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), fd) } >= 0);
        BrokenConfig { fd, saved }
    }
}

impl Drop for BrokenConfig {
    fn drop(&mut self) {
        // SAFETY: as in `new`: puts the device's file back behind `fd`.
        unsafe { libc::dup2(self.saved.as_raw_fd(), self.fd) };
    }
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_a_failed_msi_enable_leaves_the_index_disabled() {
    let (dev, bar0) = quiet_edu();
    {
        let _broken = BrokenConfig::new(&dev);
        assert!(dev.bus_master().is_err(), "config space reads fail");
        // The kernel accepts the MSI enable; turning bus mastering on fails.
        let err = dev.enable_msi(1).unwrap_err();
        assert!(
            !matches!(err, Error::IrqAlreadyEnabled { .. } | Error::NoSuchIrq { .. }),
            "{err}"
        );
    }
    assert!(dev.bus_master().is_ok(), "config space is back");
    // The kernel refuses INTx (EINVAL) while it still has MSI enabled.
    let intx = dev.enable_intx().unwrap();
    bar0.write::<u32>(IRQ_RAISE, 1).unwrap();
    assert!(intx.vector(0).unwrap().wait(Duration::from_secs(2)).unwrap() >= 1);
    bar0.write::<u32>(IRQ_ACK, 1).unwrap();
    drop(intx);
    let msi = dev.enable_msi(1).unwrap();
    assert!(dev.bus_master().unwrap());
    bar0.write::<u32>(IRQ_RAISE, 2).unwrap();
    assert!(msi.vector(0).unwrap().wait(Duration::from_secs(2)).unwrap() >= 1);
    bar0.write::<u32>(IRQ_ACK, 2).unwrap();
}

/// Rebinds edu to vfio-pci when dropped (its driver_override still says vfio-pci).
struct Rebind(barmap::PciAddress);

impl Drop for Rebind {
    fn drop(&mut self) {
        let _ = std::fs::write("/sys/bus/pci/drivers_probe", self.0.to_string());
    }
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_release_request_on_unbind_from_another_process() {
    let addr = edu();
    let rebind = Rebind(addr);
    let dev = Device::open(addr).unwrap();
    let bar0 = dev.bar(0).unwrap();
    let req = dev.enable_req().unwrap();
    let unbind = Command::new("sh")
        .arg("-c")
        .arg(format!("echo {addr} > /sys/bus/pci/drivers/vfio-pci/unbind"))
        .spawn()
        .unwrap();
    let started = Instant::now();
    assert!(req.vector(0).unwrap().wait(Duration::from_secs(20)).unwrap() >= 1);
    let asked_after = started.elapsed();
    // The holder lets go: every handle on the device.
    drop((bar0, req, dev));
    let status = unbind.wait_with_output().unwrap().status;
    assert!(status.success(), "unbind: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the unbind completed only after {:?} (asked after {asked_after:?})",
        started.elapsed()
    );
    let info = barmap::Sysfs::default().device(addr).unwrap();
    assert_eq!(info.driver, None, "the unbind took the device from vfio-pci");
    drop(rebind);
    let info = barmap::Sysfs::default().device(addr).unwrap();
    assert!(info.is_bound_to_vfio(), "rebound: {:?}", info.driver);
    let dev = Device::open(addr).unwrap();
    assert_eq!(dev.bar(0).unwrap().read::<u32>(ID).unwrap(), ID_VALUE);
}
