//! Shadow regions on real VFIO devices in the QEMU guest: edu BAR0 with its
//! first page trapped or trapped whole, and pci-testdev's I/O BAR1, all driven
//! through the raw pointer of [`Region::as_ptr`].
#![cfg(target_arch = "x86_64")]
// A trap list of one range is meant as such.

mod common;

use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use barmap::shadow::{Access, AccessKind};
use barmap::{Device, MapPolicy, RegionIndex};
use common::{edu, edu_factorial, edu_reg, testdev, TESTDEV_TESTS};

/// A preallocated, lock-free record of what the access hook saw.
struct Seen {
    cells: Vec<[AtomicU64; 3]>,
    next: AtomicUsize,
}

impl Seen {
    fn new() -> Arc<Seen> {
        Arc::new(Seen {
            cells: (0..4096).map(|_| Default::default()).collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The hook: async-signal-safe (atomics only, never panics).
    fn push(&self, a: &Access) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.cells.get(i) {
            c[0].store(a.offset, Ordering::Relaxed);
            c[1].store(
                a.width as u64 | u64::from(a.kind == AccessKind::Write) << 8,
                Ordering::Relaxed,
            );
            c[2].store(a.value, Ordering::Release);
        }
    }

    /// (offset, width, value, is_write) of every access since the last call.
    fn take(&self) -> Vec<(u64, u8, u64, bool)> {
        let n = self.next.swap(0, Ordering::Acquire);
        assert!(n <= self.cells.len(), "hook record overflow");
        self.cells[..n]
            .iter()
            .map(|c| {
                let meta = c[1].load(Ordering::Relaxed);
                (
                    c[0].load(Ordering::Relaxed),
                    meta as u8,
                    c[2].load(Ordering::Acquire),
                    meta >> 8 != 0,
                )
            })
            .collect()
    }
}

/// A 4-byte volatile read at `offset` of the pointer.
fn rd32(base: *const u8, offset: u64) -> u32 {
    // SAFETY: every caller passes an in-bounds, 4-aligned offset of a live Region's range.
    unsafe { ptr::read_volatile(base.add(offset as usize).cast::<u32>()) }
}

fn wr32(base: *mut u8, offset: u64, value: u32) {
    // SAFETY: as in `rd32`.
    unsafe { ptr::write_volatile(base.add(offset as usize).cast::<u32>(), value) }
}

/// n! through the raw pointer, polling the status register.
fn factorial(base: *mut u8, n: u32) -> u32 {
    let idle = |base| {
        let start = Instant::now();
        while rd32(base, edu_reg::STATUS) & edu_reg::STATUS_COMPUTING != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "edu factorial did not finish"
            );
            std::thread::yield_now();
        }
    };
    idle(base);
    wr32(base, edu_reg::STATUS, 0);
    wr32(base, edu_reg::FACTORIAL, n);
    idle(base);
    rd32(base, edu_reg::FACTORIAL)
}

