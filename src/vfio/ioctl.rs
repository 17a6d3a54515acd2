//! The VFIO ioctls barmap issues itself on a device or container, one safe
//! function each: vfio-ioctls does not expose the raw region-info bytes or
//! the kernel's errno of an interrupt-info query (it caches what it read at
//! open and drops the failures), its `reset` drops the kernel's answer, it
//! has no hot reset, no `VFIO_IOMMU_GET_INFO` (so no IOVA ranges or
//! DMA-mapping limit), and its `VFIO_DEVICE_SET_IRQS` wrappers always start
//! at vector 0, cannot mask, and unmask only INTx.

use std::io;
use std::mem::{offset_of, size_of, size_of_val};
use std::os::fd::RawFd;

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_iommu_type1_info, vfio_irq_info, vfio_irq_set, vfio_pci_dependent_device,
    vfio_pci_hot_reset, vfio_pci_hot_reset_info, vfio_region_info, VFIO_BASE, VFIO_TYPE,
};

use super::backend::{DependentDevice, HotResetInfo, IrqSet};
use crate::pci::PciAddress;

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`.
pub(super) const fn vfio_io(nr: u32) -> libc::c_ulong {
    ((VFIO_TYPE as libc::c_ulong) << 8) | (VFIO_BASE + nr) as libc::c_ulong
}

const VFIO_DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const VFIO_DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
const VFIO_DEVICE_RESET: libc::c_ulong = vfio_io(11);
const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: libc::c_ulong = vfio_io(12);
const VFIO_DEVICE_PCI_HOT_RESET: libc::c_ulong = vfio_io(13);

/// Upper bound on the devices a hot reset may affect, against a bogus count.
const MAX_HOT_RESET_DEVICES: usize = 4096;
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const VFIO_IOMMU_GET_INFO: libc::c_ulong = vfio_io(12);

/// Upper bound on an info buffer the kernel may ask for, against a bogus argsz.
const MAX_INFO_LEN: usize = 64 * 1024;

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

/// `VFIO_DEVICE_GET_IRQ_INFO` for interrupt `index`: its flags and vector count.
pub(crate) fn irq_info(fd: RawFd, index: u32) -> io::Result<vfio_irq_info> {
    let mut info = vfio_irq_info {
        argsz: size_of::<vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: `info` is a properly sized, writable vfio_irq_info whose argsz
    // tells the kernel how much it may write.
    let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_IRQ_INFO, &mut info as *mut vfio_irq_info) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO` for `index`, returning the whole info buffer:
/// the `vfio_region_info` header followed by its capability chain, as raw bytes.
pub(crate) fn region_info_bytes(fd: RawFd, index: u32) -> io::Result<Vec<u8>> {
    let at = offset_of!(vfio_region_info, index);
    info_bytes(
        fd,
        VFIO_DEVICE_GET_REGION_INFO,
        size_of::<vfio_region_info>(),
        &[(at, index)],
    )
}

