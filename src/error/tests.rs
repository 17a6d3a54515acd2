use std::error::Error as _;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use vfio_ioctls::VfioError;
use vmm_sys_util::errno::Error as SysError;

use super::{Error, ErrorKind};
use crate::dma::{IovaError, PhysicalDmaError};
use crate::irq::IrqIndex;
use crate::pci::PciAddress;
use crate::region::{CapChainError, RegionIndex};
use crate::Interface;

fn addr() -> PciAddress {
    PciAddress::new(0, 0, 3, 0).unwrap()
}

const BAR0: RegionIndex = RegionIndex::new(0);

fn os(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// One of each variant, with the kind and errno it must report.
fn samples() -> Vec<(Error, ErrorKind, Option<i32>)> {
    use ErrorKind as K;
    let addr = addr();
    let path = || PathBuf::from("/sys/bus/pci/devices/0000:00:03.0");
    vec![
        (
            Error::InvalidAddress {
                input: "zz".into(),
                reason: "not hex",
            },
            K::InvalidInput,
            None,
        ),
        (Error::DeviceNotFound { addr, path: path() }, K::NotFound, None),
        (
            Error::Sysfs {
                path: path(),
                source: os(libc::ENOENT),
            },
            K::Io,
            Some(libc::ENOENT),
        ),
        (
            Error::SysfsParse {
                path: path(),
                content: "x".into(),
                expected: "a number",
            },
            K::Malformed,
            None,
        ),
        (
            Error::VfioUnavailable {
                interface: crate::Interface::Group,
                path: "/dev/vfio/vfio".into(),
                reason: "the node is missing",
                source: Box::new(VfioError::OpenContainer(os(libc::ENOENT))),
            },
            K::NotConfigured,
            Some(libc::ENOENT),
        ),
        (
            Error::NotBoundToVfio { addr, driver: None },
            K::NotConfigured,
            None,
        ),
        (Error::NoIommuGroup { addr }, K::NotConfigured, None),
        (
            Error::GroupNotViable {
                addr,
                group: 5,
                blockers: vec![],
            },
            K::NotConfigured,
            None,
        ),
        (
            Error::BindFailed {
                addr,
                driver: "vfio-pci".into(),
                reason: "no driver after probing".into(),
            },
            K::NotConfigured,
            None,
        ),
        (
            Error::GroupBusy {
                addr,
                group: 5,
                source: os(libc::EBUSY),
            },
            K::Busy,
            Some(libc::EBUSY),
        ),
        (
            Error::PermissionDenied {
                addr,
                interface: crate::Interface::Group,
                path: "/dev/vfio/5".into(),
                source: os(libc::EACCES),
            },
            K::PermissionDenied,
            Some(libc::EACCES),
        ),
        (
            Error::Vfio {
                addr,
                step: "get device info",
                source: Box::new(os(libc::ENOTTY)),
            },
            K::Io,
            Some(libc::ENOTTY),
        ),
        (
            Error::NoSuchRegion {
                addr,
                region: RegionIndex::new(12),
                count: 9,
            },
            K::NotFound,
            None,
        ),
        (
            Error::OutOfRange {
                addr,
                region: BAR0,
                offset: 0x1000,
                len: 4,
                size: 0x1000,
            },
            K::OutOfRange,
            None,
        ),
        (
            Error::Misaligned {
                addr,
                region: BAR0,
                offset: 2,
                width: 4,
            },
            K::InvalidInput,
            None,
        ),
        (
            Error::UnsupportedWidth {
                addr,
                region: BAR0,
                width: 3,
            },
            K::InvalidInput,
            None,
        ),
        (
            Error::ValueTooWide {
                addr,
                region: BAR0,
                value: 0x100,
                width: 1,
            },
            K::InvalidInput,
            None,
        ),
        (Error::ReadOnly { addr, region: BAR0 }, K::Unsupported, None),
        (Error::NotReadable { addr, region: BAR0 }, K::Unsupported, None),
        (
            Error::NotMmapable {
                addr,
                region: BAR0,
                reason: "no mmap flag",
            },
            K::Unsupported,
            None,
        ),
        (
            Error::Io {
                addr,
                region: BAR0,
                offset: 8,
                len: 4,
                source: os(libc::EFAULT),
            },
            K::Io,
            Some(libc::EFAULT),
        ),
        (
            Error::Refused {
                addr,
                region: BAR0,
                count: 2,
                source: os(libc::EIO),
            },
            K::Revoked,
            Some(libc::EIO),
        ),
        (
            Error::Shadow {
                addr,
                region: BAR0,
                step: "mapping a direct area",
                offset: 0x2000,
                len: 0x1000,
                source: os(libc::ENOMEM),
            },
            K::Io,
            Some(libc::ENOMEM),
        ),
        (
            Error::ShadowTableFull {
                addr,
                region: BAR0,
                capacity: 64,
            },
            K::ResourceExhausted,
            None,
        ),
        (
            Error::MalformedCapability {
                addr,
                region: BAR0,
                offset: 40,
                reason: "loop",
            },
            K::Malformed,
            None,
        ),
        (
            Error::MalformedConfig {
                addr,
                offset: 0x34,
                reason: "loop",
            },
            K::Malformed,
            None,
        ),
        (
            Error::Unsupported {
                addr,
                what: "shadow regions",
                reason: "not x86-64",
            },
            K::Unsupported,
            None,
        ),
        (
            Error::NoSuchIrq {
                addr,
                index: IrqIndex::Msix,
            },
            K::NotFound,
            None,
        ),
        (
            Error::IrqVectorOutOfRange {
                addr,
                index: IrqIndex::Msi,
                vector: 4,
                count: 4,
            },
            K::OutOfRange,
            None,
        ),
        (
            Error::IrqAlreadyEnabled {
                addr,
                index: IrqIndex::Msi,
                active: IrqIndex::Intx,
            },
            K::Busy,
            None,
        ),
        (
            Error::IrqTimeout {
                addr,
                index: IrqIndex::Intx,
                vector: 0,
                timeout: Duration::from_millis(10),
            },
            K::Timeout,
            None,
        ),
        (
            Error::IrqNotMaskable {
                addr,
                index: IrqIndex::Msix,
            },
            K::Unsupported,
            None,
        ),
        (
            Error::Iova {
                addr,
                source: IovaError::ZeroSize,
            },
            K::ResourceExhausted,
            None,
        ),
        (
            Error::DmaMappingLimit { addr, limit: 65535 },
            K::ResourceExhausted,
            None,
        ),
        (
            Error::Kvm {
                addr,
                step: "set a user memory region for a BAR",
                source: os(libc::EEXIST),
            },
            K::Io,
            Some(libc::EEXIST),
        ),
        (
            Error::KvmNoFreeSlot {
                addr,
                region: BAR0,
                first: 2,
                limit: 32,
            },
            K::ResourceExhausted,
            None,
        ),
        (
            Error::GuestPlacement {
                addr,
                region: BAR0,
                base: 0x123,
                reason: "not page-aligned",
            },
            K::InvalidInput,
            None,
        ),
        (
            Error::KvmNoFreeGsi { addr, limit: 1024 },
            K::ResourceExhausted,
            None,
        ),
        (Error::IrqNoVectors, K::InvalidInput, None),
        (
            Error::KvmGsiReserved {
                gsi: 40,
                first: 32,
                limit: 1024,
            },
            K::InvalidInput,
            None,
        ),
        (
            Error::KvmRouting {
                gsi: 5,
                source: os(libc::EINVAL),
            },
            K::Io,
            Some(libc::EINVAL),
        ),
        (
            Error::InterfaceUnavailable {
                addr,
                interface: crate::Interface::Iommufd,
                path: path().join("vfio-dev"),
                reason: "the device has no VFIO cdev",
                source: None,
            },
            K::NotConfigured,
            None,
        ),
        (
            Error::DeviceBusy {
                addr,
                interface: crate::Interface::Iommufd,
                path: "/dev/vfio/devices/vfio0".into(),
                reason: "bound already",
                source: os(libc::EINVAL),
            },
            K::Busy,
            Some(libc::EINVAL),
        ),
        (
            Error::HotResetNotOwned {
                addr,
                interface: crate::Interface::Iommufd,
                not_owned: vec![addr],
            },
            K::Busy,
            None,
        ),
        (
            Error::Open {
                addr,
                interface: Interface::NoIommu,
                step: "open the group node",
                path: "/dev/vfio/noiommu-0".into(),
                source: os(libc::EBUSY),
            },
            K::Busy,
            Some(libc::EBUSY),
        ),
        (
            Error::MissingCapability {
                addr,
                interface: Interface::NoIommu,
                step: "open the group node",
                path: "/dev/vfio/noiommu-0".into(),
                capability: "CAP_SYS_RAWIO",
                source: Some(os(libc::EPERM)),
            },
            K::PermissionDenied,
            Some(libc::EPERM),
        ),
        (
            Error::NoIommuWithoutOptIn {
                addr,
                group: 0,
                interface: Interface::Group,
            },
            K::NotConfigured,
            None,
        ),
        (
            Error::NotNoIommu {
                addr,
                group: 3,
                interface: Interface::NoIommu,
            },
            K::InvalidInput,
            None,
        ),
        (
            Error::PhysicalDma {
                addr,
                interface: Interface::NoIommu,
                len: 0x2000,
                source: PhysicalDmaError::NoHugePages {
                    page: 2 << 20,
                    source: os(libc::ENOMEM),
                },
            },
            K::ResourceExhausted,
            Some(libc::ENOMEM),
        ),
    ]
}

/// How many variants [`Error`] has: [`ordinal`] numbers them `0..VARIANTS`.
const VARIANTS: usize = 49;

/// A distinct number per variant. The match has no wildcard, so a new
/// variant does not compile until it is numbered here (and VARIANTS raised),
/// and `every_variant_has_its_kind_and_errno` then fails until it has a sample.
fn ordinal(e: &Error) -> usize {
    match e {
        Error::InvalidAddress { .. } => 0,
        Error::DeviceNotFound { .. } => 1,
        Error::Sysfs { .. } => 2,
        Error::SysfsParse { .. } => 3,
        Error::VfioUnavailable { .. } => 4,
        Error::NotBoundToVfio { .. } => 5,
        Error::NoIommuGroup { .. } => 6,
        Error::GroupNotViable { .. } => 7,
        Error::BindFailed { .. } => 8,
        Error::GroupBusy { .. } => 9,
        Error::PermissionDenied { .. } => 10,
        Error::Vfio { .. } => 11,
        Error::NoSuchRegion { .. } => 12,
        Error::OutOfRange { .. } => 13,
        Error::Misaligned { .. } => 14,
        Error::UnsupportedWidth { .. } => 15,
        Error::ValueTooWide { .. } => 16,
        Error::ReadOnly { .. } => 17,
        Error::NotReadable { .. } => 18,
        Error::NotMmapable { .. } => 19,
        Error::Io { .. } => 20,
        Error::Refused { .. } => 21,
        Error::Shadow { .. } => 22,
        Error::ShadowTableFull { .. } => 23,
        Error::MalformedCapability { .. } => 24,
        Error::MalformedConfig { .. } => 25,
        Error::Unsupported { .. } => 26,
        Error::NoSuchIrq { .. } => 27,
        Error::IrqVectorOutOfRange { .. } => 28,
        Error::IrqAlreadyEnabled { .. } => 29,
        Error::IrqTimeout { .. } => 30,
        Error::IrqNotMaskable { .. } => 31,
        Error::Iova { .. } => 32,
        Error::DmaMappingLimit { .. } => 33,
        Error::Kvm { .. } => 34,
        Error::KvmNoFreeSlot { .. } => 35,
        Error::GuestPlacement { .. } => 36,
        Error::KvmNoFreeGsi { .. } => 37,
        Error::IrqNoVectors => 38,
        Error::KvmGsiReserved { .. } => 39,
        Error::KvmRouting { .. } => 40,
        Error::InterfaceUnavailable { .. } => 41,
        Error::DeviceBusy { .. } => 42,
        Error::HotResetNotOwned { .. } => 43,
        Error::Open { .. } => 44,
        Error::MissingCapability { .. } => 45,
        Error::NoIommuWithoutOptIn { .. } => 46,
        Error::NotNoIommu { .. } => 47,
        Error::PhysicalDma { .. } => 48,
    }
}

#[test]
fn every_variant_has_its_kind_and_errno() {
    let samples = samples();
    let mut seen: Vec<usize> = samples.iter().map(|(e, ..)| ordinal(e)).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..VARIANTS).collect::<Vec<_>>(), "one sample per variant");
    for (err, kind, errno) in &samples {
        assert_eq!((err.kind(), err.errno()), (*kind, *errno), "{err:?}");
    }
}

