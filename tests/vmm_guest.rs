//! examples/vmm boots Linux (L2) in the QEMU guest (L1, whose /dev/kvm is
//! nested KVM under TCG) with QEMU's NVMe controller passed through, and
//! Linux's own nvme driver reads namespace 1: the SHA-256 of its last 2 MiB
//! (blocks no L1 test writes), printed by the L2 guest's /init
//! (qemu-scripts/guest/l2-init), must be the image's, which the harness
//! filled with a known pattern. Once with MSI-X and once with
//! `pci=nomsi`, where the driver runs on INTx through the resampled irqfd.
//! The exits the VMM reports show the BAR's mapped parts (the registers and
//! the doorbells) took none and the MSI-X table was served by trapping.
//!
//! Needs, from the guest's /init: `BARMAP_NVME`, `BARMAP_L2_KERNEL`,
//! `BARMAP_L2_INITRAMFS`, `BARMAP_NVME_L2_BLOCKS`, `BARMAP_NVME_SHA256`; the vmm binary is
//! `$BARMAP_VMM`, else `target/<profile>/examples/vmm` beside this test,
//! else `vmm` on the PATH.
#![cfg(feature = "kvm")]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A VFIO group opens once: one boot at a time.
static DEVICE: Mutex<()> = Mutex::new(());

/// How long one L2 boot may take (measured: 17-25 s in L1 under TCG): the
/// VMM's own limit, after which it prints its exits and fails, and the
/// test's, after which it kills the VMM.
const VMM_TIMEOUT: u64 = 120;
const BOOT_TIMEOUT: Duration = Duration::from_secs(VMM_TIMEOUT + 20);
/// The L2 command line: the console, an end by triple fault, PCI through
/// configuration mechanism #1 (there is no ACPI), no port 0x80 delays.
const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 pci=conf1 io_delay=none";
/// Added for kernels from 7 on. Under nested KVM on TCG, CPUID leaf 0xD
/// does not follow the XCR0 that L2 sets (Linux warns "XSAVE consistency
/// problem"); 6.1 and 6.12 then fall back to FXSAVE and run, 7.3 crashes
/// in that fallback (a NULL task FPU in `fpstate_reset`), so it starts on
/// FXSAVE. Not for all: 6.12 booted with `noxsave` wedges in HLT under
/// INTx right after the nvme probe starts (seen 4 times out of 4; with
/// MSI-X it runs).
const CMDLINE_7: &str = "noxsave";
/// PCI capability ids and the MSI-X capability's table and PBA registers.
const CAP_PTR: usize = 0x34;
const CAP_MSIX: u8 = 0x11;

fn serial() -> MutexGuard<'static, ()> {
    DEVICE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn env(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: {what} (the guest's /init sets it; run in qemu-scripts/guest-test.sh)")
    })
}

fn vmm_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BARMAP_VMM") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut candidates: Vec<PathBuf> = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples").join("vmm"))
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("vmm")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("no vmm binary: build it with `cargo build --features kvm --example vmm` or set BARMAP_VMM")
}

/// What one boot printed.
struct Boot {
    /// The L2 console (the VMM's stdout).
    console: String,
    /// The VMM's own lines (stderr).
    vmm: String,
    seconds: f64,
}

impl Boot {
    /// The console's `@@L2@@ WORD ...` lines, without the marker and word.
    fn l2(&self, word: &str) -> Vec<&str> {
        let prefix = format!("@@L2@@ {word} ");
        self.console
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
            .collect()
    }

    /// The VMM's summary of all exits (`vmm: exits: N total, ...`).
    fn exit_summary(&self) -> &str {
        self.vmm
            .lines()
            .find_map(|l| l.strip_prefix("vmm: exits: ").filter(|l| l.contains(" total")))
            .unwrap_or("(no exit summary)")
    }

    fn context(&self) -> String {
        let tail: Vec<&str> = self.console.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- vmm (stderr) ---\n{}\n--- L2 console, last lines ---\n{}",
            self.vmm,
            tail.join("\n")
        )
    }
}

/// Boots L2 with the NVMe controller passed through and `extra` on the command line.
fn boot(extra: &str) -> Boot {
    boot_with(&[common::nvme().to_string()], extra)
}

/// Boots L2 with the devices at `addrs` passed through and `extra` on the command line.
fn boot_with(addrs: &[String], extra: &str) -> Boot {
    let kernel = env("BARMAP_L2_KERNEL", "the L2 kernel");
    let initramfs = env("BARMAP_L2_INITRAMFS", "the L2 initramfs");
    assert!(Path::new("/dev/kvm").exists(), "/dev/kvm is missing");
    // L2 runs L1's kernel.
    let quirk = if kernel_version().0 >= 7 { CMDLINE_7 } else { "" };
    let blocks = env("BARMAP_NVME_L2_BLOCKS", "the NVMe blocks L2 reads").replace(' ', ",");
    let cmdline = format!("{CMDLINE} {quirk} barmap.nvme_blocks={blocks} {extra}");
    let start = Instant::now();
    let mut child = Command::new(vmm_binary())
        .args([
            "--kernel",
            &kernel,
            "--initramfs",
            &initramfs,
            "--cmdline",
            &cmdline,
            "--timeout",
            &VMM_TIMEOUT.to_string(),
        ])
        .args(addrs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the vmm");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > BOOT_TIMEOUT {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let boot = Boot {
        console: out.join().unwrap().unwrap_or_default(),
        vmm: err.join().unwrap().unwrap_or_default(),
        seconds: start.elapsed().as_secs_f64(),
    };
    match status {
        None => panic!("the L2 boot took over {BOOT_TIMEOUT:?}\n{}", boot.context()),
        Some(s) if !s.success() => panic!("the vmm failed ({s})\n{}", boot.context()),
        Some(_) => boot,
    }
}

