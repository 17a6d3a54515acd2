//! The owning handle on one open region and its typed, checked accesses.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use super::scalar::{load, store, Scalar};
use crate::error::{Error, Result};
use crate::map::Mapping;
use crate::pci::PciAddress;
use crate::region::{FdRegion, RegionIndex, RegionInfo, RegionIo};
use crate::shadow::{Access, AccessKind};
use crate::vfio::Device;

/// One open region of a device (a BAR, the ROM or config space), with typed,
/// checked access, owning everything it needs.
///
/// Accesses inside a directly mapped page are one volatile load or store on
/// the device; everything else is one `pread`/`pwrite` of the same width
/// through the region's [`RegionIo`] (the VFIO descriptor, for a device's
/// regions). Every access is checked for bounds, natural alignment and the
/// region's read/write flags first.
///
/// A `Region` owns its mapping (unmapped when it drops) and keeps its
/// [`Device`] open, so a driver struct or a VMM's device model can hold a
/// device and its regions together for as long as it likes; the VFIO device
/// closes when its last handle is gone.
///
/// ```no_run
/// use barmap::{Device, Region};
///
/// struct Edu {
///     device: Device,
///     regs: Region,
/// }
///
/// let device = Device::open("0000:00:02.0".parse()?)?;
/// let edu = Edu { regs: device.bar(0)?, device };
/// edu.regs.write::<u32>(0x04, 0x1234_5678)?;
/// assert_eq!(edu.regs.read::<u32>(0x04)?, !0x1234_5678);
/// assert!(edu.regs.read::<u32>(0x10_0000).is_err()); // past the end
/// # let _ = edu.device;
/// # Ok::<(), barmap::Error>(())
/// ```
pub struct Region {
    fast: FastWindow,
    /// Whether slow-path accesses are reported (a hook or the trace is on).
    observed: bool,
    info: RegionInfo,
    addr: PciAddress,
    io: SlowPath,
    pub(super) mapping: Mapping,
    /// Keeps a device's descriptor and container open; dropped last.
    _device: Option<Device>,
}

/// A region's slow path: a VFIO device's descriptor, called directly (the
/// common case, without an indirect call), or any [`RegionIo`].
pub(crate) enum SlowPath {
    Fd(FdRegion),
    Any(Arc<dyn RegionIo>),
}

impl SlowPath {
    /// The slow path as the fault handler's table holds it.
    pub(crate) fn shared(&self) -> Arc<dyn RegionIo> {
        match self {
            SlowPath::Fd(io) => Arc::new(io.clone()),
            SlowPath::Any(io) => io.clone(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        match self {
            SlowPath::Fd(io) => io.size(),
            SlowPath::Any(io) => io.size(),
        }
    }

    #[inline]
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            SlowPath::Fd(io) => io.read_at(offset, buf),
            SlowPath::Any(io) => io.read_at(offset, buf),
        }
    }

    #[inline]
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match self {
            SlowPath::Fd(io) => io.write_at(offset, data),
            SlowPath::Any(io) => io.write_at(offset, data),
        }
    }
}

/// What the inlined fast path of [`Region::read`]/[`Region::write`] needs,
/// flattened: a fully mapped region's base address and how far reads and
/// writes may go (0 when the region is not fully mapped, its size is not a
/// multiple of 8, or the direction is not allowed). Everything else takes the
/// out-of-line slow path, which does the full checks.
#[derive(Clone, Copy, Debug, Default)]
struct FastWindow {
    base: usize,
    read_end: u64,
    write_end: u64,
}

impl FastWindow {
    fn new(info: &RegionInfo, mapping: &Mapping) -> FastWindow {
        if !mapping.is_whole() || !info.size.is_multiple_of(8) {
            return FastWindow::default();
        }
        FastWindow {
            base: mapping.base() as usize,
            read_end: if info.flags.readable() { info.size } else { 0 },
            write_end: if info.flags.writable() { info.size } else { 0 },
        }
    }

