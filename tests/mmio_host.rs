//! Pinned accessors and register-block pointers on any host, over an
//! emulated device: a memfd is the device memory, mapped pages map it
//! directly, and trapped pages are served by the fault handler through a
//! `RegionIo` on the same memfd that logs every access lock-free.
//!
//! Run under `cargo test --release` too: the pinned accesses must stay one
//! `mov` of the right width whatever the optimisation level.
#![cfg(target_arch = "x86_64")]

mod common;

use barmap::mmio::{self, ReadOnly, ReadPure, ReadPureWrite, ReadWrite, RegisterBlock, WriteOnly};
use barmap::{field, Error, MapPolicy, Region, RegionFlags};
use common::emulated::{emulated, Device, PAGE};

const SIZE: u64 = 2 * PAGE;
const READ: u32 = 1;
const WRITE: u32 = 2;
const MMAP: u32 = 4;

/// One device access seen by the slow path: offset, width, value, write.
type Rec = (u64, usize, u64, bool);

/// The emulated device: two pages with a recognisable pattern.
fn device() -> Device {
    Device::with_pattern(SIZE, |i| (i * 11 + 3) as u8)
}

/// BAR0 of `dev` with `flags`, mapped whole (if readable) or trapped whole.
fn bar0(dev: &Device, flags: u32, trapped: bool) -> Region {
    let policy = if trapped {
        MapPolicy::TrapAll
    } else {
        MapPolicy::Direct
    };
    let region = emulated(dev.io())
        .flags(RegionFlags::from_bits(flags))
        .map_from(&dev.fd, 0, &[dev.whole()])
        .policy(policy)
        .build()
        .unwrap();
    // A region that is not readable maps nothing (a mapping would be readable).
    assert_eq!(region.is_trapped(0), trapped || flags & READ == 0);
    region
}

/// The slow-path accesses since the last call.
fn take(dev: &Device) -> Vec<Rec> {
    dev.log.take().into_iter().map(|r| r.tuple()).collect()
}

/// Each width of `mmio::read` and `mmio::write` at `offset`: the value comes
/// from and goes to the device; returns the slow-path accesses seen.
fn every_width(region: &Region, dev: &Device, offset: u64) -> Vec<Rec> {
    let base = region.as_mut_ptr().unwrap();
    take(dev);
    // SAFETY (every block below): offset + 8 <= SIZE, and offset is 8-byte
    // aligned, so each pointer is aligned and inside the live region.
    unsafe {
        let p = base.add(offset as usize);
        assert_eq!(u64::from(mmio::read(p)), dev.peek_word(offset, 1));
        assert_eq!(u64::from(mmio::read(p.cast::<u16>())), dev.peek_word(offset, 2));
        assert_eq!(u64::from(mmio::read(p.cast::<u32>())), dev.peek_word(offset, 4));
        assert_eq!(mmio::read(p.cast::<u64>()), dev.peek_word(offset, 8));
        mmio::write(p, 0xa5u8);
        assert_eq!(dev.peek_word(offset, 1), 0xa5);
        mmio::write(p.cast::<u16>(), 0xbeefu16);
        assert_eq!(dev.peek_word(offset, 2), 0xbeef);
        mmio::write(p.cast::<u32>(), 0xdead_beefu32);
        assert_eq!(dev.peek_word(offset, 4), 0xdead_beef);
        let runtime = std::hint::black_box(0x0123_4567_89ab_cdefu64) ^ offset;
        mmio::write(p.cast::<u64>(), runtime);
        assert_eq!(dev.peek_word(offset, 8), runtime);
    }
    take(dev)
}

#[test]
fn pinned_accesses_on_a_mapped_page_never_reach_the_slow_path() {
    let dev = device();
    let region = bar0(&dev, READ | WRITE | MMAP, false);
    for offset in [0, 8, PAGE - 8, PAGE + 0x40] {
        assert_eq!(every_width(&region, &dev, offset), [], "at {offset:#x}");
    }
}

