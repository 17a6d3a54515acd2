//! The process-wide SIGSEGV and SIGBUS handlers that serve shadow holes and
//! revoked mappings (x86-64).
//!
//! Installed once, on the first region. For a SIGSEGV inside a registered
//! region (`SEGV_ACCERR`: a trapped page, or a store to a page mapped
//! read-only), and for a SIGBUS there (a mapped page that
//! vfio-pci revoked: memory decoding off, a reset running), it decodes the
//! instruction at RIP, does the load or store on the device through the
//! region's [`RegionIo`](crate::region::RegionIo) (unless the region's flags
//! forbid it: then the load gets all-ones and the store is dropped, and both
//! are recorded), updates the saved registers and returns past the
//! instruction. `pread`/`pwrite` wait out a
//! reset; when the device refuses the access (`EIO` while decoding is off) it
//! is completed as PCIe completes an unsupported request, reads all-ones and
//! writes dropped, and recorded for [`crate::Region::take_error`]. A SIGBUS
//! from a machine check (`BUS_MCEERR_AR`/`AO`), or outside every region, goes
//! to the previous handler. Any other
//! fault goes to the handler that was installed before (so Rust's stack
//! overflow report and other crates' handlers keep working). A fault in a
//! region that cannot be emulated writes one line to stderr and then takes
//! the default action (the process dies of SIGSEGV): never a silent wrong value.
//!
//! A SIGSEGV sent by another thread or process (`kill`, `tgkill`,
//! `sigqueue`) carries no fault address and always goes to the previous handler.
//!
//! The stages of a fault, one module each: installing and chaining live in
//! [`chain`] (one atomic `sigaction` exchange, and the previous handler
//! called as the kernel would have called it: its `sa_mask`, `SA_NODEFER`,
//! `SA_RESETHAND`); `stack` moves off the small alternate signal stack;
//! `serve` checks the access against the region and performs it on the
//! device; `fetch` reads and decodes the instruction; `report` writes the
//! diagnostic of a fault that cannot be served.
//!
//! Everything here is async-signal-safe: atomics, `pread`/`pwrite`, `write`,
//! `sigaction`, `rt_sigprocmask`, `raise`, formatting into a stack buffer. No
//! allocation, locks or `log`.
//!
//! What threads, seccomp filters and debuggers must allow is documented on
//! the public [`crate::shadow`] module.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_int, c_void, siginfo_t, ucontext_t};

use self::chain::{Chain, Origin, SIGBUS, SIGSEGV};
use self::serve::serve;
use self::stack::run_off_the_alternate_stack;
use super::emulate::{self, Regs};
use super::registry::REGISTRY;
use super::Shared;

pub(super) mod chain;
mod fetch;
mod report;
mod serve;
mod stack;

/// The page size, read once outside signal context.
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Installs the handlers unless they are installed. Not async-signal-safe.
pub(crate) fn install() -> io::Result<()> {
    SIGSEGV.install(on_sigsegv, || {
        PAGE_SIZE.store(crate::map::page_size(), Ordering::Relaxed);
        // The decoder builds its tables (allocating) on first use: do that here,
        // not in the handler.
        let _ = emulate::decode(&[0x8b, 0x07], 0);
    })?;
    SIGBUS.install(on_sigbus, || {})
}

/// `si_code` of a SIGSEGV for an access the page's protection forbids, where
/// a mapping exists (the kernel's `SEGV_ACCERR`; the libc crate lacks it).
const SEGV_ACCERR: c_int = 2;

extern "C" fn on_sigsegv(_: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    on_fault(&SIGSEGV, info, ctx, |code| match code {
        // A trapped (`PROT_NONE`) page, or a store to a page mapped read-only.
        SEGV_ACCERR => Class::Serve,
        // No mapping there at all (`SEGV_MAPERR`: a page of the range was
        // unmapped behind barmap's back), a protection-key or bounds fault, a
        // general protection fault (`SI_KERNEL`): not an access barmap serves.
        _ => Class::Fault,
    });
}

extern "C" fn on_sigbus(_: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    on_fault(&SIGBUS, info, ctx, |code| match code {
        // An access to a page whose mapping is gone: vfio-pci's VM_FAULT_SIGBUS.
        libc::BUS_ADRERR => Class::Serve,
        // A machine check reported for memory in use, not raised by the
        // interrupted instruction.
        libc::BUS_MCEERR_AO => Class::Async,
        // A machine check consumed by the instruction, an alignment fault:
        // whoever handled them before barmap does.
        _ => Class::Fault,
    });
}

/// What a fault signal is to barmap.
enum Class {
    /// A fault that barmap serves if its address lies in a registered region.
    Serve,
    /// A fault of the interrupted instruction that is not barmap's.
    Fault,
    /// Not raised by the interrupted instruction (sent, or reported
    /// asynchronously): passed on as a sent signal is.
    Async,
}

/// Serves a fault of `chain`'s signal in a registered region, or passes it
/// on. `classify` says what each fault code is.
fn on_fault(
    chain: &'static Chain,
    info: *mut siginfo_t,
    ctx: *mut c_void,
    classify: impl Fn(c_int) -> Class,
) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
    let code = unsafe { (*info).si_code };
    if code <= 0 {
        // Sent by kill, tgkill or sigqueue (SI_USER, SI_TKILL, SI_QUEUE): not a
        // fault, and `si_addr` is not an address (it overlays the sender's pid
        // and uid), so it is never ours.
        return chain.forward(info, ctx, Origin::Sent);
    }
    match classify(code) {
        Class::Serve => {}
        Class::Fault => return chain.forward(info, ctx, Origin::Fault),
        Class::Async => return chain.forward(info, ctx, Origin::Sent),
    }
    // SAFETY: the kernel passes a valid errno location for this thread.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: a fault (si_code > 0): `si_addr` is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    let served = REGISTRY.with_region(addr, |shared| {
        let mut job = Job {
            shared,
            addr,
            uc: ctx.cast(),
            served: false,
        };
        run_off_the_alternate_stack(job.uc, run_job, (&mut job as *mut Job<'_>).cast());
        job.served
    });
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    match served {
        Some(true) => {}
        Some(false) => chain.die(),
        None => chain.forward(info, ctx, Origin::Fault),
    }
}

/// One fault in a shadow region to serve.
struct Job<'a> {
    shared: &'a Shared,
    addr: usize,
    uc: *mut ucontext_t,
    served: bool,
}

extern "C" fn run_job(job: *mut c_void) {
    // SAFETY: `job` is the `&mut Job` that `run_off_the_alternate_stack` was
    // given; nothing else uses it until this returns.
    let job = unsafe { &mut *job.cast::<Job<'_>>() };
    // SAFETY: with SA_SIGINFO the third argument of the handler is the
    // interrupted thread's ucontext_t, ours to read and change until it returns.
    let uc = unsafe { &mut *job.uc };
    // SAFETY: the kernel set `fpregs` to null or to the FP state it saved in
    // the same signal frame (FXSAVE image, then XSAVE components as its
    // software-reserved bytes describe), which is as much ours as the ucontext.
    let regs = unsafe { Regs::new(&mut uc.uc_mcontext.gregs, uc.uc_mcontext.fpregs) };
    job.served = serve(job.shared, job.addr, regs);
}
