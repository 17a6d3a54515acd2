//! A one-vCPU real-mode KVM guest for the passthrough tests and bench: 64 KiB
//! of RAM at guest address 0, code at [`CODE`], the in-kernel irqchip with
//! the local APIC enabled, and a tiny assembler for the instructions the
//! programs use.
#![allow(dead_code)] // the test and the bench use different parts

use std::sync::Arc;

use barmap::kvm::{BarPassthrough, GsiRoutes, Vm};
use barmap::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

/// Guest RAM: 64 KiB at guest address 0.
pub const RAM_SIZE: usize = 0x1_0000;
/// Where the program is loaded and starts (CS = 0).
pub const CODE: u64 = 0x1000;
/// The stack top (SS = 0).
pub const STACK: u16 = 0x8000;
/// A 32-bit `out` to this port reports a value to the test.
pub const REPORT: u8 = 0x10;
/// An `out` to this port ends the program.
pub const DONE: u8 = 0xf4;
/// The local APIC's spurious-interrupt vector register (bit 8: APIC enabled).
const APIC_SVR: usize = 0xf0;

/// What one run of the program did.
#[derive(Debug, Default)]
pub struct Run {
    /// The values reported with `out REPORT`.
    pub reports: Vec<u32>,
    /// MMIO exits a passthrough served.
    pub mmio_served: usize,
    /// Port I/O exits a passthrough served.
    pub io_served: usize,
    /// Addresses of MMIO exits nobody served (reads get all-ones).
    pub mmio_unserved: Vec<u64>,
    /// The errors passthroughs returned for exits they served.
    pub errors: Vec<barmap::Error>,
}

pub struct Guest {
    pub vm: Vm,
    pub ram: GuestMemoryMmap,
    vcpu: VcpuFd,
}

