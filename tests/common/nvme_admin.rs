//! QEMU's NVMe controller brought up from userspace: admin queues in DMA
//! buffers and an Identify Controller command, checked against the serial
//! number the guest harness gives the controller.

use std::time::{Duration, Instant};

use barmap::dma::DmaMask;
use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::{Device, DmaBuffer, Region};

/// The serial number the guest harness gives the controller.
pub const SERIAL: &str = "barmap0001";
/// QEMU's model number string.
pub const MODEL: &str = "QEMU NVMe Ctrl";

/// Controller registers (NVMe base specification, section 3.1).
const CAP: u64 = 0x00;
const CC: u64 = 0x14;
const CSTS: u64 = 0x1c;
const AQA: u64 = 0x24;
const ASQ: u64 = 0x28;
const ACQ: u64 = 0x30;
const DOORBELLS: u64 = 0x1000;
const CC_EN: u32 = 1;
/// I/O submission and completion queue entry sizes: 2^6 and 2^4 bytes.
const CC_IOSQES_IOCQES: u32 = (6 << 16) | (4 << 20);
const CSTS_RDY: u32 = 1;
const CSTS_CFS: u32 = 2;
const OPC_IDENTIFY: u32 = 0x06;
const CNS_CONTROLLER: u32 = 1;
const QUEUE_ENTRIES: u32 = 16;
const SQE_SIZE: usize = 64;
const CQE_SIZE: usize = 16;

/// A controller with its admin queues, reset and not yet enabled.
pub struct Admin {
    pub bar0: Region,
    sq: DmaBuffer,
    cq: DmaBuffer,
    data: DmaBuffer,
    stride: u64,
    timeout: Duration,
}

impl Admin {
    /// Resets the controller and gives it admin queues of 16 entries and a
    /// data page, all in DMA buffers of `dev`'s container.
    pub fn new(dev: &Device) -> Admin {
        let bar0 = dev.bar(0).unwrap();
        let cap = bar0.read::<u64>(CAP).unwrap();
        let timeout = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
        let stride = 4u64 << ((cap >> 32) & 0xf);
        assert!(
            u64::from(QUEUE_ENTRIES) <= (cap & 0xffff) + 1,
            "CAP.MQES {cap:#x}"
        );
        bar0.write::<u32>(CC, 0).unwrap();
        wait_ready(&bar0, false, timeout);
        let dma = dev.dma(DmaMask::FULL).unwrap();
        let sq = dma.alloc(QUEUE_ENTRIES as usize * SQE_SIZE).unwrap();
        let cq = dma.alloc(QUEUE_ENTRIES as usize * CQE_SIZE).unwrap();
        let data = dma.alloc(4096).unwrap();
        cq.as_volatile_slice().write_slice(&[0u8; 4096], 0).unwrap();
        bar0.write::<u32>(AQA, (QUEUE_ENTRIES - 1) | (QUEUE_ENTRIES - 1) << 16)
            .unwrap();
        bar0.write::<u64>(ASQ, sq.iova()).unwrap();
        bar0.write::<u64>(ACQ, cq.iova()).unwrap();
        Admin {
            bar0,
            sq,
            cq,
            data,
            stride,
            timeout,
        }
    }

    /// Enables the controller and waits until it is ready.
    pub fn enable(&self) {
        self.bar0.write::<u32>(CC, CC_EN | CC_IOSQES_IOCQES).unwrap();
        wait_ready(&self.bar0, true, self.timeout);
    }

    /// Places Identify Controller with command identifier `cid` in the first
    /// submission slot and rings the admin doorbell.
    pub fn submit_identify(&self, cid: u16) {
        let mut sqe = [0u8; SQE_SIZE];
        sqe[0..4].copy_from_slice(&(OPC_IDENTIFY | u32::from(cid) << 16).to_le_bytes());
        sqe[24..32].copy_from_slice(&self.data.iova().to_le_bytes()); // PRP1
        sqe[40..44].copy_from_slice(&CNS_CONTROLLER.to_le_bytes()); // CDW10
        self.sq.as_volatile_slice().write_slice(&sqe, 0).unwrap();
        self.bar0.write::<u32>(DOORBELLS, 1).unwrap(); // admin SQ tail
    }

    /// Checks the completion of [`Admin::submit_identify`] (first pass,
    /// success, SQ head past it), consumes it, and checks the vendor,
    /// serial and model in the data the controller DMA'd.
    pub fn check_identify(&self, cid: u16) {
        let mut cqe = [0u8; CQE_SIZE];
        self.cq.as_volatile_slice().read_slice(&mut cqe, 0).unwrap();
        let status = u16::from_le_bytes([cqe[14], cqe[15]]);
        assert_eq!(u16::from_le_bytes([cqe[12], cqe[13]]), cid, "completion {cqe:x?}");
        assert_eq!(status & 1, 1, "phase tag of the first pass");
        assert_eq!(status >> 1, 0, "status code");
        assert_eq!(
            u16::from_le_bytes([cqe[8], cqe[9]]),
            1,
            "SQ head moved past the command"
        );
        self.bar0.write::<u32>(DOORBELLS + self.stride, 1).unwrap(); // admin CQ head

        let mut id = [0u8; 4096];
        self.data.as_volatile_slice().read_slice(&mut id, 0).unwrap();
        assert_eq!(
            u16::from_le_bytes([id[0], id[1]]),
            0x1b36,
            "PCI vendor in the data"
        );
        assert_eq!(ascii(&id[4..24]), SERIAL);
        assert_eq!(ascii(&id[24..64]), MODEL);
    }

    /// Disables the controller and waits until it says so.
    pub fn disable(&self) {
        self.bar0.write::<u32>(CC, 0).unwrap();
        wait_ready(&self.bar0, false, self.timeout);
    }
}

fn wait_ready(bar0: &Region, ready: bool, timeout: Duration) {
    let start = Instant::now();
    loop {
        let csts = bar0.read::<u32>(CSTS).unwrap();
        assert_eq!(csts & CSTS_CFS, 0, "controller fatal status");
        if (csts & CSTS_RDY != 0) == ready {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "CSTS.RDY did not become {ready} in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end().to_string()
}
