//! The arithmetic of emulated ALU instructions, done by the CPU itself.
//!
//! Each operation runs natively on register operands of the access width,
//! with the interrupted thread's arithmetic flags loaded first (`popfq`, so
//! `ADC`/`SBB` see its carry and `INC`/`DEC`/`BT` keep what they keep) and
//! the flags read back after (`pushfq`). So the result and every flag,
//! including the ones the manuals call undefined, are what this CPU produces
//! for the same instruction on memory: nothing is modelled. Registers and
//! the stack only: async-signal-safe.

/// The arithmetic flags: CF, PF, AF, ZF, SF, OF.
pub const ARITH_FLAGS: u64 = 0x8d5;

/// RFLAGS bit 1, always set.
const RESERVED_FLAG: u64 = 0x2;

/// An ALU operation with a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Alu {
    Add,
    Adc,
    Sub,
    Sbb,
    And,
    Or,
    Xor,
    Cmp,
    Test,
    Inc,
    Dec,
    Neg,
    Not,
    Imul,
    Bt,
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
    Bsf,
    Bsr,
    Tzcnt,
    Lzcnt,
    Popcnt,
    Blsr,
    Blsi,
    Blsmsk,
}

impl Alu {
    /// Every operation, indexed by its discriminant.
    const ALL: [Alu; 28] = [
        Alu::Add,
        Alu::Adc,
        Alu::Sub,
        Alu::Sbb,
        Alu::And,
        Alu::Or,
        Alu::Xor,
        Alu::Cmp,
        Alu::Test,
        Alu::Inc,
        Alu::Dec,
        Alu::Neg,
        Alu::Not,
        Alu::Imul,
        Alu::Bt,
        Alu::Shl,
        Alu::Shr,
        Alu::Sar,
        Alu::Rol,
        Alu::Ror,
        Alu::Bsf,
        Alu::Bsr,
        Alu::Tzcnt,
        Alu::Lzcnt,
        Alu::Popcnt,
        Alu::Blsr,
        Alu::Blsi,
        Alu::Blsmsk,
    ];

    /// The operation with discriminant `n`.
    pub fn from_u8(n: u8) -> Option<Alu> {
        Alu::ALL.get(usize::from(n)).copied()
    }

    /// Whether the result is written to the destination (`CMP`, `TEST` and
    /// `BT` only set flags).
    pub fn writes(self) -> bool {
        !matches!(self, Alu::Cmp | Alu::Test | Alu::Bt)
    }

    /// Whether the operation exists for `width`-byte operands (`IMUL` with a
    /// register destination, `BT` and the bit scans have no byte form, the
    /// BMI1 operations only 4- and 8-byte ones).
    pub fn has_width(self, width: usize) -> bool {
        match self {
            Alu::Blsr | Alu::Blsi | Alu::Blsmsk => matches!(width, 4 | 8),
            Alu::Imul | Alu::Bt | Alu::Bsf | Alu::Bsr | Alu::Tzcnt | Alu::Lzcnt | Alu::Popcnt => {
                matches!(width, 2 | 4 | 8)
            }
            _ => matches!(width, 1 | 2 | 4 | 8),
        }
    }

    /// Whether the operation only reads the memory operand, writing a
    /// register (the bit scans and counts, and the BMI1 operations).
    pub fn register_only(self) -> bool {
        matches!(
            self,
            Alu::Bsf | Alu::Bsr | Alu::Tzcnt | Alu::Lzcnt | Alu::Popcnt | Alu::Blsr | Alu::Blsi | Alu::Blsmsk
        )
    }
}

/// Runs `$insn`, an instruction template over the named operands that
/// follow, with the arithmetic flags `$f` loaded first (`popfq`) and read
/// back after (`pushfq`). The emulators of [`super::bmi`] and
/// [`super::wide`] use it too.
macro_rules! with_flags {
    ($f:ident, $insn:expr, $($operands:tt)*) => {
        // SAFETY: register-only arithmetic on the given operands, none of
        // which can fault (divisions are checked beforehand); the pushes and
        // pops are balanced (the block is not `nostack`, so the stack is
        // there to use), and `popfq` loads only arithmetic flags plus the
        // reserved bit: DF, TF and AC stay clear, as the asm! contract and
        // the thread require.
        unsafe {
            std::arch::asm!("push {f}", "popfq", $insn, "pushfq", "pop {f}", f = inout(reg) $f, $($operands)*)
        }
    };
}
pub(crate) use with_flags;

