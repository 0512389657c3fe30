//! Per-epoch Sphinx keys, each bound to its own replay cache.
//!
//! A key and its cache live and die together: a cache is never cleared
//! while its key can still unwrap packets, so no replay slips through.

use crate::Error;
use crate::packet::{self, Peeled, ReplayStep};
use crate::replay::ReplayCache;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use x25519_dalek::{PublicKey, StaticSecret};

/// Whether the x25519 public key `public` is not of small order.
///
/// A small-order key (one of the points of order 1, 2, 4 or 8 on
/// Curve25519 or its twist, in any of its encodings) makes every
/// Diffie-Hellman with it all-zero, whatever the other side's secret: the
/// "shared" secret then follows from public values. Any clamped scalar is
/// a multiple of 8 smaller than 8·ℓ, so X25519 with a fixed clamped scalar
/// is all-zero exactly for these keys.
pub fn is_contributory_key(public: &[u8; 32]) -> bool {
    // Not a secret: a fixed probe scalar (clamped on use).
    let probe = StaticSecret::from([0x55; 32]);
    probe
        .diffie_hellman(&PublicKey::from(*public))
        .was_contributory()
}

/// One epoch's Sphinx secret and the replay tags seen under it.
pub struct EpochKey {
    epoch: u64,
    secret: StaticSecret,
    public: [u8; 32],
    replay: Mutex<ReplayCache>,
}

impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKey")
            .field("epoch", &self.epoch)
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl EpochKey {
    /// Binds `secret` to a fresh replay cache.
    pub fn new(epoch: u64, secret: StaticSecret, replay: ReplayCache) -> Self {
        let public = PublicKey::from(&secret).to_bytes();
        Self {
            epoch,
            secret,
            public,
            replay: Mutex::new(replay),
        }
    }

    /// The epoch this key serves.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The public half, as published in the node's descriptor.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// Peels one layer; the expensive crypto runs without holding the cache lock.
    pub fn peel(&self, packet: &[u8]) -> Result<Peeled, Error> {
        packet::peel(packet, &self.secret, |tag, step| {
            // A poisoned lock means another worker panicked mid-insert; the
            // filter's bits are still valid, so keep using them.
            let mut cache = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            match step {
                ReplayStep::Look => cache.would_accept(tag),
                ReplayStep::Record => cache.check_and_insert(tag),
            }
        })
    }

    /// Entries recorded and fill fraction of the replay cache.
    pub fn replay_stats(&self) -> (u64, f64) {
        let cache = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        (cache.len(), cache.fill())
    }
}

