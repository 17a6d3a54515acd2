//! A virtual PCI function: a device as the guest's own PCI function, with
//! config space, BARs, ROM and interrupts.
//!
//! The VMM's PCI bus (config mechanism #1 or ECAM) calls
//! [`VirtualFunction::config_read`] and [`VirtualFunction::config_write`];
//! its vCPU loop hands MMIO and port I/O exits to
//! [`VirtualFunction::handle_exit`]. Everything else follows from what the
//! guest writes: its BAR placements become memory slots, its MSI-X table
//! and MSI capability become KVM routes, its FLR a device reset.
//!
//! What the guest sees of the device's config space (QEMU's hw/vfio/pci.c
//! and cloud-hypervisor's pci/src/vfio.rs make the same choices where not
//! said otherwise):
//!
//! | Register | Served | Why |
//! |---|---|---|
//! | IDs, class, revision, subsystem, status | passed through | status bits are the device's (write-1-to-clear reaches it) |
//! | command: memory and I/O decode | emulated | the guest's bits add and remove the slots; the device keeps decoding, so its mappings are never revoked under a slot (QEMU and cloud-hypervisor write them through) |
//! | command: bus master, INTx disable, the rest | passed through | DMA and vfio-pci's INTx masking are the device's |
//! | header type | emulated | the multi-function bit is cleared: the function stands alone on the guest's bus (as QEMU) |
//! | BIST | hidden (0) | a guest must not start a self-test under the VMM |
//! | BARs 0-5 | emulated | sizing, 64-bit pairs and I/O BARs from the device's regions; a memory BAR smaller than a page is shown as a page |
//! | expansion ROM BAR | emulated | served by exits from the ROM region |
//! | interrupt line | emulated | the guest's scratch byte |
//! | interrupt pin | emulated | the device's pin, or 0 if it has no INTx or the VMM gave no GSI |
//! | capability pointer and next pointers | emulated | the list skips hidden capabilities |
//! | MSI | emulated | guest values become routes; VFIO programs the device (both peers) |
//! | MSI-X control | emulated | enable and function mask; the table size is the device's |
//! | MSI-X table and PBA (in the BAR) | emulated | the pages are trapped and served from a cached table (both peers) |
//! | PCI Express | passed through | except Initiate FLR, which resets the device through VFIO (`Device::reset`); QEMU also rewrites the port type and link registers for its topology, which is the VMM's to do |
//! | power management | passed through, but the power state is emulated | the guest's D3hot leaves the device in D0: vfio-pci revokes BAR mappings in D3hot, which would pull the memory slots from under a running guest (QEMU and cloud-hypervisor pass the state to vfio-pci) |
//! | vendor-specific | passed through | |
//! | other standard capabilities | hidden | what the guest cannot see it cannot program (QEMU passes most through) |
//! | SR-IOV, Resizable BAR, ARI extended capabilities | hidden | shown as a null capability that keeps the list (cloud-hypervisor does the same; QEMU drops them) |
//! | other extended capabilities | passed through | |

mod bars;
mod caps;
mod config;
mod interrupts;
mod msi;
mod msix;
mod placement;
#[cfg(test)]
mod tests;
mod vectors;

use std::fmt;
use std::ops::Range;

use kvm_ioctls::VcpuFd;

use self::config::{ConfigSpaceEmu, DeviceView, Effect};
use self::interrupts::{Intx, Mode};
use super::exit::{self, Exit};
use super::vm::kvm_error;
use super::{BarPassthrough, Vm};
use crate::error::{Error, Result};
use crate::{Device, IrqIndex, MapPolicy, RegionIndex};

/// Guest pages are 4 KiB: MSI-X table and PBA are trapped in whole pages.
const GUEST_PAGE: u64 = bars::GUEST_PAGE;

/// What the VMM tells a [`VirtualFunction`] about its guest.
#[derive(Clone, Debug, Default)]
pub struct FunctionConfig {
    /// The GSI the function's INTx pin is wired to: one of the VMM's own
    /// GSIs, routed in its [`GsiRoutes`](super::GsiRoutes) (an IOAPIC pin:
    /// [`GsiRoutes::add_x86_defaults`](super::GsiRoutes::add_x86_defaults)
    /// routes GSIs 0-23 there). `None`: the guest gets no INTx (the pin reads 0).
    pub intx_gsi: Option<u32>,
    /// Guest-physical ranges no memory BAR may overlap: guest RAM, and
    /// whatever else the VMM places in the address space.
    pub reserved: Vec<Range<u64>>,
}

