//! The reserved address range a region is mapped into.

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::ptr::NonNull;

/// Largest alignment asked for: a 1 GiB (PUD) huge entry.
const MAX_ALIGN: u64 = 1 << 30;

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// An anonymous `PROT_NONE` address range owned by this value and unmapped
/// whole on drop, into which device areas are placed with `MAP_FIXED`.
#[derive(Debug)]
pub(crate) struct Reservation {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the reservation is only an address range; every access to the memory
// behind it goes through volatile accesses or syscalls, which are valid from any
// thread.
unsafe impl Send for Reservation {}
// SAFETY: as above: `&Reservation` gives no non-volatile access to the memory.
unsafe impl Sync for Reservation {}

impl Reservation {
    /// Reserves `size` bytes (rounded up to whole pages), aligned to
    /// `min(1 << ctz(size), 1 GiB)` and at least a page.
    pub(crate) fn new(size: u64) -> io::Result<Reservation> {
        let page = page_size() as u64;
        if size == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let len = size
            .div_ceil(page)
            .checked_mul(page)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let align = (1u64 << size.trailing_zeros()).clamp(page, MAX_ALIGN);
        let total = len.checked_add(align - page).ok_or(io::ErrorKind::InvalidInput)?;
        let total = usize::try_from(total).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = len as usize;
        // SAFETY: an anonymous private PROT_NONE mapping at an address of the
        // kernel's choice touches no existing memory.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(align as usize);
        let head = aligned - start;
        let tail = total - head - len;
        // SAFETY: [start, start + head) and [aligned + len, start + total) lie in
        // the mapping just made and are not used by anything else.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        let base = NonNull::new(aligned as *mut u8).ok_or(io::ErrorKind::AddrNotAvailable)?;
        Ok(Reservation { base, len })
    }

    /// The start of the range.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// The length of the range in bytes (whole pages).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Maps `len` bytes of `fd` from `file_offset` at `at` bytes into the range,
    /// shared, readable, and writable if `writable`. `at` and `len` must be page
    /// aligned and inside the range.
    pub(crate) fn map_shared(
        &self,
        at: usize,
        len: usize,
        fd: RawFd,
        file_offset: u64,
        writable: bool,
    ) -> io::Result<()> {
        let page = page_size();
        let inside = at.checked_add(len).is_some_and(|end| end <= self.len);
        if !inside || !at.is_multiple_of(page) || !len.is_multiple_of(page) || len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let offset = libc::off_t::try_from(file_offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: [base + at, base + at + len) lies inside the reservation this
        // value owns, so MAP_FIXED replaces only our own PROT_NONE pages.
        let raw = unsafe {
            libc::mmap(
                self.base.as_ptr().add(at).cast(),
                len,
                if writable {
                    libc::PROT_READ | libc::PROT_WRITE
                } else {
                    libc::PROT_READ
                },
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                offset,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Reservation {
    /// Maps each of `ranges` (page-aligned offsets in the range) from `fd` at
    /// `file_offset + range.start`, writable if `writable`; on failure, the
    /// range that failed and why.
    pub(crate) fn map_ranges(
        &self,
        ranges: &[Range<u64>],
        fd: RawFd,
        file_offset: u64,
        writable: bool,
    ) -> Result<(), (Range<u64>, io::Error)> {
        for range in ranges {
            let failed = |e: io::Error| (range.clone(), e);
            let len = range
                .end
                .checked_sub(range.start)
                .ok_or(io::ErrorKind::InvalidInput)
                .map_err(|k| failed(k.into()))?;
            let at_file = file_offset
                .checked_add(range.start)
                .ok_or(io::ErrorKind::InvalidInput)
                .map_err(|k| failed(k.into()))?;
            let (at, len) = match (usize::try_from(range.start), usize::try_from(len)) {
                (Ok(at), Ok(len)) => (at, len),
                _ => return Err(failed(io::ErrorKind::InvalidInput.into())),
            };
            self.map_shared(at, len, fd, at_file, writable).map_err(failed)?;
            log::debug!("mapped fd {fd} offset {at_file:#x} at {at:#x}+{len:#x}");
        }
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the range is owned by this value and nothing borrows it past its
        // lifetime (views borrow the owner).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_mapped(addr: usize) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().any(|line| {
            let range = line.split_whitespace().next().unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap(),
                usize::from_str_radix(hi, 16).unwrap(),
            );
            (lo..hi).contains(&addr)
        })
    }

    #[test]
    fn aligns_rounds_and_unmaps() {
        let page = page_size();
        let r = Reservation::new(0x10_0000).unwrap();
        assert_eq!(r.base() as usize % 0x10_0000, 0);
        assert_eq!(r.len(), 0x10_0000);
        let small = Reservation::new(0x100).unwrap();
        assert_eq!(small.len(), page);
        assert_eq!(small.base() as usize % page, 0);
        assert!(is_mapped(r.base() as usize));
        assert!(Reservation::new(0).is_err());
        let (base, len) = (r.base() as usize, r.len());
        drop(r);
        for at in (base..base + len).step_by(page) {
            let mut resident = 0u8;
            // SAFETY: mincore only inspects the page and writes one byte.
            let rc = unsafe { libc::mincore(at as *mut libc::c_void, page, &mut resident) };
            let errno = io::Error::last_os_error().raw_os_error();
            assert!(
                rc == -1 && errno == Some(libc::ENOMEM),
                "{at:#x} still mapped after drop"
            );
        }
    }

    #[test]
    fn maps_a_shared_file_into_place() {
        let page = page_size();
        let file = tempfile_with(&[0xabu8; 8192]);
        let r = Reservation::new(4 * page as u64).unwrap();
        use std::os::fd::AsRawFd;
        r.map_shared(page, page, file.as_raw_fd(), page as u64, true)
            .unwrap();
        // SAFETY: the page at base + page was just mapped readable.
        let v = unsafe { std::ptr::read_volatile(r.base().add(page)) };
        assert_eq!(v, 0xab);
        assert!(r.map_shared(1, page, file.as_raw_fd(), 0, true).is_err());
        assert!(r
            .map_shared(3 * page, 2 * page, file.as_raw_fd(), 0, true)
            .is_err());
        let first_page = 0..page as u64;
        let overflowing = r.map_ranges(
            std::slice::from_ref(&first_page),
            file.as_raw_fd(),
            u64::MAX,
            true,
        );
        assert!(overflowing.is_err(), "file offset overflow is refused");
        assert!(Reservation::new(u64::MAX).is_err());
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("barmap-res-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(bytes).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
