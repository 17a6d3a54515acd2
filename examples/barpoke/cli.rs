//! barpoke's command line: the clap definition of every subcommand, its
//! arguments and its help (with an example and the JSON shape each prints).

use barmap::{PciAddress, RegionIndex};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::parse::{self, Width};

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
pub struct Cli {
    #[arg(long, global = true, value_enum, default_value_t = Via::Auto, help = VIA_HELP)]
    pub via: Via,

    /// Print one JSON document on stdout instead of text (shapes: see each subcommand's --help)
    #[arg(long, global = true)]
    pub json: bool,

    /// Log every access to stderr: `trace: read bar0+0x0 w32 = 0x010000ed via mmap`
    #[arg(long, global = true)]
    pub trace: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The `--via` access paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// The direct mapping where there is one, the shadow region (trapped pages) elsewhere
    Auto,
    /// Only the direct mapping: refuse a region or range that is not mmapable
    Mmap,
    /// A shadow region with every page trapped: each access faults and is emulated
    Fault,
    /// pread/pwrite on the VFIO device descriptor
    Syscall,
}

impl Via {
    /// The path's name, as `--via` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Via::Auto => "auto",
            Via::Mmap => "mmap",
            Via::Fault => "fault",
            Via::Syscall => "syscall",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
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

    /// The kernel interface the device is opened through, then one row per region:
    /// name, size, flags (r/w/mmap), kind, access path, capabilities
    #[command(after_help = "\
Example:
  $ barpoke info 00:04.0
  0000:00:04.0 through the VFIO group (type1v2 container)
  REGION SIZE   FLAGS KIND   ACCESS CAPS
  bar0   0x1000 rwm   mem32  mmap   -
  bar1   0x100  rw-   io     fault  -
  rom    0x1000 r--   rom    fault  -
  config 0x100  rw-   config fault  -

ACCESS is the path --via auto takes: mmap, mmap+fault (partly mappable) or
fault; syscall instead of fault where there are no shadow regions (not
x86-64). Regions of size 0 are not shown.
The interface is the one Device::open picks: the device's VFIO cdev (iommufd)
when it has one and /dev/iommu opens, its group otherwise.
JSON (--json): {\"address\": \"0000:00:04.0\", \"iommu_group\": 4, \"interface\": \"group\",
  \"interface_description\": \"VFIO group (type1v2 container)\", \"regions\": [
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
pub struct DeviceArg {
    /// PCI address: 0000:00:03.0 or 00:03.0
    #[arg(value_name = "ADDR")]
    pub addr: PciAddress,
}

/// ADDR REGION: one region of a device.
#[derive(Args, Debug)]
pub struct RegionArgs {
    #[command(flatten)]
    pub device: DeviceArg,
    /// Region: bar0..bar5, rom or config
    #[arg(value_name = "REGION")]
    pub index: RegionIndex,
}

/// ADDR REGION OFFSET: one register of a device.
#[derive(Args, Debug)]
pub struct Register {
    #[command(flatten)]
    region: RegionArgs,
    /// Offset in the region, decimal or 0x hex
    #[arg(value_name = "OFFSET", value_parser = parse::number)]
    offset: u64,
}

impl Register {
    /// The device, the region and the offset.
    pub fn parts(&self) -> (PciAddress, RegionIndex, u64) {
        (self.region.device.addr, self.region.index, self.offset)
    }
}

/// -w WIDTH: the width of each access.
#[derive(Args, Debug)]
pub struct WidthArg {
    /// Access width in bits: 8, 16, 32 or 64
    #[arg(short = 'w', long = "width", value_name = "WIDTH", value_parser = parse::width, default_value = "32")]
    pub width: Width,
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
            assert_eq!(expected.name(), via);
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
}
