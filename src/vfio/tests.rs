//! The logic above the seam, against the fake kernel: open sequences, errno
//! paths, `VFIO_DEVICE_SET_IRQS` arguments, hot reset discovery and DMA
//! bookkeeping.

use std::sync::Arc;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};

use super::backend::{DependentDevice, OpenFailure};
use super::fake::{region_offset, Call, FakeKernel};
use super::{Container, Device, ResetKind};
use crate::dma::DmaMask;
use crate::error::{Error, ErrorKind};
use crate::irq::IrqIndex;
use crate::pci::fake::{addr, FakeSys, A};
use crate::pci::PciAddress;
use crate::region::RegionIndex;

const GROUP: u32 = 5;

/// A sysfs with device A bound to vfio-pci in group 5.
fn sys() -> FakeSys {
    FakeSys::with_device(Some(GROUP), &["vfio-pci"], Some("vfio-pci"))
}

fn open(kernel: &FakeKernel) -> crate::Result<Device> {
    let container = Container::with_backend(Arc::new(kernel.clone()));
    Device::open_with(&sys().sysfs(), &container, addr(A))
}

fn opened(kernel: &FakeKernel) -> Device {
    let dev = open(kernel).unwrap();
    kernel.clear_calls();
    dev
}

fn set_irqs(index: IrqIndex, flags: u32, start: u32, count: u32, fds: Vec<i32>) -> Call {
    Call::SetIrqs {
        index: index.raw(),
        flags,
        start,
        count,
        fds,
    }
}

fn trigger(index: IrqIndex, start: u32, fds: Vec<i32>) -> Call {
    let count = fds.len() as u32;
    set_irqs(
        index,
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        start,
        count,
        fds,
    )
}

fn disable(index: IrqIndex) -> Call {
    set_irqs(
        index,
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        0,
        0,
        vec![],
    )
}

fn command(kernel: &FakeKernel) -> u16 {
    use std::os::unix::fs::FileExt;
    let mut b = [0; 2];
    kernel.file().read_exact_at(&mut b, region_offset(7) + 4).unwrap();
    u16::from_le_bytes(b)
}

#[test]
fn open_reads_device_info_then_every_region_in_order() {
    let kernel = FakeKernel::edu();
    let dev = open(&kernel).unwrap();
    let mut expected = vec![
        Call::OpenDevice {
            addr: addr(A),
            group: GROUP,
        },
        Call::DeviceInfo,
    ];
    expected.extend((0..9).map(Call::RegionInfo));
    assert_eq!(kernel.calls(), expected);
    assert_eq!(dev.iommu_group(), GROUP);
    assert_eq!(
        dev.region_info(RegionIndex::bar(0).unwrap()).unwrap().size,
        1 << 20
    );
    assert_eq!(dev.config().unwrap().read16(0).unwrap(), 0x1234);
}

#[test]
fn a_device_opens_again_after_it_was_dropped() {
    let kernel = FakeKernel::edu();
    drop(open(&kernel).unwrap());
    assert!(open(&kernel).is_ok());
}

#[test]
fn a_busy_group_is_group_busy_with_ebusy() {
    let kernel = FakeKernel::edu();
    kernel.fail(|c| matches!(c, Call::OpenDevice { .. }), libc::EBUSY, Some(1));
    let err = open(&kernel).unwrap_err();
    assert!(matches!(err, Error::GroupBusy { group: GROUP, .. }), "{err:?}");
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Busy, Some(libc::EBUSY)));
    assert!(
        open(&kernel).is_ok(),
        "the next open, once the group is free, works"
    );
}

