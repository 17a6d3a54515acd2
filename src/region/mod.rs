//! VFIO regions: which ones a device has, their size, file offset, flags and
//! capabilities, and the slow-path I/O trait every region access falls back to.

mod caps;
mod index;
mod info;
mod io;
mod memory;

pub use caps::{parse_region_caps, CapChainError, RegionCap, SparseArea};
pub(crate) use caps::{u32_at, u64_at};
pub use index::{ParseRegionError, RegionIndex};
pub use info::{RegionFlags, RegionInfo};
pub(crate) use io::{pread_exact, pwrite_all};
pub use io::{FdRegion, RegionIo};
pub use memory::MemoryRegion;