/// A BAR of a [`VirtualFunction`] where the guest placed it with decode on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedBar {
    /// The BAR's region (`RegionIndex::ROM` for the expansion ROM).
    pub index: RegionIndex,
    /// Whether it is an I/O BAR (`base` is a port).
    pub io: bool,
    /// Where the guest placed it.
    pub base: u64,
    /// Its size as the guest sized it.
    pub size: u64,
    /// The memory slots its directly mapped parts are.
    pub slots: Vec<u32>,
}

/// How many exits a [`VirtualFunction`] served, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionExits {
    /// Accesses to the MSI-X table or PBA, served from the cached table.
    pub msix: u64,
    /// Accesses to the rest of the BARs and the ROM, served on the device.
    pub bar: u64,
}

/// A device as a PCI function of the guest: the guest sizes and places its
/// BARs, enables decode, programs MSI-X, MSI or INTx and resets it, and
/// its own driver runs it, with the device's mapped BAR pages as memory
/// slots (no exits) and everything else served here.
///
/// The function owns the device; the VM (its slots and routes) stays the
/// VMM's. It starts as after reset: BARs unassigned, decode off, MSI and
/// MSI-X disabled, INTx on the given GSI if there is one.
///
/// Bad guest input is refused with a typed error and leaves the device and
/// the VM as they were: a BAR placed over guest memory or another BAR
/// ([`Error::GuestPlacement`]; the BAR then decodes nowhere until moved), an
/// MSI-X table access past the table ([`Error::IrqVectorOutOfRange`]), a
/// config access that is not 1, 2 or 4 bytes naturally aligned
/// ([`Error::UnsupportedWidth`], [`Error::Misaligned`]) or past the config
/// space ([`Error::OutOfRange`]).
///
/// ```no_run
/// use std::sync::Arc;
/// use barmap::kvm::{FunctionConfig, GsiRoutes, VirtualFunction, Vm};
/// use kvm_ioctls::VcpuExit;
/// let kvm = kvm_ioctls::Kvm::new().unwrap();
/// let fd = Arc::new(kvm.create_vm().unwrap());
/// fd.create_irq_chip().unwrap();
/// let routes = GsiRoutes::new(fd.clone(), 24..u32::MAX);
/// routes.add_x86_defaults()?;
/// let vm = Vm::new(&kvm, routes, 1..u32::MAX);
/// let nvme = vm.open_device("0000:00:04.0".parse()?)?;
/// let config = FunctionConfig { intx_gsi: Some(10), reserved: vec![0..0x4000_0000] };
/// let mut function = VirtualFunction::new(&vm, nvme, config)?;
/// // The VMM's PCI bus, for the guest's config cycles to this function:
/// let id = function.config_read(0, 4)?;
/// function.config_write(0x04, 2, 0x0006)?; // memory decode and bus master
/// // The VMM's vCPU loop:
/// let mut vcpu = vm.fd().create_vcpu(0).unwrap();
/// loop {
///     match vcpu.run().unwrap() {
///         VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) | VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => {
///             if !function.handle_exit(&mut vcpu)? {
///                 // the VMM's own devices
///             }
///         }
///         _ => break,
///     }
/// }
/// # let _ = id;
/// # Ok::<(), barmap::Error>(())
/// ```
pub struct VirtualFunction {
    vm: Vm,
    device: Device,
    emu: ConfigSpaceEmu,
    reserved: Vec<Range<u64>>,
    intx_gsi: Option<u32>,
    /// BARs 0-5 and the ROM (6) where the guest has them decoding.
    placed: [Option<BarPassthrough>; 7],
    mode: Mode,
    exits: FunctionExits,
}

impl fmt::Debug for VirtualFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualFunction")
            .field("device", &self.device.address())
            .field("bars", &self.bars())
            .field("exits", &self.exits)
            .finish_non_exhaustive()
    }
}