/// Binary operations: `op a, b` with `a` read and written, `b` read.
macro_rules! binary {
    ($op:literal, $w:literal, $a:ident, $b:ident, $f:ident) => {
        with_flags!($f, concat!($op, " {a:", $w, "}, {b:", $w, "}"), a = inout(reg) $a, b = in(reg) $b)
    };
}

/// Unary operations: `op a`.
macro_rules! unary {
    ($op:literal, $w:literal, $a:ident, $f:ident) => {
        with_flags!($f, concat!($op, " {a:", $w, "}"), a = inout(reg) $a)
    };
}

/// Shifts and rotates: `op a, cl`, the count being `b`'s low byte (the CPU
/// masks it as it does for memory operands).
macro_rules! shift {
    ($op:literal, $w:literal, $a:ident, $b:ident, $f:ident) => {
        with_flags!($f, concat!($op, " {a:", $w, "}, cl"), a = inout(reg) $a, in("cl") $b as u8)
    };
}

/// One function per width that runs `alu` with operands of that width.
macro_rules! width_fn {
    ($name:ident, $w:literal, byte: $byte:literal, vex: $vex:literal) => {
        fn $name(alu: Alu, a: &mut u64, b: u64, f: &mut u64) -> Option<()> {
            let (mut x, mut fl) = (*a, *f);
            match alu {
                Alu::Add => binary!("add", $w, x, b, fl),
                Alu::Adc => binary!("adc", $w, x, b, fl),
                Alu::Sub => binary!("sub", $w, x, b, fl),
                Alu::Sbb => binary!("sbb", $w, x, b, fl),
                Alu::And => binary!("and", $w, x, b, fl),
                Alu::Or => binary!("or", $w, x, b, fl),
                Alu::Xor => binary!("xor", $w, x, b, fl),
                Alu::Cmp => binary!("cmp", $w, x, b, fl),
                Alu::Test => binary!("test", $w, x, b, fl),
                Alu::Inc => unary!("inc", $w, x, fl),
                Alu::Dec => unary!("dec", $w, x, fl),
                Alu::Neg => unary!("neg", $w, x, fl),
                Alu::Not => unary!("not", $w, x, fl),
                Alu::Imul if !$byte => binary!("imul", $w, x, b, fl),
                Alu::Bt if !$byte => binary!("bt", $w, x, b, fl),
                Alu::Bsf if !$byte => binary!("bsf", $w, x, b, fl),
                Alu::Bsr if !$byte => binary!("bsr", $w, x, b, fl),
                Alu::Tzcnt if !$byte => binary!("tzcnt", $w, x, b, fl),
                Alu::Lzcnt if !$byte => binary!("lzcnt", $w, x, b, fl),
                Alu::Popcnt if !$byte => binary!("popcnt", $w, x, b, fl),
                Alu::Blsr if $vex => binary!("blsr", $w, x, b, fl),
                Alu::Blsi if $vex => binary!("blsi", $w, x, b, fl),
                Alu::Blsmsk if $vex => binary!("blsmsk", $w, x, b, fl),
                Alu::Imul
                | Alu::Bt
                | Alu::Bsf
                | Alu::Bsr
                | Alu::Tzcnt
                | Alu::Lzcnt
                | Alu::Popcnt
                | Alu::Blsr
                | Alu::Blsi
                | Alu::Blsmsk => return None,
                Alu::Shl => shift!("shl", $w, x, b, fl),
                Alu::Shr => shift!("shr", $w, x, b, fl),
                Alu::Sar => shift!("sar", $w, x, b, fl),
                Alu::Rol => shift!("rol", $w, x, b, fl),
                Alu::Ror => shift!("ror", $w, x, b, fl),
            }
            *a = x;
            *f = fl;
            Some(())
        }
    };
}

width_fn!(run8, "l", byte: true, vex: false);
width_fn!(run16, "x", byte: false, vex: false);
width_fn!(run32, "e", byte: false, vex: true);
width_fn!(run64, "r", byte: false, vex: true);

/// Runs `alu` on `a` (the destination) and `b` (the source; unused by the
/// unary operations) as `width`-byte operands, starting from the arithmetic
/// flags of `rflags`. Returns the whole 64-bit register the CPU left (so a
/// 4-byte result is zero-extended, or `a` unchanged where the CPU leaves the
/// destination alone, as `BSF` of zero does on some CPUs) and `rflags` with
/// its arithmetic flags replaced by the CPU's. `None` for an operation that
/// has no such width.
pub fn run(alu: Alu, width: usize, a: u64, b: u64, rflags: u64) -> Option<(u64, u64)> {
    let mut x = a;
    let mut f = start_flags(rflags);
    match width {
        1 => run8(alu, &mut x, b, &mut f)?,
        2 => run16(alu, &mut x, b, &mut f)?,
        4 => run32(alu, &mut x, b, &mut f)?,
        8 => run64(alu, &mut x, b, &mut f)?,
        _ => return None,
    }
    Some((x, merge_flags(rflags, f)))
}

