//! Revoked mappings on any host: a memfd mapping whose file is truncated
//! raises SIGBUS (`BUS_ADRERR`), as a BAR mapping does while vfio-pci has
//! revoked it. barmap's SIGBUS handler serves the access through the slow
//! path; a slow path that refuses (`EIO`) gets PCIe's answer, all-ones reads
//! and dropped writes, recorded on the region. Other SIGBUSes go to the
//! handler installed before barmap's.
#![cfg(target_arch = "x86_64")]

mod common;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use barmap::{Error, Region};
use common::child::{in_child, run_child};
use common::emulated::{emulated, memfd, truncate, Device, PAGE};

fn mapped(dev: &Device) -> Region {
    dev.sparse(&[dev.whole()])
}

/// Revokes the mapping (the file is gone under it) and makes the slow path refuse.
fn revoke(dev: &Device) {
    truncate(&dev.fd, 0);
    dev.slow.refuse(true);
}

fn restore(dev: &Device) {
    truncate(&dev.fd, dev.size);
    dev.slow.refuse(false);
}

fn assert_refused(error: Option<Error>, count: u64) {
    match error {
        Some(Error::Refused { count: c, source, .. }) => {
            assert_eq!(c, count);
            assert_eq!(source.raw_os_error(), Some(libc::EIO));
        }
        other => panic!("expected {count} refused accesses, got {other:?}"),
    }
}

#[test]
fn a_revoked_mapping_reads_all_ones_drops_writes_and_records_it() {
    let dev = Device::new(2 * PAGE);
    let region = mapped(&dev);
    assert!(region.is_fully_mapped());
    region.write::<u32>(0x10, 0xfeed).unwrap();
    assert_eq!(dev.slow.calls(), 0, "mapped accesses never take the slow path");

    revoke(&dev);
    // The typed fast path: SIGBUS, served, refused, reported.
    let err = region.read::<u32>(0x10).unwrap_err();
    assert!(matches!(&err, Error::Refused { count: 1, .. }), "{err:?}");
    assert_eq!(dev.slow.calls(), 1);
    // Through the pointer, every width reads all-ones.
    let p = region.as_ptr().unwrap();
    // SAFETY: aligned offsets inside the region.
    let got = unsafe {
        (
            p.add(1).read_volatile(),
            p.add(2).cast::<u16>().read_volatile(),
            p.add(8).cast::<u64>().read_volatile(),
        )
    };
    assert_eq!(got, (u8::MAX, u16::MAX, u64::MAX));
    assert_refused(region.take_error(), 3);
    assert!(region.take_error().is_none());
    // Writes are dropped, and recorded.
    region.write::<u32>(0x20, 0x1234).unwrap();
    // SAFETY: as above.
    unsafe {
        region
            .as_mut_ptr()
            .unwrap()
            .add(0x28)
            .cast::<u64>()
            .write_volatile(7)
    };
    assert_refused(region.take_error(), 2);
    // A typed read that finds a real all-ones value is not an error.
    restore(&dev);
    region.write::<u32>(0x30, u32::MAX).unwrap();
    assert_eq!(region.read::<u32>(0x30).unwrap(), u32::MAX);
    // The mapping works again (the file came back empty).
    assert_eq!(
        region.read::<u32>(0x20).unwrap(),
        0,
        "the dropped write never landed"
    );
    assert_eq!(region.read::<u64>(0x28).unwrap(), 0);
    region.write::<u32>(0x10, 0xbeef).unwrap();
    assert_eq!(region.read::<u32>(0x10).unwrap(), 0xbeef);
    assert!(region.take_error().is_none());
}

