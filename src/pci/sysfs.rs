//! The sysfs view of PCI devices: ids, driver, IOMMU group, and binding to vfio-pci.
//!
//! Everything goes through a [`Sysfs`] handle. On a real system it reads `/sys`
//! ([`Sysfs::default`]); tests point it at a tree of plain files and symlinks
//! laid out like the kernel's ([`Sysfs::with_root`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pci::PciAddress;

/// Name of the kernel's VFIO PCI driver, as it appears under `/sys/bus/pci/drivers`.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// The other driver that leaves an IOMMU group viable: it claims a device and does nothing with it.
const PCI_STUB_DRIVER: &str = "pci-stub";

const DEFAULT_ROOT: &str = "/sys";
const DEFAULT_STATE_DIR: &str = "/run/barmap";
const PREV_DRIVER_SUFFIX: &str = ".prev-driver";

/// What `driver_override` holds to mean "no override" once written (the kernel accepts an empty line).
const CLEAR_OVERRIDE: &str = "\n";

/// Writes one sysfs attribute.
type AttrWriter = fn(&Path, &str) -> io::Result<()>;

/// What sysfs tells about one PCI function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDeviceInfo {
    /// The device's address.
    pub address: PciAddress,
    /// PCI vendor id (`vendor`).
    pub vendor: u16,
    /// PCI device id (`device`).
    pub device: u16,
    /// 24-bit class code: base class, subclass, programming interface (`class`).
    pub class: u32,
    /// Subsystem vendor id (`subsystem_vendor`), if the kernel exposes one.
    pub subsystem_vendor: Option<u16>,
    /// Subsystem device id (`subsystem_device`), if the kernel exposes one.
    pub subsystem_device: Option<u16>,
    /// The driver the device is bound to (basename of the `driver` link), if any.
    pub driver: Option<String>,
    /// The device's IOMMU group (basename of the `iommu_group` link), if it has one.
    pub iommu_group: Option<u32>,
}

impl PciDeviceInfo {
    /// Whether the device is bound to vfio-pci.
    pub fn is_bound_to_vfio(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_PCI_DRIVER)
    }
}

/// A handle on the PCI part of sysfs, plus the directory where barmap records
/// which driver a device had before it was bound to vfio-pci.
///
/// [`Sysfs::default`] uses `/sys` and `/run/barmap`.
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
    state_dir: PathBuf,
    /// How attributes are written: `write_attr` everywhere except in tests,
    /// which also play the kernel's part (a plain file tree does not rebind by itself).
    writer: AttrWriter,
}

impl Default for Sysfs {
    /// The real system: sysfs at `/sys`, driver records in `/run/barmap`.
    fn default() -> Self {
        Sysfs::with_root(DEFAULT_ROOT)
    }
}

impl Sysfs {
    /// A handle on a sysfs tree mounted at `root` (normally `/sys`).
    ///
    /// The state directory stays `/run/barmap`; tests change it with
    /// [`Sysfs::with_state_dir`].
    ///
    /// ```
    /// use std::path::Path;
    /// use barmap::pci::Sysfs;
    ///
    /// let sysfs = Sysfs::with_root("/tmp/fake-sys").with_state_dir("/tmp/fake-state");
    /// assert_eq!(sysfs.root(), Path::new("/tmp/fake-sys"));
    /// assert_eq!(sysfs.state_dir(), Path::new("/tmp/fake-state"));
    /// ```
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Sysfs {
            root: root.into(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            writer: write_attr,
        }
    }

    /// Uses `dir` to record each device's previous driver between
    /// [`Sysfs::bind_vfio`] and [`Sysfs::unbind`] (which may run in different processes).
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// The sysfs root this handle reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the previous-driver records.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Reads ids, class, driver and IOMMU group of the device at `addr`.
    ///
    /// Fails with [`Error::DeviceNotFound`] if sysfs has no such device, and
    /// with [`Error::Sysfs`] or [`Error::SysfsParse`] if an attribute cannot be
    /// read or parsed.
    ///
    /// ```no_run
    /// use barmap::{pci::Sysfs, PciAddress};
    ///
    /// let addr: PciAddress = "0000:00:03.0".parse()?;
    /// let info = Sysfs::default().device(addr)?;
    /// println!("{:04x}:{:04x} group {:?}", info.vendor, info.device, info.iommu_group);
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn device(&self, addr: PciAddress) -> Result<PciDeviceInfo> {
        let dir = self.existing_device_dir(addr)?;
        let class: u32 = parse_hex(&dir.join("class"), "a 24-bit class code")?;
        if class > 0xff_ffff {
            return Err(Error::SysfsParse {
                path: dir.join("class"),
                content: format!("{class:#x}"),
                expected: "a 24-bit class code",
            });
        }
        Ok(PciDeviceInfo {
            address: addr,
            vendor: parse_hex(&dir.join("vendor"), "a 16-bit vendor id")?,
            device: parse_hex(&dir.join("device"), "a 16-bit device id")?,
            class,
            subsystem_vendor: parse_optional_hex(&dir.join("subsystem_vendor"), "a 16-bit vendor id")?,
            subsystem_device: parse_optional_hex(&dir.join("subsystem_device"), "a 16-bit device id")?,
            driver: link_name(&dir.join("driver"))?,
            iommu_group: group_of(&dir)?,
        })
    }

