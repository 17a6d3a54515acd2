//! A small cache of decoded instructions by address, so that a load or store
//! that faults again and again (a polling loop, a driver's register accessor)
//! is decoded once, not on every fault.
//!
//! It is read and written from the fault handler, so it is a fixed table of
//! atomics: each entry is a seqlock (an odd sequence number while it is being
//! written; writers that find it odd or lose the race skip caching). A hit
//! must match both the address and the instruction bytes now at that
//! address, so code that changed since (unloaded and reloaded, generated at
//! run time) is decoded afresh.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::emulate::Register;

use super::emulate::{
    Alu, Bmi, Cond, Decoded, Extend, Lane, LaneOp, Mem, Op, Source, Sse, Wide, MAX_INSN_LEN,
};

const ENTRIES: usize = 64;

struct Entry {
    seq: AtomicU64,
    rip: AtomicU64,
    code: [AtomicU64; 2],
    op: AtomicU64,
    imm: AtomicU64,
    mem: AtomicU64,
    disp: AtomicU64,
}

impl Entry {
    const fn new() -> Entry {
        Entry {
            seq: AtomicU64::new(0),
            rip: AtomicU64::new(0),
            code: [AtomicU64::new(0), AtomicU64::new(0)],
            op: AtomicU64::new(0),
            imm: AtomicU64::new(0),
            mem: AtomicU64::new(0),
            disp: AtomicU64::new(0),
        }
    }
}

/// The cache; [`CACHE`] is the one the handler uses.
pub(crate) struct DecodeCache {
    entries: [Entry; ENTRIES],
}

/// The process's decode cache.
pub(crate) static CACHE: DecodeCache = DecodeCache::new();

/// `code` (at most 15 bytes) as two little-endian words, zero-padded.
fn code_words(code: &[u8]) -> [u64; 2] {
    let mut bytes = [0u8; 16];
    bytes[..code.len()].copy_from_slice(code);
    let (lo, hi) = bytes.split_at(8);
    let word = |b: &[u8]| b.iter().rev().fold(0u64, |w, &x| w << 8 | u64::from(x));
    [word(lo), word(hi)]
}

const LOAD: u64 = 0;
const STORE: u64 = 1;
const XMM_LOAD: u64 = 2;
const XMM_STORE: u64 = 3;
const ALU_REG: u64 = 4;
const ALU_MEM: u64 = 5;
const IMUL3: u64 = 6;
const BMI: u64 = 7;
const MULX: u64 = 8;
const WIDE: u64 = 9;
const DOUBLE_SHIFT: u64 = 10;
const SETCC: u64 = 11;
const CMOV: u64 = 12;
const SSE: u64 = 13;
const LANE: u64 = 14;
/// `XADD` (sub-code 0) and `CMPXCHG` (1).
const EXCHANGE: u64 = 15;

/// Set in the op word when the instruction's source is an immediate.
const SRC_IMM: u64 = 1 << 32;
/// Set in the op word for a VEX/EVEX SSE operation.
const VEX: u64 = 1 << 33;
/// Where the op word keeps a second register.
const REG2_SHIFT: u32 = 40;

fn extend_code(extend: Extend) -> u64 {
    match extend {
        Extend::None => 0,
        Extend::Zero => 1,
        Extend::Sign => 2,
        Extend::Swap => 3,
    }
}

/// A source as (register, immediate, flag) parts of the packed words.
fn source_parts(src: Source) -> (Register, u64, u64) {
    match src {
        Source::Reg(reg) => (reg, 0, 0),
        Source::Imm(imm) => (Register::None, imm, SRC_IMM),
    }
}

