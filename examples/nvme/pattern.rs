//! Known data for a namespace: blocks derived from (LBA, seed), and a
//! seeded generator for offsets and LBAs.

/// Fills `block` with the data written to `lba` under `seed`: the LBA and
/// the seed as the first two little-endian u64s, then generated words.
pub fn written_block(lba: u64, seed: u64, block: &mut [u8]) {
    let mut rng = Rng::new(seed ^ lba.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for (i, chunk) in block.chunks_mut(8).enumerate() {
        let word = match i {
            0 => lba,
            1 => seed,
            _ => rng.next(),
        };
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
}

/// A small seeded generator (splitmix64): the same sequence on every host.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64-bit value.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_blocks_differ_by_lba_and_seed() {
        let (mut a, mut b, mut c) = ([0u8; 512], [0u8; 512], [0u8; 512]);
        written_block(7, 1, &mut a);
        written_block(8, 1, &mut b);
        written_block(7, 2, &mut c);
        assert_eq!(u64::from_le_bytes(a[..8].try_into().unwrap()), 7);
        assert!(a != b && a != c && a[16..] != b[16..]);
        let mut again = [0u8; 512];
        written_block(7, 1, &mut again);
        assert_eq!(a, again);
    }
}