#[test]
fn a_group_without_permission_is_permission_denied_naming_its_node() {
    let kernel = FakeKernel::edu();
    kernel.fail(|c| matches!(c, Call::OpenDevice { .. }), libc::EPERM, None);
    let err = open(&kernel).unwrap_err();
    match &err {
        Error::PermissionDenied { path, .. } => assert_eq!(path.to_str(), Some("/dev/vfio/5")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        (err.kind(), err.errno()),
        (ErrorKind::PermissionDenied, Some(libc::EPERM))
    );
}

#[test]
fn a_group_the_kernel_finds_not_viable_is_not_configured() {
    let kernel = FakeKernel::edu();
    kernel.script().open_failure = Some(|| OpenFailure::NotViable);
    let err = open(&kernel).unwrap_err();
    assert!(
        matches!(err, Error::GroupNotViable { group: GROUP, .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::NotConfigured);
}

#[test]
fn a_device_gone_during_open_is_an_io_error_with_enodev() {
    let kernel = FakeKernel::edu();
    kernel.fail(|c| *c == Call::DeviceInfo, libc::ENODEV, None);
    let err = open(&kernel).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Vfio {
                step: "get device info",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, Some(libc::ENODEV)));
}

#[test]
fn a_region_the_kernel_refuses_with_einval_has_size_0_and_others_fail_the_open() {
    let kernel = FakeKernel::edu();
    kernel.fail(|c| *c == Call::RegionInfo(8), libc::EINVAL, None);
    let dev = open(&kernel).unwrap();
    assert_eq!(dev.regions()[8].size, 0);
    assert!(matches!(
        dev.region_info(RegionIndex::VGA),
        Err(Error::NoSuchRegion { .. })
    ));
    let kernel = FakeKernel::edu();
    kernel.fail(|c| *c == Call::RegionInfo(0), libc::EIO, None);
    let err = open(&kernel).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Vfio {
                step: "get region info",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(libc::EIO));
}

#[test]
fn a_malformed_capability_chain_is_malformed_naming_the_region() {
    let kernel = FakeKernel::edu();
    {
        let mut script = kernel.script();
        let bar0 = &mut script.regions[0];
        // VFIO_REGION_INFO_FLAG_CAPS with a capability offset inside the header.
        let flags = u32::from_ne_bytes(bar0[4..8].try_into().unwrap()) | 8;
        bar0[4..8].copy_from_slice(&flags.to_ne_bytes());
        bar0[12..16].copy_from_slice(&4u32.to_ne_bytes());
    }
    let err = open(&kernel).unwrap_err();
    assert!(
        matches!(err, Error::MalformedCapability { region, .. } if region == RegionIndex::new(0)),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Malformed);
}

#[test]
fn msi_enable_passes_every_eventfd_from_vector_0_then_turns_bus_mastering_on() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let msix = dev.enable_msix(3).unwrap();
    let fds: Vec<i32> = msix
        .vectors()
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    assert_eq!(
        kernel.calls(),
        vec![Call::IrqInfo(2), trigger(IrqIndex::Msix, 0, fds)]
    );
    assert_ne!(command(&kernel) & 4, 0, "bus mastering on");
    kernel.clear_calls();
    drop(msix);
    assert_eq!(kernel.calls(), vec![disable(IrqIndex::Msix)]);
}

#[test]
fn growing_msix_sets_only_the_new_vectors() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let mut msix = dev.enable_msix(2).unwrap();
    kernel.clear_calls();
    msix.grow(5).unwrap();
    let fds: Vec<i32> = msix.vectors()[2..]
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    assert_eq!(kernel.calls(), vec![trigger(IrqIndex::Msix, 2, fds)]);
    assert_eq!(msix.len(), 5);
}

#[test]
fn a_refused_grow_keeps_the_enabled_vectors() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let mut msix = dev.enable_msix(2).unwrap();
    kernel.fail(
        |c| matches!(c, Call::SetIrqs { start: 2, .. }),
        libc::EINVAL,
        None,
    );
    let err = msix.grow(4).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Vfio {
                step: "add interrupt vectors",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(libc::EINVAL));
    assert_eq!(msix.len(), 2);
}

#[test]
fn growing_a_noresize_index_is_unsupported_without_a_call() {
    let kernel = FakeKernel::edu();
    kernel.script().irqs[1].as_mut().unwrap().count = 4;
    let dev = opened(&kernel);
    let mut msi = dev.enable_msi(1).unwrap();
    kernel.clear_calls();
    assert_eq!(msi.grow(2).unwrap_err().kind(), ErrorKind::Unsupported);
    assert!(kernel.calls().is_empty());
}

#[test]
fn a_refused_enable_leaves_the_index_free() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    kernel.fail(|c| matches!(c, Call::SetIrqs { .. }), libc::ENOSPC, Some(1));
    let err = dev.enable_msi(1).unwrap_err();
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, Some(libc::ENOSPC)));
    assert_eq!(command(&kernel) & 4, 0, "bus mastering left off");
    assert!(dev.enable_msi(1).is_ok());
}

#[test]
fn intx_is_unmasked_before_the_wait_after_the_one_that_consumed_it() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let intx = dev.enable_intx().unwrap();
    let vector = intx.vector(0).unwrap();
    kernel.clear_calls();
    let signal = |fd| {
        // SAFETY: `fd` is the vector's eventfd, open for the call; 8 bytes are written from a u64.
        let n = unsafe { libc::write(fd, (&1u64 as *const u64).cast(), 8) };
        assert_eq!(n, 8);
    };
    signal(std::os::fd::AsRawFd::as_raw_fd(vector));
    assert_eq!(vector.wait(Duration::from_secs(1)).unwrap(), 1);
    assert!(kernel.calls().is_empty(), "the first wait does not unmask");
    assert_eq!(vector.try_wait().unwrap(), None);
    let unmask = set_irqs(
        IrqIndex::Intx,
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
        0,
        1,
        vec![],
    );
    assert_eq!(kernel.calls(), vec![unmask]);
}