/// Packs `d` into (op, imm, mem, disp) words. The op word holds the kind
/// (bits 0..4), width (4..8), a kind-specific code (8..16: extension, swap,
/// VEX, condition or operation), a register (16..24), the length (24..32),
/// [`SRC_IMM`], [`VEX`], and a second register (40..48): the source of the
/// kinds that also name a destination, `MULX`'s low half, or an SSE
/// operation's first source.
fn pack(d: &Decoded) -> [u64; 4] {
    let none = (Register::None, 0, 0);
    let (kind, sub, reg, (reg2, imm, flag)) = match d.op {
        Op::Load { dst, extend, .. } => (LOAD, extend_code(extend), dst, none),
        Op::Store { src, swap, .. } => {
            let (reg, imm, flag) = source_parts(src);
            (STORE, u64::from(swap), reg, (Register::None, imm, flag))
        }
        Op::XmmLoad { dst, vex, .. } => (XMM_LOAD, u64::from(vex), dst, none),
        Op::XmmStore { src, .. } => (XMM_STORE, 0, src, none),
        Op::AluReg { alu, reg, .. } => (ALU_REG, alu as u64, reg, none),
        Op::AluMem { alu, src, .. } => {
            let (reg, imm, flag) = source_parts(src);
            (ALU_MEM, alu as u64, reg, (Register::None, imm, flag))
        }
        Op::Imul3 { dst, imm, .. } => (IMUL3, 0, dst, (Register::None, imm, 0)),
        Op::Bmi { bmi, dst, src, .. } => (BMI, bmi as u64, dst, source_parts(src)),
        Op::Mulx { hi, lo, .. } => (MULX, 0, hi, (lo, 0, 0)),
        Op::Wide { op, .. } => (WIDE, op as u64, Register::None, none),
        Op::DoubleShift { left, src, count, .. } => (DOUBLE_SHIFT, u64::from(left), src, source_parts(count)),
        Op::Xadd { reg, .. } => (EXCHANGE, 0, reg, none),
        Op::Cmpxchg { reg, .. } => (EXCHANGE, 1, reg, none),
        Op::SetCc { cond } => (SETCC, u64::from(cond.number()), Register::None, none),
        Op::Cmov { cond, dst, .. } => (CMOV, u64::from(cond.number()), dst, none),
        Op::Sse {
            op, dst, src1, vex, ..
        } => (SSE, op as u64, dst, (src1, 0, if vex { VEX } else { 0 })),
        Op::Lane(l) => {
            let (sub, imm) = match l.op {
                LaneOp::Insert { offset, zero } => (0, u64::from(offset) | u64::from(zero) << 8),
                LaneOp::Extract { offset } => (1, u64::from(offset)),
                LaneOp::Broadcast => (2, 0),
            };
            (LANE, sub, l.xmm, (l.src1, imm, if l.vex { VEX } else { 0 }))
        }
    };
    let op = kind
        | (d.width() as u64) << 4
        | sub << 8
        | (reg as u64) << 16
        | u64::from(d.len) << 24
        | flag
        | (reg2 as u64) << REG2_SHIFT;
    let mem = d.mem.base as u64 | (d.mem.index as u64) << 8 | u64::from(d.mem.scale) << 16;
    [op, imm, mem, d.mem.disp]
}

/// The inverse of [`pack`]; `None` for words that [`pack`] cannot produce.
fn unpack([op, imm, mem, disp]: [u64; 4]) -> Option<Decoded> {
    let reg = |v: u64| Register::try_from((v & 0xff) as usize).ok();
    let width = ((op >> 4) & 0xf) as usize;
    let sub = (op >> 8) & 0xff;
    let r = reg(op >> 16)?;
    let r2 = reg(op >> REG2_SHIFT)?;
    let source = |reg: Register| {
        if op & SRC_IMM != 0 {
            Source::Imm(imm)
        } else {
            Source::Reg(reg)
        }
    };
    let src = source(r);
    let alu = || Alu::from_u8(sub as u8);
    let cond = || Cond::new(sub as u8);
    let op_ = match op & 0xf {
        LOAD => Op::Load {
            dst: r,
            width,
            extend: match sub {
                0 => Extend::None,
                1 => Extend::Zero,
                2 => Extend::Sign,
                3 => Extend::Swap,
                _ => return None,
            },
        },
        STORE => Op::Store {
            src,
            width,
            swap: sub != 0,
        },
        XMM_LOAD => Op::XmmLoad {
            dst: r,
            width,
            vex: sub != 0,
        },
        XMM_STORE => Op::XmmStore { src: r, width },
        ALU_REG => Op::AluReg {
            alu: alu()?,
            reg: r,
            width,
        },
        ALU_MEM => Op::AluMem {
            alu: alu()?,
            src,
            width,
        },
        IMUL3 => Op::Imul3 { dst: r, imm, width },
        BMI => Op::Bmi {
            bmi: Bmi::from_u8(sub as u8)?,
            dst: r,
            src: source(r2),
            width,
        },
        MULX => Op::Mulx { hi: r, lo: r2, width },
        WIDE => Op::Wide {
            op: Wide::from_u8(sub as u8)?,
            width,
        },
        DOUBLE_SHIFT => Op::DoubleShift {
            left: sub != 0,
            src: r,
            count: source(r2),
            width,
        },
        EXCHANGE => match sub {
            0 => Op::Xadd { reg: r, width },
            1 => Op::Cmpxchg { reg: r, width },
            _ => return None,
        },
        SETCC => Op::SetCc { cond: cond()? },
        CMOV => Op::Cmov {
            cond: cond()?,
            dst: r,
            width,
        },
        LANE => Op::Lane(Lane {
            op: match sub {
                0 => LaneOp::Insert {
                    offset: imm as u8,
                    zero: (imm >> 8) as u8,
                },
                1 => LaneOp::Extract { offset: imm as u8 },
                2 => LaneOp::Broadcast,
                _ => return None,
            },
            xmm: r,
            src1: r2,
            width,
            vex: op & VEX != 0,
        }),
        SSE => Op::Sse {
            op: Sse::from_u8(sub as u8)?,
            dst: r,
            src1: r2,
            width,
            vex: op & VEX != 0,
        },
        _ => return None,
    };
    Some(Decoded {
        op: op_,
        mem: Mem {
            base: reg(mem)?,
            index: reg(mem >> 8)?,
            scale: (mem >> 16) as u8,
            disp,
        },
        len: ((op >> 24) & 0xff) as u8,
    })
}

