//! Device interrupts into the guest: a vector's eventfd as a KVM irqfd on an
//! MSI route.

use std::fmt;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd};

use kvm_bindings::{kvm_irq_routing_entry, KVM_IRQ_ROUTING_MSI};
use vmm_sys_util::eventfd::EventFd;

use super::vm::{kvm_error, Vm};
use crate::error::{Error, Result};
use crate::pci::PciAddress;
use crate::Vector;

/// An MSI or MSI-X message as the guest programs it: the address and data
/// it writes in the device's MSI capability or MSI-X table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// The message address (on x86, `0xfee0_0000` with the destination APIC ID in bits 12-19).
    pub address: u64,
    /// The message data (on x86, the vector in bits 0-7 and the delivery mode above).
    pub data: u32,
}

impl MsiMessage {
    /// The x86 message for a fixed, edge-triggered interrupt of `vector` on
    /// the local APIC with ID `apic_id` (physical destination mode).
    ///
    /// ```
    /// let m = barmap::kvm::MsiMessage::fixed(1, 0x40);
    /// assert_eq!((m.address, m.data), (0xfee0_1000, 0x40));
    /// ```
    pub fn fixed(apic_id: u8, vector: u8) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000 | u64::from(apic_id) << 12,
            data: u32::from(vector),
        }
    }

    fn route(self, gsi: u32) -> kvm_irq_routing_entry {
        let mut entry = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        entry.u.msi.address_lo = self.address as u32;
        entry.u.msi.address_hi = (self.address >> 32) as u32;
        entry.u.msi.data = self.data;
        entry
    }
}

/// A device vector delivered to the guest by KVM: its eventfd is an irqfd
/// on a GSI routed to an MSI message, so an interrupt reaches the guest
/// without the VMM. Dropping it unregisters the irqfd and removes the route.
///
/// The [`Interrupts`](crate::Interrupts) set the vector belongs to must stay
/// enabled meanwhile (the vector fires no more once it is dropped).
pub struct GuestInterrupt {
    vm: Vm,
    addr: PciAddress,
    gsi: u32,
    /// A duplicate of the vector's eventfd: the same eventfd, owned here for
    /// `KVM_IRQFD` and its removal.
    eventfd: EventFd,
}

impl fmt::Debug for GuestInterrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestInterrupt")
            .field("addr", &self.addr)
            .field("gsi", &self.gsi)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Delivers `vector` to the guest as `message`: allocates a GSI, routes it
    /// to the message (`KVM_SET_GSI_ROUTING` with type `KVM_IRQ_ROUTING_MSI`)
    /// and makes the vector's eventfd an irqfd on it (`KVM_IRQFD`). The VM
    /// needs an in-kernel irqchip. For MSI-X, route each vector with the
    /// message of its table entry.
    ///
    /// Errors: [`Error::KvmNoFreeGsi`], [`Error::Kvm`].
    ///
    /// ```no_run
    /// use barmap::kvm::{MsiMessage, Vm};
    /// # let kvm = kvm_ioctls::Kvm::new().unwrap();
    /// # let fd = std::sync::Arc::new(kvm.create_vm().unwrap());
    /// # let vm = Vm::new(&kvm, barmap::kvm::GsiRoutes::new(fd, 24..1024), 1..32);
    /// vm.fd().create_irq_chip().unwrap();
    /// let edu = vm.open_device("0000:00:02.0".parse()?)?;
    /// let msi = edu.enable_msi(1)?;
    /// let irq = vm.route_msi(msi.vector(0)?, MsiMessage::fixed(0, 0x40))?;
    /// // The guest moved the interrupt to vector 0x41:
    /// irq.update(MsiMessage::fixed(0, 0x41))?;
    /// # Ok::<(), barmap::Error>(())
    /// ```
    pub fn route_msi(&self, vector: &Vector, message: MsiMessage) -> Result<GuestInterrupt> {
        let addr = vector.device().address();
        let owned = vector.as_fd().try_clone_to_owned().map_err(|e| Error::Vfio {
            addr,
            step: "duplicate an interrupt eventfd",
            source: Box::new(e),
        })?;
        // SAFETY: `owned` is a descriptor of the vector's eventfd that we own
        // and hand over whole.
        let eventfd = unsafe { EventFd::from_raw_fd(owned.into_raw_fd()) };
        let gsi = self
            .routes()
            .alloc(|gsi| message.route(gsi))
            .ok_or(Error::KvmNoFreeGsi {
                addr,
                limit: self.routes().limit(),
            })?
            .map_err(|e| kvm_error(addr, "set the GSI routing", e))?;
        let interrupt = GuestInterrupt {
            vm: self.clone(),
            addr,
            gsi,
            eventfd,
        };
        // On an error, dropping `interrupt` removes the route again.
        self.fd()
            .register_irqfd(&interrupt.eventfd, gsi)
            .map_err(|e| kvm_error(addr, "register an irqfd", e))?;
        Ok(interrupt)
    }
}

impl GuestInterrupt {
    /// The GSI the vector is routed on.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Fires the vector's interrupt once, as if the device had (a vector
    /// that was pending while masked, delivered on unmask).
    pub(super) fn signal(&self) -> Result<()> {
        self.eventfd.write(1).map_err(|e| Error::Vfio {
            addr: self.addr,
            step: "signal an interrupt eventfd",
            source: Box::new(e),
        })
    }

    /// Routes the vector to `message` instead (the guest reprogrammed the
    /// MSI capability or the MSI-X table entry).
    pub fn update(&self, message: MsiMessage) -> Result<()> {
        self.vm
            .routes()
            .set(message.route(self.gsi))
            .map_err(|e| kvm_error(self.addr, "set the GSI routing", e))
    }
}

impl Drop for GuestInterrupt {
    fn drop(&mut self) {
        // KVM_IRQFD with the deassign flag for an irqfd that was never
        // registered (a failed `route_msi`) fails harmlessly.
        let _ = self.vm.fd().unregister_irqfd(&self.eventfd, self.gsi);
        if let Err(e) = self.vm.routes().free(self.gsi) {
            log::error!("{}", kvm_error(self.addr, "remove a GSI route", e));
        }
    }
}
