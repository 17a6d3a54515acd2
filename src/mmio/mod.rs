//! Pinned MMIO accesses and typed register-block pointers.
//!
//! # Pinned accesses
//!
//! [`read()`] and [`write()`] make one access of exactly the width of `T` at a
//! raw pointer. On x86-64 each is one `mov`, pinned with `asm!` as Linux's
//! `readl`/`writel` are: a volatile access in Rust (or C) may be compiled
//! into an ALU instruction with a memory operand (`add eax,[rsi]`,
//! `or dword [rdi],4`, `cmp`, `movbe`, ...), which a TDX/SEV `#VE` handler
//! cannot emulate and barmap's fault handler must decode. A pinned access on
//! a mapped page is that one instruction; on a trapped page it is a plain
//! `MOV` for the fault handler. [`crate::Region::read`]/[`crate::Region::write`]
//! use the same accessors on their fast path. Other architectures get
//! `read_volatile`/`write_volatile`.
//!
//! # Register blocks
//!
//! A device's registers are described once as a `#[repr(C)]` struct of
//! register wrappers, whose types say how each may be accessed:
//!
//! | wrapper | read | write |
//! |---|---|---|
//! | [`ReadPure<T>`] | shared | — |
//! | [`ReadOnly<T>`] | unique (side effects) | — |
//! | [`WriteOnly<T>`] | — | unique |
//! | [`ReadPureWrite<T>`] | shared | unique |
//! | [`ReadWrite<T>`] | unique (side effects) | unique |
//!
//! [`crate::Region::block`] checks once that the block lies, aligned, in the
//! region (and that the region allows reads and writes) and gives a
//! [`UniqueMmioPtr`] borrowing the region mutably; [`crate::Region::shared_block`]
//! gives a `Copy` [`SharedMmioPtr`] for pure reads from a shared region.
//! [`crate::field!`] projects to one register (or a nested block) of a
//! block that implements [`RegisterBlock`] (an `unsafe` promise that it is
//! such a struct and has no `Deref`);
//! [`UniqueMmioPtr::get`] indexes an array of registers. Every access is one
//! pinned `read`/`write`: one instruction on a mapped page, one emulable
//! `MOV` on a trapped one. The checks of a projection are constant and
//! compile away.
//!
//! QEMU's edu device:
//!
//! ```no_run
//! use barmap::field;
//! use barmap::mmio::{ReadPure, ReadPureWrite, RegisterBlock, WriteOnly};
//!
//! /// edu's BAR0 registers.
//! #[repr(C)]
//! struct EduRegs {
//!     /// 0x00: 0xRRrr00ed, the version and the device id.
//!     id: ReadPure<u32>,
//!     /// 0x04: reads back the bitwise inverse of what was written.
//!     liveness: ReadPureWrite<u32>,
//!     /// 0x08: write n, read n! once STATUS bit 0 clears.
//!     factorial: ReadPureWrite<u32>,
//!     _reserved0: [u32; 5],
//!     /// 0x20: bit 0 computing, bit 7 raise an interrupt when done.
//!     status: ReadPureWrite<u32>,
//!     /// 0x24: pending interrupt bits.
//!     irq_status: ReadPure<u32>,
//!     _reserved1: [u32; 14],
//!     /// 0x60: raises the interrupt bits written.
//!     irq_raise: WriteOnly<u32>,
//!     /// 0x64: acknowledges the interrupt bits written.
//!     irq_ack: WriteOnly<u32>,
//! }
//! // SAFETY: a repr(C) struct of register wrappers, without Deref.
//! unsafe impl RegisterBlock for EduRegs {}
//! const _: () = assert!(std::mem::offset_of!(EduRegs, status) == 0x20);
//! const _: () = assert!(std::mem::offset_of!(EduRegs, irq_raise) == 0x60);
//!
//! let edu = barmap::Device::open("0000:00:02.0".parse()?)?;
//! let mut bar0 = edu.bar(0)?;
//! let mut regs = bar0.block::<EduRegs>(0)?;
//! assert_eq!(field!(regs, id).read() & 0xffff, 0x00ed);
//! field!(regs, liveness).write(5);
//! assert_eq!(field!(regs, liveness).read(), !5);
//! field!(regs, factorial).write(5);
//! while field!(regs, status).read() & 1 != 0 {}
//! assert_eq!(field!(regs, factorial).read(), 120);
//! field!(regs, irq_raise).write(1);
//! let pending = field!(regs, irq_status).read();
//! field!(regs, irq_ack).write(pending);
//! # Ok::<(), barmap::Error>(())
//! ```
//!
//! # Why not the `safe-mmio` crate
//!
//! Google's safe-mmio (0.3) has the model this module follows (unique and
//! shared pointers, the five wrappers, `field!`), and its pointers take any
//! lifetime at construction, so they could borrow a [`crate::Region`]. barmap
//! does not depend on it, because what it is needed for here is missing:
//!
//! - On x86-64 its default backend is `read_volatile`/`write_volatile`, the
//!   very code that compiles into ALU forms. Pinning needs its `custom-mmio`
//!   feature, a link-time hook (`set_mmio_ops!`) that the final binary must
//!   register exactly once: a feature of a library would impose it on every
//!   other user of safe-mmio in the program, and fail to link without it.
//! - Its pointers are built unsafely from a raw address, its register types
//!   are any `zerocopy` type, and it brings `zerocopy` along. Here the checks
//!   against a region (bounds, alignment, permissions, with barmap's typed
//!   [`crate::Error`]) are ours anyway, and registers are the sealed
//!   [`crate::Scalar`] widths that [`crate::Region`]'s typed accesses and the
//!   fault handler already share.
//!
//! What remains is a few hundred lines (mostly docs) with one `asm!` per
//! width, owned here.

mod block;
mod fields;
mod ptr;

pub use crate::access::{read, write};
pub use fields::{ReadOnly, ReadPure, ReadPureWrite, ReadWrite, WriteOnly};
pub use ptr::{RegisterBlock, SharedMmioPtr, UniqueMmioPtr};
