//! The PCI host bridge: bus 0 behind configuration mechanism #1 (the
//! address register at 0xcf8, the data window at 0xcfc..0xcff), a host
//! bridge function at 00:00.0, and the VMM's functions on the devices after
//! it (function 0 of devices 1, 2, ...). Before the guest runs, [`Bus::assign`] plays the firmware's part: it
//! sizes every BAR with the guest's own all-ones writes, places it in the
//! MMIO or port window, sets the interrupt line and turns decoding on, so
//! that Linux (which needs no ACPI for this) finds the devices configured.

use crate::VmmError;

/// The 32-bit MMIO window for BARs, up to the IOAPIC's page.
pub const MMIO32_START: u64 = 0xc000_0000;
const MMIO32_END: u64 = 0xfec0_0000;
/// The window for 64-bit BARs that do not fit below 4 GiB (64 GiB up, in
/// reach of a 40-bit physical address).
const MMIO64_START: u64 = 0x10_0000_0000;
/// The port window for I/O BARs.
const IO_START: u64 = 0xc000;
const IO_END: u64 = 0x1_0000;

const ADDRESS_PORT: u16 = 0xcf8;
const DATA_PORT: u16 = 0xcfc;
const ENABLE: u32 = 1 << 31;

const COMMAND: u16 = 0x04;
const BAR0: u16 = 0x10;
const INTERRUPT_LINE: u16 = 0x3c;
const INTERRUPT_PIN: u16 = 0x3d;
const COMMAND_IO: u32 = 1 << 0;
const COMMAND_MEMORY: u32 = 1 << 1;
const BAR_IO: u32 = 1 << 0;
const BAR_MEM64: u32 = 0b10 << 1;

/// A PCI function as the bus sees it: its configuration space.
pub trait Function {
    /// Reads `width` (1, 2 or 4) bytes at `offset` of the configuration space.
    fn config_read(&mut self, offset: u16, width: u8) -> Result<u32, VmmError>;
    /// Writes `width` bytes at `offset` of the configuration space.
    fn config_write(&mut self, offset: u16, width: u8, value: u32) -> Result<(), VmmError>;
}

/// The host bridge at 00:00.0: identity and class, nothing writable.
fn host_bridge_read(offset: u16, width: u8) -> u32 {
    // Red Hat's QEMU PCIe host bridge ids, class 06.00.00 (host bridge).
    let dword: u32 = match offset & !3 {
        0x00 => 0x0008_1b36,
        0x08 => 0x0600_0000,
        _ => 0,
    };
    dword >> ((offset & 3) * 8) & mask(width)
}

