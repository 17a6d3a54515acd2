//! A whole device as a virtual PCI function of a KVM guest: config sizing,
//! BAR placement and moves, and MSI-X table writes that become routes, on
//! QEMU's NVMe controller, MSI and INTx on edu (run in the QEMU guest, where /dev/kvm is nested
//! KVM, with --include-ignored).
#![cfg(feature = "kvm")]

mod common;
#[path = "kvm/guest.rs"]
mod guest;

use barmap::kvm::{FunctionConfig, VirtualFunction};
use barmap::PciAddress;
use barmap::{Error, IrqIndex, RegionIndex};
use common::nvme_admin::Admin;
use common::{edu, nvme, testdev};
use guest::{Asm, Guest, RAM_SIZE};
use kvm_bindings::{
    kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_MSI,
};

/// Where the guest places NVMe's BAR0 first, and where it moves it (both
/// below 1 MiB, for the real-mode guest, and above its RAM).
const BAR0_AT: u64 = 0x2_0000;
const BAR0_MOVED: u64 = 0x8_0000;
const COMMAND: u16 = 0x04;
const MEMORY: u32 = 0x2;
const MASTER: u32 = 0x4;
const MSIX_ENABLE: u32 = 0x8000;
const MSIX_MASKALL: u32 = 0x4000;
/// NVMe's version register (BAR0 + 8) and QEMU's controller version 1.4.
const NVME_VS: u16 = 0x08;
const NVME_1_4: u32 = 0x0001_0400;

/// ivshmem-plain's address in the guest (`BARMAP_IVSHMEM`, set by the guest's /init).
fn ivshmem() -> PciAddress {
    std::env::var("BARMAP_IVSHMEM")
        .expect(
            "BARMAP_IVSHMEM is not set: ivshmem-plain must be bound to vfio-pci (qemu-scripts/guest-test.sh)",
        )
        .parse()
        .unwrap()
}

fn function(guest: &Guest) -> VirtualFunction {
    let device = guest.vm.open_device(nvme()).unwrap();
    let config = FunctionConfig {
        intx_gsi: None,
        reserved: std::iter::once(0..RAM_SIZE as u64).collect(),
    };
    VirtualFunction::new(&guest.vm, device, config).unwrap()
}

/// The offset of capability `id` in the guest's list.
fn find_cap(f: &mut VirtualFunction, id: u8) -> Option<u16> {
    let mut at = f.config_read(0x34, 1).unwrap() as u16;
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        if f.config_read(at, 1).unwrap() as u8 == id {
            return Some(at);
        }
        at = f.config_read(at + 1, 1).unwrap() as u16;
    }
    None
}

/// Places BAR0 (64-bit) at `base` with memory decode and bus master on.
fn place_bar0(f: &mut VirtualFunction, base: u64) {
    f.config_write(0x10, 4, base as u32).unwrap();
    f.config_write(0x14, 4, (base >> 32) as u32).unwrap();
    f.config_write(COMMAND, 2, MEMORY | MASTER).unwrap();
}

