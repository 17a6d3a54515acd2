//! The config space, BAR, MSI-X and MSI emulation on a fake device: a
//! config space image in memory, no VFIO, no KVM.

use super::config::{ConfigSpaceEmu, DeviceView, Effect};
use super::msix::VectorState;
use crate::config::regs::*;
use crate::config::BarKind;
use crate::error::Error;
use crate::kvm::MsiMessage;
use crate::pci::PciAddress;
use crate::region::{MemoryRegion, RegionIndex};

const MSI_AT: u16 = 0x50;
const SHPC_AT: u16 = 0x68;
const MSIX_AT: u16 = 0x70;
const EXP_AT: u16 = 0x80;
const PM_AT: u16 = 0x40;
/// 16 MSI-X vectors, table at BAR0 + 0x2000, PBA at BAR0 + 0x3000.
const MSIX_VECTORS: u16 = 16;

fn addr() -> PciAddress {
    "0000:00:04.0".parse().unwrap()
}

/// A PCIe device's config space: vendor 0x1b36, device 0x0010, decode and
/// bus master off, the multi-function bit set, BIST capable; capabilities
/// PM, MSI (64-bit, maskable, 4 vectors), SHPC (to be hidden), MSI-X and
/// PCI Express with FLR; extended capabilities AER at 0x100, SR-IOV at
/// 0x140 (to be hidden), DSN at 0x180.
fn image() -> Vec<u8> {
    let mut c = vec![0u8; 0x1000];
    let mut put = |at: u16, bytes: &[u8]| {
        c[usize::from(at)..usize::from(at) + bytes.len()].copy_from_slice(bytes);
    };
    put(PCI_VENDOR_ID, &0x0010_1b36u32.to_le_bytes());
    put(PCI_COMMAND, &0u16.to_le_bytes());
    put(PCI_STATUS, &PCI_STATUS_CAP_LIST.to_le_bytes());
    put(PCI_CLASS_PROG, &[0x02, 0x08, 0x01]);
    put(PCI_HEADER_TYPE, &[PCI_HEADER_TYPE_MFD, 0x80]);
    // The device's own BAR registers: what the emulation must not show.
    put(PCI_BASE_ADDRESS_0, &0xfebf_0004u32.to_le_bytes());
    put(PCI_INTERRUPT_PIN, &[1]);
    put(PCI_CAPABILITY_LIST, &[PM_AT as u8]);
    put(PM_AT, &[PCI_CAP_ID_PM, MSI_AT as u8, 0x03, 0x00, 0x08, 0x00]);
    let msi_control = PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT | 2 << 1;
    put(MSI_AT, &[PCI_CAP_ID_MSI, SHPC_AT as u8]);
    put(MSI_AT + 2, &msi_control.to_le_bytes());
    put(SHPC_AT, &[PCI_CAP_ID_SHPC, MSIX_AT as u8, 0xaa, 0xbb]);
    put(MSIX_AT, &[PCI_CAP_ID_MSIX, EXP_AT as u8]);
    put(MSIX_AT + 2, &(MSIX_VECTORS - 1).to_le_bytes());
    put(MSIX_AT + 4, &0x2000u32.to_le_bytes());
    put(MSIX_AT + 8, &0x3000u32.to_le_bytes());
    put(EXP_AT, &[PCI_CAP_ID_EXP, 0x00, 0x02, 0x00]);
    put(EXP_AT + PCI_EXP_DEVCAP, &PCI_EXP_DEVCAP_FLR.to_le_bytes());
    put(
        0x100,
        &(u32::from(PCI_EXT_CAP_ID_ERR) | 1 << 16 | 0x140 << 20).to_le_bytes(),
    );
    put(
        0x140,
        &(u32::from(PCI_EXT_CAP_ID_SRIOV) | 1 << 16 | 0x180 << 20).to_le_bytes(),
    );
    put(0x144, &0x1234_5678u32.to_le_bytes());
    put(0x180, &u32::from(PCI_EXT_CAP_ID_DSN).to_le_bytes());
    c
}

