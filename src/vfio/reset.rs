//! Resetting a device: a function reset where it has one, a hot reset of its
//! bus otherwise; and the IOMMU group descriptors a hot reset needs.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_DEVID_NOT_OWNED, VFIO_PCI_HOT_RESET_FLAG_DEV_ID,
    VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED,
};

use super::{noiommu, Device};
use crate::error::{Error, Result};

/// Which reset [`Device::reset`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetKind {
    /// A reset of the function alone (`VFIO_DEVICE_RESET`: FLR, PM reset, or
    /// a bus reset where the device is alone on its bus).
    Function,
    /// A hot reset of the bus the device sits on (`VFIO_DEVICE_PCI_HOT_RESET`),
    /// which resets every device on it; all of their groups must be open here
    /// (or, for a device opened through its cdev, all of them bound to its iommufd).
    Bus,
}

impl Device {
    /// Resets the device: a function reset where the kernel offers one for
    /// it, a hot reset of its bus ([`Device::reset_bus`]) otherwise. The
    /// result says which was done.
    ///
    /// vfio-pci revokes every mapping of the device's BARs while the reset
    /// runs (a [`crate::Region`]'s accesses during it are served by the fault
    /// handler and wait for it), then restores the config space it keeps.
    /// Device registers are back at their reset values afterwards.
    ///
    /// A device with neither is [`Error::Unsupported`]; the errors of a hot
    /// reset are those of [`Device::reset_bus`].
    ///
    /// ```no_run
    /// let dev = barmap::Device::open("0000:01:00.0".parse()?)?;
    /// println!("{:?} reset done", dev.reset()?);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn reset(&self) -> Result<ResetKind> {
        let addr = self.address();
        if self.device_flags() & VFIO_DEVICE_FLAGS_RESET != 0 {
            self.backend().reset().map_err(|e| Error::Vfio {
                addr,
                step: "function reset",
                source: Box::new(e),
            })?;
            log::debug!("{addr}: function reset");
            return Ok(ResetKind::Function);
        }
        self.hot_reset("it has no function reset and its bus cannot be reset alone")?;
        Ok(ResetKind::Bus)
    }

    /// Resets the bus the device sits on (`VFIO_DEVICE_PCI_HOT_RESET`), even
    /// where a function reset exists: every device on the bus is reset, and
    /// vfio-pci revokes and restores each one's mappings as for
    /// [`Device::reset`].
    ///
    /// The kernel lets a process reset a bus only if it holds the IOMMU
    /// group of every device on it. barmap passes the descriptor of the
    /// device's own group, which the device holds, and that of every other
    /// affected group this process has open, and the kernel decides:
    /// [`Error::Vfio`] with its errno (`EINVAL` when a device on the bus
    /// belongs to a group not open in this process, or is not bound to
    /// vfio-pci; `EBUSY` when another reset holds one of the devices).
    /// A bus that cannot be reset at all (the root bus) is
    /// [`Error::Unsupported`].
    ///
    /// A device opened through its cdev ([`crate::Interface::Iommufd`])
    /// proves ownership through its iommufd instead: the kernel names the
    /// affected devices by their iommufd device ids, and resets the bus only
    /// if every one is bound to the same iommufd (or shares a group with one
    /// that is). barmap checks that first: a device that is not owned is
    /// [`Error::HotResetNotOwned`] naming it, and the kernel is not asked.
    ///
    /// ```no_run
    /// let dev = barmap::Device::open("0000:01:00.0".parse()?)?;
    /// dev.reset_bus()?;
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn reset_bus(&self) -> Result<()> {
        self.hot_reset("its bus cannot be reset (it is the root bus, or the bus cannot be reset alone)")
    }

    /// The hot reset; `unsupported` says why when the kernel has none for the device.
    fn hot_reset(&self, unsupported: &'static str) -> Result<()> {
        let addr = self.address();
        let failed = |step: &'static str| {
            move |e: io::Error| Error::Vfio {
                addr,
                step,
                source: Box::new(e),
            }
        };
        let groups = match self.backend().hot_reset_info() {
            Ok(info) if info.flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0 => {
                return self.hot_reset_by_dev_id(&info);
            }
            Ok(info) => {
                let mut groups: Vec<u32> = info.devices.iter().map(|d| d.group).collect();
                groups.sort_unstable();
                groups.dedup();
                groups
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EINVAL | libc::ENOTTY)) => {
                return Err(Error::Unsupported {
                    addr,
                    what: "a hot reset of the device's bus",
                    reason: unsupported,
                })
            }
            Err(e) => return Err(failed("get hot reset info")(e)),
        };
        let held = group_fds(&groups, |group| self.backend().group_fd(group));
        let raw: Vec<RawFd> = held.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let step = if held.missing.is_empty() {
            "hot reset"
        } else {
            log::debug!(
                "{addr}: hot reset of a bus with devices of groups {:?}, which this process does not hold",
                held.missing
            );
            "hot reset (the bus has devices of IOMMU groups not open in this process)"
        };
        self.backend().hot_reset(&raw).map_err(failed(step))?;
        log::debug!("{addr}: hot reset of its bus (groups {groups:?})");
        Ok(())
    }
}

