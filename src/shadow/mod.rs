//! Shadow regions: one contiguous pointer over a whole region, even where
//! parts of it cannot be mapped.
//!
//! A shadow region is a reserved address range of the region's size. Pages
//! the kernel lets us map (and that the [`Trap`] choice does not trap) are
//! placed in it with `MAP_FIXED | MAP_SHARED` and reach the device directly.
//! Every other page stays `PROT_NONE`: a load or store there raises SIGSEGV,
//! and barmap's handler decodes the instruction, does the same access on the
//! device through the region's [`RegionIo`] (one `pread`/`pwrite` of the same
//! width; nothing is cached, as MMIO reads have side effects), puts the result
//! in the saved registers and resumes after the instruction. This is what a
//! kernel driver's fault handler does for a trapped page, done in userspace
//! for every access.
//!
//! The handler is x86-64 only; elsewhere building a shadow region returns
//! [`Error::Unsupported`]. It emulates `MOV`, `MOVZX`, `MOVSX` loads and `MOV`
//! stores of 1, 2, 4 and 8 bytes, which is what `ptr::read_volatile` and
//! `ptr::write_volatile` of `u8`..`u64` compile to. Any other instruction on a
//! trapped page (an SSE copy, `memcpy`'s `rep movs`, an atomic) ends the
//! process with a one-line diagnostic on stderr naming the address, the region
//! offset and the instruction bytes; it is never served with a wrong width.
//!
//! Faults outside every shadow region go to the SIGSEGV handler that was
//! installed before barmap's (Rust's stack-overflow report, other crates), and
//! so does every SIGSEGV sent with `kill`, `tgkill` or `sigqueue`.
//!
//! # Stack use
//!
//! The handler serves a fault on the stack of the thread that took it, just
//! below the interrupted stack pointer (alternate signal stacks are too small
//! for it). It needs about 6 KiB there in unoptimised builds and 2.5 KiB in
//! optimised ones (measured on the first fault of an instruction, which also
//! decodes it); on a thread without an alternate signal stack the kernel's
//! signal frame (up to 3.5 KiB with AVX-512 state) comes on top. So a thread
//! that touches a trapped page must have **8 KiB of stack free** below the
//! access. Threads from `std::thread` and the main thread do in practice;
//! code running on small stacks of its own without a guard page (green
//! threads, coroutines) must leave that room, as an overflow there is not
//! caught: it overwrites whatever lies below.
//!
//! # Design
//!
//! - **Handler**: installed once, with `SA_SIGINFO | SA_ONSTACK` (so it runs
//!   on the alternate stack where one is set up, as Rust does for its
//!   threads), with every signal blocked while it runs, and without
//!   `SA_NODEFER` (a fault inside the handler itself kills the process
//!   instead of recursing). When the signal frame's record of the
//!   alternate stack (`uc_stack`) shows that it runs there, it does the decoding
//!   and the device access on the interrupted thread's stack, below its red
//!   zone (see [Stack use](#stack-use)): alternate stacks are small (8 KiB is
//!   common) and mostly taken by the kernel's signal frame. It allocates
//!   nothing, takes no lock and logs nothing; it saves and restores `errno`.
//!   Chaining calls the previous `sa_sigaction` or `sa_handler` directly (its
//!   `sa_mask` is not applied); before a previous `SIG_DFL`/`SIG_IGN` a fault
//!   takes the default action, while a sent signal is ignored or re-raised
//!   to the default action.
//! - **Registry**: a fixed table of atomics, with room for 128 live shadow
//!   regions (counting those of [`crate::Bar`]s with unmapped parts) in a
//!   process; one more is refused with [`Error::ShadowTableFull`]. A handler pins the slot it
//!   reads; dropping a region clears its slot and waits until no handler pins
//!   it, then unmaps. So a region may be dropped at any time from any thread
//!   while other threads fault on it or on other regions. (Dropping it from
//!   inside its own access hook would wait forever.)
//! - **Decoding** uses iced-x86; decoded instructions are kept in a small
//!   lock-free cache keyed by address and checked against the bytes at that
//!   address on every hit, so a load or store that faults repeatedly is
//!   decoded once.
//! - **Instruction bytes** are read straight from RIP: the CPU has just
//!   fetched them, so they are mapped; code inside a shadow region is refused.
//!   (Execute-only code pages, possible with protection keys, are not
//!   supported.)
//! - **Reporting**: the [`AccessHook`] is called in the handler (it must be
//!   async-signal-safe); for `log`, accesses also go into a lock-free ring that
//!   [`ShadowRegion::flush_trace`] drains into `log::trace!` lines outside the
//!   handler.
//! - **Errors**: an access the handler cannot serve (unsupported instruction,
//!   access past the region's end, a failing `pread`/`pwrite`, e.g. `EIO`
//!   while the device's memory decoding is off) prints one line to stderr and
//!   kills the process with SIGSEGV: a load never gets a made-up value.
//!
//! Not covered: SIGBUS (vfio-pci revokes BAR mappings on reset, and a touch of
//! a revoked mapped page raises SIGBUS, which barmap leaves alone). 8-byte
//! accesses are one 8-byte `pread`/`pwrite`, which kernels before 6.11 split
//! into two 4-byte device accesses.
//!
//! ```no_run
//! # #[cfg(target_arch = "x86_64")] {
//! use barmap::shadow::{ShadowRegion, Trap};
//! use barmap::FdRegion;
//! # let (fd, size) = (3, 0x2000);
//! // Every access to this region goes through the fd (e.g. an I/O port BAR).
//! // SAFETY: `fd` stays open for as long as the region lives.
//! let io = unsafe { FdRegion::new(fd, 0, size) };
//! let region = ShadowRegion::builder("bar1", Box::new(io))
//!     .trap(Trap::All)
//!     .build()?;
//! // SAFETY: offset 0x10 is inside the region; u32 accesses are emulated.
//! let id = unsafe { region.as_ptr().add(0x10).cast::<u32>().read_volatile() };
//! # let _ = id;
//! # }
//! # Ok::<(), barmap::Error>(())
//! ```

