//! Interrupt indices and what the kernel says about them.

use std::fmt;

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX,
};

use crate::error::{Error, Result};
use crate::Device;

/// A vfio-pci interrupt index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqIndex {
    /// The legacy, level-triggered pin interrupt (one vector).
    Intx,
    /// Message-signalled interrupts.
    Msi,
    /// MSI-X.
    Msix,
    /// PCIe AER error reporting (only on PCIe devices with AER).
    Err,
    /// The release request: raised when someone asks to unbind the device from
    /// vfio-pci while it is open.
    Req,
}

impl IrqIndex {
    /// Every index, in vfio-pci order.
    pub const ALL: [IrqIndex; 5] = [
        IrqIndex::Intx,
        IrqIndex::Msi,
        IrqIndex::Msix,
        IrqIndex::Err,
        IrqIndex::Req,
    ];

    /// The vfio-pci index number (`VFIO_PCI_*_IRQ_INDEX`).
    pub fn raw(self) -> u32 {
        match self {
            IrqIndex::Intx => VFIO_PCI_INTX_IRQ_INDEX,
            IrqIndex::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqIndex::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
            IrqIndex::Err => VFIO_PCI_ERR_IRQ_INDEX,
            IrqIndex::Req => VFIO_PCI_REQ_IRQ_INDEX,
        }
    }

    /// INTx, MSI or MSI-X: the device's own interrupts, of which the kernel
    /// drives one kind at a time.
    pub fn is_trigger(self) -> bool {
        matches!(self, IrqIndex::Intx | IrqIndex::Msi | IrqIndex::Msix)
    }
}

impl fmt::Display for IrqIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IrqIndex::Intx => "INTx",
            IrqIndex::Msi => "MSI",
            IrqIndex::Msix => "MSI-X",
            IrqIndex::Err => "ERR",
            IrqIndex::Req => "REQ",
        })
    }
}

/// The flags of an interrupt index (`VFIO_IRQ_INFO_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqFlags(u32);

impl IrqFlags {
    /// Wraps the raw flags.
    pub fn from_bits(bits: u32) -> Self {
        IrqFlags(bits)
    }

    /// The raw flags.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Vectors signal through eventfds.
    pub fn eventfd(self) -> bool {
        self.0 & VFIO_IRQ_INFO_EVENTFD != 0
    }

    /// Vectors can be masked and unmasked.
    pub fn maskable(self) -> bool {
        self.0 & VFIO_IRQ_INFO_MASKABLE != 0
    }

    /// The kernel masks the interrupt when it fires; it stays masked until unmasked (INTx).
    pub fn automasked(self) -> bool {
        self.0 & VFIO_IRQ_INFO_AUTOMASKED != 0
    }

    /// The set of enabled vectors cannot grow without disabling it first.
    pub fn noresize(self) -> bool {
        self.0 & VFIO_IRQ_INFO_NORESIZE != 0
    }
}

impl fmt::Display for IrqFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.eventfd(), "eventfd"),
            (self.maskable(), "maskable"),
            (self.automasked(), "automasked"),
            (self.noresize(), "noresize"),
        ];
        let set: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        write!(f, "{:#x}", self.0)?;
        if !set.is_empty() {
            write!(f, " ({})", set.join(", "))?;
        }
        Ok(())
    }
}

/// One interrupt index of a device, as `VFIO_DEVICE_GET_IRQ_INFO` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// The index.
    pub index: IrqIndex,
    /// How many vectors it has (0: the device does not use it).
    pub count: u32,
    /// What the kernel can do with it.
    pub flags: IrqFlags,
}

impl Device {
    /// What the kernel reports for interrupt `index`: its vector count and
    /// flags (`VFIO_DEVICE_GET_IRQ_INFO`). An index the kernel refuses,
    /// such as ERR on a conventional PCI device, is [`Error::NoSuchIrq`]; an
    /// index it reports with count 0 is returned as it is.
    ///
    /// ```no_run
    /// use barmap::{Device, IrqIndex};
    /// let edu = Device::open("0000:00:02.0".parse()?)?;
    /// let intx = edu.irq_info(IrqIndex::Intx)?;
    /// assert!(intx.count == 1 && intx.flags.automasked());
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn irq_info(&self, index: IrqIndex) -> Result<IrqInfo> {
        let irq = self
            .backend()
            .irq_info(index.raw())
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => Error::NoSuchIrq {
                    addr: self.address(),
                    index,
                },
                _ => Error::Vfio {
                    addr: self.address(),
                    step: "get interrupt info",
                    source: Box::new(e),
                },
            })?;
        Ok(IrqInfo {
            index,
            count: irq.count,
            flags: IrqFlags::from_bits(irq.flags),
        })
    }

    /// The info of every index the kernel reports, in index order.
    pub fn irq_infos(&self) -> Vec<IrqInfo> {
        IrqIndex::ALL
            .iter()
            .filter_map(|i| self.irq_info(*i).ok())
            .collect()
    }
}
