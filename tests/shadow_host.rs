//! Shadow regions on the host, against an emulated device that records every
//! access: a memfd is the device memory, mapped areas map it directly, and
//! trapped pages are served by a [`RegionIo`] over the same memfd that logs
//! each (offset, width, value, direction) into a preallocated lock-free log.
//!
//! Run under both `cargo test` and `cargo test --release`: the accesses made
//! through `read_volatile`/`write_volatile` compile differently at opt-level 0
//! and 3, and the inline-assembly forms pin down each decoded form exactly.
//! Tests whose outcome is a dead process re-run this binary as a child with
//! `BARMAP_TEST_CHILD` set.
#![cfg(target_arch = "x86_64")]
// Layouts are lists of offset ranges; a list of one range is meant as such.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use std::arch::asm;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use barmap::region::parse_region_caps;
use barmap::shadow::{Access, AccessKind};
use barmap::{MapPolicy, Region, RegionIo, SparseArea};
use common::child::{fault_next, in_child, run_child};
use common::emulated::{emulated, emulated_addr, rec, Device, Log, Rec, PAGE};
use common::trace_log;

/// The emulated device, byte i holding i * 7 + 1 (mod 256): a recognisable
/// pattern.
fn device(size: u64) -> Device {
    Device::with_pattern(size, |i| (i * 7 + 1) as u8)
}

/// Every width of `read_volatile` and `write_volatile` at several offsets:
/// each is exactly one device access of the same width, with the right value.
fn volatile_widths(region: &Region, dev: &Device) {
    let base = region.as_mut_ptr().unwrap();
    for offset in [0u64, 8, 0x7f8, PAGE - 8, 2 * PAGE + 0x10] {
        dev.log.take();
        // SAFETY (all four blocks): offset + 8 <= size, aligned for every width.
        unsafe {
            let p = base.add(offset as usize);
            let v8 = ptr::read_volatile(p);
            let v16 = ptr::read_volatile(p.cast::<u16>());
            let v32 = ptr::read_volatile(p.cast::<u32>());
            let v64 = ptr::read_volatile(p.cast::<u64>());
            assert_eq!(u64::from(v8), dev.peek_word(offset, 1));
            assert_eq!(u64::from(v16), dev.peek_word(offset, 2));
            assert_eq!(u64::from(v32), dev.peek_word(offset, 4));
            assert_eq!(v64, dev.peek_word(offset, 8));
            let want: Vec<Rec> = [1, 2, 4, 8]
                .iter()
                .map(|&w| rec(offset, w, dev.peek_word(offset, w), false))
                .collect();
            assert_eq!(dev.log.take(), want, "reads at {offset:#x}");

            ptr::write_volatile(p, 0xa5u8);
            assert_eq!(dev.peek(offset, 1), [0xa5]);
            ptr::write_volatile(p.cast::<u16>(), 0xbeefu16);
            assert_eq!(dev.peek_word(offset, 2), 0xbeef);
            ptr::write_volatile(p.cast::<u32>(), 0xdead_beefu32);
            assert_eq!(dev.peek_word(offset, 4), 0xdead_beef);
            ptr::write_volatile(p.cast::<u64>(), 0x0123_4567_89ab_cdefu64);
            assert_eq!(dev.peek_word(offset, 8), 0x0123_4567_89ab_cdef);
            // A value only known at run time (not an immediate).
            let runtime = std::hint::black_box(0xfedc_ba98_7654_3210u64) ^ offset;
            ptr::write_volatile(p.cast::<u64>(), runtime);
            assert_eq!(dev.peek_word(offset, 8), runtime);
            let want = vec![
                rec(offset, 1, 0xa5, true),
                rec(offset, 2, 0xbeef, true),
                rec(offset, 4, 0xdead_beef, true),
                rec(offset, 8, 0x0123_4567_89ab_cdef, true),
                rec(offset, 8, runtime, true),
            ];
            assert_eq!(dev.log.take(), want, "writes at {offset:#x}");
        }
    }
}

#[test]
fn volatile_accesses_of_every_width_reach_the_device_once() {
    let dev = device(4 * PAGE);
    let region = dev.trap_all();
    assert!(region.mapped_ranges().is_empty());
    volatile_widths(&region, &dev);
}

/// Loads through each decoded form, with the CPU's partial-register rules.
#[test]
fn inline_asm_loads_follow_register_semantics() {
    let dev = device(PAGE);
    let region = dev.trap_all();
    let at = 0x40u64;
    dev.poke(at, &0x8182_8384_8586_8788u64.to_le_bytes());
    let p = region.as_ptr().unwrap().wrapping_add(at as usize);
    let fill = 0x1111_1111_1111_1111u64;
    let load = |f: &dyn Fn() -> u64, want: u64, width: usize, name: &str| {
        dev.log.take();
        assert_eq!(f(), want, "{name}");
        assert_eq!(
            dev.log.take(),
            vec![rec(at, width, dev.peek_word(at, width), false)],
            "{name}"
        );
    };
    // SAFETY (every asm block): `p` points 8 aligned bytes inside the region,
    // and each block only loads from it into the named registers.
    load(
        &|| {
            let mut rax = fill;
            unsafe { asm!("mov al, byte ptr [rdi]", in("rdi") p, inout("rax") rax) };
            rax
        },
        0x1111_1111_1111_1188,
        1,
        "mov al",
    );
    load(
        &|| {
            let mut rbx = fill;
            unsafe {
                asm!("xchg rbx, {t}", "mov bh, byte ptr [rdi]", "xchg rbx, {t}", t = inout(reg) rbx, in("rdi") p)
            };
            rbx
        },
        0x1111_1111_1111_8811,
        1,
        "mov bh",
    );
    load(
        &|| {
            let mut r9 = fill;
            unsafe { asm!("mov r9w, word ptr [rdi]", in("rdi") p, inout("r9") r9) };
            r9
        },
        0x1111_1111_1111_8788,
        2,
        "mov r9w",
    );
    load(
        &|| {
            let mut rax = fill;
            unsafe { asm!("mov eax, dword ptr [rdi]", in("rdi") p, inout("rax") rax) };
            rax
        },
        0x8586_8788,
        4,
        "mov eax zero-extends",
    );
    load(
        &|| {
            let mut r12 = fill;
            unsafe { asm!("mov r12, qword ptr [rdi]", in("rdi") p, inout("r12") r12) };
            r12
        },
        0x8182_8384_8586_8788,
        8,
        "mov r12",
    );
    load(
        &|| {
            let mut rcx = fill;
            let base = p.wrapping_sub(0x28);
            let index = 4usize;
            unsafe {
                asm!("mov rcx, qword ptr [rsi + rdx*8 + 8]", in("rsi") base, in("rdx") index, inout("rcx") rcx)
            };
            rcx
        },
        0x8182_8384_8586_8788,
        8,
        "mov with base, index, scale and displacement",
    );
    load(
        &|| {
            let mut rax = fill;
            unsafe { asm!("movzx eax, byte ptr [rdi]", in("rdi") p, inout("rax") rax) };
            rax
        },
        0x88,
        1,
        "movzx eax, byte",
    );
    load(
        &|| {
            let mut rax = fill;
            unsafe { asm!("movzx ax, byte ptr [rdi]", in("rdi") p, inout("rax") rax) };
            rax
        },
        0x1111_1111_1111_0088,
        1,
        "movzx ax, byte keeps bits 16..63",
    );
    load(
        &|| {
            let mut r10 = fill;
            unsafe { asm!("movzx r10, word ptr [rdi]", in("rdi") p, inout("r10") r10) };
            r10
        },
        0x8788,
        2,
        "movzx r10, word",
    );
    load(
        &|| {
            let mut rax = fill;
            unsafe { asm!("movsx rax, byte ptr [rdi]", in("rdi") p, inout("rax") rax) };
            rax
        },
        0xffff_ffff_ffff_ff88,
        1,
        "movsx rax, byte",
    );
    load(
        &|| {
            let mut rax = fill;
            unsafe { asm!("movsx eax, word ptr [rdi]", in("rdi") p, inout("rax") rax) };
            rax
        },
        0xffff_8788,
        2,
        "movsx eax, word",
    );
    load(
        &|| {
            let mut rax = fill;
            unsafe { asm!("movsx ax, byte ptr [rdi]", in("rdi") p, inout("rax") rax) };
            rax
        },
        0x1111_1111_1111_ff88,
        1,
        "movsx ax, byte keeps bits 16..63",
    );
    load(
        &|| {
            let mut r15 = fill;
            unsafe { asm!("movsxd r15, dword ptr [rdi]", in("rdi") p, inout("r15") r15) };
            r15
        },
        0xffff_ffff_8586_8788,
        4,
        "movsxd r15",
    );
}

