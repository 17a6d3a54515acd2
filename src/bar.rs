//! A handle on one region: its directly mapped parts and the slow path for the rest.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::access::{load, store, Scalar};
use crate::error::{Error, Result};
use crate::map::{page_size, Reservation};
use crate::region::{FdRegion, RegionIndex, RegionInfo, RegionIo};
use crate::shadow::{direct_ranges, Access, AccessHook, AccessKind, BarShadow, LayoutError, Trap};
use crate::vfio::Device;

/// How a region is reached when it is opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapPolicy {
    /// Map every area the kernel lets us mmap; reach the rest with pread/pwrite.
    #[default]
    Direct,
    /// Map nothing: every access is a pread/pwrite on the device descriptor.
    Syscall,
    /// Like `Direct`, but also trap the pages covering these offset ranges:
    /// typed accesses there use pread/pwrite, and accesses through
    /// [`Bar::as_ptr`] fault and are served by the shadow region (and seen by
    /// the access hook). Ranges are widened to whole pages.
    Trap(Vec<Range<u64>>),
    /// Map nothing and trap every access made through [`Bar::as_ptr`] (like
    /// QEMU's `x-no-mmap`), e.g. to trace them all.
    TrapAll,
}

/// The directly mapped part of a region.
struct Mapping {
    reservation: Reservation,
    /// Mapped byte ranges, in region offsets, clipped to the region size.
    ranges: Vec<Range<u64>>,
    /// Whether `ranges` covers the whole region (the fast common case).
    whole: bool,
}

/// One region of an open [`Device`] (a BAR, the ROM or config space), with
/// typed, checked access.
///
/// Accesses inside a directly mapped area are one volatile load or store on the
/// device; everything else is one `pread`/`pwrite` of the same width on the VFIO
/// descriptor. Every access is checked for bounds, natural alignment and the
/// region's read/write flags first. The mapping is unmapped when the `Bar` is
/// dropped, and the `Bar` borrows its device, so it cannot outlive it.
///
/// ```no_run
/// use barmap::Device;
/// let edu = Device::open("0000:00:02.0".parse()?)?;
/// let bar0 = edu.bar(0)?;
/// bar0.write::<u32>(0x04, 0x1234_5678)?;
/// assert_eq!(bar0.read::<u32>(0x04)?, !0x1234_5678);
/// assert!(bar0.read::<u32>(0x10_0000).is_err()); // past the end
/// # Ok::<(), barmap::Error>(())
/// ```
pub struct Bar<'d> {
    device: &'d Device,
    info: RegionInfo,
    io: FdRegion,
    hook: Option<AccessHook>,
    // Declared before `mapping`: the shadow may cover the mapping's
    // reservation and must be unregistered before it is unmapped.
    shadow: OnceLock<BarShadow>,
    mapping: Option<Mapping>,
    fast: FastWindow,
}

/// What the inlined fast path of [`Bar::read`]/[`Bar::write`] needs, flattened:
/// a fully mapped region's base address and how far reads and writes may go
/// (0 when the region is not fully mapped, its size is not a multiple of 8, or
/// the direction is not allowed). Everything else takes the out-of-line slow
/// path, which does the full checks.
#[derive(Clone, Copy, Debug, Default)]
struct FastWindow {
    base: usize,
    read_end: u64,
    write_end: u64,
}

impl FastWindow {
    fn new(info: &RegionInfo, mapping: Option<&Mapping>) -> FastWindow {
        match mapping {
            Some(m) if m.whole && info.size.is_multiple_of(8) => FastWindow {
                base: m.reservation.base() as usize,
                read_end: if info.flags.readable() { info.size } else { 0 },
                write_end: if info.flags.writable() { info.size } else { 0 },
            },
            _ => FastWindow::default(),
        }
    }

    /// The address of `offset` if a naturally aligned `width`-byte access there
    /// stays below `end`. `end` is a multiple of 8 (or 0), so an aligned access
    /// of at most 8 bytes that starts below it also ends at or below it.
    #[inline(always)]
    fn at(&self, offset: u64, width: usize, end: u64) -> Option<*mut u8> {
        let fits = (offset < end) & (offset & (width as u64 - 1) == 0);
        fits.then(|| (self.base + offset as usize) as *mut u8)
    }
}

impl fmt::Debug for Bar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bar")
            .field("device", &self.device.address())
            .field("region", &self.info.index)
            .field("size", &self.info.size)
            .field("mapped", &self.mapped_ranges())
            .finish()
    }
}