    /// Reads every PCI device under `bus/pci/devices`, sorted by address.
    ///
    /// A device whose attributes cannot be read makes the whole call fail with
    /// an error naming it; nothing is skipped.
    pub fn devices(&self) -> Result<Vec<PciDeviceInfo>> {
        let addrs = read_addresses(&self.devices_dir())?;
        addrs.into_iter().map(|addr| self.device(addr)).collect()
    }

    /// The driver the device at `addr` is bound to, if any.
    pub fn driver(&self, addr: PciAddress) -> Result<Option<String>> {
        link_name(&self.existing_device_dir(addr)?.join("driver"))
    }

    /// The IOMMU group of the device at `addr`, or `None` if it has none (IOMMU off or absent).
    pub fn iommu_group(&self, addr: PciAddress) -> Result<Option<u32>> {
        group_of(&self.existing_device_dir(addr)?)
    }

    /// The members of IOMMU group `group`, sorted by address, each with the driver it is bound to.
    pub fn group_devices(&self, group: u32) -> Result<Vec<(PciAddress, Option<String>)>> {
        let dir = self.group_dir(group).join("devices");
        read_addresses(&dir)?
            .into_iter()
            .map(|addr| Ok((addr, link_name(&dir.join(addr.to_string()).join("driver"))?)))
            .collect()
    }

    /// The members of IOMMU group `group` that keep VFIO from using it, as
    /// `"0000:00:1f.2 (ahci)"`: every member bound to a driver other than
    /// vfio-pci or pci-stub. An empty list means the group is viable.
    ///
    /// ```no_run
    /// use barmap::{pci::Sysfs, Error, PciAddress};
    ///
    /// let sysfs = Sysfs::default();
    /// let addr: PciAddress = "0000:00:03.0".parse()?;
    /// let group = sysfs.iommu_group(addr)?.ok_or(Error::NoIommuGroup { addr })?;
    /// let blockers = sysfs.group_blockers(group)?;
    /// if !blockers.is_empty() {
    ///     return Err(Error::GroupNotViable { addr, group, blockers });
    /// }
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn group_blockers(&self, group: u32) -> Result<Vec<String>> {
        Ok(self
            .group_devices(group)?
            .into_iter()
            .filter_map(|(addr, driver)| match driver {
                Some(d) if d != VFIO_PCI_DRIVER && d != PCI_STUB_DRIVER => Some(format!("{addr} ({d})")),
                _ => None,
            })
            .collect())
    }

