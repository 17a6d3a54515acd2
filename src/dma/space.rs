//! The DMA view of one device: its mask, bus mastering, and the container's
//! IOVA space and mapping count.

use std::fmt;
use std::sync::Mutex;

use super::iommu::IommuInfo;
use super::{IovaAllocator, IovaError};
use crate::config::regs::{PCI_COMMAND, PCI_COMMAND_MASTER};
use crate::error::{Error, Result};
use crate::{Container, Device};

/// How many address bits a device can drive in its DMA (its DMA mask).
///
/// ```
/// use barmap::dma::DmaMask;
/// assert_eq!(DmaMask::bits(28).limit(), 0x0fff_ffff); // QEMU edu's default
/// assert_eq!(DmaMask::FULL.limit(), u64::MAX);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMask(u32);

impl DmaMask {
    /// All 64 address bits.
    pub const FULL: DmaMask = DmaMask(64);

    /// The low `bits` address bits (clamped to 12..=64: a page at least).
    pub const fn bits(bits: u32) -> DmaMask {
        DmaMask(if bits < 12 {
            12
        } else if bits > 64 {
            64
        } else {
            bits
        })
    }

    /// The number of address bits.
    pub fn width(self) -> u32 {
        self.0
    }

    /// The highest address the device can reach.
    pub fn limit(self) -> u64 {
        u64::MAX >> (64 - self.0)
    }
}

/// The container's DMA state, made when the first [`Dma`] handle is.
#[derive(Default)]
pub(crate) struct ContainerDma {
    state: Mutex<Option<DmaState>>,
}

impl fmt::Debug for ContainerDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerDma").finish_non_exhaustive()
    }
}

pub(super) struct DmaState {
    pub(super) iova: IovaAllocator,
    /// The most mappings the container may hold (from the DMA-available count
    /// when the state was made, plus what barmap held then: none).
    pub(super) limit: Option<u32>,
    /// How many mappings barmap holds in the container.
    pub(super) mappings: u32,
}

impl DmaState {
    /// Counts one more mapping, or says the kernel would refuse it.
    pub(super) fn claim_mapping(&mut self, addr: crate::PciAddress) -> Result<()> {
        if let Some(limit) = self.limit.filter(|l| self.mappings >= *l) {
            return Err(Error::DmaMappingLimit { addr, limit });
        }
        self.mappings += 1;
        Ok(())
    }

    /// Forgets the mapping at `iova` (no longer in the IOMMU, or never put
    /// there): frees its IOVA range and uncounts it.
    pub(super) fn forget_mapping(&mut self, iova: u64) {
        self.iova.free(iova);
        self.mappings -= 1;
    }
}

/// A device's handle for DMA: its mask, and the container its buffers are mapped in.
///
/// Made by [`Device::dma`]. Cloning is cheap; it and every buffer made from
/// it keep the device (and so its container) open.
#[derive(Clone)]
pub struct Dma {
    device: Device,
    mask: DmaMask,
}

impl fmt::Debug for Dma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dma")
            .field("addr", &self.device.address())
            .field("mask", &self.mask)
            .finish()
    }
}

impl Device {
    /// Sets up DMA for the device: turns bus mastering on (vfio-pci leaves it
    /// off, and a device without it cannot reach memory, silently), reads the
    /// container's IOVA ranges and mapping limit if no handle did before, and
    /// returns the handle that allocates and maps buffers below `mask`.
    ///
    /// The IOVA ranges are read once per container: open every device of a
    /// shared container before the first call. A container without an IOMMU
    /// has none (see [`crate::dma`]).
    pub fn dma(&self, mask: DmaMask) -> Result<Dma> {
        self.set_bus_master(true)?;
        let dma = Dma {
            device: self.clone(),
            mask,
        };
        if self.container().backend().physical_memory().is_none() {
            dma.with_state(|_| Ok(()))?;
        }
        Ok(dma)
    }

    /// Turns bus mastering (the command register's bit 2) on or off.
    pub fn set_bus_master(&self, on: bool) -> Result<()> {
        let config = self.config()?;
        let command = config.read16(PCI_COMMAND)?;
        let wanted = if on {
            command | PCI_COMMAND_MASTER
        } else {
            command & !PCI_COMMAND_MASTER
        };
        if wanted != command {
            config.write16(PCI_COMMAND, wanted)?;
        }
        Ok(())
    }

    /// Whether bus mastering is on.
    pub fn bus_master(&self) -> Result<bool> {
        Ok(self.config()?.read16(PCI_COMMAND)? & PCI_COMMAND_MASTER != 0)
    }
}

impl Dma {
    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The device's DMA mask.
    pub fn mask(&self) -> DmaMask {
        self.mask
    }

    /// The container's valid IOVA ranges, as `(first, last)` addresses.
    pub fn iova_ranges(&self) -> Result<Vec<(u64, u64)>> {
        self.with_state(|s| Ok(s.iova.ranges().to_vec()))
    }

    /// The most DMA mappings the container may hold, if the kernel says.
    pub fn mapping_limit(&self) -> Result<Option<u32>> {
        self.with_state(|s| Ok(s.limit))
    }

    /// Removes the IOMMU mapping of `size` bytes at `iova`
    /// (`VFIO_IOMMU_UNMAP_DMA`) and forgets it. If the kernel refuses, the
    /// mapping stays counted and its IOVA range taken: the device may still
    /// reach it.
    pub(super) fn unmap(&self, iova: u64, size: u64) -> Result<()> {
        self.container()
            .backend()
            .unmap_dma(iova, size)
            .map_err(|e| Error::Vfio {
                addr: self.device.address(),
                step: "unmap DMA",
                source: Box::new(e),
            })?;
        self.with_state(|state| {
            state.forget_mapping(iova);
            Ok(())
        })
    }

    pub(super) fn container(&self) -> &Container {
        self.device.container()
    }

    pub(super) fn iova_error(&self, source: IovaError) -> Error {
        Error::Iova {
            addr: self.device.address(),
            source,
        }
    }

    /// Runs `f` on the container's DMA state, made on first use from
    /// `VFIO_IOMMU_GET_INFO`.
    pub(super) fn with_state<R>(&self, f: impl FnOnce(&mut DmaState) -> Result<R>) -> Result<R> {
        let mut guard = self
            .container()
            .dma_state()
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let state = match guard.take() {
            Some(state) => state,
            None => self.read_state()?,
        };
        f(guard.insert(state))
    }

    fn read_state(&self) -> Result<DmaState> {
        let addr = self.device.address();
        if self.container().backend().physical_memory().is_some() {
            return Err(Error::Unsupported {
                addr,
                what: "an IOVA space",
                reason: "without an IOMMU the device uses physical addresses",
            });
        }
        let step = "get IOMMU info";
        let info: IommuInfo = self.container().backend().iommu_info().map_err(|e| Error::Vfio {
            addr,
            step,
            source: Box::new(e),
        })?;
        log::debug!(
            "{addr}: IOMMU page sizes {:#x}, IOVA ranges {:x?}, {:?} more DMA mappings allowed",
            info.pgsizes,
            info.ranges,
            info.dma_avail
        );
        Ok(DmaState {
            iova: IovaAllocator::new(info.ranges.iter().cloned(), info.granule()),
            limit: info.dma_avail,
            mappings: 0,
        })
    }
}
