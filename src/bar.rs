//! A handle on one region: its directly mapped parts and the slow path for the rest.

use std::fmt;
use std::ops::Range;

use crate::access::{load, store, Scalar};
use crate::error::{Error, Result};
use crate::map::{page_size, Reservation};
use crate::region::{FdRegion, RegionIndex, RegionInfo, RegionIo};
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
/// let edu = Device::open("0000:00:03.0".parse()?)?;
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
    mapping: Option<Mapping>,
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

impl Device {
    /// Opens BAR `n` with [`MapPolicy::Direct`]: every mmapable area mapped, the
    /// rest (or all of an I/O BAR) through pread/pwrite.
    pub fn bar(&self, n: u32) -> Result<Bar<'_>> {
        let index = RegionIndex::bar(n).ok_or(Error::NoSuchRegion {
            addr: self.address(),
            region: RegionIndex(n),
            count: self.regions().len() as u32,
        })?;
        self.open_region(index, MapPolicy::Direct)
    }

    /// Opens any region (BAR, `rom`, `config`) with the given policy.
    pub fn open_region(&self, index: RegionIndex, policy: MapPolicy) -> Result<Bar<'_>> {
        let info = self.region_info(index)?.clone();
        let io = self.region_io(&info);
        let mapping = match policy {
            MapPolicy::Direct => map_areas(self, &info)?,
            MapPolicy::Syscall => None,
        };
        Ok(Bar {
            device: self,
            info,
            io,
            mapping,
        })
    }
}

/// Maps every mmapable area of `info`; `None` if it has none.
fn map_areas(device: &Device, info: &RegionInfo) -> Result<Option<Mapping>> {
    let areas = info.mmap_areas();
    if areas.is_empty() {
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
    let page = page_size() as u64;
    let mut ranges = Vec::new();
    for area in areas {
        let end = area
            .offset
            .checked_add(area.size)
            .filter(|end| *end <= info.size)
            .ok_or(Error::NotMmapable {
                addr: device.address(),
                region: info.index,
                reason: "a sparse-mmap area lies outside the region",
            })?;
        // Only whole pages can be mapped: shrink an unaligned area to the pages
        // inside it (the rest stays on the slow path), except that an area ending
        // at the region's end may map the region's last, partial page.
        let start = area.offset.next_multiple_of(page);
        let map_end = if end == info.size {
            end.next_multiple_of(page)
        } else {
            end / page * page
        };
        if start >= map_end {
            log::debug!(
                "{} {}: area {:#x}+{:#x} has no whole page to map",
                device.address(),
                info.index,
                area.offset,
                area.size
            );
            continue;
        }
        reservation
            .map_shared(
                start as usize,
                (map_end - start) as usize,
                device.raw_fd(),
                info.offset + start,
            )
            .map_err(mmap_error(start, map_end - start))?;
        log::debug!(
            "{} {}: mapped {:#x}..{:#x}",
            device.address(),
            info.index,
            start,
            map_end
        );
        ranges.push(start..map_end.min(info.size));
    }
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

    /// Reads one `T` at `offset`.
    pub fn read<T: Scalar>(&self, offset: u64) -> Result<T> {
        self.check(offset, T::WIDTH, Dir::Read)?;
        if let Some(ptr) = self.mapped_ptr(offset, T::WIDTH) {
            // SAFETY: `mapped_ptr` returns a pointer only for an in-bounds range of a
            // live MAP_SHARED mapping owned by self; `check` ensured natural alignment.
            return Ok(unsafe { load::<T>(ptr) });
        }
        let mut word = [0u8; 8];
        self.io
            .read_at(offset, &mut word[..T::WIDTH])
            .map_err(|e| self.io_error(offset, T::WIDTH, e))?;
        Ok(T::from_le_word(word))
    }

    /// Writes one `T` at `offset`.
    pub fn write<T: Scalar>(&self, offset: u64, value: T) -> Result<()> {
        self.check(offset, T::WIDTH, Dir::Write)?;
        if let Some(ptr) = self.mapped_ptr(offset, T::WIDTH) {
            // SAFETY: as in `read`.
            unsafe { store::<T>(ptr, value) };
            return Ok(());
        }
        let word = value.to_le_word();
        self.io
            .write_at(offset, &word[..T::WIDTH])
            .map_err(|e| self.io_error(offset, T::WIDTH, e))
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
        self.check_range(offset, buf.len() as u64, Dir::Read)?;
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
        self.check_range(offset, data.len() as u64, Dir::Write)?;
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

    /// Bounds, alignment and permission checks of one access.
    #[inline(always)]
    fn check(&self, offset: u64, width: usize, dir: Dir) -> Result<()> {
        self.check_range(offset, width as u64, dir)?;
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
    fn check_range(&self, offset: u64, len: u64, dir: Dir) -> Result<()> {
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
        match dir {
            Dir::Read if !self.info.flags.readable() => Err(Error::NotReadable { addr, region }),
            Dir::Write if !self.info.flags.writable() => Err(Error::ReadOnly { addr, region }),
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
