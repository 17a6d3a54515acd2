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

// ---- everyday access patterns, as the compiler builds them ----
//
// Each function is kept out of line so that the build's optimisation level
// decides its instructions: at opt-level 0 plain MOVs, at opt-level 3 (the
// `opt3-` binaries of the guest run) ALU forms with a memory operand (`add`,
// `cmp`, `test`, `or`, `inc`, `imul`...). The inline `asm!` tests pin the
// forms whatever the level.

/// `acc += read_volatile(p)` over `n` reads: `add reg, [mem]` at opt-level 3.
#[inline(never)]
fn sum_of_reads(p: *const u32, n: u32) -> u32 {
    let mut acc = 0u32;
    for _ in 0..n {
        // SAFETY: callers pass an aligned pointer into a live region.
        acc = acc.wrapping_add(unsafe { ptr::read_volatile(p) });
    }
    acc
}

/// A register compared with an immediate: `cmp dword [mem], imm`.
#[inline(never)]
fn equals(p: *const u32, want: u32) -> bool {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(p) == want }
}

/// A bit test, as a polling loop's: `test dword [mem], imm`.
#[inline(never)]
fn bit_set(p: *const u32, bit: u32) -> bool {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(p) & bit != 0 }
}

/// Read-modify-write with `|`: `or dword [mem], imm`.
#[inline(never)]
fn set_bits(p: *mut u32, bits: u32) {
    // SAFETY: as above.
    unsafe { ptr::write_volatile(p, ptr::read_volatile(p) | bits) }
}

/// Read-modify-write with `+ 1`: `inc dword [mem]` (or `add [mem], 1`).
#[inline(never)]
fn increment(p: *mut u32) {
    // SAFETY: as above.
    unsafe { ptr::write_volatile(p, ptr::read_volatile(p).wrapping_add(1)) }
}

/// A product with a read: `imul reg, [mem], imm`.
#[inline(never)]
fn times_three(p: *const u32) -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(p).wrapping_mul(3) }
}

/// A byte-swapped read: `movbe` with +movbe, `mov` + `bswap` otherwise.
#[inline(never)]
fn big_endian(p: *const u32) -> u32 {
    // SAFETY: as above.
    u32::from_be(unsafe { ptr::read_volatile(p) })
}

/// f64 bits moved through a float: `movsd`/`movq` forms.
#[inline(never)]
fn as_f64(p: *const u64) -> f64 {
    // SAFETY: as above.
    f64::from_bits(unsafe { ptr::read_volatile(p) })
}

/// The lowest set bit of a read: `tzcnt`/`bsf reg, [mem]` at opt-level 3.
#[inline(never)]
fn lowest_set_bit(p: *const u32) -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(p) }.trailing_zeros()
}

/// Leading zeros of a read: `bsr reg, [mem]` (or `lzcnt`) at opt-level 3.
#[inline(never)]
fn leading_zeros(p: *const u64) -> u32 {
    // SAFETY: as above.
    unsafe { ptr::read_volatile(p) }.leading_zeros()
}

/// A funnel shift of a register: `shld dword [mem], reg, imm` at opt-level 3.
#[inline(never)]
fn shift_in(p: *mut u32, x: u32) {
    // SAFETY: as above.
    unsafe { ptr::write_volatile(p, (ptr::read_volatile(p) << 8) | (x >> 24)) }
}

