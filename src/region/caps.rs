//! Parser for the capability chain that `VFIO_DEVICE_GET_REGION_INFO` appends
//! to a region's info.
//!
//! The chain is a linked list inside the info buffer: each capability starts
//! with `{ id: u16, version: u16, next: u32 }`, where `next` is the byte offset
//! of the following capability from the start of the buffer and 0 ends the
//! list. The parser works on the raw bytes, checks every offset and length
//! against the buffer and refuses loops, so a malformed chain is an error,
//! never a panic, an out-of-bounds read or a hang.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use vfio_bindings::bindings::vfio::{
    vfio_info_cap_header, vfio_region_info, vfio_region_info_cap_sparse_mmap, vfio_region_info_cap_type,
    vfio_region_sparse_mmap_area, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE,
};

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
const SPARSE_COUNT: usize = offset_of!(vfio_region_info_cap_sparse_mmap, nr_areas);
const SPARSE_AREAS: usize = offset_of!(vfio_region_info_cap_sparse_mmap, areas);
const AREA_OFFSET: usize = offset_of!(vfio_region_sparse_mmap_area, offset);
const AREA_SIZE: usize = offset_of!(vfio_region_sparse_mmap_area, size);
const TYPE_TYPE: usize = offset_of!(vfio_region_info_cap_type, type_);
const TYPE_SUBTYPE: usize = offset_of!(vfio_region_info_cap_type, subtype);
const TYPE_LEN: usize = size_of::<vfio_region_info_cap_type>();
const ID: usize = offset_of!(vfio_info_cap_header, id);
const VERSION: usize = offset_of!(vfio_info_cap_header, version);
const NEXT: usize = offset_of!(vfio_info_cap_header, next);

/// The `N` bytes at `at`, if the buffer holds them. The kernel fills info
/// buffers in the CPU's byte order, so the readers below use native order.
fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    bytes_at(buf, at).map(u16::from_ne_bytes)
}

/// The native-order `u32` at `at`.
pub(crate) fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    bytes_at(buf, at).map(u32::from_ne_bytes)
}

/// The native-order `u64` at `at`.
pub(crate) fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    bytes_at(buf, at).map(u64::from_ne_bytes)
}

