//! Running code in a forked child that gave up one capability, and reading
//! back what it reports: the kernel's refusals to a process without
//! `CAP_SYS_RAWIO` or `CAP_SYS_ADMIN`, tested while the test process keeps
//! them. Shared by the device tests and the library's own unit tests.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

/// `CAP_SYS_RAWIO`: what the kernel asks of a no-IOMMU group's opener.
pub const CAP_SYS_RAWIO: u32 = 17;
/// `CAP_SYS_ADMIN`: what pagemap asks before it shows page frames.
pub const CAP_SYS_ADMIN: u32 = 21;

/// `_LINUX_CAPABILITY_VERSION_3`: two data structs, 64 capabilities.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// One of the two `struct __user_cap_data_struct` of version 3.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `struct __user_cap_header_struct`, naming this process.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

fn header() -> CapHeader {
    CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    }
}

/// This process's capability sets, or the errno of capget.
fn capabilities() -> std::io::Result<[CapData; 2]> {
    let mut data = [CapData::default(); 2];
    let mut header = header();
    // SAFETY: capget writes one header and two data structs of version 3, which both are.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) };
    if ret == 0 {
        Ok(data)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether capability `cap` (one of the low 32) is in this process's effective set.
pub fn has(cap: u32) -> bool {
    let data = capabilities().expect("capget");
    data[0].effective & (1 << cap) != 0
}

/// Drops capability `cap` from this process's effective and permitted sets;
/// whether it is gone.
fn drop_capability(cap: u32) -> bool {
    let Ok(mut data) = capabilities() else {
        return false;
    };
    data[0].effective &= !(1 << cap);
    data[0].permitted &= !(1 << cap);
    let mut header = header();
    // SAFETY: capset reads one header and two data structs of version 3.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    ret == 0 && !has(cap)
}

/// Runs `child` in a forked child that dropped capability `cap`, and returns
/// the report it wrote to a pipe: "capset failed" if it could not drop the
/// capability, and nothing if it ran nothing (which the caller's assertion
/// on the report then rejects). Panics unless the child exited with 0.
///
/// Call it only while no other thread of the process holds a lock that
/// `child` takes: the tests that use it run one at a time or touch only
/// fork-safe state (glibc's malloc, files, mappings).
pub fn report_without(cap: u32, child: impl FnOnce() -> String) -> String {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [read_end, write_end] = fds;
    // SAFETY: the child drops a capability, runs `child` (under the lock
    // rule above), writes its report and leaves with _exit, running no
    // destructors of the parent's state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let report = if drop_capability(cap) {
            child()
        } else {
            "capset failed".to_string()
        };
        // SAFETY: the report's bytes are valid for its length; _exit ends the child at once.
        unsafe {
            libc::write(write_end, report.as_ptr().cast(), report.len());
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end is its own to close.
    unsafe { libc::close(write_end) };
    // SAFETY: the read end is this process's and nothing else owns it.
    let read_end = unsafe { OwnedFd::from_raw_fd(read_end) };
    let mut report = String::new();
    std::fs::File::from(read_end).read_to_string(&mut report).unwrap();
    let mut status = 0;
    // SAFETY: `pid` is this process's child; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    report
}