    /// Binds the device at `addr` to vfio-pci and returns its IOMMU group.
    ///
    /// Records the driver the device had (so that [`Sysfs::unbind`], in this
    /// process or a later one, can give it back), unbinds it from that driver,
    /// sets `driver_override` to `vfio-pci`, asks the kernel to probe it
    /// (`bus/pci/drivers_probe`) and checks that vfio-pci took it. Does nothing
    /// if the device is already bound to vfio-pci.
    ///
    /// Fails, before changing anything, with [`Error::DeviceNotFound`],
    /// [`Error::NoIommuGroup`], or [`Error::BindFailed`] if the vfio-pci driver
    /// is not loaded; with [`Error::Sysfs`] naming the file if a write is
    /// refused; with [`Error::BindFailed`] if vfio-pci did not take the device.
    ///
    /// ```no_run
    /// use barmap::{pci::Sysfs, PciAddress};
    ///
    /// let addr: PciAddress = "0000:00:03.0".parse()?;
    /// let group = Sysfs::default().bind_vfio(addr)?;
    /// println!("{addr} is bound to vfio-pci; open /dev/vfio/{group}");
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn bind_vfio(&self, addr: PciAddress) -> Result<u32> {
        let dir = self.existing_device_dir(addr)?;
        let group = group_of(&dir)?.ok_or(Error::NoIommuGroup { addr })?;
        let current = link_name(&dir.join("driver"))?;
        if current.as_deref() == Some(VFIO_PCI_DRIVER) {
            log::debug!("{addr} is already bound to {VFIO_PCI_DRIVER}");
            return Ok(group);
        }
        let vfio_dir = self.driver_dir(VFIO_PCI_DRIVER);
        match fs::metadata(&vfio_dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::BindFailed {
                    addr,
                    driver: VFIO_PCI_DRIVER.to_string(),
                    reason: format!(
                        "the vfio-pci driver is not loaded ({} is missing): run `modprobe vfio-pci`",
                        vfio_dir.display()
                    ),
                })
            }
            Err(source) => {
                return Err(Error::Sysfs {
                    path: vfio_dir,
                    source,
                })
            }
        }
        self.record_previous_driver(addr, current.as_deref())?;
        let name = addr.to_string();
        if current.is_some() {
            self.write(&dir.join("driver").join("unbind"), &name)?;
        }
        self.write(&dir.join("driver_override"), VFIO_PCI_DRIVER)?;
        self.write(&self.drivers_probe(), &name)?;
        match link_name(&dir.join("driver"))? {
            Some(d) if d == VFIO_PCI_DRIVER => Ok(group),
            now => Err(Error::BindFailed {
                addr,
                driver: VFIO_PCI_DRIVER.to_string(),
                reason: format!(
                    "after probing, the device has {}; see the kernel log (dmesg); \
                     unbinding it gives it back to its previous driver",
                    now.map_or("no driver".to_string(), |d| format!("driver {d}"))
                ),
            }),
        }
    }

    /// Gives the device at `addr` back to the host and returns the driver it ends up with.
    ///
    /// Unbinds it from vfio-pci, clears `driver_override`, then binds it to the
    /// driver recorded by [`Sysfs::bind_vfio`] (`bus/pci/drivers/DRV/bind`), or,
    /// with no record, lets the kernel probe its default driver (which may be
    /// none). A device bound to another driver than vfio-pci is left as it is.
    ///
    /// ```no_run
    /// use barmap::{pci::Sysfs, PciAddress};
    ///
    /// let addr: PciAddress = "0000:00:03.0".parse()?;
    /// let driver = Sysfs::default().unbind(addr)?;
    /// println!("{addr} now has driver {}", driver.as_deref().unwrap_or("none"));
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn unbind(&self, addr: PciAddress) -> Result<Option<String>> {
        let dir = self.existing_device_dir(addr)?;
        let name = addr.to_string();
        match link_name(&dir.join("driver"))? {
            Some(d) if d != VFIO_PCI_DRIVER => {
                log::debug!("{addr} is bound to {d}, not {VFIO_PCI_DRIVER}: nothing to give back");
                return Ok(Some(d));
            }
            Some(_) => self.write(&dir.join("driver").join("unbind"), &name)?,
            None => {}
        }
        self.write(&dir.join("driver_override"), CLEAR_OVERRIDE)?;
        let previous = self.previous_driver(addr)?;
        match &previous {
            Some(d) => self.write(&self.driver_dir(d).join("bind"), &name)?,
            None => self.write(&self.drivers_probe(), &name)?,
        }
        let now = link_name(&dir.join("driver"))?;
        if let Some(d) = previous.filter(|d| now.as_deref() != Some(d.as_str())) {
            return Err(Error::BindFailed {
                addr,
                driver: d,
                reason: format!(
                    "the kernel accepted the bind but the device has {}",
                    now.map_or("no driver".to_string(), |n| format!("driver {n}"))
                ),
            });
        }
        self.forget_previous_driver(addr)?;
        Ok(now)
    }

    /// Replaces how attributes are written, so a test can play the kernel's part.
    #[cfg(test)]
    fn with_writer(mut self, writer: AttrWriter) -> Self {
        self.writer = writer;
        self
    }

    /// The sysfs directory of the device at `addr` (whether or not it exists).
    pub fn device_path(&self, addr: PciAddress) -> PathBuf {
        self.devices_dir().join(addr.to_string())
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

    fn record_path(&self, addr: PciAddress) -> PathBuf {
        self.state_dir.join(format!("{addr}{PREV_DRIVER_SUFFIX}"))
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

    /// Records `driver` as the one to give the device back to; with `None`, removes any old record.
    fn record_previous_driver(&self, addr: PciAddress, driver: Option<&str>) -> Result<()> {
        let path = self.record_path(addr);
        let state_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::BindState { addr, path, source }
        };
        match driver {
            Some(d) => {
                log::debug!(
                    "recording {d} as the previous driver of {addr} in {}",
                    path.display()
                );
                fs::create_dir_all(&self.state_dir).map_err(state_err(&self.state_dir))?;
                fs::write(&path, format!("{d}\n")).map_err(state_err(&path))
            }
            None => self.forget_previous_driver(addr),
        }
    }

    fn previous_driver(&self, addr: PciAddress) -> Result<Option<String>> {
        let path = self.record_path(addr);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::BindState { addr, path, source }),
        };
        let driver = text.trim();
        if driver.is_empty() {
            return Ok(None);
        }
        if driver == "."
            || driver == ".."
            || driver.contains(['/', '\0'])
            || driver.contains(char::is_whitespace)
        {
            return Err(Error::BindState {
                addr,
                path,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{driver:?} is not a driver name"),
                ),
            });
        }
        Ok(Some(driver.to_string()))
    }

    fn forget_previous_driver(&self, addr: PciAddress) -> Result<()> {
        let path = self.record_path(addr);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::BindState { addr, path, source }),
        }
    }
}