mod layout;
mod trace;

#[cfg(target_arch = "x86_64")]
mod cache;
#[cfg(target_arch = "x86_64")]
mod emulate;
#[cfg(target_arch = "x86_64")]
mod handler;
#[cfg(target_arch = "x86_64")]
mod registry;

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

pub use layout::Trap;
pub(crate) use layout::{direct_ranges, LayoutError};
use trace::TraceRing;
pub use trace::{Access, AccessHook, AccessKind};

use crate::error::{Error, Result};
use crate::map::{page_size, Reservation};
use crate::region::{RegionIo, SparseArea};

/// Records kept for [`ShadowRegion::flush_trace`] when tracing is on.
const TRACE_CAPACITY: usize = 4096;

/// What the fault handler needs to know about one region. Immutable once
/// registered; shared with the handler through the registry.
// Elsewhere than x86-64 nothing is registered, so the handler's fields go unread.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Shared {
    base: usize,
    len: usize,
    size: u64,
    name: String,
    io: Box<dyn RegionIo>,
    hook: Option<AccessHook>,
    trace: Option<TraceRing>,
}

impl Shared {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.len
    }

    /// Reports one trapped access to the hook and the trace ring.
    /// Async-signal-safe as long as the hook is.
    fn record(&self, access: &Access) {
        if let Some(hook) = &self.hook {
            hook(access);
        }
        if let Some(trace) = &self.trace {
            trace.push(access);
        }
    }

    fn flush_trace(&self) -> usize {
        let Some(trace) = &self.trace else { return 0 };
        let mut n = 0;
        while let Some(access) = trace.pop() {
            log::trace!("{}: {access}", self.name);
            n += 1;
        }
        match trace.take_dropped() {
            0 => {}
            dropped => log::trace!("{}: {dropped} trapped accesses not traced (ring full)", self.name),
        }
        n
    }
}

/// Why a region could not be registered with the fault handler.
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum RegisterError {
    /// The fault handler does not exist on this architecture.
    #[cfg(not(target_arch = "x86_64"))]
    Unsupported,
    /// Every slot of the registry is taken.
    #[cfg(target_arch = "x86_64")]
    Full,
    /// `sigaction` failed.
    Install(io::Error),
}

impl RegisterError {
    /// The barmap error for this, with `name` naming the region.
    pub(crate) fn into_error(self, name: &str) -> Error {
        match self {
            #[cfg(not(target_arch = "x86_64"))]
            RegisterError::Unsupported => Error::Unsupported {
                what: "shadow regions (fault-driven access to unmapped parts of a region)",
                reason: "the fault handler decodes x86-64 instructions only",
            },
            #[cfg(target_arch = "x86_64")]
            RegisterError::Full => Error::ShadowTableFull {
                name: name.to_string(),
                capacity: registry::CAPACITY,
            },
            RegisterError::Install(source) => Error::Shadow {
                name: name.to_string(),
                step: "installing the SIGSEGV handler",
                offset: 0,
                len: 0,
                source,
            },
        }
    }
}

/// A region's entry in the fault handler's table. While it lives, faults on
/// `base..base + len` are served from `io`; dropping it waits until no fault
/// handler is using it any more.
///
/// Whoever owns the address range must drop this before unmapping it.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    #[cfg(target_arch = "x86_64")]
    slot: usize,
}

