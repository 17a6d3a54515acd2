//! Shadow regions: one contiguous pointer over a whole region, even where
//! parts of it cannot be mapped.
//!
//! Every [`crate::Region`] lives in a reserved address range of the region's
//! size. Pages the kernel lets us map (and that the [`crate::MapPolicy`] does
//! not trap) are placed in it with `MAP_FIXED | MAP_SHARED` and reach the
//! device directly.
//! Every other page stays `PROT_NONE`: a load or store there raises SIGSEGV,
//! and barmap's handler decodes the instruction, does the same access on the
//! device through the region's [`RegionIo`] (one `pread`/`pwrite` of the same
//! width; nothing is cached, as MMIO reads have side effects), puts the result
//! in the saved registers and resumes after the instruction. This is what a
//! kernel driver's fault handler does for a trapped page, done in userspace
//! for every access.
//!
//! The handler is x86-64 only; elsewhere building a shadow region returns
//! [`crate::Error::Unsupported`]. It emulates every form compilers emit for
//! volatile accesses of 1 to 8 bytes at any optimisation level: `MOV`,
//! `MOVZX`/`MOVSX`, `MOVBE`, ALU instructions with a memory operand (`add`,
//! `cmp`, `test`, `or`, `inc`, `imul`, `bt`, shifts...), bit scans and counts
//! (`bsf`, `tzcnt`, `popcnt`...), the BMI1/BMI2 forms of `x86-64-v3` builds
//! (`andn`, `shrx`, `bextr`, `mulx`...), `mul`/`div` on RDX:RAX,
//! `shld`/`shrd`, unlocked `xadd` and `cmpxchg`, `setcc` and `cmovcc`, scalar SSE/AVX moves (`movd`,
//! `movq`, `movss`, `movsd` and their VEX forms), and scalar SSE/AVX
//! arithmetic, conversions and comparisons (`addsd`, `cvtsi2sd`,
//! `ucomisd`...) under the thread's MXCSR, and XMM lane inserts, extracts
//! and broadcasts (`pinsrd`, `pextrq`, `movhps`, `vpbroadcastd`...); see the
//! `x86-mmio-emu` crate of this workspace for the list. A read-modify-write is one read and one
//! write of the same width, and flags are computed by the CPU itself. Any
//! other instruction on a trapped page (an SSE copy of 16 bytes, `memcpy`'s
//! `rep movs`, a `lock`ed or `xchg` atomic), and a misaligned access or one
//! that straddles a page, ends the process with a one-line diagnostic on
//! stderr naming the address, the region offset and the instruction bytes;
//! it is never served with a wrong width. [`crate::mmio`]'s pinned accessors
//! emit plain `MOV`s only.
//!
//! Faults outside every shadow region go to the SIGSEGV handler that was
//! installed before barmap's (Rust's stack-overflow report, other crates), and
//! so does every SIGSEGV sent with `kill`, `tgkill` or `sigqueue`.
//!
//! # Threads that block SIGSEGV or SIGBUS
//!
//! A thread that has SIGSEGV blocked cannot touch a trapped page: the kernel
//! does not queue a synchronous fault for a blocked (or ignored) signal, it
//! unblocks it, resets it to `SIG_DFL` and so kills the process, without
//! barmap's handler ever running and without a diagnostic. The same holds for
//! SIGBUS on a mapped page while vfio-pci has revoked it. This catches
//! the common pattern of blocking every signal in worker threads (`sigfillset`
//! then `pthread_sigmask`) so that one thread takes them with `sigwait` or a
//! `signalfd`: such a program must `sigdelset` SIGSEGV and SIGBUS from that
//! set. It also covers code running inside another signal handler whose
//! `sa_mask` holds SIGSEGV, and a trapped access from an
//! [`AccessHook`] or a `RegionIo` (barmap's handler runs
//! with every signal blocked).
//!
//! # seccomp
//!
//! A seccomp filter in a process that uses shadow regions must allow what
//! the fault path calls (measured with `strace` on glibc 2.36):
//!
//! - every fault: `rt_sigreturn`;
//! - a served access: whatever the region's `RegionIo` calls, which for
//!   barmap's own [`FdRegion`](crate::FdRegion) (and so for VFIO regions) is
//!   `pread64` or `pwrite64`; and whatever an access hook calls;
//! - an access barmap refuses: `write` (the diagnostic on stderr) and
//!   `rt_sigaction` (back to `SIG_DFL` before the fatal re-fault);
//! - a fault chained to the previous handler: `rt_sigprocmask` (its mask is
//!   set and restored), and whatever that handler calls; a fault chained to
//!   `SIG_DFL` or `SIG_IGN`: `rt_sigaction`;
//! - a SIGSEGV sent with `kill`/`tgkill` while the previous action was
//!   `SIG_DFL`: `rt_sigaction`, then `raise`'s `gettid`, `getpid` and
//!   `tgkill` (older glibc also calls `rt_sigprocmask` there).
//!
//! The handler makes no `sigaltstack` call (it reads the alternate stack from
//! the signal frame), and maps nothing. Installing it, on the first shadow
//! region, calls `rt_sigaction` and `rt_sigprocmask`; a filter installed
//! after that need not allow them for installation. A filter that kills on a
//! denied call ends the process inside the handler. A `pread64`/`pwrite64`
//! denied with an error fails the access like any failing device access
//! (diagnostic, then SIGSEGV); a denied `rt_sigaction` leaves a refused
//! access faulting and reporting forever.
//!
//! # Debuggers
//!
//! gdb stops at every SIGSEGV by default, so at every trapped access. Let
//! them through to barmap's handler with
//!
//! ```text
//! (gdb) handle SIGSEGV nostop noprint pass
//! ```
//!
//! and `handle SIGBUS nostop noprint pass`. A fault barmap refuses is
//! then not stopped at either: its one-line diagnostic names the instruction
//! address, and `handle SIGSEGV stop print` brings the stop back. Under
//! `strace`, each trapped access shows as a `--- SIGSEGV` line with
//! `si_code=SEGV_ACCERR` followed by its `pread64`/`pwrite64`.
//!
//! # Stack use
//!
//! The handler serves a fault on the stack of the thread that took it, just
//! below the interrupted stack pointer (alternate signal stacks are too small
//! for it). It needs about 6 KiB there in unoptimised builds and 2.5 KiB in
//! optimised ones (measured on the first fault of an instruction, which also
//! decodes it); on a thread without an alternate signal stack the kernel's
//! signal frame (up to 3.5 KiB with AVX-512 state) comes on top. So a thread
//! that touches a trapped page must have **8 KiB of stack free** below the
//! access. Threads from `std::thread` and the main thread do in practice;
//! code running on small stacks of its own without a guard page (green
//! threads, coroutines) must leave that room, as an overflow there is not
//! caught: it overwrites whatever lies below.
//!
//! # The address range belongs to the region
//!
//! While a [`crate::Region`] lives, its whole range (its pointer to its end,
//! rounded up to whole pages) is barmap's: the handler serves every
//! `SEGV_ACCERR` fault and every `BUS_ADRERR` fault there as an access to
//! the device. Only `unsafe` code can change those pages behind barmap's
//! back (`munmap`, `mprotect`, or `mmap` with `MAP_FIXED` over the range), and
//! it must not: a load or store on a page some other mapping took over
//! could be served as a device access. A page unmapped behind barmap's back
//! faults with `SEGV_MAPERR`, which the handler never serves: that fault goes
//! to the previous handler (by default, the process dies of SIGSEGV).
//!
//! Dropping a region takes its range out of the handler's table, and waits
//! for faults being served on it, before it unmaps the range; so when the
//! kernel hands the addresses to a new mapping (another thread's `mmap`),
//! no fault there is served as the old region's. A placement that fails
//! while the region is built (`MAP_FIXED` is not atomic: the kernel removes
//! our pages before the driver can fail) leaves alone the pages another
//! mapping took meanwhile, and the region is never registered.
//!
//! # Design
//!
//! - **Handler**: installed once, with `SA_SIGINFO | SA_ONSTACK` (so it runs
//!   on the alternate stack where one is set up, as Rust does for its
//!   threads), with every signal blocked while it runs, and without
//!   `SA_NODEFER` (a fault inside the handler itself kills the process
//!   instead of recursing). When the signal frame's record of the
//!   alternate stack (`uc_stack`) shows that it runs there, it does the decoding
//!   and the device access on the interrupted thread's stack, below its red
//!   zone (see [Stack use](#stack-use)): alternate stacks are small (8 KiB is
//!   common) and mostly taken by the kernel's signal frame. It allocates
//!   nothing, takes no lock and logs nothing; it saves and restores `errno`.
//!   Faults that are not barmap's go to the previous action as the kernel
//!   would have delivered them: under the interrupted mask plus its
//!   `sa_mask` (plus the signal unless `SA_NODEFER`), honouring
//!   `SA_RESETHAND`; before a previous `SIG_DFL`/`SIG_IGN` a fault takes the
//!   default action, while a sent signal is ignored or re-raised to the
//!   default action. The handler is installed with one `sigaction` exchange.
//! - **Registry**: a fixed table of atomics, with room for [`CAPACITY`] live shadow
//!   regions (every open [`crate::Region`] on x86-64) in a process; one more
//!   is refused with [`crate::Error::ShadowTableFull`]. A handler pins the slot it
//!   reads; dropping a region clears its slot and waits until no handler pins
//!   it, then unmaps. So a region may be dropped at any time from any thread
//!   while other threads fault on it or on other regions. (Dropping it from
//!   inside its own access hook would wait forever.)
//! - **Decoding** uses iced-x86; decoded instructions are kept in a small
//!   lock-free cache keyed by address and checked against the bytes at that
//!   address on every hit, so a load or store that faults repeatedly is
//!   decoded once.
//! - **Instruction bytes** are read straight from RIP: the CPU has just
//!   fetched them, so they are mapped; code inside a shadow region is refused.
//!   (Execute-only code pages, possible with protection keys, are not
//!   supported.)
//! - **Reporting**: the [`AccessHook`] is called in the handler (it must be
//!   async-signal-safe); for `log`, accesses also go into a lock-free ring that
//!   [`crate::Region::flush_trace`] drains into `log::trace!` lines outside the
//!   handler.
//! - **Errors**: an access the handler cannot serve (unsupported instruction,
//!   access past the region's end, a `pread`/`pwrite` failing with anything
//!   but `EIO`) prints one line to stderr and kills the process with SIGSEGV:
//!   a load never gets a made-up value.
//! - **Revocation**: vfio-pci zaps a device's BAR mappings while its memory
//!   decoding is off and while a reset runs; a touch of a mapped page then
//!   raises SIGBUS, which the same handler serves through `pread`/`pwrite`
//!   (they wait out a reset). A device that refuses (`EIO`, decoding off) is
//!   answered as PCIe answers an unsupported request: reads return all-ones,
//!   writes are dropped, and the region records it
//!   ([`crate::Region::take_error`]). Machine-check SIGBUSes
//!   (`BUS_MCEERR_*`) and SIGBUSes outside every region go to the previous
//!   handler.
//! - **Access flags**: the handler keeps the region's VFIO read and write
//!   flags ([`crate::RegionFlags`]) and refuses what they forbid, as a typed
//!   access does with [`crate::Error::ReadOnly`] and
//!   [`crate::Error::NotReadable`]: a store through
//!   [`crate::Region::as_mut_ptr`] to a region without the write flag is
//!   dropped, whether its page is trapped or mapped (a read-only region's
//!   areas are mapped `PROT_READ`, so a store there faults too), and a load
//!   from a region without the read flag gets all-ones (such a region maps
//!   nothing, as x86 cannot map a page writable but not readable). Neither
//!   reaches the region's `RegionIo`. Each is recorded like a refusal of
//!   the device, with `EACCES` instead of `EIO`: [`crate::Region::take_error`]
//!   returns [`crate::Error::Refused`] with that errno (its
//!   [`crate::Error::kind`] is [`crate::ErrorKind::Unsupported`]), and a
//!   typed read that returns all-ones reports it.
//! - **Observing refusals**: the [`AccessHook`] and the trace see a refused
//!   access with [`Access::refused`] set to why ([`Refusal::ReadOnly`],
//!   [`Refusal::WriteOnly`], [`Refusal::Revoked`]); a trace line ends with
//!   `dropped (read-only region)`, `refused (write-only region)` or
//!   `dropped (device answered EIO)`.
//!
//! 8-byte accesses are one 8-byte `pread`/`pwrite`, which kernels before 6.11
//! split into two 4-byte device accesses.
//!
//! ```
//! # #[cfg(target_arch = "x86_64")] {
//! use std::sync::Arc;
//! use barmap::region::MemoryRegion;
//! use barmap::{MapPolicy, Region, RegionIndex};
//! // A fake device of 256 bytes; every access to it is trapped and served by
//! // the fault handler from the MemoryRegion, as an I/O port BAR would be.
//! let device = Arc::new(MemoryRegion::new(vec![0; 256]));
//! let region = Region::builder("0000:00:03.0".parse()?, RegionIndex::bar(1).unwrap(), device.clone())
//!     .policy(MapPolicy::TrapAll)
//!     .build()?;
//! // SAFETY: offset 0x10 is inside the region and 4-byte aligned.
//! unsafe { region.as_mut_ptr()?.add(0x10).cast::<u32>().write_volatile(0xfeed) };
//! assert_eq!(device.bytes()[0x10..0x14], [0xed, 0xfe, 0, 0]);
//! # }
//! # Ok::<(), barmap::Error>(())
//! ```

