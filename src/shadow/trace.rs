//! Trapped-access records: what the fault handler reports and how.
//!
//! The handler cannot call `log` (it may allocate or lock), so it reports each
//! access two ways: it calls the region's [`AccessHook`] right away, and it
//! pushes an [`Access`] into a fixed-size lock-free ring that
//! [`crate::Region::flush_trace`] (and dropping the region) drains into
//! `log::trace!` lines outside signal context.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Whether a trapped access read or wrote the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A load: the device was read.
    Read,
    /// A store: the device was written.
    Write,
}

/// Why the fault handler did not let a trapped access reach the device.
///
/// Such an access is completed as PCIe completes an unsupported request: a
/// load gets all-ones, a store is dropped. The region records it
/// ([`crate::Region::take_error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A store to a region without the write flag (recorded with `EACCES`).
    ReadOnly,
    /// A load from a region without the read flag (recorded with `EACCES`).
    WriteOnly,
    /// The device refused it: `EIO` from `pread`/`pwrite`, as vfio-pci
    /// answers while memory decoding is off or a reset cannot be waited out.
    Revoked,
}

impl Refusal {
    /// The errno the region records for it (see [`crate::Error::Refused`]).
    pub fn errno(self) -> i32 {
        match self {
            Refusal::ReadOnly | Refusal::WriteOnly => libc::EACCES,
            Refusal::Revoked => libc::EIO,
        }
    }

    /// A few words for trace lines: `read-only region`, `write-only region`,
    /// `device answered EIO`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::ReadOnly => "read-only region",
            Refusal::WriteOnly => "write-only region",
            Refusal::Revoked => "device answered EIO",
        }
    }

    /// Its code in a trace cell: 0 is none.
    fn code(refusal: Option<Refusal>) -> u64 {
        match refusal {
            None => 0,
            Some(Refusal::ReadOnly) => 1,
            Some(Refusal::WriteOnly) => 2,
            Some(Refusal::Revoked) => 3,
        }
    }

    fn from_code(code: u64) -> Option<Refusal> {
        match code {
            1 => Some(Refusal::ReadOnly),
            2 => Some(Refusal::WriteOnly),
            3 => Some(Refusal::Revoked),
            _ => None,
        }
    }
}

/// One trapped access, as the fault handler served (or refused) it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Access {
    /// Offset of the access in the region.
    pub offset: u64,
    /// Width in bytes: 1, 2, 4 or 8.
    pub width: usize,
    /// The value read from or written to the device (zero-extended). For a
    /// refused load, the all-ones the instruction got; for a dropped store,
    /// the value the instruction meant to write.
    pub value: u64,
    /// Read or write.
    pub kind: AccessKind,
    /// `Some` if the access never reached the device, and why: the load got
    /// all-ones, the store was dropped.
    pub refused: Option<Refusal>,
}

impl Access {
    /// An access of `width` bytes at `offset` that moved `value`.
    pub fn new(offset: u64, width: usize, value: u64, kind: AccessKind) -> Access {
        Access {
            offset,
            width,
            value,
            kind,
            refused: None,
        }
    }

    /// This access, marked as not reaching the device for `refusal`.
    pub fn with_refusal(self, refusal: Refusal) -> Access {
        Access {
            refused: Some(refusal),
            ..self
        }
    }
}

impl fmt::Display for Access {
    /// `write16 at 0x20 = 0x4242`; a refused access ends with what became
    /// of it: `write16 at 0x20 = 0x4242 dropped (read-only region)`,
    /// `read32 at 0x4 = 0xffffffff refused (write-only region)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.kind {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
        };
        write!(
            f,
            "{dir}{} at {:#x} = {:#0w$x}",
            self.width * 8,
            self.offset,
            self.value,
            w = self.width * 2 + 2
        )?;
        if let Some(refusal) = self.refused {
            let fate = match self.kind {
                AccessKind::Read => "refused",
                AccessKind::Write => "dropped",
            };
            write!(f, " {fate} ({})", refusal.reason())?;
        }
        Ok(())
    }
}

/// A callback for every trapped access of a shadow region.
///
/// It is called **inside the SIGSEGV handler**, after the device access (or
/// its refusal: see [`Access::refused`]) and before the faulting instruction
/// resumes, so it must be async-signal-safe:
/// no allocation, no locks, no `log`/`println!`, no panics. Atomics (counters,
/// a preallocated ring) are fine. For logging, use the `log::trace!` output of
/// [`crate::Region::flush_trace`] instead.
///
/// It must not:
/// - touch a trapped page of **any** shadow region (its own or another, a
///   [`crate::Region`]'s included): SIGSEGV is blocked while the handler runs,
///   so that fault is not served and the kernel kills the process;
/// - drop any [`crate::Region`]: dropping its
///   own waits for the hook's own fault to finish, that is forever, and a drop
///   that unmaps allocates and takes locks.
pub type AccessHook = Arc<dyn Fn(&Access) + Send + Sync>;

const KIND_SHIFT: u64 = 8;
const REFUSAL_SHIFT: u64 = 16;

/// One cell of the ring: a sequence number and the record, all atomics so that
/// a reader racing a writer can at worst see a cell it will then skip.
struct Cell {
    seq: AtomicUsize,
    offset: AtomicU64,
    value: AtomicU64,
    /// Width in the low byte, kind in the next, the refusal's code above.
    meta: AtomicU64,
}

/// A bounded multi-producer multi-consumer queue of [`Access`] records
/// (Vyukov's sequence-numbered ring). Pushing never blocks or allocates; a
/// push into a full ring counts the record as dropped instead.
pub(crate) struct TraceRing {
    cells: Box<[Cell]>,
    head: AtomicUsize,
    tail: AtomicUsize,
    dropped: AtomicU64,
}

