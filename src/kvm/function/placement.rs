//! Where the guest's BARs decode, and whether they may.

use std::ops::Range;

use super::config::ConfigSpaceEmu;
use crate::config::regs::{PCI_COMMAND_IO, PCI_COMMAND_MEMORY};

impl ConfigSpaceEmu {
    /// Where the guest has BAR `i` (0-5; 6 is the ROM) decoding: `Ok(None)`
    /// if it does not (decode off, ROM disabled, address 0: unassigned),
    /// `Err(reason)` if it may not sit where the guest put it: over
    /// `reserved` (guest RAM and whatever else the VMM placed), over another
    /// BAR of the function, or past the end of its address space.
    pub(super) fn placements(
        &self,
        reserved: &[Range<u64>],
    ) -> [std::result::Result<Option<u64>, &'static str>; 7] {
        let decoding: Vec<Option<(bool, Range<u64>)>> = (0..7).map(|i| self.decoding(i)).collect();
        std::array::from_fn(|i| {
            let Some((io, range)) = decoding[i].clone() else {
                return Ok(None);
            };
            let limit = if io { PORT_SPACE } else { u64::MAX };
            if range.end > limit || range.end < range.start {
                return Err(if io {
                    "the I/O BAR does not fit in the 64 KiB port space"
                } else {
                    "the BAR would end past the top of the guest address space"
                });
            }
            if !io && reserved.iter().any(|r| overlap(r, &range)) {
                return Err("the BAR would lie over guest memory the VMM reserved");
            }
            let clash = decoding.iter().enumerate().any(|(j, other)| {
                j != i
                    && other
                        .as_ref()
                        .is_some_and(|(o_io, o)| *o_io == io && overlap(o, &range))
            });
            if clash {
                return Err("the BAR would overlap another BAR of the function");
            }
            Ok(Some(range.start))
        })
    }

    /// Whether BAR `i` (6: the ROM) decodes, and if so its space (I/O or
    /// memory) and the guest range it decodes.
    fn decoding(&self, i: usize) -> Option<(bool, Range<u64>)> {
        let memory = self.decode & PCI_COMMAND_MEMORY != 0;
        let (io, base, size) = if i == 6 {
            let rom = self.rom?;
            (false, memory.then_some(rom.enabled_at()?)?, rom.size)
        } else {
            let bar = self.bars[i]?;
            let on = if bar.is_io() {
                self.decode & PCI_COMMAND_IO != 0
            } else {
                memory
            };
            (bar.is_io(), on.then_some(bar.address)?, bar.size)
        };
        if base == 0 {
            return None;
        }
        Some((io, base..base.wrapping_add(size)))
    }

    /// The size the guest sees of BAR `i` (6: the ROM).
    pub(super) fn bar_size(&self, i: usize) -> u64 {
        if i == 6 {
            self.rom.map_or(0, |r| r.size)
        } else {
            self.bars[i].map_or(0, |b| b.size)
        }
    }
}

/// One past the last I/O port.
const PORT_SPACE: u64 = 0x1_0000;

fn overlap(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}
