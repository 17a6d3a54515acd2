//! Property tests of the parsers that read bytes from the kernel, from a
//! device or from a user: the VFIO region capability chain, the config-space
//! capability walks (standard and extended), PCI addresses and region names.
//!
//! Each parser gets arbitrary input (it never panics, never hangs and, for the
//! config walks, never reads outside config space, writes nothing and makes a
//! bounded number of reads) and generated valid input (it round-trips). Case
//! counts are set per test so the whole file runs in a few seconds in a debug
//! build.

use std::io;
use std::mem::size_of;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use barmap::config::regs::{
    PCI_CAPABILITY_LIST, PCI_CAP_LIST_NEXT, PCI_CB_CAPABILITY_LIST, PCI_CFG_SPACE_SIZE, PCI_EXT_CAP_ID_NULL,
    PCI_HEADER_TYPE, PCI_HEADER_TYPE_BRIDGE, PCI_HEADER_TYPE_CARDBUS, PCI_HEADER_TYPE_NORMAL, PCI_STATUS,
    PCI_STATUS_CAP_LIST, PCI_STD_HEADER_SIZEOF,
};
use barmap::config::{Capability, ConfigSpace, ExtendedCapability};
use barmap::region::{parse_region_caps, CapChainError};
use barmap::region::{MemoryRegion, RegionIo};
use barmap::{Error, PciAddress, RegionCap, RegionIndex, SparseArea};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE,
};

/// How long one parse may take before the test calls it a hang. Every parse
/// here is microseconds; the margin is for a loaded debug build.
const DEADLINE: Duration = Duration::from_secs(5);

/// Runs `f` on its own thread and returns its result, failing the test if it
/// takes longer than [`DEADLINE`] (a hang). A panic in `f` fails the test too.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        // The receiver is gone only after a timeout, which already failed the test.
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("parser still running after {DEADLINE:?}: a hang"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let panic = worker
                .join()
                .expect_err("the worker sent nothing, so it panicked");
            std::panic::resume_unwind(panic)
        }
    }
}

/// A config running `n` cases that keeps the seeds of failures in
/// `tests/parsers.proptest-regressions`, to be replayed first on later runs.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The VFIO region capability chain
// ---------------------------------------------------------------------------

/// Size of the `vfio_region_info` header that starts every info buffer.
const INFO_LEN: usize = size_of::<vfio_region_info>();
/// Size of a capability header: `{ id: u16, version: u16, next: u32 }`.
const CAP_HEADER_LEN: usize = 8;
const SPARSE: u16 = VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16;
const TYPE: u16 = VFIO_REGION_INFO_CAP_TYPE as u16;
const MSIX: u16 = VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16;
/// The capability IDs the parser interprets.
const KNOWN: [u16; 3] = [SPARSE, TYPE, MSIX];

/// Any capability the parser can return: known ones, and unknown IDs with any version.
fn region_cap() -> impl Strategy<Value = RegionCap> {
    let area = (any::<u64>(), any::<u64>()).prop_map(|(offset, size)| SparseArea { offset, size });
    prop_oneof![
        prop::collection::vec(area, 0..6).prop_map(RegionCap::SparseMmap),
        (any::<u32>(), any::<u32>()).prop_map(|(type_, subtype)| RegionCap::Type { type_, subtype }),
        Just(RegionCap::MsixMappable),
        (any::<u16>(), any::<u16>())
            .prop_filter("known IDs parse as their own variant", |(id, _)| !KNOWN
                .contains(id))
            .prop_map(|(id, version)| RegionCap::Unknown { id, version }),
    ]
}

/// The bytes of `cap` after its 8-byte header, as the kernel lays them out.
fn cap_body(cap: &RegionCap) -> (u16, u16, Vec<u8>) {
    match cap {
        RegionCap::SparseMmap(areas) => {
            let mut body = (areas.len() as u32).to_ne_bytes().to_vec();
            body.extend_from_slice(&0u32.to_ne_bytes()); // reserved
            for area in areas {
                body.extend_from_slice(&area.offset.to_ne_bytes());
                body.extend_from_slice(&area.size.to_ne_bytes());
            }
            (SPARSE, 1, body)
        }
        RegionCap::Type { type_, subtype } => {
            let mut body = type_.to_ne_bytes().to_vec();
            body.extend_from_slice(&subtype.to_ne_bytes());
            (TYPE, 1, body)
        }
        RegionCap::MsixMappable => (MSIX, 1, Vec::new()),
        RegionCap::Unknown { id, version } => (*id, *version, Vec::new()),
    }
}

/// An info buffer holding a chain of capabilities.
#[derive(Clone, Debug)]
struct Chain {
    buf: Vec<u8>,
    /// Offset of each capability, in chain order.
    offsets: Vec<u32>,
    /// Offset of each sparse-mmap capability's area count, in chain order.
    counts: Vec<usize>,
}