/// An info ioctl whose buffer starts with its `argsz` and may be asked to
/// grow (to hold a capability chain): starts with `len` bytes, sets the u32
/// `fields` (byte offset, value) besides `argsz`, and calls again with the
/// size the kernel asks for until the answer fits. Returns the buffer.
fn info_bytes(fd: RawFd, request: libc::c_ulong, len: usize, fields: &[(usize, u32)]) -> io::Result<Vec<u8>> {
    let mut argsz = len;
    loop {
        let mut header = vec![0u8; argsz];
        header[..4].copy_from_slice(&(argsz as u32).to_ne_bytes());
        for &(at, value) in fields {
            header[at..at + 4].copy_from_slice(&value.to_ne_bytes());
        }
        // u64 words keep the buffer aligned for the kernel's u64 fields.
        let mut words = ne_words(&header);
        // SAFETY: the buffer is `argsz` bytes long (rounded up to whole words)
        // and 8-byte aligned, as its argsz field says, so the kernel writes
        // only inside it.
        let ret = unsafe { libc::ioctl(fd, request, words.as_mut_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).take(argsz).collect();
        let wanted = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if wanted <= argsz {
            return Ok(bytes);
        }
        if wanted > MAX_INFO_LEN {
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        argsz = wanted;
    }
}

/// `VFIO_DEVICE_RESET`: a function-level reset (FLR, PM or a bus reset of a
/// device alone on its bus, whichever the kernel has for the device).
pub(crate) fn device_reset(fd: RawFd) -> io::Result<()> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument and touches no user memory.
    let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_RESET) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `VFIO_DEVICE_SET_IRQS` with the arguments in `set`.
pub(crate) fn set_irqs(fd: RawFd, set: &IrqSet<'_>) -> io::Result<()> {
    // The header is five native-order u32s (the data array has no size).
    const _: () = assert!(size_of::<vfio_irq_set>() == 5 * size_of::<u32>());
    let argsz = size_of::<vfio_irq_set>() + size_of_val(set.fds);
    let bytes: Vec<u8> = [argsz as u32, set.flags, set.index, set.start, set.count]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .chain(set.fds.iter().flat_map(|fd| fd.to_ne_bytes()))
        .collect();
    // u64 words keep the buffer aligned for the kernel.
    let words = ne_words(&bytes);
    // SAFETY: the buffer holds `argsz` bytes (a vfio_irq_set followed by one i32
    // per vector), as its argsz field says; the kernel only reads it.
    let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_SET_IRQS, words.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: every device a hot reset of this
/// one's bus would reset, with its IOMMU group (or iommufd device id).
pub(crate) fn hot_reset_info(fd: RawFd) -> io::Result<HotResetInfo> {
    let header = size_of::<vfio_pci_hot_reset_info>();
    let entry = size_of::<vfio_pci_dependent_device>();
    let mut count = 0usize;
    loop {
        let argsz = header + count * entry;
        // u32 words keep the buffer aligned for the kernel's fields.
        let mut words = vec![0u32; argsz.div_ceil(4)];
        words[0] = argsz as u32;
        // SAFETY: the buffer is `argsz` bytes, as its first word tells the
        // kernel, which writes no further.
        let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, words.as_mut_ptr()) };
        let wanted = words[2] as usize;
        match ret {
            0 => {
                // Each entry is (group or devid: u32, segment: u16, bus: u8, devfn: u8).
                let devices = words[3..]
                    .chunks(entry / 4)
                    .take(wanted)
                    .map(|d| {
                        let [segment_lo, segment_hi, bus, devfn] = d[1].to_ne_bytes();
                        let segment = u16::from_ne_bytes([segment_lo, segment_hi]);
                        PciAddress::new(segment.into(), bus, devfn >> 3, devfn & 7)
                            .map(|addr| DependentDevice { group: d[0], addr })
                            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
                    })
                    .collect::<io::Result<_>>()?;
                return Ok(HotResetInfo {
                    flags: words[1],
                    devices,
                });
            }
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC) && wanted > count => {
                if wanted > MAX_HOT_RESET_DEVICES {
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                }
                count = wanted;
            }
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// `VFIO_DEVICE_PCI_HOT_RESET`: resets the device's bus. The kernel refuses
/// (`EINVAL`) unless `group_fds` holds an open descriptor of every group
/// [`hot_reset_info`] named; for a device opened through its cdev,
/// `group_fds` must be empty.
pub(crate) fn hot_reset(fd: RawFd, group_fds: &[RawFd]) -> io::Result<()> {
    let header = size_of::<vfio_pci_hot_reset>();
    let argsz = header + size_of_val(group_fds);
    let mut words = vec![0i32; argsz.div_ceil(4)];
    words[0] = argsz as i32;
    words[2] = group_fds.len() as i32;
    words[header / 4..].copy_from_slice(group_fds);
    // SAFETY: the buffer is `argsz` bytes as its first word says; the kernel
    // only reads it.
    let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_PCI_HOT_RESET, words.as_mut_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `VFIO_IOMMU_GET_INFO` on a container with its IOMMU set, returning the
/// whole info buffer: the `vfio_iommu_type1_info` header followed by its
/// capability chain (IOVA ranges, DMA-mapping limit), as raw bytes.
pub(crate) fn iommu_info_bytes(container: RawFd) -> io::Result<Vec<u8>> {
    info_bytes(
        container,
        VFIO_IOMMU_GET_INFO,
        size_of::<vfio_iommu_type1_info>(),
        &[],
    )
}

/// `bytes` packed into native-order u64 words (the last one zero-padded).
fn ne_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            u64::from_ne_bytes(word)
        })
        .collect()
}
