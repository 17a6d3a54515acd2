//! One region's reserved range, the parts of it mapped to the device, and its
//! registration with the fault handler, dropped in that order's reverse.

use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::layout::{direct_ranges, LayoutError, MapPolicy};
use super::reservation::{page_size, Reservation};
use crate::error::{Error, Result};
use crate::pci::PciAddress;
use crate::region::{RegionFlags, RegionIndex, RegionIo, SparseArea};
use crate::shadow::{Access, AccessHook, Registration};

/// Where the directly mapped parts of a region come from.
pub(crate) struct MapSource<'fd> {
    /// The descriptor to mmap (it is needed only while the mapping is made).
    pub(crate) fd: BorrowedFd<'fd>,
    /// Offset of the region's start in `fd`.
    pub(crate) file_offset: u64,
    /// The areas the kernel allows to mmap, in region offsets.
    pub(crate) areas: Vec<SparseArea>,
}

/// Whether a region's range is served by the fault handler.
pub(crate) enum Faults {
    /// Registered with the fault handler (installing it on first use), which
    /// calls the hook, if any, for every trapped access.
    Served(Option<AccessHook>),
    /// Registered with nothing: a fault on the range goes to whatever handles
    /// the signal in the process.
    Unserved,
}

/// A region's address range: reservation, direct mappings, fault-handler
/// registration.
///
/// The registration is dropped first, by [`Drop`], so that no fault handler
/// can be serving a page of the range when the reservation unmaps it.
pub(crate) struct Mapping {
    /// `None` where no fault handler exists (off x86-64): then only a whole
    /// mapping offers a pointer.
    registration: Option<Registration>,
    reservation: Reservation,
    /// Mapped byte ranges in region offsets, sorted, clipped to the region size.
    mapped: Vec<Range<u64>>,
    /// Whether `mapped` covers the whole region.
    whole: bool,
    /// The count of refused accesses not yet taken: the registration's, or
    /// one that nothing raises where there is none.
    refusals: Arc<AtomicU64>,
    /// Whether the region was opened without the fault handler.
    unserved: bool,
    addr: PciAddress,
}

impl Mapping {
    /// Reserves a range of `size` bytes (the region's size, which `io`
    /// reaches) for `region` of `addr`, maps the areas of `source` that
    /// `policy` leaves untrapped, and registers the range with the fault
    /// handler (installing it on first use; x86-64 only) if `faults` says so;
    /// the handler refuses the accesses `flags` do not allow.
    ///
    /// Areas are mapped read-only unless `flags` say writable; a region that
    /// is not readable maps nothing (x86 page tables cannot make a page
    /// writable without making it readable), so every load of it faults and
    /// is refused.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        addr: PciAddress,
        region: RegionIndex,
        size: u64,
        io: Arc<dyn RegionIo>,
        flags: RegionFlags,
        source: Option<MapSource<'_>>,
        policy: &MapPolicy,
        faults: Faults,
    ) -> Result<Mapping> {
        let page = page_size() as u64;
        let source = source.filter(|_| flags.readable());
        let areas = source.as_ref().map_or(&[][..], |s| &s.areas[..]);
        let ranges = direct_ranges(size, page, areas, policy).map_err(|e| match e {
            LayoutError::AreaOutside(_) => Error::NotMmapable {
                addr,
                region,
                reason: "a sparse-mmap area lies outside the region",
            },
            LayoutError::TrapOutside(r) => Error::OutOfRange {
                addr,
                region,
                offset: r.start,
                len: r.end.wrapping_sub(r.start),
                size,
            },
        })?;
        let mut reservation = Reservation::new(size).map_err(|source| Error::Shadow {
            addr,
            region,
            step: "reserving the address range",
            offset: 0,
            len: size,
            source,
        })?;
        if let Some(source) = &source {
            reservation
                .map_ranges(
                    &ranges,
                    source.fd.as_raw_fd(),
                    source.file_offset,
                    flags.writable(),
                )
                .map_err(|(range, error)| Error::Shadow {
                    addr,
                    region,
                    step: "mapping a direct area",
                    offset: range.start,
                    len: range.end - range.start,
                    source: error,
                })?;
        }
        let mapped: Vec<Range<u64>> = ranges.into_iter().map(|r| r.start..r.end.min(size)).collect();
        let whole = mapped.len() == 1 && mapped[0] == (0..size);
        let (registration, unserved) = match faults {
            Faults::Served(hook) => (
                register(addr, region, &reservation, size, io, flags, hook)?,
                false,
            ),
            Faults::Unserved => (None, true),
        };
        let refusals = registration
            .as_ref()
            .map_or_else(Arc::default, Registration::refusals);
        Ok(Mapping {
            registration,
            reservation,
            mapped,
            whole,
            refusals,
            unserved,
            addr,
        })
    }

    /// The start of the range: offset 0 of the region.
    pub(crate) fn base(&self) -> *mut u8 {
        self.reservation.base()
    }

    /// The directly mapped byte ranges.
    pub(crate) fn mapped(&self) -> &[Range<u64>] {
        &self.mapped
    }

    /// Whether the whole region is directly mapped.
    pub(crate) fn is_whole(&self) -> bool {
        self.whole
    }

    /// The start of the range, if every page of it is either mapped or
    /// served by the fault handler.
    pub(crate) fn pointer(&self) -> Result<*mut u8> {
        if self.whole || self.registration.is_some() {
            return Ok(self.base());
        }
        Err(Error::Unsupported {
            addr: self.addr,
            what: "a pointer over a region with unmapped parts",
            reason: if self.unserved {
                "the region was opened without the fault handler, which serves them"
            } else {
                "the fault handler decodes x86-64 instructions only"
            },
        })
    }

    /// Whether a hook or the trace ring sees the slow path's accesses.
    pub(crate) fn is_observed(&self) -> bool {
        self.registration.as_ref().is_some_and(Registration::is_observed)
    }

    /// Reports an access that a typed access made through the slow path to
    /// the hook and the trace.
    pub(crate) fn record(&self, access: &Access) {
        if let Some(registration) = &self.registration {
            registration.record(access);
        }
    }

    /// The count of accesses the device refused that nobody took yet, which
    /// the fault handler raises (it stays 0 without a fault handler).
    pub(crate) fn refusals(&self) -> Arc<AtomicU64> {
        self.refusals.clone()
    }

    /// Takes the record of accesses the device refused (see
    /// [`crate::Region::take_error`]): how many, and the last errno.
    pub(crate) fn take_refused(&self) -> Option<(u64, i32)> {
        self.registration.as_ref().and_then(Registration::take_refused)
    }

    /// Drains the trace ring into `log::trace!` lines; returns how many.
    pub(crate) fn flush_trace(&self) -> usize {
        self.registration.as_ref().map_or(0, Registration::flush_trace)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregister (waiting for faults in progress) before the fields drop
        // and the reservation unmaps the range.
        drop(self.registration.take());
    }
}

/// Registers the range with the fault handler, where there is one.
fn register(
    addr: PciAddress,
    region: RegionIndex,
    reservation: &Reservation,
    size: u64,
    io: Arc<dyn RegionIo>,
    flags: RegionFlags,
    hook: Option<AccessHook>,
) -> Result<Option<Registration>> {
    let name = format!("{addr} {region}");
    Registration::new(reservation.base(), reservation.len(), size, name, io, flags, hook)
        .map_err(|e| e.into_error(addr, region))
}
