//! Taking a signal over from the action installed before barmap's, and
//! handing back every signal that is not barmap's as the kernel would have
//! delivered it to that action. HotSpot's `PosixSignals::chained_handler` is
//! the model.
//!
//! One [`Chain`] serves one signal: [`SIGSEGV`] for the shadow regions'
//! trapped pages, [`SIGBUS`] for their revoked mapped pages.
//!
//! # Installing
//!
//! [`Chain::install`] puts barmap's handler in place with one exchange,
//! `sigaction(sig, &new, &old)`, once per process. If another thread installs
//! a handler at the same moment, either its action is `old` (and is chained
//! to) or it replaces barmap's and gets barmap's as its own previous action:
//! no action is lost between two calls. From the exchange on, barmap's handler
//! may run on any thread before `old` is published to it; it then waits,
//! which is brief: the installing thread publishes right after the exchange,
//! with the signal blocked so that a signal sent to itself cannot make the
//! handler wait for it on its own stack.
//!
//! # Forwarding
//!
//! [`Chain::forward`] calls the previous handler the way the kernel would
//! have called it had barmap's never been installed:
//!
//! - **Mask**: it runs with the signal mask the kernel sets for a handler:
//!   the interrupted code's mask (from the signal frame), plus the previous
//!   action's `sa_mask`, plus the signal itself unless the action has
//!   `SA_NODEFER`. barmap's own handler runs with every signal blocked; the
//!   mask is set with `rt_sigprocmask` just before the call and put back
//!   just after. So a `SA_NODEFER` handler may take a nested fault (it comes
//!   to barmap's handler again and is forwarded again), and a handler that
//!   leaves by `siglongjmp` leaves the mask as the kernel would have. (HotSpot
//!   sets the `sa_mask` alone; keeping the interrupted mask too is what the
//!   kernel does, and keeps blocked what the interrupted code blocked.)
//! - **`SA_RESETHAND`**: the action reverts to `SIG_DFL` before its one call,
//!   as the kernel reverts it on delivery. The exchange is atomic, so of two
//!   threads faulting at once only one calls the handler; later signals find
//!   `SIG_DFL`. Only barmap's record of the action changes: barmap's handler
//!   stays installed for its own faults.
//! - **`SIG_DFL` and `SIG_IGN`**: a fault takes the default action (the
//!   disposition is reset to `SIG_DFL` and the faulting instruction runs
//!   again, which kills the process, as an ignored synchronous fault does
//!   too); a sent signal is ignored, or re-raised to the default action.
//! - `SA_ONSTACK` of the previous action is not re-applied: the handler runs
//!   on whichever stack barmap's runs on (the alternate stack where one is
//!   set up).
//!
//! Everything [`Chain::forward`] does is async-signal-safe: atomics,
//! `sigismember`, `rt_sigprocmask`, `sigaction` and `raise`.

use std::io;
use std::mem;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use libc::{c_int, c_void, siginfo_t, ucontext_t};

/// An `SA_SIGINFO` signal handler.
pub(crate) type Handler = extern "C" fn(c_int, *mut siginfo_t, *mut c_void);

/// How a signal that is not barmap's came.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A fault of the interrupted instruction: returning re-runs it.
    Fault,
    /// Sent by another thread or process (`kill`, `tgkill`, `sigqueue`).
    Sent,
}

/// barmap's handler for one signal and the action it displaced.
pub(crate) struct Chain {
    signal: c_int,
    /// The result of installing (an errno on failure).
    installed: OnceLock<Result<(), i32>>,
    /// Set once `handler`, `flags` and `mask` hold the previous action.
    published: AtomicBool,
    /// The previous `sa_sigaction` (`SIG_DFL`, `SIG_IGN` or a function);
    /// `SIG_DFL` once an `SA_RESETHAND` handler was called.
    handler: AtomicUsize,
    /// The previous `sa_flags`.
    flags: AtomicI32,
    /// The previous `sa_mask`, plus `signal` unless `SA_NODEFER`, as the
    /// kernel's 64-bit mask (bit `n - 1` for signal `n`).
    mask: AtomicU64,
}

