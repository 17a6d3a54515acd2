//! barpoke: read and write the registers of a PCI device through VFIO.
//!
//! A register poker in the line of pcimem, devmem2 and setpci, but safe to run
//! against a device no kernel driver owns, and able to reach BARs pcimem cannot
//! (I/O BARs, sparse BARs).
//!
//! ```text
//! barpoke list                                   # every PCI device
//! barpoke bind ADDR                              # bind to vfio-pci, print the group
//! barpoke unbind ADDR                            # give the device back to its previous/default driver
//! barpoke info ADDR                              # one row per region
//! barpoke read ADDR REGION OFFSET [-w WIDTH] [-n COUNT]
//! barpoke write ADDR REGION OFFSET VALUE [-w WIDTH]
//! barpoke dump ADDR REGION [OFFSET [LEN]]        # hexdump -C style, 32-bit reads
//! barpoke config ADDR                            # decoded header and capability list
//! ```
//!
//! Run it with `cargo run --example barpoke -- read 00:03.0 bar0 0`. Errors are
//! one line on stderr starting `barpoke: error:` and exit status 1; bad usage
//! exits 2 with clap's message. Parsing and formatting live in `parse` and
//! `format` as pure functions, tested on the host (`cargo test --example barpoke`);
//! tests/barpoke.rs runs the built binary against QEMU's devices in the guest.

#[path = "barpoke/format.rs"]
mod format;
#[path = "barpoke/parse.rs"]
mod parse;
#[path = "barpoke/record.rs"]
mod record;

use std::fmt;
use std::io::{self, Write};
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use barmap::mmio;
use barmap::pci::VFIO_PCI_DRIVER;
use barmap::shadow::AccessKind;
use barmap::{Device, Error, MapPolicy, PciAddress, RegionIndex, Result, Sysfs};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use format::AccessPath;
use parse::Width;
use record::{DriverRecords, RecordError};

/// What `dump` shows when no LEN is given: at most this many bytes.
const DEFAULT_DUMP_LEN: u64 = 256;

const ABOUT: &str = "Read and write PCI device registers through VFIO";

const LONG_ABOUT: &str = "\
Read and write PCI device registers through VFIO.

The device must be bound to vfio-pci (barpoke bind ADDR) and its IOMMU group
must be viable. ADDR is 0000:00:03.0 or 00:03.0; REGION is bar0..bar5, rom or
config; OFFSET, VALUE, LEN and COUNT are decimal or 0x-prefixed hex; WIDTH is
in bits: 8, 16, 32 (default) or 64.

--via chooses how each access reaches the device; all paths give the same
values (except 8-byte accesses through pread/pwrite on kernels before 6.11,
which split them in two):
  auto     the direct mapping where the kernel allows one; the rest of the
           region (holes of a sparse BAR, I/O BARs, ROM, config) through a
           shadow region whose trapped pages barmap's fault handler serves
           with pread/pwrite (x86-64; elsewhere pread/pwrite directly)
  mmap     the direct mapping only: a region or range without one is refused
  fault    a shadow region with every page trapped: every access is a load
           or store that faults and is emulated (x86-64 only)
  syscall  pread/pwrite on the VFIO device descriptor

Errors print one line on stderr starting 'barpoke: error:' and exit with
status 1; bad usage exits with status 2.";

const VIA_HELP: &str = "How accesses reach the device (all paths give the same values)";

#[derive(Parser, Debug)]
#[command(name = "barpoke", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[arg(long, global = true, value_enum, default_value_t = Via::Auto, help = VIA_HELP)]
    via: Via,

    /// Print one JSON document on stdout instead of text (shapes: see each subcommand's --help)
    #[arg(long, global = true)]
    json: bool,

    /// Log every access to stderr: `trace: read bar0+0x0 w32 = 0x010000ed via mmap`
    #[arg(long, global = true)]
    trace: bool,

    #[command(subcommand)]
    command: Command,
}

/// The `--via` access paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    /// The direct mapping where there is one, the shadow region (trapped pages) elsewhere
    Auto,
    /// Only the direct mapping: refuse a region or range that is not mmapable
    Mmap,
    /// A shadow region with every page trapped: each access faults and is emulated
    Fault,
    /// pread/pwrite on the VFIO device descriptor
    Syscall,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every PCI device: address, vendor:device, class, driver, IOMMU group
    #[command(after_help = "\
