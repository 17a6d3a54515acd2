//! The function's config space as the guest sees it: which bytes are the
//! device's, which are emulated, and which are hidden. Plain data over the
//! device's config space (any [`RegionIo`]), so that it runs on a fake
//! device in tests; what the guest's writes mean for slots, routes and the
//! device comes back as an [`Effect`] for the caller to apply.

use super::bars::{VirtualBar, VirtualRom};
use super::caps::{guest_caps, hidden_extended, Cap, CapKind};
use super::msi::Msi;
use super::msix::Msix;
use crate::config::regs::*;
use crate::config::{BarKind, ConfigSpace};
use crate::error::{Error, Result};
use crate::pci::PciAddress;
use crate::region::{RegionIndex, RegionIo};

/// What the function is made of, read from the device: each BAR's kind and
/// region size (the upper half of a 64-bit BAR is `None`), the ROM's size,
/// and which interrupts it has.
#[derive(Clone, Debug, Default)]
pub(super) struct DeviceView {
    pub(super) bars: [Option<(BarKind, u64)>; 6],
    pub(super) rom: Option<u64>,
    pub(super) intx: bool,
    pub(super) msi: bool,
    pub(super) msix: bool,
}

/// What a guest config write asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    /// Nothing beyond the config space itself.
    None,
    /// A BAR, the ROM BAR or the decode bits changed: place the BARs again.
    Bars,
    /// The guest initiated a function-level reset.
    Reset,
    /// The MSI capability changed.
    Msi,
    /// The MSI-X enable or function mask changed.
    Msix,
}

/// The config space of a function, as ECAM reaches it.
const CONFIG_SIZE: usize = 0x1000;

/// How one config byte is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// The device's: reads and writes go to it.
    Pass,
    /// The device's, read-only to the guest.
    PassRo,
    /// Emulated here.
    Emulated,
    /// Reads 0, writes dropped: reserved, or a hidden capability.
    Zero,
}

/// The config space emulation of one function.
#[derive(Debug)]
pub(super) struct ConfigSpaceEmu {
    addr: PciAddress,
    /// The size of the device's config region: past it (up to the 4 KiB
    /// the guest may reach through ECAM), reads are 0 and writes dropped.
    device_size: u64,
    pub(super) bars: [Option<VirtualBar>; 6],
    pub(super) rom: Option<VirtualRom>,
    /// The guest's I/O and memory decode bits.
    pub(super) decode: u16,
    line: u8,
    pin: u8,
    caps: Vec<Cap>,
    /// The power state the guest set in the PM capability (PMCSR bits 1:0).
    power_state: u8,
    /// Extended capabilities shown as a null capability (ID 0) that keeps the list's next pointer.
    hidden_ext: Vec<u16>,
    pub(super) msi: Option<Msi>,
    pub(super) msix: Option<Msix>,
}

impl ConfigSpaceEmu {
    /// The emulation of the function at `addr` whose config space `io` is and
    /// which `view` describes.
    pub(super) fn new(addr: PciAddress, io: &dyn RegionIo, view: &DeviceView) -> Result<ConfigSpaceEmu> {
        let space = ConfigSpace::new(io, addr);
        let device_size = io.size();
        let mut bars = [None; 6];
        for (n, bar) in view.bars.iter().enumerate() {
            bars[n] = bar.map(|(kind, size)| VirtualBar::new(kind, size));
        }
        let mut emu = ConfigSpaceEmu {
            addr,
            device_size,
            bars,
            rom: view.rom.map(VirtualRom::new),
            decode: 0,
            line: 0,
            pin: if view.intx {
                space.read8(PCI_INTERRUPT_PIN)?
            } else {
                0
            },
            caps: Vec::new(),
            power_state: 0,
            hidden_ext: Vec::new(),
            msi: None,
            msix: None,
        };
        let (caps, msi, msix) = guest_caps(&space, view)?;
        emu.caps = caps;
        emu.msi = msi;
        emu.msix = msix;
        if device_size > u64::from(PCI_CFG_SPACE_SIZE) {
            emu.hidden_ext = hidden_extended(&space)?;
        }
        Ok(emu)
    }

    /// Checks a guest config access: 1, 2 or 4 bytes, naturally aligned,
    /// inside the 4 KiB of config space a function has.
    fn check(&self, offset: u16, width: usize) -> Result<()> {
        let region = RegionIndex::CONFIG;
        let addr = self.addr;
        if !matches!(width, 1 | 2 | 4) {
            return Err(Error::UnsupportedWidth { addr, region, width });
        }
        if usize::from(offset) % width != 0 {
            return Err(Error::Misaligned {
                addr,
                region,
                offset: offset.into(),
                width,
            });
        }
        if usize::from(offset) + width > CONFIG_SIZE {
            return Err(Error::OutOfRange {
                addr,
                region,
                offset: offset.into(),
                len: width as u64,
                size: CONFIG_SIZE as u64,
            });
        }
        Ok(())
    }

