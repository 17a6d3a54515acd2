//! x86-64 emulation of the load or store that faulted on a shadow hole.
//!
//! Only plain moves are emulated: `MOV` between a general register (or an
//! immediate) and memory, `MOV` with a 64-bit absolute address (`moffs`), and
//! the `MOVZX`/`MOVSX`/`MOVSXD` loads, of 1, 2, 4 or 8 bytes. That is what
//! `ptr::read_volatile`/`write_volatile` of `u8`..`u64` compile to. Everything
//! else (SSE/AVX moves, `rep movs`, read-modify-write instructions, locked
//! instructions, `fs:`/`gs:` addressing) is refused, and the handler reports it
//! rather than guess.
//!
//! Registers follow the CPU's partial-register rules: a 32-bit destination
//! clears bits 32..63, an 8- or 16-bit one keeps the bits above it, and
//! `AH`/`BH`/`CH`/`DH` are bits 8..15 of their register.

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, MemorySize, OpKind, Register};
use libc::greg_t;

/// Longest x86 instruction.
pub(crate) const MAX_INSN_LEN: usize = 15;

/// Number of general registers saved in a `ucontext_t`.
const NGREG: usize = 23;

/// What the faulting instruction does to memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Read `width` bytes into `dst`, extended as `extend` says.
    Load {
        dst: Register,
        width: usize,
        extend: Extend,
    },
    /// Write the low `width` bytes of `src`.
    Store { src: Source, width: usize },
}

/// How a load narrower than its destination register is widened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extend {
    /// Same width as the destination (`MOV`).
    None,
    /// `MOVZX`.
    Zero,
    /// `MOVSX`/`MOVSXD`.
    Sign,
}

/// The value a store writes.
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