    /// `offset` as an index from the base if a naturally aligned
    /// `width`-byte access there stays below `end`. `end` is a multiple of 8
    /// (or 0), so an aligned access of at most 8 bytes that starts below it
    /// also ends at or below it.
    #[inline(always)]
    fn at(&self, offset: u64, width: usize, end: u64) -> Option<usize> {
        let fits = (offset < end) & (offset & (width as u64 - 1) == 0);
        fits.then_some(offset as usize)
    }

    fn base(&self) -> *mut u8 {
        self.base as *mut u8
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("device", &self.addr)
            .field("region", &self.info.index)
            .field("size", &self.info.size)
            .field("mapped", &self.mapped_ranges())
            .finish()
    }
}

impl Region {
    /// Assembles a region from its parts; see [`crate::RegionBuilder`].
    pub(crate) fn from_parts(
        addr: PciAddress,
        info: RegionInfo,
        io: SlowPath,
        mapping: Mapping,
        device: Option<Device>,
    ) -> Region {
        Region {
            fast: FastWindow::new(&info, &mapping),
            observed: mapping.is_observed(),
            info,
            addr,
            io,
            mapping,
            _device: device,
        }
    }

    /// Which region this is.
    pub fn index(&self) -> RegionIndex {
        self.info.index
    }

    /// The region's info.
    pub fn info(&self) -> &RegionInfo {
        &self.info
    }

    /// The region's size in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// The PCI address of the device the region belongs to.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// The device the region belongs to, for a region opened from a
    /// [`Device`] (`None` for one built over any [`RegionIo`]).
    pub fn device(&self) -> Option<&Device> {
        self._device.as_ref()
    }

    /// The directly mapped byte ranges, in region offsets, sorted (empty if
    /// nothing is mapped).
    pub fn mapped_ranges(&self) -> &[Range<u64>] {
        self.mapping.mapped()
    }

    /// Whether the whole region is directly mapped.
    pub fn is_fully_mapped(&self) -> bool {
        self.mapping.is_whole()
    }

    /// Whether `offset` lies in the region on a page that is not mapped:
    /// accesses there through [`Region::as_ptr`] fault and are served by the
    /// fault handler.
    pub fn is_trapped(&self, offset: u64) -> bool {
        offset < self.info.size && !self.mapped_ranges().iter().any(|r| r.contains(&offset))
    }

    /// The virtual address of the region's range, for diagnostics such as
    /// finding it in `/proc/self/maps`.
    pub fn mapping_address(&self) -> usize {
        self.mapping.base() as usize
    }

