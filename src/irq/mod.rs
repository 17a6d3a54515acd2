//! Interrupts: what a device offers (`VFIO_DEVICE_GET_IRQ_INFO`), enabling
//! INTx, MSI or MSI-X vectors and the release request with one eventfd per
//! vector (`VFIO_DEVICE_SET_IRQS`), and waiting on them.
//!
//! [`Device::enable_msi`](crate::Device::enable_msi) and its siblings return
//! an [`Interrupts`] set that owns its vectors and disables the index when
//! dropped. Each [`Vector`] waits with a timeout, polls without blocking, and
//! is a file descriptor ([`AsFd`](std::os::fd::AsFd)) for poll, epoll, mio or
//! tokio.
//!
//! ```no_run
//! use std::time::Duration;
//! use barmap::Device;
//!
//! let edu = Device::open("0000:00:02.0".parse()?)?;
//! let bar0 = edu.bar(0)?;
//! let msi = edu.enable_msi(1)?;
//! bar0.write::<u32>(0x20, 0x80)?; // raise an interrupt when the factorial is done
//! bar0.write::<u32>(0x08, 10)?;
//! let count = msi.vector(0)?.wait(Duration::from_secs(1))?;
//! assert_eq!(bar0.read::<u32>(0x08)?, 3_628_800);
//! bar0.write::<u32>(0x64, bar0.read::<u32>(0x24)?); // acknowledge
//! # let _ = count;
//! # Ok::<(), barmap::Error>(())
//! ```

mod info;
mod set;
mod vector;

use std::sync::Mutex;

pub use info::{IrqFlags, IrqIndex, IrqInfo};
pub use set::Interrupts;
pub use vector::{wait_any, Vector};

/// Which interrupt indices of one device are enabled: INTx, MSI and MSI-X
/// exclude each other (the kernel drives one of them at a time); ERR and REQ
/// stand alone. Each index can be enabled once.
#[derive(Debug, Default)]
pub(crate) struct IrqState {
    enabled: Mutex<Vec<IrqIndex>>,
}

impl IrqState {
    /// Records `index` as enabled, or returns the enabled index that excludes it.
    fn claim(&self, index: IrqIndex) -> std::result::Result<(), IrqIndex> {
        let mut enabled = self.enabled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(active) = enabled
            .iter()
            .find(|e| **e == index || (e.is_trigger() && index.is_trigger()))
        {
            return Err(*active);
        }
        enabled.push(index);
        Ok(())
    }

    /// Records `index` as disabled.
    fn release(&self, index: IrqIndex) {
        self.enabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|e| *e != index);
    }
}
