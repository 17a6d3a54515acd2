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
pub(crate) enum LaneOp {
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
pub(crate) struct Lane {
    pub(crate) op: LaneOp,
    pub(crate) xmm: Register,
    pub(crate) src1: Register,
    pub(crate) width: usize,
    pub(crate) vex: bool,
}

/// The lane form of `insn`, if it is one barmap emulates (an XMM register
/// of XMM0..15; YMM destinations are refused).
pub(crate) fn classify(insn: &Instruction) -> Option<Lane> {
    use Mnemonic as M;
    let count = insn.op_count();
    let mem = |i: u32| i < count && insn.op_kind(i) == OpKind::Memory;
    let reg = |i: u32| {
        let r = insn.op_register(i);
        (i < count && insn.op_kind(i) == OpKind::Register && xmm(r).is_some()).then_some(r)
    };
    let imm = |i: u32| (i < count && insn.op_kind(i) == OpKind::Immediate8).then(|| insn.immediate(i) as u8);
    let m = insn.mnemonic();
    let vex = matches!(
        m,
        M::Vpinsrb
            | M::Vpinsrw
            | M::Vpinsrd
            | M::Vpinsrq
            | M::Vinsertps
            | M::Vmovhps
            | M::Vmovhpd
            | M::Vmovlps
            | M::Vmovlpd
            | M::Vmovddup
            | M::Vbroadcastss
            | M::Vpbroadcastb
            | M::Vpbroadcastw
            | M::Vpbroadcastd
            | M::Vpbroadcastq
    );
    // The width of each lane mnemonic, legacy and VEX alike.
    let width = match m {
        M::Pinsrb | M::Vpinsrb | M::Pextrb | M::Vpextrb | M::Vpbroadcastb => 1,
        M::Pinsrw | M::Vpinsrw | M::Pextrw | M::Vpextrw | M::Vpbroadcastw => 2,
        M::Pinsrd
        | M::Vpinsrd
        | M::Pextrd
        | M::Vpextrd
        | M::Extractps
        | M::Vextractps
        | M::Insertps
        | M::Vinsertps
        | M::Vbroadcastss
        | M::Vpbroadcastd => 4,
        M::Pinsrq
        | M::Vpinsrq
        | M::Pextrq
        | M::Vpextrq
        | M::Movhps
        | M::Movhpd
        | M::Movlps
        | M::Movlpd
        | M::Vmovhps
        | M::Vmovhpd
        | M::Vmovlps
        | M::Vmovlpd
        | M::Movddup
        | M::Vmovddup
        | M::Vpbroadcastq => 8,
        _ => return None,
    };
    let lanes = (16 / width) as u8;
    let lane = |select: u8| (select % lanes) * width as u8;
    let half = |m: Mnemonic| {
        if matches!(m, M::Movhps | M::Movhpd | M::Vmovhps | M::Vmovhpd) {
            8
        } else {
            0
        }
    };
    let (op, xmm, src1) = match m {
        // Stores: `op [m], xmm(, imm)`.
        M::Pextrb
        | M::Vpextrb
        | M::Pextrw
        | M::Vpextrw
        | M::Pextrd
        | M::Vpextrd
        | M::Pextrq
        | M::Vpextrq
        | M::Extractps
        | M::Vextractps
            if count == 3 && mem(0) =>
        {
            let r = reg(1)?;
            (
                LaneOp::Extract {
                    offset: lane(imm(2)?),
                },
                r,
                r,
            )
        }
        M::Movhps | M::Movhpd | M::Movlps | M::Movlpd | M::Vmovhps | M::Vmovhpd | M::Vmovlps | M::Vmovlpd
            if count == 2 && mem(0) =>
        {
            let r = reg(1)?;
            (LaneOp::Extract { offset: half(m) }, r, r)
        }
        // Loads into one lane: `op xmm, [m], imm` or `vop xmm, src1, [m], imm`.
        M::Pinsrb | M::Pinsrw | M::Pinsrd | M::Pinsrq if count == 3 && mem(1) => {
            let r = reg(0)?;
            (
                LaneOp::Insert {
                    offset: lane(imm(2)?),
                    zero: 0,
                },
                r,
                r,
            )
        }
        M::Vpinsrb | M::Vpinsrw | M::Vpinsrd | M::Vpinsrq if count == 4 && mem(2) => (
            LaneOp::Insert {
                offset: lane(imm(3)?),
                zero: 0,
            },
            reg(0)?,
            reg(1)?,
        ),
        M::Insertps if count == 3 && mem(1) => {
            let r = reg(0)?;
            let select = imm(2)?;
            (
                LaneOp::Insert {
                    offset: lane(select >> 4),
                    zero: select & 0xf,
                },
                r,
                r,
            )
        }
        M::Vinsertps if count == 4 && mem(2) => {
            let select = imm(3)?;
            (
                LaneOp::Insert {
                    offset: lane(select >> 4),
                    zero: select & 0xf,
                },
                reg(0)?,
                reg(1)?,
            )
        }
        M::Movhps | M::Movhpd | M::Movlps | M::Movlpd if count == 2 && mem(1) => {
            let r = reg(0)?;
            (
                LaneOp::Insert {
                    offset: half(m),
                    zero: 0,
                },
                r,
                r,
            )
        }
        M::Vmovhps | M::Vmovhpd | M::Vmovlps | M::Vmovlpd if count == 3 && mem(2) => (
            LaneOp::Insert {
                offset: half(m),
                zero: 0,
            },
            reg(0)?,
            reg(1)?,
        ),
        // Broadcasts into an XMM register.
        M::Movddup
        | M::Vmovddup
        | M::Vbroadcastss
        | M::Vpbroadcastb
        | M::Vpbroadcastw
        | M::Vpbroadcastd
        | M::Vpbroadcastq
            if count == 2 && mem(1) =>
        {
            let r = reg(0)?;
            (LaneOp::Broadcast, r, r)
        }
        _ => return None,
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
pub(crate) fn loaded(op: LaneOp, src1: u128, m: u64, width: usize) -> u128 {
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
pub(crate) fn extracted(value: u128, offset: u8, width: usize) -> u64 {
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
