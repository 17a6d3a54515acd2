//! Every instruction form the shadow fault handler emulates, checked against
//! the CPU and against what compilers emit.
//!
//! - A differential test runs each of 344 forms (inline assembly, every
//!   width) on ordinary memory and on a trapped page of a shadow region over
//!   an emulated device, from the same registers, flags and memory, many times
//!   with random operands, and compares every general register, XMM0/XMM1,
//!   RFLAGS, MXCSR, the memory afterwards, and the device's access log. The
//!   SSE and AVX scalar moves and arithmetic are compared on whole YMM/ZMM
//!   registers, under random rounding modes, FTZ and DAZ.
//! - Access patterns written in Rust and in C, compiled at test time by
//!   rustc (opt-level 0 and 3), gcc and clang (-O0 to -O3), and with MOVBE
//!   and AVX2 where the CPU has them, loaded with
//!   `dlopen`, run the same way: same results, and the device sees exactly
//!   the reads and writes the source makes, one access each of the width.
//! - Refused forms (locked, `xchg`, 16-byte SSE, packed SSE arithmetic, a
//!   division by a zero register, an unmasked SIMD exception, misaligned, straddling a mapped and a trapped page,
//!   code running into a region) end a child process with the one-line
//!   diagnostic.
#![cfg(target_arch = "x86_64")]

mod common;

use std::arch::asm;
use std::ffi::CString;
use std::path::Path;
use std::process::Command;

use barmap::{MapPolicy, Region, SparseArea};
use common::child::{fault_next, in_child, run_child};
use common::emulated::{emulated, word, Device, Rec, PAGE};

/// The start of `region`'s shadow range.
fn base(region: &Region) -> *mut u8 {
    region.as_mut_ptr().expect("a shadow range")
}

/// xorshift64*: reproducible operands.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Half the time a value at an edge of some width (where carries,
    /// overflows and sign changes happen), else uniformly random.
    fn operand(&mut self) -> u64 {
        const EDGES: [u64; 12] = [
            0,
            1,
            2,
            u64::MAX,
            u64::MAX - 1,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0x7fff_ffff,
            0x8000_0000,
        ];
        let r = self.next();
        match r % 4 {
            0 => EDGES[(r >> 8) as usize % EDGES.len()],
            1 => EDGES[(r >> 8) as usize % EDGES.len()] ^ (self.next() & 0xffff_ffff_0000_0000),
            _ => self.next(),
        }
    }
}

// ---- differential test ----

/// Registers going into and coming out of one instruction. `gpr` is in
/// encoding order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15); RSP is
/// neither set nor compared, RDI holds the memory operand's address; MXCSR
/// is in the low 32 bits of `mxcsr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    gpr: [u64; 16],
    rflags: u64,
    mxcsr: u64,
    xmm: [u128; 2],
}

/// MXCSR at reset: every exception masked, round to nearest.
const MXCSR_DEFAULT: u64 = 0x1f80;

impl Default for State {
    fn default() -> Self {
        State {
            gpr: [0; 16],
            rflags: 0,
            mxcsr: MXCSR_DEFAULT,
            xmm: [0; 2],
        }
    }
}

const RDI: usize = 7;
/// CF PF AF ZF SF OF.
const ARITH_FLAGS: u64 = 0x8d5;

/// How an instruction touches memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mem {
    /// Reads once.
    R,
    /// Writes once.
    W,
    /// Reads once, then writes once.
    RW,
}
use Mem::{R, RW, W};

/// One instruction form with `[rdi]` as its memory operand.
struct Form {
    text: &'static str,
    width: usize,
    mem: Mem,
    run: fn(&mut State),
}

/// A function that loads every general register, vector registers 0 and 1,
/// MXCSR and the flags from a `$state`, runs `$insn`, and stores them all back;
/// then `$tail` (VZEROUPPER after registers wider than XMM). `$state` is laid
/// out as [`State`] up to byte 144 (MXCSR at byte 136), where vector register 0 starts, and
/// register 1 starts at byte `$vec1`; `$mov` moves a whole `$reg` (`xmm`,
/// `ymm`, `zmm`) between them and the CPU.
macro_rules! harness {
    ($state:ty, $insn:literal, $mov:literal, $reg:literal, $vec1:literal $(, $tail:literal)?) => {{
        fn run(s: &mut $state) {
            // SAFETY: every register the block changes is restored (RBX,
            // RBP, the flags' DF/TF which stay clear) or declared clobbered;
            // the vector registers it sets are caller-saved and declared
            // clobbered (the compiler keeps nothing wider than XMM in them),
            // and `$tail` leaves any upper halves clean with VZEROUPPER; `s`
            // is a valid `$state`; RDI points to 8 bytes of ordinary memory
            // or of a trapped page of a live shadow region, which is all
            // `$insn` touches.
            unsafe {
                asm!(
                    "push rbp",
                    "push rbx",
                    "push r15",
                    "sub rsp, 8",
                    "stmxcsr [rsp]",
                    "mov rax, [r15]",
                    "mov rcx, [r15 + 8]",
                    "mov rdx, [r15 + 16]",
                    "mov rbx, [r15 + 24]",
                    "mov rbp, [r15 + 40]",
                    "mov rsi, [r15 + 48]",
                    "mov rdi, [r15 + 56]",
                    "mov r8, [r15 + 64]",
                    "mov r9, [r15 + 72]",
                    "mov r10, [r15 + 80]",
                    "mov r11, [r15 + 88]",
                    "mov r12, [r15 + 96]",
                    "mov r13, [r15 + 104]",
                    "mov r14, [r15 + 112]",
                    concat!($mov, " ", $reg, "0, [r15 + 144]"),
                    concat!($mov, " ", $reg, "1, [r15 + ", $vec1, "]"),
                    "ldmxcsr [r15 + 136]",
                    "push qword ptr [r15 + 128]",
                    "popfq",
                    "mov r15, [r15 + 120]",
                    $insn,
                    "pushfq",
                    "push r15",
                    "mov r15, [rsp + 24]",
                    "mov [r15], rax",
                    "mov [r15 + 8], rcx",
                    "mov [r15 + 16], rdx",
                    "mov [r15 + 24], rbx",
                    "mov [r15 + 40], rbp",
                    "mov [r15 + 48], rsi",
                    "mov [r15 + 56], rdi",
                    "mov [r15 + 64], r8",
                    "mov [r15 + 72], r9",
                    "mov [r15 + 80], r10",
                    "mov [r15 + 88], r11",
                    "mov [r15 + 96], r12",
                    "mov [r15 + 104], r13",
                    "mov [r15 + 112], r14",
                    concat!($mov, " [r15 + 144], ", $reg, "0"),
                    concat!($mov, " [r15 + ", $vec1, "], ", $reg, "1"),
                    "stmxcsr [r15 + 136]",
                    $($tail,)?
                    "pop rax",
                    "mov [r15 + 120], rax",
                    "pop rax",
                    "mov [r15 + 128], rax",
                    "ldmxcsr [rsp]",
                    "add rsp, 8",
                    "pop r15",
                    "pop rbx",
                    "pop rbp",
                    inout("r15") s as *mut $state => _,
                    out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    out("r12") _, out("r13") _, out("r14") _,
                    out("xmm0") _, out("xmm1") _,
                )
            }
        }
        run
    }};
}

/// A form: a function that loads every general register, XMM0, XMM1 and the
/// flags from a [`State`], runs the instruction, and stores them all back.
macro_rules! form {
    ($insn:literal, $width:literal, $mem:ident) => {
        Form {
            text: $insn,
            width: $width,
            mem: $mem,
            run: harness!(State, $insn, "movups", "xmm", 160),
        }
    };
}

