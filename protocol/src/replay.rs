//! Replay cache: Bloom filters of Sphinx replay tags, one cache per epoch key.
//!
//! A false positive drops one fresh packet; it never lets a replay through
//! (Bloom filters have no false negatives). The cache is a stack of filter
//! segments: the first sized for an eighth of the design capacity (rate ×
//! key lifetime), each next one twice the last with half its false-positive
//! rate, so that whatever the fill, the chance a fresh tag is refused stays
//! under the target: Σ target/2 · 2^-i < target. Memory follows what was
//! inserted, not the worst case, and an attacker who sends at the node's
//! full line rate for a whole epoch only makes it grow. Past
//! [`HARD_LIMIT`] × the design capacity the cache **fails closed**: every
//! packet counts as a replay (dropped) until the key is erased, and
//! [`ReplayCache::saturated`] says so.

use crate::packet::ReplayTag;

/// Default false-positive rate: one fresh packet in 10^6.
pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 1e-6;

/// Tags a cache takes, as a multiple of its design capacity, before it
/// fails closed.
pub const HARD_LIMIT: u64 = 4;

/// One Bloom filter.
#[derive(Debug, Clone)]
struct Segment {
    bits: Vec<u64>,
    m_bits: u64,
    k: u32,
    inserted: u64,
    capacity: u64,
}

impl Segment {
    fn new(capacity: u64, fp_rate: f64) -> Self {
        let capacity = capacity.max(1);
        let p = fp_rate.clamp(1e-15, 0.5);
        let ln2 = std::f64::consts::LN_2;
        let m = (-(capacity as f64) * p.ln() / (ln2 * ln2)).ceil().max(64.0) as u64;
        let k = ((m as f64 / capacity as f64) * ln2)
            .round()
            .clamp(1.0, 48.0) as u32;
        let words = m.div_ceil(64);
        Self {
            bits: vec![0; words as usize],
            m_bits: words * 64,
            k,
            inserted: 0,
            capacity,
        }
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

    fn contains(&self, tag: &ReplayTag) -> bool {
        self.indices(tag)
            .all(|i| self.bits[(i / 64) as usize] & (1u64 << (i % 64)) != 0)
    }

    fn insert(&mut self, tag: &ReplayTag) {
        for i in self.indices(tag) {
            self.bits[(i / 64) as usize] |= 1u64 << (i % 64);
        }
        self.inserted += 1;
    }

    fn false_positive_rate(&self) -> f64 {
        let k = f64::from(self.k);
        (1.0 - (-k * self.inserted as f64 / self.m_bits as f64).exp()).powf(k)
    }
}

/// Replay tags of one epoch key: growing Bloom segments, failing closed
/// past [`HARD_LIMIT`] × capacity.
#[derive(Debug, Clone)]
pub struct ReplayCache {
    segments: Vec<Segment>,
    /// Tags the cache was sized for.
    capacity: u64,
    /// The false-positive rate it keeps at any fill.
    fp_rate: f64,
    inserted: u64,
    /// Benchmark soak only: record tags, refuse none.
    accept_replays: bool,
}

impl ReplayCache {
    /// A cache for `capacity` tags (more are taken, up to [`HARD_LIMIT`] ×)
    /// whose false-positive rate stays under `fp_rate` (clamped to
    /// 1e-12..0.5) at any fill.
    pub fn new(capacity: u64, fp_rate: f64) -> Self {
        let capacity = capacity.max(1);
        let fp_rate = fp_rate.clamp(1e-12, 0.5);
        Self {
            segments: Vec::new(),
            capacity,
            fp_rate,
            inserted: 0,
            accept_replays: false,
        }
    }

    /// A cache sized for `packets_per_sec` sustained over `lifetime_secs`.
    pub fn for_rate(packets_per_sec: u64, lifetime_secs: u64, fp_rate: f64) -> Self {
        Self::new(packets_per_sec.saturating_mul(lifetime_secs), fp_rate)
    }

    /// DANGEROUS, benchmarks only: the cache still records every tag (the
    /// same memory and work) but refuses none, so a soak can replay a fixed
    /// set of packets for minutes. A node with this accepts replays.
    pub fn dangerous_accept_replays(mut self) -> Self {
        self.accept_replays = true;
        self
    }