Example:
  $ barpoke list
  0000:00:03.0 1234:11e8 class 00ff00 driver vfio-pci group 3

JSON (--json): an array of
  {\"address\": \"0000:00:03.0\", \"vendor\": 4660, \"device\": 4584, \"id\": \"1234:11e8\",
   \"class\": 65280, \"class_hex\": \"00ff00\", \"subsystem_vendor\": 6900,
   \"subsystem_device\": 4352, \"driver\": \"vfio-pci\" or null, \"iommu_group\": 3 or null}")]
    List,

    /// Bind a device to vfio-pci and print its IOMMU group
    #[command(after_help = "\
Example:
  $ barpoke bind 00:04.0
  0000:00:04.0 driver vfio-pci group 4

The previous driver is recorded (in /run/barmap) for unbind.
JSON (--json): {\"address\": \"0000:00:04.0\", \"driver\": \"vfio-pci\", \"iommu_group\": 4}")]
    Bind(DeviceArg),

    /// Give a device back to its previous (or default) driver
    #[command(after_help = "\
Example:
  $ barpoke unbind 00:04.0
  0000:00:04.0 driver none

Prints the driver the device has afterwards ('none' if no driver claims it).
JSON (--json): {\"address\": \"0000:00:04.0\", \"driver\": null}")]
    Unbind(DeviceArg),

    /// One row per region: name, size, flags (r/w/mmap), kind, access path, capabilities
    #[command(after_help = "\
Example:
  $ barpoke info 00:04.0
  REGION SIZE   FLAGS KIND   ACCESS CAPS
  bar0   0x1000 rwm   mem32  mmap   -
  bar1   0x100  rw-   io     fault  -
  rom    0x1000 r--   rom    fault  -
  config 0x100  rw-   config fault  -

ACCESS is the path --via auto takes: mmap, mmap+fault (partly mappable) or
fault; syscall instead of fault where there are no shadow regions (not
x86-64). Regions of size 0 are not shown.
JSON (--json): {\"address\": \"0000:00:04.0\", \"iommu_group\": 4, \"regions\": [
  {\"region\": \"bar0\", \"index\": 0, \"size\": 4096, \"flags\": \"rwm\", \"readable\": true,
   \"writable\": true, \"mmapable\": true, \"kind\": \"mem32\", \"access\": \"mmap\",
   \"mapped\": [[0, 4096]], \"caps\": []}, ...]}")]
    Info(DeviceArg),

    /// Read COUNT registers of WIDTH bits from OFFSET on, one per line
    #[command(after_help = "\
Example:
  $ barpoke read 00:03.0 bar0 0x0
  0x010000ed
  $ barpoke read 00:03.0 bar0 0 -n 2
  0x010000ed
  0x00000000

Values are consecutive at WIDTH steps, printed as 0x and lowercase hex
zero-padded to WIDTH/4 digits.
JSON (--json): {\"address\": \"0000:00:03.0\", \"region\": \"bar0\", \"offset\": 0,
  \"width\": 32, \"via\": \"auto\", \"values\": [16777453], \"hex\": [\"0x010000ed\"]}")]
    Read {
        #[command(flatten)]
        at: Register,
        #[command(flatten)]
        width: WidthArg,
        /// Number of values to read
        #[arg(short = 'n', long = "count", value_name = "COUNT", value_parser = parse::count, default_value = "1")]
        count: u64,
    },

    /// Write VALUE at OFFSET as one access of WIDTH bits
    #[command(after_help = "\
Example:
  $ barpoke write 00:03.0 bar0 0x4 0x12345678
  $ barpoke read 00:03.0 bar0 0x4
  0xedcba987

Prints nothing on success; a VALUE wider than WIDTH is refused.
JSON (--json): {\"address\": \"0000:00:03.0\", \"region\": \"bar0\", \"offset\": 4,
  \"width\": 32, \"via\": \"auto\", \"value\": 305419896}")]
    Write {
        #[command(flatten)]
        at: Register,
        /// Value to write, decimal or 0x hex
        #[arg(value_name = "VALUE", value_parser = parse::number)]
        value: u64,
        #[command(flatten)]
        width: WidthArg,
    },

    /// hexdump -C of part of a region, read with 32-bit accesses
    #[command(after_help = "\