impl Device {
    /// Opens BAR `n` with [`MapPolicy::Direct`]: every mmapable area mapped, the
    /// rest (or all of an I/O BAR) through pread/pwrite.
    pub fn bar(&self, n: u32) -> Result<Bar<'_>> {
        self.open_region(self.bar_index(n)?, MapPolicy::Direct)
    }

    /// The region index of BAR `n`, or [`Error::NoSuchRegion`] past BAR5.
    fn bar_index(&self, n: u32) -> Result<RegionIndex> {
        RegionIndex::bar(n).ok_or(Error::NoSuchRegion {
            addr: self.address(),
            region: RegionIndex(n),
            count: self.regions().len() as u32,
        })
    }

    /// Opens any region (BAR, `rom`, `config`) with the given policy.
    pub fn open_region(&self, index: RegionIndex, policy: MapPolicy) -> Result<Bar<'_>> {
        self.open_region_hooked(index, policy, None)
    }

    /// Opens BAR `n` with `policy` and a hook that sees every trapped access:
    /// those made through [`Bar::as_ptr`] to pages that are not mapped
    /// (called inside the fault handler: see [`AccessHook`] for what it may
    /// do), and typed accesses that take the pread/pwrite path.
    ///
    /// The shadow region is set up right away (x86-64 only).
    ///
    /// ```no_run
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use barmap::{Device, MapPolicy};
    /// let edu = Device::open("0000:00:02.0".parse()?)?;
    /// let trapped = Arc::new(AtomicUsize::new(0));
    /// let count = trapped.clone();
    /// let bar0 = edu.map_bar(0, MapPolicy::Trap(vec![0..0x1000]), move |_access: &barmap::shadow::Access| {
    ///     count.fetch_add(1, Ordering::Relaxed); // async-signal-safe
    /// })?;
    /// // SAFETY: offset 0 (the ID register) is inside BAR0 and 4-byte aligned.
    /// let id = unsafe { bar0.as_ptr()?.cast::<u32>().read_volatile() };
    /// assert_eq!(id, 0x0100_00ed);
    /// assert_eq!(trapped.load(Ordering::Relaxed), 1);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn map_bar(
        &self,
        n: u32,
        policy: MapPolicy,
        hook: impl Fn(&Access) + Send + Sync + 'static,
    ) -> Result<Bar<'_>> {
        self.open_region_hooked(self.bar_index(n)?, policy, Some(Arc::new(hook)))
    }

    fn open_region_hooked(
        &self,
        index: RegionIndex,
        policy: MapPolicy,
        hook: Option<AccessHook>,
    ) -> Result<Bar<'_>> {
        let info = self.region_info(index)?.clone();
        let io = self.region_io(&info);
        let trap = match &policy {
            MapPolicy::Direct => Some(Trap::Holes),
            MapPolicy::Syscall => None,
            MapPolicy::Trap(ranges) => Some(Trap::Ranges(ranges.clone())),
            MapPolicy::TrapAll => Some(Trap::All),
        };
        let mapping = match &trap {
            Some(trap) => map_areas(self, &info, trap)?,
            None => None,
        };
        let fast = FastWindow::new(&info, mapping.as_ref());
        let bar = Bar {
            device: self,
            info,
            io,
            hook,
            shadow: OnceLock::new(),
            mapping,
            fast,
        };
        if bar.hook.is_some() || matches!(policy, MapPolicy::Trap(_) | MapPolicy::TrapAll) {
            bar.shadow()?;
        }
        Ok(bar)
    }
}