impl Chain {
    /// Lays out `caps` after the info header in the buffer order `placement`
    /// (a permutation of chain positions), with `gaps[i]` dwords of filler
    /// after every capability but the last in the buffer, then links them in
    /// chain order. The buffer ends where its last capability does.
    fn build(caps: &[RegionCap], placement: &[usize], gaps: &[usize]) -> Chain {
        let mut buf = vec![0xA5; INFO_LEN];
        let mut offsets = vec![0u32; caps.len()];
        let mut counts = Vec::new();
        for (n, &pos) in placement.iter().enumerate() {
            if n > 0 {
                buf.resize(buf.len() + 4 * gaps[n - 1], 0x5A);
            }
            let (id, version, body) = cap_body(&caps[pos]);
            offsets[pos] = buf.len() as u32;
            buf.extend_from_slice(&id.to_ne_bytes());
            buf.extend_from_slice(&version.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&body);
        }
        for (pos, cap) in caps.iter().enumerate() {
            if matches!(cap, RegionCap::SparseMmap(_)) {
                counts.push(offsets[pos] as usize + CAP_HEADER_LEN);
            }
        }
        let mut chain = Chain { buf, offsets, counts };
        for pos in 1..caps.len() {
            chain.set_next(pos - 1, chain.offsets[pos]);
        }
        chain
    }

    fn first(&self) -> u32 {
        self.offsets.first().copied().unwrap_or(0)
    }

    /// Sets the `next` field of the capability at chain position `pos`.
    fn set_next(&mut self, pos: usize, next: u32) {
        let at = self.offsets[pos] as usize + 4;
        self.buf[at..at + 4].copy_from_slice(&next.to_ne_bytes());
    }

    fn parse(&self) -> Result<Vec<RegionCap>, CapChainError> {
        parse_region_caps(&self.buf, self.first())
    }
}

/// `min` to 5 capabilities, laid out in a random buffer order with random
/// filler between them.
fn chain(min: usize) -> impl Strategy<Value = (Vec<RegionCap>, Chain)> {
    prop::collection::vec(region_cap(), min..6)
        .prop_flat_map(|caps| {
            let n = caps.len();
            let placement = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            let gaps = prop::collection::vec(0usize..4, n.saturating_sub(1));
            (Just(caps), placement, gaps)
        })
        .prop_map(|(caps, placement, gaps)| {
            let chain = Chain::build(&caps, &placement, &gaps);
            (caps, chain)
        })
}

/// Asserts a `CapChainError` found at `offset`.
fn assert_malformed_at(
    result: Result<Vec<RegionCap>, CapChainError>,
    offset: usize,
) -> Result<(), TestCaseError> {
    match result {
        Err(CapChainError { offset: got, reason }) => {
            prop_assert_eq!(got, offset, "reported at the wrong offset: {}", reason);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "expected a CapChainError at {offset}, got {other:?}"
        ))),
    }
}

/// Parses `buf` from `first` under the deadline; checks the outcome is a list
/// no longer than the buffer can hold, or a `CapChainError`, and
/// that an accepted chain re-encodes to one that parses the same.
fn region_caps_well_behaved(buf: Vec<u8>, first: u32) -> Result<(), TestCaseError> {
    let len = buf.len();
    // Refusing is fine: the error type says only where and why.
    if let Ok(caps) = bounded(move || parse_region_caps(&buf, first)) {
        prop_assert!(
            caps.len() <= len.saturating_sub(INFO_LEN) / CAP_HEADER_LEN,
            "{} capabilities in {} bytes",
            caps.len(),
            len
        );
        let order: Vec<usize> = (0..caps.len()).collect();
        let again = Chain::build(&caps, &order, &vec![0; caps.len()]);
        prop_assert_eq!(again.parse().ok(), Some(caps));
    }
    Ok(())
}

/// A `next` value that no valid capability offset can take: past the end of
/// `len` bytes, inside the info header, or misaligned.
fn bad_next(len: usize) -> impl Strategy<Value = u32> {
    let len = len as u32;
    prop_oneof![
        len..=u32::MAX,
        1..INFO_LEN as u32,
        (INFO_LEN as u32..len).prop_filter("misaligned", |n| n % 4 != 0),
    ]
}