impl Guest {
    /// A VM with RAM as slot 0 (barmap allocates from slot 1 and GSI 24 on).
    pub fn new() -> Guest {
        let kvm = Kvm::new().expect("open /dev/kvm");
        let fd = Arc::new(kvm.create_vm().expect("create a VM"));
        fd.set_tss_address(0xfffb_d000).unwrap();
        fd.create_irq_chip().expect("in-kernel irqchip");
        let vm = Vm::new(&kvm, GsiRoutes::new(fd, 24..u32::MAX), 1..u32::MAX);
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
        let host = ram.get_host_address(GuestAddress(0)).unwrap();
        let slot = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM_SIZE as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: `ram` is a private anonymous mapping kept alive in `Guest`,
        // which outlives the VM's use of it (the VM is dropped with `Guest`).
        unsafe { vm.fd().set_user_memory_region(slot) }.unwrap();
        let vcpu = vm.fd().create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        for seg in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.ss,
            &mut sregs.fs,
            &mut sregs.gs,
        ] {
            seg.base = 0;
            seg.selector = 0;
        }
        vcpu.set_sregs(&sregs).unwrap();
        let mut lapic = vcpu.get_lapic().unwrap();
        let svr = 0x1ffu32.to_le_bytes();
        for (i, b) in svr.iter().enumerate() {
            lapic.regs[APIC_SVR + i] = *b as _;
        }
        vcpu.set_lapic(&lapic).unwrap();
        Guest { vm, ram, vcpu }
    }

    /// Loads `code` at [`CODE`] and points the vCPU at it (interrupts off).
    pub fn load(&mut self, code: &[u8]) {
        self.ram.write_slice(code, GuestAddress(CODE)).unwrap();
        self.restart(0);
    }

    /// Points the vCPU at [`CODE`] again with ECX = `ecx`.
    pub fn restart(&mut self, ecx: u64) {
        self.restart_at(CODE, ecx);
    }

    /// Points the vCPU at `rip` with ECX = `ecx` (interrupts off).
    pub fn restart_at(&mut self, rip: u64, ecx: u64) {
        let mut regs = self.vcpu.get_regs().unwrap();
        regs.rip = rip;
        regs.rflags = 2;
        regs.rsp = u64::from(STACK);
        regs.rcx = ecx;
        self.vcpu.set_regs(&regs).unwrap();
    }

    /// Sets interrupt vector `vector`'s real-mode handler to `CS:IP` 0:`ip`.
    pub fn set_handler(&self, vector: u8, ip: u16) {
        let entry = u32::from(ip);
        self.ram
            .write_obj(entry, GuestAddress(u64::from(vector) * 4))
            .unwrap();
    }

    /// Ends `asm` with a wait of up to 50,000,000 iterations for the byte at
    /// ES:`flag` to be set, then `out DONE`; appends the handler of interrupt
    /// `vector`, which runs `handler`, sets the flag and returns; clears the
    /// flag, loads the program and installs the handler.
    pub fn load_waiting_for(&mut self, mut asm: Asm, flag: u16, vector: u8, handler: impl FnOnce(&mut Asm)) {
        asm.mov_ecx(50_000_000);
        let wait = asm.here();
        asm.es_cmp8(flag, 0);
        // jnz out of the loop (forward): skip "dec ecx; jnz wait" (2 + 2 bytes).
        asm.code.extend_from_slice(&[0x75, 4]);
        asm.dec_ecx().jnz(wait).done();
        let entry = asm.here();
        handler(&mut asm);
        asm.es_store8(flag, 1).iret();
        self.ram.write_obj(0u8, GuestAddress(flag.into())).unwrap();
        self.load(&asm.code);
        self.set_handler(vector, entry);
    }

    /// Runs until `out DONE`, serving exits through `bars`; panics if a
    /// passthrough returns an error.
    pub fn run(&mut self, bars: &[&BarPassthrough]) -> Run {
        let run = self.run_refused(bars);
        assert!(run.errors.is_empty(), "passthrough access: {:?}", run.errors);
        run
    }

    /// Runs until `out DONE`, serving exits through `bars` and recording
    /// the errors they return (an exit that fails still counts as served).
    pub fn run_refused(&mut self, bars: &[&BarPassthrough]) -> Run {
        self.run_serving(|vcpu| {
            for bar in bars {
                if bar.handle_exit(vcpu)? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    /// Runs until `out DONE`, serving MMIO and port I/O exits with `serve`
    /// (`Ok(false)`: not served) and recording the errors it returns (an
    /// exit that fails still counts as served).
    pub fn run_serving(&mut self, mut serve: impl FnMut(&mut VcpuFd) -> barmap::Result<bool>) -> Run {
        let mut run = Run::default();
        loop {
            let exit = self.vcpu.run().expect("KVM_RUN");
            // The harness's own ports first; then the exit is the bars'.
            let (mmio, read) = match exit {
                VcpuExit::IoOut(port, _) if port == u16::from(DONE) => return run,
                VcpuExit::IoOut(port, data) if port == u16::from(REPORT) => {
                    let mut word = [0u8; 4];
                    word[..data.len()].copy_from_slice(data);
                    run.reports.push(u32::from_le_bytes(word));
                    continue;
                }
                VcpuExit::MmioRead(addr, _) => (Some(addr), true),
                VcpuExit::MmioWrite(addr, _) => (Some(addr), false),
                VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => (None, false),
                other => panic!("unexpected exit {other:?}"),
            };
            let served = match serve(&mut self.vcpu) {
                Ok(served) => served,
                Err(e) => {
                    run.errors.push(e);
                    true
                }
            };
            match mmio {
                _ if !served && mmio.is_none() => panic!("a port I/O exit no passthrough served"),
                None => run.io_served += 1,
                Some(_) if served => run.mmio_served += 1,
                Some(addr) => {
                    run.mmio_unserved.push(addr);
                    if read {
                        self.vcpu.get_kvm_run().__bindgen_anon_1.mmio.data = [0xff; 8];
                    }
                }
            }
        }
    }
}

/// A 16-bit real-mode assembler for the few instructions the programs use.
/// Memory operands are `[disp16]` in DS (or ES with `es_`).
#[derive(Default)]
pub struct Asm {
    pub code: Vec<u8>,
}

impl Asm {
    fn emit(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }

    /// The guest address of the next instruction.
    pub fn here(&self) -> u16 {
        (CODE as usize + self.code.len()) as u16
    }

    /// `mov ax, seg; mov ds, ax`
    pub fn set_ds(&mut self, seg: u16) -> &mut Self {
        self.emit(&[0xb8]).emit(&seg.to_le_bytes()).emit(&[0x8e, 0xd8])
    }

    /// `mov eax, imm32`
    pub fn mov_eax(&mut self, imm: u32) -> &mut Self {
        self.emit(&[0x66, 0xb8]).emit(&imm.to_le_bytes())
    }

    /// `mov ecx, imm32`
    pub fn mov_ecx(&mut self, imm: u32) -> &mut Self {
        self.emit(&[0x66, 0xb9]).emit(&imm.to_le_bytes())
    }

    /// `mov eax, [ds:off]`
    pub fn load(&mut self, off: u16) -> &mut Self {
        self.emit(&[0x66, 0xa1]).emit(&off.to_le_bytes())
    }

    /// `mov [ds:off], eax`
    pub fn store_eax(&mut self, off: u16) -> &mut Self {
        self.emit(&[0x66, 0xa3]).emit(&off.to_le_bytes())
    }

    /// `mov dword [ds:off], imm32`
    pub fn store(&mut self, off: u16, imm: u32) -> &mut Self {
        self.emit(&[0x66, 0xc7, 0x06])
            .emit(&off.to_le_bytes())
            .emit(&imm.to_le_bytes())
    }

    /// `mov byte [es:off], imm8`
    pub fn es_store8(&mut self, off: u16, imm: u8) -> &mut Self {
        self.emit(&[0x26, 0xc6, 0x06])
            .emit(&off.to_le_bytes())
            .emit(&[imm])
    }

    /// `cmp byte [es:off], imm8`
    pub fn es_cmp8(&mut self, off: u16, imm: u8) -> &mut Self {
        self.emit(&[0x26, 0x80, 0x3e])
            .emit(&off.to_le_bytes())
            .emit(&[imm])
    }

    /// `test al, imm8`
    pub fn test_al(&mut self, imm: u8) -> &mut Self {
        self.emit(&[0xa8, imm])
    }

    /// `dec ecx`
    pub fn dec_ecx(&mut self) -> &mut Self {
        self.emit(&[0x66, 0x49])
    }

    /// `jnz target` (short).
    pub fn jnz(&mut self, target: u16) -> &mut Self {
        let rel = i32::from(target) - i32::from(self.here()) - 2;
        self.emit(&[0x75, i8::try_from(rel).expect("short jump") as u8])
    }

    /// `mov dx, port`
    pub fn mov_dx(&mut self, port: u16) -> &mut Self {
        self.emit(&[0xba]).emit(&port.to_le_bytes())
    }

    /// `mov al, imm8`
    pub fn mov_al(&mut self, imm: u8) -> &mut Self {
        self.emit(&[0xb0, imm])
    }

    /// `out dx, al`
    pub fn out_dx_al(&mut self) -> &mut Self {
        self.emit(&[0xee])
    }

    /// `in eax, dx`
    pub fn in_eax_dx(&mut self) -> &mut Self {
        self.emit(&[0x66, 0xed])
    }

    /// `mov cx, imm16`
    pub fn mov_cx(&mut self, imm: u16) -> &mut Self {
        self.emit(&[0xb9]).emit(&imm.to_le_bytes())
    }

    /// `mov si, imm16`
    pub fn mov_si(&mut self, imm: u16) -> &mut Self {
        self.emit(&[0xbe]).emit(&imm.to_le_bytes())
    }

    /// `mov di, imm16`
    pub fn mov_di(&mut self, imm: u16) -> &mut Self {
        self.emit(&[0xbf]).emit(&imm.to_le_bytes())
    }

    /// `cld`
    pub fn cld(&mut self) -> &mut Self {
        self.emit(&[0xfc])
    }

    /// `rep insb` (ES:DI, CX times, from port DX)
    pub fn rep_insb(&mut self) -> &mut Self {
        self.emit(&[0xf3, 0x6c])
    }

    /// `rep insw`
    pub fn rep_insw(&mut self) -> &mut Self {
        self.emit(&[0xf3, 0x6d])
    }

    /// `rep outsb` (DS:SI, CX times, to port DX)
    pub fn rep_outsb(&mut self) -> &mut Self {
        self.emit(&[0xf3, 0x6e])
    }

    /// `rep outsw`
    pub fn rep_outsw(&mut self) -> &mut Self {
        self.emit(&[0xf3, 0x6f])
    }

    /// `out port, eax`
    pub fn out_eax(&mut self, port: u8) -> &mut Self {
        self.emit(&[0x66, 0xe7, port])
    }

    /// `out REPORT, eax`
    pub fn report(&mut self) -> &mut Self {
        self.out_eax(REPORT)
    }

    /// `out DONE, eax`
    pub fn done(&mut self) -> &mut Self {
        self.out_eax(DONE)
    }

    /// `sti`
    pub fn sti(&mut self) -> &mut Self {
        self.emit(&[0xfb])
    }

    /// `iret`
    pub fn iret(&mut self) -> &mut Self {
        self.emit(&[0xcf])
    }

    /// Waits while `(dword [ds:off] & mask) != 0` (a busy bit).
    pub fn wait_clear(&mut self, off: u16, mask: u8) -> &mut Self {
        let top = self.here();
        self.load(off).test_al(mask).jnz(top)
    }
}
