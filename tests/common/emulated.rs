//! An emulated device for the host tests: a memfd is the device memory,
//! mapped areas map it directly, and trapped pages are served by a
//! [`RegionIo`] over the same memfd that logs each access (offset, width,
//! value, direction) into a preallocated lock-free log, which the fault
//! handler may call.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use barmap::{FdRegion, MapPolicy, PciAddress, Region, RegionBuilder, RegionIndex, RegionIo, SparseArea};

pub const PAGE: u64 = 0x1000;

/// The address the emulated device's regions carry in errors and diagnostics.
pub fn emulated_addr() -> PciAddress {
    "0000:ee:00.0".parse().unwrap()
}

/// A builder for BAR0 of the emulated device, reached through `io`.
pub fn emulated(io: Arc<dyn RegionIo>) -> RegionBuilder<'static> {
    Region::builder(emulated_addr(), RegionIndex::bar(0).unwrap(), io)
}

/// A fresh memfd of `len` bytes (zeros).
pub fn memfd(len: u64) -> Arc<OwnedFd> {
    // SAFETY: plain syscalls on a fresh descriptor, owned right away.
    let fd = unsafe {
        let fd = libc::memfd_create(c"barmap-emulated".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    };
    truncate(&fd, len);
    Arc::new(fd)
}

/// Sets the length of the file behind `fd` (shrinking it revokes mappings of
/// what is cut off: they raise SIGBUS).
pub fn truncate(fd: &OwnedFd, len: u64) {
    // SAFETY: ftruncate on a descriptor we own.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
}

/// The little-endian value of up to 8 bytes.
pub fn word(buf: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..buf.len()].copy_from_slice(buf);
    u64::from_le_bytes(w)
}

/// One logged device access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    pub offset: u64,
    pub width: usize,
    pub value: u64,
    pub write: bool,
}

pub fn rec(offset: u64, width: usize, value: u64, write: bool) -> Rec {
    Rec {
        offset,
        width,
        value,
        write,
    }
}

impl Rec {
    /// (offset, width, value, write).
    pub fn tuple(self) -> (u64, usize, u64, bool) {
        (self.offset, self.width, self.value, self.write)
    }
}

/// A preallocated log of device accesses; appending is lock-free and
/// allocation-free, and never panics, as the fault handler requires of the
/// slow path. Records past the capacity are counted as lost, and `take`
/// fails on them.
pub struct Log {
    cells: Box<[[AtomicU64; 3]]>,
    next: AtomicUsize,
    lost: AtomicUsize,
}

impl Log {
    pub fn new(capacity: usize) -> Log {
        Log {
            cells: (0..capacity).map(|_| Default::default()).collect(),
            next: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
        }
    }

    pub fn push(&self, r: Rec) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(cell) = self.cells.get(i) else {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        cell[0].store(r.offset, Ordering::Relaxed);
        cell[1].store(r.width as u64 | u64::from(r.write) << 8, Ordering::Relaxed);
        cell[2].store(r.value, Ordering::Release);
    }

    /// The accesses logged since the last call.
    pub fn take(&self) -> Vec<Rec> {
        assert_eq!(self.lost.swap(0, Ordering::Relaxed), 0, "access log overflow");
        let n = self.next.swap(0, Ordering::Acquire).min(self.cells.len());
        self.cells[..n]
            .iter()
            .map(|c| {
                let meta = c[1].load(Ordering::Relaxed);
                Rec {
                    offset: c[0].load(Ordering::Relaxed),
                    width: (meta & 0xff) as usize,
                    write: meta >> 8 != 0,
                    value: c[2].load(Ordering::Acquire),
                }
            })
            .collect()
    }
}

/// What the slow path does besides logging: it counts every call, and
/// refuses with `EIO` (as vfio-pci does while memory decoding is off) while
/// told to.
#[derive(Default)]
pub struct SlowPath {
    calls: AtomicUsize,
    refusing: AtomicBool,
}

