//! One interrupt vector: its eventfd, waiting on it, masking it.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_NONE,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{IrqFlags, IrqIndex};
use crate::error::{Error, Result};
use crate::Device;

/// One enabled interrupt vector, signalled through an eventfd.
///
/// It belongs to an [`Interrupts`](super::Interrupts) set, which disables it
/// when dropped. The eventfd counts interrupts: [`Vector::wait`] and
/// [`Vector::try_wait`] return how many arrived since the last wait.
///
/// **INTx** is automasked: the kernel masks the line when it fires, until it
/// is unmasked. barmap unmasks it at the start of the next wait (by then the
/// driver has acknowledged the device, so a level-triggered line that is
/// still asserted does not fire again at once), or when the driver calls
/// [`Vector::unmask`] itself. After [`Vector::mask`], waits leave the line
/// masked until [`Vector::unmask`].
///
/// A timeout too large to be added to the clock (such as [`Duration::MAX`])
/// waits without a deadline.
pub struct Vector {
    device: Device,
    index: IrqIndex,
    number: u32,
    flags: IrqFlags,
    eventfd: EventFd,
    /// An automasked interrupt was consumed and the kernel keeps it masked.
    masked_by_kernel: AtomicBool,
    /// [`Vector::mask`] was called and no [`Vector::unmask`] since: waits
    /// must not unmask.
    masked_by_caller: AtomicBool,
}

impl fmt::Debug for Vector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vector")
            .field("addr", &self.device.address())
            .field("index", &self.index)
            .field("number", &self.number)
            .field("eventfd", &self.eventfd.as_raw_fd())
            .finish()
    }
}

impl Vector {
    /// A vector with a fresh non-blocking eventfd.
    pub(super) fn new(device: &Device, index: IrqIndex, number: u32, flags: IrqFlags) -> Result<Vector> {
        let eventfd = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Vfio {
            addr: device.address(),
            step: "create an interrupt eventfd",
            source: Box::new(e),
        })?;
        Ok(Vector {
            device: device.clone(),
            index,
            number,
            flags,
            eventfd,
            masked_by_kernel: AtomicBool::new(false),
            masked_by_caller: AtomicBool::new(false),
        })
    }

    /// The device the vector belongs to (for barmap::kvm's errors).
    #[cfg(feature = "kvm")]
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// The interrupt index.
    pub fn index(&self) -> IrqIndex {
        self.index
    }

    /// The vector's number in its index.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Waits up to `timeout` for the vector to fire and returns how many
    /// interrupts arrived since the last wait (at least 1);
    /// [`Error::IrqTimeout`] if none did. A timeout past what the clock can
    /// hold ([`Duration::MAX`]) waits until the vector fires.
    pub fn wait(&self, timeout: Duration) -> Result<u64> {
        wait_any(&[self], timeout).map(|(_, count)| count)
    }

    /// The number of interrupts that arrived since the last wait, without
    /// blocking: `None` if there were none.
    pub fn try_wait(&self) -> Result<Option<u64>> {
        self.rearm()?;
        self.take()
    }

    /// Masks the vector: it fires no more until unmasked (the kernel latches
    /// one that arrives meanwhile), and waits do not unmask it.
    /// [`Error::IrqNotMaskable`] unless the kernel reports the index
    /// maskable: vfio-pci masks INTx only.
    pub fn mask(&self) -> Result<()> {
        self.check_maskable()?;
        self.masked_by_caller.store(true, Ordering::Release);
        self.device
            .set_irqs(
                self.index.raw(),
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
                self.number,
                1,
                &[],
            )
            .map_err(|e| self.error("mask an interrupt", e))
    }

    /// Unmasks the vector (after [`Vector::mask`], or after an automasked
    /// interrupt once the device is acknowledged). [`Error::IrqNotMaskable`]
    /// unless the kernel reports the index maskable.
    pub fn unmask(&self) -> Result<()> {
        self.check_maskable()?;
        self.masked_by_caller.store(false, Ordering::Release);
        self.masked_by_kernel.store(false, Ordering::Release);
        self.do_unmask()
    }

    fn check_maskable(&self) -> Result<()> {
        if self.flags.maskable() {
            Ok(())
        } else {
            Err(Error::IrqNotMaskable {
                addr: self.device.address(),
                index: self.index,
            })
        }
    }

    /// Unmasks the vector in the kernel.
    fn do_unmask(&self) -> Result<()> {
        self.device
            .set_irqs(
                self.index.raw(),
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
                self.number,
                1,
                &[],
            )
            .map_err(|e| self.error("unmask an interrupt", e))
    }

    /// Unmasks an automasked vector whose last interrupt was consumed,
    /// unless the caller masked it.
    fn rearm(&self) -> Result<()> {
        if self.flags.automasked()
            && !self.masked_by_caller.load(Ordering::Acquire)
            && self.masked_by_kernel.swap(false, Ordering::AcqRel)
        {
            self.do_unmask()?;
        }
        Ok(())
    }

    /// Reads the eventfd's count without blocking.
    fn take(&self) -> Result<Option<u64>> {
        match self.eventfd.read() {
            Ok(count) => {
                if self.flags.automasked() {
                    self.masked_by_kernel.store(true, Ordering::Release);
                }
                Ok(Some(count))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(self.error("read an interrupt eventfd", e)),
        }
    }

    fn error(&self, step: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Vfio {
            addr: self.device.address(),
            step,
            source: Box::new(source),
        }
    }
}

