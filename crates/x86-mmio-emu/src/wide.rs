//! Double-width operations with a memory operand: the one-operand `MUL`,
//! `IMUL`, `DIV` and `IDIV` on RDX:RAX (what `u128` arithmetic and C's `x /
//! *reg` compile to), and the double shifts `SHLD`/`SHRD` (funnel shifts,
//! `(a << n) | (b >> (64 - n))`).
//!
//! The CPU computes them, as in [`super::alu`], on the interrupted thread's
//! whole RAX and RDX, so the partial-register rules of each width are the
//! CPU's own. A division that would raise `#DE` is refused beforehand: the
//! handler cannot raise the divide error of an instruction it emulates.

use super::alu::{merge_flags, start_flags, with_flags};
use super::regs::{mask, sign_extend};

/// A one-operand multiply or divide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Wide {
    Mul,
    Imul,
    Div,
    Idiv,
}

impl Wide {
    const ALL: [Wide; 4] = [Wide::Mul, Wide::Imul, Wide::Div, Wide::Idiv];

    /// The operation with discriminant `n`.
    pub fn from_u8(n: u8) -> Option<Wide> {
        Wide::ALL.get(usize::from(n)).copied()
    }
}

/// RAX and RDX, and the flags, after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WideResult {
    pub rax: u64,
    pub rdx: u64,
    pub rflags: u64,
}

/// `op m` on the CPU with RAX and RDX as they are given. Divisions come
/// only with a divisor and dividend that [`divide_error`] cleared.
macro_rules! one_operand {
    ($op:literal, $w:literal, $m:ident, $rax:ident, $rdx:ident, $f:ident) => {
        with_flags!($f, concat!($op, " {m:", $w, "}"), m = in(reg) $m, inout("rax") $rax, inout("rdx") $rdx)
    };
}

/// One function per width that runs a [`Wide`] operation at that width.
macro_rules! width_fn {
    ($name:ident, $w:literal) => {
        fn $name(op: Wide, m: u64, rax: &mut u64, rdx: &mut u64, f: &mut u64) {
            let (mut a, mut d, mut fl) = (*rax, *rdx, *f);
            match op {
                Wide::Mul => one_operand!("mul", $w, m, a, d, fl),
                Wide::Imul => one_operand!("imul", $w, m, a, d, fl),
                Wide::Div => one_operand!("div", $w, m, a, d, fl),
                Wide::Idiv => one_operand!("idiv", $w, m, a, d, fl),
            }
            (*rax, *rdx, *f) = (a, d, fl);
        }
    };
}

width_fn!(run8, "l");
width_fn!(run16, "x");
width_fn!(run32, "e");
width_fn!(run64, "r");

/// Whether dividing RDX:RAX (AX for bytes) by `m` at `width` bytes raises
/// `#DE`: a zero divisor, or a quotient that does not fit the width.
fn divide_error(signed: bool, width: usize, m: u64, rax: u64, rdx: u64) -> bool {
    let bits = 8 * width as u32;
    let (dividend_lo, dividend_hi) = if width == 1 {
        (rax & mask(1), (rax >> 8) & mask(1))
    } else {
        (rax & mask(width), rdx & mask(width))
    };
    let dividend = u128::from(dividend_hi) << bits | u128::from(dividend_lo);
    let divisor = m & mask(width);
    if divisor == 0 {
        return true;
    }
    if signed {
        // The dividend is 2 * width bytes wide: sign-extend it from there.
        let shift = 128 - 2 * bits;
        let dividend = ((dividend << shift) as i128) >> shift;
        let divisor = i128::from(sign_extend(divisor, width) as i64);
        match dividend.checked_div(divisor) {
            Some(q) => q < -(1i128 << (bits - 1)) || q >= 1i128 << (bits - 1),
            None => true,
        }
    } else {
        dividend / u128::from(divisor) > u128::from(mask(width))
    }
}

/// Runs `op` with the memory operand `m` on RDX:RAX at `width` bytes,
/// starting from the arithmetic flags of `rflags`. `None` for a width that
/// does not exist or a division that would raise `#DE`.
pub fn run(op: Wide, width: usize, m: u64, rax: u64, rdx: u64, rflags: u64) -> Option<WideResult> {
    let signed = op == Wide::Idiv;
    if matches!(op, Wide::Div | Wide::Idiv) && divide_error(signed, width, m, rax, rdx) {
        return None;
    }
    let (mut a, mut d, mut f) = (rax, rdx, start_flags(rflags));
    match width {
        1 => run8(op, m, &mut a, &mut d, &mut f),
        2 => run16(op, m, &mut a, &mut d, &mut f),
        4 => run32(op, m, &mut a, &mut d, &mut f),
        8 => run64(op, m, &mut a, &mut d, &mut f),
        _ => return None,
    }
    Some(WideResult {
        rax: a,
        rdx: d,
        rflags: merge_flags(rflags, f),
    })
}

