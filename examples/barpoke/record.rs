//! barpoke's record of the driver a device had before `barpoke bind`, so that
//! `barpoke unbind`, in a later process, can give the device back to it.
//!
//! One file per device, `/run/barmap/ADDR.prev-driver`, holding the driver's
//! name and a newline. The library keeps no such state: this is the CLI's policy.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use barmap::PciAddress;

const DEFAULT_DIR: &str = "/run/barmap";
const SUFFIX: &str = ".prev-driver";

/// A driver record that could not be written, read or removed.
#[derive(Debug)]
pub struct RecordError {
    addr: PciAddress,
    path: PathBuf,
    cause: io::Error,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "driver record {} for {}: {}",
            self.path.display(),
            self.addr,
            self.cause
        )
    }
}

impl std::error::Error for RecordError {}

/// The directory of driver records.
#[derive(Clone, Debug)]
pub struct DriverRecords {
    dir: PathBuf,
}

impl Default for DriverRecords {
    /// The records in `/run/barmap`.
    fn default() -> Self {
        DriverRecords::in_dir(DEFAULT_DIR)
    }
}

impl DriverRecords {
    /// The records in `dir`, which is created on the first record.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        DriverRecords { dir: dir.into() }
    }

    fn path(&self, addr: PciAddress) -> PathBuf {
        self.dir.join(format!("{addr}{SUFFIX}"))
    }

    fn error(addr: PciAddress, path: &Path) -> impl FnOnce(io::Error) -> RecordError {
        let path = path.to_path_buf();
        move |cause| RecordError { addr, path, cause }
    }

    /// Records `driver` as the one to give the device back to; with `None`, removes any old record.
    pub fn remember(&self, addr: PciAddress, driver: Option<&str>) -> Result<(), RecordError> {
        let Some(driver) = driver else {
            return self.forget(addr);
        };
        let path = self.path(addr);
        log::debug!(
            "recording {driver} as the previous driver of {addr} in {}",
            path.display()
        );
        fs::create_dir_all(&self.dir).map_err(Self::error(addr, &self.dir))?;
        fs::write(&path, format!("{driver}\n")).map_err(Self::error(addr, &path))
    }

    /// The recorded driver of the device, if there is a record.
    ///
    /// A record that does not hold a driver name (`.`, `..`, a `/`, NUL or
    /// white space inside) is an error of kind `InvalidData`.
    pub fn previous_driver(&self, addr: PciAddress) -> Result<Option<String>, RecordError> {
        let path = self.path(addr);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => return Err(Self::error(addr, &path)(cause)),
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
            let cause = io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{driver:?} is not a driver name"),
            );
            return Err(Self::error(addr, &path)(cause));
        }
        Ok(Some(driver.to_string()))
    }

    /// Removes the device's record, if there is one.
    pub fn forget(&self, addr: PciAddress) -> Result<(), RecordError> {
        let path = self.path(addr);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(cause) => Err(Self::error(addr, &path)(cause)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    fn addr() -> PciAddress {
        "0000:00:03.0".parse().unwrap()
    }

    #[test]
    fn a_record_outlives_its_handle_until_forgotten() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("state");
        DriverRecords::in_dir(&dir)
            .remember(addr(), Some("e1000e"))
            .unwrap();
        let path = dir.join("0000:00:03.0.prev-driver");
        assert_eq!(fs::read_to_string(&path).unwrap(), "e1000e\n");
        // A new handle, as a later `barpoke unbind` makes.
        let records = DriverRecords::in_dir(&dir);
        assert_eq!(
            records.previous_driver(addr()).unwrap().as_deref(),
            Some("e1000e")
        );
        records.forget(addr()).unwrap();
        assert!(!path.exists());
        assert_eq!(records.previous_driver(addr()).unwrap(), None);
        records.forget(addr()).unwrap();
    }

    #[test]
    fn remembering_no_driver_removes_the_record() {
        let tmp = TempDir::new().unwrap();
        let records = DriverRecords::in_dir(tmp.path());
        records.remember(addr(), Some("e1000e")).unwrap();
        records.remember(addr(), None).unwrap();
        assert_eq!(records.previous_driver(addr()).unwrap(), None);
        fs::write(tmp.path().join("0000:00:03.0.prev-driver"), "\n").unwrap();
        assert_eq!(records.previous_driver(addr()).unwrap(), None, "an empty record");
    }

    #[test]
    fn corrupt_record_is_an_error_naming_it() {
        let tmp = TempDir::new().unwrap();
        let records = DriverRecords::in_dir(tmp.path());
        for content in ["../../evil\n", ".\n", "a b\n"] {
            fs::write(tmp.path().join("0000:00:03.0.prev-driver"), content).unwrap();
            let err = records.previous_driver(addr()).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("driver record ")
                    && message.contains("0000:00:03.0.prev-driver for 0000:00:03.0: ")
                    && message.ends_with("is not a driver name"),
                "{message}"
            );
        }
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_it() {
        let tmp = TempDir::new().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        let err = DriverRecords::in_dir(&file)
            .remember(addr(), Some("e1000e"))
            .unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
