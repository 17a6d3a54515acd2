//! What a caller branches on: the category of an [`Error`] and the kernel
//! errno behind it, without downcasting its source.

use std::error::Error as StdError;
use std::io;

use super::Error;

/// The category of an [`Error`], for a caller that acts on what kind of
/// failure it is rather than on the variant. Every variant has exactly one
/// kind, listed here; [`Error::errno`] adds the kernel's reason where there
/// is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller asked for something that can never succeed as asked:
    /// [`Error::InvalidAddress`], [`Error::Misaligned`],
    /// [`Error::UnsupportedWidth`], [`Error::ValueTooWide`],
    /// [`Error::GuestPlacement`], [`Error::IrqNoVectors`] (a wait on nothing),
    /// [`Error::KvmGsiReserved`] (a VMM route on a GSI barmap allocates).
    InvalidInput,
    /// An offset, length or vector past the end of what the device has:
    /// [`Error::OutOfRange`], [`Error::IrqVectorOutOfRange`].
    OutOfRange,
    /// The device, region or interrupt index asked for does not exist:
    /// [`Error::DeviceNotFound`], [`Error::NoSuchRegion`], [`Error::NoSuchIrq`].
    NotFound,
    /// The host is not set up for VFIO access to the device: VFIO itself
    /// ([`Error::VfioUnavailable`]: modules not loaded, no access to the
    /// node, a kernel without type1v2 or without iommufd; its errno tells
    /// which), the device's driver ([`Error::NotBoundToVfio`],
    /// [`Error::BindFailed`]), its IOMMU group ([`Error::NoIommuGroup`],
    /// [`Error::GroupNotViable`]), or the kernel interface asked for
    /// ([`Error::InterfaceUnavailable`]).
    NotConfigured,
    /// Opening a VFIO node was refused: [`Error::PermissionDenied`].
    PermissionDenied,
    /// Something is held by someone else: the IOMMU group by another process
    /// or container ([`Error::GroupBusy`]), a device cdev by another open
    /// ([`Error::DeviceBusy`]), a device on the bus a hot reset would reset
    /// ([`Error::HotResetNotOwned`]), or another interrupt index
    /// ([`Error::IrqAlreadyEnabled`]).
    Busy,
    /// The platform, kernel, device or region cannot do this:
    /// [`Error::Unsupported`], [`Error::NotMmapable`], [`Error::ReadOnly`],
    /// [`Error::NotReadable`], [`Error::IrqNotMaskable`], and
    /// [`Error::Refused`] with `EACCES` (the region's flags forbade them).
    Unsupported,
    /// Waiting ran out: [`Error::IrqTimeout`].
    Timeout,
    /// The device refused accesses it used to serve (memory decoding off, a
    /// reset): [`Error::Refused`].
    Revoked,
    /// A bounded resource is used up: the fault handler's table
    /// ([`Error::ShadowTableFull`]), IOVA space ([`Error::Iova`], whose
    /// source also tells ranges that can never fit), the kernel's DMA mapping
    /// limit ([`Error::DmaMappingLimit`]), KVM memory slots
    /// ([`Error::KvmNoFreeSlot`]) or GSIs ([`Error::KvmNoFreeGsi`]).
    ResourceExhausted,
    /// What the kernel or the device reported could not be parsed:
    /// [`Error::SysfsParse`], [`Error::MalformedCapability`],
    /// [`Error::MalformedConfig`].
    Malformed,
    /// A system call failed; [`Error::errno`] says why: [`Error::Sysfs`],
    /// [`Error::Vfio`], [`Error::Io`], [`Error::Shadow`], [`Error::Kvm`],
    /// [`Error::KvmRouting`].
    Io,
}

