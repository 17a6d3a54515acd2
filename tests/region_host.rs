//! The region handle's own logic on any host: bounds, alignment, widths,
//! permissions, the mapped fast path and the slow path, over an emulated
//! device (a memfd mapped where the "kernel" allows it, and a recording
//! `RegionIo` for the rest). What needs a real device stays in the guest tests.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use barmap::shadow::AccessKind;
use barmap::{
    Error, FdRegion, MapPolicy, PciAddress, Region, RegionBuilder, RegionFlags, RegionIndex, RegionIo,
    SparseArea,
};

const PAGE: u64 = 0x1000;
const READ: u32 = 1;
const WRITE: u32 = 2;
const MMAP: u32 = 4;

/// A memfd standing for a device's memory, reached through a recording slow path.
struct Emulated {
    fd: Arc<OwnedFd>,
    io: Arc<Recording>,
}

/// The slow path: pread/pwrite on the memfd, with every access's (offset, len, write) kept.
struct Recording {
    inner: FdRegion,
    log: Mutex<Vec<(u64, usize, bool)>>,
    calls: AtomicUsize,
}

// SAFETY: these tests never build a pointer over a trapped page, so the fault
// handler never calls this; the typed slow path calls it outside signal
// context, where the Mutex is fine.
unsafe impl RegionIo for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.log.lock().unwrap().push((offset, buf.len(), false));
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.log.lock().unwrap().push((offset, data.len(), true));
        self.inner.write_at(offset, data)
    }
}

impl Emulated {
    fn new(size: u64) -> Emulated {
        // SAFETY: plain syscalls on a fresh descriptor, owned right away.
        let fd = unsafe {
            let fd = libc::memfd_create(c"barmap-region-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::ftruncate(fd.as_raw_fd(), size.next_multiple_of(PAGE) as i64) },
            0
        );
        let fd = Arc::new(fd);
        let io = Arc::new(Recording {
            inner: FdRegion::new(fd.clone(), 0, size),
            log: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
        });
        let bytes: Vec<u8> = (0..size).map(|i| (i * 13 + 5) as u8).collect();
        io.inner.write_at(0, &bytes).unwrap();
        Emulated { fd, io }
    }

    fn builder(&self, flags: u32, areas: &[SparseArea]) -> RegionBuilder<'_> {
        Region::builder(addr(), RegionIndex::bar(2).unwrap(), self.io.clone())
            .flags(RegionFlags::from_bits(flags))
            .map_from(&self.fd, 0, areas)
    }

    /// A region mapped whole.
    fn mapped(&self, flags: u32) -> Region {
        let size = self.io.size();
        self.builder(flags, &[SparseArea { offset: 0, size }])
            .build()
            .unwrap()
    }

    /// The slow-path accesses since the last call.
    fn take(&self) -> Vec<(u64, usize, bool)> {
        std::mem::take(&mut *self.io.log.lock().unwrap())
    }

    fn byte(&self, offset: u64) -> u8 {
        let mut b = [0u8];
        self.io.inner.read_at(offset, &mut b).unwrap();
        b[0]
    }
}

fn addr() -> PciAddress {
    "0000:ee:01.0".parse().unwrap()
}

fn le(e: &Emulated, offset: u64, len: usize) -> u64 {
    (0..len)
        .rev()
        .fold(0u64, |acc, i| acc << 8 | u64::from(e.byte(offset + i as u64)))
}

#[test]
fn a_region_owns_what_it_needs() {
    fn owned<T: Send + Sync + 'static>() {}
    owned::<Region>();
    owned::<barmap::Device>();
    let e = Emulated::new(2 * PAGE);
    let region = e.mapped(READ | WRITE | MMAP);
    let io = e.io.clone();
    drop(e); // the memfd's last outside handle: the region still works
    assert_eq!(
        region.read::<u32>(0x10).unwrap(),
        u32::from_le_bytes(std::array::from_fn(|i| ((0x10 + i as u64) * 13 + 5) as u8))
    );
    assert_eq!(
        io.calls.load(Ordering::Relaxed),
        0,
        "a mapped access never takes the slow path"
    );
}

