//! The interrupted thread's registers as the signal frame saved them: the
//! general registers, RIP and RFLAGS in `uc_mcontext.gregs`, the XMM
//! registers in the FXSAVE image that `uc_mcontext.fpregs` points to.
//!
//! Writes follow the CPU's partial-register rules: a 32-bit destination
//! clears bits 32..63, an 8- or 16-bit one keeps the bits above it, and
//! `AH`/`BH`/`CH`/`DH` are bits 8..15 of their register.

use iced_x86::Register;
use libc::{_libc_fpstate, greg_t};

/// Number of general registers saved in a `ucontext_t`.
pub(crate) const NGREG: usize = 23;

/// The saved registers of the interrupted thread.
pub(crate) struct Regs<'a> {
    gregs: &'a mut [greg_t; NGREG],
    fpregs: Option<&'a mut _libc_fpstate>,
}

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
    pub(crate) size: usize,
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

/// The number (0..16) of an XMM register, `None` for any other register.
pub(crate) fn xmm(reg: Register) -> Option<usize> {
    let n = (reg as usize).checked_sub(Register::XMM0 as usize)?;
    (n < 16).then_some(n)
}

/// The low `width` bytes (1..=8) set.
pub(crate) fn mask(width: usize) -> u64 {
    match width {
        8 => u64::MAX,
        w => (1u64 << (w * 8)) - 1,
    }
}

/// `value`'s low `width` bytes, sign-extended to 64 bits.
pub(crate) fn sign_extend(value: u64, width: usize) -> u64 {
    let shift = 64 - width as u32 * 8;
    (((value << shift) as i64) >> shift) as u64
}

impl<'a> Regs<'a> {
    /// The registers of a signal frame: its general registers and, when the
    /// kernel saved them, its SSE registers.
    pub(crate) fn new(gregs: &'a mut [greg_t; NGREG], fpregs: Option<&'a mut _libc_fpstate>) -> Self {
        Regs { gregs, fpregs }
    }

    /// Instruction pointer.
    pub(crate) fn rip(&self) -> u64 {
        self.gregs[libc::REG_RIP as usize] as u64
    }

    /// Sets the instruction pointer.
    pub(crate) fn set_rip(&mut self, rip: u64) {
        self.gregs[libc::REG_RIP as usize] = rip as greg_t;
    }

    /// RFLAGS.
    pub(crate) fn rflags(&self) -> u64 {
        self.gregs[libc::REG_EFL as usize] as u64
    }

    /// Sets RFLAGS.
    pub(crate) fn set_rflags(&mut self, rflags: u64) {
        self.gregs[libc::REG_EFL as usize] = rflags as greg_t;
    }

    fn slot(gpr: Gpr) -> usize {
        GREG_SLOTS[gpr.number] as usize
    }

    /// The value of a general register of any width, zero-extended.
    pub(crate) fn get(&self, reg: Register) -> Option<u64> {
        let gpr = gpr(reg)?;
        let full = self.gregs[Self::slot(gpr)] as u64;
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
        let old = self.gregs[index] as u64;
        let new = match gpr.size {
            8 => value,
            4 => value & mask(4),
            1 if gpr.high => (old & !0xff00) | ((value & 0xff) << 8),
            size => (old & !mask(size)) | (value & mask(size)),
        };
        self.gregs[index] = new as greg_t;
        Some(())
    }

    /// Bits 0..63 of an XMM register; `None` if it is not one or the frame
    /// holds no SSE state.
    pub(crate) fn xmm_low(&self, reg: Register) -> Option<u64> {
        let e = &self.fpregs.as_ref()?._xmm[xmm(reg)?].element;
        Some(u64::from(e[0]) | u64::from(e[1]) << 32)
    }

    /// Sets an XMM register to `value` zero-extended to 128 bits, as the
    /// SSE loads `MOVD`/`MOVQ`/`MOVSS`/`MOVSD` from memory do (bits above 127,
    /// which only VEX forms touch, are kept).
    pub(crate) fn set_xmm(&mut self, reg: Register, value: u64) -> Option<()> {
        let n = xmm(reg)?;
        let e = &mut self.fpregs.as_mut()?._xmm[n].element;
        *e = [value as u32, (value >> 32) as u32, 0, 0];
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(xmm(Register::XMM0), Some(0));
        assert_eq!(xmm(Register::XMM15), Some(15));
        assert_eq!(xmm(Register::XMM16), None);
        assert_eq!(xmm(Register::YMM0), None);
        assert_eq!(xmm(Register::RAX), None);
    }

    #[test]
    fn partial_register_writes() {
        let mut gregs = [0 as greg_t; NGREG];
        let mut regs = Regs::new(&mut gregs, None);
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
    fn xmm_registers_live_in_the_fpstate() {
        let mut gregs = [0 as greg_t; NGREG];
        // SAFETY: `_libc_fpstate` is plain integers; all zero is a valid value.
        let mut fp: _libc_fpstate = unsafe { std::mem::zeroed() };
        fp._xmm[3].element = [1, 2, 3, 4];
        let mut regs = Regs::new(&mut gregs, Some(&mut fp));
        assert_eq!(regs.xmm_low(Register::XMM3), Some(0x2_0000_0001));
        regs.set_xmm(Register::XMM3, 0xaabb_ccdd).unwrap();
        assert_eq!(regs.xmm_low(Register::XMM3), Some(0xaabb_ccdd));
        assert_eq!(regs.set_xmm(Register::EAX, 0), None);
        assert_eq!(fp._xmm[3].element, [0xaabb_ccdd, 0, 0, 0]);
        let mut none = Regs::new(&mut gregs, None);
        assert_eq!(none.xmm_low(Register::XMM0), None);
        assert_eq!(none.set_xmm(Register::XMM0, 0), None);
    }

    #[test]
    fn flags_and_rip() {
        let mut gregs = [0 as greg_t; NGREG];
        let mut regs = Regs::new(&mut gregs, None);
        regs.set_rflags(0x246);
        regs.set_rip(0x1234);
        assert_eq!((regs.rflags(), regs.rip()), (0x246, 0x1234));
    }
}
