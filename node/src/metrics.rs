use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The mix node's Prometheus series.
#[derive(Clone)]
pub struct Metrics {
    /// Packets handed to the Sphinx workers.
    pub received: IntCounter,
    /// Packets sent on to their next hop.
    pub forwarded: IntCounter,
    /// Packets dropped, by reason.
    pub dropped: IntCounterVec,
    /// Packets waiting, by queue (`workers`, `delay`).
    pub queue_depth: IntGaugeVec,
    /// `queue_depth{queue="workers"}`, looked up once (not per packet).
    pub workers_queue: IntGauge,
    /// `queue_depth{queue="delay"}`.
    pub delay_queue: IntGauge,
    /// Time to peel one packet.
    pub processing: Histogram,
    /// Nodes in the topology the node routes by.
    pub topology_nodes: IntGauge,
    /// Fill of the current epoch key's replay cache (entries).
    pub replay_entries: IntGauge,
    /// Sphinx keys held (previous, current, next epoch while in grace).
    pub sphinx_keys: IntGauge,
    /// The oldest epoch whose key (and replay cache) the node still holds:
    /// packets of older epochs are dropped as `unknown_epoch`.
    pub sphinx_key_oldest_epoch: IntGauge,
    /// The node's own loop cover packets sent (rate λ_M).
    pub loops_sent: IntCounter,
    /// Loops back within their expected time.
    pub loops_returned: IntCounter,
    /// Loops back after their expected time: a hop held them too long.
    pub loops_late: IntCounter,
    /// Loops never back: a broken route, or packets dropped on purpose (n−1 attack).
    pub loops_lost: IntCounter,
    /// Topology refreshes that failed (no authority answered with a valid
    /// document): the node routes by the last one it verified.
    pub topology_refresh_failures: IntCounter,
    /// The directory's clock minus the node's, seconds (from the authorities'
    /// `Date` header at the last refresh).
    pub clock_offset_seconds: IntGauge,
}

fn bug<T>(e: prometheus::Error) -> T {
    // Static metric definitions: failing here is a programming error.
    #[allow(clippy::panic)]
    {
        panic!("metric definition: {e}")
    }
}

impl Metrics {
    /// Creates the series named `umbra_<role>_*` and registers them.
    pub fn new(registry: &Registry, role: &str) -> Self {
        let n = |s: &str| format!("umbra_{role}_{s}");
        let queue_depth = IntGaugeVec::new(
            Opts::new(n("queue_depth"), "Packets waiting, by queue"),
            &["queue"],
        )
        .unwrap_or_else(bug);
        let m = Self {
            received: IntCounter::new(
                n("packets_received_total"),
                "Packets received for processing",
            )
            .unwrap_or_else(bug),
            forwarded: IntCounter::new(
                n("packets_forwarded_total"),
                "Packets forwarded to the next hop",
            )
            .unwrap_or_else(bug),
            dropped: IntCounterVec::new(
                Opts::new(n("packets_dropped_total"), "Packets dropped, by reason"),
                &["reason"],
            )
            .unwrap_or_else(bug),
            workers_queue: queue_depth.with_label_values(&["workers"]),
            delay_queue: queue_depth.with_label_values(&["delay"]),
            queue_depth,
            processing: Histogram::with_opts(
                HistogramOpts::new(n("processing_seconds"), "Time to peel one Sphinx layer")
                    .buckets(vec![
                        50e-6, 100e-6, 150e-6, 200e-6, 300e-6, 500e-6, 1e-3, 2e-3, 5e-3,
                    ]),
            )
            .unwrap_or_else(bug),
            topology_nodes: IntGauge::new(n("topology_nodes"), "Nodes in the routing topology")
                .unwrap_or_else(bug),
            replay_entries: IntGauge::new(
                n("replay_cache_entries"),
                "Tags in the current key's replay cache",
            )
            .unwrap_or_else(bug),
            sphinx_keys: IntGauge::new(n("sphinx_keys"), "Sphinx keys held (one per epoch)")
                .unwrap_or_else(bug),
            sphinx_key_oldest_epoch: IntGauge::new(
                n("sphinx_key_oldest_epoch"),
                "Oldest epoch whose Sphinx key is still held",
            )
            .unwrap_or_else(bug),
            loops_sent: IntCounter::new(n("loops_sent_total"), "Own loop cover packets sent")
                .unwrap_or_else(bug),
            loops_returned: IntCounter::new(
                n("loops_returned_total"),
                "Own loops back within their expected time",
            )
            .unwrap_or_else(bug),
            loops_late: IntCounter::new(
                n("loops_late_total"),
                "Own loops back after their expected time (a hop held them)",
            )
            .unwrap_or_else(bug),
            loops_lost: IntCounter::new(
                n("loops_lost_total"),
                "Own loops never back (broken route or n-1 attack)",
            )
            .unwrap_or_else(bug),
            topology_refresh_failures: IntCounter::new(
                n("topology_refresh_failures_total"),
                "Topology refreshes that failed (the node keeps the last valid topology)",
            )
            .unwrap_or_else(bug),
            clock_offset_seconds: IntGauge::new(
                n("clock_offset_seconds"),
                "Directory clock minus this node's clock, seconds",
            )
            .unwrap_or_else(bug),
        };
        for c in [
            Box::new(m.received.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.forwarded.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.processing.clone()),
            Box::new(m.topology_nodes.clone()),
            Box::new(m.replay_entries.clone()),
            Box::new(m.sphinx_keys.clone()),
            Box::new(m.sphinx_key_oldest_epoch.clone()),
            Box::new(m.loops_sent.clone()),
            Box::new(m.loops_returned.clone()),
            Box::new(m.loops_late.clone()),
            Box::new(m.loops_lost.clone()),
            Box::new(m.topology_refresh_failures.clone()),
            Box::new(m.clock_offset_seconds.clone()),
        ] {
            registry.register(c).unwrap_or_else(bug);
        }
        // Make every reason visible from the start, at zero.
        for r in Self::DROP_REASONS {
            m.dropped.with_label_values(&[r]);
        }
        m
    }

    /// Counts one dropped packet.
    pub fn drop(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    /// Every reason a node counts a dropped packet under (the last four
    /// only on gateways).
    pub const DROP_REASONS: [&'static str; 10] = [
        "malformed",
        "replay",
        "unknown_epoch",
        "unknown_next_hop",
        "queue_full",
        "unexpected_final",
        "no_client",
        "bad_first_hop",
        "too_many_clients",
        "downlink_full",
    ];

    /// Packets dropped for any reason.
    pub fn total_dropped(&self) -> u64 {
        Self::DROP_REASONS.iter().map(|r| self.dropped(r)).sum()
    }

    /// Dropped packets with `reason`.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped.with_label_values(&[reason]).get()
    }
}
