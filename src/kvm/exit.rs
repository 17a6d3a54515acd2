//! The MMIO and port I/O exits of a vCPU, read from its `kvm_run`, and
//! serving their accesses on a region.
//!
//! kvm-ioctls 0.25's `VcpuExit::IoIn`/`IoOut` hand over the `count * size`
//! bytes of a port I/O exit as one slice and drop `size`: string port I/O
//! (`rep ins`/`rep outs`), which KVM batches into one exit of up to 1,024
//! elements, cannot be told from one wider access. So barmap reads the exit
//! from `kvm_run` itself.

use std::mem::size_of;

use crate::error::Result;
use crate::Region;
use kvm_bindings::{kvm_run, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, KVM_EXIT_MMIO};
use kvm_ioctls::VcpuFd;

/// An exit barmap may serve, borrowing its data in `kvm_run`.
#[derive(Debug)]
pub(super) enum Exit<'a> {
    /// `KVM_EXIT_MMIO`: one access of `data.len()` bytes at guest-physical `addr`.
    Mmio {
        addr: u64,
        data: &'a mut [u8],
        write: bool,
    },
    /// `KVM_EXIT_IO`: `data.len() / size` accesses of `size` bytes, all at `port`.
    Io {
        port: u16,
        size: usize,
        data: &'a mut [u8],
        write: bool,
    },
    /// Any other exit.
    Other,
}

/// The exit `vcpu` last returned from `KVM_RUN`, whose `kvm_run` mapping is
/// `run_size` bytes (`KVM_GET_VCPU_MMAP_SIZE`). `Err` is the step of
/// [`Error::Kvm`](crate::Error::Kvm) that a malformed exit fails (the VMM
/// can rewrite `kvm_run` through `VcpuFd::get_kvm_run`).
pub(super) fn read(vcpu: &mut VcpuFd, run_size: usize) -> std::result::Result<Exit<'_>, &'static str> {
    let run = vcpu.get_kvm_run();
    match run.exit_reason {
        KVM_EXIT_MMIO => {
            // SAFETY: every member of the union is plain integers and bytes,
            // so any bit pattern is a valid `mmio`; `exit_reason` says it is
            // the member in use. The borrow is of `run`, so of `vcpu`.
            let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
            let len = mmio.len as usize;
            if len > mmio.data.len() {
                return Err("deliver an MMIO exit of at most 8 bytes");
            }
            Ok(Exit::Mmio {
                addr: mmio.phys_addr,
                write: mmio.is_write != 0,
                data: &mut mmio.data[..len],
            })
        }
        KVM_EXIT_IO => {
            // SAFETY: as above, for the `io` member.
            let io = unsafe { run.__bindgen_anon_1.io };
            let write = match u32::from(io.direction) {
                KVM_EXIT_IO_IN => false,
                KVM_EXIT_IO_OUT => true,
                _ => return Err("deliver a port I/O exit of a known direction"),
            };
            let size = usize::from(io.size);
            if !matches!(size, 1 | 2 | 4) || io.count == 0 {
                return Err("deliver a port I/O exit of 1-, 2- or 4-byte elements");
            }
            let len = size * io.count as usize;
            let start = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
            if start < size_of::<kvm_run>() || start.checked_add(len).is_none_or(|end| end > run_size) {
                return Err("deliver a port I/O exit whose data lies in the vCPU's kvm_run mapping");
            }
            let base = (run as *mut kvm_run).cast::<u8>();
            // SAFETY: kvm-ioctls maps the vCPU's `run_size` bytes
            // (KVM_GET_VCPU_MMAP_SIZE) at `base` and keeps them while `vcpu`
            // lives; `start..start + len` was checked to lie inside them and
            // after the `kvm_run` struct, so the slice overlaps no reference
            // (`run` is not used again). It borrows `vcpu` mutably, as `run` did.
            let data = unsafe { std::slice::from_raw_parts_mut(base.add(start), len) };
            Ok(Exit::Io {
                port: io.port,
                size,
                data,
                write,
            })
        }
        _ => Ok(Exit::Other),
    }
}

