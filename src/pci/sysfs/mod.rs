//! The sysfs view of PCI devices: ids, driver, IOMMU group, and binding to vfio-pci.
//!
//! Everything goes through a [`Sysfs`] handle. On a real system it reads `/sys`
//! ([`Sysfs::default`]); tests point it at a tree of plain files and symlinks
//! laid out like the kernel's ([`Sysfs::with_root`]). The handle keeps no
//! state of its own: what it reports and changes is what sysfs holds.
//!
//! | module | holds |
//! | --- | --- |
//! | `devices` | [`PciDeviceInfo`] and enumeration: ids, class, driver, group |
//! | `group` | IOMMU group members and viability |
//! | `bind` | binding to vfio-pci ([`VfioBind`]) and giving a device back |
//! | `attr` | reading and writing one sysfs file |

mod attr;
mod bind;
mod devices;
#[cfg(test)]
pub(crate) mod fake;
mod group;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use bind::VfioBind;
pub use devices::PciDeviceInfo;

use crate::error::{Error, Result};
use crate::pci::PciAddress;

/// Name of the kernel's VFIO PCI driver, as it appears under `/sys/bus/pci/drivers`.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

const DEFAULT_ROOT: &str = "/sys";

/// Writes one sysfs attribute.
type AttrWriter = fn(&Path, &str) -> io::Result<()>;

/// A handle on the PCI part of sysfs.
///
/// [`Sysfs::default`] uses `/sys`.
///
/// ```no_run
/// use barmap::pci::Sysfs;
///
/// let sysfs = Sysfs::default();
/// for dev in sysfs.devices()? {
///     println!(
///         "{} {:04x}:{:04x} class {:06x} driver {}",
///         dev.address,
///         dev.vendor,
///         dev.device,
///         dev.class,
///         dev.driver.as_deref().unwrap_or("-")
///     );
/// }
/// # Ok::<(), barmap::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
    /// How attributes are written: `write_attr` everywhere except in tests,
    /// which also play the kernel's part (a plain file tree does not rebind by itself).
    writer: AttrWriter,
}

impl Default for Sysfs {
    /// The real system: sysfs at `/sys`.
    fn default() -> Self {
        Sysfs::with_root(DEFAULT_ROOT)
    }
}

impl Sysfs {
    /// A handle on a sysfs tree mounted at `root` (normally `/sys`).
    ///
    /// ```
    /// use std::path::Path;
    /// use barmap::pci::Sysfs;
    ///
    /// let sysfs = Sysfs::with_root("/tmp/fake-sys");
    /// assert_eq!(sysfs.root(), Path::new("/tmp/fake-sys"));
    /// ```
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Sysfs {
            root: root.into(),
            writer: attr::write_attr,
        }
    }

    /// The sysfs root this handle reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sysfs directory of the device at `addr` (whether or not it exists).
    pub fn device_path(&self, addr: PciAddress) -> PathBuf {
        self.devices_dir().join(addr.to_string())
    }

    /// Replaces how attributes are written, so a test can play the kernel's part.
    #[cfg(test)]
    fn with_writer(mut self, writer: AttrWriter) -> Self {
        self.writer = writer;
        self
    }

    fn devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    fn drivers_probe(&self) -> PathBuf {
        self.root.join("bus/pci/drivers_probe")
    }

    fn driver_dir(&self, driver: &str) -> PathBuf {
        self.root.join("bus/pci/drivers").join(driver)
    }

    fn group_dir(&self, group: u32) -> PathBuf {
        self.root.join("kernel/iommu_groups").join(group.to_string())
    }

    /// The device's sysfs directory, or [`Error::DeviceNotFound`].
    fn existing_device_dir(&self, addr: PciAddress) -> Result<PathBuf> {
        let dir = self.device_path(addr);
        match fs::metadata(&dir) {
            Ok(_) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::DeviceNotFound { addr, path: dir }),
            Err(source) => Err(Error::Sysfs { path: dir, source }),
        }
    }

    fn write(&self, path: &Path, value: &str) -> Result<()> {
        log::debug!("sysfs: writing {value:?} to {}", path.display());
        (self.writer)(path, value).map_err(|source| Error::Sysfs {
            path: path.to_path_buf(),
            source,
        })
    }
}
