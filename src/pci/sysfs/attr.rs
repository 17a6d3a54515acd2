//! Reading and writing single sysfs files: attributes, symlinks, directory listings.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::pci::PciAddress;

/// Writes `value` to a sysfs attribute in one `write(2)`.
///
/// The file must exist (sysfs attributes cannot be created); `O_TRUNC` is
/// ignored by sysfs and lets a test tree of plain files show the last write.
pub(super) fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?
        .write_all(value.as_bytes())
}

pub(super) fn read_attr(path: &Path) -> Result<Option<String>> {
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
pub(super) fn parse_optional_hex<T: TryFrom<u32>>(path: &Path, expected: &'static str) -> Result<Option<T>> {
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
pub(super) fn parse_hex<T: TryFrom<u32>>(path: &Path, expected: &'static str) -> Result<T> {
    parse_optional_hex(path, expected)?.ok_or_else(|| Error::Sysfs {
        path: path.to_path_buf(),
        source: io::ErrorKind::NotFound.into(),
    })
}

/// The basename of the symlink at `path`, or `None` if there is no such link.
pub(super) fn link_name(path: &Path) -> Result<Option<String>> {
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
pub(super) fn group_of(dir: &Path) -> Result<Option<u32>> {
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
pub(super) fn read_addresses(dir: &Path) -> Result<Vec<PciAddress>> {
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