/// Stores through each decoded form: registers of every width (including a
/// high-byte register) and immediates (sign-extended for 64-bit stores).
#[test]
fn inline_asm_stores_write_exactly_their_width() {
    let dev = device(PAGE);
    let region = dev.trap_all();
    let at = 0x80u64;
    let p = region.as_mut_ptr().unwrap().wrapping_add(at as usize);
    let value = 0x0102_0304_0506_0708u64;
    let store = |f: &dyn Fn(), width: usize, want: u64, name: &str| {
        dev.poke(at, &[0xeeu8; 16]);
        dev.log.take();
        f();
        assert_eq!(dev.log.take(), vec![rec(at, width, want, true)], "{name}");
        let mut expect = [0xeeu8; 16];
        expect[..width].copy_from_slice(&want.to_le_bytes()[..width]);
        assert_eq!(dev.peek(at, 16), expect, "{name}");
    };
    // SAFETY (every asm block): `p` points 8 aligned bytes inside the region,
    // and each block only stores there.
    store(
        &|| unsafe { asm!("mov byte ptr [rdi], al", in("rdi") p, in("rax") value) },
        1,
        0x08,
        "al",
    );
    store(
        &|| unsafe { asm!("mov byte ptr [rdi], ch", in("rdi") p, in("rcx") value) },
        1,
        0x07,
        "ch",
    );
    store(
        &|| unsafe { asm!("mov word ptr [rdi], r8w", in("rdi") p, in("r8") value) },
        2,
        0x0708,
        "r8w",
    );
    store(
        &|| unsafe { asm!("mov dword ptr [rdi], r11d", in("rdi") p, in("r11") value) },
        4,
        0x0506_0708,
        "r11d",
    );
    store(
        &|| unsafe { asm!("mov qword ptr [rdi], rsi", in("rdi") p, in("rsi") value) },
        8,
        value,
        "rsi",
    );
    store(
        &|| unsafe { asm!("mov byte ptr [rdi], 0xfa", in("rdi") p) },
        1,
        0xfa,
        "imm8",
    );
    store(
        &|| unsafe { asm!("mov word ptr [rdi], 0x1234", in("rdi") p) },
        2,
        0x1234,
        "imm16",
    );
    store(
        &|| unsafe { asm!("mov dword ptr [rdi], 0x89abcdef", in("rdi") p) },
        4,
        0x89ab_cdef,
        "imm32",
    );
    store(
        &|| unsafe { asm!("mov qword ptr [rdi], -2", in("rdi") p) },
        8,
        0xffff_ffff_ffff_fffe,
        "imm32 sign-extended to 64",
    );
}

/// Builds a region info buffer with a sparse-mmap capability listing `areas`,
/// as the kernel would, and parses it back.
fn sparse_fixture(areas: &[(u64, u64)]) -> Vec<SparseArea> {
    let mut buf = vec![0u8; 32];
    buf.extend_from_slice(&1u16.to_le_bytes()); // VFIO_REGION_INFO_CAP_SPARSE_MMAP
    buf.extend_from_slice(&1u16.to_le_bytes()); // version
    buf.extend_from_slice(&0u32.to_le_bytes()); // next
    buf.extend_from_slice(&(areas.len() as u32).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes()); // reserved
    for (offset, size) in areas {
        buf.extend_from_slice(&offset.to_le_bytes());
        buf.extend_from_slice(&size.to_le_bytes());
    }
    match parse_region_caps(&buf, 32).unwrap().as_slice() {
        [barmap::RegionCap::SparseMmap(areas)] => areas.clone(),
        other => panic!("unexpected caps {other:?}"),
    }
}

#[test]
fn sparse_layouts_map_areas_and_trap_holes() {
    let size = 8 * PAGE;
    // (sparse areas as (offset, size), the ranges expected to be mapped)
    type Layout = (&'static [(u64, u64)], &'static [std::ops::Range<u64>]);
    let layouts: [Layout; 5] = [
        // Areas at the start and the end, one hole in the middle.
        (
            &[(0, 2 * PAGE), (5 * PAGE, 3 * PAGE)],
            &[0..2 * PAGE, 5 * PAGE..8 * PAGE],
        ),
        // Unaligned areas keep only their whole pages.
        (&[(0x800, 2 * PAGE), (4 * PAGE + 0x10, PAGE)], &[PAGE..2 * PAGE]),
        // Several areas, out of order and touching.
        (
            &[(6 * PAGE, PAGE), (PAGE, PAGE), (2 * PAGE, PAGE)],
            &[PAGE..3 * PAGE, 6 * PAGE..7 * PAGE],
        ),
        // No areas: everything trapped.
        (&[], &[]),
        // One area of everything: nothing trapped.
        (&[(0, 8 * PAGE)], &[0..8 * PAGE]),
    ];
    for (areas, want) in layouts {
        let dev = device(size);
        let region = dev.sparse(&sparse_fixture(areas));
        assert_eq!(region.mapped_ranges(), want, "areas {areas:x?}");
        for page in 0..8u64 {
            for offset in [page * PAGE, page * PAGE + 0x7fc, page * PAGE + PAGE - 4] {
                dev.log.take();
                // SAFETY: offset + 4 <= size, 4-aligned.
                let got = unsafe {
                    ptr::read_volatile(region.as_ptr().unwrap().add(offset as usize).cast::<u32>())
                };
                assert_eq!(u64::from(got), dev.peek_word(offset, 4), "read at {offset:#x}");
                let log = dev.log.take();
                if region.is_trapped(offset) {
                    assert_eq!(
                        log,
                        vec![rec(offset, 4, u64::from(got), false)],
                        "areas {areas:x?}"
                    );
                } else {
                    assert!(log.is_empty(), "mapped page {page} went through the slow path");
                }
                let v = 0x5a00_0000 | offset as u32;
                // SAFETY: as above.
                unsafe {
                    ptr::write_volatile(region.as_mut_ptr().unwrap().add(offset as usize).cast::<u32>(), v)
                };
                assert_eq!(dev.peek_word(offset, 4), u64::from(v));
                assert_eq!(dev.log.take().len(), usize::from(region.is_trapped(offset)));
            }
        }
    }
}

