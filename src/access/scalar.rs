//! The scalar types a register access can have, and the one place where
//! device memory is touched: single loads and stores of exactly one width,
//! pinned to one `mov` with `asm!` on x86-64.

mod sealed {
    /// The sealing supertrait of [`super::Scalar`], carrying the pinned
    /// accesses of each width.
    pub trait Sealed: Sized {
        /// One load of exactly `size_of::<Self>()` bytes, as stored in memory.
        ///
        /// # Safety
        /// As for [`super::read()`].
        unsafe fn pinned_load(ptr: *const Self) -> Self;

        /// [`Sealed::pinned_load`] at `base + offset`, the addition done by
        /// the instruction's addressing (one instruction in all).
        ///
        /// # Safety
        /// As for [`super::read()`] at `base + offset`.
        unsafe fn pinned_load_at(base: *const u8, offset: usize) -> Self;

        /// [`Sealed::pinned_store`] at `base + offset`, likewise.
        ///
        /// # Safety
        /// As for [`super::write()`] at `base + offset`.
        unsafe fn pinned_store_at(base: *mut u8, offset: usize, value: Self);

        /// One store of exactly `size_of::<Self>()` bytes, as given.
        ///
        /// # Safety
        /// As for [`super::write()`].
        unsafe fn pinned_store(ptr: *mut Self, value: Self);
    }
}

/// An unsigned integer that can be read or written as one device access:
/// `u8`, `u16`, `u32` or `u64`.
pub trait Scalar: sealed::Sealed + Copy + Send + Sync + Eq + std::fmt::Debug + 'static {
    /// Width of the access in bytes.
    const WIDTH: usize;

    /// Every bit set: what a read of a device that does not answer returns.
    const ALL_ONES: Self;

    /// The value as little-endian bytes (PCI is little-endian), `WIDTH` of them in the first places.
    fn to_le_word(self) -> [u8; 8];

    /// The value from its first `WIDTH` little-endian bytes.
    fn from_le_word(bytes: [u8; 8]) -> Self;

    /// The value zero-extended to 64 bits.
    fn to_u64(self) -> u64;

    /// The low `WIDTH` bytes of `value`.
    fn truncate_from(value: u64) -> Self;

    /// Converts a value loaded from little-endian device memory to CPU order.
    fn le_to_cpu(self) -> Self;

    /// Converts a CPU-order value to little-endian for a store to device memory.
    fn cpu_to_le(self) -> Self;
}

macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            const WIDTH: usize = std::mem::size_of::<$t>();
            const ALL_ONES: Self = <$t>::MAX;

            fn to_le_word(self) -> [u8; 8] {
                (self as u64).to_le_bytes()
            }

            fn from_le_word(bytes: [u8; 8]) -> Self {
                u64::from_le_bytes(bytes) as $t
            }

            fn to_u64(self) -> u64 {
                self as u64
            }

            fn truncate_from(value: u64) -> Self {
                value as $t
            }

            fn le_to_cpu(self) -> Self {
                <$t>::from_le(self)
            }

            fn cpu_to_le(self) -> Self {
                self.to_le()
            }
        }
    )*};
}

scalar!(u8, u16, u32, u64);

