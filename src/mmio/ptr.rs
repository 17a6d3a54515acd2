//! Typed pointers to a register block inside a region, and projection to
//! its fields.

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;

/// A `#[repr(C)]` struct of registers that [`crate::field!`] may project into.
///
/// # Safety
///
/// Implement it only for a struct whose fields are register wrappers
/// ([`super::ReadWrite`] and the others), arrays of them, padding integers,
/// or other `RegisterBlock`s, and that implements neither `Deref` nor
/// `DerefMut`: [`crate::field!`] names a field of the pointee, and Rust's
/// field access would otherwise go through `Deref` and read a pointer out of
/// device memory.
///
/// Without it, [`crate::field!`] does not compile, so no field access can go
/// through a pointer type:
///
/// ```compile_fail
/// use barmap::{field, mmio::ReadPure};
/// #[repr(C)]
/// struct Regs {
///     id: ReadPure<u32>,
/// }
/// fn id(region: &mut barmap::Region) -> barmap::Result<u32> {
///     let mut regs = region.block::<Box<Regs>>(0)?; // a Box read from the device
///     Ok(field!(regs, id).read())
/// }
/// ```
pub unsafe trait RegisterBlock {}

/// A pointer to a `B` (a register block, one register, an array of them) in
/// a [`crate::Region`], borrowing the region uniquely: like `&'a mut B` for
/// device memory. Registers are written, and read where reads have side
/// effects, through a unique pointer only. Obtained from
/// [`crate::Region::block`]; narrowed with [`crate::field!`] or
/// [`UniqueMmioPtr::get`].
pub struct UniqueMmioPtr<'a, B> {
    ptr: NonNull<B>,
    _region: PhantomData<&'a mut B>,
}

/// A pointer to a `B` in a [`crate::Region`], shared: like `&'a B` for device
/// memory. Only reads without side effects ([`super::ReadPure`],
/// [`super::ReadPureWrite`]) go through it. Obtained from
/// [`crate::Region::shared_block`] or [`UniqueMmioPtr::as_shared`].
pub struct SharedMmioPtr<'a, B> {
    ptr: NonNull<B>,
    _region: PhantomData<&'a B>,
}

// SAFETY: the pointers only ever reach device memory of a region (which is
// Send and Sync) through single pinned accesses of register wrappers, never
// through a Rust value or reference; uniqueness is kept by the borrow.
unsafe impl<B> Send for UniqueMmioPtr<'_, B> {}
// SAFETY: as above; a shared reference to a unique pointer only reads purely.
unsafe impl<B> Sync for UniqueMmioPtr<'_, B> {}
// SAFETY: as above.
unsafe impl<B> Send for SharedMmioPtr<'_, B> {}
// SAFETY: as above.
unsafe impl<B> Sync for SharedMmioPtr<'_, B> {}

impl<B> Clone for SharedMmioPtr<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for SharedMmioPtr<'_, B> {}

impl<B> std::fmt::Debug for UniqueMmioPtr<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UniqueMmioPtr").field(&self.ptr).finish()
    }
}

impl<B> std::fmt::Debug for SharedMmioPtr<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedMmioPtr").field(&self.ptr).finish()
    }
}

/// The pointer to the `F` that `field` points to inside the block at `base`,
/// derived from `base`.
///
/// # Panics
/// If `field` does not point to an `F` lying wholly inside the block and
/// aligned for `F`. For a field projected from a `#[repr(C)]` block all of
/// this is known at compile time, and the check compiles to nothing.
#[inline(always)]
fn inside<B, F>(base: NonNull<B>, field: *mut F) -> NonNull<F> {
    let offset = (field as usize).wrapping_sub(base.as_ptr() as usize);
    let fits = offset
        .checked_add(size_of::<F>())
        .is_some_and(|end| end <= size_of::<B>());
    assert!(
        fits && offset.is_multiple_of(align_of::<F>()) && align_of::<F>() <= align_of::<B>(),
        "projection to a {}-byte field at offset {offset:#x} of a {}-byte block: outside or misaligned",
        size_of::<F>(),
        size_of::<B>(),
    );
    // SAFETY: offset + size_of::<F>() <= size_of::<B>(), so the result stays in
    // the block `base` points to (non-null, since the block is in a mapping).
    unsafe { base.byte_add(offset).cast() }
}

impl<'a, B> UniqueMmioPtr<'a, B> {
    /// A unique pointer to the `B` at `ptr`.
    ///
    /// # Safety
    /// `ptr` is aligned for `B` and its `size_of::<B>()` bytes lie in the range
    /// of a region that allows reads and writes, which stays live and is not
    /// reached through other safe handles for `'a`.
    pub(crate) unsafe fn new(ptr: NonNull<B>) -> Self {
        UniqueMmioPtr {
            ptr,
            _region: PhantomData,
        }
    }

