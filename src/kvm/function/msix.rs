//! The MSI-X capability, table and PBA as the guest sees them: a cached
//! table that guest writes update, never written to the device (VFIO
//! programs the device's own table).

use std::ops::Range;

use crate::config::regs::{
    PCI_MSIX_BIR, PCI_MSIX_ENTRY_CTRL_MASKBIT, PCI_MSIX_ENTRY_SIZE, PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL, PCI_MSIX_FLAGS_QSIZE,
};
use crate::kvm::MsiMessage;

/// One table entry as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

/// What a vector should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VectorState {
    /// MSI-X is off: no route, no vector.
    Off,
    /// Enabled but masked (its entry or the function): interrupts set its pending bit.
    Masked,
    /// Delivered to the guest as this message.
    Live(MsiMessage),
}

/// The MSI-X state of the function.
#[derive(Clone, Debug)]
pub(super) struct Msix {
    /// The table's BAR and its range in it.
    pub(super) table_bar: u32,
    pub(super) table: Range<u64>,
    /// The PBA's BAR and its range in it.
    pub(super) pba_bar: u32,
    pub(super) pba: Range<u64>,
    enabled: bool,
    function_mask: bool,
    entries: Vec<Entry>,
    pending: Vec<u64>,
}

impl Msix {
    /// The state of a capability whose control register is `control` and
    /// table and PBA registers are `table` and `pba`; every vector starts
    /// masked, MSI-X disabled (as after reset).
    pub(super) fn new(control: u16, table: u32, pba: u32) -> Msix {
        let size = u64::from(control & PCI_MSIX_FLAGS_QSIZE) + 1;
        let offset = |reg: u32| u64::from(reg & !PCI_MSIX_BIR);
        let table_at = offset(table);
        let pba_at = offset(pba);
        Msix {
            table_bar: table & PCI_MSIX_BIR,
            table: table_at..table_at + size * PCI_MSIX_ENTRY_SIZE,
            pba_bar: pba & PCI_MSIX_BIR,
            pba: pba_at..pba_at + size.div_ceil(64) * 8,
            enabled: false,
            function_mask: false,
            entries: vec![
                Entry {
                    address: 0,
                    data: 0,
                    control: PCI_MSIX_ENTRY_CTRL_MASKBIT,
                };
                size as usize
            ],
            pending: vec![0; size.div_ceil(64) as usize],
        }
    }

    /// The number of table entries.
    pub(super) fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The control register's bits the guest owns (enable, function mask),
    /// to be merged with the device's read-only table size.
    pub(super) fn control(&self) -> u16 {
        let mut bits = 0;
        if self.enabled {
            bits |= PCI_MSIX_FLAGS_ENABLE;
        }
        if self.function_mask {
            bits |= PCI_MSIX_FLAGS_MASKALL;
        }
        bits
    }

    /// A guest write of the control register; whether anything changed.
    pub(super) fn write_control(&mut self, value: u16) -> bool {
        let before = (self.enabled, self.function_mask);
        self.enabled = value & PCI_MSIX_FLAGS_ENABLE != 0;
        self.function_mask = value & PCI_MSIX_FLAGS_MASKALL != 0;
        before != (self.enabled, self.function_mask)
    }

    /// What vector `n` should do now.
    pub(super) fn state(&self, n: u32) -> VectorState {
        let Some(entry) = self.entries.get(n as usize) else {
            return VectorState::Off;
        };
        if !self.enabled {
            VectorState::Off
        } else if self.function_mask || entry.control & PCI_MSIX_ENTRY_CTRL_MASKBIT != 0 {
            VectorState::Masked
        } else {
            VectorState::Live(MsiMessage {
                address: entry.address,
                data: entry.data,
            })
        }
    }

    /// One past the highest vector the guest left unmasked in its entry
    /// (what must be enabled on the device for it), at least 1.
    pub(super) fn vectors_needed(&self) -> u32 {
        let last = self
            .entries
            .iter()
            .rposition(|e| e.control & PCI_MSIX_ENTRY_CTRL_MASKBIT == 0);
        last.map_or(1, |n| n as u32 + 1)
    }

