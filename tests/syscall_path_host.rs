//! The typed syscall path over a descriptor, on any host: a region built with
//! `Region::fd_builder` over a memfd takes the same path as a VFIO device's
//! unmapped region (one `pread`/`pwrite` per access on the descriptor), so
//! its checks, errors and routing can be tested without a device.

mod common;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use barmap::shadow::Access;
use barmap::{Error, FdRegion, PciAddress, Region, RegionBuilder, RegionFlags, RegionIndex, SparseArea};
use common::emulated::{memfd, PAGE};

const READ: u32 = 1;
const WRITE: u32 = 2;

fn addr() -> PciAddress {
    "0000:ee:02.0".parse().unwrap()
}

fn bar1() -> RegionIndex {
    RegionIndex::bar(1).unwrap()
}

/// A memfd of `len` bytes, byte i holding i * 7 + 3 (mod 256).
fn patterned(len: u64) -> Arc<OwnedFd> {
    let fd = memfd(len);
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    pwrite(&fd, 0, &bytes);
    fd
}

fn pwrite(fd: &OwnedFd, pos: u64, data: &[u8]) {
    // SAFETY: `data` is readable for its length during the call.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), pos as i64) };
    assert_eq!(n, data.len() as isize);
}

fn pread(fd: &OwnedFd, pos: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` is writable for its length during the call.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, pos as i64) };
    assert_eq!(n, len as isize);
    buf
}

fn le(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

/// BAR1: `size` bytes at `file_offset` in `fd`, with `flags`, nothing mapped.
fn over(fd: &Arc<OwnedFd>, file_offset: u64, size: u64, flags: u32) -> RegionBuilder<'static> {
    Region::fd_builder(addr(), bar1(), FdRegion::new(fd.clone(), file_offset, size))
        .flags(RegionFlags::from_bits(flags))
}

#[test]
fn reads_and_writes_are_one_pread_or_pwrite_at_the_file_position() {
    // The region starts 0x100 into the file and is 0x13 bytes long: its last
    // aligned word is at 0x8, and a byte at 0x12 is its last access.
    let fd = patterned(0x200);
    let region = over(&fd, 0x100, 0x13, READ | WRITE).build().unwrap();
    assert!(region.mapped_ranges().is_empty());
    for (offset, width) in [
        (0u64, 1usize),
        (0x12, 1),
        (2, 2),
        (0x10, 2),
        (4, 4),
        (0xc, 4),
        (0, 8),
        (8, 8),
    ] {
        let want = le(&pread(&fd, 0x100 + offset, width));
        assert_eq!(
            region.read_width(offset, width).unwrap(),
            want,
            "{width} at {offset:#x}"
        );
    }
    region.write::<u8>(0x12, 0xa5).unwrap();
    region.write::<u16>(0x10, 0x1122).unwrap();
    region.write::<u32>(0xc, 0x3344_5566).unwrap();
    region.write::<u64>(0, 0x0102_0304_0506_0708).unwrap();
    assert_eq!(pread(&fd, 0x100, 8), 0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(pread(&fd, 0x10c, 4), 0x3344_5566u32.to_le_bytes());
    assert_eq!(pread(&fd, 0x110, 3), [0x22, 0x11, 0xa5]);
    assert_eq!(region.read::<u16>(0x10).unwrap(), 0x1122);
    let after: Vec<u8> = (0x113..0x120u64).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(
        pread(&fd, 0x113, 0xd),
        after,
        "nothing written past the region's end"
    );
    let before: Vec<u8> = (0xf0..0x100u64).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(pread(&fd, 0xf0, 0x10), before, "nothing written before its start");
}

#[test]
fn refused_accesses_name_the_region_and_leave_the_file_alone() {
    let fd = patterned(0x40);
    let region = over(&fd, 0, 0x13, READ | WRITE).build().unwrap();
    let out_of_range = [
        (0x13u64, 1usize),
        (0x12, 2),
        (0x10, 4),
        (0x10, 8),
        (u64::MAX, 1),
        (u64::MAX - 7, 8),
    ];
    for (offset, width) in out_of_range {
        let err = region.read_width(offset, width).unwrap_err();
        assert!(
            matches!(err, Error::OutOfRange { addr: a, region: r, offset: o, len, size: 0x13 }
                if a == addr() && r == bar1() && o == offset && len == width as u64),
            "read {width} at {offset:#x}: {err:?}"
        );
        let err = region.write_width(offset, width, 0).unwrap_err();
        assert!(
            matches!(err, Error::OutOfRange { .. }),
            "write {width} at {offset:#x}: {err:?}"
        );
    }
    for (offset, width) in [(1u64, 2usize), (2, 4), (4, 8), (0x11, 2)] {
        let err = region.read_width(offset, width).unwrap_err();
        assert!(
            matches!(err, Error::Misaligned { addr: a, offset: o, width: w, .. }
                if a == addr() && o == offset && w == width),
            "read {width} at {offset:#x}: {err:?}"
        );
        let err = region.write_width(offset, width, 0).unwrap_err();
        assert!(
            matches!(err, Error::Misaligned { .. }),
            "write {width} at {offset:#x}: {err:?}"
        );
    }
    let read_only = over(&fd, 0, 0x13, READ).build().unwrap();
    let err = read_only.write::<u32>(0, 0).unwrap_err();
    assert!(
        matches!(err, Error::ReadOnly { addr: a, region: r } if a == addr() && r == bar1()),
        "{err:?}"
    );
    let write_only = over(&fd, 0, 0x13, WRITE).build().unwrap();
    let err = write_only.read::<u32>(0).unwrap_err();
    assert!(
        matches!(err, Error::NotReadable { addr: a, .. } if a == addr()),
        "{err:?}"
    );
    write_only.write::<u32>(0, 0xdead_beef).unwrap();
    assert_eq!(pread(&fd, 0, 4), 0xdead_beefu32.to_le_bytes());
    let rest: Vec<u8> = (4..0x40u64).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(pread(&fd, 4, 0x3c), rest, "only the one allowed write landed");
}

#[test]
fn failed_calls_are_io_errors_with_the_access_and_errno() {
    // A file opened read-only: pwrite fails with EBADF.
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(0x100).unwrap();
    let read_only: OwnedFd = std::fs::File::open(file.path()).unwrap().into();
    let region = Region::fd_builder(addr(), bar1(), FdRegion::new(Arc::new(read_only), 0, 0x100))
        .build()
        .unwrap();
    assert_eq!(region.read::<u32>(0x10).unwrap(), 0);
    let err = region.write::<u32>(0x10, 1).unwrap_err();
    match &err {
        Error::Io {
            addr: a,
            region: r,
            offset: 0x10,
            len: 4,
            source,
        } if *a == addr() && *r == bar1() => assert_eq!(source.raw_os_error(), Some(libc::EBADF)),
        other => panic!("want an Io error at 0x10: {other:?}"),
    }

    // A region reaching past the file's end: the read there comes up short.
    let fd = patterned(0x100);
    let region = over(&fd, 0xf8, 0x10, READ | WRITE).build().unwrap();
    assert_eq!(region.read::<u32>(4).unwrap() as u64, le(&pread(&fd, 0xfc, 4)));
    let err = region.read::<u32>(8).unwrap_err();
    assert!(
        matches!(&err, Error::Io { offset: 8, len: 4, source, .. } if source.kind() == io::ErrorKind::UnexpectedEof),
        "{err:?}"
    );
}

#[test]
fn a_region_past_the_last_file_position_fails_without_touching_the_file() {
    // file_offset + size is not an off_t: no access may wrap to another position.
    let fd = patterned(0x40);
    let region = over(&fd, u64::MAX - 0x10, 0x100, READ | WRITE).build().unwrap();
    for offset in [0u64, 0x20, 0xf8] {
        let err = region.read::<u64>(offset).unwrap_err();
        assert!(
            matches!(&err, Error::Io { offset: o, len: 8, source, .. }
                if *o == offset && source.kind() == io::ErrorKind::InvalidInput),
            "read at {offset:#x}: {err:?}"
        );
        let err = region.write::<u64>(offset, 0).unwrap_err();
        assert!(matches!(&err, Error::Io { .. }), "write at {offset:#x}: {err:?}");
    }
    let pattern: Vec<u8> = (0..0x40u64).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(pread(&fd, 0, 0x40), pattern);
}

#[test]
fn mapped_pages_use_the_mapping_and_the_rest_the_descriptor() {
    // The mapping comes from one memfd, the slow path from another, so each
    // read shows which one served it.
    let mapped = memfd(2 * PAGE);
    pwrite(&mapped, 0, &[0x11; 2 * PAGE as usize]);
    let slow = memfd(2 * PAGE);
    pwrite(&slow, 0, &[0x22; 2 * PAGE as usize]);
    let region = over(&slow, 0, 2 * PAGE, READ | WRITE)
        .map_from(
            &*mapped,
            0,
            &[SparseArea {
                offset: 0,
                size: PAGE,
            }],
        )
        .build()
        .unwrap();
    assert_eq!(region.mapped_ranges().to_vec(), vec![0..PAGE; 1]);
    assert_eq!(region.read::<u32>(0).unwrap(), 0x1111_1111);
    assert_eq!(region.read::<u32>(PAGE - 4).unwrap(), 0x1111_1111);
    assert_eq!(region.read::<u32>(PAGE).unwrap(), 0x2222_2222);
    region.write::<u16>(PAGE + 2, 0xabcd).unwrap();
    region.write::<u16>(2, 0x1234).unwrap();
    assert_eq!(pread(&slow, PAGE, 4), [0x22, 0x22, 0xcd, 0xab]);
    assert_eq!(pread(&mapped, 0, 4), [0x11, 0x11, 0x34, 0x12]);
    assert_eq!(
        pread(&slow, 0, 4),
        [0x22; 4],
        "a mapped write stays off the descriptor"
    );
}

#[test]
fn a_hook_sees_every_typed_access_of_the_descriptor_path() {
    let fd = patterned(0x40);
    let seen = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(AtomicUsize::new(0));
    let (count, at) = (seen.clone(), last.clone());
    // SAFETY: the hook only stores to atomics.
    let builder = unsafe {
        over(&fd, 0, 0x40, READ | WRITE).hook(move |a: &Access| {
            count.fetch_add(1, Ordering::Relaxed);
            at.store(a.offset as usize * 16 + a.width, Ordering::Relaxed);
        })
    };
    let region = builder.build().unwrap();
    assert_eq!(region.read::<u32>(8).unwrap() as u64, le(&pread(&fd, 8, 4)));
    assert_eq!(seen.load(Ordering::Relaxed), 1);
    assert_eq!(last.load(Ordering::Relaxed), 8 * 16 + 4);
    region.write::<u16>(0x12, 7).unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), 2);
    assert_eq!(last.load(Ordering::Relaxed), 0x12 * 16 + 2);
    assert_eq!(pread(&fd, 0x12, 2), [7, 0]);
    assert!(region.read::<u32>(0x40).is_err());
    assert_eq!(
        seen.load(Ordering::Relaxed),
        2,
        "a refused access reaches neither the file nor the hook"
    );
}