/// BAR0: 64-bit prefetchable memory, 16 KiB (registers 0 and 1); BAR2:
/// 32-bit memory of 256 bytes (below a page); BAR3: I/O, 256 ports; a
/// 64 KiB ROM; INTx, MSI and MSI-X.
fn view() -> DeviceView {
    let mut bars = [None; 6];
    bars[0] = Some((BarKind::Memory64 { prefetchable: true }, 0x4000));
    bars[2] = Some((BarKind::Memory32 { prefetchable: false }, 0x100));
    bars[3] = Some((BarKind::Io, 0x100));
    DeviceView {
        bars,
        rom: Some(0x1_0000),
        intx: true,
        msi: true,
        msix: true,
    }
}

fn fake() -> (ConfigSpaceEmu, MemoryRegion) {
    let device = MemoryRegion::new(image());
    let emu = ConfigSpaceEmu::new(addr(), &device, &view()).unwrap();
    (emu, device)
}

fn read(emu: &ConfigSpaceEmu, device: &MemoryRegion, offset: u16, width: usize) -> u32 {
    emu.read(device, offset, width).unwrap()
}

fn write(emu: &mut ConfigSpaceEmu, device: &MemoryRegion, offset: u16, width: usize, value: u32) -> Effect {
    emu.write(device, offset, width, value).unwrap()
}

fn device_u16(device: &MemoryRegion, at: u16) -> u16 {
    let b = device.bytes();
    u16::from_le_bytes([b[usize::from(at)], b[usize::from(at) + 1]])
}

/// Linux's sizing of a BAR register: save, write all-ones, read, restore.
fn size_of_register(emu: &mut ConfigSpaceEmu, device: &MemoryRegion, at: u16) -> u32 {
    let saved = read(emu, device, at, 4);
    write(emu, device, at, 4, u32::MAX);
    let sized = read(emu, device, at, 4);
    write(emu, device, at, 4, saved);
    sized
}

#[test]
fn sizing_all_ones_returns_each_bars_size_mask_and_flags() {
    let (mut emu, dev) = fake();
    let bar = |n: u16| PCI_BASE_ADDRESS_0 + 4 * n;
    // BAR0/1: a 64-bit prefetchable pair of 16 KiB.
    assert_eq!(size_of_register(&mut emu, &dev, bar(0)), 0xffff_c000 | 0x4 | 0x8);
    assert_eq!(size_of_register(&mut emu, &dev, bar(1)), 0xffff_ffff);
    // BAR2: 256 bytes of memory shown as a page.
    assert_eq!(size_of_register(&mut emu, &dev, bar(2)), 0xffff_f000);
    // BAR3: 256 I/O ports.
    assert_eq!(size_of_register(&mut emu, &dev, bar(3)), 0x0000_ff01);
    // BAR4 and BAR5: none.
    assert_eq!(size_of_register(&mut emu, &dev, bar(4)), 0);
    assert_eq!(size_of_register(&mut emu, &dev, bar(5)), 0);
    // The ROM: Linux writes all-ones but the enable bit.
    write(&mut emu, &dev, PCI_ROM_ADDRESS, 4, !PCI_ROM_ADDRESS_ENABLE);
    assert_eq!(read(&emu, &dev, PCI_ROM_ADDRESS, 4), 0xffff_0000);
    // After the restores the BARs read 0 again (the device's own value never shows).
    assert_eq!(read(&emu, &dev, bar(0), 4), 0x4 | 0x8);
    // The device's registers were not written.
    assert_eq!(dev.bytes()[0x10..0x14], 0xfebf_0004u32.to_le_bytes());
}

