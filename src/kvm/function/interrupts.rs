//! The function's interrupts into the guest: INTx through a resampled
//! irqfd, or MSI/MSI-X vectors enabled on the device as the guest enables
//! them and routed to the messages it programs.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_INTX_IRQ_INDEX,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::msix::VectorState;
use crate::error::{Error, Result};
use crate::kvm::vm::kvm_error;
use crate::kvm::{GuestInterrupt, MsiMessage, Vm};
use crate::{Device, Interrupts, IrqIndex};

/// INTx into the guest with no VMM round trip: the device's INTx eventfd is
/// a KVM irqfd on the VMM's GSI for the function's pin, and its resamplefd
/// (signalled when the guest's EOI ends the level) is VFIO's INTx unmask
/// eventfd, so the kernel re-arms the automasked interrupt itself.
pub(super) struct Intx {
    vm: Vm,
    gsi: u32,
    trigger: EventFd,
    /// VFIO's INTx unmask, signalled by KVM: held as long as the irqfd is registered.
    _resample: EventFd,
    /// Held for the kernel's eventfds; disables INTx when dropped (after the irqfd goes).
    _set: Interrupts,
}

impl Intx {
    pub(super) fn new(vm: &Vm, device: &Device, gsi: u32) -> Result<Intx> {
        let addr = device.address();
        let set = device.enable_intx()?;
        let trigger = dup_eventfd(set.vector(0)?)?;
        let vfio = |step| {
            move |e: std::io::Error| Error::Vfio {
                addr,
                step,
                source: Box::new(e),
            }
        };
        let resample = EventFd::new(EFD_NONBLOCK).map_err(vfio("create a resample eventfd"))?;
        device
            .set_irqs(
                VFIO_PCI_INTX_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
                0,
                1,
                &[resample.as_raw_fd()],
            )
            .map_err(vfio("make an eventfd the INTx unmask"))?;
        vm.fd()
            .register_irqfd_with_resample(&trigger, &resample, gsi)
            .map_err(|e| kvm_error(addr, "register a resampled irqfd for INTx", e))?;
        Ok(Intx {
            vm: vm.clone(),
            gsi,
            trigger,
            _resample: resample,
            _set: set,
        })
    }
}

impl Intx {
    /// The GSI INTx is delivered on.
    pub(super) fn gsi(&self) -> u32 {
        self.gsi
    }
}

impl Drop for Intx {
    fn drop(&mut self) {
        if let Err(e) = self.vm.fd().unregister_irqfd(&self.trigger, self.gsi) {
            log::error!("unregistering the INTx irqfd of GSI {}: {e}", self.gsi);
        }
    }
}

/// A descriptor of a vector's eventfd, owned.
fn dup_eventfd(vector: &crate::Vector) -> Result<EventFd> {
    let owned = vector.as_fd().try_clone_to_owned().map_err(|e| Error::Vfio {
        addr: vector.device().address(),
        step: "duplicate an interrupt eventfd",
        source: Box::new(e),
    })?;
    // SAFETY: `owned` is a descriptor of the vector's eventfd that we own and hand over whole.
    Ok(unsafe { EventFd::from_raw_fd(owned.into_raw_fd()) })
}

/// The MSI or MSI-X vectors enabled on the device, each routed while the
/// guest has it unmasked.
pub(super) struct Vectors {
    set: Interrupts,
    routes: Vec<Option<(GuestInterrupt, MsiMessage)>>,
}

impl Vectors {
    /// Enables `n` vectors of `index` on the device.
    pub(super) fn new(device: &Device, index: IrqIndex, n: u32) -> Result<Vectors> {
        let set = device.enable_irqs(index, n)?;
        Ok(Vectors {
            routes: (0..set.len()).map(|_| None).collect(),
            set,
        })
    }

    /// How many vectors are enabled on the device.
    pub(super) fn len(&self) -> u32 {
        self.set.len() as u32
    }

    /// Enables more vectors, up to `total`, where the kernel allows (MSI-X, not NORESIZE).
    pub(super) fn grow(&mut self, total: u32) -> Result<()> {
        self.set.grow(total)?;
        self.routes.resize_with(self.set.len(), || None);
        Ok(())
    }

    /// Whether the kernel lets the set grow.
    pub(super) fn can_grow(&self) -> bool {
        !self.set.info().flags.noresize()
    }

    /// The most vectors the device has of this index.
    pub(super) fn capacity(&self) -> u32 {
        self.set.info().count
    }

    /// Makes vector `n` do what `state` says: routed to its message, or
    /// unrouted while masked or off. `pending` says that it fired while
    /// masked: it is then delivered once, now that it is live.
    pub(super) fn apply(&mut self, vm: &Vm, n: u32, state: VectorState, pending: bool) -> Result<()> {
        let Some(slot) = self.routes.get_mut(n as usize) else {
            return Ok(());
        };
        match state {
            VectorState::Live(message) => {
                match slot {
                    Some((_, current)) if *current == message => {}
                    Some((route, current)) => {
                        route.update(message)?;
                        *current = message;
                    }
                    None => {
                        let route = vm.route_msi(self.set.vector(n)?, message)?;
                        *slot = Some((route, message));
                    }
                }
                if pending {
                    if let Some((route, _)) = slot {
                        route.signal()?;
                    }
                }
            }
            VectorState::Masked | VectorState::Off => *slot = None,
        }
        Ok(())
    }

    /// Whether vector `n`, unrouted, fired since the last look (reads its eventfd).
    pub(super) fn fired(&self, n: u32) -> Result<bool> {
        if self.routes.get(n as usize).is_none_or(|r| r.is_some()) {
            return Ok(false);
        }
        Ok(self.set.vector(n)?.try_wait()?.is_some())
    }

    /// The GSI vector `n` is routed on, if it is.
    pub(super) fn gsi(&self, n: u32) -> Option<u32> {
        self.routes.get(n as usize)?.as_ref().map(|(r, _)| r.gsi())
    }
}

/// Which interrupt the function delivers.
#[derive(Default)]
pub(super) enum Mode {
    /// None (no INTx GSI given, or the device has none).
    #[default]
    None,
    Intx(Intx),
    Msi(Vectors),
    Msix(Vectors),
}