Example:
  $ barpoke dump 00:03.0 bar0 0 0x20
  00000000  ed 00 00 01 00 00 00 00  01 00 00 00 ff ff ff ff  |................|
  00000010  ff ff ff ff ff ff ff ff  ff ff ff ff ff ff ff ff  |................|
  00000020

OFFSET defaults to 0, LEN to 256 bytes or the rest of the region if shorter.
A range past the region's end is refused. The device is read with aligned
32-bit accesses covering the range; only the bytes asked for are shown.
Repeated lines are not squeezed into '*'.
JSON (--json): {\"address\": \"0000:00:03.0\", \"region\": \"bar0\", \"offset\": 0,
  \"len\": 32, \"via\": \"auto\", \"bytes\": [237, 0, 0, 1, ...]}")]
    Dump {
        #[command(flatten)]
        region: RegionArgs,
        /// First byte to show, decimal or 0x hex (default 0)
        #[arg(value_name = "OFFSET", value_parser = parse::number)]
        offset: Option<u64>,
        /// Number of bytes to show (default: 256, or up to the region's end)
        #[arg(value_name = "LEN", value_parser = parse::number)]
        len: Option<u64>,
    },

    /// Decoded config header and capability list
    #[command(after_help = "\
Example:
  $ barpoke config 00:03.0
  address     0000:00:03.0
  id          1234:11e8
  revision    0x10
  class       00ff00
  header-type 0x00 normal
  subsystem   1af4:1100
  command     0x0103 io mem
  status      0x0010 cap-list
  bar0        0xfea00000 mem32
  bar1        0x00000000 -
  ...
  interrupt   pin INTA line 11
  capability  MSI (0x05) at 0x40

Config space is read through the VFIO config region (what the kernel lets
userspace see); --via and --trace do not apply. PCIe extended capabilities
follow as 'extended' rows.
JSON (--json): {\"address\": \"0000:00:03.0\", \"vendor_id\": 4660, \"device_id\": 4584,
  \"id\": \"1234:11e8\", \"revision_id\": 16, \"class_code\": 65280, \"class_hex\": \"00ff00\",
  \"header_type\": 0, \"subsystem_vendor_id\": 6900, \"subsystem_id\": 4352, \"command\": 259,
  \"status\": 16, \"bars\": [{\"value\": 4271898624, \"kind\": \"mem32\"}, ...],
  \"capabilities_pointer\": 64, \"interrupt_line\": 11, \"interrupt_pin\": 1,
  \"capabilities\": [{\"id\": 5, \"offset\": 64, \"name\": \"MSI\"}],
  \"extended_capabilities\": [{\"id\": 1, \"version\": 2, \"offset\": 256, \"name\": ...}]}")]
    Config(DeviceArg),
}

/// ADDR: the device a subcommand works on.
#[derive(Args, Debug)]
struct DeviceArg {
    /// PCI address: 0000:00:03.0 or 00:03.0
    #[arg(value_name = "ADDR")]
    addr: PciAddress,
}

/// ADDR REGION: one region of a device.
#[derive(Args, Debug)]
struct RegionArgs {
    #[command(flatten)]
    device: DeviceArg,
    /// Region: bar0..bar5, rom or config
    #[arg(value_name = "REGION")]
    index: RegionIndex,
}

/// ADDR REGION OFFSET: one register of a device.
#[derive(Args, Debug)]
struct Register {
    #[command(flatten)]
    region: RegionArgs,
    /// Offset in the region, decimal or 0x hex
    #[arg(value_name = "OFFSET", value_parser = parse::number)]
    offset: u64,
}

impl Register {
    /// The device, the region and the offset.
    fn parts(&self) -> (PciAddress, RegionIndex, u64) {
        (self.region.device.addr, self.region.index, self.offset)
    }
}

/// -w WIDTH: the width of each access.
#[derive(Args, Debug)]
struct WidthArg {
    /// Access width in bits: 8, 16, 32 or 64
    #[arg(short = 'w', long = "width", value_name = "WIDTH", value_parser = parse::width, default_value = "32")]
    width: Width,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            // A closed pipe (`barpoke list | head -1`) is not an error worth reporting.
            let _ = io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Why a command failed: the library's error, or one of barpoke's driver record.
#[derive(Debug)]
enum Failure {
    Barmap(Error),
    Record(RecordError),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Barmap(e)
    }
}