/// `rflags` with its arithmetic flags replaced by those of `cpu`.
pub fn merge_flags(rflags: u64, cpu: u64) -> u64 {
    (rflags & !ARITH_FLAGS) | (cpu & ARITH_FLAGS)
}

/// The flags [`run`] and its siblings load before the operation.
pub(crate) fn start_flags(rflags: u64) -> u64 {
    (rflags & ARITH_FLAGS) | RESERVED_FLAG
}

#[cfg(test)]
mod tests {
    use super::*;

    const CF: u64 = 0x1;
    const ZF: u64 = 0x40;
    const SF: u64 = 0x80;
    const OF: u64 = 0x800;

    #[test]
    fn discriminants_round_trip() {
        for (n, alu) in Alu::ALL.iter().enumerate() {
            assert_eq!(Alu::from_u8(n as u8), Some(*alu));
        }
        assert_eq!(Alu::from_u8(Alu::ALL.len() as u8), None);
    }

    #[test]
    fn results_and_flags() {
        // Unsigned overflow of a byte add: result wraps, CF and ZF set.
        let (r, f) = run(Alu::Add, 1, 0xff, 1, 0x202).unwrap();
        assert_eq!(r, 0);
        assert_eq!(f & (CF | ZF | SF | OF), CF | ZF);
        // Non-arithmetic bits of RFLAGS (IF here) are kept as they were.
        assert_eq!(f & 0x200, 0x200);
        // ADC uses the incoming carry; INC keeps it.
        assert_eq!(run(Alu::Adc, 4, 1, 1, CF).unwrap().0, 3);
        assert_eq!(
            run(Alu::Inc, 2, 0x7fff, 0, CF).unwrap(),
            (0x8000, CF | SF | OF | 0x10 | 0x4)
        );
        // Signed overflow of IMUL sets CF and OF; BT copies the bit to CF.
        assert_eq!(
            run(Alu::Imul, 4, 0x1_0000, 0x1_0000, 0).unwrap().1 & (CF | OF),
            CF | OF
        );
        assert_eq!(run(Alu::Bt, 8, 1 << 40, 40, 0).unwrap().1 & CF, CF);
        assert_eq!(run(Alu::Bt, 2, 1 << 3, 19, 0).unwrap().1 & CF, CF); // modulo 16
                                                                        // CMP and TEST leave the destination as it was.
        assert_eq!(run(Alu::Cmp, 8, 5, 7, 0).unwrap().0, 5);
        assert_eq!(run(Alu::Neg, 1, 0, 0, CF).unwrap(), (0, ZF | 0x4));
        assert_eq!(run(Alu::Not, 8, 0, 0, 0x8d5).unwrap(), (u64::MAX, 0x8d5));
        assert_eq!(run(Alu::Sub, 4, 0x1_0000_0000, 1, 0).unwrap().0, 0xffff_ffff);
        // Shifts: CF is the last bit out; a count of 0 (after masking) keeps every flag.
        let (r, f) = run(Alu::Shl, 4, 0x8000_0001, 1, 0).unwrap();
        assert_eq!((r, f & (CF | ZF | SF | OF)), (2, CF | OF));
        assert_eq!(run(Alu::Shr, 1, 0x81, 0x20, 0x8d5).unwrap(), (0x81, 0x8d5));
        assert_eq!(run(Alu::Sar, 2, 0x8000, 15, 0).unwrap().0, 0xffff);
        assert_eq!(run(Alu::Rol, 8, 1 << 63, 1, 0).unwrap().0, 1);
        assert_eq!(run(Alu::Ror, 1, 1, 1, 0).unwrap().0, 0x80);
    }

    #[test]
    fn byte_forms_that_do_not_exist_are_refused() {
        assert_eq!(run(Alu::Imul, 1, 2, 3, 0), None);
        assert_eq!(run(Alu::Bt, 1, 2, 3, 0), None);
        assert_eq!(run(Alu::Add, 3, 2, 3, 0), None);
        assert!(!Alu::Imul.has_width(1) && Alu::Imul.has_width(2) && Alu::Add.has_width(1));
    }
}