    /// One pointer over the whole region, `size()` bytes long.
    ///
    /// Directly mapped pages reach the device with plain loads and stores.
    /// The other pages (sparse BAR, I/O BAR, trapped pages,
    /// [`crate::MapPolicy::TrapAll`]) fault, and barmap's fault handler (see
    /// [`crate::shadow`]) performs each access on the device with
    /// `pread`/`pwrite` of the same width. Use volatile accesses of 1, 2, 4 or
    /// 8 bytes (`read_volatile`/`write_volatile` of `u8`..`u64`); other
    /// instructions on a trapped page end the process with a diagnostic. The
    /// pointer is valid while the `Region` lives.
    ///
    /// A fully mapped region works everywhere; unmapped pages need x86-64
    /// ([`Error::Unsupported`] elsewhere).
    ///
    /// ```no_run
    /// use barmap::Device;
    /// let testdev = Device::open("0000:00:03.0".parse()?)?;
    /// let io = testdev.bar(1)?; // I/O BAR: nothing mapped
    /// let p = io.as_mut_ptr()?;
    /// // SAFETY: offsets 0 and 4 are inside the 256-byte BAR, naturally aligned.
    /// unsafe { p.write_volatile(0) }; // select test 0
    /// let offset = unsafe { p.add(4).cast::<u32>().read_volatile() };
    /// assert_eq!(offset, 0x83);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn as_ptr(&self) -> Result<*const u8> {
        self.as_mut_ptr().map(|p| p.cast_const())
    }

    /// [`Region::as_ptr`] for stores.
    pub fn as_mut_ptr(&self) -> Result<*mut u8> {
        self.mapping.pointer()
    }

    /// Emits the trapped accesses recorded since the last call as
    /// `log::trace!` lines and returns how many. Recording is on when
    /// barmap's `trace` level was enabled as the region was opened; the last
    /// records are flushed when it drops.
    pub fn flush_trace(&self) -> usize {
        self.mapping.flush_trace()
    }

    /// Reads one `T` at `offset`.
    ///
    /// On a fully mapped region this is a bounds and alignment check and one
    /// volatile load, inlined; anything else (holes, slow path, errors) goes
    /// out of line.
    ///
    /// While vfio-pci has revoked the mapping (memory decoding off, a reset
    /// in progress), the load faults and is served by the fault handler with
    /// `pread`, which waits out a reset; if the device refuses it, the load
    /// reads all-ones and `read` returns [`Error::Refused`]. On a page that is
    /// not mapped, the read is a `pread`, and a refusal is [`Error::Io`]
    /// (`EIO`).
    #[inline]
    pub fn read<T: Scalar>(&self, offset: u64) -> Result<T> {
        match self.fast.at(offset, T::WIDTH, self.fast.read_end) {
            Some(at) => {
                // SAFETY: the fast window covers only a whole, live MAP_SHARED mapping
                // owned by self, and `at` checked bounds and natural alignment.
                let value = unsafe { load::<T>(self.fast.base(), at) };
                if value == T::ALL_ONES {
                    return self.check_refused(value);
                }
                Ok(value)
            }
            None => self.read_slow(offset),
        }
    }

    /// `value` (all-ones), or [`Error::Refused`] if the device refused
    /// accesses since the record was last taken.
    #[cold]
    #[inline(never)]
    fn check_refused<T: Scalar>(&self, value: T) -> Result<T> {
        match self.take_error() {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }

    /// Takes the record of accesses the device refused since the last call
    /// (or since a typed read reported them): [`Error::Refused`] with how
    /// many, or `None`.
    ///
    /// vfio-pci revokes a device's BAR mappings while its memory decoding is
    /// off and during resets. barmap's fault handler then serves accesses
    /// through the region's mapping or pointer with `pread`/`pwrite`; when the
    /// device refuses one (`EIO`), it completes it as PCIe completes an
    /// unsupported request (reads return all-ones, writes are dropped) and
    /// records it here. A typed read that returns all-ones reports the
    /// record itself; a dropped write is reported by the next such read or
    /// by this call. The record is one per region: with several threads
    /// accessing one region, the refusals of one may be reported to another.
    pub fn take_error(&self) -> Option<Error> {
        let (count, errno) = self.mapping.take_refused()?;
        Some(Error::Refused {
            addr: self.addr,
            region: self.info.index,
            count,
            source: std::io::Error::from_raw_os_error(errno),
        })
    }

    /// Writes one `T` at `offset`: on a fully mapped region, one volatile store.
    #[inline]
    pub fn write<T: Scalar>(&self, offset: u64, value: T) -> Result<()> {
        match self.fast.at(offset, T::WIDTH, self.fast.write_end) {
            Some(at) => {
                // SAFETY: as in `read`.
                unsafe { store::<T>(self.fast.base(), at, value) };
                Ok(())
            }
            None => self.write_slow(offset, value),
        }
    }

    #[cold]
    #[inline(never)]
    fn read_slow<T: Scalar>(&self, offset: u64) -> Result<T> {
        self.check(offset, T::WIDTH, AccessKind::Read)?;
        if let Some(ptr) = self.mapped_ptr(offset, T::WIDTH) {
            // SAFETY: `mapped_ptr` returns a pointer only for an in-bounds range of a
            // live MAP_SHARED mapping owned by self; `check` ensured natural alignment.
            let value = unsafe { load::<T>(ptr, 0) };
            if value == T::ALL_ONES {
                return self.check_refused(value);
            }
            return Ok(value);
        }
        let mut word = [0u8; 8];
        self.io
            .read_at(offset, &mut word[..T::WIDTH])
            .map_err(|e| self.io_error(offset, T::WIDTH, e))?;
        let value = T::from_le_word(word);
        self.record(offset, T::WIDTH, value.to_u64(), AccessKind::Read);
        Ok(value)
    }

    #[cold]
    #[inline(never)]
    fn write_slow<T: Scalar>(&self, offset: u64, value: T) -> Result<()> {
        self.check(offset, T::WIDTH, AccessKind::Write)?;
        if let Some(ptr) = self.mapped_ptr(offset, T::WIDTH) {
            // SAFETY: as in `read_slow`.
            unsafe { store::<T>(ptr, 0, value) };
            return Ok(());
        }
        let word = value.to_le_word();
        self.io
            .write_at(offset, &word[..T::WIDTH])
            .map_err(|e| self.io_error(offset, T::WIDTH, e))?;
        self.record(offset, T::WIDTH, value.to_u64(), AccessKind::Write);
        Ok(())
    }

    /// Tells the hook and the trace about a typed access that took the slow path.
    #[inline(always)]
    fn record(&self, offset: u64, width: usize, value: u64, kind: AccessKind) {
        if !self.observed {
            return;
        }
        self.mapping.record(&Access {
            offset,
            width,
            value,
            kind,
        });
    }

    /// Reads one access of `width` bytes (1, 2, 4 or 8) at `offset`, zero-extended:
    /// the runtime-width form of [`Region::read`], for tools that take the width as input.
    pub fn read_width(&self, offset: u64, width: usize) -> Result<u64> {
        match width {
            1 => self.read::<u8>(offset).map(u64::from),
            2 => self.read::<u16>(offset).map(u64::from),
            4 => self.read::<u32>(offset).map(u64::from),
            8 => self.read::<u64>(offset),
            _ => Err(self.unsupported_width(width)),
        }
    }

    /// Writes the low `width` bytes (1, 2, 4 or 8) of `value` at `offset` as one
    /// access; a value that does not fit in `width` bytes is refused.
    pub fn write_width(&self, offset: u64, width: usize, value: u64) -> Result<()> {
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(self.unsupported_width(width));
        }
        if width < 8 && value >> (8 * width) != 0 {
            return Err(Error::ValueTooWide {
                addr: self.addr,
                region: self.info.index,
                value,
                width,
            });
        }
        match width {
            1 => self.write::<u8>(offset, value as u8),
            2 => self.write::<u16>(offset, value as u16),
            4 => self.write::<u32>(offset, value as u32),
            _ => self.write::<u64>(offset, value),
        }
    }

    /// Reads `buf.len()` bytes from `offset`, as a run of naturally aligned
    /// 4-, 2- and 1-byte accesses (never a wider or unaligned one, and never a
    /// `memcpy`, which could use any width on the bus).
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64, AccessKind::Read)?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let width = chunk_width(at, buf.len() - pos);
            let word = match width {
                4 => self.read::<u32>(at)?.to_le_word(),
                2 => self.read::<u16>(at)?.to_le_word(),
                _ => self.read::<u8>(at)?.to_le_word(),
            };
            buf[pos..pos + width].copy_from_slice(&word[..width]);
            pos += width;
        }
        Ok(())
    }

    /// Writes `data` at `offset`, as a run of naturally aligned 4-, 2- and
    /// 1-byte accesses.
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64, AccessKind::Write)?;
        let mut pos = 0usize;
        while pos < data.len() {
            let at = offset + pos as u64;
            let width = chunk_width(at, data.len() - pos);
            let mut word = [0u8; 8];
            word[..width].copy_from_slice(&data[pos..pos + width]);
            match width {
                4 => self.write::<u32>(at, u32::from_le_word(word))?,
                2 => self.write::<u16>(at, u16::from_le_word(word))?,
                _ => self.write::<u8>(at, u8::from_le_word(word))?,
            }
            pos += width;
        }
        Ok(())
    }

    /// Checks one access of `width` bytes at `offset` exactly as
    /// [`Region::read`] and [`Region::write`] do (width 1, 2, 4 or 8, inside
    /// the region, naturally aligned, allowed by the region's flags), for
    /// callers that then make the access themselves through [`Region::as_ptr`].
    ///
    /// ```no_run
    /// use barmap::shadow::AccessKind;
    /// let testdev = barmap::Device::open("0000:00:03.0".parse()?)?;
    /// let io = testdev.bar(1)?;
    /// io.check_access(4, 4, AccessKind::Read)?;
    /// // SAFETY: just checked: inside the BAR and 4-byte aligned.
    /// let offset = unsafe { io.as_ptr()?.add(4).cast::<u32>().read_volatile() };
    /// # let _ = offset;
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn check_access(&self, offset: u64, width: usize, kind: AccessKind) -> Result<()> {
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(self.unsupported_width(width));
        }
        self.check(offset, width, kind)
    }

    /// Bounds, alignment and permission checks of one access.
    #[inline(always)]
    fn check(&self, offset: u64, width: usize, kind: AccessKind) -> Result<()> {
        self.check_range(offset, width as u64, kind)?;
        if !offset.is_multiple_of(width as u64) {
            return Err(Error::Misaligned {
                addr: self.addr,
                region: self.info.index,
                offset,
                width,
            });
        }
        Ok(())
    }

    #[inline(always)]
    pub(super) fn check_range(&self, offset: u64, len: u64, kind: AccessKind) -> Result<()> {
        let (addr, region) = (self.addr, self.info.index);
        if offset.checked_add(len).is_none_or(|end| end > self.info.size) {
            return Err(Error::OutOfRange {
                addr,
                region,
                offset,
                len,
                size: self.info.size,
            });
        }
        match kind {
            AccessKind::Read if !self.info.flags.readable() => Err(Error::NotReadable { addr, region }),
            AccessKind::Write if !self.info.flags.writable() => Err(Error::ReadOnly { addr, region }),
            _ => Ok(()),
        }
    }

    /// A pointer to `offset` if `offset..offset + width` is directly mapped.
    #[inline(always)]
    fn mapped_ptr(&self, offset: u64, width: usize) -> Option<*mut u8> {
        let end = offset + width as u64;
        let inside = self.mapping.is_whole()
            || self
                .mapping
                .mapped()
                .iter()
                .any(|r| r.start <= offset && end <= r.end);
        // SAFETY: offset + width <= size <= the reservation's length, checked by
        // the caller, so the result stays inside the reservation.
        inside.then(|| unsafe { self.mapping.base().add(offset as usize) })
    }

    fn unsupported_width(&self, width: usize) -> Error {
        Error::UnsupportedWidth {
            addr: self.addr,
            region: self.info.index,
            width,
        }
    }

    fn io_error(&self, offset: u64, len: usize, source: std::io::Error) -> Error {
        Error::Io {
            addr: self.addr,
            region: self.info.index,
            offset,
            len: len as u64,
            source,
        }
    }
}

/// The widest naturally aligned access of at most 4 bytes that fits at `at` with `left` bytes to go.
fn chunk_width(at: u64, left: usize) -> usize {
    [4usize, 2, 1]
        .into_iter()
        .find(|w| at.is_multiple_of(*w as u64) && left >= *w)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::chunk_width;

    #[test]
    fn chunks_are_aligned_and_at_most_four_bytes() {
        assert_eq!(chunk_width(0, 16), 4);
        assert_eq!(chunk_width(0, 3), 2);
        assert_eq!(chunk_width(2, 16), 2);
        assert_eq!(chunk_width(1, 16), 1);
        assert_eq!(chunk_width(4, 1), 1);
    }
}