mod trace;

#[cfg(target_arch = "x86_64")]
mod cache;
// The decoder and emulator, a crate of its own (crates/x86-mmio-emu), under
// the name the handler and the decode cache use.
#[cfg(target_arch = "x86_64")]
use x86_mmio_emu as emulate;
#[cfg(target_arch = "x86_64")]
mod handler;
#[cfg(target_arch = "x86_64")]
mod registry;

/// How many regions may be live at once in a process (each holds a slot of
/// the fault handler's table on x86-64).
pub const CAPACITY: usize = 512;

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use trace::TraceRing;
pub use trace::{Access, AccessHook, AccessKind, Refusal};

use crate::error::Error;
use crate::pci::PciAddress;
use crate::region::{RegionFlags, RegionIndex, RegionIo};

/// Records kept for [`crate::Region::flush_trace`] when tracing is on.
const TRACE_CAPACITY: usize = 4096;

/// What the fault handler needs to know about one region. Immutable once
/// registered; shared with the handler through the registry.
// Elsewhere than x86-64 nothing is registered, so the handler's fields go unread.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Shared {
    base: usize,
    len: usize,
    size: u64,
    name: String,
    io: Arc<dyn RegionIo>,
    /// The region's VFIO access flags: a load without the read flag or a
    /// store without the write flag never reaches `io`.
    flags: RegionFlags,
    hook: Option<AccessHook>,
    trace: Option<TraceRing>,
    /// Accesses refused since the owner last took the record (by the device:
    /// EIO, memory decoding off or a reset in a state it cannot wait out; or
    /// by `flags`: EACCES), and the errno of the last one. The count is
    /// shared with the region's typed fast path, which tests it after every
    /// store.
    refused: Arc<AtomicU64>,
    refused_errno: AtomicI32,
}