#[test]
fn a_64_bit_bar_moves_above_4_gib_and_a_bar_write_asks_to_place_the_bars() {
    let (mut emu, dev) = fake();
    assert_eq!(write(&mut emu, &dev, 0x10, 4, 0xe000_0000), Effect::Bars);
    assert_eq!(write(&mut emu, &dev, 0x14, 4, 0x0000_0008), Effect::Bars);
    assert_eq!(read(&emu, &dev, 0x10, 4), 0xe000_000c);
    assert_eq!(read(&emu, &dev, 0x14, 4), 0x8);
    // Byte and word writes of the register work as dword ones do.
    write(&mut emu, &dev, 0x13, 1, 0xd0);
    write(&mut emu, &dev, 0x16, 2, 0x0001);
    assert_eq!(emu.bars[0].unwrap().address, 0x0001_0008_d000_0000);
    // Decode is off: the BAR decodes nowhere yet.
    assert_eq!(emu.placements(&[])[0], Ok(None));
    write(&mut emu, &dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY.into());
    assert_eq!(emu.placements(&[])[0], Ok(Some(0x0001_0008_d000_0000)));
    // A low-dword-only move keeps the high dword.
    write(&mut emu, &dev, 0x10, 4, 0x4000_0000);
    assert_eq!(emu.placements(&[])[0], Ok(Some(0x0001_0008_4000_0000)));
}

#[test]
fn decode_bits_add_and_remove_placements_and_the_device_keeps_decoding() {
    let (mut emu, dev) = fake();
    write(&mut emu, &dev, 0x18, 4, 0xc000_0000); // BAR2
    write(&mut emu, &dev, 0x1c, 4, 0xc000); // BAR3, ports
    write(
        &mut emu,
        &dev,
        PCI_ROM_ADDRESS,
        4,
        0xd000_0000 | PCI_ROM_ADDRESS_ENABLE,
    );
    assert_eq!(emu.placements(&[]), [Ok(None); 7]);
    // Memory decode: BAR2 and the ROM; bus master goes to the device.
    let memory_and_master = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    assert_eq!(
        write(&mut emu, &dev, PCI_COMMAND, 2, memory_and_master.into()),
        Effect::Bars
    );
    let p = emu.placements(&[]);
    assert_eq!(
        (p[2], p[3], p[6]),
        (Ok(Some(0xc000_0000)), Ok(None), Ok(Some(0xd000_0000)))
    );
    assert_eq!(
        device_u16(&dev, PCI_COMMAND),
        PCI_COMMAND_MASTER,
        "the device got bus master, not decode"
    );
    assert_eq!(read(&emu, &dev, PCI_COMMAND, 2), u32::from(memory_and_master));
    // I/O decode too, then memory off.
    write(
        &mut emu,
        &dev,
        PCI_COMMAND,
        2,
        (memory_and_master | PCI_COMMAND_IO).into(),
    );
    assert_eq!(emu.placements(&[])[3], Ok(Some(0xc000)));
    write(
        &mut emu,
        &dev,
        PCI_COMMAND,
        2,
        (PCI_COMMAND_IO | PCI_COMMAND_MASTER).into(),
    );
    let p = emu.placements(&[]);
    assert_eq!((p[2], p[3], p[6]), (Ok(None), Ok(Some(0xc000)), Ok(None)));
    // A write that changes no decode bit asks for nothing.
    assert_eq!(
        write(
            &mut emu,
            &dev,
            PCI_COMMAND,
            2,
            (PCI_COMMAND_IO | PCI_COMMAND_MASTER).into()
        ),
        Effect::None
    );
    // The device's own decode bits are kept as they are.
    let mut on = image();
    on[usize::from(PCI_COMMAND)] = (PCI_COMMAND_MEMORY | PCI_COMMAND_IO) as u8;
    let dev = MemoryRegion::new(on);
    let mut emu = ConfigSpaceEmu::new(addr(), &dev, &view()).unwrap();
    assert_eq!(
        read(&emu, &dev, PCI_COMMAND, 2),
        0,
        "the guest starts with decode off"
    );
    write(&mut emu, &dev, PCI_COMMAND, 2, PCI_COMMAND_MASTER.into());
    assert_eq!(
        device_u16(&dev, PCI_COMMAND),
        PCI_COMMAND_MEMORY | PCI_COMMAND_IO | PCI_COMMAND_MASTER
    );
}