    /// Records `tag`; true if it was not seen before (the packet is fresh).
    /// False for every tag once [`Self::saturated`].
    pub fn check_and_insert(&mut self, tag: &ReplayTag) -> bool {
        if self.segments.iter().any(|s| s.contains(tag)) {
            return self.accept_replays;
        }
        if self.saturated() {
            return self.accept_replays;
        }
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.inserted >= s.capacity);
        if full {
            // Segment i: capacity/8 · 2^i tags at rate target/2 · 2^-i.
            let i = self.segments.len().min(40) as u32;
            let cap = self.capacity.div_ceil(8).saturating_mul(1u64 << i.min(32));
            let fp = self.fp_rate / 2.0 / 2f64.powi(i as i32);
            self.segments.push(Segment::new(cap, fp));
        }
        if let Some(s) = self.segments.last_mut() {
            s.insert(tag);
        }
        self.inserted = self.inserted.saturating_add(1);
        true
    }

    /// Whether [`Self::check_and_insert`] would take `tag` as fresh now;
    /// records nothing.
    pub fn would_accept(&self, tag: &ReplayTag) -> bool {
        self.accept_replays || !self.contains(tag)
    }

    /// Whether `tag` would be reported as a replay.
    pub fn contains(&self, tag: &ReplayTag) -> bool {
        self.saturated() || self.segments.iter().any(|s| s.contains(tag))
    }

    /// True once the cache took [`HARD_LIMIT`] × its capacity: every packet
    /// is then refused (fail closed) until the key is erased.
    pub fn saturated(&self) -> bool {
        self.inserted >= self.capacity.saturating_mul(HARD_LIMIT)
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

    /// Fraction of capacity used (it takes up to [`HARD_LIMIT`]).
    pub fn fill(&self) -> f64 {
        self.inserted as f64 / self.capacity as f64
    }

    /// Bytes of memory the filters hold.
    pub fn memory_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.bits.len() * 8).sum()
    }

    /// The chance that a fresh tag is refused now: 1 − Π(1 − pᵢ) over the
    /// segments' rates at their fill.
    pub fn current_false_positive_rate(&self) -> f64 {
        1.0 - self
            .segments
            .iter()
            .map(|s| 1.0 - s.false_positive_rate())
            .product::<f64>()
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
            assert!(!c.would_accept(t));
            assert!(!c.check_and_insert(t));
            assert!(c.contains(t));
        }
        let fresh = tag(&mut rng);
        assert!(c.would_accept(&fresh));
        assert!(c.would_accept(&fresh), "looking records nothing");
        assert!(c.check_and_insert(&fresh), "nor did the looks");
        assert!(!c.would_accept(&fresh));
        // The soak's cache records tags but refuses none, at the look too.
        let mut soak = ReplayCache::new(100, 1e-6).dangerous_accept_replays();
        assert!(soak.check_and_insert(&fresh));
        assert!(soak.would_accept(&fresh) && soak.check_and_insert(&fresh));
        assert!(soak.contains(&fresh));
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
    fn memory_follows_the_fill_and_the_rate_holds_past_capacity() {
        let mut c = ReplayCache::new(1_000_000, DEFAULT_FALSE_POSITIVE_RATE);
        assert_eq!(c.memory_bytes(), 0, "nothing until the first tag");
        assert!(c.check_and_insert(&[7; 32]));
        // An eighth of the capacity at half the rate: 30 bits per tag.
        assert!(c.memory_bytes() > 450_000 && c.memory_bytes() < 500_000);
        // Three times the capacity, at a loose target so the measurement
        // has power: the rate stays under it, replays are all caught.
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let target = 1e-3;
        let mut c = ReplayCache::new(20_000, target);
        let tags: Vec<_> = (0..60_000).map(|_| tag(&mut rng)).collect();
        let refused = tags.iter().filter(|t| !c.check_and_insert(t)).count();
        assert!(
            (refused as f64) < 60_000.0 * target,
            "{refused} fresh refused"
        );
        assert!(tags.iter().all(|t| c.contains(t)));
        assert!(c.current_false_positive_rate() < target);
        let trials = 200_000u64;
        let fp = (0..trials).filter(|_| c.contains(&tag(&mut rng))).count() as f64;
        assert!(
            fp / (trials as f64) < target,
            "fp rate {}",
            fp / trials as f64
        );
        assert!(c.fill() > 2.9 && !c.saturated());
        // Past HARD_LIMIT × capacity it fails closed.
        let mut n = 0;
        while !c.saturated() {
            c.check_and_insert(&tag(&mut rng));
            n += 1;
            assert!(n < 30_000);
        }
        assert!(!c.check_and_insert(&tag(&mut rng)));
        assert!(c.contains(&tag(&mut rng)));
        assert!(!c.would_accept(&tag(&mut rng)), "the look fails closed too");
        assert_eq!(c.len(), 20_000 * HARD_LIMIT);
    }
}
