//! The controller: reset and enable as CAP says, the admin queue, Identify,
//! Number of Queues, I/O queue pairs and shutdown on drop; `io` has the I/O
//! path (submission, waiting by polling or on MSI-X, recovery).

mod io;

use std::time::{Duration, Instant};

use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::{Device, Dma, DmaBuffer, DmaMask, Interrupts, PciAddress, Region};

use super::command::{self, Command};
use super::error::NvmeError;
use super::identify::{namespace_list, ControllerInfo, Namespace};
use super::queue::{Data, QueuePair, PRP_MAX_TRANSFER};
use super::regs::{self, check_csts, Cap, PAGE};

/// How I/O completions are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Spinning on the phase tag of the next completion entry.
    Poll,
    /// Sleeping on the queue's own MSI-X vector between checks.
    Msix,
}

/// How to bring the controller up.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// I/O queue pairs wanted (the controller may grant fewer).
    pub queues: u16,
    /// Entries per I/O queue (capped by CAP.MQES).
    pub depth: u16,
    /// Completion mode of the I/O queues.
    pub mode: Mode,
    /// How long a command may take before it is a [`NvmeError::Timeout`].
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queues: 1,
            depth: 64,
            mode: Mode::Poll,
            timeout: Duration::from_secs(5),
        }
    }
}

const ADMIN_DEPTH: u16 = 32;

/// An enabled controller with its I/O queue pairs.
pub struct Controller {
    dev: Device,
    bar: Region,
    dma: Dma,
    cap: Cap,
    opts: Options,
    admin: QueuePair,
    scratch: DmaBuffer,
    irqs: Option<Interrupts>,
    io: Vec<QueuePair>,
    info: ControllerInfo,
    namespaces: Vec<Namespace>,
    max_transfer: usize,
    recoveries: u32,
    shut_down: bool,
}

impl Controller {
    /// Opens the controller at `addr` (bound to vfio-pci), resets and
    /// enables it, and creates the I/O queue pairs `opts` asks for.
    pub fn open(addr: PciAddress, opts: Options) -> Result<Controller, NvmeError> {
        Controller::open_device(Device::open(addr)?, opts)
    }

    /// [`Controller::open`] for a device the caller opened (in a container
    /// of its choice, such as a no-IOMMU one).
    pub fn open_device(dev: Device, opts: Options) -> Result<Controller, NvmeError> {
        let bar = dev.bar(0)?;
        let cap = Cap::decode(bar.read::<u64>(regs::CAP)?)?;
        cap.page_size_field()?;
        if !cap.nvm_command_set {
            return Err(NvmeError::Unsupported("no NVM command set in CAP.CSS".into()));
        }
        let dma = dev.dma(DmaMask::FULL)?;
        let admin_depth = ADMIN_DEPTH.min(cap.max_entries.min(4096) as u16);
        let admin = QueuePair::new(&dma, &cap, 0, admin_depth, false)?;
        let scratch = dma.alloc(PAGE)?;
        let queues = opts.queues.max(1);
        let irqs = match opts.mode {
            Mode::Poll => None,
            Mode::Msix => Some(dev.enable_msix(1 + u32::from(queues))?),
        };
        let mut ctrl = Controller {
            dev,
            bar,
            dma,
            cap,
            opts: Options { queues, ..opts },
            admin,
            scratch,
            irqs,
            io: Vec::new(),
            info: ControllerInfo::parse(&[0; 4096]),
            namespaces: Vec::new(),
            max_transfer: 0,
            recoveries: 0,
            shut_down: false,
        };
        ctrl.bring_up()?;
        Ok(ctrl)
    }

    /// Disables the controller, programs the admin queue, enables it, reads
    /// Identify, asks for the queues and creates them (also after a reset).
    fn bring_up(&mut self) -> Result<(), NvmeError> {
        self.disable()?;
        self.admin.restart()?;
        self.admin.abandon();
        let depth = u32::from(self.admin.depth()) - 1;
        self.bar.write::<u32>(regs::AQA, depth | depth << 16)?;
        self.bar.write::<u64>(regs::ASQ, self.admin.sq_iova())?;
        self.bar.write::<u64>(regs::ACQ, self.admin.cq_iova())?;
        let cc = regs::CC_EN | regs::CC_IOSQES_IOCQES | self.cap.page_size_field()? << 7;
        self.bar.write::<u32>(regs::CC, cc)?;
        self.wait_ready(true)?;
        self.shut_down = false;

        self.info = ControllerInfo::parse(&self.identify(command::CNS_CONTROLLER, 0)?);
        let from_mdts = self.info.max_transfer(self.cap.page_shift_min);
        self.max_transfer = from_mdts.unwrap_or(PRP_MAX_TRANSFER).min(PRP_MAX_TRANSFER);
        let ids = namespace_list(&self.identify(command::CNS_ACTIVE_NAMESPACES, 0)?);
        self.namespaces.clear();
        for id in ids {
            let data = self.identify(command::CNS_NAMESPACE, id)?;
            self.namespaces.extend(Namespace::parse(id, &data));
        }

        let want = u32::from(self.opts.queues) - 1;
        let set = Command::new(command::ADMIN_SET_FEATURES, 0)
            .with_cdw(&[command::FEATURE_NUMBER_OF_QUEUES, want | want << 16]);
        let granted = self.admin_command(set, None)?;
        let granted = 1 + (granted & 0xffff).min(granted >> 16).min(want);
        if self.io.is_empty() {
            let depth = self.opts.depth.clamp(2, self.cap.max_entries.min(4096) as u16);
            let lists = self.max_transfer > 2 * PAGE;
            for qid in 1..=granted as u16 {
                let mut queue = QueuePair::new(&self.dma, &self.cap, qid, depth, lists)?;
                queue.set_vector(self.irqs.as_ref().map(|_| u32::from(qid)));
                self.io.push(queue);
            }
        }
        for i in 0..self.io.len() {
            self.io[i].restart()?;
            let (qid, depth, vector) = (self.io[i].id(), self.io[i].depth(), self.io[i].vector());
            let size = u32::from(qid) | (u32::from(depth) - 1) << 16;
            let irq = vector.map_or(0, |v| v << 16 | 2);
            let cq = Command::new(command::ADMIN_CREATE_CQ, 0).with_cdw(&[size, irq | 1]);
            self.admin_command_at(cq, self.io[i].cq_iova())?;
            let sq = Command::new(command::ADMIN_CREATE_SQ, 0).with_cdw(&[size, u32::from(qid) << 16 | 1]);
            self.admin_command_at(sq, self.io[i].sq_iova())?;
        }
        Ok(())
    }