/// The keys a node currently holds, by epoch.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: BTreeMap<u64, Arc<EpochKey>>,
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key for its epoch.
    pub fn insert(&mut self, key: EpochKey) {
        self.keys.insert(key.epoch, Arc::new(key));
    }

    /// The key for `epoch`, if held.
    pub fn get(&self, epoch: u64) -> Option<Arc<EpochKey>> {
        self.keys.get(&epoch).cloned()
    }

    /// Epochs held, oldest first.
    pub fn epochs(&self) -> Vec<u64> {
        self.keys.keys().copied().collect()
    }

    /// Drops every key (and its replay cache) older than `epoch`; returns the epochs dropped.
    pub fn retire_before(&mut self, epoch: u64) -> Vec<u64> {
        let keep = self.keys.split_off(&epoch);
        let old = std::mem::replace(&mut self.keys, keep);
        old.into_keys().collect()
    }

    /// Peels `packet` with the key for `epoch`. Unknown epochs fail before any crypto.
    pub fn peel(&self, epoch: u64, packet: &[u8]) -> Result<Peeled, Error> {
        self.keys
            .get(&epoch)
            .ok_or(Error::UnknownEpoch(epoch))?
            .peel(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Hop, build_packet, sphinx_keypair};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::time::Duration;

    /// The small-order u-coordinates (RFC 7748 §7; libsodium's blocklist):
    /// 0, 1, the two of order 8, p−1, p and p+1, little-endian.
    fn small_order_points() -> Vec<[u8; 32]> {
        fn hex32(h: &str) -> [u8; 32] {
            let mut out = [0u8; 32];
            out.copy_from_slice(&hex::decode(h).unwrap());
            out
        }
        // p = 2^255 − 19
        let mut p = [0xff; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut p_minus_1 = p;
        p_minus_1[0] = 0xec;
        let mut p_plus_1 = p;
        p_plus_1[0] = 0xee;
        let mut one = [0u8; 32];
        one[0] = 1;
        vec![
            [0u8; 32],
            one,
            hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            hex32("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            p_minus_1,
            p,
            p_plus_1,
        ]
    }

    #[test]
    fn small_order_keys_are_not_contributory() {
        let points = small_order_points();
        assert_eq!(points.len(), 7);
        for (i, point) in points.iter().enumerate() {
            assert!(!is_contributory_key(point), "point {i}");
            // X25519 ignores bit 255: the same points with it set.
            let mut high = *point;
            high[31] |= 0x80;
            assert!(!is_contributory_key(&high), "point {i} with bit 255 set");
            // And the property the helper promises: a DH with any secret is all-zero.
            let mut rng = ChaCha20Rng::seed_from_u64(i as u64);
            let (s, _) = sphinx_keypair(&mut rng);
            assert_eq!(
                s.diffie_hellman(&PublicKey::from(*point)).as_bytes(),
                &[0u8; 32]
            );
        }
    }

    #[test]
    fn ordinary_keys_are_contributory() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        for _ in 0..64 {
            let (_, p) = sphinx_keypair(&mut rng);
            assert!(is_contributory_key(&p));
        }
        // The base point (u = 9) and u = 2 (a twist point of large order).
        let mut nine = [0u8; 32];
        nine[0] = 9;
        assert!(is_contributory_key(&nine));
        let mut two = [0u8; 32];
        two[0] = 2;
        assert!(is_contributory_key(&two));
    }

    #[test]
    fn replay_is_rejected_per_key_and_retiring_drops_both() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let (s, p) = sphinx_keypair(&mut rng);
        let mut ring = KeyRing::new();
        ring.insert(EpochKey::new(5, s, ReplayCache::new(1000, 1e-6)));
        let hop = Hop {
            id: [1; 32],
            sphinx_key: p,
        };
        let pkt =
            build_packet(&mut rng, &[hop], &[0; 32], [0; 16], &[Duration::ZERO], b"m").unwrap();
        assert!(ring.peel(5, &pkt).is_ok());
        assert_eq!(ring.peel(5, &pkt).unwrap_err(), Error::Replay);
        assert_eq!(ring.peel(6, &pkt).unwrap_err(), Error::UnknownEpoch(6));
        assert_eq!(ring.retire_before(6), vec![5]);
        assert_eq!(ring.peel(5, &pkt).unwrap_err(), Error::UnknownEpoch(5));
    }

    fn one_hop_packet(seed: u64) -> (EpochKey, Vec<u8>) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (s, p) = sphinx_keypair(&mut rng);
        let hop = Hop {
            id: [1; 32],
            sphinx_key: p,
        };
        let pkt =
            build_packet(&mut rng, &[hop], &[0; 32], [0; 16], &[Duration::ZERO], b"m").unwrap();
        (EpochKey::new(5, s, ReplayCache::new(1000, 1e-6)), pkt)
    }

    #[test]
    fn a_forgery_reusing_alpha_does_not_spoil_the_genuine_packet() {
        let (key, pkt) = one_hop_packet(12);
        // Same alpha (so the same replay tag), one bit of beta flipped: the
        // header MAC fails, and the tag must not be recorded.
        let mut forged = pkt.clone();
        forged[32 + 16 + 7] ^= 1;
        assert!(matches!(key.peel(&forged), Err(Error::InvalidPacket(_))));
        assert_eq!(key.replay_stats().0, 0, "nothing recorded");
        assert!(key.peel(&pkt).is_ok(), "the genuine packet still goes on");
        assert_eq!(key.peel(&pkt).unwrap_err(), Error::Replay);
        // Once the tag is recorded, the forgery counts as a replay.
        assert_eq!(key.peel(&forged).unwrap_err(), Error::Replay);
    }

    #[test]
    fn copies_peeled_at_once_go_on_exactly_once() {
        const COPIES: usize = 4;
        for seed in 0..8 {
            let (key, pkt) = one_hop_packet(100 + seed);
            let start = std::sync::Barrier::new(COPIES);
            let results: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..COPIES)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            key.peel(&pkt)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ok = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(ok, 1, "seed {seed}: {results:?}");
            assert!(
                results
                    .iter()
                    .all(|r| r.is_ok() || *r.as_ref().unwrap_err() == Error::Replay)
            );
        }
    }
}
