//! Scalar SSE arithmetic with a memory source: what `read_volatile` of an
//! `f32`/`f64` (or an integer converted to a float) compiles to once the
//! value is used in arithmetic (`x + read_volatile(p)` becomes `addsd xmm0,
//! [rdi]`, `read_volatile(p) as f64` becomes `cvtsi2sd xmm0, [rdi]`).
//!
//! The CPU computes them, as in [`super::alu`]: the operation runs on XMM0
//! and XMM1 (or a general register) under the interrupted thread's MXCSR
//! (its rounding mode, FTZ and DAZ) with every exception masked, and the
//! exception flags it raises are handed back, so that the caller can add
//! them to the thread's MXCSR, or refuse the instruction where the thread
//! has that exception unmasked (the CPU would raise `#XM`). The VEX forms
//! (`vaddsd xmm1, xmm2, [mem]`) compute the same low 128 bits as the legacy
//! form run on their first source, so one table serves both. AVX-512's
//! unsigned conversions (`VCVTUSI2SD`, `VCVTTSD2USI`...), which `-C
//! target-cpu=native` emits on such CPUs, have no legacy form and run as
//! themselves.

use std::arch::asm;

use super::regs::mask;

/// A scalar SSE operation with a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Sse {
    Addss,
    Addsd,
    Subss,
    Subsd,
    Mulss,
    Mulsd,
    Divss,
    Divsd,
    Minss,
    Minsd,
    Maxss,
    Maxsd,
    Sqrtss,
    Sqrtsd,
    Cvtss2sd,
    Cvtsd2ss,
    /// An integer of the access width to single precision.
    Cvtsi2ss,
    /// An integer of the access width to double precision.
    Cvtsi2sd,
    Ucomiss,
    Ucomisd,
    Comiss,
    Comisd,
    /// To an integer of the destination register's width.
    Cvtss2si,
    Cvtsd2si,
    Cvttss2si,
    Cvttsd2si,
    /// AVX-512's unsigned conversions (EVEX only).
    Cvtusi2ss,
    Cvtusi2sd,
    Cvtss2usi,
    Cvtsd2usi,
    Cvttss2usi,
    Cvttsd2usi,
}

/// Where an [`Sse`] operation puts its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Result {
    /// The low element of an XMM register, the rest of its 128 bits from the
    /// first source.
    Xmm,
    /// The arithmetic flags (`UCOMIS*`, `COMIS*`).
    Flags,
    /// A general register.
    Gpr,
}

impl Sse {
    const ALL: [Sse; 32] = [
        Sse::Addss,
        Sse::Addsd,
        Sse::Subss,
        Sse::Subsd,
        Sse::Mulss,
        Sse::Mulsd,
        Sse::Divss,
        Sse::Divsd,
        Sse::Minss,
        Sse::Minsd,
        Sse::Maxss,
        Sse::Maxsd,
        Sse::Sqrtss,
        Sse::Sqrtsd,
        Sse::Cvtss2sd,
        Sse::Cvtsd2ss,
        Sse::Cvtsi2ss,
        Sse::Cvtsi2sd,
        Sse::Ucomiss,
        Sse::Ucomisd,
        Sse::Comiss,
        Sse::Comisd,
        Sse::Cvtss2si,
        Sse::Cvtsd2si,
        Sse::Cvttss2si,
        Sse::Cvttsd2si,
        Sse::Cvtusi2ss,
        Sse::Cvtusi2sd,
        Sse::Cvtss2usi,
        Sse::Cvtsd2usi,
        Sse::Cvttss2usi,
        Sse::Cvttsd2usi,
    ];

    /// The operation with discriminant `n`.
    pub fn from_u8(n: u8) -> Option<Sse> {
        Sse::ALL.get(usize::from(n)).copied()
    }

    /// Where the result goes.
    pub fn result(self) -> Result {
        match self {
            Sse::Ucomiss | Sse::Ucomisd | Sse::Comiss | Sse::Comisd => Result::Flags,
            Sse::Cvtss2si
            | Sse::Cvtsd2si
            | Sse::Cvttss2si
            | Sse::Cvttsd2si
            | Sse::Cvtss2usi
            | Sse::Cvtsd2usi
            | Sse::Cvttss2usi
            | Sse::Cvttsd2usi => Result::Gpr,
            _ => Result::Xmm,
        }
    }

