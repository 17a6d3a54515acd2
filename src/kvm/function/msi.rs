//! The MSI capability as the guest sees it: every register after the
//! header virtual, so that the guest's address, data and masks become KVM
//! routes and never reach the device (VFIO programs its own message).

use super::msix::{read_words, write_words, VectorState};
use crate::config::regs::{
    PCI_MSI_FLAGS_64BIT, PCI_MSI_FLAGS_ENABLE, PCI_MSI_FLAGS_MASKBIT, PCI_MSI_FLAGS_QMASK,
    PCI_MSI_FLAGS_QSIZE,
};
use crate::kvm::MsiMessage;

/// Multiple Message Capable's largest defined encoding: 2^5 = 32 vectors.
const MAX_CAPABLE_LOG2: u16 = 5;

/// The MSI state of the function: the capability's registers from its
/// start, in dwords (ID and next pointer at byte 0-1 are the caller's).
#[derive(Clone, Debug)]
pub(super) struct Msi {
    /// The device's control bits the guest cannot change (capable count, 64-bit, masking).
    fixed: u16,
    words: [u32; 6],
    pending: u32,
}

impl Msi {
    /// The state of a capability whose device control register is `control`,
    /// MSI disabled. A capable count past 32 vectors (the reserved encodings
    /// 6 and 7 of Multiple Message Capable) is taken as 32, the most MSI has.
    pub(super) fn new(control: u16) -> Msi {
        let capable = ((control & PCI_MSI_FLAGS_QMASK) >> 1).min(MAX_CAPABLE_LOG2) << 1;
        Msi {
            fixed: capable | control & (PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT),
            words: [0; 6],
            pending: 0,
        }
    }

    /// The capability's size in bytes.
    pub(super) fn size(&self) -> usize {
        let base = if self.is_64() { 14 } else { 10 };
        if self.fixed & PCI_MSI_FLAGS_MASKBIT != 0 {
            base + 10
        } else {
            base
        }
    }

    fn is_64(&self) -> bool {
        self.fixed & PCI_MSI_FLAGS_64BIT != 0
    }

    fn control(&self) -> u16 {
        (self.words[0] >> 16) as u16 | self.fixed
    }

    pub(super) fn enabled(&self) -> bool {
        self.control() & PCI_MSI_FLAGS_ENABLE != 0
    }

    /// The vectors the guest enabled (multiple message enable, no more than
    /// the device is capable of).
    pub(super) fn vectors(&self) -> u32 {
        let capable = (self.fixed & PCI_MSI_FLAGS_QMASK) >> 1;
        let enabled = (self.control() & PCI_MSI_FLAGS_QSIZE) >> 4;
        1 << enabled.min(capable)
    }

    /// Byte offsets of data, mask and pending bits from the capability's start.
    fn layout(&self) -> (usize, usize, usize) {
        if self.is_64() {
            (12, 16, 20)
        } else {
            (8, 12, 16)
        }
    }

    /// Reads `width` bytes at `offset` from the capability's start (2 or more).
    pub(super) fn read(&self, offset: usize, width: usize) -> u64 {
        let mut words = self.words;
        words[0] = u32::from(self.control()) << 16;
        let (_, _, pending) = self.layout();
        if self.fixed & PCI_MSI_FLAGS_MASKBIT != 0 {
            words[pending / 4] = self.pending;
        }
        let end = (offset + width).min(self.size());
        if offset >= end {
            return 0;
        }
        let value = read_words(&words, offset, end - offset);
        value & (u64::MAX >> (64 - 8 * (end - offset)))
    }

    /// A guest write of `width` bytes at `offset` from the capability's
    /// start; whether the enable, vector count, message or masks changed.
    pub(super) fn write(&mut self, offset: usize, width: usize, value: u64) -> bool {
        let end = (offset + width).min(self.size());
        if offset >= end || offset < 2 {
            return false;
        }
        let before = self.words;
        write_words(&mut self.words, offset, end - offset, value);
        // Sanitize: the control's fixed bits, address alignment, data width.
        let control = (self.control() & (PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)) | self.fixed;
        self.words[0] = u32::from(control) << 16;
        self.words[1] &= !0x3;
        let (data, mask, pending) = self.layout();
        self.words[data / 4] &= 0xffff;
        if self.fixed & PCI_MSI_FLAGS_MASKBIT != 0 {
            let capable = 1u64 << ((self.fixed & PCI_MSI_FLAGS_QMASK) >> 1);
            self.words[mask / 4] &= (u64::MAX >> (64 - capable)) as u32;
            self.words[pending / 4] = 0;
        }
        before != self.words
    }

    /// What vector `n` should do now: MSI vector `n` sends the message's
    /// data with its low bits replaced by `n`.
    pub(super) fn state(&self, n: u32) -> VectorState {
        if !self.enabled() || n >= self.vectors() {
            return VectorState::Off;
        }
        let (data, mask, _) = self.layout();
        if self.fixed & PCI_MSI_FLAGS_MASKBIT != 0 && self.words[mask / 4] & (1 << n) != 0 {
            return VectorState::Masked;
        }
        let mut address = u64::from(self.words[1]);
        if self.is_64() {
            address |= u64::from(self.words[2]) << 32;
        }
        let base = self.words[data / 4];
        let low = self.vectors() - 1;
        VectorState::Live(MsiMessage {
            address,
            data: (base & !low) | n,
        })
    }

    /// Sets vector `n`'s pending bit (it fired while masked).
    pub(super) fn set_pending(&mut self, n: u32) {
        self.pending |= 1 << n;
    }

    /// Clears vector `n`'s pending bit; whether it was set.
    pub(super) fn take_pending(&mut self, n: u32) -> bool {
        let was = self.pending & (1 << n) != 0;
        self.pending &= !(1 << n);
        was
    }

    /// Back to the state after reset.
    pub(super) fn reset(&mut self) {
        *self = Msi::new(self.fixed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_capable_count_is_taken_as_32_vectors() {
        for reserved in [6u16, 7] {
            let mut msi = Msi::new(PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT | (reserved << 1));
            // Enable with multiple message enable 7 (asks for 128) and every mask bit set.
            assert!(msi.write(2, 2, u64::from(PCI_MSI_FLAGS_ENABLE | (7 << 4))));
            msi.write(16, 4, u64::from(u32::MAX));
            assert_eq!(msi.vectors(), 32);
            for n in 0..32 {
                assert!(matches!(msi.state(n), VectorState::Masked), "vector {n}");
                msi.set_pending(n);
                assert!(msi.take_pending(n));
            }
            assert!(matches!(msi.state(32), VectorState::Off));
        }
    }
}