/// Maps every mmapable area of `info` that `trap` leaves untrapped; `None` if
/// that is nothing.
fn map_areas(device: &Device, info: &RegionInfo, trap: &Trap) -> Result<Option<Mapping>> {
    let areas = info.mmap_areas();
    let page = page_size() as u64;
    // Only whole pages can be mapped: an unaligned area shrinks to the pages
    // inside it (the rest stays on the slow path), except that an area ending
    // at the region's end may map the region's last, partial page.
    let ranges = direct_ranges(info.size, page, &areas, trap).map_err(|e| match e {
        LayoutError::AreaOutside(_) => Error::NotMmapable {
            addr: device.address(),
            region: info.index,
            reason: "a sparse-mmap area lies outside the region",
        },
        LayoutError::TrapOutside(r) => Error::OutOfRange {
            addr: device.address(),
            region: info.index,
            offset: r.start,
            width: r.end.saturating_sub(r.start),
            size: info.size,
        },
    })?;
    if ranges.is_empty() {
        return Ok(None);
    }
    let mmap_error = |offset: u64, len: u64| {
        move |source| Error::Mmap {
            addr: device.address(),
            region: info.index,
            offset,
            len,
            source,
        }
    };
    let reservation = Reservation::new(info.size).map_err(mmap_error(0, info.size))?;
    reservation
        .map_ranges(&ranges, device.raw_fd(), info.offset, info.flags.writable())
        .map_err(|(range, source)| mmap_error(range.start, range.end - range.start)(source))?;
    let ranges: Vec<Range<u64>> = ranges
        .into_iter()
        .map(|r| r.start..r.end.min(info.size))
        .collect();
    let whole = ranges.len() == 1 && ranges[0] == (0..info.size);
    Ok(Some(Mapping {
        reservation,
        ranges,
        whole,
    }))
}

