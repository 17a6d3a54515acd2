//! The emulator against the CPU on random encodings.
//!
//! Random instruction bytes of the shape that carries a memory operand
//! (legacy prefixes, REX, an opcode in any map or behind a VEX prefix, a
//! ModRM byte addressing memory through one base register, random
//! displacement and immediate bytes) are decoded. Every one the crate
//! accepts runs twice from the same random registers, flags, MXCSR and
//! memory word: natively on ordinary memory, and through [`execute`] on a
//! memory model. Registers, XMM0..15, the arithmetic flags, MXCSR and the
//! memory word must agree, and the model must have seen at most one read
//! then at most one write, each of the decoded width. Whatever the crate
//! refuses, at any stage, it refuses with a value, never a panic; fully
//! random bytes are fed through the same path.
#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use x86_mmio_emu::{decode, emulable, execute, Bus, Decoded, ExecError, Instruction, Register, Regs, NGREG};

/// CF PF AF ZF SF OF.
const ARITH_FLAGS: u64 = 0x8d5;

/// Registers going into and coming out of one instruction. `gpr` is in
/// encoding order; RSP is neither set nor compared.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    gpr: [u64; 16],
    rflags: u64,
    mxcsr: u64,
    xmm: [u128; 16],
}

/// The executable page one instruction at a time is copied to, followed
/// by `ret`.
struct Code(*mut u8);

impl Code {
    fn new() -> Code {
        // SAFETY: a fresh anonymous private mapping, used only through `self`.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED, "{}", io::Error::last_os_error());
        Code(page.cast())
    }

    /// Runs `insn` on the CPU from `s`, leaving the registers in `s`.
    fn run(&self, insn: &[u8], s: &mut State) {
        // SAFETY: the page is 4096 bytes and ours; `insn` is at most 15.
        unsafe {
            std::ptr::copy_nonoverlapping(insn.as_ptr(), self.0, insn.len());
            self.0.add(insn.len()).write(0xc3);
        }
        // SAFETY: loads every register but RSP from `s`, calls the page (an
        // instruction the emulator accepted, which touches only its memory
        // operand, then `ret`), stores them all back to `s` and restores
        // MXCSR, RBX and RBP. Every other register is declared clobbered; the
        // pushes keep RSP 16-byte aligned at the call, and the flags loaded
        // are arithmetic ones only (DF stays clear).
        unsafe {
            asm!(
                "push rbp",
                "push rbx",
                "push rdi",
                "push rsi",
                "sub rsp, 16",
                "stmxcsr [rsp]",
                "ldmxcsr [rdi + 136]",
                "push qword ptr [rdi + 128]",
                "popfq",
                "movdqu xmm0, [rdi + 144]",
                "movdqu xmm1, [rdi + 160]",
                "movdqu xmm2, [rdi + 176]",
                "movdqu xmm3, [rdi + 192]",
                "movdqu xmm4, [rdi + 208]",
                "movdqu xmm5, [rdi + 224]",
                "movdqu xmm6, [rdi + 240]",
                "movdqu xmm7, [rdi + 256]",
                "movdqu xmm8, [rdi + 272]",
                "movdqu xmm9, [rdi + 288]",
                "movdqu xmm10, [rdi + 304]",
                "movdqu xmm11, [rdi + 320]",
                "movdqu xmm12, [rdi + 336]",
                "movdqu xmm13, [rdi + 352]",
                "movdqu xmm14, [rdi + 368]",
                "movdqu xmm15, [rdi + 384]",
                "mov rax, [rdi]",
                "mov rcx, [rdi + 8]",
                "mov rdx, [rdi + 16]",
                "mov rbx, [rdi + 24]",
                "mov rbp, [rdi + 40]",
                "mov rsi, [rdi + 48]",
                "mov r8, [rdi + 64]",
                "mov r9, [rdi + 72]",
                "mov r10, [rdi + 80]",
                "mov r11, [rdi + 88]",
                "mov r12, [rdi + 96]",
                "mov r13, [rdi + 104]",
                "mov r14, [rdi + 112]",
                "mov r15, [rdi + 120]",
                "mov rdi, [rdi + 56]",
                "call qword ptr [rsp + 16]",
                "xchg rdi, [rsp + 24]",
                "mov [rdi], rax",
                "mov [rdi + 8], rcx",
                "mov [rdi + 16], rdx",
                "mov [rdi + 24], rbx",
                "mov [rdi + 40], rbp",
                "mov [rdi + 48], rsi",
                "mov [rdi + 64], r8",
                "mov [rdi + 72], r9",
                "mov [rdi + 80], r10",
                "mov [rdi + 88], r11",
                "mov [rdi + 96], r12",
                "mov [rdi + 104], r13",
                "mov [rdi + 112], r14",
                "mov [rdi + 120], r15",
                "mov rax, [rsp + 24]",
                "mov [rdi + 56], rax",
                "pushfq",
                "pop qword ptr [rdi + 128]",
                "mov qword ptr [rdi + 136], 0",
                "stmxcsr [rdi + 136]",
                "movdqu [rdi + 144], xmm0",
                "movdqu [rdi + 160], xmm1",
                "movdqu [rdi + 176], xmm2",
                "movdqu [rdi + 192], xmm3",
                "movdqu [rdi + 208], xmm4",
                "movdqu [rdi + 224], xmm5",
                "movdqu [rdi + 240], xmm6",
                "movdqu [rdi + 256], xmm7",
                "movdqu [rdi + 272], xmm8",
                "movdqu [rdi + 288], xmm9",
                "movdqu [rdi + 304], xmm10",
                "movdqu [rdi + 320], xmm11",
                "movdqu [rdi + 336], xmm12",
                "movdqu [rdi + 352], xmm13",
                "movdqu [rdi + 368], xmm14",
                "movdqu [rdi + 384], xmm15",
                "ldmxcsr [rsp]",
                "add rsp, 32",
                "pop rbx",
                "pop rbp",
                in("rdi") s as *mut State,
                in("rsi") self.0,
                out("r12") _,
                out("r13") _,
                out("r14") _,
                out("r15") _,
                clobber_abi("C"),
            );
        }
    }
}

