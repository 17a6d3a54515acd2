//! An enabled interrupt index and its vectors.

use std::fmt;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};

use super::{vector::wait_any, IrqIndex, IrqInfo, Vector};
use crate::error::{Error, Result};
use crate::Device;

/// The enabled vectors of one interrupt index of a device.
///
/// Made by [`Device::enable_intx`], [`Device::enable_msi`],
/// [`Device::enable_msix`], [`Device::enable_req`] or [`Device::enable_irqs`].
/// Dropping it disables the index (its eventfds are torn down in the
/// kernel), after which the index can be enabled again. It keeps its device
/// open.
pub struct Interrupts {
    device: Device,
    info: IrqInfo,
    vectors: Vec<Vector>,
    /// Whether the kernel still has the index enabled (false after `disable`).
    enabled: bool,
}

impl fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupts")
            .field("addr", &self.device.address())
            .field("info", &self.info)
            .field("vectors", &self.vectors.len())
            .finish()
    }
}

impl Device {
    /// Enables the INTx interrupt (one automasked vector: see [`Vector`]).
    pub fn enable_intx(&self) -> Result<Interrupts> {
        self.enable_irqs(IrqIndex::Intx, 1)
    }

    /// Enables `n` MSI vectors (vfio-pci rounds the count it gives the device
    /// up to a power of two; only the first `n` signal).
    pub fn enable_msi(&self, n: u32) -> Result<Interrupts> {
        self.enable_irqs(IrqIndex::Msi, n)
    }

    /// Enables `n` MSI-X vectors; [`Interrupts::grow`] adds more later where
    /// the kernel allows it.
    pub fn enable_msix(&self, n: u32) -> Result<Interrupts> {
        self.enable_irqs(IrqIndex::Msix, n)
    }

    /// Enables the release request: its one vector fires when someone asks
    /// vfio-pci to let go of the device (an unbind, a driver change) while it
    /// is open. The unbind waits until the device is closed, so a holder that
    /// sees it should drop every handle on the device (its regions,
    /// interrupts and DMA buffers included).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let edu = barmap::Device::open("0000:00:02.0".parse()?)?;
    /// let release = edu.enable_req()?;
    /// let watcher = std::thread::spawn(move || {
    ///     while release.vector(0).and_then(|v| v.wait(Duration::from_secs(1))).is_err() {}
    ///     drop(edu); // the last handle: the unbind can complete
    /// });
    /// # watcher.join().unwrap();
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn enable_req(&self) -> Result<Interrupts> {
        self.enable_irqs(IrqIndex::Req, 1)
    }

    /// Enables vectors `0..n` of `index`, one eventfd each. For MSI and
    /// MSI-X it turns bus mastering on too: a message is a memory write by
    /// the device, dropped without it.
    ///
    /// Fails with [`Error::NoSuchIrq`] if the device has no such interrupts,
    /// [`Error::IrqVectorOutOfRange`] if it has fewer than `n`
    /// ([`Error::Unsupported`] for `n` = 0),
    /// and [`Error::IrqAlreadyEnabled`] if this index, or another of INTx,
    /// MSI and MSI-X, is enabled. On any failure the index is left disabled.
    pub fn enable_irqs(&self, index: IrqIndex, n: u32) -> Result<Interrupts> {
        let info = self.irq_info(index)?;
        if info.count == 0 {
            return Err(Error::NoSuchIrq {
                addr: self.address(),
                index,
            });
        }
        if n == 0 {
            return Err(Error::Unsupported {
                addr: self.address(),
                what: "enabling 0 interrupt vectors",
                reason: "ask for at least one",
            });
        }
        if n > info.count {
            return Err(Error::IrqVectorOutOfRange {
                addr: self.address(),
                index,
                vector: n - 1,
                count: info.count,
            });
        }
        self.irq_state()
            .claim(index)
            .map_err(|active| Error::IrqAlreadyEnabled {
                addr: self.address(),
                index,
                active,
            })?;
        let enable = || {
            let vectors = (0..n)
                .map(|number| Vector::new(self, index, number, info.flags))
                .collect::<Result<Vec<_>>>()?;
            let fds: Vec<_> = vectors.iter().map(Vector::as_raw_fd).collect();
            self.set_irqs(
                index.raw(),
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                n,
                &fds,
            )
            .map_err(|e| Error::Vfio {
                addr: self.address(),
                step: "enable interrupts",
                source: Box::new(e),
            })?;
            if matches!(index, IrqIndex::Msi | IrqIndex::Msix) {
                // A message is a memory write by the device: without bus
                // mastering it is dropped, silently. Set after the enable,
                // which was seen to leave the bit off (kernel 6.12, QEMU edu).
                if let Err(e) = self.set_bus_master(true) {
                    // The kernel has the index enabled: disable it, or it
                    // would refuse the next enable of another index.
                    if let Err(undo) = disable(self, index) {
                        log::warn!(
                            "{}: disabling {index} after a failed enable: {undo}",
                            self.address()
                        );
                    }
                    return Err(e);
                }
            }
            Ok(vectors)
        };
        match enable() {
            Ok(vectors) => {
                log::debug!("{}: enabled {n} {index} vector(s)", self.address());
                Ok(Interrupts {
                    device: self.clone(),
                    info,
                    vectors,
                    enabled: true,
                })
            }
            Err(e) => {
                self.irq_state().release(index);
                Err(e)
            }
        }
    }
}

