//! The guest-side cost of an edu register read through a KVM memory slot
//! against one through an MMIO exit served by `BarPassthrough::handle_exit`,
//! in a nested KVM guest inside the QEMU guest (`qemu-scripts/guest-bench.sh`).
//!
//! The guest program is a loop of `mov eax, [reg]` with ECX iterations.
//! edu BAR0 is passed through with its second page trapped: the slot read is
//! the ID register (offset 0, mapped), the exit read is offset 0x1000 (an
//! undefined edu register, the same QEMU MMIO dispatch). Each run enters the
//! guest once and leaves it with one `out`, so long loops amortize that.
//!
//! Besides criterion's report, the two are timed interleaved (alternating
//! runs, medians) and printed as one ratio line.

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../tests/kvm/guest.rs"]
mod guest;

use barmap::kvm::BarPassthrough;
use barmap::{MapPolicy, PciAddress, RegionIndex};
use criterion::{criterion_group, Criterion};
use guest::{Asm, Guest};

const EDU_GPA: u64 = 0x2_0000;
const SLOT_REG: u16 = 0x0000;
const TRAPPED_REG: u16 = 0x1000;

/// edu's address in the guest, or `None` (with a note) elsewhere.
fn edu() -> Option<PciAddress> {
    match std::env::var("BARMAP_EDU") {
        Ok(value) => Some(value.parse().expect("BARMAP_EDU is a PCI address")),
        Err(_) => {
            println!("BARMAP_EDU is not set: the kvm bench needs edu and /dev/kvm (run qemu-scripts/guest-bench.sh)");
            None
        }
    }
}

/// A program at `guest::CODE` reading `reg` ECX times, and one for `other`
/// right after it; returns the code and the second program's address.
fn programs() -> (Vec<u8>, u64) {
    let mut asm = Asm::default();
    for reg in [SLOT_REG, TRAPPED_REG] {
        asm.set_ds((EDU_GPA >> 4) as u16);
        let top = asm.here();
        asm.load(reg).dec_ecx().jnz(top).done();
        if reg == SLOT_REG {
            // Pad so the second program starts at a known address.
            asm.code.resize(0x40, 0x90);
        }
    }
    (asm.code, guest::CODE + 0x40)
}

/// Runs `n` reads with the program at `start`; the time per read.
fn time_reads(guest: &mut Guest, bar0: &BarPassthrough, start: u64, n: u32) -> Duration {
    guest.restart_at(start, u64::from(n));
    let t = Instant::now();
    let run = guest.run(&[bar0]);
    let elapsed = t.elapsed();
    black_box(run);
    elapsed / n
}

fn benches(c: &mut Criterion) {
    let Some(edu) = edu() else { return };
    let mut guest = Guest::new();
    let dev = guest.vm.open_device(edu).expect("open edu");
    let region = dev
        .region(
            RegionIndex::bar(0).unwrap(),
            MapPolicy::trap_range(0x1000..0x2000),
        )
        .unwrap();
    let bar0 = BarPassthrough::new(&guest.vm, region, EDU_GPA).unwrap();
    let (code, exit_program) = programs();
    guest.load(&code);
    let check = guest.run(&[&bar0]);
    assert_eq!(check.mmio_served, 0);
    guest.restart_at(exit_program, 3);
    assert_eq!(guest.run(&[&bar0]).mmio_served, 3, "three reads, three exits");

    let mut group = c.benchmark_group("kvm_guest_read_u32");
    group.bench_function("through_slot", |b| {
        b.iter_custom(|iters| {
            guest.restart_at(guest::CODE, iters);
            let t = Instant::now();
            black_box(guest.run(&[&bar0]));
            t.elapsed()
        })
    });
    group.bench_function("through_exit", |b| {
        b.iter_custom(|iters| {
            guest.restart_at(exit_program, iters);
            let t = Instant::now();
            black_box(guest.run(&[&bar0]));
            t.elapsed()
        })
    });
    group.finish();

    let (mut slot, mut exit) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        slot.push(time_reads(&mut guest, &bar0, guest::CODE, 20_000));
        exit.push(time_reads(&mut guest, &bar0, exit_program, 200));
    }
    let median = |mut v: Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2].as_nanos() as f64
    };
    let (slot, exit) = (median(slot), median(exit));
    println!(
        "RATIO kvm: guest read through an exit {exit:.1} ns / through the memory slot {slot:.1} ns = {:.1}x",
        exit / slot
    );
}

criterion_group!(kvm, benches);

fn main() {
    kvm();
    Criterion::default().configure_from_args().final_summary();
}