#[test]
fn a_revoked_mapping_is_served_by_the_slow_path_while_it_answers() {
    // The slow path reads a second file holding the same bytes, as pread
    // answers once a reset is over while the mapping is still revoked.
    let dev = Device::new(PAGE);
    let region = {
        let shown = memfd(PAGE);
        let region = emulated(dev.io())
            .map_from(&*shown, 0, &[dev.whole()])
            .build()
            .unwrap();
        // The mapped file is revoked at once; `dev` keeps answering.
        truncate(&shown, 0);
        region
    };
    dev.poke(0x40, &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(region.read::<u64>(0x40).unwrap(), 0x1122_3344_5566_7788);
    region.write::<u16>(0x48, 0xabcd).unwrap();
    assert_eq!(dev.peek_word(0x48, 2), 0xabcd);
    assert_eq!(dev.slow.calls(), 2, "both accesses went through the slow path");
    assert!(region.take_error().is_none());
}

static PREVIOUS_CODES: AtomicI32 = AtomicI32::new(0);
static PREVIOUS_CALLS: AtomicUsize = AtomicUsize::new(0);
static FIX_FD: AtomicI32 = AtomicI32::new(-1);

/// The SIGBUS handler installed before barmap's: counts, and puts the file
/// back so that the faulting access succeeds when it runs again.
extern "C" fn previous(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    PREVIOUS_CALLS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: SA_SIGINFO handler: `info` is valid.
    PREVIOUS_CODES.store(unsafe { (*info).si_code }, Ordering::SeqCst);
    let fd = FIX_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: ftruncate is async-signal-safe; `fd` is the test's memfd.
        unsafe { libc::ftruncate(fd, PAGE as i64) };
    }
}

fn install_previous() {
    // SAFETY: installs a valid SA_SIGINFO handler for SIGBUS.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = previous as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()), 0);
    }
}

#[test]
fn a_sigbus_outside_every_region_goes_to_the_previous_handler() {
    if !in_child() {
        // A child of its own: it installs process-wide signal handlers.
        run_child("a_sigbus_outside_every_region_goes_to_the_previous_handler").assert_passed();
        return;
    }
    install_previous();
    let dev = Device::new(PAGE);
    let region = mapped(&dev); // installs barmap's handlers over `previous`
    let other = memfd(PAGE);
    // SAFETY: a fresh shared mapping of our own memfd, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            other.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    truncate(&other, 0);
    FIX_FD.store(other.as_raw_fd(), Ordering::SeqCst);
    // SAFETY: the page faults with SIGBUS; `previous` puts the file back and
    // the load then reads its zero page.
    let v = unsafe { p.cast::<u32>().read_volatile() };
    assert_eq!(v, 0);
    assert_eq!(PREVIOUS_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(PREVIOUS_CODES.load(Ordering::SeqCst), libc::BUS_ADRERR);
    assert!(region.take_error().is_none());
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, PAGE as usize) };
}

#[test]
fn a_machine_check_sigbus_goes_to_the_previous_handler() {
    if !in_child() {
        run_child("a_machine_check_sigbus_goes_to_the_previous_handler").assert_passed();
        return;
    }
    install_previous();
    let dev = Device::new(PAGE);
    let region = mapped(&dev);
    // A machine check reported at an address of the region: barmap must not
    // serve it. siginfo_t: si_signo, si_errno, si_code, padding, si_addr.
    let mut info = [0u8; std::mem::size_of::<libc::siginfo_t>()];
    info[0..4].copy_from_slice(&libc::SIGBUS.to_ne_bytes());
    info[8..12].copy_from_slice(&libc::BUS_MCEERR_AR.to_ne_bytes());
    info[16..24].copy_from_slice(&(region.mapping_address() as u64).to_ne_bytes());
    // SAFETY: queues a signal to this very thread with a fully initialised
    // siginfo_t (a positive si_code is allowed to one's own process); it is
    // handled before the system call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            libc::gettid(),
            libc::SIGBUS,
            info.as_ptr(),
        )
    };
    assert_eq!(rc, 0, "rt_tgsigqueueinfo: {}", io::Error::last_os_error());
    assert_eq!(PREVIOUS_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(PREVIOUS_CODES.load(Ordering::SeqCst), libc::BUS_MCEERR_AR);
    assert_eq!(dev.slow.calls(), 0, "barmap did not serve it");
    assert!(region.take_error().is_none());
}
