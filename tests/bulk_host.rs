//! `Region::read_slice`/`write_slice` on any host, over a memfd standing for
//! device memory: mapped whole, mapped in part (the rest through a recording
//! slow path) or trapped whole with a hook. What needs a device (ivshmem) is
//! in tests/bulk_guest.rs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use barmap::shadow::Access;
use barmap::{Error, FdRegion, MapPolicy, Region, RegionFlags, RegionIndex, RegionIo, SparseArea};

const PAGE: u64 = 0x1000;
const READ: u32 = 1;
const WRITE: u32 = 2;
const MMAP: u32 = 4;

/// The slow path: pread/pwrite on the memfd, with every access's (offset, len, write) kept.
struct Recording {
    inner: FdRegion,
    log: Mutex<Vec<(u64, usize, bool)>>,
}

// SAFETY: these tests never touch the region's pointer, so the fault handler
// never calls this; the typed slow path calls it outside signal context,
// where the Mutex is fine.
unsafe impl RegionIo for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.log.lock().unwrap().push((offset, buf.len(), false));
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.log.lock().unwrap().push((offset, data.len(), true));
        self.inner.write_at(offset, data)
    }
}

/// A memfd of `pages` pages filled with a byte pattern, and its recording slow path.
struct Memfd {
    fd: Arc<OwnedFd>,
    io: Arc<Recording>,
}

