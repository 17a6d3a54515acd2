//! The slow path: reading and writing a region through a file descriptor.

use std::io;
use std::os::fd::RawFd;

/// Byte-addressed I/O on one region: the slow path behind every access that
/// does not go through a direct mapping.
///
/// Each call is one device access of exactly `buf.len()` bytes (1, 2, 4 or 8
/// for register accesses; longer for bulk copies) at `offset` from the start
/// of the region. It is implemented by [`FdRegion`] for VFIO devices and by
/// test devices that record every access, and it is what the shadow region's
/// fault handler calls, so implementations must be **async-signal-safe**: no
/// allocation, no locks that a signalled thread may hold, no `log` calls.
/// `io::Error::from_raw_os_error` and `io::Error::from(ErrorKind)` do not
/// allocate and are the errors to return.
pub trait RegionIo: Send + Sync {
    /// Size of the region in bytes.
    fn size(&self) -> u64;

    /// Reads exactly `buf.len()` bytes at `offset` in the region.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes all of `data` at `offset` in the region.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// A region reached through `pread`/`pwrite` on a VFIO device file descriptor.
///
/// It holds the descriptor as a raw number, so building one is `unsafe`: the
/// builder promises the descriptor stays open for as long as the `FdRegion`
/// is used. [`crate::Device`] builds them for its regions, and a
/// [`crate::Bar`] keeps that promise by borrowing its device.
#[derive(Clone, Copy, Debug)]
pub struct FdRegion {
    fd: RawFd,
    file_offset: u64,
    size: u64,
}

impl FdRegion {
    /// A region of `size` bytes at `file_offset` in `fd`.
    ///
    /// # Safety
    ///
    /// `fd` must stay open, and keep naming the same open file, for as long as
    /// this value or any copy of it is used: every read and write goes to
    /// whatever file `fd` names at that moment.
    pub unsafe fn new(fd: RawFd, file_offset: u64, size: u64) -> Self {
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

impl RegionIo for FdRegion {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let pos = self.position(offset, buf.len())?;
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the
        // duration of the call; pread writes at most that many bytes into it.
        let n = unsafe { libc::pread(self.fd, buf.as_mut_ptr().cast(), buf.len(), pos) };
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
        let n = unsafe { libc::pwrite(self.fd, data.as_ptr().cast(), data.len(), pos) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != data.len() => Err(io::Error::from(io::ErrorKind::WriteZero)),
            _ => Ok(()),
        }
    }
}
