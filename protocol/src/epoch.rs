//! Epoch arithmetic. Time is always an argument: milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

/// When epochs start and how long they last. Epoch `n` covers
/// `[genesis_ms + n * length_ms, genesis_ms + (n + 1) * length_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochSchedule {
    /// Start of epoch 0, Unix milliseconds.
    pub genesis_ms: u64,
    /// Length of every epoch, milliseconds; never zero.
    pub length_ms: u64,
}

impl EpochSchedule {
    /// A schedule; `None` if `length_ms` is zero.
    pub fn new(genesis_ms: u64, length_ms: u64) -> Option<Self> {
        (length_ms > 0).then_some(Self {
            genesis_ms,
            length_ms,
        })
    }

    /// The epoch that contains `now_ms`. Times before genesis belong to epoch 0.
    pub fn epoch_at(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.genesis_ms) / self.length_ms.max(1)
    }

    /// First millisecond of `epoch`.
    pub fn start_ms(&self, epoch: u64) -> u64 {
        self.genesis_ms
            .saturating_add(epoch.saturating_mul(self.length_ms))
    }

    /// First millisecond after `epoch`.
    pub fn end_ms(&self, epoch: u64) -> u64 {
        self.start_ms(epoch.saturating_add(1))
    }

    /// Milliseconds from `now_ms` until the next epoch begins.
    pub fn until_next_ms(&self, now_ms: u64) -> u64 {
        self.end_ms(self.epoch_at(now_ms)).saturating_sub(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_length_is_refused() {
        assert!(EpochSchedule::new(0, 0).is_none());
    }

    #[test]
    fn boundaries() {
        let s = EpochSchedule::new(1_000, 100).unwrap();
        assert_eq!(s.epoch_at(0), 0);
        assert_eq!(s.epoch_at(1_099), 0);
        assert_eq!(s.epoch_at(1_100), 1);
        assert_eq!(s.start_ms(3), 1_300);
        assert_eq!(s.end_ms(3), 1_400);
        assert_eq!(s.until_next_ms(1_350), 50);
    }

    proptest! {
        #[test]
        fn epoch_contains_its_time(genesis in 0u64..1u64<<40, len in 1u64..1u64<<24, t in 0u64..1u64<<44) {
            let s = EpochSchedule::new(genesis, len).unwrap();
            let e = s.epoch_at(t);
            if t >= genesis {
                prop_assert!(s.start_ms(e) <= t && t < s.end_ms(e));
            } else {
                prop_assert_eq!(e, 0);
            }
        }
    }
}
