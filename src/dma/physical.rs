//! DMA without an IOMMU: the device reaches memory at its physical
//! address, so a buffer must stay where it is (locked), be physically
//! contiguous, and lie below the device's mask.
//!
//! A buffer of one 4 KiB page or less is an ordinary page; a larger one is
//! backed by huge pages (one 2 MiB page up to 2 MiB, 1 GiB pages beyond),
//! since nothing else makes userspace memory physically contiguous. The
//! physical address of every 4 KiB page comes from `/proc/self/pagemap`
//! (present bit 63, frame number in bits 0-54), which shows frame numbers
//! only to a process with `CAP_SYS_ADMIN` (frame 0 otherwise), and is
//! checked page by page for contiguity.
//!
//! Locking (`mlock`) keeps pages in memory but does not pin their frames:
//! the kernel's compaction may still migrate a locked 4 KiB page unless
//! `vm.compact_unevictable_allowed` is 0, and a contiguous allocation (CMA,
//! a 1 GiB page made at run time) or memory going offline may migrate a huge
//! page. The physical address read at allocation is the one the device gets.
//!
//! A dropped buffer's memory is retired to its device ([`RetiredMemory`]),
//! since nothing revokes the device's access to it.

use std::io;
use std::sync::Mutex;

use vm_memory::{Bytes, MmapRegion, VolatileMemory};

use super::{Dma, DmaBuffer};
use crate::error::{Error, ErrorKind, Result};
use crate::vfio::{MapFailure, PhysicalMemory};

/// The page size pagemap reports frames in.
pub(crate) const PAGE: u64 = 4096;
/// The huge page sizes buffers of more than a page are backed by.
pub(crate) const HUGE_2M: u64 = 2 << 20;
pub(crate) const HUGE_1G: u64 = 1 << 30;

/// Where the kernel tells a process the page frames behind its memory.
pub(crate) const PAGEMAP: &str = "/proc/self/pagemap";

/// Pagemap entry bits.
const PRESENT: u64 = 1 << 63;
const FRAME_MASK: u64 = (1 << 55) - 1;

/// Why a buffer for a device without an IOMMU could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhysicalDmaError {
    /// A buffer of 0 bytes was asked for.
    #[error("a DMA buffer of 0 bytes was asked for")]
    ZeroSize,
    /// No huge page of this size could be had: none are reserved, all are in
    /// use, or the CPU lacks the size.
    #[error(
        "no free {}-byte huge page: buffers of more than 4 KiB need huge pages for physical contiguity; \
         reserve some (/sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages, or hugepages= at boot)",
        page, page / 1024
    )]
    NoHugePages {
        /// The huge page size, in bytes.
        page: u64,
        /// The kernel's error (`ENOMEM`, or `EINVAL` for a size the CPU lacks).
        #[source]
        source: io::Error,
    },
    /// The buffer's pages are not physically contiguous.
    #[error("the buffer is not physically contiguous: its page at offset {offset:#x} does not follow the one before")]
    NotContiguous {
        /// Offset in the buffer of the first page out of place.
        offset: u64,
    },
    /// A page of the buffer is not in memory after it was locked and touched.
    #[error("pagemap shows the page at offset {offset:#x} not present")]
    NotPresent {
        /// Offset in the buffer of the page.
        offset: u64,
    },
    /// The buffer lies (partly) above the device's DMA mask.
    #[error("the buffer is at physical address {bus:#x}, ending at {last:#x}, above the device's DMA mask {limit:#x}")]
    OverMask {
        /// Its physical (bus) address.
        bus: u64,
        /// Its last byte's address.
        last: u64,
        /// The highest address the device can reach.
        limit: u64,
    },
    /// A system call failed.
    #[error("{step} failed")]
    System {
        /// What was being done ("map memory", "lock memory", "read /proc/self/pagemap").
        step: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl PhysicalDmaError {
    /// The [`ErrorKind`] of an [`Error::PhysicalDma`] with this source.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            PhysicalDmaError::ZeroSize => ErrorKind::InvalidInput,
            PhysicalDmaError::NoHugePages { .. }
            | PhysicalDmaError::NotContiguous { .. }
            | PhysicalDmaError::OverMask { .. } => ErrorKind::ResourceExhausted,
            PhysicalDmaError::NotPresent { .. } | PhysicalDmaError::System { .. } => ErrorKind::Io,
        }
    }
}

