//! nvme: a userspace NVMe driver on barmap's public API.
//!
//! ```text
//! nvme identify                                   # controller and namespaces
//! nvme read LBA COUNT [--nsid N] [--output FILE | -v]  # hexdump (-v: every line) or file
//! nvme write LBA COUNT [--byte B | --seed S | --input FILE]
//! nvme bench [--pattern randread|randwrite|seqread] [--qd N] [--bs BYTES] [--time S]
//! nvme floor [--count N]                          # one doorbell write, one register read
//! global: --device ADDR (BARMAP_NVME) --mode poll|msix --queues N --timeout-ms MS --json
//! ```
//!
//! The controller must be bound to vfio-pci. The driver (`driver`) resets
//! and enables it honouring CAP (timeout, doorbell stride, page sizes), reads
//! Identify, asks for its I/O queues with Set Features, and runs Read, Write
//! and Flush through PRPs and PRP lists into barmap DMA buffers; completions
//! are found by polling the phase tag or on each queue's MSI-X vector. It
//! shuts the controller down (CC.SHN) when dropped. `bench` keeps a queue
//! depth outstanding, with `stats` for the results (shared with the kernel
//! baseline `nvme_uring`); `pattern` has the known data the guest tests
//! write, `rng` the seeded generator of offsets, `cli` the command line.
//! Host tests: `cargo test --example nvme`; tests/nvme_driver.rs runs the
//! driver against QEMU's controller in the guest, and
//! qemu-scripts/nvme-bench.sh measures it against the kernel's driver.

#[path = "nvme/bench.rs"]
mod bench;
#[path = "nvme/cli.rs"]
mod cli;
#[path = "nvme/driver/mod.rs"]
mod driver;
#[path = "shared/hexdump.rs"]
mod hexdump;
#[path = "nvme/pattern.rs"]
mod pattern;
#[path = "nvme/rng.rs"]
mod rng;
#[path = "nvme/stats.rs"]
mod stats;

use std::process::ExitCode;
use std::time::Duration;

use barmap::vm_memory::{Bytes, VolatileMemory};
use clap::Parser;