#[test]
fn a_bar_over_guest_ram_or_another_bar_is_refused() {
    let (mut emu, dev) = fake();
    write(
        &mut emu,
        &dev,
        PCI_COMMAND,
        2,
        (PCI_COMMAND_MEMORY | PCI_COMMAND_IO).into(),
    );
    let ram = [0..0x8000_0000u64, 0x1_0000_0000..0x1_8000_0000];
    write(&mut emu, &dev, 0x10, 4, 0x7fff_c000); // BAR0's last 16 KiB of RAM
    write(&mut emu, &dev, 0x18, 4, 0x9000_0000);
    let p = emu.placements(&ram);
    assert_eq!(p[0], Err("the BAR would lie over guest memory the VMM reserved"));
    assert_eq!(p[2], Ok(Some(0x9000_0000)));
    // BAR0 onto BAR2's page: both refused.
    write(&mut emu, &dev, 0x10, 4, 0x9000_0000);
    let p = emu.placements(&ram);
    let overlap = Err("the BAR would overlap another BAR of the function");
    assert_eq!((p[0], p[2]), (overlap, overlap));
    // The ROM over BAR0.
    write(&mut emu, &dev, 0x18, 4, 0xa000_0000);
    write(
        &mut emu,
        &dev,
        PCI_ROM_ADDRESS,
        4,
        0x9000_0000 | PCI_ROM_ADDRESS_ENABLE,
    );
    let p = emu.placements(&ram);
    assert_eq!((p[0], p[2], p[6]), (overlap, Ok(Some(0xa000_0000)), overlap));
    // I/O ports and memory addresses do not clash; a port base is aligned
    // to the BAR's size, so it always fits in the port space.
    write(&mut emu, &dev, PCI_ROM_ADDRESS, 4, 0);
    write(&mut emu, &dev, 0x1c, 4, 0x9000);
    assert_eq!(emu.placements(&[])[3], Ok(Some(0x9000)));
    write(&mut emu, &dev, 0x1c, 4, 0xff81);
    assert_eq!(emu.placements(&[])[3], Ok(Some(0xff00)));
}

#[test]
fn bad_config_accesses_are_typed_errors_and_change_nothing() {
    let (mut emu, dev) = fake();
    let before = dev.bytes();
    let region = RegionIndex::CONFIG;
    assert!(matches!(
        emu.read(&dev, 0x10, 3),
        Err(Error::UnsupportedWidth { width: 3, region: r, .. }) if r == region
    ));
    assert!(matches!(
        emu.write(&dev, 0x11, 2, 0xffff),
        Err(Error::Misaligned {
            offset: 0x11,
            width: 2,
            ..
        })
    ));
    assert!(matches!(
        emu.write(&dev, 0x06, 4, 0),
        Err(Error::Misaligned {
            offset: 6,
            width: 4,
            ..
        })
    ));
    assert!(matches!(
        emu.read(&dev, 0x1000, 1),
        Err(Error::OutOfRange {
            offset: 0x1000,
            size: 0x1000,
            ..
        })
    ));
    assert!(matches!(
        emu.write(&dev, 0x10, 8, 0),
        Err(Error::UnsupportedWidth { width: 8, .. })
    ));
    assert_eq!(read(&emu, &dev, 0x10, 4), 0xc, "BAR0 is unchanged");
    assert_eq!(dev.bytes(), before, "the device saw nothing");
}

