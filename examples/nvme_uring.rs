//! nvme_uring: the kernel baseline of `nvme bench`. The same patterns,
//! queue depth and block size, issued as O_DIRECT reads or writes through
//! io_uring to a block device of the kernel's nvme driver, with the same
//! result format (stats shared with `nvme`).
//!
//! ```text
//! nvme_uring /dev/nvme0n2 --pattern randread --qd 32 --bs 4096 --time 5 [--iopoll] [--json]
//! ```
//!
//! qemu-scripts/nvme-bench.sh rebinds the guest's controller to `nvme` and
//! runs this next to `nvme bench` in one boot.

#[path = "nvme/rng.rs"]
mod rng;
#[path = "nvme/stats.rs"]
mod stats;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use barmap::vm_memory::MmapRegion;
use clap::Parser;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use rng::Rng;
use stats::{Pattern, Setup, Stats, Summary};

/// The kernel baseline of `nvme bench`: O_DIRECT I/O through io_uring.
#[derive(Parser, Debug)]
#[command(name = "nvme_uring", version)]
struct Cli {
    /// The block device (a namespace of the kernel's nvme driver)
    device: PathBuf,
    /// Commands kept outstanding
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    qd: u32,
    /// Bytes per command (a multiple of the device's logical block)
    #[arg(long, default_value_t = 4096)]
    bs: usize,
    /// Access pattern
    #[arg(long, value_enum, default_value_t = Pattern::Randread)]
    pattern: Pattern,
    /// Run time in seconds
    #[arg(long, default_value_t = 5.0)]
    time: f64,
    /// Seed of the random offsets
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress line on stderr
    #[arg(long)]
    quiet: bool,
    /// Print one JSON line instead of the table
    #[arg(long)]
    json: bool,
    /// Poll for completions (IORING_SETUP_IOPOLL; needs the nvme module's poll_queues)
    #[arg(long)]
    iopoll: bool,
}

/// What the baseline can fail with.
#[derive(Debug, thiserror::Error)]
enum UringError {
    #[error("{path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path}: {bs}-byte commands do not fit its {size} bytes")]
    TooSmall { path: String, bs: usize, size: u64 },
    #[error("io_uring {step}: {source}")]
    Ring {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("buffer memory: {0}")]
    Memory(#[from] barmap::vm_memory::mmap::MmapRegionError),
    #[error("{pattern} at byte {offset}: {result}")]
    Io {
        pattern: &'static str,
        offset: u64,
        result: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(summary) => {
            summary.print(cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nvme_uring: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<Summary, UringError> {
    let path = cli.device.display().to_string();
    let open_error = |source| UringError::Open {
        path: path.clone(),
        source,
    };
    let mut file: File = OpenOptions::new()
        .read(true)
        .write(cli.pattern.writes())
        .custom_flags(libc::O_DIRECT)
        .open(&cli.device)
        .map_err(open_error)?;
    let size = file.seek(SeekFrom::End(0)).map_err(open_error)?;
    let ios = size / cli.bs as u64;
    if ios == 0 || cli.bs == 0 {
        return Err(UringError::TooSmall {
            path,
            bs: cli.bs,
            size,
        });
    }
    let qd = cli.qd as usize;
    let buffers = MmapRegion::<()>::new(qd * cli.bs)?;
    let ring_error = |step| move |source| UringError::Ring { step, source };
    let mut builder = IoUring::<squeue::Entry, cqueue::Entry>::builder();
    if cli.iopoll {
        builder.setup_iopoll();
    }
    let mut ring = builder
        .build(cli.qd.next_power_of_two())
        .map_err(ring_error("setup"))?;
    let fd = types::Fd(file.as_raw_fd());
    let mut rng = Rng::new(cli.seed);
    let (mut next_seq, mut inflight, mut draining) = (0u64, 0usize, false);
    let mut free: Vec<usize> = (0..qd).rev().collect();
    let mut submitted = vec![(Instant::now(), 0u64); qd];
    let time = Duration::from_secs_f64(cli.time.max(0.0));
    let mut stats = Stats::start(!cli.quiet);
    loop {
        draining |= stats.elapsed() >= time;
        while !draining && inflight < qd {
            let Some(slot) = free.pop() else { break };
            let index = match cli.pattern {
                Pattern::Seqread => {
                    next_seq = (next_seq + 1) % ios;
                    next_seq
                }
                _ => rng.below(ios),
            };
            let offset = index * cli.bs as u64;
            // The slot's part of the buffer memory: `qd` slots of `bs` bytes.
            let buf = buffers.as_ptr().wrapping_add(slot * cli.bs);
            let entry = match cli.pattern.writes() {
                true => opcode::Write::new(fd, buf, cli.bs as u32).offset(offset).build(),
                false => opcode::Read::new(fd, buf, cli.bs as u32).offset(offset).build(),
            };
            // SAFETY: the entry's buffer is slot `slot` of `buffers`, which
            // lives until after the loop has reaped every completion, and no
            // other entry uses the slot until this one completed; the file
            // stays open as long. The ring has `qd` or more entries and at most
            // `qd` are outstanding, so the push cannot overflow it.
            let pushed = unsafe { ring.submission().push(&entry.user_data(slot as u64)) };
            if pushed.is_err() {
                free.push(slot);
                break;
            }
            submitted[slot] = (Instant::now(), offset);
            inflight += 1;
        }
        if inflight == 0 {
            break;
        }
        ring.submit_and_wait(1).map_err(ring_error("submit"))?;
        for cqe in ring.completion() {
            let slot = (cqe.user_data() as usize).min(qd - 1);
            let (start, offset) = submitted[slot];
            if cqe.result() != cli.bs as i32 {
                let result = match cqe.result() {
                    r if r < 0 => std::io::Error::from_raw_os_error(-r).to_string(),
                    r => format!("{r} of {} bytes", cli.bs),
                };
                return Err(UringError::Io {
                    pattern: cli.pattern.name(),
                    offset,
                    result,
                });
            }
            stats.record(start.elapsed());
            free.push(slot);
            inflight -= 1;
        }
    }
    Ok(stats.finish(Setup {
        driver: "kernel",
        mode: if cli.iopoll { "io_uring-iopoll" } else { "io_uring" },
        target: path,
        pattern: cli.pattern,
        qd,
        bs: cli.bs,
    }))
}
