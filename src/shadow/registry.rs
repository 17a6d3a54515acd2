//! The process-wide table of live shadow regions, looked up by fault address.
//!
//! The fault handler runs in signal context, so the read side may not allocate
//! or lock. The table is a fixed array of slots made of atomics only:
//!
//! - `start`/`end` are a *hint* of the address range, guarded by a sequence
//!   number `seq` (a seqlock with one writer, the slot's owner): a lookup
//!   skips slots whose consistent hint does not meet the address without
//!   writing to them, and pins (then checks properly) any slot whose hint it
//!   saw half-updated.
//! - `entry` points at the region's [`Shared`] data (or is null).
//! - `pins` counts handlers that are using `entry` right now.
//! - `claimed` keeps the slot away from other registrations until its last
//!   reader is gone.
//!
//! A reader *pins* the slot (`pins += 1`) before it loads `entry`, then checks
//! the fault address against the pinned region's own range (the hint may be
//! stale), and unpins after its last use of the region. Unregistering clears
//! `entry` and then waits until `pins` is 0. Both sides use sequentially
//! consistent operations, so either the reader's load of `entry` comes after
//! the clear (and sees null), or its increment of `pins` comes before the
//! writer's check of `pins` (and the writer waits for the matching decrement).
//! Either way, no handler still uses a region once [`Registry::unregister`]
//! returns, and the region's memory can be freed.

use std::ptr;
use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use super::Shared;

use super::CAPACITY;

struct Slot {
    claimed: AtomicBool,
    seq: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    entry: AtomicPtr<Shared>,
    pins: AtomicUsize,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            claimed: AtomicBool::new(false),
            seq: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            entry: AtomicPtr::new(ptr::null_mut()),
            pins: AtomicUsize::new(0),
        }
    }

    /// Sets the hint; only the slot's owner calls this.
    fn set_hint(&self, start: usize, end: usize) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release);
    }

    /// Whether the hint may meet `start..end`: false only if a consistent
    /// hint says it does not.
    fn may_meet(&self, start: usize, end: usize) -> bool {
        let seq = self.seq.load(Ordering::Acquire);
        let (s, e) = (
            self.start.load(Ordering::Relaxed),
            self.end.load(Ordering::Relaxed),
        );
        fence(Ordering::Acquire);
        let stable = seq.is_multiple_of(2) && self.seq.load(Ordering::Relaxed) == seq;
        !stable || (s < end && start < e)
    }
}

/// A fixed table of slots; [`REGISTRY`] is the one the fault handler reads.
pub(crate) struct Registry {
    slots: [Slot; CAPACITY],
    /// One past the highest slot ever claimed: lookups scan no further.
    high: AtomicUsize,
}

/// The registry of the process.
pub(crate) static REGISTRY: Registry = Registry::new();