/// A guest program that reads NVMe's version register at BAR0 = `base` and reports it.
fn read_version(base: u64) -> Vec<u8> {
    let mut asm = Asm::default();
    asm.set_ds((base >> 4) as u16).load(NVME_VS).report().done();
    asm.code
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001) bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_function_config_sizes_nvmes_bars_and_shows_its_capabilities() {
    let guest = Guest::new();
    let mut f = function(&guest);
    let size = f.device().region_info(RegionIndex::bar(0).unwrap()).unwrap().size;
    assert_eq!(f.config_read(0x00, 4).unwrap(), 0x0010_1b36, "QEMU's NVMe ids");
    assert_eq!(f.config_read(COMMAND, 2).unwrap() & 0x3, 0, "decode starts off");
    let low = f.config_read(0x10, 4).unwrap();
    assert_eq!(low & 0x7, 0x4, "BAR0 is 64-bit memory");
    f.config_write(0x10, 4, u32::MAX).unwrap();
    f.config_write(0x14, 4, u32::MAX).unwrap();
    let mask =
        u64::from(f.config_read(0x14, 4).unwrap()) << 32 | u64::from(f.config_read(0x10, 4).unwrap() & !0xf);
    assert_eq!(
        !mask + 1,
        size.max(0x1000).next_power_of_two(),
        "the size the guest reads"
    );
    f.config_write(0x10, 4, 0).unwrap();
    f.config_write(0x14, 4, 0).unwrap();
    assert!(f.bars().is_empty(), "nothing decodes with decode off");
    assert!(find_cap(&mut f, 0x11).is_some(), "MSI-X is shown");
    assert!(find_cap(&mut f, 0x10).is_some(), "PCI Express is shown");
    // Bad accesses are typed errors, and the function still answers.
    assert!(matches!(f.config_read(0x11, 2), Err(Error::Misaligned { .. })));
    assert!(matches!(
        f.config_write(0x10, 3, 0),
        Err(Error::UnsupportedWidth { .. })
    ));
    assert_eq!(f.config_read(0x00, 2).unwrap(), 0x1b36);
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001) bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_function_bar_moves_re_register_the_slots() {
    let mut guest = Guest::new();
    let mut f = function(&guest);
    place_bar0(&mut f, BAR0_AT);
    let bars = f.bars();
    assert_eq!(bars.len(), 1, "{bars:?}");
    assert_eq!(
        (bars[0].index, bars[0].base),
        (RegionIndex::bar(0).unwrap(), BAR0_AT)
    );
    assert!(!bars[0].slots.is_empty(), "the registers are a memory slot");
    guest.load(&read_version(BAR0_AT));
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(run.reports, [NVME_1_4]);
    assert_eq!(
        run.mmio_served + run.mmio_unserved.len(),
        0,
        "read through the slot, no exit"
    );

    // The guest moves the BAR with decode on: the slots follow.
    f.config_write(0x10, 4, BAR0_MOVED as u32).unwrap();
    let bars = f.bars();
    assert_eq!(bars[0].base, BAR0_MOVED);
    guest.load(&read_version(BAR0_MOVED));
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(run.reports, [NVME_1_4]);
    assert_eq!(run.mmio_served + run.mmio_unserved.len(), 0);
    // The old place decodes nothing any more.
    guest.load(&read_version(BAR0_AT));
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(run.reports, [u32::MAX]);
    assert_eq!(run.mmio_unserved, [BAR0_AT + u64::from(NVME_VS)]);

    // Memory decode off removes the slots; on again places them back.
    f.config_write(COMMAND, 2, MASTER).unwrap();
    assert!(f.bars().is_empty());
    f.config_write(COMMAND, 2, MEMORY | MASTER).unwrap();
    assert_eq!(f.bars()[0].base, BAR0_MOVED);

    // Address 0 is unassigned: nothing decodes. Over guest RAM: refused,
    // the BAR decodes nowhere, and the device is intact.
    f.config_write(0x10, 4, 0).unwrap();
    assert!(f.bars().is_empty());
    let over_ram = f.config_write(0x10, 4, 0x4000);
    assert!(
        matches!(over_ram, Err(Error::GuestPlacement { .. })),
        "{over_ram:?}"
    );
    assert!(f.bars().is_empty());
    f.config_write(0x10, 4, BAR0_AT as u32).unwrap();
    guest.load(&read_version(BAR0_AT));
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(run.reports, [NVME_1_4], "placed again, the device answers");
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001) bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_function_msix_table_writes_route_the_vector_into_the_guest() {
    const VECTOR: u8 = 0x41;
    const FLAG: u16 = 0x500; // in RAM, through ES = 0
    const MARK: u32 = 0x4e56_4d45;
    let mut guest = Guest::new();
    let mut f = function(&guest);
    let admin = Admin::new(f.device());
    place_bar0(&mut f, BAR0_AT);
    let cap = find_cap(&mut f, 0x11).expect("MSI-X capability");
    let table_reg = f.config_read(cap + 4, 4).unwrap();
    let pba_reg = f.config_read(cap + 8, 4).unwrap();
    assert_eq!(
        (table_reg & 7, pba_reg & 7),
        (0, 0),
        "QEMU's NVMe has its table and PBA in BAR0"
    );
    let table = (table_reg & !7) as u16;
    let pba = (pba_reg & !7) as u16;
    let entries = (f.config_read(cap + 2, 2).unwrap() & 0x7ff) + 1;
    f.config_write(cap + 2, 2, MSIX_ENABLE | MSIX_MASKALL).unwrap();

    // The guest programs entries 0 and 2 and reads one back: each access
    // one exit, served from the cached table.
    let mut asm = Asm::default();
    asm.set_ds((BAR0_AT >> 4) as u16)
        .store(table, 0xfee0_0000)
        .store(table + 4, 0)
        .store(table + 8, VECTOR.into())
        .store(table + 12, 0)
        .store(table + 32, 0xfee0_0000)
        .store(table + 40, u32::from(VECTOR) + 2)
        .store(table + 44, 0)
        .load(table + 8)
        .report()
        .done();
    guest.load(&asm.code);
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(run.reports, [u32::from(VECTOR)]);
    assert_eq!(f.exits().msix, 8);
    assert_eq!(f.vector_gsi(0), None, "the function mask holds it back");
    // The guest lifts the function mask: the vectors are enabled on the
    // device as far as entry 2 and routed to their messages.
    f.config_write(cap + 2, 2, MSIX_ENABLE).unwrap();
    let gsi = f.vector_gsi(0).expect("vector 0 routed");
    let gsi2 = f.vector_gsi(2).expect("vector 2 routed");
    assert_ne!(gsi, gsi2);
    assert_eq!(f.vector_gsi(1), None, "entry 1 is still masked");
    let route = guest
        .vm
        .routes()
        .entries()
        .into_iter()
        .find(|e| e.gsi == gsi)
        .expect("the route is in the table");
    assert_eq!(route.type_, KVM_IRQ_ROUTING_MSI);
    // SAFETY: the entry is an MSI route (checked above), so `msi` is the member in use.
    let (address, data) = unsafe { (route.u.msi.address_lo, route.u.msi.data) };
    assert_eq!((address, data), (0xfee0_0000, u32::from(VECTOR)));

    // An Identify command's completion reaches the guest's handler through the route.
    let mut asm = Asm::default();
    asm.sti();
    guest.load_waiting_for(asm, FLAG, VECTOR, |h| {
        h.mov_eax(MARK).report();
    });
    admin.enable();
    admin.submit_identify(0x2c);
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(run.reports, [MARK], "the handler ran once");
    admin.check_identify(0x2c);

    // Masked, the completion sets vector 0's pending bit instead, and the
    // guest's unmask delivers it, to the message it programmed meanwhile
    // (another vector: the guest never sent the local APIC an EOI, so
    // VECTOR's priority class stays blocked).
    const VECTOR2: u8 = 0x51;
    let mut asm = Asm::default();
    asm.set_ds((BAR0_AT >> 4) as u16)
        .store(table + 12, 1)
        .store(table + 8, VECTOR2.into())
        .done();
    guest.load(&asm.code);
    guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(f.vector_gsi(0), None, "masked: no route");
    admin.disable();
    admin.enable();
    admin.submit_identify(0x2d);
    let mut asm = Asm::default();
    asm.set_ds((BAR0_AT >> 4) as u16).mov_ecx(100_000);
    let poll = asm.here();
    asm.load(pba).test_al(1);
    asm.code.extend_from_slice(&[0x75, 4]);
    asm.dec_ecx().jnz(poll);
    asm.report().sti().store(table + 12, 0);
    guest.load_waiting_for(asm, FLAG, VECTOR2, |h| {
        h.mov_eax(MARK).report();
    });
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(
        run.reports,
        [1, MARK],
        "vector 0 pending in the PBA, then delivered once unmasked"
    );
    assert!(f.vector_gsi(0).is_some());
    admin.check_identify(0x2d);

    // Past the last entry, in the table's page: refused, entry 0 intact.
    let past = table + entries as u16 * 16;
    if !past.is_multiple_of(0x1000) && !(pba..pba + 8).contains(&past) {
        let mut asm = Asm::default();
        asm.set_ds((BAR0_AT >> 4) as u16)
            .store(past, 0x55)
            .load(table + 8)
            .report()
            .done();
        guest.load(&asm.code);
        let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
        assert!(
            matches!(
                run.errors[..],
                [Error::IrqVectorOutOfRange {
                    index: IrqIndex::Msix,
                    ..
                }]
            ),
            "{:?}",
            run.errors
        );
        assert_eq!(run.reports, [u32::from(VECTOR2)], "entry 0 is intact");
    }
    admin.disable();
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001) bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_function_guest_flr_resets_the_device_and_the_function() {
    let guest = Guest::new();
    let mut f = function(&guest);
    place_bar0(&mut f, BAR0_AT);
    assert_eq!(f.bars().len(), 1);
    let exp = find_cap(&mut f, 0x10).expect("PCI Express capability");
    let devctl = f.config_read(exp + 8, 2).unwrap();
    f.config_write(exp + 8, 2, devctl | 0x8000).unwrap();
    assert!(f.bars().is_empty(), "the reset unplaced the BARs");
    assert_eq!(f.config_read(0x10, 4).unwrap() & !0xf, 0);
    assert_eq!(f.config_read(COMMAND, 2).unwrap() & 0x3, 0);
    assert_eq!(
        f.config_read(exp + 8, 2).unwrap() & 0x8000,
        0,
        "Initiate FLR reads 0"
    );
}