/// The memory side: one word, and what was done to it.
struct Model {
    word: u64,
    log: Vec<(bool, usize)>,
}

fn mask(width: usize) -> u64 {
    if width == 8 {
        u64::MAX
    } else {
        (1 << (8 * width)) - 1
    }
}

impl Bus for Model {
    fn read(&mut self, width: usize) -> io::Result<u64> {
        self.log.push((false, width));
        Ok(self.word & mask(width))
    }

    fn write(&mut self, width: usize, value: u64) -> io::Result<()> {
        self.log.push((true, width));
        self.word = (self.word & !mask(width)) | (value & mask(width));
        Ok(())
    }
}

/// An FXSAVE image without XSAVE components.
#[repr(C, align(64))]
struct Fx([u8; 512]);

/// General register `n` (encoding order), 64 bits wide.
fn gpr(n: usize) -> Register {
    Register::try_from(Register::RAX as usize + n).expect("one of RAX..R15")
}

/// XMM register `n`.
fn xmm(n: usize) -> Register {
    Register::try_from(Register::XMM0 as usize + n).expect("one of XMM0..XMM15")
}

/// Runs `d` through the emulator from `s` and `word`: the state after, the
/// memory model after, or the emulator's refusal.
fn emulate(d: &Decoded, s: &State, word: u64) -> (State, Model, Result<(), ExecError>) {
    let mut gregs = [0 as libc::greg_t; NGREG];
    let mut fx = Box::new(Fx([0; 512]));
    let mut model = Model {
        word,
        log: Vec::new(),
    };
    // SAFETY: `fx` is a 512-byte FXSAVE image without the XSAVE magic, used
    // only through `regs`.
    let mut regs = unsafe { Regs::new(&mut gregs, fx.0.as_mut_ptr().cast()) };
    for n in 0..16 {
        regs.set(gpr(n), s.gpr[n]).expect("a general register");
        regs.set_xmm128(xmm(n), s.xmm[n], false)
            .expect("the frame has SSE state");
    }
    regs.set_rflags(s.rflags);
    regs.set_mxcsr(s.mxcsr as u32).expect("the frame has SSE state");
    let result = execute(d.op, &mut regs, &mut model);
    let out = State {
        gpr: std::array::from_fn(|n| regs.get(gpr(n)).expect("a general register")),
        rflags: regs.rflags(),
        mxcsr: u64::from(regs.mxcsr().expect("the frame has SSE state")),
        xmm: std::array::from_fn(|n| regs.xmm128(xmm(n)).expect("the frame has SSE state")),
    };
    (out, model, result)
}