/// The pinned accesses of one width on x86-64: `mov` between one register
/// and memory, nothing else. A load is `readonly` (it writes no memory the
/// compiler knows of) but not `pure`: it has side effects on a device and
/// must be neither merged, hoisted nor dropped.
#[cfg(target_arch = "x86_64")]
macro_rules! pinned {
    ($t:ty, $class:ident, $load:literal, $store:literal, $load_at:literal, $store_at:literal) => {
        impl sealed::Sealed for $t {
            #[inline(always)]
            unsafe fn pinned_load(ptr: *const $t) -> $t {
                let value: $t;
                // SAFETY: the caller guarantees `ptr` is aligned and readable for
                // size_of::<$t>() bytes; the one `mov` reads exactly those bytes and
                // touches no stack, flags or other memory.
                unsafe {
                    std::arch::asm!($load, v = lateout($class) value, p = in(reg) ptr,
                        options(nostack, preserves_flags, readonly));
                }
                value
            }

            #[inline(always)]
            unsafe fn pinned_store(ptr: *mut $t, value: $t) {
                // SAFETY: the caller guarantees `ptr` is aligned and writable for
                // size_of::<$t>() bytes; the one `mov` writes exactly those bytes.
                unsafe {
                    std::arch::asm!($store, p = in(reg) ptr, v = in($class) value,
                        options(nostack, preserves_flags));
                }
            }

            #[inline(always)]
            unsafe fn pinned_load_at(base: *const u8, offset: usize) -> $t {
                let value: $t;
                // SAFETY: as in `pinned_load`, for the address `base + offset`.
                unsafe {
                    std::arch::asm!($load_at, v = lateout($class) value, b = in(reg) base,
                        o = in(reg) offset, options(nostack, preserves_flags, readonly));
                }
                value
            }

            #[inline(always)]
            unsafe fn pinned_store_at(base: *mut u8, offset: usize, value: $t) {
                // SAFETY: as in `pinned_store`, for the address `base + offset`.
                unsafe {
                    std::arch::asm!($store_at, b = in(reg) base, o = in(reg) offset,
                        v = in($class) value, options(nostack, preserves_flags));
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
pinned!(
    u8,
    reg_byte,
    "mov {v}, byte ptr [{p}]",
    "mov byte ptr [{p}], {v}",
    "mov {v}, byte ptr [{b} + {o}]",
    "mov byte ptr [{b} + {o}], {v}"
);
#[cfg(target_arch = "x86_64")]
pinned!(
    u16,
    reg,
    "mov {v:x}, word ptr [{p}]",
    "mov word ptr [{p}], {v:x}",
    "mov {v:x}, word ptr [{b} + {o}]",
    "mov word ptr [{b} + {o}], {v:x}"
);
#[cfg(target_arch = "x86_64")]
pinned!(
    u32,
    reg,
    "mov {v:e}, dword ptr [{p}]",
    "mov dword ptr [{p}], {v:e}",
    "mov {v:e}, dword ptr [{b} + {o}]",
    "mov dword ptr [{b} + {o}], {v:e}"
);
#[cfg(target_arch = "x86_64")]
pinned!(
    u64,
    reg,
    "mov {v:r}, qword ptr [{p}]",
    "mov qword ptr [{p}], {v:r}",
    "mov {v:r}, qword ptr [{b} + {o}]",
    "mov qword ptr [{b} + {o}], {v:r}"
);

/// Elsewhere, volatile accesses: one access of the type's width, though the
/// compiler chooses the instruction.
#[cfg(not(target_arch = "x86_64"))]
macro_rules! pinned {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {
            #[inline(always)]
            unsafe fn pinned_load(ptr: *const $t) -> $t {
                // SAFETY: guaranteed by the caller, as for `read`.
                unsafe { ptr.read_volatile() }
            }

            #[inline(always)]
            unsafe fn pinned_store(ptr: *mut $t, value: $t) {
                // SAFETY: guaranteed by the caller, as for `write`.
                unsafe { ptr.write_volatile(value) }
            }

            #[inline(always)]
            unsafe fn pinned_load_at(base: *const u8, offset: usize) -> $t {
                // SAFETY: guaranteed by the caller, as for `read`.
                unsafe { base.add(offset).cast::<$t>().read_volatile() }
            }

            #[inline(always)]
            unsafe fn pinned_store_at(base: *mut u8, offset: usize, value: $t) {
                // SAFETY: guaranteed by the caller, as for `write`.
                unsafe { base.add(offset).cast::<$t>().write_volatile(value) }
            }
        }
    )*};
}

#[cfg(not(target_arch = "x86_64"))]
pinned!(u8, u16, u32, u64);

/// Reads one `T` from device memory at `ptr` as a single access of exactly
/// `size_of::<T>()` bytes, converted from little-endian (PCI's order) to the
/// CPU's.
///
/// On x86-64 the access is one `mov` from memory into a register, pinned with
/// `asm!`: the compiler cannot fold it into an ALU instruction, widen, split,
/// merge, hoist or drop it, so barmap's fault handler (on a trapped page), a
/// TDX/SEV `#VE`/`#VC` handler or a hypervisor only ever sees a plain `MOV`.
/// This is what Linux's `readb`/`readw`/`readl`/`readq` do. Elsewhere it is
/// one `read_volatile`.
///
/// The load is not a compiler barrier for ordinary memory: read memory that a
/// device writes by DMA with atomics or volatile accesses.
///
/// # Safety
/// `ptr` must be non-null, aligned for `T`, and point to `size_of::<T>()`
/// bytes that may be read for the duration of the call: inside the range of a
/// live [`crate::Region`] (from [`crate::Region::as_ptr`], mapped or
/// trapped), or other memory valid for [`std::ptr::read_volatile`] that no
/// other thread writes concurrently without synchronisation.
#[inline(always)]
pub unsafe fn read<T: Scalar>(ptr: *const T) -> T {
    // SAFETY: guaranteed by the caller.
    unsafe { T::pinned_load(ptr) }.le_to_cpu()
}

/// Writes one `T` to device memory at `ptr` as a single access of exactly
/// `size_of::<T>()` bytes, converted to little-endian. On x86-64 one `mov`
/// from a register to memory, pinned with `asm!` (like Linux's `writel`);
/// elsewhere one `write_volatile`. The store is a compiler barrier: ordinary
/// stores before it (a DMA descriptor, say) are emitted before it.
///
/// # Safety
/// `ptr` must be non-null, aligned for `T`, and point to `size_of::<T>()`
/// bytes that may be written for the duration of the call: inside the range of
/// a live [`crate::Region`] that allows writes (from
/// [`crate::Region::as_mut_ptr`], mapped or trapped), or other memory valid
/// for [`std::ptr::write_volatile`] that no other thread accesses concurrently
/// without synchronisation.
#[inline(always)]
pub unsafe fn write<T: Scalar>(ptr: *mut T, value: T) {
    // SAFETY: guaranteed by the caller.
    unsafe { T::pinned_store(ptr, value.cpu_to_le()) }
}

/// [`read()`] at `base + offset`, for the region's typed fast and slow paths:
/// still one `mov`, with the addition in its addressing.
///
/// # Safety
/// As for [`read()`] at `base + offset`.
#[inline(always)]
pub(crate) unsafe fn load<T: Scalar>(base: *const u8, offset: usize) -> T {
    // SAFETY: guaranteed by the caller.
    unsafe { T::pinned_load_at(base, offset) }.le_to_cpu()
}

/// [`write()`] at `base + offset`.
///
/// # Safety
/// As for [`write()`] at `base + offset`.
#[inline(always)]
pub(crate) unsafe fn store<T: Scalar>(base: *mut u8, offset: usize, value: T) {
    // SAFETY: guaranteed by the caller.
    unsafe { T::pinned_store_at(base, offset, value.cpu_to_le()) }
}