impl Bar<'_> {
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

    /// The device this region belongs to.
    pub fn device(&self) -> &Device {
        self.device
    }

    /// The directly mapped byte ranges, in region offsets (empty if nothing is mapped).
    pub fn mapped_ranges(&self) -> Vec<Range<u64>> {
        self.mapping
            .as_ref()
            .map(|m| m.ranges.clone())
            .unwrap_or_default()
    }

    /// Whether the whole region is directly mapped.
    pub fn is_fully_mapped(&self) -> bool {
        self.mapping.as_ref().is_some_and(|m| m.whole)
    }

    /// The virtual address of the region's mapping, if any part is mapped: for
    /// diagnostics, such as finding it in `/proc/self/maps`.
    pub fn mapping_address(&self) -> Option<usize> {
        self.mapping.as_ref().map(|m| m.reservation.base() as usize)
    }

    /// One pointer over the whole region, `size()` bytes long.
    ///
    /// Directly mapped pages reach the device with plain loads and stores. If
    /// any part is not mapped (sparse BAR, I/O BAR, trapped pages,
    /// [`MapPolicy::Syscall`]), the range is a shadow region (see
    /// [`crate::shadow`]): those pages fault, and barmap performs each access
    /// on the device with pread/pwrite of the same width. Use volatile
    /// accesses of 1, 2, 4 or 8 bytes (`read_volatile`/`write_volatile` of
    /// `u8`..`u64`); other instructions on a trapped page end the process
    /// with a diagnostic. The pointer is valid while the `Bar` lives.
    ///
    /// A fully mapped region works everywhere; a shadow region needs x86-64
    /// ([`Error::Unsupported`] elsewhere). The first call on a region with
    /// unmapped parts installs barmap's SIGSEGV handler.
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

    /// [`Bar::as_ptr`] for stores.
    pub fn as_mut_ptr(&self) -> Result<*mut u8> {
        match &self.mapping {
            Some(m) if m.whole => Ok(m.reservation.base()),
            _ => self.shadow().map(BarShadow::base),
        }
    }

    /// Emits the trapped accesses recorded since the last call as
    /// `log::trace!` lines (when barmap's `trace` level was enabled as the
    /// shadow region was set up) and returns how many.
    pub fn flush_trace(&self) -> usize {
        self.shadow.get().map_or(0, BarShadow::flush_trace)
    }

    /// The shadow part, set up on first use.
    fn shadow(&self) -> Result<&BarShadow> {
        if let Some(shadow) = self.shadow.get() {
            return Ok(shadow);
        }
        let shadow = BarShadow::new(
            self.device.address(),
            self.info.index,
            self.mapping.as_ref().map(|m| &m.reservation),
            Box::new(self.io),
            self.hook.clone(),
        )?;
        // A racing thread may have set one up first: then ours is dropped
        // (unregistered) and theirs is used.
        Ok(self.shadow.get_or_init(|| shadow))
    }

    /// Tells the shadow part (if any) about a typed access that took the slow path.
    fn record(&self, offset: u64, width: usize, value: u64, kind: AccessKind) {
        if let Some(shadow) = self.shadow.get() {
            shadow.record(&Access {
                offset,
                width: width as u8,
                value,
                kind,
            });
        }
    }

    /// Reads one `T` at `offset`.
    ///
    /// On a fully mapped region this is a bounds and alignment check and one
    /// volatile load, inlined; anything else (holes, syscall path, errors) goes
    /// out of line.
    #[inline]
    pub fn read<T: Scalar>(&self, offset: u64) -> Result<T> {
        match self.fast.at(offset, T::WIDTH, self.fast.read_end) {
            // SAFETY: the fast window covers only a whole, live MAP_SHARED mapping
            // owned by self, and `at` checked bounds and natural alignment.
            Some(ptr) => Ok(unsafe { load::<T>(ptr) }),
            None => self.read_slow(offset),
        }
    }

    /// Writes one `T` at `offset`: on a fully mapped region, one volatile store.
    #[inline]
    pub fn write<T: Scalar>(&self, offset: u64, value: T) -> Result<()> {
        match self.fast.at(offset, T::WIDTH, self.fast.write_end) {
            Some(ptr) => {
                // SAFETY: as in `read`.
                unsafe { store::<T>(ptr, value) };
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
            return Ok(unsafe { load::<T>(ptr) });
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
            unsafe { store::<T>(ptr, value) };
            return Ok(());
        }
        let word = value.to_le_word();
        self.io
            .write_at(offset, &word[..T::WIDTH])
            .map_err(|e| self.io_error(offset, T::WIDTH, e))?;
        self.record(offset, T::WIDTH, value.to_u64(), AccessKind::Write);
        Ok(())
    }

    /// Reads one access of `width` bytes (1, 2, 4 or 8) at `offset`, zero-extended:
    /// the runtime-width form of [`Bar::read`], for tools that take the width as input.
    pub fn read_width(&self, offset: u64, width: usize) -> Result<u64> {
        match width {
            1 => self.read::<u8>(offset).map(u64::from),
            2 => self.read::<u16>(offset).map(u64::from),
            4 => self.read::<u32>(offset).map(u64::from),
            8 => self.read::<u64>(offset),
            _ => Err(Error::UnsupportedWidth { width }),
        }
    }

    /// Writes the low `width` bytes (1, 2, 4 or 8) of `value` at `offset` as one
    /// access; a value that does not fit in `width` bytes is refused.
    pub fn write_width(&self, offset: u64, width: usize, value: u64) -> Result<()> {
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(Error::UnsupportedWidth { width });
        }
        if width < 8 && value >> (8 * width) != 0 {
            return Err(Error::ValueTooWide { value, width });
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

    /// Checks one access of `width` bytes at `offset` exactly as [`Bar::read`]
    /// and [`Bar::write`] do (width 1, 2, 4 or 8, inside the region, naturally
    /// aligned, allowed by the region's flags), for callers that then make the
    /// access themselves through [`Bar::as_ptr`].
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
            return Err(Error::UnsupportedWidth { width });
        }
        self.check(offset, width, kind)
    }

    /// Bounds, alignment and permission checks of one access.
    #[inline(always)]
    fn check(&self, offset: u64, width: usize, kind: AccessKind) -> Result<()> {
        self.check_range(offset, width as u64, kind)?;
        if !offset.is_multiple_of(width as u64) {
            return Err(Error::Misaligned {
                addr: self.device.address(),
                region: self.info.index,
                offset,
                width,
            });
        }
        Ok(())
    }

    #[inline(always)]
    fn check_range(&self, offset: u64, len: u64, kind: AccessKind) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.info.size) {
            return Err(Error::OutOfRange {
                addr: self.device.address(),
                region: self.info.index,
                offset,
                width: len,
                size: self.info.size,
            });
        }
        let (addr, region) = (self.device.address(), self.info.index);
        match kind {
            AccessKind::Read if !self.info.flags.readable() => Err(Error::NotReadable { addr, region }),
            AccessKind::Write if !self.info.flags.writable() => Err(Error::ReadOnly { addr, region }),
            _ => Ok(()),
        }
    }

    /// A pointer to `offset` if `offset..offset + width` is directly mapped.
    #[inline(always)]
    fn mapped_ptr(&self, offset: u64, width: usize) -> Option<*mut u8> {
        let mapping = self.mapping.as_ref()?;
        let end = offset + width as u64;
        let inside = mapping.whole || mapping.ranges.iter().any(|r| r.start <= offset && end <= r.end);
        // SAFETY (of the add): offset + width <= size <= reservation length, checked by the caller.
        inside.then(|| unsafe { mapping.reservation.base().add(offset as usize) })
    }

    fn io_error(&self, offset: u64, len: usize, source: std::io::Error) -> Error {
        Error::Io {
            addr: self.device.address(),
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
