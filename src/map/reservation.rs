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
/// on drop, into which device areas are placed with `MAP_FIXED`.
///
/// `MAP_FIXED` is not atomic: the kernel removes the pages it replaces before
/// the driver's mmap handler can fail. When a placement fails, the pages are
/// reserved again at once with `MAP_FIXED_NOREPLACE`; if another mapping took
/// them in between, they are recorded as `lost` and never unmapped by us.
#[derive(Debug)]
pub(crate) struct Reservation {
    base: NonNull<u8>,
    len: usize,
    /// Byte ranges (offsets in the range) that are no longer ours.
    lost: Vec<Range<usize>>,
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
        Ok(Reservation {
            base,
            len,
            lost: Vec::new(),
        })
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
        &mut self,
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
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // A trial mapping at an address of the kernel's choice first: whatever
        // makes the driver refuse (an fd that cannot be mapped, a bad offset)
        // fails here, before MAP_FIXED has removed any of our pages.
        // SAFETY: a new shared mapping at a free address touches no existing memory.
        let trial = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, offset) };
        if trial == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `trial..trial + len` is the mapping just made, used by nothing.
        unsafe { libc::munmap(trial, len) };
        // SAFETY: [base + at, base + at + len) lies inside the reservation this
        // value owns, so MAP_FIXED replaces only our own PROT_NONE pages.
        let raw = unsafe {
            libc::mmap(
                self.base.as_ptr().add(at).cast(),
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                offset,
            )
        };
        if raw == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            self.reserve_again(at, len);
            return Err(error);
        }
        Ok(())
    }

    /// Puts `PROT_NONE` pages back at `at..at + len` after a failed `MAP_FIXED`
    /// removed ours, without replacing anything another thread mapped there
    /// meanwhile; what cannot be had back is recorded as lost.
    fn reserve_again(&mut self, at: usize, len: usize) {
        // SAFETY: the address lies in our range; MAP_FIXED_NOREPLACE never
        // replaces an existing mapping, so nothing of anyone else is touched.
        let raw = unsafe {
            libc::mmap(
                self.base.as_ptr().add(at).cast(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        // SAFETY: `at` is inside the range, checked by the caller.
        let wanted = unsafe { self.base.as_ptr().add(at) }.cast::<libc::c_void>();
        if raw == wanted {
            return;
        }
        if raw != libc::MAP_FAILED {
            // A kernel without MAP_FIXED_NOREPLACE (before 4.17) took the
            // address as a hint and placed a fresh mapping elsewhere.
            // SAFETY: `raw..raw + len` is the mapping just made, ours alone.
            unsafe { libc::munmap(raw, len) };
        }
        // EEXIST: something is mapped there. A placement that failed before
        // the kernel removed anything (ENOMEM splitting the range, say) left
        // our own pages in place; only pages that are not ours any more are lost.
        if anonymous_prot_none(wanted as usize, len) {
            return;
        }
        log::warn!("pages {at:#x}+{len:#x} of a reservation were taken over while a mapping failed");
        self.lost.push(at..at + len);
    }
}

/// Whether `start..start + len` is covered, without a gap, by anonymous
/// private `PROT_NONE` mappings, as a reservation's own pages are (from
/// `/proc/self/maps`; false if it cannot be read).
fn anonymous_prot_none(start: usize, len: usize) -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let end = start + len;
    let mut covered = start;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) else {
            continue;
        };
        if hi <= covered || lo >= end {
            continue;
        }
        let ours_like = perms == "---p" && inode == "0" && fields.next().is_none();
        if lo > covered || !ours_like {
            return false;
        }
        covered = hi;
        if covered >= end {
            return true;
        }
    }
    false
}