/// The chain for SIGSEGV, which serves shadow regions.
pub(crate) static SIGSEGV: Chain = Chain::new(libc::SIGSEGV);

/// The chain for SIGBUS, which serves mapped pages that vfio-pci revoked.
pub(crate) static SIGBUS: Chain = Chain::new(libc::SIGBUS);

/// The highest signal number the kernel knows on x86-64 (`_NSIG`), and so
/// the width of its signal masks.
const KERNEL_SIGNALS: c_int = 64;

/// Bit `n - 1` for signal `n`, as in the kernel's masks.
fn bit(signal: c_int) -> u64 {
    1 << (signal - 1)
}

/// The signals of `set` as the kernel's 64-bit mask. Async-signal-safe.
fn kernel_mask(set: &libc::sigset_t) -> u64 {
    (1..=KERNEL_SIGNALS)
        // SAFETY: `set` is a valid sigset_t and `n` a valid signal number, so
        // sigismember only reads it (and never sets errno).
        .filter(|&n| unsafe { libc::sigismember(set, n) } == 1)
        .fold(0, |mask, n| mask | bit(n))
}

/// Sets this thread's signal mask to `mask` and returns the one it replaces.
/// Async-signal-safe: one `rt_sigprocmask`, which cannot fail with these
/// arguments (and so leaves `errno` alone).
fn set_thread_mask(mask: u64) -> u64 {
    let mut old = 0u64;
    // SAFETY: both pointers are to 8-byte masks, the size of the kernel's
    // sigset_t on x86-64, which is passed as the last argument.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            ptr::addr_of!(mask),
            ptr::addr_of_mut!(old),
            mem::size_of::<u64>(),
        )
    };
    old
}

impl Chain {
    /// The chain for `signal`, with nothing installed yet.
    pub(crate) const fn new(signal: c_int) -> Chain {
        Chain {
            signal,
            installed: OnceLock::new(),
            published: AtomicBool::new(false),
            handler: AtomicUsize::new(libc::SIG_DFL),
            flags: AtomicI32::new(0),
            mask: AtomicU64::new(0),
        }
    }

    /// Installs `handler` for this signal unless it is installed already;
    /// `prepare` runs first, once, for what the handler needs ready (it may
    /// allocate). The handler runs with `SA_SIGINFO | SA_ONSTACK` and every
    /// signal blocked. Not async-signal-safe.
    pub(crate) fn install(&'static self, handler: Handler, prepare: impl FnOnce()) -> io::Result<()> {
        let result = self.installed.get_or_init(|| {
            prepare();
            // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask).
            let mut action: libc::sigaction = unsafe { mem::zeroed() };
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // Every signal stays blocked while the handler runs: it may leave
            // the alternate stack for the interrupted one, and a signal
            // delivered meanwhile to another SA_ONSTACK handler would start at
            // the top of the alternate stack, over this handler's live frames.
            // SAFETY: `sa_mask` is a valid sigset_t to fill.
            unsafe { libc::sigfillset(&mut action.sa_mask) };
            self.exchange(&action)
        });
        result.map_err(io::Error::from_raw_os_error)
    }

