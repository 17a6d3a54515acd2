//! Interrupt latency and DMA mapping cost on edu in the QEMU guest
//! (`qemu-scripts/guest-bench.sh`); the IOVA allocator alone anywhere.
//!
//! - `irq_latency`: a write of edu's raise register to the wake of the MSI
//!   vector's wait (then the acknowledge), against the floor of an eventfd
//!   write and wake in the same process.
//! - `dma_map_unmap`: [`Dma::alloc`](barmap::Dma::alloc) and drop (memory,
//!   IOVA, `VFIO_IOMMU_MAP_DMA`, unmap, free) of 4 KiB, 2 MiB and 64 MiB.
//! - `iova_allocator`: one allocation and free among 1000 live ones.
//!
//! Besides criterion's report, each pair is timed interleaved and printed as
//! one ratio line, like the access bench.

use std::hint::black_box;
use std::time::{Duration, Instant};

use barmap::dma::{DmaMask, IovaAllocator};
use barmap::{Device, PciAddress};
use criterion::{criterion_group, Criterion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const IRQ_RAISE: u64 = 0x60;
const IRQ_ACK: u64 = 0x64;
const TIMEOUT: Duration = Duration::from_secs(1);

fn edu() -> Option<PciAddress> {
    match std::env::var("BARMAP_EDU") {
        Ok(value) => Some(value.parse().expect("BARMAP_EDU is a PCI address")),
        Err(_) => {
            println!(
                "BARMAP_EDU is not set: only the allocator is measured (run qemu-scripts/guest-bench.sh)"
            );
            None
        }
    }
}

/// Median time per call of `f` over `rounds` batches of `batch` calls, in ns.
fn median_ns(mut f: impl FnMut(), batch: u32, rounds: u32) -> f64 {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2].as_nanos() as f64 / f64::from(batch)
}

/// An allocator over the guest intel-iommu's ranges with 1000 live 4 KiB allocations.
fn busy_allocator() -> IovaAllocator {
    let mut iova = IovaAllocator::new([0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff], 4096);
    for _ in 0..1000 {
        iova.alloc(4096, 4096, u64::MAX).unwrap();
    }
    iova
}

fn allocator_benches(c: &mut Criterion) -> f64 {
    let mut iova = busy_allocator();
    let mut one = move || {
        let at = iova.alloc(black_box(4096), 4096, (1 << 28) - 1).unwrap();
        black_box(iova.free(at));
    };
    c.bench_function("iova_allocator/alloc_free_among_1000", |b| b.iter(&mut one));
    median_ns(one, 1000, 200)
}

fn benches(c: &mut Criterion) {
    let allocator_ns = allocator_benches(c);
    println!("IOVA allocator: alloc + free among 1000 live ranges {allocator_ns:.0} ns");
    let Some(edu) = edu() else { return };
    let dev = Device::open(edu).expect("open edu");
    let bar0 = dev.bar(0).expect("map BAR0");
    bar0.write::<u32>(IRQ_ACK, u32::MAX).unwrap();
    let msi = dev.enable_msi(1).expect("enable MSI");
    let vector = msi.vector(0).unwrap();
    let raise_and_wake = || {
        bar0.write::<u32>(IRQ_RAISE, 1).unwrap();
        black_box(vector.wait(TIMEOUT).unwrap());
        bar0.write::<u32>(IRQ_ACK, 1).unwrap();
    };
    let floor_fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut pollfd = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&floor_fd),
        events: libc::POLLIN,
        revents: 0,
    }];
    let mut eventfd_floor = || {
        floor_fd.write(1).unwrap();
        // SAFETY: `pollfd` is a valid array of one pollfd for the call.
        let ready = unsafe { libc::poll(pollfd.as_mut_ptr(), 1, 1000) };
        assert_eq!(ready, 1);
        black_box(floor_fd.read().unwrap());
    };
    let mut group = c.benchmark_group("irq_latency");
    group.bench_function("eventfd_write_wake_floor", |b| b.iter(&mut eventfd_floor));
    group.bench_function("edu_raise_msi_wake_ack", |b| b.iter(raise_and_wake));
    group.finish();
    let floor = median_ns(&mut eventfd_floor, 20, 200);
    let ours = median_ns(raise_and_wake, 20, 200);
    println!(
        "RATIO irq: edu raise -> MSI eventfd wake -> ack {:.1} us / eventfd write -> wake {:.1} us = {:.1}x",
        ours / 1000.0,
        floor / 1000.0,
        ours / floor
    );
    drop(msi);

    let dma = dev.dma(DmaMask::bits(28)).expect("DMA set-up");
    let mut group = c.benchmark_group("dma_map_unmap");
    for (name, size, rounds) in [
        ("4KiB", 4096usize, 200),
        ("2MiB", 2 << 20, 40),
        ("64MiB", 64 << 20, 10),
    ] {
        let map_unmap = || drop(black_box(dma.alloc(size).unwrap()));
        group.sample_size(10);
        group.bench_function(name, |b| b.iter(map_unmap));
        let ns = median_ns(map_unmap, 1, rounds);
        println!(
            "RATIO dma {name}: alloc + map + unmap + free {:.1} us; the IOVA allocator's part {:.0} ns = {:.4}x of it",
            ns / 1000.0,
            allocator_ns,
            allocator_ns / ns
        );
    }
    group.finish();
}

criterion_group!(irq_dma, benches);

fn main() {
    irq_dma();
    Criterion::default().configure_from_args().final_summary();
}
