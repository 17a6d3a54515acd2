//! The iommufd backend's logic against the fake kernel: interface
//! selection, the open sequence's errno paths, the IOVA-ranges protocol and
//! hot resets of cdev-opened devices (named by iommufd device ids).

use std::fs;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_DEVID_NOT_OWNED, VFIO_PCI_DEVID_OWNED, VFIO_PCI_HOT_RESET_FLAG_DEV_ID,
    VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED,
};

use super::backend::{DependentDevice, OpenFailure};
use super::fake::{Call, FakeIovaRanges, FakeKernel};
use super::iommufd::ioctl::{read_iova_ranges, IovaRanges};
use super::iommufd::{cdev_name, iommu_info};
use super::select::{choose, Choice};
use super::{Container, Device, Interface, ResetKind};
use crate::dma::DmaMask;
use crate::error::{Error, ErrorKind};
use crate::pci::fake::{addr, FakeSys, A};
use crate::pci::PciAddress;

const GROUP: u32 = 5;

fn sys() -> FakeSys {
    FakeSys::with_device(Some(GROUP), &["vfio-pci"], Some("vfio-pci"))
}

/// Gives device A a cdev `name` in sysfs (`vfio-dev/NAME`).
fn add_cdev(sys: &FakeSys, name: &str) {
    let dir = sys.sysfs().device_path(addr(A)).join("vfio-dev").join(name);
    fs::create_dir_all(dir).unwrap();
}

/// A `/dev/vfio/devices` holding the nodes `names`.
fn cdev_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        fs::write(dir.path().join(name), "").unwrap();
    }
    dir
}

/// A fake kernel playing the cdev interface.
fn iommufd_kernel() -> FakeKernel {
    let kernel = FakeKernel::edu();
    kernel.script().interface = Interface::Iommufd;
    kernel
}

fn open(kernel: &FakeKernel) -> crate::Result<Device> {
    let container = Container::with_backend(Arc::new(kernel.clone()));
    Device::builder(addr(A))
        .sysfs(sys().sysfs())
        .container(&container)
        .open()
}

/// Device A opened in an IOAS whose IOVA ranges are `ranges`, aligned to `alignment`.
fn open_in_ioas(ranges: Vec<std::ops::RangeInclusive<u64>>, alignment: u64) -> (FakeKernel, Device) {
    let kernel = iommufd_kernel();
    kernel.script().iommu = iommu_info(IovaRanges { ranges, alignment });
    let dev = open(&kernel).unwrap();
    (kernel, dev)
}

fn fail_open(failure: fn() -> OpenFailure) -> Error {
    let kernel = iommufd_kernel();
    kernel.script().open_failure = Some(failure);
    open(&kernel).unwrap_err()
}

