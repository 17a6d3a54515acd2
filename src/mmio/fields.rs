//! Register wrappers: the type of a field in a register block says how it
//! may be accessed, and the accesses themselves.

use super::ptr::{SharedMmioPtr, UniqueMmioPtr};
use crate::access::{read, write, Scalar};

macro_rules! register {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Only ever a type at a device address, inside a register block: there
        /// are no values of it, and it has the size and alignment of `T`.
        #[repr(transparent)]
        pub struct $name<T: Scalar>(T);
    };
}

register!(
    /// A read-only register whose reads may have side effects (a FIFO, a
    /// clear-on-read status): reading needs a [`UniqueMmioPtr`].
    ReadOnly
);
register!(
    /// A read-only register whose reads have no side effects: readable
    /// through a [`SharedMmioPtr`] too.
    ReadPure
);
register!(
    /// A write-only register (a doorbell, an interrupt acknowledge).
    WriteOnly
);
register!(
    /// A read-write register whose reads may have side effects.
    ReadWrite
);
register!(
    /// A read-write register whose reads have no side effects.
    ReadPureWrite
);

impl<B> UniqueMmioPtr<'_, B> {
    /// The register's address as a `T` pointer.
    fn reg<T>(&self) -> *mut T {
        self.as_ptr().cast()
    }
}

impl<B> SharedMmioPtr<'_, B> {
    /// The register's address as a `T` pointer.
    fn reg<T>(&self) -> *const T {
        self.as_ptr().cast()
    }
}

// SAFETY (every block below): a pointer to a register was checked at its
// block's construction to lie, aligned, inside the range of a live Region for
// as long as the pointer lives, and the wrappers are `repr(transparent)` over
// `T`, so `reg` is an aligned `T` inside the region: the contract of
// `read`/`write`. Unique pointers to a writable block exist only for regions
// that allow writes.

macro_rules! side_effect_read {
    ($($name:ident),*) => {$(
        impl<T: Scalar> UniqueMmioPtr<'_, $name<T>> {
            /// Reads the register: one pinned load of `T`.
            #[inline]
            pub fn read(&mut self) -> T {
                // SAFETY: see above.
                unsafe { read(self.reg::<T>()) }
            }
        }
    )*};
}

macro_rules! pure_read {
    ($($name:ident),*) => {$(
        impl<T: Scalar> UniqueMmioPtr<'_, $name<T>> {
            /// Reads the register: one pinned load of `T`.
            #[inline]
            pub fn read(&self) -> T {
                // SAFETY: see above.
                unsafe { read(self.reg::<T>()) }
            }
        }

        impl<T: Scalar> SharedMmioPtr<'_, $name<T>> {
            /// Reads the register: one pinned load of `T`.
            #[inline]
            pub fn read(&self) -> T {
                // SAFETY: see above.
                unsafe { read(self.reg::<T>()) }
            }
        }
    )*};
}

macro_rules! writable {
    ($($name:ident),*) => {$(
        impl<T: Scalar> UniqueMmioPtr<'_, $name<T>> {
            /// Writes the register: one pinned store of `T`.
            #[inline]
            pub fn write(&mut self, value: T) {
                // SAFETY: see above.
                unsafe { write(self.reg::<T>(), value) }
            }
        }
    )*};
}

macro_rules! updatable {
    ($($name:ident),*) => {$(
        impl<T: Scalar> UniqueMmioPtr<'_, $name<T>> {
            /// Reads the register, then writes `f` of what was read: one load and
            /// one store of `T` (not atomic with respect to the device).
            #[inline]
            pub fn update(&mut self, f: impl FnOnce(T) -> T) {
                let value = self.read();
                self.write(f(value));
            }
        }
    )*};
}

side_effect_read!(ReadOnly, ReadWrite);
pure_read!(ReadPure, ReadPureWrite);
writable!(WriteOnly, ReadWrite, ReadPureWrite);
updatable!(ReadWrite, ReadPureWrite);
