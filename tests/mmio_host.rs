//! Pinned accessors and register-block pointers on any host, over an
//! emulated device: a memfd is the device memory, mapped pages map it
//! directly, and trapped pages are served by the fault handler through a
//! `RegionIo` on the same memfd that logs every access lock-free.
//!
//! Run under `cargo test --release` too: the pinned accesses must stay one
//! `mov` of the right width whatever the optimisation level.
#![cfg(target_arch = "x86_64")]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use barmap::mmio::{self, ReadOnly, ReadPure, ReadPureWrite, ReadWrite, WriteOnly};
use barmap::{field, Error, FdRegion, MapPolicy, Region, RegionFlags, RegionIndex, RegionIo, SparseArea};

const PAGE: u64 = 0x1000;
const SIZE: u64 = 2 * PAGE;
const READ: u32 = 1;
const WRITE: u32 = 2;
const MMAP: u32 = 4;

/// One device access seen by the slow path: offset, width, value, write.
type Rec = (u64, usize, u64, bool);

/// The device's slow path: pread/pwrite on the memfd, each access logged in
/// preallocated atomics (no lock, no allocation: it runs in the fault handler).
struct Logged {
    io: FdRegion,
    cells: Box<[[AtomicU64; 2]]>,
    next: AtomicUsize,
}

impl Logged {
    fn push(&self, offset: u64, bytes: &[u8], write: bool) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(cell) = self.cells.get(i) {
            cell[0].store(
                offset << 16 | (bytes.len() as u64) << 8 | u64::from(write),
                Ordering::Relaxed,
            );
            cell[1].store(word(bytes), Ordering::Release);
        }
    }

    fn take(&self) -> Vec<Rec> {
        let n = self.next.swap(0, Ordering::Acquire);
        assert!(n <= self.cells.len(), "access log overflow");
        self.cells[..n]
            .iter()
            .map(|c| {
                let meta = c[0].load(Ordering::Relaxed);
                let value = c[1].load(Ordering::Acquire);
                (meta >> 16, (meta >> 8 & 0xff) as usize, value, meta & 1 != 0)
            })
            .collect()
    }
}

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

// SAFETY: pread/pwrite and atomics only: async-signal-safe, as the fault
// handler requires.
unsafe impl RegionIo for Logged {
    fn size(&self) -> u64 {
        self.io.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.io.read_at(offset, buf)?;
        self.push(offset, buf, false);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.io.write_at(offset, data)?;
        self.push(offset, data, true);
        Ok(())
    }
}

/// The emulated device: a memfd of two pages with a recognisable pattern.
struct Device {
    fd: Arc<OwnedFd>,
    io: Arc<Logged>,
}