impl Shared {
    /// Records an access refused with `errno` (by the device, or by the
    /// region's flags), which the fault handler completed as PCIe does
    /// (all-ones read, dropped write). Async-signal-safe.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn note_refused(&self, errno: i32) {
        self.refused_errno.store(errno, Ordering::Relaxed);
        self.refused.fetch_add(1, Ordering::Release);
    }

    /// Takes the record of refused accesses: how many, and the last errno.
    fn take_refused(&self) -> Option<(u64, i32)> {
        match self.refused.swap(0, Ordering::Acquire) {
            0 => None,
            n => Some((n, self.refused_errno.load(Ordering::Relaxed))),
        }
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.len
    }

    /// Reports one trapped access to the hook and the trace ring.
    /// Async-signal-safe as long as the hook is.
    fn record(&self, access: &Access) {
        if let Some(hook) = &self.hook {
            hook(access);
        }
        if let Some(trace) = &self.trace {
            trace.push(access);
        }
    }

    fn flush_trace(&self) -> usize {
        let Some(trace) = &self.trace else { return 0 };
        let mut n = 0;
        while let Some(access) = trace.pop() {
            log::trace!("{}: {access}", self.name);
            n += 1;
        }
        match trace.take_dropped() {
            0 => {}
            dropped => log::trace!("{}: {dropped} trapped accesses not traced (ring full)", self.name),
        }
        n
    }
}