#[test]
#[ignore = "needs QEMU ivshmem-plain bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_function_refuses_intx_for_a_device_without_interrupts() {
    let guest = Guest::new();
    let device = guest.vm.open_device(ivshmem()).unwrap();
    let config = FunctionConfig {
        intx_gsi: Some(10),
        reserved: Vec::new(),
    };
    let err = VirtualFunction::new(&guest.vm, device.clone(), config).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoSuchIrq {
                index: IrqIndex::Intx,
                ..
            }
        ),
        "{err:?}"
    );
    // Without INTx it is a function all the same, and its pin reads 0.
    let mut f = VirtualFunction::new(&guest.vm, device, FunctionConfig::default()).unwrap();
    assert_eq!(f.config_read(0x3d, 1).unwrap(), 0);
    assert_eq!(f.config_read(0x00, 4).unwrap(), 0x1110_1af4);
}

/// Where the guest places edu's 1 MiB BAR0: at 1 MiB, which real mode
/// reaches from segment 0xffff (offset 0x10 is the BAR's start).
const EDU_AT: u64 = 0x10_0000;
const EDU_SEG: u16 = 0xffff;
const EDU_OFF: u16 = 0x10;
const EDU_FACTORIAL: u16 = EDU_OFF + 0x08;
const EDU_STATUS: u16 = EDU_OFF + 0x20;
const EDU_IRQ_STATUS: u16 = EDU_OFF + 0x24;
const EDU_RAISE: u16 = EDU_OFF + 0x60;
const EDU_IRQ_ACK: u16 = EDU_OFF + 0x64;
const FLAG: u16 = 0x500; // in RAM, through ES = 0