/// Writes `value` to a sysfs attribute in one `write(2)`.
///
/// The file must exist (sysfs attributes cannot be created); `O_TRUNC` is
/// ignored by sysfs and lets a test tree of plain files show the last write.
fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn read_attr(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim_end().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Sysfs {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses a hex attribute such as `0x8086` that may be absent.
fn parse_optional_hex<T: TryFrom<u32>>(path: &Path, expected: &'static str) -> Result<Option<T>> {
    let Some(text) = read_attr(path)? else {
        return Ok(None);
    };
    let bad = || Error::SysfsParse {
        path: path.to_path_buf(),
        content: text.clone(),
        expected,
    };
    let digits = text.strip_prefix("0x").unwrap_or(&text);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let value = u32::from_str_radix(digits, 16).map_err(|_| bad())?;
    T::try_from(value).map(Some).map_err(|_| bad())
}

/// Parses a hex attribute that must be present.
fn parse_hex<T: TryFrom<u32>>(path: &Path, expected: &'static str) -> Result<T> {
    parse_optional_hex(path, expected)?.ok_or_else(|| Error::Sysfs {
        path: path.to_path_buf(),
        source: io::ErrorKind::NotFound.into(),
    })
}

/// The basename of the symlink at `path`, or `None` if there is no such link.
fn link_name(path: &Path) -> Result<Option<String>> {
    let target = match fs::read_link(path) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Sysfs {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match target.file_name().and_then(|n| n.to_str()) {
        Some(name) => Ok(Some(name.to_string())),
        None => Err(Error::SysfsParse {
            path: path.to_path_buf(),
            content: target.display().to_string(),
            expected: "a link to a named sysfs directory",
        }),
    }
}

/// The IOMMU group of the device whose sysfs directory is `dir`.
fn group_of(dir: &Path) -> Result<Option<u32>> {
    let path = dir.join("iommu_group");
    let Some(name) = link_name(&path)? else {
        return Ok(None);
    };
    name.parse().map(Some).map_err(|_| Error::SysfsParse {
        path,
        content: name,
        expected: "an IOMMU group number",
    })
}

/// The PCI addresses named by the entries of `dir`, sorted.
fn read_addresses(dir: &Path) -> Result<Vec<PciAddress>> {
    let sysfs_err = |source| Error::Sysfs {
        path: dir.to_path_buf(),
        source,
    };
    let mut addrs = Vec::new();
    for entry in fs::read_dir(dir).map_err(sysfs_err)? {
        let name = entry.map_err(sysfs_err)?.file_name();
        let addr = name
            .to_str()
            .and_then(|n| n.parse::<PciAddress>().ok())
            .ok_or_else(|| Error::SysfsParse {
                path: dir.join(&name),
                content: name.to_string_lossy().into_owned(),
                expected: "a device named by its PCI address",
            })?;
        addrs.push(addr);
    }
    addrs.sort();
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    /// A sysfs tree laid out like the kernel's: device directories under
    /// `devices/pci0000:00/`, linked from `bus/pci/devices/` and from their IOMMU
    /// group, with `driver` and `iommu_group` as relative symlinks.
    struct FakeSys {
        dir: TempDir,
    }

    impl FakeSys {
        fn new() -> Self {
            let fake = FakeSys {
                dir: TempDir::new().unwrap(),
            };
            for sub in [
                "bus/pci/devices",
                "bus/pci/drivers",
                "kernel/iommu_groups",
                "devices/pci0000:00",
            ] {
                fs::create_dir_all(fake.root().join(sub)).unwrap();
            }
            fs::write(fake.root().join("bus/pci/drivers_probe"), "").unwrap();
            fake
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("sys")
        }

        fn state_dir(&self) -> PathBuf {
            self.dir.path().join("state")
        }

        /// A handle whose writes also do what the kernel would do (see [`fake_kernel_write`]).
        fn sysfs(&self) -> Sysfs {
            Sysfs::with_root(self.root())
                .with_state_dir(self.state_dir())
                .with_writer(fake_kernel_write)
        }

        /// A handle on a kernel that accepts writes but never binds anything.
        fn inert_sysfs(&self) -> Sysfs {
            Sysfs::with_root(self.root()).with_state_dir(self.state_dir())
        }

        /// A handle that fails the test on any write.
        fn no_write_sysfs(&self) -> Sysfs {
            self.inert_sysfs()
                .with_writer(|path, value| panic!("unexpected write of {value:?} to {}", path.display()))
        }

        fn add_driver(&self, name: &str) {
            let dir = self.root().join("bus/pci/drivers").join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("bind"), "").unwrap();
            fs::write(dir.join("unbind"), "").unwrap();
        }

        fn device_dir(&self, addr: &str) -> PathBuf {
            self.root().join("devices/pci0000:00").join(addr)
        }

        /// Adds a device with the given ids (as sysfs prints them), unbound and without group.
        fn add_device(&self, addr: &str, vendor: &str, device: &str, class: &str) -> PathBuf {
            let dir = self.device_dir(addr);
            fs::create_dir_all(&dir).unwrap();
            for (attr, value) in [
                ("vendor", vendor),
                ("device", device),
                ("class", class),
                ("subsystem_vendor", "0x1af4"),
                ("subsystem_device", "0x1100"),
                ("driver_override", "(null)"),
            ] {
                fs::write(dir.join(attr), format!("{value}\n")).unwrap();
            }
            let link = format!("../../../devices/pci0000:00/{addr}");
            symlink(link, self.root().join("bus/pci/devices").join(addr)).unwrap();
            dir
        }

        fn add_plain_device(&self, addr: &str) -> PathBuf {
            self.add_device(addr, "0x1234", "0x11e8", "0x00ff00")
        }

        fn set_driver(&self, addr: &str, driver: &str) {
            link_driver(&self.root(), addr, driver).unwrap();
        }

        fn set_group(&self, addr: &str, group: u32) {
            let members = self.root().join(format!("kernel/iommu_groups/{group}/devices"));
            fs::create_dir_all(&members).unwrap();
            symlink(
                format!("../../../../devices/pci0000:00/{addr}"),
                members.join(addr),
            )
            .unwrap();
            symlink(
                format!("../../../kernel/iommu_groups/{group}"),
                self.device_dir(addr).join("iommu_group"),
            )
            .unwrap();
        }

        /// Names the driver the fake kernel's `drivers_probe` picks when no override is set.
        fn set_default_driver(&self, addr: &str, driver: &str) {
            fs::write(self.device_dir(addr).join("default_driver"), driver).unwrap();
        }

        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.root().join(rel)).unwrap()
        }

        fn record(&self, addr: &str) -> Option<String> {
            fs::read_to_string(self.state_dir().join(format!("{addr}.prev-driver"))).ok()
        }
    }

    fn link_driver(root: &Path, addr: &str, driver: &str) -> io::Result<()> {
        symlink(
            format!("../../../bus/pci/drivers/{driver}"),
            root.join("devices/pci0000:00").join(addr).join("driver"),
        )
    }

    /// Writes like sysfs, then does what the kernel does on that write:
    /// `driver/unbind` drops the `driver` link, `drivers/X/bind` makes it, and
    /// `drivers_probe` binds the device to its `driver_override` (or to the
    /// test's `default_driver`) if that driver is loaded and the device is free.
    fn fake_kernel_write(path: &Path, value: &str) -> io::Result<()> {
        write_attr(path, value)?;
        let real = path.canonicalize()?;
        let addr = value.trim();
        let nth_parent = |n| real.ancestors().nth(n).unwrap().to_path_buf();
        match real.file_name().and_then(|n| n.to_str()) {
            Some("unbind") => {
                fs::remove_file(nth_parent(5).join("devices/pci0000:00").join(addr).join("driver"))
            }
            Some("bind") => {
                let driver = real.parent().unwrap().file_name().unwrap().to_str().unwrap();
                link_driver(&nth_parent(5), addr, driver)
            }
            Some("drivers_probe") => {
                let root = nth_parent(3);
                let dev = root.join("devices/pci0000:00").join(addr);
                if dev.join("driver").symlink_metadata().is_ok() {
                    return Ok(());
                }
                let wanted = fs::read_to_string(dev.join("driver_override"))?;
                let wanted = match wanted.trim() {
                    "" | "(null)" => fs::read_to_string(dev.join("default_driver")).unwrap_or_default(),
                    name => name.to_string(),
                };
                if !wanted.is_empty() && root.join("bus/pci/drivers").join(&wanted).is_dir() {
                    link_driver(&root, addr, &wanted)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    const A: &str = "0000:00:03.0";

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn reads_ids_class_driver_and_group() {
        let fake = FakeSys::new();
        fake.add_device(A, "0x8086", "0x10d3", "0x020000");
        fake.add_driver("e1000e");
        fake.set_driver(A, "e1000e");
        fake.set_group(A, 5);
        let info = fake.sysfs().device(addr(A)).unwrap();
        assert_eq!(
            info,
            PciDeviceInfo {
                address: addr(A),
                vendor: 0x8086,
                device: 0x10d3,
                class: 0x02_0000,
                subsystem_vendor: Some(0x1af4),
                subsystem_device: Some(0x1100),
                driver: Some("e1000e".to_string()),
                iommu_group: Some(5),
            }
        );
        assert!(!info.is_bound_to_vfio());
        assert_eq!(fake.sysfs().driver(addr(A)).unwrap().as_deref(), Some("e1000e"));
        assert_eq!(fake.sysfs().iommu_group(addr(A)).unwrap(), Some(5));
    }

    #[test]
    fn subsystem_ids_are_optional() {
        let fake = FakeSys::new();
        let dir = fake.add_device(A, "0xffff", "0x0000", "0xffffff");
        fs::remove_file(dir.join("subsystem_vendor")).unwrap();
        fs::remove_file(dir.join("subsystem_device")).unwrap();
        let info = fake.sysfs().device(addr(A)).unwrap();
        assert_eq!((info.vendor, info.device, info.class), (0xffff, 0, 0xff_ffff));
        assert_eq!((info.subsystem_vendor, info.subsystem_device), (None, None));
        assert_eq!((info.driver, info.iommu_group), (None, None));
    }

    #[test]
    fn missing_device_is_named() {
        let fake = FakeSys::new();
        for err in [
            fake.sysfs().device(addr(A)).unwrap_err(),
            fake.sysfs().bind_vfio(addr(A)).unwrap_err(),
            fake.sysfs().unbind(addr(A)).unwrap_err(),
        ] {
            assert!(
                matches!(&err, Error::DeviceNotFound { addr: a, .. } if *a == addr(A)),
                "{err:?}"
            );
            assert!(err.to_string().contains(A), "{err}");
        }
    }

    #[test]
    fn unparsable_attributes_are_errors_naming_the_file() {
        for (attr, value) in [
            ("vendor", "0xzzzz"),
            ("vendor", "0x10000"),
            ("device", ""),
            ("device", "0x+123"),
            ("class", "0x1000000"),
            ("subsystem_device", "nonsense"),
        ] {
            let fake = FakeSys::new();
            let dir = fake.add_plain_device(A);
            fs::write(dir.join(attr), format!("{value}\n")).unwrap();
            let err = fake.sysfs().device(addr(A)).unwrap_err();
            match &err {
                Error::SysfsParse { path, .. } => assert!(path.ends_with(attr), "{err}"),
                _ => panic!("{attr}={value:?} gave {err:?}"),
            }
            let listed = fake.sysfs().devices().unwrap_err();
            assert!(listed.to_string().contains(A), "{listed}");
        }
    }

    #[test]
    fn missing_attribute_is_a_sysfs_error() {
        let fake = FakeSys::new();
        fs::remove_file(fake.add_plain_device(A).join("class")).unwrap();
        let err = fake.sysfs().device(addr(A)).unwrap_err();
        assert!(
            matches!(&err, Error::Sysfs { path, .. } if path.ends_with("class")),
            "{err:?}"
        );
    }

    #[test]
    fn unparsable_group_link_is_an_error() {
        let fake = FakeSys::new();
        let dir = fake.add_plain_device(A);
        symlink("../../../kernel/iommu_groups/x5", dir.join("iommu_group")).unwrap();
        let err = fake.sysfs().iommu_group(addr(A)).unwrap_err();
        assert!(
            matches!(&err, Error::SysfsParse { content, .. } if content == "x5"),
            "{err:?}"
        );
    }

    #[test]
    fn devices_are_listed_sorted() {
        let fake = FakeSys::new();
        for a in ["0000:01:00.0", "0000:00:1f.2", "0000:00:03.0", "0001:00:00.0"] {
            fake.add_plain_device(a);
        }
        let listed: Vec<String> = fake
            .sysfs()
            .devices()
            .unwrap()
            .iter()
            .map(|d| d.address.to_string())
            .collect();
        assert_eq!(
            listed,
            ["0000:00:03.0", "0000:00:1f.2", "0000:01:00.0", "0001:00:00.0"]
        );
    }

    #[test]
    fn stray_entry_in_devices_is_an_error() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fs::create_dir(fake.root().join("bus/pci/devices/not-a-device")).unwrap();
        let err = fake.sysfs().devices().unwrap_err();
        assert!(
            matches!(&err, Error::SysfsParse { content, .. } if content == "not-a-device"),
            "{err:?}"
        );
    }

    #[test]
    fn device_without_group_is_refused_before_any_write() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.add_driver(VFIO_PCI_DRIVER);
        let err = fake.no_write_sysfs().bind_vfio(addr(A)).unwrap_err();
        assert!(
            matches!(err, Error::NoIommuGroup { addr: a } if a == addr(A)),
            "{err:?}"
        );
    }

    #[test]
    fn bind_when_unbound() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 3);
        fake.add_driver(VFIO_PCI_DRIVER);
        assert_eq!(fake.sysfs().bind_vfio(addr(A)).unwrap(), 3);
        let dev = format!("bus/pci/devices/{A}");
        assert_eq!(fake.read(&format!("{dev}/driver_override")), "vfio-pci");
        assert_eq!(fake.read("bus/pci/drivers_probe"), A);
        assert!(fake.sysfs().device(addr(A)).unwrap().is_bound_to_vfio());
        assert_eq!(fake.record(A), None);
    }

    #[test]
    fn bind_when_bound_to_another_driver_records_and_unbinds_it() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 3);
        fake.add_driver(VFIO_PCI_DRIVER);
        fake.add_driver("e1000e");
        fake.set_driver(A, "e1000e");
        assert_eq!(fake.sysfs().bind_vfio(addr(A)).unwrap(), 3);
        assert_eq!(fake.read("bus/pci/drivers/e1000e/unbind"), A);
        assert_eq!(
            fake.read(&format!("bus/pci/devices/{A}/driver_override")),
            "vfio-pci"
        );
        assert_eq!(
            fake.sysfs().driver(addr(A)).unwrap().as_deref(),
            Some(VFIO_PCI_DRIVER)
        );
        assert_eq!(fake.record(A).as_deref(), Some("e1000e\n"));
    }

    #[test]
    fn bind_when_already_vfio_writes_nothing_and_keeps_the_record() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 9);
        fake.add_driver(VFIO_PCI_DRIVER);
        fake.add_driver("e1000e");
        fake.set_driver(A, "e1000e");
        fake.sysfs().bind_vfio(addr(A)).unwrap();
        assert_eq!(fake.no_write_sysfs().bind_vfio(addr(A)).unwrap(), 9);
        assert_eq!(fake.record(A).as_deref(), Some("e1000e\n"));
    }

    #[test]
    fn bind_without_vfio_driver_says_so_before_any_write() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 3);
        fake.add_driver("e1000e");
        fake.set_driver(A, "e1000e");
        let err = fake.no_write_sysfs().bind_vfio(addr(A)).unwrap_err();
        assert!(matches!(err, Error::BindFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
        assert_eq!(fake.record(A), None);
    }

    #[test]
    fn bind_that_does_not_take_is_an_error() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 3);
        fake.add_driver(VFIO_PCI_DRIVER);
        let err = fake.inert_sysfs().bind_vfio(addr(A)).unwrap_err();
        assert!(matches!(err, Error::BindFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("no driver"), "{err}");
        assert_eq!(fake.read("bus/pci/drivers_probe"), A);
    }

    #[test]
    fn refused_write_names_the_file() {
        let fake = FakeSys::new();
        let dir = fake.add_plain_device(A);
        fake.set_group(A, 3);
        fake.add_driver(VFIO_PCI_DRIVER);
        fs::remove_file(dir.join("driver_override")).unwrap();
        let err = fake.sysfs().bind_vfio(addr(A)).unwrap_err();
        assert!(
            matches!(&err, Error::Sysfs { path, .. } if path.ends_with("driver_override")),
            "{err:?}"
        );
    }

    #[test]
    fn unbind_restores_the_recorded_driver_in_a_later_process() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 3);
        fake.add_driver(VFIO_PCI_DRIVER);
        fake.add_driver("e1000e");
        fake.set_driver(A, "e1000e");
        fake.sysfs().bind_vfio(addr(A)).unwrap();
        // A new handle, as a later `barpoke unbind` would make.
        let driver = fake.sysfs().unbind(addr(A)).unwrap();
        assert_eq!(driver.as_deref(), Some("e1000e"));
        assert_eq!(fake.read("bus/pci/drivers/vfio-pci/unbind"), A);
        assert_eq!(fake.read(&format!("bus/pci/devices/{A}/driver_override")), "\n");
        assert_eq!(fake.read("bus/pci/drivers/e1000e/bind"), A);
        assert_eq!(fake.sysfs().driver(addr(A)).unwrap().as_deref(), Some("e1000e"));
        assert_eq!(fake.record(A), None);
    }

    #[test]
    fn unbind_without_record_probes_the_default_driver() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.add_driver(VFIO_PCI_DRIVER);
        fake.add_driver("virtio-pci");
        fake.set_driver(A, VFIO_PCI_DRIVER);
        fake.set_default_driver(A, "virtio-pci");
        assert_eq!(
            fake.sysfs().unbind(addr(A)).unwrap().as_deref(),
            Some("virtio-pci")
        );
        assert_eq!(fake.read("bus/pci/drivers/vfio-pci/unbind"), A);
        assert_eq!(fake.read("bus/pci/drivers_probe"), A);
    }

    #[test]
    fn unbind_of_a_device_without_default_driver_leaves_it_unbound() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 3);
        fake.add_driver(VFIO_PCI_DRIVER);
        fake.sysfs().bind_vfio(addr(A)).unwrap();
        assert_eq!(fake.sysfs().unbind(addr(A)).unwrap(), None);
        assert_eq!(fake.read("bus/pci/drivers_probe"), A);
        assert_eq!(fake.sysfs().driver(addr(A)).unwrap(), None);
    }

    #[test]
    fn unbind_leaves_a_device_of_another_driver_alone() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.add_driver("ahci");
        fake.set_driver(A, "ahci");
        assert_eq!(
            fake.no_write_sysfs().unbind(addr(A)).unwrap().as_deref(),
            Some("ahci")
        );
    }

    #[test]
    fn failed_restore_keeps_the_record() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 3);
        fake.add_driver(VFIO_PCI_DRIVER);
        fake.add_driver("e1000e");
        fake.set_driver(A, "e1000e");
        fake.sysfs().bind_vfio(addr(A)).unwrap();
        fs::remove_dir_all(fake.root().join("bus/pci/drivers/e1000e")).unwrap();
        let err = fake.sysfs().unbind(addr(A)).unwrap_err();
        assert!(
            matches!(&err, Error::Sysfs { path, .. } if path.ends_with("drivers/e1000e/bind")),
            "{err:?}"
        );
        assert_eq!(fake.record(A).as_deref(), Some("e1000e\n"));
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.add_driver(VFIO_PCI_DRIVER);
        fake.set_driver(A, VFIO_PCI_DRIVER);
        fs::create_dir_all(fake.state_dir()).unwrap();
        fs::write(fake.state_dir().join(format!("{A}.prev-driver")), "../../evil\n").unwrap();
        let err = fake.sysfs().unbind(addr(A)).unwrap_err();
        assert!(matches!(err, Error::BindState { .. }), "{err:?}");
        let source = std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(source.contains("not a driver name"), "{err}: {source}");
    }

    #[test]
    fn group_members_and_blockers() {
        let fake = FakeSys::new();
        let members = [
            ("0000:00:1f.2", Some("ahci")),
            ("0000:00:03.0", Some(VFIO_PCI_DRIVER)),
            ("0000:00:1f.0", None),
            ("0000:00:1f.3", Some("pci-stub")),
            ("0000:00:1f.4", Some("i801_smbus")),
        ];
        for (a, driver) in members {
            fake.add_plain_device(a);
            fake.set_group(a, 7);
            if let Some(d) = driver {
                fake.add_driver(d);
                fake.set_driver(a, d);
            }
        }
        let sysfs = fake.sysfs();
        let listed = sysfs.group_devices(7).unwrap();
        let expected: Vec<(PciAddress, Option<String>)> = [
            ("0000:00:03.0", Some(VFIO_PCI_DRIVER)),
            ("0000:00:1f.0", None),
            ("0000:00:1f.2", Some("ahci")),
            ("0000:00:1f.3", Some("pci-stub")),
            ("0000:00:1f.4", Some("i801_smbus")),
        ]
        .into_iter()
        .map(|(a, d)| (addr(a), d.map(str::to_string)))
        .collect();
        assert_eq!(listed, expected);
        assert_eq!(
            sysfs.group_blockers(7).unwrap(),
            ["0000:00:1f.2 (ahci)", "0000:00:1f.4 (i801_smbus)"]
        );
    }

    #[test]
    fn viable_group_has_no_blockers() {
        let fake = FakeSys::new();
        fake.add_plain_device(A);
        fake.set_group(A, 2);
        assert_eq!(fake.sysfs().group_blockers(2).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn missing_group_is_a_sysfs_error() {
        let fake = FakeSys::new();
        let err = fake.sysfs().group_devices(42).unwrap_err();
        assert!(
            matches!(&err, Error::Sysfs { path, .. } if path.ends_with("iommu_groups/42/devices")),
            "{err:?}"
        );
    }

    #[test]
    fn reads_the_real_sysfs() {
        let sysfs = Sysfs::default();
        let devices = sysfs.devices().expect("reading /sys/bus/pci/devices");
        let count = fs::read_dir("/sys/bus/pci/devices").unwrap().count();
        assert_eq!(devices.len(), count);
        for dev in &devices {
            assert!(dev.class <= 0xff_ffff);
            assert_eq!(sysfs.device(dev.address).unwrap(), *dev);
        }
    }
}
