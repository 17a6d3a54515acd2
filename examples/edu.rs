//! A complete userspace driver for QEMU's `edu` device on barmap: it
//! identifies the device, computes factorials waiting on MSI (on INTx where
//! MSI is unavailable), and DMA-copies a buffer through the device and back.
//!
//! ```text
//! edu [--intx] ADDR      ADDR defaults to $BARMAP_EDU
//! ```
//!
//! QEMU 7.2's edu aborts the VM on a DMA of 0 bytes or one touching its
//! buffer's last byte, so transfers here are at most 4095 bytes.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use barmap::dma::DmaMask;
use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::{Device, Error, Interrupts, IrqIndex, PciAddress, Region};

/// edu's BAR0 registers.
mod reg {
    pub const ID: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const FACTORIAL: u64 = 0x08;
    pub const STATUS: u64 = 0x20;
    pub const IRQ_STATUS: u64 = 0x24;
    pub const IRQ_ACK: u64 = 0x64;
    pub const DMA_SRC: u64 = 0x80;
    pub const DMA_DST: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_CMD: u64 = 0x98;
}

const STATUS_COMPUTING: u32 = 0x01;
const STATUS_IRQ_ON_DONE: u32 = 0x80;
const IRQ_FACTORIAL: u32 = 0x01;
const IRQ_DMA: u32 = 0x100;
const DMA_START: u64 = 1;
const DMA_TO_RAM: u64 = 2;
const DMA_IRQ: u64 = 4;
/// edu's DMA buffer in its own address space.
const EDU_BUF: u64 = 0x40000;
/// edu drives 28 address bits unless QEMU is told otherwise.
const EDU_DMA_MASK: DmaMask = DmaMask::bits(28);
const TIMEOUT: Duration = Duration::from_secs(2);

/// The driver: the device, its BAR, and its interrupt.
struct Edu {
    dev: Device,
    bar0: Region,
    irq: Interrupts,
}

impl Edu {
    fn open(addr: PciAddress, force_intx: bool) -> Result<Edu, Error> {
        let dev = Device::open(addr)?;
        let bar0 = dev.bar(0)?;
        // edu keeps its state across opens: start from a quiet device.
        bar0.write::<u32>(reg::STATUS, 0)?;
        bar0.write::<u32>(reg::IRQ_ACK, u32::MAX)?;
        let irq = match (force_intx, dev.enable_msi(1)) {
            (false, Ok(msi)) => msi,
            (true, Ok(msi)) => {
                drop(msi);
                dev.enable_intx()?
            }
            (_, Err(Error::NoSuchIrq { .. })) => dev.enable_intx()?,
            (_, Err(e)) => return Err(e),
        };
        Ok(Edu { dev, bar0, irq })
    }

    /// Waits for the interrupt, checks that `cause` raised it and acknowledges it.
    fn wait_irq(&self, cause: u32) -> Result<u64, Box<dyn StdError>> {
        let count = self.irq.vector(0)?.wait(TIMEOUT)?;
        let status = self.bar0.read::<u32>(reg::IRQ_STATUS)?;
        if status & cause == 0 {
            return Err(format!("interrupt status {status:#x} lacks {cause:#x}").into());
        }
        self.bar0.write::<u32>(reg::IRQ_ACK, status)?;
        Ok(count)
    }

    fn factorial(&self, n: u32) -> Result<u32, Box<dyn StdError>> {
        while self.bar0.read::<u32>(reg::STATUS)? & STATUS_COMPUTING != 0 {
            std::thread::yield_now();
        }
        self.bar0.write::<u32>(reg::STATUS, STATUS_IRQ_ON_DONE)?;
        self.bar0.write::<u32>(reg::FACTORIAL, n)?;
        self.wait_irq(IRQ_FACTORIAL)?;
        Ok(self.bar0.read::<u32>(reg::FACTORIAL)?)
    }

