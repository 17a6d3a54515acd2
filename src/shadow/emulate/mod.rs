//! x86-64 emulation of the instruction that faulted on a shadow hole.
//!
//! Emulated, with a memory operand of 1, 2, 4 or 8 bytes (what compilers
//! emit for `read_volatile`/`write_volatile` of `u8`..`u64`, `f32`, `f64` at
//! every optimisation level, LLVM and GCC alike):
//!
//! - moves between a general register (or an immediate) and memory: `MOV`
//!   (also with a 64-bit absolute address), `MOVZX`, `MOVSX`, `MOVSXD`, and
//!   the byte-swapping `MOVBE`;
//! - moves between memory and the low part of an XMM register (XMM0..15):
//!   `MOVD`, `MOVQ`, `MOVSS`, `MOVSD`, and their VEX/EVEX forms `VMOVD`
//!   `VMOVQ` `VMOVSS` `VMOVSD` that compilers emit when AVX is enabled (a
//!   load zeroes the rest of the 128-bit register, a VEX/EVEX load also the
//!   rest of the YMM/ZMM register);
//! - ALU instructions with a memory operand: `ADD ADC SUB SBB AND OR XOR CMP`
//!   (register and memory either way, or memory and immediate), `TEST` (memory
//!   with register or immediate), `INC DEC NEG NOT` on memory, `IMUL` of a
//!   register by memory (optionally by an immediate too), and `BT` of memory
//!   by an immediate, and the shifts and rotates `SHL SAL SHR SAR ROL ROR` of
//!   memory by 1, an immediate or `CL`. A read-modify-write is one read then one write of the
//!   same width, as on the bus; `CMP`, `TEST` and `BT` only read. Results and
//!   RFLAGS come from running the same operation on the CPU ([`alu`]);
//! - the bit scans and counts that `trailing_zeros`, `leading_zeros`,
//!   `count_ones` and C's `__builtin_ctz`/`clz`/`popcount` of a register
//!   compile to: `BSF BSR TZCNT LZCNT POPCNT`, and BMI1's `BLSR BLSI BLSMSK`;
//! - the BMI1/BMI2 three-operand forms of `-C target-cpu=haswell` and
//!   `-march=x86-64-v3`: `ANDN BEXTR BZHI SHLX SHRX SARX PDEP PEXT RORX MULX`
//!   ([`bmi`]);
//! - the one-operand `MUL IMUL DIV IDIV` on RDX:RAX (`u128` products, C's
//!   `x / *reg`), and the funnel shifts `SHLD SHRD` of memory ([`wide`]); a
//!   division that would raise the divide error is refused;
//! - `SETcc` of a byte in memory (a `bool` stored to a register) and
//!   `CMOVcc` from memory (which reads whether or not it moves);
//! - scalar SSE arithmetic with a memory source, legacy and VEX: `ADD SUB
//!   MUL DIV MIN MAX SQRT` of `SS`/`SD`, the conversions `CVTSS2SD CVTSD2SS
//!   CVTSI2SS CVTSI2SD CVT(T)SS2SI CVT(T)SD2SI` (and AVX-512's unsigned
//!   `VCVTUSI2SS/SD VCVT(T)SS2USI VCVT(T)SD2USI`), and the comparisons
//!   `(U)COMISS (U)COMISD`, computed under the thread's MXCSR ([`sse`]); one
//!   that raises an exception the thread has unmasked is refused;
//! - moves between memory and one lane of an XMM register, and broadcasts
//!   of memory to every lane of one: `PINSRB/W/D/Q PEXTRB/W/D/Q EXTRACTPS
//!   INSERTPS MOVHPS MOVHPD MOVLPS MOVLPD MOVDDUP`, their VEX forms, and
//!   `VBROADCASTSS VPBROADCASTB/W/D/Q` into an XMM register ([`lane`]).
//!
//! Everything else is refused and the handler reports it rather than guess:
//! `LOCK`-prefixed instructions and `XCHG` (atomic on the bus, which a read
//! then a write is not), anything wider than 8 bytes (packed SSE/AVX),
//! other VEX/EVEX instructions, masked EVEX forms, string instructions,
//! `fs:`/`gs:` addressing.

