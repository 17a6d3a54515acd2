//! The decoded form of an emulable instruction: what it does to memory and
//! registers, and where its memory operand is.

use iced_x86::Register;

use crate::{Alu, Bmi, Lane, Sse, Wide};

/// What the faulting instruction does to memory and registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `width` bytes into the general register `dst`, widened or
    /// byte-swapped as `extend` says.
    Load {
        dst: Register,
        width: usize,
        extend: Extend,
    },
    /// Write the low `width` bytes of `src`, byte-swapped if `swap` (`MOVBE`).
    Store { src: Source, width: usize, swap: bool },
    /// Read `width` bytes into the XMM register `dst`, zero-extended to 128
    /// bits, or to the widest vector register if `vex` (`VMOVSD`...).
    XmmLoad { dst: Register, width: usize, vex: bool },
    /// Write the low `width` bytes of the XMM register `src`.
    XmmStore { src: Register, width: usize },
    /// `reg = reg <alu> [mem]`, or only the flags for `CMP`; the bit scans,
    /// counts and BMI1 operations compute `reg` from `[mem]` alone (except
    /// that `BSF`/`BSR` of zero may leave it as it was).
    AluReg { alu: Alu, reg: Register, width: usize },
    /// `[mem] = [mem] <alu> src`, or only the flags for `CMP`, `TEST`, `BT`.
    /// Unary operations ignore `src`.
    AluMem { alu: Alu, src: Source, width: usize },
    /// `dst = [mem] * imm` (three-operand `IMUL`).
    Imul3 { dst: Register, imm: u64, width: usize },
    /// `dst = op(src, [mem])`, a three-operand BMI instruction; `src` is a
    /// register, or `RORX`'s immediate.
    Bmi {
        bmi: Bmi,
        dst: Register,
        src: Source,
        width: usize,
    },
    /// `hi:lo = RDX * [mem]` (`MULX`).
    Mulx {
        hi: Register,
        lo: Register,
        width: usize,
    },
    /// `MUL`, `IMUL`, `DIV` or `IDIV` of RDX:RAX by `[mem]`.
    Wide { op: Wide, width: usize },
    /// `[mem] = SHLD/SHRD([mem], src, count)`.
    DoubleShift {
        left: bool,
        src: Register,
        count: Source,
        width: usize,
    },
    /// `[mem] = 1` if the condition holds, else 0 (`SETcc`, one byte).
    SetCc { cond: Cond },
    /// `dst = [mem]` if the condition holds (`CMOVcc`, which reads memory
    /// either way).
    Cmov { cond: Cond, dst: Register, width: usize },
    /// A scalar SSE operation on `[mem]` and `src1` (an XMM register, the
    /// destination itself for the legacy forms), into `dst` (an XMM
    /// register, or a general one for the conversions to integers) or the
    /// flags. A VEX/EVEX form (`vex`) zeroes the destination above bit 127.
    Sse {
        op: Sse,
        dst: Register,
        src1: Register,
        width: usize,
        vex: bool,
    },
    /// `XADD [mem], reg`: `[mem] = [mem] + reg` and `reg` = the old `[mem]`,
    /// flags as `ADD`. One read, then one write.
    Xadd { reg: Register, width: usize },
    /// `CMPXCHG [mem], reg`: compares the accumulator (AL, AX, EAX or RAX)
    /// with `[mem]` (flags as `CMP`); if equal writes `reg` to `[mem]`, else
    /// loads `[mem]` into the accumulator and writes `[mem]` back unchanged,
    /// as the CPU does (its destination gets a write cycle whatever the
    /// comparison). One read, then one write, either way.
    Cmpxchg { reg: Register, width: usize },
    /// A move between memory and one lane of an XMM register, or a
    /// broadcast of memory to every lane ([`Lane`]).
    Lane(Lane),
}

/// An x86 condition (the `cc` of `SETcc`/`CMOVcc`), numbered as the
/// encoding numbers them: O NO B AE E NE BE A S NS P NP L GE LE G.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cond(u8);

impl Cond {
    /// The condition with encoding number `n` (0..16).
    pub fn new(n: u8) -> Option<Cond> {
        (n < 16).then_some(Cond(n))
    }

    /// Its encoding number.
    pub fn number(self) -> u8 {
        self.0
    }

    /// Whether the condition holds for `rflags`: the even conditions test
    /// a flag combination, the odd ones its negation.
    pub fn holds(self, rflags: u64) -> bool {
        let flag = |bit: u32| rflags >> bit & 1 == 1;
        let (cf, pf, zf, sf, of) = (flag(0), flag(2), flag(6), flag(7), flag(11));
        let base = match self.0 >> 1 {
            0 => of,
            1 => cf,
            2 => zf,
            3 => cf || zf,
            4 => sf,
            5 => pf,
            6 => sf != of,
            _ => zf || sf != of,
        };
        base != (self.0 & 1 == 1)
    }
}

/// How a load into a general register treats the bytes it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// Same width as the destination (`MOV`).
    None,
    /// `MOVZX`.
    Zero,
    /// `MOVSX`/`MOVSXD`.
    Sign,
    /// `MOVBE`: the bytes in reverse order.
    Swap,
}

/// A value an instruction takes from a register or its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A general register.
    Reg(Register),
    /// An immediate, already sign-extended to 64 bits where the encoding says so.
    Imm(u64),
}

/// The memory operand of an instruction: `base + index * scale + disp`.
/// For RIP-relative operands `base` is `RIP` and `disp` already the
/// absolute address (the decoder knew the instruction's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mem {
    pub base: Register,
    pub index: Register,
    pub scale: u8,
    pub disp: u64,
}

/// Everything the handler needs of an emulable instruction at a known address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub op: Op,
    pub mem: Mem,
    /// Length in bytes.
    pub len: u8,
}

impl Op {
    /// The access width in bytes.
    pub fn width(&self) -> usize {
        match *self {
            Op::Load { width, .. }
            | Op::Store { width, .. }
            | Op::XmmLoad { width, .. }
            | Op::XmmStore { width, .. }
            | Op::AluReg { width, .. }
            | Op::AluMem { width, .. }
            | Op::Imul3 { width, .. }
            | Op::Bmi { width, .. }
            | Op::Mulx { width, .. }
            | Op::Wide { width, .. }
            | Op::DoubleShift { width, .. }
            | Op::Cmov { width, .. }
            | Op::Xadd { width, .. }
            | Op::Cmpxchg { width, .. }
            | Op::Sse { width, .. } => width,
            Op::Lane(lane) => lane.width,
            Op::SetCc { .. } => 1,
        }
    }
}

impl Decoded {
    /// The access width in bytes.
    pub fn width(&self) -> usize {
        self.op.width()
    }
}
