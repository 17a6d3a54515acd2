//! The Identify data structures the driver reads (NVMe base specification
//! 2.0, 5.17.2; NVM command set specification 1.0, 4.1.5).

/// What Identify Controller says that the driver uses or shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    /// PCI vendor ID.
    pub vendor: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Maximum data transfer size as a power of two of the minimum memory
    /// page size (0: no limit).
    pub mdts: u8,
    /// Controller ID.
    pub controller_id: u16,
    /// Version (VER), as major.minor.tertiary in one dword.
    pub version: u32,
    /// Number of namespaces (NN).
    pub namespaces: u32,
    /// A volatile write cache is present (VWC bit 0).
    pub write_cache: bool,
}

impl ControllerInfo {
    /// Decodes the 4 KiB Identify Controller data.
    pub fn parse(data: &[u8; 4096]) -> ControllerInfo {
        ControllerInfo {
            vendor: u16::from_le_bytes([data[0], data[1]]),
            serial: ascii(&data[4..24]),
            model: ascii(&data[24..64]),
            firmware: ascii(&data[64..72]),
            mdts: data[77],
            controller_id: u16::from_le_bytes([data[78], data[79]]),
            version: u32::from_le_bytes([data[80], data[81], data[82], data[83]]),
            namespaces: u32::from_le_bytes([data[516], data[517], data[518], data[519]]),
            write_cache: data[525] & 1 == 1,
        }
    }

    /// The largest transfer in bytes, given the minimum page size's shift
    /// (`None`: no limit).
    pub fn max_transfer(&self, page_shift_min: u32) -> Option<usize> {
        (self.mdts != 0).then(|| 1usize << (page_shift_min + u32::from(self.mdts)).min(40))
    }
}

/// A namespace as Identify Namespace describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace ID.
    pub id: u32,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
    /// Logical block size in bytes, from the LBA format in use.
    pub block_size: u32,
}

impl Namespace {
    /// Decodes the 4 KiB Identify Namespace data of namespace `id`; `None`
    /// when the LBA format in use has a block size the driver cannot take
    /// (below 512 bytes or above 64 KiB) or carries metadata.
    pub fn parse(id: u32, data: &[u8; 4096]) -> Option<Namespace> {
        let blocks = u64::from_le_bytes(data[0..8].try_into().ok()?);
        let format = usize::from(data[26] & 0xf);
        let lbaf = 128 + 4 * format;
        let entry = u32::from_le_bytes(data[lbaf..lbaf + 4].try_into().ok()?);
        let (metadata, shift) = (entry & 0xffff, (entry >> 16) & 0xff);
        ((9..=16).contains(&shift) && metadata == 0).then_some(Namespace {
            id,
            blocks,
            block_size: 1 << shift,
        })
    }

    /// The namespace's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}

/// Decodes an active namespace ID list (zero-terminated dwords).
pub fn namespace_list(data: &[u8; 4096]) -> Vec<u32> {
    let ids = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    ids.take_while(|&id| id != 0).collect()
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_data_decodes() {
        let mut data = [0u8; 4096];
        data[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        data[4..24].copy_from_slice(b"barmap0001          ");
        data[24..38].copy_from_slice(b"QEMU NVMe Ctrl");
        data[77] = 8;
        data[516] = 2;
        let info = ControllerInfo::parse(&data);
        assert_eq!(
            (info.vendor, info.serial.as_str(), info.model.as_str()),
            (0x1b36, "barmap0001", "QEMU NVMe Ctrl")
        );
        assert_eq!((info.namespaces, info.max_transfer(12)), (2, Some(1 << 20)));
    }

    #[test]
    fn namespace_data_decodes_the_format_in_use() {
        let mut data = [0u8; 4096];
        data[0..8].copy_from_slice(&32768u64.to_le_bytes());
        data[26] = 1; // format 1: 4 KiB blocks
        data[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        data[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let ns = Namespace::parse(1, &data).unwrap();
        assert_eq!((ns.blocks, ns.block_size, ns.bytes()), (32768, 4096, 128 << 20));
        data[132..136].copy_from_slice(&(12u32 << 16 | 8).to_le_bytes());
        assert_eq!(Namespace::parse(1, &data), None, "metadata is refused");
        let mut list = [0u8; 4096];
        list[0] = 1;
        list[4] = 2;
        assert_eq!(namespace_list(&list), [1, 2]);
    }
}
