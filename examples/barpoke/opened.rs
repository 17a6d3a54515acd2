//! One region opened the way `--via` asks, and the raw loads and stores
//! `--via fault` and `--via auto` make through its shadow pointer.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use barmap::mmio;
use barmap::shadow::{Access, AccessKind, Refusal};
use barmap::{Device, Error, MapPolicy, RegionIndex, Result};

use crate::cli::Via;
use crate::format::{self, AccessPath};
use crate::parse::Width;

/// One region opened the way `--via` asks, with every access checked and traced.
pub struct Opened {
    bar: barmap::Region,
    via: Via,
    /// Accesses that did not go straight to a mapping, counted by the
    /// region's access hook: what `--trace` reports as the path taken.
    trapped: Arc<AtomicU64>,
    /// The refusal of the last access the hook saw, as an index into
    /// [`REFUSALS`]: what `--trace` reports as dropped.
    refused: Arc<AtomicU8>,
    /// The directly mapped ranges (empty under `--via syscall` and `fault`).
    mapped: Vec<Range<u64>>,
    /// One pointer over the whole region whose unmapped pages are trapped (a
    /// shadow region), under `--via fault`, and under `--via auto` for a region
    /// that is not fully mapped. Valid while `bar` lives.
    shadow: Option<*mut u8>,
}

/// What the fault handler may say of an access, by index (barmap's hook
/// runs in the signal handler: it stores an index, never a value that
/// needs dropping).
const REFUSALS: [Option<Refusal>; 4] = [
    None,
    Some(Refusal::ReadOnly),
    Some(Refusal::WriteOnly),
    Some(Refusal::Revoked),
];

/// The pointer `--via auto` uses for `bar`: the shadow region over its
/// unmapped parts, or `None` if it is fully mapped or this platform has no
/// shadow regions (then those parts take pread/pwrite). Any other failure to
/// set up the shadow region is an error.
fn auto_shadow(bar: &barmap::Region) -> Result<Option<*mut u8>> {
    if bar.is_fully_mapped() {
        return Ok(None);
    }
    match bar.as_mut_ptr() {
        Ok(ptr) => Ok(Some(ptr)),
        // The fault handler is x86-64 only.
        Err(Error::Unsupported { .. }) if !cfg!(target_arch = "x86_64") => Ok(None),
        Err(e) => Err(e),
    }
}

impl Opened {
    /// How `via` opens a region.
    fn policy(via: Via) -> MapPolicy {
        match via {
            Via::Auto | Via::Mmap => MapPolicy::Direct,
            Via::Syscall => MapPolicy::TrapAll,
            Via::Fault => MapPolicy::TrapAll,
        }
    }

