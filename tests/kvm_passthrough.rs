//! Device passthrough to a KVM guest: a real-mode guest program drives edu
//! through a memory slot, its DMA engine into guest RAM, its MSI through an
//! irqfd, NVMe's MSI-X through an irqfd, and pci-testdev's I/O BAR through
//! the exit dispatcher (run in the QEMU guest, where /dev/kvm is nested KVM,
//! with --include-ignored).
#![cfg(feature = "kvm")]

mod common;
#[path = "kvm/guest.rs"]
mod guest;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use barmap::dma::DmaMask;
use barmap::kvm::{BarPassthrough, MsiMessage};
use barmap::vm_memory::{Bytes, GuestAddress};
use barmap::{MapPolicy, RegionIndex};
use common::nvme_admin::Admin;
use common::{edu, edu_reg::ID_VALUE, nvme, testdev};
use guest::{Asm, Guest};

/// Where edu BAR0 sits in the guest, and the real-mode segment that reaches it.
const EDU_GPA: u64 = 0x2_0000;
const EDU_SEG: u16 = (EDU_GPA >> 4) as u16;
/// Where pci-testdev's I/O BAR sits in the guest's port space.
const TESTDEV_PORT: u16 = 0x1000;

/// edu BAR0 register offsets, as the guest addresses them.
const ID: u16 = 0x00;
const LIVENESS: u16 = 0x04;
const FACTORIAL: u16 = 0x08;
const STATUS: u16 = 0x20;
const IRQ_STATUS: u16 = 0x24;
const IRQ_ACK: u16 = 0x64;
const DMA_SRC: u16 = 0x80;
const DMA_DST: u16 = 0x88;
const DMA_COUNT: u16 = 0x90;
const DMA_CMD: u16 = 0x98;
/// edu's DMA buffer, in device addresses.
const EDU_BUFFER: u32 = 0x4_0000;

