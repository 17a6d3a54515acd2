//! What several benches share: interleaved timing with medians, and the
//! bare `pread`/`pwrite` floors.
#![allow(dead_code)] // each bench uses a subset

use std::time::{Duration, Instant};

/// One 4-byte `pread` of the descriptor `fd` (a VFIO device's) at
/// `file_offset`: the floor of the syscall path's reads.
pub fn bare_pread(fd: i32, file_offset: u64) -> u32 {
    let mut value = 0u32;
    // SAFETY: `value` is a writable 4-byte buffer for the duration of the call.
    let n = unsafe { libc::pread(fd, (&mut value as *mut u32).cast(), 4, file_offset as libc::off_t) };
    assert_eq!(n, 4);
    value
}

/// One 4-byte `pwrite` of `value` to the descriptor `fd` at `file_offset`:
/// the floor of the syscall path's writes.
pub fn bare_pwrite(fd: i32, file_offset: u64, value: u32) {
    // SAFETY: `value` is a readable 4-byte buffer for the duration of the call.
    let n = unsafe { libc::pwrite(fd, (&value as *const u32).cast(), 4, file_offset as libc::off_t) };
    assert_eq!(n, 4);
}

/// Times `a` and `b` in batches of `batch` calls, `rounds` times each,
/// alternating which goes first (A B, B A, ...) so neither always runs on
/// the state the other left; returns the median batch time per call of
/// each, in ns (medians resist a shared machine's noise).
pub fn interleaved(mut a: impl FnMut(), mut b: impl FnMut(), batch: u32, rounds: u32) -> (f64, f64) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            ta.push(time(&mut a, batch));
            tb.push(time(&mut b, batch));
        } else {
            tb.push(time(&mut b, batch));
            ta.push(time(&mut a, batch));
        }
    }
    (median(ta) / f64::from(batch), median(tb) / f64::from(batch))
}

/// How long `batch` calls of `f` take.
fn time(f: &mut impl FnMut(), batch: u32) -> Duration {
    let t = Instant::now();
    for _ in 0..batch {
        f();
    }
    t.elapsed()
}

/// The median of `v`, in ns.
pub fn median(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2].as_nanos() as f64
}