    /// Puts `action` in place and publishes the action it replaces, with the
    /// signal blocked on this thread meanwhile (see "Installing" above).
    fn exchange(&self, action: &libc::sigaction) -> Result<(), i32> {
        // SAFETY: all-zero sigset_t and sigaction are valid values.
        let (mut block, mut unblocked, mut old): (libc::sigset_t, libc::sigset_t, libc::sigaction) =
            unsafe { mem::zeroed() };
        // SAFETY: `block` is a valid set to fill, with a valid signal number.
        unsafe {
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, self.signal);
        }
        // SAFETY: valid sets. Until the mask is restored below nothing can
        // fault (only this chain's atomics and locals are touched), so having
        // the signal blocked cannot turn a fault into a kill.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut unblocked) };
        // SAFETY: `action` is fully initialised; its handler has the
        // SA_SIGINFO signature and is async-signal-safe (`install`'s contract).
        let result = if unsafe { libc::sigaction(self.signal, action, &mut old) } == 0 {
            self.publish(&old);
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL))
        };
        // SAFETY: restores this thread's mask from a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &unblocked, ptr::null_mut()) };
        result
    }

    /// Makes `old` the action [`Chain::forward`] hands signals to.
    fn publish(&self, old: &libc::sigaction) {
        let mut mask = kernel_mask(&old.sa_mask);
        if old.sa_flags & libc::SA_NODEFER == 0 {
            mask |= bit(self.signal);
        }
        self.handler.store(old.sa_sigaction, Ordering::Relaxed);
        self.flags.store(old.sa_flags, Ordering::Relaxed);
        self.mask.store(mask, Ordering::Relaxed);
        self.published.store(true, Ordering::Release);
    }

    /// Hands a signal that is not barmap's to the previous action, as
    /// described in the module documentation. `info` and `ctx` are the
    /// arguments barmap's `SA_SIGINFO` handler got. Async-signal-safe.
    pub(crate) fn forward(&self, info: *mut siginfo_t, ctx: *mut c_void, origin: Origin) {
        // Only between the exchange and the publication on the installing
        // thread, which is running (it blocks the signal meanwhile).
        while !self.published.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let flags = self.flags.load(Ordering::Relaxed);
        let mut handler = self.handler.load(Ordering::Relaxed);
        let is_function = |h: usize| h != libc::SIG_DFL && h != libc::SIG_IGN;
        if flags & libc::SA_RESETHAND != 0 && is_function(handler) {
            // One delivery only gets the handler; if another thread's came
            // first, this one finds SIG_DFL (the only value stored here).
            handler = match self.handler.compare_exchange(
                handler,
                libc::SIG_DFL,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(taken) => taken,
                Err(now) => now,
            };
        }
        match handler {
            // A sent signal is ignored like any other...
            libc::SIG_IGN if origin == Origin::Sent => {}
            // ...or kills the process: re-sent to this thread, it is delivered
            // (to the default action) when the handler returns. A fault is
            // simply taken again.
            libc::SIG_DFL if origin == Origin::Sent => self.die(),
            libc::SIG_DFL | libc::SIG_IGN => self.default_action(),
            f => self.call(f, flags, info, ctx),
        }
    }

    /// Calls the previous handler `f` (installed with `flags`) under the
    /// mask the kernel would have set, and restores the mask after.
    fn call(&self, f: usize, flags: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
        // SAFETY: with SA_SIGINFO the third argument of barmap's handler is
        // the interrupted thread's ucontext_t, whose `uc_sigmask` holds the
        // interrupted mask (in its first 64 bits, all that is read here).
        let interrupted = kernel_mask(unsafe { &(*ctx.cast::<ucontext_t>()).uc_sigmask });
        let own = set_thread_mask(interrupted | self.mask.load(Ordering::Relaxed));
        if flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous action was installed with SA_SIGINFO, so
            // `f` is a handler with this signature, called with the arguments
            // the kernel gave barmap's.
            let f: Handler = unsafe { mem::transmute::<usize, Handler>(f) };
            f(self.signal, info, ctx);
        } else {
            // SAFETY: the previous action was installed without SA_SIGINFO,
            // so `f` is a plain `void (*)(int)` handler.
            let f: extern "C" fn(c_int) = unsafe { mem::transmute::<usize, extern "C" fn(c_int)>(f) };
            f(self.signal);
        }
        set_thread_mask(own);
    }

    /// Resets the signal's disposition to `SIG_DFL`: returning from a fault
    /// then re-runs the faulting instruction, which kills the process (a
    /// synchronous fault cannot be ignored). Async-signal-safe.
    pub(crate) fn default_action(&self) {
        // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
        let action: libc::sigaction = unsafe { mem::zeroed() };
        // SAFETY: `action` is a valid sigaction; sigaction is async-signal-safe.
        unsafe { libc::sigaction(self.signal, &action, ptr::null_mut()) };
    }

    /// Ends the process with the signal's default action even if the
    /// faulting instruction would succeed when run again (another thread
    /// may turn memory decoding back on meanwhile): the signal is reset to
    /// `SIG_DFL` and sent to this thread, where it is delivered as soon as the
    /// handler returns. Async-signal-safe.
    pub(crate) fn die(&self) {
        self.default_action();
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(self.signal) };
    }
}
