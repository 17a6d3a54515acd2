//! The owning handle on one open region: what it is, where it is mapped,
//! and the record of refused accesses. Its typed accesses are in `typed`.

use std::fmt;
use std::ops::Range;

use super::slow::SlowPath;
use super::window::{FastWindow, Limits, SyscallWindow};
use crate::error::{Error, Result};
use crate::map::Mapping;
use crate::pci::PciAddress;
use crate::region::{RegionIndex, RegionInfo};
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
    pub(super) fast: FastWindow,
    pub(super) syscall: SyscallWindow,
    pub(super) limits: Limits,
    /// Whether slow-path accesses are reported (a hook or the trace is on).
    pub(super) observed: bool,
    pub(super) info: RegionInfo,
    pub(super) addr: PciAddress,
    pub(super) io: SlowPath,
    pub(super) mapping: Mapping,
    /// Keeps a device's descriptor and container open; dropped last.
    _device: Option<Device>,
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
        let observed = mapping.is_observed();
        Region {
            fast: FastWindow::new(&info, &mapping),
            syscall: SyscallWindow::new(&info, &io, &mapping, observed),
            limits: Limits::new(&info),
            observed,
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
    /// pointer is valid while the `Region` lives, and the range it spans is
    /// the region's: do not unmap or remap any of it. A store the region's
    /// flags do not allow is dropped and a load they do not allow reads
    /// all-ones, both recorded for [`Region::take_error`].
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

    /// Takes the record of accesses the device refused since the last call
    /// (or since a typed read reported them): [`Error::Refused`] with how
    /// many, or `None`.
    ///
    /// vfio-pci revokes a device's BAR mappings while its memory decoding is
    /// off and during resets. barmap's fault handler then serves accesses
    /// through the region's mapping or pointer with `pread`/`pwrite`; when the
    /// device refuses one (`EIO`), it completes it as PCIe completes an
    /// unsupported request (reads return all-ones, writes are dropped) and
    /// records it here. It records the same way (with `EACCES`) a store
    /// through the pointer to a region without the write flag and a load
    /// from one without the read flag. A typed read that returns all-ones reports the
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
}
