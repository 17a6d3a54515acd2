//! The guest console: a 16550 UART (`vm-superio`) at the first PC serial
//! port, 0x3f8, writing what the guest sends to stdout; its interrupt is an
//! eventfd bound with an irqfd to IRQ 4 of the in-kernel irqchip.

use std::io::{self, Stdout};

use kvm_ioctls::VmFd;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::VmmError;

/// The UART's port range.
pub const BASE: u16 = 0x3f8;
const PORTS: u16 = 8;
/// Its ISA interrupt.
const IRQ: u32 = 4;

/// Raises the UART's interrupt by writing the irqfd's eventfd.
pub struct IrqFd(EventFd);

impl Trigger for IrqFd {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The console UART.
pub struct Console(Serial<IrqFd, vm_superio::serial::NoEvents, Stdout>);

impl Console {
    /// A UART on stdout, its interrupt wired to IRQ 4 of `vm`'s irqchip.
    pub fn new(vm: &VmFd) -> Result<Console, VmmError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK)?;
        vm.register_irqfd(&irq, IRQ)?;
        Ok(Console(Serial::new(IrqFd(irq), io::stdout())))
    }

    /// The register offset of `port` if it is the UART's.
    fn offset(port: u16) -> Option<u8> {
        port.checked_sub(BASE).filter(|&o| o < PORTS).map(|o| o as u8)
    }

    /// Serves a guest `in` if `port` is the UART's.
    pub fn read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let Some(offset) = Console::offset(port) else {
            return false;
        };
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.0.read(offset.wrapping_add(i as u8));
        }
        true
    }

    /// Serves a guest `out` if `port` is the UART's.
    pub fn write(&mut self, port: u16, data: &[u8]) -> Result<bool, VmmError> {
        let Some(offset) = Console::offset(port) else {
            return Ok(false);
        };
        for (i, &byte) in data.iter().enumerate() {
            self.0
                .write(offset.wrapping_add(i as u8), byte)
                .map_err(|e| format!("serial console: {e:?}"))?;
        }
        Ok(true)
    }
}
