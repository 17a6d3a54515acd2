//! Decoding and classification of every emulated form, and execution against
//! a recording bus.

use iced_x86::Register;
use libc::greg_t;

use crate::exec::loaded_value;
use crate::regs::NGREG;
use crate::*;

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
    // movbe eax,[rdi]; movbe rax,[rdi]; movbe ax,[rdi]
    assert_eq!(
        classify(&one(&[0x0f, 0x38, 0xf0, 0x07])),
        load(Register::EAX, 4, Extend::Swap)
    );
    assert_eq!(
        classify(&one(&[0x48, 0x0f, 0x38, 0xf0, 0x07])),
        load(Register::RAX, 8, Extend::Swap)
    );
    assert_eq!(
        classify(&one(&[0x66, 0x0f, 0x38, 0xf0, 0x07])),
        load(Register::AX, 2, Extend::Swap)
    );
}

#[test]
fn classifies_stores() {
    let store = |src, width| {
        Some(Op::Store {
            src,
            width,
            swap: false,
        })
    };
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
    // movbe [rdi],ecx
    assert_eq!(
        classify(&one(&[0x0f, 0x38, 0xf1, 0x0f])),
        Some(Op::Store {
            src: Source::Reg(Register::ECX),
            width: 4,
            swap: true
        })
    );
}

#[test]
fn classifies_sse_moves() {
    let xl = |dst, width| {
        Some(Op::XmmLoad {
            dst,
            width,
            vex: false,
        })
    };
    let vl = |dst, width| {
        Some(Op::XmmLoad {
            dst,
            width,
            vex: true,
        })
    };
    let xs = |src, width| Some(Op::XmmStore { src, width });
    assert_eq!(classify(&one(&[0x66, 0x0f, 0x6e, 0x07])), xl(Register::XMM0, 4)); // movd xmm0,[rdi]
    assert_eq!(
        classify(&one(&[0x66, 0x48, 0x0f, 0x6e, 0x0f])),
        xl(Register::XMM1, 8)
    ); // movq xmm1,[rdi]
    assert_eq!(classify(&one(&[0xf3, 0x0f, 0x7e, 0x07])), xl(Register::XMM0, 8)); // movq xmm0,[rdi]
    assert_eq!(
        classify(&one(&[0xf3, 0x44, 0x0f, 0x10, 0x3f])),
        xl(Register::XMM15, 4)
    ); // movss xmm15,[rdi]
    assert_eq!(classify(&one(&[0xf2, 0x0f, 0x10, 0x07])), xl(Register::XMM0, 8)); // movsd xmm0,[rdi]
    assert_eq!(classify(&one(&[0xc5, 0xfb, 0x10, 0x07])), vl(Register::XMM0, 8)); // vmovsd xmm0,[rdi]
    assert_eq!(classify(&one(&[0xc5, 0xfa, 0x10, 0x17])), vl(Register::XMM2, 4)); // vmovss xmm2,[rdi]
    assert_eq!(classify(&one(&[0xc5, 0xf9, 0x6e, 0x07])), vl(Register::XMM0, 4)); // vmovd xmm0,[rdi]
    assert_eq!(classify(&one(&[0xc5, 0xfa, 0x7e, 0x07])), vl(Register::XMM0, 8)); // vmovq xmm0,[rdi]
    assert_eq!(classify(&one(&[0xc5, 0xfb, 0x11, 0x0f])), xs(Register::XMM1, 8)); // vmovsd [rdi],xmm1
    assert_eq!(classify(&one(&[0xc5, 0xf9, 0x7e, 0x07])), xs(Register::XMM0, 4)); // vmovd [rdi],xmm0
    assert_eq!(classify(&one(&[0xc5, 0xf9, 0xd6, 0x07])), xs(Register::XMM0, 8)); // vmovq [rdi],xmm0
                                                                                  // EVEX: accepted unmasked on XMM0..15; masked or XMM16.. refused.
    assert_eq!(
        classify(&one(&[0x62, 0xf1, 0xff, 0x08, 0x10, 0x07])),
        vl(Register::XMM0, 8)
    );
    assert_eq!(classify(&one(&[0x62, 0xf1, 0xff, 0x09, 0x10, 0x07])), None);
    assert_eq!(classify(&one(&[0x62, 0xe1, 0xff, 0x08, 0x10, 0x07])), None);
    assert_eq!(classify(&one(&[0x66, 0x0f, 0x7e, 0x07])), xs(Register::XMM0, 4)); // movd [rdi],xmm0
    assert_eq!(classify(&one(&[0x66, 0x0f, 0xd6, 0x17])), xs(Register::XMM2, 8)); // movq [rdi],xmm2
    assert_eq!(
        classify(&one(&[0x66, 0x48, 0x0f, 0x7e, 0x07])),
        xs(Register::XMM0, 8)
    ); // movq [rdi],xmm0
    assert_eq!(classify(&one(&[0xf3, 0x0f, 0x11, 0x07])), xs(Register::XMM0, 4)); // movss [rdi],xmm0
    assert_eq!(classify(&one(&[0xf2, 0x0f, 0x11, 0x07])), xs(Register::XMM0, 8));
    // movsd [rdi],xmm0
}

