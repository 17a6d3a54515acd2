//! A minimal VMM that boots Linux with PCI devices passed through by barmap
//! (feature `kvm`): one vCPU, guest RAM, the in-kernel irqchip and PIT, a
//! 16550 console on stdout, a PCI host bridge on configuration mechanism #1,
//! and a barmap virtual function for each device given. Nothing in it knows
//! any device: the guest's own drivers find them on the bus.
//!
//! ```text
//! vmm --kernel bzImage --initramfs initrd.cpio --cmdline "console=ttyS0 ..." [ADDR...]
//! ```
//!
//! The guest's command line needs `console=ttyS0` for its console and
//! `reboot=t` (with `panic=-1`) so that a reboot or a panic ends in a triple
//! fault, which ends the VMM (exit status 0 after a shutdown). At the end
//! the VMM prints on stderr the boot's duration and its exits, by kind.

mod boot;
mod pci;
mod serial;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use barmap::PciAddress;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit};

/// Every error of the VMM, with what it was doing.
pub type VmmError = Box<dyn std::error::Error>;

#[derive(clap::Parser)]
struct Cli {
    /// The kernel (bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// The initramfs (cpio).
    #[arg(long)]
    initramfs: PathBuf,
    /// The kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=t panic=-1")]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    mem: u64,
    /// PCI addresses of the devices to pass through (bound to vfio-pci).
    addrs: Vec<PciAddress>,
}

/// What the vCPU's exits were, for the report at the end.
#[derive(Default)]
struct Exits {
    total: u64,
    serial: u64,
    /// Port accesses nobody serves (reads get all-ones), per port.
    other_ports: BTreeMap<u16, u64>,
    /// MMIO exits nobody serves, per page.
    other_mmio: BTreeMap<u64, u64>,
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    if let Err(e) = run(&cli) {
        eprintln!("vmm: error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), VmmError> {
    let start = Instant::now();
    let kvm = Kvm::new().map_err(|e| format!("opening /dev/kvm: {e}"))?;
    let vm = kvm.create_vm()?;
    vm.set_tss_address(0xfffb_d000)?;
    vm.set_identity_map_address(0xfffb_c000)?;
    vm.create_irq_chip()?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })?;
    let ram = boot::ram(&vm, cli.mem << 20)?;
    let entry = boot::load(&ram, &cli.kernel, &cli.initramfs, &cli.cmdline)?;
    let mut console = serial::Console::new(&vm)?;
    let mut bus = pci::Bus::new();
    if !cli.addrs.is_empty() {
        return Err("passing devices through is not wired up yet".into());
    }
    bus.assign(&[])?;

    let mut vcpu = vm.create_vcpu(0)?;
    boot::setup_vcpu(&kvm, &vcpu, entry)?;
    eprintln!(
        "vmm: booting {} ({} MiB RAM) after {:.2}s of setup",
        cli.kernel.display(),
        cli.mem,
        start.elapsed().as_secs_f64()
    );
    let mut exits = Exits::default();
    let end = loop {
        exits.total += 1;
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if console.read(port, data) {
                    exits.serial += 1;
                } else if !bus.io_in(port, data)? {
                    data.fill(0xff);
                    *exits.other_ports.entry(port).or_default() += 1;
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if console.write(port, data)? {
                    exits.serial += 1;
                } else if !bus.io_out(port, data)? {
                    *exits.other_ports.entry(port).or_default() += 1;
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                data.fill(0xff);
                *exits.other_mmio.entry(addr & !0xfff).or_default() += 1;
            }
            Ok(VcpuExit::MmioWrite(addr, _)) => {
                *exits.other_mmio.entry(addr & !0xfff).or_default() += 1;
            }
            Ok(VcpuExit::Shutdown) => break "shutdown (triple fault)",
            Ok(VcpuExit::SystemEvent(..)) => break "system event",
            Ok(VcpuExit::Hlt) => break "halt",
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                let other = format!("{other:?}");
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
                // SAFETY: the exit reason says which member of the union KVM filled.
                let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                return Err(format!(
                    "unexpected exit {other} at rip {rip:#x} (suberror {}, data {:x?})",
                    internal.suberror,
                    &internal.data[..internal.ndata as usize]
                )
                .into());
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("KVM_RUN: {e}").into()),
        }
    };
    eprintln!(
        "vmm: guest ended: {end} after {:.2}s",
        start.elapsed().as_secs_f64()
    );
    eprintln!(
        "vmm: exits: {} total, {} serial, {} PCI config, {} other ports, {} other MMIO",
        exits.total,
        exits.serial,
        bus.accesses,
        exits.other_ports.values().sum::<u64>(),
        exits.other_mmio.values().sum::<u64>()
    );
    for (port, n) in &exits.other_ports {
        eprintln!("vmm: exits: port {port:#06x}: {n}");
    }
    for (page, n) in &exits.other_mmio {
        eprintln!("vmm: exits: MMIO page {page:#x}: {n}");
    }
    Ok(())
}