impl From<RecordError> for Failure {
    fn from(e: RecordError) -> Self {
        Failure::Record(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Barmap(e) => e.fmt(f),
            Failure::Record(e) => e.fmt(f),
        }
    }
}

/// What a command prints on stdout, or why it failed.
type Outcome = std::result::Result<String, Failure>;

/// Reports an error the one way barpoke does: one line on stderr, exit status 1.
fn fail(e: &Failure) -> ExitCode {
    let mut line = format!("barpoke: error: {e}");
    let error: &dyn std::error::Error = match e {
        Failure::Barmap(e) => e,
        Failure::Record(e) => e,
    };
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{line}");
    ExitCode::FAILURE
}

/// Runs the command and returns what it prints on stdout.
fn run(cli: &Cli) -> Outcome {
    match &cli.command {
        Command::List => list(cli),
        Command::Bind(device) => bind(cli, device.addr),
        Command::Unbind(device) => unbind(cli, device.addr),
        Command::Info(device) => info(cli, device.addr),
        Command::Read { at, width, count } => read(cli, at, width.width, *count),
        Command::Write { at, value, width } => write(cli, at, *value, width.width),
        Command::Dump { region, offset, len } => dump(cli, region, *offset, *len),
        Command::Config(device) => config(cli, device.addr),
    }
}

/// A JSON document as printed: pretty, with a final newline.
fn json_doc(value: &Value) -> String {
    format!("{value:#}\n")
}

fn via_name(via: Via) -> &'static str {
    match via {
        Via::Auto => "auto",
        Via::Mmap => "mmap",
        Via::Fault => "fault",
        Via::Syscall => "syscall",
    }
}

fn list(cli: &Cli) -> Outcome {
    let devices = Sysfs::default().devices()?;
    if cli.json {
        return Ok(json_doc(&Value::Array(
            devices.iter().map(format::device_json).collect(),
        )));
    }
    let rows: Vec<Vec<String>> = devices.iter().map(format::device_row).collect();
    Ok(format::columns(&rows))
}

fn bind(cli: &Cli, addr: PciAddress) -> Outcome {
    let sysfs = Sysfs::default();
    let bind = sysfs.prepare_vfio_bind(addr)?;
    // The driver to give the device back to on unbind, recorded before the
    // device leaves it; a device already on vfio-pci keeps its record.
    match bind.current_driver() {
        Some(VFIO_PCI_DRIVER) => {}
        current => DriverRecords::default().remember(addr, current)?,
    }
    let group = bind.bind()?;
    Ok(if cli.json {
        json_doc(&json!({"address": addr.to_string(), "driver": "vfio-pci", "iommu_group": group}))
    } else {
        format!("{addr} driver vfio-pci group {group}\n")
    })
}

fn unbind(cli: &Cli, addr: PciAddress) -> Outcome {
    let sysfs = Sysfs::default();
    let records = DriverRecords::default();
    // The library leaves a device of another driver alone; barpoke leaves its record alone then.
    let from_vfio = sysfs.driver(addr)?.is_none_or(|d| d == VFIO_PCI_DRIVER);
    let previous = if from_vfio {
        records.previous_driver(addr)?
    } else {
        None
    };
    let driver = sysfs.unbind(addr, previous.as_deref())?;
    if from_vfio {
        records.forget(addr)?;
    }
    Ok(if cli.json {
        json_doc(&json!({"address": addr.to_string(), "driver": driver}))
    } else {
        format!("{addr} driver {}\n", driver.as_deref().unwrap_or("none"))
    })
}

fn info(cli: &Cli, addr: PciAddress) -> Outcome {
    let device = Device::open(addr)?;
    let mut regions = Vec::new();
    // What `--via auto` would do: the fault handler where there is one.
    let slow = if cfg!(target_arch = "x86_64") {
        AccessPath::Fault
    } else {
        AccessPath::Syscall
    };
    for info in device.regions().iter().filter(|r| r.size > 0) {
        let region = device.region(info.index, MapPolicy::Direct)?;
        let kind = info.index.bar_number().and_then(|n| device.bar_kind(n));
        regions.push((info, kind, region.mapped_ranges().to_vec(), slow));
    }
    if cli.json {
        let regions: Vec<Value> = regions
            .iter()
            .map(|(r, kind, mapped, slow)| format::region_json(r, *kind, mapped, *slow))
            .collect();
        return Ok(json_doc(&json!({
            "address": addr.to_string(),
            "iommu_group": device.iommu_group(),
            "regions": regions,
        })));
    }
    let mut rows = vec![format::region_header()];
    rows.extend(
        regions
            .iter()
            .map(|(r, kind, mapped, slow)| format::region_row(r, *kind, mapped, *slow)),
    );
    Ok(format::columns(&rows))
}