#[test]
fn the_header_shows_the_device_with_its_own_bits_emulated() {
    let (mut emu, dev) = fake();
    assert_eq!(read(&emu, &dev, PCI_VENDOR_ID, 4), 0x0010_1b36);
    assert_eq!(read(&emu, &dev, PCI_CLASS_PROG, 1), 0x02);
    assert_eq!(
        read(&emu, &dev, PCI_HEADER_TYPE, 1),
        0,
        "the multi-function bit is cleared"
    );
    assert_eq!(read(&emu, &dev, 0x0f, 1), 0, "BIST is hidden");
    assert_eq!(read(&emu, &dev, PCI_STATUS, 2), u32::from(PCI_STATUS_CAP_LIST));
    // Interrupt line is the guest's, the pin the device's.
    write(&mut emu, &dev, PCI_INTERRUPT_LINE, 1, 10);
    write(&mut emu, &dev, PCI_INTERRUPT_PIN, 1, 3);
    assert_eq!(read(&emu, &dev, PCI_INTERRUPT_LINE, 2), 0x010a);
    assert_eq!(dev.bytes()[usize::from(PCI_INTERRUPT_LINE)], 0);
    // Identity registers are read-only.
    write(&mut emu, &dev, PCI_VENDOR_ID, 4, 0xdead_beef);
    assert_eq!(read(&emu, &dev, PCI_VENDOR_ID, 4), 0x0010_1b36);
    // Without an INTx GSI the pin reads 0.
    let mut no_intx = view();
    no_intx.intx = false;
    let emu = ConfigSpaceEmu::new(addr(), &dev, &no_intx).unwrap();
    assert_eq!(read(&emu, &dev, PCI_INTERRUPT_PIN, 1), 0);
}

/// The guest's capability list, (ID, offset) in order.
fn guest_caps(emu: &ConfigSpaceEmu, dev: &MemoryRegion) -> Vec<(u8, u16)> {
    let mut caps = Vec::new();
    let mut at = read(emu, dev, PCI_CAPABILITY_LIST, 1) as u16;
    while at != 0 && caps.len() < 48 {
        caps.push((read(emu, dev, at, 1) as u8, at));
        at = read(emu, dev, at + 1, 1) as u16;
    }
    caps
}

#[test]
fn the_capability_list_skips_hidden_capabilities() {
    let (mut emu, dev) = fake();
    assert_eq!(
        guest_caps(&emu, &dev),
        [
            (PCI_CAP_ID_PM, PM_AT),
            (PCI_CAP_ID_MSI, MSI_AT),
            (PCI_CAP_ID_MSIX, MSIX_AT),
            (PCI_CAP_ID_EXP, EXP_AT)
        ]
    );
    assert_eq!(read(&emu, &dev, SHPC_AT, 4), 0, "a hidden capability reads 0");
    // A conventional device's config space ends at 256 bytes: past it, 0.
    let conventional = MemoryRegion::new(image()[..0x100].to_vec());
    let mut short = ConfigSpaceEmu::new(addr(), &conventional, &view()).unwrap();
    assert_eq!(read(&short, &conventional, 0x100, 4), 0);
    assert_eq!(write(&mut short, &conventional, 0x100, 4, 1), Effect::None);
    write(&mut emu, &dev, SHPC_AT + 2, 2, 0x1234);
    assert_eq!(dev.bytes()[usize::from(SHPC_AT) + 2], 0xaa, "and takes no write");
    // Power management is the device's, but for the power state.
    write(&mut emu, &dev, PM_AT + PCI_PM_CTRL, 2, 0x0100);
    assert_eq!(device_u16(&dev, PM_AT + PCI_PM_CTRL), 0x0108);
    // Without MSI and MSI-X on the device, their capabilities are hidden too.
    let mut plain = view();
    plain.msi = false;
    plain.msix = false;
    let emu = ConfigSpaceEmu::new(addr(), &dev, &plain).unwrap();
    assert_eq!(
        guest_caps(&emu, &dev),
        [(PCI_CAP_ID_PM, PM_AT), (PCI_CAP_ID_EXP, EXP_AT)]
    );
}

#[test]
fn sr_iov_is_a_null_extended_capability_that_keeps_the_list() {
    let (mut emu, dev) = fake();
    assert_eq!(read(&emu, &dev, 0x100, 4) & 0xffff, u32::from(PCI_EXT_CAP_ID_ERR));
    assert_eq!(read(&emu, &dev, 0x140, 4), 0x180 << 20);
    assert_eq!(
        read(&emu, &dev, 0x144, 4),
        0x1234_5678,
        "its body is the device's"
    );
    assert_eq!(read(&emu, &dev, 0x180, 2), u32::from(PCI_EXT_CAP_ID_DSN));
    write(&mut emu, &dev, 0x140, 4, 0);
    assert_eq!(read(&emu, &dev, 0x140, 4), 0x180 << 20);
}