#[test]
fn classifies_alu_forms() {
    let reg = |alu, reg, width| Some(Op::AluReg { alu, reg, width });
    let mem = |alu, src, width| Some(Op::AluMem { alu, src, width });
    assert_eq!(classify(&one(&[0x03, 0x06])), reg(Alu::Add, Register::EAX, 4)); // add eax,[rsi]
    assert_eq!(
        classify(&one(&[0x48, 0x2b, 0x07])),
        reg(Alu::Sub, Register::RAX, 8)
    ); // sub rax,[rdi]
    assert_eq!(classify(&one(&[0x22, 0x27])), reg(Alu::And, Register::AH, 1)); // and ah,[rdi]
    assert_eq!(
        classify(&one(&[0x66, 0x3b, 0x07])),
        reg(Alu::Cmp, Register::AX, 2)
    ); // cmp ax,[rdi]
    assert_eq!(
        classify(&one(&[0x0f, 0xaf, 0x07])),
        reg(Alu::Imul, Register::EAX, 4)
    ); // imul eax,[rdi]
    assert_eq!(
        classify(&one(&[0x01, 0x07])),
        mem(Alu::Add, Source::Reg(Register::EAX), 4)
    ); // add [rdi],eax
    assert_eq!(
        classify(&one(&[0x11, 0x07])),
        mem(Alu::Adc, Source::Reg(Register::EAX), 4)
    );
    assert_eq!(
        classify(&one(&[0x48, 0x19, 0x07])),
        mem(Alu::Sbb, Source::Reg(Register::RAX), 8)
    );
    assert_eq!(
        classify(&one(&[0x83, 0x0f, 0x04])),
        mem(Alu::Or, Source::Imm(4), 4)
    ); // or dword [rdi],4
    assert_eq!(
        classify(&one(&[0x48, 0x83, 0x3f, 0x00])),
        mem(Alu::Cmp, Source::Imm(0), 8)
    ); // cmp qword [rdi],0
    assert_eq!(
        classify(&one(&[0x48, 0x83, 0x37, 0xff])), // xor qword [rdi],-1
        mem(Alu::Xor, Source::Imm(u64::MAX), 8)
    );
    assert_eq!(
        classify(&one(&[0xf7, 0x07, 0x00, 0x01, 0x00, 0x00])), // test dword [rdi],0x100
        mem(Alu::Test, Source::Imm(0x100), 4)
    );
    assert_eq!(
        classify(&one(&[0x84, 0x07])),
        mem(Alu::Test, Source::Reg(Register::AL), 1)
    ); // test [rdi],al
    assert_eq!(classify(&one(&[0xff, 0x07])), mem(Alu::Inc, Source::Imm(0), 4)); // inc dword [rdi]
    assert_eq!(classify(&one(&[0xfe, 0x0f])), mem(Alu::Dec, Source::Imm(0), 1)); // dec byte [rdi]
    assert_eq!(
        classify(&one(&[0x48, 0xf7, 0x1f])),
        mem(Alu::Neg, Source::Imm(0), 8)
    ); // neg qword [rdi]
    assert_eq!(
        classify(&one(&[0x66, 0xf7, 0x17])),
        mem(Alu::Not, Source::Imm(0), 2)
    ); // not word [rdi]
    assert_eq!(
        classify(&one(&[0x0f, 0xba, 0x27, 0x05])),
        mem(Alu::Bt, Source::Imm(5), 4)
    ); // bt dword [rdi],5
    assert_eq!(classify(&one(&[0xd1, 0x27])), mem(Alu::Shl, Source::Imm(1), 4)); // shl dword [rdi],1
    assert_eq!(classify(&one(&[0xd1, 0x37])), mem(Alu::Shl, Source::Imm(1), 4)); // sal dword [rdi],1
    assert_eq!(
        classify(&one(&[0x48, 0xc1, 0x2f, 0x03])),
        mem(Alu::Shr, Source::Imm(3), 8)
    ); // shr qword [rdi],3
    assert_eq!(
        classify(&one(&[0xd3, 0x3f])),
        mem(Alu::Sar, Source::Reg(Register::CL), 4)
    ); // sar dword [rdi],cl
    assert_eq!(
        classify(&one(&[0x66, 0xd1, 0x07])),
        mem(Alu::Rol, Source::Imm(1), 2)
    ); // rol word [rdi],1
    assert_eq!(
        classify(&one(&[0xc0, 0x0f, 0x05])),
        mem(Alu::Ror, Source::Imm(5), 1)
    ); // ror byte [rdi],5
    assert_eq!(
        classify(&one(&[0x6b, 0x07, 0xfd])), // imul eax,[rdi],-3
        Some(Op::Imul3 {
            dst: Register::EAX,
            imm: (-3i64) as u64,
            width: 4
        })
    );
}

