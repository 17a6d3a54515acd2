//! The process-wide SIGSEGV and SIGBUS handlers that serve shadow holes and
//! revoked mappings (x86-64).
//!
//! Installed once, on the first region. For a SIGSEGV inside a registered
//! region (a trapped page), and for a SIGBUS there (a mapped page that
//! vfio-pci revoked: memory decoding off, a reset running), it decodes the
//! instruction at RIP, does the load or store on the device through the
//! region's [`RegionIo`](crate::region::RegionIo), updates the saved
//! registers and returns past the instruction. `pread`/`pwrite` wait out a
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
//! Installing and chaining live in [`chain`]: one atomic `sigaction`
//! exchange, and the previous handler called as the kernel would have called
//! it (its `sa_mask`, `SA_NODEFER`, `SA_RESETHAND`).
//!
//! Everything here is async-signal-safe: atomics, `pread`/`pwrite`, `write`,
//! `sigaction`, `rt_sigprocmask`, `raise`, formatting into a stack buffer. No
//! allocation, locks or `log`.
//!
//! What threads, seccomp filters and debuggers must allow is documented on
//! the public [`crate::shadow`] module.

use std::fmt::{self, Write as _};
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_int, c_void, siginfo_t, ucontext_t};

use self::chain::{Chain, Origin, SIGBUS, SIGSEGV};
use super::cache::CACHE;
use super::emulate::{self, Bus, Decoded, ExecError, Regs, MAX_INSN_LEN};
use super::registry::REGISTRY;
use super::trace::{Access, AccessKind};
use super::Shared;

pub(super) mod chain;

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

extern "C" fn on_sigsegv(_: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    on_fault(&SIGSEGV, info, ctx, |_| Class::Serve);
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
        run_off_the_alternate_stack(&mut job);
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

/// Bytes below the interrupted stack pointer that the x86-64 ABI lets a
/// function use without moving it (the red zone), plus a margin.
const RED_ZONE: usize = 128 + 128;

/// Serves `job` on the interrupted thread's own stack, below its red zone.
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
fn run_off_the_alternate_stack(job: &mut Job<'_>) {
    // SAFETY: see `run_job`; only the saved stack pointer and alternate-stack
    // record are read here.
    let (rsp, saved) = unsafe {
        (
            (*job.uc).uc_mcontext.gregs[libc::REG_RSP as usize] as usize,
            (*job.uc).uc_stack,
        )
    };
    let arg = (job as *mut Job<'_>).cast::<c_void>();
    if !must_leave_alternate_stack(&saved, rsp) {
        return run_job(arg);
    }
    let sp = (rsp - RED_ZONE) & !0xf;
    // SAFETY: `sp` is 16-byte aligned and lies below the interrupted code's
    // red zone on its own stack: no live frame uses that memory, and the
    // documented precondition of touching a trapped page (8 KiB of that stack
    // free, see "Stack use" in the shadow module) gives the job room; `run_job` is an
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
            f = in(reg) run_job as extern "C" fn(*mut c_void),
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

/// Why a fault in a shadow region could not be served.
struct Refusal {
    reason: &'static str,
    errno: Option<i32>,
}

fn refuse(reason: &'static str) -> Refusal {
    Refusal { reason, errno: None }
}

/// The instruction bytes at RIP, as far as they were read.
struct Fetched {
    bytes: [u8; MAX_INSN_LEN],
    len: usize,
}

/// Emulates the access at `addr` in `shared`. On failure, reports it on stderr
/// and returns false.
fn serve(shared: &Shared, addr: usize, mut regs: Regs<'_>) -> bool {
    let rip = regs.rip();
    let mut fetched = Fetched {
        bytes: [0; MAX_INSN_LEN],
        len: 0,
    };
    let mut offset = None;
    match emulate_at(shared, addr, &mut regs, &mut fetched, &mut offset) {
        Ok(()) => true,
        Err(refusal) => {
            report(shared, addr, rip, offset, &fetched, &refusal);
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
) -> Result<(), Refusal> {
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
        ExecError::Io(e) => Refusal {
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
fn check_alignment(ea: usize, width: usize) -> Result<(), Refusal> {
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
    fn record(&self, width: usize, value: u64, kind: AccessKind) {
        self.shared.record(&Access {
            offset: self.offset,
            width,
            value,
            kind,
        });
    }
}

/// Whether the device refused an access (`EIO`: vfio-pci's answer while
/// memory decoding is off), which PCIe completes without failing.
fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EIO)
}

impl Bus for DeviceBus<'_> {
    /// A refused read returns all-ones of its width and is recorded.
    fn read(&mut self, width: usize) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        let value = match self.shared.io.read_at(self.offset, &mut buf[..width]) {
            Ok(()) => u64::from_le_bytes(buf),
            Err(e) if refused(&e) => {
                self.shared.note_refused(libc::EIO);
                u64::MAX >> (64 - 8 * width)
            }
            Err(e) => return Err(e),
        };
        self.record(width, value, AccessKind::Read);
        Ok(value)
    }

    /// A refused write is dropped and recorded.
    fn write(&mut self, width: usize, value: u64) -> io::Result<()> {
        match self
            .shared
            .io
            .write_at(self.offset, &value.to_le_bytes()[..width])
        {
            Ok(()) => {}
            Err(e) if refused(&e) => self.shared.note_refused(libc::EIO),
            Err(e) => return Err(e),
        }
        self.record(width, value, AccessKind::Write);
        Ok(())
    }
}

/// Reads the instruction at `rip` and decodes it (or finds it in the decode
/// cache), if it is one barmap emulates.
///
/// The CPU has just fetched that instruction, so its bytes are mapped and
/// readable; barmap reads no further than the end of its page, and only reads
/// on into the next page when the decoder says the instruction continues there.
/// It never reads a byte of a shadow region (a hole would fault, a mapped page
/// is device memory): code just below one is decoded from the bytes before
/// it, and an instruction that needs more is refused.
fn fetch_and_decode(rip: u64, fetched: &mut Fetched) -> Result<Decoded, Refusal> {
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

/// A fixed buffer that formats without allocating.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes the one-line diagnostic for a fault barmap could not serve.
fn report(shared: &Shared, addr: usize, rip: u64, offset: Option<u64>, fetched: &Fetched, refusal: &Refusal) {
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    let _ = write!(
        line,
        "barmap: cannot emulate access to {addr:#x} in shadow region {}",
        shared.name
    );
    if let Some(offset) = offset {
        let _ = write!(line, " at offset {offset:#x}");
    }
    let _ = write!(line, ": {}", refusal.reason);
    if let Some(errno) = refusal.errno {
        let _ = write!(line, " (errno {errno})");
    }
    let _ = write!(line, "; instruction at {rip:#x}:");
    for b in &fetched.bytes[..fetched.len] {
        let _ = write!(line, " {b:02x}");
    }
    let _ = line.write_str("\n");
    let mut done = 0;
    while done < line.len {
        // SAFETY: writing initialised bytes of a stack buffer to stderr.
        let n = unsafe {
            libc::write(
                libc::STDERR_FILENO,
                line.buf[done..].as_ptr().cast(),
                line.len - done,
            )
        };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
}
