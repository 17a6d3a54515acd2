//! DMA with QEMU edu through VFIO: its copy engine between barmap's buffers
//! and its own, completion by the command register and by interrupt,
//! reopening, caller-owned guest memory, and the error cases (run in the
//! guest with --include-ignored).
//!
//! QEMU 7.2's edu aborts the VM on a transfer of 0 bytes or one that touches
//! its buffer's byte 0xfff: every transfer here stays inside 0x40000..0x40fff.

mod common;

use std::time::Duration;

use barmap::dma::{DmaMask, IovaError};
use barmap::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use barmap::{Device, DmaBuffer, Error, Region};
use common::edu_dma::{self, *};
use common::{edu, edu_reg::*};

const EDU_MASK: DmaMask = DmaMask::bits(28);

fn quiet_edu() -> (Device, Region) {
    let dev = Device::open(edu()).unwrap();
    let bar0 = dev.bar(0).unwrap();
    edu_dma::quiet(&bar0);
    (dev, bar0)
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_dma_round_trip_with_command_register_and_interrupt() {
    let (dev, bar0) = quiet_edu();
    dev.set_bus_master(false).unwrap();
    let dma = dev.dma(EDU_MASK).unwrap();
    assert!(dev.bus_master().unwrap(), "DMA set-up turns bus mastering on");
    let a = dma.alloc(4096).unwrap();
    let b = dma.alloc(4096).unwrap();
    for buf in [&a, &b] {
        assert!(
            buf.iova() + buf.size() as u64 <= 1 << 28,
            "{buf:?} is under edu's mask"
        );
        assert_eq!(buf.iova() % 4096, 0);
    }
    assert_ne!(a.iova(), b.iova());
    fill(&a, |i| (i * 7 + 3) as u8);
    fill(&b, |_| 0xee);
    let msi = dev.enable_msi(1).unwrap();
    let vector = msi.vector(0).unwrap();

    // RAM to device, completion by polling the command register.
    start_dma(&bar0, a.iova(), EDU_BUF, SAFE_LEN, CMD_START);
    assert_eq!(
        bar0.read::<u64>(DMA_CMD).unwrap() & CMD_START,
        CMD_START,
        "the copy takes 100 ms"
    );
    wait_dma_idle(&bar0);
    assert_eq!(vector.try_wait().unwrap(), None, "no interrupt was asked for");

    // Device to RAM, completion by the DMA interrupt.
    start_dma(
        &bar0,
        EDU_BUF,
        b.iova(),
        SAFE_LEN,
        CMD_START | CMD_TO_RAM | CMD_IRQ,
    );
    assert!(vector.wait(Duration::from_secs(5)).unwrap() >= 1);
    assert_eq!(bar0.read::<u32>(IRQ_STATUS).unwrap(), IRQ_DMA_DONE);
    assert_eq!(
        bar0.read::<u64>(DMA_CMD).unwrap() & CMD_START,
        0,
        "the command register agrees"
    );
    bar0.write::<u32>(IRQ_ACK, IRQ_DMA_DONE).unwrap();

    let (sent, got) = (contents(&a), contents(&b));
    assert_eq!(got[..SAFE_LEN], sent[..SAFE_LEN], "byte-identical round trip");
    assert_eq!(
        got[SAFE_LEN..],
        vec![0xee; 4096 - SAFE_LEN][..],
        "nothing past the transfer"
    );

    // A partial copy back into the middle changes exactly those bytes.
    fill(&b, |_| 0x11);
    start_dma(
        &bar0,
        EDU_BUF + 0x10,
        b.iova() + 0x800,
        100,
        CMD_START | CMD_TO_RAM,
    );
    wait_dma_idle(&bar0);
    let got = contents(&b);
    assert_eq!(got[0x800..0x800 + 100], sent[0x10..0x10 + 100]);
    assert!(got[..0x800].iter().chain(&got[0x800 + 100..]).all(|x| *x == 0x11));
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_dma_open_map_drop_open_again_maps_the_same_iova() {
    let first = {
        let (dev, _bar0) = quiet_edu();
        let buf = dev.dma(EDU_MASK).unwrap().alloc(8192).unwrap();
        buf.iova()
    };
    let (dev, bar0) = quiet_edu();
    let dma = dev.dma(EDU_MASK).unwrap();
    let buf = dma.alloc(8192).unwrap();
    assert_eq!(
        buf.iova(),
        first,
        "the new container hands out the same IOVA, and the kernel maps it"
    );
    drop(buf);
    let again = dma.alloc(4096).unwrap();
    assert_eq!(again.iova(), first, "a freed IOVA is reused");

    // Caller-owned guest memory at a chosen IOVA, mapped, dropped, mapped again.
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x80_0000), 0x10_0000)]).unwrap();
    let mapping = dma.map_guest_memory(&ram).unwrap();
    assert_eq!(mapping.ranges(), &[(0x80_0000, 0x10_0000)]);
    fill(&again, |i| (i as u8) ^ 0x5a);
    start_dma(&bar0, again.iova(), EDU_BUF, 256, CMD_START);
    wait_dma_idle(&bar0);
    start_dma(&bar0, EDU_BUF, 0x80_1000, 256, CMD_START | CMD_TO_RAM);
    wait_dma_idle(&bar0);
    let mut got = [0u8; 256];
    ram.read_slice(&mut got, GuestAddress(0x80_1000)).unwrap();
    assert_eq!(got[..], contents(&again)[..256], "edu wrote the caller's memory");
    assert!(matches!(
        dma.map_guest_memory(&ram),
        Err(Error::Iova {
            source: IovaError::Overlap { .. },
            ..
        })
    ));
    drop(mapping);
    drop(dma.map_guest_memory(&ram).unwrap());
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_dma_errors_too_large_exhausted_reuse_over_mask_reserved_window() {
    let (dev, _bar0) = quiet_edu();
    let dma = dev.dma(EDU_MASK).unwrap();
    let ranges = dma.iova_ranges().unwrap();
    assert!(
        ranges.iter().all(|(s, l)| *l < 0xfee0_0000 || *s > 0xfeef_ffff),
        "the MSI window is reserved: {ranges:x?}"
    );
    assert!(matches!(
        dma.alloc((256 << 20) + 4096),
        Err(Error::Iova {
            source: IovaError::TooLarge { .. },
            ..
        })
    ));

    // 16 address bits: 16 pages of IOVA space.
    let small = dev.dma(DmaMask::bits(16)).unwrap();
    let bufs: Vec<DmaBuffer> = (0..16).map(|_| small.alloc(4096).unwrap()).collect();
    assert!(matches!(
        small.alloc(4096),
        Err(Error::Iova {
            source: IovaError::Exhausted { .. },
            ..
        })
    ));
    let freed = bufs[5].iova();
    let mut bufs = bufs;
    bufs.remove(5).unmap().unwrap();
    let reused = small.alloc(4096).unwrap();
    assert_eq!(reused.iova(), freed, "reuse after a drop");
    // The full-mask handle still finds space above.
    assert!(dma.alloc(4096).unwrap().iova() >= 1 << 16);

    let over = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(1 << 28), 0x1000)]).unwrap();
    assert!(matches!(
        dma.map_guest_memory(&over),
        Err(Error::Iova {
            source: IovaError::OverLimit { .. },
            ..
        })
    ));
    let msi_window = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0xfee0_0000), 0x1000)]).unwrap();
    assert!(matches!(
        dev.dma(DmaMask::FULL).unwrap().map_guest_memory(&msi_window),
        Err(Error::Iova {
            source: IovaError::Outside { .. },
            ..
        })
    ));
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_dma_a_size_whose_rounding_overflows_is_too_large_not_zero() {
    let (dev, _bar0) = quiet_edu();
    let dma = dev.dma(DmaMask::FULL).unwrap();
    for size in [usize::MAX, usize::MAX - 0xffe] {
        let err = dma.alloc(size).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Iova {
                    source: IovaError::TooLarge { size: s, .. },
                    ..
                } if *s == size as u64
            ),
            "alloc({size:#x}): {err:?}"
        );
        let reason = std::error::Error::source(&err).unwrap().to_string();
        assert!(reason.contains("is more than"), "{reason}");
    }
    assert!(matches!(
        dma.alloc(0),
        Err(Error::Iova {
            source: IovaError::ZeroSize,
            ..
        })
    ));
    assert!(dma.alloc(1).unwrap().size() >= 1, "the handle still allocates");
}

