//! The MMIO and port I/O exits of a vCPU, read from its `kvm_run`.
//!
//! kvm-ioctls 0.25's `VcpuExit::IoIn`/`IoOut` hand over the `count * size`
//! bytes of a port I/O exit as one slice and drop `size`: string port I/O
//! (`rep ins`/`rep outs`), which KVM batches into one exit of up to 1,024
//! elements, cannot be told from one wider access. So barmap reads the exit
//! from `kvm_run` itself.

use std::mem::size_of;

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
/// `run_size` bytes (`KVM_GET_VCPU_MMAP_SIZE`). `Err` names what is malformed
/// (the VMM can rewrite `kvm_run` through `VcpuFd::get_kvm_run`).
pub(super) fn read(vcpu: &mut VcpuFd, run_size: usize) -> Result<Exit<'_>, &'static str> {
    let run = vcpu.get_kvm_run();
    match run.exit_reason {
        KVM_EXIT_MMIO => {
            // SAFETY: every member of the union is plain integers and bytes,
            // so any bit pattern is a valid `mmio`; `exit_reason` says it is
            // the member in use. The borrow is of `run`, so of `vcpu`.
            let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
            let len = mmio.len as usize;
            if len > mmio.data.len() {
                return Err("an MMIO exit longer than 8 bytes");
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
                _ => return Err("a port I/O exit with an unknown direction"),
            };
            let size = usize::from(io.size);
            if !matches!(size, 1 | 2 | 4) || io.count == 0 {
                return Err("a port I/O exit with a size other than 1, 2 or 4, or no element");
            }
            let len = size * io.count as usize;
            let start = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
            if start < size_of::<kvm_run>() || start.checked_add(len).is_none_or(|end| end > run_size) {
                return Err("a port I/O exit whose data lies outside the vCPU's kvm_run mapping");
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