    /// Clears CC.EN and waits for CSTS.RDY to follow (a fatal status does
    /// not stop a disable: it is what clears it).
    fn disable(&mut self) -> Result<(), NvmeError> {
        self.bar.write::<u32>(regs::CC, 0)?;
        // A controller in fatal status still clears RDY: no CFS check here.
        self.wait_csts(false, |csts| Ok(csts != u32::MAX && csts & regs::CSTS_RDY == 0))
    }

    fn wait_ready(&self, ready: bool) -> Result<(), NvmeError> {
        self.wait_csts(ready, |csts| {
            Ok((check_csts(csts)? & regs::CSTS_RDY != 0) == ready)
        })
    }

    /// Polls CSTS until `done` says so, for at most CAP.TO; a timeout is
    /// [`NvmeError::NotReady`] with `ready` (the RDY state waited for) and
    /// the last CSTS.
    fn wait_csts(&self, ready: bool, done: impl Fn(u32) -> Result<bool, NvmeError>) -> Result<(), NvmeError> {
        let start = Instant::now();
        loop {
            let csts = self.bar.read::<u32>(regs::CSTS)?;
            if done(csts)? {
                return Ok(());
            }
            if start.elapsed() > self.cap.timeout {
                return Err(NvmeError::NotReady {
                    ready,
                    csts,
                    after: self.cap.timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn identify(&mut self, cns: u32, nsid: u32) -> Result<[u8; 4096], NvmeError> {
        let scratch = self.scratch.iova();
        self.admin_command_at(Command::identify(cns, nsid), scratch)?;
        let mut data = [0u8; 4096];
        self.scratch.as_volatile_slice().read_slice(&mut data, 0)?;
        Ok(data)
    }

    fn admin_command_at(&mut self, mut cmd: Command, prp1: u64) -> Result<u32, NvmeError> {
        cmd.set_prps(prp1, 0);
        self.admin_command(cmd, None)
    }

    /// Runs one admin command to completion (polled) and returns DW0.
    pub fn admin_command(&mut self, cmd: Command, data: Option<Data<'_>>) -> Result<u32, NvmeError> {
        self.admin.push(cmd, data, 0)?;
        self.admin.ring(&self.bar)?;
        let mut done = Vec::with_capacity(1);
        let start = Instant::now();
        while self.admin.reap(&self.bar, &mut done)? == 0 {
            if start.elapsed() > self.opts.timeout {
                check_csts(self.bar.read::<u32>(regs::CSTS)?)?;
                let cid = self.admin.oldest().map_or(0, |(_, cid, _)| cid);
                return Err(NvmeError::Timeout {
                    command: cmd.name(true),
                    cid,
                    after: self.opts.timeout,
                });
            }
            std::hint::spin_loop();
        }
        let done = done[0];
        done.result.map_err(|status| NvmeError::Status {
            command: cmd.name(true),
            cid: done.cid,
            status,
        })
    }

    /// The device handle (for a reset from outside the driver, say).
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The DMA space data buffers are allocated from.
    pub fn dma(&self) -> &Dma {
        &self.dma
    }

    /// CAP as decoded.
    pub fn cap(&self) -> &Cap {
        &self.cap
    }

    /// Identify Controller's data.
    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    /// The active namespaces the driver can use.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// Namespace `nsid`, or [`NvmeError::NoNamespace`].
    pub fn namespace(&self, nsid: u32) -> Result<Namespace, NvmeError> {
        let found = self.namespaces.iter().find(|ns| ns.id == nsid).copied();
        found.ok_or_else(|| NvmeError::NoNamespace {
            nsid,
            active: self.namespaces.iter().map(|n| n.id).collect(),
        })
    }

    /// The largest transfer of one command in bytes (MDTS and one PRP list page).
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// The number of I/O queue pairs.
    pub fn queues(&self) -> usize {
        self.io.len()
    }

    /// The completion mode.
    pub fn mode(&self) -> Mode {
        self.opts.mode
    }

    /// Recoveries done by [`Controller::recover`].
    pub fn recoveries(&self) -> u32 {
        self.recoveries
    }

    /// Sends the shutdown notification (CC.SHN normal) and waits for
    /// CSTS.SHST to say it is complete.
    pub fn shutdown(&mut self) -> Result<(), NvmeError> {
        if self.shut_down {
            return Ok(());
        }
        self.shut_down = true;
        let cc = self.bar.read::<u32>(regs::CC)?;
        self.bar
            .write::<u32>(regs::CC, (cc & !regs::CC_SHN_MASK) | regs::CC_SHN_NORMAL)?;
        self.wait_csts(false, |csts| {
            Ok(check_csts(csts)? & regs::CSTS_SHST_MASK == regs::CSTS_SHST_COMPLETE)
        })
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("nvme: {}: shutdown failed: {e}", self.dev.address());
        }
    }
}
