//! From an iced instruction to the [`Op`] this crate emulates, or a refusal.

use iced_x86::{Instruction, MemorySize, Mnemonic, OpKind, Register};

use crate::regs::{gpr, xmm};
use crate::{lane, sse, Alu, Bmi, Cond, Extend, Op, Source, Sse, Wide};

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

/// The ALU operation of a mnemonic this crate emulates with a memory operand.
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

/// The memory effect of `insn` if it is one this crate emulates.
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
        Mnemonic::Xadd | Mnemonic::Cmpxchg if count == 2 && mem(0) => {
            let reg = gpr_at(1)?;
            Some(if mnemonic == Mnemonic::Xadd {
                Op::Xadd { reg, width }
            } else {
                Op::Cmpxchg { reg, width }
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
