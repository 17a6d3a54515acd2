//! The controller's I/O path: Read and Write commands checked against the
//! namespace and the transfer limit, submission to a queue pair, waiting for
//! completions by polling or on the queue's MSI-X vector while watching CSTS
//! and the command timeout, and recovery after a reset.

use std::time::{Duration, Instant};

use super::Controller;
use crate::driver::command::{self, Command};
use crate::driver::error::NvmeError;
use crate::driver::identify::Namespace;
use crate::driver::queue::{Data, Done, QueuePair};
use crate::driver::regs::{self, check_csts};

/// How often a wait without progress looks at CSTS and the command timeout.
const HEALTH_INTERVAL: Duration = Duration::from_millis(2);
/// The most blocks one Read or Write moves (NLB is a 16-bit, 0-based count).
const MAX_BLOCKS: usize = 1 << 16;

impl Controller {
    fn index(&self, q: usize) -> Result<usize, NvmeError> {
        match q < self.io.len() {
            true => Ok(q),
            false => Err(NvmeError::NoQueue {
                queue: q,
                queues: self.io.len(),
            }),
        }
    }

    /// I/O queue pair `q` (0-based: queue identifier `q + 1`).
    pub fn queue(&self, q: usize) -> Result<&QueuePair, NvmeError> {
        Ok(&self.io[self.index(q)?])
    }

    /// Interrupts queue `q`'s vector took so far (MSI-X mode): those its
    /// waits consumed and those pending now. Always 0 when polling.
    pub fn interrupts(&mut self, q: usize) -> Result<u64, NvmeError> {
        let q = self.index(q)?;
        if let (Some(irqs), Some(v)) = (self.irqs.as_ref(), self.io[q].vector()) {
            if let Some(n) = irqs.vector(v)?.try_wait()? {
                self.io[q].count_interrupts(n);
            }
        }
        Ok(self.io[q].interrupts())
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
        if len > self.max_transfer || len / block > MAX_BLOCKS {
            return Err(NvmeError::TransferTooLarge {
                bytes: len,
                max: self.max_transfer.min(MAX_BLOCKS * block),
            });
        }
        Ok(Command::rw(write, ns.id, lba, (len / block) as u32))
    }

    /// Places a command on I/O queue `q` without ringing its doorbell.
    pub fn push(
        &mut self,
        q: usize,
        cmd: Command,
        data: Option<Data<'_>>,
        tag: u64,
    ) -> Result<u16, NvmeError> {
        let q = self.index(q)?;
        self.io[q].push(cmd, data, tag)
    }

    /// Rings I/O queue `q`'s submission doorbell.
    pub fn ring(&mut self, q: usize) -> Result<(), NvmeError> {
        let q = self.index(q)?;
        self.io[q].ring(&self.bar)
    }

    /// Rings I/O queue `q`'s doorbell with its current tail (no new
    /// command): the cost of one doorbell write.
    pub fn ring_unchanged(&mut self, q: usize) -> Result<(), NvmeError> {
        let q = self.index(q)?;
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
        let q = self.index(q)?;
        let mut got = 0;
        let mut last_check = Instant::now();
        loop {
            got += self.io[q].reap(&self.bar, out)?;
            if got >= at_least || self.io[q].outstanding() == 0 {
                return Ok(got);
            }
            match (self.irqs.as_ref(), self.io[q].vector()) {
                (Some(irqs), Some(v)) => match irqs.vector(v)?.wait(HEALTH_INTERVAL) {
                    Ok(n) => self.io[q].count_interrupts(n),
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
        let csts = self.status()?;
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
        let status = |status| NvmeError::Status {
            command: cmd.name(false),
            cid: done.cid,
            status,
        };
        done.result.map(|_| ()).map_err(status)
    }
}