impl Memfd {
    fn new(pages: u64) -> Memfd {
        let size = pages * PAGE;
        // SAFETY: plain syscalls on a fresh descriptor, owned right away.
        let fd = unsafe {
            let fd = libc::memfd_create(c"barmap-bulk-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }, 0);
        let fd = Arc::new(fd);
        let io = Arc::new(Recording {
            inner: FdRegion::new(fd.clone(), 0, size),
            log: Mutex::new(Vec::new()),
        });
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        io.inner.write_at(0, &bytes).unwrap();
        Memfd { fd, io }
    }

    /// A region with `areas` mapped from the memfd.
    fn region(&self, flags: u32, areas: &[SparseArea]) -> Region {
        Region::builder(
            "0000:ee:02.0".parse().unwrap(),
            RegionIndex::bar(2).unwrap(),
            self.io.clone(),
        )
        .flags(RegionFlags::from_bits(flags))
        .map_from(&self.fd, 0, areas)
        .build()
        .unwrap()
    }

    fn whole(&self, flags: u32) -> Region {
        let size = self.io.size();
        self.region(flags, &[SparseArea { offset: 0, size }])
    }

    /// The slow-path accesses since the last call.
    fn take(&self) -> Vec<(u64, usize, bool)> {
        std::mem::take(&mut *self.io.log.lock().unwrap())
    }

    /// The memfd's u64 at `offset`, little-endian, read behind the region's back.
    fn word(&self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.io.inner.read_at(offset, &mut b).unwrap();
        u64::from_le_bytes(b)
    }
}

#[test]
fn a_mapped_region_moves_slices_through_the_mapping_only() {
    let m = Memfd::new(4);
    let region = m.whole(READ | WRITE | MMAP);
    let words: Vec<u64> = (0..1000).map(|i| 0x0123_4567_89ab_cdef ^ (i << 17)).collect();
    region.write_slice(0x808, &words).unwrap();
    for (i, w) in words.iter().enumerate() {
        assert_eq!(m.word(0x808 + 8 * i as u64), *w);
    }
    let mut back = vec![0u64; words.len()];
    region.read_slice(0x808, &mut back).unwrap();
    assert_eq!(back, words);
    let mut halves = [0u16; 3];
    region.read_slice(0x808, &mut halves).unwrap();
    assert_eq!(halves, [0xcdef, 0x89ab, 0x4567]);
    assert!(
        m.take().is_empty(),
        "a fully mapped region never takes the slow path"
    );
}

#[test]
fn unmapped_parts_take_one_slow_access_per_element_at_its_width() {
    let m = Memfd::new(3);
    // Only the middle page is mapped.
    let region = m.region(
        READ | WRITE | MMAP,
        &[SparseArea {
            offset: PAGE,
            size: PAGE,
        }],
    );
    assert_eq!(region.mapped_ranges(), std::slice::from_ref(&(PAGE..2 * PAGE)));
    let start = PAGE - 16;
    let mut words = vec![0u64; (PAGE as usize + 32) / 8];
    region.read_slice(start, &mut words).unwrap();
    for (i, w) in words.iter().enumerate() {
        assert_eq!(*w, m.word(start + 8 * i as u64));
    }
    let expected: Vec<_> = [start, start + 8, 2 * PAGE, 2 * PAGE + 8]
        .into_iter()
        .map(|o| (o, 8, false))
        .collect();
    assert_eq!(
        m.take(),
        expected,
        "the two words on each unmapped page, 8 bytes each"
    );

    let data: Vec<u32> = (0..(PAGE as u32 / 4 + 8)).collect();
    region.write_slice(start, &data).unwrap();
    let log = m.take();
    assert_eq!(log.len(), 8);
    assert!(log
        .iter()
        .all(|&(o, len, write)| write && len == 4 && !(PAGE..2 * PAGE).contains(&o)));
    let mut back = vec![0u32; data.len()];
    region.read_slice(start, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn checks_are_made_once_before_any_access() {
    let m = Memfd::new(2);
    let region = m.whole(READ | WRITE | MMAP);
    let before = m.word(0);
    let size = 2 * PAGE;
    let mut buf = [0u64; 4];
    assert!(matches!(
        region.read_slice(size - 24, &mut buf),
        Err(Error::OutOfRange { offset, len: 32, .. }) if offset == size - 24
    ));
    assert!(matches!(
        region.write_slice(u64::MAX - 7, &[1u64]),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        region.write_slice(4, &[1u64, 2]),
        Err(Error::Misaligned {
            offset: 4,
            width: 8,
            ..
        })
    ));
    assert!(matches!(
        region.read_slice(2, &mut [0u32; 1]),
        Err(Error::Misaligned {
            offset: 2,
            width: 4,
            ..
        })
    ));
    assert_eq!(m.word(0), before, "a refused write changes nothing");
    region.read_slice::<u64>(size, &mut []).unwrap();
    region.write_slice::<u64>(0, &[]).unwrap();

    let read_only = m.whole(READ | MMAP);
    assert!(matches!(
        read_only.write_slice(0, &[9u64]),
        Err(Error::ReadOnly { .. })
    ));
    assert_eq!(m.word(0), before);
    let write_only = m.whole(WRITE | MMAP);
    assert!(matches!(
        write_only.read_slice(0, &mut [0u64]),
        Err(Error::NotReadable { .. })
    ));
    assert!(m.take().is_empty());
}

#[test]
fn a_trapped_region_shows_every_element_to_its_hook_at_the_slice_width() {
    let m = Memfd::new(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let builder = Region::builder(
        "0000:ee:02.0".parse().unwrap(),
        RegionIndex::bar(2).unwrap(),
        m.io.clone(),
    )
    .flags(RegionFlags::from_bits(READ | WRITE))
    .policy(MapPolicy::TrapAll);
    // SAFETY: the pointer is never touched, so the hook runs only from the
    // typed slow path, outside signal context, where the Mutex is fine.
    let region = unsafe { builder.hook(move |a: &Access| hook_seen.lock().unwrap().push(a.width)) }
        .build()
        .unwrap();
    region.write_slice(0x100, &[5u64; 16]).unwrap();
    let mut back = [0u64; 16];
    region.read_slice(0x100, &mut back).unwrap();
    assert_eq!(back, [5u64; 16]);
    let widths = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(widths, vec![8; 32]);
    assert_eq!(m.take().len(), 32);
}
