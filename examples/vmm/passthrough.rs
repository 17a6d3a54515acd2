//! The devices passed through: each a barmap [`VirtualFunction`] on the
//! PCI bus, with guest RAM mapped for its DMA at IOVA = guest address and
//! its INTx on an ISA interrupt of the in-kernel irqchip.
//!
//! The guest's mistakes (a BAR placed over RAM, an unaligned config
//! access, a table write past the table) come back as barmap's typed
//! errors; the VMM reports each on stderr and goes on, the device and the
//! VM intact, as hardware would ignore the access.

use std::collections::BTreeMap;
use std::ops::Range;

use barmap::dma::{DmaMask, GuestMapping};
use barmap::kvm::{FunctionConfig, VirtualFunction, Vm};
use barmap::vm_memory::GuestMemoryMmap;
use barmap::{IrqIndex, PciAddress, RegionIndex};
use kvm_ioctls::VcpuFd;

use crate::pci::Function;
use crate::VmmError;

/// The ISA interrupts given to INTx pins, in turn: free on a PC once the
/// timer (0), keyboard (1), cascade (2), serial ports (3, 4) and RTC (8)
/// are left out.
const INTX_IRQS: [u8; 4] = [10, 11, 5, 9];

/// One device as a PCI function of the guest.
pub struct Passthrough {
    function: VirtualFunction,
    addr: PciAddress,
    /// The interrupt line its pin is wired to (0: no INTx).
    pub irq: u8,
    /// Exits served, by BAR and page offset in it.
    pages: BTreeMap<(RegionIndex, u64), u64>,
    /// Guest accesses refused with an error.
    errors: u64,
}

/// Opens the devices at `addrs` in `vm`, maps `ram` for their DMA and
/// makes each a virtual function whose BARs may not overlap `reserved`.
/// The mapping is returned to be kept as long as the devices run.
pub fn open(
    vm: &Vm,
    addrs: &[PciAddress],
    ram: &GuestMemoryMmap,
    reserved: Range<u64>,
) -> Result<(Vec<Passthrough>, Option<GuestMapping>), VmmError> {
    let devices = addrs
        .iter()
        .map(|&addr| vm.open_device(addr).map_err(|e| format!("{addr}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // One container holds every device of the VM: one mapping serves all.
    let mapping = match devices.first() {
        Some(first) => Some(first.dma(DmaMask::FULL)?.map_guest_memory(ram)?),
        None => None,
    };
    let mut irqs = INTX_IRQS.iter().cycle();
    let mut functions = Vec::new();
    for device in devices {
        let addr = device.address();
        // The guest turns bus mastering on when its driver is ready for it.
        device.set_bus_master(false)?;
        let intx = device.irq_info(IrqIndex::Intx).is_ok_and(|i| i.count > 0);
        let irq = if intx {
            irqs.next().copied().unwrap_or(0)
        } else {
            0
        };
        let config = FunctionConfig {
            intx_gsi: intx.then_some(u32::from(irq)),
            reserved: vec![reserved.clone()],
        };
        let function = VirtualFunction::new(vm, device, config).map_err(|e| format!("{addr}: {e}"))?;
        functions.push(Passthrough {
            function,
            addr,
            irq,
            pages: BTreeMap::new(),
            errors: 0,
        });
    }
    Ok((functions, mapping))
}

impl Passthrough {
    /// Serves the exit `vcpu` just returned (an access at address or port
    /// `at`) if it is this function's.
    pub fn handle_exit(&mut self, vcpu: &mut VcpuFd, at: u64, io: bool) -> bool {
        match self.function.handle_exit(vcpu) {
            Ok(false) => false,
            Ok(true) => {
                if let Some(bar) = self
                    .function
                    .bars()
                    .into_iter()
                    .find(|b| b.io == io && at >= b.base && at - b.base < b.size)
                {
                    *self
                        .pages
                        .entry((bar.index, (at - bar.base) & !0xfff))
                        .or_default() += 1;
                }
                true
            }
            Err(e) => {
                self.refused(format_args!("access at {at:#x}: {e}"));
                true
            }
        }
    }

    fn refused(&mut self, what: std::fmt::Arguments) {
        self.errors += 1;
        eprintln!("vmm: {}: guest {what}", self.addr);
    }

    /// Prints where the guest placed the BARs and the exits they took.
    pub fn report(&self, device: usize) {
        let exits = self.function.exits();
        eprintln!(
            "vmm: function {} at 00:{:02x}.0: irq {}, exits: msix {} bar {} errors {}",
            self.addr, device, self.irq, exits.msix, exits.bar, self.errors
        );
        for bar in self.function.bars() {
            eprintln!(
                "vmm: function {} {} {} base {:#x} size {:#x} slots {:?}",
                self.addr,
                bar.index,
                if bar.io { "io" } else { "mem" },
                bar.base,
                bar.size,
                bar.slots
            );
        }
        for ((index, page), n) in &self.pages {
            eprintln!(
                "vmm: function {} {} page {:#x}: {} exits",
                self.addr, index, page, n
            );
        }
    }
}

impl Function for Passthrough {
    fn config_read(&mut self, offset: u16, width: u8) -> Result<u32, VmmError> {
        match self.function.config_read(offset, usize::from(width)) {
            Ok(value) => Ok(value),
            Err(e) => {
                self.refused(format_args!("config read at {offset:#x}: {e}"));
                Ok(u32::MAX)
            }
        }
    }

    fn config_write(&mut self, offset: u16, width: u8, value: u32) -> Result<(), VmmError> {
        if let Err(e) = self.function.config_write(offset, usize::from(width), value) {
            self.refused(format_args!("config write at {offset:#x}: {e}"));
        }
        Ok(())
    }
}
