//! A region's slow path: what serves the accesses that no direct mapping
//! does.

use std::io;
use std::sync::Arc;

use crate::region::{FdRegion, RegionIo};

/// A region's slow path: a descriptor, called directly with one
/// `pread`/`pwrite` per access (a VFIO device's regions, and regions built
/// with [`crate::Region::fd_builder`]), or any [`RegionIo`].
pub(crate) enum SlowPath {
    Fd(FdRegion),
    Any(Arc<dyn RegionIo>),
}

impl SlowPath {
    /// The slow path as the fault handler's table holds it.
    pub(crate) fn shared(&self) -> Arc<dyn RegionIo> {
        match self {
            SlowPath::Fd(io) => Arc::new(io.clone()),
            SlowPath::Any(io) => io.clone(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        match self {
            SlowPath::Fd(io) => io.size(),
            SlowPath::Any(io) => io.size(),
        }
    }

    /// Reads `buf.len()` bytes at `offset`, which the caller found inside
    /// the region: for a descriptor, one inlined `pread` without checking
    /// the bounds again.
    #[inline(always)]
    pub(super) fn read_inside(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            SlowPath::Fd(io) => io.read_inside(offset, buf),
            SlowPath::Any(io) => io.read_at(offset, buf),
        }
    }

    /// Writes `data` at `offset`, which the caller found inside the region.
    #[inline(always)]
    pub(super) fn write_inside(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self {
            SlowPath::Fd(io) => io.write_inside(offset, data),
            SlowPath::Any(io) => io.write_at(offset, data),
        }
    }
}
