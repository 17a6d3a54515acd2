//! barpoke run as a user runs it: the built example binary, through
//! `std::process::Command`, against QEMU's edu and pci-testdev in the test
//! guest (`qemu-scripts/guest-test.sh`, which installs it as /usr/bin/barpoke).
//!
//! The binary is `$BARMAP_BARPOKE` if set, else `target/<profile>/examples/barpoke`
//! next to this test's executable (`cargo build --example barpoke`), else
//! `barpoke` on the PATH. Every test runs it, so every test is ignored on the
//! host; argument parsing and output formatting are unit-tested on the host
//! inside the example (`cargo test --example barpoke`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// The guest devices' state is global and a VFIO group opens only once: one test at a time.
static DEVICES: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    DEVICES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn barpoke_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BARMAP_BARPOKE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut candidates: Vec<PathBuf> = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples").join("barpoke"))
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("barpoke")));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no barpoke binary (looked at {candidates:?}): build it with \
                 `cargo build --example barpoke` or set BARMAP_BARPOKE"
            )
        })
}

/// What one run of barpoke gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = Command::new(barpoke_binary())
        .args(args)
        .output()
        .expect("barpoke runs");
    Run {
        code: out
            .status
            .code()
            .expect("barpoke exited (not killed by a signal)"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// Runs barpoke, expects success and a quiet stderr, and returns stdout.
fn ok(args: &[&str]) -> String {
    let r = run(args);
    assert_eq!(r.code, 0, "barpoke {args:?} failed: {}", r.stderr);
    assert_eq!(r.stderr, "", "barpoke {args:?} wrote to stderr");
    r.stdout
}

/// Runs barpoke, expects success, and returns stdout and stderr (for --trace).
fn ok_traced(args: &[&str]) -> (String, String) {
    let r = run(args);
    assert_eq!(r.code, 0, "barpoke {args:?} failed: {}", r.stderr);
    (r.stdout, r.stderr)
}

/// Runs barpoke expecting an error (exit status 1: one `barpoke: error:` line
/// naming every `needle`, nothing on stdout) and returns the message.
fn fails(args: &[&str], needles: &[&str]) -> String {
    let r = run(args);
    assert_eq!(
        r.code, 1,
        "barpoke {args:?}: stdout {:?} stderr {:?}",
        r.stdout, r.stderr
    );
    assert_eq!(r.stdout, "", "barpoke {args:?} printed on failure");
    assert!(
        r.stderr.starts_with("barpoke: error: ") && r.stderr.ends_with('\n') && r.stderr.lines().count() == 1,
        "barpoke {args:?}: {:?}",
        r.stderr
    );
    for needle in needles {
        assert!(
            r.stderr.contains(needle),
            "barpoke {args:?}: {:?} lacks {needle:?}",
            r.stderr
        );
    }
    r.stderr
}

/// Runs barpoke expecting a usage error (exit status 2, clap's message naming `needle`).
fn misused(args: &[&str], needle: &str) {
    let r = run(args);
    assert_eq!(r.code, 2, "barpoke {args:?}: {:?}", r.stderr);
    assert!(
        r.stderr.contains(needle),
        "barpoke {args:?}: {:?} lacks {needle:?}",
        r.stderr
    );
}

fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("barpoke {args:?}: not one JSON document ({e}): {out}"))
}

fn edu() -> String {
    common::edu().to_string()
}

fn testdev() -> String {
    common::testdev().to_string()
}

/// The words of the output line that starts with `first`.
fn row(out: &str, first: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|words| words.first().is_some_and(|w| w == first))
        .unwrap_or_else(|| panic!("no line starting with {first:?} in:\n{out}"))
}

/// The element of a JSON array whose `key` is `value`.
fn element<'a>(array: &'a Value, key: &str, value: &str) -> &'a Value {
    array
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {array}"))
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no element with {key} = {value:?} in {array}"))
}

/// Every `--via` path.
const PATHS: [&str; 4] = ["auto", "mmap", "fault", "syscall"];

/// The paths that reach a region without a direct mapping (I/O BAR, ROM, config).
const UNMAPPED_PATHS: [&str; 3] = ["auto", "fault", "syscall"];

