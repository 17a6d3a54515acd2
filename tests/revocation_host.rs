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

use barmap::{Error, FdRegion, Region, RegionIndex};
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
    // Writes are dropped: a typed one says so, one through the pointer is
    // recorded.
    let err = region.write::<u32>(0x20, 0x1234).unwrap_err();
    assert!(matches!(&err, Error::Refused { count: 1, .. }), "{err:?}");
    // SAFETY: as above.
    unsafe {
        region
            .as_mut_ptr()
            .unwrap()
            .add(0x28)
            .cast::<u64>()
            .write_volatile(7)
    };
    assert_refused(region.take_error(), 1);
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

/// `result` is [`Error::Refused`] for `counts` accesses with `EIO`, and the
/// error took the region's record with it.
fn assert_refused_err<T: std::fmt::Debug>(
    region: &Region,
    result: barmap::Result<T>,
    counts: std::ops::RangeInclusive<u64>,
    what: &str,
) {
    match result {
        Err(Error::Refused { count, source, .. }) => {
            assert!(counts.contains(&count), "{what}: {count} refused");
            assert_eq!(source.raw_os_error(), Some(libc::EIO), "{what}: {source}");
        }
        other => panic!("{what}: expected Err(Refused), got {other:?}"),
    }
    assert!(region.take_error().is_none(), "{what}: the error took the record");
}

/// Every typed write form at `at` on a revoked `region` says `Refused`.
fn assert_every_write_refused(region: &Region, at: u64, what: &str) {
    let w = |form: &str| format!("{what}: {form} at {at:#x}");
    assert_refused_err(region, region.write::<u8>(at, 1), 1..=1, &w("write::<u8>"));
    assert_refused_err(region, region.write::<u16>(at, 1), 1..=1, &w("write::<u16>"));
    assert_refused_err(region, region.write::<u32>(at, 1), 1..=1, &w("write::<u32>"));
    assert_refused_err(region, region.write::<u64>(at, 1), 1..=1, &w("write::<u64>"));
    assert_refused_err(region, region.write_width(at, 4, 1), 1..=1, &w("write_width"));
    assert_refused_err(region, region.write_bytes(at, &[1; 7]), 1..=3, &w("write_bytes"));
    assert_refused_err(
        region,
        region.write_slice::<u16>(at, &[1; 3]),
        1..=3,
        &w("write_slice"),
    );
}

/// Every typed read form at `at` on a revoked `region` says `Refused`.
fn assert_every_read_refused(region: &Region, at: u64, what: &str) {
    let r = |form: &str| format!("{what}: {form} at {at:#x}");
    assert_refused_err(region, region.read::<u8>(at), 1..=1, &r("read::<u8>"));
    assert_refused_err(region, region.read::<u16>(at), 1..=1, &r("read::<u16>"));
    assert_refused_err(region, region.read::<u32>(at), 1..=1, &r("read::<u32>"));
    assert_refused_err(region, region.read::<u64>(at), 1..=1, &r("read::<u64>"));
    assert_refused_err(region, region.read_width(at, 4), 1..=1, &r("read_width"));
    assert_refused_err(
        region,
        region.read_bytes(at, &mut [0; 7]),
        1..=3,
        &r("read_bytes"),
    );
    assert_refused_err(
        region,
        region.read_slice::<u16>(at, &mut [0; 3]),
        1..=3,
        &r("read_slice"),
    );
}

#[test]
fn every_typed_access_to_a_revoked_mapping_returns_refused() {
    // Fully mapped: the inlined fast path, whose store faults and is refused.
    let dev = Device::new(2 * PAGE);
    let region = mapped(&dev);
    revoke(&dev);
    assert_every_write_refused(&region, 0x10, "fully mapped");
    assert_every_read_refused(&region, 0x10, "fully mapped");
    restore(&dev);
    assert_eq!(dev.peek(0, 0x20), [0; 0x20], "no dropped write landed");
    assert!(region.take_error().is_none());

    // Half mapped: the mapped page through the general slow path's store,
    // the trapped page through the slow path's pwrite, which says EIO.
    let dev = Device::new(2 * PAGE);
    let region = dev.sparse(&[barmap::SparseArea {
        offset: 0,
        size: PAGE,
    }]);
    assert!(region.is_trapped(PAGE) && !region.is_trapped(0));
    revoke(&dev);
    for at in [0x10, PAGE + 0x10] {
        assert_every_write_refused(&region, at, "half mapped");
        assert_every_read_refused(&region, at, "half mapped");
    }
    restore(&dev);
    assert_eq!(dev.peek(0, 2 * PAGE as usize), vec![0; 2 * PAGE as usize]);
}

/// A memfd of `len` bytes mapped into this process, reached through
/// `/proc/self/mem`: a descriptor whose `pread`/`pwrite` fail with `EIO`
/// while the memfd is truncated, as a VFIO region's do while the device's
/// memory decoding is off.
struct ProcMem {
    memfd: std::sync::Arc<std::os::fd::OwnedFd>,
    addr: usize,
    len: usize,
    mem: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl ProcMem {
    fn new(len: u64) -> ProcMem {
        let memfd = memfd(len);
        // SAFETY: a fresh shared mapping of our own memfd, unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/proc/self/mem")
            .unwrap();
        ProcMem {
            memfd,
            addr: p as usize,
            len: len as usize,
            mem: std::sync::Arc::new(mem.into()),
        }
    }

    /// A region of the emulated device over it, with nothing mapped: every
    /// typed access is one `pread`/`pwrite` on `/proc/self/mem`.
    fn region(&self) -> Region {
        let io = FdRegion::new(self.mem.clone(), self.addr as u64, self.len as u64);
        Region::fd_builder(
            common::emulated::emulated_addr(),
            RegionIndex::bar(0).unwrap(),
            io,
        )
        .build()
        .unwrap()
    }
}

impl Drop for ProcMem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[test]
fn every_typed_access_on_the_syscall_path_of_a_refusing_device_returns_refused() {
    let mem = ProcMem::new(PAGE);
    let region = mem.region();
    assert!(region.mapped_ranges().is_empty());
    region.write::<u32>(0x10, 0xfeed).unwrap();
    assert_eq!(region.read::<u32>(0x10).unwrap(), 0xfeed);
    truncate(&mem.memfd, 0);
    assert_every_write_refused(&region, 0x10, "syscall path");
    assert_every_read_refused(&region, 0x10, "syscall path");
    truncate(&mem.memfd, PAGE);
    assert_eq!(region.read::<u32>(0x10).unwrap(), 0, "the file came back empty");
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