    /// Opens region `index` of `device` as `via` asks: its mapping policy, a
    /// hook counting trapped accesses, and the shadow pointer where `via` uses one.
    pub fn open(device: &Device, index: RegionIndex, via: Via) -> Result<Opened> {
        let trapped = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU8::new(0));
        let (count, last) = (trapped.clone(), refused.clone());
        let builder = device.region_builder(index)?.policy(Opened::policy(via));
        let hook = move |a: &Access| {
            count.fetch_add(1, Ordering::Relaxed);
            // REFUSALS holds every refusal this barmap knows.
            let code = REFUSALS
                .iter()
                .position(|r| *r == a.refused)
                .unwrap_or(REFUSALS.len() - 1);
            last.store(code as u8, Ordering::Relaxed);
        };
        // SAFETY: the hook only stores to atomics and scans a constant array:
        // async-signal-safe.
        let bar = unsafe { builder.hook(hook) }.build()?;
        let mapped = bar.mapped_ranges().to_vec();
        if via == Via::Mmap && mapped.is_empty() {
            return Err(Error::NotMmapable {
                addr: device.address(),
                region: index,
                reason: "the kernel offers no mmap of it (use --via auto or syscall)",
            });
        }
        let shadow = match via {
            Via::Fault => Some(bar.as_mut_ptr()?),
            Via::Auto => auto_shadow(&bar)?,
            Via::Mmap | Via::Syscall => None,
        };
        Ok(Opened {
            bar,
            via,
            trapped,
            refused,
            mapped,
            shadow,
        })
    }

    /// The region's size in bytes.
    pub fn size(&self) -> u64 {
        self.bar.size()
    }

    /// The path of everything that is not directly mapped.
    fn slow_path(&self) -> AccessPath {
        if self.shadow.is_some() {
            AccessPath::Fault
        } else {
            AccessPath::Syscall
        }
    }

    /// Refuses `offset..offset + len` unless it lies inside the region.
    pub fn check_span(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.bar.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                addr: self.bar.address(),
                region: self.bar.index(),
                offset,
                len,
                size,
            });
        }
        Ok(())
    }

    /// The path an access takes; under `--via mmap`, an in-bounds access
    /// outside the mapping is refused (an out-of-bounds one is left to the
    /// library, which names the range).
    fn path(&self, offset: u64, width: Width) -> Result<AccessPath> {
        let len = width.bytes() as u64;
        let path = AccessPath::of(&self.mapped, self.slow_path(), offset, len);
        if self.via == Via::Mmap && path != AccessPath::Mmap && self.check_span(offset, len).is_ok() {
            return Err(Error::NotMmapable {
                addr: self.bar.address(),
                region: self.bar.index(),
                reason: "the access lies outside its mmapable areas (use --via auto or syscall)",
            });
        }
        Ok(path)
    }

    /// The path the access just made took: straight to the mapping if the
    /// hook saw nothing since `before`, else through the fault handler (the
    /// pointer) or pread/pwrite (typed accesses).
    fn taken(&self, before: u64) -> AccessPath {
        match (self.trapped.load(Ordering::Relaxed) > before, self.shadow) {
            (false, _) => AccessPath::Mmap,
            (true, Some(_)) => AccessPath::Fault,
            (true, None) => AccessPath::Syscall,
        }
    }

    /// Why the fault handler refused the last access the hook saw, if it
    /// did; forgets it.
    fn take_refusal(&self) -> Option<Refusal> {
        REFUSALS[usize::from(self.refused.swap(0, Ordering::Relaxed))]
    }

    /// One read of `width` at `offset`, traced to stderr if `trace`.
    pub fn read(&self, offset: u64, width: Width, trace: bool) -> Result<u64> {
        self.path(offset, width)?;
        let before = self.trapped.load(Ordering::Relaxed);
        self.take_refusal();
        let value = match self.shadow {
            Some(base) => {
                self.bar.check_access(offset, width.bytes(), AccessKind::Read)?;
                // SAFETY: `base` spans the whole region while `self.bar` lives, and
                // `Region::check_access` put `offset..offset + width` inside it, aligned.
                unsafe { load(base.add(offset as usize), width) }
            }
            None => self.bar.read_width(offset, width.bytes())?,
        };
        let path = self.taken(before);
        let refused = self.take_refusal();
        if trace {
            eprintln!(
                "{}",
                format::trace_line("read", self.bar.index(), offset, width, value, path, refused)
            );
        }
        Ok(value)
    }

    /// One write of `width` at `offset`, traced to stderr if `trace`.
    pub fn write(&self, offset: u64, width: Width, value: u64, trace: bool) -> Result<()> {
        self.path(offset, width)?;
        let before = self.trapped.load(Ordering::Relaxed);
        self.take_refusal();
        match self.shadow {
            Some(base) => {
                self.bar.check_access(offset, width.bytes(), AccessKind::Write)?;
                if width.bits() < 64 && value >> width.bits() != 0 {
                    return Err(Error::ValueTooWide {
                        addr: self.bar.address(),
                        region: self.bar.index(),
                        value,
                        width: width.bytes(),
                    });
                }
                // SAFETY: as in `read`.
                unsafe { store(base.add(offset as usize), width, value) }
            }
            None => self.bar.write_width(offset, width.bytes(), value)?,
        }
        let path = self.taken(before);
        let refused = self.take_refusal();
        if trace {
            eprintln!(
                "{}",
                format::trace_line("write", self.bar.index(), offset, width, value, path, refused)
            );
        }
        Ok(())
    }
}

/// One little-endian load of `width` at `ptr`, zero-extended: one pinned
/// `mov` ([`barmap::mmio::read`]), reaching the device on a mapped page and
/// emulated by barmap's fault handler on a trapped one.
///
/// # Safety
/// `ptr` must point into a live region's range, with `width` bytes readable
/// from it, aligned to `width`.
unsafe fn load(ptr: *const u8, width: Width) -> u64 {
    // SAFETY: guaranteed by the caller, for each width.
    unsafe {
        match width.bytes() {
            1 => u64::from(mmio::read(ptr)),
            2 => u64::from(mmio::read(ptr.cast::<u16>())),
            4 => u64::from(mmio::read(ptr.cast::<u32>())),
            _ => mmio::read(ptr.cast::<u64>()),
        }
    }
}

/// One little-endian store of the low `width` bits of `value` at `ptr`, one
/// pinned `mov` ([`barmap::mmio::write`]).
///
/// # Safety
/// As for [`load`], with the bytes writable.
unsafe fn store(ptr: *mut u8, width: Width, value: u64) {
    // SAFETY: as in `load`.
    unsafe {
        match width.bytes() {
            1 => mmio::write(ptr, value as u8),
            2 => mmio::write(ptr.cast::<u16>(), value as u16),
            4 => mmio::write(ptr.cast::<u32>(), value as u32),
            _ => mmio::write(ptr.cast::<u64>(), value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{load, store};
    use crate::parse;

    #[test]
    fn raw_accesses_have_the_width_and_little_endian_order() {
        let mut buf = [0u64; 2];
        let base = buf.as_mut_ptr().cast::<u8>();
        let w = |bits: &str| parse::width(bits).unwrap();
        // SAFETY: every access below is inside `buf` (16 bytes) and aligned to its width.
        unsafe {
            store(base, w("64"), 0x1122_3344_5566_7788);
            assert_eq!(load(base, w("8")), 0x88);
            assert_eq!(load(base.add(1), w("8")), 0x77);
            assert_eq!(load(base.add(2), w("16")), 0x5566);
            assert_eq!(load(base.add(4), w("32")), 0x1122_3344);
            store(base.add(8), w("8"), 0xaa);
            store(base.add(10), w("16"), 0xbbcc);
            store(base.add(12), w("32"), 0xdead_beef);
            assert_eq!(load(base.add(8), w("64")), 0xdead_beef_bbcc_00aa);
        }
        assert_eq!(
            buf[1].to_le_bytes(),
            [0xaa, 0, 0xcc, 0xbb, 0xef, 0xbe, 0xad, 0xde]
        );
    }
}