proptest! {
    #![proptest_config(cases(512))]

    /// Arbitrary bytes from an arbitrary offset: a list or a typed error, in bounded time.
    #[test]
    fn region_caps_arbitrary_bytes(
        buf in prop::collection::vec(any::<u8>(), 0..256),
        first in prop_oneof![0u32..288, any::<u32>()],
    ) {
        region_caps_well_behaved(buf, first)?;
    }

    /// Bytes made of capability-like dwords (known IDs, small counts, `next`
    /// pointers inside the buffer), so chains run long, loop and overlap.
    #[test]
    fn region_caps_dense_chains(
        dwords in prop::collection::vec(
            prop_oneof![
                0u32..4,
                (0u32..32).prop_map(|d| 4 * d + INFO_LEN as u32),
                (1u32..4).prop_map(|id| id | 1 << 16),
                any::<u32>(),
            ],
            8..64,
        ),
        first in (0u32..32).prop_map(|d| 4 * d + INFO_LEN as u32),
    ) {
        let mut buf = vec![0u8; INFO_LEN];
        buf.extend(dwords.iter().flat_map(|d| d.to_ne_bytes()));
        region_caps_well_behaved(buf, first)?;
    }

    /// A valid chain, laid out in any buffer order, parses back to its capabilities.
    #[test]
    fn region_caps_round_trip((caps, chain) in chain(0)) {
        prop_assert_eq!(chain.parse()?, caps);
    }

    /// A `next` pointer back to a capability already visited is a loop, reported there.
    #[test]
    fn region_caps_loops_are_refused((caps, mut chain) in chain(1), from in any::<Index>(), to in any::<Index>()) {
        let from = from.index(caps.len());
        let to = to.index(from + 1);
        chain.set_next(from, chain.offsets[to]);
        let want = chain.offsets[to] as usize;
        assert_malformed_at(bounded(move || chain.parse()), want)?;
    }

    /// A `next` pointer past the end, into the info header or misaligned is
    /// refused at the offset it names.
    #[test]
    fn region_caps_bad_next_is_refused(
        (caps, mut chain, next) in chain(1).prop_flat_map(|(caps, chain)| {
                let next = bad_next(chain.buf.len());
                (Just(caps), Just(chain), next)
            }),
        from in any::<Index>(),
    ) {
        chain.set_next(from.index(caps.len()), next);
        assert_malformed_at(bounded(move || chain.parse()), next as usize)?;
    }

    /// An area count larger than the buffer can hold is refused at once, at
    /// the sparse-mmap capability, however large.
    #[test]
    fn region_caps_huge_area_counts_are_refused(
        (_caps, mut chain) in chain(1).prop_filter("a sparse-mmap capability", |(_, chain)| !chain.counts.is_empty()),
        which in any::<Index>(),
        excess in prop_oneof![Just(u64::from(u32::MAX)), 1u64..16, any::<u32>().prop_map(u64::from)],
    ) {
        let at = chain.counts[which.index(chain.counts.len())];
        // Areas follow the count and a reserved dword, 16 bytes each.
        let fit = (chain.buf.len() - (at + 8)) as u64 / 16;
        let count = (fit + excess).min(u64::from(u32::MAX)) as u32;
        chain.buf[at..at + 4].copy_from_slice(&count.to_ne_bytes());
        assert_malformed_at(bounded(move || chain.parse()), at - CAP_HEADER_LEN)?;
    }

    /// Every truncation of a non-empty chain cuts a capability the walk reaches.
    #[test]
    fn region_caps_truncations_are_refused((_caps, mut chain) in chain(1), keep in any::<Index>()) {
        chain.buf.truncate(keep.index(chain.buf.len()));
        match bounded(move || chain.parse()) {
            Err(CapChainError { .. }) => {}
            other => prop_assert!(false, "truncated chain gave {:?}", other),
        }
    }
}

// ---------------------------------------------------------------------------
// Config-space capability walks
// ---------------------------------------------------------------------------

/// Reads one walk may make before the test calls it a hang: a standard walk
/// reads the header and at most 48 capabilities, an extended one at most one
/// header per dword of 0x100..0x1000.
const MAX_READS: usize = 1 + 48 + 1 + (4096 - 256) / 4;

/// A fake device's config space that records every read and checks it: inside
/// the region, at most [`MAX_READS`] of them, and no writes. A violation panics
/// inside the walk, which fails the test.
struct Recording {
    inner: MemoryRegion,
    reads: Mutex<Vec<(u64, usize)>>,
}

impl Recording {
    fn new(bytes: Vec<u8>) -> Self {
        Recording {
            inner: MemoryRegion::new(bytes),
            reads: Mutex::new(Vec::new()),
        }
    }

    fn take_reads(&self) -> Vec<(u64, usize)> {
        std::mem::take(&mut self.reads.lock().unwrap())
    }
}

// SAFETY: never called from a fault handler here (no region is built over
// it); the Mutex is used outside signal context only.
unsafe impl RegionIo for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        assert!(
            end.is_some_and(|end| end <= self.size()),
            "read of {} bytes at {offset:#x}: outside the {:#x}-byte config space",
            buf.len(),
            self.size()
        );
        let mut reads = self.reads.lock().unwrap();
        reads.push((offset, buf.len()));
        assert!(
            reads.len() <= MAX_READS,
            "{} reads: the walk does not stop",
            reads.len()
        );
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        panic!("a capability walk wrote {} bytes at {offset:#x}", data.len())
    }
}

/// The address every fake device claims.
fn addr() -> PciAddress {
    PciAddress::new(0, 0, 3, 0).expect("a valid address")
}

/// What walking both lists of `bytes` gave, and which reads each walk made.
struct Walks {
    standard: barmap::Result<Vec<Capability>>,
    standard_reads: Vec<(u64, usize)>,
    extended: barmap::Result<Vec<ExtendedCapability>>,
    extended_reads: Vec<(u64, usize)>,
}