#[test]
fn explicit_trap_ranges_are_page_granular() {
    let dev = device(4 * PAGE);
    let region = emulated(dev.io())
        .map_from(
            &dev.fd,
            0,
            &[SparseArea {
                offset: 0,
                size: 4 * PAGE,
            }],
        )
        .policy(MapPolicy::Trap(vec![0x10..0x14, 3 * PAGE..3 * PAGE + 1]))
        .build()
        .unwrap();
    assert_eq!(region.mapped_ranges(), &[PAGE..3 * PAGE]);
    assert!(region.is_trapped(0xffc) && !region.is_trapped(PAGE) && region.is_trapped(3 * PAGE + 0x800));
    let bad = emulated(dev.io())
        .map_from(
            &dev.fd,
            0,
            &[SparseArea {
                offset: 0,
                size: 4 * PAGE,
            }],
        )
        .policy(MapPolicy::trap_range(3 * PAGE..5 * PAGE))
        .build();
    let err = bad.unwrap_err();
    assert!(
        matches!(err, barmap::Error::OutOfRange { offset, len, .. } if offset == 3 * PAGE && len == 2 * PAGE),
        "{err:?}"
    );
}

#[test]
fn small_io_like_region_serves_its_bytes() {
    // Like pci-testdev's 256-byte I/O BAR: no mapping at all.
    let dev = device(0x100);
    let region = dev.trap_all();
    assert_eq!(region.size(), 0x100);
    for offset in [0u64, 0x83, 0xfc] {
        dev.log.take();
        // SAFETY: offset + 1 <= 0x100.
        let b = unsafe { ptr::read_volatile(region.as_ptr().unwrap().add(offset as usize)) };
        assert_eq!(dev.log.take(), vec![rec(offset, 1, u64::from(b), false)]);
    }
    // SAFETY: 0xfc + 4 <= 0x100, aligned.
    unsafe { ptr::write_volatile(region.as_mut_ptr().unwrap().add(0xfc).cast::<u32>(), 0xcafe_f00d) };
    assert_eq!(dev.log.take(), vec![rec(0xfc, 4, 0xcafe_f00d, true)]);
}

#[test]
fn hook_and_trace_see_every_trapped_access() {
    if !in_child() {
        // A child of its own: the logger is the process's.
        run_child("hook_and_trace_see_every_trapped_access").assert_passed();
        return;
    }
    // Tracing is on for regions built while barmap's trace level is enabled.
    trace_log::install();
    let dev = device(2 * PAGE);
    let seen = Arc::new(Log::new(64));
    let hook_log = seen.clone();
    let builder = emulated(dev.io()).map_from(
        &dev.fd,
        0,
        &[SparseArea {
            offset: PAGE,
            size: PAGE,
        }],
    );
    // SAFETY: `Log::push` only stores into preallocated atomics.
    let builder = unsafe {
        builder.hook(move |a: &Access| {
            hook_log.push(rec(a.offset, a.width, a.value, a.kind == AccessKind::Write))
        })
    };
    let region = builder.build().unwrap();
    // SAFETY: both offsets are inside the region and aligned.
    unsafe {
        ptr::write_volatile(region.as_mut_ptr().unwrap().add(0x20).cast::<u16>(), 0x4242);
        let _ = ptr::read_volatile(region.as_ptr().unwrap().add(0x20).cast::<u64>());
        // Mapped: no hook call.
        let _ = ptr::read_volatile(region.as_ptr().unwrap().add(PAGE as usize).cast::<u32>());
    }
    let hooked = seen.take();
    assert_eq!(hooked, dev.log.take());
    assert_eq!(hooked.len(), 2);
    assert_eq!(hooked[0], rec(0x20, 2, 0x4242, true));
    // The trace has the same two accesses, and not the mapped one.
    assert_eq!(region.flush_trace(), 2);
    let lines = trace_log::take();
    assert_eq!(
        lines,
        vec![
            "0000:ee:00.0 bar0: write16 at 0x20 = 0x4242".to_string(),
            format!("0000:ee:00.0 bar0: read64 at 0x20 = {:#018x}", hooked[1].value),
        ]
    );
    assert_eq!(hooked[1], rec(0x20, 8, dev.peek_word(0x20, 8), false));
    assert_eq!(region.flush_trace(), 0);
}

#[test]
fn eight_threads_hammer_holes_concurrently() {
    let dev = device(4 * PAGE);
    // Pages 0 and 2 trapped, 1 and 3 mapped.
    let region = dev.sparse(&[
        SparseArea {
            offset: PAGE,
            size: PAGE,
        },
        SparseArea {
            offset: 3 * PAGE,
            size: PAGE,
        },
    ]);
    const ROUNDS: u64 = 200;
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let region = &region;
            s.spawn(move || {
                // Each thread owns 8 bytes in each trapped page.
                for page in [0u64, 2] {
                    let offset = page * PAGE + t * 8;
                    let p = region.as_mut_ptr().unwrap().wrapping_add(offset as usize);
                    for i in 0..ROUNDS {
                        let v = t << 56 | page << 48 | i;
                        // SAFETY: offset + 8 <= size, aligned; only this thread uses it.
                        unsafe {
                            ptr::write_volatile(p.cast::<u64>(), v);
                            assert_eq!(ptr::read_volatile(p.cast::<u64>()), v);
                            ptr::write_volatile(p.cast::<u32>(), i as u32);
                            assert_eq!(ptr::read_volatile(p.cast::<u64>()), v & !0xffff_ffff | i);
                        }
                    }
                }
            });
        }
    });
    let log = dev.log.take();
    assert_eq!(log.len() as u64, 8 * 2 * ROUNDS * 4);
    for t in 0..8u64 {
        for page in [0u64, 2] {
            let offset = page * PAGE + t * 8;
            let mine: Vec<&Rec> = log.iter().filter(|r| r.offset == offset).collect();
            assert_eq!(mine.len() as u64, ROUNDS * 4);
            assert_eq!(dev.peek_word(offset, 8), t << 56 | page << 48 | (ROUNDS - 1));
        }
    }
}