    /// One DMA transfer of `len` bytes (1..=4095), waited for on the interrupt.
    fn dma(&self, src: u64, dst: u64, len: u64, to_ram: bool) -> Result<Duration, Box<dyn StdError>> {
        let start = Instant::now();
        self.bar0.write::<u64>(reg::DMA_SRC, src)?;
        self.bar0.write::<u64>(reg::DMA_DST, dst)?;
        self.bar0.write::<u64>(reg::DMA_COUNT, len)?;
        let direction = if to_ram { DMA_TO_RAM } else { 0 };
        self.bar0
            .write::<u64>(reg::DMA_CMD, DMA_START | direction | DMA_IRQ)?;
        self.wait_irq(IRQ_DMA)?;
        if self.bar0.read::<u64>(reg::DMA_CMD)? & DMA_START != 0 {
            return Err("the DMA interrupt came before the transfer finished".into());
        }
        Ok(start.elapsed())
    }
}

/// A userspace driver for QEMU's edu device.
#[derive(clap::Parser)]
struct Cli {
    /// The device's PCI address (bound to vfio-pci).
    #[arg(env = "BARMAP_EDU")]
    addr: PciAddress,
    /// Wait on INTx even where MSI is available.
    #[arg(long)]
    intx: bool,
}

fn main() -> Result<(), Box<dyn StdError>> {
    let cli = <Cli as clap::Parser>::parse();
    let addr = cli.addr;
    let edu = Edu::open(addr, cli.intx)?;

    let id = edu.bar0.read::<u32>(reg::ID)?;
    if id & 0xffff != 0x00ed {
        return Err(format!("{addr} is not an edu device (ID register {id:#010x})").into());
    }
    edu.bar0.write::<u32>(reg::LIVENESS, 0x1234_5678)?;
    let alive = edu.bar0.read::<u32>(reg::LIVENESS)? == !0x1234_5678;
    println!(
        "{addr}: edu v{}.{} (ID {id:#010x}), liveness check {}",
        id >> 24,
        (id >> 16) & 0xff,
        if alive { "passed" } else { "FAILED" }
    );
    for info in edu.dev.irq_infos() {
        println!(
            "  {:<6} {} vector(s), flags {}",
            info.index.to_string(),
            info.count,
            info.flags
        );
    }

    let mode = edu.irq.index();
    println!(
        "factorials, each waited for on {mode}{}:",
        if mode == IrqIndex::Intx {
            " (automasked, unmasked before each wait)"
        } else {
            ""
        }
    );
    for n in [0, 5, 10, 12, 13] {
        let start = Instant::now();
        let result = edu.factorial(n)?;
        println!(
            "  {n:>2}! = {result:>10} ({result:#010x}) in {:?}",
            start.elapsed()
        );
    }

    let dma = edu.dev.dma(EDU_DMA_MASK)?;
    let out = dma.alloc(4096)?;
    let back = dma.alloc(4096)?;
    let message = b"barmap: a userspace driver, its buffer copied by edu's DMA engine and back.";
    let len = message.len() as u64;
    out.as_volatile_slice().write_slice(message, 0)?;
    back.as_volatile_slice().write_slice(&[0u8; 4096], 0)?;
    println!(
        "DMA buffers at IOVA {:#x} and {:#x} (mask {} bits, bus mastering {})",
        out.iova(),
        back.iova(),
        dma.mask().width(),
        if edu.dev.bus_master()? { "on" } else { "off" }
    );
    let t_in = edu.dma(out.iova(), EDU_BUF, len, false)?;
    let t_out = edu.dma(EDU_BUF, back.iova(), len, true)?;
    let mut got = vec![0u8; message.len()];
    back.as_volatile_slice().read_slice(&mut got, 0)?;
    println!("  RAM -> edu: {len} bytes in {t_in:?}; edu -> RAM: {len} bytes in {t_out:?}");
    println!("  read back: {:?}", String::from_utf8_lossy(&got));
    if got != message {
        return Err("the copy differs from the original".into());
    }
    println!(
        "done: identified, {} interrupts served on {mode}, {} bytes through DMA",
        5 + 2,
        2 * len
    );
    Ok(())
}