mod alu;
mod bmi;
mod exec;
mod lane;
mod regs;
mod sse;
mod wide;

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction, MemorySize, Mnemonic, OpKind, Register};

pub(crate) use alu::Alu;
pub(crate) use bmi::Bmi;
pub(crate) use exec::{execute, Bus, ExecError};
pub(crate) use lane::{Lane, LaneOp};
pub(crate) use regs::Regs;
use regs::{gpr, mask, sign_extend, xmm};
pub(crate) use sse::Sse;
pub(crate) use wide::Wide;

/// Longest x86 instruction.
pub(crate) const MAX_INSN_LEN: usize = 15;

/// What the faulting instruction does to memory and registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
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
    /// A move between memory and one lane of an XMM register, or a
    /// broadcast of memory to every lane ([`lane`]).
    Lane(Lane),
}

/// An x86 condition (the `cc` of `SETcc`/`CMOVcc`), numbered as the
/// encoding numbers them: O NO B AE E NE BE A S NS P NP L GE LE G.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cond(u8);

impl Cond {
    /// The condition with encoding number `n` (0..16).
    pub(crate) fn new(n: u8) -> Option<Cond> {
        (n < 16).then_some(Cond(n))
    }

    /// Its encoding number.
    pub(crate) fn number(self) -> u8 {
        self.0
    }

    /// Whether the condition holds for `rflags`: the even conditions test
    /// a flag combination, the odd ones its negation.
    pub(crate) fn holds(self, rflags: u64) -> bool {
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
pub(crate) enum Extend {
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
pub(crate) enum Source {
    /// A general register.
    Reg(Register),
    /// An immediate, already sign-extended to 64 bits where the encoding says so.
    Imm(u64),
}

/// The memory operand of an instruction: `base + index * scale + disp`.
/// For RIP-relative operands `base` is `RIP` and `disp` already the
/// absolute address (the decoder knew the instruction's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mem {
    pub(crate) base: Register,
    pub(crate) index: Register,
    pub(crate) scale: u8,
    pub(crate) disp: u64,
}

/// Everything the handler needs of an emulable instruction at a known address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) op: Op,
    pub(crate) mem: Mem,
    /// Length in bytes.
    pub(crate) len: u8,
}

impl Op {
    /// The access width in bytes.
    pub(crate) fn width(&self) -> usize {
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
            | Op::Sse { width, .. } => width,
            Op::Lane(lane) => lane.width,
            Op::SetCc { .. } => 1,
        }
    }
}

impl Decoded {
    /// The access width in bytes.
    pub(crate) fn width(&self) -> usize {
        self.op.width()
    }
}

/// Decodes one instruction from `bytes`, located at `ip`. Returns `None` if
/// `bytes` end before the instruction does (the caller may fetch more), and
/// an instruction for which [`Instruction::is_invalid`] holds if it is not
/// valid x86-64.
pub(crate) fn decode(bytes: &[u8], ip: u64) -> Option<Instruction> {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    (decoder.last_error() != DecoderError::NoMoreBytes).then_some(insn)
}

/// `insn` reduced to what the handler needs, if barmap emulates it.
pub(crate) fn emulable(insn: &Instruction) -> Option<Decoded> {
    Some(Decoded {
        op: classify(insn)?,
        mem: Mem {
            base: insn.memory_base(),
            index: insn.memory_index(),
            scale: insn.memory_index_scale() as u8,
            disp: insn.memory_displacement64(),
        },
        len: insn.len() as u8,
    })
}

/// The width in bytes of a scalar memory operand of at most 8 bytes.
fn scalar_width(size: MemorySize) -> Option<usize> {
    Some(match size {
        MemorySize::UInt8 | MemorySize::Int8 => 1,
        MemorySize::UInt16 | MemorySize::Int16 => 2,
        MemorySize::UInt32 | MemorySize::Int32 | MemorySize::Float32 => 4,
        MemorySize::UInt64 | MemorySize::Int64 | MemorySize::Float64 => 8,
        _ => return None,
    })
}

