//! Parser for the capability chain that `VFIO_DEVICE_GET_REGION_INFO` appends
//! to a region's info.
//!
//! The chain is a linked list inside the info buffer: each capability starts
//! with `{ id: u16, version: u16, next: u32 }`, where `next` is the byte offset
//! of the following capability from the start of the buffer and 0 ends the
//! list. The parser works on the raw bytes, checks every offset and length
//! against the buffer and refuses loops, so a malformed chain is an error,
//! never a panic, an out-of-bounds read or a hang.

use std::mem::size_of;

use vfio_bindings::bindings::vfio::{
    vfio_info_cap_header, vfio_region_info, vfio_region_sparse_mmap_area, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE,
};

use crate::error::{Error, Result};

/// One mmapable area of a region, in region offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset of the area from the start of the region.
    pub offset: u64,
    /// Size of the area in bytes.
    pub size: u64,
}

/// A capability of a VFIO region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionCap {
    /// Only these areas of the region may be mmapped (`VFIO_REGION_INFO_CAP_SPARSE_MMAP`).
    SparseMmap(Vec<SparseArea>),
    /// A device-specific region type (`VFIO_REGION_INFO_CAP_TYPE`).
    Type {
        /// Region type.
        type_: u32,
        /// Region subtype.
        subtype: u32,
    },
    /// The BAR holding the MSI-X table may be mmapped whole (`VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`).
    MsixMappable,
    /// A capability barmap does not interpret.
    Unknown {
        /// Capability id.
        id: u16,
        /// Capability version.
        version: u16,
    },
}

const HEADER_LEN: usize = size_of::<vfio_info_cap_header>();
const INFO_LEN: usize = size_of::<vfio_region_info>();
const AREA_LEN: usize = size_of::<vfio_region_sparse_mmap_area>();

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

fn malformed(offset: usize, reason: &'static str) -> Error {
    Error::MalformedCapability { offset, reason }
}

/// Parses the capability chain of a region info buffer.
///
/// `buf` is the whole buffer the kernel filled (starting with the
/// `vfio_region_info` header) and `first` is its `cap_offset` field; 0 means
/// the region has no capabilities.
///
/// ```
/// use barmap::{parse_region_caps, RegionCap};
/// let mut buf = vec![0u8; 40];
/// buf[32..34].copy_from_slice(&3u16.to_le_bytes()); // MSI-X mappable, version 1, next 0
/// buf[34..36].copy_from_slice(&1u16.to_le_bytes());
/// assert_eq!(parse_region_caps(&buf, 32).unwrap(), vec![RegionCap::MsixMappable]);
/// assert!(parse_region_caps(&buf, 36).is_err()); // header past the end
/// ```
pub fn parse_region_caps(buf: &[u8], first: u32) -> Result<Vec<RegionCap>> {
    let mut caps = Vec::new();
    let mut visited: Vec<usize> = Vec::new();
    let mut at = first as usize;
    while at != 0 {
        if at < INFO_LEN {
            return Err(malformed(at, "capability overlaps the region info header"));
        }
        if at % 4 != 0 {
            return Err(malformed(at, "capability is not 4-byte aligned"));
        }
        if visited.contains(&at) {
            return Err(malformed(at, "capability chain loops"));
        }
        visited.push(at);
        let (id, version, next) = match (u16_at(buf, at), u16_at(buf, at + 2), u32_at(buf, at + 4)) {
            (Some(id), Some(version), Some(next)) => (id, version, next),
            _ => return Err(malformed(at, "capability header runs past the end of the buffer")),
        };
        let body = at + HEADER_LEN;
        let cap = match u32::from(id) {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let count = u32_at(buf, body)
                    .ok_or_else(|| malformed(at, "sparse-mmap capability truncated before its area count"))?;
                let areas_at = body + 8;
                let end = (count as usize)
                    .checked_mul(AREA_LEN)
                    .and_then(|len| len.checked_add(areas_at))
                    .filter(|end| *end <= buf.len())
                    .ok_or_else(|| malformed(at, "sparse-mmap areas run past the end of the buffer"))?;
                let areas = (areas_at..end)
                    .step_by(AREA_LEN)
                    .map(|a| {
                        let offset = u64_at(buf, a).unwrap_or_default();
                        let size = u64_at(buf, a + 8).unwrap_or_default();
                        SparseArea { offset, size }
                    })
                    .collect();
                RegionCap::SparseMmap(areas)
            }
            VFIO_REGION_INFO_CAP_TYPE => match (u32_at(buf, body), u32_at(buf, body + 4)) {
                (Some(type_), Some(subtype)) => RegionCap::Type { type_, subtype },
                _ => return Err(malformed(at, "type capability runs past the end of the buffer")),
            },
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => RegionCap::MsixMappable,
            _ => RegionCap::Unknown { id, version },
        };
        caps.push(cap);
        at = next as usize;
    }
    Ok(caps)
}