impl VirtualFunction {
    /// The function of `device` in `vm`, as after reset; INTx delivered on
    /// `config.intx_gsi` if given.
    ///
    /// Errors: [`Error::NoSuchRegion`] if the device has no config region,
    /// [`Error::NoSuchIrq`] if an INTx GSI is given for a device without
    /// INTx, and the errors of reading its config space and enabling INTx.
    pub fn new(vm: &Vm, device: Device, config: FunctionConfig) -> Result<VirtualFunction> {
        let addr = device.address();
        let count = |index| device.irq_info(index).map_or(0, |info| info.count);
        let view = DeviceView {
            bars: std::array::from_fn(|n| {
                let kind = device.bar_kind(n as u32)?;
                let size = device.region_info(RegionIndex::bar(n as u32)?).ok()?.size;
                Some((kind, size))
            }),
            rom: device
                .region_info(RegionIndex::ROM)
                .ok()
                .map(|r| r.size)
                .filter(|&s| s > 0),
            intx: config.intx_gsi.is_some(),
            msi: count(IrqIndex::Msi) > 0,
            msix: count(IrqIndex::Msix) > 0,
        };
        if config.intx_gsi.is_some() && count(IrqIndex::Intx) == 0 {
            return Err(Error::NoSuchIrq {
                addr,
                index: IrqIndex::Intx,
            });
        }
        let io = device.config_io().ok_or(Error::NoSuchRegion {
            addr,
            region: RegionIndex::CONFIG,
            count: device.regions().len() as u32,
        })?;
        let emu = ConfigSpaceEmu::new(addr, io, &view)?;
        let mut function = VirtualFunction {
            vm: vm.clone(),
            device,
            emu,
            reserved: config.reserved,
            intx_gsi: config.intx_gsi,
            placed: Default::default(),
            mode: Mode::None,
            exits: FunctionExits::default(),
        };
        function.enable_intx()?;
        Ok(function)
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The guest's config read of `width` bytes (1, 2 or 4, naturally
    /// aligned) at `offset` (below 256, or 4,096 for a PCIe device).
    pub fn config_read(&mut self, offset: u16, width: usize) -> Result<u32> {
        // MSI's pending bits are in config space (MSI-X's are in its PBA).
        if matches!(self.mode, Mode::Msi(_)) {
            self.collect_pending()?;
        }
        let io = self.config_io()?;
        self.emu.read(&io, offset, width)
    }

    /// The guest's config write of the low `width` bytes of `value` at
    /// `offset`, and what follows from it: BARs placed, moved or removed
    /// (decode, BAR and ROM writes), MSI or MSI-X vectors enabled and
    /// routed, the device reset (FLR).
    ///
    /// A BAR the guest placed where it may not be is left decoding nowhere
    /// and its [`Error::GuestPlacement`] returned; the config write itself
    /// is done (as on hardware, the register holds what the guest wrote).
    pub fn config_write(&mut self, offset: u16, width: usize, value: u32) -> Result<()> {
        let io = self.config_io()?;
        match self.emu.write(&io, offset, width, value)? {
            Effect::None => Ok(()),
            Effect::Bars => self.place_bars(),
            Effect::Reset => self.reset(),
            Effect::Msi => self.sync_msi(),
            Effect::Msix => self.sync_msix(),
        }
    }

    /// Serves the exit `vcpu` just returned from `KVM_RUN` if it falls in
    /// one of the function's decoding BARs (or its ROM) and returns
    /// `Ok(true)`; `Ok(false)` for any other exit.
    ///
    /// MSI-X table and PBA accesses are served from the cached table (a
    /// table write updates the vector's route); the rest through
    /// [`BarPassthrough::handle_exit`], on the device. An access past the
    /// device's region but inside the BAR the guest sized reads all-ones.
    pub fn handle_exit(&mut self, vcpu: &mut VcpuFd) -> Result<bool> {
        let addr = self.device.address();
        let (at, len, io) = match exit::read(vcpu, self.vm.run_size()) {
            Ok(Exit::Mmio { addr, data, .. }) => (addr, data.len() as u64, false),
            Ok(Exit::Io { port, size, .. }) => (u64::from(port), size as u64, true),
            Ok(Exit::Other) => return Ok(false),
            Err(step) => return Err(kvm_error(addr, step, kvm_ioctls::Error::new(libc::EINVAL))),
        };
        let Some(i) = (0..7).find(|&i| {
            self.placed[i].as_ref().is_some_and(|bar| {
                let base = bar.guest_address();
                bar.is_io() == io && at >= base && at + len <= base + self.emu.bar_size(i)
            })
        }) else {
            return Ok(false);
        };
        let offset = at - self.placed[i].as_ref().map_or(0, |b| b.guest_address());
        if !io && i < 6 && self.in_msix(i, offset) {
            self.exits.msix += 1;
            return self.msix_exit(vcpu, i, offset).map(|()| true);
        }
        self.exits.bar += 1;
        let bar = self.placed[i].as_ref().expect("found above");
        if !bar.handle_exit(vcpu)? {
            all_ones(vcpu, self.vm.run_size());
        }
        Ok(true)
    }

    /// Where each BAR (and the ROM) the guest has decoding is.
    pub fn bars(&self) -> Vec<PlacedBar> {
        self.placed
            .iter()
            .enumerate()
            .filter_map(|(i, bar)| {
                let bar = bar.as_ref()?;
                Some(PlacedBar {
                    index: bar.region().info().index,
                    io: bar.is_io(),
                    base: bar.guest_address(),
                    size: self.emu.bar_size(i),
                    slots: bar.slots(),
                })
            })
            .collect()
    }

    /// The exits served so far.
    pub fn exits(&self) -> FunctionExits {
        self.exits
    }

    /// The GSI that MSI or MSI-X vector `n` is routed on, if the guest has
    /// it enabled and unmasked; the GSI of INTx for `n` = 0 under INTx.
    pub fn vector_gsi(&self, n: u32) -> Option<u32> {
        match &self.mode {
            Mode::None => None,
            Mode::Intx(intx) => (n == 0).then_some(intx.gsi()),
            Mode::Msi(v) | Mode::Msix(v) => v.gsi(n),
        }
    }

    fn config_io(&self) -> Result<crate::FdRegion> {
        self.device.config_io().cloned().ok_or(Error::NoSuchRegion {
            addr: self.device.address(),
            region: RegionIndex::CONFIG,
            count: self.device.regions().len() as u32,
        })
    }

    fn enable_intx(&mut self) -> Result<()> {
        if let Some(gsi) = self.intx_gsi {
            self.mode = Mode::None;
            self.mode = Mode::Intx(Intx::new(&self.vm, &self.device, gsi)?);
        }
        Ok(())
    }

    /// Places every BAR where the guest has it decoding; the first refusal
    /// is returned after the others are placed.
    fn place_bars(&mut self) -> Result<()> {
        let wanted = self.emu.placements(&self.reserved);
        let mut first = None;
        for (i, want) in wanted.into_iter().enumerate() {
            let index = if i == 6 {
                RegionIndex::ROM
            } else {
                RegionIndex::bar(i as u32).expect("0-5")
            };
            let placed = match want {
                Ok(base) => self.place(i, index, base),
                Err(reason) => {
                    self.placed[i] = None;
                    Err(Error::GuestPlacement {
                        addr: self.device.address(),
                        region: index,
                        base: self.guest_register(i),
                        reason,
                    })
                }
            };
            if let Err(e) = placed {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The address the guest gave BAR `i`.
    fn guest_register(&self, i: usize) -> u64 {
        if i == 6 {
            self.emu.rom.and_then(|r| r.enabled_at()).unwrap_or(0)
        } else {
            self.emu.bars[i].map_or(0, |b| b.address)
        }
    }

    /// Puts BAR `i` at `base`, or nowhere for `None`.
    fn place(&mut self, i: usize, index: RegionIndex, base: Option<u64>) -> Result<()> {
        let Some(base) = base else {
            self.placed[i] = None;
            return Ok(());
        };
        if let Some(bar) = self.placed[i].as_mut() {
            if bar.guest_address() == base {
                return Ok(());
            }
            let moved = bar.move_to(base);
            if moved.is_err() {
                self.placed[i] = None;
            }
            return moved;
        }
        let region = self.device.region(index, self.policy(i))?;
        self.placed[i] = Some(BarPassthrough::new(&self.vm, region, base)?);
        Ok(())
    }

    /// How BAR `i`'s region is mapped: with the MSI-X table and PBA pages trapped.
    fn policy(&self, i: usize) -> MapPolicy {
        let Some(msix) = self.emu.msix.as_ref() else {
            return MapPolicy::Direct;
        };
        let mut traps = Vec::new();
        if msix.table_bar as usize == i {
            traps.push(msix.table.clone());
        }
        if msix.pba_bar as usize == i {
            traps.push(msix.pba.clone());
        }
        if traps.is_empty() {
            MapPolicy::Direct
        } else {
            MapPolicy::Trap(traps)
        }
    }

    /// A function-level reset the guest asked for: interrupts and slots go
    /// first, then `Device::reset`, then the config space is as after reset.
    /// Drops interrupts and slots, resets the device and returns the config
    /// space to its after-reset state. A failed device reset is returned,
    /// but the function is reset all the same, so that what the guest reads
    /// (decode off, no BARs, interrupts disabled) is what barmap serves.
    fn reset(&mut self) -> Result<()> {
        self.mode = Mode::None;
        self.placed = Default::default();
        let device = self.device.reset();
        self.emu.reset();
        let intx = self.enable_intx();
        device.and(intx)
    }
}

/// Completes the MMIO or port I/O read of `vcpu`'s exit with all-ones (a write is dropped).
fn all_ones(vcpu: &mut VcpuFd, run_size: usize) {
    match exit::read(vcpu, run_size) {
        Ok(Exit::Mmio {
            data, write: false, ..
        })
        | Ok(Exit::Io {
            data, write: false, ..
        }) => data.fill(0xff),
        _ => {}
    }
}
