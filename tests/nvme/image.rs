//! The NVMe namespace image the guest harness creates (qemu-scripts/lib.sh,
//! `nvme_image`) and the POSIX `cksum` CRC the harness checks it with after
//! the guest has run.

/// Bytes in a block of the harness's image (the namespace's LBA size).
pub const IMAGE_BLOCK: usize = 512;

/// Block `lba` of the image the guest harness creates (qemu-scripts/lib.sh,
/// `nvme_image`): the text `barmap-nvme lba NNNNNNNNNNNN` (12 decimal
/// digits) padded with spaces to 511 bytes, then a newline.
pub fn initial_block(lba: u64) -> Vec<u8> {
    format!("{:<511}\n", format!("barmap-nvme lba {lba:012}")).into_bytes()
}

/// The CRC that POSIX `cksum` prints, computed over data fed in pieces.
#[derive(Clone, Debug, Default)]
pub struct Cksum {
    crc: u32,
    len: u64,
}

impl Cksum {
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        for &byte in data {
            self.byte(byte);
        }
        self.len += data.len() as u64;
    }

    fn byte(&mut self, byte: u8) {
        self.crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            self.crc = if self.crc & 0x8000_0000 != 0 {
                (self.crc << 1) ^ 0x04c1_1db7
            } else {
                self.crc << 1
            };
        }
    }

    /// The CRC of everything fed (the length is folded in, as cksum does).
    pub fn finish(&self) -> u32 {
        let mut tail = self.clone();
        let mut len = self.len;
        while len != 0 {
            tail.byte(len as u8);
            len >>= 8;
        }
        !tail.crc
    }
}

#[test]
fn cksum_matches_posix_cksum() {
    // `printf 123456789 | cksum` prints 930766865 9; an empty input 4294967295 0.
    let mut sum = Cksum::default();
    sum.update(b"1234");
    sum.update(b"56789");
    assert_eq!(sum.finish(), 930_766_865);
    assert_eq!(Cksum::default().finish(), 4_294_967_295);
}

#[test]
fn initial_block_is_the_harness_text() {
    let block = initial_block(1234);
    assert_eq!(block.len(), IMAGE_BLOCK);
    assert!(block.starts_with(b"barmap-nvme lba 000000001234 "));
    assert_eq!((block[510], block[511]), (b' ', b'\n'));
}
