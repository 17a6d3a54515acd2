//! Submission queue entries as the driver builds them, and completion
//! queue entries as it reads them (NVMe base specification 2.0, 4.2 and 4.6).

use super::error::Status;

/// Admin opcode: Delete I/O Submission Queue.
pub const ADMIN_DELETE_SQ: u8 = 0x00;
/// Admin opcode: Create I/O Submission Queue.
pub const ADMIN_CREATE_SQ: u8 = 0x01;
/// Admin opcode: Delete I/O Completion Queue.
pub const ADMIN_DELETE_CQ: u8 = 0x04;
/// Admin opcode: Create I/O Completion Queue.
pub const ADMIN_CREATE_CQ: u8 = 0x05;
/// Admin opcode: Identify.
pub const ADMIN_IDENTIFY: u8 = 0x06;
/// Admin opcode: Set Features.
pub const ADMIN_SET_FEATURES: u8 = 0x09;
/// NVM opcode: Flush.
pub const NVM_FLUSH: u8 = 0x00;
/// NVM opcode: Write.
pub const NVM_WRITE: u8 = 0x01;
/// NVM opcode: Read.
pub const NVM_READ: u8 = 0x02;
/// Identify CNS: the namespace data structure of NSID.
pub const CNS_NAMESPACE: u32 = 0x00;
/// Identify CNS: the controller data structure.
pub const CNS_CONTROLLER: u32 = 0x01;
/// Identify CNS: the active namespace ID list.
pub const CNS_ACTIVE_NAMESPACES: u32 = 0x02;
/// Feature identifier: Number of Queues.
pub const FEATURE_NUMBER_OF_QUEUES: u32 = 0x07;

/// Bytes in a submission queue entry.
pub const SQE_SIZE: usize = 64;
/// Bytes in a completion queue entry.
pub const CQE_SIZE: usize = 16;

/// A submission queue entry: 16 dwords, the command identifier filled in
/// by the queue at submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The entry's dwords, CDW0 first.
    pub dw: [u32; 16],
}

impl Command {
    /// A command with opcode `opcode` for namespace `nsid`, all else zero.
    pub fn new(opcode: u8, nsid: u32) -> Command {
        let mut dw = [0; 16];
        dw[0] = u32::from(opcode);
        dw[1] = nsid;
        Command { dw }
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.dw[0] as u8
    }

    /// The command identifier.
    pub fn cid(&self) -> u16 {
        (self.dw[0] >> 16) as u16
    }

    /// Sets the command identifier (CDW0 bits 31:16).
    pub fn set_cid(&mut self, cid: u16) {
        self.dw[0] = (self.dw[0] & 0xffff) | u32::from(cid) << 16;
    }

    /// Sets PRP entries 1 and 2 (DPTR).
    pub fn set_prps(&mut self, prp1: u64, prp2: u64) {
        self.dw[6] = prp1 as u32;
        self.dw[7] = (prp1 >> 32) as u32;
        self.dw[8] = prp2 as u32;
        self.dw[9] = (prp2 >> 32) as u32;
    }

    /// Sets command dwords 10 and up, from `cdw[0]` = CDW10.
    pub fn with_cdw(mut self, cdw: &[u32]) -> Command {
        self.dw[10..10 + cdw.len()].copy_from_slice(cdw);
        self
    }

    /// Identify with CNS `cns` (data to a 4 KiB page, PRPs set later).
    pub fn identify(cns: u32, nsid: u32) -> Command {
        Command::new(ADMIN_IDENTIFY, nsid).with_cdw(&[cns])
    }

    /// Read (`write` false) or Write of `blocks` blocks from `lba` (PRPs set later).
    /// `blocks` is 1..=65536 (NLB is 0-based): 0 is taken as 1, more is cut to 16 bits.
    pub fn rw(write: bool, nsid: u32, lba: u64, blocks: u32) -> Command {
        let opcode = if write { NVM_WRITE } else { NVM_READ };
        let nlb = blocks.saturating_sub(1) & 0xffff;
        Command::new(opcode, nsid).with_cdw(&[lba as u32, (lba >> 32) as u32, nlb])
    }

    /// The specification's name of the command, for errors.
    pub fn name(&self, admin: bool) -> &'static str {
        match (admin, self.opcode()) {
            (true, ADMIN_DELETE_SQ) => "Delete I/O Submission Queue",
            (true, ADMIN_CREATE_SQ) => "Create I/O Submission Queue",
            (true, ADMIN_DELETE_CQ) => "Delete I/O Completion Queue",
            (true, ADMIN_CREATE_CQ) => "Create I/O Completion Queue",
            (true, ADMIN_IDENTIFY) => "Identify",
            (true, ADMIN_SET_FEATURES) => "Set Features",
            (true, _) => "admin command",
            (false, NVM_FLUSH) => "Flush",
            (false, NVM_WRITE) => "Write",
            (false, NVM_READ) => "Read",
            (false, _) => "I/O command",
        }
    }
}

/// A completion queue entry as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Command specific result (DW0).
    pub result: u32,
    /// Submission queue head pointer (DW2 bits 15:0).
    pub sq_head: u16,
    /// Submission queue identifier (DW2 bits 31:16).
    pub sq_id: u16,
    /// Command identifier (DW3 bits 15:0).
    pub cid: u16,
    /// Phase tag (DW3 bit 16).
    pub phase: bool,
    /// The status, `None` for success.
    pub status: Option<Status>,
}

impl Completion {
    /// Decodes the entry's four dwords.
    pub fn decode(dw: [u32; 4]) -> Completion {
        Completion {
            result: dw[0],
            sq_head: dw[2] as u16,
            sq_id: (dw[2] >> 16) as u16,
            cid: dw[3] as u16,
            phase: (dw[3] >> 16) & 1 == 1,
            status: Status::from_dw3(dw[3]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_command_has_lba_and_zero_based_count() {
        let mut cmd = Command::rw(false, 1, 0x1_2345_6789, 8);
        cmd.set_cid(0x42);
        cmd.set_prps(0x1000, 0x2_0000_3000);
        assert_eq!(cmd.dw[0], 0x0042_0002);
        assert_eq!(cmd.dw[1], 1);
        assert_eq!((cmd.dw[10], cmd.dw[11], cmd.dw[12]), (0x2345_6789, 1, 7));
        assert_eq!(
            (cmd.dw[6], cmd.dw[7], cmd.dw[8], cmd.dw[9]),
            (0x1000, 0, 0x3000, 2)
        );
        assert_eq!(cmd.name(false), "Read");
    }

    #[test]
    fn completion_decodes() {
        let cqe = Completion::decode([7, 0, 0x0003_0005, (1 << 16) | 0x42]);
        assert_eq!((cqe.result, cqe.sq_head, cqe.sq_id, cqe.cid), (7, 5, 3, 0x42));
        assert!(cqe.phase && cqe.status.is_none());
    }
}