/// Marks a faulting thread as past any count when it ends (also by a
/// panic), so that nobody waits for it to make progress.
struct Gone<'a>(&'a AtomicU64);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.store(u64::MAX, Ordering::SeqCst);
    }
}

#[test]
fn regions_come_and_go_while_others_fault() {
    const ROUNDS: u64 = 160;
    let dev = device(PAGE);
    let stay = dev.trap_all();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let progress: [AtomicU64; 3] = Default::default();
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (stay, stop, done, progress) = (&stay, &stop, &done, &progress[t as usize]);
            s.spawn(move || {
                let _gone = Gone(progress);
                let p = stay
                    .as_mut_ptr()
                    .unwrap()
                    .wrapping_add(t as usize * 8)
                    .cast::<u64>();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: inside the region, aligned, owned by this thread.
                    unsafe {
                        ptr::write_volatile(p, t << 32 | i);
                        assert_eq!(ptr::read_volatile(p), t << 32 | i);
                    }
                    i += 1;
                    progress.store(i, Ordering::SeqCst);
                }
                done.fetch_add(i, Ordering::Relaxed);
            });
        }
        // More regions than the registry has slots (128), one after the
        // other, each used and dropped while the threads above keep faulting:
        // a round ends only when every thread has served a fault meanwhile.
        for round in 0..ROUNDS {
            let before: Vec<u64> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
            let other = device(PAGE);
            let region = other.trap_all();
            // SAFETY: inside the region, aligned.
            unsafe {
                ptr::write_volatile(region.as_mut_ptr().unwrap().cast::<u64>(), round);
                assert_eq!(ptr::read_volatile(region.as_ptr().unwrap().cast::<u64>()), round);
            }
            drop(region);
            assert_eq!(other.log.take().len(), 2);
            while progress
                .iter()
                .zip(&before)
                .any(|(p, &b)| p.load(Ordering::SeqCst) == b)
            {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(done.load(Ordering::Relaxed) >= 3 * ROUNDS);
}

// ---- child-process tests ----

static FOREIGN_HITS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn foreign_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO handler: `info` is valid.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = addr & !(PAGE as usize - 1);
    FOREIGN_HITS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: makes the faulting (test-owned) page accessible so the access can retry.
    unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            PAGE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
}

#[test]
fn foreign_faults_reach_the_earlier_handler() {
    if !in_child() {
        run_child("foreign_faults_reach_the_earlier_handler").assert_passed();
        return;
    }
    // SAFETY: installing a valid SA_SIGINFO handler before barmap's; the page is
    // this test's own anonymous mapping.
    let page = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction =
            foreign_handler as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        action.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGSEGV, &action, ptr::null_mut()), 0);
        let page = libc::mmap(
            ptr::null_mut(),
            PAGE as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        page.cast::<u32>()
    };
    let dev = device(PAGE);
    let region = dev.trap_all(); // installs barmap's handler on top
                                 // SAFETY: `page` is our PROT_NONE page; the foreign handler opens it up.
    unsafe {
        ptr::write_volatile(page, 7);
        assert_eq!(ptr::read_volatile(page), 7);
    }
    assert_eq!(FOREIGN_HITS.load(Ordering::SeqCst), 1);
    // SAFETY: inside the region, aligned.
    let v = unsafe { ptr::read_volatile(region.as_ptr().unwrap().cast::<u32>()) };
    assert_eq!(u64::from(v), dev.peek_word(0, 4));
    assert_eq!(FOREIGN_HITS.load(Ordering::SeqCst), 1);
}

/// `n` pages of this test's own, `PROT_NONE` until a handler opens them.
fn closed_pages(n: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping, never unmapped (the child ends).
    let mem = unsafe {
        libc::mmap(
            ptr::null_mut(),
            n * PAGE as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    mem.cast()
}

/// Makes the page holding `addr` (one of [`closed_pages`]) readable and writable.
fn open_page(addr: usize) {
    let page = addr & !(PAGE as usize - 1);
    // SAFETY: the page belongs to this test's own mapping.
    unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            PAGE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
}

/// This thread's signal mask as the kernel's 64-bit mask (bit n - 1 for
/// signal n). Async-signal-safe.
fn thread_mask() -> u64 {
    // SAFETY: an all-zero sigset_t is valid; pthread_sigmask only fills it,
    // and sigismember only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, ptr::null(), &mut set);
        (1..=64)
            .filter(|&n| libc::sigismember(&set, n) == 1)
            .fold(0, |m, n| m | 1 << (n - 1))
    }
}

fn sig_bit(signal: libc::c_int) -> u64 {
    1 << (signal - 1)
}

/// Installs `handler` (SA_SIGINFO unless `flags` says otherwise) for SIGSEGV
/// with `flags` and `mask`.
fn set_sigsegv_masked(handler: usize, flags: libc::c_int, mask: &[libc::c_int]) {
    // SAFETY: `handler` is a valid handler for `flags`; the sets are valid.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        for &s in mask {
            libc::sigaddset(&mut action.sa_mask, s);
        }
        assert_eq!(libc::sigaction(libc::SIGSEGV, &action, ptr::null_mut()), 0);
    }
}

type SigInfoHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

static NODEFER_OUTER: AtomicUsize = AtomicUsize::new(0);
static NODEFER_INNER: AtomicUsize = AtomicUsize::new(0);
static NODEFER_DEPTH: AtomicUsize = AtomicUsize::new(0);
static NODEFER_MAX_DEPTH: AtomicUsize = AtomicUsize::new(0);
static NODEFER_HITS: AtomicUsize = AtomicUsize::new(0);
static NODEFER_MASK: AtomicU64 = AtomicU64::new(0);

/// An `SA_NODEFER` handler that, for a fault on the outer page, touches the
/// (closed) inner page before it opens the outer one: a nested fault.
extern "C" fn nodefer_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO handler for a fault: `info` is valid.
    let addr = unsafe { (*info).si_addr() } as usize;
    let depth = NODEFER_DEPTH.fetch_add(1, Ordering::SeqCst) + 1;
    NODEFER_MAX_DEPTH.fetch_max(depth, Ordering::SeqCst);
    NODEFER_HITS.fetch_add(1, Ordering::SeqCst);
    if addr == NODEFER_OUTER.load(Ordering::SeqCst) {
        NODEFER_MASK.store(thread_mask(), Ordering::SeqCst);
        let inner = NODEFER_INNER.load(Ordering::SeqCst) as *mut u32;
        // SAFETY: a closed page of this test's; the nested fault opens it.
        unsafe { ptr::write_volatile(inner, 5) };
    }
    open_page(addr);
    NODEFER_DEPTH.fetch_sub(1, Ordering::SeqCst);
}