impl Decoded {
    /// The access width in bytes.
    pub(crate) fn width(&self) -> usize {
        match self.op {
            Op::Load { width, .. } | Op::Store { width, .. } => width,
        }
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

/// The memory effect of `insn` if it is one barmap emulates.
pub(crate) fn classify(insn: &Instruction) -> Option<Op> {
    if insn.has_lock_prefix() || matches!(insn.memory_segment(), Register::FS | Register::GS) {
        return None;
    }
    let width = match insn.memory_size() {
        MemorySize::UInt8 | MemorySize::Int8 => 1,
        MemorySize::UInt16 | MemorySize::Int16 => 2,
        MemorySize::UInt32 | MemorySize::Int32 => 4,
        MemorySize::UInt64 | MemorySize::Int64 => 8,
        _ => return None,
    };
    let extend = match insn.code() {
        Code::Mov_r8_rm8
        | Code::Mov_r16_rm16
        | Code::Mov_r32_rm32
        | Code::Mov_r64_rm64
        | Code::Mov_AL_moffs8
        | Code::Mov_AX_moffs16
        | Code::Mov_EAX_moffs32
        | Code::Mov_RAX_moffs64 => Some(Extend::None),
        Code::Movzx_r16_rm8
        | Code::Movzx_r32_rm8
        | Code::Movzx_r64_rm8
        | Code::Movzx_r16_rm16
        | Code::Movzx_r32_rm16
        | Code::Movzx_r64_rm16 => Some(Extend::Zero),
        Code::Movsx_r16_rm8
        | Code::Movsx_r32_rm8
        | Code::Movsx_r64_rm8
        | Code::Movsx_r16_rm16
        | Code::Movsx_r32_rm16
        | Code::Movsx_r64_rm16
        | Code::Movsxd_r64_rm32 => Some(Extend::Sign),
        _ => None,
    };
    if let Some(extend) = extend {
        return (insn.op0_kind() == OpKind::Register && insn.op1_kind() == OpKind::Memory).then_some(
            Op::Load {
                dst: insn.op0_register(),
                width,
                extend,
            },
        );
    }
    let src = match insn.code() {
        Code::Mov_rm8_r8
        | Code::Mov_rm16_r16
        | Code::Mov_rm32_r32
        | Code::Mov_rm64_r64
        | Code::Mov_moffs8_AL
        | Code::Mov_moffs16_AX
        | Code::Mov_moffs32_EAX
        | Code::Mov_moffs64_RAX => {
            (insn.op1_kind() == OpKind::Register).then(|| Source::Reg(insn.op1_register()))
        }
        Code::Mov_rm8_imm8 | Code::Mov_rm16_imm16 | Code::Mov_rm32_imm32 | Code::Mov_rm64_imm32 => {
            insn.try_immediate(1).ok().map(Source::Imm)
        }
        _ => None,
    }?;
    (insn.op0_kind() == OpKind::Memory).then_some(Op::Store { src, width })
}

/// The saved general registers of the interrupted thread.
pub(crate) struct Regs<'a>(pub(crate) &'a mut [greg_t; NGREG]);

/// Saved-context slots of the 16 general registers, in encoding order
/// (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15).
const GREG_SLOTS: [libc::c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

/// A general register: which of the 16, how wide, and whether it is one of
/// AH/CH/DH/BH (bits 8..15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gpr {
    number: usize,
    size: usize,
    high: bool,
}

/// Decomposes an iced register. iced numbers them AL..BL, AH..BH,
/// SPL..R15L, AX..R15W, EAX..R15D, RAX..R15, each in encoding order.
pub(crate) fn gpr(reg: Register) -> Option<Gpr> {
    let n = reg as usize;
    let (first, size) = match n {
        _ if (Register::AL as usize..=Register::R15L as usize).contains(&n) => (Register::AL, 1),
        _ if (Register::AX as usize..=Register::R15W as usize).contains(&n) => (Register::AX, 2),
        _ if (Register::EAX as usize..=Register::R15D as usize).contains(&n) => (Register::EAX, 4),
        _ if (Register::RAX as usize..=Register::R15 as usize).contains(&n) => (Register::RAX, 8),
        _ => return None,
    };
    let number = n - first as usize;
    let high = size == 1 && (Register::AH as usize..=Register::BH as usize).contains(&n);
    // The four high-byte registers sit between BL and SPL, so every byte
    // register from AH on is four places after its number.
    let number = if size == 1 && number >= 4 {
        number - 4
    } else {
        number
    };
    Some(Gpr { number, size, high })
}

fn mask(width: usize) -> u64 {
    match width {
        8 => u64::MAX,
        w => (1u64 << (w * 8)) - 1,
    }
}

fn sign_extend(value: u64, width: usize) -> u64 {
    let shift = 64 - width as u32 * 8;
    (((value << shift) as i64) >> shift) as u64
}

impl Regs<'_> {
    /// Instruction pointer.
    pub(crate) fn rip(&self) -> u64 {
        self.0[libc::REG_RIP as usize] as u64
    }

    /// Sets the instruction pointer.
    pub(crate) fn set_rip(&mut self, rip: u64) {
        self.0[libc::REG_RIP as usize] = rip as greg_t;
    }

    fn slot(gpr: Gpr) -> usize {
        GREG_SLOTS[gpr.number] as usize
    }

    /// The value of a general register of any width, zero-extended.
    pub(crate) fn get(&self, reg: Register) -> Option<u64> {
        let gpr = gpr(reg)?;
        let full = self.0[Self::slot(gpr)] as u64;
        Some(if gpr.high {
            (full >> 8) & 0xff
        } else {
            full & mask(gpr.size)
        })
    }

    /// Writes `value` to a general register with the CPU's partial-register rules.
    pub(crate) fn set(&mut self, reg: Register, value: u64) -> Option<()> {
        let gpr = gpr(reg)?;
        let index = Self::slot(gpr);
        let old = self.0[index] as u64;
        let new = match gpr.size {
            8 => value,
            4 => value & mask(4),
            1 if gpr.high => (old & !0xff00) | ((value & 0xff) << 8),
            size => (old & !mask(size)) | (value & mask(size)),
        };
        self.0[index] = new as greg_t;
        Some(())
    }

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
    }
}

