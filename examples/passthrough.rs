//! A minimal VMM that passes QEMU's `edu` through to a KVM guest with
//! barmap (feature `kvm`): one vCPU in real mode, 16 KiB of RAM, edu BAR0 as
//! a memory slot, and a guest program of a few instructions that reads the
//! ID register, checks liveness and computes a factorial on the device,
//! reporting each value with an `out`. The VMM prints what the guest saw.
//!
//! ```text
//! passthrough ADDR      ADDR defaults to $BARMAP_EDU
//! ```

use std::error::Error as StdError;
use std::sync::Arc;

use barmap::kvm::{BarPassthrough, GsiRoutes, Vm};
use barmap::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use barmap::PciAddress;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Guest RAM at guest address 0, with the program at `CODE`.
const RAM_SIZE: usize = 0x4000;
const CODE: u64 = 0x1000;
/// edu BAR0 in the guest: reachable in real mode with DS = 0x2000.
const EDU_GPA: u64 = 0x2_0000;
/// The guest reports a value with `out 0x10, eax` and stops with `out 0xf4, eax`.
const REPORT: u16 = 0x10;
const DONE: u16 = 0xf4;

/// The guest program (16-bit real mode), assembled by hand.
#[rustfmt::skip]
const PROGRAM: &[u8] = &[
    0xb8, 0x00, 0x20,                   // mov ax, 0x2000   (EDU_GPA >> 4)
    0x8e, 0xd8,                         // mov ds, ax
    0x66, 0xa1, 0x00, 0x00,             // mov eax, [0x00]  ID register
    0x66, 0xe7, 0x10,                   // out 0x10, eax
    0x66, 0xc7, 0x06, 0x04, 0x00,       // mov dword [0x04], 0x12345678  liveness
    0x78, 0x56, 0x34, 0x12,
    0x66, 0xa1, 0x04, 0x00,             // mov eax, [0x04]
    0x66, 0xe7, 0x10,                   // out 0x10, eax
    0x66, 0xc7, 0x06, 0x08, 0x00,       // mov dword [0x08], 10  factorial
    0x0a, 0x00, 0x00, 0x00,
    0x66, 0xa1, 0x20, 0x00,             // wait: mov eax, [0x20]  status
    0xa8, 0x01,                         // test al, 1  computing
    0x75, 0xf9,                         // jnz wait
    0x66, 0xa1, 0x08, 0x00,             // mov eax, [0x08]
    0x66, 0xe7, 0x10,                   // out 0x10, eax
    0x66, 0xe7, 0xf4,                   // out 0xf4, eax  done
];

#[derive(clap::Parser)]
struct Cli {
    /// edu's PCI address (bound to vfio-pci).
    #[arg(env = "BARMAP_EDU")]
    addr: PciAddress,
}

fn main() -> Result<(), Box<dyn StdError>> {
    let cli = <Cli as clap::Parser>::parse();
    let kvm = Kvm::new()?;
    // Slot 0 is the VMM's RAM; barmap takes slots from 1 and GSIs from 24 on.
    let fd = Arc::new(kvm.create_vm()?);
    let vm = Vm::new(&kvm, GsiRoutes::new(fd, 24..u32::MAX), 1..u32::MAX);

    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)])?;
    ram.write_slice(PROGRAM, GuestAddress(CODE))?;
    let slot = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: RAM_SIZE as u64,
        userspace_addr: ram.get_host_address(GuestAddress(0))? as u64,
    };
    // SAFETY: `ram` is an anonymous mapping that lives until the end of
    // `main`, after the VM's last use; the guest reaches it only through KVM.
    unsafe { vm.fd().set_user_memory_region(slot)? };

    let edu = vm.open_device(cli.addr)?;
    let bar0 = BarPassthrough::new(&vm, edu.bar(0)?, EDU_GPA)?;
    println!(
        "edu {} BAR0 ({:#x} bytes) at guest address {EDU_GPA:#x}, memory slots {:?}",
        cli.addr,
        bar0.region().size(),
        bar0.slots()
    );

    let mut vcpu = vm.fd().create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;

    let mut seen = Vec::new();
    let mut exits = 0;
    loop {
        exits += 1;
        match vcpu.run()? {
            VcpuExit::IoOut(REPORT, data) => {
                let mut word = [0u8; 4];
                word[..data.len()].copy_from_slice(data);
                seen.push(u32::from_le_bytes(word));
            }
            VcpuExit::IoOut(DONE, _) | VcpuExit::Hlt => break,
            // An exit of edu's BAR (none here: the guest reaches it through the slot).
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => {
                if !bar0.handle_exit(&mut vcpu)? {
                    return Err("an MMIO exit outside edu's BAR".into());
                }
            }
            other => return Err(format!("unexpected exit {other:?}").into()),
        }
    }
    let [id, liveness, factorial] = seen[..] else {
        return Err(format!("the guest reported {seen:x?}").into());
    };
    println!("guest saw ID register {id:#010x}");
    println!("guest saw liveness {liveness:#010x} after writing 0x12345678");
    println!("guest saw 10! = {factorial} ({factorial:#x})");
    println!("{exits} exits (the guest's 4 outs; edu's registers took none)");
    if id != 0x0100_00ed || liveness != !0x1234_5678 || factorial != 3_628_800 {
        return Err("the guest saw wrong values".into());
    }
    Ok(())
}
