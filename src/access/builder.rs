//! Building a [`Region`] over any slow path, with or without a mapping.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::slow::SlowPath;
use super::Region;
use crate::error::{Error, Result};
use crate::map::{Faults, MapPolicy, MapSource, Mapping};
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
    fault_handler: bool,
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
            fault_handler: true,
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
            fault_handler: true,
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

    /// Opens the region without barmap's fault handler: its range is not
    /// registered, and as long as every region of the process is opened this
    /// way, barmap never installs its SIGSEGV and SIGBUS handlers (the first
    /// region opened without this option installs them for the rest of the
    /// process's life). For programs that own those signals (JVMs, wasm
    /// runtimes, sanitizers). The default is to register every region.
    ///
    /// What works without it: typed accesses everywhere (mapped pages with
    /// one load or store, the rest with one `pread`/`pwrite`, as always),
    /// and [`Region::as_ptr`] on a region that is fully mapped. What needs
    /// it is refused with [`Error::Unsupported`]: a pointer over a region
    /// with pages that are not mapped (holes, I/O BARs, a trap
    /// [`MapPolicy`]), from [`Region::as_ptr`], and an access hook, from
    /// [`RegionBuilder::build`]. Nothing is traced.
    ///
    /// **Revocation.** vfio-pci zaps the region's mapping on a device reset,
    /// a hot reset, runtime low power, and while the device's memory
    /// decoding is off. A load or store to a mapped page then raises SIGBUS
    /// in the thread that made it, typed accesses on the mapping included.
    /// Without barmap's handler nothing serves it: the SIGBUS goes to the
    /// program's own handler, or its default action kills the process. No
    /// refusal is recorded ([`Region::take_error`] is always `None`). A
    /// program that resets the device or turns its decoding off must not
    /// touch the mapping meanwhile; one that must survive revocation without
    /// the handler opens the region with [`MapPolicy::TrapAll`] as well:
    /// nothing is mapped, every typed access is one `pread`/`pwrite`, which
    /// waits out a reset, and while decoding is off every access returns
    /// [`Error::Refused`] (see [refused accesses](Region#refused-accesses)).
    ///
    /// ```
    /// use barmap::region::{FdRegion, SparseArea};
    /// use barmap::{Region, RegionIndex};
    /// use std::sync::Arc;
    /// // A file standing in for a device's BAR, mapped whole.
    /// let file = tempfile::tempfile()?;
    /// file.set_len(0x1000)?;
    /// let fd = Arc::new(std::os::fd::OwnedFd::from(file));
    /// let io = FdRegion::new(fd.clone(), 0, 0x1000);
    /// let region = Region::fd_builder("0000:00:04.0".parse()?, RegionIndex::bar(0).unwrap(), io)
    ///     .map_from(&*fd, 0, &[SparseArea { offset: 0, size: 0x1000 }])
    ///     .without_fault_handler()
    ///     .build()?;
    /// assert!(region.is_fully_mapped());
    /// region.write::<u32>(0x10, 7)?; // one store, no signal handler involved
    /// assert_eq!(region.read::<u32>(0x10)?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn without_fault_handler(mut self) -> Self {
        self.fault_handler = false;
        self
    }

    /// Reserves the region's range, maps the direct areas and registers the
    /// rest with the fault handler (installing it on first use), unless
    /// [`RegionBuilder::without_fault_handler`] said not to.
    pub fn build(self) -> Result<Region> {
        if !self.fault_handler && self.hook.is_some() {
            return Err(Error::Unsupported {
                addr: self.addr,
                what: "an access hook",
                reason: "the region is opened without the fault handler, which calls it",
            });
        }
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
            if self.fault_handler {
                Faults::Served(self.hook)
            } else {
                Faults::Unserved
            },
        )?;
        Ok(Region::from_parts(self.addr, info, self.io, mapping, self.device))
    }
}