impl Reservation {
    /// Maps each of `ranges` (page-aligned offsets in the range) from `fd` at
    /// `file_offset + range.start`, writable if `writable`; on failure, the
    /// range that failed and why.
    pub(crate) fn map_ranges(
        &mut self,
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
        self.lost.sort_by_key(|r| r.start);
        let mut start = 0;
        for piece in self
            .lost
            .iter()
            .map(|lost| lost.start..lost.end)
            .chain(std::iter::once(self.len..self.len))
        {
            if piece.start > start {
                // SAFETY: `start..piece.start` lies in the range, is not lost,
                // so it is ours; whoever handed out pointers into it (the
                // mapping layer) is gone before the reservation drops.
                unsafe { libc::munmap(self.base.as_ptr().add(start).cast(), piece.start - start) };
            }
            start = start.max(piece.end);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

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

    /// The protection of the page holding `addr`, as /proc/self/maps shows it.
    fn protection(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (lo, hi) = fields.next()?.split_once('-')?;
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            );
            (lo..hi)
                .contains(&addr)
                .then(|| fields.next().unwrap_or_default().to_string())
        })
    }

    #[test]
    fn a_failed_placement_leaves_the_pages_reserved() {
        let page = page_size();
        let mut r = Reservation::new(4 * page as u64).unwrap();
        let (read_end, _write_end) = pipe();
        // A pipe cannot be mmapped: the trial mapping finds out before any
        // page of ours is replaced.
        let err = r
            .map_shared(page, 2 * page, read_end.as_raw_fd(), 0, false)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
        for at in [page, 2 * page] {
            assert_eq!(
                protection(r.base() as usize + at).as_deref(),
                Some("---p"),
                "page at {at:#x}"
            );
        }
        assert!(r.lost.is_empty(), "nothing was taken over");
        let base = r.base() as usize;
        drop(r);
        assert!(!is_mapped(base + page));
    }

    #[test]
    fn a_hole_left_by_a_failed_placement_is_reserved_again() {
        let page = page_size();
        let mut r = Reservation::new(3 * page as u64).unwrap();
        let middle = r.base() as usize + page;
        // What a MAP_FIXED whose driver then fails leaves: a hole.
        // SAFETY: the middle page is ours.
        assert_eq!(unsafe { libc::munmap(middle as *mut libc::c_void, page) }, 0);
        assert!(!is_mapped(middle));
        r.reserve_again(page, page);
        assert_eq!(protection(middle).as_deref(), Some("---p"));
        assert!(r.lost.is_empty());
        drop(r);
        assert!(!is_mapped(middle));
    }

    #[test]
    fn pages_still_ours_after_a_failed_placement_are_not_lost() {
        let page = page_size();
        let mut r = Reservation::new(3 * page as u64).unwrap();
        // A placement that failed before the kernel touched our pages.
        r.reserve_again(page, page);
        assert!(r.lost.is_empty());
        assert!(anonymous_prot_none(r.base() as usize, 3 * page));
        let base = r.base() as usize;
        drop(r);
        assert!(!anonymous_prot_none(base, page), "unmapped on drop");
    }

    #[test]
    fn pages_taken_over_are_never_unmapped() {
        let page = page_size();
        let mut r = Reservation::new(3 * page as u64).unwrap();
        let middle = r.base() as usize + page;
        // Somebody else's mapping lands in the middle of the range, as it can
        // after a failed MAP_FIXED; the reservation records it as lost.
        // SAFETY: the middle page is ours to replace in this test.
        let theirs = unsafe {
            libc::mmap(
                middle as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(theirs as usize, middle);
        r.reserve_again(page, page);
        assert_eq!(r.lost, vec![page..2 * page]);
        let base = r.base() as usize;
        drop(r);
        assert!(!is_mapped(base));
        assert_eq!(
            protection(middle).as_deref(),
            Some("r--p"),
            "the other mapping survives"
        );
        // SAFETY: the page mapped above, still ours to unmap.
        unsafe { libc::munmap(theirs, page) };
    }

    fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just opened and are owned by nobody else.
        unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn maps_a_shared_file_into_place() {
        let page = page_size();
        let file = tempfile_with(&[0xabu8; 8192]);
        let mut r = Reservation::new(4 * page as u64).unwrap();
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
