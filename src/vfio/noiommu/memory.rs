//! Memory for DMA without an IOMMU from the running kernel: anonymous
//! shared mappings (`MAP_HUGETLB` for huge pages), locked with `mlock`, and
//! their page frames from `/proc/self/pagemap`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::MmapRegion;

use crate::dma::physical::{HUGE_1G, HUGE_2M, PAGEMAP};
use crate::vfio::backend::{MapFailure, PhysicalMemory};

/// This process's memory, as the running kernel gives it.
pub(crate) struct ProcMemory;

impl PhysicalMemory for ProcMemory {
    fn map(&self, len: usize, page: u64) -> Result<MmapRegion, MapFailure> {
        let huge = match page {
            HUGE_2M => libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            HUGE_1G => libc::MAP_HUGETLB | libc::MAP_HUGE_1GB,
            _ => 0,
        };
        let region = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_ANONYMOUS | huge)
            .build()
            .map_err(|e| match e {
                MmapRegionError::Mmap(e) => MapFailure::Map(e),
                other => MapFailure::Map(io::Error::other(other)),
            })?;
        // SAFETY: `region` is a mapping of `len` bytes this function owns;
        // mlock only pins its pages (and faults them in), and munmap at the
        // region's drop unlocks them.
        if unsafe { libc::mlock(region.as_ptr().cast(), len) } != 0 {
            return Err(MapFailure::Lock(io::Error::last_os_error()));
        }
        Ok(region)
    }

    fn pagemap(&self, first: u64, entries: &mut [u64]) -> io::Result<()> {
        let mut bytes = vec![0u8; entries.len() * 8];
        File::open(PAGEMAP)?.read_exact_at(&mut bytes, first * 8)?;
        for (entry, raw) in entries.iter_mut().zip(bytes.chunks_exact(8)) {
            *entry = u64::from_ne_bytes(raw.try_into().unwrap_or_default());
        }
        Ok(())
    }
}
