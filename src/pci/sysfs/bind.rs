//! Binding a device to vfio-pci, and giving it back to the host.
//!
//! Both are stateless: sysfs holds all there is to know. A caller that wants
//! to give a device back to the driver it had before (barpoke does, across
//! processes) notes [`VfioBind::current_driver`] before binding, keeps it
//! where it likes, and passes it to [`Sysfs::unbind`].

use std::fs;
use std::io;
use std::path::PathBuf;

use super::attr::{group_of, link_name};
use super::{Sysfs, VFIO_PCI_DRIVER};
use crate::error::{Error, Result};
use crate::pci::PciAddress;

/// What `driver_override` holds to mean "no override" once written (the kernel accepts an empty line).
const CLEAR_OVERRIDE: &str = "\n";

/// A bind of one device to vfio-pci, checked but not done yet.
///
/// [`Sysfs::prepare_vfio_bind`] makes every check that needs no write;
/// [`VfioBind::bind`] writes. In between, a caller can note the driver the
/// device has now, to give the device back to it later.
///
/// ```no_run
/// use barmap::{pci::Sysfs, PciAddress};
///
/// let addr: PciAddress = "0000:00:03.0".parse()?;
/// let sysfs = Sysfs::default();
/// let bind = sysfs.prepare_vfio_bind(addr)?;
/// let previous = bind.current_driver().map(str::to_string);
/// let group = bind.bind()?;
/// println!("{addr} (was {previous:?}) is bound to vfio-pci; open /dev/vfio/{group}");
/// # Ok::<(), barmap::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "nothing is bound until `bind` is called"]
pub struct VfioBind<'s> {
    sysfs: &'s Sysfs,
    addr: PciAddress,
    dir: PathBuf,
    group: u32,
    current: Option<String>,
}

impl VfioBind<'_> {
    /// The device to bind.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// The device's IOMMU group: `/dev/vfio/GROUP` once it is bound.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// The driver the device is bound to now, if any: `vfio-pci` when
    /// [`bind`](Self::bind) has nothing to do.
    pub fn current_driver(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Binds the device to vfio-pci and returns its IOMMU group.
    ///
    /// Unbinds it from its current driver, sets `driver_override` to
    /// `vfio-pci`, asks the kernel to probe it (`bus/pci/drivers_probe`) and
    /// checks that vfio-pci took it. Does nothing if the device is already
    /// bound to vfio-pci.
    ///
    /// Fails with [`Error::Sysfs`] naming the file if a write is refused, and
    /// with [`Error::BindFailed`] if vfio-pci did not take the device.
    pub fn bind(self) -> Result<u32> {
        let VfioBind {
            sysfs,
            addr,
            dir,
            group,
            current,
        } = self;
        if current.as_deref() == Some(VFIO_PCI_DRIVER) {
            log::debug!("{addr} is already bound to {VFIO_PCI_DRIVER}");
            return Ok(group);
        }
        let name = addr.to_string();
        if current.is_some() {
            sysfs.write(&dir.join("driver").join("unbind"), &name)?;
        }
        sysfs.write(&dir.join("driver_override"), VFIO_PCI_DRIVER)?;
        sysfs.write(&sysfs.drivers_probe(), &name)?;
        match link_name(&dir.join("driver"))? {
            Some(d) if d == VFIO_PCI_DRIVER => Ok(group),
            now => Err(Error::BindFailed {
                addr,
                driver: VFIO_PCI_DRIVER.to_string(),
                reason: format!(
                    "after probing, the device has {}; see the kernel log (dmesg){}",
                    now.map_or("no driver".to_string(), |d| format!("driver {d}")),
                    current.map_or(String::new(), |d| format!("; it was bound to {d} before"))
                ),
            }),
        }
    }
}