/// The value a store of `width` bytes writes, or `None` if its source
/// register is not saved in the context.
pub(crate) fn store_value(regs: &Regs<'_>, src: Source, width: usize) -> Option<u64> {
    let value = match src {
        Source::Reg(reg) => regs.get(reg)?,
        Source::Imm(imm) => imm,
    };
    Some(value & mask(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Instruction {
        let insn = decode(bytes, 0x1000).expect("complete instruction");
        assert!(!insn.is_invalid(), "{bytes:02x?}");
        assert_eq!(insn.len(), bytes.len(), "{bytes:02x?}");
        insn
    }

    fn load(dst: Register, width: usize, extend: Extend) -> Option<Op> {
        Some(Op::Load { dst, width, extend })
    }

    #[test]
    fn classifies_loads() {
        assert_eq!(classify(&one(&[0x8a, 0x07])), load(Register::AL, 1, Extend::None)); // mov al,[rdi]
        assert_eq!(classify(&one(&[0x8a, 0x27])), load(Register::AH, 1, Extend::None)); // mov ah,[rdi]
        assert_eq!(
            classify(&one(&[0x66, 0x8b, 0x07])),
            load(Register::AX, 2, Extend::None)
        );
        assert_eq!(
            classify(&one(&[0x8b, 0x07])),
            load(Register::EAX, 4, Extend::None)
        );
        assert_eq!(
            classify(&one(&[0x4c, 0x8b, 0x07])),
            load(Register::R8, 8, Extend::None)
        );
        assert_eq!(
            classify(&one(&[0x0f, 0xb6, 0x07])),
            load(Register::EAX, 1, Extend::Zero)
        );
        assert_eq!(
            classify(&one(&[0x48, 0x0f, 0xb7, 0x07])),
            load(Register::RAX, 2, Extend::Zero)
        );
        assert_eq!(
            classify(&one(&[0x48, 0x0f, 0xbe, 0x07])),
            load(Register::RAX, 1, Extend::Sign)
        );
        assert_eq!(
            classify(&one(&[0x48, 0x63, 0x07])),
            load(Register::RAX, 4, Extend::Sign)
        );
        let moffs = [0x48, 0xa1, 1, 2, 3, 4, 5, 6, 7, 8]; // mov rax,[abs 0x0807060504030201]
        assert_eq!(classify(&one(&moffs)), load(Register::RAX, 8, Extend::None));
    }

    #[test]
    fn classifies_stores() {
        let store = |src, width| Some(Op::Store { src, width });
        assert_eq!(classify(&one(&[0x88, 0x37])), store(Source::Reg(Register::DH), 1)); // mov [rdi],dh
        assert_eq!(
            classify(&one(&[0x66, 0x89, 0x07])),
            store(Source::Reg(Register::AX), 2)
        );
        assert_eq!(
            classify(&one(&[0x44, 0x89, 0x3f])),
            store(Source::Reg(Register::R15D), 4)
        );
        assert_eq!(
            classify(&one(&[0x48, 0x89, 0x07])),
            store(Source::Reg(Register::RAX), 8)
        );
        assert_eq!(classify(&one(&[0xc6, 0x07, 0xfa])), store(Source::Imm(0xfa), 1));
        let imm64 = [0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff]; // mov qword [rdi],-1
        assert_eq!(classify(&one(&imm64)), store(Source::Imm(u64::MAX), 8));
    }

    #[test]
    fn refuses_everything_else() {
        let refused: [&[u8]; 7] = [
            &[0x0f, 0x10, 0x07],       // movups xmm0,[rdi]
            &[0x01, 0x07],             // add [rdi],eax
            &[0x87, 0x07],             // xchg [rdi],eax
            &[0xf0, 0x0f, 0xc1, 0x07], // lock xadd [rdi],eax
            &[0x64, 0x8b, 0x07],       // mov eax,fs:[rdi]
            &[0xf3, 0xa4],             // rep movsb
            &[0x89, 0xc8],             // mov eax,ecx
        ];
        for bytes in refused {
            assert_eq!(classify(&one(bytes)), None, "{bytes:02x?}");
        }
    }

    #[test]
    fn incomplete_bytes_ask_for_more() {
        assert!(decode(&[0x48, 0xa1, 1, 2], 0).is_none());
        assert!(decode(&[0x8b, 0x07, 0x90], 0).is_some());
    }

    #[test]
    fn decomposes_registers() {
        let g = |number, size, high| Some(Gpr { number, size, high });
        assert_eq!(gpr(Register::AL), g(0, 1, false));
        assert_eq!(gpr(Register::BL), g(3, 1, false));
        assert_eq!(gpr(Register::AH), g(0, 1, true));
        assert_eq!(gpr(Register::BH), g(3, 1, true));
        assert_eq!(gpr(Register::SPL), g(4, 1, false));
        assert_eq!(gpr(Register::R15L), g(15, 1, false));
        assert_eq!(gpr(Register::SI), g(6, 2, false));
        assert_eq!(gpr(Register::R8D), g(8, 4, false));
        assert_eq!(gpr(Register::RDI), g(7, 8, false));
        assert_eq!(gpr(Register::R15), g(15, 8, false));
        assert_eq!(gpr(Register::RIP), None);
        assert_eq!(gpr(Register::XMM0), None);
    }

    #[test]
    fn partial_register_writes() {
        let mut gregs = [0 as greg_t; NGREG];
        let mut regs = Regs(&mut gregs);
        regs.set(Register::RAX, 0x1122_3344_5566_7788).unwrap();
        regs.set(Register::AL, 0xaa).unwrap();
        assert_eq!(regs.get(Register::RAX), Some(0x1122_3344_5566_77aa));
        regs.set(Register::AH, 0xbb).unwrap();
        assert_eq!(regs.get(Register::RAX), Some(0x1122_3344_5566_bbaa));
        assert_eq!(regs.get(Register::AH), Some(0xbb));
        regs.set(Register::AX, 0xcccc).unwrap();
        assert_eq!(regs.get(Register::RAX), Some(0x1122_3344_5566_cccc));
        regs.set(Register::EAX, 0xdddd_dddd).unwrap();
        assert_eq!(regs.get(Register::RAX), Some(0xdddd_dddd));
        regs.set(Register::R9L, 0x7f).unwrap();
        regs.set(Register::SIL, 0x80).unwrap();
        assert_eq!(regs.get(Register::R9), Some(0x7f));
        assert_eq!(regs.get(Register::RSI), Some(0x80));
        assert_eq!(regs.set(Register::XMM0, 1), None);
    }

    #[test]
    fn extends_loaded_values() {
        assert_eq!(loaded_value(0x80, 1, Extend::Sign), 0xffff_ffff_ffff_ff80);
        assert_eq!(loaded_value(0x1_8000, 2, Extend::Sign), 0xffff_ffff_ffff_8000);
        assert_eq!(loaded_value(0x8000_0000, 4, Extend::Sign), 0xffff_ffff_8000_0000);
        assert_eq!(loaded_value(0xff80, 1, Extend::Zero), 0x80);
        assert_eq!(loaded_value(u64::MAX, 8, Extend::None), u64::MAX);
    }

    #[test]
    fn effective_addresses() {
        let mut gregs = [0 as greg_t; NGREG];
        let mut regs = Regs(&mut gregs);
        regs.set(Register::RDI, 0x7000_0000_1000).unwrap();
        regs.set(Register::RCX, 3).unwrap();
        let mem = |bytes: &[u8]| emulable(&one(bytes)).unwrap().mem;
        // mov eax,[rdi+rcx*4+0x10]
        assert_eq!(
            regs.effective_address(&mem(&[0x8b, 0x44, 0x8f, 0x10])),
            Some(0x7000_0000_101c)
        );
        // mov eax,[rip+0x100] at 0x1000, 6 bytes long
        assert_eq!(
            regs.effective_address(&mem(&[0x8b, 0x05, 0x00, 0x01, 0x00, 0x00])),
            Some(0x1106)
        );
        // mov eax,[edi] (address-size prefix)
        assert_eq!(regs.effective_address(&mem(&[0x67, 0x8b, 0x07])), Some(0x1000));
    }
}
