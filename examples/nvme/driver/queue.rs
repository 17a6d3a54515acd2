//! A submission and completion queue pair in DMA memory: slots by command
//! identifier, PRP lists, doorbells, and completions found by the phase tag.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::{Dma, DmaBuffer, Region};

use super::command::{Command, Completion, CQE_SIZE, SQE_SIZE};
use super::error::{NvmeError, Status};
use super::regs::{Cap, PAGE};

/// PRP entries in one list page; the driver uses one list page per command.
pub const PRP_LIST_ENTRIES: usize = PAGE / 8;
/// The largest transfer one list page describes (its entries plus PRP1's page).
pub const PRP_MAX_TRANSFER: usize = (PRP_LIST_ENTRIES + 1) * PAGE;

/// A command that completed.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// The caller's tag given at submission.
    pub tag: u64,
    /// The command identifier it ran under.
    pub cid: u16,
    /// DW0 of the completion, or the error status.
    pub result: Result<u32, Status>,
    /// From the doorbell write that submitted the command to its
    /// completion being seen.
    pub latency: Duration,
}

struct Slot {
    cmd: Command,
    tag: u64,
    /// Push order, for resubmission.
    seq: u64,
    /// When the doorbell was rung for it (until then: when it was pushed).
    submitted: Instant,
}

/// Where a command's data is: `len` bytes at `offset` in `buffer`.
#[derive(Clone, Copy)]
pub struct Data<'a> {
    /// The DMA buffer.
    pub buffer: &'a DmaBuffer,
    /// Byte offset in it (a multiple of 4).
    pub offset: usize,
    /// Bytes to transfer.
    pub len: usize,
}

/// A queue pair: submission queue `qid` and completion queue `qid`.
pub struct QueuePair {
    qid: u16,
    depth: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    prp_lists: Option<DmaBuffer>,
    sq_doorbell: u64,
    cq_doorbell: u64,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    unrung: Vec<u16>,
    next_seq: u64,
    slots: Vec<Option<Slot>>,
    free: Vec<u16>,
    vector: Option<u32>,
    interrupts: u64,
}

