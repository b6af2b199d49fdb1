//! A blocked Bloom filter over a sealed layer's keys (`layers.rs`).
//!
//! Why: a read looks through every layer above a bucket's tree, newest first, and a burst of
//! writes can leave a dozen sealed layers before the merger takes them. A lookup in one costs
//! a few cache misses even when the key is not there, as it almost never is; the filter
//! answers "not here" from one cache line.
//!
//! Each key sets [`PROBES`] bits in one 64-byte block, all chosen from one 64-bit hash, so a
//! look reads one cache line; with [`BITS_PER_KEY`] bits per key about one look in fifty at a
//! key that is absent says "maybe" (then the layer's tree is searched, and says no).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bits of filter per key.
const BITS_PER_KEY: usize = 16;
/// Bits set per key, within its block.
const PROBES: u32 = 7;
/// Bits per block: one cache line.
const BLOCK_BITS: u64 = 512;

/// The hash the filter uses, computed once per read for all the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash(u64);

impl KeyHash {
    /// FxHash-style mixing of the key's 8-byte words, then a 64-bit finalizer (MurmurHash3's)
    /// so that every bit depends on every byte: a few nanoseconds for a short key.
    pub fn of(key: &[u8]) -> KeyHash {
        let mut h = key.len() as u64;
        let mut chunks = key.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            h = (h.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        KeyHash(h)
    }
}

/// The filter: blocks of [`BLOCK_BITS`] bits.
///
/// One thread adds keys (the writer, to its layer of recent writes) while others read: bits
/// are only ever set, so a reader whose view of the layer is older sees at worst bits of keys
/// added since, a "maybe" more, never a "no" for a key it can see. (A view is published after
/// the writes to it, so the bits of its keys are visible to whoever reads the view.) Past
/// twice the keys it was sized for it answers "maybe" to everything: a bulk load's layer, which
/// gets a filter of its size when sealed (`Sealed::new`).
#[derive(Debug)]
pub struct Filter {
    blocks: Box<[[AtomicU64; 8]]>,
    capacity: usize,
    keys: AtomicUsize,
}

impl Filter {
    /// A filter sized for `keys` keys, with none in it.
    pub fn with_capacity(keys: usize) -> Filter {
        let bits = (keys.max(1) * BITS_PER_KEY) as u64;
        let blocks = bits.div_ceil(BLOCK_BITS) as usize;
        Filter {
            blocks: (0..blocks).map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            capacity: keys.max(1),
            keys: AtomicUsize::new(0),
        }
    }

    /// The block of `h` (from the hash's high half, by multiply-shift) and its bits (9 bits
    /// each from the top of a second hash derived by a multiply, whose top bits mix them all).
    fn place(blocks: usize, h: KeyHash) -> (usize, impl Iterator<Item = u32>) {
        let block = (((h.0 >> 32) * blocks as u64) >> 32) as usize;
        let second = h.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (block, (0..PROBES).map(move |i| ((second >> (64 - 9 * (i + 1))) & 511) as u32))
    }

    /// Adds a key. One thread at a time (the writer's lock sees to it): a word is read and
    /// written back, not changed atomically.
    pub fn insert(&self, h: KeyHash) {
        let (block, bits) = Filter::place(self.blocks.len(), h);
        let b = &self.blocks[block];
        for bit in bits {
            let word = &b[(bit / 64) as usize];
            word.store(word.load(Ordering::Relaxed) | 1 << (bit % 64), Ordering::Relaxed);
        }
        self.keys.store(self.keys.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Whether it answers "maybe" to everything, having taken too many keys.
    pub fn saturated(&self) -> bool {
        self.keys.load(Ordering::Relaxed) > 2 * self.capacity
    }

    /// False only if no key with hash `h` was inserted.
    #[inline]
    pub fn may_contain(&self, h: KeyHash) -> bool {
        if self.saturated() {
            return true;
        }
        let (block, mut bits) = Filter::place(self.blocks.len(), h);
        let b = &self.blocks[block];
        bits.all(|bit| b[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0)
    }

    /// Heap bytes of the filter.
    pub fn heap_bytes(&self) -> usize {
        self.blocks.len() * 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_inserted_is_found_and_few_others_are() {
        let keys: Vec<Vec<u8>> = (0..8192u32).map(|i| format!("key-{i:08}-{}", i * 7919).into_bytes()).collect();
        let f = Filter::with_capacity(keys.len());
        for k in &keys {
            f.insert(KeyHash::of(k));
        }
        assert!(keys.iter().all(|k| f.may_contain(KeyHash::of(k))));
        let absent = (0..100_000u32).filter(|i| f.may_contain(KeyHash::of(format!("other-{i}").as_bytes()))).count();
        // About 1-2% for 10 bits per key and 6 probes in a block; a broken hash or placement
        // gives far more.
        assert!(absent < 4_000, "{absent} false positives in 100,000");
        for i in 0..2 * keys.len() {
            f.insert(KeyHash::of(&i.to_le_bytes()));
        }
        assert!(f.saturated() && f.may_contain(KeyHash::of(b"never inserted")));
    }

    #[test]
    fn short_and_empty_keys_hash_apart() {
        assert_ne!(KeyHash::of(b""), KeyHash::of(b"\0"));
        assert_ne!(KeyHash::of(b"a"), KeyHash::of(b"b"));
        assert_ne!(KeyHash::of(b"12345678a"), KeyHash::of(b"12345678b"));
    }
}