#[test]
fn accesses_refused_by_the_region_flags_are_unsupported_not_revoked() {
    let err = Error::Refused {
        addr: "0000:00:02.0".parse().unwrap(),
        region: BAR0,
        count: 1,
        source: os(libc::EACCES),
    };
    assert_eq!(
        (err.kind(), err.errno()),
        (ErrorKind::Unsupported, Some(libc::EACCES))
    );
}

fn vfio_step(source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Vfio {
        addr: addr(),
        step: "map DMA",
        source: Box::new(source),
    }
}

#[test]
fn errno_is_found_inside_the_sources_vfio_ioctls_and_vm_memory_give() {
    let cases: [(Error, Option<i32>); 7] = [
        (
            vfio_step(VfioError::OpenGroup(os(libc::ENODEV), "5".into())),
            Some(libc::ENODEV),
        ),
        (
            vfio_step(VfioError::IommuDmaMap(SysError::new(libc::EINVAL))),
            Some(libc::EINVAL),
        ),
        (vfio_step(SysError::new(libc::E2BIG)), Some(libc::E2BIG)),
        (
            vfio_step(vm_memory::mmap::MmapRegionError::Mmap(os(libc::ENOMEM))),
            Some(libc::ENOMEM),
        ),
        (
            vfio_step(io::Error::other(SysError::new(libc::ENOSPC))),
            Some(libc::ENOSPC),
        ),
        (vfio_step(VfioError::GroupViable), None),
        (
            vfio_step(CapChainError {
                offset: 4,
                reason: "truncated header",
            }),
            None,
        ),
    ];
    for (err, errno) in &cases {
        assert_eq!(err.errno(), *errno, "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Io);
    }
}

#[test]
fn os_errors_are_sources_not_repeated_in_messages() {
    for (err, _, errno) in samples() {
        let Some(errno) = errno else { continue };
        let message = err.to_string();
        let os_text = os(errno).to_string();
        assert!(!message.contains(&os_text), "{message:?} repeats {os_text:?}");
        assert!(err.source().is_some(), "{err:?}");
    }
}

#[test]
fn a_failed_direct_mapping_names_its_step_and_area() {
    let err = Error::Shadow {
        addr: addr(),
        region: BAR0,
        step: "mapping a direct area",
        offset: 0x2000,
        len: 0x1000,
        source: os(libc::ENOMEM),
    };
    assert_eq!(
        err.to_string(),
        "0000:00:03.0 bar0: mapping a direct area failed at offset 0x2000 length 0x1000"
    );
}