fn read(cli: &Cli, at: &Register, width: Width, count: u64) -> Outcome {
    let (addr, index, offset) = at.parts();
    let device = Device::open(addr)?;
    let region = Opened::open(&device, index, cli.via)?;
    let step = width.bytes() as u64;
    region.check_span(offset, count.saturating_mul(step))?;
    let values = (0..count)
        .map(|i| region.read(offset + i * step, width, cli.trace))
        .collect::<Result<Vec<u64>>>()?;
    let hex: Vec<String> = values.iter().map(|v| format::hex_value(*v, width)).collect();
    if cli.json {
        return Ok(json_doc(&json!({
            "address": addr.to_string(),
            "region": index.to_string(),
            "offset": offset,
            "width": width.bits(),
            "via": via_name(cli.via),
            "values": values,
            "hex": hex,
        })));
    }
    Ok(hex.iter().map(|h| format!("{h}\n")).collect())
}

fn write(cli: &Cli, at: &Register, value: u64, width: Width) -> Outcome {
    let (addr, index, offset) = at.parts();
    let device = Device::open(addr)?;
    let region = Opened::open(&device, index, cli.via)?;
    region.write(offset, width, value, cli.trace)?;
    Ok(if cli.json {
        json_doc(&json!({
            "address": addr.to_string(),
            "region": index.to_string(),
            "offset": offset,
            "width": width.bits(),
            "via": via_name(cli.via),
            "value": value,
        }))
    } else {
        String::new()
    })
}

/// The aligned 32-bit words that cover `offset..offset + len`, as a byte range.
fn dword_span(offset: u64, len: u64) -> Range<u64> {
    let start = offset / 4 * 4;
    let end = (offset + len).next_multiple_of(4);
    start..end
}