/// A malformed capability chain: where and what is wrong. [`crate::Device`]
/// reports it as [`crate::Error::MalformedCapability`] with the device and region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed VFIO capability chain at byte {offset}: {reason}")]
pub struct CapChainError {
    /// Byte offset in the info buffer of the offending capability.
    pub offset: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// What the chain parser returns.
type Result<T> = std::result::Result<T, CapChainError>;

fn malformed(offset: usize, reason: &'static str) -> CapChainError {
    CapChainError { offset, reason }
}

/// Parses the capability chain of a region info buffer.
///
/// `buf` is the whole buffer the kernel filled (starting with the
/// `vfio_region_info` header) and `first` is its `cap_offset` field; 0 means
/// the region has no capabilities. Capabilities are returned in chain order.
///
/// Every capability must start 4-byte aligned after the info header, lie
/// wholly inside `buf` and not overlap another one (of a capability barmap
/// does not interpret, only the 8-byte header counts). Anything else, and a
/// chain that loops, is a [`CapChainError`] with the byte offset of
/// the offending capability.
///
/// ```
/// use barmap::region::{parse_region_caps, RegionCap};
/// let mut buf = vec![0u8; 40];
/// buf[32..34].copy_from_slice(&3u16.to_ne_bytes()); // MSI-X mappable, version 1, next 0
/// buf[34..36].copy_from_slice(&1u16.to_ne_bytes());
/// assert_eq!(parse_region_caps(&buf, 32).unwrap(), vec![RegionCap::MsixMappable]);
/// assert!(parse_region_caps(&buf, 36).is_err()); // header past the end
/// ```
pub fn parse_region_caps(buf: &[u8], first: u32) -> Result<Vec<RegionCap>> {
    let mut caps = Vec::new();
    // Start -> end of every capability parsed so far; they never overlap.
    let mut extents = BTreeMap::new();
    let mut at = first as usize;
    while at != 0 {
        if at < INFO_LEN {
            return Err(malformed(at, "capability overlaps the region info header"));
        }
        if !at.is_multiple_of(4) {
            return Err(malformed(at, "capability is not 4-byte aligned"));
        }
        if extents.contains_key(&at) {
            return Err(malformed(at, "capability chain loops"));
        }
        // Past here `at` is below `buf.len()`, so the field offsets added to
        // it below cannot overflow, on 32-bit targets either.
        if at >= buf.len() {
            return Err(malformed(at, "capability header runs past the end of the buffer"));
        }
        let (id, version, next) = match (
            u16_at(buf, at + ID),
            u16_at(buf, at + VERSION),
            u32_at(buf, at + NEXT),
        ) {
            (Some(id), Some(version), Some(next)) => (id, version, next),
            _ => return Err(malformed(at, "capability header runs past the end of the buffer")),
        };
        let (cap, len) = match u32::from(id) {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => parse_sparse(buf, at)?,
            VFIO_REGION_INFO_CAP_TYPE => {
                match (u32_at(buf, at + TYPE_TYPE), u32_at(buf, at + TYPE_SUBTYPE)) {
                    (Some(type_), Some(subtype)) => (RegionCap::Type { type_, subtype }, TYPE_LEN),
                    _ => return Err(malformed(at, "type capability runs past the end of the buffer")),
                }
            }
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => (RegionCap::MsixMappable, HEADER_LEN),
            _ => (RegionCap::Unknown { id, version }, HEADER_LEN),
        };
        let end = at + len;
        let overlaps = extents.range(..end).next_back().is_some_and(|(_, &e)| e > at);
        if overlaps {
            return Err(malformed(at, "capability overlaps another capability"));
        }
        extents.insert(at, end);
        caps.push(cap);
        at = next as usize;
    }
    Ok(caps)
}

/// Parses the sparse-mmap capability at `at`; returns it and its length in bytes.
fn parse_sparse(buf: &[u8], at: usize) -> Result<(RegionCap, usize)> {
    let count = u32_at(buf, at + SPARSE_COUNT)
        .ok_or_else(|| malformed(at, "sparse-mmap capability truncated before its area count"))?;
    // Bound the whole array before reading it, so a huge count fails at once.
    let len = (count as usize)
        .checked_mul(AREA_LEN)
        .and_then(|areas| areas.checked_add(SPARSE_AREAS))
        .filter(|len| at.checked_add(*len).is_some_and(|end| end <= buf.len()))
        .ok_or_else(|| malformed(at, "sparse-mmap areas run past the end of the buffer"))?;
    let areas = (at + SPARSE_AREAS..at + len)
        .step_by(AREA_LEN)
        .map(|a| {
            Some(SparseArea {
                offset: u64_at(buf, a + AREA_OFFSET)?,
                size: u64_at(buf, a + AREA_SIZE)?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| malformed(at, "sparse-mmap area runs past the end of the buffer"))?;
    Ok((RegionCap::SparseMmap(areas), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPARSE: u16 = VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16;
    const TYPE: u16 = VFIO_REGION_INFO_CAP_TYPE as u16;
    const MSIX: u16 = VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16;

    /// Builds an info buffer: the 32-byte `vfio_region_info` header, then
    /// capabilities appended one after another (8-byte aligned, as the kernel
    /// lays them out), with `next` fields set explicitly.
    struct Fixture {
        buf: Vec<u8>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                buf: vec![0xAA; INFO_LEN],
            }
        }

        /// Appends a capability with `next = 0`; returns its offset.
        fn cap(&mut self, id: u16, version: u16, body: &[u8]) -> u32 {
            let at = self.buf.len();
            self.buf.extend_from_slice(&id.to_ne_bytes());
            self.buf.extend_from_slice(&version.to_ne_bytes());
            self.buf.extend_from_slice(&0u32.to_ne_bytes());
            self.buf.extend_from_slice(body);
            assert_eq!(
                self.buf.len() % 8,
                0,
                "fixture capabilities must keep 8-byte alignment"
            );
            at as u32
        }

        fn sparse(&mut self, areas: &[(u64, u64)]) -> u32 {
            self.sparse_with_count(areas.len() as u32, areas)
        }

        fn sparse_with_count(&mut self, count: u32, areas: &[(u64, u64)]) -> u32 {
            let mut body = count.to_ne_bytes().to_vec();
            body.extend_from_slice(&0u32.to_ne_bytes());
            for (offset, size) in areas {
                body.extend_from_slice(&offset.to_ne_bytes());
                body.extend_from_slice(&size.to_ne_bytes());
            }
            self.cap(SPARSE, 1, &body)
        }

        fn type_(&mut self, type_: u32, subtype: u32) -> u32 {
            let mut body = type_.to_ne_bytes().to_vec();
            body.extend_from_slice(&subtype.to_ne_bytes());
            self.cap(TYPE, 1, &body)
        }

        fn msix(&mut self) -> u32 {
            self.cap(MSIX, 1, &[])
        }

        fn set_next(&mut self, at: u32, next: u32) {
            let at = at as usize + NEXT;
            self.buf[at..at + 4].copy_from_slice(&next.to_ne_bytes());
        }

        /// Links the capabilities in the given order; returns the first offset.
        fn chain(&mut self, order: &[u32]) -> u32 {
            for pair in order.windows(2) {
                self.set_next(pair[0], pair[1]);
            }
            order.first().copied().unwrap_or(0)
        }

        fn parse(&self, first: u32) -> Result<Vec<RegionCap>> {
            parse_region_caps(&self.buf, first)
        }
    }

    fn area(offset: u64, size: u64) -> SparseArea {
        SparseArea { offset, size }
    }

    /// Asserts a `MalformedCapability` error found at `offset`.
    #[track_caller]
    fn assert_malformed(result: Result<Vec<RegionCap>>, offset: usize) {
        match result {
            Err(CapChainError { offset: got, reason }) => {
                assert_eq!(got, offset, "wrong offset for {reason:?}")
            }
            other => panic!("expected MalformedCapability at {offset}, got {other:?}"),
        }
    }

    #[test]
    fn no_capabilities() {
        assert_eq!(parse_region_caps(&[0; INFO_LEN], 0).unwrap(), vec![]);
        assert_eq!(parse_region_caps(&[], 0).unwrap(), vec![]);
        let mut f = Fixture::new();
        f.msix();
        assert_eq!(
            f.parse(0).unwrap(),
            vec![],
            "cap_offset 0 means none, whatever follows"
        );
    }

    #[test]
    fn each_capability_alone() {
        let mut f = Fixture::new();
        let at = f.sparse(&[(0x1000, 0x2000)]);
        assert_eq!(at, 32);
        assert_eq!(
            f.parse(at).unwrap(),
            vec![RegionCap::SparseMmap(vec![area(0x1000, 0x2000)])]
        );

        let mut f = Fixture::new();
        let at = f.type_(0x8086_0003, 7);
        assert_eq!(
            f.parse(at).unwrap(),
            vec![RegionCap::Type {
                type_: 0x8086_0003,
                subtype: 7
            }]
        );

        let mut f = Fixture::new();
        let at = f.msix();
        assert_eq!(f.parse(at).unwrap(), vec![RegionCap::MsixMappable]);
        assert_eq!(
            f.buf.len(),
            INFO_LEN + HEADER_LEN,
            "MSI-X mappable is a bare header"
        );
    }

    #[test]
    fn chains_in_both_orders() {
        let sparse = RegionCap::SparseMmap(vec![area(0, 0x1000), area(0x3000, 0x1000)]);
        let type_ = RegionCap::Type { type_: 1, subtype: 2 };
        let build = || {
            let mut f = Fixture::new();
            let s = f.sparse(&[(0, 0x1000), (0x3000, 0x1000)]);
            let t = f.type_(1, 2);
            let m = f.msix();
            (f, s, t, m)
        };

        // Buffer order.
        let (mut f, s, t, m) = build();
        let first = f.chain(&[s, t, m]);
        assert_eq!(
            f.parse(first).unwrap(),
            vec![sparse.clone(), type_.clone(), RegionCap::MsixMappable]
        );

        // Reverse order: every `next` points backwards.
        let (mut f, s, t, m) = build();
        let first = f.chain(&[m, t, s]);
        assert_eq!(
            f.parse(first).unwrap(),
            vec![RegionCap::MsixMappable, type_.clone(), sparse.clone()]
        );

        // Two of three, skipping the middle one, both ways.
        let (mut f, s, _, m) = build();
        let first = f.chain(&[s, m]);
        assert_eq!(
            f.parse(first).unwrap(),
            vec![sparse.clone(), RegionCap::MsixMappable]
        );
        let (mut f, s, _, m) = build();
        let first = f.chain(&[m, s]);
        assert_eq!(
            f.parse(first).unwrap(),
            vec![RegionCap::MsixMappable, sparse.clone()]
        );

        // Type then sparse.
        let (mut f, s, t, _) = build();
        let first = f.chain(&[t, s]);
        assert_eq!(f.parse(first).unwrap(), vec![type_, sparse]);
    }

    #[test]
    fn sparse_areas_are_kept_exactly() {
        const REGION: u64 = 0x10_0000;
        let areas = [
            (0, 0x1000),                // at the region start
            (0x2000, 0x3000),           // in the middle
            (0x8_0800, 0x100),          // not page aligned: reported as is
            (REGION - 0x4000, 0x4000),  // ending at the region end
            (u64::MAX - 0xfff, 0x1000), // absurd, but the parser only reports
        ];
        let mut f = Fixture::new();
        let at = f.sparse(&areas);
        let want = areas.iter().map(|&(o, s)| area(o, s)).collect::<Vec<_>>();
        assert_eq!(f.parse(at).unwrap(), vec![RegionCap::SparseMmap(want)]);
        assert_eq!(f.buf.len(), at as usize + SPARSE_AREAS + areas.len() * AREA_LEN);
    }

    #[test]
    fn sparse_with_zero_areas() {
        let mut f = Fixture::new();
        let s = f.sparse(&[]);
        let m = f.msix();
        let first = f.chain(&[s, m]);
        assert_eq!(
            f.parse(first).unwrap(),
            vec![RegionCap::SparseMmap(vec![]), RegionCap::MsixMappable]
        );
    }

    #[test]
    fn unknown_capability_is_preserved_and_skipped() {
        let mut f = Fixture::new();
        let u = f.cap(0x7f, 3, &[0xEE; 24]);
        let t = f.type_(5, 6);
        let first = f.chain(&[u, t]);
        assert_eq!(
            f.parse(first).unwrap(),
            vec![
                RegionCap::Unknown { id: 0x7f, version: 3 },
                RegionCap::Type { type_: 5, subtype: 6 }
            ]
        );
        // Id 0 is not a known capability either.
        let mut f = Fixture::new();
        let at = f.cap(0, 0, &[]);
        assert_eq!(
            f.parse(at).unwrap(),
            vec![RegionCap::Unknown { id: 0, version: 0 }]
        );
    }

    #[test]
    fn loops_are_refused() {
        let mut f = Fixture::new();
        let m = f.msix();
        f.set_next(m, m);
        assert_malformed(f.parse(m), m as usize);

        let mut f = Fixture::new();
        let a = f.msix();
        let b = f.type_(1, 1);
        f.chain(&[a, b]);
        f.set_next(b, a);
        assert_malformed(f.parse(a), a as usize);

        // A longer loop back to the middle of the chain.
        let mut f = Fixture::new();
        let a = f.msix();
        let b = f.sparse(&[(0, 0x1000)]);
        let c = f.type_(1, 1);
        f.chain(&[a, b, c]);
        f.set_next(c, b);
        assert_malformed(f.parse(a), b as usize);
    }

    #[test]
    fn overlapping_capabilities_are_refused() {
        // `next` points into the sparse capability's own area array.
        let mut f = Fixture::new();
        let s = f.sparse(&[(0, 0x1000), (0x2000, 0x1000)]);
        f.set_next(s, s + 16);
        assert_malformed(f.parse(s), s as usize + 16);

        // A later capability whose body covers an earlier one.
        let mut f = Fixture::new();
        let m = f.msix();
        let t = f.type_(1, 1);
        f.chain(&[t, m]);
        f.set_next(m, t + 8);
        assert_malformed(f.parse(t), t as usize + 8);
    }

    #[test]
    fn offsets_outside_the_buffer_are_refused() {
        let mut f = Fixture::new();
        let m = f.msix();
        let len = f.buf.len() as u32;
        f.set_next(m, len);
        assert_malformed(f.parse(m), len as usize);
        f.set_next(m, u32::MAX - 3);
        assert_malformed(f.parse(m), (u32::MAX - 3) as usize);
        assert_malformed(f.parse(0x1000), 0x1000);

        // A header that starts inside the buffer and straddles its end.
        let mut f = Fixture::new();
        let m = f.msix();
        f.buf.extend_from_slice(&[0; 4]);
        f.set_next(m, m + 8);
        assert_malformed(f.parse(m), m as usize + 8);
        assert_malformed(parse_region_caps(&f.buf[..m as usize + 6], m), m as usize);
    }

    #[test]
    fn offsets_into_the_info_header_or_misaligned_are_refused() {
        let mut f = Fixture::new();
        let m = f.msix();
        for bad in [4, 8, 16, 28] {
            assert_malformed(f.parse(bad), bad as usize);
            f.set_next(m, bad);
            assert_malformed(f.parse(m), bad as usize);
        }
        f.buf.extend_from_slice(&[0; 16]);
        for bad in [m + 1, m + 2, m + 10, m + 14] {
            assert_malformed(f.parse(bad), bad as usize);
            f.set_next(m, bad);
            assert_malformed(f.parse(m), bad as usize);
        }
    }

    #[test]
    fn sparse_counts_beyond_the_buffer_are_refused() {
        let mut f = Fixture::new();
        let s = f.sparse_with_count(u32::MAX, &[(0, 0x1000)]);
        assert_malformed(f.parse(s), s as usize);

        // Three areas announced, two present.
        let mut f = Fixture::new();
        let s = f.sparse_with_count(3, &[(0, 0x1000), (0x2000, 0x1000)]);
        assert_malformed(f.parse(s), s as usize);

        // The last area cut short by one byte.
        let mut f = Fixture::new();
        let s = f.sparse(&[(0, 0x1000), (0x2000, 0x1000)]);
        f.buf.pop();
        assert_malformed(f.parse(s), s as usize);

        // Truncated before the count.
        let mut f = Fixture::new();
        let s = f.sparse(&[]);
        assert_malformed(
            parse_region_caps(&f.buf[..s as usize + HEADER_LEN + 2], s),
            s as usize,
        );
    }

    #[test]
    fn truncated_type_capability_is_refused() {
        let mut f = Fixture::new();
        let t = f.type_(1, 2);
        for len in t as usize + HEADER_LEN..f.buf.len() {
            assert_malformed(parse_region_caps(&f.buf[..len], t), t as usize);
        }
    }

    /// A chain of every kind in buffer order, reaching exactly to the end of
    /// its buffer, so any truncation cuts the capability the walk reaches there.
    fn full_fixture() -> (Fixture, u32, Vec<RegionCap>) {
        let mut f = Fixture::new();
        let t = f.type_(3, 4);
        let s = f.sparse(&[(0, 0x1000), (0x3000, 0x1000)]);
        let u = f.cap(0x42, 2, &[0x5A; 8]);
        let m = f.msix();
        let first = f.chain(&[t, s, u, m]);
        let want = vec![
            RegionCap::Type { type_: 3, subtype: 4 },
            RegionCap::SparseMmap(vec![area(0, 0x1000), area(0x3000, 0x1000)]),
            RegionCap::Unknown { id: 0x42, version: 2 },
            RegionCap::MsixMappable,
        ];
        (f, first, want)
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (f, first, want) = full_fixture();
        assert_eq!(f.parse(first).unwrap(), want);
        for len in 0..f.buf.len() {
            match parse_region_caps(&f.buf[..len], first) {
                Err(CapChainError { .. }) => {}
                other => panic!("truncated to {len} bytes: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        let (f, first, want) = full_fixture();
        let mut buf = f.buf.clone();
        for pos in 0..buf.len() {
            let original = buf[pos];
            for value in 0..=u8::MAX {
                buf[pos] = value;
                match parse_region_caps(&buf, first) {
                    // The parser never looks at the info header itself.
                    Ok(caps) if pos < INFO_LEN => assert_eq!(caps, want),
                    // Each capability takes at least a header, so no more than fit.
                    Ok(caps) => assert!(caps.len() <= (buf.len() - INFO_LEN) / HEADER_LEN),
                    Err(CapChainError { .. }) => {
                        assert!(pos >= INFO_LEN, "byte {pos} of the info header broke the chain")
                    }
                }
            }
            buf[pos] = original;
        }
        assert_eq!(buf, f.buf);
    }
}
