//! Known data for a namespace: blocks derived from (LBA, seed).

use super::rng::Rng;

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
