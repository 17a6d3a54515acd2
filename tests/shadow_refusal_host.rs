//! What the fault handler refuses to serve, on any host, over the emulated
//! device of `common::emulated` (a memfd is the device memory; its slow path
//! logs every access it is asked for):
//!
//! - accesses the region's VFIO flags forbid: a store through the pointer to
//!   a read-only region (on a trapped page and on a `PROT_READ` mapped page)
//!   is dropped, a load from a write-only region reads all-ones; neither
//!   reaches the device, both are recorded for `Region::take_error` and shown
//!   as refused to the access hook and the trace;
//! - addresses that are not the region's any more: a page unmapped behind
//!   barmap's back (`SEGV_MAPERR`), and a dropped region's addresses taken
//!   by a new mapping.
//!
//! Run under `cargo test --release` too: opt-level 3 code reaches the fault
//! handler with other instruction forms. Tests whose outcome is a dead
//! process, or that own the process's logger, re-run this binary as a child.
#![cfg(target_arch = "x86_64")]
// Layouts are lists of offset ranges; a list of one range is meant as such.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use std::arch::asm;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use barmap::shadow::{Access, AccessKind, Refusal};
use barmap::{Error, ErrorKind, Region, RegionFlags, SparseArea};
use common::child::{fault_next, in_child, run_child};
use common::emulated::{emulated, rec, Device, PAGE};
use common::trace_log;

const READ: u32 = 1;
const WRITE: u32 = 2;

/// Two pages with a recognisable pattern.
fn device() -> Device {
    Device::with_pattern(2 * PAGE, |i| (i * 13 + 5) as u8)
}

/// The second page as an mmapable area: the first one stays trapped.
fn second_page() -> [SparseArea; 1] {
    [SparseArea {
        offset: PAGE,
        size: PAGE,
    }]
}

/// A region of `dev` with `flags`, its second page mapped and its first
/// trapped, where the flags let anything be mapped.
fn region(dev: &Device, flags: u32) -> Region {
    emulated(dev.io())
        .flags(RegionFlags::from_bits(flags))
        .map_from(&dev.fd, 0, &second_page())
        .build()
        .unwrap()
}

/// Asserts that `error` is the record of `count` accesses the region's
/// flags refused.
fn assert_refused_by_flags(error: Option<Error>, count: u64) {
    match error {
        Some(error @ Error::Refused { .. }) => {
            assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
            assert_eq!(error.errno(), Some(libc::EACCES), "{error}");
            let Error::Refused { count: c, .. } = error else {
                unreachable!()
            };
            assert_eq!(c, count);
        }
        other => panic!("expected {count} accesses refused by the flags, got {other:?}"),
    }
}

#[test]
fn stores_to_a_read_only_region_are_dropped_and_recorded() {
    let dev = device();
    let region = region(&dev, READ);
    assert_eq!(region.mapped_ranges(), [PAGE..2 * PAGE]);
    let before = dev.peek(0, 2 * PAGE as usize);
    let p = region.as_mut_ptr().unwrap();
    // SAFETY: every offset below is inside the region, aligned to its width.
    unsafe {
        // A trapped page, and a mapped one (PROT_READ: the store faults).
        ptr::write_volatile(p.add(0x10).cast::<u32>(), 0xdead_beef);
        ptr::write_volatile(p.add(PAGE as usize + 0x10).cast::<u32>(), 0xdead_beef);
        ptr::write_volatile(p.add(PAGE as usize + 0x18).cast::<u64>(), u64::MAX);
    }
    assert!(dev.peek(0, 2 * PAGE as usize) == before, "the memfd was written");
    assert_eq!(dev.log.take(), [], "a store reached the slow path");
    assert_refused_by_flags(region.take_error(), 3);
    assert!(region.take_error().is_none());

    // A read-modify-write: its load reaches the device, its store does not.
    // SAFETY: offset 0x20 is inside the trapped page, 4-byte aligned; the
    // instruction only reads and writes that dword and the flags.
    unsafe { asm!("or dword ptr [{p}], 4", p = in(reg) p.add(0x20), options(nostack)) };
    assert_eq!(dev.log.take(), [rec(0x20, 4, dev.peek_word(0x20, 4), false)]);
    assert!(dev.peek(0, 2 * PAGE as usize) == before, "the memfd was written");
    assert_refused_by_flags(region.take_error(), 1);

    // Loads still reach the device, through both kinds of page.
    // SAFETY: as above.
    let (trapped, mapped) = unsafe {
        (
            ptr::read_volatile(p.add(0x10).cast::<u32>()),
            ptr::read_volatile(p.add(PAGE as usize + 0x10).cast::<u32>()),
        )
    };
    assert_eq!(u64::from(trapped), dev.peek_word(0x10, 4));
    assert_eq!(u64::from(mapped), dev.peek_word(PAGE + 0x10, 4));
    assert!(region.take_error().is_none());
    // The typed path says the same as before.
    assert!(matches!(
        region.write::<u32>(0x10, 1),
        Err(Error::ReadOnly { .. })
    ));
}