#[test]
fn the_guests_power_state_is_its_own_and_the_device_stays_in_d0() {
    let (mut emu, dev) = fake();
    let pmcsr = PM_AT + PCI_PM_CTRL;
    // The device's PMCSR is 0x0008 (No_Soft_Reset, D0). D3hot, with PME_En
    // (bit 8, the device's) set in the same write:
    assert!(matches!(write(&mut emu, &dev, pmcsr, 2, 0x0103), Effect::None));
    assert_eq!(read(&emu, &dev, pmcsr, 2), 0x010b, "the guest reads back D3hot");
    assert_eq!(
        device_u16(&dev, pmcsr),
        0x0108,
        "the device stays in D0 and gets PME_En"
    );
    assert_eq!(read(&emu, &dev, pmcsr, 1), 0x0b);
    write(&mut emu, &dev, pmcsr, 1, 0);
    assert_eq!(read(&emu, &dev, pmcsr, 2), 0x0108);
    write(&mut emu, &dev, pmcsr, 1, 3);
    emu.reset();
    assert_eq!(read(&emu, &dev, pmcsr, 1), 0x08, "a reset is back in D0");
    assert_eq!(read(&emu, &dev, PM_AT + 2, 2), 0x0003, "PMC is the device's");
}

#[test]
fn a_guest_flr_asks_for_a_reset_and_the_rest_of_device_control_goes_through() {
    let (mut emu, dev) = fake();
    let devctl = EXP_AT + PCI_EXP_DEVCTL;
    assert_eq!(write(&mut emu, &dev, devctl, 2, 0x0010), Effect::None);
    assert_eq!(device_u16(&dev, devctl), 0x0010);
    assert_eq!(
        write(
            &mut emu,
            &dev,
            devctl,
            2,
            u32::from(PCI_EXP_DEVCTL_BCR_FLR) | 0x0010
        ),
        Effect::Reset
    );
    assert_eq!(
        device_u16(&dev, devctl),
        0x0010,
        "the FLR bit is not written to the device"
    );
    // After the reset the caller applies, BARs and decode are as after reset.
    write(&mut emu, &dev, 0x18, 4, 0xc000_0000);
    write(&mut emu, &dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY.into());
    emu.reset();
    assert_eq!(read(&emu, &dev, 0x18, 4), 0);
    assert_eq!(read(&emu, &dev, PCI_COMMAND, 2), 0);
}

#[test]
fn the_flr_bit_of_a_function_without_flr_capability_resets_nothing() {
    let mut image = image();
    let devcap = usize::from(EXP_AT + PCI_EXP_DEVCAP);
    image[devcap..devcap + 4].copy_from_slice(&0u32.to_le_bytes());
    let dev = MemoryRegion::new(image);
    let mut emu = ConfigSpaceEmu::new(addr(), &dev, &view()).unwrap();
    let devctl = EXP_AT + PCI_EXP_DEVCTL;
    let flr = u32::from(PCI_EXP_DEVCTL_BCR_FLR) | 0x0010;
    assert_eq!(write(&mut emu, &dev, devctl, 2, flr), Effect::None);
    assert_eq!(device_u16(&dev, devctl), 0x0010, "the rest goes through");
}

fn msix_control(emu: &ConfigSpaceEmu, dev: &MemoryRegion) -> u16 {
    read(emu, dev, MSIX_AT + PCI_MSIX_FLAGS, 2) as u16
}

