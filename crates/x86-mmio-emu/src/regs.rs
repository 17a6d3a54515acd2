//! The interrupted thread's registers as the signal frame saved them: the
//! general registers, RIP and RFLAGS in `uc_mcontext.gregs`, the XMM
//! registers in the FXSAVE image that `uc_mcontext.fpregs` points to, and
//! the upper halves of YMM/ZMM registers in the XSAVE components that
//! follow it (when the kernel saved with XSAVE, which the magic number in
//! the frame's software-reserved bytes says).
//!
//! Writes follow the CPU's partial-register rules: a 32-bit destination
//! clears bits 32..63, an 8- or 16-bit one keeps the bits above it, and
//! `AH`/`BH`/`CH`/`DH` are bits 8..15 of their register.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

use iced_x86::Register;
use libc::{_libc_fpstate, greg_t};

use crate::Mem;

/// Number of general registers saved in a `ucontext_t`.
pub const NGREG: usize = 23;

/// The saved registers of the interrupted thread.
pub struct Regs<'a> {
    gregs: &'a mut [greg_t; NGREG],
    /// The frame's FP state (FXSAVE image, then XSAVE components), or null.
    fpregs: *mut u8,
    _fp: PhantomData<&'a mut _libc_fpstate>,
}

/// Size of the FXSAVE image, where the XSAVE header starts.
const FXSAVE_SIZE: usize = 512;
/// Offset of the kernel's `_fpx_sw_bytes` in the FXSAVE image.
const SW_BYTES: usize = 464;
/// `_fpx_sw_bytes.magic1` when XSAVE components follow the image.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// XSAVE component holding bits 128..255 of YMM0..15.
const YMM_HI128: u32 = 2;
/// XSAVE component holding bits 256..511 of ZMM0..15.
const ZMM_HI256: u32 = 6;
/// Standard-layout offset of [`ZMM_HI256`]; 0 until asked of CPUID.
static ZMM_HI256_OFFSET: AtomicU32 = AtomicU32::new(0);