fn dump(cli: &Cli, at: &RegionArgs, offset: Option<u64>, len: Option<u64>) -> Outcome {
    let (addr, index) = (at.device.addr, at.index);
    let device = Device::open(addr)?;
    let region = Opened::open(&device, index, cli.via)?;
    let offset = offset.unwrap_or(0);
    let len = len.unwrap_or_else(|| region.bar.size().saturating_sub(offset).min(DEFAULT_DUMP_LEN));
    // A dump must start inside the region even when it shows nothing.
    region.check_span(offset, len.max(1))?;
    let span = dword_span(offset, len);
    region.check_span(span.start, span.end - span.start)?;
    let mut bytes = Vec::new();
    for at in span.clone().step_by(4) {
        let word = region.read(at, Width::W32, cli.trace)? as u32;
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let skip = (offset - span.start) as usize;
    let shown = &bytes[skip..skip + len as usize];
    if cli.json {
        return Ok(json_doc(&json!({
            "address": addr.to_string(),
            "region": index.to_string(),
            "offset": offset,
            "len": len,
            "via": via_name(cli.via),
            "bytes": shown,
        })));
    }
    Ok(format::hexdump(offset, shown))
}

fn config(cli: &Cli, addr: PciAddress) -> Outcome {
    let device = Device::open(addr)?;
    let config = device.config()?;
    let header = config.header()?;
    let caps = config.capabilities()?;
    let ext = config.extended_capabilities()?;
    Ok(if cli.json {
        json_doc(&format::config_json(addr, &header, &caps, &ext))
    } else {
        format::columns(&format::config_rows(addr, &header, &caps, &ext))
    })
}

/// One region opened the way `--via` asks, with every access checked and traced.
struct Opened {
    bar: barmap::Region,
    via: Via,
    /// Accesses that did not go straight to a mapping, counted by the
    /// region's access hook: what `--trace` reports as the path taken.
    trapped: Arc<AtomicU64>,
    /// The directly mapped ranges (empty under `--via syscall` and `fault`).
    mapped: Vec<Range<u64>>,
    /// One pointer over the whole region whose unmapped pages are trapped (a
    /// shadow region), under `--via fault`, and under `--via auto` for a region
    /// that is not fully mapped. Valid while `bar` lives.
    shadow: Option<*mut u8>,
}

/// The pointer `--via auto` uses for `bar`: the shadow region over its
/// unmapped parts, or `None` if it is fully mapped or this platform has no
/// shadow regions (then those parts take pread/pwrite). Any other failure to
/// set up the shadow region is an error.
fn auto_shadow(bar: &barmap::Region) -> Result<Option<*mut u8>> {
    if bar.is_fully_mapped() {
        return Ok(None);
    }
    match bar.as_mut_ptr() {
        Ok(ptr) => Ok(Some(ptr)),
        // The fault handler is x86-64 only.
        Err(Error::Unsupported { .. }) if !cfg!(target_arch = "x86_64") => Ok(None),
        Err(e) => Err(e),
    }
}

impl Opened {
    /// How `via` opens a region.
    fn policy(via: Via) -> MapPolicy {
        match via {
            Via::Auto | Via::Mmap => MapPolicy::Direct,
            Via::Syscall => MapPolicy::TrapAll,
            Via::Fault => MapPolicy::TrapAll,
        }
    }

    fn open(device: &Device, index: RegionIndex, via: Via) -> Result<Opened> {
        let trapped = Arc::new(AtomicU64::new(0));
        let count = trapped.clone();
        let builder = device.region_builder(index)?.policy(Opened::policy(via));
        // SAFETY: the hook only increments an atomic counter: async-signal-safe.
        let bar = unsafe { builder.hook(move |_| _ = count.fetch_add(1, Ordering::Relaxed)) }.build()?;
        let mapped = bar.mapped_ranges().to_vec();
        if via == Via::Mmap && mapped.is_empty() {
            return Err(Error::NotMmapable {
                addr: device.address(),
                region: index,
                reason: "the kernel offers no mmap of it (use --via auto or syscall)",
            });
        }
        let shadow = match via {
            Via::Fault => Some(bar.as_mut_ptr()?),
            Via::Auto => auto_shadow(&bar)?,
            Via::Mmap | Via::Syscall => None,
        };
        Ok(Opened {
            bar,
            via,
            trapped,
            mapped,
            shadow,
        })
    }

    /// The path of everything that is not directly mapped.
    fn slow_path(&self) -> AccessPath {
        if self.shadow.is_some() {
            AccessPath::Fault
        } else {
            AccessPath::Syscall
        }
    }

    /// Refuses `offset..offset + len` unless it lies inside the region.
    fn check_span(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.bar.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                addr: self.bar.address(),
                region: self.bar.index(),
                offset,
                len,
                size,
            });
        }
        Ok(())
    }

    /// The path an access takes; under `--via mmap`, an in-bounds access
    /// outside the mapping is refused (an out-of-bounds one is left to the
    /// library, which names the range).
    fn path(&self, offset: u64, width: Width) -> Result<AccessPath> {
        let len = width.bytes() as u64;
        let path = AccessPath::of(&self.mapped, self.slow_path(), offset, len);
        if self.via == Via::Mmap && path != AccessPath::Mmap && self.check_span(offset, len).is_ok() {
            return Err(Error::NotMmapable {
                addr: self.bar.address(),
                region: self.bar.index(),
                reason: "the access lies outside its mmapable areas (use --via auto or syscall)",
            });
        }
        Ok(path)
    }

    /// The path the access just made took: straight to the mapping if the
    /// hook saw nothing since `before`, else through the fault handler (the
    /// pointer) or pread/pwrite (typed accesses).
    fn taken(&self, before: u64) -> AccessPath {
        match (self.trapped.load(Ordering::Relaxed) > before, self.shadow) {
            (false, _) => AccessPath::Mmap,
            (true, Some(_)) => AccessPath::Fault,
            (true, None) => AccessPath::Syscall,
        }
    }

    fn read(&self, offset: u64, width: Width, trace: bool) -> Result<u64> {
        self.path(offset, width)?;
        let before = self.trapped.load(Ordering::Relaxed);
        let value = match self.shadow {
            Some(base) => {
                self.bar.check_access(offset, width.bytes(), AccessKind::Read)?;
                // SAFETY: `base` spans the whole region while `self.bar` lives, and
                // `Region::check_access` put `offset..offset + width` inside it, aligned.
                unsafe { load(base.add(offset as usize), width) }
            }
            None => self.bar.read_width(offset, width.bytes())?,
        };
        let path = self.taken(before);
        if trace {
            eprintln!(
                "{}",
                format::trace_line("read", self.bar.index(), offset, width, value, path)
            );
        }
        Ok(value)
    }

    fn write(&self, offset: u64, width: Width, value: u64, trace: bool) -> Result<()> {
        self.path(offset, width)?;
        let before = self.trapped.load(Ordering::Relaxed);
        match self.shadow {
            Some(base) => {
                self.bar.check_access(offset, width.bytes(), AccessKind::Write)?;
                if width.bits() < 64 && value >> width.bits() != 0 {
                    return Err(Error::ValueTooWide {
                        addr: self.bar.address(),
                        region: self.bar.index(),
                        value,
                        width: width.bytes(),
                    });
                }
                // SAFETY: as in `read`.
                unsafe { store(base.add(offset as usize), width, value) }
            }
            None => self.bar.write_width(offset, width.bytes(), value)?,
        }
        let path = self.taken(before);
        if trace {
            eprintln!(
                "{}",
                format::trace_line("write", self.bar.index(), offset, width, value, path)
            );
        }
        Ok(())
    }
}