/// Every emulated form at every width it exists in.
static FORMS: &[Form] = &[
    form!("add al, byte ptr [rdi]", 1, R),
    form!("add byte ptr [rdi], cl", 1, RW),
    form!("add byte ptr [rdi], 0x7f", 1, RW),
    form!("add byte ptr [rdi], -3", 1, RW),
    form!("add ax, word ptr [rdi]", 2, R),
    form!("add word ptr [rdi], cx", 2, RW),
    form!("add word ptr [rdi], -3", 2, RW),
    form!("add word ptr [rdi], 0x1234", 2, RW),
    form!("add eax, dword ptr [rdi]", 4, R),
    form!("add dword ptr [rdi], ecx", 4, RW),
    form!("add dword ptr [rdi], 0x100", 4, RW),
    form!("add dword ptr [rdi], -0x12345678", 4, RW),
    form!("add rax, qword ptr [rdi]", 8, R),
    form!("add qword ptr [rdi], rcx", 8, RW),
    form!("add qword ptr [rdi], 4", 8, RW),
    form!("add qword ptr [rdi], -0x7654321", 8, RW),
    form!("adc dl, byte ptr [rdi]", 1, R),
    form!("adc byte ptr [rdi], bl", 1, RW),
    form!("adc byte ptr [rdi], 0x7f", 1, RW),
    form!("adc byte ptr [rdi], -3", 1, RW),
    form!("adc dx, word ptr [rdi]", 2, R),
    form!("adc word ptr [rdi], bx", 2, RW),
    form!("adc word ptr [rdi], -3", 2, RW),
    form!("adc word ptr [rdi], 0x1234", 2, RW),
    form!("adc edx, dword ptr [rdi]", 4, R),
    form!("adc dword ptr [rdi], ebx", 4, RW),
    form!("adc dword ptr [rdi], 0x100", 4, RW),
    form!("adc dword ptr [rdi], -0x12345678", 4, RW),
    form!("adc rdx, qword ptr [rdi]", 8, R),
    form!("adc qword ptr [rdi], rbx", 8, RW),
    form!("adc qword ptr [rdi], 4", 8, RW),
    form!("adc qword ptr [rdi], -0x7654321", 8, RW),
    form!("sub ah, byte ptr [rdi]", 1, R),
    form!("sub byte ptr [rdi], ch", 1, RW),
    form!("sub byte ptr [rdi], 0x7f", 1, RW),
    form!("sub byte ptr [rdi], -3", 1, RW),
    form!("sub si, word ptr [rdi]", 2, R),
    form!("sub word ptr [rdi], bp", 2, RW),
    form!("sub word ptr [rdi], -3", 2, RW),
    form!("sub word ptr [rdi], 0x1234", 2, RW),
    form!("sub esi, dword ptr [rdi]", 4, R),
    form!("sub dword ptr [rdi], ebp", 4, RW),
    form!("sub dword ptr [rdi], 0x100", 4, RW),
    form!("sub dword ptr [rdi], -0x12345678", 4, RW),
    form!("sub rsi, qword ptr [rdi]", 8, R),
    form!("sub qword ptr [rdi], rbp", 8, RW),
    form!("sub qword ptr [rdi], 4", 8, RW),
    form!("sub qword ptr [rdi], -0x7654321", 8, RW),
    form!("sbb dh, byte ptr [rdi]", 1, R),
    form!("sbb byte ptr [rdi], bh", 1, RW),
    form!("sbb byte ptr [rdi], 0x7f", 1, RW),
    form!("sbb byte ptr [rdi], -3", 1, RW),
    form!("sbb r8w, word ptr [rdi]", 2, R),
    form!("sbb word ptr [rdi], r9w", 2, RW),
    form!("sbb word ptr [rdi], -3", 2, RW),
    form!("sbb word ptr [rdi], 0x1234", 2, RW),
    form!("sbb r8d, dword ptr [rdi]", 4, R),
    form!("sbb dword ptr [rdi], r9d", 4, RW),
    form!("sbb dword ptr [rdi], 0x100", 4, RW),
    form!("sbb dword ptr [rdi], -0x12345678", 4, RW),
    form!("sbb r8, qword ptr [rdi]", 8, R),
    form!("sbb qword ptr [rdi], r9", 8, RW),
    form!("sbb qword ptr [rdi], 4", 8, RW),
    form!("sbb qword ptr [rdi], -0x7654321", 8, RW),
    form!("and sil, byte ptr [rdi]", 1, R),
    form!("and byte ptr [rdi], bpl", 1, RW),
    form!("and byte ptr [rdi], 0x7f", 1, RW),
    form!("and byte ptr [rdi], -3", 1, RW),
    form!("and r10w, word ptr [rdi]", 2, R),
    form!("and word ptr [rdi], r11w", 2, RW),
    form!("and word ptr [rdi], -3", 2, RW),
    form!("and word ptr [rdi], 0x1234", 2, RW),
    form!("and r10d, dword ptr [rdi]", 4, R),
    form!("and dword ptr [rdi], r11d", 4, RW),
    form!("and dword ptr [rdi], 0x100", 4, RW),
    form!("and dword ptr [rdi], -0x12345678", 4, RW),
    form!("and r10, qword ptr [rdi]", 8, R),
    form!("and qword ptr [rdi], r11", 8, RW),
    form!("and qword ptr [rdi], 4", 8, RW),
    form!("and qword ptr [rdi], -0x7654321", 8, RW),
    form!("or r8b, byte ptr [rdi]", 1, R),
    form!("or byte ptr [rdi], r9b", 1, RW),
    form!("or byte ptr [rdi], 0x7f", 1, RW),
    form!("or byte ptr [rdi], -3", 1, RW),
    form!("or r12w, word ptr [rdi]", 2, R),
    form!("or word ptr [rdi], r13w", 2, RW),
    form!("or word ptr [rdi], -3", 2, RW),
    form!("or word ptr [rdi], 0x1234", 2, RW),
    form!("or r12d, dword ptr [rdi]", 4, R),
    form!("or dword ptr [rdi], r13d", 4, RW),
    form!("or dword ptr [rdi], 0x100", 4, RW),
    form!("or dword ptr [rdi], -0x12345678", 4, RW),
    form!("or r12, qword ptr [rdi]", 8, R),
    form!("or qword ptr [rdi], r13", 8, RW),
    form!("or qword ptr [rdi], 4", 8, RW),
    form!("or qword ptr [rdi], -0x7654321", 8, RW),
    form!("xor r10b, byte ptr [rdi]", 1, R),
    form!("xor byte ptr [rdi], r11b", 1, RW),
    form!("xor byte ptr [rdi], 0x7f", 1, RW),
    form!("xor byte ptr [rdi], -3", 1, RW),
    form!("xor r14w, word ptr [rdi]", 2, R),
    form!("xor word ptr [rdi], r15w", 2, RW),
    form!("xor word ptr [rdi], -3", 2, RW),
    form!("xor word ptr [rdi], 0x1234", 2, RW),
    form!("xor r14d, dword ptr [rdi]", 4, R),
    form!("xor dword ptr [rdi], r15d", 4, RW),
    form!("xor dword ptr [rdi], 0x100", 4, RW),
    form!("xor dword ptr [rdi], -0x12345678", 4, RW),
    form!("xor r14, qword ptr [rdi]", 8, R),
    form!("xor qword ptr [rdi], r15", 8, RW),
    form!("xor qword ptr [rdi], 4", 8, RW),
    form!("xor qword ptr [rdi], -0x7654321", 8, RW),
    form!("cmp r12b, byte ptr [rdi]", 1, R),
    form!("cmp byte ptr [rdi], r13b", 1, R),
    form!("cmp byte ptr [rdi], 0x7f", 1, R),
    form!("cmp byte ptr [rdi], -3", 1, R),
    form!("cmp ax, word ptr [rdi]", 2, R),
    form!("cmp word ptr [rdi], cx", 2, R),
    form!("cmp word ptr [rdi], -3", 2, R),
    form!("cmp word ptr [rdi], 0x1234", 2, R),
    form!("cmp eax, dword ptr [rdi]", 4, R),
    form!("cmp dword ptr [rdi], ecx", 4, R),
    form!("cmp dword ptr [rdi], 0x100", 4, R),
    form!("cmp dword ptr [rdi], -0x12345678", 4, R),
    form!("cmp rax, qword ptr [rdi]", 8, R),
    form!("cmp qword ptr [rdi], rcx", 8, R),
    form!("cmp qword ptr [rdi], 4", 8, R),
    form!("cmp qword ptr [rdi], -0x7654321", 8, R),
    form!("test byte ptr [rdi], r14b", 1, R),
    form!("test byte ptr [rdi], -3", 1, R),
    form!("inc byte ptr [rdi]", 1, RW),
    form!("dec byte ptr [rdi]", 1, RW),
    form!("neg byte ptr [rdi]", 1, RW),
    form!("not byte ptr [rdi]", 1, RW),
    form!("test word ptr [rdi], dx", 2, R),
    form!("test word ptr [rdi], 0x1234", 2, R),
    form!("inc word ptr [rdi]", 2, RW),
    form!("dec word ptr [rdi]", 2, RW),
    form!("neg word ptr [rdi]", 2, RW),
    form!("not word ptr [rdi]", 2, RW),
    form!("test dword ptr [rdi], edx", 4, R),
    form!("test dword ptr [rdi], -0x12345678", 4, R),
    form!("inc dword ptr [rdi]", 4, RW),
    form!("dec dword ptr [rdi]", 4, RW),
    form!("neg dword ptr [rdi]", 4, RW),
    form!("not dword ptr [rdi]", 4, RW),
    form!("test qword ptr [rdi], rdx", 8, R),
    form!("test qword ptr [rdi], -0x7654321", 8, R),
    form!("inc qword ptr [rdi]", 8, RW),
    form!("dec qword ptr [rdi]", 8, RW),
    form!("neg qword ptr [rdi]", 8, RW),
    form!("not qword ptr [rdi]", 8, RW),
    form!("imul bx, word ptr [rdi]", 2, R),
    form!("imul si, word ptr [rdi], -3", 2, R),
    form!("imul bp, word ptr [rdi], 0x1234", 2, R),
    form!("bt word ptr [rdi], 0", 2, R),
    form!("bt word ptr [rdi], 5", 2, R),
    form!("bt word ptr [rdi], 15", 2, R),
    form!("bt word ptr [rdi], 200", 2, R),
    form!("movbe r8w, word ptr [rdi]", 2, R),
    form!("movbe word ptr [rdi], r9w", 2, W),
    form!("imul ebx, dword ptr [rdi]", 4, R),
    form!("imul esi, dword ptr [rdi], -3", 4, R),
    form!("imul ebp, dword ptr [rdi], 0x1234", 4, R),
    form!("bt dword ptr [rdi], 0", 4, R),
    form!("bt dword ptr [rdi], 5", 4, R),
    form!("bt dword ptr [rdi], 31", 4, R),
    form!("bt dword ptr [rdi], 200", 4, R),
    form!("movbe r8d, dword ptr [rdi]", 4, R),
    form!("movbe dword ptr [rdi], r9d", 4, W),
    form!("imul rbx, qword ptr [rdi]", 8, R),
    form!("imul rsi, qword ptr [rdi], -3", 8, R),
    form!("imul rbp, qword ptr [rdi], 0x1234", 8, R),
    form!("bt qword ptr [rdi], 0", 8, R),
    form!("bt qword ptr [rdi], 5", 8, R),
    form!("bt qword ptr [rdi], 63", 8, R),
    form!("bt qword ptr [rdi], 200", 8, R),
    form!("movbe r8, qword ptr [rdi]", 8, R),
    form!("movbe qword ptr [rdi], r9", 8, W),
    form!("mov r15b, byte ptr [rdi]", 1, R),
    form!("mov byte ptr [rdi], al", 1, W),
    form!("mov byte ptr [rdi], -3", 1, W),
    form!("mov r10w, word ptr [rdi]", 2, R),
    form!("mov word ptr [rdi], r11w", 2, W),
    form!("mov word ptr [rdi], 0x1234", 2, W),
    form!("mov r10d, dword ptr [rdi]", 4, R),
    form!("mov dword ptr [rdi], r11d", 4, W),
    form!("mov dword ptr [rdi], -0x12345678", 4, W),
    form!("mov r10, qword ptr [rdi]", 8, R),
    form!("mov qword ptr [rdi], r11", 8, W),
    form!("mov qword ptr [rdi], -0x7654321", 8, W),
    form!("movzx r12d, byte ptr [rdi]", 1, R),
    form!("movzx r12, byte ptr [rdi]", 1, R),
    form!("movsx r12w, byte ptr [rdi]", 1, R),
    form!("movsx r13, byte ptr [rdi]", 1, R),
    form!("movzx r13d, word ptr [rdi]", 2, R),
    form!("movzx r14, word ptr [rdi]", 2, R),
    form!("movsx r14d, word ptr [rdi]", 2, R),
    form!("movsx r15, word ptr [rdi]", 2, R),
    form!("movsxd rdx, dword ptr [rdi]", 4, R),
    form!("movd xmm0, dword ptr [rdi]", 4, R),
    form!("movd dword ptr [rdi], xmm1", 4, W),
    form!("movq xmm1, qword ptr [rdi]", 8, R),
    form!("movq qword ptr [rdi], xmm0", 8, W),
    form!("movss xmm0, dword ptr [rdi]", 4, R),
    form!("movss dword ptr [rdi], xmm1", 4, W),
    form!("movsd xmm1, qword ptr [rdi]", 8, R),
    form!("movsd qword ptr [rdi], xmm0", 8, W),
    form!("shl byte ptr [rdi], 1", 1, RW),
    form!("sal byte ptr [rdi], 5", 1, RW),
    form!("shr byte ptr [rdi], 3", 1, RW),
    form!("sar byte ptr [rdi], cl", 1, RW),
    form!("shl byte ptr [rdi], cl", 1, RW),
    form!("rol byte ptr [rdi], 7", 1, RW),
    form!("ror byte ptr [rdi], cl", 1, RW),
    form!("shr byte ptr [rdi], 7", 1, RW),
    form!("shl word ptr [rdi], 1", 2, RW),
    form!("sal word ptr [rdi], 5", 2, RW),
    form!("shr word ptr [rdi], 3", 2, RW),
    form!("sar word ptr [rdi], cl", 2, RW),
    form!("shl word ptr [rdi], cl", 2, RW),
    form!("rol word ptr [rdi], 7", 2, RW),
    form!("ror word ptr [rdi], cl", 2, RW),
    form!("shr word ptr [rdi], 15", 2, RW),
    form!("shl dword ptr [rdi], 1", 4, RW),
    form!("sal dword ptr [rdi], 5", 4, RW),
    form!("shr dword ptr [rdi], 3", 4, RW),
    form!("sar dword ptr [rdi], cl", 4, RW),
    form!("shl dword ptr [rdi], cl", 4, RW),
    form!("rol dword ptr [rdi], 7", 4, RW),
    form!("ror dword ptr [rdi], cl", 4, RW),
    form!("shr dword ptr [rdi], 31", 4, RW),
    form!("shl qword ptr [rdi], 1", 8, RW),
    form!("sal qword ptr [rdi], 5", 8, RW),
    form!("shr qword ptr [rdi], 3", 8, RW),
    form!("sar qword ptr [rdi], cl", 8, RW),
    form!("shl qword ptr [rdi], cl", 8, RW),
    form!("rol qword ptr [rdi], 7", 8, RW),
    form!("ror qword ptr [rdi], cl", 8, RW),
    form!("shr qword ptr [rdi], 63", 8, RW),
    form!("bsf ax, word ptr [rdi]", 2, R),
    form!("bsr r8w, word ptr [rdi]", 2, R),
    form!("tzcnt si, word ptr [rdi]", 2, R),
    form!("lzcnt ax, word ptr [rdi]", 2, R),
    form!("popcnt r8w, word ptr [rdi]", 2, R),
    form!("bsf ecx, dword ptr [rdi]", 4, R),
    form!("bsr r9d, dword ptr [rdi]", 4, R),
    form!("tzcnt esi, dword ptr [rdi]", 4, R),
    form!("lzcnt ecx, dword ptr [rdi]", 4, R),
    form!("popcnt r9d, dword ptr [rdi]", 4, R),
    form!("bsf rdx, qword ptr [rdi]", 8, R),
    form!("bsr r10, qword ptr [rdi]", 8, R),
    form!("tzcnt rsi, qword ptr [rdi]", 8, R),
    form!("lzcnt rdx, qword ptr [rdi]", 8, R),
    form!("popcnt r10, qword ptr [rdi]", 8, R),
    form!("blsr eax, dword ptr [rdi]", 4, R),
    form!("blsi eax, dword ptr [rdi]", 4, R),
    form!("blsmsk eax, dword ptr [rdi]", 4, R),
    form!("andn eax, ecx, dword ptr [rdi]", 4, R),
    form!("pdep eax, ecx, dword ptr [rdi]", 4, R),
    form!("pext eax, ecx, dword ptr [rdi]", 4, R),
    form!("bextr eax, dword ptr [rdi], esi", 4, R),
    form!("bzhi eax, dword ptr [rdi], esi", 4, R),
    form!("shlx eax, dword ptr [rdi], esi", 4, R),
    form!("shrx eax, dword ptr [rdi], esi", 4, R),
    form!("sarx eax, dword ptr [rdi], esi", 4, R),
    form!("blsr rax, qword ptr [rdi]", 8, R),
    form!("blsi rax, qword ptr [rdi]", 8, R),
    form!("blsmsk rax, qword ptr [rdi]", 8, R),
    form!("andn rax, rcx, qword ptr [rdi]", 8, R),
    form!("pdep rax, rcx, qword ptr [rdi]", 8, R),
    form!("pext rax, rcx, qword ptr [rdi]", 8, R),
    form!("bextr rax, qword ptr [rdi], rsi", 8, R),
    form!("bzhi rax, qword ptr [rdi], rsi", 8, R),
    form!("shlx rax, qword ptr [rdi], rsi", 8, R),
    form!("shrx rax, qword ptr [rdi], rsi", 8, R),
    form!("sarx rax, qword ptr [rdi], rsi", 8, R),
    form!("rorx eax, dword ptr [rdi], 13", 4, R),
    form!("rorx r11, qword ptr [rdi], 45", 8, R),
    form!("mulx r8d, r9d, dword ptr [rdi]", 4, R),
    form!("mulx rcx, rbx, qword ptr [rdi]", 8, R),
    form!("mulx rcx, rcx, qword ptr [rdi]", 8, R),
    form!("mulx rdx, rax, qword ptr [rdi]", 8, R),
    form!("mulx eax, edx, dword ptr [rdi]", 4, R),
    form!("andn rsi, rsi, qword ptr [rdi]", 8, R),
    form!("shlx ecx, dword ptr [rdi], ecx", 4, R),
    form!("rorx eax, dword ptr [rdi], 0", 4, R),
    form!("rorx rax, qword ptr [rdi], 255", 8, R),
    form!("mul byte ptr [rdi]", 1, R),
    form!("imul byte ptr [rdi]", 1, R),
    form!("div byte ptr [rdi]", 1, R),
    form!("idiv byte ptr [rdi]", 1, R),
    form!("mul word ptr [rdi]", 2, R),
    form!("imul word ptr [rdi]", 2, R),
    form!("div word ptr [rdi]", 2, R),
    form!("idiv word ptr [rdi]", 2, R),
    form!("mul dword ptr [rdi]", 4, R),
    form!("imul dword ptr [rdi]", 4, R),
    form!("div dword ptr [rdi]", 4, R),
    form!("idiv dword ptr [rdi]", 4, R),
    form!("mul qword ptr [rdi]", 8, R),
    form!("imul qword ptr [rdi]", 8, R),
    form!("div qword ptr [rdi]", 8, R),
    form!("idiv qword ptr [rdi]", 8, R),
    form!("shld word ptr [rdi], si, 5", 2, RW),
    form!("shrd word ptr [rdi], bx, cl", 2, RW),
    form!("shld dword ptr [rdi], esi, cl", 4, RW),
    form!("shrd dword ptr [rdi], ecx, 31", 4, RW),
    form!("shld qword ptr [rdi], rbx, cl", 8, RW),
    form!("shrd qword ptr [rdi], rsi, 13", 8, RW),
    form!("shld qword ptr [rdi], rcx, cl", 8, RW),
    form!("shrd word ptr [rdi], cx, cl", 2, RW),
    form!("seto byte ptr [rdi]", 1, W),
    form!("setb byte ptr [rdi]", 1, W),
    form!("xadd byte ptr [rdi], cl", 1, RW),
    form!("xadd byte ptr [rdi], ah", 1, RW),
    form!("xadd word ptr [rdi], si", 2, RW),
    form!("xadd dword ptr [rdi], ecx", 4, RW),
    form!("xadd qword ptr [rdi], r9", 8, RW),
    form!("cmpxchg byte ptr [rdi], cl", 1, RW),
    form!("cmpxchg word ptr [rdi], ax", 2, RW),
    form!("cmpxchg dword ptr [rdi], ecx", 4, RW),
    form!("cmpxchg dword ptr [rdi], eax", 4, RW),
    form!("cmpxchg qword ptr [rdi], rsi", 8, RW),
    form!("sete byte ptr [rdi]", 1, W),
    form!("setno byte ptr [rdi]", 1, W),
    form!("seta byte ptr [rdi]", 1, W),
    form!("setns byte ptr [rdi]", 1, W),
    form!("setnp byte ptr [rdi]", 1, W),
    form!("setge byte ptr [rdi]", 1, W),
    form!("setle byte ptr [rdi]", 1, W),
    form!("setbe byte ptr [rdi]", 1, W),
    form!("sets byte ptr [rdi]", 1, W),
    form!("setp byte ptr [rdi]", 1, W),
    form!("setl byte ptr [rdi]", 1, W),
    form!("setg byte ptr [rdi]", 1, W),
    form!("setne byte ptr [rdi]", 1, W),
    form!("setae byte ptr [rdi]", 1, W),
    form!("cmove eax, dword ptr [rdi]", 4, R),
    form!("cmovne rax, qword ptr [rdi]", 8, R),
    form!("cmovl cx, word ptr [rdi]", 2, R),
    form!("cmova r10d, dword ptr [rdi]", 4, R),
    form!("cmovs r11, qword ptr [rdi]", 8, R),
    form!("cmovp edx, dword ptr [rdi]", 4, R),
];