/// Walks both lists of a fake device holding `bytes`, under the deadline.
fn walk(bytes: Vec<u8>) -> Walks {
    bounded(move || {
        let region = Recording::new(bytes);
        let config = ConfigSpace::new(&region, addr());
        let standard = config.capabilities();
        let standard_reads = region.take_reads();
        let extended = config.extended_capabilities();
        let extended_reads = region.take_reads();
        Walks {
            standard,
            standard_reads,
            extended,
            extended_reads,
        }
    })
}

/// The standard walk read only the header and capability ID/next pairs, each once.
fn standard_reads_well_formed(reads: &[(u64, usize)]) -> Result<(), TestCaseError> {
    let mut seen = std::collections::BTreeSet::new();
    for (n, &(offset, len)) in reads.iter().enumerate() {
        if n == 0 {
            prop_assert_eq!(
                (offset, len),
                (0, usize::from(PCI_STD_HEADER_SIZEOF)),
                "header first"
            );
        } else {
            prop_assert!(
                len == 2 && offset % 4 == 0 && (0x40..0x100).contains(&offset),
                "standard walk read {} bytes at {:#x}",
                len,
                offset
            );
            prop_assert!(seen.insert(offset), "standard walk read {:#x} twice", offset);
        }
    }
    Ok(())
}

/// The extended walk read only dword headers in extended config space.
fn extended_reads_well_formed(reads: &[(u64, usize)]) -> Result<(), TestCaseError> {
    for &(offset, len) in reads {
        prop_assert!(
            len == 4 && offset % 4 == 0 && offset >= u64::from(PCI_CFG_SPACE_SIZE),
            "extended walk read {} bytes at {:#x}",
            len,
            offset
        );
    }
    Ok(())
}

/// Both walks of arbitrary bytes: a list, a malformed-config error, or (for
/// a config space too short for what it points to) an out-of-range error
/// raised before any access; the reads are well-formed and in range.
fn walks_well_behaved(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let size = bytes.len();
    let w = walk(bytes);
    match &w.standard {
        Ok(caps) => prop_assert!(caps.len() <= 48, "{} standard capabilities", caps.len()),
        Err(Error::MalformedConfig { .. } | Error::OutOfRange { .. }) => {}
        Err(other) => prop_assert!(false, "standard walk: unexpected error {}", other),
    }
    match &w.extended {
        Ok(caps) => prop_assert!(
            caps.len() <= (4096 - 256) / 4,
            "{} extended capabilities",
            caps.len()
        ),
        Err(Error::MalformedConfig { .. } | Error::OutOfRange { .. }) => {}
        Err(other) => prop_assert!(false, "extended walk: unexpected error {}", other),
    }
    if size < usize::from(PCI_STD_HEADER_SIZEOF) {
        prop_assert!(w.standard_reads.is_empty(), "header read from {} bytes", size);
    }
    standard_reads_well_formed(&w.standard_reads)?;
    extended_reads_well_formed(&w.extended_reads)
}

/// Makes arbitrary config bytes reach the standard list: a responding device
/// with a known header layout and the capability-list status bit.
fn nudge(bytes: &mut [u8], layout: u8) {
    if bytes.len() >= usize::from(PCI_STD_HEADER_SIZEOF) {
        bytes[0] &= 0xfe; // vendor ID not 0xffff
        bytes[usize::from(PCI_STATUS)] |= PCI_STATUS_CAP_LIST as u8;
        bytes[usize::from(PCI_HEADER_TYPE)] = layout | (bytes[usize::from(PCI_HEADER_TYPE)] & 0x80);
    }
}

/// Config-space sizes worth trying: sysfs's unprivileged 64 bytes, conventional
/// 256, PCIe 4096, and anything between (or a little past).
fn config_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(64), Just(256), Just(4096), 0usize..4200]
}

/// A header layout: the three with a capability list, or an unknown one.
fn layout() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(PCI_HEADER_TYPE_NORMAL),
        Just(PCI_HEADER_TYPE_BRIDGE),
        Just(PCI_HEADER_TYPE_CARDBUS),
        0u8..0x80,
    ]
}

/// Where a header layout keeps its capability pointer.
fn pointer_register(layout: u8) -> u16 {
    if layout == PCI_HEADER_TYPE_CARDBUS {
        PCI_CB_CAPABILITY_LIST
    } else {
        PCI_CAPABILITY_LIST
    }
}

