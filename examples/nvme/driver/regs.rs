//! Controller registers (NVMe base specification 2.0, section 3.1) and the
//! decoding of CAP and CSTS.

use std::time::Duration;

use super::error::NvmeError;

/// Controller Capabilities (64 bits).
pub const CAP: u64 = 0x00;
/// Controller Configuration.
pub const CC: u64 = 0x14;
/// Controller Status.
pub const CSTS: u64 = 0x1c;
/// Admin Queue Attributes.
pub const AQA: u64 = 0x24;
/// Admin Submission Queue base address (64 bits).
pub const ASQ: u64 = 0x28;
/// Admin Completion Queue base address (64 bits).
pub const ACQ: u64 = 0x30;
/// The first doorbell (admin submission queue tail).
pub const DOORBELLS: u64 = 0x1000;

/// CC.EN: enable.
pub const CC_EN: u32 = 1;
/// CC.SHN = 01b: normal shutdown notification.
pub const CC_SHN_NORMAL: u32 = 1 << 14;
/// CC.SHN mask.
pub const CC_SHN_MASK: u32 = 3 << 14;
/// CC.IOSQES = 6 and CC.IOCQES = 4: 64-byte submission, 16-byte completion entries.
pub const CC_IOSQES_IOCQES: u32 = (6 << 16) | (4 << 20);
/// CSTS.RDY: ready.
pub const CSTS_RDY: u32 = 1;
/// CSTS.CFS: controller fatal status.
pub const CSTS_CFS: u32 = 2;
/// CSTS.SHST mask.
pub const CSTS_SHST_MASK: u32 = 3 << 2;
/// CSTS.SHST = 10b: shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;

/// The memory page size the driver uses: the host's 4 KiB page.
pub const PAGE: usize = 4096;
/// log2 of [`PAGE`].
const PAGE_SHIFT: u32 = 12;

/// The fields of CAP the driver honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Maximum queue entries supported (1-based; CAP.MQES is 0-based).
    pub max_entries: u32,
    /// Worst-case time for CSTS.RDY to follow CC.EN (CAP.TO, 500 ms units).
    pub timeout: Duration,
    /// Distance between doorbells in bytes (4 << CAP.DSTRD).
    pub doorbell_stride: u64,
    /// Smallest memory page size, as a power of two (12 + CAP.MPSMIN).
    pub page_shift_min: u32,
    /// Largest memory page size, as a power of two (12 + CAP.MPSMAX).
    pub page_shift_max: u32,
    /// CAP.CSS bit 0: the NVM command set.
    pub nvm_command_set: bool,
}

impl Cap {
    /// Decodes CAP; a register of all ones (no device answering) is
    /// [`NvmeError::DeviceGone`].
    pub fn decode(cap: u64) -> Result<Cap, NvmeError> {
        if cap == u64::MAX {
            return Err(NvmeError::DeviceGone { register: "CAP" });
        }
        Ok(Cap {
            max_entries: (cap & 0xffff) as u32 + 1,
            timeout: Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1)),
            doorbell_stride: 4 << ((cap >> 32) & 0xf),
            page_shift_min: 12 + ((cap >> 48) & 0xf) as u32,
            page_shift_max: 12 + ((cap >> 52) & 0xf) as u32,
            nvm_command_set: (cap >> 37) & 1 == 1,
        })
    }

    /// CC.MPS for the host's page, or [`NvmeError::Unsupported`] when the
    /// controller's range (MPSMIN..=MPSMAX) does not include it.
    pub fn page_size_field(&self) -> Result<u32, NvmeError> {
        if !(self.page_shift_min..=self.page_shift_max).contains(&PAGE_SHIFT) {
            return Err(NvmeError::Unsupported(format!(
                "memory page sizes 2^{}..=2^{} exclude the host's 4 KiB",
                self.page_shift_min, self.page_shift_max
            )));
        }
        Ok(PAGE_SHIFT - 12)
    }

    /// The offset of submission queue `qid`'s tail doorbell.
    pub fn sq_doorbell(&self, qid: u16) -> u64 {
        DOORBELLS + 2 * u64::from(qid) * self.doorbell_stride
    }

    /// The offset of completion queue `qid`'s head doorbell.
    pub fn cq_doorbell(&self, qid: u16) -> u64 {
        DOORBELLS + (2 * u64::from(qid) + 1) * self.doorbell_stride
    }
}

/// Checks a CSTS value: all ones (the device stopped answering) is
/// [`NvmeError::DeviceGone`], CSTS.CFS is [`NvmeError::ControllerFatal`].
pub fn check_csts(csts: u32) -> Result<u32, NvmeError> {
    if csts == u32::MAX {
        return Err(NvmeError::DeviceGone { register: "CSTS" });
    }
    if csts & CSTS_CFS != 0 {
        return Err(NvmeError::ControllerFatal { csts });
    }
    Ok(csts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_of_qemu_decodes() {
        // QEMU 7.2: MQES 0x7ff, CQR, TO 0xf, CSS NVM (and admin only), MPSMAX 4.
        let cap = Cap::decode(0x0040_00b0_0f01_07ff | (0x41 << 37)).unwrap();
        assert_eq!(cap.max_entries, 0x800);
        assert_eq!(cap.timeout, Duration::from_millis(7500));
        assert_eq!(cap.doorbell_stride, 4);
        assert_eq!((cap.page_shift_min, cap.page_shift_max), (12, 16));
        assert!(cap.nvm_command_set);
        assert_eq!(cap.page_size_field().unwrap(), 0);
        assert_eq!((cap.sq_doorbell(0), cap.cq_doorbell(0)), (0x1000, 0x1004));
        assert_eq!((cap.sq_doorbell(2), cap.cq_doorbell(2)), (0x1010, 0x1014));
    }

    #[test]
    fn doorbell_stride_and_page_sizes_are_honoured() {
        let cap = Cap::decode((3 << 32) | (1 << 48) | (2 << 52)).unwrap();
        assert_eq!(cap.doorbell_stride, 32);
        assert_eq!(cap.cq_doorbell(1), 0x1000 + 3 * 32);
        assert!(matches!(cap.page_size_field(), Err(NvmeError::Unsupported(_))));
        assert_eq!(cap.timeout, Duration::from_millis(500), "CAP.TO 0 still waits");
    }

    #[test]
    fn all_ones_and_fatal_status_are_typed_errors() {
        assert!(matches!(Cap::decode(u64::MAX), Err(NvmeError::DeviceGone { .. })));
        assert!(matches!(check_csts(u32::MAX), Err(NvmeError::DeviceGone { .. })));
        assert!(matches!(
            check_csts(CSTS_RDY | CSTS_CFS),
            Err(NvmeError::ControllerFatal { csts: 3 })
        ));
        assert_eq!(check_csts(CSTS_RDY).unwrap(), CSTS_RDY);
    }
}