/// Whether this CPU runs `form` (the BMI and POPCNT forms need their
/// extension; `TZCNT`/`LZCNT` run everywhere, as `BSF`/`BSR` before BMI1).
fn cpu_runs(form: &Form) -> bool {
    let mnemonic = form.text.split(' ').next().unwrap_or_default();
    match mnemonic {
        "popcnt" => is_x86_feature_detected!("popcnt"),
        "andn" | "bextr" | "blsr" | "blsi" | "blsmsk" => is_x86_feature_detected!("bmi1"),
        "bzhi" | "shlx" | "shrx" | "sarx" | "pdep" | "pext" | "rorx" | "mulx" => {
            is_x86_feature_detected!("bmi2")
        }
        _ => true,
    }
}

/// Keeps a division's operands clear of the divide error: the divisor is
/// neither 0 nor, for `IDIV`, -1, and a dividend whose quotient would not fit
/// the width gets the sign (or zero) extension of its low half as its high
/// half.
fn clear_of_divide_error(form: &Form, s: &mut State, divisor: &mut u64) {
    const RAX: usize = 0;
    const RDX: usize = 2;
    let signed = form.text.starts_with("idiv");
    if !signed && !form.text.starts_with("div") {
        return;
    }
    let w = form.width;
    let bits = 8 * w as u32;
    let d = *divisor & mask(w);
    if d == 0 || (signed && d == mask(w)) {
        *divisor = (*divisor & !mask(w)) | 3;
    }
    // The dividend as the instruction sees it: AX, or RDX:RAX at the width.
    let (lo, hi) = if w == 1 {
        (s.gpr[RAX] & 0xff, (s.gpr[RAX] >> 8) & 0xff)
    } else {
        (s.gpr[RAX] & mask(w), s.gpr[RDX] & mask(w))
    };
    let dividend = u128::from(hi) << bits | u128::from(lo);
    let divisor_w = *divisor & mask(w);
    // Random dividends whose quotient fits (near the limit, often) are kept;
    // others get the extension of their low half as their high half.
    let fits = if signed {
        let shift = 128 - 2 * bits;
        let n = ((dividend << shift) as i128) >> shift;
        let dv = ((u128::from(divisor_w) << (128 - bits)) as i128) >> (128 - bits);
        let q = n / dv;
        q >= -(1i128 << (bits - 1)) && q < 1i128 << (bits - 1)
    } else {
        dividend / u128::from(divisor_w) <= u128::from(mask(w))
    };
    if fits {
        return;
    }
    let negative = signed && lo >> (bits - 1) & 1 == 1;
    let high = if negative { mask(w) } else { 0 };
    if w == 1 {
        s.gpr[RAX] = (s.gpr[RAX] & !0xffff) | high << 8 | lo;
    } else {
        s.gpr[RDX] = (s.gpr[RDX] & !mask(w)) | high;
    }
}

