//! Resetting a device: a function reset where it has one, a hot reset of its
//! bus otherwise.

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use vfio_bindings::bindings::vfio::VFIO_DEVICE_FLAGS_RESET;

use super::{ioctl, Device};
use crate::error::{Error, Result};

/// Which reset [`Device::reset`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetKind {
    /// A reset of the function alone (`VFIO_DEVICE_RESET`: FLR, PM reset, or
    /// a bus reset where the device is alone on its bus).
    Function,
    /// A hot reset of the bus the device sits on (`VFIO_DEVICE_PCI_HOT_RESET`),
    /// which resets every device on it; all of their groups must be open here.
    Bus,
}

impl Device {
    /// Resets the device: a function reset where the kernel offers one for
    /// it, a hot reset of its bus otherwise. The result says which was done.
    ///
    /// vfio-pci revokes every mapping of the device's BARs while the reset
    /// runs (a [`crate::Region`]'s accesses during it are served by the fault
    /// handler and wait for it), then restores the config space it keeps.
    /// Device registers are back at their reset values afterwards.
    ///
    /// A device with neither is [`Error::Unsupported`]; a hot reset that
    /// would reset devices of groups not open in this process is
    /// [`Error::Vfio`] (`EPERM` from the kernel's check).
    ///
    /// ```no_run
    /// let dev = barmap::Device::open("0000:01:00.0".parse()?)?;
    /// println!("{:?} reset done", dev.reset()?);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn reset(&self) -> Result<ResetKind> {
        let addr = self.address();
        let fd = self.as_raw_fd();
        let failed = |step: &'static str| {
            move |e: std::io::Error| Error::Vfio {
                addr,
                step,
                source: Box::new(e),
            }
        };
        if self.device_flags() & VFIO_DEVICE_FLAGS_RESET != 0 {
            ioctl::device_reset(fd).map_err(failed("function reset"))?;
            log::debug!("{addr}: function reset");
            return Ok(ResetKind::Function);
        }
        let groups = match ioctl::hot_reset_groups(fd) {
            Ok(groups) => groups,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EINVAL | libc::ENOTTY)) => {
                return Err(Error::Unsupported {
                    addr,
                    what: "resetting the device",
                    reason: "it has no function reset and its bus cannot be reset alone",
                })
            }
            Err(e) => return Err(failed("get hot reset info")(e)),
        };
        let fds = groups
            .iter()
            .map(|&group| {
                open_group_fd(group).ok_or(Error::Unsupported {
                    addr,
                    what: "a hot reset of the device's bus",
                    reason: "it also resets devices of an IOMMU group this process does not hold",
                })
            })
            .collect::<Result<Vec<RawFd>>>()?;
        ioctl::hot_reset(fd, &fds).map_err(failed("hot reset"))?;
        log::debug!("{addr}: hot reset of its bus (groups {groups:?})");
        Ok(ResetKind::Bus)
    }
}

/// The descriptor of `/dev/vfio/GROUP` that this process holds open, found
/// among its open files: vfio-ioctls keeps its group descriptors private, and
/// a group can be open only once. It stays open for as long as a device of
/// the group is open.
fn open_group_fd(group: u32) -> Option<RawFd> {
    let node = format!("/dev/vfio/{group}");
    fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|entry| entry.ok())
        .find(|entry| fs::read_link(entry.path()).is_ok_and(|target| target == Path::new(&node)))
        .and_then(|entry| entry.file_name().to_str()?.parse().ok())
}