/// Computes n! on edu with barpoke alone: clear the status, write n, poll until idle.
fn factorial(n: u32) {
    let edu = edu();
    ok(&["write", &edu, "bar0", "0x20", "0"]);
    ok(&["write", &edu, "bar0", "0x8", &n.to_string()]);
    for _ in 0..1000 {
        let status = ok(&["read", &edu, "bar0", "0x20"]);
        let status = u32::from_str_radix(status.trim().trim_start_matches("0x"), 16).unwrap();
        if status & 1 == 0 {
            return;
        }
    }
    panic!("edu still computing after 1000 polls");
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_list_shows_both_devices_on_vfio_pci() {
    let _serial = serial();
    let out = ok(&["list"]);
    let mut groups = Vec::new();
    for (addr, id) in [(edu(), "1234:11e8"), (testdev(), "1b36:0005")] {
        let words = row(&out, &addr);
        assert_eq!(
            words[1..7],
            [id, "class", "00ff00", "driver", "vfio-pci", "group"],
            "{out}"
        );
        groups.push(words[7].parse::<u64>().expect("a group number"));
    }
    let list = json(&["list", "--json"]);
    let dev = element(&list, "address", &edu());
    assert_eq!(
        (dev["vendor"].as_u64(), dev["device"].as_u64()),
        (Some(0x1234), Some(0x11e8))
    );
    assert_eq!(dev["id"], "1234:11e8");
    assert_eq!(dev["class"], 0xff00);
    assert_eq!(dev["driver"], "vfio-pci");
    assert_eq!(dev["iommu_group"].as_u64(), Some(groups[0]));
    let dev = element(&list, "address", &testdev());
    assert_eq!(
        (dev["vendor"].as_u64(), dev["device"].as_u64()),
        (Some(0x1b36), Some(0x0005))
    );
    assert_eq!(dev["iommu_group"].as_u64(), Some(groups[1]));
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_info_shows_regions_and_access_paths() {
    let _serial = serial();
    let out = ok(&["info", &edu()]);
    assert_eq!(
        row(&out, "REGION"),
        ["REGION", "SIZE", "FLAGS", "KIND", "ACCESS", "CAPS"]
    );
    assert_eq!(
        row(&out, "bar0"),
        ["bar0", "0x100000", "rwm", "mem32", "mmap", "-"]
    );
    assert_eq!(
        row(&out, "config"),
        ["config", "0x100", "rw-", "config", "fault", "-"]
    );
    assert!(!out.contains("bar1"), "edu has only BAR0:\n{out}");

    let out = ok(&["info", &testdev()]);
    assert_eq!(row(&out, "bar0"), ["bar0", "0x1000", "rwm", "mem32", "mmap", "-"]);
    assert_eq!(row(&out, "bar1"), ["bar1", "0x100", "rw-", "io", "fault", "-"]);
    // qemu-scripts gives pci-testdev a 4 KiB expansion ROM.
    assert_eq!(row(&out, "rom"), ["rom", "0x1000", "r--", "rom", "fault", "-"]);

    let info = json(&["info", &edu(), "--json"]);
    assert_eq!(info["address"], edu());
    assert!(info["iommu_group"].is_u64());
    let interface = std::env::var("BARMAP_INTERFACE").expect("the guest harness sets BARMAP_INTERFACE");
    assert_eq!(
        info["interface"],
        interface.as_str(),
        "the interface Device::open picks"
    );
    let description = info["interface_description"].as_str().unwrap().to_string();
    assert!(
        ok(&["info", &edu()]).starts_with(&format!("{} through the {description}\n", edu())),
        "the text output names it first"
    );
    let bar0 = element(&info["regions"], "region", "bar0");
    assert_eq!(bar0["size"], 0x10_0000);
    assert_eq!(bar0["flags"], "rwm");
    assert_eq!(bar0["kind"], "mem32");
    assert_eq!(bar0["access"], "mmap");
    assert_eq!(bar0["mapped"], serde_json::json!([[0, 0x10_0000]]));
    let info = json(&["--json", "info", &testdev()]);
    let bar1 = element(&info["regions"], "region", "bar1");
    assert_eq!(
        (bar1["kind"].as_str(), bar1["access"].as_str()),
        (Some("io"), Some("fault"))
    );
    assert_eq!(bar1["mmapable"], false);
    assert_eq!(bar1["mapped"], serde_json::json!([]));
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_reads_the_identity_on_every_path() {
    let _serial = serial();
    let short = edu().trim_start_matches("0000:").to_string();
    for via in PATHS {
        assert_eq!(
            ok(&["--via", via, "read", &edu(), "bar0", "0"]),
            "0x010000ed\n",
            "{via}"
        );
        assert_eq!(
            ok(&["read", &short, "bar0", "0x0", "--via", via]),
            "0x010000ed\n",
            "{via}"
        );
    }
    let read = json(&["read", &edu(), "bar0", "0", "--json"]);
    assert_eq!(read["address"], edu());
    assert_eq!(read["region"], "bar0");
    assert_eq!(
        (read["offset"].as_u64(), read["width"].as_u64()),
        (Some(0), Some(32))
    );
    assert_eq!(read["values"], serde_json::json!([0x0100_00ed]));
    assert_eq!(read["hex"], serde_json::json!(["0x010000ed"]));
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_writes_liveness_and_every_path_reads_it_back() {
    let _serial = serial();
    let edu = edu();
    assert_eq!(ok(&["write", &edu, "bar0", "4", "0x12345678"]), "");
    assert_eq!(ok(&["read", &edu, "bar0", "4"]), "0xedcba987\n");
    for (write_via, value) in PATHS
        .into_iter()
        .zip([0x0f0f_0f0fu32, 0xa5a5_0001, 0, 0x8000_0000])
    {
        ok(&[
            "--via",
            write_via,
            "write",
            &edu,
            "bar0",
            "0x4",
            &format!("{value:#x}"),
        ]);
        for read_via in PATHS {
            assert_eq!(
                ok(&["--via", read_via, "read", &edu, "bar0", "0x4"]),
                format!("{:#010x}\n", !value),
                "written via {write_via}, read via {read_via}"
            );
        }
    }
    let write = json(&["write", &edu, "bar0", "4", "0x12345678", "--json"]);
    assert_eq!(
        (write["offset"].as_u64(), write["value"].as_u64()),
        (Some(4), Some(0x1234_5678))
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_reads_count_values_at_width_steps() {
    let _serial = serial();
    let edu = edu();
    ok(&["write", &edu, "bar0", "4", "0x12345678"]);
    for via in PATHS {
        assert_eq!(
            ok(&["--via", via, "read", &edu, "bar0", "0", "-n", "2"]),
            "0x010000ed\n0xedcba987\n"
        );
        assert_eq!(
            ok(&["--via", via, "read", &edu, "bar0", "0x0c", "--count", "0x3"]),
            "0xffffffff\n0xffffffff\n0xffffffff\n"
        );
    }
    let read = json(&["read", &edu, "bar0", "0", "-n", "2", "--json"]);
    assert_eq!(read["values"], serde_json::json!([0x0100_00ed, 0xedcb_a987u32]));
    assert_eq!(read["hex"], serde_json::json!(["0x010000ed", "0xedcba987"]));
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_reads_and_writes_8_16_and_64_bits() {
    let _serial = serial();
    let (edu, testdev) = (edu(), testdev());
    // edu drops 1- and 2-byte accesses (they read 0); its 64-bit DMA address
    // register is a true 64-bit register on the mapping (pread/pwrite of 8
    // bytes is split in two on kernels before 6.11, so not compared here).
    assert_eq!(ok(&["read", &edu, "bar0", "0", "-w", "8"]), "0x00\n");
    assert_eq!(ok(&["read", &edu, "bar0", "0", "-w", "16"]), "0x0000\n");
    for via in ["auto", "mmap"] {
        ok(&[
            "--via",
            via,
            "write",
            &edu,
            "bar0",
            "0x80",
            "0x1122334455667788",
            "-w",
            "64",
        ]);
        assert_eq!(
            ok(&["--via", via, "read", &edu, "bar0", "0x80", "-w", "64"]),
            "0x1122334455667788\n"
        );
        assert_eq!(ok(&["--via", via, "read", &edu, "bar0", "0x80"]), "0x55667788\n");
        ok(&["--via", via, "write", &edu, "bar0", "0x80", "0", "-w", "64"]);
    }
    // pci-testdev assembles any width from bytes: select MMIO test 0 and read its header.
    ok(&["write", &testdev, "bar0", "0", "0", "-w", "8"]);
    for via in PATHS {
        let read =
            |offset: &str, width: &str| ok(&["--via", via, "read", &testdev, "bar0", offset, "-w", width]);
        assert_eq!(read("0", "64"), "0x0000080000000100\n", "{via}");
        assert_eq!(read("0", "8"), "0x00\n", "{via}");
        assert_eq!(read("1", "8"), "0x01\n", "{via}");
        assert_eq!(read("4", "16"), "0x0800\n", "{via}");
        assert_eq!(read("8", "8"), "0xfa\n", "{via}");
        assert_eq!(read("0x10", "32"), "0x6f696d6d\n", "{via}"); // "mmio"
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_computes_a_factorial_by_polling() {
    let _serial = serial();
    factorial(5);
    assert_eq!(ok(&["read", &edu(), "bar0", "0x8"]), "0x00000078\n");
    assert_eq!(json(&["read", &edu(), "bar0", "0x8", "--json"])["values"][0], 120);
    factorial(12);
    for via in PATHS {
        assert_eq!(
            ok(&["--via", via, "read", &edu(), "bar0", "8"]),
            "0x1c8cfc00\n",
            "{via}"
        );
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_dumps_like_hexdump_c() {
    let _serial = serial();
    let edu = edu();
    ok(&["write", &edu, "bar0", "4", "0x12345678"]);
    factorial(5);
    let expected = "\
00000000  ed 00 00 01 87 a9 cb ed  78 00 00 00 ff ff ff ff  |........x.......|
00000010  ff ff ff ff ff ff ff ff  ff ff ff ff ff ff ff ff  |................|
00000020
";
    for via in PATHS {
        assert_eq!(
            ok(&["--via", via, "dump", &edu, "bar0", "0", "0x20"]),
            expected,
            "{via}"
        );
    }
    // Unaligned ranges read the covering dwords and show only the bytes asked for.
    let out = ok(&["dump", &edu, "bar0", "1", "2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("00000001  00 00   ") && lines[0].ends_with("  |..|"),
        "{out}"
    );
    assert_eq!(lines[1], "00000003");
    // Without LEN: 256 bytes, or up to the end of a smaller region.
    let out = ok(&["dump", &edu, "bar0"]);
    assert_eq!(out.lines().count(), 17, "{out}");
    assert_eq!(out.lines().last(), Some("00000100"));
    let out = ok(&["dump", &edu, "bar0", "0xfffe0"]);
    assert_eq!(out.lines().last(), Some("00100000"), "{out}");
    let dump = json(&["dump", &edu, "bar0", "0", "8", "--json"]);
    assert_eq!(
        dump["bytes"],
        serde_json::json!([0xed, 0, 0, 1, 0x87, 0xa9, 0xcb, 0xed])
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_decodes_config_space() {
    let _serial = serial();
    let out = ok(&["config", &edu()]);
    assert_eq!(row(&out, "address")[1], edu());
    assert_eq!(row(&out, "id")[1], "1234:11e8");
    assert_eq!(row(&out, "class")[1], "00ff00");
    assert_eq!(row(&out, "subsystem")[1], "1af4:1100");
    assert_eq!(row(&out, "status")[1..], ["0x0010", "cap-list"]);
    assert_eq!(row(&out, "bar0")[2], "mem32");
    assert_eq!(row(&out, "interrupt")[1..3], ["pin", "INTA"]);
    assert_eq!(row(&out, "capability")[1..], ["MSI", "(0x05)", "at", "0x40"]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("capability")).count(),
        1,
        "{out}"
    );

    let out = ok(&["config", &testdev()]);
    assert_eq!(row(&out, "id")[1], "1b36:0005");
    assert_eq!(row(&out, "bar1")[2], "io");
    assert_eq!(row(&out, "capabilities")[1], "none");
    assert_eq!(row(&out, "interrupt")[1..3], ["pin", "none"]);

    let config = json(&["config", &edu(), "--json"]);
    assert_eq!(
        (config["vendor_id"].as_u64(), config["device_id"].as_u64()),
        (Some(0x1234), Some(0x11e8))
    );
    assert_eq!(config["revision_id"], 0x10);
    assert_eq!(config["class_code"], 0xff00);
    assert_eq!(config["interrupt_pin"], 1);
    assert_eq!(config["capabilities_pointer"], 0x40);
    assert_eq!(config["bars"][0]["kind"], "mem32");
    assert_eq!(
        config["capabilities"],
        serde_json::json!([{"id": 5, "offset": 0x40, "name": "MSI"}])
    );
    assert_eq!(config["extended_capabilities"], serde_json::json!([]));
    let config = json(&["--json", "config", &testdev()]);
    assert_eq!(config["capabilities"], serde_json::json!([]));
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_reaches_the_io_bar_without_a_mapping() {
    let _serial = serial();
    let testdev = testdev();
    // Select port I/O test 0 ("portio-no-eventfd") through BAR1.
    ok(&["write", &testdev, "bar1", "0", "0", "-w", "8"]);
    for via in UNMAPPED_PATHS {
        assert_eq!(
            ok(&["--via", via, "read", &testdev, "bar1", "0", "-w", "8"]),
            "0x03\n"
        );
        assert_eq!(ok(&["--via", via, "read", &testdev, "bar1", "4"]), "0x00000083\n");
        assert_eq!(
            ok(&["--via", via, "read", &testdev, "bar1", "8", "-w", "16"]),
            "0x00fa\n"
        );
        let out = ok(&["--via", via, "dump", &testdev, "bar1", "0x10", "0x12"]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("|portio-no-eventf|"), "{out}");
        assert!(lines[1].ends_with("|d.|"), "{out}");
    }
    let out = ok(&["dump", &testdev, "bar1"]);
    assert_eq!(
        (out.lines().count(), out.lines().last()),
        (17, Some("00000100")),
        "{out}"
    );
    fails(
        &["--via", "mmap", "read", &testdev, "bar1", "4"],
        &[&testdev, "bar1", "cannot be mmapped"],
    );
    fails(
        &["--via", "mmap", "dump", &testdev, "bar1"],
        &[&testdev, "bar1", "cannot be mmapped"],
    );
    fails(
        &["--via", "mmap", "read", &testdev, "config", "0"],
        &["config", "cannot be mmapped"],
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_reads_the_expansion_rom_and_refuses_to_write_it() {
    let _serial = serial();
    let testdev = testdev();
    for via in UNMAPPED_PATHS {
        assert_eq!(
            ok(&["--via", via, "read", &testdev, "rom", "0", "-w", "16"]),
            "0xaa55\n"
        );
        let out = ok(&["--via", via, "dump", &testdev, "rom", "0x40", "22"]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("|barmap pci-testd|"), "{out}");
        assert!(lines[1].ends_with("|ev ROM|"), "{out}");
    }
    fails(
        &["write", &testdev, "rom", "0", "0"],
        &[&testdev, "rom", "read-only"],
    );
    fails(
        &["--via", "mmap", "read", &testdev, "rom", "0"],
        &["rom", "cannot be mmapped"],
    );
    assert_eq!(ok(&["read", &testdev, "rom", "0", "-w", "16"]), "0xaa55\n");
}

/// Every access is traced with the path it took: barpoke counts what the
/// region's access hook saw around it (nothing: the mapping; a trapped
/// pointer access: the fault handler; a typed slow-path access: pread/pwrite).
#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_traces_every_access() {
    let _serial = serial();
    let (edu, testdev) = (edu(), testdev());
    let (out, trace) = ok_traced(&["--trace", "read", &edu, "bar0", "0"]);
    assert_eq!(out, "0x010000ed\n");
    assert_eq!(trace, "trace: read bar0+0x0 w32 = 0x010000ed via mmap\n");
    let (_, trace) = ok_traced(&[
        "--trace", "--via", "syscall", "read", &edu, "bar0", "0", "-n", "2",
    ]);
    let lines: Vec<&str> = trace.lines().collect();
    assert_eq!(lines.len(), 2, "{trace}");
    assert_eq!(lines[0], "trace: read bar0+0x0 w32 = 0x010000ed via syscall");
    assert!(lines[1].starts_with("trace: read bar0+0x4 w32 = 0x"), "{trace}");
    let (_, trace) = ok_traced(&["write", &edu, "bar0", "4", "0x12345678", "--trace"]);
    assert_eq!(trace, "trace: write bar0+0x4 w32 = 0x12345678 via mmap\n");
    let (_, trace) = ok_traced(&["--trace", "write", &testdev, "bar1", "0", "0", "-w", "8"]);
    assert_eq!(trace, "trace: write bar1+0x0 w8 = 0x00 via fault\n");
    let (_, trace) = ok_traced(&["--trace", "--via", "syscall", "read", &testdev, "bar1", "4"]);
    assert_eq!(trace, "trace: read bar1+0x4 w32 = 0x00000083 via syscall\n");
    let (out, trace) = ok_traced(&["--trace", "--via", "fault", "read", &edu, "bar0", "0"]);
    assert_eq!(out, "0x010000ed\n");
    assert_eq!(trace, "trace: read bar0+0x0 w32 = 0x010000ed via fault\n");
    let (_, trace) = ok_traced(&["--trace", "dump", &edu, "bar0", "0", "16"]);
    assert_eq!(trace.lines().count(), 4, "one 32-bit read per dword: {trace}");
    assert!(trace.lines().all(|l| l.ends_with(" via mmap")), "{trace}");
    let (_, trace) = ok_traced(&["--trace", "--via", "fault", "dump", &testdev, "bar0", "0", "8"]);
    assert!(
        trace.lines().count() == 2 && trace.lines().all(|l| l.ends_with(" via fault")),
        "{trace}"
    );
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_errors_name_what_was_wrong() {
    let _serial = serial();
    let (edu, testdev) = (edu(), testdev());
    fails(&["read", &edu, "bar3", "0"], &[&edu, "no region bar3"]);
    fails(&["read", &edu, "rom", "0"], &[&edu, "no region rom"]);
    // Through the shadow pointer, barpoke checks what the library checks for typed accesses.
    for via in UNMAPPED_PATHS {
        let fails_via = |args: &[&str], needles: &[&str]| {
            let args: Vec<&str> = ["--via", via].iter().chain(args).copied().collect();
            fails(&args, needles)
        };
        fails_via(
            &["read", &edu, "bar0", "0x100000"],
            &[&edu, "0x100000", "out of range"],
        );
        fails_via(
            &["read", &edu, "bar0", "0xffffc", "-w", "64"],
            &[&edu, "0xffffc", "out of range"],
        );
        fails_via(&["read", &edu, "bar0", "6"], &[&edu, "0x6", "not 4-byte aligned"]);
        fails_via(
            &["read", &testdev, "bar1", "0x81", "-w", "16"],
            &[&testdev, "0x81", "not 2-byte aligned"],
        );
        fails_via(
            &["write", &testdev, "bar1", "0", "0x1ff", "-w", "8"],
            &["0x1ff", "does not fit"],
        );
        fails_via(
            &["write", &testdev, "rom", "0", "0"],
            &[&testdev, "rom", "read-only"],
        );
        fails_via(
            &["dump", &testdev, "bar1", "0xf0", "0x11"],
            &[&testdev, "bar1", "out of range"],
        );
    }
    fails(
        &["read", &edu, "bar0", "0x100000"],
        &[&edu, "bar0", "0x100000", "out of range"],
    );
    fails(
        &["read", &edu, "bar0", "0xffffc", "-n", "2"],
        &[&edu, "0xffffc", "out of range"],
    );
    fails(
        &["read", &testdev, "bar1", "0x100", "-w", "8"],
        &[&testdev, "bar1", "out of range"],
    );
    fails(
        &["read", &edu, "bar0", "2"],
        &[&edu, "bar0", "0x2", "not 4-byte aligned"],
    );
    fails(
        &["read", &edu, "bar0", "4", "-w", "64"],
        &[&edu, "0x4", "not 8-byte aligned"],
    );
    fails(
        &["write", &edu, "bar0", "4", "0x100", "-w", "8"],
        &["0x100", "does not fit in 1 bytes"],
    );
    fails(
        &["dump", &edu, "bar0", "0xfff00", "0x200"],
        &[&edu, "bar0", "0xfff00", "out of range"],
    );
    fails(
        &["dump", &testdev, "bar1", "0x100"],
        &[&testdev, "bar1", "0x100", "out of range"],
    );
    fails(
        &["dump", &testdev, "bar1", "0xf0", "0x11"],
        &[&testdev, "bar1", "out of range"],
    );
    // The q35 host bridge exists in the guest and has no driver.
    fails(
        &["read", "0000:00:00.0", "bar0", "0"],
        &["0000:00:00.0", "not bound to vfio-pci"],
    );
    fails(&["info", "00:00.0"], &["0000:00:00.0", "not bound to vfio-pci"]);
    let missing = common::missing_address().to_string();
    fails(&["read", &missing, "bar0", "0"], &[&missing, "does not exist"]);
    fails(&["config", &missing], &[&missing, "does not exist"]);
}

#[test]
#[ignore = "needs the built barpoke binary (run in the guest, or set BARMAP_BARPOKE)"]
fn barpoke_bad_usage_exits_2_with_clap_message() {
    misused(&["read", "00:03", "bar0", "0"], "invalid PCI address \"00:03\"");
    misused(&["read", "00:20.0", "bar0", "0"], "device number above 0x1f");
    misused(&["read", "00:03.0", "bar9", "0"], "unknown region \"bar9\"");
    misused(&["read", "00:03.0", "bar0", "zz"], "\"zz\" is not a number");
    misused(
        &["read", "00:03.0", "bar0", "0x1ffffffffffffffff"],
        "does not fit in 64 bits",
    );
    misused(&["read", "00:03.0", "bar0", "0", "-w", "12"], "8, 16, 32 or 64");
    misused(&["read", "00:03.0", "bar0", "0", "-n", "0"], "at least 1");
    misused(&["write", "00:03.0", "bar0", "0"], "VALUE");
    misused(&["dump", "00:03.0", "bar0", "0", "1", "2"], "unexpected argument");
    misused(&["--via", "pio", "list"], "pio");
    misused(&["peek"], "unrecognized subcommand");
    misused(&[], "Usage");
    for sub in [
        "list", "bind", "unbind", "info", "read", "write", "dump", "config",
    ] {
        let out = ok(&[sub, "--help"]);
        assert!(
            out.contains("Example:") && out.contains(&format!("barpoke {sub}")),
            "{sub}: {out}"
        );
    }
    let out = ok(&["--help"]);
    for word in ["--via", "--json", "--trace", "auto", "mmap", "fault", "syscall"] {
        assert!(out.contains(word), "{word}: {out}");
    }
}

/// Binds pci-testdev to vfio-pci again when dropped, so a failed test leaves the guest usable.
struct Rebind(barmap::PciAddress);

impl Drop for Rebind {
    fn drop(&mut self) {
        if let Err(e) = barmap::Sysfs::default().bind_vfio(self.0) {
            eprintln!("could not bind {} to vfio-pci again: {e}", self.0);
        }
    }
}

#[test]
#[ignore = "needs QEMU edu + pci-testdev bound to vfio-pci (qemu-scripts/guest-test.sh)"]
fn barpoke_unbinds_and_binds_again() {
    let _serial = serial();
    let _rebind = Rebind(common::testdev());
    let testdev = testdev();
    let group = row(&ok(&["list"]), &testdev)[7].clone();
    assert_eq!(ok(&["unbind", &testdev]), format!("{testdev} driver none\n"));
    assert_eq!(row(&ok(&["list"]), &testdev)[4..6], ["driver", "none"]);
    fails(
        &["read", &testdev, "bar0", "0"],
        &[&testdev, "not bound to vfio-pci"],
    );
    assert_eq!(
        ok(&["bind", &testdev]),
        format!("{testdev} driver vfio-pci group {group}\n")
    );
    assert_eq!(
        row(&ok(&["list"]), &testdev)[4..8],
        ["driver", "vfio-pci", "group", &group]
    );
    let bound = json(&["bind", &testdev, "--json"]);
    assert_eq!(bound["driver"], "vfio-pci");
    assert_eq!(bound["iommu_group"].to_string(), group);
    ok(&["read", &testdev, "bar0", "0"]);
}
