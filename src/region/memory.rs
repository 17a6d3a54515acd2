//! A region backed by memory: a fake device for tests, or a snapshot of a
//! real one (e.g. the bytes of sysfs's `config` file) to read with the same code.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use super::RegionIo;

/// A [`RegionIo`] over a buffer of bytes.
///
/// Reads return what was last written (or the initial bytes); nothing has side
/// effects. Accesses outside the buffer fail with
/// [`io::ErrorKind::InvalidInput`], as they do on [`super::FdRegion`].
///
/// The bytes are atomics rather than a locked `Vec`, so every access is
/// lock-free and allocation-free and meets the async-signal-safety that
/// [`RegionIo`] asks for (a shadow region's fault handler may call it). A
/// multi-byte access is not atomic as a whole: concurrent accesses to the same
/// bytes may interleave byte by byte.
///
/// ```
/// use barmap::region::{MemoryRegion, RegionIo};
/// let region = MemoryRegion::new(vec![0u8; 16]);
/// region.write_at(4, &0xdead_beefu32.to_le_bytes()).unwrap();
/// let mut word = [0u8; 4];
/// region.read_at(4, &mut word).unwrap();
/// assert_eq!(u32::from_le_bytes(word), 0xdead_beef);
/// assert!(region.read_at(14, &mut word).is_err()); // runs past the end
/// assert_eq!(region.bytes()[4..8], [0xef, 0xbe, 0xad, 0xde]);
/// ```
#[derive(Debug, Default)]
pub struct MemoryRegion {
    bytes: Box<[AtomicU8]>,
}

impl MemoryRegion {
    /// A region holding `bytes`; its size is `bytes.len()`.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemoryRegion {
            bytes: bytes.into_iter().map(AtomicU8::new).collect(),
        }
    }

    /// A copy of the region's current contents.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    /// The cells of `offset..offset + len`, or `InvalidInput` if that leaves the region.
    fn range(&self, offset: u64, len: usize) -> io::Result<&[AtomicU8]> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| self.bytes.get(start..start.checked_add(len)?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
    }
}

impl From<Vec<u8>> for MemoryRegion {
    fn from(bytes: Vec<u8>) -> Self {
        MemoryRegion::new(bytes)
    }
}

// SAFETY: every access is a run of relaxed atomic loads or stores on memory the
// region owns: no allocation, no lock; errors are made from a kind.
unsafe impl RegionIo for MemoryRegion {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let cells = self.range(offset, buf.len())?;
        for (out, cell) in buf.iter_mut().zip(cells) {
            *out = cell.load(Ordering::Relaxed);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let cells = self.range(offset, data.len())?;
        for (cell, byte) in cells.iter().zip(data) {
            cell.store(*byte, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(region: &MemoryRegion, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        region.read_at(offset, &mut buf).map(|()| buf)
    }

    #[test]
    fn reads_initial_bytes_and_writes_back() {
        let region = MemoryRegion::new((0..32).collect());
        assert_eq!(region.size(), 32);
        assert_eq!(read(&region, 0, 1).unwrap(), [0]);
        assert_eq!(read(&region, 6, 2).unwrap(), [6, 7]);
        assert_eq!(read(&region, 28, 4).unwrap(), [28, 29, 30, 31]);
        assert_eq!(read(&region, 8, 8).unwrap(), (8..16).collect::<Vec<u8>>());

        region.write_at(3, &[0xAA, 0xBB]).unwrap();
        assert_eq!(read(&region, 2, 4).unwrap(), [2, 0xAA, 0xBB, 5]);
        let mut want: Vec<u8> = (0..32).collect();
        want[3] = 0xAA;
        want[4] = 0xBB;
        assert_eq!(region.bytes(), want);
        assert_eq!(MemoryRegion::from(want.clone()).bytes(), want);
    }

    #[test]
    fn whole_region_and_empty_accesses() {
        let region = MemoryRegion::new(vec![7; 16]);
        assert_eq!(read(&region, 0, 16).unwrap(), vec![7; 16]);
        assert_eq!(
            read(&region, 16, 0).unwrap(),
            vec![],
            "an empty access at the end is in range"
        );
        region.write_at(0, &[1; 16]).unwrap();
        assert_eq!(region.bytes(), vec![1; 16]);
    }

    #[test]
    fn out_of_range_is_invalid_input_and_changes_nothing() {
        let region = MemoryRegion::new(vec![0x55; 16]);
        let cases = [
            (16, 1),
            (15, 2),
            (12, 8),
            (17, 0),
            (u64::MAX, 1),
            (u64::MAX, 0),
            (0, 17),
        ];
        for (offset, len) in cases {
            let err = read(&region, offset, len).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "read {len} at {offset:#x}"
            );
            let err = region.write_at(offset, &vec![0; len]).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "write {len} at {offset:#x}"
            );
        }
        assert_eq!(
            region.bytes(),
            vec![0x55; 16],
            "a refused write must not write part of itself"
        );

        let empty = MemoryRegion::default();
        assert_eq!(empty.size(), 0);
        assert_eq!(
            read(&empty, 0, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn usable_as_a_shared_trait_object() {
        let region = MemoryRegion::new(vec![0; 8]);
        let io: &dyn RegionIo = &region;
        std::thread::scope(|s| {
            s.spawn(|| io.write_at(0, &[1, 2, 3, 4]).unwrap());
            s.spawn(|| io.write_at(4, &[5, 6, 7, 8]).unwrap());
        });
        assert_eq!(region.bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
