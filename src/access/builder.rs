//! Building a [`Region`] over any slow path, with or without a mapping.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::slow::SlowPath;
use super::Region;
use crate::error::Result;
use crate::map::{MapPolicy, MapSource, Mapping};
use crate::pci::PciAddress;
use crate::region::{FdRegion, RegionCap, RegionFlags, RegionIndex, RegionInfo, RegionIo, SparseArea};
use crate::shadow::{Access, AccessHook};
use crate::vfio::Device;

/// The descriptor a region's mmapable areas are mapped from.
enum MapFd<'fd> {
    Borrowed(BorrowedFd<'fd>),
    Shared(Arc<OwnedFd>),
}

/// Builds a [`Region`]: see [`Region::builder`] and
/// [`Device::region_builder`].
///
/// ```
/// # #[cfg(target_arch = "x86_64")] {
/// use std::sync::Arc;
/// use barmap::region::{MemoryRegion, SparseArea};
/// use barmap::{MapPolicy, Region, RegionIndex};
/// // An emulated device of 8 KiB whose first page is mapped from a memfd
/// // and whose second page is served from a MemoryRegion.
/// let memfd = tempfile::tempfile()?;
/// memfd.set_len(0x2000)?;
/// let slow = Arc::new(MemoryRegion::new(vec![0xab; 0x2000]));
/// let region = Region::builder("0000:00:04.0".parse()?, RegionIndex::bar(0).unwrap(), slow)
///     .map_from(&memfd, 0, &[SparseArea { offset: 0, size: 0x1000 }])
///     .build()?;
/// assert_eq!(region.mapped_ranges(), [0..0x1000]);
/// assert_eq!(region.read::<u32>(0x1000)?, 0xabab_abab); // slow path
/// region.write::<u32>(0, 7)?; // one store to the memfd page
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RegionBuilder<'fd> {
    addr: PciAddress,
    index: RegionIndex,
    io: SlowPath,
    flags: RegionFlags,
    caps: Vec<RegionCap>,
    map: Option<(MapFd<'fd>, u64, Vec<SparseArea>)>,
    policy: MapPolicy,
    hook: Option<AccessHook>,
    device: Option<Device>,
}

impl Region {
    /// Starts a region `index` of the device at `addr` whose slow path is
    /// `io` (its size is `io.size()`): an emulated device, a test double, a
    /// VMM's own region. `addr` and `index` name it in errors and
    /// diagnostics. Without [`RegionBuilder::map_from`] nothing is mapped and
    /// every access goes through `io`.
    pub fn builder<'fd>(addr: PciAddress, index: RegionIndex, io: Arc<dyn RegionIo>) -> RegionBuilder<'fd> {
        RegionBuilder::over(addr, index, SlowPath::Any(io))
    }

    /// [`Region::builder`] over a descriptor's region: every access that is
    /// not mapped is one `pread`/`pwrite` on `io`'s descriptor, called
    /// directly, as for a [`Device`]'s regions (e.g. a VFIO device that a VMM
    /// opened itself, or a file standing in for a device).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use barmap::region::FdRegion;
    /// use barmap::{Region, RegionIndex};
    /// let file = tempfile::tempfile()?;
    /// file.set_len(0x100)?;
    /// let io = FdRegion::new(Arc::new(file.into()), 0, 0x100);
    /// let region = Region::fd_builder("0000:00:04.0".parse()?, RegionIndex::bar(1).unwrap(), io).build()?;
    /// region.write::<u16>(0x10, 0xbeef)?; // one pwrite of 2 bytes
    /// assert_eq!(region.read::<u16>(0x10)?, 0xbeef);
    /// assert!(region.read::<u32>(0x100).is_err()); // past the end
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fd_builder<'fd>(addr: PciAddress, index: RegionIndex, io: FdRegion) -> RegionBuilder<'fd> {
        RegionBuilder::over(addr, index, SlowPath::Fd(io))
    }
}

impl RegionBuilder<'_> {
    fn over(addr: PciAddress, index: RegionIndex, io: SlowPath) -> Self {
        RegionBuilder {
            addr,
            index,
            io,
            flags: RegionFlags::READ_WRITE,
            caps: Vec::new(),
            map: None,
            policy: MapPolicy::Direct,
            hook: None,
            device: None,
        }
    }
}