/// What a pagemap entry says of its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// In memory at this page frame number.
    At(u64),
    /// In memory, but the frame number is hidden: 0, as the kernel shows it
    /// to a process without `CAP_SYS_ADMIN`.
    Hidden,
    /// Not in memory (never touched, or swapped out).
    Absent,
}

/// Parses one `/proc/self/pagemap` entry.
pub(crate) fn parse_entry(entry: u64) -> Frame {
    match (entry & PRESENT != 0, entry & FRAME_MASK) {
        (false, _) => Frame::Absent,
        (true, 0) => Frame::Hidden,
        (true, frame) => Frame::At(frame),
    }
}

/// Why [`contiguous_base`] found no address.
#[derive(Debug)]
pub(crate) enum BaseError {
    /// The kernel hid the frame numbers: the capability is missing.
    Hidden,
    /// Another problem.
    Dma(PhysicalDmaError),
}

/// The physical address of memory whose 4 KiB pages have the pagemap
/// `entries`, if every page is present, shown, and follows the one before.
pub(crate) fn contiguous_base(entries: &[u64]) -> std::result::Result<u64, BaseError> {
    let mut first = None;
    for (i, &entry) in entries.iter().enumerate() {
        let offset = i as u64 * PAGE;
        let frame = match parse_entry(entry) {
            Frame::At(frame) => frame,
            Frame::Hidden => return Err(BaseError::Hidden),
            Frame::Absent => return Err(BaseError::Dma(PhysicalDmaError::NotPresent { offset })),
        };
        let base = *first.get_or_insert(frame);
        if frame != base + i as u64 {
            return Err(BaseError::Dma(PhysicalDmaError::NotContiguous { offset }));
        }
    }
    first
        .map(|frame| frame * PAGE)
        .ok_or(BaseError::Dma(PhysicalDmaError::ZeroSize))
}

/// The page size that backs a buffer of `size` bytes: an ordinary page up
/// to 4 KiB, one 2 MiB huge page up to 2 MiB, 1 GiB huge pages beyond.
pub(crate) fn backing_page(size: u64) -> u64 {
    if size <= PAGE {
        PAGE
    } else if size <= HUGE_2M {
        HUGE_2M
    } else {
        HUGE_1G
    }
}

impl Dma {
    /// [`Dma::alloc`] for a device without an IOMMU: locked memory whose
    /// physical address is the device's address for it.
    pub(super) fn alloc_physical(&self, size: usize, memory: &dyn PhysicalMemory) -> Result<DmaBuffer> {
        let addr = self.device().address();
        let fail = |source| self.physical_error(size, source);
        if size == 0 {
            return Err(fail(PhysicalDmaError::ZeroSize));
        }
        let page = backing_page(size as u64);
        let len = (size as u64)
            .div_ceil(page)
            .checked_mul(page)
            .filter(|&len| usize::try_from(len).is_ok())
            .ok_or_else(|| {
                fail(PhysicalDmaError::System {
                    step: "round the size up to whole pages",
                    source: io::Error::from_raw_os_error(libc::ENOMEM),
                })
            })?;
        let retired = self.device().retired_dma();
        let (region, reused) = match retired.take(len as usize, page) {
            Some(region) => {
                zero(&region);
                (region, true)
            }
            None => {
                let region = memory
                    .map(len as usize, page)
                    .map_err(|failure| fail(map_failure(failure, page)))?;
                touch(&region, page);
                (region, false)
            }
        };
        let bus = match self.place(&region, size, memory) {
            Ok(bus) => bus,
            Err(e) => {
                if reused {
                    // The device may still write it: it stays retired.
                    retired.keep(page, region);
                }
                return Err(e);
            }
        };
        log::trace!(
            "{addr}: {len:#x} bytes of locked memory ({}) for DMA at physical address {bus:#x}",
            if reused { "reused" } else { "new" }
        );
        Ok(DmaBuffer::physical(self.clone(), bus, page, region))
    }

