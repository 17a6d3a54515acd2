//! A scripted kernel behind the seam, for host unit tests of vfio/, irq/ and
//! dma/: it answers each call from its script, fails the calls a test asks
//! it to with the errno given, and records every call. It stands for a
//! type1v2 container ([`IommuBackend`]), and for the calls and memory of the
//! no-IOMMU backend ([`NoIommuCalls`], [`PhysicalMemory`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::{
    VFIO_GROUP_FLAGS_VIABLE, VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::MmapRegion;

use super::backend::{
    DependentDevice, DeviceBackend, DeviceInfo, HotResetInfo, IommuBackend, IrqSet, MapFailure, OpenFailure,
    PhysicalMemory, RawIrqInfo,
};
use super::noiommu::NoIommuCalls;
use super::Interface;
use crate::dma::IommuInfo;
use crate::pci::{PciAddress, Sysfs};

/// Where the fake puts region `index` in the device file.
pub(crate) fn region_offset(index: u32) -> u64 {
    u64::from(index) << 16
}

/// One call the code above the seam made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    OpenDevice {
        addr: PciAddress,
        group: u32,
    },
    DeviceInfo,
    RegionInfo(u32),
    IrqInfo(u32),
    SetIrqs {
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<RawFd>,
    },
    Reset,
    HotResetInfo,
    HotReset {
        groups: Vec<u32>,
    },
    IommuInfo,
    MapDma {
        iova: u64,
        size: u64,
    },
    UnmapDma {
        iova: u64,
        size: u64,
    },
    OpenContainer,
    ApiVersion,
    CheckExtension(u32),
    OpenGroup(PathBuf),
    GroupStatus,
    SetContainer,
    SetIommu(u32),
    DeviceFd(String),
    MapMemory {
        len: usize,
        page: u64,
    },
    Pagemap {
        count: usize,
    },
}

/// A failure to inject: calls matching `when` fail with `errno`, `times`
/// times (`None`: always).
struct Failure {
    when: Box<dyn Fn(&Call) -> bool + Send>,
    errno: i32,
    times: Option<usize>,
}

/// The script and the record.
pub(crate) struct Script {
    /// `VFIO_DEVICE_GET_INFO` flags.
    pub device_flags: u32,
    /// Region info buffers, by index.
    pub regions: Vec<Vec<u8>>,
    /// Interrupt info, by index; `None`: the kernel refuses the index (EINVAL).
    pub irqs: Vec<Option<RawIrqInfo>>,
    /// The interface the fake plays (hot resets follow its rules).
    pub interface: Interface,
    /// What a hot reset would reset.
    pub dependents: Vec<DependentDevice>,
    /// The `VFIO_PCI_HOT_RESET_FLAG_*` of the hot reset info.
    pub hot_reset_flags: u32,
    /// The groups this process holds a descriptor of.
    pub held_groups: Vec<u32>,
    /// The IOMMU's answer.
    pub iommu: IommuInfo,
    /// The mappings the kernel holds, `(iova, size)`.
    pub mappings: Vec<(u64, u64)>,
    /// The most mappings the kernel allows (ENOSPC past it, as type1's `dma_entry_limit`).
    pub max_mappings: usize,
    /// The open sequence fails like this.
    pub open_failure: Option<fn() -> OpenFailure>,
    /// What `VFIO_CHECK_EXTENSION` answers (no-IOMMU mode on: 1).
    pub extension: i32,
    /// What `VFIO_GROUP_GET_STATUS` answers.
    pub group_flags: u32,
    /// Whether huge pages can be had (ENOMEM otherwise, as with none reserved).
    pub huge_pages: bool,
    /// The pagemap entry of each page of a buffer, by its index in it.
    pub pagemap: fn(u64) -> u64,
    pub calls: Vec<Call>,
    failures: Vec<Failure>,
    /// Descriptors handed out by `group_fd`, with their group.
    lent: Vec<(RawFd, u32)>,
}

/// The fake kernel: one device, its container, the script they share.
#[derive(Clone)]
pub(crate) struct FakeKernel {
    script: Arc<Mutex<Script>>,
    /// The device file: regions at [`region_offset`], config space written by the test.
    file: Arc<File>,
}