impl SlowPath {
    /// How many times the slow path was called, refused calls included.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Makes the slow path refuse (`true`) or answer (`false`).
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Counts a call; `Err(EIO)` while refusing.
    fn enter(&self) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.refusing.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// The emulated device: `size` bytes of memfd (its file rounded up to whole
/// pages).
pub struct Device {
    pub fd: Arc<OwnedFd>,
    pub size: u64,
    /// Every access the slow path was asked for, in order.
    pub log: Arc<Log>,
    pub slow: Arc<SlowPath>,
}

/// The device's slow path: barmap's own pread/pwrite region on the memfd,
/// each access it is asked for counted and logged, whether it is served or
/// fails (a failed read logs whatever `buf` holds).
struct RecordingIo {
    /// Keeps the descriptor `io` uses open.
    _fd: Arc<OwnedFd>,
    io: FdRegion,
    log: Arc<Log>,
    slow: Arc<SlowPath>,
}

/// The value logged for an access: its first 8 bytes (a device access is at
/// most 8; never a panic in the fault handler).
fn logged(bytes: &[u8]) -> u64 {
    word(&bytes[..bytes.len().min(8)])
}

// SAFETY: `read_at`/`write_at` are FdRegion's pread/pwrite plus stores into
// preallocated atomics (`SlowPath::enter`, `Log::push`; an `io::Error` from a
// raw OS error does not allocate): no allocation, no lock, no panic, so they
// are async-signal-safe, as the fault handler requires.
unsafe impl RegionIo for RecordingIo {
    fn size(&self) -> u64 {
        self.io.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let result = self.slow.enter().and_then(|()| self.io.read_at(offset, buf));
        self.log.push(rec(offset, buf.len(), logged(buf), false));
        result
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let result = self.slow.enter().and_then(|()| self.io.write_at(offset, data));
        self.log.push(rec(offset, data.len(), logged(data), true));
        result
    }
}

impl Device {
    /// A device of `size` bytes of zeros.
    pub fn new(size: u64) -> Device {
        Device {
            fd: memfd(size.next_multiple_of(PAGE)),
            size,
            log: Arc::new(Log::new(1 << 14)),
            slow: Arc::default(),
        }
    }

    /// A device whose byte `i` holds `pattern(i)`, up to the end of its file.
    pub fn with_pattern(size: u64, pattern: impl Fn(u64) -> u8) -> Device {
        let dev = Device::new(size);
        let bytes: Vec<u8> = (0..size.next_multiple_of(PAGE)).map(pattern).collect();
        dev.poke(0, &bytes);
        dev
    }

    /// A slow path to the device (each one logs into `log`).
    pub fn io(&self) -> Arc<dyn RegionIo> {
        Arc::new(RecordingIo {
            _fd: self.fd.clone(),
            io: FdRegion::new(self.fd.clone(), 0, self.size),
            log: self.log.clone(),
            slow: self.slow.clone(),
        })
    }

    /// Writes device memory behind barmap's back (no log entry).
    pub fn poke(&self, offset: u64, data: &[u8]) {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe {
            libc::pwrite(
                self.fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                offset as i64,
            )
        };
        assert_eq!(n, data.len() as isize);
    }

    /// Reads device memory behind barmap's back (no log entry).
    pub fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::pread(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, offset as i64) };
        assert_eq!(n, len as isize);
        buf
    }

    /// The little-endian value of `width` (at most 8) bytes of device memory,
    /// read behind barmap's back.
    pub fn peek_word(&self, offset: u64, width: usize) -> u64 {
        word(&self.peek(offset, width))
    }

    /// The whole device as one mappable area.
    pub fn whole(&self) -> SparseArea {
        SparseArea {
            offset: 0,
            size: self.size,
        }
    }

    /// A region with every page trapped.
    pub fn trap_all(&self) -> Region {
        emulated(self.io()).policy(MapPolicy::TrapAll).build().unwrap()
    }

    /// A region mapping `areas` directly, trapping the rest.
    pub fn sparse(&self, areas: &[SparseArea]) -> Region {
        emulated(self.io()).map_from(&self.fd, 0, areas).build().unwrap()
    }
}
