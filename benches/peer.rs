//! barmap side by side with pci-driver 0.1.4 (the VFIO crate people use
//! today), on large BARs and bulk transfers, in the QEMU guest
//! (`qemu-scripts/guest-bench.sh`). Sections, each skipped unless its name
//! contains the criterion-style filter given (if any):
//!
//! - `peer_reads` (edu BAR0 offset 0, 4 bytes): each library against the raw
//!   floors in its own phase, since a VFIO group opens only once at a time
//!   (open barmap, measure, drop; open pci-driver, measure, drop). Mapped:
//!   `Region::read::<u32>` / `MappedOwningPciRegion::read_le_u32` against a
//!   raw `read_volatile` of the same mapping. Syscall path: a `TrapAll`
//!   region / `OwningPciRegion::read_le_u32` against a bare `pread` of the
//!   same file offset. Pairs are timed interleaved (batches of A then B) and
//!   compared by medians, as in benches/access.rs.
//! - `peer_touch` (ivshmem BAR2, 1 GiB, RAM behind it): one read in every
//!   4 KiB page of a fresh mapping, with the time and the minor faults
//!   (`getrusage`), through barmap's mapping (reserved aligned to 1 GiB),
//!   through pci-driver's (the kernel's choice of address) and through a
//!   mapping of our own placed one page past a 2 MiB boundary.
//! - `peer_bulk` (ivshmem BAR2, 64 MiB): `Region::read_slice::<u64>` /
//!   `write_slice::<u64>` against a raw volatile `u64` loop on the same
//!   mapping, with `memcpy` as the ceiling (valid only because the BAR is RAM);
//!   pci-driver's `read_bytes` (one-byte volatile loads) against the same raw
//!   loop on its mapping.

mod common;

use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::time::Instant;

use barmap::{Device, MapPolicy, PciAddress, RegionIndex};
use common::{bare_pread, interleaved, median};
use pci_driver::backends::vfio::VfioPciDevice;
use pci_driver::device::PciDevice;
use pci_driver::regions::{PciRegion, Permissions};

const PAGE: usize = 0x1000;
const MIB: f64 = (1 << 20) as f64;
/// The bytes moved by each bulk transfer.
const BULK: usize = 64 << 20;

/// Criterion's options that take a value: the filter is the one positional argument.
const VALUED: &[&str] = &[
    "--warm-up-time",
    "--measurement-time",
    "--color",
    "--sample-size",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--nresamples",
    "--save-baseline",
    "--baseline",
    "--load-baseline",
    "--output-format",
    "--plotting-backend",
    "--profile-time",
];

/// The filter among criterion-style arguments, if any.
fn filter() -> Option<String> {
    let mut args = std::env::args().skip(1);
    let mut found = None;
    while let Some(arg) = args.next() {
        if VALUED.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            found = Some(arg);
        }
    }
    found
}

/// A device's address from `var`, or `None` with a note (on the host).
fn device(var: &str) -> Option<PciAddress> {
    match std::env::var(var) {
        Ok(value) => Some(value.parse().expect("a PCI address")),
        Err(_) => {
            println!("{var} is not set: the peer bench needs the QEMU guest (qemu-scripts/guest-bench.sh)");
            None
        }
    }
}

fn sysfs(addr: PciAddress) -> String {
    format!("/sys/bus/pci/devices/{addr}")
}

/// A raw volatile 4-byte read at `base + offset`, both through `black_box`.
fn raw_read(base: *const u8, offset: u64) -> u32 {
    // SAFETY: callers pass the start of a live mapping of edu BAR0 (4 KiB or
    // more) and offset 0.
    unsafe {
        black_box(base)
            .add(black_box(offset) as usize)
            .cast::<u32>()
            .read_volatile()
    }
}

/// The figures of one library's phase on edu, in ns per read.
struct Reads {
    raw: f64,
    mapped: f64,
    pread: f64,
    syscall: f64,
}

impl Reads {
    fn print(&self, name: &str) {
        println!(
            "RATIO peer mapped: {name} {:.1} ns / raw read_volatile {:.1} ns = {:.3}x",
            self.mapped,
            self.raw,
            self.mapped / self.raw
        );
        println!(
            "RATIO peer syscall: {name} {:.1} ns / bare pread {:.1} ns = {:.3}x",
            self.syscall,
            self.pread,
            self.syscall / self.pread
        );
    }
}