#[test]
fn loads_from_a_write_only_region_read_all_ones_and_are_recorded() {
    let dev = device();
    let region = region(&dev, WRITE);
    // A mapping would be readable: nothing is mapped, every page is trapped.
    assert!(region.mapped_ranges().is_empty());
    let p = region.as_mut_ptr().unwrap();
    // SAFETY: every offset below is inside the region, aligned to its width.
    let got = unsafe {
        (
            ptr::read_volatile(p.add(0x11)),
            ptr::read_volatile(p.add(0x12).cast::<u16>()),
            ptr::read_volatile(p.add(PAGE as usize + 0x10).cast::<u32>()),
            ptr::read_volatile(p.add(PAGE as usize + 0x18).cast::<u64>()),
        )
    };
    assert_eq!(got, (u8::MAX, u16::MAX, u32::MAX, u64::MAX));
    assert_eq!(dev.log.take(), [], "a load reached the slow path");
    assert_refused_by_flags(region.take_error(), 4);

    // Stores still reach the device, on both pages.
    // SAFETY: as above.
    unsafe {
        ptr::write_volatile(p.add(0x10).cast::<u32>(), 0x1234_5678);
        ptr::write_volatile(p.add(PAGE as usize + 0x10).cast::<u16>(), 0xabcd);
    }
    assert_eq!(dev.peek_word(0x10, 4), 0x1234_5678);
    assert_eq!(dev.peek_word(PAGE + 0x10, 2), 0xabcd);
    assert_eq!(
        dev.log.take(),
        [rec(0x10, 4, 0x1234_5678, true), rec(PAGE + 0x10, 2, 0xabcd, true)]
    );
    assert!(region.take_error().is_none());
    assert!(matches!(region.read::<u32>(0x10), Err(Error::NotReadable { .. })));
}

/// The accesses a hook saw, in preallocated atomics (the hook runs in the
/// fault handler): offset, value, and width, kind and refusal packed.
#[derive(Default)]
struct Hooked {
    cells: [[AtomicU64; 3]; 8],
    next: AtomicU64,
}

const REFUSALS: [Option<Refusal>; 4] = [
    None,
    Some(Refusal::ReadOnly),
    Some(Refusal::WriteOnly),
    Some(Refusal::Revoked),
];

impl Hooked {
    fn push(&self, a: &Access) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let Some(cell) = self.cells.get(i) else { return };
        let refusal = REFUSALS.iter().position(|r| *r == a.refused).unwrap_or(7) as u64;
        let kind = u64::from(a.kind == AccessKind::Write);
        cell[0].store(a.offset, Ordering::Relaxed);
        cell[1].store(a.value, Ordering::Relaxed);
        cell[2].store(a.width as u64 | kind << 8 | refusal << 16, Ordering::Release);
    }

    /// The accesses seen since the last call.
    fn take(&self) -> Vec<Access> {
        let n = self.next.swap(0, Ordering::Acquire) as usize;
        assert!(n <= self.cells.len(), "more accesses than cells: {n}");
        self.cells[..n]
            .iter()
            .map(|c| {
                let meta = c[2].load(Ordering::Acquire);
                let kind = if meta >> 8 & 0xff == 0 {
                    AccessKind::Read
                } else {
                    AccessKind::Write
                };
                let access = Access::new(
                    c[0].load(Ordering::Relaxed),
                    (meta & 0xff) as usize,
                    c[1].load(Ordering::Relaxed),
                    kind,
                );
                match REFUSALS.get((meta >> 16) as usize).copied().flatten() {
                    Some(refusal) => access.with_refusal(refusal),
                    None if meta >> 16 == 0 => access,
                    None => panic!("an unknown refusal"),
                }
            })
            .collect()
    }
}