fn mask(width: usize) -> u64 {
    if width == 8 {
        u64::MAX
    } else {
        (1 << (8 * width)) - 1
    }
}

/// The device accesses `mem` implies for a `width`-byte operand at `offset`
/// that held `before` and holds `after`.
fn expected(mem: Mem, offset: u64, width: usize, before: u64, after: u64) -> Vec<Rec> {
    let read = Rec {
        offset,
        width,
        value: before & mask(width),
        write: false,
    };
    let write = Rec {
        offset,
        width,
        value: after & mask(width),
        write: true,
    };
    match mem {
        R => vec![read],
        W => vec![write],
        RW => vec![read, write],
    }
}

#[test]
fn every_form_matches_the_cpu_on_random_operands() {
    let dev = Device::new(PAGE);
    let region = dev.trap_all();
    let rounds = if cfg!(debug_assertions) { 150 } else { 1000 };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut native = Box::new([0u64; 2]);
    let mut widths = [0usize; 9];
    let mut skipped = Vec::new();
    for form in FORMS {
        if !cpu_runs(form) {
            skipped.push(form.text);
            continue;
        }
        widths[form.width] += 1;
        for round in 0..rounds {
            let offset = 0x100 + (round % 8) * 8;
            let mut before = rng.operand();
            let mut input = State::default();
            input.gpr.iter_mut().for_each(|r| *r = rng.operand());
            input.rflags = (rng.next() & ARITH_FLAGS) | 0x202;
            input.xmm = [0; 2].map(|_| u128::from(rng.next()) << 64 | u128::from(rng.operand()));
            clear_of_divide_error(form, &mut input, &mut before);
            if form.text.starts_with("cmpxchg") && round % 2 == 0 {
                // Half the rounds find the accumulator in memory.
                before = (before & !mask(form.width)) | (input.gpr[0] & mask(form.width));
            }

            native[0] = before;
            let mut on_cpu = input;
            on_cpu.gpr[RDI] = native.as_mut_ptr() as u64;
            (form.run)(&mut on_cpu);

            dev.poke(offset, &before.to_le_bytes());
            dev.log.take();
            let mut emulated = input;
            let trapped = base(&region) as u64 + offset;
            emulated.gpr[RDI] = trapped;
            (form.run)(&mut emulated);
            let log = dev.log.take();
            let after = word(&dev.peek(offset, 8));

            let what = format!("{} on {before:#x} from {input:#x?}", form.text);
            assert_eq!(emulated.gpr[RDI], trapped, "{what}");
            emulated.gpr[RDI] = on_cpu.gpr[RDI];
            assert_eq!(emulated, on_cpu, "registers after {what}");
            assert_eq!(after, native[0], "memory after {what}");
            assert_eq!(
                log,
                expected(form.mem, offset, form.width, before, after),
                "{what}"
            );
        }
    }
    // Every width of the ALU forms is there.
    assert!(
        widths[1] > 40 && widths[2] > 40 && widths[4] > 40 && widths[8] > 40,
        "{widths:?}"
    );
    if !skipped.is_empty() {
        eprintln!(
            "this CPU lacks the extension of {} forms: {skipped:?}",
            skipped.len()
        );
    }
}

#[test]
fn flags_kept_by_inc_dec_and_set_by_bt_are_the_cpus() {
    // Targeted cases behind the random ones: INC keeps CF whatever it was,
    // BT copies the bit into CF, NEG of 0 clears CF, IMUL overflow sets CF/OF.
    let dev = Device::new(PAGE);
    let region = dev.trap_all();
    // (form, memory, incoming CF, CF afterwards)
    let cases: [(&str, u64, u64, u64); 6] = [
        ("inc dword ptr [rdi]", 0xffff_ffff, 1, 1),
        ("inc dword ptr [rdi]", 0xffff_ffff, 0, 0),
        ("dec byte ptr [rdi]", 0x80, 1, 1),
        ("bt qword ptr [rdi], 200", 0x100, 0, 1),
        ("neg word ptr [rdi]", 0, 1, 0),
        ("imul ebp, dword ptr [rdi], 0x1234", 0x7fff_ffff, 0, 1),
    ];
    for (text, value, flags, cf) in cases {
        let form = FORMS.iter().find(|f| f.text == text).unwrap();
        let mut native = Box::new([value, 0]);
        let input = State {
            rflags: flags | 0x202,
            ..State::default()
        };
        let mut on_cpu = input;
        on_cpu.gpr[RDI] = native.as_mut_ptr() as u64;
        (form.run)(&mut on_cpu);
        dev.poke(0, &value.to_le_bytes());
        let mut emulated = input;
        emulated.gpr[RDI] = base(&region) as u64;
        (form.run)(&mut emulated);
        assert_eq!(emulated.rflags, on_cpu.rflags, "{text} on {value:#x}, CF={flags}");
        assert_eq!(
            emulated.rflags & 1,
            cf,
            "CF after {text} on {value:#x}, CF={flags}"
        );
        assert_eq!(word(&dev.peek(0, 8)), native[0], "{text}");
    }
}

// ---- access patterns compiled at test time ----

/// The same access patterns in Rust and C: `u64 name(void *p, u64 x)`,
/// each making the device accesses listed in [`PATTERNS`].
const RUST_PATTERNS: &str = r#"
#![allow(clippy::missing_safety_doc)]
use std::ptr::{read_volatile as rd, write_volatile as wr};
#[no_mangle] pub unsafe extern "C" fn sum4_u32(p: *mut u8, x: u64) -> u64 {
    let p = p as *const u32; let mut acc = x as u32;
    for i in 0..4 { acc = acc.wrapping_add(rd(p.add(i))); }
    acc as u64
}
#[no_mangle] pub unsafe extern "C" fn or4_u32(p: *mut u8, _x: u64) -> u64 { let p = p as *mut u32; wr(p, rd(p) | 4); 0 }
#[no_mangle] pub unsafe extern "C" fn inc_u32(p: *mut u8, _x: u64) -> u64 { let p = p as *mut u32; wr(p, rd(p).wrapping_add(1)); 0 }
#[no_mangle] pub unsafe extern "C" fn dec_u16(p: *mut u8, _x: u64) -> u64 { let p = p as *mut u16; wr(p, rd(p).wrapping_sub(1)); 0 }
#[no_mangle] pub unsafe extern "C" fn add_u8(p: *mut u8, x: u64) -> u64 { wr(p, rd(p).wrapping_add(x as u8)); 0 }
#[no_mangle] pub unsafe extern "C" fn sub_u64(p: *mut u8, x: u64) -> u64 { let p = p as *mut u64; wr(p, rd(p).wrapping_sub(x)); 0 }
#[no_mangle] pub unsafe extern "C" fn xor_u16(p: *mut u8, x: u64) -> u64 { let p = p as *mut u16; wr(p, rd(p) ^ x as u16); 0 }
#[no_mangle] pub unsafe extern "C" fn neg_u32(p: *mut u8, _x: u64) -> u64 { let p = p as *mut u32; wr(p, rd(p).wrapping_neg()); 0 }
#[no_mangle] pub unsafe extern "C" fn not_u64(p: *mut u8, _x: u64) -> u64 { let p = p as *mut u64; wr(p, !rd(p)); 0 }
#[no_mangle] pub unsafe extern "C" fn shl1_u32(p: *mut u8, _x: u64) -> u64 { let p = p as *mut u32; wr(p, rd(p) << 1); 0 }
#[no_mangle] pub unsafe extern "C" fn shr3_u64(p: *mut u8, _x: u64) -> u64 { let p = p as *mut u64; wr(p, rd(p) >> 3); 0 }
#[no_mangle] pub unsafe extern "C" fn sar_i32(p: *mut u8, x: u64) -> u64 { let p = p as *mut i32; wr(p, rd(p) >> (x & 31)); 0 }
#[no_mangle] pub unsafe extern "C" fn and_u64(p: *mut u8, x: u64) -> u64 { x & rd(p as *const u64) }
#[no_mangle] pub unsafe extern "C" fn minus_u32(p: *mut u8, x: u64) -> u64 { (x as u32).wrapping_sub(rd(p as *const u32)) as u64 }
#[no_mangle] pub unsafe extern "C" fn mul_u32(p: *mut u8, x: u64) -> u64 { (x as u32).wrapping_mul(rd(p as *const u32)) as u64 }
#[no_mangle] pub unsafe extern "C" fn mul10_u64(p: *mut u8, _x: u64) -> u64 { rd(p as *const u64).wrapping_mul(10) }
#[no_mangle] pub unsafe extern "C" fn poll_bit_u32(p: *mut u8, _x: u64) -> u64 { while rd(p as *const u32) & 0x100 == 0 {} 1 }
#[no_mangle] pub unsafe extern "C" fn poll_zero_u64(p: *mut u8, _x: u64) -> u64 { while rd(p as *const u64) != 0 {} 1 }
#[no_mangle] pub unsafe extern "C" fn bit40_u64(p: *mut u8, _x: u64) -> u64 { (rd(p as *const u64) >> 40) & 1 }
#[no_mangle] pub unsafe extern "C" fn eq_u8(p: *mut u8, x: u64) -> u64 { (rd(p) == x as u8) as u64 }
#[no_mangle] pub unsafe extern "C" fn lt_i16(p: *mut u8, x: u64) -> u64 { (rd(p as *const i16) < x as i16) as u64 }
#[no_mangle] pub unsafe extern "C" fn sext_i16(p: *mut u8, x: u64) -> u64 { (rd(p as *const i16) as i64).wrapping_add(x as i64) as u64 }
#[no_mangle] pub unsafe extern "C" fn load_f64(p: *mut u8, _x: u64) -> u64 { (rd(p as *const f64) * 2.0).to_bits() }
#[no_mangle] pub unsafe extern "C" fn store_f64(p: *mut u8, x: u64) -> u64 { wr(p as *mut f64, x as f64 * 0.5); 0 }
#[no_mangle] pub unsafe extern "C" fn load_f32(p: *mut u8, _x: u64) -> u64 { (rd(p as *const f32) * 2.0).to_bits() as u64 }
#[no_mangle] pub unsafe extern "C" fn store_f32(p: *mut u8, x: u64) -> u64 { wr(p as *mut f32, x as f32 * 0.5); 0 }
#[no_mangle] pub unsafe extern "C" fn from_be_u32(p: *mut u8, _x: u64) -> u64 { u32::from_be(rd(p as *const u32)) as u64 }
#[no_mangle] pub unsafe extern "C" fn store_be_u64(p: *mut u8, x: u64) -> u64 { wr(p as *mut u64, x.to_be()); 0 }
#[no_mangle] pub unsafe extern "C" fn tz_u32(p: *mut u8, _x: u64) -> u64 { rd(p as *const u32).trailing_zeros() as u64 }
#[no_mangle] pub unsafe extern "C" fn lz_u64(p: *mut u8, _x: u64) -> u64 { rd(p as *const u64).leading_zeros() as u64 }
#[no_mangle] pub unsafe extern "C" fn pop_u32(p: *mut u8, _x: u64) -> u64 { rd(p as *const u32).count_ones() as u64 }
#[no_mangle] pub unsafe extern "C" fn flag_u8(p: *mut u8, x: u64) -> u64 { wr(p, (x & 3 == 3) as u8); 0 }
#[no_mangle] pub unsafe extern "C" fn funnel_u64(p: *mut u8, x: u64) -> u64 { let p = p as *mut u64; wr(p, (rd(p) << 7) | (x >> 57)); 0 }
#[no_mangle] pub unsafe extern "C" fn mulhi_u64(p: *mut u8, x: u64) -> u64 { ((rd(p as *const u64) as u128 * x as u128) >> 64) as u64 }
#[no_mangle] pub unsafe extern "C" fn div_u32(p: *mut u8, x: u64) -> u64 { (x as u32).checked_div(rd(p as *const u32)).unwrap_or(0) as u64 }
#[no_mangle] pub unsafe extern "C" fn andn_u64(p: *mut u8, x: u64) -> u64 { !x & rd(p as *const u64) }
#[no_mangle] pub unsafe extern "C" fn shr_var_u32(p: *mut u8, x: u64) -> u64 { (rd(p as *const u32) >> (x & 31)) as u64 }
#[no_mangle] pub unsafe extern "C" fn field_u32(p: *mut u8, _x: u64) -> u64 { ((rd(p as *const u32) >> 4) & 0xfff) as u64 }
#[no_mangle] pub unsafe extern "C" fn fadd_f64(p: *mut u8, x: u64) -> u64 { (rd(p as *const f64) + x as f64).to_bits() }
#[no_mangle] pub unsafe extern "C" fn fmul_f32(p: *mut u8, x: u64) -> u64 { (rd(p as *const f32) * x as f32).to_bits() as u64 }
#[no_mangle] pub unsafe extern "C" fn itof_i32(p: *mut u8, _x: u64) -> u64 { (rd(p as *const i32) as f64).to_bits() }
#[no_mangle] pub unsafe extern "C" fn fless_f64(p: *mut u8, x: u64) -> u64 { (rd(p as *const f64) < x as f64) as u64 }
#[no_mangle] pub unsafe extern "C" fn ftoi_f64(p: *mut u8, _x: u64) -> u64 { rd(p as *const f64) as i64 as u64 }
#[no_mangle] pub unsafe extern "C" fn utof_u64(p: *mut u8, _x: u64) -> u64 { (rd(p as *const u64) as f64).to_bits() }
#[no_mangle] pub unsafe extern "C" fn store_hi_f64(p: *mut u8, x: u64) -> u64 {
    use std::arch::x86_64::*;
    let v = _mm_mul_pd(_mm_set_pd(x as f64, (x >> 3) as f64), _mm_set1_pd(0.5));
    let lanes: [f64; 2] = std::mem::transmute(v);
    wr(p as *mut f64, lanes[1]); 0
}
#[no_mangle] pub unsafe extern "C" fn insert_w(p: *mut u8, x: u64) -> u64 {
    use std::arch::x86_64::*;
    _mm_cvtsi128_si64(_mm_insert_epi16::<3>(_mm_set1_epi64x(x as i64), rd(p as *const u16) as i32)) as u64
}
"#;

