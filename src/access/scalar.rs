//! The scalar types a register access can have, and the one place where
//! device memory is touched with volatile loads and stores.

use std::ptr::{read_volatile, write_volatile};

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// An unsigned integer that can be read or written as one device access:
/// `u8`, `u16`, `u32` or `u64`.
pub trait Scalar: sealed::Sealed + Copy + Send + Sync + Eq + std::fmt::Debug + 'static {
    /// Width of the access in bytes.
    const WIDTH: usize;

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

/// One volatile load of `T` from device memory.
///
/// # Safety
/// `ptr` must be aligned for `T` and point into a live mapping of at least
/// `size_of::<T>()` readable bytes.
#[inline(always)]
pub(crate) unsafe fn load<T: Scalar>(ptr: *const u8) -> T {
    // SAFETY: guaranteed by the caller; a volatile access never creates a
    // reference to device memory and is never merged, split or elided.
    unsafe { read_volatile(ptr.cast::<T>()).le_to_cpu() }
}

/// One volatile store of `T` to device memory.
///
/// # Safety
/// `ptr` must be aligned for `T` and point into a live mapping of at least
/// `size_of::<T>()` writable bytes.
#[inline(always)]
pub(crate) unsafe fn store<T: Scalar>(ptr: *mut u8, value: T) {
    // SAFETY: guaranteed by the caller, as for `load`.
    unsafe { write_volatile(ptr.cast::<T>(), value.cpu_to_le()) }
}
