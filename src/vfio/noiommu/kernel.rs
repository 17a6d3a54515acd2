//! The real kernel calls of the no-IOMMU open sequence: one safe function
//! each over the vfio-bindings constants, one `unsafe` ioctl line each.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::vfio_group_status;

use super::{NoIommuCalls, CONTAINER_PATH};
use crate::vfio::backend::DeviceBackend;
use crate::vfio::ioctl::vfio_io;
use crate::vfio::legacy::LegacyDevice;

const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(0);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);

/// The running kernel.
pub(crate) struct NoIommuKernel;

/// The ioctl's return value, or its errno.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_rw(path: &Path) -> io::Result<OwnedFd> {
    Ok(OpenOptions::new().read(true).write(true).open(path)?.into())
}

impl NoIommuCalls for NoIommuKernel {
    fn open_container(&self) -> io::Result<OwnedFd> {
        open_rw(Path::new(CONTAINER_PATH))
    }

    fn api_version(&self, container: BorrowedFd<'_>) -> io::Result<i32> {
        // SAFETY: VFIO_GET_API_VERSION takes no argument and touches no user memory.
        check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION) })
    }

    fn check_extension(&self, container: BorrowedFd<'_>, extension: u32) -> io::Result<i32> {
        // SAFETY: VFIO_CHECK_EXTENSION takes its argument by value and touches no user memory.
        check(unsafe {
            libc::ioctl(
                container.as_raw_fd(),
                VFIO_CHECK_EXTENSION,
                extension as libc::c_ulong,
            )
        })
    }

    fn open_group(&self, path: &Path) -> io::Result<OwnedFd> {
        open_rw(path)
    }

    fn group_status(&self, group: BorrowedFd<'_>) -> io::Result<u32> {
        let mut status = vfio_group_status {
            argsz: size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: `status` is a writable vfio_group_status whose argsz tells
        // the kernel how much it may write.
        check(unsafe {
            libc::ioctl(
                group.as_raw_fd(),
                VFIO_GROUP_GET_STATUS,
                &mut status as *mut vfio_group_status,
            )
        })?;
        Ok(status.flags)
    }

    fn set_container(&self, group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> io::Result<()> {
        let fd: libc::c_int = container.as_raw_fd();
        // SAFETY: the kernel reads one int, the container descriptor, from `fd`.
        check(unsafe {
            libc::ioctl(
                group.as_raw_fd(),
                VFIO_GROUP_SET_CONTAINER,
                &fd as *const libc::c_int,
            )
        })?;
        Ok(())
    }

    fn set_iommu(&self, container: BorrowedFd<'_>, iommu: u32) -> io::Result<()> {
        // SAFETY: VFIO_SET_IOMMU takes its argument by value and touches no user memory.
        check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_SET_IOMMU, iommu as libc::c_ulong) })?;
        Ok(())
    }

    fn device_fd(&self, group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the kernel reads the NUL-terminated name, which lives through the call.
        let fd = check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) })?;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn device(
        &self,
        fd: OwnedFd,
        group: u32,
        group_fd: OwnedFd,
        keep: Box<dyn Send + Sync>,
    ) -> Box<dyn DeviceBackend> {
        Box::new(LegacyDevice::new(Arc::new(fd), group, Some(group_fd), keep))
    }
}
