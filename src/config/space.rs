//! [`ConfigSpace`]: checked register reads and writes over a [`RegionIo`].

use std::fmt;

use super::regs::PCI_STD_HEADER_SIZEOF;
use super::ConfigHeader;
use crate::error::{Error, Result};
use crate::pci::PciAddress;
use crate::region::{RegionIndex, RegionIo};

/// Typed reads and writes of one function's config space over a [`RegionIo`].
///
/// Every access is one [`RegionIo`] call of 1, 2 or 4 bytes, naturally aligned
/// and inside the region, little-endian; [`header`](Self::header) reads the
/// 64-byte header in one call. Errors name the device given at construction
/// and the [`RegionIndex::CONFIG`] region. Through VFIO, the kernel
/// virtualizes parts of config space (e.g. BARs, MSI, hidden capabilities):
/// what is read is what the kernel lets userspace see.
#[derive(Clone, Copy)]
pub struct ConfigSpace<'a> {
    io: &'a dyn RegionIo,
    addr: PciAddress,
}

impl fmt::Debug for ConfigSpace<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("addr", &self.addr)
            .field("size", &self.io.size())
            .finish()
    }
}

impl<'a> ConfigSpace<'a> {
    /// Config space of the device at `addr`, read through `io` (the VFIO config
    /// region, or a [`MemoryRegion`](crate::MemoryRegion) of its bytes).
    pub fn new(io: &'a dyn RegionIo, addr: PciAddress) -> Self {
        ConfigSpace { io, addr }
    }

    /// The device this config space belongs to.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// Size of the config space in bytes: 256 for conventional PCI, 4096 for PCIe.
    pub fn size(&self) -> u64 {
        self.io.size()
    }

    /// Reads the byte at `offset`.
    pub fn read8(&self, offset: u16) -> Result<u8> {
        self.read::<1>(offset).map(u8::from_le_bytes)
    }

    /// Reads the 16-bit register at `offset` (2-byte aligned).
    pub fn read16(&self, offset: u16) -> Result<u16> {
        self.read::<2>(offset).map(u16::from_le_bytes)
    }

    /// Reads the 32-bit register at `offset` (4-byte aligned).
    pub fn read32(&self, offset: u16) -> Result<u32> {
        self.read::<4>(offset).map(u32::from_le_bytes)
    }

    /// Writes the byte at `offset`.
    pub fn write8(&self, offset: u16, value: u8) -> Result<()> {
        self.write(offset, value.to_le_bytes())
    }

    /// Writes the 16-bit register at `offset` (2-byte aligned), e.g. [`PCI_COMMAND`](super::regs::PCI_COMMAND).
    pub fn write16(&self, offset: u16, value: u16) -> Result<()> {
        self.write(offset, value.to_le_bytes())
    }

    /// Writes the 32-bit register at `offset` (4-byte aligned), e.g. a BAR for sizing.
    pub fn write32(&self, offset: u16, value: u32) -> Result<()> {
        self.write(offset, value.to_le_bytes())
    }

    /// Reads and decodes the standard 64-byte header.
    pub fn header(&self) -> Result<ConfigHeader> {
        let mut raw = [0u8; PCI_STD_HEADER_SIZEOF as usize];
        self.check(0, raw.len(), 1)?;
        self.io
            .read_at(0, &mut raw)
            .map_err(|source| self.io_error(0, raw.len(), source))?;
        Ok(ConfigHeader::decode(&raw))
    }

    fn read<const N: usize>(&self, offset: u16) -> Result<[u8; N]> {
        self.check(offset, N, N)?;
        let mut buf = [0u8; N];
        self.io
            .read_at(u64::from(offset), &mut buf)
            .map_err(|source| self.io_error(offset, N, source))?;
        Ok(buf)
    }

    fn write<const N: usize>(&self, offset: u16, data: [u8; N]) -> Result<()> {
        self.check(offset, N, N)?;
        self.io
            .write_at(u64::from(offset), &data)
            .map_err(|source| self.io_error(offset, N, source))
    }

    /// Checks that `len` bytes at `offset` are inside the region and `align`-aligned.
    fn check(&self, offset: u16, len: usize, align: usize) -> Result<()> {
        if !usize::from(offset).is_multiple_of(align) {
            return Err(Error::Misaligned {
                addr: self.addr,
                region: RegionIndex::CONFIG,
                offset: u64::from(offset),
                width: len,
            });
        }
        if u64::from(offset) + len as u64 > self.size() {
            return Err(Error::OutOfRange {
                addr: self.addr,
                region: RegionIndex::CONFIG,
                offset: u64::from(offset),
                len: len as u64,
                size: self.size(),
            });
        }
        Ok(())
    }

