//! The no-IOMMU backend in a guest without an IOMMU (kernel with
//! CONFIG_VFIO_NOIOMMU, `vfio.enable_unsafe_noiommu_mode=1`, huge pages
//! reserved, `BARMAP_INTERFACE=noiommu`; run with --include-ignored): the
//! opt-in, DMA round trips on edu through buffers at physical addresses,
//! NVMe Identify through the userspace driver of examples/nvme, and the
//! kernel's refusals to a child process without `CAP_SYS_RAWIO` (the group)
//! or `CAP_SYS_ADMIN` (the physical addresses in pagemap).
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

use std::time::{Duration, Instant};

use barmap::dma::DmaMask;
use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::{Container, Device, DmaBuffer, Error, Interface, Region};
use common::nvme_admin::{MODEL, SERIAL};
use common::{edu, edu_reg::*, nvme};
use driver::{Controller, Mode, Options};

const DMA_DST: u64 = 0x88;
const DMA_COUNT: u64 = 0x90;
const DMA_CMD: u64 = 0x98;
const CMD_START: u64 = 1;
const CMD_TO_RAM: u64 = 2;
/// edu's own buffer, in its address space.
const EDU_BUF: u64 = 0x40000;
/// The most bytes QEMU 7.2's edu copies without aborting.
const SAFE_LEN: usize = 4095;

/// edu's DMA mask in the no-IOMMU guest.
const EDU_MASK: DmaMask = DmaMask::bits(32);

fn noiommu() -> Container {
    Container::noiommu_device_reaches_all_memory().unwrap()
}

fn quiet_edu() -> (Device, Region) {
    let dev = Device::open_in(&noiommu(), edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    common::wait_idle(&bar0);
    wait_dma_idle(&bar0);
    bar0.write::<u32>(STATUS, 0).unwrap();
    bar0.write::<u32>(IRQ_ACK, 0xffff_ffff).unwrap();
    (dev, bar0)
}

fn wait_dma_idle(bar0: &Region) {
    let start = Instant::now();
    while bar0.read::<u64>(DMA_CMD).unwrap() & CMD_START != 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "edu DMA did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Copies `len` bytes (1..=4095, inside edu's buffer) and waits for the end.
fn dma(bar0: &Region, src: u64, dst: u64, len: usize, cmd: u64) {
    assert!(
        (1..=SAFE_LEN).contains(&len),
        "QEMU 7.2 edu aborts on this length"
    );
    bar0.write::<u64>(DMA_SRC, src).unwrap();
    bar0.write::<u64>(DMA_DST, dst).unwrap();
    bar0.write::<u64>(DMA_COUNT, len as u64).unwrap();
    bar0.write::<u64>(DMA_CMD, cmd).unwrap();
    wait_dma_idle(bar0);
}

fn fill(buf: &DmaBuffer, f: impl Fn(usize) -> u8) {
    let bytes: Vec<u8> = (0..buf.size()).map(f).collect();
    buf.as_volatile_slice().write_slice(&bytes, 0).unwrap();
}

fn contents(buf: &DmaBuffer) -> Vec<u8> {
    let mut bytes = vec![0u8; buf.size()];
    buf.as_volatile_slice().read_slice(&mut bytes, 0).unwrap();
    bytes
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

/// Linux capability sets (`struct __user_cap_data_struct`), version 3.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_ADMIN: u32 = 21;

fn cap_header() -> CapHeader {
    CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    }
}

/// This process's effective capabilities (the low 32).
fn effective() -> u32 {
    let mut data = [CapData::default(); 2];
    let mut header = cap_header();
    // SAFETY: capget writes one header and two data structs of version 3, which both are.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    assert_eq!(ret, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective
}

/// Drops capability `cap` from this process's effective and permitted sets.
fn drop_capability(cap: u32) -> bool {
    let mut data = [CapData::default(); 2];
    let mut header = cap_header();
    // SAFETY: capget writes one header and two data structs of version 3, which both are.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return false;
    }
    data[0].effective &= !(1 << cap);
    data[0].permitted &= !(1 << cap);
    let mut header = cap_header();
    // SAFETY: capset reads one header and two data structs of version 3.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    ret == 0 && effective() & (1 << cap) == 0
}

/// Runs `child` in a forked child that dropped capability `cap` and returns
/// the report it wrote to a pipe ("capset failed" if it could not drop it;
/// nothing if it ran nothing, which the caller's assertion then rejects).
fn report_without(cap: u32, child: impl FnOnce() -> String) -> String {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [read_end, write_end] = fds;
    // SAFETY: the child drops a capability, runs `child` (the tests run one at
    // a time, so no other thread holds a lock it needs), writes its report and
    // leaves with _exit, running no destructors.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let report = if drop_capability(cap) {
            child()
        } else {
            "capset failed".to_string()
        };
        // SAFETY: the report's bytes are valid for its length; _exit ends the child at once.
        unsafe {
            libc::write(write_end, report.as_ptr().cast(), report.len());
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end is its own to close.
    unsafe { libc::close(write_end) };
    // SAFETY: the read end is this process's and nothing else owns it.
    let read_end = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(read_end) };
    let mut report = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(read_end), &mut report).unwrap();
    let mut status = 0;
    // SAFETY: `pid` is this process's child; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    report
}

#[test]
#[ignore = "needs a no-IOMMU guest (qemu-scripts/guest-test.sh noiommu)"]
fn noiommu_group_without_cap_sys_rawio_is_missing_capability_from_the_kernels_eperm() {
    assert_ne!(effective() & (1 << CAP_SYS_RAWIO), 0, "the suite runs as root");
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
