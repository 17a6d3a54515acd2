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
    asm.sti();
    guest.load_waiting_for(asm, FLAG, VECTOR, |h| {
        h.mov_eax(MARK).report();
    });

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

/// Where the string port I/O test keeps its buffers in guest RAM (ES = DS = 0).
const BUFFERS: u16 = 0x9000;
const BUFFER_SPAN: u16 = 0x800;
/// The source bytes of its `rep outs`.
const OUT_SOURCE: u16 = 0xe000;

/// `rep insb`/`rep insw` of several counts from pci-testdev's I/O BAR into
/// guest RAM, and `rep outsb`/`rep outsw` to its counting offset: KVM
/// batches each `rep ins` into one exit of `count` elements, and every
/// element is one device access at the same port.
#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_string_port_io_is_one_access_per_element() {
    let mut guest = Guest::new();
    let testdev = guest.vm.open_device(testdev()).unwrap();
    let io = BarPassthrough::new(&guest.vm, testdev.bar(1).unwrap(), TESTDEV_PORT.into()).unwrap();
    // (BAR offset, element width, count, the bytes one element reads) with
    // I/O test 0 selected: offset 4 holds 0x83 (a u16 of 0x0083), 16 the
    // name "portio-no-eventfd", and the BAR's last byte 0.
    let ins: [(u16, usize, u16, &[u8]); 10] = [
        (16, 1, 1, b"p"),
        (16, 1, 2, b"p"),
        (16, 1, 3, b"p"),
        (16, 1, 4, b"p"),
        (16, 1, 7, b"p"),
        (16, 1, 1000, b"p"),
        (4, 2, 1, &[0x83, 0]),
        (4, 2, 3, &[0x83, 0]),
        (4, 2, 2, &[0x83, 0]),
        (0xff, 1, 5, &[0]),
    ];
    // (BAR offset, element width, source bytes, writes that count): a byte
    // 0xfa landing on offset 0x83 counts, so an element of 0xfa at 0x83 (or
    // 0xfa00 at 0x82) counts once.
    let outs: [(u16, usize, &[u8], u32); 3] = [
        (0x83, 1, &[0xfa, 0xce, 0xfa, 0xfa], 3),
        (0x83, 1, &[0xfa, 0xfa, 0xfa], 3),
        (0x82, 2, &[0x00, 0xfa, 0x00, 0xfa], 2),
    ];
    let mut asm = Asm::default();
    asm.mov_dx(TESTDEV_PORT).mov_al(0).out_dx_al().cld(); // select I/O test 0
    for (i, &(offset, width, count, _)) in ins.iter().enumerate() {
        let buffer = BUFFERS + i as u16 * BUFFER_SPAN;
        let len = usize::from(count) * width;
        guest
            .ram
            .write_slice(&vec![0xaa; len + 16], GuestAddress(buffer.into()))
            .unwrap();
        asm.mov_dx(TESTDEV_PORT + offset).mov_di(buffer).mov_cx(count);
        if width == 1 {
            asm.rep_insb()
        } else {
            asm.rep_insw()
        };
    }
    asm.mov_dx(TESTDEV_PORT + 12).in_eax_dx().report(); // the count before
    for (i, &(offset, width, bytes, _)) in outs.iter().enumerate() {
        let source = OUT_SOURCE + i as u16 * 0x10;
        guest.ram.write_slice(bytes, GuestAddress(source.into())).unwrap();
        asm.mov_dx(TESTDEV_PORT + offset)
            .mov_si(source)
            .mov_cx((bytes.len() / width) as u16);
        if width == 1 {
            asm.rep_outsb()
        } else {
            asm.rep_outsw()
        };
        asm.mov_dx(TESTDEV_PORT + 12).in_eax_dx().report();
    }
    asm.done();
    guest.load(&asm.code);
    let run = guest.run(&[&io]);

    for (i, &(offset, width, count, element)) in ins.iter().enumerate() {
        let buffer = BUFFERS + i as u16 * BUFFER_SPAN;
        let len = usize::from(count) * width;
        let mut got = vec![0u8; len + 16];
        guest
            .ram
            .read_slice(&mut got, GuestAddress(buffer.into()))
            .unwrap();
        let want: Vec<u8> = element.iter().copied().cycle().take(len).collect();
        assert_eq!(
            got[..len],
            want[..],
            "rep ins of {count} x {width} bytes at BAR offset {offset:#x}"
        );
        assert_eq!(got[len..], [0xaa; 16], "nothing past {count} elements");
    }
    let counted: Vec<u32> = run.reports.windows(2).map(|w| w[1] - w[0]).collect();
    let want: Vec<u32> = outs.iter().map(|o| o.3).collect();
    assert_eq!(counted, want, "each element of rep outs is its own write");
    let elements: usize = ins.iter().map(|i| usize::from(i.2)).sum::<usize>()
        + outs.iter().map(|o| o.2.len() / o.1).sum::<usize>();
    println!("{elements} string I/O elements in {} port exits", run.io_served);
    assert!(
        run.io_served < elements / 4,
        "KVM batched the rep ins elements ({} exits for {elements} elements)",
        run.io_served
    );
}