fn edu_function(guest: &Guest, intx_gsi: Option<u32>) -> VirtualFunction {
    let device = guest.vm.open_device(edu()).unwrap();
    let config = FunctionConfig {
        intx_gsi,
        reserved: std::iter::once(0..RAM_SIZE as u64).collect(),
    };
    let mut f = VirtualFunction::new(&guest.vm, device, config).unwrap();
    f.config_write(0x10, 4, EDU_AT as u32).unwrap();
    f.config_write(COMMAND, 2, MEMORY | MASTER).unwrap();
    assert_eq!(f.bars()[0].base, EDU_AT);
    f
}

/// A guest program that enables interrupts, runs `raise` and waits for its
/// handler, which reports edu's interrupt status, acknowledges it and flags.
fn interrupt_program(guest: &mut Guest, vector: u8, raise: impl FnOnce(&mut Asm)) {
    let mut asm = Asm::default();
    asm.set_ds(EDU_SEG).store(EDU_IRQ_ACK, u32::MAX).sti();
    raise(&mut asm);
    guest.load_waiting_for(asm, FLAG, vector, |h| {
        h.load(EDU_IRQ_STATUS).report().store_eax(EDU_IRQ_ACK);
    });
}

/// edu's MSI capability programmed by the guest's config writes: enabling
/// it enables MSI on the device and routes it to the guest's message, and
/// edu's interrupt runs the guest's handler.
#[test]
#[ignore = "needs QEMU edu bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_function_msi_capability_writes_route_edus_interrupt() {
    const VECTOR: u8 = 0x40;
    let mut guest = Guest::new();
    let mut f = edu_function(&guest, None);
    let cap = find_cap(&mut f, 0x05).expect("MSI capability");
    let control = f.config_read(cap + 2, 2).unwrap();
    assert_eq!(control & 1, 0, "MSI starts disabled");
    let data = if control & 0x80 != 0 { cap + 12 } else { cap + 8 };
    f.config_write(cap + 4, 4, 0xfee0_0000).unwrap();
    if control & 0x80 != 0 {
        f.config_write(cap + 8, 4, 0).unwrap();
    }
    f.config_write(data, 2, VECTOR.into()).unwrap();
    assert_eq!(f.vector_gsi(0), None);
    f.config_write(cap + 2, 2, control | 1).unwrap();
    assert_eq!(f.config_read(cap + 2, 2).unwrap() & 1, 1);
    assert!(
        f.vector_gsi(0).is_some_and(|gsi| gsi >= 24),
        "routed on one of barmap's GSIs"
    );
    // The guest has edu raise an interrupt when its factorial is done.
    interrupt_program(&mut guest, VECTOR, |asm| {
        asm.wait_clear(EDU_STATUS, 1)
            .store(EDU_STATUS, 0x80)
            .store(EDU_FACTORIAL, 5);
    });
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(run.reports, [1], "the handler ran once");
    assert_eq!(
        (run.mmio_served, run.mmio_unserved.len()),
        (0, 0),
        "edu's registers are a slot"
    );
    // Disabled again: no route.
    f.config_write(cap + 2, 2, control).unwrap();
    assert_eq!(f.vector_gsi(0), None);
}