#[test]
fn fast_path_reads_and_writes_the_mapping_only() {
    let e = Emulated::new(2 * PAGE);
    let region = e.mapped(READ | WRITE | MMAP);
    assert!(region.is_fully_mapped());
    assert_eq!(
        region.mapping_address() % (2 * PAGE) as usize,
        0,
        "aligned to its size"
    );
    for (offset, width) in [(0u64, 1usize), (2, 2), (4, 4), (8, 8), (2 * PAGE - 8, 8)] {
        assert_eq!(
            region.read_width(offset, width).unwrap(),
            le(&e, offset, width),
            "{width} at {offset:#x}"
        );
    }
    region.write::<u64>(0x100, 0x1122_3344_5566_7788).unwrap();
    region.write::<u16>(0x10a, 0xbeef).unwrap();
    assert_eq!(le(&e, 0x100, 8), 0x1122_3344_5566_7788);
    assert_eq!(le(&e, 0x10a, 2), 0xbeef);
    assert!(e.take().is_empty());
}

#[test]
fn holes_take_the_slow_path_at_the_same_width() {
    let e = Emulated::new(3 * PAGE);
    let region = e
        .builder(
            READ | WRITE | MMAP,
            &[
                SparseArea {
                    offset: 0,
                    size: PAGE,
                },
                SparseArea {
                    offset: 2 * PAGE,
                    size: PAGE,
                },
            ],
        )
        .build()
        .unwrap();
    assert_eq!(region.mapped_ranges(), [0..PAGE, 2 * PAGE..3 * PAGE]);
    assert!(!region.is_fully_mapped() && region.is_trapped(PAGE) && !region.is_trapped(2 * PAGE));
    assert_eq!(region.read::<u32>(4).unwrap() as u64, le(&e, 4, 4));
    assert_eq!(region.read::<u64>(2 * PAGE + 8).unwrap(), le(&e, 2 * PAGE + 8, 8));
    assert!(e.take().is_empty(), "mapped pages are direct");
    for width in [1usize, 2, 4, 8] {
        let offset = PAGE + 8 * width as u64;
        assert_eq!(region.read_width(offset, width).unwrap(), le(&e, offset, width));
        region.write_width(offset, width, 0x5a).unwrap();
        assert_eq!(le(&e, offset, width), 0x5a);
        assert_eq!(
            e.take(),
            vec![(offset, width, false), (offset, width, true)],
            "width {width}"
        );
    }
}

#[test]
fn trap_policies_keep_pages_off_the_mapping() {
    let e = Emulated::new(4 * PAGE);
    let whole = [SparseArea {
        offset: 0,
        size: 4 * PAGE,
    }];
    let region = e
        .builder(READ | WRITE | MMAP, &whole)
        .policy(MapPolicy::trap_range(PAGE + 4..PAGE + 8))
        .build()
        .unwrap();
    assert_eq!(region.mapped_ranges(), [0..PAGE, 2 * PAGE..4 * PAGE]);
    region.read::<u32>(PAGE + 4).unwrap();
    region.read::<u32>(PAGE + 0x800).unwrap();
    region.read::<u32>(0).unwrap();
    assert_eq!(e.take(), vec![(PAGE + 4, 4, false), (PAGE + 0x800, 4, false)]);
    let all = e
        .builder(READ | WRITE | MMAP, &whole)
        .policy(MapPolicy::TrapAll)
        .build()
        .unwrap();
    assert!(all.mapped_ranges().is_empty() && all.is_trapped(0) && all.is_trapped(4 * PAGE - 1));
    assert!(!all.is_trapped(4 * PAGE), "past the end is not in the region");
    all.read::<u8>(0).unwrap();
    assert_eq!(e.take(), vec![(0, 1, false)]);
}

#[test]
fn out_of_range_is_refused_with_the_region_named() {
    let e = Emulated::new(PAGE);
    let region = e.mapped(READ | WRITE | MMAP);
    for (offset, width) in [
        (PAGE, 1usize),
        (PAGE - 2, 4),
        (PAGE - 4, 8),
        (u64::MAX - 1, 4),
        (u64::MAX, 1),
    ] {
        let err = region.read_width(offset, width).unwrap_err();
        assert!(
            matches!(err, Error::OutOfRange { addr: a, region: r, offset: o, len, size: PAGE } if a == addr() && r == RegionIndex::bar(2).unwrap() && o == offset && len == width as u64),
            "{err:?}"
        );
        assert!(region.write_width(offset, width, 0).is_err());
    }
    let err = region.read::<u32>(PAGE).unwrap_err().to_string();
    assert!(err.contains("0000:ee:01.0") && err.contains("bar2"), "{err}");
    let mut buf = [0u8; 16];
    assert!(matches!(
        region.read_bytes(PAGE - 8, &mut buf),
        Err(Error::OutOfRange { len: 16, .. })
    ));
    assert!(matches!(
        region.write_bytes(u64::MAX - 3, &buf),
        Err(Error::OutOfRange { .. })
    ));
    assert!(e.take().is_empty(), "a refused access never reaches the device");
}

