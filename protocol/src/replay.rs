//! Replay cache: a Bloom filter of Sphinx replay tags, one per epoch key.
//!
//! Memory is fixed when the cache is made, from the number of packets it must
//! remember (rate × key lifetime) and the false-positive rate it may have at
//! that fill. A false positive drops one fresh packet; it never lets a replay
//! through (Bloom filters have no false negatives). Past its capacity the
//! filter keeps working but its false-positive rate rises; [`ReplayCache::fill`]
//! tells the operator, and keys should be rotated before that.

use crate::packet::ReplayTag;

/// Default false-positive rate at full capacity: one fresh packet in 10^6.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 1e-6;

/// A fixed-size Bloom filter over replay tags.
#[derive(Debug, Clone)]
pub struct ReplayCache {
    bits: Vec<u64>,
    m_bits: u64,
    k: u32,
    inserted: u64,
    capacity: u64,
    /// Benchmark soak only: record tags, refuse none.
    accept_replays: bool,
}

impl ReplayCache {
    /// A cache that remembers `capacity` tags with false-positive rate `fp_rate`
    /// (clamped to 1e-12..0.5) once full.
    pub fn new(capacity: u64, fp_rate: f64) -> Self {
        let capacity = capacity.max(1);
        let p = fp_rate.clamp(1e-12, 0.5);
        let ln2 = std::f64::consts::LN_2;
        let m = (-(capacity as f64) * p.ln() / (ln2 * ln2)).ceil().max(64.0) as u64;
        let k = ((m as f64 / capacity as f64) * ln2)
            .round()
            .clamp(1.0, 32.0) as u32;
        let words = m.div_ceil(64);
        Self {
            bits: vec![0; words as usize],
            m_bits: words * 64,
            k,
            inserted: 0,
            capacity,
            accept_replays: false,
        }
    }

    /// A cache sized for `packets_per_sec` sustained over `lifetime_secs`.
    pub fn for_rate(packets_per_sec: u64, lifetime_secs: u64, fp_rate: f64) -> Self {
        Self::new(packets_per_sec.saturating_mul(lifetime_secs), fp_rate)
    }

    fn indices(&self, tag: &ReplayTag) -> impl Iterator<Item = u64> + use<> {
        // Tags are outputs of a random oracle keyed by the node's secret, so
        // their bytes are uniform: two 64-bit words give Kirsch–Mitzenmacher
        // double hashing without another hash function.
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&tag[0..8]);
        b.copy_from_slice(&tag[8..16]);
        let h1 = u64::from_le_bytes(a);
        let h2 = u64::from_le_bytes(b) | 1;
        let m = self.m_bits;
        (0..u64::from(self.k)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % m)
    }

    /// DANGEROUS, benchmarks only: the cache still records every tag (the
    /// same memory and work) but refuses none, so a soak can replay a fixed
    /// set of packets for minutes. A node with this accepts replays.
    pub fn dangerous_accept_replays(mut self) -> Self {
        self.accept_replays = true;
        self
    }

    /// Records `tag`; true if it was not seen before (the packet is fresh).
    pub fn check_and_insert(&mut self, tag: &ReplayTag) -> bool {
        let mut fresh = false;
        for i in self.indices(tag) {
            let (w, b) = ((i / 64) as usize, i % 64);
            let mask = 1u64 << b;
            if self.bits[w] & mask == 0 {
                fresh = true;
                self.bits[w] |= mask;
            }
        }
        if fresh {
            self.inserted = self.inserted.saturating_add(1);
        }
        fresh || self.accept_replays
    }

    /// Whether `tag` would be reported as a replay.
    pub fn contains(&self, tag: &ReplayTag) -> bool {
        self.indices(tag)
            .all(|i| self.bits[(i / 64) as usize] & (1u64 << (i % 64)) != 0)
    }

    /// Tags recorded so far.
    pub fn len(&self) -> u64 {
        self.inserted
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.inserted == 0
    }

    /// Tags the cache was sized for.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Fraction of capacity used; above 1.0 the false-positive rate exceeds its target.
    pub fn fill(&self) -> f64 {
        self.inserted as f64 / self.capacity as f64
    }

    /// Bytes of memory the filter holds.
    pub fn memory_bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// False-positive rate at the current fill: (1 − e^(−kn/m))^k.
    pub fn current_false_positive_rate(&self) -> f64 {
        let k = f64::from(self.k);
        (1.0 - (-k * self.inserted as f64 / self.m_bits as f64).exp()).powf(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn tag(rng: &mut ChaCha20Rng) -> ReplayTag {
        let mut t = [0u8; 32];
        rng.fill_bytes(&mut t);
        t
    }

    #[test]
    fn replays_are_always_caught() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut c = ReplayCache::new(10_000, 1e-6);
        let tags: Vec<_> = (0..10_000).map(|_| tag(&mut rng)).collect();
        for t in &tags {
            c.check_and_insert(t);
        }
        for t in &tags {
            assert!(!c.check_and_insert(t));
            assert!(c.contains(t));
        }
    }

    #[test]
    fn fresh_tags_false_positive_rate_stays_within_bound() {
        // Fill to capacity at a loose target so the measurement has power,
        // then count false positives among 200k fresh tags.
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let target = 1e-3;
        let mut c = ReplayCache::new(50_000, target);
        let mut accepted = 0u64;
        for _ in 0..50_000 {
            if c.check_and_insert(&tag(&mut rng)) {
                accepted += 1;
            }
        }
        // Fresh tags inserted while filling: rejections are false positives too.
        let fill_fp = 50_000 - accepted;
        let trials = 200_000u64;
        let fp = (0..trials).filter(|_| c.contains(&tag(&mut rng))).count() as f64;
        let rate = fp / trials as f64;
        assert!(rate <= target * 1.5, "fp rate {rate} above target {target}");
        assert!((fill_fp as f64) <= 50_000.0 * target, "fill fp {fill_fp}");
        assert!(c.current_false_positive_rate() <= target * 1.2);
    }

    #[test]
    fn memory_is_fixed_by_capacity() {
        let c = ReplayCache::new(1_000_000, DEFAULT_FALSE_POSITIVE_RATE);
        // 28.8 bits per entry at 1e-6.
        assert!(c.memory_bytes() > 3_500_000 && c.memory_bytes() < 3_700_000);
        let mut c2 = ReplayCache::new(100, 1e-6);
        let before = c2.memory_bytes();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        for _ in 0..10_000 {
            c2.check_and_insert(&tag(&mut rng));
        }
        assert_eq!(c2.memory_bytes(), before);
        assert!(c2.fill() > 1.0);
    }
}