/// barmap's phase on edu; also returns BAR0's file offset for pci-driver's floor.
fn barmap_reads(edu: PciAddress) -> (Reads, u64) {
    let dev = Device::open(edu).expect("open edu");
    let mapped = dev.bar(0).expect("map BAR0");
    let syscall = dev
        .region(RegionIndex::bar(0).unwrap(), MapPolicy::TrapAll)
        .expect("BAR0 through pread");
    let base = mapped.mapping_address() as *const u8;
    let (fd, file_offset) = (dev.as_raw_fd(), mapped.info().offset);
    let (raw, ours) = interleaved(
        || {
            black_box(raw_read(base, 0));
        },
        || {
            black_box(black_box(&mapped).read::<u32>(black_box(0)).unwrap());
        },
        200,
        2000,
    );
    let (pread, sys) = interleaved(
        || {
            black_box(bare_pread(fd, black_box(file_offset)));
        },
        || {
            black_box(black_box(&syscall).read::<u32>(black_box(0)).unwrap());
        },
        50,
        400,
    );
    let reads = Reads {
        raw,
        mapped: ours,
        pread,
        syscall: sys,
    };
    (reads, file_offset)
}

/// The VFIO device descriptor pci-driver opened (it does not hand it out):
/// the one `anon_inode:[vfio-device]` among this process's descriptors.
fn vfio_device_fd() -> i32 {
    let mut found = None;
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let entry = entry.expect("a descriptor");
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() == "anon_inode:[vfio-device]" {
            assert!(found.is_none(), "one VFIO device open at a time");
            found = entry.file_name().to_str().and_then(|n| n.parse().ok());
        }
    }
    found.expect("pci-driver's VFIO device descriptor")
}

/// pci-driver's phase on edu; its pread floor reads `file_offset`, BAR0's
/// offset in the device file as barmap found it.
fn pci_driver_reads(edu: PciAddress, file_offset: u64) -> Reads {
    let dev = VfioPciDevice::open(sysfs(edu)).expect("pci-driver: open edu");
    let bar = dev.bar(0).expect("pci-driver: BAR0");
    let mapped = bar.map(.., Permissions::ReadWrite).expect("pci-driver: map BAR0");
    let base = mapped.as_ptr();
    let fd = vfio_device_fd();
    let (raw, theirs) = interleaved(
        || {
            black_box(raw_read(base, 0));
        },
        || {
            black_box(black_box(&mapped).read_le_u32(black_box(0)).unwrap());
        },
        200,
        2000,
    );
    let (pread, sys) = interleaved(
        || {
            black_box(bare_pread(fd, black_box(file_offset)));
        },
        || {
            black_box(black_box(&bar).read_le_u32(black_box(0)).unwrap());
        },
        50,
        400,
    );
    Reads {
        raw,
        mapped: theirs,
        pread,
        syscall: sys,
    }
}

fn reads(edu: PciAddress) {
    let (ours, file_offset) = barmap_reads(edu);
    ours.print("barmap");
    let theirs = pci_driver_reads(edu, file_offset);
    theirs.print("pci-driver");
    println!(
        "RATIO peer mapped, barmap vs pci-driver (each over its floor): {:.3}x / {:.3}x = {:.3}x",
        ours.mapped / ours.raw,
        theirs.mapped / theirs.raw,
        (ours.mapped / ours.raw) / (theirs.mapped / theirs.raw)
    );
    println!(
        "RATIO peer syscall, barmap vs pci-driver (each over its floor): {:.3}x / {:.3}x = {:.3}x",
        ours.syscall / ours.pread,
        theirs.syscall / theirs.pread,
        (ours.syscall / ours.pread) / (theirs.syscall / theirs.pread)
    );
}

/// Minor faults of this process so far.
fn minor_faults() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage.ru_minflt
    }
}