/// The pages of the device's BAR0 that hold its MSI-X table and PBA, from
/// its config space (sysfs), as (BAR, page offset).
fn msix_pages(addr: &str) -> Vec<(u32, u64)> {
    let config = std::fs::read(format!("/sys/bus/pci/devices/{addr}/config")).unwrap();
    let dword = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
    let mut at = usize::from(config[CAP_PTR]);
    let mut pages = Vec::new();
    while at != 0 {
        if config[at] == CAP_MSIX {
            let entries = u64::from(u16::from_le_bytes([config[at + 2], config[at + 3]]) & 0x7ff) + 1;
            for (reg, len) in [(at + 4, entries * 16), (at + 8, entries.div_ceil(64) * 8)] {
                let (bar, offset) = (dword(reg) & 7, u64::from(dword(reg) & !7));
                let mut page = offset & !0xfff;
                while page < offset + len {
                    pages.push((bar, page));
                    page += 0x1000;
                }
            }
        }
        at = usize::from(config[at + 1]);
    }
    assert!(!pages.is_empty(), "{addr} has no MSI-X capability");
    pages
}

/// The VMM's line `vmm: function ADDR ... exits: msix A bar B errors C`: (A, B, C).
fn function_exits(boot: &Boot, addr: &str) -> (u64, u64, u64) {
    let prefix = format!("vmm: function {addr} at ");
    let line = boot
        .vmm
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("the vmm reported no exits of {addr}\n{}", boot.context()));
    let count = |word: &str| {
        let rest = &line[line.find(&format!(" {word} ")).expect(word) + word.len() + 2..];
        rest.split_whitespace().next().unwrap().parse::<u64>().unwrap()
    };
    (count("msix"), count("bar"), count("errors"))
}

/// The VMM's lines `vmm: function ADDR barN page 0xP: K exits`: ((N, P), K).
fn page_exits(boot: &Boot, addr: &str) -> Vec<((u32, u64), u64)> {
    let prefix = format!("vmm: function {addr} bar");
    boot.vmm
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (bar, rest) = rest.split_once(" page 0x")?;
            let (page, rest) = rest.split_once(": ")?;
            let n = rest.split_whitespace().next()?.parse().ok()?;
            Some(((bar.parse().ok()?, u64::from_str_radix(page, 16).ok()?), n))
        })
        .collect()
}

/// L2 read the blocks of namespace 1 that no test writes, and their SHA-256
/// is the image's.
fn assert_checksum(boot: &Boot) -> String {
    let expected = env("BARMAP_NVME_SHA256", "the NVMe image's SHA-256");
    let sums = boot.l2("sha256");
    let [sum] = sums[..] else {
        panic!("L2 printed {} checksums\n{}", sums.len(), boot.context());
    };
    // "nsid1 DISK HASH": the disk L2 named namespace 1 (its scan order decides).
    let mut words = sum.split_whitespace();
    assert_eq!(words.next(), Some("nsid1"), "{sum}");
    let disk = words.next().unwrap_or("");
    assert!(disk.starts_with("nvme"), "L2's disk of namespace 1: {sum}");
    assert_eq!(
        words.next(),
        Some(expected.as_str()),
        "L2's checksum of namespace 1 ({disk})\n{}",
        boot.context()
    );
    expected
}

/// The L2 interrupt lines of nvme (from /proc/interrupts): (count, line).
fn nvme_irqs(boot: &Boot) -> Vec<(u64, String)> {
    boot.l2("irq")
        .into_iter()
        .map(|l| {
            let count = l
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (count, l.to_string())
        })
        .collect()
}

/// Writes past libtest's capture, so the guest run's output shows it.
fn note(text: &str) {
    std::io::stderr()
        .write_all(format!("vmm_guest: {text}\n").as_bytes())
        .unwrap();
}

