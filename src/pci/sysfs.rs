//! TEMPORARY stand-in: replaced by the sysfs helper's module on merge.
use crate::error::Result;
use crate::pci::PciAddress;
use std::path::PathBuf;
/// Stand-in.
#[derive(Debug, Clone)]
pub struct PciDeviceInfo {
    /// Stand-in.
    pub address: PciAddress,
    /// Stand-in.
    pub driver: Option<String>,
    /// Stand-in.
    pub iommu_group: Option<u32>,
}
/// Stand-in.
#[derive(Debug, Clone, Default)]
pub struct Sysfs;
impl Sysfs {
    /// Stand-in.
    pub fn device(&self, address: PciAddress) -> Result<PciDeviceInfo> {
        let _ = PathBuf::new();
        Ok(PciDeviceInfo {
            address,
            driver: None,
            iommu_group: None,
        })
    }
    /// Stand-in.
    pub fn group_blockers(&self, _group: u32) -> Result<Vec<String>> {
        Ok(vec![])
    }
    /// Stand-in.
    pub fn device_path(&self, address: PciAddress) -> PathBuf {
        PathBuf::from(format!("/sys/bus/pci/devices/{address}"))
    }
}
