//! Device passthrough to a KVM guest (feature `kvm`), on kvm-ioctls and vm-memory.
//!
//! A VMM that passes a device through does four things, each a call here:
//!
//! 1. **BARs into the guest.** [`BarPassthrough::new`] registers each
//!    directly mapped part of a [`Region`](crate::Region) as a KVM memory
//!    slot at a guest-physical address, so the guest reaches it with no exit
//!    at all. What is left (sparse holes, pages trapped with a
//!    [`MapPolicy`](crate::MapPolicy), a whole I/O BAR) exits to the VMM, and
//!    [`BarPassthrough::handle_exit`] serves those `KVM_EXIT_MMIO` and
//!    `KVM_EXIT_IO` exits through the region's slow path and access hook, with
//!    the guest's width (string port I/O element by element). Dropping it removes the slots;
//!    [`BarPassthrough::move_to`] follows a guest that reprograms the BAR.
//! 2. **DMA into guest memory.** [`Dma::map_guest_memory`](crate::Dma::map_guest_memory)
//!    maps a vm-memory `GuestMemoryMmap` into the device's container with
//!    IOVA = guest-physical address; its [`GuestMapping`](crate::dma::GuestMapping)
//!    unmaps it again.
//! 3. **Interrupts into the guest.** [`Vm::route_msi`] routes a device
//!    [`Vector`](crate::Vector)'s eventfd to an MSI or MSI-X message through a
//!    KVM irqfd; the VMM can instead take the eventfd itself (a `Vector` is
//!    [`AsFd`](std::os::fd::AsFd)).
//! 4. **The KVM-VFIO device.** [`Vm::open_device`] opens devices in one
//!    container per VM that registers each device cdev (iommufd) or group
//!    with KVM's VFIO device.
//! 5. **A whole virtual PCI function.** [`VirtualFunction`] puts a device in
//!    front of the guest as its own PCI function: virtual BARs placed where
//!    the guest programs them, decode, the ROM, MSI-X/MSI routed from the
//!    guest's own table writes and INTx through a resampled irqfd. The VMM's
//!    PCI bus calls [`VirtualFunction::config_read`] and
//!    [`VirtualFunction::config_write`], and its exit loop
//!    [`VirtualFunction::handle_exit`].
//!
//! KVM keeps two tables for a whole VM that it cannot be asked about: memory
//! slots and GSI routes. The VMM's objects stay the VMM's: it creates the
//! `VmFd` (in an `Arc`) and the VM's routing table, [`GsiRoutes`], adds its
//! own routes to it, and hands barmap a range of slot numbers and a range of
//! GSIs; [`Vm`] borrows them, so that several passthroughs and the VMM's own
//! slots and routes do not collide.
//!
//! ```no_run
//! use std::sync::Arc;
//! use barmap::kvm::{BarPassthrough, GsiRoutes, MsiMessage, Vm};
//! use barmap::dma::DmaMask;
//! use barmap::vm_memory::{GuestAddress, GuestMemoryMmap};
//! use kvm_ioctls::{Kvm, VcpuExit};
//!
//! let kvm = Kvm::new().unwrap();
//! let fd = Arc::new(kvm.create_vm().unwrap());
//! fd.create_irq_chip().unwrap();
//! // GSIs 0..24 are the IOAPIC's, the VMM's own; barmap allocates from 24 on.
//! let routes = GsiRoutes::new(fd.clone(), 24..u32::MAX);
//! routes.add_x86_defaults()?;
//! // Slot 0 is the VMM's RAM; barmap allocates slots from 1 on.
//! let vm = Vm::new(&kvm, routes.clone(), 1..u32::MAX);
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
//! // ... register `ram` as slot 0 (the VMM's own) with vm.fd().set_user_memory_region ...
//! let edu = vm.open_device("0000:00:02.0".parse()?)?;
//! let bar0 = BarPassthrough::new(&vm, edu.bar(0)?, 0x20000)?;
//! let _dma = edu.dma(DmaMask::bits(28))?.map_guest_memory(&ram)?;
//! let msi = edu.enable_msi(1)?;
//! let _irq = vm.route_msi(msi.vector(0)?, MsiMessage::fixed(0, 0x40))?;
//! let mut vcpu = vm.fd().create_vcpu(0).unwrap();
//! loop {
//!     match vcpu.run().unwrap() {
//!         VcpuExit::Hlt => break,
//!         VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) | VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => {
//!             if !bar0.handle_exit(&mut vcpu)? {
//!                 // not the BAR's: the VMM's own devices
//!             }
//!         }
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok::<(), barmap::Error>(())
//! ```

mod bar;
mod exit;
mod function;
mod irq;
mod routes;
mod vm;

pub use bar::BarPassthrough;
pub use function::{FunctionConfig, FunctionExits, PlacedBar, VirtualFunction};
pub use irq::{GuestInterrupt, MsiMessage};
pub use routes::GsiRoutes;
pub use vm::Vm;