impl Device {
    fn new() -> Device {
        // SAFETY: plain syscalls on a fresh descriptor, owned right away.
        let fd = unsafe {
            let fd = libc::memfd_create(c"barmap-mmio-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), SIZE as i64) }, 0);
        let fd = Arc::new(fd);
        let io = Arc::new(Logged {
            io: FdRegion::new(fd.clone(), 0, SIZE),
            cells: (0..256).map(|_| Default::default()).collect(),
            next: AtomicUsize::new(0),
        });
        let pattern: Vec<u8> = (0..SIZE).map(|i| (i * 11 + 3) as u8).collect();
        io.io.write_at(0, &pattern).unwrap();
        Device { fd, io }
    }

    /// BAR0 with `flags`, mapped whole or trapped whole.
    fn region(&self, flags: u32, trapped: bool) -> Region {
        let builder = Region::builder(
            "0000:ee:02.0".parse().unwrap(),
            RegionIndex::bar(0).unwrap(),
            self.io.clone(),
        )
        .flags(RegionFlags::from_bits(flags))
        .map_from(
            &self.fd,
            0,
            &[SparseArea {
                offset: 0,
                size: SIZE,
            }],
        );
        let policy = if trapped {
            MapPolicy::TrapAll
        } else {
            MapPolicy::Direct
        };
        let region = builder.policy(policy).build().unwrap();
        assert_eq!(region.is_trapped(0), trapped);
        region
    }

    /// Device memory, read behind barmap's back.
    fn peek(&self, offset: u64, width: usize) -> u64 {
        let mut buf = [0u8; 8];
        self.io.io.read_at(offset, &mut buf[..width]).unwrap();
        word(&buf[..width])
    }
}

/// Each width of `mmio::read` and `mmio::write` at `offset`: the value comes
/// from and goes to the device; returns the slow-path accesses seen.
fn every_width(region: &Region, dev: &Device, offset: u64) -> Vec<Rec> {
    let base = region.as_mut_ptr().unwrap();
    dev.io.take();
    // SAFETY (every block below): offset + 8 <= SIZE, and offset is 8-byte
    // aligned, so each pointer is aligned and inside the live region.
    unsafe {
        let p = base.add(offset as usize);
        assert_eq!(u64::from(mmio::read(p)), dev.peek(offset, 1));
        assert_eq!(u64::from(mmio::read(p.cast::<u16>())), dev.peek(offset, 2));
        assert_eq!(u64::from(mmio::read(p.cast::<u32>())), dev.peek(offset, 4));
        assert_eq!(mmio::read(p.cast::<u64>()), dev.peek(offset, 8));
        mmio::write(p, 0xa5u8);
        assert_eq!(dev.peek(offset, 1), 0xa5);
        mmio::write(p.cast::<u16>(), 0xbeefu16);
        assert_eq!(dev.peek(offset, 2), 0xbeef);
        mmio::write(p.cast::<u32>(), 0xdead_beefu32);
        assert_eq!(dev.peek(offset, 4), 0xdead_beef);
        let runtime = std::hint::black_box(0x0123_4567_89ab_cdefu64) ^ offset;
        mmio::write(p.cast::<u64>(), runtime);
        assert_eq!(dev.peek(offset, 8), runtime);
    }
    dev.io.take()
}

#[test]
fn pinned_accesses_on_a_mapped_page_never_reach_the_slow_path() {
    let dev = Device::new();
    let region = dev.region(READ | WRITE | MMAP, false);
    for offset in [0, 8, PAGE - 8, PAGE + 0x40] {
        assert_eq!(every_width(&region, &dev, offset), [], "at {offset:#x}");
    }
}

#[test]
fn pinned_accesses_on_a_trapped_page_are_one_access_of_their_width() {
    let dev = Device::new();
    let region = dev.region(READ | WRITE | MMAP, true);
    for offset in [0, 8, PAGE - 8, PAGE + 0x40] {
        let before: Vec<u64> = [1, 2, 4, 8].map(|w| dev.peek(offset, w)).to_vec();
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

// The layout the expected offsets below rely on.
const _: () = assert!(std::mem::offset_of!(Regs, counter) == 0x18);
const _: () = assert!(std::mem::offset_of!(Regs, queue) == 0x20);
const _: () = assert!(std::mem::offset_of!(Regs, table) == 0x28);
const _: () = assert!(std::mem::size_of::<Regs>() == 0x38);

const BLOCK: u64 = 0x100;

/// Every register of `Regs` at BLOCK through the block pointer, each checked
/// against the device; returns the slow-path accesses seen.
fn register_block(region: &mut Region, dev: &Device) -> Vec<Rec> {
    dev.io.take();
    let mut regs = region.block::<Regs>(BLOCK).unwrap();
    assert_eq!(u64::from(field!(regs, id).read()), dev.peek(BLOCK, 4));
    assert_eq!(u64::from(field!(regs, fifo).read()), dev.peek(BLOCK + 4, 4));
    field!(regs, doorbell).write(0x1234);
    assert_eq!(dev.peek(BLOCK + 8, 2), 0x1234);
    field!(regs, byte).update(|b| b ^ 0xff);
    assert_eq!(
        dev.peek(BLOCK + 10, 1),
        u64::from((10 + BLOCK) as u8 * 11 + 3) ^ 0xff
    );
    field!(regs, control).write(0x8000_0001);
    assert_eq!(field!(regs, control).read(), 0x8000_0001);
    field!(regs, counter).write(u64::MAX - 1);
    assert_eq!(field!(regs, counter).read(), u64::MAX - 1);
    let mut queue = field!(regs, queue);
    field!(queue, tail).write(7);
    assert_eq!(dev.peek(BLOCK + 0x24, 4), 7);
    let mut table = field!(regs, table);
    table.get(3).unwrap().write(0x33);
    assert!(table.get(4).is_none());
    assert_eq!(dev.peek(BLOCK + 0x28 + 12, 4), 0x33);
    // Pure reads through a shared pointer, from the unique one or the region.
    let shared = regs.as_shared();
    assert_eq!(field!(shared, table).get(3).unwrap().read(), 0x33);
    let shared = region.shared_block::<Regs>(BLOCK).unwrap();
    let (head, tail) = (
        field!(field!(shared, queue), head),
        field!(field!(shared, queue), tail),
    );
    assert_eq!(u64::from(head.read()), dev.peek(BLOCK + 0x20, 4));
    assert_eq!(tail.read(), 7);
    dev.io.take()
}

#[test]
fn register_block_on_a_mapped_region() {
    let dev = Device::new();
    let mut region = dev.region(READ | WRITE | MMAP, false);
    assert_eq!(register_block(&mut region, &dev), []);
}

#[test]
fn register_block_on_a_trapped_region_is_one_access_per_register_access() {
    let dev = Device::new();
    let id = dev.peek(BLOCK, 4);
    let fifo = dev.peek(BLOCK + 4, 4);
    let byte = dev.peek(BLOCK + 10, 1);
    let head = dev.peek(BLOCK + 0x20, 4);
    let mut region = dev.region(READ | WRITE | MMAP, true);
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
    let dev = Device::new();
    let mut region = dev.region(READ | WRITE | MMAP, false);
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
    let dev = Device::new();
    let mut read_only = dev.region(READ | MMAP, false);
    assert!(matches!(read_only.block::<Regs>(0), Err(Error::ReadOnly { .. })));
    let shared = read_only.shared_block::<Regs>(BLOCK).unwrap();
    assert_eq!(u64::from(field!(shared, id).read()), dev.peek(BLOCK, 4));
    let mut write_only = dev.region(WRITE | MMAP, false);
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
    let dev = Device::new();
    let mut region = dev.region(READ | WRITE | MMAP, false);
    let mut queue = region.block::<Queue>(0).unwrap();
    let _ = queue.project(|p| p.wrapping_byte_add(8).cast::<ReadWrite<u32>>());
}

#[test]
#[should_panic(expected = "outside or misaligned")]
fn a_misaligned_projection_panics() {
    let dev = Device::new();
    let region = dev.region(READ | WRITE | MMAP, false);
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
    let dev = Device::new();
    let region = dev.region(READ | WRITE | MMAP, false);
    assert_eq!(u64::from(fast_path_u32(&region)), dev.peek(0x10, 4));
    assert_eq!(dev.io.take(), []);
}