/// A valid standard list of at least `min` capabilities: the capabilities in chain order, and the config
/// bytes holding them. Pointers carry random reserved low bits.
fn standard_list(min: usize) -> impl Strategy<Value = (Vec<Capability>, Vec<u8>, u8)> {
    let slots =
        prop::sample::subsequence((0x40u8..=0xfc).step_by(4).collect::<Vec<_>>(), min..=48).prop_shuffle();
    (
        slots,
        prop_oneof![Just(256usize), Just(4096)],
        prop_oneof![
            Just(PCI_HEADER_TYPE_NORMAL),
            Just(PCI_HEADER_TYPE_BRIDGE),
            Just(PCI_HEADER_TYPE_CARDBUS)
        ],
    )
        .prop_flat_map(|(slots, size, layout)| {
            let n = slots.len();
            (
                Just(slots),
                prop::collection::vec(0u8..0xff, n),
                prop::collection::vec(0u8..4, n + 1),
                prop::collection::vec(any::<u8>(), size),
                Just(layout),
            )
        })
        .prop_map(|(slots, ids, low_bits, mut bytes, layout)| {
            nudge(&mut bytes, layout);
            let pointer = slots.first().copied().unwrap_or(0);
            bytes[usize::from(pointer_register(layout))] = pointer | low_bits[0];
            let mut caps = Vec::new();
            for (n, (&offset, &id)) in slots.iter().zip(&ids).enumerate() {
                let next = slots.get(n + 1).copied().unwrap_or(0);
                bytes[usize::from(offset)] = id;
                bytes[usize::from(offset) + 1] = next | low_bits[n + 1];
                caps.push(Capability { id, offset });
            }
            (caps, bytes, layout)
        })
}

/// Sets the next pointer of the standard capability at `offset`.
fn set_std_next(bytes: &mut [u8], offset: u8, next: u8) {
    bytes[usize::from(offset + PCI_CAP_LIST_NEXT as u8)] = next;
}

/// An extended capability header.
fn ext_header(id: u16, version: u8, next: u16) -> u32 {
    u32::from(id) | u32::from(version) << 16 | u32::from(next) << 20
}

/// A valid extended list in a config space of any size from 0x104 to 4 KiB:
/// the listed capabilities in chain order, the offsets of every header in
/// chain order (null ones too), and the config bytes. Null capabilities
/// (ID 0) are followed but not listed; next pointers carry random reserved bits.
fn extended_list() -> impl Strategy<Value = (Vec<ExtendedCapability>, Vec<u16>, Vec<u8>)> {
    prop_oneof![Just(4096usize), 0x104usize..=4096]
        .prop_flat_map(|size| {
            let last = (size - 4) as u16;
            let others = (0x104u16..=last).step_by(4).collect::<Vec<_>>();
            let max = others.len().min(24);
            (
                prop::sample::subsequence(others, 0..=max).prop_shuffle(),
                prop::collection::vec(any::<u8>(), size),
            )
        })
        .prop_flat_map(|(others, bytes)| {
            let n = others.len() + 1;
            let id = prop_oneof![1 => Just(PCI_EXT_CAP_ID_NULL), 4 => 0u16..0xffff];
            (
                Just(others),
                Just(bytes),
                prop::collection::vec(id, n),
                prop::collection::vec(0u8..16, n),
                prop::collection::vec(0u16..4, n),
            )
        })
        .prop_map(|(others, mut bytes, ids, versions, low_bits)| {
            let mut offsets = vec![PCI_CFG_SPACE_SIZE];
            offsets.extend(others);
            let mut caps = Vec::new();
            for (n, &offset) in offsets.iter().enumerate() {
                let next = offsets.get(n + 1).copied().unwrap_or(0) | low_bits[n];
                let header = ext_header(ids[n], versions[n], next);
                let at = usize::from(offset);
                bytes[at..at + 4].copy_from_slice(&header.to_le_bytes());
                if ids[n] != PCI_EXT_CAP_ID_NULL {
                    caps.push(ExtendedCapability {
                        id: ids[n],
                        version: versions[n],
                        offset,
                    });
                }
            }
            (caps, offsets, bytes)
        })
}

/// Sets the next pointer of the extended capability at `offset`, keeping its ID and version.
fn set_ext_next(bytes: &mut [u8], offset: u16, next: u16) {
    let at = usize::from(offset);
    let header = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let header = header & 0x000f_ffff | u32::from(next) << 20;
    bytes[at..at + 4].copy_from_slice(&header.to_le_bytes());
}