    /// The width of the memory operand, given the decoded one: a float's
    /// own, or any integer width (4 or 8) for the conversions from integers.
    pub fn has_width(self, width: usize) -> bool {
        match self {
            Sse::Cvtsi2ss | Sse::Cvtsi2sd | Sse::Cvtusi2ss | Sse::Cvtusi2sd => matches!(width, 4 | 8),
            Sse::Addss
            | Sse::Subss
            | Sse::Mulss
            | Sse::Divss
            | Sse::Minss
            | Sse::Maxss
            | Sse::Sqrtss
            | Sse::Cvtss2sd
            | Sse::Ucomiss
            | Sse::Comiss
            | Sse::Cvtss2si
            | Sse::Cvttss2si
            | Sse::Cvtss2usi
            | Sse::Cvttss2usi => width == 4,
            _ => width == 8,
        }
    }
}

/// MXCSR's exception flags (IE DE ZE OE UE PE).
const MXCSR_FLAGS: u32 = 0x3f;
/// MXCSR's exception masks, each 7 bits above its flag.
const MXCSR_MASKS: u32 = MXCSR_FLAGS << 7;

/// What an operation produced: the new low 128 bits of the destination XMM
/// register, the flags or the general register (as [`Sse::result`] says),
/// and the MXCSR exception flags it raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseResult {
    pub xmm: u128,
    pub rflags: u64,
    pub gpr: u64,
    pub raised: u32,
}

/// Runs `$body` (instructions on XMM0, XMM1 and the named operands) under
/// MXCSR `$csr` with every exception masked, XMM0 loaded from and stored
/// back to `$x` and XMM1's low quadword set to `$m`; `$csr` comes back with
/// the flags raised. Extra operands follow.
macro_rules! under_mxcsr {
    ($x:ident, $m:ident, $csr:ident, [$($body:expr),*] $(, $($extra:tt)*)?) => {
        // SAFETY: the block saves the handler's MXCSR on the stack (it is not
        // `nostack`) and restores it, loads only `$csr`, whose every
        // exception is masked so no SIMD exception is raised; it reads and
        // writes the 16 bytes of `$x` and the 4 of `$csr`, both live locals,
        // and clobbers XMM0/XMM1, declared.
        unsafe {
            asm!(
                "sub rsp, 8",
                "stmxcsr [rsp]",
                "ldmxcsr [{csr}]",
                "movdqu xmm0, [{x}]",
                "movq xmm1, {m}",
                $($body,)*
                "movdqu [{x}], xmm0",
                "stmxcsr [{csr}]",
                "ldmxcsr [rsp]",
                "add rsp, 8",
                x = in(reg) $x.as_mut_ptr(),
                m = in(reg) $m,
                csr = in(reg) &mut $csr as *mut u32,
                out("xmm0") _,
                out("xmm1") _,
                $($($extra)*)?
            )
        }
    };
}

