//! The one-line diagnostic for a fault barmap cannot serve, formatted
//! without allocating.

use std::fmt::{self, Write as _};

use super::super::Shared;
use super::serve::{Fetched, Unserved};

/// A fixed buffer that formats without allocating.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes the one-line diagnostic for a fault barmap could not serve.
pub(super) fn report(
    shared: &Shared,
    addr: usize,
    rip: u64,
    offset: Option<u64>,
    fetched: &Fetched,
    unserved: &Unserved,
) {
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    let _ = write!(
        line,
        "barmap: cannot emulate access to {addr:#x} in shadow region {}",
        shared.name
    );
    if let Some(offset) = offset {
        let _ = write!(line, " at offset {offset:#x}");
    }
    let _ = write!(line, ": {}", unserved.reason);
    if let Some(errno) = unserved.errno {
        let _ = write!(line, " (errno {errno})");
    }
    let _ = write!(line, "; instruction at {rip:#x}:");
    for b in &fetched.bytes[..fetched.len] {
        let _ = write!(line, " {b:02x}");
    }
    let _ = line.write_str("\n");
    let mut done = 0;
    while done < line.len {
        // SAFETY: writing initialised bytes of a stack buffer to stderr.
        let n = unsafe {
            libc::write(
                libc::STDERR_FILENO,
                line.buf[done..].as_ptr().cast(),
                line.len - done,
            )
        };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
}
