//! `nvme bench`: keeps a queue depth of reads or writes outstanding on the
//! controller's I/O queues for a while and summarises their latencies.

use std::time::{Duration, Instant};

use barmap::vm_memory::{Bytes, VolatileMemory};

use crate::driver::{Controller, Data, Mode, NvmeError};
use crate::rng::Rng;
use crate::stats::{Pattern, Setup, Stats, Summary};

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Namespace ID.
    pub nsid: u32,
    /// Commands outstanding over all queues.
    pub qd: usize,
    /// Bytes per command.
    pub bs: usize,
    /// The access pattern.
    pub pattern: Pattern,
    /// How long to run.
    pub time: Duration,
    /// Print a progress line on stderr.
    pub progress: bool,
    /// Seed of the random offsets.
    pub seed: u64,
}

/// Runs `job` on every I/O queue of `ctrl` (the queue depth split between
/// them). A controller reset behind the driver's back is recovered from
/// and counted; other errors end the run.
pub fn run(ctrl: &mut Controller, job: &Job) -> Result<Summary, NvmeError> {
    let ns = ctrl.namespace(job.nsid)?;
    let queues = ctrl.queues().min(job.qd.max(1));
    let per_queue: Vec<usize> = (0..queues)
        .map(|q| job.qd / queues + usize::from(q < job.qd % queues))
        .collect();
    for (q, &depth) in per_queue.iter().enumerate() {
        let entries = ctrl.queue(q)?.depth();
        if depth > usize::from(entries) - 1 {
            return Err(NvmeError::BadTransfer(format!(
                "queue depth {depth} on queue {} exceeds its {} entries",
                q + 1,
                entries
            )));
        }
    }
    let buffer = ctrl.dma().alloc(job.qd.max(1) * job.bs)?;
    if job.pattern.writes() {
        let data: Vec<u8> = (0..buffer.size()).map(|i| (i * 7 + 3) as u8).collect();
        buffer.as_volatile_slice().write_slice(&data, 0)?;
    }
    let ios = (ns.bytes() / job.bs as u64).max(1);
    let mut rng = Rng::new(job.seed);
    let mut next_seq = 0u64;
    let mut free: Vec<u64> = (0..job.qd as u64).rev().collect();
    let mut inflight = vec![0usize; queues];
    let mut done = Vec::with_capacity(job.qd);
    let mut stats = Stats::start(job.progress);
    let mut draining = false;
    loop {
        draining |= stats.elapsed() >= job.time;
        for q in 0..queues {
            while !draining && inflight[q] < per_queue[q] {
                let Some(slot) = free.pop() else { break };
                let index = match job.pattern {
                    Pattern::Seqread => {
                        next_seq = (next_seq + 1) % ios;
                        next_seq
                    }
                    _ => rng.below(ios),
                };
                let lba = index * job.bs as u64 / u64::from(ns.block_size);
                let cmd = ctrl.rw_command(job.pattern.writes(), &ns, lba, job.bs)?;
                let data = Data {
                    buffer: &buffer,
                    offset: slot as usize * job.bs,
                    len: job.bs,
                };
                ctrl.push(q, cmd, Some(data), slot)?;
                inflight[q] += 1;
            }
            ctrl.ring(q)?;
        }
        if inflight.iter().all(|&n| n == 0) {
            break;
        }
        for (q, count) in inflight.iter_mut().enumerate() {
            if *count == 0 {
                continue;
            }
            let wanted = usize::from(queues == 1 || ctrl.mode() == Mode::Msix);
            match ctrl.wait(q, &mut done, wanted) {
                Ok(_) => {}
                Err(NvmeError::ControllerLost { .. }) => {
                    ctrl.recover()?;
                }
                Err(e) => return Err(e),
            }
            for d in done.drain(..) {
                if let Err(status) = d.result {
                    return Err(NvmeError::Status {
                        command: job.pattern.name(),
                        cid: d.cid,
                        status,
                    });
                }
                stats.record(d.latency);
                free.push(d.tag);
                *count -= 1;
            }
        }
    }
    let mode = match ctrl.mode() {
        Mode::Poll => "poll",
        Mode::Msix => "msix",
    };
    let target = format!("{} nsid {}", ctrl.device().address(), ns.id);
    let mut summary = stats.finish(Setup {
        driver: "barmap",
        mode,
        target,
        pattern: job.pattern,
        qd: job.qd,
        bs: job.bs,
    });
    summary.recoveries = ctrl.recoveries();
    for q in 0..queues {
        summary.interrupts += ctrl.interrupts(q)?;
    }
    Ok(summary)
}

/// The cost of the driver's two kinds of register access, the floor under
/// every command: a doorbell write (one per submission batch and one per
/// completion batch) and a register read, averaged over `count` of each.
pub fn floor(ctrl: &mut Controller, count: u32, json: bool) -> Result<(), NvmeError> {
    let count = count.max(1);
    let start = Instant::now();
    for _ in 0..count {
        ctrl.ring_unchanged(0)?;
    }
    let doorbell = start.elapsed() / count;
    let start = Instant::now();
    for _ in 0..count {
        ctrl.status()?;
    }
    let read = start.elapsed() / count;
    let (doorbell_ns, read_ns) = (doorbell.as_nanos(), read.as_nanos());
    match json {
        true => println!(
            "{}",
            serde_json::json!({"count": count, "doorbell_write_ns": doorbell_ns, "register_read_ns": read_ns})
        ),
        false => println!(
            "doorbell write {doorbell_ns} ns, register read (CSTS) {read_ns} ns, over {count} of each"
        ),
    }
    Ok(())
}