/// A readable, writable, mmapable region info buffer (no capabilities).
pub(crate) fn region_bytes(index: u32, size: u64) -> Vec<u8> {
    let flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
    let mut b = vec![];
    b.extend(32u32.to_ne_bytes());
    b.extend(flags.to_ne_bytes());
    b.extend(index.to_ne_bytes());
    b.extend(0u32.to_ne_bytes());
    b.extend(size.to_ne_bytes());
    b.extend(region_offset(index).to_ne_bytes());
    b
}

impl FakeKernel {
    /// An edu-like device: BAR0 of 1 MiB, config space of 256 bytes, INTx
    /// (maskable, automasked), 1 MSI vector, 8 MSI-X vectors, no ERR, REQ;
    /// an IOMMU with the MSI window reserved and 39 address bits.
    pub(crate) fn edu() -> FakeKernel {
        let mut regions: Vec<Vec<u8>> = (0..9).map(|i| region_bytes(i, 0)).collect();
        regions[0] = region_bytes(0, 1 << 20);
        regions[7] = region_bytes(7, 256);
        let eventfd = VFIO_IRQ_INFO_EVENTFD;
        let file = tempfile::tempfile().unwrap();
        // A memory BAR0 (type 0, 32-bit) and nothing else in the header.
        file.write_all_at(&0x1234u16.to_le_bytes(), region_offset(7))
            .unwrap();
        file.write_all_at(&[0; 256][..0x10], region_offset(7) + 0x10)
            .unwrap();
        file.set_len(region_offset(8)).unwrap();
        FakeKernel {
            script: Arc::new(Mutex::new(Script {
                device_flags: 0,
                regions,
                irqs: vec![
                    Some(RawIrqInfo {
                        flags: eventfd | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
                        count: 1,
                    }),
                    Some(RawIrqInfo {
                        flags: eventfd | VFIO_IRQ_INFO_NORESIZE,
                        count: 1,
                    }),
                    Some(RawIrqInfo {
                        flags: eventfd,
                        count: 8,
                    }),
                    None,
                    Some(RawIrqInfo {
                        flags: eventfd,
                        count: 1,
                    }),
                ],
                interface: Interface::Group,
                dependents: vec![],
                hot_reset_flags: 0,
                held_groups: vec![],
                iommu: IommuInfo {
                    pgsizes: 0x4020_1000,
                    ranges: vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff],
                    dma_avail: Some(65535),
                },
                mappings: vec![],
                max_mappings: usize::MAX,
                open_failure: None,
                extension: 1,
                group_flags: VFIO_GROUP_FLAGS_VIABLE,
                huge_pages: true,
                pagemap: |page| (1 << 63) | (0x1_0000 + page),
                calls: vec![],
                failures: vec![],
                lent: vec![],
            })),
            file: Arc::new(file),
        }
    }

    /// The script and record, to change or read.
    pub(crate) fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls made so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.script().calls.clone()
    }

    /// Forgets the calls made so far.
    pub(crate) fn clear_calls(&self) {
        self.script().calls.clear();
    }

    /// Makes the next `times` calls matching `when` (every one, for `None`) fail with `errno`.
    pub(crate) fn fail(
        &self,
        when: impl Fn(&Call) -> bool + Send + 'static,
        errno: i32,
        times: Option<usize>,
    ) {
        self.script().failures.push(Failure {
            when: Box::new(when),
            errno,
            times,
        });
    }

    /// The device file, to read what was written to config space.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// A new descriptor of the device file, standing for any node.
    fn fd(&self) -> io::Result<OwnedFd> {
        Ok(self.file.try_clone()?.into())
    }

    fn device_backend(&self, fd: OwnedFd, keep: Option<Box<dyn Send + Sync>>) -> Box<dyn DeviceBackend> {
        Box::new(FakeDevice {
            kernel: self.clone(),
            fd: Arc::new(fd),
            _keep: keep,
        })
    }

    /// Records `call`, then fails it if a failure matches.
    fn call(&self, call: Call) -> io::Result<MutexGuard<'_, Script>> {
        let mut script = self.script();
        script.calls.push(call.clone());
        if let Some(f) = script
            .failures
            .iter_mut()
            .find(|f| f.times != Some(0) && (f.when)(&call))
        {
            f.times = f.times.map(|t| t - 1);
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        Ok(script)
    }
}

impl IommuBackend for FakeKernel {
    fn interface(&self) -> Interface {
        self.script().interface
    }