/// Whether `insn` names RSP (which the harness cannot hand it).
fn names_rsp(insn: &Instruction) -> bool {
    let rsp = |r: Register| matches!(r, Register::RSP | Register::ESP | Register::SP | Register::SPL);
    (0..insn.op_count()).any(|i| rsp(insn.op_register(i)))
        || rsp(insn.memory_base())
        || rsp(insn.memory_index())
}

/// The number (encoding order) and size of a 64- or 32-bit base register.
fn base_number(r: Register) -> Option<(usize, usize)> {
    let n = r as usize;
    let (rax, eax) = (Register::RAX as usize, Register::EAX as usize);
    if (rax..rax + 16).contains(&n) {
        Some((n - rax, 8))
    } else if (eax..eax + 16).contains(&n) {
        Some((n - eax, 4))
    } else {
        None
    }
}

/// Whether this CPU runs every form the crate accepts (else the native run
/// could raise #UD, or run `LZCNT`/`TZCNT` as `BSR`/`BSF`).
fn cpu_runs_every_form() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("bmi1")
        && std::is_x86_feature_detected!("bmi2")
        && std::is_x86_feature_detected!("movbe")
        && std::is_x86_feature_detected!("lzcnt")
        && std::is_x86_feature_detected!("popcnt")
        && std::is_x86_feature_detected!("sse4.1")
}

/// Instruction bytes with a memory operand `[base + disp]`, base not RSP.
fn memory_form() -> impl Strategy<Value = Vec<u8>> {
    let prefixes = prop::collection::vec(
        prop::sample::select(vec![0x66u8, 0xf2, 0xf3, 0x67, 0x2e, 0x3e, 0x26, 0x36, 0xf0]),
        0..3,
    );
    let rex = prop::option::of(0x40u8..=0x4f);
    let opcode = (0u8..6, any::<[u8; 3]>()).prop_map(|(map, b)| match map {
        0 => vec![b[0]],
        1 => vec![0x0f, b[0]],
        2 => vec![0x0f, 0x38, b[0]],
        3 => vec![0x0f, 0x3a, b[0]],
        4 => vec![0xc5, b[1], b[0]],
        _ => vec![0xc4, (b[1] & 0xe0) | (1 + b[2] % 3), b[2], b[0]],
    });
    let modrm = (0u8..3, 0u8..8, prop::sample::select(vec![0u8, 1, 2, 3, 5, 6, 7]))
        .prop_map(|(md, reg, rm)| md << 6 | reg << 3 | if md == 0 && rm == 5 { 7 } else { rm });
    (prefixes, rex, opcode, modrm, any::<[u8; 8]>()).prop_map(|(p, rex, op, modrm, tail)| {
        let mut bytes = p;
        if op[0] != 0xc4 && op[0] != 0xc5 {
            bytes.extend(rex);
        }
        bytes.extend(op);
        bytes.push(modrm);
        bytes.extend(tail);
        bytes
    })
}