#[test]
fn misaligned_and_odd_widths_are_refused() {
    let e = Emulated::new(PAGE);
    for region in [
        e.mapped(READ | WRITE | MMAP),
        e.builder(READ | WRITE, &[]).build().unwrap(),
    ] {
        for (offset, width) in [(1u64, 2usize), (2, 4), (4, 8), (0x101, 8)] {
            let err = region.read_width(offset, width).unwrap_err();
            assert!(
                matches!(err, Error::Misaligned { offset: o, width: w, .. } if o == offset && w == width),
                "{err:?}"
            );
            assert!(matches!(
                region.write_width(offset, width, 0),
                Err(Error::Misaligned { .. })
            ));
            assert!(matches!(
                region.check_access(offset, width, AccessKind::Read),
                Err(Error::Misaligned { .. })
            ));
        }
        for width in [0usize, 3, 5, 16] {
            assert!(
                matches!(region.read_width(0, width), Err(Error::UnsupportedWidth { width: w, .. }) if w == width)
            );
            assert!(matches!(
                region.write_width(0, width, 0),
                Err(Error::UnsupportedWidth { .. })
            ));
            assert!(matches!(
                region.check_access(0, width, AccessKind::Write),
                Err(Error::UnsupportedWidth { .. })
            ));
        }
        assert!(matches!(
            region.write_width(4, 1, 0x100),
            Err(Error::ValueTooWide {
                value: 0x100,
                width: 1,
                ..
            })
        ));
        assert!(matches!(
            region.write_width(4, 4, 1 << 32),
            Err(Error::ValueTooWide { .. })
        ));
        region.check_access(8, 8, AccessKind::Write).unwrap();
    }
    assert!(e.take().is_empty());
}

#[test]
fn permissions_follow_the_region_flags() {
    let e = Emulated::new(PAGE);
    let rom = e.mapped(READ | MMAP);
    assert!(rom.is_fully_mapped());
    assert_eq!(rom.read::<u32>(0).unwrap() as u64, le(&e, 0, 4));
    for err in [
        rom.write::<u32>(0, 1).unwrap_err(),
        rom.write_bytes(0, &[1, 2]).unwrap_err(),
        rom.check_access(0, 4, AccessKind::Write).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::ReadOnly { addr: a, .. } if a == addr()),
            "{err:?}"
        );
    }
    let write_only = e.builder(WRITE, &[]).build().unwrap();
    assert!(matches!(write_only.read::<u8>(0), Err(Error::NotReadable { .. })));
    write_only.write::<u8>(0, 0x42).unwrap();
    assert_eq!(e.byte(0), 0x42);
    assert_eq!(e.take(), vec![(0, 1, true)]);
    // The read-only mapping really is read-only: its page is mapped without PROT_WRITE.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let start = format!("{:x}-", rom.mapping_address());
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .expect("the mapping is listed");
    assert!(
        line.split_whitespace().nth(1).unwrap().starts_with("r-"),
        "{line}"
    );
}

#[test]
fn bulk_accesses_are_aligned_runs_of_at_most_four_bytes() {
    let e = Emulated::new(PAGE);
    let region = e.builder(READ | WRITE, &[]).build().unwrap();
    let data: Vec<u8> = (0..11).collect();
    region.write_bytes(0x21, &data).unwrap();
    assert_eq!(
        e.take(),
        vec![(0x21, 1, true), (0x22, 2, true), (0x24, 4, true), (0x28, 4, true)],
    );
    let mut back = [0u8; 11];
    region.read_bytes(0x21, &mut back).unwrap();
    assert_eq!(back.to_vec(), data);
    assert!(e
        .take()
        .iter()
        .all(|&(offset, len, write)| !write && len <= 4 && offset % len as u64 == 0));
}

#[test]
fn dropping_the_region_unmaps_it() {
    let e = Emulated::new(PAGE);
    let region = e.mapped(READ | WRITE | MMAP);
    let start = format!("{:x}-", region.mapping_address());
    let listed = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| l.starts_with(&start))
    };
    assert!(listed());
    drop(region);
    assert!(!listed());
}