/// Runs `op` with the memory value `m` (zero-extended from its width):
/// `xmm` is the first source (the destination's old value for the legacy
/// forms), `int64` says whether an integer operand (the memory one of
/// `CVTSI2S*`, the destination of `CVT*2SI`) has 8 bytes, and `mxcsr` is
/// the thread's MXCSR, of which the rounding control, FTZ and DAZ are used.
pub fn run(op: Sse, xmm: u128, m: u64, int64: bool, mxcsr: u32) -> SseResult {
    let mut x = [xmm as u64, (xmm >> 64) as u64];
    let mut csr = (mxcsr & !MXCSR_FLAGS) | MXCSR_MASKS;
    let mut flags = 0u64;
    let mut gpr = 0u64;
    macro_rules! xmm {
        ($insn:literal) => {
            under_mxcsr!(x, m, csr, [concat!($insn, " xmm0, xmm1")])
        };
    }
    macro_rules! compare {
        ($insn:literal) => {
            under_mxcsr!(x, m, csr, [concat!($insn, " xmm0, xmm1"), "pushfq", "pop {f}"], f = out(reg) flags)
        };
    }
    macro_rules! to_int {
        ($insn:literal) => {
            if int64 {
                under_mxcsr!(x, m, csr, [concat!($insn, " {g:r}, xmm1")], g = out(reg) gpr)
            } else {
                under_mxcsr!(x, m, csr, [concat!($insn, " {g:e}, xmm1")], g = out(reg) gpr)
            }
        };
    }
    macro_rules! from_int {
        ($insn:literal) => {
            if int64 {
                under_mxcsr!(x, m, csr, [concat!($insn, " xmm0, {m}")])
            } else {
                under_mxcsr!(x, m, csr, [concat!($insn, " xmm0, {m:e}")])
            }
        };
    }
    // The EVEX-only conversions, in their three-operand form with the first
    // source in XMM0 too (the CPU has AVX-512F: the thread ran them).
    macro_rules! from_uint {
        ($insn:literal) => {
            if int64 {
                under_mxcsr!(x, m, csr, [concat!($insn, " xmm0, xmm0, {m}")])
            } else {
                under_mxcsr!(x, m, csr, [concat!($insn, " xmm0, xmm0, {m:e}")])
            }
        };
    }
    match op {
        Sse::Addss => xmm!("addss"),
        Sse::Addsd => xmm!("addsd"),
        Sse::Subss => xmm!("subss"),
        Sse::Subsd => xmm!("subsd"),
        Sse::Mulss => xmm!("mulss"),
        Sse::Mulsd => xmm!("mulsd"),
        Sse::Divss => xmm!("divss"),
        Sse::Divsd => xmm!("divsd"),
        Sse::Minss => xmm!("minss"),
        Sse::Minsd => xmm!("minsd"),
        Sse::Maxss => xmm!("maxss"),
        Sse::Maxsd => xmm!("maxsd"),
        Sse::Sqrtss => xmm!("sqrtss"),
        Sse::Sqrtsd => xmm!("sqrtsd"),
        Sse::Cvtss2sd => xmm!("cvtss2sd"),
        Sse::Cvtsd2ss => xmm!("cvtsd2ss"),
        Sse::Cvtsi2ss => from_int!("cvtsi2ss"),
        Sse::Cvtsi2sd => from_int!("cvtsi2sd"),
        Sse::Ucomiss => compare!("ucomiss"),
        Sse::Ucomisd => compare!("ucomisd"),
        Sse::Comiss => compare!("comiss"),
        Sse::Comisd => compare!("comisd"),
        Sse::Cvtss2si => to_int!("cvtss2si"),
        Sse::Cvtsd2si => to_int!("cvtsd2si"),
        Sse::Cvttss2si => to_int!("cvttss2si"),
        Sse::Cvttsd2si => to_int!("cvttsd2si"),
        Sse::Cvtusi2ss => from_uint!("vcvtusi2ss"),
        Sse::Cvtusi2sd => from_uint!("vcvtusi2sd"),
        Sse::Cvtss2usi => to_int!("vcvtss2usi"),
        Sse::Cvtsd2usi => to_int!("vcvtsd2usi"),
        Sse::Cvttss2usi => to_int!("vcvttss2usi"),
        Sse::Cvttsd2usi => to_int!("vcvttsd2usi"),
    }
    SseResult {
        xmm: u128::from(x[0]) | u128::from(x[1]) << 64,
        rflags: flags,
        gpr: if int64 { gpr } else { gpr & mask(4) },
        raised: csr & MXCSR_FLAGS,
    }
}

/// The exceptions among `raised` that `mxcsr` does not mask: the CPU would
/// have raised `#XM` (SIGFPE) for them.
fn unmasked(raised: u32, mxcsr: u32) -> u32 {
    raised & !(mxcsr >> 7) & MXCSR_FLAGS
}

/// MXCSR's underflow flag.
const UE: u32 = 0x10;

