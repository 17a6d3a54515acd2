//! The userspace NVMe driver of examples/nvme against QEMU's controller in
//! the guest (run with --include-ignored; qemu-scripts/lib.sh gives it
//! namespace 1 on a 16 MiB known-pattern image and namespace 2 on a 1 GiB
//! null-co device that reads zeroes, and MDTS 1 MiB).
//!
//! Namespace 1's first half (LBAs 0..16384) belongs to the random-LBA test,
//! whose expected content the harness checks in the image file after the
//! guest is gone; the other tests use the second half below LBA 28672. The
//! last 2 MiB (LBAs 28672..32768) are never written: the L2 guest of
//! tests/vmm_guest.rs reads them and checks them against the pattern.

mod common;
#[allow(dead_code)] // the example's driver: these tests use part of its API
#[path = "../examples/nvme/driver/mod.rs"]
mod driver;
#[path = "nvme/image.rs"]
mod image;
#[path = "../examples/nvme/pattern.rs"]
mod pattern;
#[path = "../examples/nvme/rng.rs"]
mod rng;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use barmap::vm_memory::{Bytes, VolatileMemory};
use barmap::DmaBuffer;
use common::nvme;
use common::nvme_admin::{MODEL, SERIAL};
use driver::error::{SCT_GENERIC, SC_LBA_OUT_OF_RANGE};
use driver::queue::Done;
use driver::{Controller, Data, Mode, NvmeError, Options};
use image::{initial_block, Cksum, IMAGE_BLOCK};
use pattern::written_block;
use rng::Rng;

const FILE_NS: u32 = 1;
const NULL_NS: u32 = 2;
const BLOCK: usize = IMAGE_BLOCK;
/// Namespace 1's blocks, and the first half the harness checks.
const FILE_BLOCKS: u64 = 32768;
const CHECKED_BLOCKS: u64 = FILE_BLOCKS / 2;
/// Second-half areas of the other tests.
const PRP_LBA: u64 = 16384;
const MIXED_LBA: u64 = 20480;
const RESET_LBA: u64 = 20736;
const MODES_LBA: u64 = 24064;
const MIB: usize = 1 << 20;

fn open(mode: Mode, queues: u16, depth: u16) -> Controller {
    let opts = Options {
        queues,
        depth,
        mode,
        timeout: Duration::from_secs(10),
    };
    Controller::open(nvme(), opts).unwrap()
}

/// One I/O of a batch: `len` bytes at `lba`, data at `offset` of the buffer.
#[derive(Clone, Copy, Debug)]
struct Op {
    write: bool,
    nsid: u32,
    lba: u64,
    len: usize,
    offset: usize,
}

/// Runs `ops` on queue `q` with up to `qd` outstanding (tag = index in
/// `ops`); every op must complete once, successfully. Returns the
/// completions in the order they were seen.
fn run_ops(ctrl: &mut Controller, q: usize, buffer: &DmaBuffer, ops: &[Op], qd: usize) -> Vec<Done> {
    let mut seen = Vec::with_capacity(ops.len());
    let (mut next, mut outstanding) = (0, 0);
    while seen.len() < ops.len() {
        while outstanding < qd && next < ops.len() {
            let op = ops[next];
            let ns = ctrl.namespace(op.nsid).unwrap();
            let cmd = ctrl.rw_command(op.write, &ns, op.lba, op.len).unwrap();
            let data = Data {
                buffer,
                offset: op.offset,
                len: op.len,
            };
            ctrl.push(q, cmd, Some(data), next as u64).unwrap();
            (next, outstanding) = (next + 1, outstanding + 1);
        }
        ctrl.ring(q).unwrap();
        let before = seen.len();
        ctrl.wait(q, &mut seen, 1).unwrap();
        outstanding -= seen.len() - before;
    }
    let mut tags: Vec<u64> = seen.iter().map(|d| d.tag).collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        (0..ops.len() as u64).collect::<Vec<_>>(),
        "each command completed exactly once"
    );
    for d in &seen {
        assert_eq!(d.result, Ok(0), "op {:?}", ops[d.tag as usize]);
    }
    seen
}

fn read_buffer(buffer: &DmaBuffer, offset: usize, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    buffer.as_volatile_slice().read_slice(&mut data, offset).unwrap();
    data
}

fn fill(buffer: &DmaBuffer, offset: usize, data: &[u8]) {
    buffer.as_volatile_slice().write_slice(data, offset).unwrap();
}

