//! PCI addresses (`DDDD:BB:DD.F`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A PCI function address: domain, bus, device and function.
///
/// Parses both the full form `0000:00:03.0` and the short form `00:03.0`
/// (domain 0); displays in the full form, as sysfs names devices.
///
/// ```
/// use barmap::PciAddress;
/// let addr: PciAddress = "00:03.0".parse().unwrap();
/// assert_eq!(addr.to_string(), "0000:00:03.0");
/// assert_eq!((addr.bus(), addr.device(), addr.function()), (0, 3, 0));
/// assert!("00:20.0".parse::<PciAddress>().is_err()); // device numbers stop at 0x1f
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

impl PciAddress {
    /// Builds an address from its parts; fails if `device > 0x1f` or `function > 7`.
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Result<Self> {
        if device > 0x1f {
            return Err(Self::invalid(
                format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}"),
                "device number above 0x1f",
            ));
        }
        if function > 7 {
            return Err(Self::invalid(
                format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}"),
                "function number above 7",
            ));
        }
        Ok(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }

    /// The PCI domain (segment).
    pub fn domain(&self) -> u32 {
        self.domain
    }

    /// The bus number.
    pub fn bus(&self) -> u8 {
        self.bus
    }

    /// The device (slot) number, 0..=0x1f.
    pub fn device(&self) -> u8 {
        self.device
    }

    /// The function number, 0..=7.
    pub fn function(&self) -> u8 {
        self.function
    }

    fn invalid(input: String, reason: &'static str) -> Error {
        Error::InvalidAddress { input, reason }
    }
}

fn hex_field<T: TryFrom<u32>>(input: &str, field: &str, max_digits: usize, what: &'static str) -> Result<T> {
    if field.is_empty() || field.len() > max_digits || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PciAddress::invalid(input.to_string(), what));
    }
    let value = u32::from_str_radix(field, 16).map_err(|_| PciAddress::invalid(input.to_string(), what))?;
    T::try_from(value).map_err(|_| PciAddress::invalid(input.to_string(), what))
}

impl FromStr for PciAddress {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (rest, function) = s
            .rsplit_once('.')
            .ok_or_else(|| Self::invalid(s.to_string(), "missing '.' before the function number"))?;
        let function: u8 = hex_field(s, function, 1, "function must be one hex digit 0-7")?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [bus, device] => (0, *bus, *device),
            [domain, bus, device] => (
                hex_field(s, domain, 8, "domain must be 1-8 hex digits")?,
                *bus,
                *device,
            ),
            _ => {
                return Err(Self::invalid(
                    s.to_string(),
                    "expected two or three ':'-separated fields before '.'",
                ))
            }
        };
        let bus: u8 = hex_field(s, bus, 2, "bus must be 1-2 hex digits")?;
        let device: u8 = hex_field(s, device, 2, "device must be 1-2 hex digits")?;
        if device > 0x1f {
            return Err(Self::invalid(s.to_string(), "device number above 0x1f"));
        }
        if function > 7 {
            return Err(Self::invalid(s.to_string(), "function number above 7"));
        }
        Ok(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let full: PciAddress = "0000:00:03.0".parse().unwrap();
        let short: PciAddress = "00:03.0".parse().unwrap();
        assert_eq!(full, short);
        assert_eq!(full.to_string(), "0000:00:03.0");
        let big: PciAddress = "10000:af:1f.7".parse().unwrap();
        assert_eq!(
            (big.domain(), big.bus(), big.device(), big.function()),
            (0x10000, 0xaf, 0x1f, 7)
        );
        assert_eq!(big.to_string(), "10000:af:1f.7");
        assert_eq!("0:0:3.0".parse::<PciAddress>().unwrap(), full);
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "00:03",
            "00.03.0",
            "0000:00:03.8",
            "00:20.0",
            "00:03.",
            ":03.0",
            "0000:00:03:0.0",
            "zz:03.0",
            "000:100:03.0",
            "00:03.0 ",
            " 00:03.0",
            "00:+3.0",
            "123456789:00:03.0",
        ] {
            let err = bad.parse::<PciAddress>().unwrap_err();
            assert!(
                matches!(err, Error::InvalidAddress { .. }),
                "{bad:?} gave {err:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn new_checks_ranges() {
        assert!(PciAddress::new(0, 0, 0x1f, 7).is_ok());
        assert!(PciAddress::new(0, 0, 0x20, 0).is_err());
        assert!(PciAddress::new(0, 0, 0, 8).is_err());
    }
}
