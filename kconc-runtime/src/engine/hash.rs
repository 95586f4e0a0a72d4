//! A cheap hasher for the poll loop's small integer keys (partition
//! numbers, topic indexes), looked up several times per message. The
//! standard SipHash guards against keys chosen to collide, which these
//! are not: they come from the consumer's own assignment, never from a
//! record's content.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by partition numbers or topic indexes.
pub(crate) type SmallKeyMap<K, V> = HashMap<K, V, BuildHasherDefault<SmallKeyHasher>>;

/// Multiply-rotate hashing of each integer written (the scheme of the
/// rustc "Fx" hasher); the multiplication spreads the bits into the high
/// ones, which hashbrown uses for its control bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SmallKeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl SmallKeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for SmallKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_i32(&mut self, n: i32) {
        self.add(u64::from(n as u32));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::SmallKeyMap;

    #[test]
    fn a_map_of_partitions_keeps_every_entry_apart() {
        let mut m: SmallKeyMap<(usize, i32), i32> = SmallKeyMap::default();
        for t in 0..4 {
            for p in -1..1_000 {
                m.insert((t, p), p);
            }
        }
        assert_eq!(m.len(), 4 * 1_001);
        assert!((0..4).all(|t| (-1..1_000).all(|p| m.get(&(t, p)) == Some(&p))));
    }
}
