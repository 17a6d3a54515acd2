//! The no-IOMMU backend against the fake kernel: its open sequence, every
//! errno path, the opt-in refusals, and DMA at physical addresses (pagemap
//! parsing, contiguity, huge pages, the mask); and the real pagemap of a
//! child process without `CAP_SYS_ADMIN`.

use std::path::PathBuf;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::VFIO_NOIOMMU_IOMMU;

use super::fake::{Call, FakeKernel};
use super::noiommu::{NoIommuContainer, ProcMemory};
use super::MapFailure;
use super::{Container, Device, Interface};
use crate::dma::physical::{map_failure, parse_entry, Frame, HUGE_1G, HUGE_2M};
use crate::dma::{DmaMask, PhysicalDmaError};
use crate::error::{Error, ErrorKind};
use crate::pci::fake::{addr, FakeSys, A};
use capability::{report_without, CAP_SYS_ADMIN};

#[allow(dead_code)] // the device tests use the rest
#[path = "../../tests/common/capability.rs"]
mod capability;

const GROUP: u32 = 5;
const PRESENT: u64 = 1 << 63;
/// The fake pagemap's first frame (see `FakeKernel::edu`).
const FIRST_FRAME: u64 = 0x1_0000;

/// A sysfs with device A bound to vfio-pci in group 5, a no-IOMMU group if `noiommu`.
fn sys(noiommu: bool) -> FakeSys {
    let sys = FakeSys::with_device(Some(GROUP), &["vfio-pci"], Some("vfio-pci"));
    if noiommu {
        sys.set_group_name(GROUP, "vfio-noiommu\n");
    }
    sys
}

fn container(kernel: &FakeKernel) -> crate::Result<Container> {
    let backend = NoIommuContainer::open(Arc::new(kernel.clone()), Box::new(kernel.clone()))?;
    Ok(Container::with_backend(Arc::new(backend)))
}

fn open(kernel: &FakeKernel) -> crate::Result<Device> {
    Device::open_with(&sys(true).sysfs(), &container(kernel)?, addr(A))
}

fn opened(kernel: &FakeKernel) -> Device {
    let dev = open(kernel).unwrap();
    kernel.clear_calls();
    dev
}

fn node() -> PathBuf {
    PathBuf::from(format!("/dev/vfio/noiommu-{GROUP}"))
}

/// The open sequence's calls for the first device of a container.
fn first_open() -> Vec<Call> {
    vec![
        Call::OpenGroup(node()),
        Call::GroupStatus,
        Call::SetContainer,
        Call::SetIommu(VFIO_NOIOMMU_IOMMU),
        Call::DeviceFd(A.to_string()),
    ]
}

/// Which calls a failure is injected into.
type Matcher = fn(&Call) -> bool;