    /// The guest's read of `width` bytes at `offset`.
    pub(super) fn read(&self, io: &dyn RegionIo, offset: u16, width: usize) -> Result<u32> {
        self.check(offset, width)?;
        let dword = offset & !3;
        let device = self.device_dword(io, dword)?;
        let emulated = self.emulated_dword(dword, device);
        let mut value = [0u8; 4];
        for (i, byte) in value.iter_mut().enumerate() {
            let at = dword + i as u16;
            *byte = match self.class(at) {
                Class::Pass | Class::PassRo => device.to_le_bytes()[i],
                Class::Emulated => emulated.to_le_bytes()[i],
                Class::Zero => 0,
            };
        }
        let shift = 8 * u32::from(offset - dword);
        let mask = if width == 4 {
            u32::MAX
        } else {
            (1 << (8 * width)) - 1
        };
        Ok((u32::from_le_bytes(value) >> shift) & mask)
    }

    /// The guest's write of `width` bytes of `value` at `offset`.
    pub(super) fn write(
        &mut self,
        io: &dyn RegionIo,
        offset: u16,
        width: usize,
        value: u32,
    ) -> Result<Effect> {
        self.check(offset, width)?;
        let dword = offset & !3;
        let shift = 8 * u32::from(offset - dword);
        let bytes: Vec<u16> = (offset..offset + width as u16).collect();
        let classes: Vec<Class> = bytes.iter().map(|&b| self.class(b)).collect();
        if u64::from(offset) >= self.device_size {
            return Ok(Effect::None);
        }
        if classes.iter().all(|&c| c == Class::Pass) {
            write_device(io, self.addr, offset, width, value)?;
            return Ok(Effect::None);
        }
        for (at, class) in bytes.iter().zip(&classes) {
            if *class == Class::Pass {
                let byte = (value >> (8 * u32::from(at - offset))) & 0xff;
                write_device(io, self.addr, *at, 1, byte)?;
            }
        }
        let mut mask = 0u32;
        for (at, class) in bytes.iter().zip(&classes) {
            if *class == Class::Emulated {
                mask |= 0xff << (8 * u32::from(at - dword));
            }
        }
        if mask == 0 {
            return Ok(Effect::None);
        }
        let device = self.device_dword(io, dword)?;
        let old = self.emulated_dword(dword, device);
        let new = (old & !mask) | ((value << shift) & mask);
        self.write_emulated(io, dword, new, mask)
    }

    /// The device's dword at `dword`, 0 past its config region.
    fn device_dword(&self, io: &dyn RegionIo, dword: u16) -> Result<u32> {
        if u64::from(dword) + 4 > self.device_size {
            return Ok(0);
        }
        let mut word = [0u8; 4];
        io.read_at(dword.into(), &mut word).map_err(|source| Error::Io {
            addr: self.addr,
            region: RegionIndex::CONFIG,
            offset: dword.into(),
            len: 4,
            source,
        })?;
        Ok(u32::from_le_bytes(word))
    }

    /// The capability whose extent holds byte `at`.
    fn cap_at(&self, at: u16) -> Option<&Cap> {
        self.caps.iter().find(|c| (c.offset..c.end).contains(&at))
    }

    /// How byte `at` is served.
    fn class(&self, at: u16) -> Class {
        match at {
            0x00..=0x03 | 0x08..=0x0b | 0x28..=0x2f => Class::PassRo,
            // Command (decode emulated, the rest forwarded by the emulation), status.
            0x04 | 0x05 => Class::Emulated,
            0x06 | 0x07 => Class::Pass,
            PCI_CACHE_LINE_SIZE | PCI_LATENCY_TIMER => Class::Pass,
            // Header type (multi-function cleared), BIST (not started by a guest).
            0x0e => Class::Emulated,
            0x0f => Class::Zero,
            0x10..=0x27 | 0x30..=0x34 | PCI_INTERRUPT_LINE | PCI_INTERRUPT_PIN => Class::Emulated,
            0x35..=0x3b => Class::Zero,
            0x3e | 0x3f => Class::PassRo,
            0x40..=0xff => match self.cap_at(at) {
                None => Class::Zero,
                Some(cap) => {
                    let rel = at - cap.offset;
                    match (cap.kind, rel) {
                        (_, 0) => Class::PassRo,
                        (_, 1) => Class::Emulated,
                        (CapKind::Msi, _) => Class::Emulated,
                        (CapKind::Msix, 2 | 3) => Class::Emulated,
                        (CapKind::Msix, _) => Class::PassRo,
                        (CapKind::Express, r) if r == PCI_EXP_DEVCTL + 1 => Class::Emulated,
                        (CapKind::Pm, PCI_PM_CTRL) => Class::Emulated,
                        (CapKind::Pass | CapKind::Pm | CapKind::Express, _) => Class::Pass,
                    }
                }
            },
            _ => {
                let header = at & !3;
                if self.hidden_ext.contains(&header) {
                    Class::Emulated
                } else {
                    Class::Pass
                }
            }
        }
    }