#[test]
fn the_hook_and_the_trace_show_refused_accesses_as_refused() {
    if !in_child() {
        // A child of its own: the logger is the process's.
        run_child("the_hook_and_the_trace_show_refused_accesses_as_refused").assert_passed();
        return;
    }
    trace_log::install();
    let dev = device();
    let hooked = Arc::new(Hooked::default());
    let build = |flags: u32| {
        let hooked = hooked.clone();
        let builder =
            emulated(dev.io())
                .flags(RegionFlags::from_bits(flags))
                .map_from(&dev.fd, 0, &second_page());
        // SAFETY: `Hooked::push` only stores into preallocated atomics.
        unsafe { builder.hook(move |a: &Access| hooked.push(a)) }
            .build()
            .unwrap()
    };

    let read_only = build(READ);
    let p = read_only.as_mut_ptr().unwrap();
    // SAFETY: inside the region, aligned; the first page is trapped, the
    // second mapped read-only.
    unsafe {
        ptr::write_volatile(p.add(0x20).cast::<u16>(), 0x4242);
        ptr::write_volatile(p.add(PAGE as usize).cast::<u32>(), 7);
        let _ = ptr::read_volatile(p.add(0x20).cast::<u16>());
    }
    let value = dev.peek_word(0x20, 2);
    let want = [
        Access::new(0x20, 2, 0x4242, AccessKind::Write).with_refusal(Refusal::ReadOnly),
        Access::new(PAGE, 4, 7, AccessKind::Write).with_refusal(Refusal::ReadOnly),
        Access::new(0x20, 2, value, AccessKind::Read),
    ];
    assert_eq!(hooked.take(), want);
    assert_eq!(read_only.flush_trace(), 3);
    assert_eq!(
        trace_log::take(),
        [
            "0000:ee:00.0 bar0: write16 at 0x20 = 0x4242 dropped (read-only region)".to_string(),
            "0000:ee:00.0 bar0: write32 at 0x1000 = 0x00000007 dropped (read-only region)".to_string(),
            format!("0000:ee:00.0 bar0: read16 at 0x20 = {value:#06x}"),
        ]
    );
    drop(read_only);

    let write_only = build(WRITE);
    let p = write_only.as_mut_ptr().unwrap();
    // SAFETY: inside the region, aligned.
    let v = unsafe { ptr::read_volatile(p.add(0x4).cast::<u32>()) };
    assert_eq!(v, u32::MAX);
    assert_eq!(
        hooked.take(),
        [Access::new(4, 4, 0xffff_ffff, AccessKind::Read).with_refusal(Refusal::WriteOnly)]
    );
    assert_eq!(write_only.flush_trace(), 1);
    assert_eq!(
        trace_log::take(),
        ["0000:ee:00.0 bar0: read32 at 0x4 = 0xffffffff refused (write-only region)"]
    );
    drop(write_only);

    // The device refusing (EIO) on a trapped page of a readable, writable region.
    let both = build(READ | WRITE);
    dev.slow.refuse(true);
    let p = both.as_mut_ptr().unwrap();
    // SAFETY: inside the trapped page, aligned.
    let v = unsafe {
        ptr::write_volatile(p.add(0x8).cast::<u8>(), 0x5a);
        ptr::read_volatile(p.add(0x8).cast::<u8>())
    };
    dev.slow.refuse(false);
    assert_eq!(v, u8::MAX);
    assert_eq!(
        hooked.take(),
        [
            Access::new(8, 1, 0x5a, AccessKind::Write).with_refusal(Refusal::Revoked),
            Access::new(8, 1, 0xff, AccessKind::Read).with_refusal(Refusal::Revoked),
        ]
    );
    assert_eq!(both.flush_trace(), 2);
    assert_eq!(
        trace_log::take(),
        [
            "0000:ee:00.0 bar0: write8 at 0x8 = 0x5a dropped (device answered EIO)",
            "0000:ee:00.0 bar0: read8 at 0x8 = 0xff refused (device answered EIO)",
        ]
    );
}

/// Whether the page holding `addr` is mapped at all (`mincore` fails with
/// `ENOMEM` on an unmapped one).
fn is_mapped(addr: usize) -> bool {
    let page = addr & !(PAGE as usize - 1);
    let mut resident = 0u8;
    // SAFETY: mincore only inspects the page table and writes one byte.
    let rc = unsafe { libc::mincore(page as *mut libc::c_void, PAGE as usize, &mut resident) };
    if rc == 0 {
        return true;
    }
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOMEM));
    false
}