#[test]
fn msix_control_is_the_guests_beside_the_devices_table_size() {
    let (mut emu, dev) = fake();
    assert_eq!(msix_control(&emu, &dev), MSIX_VECTORS - 1);
    assert_eq!(
        write(
            &mut emu,
            &dev,
            MSIX_AT + PCI_MSIX_FLAGS,
            2,
            (PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL).into()
        ),
        Effect::Msix
    );
    assert_eq!(
        msix_control(&emu, &dev),
        PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL | (MSIX_VECTORS - 1)
    );
    assert_eq!(
        device_u16(&dev, MSIX_AT + PCI_MSIX_FLAGS),
        MSIX_VECTORS - 1,
        "the device's capability is untouched"
    );
    // The table and PBA registers are the device's, read-only.
    write(&mut emu, &dev, MSIX_AT + PCI_MSIX_TABLE, 4, 0x5000);
    assert_eq!(read(&emu, &dev, MSIX_AT + PCI_MSIX_TABLE, 4), 0x2000);
    let msix = emu.msix.as_ref().unwrap();
    assert_eq!((msix.table_bar, msix.table.clone()), (0, 0x2000..0x2100));
    assert_eq!((msix.pba_bar, msix.pba.clone()), (0, 0x3000..0x3008));
}

#[test]
fn msix_table_writes_become_vector_messages_once_enabled_and_unmasked() {
    let (mut emu, dev) = fake();
    let msix = emu.msix.as_mut().unwrap();
    // Entry 3: address, data, then unmask, in 4-byte writes as Linux does.
    assert_eq!(msix.write_table(3 * 16, 4, 0xfee0_1000), Ok(Some(3)));
    assert_eq!(msix.write_table(3 * 16 + 4, 4, 0), Ok(None));
    assert_eq!(msix.write_table(3 * 16 + 8, 4, 0x41), Ok(Some(3)));
    assert_eq!(msix.state(3), VectorState::Off, "MSI-X is not enabled yet");
    assert_eq!(msix.write_table(3 * 16 + 12, 4, 0), Ok(Some(3)));
    assert_eq!(msix.vectors_needed(), 4);
    assert_eq!(msix.read_table(3 * 16, 8), Ok(0x0000_0000_fee0_1000));
    assert_eq!(msix.read_table(3 * 16 + 12, 4), Ok(0));
    write(
        &mut emu,
        &dev,
        MSIX_AT + PCI_MSIX_FLAGS,
        2,
        PCI_MSIX_FLAGS_ENABLE.into(),
    );
    let msix = emu.msix.as_mut().unwrap();
    let live = VectorState::Live(MsiMessage {
        address: 0xfee0_1000,
        data: 0x41,
    });
    assert_eq!(msix.state(3), live);
    assert_eq!(msix.state(2), VectorState::Masked, "entries start masked");
    // A 64-bit address in one 8-byte write.
    assert_eq!(msix.write_table(3 * 16, 8, 0x1_fee0_2000), Ok(Some(3)));
    assert_eq!(
        msix.state(3),
        VectorState::Live(MsiMessage {
            address: 0x1_fee0_2000,
            data: 0x41
        })
    );
    // The same value again changes nothing.
    assert_eq!(msix.write_table(3 * 16 + 8, 4, 0x41), Ok(None));
    // Reserved vector control bits read 0.
    msix.write_table(3 * 16 + 12, 4, 0xffff_fffe).unwrap();
    assert_eq!(msix.read_table(3 * 16 + 12, 4), Ok(0));
}

#[test]
fn an_msix_table_access_past_the_last_entry_is_refused() {
    let (mut emu, _) = fake();
    let msix = emu.msix.as_mut().unwrap();
    let last = u64::from(MSIX_VECTORS - 1) * 16;
    assert_eq!(msix.write_table(last + 8, 4, 0x42), Ok(Some(15)));
    assert_eq!(msix.write_table(last + 16, 4, 0x42), Err(16));
    assert_eq!(msix.read_table(0x40 * 16, 4), Err(0x40));
    // An access across two entries is refused too.
    assert_eq!(msix.write_table(12, 8, 0), Err(0));
    assert_eq!(msix.read_table(last + 8, 4), Ok(0x42), "entry 15 is intact");
}