/// A program that reads edu's ID register `n` times and reports it each time.
fn read_id(seg: u16, n: usize) -> Vec<u8> {
    let mut asm = Asm::default();
    asm.set_ds(seg);
    for _ in 0..n {
        asm.load(ID).report();
    }
    asm.done();
    asm.code
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_identification_through_the_slot() {
    let mut guest = Guest::new();
    let edu = guest.vm.open_device(edu()).unwrap();
    let bar0 = BarPassthrough::new(&guest.vm, edu.bar(0).unwrap(), EDU_GPA).unwrap();
    assert_eq!(bar0.slots().len(), 1);
    guest.load(&read_id(EDU_SEG, 1));
    let run = guest.run(&[&bar0]);
    println!("guest read edu ID {:#010x}", run.reports[0]);
    assert_eq!(run.reports, [ID_VALUE]);
    assert_eq!((run.mmio_served, run.mmio_unserved.len()), (0, 0), "no MMIO exit");
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_registers_liveness_and_factorial() {
    let mut guest = Guest::new();
    let edu = guest.vm.open_device(edu()).unwrap();
    let bar0 = BarPassthrough::new(&guest.vm, edu.bar(0).unwrap(), EDU_GPA).unwrap();
    let mut asm = Asm::default();
    asm.set_ds(EDU_SEG)
        .store(LIVENESS, 0x1234_5678)
        .load(LIVENESS)
        .report()
        .wait_clear(STATUS, 1)
        .store(STATUS, 0)
        .store(FACTORIAL, 10)
        .wait_clear(STATUS, 1)
        .load(FACTORIAL)
        .report()
        .done();
    guest.load(&asm.code);
    let run = guest.run(&[&bar0]);
    assert_eq!(run.reports, [0xedcb_a987, 3_628_800]);
    assert_eq!((run.mmio_served, run.mmio_unserved.len()), (0, 0), "no MMIO exit");
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_dma_into_guest_memory() {
    const SRC: u32 = 0x3000;
    const DST: u32 = 0x5000;
    const LEN: usize = 300; // QEMU 7.2: count 0 or touching buffer byte 0xfff aborts QEMU
    let mut guest = Guest::new();
    let edu = guest.vm.open_device(edu()).unwrap();
    let bar0 = BarPassthrough::new(&guest.vm, edu.bar(0).unwrap(), EDU_GPA).unwrap();
    let dma = edu.dma(DmaMask::bits(28)).unwrap();
    let mapping = dma.map_guest_memory(&guest.ram).unwrap();
    assert_eq!(mapping.ranges(), [(0, guest::RAM_SIZE as u64)]);
    let pattern: Vec<u8> = (0..LEN).map(|i| (i * 7 + 3) as u8).collect();
    guest.ram.write_slice(&pattern, GuestAddress(SRC.into())).unwrap();
    guest
        .ram
        .write_slice(&[0u8; LEN + 16], GuestAddress(DST.into()))
        .unwrap();
    let mut asm = Asm::default();
    asm.set_ds(EDU_SEG).wait_clear(DMA_CMD, 1);
    // Guest RAM to edu's buffer, then edu's buffer to guest RAM at DST.
    for (src, dst, cmd) in [(SRC, EDU_BUFFER, 1), (EDU_BUFFER, DST, 3)] {
        asm.store(DMA_SRC, src)
            .store(DMA_DST, dst)
            .store(DMA_COUNT, LEN as u32)
            .store(DMA_CMD, cmd)
            .wait_clear(DMA_CMD, 1);
    }
    asm.done();
    guest.load(&asm.code);
    let run = guest.run(&[&bar0]);
    assert_eq!((run.mmio_served, run.mmio_unserved.len()), (0, 0), "no MMIO exit");
    let mut got = vec![0u8; LEN + 16];
    guest.ram.read_slice(&mut got, GuestAddress(DST.into())).unwrap();
    assert_eq!(&got[..LEN], &pattern[..], "edu's buffer copied into guest RAM");
    assert_eq!(&got[LEN..], &[0u8; 16], "nothing past the count");
    mapping.unmap().unwrap();
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_msi_runs_the_guest_handler() {
    const VECTOR: u8 = 0x40;
    const FLAG: u16 = 0x500; // in RAM, through ES = 0
    let mut guest = Guest::new();
    let edu = guest.vm.open_device(edu()).unwrap();
    let bar0 = BarPassthrough::new(&guest.vm, edu.bar(0).unwrap(), EDU_GPA).unwrap();
    let msi = edu.enable_msi(1).unwrap();
    let irq = guest
        .vm
        .route_msi(msi.vector(0).unwrap(), MsiMessage::fixed(0, VECTOR))
        .unwrap();
    assert!(irq.gsi() >= 24);

    let mut asm = Asm::default();
    asm.set_ds(EDU_SEG)
        .wait_clear(STATUS, 1)
        .store(IRQ_ACK, 0xffff_ffff)
        .store(STATUS, 0x80) // raise an interrupt when the factorial is done
        .sti()
        .store(FACTORIAL, 5)
        .mov_ecx(50_000_000);
    let wait = asm.here();
    asm.es_cmp8(FLAG, 0);
    // jnz out of the loop (forward): skip "dec ecx; jnz wait" (2 + 2 bytes).
    asm.code.extend_from_slice(&[0x75, 4]);
    asm.dec_ecx().jnz(wait).done();
    // The handler: report the interrupt status and the result, acknowledge, flag, return.
    let handler = asm.here();
    asm.load(IRQ_STATUS)
        .report()
        .store_eax(IRQ_ACK)
        .load(FACTORIAL)
        .report()
        .es_store8(FLAG, 1)
        .iret();
    guest.ram.write_obj(0u8, GuestAddress(FLAG.into())).unwrap();
    guest.load(&asm.code);
    guest.set_handler(VECTOR, handler);
    let run = guest.run(&[&bar0]);
    assert_eq!(
        run.reports,
        [1, 120],
        "the handler ran once and saw the factorial done"
    );
    assert_eq!(guest.ram.read_obj::<u8>(GuestAddress(FLAG.into())).unwrap(), 1);
    assert_eq!((run.mmio_served, run.mmio_unserved.len()), (0, 0), "no MMIO exit");
    drop(irq);
    bar0.region().write::<u32>(STATUS.into(), 0).unwrap();
}

/// NVMe's MSI-X vector 0 routed into the guest: the VMM (this test) brings
/// the controller up and submits Identify Controller; its completion
/// interrupt reaches the guest's handler through the irqfd, not the VMM.
#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001) bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_msix_runs_the_guest_handler() {
    const VECTOR: u8 = 0x41;
    const FLAG: u16 = 0x500; // in RAM, through ES = 0
    const MARK: u32 = 0x4e56_4d45;
    let mut guest = Guest::new();
    let nvme = guest.vm.open_device(nvme()).unwrap();
    let admin = Admin::new(&nvme);
    let msix = nvme.enable_msix(1).unwrap();
    let irq = guest
        .vm
        .route_msi(msix.vector(0).unwrap(), MsiMessage::fixed(0, VECTOR))
        .unwrap();
    admin.enable();

    let mut asm = Asm::default();
    asm.sti().mov_ecx(50_000_000);
    let wait = asm.here();
    asm.es_cmp8(FLAG, 0);
    // jnz out of the loop (forward): skip "dec ecx; jnz wait" (2 + 2 bytes).
    asm.code.extend_from_slice(&[0x75, 4]);
    asm.dec_ecx().jnz(wait).done();
    let handler = asm.here();
    asm.mov_eax(MARK).report().es_store8(FLAG, 1).iret();
    guest.ram.write_obj(0u8, GuestAddress(FLAG.into())).unwrap();
    guest.load(&asm.code);
    guest.set_handler(VECTOR, handler);

    // The completion interrupt is pending in the guest's local APIC, or
    // arrives while the guest waits, depending on how fast the controller is.
    let cid = 0x2b;
    admin.submit_identify(cid);
    let run = guest.run(&[]);
    assert_eq!(run.reports, [MARK], "the handler ran once");
    assert_eq!(guest.ram.read_obj::<u8>(GuestAddress(FLAG.into())).unwrap(), 1);
    assert_eq!(
        msix.vector(0).unwrap().try_wait().unwrap(),
        None,
        "KVM consumed the interrupt, not the VMM"
    );
    admin.check_identify(cid);
    drop(irq);
    admin.disable();
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_port_io_through_the_dispatcher() {
    let mut guest = Guest::new();
    let testdev = guest.vm.open_device(testdev()).unwrap();
    let io = BarPassthrough::new(&guest.vm, testdev.bar(1).unwrap(), TESTDEV_PORT.into()).unwrap();
    assert!(io.is_io() && io.slots().is_empty());
    let mut asm = Asm::default();
    asm.mov_dx(TESTDEV_PORT)
        .mov_al(0)
        .out_dx_al() // select I/O test 0 (test 3, "portio-no-eventfd")
        .mov_dx(TESTDEV_PORT + 4)
        .in_eax_dx()
        .report() // the offset that counts
        .mov_dx(TESTDEV_PORT + 12)
        .in_eax_dx()
        .report() // the count before
        .mov_dx(TESTDEV_PORT + 0x83)
        .mov_al(0xfa)
        .out_dx_al()
        .mov_dx(TESTDEV_PORT + 12)
        .in_eax_dx()
        .report() // the count after
        .done();
    guest.load(&asm.code);
    let run = guest.run(&[&io]);
    assert_eq!(run.reports.len(), 3);
    assert_eq!(run.reports[0], 0x83);
    assert_eq!(run.reports[2], run.reports[1] + 1, "the write at 0x83 counted");
    assert_eq!(run.io_served, 5, "every port access is one exit");
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_trapped_page_exits_once_per_access() {
    let mut guest = Guest::new();
    let edu = guest.vm.open_device(edu()).unwrap();
    let hooked = Arc::new(AtomicUsize::new(0));
    let count = hooked.clone();
    let builder = edu.region_builder(RegionIndex::bar(0).unwrap()).unwrap();
    // SAFETY: the hook only increments an atomic counter.
    let region = unsafe {
        builder.hook(move |_| {
            count.fetch_add(1, Ordering::Relaxed);
        })
    }
    .policy(MapPolicy::trap_range(0..0x1000))
    .build()
    .unwrap();
    let bar0 = BarPassthrough::new(&guest.vm, region, EDU_GPA).unwrap();
    assert_eq!(bar0.slots().len(), 1, "the pages after the trapped one");
    let mut asm = Asm::default();
    asm.set_ds(EDU_SEG);
    for _ in 0..3 {
        asm.load(ID).report(); // trapped: 3 exits
    }
    asm.store(LIVENESS, 0xf0f0_0f0f).load(LIVENESS).report(); // trapped: 2 exits
    asm.load(0x1000).report().load(0x2000).report(); // mapped: no exit
    asm.done();
    guest.load(&asm.code);
    let run = guest.run(&[&bar0]);
    assert_eq!(
        run.reports,
        [
            ID_VALUE,
            ID_VALUE,
            ID_VALUE,
            0x0f0f_f0f0,
            0xffff_ffff,
            0xffff_ffff
        ]
    );
    println!("MMIO exits: {} for 5 trapped accesses", run.mmio_served);
    assert_eq!(
        run.mmio_served, 5,
        "one exit per trapped access, none for mapped pages"
    );
    assert_eq!(hooked.load(Ordering::Relaxed), 5, "the access hook saw each");
    assert!(run.mmio_unserved.is_empty());
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_drop_removes_the_slots_and_move_follows_the_guest() {
    const MOVED: u64 = 0x4_0000;
    let mut guest = Guest::new();
    let edu = guest.vm.open_device(edu()).unwrap();
    let mut bar0 = BarPassthrough::new(&guest.vm, edu.bar(0).unwrap(), EDU_GPA).unwrap();
    let slots = bar0.slots();

    bar0.move_to(MOVED).unwrap();
    guest.load(&read_id((MOVED >> 4) as u16, 1));
    let run = guest.run(&[&bar0]);
    assert_eq!(run.reports, [ID_VALUE]);
    assert_eq!(
        (run.mmio_served, run.mmio_unserved.len()),
        (0, 0),
        "moved: no exit"
    );
    guest.load(&read_id(EDU_SEG, 1));
    let run = guest.run(&[&bar0]);
    assert_eq!(
        run.mmio_unserved,
        [EDU_GPA],
        "the old address exits, and is not the BAR's"
    );

    guest.load(&read_id((MOVED >> 4) as u16, 2));
    drop(bar0);
    let run = guest.run(&[]);
    assert_eq!(
        run.mmio_unserved,
        [MOVED, MOVED],
        "after the drop every access exits"
    );
    assert_eq!(run.reports, [0xffff_ffff; 2]);

    // The slot numbers are free again.
    let again = BarPassthrough::new(&guest.vm, edu.bar(0).unwrap(), EDU_GPA).unwrap();
    assert_eq!(again.slots(), slots);
}