impl Registration {
    /// Registers the range `base..base + len` (holding a region of `size`
    /// bytes) so that faults on its `PROT_NONE` pages are served from `io`.
    pub(crate) fn new(
        base: *mut u8,
        len: usize,
        size: u64,
        name: String,
        io: Box<dyn RegionIo>,
        hook: Option<AccessHook>,
    ) -> std::result::Result<Registration, RegisterError> {
        let trace = log::log_enabled!(log::Level::Trace).then(|| TraceRing::new(TRACE_CAPACITY));
        let shared = Arc::new(Shared {
            base: base as usize,
            len,
            size,
            name,
            io,
            hook,
            trace,
        });
        Registration::register(shared)
    }

    #[cfg(target_arch = "x86_64")]
    fn register(shared: Arc<Shared>) -> std::result::Result<Registration, RegisterError> {
        handler::install().map_err(RegisterError::Install)?;
        let slot = registry::REGISTRY
            .register(Arc::as_ptr(&shared), shared.base, shared.base + shared.len)
            .ok_or(RegisterError::Full)?;
        log::debug!(
            "{}: shadow region at {:#x}..{:#x} registered",
            shared.name,
            shared.base,
            shared.base + shared.len
        );
        Ok(Registration { shared, slot })
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn register(_shared: Arc<Shared>) -> std::result::Result<Registration, RegisterError> {
        Err(RegisterError::Unsupported)
    }

    /// Drains the trace ring into `log::trace!` lines.
    pub(crate) fn flush_trace(&self) -> usize {
        self.shared.flush_trace()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        registry::REGISTRY.unregister(self.slot);
        self.shared.flush_trace();
    }
}

/// One contiguous range over a whole region: mapped areas reach the device
/// directly, trapped pages are served by the fault handler.
///
/// Built with [`ShadowRegion::builder`]. The range stays valid until the
/// region is dropped; dropping waits for faults in progress on it to finish,
/// then unmaps it. A thread touching a trapped page needs 8 KiB of free stack
/// below the access for the fault handler (see [Stack use](crate::shadow#stack-use)). A [`crate::Bar`] offers the same through
/// [`crate::Bar::as_ptr`]; this type is for other slow paths (emulated
/// devices in tests, a VMM's own regions).
pub struct ShadowRegion {
    // Declared first so that it is dropped (unregistered) before the range is unmapped.
    registration: Registration,
    reservation: Reservation,
    mapped: Vec<Range<u64>>,
    size: u64,
}

impl fmt::Debug for ShadowRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShadowRegion")
            .field("name", &self.registration.shared.name)
            .field("base", &self.reservation.base())
            .field("size", &self.size)
            .field("mapped", &self.mapped)
            .finish()
    }
}

/// Builds a [`ShadowRegion`]: see [`ShadowRegion::builder`].
pub struct ShadowBuilder<'fd> {
    name: String,
    io: Box<dyn RegionIo>,
    direct: Option<(BorrowedFd<'fd>, u64, Vec<SparseArea>)>,
    trap: Trap,
    hook: Option<AccessHook>,
}

impl ShadowRegion {
    /// Starts a shadow region over the region that `io` reaches (its size is
    /// `io.size()`), named `name` in diagnostics and trace lines. Without
    /// [`ShadowBuilder::map_from`], every access is trapped.
    pub fn builder<'fd>(name: impl Into<String>, io: Box<dyn RegionIo>) -> ShadowBuilder<'fd> {
        ShadowBuilder {
            name: name.into(),
            io,
            direct: None,
            trap: Trap::Holes,
            hook: None,
        }
    }

    /// The start of the range: offset 0 of the region.
    pub fn as_ptr(&self) -> *const u8 {
        self.reservation.base()
    }

    /// The start of the range, for stores.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.reservation.base()
    }

    /// The region's size in bytes (the range is this, rounded up to pages).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The offset ranges mapped directly (page aligned, sorted); every other
    /// page is trapped.
    pub fn mapped_ranges(&self) -> &[Range<u64>] {
        &self.mapped
    }

    /// Whether `offset` lies on a trapped page.
    pub fn is_trapped(&self, offset: u64) -> bool {
        offset < self.size && !self.mapped.iter().any(|r| r.contains(&offset))
    }

    /// Emits the trapped accesses recorded since the last call as
    /// `log::trace!` lines and returns how many. Recording is on when the
    /// `trace` level was enabled for barmap when the region was built; the
    /// last records are flushed when the region is dropped.
    pub fn flush_trace(&self) -> usize {
        self.registration.flush_trace()
    }
}