/// Unpins a slot when dropped, so that every path out of a lookup unpins.
struct Pin<'a>(&'a AtomicUsize);

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Registry {
    pub(crate) const fn new() -> Registry {
        Registry {
            slots: [const { Slot::new() }; CAPACITY],
            high: AtomicUsize::new(0),
        }
    }

    /// Publishes `shared` (whose range is `start..end`) and returns its slot,
    /// or `None` when every slot is taken.
    ///
    /// `shared` must stay valid until [`Registry::unregister`] of the returned
    /// slot has returned.
    pub(crate) fn register(&self, shared: *const Shared, start: usize, end: usize) -> Option<usize> {
        let index = self.slots.iter().position(|slot| {
            slot.claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        let slot = &self.slots[index];
        slot.set_hint(start, end);
        slot.entry.store(shared.cast_mut(), Ordering::SeqCst);
        self.high.fetch_max(index + 1, Ordering::SeqCst);
        Some(index)
    }

    /// Withdraws the region in `index` and waits until no handler uses it.
    ///
    /// Must not be called from the fault handler (it would wait for itself).
    pub(crate) fn unregister(&self, index: usize) {
        let slot = &self.slots[index];
        slot.entry.store(ptr::null_mut(), Ordering::SeqCst);
        while slot.pins.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        slot.set_hint(0, 0);
        slot.claimed.store(false, Ordering::Release);
    }

    /// Calls `f` with the live region that contains `addr`, keeping it pinned
    /// (so it cannot be freed) until `f` returns. `None` if no region holds
    /// `addr`. Async-signal-safe: atomics only.
    pub(crate) fn with_region<R>(&self, addr: usize, f: impl FnOnce(&Shared) -> R) -> Option<R> {
        let mut f = Some(f);
        self.scan(addr, addr.saturating_add(1), |shared| {
            shared
                .contains(addr)
                .then(|| f.take().map(|f| f(shared)))
                .flatten()
        })
    }

    /// Whether any live region's range meets `start..end`. Used to avoid
    /// reading instruction bytes from a shadow region.
    pub(crate) fn overlaps(&self, start: usize, end: usize) -> bool {
        self.scan(start, end, |shared| {
            (shared.base < end && start < shared.base + shared.len).then_some(())
        })
        .is_some()
    }

    /// Visits the live regions whose hint meets `start..end`, each pinned
    /// while `visit` looks at it, until `visit` returns `Some`.
    ///
    /// The hints are only a filter (a hint may belong to the slot's previous
    /// or next region): `visit` must check the region's own range.
    fn scan<R>(&self, start: usize, end: usize, mut visit: impl FnMut(&Shared) -> Option<R>) -> Option<R> {
        let high = self.high.load(Ordering::SeqCst);
        for slot in &self.slots[..high] {
            if !slot.may_meet(start, end) {
                continue;
            }
            slot.pins.fetch_add(1, Ordering::SeqCst);
            let _pin = Pin(&slot.pins);
            let entry = slot.entry.load(Ordering::SeqCst);
            // SAFETY: a non-null entry was published by `register`, whose caller
            // keeps it valid until `unregister` returns; `unregister` clears the
            // entry and then waits for `pins` to drop to 0, and we incremented
            // `pins` before loading the entry (both SeqCst), so the region
            // stays valid until `_pin` is dropped at the end of this iteration.
            if let Some(found) = unsafe { entry.as_ref() }.and_then(&mut visit) {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;
    use crate::region::RegionIo;

    struct Nothing;

    // SAFETY: every method returns at once, touching nothing.
    unsafe impl RegionIo for Nothing {
        fn size(&self) -> u64 {
            0x1000
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
    }

    fn shared(base: usize) -> Arc<Shared> {
        Arc::new(Shared {
            base,
            len: 0x1000,
            size: 0x1000,
            name: format!("test {base:#x}"),
            io: std::sync::Arc::new(Nothing),
            flags: crate::region::RegionFlags::READ_WRITE,
            hook: None,
            trace: None,
            refused: Default::default(),
            refused_errno: Default::default(),
        })
    }

    #[test]
    fn finds_registered_regions_only() {
        let registry = Registry::new();
        let (a, b) = (shared(0x10_0000), shared(0x20_0000));
        let sa = registry.register(Arc::as_ptr(&a), 0x10_0000, 0x10_1000).unwrap();
        let sb = registry.register(Arc::as_ptr(&b), 0x20_0000, 0x20_1000).unwrap();
        assert_ne!(sa, sb);
        assert_eq!(registry.with_region(0x10_0ffc, |s| s.base), Some(0x10_0000));
        assert_eq!(registry.with_region(0x20_0000, |s| s.base), Some(0x20_0000));
        assert_eq!(registry.with_region(0x10_1000, |s| s.base), None);
        assert!(registry.overlaps(0x10_0ff0, 0x10_1010));
        assert!(!registry.overlaps(0x10_1000, 0x10_2000));
        registry.unregister(sa);
        assert_eq!(registry.with_region(0x10_0000, |s| s.base), None);
        // The freed slot is reused.
        let c = shared(0x30_0000);
        assert_eq!(registry.register(Arc::as_ptr(&c), 0x30_0000, 0x30_1000), Some(sa));
        registry.unregister(sa);
        registry.unregister(sb);
    }

    #[test]
    fn refuses_when_full() {
        let registry = Registry::new();
        let regions: Vec<_> = (1..=CAPACITY).map(|i| shared(i << 20)).collect();
        let slots: Vec<usize> = regions
            .iter()
            .map(|r| registry.register(Arc::as_ptr(r), r.base, r.base + r.len).unwrap())
            .collect();
        let extra = shared(0x7000_0000);
        assert_eq!(
            registry.register(Arc::as_ptr(&extra), 0x7000_0000, 0x7000_1000),
            None
        );
        slots.into_iter().for_each(|s| registry.unregister(s));
    }

    #[test]
    fn unregister_waits_for_pinned_readers() {
        let registry = Registry::new();
        let region = shared(0x40_0000);
        let slot = registry
            .register(Arc::as_ptr(&region), 0x40_0000, 0x40_1000)
            .unwrap();
        let inside = AtomicBool::new(false);
        let release = AtomicBool::new(false);
        let unregistered = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                registry.with_region(0x40_0010, |_| {
                    inside.store(true, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        std::thread::yield_now();
                    }
                    // Still registered-and-pinned: the unregister cannot have returned.
                    assert!(!unregistered.load(Ordering::SeqCst));
                })
            });
            while !inside.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            s.spawn(|| {
                registry.unregister(slot);
                unregistered.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            release.store(true, Ordering::SeqCst);
        });
        assert!(unregistered.load(Ordering::SeqCst));
        assert_eq!(registry.with_region(0x40_0010, |_| ()), None);
    }
}