/// One little-endian load of `width` at `ptr`, zero-extended: one pinned
/// `mov` ([`barmap::mmio::read`]), reaching the device on a mapped page and
/// emulated by barmap's fault handler on a trapped one.
///
/// # Safety
/// `ptr` must point into a live region's range, with `width` bytes readable
/// from it, aligned to `width`.
unsafe fn load(ptr: *const u8, width: Width) -> u64 {
    // SAFETY: guaranteed by the caller, for each width.
    unsafe {
        match width.bytes() {
            1 => u64::from(mmio::read(ptr)),
            2 => u64::from(mmio::read(ptr.cast::<u16>())),
            4 => u64::from(mmio::read(ptr.cast::<u32>())),
            _ => mmio::read(ptr.cast::<u64>()),
        }
    }
}

/// One little-endian store of the low `width` bits of `value` at `ptr`, one
/// pinned `mov` ([`barmap::mmio::write`]).
///
/// # Safety
/// As for [`load`], with the bytes writable.
unsafe fn store(ptr: *mut u8, width: Width, value: u64) {
    // SAFETY: as in `load`.
    unsafe {
        match width.bytes() {
            1 => mmio::write(ptr, value as u8),
            2 => mmio::write(ptr.cast::<u16>(), value as u16),
            4 => mmio::write(ptr.cast::<u32>(), value as u32),
            _ => mmio::write(ptr.cast::<u64>(), value),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("barpoke").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn read_takes_address_region_offset_width_and_count() {
        let cli = parse(&["read", "00:03.0", "bar0", "0x10", "-w", "8", "-n", "4"]).unwrap();
        assert_eq!(cli.via, Via::Auto);
        assert!(!cli.json && !cli.trace);
        match cli.command {
            Command::Read {
                at:
                    Register {
                        region:
                            RegionArgs {
                                device: DeviceArg { addr },
                                index: region,
                            },
                        offset,
                    },
                width: WidthArg { width },
                count,
            } => {
                assert_eq!(addr, "0000:00:03.0".parse().unwrap());
                assert_eq!(region, RegionIndex::bar(0).unwrap());
                assert_eq!((offset, width.bits(), count), (0x10, 8, 4));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["read", "0000:00:04.0", "config", "8"]).unwrap().command {
            Command::Read {
                at:
                    Register {
                        region: RegionArgs { index: region, .. },
                        ..
                    },
                width: WidthArg { width },
                count,
            } => assert_eq!((region, width, count), (RegionIndex::CONFIG, Width::W32, 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&[
            "read", "00:03.0", "bar0", "0", "--via", "syscall", "--json", "--trace",
        ])
        .unwrap();
        assert_eq!(cli.via, Via::Syscall);
        assert!(cli.json && cli.trace);
        let cli = parse(&["--via", "mmap", "info", "00:03.0"]).unwrap();
        assert_eq!(cli.via, Via::Mmap);
        for (via, expected) in [
            ("auto", Via::Auto),
            ("mmap", Via::Mmap),
            ("fault", Via::Fault),
            ("syscall", Via::Syscall),
        ] {
            assert_eq!(parse(&["--via", via, "list"]).unwrap().via, expected);
            assert_eq!(via_name(expected), via);
        }
    }

    #[test]
    fn write_and_dump_arguments() {
        match parse(&["write", "00:03.0", "bar0", "4", "0xedcba987", "--width", "64"])
            .unwrap()
            .command
        {
            Command::Write {
                at: Register { offset, .. },
                value,
                width: WidthArg { width },
            } => assert_eq!((offset, value, width.bits()), (4, 0xedcb_a987, 64)),
            other => panic!("{other:?}"),
        }
        match parse(&["dump", "00:03.0", "bar0"]).unwrap().command {
            Command::Dump { offset, len, .. } => assert_eq!((offset, len), (None, None)),
            other => panic!("{other:?}"),
        }
        match parse(&["dump", "00:03.0", "rom", "0x100", "32"]).unwrap().command {
            Command::Dump {
                region: RegionArgs { index: region, .. },
                offset,
                len,
            } => assert_eq!((region, offset, len), (RegionIndex::ROM, Some(0x100), Some(32))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_usage_is_a_clap_error_with_exit_status_2() {
        for (args, needle) in [
            (&["read", "00:03", "bar0", "0"][..], "invalid PCI address"),
            (&["read", "00:20.0", "bar0", "0"], "device number above 0x1f"),
            (&["read", "00:03.0", "bar6", "0"], "unknown region"),
            (&["read", "00:03.0", "bar0", "zz"], "not a number"),
            (
                &["read", "00:03.0", "bar0", "0x1ffffffffffffffff"],
                "does not fit in 64 bits",
            ),
            (&["read", "00:03.0", "bar0", "0", "-w", "12"], "8, 16, 32 or 64"),
            (&["read", "00:03.0", "bar0", "0", "-n", "0"], "at least 1"),
            (&["write", "00:03.0", "bar0", "0"], "VALUE"),
            (&["read", "00:03.0", "bar0", "0", "--via", "pio"], "pio"),
            (&["poke", "00:03.0"], "poke"),
            (&[], "Usage"),
        ] {
            let err = parse(args).map(|_| ()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.render().to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
        }
        assert_eq!(
            parse(&["read", "00:03.0", "bar0", "0", "-w", "12"])
                .unwrap_err()
                .kind(),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn every_subcommand_has_help_with_an_example() {
        let mut cmd = Cli::command();
        for sub in cmd.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            let help = sub.render_long_help().to_string();
            assert!(help.contains("Example:"), "{name}: {help}");
            assert!(help.contains(&format!("barpoke {name}")), "{name}: {help}");
        }
        let err = parse(&["read", "--help"]).unwrap_err();
        assert_eq!((err.kind(), err.exit_code()), (ErrorKind::DisplayHelp, 0));
    }

    #[test]
    fn raw_accesses_have_the_width_and_little_endian_order() {
        let mut buf = [0u64; 2];
        let base = buf.as_mut_ptr().cast::<u8>();
        let w = |bits: &str| parse::width(bits).unwrap();
        // SAFETY: every access below is inside `buf` (16 bytes) and aligned to its width.
        unsafe {
            store(base, w("64"), 0x1122_3344_5566_7788);
            assert_eq!(load(base, w("8")), 0x88);
            assert_eq!(load(base.add(1), w("8")), 0x77);
            assert_eq!(load(base.add(2), w("16")), 0x5566);
            assert_eq!(load(base.add(4), w("32")), 0x1122_3344);
            store(base.add(8), w("8"), 0xaa);
            store(base.add(10), w("16"), 0xbbcc);
            store(base.add(12), w("32"), 0xdead_beef);
            assert_eq!(load(base.add(8), w("64")), 0xdead_beef_bbcc_00aa);
        }
        assert_eq!(
            buf[1].to_le_bytes(),
            [0xaa, 0, 0xcc, 0xbb, 0xef, 0xbe, 0xad, 0xde]
        );
    }

    #[test]
    fn dump_reads_the_covering_dwords() {
        assert_eq!(dword_span(0, 0x20), 0..0x20);
        assert_eq!(dword_span(1, 2), 0..4);
        assert_eq!(dword_span(3, 2), 0..8);
        assert_eq!(dword_span(0x104, 9), 0x104..0x110);
        assert_eq!(dword_span(8, 0), 8..8);
    }
}
