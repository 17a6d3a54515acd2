//! Serving one fault: the instruction's memory operand checked against the
//! region, the access done on the device through its slow path, and the
//! saved registers updated.

use std::io;
use std::sync::atomic::Ordering;

use super::super::emulate::{self, Bus, ExecError, Regs, MAX_INSN_LEN};
use super::super::trace::{Access, AccessKind, Refusal};
use super::super::Shared;
use super::fetch::fetch_and_decode;
use super::report::report;
use super::PAGE_SIZE;

/// Why a fault in a shadow region could not be served.
pub(super) struct Unserved {
    pub(super) reason: &'static str,
    pub(super) errno: Option<i32>,
}

pub(super) fn refuse(reason: &'static str) -> Unserved {
    Unserved { reason, errno: None }
}

/// The instruction bytes at RIP, as far as they were read.
pub(super) struct Fetched {
    pub(super) bytes: [u8; MAX_INSN_LEN],
    pub(super) len: usize,
}

/// Emulates the access at `addr` in `shared`. On failure, reports it on stderr
/// and returns false.
pub(super) fn serve(shared: &Shared, addr: usize, mut regs: Regs<'_>) -> bool {
    let rip = regs.rip();
    let mut fetched = Fetched {
        bytes: [0; MAX_INSN_LEN],
        len: 0,
    };
    let mut offset = None;
    match emulate_at(shared, addr, &mut regs, &mut fetched, &mut offset) {
        Ok(()) => true,
        Err(unserved) => {
            report(shared, addr, rip, offset, &fetched, &unserved);
            false
        }
    }
}

fn emulate_at(
    shared: &Shared,
    addr: usize,
    regs: &mut Regs<'_>,
    fetched: &mut Fetched,
    offset_out: &mut Option<u64>,
) -> Result<(), Unserved> {
    *offset_out = Some((addr - shared.base) as u64);
    let rip = regs.rip();
    let decoded = fetch_and_decode(rip, fetched)?;
    let width = decoded.width();
    let ea = regs
        .effective_address(&decoded.mem)
        .ok_or_else(|| refuse("memory operand not computable from saved registers"))? as usize;
    if !(ea..ea.wrapping_add(width)).contains(&addr) {
        return Err(refuse("fault address is not the instruction's memory operand"));
    }
    let offset = ea
        .checked_sub(shared.base)
        .ok_or_else(|| refuse("access starts before the region"))? as u64;
    *offset_out = Some(offset);
    if offset
        .checked_add(width as u64)
        .is_none_or(|end| end > shared.size)
    {
        return Err(refuse("access runs past the end of the region"));
    }
    check_alignment(ea, width)?;
    let mut bus = DeviceBus { shared, offset };
    emulate::execute(decoded.op, regs, &mut bus).map_err(|e| match e {
        ExecError::Context(reason) | ExecError::Exception(reason) => refuse(reason),
        ExecError::Io(e) => Unserved {
            reason: "device access failed",
            errno: e.raw_os_error(),
        },
    })?;
    regs.set_rip(rip.wrapping_add(u64::from(decoded.len)));
    Ok(())
}

/// Refuses an access that the device would not see as one access of its
/// width: one that crosses a page (a mapped and a trapped page, or two
/// trapped ones) or is not naturally aligned. vfio-pci splits such a
/// `pread`/`pwrite` into narrower bus accesses.
fn check_alignment(ea: usize, width: usize) -> Result<(), Unserved> {
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    if ea / page != ea.wrapping_add(width - 1) / page {
        return Err(refuse("access straddles a page boundary"));
    }
    if !ea.is_multiple_of(width) {
        return Err(refuse(
            "misaligned access (the device would see narrower accesses)",
        ));
    }
    Ok(())
}

/// The device behind a shadow region at one offset, reporting each access
/// to the region's hook and trace.
struct DeviceBus<'a> {
    shared: &'a Shared,
    offset: u64,
}

impl DeviceBus<'_> {
    fn record(&self, width: usize, value: u64, kind: AccessKind, refused: Option<Refusal>) {
        self.shared.record(&Access {
            refused,
            ..Access::new(self.offset, width, value, kind)
        });
    }

    /// Records `refusal` for the region (see [`crate::Region::take_error`]).
    fn note(&self, refusal: Refusal) -> Option<Refusal> {
        self.shared.note_refused(refusal.errno());
        Some(refusal)
    }
}

/// Whether the device refused an access (`EIO`: vfio-pci's answer while
/// memory decoding is off), which PCIe completes without failing.
fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

impl Bus for DeviceBus<'_> {
    /// A read the region's flags forbid, or the device refuses, returns
    /// all-ones of its width and is recorded.
    fn read(&mut self, width: usize) -> io::Result<u64> {
        let all_ones = u64::MAX >> (64 - 8 * width);
        let mut buf = [0u8; 8];
        let (value, refusal) = if !self.shared.flags.readable() {
            (all_ones, self.note(Refusal::WriteOnly))
        } else {
            match self.shared.io.read_at(self.offset, &mut buf[..width]) {
                Ok(()) => (u64::from_le_bytes(buf), None),
                Err(e) if refused(&e) => (all_ones, self.note(Refusal::Revoked)),
                Err(e) => return Err(e),
            }
        };
        self.record(width, value, AccessKind::Read, refusal);
        Ok(value)
    }

    /// A write the region's flags forbid, or the device refuses, is dropped
    /// and recorded.
    fn write(&mut self, width: usize, value: u64) -> io::Result<()> {
        let refusal = if !self.shared.flags.writable() {
            self.note(Refusal::ReadOnly)
        } else {
            match self
                .shared
                .io
                .write_at(self.offset, &value.to_le_bytes()[..width])
            {
                Ok(()) => None,
                Err(e) if refused(&e) => self.note(Refusal::Revoked),
                Err(e) => return Err(e),
            }
        };
        self.record(width, value, AccessKind::Write, refusal);
        Ok(())
    }
}
