//! The one error type of barmap.
//!
//! Every variant carries what a user needs to act on it: the PCI address of
//! the device it is about, the region, the offset and width involved, and the
//! underlying OS error as its `source()` (never repeated in its message).
//! Four variants come before any one device is known, and name what they are
//! about instead: the text of a malformed address ([`Error::InvalidAddress`]),
//! the sysfs file ([`Error::Sysfs`], [`Error::SysfsParse`]) and the VFIO
//! container node ([`Error::VfioUnavailable`]); a wait on no vector at all
//! ([`Error::IrqNoVectors`]) has no device to name. Errors are always
//! returned, never only logged.
//!
//! A caller that branches on what went wrong asks [`Error::kind`] for its
//! [`ErrorKind`] and [`Error::errno`] for the kernel's errno, instead of
//! matching variants or downcasting sources. The enum is the same with and
//! without the `kvm` feature: its KVM variants carry no kvm-ioctls type.

use std::io;
use std::path::PathBuf;

mod kind;
#[cfg(test)]
mod tests;

pub use kind::ErrorKind;

use crate::dma::{IovaError, PhysicalDmaError};
use crate::irq::IrqIndex;
use crate::pci::PciAddress;
use crate::region::RegionIndex;
use crate::Interface;

/// Result type of every fallible barmap call.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in barmap.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A PCI address string could not be parsed.
    #[error("invalid PCI address {input:?}: {reason} (expected DDDD:BB:DD.F or BB:DD.F)")]
    InvalidAddress {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// No PCI device with this address exists.
    #[error("PCI device {addr} does not exist ({path} is missing)")]
    DeviceNotFound {
        /// The address that was asked for.
        addr: PciAddress,
        /// The sysfs directory that was looked for.
        path: PathBuf,
    },

    /// Reading or writing a sysfs attribute failed.
    #[error("sysfs access to {path} failed")]
    Sysfs {
        /// The sysfs file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A sysfs attribute held something that could not be parsed.
    #[error("sysfs file {path} holds {content:?}, which is not {expected}")]
    SysfsParse {
        /// The sysfs file involved.
        path: PathBuf,
        /// What it contained.
        content: String,
        /// What was expected.
        expected: &'static str,
    },

    /// The node of a kernel interface (the VFIO container, `/dev/iommu`)
    /// cannot be opened or lacks what barmap needs.
    #[error("{interface} is not usable through {path}: {reason}")]
    VfioUnavailable {
        /// The interface that was tried.
        interface: Interface,
        /// The node involved.
        path: PathBuf,
        /// What to do about it.
        reason: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A step of opening a device through a kernel interface failed.
    #[error("{addr}: {step} on {path} failed through the {interface}")]
    Open {
        /// The device.
        addr: PciAddress,
        /// The kernel interface that was tried.
        interface: Interface,
        /// Which step failed (e.g. "open the group node").
        step: &'static str,
        /// The node the step was on.
        path: PathBuf,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },

    /// The kernel refused a step to a process without a capability it needs
    /// (`EPERM`), or answered without what only that capability shows.
    #[error("{addr}: {step} on {path} through the {interface} needs {capability}: run as root, or grant it")]
    MissingCapability {
        /// The device.
        addr: PciAddress,
        /// The kernel interface that was tried.
        interface: Interface,
        /// What was refused (e.g. "open the group node").
        step: &'static str,
        /// The node or file the step was on.
        path: PathBuf,
        /// The capability (`CAP_SYS_RAWIO`, `CAP_SYS_ADMIN`).
        capability: &'static str,
        /// The kernel's error (`EPERM`); `None` where the kernel answered
        /// without the data instead (pagemap shows frame 0).
        #[source]
        source: Option<io::Error>,
    },

    /// The device is in a no-IOMMU group (VFIO's unsafe no-IOMMU mode), and
    /// was to be opened in a container with an IOMMU.
    #[error(
        "{addr} is in no-IOMMU group {group}: nothing translates its DMA and it can reach all memory; \
         it opens only in Container::noiommu_device_reaches_all_memory(), not through the {interface}"
    )]
    NoIommuWithoutOptIn {
        /// The device.
        addr: PciAddress,
        /// Its group (`/dev/vfio/noiommu-GROUP`).
        group: u32,
        /// The kernel interface that was tried.
        interface: Interface,
    },

    /// The device is in an IOMMU group that has an IOMMU, and was to be
    /// opened in the no-IOMMU container, which takes only no-IOMMU groups.
    #[error("{addr} is in IOMMU group {group}, which has an IOMMU: the {interface} takes only no-IOMMU groups; open it with Device::open")]
    NotNoIommu {
        /// The device.
        addr: PciAddress,
        /// Its group.
        group: u32,
        /// The kernel interface that was tried.
        interface: Interface,
    },

    /// The device is bound to another driver (or none) instead of vfio-pci.
    #[error(
        "{addr} is not bound to vfio-pci (current driver: {}); bind it first (sysfs driver_override, then drivers_probe)",
        driver.as_deref().unwrap_or("none")
    )]
    NotBoundToVfio {
        /// The device.
        addr: PciAddress,
        /// The driver it is bound to, if any.
        driver: Option<String>,
    },

    /// The device has no IOMMU group: the IOMMU is off or absent.
    #[error("{addr} has no IOMMU group: is the IOMMU enabled (e.g. intel_iommu=on)?")]
    NoIommuGroup {
        /// The device.
        addr: PciAddress,
    },

    /// Some device in the IOMMU group is bound to a host driver, so VFIO refuses the group.
    #[error(
        "IOMMU group {group} of {addr} is not viable: {} must be bound to vfio-pci or unbound",
        blockers.join(", ")
    )]
    GroupNotViable {
        /// The device that was being opened.
        addr: PciAddress,
        /// The IOMMU group number.
        group: u32,
        /// The devices of the group (with their drivers) that make it non-viable.
        blockers: Vec<String>,
    },

    /// Binding a device to a driver (or giving it back) did not take effect.
    #[error("binding {addr} to {driver} failed: {reason}")]
    BindFailed {
        /// The device.
        addr: PciAddress,
        /// The driver it was to be bound to.
        driver: String,
        /// What went wrong and what to do about it.
        reason: String,
    },

    /// The group is already open in another process or container.
    #[error("IOMMU group {group} of {addr} is busy: /dev/vfio/{group} is already held by another process or container")]
    GroupBusy {
        /// The device that was being opened.
        addr: PciAddress,
        /// The IOMMU group number.
        group: u32,
        /// The OS error of the open (`EBUSY`).
        #[source]
        source: io::Error,
    },

    /// Opening a VFIO node (or binding a device cdev) was refused.
    #[error(
        "{interface}: permission denied opening {path} for {addr}: run as root or grant access to the node"
    )]
    PermissionDenied {
        /// The device.
        addr: PciAddress,
        /// The interface that was tried.
        interface: Interface,
        /// The node that could not be opened.
        path: PathBuf,
        /// The OS error of the open (`EACCES` or `EPERM`).
        #[source]
        source: io::Error,
    },

    /// The device cannot be opened through the interface asked for (the
    /// kernel lacks it for the device, or barmap opens it only another way).
    #[error("{addr} cannot be opened through the {interface}: {reason} ({path})")]
    InterfaceUnavailable {
        /// The device.
        addr: PciAddress,
        /// The interface that was tried.
        interface: Interface,
        /// The file or directory that says so.
        path: PathBuf,
        /// Why, and what to do about it.
        reason: &'static str,
        /// The OS error, if one said so.
        #[source]
        source: Option<io::Error>,
    },

    /// The device is held by another open: its cdev is bound to an iommufd
    /// already (by another process or descriptor), or its group is open.
    #[error("{addr} is busy for the {interface}: {reason} ({path})")]
    DeviceBusy {
        /// The device.
        addr: PciAddress,
        /// The interface that was tried.
        interface: Interface,
        /// The node that was being bound.
        path: PathBuf,
        /// What holds it, as the kernel's errno tells.
        reason: &'static str,
        /// The kernel's error (`EBUSY` or `EINVAL`).
        #[source]
        source: io::Error,
    },

    /// A hot reset would reset devices this process does not own (through
    /// the iommufd of a cdev-opened device); the kernel was not asked.
    #[error(
        "{addr}: a hot reset through the {interface} would reset {}, not bound to this device's iommufd",
        not_owned.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    HotResetNotOwned {
        /// The device.
        addr: PciAddress,
        /// The interface the device is opened through.
        interface: Interface,
        /// The devices on the bus that are not owned.
        not_owned: Vec<PciAddress>,
    },

    /// A VFIO step failed in the kernel.
    #[error("VFIO {step} failed for {addr}")]
    Vfio {
        /// The device.
        addr: PciAddress,
        /// Which step failed (e.g. "open container", "attach group", "get region info").
        step: &'static str,
        /// The error from vfio-ioctls or the kernel.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The region index does not name a region of this device.
    #[error("{addr} has no region {region} (it has {count} regions, or the region has size 0)")]
    NoSuchRegion {
        /// The device.
        addr: PciAddress,
        /// The region asked for.
        region: RegionIndex,
        /// How many regions the device reports.
        count: u32,
    },

    /// An access reaches outside the region.
    #[error(
        "{addr} {region}: {len}-byte access at offset {offset:#x} is out of range (region size {size:#x})"
    )]
    OutOfRange {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// The offset of the access in the region.
        offset: u64,
        /// The length of the access in bytes.
        len: u64,
        /// The size of the region.
        size: u64,
    },

    /// An access is not naturally aligned for its width.
    #[error("{addr} {region}: {width}-byte access at offset {offset:#x} is not {width}-byte aligned")]
    Misaligned {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// The offset of the access.
        offset: u64,
        /// The width of the access in bytes.
        width: usize,
    },

    /// An access width other than 1, 2, 4 or 8 bytes.
    #[error("{addr} {region}: unsupported access width of {width} bytes (use 1, 2, 4 or 8)")]
    UnsupportedWidth {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// The width that was asked for, in bytes.
        width: usize,
    },

    /// A value to write does not fit in the access width.
    #[error("{addr} {region}: value {value:#x} does not fit in {width} bytes")]
    ValueTooWide {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// The value.
        value: u64,
        /// The width of the access in bytes.
        width: usize,
    },

    /// The region does not allow writes.
    #[error("{addr} {region} is read-only: the kernel does not report it writable")]
    ReadOnly {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
    },

    /// The region does not allow reads.
    #[error("{addr} {region} is not readable")]
    NotReadable {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
    },

    /// A direct mapping was asked for where the kernel offers none.
    #[error("{addr} {region} cannot be mmapped: {reason}")]
    NotMmapable {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// Why not.
        reason: &'static str,
    },

    /// A read or write of the device through the VFIO file descriptor failed.
    #[error("{addr} {region}: {len}-byte access at offset {offset:#x} failed")]
    Io {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// Offset in the region.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Accesses to the region were refused. The device refuses them (`EIO`)
    /// while its memory decoding is off (command register) and when a reset
    /// cannot be waited out; barmap's fault handler refuses (`EACCES`) a
    /// store through the pointer to a region without the write flag and a
    /// load from one without the read flag. Accesses through the mapping or
    /// pointer were completed as PCIe completes an unsupported request (reads
    /// returned all-ones, writes were dropped); `pread`/`pwrite` failed with
    /// `EIO`.
    ///
    /// Every typed access of a [`crate::Region`] that the device refused
    /// returns this, on every path (see the contract in [`crate::Region`]'s
    /// [refused accesses](crate::Region#refused-accesses)); accesses through
    /// the region's pointer are reported by the next typed access that finds
    /// the record, or by [`crate::Region::take_error`].
    #[error("{addr} {region}: {count} access(es) refused (reads returned all-ones, writes were dropped)")]
    Refused {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// How many accesses were refused since the record was last taken.
        count: u64,
        /// The OS error of the last one (`EIO` while decoding is off,
        /// `EACCES` for one the region's flags forbid).
        #[source]
        source: io::Error,
    },

    /// Setting up a region's mapping failed: reserving its address range,
    /// mapping one of its direct areas into that range, or registering its
    /// shadow part with the fault handler.
    #[error("{addr} {region}: {step} failed at offset {offset:#x} length {len:#x}")]
    Shadow {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// The step that failed (e.g. "reserving the address range", "mapping a direct area").
        step: &'static str,
        /// Offset in the region of the part involved.
        offset: u64,
        /// Length of the part involved.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A shadow region could not be registered: the fault handler's table of
    /// live shadow regions is full.
    #[error(
        "{addr} {region}: too many live shadow regions (the fault handler serves at most {capacity} at once); drop one first"
    )]
    ShadowTableFull {
        /// The device.
        addr: PciAddress,
        /// The region.
        region: RegionIndex,
        /// How many shadow regions may be live at once in a process.
        capacity: usize,
    },

    /// The capability chain of a region's info is malformed.
    #[error("{addr} {region}: malformed VFIO capability chain at byte {offset}: {reason}")]
    MalformedCapability {
        /// The device.
        addr: PciAddress,
        /// The region whose info holds the chain.
        region: RegionIndex,
        /// Byte offset in the info buffer where the problem was found.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },

    /// A capability list in a device's PCI config space is malformed.
    #[error("{addr} config space: malformed capability list at offset {offset:#x}: {reason}")]
    MalformedConfig {
        /// The device.
        addr: PciAddress,
        /// Offset in config space of the bad pointer or capability header.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },

    /// Something this platform or kernel cannot do.
    #[error("{addr}: {what} is not supported: {reason}")]
    Unsupported {
        /// The device.
        addr: PciAddress,
        /// The feature.
        what: &'static str,
        /// Why not.
        reason: &'static str,
    },

    /// The device has no interrupts of this index (the kernel reports none, or a count of 0).
    #[error("{addr} has no {index} interrupts")]
    NoSuchIrq {
        /// The device.
        addr: PciAddress,
        /// The interrupt index asked for.
        index: IrqIndex,
    },

    /// A vector number at or past the number of vectors the device has (or that are enabled).
    #[error("{addr} {index}: vector {vector} does not exist (there are {count})")]
    IrqVectorOutOfRange {
        /// The device.
        addr: PciAddress,
        /// The interrupt index.
        index: IrqIndex,
        /// The vector asked for (for an enable, the number of vectors asked for minus one).
        vector: u32,
        /// How many vectors there are.
        count: u32,
    },

    /// An interrupt index was enabled while it, or another one that excludes it
    /// (INTx, MSI and MSI-X exclude each other), is enabled.
    #[error(
        "{addr}: cannot enable {index} interrupts while {active} interrupts are enabled; drop them first"
    )]
    IrqAlreadyEnabled {
        /// The device.
        addr: PciAddress,
        /// The index that was to be enabled.
        index: IrqIndex,
        /// The index that is enabled.
        active: IrqIndex,
    },

    /// No interrupt arrived within the timeout.
    #[error("{addr} {index} vector {vector}: no interrupt within {timeout:?}")]
    IrqTimeout {
        /// The device.
        addr: PciAddress,
        /// The interrupt index.
        index: IrqIndex,
        /// The vector waited on (the first one, for a wait on several).
        vector: u32,
        /// How long was waited.
        timeout: std::time::Duration,
    },

    /// [`irq::wait_any`](crate::irq::wait_any) was given no vector to wait on:
    /// nothing could ever fire.
    #[error("waiting on an empty set of interrupt vectors: pass at least one")]
    IrqNoVectors,

    /// Masking was asked of an interrupt index the kernel cannot mask.
    #[error("{addr}: {index} interrupts cannot be masked (the kernel does not report them maskable)")]
    IrqNotMaskable {
        /// The device.
        addr: PciAddress,
        /// The interrupt index.
        index: IrqIndex,
    },

    /// No IOVA range could be found or reserved for a DMA mapping.
    #[error("{addr}: no IOVA range for a DMA mapping")]
    Iova {
        /// The device the mapping is for.
        addr: PciAddress,
        /// What is wrong (exhausted, too large, over the DMA mask, overlap, reserved).
        #[source]
        source: IovaError,
    },

    /// A DMA buffer for a device without an IOMMU could not be made as the
    /// device needs it: locked memory, physically contiguous, below its mask.
    #[error("{addr}: DMA buffer of {len:#x} bytes through the {interface}")]
    PhysicalDma {
        /// The device the buffer is for.
        addr: PciAddress,
        /// The kernel interface (no IOMMU).
        interface: Interface,
        /// The size asked for.
        len: u64,
        /// What is wrong.
        #[source]
        source: PhysicalDmaError,
    },

    /// The container holds as many DMA mappings as the kernel allows
    /// (`vfio_iommu_type1`'s `dma_entry_limit`, from the DMA-available capability).
    #[error("{addr}: the container already holds {limit} DMA mappings, the most the kernel allows")]
    DmaMappingLimit {
        /// The device the mapping is for.
        addr: PciAddress,
        /// How many mappings the container may hold.
        limit: u32,
    },

    /// A KVM call made for a passed-through device failed.
    #[error("{addr}: KVM could not {step}")]
    Kvm {
        /// The device.
        addr: PciAddress,
        /// What was being done (e.g. "set a user memory region for a BAR").
        step: &'static str,
        /// The kernel's error (kvm-ioctls reports an errno).
        #[source]
        source: io::Error,
    },

    /// Every memory slot barmap may use in the VM is taken.
    #[error("{addr} {region}: no free KVM memory slot (barmap uses slots {first}..{limit}, all taken)")]
    KvmNoFreeSlot {
        /// The device.
        addr: PciAddress,
        /// The region to pass through.
        region: RegionIndex,
        /// The first slot number barmap may use.
        first: u32,
        /// One past the last slot number barmap may use (the end of the
        /// range given to `Vm::new`, at most `KVM_CAP_NR_MEMSLOTS`).
        limit: u32,
    },

    /// A BAR cannot be placed at this guest address.
    #[error("{addr} {region}: cannot place the BAR at guest address {base:#x}: {reason}")]
    GuestPlacement {
        /// The device.
        addr: PciAddress,
        /// The region to pass through.
        region: RegionIndex,
        /// The guest-physical address (or port) asked for.
        base: u64,
        /// Why not.
        reason: &'static str,
    },

    /// Every GSI barmap may route in the VM is taken.
    #[error("{addr}: no free GSI to route an interrupt on ({limit} routes at most)")]
    KvmNoFreeGsi {
        /// The device.
        addr: PciAddress,
        /// One past the last GSI barmap may allocate (the end of the range
        /// given to `GsiRoutes::new`, at most `KVM_CAP_IRQ_ROUTING`).
        limit: u32,
    },

    /// The VMM asked for a route of its own on a GSI that barmap allocates.
    #[error("GSI {gsi} is one barmap allocates (GSIs {first}..{limit}): the VMM's own routes must lie outside them")]
    KvmGsiReserved {
        /// The route's GSI.
        gsi: u32,
        /// The first GSI barmap may allocate (of the range given to `GsiRoutes::new`).
        first: u32,
        /// One past the last GSI barmap may allocate.
        limit: u32,
    },

    /// KVM refused the GSI routing table with a change of the VMM's own
    /// routes (`KVM_SET_GSI_ROUTING`); the table is as it was before.
    #[error("KVM refused the GSI routing table with the VMM's route of GSI {gsi}")]
    KvmRouting {
        /// The GSI of the (first) route added or removed.
        gsi: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}