/// The high half of a 128-bit product with a read: `mul qword [mem]`.
#[inline(never)]
fn high_product(p: *const u64, x: u64) -> u64 {
    // SAFETY: as above.
    ((u128::from(unsafe { ptr::read_volatile(p) }) * u128::from(x)) >> 64) as u64
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn compiled_patterns_through_trapped_edu_bar0_are_served_with_the_right_values() {
    let dev = Device::open(edu()).unwrap();
    let seen = Seen::new();
    let hook = seen.clone();
    let builder = dev.region_builder(RegionIndex::bar(0).unwrap()).unwrap();
    // SAFETY: `Seen::push` only stores into preallocated atomics.
    let bar0 = unsafe { builder.hook(move |a: &Access| hook.push(a)) }
        .policy(MapPolicy::TrapAll)
        .build()
        .unwrap();
    let base = bar0.as_mut_ptr().unwrap();
    // SAFETY (pointer arithmetic below): every offset is an edu register, in range and 4-aligned.
    let reg = |offset: u64| unsafe { base.add(offset as usize).cast::<u32>() };
    let id = edu_reg::ID_VALUE;

    assert_eq!(sum_of_reads(reg(edu_reg::ID), 3), id.wrapping_mul(3));
    assert_eq!(seen.take(), vec![(edu_reg::ID, 4, u64::from(id), false); 3]);
    assert!(equals(reg(edu_reg::ID), id) && !equals(reg(edu_reg::ID), id + 1));
    assert_eq!(seen.take().len(), 2, "one read per comparison");
    assert!(
        !bit_set(reg(edu_reg::STATUS), edu_reg::STATUS_COMPUTING),
        "edu is idle"
    );
    assert_eq!(times_three(reg(edu_reg::ID)), id.wrapping_mul(3));
    assert_eq!(big_endian(reg(edu_reg::ID)), id.swap_bytes());
    assert_eq!(lowest_set_bit(reg(edu_reg::ID)), id.trailing_zeros());
    assert_eq!(seen.take().len(), 4, "one read per pattern");

    // Liveness reads back the NOT of the last write: x written, !x read.
    wr32(base, edu_reg::LIVENESS, 0x1234_5678);
    seen.take();
    set_bits(reg(edu_reg::LIVENESS), 0x4);
    let wrote = !0x1234_5678u32 | 0x4;
    assert_eq!(
        seen.take(),
        vec![
            (edu_reg::LIVENESS, 4, u64::from(!0x1234_5678u32), false),
            (edu_reg::LIVENESS, 4, u64::from(wrote), true)
        ],
        "one read, then one write of the same width"
    );
    assert_eq!(rd32(base, edu_reg::LIVENESS), !wrote);
    wr32(base, edu_reg::LIVENESS, 41);
    increment(reg(edu_reg::LIVENESS));
    assert_eq!(rd32(base, edu_reg::LIVENESS), !(!41u32).wrapping_add(1));
    wr32(base, edu_reg::LIVENESS, 0x00ab_cdef);
    seen.take();
    shift_in(reg(edu_reg::LIVENESS), 0x5a00_0000);
    let shifted = (!0x00ab_cdefu32 << 8) | 0x5a;
    assert_eq!(
        seen.take(),
        vec![
            (edu_reg::LIVENESS, 4, u64::from(!0x00ab_cdefu32), false),
            (edu_reg::LIVENESS, 4, u64::from(shifted), true)
        ],
        "a funnel shift is one read, then one write"
    );
    assert_eq!(rd32(base, edu_reg::LIVENESS), !shifted);
    seen.take();

    // The 64-bit DMA source register, read as an f64 through the pointer:
    // one 8-byte device access, the same as the typed slow path's 8-byte
    // pread (kernels before 6.11 split both into two 4-byte accesses, and
    // edu answers the upper one with all-ones).
    let dma = base.wrapping_add(edu_reg::DMA_SRC as usize).cast::<u64>();
    let bits = 2.5f64.to_bits();
    // SAFETY: 0x80 is edu's 8-byte DMA source register, 8-aligned.
    unsafe { ptr::write_volatile(dma, bits) };
    let through_pointer = as_f64(dma).to_bits();
    assert_eq!(through_pointer, bar0.read::<u64>(edu_reg::DMA_SRC).unwrap());
    let records = seen.take();
    assert_eq!(records[0], (edu_reg::DMA_SRC, 8, bits, true));
    assert_eq!(records[1], (edu_reg::DMA_SRC, 8, through_pointer, false));
    assert_eq!(leading_zeros(dma), through_pointer.leading_zeros());
    let x = 0x0123_4567_89ab_cdef;
    let want = ((u128::from(through_pointer) * u128::from(x)) >> 64) as u64;
    assert_eq!(high_product(dma, x), want);
    assert_eq!(seen.take().len(), 2, "one 8-byte read each");
    // SAFETY: as above.
    unsafe { ptr::write_volatile(dma, 0) };
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn pinned_alu_forms_through_trapped_edu_bar0_match_the_cpu() {
    use std::arch::asm;
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev
        .region(RegionIndex::bar(0).unwrap(), MapPolicy::TrapAll)
        .unwrap();
    let id_ptr = bar0.as_ptr().unwrap();
    let id = edu_reg::ID_VALUE;
    let (sum, flags): (u32, u64);
    // SAFETY: `id_ptr` is edu's ID register (4-aligned) in a live trapped
    // region; `add` reads it once and the flags are read right after.
    unsafe {
        asm!("add {v:e}, dword ptr [{p}]", "pushfq", "pop {f}", p = in(reg) id_ptr, v = inout(reg) 0xfeff_ff13u32 => sum, f = out(reg) flags)
    };
    // The CPU's own result and flags for the same operands.
    let (want, want_flags): (u32, u64);
    // SAFETY: register-only arithmetic.
    unsafe {
        asm!("add {v:e}, {s:e}", "pushfq", "pop {f}", s = in(reg) id, v = inout(reg) 0xfeff_ff13u32 => want, f = out(reg) want_flags)
    };
    const ARITH: u64 = 0x8d5; // CF PF AF ZF SF OF
    assert_eq!((sum, flags & ARITH), (want, want_flags & ARITH));
    let zero: u64;
    // SAFETY: as above; `cmp` only reads, `sete` takes ZF.
    unsafe {
        asm!("cmp dword ptr [{p}], {imm:e}", "sete {z:l}", "movzx {z:e}, {z:l}", p = in(reg) id_ptr, imm = in(reg) id, z = out(reg) zero)
    };
    assert_eq!(zero, 1, "cmp of the ID register with its value sets ZF");

    // Load-op forms that write RAX/RDX and the flags, run on the trapped ID
    // register and on ordinary memory holding the same value: the CPU is
    // the oracle.
    let on = |insn: fn(*const u32) -> (u64, u64, u64)| {
        let local = id;
        assert_eq!(insn(id_ptr.cast()), insn(&local), "same registers and flags");
    };
    macro_rules! form {
        ($insn:literal) => {
            |p: *const u32| {
                let (a, d, f): (u64, u64, u64);
                // SAFETY: `p` is an aligned u32 in ordinary memory or in the
                // live trapped region; the block writes only its outputs.
                unsafe {
                    asm!("mov eax, 0x12345678", "mov edx, 3", "test eax, eax", $insn, "pushfq", "pop {f}",
                        p = in(reg) p, f = out(reg) f, out("rax") a, out("rdx") d)
                };
                (a, d, f & ARITH)
            }
        };
    }
    on(form!("tzcnt eax, dword ptr [{p}]"));
    on(form!("bsr edx, dword ptr [{p}]"));
    on(form!("mul dword ptr [{p}]"));
    on(form!("div dword ptr [{p}]"));
    on(form!("imul dword ptr [{p}]"));
    on(form!("cmovnz eax, dword ptr [{p}]"));
    on(form!("sbb edx, dword ptr [{p}]"));
    if std::arch::is_x86_feature_detected!("popcnt") {
        on(form!("popcnt eax, dword ptr [{p}]"));
    }
    if std::arch::is_x86_feature_detected!("bmi1") {
        on(form!("andn eax, edx, dword ptr [{p}]"));
        on(form!("bextr eax, dword ptr [{p}], edx"));
    }
    if std::arch::is_x86_feature_detected!("bmi2") {
        on(form!("shrx eax, dword ptr [{p}], edx"));
        on(form!("mulx eax, edx, dword ptr [{p}]"));
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn compiled_patterns_through_the_testdev_io_bar_are_served() {
    let dev = Device::open(testdev()).unwrap();
    let bar1 = dev.bar(1).unwrap();
    let base = bar1.as_mut_ptr().unwrap();
    // Select I/O test 0 (portio-no-eventfd: test 3, offset 0x83, data 0xFA).
    // SAFETY: offset 0 is inside the 256-byte BAR.
    unsafe { ptr::write_volatile(base, 0) };
    // SAFETY: offsets 4 and 12 are inside the BAR and 4-aligned.
    let (offset_reg, count_reg) = unsafe { (base.add(4).cast::<u32>(), base.add(12).cast::<u32>()) };
    assert_eq!(sum_of_reads(offset_reg, 2), 2 * 0x83);
    assert!(equals(offset_reg, 0x83));
    assert_eq!(times_three(offset_reg), 3 * 0x83);
    assert_eq!(big_endian(offset_reg), 0x8300_0000);
    let before = rd32(base, 12);
    // The byte at 0x83 reads 0: `|= 0xFA` writes 0xFA there, which counts.
    // SAFETY: offset 0x83 is inside the BAR (a byte access).
    let data = unsafe { base.add(0x83) };
    // SAFETY: as above.
    unsafe { ptr::write_volatile(data, ptr::read_volatile(data) | 0xfa) };
    assert_eq!(rd32(base, 12), before + 1);
    assert!(!bit_set(count_reg, 1 << 31));
    // SAFETY: as above.
    unsafe { ptr::write_volatile(base, 0xff) };
}