/// The offset of XSAVE component `component` in the standard
/// (non-compacted) layout the kernel uses for signal frames: architectural
/// for YMM_Hi128, from CPUID leaf 0xD (asked once) for ZMM_Hi256. CPUID is
/// one instruction: async-signal-safe.
fn component_offset(component: u32) -> usize {
    if component == YMM_HI128 {
        return 576;
    }
    let mut offset = ZMM_HI256_OFFSET.load(Ordering::Relaxed);
    if offset == 0 {
        offset = std::arch::x86_64::__cpuid_count(0xd, component).ebx;
        ZMM_HI256_OFFSET.store(offset, Ordering::Relaxed);
    }
    offset as usize
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
pub struct Gpr {
    number: usize,
    pub size: usize,
    high: bool,
}

/// Decomposes an iced register. iced numbers them AL..BL, AH..BH,
/// SPL..R15L, AX..R15W, EAX..R15D, RAX..R15, each in encoding order.
pub fn gpr(reg: Register) -> Option<Gpr> {
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

/// The 64-bit register that contains the general register `reg` (RAX for
/// EAX, AX, AL and AH).
pub fn full_register(reg: Register) -> Option<Register> {
    let number = gpr(reg)?.number;
    Register::try_from(Register::RAX as usize + number).ok()
}

/// The number (0..16) of an XMM register, `None` for any other register.
pub fn xmm(reg: Register) -> Option<usize> {
    let n = (reg as usize).checked_sub(Register::XMM0 as usize)?;
    (n < 16).then_some(n)
}

/// The low `width` bytes (1..=8) set.
pub fn mask(width: usize) -> u64 {
    match width {
        8 => u64::MAX,
        w => (1u64 << (w * 8)) - 1,
    }
}

/// `value`'s low `width` bytes, sign-extended to 64 bits.
pub fn sign_extend(value: u64, width: usize) -> u64 {
    let shift = 64 - width as u32 * 8;
    (((value << shift) as i64) >> shift) as u64
}

impl<'a> Regs<'a> {
    /// The registers of a signal frame: its general registers and, unless
    /// `fpregs` is null, its FP/SSE state.
    ///
    /// # Safety
    ///
    /// `fpregs` is null or points to FP state that only this value uses for
    /// `'a`: an FXSAVE image of 512 bytes, followed (if its software-reserved
    /// bytes carry `FP_XSTATE_MAGIC1`) by the XSAVE header and components in
    /// the standard layout up to the `xstate_size` those bytes give, as the
    /// kernel lays out a signal frame.
    pub unsafe fn new(gregs: &'a mut [greg_t; NGREG], fpregs: *mut _libc_fpstate) -> Self {
        Regs {
            gregs,
            fpregs: fpregs.cast(),
            _fp: PhantomData,
        }
    }

    /// Instruction pointer.
    pub fn rip(&self) -> u64 {
        self.gregs[libc::REG_RIP as usize] as u64
    }

    /// Sets the instruction pointer.
    pub fn set_rip(&mut self, rip: u64) {
        self.gregs[libc::REG_RIP as usize] = rip as greg_t;
    }

    /// RFLAGS.
    pub fn rflags(&self) -> u64 {
        self.gregs[libc::REG_EFL as usize] as u64
    }

    /// Sets RFLAGS.
    pub fn set_rflags(&mut self, rflags: u64) {
        self.gregs[libc::REG_EFL as usize] = rflags as greg_t;
    }

    fn slot(gpr: Gpr) -> usize {
        GREG_SLOTS[gpr.number] as usize
    }

    /// The value of a general register of any width, zero-extended.
    pub fn get(&self, reg: Register) -> Option<u64> {
        let gpr = gpr(reg)?;
        let full = self.gregs[Self::slot(gpr)] as u64;
        Some(if gpr.high {
            (full >> 8) & 0xff
        } else {
            full & mask(gpr.size)
        })
    }

    /// Writes `value` to a general register with the CPU's partial-register rules.
    pub fn set(&mut self, reg: Register, value: u64) -> Option<()> {
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

    /// The FXSAVE image, if the frame has FP state.
    fn fxsave(&mut self) -> Option<&mut _libc_fpstate> {
        // SAFETY: null or valid and ours for this value's lifetime (see `new`).
        unsafe { self.fpregs.cast::<_libc_fpstate>().as_mut() }
    }

    /// Bits 0..63 of an XMM register; `None` if it is not one or the frame
    /// holds no SSE state.
    pub fn xmm_low(&self, reg: Register) -> Option<u64> {
        self.xmm128(reg).map(|v| v as u64)
    }

    /// All 128 bits of an XMM register; `None` if it is not one or the frame
    /// holds no SSE state.
    pub fn xmm128(&self, reg: Register) -> Option<u128> {
        // SAFETY: null or valid for this value's lifetime (see `new`).
        let fx = unsafe { self.fpregs.cast::<_libc_fpstate>().as_ref() }?;
        let e = &fx._xmm[xmm(reg)?].element;
        Some(e.iter().rev().fold(0u128, |v, &w| v << 32 | u128::from(w)))
    }

    /// Sets all 128 bits of an XMM register. Bits above 127 are kept, unless
    /// `vex` (a VEX/EVEX instruction): then they are zeroed too, up to the
    /// widest vector register the frame holds.
    pub fn set_xmm128(&mut self, reg: Register, value: u128, vex: bool) -> Option<()> {
        let n = xmm(reg)?;
        self.fxsave()?._xmm[n].element = [0, 1, 2, 3].map(|i| (value >> (32 * i)) as u32);
        if vex {
            self.zero_upper(n, YMM_HI128, 16);
            self.zero_upper(n, ZMM_HI256, 32);
        }
        Some(())
    }

    /// MXCSR, if the frame holds SSE state.
    pub fn mxcsr(&self) -> Option<u32> {
        // SAFETY: null or valid for this value's lifetime (see `new`).
        unsafe { self.fpregs.cast::<_libc_fpstate>().as_ref() }.map(|fx| fx.mxcsr)
    }

    /// Sets MXCSR (the frame holds SSE state: [`Regs::mxcsr`] returned it).
    pub fn set_mxcsr(&mut self, mxcsr: u32) -> Option<()> {
        self.fxsave()?.mxcsr = mxcsr;
        Some(())
    }

    /// Sets an XMM register to `value` zero-extended to 128 bits, as the
    /// SSE loads `MOVD`/`MOVQ`/`MOVSS`/`MOVSD` from memory do. Bits above 127
    /// are kept, unless `vex`: the VEX loads zero them too, up to the widest
    /// vector register the frame holds.
    pub fn set_xmm(&mut self, reg: Register, value: u64, vex: bool) -> Option<()> {
        self.set_xmm128(reg, u128::from(value), vex)
    }

    /// Zeroes register `n`'s `size`-byte slot of XSAVE component
    /// `component`, if the frame holds that component in a non-init state
    /// (in init state it reads as zero already). The frame has FP state.
    fn zero_upper(&mut self, n: usize, component: u32, size: usize) {
        // SAFETY: `fpregs` is non-null (the caller wrote the image) and valid
        // for the FXSAVE image, which holds the software-reserved bytes.
        let (magic, xstate_size) = unsafe {
            let sw = self.fpregs.add(SW_BYTES);
            (
                sw.cast::<u32>().read_unaligned(),
                sw.add(16).cast::<u32>().read_unaligned() as usize,
            )
        };
        if magic != FP_XSTATE_MAGIC1 || xstate_size < FXSAVE_SIZE + 64 {
            return;
        }
        // SAFETY: with the magic present the XSAVE header, whose first word
        // is XSTATE_BV, follows the image within `xstate_size` (see `new`).
        let xstate_bv = unsafe { self.fpregs.add(FXSAVE_SIZE).cast::<u64>().read_unaligned() };
        if xstate_bv & (1 << component) == 0 {
            return;
        }
        let at = component_offset(component) + n * size;
        if at < FXSAVE_SIZE + 64 || at + size > xstate_size {
            return;
        }
        // SAFETY: `at..at + size` lies past the header and within the
        // frame's XSAVE area (checked against `xstate_size`), ours to change.
        unsafe { self.fpregs.add(at).write_bytes(0, size) };
    }
}

impl Regs<'_> {
    /// The address `mem` refers to, or `None` if it uses a register that is
    /// not saved in the context.
    pub fn effective_address(&self, mem: &Mem) -> Option<u64> {
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
        // SAFETY: no FP state.
        let mut regs = unsafe { Regs::new(&mut gregs, std::ptr::null_mut()) };
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

    /// An XSAVE-layout signal-frame FP area: FXSAVE image, header, YMM_Hi128.
    #[repr(C, align(64))]
    struct Frame([u8; 1024]);

    fn frame(xstate_bv: u64) -> Box<Frame> {
        let mut f = Box::new(Frame([0xee; 1024]));
        f.0[..FXSAVE_SIZE + 64].fill(0);
        f.0[SW_BYTES..SW_BYTES + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        f.0[SW_BYTES + 16..SW_BYTES + 20].copy_from_slice(&832u32.to_le_bytes());
        f.0[FXSAVE_SIZE..FXSAVE_SIZE + 8].copy_from_slice(&xstate_bv.to_le_bytes());
        f
    }

    #[test]
    fn xmm_registers_live_in_the_fpstate() {
        let mut gregs = [0 as greg_t; NGREG];
        let mut f = frame(0x7);
        let xmm3 = 160 + 3 * 16;
        f.0[xmm3..xmm3 + 16].copy_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        {
            // SAFETY: `f` is a 1 KiB XSAVE-layout buffer that only `regs` uses.
            let mut regs = unsafe { Regs::new(&mut gregs, f.0.as_mut_ptr().cast()) };
            assert_eq!(regs.xmm_low(Register::XMM3), Some(0x2_0000_0001));
            regs.set_xmm(Register::XMM3, 0xaabb_ccdd, false).unwrap();
            assert_eq!(regs.xmm_low(Register::XMM3), Some(0xaabb_ccdd));
            assert_eq!(regs.set_xmm(Register::EAX, 0, false), None);
        }
        assert_eq!(
            f.0[xmm3..xmm3 + 16],
            [0xdd, 0xcc, 0xbb, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        // A legacy load keeps the upper YMM half; a VEX load zeroes it.
        let ymmh3 = 576 + 3 * 16;
        assert_eq!(f.0[ymmh3], 0xee);
        {
            // SAFETY: as above.
            let mut regs = unsafe { Regs::new(&mut gregs, f.0.as_mut_ptr().cast()) };
            regs.set_xmm(Register::XMM3, 1, true).unwrap();
        }
        assert_eq!(f.0[ymmh3..ymmh3 + 16], [0; 16]);
        assert_eq!(f.0[ymmh3 + 16], 0xee, "the next register's half is kept");
        // SAFETY: no FP state.
        let mut none = unsafe { Regs::new(&mut gregs, std::ptr::null_mut()) };
        assert_eq!(none.xmm_low(Register::XMM0), None);
        assert_eq!(none.set_xmm(Register::XMM0, 0, true), None);
    }

    #[test]
    fn upper_halves_in_init_state_or_without_xsave_are_left_alone() {
        let mut gregs = [0 as greg_t; NGREG];
        let mut no_magic = frame(0x7);
        no_magic.0[SW_BYTES] = 0;
        for mut f in [frame(0x3), no_magic] {
            {
                // SAFETY: as in `xmm_registers_live_in_the_fpstate`.
                let mut regs = unsafe { Regs::new(&mut gregs, f.0.as_mut_ptr().cast()) };
                regs.set_xmm(Register::XMM0, 1, true).unwrap();
            }
            assert_eq!(f.0[576], 0xee);
        }
    }

    #[test]
    fn flags_and_rip() {
        let mut gregs = [0 as greg_t; NGREG];
        // SAFETY: no FP state.
        let mut regs = unsafe { Regs::new(&mut gregs, std::ptr::null_mut()) };
        regs.set_rflags(0x246);
        regs.set_rip(0x1234);
        assert_eq!((regs.rflags(), regs.rip()), (0x246, 0x1234));
    }
}