use cli::{Cli, Command};
use driver::{Controller, Data, NvmeError};
use hexdump::{hexdump, Repeats};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvme: error: {e}");
            if let NvmeError::Status { status, .. } = &e {
                if status.is_lba_out_of_range() {
                    eprintln!("nvme: `nvme identify` shows each namespace's size in blocks");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), NvmeError> {
    match &cli.command {
        Command::Identify => identify(&Controller::open(cli.device, cli.options(1))?, cli.json),
        Command::Read(args) => {
            let mut ctrl = Controller::open(cli.device, cli.options(1))?;
            let data = transfer(&mut ctrl, false, args.nsid, args.lba, args.count, &[])?;
            match &args.output {
                Some(path) => std::fs::write(path, &data).map_err(|source| NvmeError::File {
                    path: path.clone(),
                    source,
                }),
                None => {
                    let repeats = if args.all_lines {
                        Repeats::Shown
                    } else {
                        Repeats::Squeezed
                    };
                    print!(
                        "{}",
                        hexdump(args.lba * block_size(&ctrl, args.nsid)?, &data, repeats)
                    );
                    Ok(())
                }
            }
        }
        Command::Write(args) => {
            let mut ctrl = Controller::open(cli.device, cli.options(1))?;
            let block = block_size(&ctrl, args.nsid)? as usize;
            let len = args.count as usize * block;
            let data = match (&args.input, args.byte, args.seed) {
                (Some(path), _, _) => {
                    let mut data = std::fs::read(path).map_err(|source| NvmeError::File {
                        path: path.clone(),
                        source,
                    })?;
                    if data.len() < len {
                        return Err(NvmeError::BadTransfer(format!(
                            "{path} has {} of the {len} bytes",
                            data.len()
                        )));
                    }
                    data.truncate(len);
                    data
                }
                (None, Some(byte), _) => vec![byte; len],
                (None, None, seed) => {
                    let mut data = vec![0u8; len];
                    for (i, chunk) in data.chunks_mut(block).enumerate() {
                        pattern::written_block(args.lba + i as u64, seed.unwrap_or(1), chunk);
                    }
                    data
                }
            };
            transfer(&mut ctrl, true, args.nsid, args.lba, args.count, &data)?;
            ctrl.sync(true, args.nsid, None, None)?;
            if !cli.json {
                println!(
                    "wrote {} blocks at LBA {} of namespace {} and flushed",
                    args.count, args.lba, args.nsid
                );
            }
            Ok(())
        }
        Command::Bench(args) => {
            let job = bench::Job {
                nsid: args.nsid,
                qd: args.qd as usize,
                bs: args.bs,
                pattern: args.pattern,
                time: Duration::from_secs_f64(args.time.max(0.0)),
                progress: !args.quiet,
                seed: args.seed,
            };
            let mut ctrl = Controller::open(cli.device, cli.options(job.qd))?;
            bench::run(&mut ctrl, &job)?.print(cli.json);
            Ok(())
        }
        Command::Floor { count } => bench::floor(
            &mut Controller::open(cli.device, cli.options(1))?,
            *count,
            cli.json,
        ),
    }
}

fn block_size(ctrl: &Controller, nsid: u32) -> Result<u64, NvmeError> {
    Ok(u64::from(ctrl.namespace(nsid)?.block_size))
}

/// Reads (`data` empty) or writes `count` blocks at `lba`, in commands of
/// at most the controller's transfer limit; returns what was read.
fn transfer(
    ctrl: &mut Controller,
    write: bool,
    nsid: u32,
    lba: u64,
    count: u64,
    data: &[u8],
) -> Result<Vec<u8>, NvmeError> {
    let block = block_size(ctrl, nsid)?;
    let per_command = (ctrl.max_transfer() as u64 / block).max(1);
    let len = count
        .checked_mul(block)
        .filter(|&len| len <= 1 << 30)
        .ok_or_else(|| {
            NvmeError::BadTransfer(format!(
                "{count} blocks is more than this tool moves at once (1 GiB)"
            ))
        })?;
    let buffer = ctrl.dma().alloc((per_command * block) as usize)?;
    let mut out = Vec::with_capacity(if write { 0 } else { len as usize });
    let mut done = 0;
    while done < count {
        let n = per_command.min(count - done);
        let bytes = (n * block) as usize;
        let range = (done * block) as usize..(done * block) as usize + bytes;
        if write {
            buffer.as_volatile_slice().write_slice(&data[range], 0)?;
        }
        ctrl.sync(
            write,
            nsid,
            Some(lba + done),
            Some(Data {
                buffer: &buffer,
                offset: 0,
                len: bytes,
            }),
        )?;
        if !write {
            let mut chunk = vec![0u8; bytes];
            buffer.as_volatile_slice().read_slice(&mut chunk, 0)?;
            out.extend_from_slice(&chunk);
        }
        done += n;
    }
    Ok(out)
}

fn identify(ctrl: &Controller, json: bool) -> Result<(), NvmeError> {
    let info = ctrl.info();
    let version = format!(
        "{}.{}.{}",
        info.version >> 16,
        (info.version >> 8) & 0xff,
        info.version & 0xff
    );
    if json {
        let namespaces: Vec<_> = ctrl
            .namespaces()
            .iter()
            .map(|ns| serde_json::json!({"nsid": ns.id, "blocks": ns.blocks, "block_size": ns.block_size}))
            .collect();
        let doc = serde_json::json!({
            "address": ctrl.device().address().to_string(), "vendor": info.vendor, "serial": info.serial,
            "model": info.model, "firmware": info.firmware, "version": version,
            "mdts_bytes": ctrl.max_transfer(), "io_queues": ctrl.queues(), "namespaces": namespaces,
        });
        println!("{doc}");
        return Ok(());
    }
    let cap = ctrl.cap();
    println!(
        "controller {} ({:04x}), NVMe {version}",
        ctrl.device().address(),
        info.vendor
    );
    println!(
        "  serial    {}\n  model     {}\n  firmware  {}",
        info.serial, info.model, info.firmware
    );
    println!(
        "  transfer  {} bytes per command, {} I/O queue pairs granted",
        ctrl.max_transfer(),
        ctrl.queues()
    );
    println!(
        "  CAP       {} entries per queue, timeout {:?}, doorbell stride {}, pages 2^{}..=2^{}",
        cap.max_entries, cap.timeout, cap.doorbell_stride, cap.page_shift_min, cap.page_shift_max
    );
    for ns in ctrl.namespaces() {
        println!(
            "  namespace {}: {} blocks of {} bytes ({} MiB)",
            ns.id,
            ns.blocks,
            ns.block_size,
            ns.bytes() >> 20
        );
    }
    Ok(())
}
