//! The iommufd and cdev calls barmap issues itself, one safe function each:
//! iommufd-ioctls has no `IOMMU_IOAS_IOVA_RANGES` wrapper, and binding and
//! attaching a device cdev are VFIO ioctls it does not cover.

use std::io;
use std::mem::{offset_of, size_of};
use std::ops::RangeInclusive;
use std::os::fd::RawFd;

use iommufd_bindings::{
    iommu_ioas_iova_ranges, iommu_iova_range, IOMMUFD_CMD_IOAS_IOVA_RANGES, IOMMUFD_TYPE,
};
use vfio_bindings::bindings::vfio::{
    vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, VFIO_BASE, VFIO_TYPE,
};

/// `_IO(type, nr)`.
const fn io_nr(ty: u32, nr: u32) -> libc::c_ulong {
    ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

const VFIO_DEVICE_BIND_IOMMUFD: libc::c_ulong = io_nr(VFIO_TYPE as u32, VFIO_BASE + 18);
const VFIO_DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = io_nr(VFIO_TYPE as u32, VFIO_BASE + 19);
const IOMMU_IOAS_IOVA_RANGES: libc::c_ulong = io_nr(IOMMUFD_TYPE as u32, IOMMUFD_CMD_IOAS_IOVA_RANGES);

/// The size of `vfio_device_bind_iommufd` up to `out_devid`: the struct as
/// 6.6 to 6.12 know it (later kernels accept it, and read no further
/// without a flag that says so).
const BIND_SIZE: usize = offset_of!(vfio_device_bind_iommufd, out_devid) + size_of::<u32>();
/// The size of `vfio_device_attach_iommufd_pt` up to `pt_id`, likewise.
const ATTACH_SIZE: usize = offset_of!(vfio_device_attach_iommufd_pt, pt_id) + size_of::<u32>();

/// Most times the IOVA ranges are asked for again when their number grew
/// between two calls (a device attached meanwhile).
const IOVA_RANGES_TRIES: usize = 8;
/// Upper bound on the number of IOVA ranges, against a bogus count.
const MAX_IOVA_RANGES: u32 = 4096;

/// `VFIO_DEVICE_BIND_IOMMUFD`: binds the device cdev `device` to the
/// iommufd `iommufd`; returns the device's id in it.
pub(crate) fn bind(device: RawFd, iommufd: RawFd) -> io::Result<u32> {
    let mut bind = vfio_device_bind_iommufd {
        argsz: BIND_SIZE as u32,
        flags: 0,
        iommufd,
        ..Default::default()
    };
    // SAFETY: `bind` is a writable vfio_device_bind_iommufd; its argsz says
    // the kernel reads and writes only its first BIND_SIZE bytes.
    let ret = unsafe {
        libc::ioctl(
            device,
            VFIO_DEVICE_BIND_IOMMUFD,
            &mut bind as *mut vfio_device_bind_iommufd,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bind.out_devid)
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attaches the bound device to the IOAS
/// (or page table) `pt_id` of its iommufd.
pub(crate) fn attach(device: RawFd, pt_id: u32) -> io::Result<()> {
    let mut attach = vfio_device_attach_iommufd_pt {
        argsz: ATTACH_SIZE as u32,
        flags: 0,
        pt_id,
        ..Default::default()
    };
    // SAFETY: `attach` is a writable vfio_device_attach_iommufd_pt; its argsz
    // says the kernel reads and writes only its first ATTACH_SIZE bytes.
    let ret = unsafe {
        libc::ioctl(
            device,
            VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            &mut attach as *mut vfio_device_attach_iommufd_pt,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The valid IOVA ranges of an IOAS and the alignment its mappings need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IovaRanges {
    /// The ranges, inclusive.
    pub ranges: Vec<RangeInclusive<u64>>,
    /// `out_iova_alignment`: every mapping's IOVA and length are multiples of it.
    pub alignment: u64,
}

/// `IOMMU_IOAS_IOVA_RANGES` on IOAS `ioas` of the iommufd `iommufd`.
pub(crate) fn iova_ranges(iommufd: RawFd, ioas: u32) -> io::Result<IovaRanges> {
    read_iova_ranges(ioas, |cmd, ranges| {
        cmd.allowed_iovas = ranges.as_mut_ptr() as u64;
        // SAFETY: `cmd` is a writable iommu_ioas_iova_ranges whose size field
        // is its size; `allowed_iovas` points at `ranges`, whose length
        // `num_iovas` is, so the kernel writes only inside both.
        let ret = unsafe {
            libc::ioctl(
                iommufd,
                IOMMU_IOAS_IOVA_RANGES,
                cmd as *mut iommu_ioas_iova_ranges,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
}

/// The two-call protocol of `IOMMU_IOAS_IOVA_RANGES`, over `call` (which
/// issues the ioctl with `cmd`, pointing it at the buffer): the first call
/// has room for no range, and the kernel answers `EMSGSIZE` with the count
/// in `num_iovas`; the second has room for them all. If the count grew in
/// between, the kernel says so the same way and the call is made again.
pub(crate) fn read_iova_ranges(
    ioas: u32,
    mut call: impl FnMut(&mut iommu_ioas_iova_ranges, &mut [iommu_iova_range]) -> io::Result<()>,
) -> io::Result<IovaRanges> {
    let mut room = 0u32;
    for _ in 0..IOVA_RANGES_TRIES {
        let mut ranges = vec![iommu_iova_range::default(); room as usize];
        let mut cmd = iommu_ioas_iova_ranges {
            size: size_of::<iommu_ioas_iova_ranges>() as u32,
            ioas_id: ioas,
            num_iovas: room,
            ..Default::default()
        };
        match call(&mut cmd, &mut ranges) {
            Ok(()) => {
                let count = (cmd.num_iovas as usize).min(ranges.len());
                return parse_ranges(&ranges[..count], cmd.out_iova_alignment);
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && cmd.num_iovas > room => {
                if cmd.num_iovas > MAX_IOVA_RANGES {
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                }
                room = cmd.num_iovas;
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EMSGSIZE))
}

/// Checks and converts what the kernel wrote.
fn parse_ranges(ranges: &[iommu_iova_range], alignment: u64) -> io::Result<IovaRanges> {
    let ranges = ranges
        .iter()
        .map(|r| {
            (r.start <= r.last)
                .then_some(r.start..=r.last)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
        })
        .collect::<io::Result<_>>()?;
    if alignment != 0 && !alignment.is_power_of_two() {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    Ok(IovaRanges { ranges, alignment })
}
