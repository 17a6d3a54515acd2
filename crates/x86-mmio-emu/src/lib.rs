//! Decoding and emulation of the x86-64 instruction that faulted on a trapped
//! MMIO page (a page left unmapped so that every access to it faults).
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
//!   RFLAGS come from running the same operation on the CPU ([`Alu`]);
//! - the bit scans and counts that `trailing_zeros`, `leading_zeros`,
//!   `count_ones` and C's `__builtin_ctz`/`clz`/`popcount` of a register
//!   compile to: `BSF BSR TZCNT LZCNT POPCNT`, and BMI1's `BLSR BLSI BLSMSK`;
//! - the BMI1/BMI2 three-operand forms of `-C target-cpu=haswell` and
//!   `-march=x86-64-v3`: `ANDN BEXTR BZHI SHLX SHRX SARX PDEP PEXT RORX MULX`
//!   ([`Bmi`]);
//! - the one-operand `MUL IMUL DIV IDIV` on RDX:RAX (`u128` products, C's
//!   `x / *reg`), and the funnel shifts `SHLD SHRD` of memory ([`Wide`]); a
//!   division that would raise the divide error is refused;
//! - the unlocked `XADD` and `CMPXCHG` of memory and a register, each one
//!   read then one write of the operand (`CMPXCHG` writes the value it read
//!   back when the comparison fails, as the CPU does);
//! - `SETcc` of a byte in memory (a `bool` stored to a register) and
//!   `CMOVcc` from memory (which reads whether or not it moves);
//! - scalar SSE arithmetic with a memory source, legacy and VEX: `ADD SUB
//!   MUL DIV MIN MAX SQRT` of `SS`/`SD`, the conversions `CVTSS2SD CVTSD2SS
//!   CVTSI2SS CVTSI2SD CVT(T)SS2SI CVT(T)SD2SI` (and AVX-512's unsigned
//!   `VCVTUSI2SS/SD VCVT(T)SS2USI VCVT(T)SD2USI`), and the comparisons
//!   `(U)COMISS (U)COMISD`, computed under the thread's MXCSR ([`Sse`]); one
//!   that raises an exception the thread has unmasked is refused;
//! - moves between memory and one lane of an XMM register, and broadcasts
//!   of memory to every lane of one: `PINSRB/W/D/Q PEXTRB/W/D/Q EXTRACTPS
//!   INSERTPS MOVHPS MOVHPD MOVLPS MOVLPD MOVDDUP`, their VEX forms, and
//!   `VBROADCASTSS VPBROADCASTB/W/D/Q` into an XMM register ([`Lane`]).
//!
//! Everything else is refused and the handler reports it rather than guess:
//! `LOCK`-prefixed instructions and `XCHG` (atomic on the bus, which a read
//! then a write is not: a device or another CPU could act between them, so
//! emulating them would promise an atomicity the emulation does not keep),
//! `CMPXCHG8B`/`CMPXCHG16B` (two registers each way), anything wider than 8 bytes (packed SSE/AVX),
//! other VEX/EVEX instructions, masked EVEX forms, string instructions,
//! `fs:`/`gs:` addressing.
//!
//! The crate knows nothing of where the access goes: [`decode`] and
//! [`emulable`] turn instruction bytes into a [`Decoded`] access, and
//! [`execute`] carries it out on the interrupted thread's [`Regs`] (a Linux
//! signal frame's saved registers) and a [`Bus`] that performs the one read
//! and/or one write of the memory operand (a device region, a test model).
//! Nothing on that path allocates or takes a lock, so it runs in a SIGSEGV
//! handler; only the decoder's first use builds tables, which a caller does
//! once outside signal context (decode any instruction).
//!
//! Results and flags come from the CPU running the same operation on
//! registers, so the tests compare the emulator with the CPU itself: every
//! form from fixed encodings (unit tests), and random encodings of memory
//! forms run both natively and through [`execute`] (`tests/random_encodings.rs`,
//! a proptest).
#![cfg(target_arch = "x86_64")]

mod alu;
mod bmi;
mod classify;
mod exec;
mod lane;
mod op;
mod regs;
mod sse;
mod wide;

use iced_x86::{Decoder, DecoderError, DecoderOptions};

pub use alu::Alu;
pub use bmi::Bmi;
pub(crate) use classify::classify;
pub use exec::{execute, Bus, ExecError};
pub use iced_x86::{Instruction, Register};
pub use lane::{Lane, LaneOp};
pub use op::{Cond, Decoded, Extend, Mem, Op, Source};
pub use regs::{Regs, NGREG};
pub use sse::Sse;
pub use wide::Wide;

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// Decodes one instruction from `bytes`, located at `ip`. Returns `None` if
/// `bytes` end before the instruction does (the caller may fetch more), and
/// an instruction for which [`Instruction::is_invalid`] holds if it is not
/// valid x86-64.
pub fn decode(bytes: &[u8], ip: u64) -> Option<Instruction> {
    let mut decoder = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    (decoder.last_error() != DecoderError::NoMoreBytes).then_some(insn)
}

/// `insn` reduced to what the handler needs, if this crate emulates it.
pub fn emulable(insn: &Instruction) -> Option<Decoded> {
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

#[cfg(test)]
mod tests;