#[test]
fn refuses_everything_else() {
    let refused: [&[u8]; 23] = [
        &[0x0f, 0x10, 0x07],                         // movups xmm0,[rdi]
        &[0x66, 0x0f, 0x6f, 0x07],                   // movdqa xmm0,[rdi]
        &[0x87, 0x07],                               // xchg [rdi],eax
        &[0xf0, 0x0f, 0xc1, 0x07],                   // lock xadd [rdi],eax
        &[0xf0, 0x01, 0x07],                         // lock add [rdi],eax
        &[0xf0, 0x83, 0x0f, 0x04],                   // lock or dword [rdi],4
        &[0x64, 0x8b, 0x07],                         // mov eax,fs:[rdi]
        &[0xf3, 0xa4],                               // rep movsb
        &[0xa5],                                     // movsd (string)
        &[0x89, 0xc8],                               // mov eax,ecx
        &[0x0f, 0xa3, 0x07],                         // bt [rdi],eax (bit string)
        &[0x66, 0x0f, 0x58, 0x07],                   // addpd xmm0,[rdi] (packed, 16 bytes)
        &[0xf0, 0x0f, 0xb1, 0x0f],                   // lock cmpxchg [rdi],ecx
        &[0xf0, 0x48, 0x0f, 0xc1, 0x07],             // lock xadd [rdi],rax
        &[0x0f, 0xc7, 0x0f],                         // cmpxchg8b [rdi]
        &[0x0f, 0x6e, 0x07],                         // movd mm0,[rdi]
        &[0xc5, 0xfc, 0x10, 0x07],                   // vmovups ymm0,[rdi]
        &[0x8c, 0x1f],                               // mov [rdi],ds
        &[0x66, 0x0f, 0xc5, 0xc0, 0x01],             // pextrw eax,xmm0,1 (no memory)
        &[0xc4, 0xe2, 0x7d, 0x58, 0x07],             // vpbroadcastd ymm0,[rdi] (YMM destination)
        &[0xc5, 0xff, 0x12, 0x07],                   // vmovddup ymm0,[rdi]
        &[0x62, 0xe3, 0x7d, 0x08, 0x22, 0x07, 0x01], // vpinsrd xmm16,xmm0,[rdi],1 (EVEX, XMM16)
        &[0x62, 0xf2, 0x7d, 0x09, 0x58, 0x07],       // vpbroadcastd xmm0{k1},[rdi] (masked)
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
fn extends_loaded_values() {
    assert_eq!(loaded_value(0x80, 1, Extend::Sign), 0xffff_ffff_ffff_ff80);
    assert_eq!(loaded_value(0x1_8000, 2, Extend::Sign), 0xffff_ffff_ffff_8000);
    assert_eq!(loaded_value(0x8000_0000, 4, Extend::Sign), 0xffff_ffff_8000_0000);
    assert_eq!(loaded_value(0xff80, 1, Extend::Zero), 0x80);
    assert_eq!(loaded_value(u64::MAX, 8, Extend::None), u64::MAX);
    assert_eq!(loaded_value(0x1122, 2, Extend::Swap), 0x2211);
    assert_eq!(loaded_value(0x1122_3344, 4, Extend::Swap), 0x4433_2211);
    assert_eq!(
        loaded_value(0x0102_0304_0506_0708, 8, Extend::Swap),
        0x0807_0605_0403_0201
    );
}

#[test]
fn effective_addresses() {
    let mut gregs = [0 as greg_t; NGREG];
    // SAFETY: no FP state.
    let mut regs = unsafe { Regs::new(&mut gregs, std::ptr::null_mut()) };
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

/// A device word that logs its accesses as (width, value, write).
struct FakeBus {
    word: u64,
    log: Vec<(usize, u64, bool)>,
}

impl Bus for FakeBus {
    fn read(&mut self, width: usize) -> std::io::Result<u64> {
        let v = self.word & regs::mask(width);
        self.log.push((width, v, false));
        Ok(v)
    }

    fn write(&mut self, width: usize, value: u64) -> std::io::Result<()> {
        self.word = (self.word & !regs::mask(width)) | value;
        self.log.push((width, value, true));
        Ok(())
    }
}

fn run(bytes: &[u8], word: u64, set: &[(Register, u64)]) -> (FakeBus, [greg_t; NGREG]) {
    let mut gregs = [0 as greg_t; NGREG];
    // SAFETY: no FP state.
    let mut regs = unsafe { Regs::new(&mut gregs, std::ptr::null_mut()) };
    for &(r, v) in set {
        regs.set(r, v).unwrap();
    }
    let mut bus = FakeBus {
        word,
        log: Vec::new(),
    };
    execute(classify(&one(bytes)).unwrap(), &mut regs, &mut bus).unwrap();
    (bus, gregs)
}

#[test]
fn read_modify_write_is_one_read_then_one_write() {
    // or dword [rdi],4
    let (bus, _) = run(&[0x83, 0x0f, 0x04], 0x1_0000_0001, &[]);
    assert_eq!(bus.log, [(4, 1, false), (4, 5, true)]);
    // inc byte [rdi]
    let (bus, gregs) = run(&[0xfe, 0x07], 0xff, &[]);
    assert_eq!(bus.log, [(1, 0xff, false), (1, 0, true)]);
    assert_eq!(gregs[libc::REG_EFL as usize] as u64 & 0x40, 0x40);
    // cmp qword [rdi],0 and test/bt only read.
    for bytes in [
        &[0x48, 0x83, 0x3f, 0x00][..],
        &[0xf7, 0x07, 0, 1, 0, 0],
        &[0x0f, 0xba, 0x27, 0x05],
    ] {
        let (bus, _) = run(bytes, 0x20, &[]);
        assert_eq!(bus.log, [(bus.log[0].0, 0x20, false)], "{bytes:02x?}");
    }
    // add eax,[rsi]: register destination, one read, upper half cleared.
    let (bus, gregs) = run(&[0x03, 0x06], 5, &[(Register::RAX, 0xffff_ffff_0000_0001)]);
    assert_eq!(bus.log, [(4, 5, false)]);
    assert_eq!(gregs[libc::REG_RAX as usize], 6);
    // movbe [rdi],ecx writes the swapped value.
    let (bus, _) = run(&[0x0f, 0x38, 0xf1, 0x0f], 0, &[(Register::RCX, 0x1122_3344)]);
    assert_eq!(bus.log, [(4, 0x4433_2211, true)]);
    // imul eax,[rdi],-3
    let (_, gregs) = run(&[0x6b, 0x07, 0xfd], 7, &[]);
    assert_eq!(gregs[libc::REG_RAX as usize] as u64, (-21i32) as u32 as u64);
}

#[test]
fn unlocked_xadd_and_cmpxchg_are_one_read_then_one_write() {
    // xadd [rdi],ecx: memory gets the sum, ECX the old value (upper half cleared).
    let (bus, gregs) = run(&[0x0f, 0xc1, 0x0f], 5, &[(Register::RCX, 0xffff_ffff_0000_0003)]);
    assert_eq!(bus.log, [(4, 5, false), (4, 8, true)]);
    assert_eq!(gregs[libc::REG_RCX as usize], 5);
    // xadd [rdi],ah keeps the rest of RAX.
    let (bus, gregs) = run(&[0x0f, 0xc0, 0x27], 0xff, &[(Register::RAX, 0x1234_0211)]);
    assert_eq!(bus.log, [(1, 0xff, false), (1, 1, true)]);
    assert_eq!(gregs[libc::REG_RAX as usize], 0x1234_ff11);
    assert_eq!(
        gregs[libc::REG_EFL as usize] as u64 & 1,
        1,
        "carry out of the byte"
    );
    // cmpxchg [rdi],rcx, equal: RCX is written, ZF set, RAX kept.
    let (bus, gregs) = run(
        &[0x48, 0x0f, 0xb1, 0x0f],
        7,
        &[(Register::RAX, 7), (Register::RCX, 9)],
    );
    assert_eq!(bus.log, [(8, 7, false), (8, 9, true)]);
    assert_eq!(gregs[libc::REG_RAX as usize], 7);
    assert_eq!(gregs[libc::REG_EFL as usize] as u64 & 0x40, 0x40);
    // Not equal: the value read is written back and loaded into RAX, ZF clear.
    let (bus, gregs) = run(
        &[0x48, 0x0f, 0xb1, 0x0f],
        6,
        &[(Register::RAX, 7), (Register::RCX, 9)],
    );
    assert_eq!(bus.log, [(8, 6, false), (8, 6, true)]);
    assert_eq!(gregs[libc::REG_RAX as usize], 6);
    assert_eq!(gregs[libc::REG_EFL as usize] as u64 & 0x40, 0);
}

#[test]
fn sse_forms_need_the_sse_state() {
    let mut gregs = [0 as greg_t; NGREG];
    // SAFETY: no FP state.
    let mut regs = unsafe { Regs::new(&mut gregs, std::ptr::null_mut()) };
    let mut bus = FakeBus {
        word: 1,
        log: Vec::new(),
    };
    let op = classify(&one(&[0xf2, 0x0f, 0x10, 0x07])).unwrap(); // movsd xmm0,[rdi]
    assert!(matches!(
        execute(op, &mut regs, &mut bus),
        Err(ExecError::Context(_))
    ));
    assert!(bus.log.is_empty(), "the device was touched");
}

#[test]
fn classifies_scans_bmi_wide_and_conditional_forms() {
    let reg = |alu, reg, width| Some(Op::AluReg { alu, reg, width });
    assert_eq!(
        classify(&one(&[0x0f, 0xbc, 0x07])),
        reg(Alu::Bsf, Register::EAX, 4)
    ); // bsf eax,[rdi]
    assert_eq!(
        classify(&one(&[0xf3, 0x48, 0x0f, 0xbd, 0x07])), // lzcnt rax,[rdi]
        reg(Alu::Lzcnt, Register::RAX, 8)
    );
    assert_eq!(
        classify(&one(&[0x66, 0xf3, 0x0f, 0xb8, 0x07])), // popcnt ax,[rdi]
        reg(Alu::Popcnt, Register::AX, 2)
    );
    assert_eq!(
        classify(&one(&[0xc4, 0xe2, 0x78, 0xf3, 0x0f])),
        reg(Alu::Blsr, Register::EAX, 4)
    ); // blsr eax,[rdi]
    assert_eq!(
        classify(&one(&[0xc4, 0xe2, 0x48, 0xf2, 0x07])), // andn eax,esi,[rdi]
        Some(Op::Bmi {
            bmi: Bmi::Andn,
            dst: Register::EAX,
            src: Source::Reg(Register::ESI),
            width: 4
        })
    );
    assert_eq!(
        classify(&one(&[0xc4, 0xe2, 0xc9, 0xf7, 0x07])), // shlx rax,[rdi],rsi
        Some(Op::Bmi {
            bmi: Bmi::Shlx,
            dst: Register::RAX,
            src: Source::Reg(Register::RSI),
            width: 8
        })
    );
    assert_eq!(
        classify(&one(&[0xc4, 0xe3, 0x7b, 0xf0, 0x07, 0x0d])), // rorx eax,[rdi],13
        Some(Op::Bmi {
            bmi: Bmi::Rorx,
            dst: Register::EAX,
            src: Source::Imm(13),
            width: 4
        })
    );
    assert_eq!(
        classify(&one(&[0xc4, 0xe2, 0xf3, 0xf6, 0x07])), // mulx rax,rcx,[rdi]
        Some(Op::Mulx {
            hi: Register::RAX,
            lo: Register::RCX,
            width: 8
        })
    );
    assert_eq!(
        classify(&one(&[0xf6, 0x2f])), // imul byte [rdi]
        Some(Op::Wide {
            op: Wide::Imul,
            width: 1
        })
    );
    assert_eq!(
        classify(&one(&[0xf7, 0x37])), // div dword [rdi]
        Some(Op::Wide {
            op: Wide::Div,
            width: 4
        })
    );
    assert_eq!(
        classify(&one(&[0x48, 0x0f, 0xa5, 0x37])), // shld [rdi],rsi,cl
        Some(Op::DoubleShift {
            left: true,
            src: Register::RSI,
            count: Source::Reg(Register::CL),
            width: 8
        })
    );
    assert_eq!(
        classify(&one(&[0x0f, 0x94, 0x07])), // sete [rdi]
        Some(Op::SetCc {
            cond: Cond::new(4).unwrap()
        })
    );
    assert_eq!(
        classify(&one(&[0x0f, 0x4c, 0x07])), // cmovl eax,[rdi]
        Some(Op::Cmov {
            cond: Cond::new(12).unwrap(),
            dst: Register::EAX,
            width: 4
        })
    );
    // Forms that do not exist or do not touch memory the way these do.
    for bytes in [
        &[0x0f, 0xbc, 0xc1][..],         // bsf eax,ecx
        &[0x0f, 0x94, 0xc0],             // sete al
        &[0xc4, 0xe2, 0x78, 0xf2, 0xc1], // andn eax,eax,ecx
    ] {
        assert_eq!(classify(&one(bytes)), None, "{bytes:02x?}");
    }
}

#[test]
fn conditions_follow_the_flags() {
    const CF: u64 = 0x1;
    const ZF: u64 = 0x40;
    const SF: u64 = 0x80;
    const OF: u64 = 0x800;
    let holds = |n: u8, f: u64| Cond::new(n).unwrap().holds(f);
    assert!(holds(2, CF) && !holds(3, CF)); // b / ae
    assert!(holds(4, ZF) && !holds(5, ZF)); // e / ne
    assert!(holds(6, ZF) && !holds(7, CF)); // be / a
    assert!(holds(12, SF) && !holds(12, SF | OF)); // l
    assert!(holds(14, ZF) && holds(15, 0) && !holds(15, OF)); // le / g
    assert_eq!(Cond::new(16), None);
}

#[test]
fn setcc_writes_a_byte_and_cmov_always_reads() {
    // sete [rdi] with ZF set, then clear.
    let (bus, _) = run(&[0x0f, 0x94, 0x07], 0xaa, &[]);
    assert_eq!(bus.log, [(1, 0, true)]);
    // cmove eax,[rdi] with ZF clear: one read, EAX kept but zero-extended.
    let (bus, gregs) = run(&[0x0f, 0x44, 0x07], 9, &[(Register::RAX, 0xffff_ffff_0000_0007)]);
    assert_eq!(bus.log, [(4, 9, false)]);
    assert_eq!(gregs[libc::REG_RAX as usize], 7);
    // cmovne eax,[rdi] moves.
    let (_, gregs) = run(&[0x0f, 0x45, 0x07], 9, &[]);
    assert_eq!(gregs[libc::REG_RAX as usize], 9);
}

#[test]
fn wide_forms_use_rdx_rax_and_a_zero_divisor_is_refused_after_the_read() {
    // mul qword [rdi]
    let (bus, gregs) = run(&[0x48, 0xf7, 0x27], 1 << 63, &[(Register::RAX, 4)]);
    assert_eq!(bus.log, [(8, 1 << 63, false)]);
    assert_eq!(
        (gregs[libc::REG_RDX as usize], gregs[libc::REG_RAX as usize]),
        (2, 0)
    );
    // div dword [rdi] by zero: the device was read, then the divide error.
    let mut gregs = [0 as greg_t; NGREG];
    // SAFETY: no FP state.
    let mut regs = unsafe { Regs::new(&mut gregs, std::ptr::null_mut()) };
    let mut bus = FakeBus {
        word: 0,
        log: Vec::new(),
    };
    let op = classify(&one(&[0xf7, 0x37])).unwrap();
    assert!(matches!(
        execute(op, &mut regs, &mut bus),
        Err(ExecError::Exception(_))
    ));
    assert_eq!(bus.log, [(4, 0, false)]);
    // shrd [rdi],esi,4 reads then writes once.
    let (bus, _) = run(&[0x0f, 0xac, 0x37, 0x04], 0x10, &[(Register::RSI, 0xf)]);
    assert_eq!(bus.log, [(4, 0x10, false), (4, 0xf000_0001, true)]);
}