/// Blocks `lba..lba + len / BLOCK` as written under `seed`.
fn written(lba: u64, len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    for (i, block) in data.chunks_mut(BLOCK).enumerate() {
        written_block(lba + i as u64, seed, block);
    }
    data
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_driver_identifies_both_namespaces_and_null_reads_zeroes() {
    let mut ctrl = open(Mode::Poll, 2, 16);
    assert_eq!(
        (ctrl.info().serial.as_str(), ctrl.info().model.as_str()),
        (SERIAL, MODEL)
    );
    assert_eq!(ctrl.info().vendor, 0x1b36);
    let namespaces: Vec<_> = ctrl
        .namespaces()
        .iter()
        .map(|ns| (ns.id, ns.blocks, ns.block_size))
        .collect();
    assert_eq!(namespaces, [(FILE_NS, FILE_BLOCKS, 512), (NULL_NS, 1 << 21, 512)]);
    assert_eq!(ctrl.max_transfer(), MIB, "MDTS 8 of 4 KiB pages");
    assert_eq!(ctrl.queues(), 2, "Set Features granted both queue pairs");
    assert!(matches!(
        ctrl.namespace(3),
        Err(NvmeError::NoNamespace { nsid: 3, .. })
    ));

    let buffer = ctrl.dma().alloc(8192).unwrap();
    fill(&buffer, 0, &[0xa5; 8192]);
    let ops = [Op {
        write: false,
        nsid: NULL_NS,
        lba: 1_000_000,
        len: 8192,
        offset: 0,
    }];
    run_ops(&mut ctrl, 1, &buffer, &ops, 1);
    assert_eq!(
        read_buffer(&buffer, 0, 8192),
        vec![0; 8192],
        "null-co with read-zeroes=on"
    );
    ctrl.shutdown().unwrap();
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_driver_random_lbas_read_back_and_match_the_image() {
    const SEED: u64 = 0x5eed_0019;
    let mut ctrl = open(Mode::Poll, 1, 32);
    let mut rng = Rng::new(SEED);
    let mut lbas = BTreeSet::new();
    while lbas.len() < 1000 {
        lbas.insert(rng.below(CHECKED_BLOCKS));
    }
    let lbas: Vec<u64> = lbas.into_iter().collect();
    let buffer = ctrl.dma().alloc(lbas.len() * BLOCK).unwrap();
    let op = |write, i: usize| Op {
        write,
        nsid: FILE_NS,
        lba: lbas[i],
        len: BLOCK,
        offset: i * BLOCK,
    };

    let reads: Vec<Op> = (0..lbas.len()).map(|i| op(false, i)).collect();
    run_ops(&mut ctrl, 0, &buffer, &reads, 16);
    for (i, &lba) in lbas.iter().enumerate() {
        assert_eq!(
            read_buffer(&buffer, i * BLOCK, BLOCK),
            initial_block(lba),
            "the harness's image at {lba}"
        );
    }
    for (i, &lba) in lbas.iter().enumerate() {
        fill(&buffer, i * BLOCK, &written(lba, BLOCK, SEED));
    }
    let writes: Vec<Op> = (0..lbas.len()).map(|i| op(true, i)).collect();
    run_ops(&mut ctrl, 0, &buffer, &writes, 16);
    ctrl.sync(true, FILE_NS, None, None).unwrap();
    fill(&buffer, 0, &vec![0; lbas.len() * BLOCK]);
    run_ops(&mut ctrl, 0, &buffer, &reads, 16);
    for (i, &lba) in lbas.iter().enumerate() {
        assert_eq!(
            read_buffer(&buffer, i * BLOCK, BLOCK),
            written(lba, BLOCK, SEED),
            "LBA {lba} read back"
        );
    }

    // The whole checked half, as read and as it must be; the harness
    // compares the image file with the same CRC.
    let big = ctrl.dma().alloc(MIB).unwrap();
    let mut sum = Cksum::default();
    let per = (MIB / BLOCK) as u64;
    for chunk in 0..CHECKED_BLOCKS / per {
        let first = chunk * per;
        let ops = [Op {
            write: false,
            nsid: FILE_NS,
            lba: first,
            len: MIB,
            offset: 0,
        }];
        run_ops(&mut ctrl, 0, &big, &ops, 1);
        let got = read_buffer(&big, 0, MIB);
        for (i, block) in got.chunks(BLOCK).enumerate() {
            let lba = first + i as u64;
            let expected = match lbas.binary_search(&lba) {
                Ok(_) => written(lba, BLOCK, SEED),
                Err(_) => initial_block(lba),
            };
            assert_eq!(block, expected, "block {lba} of the checked half");
            sum.update(&expected);
        }
    }
    let bytes = CHECKED_BLOCKS as usize * BLOCK;
    let marker = format!("\n@@BARMAP@@ nvme-image-cksum 0 {bytes} {}\n", sum.finish());
    let mut out = std::io::stdout().lock();
    out.write_all(marker.as_bytes()).unwrap();
    out.flush().unwrap();
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_driver_one_mib_transfers_use_prp_lists() {
    let mut ctrl = open(Mode::Poll, 1, 16);
    let (a, b) = (PRP_LBA, PRP_LBA + (MIB / BLOCK) as u64 + 64);
    let buffer = ctrl.dma().alloc(2 * MIB + 8192).unwrap();
    // Written as one command each: from a page boundary (PRP list of 255
    // entries) and from offset 0x200 (257 pages: PRP1 with an offset and a
    // list of 256); read back in 8 KiB commands (PRP1 and PRP2 only).
    let (data_a, data_b) = (written(a, MIB, 1), written(b, MIB, 2));
    fill(&buffer, 0, &data_a);
    fill(&buffer, MIB + 4096 + 0x200, &data_b);
    let writes = [
        Op {
            write: true,
            nsid: FILE_NS,
            lba: a,
            len: MIB,
            offset: 0,
        },
        Op {
            write: true,
            nsid: FILE_NS,
            lba: b,
            len: MIB,
            offset: MIB + 4096 + 0x200,
        },
    ];
    run_ops(&mut ctrl, 0, &buffer, &writes, 2);
    fill(&buffer, 0, &vec![0; buffer.size()]);
    let small: Vec<Op> = (0..MIB / 8192)
        .flat_map(|i| {
            let lba = (i * 8192 / BLOCK) as u64;
            [a + lba, b + lba].map(|lba| (lba, i))
        })
        .enumerate()
        .map(|(n, (lba, _))| Op {
            write: false,
            nsid: FILE_NS,
            lba,
            len: 8192,
            offset: n * 8192,
        })
        .collect();
    run_ops(&mut ctrl, 0, &buffer, &small, 8);
    let got = read_buffer(&buffer, 0, 2 * MIB);
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for (n, piece) in got.chunks(8192).enumerate() {
        [&mut got_a, &mut got_b][n % 2].extend_from_slice(piece);
    }
    assert!(
        got_a == data_a,
        "1 MiB written through a PRP list, read back in 8 KiB pieces"
    );
    assert!(
        got_b == data_b,
        "1 MiB from offset 0x200 through a PRP list, read back in 8 KiB pieces"
    );

    // The other way round: 1 MiB read through a list from offset 0x200.
    let read = [Op {
        write: false,
        nsid: FILE_NS,
        lba: a,
        len: MIB,
        offset: 0x200,
    }];
    run_ops(&mut ctrl, 0, &buffer, &read, 1);
    assert!(
        read_buffer(&buffer, 0x200, MIB) == data_a,
        "1 MiB read through a PRP list"
    );

    let ns = ctrl.namespace(FILE_NS).unwrap();
    let too_large = ctrl.rw_command(false, &ns, a, MIB + BLOCK);
    assert!(
        matches!(too_large, Err(NvmeError::TransferTooLarge { max: MIB, .. })),
        "{too_large:?}"
    );
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_driver_qd32_mixed_reads_and_writes_complete_in_a_consistent_order() {
    const SLOTS: usize = 32;
    const OPS: usize = 1000;
    let mut ctrl = open(Mode::Poll, 1, 64);
    let len = 8 * BLOCK;
    let buffer = ctrl.dma().alloc(SLOTS * len).unwrap();
    let lba = |slot: usize| MIXED_LBA + (slot * 8) as u64;
    // Each slot writes generation g, reads it back once the write completed,
    // checks it, and writes g + 1: 32 commands always outstanding, reads and
    // writes mixed, and every read must see the write it follows.
    let mut generation = [1u64; SLOTS];
    let mut writing = [true; SLOTS];
    let submit = |ctrl: &mut Controller, slot: usize, write: bool, generation: u64| {
        if write {
            fill(&buffer, slot * len, &written(lba(slot), len, generation));
        }
        let ns = ctrl.namespace(FILE_NS).unwrap();
        let cmd = ctrl.rw_command(write, &ns, lba(slot), len).unwrap();
        let data = Data {
            buffer: &buffer,
            offset: slot * len,
            len,
        };
        ctrl.push(0, cmd, Some(data), slot as u64).unwrap()
    };
    // Submission order of each slot's outstanding command, to count
    // completions that overtake an earlier submission.
    let mut sequence: [usize; SLOTS] = std::array::from_fn(|slot| slot);
    let mut outstanding_cids = BTreeSet::new();
    for slot in 0..SLOTS {
        assert!(outstanding_cids.insert(submit(&mut ctrl, slot, true, 1)));
    }
    ctrl.ring(0).unwrap();
    let (mut completed, mut submitted, mut out_of_order) = (0, SLOTS, 0);
    let mut done = Vec::new();
    let mut last_sequence = None;
    while completed < OPS {
        ctrl.wait(0, &mut done, 1).unwrap();
        // The batch's identifiers are free for the driver once reaped.
        for d in &done {
            assert!(
                outstanding_cids.remove(&d.cid),
                "cid {} completed while not outstanding",
                d.cid
            );
        }
        for d in done.drain(..) {
            completed += 1;
            assert_eq!(d.result, Ok(0));
            let slot = d.tag as usize;
            if last_sequence.is_some_and(|last| sequence[slot] < last) {
                out_of_order += 1;
            }
            last_sequence = Some(sequence[slot]);
            if !writing[slot] {
                assert!(
                    read_buffer(&buffer, slot * len, len) == written(lba(slot), len, generation[slot]),
                    "slot {slot} read back generation {}",
                    generation[slot]
                );
                generation[slot] += 1;
            }
            writing[slot] = !writing[slot];
            if submitted < OPS {
                assert!(outstanding_cids.insert(submit(&mut ctrl, slot, writing[slot], generation[slot])));
                sequence[slot] = submitted;
                submitted += 1;
            }
        }
        ctrl.ring(0).unwrap();
    }
    assert!(outstanding_cids.is_empty(), "every command completed once");
    assert_eq!(ctrl.queue(0).unwrap().outstanding(), 0);
    assert!(
        generation.iter().all(|&g| g > 1),
        "every slot's write was read back and checked"
    );
    println!("{OPS} commands at QD{SLOTS}: {out_of_order} completions overtook an earlier submission");
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_driver_read_past_the_namespace_is_lba_out_of_range() {
    let mut ctrl = open(Mode::Poll, 1, 16);
    let buffer = ctrl.dma().alloc(4096).unwrap();
    for (nsid, blocks) in [(FILE_NS, FILE_BLOCKS), (NULL_NS, 1 << 21)] {
        for (lba, len) in [(blocks - 1, 2 * BLOCK), (blocks, BLOCK), (u64::MAX >> 1, BLOCK)] {
            let data = Data {
                buffer: &buffer,
                offset: 0,
                len,
            };
            match ctrl.sync(false, nsid, Some(lba), Some(data)) {
                Err(NvmeError::Status {
                    command: "Read",
                    status,
                    ..
                }) => {
                    assert_eq!(
                        (status.sct, status.sc),
                        (SCT_GENERIC, SC_LBA_OUT_OF_RANGE),
                        "{status}"
                    );
                    assert!(status.is_lba_out_of_range());
                }
                other => panic!("namespace {nsid} LBA {lba}: {other:?}"),
            }
        }
        let data = Data {
            buffer: &buffer,
            offset: 0,
            len: BLOCK,
        };
        ctrl.sync(false, nsid, Some(blocks - 1), Some(data)).unwrap();
    }
    assert_eq!(
        read_buffer(&buffer, 0, BLOCK),
        vec![0; BLOCK],
        "the null namespace's last block"
    );
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_driver_recovers_from_a_function_reset_mid_run() {
    const WRITES: usize = 400;
    const SEED: u64 = 77;
    let mut ctrl = open(Mode::Poll, 1, 16);
    let len = 8 * BLOCK;
    let buffer = ctrl.dma().alloc(WRITES * len).unwrap();
    let lba = |i: usize| RESET_LBA + (i * 8) as u64;
    for i in 0..WRITES {
        fill(&buffer, i * len, &written(lba(i), len, SEED));
    }
    let ns = ctrl.namespace(FILE_NS).unwrap();
    let (mut next, mut completed, mut lost) = (0, BTreeSet::new(), 0);
    let mut done = Vec::new();
    let mut reset = None;
    while completed.len() < WRITES {
        while ctrl.queue(0).unwrap().outstanding() < 8 && next < WRITES {
            let cmd = ctrl.rw_command(true, &ns, lba(next), len).unwrap();
            ctrl.push(
                0,
                cmd,
                Some(Data {
                    buffer: &buffer,
                    offset: next * len,
                    len,
                }),
                next as u64,
            )
            .unwrap();
            next += 1;
        }
        ctrl.ring(0).unwrap();
        if reset.is_none() && completed.len() >= WRITES / 2 {
            reset = Some(ctrl.device().reset().unwrap());
        }
        match ctrl.wait(0, &mut done, 1) {
            Ok(_) => {}
            Err(NvmeError::ControllerLost { outstanding, .. }) => {
                assert!(outstanding > 0);
                lost += 1;
                ctrl.recover().unwrap();
            }
            Err(e) => panic!("after {} writes: {e}", completed.len()),
        }
        for d in done.drain(..) {
            assert_eq!(d.result, Ok(0));
            assert!(completed.insert(d.tag), "write {} completed twice", d.tag);
        }
    }
    println!("reset {reset:?}; {lost} lost controller(s) seen");
    assert_eq!(
        (lost, ctrl.recoveries()),
        (1, 1),
        "the reset was noticed and recovered from once"
    );

    let check = ctrl.dma().alloc(WRITES * len).unwrap();
    let reads: Vec<Op> = (0..WRITES)
        .map(|i| Op {
            write: false,
            nsid: FILE_NS,
            lba: lba(i),
            len,
            offset: i * len,
        })
        .collect();
    run_ops(&mut ctrl, 0, &check, &reads, 8);
    assert!(
        read_buffer(&check, 0, WRITES * len) == read_buffer(&buffer, 0, WRITES * len),
        "every write landed"
    );
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_driver_msix_and_polled_modes_give_the_same_data() {
    const BLOCKS: usize = 64;
    let len = 8 * BLOCK;
    let lba = |i: usize| MODES_LBA + (i * 8) as u64;
    let ops = |write| -> Vec<Op> {
        (0..BLOCKS)
            .map(|i| Op {
                write,
                nsid: FILE_NS,
                lba: lba(i),
                len,
                offset: i * len,
            })
            .collect()
    };
    let data = written(MODES_LBA, BLOCKS * len, 99);

    let mut msix = open(Mode::Msix, 2, 16);
    assert_eq!(msix.queues(), 2);
    let vectors = (msix.queue(0).unwrap().vector(), msix.queue(1).unwrap().vector());
    assert_eq!(vectors, (Some(1), Some(2)), "a vector of its own for each queue");
    assert!(matches!(
        msix.queue(2),
        Err(NvmeError::NoQueue { queue: 2, queues: 2 })
    ));
    let buffer = msix.dma().alloc(BLOCKS * len).unwrap();
    fill(&buffer, 0, &data);
    let writes = ops(true);
    // Each queue's completions raise its own vector and no other's.
    run_ops(&mut msix, 0, &buffer, &writes[..BLOCKS / 2], 8);
    let after_queue_1 = (msix.interrupts(0).unwrap(), msix.interrupts(1).unwrap());
    run_ops(&mut msix, 1, &buffer, &writes[BLOCKS / 2..], 8);
    let after_queue_2 = (msix.interrupts(0).unwrap(), msix.interrupts(1).unwrap());
    assert!(
        after_queue_1.0 > 0 && after_queue_1.1 == 0,
        "queue 1's vector only: {after_queue_1:?}"
    );
    assert!(
        after_queue_2.0 == after_queue_1.0 && after_queue_2.1 > 0,
        "queue 2's vector only: {after_queue_2:?}"
    );
    fill(&buffer, 0, &vec![0; BLOCKS * len]);
    let reads = ops(false);
    run_ops(&mut msix, 1, &buffer, &reads[..BLOCKS / 2], 8);
    run_ops(&mut msix, 0, &buffer, &reads[BLOCKS / 2..], 8);
    let via_msix = read_buffer(&buffer, 0, BLOCKS * len);
    drop(buffer);
    drop(msix);

    let mut poll = open(Mode::Poll, 2, 16);
    let buffer = poll.dma().alloc(BLOCKS * len).unwrap();
    run_ops(&mut poll, 0, &buffer, &reads[..BLOCKS / 2], 8);
    run_ops(&mut poll, 1, &buffer, &reads[BLOCKS / 2..], 8);
    assert_eq!((poll.interrupts(0).unwrap(), poll.interrupts(1).unwrap()), (0, 0));
    assert!(via_msix == data, "MSI-X mode read what it wrote");
    assert!(
        read_buffer(&buffer, 0, BLOCKS * len) == via_msix,
        "polled mode reads the same"
    );
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_driver_a_command_never_rung_times_out() {
    let timeout = Duration::from_millis(300);
    let opts = Options {
        queues: 1,
        depth: 16,
        mode: Mode::Poll,
        timeout,
    };
    let mut ctrl = Controller::open(nvme(), opts).unwrap();
    let buffer = ctrl.dma().alloc(4096).unwrap();
    let ns = ctrl.namespace(FILE_NS).unwrap();
    let cmd = ctrl.rw_command(false, &ns, MODES_LBA, BLOCK).unwrap();
    let cid = ctrl
        .push(
            0,
            cmd,
            Some(Data {
                buffer: &buffer,
                offset: 0,
                len: BLOCK,
            }),
            7,
        )
        .unwrap();
    let mut done = Vec::new();
    let start = std::time::Instant::now();
    match ctrl.wait(0, &mut done, 1) {
        Err(NvmeError::Timeout {
            command: "Read",
            cid: timed_out,
            after,
        }) => {
            assert_eq!((timed_out, after), (cid, timeout));
        }
        other => panic!("a command whose doorbell was not rung: {other:?}"),
    }
    assert!(start.elapsed() >= timeout, "the wait lasted the timeout");
    // Still outstanding: rung now, its timeout counts from the doorbell and it completes.
    ctrl.ring(0).unwrap();
    ctrl.wait(0, &mut done, 1).unwrap();
    assert_eq!((done.len(), done[0].tag, done[0].result), (1, 7, Ok(0)));
}

fn nvme_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let built = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples/nvme"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join("nvme"));
    let mut candidates = built.into_iter().chain(on_path);
    candidates
        .find(|p| p.is_file())
        .expect("no nvme binary: `cargo build --example nvme` (the guest has it in /usr/bin)")
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(nvme_binary())
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
#[ignore = "needs QEMU NVMe (serial=barmap0001, two namespaces) bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn nvme_cli_identifies_writes_reads_and_benchmarks() {
    const CLI_LBA: u64 = 25000; // 0x61a8, the first word of its written block
    let (code, out, err) = cli(&["--json", "identify"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["serial"], SERIAL);
    assert_eq!(doc["mdts_bytes"], MIB);
    assert_eq!(doc["namespaces"][1]["blocks"], 1 << 21);

    let lba = CLI_LBA.to_string();
    let (code, _, err) = cli(&["write", &lba, "4", "--seed", "5"]);
    assert_eq!(code, 0, "{err}");
    let file = std::env::temp_dir().join("nvme-cli-read.bin");
    let (code, _, err) = cli(&["read", &lba, "4", "--output", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(&file).unwrap() == written(CLI_LBA, 4 * BLOCK, 5),
        "read returns what write wrote"
    );
    let (code, out, _) = cli(&["read", &lba, "1"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!(
            "{:08x}  a8 61 00 00 00 00 00 00  05 00",
            CLI_LBA * BLOCK as u64
        )) && out.ends_with(&format!("\n{:08x}\n", (CLI_LBA + 1) * BLOCK as u64)),
        "hexdump -C's lines, then the end offset: {out}"
    );
    let (code, all, _) = cli(&["read", &lba, "1", "-v"]);
    assert_eq!(code, 0);
    assert_eq!(all.lines().count(), BLOCK / 16 + 1, "-v: every line: {all}");

    let (code, _, err) = cli(&["read", &FILE_BLOCKS.to_string(), "1"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("nvme: error: Read (cid ") && err.contains("LBA Out of Range"),
        "{err}"
    );

    let args = [
        "--mode", "msix", "--json", "bench", "--nsid", "2", "--qd", "4", "--time", "0.5", "--quiet",
    ];
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "{err}");
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            result["driver"].as_str(),
            result["mode"].as_str(),
            result["qd"].as_u64()
        ),
        (Some("barmap"), Some("msix"), Some(4))
    );
    assert!(
        result["ops"].as_u64().unwrap() > 0 && result["lat_us"]["p50"].as_f64().unwrap() > 0.0,
        "{result}"
    );
}