#[test]
#[ignore = "needs QEMU's NVMe controller bound to vfio-pci, /dev/kvm and the L2 kernel (qemu-scripts/guest-test.sh)"]
fn guest_vmm_nvme_msix() {
    let _serial = serial();
    let addr = common::nvme().to_string();
    let boot = boot("");
    let sha = assert_checksum(&boot);
    let irqs = nvme_irqs(&boot);
    assert!(
        !irqs.is_empty() && irqs.iter().all(|(_, l)| l.contains("MSI")),
        "nvme's interrupts in L2 are not all MSI-X: {irqs:?}\n{}",
        boot.context()
    );
    let (msix, bar, errors) = function_exits(&boot, &addr);
    assert_eq!(errors, 0, "the vmm refused guest accesses\n{}", boot.context());
    assert!(
        msix > 0,
        "no MSI-X table exits: the table was not trapped\n{}",
        boot.context()
    );
    assert_eq!(
        bar,
        0,
        "exits on the mapped parts of the BARs\n{}",
        boot.context()
    );
    let table = msix_pages(&addr);
    let pages = page_exits(&boot, &addr);
    for (page, n) in &pages {
        assert!(
            table.contains(page),
            "{n} exits on bar{} page {:#x}, outside the MSI-X table and PBA {table:x?}\n{}",
            page.0,
            page.1,
            boot.context()
        );
    }
    note(&format!(
        "MSI-X boot in {:.1}s: checksum match (sha256 {sha}); exits: {msix} on the MSI-X table and PBA \
         pages {pages:x?}, {bar} on the mapped BAR parts (registers, doorbells); L2 interrupts {irqs:?}; \
         all exits: {}",
        boot.seconds,
        boot.exit_summary()
    ));
}

#[test]
#[ignore = "needs QEMU's NVMe controller bound to vfio-pci, /dev/kvm and the L2 kernel (qemu-scripts/guest-test.sh)"]
fn guest_vmm_nvme_intx() {
    let _serial = serial();
    let addr = common::nvme().to_string();
    let boot = boot("pci=nomsi");
    let sha = assert_checksum(&boot);
    let irqs = nvme_irqs(&boot);
    assert!(
        !irqs.is_empty() && irqs.iter().all(|(_, l)| !l.contains("MSI")),
        "nvme's interrupts in L2 are not INTx: {irqs:?}\n{}",
        boot.context()
    );
    // Reading the namespace takes many completions, each an INTx that VFIO
    // masks until the resamplefd unmasks it after the guest's EOI.
    let total: u64 = irqs.iter().map(|(n, _)| n).sum();
    assert!(total > 1, "nvme took {total} INTx interrupts\n{}", boot.context());
    let (msix, bar, errors) = function_exits(&boot, &addr);
    assert_eq!(errors, 0, "the vmm refused guest accesses\n{}", boot.context());
    assert_eq!(
        bar,
        0,
        "exits on the mapped parts of the BARs\n{}",
        boot.context()
    );
    note(&format!(
        "INTx boot (pci=nomsi) in {:.1}s: checksum match (sha256 {sha}); {total} INTx interrupts \
         {irqs:?}; exits: {msix} on the MSI-X table and PBA, {bar} on the mapped BAR parts; all exits: {}",
        boot.seconds,
        boot.exit_summary()
    ));
}

/// The kernel's release as (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
#[ignore = "needs the guest's five test devices bound to vfio-pci, /dev/kvm and the L2 kernel (qemu-scripts/guest-test.sh)"]
fn guest_vmm_every_test_device() {
    let _serial = serial();
    // edu and pci-testdev (no Linux driver), virtio-rng (behind a PCIe root
    // port in L1, on L2's bus 0), NVMe, ivshmem (a 1 GiB 64-bit BAR).
    let addrs: Vec<String> = [
        common::edu(),
        common::testdev(),
        common::flr_dev(),
        common::nvme(),
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([env("BARMAP_IVSHMEM", "ivshmem-plain's address")])
    .collect();
    let boot = boot_with(&addrs, "quiet");
    let sha = assert_checksum(&boot);
    let seen = boot.l2("pci");
    for (i, addr) in addrs.iter().enumerate() {
        let sysfs = |f: &str| {
            std::fs::read_to_string(format!("/sys/bus/pci/devices/{addr}/{f}"))
                .unwrap()
                .trim()
                .to_string()
        };
        let ids = format!("{}:{}", sysfs("vendor"), sysfs("device"));
        let l2 = format!("0000:00:{:02x}.0 {ids} ", i + 1);
        let line = seen
            .iter()
            .find(|l| l.starts_with(&l2))
            .unwrap_or_else(|| panic!("L2 has no {l2}(L1's {addr}) on its bus\n{}", boot.context()));
        let (_, _, errors) = function_exits(&boot, addr);
        assert_eq!(
            errors,
            0,
            "the vmm refused accesses to {addr}\n{}",
            boot.context()
        );
        let driver = line.rsplit("driver ").next().unwrap_or("").trim();
        note(&format!(
            "{addr} ({ids}) is L2's {}: driver {driver:?}",
            &l2[..12]
        ));
    }
    let driver_of = |ids: &str| {
        seen.iter()
            .find(|l| l.contains(ids))
            .and_then(|l| l.rsplit("driver ").next())
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(driver_of("0x1b36:0x0010"), "nvme", "{}", boot.context());
    // virtio_pci is built into the kernel from 6.12 on (a module, not in L2, before).
    if kernel_version() >= (6, 12) {
        assert_eq!(driver_of("0x1af4:0x1044"), "virtio-pci", "{}", boot.context());
    }
    note(&format!(
        "five devices in {:.1}s: checksum match (sha256 {sha}); all exits: {}",
        boot.seconds,
        boot.exit_summary()
    ));
}
