//! Per-epoch Sphinx keys, each bound to its own replay cache.
//!
//! A key and its cache live and die together: a cache is never cleared
//! while its key can still unwrap packets, so no replay slips through.

use crate::Error;
use crate::packet::{self, Peeled};
use crate::replay::ReplayCache;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use x25519_dalek::{PublicKey, StaticSecret};

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
        packet::peel(packet, &self.secret, |tag| {
            // A poisoned lock means another worker panicked mid-insert; the
            // filter's bits are still valid, so keep using them.
            let mut cache = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            cache.check_and_insert(tag)
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
}
