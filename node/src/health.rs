//! The node's `/readyz` checks: it holds a fresh topology, it is in it,
//! its clock agrees with the directory's, and its own loops come back.
//! [`checks`] is a pure function of a [`Snapshot`] (time is an argument),
//! so every verdict is tested without a network.

use net::health::Check;
use protocol::clock::ClockWatch;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How long without a loop back on time before `links` fails, and how long
/// loops must have been sent before it is judged at all. At the default
/// λ_M of one loop a second, two minutes is over a hundred loops: only a
/// node none of whose routes work fails it.
pub const LINKS_WINDOW_MS: u64 = 120_000;

/// A topology refreshed longer ago than this many refresh periods is stale.
pub const STALE_REFRESHES: u64 = 3;

/// What the packet path records for the checks (wall-clock ms; 0 = never).
#[derive(Default)]
pub(crate) struct HealthState {
    pub(crate) last_refresh_ms: AtomicU64,
    pub(crate) loops_since_ms: AtomicU64,
    pub(crate) last_loop_back_ms: AtomicU64,
    /// How far the node's clock is from the directory's (its refreshes
    /// observe it and warn on the news).
    pub(crate) clock: Mutex<ClockWatch>,
}

impl HealthState {
    pub(crate) fn refreshed(&self, now_ms: u64) {
        self.last_refresh_ms.store(now_ms, Relaxed);
    }

    pub(crate) fn loop_sent(&self, now_ms: u64) {
        let _ = self
            .loops_since_ms
            .compare_exchange(0, now_ms, Relaxed, Relaxed);
    }

    pub(crate) fn loop_back(&self, now_ms: u64) {
        self.last_loop_back_ms.store(now_ms, Relaxed);
    }
}

/// Everything the checks look at, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Now, wall-clock ms.
    pub now_ms: u64,
    /// The node's `topology_refresh_secs`, in ms.
    pub refresh_period_ms: u64,
    /// Last successful topology refresh (0 = never).
    pub last_refresh_ms: u64,
    /// The current topology's epoch, and whether this node is in it.
    pub topology: Option<(u64, bool)>,
    /// Directory's clock − ours, ms, once estimated.
    pub clock_offset_ms: Option<i64>,
    /// Loop cover: when the first loop left and the last came back on time
    /// (0 = never); `None` when the node sends no loops (`dangerous_no_cover`).
    pub loops: Option<(u64, u64)>,
}

impl HealthState {
    pub(crate) fn snapshot(
        &self,
        now_ms: u64,
        refresh_period_ms: u64,
        topology: Option<(u64, bool)>,
        loops_on: bool,
    ) -> Snapshot {
        Snapshot {
            now_ms,
            refresh_period_ms,
            last_refresh_ms: self.last_refresh_ms.load(Relaxed),
            topology,
            clock_offset_ms: self
                .clock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .offset_ms(),
            loops: loops_on.then(|| {
                (
                    self.loops_since_ms.load(Relaxed),
                    self.last_loop_back_ms.load(Relaxed),
                )
            }),
        }
    }
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    format!("{} s ago", now_ms.saturating_sub(then_ms) / 1000)
}

