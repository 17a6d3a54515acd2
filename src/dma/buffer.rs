//! DMA buffers barmap allocates, and caller-owned guest memory mapped for DMA.

use std::fmt;
use std::mem::ManuallyDrop;

use vm_memory::bitmap::BS;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::volatile_memory::{self, VolatileMemory, VolatileSlice};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress, MmapRegion};

use super::Dma;
use crate::error::{Error, Result};

/// IOVA alignment for buffers of this size and more, so the IOMMU can use
/// 2 MiB pages for them.
const HUGE_PAGE: u64 = 2 << 20;

/// Where a mapping stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Mapped in the IOMMU.
    Mapped,
    /// Unmapped: the memory may be freed.
    Unmapped,
    /// The kernel refused to unmap it: the device may still reach the memory,
    /// so it is never freed (leaked) and its IOVAs never reused.
    Stuck,
    /// Reached at its physical address, without an IOMMU, in pages of
    /// `page` bytes: there is no mapping to remove, and nothing revokes the
    /// device's access, so on drop the memory is retired to the device
    /// (freed once the device is closed).
    Physical {
        /// The page size backing it.
        page: u64,
    },
}

impl State {
    /// Where a mapping stands after an unmap with this result.
    fn after_unmap(result: &Result<()>) -> State {
        if result.is_ok() {
            State::Unmapped
        } else {
            State::Stuck
        }
    }
}

/// Page-aligned memory mapped for DMA at an IOVA of its own.
///
/// Made by [`Dma::alloc`]. The memory is an anonymous shared mapping (so a
/// `fork` does not copy-on-write pages the device writes), reached from the
/// CPU through vm-memory's [`VolatileMemory`] (volatile slices, never
/// references). Dropping it unmaps it from the IOMMU, frees its IOVA for
/// reuse and then frees the memory; [`DmaBuffer::unmap`] does the same and
/// returns any error. It keeps its device, and so the container, open.
///
/// ```no_run
/// use barmap::dma::DmaMask;
/// use barmap::vm_memory::{Bytes, VolatileMemory};
/// let edu = barmap::Device::open("0000:00:02.0".parse()?)?;
/// let buf = edu.dma(DmaMask::bits(28))?.alloc(4096)?;
/// let slice = buf.as_volatile_slice();
/// slice.write_obj(0x1234_5678u32, 0).unwrap();
/// let mut back = [0u8; 4];
/// slice.read_slice(&mut back, 0).unwrap();
/// assert_eq!(u32::from_le_bytes(back), 0x1234_5678);
/// # Ok::<(), barmap::Error>(())
/// ```
pub struct DmaBuffer {
    dma: Dma,
    iova: u64,
    memory: ManuallyDrop<MmapRegion>,
    state: State,
}

impl fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("addr", &self.dma.device().address())
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("len", &format_args!("{:#x}", self.memory.size()))
            .field("state", &self.state)
            .finish()
    }
}

