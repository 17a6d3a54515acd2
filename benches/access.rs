//! Mapped and syscall-path register accesses against their floors, on edu
//! BAR0 in the QEMU guest (`qemu-scripts/guest-bench.sh`).
//!
//! - `mapped`: `Region::read::<u32>` vs a raw `read_volatile` of the same pointer.
//! - `syscall`: `Region::read::<u32>` / `write::<u32>` on a syscall-only
//!   handle (`MapPolicy::TrapAll`) vs a bare `pread` / `pwrite` of the same
//!   width at the same file offset.
//!
//! Besides criterion's report, each pair is also timed interleaved (batches of
//! A and B, alternating which goes first) and printed as one `RATIO` line of
//! medians, so both sides see the same machine state.
//!
//! Instructions per call: with `BARMAP_ACCESS_CALLS=N` set, the binary
//! instead makes N calls of each side of the syscall pairs, each side in a
//! function of its own, over a memfd region built with
//! `Region::fd_builder` (the same typed slow path as a device's region, one
//! `pread`/`pwrite` on the descriptor). Under
//! `valgrind --tool=callgrind`, the inclusive count of `count_typed_read`
//! (and the others) divided by N is the user-space instructions per call;
//! the syscalls themselves count none.

mod common;

use std::hint::black_box;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use barmap::region::FdRegion;
use barmap::{Device, MapPolicy, PciAddress, Region, RegionIndex};
use common::{bare_pread, bare_pwrite, interleaved};
use criterion::{criterion_group, Criterion};

/// edu's ID register (read-only).
const ID: u64 = 0;
/// edu's liveness register: reads back the inverse of what was written.
const LIVENESS: u64 = 4;

/// edu's address in the guest, or `None` (with a note) elsewhere, e.g. when
/// `cargo test --all-targets` runs this bench once on the host.
fn edu() -> Option<PciAddress> {
    match std::env::var("BARMAP_EDU") {
        Ok(value) => Some(value.parse().expect("BARMAP_EDU is a PCI address")),
        Err(_) => {
            println!("BARMAP_EDU is not set: the access bench needs edu (run qemu-scripts/guest-bench.sh)");
            None
        }
    }
}

// Both sides of each pair get their handle and offset through `black_box` on
// every call, as a driver holding either one in a struct would: the raw side
// a descriptor, barmap a `&Region`.

#[inline(always)]
fn typed_read(region: &Region) -> u32 {
    black_box(region).read::<u32>(black_box(ID)).unwrap()
}

#[inline(always)]
fn typed_write(region: &Region, value: u32) {
    black_box(region)
        .write::<u32>(black_box(LIVENESS), value)
        .unwrap()
}

#[inline(always)]
fn floor_read(fd: i32, file_offset: u64) -> u32 {
    bare_pread(black_box(fd), black_box(file_offset + ID))
}

#[inline(always)]
fn floor_write(fd: i32, file_offset: u64, value: u32) {
    bare_pwrite(black_box(fd), black_box(file_offset + LIVENESS), value)
}