fn os(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

fn cdev_path() -> std::path::PathBuf {
    "/dev/vfio/devices/vfio3".into()
}

#[test]
fn a_device_in_an_ioas_reports_the_iommufd_interface_and_opens_in_order() {
    let kernel = iommufd_kernel();
    let dev = open(&kernel).unwrap();
    assert_eq!(dev.interface(), Interface::Iommufd);
    assert_eq!(dev.container().interface(), Interface::Iommufd);
    assert_eq!(
        kernel.calls()[..2],
        [
            Call::OpenDevice {
                addr: addr(A),
                group: GROUP
            },
            Call::DeviceInfo
        ]
    );
    assert!(format!("{dev:?}").contains("Iommufd"), "{dev:?}");
}

#[test]
fn a_cdev_bound_by_another_open_is_device_busy_naming_the_interface_with_einval() {
    let err = fail_open(|| OpenFailure::Bind {
        path: cdev_path(),
        source: os(libc::EINVAL),
    });
    match &err {
        Error::DeviceBusy { interface, path, .. } => {
            assert_eq!(
                (*interface, path.to_str()),
                (Interface::Iommufd, Some("/dev/vfio/devices/vfio3"))
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Busy, Some(libc::EINVAL)));
    let text = err.to_string();
    assert!(
        text.contains("VFIO device cdev (iommufd)") && text.contains("bound to an iommufd already"),
        "{text}"
    );
}

#[test]
fn a_bind_refused_with_ebusy_is_device_busy_saying_the_group_is_open() {
    let err = fail_open(|| OpenFailure::Bind {
        path: cdev_path(),
        source: os(libc::EBUSY),
    });
    assert!(
        matches!(
            err,
            Error::DeviceBusy {
                interface: Interface::Iommufd,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Busy, Some(libc::EBUSY)));
    assert!(err.to_string().contains("group is open"), "{err}");
}

#[test]
fn a_device_without_a_cdev_is_interface_unavailable_naming_config_vfio_device_cdev() {
    let err = fail_open(|| OpenFailure::NoCdev {
        path: "/sys/bus/pci/devices/0000:00:03.0/vfio-dev".into(),
    });
    assert!(
        matches!(
            err,
            Error::InterfaceUnavailable {
                interface: Interface::Iommufd,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!((err.kind(), err.errno()), (ErrorKind::NotConfigured, None));
    assert!(err.to_string().contains("CONFIG_VFIO_DEVICE_CDEV"), "{err}");
}

#[test]
fn a_cdev_node_without_permission_is_permission_denied_naming_node_and_interface() {
    let err = fail_open(|| OpenFailure::Cdev {
        path: cdev_path(),
        source: os(libc::EACCES),
    });
    match &err {
        Error::PermissionDenied { interface, path, .. } => {
            assert_eq!((*interface, path.clone()), (Interface::Iommufd, cdev_path()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.errno(), Some(libc::EACCES));
}

#[test]
fn a_bind_refused_with_eperm_is_interface_unavailable_keeping_eperm() {
    let err = fail_open(|| OpenFailure::Bind {
        path: cdev_path(),
        source: os(libc::EPERM),
    });
    assert!(matches!(err, Error::InterfaceUnavailable { .. }), "{err:?}");
    assert_eq!(
        (err.kind(), err.errno()),
        (ErrorKind::NotConfigured, Some(libc::EPERM))
    );
    assert!(err.to_string().contains("interrupt remapping"), "{err}");
}

#[test]
fn a_cdev_gone_during_open_is_an_io_error_with_enodev() {
    let err = fail_open(|| OpenFailure::Cdev {
        path: cdev_path(),
        source: os(libc::ENODEV),
    });
    assert!(
        matches!(
            err,
            Error::Vfio {
                step: "open the device cdev",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, Some(libc::ENODEV)));
}

#[test]
fn an_attach_refused_with_einval_is_an_io_error_naming_the_step() {
    let err = fail_open(|| OpenFailure::Step {
        step: "attach the device to the IOAS",
        source: Box::new(os(libc::EINVAL)),
    });
    assert!(
        matches!(
            err,
            Error::Vfio {
                step: "attach the device to the IOAS",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(libc::EINVAL));
}

#[test]
fn a_failed_open_leaves_the_first_device_in_the_ioas_working() {
    let kernel = iommufd_kernel();
    let first = open(&kernel).unwrap();
    kernel.script().open_failure = Some(|| OpenFailure::Bind {
        path: cdev_path(),
        source: os(libc::EINVAL),
    });
    assert_eq!(open(&kernel).unwrap_err().kind(), ErrorKind::Busy);
    assert_eq!(first.config().unwrap().read16(0).unwrap(), 0x1234);
    assert!(first.dma(DmaMask::FULL).unwrap().alloc(0x1000).is_ok());
}

#[test]
fn a_map_the_kernel_refuses_with_enospc_in_the_ioas_frees_the_iova() {
    let kernel = iommufd_kernel();
    let dev = open(&kernel).unwrap();
    let dma = dev.dma(DmaMask::bits(32)).unwrap();
    kernel.fail(|c| matches!(c, Call::MapDma { .. }), libc::ENOSPC, Some(1));
    let err = dma.alloc(0x1000).unwrap_err();
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, Some(libc::ENOSPC)));
    assert_eq!(dma.alloc(0x1000).unwrap().iova(), 0, "the refused IOVA was freed");
}

#[test]
fn an_ioas_whose_ranges_are_used_up_is_an_iova_error_without_a_kernel_call() {
    let (kernel, dev) = open_in_ioas(vec![0x1_0000..=0x1_ffff], 0x1_0000);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let _whole = dma.alloc(0x1000).unwrap();
    kernel.clear_calls();
    let err = dma.alloc(0x1000).unwrap_err();
    assert!(matches!(err, Error::Iova { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(kernel.calls().iter().all(|c| !matches!(c, Call::MapDma { .. })));
}

#[test]
fn the_ioas_alignment_is_the_allocators_granule() {
    let (_kernel, dev) = open_in_ioas(vec![0..=0xfedf_ffff], 0x1_0000);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let a = dma.alloc(0x1000).unwrap();
    let b = dma.alloc(0x1000).unwrap();
    assert_eq!((a.iova(), b.iova()), (0, 0x1_0000), "each rounded up to 64 KiB");
    assert_eq!(
        dma.mapping_limit().unwrap(),
        None,
        "iommufd reports no mapping limit"
    );
    let none = iommu_info(IovaRanges {
        ranges: vec![],
        alignment: 0,
    });
    assert_eq!(none.granule(), 4096);
}

#[test]
fn iova_ranges_take_two_calls_the_first_learning_the_count_from_emsgsize() {
    let mut kernel = FakeIovaRanges {
        ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)],
        alignment: 0x1000,
        ..Default::default()
    };
    let got = read_iova_ranges(7, |cmd, out| {
        assert_eq!(cmd.ioas_id, 7);
        kernel.call(cmd, out)
    })
    .unwrap();
    assert_eq!(kernel.rooms, vec![0, 2]);
    assert_eq!(
        got,
        IovaRanges {
            ranges: vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff],
            alignment: 0x1000
        }
    );
}

#[test]
fn iova_ranges_that_grow_between_the_calls_are_asked_for_again() {
    let mut kernel = FakeIovaRanges {
        ranges: vec![(0, 0xffff)],
        alignment: 0x1000,
        added_after_first: vec![(0x10_0000, 0x1f_ffff)],
        ..Default::default()
    };
    let got = read_iova_ranges(1, |cmd, out| kernel.call(cmd, out)).unwrap();
    assert_eq!(kernel.rooms, vec![0, 1, 2]);
    assert_eq!(got.ranges, vec![0..=0xffff, 0x10_0000..=0x1f_ffff]);
}

#[test]
fn an_ioas_without_ranges_answers_the_first_call() {
    let mut kernel = FakeIovaRanges::default();
    let got = read_iova_ranges(1, |cmd, out| kernel.call(cmd, out)).unwrap();
    assert_eq!((kernel.rooms, got.ranges), (vec![0], vec![]));
}

#[test]
fn iova_range_errors_are_kept_and_bogus_answers_are_invalid_data() {
    let mut kernel = FakeIovaRanges {
        errno: Some(libc::ENOENT),
        ..Default::default()
    };
    let err = read_iova_ranges(9, |cmd, out| kernel.call(cmd, out)).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOENT),
        "an IOAS that does not exist"
    );

    let mut reversed = FakeIovaRanges {
        ranges: vec![(0x2000, 0x1000)],
        alignment: 0x1000,
        ..Default::default()
    };
    let err = read_iova_ranges(1, |cmd, out| reversed.call(cmd, out)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

    let mut odd = FakeIovaRanges {
        ranges: vec![(0, 0xfff)],
        alignment: 0x1800,
        ..Default::default()
    };
    let err = read_iova_ranges(1, |cmd, out| odd.call(cmd, out)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

    let err = read_iova_ranges(1, |cmd, _| {
        cmd.num_iovas = u32::MAX;
        Err(os(libc::EMSGSIZE))
    })
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "a bogus count");
}

#[test]
fn auto_selection_takes_the_cdev_when_sysfs_names_one_and_dev_iommu_opens() {
    let sys = sys();
    add_cdev(&sys, "vfio3");
    let nodes = cdev_dir(&["vfio3"]);
    let choice = choose(&sys.sysfs(), addr(A), nodes.path(), || {
        Ok(tempfile::tempfile().unwrap())
    });
    assert!(matches!(choice, Choice::Iommufd(_)), "{choice:?}");
    assert_eq!(
        cdev_name(&sys.sysfs(), addr(A)).unwrap().as_deref(),
        Some("vfio3")
    );
}

#[test]
fn auto_selection_takes_the_group_without_a_vfio_dev_entry_and_does_not_open_dev_iommu() {
    let sys = sys();
    let nodes = cdev_dir(&["vfio3"]);
    let no_open = || panic!("/dev/iommu opened without a cdev");
    let choice = choose(&sys.sysfs(), addr(A), nodes.path(), no_open);
    assert!(matches!(choice, Choice::Group), "{choice:?}");
    // A vfio-dev directory without a vfioN entry is no cdev either.
    add_cdev(&sys, "power");
    assert_eq!(cdev_name(&sys.sysfs(), addr(A)).unwrap(), None);
    let choice = choose(&sys.sysfs(), addr(A), nodes.path(), no_open);
    assert!(matches!(choice, Choice::Group), "{choice:?}");
}

#[test]
fn auto_selection_takes_the_group_when_sysfs_names_a_cdev_without_a_node() {
    // Kernels without CONFIG_VFIO_DEVICE_CDEV (Debian's 6.12) list vfio-dev/vfioN all the same.
    let sys = sys();
    add_cdev(&sys, "vfio3");
    let nodes = cdev_dir(&["vfio0"]);
    let choice = choose(&sys.sysfs(), addr(A), nodes.path(), || {
        panic!("/dev/iommu opened without a cdev node")
    });
    assert!(matches!(choice, Choice::Group), "{choice:?}");
}

#[test]
fn auto_selection_takes_the_group_when_dev_iommu_is_missing() {
    let sys = sys();
    add_cdev(&sys, "vfio0");
    let nodes = cdev_dir(&["vfio0"]);
    let mut asked = false;
    let choice = choose(&sys.sysfs(), addr(A), nodes.path(), || {
        asked = true;
        Err(os(libc::ENOENT))
    });
    assert!(matches!(choice, Choice::Group), "{choice:?}");
    assert!(asked);
}

#[test]
fn the_builder_refuses_noiommu_pointing_at_the_opt_in_before_any_kernel_call() {
    let err = Device::builder(addr(A))
        .sysfs(sys().sysfs())
        .interface(Interface::NoIommu)
        .open()
        .unwrap_err();
    match &err {
        Error::InterfaceUnavailable {
            interface, reason, ..
        } => {
            assert_eq!(*interface, Interface::NoIommu);
            assert!(
                reason.contains("Container::noiommu_device_reaches_all_memory()"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
}

#[test]
fn the_builder_refuses_a_container_of_another_interface_before_any_kernel_call() {
    let kernel = FakeKernel::edu();
    let container = Container::with_backend(Arc::new(kernel.clone()));
    let err = Device::builder(addr(A))
        .sysfs(sys().sysfs())
        .container(&container)
        .interface(Interface::Iommufd)
        .open()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InterfaceUnavailable {
                interface: Interface::Iommufd,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(kernel.calls().is_empty());
    let dev = Device::builder(addr(A))
        .sysfs(sys().sysfs())
        .container(&container)
        .interface(Interface::Group)
        .open()
        .unwrap();
    assert_eq!(dev.interface(), Interface::Group);
}

#[test]
fn the_builder_checks_sysfs_first_whatever_the_interface() {
    let kernel = iommufd_kernel();
    let container = Container::with_backend(Arc::new(kernel.clone()));
    let unbound = FakeSys::with_device(Some(GROUP), &["vfio-pci", "edu"], Some("edu"));
    let err = Device::builder(addr(A))
        .sysfs(unbound.sysfs())
        .container(&container)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::NotBoundToVfio { .. }), "{err:?}");
    assert!(kernel.calls().is_empty());
}

fn dependent(id: u32, device: u8) -> DependentDevice {
    DependentDevice {
        group: id,
        addr: PciAddress::new(0, 1, device, 0).unwrap(),
    }
}

#[test]
fn a_cdev_hot_reset_passes_no_group_descriptor_when_every_device_is_owned() {
    let kernel = iommufd_kernel();
    {
        let mut script = kernel.script();
        script.hot_reset_flags = VFIO_PCI_HOT_RESET_FLAG_DEV_ID | VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED;
        script.dependents = vec![dependent(1, 0), dependent(VFIO_PCI_DEVID_OWNED, 1)];
        // Were the device ids taken for groups, a descriptor would be found
        // for "group" 1, and the kernel refuses any descriptor from a cdev.
        script.held_groups = vec![1];
    }
    let dev = open(&kernel).unwrap();
    kernel.clear_calls();
    dev.reset_bus().unwrap();
    assert_eq!(
        kernel.calls(),
        vec![Call::HotResetInfo, Call::HotReset { groups: vec![] }]
    );
    kernel.clear_calls();
    assert_eq!(dev.reset().unwrap(), ResetKind::Bus, "no function reset: the bus");
}

#[test]
fn a_cdev_hot_reset_with_a_device_not_owned_is_a_typed_error_naming_it_without_the_call() {
    let kernel = iommufd_kernel();
    {
        let mut script = kernel.script();
        script.hot_reset_flags = VFIO_PCI_HOT_RESET_FLAG_DEV_ID;
        script.dependents = vec![dependent(1, 0), dependent(VFIO_PCI_DEVID_NOT_OWNED as u32, 2)];
    }
    let dev = open(&kernel).unwrap();
    kernel.clear_calls();
    let err = dev.reset_bus().unwrap_err();
    match &err {
        Error::HotResetNotOwned {
            interface, not_owned, ..
        } => assert_eq!(
            (*interface, not_owned.clone()),
            (Interface::Iommufd, vec![PciAddress::new(0, 1, 2, 0).unwrap()])
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.to_string().contains("0000:01:02.0"), "{err}");
    assert_eq!(kernel.calls(), vec![Call::HotResetInfo]);
}

#[test]
fn a_cdev_hot_reset_the_kernel_says_is_not_all_owned_names_every_device() {
    let kernel = iommufd_kernel();
    {
        let mut script = kernel.script();
        script.hot_reset_flags = VFIO_PCI_HOT_RESET_FLAG_DEV_ID;
        script.dependents = vec![dependent(1, 0), dependent(2, 1)];
    }
    let dev = open(&kernel).unwrap();
    match dev.reset_bus().unwrap_err() {
        Error::HotResetNotOwned { not_owned, .. } => assert_eq!(not_owned.len(), 2),
        other => panic!("{other:?}"),
    }
}