impl Dma {
    /// Allocates a buffer of at least `size` bytes (rounded up to the IOMMU
    /// page size) and maps it for DMA at the lowest free IOVA below the
    /// device's mask, aligned to 2 MiB for buffers of 2 MiB or more.
    ///
    /// Fails with [`Error::Iova`] ([`IovaError::TooLarge`](super::IovaError::TooLarge)
    /// if the size exceeds all the space below the mask,
    /// [`IovaError::Exhausted`](super::IovaError::Exhausted) if no free range
    /// fits now), [`Error::DmaMappingLimit`] if the container holds as many
    /// mappings as the kernel allows, and [`Error::Vfio`] if the memory
    /// cannot be had or the kernel refuses the mapping.
    ///
    /// Without an IOMMU, the buffer is locked memory at a physical address
    /// below the mask, contiguous (huge pages beyond 4 KiB), and the errors
    /// are [`Error::PhysicalDma`] and [`Error::MissingCapability`] (see
    /// [`crate::dma`]).
    pub fn alloc(&self, size: usize) -> Result<DmaBuffer> {
        if let Some(memory) = self.container().backend().physical_memory() {
            return self.alloc_physical(size, memory);
        }
        let addr = self.device().address();
        let (iova, len) = self.with_state(|state| {
            let len = state
                .iova
                .rounded_size(size as u64, self.mask().limit())
                .map_err(|e| self.iova_error(e))?;
            let align = if len >= HUGE_PAGE {
                HUGE_PAGE
            } else {
                state.iova.granule()
            };
            let iova = state
                .iova
                .alloc(size as u64, align, self.mask().limit())
                .map_err(|e| self.iova_error(e))?;
            if let Err(e) = state.claim_mapping(addr) {
                state.iova.free(iova);
                return Err(e);
            }
            Ok((iova, len))
        })?;
        let undo = || {
            let _ = self.with_state(|state| {
                state.forget_mapping(iova);
                Ok(())
            });
        };
        let memory = match MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_ANONYMOUS)
            .build()
        {
            Ok(memory) => memory,
            Err(e) => {
                undo();
                return Err(Error::Vfio {
                    addr,
                    step: "allocate DMA memory",
                    source: Box::new(e),
                });
            }
        };
        // SAFETY: the memory is a fresh anonymous mapping of `len` bytes owned by
        // the buffer. No Rust reference to it is ever made (the CPU reaches it
        // through vm-memory's volatile slices only), and it stays mapped until
        // the IOMMU mapping is removed (in `release`, before it is freed).
        let mapped = unsafe { self.container().backend().map_dma(iova, len, memory.as_ptr()) };
        if let Err(e) = mapped {
            undo();
            return Err(Error::Vfio {
                addr,
                step: "map DMA",
                source: Box::new(e),
            });
        }
        log::trace!("{addr}: mapped {len:#x} bytes for DMA at IOVA {iova:#x}");
        Ok(DmaBuffer {
            dma: self.clone(),
            iova,
            memory: ManuallyDrop::new(memory),
            state: State::Mapped,
        })
    }
}

impl DmaBuffer {
    /// A buffer the device reaches at physical address `bus`, without an IOMMU.
    pub(super) fn physical(dma: Dma, bus: u64, page: u64, memory: MmapRegion) -> DmaBuffer {
        DmaBuffer {
            dma,
            iova: bus,
            memory: ManuallyDrop::new(memory),
            state: State::Physical { page },
        }
    }

    /// The I/O virtual address the device uses for the buffer's first byte
    /// (without an IOMMU: its physical address).
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// The buffer's length in bytes (a whole number of IOMMU pages).
    pub fn size(&self) -> usize {
        self.memory.size()
    }

    /// The DMA handle the buffer was allocated from.
    pub fn dma(&self) -> &Dma {
        &self.dma
    }

    /// Unmaps the buffer from the IOMMU and frees it, returning any error
    /// (dropping it does the same and can only log one). If the kernel
    /// refuses, the memory is leaked, not freed, since the device might still
    /// reach it.
    pub fn unmap(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if self.state != State::Mapped {
            return Ok(());
        }
        let result = self.dma.unmap(self.iova, self.memory.size() as u64);
        self.state = State::after_unmap(&result);
        result
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::error!("{e}; leaking its {:#x} bytes of memory", self.memory.size());
        }
        match self.state {
            State::Unmapped => {
                // SAFETY: the IOMMU mapping is gone, so nothing but this
                // buffer reaches the memory through the kernel, and `memory`
                // is dropped only here, once.
                unsafe { ManuallyDrop::drop(&mut self.memory) };
            }
            State::Physical { page } => {
                // SAFETY: `memory` is taken only here, once, in drop, and
                // never used again.
                let memory = unsafe { ManuallyDrop::take(&mut self.memory) };
                self.dma.device().retired_dma().keep(page, memory);
            }
            State::Mapped | State::Stuck => {}
        }
    }
}

impl VolatileMemory for DmaBuffer {
    type B = ();

    fn len(&self) -> usize {
        self.memory.size()
    }

    fn get_slice(
        &self,
        offset: usize,
        count: usize,
    ) -> volatile_memory::Result<VolatileSlice<'_, BS<'_, ()>>> {
        self.memory.get_slice(offset, count)
    }
}

/// A caller's [`GuestMemoryMmap`] mapped for DMA at its guest addresses.
///
/// Made by [`Dma::map_guest_memory`]; it holds a clone of the memory (its
/// regions are shared, so they stay mapped), and dropping it unmaps every
/// region from the IOMMU.
pub struct GuestMapping {
    dma: Dma,
    memory: ManuallyDrop<GuestMemoryMmap>,
    /// `(iova, size)` of each mapped region.
    ranges: Vec<(u64, u64)>,
    state: State,
}