impl Sysfs {
    /// Checks that the device at `addr` can be bound to vfio-pci, and writes nothing.
    ///
    /// Fails with [`Error::DeviceNotFound`], [`Error::NoIommuGroup`], or
    /// [`Error::BindFailed`] if the vfio-pci driver is not loaded (unless the
    /// device is bound to it already).
    pub fn prepare_vfio_bind(&self, addr: PciAddress) -> Result<VfioBind<'_>> {
        let dir = self.existing_device_dir(addr)?;
        let group = group_of(&dir)?.ok_or(Error::NoIommuGroup { addr })?;
        let current = link_name(&dir.join("driver"))?;
        if current.as_deref() != Some(VFIO_PCI_DRIVER) {
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
        }
        Ok(VfioBind {
            sysfs: self,
            addr,
            dir,
            group,
            current,
        })
    }

    /// Binds the device at `addr` to vfio-pci and returns its IOMMU group:
    /// [`Sysfs::prepare_vfio_bind`], then [`VfioBind::bind`], which say how it
    /// can fail. Does nothing if the device is already bound to vfio-pci.
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
        self.prepare_vfio_bind(addr)?.bind()
    }

    /// Gives the device at `addr` back to the host and returns the driver it ends up with.
    ///
    /// Unbinds it from vfio-pci, clears `driver_override`, then binds it to
    /// `driver` (`bus/pci/drivers/DRIVER/bind`), or, with `None`, lets the
    /// kernel probe its default driver (which may be none). A device bound to
    /// another driver than vfio-pci is left as it is, and `driver` unused.
    ///
    /// Fails with [`Error::DeviceNotFound`]; with [`Error::BindFailed`],
    /// before any write, if `driver` cannot name a driver (empty, `.`, `..`, or
    /// holding `/`, NUL or white space), and after the writes if the device did
    /// not end up with `driver`; with [`Error::Sysfs`] naming the file if a
    /// write is refused (e.g. `driver` is not loaded).
    ///
    /// ```no_run
    /// use barmap::{pci::Sysfs, PciAddress};
    ///
    /// let addr: PciAddress = "0000:00:03.0".parse()?;
    /// let driver = Sysfs::default().unbind(addr, Some("e1000e"))?;
    /// println!("{addr} now has driver {}", driver.as_deref().unwrap_or("none"));
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn unbind(&self, addr: PciAddress, driver: Option<&str>) -> Result<Option<String>> {
        let dir = self.existing_device_dir(addr)?;
        if let Some(d) = driver.filter(|d| !is_driver_name(d)) {
            return Err(Error::BindFailed {
                addr,
                driver: d.to_string(),
                reason: format!("{d:?} is not a driver name"),
            });
        }
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
        match driver {
            Some(d) => self.write(&self.driver_dir(d).join("bind"), &name)?,
            None => self.write(&self.drivers_probe(), &name)?,
        }
        let now = link_name(&dir.join("driver"))?;
        match driver {
            Some(d) if now.as_deref() != Some(d) => Err(Error::BindFailed {
                addr,
                driver: d.to_string(),
                reason: format!(
                    "the kernel accepted the bind but the device has {}",
                    now.map_or("no driver".to_string(), |n| format!("driver {n}"))
                ),
            }),
            _ => Ok(now),
        }
    }
}