#[test]
fn masked_vectors_set_pending_bits_and_the_function_mask_masks_all() {
    let (mut emu, dev) = fake();
    let msix = emu.msix.as_mut().unwrap();
    for n in [0u64, 9] {
        msix.write_table(n * 16, 4, 0xfee0_0000).unwrap();
        msix.write_table(n * 16 + 8, 4, 0x30 + n).unwrap();
        msix.write_table(n * 16 + 12, 4, 0).unwrap();
    }
    write(
        &mut emu,
        &dev,
        MSIX_AT + PCI_MSIX_FLAGS,
        2,
        (PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL).into(),
    );
    let msix = emu.msix.as_mut().unwrap();
    assert_eq!(
        (msix.state(0), msix.state(9)),
        (VectorState::Masked, VectorState::Masked)
    );
    // Vector 9 fires while masked: its bit in the PBA.
    msix.set_pending(9);
    assert_eq!(msix.read_pba(0, 8), 1 << 9);
    assert_eq!(msix.read_pba(1, 1), 1 << 1, "byte reads of the PBA");
    write(
        &mut emu,
        &dev,
        MSIX_AT + PCI_MSIX_FLAGS,
        2,
        PCI_MSIX_FLAGS_ENABLE.into(),
    );
    let msix = emu.msix.as_mut().unwrap();
    assert!(matches!(msix.state(9), VectorState::Live(m) if m.data == 0x39));
    assert!(
        msix.take_pending(9),
        "unmasked, the pending vector is delivered once"
    );
    assert!(!msix.take_pending(9));
    assert_eq!(msix.read_pba(0, 8), 0);
    // An entry's own mask bit.
    msix.write_table(12, 4, PCI_MSIX_ENTRY_CTRL_MASKBIT.into())
        .unwrap();
    assert_eq!(msix.state(0), VectorState::Masked);
    assert_eq!(msix.vectors_needed(), 10);
}

/// The MSI capability's registers for the fake's 64-bit maskable layout.
const MSI_ADDRESS: u16 = MSI_AT + 4;
const MSI_DATA: u16 = MSI_AT + 12;
const MSI_MASK: u16 = MSI_AT + 16;
const MSI_PENDING: u16 = MSI_AT + 20;

#[test]
fn msi_writes_become_messages_per_vector_and_never_reach_the_device() {
    let (mut emu, dev) = fake();
    let before = dev.bytes();
    let flags = MSI_AT + PCI_MSI_FLAGS;
    assert_eq!(
        read(&emu, &dev, flags, 2),
        u32::from(PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT | 2 << 1)
    );
    assert_eq!(write(&mut emu, &dev, MSI_ADDRESS, 4, 0xfee0_1003), Effect::Msi);
    write(&mut emu, &dev, MSI_ADDRESS + 4, 4, 0);
    write(&mut emu, &dev, MSI_DATA, 2, 0x4021);
    assert_eq!(
        read(&emu, &dev, MSI_ADDRESS, 4),
        0xfee0_1000,
        "the address is dword-aligned"
    );
    // Enable with 4 vectors (the device is capable of 4; 8 asked, 4 given).
    write(&mut emu, &dev, flags, 2, u32::from(PCI_MSI_FLAGS_ENABLE | 3 << 4));
    let msi = emu.msi.as_ref().unwrap();
    assert!(msi.enabled());
    assert_eq!(msi.vectors(), 4);
    assert_eq!(
        msi.state(2),
        VectorState::Live(MsiMessage {
            address: 0xfee0_1000,
            data: 0x4022
        })
    );
    assert_eq!(msi.state(4), VectorState::Off);
    // Vector 1 masked; a fire sets its pending bit, which the guest reads.
    write(&mut emu, &dev, MSI_MASK, 4, 0b10);
    let msi = emu.msi.as_mut().unwrap();
    assert_eq!(msi.state(1), VectorState::Masked);
    msi.set_pending(1);
    assert_eq!(read(&emu, &dev, MSI_PENDING, 4), 0b10);
    write(&mut emu, &dev, MSI_PENDING, 4, 0);
    assert_eq!(
        read(&emu, &dev, MSI_PENDING, 4),
        0b10,
        "pending bits are read-only"
    );
    assert_eq!(dev.bytes(), before, "no MSI register reached the device");
}