#[test]
fn mask_and_unmask_name_the_vector_and_msi_is_not_maskable() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let intx = dev.enable_intx().unwrap();
    kernel.clear_calls();
    intx.vector(0).unwrap().mask().unwrap();
    intx.vector(0).unwrap().unmask().unwrap();
    let none = VFIO_IRQ_SET_DATA_NONE;
    assert_eq!(
        kernel.calls(),
        vec![
            set_irqs(IrqIndex::Intx, none | VFIO_IRQ_SET_ACTION_MASK, 0, 1, vec![]),
            set_irqs(IrqIndex::Intx, none | VFIO_IRQ_SET_ACTION_UNMASK, 0, 1, vec![]),
        ]
    );
    drop(intx);
    let msi = dev.enable_msi(1).unwrap();
    kernel.clear_calls();
    assert!(matches!(
        msi.vector(0).unwrap().mask(),
        Err(Error::IrqNotMaskable { .. })
    ));
    assert!(kernel.calls().is_empty());
}

#[test]
fn an_index_the_kernel_refuses_is_no_such_irq() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    assert!(matches!(
        dev.enable_irqs(IrqIndex::Err, 1),
        Err(Error::NoSuchIrq { .. })
    ));
    assert_eq!(dev.irq_infos().len(), 4);
}

fn dependent(group: u32, device: u8) -> DependentDevice {
    DependentDevice {
        group,
        addr: PciAddress::new(0, 1, device, 0).unwrap(),
    }
}

#[test]
fn a_device_with_a_function_reset_uses_it() {
    let kernel = FakeKernel::edu();
    kernel.script().device_flags = vfio_bindings::bindings::vfio::VFIO_DEVICE_FLAGS_RESET;
    let dev = opened(&kernel);
    assert_eq!(dev.reset().unwrap(), ResetKind::Function);
    assert_eq!(kernel.calls(), vec![Call::Reset]);
}

#[test]
fn a_hot_reset_passes_each_held_group_once() {
    let kernel = FakeKernel::edu();
    {
        let mut script = kernel.script();
        script.dependents = vec![dependent(GROUP, 0), dependent(9, 1), dependent(9, 2)];
        script.held_groups = vec![GROUP, 9];
    }
    let dev = opened(&kernel);
    assert_eq!(dev.reset().unwrap(), ResetKind::Bus);
    assert_eq!(
        kernel.calls(),
        vec![
            Call::HotResetInfo,
            Call::HotReset {
                groups: vec![GROUP, 9]
            }
        ]
    );
}

#[test]
fn a_hot_reset_with_a_group_not_held_says_so_with_the_kernels_einval() {
    let kernel = FakeKernel::edu();
    {
        let mut script = kernel.script();
        script.dependents = vec![dependent(GROUP, 0), dependent(9, 1)];
        script.held_groups = vec![GROUP];
    }
    let dev = opened(&kernel);
    let err = dev.reset_bus().unwrap_err();
    match &err {
        Error::Vfio { step, .. } => assert!(step.contains("not open in this process"), "{step}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.errno(), Some(libc::EINVAL));
    assert_eq!(kernel.calls()[1], Call::HotReset { groups: vec![GROUP] });
}

#[test]
fn a_bus_the_kernel_cannot_reset_is_unsupported_and_other_errnos_are_kept() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    kernel.fail(|c| *c == Call::HotResetInfo, libc::ENODEV, Some(1));
    assert_eq!(dev.reset_bus().unwrap_err().kind(), ErrorKind::Unsupported);
    kernel.fail(|c| *c == Call::HotResetInfo, libc::EPERM, Some(1));
    let err = dev.reset_bus().unwrap_err();
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, Some(libc::EPERM)));
}

#[test]
fn dma_buffers_get_iovas_from_the_kernels_ranges_and_are_unmapped_on_drop() {
    let kernel = FakeKernel::edu();
    kernel.script().iommu.ranges = vec![0x10_0000..=0x10_ffff, 0x20_0000..=0xfff_ffff];
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::bits(28)).unwrap();
    assert_eq!(
        dma.iova_ranges().unwrap(),
        vec![(0x10_0000, 0x10_ffff), (0x20_0000, 0xfff_ffff)]
    );
    let a = dma.alloc(0x8000).unwrap();
    let b = dma.alloc(0x10000).unwrap();
    assert_eq!(
        (a.iova(), b.iova()),
        (0x10_0000, 0x20_0000),
        "b does not fit the rest of the first range"
    );
    assert_eq!(
        kernel.script().mappings,
        vec![(0x10_0000, 0x8000), (0x20_0000, 0x10000)]
    );
    drop(a);
    assert_eq!(kernel.script().mappings, vec![(0x20_0000, 0x10000)]);
    assert_eq!(
        dma.alloc(0x1000).unwrap().iova(),
        0x10_0000,
        "the freed IOVA is reused"
    );
    assert_eq!(
        kernel.calls().iter().filter(|c| **c == Call::IommuInfo).count(),
        1
    );
}