impl TraceRing {
    /// A ring of `capacity` records (a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> TraceRing {
        debug_assert!(capacity.is_power_of_two() && capacity >= 2);
        let cells = (0..capacity)
            .map(|i| Cell {
                seq: AtomicUsize::new(i),
                offset: AtomicU64::new(0),
                value: AtomicU64::new(0),
                meta: AtomicU64::new(0),
            })
            .collect();
        TraceRing {
            cells,
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn cell(&self, pos: usize) -> &Cell {
        &self.cells[pos & (self.cells.len() - 1)]
    }

    /// Appends `access`, or counts it as dropped if the ring is full.
    /// Async-signal-safe.
    pub(crate) fn push(&self, access: &Access) {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let cell = self.cell(pos);
            let seq = cell.seq.load(Ordering::Acquire);
            match seq.wrapping_sub(pos) as isize {
                0 => match self
                    .tail
                    .compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => {
                        let kind = match access.kind {
                            AccessKind::Read => 0,
                            AccessKind::Write => 1,
                        };
                        cell.offset.store(access.offset, Ordering::Relaxed);
                        cell.value.store(access.value, Ordering::Relaxed);
                        let meta = access.width as u64
                            | kind << KIND_SHIFT
                            | Refusal::code(access.refused) << REFUSAL_SHIFT;
                        cell.meta.store(meta, Ordering::Relaxed);
                        cell.seq.store(pos + 1, Ordering::Release);
                        return;
                    }
                    Err(now) => pos = now,
                },
                d if d < 0 => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => pos = self.tail.load(Ordering::Relaxed),
            }
        }
    }

    /// Takes the oldest record, if any.
    pub(crate) fn pop(&self) -> Option<Access> {
        let mut pos = self.head.load(Ordering::Relaxed);
        loop {
            let cell = self.cell(pos);
            let seq = cell.seq.load(Ordering::Acquire);
            match seq.wrapping_sub(pos + 1) as isize {
                0 => match self
                    .head
                    .compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => {
                        let meta = cell.meta.load(Ordering::Relaxed);
                        let access = Access {
                            offset: cell.offset.load(Ordering::Relaxed),
                            value: cell.value.load(Ordering::Relaxed),
                            width: (meta & 0xff) as usize,
                            kind: if (meta >> KIND_SHIFT) & 0xff == 0 {
                                AccessKind::Read
                            } else {
                                AccessKind::Write
                            },
                            refused: Refusal::from_code(meta >> REFUSAL_SHIFT),
                        };
                        cell.seq.store(pos + self.cells.len(), Ordering::Release);
                        return Some(access);
                    }
                    Err(now) => pos = now,
                },
                d if d < 0 => return None,
                _ => pos = self.head.load(Ordering::Relaxed),
            }
        }
    }

    /// How many records were dropped because the ring was full, since the last call.
    pub(crate) fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(i: u64) -> Access {
        Access::new(
            i * 4,
            4,
            i,
            if i.is_multiple_of(2) {
                AccessKind::Read
            } else {
                AccessKind::Write
            },
        )
    }

    #[test]
    fn ring_keeps_order_and_counts_overflow() {
        let ring = TraceRing::new(4);
        assert_eq!(ring.pop(), None);
        for i in 0..6 {
            ring.push(&access(i));
        }
        assert_eq!(ring.take_dropped(), 2);
        assert_eq!(ring.take_dropped(), 0);
        for i in 0..4 {
            assert_eq!(ring.pop(), Some(access(i)));
        }
        assert_eq!(ring.pop(), None);
        ring.push(&access(9));
        assert_eq!(ring.pop(), Some(access(9)));
    }

    #[test]
    fn ring_is_consistent_under_concurrent_producers() {
        let ring = TraceRing::new(1024);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let ring = &ring;
                s.spawn(move || (0..200).for_each(|i| ring.push(&access(t * 1000 + i))));
            }
        });
        let mut seen: Vec<u64> = std::iter::from_fn(|| ring.pop()).map(|a| a.value).collect();
        seen.sort_unstable();
        let mut want: Vec<u64> = (0..4).flat_map(|t| (0..200).map(move |i| t * 1000 + i)).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
    }

    #[test]
    fn access_displays_width_and_direction() {
        let a = Access::new(0x10, 2, 0xab, AccessKind::Write);
        assert_eq!(a.to_string(), "write16 at 0x10 = 0x00ab");
    }

    #[test]
    fn refused_accesses_display_what_became_of_them() {
        let write = Access::new(0x20, 2, 0x4242, AccessKind::Write);
        assert_eq!(
            write.with_refusal(Refusal::ReadOnly).to_string(),
            "write16 at 0x20 = 0x4242 dropped (read-only region)"
        );
        assert_eq!(
            write.with_refusal(Refusal::Revoked).to_string(),
            "write16 at 0x20 = 0x4242 dropped (device answered EIO)"
        );
        let read = Access::new(4, 4, 0xffff_ffff, AccessKind::Read);
        assert_eq!(
            read.with_refusal(Refusal::WriteOnly).to_string(),
            "read32 at 0x4 = 0xffffffff refused (write-only region)"
        );
    }

    #[test]
    fn the_ring_keeps_each_refusal() {
        let ring = TraceRing::new(8);
        let plain = Access::new(8, 8, u64::MAX, AccessKind::Write);
        let marked = [
            plain,
            plain.with_refusal(Refusal::ReadOnly),
            Access::new(0, 1, 0xff, AccessKind::Read).with_refusal(Refusal::WriteOnly),
            plain.with_refusal(Refusal::Revoked),
        ];
        marked.iter().for_each(|a| ring.push(a));
        let back: Vec<Access> = std::iter::from_fn(|| ring.pop()).collect();
        assert_eq!(back, marked);
    }
}
