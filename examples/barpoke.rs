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
//! exits 2 with clap's message.
//!
//! The modules follow a run: `cli` (the clap definition and help), `parse`
//! (its value parsers), `commands` (what each subcommand does), `opened` (a
//! region opened as `--via` asks, and its raw accesses), `record` (the driver
//! to give a device back to), and the pure output functions `format` (values,
//! traces, tables), `hexdump` (shared with the NVMe example), `devices`
//! (`list` and `info` rows) and `header` (`config`'s decoding). Parsing and output are tested on the host (`cargo
//! test --example barpoke`); tests/barpoke.rs runs the built binary against
//! QEMU's devices in the guest.

#[path = "barpoke/cli.rs"]
mod cli;
#[path = "barpoke/commands.rs"]
mod commands;
#[path = "barpoke/devices.rs"]
mod devices;
#[path = "barpoke/format.rs"]
mod format;
#[path = "barpoke/header.rs"]
mod header;
#[path = "shared/hexdump.rs"]
mod hexdump;
#[path = "barpoke/opened.rs"]
mod opened;
#[path = "barpoke/parse.rs"]
mod parse;
#[path = "barpoke/record.rs"]
mod record;

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use barmap::Error;
use clap::Parser;

use cli::{Cli, Command};
use record::RecordError;

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
        Command::List => commands::list(cli),
        Command::Bind(device) => commands::bind(cli, device.addr),
        Command::Unbind(device) => commands::unbind(cli, device.addr),
        Command::Info(device) => commands::info(cli, device.addr),
        Command::Read { at, width, count } => commands::read(cli, at, width.width, *count),
        Command::Write { at, value, width } => commands::write(cli, at, *value, width.width),
        Command::Dump { region, offset, len } => commands::dump(cli, region, *offset, *len),
        Command::Config(device) => commands::config(cli, device.addr),
    }
}