const C_PATTERNS: &str = r#"
#include <stdint.h>
#include <string.h>
#include <emmintrin.h>
#define V(t, p) (*(volatile t *)(p))
uint64_t sum4_u32(void *p, uint64_t x) {
    uint32_t acc = x;
    for (int i = 0; i < 4; i++) acc += ((volatile uint32_t *)p)[i];
    return acc;
}
uint64_t or4_u32(void *p, uint64_t x) { V(uint32_t, p) |= 4; return 0; }
uint64_t inc_u32(void *p, uint64_t x) { V(uint32_t, p) += 1; return 0; }
uint64_t dec_u16(void *p, uint64_t x) { V(uint16_t, p) -= 1; return 0; }
uint64_t add_u8(void *p, uint64_t x) { V(uint8_t, p) += (uint8_t)x; return 0; }
uint64_t sub_u64(void *p, uint64_t x) { V(uint64_t, p) -= x; return 0; }
uint64_t xor_u16(void *p, uint64_t x) { V(uint16_t, p) ^= (uint16_t)x; return 0; }
uint64_t neg_u32(void *p, uint64_t x) { V(uint32_t, p) = -V(uint32_t, p); return 0; }
uint64_t not_u64(void *p, uint64_t x) { V(uint64_t, p) = ~V(uint64_t, p); return 0; }
uint64_t shl1_u32(void *p, uint64_t x) { V(uint32_t, p) <<= 1; return 0; }
uint64_t shr3_u64(void *p, uint64_t x) { V(uint64_t, p) >>= 3; return 0; }
uint64_t sar_i32(void *p, uint64_t x) { V(int32_t, p) >>= (x & 31); return 0; }
uint64_t and_u64(void *p, uint64_t x) { return x & V(uint64_t, p); }
uint64_t minus_u32(void *p, uint64_t x) { return (uint32_t)((uint32_t)x - V(uint32_t, p)); }
uint64_t mul_u32(void *p, uint64_t x) { return (uint32_t)((uint32_t)x * V(uint32_t, p)); }
uint64_t mul10_u64(void *p, uint64_t x) { return V(uint64_t, p) * 10; }
uint64_t poll_bit_u32(void *p, uint64_t x) { while (!(V(uint32_t, p) & 0x100)) {} return 1; }
uint64_t poll_zero_u64(void *p, uint64_t x) { while (V(uint64_t, p) != 0) {} return 1; }
uint64_t bit40_u64(void *p, uint64_t x) { return (V(uint64_t, p) >> 40) & 1; }
uint64_t eq_u8(void *p, uint64_t x) { return V(uint8_t, p) == (uint8_t)x; }
uint64_t lt_i16(void *p, uint64_t x) { return V(int16_t, p) < (int16_t)x; }
uint64_t sext_i16(void *p, uint64_t x) { return (uint64_t)((int64_t)V(int16_t, p) + (int64_t)x); }
uint64_t load_f64(void *p, uint64_t x) { double d = V(double, p) * 2.0; uint64_t b; memcpy(&b, &d, 8); return b; }
uint64_t store_f64(void *p, uint64_t x) { V(double, p) = (double)x * 0.5; return 0; }
uint64_t load_f32(void *p, uint64_t x) { float f = V(float, p) * 2.0f; uint32_t b; memcpy(&b, &f, 4); return b; }
uint64_t store_f32(void *p, uint64_t x) { V(float, p) = (float)x * 0.5f; return 0; }
uint64_t from_be_u32(void *p, uint64_t x) { return __builtin_bswap32(V(uint32_t, p)); }
uint64_t store_be_u64(void *p, uint64_t x) { V(uint64_t, p) = __builtin_bswap64(x); return 0; }
uint64_t tz_u32(void *p, uint64_t x) { return __builtin_ctz(V(uint32_t, p)); }
uint64_t lz_u64(void *p, uint64_t x) { return __builtin_clzll(V(uint64_t, p)); }
uint64_t pop_u32(void *p, uint64_t x) { return __builtin_popcount(V(uint32_t, p)); }
uint64_t flag_u8(void *p, uint64_t x) { V(uint8_t, p) = (x & 3) == 3; return 0; }
uint64_t funnel_u64(void *p, uint64_t x) { V(uint64_t, p) = (V(uint64_t, p) << 7) | (x >> 57); return 0; }
uint64_t mulhi_u64(void *p, uint64_t x) { return ((unsigned __int128)V(uint64_t, p) * x) >> 64; }
uint64_t div_u32(void *p, uint64_t x) { return (uint32_t)x / V(uint32_t, p); }
uint64_t andn_u64(void *p, uint64_t x) { return ~x & V(uint64_t, p); }
uint64_t shr_var_u32(void *p, uint64_t x) { return V(uint32_t, p) >> (x & 31); }
uint64_t field_u32(void *p, uint64_t x) { return (V(uint32_t, p) >> 4) & 0xfff; }
uint64_t fadd_f64(void *p, uint64_t x) { double d = V(double, p) + (double)x; uint64_t b; memcpy(&b, &d, 8); return b; }
uint64_t fmul_f32(void *p, uint64_t x) { float f = V(float, p) * (float)x; uint32_t b; memcpy(&b, &f, 4); return b; }
uint64_t itof_i32(void *p, uint64_t x) { double d = V(int32_t, p); uint64_t b; memcpy(&b, &d, 8); return b; }
uint64_t fless_f64(void *p, uint64_t x) { return V(double, p) < (double)x; }
uint64_t ftoi_f64(void *p, uint64_t x) { return (uint64_t)(int64_t)V(double, p); }
uint64_t utof_u64(void *p, uint64_t x) { double d = V(uint64_t, p); uint64_t b; memcpy(&b, &d, 8); return b; }
uint64_t store_hi_f64(void *p, uint64_t x) {
    __m128d v = _mm_mul_pd(_mm_set_pd((double)x, (double)(x >> 3)), _mm_set1_pd(0.5));
    V(double, p) = _mm_cvtsd_f64(_mm_unpackhi_pd(v, v));
    return 0;
}
uint64_t insert_w(void *p, uint64_t x) {
    return _mm_cvtsi128_si64(_mm_insert_epi16(_mm_set1_epi64x((long long)x), V(uint16_t, p), 3));
}
"#;

/// A pattern: its name, what device memory it needs to terminate, and its
/// device accesses as (offset, width, write).
struct Pattern {
    name: &'static str,
    init: Init,
    accesses: &'static [(u64, usize, bool)],
}

/// Device memory a pattern needs.
#[derive(Clone, Copy)]
enum Init {
    Random,
    /// Bit 8 of the first u32 set (the poll ends).
    Bit8,
    /// The first u64 zero (the poll ends).
    Zero,
    /// Bit 0 set (a divisor; C's `__builtin_ctz`/`clz` of 0 is undefined).
    NonZero,
}

