//! Leaving the small alternate signal stack for the interrupted thread's own
//! stack before the heavy part of serving a fault.

use std::ptr;

use libc::{c_void, ucontext_t};

/// Bytes below the interrupted stack pointer that the x86-64 ABI lets a
/// function use without moving it (the red zone), plus a margin.
const RED_ZONE: usize = 128 + 128;

/// Calls `f(arg)` on the interrupted thread's own stack, below its red zone,
/// when the handler runs on the alternate signal stack; `uc` is the
/// interrupted thread's context.
///
/// The handler runs on the alternate signal stack (it must, for Rust's
/// stack-overflow report to work), which is small: 8 KiB or so, much of it
/// taken by the kernel's signal frame, and decoding and formatting take
/// several KiB in unoptimised builds. The interrupted code stopped at a
/// plain load or store, not in a stack overflow (that fault is not in a
/// shadow region), so its stack has room: see "Stack use" in the module
/// documentation of [`crate::shadow`] for how much.
///
/// Whether the handler is on the alternate stack is read from the signal
/// frame's record of it (`uc_stack`): where the alternate stack lies
/// relative to the thread's stack says nothing (std maps a small thread's
/// alternate stack right below its stack, for instance). If the signal was
/// delivered on the interrupted stack itself (no alternate stack), or the
/// interrupted code was itself running on the alternate stack (a fault in
/// another handler), the job simply runs where it is.
///
/// All signals are blocked meanwhile (the handler's `sa_mask`), so no other
/// handler can be started on the alternate stack under our frames. A fault
/// taken with the interrupted stack nearly full can overflow it here, which
/// kills the process (SIGSEGV is blocked in the handler).
pub(super) fn run_off_the_alternate_stack(
    uc: *const ucontext_t,
    f: extern "C" fn(*mut c_void),
    arg: *mut c_void,
) {
    // SAFETY: `uc` is the handler's third argument (SA_SIGINFO), valid while
    // it runs; only the saved stack pointer and alternate-stack record are read.
    let (rsp, saved) = unsafe {
        (
            (*uc).uc_mcontext.gregs[libc::REG_RSP as usize] as usize,
            (*uc).uc_stack,
        )
    };
    if !must_leave_alternate_stack(&saved, rsp) {
        return f(arg);
    }
    let sp = (rsp - RED_ZONE) & !0xf;
    // SAFETY: `sp` is 16-byte aligned and lies below the interrupted code's
    // red zone on its own stack: no live frame uses that memory, and the
    // documented precondition of touching a trapped page (8 KiB of that stack
    // free, see "Stack use" in the shadow module) gives the job room; `f` is an
    // `extern "C"` function that cannot unwind. The stack pointer is saved in
    // the callee-saved r12 and restored after the call, and every
    // caller-saved register is declared clobbered.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {sp}",
            "call {f}",
            "mov rsp, r12",
            sp = in(reg) sp,
            f = in(reg) f,
            in("rdi") arg,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

/// Whether this handler runs on the thread's alternate signal stack while
/// the interrupted code, whose stack pointer was `rsp`, did not.
///
/// `saved` is the `uc_stack` of the signal frame: the kernel records there
/// the thread's alternate stack as it was when the signal came (even one set
/// up with `SS_AUTODISARM`, which is disarmed while the handler runs), so no
/// system call is needed. The handler is on it if one of its own locals is.
fn must_leave_alternate_stack(saved: &libc::stack_t, rsp: usize) -> bool {
    if saved.ss_flags & libc::SS_DISABLE != 0 || saved.ss_size == 0 {
        return false;
    }
    let start = saved.ss_sp as usize;
    let alternate = start..start.saturating_add(saved.ss_size);
    let marker = 0u8;
    let here = std::hint::black_box(ptr::addr_of!(marker)) as usize;
    alternate.contains(&here) && !alternate.contains(&rsp)
}