/// The message of `err`'s source.
fn source_text(err: &Error) -> String {
    std::error::Error::source(err)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

#[test]
fn the_container_checks_the_api_and_noiommu_extension_and_the_device_open_attaches_and_sets_the_iommu() {
    let kernel = FakeKernel::edu();
    let container = container(&kernel).unwrap();
    assert_eq!(
        kernel.calls(),
        vec![
            Call::OpenContainer,
            Call::ApiVersion,
            Call::CheckExtension(VFIO_NOIOMMU_IOMMU)
        ]
    );
    kernel.clear_calls();
    let dev = Device::open_with(&sys(true).sysfs(), &container, addr(A)).unwrap();
    let mut expected = first_open();
    expected.push(Call::DeviceInfo);
    expected.extend((0..9).map(Call::RegionInfo));
    assert_eq!(kernel.calls(), expected);
    assert_eq!(
        (container.interface(), dev.interface()),
        (Interface::NoIommu, Interface::NoIommu)
    );
    assert_eq!(dev.config().unwrap().read16(0).unwrap(), 0x1234);
}

#[test]
fn every_open_sets_the_iommu_and_the_kernels_einval_for_one_already_set_is_not_an_error() {
    let kernel = FakeKernel::edu();
    let container = container(&kernel).unwrap();
    let sys = sys(true);
    let set_iommu = |kernel: &FakeKernel| {
        let calls = kernel.calls();
        kernel.clear_calls();
        calls.iter().filter(|c| matches!(c, Call::SetIommu(_))).count()
    };
    let first = Device::open_with(&sys.sysfs(), &container, addr(A)).unwrap();
    assert_eq!(set_iommu(&kernel), 1);
    // The kernel keeps the IOMMU while any group of the container is
    // attached, whoever holds it (a child may have inherited a descriptor),
    // and answers EINVAL; the group joins it.
    kernel.fail(|c| matches!(c, Call::SetIommu(_)), libc::EINVAL, Some(1));
    let second = Device::open_with(&sys.sysfs(), &container, addr(A)).unwrap();
    assert_eq!(set_iommu(&kernel), 1, "asked, and EINVAL taken for set");
    assert_eq!(second.config().unwrap().read16(0).unwrap(), 0x1234);
    drop((first, second));
    let _third = Device::open_with(&sys.sysfs(), &container, addr(A)).unwrap();
    assert_eq!(set_iommu(&kernel), 1, "set again once every group left");
}

#[test]
fn noiommu_mode_off_is_vfio_unavailable_naming_the_interface() {
    let kernel = FakeKernel::edu();
    kernel.script().extension = 0;
    let err = container(&kernel).unwrap_err();
    match &err {
        Error::VfioUnavailable {
            interface, reason, ..
        } => {
            assert_eq!(*interface, Interface::NoIommu);
            assert!(reason.contains("enable_unsafe_noiommu_mode"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((err.kind(), err.errno()), (ErrorKind::NotConfigured, None));
    assert!(err.to_string().contains("no-IOMMU VFIO group"), "{err}");
}

#[test]
fn a_missing_container_node_or_failed_check_keeps_the_kernels_errno() {
    let kernel = FakeKernel::edu();
    kernel.fail(|c| *c == Call::OpenContainer, libc::ENOENT, Some(1));
    let err = container(&kernel).unwrap_err();
    assert!(
        matches!(
            err,
            Error::VfioUnavailable {
                interface: Interface::NoIommu,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        (err.kind(), err.errno()),
        (ErrorKind::NotConfigured, Some(libc::ENOENT))
    );
    kernel.fail(|c| matches!(c, Call::CheckExtension(_)), libc::ENOTTY, Some(1));
    assert_eq!(container(&kernel).unwrap_err().errno(), Some(libc::ENOTTY));
    assert!(container(&kernel).is_ok());
}

#[test]
fn eperm_at_every_step_is_missing_cap_sys_rawio_naming_step_and_node() {
    let steps: [(Matcher, &str, &str); 4] = [
        (
            |c| matches!(c, Call::OpenGroup(_)),
            "open the group node",
            "/dev/vfio/noiommu-5",
        ),
        (
            |c| *c == Call::SetContainer,
            "attach the group to the container",
            "/dev/vfio/noiommu-5",
        ),
        (
            |c| matches!(c, Call::SetIommu(_)),
            "set the container's IOMMU to VFIO_NOIOMMU_IOMMU",
            "/dev/vfio/vfio",
        ),
        (
            |c| matches!(c, Call::DeviceFd(_)),
            "get the device's descriptor",
            "/dev/vfio/noiommu-5",
        ),
    ];
    for (when, expected_step, expected_path) in steps {
        let kernel = FakeKernel::edu();
        kernel.fail(when, libc::EPERM, Some(1));
        let err = open(&kernel).unwrap_err();
        match &err {
            Error::MissingCapability {
                interface,
                step,
                path,
                capability,
                ..
            } => {
                assert_eq!(*interface, Interface::NoIommu);
                assert_eq!(*step, expected_step);
                assert_eq!(path.to_str(), Some(expected_path));
                assert_eq!(*capability, "CAP_SYS_RAWIO");
            }
            other => panic!("{expected_step}: {other:?}"),
        }
        assert_eq!(
            (err.kind(), err.errno()),
            (ErrorKind::PermissionDenied, Some(libc::EPERM))
        );
        assert!(err.to_string().contains("CAP_SYS_RAWIO"), "{err}");
    }
}

#[test]
fn a_busy_group_is_busy_naming_the_noiommu_node_and_the_next_open_works() {
    let kernel = FakeKernel::edu();
    let container = container(&kernel).unwrap();
    kernel.fail(|c| matches!(c, Call::OpenGroup(_)), libc::EBUSY, Some(1));
    let sys = sys(true);
    let err = Device::open_with(&sys.sysfs(), &container, addr(A)).unwrap_err();
    match &err {
        Error::Open { path, interface, .. } => {
            assert_eq!((path.clone(), *interface), (node(), Interface::NoIommu));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Busy, Some(libc::EBUSY)));
    assert!(Device::open_with(&sys.sysfs(), &container, addr(A)).is_ok());
}

#[test]
fn other_errnos_are_open_errors_with_their_step_and_errno() {
    let cases: [(Matcher, i32, &str); 4] = [
        (
            |c| matches!(c, Call::OpenGroup(_)),
            libc::ENOENT,
            "open the group node",
        ),
        (
            |c| *c == Call::GroupStatus,
            libc::ENODEV,
            "get the group's status",
        ),
        (
            |c| matches!(c, Call::SetIommu(_)),
            libc::ENODEV,
            "set the container's IOMMU to VFIO_NOIOMMU_IOMMU",
        ),
        (
            |c| matches!(c, Call::DeviceFd(_)),
            libc::ENODEV,
            "get the device's descriptor",
        ),
    ];
    for (when, errno, expected) in cases {
        let kernel = FakeKernel::edu();
        kernel.fail(when, errno, Some(1));
        let err = open(&kernel).unwrap_err();
        assert!(
            matches!(&err, Error::Open { step, interface: Interface::NoIommu, .. } if *step == expected),
            "{err:?}"
        );
        assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, Some(errno)));
    }
}

#[test]
fn a_group_the_kernel_finds_not_viable_is_not_attached() {
    let kernel = FakeKernel::edu();
    let container = container(&kernel).unwrap();
    kernel.clear_calls();
    kernel.script().group_flags = 0;
    let err = Device::open_with(&sys(true).sysfs(), &container, addr(A)).unwrap_err();
    assert!(
        matches!(err, Error::GroupNotViable { group: GROUP, .. }),
        "{err:?}"
    );
    assert_eq!(kernel.calls(), vec![Call::OpenGroup(node()), Call::GroupStatus]);
}

#[test]
fn a_noiommu_group_without_the_opt_in_is_refused_before_any_kernel_call() {
    let kernel = FakeKernel::edu();
    let legacy = Container::with_backend(Arc::new(kernel.clone()));
    let err = Device::open_with(&sys(true).sysfs(), &legacy, addr(A)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoIommuWithoutOptIn {
                group: GROUP,
                interface: Interface::Group,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
    assert!(
        err.to_string()
            .contains("Container::noiommu_device_reaches_all_memory"),
        "{err}"
    );
    assert!(kernel.calls().is_empty());
}

#[test]
fn a_group_with_an_iommu_in_the_noiommu_container_is_refused_before_any_group_call() {
    let kernel = FakeKernel::edu();
    let container = container(&kernel).unwrap();
    kernel.clear_calls();
    let err = Device::open_with(&sys(false).sysfs(), &container, addr(A)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotNoIommu {
                group: GROUP,
                interface: Interface::NoIommu,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(kernel.calls().is_empty());
}

#[test]
fn pagemap_entries_give_the_frame_when_present_and_shown() {
    assert_eq!(parse_entry(PRESENT | 0x12345), Frame::At(0x12345));
    // Bits 55-62 (soft-dirty, exclusive, file/shared, swapped) are not the frame.
    assert_eq!(
        parse_entry(PRESENT | (0xff << 55) | 0x7f_ffff_ffff_ffff),
        Frame::At(0x7f_ffff_ffff_ffff)
    );
    assert_eq!(parse_entry(0x12345), Frame::Absent, "not present");
    assert_eq!(parse_entry(1 << 62), Frame::Absent, "swapped");
    assert_eq!(
        parse_entry(PRESENT),
        Frame::Hidden,
        "frame 0 without CAP_SYS_ADMIN"
    );
}

#[test]
fn a_page_buffer_is_at_the_physical_address_pagemap_gives_with_no_iommu_call() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    assert!(dev.bus_master().unwrap());
    let buf = dma.alloc(100).unwrap();
    assert_eq!((buf.iova(), buf.size()), (FIRST_FRAME << 12, 4096));
    drop(buf);
    assert_eq!(
        kernel.calls(),
        vec![
            Call::MapMemory {
                len: 4096,
                page: 4096
            },
            Call::Pagemap { count: 1 }
        ],
        "no IOMMU info, map or unmap"
    );
}

#[test]
fn a_buffer_of_more_than_a_page_is_one_huge_page_checked_whole() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let buf = dma.alloc(4097).unwrap();
    assert_eq!((buf.iova(), buf.size() as u64), (FIRST_FRAME << 12, HUGE_2M));
    let big = dma.alloc(HUGE_2M as usize + 1).unwrap();
    assert_eq!(big.size() as u64, HUGE_1G, "beyond 2 MiB: a 1 GiB page");
    assert_eq!(
        kernel.calls(),
        vec![
            Call::MapMemory {
                len: HUGE_2M as usize,
                page: HUGE_2M
            },
            Call::Pagemap { count: 512 },
            Call::MapMemory {
                len: HUGE_1G as usize,
                page: HUGE_1G
            },
            Call::Pagemap { count: 262_144 },
        ]
    );
}

#[test]
fn pages_out_of_order_are_not_contiguous_naming_the_first_one() {
    let kernel = FakeKernel::edu();
    kernel.script().pagemap = |page| PRESENT | if page < 3 { 0x100 + page } else { 0x900 + page };
    let dev = opened(&kernel);
    let err = dev.dma(DmaMask::FULL).unwrap().alloc(0x8000).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhysicalDma {
                interface: Interface::NoIommu,
                len: 0x8000,
                source: PhysicalDmaError::NotContiguous { offset: 0x3000 },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
}

#[test]
fn frames_hidden_by_the_kernel_are_missing_cap_sys_admin() {
    let kernel = FakeKernel::edu();
    kernel.script().pagemap = |_| PRESENT;
    let dev = opened(&kernel);
    let err = dev.dma(DmaMask::FULL).unwrap().alloc(4096).unwrap_err();
    match &err {
        Error::MissingCapability {
            interface,
            path,
            capability,
            source,
            ..
        } => {
            assert_eq!(*interface, Interface::NoIommu);
            assert_eq!(path.to_str(), Some("/proc/self/pagemap"));
            assert_eq!(*capability, "CAP_SYS_ADMIN");
            assert!(source.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((err.kind(), err.errno()), (ErrorKind::PermissionDenied, None));
}

#[test]
fn a_page_pagemap_shows_absent_is_not_present() {
    let kernel = FakeKernel::edu();
    kernel.script().pagemap = |page| if page == 1 { 0 } else { PRESENT | (0x100 + page) };
    let dev = opened(&kernel);
    let err = dev.dma(DmaMask::FULL).unwrap().alloc(0x2000).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhysicalDma {
                source: PhysicalDmaError::NotPresent { offset: 0x1000 },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn without_huge_pages_more_than_a_page_is_refused_and_a_page_still_works() {
    let kernel = FakeKernel::edu();
    kernel.script().huge_pages = false;
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let err = dma.alloc(4097).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhysicalDma {
                source: PhysicalDmaError::NoHugePages { page: HUGE_2M, .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        (err.kind(), err.errno()),
        (ErrorKind::ResourceExhausted, Some(libc::ENOMEM))
    );
    let text = source_text(&err);
    assert!(text.contains("hugepages-2048kB/nr_hugepages"), "{text}");
    assert!(dma.alloc(4096).is_ok());
}

#[test]
fn a_buffer_reaching_past_the_mask_is_refused_and_one_ending_at_it_is_not() {
    let kernel = FakeKernel::edu();
    kernel.script().pagemap = |_| PRESENT | 0xffff;
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::bits(28)).unwrap();
    assert_eq!(
        dma.alloc(4096).unwrap().iova(),
        0x0fff_f000,
        "its last byte is the mask's"
    );
    kernel.script().pagemap = |_| PRESENT | 0x1_0000;
    let err = dma.alloc(4096).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhysicalDma {
                source: PhysicalDmaError::OverMask {
                    bus: 0x1000_0000,
                    last: 0x1000_0fff,
                    limit: 0x0fff_ffff
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
}

#[test]
fn a_dropped_buffers_memory_stays_with_the_device_and_the_next_of_its_size_reuses_it_zeroed() {
    use vm_memory::{Bytes, VolatileMemory};
    let kernel = FakeKernel::edu();
    kernel.script().huge_pages = true;
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let maps = |kernel: &FakeKernel| {
        let calls = kernel.calls();
        kernel.clear_calls();
        calls
            .iter()
            .filter(|c| matches!(c, Call::MapMemory { .. }))
            .count()
    };
    let buf = dma.alloc(4096).unwrap();
    buf.as_volatile_slice().write_slice(&[0xa5; 64], 0).unwrap();
    let host = buf.as_volatile_slice().ptr_guard().as_ptr() as usize;
    assert_eq!(maps(&kernel), 1);
    drop(buf);
    assert_eq!(
        dev.retired_dma().count(),
        1,
        "the device may still write it: kept"
    );
    let again = dma.alloc(100).unwrap();
    assert_eq!(maps(&kernel), 0, "no new memory");
    assert_eq!(dev.retired_dma().count(), 0);
    assert_eq!(again.as_volatile_slice().ptr_guard().as_ptr() as usize, host);
    let mut bytes = [0xffu8; 64];
    again.as_volatile_slice().read_slice(&mut bytes, 0).unwrap();
    assert_eq!(bytes, [0; 64], "handed out zeroed");
    // Another size or page size takes new memory and leaves the kept one.
    drop(again);
    let huge = dma.alloc(8192).unwrap();
    assert_eq!(maps(&kernel), 1);
    assert_eq!(dev.retired_dma().count(), 1);
    drop(huge);
    assert_eq!(dev.retired_dma().count(), 2);
}

#[test]
fn a_failed_huge_mmap_is_no_huge_pages_and_a_failed_mlock_names_the_lock_step() {
    let os = std::io::Error::from_raw_os_error;
    for errno in [libc::ENOMEM, libc::EINVAL] {
        assert!(matches!(
            map_failure(MapFailure::Map(os(errno)), HUGE_2M),
            PhysicalDmaError::NoHugePages { page: HUGE_2M, .. }
        ));
    }
    assert!(matches!(
        map_failure(MapFailure::Map(os(libc::ENOMEM)), 4096),
        PhysicalDmaError::System {
            step: "map memory",
            ..
        }
    ));
    for page in [4096, HUGE_2M, HUGE_1G] {
        let err = map_failure(MapFailure::Lock(os(libc::ENOMEM)), page);
        match err {
            PhysicalDmaError::System { step, source } => {
                assert!(step.starts_with("lock memory"), "{step}");
                assert_eq!(source.raw_os_error(), Some(libc::ENOMEM));
            }
            other => panic!("page {page:#x}: {other:?}"),
        }
    }
}

#[test]
fn a_reused_region_that_fails_its_checks_stays_retired() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    drop(dev.dma(DmaMask::FULL).unwrap().alloc(4096).unwrap());
    assert_eq!(dev.retired_dma().count(), 1);
    kernel.script().pagemap = |_| PRESENT | 0x1_0000;
    let err = dev.dma(DmaMask::bits(28)).unwrap().alloc(4096).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhysicalDma {
                source: PhysicalDmaError::OverMask { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(dev.retired_dma().count(), 1, "not freed: the device may write it");
}

#[test]
fn guest_memory_iova_ranges_and_empty_buffers_are_refused_without_an_iommu() {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let err = dma.map_guest_memory(&ram).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert_eq!(dma.iova_ranges().unwrap_err().kind(), ErrorKind::Unsupported);
    let err = dma.alloc(0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PhysicalDma {
                source: PhysicalDmaError::ZeroSize,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(kernel
        .calls()
        .iter()
        .all(|c| !matches!(c, Call::IommuInfo | Call::MapDma { .. } | Call::MapMemory { .. })));
}

/// What the real pagemap path gives a 4 KiB buffer here: "frames hidden",
/// "frame N" or another error's text.
fn real_alloc_report(dma: &crate::Dma) -> String {
    match dma.alloc(4096) {
        Ok(buf) => format!("frame {:#x}", buf.iova() >> 12),
        Err(Error::MissingCapability {
            capability: "CAP_SYS_ADMIN",
            ..
        }) => "frames hidden".to_string(),
        Err(e) => format!("error: {e:?}"),
    }
}

/// The real /proc/self/pagemap, read through the library's path, in a
/// forked child that dropped `CAP_SYS_ADMIN`: the typed error. The parent
/// reads the child's report from a pipe (a child that ran nothing sends
/// none, and fails the test) and, if it has the capability itself, checks
/// that it gets a real frame through the same path.
#[test]
fn real_pagemap_without_cap_sys_admin_is_missing_capability_in_a_child() {
    let kernel = FakeKernel::edu();
    let backend = NoIommuContainer::open(Arc::new(kernel.clone()), Box::new(ProcMemory)).unwrap();
    let container = Container::with_backend(Arc::new(backend));
    let dev = Device::open_with(&sys(true).sysfs(), &container, addr(A)).unwrap();
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let report = report_without(CAP_SYS_ADMIN, || real_alloc_report(&dma));
    assert_eq!(report, "frames hidden", "the child's report");
    if capability::has(CAP_SYS_ADMIN) {
        let own = real_alloc_report(&dma);
        assert!(own.starts_with("frame ") && own != "frame 0x0", "{own}");
    }
}