    /// The emulated bytes of the dword at `dword` (the others are ignored),
    /// `device` being the device's dword there.
    fn emulated_dword(&self, dword: u16, device: u32) -> u32 {
        let decode_bits = u32::from(PCI_COMMAND_IO | PCI_COMMAND_MEMORY);
        match dword {
            0x04 => {
                let mut status = device >> 16;
                status &= !u32::from(PCI_STATUS_CAP_LIST);
                if !self.caps.is_empty() {
                    status |= u32::from(PCI_STATUS_CAP_LIST);
                }
                status << 16 | (device & 0xffff & !decode_bits) | u32::from(self.decode)
            }
            0x0c => device & !(u32::from(PCI_HEADER_TYPE_MFD) << 16),
            0x10..=0x24 => self.bar_register(usize::from((dword - 0x10) / 4)),
            PCI_ROM_ADDRESS => self.rom.map_or(0, |r| r.read()),
            PCI_CAPABILITY_LIST => self.caps.first().map_or(0, |c| u32::from(c.offset)),
            0x3c => u32::from(self.line) | u32::from(self.pin) << 8,
            0x40..=0xff => {
                let mut value = device;
                for i in 0..4u16 {
                    let at = dword + i;
                    let Some(cap) = self.cap_at(at) else { continue };
                    let rel = at - cap.offset;
                    let byte = match (cap.kind, rel) {
                        (_, 1) => Some(cap.next),
                        (CapKind::Pm, PCI_PM_CTRL) => {
                            let state_mask = PCI_PM_CTRL_STATE_MASK as u8;
                            Some((device >> (8 * i)) as u8 & !state_mask | self.power_state)
                        }
                        (CapKind::Msi, r) => self.msi.as_ref().map(|m| m.read(r.into(), 1) as u8),
                        (CapKind::Msix, 3) => {
                            let size_high = (device >> (8 * i)) as u8 & (PCI_MSIX_FLAGS_QSIZE >> 8) as u8;
                            let control = self.msix.as_ref().map_or(0, |m| m.control());
                            Some(size_high | (control >> 8) as u8)
                        }
                        _ => None,
                    };
                    if let Some(byte) = byte {
                        value = (value & !(0xff << (8 * i))) | u32::from(byte) << (8 * i);
                    }
                }
                value
            }
            // A hidden extended capability: ID and version 0, the next pointer kept.
            _ => device & 0xfff0_0000,
        }
    }

    /// The register value of BAR `n`.
    fn bar_register(&self, n: usize) -> u32 {
        match self.bars[n] {
            Some(bar) => bar.low(),
            None => match n.checked_sub(1).and_then(|m| self.bars[m]) {
                Some(lower) if matches!(lower.kind, BarKind::Memory64 { .. }) => lower.high(),
                _ => 0,
            },
        }
    }

    /// Applies the guest's write of the emulated bytes `mask` of the dword at
    /// `dword`, `new` being the dword with them written.
    fn write_emulated(&mut self, io: &dyn RegionIo, dword: u16, new: u32, mask: u32) -> Result<Effect> {
        let decode_bits = PCI_COMMAND_IO | PCI_COMMAND_MEMORY;
        match dword {
            0x04 => {
                let command = new as u16;
                let device = self.device_dword(io, dword)? as u16;
                // The device keeps its own decode on; the rest is the guest's.
                let forwarded = (command & !decode_bits) | (device & decode_bits);
                if forwarded != device {
                    write_device(io, self.addr, PCI_COMMAND, 2, forwarded.into())?;
                }
                let before = self.decode;
                self.decode = command & decode_bits;
                Ok(if before != self.decode {
                    Effect::Bars
                } else {
                    Effect::None
                })
            }
            0x10..=0x24 => {
                let n = usize::from((dword - 0x10) / 4);
                if let Some(bar) = self.bars[n].as_mut() {
                    bar.write_low(new);
                    return Ok(Effect::Bars);
                }
                match n.checked_sub(1).and_then(|m| self.bars[m].as_mut()) {
                    Some(lower) if matches!(lower.kind, BarKind::Memory64 { .. }) => {
                        lower.write_high(new);
                        Ok(Effect::Bars)
                    }
                    _ => Ok(Effect::None),
                }
            }
            PCI_ROM_ADDRESS => Ok(match self.rom.as_mut() {
                Some(rom) => {
                    rom.write(new);
                    Effect::Bars
                }
                None => Effect::None,
            }),
            0x3c => {
                if mask & 0xff != 0 {
                    self.line = new as u8;
                }
                Ok(Effect::None)
            }
            0x40..=0xff => self.write_cap(io, dword, new, mask),
            _ => Ok(Effect::None),
        }
    }

