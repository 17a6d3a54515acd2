//! The driver's errors, and NVMe completion status as a typed value.

use std::fmt;
use std::time::Duration;

/// Everything the driver can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// barmap failed (opening the device, a register access, DMA, interrupts).
    #[error(transparent)]
    Barmap(#[from] barmap::Error),
    /// A queue's own memory could not be reached (an offset outside it).
    #[error("queue memory: {0}")]
    Memory(#[from] barmap::vm_memory::volatile_memory::Error),
    /// A completion names a command that is not outstanding.
    #[error("queue {qid}: completion for cid {cid}, which is not outstanding")]
    BadCompletion {
        /// The queue.
        qid: u16,
        /// The command identifier in the completion.
        cid: u16,
    },
    /// The controller completed a command with an error status.
    #[error("{command} (cid {cid}) failed: {status}")]
    Status {
        /// What the command was.
        command: &'static str,
        /// Its command identifier.
        cid: u16,
        /// The status field of its completion.
        status: Status,
    },
    /// A command did not complete in time.
    #[error("{command} (cid {cid}) did not complete within {after:?}")]
    Timeout {
        /// What the command was.
        command: &'static str,
        /// Its command identifier.
        cid: u16,
        /// The command timeout.
        after: Duration,
    },
    /// CSTS.RDY did not reach the state asked for within CAP.TO.
    #[error("CSTS.RDY did not become {ready} within {after:?} (CSTS {csts:#x})")]
    NotReady {
        /// The state waited for.
        ready: bool,
        /// The last CSTS read.
        csts: u32,
        /// CAP.TO.
        after: Duration,
    },
    /// The controller reports a fatal status (CSTS.CFS): it needs a reset.
    #[error("controller fatal status (CSTS {csts:#x}): reset the controller")]
    ControllerFatal {
        /// The CSTS value read.
        csts: u32,
    },
    /// The controller is no longer enabled (it was reset behind the
    /// driver's back) while commands were outstanding.
    #[error("the controller was reset (CSTS {csts:#x}) with {outstanding} commands outstanding")]
    ControllerLost {
        /// The CSTS value read.
        csts: u32,
        /// Commands submitted and not completed.
        outstanding: usize,
    },
    /// A register read all ones: the device stopped answering.
    #[error("the device answers all ones to {register}: it is gone or being reset")]
    DeviceGone {
        /// The register read.
        register: &'static str,
    },
    /// The controller lacks something the driver needs.
    #[error("unsupported controller: {0}")]
    Unsupported(String),
    /// A transfer larger than the controller takes in one command.
    #[error("a transfer of {bytes} bytes exceeds the controller's limit of {max} bytes (MDTS)")]
    TransferTooLarge {
        /// The transfer's size.
        bytes: usize,
        /// The largest transfer.
        max: usize,
    },
    /// A buffer range that cannot be transferred.
    #[error("bad transfer: {0}")]
    BadTransfer(String),
    /// No namespace with this identifier.
    #[error("no active namespace {nsid} (active: {active:?})")]
    NoNamespace {
        /// The identifier asked for.
        nsid: u32,
        /// The active namespaces.
        active: Vec<u32>,
    },
    /// No I/O queue pair with this index.
    #[error("no I/O queue {queue} (the controller has {queues})")]
    NoQueue {
        /// The index asked for (0-based).
        queue: usize,
        /// The number of I/O queue pairs.
        queues: usize,
    },
    /// A queue has no free slot for another command.
    #[error("queue {qid} is full ({depth} commands outstanding)")]
    QueueFull {
        /// The queue.
        qid: u16,
        /// Its depth.
        depth: u16,
    },
    /// Reading or writing a file of the CLI.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// Status Code Type 0: generic command status.
pub const SCT_GENERIC: u8 = 0;
/// Status Code Type 1: command specific status.
pub const SCT_COMMAND: u8 = 1;
/// Status Code Type 2: media and data integrity errors.
pub const SCT_MEDIA: u8 = 2;
/// Generic status: Invalid Field in Command.
pub const SC_INVALID_FIELD: u8 = 0x02;
/// Generic status: LBA Out of Range.
pub const SC_LBA_OUT_OF_RANGE: u8 = 0x80;

/// The status field of a completion (DW3 bits 31:17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Status Code Type.
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// More: Get Log Page has more.
    pub more: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

impl Status {
    /// Decodes the status from a completion's DW3 (`None`: success).
    pub fn from_dw3(dw3: u32) -> Option<Status> {
        let field = dw3 >> 17;
        let status = Status {
            sc: (field & 0xff) as u8,
            sct: ((field >> 8) & 7) as u8,
            more: (field >> 13) & 1 == 1,
            dnr: (field >> 14) & 1 == 1,
        };
        (status.sc != 0 || status.sct != 0).then_some(status)
    }

    /// True for LBA Out of Range.
    pub fn is_lba_out_of_range(&self) -> bool {
        (self.sct, self.sc) == (SCT_GENERIC, SC_LBA_OUT_OF_RANGE)
    }

    /// The specification's name of the status, where the driver knows it.
    pub fn name(&self) -> &'static str {
        match (self.sct, self.sc) {
            (SCT_GENERIC, 0x01) => "Invalid Command Opcode",
            (SCT_GENERIC, SC_INVALID_FIELD) => "Invalid Field in Command",
            (SCT_GENERIC, 0x03) => "Command ID Conflict",
            (SCT_GENERIC, 0x04) => "Data Transfer Error",
            (SCT_GENERIC, 0x06) => "Internal Error",
            (SCT_GENERIC, 0x07) => "Command Abort Requested",
            (SCT_GENERIC, 0x08) => "Command Aborted due to SQ Deletion",
            (SCT_GENERIC, 0x0b) => "Invalid Namespace or Format",
            (SCT_GENERIC, 0x0f) => "Invalid SGL Segment Descriptor",
            (SCT_GENERIC, 0x13) => "PRP Offset Invalid",
            (SCT_GENERIC, SC_LBA_OUT_OF_RANGE) => "LBA Out of Range",
            (SCT_GENERIC, 0x81) => "Capacity Exceeded",
            (SCT_GENERIC, 0x82) => "Namespace Not Ready",
            (SCT_COMMAND, 0x00) => "Completion Queue Invalid",
            (SCT_COMMAND, 0x01) => "Invalid Queue Identifier",
            (SCT_COMMAND, 0x02) => "Invalid Queue Size",
            (SCT_COMMAND, 0x08) => "Invalid Interrupt Vector",
            (SCT_COMMAND, 0x0d) => "Feature Not Saveable",
            (SCT_MEDIA, 0x80) => "Write Fault",
            (SCT_MEDIA, 0x81) => "Unrecovered Read Error",
            (SCT_MEDIA, 0x86) => "Access Denied",
            _ => "status unknown to this driver",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SCT {:#x}, SC {:#04x}", self.name(), self.sct, self.sc)?;
        if self.dnr {
            f.write_str(", do not retry")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_decodes_from_dw3() {
        assert_eq!(Status::from_dw3(0x0001_002a), None, "phase tag and cid only");
        // SC 0x80, SCT 0, DNR, phase 1.
        let status = Status::from_dw3((0x80 << 17) | (1 << 31) | (1 << 16)).unwrap();
        assert!(status.is_lba_out_of_range() && status.dnr && !status.more);
        assert_eq!(
            status.to_string(),
            "LBA Out of Range (SCT 0x0, SC 0x80, do not retry)"
        );
        let status = Status::from_dw3((1 << 25) | (1 << 17)).unwrap();
        assert_eq!(
            (status.sct, status.sc, status.name()),
            (1, 1, "Invalid Queue Identifier")
        );
    }
}
