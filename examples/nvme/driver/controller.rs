//! The controller: reset and enable as CAP says, the admin queue, Identify,
//! Number of Queues, I/O queue pairs, waiting for completions by polling or
//! on MSI-X, recovery after a reset, and shutdown on drop.

use std::time::{Duration, Instant};

use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::{Device, Dma, DmaBuffer, DmaMask, Interrupts, PciAddress, Region};

use super::command::{self, Command};
use super::error::NvmeError;
use super::identify::{namespace_list, ControllerInfo, Namespace};
use super::queue::{Data, Done, QueuePair, PRP_MAX_TRANSFER};
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
/// How often a wait without progress looks at CSTS and the command timeout.
const HEALTH_INTERVAL: Duration = Duration::from_millis(2);

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
    interrupts: u64,
    recoveries: u32,
    shut_down: bool,
}

impl Controller {
    /// Opens the controller at `addr` (bound to vfio-pci), resets and
    /// enables it, and creates the I/O queue pairs `opts` asks for.
    pub fn open(addr: PciAddress, opts: Options) -> Result<Controller, NvmeError> {
        let dev = Device::open(addr)?;
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
            interrupts: 0,
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
        let start = Instant::now();
        loop {
            let csts = self.bar.read::<u32>(regs::CSTS)?;
            if csts != u32::MAX && csts & regs::CSTS_RDY == 0 {
                return Ok(());
            }
            if start.elapsed() > self.cap.timeout {
                return Err(NvmeError::NotReady {
                    ready: false,
                    csts,
                    after: self.cap.timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn wait_ready(&self, ready: bool) -> Result<(), NvmeError> {
        let start = Instant::now();
        loop {
            let csts = check_csts(self.bar.read::<u32>(regs::CSTS)?)?;
            if (csts & regs::CSTS_RDY != 0) == ready {
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

    /// I/O queue pair `q` (0-based: queue identifier `q + 1`).
    pub fn queue(&self, q: usize) -> &QueuePair {
        &self.io[q.min(self.io.len() - 1)]
    }

    /// The completion mode.
    pub fn mode(&self) -> Mode {
        self.opts.mode
    }

    /// Interrupts taken by waits so far (MSI-X mode).
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// Recoveries done by [`Controller::recover`].
    pub fn recoveries(&self) -> u32 {
        self.recoveries
    }

    /// A Read or Write of `len` bytes at `lba` of namespace `ns`, checked
    /// against the block size and the transfer limit (not against the
    /// namespace's size: that is the controller's to refuse).
    pub fn rw_command(
        &self,
        write: bool,
        ns: &Namespace,
        lba: u64,
        len: usize,
    ) -> Result<Command, NvmeError> {
        let block = ns.block_size as usize;
        if len == 0 || !len.is_multiple_of(block) {
            return Err(NvmeError::BadTransfer(format!(
                "{len} bytes is not a whole number of {block}-byte blocks"
            )));
        }
        if len > self.max_transfer {
            return Err(NvmeError::TransferTooLarge {
                bytes: len,
                max: self.max_transfer,
            });
        }
        Ok(Command::rw(write, ns.id, lba, (len / block) as u16))
    }

    /// Places a command on I/O queue `q` without ringing its doorbell.
    pub fn push(
        &mut self,
        q: usize,
        cmd: Command,
        data: Option<Data<'_>>,
        tag: u64,
    ) -> Result<u16, NvmeError> {
        let q = q.min(self.io.len() - 1);
        self.io[q].push(cmd, data, tag)
    }

    /// Rings I/O queue `q`'s submission doorbell.
    pub fn ring(&mut self, q: usize) -> Result<(), NvmeError> {
        let q = q.min(self.io.len() - 1);
        self.io[q].ring(&self.bar)
    }

    /// Rings I/O queue `q`'s doorbell with its current tail (no new
    /// command): the cost of one doorbell write.
    pub fn ring_unchanged(&mut self, q: usize) -> Result<(), NvmeError> {
        let q = q.min(self.io.len() - 1);
        self.io[q].ring_unchanged(&self.bar)
    }

    /// Reads CSTS (checked): the cost of one register read.
    pub fn status(&self) -> Result<u32, NvmeError> {
        check_csts(self.bar.read::<u32>(regs::CSTS)?)
    }

    /// Waits until at least `at_least` commands of queue `q` completed (or
    /// none is outstanding), moving them into `out`. Looks at CSTS and the
    /// oldest command's age whenever the queue makes no progress for a
    /// while: a fatal status, a controller that was reset behind the
    /// driver, and a command past the timeout are errors.
    pub fn wait(&mut self, q: usize, out: &mut Vec<Done>, at_least: usize) -> Result<usize, NvmeError> {
        let q = q.min(self.io.len() - 1);
        let mut got = 0;
        let mut last_check = Instant::now();
        loop {
            got += self.io[q].reap(&self.bar, out)?;
            if got >= at_least || self.io[q].outstanding() == 0 {
                return Ok(got);
            }
            match (self.irqs.as_ref(), self.io[q].vector()) {
                (Some(irqs), Some(v)) => match irqs.vector(v)?.wait(HEALTH_INTERVAL) {
                    Ok(n) => self.interrupts += n,
                    Err(barmap::Error::IrqTimeout { .. }) => {}
                    Err(e) => return Err(e.into()),
                },
                _ => std::hint::spin_loop(),
            }
            if last_check.elapsed() >= HEALTH_INTERVAL {
                self.check_health(q)?;
                last_check = Instant::now();
            }
        }
    }

    fn check_health(&self, q: usize) -> Result<(), NvmeError> {
        let csts = check_csts(self.bar.read::<u32>(regs::CSTS)?)?;
        let outstanding = self.io[q].outstanding();
        if csts & regs::CSTS_RDY == 0 {
            return Err(NvmeError::ControllerLost { csts, outstanding });
        }
        if let Some((submitted, cid, opcode)) = self.io[q].oldest() {
            if submitted.elapsed() > self.opts.timeout {
                let command = Command::new(opcode, 0).name(false);
                return Err(NvmeError::Timeout {
                    command,
                    cid,
                    after: self.opts.timeout,
                });
            }
        }
        Ok(())
    }

    /// Brings the controller up again after a reset (its own, a function
    /// reset, or a fatal status) and resubmits every outstanding I/O
    /// command under its identifier; returns how many were resubmitted.
    pub fn recover(&mut self) -> Result<usize, NvmeError> {
        self.dev.set_bus_master(true)?;
        self.bring_up()?;
        self.recoveries += 1;
        let mut resubmitted = 0;
        for queue in &mut self.io {
            resubmitted += queue.resubmit(&self.bar)?;
        }
        Ok(resubmitted)
    }

    /// Runs one command on queue 0 to completion: a Read or Write of
    /// `data.len` bytes at `lba`, or a Flush (`None` for `lba`).
    pub fn sync(
        &mut self,
        write: bool,
        nsid: u32,
        lba: Option<u64>,
        data: Option<Data<'_>>,
    ) -> Result<(), NvmeError> {
        let cmd = match (lba, data) {
            (Some(lba), Some(data)) => self.rw_command(write, &self.namespace(nsid)?, lba, data.len)?,
            _ => Command::new(command::NVM_FLUSH, nsid),
        };
        self.push(0, cmd, data, 0)?;
        self.ring(0)?;
        let mut done = Vec::with_capacity(1);
        while done.is_empty() {
            self.wait(0, &mut done, 1)?;
        }
        let done = done[0];
        done.result.map(|_| ()).map_err(|status| NvmeError::Status {
            command: cmd.name(false),
            cid: done.cid,
            status,
        })
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
        let start = Instant::now();
        loop {
            let csts = check_csts(self.bar.read::<u32>(regs::CSTS)?)?;
            if csts & regs::CSTS_SHST_MASK == regs::CSTS_SHST_COMPLETE {
                return Ok(());
            }
            if start.elapsed() > self.cap.timeout {
                return Err(NvmeError::NotReady {
                    ready: false,
                    csts,
                    after: self.cap.timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("nvme: {}: shutdown failed: {e}", self.dev.address());
        }
    }
}