#[test]
fn pinned_accesses_on_a_trapped_page_are_one_access_of_their_width() {
    let dev = device();
    let region = bar0(&dev, READ | WRITE | MMAP, true);
    for offset in [0, 8, PAGE - 8, PAGE + 0x40] {
        let before: Vec<u64> = [1, 2, 4, 8].map(|w| dev.peek_word(offset, w)).to_vec();
        let runtime = 0x0123_4567_89ab_cdefu64 ^ offset;
        let want: Vec<Rec> = vec![
            (offset, 1, before[0], false),
            (offset, 2, before[1], false),
            (offset, 4, before[2], false),
            (offset, 8, before[3], false),
            (offset, 1, 0xa5, true),
            (offset, 2, 0xbeef, true),
            (offset, 4, 0xdead_beef, true),
            (offset, 8, runtime, true),
        ];
        assert_eq!(every_width(&region, &dev, offset), want, "at {offset:#x}");
    }
}

/// A block of every kind of register, a nested block and an array.
#[repr(C)]
struct Regs {
    id: ReadPure<u32>,
    fifo: ReadOnly<u32>,
    doorbell: WriteOnly<u16>,
    byte: ReadWrite<u8>,
    _pad: u8,
    control: ReadPureWrite<u32>,
    _reserved: u32,
    counter: ReadWrite<u64>,
    queue: Queue,
    table: [ReadPureWrite<u32>; 4],
}

#[repr(C)]
struct Queue {
    head: ReadPureWrite<u32>,
    tail: ReadPureWrite<u32>,
}

// SAFETY: repr(C) structs of register wrappers, arrays of them and padding,
// without Deref.
unsafe impl RegisterBlock for Regs {}
// SAFETY: as above.
unsafe impl RegisterBlock for Queue {}

// The layout the expected offsets below rely on.
const _: () = assert!(std::mem::offset_of!(Regs, counter) == 0x18);
const _: () = assert!(std::mem::offset_of!(Regs, queue) == 0x20);
const _: () = assert!(std::mem::offset_of!(Regs, table) == 0x28);
const _: () = assert!(std::mem::size_of::<Regs>() == 0x38);

const BLOCK: u64 = 0x100;

/// Every register of `Regs` at BLOCK through the block pointer, each checked
/// against the device; returns the slow-path accesses seen.
fn register_block(region: &mut Region, dev: &Device) -> Vec<Rec> {
    take(dev);
    let mut regs = region.block::<Regs>(BLOCK).unwrap();
    assert_eq!(u64::from(field!(regs, id).read()), dev.peek_word(BLOCK, 4));
    assert_eq!(u64::from(field!(regs, fifo).read()), dev.peek_word(BLOCK + 4, 4));
    field!(regs, doorbell).write(0x1234);
    assert_eq!(dev.peek_word(BLOCK + 8, 2), 0x1234);
    field!(regs, byte).update(|b| b ^ 0xff);
    assert_eq!(
        dev.peek_word(BLOCK + 10, 1),
        u64::from((10 + BLOCK) as u8 * 11 + 3) ^ 0xff
    );
    field!(regs, control).write(0x8000_0001);
    assert_eq!(field!(regs, control).read(), 0x8000_0001);
    field!(regs, counter).write(u64::MAX - 1);
    assert_eq!(field!(regs, counter).read(), u64::MAX - 1);
    let mut queue = field!(regs, queue);
    field!(queue, tail).write(7);
    assert_eq!(dev.peek_word(BLOCK + 0x24, 4), 7);
    let mut table = field!(regs, table);
    table.get(3).unwrap().write(0x33);
    assert!(table.get(4).is_none());
    assert_eq!(dev.peek_word(BLOCK + 0x28 + 12, 4), 0x33);
    // Pure reads through a shared pointer, from the unique one or the region.
    let shared = regs.as_shared();
    assert_eq!(field!(shared, table).get(3).unwrap().read(), 0x33);
    let shared = region.shared_block::<Regs>(BLOCK).unwrap();
    let (head, tail) = (
        field!(field!(shared, queue), head),
        field!(field!(shared, queue), tail),
    );
    assert_eq!(u64::from(head.read()), dev.peek_word(BLOCK + 0x20, 4));
    assert_eq!(tail.read(), 7);
    take(dev)
}

#[test]
fn register_block_on_a_mapped_region() {
    let dev = device();
    let mut region = bar0(&dev, READ | WRITE | MMAP, false);
    assert_eq!(register_block(&mut region, &dev), []);
}