/// Sets vfio_iommu_type1's mapping limit for containers opened after it,
/// and restores the old value when dropped.
struct EntryLimit(String);

const ENTRY_LIMIT: &str = "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit";

impl EntryLimit {
    fn set(limit: u32) -> EntryLimit {
        let old = std::fs::read_to_string(ENTRY_LIMIT).unwrap();
        std::fs::write(ENTRY_LIMIT, limit.to_string()).unwrap();
        EntryLimit(old.trim().to_string())
    }
}

impl Drop for EntryLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(ENTRY_LIMIT, &self.0);
    }
}

#[test]
#[ignore = "needs QEMU edu bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn edu_dma_mapping_limit_is_a_typed_error() {
    let limit = EntryLimit::set(8);
    // vfio_iommu_type1's limit: a container of the group interface (an
    // IOAS of iommufd has none to report).
    let dev = Device::builder(edu())
        .interface(barmap::Interface::Group)
        .open()
        .unwrap();
    let dma = dev.dma(EDU_MASK).unwrap();
    assert_eq!(dma.mapping_limit().unwrap(), Some(8));
    let mut bufs: Vec<DmaBuffer> = (0..8).map(|_| dma.alloc(4096).unwrap()).collect();
    assert!(matches!(
        dma.alloc(4096),
        Err(Error::DmaMappingLimit { limit: 8, .. })
    ));
    bufs.pop();
    bufs.push(dma.alloc(4096).unwrap());
    drop(limit);
}