/// The node's checks: `topology`, `registered`, `clock`, `links`.
pub fn checks(s: &Snapshot) -> Vec<Check> {
    let mut out = Vec::with_capacity(4);
    let stale_after = STALE_REFRESHES * s.refresh_period_ms.max(1000);
    out.push(if s.last_refresh_ms == 0 {
        Check::fail(
            "topology",
            "no valid topology from the authorities yet (are they reachable, and their keys right?)",
        )
    } else if s.now_ms.saturating_sub(s.last_refresh_ms) > stale_after {
        Check::fail(
            "topology",
            format!(
                "last refreshed {}: the authorities do not answer with a valid topology; \
                 routing by the last one",
                ago(s.now_ms, s.last_refresh_ms)
            ),
        )
    } else {
        Check::pass("topology", "")
    });
    out.push(match s.topology {
        Some((_, true)) => Check::pass("registered", ""),
        Some((epoch, false)) => Check::fail(
            "registered",
            format!(
                "not in the topology of epoch {epoch}: not admitted by the authorities yet \
                 (umbra directory admit), or the registration has not been published"
            ),
        ),
        None => Check::fail("registered", "no topology yet"),
    });
    out.push(match s.clock_offset_ms {
        Some(off) if off.unsigned_abs() > protocol::clock::CLOCK_WARN_MS => Check::fail(
            "clock",
            format!(
                "this node's clock is {} the directory's (bound {} s): fix it (NTP)",
                protocol::clock::describe(off),
                protocol::clock::CLOCK_WARN_MS / 1000
            ),
        ),
        Some(_) => Check::pass("clock", ""),
        None => Check::pass("clock", "no estimate yet"),
    });
    out.push(match s.loops {
        None => Check::pass(
            "links",
            "skipped: dangerous_no_cover (no loops to judge by)",
        ),
        Some((0, _)) => Check::pass("links", "no loops sent yet"),
        Some((since, _)) if s.now_ms.saturating_sub(since) < LINKS_WINDOW_MS => Check::pass(
            "links",
            format!(
                "loops sent for {} s; judged after {} s",
                s.now_ms.saturating_sub(since) / 1000,
                LINKS_WINDOW_MS / 1000
            ),
        ),
        Some((_, back)) if back != 0 && s.now_ms.saturating_sub(back) <= LINKS_WINDOW_MS => {
            Check::pass("links", "")
        }
        Some((_, back)) => Check::fail(
            "links",
            format!(
                "no loop came back on time in the last {} s (last: {}): this node's links, \
                 or every route through the mixnet, drop its packets",
                LINKS_WINDOW_MS / 1000,
                if back == 0 {
                    "never".to_string()
                } else {
                    ago(s.now_ms, back)
                }
            ),
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn healthy() -> Snapshot {
        Snapshot {
            now_ms: T0,
            refresh_period_ms: 30_000,
            last_refresh_ms: T0 - 10_000,
            topology: Some((7, true)),
            clock_offset_ms: Some(1_500),
            loops: Some((T0 - 600_000, T0 - 3_000)),
        }
    }

    fn failed(s: &Snapshot) -> Vec<&'static str> {
        checks(s)
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_healthy_node_passes_every_check() {
        assert!(failed(&healthy()).is_empty(), "{:?}", checks(&healthy()));
    }

    #[test]
    fn each_fault_fails_its_own_check_only() {
        let h = healthy();
        let never = Snapshot {
            last_refresh_ms: 0,
            topology: None,
            clock_offset_ms: None,
            loops: Some((0, 0)),
            ..h
        };
        assert_eq!(failed(&never), ["topology", "registered"]);
        // Stale beyond three refresh periods, not before.
        let stale = Snapshot {
            last_refresh_ms: T0 - 90_001,
            ..h
        };
        assert_eq!(failed(&stale), ["topology"]);
        let fresh_enough = Snapshot {
            last_refresh_ms: T0 - 90_000,
            ..h
        };
        assert!(failed(&fresh_enough).is_empty());
        let unlisted = Snapshot {
            topology: Some((7, false)),
            ..h
        };
        assert_eq!(failed(&unlisted), ["registered"]);
        let skewed = Snapshot {
            clock_offset_ms: Some(-(protocol::clock::CLOCK_WARN_MS as i64) - 1),
            ..h
        };
        assert_eq!(failed(&skewed), ["clock"]);
        let dead_links = Snapshot {
            loops: Some((T0 - 600_000, T0 - LINKS_WINDOW_MS - 1)),
            ..h
        };
        assert_eq!(failed(&dead_links), ["links"]);
        let never_back = Snapshot {
            loops: Some((T0 - LINKS_WINDOW_MS, 0)),
            ..h
        };
        assert_eq!(failed(&never_back), ["links"]);
    }

    #[test]
    fn links_are_not_judged_while_loops_warm_up_or_without_cover() {
        let h = healthy();
        let warming = Snapshot {
            loops: Some((T0 - LINKS_WINDOW_MS + 1, 0)),
            ..h
        };
        assert!(failed(&warming).is_empty());
        let no_cover = Snapshot { loops: None, ..h };
        let c = checks(&no_cover);
        assert!(c.iter().all(|c| c.ok));
        assert!(c[3].detail.contains("dangerous_no_cover"), "{:?}", c[3]);
    }

    #[test]
    fn the_state_records_the_first_loop_and_the_latest_return() {
        let s = HealthState::default();
        s.loop_sent(5);
        s.loop_sent(9);
        s.loop_back(7);
        s.loop_back(11);
        s.refreshed(3);
        let _ = s.clock.lock().unwrap().observe(-4);
        let snap = s.snapshot(20, 1000, None, true);
        assert_eq!(snap.loops, Some((5, 11)));
        assert_eq!(snap.last_refresh_ms, 3);
        assert_eq!(snap.clock_offset_ms, Some(-4));
        assert_eq!(s.snapshot(20, 1000, None, false).loops, None);
    }
}
