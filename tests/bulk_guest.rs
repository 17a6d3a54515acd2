//! Bulk transfers on QEMU's ivshmem-plain (BAR2: 1 GiB of RAM) through a real
//! VFIO device (run in the guest with --include-ignored).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use barmap::shadow::Access;
use barmap::{BarKind, Device, MapPolicy, PciAddress, RegionIndex};

/// ivshmem's address in the guest (`BARMAP_IVSHMEM`, set by the guest's /init).
fn ivshmem() -> PciAddress {
    std::env::var("BARMAP_IVSHMEM")
        .expect(
            "BARMAP_IVSHMEM is not set: ivshmem-plain must be bound to vfio-pci (qemu-scripts/guest-test.sh)",
        )
        .parse()
        .expect("BARMAP_IVSHMEM is a PCI address")
}

#[test]
#[ignore = "needs QEMU ivshmem-plain bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn bar2_is_one_gib_of_prefetchable_64_bit_memory() {
    let dev = Device::open(ivshmem()).unwrap();
    assert_eq!(dev.bar_kind(2), Some(BarKind::Memory64 { prefetchable: true }));
    let shm = dev.bar(2).unwrap();
    assert_eq!(shm.size(), 1 << 30);
    assert!(shm.is_fully_mapped());
    assert_eq!(
        shm.mapping_address() % (1 << 30),
        0,
        "reserved aligned for 1 GiB entries"
    );
}

#[test]
#[ignore = "needs QEMU ivshmem-plain bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn write_slice_reads_back_through_mapping_and_syscall_path() {
    let dev = Device::open(ivshmem()).unwrap();
    let shm = dev.bar(2).unwrap();
    let offset = (1u64 << 30) - (1 << 20); // the last MiB
    let data: Vec<u64> = (0..(1u64 << 17))
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ offset)
        .collect();
    shm.write_slice(offset, &data).unwrap();
    let mut back = vec![0u64; data.len()];
    shm.read_slice(offset, &mut back).unwrap();
    assert!(back == data, "read_slice gives write_slice's data back");
    let syscall = dev
        .region(RegionIndex::bar(2).unwrap(), MapPolicy::TrapAll)
        .unwrap();
    let mut head = [0u64; 64];
    syscall.read_slice(offset, &mut head).unwrap();
    assert_eq!(head[..], data[..64], "the same data through pread");
    let mut halves = [0u32; 4];
    shm.read_slice(offset, &mut halves).unwrap();
    assert_eq!(halves[0], data[0] as u32);
    assert_eq!(halves[1], (data[0] >> 32) as u32);
}

#[test]
#[ignore = "needs QEMU ivshmem-plain bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn a_trapped_region_sees_only_eight_byte_accesses() {
    let dev = Device::open(ivshmem()).unwrap();
    let (count, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, o) = (count.clone(), other.clone());
    let builder = dev
        .region_builder(RegionIndex::bar(2).unwrap())
        .unwrap()
        .policy(MapPolicy::trap_range(0..0x2000));
    // SAFETY: the hook only touches atomics: async-signal-safe.
    let shm = unsafe {
        builder.hook(move |a: &Access| {
            if a.width == 8 {
                c.fetch_add(1, Ordering::Relaxed);
            } else {
                o.fetch_add(1, Ordering::Relaxed);
            }
        })
    }
    .build()
    .unwrap();
    // 0x1f00..0x2100: 32 words on the trapped second page, 32 on the mapped third.
    let data: Vec<u64> = (0..64u64)
        .map(|i| 0x1111_2222_3333_4444u64.wrapping_mul(i + 1))
        .collect();
    shm.write_slice(0x1f00, &data).unwrap();
    let mut back = vec![0u64; 64];
    shm.read_slice(0x1f00, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "no access narrower than 8 bytes"
    );
    assert_eq!(
        count.load(Ordering::Relaxed),
        64,
        "32 writes and 32 reads on the trapped page"
    );
}