#[test]
fn a_page_unmapped_behind_barmaps_back_is_not_served() {
    if !in_child() {
        let child = run_child("a_page_unmapped_behind_barmaps_back_is_not_served");
        child.assert_killed_by(libc::SIGSEGV);
        assert!(
            child.stderr.contains("test child: the first page was served"),
            "{child}"
        );
        assert!(!child.stderr.contains("barmap: cannot emulate"), "{child}");
        return;
    }
    let dev = device();
    let region = dev.trap_all();
    let p = region.as_ptr().unwrap();
    // SAFETY: inside the first page, aligned.
    let v = unsafe { ptr::read_volatile(p.add(0x10).cast::<u32>()) };
    assert_eq!(u64::from(v), dev.peek_word(0x10, 4));
    assert_eq!(dev.log.take(), [rec(0x10, 4, u64::from(v), false)]);
    eprintln!("test child: the first page was served");
    let second = p.wrapping_add(PAGE as usize);
    // SAFETY: breaks the region's contract on purpose (see "The address range
    // belongs to the region" in barmap::shadow): its second page goes away,
    // and no pointer into it is used but the faulting load below.
    assert_eq!(
        unsafe { libc::munmap(second.cast_mut().cast(), PAGE as usize) },
        0
    );
    assert!(!is_mapped(second as usize));
    fault_next();
    // SAFETY: a load from the page just unmapped: SEGV_MAPERR, which barmap
    // leaves to the previous handler (the default action ends this child).
    let v = unsafe { ptr::read_volatile(second.cast::<u32>()) };
    unreachable!("a load with no mapping behind it was served: {v:#x}");
}

#[test]
fn a_dropped_regions_addresses_in_a_new_mapping_are_not_served() {
    if !in_child() {
        let child = run_child("a_dropped_regions_addresses_in_a_new_mapping_are_not_served");
        child.assert_killed_by(libc::SIGSEGV);
        assert!(
            child.stderr.contains("test child: the region was served"),
            "{child}"
        );
        assert!(!child.stderr.contains("barmap: cannot emulate"), "{child}");
        return;
    }
    let dev = device();
    let region = dev.trap_all();
    let base = region.as_ptr().unwrap();
    // SAFETY: inside the region, aligned.
    let v = unsafe { ptr::read_volatile(base.cast::<u32>()) };
    assert_eq!(dev.log.take(), [rec(0, 4, u64::from(v), false)]);
    eprintln!("test child: the region was served");
    drop(region);
    // Another mapping gets the same addresses, as another thread's mmap may:
    // MAP_FIXED_NOREPLACE succeeds only because the region unmapped them.
    // SAFETY: a new anonymous mapping at a free address replaces nothing.
    let theirs = unsafe {
        libc::mmap(
            base.cast_mut().cast(),
            2 * PAGE as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(
        theirs,
        base.cast_mut().cast(),
        "{}",
        std::io::Error::last_os_error()
    );
    fault_next();
    // SAFETY: a load from our own PROT_NONE mapping: SEGV_ACCERR outside
    // every region, which goes to the previous handler (the default action
    // ends this child).
    let v = unsafe { ptr::read_volatile(base.cast::<u32>()) };
    unreachable!(
        "a load from another mapping was served: {v:#x} (device log {:?})",
        dev.log.take()
    );
}

#[test]
fn dropping_a_region_waits_for_faults_in_progress_before_unmapping() {
    if !in_child() {
        // A child: no other test may map at the addresses the region frees.
        run_child("dropping_a_region_waits_for_faults_in_progress_before_unmapping").assert_passed();
        return;
    }
    let dev = device();
    let inside = Arc::new(AtomicU64::new(0));
    let release = Arc::new(AtomicU64::new(0));
    let (entered, go) = (inside.clone(), release.clone());
    // SAFETY: the hook only spins on and stores to atomics.
    let builder = unsafe {
        emulated(dev.io()).hook(move |_: &Access| {
            entered.store(1, Ordering::SeqCst);
            while go.load(Ordering::SeqCst) == 0 {
                std::hint::spin_loop();
            }
        })
    };
    let region = builder.policy(barmap::MapPolicy::TrapAll).build().unwrap();
    let base = region.as_ptr().unwrap() as usize;
    let dropped = AtomicU64::new(0);
    std::thread::scope(|s| {
        let faulting = s.spawn(|| {
            // SAFETY: inside the region, aligned; the region is dropped only
            // after this load's fault was served (that is what is tested).
            unsafe { ptr::read_volatile((base as *const u32).add(4)) }
        });
        while inside.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let dropping = s.spawn(|| {
            drop(region);
            dropped.store(1, Ordering::SeqCst);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "the drop did not wait for the fault"
        );
        assert!(
            is_mapped(base),
            "the range was unmapped under a fault being served"
        );
        release.store(1, Ordering::SeqCst);
        let v = faulting.join().unwrap();
        assert_eq!(u64::from(v), dev.peek_word(0x10, 4));
        dropping.join().unwrap();
    });
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert!(!is_mapped(base), "the drop unmapped the range");
}