#[test]
fn register_block_on_a_trapped_region_is_one_access_per_register_access() {
    let dev = device();
    let id = dev.peek_word(BLOCK, 4);
    let fifo = dev.peek_word(BLOCK + 4, 4);
    let byte = dev.peek_word(BLOCK + 10, 1);
    let head = dev.peek_word(BLOCK + 0x20, 4);
    let mut region = bar0(&dev, READ | WRITE | MMAP, true);
    let b = BLOCK;
    assert_eq!(
        register_block(&mut region, &dev),
        [
            (b, 4, id, false),
            (b + 4, 4, fifo, false),
            (b + 8, 2, 0x1234, true),
            (b + 10, 1, byte, false),
            (b + 10, 1, byte ^ 0xff, true),
            (b + 0xc, 4, 0x8000_0001, true),
            (b + 0xc, 4, 0x8000_0001, false),
            (b + 0x18, 8, u64::MAX - 1, true),
            (b + 0x18, 8, u64::MAX - 1, false),
            (b + 0x24, 4, 7, true),
            (b + 0x34, 4, 0x33, true),
            (b + 0x34, 4, 0x33, false),
            (b + 0x20, 4, head, false),
            (b + 0x24, 4, 7, false),
        ]
    );
}

#[test]
fn blocks_outside_or_misaligned_are_refused() {
    let dev = device();
    let mut region = bar0(&dev, READ | WRITE | MMAP, false);
    let size = std::mem::size_of::<Regs>() as u64;
    for offset in [SIZE, SIZE - size + 4, u64::MAX - 2] {
        match region.block::<Regs>(offset) {
            Err(Error::OutOfRange {
                offset: o,
                len,
                size: s,
                ..
            }) => {
                assert_eq!((o, len, s), (offset, size, SIZE))
            }
            other => panic!("block at {offset:#x}: {other:?}"),
        }
        assert!(matches!(
            region.shared_block::<Regs>(offset),
            Err(Error::OutOfRange { .. })
        ));
    }
    assert!(
        region.block::<Regs>(SIZE - size).is_ok(),
        "the last place a block fits"
    );
    for offset in [1, 4, 0x104] {
        match region.block::<Regs>(offset) {
            Err(Error::Misaligned {
                offset: o, width: 8, ..
            }) => assert_eq!(o, offset),
            other => panic!("block at {offset:#x}: {other:?}"),
        }
    }
    assert!(matches!(
        region.shared_block::<ReadPure<u16>>(3),
        Err(Error::Misaligned { width: 2, .. })
    ));
}

#[test]
fn blocks_follow_the_region_permissions() {
    let dev = device();
    let mut read_only = bar0(&dev, READ | MMAP, false);
    assert!(matches!(read_only.block::<Regs>(0), Err(Error::ReadOnly { .. })));
    let shared = read_only.shared_block::<Regs>(BLOCK).unwrap();
    assert_eq!(u64::from(field!(shared, id).read()), dev.peek_word(BLOCK, 4));
    let mut write_only = bar0(&dev, WRITE | MMAP, false);
    assert!(matches!(
        write_only.block::<Regs>(0),
        Err(Error::NotReadable { .. })
    ));
    assert!(matches!(
        write_only.shared_block::<Regs>(0),
        Err(Error::NotReadable { .. })
    ));
}

#[test]
#[should_panic(expected = "outside or misaligned")]
fn a_projection_outside_its_block_panics() {
    let dev = device();
    let mut region = bar0(&dev, READ | WRITE | MMAP, false);
    let mut queue = region.block::<Queue>(0).unwrap();
    let _ = queue.project(|p| p.wrapping_byte_add(8).cast::<ReadWrite<u32>>());
}

#[test]
#[should_panic(expected = "outside or misaligned")]
fn a_misaligned_projection_panics() {
    let dev = device();
    let region = bar0(&dev, READ | WRITE | MMAP, false);
    let queue = region.shared_block::<Queue>(0).unwrap();
    let _ = queue.project(|p| p.wrapping_byte_add(2).cast::<ReadPure<u32>>());
}

/// The fast path this module exists for, kept out of line so its code can be
/// found in the test binary: `objdump -d --no-show-raw-insn target/release/deps/mmio_host-* |
/// grep -A12 'fast_path_u32>:'` shows one compare and one `mov` from memory.
#[inline(never)]
fn fast_path_u32(region: &Region) -> u32 {
    region.read::<u32>(0x10).unwrap_or(0)
}

#[test]
fn typed_fast_path_reads_through_the_pinned_load() {
    let dev = device();
    let region = bar0(&dev, READ | WRITE | MMAP, false);
    assert_eq!(u64::from(fast_path_u32(&region)), dev.peek_word(0x10, 4));
    assert_eq!(take(&dev), []);
}