/// One access of `size` bytes at `offset` per `size`-byte element of `data`
/// (a read fills the element, a write takes it); the first refused or failed
/// one ends it, the rest of a read then all-ones.
pub(super) fn serve(region: &Region, offset: u64, size: usize, data: &mut [u8], write: bool) -> Result<()> {
    let len = data.len();
    for at in (0..len).step_by(size.max(1)) {
        let element = &mut data[at..(at + size).min(len)];
        let done = if write {
            let mut word = [0u8; 8];
            let len = element.len().min(8);
            word[..len].copy_from_slice(&element[..len]);
            region.write_width(offset, size, u64::from_le_bytes(word))
        } else {
            region.read_width(offset, size).map(|value| {
                let len = element.len().min(8);
                element[..len].copy_from_slice(&value.to_le_bytes()[..len]);
            })
        };
        if let Err(e) = done {
            if !write {
                data[at..].fill(0xff);
            }
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_READ;

    use super::serve;
    use crate::error::Error;
    use crate::region::{MemoryRegion, RegionFlags};
    use crate::{Region, RegionIndex};

    const SIZE: usize = 0x100;

    /// A 256-byte region over memory holding byte i at offset i, counting
    /// its accesses and adding up their widths.
    fn counted(flags: RegionFlags) -> (Region, Arc<MemoryRegion>, Arc<[AtomicUsize; 2]>) {
        let memory = Arc::new(MemoryRegion::new((0..SIZE).map(|i| i as u8).collect()));
        let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let seen = counts.clone();
        let builder = Region::builder(
            "0000:00:04.0".parse().unwrap(),
            RegionIndex::bar(1).unwrap(),
            memory.clone(),
        )
        .flags(flags);
        // SAFETY: the hook only updates atomic counters.
        let region = unsafe {
            builder.hook(move |access| {
                seen[0].fetch_add(1, Ordering::Relaxed);
                seen[1].fetch_add(access.width, Ordering::Relaxed);
            })
        }
        .build()
        .unwrap();
        (region, memory, counts)
    }

    fn taken(counts: &[AtomicUsize; 2]) -> (usize, usize) {
        (
            counts[0].swap(0, Ordering::Relaxed),
            counts[1].swap(0, Ordering::Relaxed),
        )
    }

    #[test]
    fn string_reads_are_one_access_per_element_at_one_offset() {
        let (region, _, counts) = counted(RegionFlags::READ_WRITE);
        for count in [1, 2, 3, 4, 7, 1024] {
            let mut data = vec![0u8; count];
            serve(&region, 0x11, 1, &mut data, false).unwrap();
            assert_eq!(data, vec![0x11; count], "rep insb, count {count}");
            assert_eq!(taken(&counts), (count, count));
        }
        let mut data = vec![0u8; 6];
        serve(&region, 0x22, 2, &mut data, false).unwrap();
        assert_eq!(data, [0x22, 0x23, 0x22, 0x23, 0x22, 0x23], "rep insw, count 3");
        assert_eq!(taken(&counts), (3, 6));
        let mut data = vec![0u8; 8];
        serve(&region, 0x40, 4, &mut data, false).unwrap();
        assert_eq!(
            data,
            [0x40, 0x41, 0x42, 0x43, 0x40, 0x41, 0x42, 0x43],
            "rep insd, count 2"
        );
        assert_eq!(taken(&counts), (2, 8));
        // At the BAR's last byte, 16 elements are 16 reads of that byte.
        region.write::<u8>(SIZE as u64 - 1, 0x3c).unwrap();
        taken(&counts);
        let mut data = vec![0u8; 16];
        serve(&region, SIZE as u64 - 1, 1, &mut data, false).unwrap();
        assert_eq!(data, [0x3c; 16]);
        assert_eq!(taken(&counts), (16, 16));
    }

    #[test]
    fn string_writes_are_one_access_per_element_and_the_last_one_stays() {
        let (region, memory, counts) = counted(RegionFlags::READ_WRITE);
        let mut data = [0xa1, 0xa2, 0xa3, 0xa4];
        serve(&region, 0x80, 1, &mut data, true).unwrap();
        assert_eq!(taken(&counts), (4, 4));
        let mut data = [0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6];
        serve(&region, 0x90, 2, &mut data, true).unwrap();
        assert_eq!(taken(&counts), (3, 6));
        let bytes = memory.bytes();
        assert_eq!(bytes[0x80..0x84], [0xa4, 0x81, 0x82, 0x83], "rep outsb, count 4");
        assert_eq!(bytes[0x90..0x94], [0xb5, 0xb6, 0x92, 0x93], "rep outsw, count 3");
    }

    #[test]
    fn a_refused_element_ends_the_exit_with_all_ones() {
        let (region, _, counts) = counted(RegionFlags::READ_WRITE);
        let mut data = [0u8; 4];
        assert!(matches!(
            serve(&region, 0x21, 2, &mut data, false),
            Err(Error::Misaligned {
                offset: 0x21,
                width: 2,
                ..
            })
        ));
        assert_eq!(data, [0xff; 4]);
        assert_eq!(taken(&counts), (0, 0));

        let (region, memory, counts) = counted(RegionFlags::from_bits(VFIO_REGION_INFO_FLAG_READ));
        let mut data = [0x55; 2];
        assert!(matches!(
            serve(&region, 0x10, 1, &mut data, true),
            Err(Error::ReadOnly { .. })
        ));
        assert_eq!(taken(&counts), (0, 0), "a read-only region takes no write");
        assert_eq!(memory.bytes()[0x10], 0x10);
    }
}