/// Whether `name` can be a directory under `bus/pci/drivers`.
fn is_driver_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::pci::sysfs::fake::{addr, FakeSys, A};

    /// Device A in group 3, bound to e1000e, with vfio-pci loaded too.
    fn on_e1000e() -> FakeSys {
        FakeSys::with_device(Some(3), &[VFIO_PCI_DRIVER, "e1000e"], Some("e1000e"))
    }

    #[test]
    fn device_without_group_is_refused_before_any_write() {
        let fake = FakeSys::with_device(None, &[VFIO_PCI_DRIVER], None);
        let err = fake.no_write_sysfs().bind_vfio(addr(A)).unwrap_err();
        assert!(
            matches!(err, Error::NoIommuGroup { addr: a } if a == addr(A)),
            "{err:?}"
        );
    }

    #[test]
    fn bind_when_unbound() {
        let fake = FakeSys::with_device(Some(3), &[VFIO_PCI_DRIVER], None);
        assert_eq!(fake.sysfs().bind_vfio(addr(A)).unwrap(), 3);
        let dev = format!("bus/pci/devices/{A}");
        assert_eq!(fake.read(&format!("{dev}/driver_override")), "vfio-pci");
        assert_eq!(fake.read("bus/pci/drivers_probe"), A);
        assert!(fake.sysfs().device(addr(A)).unwrap().is_bound_to_vfio());
    }

    #[test]
    fn bind_when_bound_to_another_driver_names_and_unbinds_it() {
        let fake = on_e1000e();
        let sysfs = fake.sysfs();
        let bind = sysfs.prepare_vfio_bind(addr(A)).unwrap();
        assert_eq!(
            (bind.address(), bind.group(), bind.current_driver()),
            (addr(A), 3, Some("e1000e"))
        );
        assert_eq!(
            fake.read("bus/pci/drivers/e1000e/unbind"),
            "",
            "preparing writes nothing"
        );
        assert_eq!(bind.bind().unwrap(), 3);
        assert_eq!(fake.read("bus/pci/drivers/e1000e/unbind"), A);
        assert_eq!(
            fake.read(&format!("bus/pci/devices/{A}/driver_override")),
            "vfio-pci"
        );
        assert_eq!(
            fake.sysfs().driver(addr(A)).unwrap().as_deref(),
            Some(VFIO_PCI_DRIVER)
        );
    }

    #[test]
    fn bind_when_already_vfio_writes_nothing() {
        let fake = FakeSys::with_device(Some(9), &[VFIO_PCI_DRIVER], Some(VFIO_PCI_DRIVER));
        let sysfs = fake.no_write_sysfs();
        let bind = sysfs.prepare_vfio_bind(addr(A)).unwrap();
        assert_eq!(bind.current_driver(), Some(VFIO_PCI_DRIVER));
        assert_eq!(bind.bind().unwrap(), 9);
        assert_eq!(sysfs.bind_vfio(addr(A)).unwrap(), 9);
    }

    #[test]
    fn bind_without_vfio_driver_says_so_before_any_write() {
        let fake = FakeSys::with_device(Some(3), &["e1000e"], Some("e1000e"));
        let err = fake.no_write_sysfs().bind_vfio(addr(A)).unwrap_err();
        assert!(matches!(err, Error::BindFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
    }

    #[test]
    fn bind_that_does_not_take_is_an_error() {
        let fake = FakeSys::with_device(Some(3), &[VFIO_PCI_DRIVER], None);
        let err = fake.inert_sysfs().bind_vfio(addr(A)).unwrap_err();
        assert!(matches!(err, Error::BindFailed { .. }), "{err:?}");
        assert!(err.to_string().contains("no driver"), "{err}");
        assert_eq!(fake.read("bus/pci/drivers_probe"), A);
    }

    #[test]
    fn refused_write_names_the_file() {
        let fake = FakeSys::with_device(Some(3), &[VFIO_PCI_DRIVER], None);
        fs::remove_file(fake.device_dir(A).join("driver_override")).unwrap();
        let err = fake.sysfs().bind_vfio(addr(A)).unwrap_err();
        assert!(
            matches!(&err, Error::Sysfs { path, .. } if path.ends_with("driver_override")),
            "{err:?}"
        );
    }

    #[test]
    fn unbind_gives_the_device_to_the_named_driver() {
        let fake = on_e1000e();
        fake.sysfs().bind_vfio(addr(A)).unwrap();
        let driver = fake.sysfs().unbind(addr(A), Some("e1000e")).unwrap();
        assert_eq!(driver.as_deref(), Some("e1000e"));
        assert_eq!(fake.read("bus/pci/drivers/vfio-pci/unbind"), A);
        assert_eq!(fake.read(&format!("bus/pci/devices/{A}/driver_override")), "\n");
        assert_eq!(fake.read("bus/pci/drivers/e1000e/bind"), A);
        assert_eq!(fake.sysfs().driver(addr(A)).unwrap().as_deref(), Some("e1000e"));
    }

    #[test]
    fn unbind_without_a_driver_probes_the_default_driver() {
        let fake = FakeSys::with_device(None, &[VFIO_PCI_DRIVER, "virtio-pci"], Some(VFIO_PCI_DRIVER));
        fake.set_default_driver(A, "virtio-pci");
        assert_eq!(
            fake.sysfs().unbind(addr(A), None).unwrap().as_deref(),
            Some("virtio-pci")
        );
        assert_eq!(fake.read("bus/pci/drivers/vfio-pci/unbind"), A);
        assert_eq!(fake.read("bus/pci/drivers_probe"), A);
    }

    #[test]
    fn unbind_of_a_device_without_default_driver_leaves_it_unbound() {
        let fake = FakeSys::with_device(Some(3), &[VFIO_PCI_DRIVER], None);
        fake.sysfs().bind_vfio(addr(A)).unwrap();
        assert_eq!(fake.sysfs().unbind(addr(A), None).unwrap(), None);
        assert_eq!(fake.read("bus/pci/drivers_probe"), A);
        assert_eq!(fake.sysfs().driver(addr(A)).unwrap(), None);
    }

    #[test]
    fn unbind_leaves_a_device_of_another_driver_alone() {
        let fake = FakeSys::with_device(None, &["ahci"], Some("ahci"));
        assert_eq!(
            fake.no_write_sysfs()
                .unbind(addr(A), Some("e1000e"))
                .unwrap()
                .as_deref(),
            Some("ahci")
        );
    }

    #[test]
    fn restore_to_a_driver_that_is_gone_names_the_file() {
        let fake = on_e1000e();
        fake.sysfs().bind_vfio(addr(A)).unwrap();
        fs::remove_dir_all(fake.root().join("bus/pci/drivers/e1000e")).unwrap();
        let err = fake.sysfs().unbind(addr(A), Some("e1000e")).unwrap_err();
        assert!(
            matches!(&err, Error::Sysfs { path, .. } if path.ends_with("drivers/e1000e/bind")),
            "{err:?}"
        );
    }

    #[test]
    fn restore_that_does_not_take_is_an_error() {
        let fake = FakeSys::with_device(Some(3), &[VFIO_PCI_DRIVER, "e1000e"], Some(VFIO_PCI_DRIVER));
        let err = fake.inert_sysfs().unbind(addr(A), Some("e1000e")).unwrap_err();
        assert!(
            matches!(&err, Error::BindFailed { driver, .. } if driver == "e1000e"),
            "{err:?}"
        );
        assert!(err.to_string().contains("has driver vfio-pci"), "{err}");
    }

    #[test]
    fn bad_driver_names_are_refused_before_any_write() {
        let fake = FakeSys::with_device(None, &[VFIO_PCI_DRIVER], Some(VFIO_PCI_DRIVER));
        for name in ["../../evil", "", ".", "..", "e1000e\n", "a b", "nul\0"] {
            let err = fake.no_write_sysfs().unbind(addr(A), Some(name)).unwrap_err();
            assert!(matches!(err, Error::BindFailed { .. }), "{name:?}: {err:?}");
            assert!(err.to_string().contains("not a driver name"), "{err}");
        }
    }
}