impl Interrupts {
    /// The interrupt index.
    pub fn index(&self) -> IrqIndex {
        self.info.index
    }

    /// What the kernel reports for the index.
    pub fn info(&self) -> IrqInfo {
        self.info
    }

    /// How many vectors are enabled.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether no vector is enabled (never true: an enable asks for at least one).
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Vector `n`; [`Error::IrqVectorOutOfRange`] past the enabled ones.
    pub fn vector(&self, n: u32) -> Result<&Vector> {
        self.vectors.get(n as usize).ok_or(Error::IrqVectorOutOfRange {
            addr: self.device.address(),
            index: self.info.index,
            vector: n,
            count: self.vectors.len() as u32,
        })
    }

    /// Every enabled vector, in order.
    pub fn vectors(&self) -> &[Vector] {
        &self.vectors
    }

    /// Waits up to `timeout` for any vector of the set; returns its number
    /// and count ([`Error::IrqTimeout`] if none fires). A timeout past what
    /// the clock can hold ([`Duration::MAX`]) waits until one fires. See
    /// [`wait_any`] to wait on vectors of several sets.
    pub fn wait_any(&self, timeout: Duration) -> Result<(u32, u64)> {
        let vectors: Vec<&Vector> = self.vectors.iter().collect();
        wait_any(&vectors, timeout).map(|(at, count)| (at as u32, count))
    }

    /// Enables more vectors, up to `total`, without disabling the ones that
    /// are enabled: for MSI-X on kernels that allocate vectors dynamically
    /// (v6.5 on, where the index is not `NORESIZE`). Asking for no more than
    /// are enabled does nothing.
    ///
    /// Only the new vectors are set (`start` at the first of them), so the
    /// enabled ones are not rewired.
    ///
    /// Fails with [`Error::Unsupported`] if the kernel reports the index
    /// `NORESIZE` (drop the set and enable it again with more), and
    /// [`Error::IrqVectorOutOfRange`] past the device's count.
    pub fn grow(&mut self, total: u32) -> Result<()> {
        let addr = self.device.address();
        let have = self.vectors.len() as u32;
        if total <= have {
            return Ok(());
        }
        if total > self.info.count {
            return Err(Error::IrqVectorOutOfRange {
                addr,
                index: self.info.index,
                vector: total - 1,
                count: self.info.count,
            });
        }
        if self.info.flags.noresize() {
            return Err(Error::Unsupported {
                addr,
                what: "growing enabled interrupt vectors",
                reason:
                    "the kernel reports the index NORESIZE: disable it and enable it again with more vectors",
            });
        }
        let added = (have..total)
            .map(|number| Vector::new(&self.device, self.info.index, number, self.info.flags))
            .collect::<Result<Vec<_>>>()?;
        let fds: Vec<_> = added.iter().map(|v| v.as_raw_fd()).collect();
        self.device
            .set_irqs(
                self.info.index.raw(),
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                have,
                total - have,
                &fds,
            )
            .map_err(|e| Error::Vfio {
                addr,
                step: "add interrupt vectors",
                source: Box::new(e),
            })?;
        self.vectors.extend(added);
        Ok(())
    }

    /// Disables the index now, returning any error (dropping does the same
    /// and can only log one).
    pub fn disable(mut self) -> Result<()> {
        self.disable_now()
    }

    fn disable_now(&mut self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        self.enabled = false;
        let result = disable(&self.device, self.info.index);
        // Even if the kernel refused, the eventfds are closed with `self`: the
        // index is free to be enabled again (the kernel replaces its triggers).
        self.device.irq_state().release(self.info.index);
        result.map_err(|e| Error::Vfio {
            addr: self.device.address(),
            step: "disable interrupts",
            source: Box::new(e),
        })
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        if let Err(e) = self.disable_now() {
            log::warn!("{e}");
        }
    }
}

/// Tears down every trigger of `index` (`VFIO_IRQ_SET_DATA_NONE` with count 0).
fn disable(device: &Device, index: IrqIndex) -> std::io::Result<()> {
    device.set_irqs(
        index.raw(),
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        0,
        0,
        &[],
    )
}