impl<'fd> ShadowBuilder<'fd> {
    /// Maps `areas` (region offsets) directly from `fd`, where the region
    /// starts at `file_offset`. Areas are shrunk to whole pages; partial pages
    /// are trapped.
    pub fn map_from(mut self, fd: BorrowedFd<'fd>, file_offset: u64, areas: &[SparseArea]) -> Self {
        self.direct = Some((fd, file_offset, areas.to_vec()));
        self
    }

    /// Chooses what to trap besides what cannot be mapped.
    pub fn trap(mut self, trap: Trap) -> Self {
        self.trap = trap;
        self
    }

    /// Calls `hook` for every trapped access, inside the fault handler: it
    /// must be async-signal-safe, and must neither touch a trapped page of any
    /// shadow region nor drop one (see [`AccessHook`]).
    pub fn hook(mut self, hook: impl Fn(&Access) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Reserves the range, maps the direct areas and registers the rest with
    /// the fault handler (installing it on first use).
    pub fn build(self) -> Result<ShadowRegion> {
        let size = self.io.size();
        let name = self.name;
        let setup = |step: &'static str, offset: u64, len: u64| {
            let name = name.clone();
            move |source: io::Error| Error::Shadow {
                name,
                step,
                offset,
                len,
                source,
            }
        };
        let reservation = Reservation::new(size).map_err(setup("reserving the range", 0, size))?;
        let mut mapped = Vec::new();
        if let Some((fd, file_offset, areas)) = &self.direct {
            let ranges = direct_ranges(size, page_size() as u64, areas, &self.trap).map_err(|e| {
                let (step, r) = match e {
                    LayoutError::AreaOutside(a) => (
                        "mmapable area outside the region",
                        a.offset..a.offset.saturating_add(a.size),
                    ),
                    LayoutError::TrapOutside(r) => ("trap range outside the region", r),
                };
                setup(step, r.start, r.end.wrapping_sub(r.start))(io::ErrorKind::InvalidInput.into())
            })?;
            reservation
                .map_ranges(&ranges, fd.as_raw_fd(), *file_offset, true)
                .map_err(|(r, source)| setup("mapping an area", r.start, r.end - r.start)(source))?;
            mapped = ranges.into_iter().map(|r| r.start..r.end.min(size)).collect();
        }
        let registration = Registration::new(
            reservation.base(),
            reservation.len(),
            size,
            name.clone(),
            self.io,
            self.hook,
        )
        .map_err(|e| e.into_error(&name))?;
        Ok(ShadowRegion {
            registration,
            reservation,
            mapped,
            size,
        })
    }
}

/// The shadow part of a [`crate::Bar`]: its registration with the fault
/// handler, over the Bar's own direct mapping when it has one, or over a
/// reservation of its own when nothing of the region is mapped.
///
/// A `BarShadow` made over a borrowed reservation must be dropped before that
/// reservation: `Bar` declares its shadow field before its mapping.
pub(crate) struct BarShadow {
    // Declared first: unregister before `_own` is unmapped.
    registration: Registration,
    /// The reservation, when the shadow has its own; held to unmap it on drop.
    _own: Option<Reservation>,
    base: *mut u8,
}

// SAFETY: `base` is only an address (handed out by `as_ptr`); the reservation
// behind it is Send + Sync and so is the registration.
unsafe impl Send for BarShadow {}
// SAFETY: as above.
unsafe impl Sync for BarShadow {}

impl BarShadow {
    /// Registers region `region` of `addr` (reached through `io`) with the
    /// fault handler, over `mapped` if part of it is mapped there.
    pub(crate) fn new(
        addr: crate::PciAddress,
        region: crate::RegionIndex,
        mapped: Option<&Reservation>,
        io: Box<dyn RegionIo>,
        hook: Option<AccessHook>,
    ) -> Result<BarShadow> {
        let size = io.size();
        let (own, base, len) = match mapped {
            Some(r) => (None, r.base(), r.len()),
            None => {
                let r = Reservation::new(size).map_err(|source| Error::Mmap {
                    addr,
                    region,
                    offset: 0,
                    len: size,
                    source,
                })?;
                let (base, len) = (r.base(), r.len());
                (Some(r), base, len)
            }
        };
        let name = format!("{addr} {region}");
        let registration =
            Registration::new(base, len, size, name.clone(), io, hook).map_err(|e| e.into_error(&name))?;
        Ok(BarShadow {
            registration,
            _own: own,
            base,
        })
    }

    /// The start of the shadow range.
    pub(crate) fn base(&self) -> *mut u8 {
        self.base
    }

    /// Reports an access that the typed slow path made to an unmapped part,
    /// so that the hook and the trace see it like a trapped one.
    pub(crate) fn record(&self, access: &Access) {
        self.registration.shared.record(access);
    }

    /// See [`ShadowRegion::flush_trace`].
    pub(crate) fn flush_trace(&self) -> usize {
        self.registration.flush_trace()
    }
}