/// INTx through the resampled irqfd: edu's interrupt, raised by the guest
/// through the slot, reaches the guest's handler on the IOAPIC pin the VMM
/// wired the function to, with no VMM round trip.
#[test]
#[ignore = "needs QEMU edu bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_function_intx_reaches_the_guest_through_the_ioapic() {
    const VECTOR: u8 = 0x42;
    const PIN: u32 = 10;
    let mut guest = Guest::new();
    guest.vm.routes().add_x86_defaults().unwrap();
    let mut f = edu_function(&guest, Some(PIN));
    assert_eq!(f.config_read(0x3d, 1).unwrap(), 1, "INTA");
    assert_eq!(f.vector_gsi(0), Some(PIN));
    // The IOAPIC's pin 10: fixed delivery of VECTOR to APIC 0, level-triggered, unmasked.
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    guest.vm.fd().get_irqchip(&mut chip).unwrap();
    // SAFETY: `chip_id` asked for the IOAPIC's state: the union holds `ioapic`.
    let mut ioapic = unsafe { chip.chip.ioapic };
    ioapic.redirtbl[PIN as usize].bits = u64::from(VECTOR) | 1 << 15;
    chip.chip.ioapic = ioapic;
    guest.vm.fd().set_irqchip(&chip).unwrap();
    // The PICs masked, as an OS that uses the IOAPIC has them: GSI 10 is
    // routed to the slave PIC too (KVM's default table, kept by the VMM).
    for id in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE] {
        let mut chip = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        guest.vm.fd().get_irqchip(&mut chip).unwrap();
        // SAFETY: `chip_id` asked for a PIC's state: the union holds `pic`.
        let mut pic = unsafe { chip.chip.pic };
        pic.imr = 0xff;
        chip.chip.pic = pic;
        guest.vm.fd().set_irqchip(&chip).unwrap();
    }
    interrupt_program(&mut guest, VECTOR, |asm| {
        asm.store(EDU_RAISE, 1);
    });
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(
        run.reports,
        [1],
        "the handler ran once and saw edu's raised status"
    );
    assert_eq!((run.mmio_served, run.mmio_unserved.len()), (0, 0));
}