impl RegionBuilder<'static> {
    /// A builder for `info`, a region of `device`, reached through `io` and
    /// mapped from the device's descriptor `fd`.
    pub(crate) fn for_device(device: Device, info: &RegionInfo, io: FdRegion, fd: Arc<OwnedFd>) -> Self {
        RegionBuilder {
            addr: device.address(),
            index: info.index,
            io: SlowPath::Fd(io),
            flags: info.flags,
            caps: info.caps.clone(),
            map: Some((MapFd::Shared(fd), info.offset, info.mmap_areas())),
            policy: MapPolicy::Direct,
            hook: None,
            device: Some(device),
        }
    }
}

impl<'fd> RegionBuilder<'fd> {
    /// The region's access flags (default: readable and writable). Typed
    /// accesses the flags do not allow are refused with a typed error;
    /// through the pointer, the fault handler completes them as refused
    /// (see [`crate::shadow`]). Mapped areas are mapped read-only unless the
    /// region is writable, and not at all unless it is readable.
    pub fn flags(mut self, flags: RegionFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Maps `areas` (region offsets) directly from `fd`, where the region
    /// starts at `file_offset`. Areas are shrunk to whole pages; partial
    /// pages stay on the slow path. `fd` is needed only until
    /// [`RegionBuilder::build`] returns.
    pub fn map_from(mut self, fd: &'fd impl AsFd, file_offset: u64, areas: &[SparseArea]) -> Self {
        self.map = Some((MapFd::Borrowed(fd.as_fd()), file_offset, areas.to_vec()));
        self
    }

    /// Chooses what to trap besides what cannot be mapped (default:
    /// [`MapPolicy::Direct`]).
    pub fn policy(mut self, policy: MapPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Calls `hook` for every trapped access: those made through
    /// [`Region::as_ptr`] to pages that are not mapped, and typed accesses
    /// that take the slow path.
    ///
    /// # Safety
    ///
    /// `hook` runs **inside the SIGSEGV handler**, on whichever thread touched
    /// a trapped page, and must be async-signal-safe: no allocation, no
    /// locks, no `log` or `println!`, no panics; atomics and preallocated
    /// buffers are fine. It must neither touch a trapped page of any region
    /// nor drop a [`Region`] (see [`AccessHook`]). For logging, use
    /// [`Region::flush_trace`] instead.
    ///
    /// ```no_run
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    /// use barmap::{Device, MapPolicy, RegionIndex};
    /// let edu = Device::open("0000:00:02.0".parse()?)?;
    /// let trapped = Arc::new(AtomicUsize::new(0));
    /// let count = trapped.clone();
    /// let builder = edu.region_builder(RegionIndex::bar(0).unwrap())?.policy(MapPolicy::TrapAll);
    /// // SAFETY: the hook only increments an atomic counter.
    /// let bar0 = unsafe {
    ///     builder.hook(move |_: &barmap::shadow::Access| {
    ///         count.fetch_add(1, Ordering::Relaxed);
    ///     })
    /// }
    /// .build()?;
    /// // SAFETY: offset 0 (the ID register) is inside BAR0 and 4-byte aligned.
    /// let id = unsafe { bar0.as_ptr()?.cast::<u32>().read_volatile() };
    /// assert_eq!(id, 0x0100_00ed);
    /// assert_eq!(trapped.load(Ordering::Relaxed), 1);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub unsafe fn hook(mut self, hook: impl Fn(&Access) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Reserves the region's range, maps the direct areas and registers the
    /// rest with the fault handler (installing it on first use).
    pub fn build(self) -> Result<Region> {
        let size = self.io.size();
        let info = RegionInfo::new(
            self.index,
            size,
            self.map.as_ref().map_or(0, |(_, offset, _)| *offset),
            self.flags,
            self.caps,
        );
        let source = self.map.as_ref().map(|(fd, file_offset, areas)| MapSource {
            fd: match fd {
                MapFd::Borrowed(fd) => *fd,
                MapFd::Shared(fd) => fd.as_fd(),
            },
            file_offset: *file_offset,
            areas: areas.clone(),
        });
        // The size is read once: the range, the fast path and the fault
        // handler all use this one value.
        let mapping = Mapping::new(
            self.addr,
            self.index,
            size,
            self.io.shared(),
            self.flags,
            source,
            &self.policy,
            self.hook,
        )?;
        Ok(Region::from_parts(self.addr, info, self.io, mapping, self.device))
    }
}