#[test]
fn a_map_the_kernel_refuses_with_enospc_frees_the_iova() {
    let kernel = FakeKernel::edu();
    kernel.script().max_mappings = 1;
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::bits(32)).unwrap();
    let first = dma.alloc(0x1000).unwrap();
    let err = dma.alloc(0x1000).unwrap_err();
    assert!(matches!(err, Error::Vfio { step: "map DMA", .. }), "{err:?}");
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, Some(libc::ENOSPC)));
    drop(first);
    assert_eq!(dma.alloc(0x1000).unwrap().iova(), 0, "the refused IOVA was freed");
}

#[test]
fn the_kernels_mapping_limit_is_enforced_before_the_call() {
    let kernel = FakeKernel::edu();
    kernel.script().iommu.dma_avail = Some(1);
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let _first = dma.alloc(0x1000).unwrap();
    kernel.clear_calls();
    assert!(matches!(
        dma.alloc(0x1000),
        Err(Error::DmaMappingLimit { limit: 1, .. })
    ));
    assert!(kernel.calls().is_empty());
}

#[test]
fn a_refused_unmap_keeps_the_iova_taken() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let buf = dma.alloc(0x1000).unwrap();
    kernel.fail(|c| matches!(c, Call::UnmapDma { .. }), libc::EPERM, Some(1));
    let err = buf.unmap().unwrap_err();
    assert_eq!(err.errno(), Some(libc::EPERM));
    assert_eq!(
        dma.alloc(0x1000).unwrap().iova(),
        0x1000,
        "IOVA 0 is still the device's"
    );
}

#[test]
fn iommu_info_failure_is_an_io_error_and_a_later_dma_reads_it_again() {
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    kernel.fail(|c| *c == Call::IommuInfo, libc::ENODEV, Some(1));
    let err = dev.dma(DmaMask::FULL).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Vfio {
                step: "get IOMMU info",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(libc::ENODEV));
    assert!(dev.dma(DmaMask::FULL).is_ok());
}

#[test]
fn devices_in_one_container_share_its_iova_space() {
    let kernel = FakeKernel::edu();
    let container = Container::with_backend(Arc::new(kernel.clone()));
    let sys = sys();
    let first = Device::open_with(&sys.sysfs(), &container, addr(A)).unwrap();
    let second = Device::open_with(&sys.sysfs(), &container, addr(A)).unwrap();
    let a = first.dma(DmaMask::FULL).unwrap().alloc(0x1000).unwrap();
    let b = second.dma(DmaMask::FULL).unwrap().alloc(0x1000).unwrap();
    assert_eq!((a.iova(), b.iova()), (0, 0x1000));
    assert_eq!(
        kernel.calls().iter().filter(|c| **c == Call::IommuInfo).count(),
        1
    );
}

#[test]
fn guest_memory_outside_the_ranges_is_refused_and_a_refused_region_unmaps_the_others() {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    let kernel = FakeKernel::edu();
    let dev = opened(&kernel);
    let dma = dev.dma(DmaMask::FULL).unwrap();
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0xfee0_0000), 0x1000)]).unwrap();
    let err = dma.map_guest_memory(&ram).unwrap_err();
    assert!(matches!(err, Error::Iova { .. }), "{err:?}");
    assert!(kernel.calls().iter().all(|c| !matches!(c, Call::MapDma { .. })));

    let ram =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x10_0000), 0x1000)])
            .unwrap();
    kernel.fail(
        |c| matches!(c, Call::MapDma { iova: 0x10_0000, .. }),
        libc::ENOMEM,
        Some(1),
    );
    let err = dma.map_guest_memory(&ram).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOMEM));
    assert!(
        kernel.script().mappings.is_empty(),
        "the first region was unmapped again"
    );
    let mapping = dma.map_guest_memory(&ram).unwrap();
    assert_eq!(mapping.ranges(), &[(0, 0x1000), (0x10_0000, 0x1000)]);
    drop(mapping);
    assert!(kernel.script().mappings.is_empty());
}

#[test]
fn a_device_not_bound_to_vfio_pci_is_refused_before_any_kernel_call() {
    let kernel = FakeKernel::edu();
    let container = Container::with_backend(Arc::new(kernel.clone()));
    let sys = FakeSys::with_device(Some(GROUP), &["vfio-pci", "edu"], Some("edu"));
    let err = Device::open_with(&sys.sysfs(), &container, addr(A)).unwrap_err();
    assert!(matches!(err, Error::NotBoundToVfio { .. }), "{err:?}");
    assert!(kernel.calls().is_empty());
}
