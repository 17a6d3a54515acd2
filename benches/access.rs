//! Mapped and syscall-path register reads against their floors, on edu BAR0
//! in the QEMU guest (`qemu-scripts/guest-bench.sh`).
//!
//! - `mapped`: `Region::read::<u32>` vs a raw `read_volatile` of the same pointer.
//! - `syscall`: `Region::read::<u32>` on a syscall-only handle vs a bare `pread`.
//!
//! Besides criterion's report, each pair is also timed interleaved (batches of
//! A then B, repeated) and printed as one ratio line, so both sides see the
//! same machine state.

mod common;

use std::hint::black_box;
use std::os::fd::AsRawFd;

use barmap::{Device, MapPolicy, PciAddress, RegionIndex};
use common::{bare_pread, interleaved};
use criterion::{criterion_group, Criterion};

const ID: u64 = 0;

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
    // Both sides get their handle and offset through `black_box` on every call,
    // as a driver holding either one in a struct would: the raw side a pointer,
    // barmap a `&Region`.
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
        b.iter(|| black_box(bare_pread(fd, black_box(file_offset))))
    });
    group.bench_function("barmap_syscall_read", |b| {
        b.iter(|| black_box(syscall.read::<u32>(black_box(ID)).unwrap()))
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
            black_box(bare_pread(fd, file_offset));
        },
        || {
            black_box(syscall.read::<u32>(black_box(ID)).unwrap());
        },
        50,
        400,
    );
    println!(
        "RATIO syscall: barmap {ours:.1} ns / bare pread {floor:.1} ns = {:.3}x (target <= 1.10x)",
        ours / floor
    );
}

criterion_group!(access, benches);

fn main() {
    access();
    Criterion::default().configure_from_args().final_summary();
}