/// Registers, flags and MXCSR: every exception masked, or any of them
/// unmasked; random rounding, FTZ and DAZ.
fn state() -> impl Strategy<Value = State> {
    (
        any::<[u64; 16]>(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        any::<[u128; 16]>(),
    )
        .prop_map(|(gpr, flags, mx, masked, xmm)| State {
            gpr,
            rflags: (flags & ARITH_FLAGS) | 0x2,
            mxcsr: u64::from(mx & 0xffff | if masked { 0x1f80 } else { 0 }),
            xmm,
        })
}

/// The memory word: half the time the low bytes of RAX, so that
/// `CMPXCHG` compares equal.
fn word(s: &State, raw: u64, like_rax: bool) -> u64 {
    if like_rax {
        s.gpr[0]
    } else {
        raw
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn accepted_memory_forms_match_the_cpu() {
    if !cpu_runs_every_form() {
        eprintln!("this CPU lacks an extension the crate emulates: not compared");
        return;
    }
    let accepted = AtomicUsize::new(0);
    let code = Code::new();
    let mut memory = Box::new([0u64; 2]);
    let slot = memory.as_mut_ptr();
    let cases = if cfg!(debug_assertions) { 20_000 } else { 100_000 };
    let strategy = (memory_form(), state(), any::<u64>(), any::<bool>());
    runner(cases)
        .run(&strategy, |(bytes, input, raw, like_rax)| {
            let ip = code.0 as u64;
            let Some(insn) = decode(&bytes, ip) else {
                return Ok(());
            };
            let Some(d) = emulable(&insn).filter(|_| !insn.is_invalid() && !names_rsp(&insn)) else {
                return Ok(());
            };
            prop_assert!(
                !insn.has_lock_prefix(),
                "locked form accepted: {:?}",
                insn.mnemonic()
            );
            let bytes = &bytes[..insn.len()];
            // Point the base register at the memory word.
            let mut input = input;
            let target = slot as u64;
            if d.mem.index != Register::None || d.mem.base == Register::RIP {
                return Ok(());
            }
            let Some((base, size)) = base_number(d.mem.base) else {
                return Ok(());
            };
            if size == 4 && target > u64::from(u32::MAX) {
                return Ok(());
            }
            input.gpr[base] = target.wrapping_sub(d.mem.disp);
            let word = word(&input, raw, like_rax);
            let (emulated, model, result) = emulate(&d, &input, word);
            match result {
                Ok(()) => {}
                Err(ExecError::Exception(_)) => return Ok(()),
                Err(e) => return Err(TestCaseError::fail(format!("{:?}: {e:?}", insn.mnemonic()))),
            }
            accepted.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `slot` is the first word of `memory`, alive for the test.
            unsafe { slot.write_volatile(word) };
            let mut native = input;
            code.run(bytes, &mut native);
            // SAFETY: as above.
            let after = unsafe { slot.read_volatile() };
            let what = format!(
                "{:?} ({bytes:02x?}) on {word:#x} from {input:#x?}",
                insn.mnemonic()
            );
            let reads = model.log.iter().filter(|a| !a.0).count();
            let writes = model.log.len() - reads;
            prop_assert!(
                reads <= 1 && writes <= 1 && model.log.iter().all(|a| a.1 == d.width()),
                "{what}: {:?}",
                model.log
            );
            prop_assert!(
                model.log.first().is_none_or(|a| !a.0) || writes == model.log.len(),
                "{what}: {:?}",
                model.log
            );
            prop_assert_eq!(after, model.word, "memory after {}", what);
            prop_assert_eq!(emulated.gpr, native.gpr, "registers after {}", what);
            prop_assert_eq!(emulated.xmm, native.xmm, "XMM registers after {}", what);
            prop_assert_eq!(
                emulated.rflags & ARITH_FLAGS,
                native.rflags & ARITH_FLAGS,
                "flags after {}",
                what
            );
            prop_assert_eq!(emulated.mxcsr, native.mxcsr, "MXCSR after {}", what);
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    assert!(
        accepted * 20 > cases as usize,
        "only {accepted} of {cases} encodings were emulated"
    );
}

#[test]
fn random_bytes_are_decoded_or_refused_without_panicking() {
    let cases = if cfg!(debug_assertions) { 20_000 } else { 100_000 };
    let strategy = (prop::collection::vec(any::<u8>(), 0..16), state(), any::<u64>());
    runner(cases)
        .run(&strategy, |(bytes, input, word)| {
            if let Some(d) = decode(&bytes, 0x1000).as_ref().and_then(emulable) {
                prop_assert!(usize::from(d.len) <= bytes.len() && (1..=8).contains(&d.width()));
                let (_, model, _) = emulate(&d, &input, word);
                prop_assert!(model.log.len() <= 2);
            }
            Ok(())
        })
        .unwrap();
}