/// Asserts a `MalformedConfig` error at `offset`.
fn assert_config_malformed_at<T: std::fmt::Debug>(
    result: &barmap::Result<T>,
    offset: u16,
) -> Result<(), TestCaseError> {
    match result {
        Err(Error::MalformedConfig {
            offset: got, reason, ..
        }) => {
            prop_assert_eq!(
                *got,
                u64::from(offset),
                "reported at the wrong offset: {}",
                reason
            );
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "expected MalformedConfig at {offset:#x}, got {other:?}"
        ))),
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// Arbitrary config bytes of any size, most of them made to reach the lists.
    #[test]
    fn config_walks_arbitrary_bytes(
        mut bytes in config_size().prop_flat_map(|size| prop::collection::vec(any::<u8>(), size)),
        layout in layout(),
        reach in prop::bool::weighted(0.8),
    ) {
        if reach {
            nudge(&mut bytes, layout);
        }
        walks_well_behaved(bytes)?;
    }

    /// Config bytes full of pointer-like values: standard pointers into
    /// 0x40..0x100, and extended headers scattered over 4 KiB with small IDs
    /// and next pointers mostly to one another (else anywhere, 0 or all
    /// ones), so walks run long, loop and point past the end.
    #[test]
    fn config_walks_dense_pointers(
        size in prop_oneof![Just(256usize), Just(4096), 0x100usize..4096],
        std_bytes in prop::collection::vec(prop_oneof![0x40u8..=0xff, 0u8..0x40, Just(0xff)], 0xc0),
        ext in prop::collection::vec(
            (0u16..0x3c0, 0u16..4, 0u8..16, prop::option::weighted(0.8, any::<Index>()), 0u16..0x1000),
            1..64,
        ),
        odd in prop::collection::vec((0u16..0x3c0, prop_oneof![Just(0u32), Just(u32::MAX)]), 0..4),
        layout in layout(),
    ) {
        let mut bytes = vec![0u8; 0x40];
        bytes.extend(std_bytes);
        bytes.resize(4096, 0);
        let slots: Vec<u16> = ext.iter().enumerate().map(|(n, e)| if n == 0 { 0x100 } else { 0x100 + 4 * e.0 }).collect();
        for (&at, &(_, id, version, target, next)) in slots.iter().zip(&ext) {
            let next = target.map_or(next, |t| slots[t.index(slots.len())]);
            let at = usize::from(at);
            bytes[at..at + 4].copy_from_slice(&ext_header(id, version, next).to_le_bytes());
        }
        for (slot, value) in odd {
            let at = 0x100 + 4 * usize::from(slot);
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        bytes[usize::from(PCI_CAPABILITY_LIST)] = 0x40;
        bytes[usize::from(PCI_CB_CAPABILITY_LIST)] = 0x40;
        nudge(&mut bytes, layout);
        bytes.truncate(size);
        walks_well_behaved(bytes)?;
    }

    /// A valid standard list walks back to its capabilities, reading the header
    /// and each capability's ID and next pointer once, in chain order.
    #[test]
    fn standard_list_round_trip((caps, bytes, _layout) in standard_list(0)) {
        let w = walk(bytes);
        prop_assert_eq!(w.standard?, caps.clone());
        let mut want = vec![(0, usize::from(PCI_STD_HEADER_SIZEOF))];
        want.extend(caps.iter().map(|c| (u64::from(c.offset), 2)));
        prop_assert_eq!(w.standard_reads, want);
    }

    /// A next pointer back to a capability already visited (whatever its
    /// reserved bits) is a loop, refused there before reading it again.
    #[test]
    fn standard_loops_are_refused(
        (caps, mut bytes, _layout) in standard_list(1),
        from in any::<Index>(),
        to in any::<Index>(),
        low_bits in 0u8..4,
    ) {
        let from = from.index(caps.len());
        let to = to.index(from + 1);
        set_std_next(&mut bytes, caps[from].offset, caps[to].offset | low_bits);
        let w = walk(bytes);
        assert_config_malformed_at(&w.standard, u16::from(caps[to].offset))?;
        prop_assert_eq!(w.standard_reads.len(), 1 + from + 1, "one header and each capability once");
        standard_reads_well_formed(&w.standard_reads)?;
    }

    /// A pointer into the standard header (from the pointer register or from
    /// a capability) is refused at the pointer, and nothing below 0x40 is read.
    #[test]
    fn standard_pointers_into_the_header_are_refused(
        (caps, mut bytes, layout) in standard_list(0),
        from in any::<Index>(),
        bad in 4u8..0x40,
    ) {
        // Which pointer to break: the register (index 0) or a capability's next.
        let from = from.index(caps.len() + 1);
        let at = if from == 0 {
            let register = pointer_register(layout);
            bytes[usize::from(register)] = bad;
            register
        } else {
            let offset = caps[from - 1].offset;
            set_std_next(&mut bytes, offset, bad);
            u16::from(offset) + PCI_CAP_LIST_NEXT
        };
        let w = walk(bytes);
        assert_config_malformed_at(&w.standard, at)?;
        standard_reads_well_formed(&w.standard_reads)?;
    }

    /// A standard list in a config space cut short (sysfs gives unprivileged
    /// readers 64 bytes) is refused without reading past the end.
    #[test]
    fn standard_list_in_short_config_space(
        (caps, mut bytes, _layout) in standard_list(0),
        keep in 0usize..256,
    ) {
        bytes.truncate(keep);
        let w = walk(bytes);
        let fits = keep >= usize::from(PCI_STD_HEADER_SIZEOF)
            && caps.iter().all(|c| usize::from(c.offset) + 2 <= keep);
        match &w.standard {
            Ok(got) => prop_assert!(fits && got == &caps, "accepted a cut list: {:?}", got),
            Err(Error::OutOfRange { .. }) => prop_assert!(!fits),
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
        standard_reads_well_formed(&w.standard_reads)?;
    }

    /// A capability ID of 0xff (a capability reading all ones) is refused there.
    #[test]
    fn standard_all_ones_capability_is_refused((caps, mut bytes, _layout) in standard_list(1), which in any::<Index>()) {
        let offset = caps[which.index(caps.len())].offset;
        bytes[usize::from(offset)] = 0xff;
        assert_config_malformed_at(&walk(bytes).standard, u16::from(offset))?;
    }

    /// A valid extended list walks back to its capabilities, skipping null
    /// ones, reading each header once in chain order.
    #[test]
    fn extended_list_round_trip((caps, offsets, bytes) in extended_list()) {
        let w = walk(bytes);
        prop_assert_eq!(w.extended?, caps);
        let want: Vec<_> = offsets.iter().map(|&o| (u64::from(o), 4)).collect();
        prop_assert_eq!(w.extended_reads, want);
    }

    /// A next pointer back to a header already visited is a loop, refused there.
    #[test]
    fn extended_loops_are_refused(
        (_caps, offsets, mut bytes) in extended_list(),
        from in any::<Index>(),
        to in any::<Index>(),
        low_bits in 0u16..4,
    ) {
        let from = from.index(offsets.len());
        let to = to.index(from + 1);
        set_ext_next(&mut bytes, offsets[from], offsets[to] | low_bits);
        let w = walk(bytes);
        assert_config_malformed_at(&w.extended, offsets[to])?;
        extended_reads_well_formed(&w.extended_reads)?;
    }

    /// A next pointer into conventional config space, or past the end of a
    /// config space shorter than 4 KiB, is refused at the capability holding it.
    #[test]
    fn extended_bad_pointers_are_refused(
        (_caps, offsets, mut bytes) in extended_list(),
        from in any::<Index>(),
        below in 1u16..0x40,
        past in any::<Index>(),
        into_conventional in any::<bool>(),
    ) {
        let from = from.index(offsets.len());
        let size = bytes.len();
        // The first dword-aligned offset whose 4 bytes do not fit, up to 0xffc.
        let first_out = (size - 4) / 4 + 1;
        let next = if into_conventional || first_out > 0x3ff {
            below * 4
        } else {
            (first_out + past.index(0x400 - first_out)) as u16 * 4
        };
        set_ext_next(&mut bytes, offsets[from], next);
        let w = walk(bytes);
        assert_config_malformed_at(&w.extended, offsets[from])?;
        prop_assert_eq!(w.extended_reads.len(), from + 1, "no read after the bad pointer");
        extended_reads_well_formed(&w.extended_reads)?;
    }

    /// A header reading 0 or all ones at 0x100 is an empty list; reached
    /// through a pointer, all ones is refused and 0 ends the list there.
    #[test]
    fn extended_zero_and_all_ones_headers(
        (caps, offsets, mut bytes) in extended_list(),
        which in any::<Index>(),
        all_ones in any::<bool>(),
    ) {
        let which = which.index(offsets.len());
        let at = usize::from(offsets[which]);
        let value = if all_ones { u32::MAX } else { 0 };
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let w = walk(bytes);
        if which == 0 {
            prop_assert_eq!(w.extended?, vec![]);
        } else if all_ones {
            assert_config_malformed_at(&w.extended, offsets[which])?;
        } else {
            let reached = &offsets[..which];
            let want: Vec<_> = caps.into_iter().filter(|c| reached.contains(&c.offset)).collect();
            prop_assert_eq!(w.extended?, want);
        }
        prop_assert_eq!(w.extended_reads.len(), which + 1);
        extended_reads_well_formed(&w.extended_reads)?;
    }
}

// ---------------------------------------------------------------------------
// PCI addresses
// ---------------------------------------------------------------------------

/// Any valid address.
fn pci_address() -> impl Strategy<Value = PciAddress> {
    (any::<u32>(), any::<u8>(), 0u8..=0x1f, 0u8..=7).prop_map(|(domain, bus, device, function)| {
        PciAddress::new(domain, bus, device, function).expect("in range")
    })
}

/// Writes `value` in hex with `pad` leading zeros and, if `upper`, upper-case digits.
fn hex(value: u32, pad: usize, upper: bool) -> String {
    let digits = format!("{value:x}");
    let digits = if upper { digits.to_uppercase() } else { digits };
    format!("{}{digits}", "0".repeat(pad))
}

/// Checks the outcome of parsing any string: an accepted address displays
/// and parses back to itself and was written with nothing but hex digits and
/// separators; a refused one is `InvalidAddress` naming the input.
fn address_well_behaved(s: &str) -> Result<(), TestCaseError> {
    match s.parse::<PciAddress>() {
        Ok(a) => {
            prop_assert_eq!(a.to_string().parse::<PciAddress>()?, a);
            prop_assert!(
                s.len() <= "12345678:12:12.1".len()
                    && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                    && s.matches('.').count() == 1
                    && (1..=2).contains(&s.matches(':').count()),
                "accepted {:?}",
                s
            );
        }
        Err(Error::InvalidAddress { input, .. }) => prop_assert_eq!(input, s),
        Err(other) => prop_assert!(false, "{:?} gave {}", s, other),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Arbitrary strings never panic.
    #[test]
    fn address_arbitrary_strings(s in any::<String>()) {
        address_well_behaved(&s)?;
    }

    /// Strings of hex digits, separators and a few near misses (signs,
    /// spaces, `x`): the parser's own alphabet, where acceptance is likely.
    #[test]
    fn address_near_misses(s in "[0-9a-fA-F:.+x -]{0,18}") {
        address_well_behaved(&s)?;
    }

    /// Every valid address displays in the full form and parses back to
    /// itself, however its fields are padded and in either case.
    #[test]
    fn address_round_trip(a in pci_address(), pads in (0usize..4, 0usize..2, 0usize..2), upper in any::<bool>()) {
        let shown = a.to_string();
        prop_assert_eq!(shown.parse::<PciAddress>()?, a);
        prop_assert_eq!(shown.len(), shown.find(':').expect("a domain").max(4) + 8);

        let domain = hex(a.domain(), pads.0.min(8usize.saturating_sub(format!("{:x}", a.domain()).len())), upper);
        let bus = hex(a.bus().into(), pads.1.min(2 - format!("{:x}", a.bus()).len()), upper);
        let device = hex(a.device().into(), pads.2.min(2 - format!("{:x}", a.device()).len()), upper);
        let written = format!("{domain}:{bus}:{device}.{:x}", a.function());
        prop_assert_eq!(written.parse::<PciAddress>()?, a);
    }

    /// The short form `BB:DD.F` is domain 0.
    #[test]
    fn address_short_form_is_domain_0(a in pci_address()) {
        let short = format!("{:02x}:{:02x}.{:x}", a.bus(), a.device(), a.function());
        let parsed = short.parse::<PciAddress>()?;
        prop_assert_eq!(parsed, PciAddress::new(0, a.bus(), a.device(), a.function())?);
        prop_assert_eq!(parsed.to_string(), format!("0000:{short}"));
    }

    /// A device above 0x1f or a function above 7 is refused, by the parser and by `new`.
    #[test]
    fn address_out_of_range_fields_are_refused(
        a in pci_address(),
        device in 0x20u8..,
        function in 8u8..=0xf,
        which in 0usize..3,
    ) {
        let (dev, func) = match which {
            0 => (device, a.function()),
            1 => (a.device(), function),
            _ => (device, function),
        };
        let full = format!("{:04x}:{:02x}:{dev:02x}.{func:x}", a.domain(), a.bus());
        let short = format!("{:02x}:{dev:02x}.{func:x}", a.bus());
        for s in [full, short] {
            let refused = matches!(s.parse::<PciAddress>(), Err(Error::InvalidAddress { .. }));
            prop_assert!(refused, "{:?} was accepted", s);
        }
        prop_assert!(PciAddress::new(a.domain(), a.bus(), dev, func).is_err());
    }

    /// A stray character anywhere in a valid address (a sign, white space, an
    /// `x`, an extra separator) is refused.
    #[test]
    fn address_stray_characters_are_refused(
        a in pci_address(),
        at in any::<Index>(),
        c in prop::sample::select(vec![' ', '+', '-', '\n', 'x', '_', 'g', '/', '\0', 'é']),
    ) {
        let mut s = a.to_string();
        s.insert(at.index(s.len() + 1), c);
        let refused = matches!(s.parse::<PciAddress>(), Err(Error::InvalidAddress { .. }));
        prop_assert!(refused, "{:?} was accepted", s);
    }
}

// ---------------------------------------------------------------------------
// Region names
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(1024))]

    /// Any accepted name is the one spelling of its region: it displays back
    /// to itself. Refused names say which text was refused.
    #[test]
    fn region_name_arbitrary_strings(s in prop_oneof![any::<String>(), "(bar|rom|config|vga|region)[0-9+-]{0,3}"]) {
        match s.parse::<RegionIndex>() {
            Ok(region) => prop_assert_eq!(region.to_string(), s),
            Err(err) => prop_assert_eq!(err.0, s),
        }
    }

    /// Every region with a name (the BARs, ROM, config, VGA) displays as a
    /// name that parses back to it; no other index parses back to another region.
    #[test]
    fn region_name_round_trip(index in prop_oneof![0u32..16, any::<u32>()]) {
        let region = RegionIndex::new(index);
        let named = (0..=5).filter_map(RegionIndex::bar).chain([RegionIndex::ROM, RegionIndex::CONFIG, RegionIndex::VGA]);
        let parsed = region.to_string().parse::<RegionIndex>();
        if named.clone().any(|r| r == region) {
            prop_assert_eq!(parsed, Ok(region));
        } else {
            prop_assert!(parsed.is_err(), "{} parsed as {:?}", region, parsed);
        }
    }
}