/// `SHLD`/`SHRD`: shifts `a` (the memory operand) by `count` (masked by the
/// CPU), filling from `b`, at `width` bytes (2, 4 or 8). Returns the result
/// and the new RFLAGS.
pub fn double_shift(left: bool, width: usize, a: u64, b: u64, count: u64, rflags: u64) -> Option<(u64, u64)> {
    let (mut x, mut f) = (a, start_flags(rflags));
    macro_rules! shift {
        ($op:literal, $w:literal) => {
            with_flags!(f, concat!($op, " {a:", $w, "}, {b:", $w, "}, cl"), a = inout(reg) x, b = in(reg) b, in("cl") count as u8)
        };
    }
    match (left, width) {
        (true, 2) => shift!("shld", "x"),
        (true, 4) => shift!("shld", "e"),
        (true, 8) => shift!("shld", "r"),
        (false, 2) => shift!("shrd", "x"),
        (false, 4) => shift!("shrd", "e"),
        (false, 8) => shift!("shrd", "r"),
        _ => return None,
    }
    Some((x & mask(width), merge_flags(rflags, f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplies_into_rdx_rax() {
        let r = run(Wide::Mul, 8, u64::MAX, u64::MAX, 7, 0).unwrap();
        assert_eq!((r.rdx, r.rax), (u64::MAX - 1, 1));
        assert_eq!(r.rflags & 0x801, 0x801); // CF and OF: the high half is not zero
                                             // A byte multiply writes AX only; RDX keeps its value.
        let r = run(Wide::Mul, 1, 0x10, 0xffff_ff20, 0x1234, 0).unwrap();
        assert_eq!((r.rax, r.rdx), (0xffff_0200, 0x1234));
        let r = run(Wide::Imul, 4, (-3i32) as u32 as u64, 5, 0xdead_0000_0000, 0).unwrap();
        assert_eq!((r.rax, r.rdx), ((-15i32) as u32 as u64, 0xffff_ffff));
    }

    #[test]
    fn divides_and_refuses_what_would_fault() {
        let r = run(Wide::Div, 4, 7, 100, 0, 0).unwrap();
        assert_eq!((r.rax, r.rdx), (14, 2));
        let r = run(Wide::Idiv, 2, (-7i16) as u16 as u64, 100, 0, 0).unwrap();
        assert_eq!((r.rax & 0xffff, r.rdx & 0xffff), ((-14i16) as u16 as u64, 2));
        let r = run(Wide::Div, 1, 10, 0x1234_00ff, 0x55, 0).unwrap();
        assert_eq!(r.rax, 0x1234_0519); // AL = 25, AH = 5
                                        // Zero divisors and quotients too wide for the width.
        assert_eq!(run(Wide::Div, 8, 0, 1, 0, 0), None);
        assert_eq!(run(Wide::Div, 4, 1, 0, 1, 0), None);
        assert_eq!(run(Wide::Div, 1, 1, 0x100, 0, 0), None);
        assert_eq!(run(Wide::Idiv, 8, u64::MAX, 1 << 63, u64::MAX, 0), None);
        // -128 / -1 fits a byte only as a dividend of 128, not of -128.
        assert_eq!(run(Wide::Idiv, 1, 0xff, 0x80, 0, 0).unwrap().rax & 0xff, 0x80);
        assert_eq!(run(Wide::Idiv, 1, 0xff, 0xff80, 0, 0), None);
        // Quotients at the edge of the width fit; one past it does not.
        let d = 0x1234_5678u64;
        let r = run(Wide::Div, 4, d, 0xffff_ffff, d - 1, 0).unwrap();
        assert_eq!(r.rax, 0xffff_ffff);
        assert_eq!(run(Wide::Div, 4, d, 0, d, 0), None);
        let r = run(Wide::Idiv, 1, 1, 0xff80, 0, 0).unwrap(); // -128 / 1
        assert_eq!(r.rax & 0xff, 0x80);
        let r = run(Wide::Idiv, 8, 2, 0, u64::MAX, 0).unwrap(); // -2^64 / 2 = -2^63
        assert_eq!(r.rax, 1 << 63);
        assert_eq!(run(Wide::Idiv, 8, u64::MAX - 1, 0, u64::MAX, 0), None); // 2^63
    }

    #[test]
    fn double_shifts_fill_from_the_register() {
        assert_eq!(double_shift(true, 8, 1, 1 << 63, 1, 0).unwrap().0, 3);
        assert_eq!(
            double_shift(false, 4, 0x8000_0000, 1, 4, 0).unwrap().0,
            0x1800_0000
        );
        assert_eq!(
            double_shift(true, 2, 0x00ff, 0xf000, 4, 0).unwrap().0,
            0x0ff0 | 0xf
        );
        assert_eq!(double_shift(true, 1, 0, 0, 1, 0), None);
    }
}
