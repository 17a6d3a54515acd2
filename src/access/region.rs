//! The owning handle on one open region: what it is, where it is mapped,
//! and the record of refused accesses. Its typed accesses are in `typed`.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

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
/// through the region's [`RegionIo`](crate::RegionIo) (the VFIO descriptor, for a device's
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
///
/// # Refused accesses
///
/// vfio-pci revokes a device's BAR mappings while its memory decoding is off
/// and while a reset runs; `pread`/`pwrite` of the region then wait out the
/// reset, and fail with `EIO` while decoding is off. barmap's fault handler
/// serves an access to a revoked mapped page with `pread`/`pwrite` and, when
/// the device refuses it (`EIO`), completes it as PCIe completes an
/// unsupported request: a read gets all-ones, a write is dropped, and the
/// region records the refusal.
///
/// One contract holds for every typed access, reads and writes alike, on
/// every path: [`Region::read`] and [`Region::write`] inlined on a fully
/// mapped region, the mapped parts of any other region, the syscall path
/// (trapped pages, I/O BARs, regions with nothing mapped, any
/// [`crate::RegionIo`]), [`Region::read_width`]/[`Region::write_width`],
/// [`Region::read_bytes`]/[`Region::write_bytes`] and
/// [`Region::read_slice`]/[`Region::write_slice`]:
///
/// - **an access the device refused returns [`Error::Refused`]**, never
///   `Ok`: a caller never takes a dropped write for one that landed, nor
///   PCIe's all-ones for a value. A `pread`/`pwrite` of the slow path failing
///   with `EIO` is such a refusal too; any other failure is
///   [`Error::Io`].
/// - The error takes the region's record: its count covers that access and
///   the refusals recorded before it that no one has taken yet. Those are
///   accesses through [`Region::as_ptr`] and [`crate::mmio`] views, which
///   cannot return an error (take their record with [`Region::take_error`]),
///   and, the record being one per region, accesses of other threads on the
///   same region. A refusal is reported once: to whichever typed access or
///   `take_error` takes the record first.
/// - So a read that returns `Ok` was not refused, and a write that returns
///   `Ok` was not dropped (unless another thread took the record in
///   between). The converse does not hold: a write that finds a record
///   pending returns it even if its own store landed, and so does a read
///   that finds all-ones, since it cannot tell the device's all-ones from
///   PCIe's. Take the record ([`Region::take_error`]) after pointer
///   accesses, and `Refused` from a typed access is about that access.
/// - A bulk access (`_bytes`, `_slice`) returns `Refused` if any of its
///   accesses was refused. On the slow path it stops at the first refused
///   one; a directly mapped run is made whole and checked once at its end,
///   so the accesses after a refused one in that run were made too (and
///   refused as well while decoding stays off). A failed bulk read leaves
///   the buffer's contents unspecified.
///
/// The cost on the inlined path is one load of the record's count after
/// each store, and nothing on loads (a load that is not all-ones is not
/// tested). A region opened without the fault handler
/// ([`crate::RegionBuilder::without_fault_handler`]) has no record: a
/// revoked mapped page raises SIGBUS in the process instead, and only its
/// syscall path reports `Refused`.
pub struct Region {
    pub(super) fast: FastWindow,
    /// The count of refused accesses not yet reported, tested after every
    /// store (shared with the fault handler, which raises it).
    pub(super) refusals: Arc<AtomicU64>,
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
            refusals: mapping.refusals(),
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
    /// [`Device`] (`None` for one built over any [`RegionIo`](crate::RegionIo)).
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
    /// the region's: do not unmap or remap any of it. With the fault handler,
    /// a store the region's flags do not allow is dropped and a load they do
    /// not allow reads all-ones, both recorded for [`Region::take_error`];
    /// a region opened without it leaves such a fault (SIGSEGV) to the
    /// program.
    ///
    /// A fully mapped region works everywhere; unmapped pages need x86-64
    /// and the fault handler ([`Error::Unsupported`] elsewhere, and for a
    /// region opened [without it](crate::RegionBuilder::without_fault_handler)).
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
    /// (or since a typed access reported them): [`Error::Refused`] with how
    /// many, or `None`.
    ///
    /// vfio-pci revokes a device's BAR mappings while its memory decoding is
    /// off and during resets. barmap's fault handler then serves accesses
    /// through the region's mapping or pointer with `pread`/`pwrite`; when the
    /// device refuses one (`EIO`), it completes it as PCIe completes an
    /// unsupported request (reads return all-ones, writes are dropped) and
    /// records it here. It records the same way (with `EACCES`) a store
    /// through the pointer to a region without the write flag and a load
    /// from one without the read flag.
    ///
    /// This is how accesses through the region's pointer and
    /// [`crate::mmio`] views, which cannot return an error, learn that they
    /// were refused (see [refused accesses](Region#refused-accesses));
    /// typed accesses report a refusal themselves. The record is one per
    /// region: with several threads accessing one region, the refusals of
    /// one may be reported to another. A region without the fault handler
    /// has no record (always `None`).
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
