//! The capability lists the guest sees: which of the device's capabilities
//! are shown, how each is served, and which extended capabilities are
//! hidden behind a null header.

use super::config::DeviceView;
use super::msi::Msi;
use super::msix::Msix;
use crate::config::regs::*;
use crate::config::ConfigSpace;
use crate::error::Result;

/// How a capability in the guest's list is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CapKind {
    /// The device's registers, read and written through.
    Pass,
    /// Power Management: through, except the power state, which the guest
    /// sets and reads back while the device stays in D0 (vfio-pci revokes a
    /// device's BAR mappings in D3hot, which would pull the memory slots
    /// from under the guest).
    Pm,
    /// PCI Express: through, except that Initiate FLR resets the device through VFIO.
    Express,
    /// MSI: emulated, its vectors routed by the VMM.
    Msi,
    /// MSI-X: control emulated, table location the device's.
    Msix,
}

/// A capability the guest sees: its place, extent and next pointer in the
/// guest's list.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cap {
    pub(super) offset: u16,
    pub(super) end: u16,
    pub(super) next: u8,
    pub(super) kind: CapKind,
}

/// Extended capabilities hidden from the guest, as QEMU and cloud-hypervisor
/// do: SR-IOV (VFs the guest cannot create), Resizable BAR (it would resize
/// the device's BARs under the VMM), ARI (function numbers of the host's bus).
const HIDDEN_EXT: [u16; 3] = [PCI_EXT_CAP_ID_SRIOV, PCI_EXT_CAP_ID_REBAR, PCI_EXT_CAP_ID_ARI];

/// The capabilities of `space` the guest sees, in the device's order with
/// the guest's next pointers, and the MSI and MSI-X emulations of those
/// `view` says the function has.
pub(super) fn guest_caps(
    space: &ConfigSpace<'_>,
    view: &DeviceView,
) -> Result<(Vec<Cap>, Option<Msi>, Option<Msix>)> {
    let found = space.capabilities()?;
    let mut offsets: Vec<u16> = found.iter().map(|c| u16::from(c.offset)).collect();
    offsets.sort_unstable();
    let end_of = |at: u16| {
        offsets
            .iter()
            .copied()
            .find(|&o| o > at)
            .unwrap_or(PCI_CFG_SPACE_SIZE)
    };
    let (mut caps, mut msi, mut msix) = (Vec::new(), None, None);
    for cap in &found {
        let offset = u16::from(cap.offset);
        let kind = match cap.id {
            PCI_CAP_ID_PM => CapKind::Pm,
            PCI_CAP_ID_VNDR => CapKind::Pass,
            PCI_CAP_ID_EXP => CapKind::Express,
            PCI_CAP_ID_MSI if view.msi => {
                msi = Some(Msi::new(space.read16(offset + PCI_MSI_FLAGS)?));
                CapKind::Msi
            }
            PCI_CAP_ID_MSIX if view.msix => {
                msix = Some(Msix::new(
                    space.read16(offset + PCI_MSIX_FLAGS)?,
                    space.read32(offset + PCI_MSIX_TABLE)?,
                    space.read32(offset + PCI_MSIX_PBA)?,
                ));
                CapKind::Msix
            }
            _ => continue,
        };
        caps.push(Cap {
            offset,
            end: end_of(offset),
            next: 0,
            kind,
        });
    }
    for i in 1..caps.len() {
        caps[i - 1].next = caps[i].offset as u8;
    }
    Ok((caps, msi, msix))
}

/// The offsets of the extended capabilities of `space` that the guest sees
/// as a null capability (ID 0) keeping the list's next pointer.
pub(super) fn hidden_extended(space: &ConfigSpace<'_>) -> Result<Vec<u16>> {
    Ok(space
        .extended_capabilities()?
        .into_iter()
        .filter(|c| HIDDEN_EXT.contains(&c.id))
        .map(|c| c.offset)
        .collect())
}