impl Device {
    /// The hot reset of a device opened through its cdev: no group
    /// descriptors, once every affected device is known to be owned.
    fn hot_reset_by_dev_id(&self, info: &super::backend::HotResetInfo) -> Result<()> {
        let addr = self.address();
        let mut not_owned: Vec<_> = info
            .devices
            .iter()
            .filter(|d| d.group == VFIO_PCI_DEVID_NOT_OWNED as u32)
            .map(|d| d.addr)
            .collect();
        if info.flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED == 0 && not_owned.is_empty() {
            // The kernel says not all are owned, without naming one: name them all.
            not_owned = info.devices.iter().map(|d| d.addr).collect();
        }
        if !not_owned.is_empty() {
            return Err(Error::HotResetNotOwned {
                addr,
                interface: self.interface(),
                not_owned,
            });
        }
        self.backend().hot_reset(&[]).map_err(|e| Error::Vfio {
            addr,
            step: "hot reset",
            source: Box::new(e),
        })?;
        log::debug!(
            "{addr}: hot reset of its bus (iommufd device ids {:?})",
            info.devices.iter().map(|d| d.group).collect::<Vec<_>>()
        );
        Ok(())
    }
}

/// The group descriptors found for a hot reset.
struct GroupFds {
    /// One descriptor per group that has one, held for the call.
    fds: Vec<OwnedFd>,
    /// The groups without one.
    missing: Vec<u32>,
}

/// The descriptor `find` gives for each of `groups`, and the groups it has
/// none for.
fn group_fds(groups: &[u32], mut find: impl FnMut(u32) -> Option<OwnedFd>) -> GroupFds {
    let mut held = GroupFds {
        fds: vec![],
        missing: vec![],
    };
    for &group in groups {
        match find(group) {
            Some(fd) => held.fds.push(fd),
            None => held.missing.push(group),
        }
    }
    held
}

/// A duplicate of the descriptor of group `group` that this process holds
/// open: its node `/dev/vfio/GROUP`, or `/dev/vfio/noiommu-GROUP` for a
/// group of VFIO's no-IOMMU mode (the two share one numbering). It is found
/// among the process's open files (vfio-ioctls keeps its group descriptors
/// private, and a group can be open only once).
pub(super) fn find_group_fd(group: u32) -> Option<OwnedFd> {
    [
        PathBuf::from(format!("/dev/vfio/{group}")),
        noiommu::group_path(group),
    ]
    .iter()
    .find_map(|node| find_open(node))
}

/// A duplicate of a descriptor this process holds open on the character
/// device `node`. The duplicate is checked to be the node's device after it
/// is made, so a descriptor number closed and reused meanwhile is never
/// taken for it; and it stays the node's for as long as it is held.
fn find_open(node: &Path) -> Option<OwnedFd> {
    let rdev = fs::metadata(node)
        .ok()
        .filter(|m| m.file_type().is_char_device())?
        .rdev();
    fs::read_dir("/proc/self/fd")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| fs::read_link(entry.path()).is_ok_and(|target| target == node))
        .filter_map(|entry| entry.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(duplicate)
        .find(|fd| is_char_device(fd, rdev))
}

/// A new descriptor of the file open at `fd`, if it is open.
fn duplicate(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC reads no user memory; on a descriptor that is
    // not open it fails with EBADF.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    // SAFETY: `dup` is a descriptor the call just made, owned by no one else.
    (dup >= 0).then(|| unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Whether `fd` is open on the character device `rdev`.
fn is_char_device(fd: &OwnedFd, rdev: u64) -> bool {
    fd.try_clone()
        .map(File::from)
        .and_then(|file| file.metadata())
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == rdev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_file() -> OwnedFd {
        tempfile::tempfile().unwrap().into()
    }

    #[test]
    fn groups_without_a_descriptor_are_listed_and_the_others_kept() {
        let held = group_fds(&[3, 7, 9], |group| (group != 7).then(plain_file));
        assert_eq!(held.fds.len(), 2);
        assert_eq!(held.missing, vec![7]);
        let none = group_fds(&[1, 2], |_| None);
        assert!(none.fds.is_empty());
        assert_eq!(none.missing, vec![1, 2]);
    }

    #[test]
    fn a_descriptor_of_another_file_is_not_taken_for_a_device_node() {
        let null = fs::metadata("/dev/null").unwrap().rdev();
        let file = plain_file();
        assert!(!is_char_device(&file, null));
        let dev_null: OwnedFd = File::open("/dev/null").unwrap().into();
        let dup = duplicate(dev_null.as_raw_fd()).unwrap();
        assert_ne!(dup.as_raw_fd(), dev_null.as_raw_fd());
        assert!(is_char_device(&dup, null));
        let zero = fs::metadata("/dev/zero").unwrap().rdev();
        assert!(!is_char_device(&dup, zero), "another character device");
        assert!(duplicate(-1).is_none());
    }

    #[test]
    fn a_group_this_process_does_not_hold_is_not_found() {
        assert!(find_group_fd(u32::MAX).is_none());
    }

    #[test]
    fn a_held_character_device_is_found_by_its_node_and_a_plain_file_is_not() {
        let null = fs::metadata("/dev/null").unwrap().rdev();
        let _held = File::open("/dev/null").unwrap();
        let found = find_open(Path::new("/dev/null")).expect("the held /dev/null");
        assert!(is_char_device(&found, null));
        let file = tempfile::NamedTempFile::new().unwrap();
        let _open = File::open(file.path()).unwrap();
        assert!(find_open(file.path()).is_none(), "not a device node");
    }
}
