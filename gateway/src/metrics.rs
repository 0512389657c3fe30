use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Gateway-specific series (the packet path's are `umbra_gateway_packets_*`).
#[derive(Clone)]
pub struct GatewayMetrics {
    /// Messages durably stored.
    pub stored: IntCounter,
    /// Stores refused, by reason (`box_quota`, `gateway_quota`,
    /// `disk_reserve`, `unavailable`).
    pub refused: IntCounterVec,
    /// Fetches, by outcome (`authorised`, `refused`).
    pub fetches: IntCounterVec,
    /// Fetches refused for their timestamp (a client's clock off by more
    /// than `fetch_max_age_secs`).
    pub fetches_refused_time: IntCounter,
    /// Fetch reply packets sent.
    pub replies: IntCounter,
    /// SURB-acks sent for durably stored messages.
    pub acks: IntCounter,
    /// Batch acknowledgements sent (each covers up to 32 batched stores).
    pub batch_acks: IntCounter,
    /// Batch acknowledgement requests waiting for their batch's stragglers.
    pub batches_waiting: IntGauge,
    /// Drop-cover packets received.
    pub cover: IntCounter,
    /// SURB replies handed to connected clients.
    pub deliveries: IntCounter,
    /// Deliver frames written on clients' constant-rate downlinks, by kind
    /// (`real`: a reply or loop; `dummy`: nothing was queued).
    pub downlink: IntCounterVec,
    /// Subscribed clients.
    pub clients: IntGauge,
    /// Bytes held in dropboxes.
    pub stored_bytes: IntGauge,
    /// Requests waiting for the storage thread.
    pub storage_queue: IntGauge,
    /// Time to commit one storage batch.
    pub commit_seconds: Histogram,
    /// 1 while the dropbox database writes, 0 after a failed commit until
    /// one succeeds again.
    pub storage_ok: IntGauge,
    /// Batches whose commit failed (each one reopens the database).
    pub storage_failures: IntCounter,
}

#[allow(clippy::panic)]
fn bug<T>(e: prometheus::Error) -> T {
    panic!("metric definition: {e}")
}

impl GatewayMetrics {
    /// Creates and registers the series.
    pub fn new(r: &Registry) -> Self {
        let m = Self {
            stored: IntCounter::new(
                "umbra_gateway_dropbox_stored_total",
                "Messages durably stored",
            )
            .unwrap_or_else(bug),
            refused: IntCounterVec::new(
                Opts::new(
                    "umbra_gateway_dropbox_refused_total",
                    "Stores refused, by reason",
                ),
                &["reason"],
            )
            .unwrap_or_else(bug),
            fetches: IntCounterVec::new(
                Opts::new("umbra_gateway_fetches_total", "Fetches, by outcome"),
                &["outcome"],
            )
            .unwrap_or_else(bug),
            fetches_refused_time: IntCounter::new(
                "umbra_gateway_fetches_refused_time_total",
                "Fetches refused because their timestamp was outside fetch_max_age_secs (also counted in fetches_total{outcome=\"refused\"})",
            )
            .unwrap_or_else(bug),
            replies: IntCounter::new(
                "umbra_gateway_fetch_replies_total",
                "Fetch reply packets sent",
            )
            .unwrap_or_else(bug),
            acks: IntCounter::new(
                "umbra_gateway_store_acks_total",
                "SURB-acks sent after a store was committed",
            )
            .unwrap_or_else(bug),
            batch_acks: IntCounter::new(
                "umbra_gateway_batch_acks_total",
                "Batch acknowledgements sent after their batch's stores were committed or their wait ended",
            )
            .unwrap_or_else(bug),
            batches_waiting: IntGauge::new(
                "umbra_gateway_batch_requests_waiting",
                "Batch acknowledgement requests waiting for the rest of their batch",
            )
            .unwrap_or_else(bug),
            cover: IntCounter::new(
                "umbra_gateway_cover_received_total",
                "Drop-cover packets received",
            )
            .unwrap_or_else(bug),
            deliveries: IntCounter::new(
                "umbra_gateway_client_deliveries_total",
                "Replies handed to clients",
            )
            .unwrap_or_else(bug),
            downlink: IntCounterVec::new(
                Opts::new(
                    "umbra_gateway_downlink_frames_total",
                    "Deliver frames on clients' constant-rate downlinks, by kind",
                ),
                &["kind"],
            )
            .unwrap_or_else(bug),
            clients: IntGauge::new("umbra_gateway_clients", "Subscribed clients")
                .unwrap_or_else(bug),
            stored_bytes: IntGauge::new("umbra_gateway_dropbox_bytes", "Bytes held in dropboxes")
                .unwrap_or_else(bug),
            storage_queue: IntGauge::new(
                "umbra_gateway_storage_queue",
                "Requests waiting for storage",
            )
            .unwrap_or_else(bug),
            commit_seconds: Histogram::with_opts(HistogramOpts::new(
                "umbra_gateway_storage_commit_seconds",
                "Time to commit one storage batch",
            ))
            .unwrap_or_else(bug),
            storage_ok: IntGauge::new(
                "umbra_gateway_storage_ok",
                "1 while the dropbox database writes, 0 after a failed commit",
            )
            .unwrap_or_else(bug),
            storage_failures: IntCounter::new(
                "umbra_gateway_storage_failures_total",
                "Storage batches whose commit failed",
            )
            .unwrap_or_else(bug),
        };
        m.storage_ok.set(1);
        for c in [
            Box::new(m.stored.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.refused.clone()),
            Box::new(m.fetches.clone()),
            Box::new(m.fetches_refused_time.clone()),
            Box::new(m.replies.clone()),
            Box::new(m.acks.clone()),
            Box::new(m.batch_acks.clone()),
            Box::new(m.batches_waiting.clone()),
            Box::new(m.cover.clone()),
            Box::new(m.deliveries.clone()),
            Box::new(m.downlink.clone()),
            Box::new(m.clients.clone()),
            Box::new(m.stored_bytes.clone()),
            Box::new(m.storage_queue.clone()),
            Box::new(m.commit_seconds.clone()),
            Box::new(m.storage_ok.clone()),
            Box::new(m.storage_failures.clone()),
        ] {
            // A second gateway in one process (tests) shares nothing: each has its own registry.
            let _ = r.register(c);
        }
        for l in ["box_quota", "gateway_quota", "disk_reserve", "unavailable"] {
            m.refused.with_label_values(&[l]);
        }
        for l in ["authorised", "refused"] {
            m.fetches.with_label_values(&[l]);
        }
        for l in ["real", "dummy"] {
            m.downlink.with_label_values(&[l]);
        }
        m
    }
}