fn benches(c: &mut Criterion) {
    let Some(edu) = edu() else { return };
    let dev = Device::open(edu).expect("open edu");
    let mapped = dev.bar(0).expect("map BAR0");
    let base = mapped.mapping_address() as *const u32;
    let syscall = dev
        .region(RegionIndex::bar(0).unwrap(), MapPolicy::TrapAll)
        .unwrap();
    let fd = dev.as_raw_fd();
    let file_offset = mapped.info().offset;
    // SAFETY: `base` is the start of the live mapping of BAR0, which outlives
    // every use below; `ID` is a 4-byte aligned offset inside it.
    let raw = || unsafe { std::ptr::read_volatile(black_box(base).byte_add(black_box(ID) as usize)) };
    let ours = || black_box(&mapped).read::<u32>(black_box(ID)).unwrap();

    let mut group = c.benchmark_group("mapped_read_u32");
    group.bench_function("raw_read_volatile", |b| b.iter(|| black_box(raw())));
    group.bench_function("barmap_bar_read", |b| b.iter(|| black_box(ours())));
    group.finish();

    let mut group = c.benchmark_group("syscall_read_u32");
    group.bench_function("bare_pread", |b| {
        b.iter(|| black_box(floor_read(fd, file_offset)))
    });
    group.bench_function("barmap_syscall_read", |b| {
        b.iter(|| black_box(typed_read(&syscall)))
    });
    group.finish();

    let mut group = c.benchmark_group("syscall_write_u32");
    group.bench_function("bare_pwrite", |b| b.iter(|| floor_write(fd, file_offset, 0x5a5a)));
    group.bench_function("barmap_syscall_write", |b| {
        b.iter(|| typed_write(&syscall, 0x5a5a))
    });
    group.finish();

    let (floor, ours) = interleaved(
        || {
            black_box(raw());
        },
        || {
            black_box(ours());
        },
        200,
        2000,
    );
    println!(
        "RATIO mapped: barmap {ours:.1} ns / raw read_volatile {floor:.1} ns = {:.3}x (target <= 1.05x)",
        ours / floor
    );
    let (floor, ours) = interleaved(
        || {
            black_box(floor_read(fd, file_offset));
        },
        || {
            black_box(typed_read(&syscall));
        },
        50,
        2000,
    );
    println!(
        "RATIO syscall: barmap read {ours:.1} ns / bare pread {floor:.1} ns = {:.3}x (target <= 1.05x)",
        ours / floor
    );
    let (floor, ours) = interleaved(
        || floor_write(fd, file_offset, 0x5a5a),
        || typed_write(&syscall, 0x5a5a),
        50,
        2000,
    );
    println!(
        "RATIO syscall write: barmap write {ours:.1} ns / bare pwrite {floor:.1} ns = {:.3}x (target <= 1.05x)",
        ours / floor
    );
    assert_eq!(
        syscall.read::<u32>(LIVENESS).unwrap(),
        !0x5a5a,
        "edu kept the last write"
    );
}

#[inline(never)]
fn count_bare_pread(fd: i32, n: u64) {
    for _ in 0..n {
        black_box(floor_read(fd, 0));
    }
}

#[inline(never)]
fn count_typed_read(region: &Region, n: u64) {
    for _ in 0..n {
        black_box(typed_read(region));
    }
}

#[inline(never)]
fn count_bare_pwrite(fd: i32, n: u64) {
    for _ in 0..n {
        floor_write(fd, 0, 0x5a5a);
    }
}

#[inline(never)]
fn count_typed_write(region: &Region, n: u64) {
    for _ in 0..n {
        typed_write(region, 0x5a5a);
    }
}

/// The instruction-count mode (see the crate docs): `n` calls of each side
/// over a memfd region.
fn count(n: u64) {
    let file = tempfile::tempfile().expect("a memfd");
    file.set_len(0x1000).expect("size the memfd");
    let fd = OwnedFd::from(file);
    let raw = fd.as_raw_fd();
    let io = FdRegion::new(Arc::new(fd), 0, 0x1000);
    let addr: PciAddress = "0000:00:02.0".parse().unwrap();
    let region = Region::fd_builder(addr, RegionIndex::bar(0).unwrap(), io)
        .build()
        .expect("a region over the memfd");
    count_bare_pread(raw, n);
    count_typed_read(&region, n);
    count_bare_pwrite(raw, n);
    count_typed_write(&region, n);
    assert_eq!(region.read::<u32>(LIVENESS).unwrap(), 0x5a5a);
    println!("made {n} calls of each side: count_bare_pread, count_typed_read, count_bare_pwrite, count_typed_write");
}

criterion_group!(access, benches);

fn main() {
    if let Ok(n) = std::env::var("BARMAP_ACCESS_CALLS") {
        count(n.parse().expect("BARMAP_ACCESS_CALLS is a number of calls"));
        return;
    }
    access();
    Criterion::default().configure_from_args().final_summary();
}