/// ivshmem's address in the guest (`BARMAP_IVSHMEM`, set by the guest's /init).
fn ivshmem() -> barmap::PciAddress {
    std::env::var("BARMAP_IVSHMEM")
        .expect(
            "BARMAP_IVSHMEM is not set: ivshmem-plain must be bound to vfio-pci (qemu-scripts/guest-test.sh)",
        )
        .parse()
        .expect("BARMAP_IVSHMEM is a PCI address")
}

/// ivshmem's BAR0 (256 bytes of registers) is mapped as its whole page and
/// passed through as a whole-page slot: its interrupt mask register round
/// trips with no exit, and the rest of the page reaches no register.
#[test]
#[ignore = "needs QEMU ivshmem-plain bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_sub_page_bar_is_a_whole_page_slot() {
    const GPA: u64 = 0x3_0000;
    const INTR_MASK: u16 = 0x00;
    let mut guest = Guest::new();
    let ivshmem = guest.vm.open_device(ivshmem()).unwrap();
    let region = ivshmem.bar(0).unwrap();
    assert_eq!(region.size(), 0x100);
    let mapped: Vec<(u64, u64)> = region.mapped_ranges().iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(mapped, [(0, 0x100)], "vfio-pci lets the sub-page BAR be mapped");
    let bar0 = BarPassthrough::new(&guest.vm, region, GPA).unwrap();
    assert_eq!(bar0.slots().len(), 1);
    let mut asm = Asm::default();
    asm.set_ds((GPA >> 4) as u16)
        .store(INTR_MASK, 0x1234_5678)
        .load(INTR_MASK)
        .report()
        .load(0x800)
        .report() // past the BAR: no device
        .store(0x100, 0xdead_beef)
        .store(0xffc, 0xdead_beef)
        .load(INTR_MASK)
        .report()
        .done();
    guest.load(&asm.code);
    let run = guest.run(&[&bar0]);
    println!("past the BAR's end the guest read {:#x}", run.reports[1]);
    assert_eq!(run.reports[0], 0x1234_5678, "the register round trips");
    assert_eq!(
        run.reports[2], 0x1234_5678,
        "writes past the BAR's end reach no register"
    );
    assert_eq!(
        (run.mmio_served, run.mmio_unserved.len()),
        (0, 0),
        "no MMIO exit in the page"
    );
    bar0.region().write::<u32>(INTR_MASK.into(), 0).unwrap();
    assert_eq!(bar0.region().read::<u32>(INTR_MASK.into()).unwrap(), 0);
}

