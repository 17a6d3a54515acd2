//! Regions opened without the fault handler, on any host
//! (`RegionBuilder::without_fault_handler`): barmap installs no SIGSEGV or
//! SIGBUS handler for them, typed accesses still work everywhere, a pointer
//! is offered only over a fully mapped region, and a revoked mapping (a
//! truncated memfd, as a BAR while vfio-pci has revoked it) raises SIGBUS
//! for the program's own handler. Tests that look at or change the
//! process's signal handlers run in a child of their own.
#![cfg(target_arch = "x86_64")]

mod common;

use std::sync::atomic::Ordering;

use barmap::shadow::Access;
use barmap::{Error, MapPolicy, Region, SparseArea};
use common::child::{fault_next, in_child, run_child};
use common::emulated::{emulated, truncate, Device, PAGE};
use common::sentinel;

/// Printed by a child once it has checked everything, for the parent to find.
const CHECKED: &str = "without-fault-handler child: all checked";

/// BAR0 of `dev`, mapped whole, without the fault handler.
fn unserved(dev: &Device) -> Region {
    emulated(dev.io())
        .map_from(&dev.fd, 0, &[dev.whole()])
        .without_fault_handler()
        .build()
        .unwrap()
}

/// Runs test `name` in a child and checks that it passed and got to its end.
fn run_checked(name: &str) {
    let child = run_child(name);
    child.assert_passed();
    assert!(
        child.stdout.contains(CHECKED),
        "the child did not get to its end: {child}"
    );
}

#[test]
fn a_region_without_the_fault_handler_leaves_the_signal_handlers_alone() {
    if !in_child() {
        run_checked("a_region_without_the_fault_handler_leaves_the_signal_handlers_alone");
        return;
    }
    sentinel::install();
    // Fully mapped: typed accesses and the pointer reach the memfd directly.
    let dev = Device::new(2 * PAGE);
    let region = unserved(&dev);
    assert!(region.is_fully_mapped());
    region.write::<u32>(0x10, 0xfeed_f00d).unwrap();
    assert_eq!(region.read::<u32>(0x10).unwrap(), 0xfeed_f00d);
    region.write_slice::<u64>(PAGE, &[1, 2]).unwrap();
    assert_eq!(dev.peek_word(PAGE + 8, 8), 2);
    // SAFETY: offset 0x10 is inside the fully mapped region, 4-byte aligned.
    let got = unsafe { region.as_ptr().unwrap().add(0x10).cast::<u32>().read_volatile() };
    assert_eq!(got, 0xfeed_f00d);
    assert_eq!(dev.slow.calls(), 0, "nothing took the slow path");
    // Nothing mapped: every typed access is one slow-path call, no fault.
    let io_only = emulated(dev.io())
        .policy(MapPolicy::TrapAll)
        .without_fault_handler()
        .build()
        .unwrap();
    assert_eq!(io_only.read::<u32>(0x10).unwrap(), 0xfeed_f00d);
    io_only.write::<u16>(0x20, 0xabcd).unwrap();
    assert_eq!(dev.peek_word(0x20, 2), 0xabcd);
    assert_eq!(dev.slow.calls(), 2);
    assert_eq!(
        sentinel::in_place(),
        [true, true],
        "barmap installed a signal handler"
    );
    drop((region, io_only));
    assert_eq!(sentinel::in_place(), [true, true]);
    println!("{CHECKED}");
}

#[test]
fn a_region_with_the_fault_handler_installs_it_over_the_programs() {
    // The control of the test above: the default does replace the handlers,
    // so that test would see it.
    if !in_child() {
        run_checked("a_region_with_the_fault_handler_installs_it_over_the_programs");
        return;
    }
    sentinel::install();
    let dev = Device::new(PAGE);
    let region = dev.sparse(&[dev.whole()]);
    assert!(region.is_fully_mapped());
    assert_eq!(
        sentinel::in_place(),
        [false, false],
        "barmap's handlers replaced both"
    );
    println!("{CHECKED}");
}