    /// Reads `width` bytes at `offset` in the table: the guest's values.
    /// `Err(entry)` for an offset past the table; the caller checked width
    /// and alignment.
    pub(super) fn read_table(&self, offset: u64, width: usize) -> Result<u64, u64> {
        let (n, within) = self.entry_at(offset, width)?;
        let e = &self.entries[n];
        let bytes = [e.address as u32, (e.address >> 32) as u32, e.data, e.control];
        Ok(read_words(&bytes, within, width))
    }

    /// A guest write of `width` bytes at `offset` in the table; returns the
    /// entry's number if its message or mask changed. `Err(entry)` past the table.
    pub(super) fn write_table(&mut self, offset: u64, width: usize, value: u64) -> Result<Option<u32>, u64> {
        let (n, within) = self.entry_at(offset, width)?;
        let e = &mut self.entries[n];
        let mut words = [e.address as u32, (e.address >> 32) as u32, e.data, e.control];
        write_words(&mut words, within, width, value);
        let new = Entry {
            address: u64::from(words[1]) << 32 | u64::from(words[0]),
            data: words[2],
            // Only the mask bit of vector control is defined; the rest reads 0.
            control: words[3] & PCI_MSIX_ENTRY_CTRL_MASKBIT,
        };
        let changed = new != *e;
        *e = new;
        Ok(changed.then_some(n as u32))
    }

    /// Reads `width` bytes at `offset` in the PBA.
    pub(super) fn read_pba(&self, offset: u64, width: usize) -> u64 {
        let mut bytes = Vec::with_capacity(self.pending.len() * 8);
        self.pending
            .iter()
            .for_each(|q| bytes.extend_from_slice(&q.to_le_bytes()));
        let at = offset as usize;
        let mut word = [0u8; 8];
        for (i, b) in word.iter_mut().enumerate().take(width) {
            *b = bytes.get(at + i).copied().unwrap_or(0);
        }
        u64::from_le_bytes(word)
    }

    /// Sets vector `n`'s pending bit (it fired while masked).
    pub(super) fn set_pending(&mut self, n: u32) {
        if let Some(q) = self.pending.get_mut(n as usize / 64) {
            *q |= 1 << (n % 64);
        }
    }

    /// Clears vector `n`'s pending bit; whether it was set.
    pub(super) fn take_pending(&mut self, n: u32) -> bool {
        let Some(q) = self.pending.get_mut(n as usize / 64) else {
            return false;
        };
        let bit = 1 << (n % 64);
        let was = *q & bit != 0;
        *q &= !bit;
        was
    }

    /// Back to the state after reset: disabled, unmasked function, every
    /// entry masked and cleared, nothing pending.
    pub(super) fn reset(&mut self) {
        *self = Msix {
            table_bar: self.table_bar,
            table: self.table.clone(),
            pba_bar: self.pba_bar,
            pba: self.pba.clone(),
            ..Msix::new((self.len() - 1) as u16, 0, 0)
        };
    }

    /// The entry at table `offset` and the offset inside it, if an access of
    /// `width` bytes there stays inside one entry of the table.
    fn entry_at(&self, offset: u64, width: usize) -> Result<(usize, usize), u64> {
        let n = offset / PCI_MSIX_ENTRY_SIZE;
        let within = (offset % PCI_MSIX_ENTRY_SIZE) as usize;
        if n >= self.entries.len() as u64 || within + width > PCI_MSIX_ENTRY_SIZE as usize {
            return Err(n);
        }
        Ok((n as usize, within))
    }
}

/// `width` bytes at byte `at` of the little-endian dwords `words`.
pub(super) fn read_words(words: &[u32], at: usize, width: usize) -> u64 {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut word = [0u8; 8];
    word[..width].copy_from_slice(&bytes[at..at + width]);
    u64::from_le_bytes(word)
}

/// Stores `width` bytes of `value` at byte `at` of the little-endian dwords `words`.
pub(super) fn write_words(words: &mut [u32], at: usize, width: usize, value: u64) {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
        *w = u32::from_le_bytes(chunk.try_into().expect("4-byte chunks"));
    }
}
