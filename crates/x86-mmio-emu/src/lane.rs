//! Moves between memory and one lane of an XMM register, and broadcasts of
//! a memory value to every lane: what `write_volatile(p, v[1])` and
//! `_mm_insert_epi32(v, read_volatile(p), 2)` compile to once SIMD values
//! meet device registers (`PEXTRD [m], xmm, 1`, `PINSRD xmm, [m], 2`,
//! `MOVHPS [m], xmm`, `EXTRACTPS`, `INSERTPS`, `MOVDDUP`, `VPBROADCASTD`...).
//!
//! Each is one access of the lane's width (1, 2, 4 or 8 bytes). The lane
//! arithmetic is plain byte placement: no flags, no MXCSR.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::regs::{mask, xmm};

/// What a lane instruction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaneOp {
    /// `xmm = src1` with bytes `offset..offset + width` from memory, then
    /// the 4-byte lanes set in `zero` cleared (`INSERTPS`'s mask).
    Insert { offset: u8, zero: u8 },
    /// Memory = bytes `offset..offset + width` of `xmm`.
    Extract { offset: u8 },
    /// `xmm` = the memory value repeated over 16 bytes.
    Broadcast,
}

/// A lane instruction: `xmm` is the register written (loads) or read
/// (stores), `src1` the register whose other bytes a load keeps (`xmm`
/// itself for the legacy forms), `vex` whether a load zeroes bits 128 and
/// up of the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    pub op: LaneOp,
    pub xmm: Register,
    pub src1: Register,
    pub width: usize,
    pub vex: bool,
}

/// What a lane mnemonic does, before its operands say which way.
#[derive(Clone, Copy)]
enum Form {
    /// `PINSR*` (load) and `PEXTR*`/`EXTRACTPS` (store): the lane the
    /// immediate selects.
    Lane,
    /// `INSERTPS`: the lane in immediate bits 5:4, then the zero mask in 3:0.
    Insertps,
    /// `MOVLP*`/`MOVHP*`, load or store: the half at this byte offset.
    Half(u8),
    /// `MOVDDUP` and the broadcasts: loads only.
    Broadcast,
}

/// Every lane mnemonic: its form, width, and whether it is a VEX/EVEX one
/// (a load then zeroes bits 128 and up).
const FORMS: [(Mnemonic, Form, usize, bool); 35] = {
    use Form::{Broadcast, Half, Insertps, Lane};
    use Mnemonic as M;
    [
        (M::Pinsrb, Lane, 1, false),
        (M::Vpinsrb, Lane, 1, true),
        (M::Pinsrw, Lane, 2, false),
        (M::Vpinsrw, Lane, 2, true),
        (M::Pinsrd, Lane, 4, false),
        (M::Vpinsrd, Lane, 4, true),
        (M::Pinsrq, Lane, 8, false),
        (M::Vpinsrq, Lane, 8, true),
        (M::Pextrb, Lane, 1, false),
        (M::Vpextrb, Lane, 1, true),
        (M::Pextrw, Lane, 2, false),
        (M::Vpextrw, Lane, 2, true),
        (M::Pextrd, Lane, 4, false),
        (M::Vpextrd, Lane, 4, true),
        (M::Pextrq, Lane, 8, false),
        (M::Vpextrq, Lane, 8, true),
        (M::Extractps, Lane, 4, false),
        (M::Vextractps, Lane, 4, true),
        (M::Insertps, Insertps, 4, false),
        (M::Vinsertps, Insertps, 4, true),
        (M::Movlps, Half(0), 8, false),
        (M::Movlpd, Half(0), 8, false),
        (M::Vmovlps, Half(0), 8, true),
        (M::Vmovlpd, Half(0), 8, true),
        (M::Movhps, Half(8), 8, false),
        (M::Movhpd, Half(8), 8, false),
        (M::Vmovhps, Half(8), 8, true),
        (M::Vmovhpd, Half(8), 8, true),
        (M::Movddup, Broadcast, 8, false),
        (M::Vmovddup, Broadcast, 8, true),
        (M::Vbroadcastss, Broadcast, 4, true),
        (M::Vpbroadcastb, Broadcast, 1, true),
        (M::Vpbroadcastw, Broadcast, 2, true),
        (M::Vpbroadcastd, Broadcast, 4, true),
        (M::Vpbroadcastq, Broadcast, 8, true),
    ]
};