    /// A guest write of emulated capability bytes.
    fn write_cap(&mut self, io: &dyn RegionIo, dword: u16, new: u32, mask: u32) -> Result<Effect> {
        let mut effect = Effect::None;
        for i in 0..4u16 {
            if mask & (0xff << (8 * i)) == 0 {
                continue;
            }
            let at = dword + i;
            let Some(cap) = self.cap_at(at).copied() else {
                continue;
            };
            let rel = at - cap.offset;
            let byte = (new >> (8 * i)) as u8;
            match (cap.kind, rel) {
                (_, 1) => {}
                // The rest of the byte is read-only or reserved.
                (CapKind::Pm, PCI_PM_CTRL) => self.power_state = byte & PCI_PM_CTRL_STATE_MASK as u8,
                (CapKind::Msi, r) => {
                    if let Some(msi) = self.msi.as_mut() {
                        if msi.write(r.into(), 1, byte.into()) {
                            effect = Effect::Msi;
                        }
                    }
                }
                (CapKind::Msix, 2) => {}
                (CapKind::Msix, 3) => {
                    if let Some(msix) = self.msix.as_mut() {
                        if msix.write_control(u16::from(byte) << 8) {
                            effect = Effect::Msix;
                        }
                    }
                }
                (CapKind::Express, r) if r == PCI_EXP_DEVCTL + 1 => {
                    let flr = (PCI_EXP_DEVCTL_BCR_FLR >> 8) as u8;
                    let through = byte & !flr;
                    write_device(io, self.addr, at, 1, through.into())?;
                    // A function without FLR capability ignores the bit, as the
                    // device itself would: no other reset stands in for it.
                    if byte & flr != 0 && self.flr_capable(io, cap.offset)? {
                        effect = Effect::Reset;
                    }
                }
                _ => {}
            }
        }
        Ok(effect)
    }

    /// Whether the PCI Express capability at `cap` advertises function-level
    /// reset (Device Capabilities, FLR).
    fn flr_capable(&self, io: &dyn RegionIo, cap: u16) -> Result<bool> {
        let devcap = read_device(io, self.addr, cap + PCI_EXP_DEVCAP, 4)?;
        Ok(devcap & PCI_EXP_DEVCAP_FLR != 0)
    }

    /// Back to the state after a reset: BARs unassigned, decode off, D0, MSI and
    /// MSI-X disabled with their tables cleared.
    pub(super) fn reset(&mut self) {
        for bar in self.bars.iter_mut().flatten() {
            bar.address = 0;
        }
        if let Some(rom) = self.rom.as_mut() {
            rom.write(0);
        }
        self.decode = 0;
        self.power_state = 0;
        if let Some(msi) = self.msi.as_mut() {
            msi.reset();
        }
        if let Some(msix) = self.msix.as_mut() {
            msix.reset();
        }
    }
}

/// Writes `width` bytes of `value` at `offset` of the device's config space.
/// Reads `width` bytes of the device's config space at `offset`.
fn read_device(io: &dyn RegionIo, addr: PciAddress, offset: u16, width: usize) -> Result<u32> {
    let mut bytes = [0u8; 4];
    io.read_at(offset.into(), &mut bytes[..width])
        .map_err(|source| config_error(addr, offset, width, source))?;
    Ok(u32::from_le_bytes(bytes))
}

/// The error of a failed access of `width` bytes at `offset` of the device's config space.
fn config_error(addr: PciAddress, offset: u16, width: usize, source: std::io::Error) -> Error {
    Error::Io {
        addr,
        region: RegionIndex::CONFIG,
        offset: offset.into(),
        len: width as u64,
        source,
    }
}

fn write_device(io: &dyn RegionIo, addr: PciAddress, offset: u16, width: usize, value: u32) -> Result<()> {
    io.write_at(offset.into(), &value.to_le_bytes()[..width])
        .map_err(|source| config_error(addr, offset, width, source))
}