impl fmt::Debug for GuestMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMapping")
            .field("addr", &self.dma.device().address())
            .field("ranges", &self.ranges)
            .field("state", &self.state)
            .finish()
    }
}

impl Dma {
    /// Maps every region of `memory` for DMA at its guest address as IOVA
    /// (what a VMM does with guest RAM for a passed-through device).
    ///
    /// Each region must be page-aligned, below the device's mask, inside the
    /// container's valid IOVA ranges and clear of other mappings; otherwise
    /// [`Error::Iova`] says which ([`IovaError::Misaligned`](super::IovaError::Misaligned),
    /// [`OverLimit`](super::IovaError::OverLimit), [`Outside`](super::IovaError::Outside),
    /// [`Overlap`](super::IovaError::Overlap)) and nothing stays mapped.
    ///
    /// ```no_run
    /// use barmap::dma::DmaMask;
    /// use barmap::vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let edu = barmap::Device::open("0000:00:02.0".parse()?)?;
    /// let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x10_0000)]).unwrap();
    /// let mapping = edu.dma(DmaMask::bits(28))?.map_guest_memory(&ram)?;
    /// // edu can now DMA to and from guest addresses 0x100000..0x200000.
    /// # Ok::<(), barmap::Error>(())
    /// ```
    ///
    /// A device without an IOMMU cannot see guest addresses: that is
    /// [`Error::Unsupported`].
    pub fn map_guest_memory(&self, memory: &GuestMemoryMmap) -> Result<GuestMapping> {
        if self.container().backend().physical_memory().is_some() {
            return Err(Error::Unsupported {
                addr: self.device().address(),
                what: "mapping guest memory for DMA",
                reason: "without an IOMMU the device uses physical addresses, not guest addresses",
            });
        }
        let mut mapping = GuestMapping {
            dma: self.clone(),
            memory: ManuallyDrop::new(memory.clone()),
            ranges: vec![],
            state: State::Mapped,
        };
        let addr = self.device().address();
        for region in memory.iter() {
            let iova = region.start_addr().0;
            let size = region.len();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| Error::Vfio {
                    addr,
                    step: "find guest memory",
                    source: Box::new(e),
                })?;
            self.with_state(|state| {
                state
                    .iova
                    .reserve(iova, size, self.mask().limit())
                    .map_err(|e| self.iova_error(e))?;
                if let Err(e) = state.claim_mapping(addr) {
                    state.iova.free(iova);
                    return Err(e);
                }
                Ok(())
            })?;
            // SAFETY: the region belongs to `memory`, whose clone the mapping
            // holds, so it stays mapped until the IOMMU mapping is removed in
            // `release`; GuestMemoryMmap hands out only volatile access to it.
            let mapped = unsafe { self.container().backend().map_dma(iova, size, host) };
            if let Err(e) = mapped {
                let _ = self.with_state(|state| {
                    state.forget_mapping(iova);
                    Ok(())
                });
                return Err(Error::Vfio {
                    addr,
                    step: "map DMA",
                    source: Box::new(e),
                });
            }
            // On an error of a later region, dropping `mapping` unmaps this one.
            mapping.ranges.push((iova, size));
        }
        Ok(mapping)
    }
}

impl GuestMapping {
    /// The mapped `(iova, size)` ranges, one per region.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Unmaps every region, returning the first error (dropping does the
    /// same and can only log one).
    pub fn unmap(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if self.state != State::Mapped {
            return Ok(());
        }
        let mut result = Ok(());
        for &(iova, size) in &self.ranges {
            if let Err(e) = self.dma.unmap(iova, size) {
                result = result.and(Err(e));
            }
        }
        self.state = State::after_unmap(&result);
        result
    }
}

impl Drop for GuestMapping {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::error!("{e}; keeping the guest memory mapped in this process");
        }
        if self.state == State::Unmapped {
            // SAFETY: every IOMMU mapping of the regions is gone, and `memory`
            // is dropped only here, once.
            unsafe { ManuallyDrop::drop(&mut self.memory) };
        }
    }
}