/// Why a region could not be registered with the fault handler.
#[derive(Debug)]
pub(crate) enum RegisterError {
    /// Every slot of the registry is taken.
    Full,
    /// `sigaction` failed.
    Install(io::Error),
}

impl RegisterError {
    /// The barmap error for this, about `region` of `addr`.
    pub(crate) fn into_error(self, addr: PciAddress, region: RegionIndex) -> Error {
        match self {
            RegisterError::Full => Error::ShadowTableFull {
                addr,
                region,
                capacity: CAPACITY,
            },
            RegisterError::Install(source) => Error::Shadow {
                addr,
                region,
                step: "installing the SIGSEGV and SIGBUS handlers",
                offset: 0,
                len: 0,
                source,
            },
        }
    }
}

/// A region's entry in the fault handler's table. While it lives, faults on
/// `base..base + len` are served from `io`; dropping it waits until no fault
/// handler is using it any more.
///
/// Whoever owns the address range must drop this before unmapping it.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    #[cfg(target_arch = "x86_64")]
    slot: usize,
}

impl Registration {
    /// Registers the range `base..base + len` (holding a region of `size`
    /// bytes) so that faults on its `PROT_NONE` pages are served from `io`
    /// as far as `flags` allow; `None` where there is no fault handler (off
    /// x86-64).
    pub(crate) fn new(
        base: *mut u8,
        len: usize,
        size: u64,
        name: String,
        io: Arc<dyn RegionIo>,
        flags: RegionFlags,
        hook: Option<AccessHook>,
    ) -> std::result::Result<Option<Registration>, RegisterError> {
        let trace = log::log_enabled!(log::Level::Trace).then(|| TraceRing::new(TRACE_CAPACITY));
        let shared = Arc::new(Shared {
            base: base as usize,
            len,
            size,
            name,
            io,
            flags,
            hook,
            trace,
            refused: Arc::default(),
            refused_errno: AtomicI32::new(0),
        });
        Registration::register(shared)
    }

