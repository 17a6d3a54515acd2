//! Naming of VFIO PCI regions (`bar0`..`bar5`, `rom`, `config`, `vga`).

use std::fmt;
use std::str::FromStr;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR5_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_ROM_REGION_INDEX, VFIO_PCI_VGA_REGION_INDEX,
};

/// The index of a VFIO region of a PCI device.
///
/// Displays and parses as `bar0`..`bar5`, `rom`, `config`, `vga`; other indices
/// (device-specific regions) display as `region9` and so on.
///
/// ```
/// use barmap::RegionIndex;
/// assert_eq!("bar1".parse::<RegionIndex>().unwrap(), RegionIndex::bar(1).unwrap());
/// assert_eq!(RegionIndex::CONFIG.to_string(), "config");
/// assert!("bar6".parse::<RegionIndex>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionIndex(u32);

impl RegionIndex {
    /// The expansion ROM region.
    pub const ROM: RegionIndex = RegionIndex(VFIO_PCI_ROM_REGION_INDEX);
    /// The config space region.
    pub const CONFIG: RegionIndex = RegionIndex(VFIO_PCI_CONFIG_REGION_INDEX);
    /// The legacy VGA region.
    pub const VGA: RegionIndex = RegionIndex(VFIO_PCI_VGA_REGION_INDEX);

    /// The region with VFIO index `index` (e.g. a device-specific region
    /// past `vga`).
    pub const fn new(index: u32) -> RegionIndex {
        RegionIndex(index)
    }

    /// The VFIO index of the region, as `VFIO_DEVICE_GET_REGION_INFO` takes it.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The region of BAR `n` (0..=5), or `None` for any other `n`.
    pub fn bar(n: u32) -> Option<RegionIndex> {
        (n <= VFIO_PCI_BAR5_REGION_INDEX - VFIO_PCI_BAR0_REGION_INDEX)
            .then_some(RegionIndex(VFIO_PCI_BAR0_REGION_INDEX + n))
    }

    /// The BAR number if this region is a BAR.
    pub fn bar_number(self) -> Option<u32> {
        (VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX)
            .contains(&self.0)
            .then_some(self.0 - VFIO_PCI_BAR0_REGION_INDEX)
    }
}

impl fmt::Display for RegionIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            r if r.bar_number().is_some() => write!(f, "bar{}", self.bar_number().unwrap_or_default()),
            RegionIndex::ROM => f.write_str("rom"),
            RegionIndex::CONFIG => f.write_str("config"),
            RegionIndex::VGA => f.write_str("vga"),
            RegionIndex(n) => write!(f, "region{n}"),
        }
    }
}

/// Error for a region name that is not `bar0`..`bar5`, `rom`, `config` or `vga`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown region {0:?}: expected bar0..bar5, rom, config or vga")]
pub struct ParseRegionError(pub String);

impl FromStr for RegionIndex {
    type Err = ParseRegionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rom" => Ok(RegionIndex::ROM),
            "config" => Ok(RegionIndex::CONFIG),
            "vga" => Ok(RegionIndex::VGA),
            _ => s
                .strip_prefix("bar")
                .filter(|n| n.len() == 1)
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(RegionIndex::bar)
                .ok_or_else(|| ParseRegionError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "bar0", "bar1", "bar2", "bar3", "bar4", "bar5", "rom", "config", "vga",
        ] {
            assert_eq!(name.parse::<RegionIndex>().unwrap().to_string(), name);
        }
        assert_eq!(RegionIndex(9).to_string(), "region9");
        for bad in ["bar6", "bar", "bar01", "BAR0", "cfg", "", "bar-1"] {
            assert!(bad.parse::<RegionIndex>().is_err(), "{bad}");
        }
    }
}