/// Runs `touch` (one read in every page of a fresh mapping at `addr`) and
/// prints its time and minor faults.
fn touched(name: &str, addr: usize, len: usize, touch: impl FnOnce()) {
    let faults = minor_faults();
    let t = Instant::now();
    touch();
    let elapsed = t.elapsed();
    let faults = minor_faults() - faults;
    let pages = len / PAGE;
    println!(
        "FIGURE peer touch {name}: {pages} pages in {:.1} ms ({:.0} ns/page), {faults} minor faults, \
         address {addr:#x} (mod 2 MiB {:#x}, mod 1 GiB {:#x})",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_nanos() as f64 / pages as f64,
        addr % (2 << 20),
        addr % (1 << 30),
    );
}

/// A shared mapping of `len` bytes of `fd` at `file_offset`, placed one page
/// past a 2 MiB boundary inside an anonymous reservation; unmapped on drop.
struct Misaligned {
    reserved: *mut libc::c_void,
    reserved_len: usize,
    at: *mut u8,
}

impl Misaligned {
    fn new(fd: i32, file_offset: u64, len: usize) -> Misaligned {
        let reserved_len = len + (4 << 20);
        // SAFETY: a fresh anonymous PROT_NONE range at the kernel's choice.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(reserved, libc::MAP_FAILED);
        let want = (reserved as usize).next_multiple_of(2 << 20) + PAGE;
        // SAFETY: want..want + len lies inside the reservation just made, which
        // nothing else uses; MAP_FIXED replaces that part of it.
        let at = unsafe {
            libc::mmap(
                want as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                file_offset as libc::off_t,
            )
        };
        assert_eq!(at as usize, want, "mmap of the BAR at a misaligned address");
        Misaligned {
            reserved,
            reserved_len,
            at: at.cast(),
        }
    }
}

impl Drop for Misaligned {
    fn drop(&mut self) {
        // SAFETY: the whole reservation (with the BAR mapped into it) is ours.
        unsafe { libc::munmap(self.reserved, self.reserved_len) };
    }
}

/// One volatile read in every page of `base..base + len`.
fn touch_raw(base: *const u8, len: usize) {
    for offset in (0..len).step_by(PAGE) {
        // SAFETY: callers pass a live readable mapping of `len` bytes.
        black_box(unsafe { base.add(offset).cast::<u64>().read_volatile() });
    }
}

fn touch(ivshmem: PciAddress) {
    {
        let dev = Device::open(ivshmem).expect("open ivshmem");
        let shm = dev.bar(2).expect("map BAR2");
        let len = shm.size() as usize;
        let (fd, file_offset) = (dev.as_raw_fd(), shm.info().offset);
        // Warm-up: QEMU backs the BAR's RAM on first touch; do that outside the figures.
        touch_raw(shm.mapping_address() as *const u8, len);
        drop(shm);
        let shm = dev.bar(2).expect("map BAR2");
        touched("barmap Region::read::<u64>", shm.mapping_address(), len, || {
            for offset in (0..len as u64).step_by(PAGE) {
                black_box(shm.read::<u64>(offset).unwrap());
            }
        });
        drop(shm);
        let own = Misaligned::new(fd, file_offset, len);
        touched("own mmap 2 MiB + 4 KiB", own.at as usize, len, || {
            touch_raw(own.at, len)
        });
    }
    let dev = VfioPciDevice::open(sysfs(ivshmem)).expect("pci-driver: open ivshmem");
    let bar = dev.bar(2).expect("pci-driver: BAR2");
    let mapped = bar.map(.., Permissions::ReadWrite).expect("pci-driver: map BAR2");
    let len = mapped.len();
    touched("pci-driver read_le_u32", mapped.as_ptr() as usize, len, || {
        for offset in (0..len as u64).step_by(PAGE) {
            black_box(mapped.read_le_u32(offset).unwrap());
        }
    });
}

/// Times `run(k)` for each `k` in `0..kinds`, in turn, for `rounds` rounds;
/// returns each kind's median in ns.
fn rounds(rounds: usize, kinds: usize, mut run: impl FnMut(usize)) -> Vec<f64> {
    let mut times = vec![Vec::new(); kinds];
    for _ in 0..rounds {
        for (k, t) in times.iter_mut().enumerate() {
            let start = Instant::now();
            run(k);
            t.push(start.elapsed());
        }
    }
    times.into_iter().map(median).collect()
}