#[test]
fn an_sa_nodefer_handler_before_barmaps_can_take_a_nested_fault() {
    if !in_child() {
        run_child("an_sa_nodefer_handler_before_barmaps_can_take_a_nested_fault").assert_passed();
        return;
    }
    set_sigsegv_masked(
        nodefer_handler as SigInfoHandler as usize,
        libc::SA_SIGINFO | libc::SA_NODEFER,
        &[],
    );
    let dev = device(PAGE);
    let region = dev.trap_all(); // installs barmap's handler on top
    let pages = closed_pages(2);
    let (outer, inner) = (
        pages.cast::<u32>(),
        pages.wrapping_add(PAGE as usize).cast::<u32>(),
    );
    NODEFER_OUTER.store(outer as usize, Ordering::SeqCst);
    NODEFER_INNER.store(inner as usize, Ordering::SeqCst);
    // Both faults are delivered on the alternate stack, one signal frame on
    // top of the other (each up to 3.5 KiB with AVX-512 state, as under
    // QEMU's `-cpu max`): give them room, as a program that nests faults in
    // its handler must.
    with_alt_stack(64 * 1024, || {
        // SAFETY: closed pages of this test's; the handler opens them.
        unsafe {
            ptr::write_volatile(outer, 7);
            assert_eq!(ptr::read_volatile(outer), 7);
            assert_eq!(ptr::read_volatile(inner), 5);
        }
    });
    assert_eq!(NODEFER_HITS.load(Ordering::SeqCst), 2);
    assert_eq!(
        NODEFER_MAX_DEPTH.load(Ordering::SeqCst),
        2,
        "the inner fault nests in the outer"
    );
    assert_eq!(
        NODEFER_MASK.load(Ordering::SeqCst) & sig_bit(libc::SIGSEGV),
        0,
        "SIGSEGV blocked in an SA_NODEFER handler"
    );
    assert_eq!(thread_mask() & sig_bit(libc::SIGSEGV), 0);
    // barmap's own faults are still served.
    // SAFETY: inside the region, aligned.
    let v = unsafe { ptr::read_volatile(region.as_ptr().unwrap().cast::<u32>()) };
    assert_eq!(dev.log.take(), vec![rec(0, 4, u64::from(v), false)]);
}

static RESETHAND_HITS: AtomicUsize = AtomicUsize::new(0);

/// An `SA_RESETHAND` handler: counts and opens the page.
extern "C" fn resethand_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RESETHAND_HITS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: SA_SIGINFO handler for a fault: `info` is valid.
    open_page(unsafe { (*info).si_addr() } as usize);
}

#[test]
fn an_sa_resethand_handler_before_barmaps_is_called_once() {
    if !in_child() {
        let child = run_child("an_sa_resethand_handler_before_barmaps_is_called_once");
        // The second foreign fault found SIG_DFL.
        child.assert_killed_by(libc::SIGSEGV);
        assert!(
            child.stderr.contains("first fault served, handler called 1 time"),
            "{child}"
        );
        return;
    }
    set_sigsegv_masked(
        resethand_handler as SigInfoHandler as usize,
        libc::SA_SIGINFO | libc::SA_RESETHAND,
        &[],
    );
    let dev = device(PAGE);
    let region = dev.trap_all(); // installs barmap's handler on top
    let pages = closed_pages(2);
    // SAFETY: a closed page of this test's; the handler opens it.
    unsafe { ptr::write_volatile(pages.cast::<u32>(), 1) };
    let hits = RESETHAND_HITS.load(Ordering::SeqCst);
    eprintln!("first fault served, handler called {hits} time");
    // barmap's handler stays in place for its own faults.
    // SAFETY: inside the region, aligned.
    unsafe { ptr::write_volatile(region.as_mut_ptr().unwrap().cast::<u16>(), 0x1234) };
    assert_eq!(dev.log.take(), vec![rec(0, 2, 0x1234, true)]);
    fault_next();
    // SAFETY: a closed page of this test's: with the handler reset to
    // SIG_DFL, this fault ends the child.
    unsafe { ptr::write_volatile(pages.wrapping_add(PAGE as usize).cast::<u32>(), 2) };
    unreachable!(
        "the handler was called again: {}",
        RESETHAND_HITS.load(Ordering::SeqCst)
    );
}

static MASKED_PAGE: AtomicUsize = AtomicUsize::new(0);
static MASKED_MASK: AtomicU64 = AtomicU64::new(0);

/// A plain (not `SA_SIGINFO`) handler: records the mask it runs under and
/// opens the test's page.
extern "C" fn masked_handler(_: libc::c_int) {
    MASKED_MASK.store(thread_mask(), Ordering::SeqCst);
    open_page(MASKED_PAGE.load(Ordering::SeqCst));
}

#[test]
fn the_earlier_handler_runs_under_its_own_sa_mask() {
    if !in_child() {
        run_child("the_earlier_handler_runs_under_its_own_sa_mask").assert_passed();
        return;
    }
    set_sigsegv_masked(
        masked_handler as extern "C" fn(libc::c_int) as usize,
        0,
        &[libc::SIGUSR1],
    );
    let dev = device(PAGE);
    let region = dev.trap_all(); // installs barmap's handler on top
                                 // The interrupted code blocks SIGUSR2.
                                 // SAFETY: valid sets.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut()), 0);
    }
    let before = thread_mask();
    assert_eq!(before & sig_bit(libc::SIGUSR1), 0);
    let page = closed_pages(1);
    MASKED_PAGE.store(page as usize, Ordering::SeqCst);
    // SAFETY: a closed page of this test's; the handler opens it.
    unsafe { ptr::write_volatile(page.cast::<u32>(), 3) };
    let inside = MASKED_MASK.load(Ordering::SeqCst);
    // What the kernel would have set: the interrupted mask, the handler's
    // sa_mask and the signal itself (no SA_NODEFER), and nothing else (barmap
    // blocks every signal while its own handler runs).
    assert_eq!(
        inside,
        before | sig_bit(libc::SIGUSR1) | sig_bit(libc::SIGSEGV),
        "mask in the handler {inside:#x}, before the fault {before:#x}"
    );
    assert_eq!(thread_mask(), before, "the mask is restored after the fault");
    // SAFETY: inside the region, aligned.
    unsafe { ptr::write_volatile(region.as_mut_ptr().unwrap().cast::<u8>(), 9) };
    assert_eq!(dev.log.take(), vec![rec(0, 1, 9, true)]);
    assert_eq!(thread_mask(), before, "the mask is unchanged by a served fault");
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let buf = std::hint::black_box([depth; 64]);
    recurse(buf[depth as usize % 64] + 1) + buf[0]
}

