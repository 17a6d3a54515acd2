//! What several benches share: interleaved timing with medians, and the
//! bare `pread` floor.
#![allow(dead_code)] // each bench uses a subset

use std::time::{Duration, Instant};

/// One 4-byte `pread` of the VFIO descriptor `fd` at `file_offset`: the floor
/// of the syscall path.
pub fn bare_pread(fd: i32, file_offset: u64) -> u32 {
    let mut value = 0u32;
    // SAFETY: `value` is a writable 4-byte buffer for the duration of the call.
    let n = unsafe { libc::pread(fd, (&mut value as *mut u32).cast(), 4, file_offset as libc::off_t) };
    assert_eq!(n, 4);
    value
}

/// Times `a` and `b` in alternating batches of `batch` calls; returns the
/// median batch time per call of each, in ns (medians resist a shared
/// machine's noise).
pub fn interleaved(mut a: impl FnMut(), mut b: impl FnMut(), batch: u32, rounds: u32) -> (f64, f64) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..batch {
            a();
        }
        ta.push(t.elapsed());
        let t = Instant::now();
        for _ in 0..batch {
            b();
        }
        tb.push(t.elapsed());
    }
    (median(ta) / f64::from(batch), median(tb) / f64::from(batch))
}

/// The median of `v`, in ns.
pub fn median(mut v: Vec<Duration>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2].as_nanos() as f64
}