#[test]
fn without_the_fault_handler_unmapped_pages_have_typed_access_but_no_pointer() {
    // Half mapped: the second page is a hole.
    let dev = Device::with_pattern(2 * PAGE, |i| i as u8);
    let half = emulated(dev.io())
        .map_from(
            &dev.fd,
            0,
            &[SparseArea {
                offset: 0,
                size: PAGE,
            }],
        )
        .without_fault_handler()
        .build()
        .unwrap();
    let trapped = emulated(dev.io())
        .map_from(&dev.fd, 0, &[dev.whole()])
        .policy(MapPolicy::trap_range(PAGE..2 * PAGE))
        .without_fault_handler()
        .build()
        .unwrap();
    for region in [&half, &trapped] {
        assert!(region.is_trapped(PAGE) && !region.is_trapped(0));
        for err in [region.as_ptr().unwrap_err(), region.as_mut_ptr().unwrap_err()] {
            assert!(
                matches!(&err, Error::Unsupported { addr, reason, .. }
                    if *addr == region.address() && reason.contains("without the fault handler")),
                "{err:?}"
            );
        }
        let calls = dev.slow.calls();
        assert_eq!(region.read::<u32>(0x10).unwrap(), 0x1312_1110);
        assert_eq!(dev.slow.calls(), calls, "the mapped page is read directly");
        assert_eq!(region.read::<u32>(PAGE + 4).unwrap(), 0x0706_0504);
        region.write::<u8>(PAGE + 1, 0xee).unwrap();
        assert_eq!(dev.slow.calls(), calls + 2, "the hole goes through the slow path");
        assert_eq!(dev.peek_word(PAGE, 2), 0xee00);
        dev.poke(PAGE, &[0, 1]);
    }
    // A hook is called by the fault handler: refused without it.
    // SAFETY: the hook does nothing.
    let builder = unsafe { emulated(dev.io()).hook(|_: &Access| {}) };
    let err = builder.without_fault_handler().build().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Unsupported {
                what: "an access hook",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn without_the_fault_handler_a_revoked_mapping_raises_sigbus_for_the_program() {
    if !in_child() {
        run_checked("without_the_fault_handler_a_revoked_mapping_raises_sigbus_for_the_program");
        return;
    }
    sentinel::install();
    let dev = Device::new(PAGE);
    let region = unserved(&dev);
    region.write::<u32>(0x10, 0x1234).unwrap();
    truncate(&dev.fd, 0);
    sentinel::RESTORE_FD.store(std::os::fd::AsRawFd::as_raw_fd(&*dev.fd), Ordering::SeqCst);
    // The typed read faults; the program's handler puts the file back (empty)
    // and the load runs again.
    assert_eq!(region.read::<u32>(0x10).unwrap(), 0);
    assert_eq!(sentinel::SIGBUS_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(sentinel::SIGBUS_CODE.load(Ordering::SeqCst), libc::BUS_ADRERR);
    assert_eq!(dev.slow.calls(), 0, "barmap served nothing");
    assert!(region.take_error().is_none(), "no record without the handler");
    println!("{CHECKED}");
}

#[test]
fn without_the_fault_handler_a_revoked_mapping_kills_a_program_without_a_sigbus_handler() {
    if !in_child() {
        let child =
            run_child("without_the_fault_handler_a_revoked_mapping_kills_a_program_without_a_sigbus_handler");
        child.assert_killed_by(libc::SIGBUS);
        return;
    }
    let dev = Device::new(PAGE);
    let region = unserved(&dev);
    region.write::<u32>(0x10, 0x1234).unwrap();
    truncate(&dev.fd, 0);
    fault_next();
    let _ = region.write::<u32>(0x10, 0x5678);
    unreachable!("the store to the revoked page did not raise SIGBUS");
}

#[test]
fn without_the_fault_handler_the_syscall_path_reports_a_refusing_device() {
    let dev = Device::new(PAGE);
    let region = emulated(dev.io())
        .map_from(&dev.fd, 0, &[dev.whole()])
        .policy(MapPolicy::TrapAll)
        .without_fault_handler()
        .build()
        .unwrap();
    assert!(region.mapped_ranges().is_empty());
    dev.slow.refuse(true);
    for err in [
        region.write::<u32>(0x10, 1).unwrap_err(),
        region.read::<u32>(0x10).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Refused { count: 1, source, .. } if source.raw_os_error() == Some(libc::EIO)),
            "{err:?}"
        );
    }
    dev.slow.refuse(false);
    region.write::<u32>(0x10, 7).unwrap();
    assert_eq!(region.read::<u32>(0x10).unwrap(), 7);
}