#[test]
fn stack_overflow_still_reports_as_one() {
    if !in_child() {
        let child = run_child("stack_overflow_still_reports_as_one");
        child.assert_killed_by(libc::SIGABRT);
        assert!(child.stderr.contains("has overflowed its stack"), "{child}");
        return;
    }
    let dev = device(PAGE);
    let _region = dev.trap_all();
    fault_next();
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| recurse(0))
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn unsupported_instruction_dies_with_a_diagnostic() {
    if !in_child() {
        let child = run_child("unsupported_instruction_dies_with_a_diagnostic");
        child.assert_killed_by(libc::SIGSEGV);
        let line = child
            .stderr
            .lines()
            .find(|l| l.starts_with("barmap: cannot emulate"))
            .unwrap_or_else(|| panic!("no diagnostic in: {child}"));
        assert!(
            line.contains("shadow region 0000:ee:00.0 bar0 at offset 0x30"),
            "{line}"
        );
        assert!(line.contains("instruction not emulated"), "{line}");
        assert!(line.ends_with(": 0f 10 07"), "{line}");
        return;
    }
    let dev = device(PAGE);
    let region = dev.trap_all();
    let p = region.as_ptr().unwrap().wrapping_add(0x30);
    fault_next();
    // SAFETY: a 16-byte load from inside the region; barmap refuses to emulate
    // it, which ends this child process.
    unsafe { asm!("movups xmm0, xmmword ptr [rdi]", in("rdi") p, out("xmm0") _) };
    unreachable!("the SSE load was served");
}

#[test]
fn access_past_the_region_end_dies_with_a_diagnostic() {
    if !in_child() {
        let child = run_child("access_past_the_region_end_dies_with_a_diagnostic");
        child.assert_killed_by(libc::SIGSEGV);
        assert!(
            child
                .stderr
                .contains("at offset 0xfe: access runs past the end of the region"),
            "{child}"
        );
        assert!(child.stderr.contains(": 8b 07\n"), "{child}");
        return;
    }
    let dev = device(0x100);
    let region = dev.trap_all();
    let p = region.as_ptr().unwrap().wrapping_add(0xfe);
    fault_next();
    // SAFETY: deliberately straddles the end of the 256-byte region (the page
    // goes on), which barmap refuses, ending this child process.
    unsafe { asm!("mov eax, dword ptr [rdi]", in("rdi") p, out("eax") _) };
    unreachable!("the access past the end was served");
}

/// Runs `f` on this thread with an alternate signal stack of `size` bytes
/// (with a guard page below it), or with none if `size` is 0.
fn with_alt_stack(size: usize, f: impl FnOnce()) {
    let page = PAGE as usize;
    let total = size.div_ceil(page) * page + page;
    // SAFETY: a fresh anonymous mapping, its lowest page left PROT_NONE as a
    // guard; it is made the alternate stack only while `f` runs, and
    // unmapped after the alternate stack is disabled again.
    unsafe {
        let mem = libc::mmap(
            ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(mem, libc::MAP_FAILED);
        let stack = mem.cast::<u8>().add(page);
        assert_eq!(
            libc::mprotect(stack.cast(), total - page, libc::PROT_READ | libc::PROT_WRITE),
            0
        );
        let mut old: libc::stack_t = std::mem::zeroed();
        let new = libc::stack_t {
            ss_sp: stack.cast(),
            ss_flags: if size == 0 { libc::SS_DISABLE } else { 0 },
            ss_size: total - page,
        };
        assert_eq!(libc::sigaltstack(&new, &mut old), 0);
        f();
        assert_eq!(libc::sigaltstack(&old, ptr::null_mut()), 0);
        libc::munmap(mem, total);
    }
}

static FRAME_DEPTH: AtomicUsize = AtomicUsize::new(0);

/// Records how deep into the alternate stack a handler's frame starts.
extern "C" fn measure_frame(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut ss: libc::stack_t = libc::stack_t {
        ss_sp: ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: queries the current alternate stack into a valid struct.
    unsafe { libc::sigaltstack(ptr::null(), &mut ss) };
    let top = ss.ss_sp as usize + ss.ss_size;
    FRAME_DEPTH.store(top - (&ss as *const libc::stack_t as usize), Ordering::SeqCst);
}

/// How many bytes of the alternate stack the kernel's signal frame (plus a
/// minimal handler frame) takes on this CPU.
fn signal_frame_size() -> usize {
    // SAFETY: installs a valid SA_SIGINFO handler for SIGUSR1 (this child's own).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction =
            measure_frame as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &action, ptr::null_mut()), 0);
    }
    with_alt_stack(64 << 10, || {
        // SAFETY: raising a signal whose handler is installed above.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
    });
    FRAME_DEPTH.load(Ordering::SeqCst)
}

#[test]
fn faults_are_served_with_a_minimal_or_no_alternate_stack() {
    if !in_child() {
        run_child("faults_are_served_with_a_minimal_or_no_alternate_stack").assert_passed();
        return;
    }
    let dev = device(PAGE);
    let region = dev.trap_all();
    // Room for the kernel's signal frame and 2 KiB more: barmap's handler must
    // do its decoding elsewhere (an overflow hits the guard page and kills
    // this child). Then no alternate stack at all.
    let tight = signal_frame_size() + 2048;
    for size in [tight, 0] {
        std::thread::scope(|s| {
            s.spawn(|| {
                with_alt_stack(size, || {
                    let p = region.as_mut_ptr().unwrap().wrapping_add(0x18).cast::<u64>();
                    // SAFETY: inside the region, aligned.
                    unsafe {
                        ptr::write_volatile(p, size as u64);
                        assert_eq!(ptr::read_volatile(p), size as u64);
                    }
                })
            });
        });
    }
    assert_eq!(dev.log.take().len(), 4);
}

static SCRIBBLES: AtomicUsize = AtomicUsize::new(0);

/// A signal handler on the alternate stack that overwrites 2 KiB of it.
extern "C" fn scribble(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut junk = [0u8; 2048];
    for b in junk.iter_mut() {
        // SAFETY: a write to a local.
        unsafe { ptr::write_volatile(b, 0xaa) };
    }
    std::hint::black_box(&junk);
    SCRIBBLES.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn other_signals_during_a_fault_do_not_clobber_it() {
    if !in_child() {
        run_child("other_signals_during_a_fault_do_not_clobber_it").assert_passed();
        return;
    }
    // SAFETY: installs a valid SA_SIGINFO | SA_ONSTACK handler for SIGUSR2.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction =
            scribble as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &action, ptr::null_mut()), 0);
    }
    let dev = device(PAGE);
    let region = dev.trap_all();
    let done = std::sync::atomic::AtomicBool::new(false);
    let worker = AtomicU64::new(0);
    let rounds = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: pthread_self has no preconditions.
            worker.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
            let p = region.as_mut_ptr().unwrap().cast::<u64>();
            // At least 5000 rounds, and on until some signals came in between.
            let mut i = 0u64;
            while i < 5_000 || SCRIBBLES.load(Ordering::Relaxed) < 20 {
                // SAFETY: inside the region, aligned.
                unsafe {
                    ptr::write_volatile(p, i);
                    assert_eq!(ptr::read_volatile(p), i);
                }
                i += 1;
                rounds.store(i, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        });
        while !done.load(Ordering::SeqCst) {
            let thread = worker.load(Ordering::SeqCst);
            let seen = rounds.load(Ordering::SeqCst);
            if thread != 0 {
                // SAFETY: the worker thread is alive until `done` is set (it is
                // joined only when the scope ends).
                unsafe { libc::pthread_kill(thread as libc::pthread_t, libc::SIGUSR2) };
            }
            // The next signal only after the worker got on (on a slow
            // single-CPU guest, signals sent on a timer can starve it).
            while rounds.load(Ordering::SeqCst) == seen && !done.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
    });
}

