//! Shared helpers of the device tests: finding the QEMU guest's devices and
//! driving edu and pci-testdev.
#![allow(dead_code)] // each test binary uses a different subset

pub mod capability;
pub mod child;
pub mod edu_dma;
pub mod emulated;
pub mod group_holder;
pub mod nvme_admin;
pub mod sentinel;
pub mod trace_log;

use std::time::{Duration, Instant};

use barmap::{PciAddress, Region};

fn from_env(var: &str, what: &str) -> PciAddress {
    let value = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: no {what} device; run inside the QEMU guest"));
    value.parse().unwrap_or_else(|e| panic!("{var}={value:?}: {e}"))
}

/// The address of QEMU's edu device in the guest.
pub fn edu() -> PciAddress {
    from_env("BARMAP_EDU", "edu")
}

/// The address of QEMU's pci-testdev device in the guest.
pub fn testdev() -> PciAddress {
    from_env("BARMAP_TESTDEV", "pci-testdev")
}

/// An address that no PCI device on this machine has, checked against
/// `/sys/bus/pci/devices` now: the first of `ffff:ff:1f.7`, `fffe:ff:1f.7`,
/// ... that it does not list. (No fixed address is safe: multi-socket Xeons
/// put functions on bus 0x7f, and Hyper-V and VMD pick domains of their own.)
pub fn missing_address() -> PciAddress {
    let present: Vec<PciAddress> = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (0..=0xffffu32)
        .rev()
        .map(|domain| format!("{domain:04x}:ff:1f.7").parse().unwrap())
        .find(|addr| !present.contains(addr))
        .expect("a free PCI address")
}

/// The address of the virtio device with function-level reset, alone behind a
/// PCIe root port, in the guest.
pub fn flr_dev() -> PciAddress {
    from_env("BARMAP_FLR_DEV", "function-level-reset")
}

/// The addresses of the two functions of the transitional virtio-rng behind a
/// root port of its own in the no-IOMMU guest (function 0, then 1).
pub fn function_pair() -> (PciAddress, PciAddress) {
    let first = from_env("BARMAP_PAIR_DEV", "two-function virtio-rng (no-IOMMU guest)");
    let second = PciAddress::new(first.domain(), first.bus(), first.device(), 1).unwrap();
    (first, second)
}

/// The address of QEMU's NVMe controller (serial `barmap0001`) in the guest.
pub fn nvme() -> PciAddress {
    from_env("BARMAP_NVME", "NVMe")
}

/// edu BAR0 registers.
pub mod edu_reg {
    pub const ID: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const FACTORIAL: u64 = 0x08;
    pub const STATUS: u64 = 0x20;
    pub const IRQ_STATUS: u64 = 0x24;
    pub const IRQ_ACK: u64 = 0x64;
    pub const DMA_SRC: u64 = 0x80;
    pub const STATUS_COMPUTING: u32 = 0x01;
    pub const ID_VALUE: u32 = 0x0100_00ed;
}

/// Computes n! on edu by polling the status register (1 s timeout).
pub fn edu_factorial(bar0: &Region, n: u32) -> u32 {
    wait_idle(bar0);
    bar0.write::<u32>(edu_reg::STATUS, 0).unwrap();
    bar0.write::<u32>(edu_reg::FACTORIAL, n).unwrap();
    wait_idle(bar0);
    bar0.read::<u32>(edu_reg::FACTORIAL).unwrap()
}

/// Waits until edu is not computing (panics after 5 s).
pub fn wait_idle(bar0: &Region) {
    let start = Instant::now();
    while bar0.read::<u32>(edu_reg::STATUS).unwrap() & edu_reg::STATUS_COMPUTING != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "edu factorial did not finish"
        );
        std::thread::yield_now();
    }
}

/// One pci-testdev test as its header shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct TestHeader {
    pub test: u8,
    pub width: u8,
    pub offset: u32,
    pub data: u8,
    pub count: u32,
    pub name: String,
}

/// Reads the selected test's header with accesses of `width` bytes.
pub fn read_header(bar: &Region, width: usize) -> TestHeader {
    let mut bytes = [0u8; 64];
    for at in (0..64).step_by(width) {
        let v = bar.read_width(at as u64, width).unwrap();
        bytes[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }
    let name_end = bytes[16..]
        .iter()
        .position(|b| *b == 0)
        .expect("NUL-terminated name")
        + 16;
    TestHeader {
        test: bytes[0],
        width: bytes[1],
        offset: u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
        data: bytes[8],
        count: u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
        name: String::from_utf8(bytes[16..name_end].to_vec()).unwrap(),
    }
}

/// The tests pci-testdev offers: (selector written, BAR it is selected through
/// (0 = MMIO, 1 = I/O), test number, offset, data, name).
pub const TESTDEV_TESTS: [(u8, u32, u8, u32, u8, &str); 6] = [
    (0, 0, 0, 0x800, 0xfa, "mmio-no-eventfd"),
    (1, 0, 1, 0x801, 0xce, "mmio-wildcard-eventfd"),
    (2, 0, 2, 0x802, 0xfa, "mmio-datamatch-eventfd"),
    (0, 1, 3, 0x83, 0xfa, "portio-no-eventfd"),
    (1, 1, 4, 0x84, 0xce, "portio-wildcard-eventfd"),
    (2, 1, 5, 0x85, 0xfa, "portio-datamatch-eventfd"),
];

/// The contents of `/proc/self/maps`.
pub fn proc_maps() -> String {
    std::fs::read_to_string("/proc/self/maps").unwrap()
}

/// The `VmFlags` line of the `/proc/self/smaps` entry starting at `addr`.
pub fn vm_flags(addr: usize) -> Option<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{addr:x}-");
    let entry = smaps
        .split_once(&format!("\n{start}"))
        .map(|(_, rest)| rest)
        .or_else(|| smaps.strip_prefix(&start))?;
    entry
        .lines()
        .find(|l| l.starts_with("VmFlags:"))
        .map(str::to_string)
}
