//! The BMI1/BMI2 three-operand instructions with a memory source (`ANDN
//! BEXTR BZHI SHLX SHRX SARX PDEP PEXT RORX MULX`), which compilers emit
//! with `-C target-cpu=haswell` and newer (`-march=x86-64-v3`).
//!
//! The CPU computes them, as in [`super::alu`]: a thread can only have
//! faulted on one of these instructions if its CPU has them (an instruction
//! the CPU lacks raises `#UD` before it touches memory). `RORX` and `MULX`
//! take no flags and are plain arithmetic.

use super::alu::{merge_flags, start_flags, with_flags};
use super::regs::mask;

/// A three-operand BMI operation: `dst = op(...)`, one operand in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Bmi {
    /// `dst = !reg & mem`.
    Andn,
    /// `dst = bit field of mem that reg selects`.
    Bextr,
    /// `dst = mem with the bits from index reg up cleared`.
    Bzhi,
    /// `dst = mem << reg`.
    Shlx,
    /// `dst = mem >> reg`.
    Shrx,
    /// `dst = mem >> reg`, arithmetic.
    Sarx,
    /// `dst = bits of reg deposited where mem has ones`.
    Pdep,
    /// `dst = bits of reg extracted where mem has ones`.
    Pext,
    /// `dst = mem rotated right by an immediate`.
    Rorx,
}

impl Bmi {
    const ALL: [Bmi; 9] = [
        Bmi::Andn,
        Bmi::Bextr,
        Bmi::Bzhi,
        Bmi::Shlx,
        Bmi::Shrx,
        Bmi::Sarx,
        Bmi::Pdep,
        Bmi::Pext,
        Bmi::Rorx,
    ];

    /// The operation with discriminant `n`.
    pub fn from_u8(n: u8) -> Option<Bmi> {
        Bmi::ALL.get(usize::from(n)).copied()
    }

    /// Whether memory is the instruction's last operand (`ANDN PDEP PEXT`:
    /// `op dst, reg, mem`) rather than its second (`op dst, mem, reg`).
    pub fn memory_last(self) -> bool {
        matches!(self, Bmi::Andn | Bmi::Pdep | Bmi::Pext)
    }
}

/// `op d, x, y` on the CPU, with the arithmetic flags loaded and read back.
macro_rules! ternary {
    ($op:literal, $w:literal, $x:ident, $y:ident, $f:ident) => {{
        let d: u64;
        with_flags!(
            $f,
            concat!($op, " {d:", $w, "}, {x:", $w, "}, {y:", $w, "}"),
            d = lateout(reg) d,
            x = in(reg) $x,
            y = in(reg) $y
        );
        d
    }};
}

/// One function per width that runs a [`Bmi`] operation with operands of
/// that width, `x` and `y` in the instruction's operand order.
macro_rules! width_fn {
    ($name:ident, $w:literal, $bits:literal) => {
        fn $name(bmi: Bmi, x: u64, y: u64, f: &mut u64) -> u64 {
            let mut fl = *f;
            let d = match bmi {
                Bmi::Andn => ternary!("andn", $w, x, y, fl),
                Bmi::Bextr => ternary!("bextr", $w, x, y, fl),
                Bmi::Bzhi => ternary!("bzhi", $w, x, y, fl),
                Bmi::Shlx => ternary!("shlx", $w, x, y, fl),
                Bmi::Shrx => ternary!("shrx", $w, x, y, fl),
                Bmi::Sarx => ternary!("sarx", $w, x, y, fl),
                Bmi::Pdep => ternary!("pdep", $w, x, y, fl),
                Bmi::Pext => ternary!("pext", $w, x, y, fl),
                Bmi::Rorx => rotate_right(x, y as u32 & ($bits - 1), $bits),
            };
            *f = fl;
            d
        }
    };
}

width_fn!(run32, "e", 32);
width_fn!(run64, "r", 64);

/// `value`'s low `bits` bits rotated right by `count` (< `bits`).
fn rotate_right(value: u64, count: u32, bits: u32) -> u64 {
    if bits == 32 {
        u64::from((value as u32).rotate_right(count))
    } else {
        value.rotate_right(count)
    }
}

/// Runs `bmi` on the memory value `mem` and `other` (the register operand,
/// or `RORX`'s immediate) as `width`-byte operands, starting from the
/// arithmetic flags of `rflags`. Returns the destination's value
/// (zero-extended) and the new RFLAGS. `None` for a width other than 4 or 8.
pub fn run(bmi: Bmi, width: usize, mem: u64, other: u64, rflags: u64) -> Option<(u64, u64)> {
    let (x, y) = if bmi.memory_last() {
        (other, mem)
    } else {
        (mem, other)
    };
    let mut f = start_flags(rflags);
    let d = match width {
        4 => run32(bmi, x, y, &mut f),
        8 => run64(bmi, x, y, &mut f),
        _ => return None,
    };
    Some((d & mask(width), merge_flags(rflags, f)))
}

/// `MULX`: the high and low halves of `rdx * mem` as `width`-byte unsigned
/// operands. Flags are not affected.
pub fn mulx(width: usize, rdx: u64, mem: u64) -> Option<(u64, u64)> {
    match width {
        4 => {
            let p = (rdx & mask(4)) * (mem & mask(4));
            Some((p >> 32, p & mask(4)))
        }
        8 => {
            let p = u128::from(rdx) * u128::from(mem);
            Some(((p >> 64) as u64, p as u64))
        }
        _ => None,
    }
}