#[test]
fn trapped_accesses_are_traced_through_log() {
    if !in_child() {
        run_child("trapped_accesses_are_traced_through_log").assert_passed();
        return;
    }
    trace_log::install();
    let dev = device(PAGE);
    let region = dev.trap_all();
    let p = region.as_mut_ptr().unwrap();
    // SAFETY: inside the region, aligned.
    unsafe {
        ptr::write_volatile(p.add(0x10).cast::<u16>(), 0xbeef);
        ptr::read_volatile(p.add(0x10).cast::<u32>());
    }
    assert_eq!(region.flush_trace(), 2);
    let lines = trace_log::take();
    let value = dev.peek_word(0x10, 4);
    assert_eq!(
        lines,
        vec![
            "0000:ee:00.0 bar0: write16 at 0x10 = 0xbeef".to_string(),
            format!("0000:ee:00.0 bar0: read32 at 0x10 = {value:#010x}"),
        ]
    );
    // More than the ring holds: the overflow is counted, not lost silently.
    for i in 0..5000 {
        // SAFETY: inside the region, aligned.
        unsafe { ptr::write_volatile(p.cast::<u8>(), i as u8) };
    }
    assert_eq!(region.flush_trace(), 4096);
    let lines = trace_log::take();
    assert_eq!(lines.len(), 4097);
    assert_eq!(
        lines[4096],
        "0000:ee:00.0 bar0: 904 trapped accesses not traced (ring full)"
    );
    assert_eq!(region.flush_trace(), 0);
}

#[test]
fn faults_on_threads_with_small_stacks_are_served() {
    if !in_child() {
        run_child("faults_on_threads_with_small_stacks_are_served").assert_passed();
        return;
    }
    let dev = device(PAGE);
    let region = dev.trap_all();
    // std puts a thread's alternate signal stack right below its (guarded)
    // stack, so with a small stack the interrupted stack pointer is only a
    // few dozen KiB above the handler's frame on the alternate stack.
    for stack in [32 << 10, 64 << 10] {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(stack)
                .spawn_scoped(s, || {
                    let p = region.as_mut_ptr().unwrap().wrapping_add(0x20).cast::<u64>();
                    // SAFETY: inside the region, aligned.
                    unsafe {
                        ptr::write_volatile(p, stack as u64);
                        assert_eq!(ptr::read_volatile(p), stack as u64);
                    }
                })
                .unwrap();
        });
    }
    assert_eq!(dev.log.take().len(), 4);
}

/// What [`fault_below_the_alternate_stack`] works on.
struct BelowAlt {
    region: *mut u8,
    alt: libc::stack_t,
    value: AtomicU64,
}

/// A thread whose alternate signal stack lies just below its own stack:
/// stores to and loads from a trapped page.
extern "C" fn fault_below_the_alternate_stack(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is the `BelowAlt` that outlives this thread (it is joined).
    let job = unsafe { &*arg.cast::<BelowAlt>() };
    // SAFETY: the alternate stack is mapped and not otherwise used; it is
    // disabled again before the thread ends.
    unsafe { assert_eq!(libc::sigaltstack(&job.alt, ptr::null_mut()), 0) };
    let p = job.region.wrapping_add(0x28).cast::<u64>();
    // SAFETY: inside the region, aligned.
    unsafe {
        ptr::write_volatile(p, 0x5eed);
        job.value.store(ptr::read_volatile(p), Ordering::SeqCst);
    }
    let off = libc::stack_t {
        ss_sp: ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: disables the alternate stack.
    unsafe { assert_eq!(libc::sigaltstack(&off, ptr::null_mut()), 0) };
    ptr::null_mut()
}

#[test]
fn faults_are_served_when_the_alternate_stack_lies_just_below_the_stack() {
    if !in_child() {
        let name = "faults_are_served_when_the_alternate_stack_lies_just_below_the_stack";
        run_child(name).assert_passed();
        return;
    }
    let dev = device(PAGE);
    let region = dev.trap_all();
    // One mapping: guard page, a tight alternate stack (the kernel's signal
    // frame and 2 KiB more), guard page, then a 32 KiB thread stack. The
    // interrupted stack pointer is then less than 40 KiB above the handler's
    // frame on the alternate stack, as with a small std thread whose
    // alternate stack was mapped right below it.
    let page = PAGE as usize;
    let alt_size = (signal_frame_size() + 2048).div_ceil(page) * page;
    let stack_size = 32 << 10;
    let total = page + alt_size + page + stack_size;
    // SAFETY: a fresh anonymous mapping whose guard pages are made
    // PROT_NONE; the thread using its parts is joined before it is unmapped.
    unsafe {
        let mem = libc::mmap(
            ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
        .cast::<u8>();
        assert_ne!(mem.cast(), libc::MAP_FAILED);
        assert_eq!(libc::mprotect(mem.cast(), page, libc::PROT_NONE), 0);
        assert_eq!(
            libc::mprotect(mem.add(page + alt_size).cast(), page, libc::PROT_NONE),
            0
        );
        let job = BelowAlt {
            region: region.as_mut_ptr().unwrap(),
            alt: libc::stack_t {
                ss_sp: mem.add(page).cast(),
                ss_flags: 0,
                ss_size: alt_size,
            },
            value: AtomicU64::new(0),
        };
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_attr_init(&mut attr), 0);
        let stack = mem.add(page + alt_size + page);
        assert_eq!(
            libc::pthread_attr_setstack(&mut attr, stack.cast(), stack_size),
            0
        );
        let mut thread: libc::pthread_t = 0;
        let arg = (&job as *const BelowAlt).cast_mut().cast();
        assert_eq!(
            libc::pthread_create(&mut thread, &attr, fault_below_the_alternate_stack, arg),
            0
        );
        assert_eq!(libc::pthread_join(thread, ptr::null_mut()), 0);
        libc::pthread_attr_destroy(&mut attr);
        assert_eq!(job.value.load(Ordering::SeqCst), 0x5eed);
        libc::munmap(mem.cast(), total);
    }
    assert_eq!(dev.log.take().len(), 2);
}

static SENT_HITS: AtomicUsize = AtomicUsize::new(0);
static SENT_CODE: AtomicUsize = AtomicUsize::new(0);

/// Counts sent SIGSEGVs (and remembers the last `si_code`).
extern "C" fn count_sent(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO handler: `info` is valid.
    let code = unsafe { (*info).si_code };
    SENT_CODE.store(code as u32 as usize, Ordering::SeqCst);
    SENT_HITS.fetch_add(1, Ordering::SeqCst);
}

/// Sends SIGSEGV to this thread with `si_code` SI_QUEUE and the word that
/// overlays a fault's `si_addr` set to `addr`.
fn queue_sigsegv_claiming(addr: usize) {
    // siginfo_t: si_signo, si_errno, si_code, padding, then the union, whose
    // first word is `si_addr` for a fault (`si_pid`, `si_uid` when sent).
    let mut info = [0u8; std::mem::size_of::<libc::siginfo_t>()];
    info[0..4].copy_from_slice(&libc::SIGSEGV.to_ne_bytes());
    info[8..12].copy_from_slice(&libc::SI_QUEUE.to_ne_bytes());
    info[16..24].copy_from_slice(&(addr as u64).to_ne_bytes());
    // SAFETY: queues a signal to this very thread with a fully initialised
    // siginfo_t; it is handled before the system call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            libc::gettid(),
            libc::SIGSEGV,
            info.as_ptr(),
        )
    };
    assert_eq!(rc, 0, "rt_tgsigqueueinfo: {}", io::Error::last_os_error());
}

