//! The slow path: reading and writing a region through a file descriptor.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Byte-addressed I/O on one region: the slow path behind every access that
/// does not go through a direct mapping.
///
/// Each call is one device access of exactly `buf.len()` bytes (1, 2, 4 or 8
/// for register accesses; longer for bulk copies) at `offset` from the start
/// of the region. It is implemented by [`FdRegion`] for VFIO devices and by
/// test devices that record every access.
///
/// # Safety
///
/// The fault handler of a [`crate::Region`] calls `read_at` and `write_at`
/// inside a signal handler, on whatever thread touched a trapped page, while
/// that thread may hold any lock. Implementations must therefore be
/// **async-signal-safe**: no allocation, no locks, no `log` calls, nothing
/// that may block on another thread. `io::Error::from_raw_os_error` and
/// `io::Error::from(ErrorKind)` do not allocate and are the errors to return.
/// Implementing the trait is the promise that this holds.
pub unsafe trait RegionIo: Send + Sync {
    /// Size of the region in bytes. A region built over this I/O reads it
    /// once, when it is built.
    fn size(&self) -> u64;

    /// Reads exactly `buf.len()` bytes at `offset` in the region.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes all of `data` at `offset` in the region.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// A region reached through `pread`/`pwrite` on a file descriptor (a VFIO
/// device's, for [`crate::Device`]'s regions).
///
/// It shares ownership of the descriptor, so the descriptor stays open for as
/// long as any `FdRegion` over it lives, even inside the fault handler's table
/// after the handle that made it was forgotten.
///
/// ```
/// use std::sync::Arc;
/// use barmap::region::{FdRegion, RegionIo};
/// let file = tempfile::tempfile()?;
/// file.set_len(16)?;
/// let region = FdRegion::new(Arc::new(file.into()), 0, 16);
/// region.write_at(4, &7u32.to_le_bytes())?;
/// let mut word = [0u8; 4];
/// region.read_at(4, &mut word)?;
/// assert_eq!(u32::from_le_bytes(word), 7);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct FdRegion {
    fd: Arc<OwnedFd>,
    file_offset: u64,
    size: u64,
}

impl FdRegion {
    /// A region of `size` bytes at `file_offset` in `fd`.
    pub fn new(fd: Arc<OwnedFd>, file_offset: u64, size: u64) -> Self {
        FdRegion {
            fd,
            file_offset,
            size,
        }
    }

    fn position(&self, offset: u64, len: usize) -> io::Result<libc::off_t> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > self.size) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        self.file_offset
            .checked_add(offset)
            .and_then(|pos| libc::off_t::try_from(pos).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
    }
}

// SAFETY: pread and pwrite are async-signal-safe, and so is `position` (plain
// arithmetic); the errors are made from raw OS codes or kinds, without allocation.
unsafe impl RegionIo for FdRegion {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let pos = self.position(offset, buf.len())?;
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the
        // duration of the call; pread writes at most that many bytes into it.
        let n = unsafe { libc::pread(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), pos) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != buf.len() => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => Ok(()),
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let pos = self.position(offset, data.len())?;
        // SAFETY: `data` is a valid buffer of `data.len()` readable bytes for the
        // duration of the call; pwrite only reads from it.
        let n = unsafe { libc::pwrite(self.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), pos) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != data.len() => Err(io::Error::from(io::ErrorKind::WriteZero)),
            _ => Ok(()),
        }
    }
}