impl DecodeCache {
    pub(crate) const fn new() -> DecodeCache {
        DecodeCache {
            entries: [const { Entry::new() }; ENTRIES],
        }
    }

    fn entry(&self, rip: u64) -> &Entry {
        let h = rip ^ (rip >> 6) ^ (rip >> 12);
        &self.entries[h as usize % ENTRIES]
    }

    /// The cached decoding of the instruction at `rip`, if `code` (the bytes
    /// now at `rip`, as many as could be read) starts with the same bytes.
    /// Async-signal-safe.
    pub(crate) fn get(&self, rip: u64, code: &[u8]) -> Option<Decoded> {
        let e = self.entry(rip);
        let seq = e.seq.load(Ordering::Acquire);
        if seq % 2 == 1 {
            return None;
        }
        let cached_rip = e.rip.load(Ordering::Relaxed);
        let code_cached = [
            e.code[0].load(Ordering::Relaxed),
            e.code[1].load(Ordering::Relaxed),
        ];
        let words = [
            e.op.load(Ordering::Relaxed),
            e.imm.load(Ordering::Relaxed),
            e.mem.load(Ordering::Relaxed),
            e.disp.load(Ordering::Relaxed),
        ];
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != seq || seq == 0 || cached_rip != rip {
            return None;
        }
        let decoded = unpack(words)?;
        let len = usize::from(decoded.len);
        (len <= code.len() && code_words(&code[..len]) == code_cached).then_some(decoded)
    }