const fn pattern(name: &'static str, init: Init, accesses: &'static [(u64, usize, bool)]) -> Pattern {
    Pattern { name, init, accesses }
}

const RD: bool = false;
const WR: bool = true;

static PATTERNS: &[Pattern] = &[
    pattern(
        "sum4_u32",
        Init::Random,
        &[(0, 4, RD), (4, 4, RD), (8, 4, RD), (12, 4, RD)],
    ),
    pattern("or4_u32", Init::Random, &[(0, 4, RD), (0, 4, WR)]),
    pattern("inc_u32", Init::Random, &[(0, 4, RD), (0, 4, WR)]),
    pattern("dec_u16", Init::Random, &[(0, 2, RD), (0, 2, WR)]),
    pattern("add_u8", Init::Random, &[(0, 1, RD), (0, 1, WR)]),
    pattern("sub_u64", Init::Random, &[(0, 8, RD), (0, 8, WR)]),
    pattern("xor_u16", Init::Random, &[(0, 2, RD), (0, 2, WR)]),
    pattern("neg_u32", Init::Random, &[(0, 4, RD), (0, 4, WR)]),
    pattern("not_u64", Init::Random, &[(0, 8, RD), (0, 8, WR)]),
    pattern("shl1_u32", Init::Random, &[(0, 4, RD), (0, 4, WR)]),
    pattern("shr3_u64", Init::Random, &[(0, 8, RD), (0, 8, WR)]),
    pattern("sar_i32", Init::Random, &[(0, 4, RD), (0, 4, WR)]),
    pattern("and_u64", Init::Random, &[(0, 8, RD)]),
    pattern("minus_u32", Init::Random, &[(0, 4, RD)]),
    pattern("mul_u32", Init::Random, &[(0, 4, RD)]),
    pattern("mul10_u64", Init::Random, &[(0, 8, RD)]),
    pattern("poll_bit_u32", Init::Bit8, &[(0, 4, RD)]),
    pattern("poll_zero_u64", Init::Zero, &[(0, 8, RD)]),
    pattern("bit40_u64", Init::Random, &[(0, 8, RD)]),
    pattern("eq_u8", Init::Random, &[(0, 1, RD)]),
    pattern("lt_i16", Init::Random, &[(0, 2, RD)]),
    pattern("sext_i16", Init::Random, &[(0, 2, RD)]),
    pattern("load_f64", Init::Random, &[(0, 8, RD)]),
    pattern("store_f64", Init::Random, &[(0, 8, WR)]),
    pattern("load_f32", Init::Random, &[(0, 4, RD)]),
    pattern("store_f32", Init::Random, &[(0, 4, WR)]),
    pattern("from_be_u32", Init::Random, &[(0, 4, RD)]),
    pattern("store_be_u64", Init::Random, &[(0, 8, WR)]),
    pattern("tz_u32", Init::NonZero, &[(0, 4, RD)]),
    pattern("lz_u64", Init::NonZero, &[(0, 8, RD)]),
    pattern("pop_u32", Init::Random, &[(0, 4, RD)]),
    pattern("flag_u8", Init::Random, &[(0, 1, WR)]),
    pattern("funnel_u64", Init::Random, &[(0, 8, RD), (0, 8, WR)]),
    pattern("mulhi_u64", Init::Random, &[(0, 8, RD)]),
    pattern("div_u32", Init::NonZero, &[(0, 4, RD)]),
    pattern("andn_u64", Init::Random, &[(0, 8, RD)]),
    pattern("shr_var_u32", Init::Random, &[(0, 4, RD)]),
    pattern("field_u32", Init::Random, &[(0, 4, RD)]),
    pattern("fadd_f64", Init::Random, &[(0, 8, RD)]),
    pattern("fmul_f32", Init::Random, &[(0, 4, RD)]),
    pattern("itof_i32", Init::Random, &[(0, 4, RD)]),
    pattern("fless_f64", Init::Random, &[(0, 8, RD)]),
    pattern("ftoi_f64", Init::Random, &[(0, 8, RD)]),
    pattern("utof_u64", Init::Random, &[(0, 8, RD)]),
    pattern("store_hi_f64", Init::Random, &[(0, 8, WR)]),
    pattern("insert_w", Init::Random, &[(0, 2, RD)]),
];

/// Runs `program` with `args`, panicking with its output if it fails and
/// with `missing` if it cannot be started.
fn run_tool(program: &str, args: &[&str], missing: &str) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}: {missing}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this CPU has MOVBE and AVX2 (code built for them would not run
/// otherwise).
fn cpu_has_movbe_and_avx2() -> bool {
    std::arch::is_x86_feature_detected!("movbe") && std::arch::is_x86_feature_detected!("avx2")
}

/// Whether this CPU has what `x86-64-v3` adds for integers: POPCNT, LZCNT,
/// BMI1 and BMI2.
fn cpu_has_bit_manipulation() -> bool {
    std::arch::is_x86_feature_detected!("popcnt")
        && std::arch::is_x86_feature_detected!("lzcnt")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
}

/// Builds the patterns every way: rustc at opt-level 0 and 3, gcc and clang at
/// -O0 to -O3, and at the highest level with MOVBE and AVX2 (so `MOVBE` and
/// the VEX moves `VMOVSD`...), with POPCNT, LZCNT and BMI1/2 (`POPCNT`,
/// `LZCNT`, `ANDN`, `SHRX`, `BEXTR`...), and with AVX-512F too (EVEX forms,
/// `VCVTUSI2SD`...) where the CPU has them.
/// Returns (label, library path) pairs.
fn build_libraries(dir: &Path) -> Vec<(String, String)> {
    let rs = dir.join("patterns.rs");
    let c = dir.join("patterns.c");
    std::fs::write(&rs, RUST_PATTERNS).unwrap();
    std::fs::write(&c, C_PATTERNS).unwrap();
    let (rs, c) = (rs.to_str().unwrap(), c.to_str().unwrap());
    let movbe = cpu_has_movbe_and_avx2();
    let bmi = cpu_has_bit_manipulation();
    let avx512 = bmi && std::arch::is_x86_feature_detected!("avx512f");
    let mut libs = Vec::new();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    for (opt, feature) in [
        ("0", ""),
        ("3", ""),
        ("3", "+movbe,+avx2"),
        ("3", "+popcnt,+lzcnt,+bmi1,+bmi2"),
        ("3", "+popcnt,+lzcnt,+bmi1,+bmi2,+avx2,+avx512f"),
    ] {
        if (feature.contains("movbe") && !movbe)
            || (feature.contains("bmi") && !bmi)
            || (feature.contains("avx512") && !avx512)
        {
            continue;
        }
        let label = format!("rustc -C opt-level={opt} {feature}");
        let out = dir.join(format!("librs{}.so", libs.len()));
        let out = out.to_str().unwrap();
        let opt = format!("opt-level={opt}");
        let feature = format!("target-feature={feature}");
        let mut args = vec!["--edition=2021", "--crate-type=cdylib", "-C", &opt, "-o", out, rs];
        if feature.len() > "target-feature=".len() {
            args.extend(["-C", &feature]);
        }
        run_tool(&rustc, &args, "rustc is needed to build the Rust patterns");
        libs.push((label, out.to_string()));
    }
    for cc in ["gcc", "clang"] {
        let missing = format!("{cc} is needed to build the C patterns (CI installs it: qemu-scripts/lib.sh BARMAP_HOST_PACKAGES)");
        for opt in [
            "-O0",
            "-O1",
            "-O2",
            "-O3",
            "-O3 -mmovbe -mavx2",
            "-O3 -mpopcnt -mlzcnt -mbmi -mbmi2",
            "-O3 -mpopcnt -mlzcnt -mbmi -mbmi2 -mavx512f",
        ] {
            if (opt.contains("movbe") && !movbe)
                || (opt.contains("bmi") && !bmi)
                || (opt.contains("avx512") && !avx512)
            {
                continue;
            }
            let out = dir.join(format!("lib{cc}{}.so", libs.len()));
            let out = out.to_str().unwrap();
            let mut args: Vec<&str> = opt.split(' ').collect();
            args.extend(["-shared", "-fPIC", "-o", out, c]);
            run_tool(cc, &args, &missing);
            libs.push((format!("{cc} {opt}"), out.to_string()));
        }
    }
    libs
}

type PatternFn = unsafe extern "C" fn(*mut u8, u64) -> u64;

/// Runs every pattern of the library at `path` on ordinary memory and on the
/// trapped region, and compares results, memory and device accesses.
fn check_library(label: &str, path: &str, dev: &Device, region: &Region, rng: &mut Rng) {
    let cpath = CString::new(path).unwrap();
    // SAFETY: loads a library this test just built; its initialisers are the
    // compiler's own.
    let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {path} failed");
    let offset = 0x200u64;
    for pat in PATTERNS {
        let name = CString::new(pat.name).unwrap();
        // SAFETY: `handle` is a live library handle.
        let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
        assert!(!sym.is_null(), "{label}: no {}", pat.name);
        // SAFETY: every pattern has this signature.
        let f: PatternFn = unsafe { std::mem::transmute::<*mut libc::c_void, PatternFn>(sym) };
        for _ in 0..4 {
            let mut init = [rng.next(), rng.next()];
            match pat.init {
                Init::Random => {}
                Init::Bit8 => init[0] |= 0x100,
                Init::Zero => init[0] = 0,
                Init::NonZero => init[0] |= 1,
            }
            let x = rng.operand();
            let mut native = Box::new(init);
            // SAFETY: 16 bytes of ordinary memory, all a pattern touches.
            let want = unsafe { f(native.as_mut_ptr().cast(), x) };
            let bytes: Vec<u8> = init.iter().flat_map(|w| w.to_le_bytes()).collect();
            dev.poke(offset, &bytes);
            dev.log.take();
            // SAFETY: 16 bytes inside the trapped region.
            let got = unsafe { f(base(region).add(offset as usize), x) };
            let log = dev.log.take();
            let after = dev.peek(offset, 16);
            let what = format!("{label}: {}(x = {x:#x}) on {init:#x?}", pat.name);
            assert_eq!(got, want, "result of {what}");
            let native_bytes: Vec<u8> = native.iter().flat_map(|w| w.to_le_bytes()).collect();
            assert_eq!(after, native_bytes, "memory after {what}");
            let shape: Vec<(u64, usize, bool)> = log
                .iter()
                .map(|r| (r.offset - offset, r.width, r.write))
                .collect();
            assert_eq!(shape, pat.accesses, "device accesses of {what}");
            for r in &log {
                let at = (r.offset - offset) as usize;
                let source = if r.write { &after } else { &bytes };
                assert_eq!(
                    r.value,
                    word(&source[at..at + r.width]),
                    "value of {r:?} in {what}"
                );
            }
        }
    }
    // SAFETY: nothing from the library is used any more.
    unsafe { libc::dlclose(handle) };
}

#[test]
fn rust_and_c_patterns_at_every_opt_level_through_a_trapped_page() {
    let dir = tempfile::tempdir().unwrap();
    let libs = build_libraries(dir.path());
    let dev = Device::new(PAGE);
    let region = dev.trap_all();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for (label, path) in &libs {
        check_library(label, path, &dev, &region, &mut rng);
    }
    assert!(libs.len() >= 10, "{libs:?}");
}

/// The same patterns written in this test binary, compiled at its own
/// opt-level (`cargo test`: 0, `cargo test --release`: 3).
#[test]
fn patterns_in_this_binary_through_a_trapped_page() {
    use std::ptr::{read_volatile as rd, write_volatile as wr};
    let dev = Device::new(PAGE);
    let region = dev.trap_all();
    let base = base(&region);
    dev.poke(0, &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0x0c, 0x01, 0, 0]);
    dev.poke(0x10, &2.5f64.to_bits().to_le_bytes());
    dev.log.take();
    // SAFETY: every pointer is an aligned offset below 0x20 of the trapped region.
    unsafe {
        let words = base.cast::<u32>();
        let mut acc = std::hint::black_box(10u32);
        for i in 0..4 {
            acc = acc.wrapping_add(rd(words.add(i)));
        }
        assert_eq!(acc, 10 + 1 + 2 + 3 + 0x10c);
        wr(words, rd(words) | 4);
        wr(words, rd(words).wrapping_add(1));
        assert_eq!(rd(words), 6);
        while rd(words.add(3)) & 0x100 == 0 {}
        let f = rd(base.add(0x10).cast::<f64>());
        assert_eq!(f * 2.0, 5.0);
        wr(base.add(0x10).cast::<f64>(), std::hint::black_box(f) + 1.0);
        assert_eq!(u32::from_be(rd(words.add(1))), 0x0200_0000);
    }
    let shape: Vec<(u64, usize, bool)> = dev
        .log
        .take()
        .iter()
        .map(|r| (r.offset, r.width, r.write))
        .collect();
    let want: Vec<(u64, usize, bool)> = vec![
        (0, 4, RD),
        (4, 4, RD),
        (8, 4, RD),
        (12, 4, RD),
        (0, 4, RD),
        (0, 4, WR),
        (0, 4, RD),
        (0, 4, WR),
        (0, 4, RD),
        (12, 4, RD),
        (0x10, 8, RD),
        (0x10, 8, WR),
        (4, 4, RD),
    ];
    assert_eq!(shape, want);
    assert_eq!(dev.peek(0x10, 8), 3.5f64.to_bits().to_le_bytes());
}