/// A region opened without write permission becomes read-only slots: guest
/// reads take no exit, a guest write exits and is refused (ReadOnly), and
/// the device never sees it. The write is the guest's first touch of the
/// mapping: KVM turns a write to a populated read-only host page into an MMIO
/// exit by itself, but on a page the host has not faulted in yet only a
/// `KVM_MEM_READONLY` slot exits instead of failing `KVM_RUN` with `EFAULT`.
#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_read_only_region_refuses_guest_writes() {
    use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_WRITE;
    let mut guest = Guest::new();
    let edu = guest.vm.open_device(edu()).unwrap();
    let writable = edu.bar(0).unwrap();
    writable.write::<u32>(LIVENESS.into(), 0x1111_1111).unwrap();
    let builder = edu.region_builder(RegionIndex::bar(0).unwrap()).unwrap();
    let flags = barmap::RegionFlags::from_bits(writable.info().flags.bits() & !VFIO_REGION_INFO_FLAG_WRITE);
    let read_only = builder.flags(flags).build().unwrap();
    assert!(read_only.is_fully_mapped() && !read_only.info().flags.writable());
    let bar0 = BarPassthrough::new(&guest.vm, read_only, EDU_GPA).unwrap();
    let mut asm = Asm::default();
    asm.set_ds(EDU_SEG)
        .store(LIVENESS, 0x1234_5678)
        .load(ID)
        .report()
        .load(LIVENESS)
        .report()
        .done();
    guest.load(&asm.code);
    let run = guest.run_refused(&[&bar0]);
    assert_eq!(
        run.reports,
        [ID_VALUE, !0x1111_1111],
        "the write did not reach edu"
    );
    assert_eq!(run.mmio_served, 1, "the write exits, the reads do not");
    assert!(
        matches!(run.errors[..], [barmap::Error::ReadOnly { .. }]),
        "{:?}",
        run.errors
    );
    assert!(run.mmio_unserved.is_empty());
}

/// KVM takes the VMM's table with both default routes of GSIs 0-15 (PIC and
/// IOAPIC) beside barmap's MSI route, and a VMM route in barmap's GSI range
/// is refused.
#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci and /dev/kvm (qemu-scripts/guest-test.sh)"]
fn kvm_vmm_default_routes_commit_beside_msi_routes() {
    use kvm_bindings::{
        kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQ_ROUTING_IRQCHIP,
    };
    let guest = Guest::new();
    let route = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    for gsi in 0..16 {
        let pic = if gsi < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        guest.vm.routes().add(route(gsi, pic, gsi % 8)).unwrap();
        guest
            .vm
            .routes()
            .add(route(gsi, KVM_IRQCHIP_IOAPIC, gsi))
            .unwrap();
    }
    for gsi in 16..24 {
        guest
            .vm
            .routes()
            .add(route(gsi, KVM_IRQCHIP_IOAPIC, gsi))
            .unwrap();
    }
    assert!(matches!(
        guest.vm.routes().add(route(24, KVM_IRQCHIP_IOAPIC, 0)),
        Err(barmap::Error::KvmGsiReserved {
            gsi: 24,
            first: 24,
            ..
        })
    ));
    assert_eq!(guest.vm.routes().entries().len(), 40);
    // The same routes again replace the ones there: KVM refuses a table with
    // two routes of one GSI to the same irqchip, so its taking the table
    // shows each route is there once.
    guest.vm.routes().add_x86_defaults().unwrap();
    assert_eq!(guest.vm.routes().entries().len(), 40);
    let edu = guest.vm.open_device(edu()).unwrap();
    let msi = edu.enable_msi(1).unwrap();
    let irq = guest
        .vm
        .route_msi(msi.vector(0).unwrap(), MsiMessage::fixed(0, 0x40))
        .unwrap();
    assert_eq!(irq.gsi(), 24);
    assert_eq!(guest.vm.routes().entries().len(), 41);
    irq.update(MsiMessage::fixed(0, 0x41)).unwrap();
    // The VMM's change after barmap's keeps barmap's route.
    guest.vm.routes().remove(23).unwrap();
    assert_eq!(guest.vm.routes().entries().len(), 40);
    drop(irq);
    assert_eq!(guest.vm.routes().entries().len(), 39);
}