/// pci-testdev's expansion ROM (qemu-scripts gives it a 4 KiB image with
/// the 0xaa55 signature) sized, enabled and read by the guest through exits
/// served from the ROM region, and its I/O BAR placed in the port space.
#[test]
#[ignore = "needs QEMU pci-testdev (with its ROM) bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_function_rom_and_io_bar_of_pci_testdev() {
    const ROM_AT: u64 = 0x9_0000;
    const PORT: u16 = 0x1000;
    let mut guest = Guest::new();
    let device = guest.vm.open_device(testdev()).unwrap();
    let config = FunctionConfig {
        intx_gsi: None,
        reserved: std::iter::once(0..RAM_SIZE as u64).collect(),
    };
    let mut f = VirtualFunction::new(&guest.vm, device, config).unwrap();
    f.config_write(0x30, 4, !1).unwrap();
    assert_eq!(f.config_read(0x30, 4).unwrap(), 0xffff_f000, "a 4 KiB ROM");
    f.config_write(0x30, 4, ROM_AT as u32 | 1).unwrap();
    assert!(f.bars().is_empty(), "no decode yet");
    f.config_write(0x14, 4, u32::from(PORT)).unwrap();
    f.config_write(COMMAND, 2, MEMORY | 0x1).unwrap();
    let bars = f.bars();
    let rom = bars
        .iter()
        .find(|b| b.index == RegionIndex::ROM)
        .expect("the ROM decodes");
    assert_eq!((rom.base, rom.size, rom.io), (ROM_AT, 0x1000, false));
    assert!(
        rom.slots.is_empty(),
        "the ROM region is not mmapable: every read exits"
    );
    let io = bars.iter().find(|b| b.io).expect("the I/O BAR decodes");
    assert_eq!(
        (io.index, io.base),
        (RegionIndex::bar(1).unwrap(), u64::from(PORT))
    );

    let mut asm = Asm::default();
    asm.set_ds((ROM_AT >> 4) as u16)
        .load(0)
        .report()
        .store(0, 0)
        .mov_dx(PORT)
        .in_eax_dx()
        .done();
    guest.load(&asm.code);
    let run = guest.run_serving(|vcpu| f.handle_exit(vcpu));
    assert_eq!(run.reports.len(), 1);
    assert_eq!(run.reports[0] & 0xffff, 0xaa55, "the ROM's signature");
    assert!(
        matches!(
            run.errors[..],
            [Error::ReadOnly {
                region: RegionIndex::ROM,
                ..
            }]
        ),
        "a guest write to the ROM is refused: {:?}",
        run.errors
    );
    assert_eq!((run.mmio_served, run.io_served), (2, 1));
    // The enable bit cleared: the ROM decodes nowhere.
    f.config_write(0x30, 4, ROM_AT as u32).unwrap();
    assert!(f.bars().iter().all(|b| b.index != RegionIndex::ROM));
}