/// Installs `action` (a handler, SIG_IGN or SIG_DFL) for SIGSEGV.
fn set_sigsegv(action: libc::sighandler_t, flags: libc::c_int) {
    // SAFETY: `action` is SIG_IGN, SIG_DFL or a valid SA_SIGINFO handler.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = action;
        act.sa_flags = flags;
        assert_eq!(libc::sigaction(libc::SIGSEGV, &act, ptr::null_mut()), 0);
    }
}

#[test]
fn sent_sigsegv_goes_to_the_earlier_handler() {
    if !in_child() {
        run_child("sent_sigsegv_goes_to_the_earlier_handler").assert_passed();
        return;
    }
    set_sigsegv(
        count_sent as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize,
        libc::SA_SIGINFO,
    );
    let dev = device(PAGE);
    let region = dev.trap_all(); // installs barmap's handler on top
                                 // SAFETY: raise has no preconditions; the handler above counts it.
    assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
    assert_eq!(SENT_HITS.load(Ordering::SeqCst), 1);
    assert_eq!(SENT_CODE.load(Ordering::SeqCst), libc::SI_TKILL as u32 as usize);
    // A sent signal whose pid/uid words read as an address inside the region
    // is still not a fault there.
    queue_sigsegv_claiming(region.as_ptr().unwrap() as usize + 0x10);
    assert_eq!(SENT_HITS.load(Ordering::SeqCst), 2);
    assert_eq!(SENT_CODE.load(Ordering::SeqCst), libc::SI_QUEUE as u32 as usize);
    assert_eq!(dev.log.take(), vec![]);
    // Real faults on the region are still served.
    // SAFETY: inside the region, aligned.
    let v = unsafe { ptr::read_volatile(region.as_ptr().unwrap().add(0x10).cast::<u32>()) };
    assert_eq!(dev.log.take(), vec![rec(0x10, 4, u64::from(v), false)]);
    assert_eq!(SENT_HITS.load(Ordering::SeqCst), 2);
}

#[test]
fn sent_sigsegv_is_ignored_when_it_was_ignored_before() {
    if !in_child() {
        run_child("sent_sigsegv_is_ignored_when_it_was_ignored_before").assert_passed();
        return;
    }
    set_sigsegv(libc::SIG_IGN, 0);
    let dev = device(PAGE);
    let region = dev.trap_all();
    // SAFETY: raise has no preconditions; SIGSEGV is ignored.
    assert_eq!(unsafe { libc::raise(libc::SIGSEGV) }, 0);
    queue_sigsegv_claiming(region.as_ptr().unwrap() as usize);
    // barmap's handler is still in place.
    // SAFETY: inside the region, aligned.
    unsafe { ptr::write_volatile(region.as_mut_ptr().unwrap().cast::<u16>(), 0x1234) };
    assert_eq!(dev.log.take(), vec![rec(0, 2, 0x1234, true)]);
}

#[test]
fn sent_sigsegv_kills_when_that_was_the_default() {
    if !in_child() {
        run_child("sent_sigsegv_kills_when_that_was_the_default").assert_killed_by(libc::SIGSEGV);
        return;
    }
    set_sigsegv(libc::SIG_DFL, 0);
    let dev = device(PAGE);
    let region = dev.trap_all();
    // SAFETY: inside the region, aligned.
    unsafe { ptr::write_volatile(region.as_mut_ptr().unwrap().cast::<u16>(), 0x1234) };
    // The region was served: the marker comes after it.
    fault_next();
    // SAFETY: raise has no preconditions; it ends this child process.
    unsafe { libc::raise(libc::SIGSEGV) };
    unreachable!("the sent SIGSEGV was not delivered to the default action");
}

#[test]
fn a_full_region_table_is_reported_and_frees_up() {
    if !in_child() {
        // A child of its own: no other test may hold regions meanwhile.
        run_child("a_full_region_table_is_reported_and_frees_up").assert_passed();
        return;
    }
    let dev = device(PAGE);
    let capacity = barmap::shadow::CAPACITY;
    let mut regions: Vec<Region> = (0..capacity).map(|_| dev.trap_all()).collect();
    let err = emulated(dev.io()).policy(MapPolicy::TrapAll).build().unwrap_err();
    assert!(
        matches!(&err, barmap::Error::ShadowTableFull { addr, capacity: c, .. } if *addr == emulated_addr() && *c == capacity),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("at most {capacity}")), "{err}");
    // Every region still works, and freeing one makes room for another.
    drop(regions.swap_remove(17));
    regions.push(dev.trap_all());
    for (i, region) in regions.iter().enumerate() {
        // SAFETY: inside the region, aligned.
        unsafe {
            ptr::write_volatile(
                region.as_mut_ptr().unwrap().add(8 * (i % 64)).cast::<u8>(),
                i as u8,
            )
        };
    }
    assert_eq!(dev.log.take().len(), capacity);
}

/// A region of any size that is never accessed.
struct Untouched(u64);

// SAFETY: every method returns or panics at once; the test never calls the
// panicking ones (and a call would be the test's failure).
unsafe impl RegionIo for Untouched {
    fn size(&self) -> u64 {
        self.0
    }
    fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
        unreachable!("untouched region read")
    }
    fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
        unreachable!("untouched region written")
    }
}

#[test]
fn sizes_and_areas_near_the_top_are_refused() {
    for size in [u64::MAX, u64::MAX - PAGE, u64::MAX - 2 * PAGE + 2] {
        let err = emulated(Arc::new(Untouched(size))).build().unwrap_err();
        assert!(
            matches!(&err, barmap::Error::Shadow { step: "reserving the address range", len, .. } if *len == size),
            "{size:#x}: {err:?}"
        );
    }
    let dev = device(PAGE);
    let wraps = SparseArea {
        offset: u64::MAX,
        size: 2,
    };
    let err = emulated(dev.io())
        .map_from(&dev.fd, 0, &[wraps])
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, barmap::Error::NotMmapable { reason, .. } if reason.contains("outside the region")),
        "{err:?}"
    );
}