/// Whether the CPU would have raised `#XM` for `op` with result `r` (run
/// with every exception masked) under the thread's `mxcsr`: an exception it
/// raised is unmasked, or underflow is unmasked and the result is tiny.
/// Masked underflow is only flagged for a tiny result that is also inexact;
/// unmasked, a tiny exact result traps too.
pub fn traps(op: Sse, r: &SseResult, mxcsr: u32) -> bool {
    if unmasked(r.raised, mxcsr) != 0 {
        return true;
    }
    if mxcsr & (UE << 7) != 0 {
        return false;
    }
    let subnormal32 = |bits: u32| bits & 0x7f80_0000 == 0 && bits & 0x007f_ffff != 0;
    let subnormal64 = |bits: u64| bits & 0x7ff0_0000_0000_0000 == 0 && bits & 0x000f_ffff_ffff_ffff != 0;
    match op {
        Sse::Addss | Sse::Subss | Sse::Mulss | Sse::Divss | Sse::Cvtsd2ss => subnormal32(r.xmm as u32),
        Sse::Addsd | Sse::Subsd | Sse::Mulsd | Sse::Divsd => subnormal64(r.xmm as u64),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_MXCSR: u32 = 0x1f80;

    fn sd(x: f64) -> u128 {
        u128::from(x.to_bits()) | 0xdead_beef << 64
    }

    #[test]
    fn arithmetic_keeps_the_upper_half_of_the_first_source() {
        let r = run(Sse::Addsd, sd(1.5), 2.25f64.to_bits(), false, DEFAULT_MXCSR);
        assert_eq!(r.xmm, sd(3.75));
        assert_eq!(r.raised, 0);
        let r = run(
            Sse::Mulss,
            0x1111_2222_0000_0000 | u128::from(3f32.to_bits()),
            u64::from(2f32.to_bits()),
            false,
            DEFAULT_MXCSR,
        );
        assert_eq!(r.xmm, 0x1111_2222_0000_0000 | u128::from(6f32.to_bits()));
        let r = run(Sse::Sqrtsd, sd(0.0), 16f64.to_bits(), false, DEFAULT_MXCSR);
        assert_eq!(r.xmm, sd(4.0));
    }

    #[test]
    fn conversions_and_comparisons() {
        let r = run(
            Sse::Cvtsi2sd,
            sd(0.0),
            (-7i32) as u32 as u64,
            false,
            DEFAULT_MXCSR,
        );
        assert_eq!(r.xmm, sd(-7.0));
        let r = run(Sse::Cvtsi2sd, sd(0.0), (-7i64) as u64, true, DEFAULT_MXCSR);
        assert_eq!(r.xmm, sd(-7.0));
        let r = run(Sse::Cvttsd2si, 0, 2.75f64.to_bits(), false, DEFAULT_MXCSR);
        assert_eq!((r.gpr, r.raised), (2, 0x20)); // inexact
        let r = run(Sse::Cvtsd2si, 0, (-2.5f64).to_bits(), true, DEFAULT_MXCSR);
        assert_eq!(r.gpr, (-2i64) as u64); // round to nearest even
        let r = run(Sse::Ucomisd, sd(1.0), 2f64.to_bits(), false, DEFAULT_MXCSR);
        assert_eq!(r.rflags & 0x8d5, 0x1); // below: CF
        let r = run(Sse::Ucomisd, sd(1.0), f64::NAN.to_bits(), false, DEFAULT_MXCSR);
        assert_eq!(r.rflags & 0x8d5, 0x45); // unordered: ZF PF CF
    }

    #[test]
    fn the_threads_rounding_mode_applies_and_exceptions_come_back() {
        // 1/3 rounded toward zero and toward +infinity differ in the last bit.
        let down = run(Sse::Divsd, sd(1.0), 3f64.to_bits(), false, DEFAULT_MXCSR | 0x6000);
        let up = run(Sse::Divsd, sd(1.0), 3f64.to_bits(), false, DEFAULT_MXCSR | 0x4000);
        assert_eq!((up.xmm as u64) - (down.xmm as u64), 1);
        let r = run(Sse::Divsd, sd(1.0), 0f64.to_bits(), false, DEFAULT_MXCSR);
        assert_eq!(r.raised, 0x4); // ZE, masked here
        assert_eq!(unmasked(r.raised, DEFAULT_MXCSR), 0);
        assert_eq!(unmasked(r.raised, DEFAULT_MXCSR & !(0x4 << 7)), 0x4);
        assert!(traps(Sse::Divsd, &r, DEFAULT_MXCSR & !(0x4 << 7)));
        assert!(!traps(Sse::Divsd, &r, DEFAULT_MXCSR));
    }

    #[test]
    fn a_tiny_exact_result_traps_only_with_underflow_unmasked() {
        // The smallest normal halved: subnormal and exact, so masked
        // underflow raises no flag at all.
        let r = run(
            Sse::Mulsd,
            sd(f64::MIN_POSITIVE),
            0.5f64.to_bits(),
            false,
            DEFAULT_MXCSR,
        );
        assert_eq!(r.xmm as u64, (f64::MIN_POSITIVE / 2.0).to_bits());
        assert_eq!(r.raised, 0);
        assert!(!traps(Sse::Mulsd, &r, DEFAULT_MXCSR));
        assert!(traps(Sse::Mulsd, &r, DEFAULT_MXCSR & !(UE << 7)));
        // A normal result does not trap with underflow unmasked.
        let r = run(Sse::Mulsd, sd(1.0), 0.5f64.to_bits(), false, DEFAULT_MXCSR);
        assert!(!traps(Sse::Mulsd, &r, DEFAULT_MXCSR & !(UE << 7)));
    }
}