/// The ALU operation of a mnemonic barmap emulates with a memory operand.
fn alu_of(mnemonic: Mnemonic) -> Option<Alu> {
    Some(match mnemonic {
        Mnemonic::Add => Alu::Add,
        Mnemonic::Adc => Alu::Adc,
        Mnemonic::Sub => Alu::Sub,
        Mnemonic::Sbb => Alu::Sbb,
        Mnemonic::And => Alu::And,
        Mnemonic::Or => Alu::Or,
        Mnemonic::Xor => Alu::Xor,
        Mnemonic::Cmp => Alu::Cmp,
        Mnemonic::Test => Alu::Test,
        Mnemonic::Inc => Alu::Inc,
        Mnemonic::Dec => Alu::Dec,
        Mnemonic::Neg => Alu::Neg,
        Mnemonic::Not => Alu::Not,
        Mnemonic::Imul => Alu::Imul,
        Mnemonic::Bt => Alu::Bt,
        Mnemonic::Shl | Mnemonic::Sal => Alu::Shl,
        Mnemonic::Shr => Alu::Shr,
        Mnemonic::Sar => Alu::Sar,
        Mnemonic::Rol => Alu::Rol,
        Mnemonic::Ror => Alu::Ror,
        Mnemonic::Bsf => Alu::Bsf,
        Mnemonic::Bsr => Alu::Bsr,
        Mnemonic::Tzcnt => Alu::Tzcnt,
        Mnemonic::Lzcnt => Alu::Lzcnt,
        Mnemonic::Popcnt => Alu::Popcnt,
        Mnemonic::Blsr => Alu::Blsr,
        Mnemonic::Blsi => Alu::Blsi,
        Mnemonic::Blsmsk => Alu::Blsmsk,
        _ => return None,
    })
}