/// ID, liveness and factorial through `base`, checked against the typed
/// direct path of a second handle on the same BAR.
fn edu_through_pointer(dev: &Device, base: *mut u8) {
    let direct = dev.bar(0).unwrap();
    assert_eq!(rd32(base, edu_reg::ID), edu_reg::ID_VALUE);
    assert_eq!(rd32(base, edu_reg::ID), direct.read::<u32>(edu_reg::ID).unwrap());
    for x in [0x1234_5678u32, 0, 0xffff_ffff] {
        wr32(base, edu_reg::LIVENESS, x);
        assert_eq!(rd32(base, edu_reg::LIVENESS), !x);
        assert_eq!(direct.read::<u32>(edu_reg::LIVENESS).unwrap(), !x);
    }
    for (n, want) in [(0, 1), (5, 120), (12, 479_001_600), (13, 0x7328_cc00)] {
        assert_eq!(factorial(base, n), want, "{n}!");
        assert_eq!(edu_factorial(&direct, n), want, "{n}! on the direct path");
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_first_page_trapped_matches_the_direct_path() {
    let dev = Device::open(edu()).unwrap();
    let seen = Seen::new();
    let hook = seen.clone();
    let builder = dev.region_builder(RegionIndex::bar(0).unwrap()).unwrap();
    // SAFETY: `Seen::push` only stores into preallocated atomics.
    let builder = unsafe { builder.hook(move |a: &Access| hook.push(a)) };
    let bar0 = builder.policy(MapPolicy::trap_range(0..0x1000)).build().unwrap();
    assert_eq!(bar0.mapped_ranges(), vec![0x1000..0x10_0000]);
    let base = bar0.as_mut_ptr().unwrap();
    edu_through_pointer(&dev, base);
    let records = seen.take();
    assert!(!records.is_empty());
    // Every hooked access is a 4-byte access in the trapped page.
    assert!(
        records.iter().all(|&(off, w, _, _)| off < 0x1000 && w == 4),
        "{records:x?}"
    );
    // Exactly the accesses made: one ID read, then the liveness write + read.
    assert_eq!(records[0], (edu_reg::ID, 4, u64::from(edu_reg::ID_VALUE), false));
    assert_eq!(records[2], (edu_reg::LIVENESS, 4, 0x1234_5678, true));
    assert_eq!(
        records[3],
        (edu_reg::LIVENESS, 4, u64::from(!0x1234_5678u32), false)
    );
    // The mapped part is still direct: no hook call for it.
    let _ = rd32(base, 0x1000);
    assert!(seen.take().is_empty());
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_trapped_whole_matches_the_direct_path() {
    let dev = Device::open(edu()).unwrap();
    let seen = Seen::new();
    let hook = seen.clone();
    let builder = dev.region_builder(RegionIndex::bar(0).unwrap()).unwrap();
    // SAFETY: `Seen::push` only stores into preallocated atomics.
    let builder = unsafe { builder.hook(move |a: &Access| hook.push(a)) };
    let bar0 = builder.policy(MapPolicy::TrapAll).build().unwrap();
    assert!(bar0.mapped_ranges().is_empty());
    let base = bar0.as_mut_ptr().unwrap();
    edu_through_pointer(&dev, base);
    let n = seen.take().len();
    // ID twice, 3 x (write + read) liveness, then per factorial at least
    // status write, factorial write, one status poll each side, result read.
    assert!(n >= 2 + 6 + 4 * 5, "{n} hooked accesses");
    // Typed accesses on trapped pages are hooked too.
    assert_eq!(bar0.read::<u32>(edu_reg::ID).unwrap(), edu_reg::ID_VALUE);
    assert_eq!(
        seen.take(),
        vec![(edu_reg::ID, 4, u64::from(edu_reg::ID_VALUE), false)]
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn fully_mapped_bar_pointer_is_the_mapping() {
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    assert_eq!(bar0.as_ptr().unwrap() as usize, bar0.mapping_address());
    assert_eq!(rd32(bar0.as_ptr().unwrap(), edu_reg::ID), edu_reg::ID_VALUE);
}

/// pci-testdev's I/O BAR1 through a raw pointer: header reads of 1, 2 and 4
/// bytes and the counted write of test 3 (portio-no-eventfd).
#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn testdev_io_bar_through_a_raw_pointer_runs_the_protocol() {
    let dev = Device::open(testdev()).unwrap();
    let bar1 = dev.bar(1).unwrap();
    assert!(bar1.mapped_ranges().is_empty(), "an I/O BAR is never mapped");
    let base = bar1.as_mut_ptr().unwrap();
    // SAFETY (all accesses below): offsets are inside the 256-byte BAR and
    // naturally aligned for their width.
    let rd8 = |off: usize| unsafe { ptr::read_volatile(base.add(off)) };
    let rd16 = |off: usize| unsafe { ptr::read_volatile(base.add(off).cast::<u16>()) };
    let rd32 = |off: usize| unsafe { ptr::read_volatile(base.add(off).cast::<u32>()) };
    let wr8 = |off: usize, v: u8| unsafe { ptr::write_volatile(base.add(off), v) };
    for (selector, on_bar, test, offset, data, name) in TESTDEV_TESTS {
        if on_bar != 1 {
            continue;
        }
        wr8(0, selector);
        assert_eq!(rd8(0), test, "{name}");
        assert_eq!(rd8(1), 1, "{name}: width");
        assert_eq!(rd16(2), 0, "{name}");
        assert_eq!(rd32(4), offset, "{name}: offset");
        assert_eq!(rd8(8), data, "{name}: data");
        let name_bytes: Vec<u8> = (16..).map(rd8).take_while(|b| *b != 0).collect();
        assert_eq!(name_bytes, name.as_bytes());
        if test == 3 {
            let before = rd32(12);
            wr8(offset as usize, data);
            assert_eq!(rd32(12), before + 1, "{name}: the matching write counts");
            wr8(offset as usize, 0xce);
            assert_eq!(rd32(12), before + 1, "{name}: a non-matching byte does not count");
        }
    }
    wr8(0, 0xff);
    assert_eq!(rd32(0), 0, "deselected");
}