    #[cfg(target_arch = "x86_64")]
    fn register(shared: Arc<Shared>) -> std::result::Result<Option<Registration>, RegisterError> {
        handler::install().map_err(RegisterError::Install)?;
        let slot = registry::REGISTRY
            .register(Arc::as_ptr(&shared), shared.base, shared.base + shared.len)
            .ok_or(RegisterError::Full)?;
        log::debug!(
            "{}: shadow region at {:#x}..{:#x} registered",
            shared.name,
            shared.base,
            shared.base + shared.len
        );
        Ok(Some(Registration { shared, slot }))
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn register(_shared: Arc<Shared>) -> std::result::Result<Option<Registration>, RegisterError> {
        Ok(None)
    }

    /// Drains the trace ring into `log::trace!` lines.
    pub(crate) fn flush_trace(&self) -> usize {
        self.shared.flush_trace()
    }

    /// Whether anything observes accesses (a hook or the trace ring): if
    /// not, [`Registration::record`] does nothing.
    pub(crate) fn is_observed(&self) -> bool {
        self.shared.hook.is_some() || self.shared.trace.is_some()
    }

    /// Takes the record of accesses the device refused since the last call:
    /// how many, and the errno of the last one.
    pub(crate) fn take_refused(&self) -> Option<(u64, i32)> {
        self.shared.take_refused()
    }

    /// The count of refused accesses not yet taken, which the fault handler
    /// raises; shared, so that a typed store can test it without going
    /// through the registration.
    pub(crate) fn refusals(&self) -> Arc<AtomicU64> {
        self.shared.refused.clone()
    }

    /// Reports an access that a typed access made through the slow path, so
    /// that the hook and the trace see it like a trapped one.
    pub(crate) fn record(&self, access: &Access) {
        self.shared.record(access);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        registry::REGISTRY.unregister(self.slot);
        self.shared.flush_trace();
    }
}