    /// The block's address, for raw accesses with [`super::read()`] and
    /// [`super::write()`].
    pub fn as_ptr(&self) -> *mut B {
        self.ptr.as_ptr()
    }

    /// A shorter-lived unique pointer to the same block.
    pub fn reborrow(&mut self) -> UniqueMmioPtr<'_, B> {
        UniqueMmioPtr {
            ptr: self.ptr,
            _region: PhantomData,
        }
    }

    /// A shared pointer to the same block, for pure reads, while this one is
    /// borrowed.
    pub fn as_shared(&self) -> SharedMmioPtr<'_, B> {
        SharedMmioPtr {
            ptr: self.ptr,
            _region: PhantomData,
        }
    }

    /// A unique pointer to one field, borrowing this one: `field` maps the
    /// block's address to the field's, as [`crate::field!`] does.
    ///
    /// # Panics
    /// If `field` returns a pointer to an `F` that does not lie, aligned,
    /// inside the block (never for [`crate::field!`] on a `#[repr(C)]` block
    /// with no `repr(packed)`; the check is then compiled out).
    #[inline(always)]
    pub fn project<F>(&mut self, field: impl FnOnce(*mut B) -> *mut F) -> UniqueMmioPtr<'_, F> {
        UniqueMmioPtr {
            ptr: inside(self.ptr, field(self.ptr.as_ptr())),
            _region: PhantomData,
        }
    }
}

impl<B: RegisterBlock> UniqueMmioPtr<'_, B> {
    /// [`UniqueMmioPtr::project`] for [`crate::field!`], on register blocks only.
    #[doc(hidden)]
    #[inline(always)]
    pub fn __field<F>(&mut self, field: impl FnOnce(*mut B) -> *mut F) -> UniqueMmioPtr<'_, F> {
        self.project(field)
    }
}

impl<F, const N: usize> UniqueMmioPtr<'_, [F; N]> {
    /// A unique pointer to element `index` of an array of registers, or `None`
    /// past its end.
    pub fn get(&mut self, index: usize) -> Option<UniqueMmioPtr<'_, F>> {
        (index < N).then(|| self.project(|p| p.cast::<F>().wrapping_add(index)))
    }
}

impl<'a, B> SharedMmioPtr<'a, B> {
    /// A shared pointer to the `B` at `ptr`.
    ///
    /// # Safety
    /// `ptr` is aligned for `B` and its `size_of::<B>()` bytes lie in the range
    /// of a readable region that stays live for `'a`.
    pub(crate) unsafe fn new(ptr: NonNull<B>) -> Self {
        SharedMmioPtr {
            ptr,
            _region: PhantomData,
        }
    }

    /// The block's address, for raw reads with [`super::read()`].
    pub fn as_ptr(&self) -> *const B {
        self.ptr.as_ptr()
    }

    /// A shared pointer to one field: see [`UniqueMmioPtr::project`].
    ///
    /// # Panics
    /// As for [`UniqueMmioPtr::project`].
    #[inline(always)]
    pub fn project<F>(&self, field: impl FnOnce(*mut B) -> *mut F) -> SharedMmioPtr<'a, F> {
        SharedMmioPtr {
            ptr: inside(self.ptr, field(self.ptr.as_ptr())),
            _region: PhantomData,
        }
    }
}

impl<'a, B: RegisterBlock> SharedMmioPtr<'a, B> {
    /// [`SharedMmioPtr::project`] for [`crate::field!`], on register blocks only.
    #[doc(hidden)]
    #[inline(always)]
    pub fn __field<F>(&self, field: impl FnOnce(*mut B) -> *mut F) -> SharedMmioPtr<'a, F> {
        self.project(field)
    }
}

impl<'a, F, const N: usize> SharedMmioPtr<'a, [F; N]> {
    /// A shared pointer to element `index` of an array of registers, or
    /// `None` past its end.
    pub fn get(&self, index: usize) -> Option<SharedMmioPtr<'a, F>> {
        (index < N).then(|| self.project(|p| p.cast::<F>().wrapping_add(index)))
    }
}

/// A pointer to one field of the register block a [`UniqueMmioPtr`] or
/// [`SharedMmioPtr`] points to: `field!(regs, liveness)`. From a unique
/// pointer it borrows that pointer uniquely; from a shared one it is shared
/// and `Copy`.
///
/// The block must be a [`mmio::RegisterBlock`](crate::mmio::RegisterBlock);
/// `field` names one of its fields.
#[macro_export]
macro_rules! field {
    ($ptr:expr, $field:tt) => {
        $ptr.__field(|block| {
            // SAFETY: `block` points to a whole block inside a live region, so
            // the field's place is in bounds; the block is a RegisterBlock,
            // which has no Deref to go through, so no pointer is read and no
            // reference is made.
            unsafe { ::core::ptr::addr_of_mut!((*block).$field) }
        })
    };
}