    fn open_device(
        &self,
        _: &Sysfs,
        addr: PciAddress,
        group: u32,
    ) -> Result<Box<dyn DeviceBackend>, OpenFailure> {
        let script = self
            .call(Call::OpenDevice { addr, group })
            .map_err(OpenFailure::Group)?;
        if let Some(failure) = script.open_failure {
            return Err(failure());
        }
        drop(script);
        Ok(self.device_backend(self.fd().map_err(OpenFailure::Group)?, None))
    }

    fn iommu_info(&self) -> io::Result<IommuInfo> {
        Ok(self.call(Call::IommuInfo)?.iommu.clone())
    }

    unsafe fn map_dma(&self, iova: u64, size: u64, _host: *mut u8) -> io::Result<()> {
        let mut script = self.call(Call::MapDma { iova, size })?;
        if script
            .mappings
            .iter()
            .any(|&(i, s)| iova < i + s && i < iova + size)
        {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        if script.mappings.len() >= script.max_mappings {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        script.mappings.push((iova, size));
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut script = self.call(Call::UnmapDma { iova, size })?;
        let at = script
            .mappings
            .iter()
            .position(|&m| m == (iova, size))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        script.mappings.remove(at);
        Ok(())
    }
}

/// The no-IOMMU open sequence: each call recorded, answered from the script.
impl NoIommuCalls for FakeKernel {
    fn open_container(&self) -> io::Result<OwnedFd> {
        self.call(Call::OpenContainer).map(drop)?;
        self.fd()
    }

    fn api_version(&self, _: BorrowedFd<'_>) -> io::Result<i32> {
        self.call(Call::ApiVersion).map(|_| 0)
    }

    fn check_extension(&self, _: BorrowedFd<'_>, extension: u32) -> io::Result<i32> {
        Ok(self.call(Call::CheckExtension(extension))?.extension)
    }

    fn open_group(&self, path: &Path) -> io::Result<OwnedFd> {
        self.call(Call::OpenGroup(path.to_path_buf())).map(drop)?;
        self.fd()
    }

    fn group_status(&self, _: BorrowedFd<'_>) -> io::Result<u32> {
        Ok(self.call(Call::GroupStatus)?.group_flags)
    }

    fn set_container(&self, _: BorrowedFd<'_>, _: BorrowedFd<'_>) -> io::Result<()> {
        self.call(Call::SetContainer).map(drop)
    }

    fn set_iommu(&self, _: BorrowedFd<'_>, iommu: u32) -> io::Result<()> {
        self.call(Call::SetIommu(iommu)).map(drop)
    }

    fn device_fd(&self, _: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
        self.call(Call::DeviceFd(name.to_string())).map(drop)?;
        self.fd()
    }

    fn device(&self, fd: OwnedFd, _: u32, _: OwnedFd, keep: Box<dyn Send + Sync>) -> Box<dyn DeviceBackend> {
        self.device_backend(fd, Some(keep))
    }
}

/// Memory without an IOMMU: ordinary pages whatever the page size asked
/// for (or ENOMEM for huge pages, if the script has none), with the
/// script's pagemap.
impl PhysicalMemory for FakeKernel {
    fn map(&self, len: usize, page: u64) -> Result<MmapRegion, MapFailure> {
        let script = self
            .call(Call::MapMemory { len, page })
            .map_err(MapFailure::Map)?;
        if page > 4096 && !script.huge_pages {
            return Err(MapFailure::Map(io::Error::from_raw_os_error(libc::ENOMEM)));
        }
        MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_ANONYMOUS)
            .build()
            .map_err(|e| MapFailure::Map(io::Error::other(e)))
    }

    fn pagemap(&self, _: u64, entries: &mut [u64]) -> io::Result<()> {
        let script = self.call(Call::Pagemap { count: entries.len() })?;
        for (i, entry) in entries.iter_mut().enumerate() {
            *entry = (script.pagemap)(i as u64);
        }
        Ok(())
    }
}

/// The fake's open device.
struct FakeDevice {
    kernel: FakeKernel,
    fd: Arc<OwnedFd>,
    /// What the no-IOMMU backend holds while the device lives.
    _keep: Option<Box<dyn Send + Sync>>,
}

impl DeviceBackend for FakeDevice {
    fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    fn device_info(&self) -> io::Result<DeviceInfo> {
        let script = self.kernel.call(Call::DeviceInfo)?;
        Ok(DeviceInfo {
            flags: script.device_flags,
            num_regions: script.regions.len() as u32,
            num_irqs: script.irqs.len() as u32,
        })
    }