fn is_immediate(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

/// The three-operand BMI operation of a mnemonic.
fn bmi_of(mnemonic: Mnemonic) -> Option<Bmi> {
    Some(match mnemonic {
        Mnemonic::Andn => Bmi::Andn,
        Mnemonic::Bextr => Bmi::Bextr,
        Mnemonic::Bzhi => Bmi::Bzhi,
        Mnemonic::Shlx => Bmi::Shlx,
        Mnemonic::Shrx => Bmi::Shrx,
        Mnemonic::Sarx => Bmi::Sarx,
        Mnemonic::Pdep => Bmi::Pdep,
        Mnemonic::Pext => Bmi::Pext,
        Mnemonic::Rorx => Bmi::Rorx,
        _ => return None,
    })
}

/// The one-operand multiply or divide of a mnemonic.
fn wide_of(mnemonic: Mnemonic) -> Option<Wide> {
    Some(match mnemonic {
        Mnemonic::Mul => Wide::Mul,
        Mnemonic::Imul => Wide::Imul,
        Mnemonic::Div => Wide::Div,
        Mnemonic::Idiv => Wide::Idiv,
        _ => return None,
    })
}

/// The scalar SSE operation of a mnemonic, and whether it is the VEX form.
fn sse_of(mnemonic: Mnemonic) -> Option<(Sse, bool)> {
    const FORMS: [(Mnemonic, Mnemonic, Sse); 32] = [
        (Mnemonic::Addss, Mnemonic::Vaddss, Sse::Addss),
        (Mnemonic::Addsd, Mnemonic::Vaddsd, Sse::Addsd),
        (Mnemonic::Subss, Mnemonic::Vsubss, Sse::Subss),
        (Mnemonic::Subsd, Mnemonic::Vsubsd, Sse::Subsd),
        (Mnemonic::Mulss, Mnemonic::Vmulss, Sse::Mulss),
        (Mnemonic::Mulsd, Mnemonic::Vmulsd, Sse::Mulsd),
        (Mnemonic::Divss, Mnemonic::Vdivss, Sse::Divss),
        (Mnemonic::Divsd, Mnemonic::Vdivsd, Sse::Divsd),
        (Mnemonic::Minss, Mnemonic::Vminss, Sse::Minss),
        (Mnemonic::Minsd, Mnemonic::Vminsd, Sse::Minsd),
        (Mnemonic::Maxss, Mnemonic::Vmaxss, Sse::Maxss),
        (Mnemonic::Maxsd, Mnemonic::Vmaxsd, Sse::Maxsd),
        (Mnemonic::Sqrtss, Mnemonic::Vsqrtss, Sse::Sqrtss),
        (Mnemonic::Sqrtsd, Mnemonic::Vsqrtsd, Sse::Sqrtsd),
        (Mnemonic::Cvtss2sd, Mnemonic::Vcvtss2sd, Sse::Cvtss2sd),
        (Mnemonic::Cvtsd2ss, Mnemonic::Vcvtsd2ss, Sse::Cvtsd2ss),
        (Mnemonic::Cvtsi2ss, Mnemonic::Vcvtsi2ss, Sse::Cvtsi2ss),
        (Mnemonic::Cvtsi2sd, Mnemonic::Vcvtsi2sd, Sse::Cvtsi2sd),
        (Mnemonic::Ucomiss, Mnemonic::Vucomiss, Sse::Ucomiss),
        (Mnemonic::Ucomisd, Mnemonic::Vucomisd, Sse::Ucomisd),
        (Mnemonic::Comiss, Mnemonic::Vcomiss, Sse::Comiss),
        (Mnemonic::Comisd, Mnemonic::Vcomisd, Sse::Comisd),
        (Mnemonic::Cvtss2si, Mnemonic::Vcvtss2si, Sse::Cvtss2si),
        (Mnemonic::Cvtsd2si, Mnemonic::Vcvtsd2si, Sse::Cvtsd2si),
        (Mnemonic::Cvttss2si, Mnemonic::Vcvttss2si, Sse::Cvttss2si),
        (Mnemonic::Cvttsd2si, Mnemonic::Vcvttsd2si, Sse::Cvttsd2si),
        // EVEX only: no legacy mnemonic matches.
        (Mnemonic::INVALID, Mnemonic::Vcvtusi2ss, Sse::Cvtusi2ss),
        (Mnemonic::INVALID, Mnemonic::Vcvtusi2sd, Sse::Cvtusi2sd),
        (Mnemonic::INVALID, Mnemonic::Vcvtss2usi, Sse::Cvtss2usi),
        (Mnemonic::INVALID, Mnemonic::Vcvtsd2usi, Sse::Cvtsd2usi),
        (Mnemonic::INVALID, Mnemonic::Vcvttss2usi, Sse::Cvttss2usi),
        (Mnemonic::INVALID, Mnemonic::Vcvttsd2usi, Sse::Cvttsd2usi),
    ];
    FORMS.iter().find_map(|&(legacy, vex, op)| {
        if mnemonic == legacy && legacy != Mnemonic::INVALID {
            Some((op, false))
        } else {
            (mnemonic == vex).then_some((op, true))
        }
    })
}

/// The condition of a `SETcc` mnemonic.
fn setcc_of(mnemonic: Mnemonic) -> Option<Cond> {
    const SETCC: [Mnemonic; 16] = [
        Mnemonic::Seto,
        Mnemonic::Setno,
        Mnemonic::Setb,
        Mnemonic::Setae,
        Mnemonic::Sete,
        Mnemonic::Setne,
        Mnemonic::Setbe,
        Mnemonic::Seta,
        Mnemonic::Sets,
        Mnemonic::Setns,
        Mnemonic::Setp,
        Mnemonic::Setnp,
        Mnemonic::Setl,
        Mnemonic::Setge,
        Mnemonic::Setle,
        Mnemonic::Setg,
    ];
    Cond::new(SETCC.iter().position(|&m| m == mnemonic)? as u8)
}

/// The condition of a `CMOVcc` mnemonic.
fn cmovcc_of(mnemonic: Mnemonic) -> Option<Cond> {
    const CMOVCC: [Mnemonic; 16] = [
        Mnemonic::Cmovo,
        Mnemonic::Cmovno,
        Mnemonic::Cmovb,
        Mnemonic::Cmovae,
        Mnemonic::Cmove,
        Mnemonic::Cmovne,
        Mnemonic::Cmovbe,
        Mnemonic::Cmova,
        Mnemonic::Cmovs,
        Mnemonic::Cmovns,
        Mnemonic::Cmovp,
        Mnemonic::Cmovnp,
        Mnemonic::Cmovl,
        Mnemonic::Cmovge,
        Mnemonic::Cmovle,
        Mnemonic::Cmovg,
    ];
    Cond::new(CMOVCC.iter().position(|&m| m == mnemonic)? as u8)
}

/// The memory effect of `insn` if it is one barmap emulates.
pub(crate) fn classify(insn: &Instruction) -> Option<Op> {
    // VEX/EVEX forms have mnemonics of their own (`VMOVSD`...): only those
    // named below are accepted, and none with an EVEX opmask.
    if insn.has_lock_prefix()
        || insn.op_mask() != Register::None
        || matches!(insn.memory_segment(), Register::FS | Register::GS)
    {
        return None;
    }
    if let Some(lane) = lane::classify(insn) {
        return Some(Op::Lane(lane));
    }
    let width = scalar_width(insn.memory_size())?;
    let count = insn.op_count();
    let kind = |i: u32| {
        if i < count {
            insn.op_kind(i)
        } else {
            OpKind::Register
        }
    };
    let mem = |i: u32| i < count && insn.op_kind(i) == OpKind::Memory;
    // A general register operand `i` exactly as wide as the access.
    let gpr_at = |i: u32| {
        let reg = insn.op_register(i);
        (i < count && kind(i) == OpKind::Register && gpr(reg).is_some_and(|g| g.size == width)).then_some(reg)
    };
    let xmm_at = |i: u32| {
        let reg = insn.op_register(i);
        (i < count && kind(i) == OpKind::Register && xmm(reg).is_some()).then_some(reg)
    };
    // Operand 1 as a store's source: a register of the access width or an immediate.
    let source = || match gpr_at(1) {
        Some(reg) => Some(Source::Reg(reg)),
        None => (count == 2 && is_immediate(kind(1))).then(|| Source::Imm(insn.immediate(1))),
    };
    let mnemonic = insn.mnemonic();
    match mnemonic {
        Mnemonic::Mov | Mnemonic::Movbe if count == 2 => {
            let swap = mnemonic == Mnemonic::Movbe;
            let extend = if swap { Extend::Swap } else { Extend::None };
            if mem(1) {
                return gpr_at(0).map(|dst| Op::Load { dst, width, extend });
            }
            let src = if swap {
                gpr_at(1).map(Source::Reg)
            } else {
                source()
            };
            src.filter(|_| mem(0)).map(|src| Op::Store { src, width, swap })
        }
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd if count == 2 && mem(1) => {
            let extend = if mnemonic == Mnemonic::Movzx {
                Extend::Zero
            } else {
                Extend::Sign
            };
            let dst = insn.op0_register();
            (kind(0) == OpKind::Register && gpr(dst).is_some_and(|g| g.size >= width)).then_some(Op::Load {
                dst,
                width,
                extend,
            })
        }
        Mnemonic::Movd
        | Mnemonic::Movq
        | Mnemonic::Movss
        | Mnemonic::Movsd
        | Mnemonic::Vmovd
        | Mnemonic::Vmovq
        | Mnemonic::Vmovss
        | Mnemonic::Vmovsd
            if count == 2 =>
        {
            let vex = matches!(
                mnemonic,
                Mnemonic::Vmovd | Mnemonic::Vmovq | Mnemonic::Vmovss | Mnemonic::Vmovsd
            );
            if mem(1) {
                xmm_at(0).map(|dst| Op::XmmLoad { dst, width, vex })
            } else {
                xmm_at(1)
                    .filter(|_| mem(0))
                    .map(|src| Op::XmmStore { src, width })
            }
        }
        Mnemonic::Imul if count == 3 && mem(1) && is_immediate(kind(2)) => {
            let dst = gpr_at(0)?;
            Alu::Imul.has_width(width).then(|| Op::Imul3 {
                dst,
                imm: insn.immediate(2),
                width,
            })
        }
        _ if bmi_of(mnemonic).is_some() => {
            let bmi = bmi_of(mnemonic)?;
            let dst = gpr_at(0)?;
            let src = match bmi {
                Bmi::Rorx if mem(1) && is_immediate(kind(2)) => Source::Imm(insn.immediate(2)),
                Bmi::Rorx => return None,
                _ if bmi.memory_last() && mem(2) => Source::Reg(gpr_at(1)?),
                _ if !bmi.memory_last() && mem(1) => Source::Reg(gpr_at(2)?),
                _ => return None,
            };
            (count == 3 && matches!(width, 4 | 8)).then_some(Op::Bmi { bmi, dst, src, width })
        }
        Mnemonic::Mulx if count == 3 && mem(2) && matches!(width, 4 | 8) => Some(Op::Mulx {
            hi: gpr_at(0)?,
            lo: gpr_at(1)?,
            width,
        }),
        Mnemonic::Mul | Mnemonic::Imul | Mnemonic::Div | Mnemonic::Idiv if count == 1 && mem(0) => {
            Some(Op::Wide {
                op: wide_of(mnemonic)?,
                width,
            })
        }
        Mnemonic::Shld | Mnemonic::Shrd if count == 3 && mem(0) && width >= 2 => {
            let src = gpr_at(1)?;
            let count = if is_immediate(kind(2)) {
                Source::Imm(insn.immediate(2))
            } else if kind(2) == OpKind::Register && insn.op2_register() == Register::CL {
                Source::Reg(Register::CL)
            } else {
                return None;
            };
            Some(Op::DoubleShift {
                left: mnemonic == Mnemonic::Shld,
                src,
                count,
                width,
            })
        }
        _ if sse_of(mnemonic).is_some() => {
            let (op, vex) = sse_of(mnemonic)?;
            if !op.has_width(width)
                || insn.suppress_all_exceptions()
                || insn.rounding_control() != iced_x86::RoundingControl::None
            {
                return None;
            }
            let (dst, src1) = match op.result() {
                sse::Result::Xmm if vex && count == 3 && mem(2) => (xmm_at(0)?, xmm_at(1)?),
                sse::Result::Xmm if !vex && count == 2 && mem(1) => (xmm_at(0)?, insn.op0_register()),
                sse::Result::Flags if count == 2 && mem(1) => (xmm_at(0)?, insn.op0_register()),
                sse::Result::Gpr if count == 2 && mem(1) => {
                    let dst = insn.op0_register();
                    (gpr(dst).is_some_and(|g| matches!(g.size, 4 | 8)) && kind(0) == OpKind::Register)
                        .then_some((dst, Register::None))?
                }
                _ => return None,
            };
            Some(Op::Sse {
                op,
                dst,
                src1,
                width,
                vex,
            })
        }
        _ if setcc_of(mnemonic).is_some() => {
            let cond = setcc_of(mnemonic)?;
            (count == 1 && mem(0) && width == 1).then_some(Op::SetCc { cond })
        }
        _ if cmovcc_of(mnemonic).is_some() => {
            let cond = cmovcc_of(mnemonic)?;
            let dst = gpr_at(0).filter(|_| count == 2 && mem(1) && width >= 2)?;
            Some(Op::Cmov { cond, dst, width })
        }
        _ => {
            let alu = alu_of(mnemonic)?;
            if !alu.has_width(width) {
                return None;
            }
            let op = match (alu, count) {
                (_, 2) if alu.register_only() && mem(1) => Op::AluReg {
                    alu,
                    reg: gpr_at(0)?,
                    width,
                },
                _ if alu.register_only() => return None,
                (Alu::Inc | Alu::Dec | Alu::Neg | Alu::Not, 1) if mem(0) => Op::AluMem {
                    alu,
                    src: Source::Imm(0),
                    width,
                },
                (Alu::Bt, 2) if mem(0) && is_immediate(kind(1)) => Op::AluMem {
                    alu,
                    src: Source::Imm(insn.immediate(1)),
                    width,
                },
                (Alu::Shl | Alu::Shr | Alu::Sar | Alu::Rol | Alu::Ror, 2) if mem(0) => {
                    let src = if is_immediate(kind(1)) {
                        Source::Imm(insn.immediate(1))
                    } else if kind(1) == OpKind::Register && insn.op1_register() == Register::CL {
                        Source::Reg(Register::CL)
                    } else {
                        return None;
                    };
                    Op::AluMem { alu, src, width }
                }
                (
                    Alu::Inc
                    | Alu::Dec
                    | Alu::Neg
                    | Alu::Not
                    | Alu::Bt
                    | Alu::Shl
                    | Alu::Shr
                    | Alu::Sar
                    | Alu::Rol
                    | Alu::Ror,
                    _,
                ) => return None,
                (Alu::Test, 2) if mem(0) => Op::AluMem {
                    alu,
                    src: source()?,
                    width,
                },
                (Alu::Imul, 2) if mem(1) => Op::AluReg {
                    alu,
                    reg: gpr_at(0)?,
                    width,
                },
                (Alu::Test | Alu::Imul, _) => return None,
                (_, 2) if mem(1) => Op::AluReg {
                    alu,
                    reg: gpr_at(0)?,
                    width,
                },
                (_, 2) if mem(0) => Op::AluMem {
                    alu,
                    src: source()?,
                    width,
                },
                _ => return None,
            };
            Some(op)
        }
    }
}

impl Regs<'_> {
    /// The address `mem` refers to, or `None` if it uses a register that is
    /// not saved in the context.
    pub(crate) fn effective_address(&self, mem: &Mem) -> Option<u64> {
        let Mem {
            base,
            index,
            scale,
            disp,
        } = *mem;
        let mut ea = disp;
        if !matches!(base, Register::None | Register::RIP | Register::EIP) {
            ea = ea.wrapping_add(self.get(base)?);
        }
        if index != Register::None {
            ea = ea.wrapping_add(self.get(index)?.wrapping_mul(u64::from(scale)));
        }
        let is32 = |r: Register| gpr(r).is_some_and(|g| g.size == 4);
        let addr32 = is32(base) || is32(index) || base == Register::EIP;
        Some(if addr32 { ea & mask(4) } else { ea })
    }
}

/// The value a load of `width` bytes that read `raw` leaves in its
/// destination, before the partial-register rule of [`Regs::set`].
pub(crate) fn loaded_value(raw: u64, width: usize, extend: Extend) -> u64 {
    match extend {
        Extend::None | Extend::Zero => raw & mask(width),
        Extend::Sign => sign_extend(raw, width),
        Extend::Swap => swap_bytes(raw, width),
    }
}

/// The low `width` bytes of `value` in reverse order.
pub(crate) fn swap_bytes(value: u64, width: usize) -> u64 {
    value.swap_bytes() >> (64 - 8 * width as u32)
}

/// The value of `src` cut to `width` bytes, or `None` if its register is not
/// saved in the context.
pub(crate) fn source_value(regs: &Regs<'_>, src: Source, width: usize) -> Option<u64> {
    let value = match src {
        Source::Reg(reg) => regs.get(reg)?,
        Source::Imm(imm) => imm,
    };
    Some(value & mask(width))
}

#[cfg(test)]
mod tests;
