//! Clocks: how far a process's wall clock is from the network's, when to
//! warn about it, the coarse timestamps fetches carry, and how long a
//! topology's keys stay usable. Sans-IO: every time is an argument.
//!
//! Nodes and clients learn their offset from the directory authorities'
//! answers (the HTTP `Date` header, whole seconds) and clients also from a
//! gateway's [`crate::messages::Refused`] reply. A clock further off than
//! [`CLOCK_WARN_MS`] is warned about once (and once more if it comes back
//! and drifts off again).

use crate::topology::TopologyDocument;

/// How far a clock may be off the directory's before the process warns:
/// the topology freshness tolerance ([`crate::topology::CLOCK_SKEW_MS`]).
pub const CLOCK_WARN_MS: u64 = crate::topology::CLOCK_SKEW_MS;

/// Fetch timestamps are rounded down to this (one minute): they say no more
/// about the sender's clock than the gateway's window needs.
pub const FETCH_TIME_GRAIN_MS: u64 = 60_000;

/// How long into the next epoch nodes keep the previous epoch's Sphinx key
/// beyond three maximal delays (for packets in flight and clients that have
/// not refreshed yet). Nodes erase it after `3 · max_delay_ms + KEY_GRACE_MS`.
pub const KEY_GRACE_MS: u64 = 120_000;

/// A fetch timestamp: `now_ms` rounded down to [`FETCH_TIME_GRAIN_MS`].
pub fn coarse(now_ms: u64) -> u64 {
    now_ms - now_ms % FETCH_TIME_GRAIN_MS
}

/// Until when (Unix ms) packets built with `doc`'s keys are peeled: the end
/// of its epoch plus the nodes' key grace (`3 · params.max_delay_ms +
/// KEY_GRACE_MS`), but no later than the end of the next epoch (nodes keep
/// one previous epoch's key at most). After that the nodes have erased
/// those keys.
pub fn keys_usable_until(doc: &TopologyDocument) -> u64 {
    let grace = doc
        .params
        .max_delay_ms
        .saturating_mul(3)
        .saturating_add(KEY_GRACE_MS)
        .min(doc.schedule.length_ms);
    doc.valid_until_ms.saturating_add(grace)
}

/// The offset (server − local, ms) that an answer stamped `server_s` (Unix
/// seconds, as in an HTTP `Date` header) implies, for a request sent at
/// `sent_ms` and answered at `received_ms` on the local clock. The server
/// stamped it somewhere in its second and somewhere in the round trip: the
/// middle of both is taken, so the error is at most half of each.
pub fn offset_ms(sent_ms: u64, received_ms: u64, server_s: u64) -> i64 {
    let server = server_s as i128 * 1000 + 500;
    let local = (sent_ms as i128 + received_ms.max(sent_ms) as i128) / 2;
    (server - local).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// What a new offset estimate means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockNews {
    /// The clock is now further off than [`CLOCK_WARN_MS`] (it was not, or
    /// this is the first estimate): warn, once.
    Off {
        /// server − local, ms: positive means the local clock is behind.
        offset_ms: i64,
    },
    /// It is within the bound again.
    Back {
        /// server − local, ms.
        offset_ms: i64,
    },
}

/// Tracks a process's clock offset and says when to warn.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClockWatch {
    offset_ms: Option<i64>,
    off: bool,
    warnings: u64,
}

impl ClockWatch {
    /// No estimate yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a new estimate; news when it crosses the bound either way.
    pub fn observe(&mut self, offset_ms: i64) -> Option<ClockNews> {
        self.offset_ms = Some(offset_ms);
        let off = offset_ms.unsigned_abs() > CLOCK_WARN_MS;
        if off == self.off {
            return None;
        }
        self.off = off;
        if off {
            self.warnings += 1;
            Some(ClockNews::Off { offset_ms })
        } else {
            Some(ClockNews::Back { offset_ms })
        }
    }

    /// The latest estimate (server − local, ms).
    pub fn offset_ms(&self) -> Option<i64> {
        self.offset_ms
    }

    /// Whether the latest estimate is beyond the bound.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// How many times the clock went off the bound.
    pub fn warnings(&self) -> u64 {
        self.warnings
    }
}

/// "600 s ahead of" / "600 s behind" for an offset (server − local).
pub fn describe(offset_ms: i64) -> String {
    let s = offset_ms.unsigned_abs() as f64 / 1000.0;
    if offset_ms < 0 {
        format!("{s:.0} s ahead of")
    } else {
        format!("{s:.0} s behind")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_from_a_date_stamp() {
        // Local clock 600 s ahead: the server says 1000 s while we read 1600 s.
        let o = offset_ms(1_600_000, 1_600_010, 1000);
        assert!((o + 600_000).abs() <= 1000, "{o}");
        let o = offset_ms(400_000, 400_100, 1000);
        assert!((o - 600_000).abs() <= 1000, "{o}");
        assert_eq!(coarse(1_234_567), 1_200_000);
        assert_eq!(coarse(60_000), 60_000);
    }

    #[test]
    fn warns_once_per_excursion() {
        let mut w = ClockWatch::new();
        assert_eq!(w.observe(1_000), None);
        assert_eq!(
            w.observe(-600_000),
            Some(ClockNews::Off {
                offset_ms: -600_000
            })
        );
        for _ in 0..10 {
            assert_eq!(w.observe(-599_000), None);
        }
        assert_eq!(w.warnings(), 1);
        assert!(w.is_off());
        assert_eq!(w.observe(10), Some(ClockNews::Back { offset_ms: 10 }));
        assert!(matches!(w.observe(70_000), Some(ClockNews::Off { .. })));
        assert_eq!(w.warnings(), 2);
        assert_eq!(describe(-600_000), "600 s ahead of");
        assert_eq!(describe(600_000), "600 s behind");
    }
}