    /// Remembers `decoded` for `rip`, whose instruction bytes are `code`
    /// (exactly `decoded.len` of them). Skips it if another thread is writing
    /// the same entry. Async-signal-safe.
    pub(crate) fn put(&self, rip: u64, code: &[u8], decoded: &Decoded) {
        debug_assert!(code.len() == usize::from(decoded.len) && code.len() <= MAX_INSN_LEN);
        let e = self.entry(rip);
        let seq = e.seq.load(Ordering::Relaxed);
        if seq % 2 == 1
            || e.seq
                .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        let [lo, hi] = code_words(code);
        let [op, imm, mem, disp] = pack(decoded);
        e.rip.store(rip, Ordering::Relaxed);
        e.code[0].store(lo, Ordering::Relaxed);
        e.code[1].store(hi, Ordering::Relaxed);
        e.op.store(op, Ordering::Relaxed);
        e.imm.store(imm, Ordering::Relaxed);
        e.mem.store(mem, Ordering::Relaxed);
        e.disp.store(disp, Ordering::Relaxed);
        e.seq.store(seq + 2, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::emulate::{decode, emulable};

    fn decoded(bytes: &[u8], rip: u64) -> Decoded {
        emulable(&decode(bytes, rip).unwrap()).unwrap()
    }

    #[test]
    fn packs_every_form() {
        let forms: [&[u8]; 38] = [
            &[0x8a, 0x27],                               // mov ah,[rdi]
            &[0x48, 0x0f, 0xbe, 0x07],                   // movsx rax,byte [rdi]
            &[0x0f, 0xb7, 0x44, 0x8f, 0x10],             // movzx eax,word [rdi+rcx*4+0x10]
            &[0x44, 0x89, 0x3f],                         // mov [rdi],r15d
            &[0x48, 0xc7, 0x07, 0xfe, 0xff, 0xff, 0xff], // mov qword [rdi],-2
            &[0x8b, 0x05, 0x00, 0x01, 0x00, 0x00],       // mov eax,[rip+0x100]
            &[0x48, 0xa1, 1, 2, 3, 4, 5, 6, 7, 8],       // mov rax,[abs]
            &[0x67, 0x8b, 0x07],                         // mov eax,[edi]
            &[0x0f, 0x38, 0xf0, 0x07],                   // movbe eax,[rdi]
            &[0x0f, 0x38, 0xf1, 0x0f],                   // movbe [rdi],ecx
            &[0xf2, 0x44, 0x0f, 0x10, 0x3f],             // movsd xmm15,[rdi]
            &[0x66, 0x0f, 0xd6, 0x17],                   // movq [rdi],xmm2
            &[0x03, 0x06],                               // add eax,[rsi]
            &[0x01, 0x07],                               // add [rdi],eax
            &[0x48, 0x83, 0x37, 0xff],                   // xor qword [rdi],-1
            &[0x48, 0xf7, 0x1f],                         // neg qword [rdi]
            &[0x0f, 0xba, 0x27, 0x05],                   // bt dword [rdi],5
            &[0x6b, 0x07, 0xfd],                         // imul eax,[rdi],-3
            &[0xd3, 0x3f],                               // sar dword [rdi],cl
            &[0xf3, 0x0f, 0xbc, 0x07],                   // tzcnt eax,[rdi]
            &[0x48, 0x0f, 0xbd, 0x07],                   // bsr rax,[rdi]
            &[0xc4, 0xe2, 0x48, 0xf2, 0x07],             // andn eax,esi,[rdi]
            &[0xc4, 0xe2, 0xc8, 0xf7, 0x07],             // bextr rax,[rdi],rsi
            &[0xc4, 0xe3, 0x7b, 0xf0, 0x07, 0x0d],       // rorx eax,[rdi],13
            &[0xc4, 0xe2, 0xf3, 0xf6, 0x07],             // mulx rax,rcx,[rdi]
            &[0x48, 0xf7, 0x37],                         // div qword [rdi]
            &[0x48, 0x0f, 0xa4, 0x37, 0x07],             // shld [rdi],rsi,7
            &[0x0f, 0x94, 0x07],                         // sete [rdi]
            &[0x0f, 0xc0, 0x27],                         // xadd [rdi],ah
            &[0x48, 0x0f, 0xb1, 0x0f],                   // cmpxchg [rdi],rcx
            &[0x0f, 0x4c, 0x07],                         // cmovl eax,[rdi]
            &[0xf2, 0x0f, 0x58, 0x07],                   // addsd xmm0,[rdi]
            &[0xc5, 0xf3, 0x59, 0x07],                   // vmulsd xmm0,xmm1,[rdi]
            &[0xf2, 0x48, 0x0f, 0x2c, 0x07],             // cvttsd2si rax,[rdi]
            &[0x66, 0x0f, 0x3a, 0x22, 0x07, 0x02],       // pinsrd xmm0,[rdi],2
            &[0x66, 0x0f, 0x17, 0x0f],                   // movhpd [rdi],xmm1
            &[0xc4, 0xe2, 0x79, 0x58, 0x07],             // vpbroadcastd xmm0,[rdi]
            &[0xc4, 0xe3, 0x79, 0x21, 0x0f, 0x1a],       // vinsertps xmm1,xmm0,[rdi],0x1a
        ];
        for bytes in forms {
            let d = decoded(bytes, 0x40_1000);
            assert_eq!(unpack(pack(&d)), Some(d), "{bytes:02x?}");
        }
    }

    #[test]
    fn hits_only_for_the_same_address_and_bytes() {
        let cache = DecodeCache::new();
        let load = [0x8b, 0x07]; // mov eax,[rdi]
        let d = decoded(&load, 0x1000);
        assert_eq!(cache.get(0x1000, &[0x8b, 0x07, 0x90]), None);
        cache.put(0x1000, &load, &d);
        assert_eq!(cache.get(0x1000, &[0x8b, 0x07, 0x90, 0xc3]), Some(d));
        assert_eq!(cache.get(0x1000, &load), Some(d));
        // Fewer bytes than the instruction, other bytes, another address.
        assert_eq!(cache.get(0x1000, &[0x8b]), None);
        assert_eq!(cache.get(0x1000, &[0x89, 0x07]), None);
        assert_eq!(cache.get(0x1000 + 64 * 64 * 64, &load), None);
        // Replaced by a colliding address.
        let other = 0x1000 + 64 * 64 * 64;
        cache.put(other, &load, &decoded(&load, other));
        assert_eq!(cache.get(0x1000, &load), None);
        assert!(cache.get(other, &load).is_some());
    }

    #[test]
    fn concurrent_writers_never_yield_a_mixed_entry() {
        let cache = DecodeCache::new();
        let a: &[u8] = &[0x8b, 0x07];
        let b: &[u8] = &[0x48, 0xc7, 0x07, 0xfe, 0xff, 0xff, 0xff];
        let (da, db) = (decoded(a, 0x2000), decoded(b, 0x2000));
        std::thread::scope(|s| {
            for (code, d) in [(a, da), (b, db)] {
                let cache = &cache;
                s.spawn(move || (0..20_000).for_each(|_| cache.put(0x2000, code, &d)));
            }
            s.spawn(|| {
                for _ in 0..20_000 {
                    if let Some(got) = cache.get(0x2000, a) {
                        assert_eq!(got, da);
                    }
                    if let Some(got) = cache.get(0x2000, b) {
                        assert_eq!(got, db);
                    }
                }
            });
        });
    }
}