fn mib_s(ns: f64) -> f64 {
    BULK as f64 / MIB / (ns / 1e9)
}

fn bulk(ivshmem: PciAddress) {
    let words = BULK / 8;
    let mut buf = vec![0u64; words];
    let src: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    {
        let dev = Device::open(ivshmem).expect("open ivshmem");
        let shm = dev.bar(2).expect("map BAR2");
        let base = shm.mapping_address() as *mut u64;
        touch_raw(base.cast(), BULK); // first-touch faults out of the figures
        let t = rounds(7, 3, |k| match k {
            0 => shm.read_slice(0, &mut buf).unwrap(),
            1 => {
                for (i, w) in buf.iter_mut().enumerate() {
                    // SAFETY: i < words, inside the live 1 GiB mapping of BAR2.
                    *w = unsafe { base.add(i).read_volatile() };
                }
            }
            // SAFETY: BAR2 is RAM and at least BULK bytes long; buf holds BULK bytes.
            _ => unsafe { std::ptr::copy_nonoverlapping(base, buf.as_mut_ptr(), words) },
        });
        println!(
            "RATIO peer bulk read 64 MiB: barmap read_slice::<u64> {:.0} MiB/s / raw volatile u64 loop {:.0} MiB/s \
             = {:.3}x (time ratio {:.3}x); memcpy ceiling {:.0} MiB/s (barmap at {:.3}x of it)",
            mib_s(t[0]),
            mib_s(t[1]),
            t[1] / t[0],
            t[0] / t[1],
            mib_s(t[2]),
            t[2] / t[0],
        );
        let t = rounds(7, 3, |k| match k {
            0 => shm.write_slice(0, &src).unwrap(),
            1 => {
                for (i, w) in src.iter().enumerate() {
                    // SAFETY: as above, for writing.
                    unsafe { base.add(i).write_volatile(*w) };
                }
            }
            // SAFETY: as above.
            _ => unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base, words) },
        });
        println!(
            "RATIO peer bulk write 64 MiB: barmap write_slice::<u64> {:.0} MiB/s / raw volatile u64 loop {:.0} MiB/s \
             = {:.3}x (time ratio {:.3}x); memcpy ceiling {:.0} MiB/s (barmap at {:.3}x of it)",
            mib_s(t[0]),
            mib_s(t[1]),
            t[1] / t[0],
            t[0] / t[1],
            mib_s(t[2]),
            t[2] / t[0],
        );
        shm.read_slice(0, &mut buf).unwrap();
        assert!(buf == src, "write_slice then read_slice gives the data back");
    }
    let dev = VfioPciDevice::open(sysfs(ivshmem)).expect("pci-driver: open ivshmem");
    let bar = dev.bar(2).expect("pci-driver: BAR2");
    let mapped = bar.map(.., Permissions::ReadWrite).expect("pci-driver: map BAR2");
    let base = mapped.as_ptr().cast::<u64>();
    touch_raw(base.cast(), BULK);
    let mut bytes = vec![0u8; BULK];
    let t = rounds(3, 2, |k| match k {
        0 => mapped.read_bytes(0, &mut bytes).unwrap(),
        _ => {
            for (i, w) in buf.iter_mut().enumerate() {
                // SAFETY: i < words, inside the live mapping of BAR2.
                *w = unsafe { base.add(i).read_volatile() };
            }
        }
    });
    println!(
        "RATIO peer bulk read 64 MiB: pci-driver read_bytes {:.0} MiB/s / raw volatile u64 loop {:.0} MiB/s = {:.3}x (time ratio {:.3}x)",
        mib_s(t[0]),
        mib_s(t[1]),
        t[1] / t[0],
        t[0] / t[1],
    );
}

fn main() {
    let filter = filter();
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if wanted("peer_reads") {
        if let Some(edu) = device("BARMAP_EDU") {
            reads(edu);
        }
    }
    if wanted("peer_touch") {
        if let Some(ivshmem) = device("BARMAP_IVSHMEM") {
            touch(ivshmem);
        }
    }
    if wanted("peer_bulk") {
        if let Some(ivshmem) = device("BARMAP_IVSHMEM") {
            bulk(ivshmem);
        }
    }
}
