//! Reading and decoding the faulting instruction without touching a shadow
//! region.

use std::ptr;
use std::sync::atomic::Ordering;

use super::super::cache::CACHE;
use super::super::emulate::{self, Decoded, MAX_INSN_LEN};
use super::super::registry::REGISTRY;
use super::serve::{refuse, Fetched, Unserved};
use super::PAGE_SIZE;

/// Reads the instruction at `rip` and decodes it (or finds it in the decode
/// cache), if it is one barmap emulates.
///
/// The CPU has just fetched that instruction, so its bytes are mapped and
/// readable; barmap reads no further than the end of its page, and only reads
/// on into the next page when the decoder says the instruction continues there.
/// It never reads a byte of a shadow region (a hole would fault, a mapped page
/// is device memory): code just below one is decoded from the bytes before
/// it, and an instruction that needs more is refused.
pub(super) fn fetch_and_decode(rip: u64, fetched: &mut Fetched) -> Result<Decoded, Unserved> {
    let at = rip as usize;
    let readable = readable_len(at);
    let in_region = || refuse("instruction bytes lie in a shadow region");
    if readable == 0 {
        return Err(in_region());
    }
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    let first = readable.min(page - at % page);
    copy_code(at, &mut fetched.bytes[..first]);
    fetched.len = first;
    if let Some(decoded) = CACHE.get(rip, &fetched.bytes[..first]) {
        fetched.len = usize::from(decoded.len);
        return Ok(decoded);
    }
    let insn = match emulate::decode(&fetched.bytes[..first], rip) {
        Some(insn) => insn,
        None if first < readable => {
            copy_code(at + first, &mut fetched.bytes[first..readable]);
            fetched.len = readable;
            match emulate::decode(&fetched.bytes[..readable], rip) {
                Some(insn) => insn,
                None if readable < MAX_INSN_LEN => return Err(in_region()),
                None => return Err(refuse("truncated instruction")),
            }
        }
        None if readable < MAX_INSN_LEN => return Err(in_region()),
        None => return Err(refuse("truncated instruction")),
    };
    if insn.is_invalid() {
        return Err(refuse("invalid instruction"));
    }
    fetched.len = insn.len();
    let decoded = emulate::emulable(&insn).ok_or_else(|| {
        refuse("instruction not emulated (only unlocked forms with one memory operand of 1-8 bytes; see barmap::shadow)")
    })?;
    CACHE.put(rip, &fetched.bytes[..fetched.len], &decoded);
    Ok(decoded)
}

/// How many of the [`MAX_INSN_LEN`] bytes from `at` come before the first
/// shadow region (binary search over the registry's overlap test; only code
/// within 15 bytes of a region pays for it).
fn readable_len(at: usize) -> usize {
    let mut hi = at.saturating_add(MAX_INSN_LEN) - at;
    if !REGISTRY.overlaps(at, at + hi) {
        return hi;
    }
    let mut lo = 0;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if REGISTRY.overlaps(at, at + mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    lo
}

fn copy_code(from: usize, to: &mut [u8]) {
    // SAFETY: `from..from + to.len()` lies within a page that holds bytes of
    // the instruction the CPU just fetched (see `fetch_and_decode`), so it is
    // mapped and readable; `to` is a distinct stack buffer.
    unsafe { ptr::copy_nonoverlapping(from as *const u8, to.as_mut_ptr(), to.len()) };
}
