//! The program's own SIGSEGV and SIGBUS handlers, installed before a region
//! is opened, to see whether barmap replaced them.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// How many SIGBUSes [`sigbus`] took, and the `si_code` of the last.
pub static SIGBUS_CALLS: AtomicUsize = AtomicUsize::new(0);
pub static SIGBUS_CODE: AtomicI32 = AtomicI32::new(0);
/// A descriptor [`sigbus`] extends to one page (4 KiB), so that the access
/// that faulted on its truncated mapping succeeds when it runs again.
pub static RESTORE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn sigsegv(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

extern "C" fn sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGBUS_CALLS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: SA_SIGINFO handler: `info` is valid.
    SIGBUS_CODE.store(unsafe { (*info).si_code }, Ordering::SeqCst);
    let fd = RESTORE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: ftruncate is async-signal-safe; `fd` is the test's memfd.
        unsafe { libc::ftruncate(fd, 0x1000) };
    }
}

fn sentinels() -> [(libc::c_int, libc::sighandler_t); 2] {
    [
        (libc::SIGSEGV, sigsegv as *const () as libc::sighandler_t),
        (libc::SIGBUS, sigbus as *const () as libc::sighandler_t),
    ]
}

/// The handler `signal` has now (`sa_sigaction`).
pub fn handler_of(signal: libc::c_int) -> libc::sighandler_t {
    // SAFETY: queries the action only; `old` is written by the kernel.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

/// Installs the sentinel handlers for SIGSEGV and SIGBUS.
pub fn install() {
    for (signal, handler) in sentinels() {
        // SAFETY: installs a valid SA_SIGINFO handler.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler;
            act.sa_flags = libc::SA_SIGINFO;
            assert_eq!(libc::sigaction(signal, &act, std::ptr::null_mut()), 0);
        }
        assert_eq!(handler_of(signal), handler);
    }
}

/// Whether SIGSEGV and SIGBUS still go to the sentinels (each signal's
/// answer, in that order).
pub fn in_place() -> [bool; 2] {
    sentinels().map(|(signal, handler)| handler_of(signal) == handler)
}