    /// The error of a buffer of `size` bytes (the size asked for) that could
    /// not be made.
    fn physical_error(&self, size: usize, source: PhysicalDmaError) -> Error {
        Error::PhysicalDma {
            addr: self.device().address(),
            interface: self.container().interface(),
            len: size as u64,
            source,
        }
    }

    /// The physical address of `region`, checked to be contiguous and under
    /// the device's mask (errors name `size`, the size asked for).
    fn place(&self, region: &MmapRegion, size: usize, memory: &dyn PhysicalMemory) -> Result<u64> {
        let (addr, interface) = (self.device().address(), self.container().interface());
        let fail = |source| self.physical_error(size, source);
        let len = region.size() as u64;
        let mut entries = vec![0u64; (len / PAGE) as usize];
        memory
            .pagemap(region.as_ptr() as u64 / PAGE, &mut entries)
            .map_err(|source| {
                fail(PhysicalDmaError::System {
                    step: "read /proc/self/pagemap",
                    source,
                })
            })?;
        let bus = contiguous_base(&entries).map_err(|e| match e {
            BaseError::Hidden => Error::MissingCapability {
                addr,
                interface,
                step: "reading physical addresses (pagemap shows frame 0)",
                path: PAGEMAP.into(),
                capability: "CAP_SYS_ADMIN",
                source: None,
            },
            BaseError::Dma(source) => fail(source),
        })?;
        let last = bus + (len - 1);
        let limit = self.mask().limit();
        if last > limit {
            return Err(fail(PhysicalDmaError::OverMask { bus, last, limit }));
        }
        Ok(bus)
    }
}

/// What a failed [`PhysicalMemory::map`] of pages of `page` bytes means: no
/// huge page to be had when `mmap` of huge pages fails with `ENOMEM` or
/// `EINVAL`, otherwise the failed step (a locking limit is `mlock`'s).
pub(crate) fn map_failure(failure: MapFailure, page: u64) -> PhysicalDmaError {
    match failure {
        MapFailure::Map(source)
            if page > PAGE && matches!(source.raw_os_error(), Some(libc::ENOMEM | libc::EINVAL)) =>
        {
            PhysicalDmaError::NoHugePages { page, source }
        }
        MapFailure::Map(source) => PhysicalDmaError::System {
            step: "map memory",
            source,
        },
        MapFailure::Lock(source) => PhysicalDmaError::System {
            step: "lock memory (mlock: RLIMIT_MEMLOCK?)",
            source,
        },
    }
}

/// Memory of dropped no-IOMMU buffers. Nothing revokes a device's access to
/// physical memory, so a dropped buffer's memory is not given back to the
/// kernel while the device is open: it stays locked at its physical address,
/// kept here (the device's, freed after the device is closed, when vfio-pci
/// has turned its bus mastering off) and handed, zeroed, to the next buffer
/// of the same size and page size.
#[derive(Default)]
pub(crate) struct RetiredMemory(Mutex<Vec<(u64, MmapRegion)>>);

impl RetiredMemory {
    /// Keeps `region`, backed by pages of `page` bytes.
    pub(crate) fn keep(&self, page: u64, region: MmapRegion) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((page, region));
    }

    /// A kept region of `len` bytes in pages of `page` bytes, if there is one.
    fn take(&self, len: usize, page: u64) -> Option<MmapRegion> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = kept
            .iter()
            .position(|(p, region)| *p == page && region.size() == len)?;
        Some(kept.swap_remove(at).1)
    }

    /// How many regions are kept.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Zeroes `region`, a reused buffer's memory.
fn zero(region: &MmapRegion) {
    const ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];
    let slice = region.as_volatile_slice();
    for offset in (0..region.size()).step_by(ZEROS.len()) {
        let n = ZEROS.len().min(region.size() - offset);
        let _ = slice.write_slice(&ZEROS[..n], offset);
    }
}

/// Writes a zero to each `page` of fresh (zeroed) memory, so that each is
/// in memory with a frame of its own before pagemap is read.
fn touch(region: &MmapRegion, page: u64) {
    for offset in (0..region.size() as u64).step_by(page as usize) {
        if let Ok(slice) = region.get_slice(offset as usize, 1) {
            let _ = slice.write_obj(0u8, 0);
        }
    }
}
