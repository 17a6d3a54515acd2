//! The VFIO ioctls barmap issues itself (vfio-ioctls does not expose the raw
//! region-info bytes), one safe function each.

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

use vfio_bindings::bindings::vfio::{vfio_device_info, vfio_region_info, VFIO_BASE, VFIO_TYPE};

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`.
const fn vfio_io(nr: u32) -> libc::c_ulong {
    ((VFIO_TYPE as libc::c_ulong) << 8) | (VFIO_BASE + nr) as libc::c_ulong
}

const VFIO_DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);

/// Upper bound on the info buffer the kernel may ask for, against a bogus argsz.
const MAX_REGION_INFO_LEN: usize = 64 * 1024;

/// `VFIO_DEVICE_GET_INFO`: flags, number of regions and of IRQ indices.
pub(crate) fn device_info(fd: RawFd) -> io::Result<vfio_device_info> {
    let mut info = vfio_device_info {
        argsz: size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: `info` is a properly sized, writable vfio_device_info whose argsz
    // tells the kernel how much it may write.
    let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_INFO, &mut info as *mut vfio_device_info) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO` for `index`, returning the whole info buffer:
/// the `vfio_region_info` header followed by its capability chain, as raw bytes.
pub(crate) fn region_info_bytes(fd: RawFd, index: u32) -> io::Result<Vec<u8>> {
    let mut argsz = size_of::<vfio_region_info>();
    loop {
        // u64 words keep the buffer aligned for the kernel's u64 fields.
        let mut words = vec![0u64; argsz.div_ceil(8)];
        let header = vfio_region_info {
            argsz: argsz as u32,
            index,
            ..Default::default()
        };
        // SAFETY: `words` holds at least size_of::<vfio_region_info>() bytes and is
        // 8-byte aligned, so writing the header there is in bounds and aligned.
        unsafe { words.as_mut_ptr().cast::<vfio_region_info>().write(header) };
        // SAFETY: the buffer is `argsz` bytes long, as its argsz field says, so the
        // kernel writes only inside it.
        let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, words.as_mut_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).take(argsz).collect();
        let wanted = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if wanted <= argsz {
            return Ok(bytes);
        }
        if wanted > MAX_REGION_INFO_LEN {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        argsz = wanted;
    }
}