// ---- code right below a region ----

/// Places `code` so that it ends exactly where `region` starts (in an
/// executable page mapped just below it) and returns its first byte, or
/// `None` if that page is taken.
fn code_below(region: &Region, code: &[u8]) -> Option<*const u8> {
    let page = (base(region) as usize).checked_sub(PAGE as usize)?;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the
    // page is leaked on purpose (code may run from it until the process ends).
    unsafe {
        let p = libc::mmap(
            page as *mut libc::c_void,
            PAGE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        if p as usize != page {
            libc::munmap(p, PAGE as usize);
            return None;
        }
        let start = p.cast::<u8>().add(PAGE as usize - code.len());
        std::ptr::copy_nonoverlapping(code.as_ptr(), start, code.len());
        assert_eq!(
            libc::mprotect(p, PAGE as usize, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        Some(start)
    }
}

/// A trapped region with `code` placed right below it; the regions made
/// along the way stay alive in `keep`.
fn region_with_code_below(dev: &Device, code: &[u8], keep: &mut Vec<Region>) -> *const u8 {
    for _ in 0..16 {
        let region = dev.trap_all();
        let found = code_below(&region, code);
        keep.push(region);
        if let Some(start) = found {
            return start;
        }
    }
    panic!("no free page below 16 shadow regions");
}

#[test]
fn code_just_below_a_region_is_decoded() {
    let dev = Device::new(PAGE);
    dev.poke(0, &0x1122_3344_5566_7788u64.to_le_bytes());
    dev.poke(0x100, &0x99aa_bbccu32.to_le_bytes());
    let cases: [(&[u8], u64); 3] = [
        (&[0x8b, 0x07, 0xc3], 0x5566_7788),                 // mov eax,[rdi]; ret
        (&[0x48, 0x8b, 0x07, 0xc3], 0x1122_3344_5566_7788), // mov rax,[rdi]; ret
        (&[0x8b, 0x87, 0x00, 0x01, 0x00, 0x00, 0xc3], 0x99aa_bbcc), // mov eax,[rdi+0x100]; ret
    ];
    for (code, want) in cases {
        let mut keep = Vec::new();
        let start = region_with_code_below(&dev, code, &mut keep);
        let region = keep.last().unwrap();
        // SAFETY: `start` is the code just placed: it loads from its argument,
        // a trapped page of `region`, and returns.
        let f: extern "C" fn(*const u8) -> u64 = unsafe { std::mem::transmute(start) };
        dev.log.take();
        let got = f(base(region)) & mask(if want > u64::from(u32::MAX) { 8 } else { 4 });
        assert_eq!(got, want, "{code:02x?}");
        assert_eq!(dev.log.take().len(), 1, "{code:02x?}");
    }
}

// ---- refusals: each ends a child process ----

/// In the parent, re-runs test `name` in a child and checks that it reached
/// the refused access and died of it with the diagnostic mentioning `reason`.
/// In the child, runs `body` (which calls [`fault_next`] right before the access).
fn expect_refusal(name: &str, reason: &str, body: impl FnOnce()) {
    if !in_child() {
        let child = run_child(name);
        child.assert_killed_by(libc::SIGSEGV);
        let line = child
            .stderr
            .lines()
            .find(|l| l.starts_with("barmap: cannot emulate"))
            .unwrap_or_else(|| panic!("no diagnostic from {name}: {child}"));
        assert!(line.contains(reason), "{name}: {line}");
        return;
    }
    body();
    panic!("{name}: the refused access was served");
}

/// A trapped region over a fresh device, kept alive for the child's life.
fn trapped() -> &'static Region {
    let dev = Box::leak(Box::new(Device::new(PAGE)));
    Box::leak(Box::new(dev.trap_all()))
}

macro_rules! refused_asm {
    ($test:ident, $reason:literal, $offset:literal, $insn:literal) => {
        #[test]
        fn $test() {
            expect_refusal(stringify!($test), $reason, || {
                let p = base(trapped()).wrapping_add($offset);
                fault_next();
                // SAFETY: `p` is inside a trapped region; barmap refuses the
                // instruction, which ends this child process.
                unsafe { asm!($insn, in("rdi") p, out("eax") _, out("edx") _, out("xmm0") _) };
            });
        }
    };
}

refused_asm!(
    lock_add_is_refused,
    "instruction not emulated",
    0x40,
    "lock add dword ptr [rdi], eax"
);
refused_asm!(
    lock_or_imm_is_refused,
    "instruction not emulated",
    0x40,
    "lock or dword ptr [rdi], 4"
);
refused_asm!(
    xchg_is_refused,
    "instruction not emulated",
    0x40,
    "xchg dword ptr [rdi], eax"
);
refused_asm!(
    movdqa_is_refused,
    "instruction not emulated",
    0x40,
    "movdqa xmm0, xmmword ptr [rdi]"
);
refused_asm!(
    movups_store_is_refused,
    "instruction not emulated",
    0x40,
    "movups xmmword ptr [rdi], xmm0"
);
refused_asm!(
    packed_sse_arithmetic_is_refused,
    "instruction not emulated",
    0x40,
    "addpd xmm0, xmmword ptr [rdi]"
);
refused_asm!(
    division_by_a_zero_register_is_refused,
    "divide error",
    0x40,
    "div dword ptr [rdi]"
);
/// A division by zero read from the device, with the divide-by-zero
/// exception unmasked: the CPU would raise `#XM`, so barmap refuses.
#[test]
fn unmasked_simd_exception_is_refused() {
    let name = "unmasked_simd_exception_is_refused";
    expect_refusal(name, "SIMD floating-point exception", || {
        let p = base(trapped()).wrapping_add(0x40);
        let one = 1.0f64;
        let unmask_zero_divide: u32 = 0x1f80 & !(0x4 << 7);
        fault_next();
        // SAFETY: `p` is inside a trapped region (zeros); barmap refuses the
        // division, which ends this child process before MXCSR matters again.
        unsafe {
            asm!(
                "ldmxcsr [{csr}]",
                "movq xmm0, {one}",
                "divsd xmm0, qword ptr [rdi]",
                csr = in(reg) &unmask_zero_divide,
                one = in(reg) one.to_bits(),
                in("rdi") p,
                out("xmm0") _,
            )
        };
    });
}

refused_asm!(
    misaligned_load_is_refused,
    "misaligned access",
    0x42,
    "mov eax, dword ptr [rdi]"
);
refused_asm!(
    misaligned_rmw_is_refused,
    "misaligned access",
    0x41,
    "add word ptr [rdi], 1"
);
refused_asm!(
    misaligned_sse_is_refused,
    "misaligned access",
    0x44,
    "movsd xmm0, qword ptr [rdi]"
);

#[test]
fn straddling_a_mapped_and_a_trapped_page_is_refused() {
    let name = "straddling_a_mapped_and_a_trapped_page_is_refused";
    expect_refusal(name, "straddles a page boundary", || {
        let dev = Box::leak(Box::new(Device::new(2 * PAGE)));
        let region = emulated(dev.io())
            .map_from(
                &*dev.fd,
                0,
                &[SparseArea {
                    offset: 0,
                    size: 2 * PAGE,
                }],
            )
            .policy(MapPolicy::trap_range(PAGE..2 * PAGE))
            .build()
            .unwrap();
        let region = Box::leak(Box::new(region));
        assert!(!region.is_trapped(0) && region.is_trapped(PAGE));
        let p = base(region).wrapping_add(PAGE as usize - 4);
        fault_next();
        // SAFETY: 8 bytes inside the region, half mapped and half trapped;
        // barmap refuses the access, which ends this child process.
        unsafe { asm!("mov rax, qword ptr [rdi]", in("rdi") p, out("rax") _) };
    });
}

#[test]
fn code_running_into_a_region_is_refused() {
    let name = "code_running_into_a_region_is_refused";
    expect_refusal(name, "instruction bytes lie in a shadow region", || {
        let dev = Box::leak(Box::new(Device::new(PAGE)));
        let keep = Box::leak(Box::new(Vec::new()));
        // The first two bytes of `movzx eax, byte [rdi]`: the third would be
        // the region's first byte.
        let start = region_with_code_below(dev, &[0x0f, 0xb6], keep);
        // SAFETY: jumps to the placed bytes, which fault on fetching the rest
        // of the instruction from the region; barmap refuses that, ending
        // this child process.
        let f: extern "C" fn(*const u8) -> u64 = unsafe { std::mem::transmute(start) };
        fault_next();
        f(base(&keep[0]));
    });
}

// ---- SSE and AVX moves against whole vector registers ----

/// Like [`State`], with XMM0 and XMM1 as whole 512-bit registers (of which
/// a CPU without AVX-512 sees the low 256 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VecState {
    gpr: [u64; 16],
    rflags: u64,
    mxcsr: u64,
    vec: [[u64; 8]; 2],
}

/// A vector-register form, run with YMM or (on AVX-512 CPUs) ZMM state: each
/// is a [`harness!`] that moves vector registers 0 and 1 whole between the
/// state and the CPU.
struct VecForm {
    text: &'static str,
    width: usize,
    mem: Mem,
    ymm: fn(&mut VecState),
    zmm: fn(&mut VecState),
}

macro_rules! vec_form {
    ($insn:literal, $width:literal, $mem:ident) => {
        VecForm {
            text: $insn,
            width: $width,
            mem: $mem,
            ymm: harness!(VecState, $insn, "vmovdqu", "ymm", 208, "vzeroupper"),
            zmm: harness!(VecState, $insn, "vmovdqu64", "zmm", 208, "vzeroupper"),
        }
    };
}

/// The SSE moves, lane moves, broadcasts and scalar arithmetic (which keep
/// the bits above 127) and their VEX forms (which clear them).
static VEC_FORMS: &[VecForm] = &[
    vec_form!("addss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("addsd xmm1, qword ptr [rdi]", 8, R),
    vec_form!("subss xmm1, dword ptr [rdi]", 4, R),
    vec_form!("subsd xmm0, qword ptr [rdi]", 8, R),
    vec_form!("mulss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("mulsd xmm1, qword ptr [rdi]", 8, R),
    vec_form!("divss xmm1, dword ptr [rdi]", 4, R),
    vec_form!("divsd xmm0, qword ptr [rdi]", 8, R),
    vec_form!("minss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("minsd xmm1, qword ptr [rdi]", 8, R),
    vec_form!("maxss xmm1, dword ptr [rdi]", 4, R),
    vec_form!("maxsd xmm0, qword ptr [rdi]", 8, R),
    vec_form!("sqrtss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("sqrtsd xmm1, qword ptr [rdi]", 8, R),
    vec_form!("cvtss2sd xmm0, dword ptr [rdi]", 4, R),
    vec_form!("cvtsd2ss xmm1, qword ptr [rdi]", 8, R),
    vec_form!("cvtsi2ss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("cvtsi2ss xmm1, qword ptr [rdi]", 8, R),
    vec_form!("cvtsi2sd xmm1, dword ptr [rdi]", 4, R),
    vec_form!("cvtsi2sd xmm0, qword ptr [rdi]", 8, R),
    vec_form!("ucomiss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("ucomisd xmm1, qword ptr [rdi]", 8, R),
    vec_form!("comiss xmm1, dword ptr [rdi]", 4, R),
    vec_form!("comisd xmm0, qword ptr [rdi]", 8, R),
    vec_form!("cvtss2si eax, dword ptr [rdi]", 4, R),
    vec_form!("cvtss2si r9, dword ptr [rdi]", 4, R),
    vec_form!("cvtsd2si rcx, qword ptr [rdi]", 8, R),
    vec_form!("cvttss2si r8, dword ptr [rdi]", 4, R),
    vec_form!("cvttsd2si edx, qword ptr [rdi]", 8, R),
    vec_form!("vaddsd xmm0, xmm1, qword ptr [rdi]", 8, R),
    vec_form!("vsubss xmm1, xmm0, dword ptr [rdi]", 4, R),
    vec_form!("vmulss xmm1, xmm1, dword ptr [rdi]", 4, R),
    vec_form!("vdivsd xmm0, xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vminsd xmm1, xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vmaxss xmm0, xmm1, dword ptr [rdi]", 4, R),
    vec_form!("vsqrtsd xmm1, xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vcvtss2sd xmm0, xmm1, dword ptr [rdi]", 4, R),
    vec_form!("vcvtsd2ss xmm1, xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vcvtsi2sd xmm0, xmm1, dword ptr [rdi]", 4, R),
    vec_form!("vcvtsi2ss xmm1, xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vucomisd xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vcomiss xmm1, dword ptr [rdi]", 4, R),
    vec_form!("vcvttsd2si rax, qword ptr [rdi]", 8, R),
    vec_form!("vcvtss2si ecx, dword ptr [rdi]", 4, R),
    vec_form!("pinsrb xmm0, byte ptr [rdi], 5", 1, R),
    vec_form!("pinsrw xmm1, word ptr [rdi], 3", 2, R),
    vec_form!("pinsrd xmm0, dword ptr [rdi], 2", 4, R),
    vec_form!("pinsrq xmm1, qword ptr [rdi], 1", 8, R),
    vec_form!("vpinsrd xmm0, xmm1, dword ptr [rdi], 3", 4, R),
    vec_form!("vpinsrw xmm1, xmm1, word ptr [rdi], 7", 2, R),
    vec_form!("pextrb byte ptr [rdi], xmm0, 9", 1, W),
    vec_form!("pextrw word ptr [rdi], xmm1, 6", 2, W),
    vec_form!("pextrd dword ptr [rdi], xmm0, 1", 4, W),
    vec_form!("pextrq qword ptr [rdi], xmm1, 1", 8, W),
    vec_form!("extractps dword ptr [rdi], xmm0, 3", 4, W),
    vec_form!("vpextrq qword ptr [rdi], xmm1, 0", 8, W),
    vec_form!("insertps xmm0, dword ptr [rdi], 0x35", 4, R),
    vec_form!("vinsertps xmm1, xmm0, dword ptr [rdi], 0x1a", 4, R),
    vec_form!("movhps xmm0, qword ptr [rdi]", 8, R),
    vec_form!("movlps xmm1, qword ptr [rdi]", 8, R),
    vec_form!("movhpd xmm1, qword ptr [rdi]", 8, R),
    vec_form!("movlpd xmm0, qword ptr [rdi]", 8, R),
    vec_form!("movhps qword ptr [rdi], xmm1", 8, W),
    vec_form!("movlps qword ptr [rdi], xmm0", 8, W),
    vec_form!("movhpd qword ptr [rdi], xmm0", 8, W),
    vec_form!("vmovhps xmm0, xmm1, qword ptr [rdi]", 8, R),
    vec_form!("vmovlpd xmm1, xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vmovhpd qword ptr [rdi], xmm1", 8, W),
    vec_form!("movddup xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vmovddup xmm1, qword ptr [rdi]", 8, R),
    vec_form!("vbroadcastss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("vpbroadcastb xmm1, byte ptr [rdi]", 1, R),
    vec_form!("vpbroadcastw xmm0, word ptr [rdi]", 2, R),
    vec_form!("vpbroadcastd xmm1, dword ptr [rdi]", 4, R),
    vec_form!("vpbroadcastq xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vcvtusi2sd xmm0, xmm1, dword ptr [rdi]", 4, R),
    vec_form!("vcvtusi2ss xmm1, xmm0, qword ptr [rdi]", 8, R),
    vec_form!("vcvttsd2usi rax, qword ptr [rdi]", 8, R),
    vec_form!("vcvtss2usi edx, dword ptr [rdi]", 4, R),
    vec_form!("movd xmm0, dword ptr [rdi]", 4, R),
    vec_form!("movq xmm1, qword ptr [rdi]", 8, R),
    vec_form!("movss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("movsd xmm1, qword ptr [rdi]", 8, R),
    vec_form!("movsd qword ptr [rdi], xmm0", 8, W),
    vec_form!("vmovd xmm0, dword ptr [rdi]", 4, R),
    vec_form!("vmovd dword ptr [rdi], xmm1", 4, W),
    vec_form!("vmovq xmm1, qword ptr [rdi]", 8, R),
    vec_form!("vmovq qword ptr [rdi], xmm0", 8, W),
    vec_form!("vmovss xmm0, dword ptr [rdi]", 4, R),
    vec_form!("vmovss dword ptr [rdi], xmm1", 4, W),
    vec_form!("vmovsd xmm1, qword ptr [rdi]", 8, R),
    vec_form!("vmovsd qword ptr [rdi], xmm0", 8, W),
];

#[test]
fn vector_forms_match_the_cpu_on_whole_vector_registers_and_mxcsr() {
    let run = if std::arch::is_x86_feature_detected!("avx512f") {
        |f: &VecForm| f.zmm
    } else if std::arch::is_x86_feature_detected!("avx") {
        |f: &VecForm| f.ymm
    } else {
        eprintln!("no AVX on this CPU: the vector forms are not tested here");
        return;
    };
    let dev = Device::new(PAGE);
    let region = dev.trap_all();
    let mut rng = Rng(0x5eed_0fa5);
    let mut native = Box::new([0u64; 2]);
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    for form in VEC_FORMS {
        if (form.text.contains("usi") && !avx512) || (form.text.starts_with("vpbroadcast") && !avx2) {
            eprintln!("this CPU lacks the extension of {}: not tested", form.text);
            continue;
        }
        for round in 0..50 {
            let offset = 0x300 + (round % 4) * 8;
            let before = rng.operand();
            // Random exception flags, rounding mode, FTZ and DAZ; every
            // exception masked.
            let mut input = VecState {
                gpr: [0; 16].map(|_| rng.operand()),
                rflags: (rng.next() & ARITH_FLAGS) | 0x202,
                mxcsr: MXCSR_DEFAULT | (rng.next() & 0xe07f),
                vec: [[0; 8]; 2].map(|v| v.map(|_| rng.operand())),
            };
            input.gpr[4] = 0;
            native[0] = before;
            let mut on_cpu = input;
            on_cpu.gpr[RDI] = native.as_mut_ptr() as u64;
            run(form)(&mut on_cpu);
            dev.poke(offset, &before.to_le_bytes());
            dev.log.take();
            let mut emulated = input;
            emulated.gpr[RDI] = base(&region) as u64 + offset;
            run(form)(&mut emulated);
            let log = dev.log.take();
            let after = word(&dev.peek(offset, 8));
            let what = format!("{} on {before:#x} from {input:#x?}", form.text);
            emulated.gpr[RDI] = on_cpu.gpr[RDI];
            assert_eq!(emulated, on_cpu, "registers after {what}");
            assert_eq!(after, native[0], "memory after {what}");
            assert_eq!(
                log,
                expected(form.mem, offset, form.width, before, after),
                "{what}"
            );
        }
    }
}
