//! Carrying out a decoded instruction: its device accesses, its registers and
//! its flags.

use std::io;

use iced_x86::Register;

use super::alu::{self, Alu};
use super::regs::full_register;
use super::sse::{self, Result as SseResultKind};
use crate::regs::{mask, sign_extend};
use crate::{bmi, lane, wide, Extend, Op, Regs, Source};

/// The device side of one emulated instruction, at the operand's address.
/// Each call is one access of exactly `width` bytes.
pub trait Bus {
    /// Reads `width` bytes, little-endian.
    fn read(&mut self, width: usize) -> io::Result<u64>;
    /// Writes the low `width` bytes of `value`, little-endian.
    fn write(&mut self, width: usize, value: u64) -> io::Result<()>;
}

/// Why an instruction could not be carried out.
#[derive(Debug)]
pub enum ExecError {
    /// A register it names is not in the signal frame.
    Context(&'static str),
    /// The device access failed.
    Io(io::Error),
    /// The CPU would raise an exception for these operands (a divide
    /// error, an unmasked SIMD floating-point exception), which the handler
    /// does not emulate. The device was read.
    Exception(&'static str),
}

impl From<io::Error> for ExecError {
    fn from(e: io::Error) -> Self {
        ExecError::Io(e)
    }
}

fn need<T>(value: Option<T>, what: &'static str) -> Result<T, ExecError> {
    value.ok_or(ExecError::Context(what))
}

const DST: &str = "destination register not in the saved context";
const SRC: &str = "source register not in the saved context";
const XMM: &str = "SSE registers not in the saved context";
const WIDTH: &str = "operation has no such width";
const DIVIDE: &str = "divide error (#DE) on a divisor read from the device";
const SIMD: &str = "SIMD floating-point exception (#XM) unmasked in MXCSR";

/// The 64-bit register that contains `reg`, for a 4-byte destination,
/// which the CPU writes whole (zero-extended, or unchanged where it leaves
/// the destination alone). Other widths are returned as they are.
fn whole(reg: Register, width: usize) -> Register {
    match full_register(reg) {
        Some(full) if width == 4 => full,
        _ => reg,
    }
}

/// The accumulator of a `width`-byte operation: AL, AX, EAX or RAX.
fn accumulator(width: usize) -> Register {
    match width {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}

/// Carries out `op` on `regs` and `bus`: the reads, then the writes, then the
/// registers and flags. Every register the instruction names is checked
/// before the device is touched, as a read may have side effects. Does not
/// move RIP.
pub fn execute(op: Op, regs: &mut Regs<'_>, bus: &mut impl Bus) -> Result<(), ExecError> {
    match op {
        Op::Load { dst, width, extend } => {
            need(regs.get(dst), DST)?;
            let raw = bus.read(width)?;
            need(regs.set(dst, loaded_value(raw, width, extend)), DST)?;
        }
        Op::Store { src, width, swap } => {
            let value = need(source_value(regs, src, width), SRC)?;
            bus.write(width, if swap { swap_bytes(value, width) } else { value })?;
        }
        Op::XmmLoad { dst, width, vex } => {
            need(regs.xmm_low(dst), XMM)?;
            let raw = bus.read(width)?;
            need(
                regs.set_xmm(dst, loaded_value(raw, width, Extend::Zero), vex),
                XMM,
            )?;
        }
        Op::XmmStore { src, width } => {
            let value = need(regs.xmm_low(src), XMM)?;
            bus.write(width, value & mask(width))?;
        }
        Op::AluReg { alu, reg, width } => {
            let reg = whole(reg, width);
            let a = need(regs.get(reg), DST)?;
            let m = bus.read(width)?;
            let (result, rflags) = need(alu::run(alu, width, a, m, regs.rflags()), WIDTH)?;
            if alu.writes() {
                need(regs.set(reg, result), DST)?;
            }
            regs.set_rflags(rflags);
        }
        Op::AluMem { alu, src, width } => {
            let b = need(source_value(regs, src, width), SRC)?;
            let m = bus.read(width)?;
            let (result, rflags) = need(alu::run(alu, width, m, b, regs.rflags()), WIDTH)?;
            if alu.writes() {
                bus.write(width, result)?;
            }
            regs.set_rflags(rflags);
        }
        Op::Imul3 { dst, imm, width } => {
            need(regs.get(dst), DST)?;
            let m = bus.read(width)?;
            let (result, rflags) = need(alu::run(Alu::Imul, width, m, imm, regs.rflags()), WIDTH)?;
            need(regs.set(dst, result), DST)?;
            regs.set_rflags(rflags);
        }
        Op::Bmi { bmi, dst, src, width } => {
            need(regs.get(dst), DST)?;
            let other = need(source_value(regs, src, width), SRC)?;
            let m = bus.read(width)?;
            let (result, rflags) = need(bmi::run(bmi, width, m, other, regs.rflags()), WIDTH)?;
            need(regs.set(dst, result), DST)?;
            regs.set_rflags(rflags);
        }
        Op::Mulx { hi, lo, width } => {
            need(regs.get(hi).and(regs.get(lo)), DST)?;
            let rdx = need(regs.get(Register::RDX), SRC)?;
            let m = bus.read(width)?;
            let (high, low) = need(bmi::mulx(width, rdx, m), WIDTH)?;
            // With one register named twice it ends up with the high half.
            need(regs.set(lo, low), DST)?;
            need(regs.set(hi, high), DST)?;
        }
        Op::Wide { op, width } => {
            let rax = need(regs.get(Register::RAX), DST)?;
            let rdx = need(regs.get(Register::RDX), DST)?;
            let m = bus.read(width)?;
            let r = wide::run(op, width, m, rax, rdx, regs.rflags()).ok_or(ExecError::Exception(DIVIDE))?;
            need(regs.set(Register::RAX, r.rax), DST)?;
            need(regs.set(Register::RDX, r.rdx), DST)?;
            regs.set_rflags(r.rflags);
        }
        Op::DoubleShift {
            left,
            src,
            count,
            width,
        } => {
            let b = need(source_value(regs, Source::Reg(src), width), SRC)?;
            let n = need(source_value(regs, count, 1), SRC)?;
            let m = bus.read(width)?;
            let (result, rflags) = need(wide::double_shift(left, width, m, b, n, regs.rflags()), WIDTH)?;
            bus.write(width, result)?;
            regs.set_rflags(rflags);
        }
        Op::Xadd { reg, width } => {
            let reg = whole(reg, width);
            let b = need(regs.get(reg), SRC)?;
            let m = bus.read(width)?;
            let (sum, rflags) = need(alu::run(Alu::Add, width, m, b, regs.rflags()), WIDTH)?;
            bus.write(width, sum & mask(width))?;
            need(regs.set(reg, m), DST)?;
            regs.set_rflags(rflags);
        }
        Op::Cmpxchg { reg, width } => {
            let acc = accumulator(width);
            let new = need(source_value(regs, Source::Reg(reg), width), SRC)?;
            let a = need(regs.get(acc), DST)?;
            let m = bus.read(width)?;
            let (_, rflags) = need(alu::run(Alu::Cmp, width, a, m, regs.rflags()), WIDTH)?;
            if a == m {
                bus.write(width, new)?;
            } else {
                bus.write(width, m)?;
                need(regs.set(whole(acc, width), m), DST)?;
            }
            regs.set_rflags(rflags);
        }
        Op::SetCc { cond } => {
            bus.write(1, u64::from(cond.holds(regs.rflags())))?;
        }
        Op::Cmov { cond, dst, width } => {
            let old = need(regs.get(dst), DST)?;
            let m = bus.read(width)?;
            // Written either way: a 4-byte CMOV zero-extends its destination
            // even when it does not move, as `Regs::set` does.
            let value = if cond.holds(regs.rflags()) { m } else { old };
            need(regs.set(dst, value), DST)?;
        }
        Op::Sse {
            op,
            dst,
            src1,
            width,
            vex,
        } => {
            let mxcsr = need(regs.mxcsr(), XMM)?;
            let kind = op.result();
            let first = match kind {
                SseResultKind::Gpr => {
                    need(regs.get(dst), DST)?;
                    0
                }
                _ => need(regs.xmm128(dst).and(regs.xmm128(src1)), XMM)?,
            };
            let m = bus.read(width)?;
            let int64 = match kind {
                SseResultKind::Gpr => super::regs::gpr(dst).is_some_and(|g| g.size == 8),
                _ => width == 8,
            };
            let r = sse::run(op, first, m, int64, mxcsr);
            if sse::traps(op, &r, mxcsr) {
                return Err(ExecError::Exception(SIMD));
            }
            match kind {
                SseResultKind::Xmm => need(regs.set_xmm128(dst, r.xmm, vex), XMM)?,
                SseResultKind::Flags => regs.set_rflags(alu::merge_flags(regs.rflags(), r.rflags)),
                SseResultKind::Gpr => need(regs.set(dst, r.gpr), DST)?,
            }
            need(regs.set_mxcsr(mxcsr | r.raised), XMM)?;
        }
        Op::Lane(l) => match l.op {
            lane::LaneOp::Extract { offset } => {
                let value = need(regs.xmm128(l.xmm), XMM)?;
                bus.write(l.width, lane::extracted(value, offset, l.width))?;
            }
            _ => {
                let src1 = need(regs.xmm128(l.xmm).and(regs.xmm128(l.src1)), XMM)?;
                let m = bus.read(l.width)?;
                need(
                    regs.set_xmm128(l.xmm, lane::loaded(l.op, src1, m, l.width), l.vex),
                    XMM,
                )?;
            }
        },
    }
    Ok(())
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