/// The lane form of `insn`, if it is one this crate emulates (an XMM register
/// of XMM0..15; YMM destinations are refused).
///
/// The operands follow from where the memory operand is: first for a store
/// (`op [m], xmm(, imm)`), second for a legacy load (`op xmm, [m](, imm)`),
/// third for a VEX load with a first source (`vop xmm, src1, [m](, imm)`);
/// an immediate, where the form takes one, comes last.
pub fn classify(insn: &Instruction) -> Option<Lane> {
    let m = insn.mnemonic();
    let &(_, form, width, vex) = FORMS.iter().find(|row| row.0 == m)?;
    let count = insn.op_count();
    let reg = |i: u32| {
        let r = insn.op_register(i);
        (i < count && insn.op_kind(i) == OpKind::Register && xmm(r).is_some()).then_some(r)
    };
    let at = (0..count).find(|&i| insn.op_kind(i) == OpKind::Memory)?;
    let takes_imm = matches!(form, Form::Lane | Form::Insertps);
    if at > 2 || count != at.max(1) + 1 + u32::from(takes_imm) {
        return None;
    }
    let select = if takes_imm {
        let i = count - 1;
        (insn.op_kind(i) == OpKind::Immediate8).then(|| insn.immediate(i) as u8)?
    } else {
        0
    };
    let lane = |select: u8| (select % (16 / width) as u8) * width as u8;
    if at == 0 {
        let xmm = reg(1)?;
        let offset = match form {
            Form::Lane => lane(select),
            Form::Half(offset) => offset,
            Form::Insertps | Form::Broadcast => return None,
        };
        return Some(Lane {
            op: LaneOp::Extract { offset },
            xmm,
            src1: xmm,
            width,
            vex,
        });
    }
    let xmm = reg(0)?;
    let src1 = if at == 2 { reg(1)? } else { xmm };
    let op = match form {
        Form::Lane => LaneOp::Insert {
            offset: lane(select),
            zero: 0,
        },
        Form::Insertps => LaneOp::Insert {
            offset: lane(select >> 4),
            zero: select & 0xf,
        },
        Form::Half(offset) => LaneOp::Insert { offset, zero: 0 },
        Form::Broadcast => LaneOp::Broadcast,
    };
    Some(Lane {
        op,
        xmm,
        src1,
        width,
        vex,
    })
}

/// The 128 bits a load leaves in the destination: `src1` with the memory
/// value `m` (`width` bytes) placed as `op` says.
pub fn loaded(op: LaneOp, src1: u128, m: u64, width: usize) -> u128 {
    let m = u128::from(m & mask(width));
    match op {
        LaneOp::Insert { offset, zero } => {
            let shift = 8 * u32::from(offset);
            let field = u128::from(mask(width)) << shift;
            let mut v = (src1 & !field) | m << shift;
            for lane in 0..4 {
                if zero >> lane & 1 == 1 {
                    v &= !(0xffff_ffffu128 << (32 * lane));
                }
            }
            v
        }
        LaneOp::Broadcast => (0..16 / width).fold(0u128, |v, i| v | m << (8 * width * i)),
        LaneOp::Extract { .. } => src1,
    }
}

/// The `width` bytes a store writes: the lane at `offset` of `value`.
pub fn extracted(value: u128, offset: u8, width: usize) -> u64 {
    (value >> (8 * u32::from(offset))) as u64 & mask(width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_broadcasts_and_extracts() {
        let v = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128;
        let ins = LaneOp::Insert { offset: 8, zero: 0 };
        assert_eq!(
            loaded(ins, v, 0xaabb_ccdd, 4),
            0x0f0e_0d0c_aabb_ccdd_0706_0504_0302_0100
        );
        let ins = LaneOp::Insert {
            offset: 4,
            zero: 0b1001,
        };
        assert_eq!(
            loaded(ins, v, 0x1122_3344, 4),
            0x0000_0000_0b0a_0908_1122_3344_0000_0000
        );
        assert_eq!(
            loaded(LaneOp::Broadcast, 0, 0xab, 1),
            u128::from_le_bytes([0xab; 16])
        );
        assert_eq!(
            loaded(LaneOp::Broadcast, v, 0x1234_5678_9abc_def0, 8),
            0x1234_5678_9abc_def0_1234_5678_9abc_def0
        );
        assert_eq!(extracted(v, 9, 1), 0x09);
        assert_eq!(extracted(v, 8, 8), 0x0f0e_0d0c_0b0a_0908);
    }
}
