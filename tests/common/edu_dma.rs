//! edu's DMA engine: its registers, quieting the device before a test,
//! starting a copy and waiting for its end, and a buffer's bytes.
//!
//! QEMU 7.2's edu aborts the VM on a transfer of 0 bytes or one that touches
//! its buffer's byte 0xfff: [`start_dma`] refuses lengths outside
//! 1..=[`SAFE_LEN`], and callers keep their copies inside
//! [`EDU_BUF`]..`EDU_BUF + 0xfff`.

use std::time::{Duration, Instant};

use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::{DmaBuffer, Region};

use super::edu_reg::{DMA_SRC, IRQ_ACK, STATUS};

/// The copy's destination address register.
pub const DMA_DST: u64 = 0x88;
/// The copy's length register.
pub const DMA_COUNT: u64 = 0x90;
/// The DMA command register.
pub const DMA_CMD: u64 = 0x98;
/// Command bit: start (reads back set while the copy runs).
pub const CMD_START: u64 = 1;
/// Command bit: from edu's buffer to RAM (clear: RAM to edu).
pub const CMD_TO_RAM: u64 = 2;
/// Command bit: raise the DMA interrupt at the end.
pub const CMD_IRQ: u64 = 4;
/// The interrupt status bit of a finished copy.
pub const IRQ_DMA_DONE: u32 = 0x100;
/// edu's own buffer, in its address space.
pub const EDU_BUF: u64 = 0x40000;
/// The most bytes QEMU 7.2's edu copies without aborting.
pub const SAFE_LEN: usize = 4095;

/// Waits for any factorial and copy to end, then clears the status and
/// acknowledges every interrupt, so a test starts from a quiet device.
pub fn quiet(bar0: &Region) {
    super::wait_idle(bar0);
    wait_dma_idle(bar0);
    bar0.write::<u32>(STATUS, 0).unwrap();
    bar0.write::<u32>(IRQ_ACK, 0xffff_ffff).unwrap();
}

/// Waits until the command register's start bit clears (panics after 5 s).
pub fn wait_dma_idle(bar0: &Region) {
    let start = Instant::now();
    while bar0.read::<u64>(DMA_CMD).unwrap() & CMD_START != 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "edu DMA did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a copy of `len` bytes (1..=4095) from `src` to `dst` with command
/// bits `cmd` (which should include [`CMD_START`]).
pub fn start_dma(bar0: &Region, src: u64, dst: u64, len: usize, cmd: u64) {
    assert!(
        (1..=SAFE_LEN).contains(&len),
        "QEMU 7.2 edu aborts on this length"
    );
    bar0.write::<u64>(DMA_SRC, src).unwrap();
    bar0.write::<u64>(DMA_DST, dst).unwrap();
    bar0.write::<u64>(DMA_COUNT, len as u64).unwrap();
    bar0.write::<u64>(DMA_CMD, cmd).unwrap();
}

/// [`start_dma`], then waits for the copy's end.
pub fn dma(bar0: &Region, src: u64, dst: u64, len: usize, cmd: u64) {
    start_dma(bar0, src, dst, len, cmd);
    wait_dma_idle(bar0);
}

/// Writes `f(i)` to every byte `i` of `buf`.
pub fn fill(buf: &DmaBuffer, f: impl Fn(usize) -> u8) {
    let bytes: Vec<u8> = (0..buf.size()).map(f).collect();
    buf.as_volatile_slice().write_slice(&bytes, 0).unwrap();
}

/// Every byte of `buf`.
pub fn contents(buf: &DmaBuffer) -> Vec<u8> {
    let mut bytes = vec![0u8; buf.size()];
    buf.as_volatile_slice().read_slice(&mut bytes, 0).unwrap();
    bytes
}