impl QueuePair {
    /// Allocates a pair of `depth` entries (at most `depth - 1` commands
    /// outstanding), with one PRP list page per command if `prp_lists`.
    pub fn new(dma: &Dma, cap: &Cap, qid: u16, depth: u16, prp_lists: bool) -> Result<QueuePair, NvmeError> {
        let entries = usize::from(depth);
        let sq = dma.alloc(entries * SQE_SIZE)?;
        let cq = dma.alloc(entries * CQE_SIZE)?;
        let prp_lists = match prp_lists {
            true => Some(dma.alloc(entries * PAGE)?),
            false => None,
        };
        let mut queue = QueuePair {
            qid,
            depth,
            sq,
            cq,
            prp_lists,
            sq_doorbell: cap.sq_doorbell(qid),
            cq_doorbell: cap.cq_doorbell(qid),
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            unrung: Vec::new(),
            next_seq: 0,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth - 1).rev().collect(),
            vector: None,
            interrupts: 0,
        };
        queue.restart()?;
        Ok(queue)
    }

    /// The queue identifier.
    pub fn id(&self) -> u16 {
        self.qid
    }

    /// Entries in each queue.
    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// The submission queue's IOVA.
    pub fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    /// The completion queue's IOVA.
    pub fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// The MSI-X vector the completion queue interrupts on, if any.
    pub fn vector(&self) -> Option<u32> {
        self.vector
    }

    /// Sets the MSI-X vector (before the queue is created on the controller).
    pub fn set_vector(&mut self, vector: Option<u32>) {
        self.vector = vector;
    }

    /// Counts `n` interrupts taken on the queue's vector.
    pub fn count_interrupts(&mut self, n: u64) {
        self.interrupts += n;
    }

    /// Interrupts counted on the queue's vector.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        usize::from(self.depth - 1) - self.free.len()
    }

    /// The submission time of the oldest outstanding command (its doorbell
    /// write, or its push if the doorbell was not rung yet), with its cid and
    /// opcode.
    pub fn oldest(&self) -> Option<(Instant, u16, u8)> {
        let slots = self.slots.iter().enumerate();
        let outstanding =
            slots.filter_map(|(cid, s)| s.as_ref().map(|s| (s.submitted, cid as u16, s.cmd.opcode())));
        outstanding.min()
    }

    /// Empties both queues as the controller sees them after a reset
    /// (indices 0, phase 1, completion entries zero), keeping the
    /// outstanding commands for [`QueuePair::resubmit`].
    pub fn restart(&mut self) -> Result<(), NvmeError> {
        let zeros = vec![0u8; self.cq.size()];
        self.cq.as_volatile_slice().write_slice(&zeros, 0)?;
        (self.sq_tail, self.cq_head, self.phase) = (0, 0, true);
        self.unrung.clear();
        Ok(())
    }

    /// Forgets every outstanding command, freeing its identifier (the admin
    /// queue after a reset: its commands are not resubmitted).
    pub fn abandon(&mut self) {
        for (cid, slot) in self.slots.iter_mut().enumerate() {
            if slot.take().is_some() {
                self.free.push(cid as u16);
            }
        }
        self.unrung.clear();
    }

    /// Places `cmd` in the submission queue under a free command
    /// identifier, with PRPs for `data`, without ringing the doorbell.
    pub fn push(&mut self, mut cmd: Command, data: Option<Data<'_>>, tag: u64) -> Result<u16, NvmeError> {
        let Some(&cid) = self.free.last() else {
            return Err(NvmeError::QueueFull {
                qid: self.qid,
                depth: self.depth,
            });
        };
        if let Some(data) = data {
            let (prp1, prp2) = self.prps(cid, data)?;
            cmd.set_prps(prp1, prp2);
        }
        cmd.set_cid(cid);
        self.write_sqe(&cmd)?;
        self.free.pop();
        self.unrung.push(cid);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots[usize::from(cid)] = Some(Slot {
            cmd,
            tag,
            seq,
            submitted: Instant::now(),
        });
        Ok(cid)
    }

    /// Writes the submission queue tail doorbell if commands were pushed
    /// since; their timeout and latency count from just before the write.
    pub fn ring(&mut self, bar: &Region) -> Result<(), NvmeError> {
        if self.unrung.is_empty() {
            return Ok(());
        }
        // Taken before the write: the doorbell's own cost is part of the latency.
        let now = Instant::now();
        bar.write::<u32>(self.sq_doorbell, u32::from(self.sq_tail))?;
        for cid in self.unrung.drain(..) {
            if let Some(slot) = self.slots[usize::from(cid)].as_mut() {
                slot.submitted = now;
            }
        }
        Ok(())
    }

    /// Writes the submission queue tail doorbell with the tail it already
    /// has: no new command, only the cost of the doorbell write itself.
    pub fn ring_unchanged(&mut self, bar: &Region) -> Result<(), NvmeError> {
        bar.write::<u32>(self.sq_doorbell, u32::from(self.sq_tail))?;
        Ok(())
    }

    /// Pushes every outstanding command again under its own identifier, in
    /// the order they were first submitted, and rings (after a reset).
    pub fn resubmit(&mut self, bar: &Region) -> Result<usize, NvmeError> {
        let mut pending: Vec<(u64, Command)> = self.slots.iter().flatten().map(|s| (s.seq, s.cmd)).collect();
        pending.sort_by_key(|(seq, _)| *seq);
        for (_, cmd) in &pending {
            self.write_sqe(cmd)?;
            self.unrung.push(cmd.cid());
        }
        self.ring(bar)?;
        Ok(pending.len())
    }

    /// Moves every new completion into `out` and writes the completion queue
    /// head doorbell once; returns how many there were.
    pub fn reap(&mut self, bar: &Region, out: &mut Vec<Done>) -> Result<usize, NvmeError> {
        let cq = self.cq.as_volatile_slice();
        let mut n = 0;
        loop {
            let offset = usize::from(self.cq_head) * CQE_SIZE;
            let dw3 = cq.load::<u32>(offset + 12, Ordering::Acquire)?;
            if ((dw3 >> 16) & 1 == 1) != self.phase {
                break;
            }
            fence(Ordering::Acquire);
            let cqe = Completion::decode(cq.read_obj::<[u32; 4]>(offset)?);
            self.cq_head += 1;
            if self.cq_head == self.depth {
                (self.cq_head, self.phase) = (0, !self.phase);
            }
            let slot = self.slots.get_mut(usize::from(cqe.cid)).and_then(Option::take);
            let Some(slot) = slot else {
                bar.write::<u32>(self.cq_doorbell, u32::from(self.cq_head))?;
                return Err(NvmeError::BadCompletion {
                    qid: self.qid,
                    cid: cqe.cid,
                });
            };
            self.free.push(cqe.cid);
            out.push(Done {
                tag: slot.tag,
                cid: cqe.cid,
                result: cqe.status.map_or(Ok(cqe.result), Err),
                latency: slot.submitted.elapsed(),
            });
            n += 1;
        }
        if n > 0 {
            bar.write::<u32>(self.cq_doorbell, u32::from(self.cq_head))?;
        }
        Ok(n)
    }

    fn write_sqe(&mut self, cmd: &Command) -> Result<(), NvmeError> {
        // At most depth - 1 commands are outstanding (one cid each), so the
        // entries between the controller's head and the tail never fill the queue.
        let offset = usize::from(self.sq_tail) * SQE_SIZE;
        self.sq.as_volatile_slice().write_obj(cmd.dw, offset)?;
        fence(Ordering::Release);
        self.sq_tail = (self.sq_tail + 1) % self.depth;
        Ok(())
    }

    /// PRP1 and PRP2 for `data`, filling command `cid`'s list page when
    /// the data spans more than two memory pages.
    fn prps(&self, cid: u16, data: Data<'_>) -> Result<(u64, u64), NvmeError> {
        let end = data
            .offset
            .checked_add(data.len)
            .filter(|&end| end <= data.buffer.size());
        if end.is_none() || data.len == 0 || !data.offset.is_multiple_of(4) {
            return Err(NvmeError::BadTransfer(format!(
                "{} bytes at offset {:#x} of a {:#x}-byte buffer (need a dword-aligned, non-empty range inside it)",
                data.len,
                data.offset,
                data.buffer.size()
            )));
        }
        let prp1 = data.buffer.iova() + data.offset as u64;
        let first = PAGE - (prp1 as usize % PAGE);
        if data.len <= first {
            return Ok((prp1, 0));
        }
        let second = prp1 - (prp1 % PAGE as u64) + PAGE as u64;
        let pages = (data.len - first).div_ceil(PAGE);
        if pages == 1 {
            return Ok((prp1, second));
        }
        let Some(lists) = self.prp_lists.as_ref().filter(|_| pages <= PRP_LIST_ENTRIES) else {
            return Err(NvmeError::TransferTooLarge {
                bytes: data.len,
                max: PRP_MAX_TRANSFER.min(2 * PAGE),
            });
        };
        let list = usize::from(cid) * PAGE;
        let mut entries = [0u64; PRP_LIST_ENTRIES];
        for (i, entry) in entries.iter_mut().take(pages).enumerate() {
            *entry = second + (i * PAGE) as u64;
        }
        let bytes: Vec<u8> = entries[..pages].iter().flat_map(|e| e.to_le_bytes()).collect();
        lists.as_volatile_slice().write_slice(&bytes, list)?;
        Ok((prp1, lists.iova() + list as u64))
    }
}