    fn region_info(&self, index: u32) -> io::Result<Vec<u8>> {
        let script = self.kernel.call(Call::RegionInfo(index))?;
        script
            .regions
            .get(index as usize)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn irq_info(&self, index: u32) -> io::Result<RawIrqInfo> {
        let script = self.kernel.call(Call::IrqInfo(index))?;
        script
            .irqs
            .get(index as usize)
            .copied()
            .flatten()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn set_irqs(&self, set: &IrqSet<'_>) -> io::Result<()> {
        self.kernel
            .call(Call::SetIrqs {
                index: set.index,
                flags: set.flags,
                start: set.start,
                count: set.count,
                fds: set.fds.to_vec(),
            })
            .map(drop)
    }

    fn reset(&self) -> io::Result<()> {
        self.kernel.call(Call::Reset).map(drop)
    }

    fn hot_reset_info(&self) -> io::Result<HotResetInfo> {
        let script = self.kernel.call(Call::HotResetInfo)?;
        Ok(HotResetInfo {
            flags: script.hot_reset_flags,
            devices: script.dependents.clone(),
        })
    }

    fn group_fd(&self, group: u32) -> Option<OwnedFd> {
        let mut script = self.kernel.script();
        if !script.held_groups.contains(&group) {
            return None;
        }
        let fd: OwnedFd = self.kernel.file.try_clone().ok()?.into();
        script.lent.push((fd.as_raw_fd(), group));
        Some(fd)
    }

    /// Refuses with EINVAL, as the kernel does, unless a descriptor of every
    /// dependent device's group is passed; through a cdev
    /// ([`Interface::Iommufd`]), unless none is passed and every dependent
    /// device is owned.
    fn hot_reset(&self, group_fds: &[RawFd]) -> io::Result<()> {
        let groups: Vec<u32> = {
            let mut script = self.kernel.script();
            let lent = std::mem::take(&mut script.lent);
            group_fds
                .iter()
                .filter_map(|fd| lent.iter().find(|(l, _)| l == fd).map(|(_, g)| *g))
                .collect()
        };
        let script = self.kernel.call(Call::HotReset {
            groups: groups.clone(),
        })?;
        let refused = if script.interface == Interface::Iommufd {
            !group_fds.is_empty()
                || script
                    .dependents
                    .iter()
                    .any(|d| d.group == vfio_bindings::bindings::vfio::VFIO_PCI_DEVID_NOT_OWNED as u32)
        } else {
            script.dependents.iter().any(|d| !groups.contains(&d.group))
        };
        if refused {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

/// The kernel's side of `IOMMU_IOAS_IOVA_RANGES`, scripted: each call writes
/// as many of the ranges as the caller made room for, sets `num_iovas` to
/// how many there are and the alignment, and fails with `EMSGSIZE` if they
/// did not all fit, as iommufd does. Records the room each call had.
#[derive(Default)]
pub(crate) struct FakeIovaRanges {
    /// The IOAS's ranges, inclusive.
    pub ranges: Vec<(u64, u64)>,
    /// `out_iova_alignment`.
    pub alignment: u64,
    /// Ranges that appear after the first call (a device attached meanwhile).
    pub added_after_first: Vec<(u64, u64)>,
    /// An errno every call fails with instead.
    pub errno: Option<i32>,
    /// The `num_iovas` of each call.
    pub rooms: Vec<u32>,
}

impl FakeIovaRanges {
    /// One call, as the ioctl.
    pub(crate) fn call(
        &mut self,
        cmd: &mut iommufd_bindings::iommu_ioas_iova_ranges,
        out: &mut [iommufd_bindings::iommu_iova_range],
    ) -> io::Result<()> {
        self.rooms.push(cmd.num_iovas);
        if self.rooms.len() == 2 {
            let added = std::mem::take(&mut self.added_after_first);
            self.ranges.extend(added);
        }
        if let Some(errno) = self.errno {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let room = (cmd.num_iovas as usize).min(out.len());
        for (slot, &(start, last)) in out[..room].iter_mut().zip(&self.ranges) {
            slot.start = start;
            slot.last = last;
        }
        cmd.num_iovas = self.ranges.len() as u32;
        cmd.out_iova_alignment = self.alignment;
        if self.ranges.len() > room {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        Ok(())
    }
}