fn mask(width: u8) -> u32 {
    match width {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// Bus 0: the host bridge and the VMM's functions, one per device number.
pub struct Bus<F> {
    functions: Vec<F>,
    address: u32,
    /// Configuration accesses served (for the exit counts).
    pub accesses: u64,
}

/// What a configuration address selects.
enum Selected<'a, F> {
    HostBridge,
    Function(&'a mut F),
    Nothing,
}

impl<F: Function> Bus<F> {
    /// Bus 0 with the host bridge and `functions` on devices 1, 2, ...
    pub fn new(functions: Vec<F>) -> Result<Bus<F>, VmmError> {
        if functions.len() > 31 {
            return Err("bus 0 holds 31 functions besides the host bridge".into());
        }
        Ok(Bus {
            functions,
            address: 0,
            accesses: 0,
        })
    }

    /// The functions, device 1 first.
    pub fn functions(&mut self) -> &mut [F] {
        &mut self.functions
    }

    /// The function a configuration address selects, and the register offset.
    fn selected(&mut self) -> (Selected<'_, F>, u16) {
        let a = self.address;
        let (bus, device, function) = ((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 0x7);
        let reg = (a & 0xfc) as u16;
        if a & ENABLE == 0 || bus != 0 || function != 0 {
            return (Selected::Nothing, reg);
        }
        match device {
            0 => (Selected::HostBridge, reg),
            d => match self.functions.get_mut(d as usize - 1) {
                Some(f) => (Selected::Function(f), reg),
                None => (Selected::Nothing, reg),
            },
        }
    }

    /// Serves a guest `in` if `port` is the mechanism's; false otherwise.
    pub fn io_in(&mut self, port: u16, data: &mut [u8]) -> Result<bool, VmmError> {
        let value = match port {
            ADDRESS_PORT if data.len() == 4 => self.address,
            DATA_PORT..=0xcff => {
                self.accesses += 1;
                let offset = port - DATA_PORT;
                let width = data.len() as u8;
                match self.selected() {
                    (Selected::HostBridge, reg) => host_bridge_read(reg + offset, width),
                    (Selected::Function(f), reg) => f.config_read(reg + offset, width)?,
                    (Selected::Nothing, _) => u32::MAX,
                }
            }
            ADDRESS_PORT..=0xcfb => u32::MAX,
            _ => return Ok(false),
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
        Ok(true)
    }

    /// Serves a guest `out` if `port` is the mechanism's; false otherwise.
    pub fn io_out(&mut self, port: u16, data: &[u8]) -> Result<bool, VmmError> {
        let mut word = [0u8; 4];
        word[..data.len()].copy_from_slice(data);
        let value = u32::from_le_bytes(word);
        match port {
            ADDRESS_PORT if data.len() == 4 => self.address = value,
            DATA_PORT..=0xcff => {
                self.accesses += 1;
                let offset = port - DATA_PORT;
                if let (Selected::Function(f), reg) = self.selected() {
                    f.config_write(reg + offset, data.len() as u8, value)?;
                }
            }
            // Byte writes to 0xcfb probe for mechanism #2: ignored.
            ADDRESS_PORT..=0xcfb => {}
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Configures every function as firmware would (see the module docs);
    /// `irqs` gives the interrupt line of each function in turn.
    pub fn assign(&mut self, irqs: &[u8]) -> Result<(), VmmError> {
        let mut windows = Windows {
            mmio32: MMIO32_START,
            mmio64: MMIO64_START,
            io: IO_START,
        };
        for (i, f) in self.functions.iter_mut().enumerate() {
            let mut command = f.config_read(COMMAND, 2)?;
            for io in assign_bars(f, &mut windows)? {
                command |= if io { COMMAND_IO } else { COMMAND_MEMORY };
            }
            if f.config_read(INTERRUPT_PIN, 1)? != 0 {
                let irq = *irqs.get(i).ok_or("no interrupt line for a function")?;
                f.config_write(INTERRUPT_LINE, 1, u32::from(irq))?;
            }
            f.config_write(COMMAND, 2, command)?;
        }
        Ok(())
    }
}

/// The next free address of each window.
struct Windows {
    mmio32: u64,
    mmio64: u64,
    io: u64,
}

impl Windows {
    /// Takes a naturally aligned range of `size` bytes from the right window.
    fn take(&mut self, size: u64, io: bool, mem64: bool) -> Result<u64, VmmError> {
        let align = |at: u64| at.div_ceil(size) * size;
        let (next, end) = if io {
            (&mut self.io, IO_END)
        } else if align(self.mmio32) + size <= MMIO32_END {
            (&mut self.mmio32, MMIO32_END)
        } else if mem64 {
            (&mut self.mmio64, u64::MAX)
        } else {
            return Err(format!("no room for a {size:#x}-byte 32-bit BAR").into());
        };
        let at = align(*next);
        if at.checked_add(size).is_none_or(|e| e > end) {
            return Err(format!("no room for a {size:#x}-byte BAR").into());
        }
        *next = at + size;
        Ok(at)
    }
}

/// Sizes and places the six BARs of `f`; returns, for each BAR it has,
/// whether it is an I/O BAR.
fn assign_bars(f: &mut impl Function, windows: &mut Windows) -> Result<Vec<bool>, VmmError> {
    let mut bars = Vec::new();
    let mut index = 0u16;
    while index < 6 {
        let reg = BAR0 + 4 * index;
        let original = f.config_read(reg, 4)?;
        f.config_write(reg, 4, u32::MAX)?;
        let low = f.config_read(reg, 4)?;
        let io = original & BAR_IO != 0;
        let mem64 = !io && original & (0b11 << 1) == BAR_MEM64;
        let flags = if io { 0x3 } else { 0xf };
        let high = if mem64 {
            f.config_write(reg + 4, 4, u32::MAX)?;
            f.config_read(reg + 4, 4)?
        } else {
            0
        };
        let implemented = low & !flags != 0 || high != 0;
        let mut mask = u64::from(low & !flags) | u64::from(high) << 32;
        if !mem64 {
            mask |= 0xffff_ffff_0000_0000;
        }
        if io {
            // A 16-bit I/O BAR may read its upper half as zero.
            mask |= 0xffff_0000;
        }
        let size = (!mask).wrapping_add(1);
        if !implemented || size == 0 {
            // Not implemented.
            f.config_write(reg, 4, original)?;
        } else {
            let addr = windows.take(size, io, mem64)?;
            f.config_write(reg, 4, addr as u32 | (original & flags))?;
            if mem64 {
                f.config_write(reg + 4, 4, (addr >> 32) as u32)?;
            }
            bars.push(io);
        }
        index += if mem64 { 2 } else { 1 };
    }
    Ok(bars)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function with BARs of the given (size, flags): flags 0x1 an I/O
    /// BAR, 0x4 the lower half of a 64-bit memory BAR (the upper half is
    /// the next entry, given as (0, 0)); and an interrupt pin.
    struct Fake {
        config: [u8; 256],
        sizes: [u64; 6],
    }

    impl Fake {
        fn new(bars: &[(u64, u32)], pin: u8) -> Fake {
            let mut f = Fake {
                config: [0; 256],
                sizes: [0; 6],
            };
            f.config[..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
            for (i, &(size, flags)) in bars.iter().enumerate() {
                f.sizes[i] = size;
                f.dword_set(BAR0 + 4 * i as u16, flags);
            }
            f.config[INTERRUPT_PIN as usize] = pin;
            f
        }

        fn dword(&self, at: u16) -> u32 {
            let at = usize::from(at);
            u32::from_le_bytes(self.config[at..at + 4].try_into().unwrap())
        }

        fn dword_set(&mut self, at: u16, value: u32) {
            let at = usize::from(at);
            self.config[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }

        fn bar_address(&self, i: u16) -> u64 {
            let low = self.dword(BAR0 + 4 * i);
            let flags = if low & 1 != 0 { 0x3 } else { 0xf };
            let mut addr = u64::from(low & !flags);
            if low & 0x7 == 0x4 {
                addr |= u64::from(self.dword(BAR0 + 4 * i + 4)) << 32;
            }
            addr
        }
    }

    impl Function for Fake {
        fn config_read(&mut self, offset: u16, width: u8) -> Result<u32, VmmError> {
            Ok(self.dword(offset & !3) >> ((offset & 3) * 8) & mask(width))
        }

        fn config_write(&mut self, offset: u16, width: u8, value: u32) -> Result<(), VmmError> {
            let bar = offset.checked_sub(BAR0).map(|o| o / 4).filter(|&i| i < 6);
            match bar {
                Some(i) => {
                    assert_eq!((width, offset % 4), (4, 0), "BARs are written whole");
                    let upper_half = i > 0
                        && self.sizes[usize::from(i)] == 0
                        && self.dword(BAR0 + 4 * (i - 1)) & 0x7 == 0x4;
                    let (lower, size) = if upper_half {
                        (i - 1, self.sizes[usize::from(i) - 1])
                    } else {
                        (i, self.sizes[usize::from(i)])
                    };
                    let flags = self.dword(BAR0 + 4 * lower) & if lower == i { 0xf } else { 0 };
                    let flags = if flags & 1 != 0 { flags & 0x3 } else { flags };
                    let upper = lower != i;
                    let size_mask = !(size.max(1) - 1);
                    let value = if upper {
                        value & (size_mask >> 32) as u32
                    } else if size == 0 {
                        0
                    } else {
                        value & size_mask as u32 & !0xf | flags
                    };
                    self.dword_set(offset, value);
                }
                None => {
                    let old = self.dword(offset & !3);
                    let shift = (offset & 3) * 8;
                    let m = mask(width) << shift;
                    self.dword_set(offset & !3, old & !m | (value << shift) & m);
                }
            }
            Ok(())
        }
    }

    fn cycle(bus: &mut Bus<Fake>, address: u32, port: u16, width: usize) -> u32 {
        bus.io_out(ADDRESS_PORT, &address.to_le_bytes()).unwrap();
        let mut data = vec![0; width];
        assert!(bus.io_in(port, &mut data).unwrap());
        let mut word = [0; 4];
        word[..width].copy_from_slice(&data);
        u32::from_le_bytes(word)
    }

    #[test]
    fn mechanism_1_selects_host_bridge_functions_and_nothing() {
        let mut bus = Bus::new(vec![Fake::new(&[], 0)]).unwrap();
        assert_eq!(cycle(&mut bus, ENABLE, DATA_PORT, 4), 0x0008_1b36);
        assert_eq!(
            cycle(&mut bus, ENABLE | 0x08, 0xcfe, 2),
            0x0600,
            "host bridge class"
        );
        assert_eq!(cycle(&mut bus, ENABLE | 1 << 11, DATA_PORT, 4), 0x1234_5678);
        assert_eq!(cycle(&mut bus, ENABLE | 1 << 11, 0xcfd, 1), 0x56);
        assert_eq!(
            cycle(&mut bus, ENABLE | 2 << 11, DATA_PORT, 4),
            u32::MAX,
            "no device 2"
        );
        assert_eq!(
            cycle(&mut bus, ENABLE | 1 << 11 | 1 << 8, DATA_PORT, 4),
            u32::MAX,
            "function 1"
        );
        assert_eq!(cycle(&mut bus, ENABLE | 1 << 16, DATA_PORT, 4), u32::MAX, "bus 1");
        assert_eq!(
            cycle(&mut bus, 1 << 11, DATA_PORT, 4),
            u32::MAX,
            "enable bit clear"
        );
        // The address register reads back (Linux's probe for mechanism #1).
        bus.io_out(ADDRESS_PORT, &0x8000_0000u32.to_le_bytes()).unwrap();
        let mut data = [0; 4];
        assert!(bus.io_in(ADDRESS_PORT, &mut data).unwrap());
        assert_eq!(u32::from_le_bytes(data), 0x8000_0000);
        assert!(!bus.io_in(0x3f8, &mut data).unwrap(), "not the bus's port");
    }

    #[test]
    fn assign_sizes_places_and_enables_every_kind_of_bar() {
        let bars = [
            (0x4000, 0x4), // 64-bit memory, 16 KiB
            (0, 0),
            (0x100, 0x1),         // I/O, 256 ports
            (0x1000, 0x0),        // 32-bit memory, 4 KiB
            (0x2_0000_0000, 0xc), // 64-bit prefetchable, 8 GiB: above 4 GiB
            (0, 0),
        ];
        let mut bus = Bus::new(vec![Fake::new(&bars, 1), Fake::new(&[], 0)]).unwrap();
        bus.assign(&[10, 11]).unwrap();
        let f = &bus.functions()[0];
        assert_eq!(f.bar_address(0), MMIO32_START);
        assert_eq!(f.bar_address(2), IO_START);
        assert_eq!(f.bar_address(3), MMIO32_START + 0x4000);
        assert_eq!(f.bar_address(4), MMIO64_START);
        assert_eq!(f.dword(COMMAND) & 0x3, COMMAND_IO | COMMAND_MEMORY);
        assert_eq!(f.config[INTERRUPT_LINE as usize], 10);
        let g = &bus.functions()[1];
        assert_eq!(g.dword(COMMAND) & 0x3, 0, "no BARs, no decode");
        assert_eq!(g.config[INTERRUPT_LINE as usize], 0, "no pin, no line");
    }

    #[test]
    fn assign_refuses_a_32_bit_bar_that_does_not_fit() {
        let mut bus = Bus::new(vec![Fake::new(&[(0x8000_0000, 0)], 0)]).unwrap();
        let e = bus.assign(&[0]).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
    }
}