impl AsFd for Vector {
    /// The eventfd: readable when the vector has fired. Reading it yourself
    /// consumes the count (and, for INTx, leaves the unmask to you).
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self` and stays open for the borrow.
        unsafe { BorrowedFd::borrow_raw(self.eventfd.as_raw_fd()) }
    }
}

impl AsRawFd for Vector {
    /// The eventfd, as [`AsFd::as_fd`].
    fn as_raw_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }
}

/// Waits up to `timeout` until any of `vectors` fires; returns its position
/// in `vectors` and its count. When several have fired, the first in the
/// slice wins; the others keep their counts for the next wait.
/// [`Error::IrqTimeout`] (naming the first vector) if none fires, and
/// [`Error::IrqNoVectors`] at once if `vectors` is empty (nothing could ever
/// fire). A timeout past what the clock can hold ([`Duration::MAX`]) waits
/// without a deadline.
///
/// ```no_run
/// use std::time::Duration;
/// let nvme = barmap::Device::open("0000:00:04.0".parse()?)?;
/// let msix = nvme.enable_msix(2)?;
/// let release = nvme.enable_req()?;
/// let (which, _count) =
///     barmap::irq::wait_any(&[msix.vector(0)?, msix.vector(1)?, release.vector(0)?], Duration::from_secs(1))?;
/// if which == 2 {
///     drop((msix, release, nvme)); // someone wants the device back
/// }
/// # Ok::<(), barmap::Error>(())
/// ```
pub fn wait_any(vectors: &[&Vector], timeout: Duration) -> Result<(usize, u64)> {
    let first = vectors.first().ok_or(Error::IrqNoVectors)?;
    for vector in vectors {
        vector.rearm()?;
    }
    let deadline = deadline(Instant::now(), timeout);
    let mut fds: Vec<libc::pollfd> = vectors
        .iter()
        .map(|v| libc::pollfd {
            fd: v.eventfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        for (at, vector) in vectors.iter().enumerate() {
            if let Some(count) = vector.take()? {
                return Ok((at, count));
            }
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|left| left.is_zero()) {
            return Err(Error::IrqTimeout {
                addr: first.device.address(),
                index: first.index,
                vector: first.number,
                timeout,
            });
        }
        match poll(&mut fds, left) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(first.error("poll interrupt eventfds", e)),
        }
    }
}

/// When a wait of `timeout` from `now` ends: `None` (no deadline) if the
/// clock cannot hold that instant.
fn deadline(now: Instant, timeout: Duration) -> Option<Instant> {
    now.checked_add(timeout)
}

/// `ppoll` on `fds` for at most `timeout`, or until one is ready if `None`
/// (no signal mask change).
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|timeout| libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |ts| ts as *const libc::timespec);
    // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfds and
    // `ts_ptr` null (no timeout) or a valid timespec, both live for the call;
    // a null sigmask is allowed.
    let ret = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_past_the_clock_has_no_deadline() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::MAX), None);
        assert_eq!(deadline(now, Duration::from_secs(u64::MAX)), None);
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            Some(now + Duration::from_secs(1))
        );
        assert_eq!(deadline(now, Duration::ZERO), Some(now));
    }

    #[test]
    fn poll_without_a_deadline_returns_when_a_descriptor_is_ready() {
        let ready = EventFd::new(EFD_NONBLOCK).unwrap();
        ready.write(1).unwrap();
        let mut fds = [libc::pollfd {
            fd: ready.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        poll(&mut fds, None).unwrap();
        assert_eq!(fds[0].revents & libc::POLLIN, libc::POLLIN);
    }
}