impl Error {
    /// The category of this error (see [`ErrorKind`] for which variant has
    /// which).
    pub fn kind(&self) -> ErrorKind {
        use ErrorKind as K;
        match self {
            Error::InvalidAddress { .. }
            | Error::Misaligned { .. }
            | Error::UnsupportedWidth { .. }
            | Error::ValueTooWide { .. }
            | Error::GuestPlacement { .. }
            | Error::IrqNoVectors
            | Error::KvmGsiReserved { .. } => K::InvalidInput,
            Error::OutOfRange { .. } | Error::IrqVectorOutOfRange { .. } => K::OutOfRange,
            Error::DeviceNotFound { .. } | Error::NoSuchRegion { .. } | Error::NoSuchIrq { .. } => {
                K::NotFound
            }
            Error::VfioUnavailable { .. }
            | Error::NotBoundToVfio { .. }
            | Error::BindFailed { .. }
            | Error::NoIommuGroup { .. }
            | Error::GroupNotViable { .. }
            | Error::InterfaceUnavailable { .. } => K::NotConfigured,
            Error::PermissionDenied { .. } | Error::MissingCapability { .. } => K::PermissionDenied,
            Error::NoIommuWithoutOptIn { .. } => K::NotConfigured,
            Error::NotNoIommu { .. } => K::InvalidInput,
            Error::Open { source, .. } => match source.raw_os_error() {
                Some(libc::EBUSY) => K::Busy,
                Some(libc::EACCES | libc::EPERM) => K::PermissionDenied,
                _ => K::Io,
            },
            Error::PhysicalDma { source, .. } => source.kind(),
            Error::GroupBusy { .. }
            | Error::DeviceBusy { .. }
            | Error::HotResetNotOwned { .. }
            | Error::IrqAlreadyEnabled { .. } => K::Busy,
            Error::Unsupported { .. }
            | Error::NotMmapable { .. }
            | Error::ReadOnly { .. }
            | Error::NotReadable { .. }
            | Error::IrqNotMaskable { .. } => K::Unsupported,
            Error::IrqTimeout { .. } => K::Timeout,
            Error::Refused { source, .. } if source.raw_os_error() == Some(libc::EACCES) => K::Unsupported,
            Error::Refused { .. } => K::Revoked,
            Error::ShadowTableFull { .. }
            | Error::Iova { .. }
            | Error::DmaMappingLimit { .. }
            | Error::KvmNoFreeSlot { .. }
            | Error::KvmNoFreeGsi { .. } => K::ResourceExhausted,
            Error::SysfsParse { .. } | Error::MalformedCapability { .. } | Error::MalformedConfig { .. } => {
                K::Malformed
            }
            Error::Sysfs { .. }
            | Error::Vfio { .. }
            | Error::Io { .. }
            | Error::Shadow { .. }
            | Error::Kvm { .. }
            | Error::KvmRouting { .. } => K::Io,
        }
    }

    /// The kernel errno behind this error, if a system call's failure is
    /// behind it: the first one along its chain of sources, whether that is a
    /// [`std::io::Error`], a `vmm_sys_util` errno (what kvm-ioctls and
    /// vfio-ioctls report) or a vfio-ioctls or vm-memory error wrapping one.
    ///
    /// Variants that carry an OS error: [`Error::Sysfs`],
    /// [`Error::VfioUnavailable`] (unless the kernel lacks an API, which has
    /// no errno), [`Error::GroupBusy`] (`EBUSY`), [`Error::DeviceBusy`]
    /// (`EBUSY` or `EINVAL`), [`Error::InterfaceUnavailable`] (when an OS
    /// error said so), [`Error::PermissionDenied`]
    /// (`EACCES` or `EPERM`), [`Error::Vfio`] (unless a step failed in
    /// barmap's own parsing), [`Error::Io`], [`Error::Refused`] (`EIO` or
    /// `EACCES`), [`Error::Shadow`], [`Error::Kvm`] and [`Error::KvmRouting`].
    /// Every other variant is found by
    /// barmap itself and has none.
    pub fn errno(&self) -> Option<i32> {
        let mut next = StdError::source(self);
        while let Some(err) = next {
            if let Some(e) = err.downcast_ref::<io::Error>() {
                if let Some(errno) = e.raw_os_error() {
                    return Some(errno);
                }
                if let Some(inner) = e.get_ref() {
                    // A custom io::Error: its source() skips the payload itself.
                    next = Some(inner);
                    continue;
                }
            } else if let Some(e) = err.downcast_ref::<vmm_sys_util::errno::Error>() {
                return Some(e.errno());
            } else if let Some(vm_memory::mmap::MmapRegionError::Mmap(e)) = err.downcast_ref() {
                // vm-memory does not report this one as its source().
                next = Some(e);
                continue;
            }
            next = err.source();
        }
        None
    }
}
