//! What the kernel says about one region.

use std::fmt;

use vfio_bindings::bindings::vfio::{
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

use super::{RegionCap, RegionIndex, SparseArea};

/// The access flags VFIO reports for a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RegionFlags(u32);

impl RegionFlags {
    /// Readable and writable, not mmapable: what a region reached only
    /// through its [`super::RegionIo`] allows.
    pub const READ_WRITE: RegionFlags = RegionFlags(VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE);

    /// Flags from the `flags` word of a `vfio_region_info`.
    pub const fn from_bits(bits: u32) -> RegionFlags {
        RegionFlags(bits)
    }

    /// The `flags` word as the kernel reported it (including bits barmap does
    /// not interpret, such as `VFIO_REGION_INFO_FLAG_CAPS`).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The region can be read (pread).
    pub fn readable(self) -> bool {
        self.0 & VFIO_REGION_INFO_FLAG_READ != 0
    }

    /// The region can be written (pwrite).
    pub fn writable(self) -> bool {
        self.0 & VFIO_REGION_INFO_FLAG_WRITE != 0
    }

    /// The region (or the areas its sparse-mmap capability lists) can be mmapped.
    pub fn mmapable(self) -> bool {
        self.0 & VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

impl fmt::Display for RegionFlags {
    /// `rw-`-style: `r`, `w`, then `m` for mmap.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bit = |set: bool, c: char| if set { c } else { '-' };
        write!(
            f,
            "{}{}{}",
            bit(self.readable(), 'r'),
            bit(self.writable(), 'w'),
            bit(self.mmapable(), 'm')
        )
    }
}

/// One region of a VFIO device, as `VFIO_DEVICE_GET_REGION_INFO` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegionInfo {
    /// Which region this is.
    pub index: RegionIndex,
    /// Size in bytes (0 for an unimplemented BAR).
    pub size: u64,
    /// Offset of the region in the device file descriptor, for pread/pwrite/mmap.
    pub offset: u64,
    /// Access flags.
    pub flags: RegionFlags,
    /// Capabilities parsed from the info's capability chain.
    pub caps: Vec<RegionCap>,
}

impl RegionInfo {
    /// A region's info from its parts.
    pub fn new(index: RegionIndex, size: u64, offset: u64, flags: RegionFlags, caps: Vec<RegionCap>) -> Self {
        RegionInfo {
            index,
            size,
            offset,
            flags,
            caps,
        }
    }

    /// The parts of the region the kernel lets us mmap, in region offsets.
    ///
    /// A region without the mmap flag has none; one with a sparse-mmap
    /// capability has exactly the areas listed there (possibly none); any other
    /// mmapable region is mmapable as a whole. The areas are as the kernel gave
    /// them: the mapping code checks them against the region and page size.
    pub fn mmap_areas(&self) -> Vec<SparseArea> {
        if !self.flags.mmapable() || self.size == 0 {
            return Vec::new();
        }
        self.caps
            .iter()
            .find_map(|cap| match cap {
                RegionCap::SparseMmap(areas) => Some(areas.clone()),
                _ => None,
            })
            .unwrap_or_else(|| {
                vec![SparseArea {
                    offset: 0,
                    size: self.size,
                }]
            })
    }

    /// Whether the region carries the MSI-X-mappable capability.
    pub fn msix_mappable(&self) -> bool {
        self.caps.contains(&RegionCap::MsixMappable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(flags: u32, caps: Vec<RegionCap>) -> RegionInfo {
        RegionInfo::new(RegionIndex::new(0), 0x4000, 0, RegionFlags(flags), caps)
    }

    #[test]
    fn mmap_areas_follow_flags_and_sparse_cap() {
        assert!(info(0x3, vec![]).mmap_areas().is_empty());
        assert_eq!(
            info(0x7, vec![]).mmap_areas(),
            vec![SparseArea {
                offset: 0,
                size: 0x4000
            }]
        );
        let sparse = vec![SparseArea {
            offset: 0x1000,
            size: 0x1000,
        }];
        assert_eq!(
            info(0xf, vec![RegionCap::SparseMmap(sparse.clone())]).mmap_areas(),
            sparse
        );
        assert!(info(0xf, vec![RegionCap::SparseMmap(vec![])])
            .mmap_areas()
            .is_empty());
        assert_eq!(RegionFlags(0x7).to_string(), "rwm");
        assert_eq!(RegionFlags(0x1).to_string(), "r--");
    }
}