    fn io_error(&self, offset: u16, len: usize, source: std::io::Error) -> Error {
        Error::Io {
            addr: self.addr,
            region: RegionIndex::CONFIG,
            offset: u64::from(offset),
            len: len as u64,
            source,
        }
    }

    pub(super) fn malformed(&self, offset: u16, reason: &'static str) -> Error {
        Error::MalformedConfig {
            addr: self.addr,
            offset: u64::from(offset),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::config::fixture::{addr, edu, Fixture};
    use crate::config::regs::{
        PCI_BASE_ADDRESS_0, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_DEVICE_ID,
        PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN, PCI_STATUS,
    };

    #[test]
    fn register_accesses_are_checked() {
        let region = edu().region();
        let config = ConfigSpace::new(&region, addr());
        assert_eq!(config.read8(PCI_INTERRUPT_PIN).unwrap(), 1);
        assert_eq!(config.read16(PCI_DEVICE_ID).unwrap(), 0x11e8);
        assert_eq!(config.read32(0xfc).unwrap(), 0);

        assert!(matches!(
            config.read16(0x41),
            Err(Error::Misaligned {
                offset: 0x41,
                width: 2,
                region: RegionIndex::CONFIG,
                ..
            })
        ));
        assert!(matches!(
            config.read32(0x42),
            Err(Error::Misaligned {
                offset: 0x42,
                width: 4,
                ..
            })
        ));
        assert!(matches!(config.write32(0x06, 0), Err(Error::Misaligned { .. })));
        assert!(matches!(
            config.read32(0x100),
            Err(Error::OutOfRange {
                offset: 0x100,
                len: 4,
                size: 256,
                ..
            })
        ));
        assert!(matches!(config.read8(0x100), Err(Error::OutOfRange { .. })));
        assert!(matches!(config.write16(0xfffe, 0), Err(Error::OutOfRange { .. })));
        assert_eq!(region.bytes(), edu().0, "refused writes change nothing");
    }

    #[test]
    fn writes_land_little_endian() {
        let region = edu().region();
        let config = ConfigSpace::new(&region, addr());
        config
            .write16(PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
            .unwrap();
        config.write32(PCI_BASE_ADDRESS_0, 0xffff_ffff).unwrap();
        config.write8(PCI_INTERRUPT_LINE, 5).unwrap();
        assert_eq!(config.header().unwrap().command, 0x6);
        assert_eq!(config.read32(PCI_BASE_ADDRESS_0).unwrap(), 0xffff_ffff);
        let bytes = region.bytes();
        assert_eq!(bytes[4..6], [0x06, 0x00]);
        assert_eq!(bytes[0x3c], 5);
    }

    #[test]
    fn truncated_config_is_out_of_range_not_a_panic() {
        // Unprivileged readers of sysfs `config` get only the first 64 bytes.
        let f = Fixture(edu().0[..64].to_vec());
        let region = f.region();
        let config = ConfigSpace::new(&region, addr());
        assert_eq!(config.header().unwrap().vendor_id, 0x1234);
        assert!(matches!(
            config.capabilities(),
            Err(Error::OutOfRange {
                offset: 0x40,
                len: 2,
                size: 64,
                ..
            })
        ));
        let f = Fixture(edu().0[..63].to_vec());
        assert!(matches!(
            ConfigSpace::new(&f.region(), addr()).header(),
            Err(Error::OutOfRange {
                offset: 0,
                len: 64,
                size: 63,
                ..
            })
        ));
    }

    /// A config region whose every access fails, like a device whose memory
    /// decode was turned off under VFIO.
    struct Failing;

    // SAFETY: every method returns at once, touching nothing.
    unsafe impl RegionIo for Failing {
        fn size(&self) -> u64 {
            4096
        }

        fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }

        fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }

    #[test]
    fn io_errors_carry_device_region_and_offset() {
        let config = ConfigSpace::new(&Failing, addr());
        match config.read16(PCI_STATUS) {
            Err(Error::Io {
                addr: a,
                region,
                offset,
                len,
                source,
            }) => {
                assert_eq!((a, region, offset, len), (addr(), RegionIndex::CONFIG, 6, 2));
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(matches!(
            config.header(),
            Err(Error::Io {
                offset: 0,
                len: 64,
                ..
            })
        ));
        assert!(matches!(
            config.write32(PCI_BASE_ADDRESS_0, 0),
            Err(Error::Io {
                offset: 0x10,
                len: 4,
                ..
            })
        ));
        assert!(matches!(
            config.extended_capabilities(),
            Err(Error::Io {
                offset: 0x100,
                len: 4,
                ..
            })
        ));
        let message = config.read8(PCI_INTERRUPT_PIN).unwrap_err().to_string();
        assert!(
            message.contains("0000:00:03.0 config") && message.contains("0x3d"),
            "{message}"
        );
    }
}
