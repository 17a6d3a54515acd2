//! The type1 IOMMU's info (`VFIO_IOMMU_GET_INFO`): page sizes, valid IOVA
//! ranges and how many more DMA mappings the kernel allows.
//!
//! vfio-ioctls has no call for this ioctl and parses none of its
//! capabilities, so barmap issues it itself and parses the raw buffer here,
//! bounds-checked like the region capability chain.

use std::mem::{offset_of, size_of};
use std::ops::RangeInclusive;

use vfio_bindings::bindings::vfio::{
    vfio_info_cap_header, vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range,
    vfio_iommu_type1_info_dma_avail, vfio_iova_range, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};

use crate::region::{u32_at, u64_at, CapChainError};

/// What barmap uses of the IOMMU info.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IommuInfo {
    /// Bitmap of the supported IOMMU page sizes (0 if not reported).
    pub pgsizes: u64,
    /// The valid IOVA ranges; all of the 64-bit space on kernels before v5.4,
    /// which do not report them.
    pub ranges: Vec<RangeInclusive<u64>>,
    /// How many more DMA mappings the container may hold; `None` on kernels
    /// before v5.10, which do not report it.
    pub dma_avail: Option<u32>,
}

impl IommuInfo {
    /// The smallest IOMMU page size (4 KiB if none is reported).
    pub fn granule(&self) -> u64 {
        if self.pgsizes == 0 {
            4096
        } else {
            1 << self.pgsizes.trailing_zeros()
        }
    }
}

/// Most capabilities followed before a chain is taken for a loop.
const MAX_CAPS: usize = 64;

fn malformed(offset: usize, reason: &'static str) -> CapChainError {
    CapChainError { offset, reason }
}

/// Parses a `VFIO_IOMMU_GET_INFO` buffer (header and capability chain).
pub(crate) fn parse_iommu_info(buf: &[u8]) -> Result<IommuInfo, CapChainError> {
    let flags =
        u32_at(buf, offset_of!(vfio_iommu_type1_info, flags)).ok_or(malformed(0, "truncated header"))?;
    let pgsizes = if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
        u64_at(buf, offset_of!(vfio_iommu_type1_info, iova_pgsizes))
            .ok_or(malformed(0, "truncated header"))?
    } else {
        0
    };
    let mut info = IommuInfo {
        pgsizes,
        ranges: vec![0..=u64::MAX],
        dma_avail: None,
    };
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(info);
    }
    let mut at = u32_at(buf, offset_of!(vfio_iommu_type1_info, cap_offset)).unwrap_or(0) as usize;
    let mut seen = 0;
    while at != 0 {
        seen += 1;
        if seen > MAX_CAPS {
            return Err(malformed(at, "the chain loops"));
        }
        if at < size_of::<vfio_iommu_type1_info>() || !at.is_multiple_of(4) {
            return Err(malformed(at, "capability inside the header or misaligned"));
        }
        let id = buf
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(malformed(at, "capability header past the end"))?;
        let next = u32_at(buf, at + offset_of!(vfio_info_cap_header, next))
            .ok_or(malformed(at, "capability header past the end"))?;
        match u32::from(id) {
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let count_at = at + offset_of!(vfio_iommu_type1_info_cap_iova_range, nr_iovas);
                let count = u32_at(buf, count_at).ok_or(malformed(at, "IOVA range count past the end"))?;
                let first = at + offset_of!(vfio_iommu_type1_info_cap_iova_range, iova_ranges);
                let ranges = (0..count as usize)
                    .map(|i| {
                        let entry = first + i * size_of::<vfio_iova_range>();
                        let start = u64_at(buf, entry + offset_of!(vfio_iova_range, start));
                        let end = u64_at(buf, entry + offset_of!(vfio_iova_range, end));
                        match (start, end) {
                            (Some(s), Some(e)) if s <= e => Ok(s..=e),
                            (Some(_), Some(_)) => Err(malformed(at, "IOVA range ends before it starts")),
                            _ => Err(malformed(at, "IOVA ranges past the end")),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                info.ranges = ranges;
            }
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                let avail = u32_at(buf, at + offset_of!(vfio_iommu_type1_info_dma_avail, avail))
                    .ok_or(malformed(at, "DMA-available count past the end"))?;
                info.dma_avail = Some(avail);
            }
            _ => {}
        }
        at = next as usize;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, pgsizes: u64, cap_offset: u32) -> Vec<u8> {
        let mut buf = vec![];
        buf.extend(0u32.to_ne_bytes()); // argsz, filled in by `finish`
        buf.extend(flags.to_ne_bytes());
        buf.extend(pgsizes.to_ne_bytes());
        buf.extend(cap_offset.to_ne_bytes());
        buf.extend(0u32.to_ne_bytes());
        buf
    }

    fn cap(buf: &mut Vec<u8>, id: u16, next: u32, body: &[u8]) {
        buf.extend(id.to_ne_bytes());
        buf.extend(1u16.to_ne_bytes());
        buf.extend(next.to_ne_bytes());
        buf.extend(body);
    }

    /// What the guest's intel-iommu reports: the MSI window reserved, 39 bits,
    /// and the default limit of 65535 mappings.
    #[test]
    fn intel_iommu_ranges_and_dma_avail() {
        let mut buf = header(VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS, 0x4020_1000, 24);
        let mut ranges = vec![];
        ranges.extend(2u32.to_ne_bytes());
        ranges.extend(0u32.to_ne_bytes());
        for v in [0u64, 0xfedf_ffff, 0xfef0_0000, 0x7f_ffff_ffff] {
            ranges.extend(v.to_ne_bytes());
        }
        let next = (24 + 8 + ranges.len()) as u32;
        cap(
            &mut buf,
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16,
            next,
            &ranges,
        );
        cap(
            &mut buf,
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as u16,
            0,
            &65535u32.to_ne_bytes(),
        );
        let info = parse_iommu_info(&buf).unwrap();
        assert_eq!(info.granule(), 0x1000);
        assert_eq!(info.ranges, vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff]);
        assert_eq!(info.dma_avail, Some(65535));
    }

    #[test]
    fn old_kernels_without_capabilities_give_the_whole_space() {
        let info = parse_iommu_info(&header(VFIO_IOMMU_INFO_PGSIZES, 0x1000, 0)).unwrap();
        assert_eq!(info.ranges, vec![0..=u64::MAX]);
        assert_eq!(info.dma_avail, None);
    }

    #[test]
    fn malformed_chains_are_errors() {
        let flags = VFIO_IOMMU_INFO_CAPS;
        let mut looping = header(flags, 0, 24);
        cap(&mut looping, 99, 24, &[]);
        assert_eq!(parse_iommu_info(&looping).unwrap_err().reason, "the chain loops");
        assert!(parse_iommu_info(&header(flags, 0, 4)).is_err());
        assert!(parse_iommu_info(&header(flags, 0, 64)).is_err());
        let mut short = header(flags, 0, 24);
        cap(
            &mut short,
            VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16,
            0,
            &5u32.to_ne_bytes(),
        );
        short.extend(0u32.to_ne_bytes());
        assert!(parse_iommu_info(&short).is_err());
        assert!(parse_iommu_info(&[0; 4]).is_err());
    }
}
