//! The command line of `nvme`: global options and the subcommands.

use std::time::Duration;

use barmap::PciAddress;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::driver::{Mode, Options};
use crate::stats::Pattern;

const LONG_ABOUT: &str = "\
A userspace NVMe driver on barmap: the controller is reset, enabled and
driven through VFIO from this process (bind it to vfio-pci first).

Errors print one line on stderr starting 'nvme: error:' and exit with status
1; bad usage exits with status 2.";

#[derive(Parser, Debug)]
#[command(name = "nvme", version, about = "A userspace NVMe driver on barmap", long_about = LONG_ABOUT)]
pub struct Cli {
    /// The controller's PCI address
    #[arg(
        long,
        short,
        global = true,
        env = "BARMAP_NVME",
        default_value = "0000:00:05.0"
    )]
    pub device: PciAddress,

    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// How I/O completions are found
    #[arg(long, global = true, value_enum, default_value_t = CliMode::Poll)]
    pub mode: CliMode,

    /// I/O queue pairs to create
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: u16,

    /// Command timeout in milliseconds
    #[arg(long, global = true, default_value_t = 5000)]
    pub timeout_ms: u64,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The driver options the command line asks for.
    pub fn options(&self, depth: usize) -> Options {
        let mode = match self.mode {
            CliMode::Poll => Mode::Poll,
            CliMode::Msix => Mode::Msix,
        };
        let depth = (depth / usize::from(self.queues) + 2).clamp(16, 4096) as u16;
        Options {
            queues: self.queues,
            depth,
            mode,
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CliMode {
    /// Spin on the completion queue's phase tag
    Poll,
    /// Sleep on each queue's own MSI-X vector
    Msix,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Identify Controller and every active namespace
    ///
    /// Example: nvme identify
    /// JSON: {"serial": .., "model": .., "firmware": .., "mdts_bytes": .., "namespaces": [{"nsid", "blocks", "block_size"}]}
    Identify,
    /// Read COUNT blocks at LBA and hexdump them (or write them to --output)
    ///
    /// Example: nvme read 0 8 --nsid 1
    Read(Transfer),
    /// Write COUNT blocks at LBA from --input, a --byte or a --seed pattern, then Flush
    ///
    /// Example: nvme write 16 8 --byte 0xa5
    Write(WriteArgs),
    /// Keep QD commands outstanding for a while; print latency, IOPS and MiB/s
    ///
    /// Example: nvme bench --pattern randread --qd 32 --bs 4096 --time 5 --mode msix
    Bench(BenchArgs),
    /// Time COUNT doorbell writes (an unchanged tail) and COUNT register reads: the floor under each command
    ///
    /// Example: nvme floor --count 100000
    /// JSON: {"count": .., "doorbell_write_ns": .., "register_read_ns": ..}
    Floor {
        /// Accesses of each kind
        #[arg(long, default_value_t = 10_000)]
        count: u32,
    },
}

#[derive(Args, Debug)]
pub struct Transfer {
    /// First logical block
    pub lba: u64,
    /// Number of blocks
    pub count: u64,
    /// Namespace ID
    #[arg(long, default_value_t = 1)]
    pub nsid: u32,
    /// Write the data to this file instead of a hexdump on stdout
    #[arg(long)]
    pub output: Option<String>,
    /// Print every line of the hexdump, where by default a run of equal lines is one `*` (as `hexdump -v`)
    #[arg(short = 'v', long, conflicts_with = "output")]
    pub all_lines: bool,
}

#[derive(Args, Debug)]
pub struct WriteArgs {
    /// First logical block
    pub lba: u64,
    /// Number of blocks
    pub count: u64,
    /// Namespace ID
    #[arg(long, default_value_t = 1)]
    pub nsid: u32,
    /// The data: this file's first COUNT blocks
    #[arg(long, conflicts_with_all = ["byte", "seed"])]
    pub input: Option<String>,
    /// The data: every byte this value
    #[arg(long, value_parser = parse_byte)]
    pub byte: Option<u8>,
    /// The data: each block generated from its LBA and this seed (the guest tests' pattern)
    #[arg(long, conflicts_with = "byte")]
    pub seed: Option<u64>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Namespace ID
    #[arg(long, default_value_t = 1)]
    pub nsid: u32,
    /// Commands kept outstanding
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub qd: u64,
    /// Bytes per command
    #[arg(long, default_value_t = 4096)]
    pub bs: usize,
    /// Access pattern
    #[arg(long, value_enum, default_value_t = Pattern::Randread)]
    pub pattern: Pattern,
    /// Run time in seconds
    #[arg(long, default_value_t = 5.0)]
    pub time: f64,
    /// Seed of the random offsets
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress line on stderr
    #[arg(long)]
    pub quiet: bool,
}

fn parse_byte(s: &str) -> Result<u8, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("'{s}' is not a byte (0..255 or 0x00..0xff): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_parses() {
        let cli = Cli::try_parse_from([
            "nvme",
            "--mode",
            "msix",
            "bench",
            "--qd",
            "32",
            "--pattern",
            "seqread",
        ])
        .unwrap();
        let Command::Bench(args) = &cli.command else {
            panic!("not bench: {cli:?}")
        };
        assert_eq!((args.qd, args.pattern, args.bs), (32, Pattern::Seqread, 4096));
        assert_eq!(cli.options(32).mode, Mode::Msix);
        assert!(cli.options(32).depth >= 34);
        assert!(Cli::try_parse_from(["nvme", "bench", "--qd", "0"]).is_err());
        let cli = Cli::try_parse_from(["nvme", "write", "3", "2", "--byte", "0xa5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Write(WriteArgs {
                lba: 3,
                count: 2,
                byte: Some(0xa5),
                ..
            })
        ));
        assert!(parse_byte("0x1ff").is_err());
    }
}
