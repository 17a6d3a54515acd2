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
mod passthrough;
mod pci;
mod serial;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use barmap::kvm::{GsiRoutes, Vm};
use barmap::PciAddress;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Every error of the VMM, with what it was doing.
pub type VmmError = Box<dyn std::error::Error>;

/// barmap's GSIs start above the IOAPIC's 24 pins (the VMM's own routes);
/// its memory slots above slot 0 (guest RAM).
const BARMAP_GSIS: u32 = 24;
const BARMAP_SLOTS: u32 = 1;
/// The CMOS RTC's data port.
const RTC_DATA: u16 = 0x71;

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
    /// Stop the guest after this many seconds (0: never), with the exit
    /// report, and fail.
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// PCI addresses of the devices to pass through (bound to vfio-pci);
    /// without any the guest boots with the host bridge alone.
    addrs: Vec<PciAddress>,
}

/// The exits that no device served, for the report at the end.
#[derive(Default)]
struct Exits {
    total: u64,
    serial: u64,
    /// Port accesses nobody serves (reads get all-ones), per port.
    other_ports: BTreeMap<u16, u64>,
    /// MMIO exits nobody serves (reads get all-ones), per page.
    other_mmio: BTreeMap<u64, u64>,
}

/// A port or MMIO exit left for the passed-through functions.
enum Access {
    Port(u16),
    Mmio(u64),
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
    let fd = Arc::new(kvm.create_vm()?);
    fd.set_tss_address(0xfffb_d000)?;
    fd.set_identity_map_address(0xfffb_c000)?;
    fd.create_irq_chip()?;
    fd.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })?;
    // The VM's routing table: the irqchip pins are the VMM's, barmap adds
    // the routes of the devices' vectors.
    let routes = GsiRoutes::new(fd.clone(), BARMAP_GSIS..u32::MAX);
    routes.add_x86_defaults()?;
    let vm = Vm::new(&kvm, routes, BARMAP_SLOTS..u32::MAX);

    let ram = boot::ram(&fd, cli.mem << 20)?;
    let entry = boot::load(&ram, &cli.kernel, &cli.initramfs, &cli.cmdline)?;
    let mut console = serial::Console::new(&fd)?;
    let (functions, _dma) = passthrough::open(&vm, &cli.addrs, &ram, 0..cli.mem << 20)?;
    let irqs: Vec<u8> = functions.iter().map(|f| f.irq).collect();
    let mut bus = pci::Bus::new(functions)?;
    bus.assign(&irqs)?;

    let mut vcpu = fd.create_vcpu(0)?;
    boot::setup_vcpu(&kvm, &vcpu, entry)?;
    eprintln!(
        "vmm: booting {} ({} MiB RAM, {} devices) after {:.2}s of setup",
        cli.kernel.display(),
        cli.mem,
        cli.addrs.len(),
        start.elapsed().as_secs_f64()
    );
    let timed_out = watchdog(cli.timeout)?;
    let mut exits = Exits::default();
    let end = loop {
        exits.total += 1;
        let access = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if console.read(port, data) {
                    exits.serial += 1;
                    continue;
                }
                if bus.io_in(port, data)? {
                    continue;
                }
                // Absent ports read all-ones; the RTC's data port reads zero,
                // so that Linux's wait for the end of an RTC update (register
                // A's bit 7) ends at once.
                data.fill(if port == RTC_DATA { 0 } else { 0xff });
                Access::Port(port)
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if console.write(port, data)? {
                    exits.serial += 1;
                    continue;
                }
                if bus.io_out(port, data)? {
                    continue;
                }
                Access::Port(port)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                data.fill(0xff);
                Access::Mmio(addr)
            }
            Ok(VcpuExit::MmioWrite(addr, _)) => Access::Mmio(addr),
            Ok(VcpuExit::Shutdown) => break "shutdown (triple fault)",
            Ok(VcpuExit::SystemEvent(..)) => break "system event",
            Ok(VcpuExit::Hlt) => break "halt",
            Ok(VcpuExit::Intr) if timed_out.load(Ordering::Relaxed) => break "timeout",
            Ok(VcpuExit::Intr) => continue,
            Ok(other) => {
                let other = format!("{other:?}");
                return Err(unexpected(&mut vcpu, &other));
            }
            Err(e) if e.errno() == libc::EINTR && timed_out.load(Ordering::Relaxed) => break "timeout",
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(format!("KVM_RUN: {e}").into()),
        };
        let (at, io) = match access {
            Access::Port(port) => (u64::from(port), true),
            Access::Mmio(addr) => (addr, false),
        };
        if !bus
            .functions()
            .iter_mut()
            .any(|f| f.handle_exit(&mut vcpu, at, io))
        {
            match access {
                Access::Port(port) => *exits.other_ports.entry(port).or_default() += 1,
                Access::Mmio(addr) => *exits.other_mmio.entry(addr & !0xfff).or_default() += 1,
            }
        }
    };
    eprintln!(
        "vmm: guest ended: {end} after {:.2}s",
        start.elapsed().as_secs_f64()
    );
    report(&exits, &mut bus);
    if end == "timeout" {
        let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
        return Err(format!(
            "the guest still ran after {}s (--timeout), at rip {rip:#x}",
            cli.timeout
        )
        .into());
    }
    Ok(())
}

/// Does nothing: the signal only makes `KVM_RUN` return with `EINTR`.
extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// After `seconds` (unless 0), sets the returned flag and interrupts this
/// thread's `KVM_RUN` with a real-time signal, again every 100 ms until
/// the process ends (a signal between two runs is not lost for good).
fn watchdog(seconds: u64) -> Result<Arc<AtomicBool>, VmmError> {
    let flag = Arc::new(AtomicBool::new(false));
    if seconds == 0 {
        return Ok(flag);
    }
    let signal = SIGRTMIN();
    register_signal_handler(signal, kick)?;
    // SAFETY: pthread_self has no preconditions.
    let vcpu_thread = unsafe { libc::pthread_self() };
    let set = flag.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        set.store(true, Ordering::Relaxed);
        loop {
            // SAFETY: the vCPU thread is the main thread, alive as long as
            // the process, and the signal has a handler.
            unsafe { libc::pthread_kill(vcpu_thread, signal) };
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Ok(flag)
}

/// The error for an exit the VMM does not expect, with where the vCPU was.
fn unexpected(vcpu: &mut VcpuFd, exit: &str) -> VmmError {
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
    // SAFETY: only read for an internal error, for which KVM filled this
    // member of the union; for other exits its words are reported as
    // whatever they hold, which any bit pattern is valid for.
    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    format!(
        "unexpected exit {exit} at rip {rip:#x} (internal error {}, data {:x?})",
        internal.suberror,
        &internal.data[..ndata]
    )
    .into()
}

/// Prints the exits by kind and each function's BARs and exits.
fn report(exits: &Exits, bus: &mut pci::Bus<passthrough::Passthrough>) {
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
    for (i, f) in bus.functions().iter().enumerate() {
        f.report(i + 1);
    }
}
