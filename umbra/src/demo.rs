//! `umbra demo`: a whole network in one process, and two people talking over it.

use crate::testnet::{BoxError, MixNetwork, NetworkOptions};
use client_sdk::{Client, Identity, Received};
use protocol::topology::NetworkParams;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Messages sent in all (alternating Alice → Bob and Bob → Alice).
    pub messages: usize,
    /// Mix nodes per layer.
    pub per_layer: usize,
    /// Gateways.
    pub gateways: usize,
    /// Mean per-hop delay, milliseconds.
    pub delay_mean_ms: u64,
    /// How often clients fetch, milliseconds.
    pub fetch_interval_ms: u64,
    /// Time between two sends, milliseconds.
    pub send_interval_ms: u64,
    /// Size of each message in bytes; `None` sends short text messages.
    /// Large messages travel in fragments (at most `client_sdk::MAX_BODY_LEN`).
    pub message_size: Option<usize>,
    /// Give up waiting after this long (more is added for large messages).
    /// Clients report a message failed if it is not stored within it.
    pub timeout: Duration,
    /// Client payload rate λ_P, packets/s (the demo's default is 50, ten
    /// times the network default, so that it answers within seconds).
    pub lambda_payload: f64,
    /// Directory authorities.
    pub authorities: usize,
    /// Signatures a topology needs.
    pub threshold: usize,
    /// Authorities stopped once the network runs, before the clients start.
    pub authorities_down: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            messages: 20,
            per_layer: 2,
            gateways: 2,
            delay_mean_ms: 20,
            fetch_interval_ms: 250,
            send_interval_ms: 50,
            message_size: None,
            lambda_payload: 50.0,
            timeout: Duration::from_secs(60),
            authorities: 1,
            threshold: 1,
            authorities_down: 0,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Messages sent.
    pub sent: usize,
    /// Messages that arrived, intact, exactly once.
    pub delivered: usize,
    /// Messages the sender's client reported failed (never stored in time).
    pub failed: usize,
    /// Messages neither delivered nor reported failed: lost silently.
    pub lost: usize,
    /// Extra copies handed to an application.
    pub duplicates: usize,
    /// Messages that arrived altered or from the wrong contact.
    pub corrupted: usize,
    /// Median send-to-receive latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

impl DemoReport {
    /// True if every message arrived exactly once and intact, or was
    /// reported failed to its sender; none was lost silently.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.corrupted == 0 && self.sent > 0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the demo; `progress` gets one line per event worth showing.
pub async fn run(opts: DemoOptions, progress: impl Fn(&str)) -> Result<DemoReport, BoxError> {
    // A demo wants answers in well under a second: short delays, and a
    // payload rate high enough that fetching every 250 ms fits in the stream.
    let defaults = NetworkParams::default();
    let params = NetworkParams {
        mix_delay_mean_ms: opts.delay_mean_ms,
        lambda_payload: opts.lambda_payload,
        // The downlink keeps its default ratio to the payload rate.
        lambda_downlink: defaults.lambda_downlink * opts.lambda_payload / defaults.lambda_payload,
        ..defaults
    };
    progress(&format!(
        "starting {} directory authorities (topologies need {} signatures), {} mix nodes ({} per layer) and {} gateways on loopback…",
        opts.authorities,
        opts.threshold,
        opts.per_layer * 3,
        opts.per_layer,
        opts.gateways
    ));
    let mut net = MixNetwork::start_with(NetworkOptions {
        per_layer: opts.per_layer,
        gateways: opts.gateways,
        params,
        workers: 1,
        authorities: opts.authorities,
        threshold: opts.threshold,
        ..NetworkOptions::default()
    })
    .await?;
    for _ in 0..opts
        .authorities_down
        .min(opts.authorities.saturating_sub(1))
    {
        net.directory.stop_member(0).await;
        progress("stopped an authority before the clients start");
    }
    let result = talk(&net, &opts, &progress).await;
    if !result.as_ref().is_ok_and(DemoReport::ok) {
        progress(&net.diagnostics());
    }
    net.stop().await;
    result
}

async fn talk(
    net: &MixNetwork,
    opts: &DemoOptions,
    progress: &impl Fn(&str),
) -> Result<DemoReport, BoxError> {
    let mut cfg = net.client_config()?;
    cfg.fetch_interval = Duration::from_millis(opts.fetch_interval_ms);
    // New identities have no backlog to catch up on.
    cfg.catch_up_periods = 2;
    // Within the demo's time, every message is stored or reported failed.
    let fragments_each = opts
        .message_size
        .map_or(1, |n| n.div_ceil(client_sdk::CHUNK_LEN).max(1));
    cfg.message_ttl = opts.timeout
        + Duration::from_secs_f64(
            (fragments_each * opts.messages) as f64 * 2.0 / opts.lambda_payload.max(0.1),
        );
    let gw = |i: usize| {
        net.gateways
            .get(i % net.gateways.len())
            .map(|g| g.node().identity)
    };
    let mut a_cfg = cfg.clone();
    a_cfg.entry_gateway = gw(0);
    let mut b_cfg = cfg;
    b_cfg.entry_gateway = gw(1);
    let (alice, mut alice_inbox) = Client::connect(a_cfg, Identity::generate()).await?;
    let (bob, mut bob_inbox) = Client::connect(b_cfg, Identity::generate()).await?;
    let bob_id = alice.add_contact(&bob.invite("bob"))?;
    let alice_id = bob.add_contact(&alice.invite("alice"))?;
    progress("alice and bob exchanged invites; each fetches its dropboxes through the mixnet");

    let mut t = Tally::default();
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut sent = 0usize;
    // Large messages need one payload tick per fragment (λ_P = 50/s here).
    let fragments = opts
        .message_size
        .map_or(1, |n| n.div_ceil(client_sdk::CHUNK_LEN).max(1))
        * opts.messages;
    let deadline = started
        + opts.timeout
        + Duration::from_millis(opts.send_interval_ms * opts.messages as u64)
        + Duration::from_secs_f64(fragments as f64 * 2.0 / opts.lambda_payload.max(0.1))
        // After the TTL a message is reported failed at the next payload
        // tick; one stored just before it still has to be fetched, and may
        // wait behind a gap in its contact's order (60 s at most). The run
        // ends as soon as every message is delivered or failed.
        + Duration::from_secs(75);
    let mut next_send = Instant::now();
    let mut ids: Vec<(Client, client_sdk::MessageId)> = Vec::new();
    let mut failed = std::collections::HashSet::new();
    let mut last_progress = Instant::now();
    loop {
        for (c, id) in &ids {
            if c.status(id).is_some_and(|s| s.is_failure()) && failed.insert(*id) {
                progress(&format!(
                    "a message was reported failed: {:?}",
                    c.status(id)
                ));
            }
        }
        if sent == opts.messages && t.got.len() + failed.len() >= opts.messages {
            break;
        }
        if opts.message_size.is_some() && last_progress.elapsed() > Duration::from_secs(5) {
            last_progress = Instant::now();
            for (c, id) in &ids {
                if let Some(p) = c.progress(id) {
                    progress(&format!("sending: {}/{} fragments stored", p.have, p.count));
                }
            }
        }
        if Instant::now() > deadline {
            progress("timed out waiting for the remaining messages");
            break;
        }
        if sent < opts.messages && Instant::now() >= next_send {
            let from_alice = sent.is_multiple_of(2);
            let mut body = format!(
                "message {} from {}: {:016x}",
                sent,
                if from_alice { "alice" } else { "bob" },
                rng.next_u64()
            )
            .into_bytes();
            if let Some(n) = opts.message_size {
                let head = body.len().min(n);
                body.truncate(head);
                let mut rest = vec![0u8; n - head];
                rng.fill_bytes(&mut rest);
                body.extend_from_slice(&rest);
            }
            let (client, to, from) = if from_alice {
                (&alice, &bob_id, alice.id())
            } else {
                (&bob, &alice_id, bob.id())
            };
            t.expected.insert(body.clone(), (from, Instant::now()));
            // Busy: the outbox is full; wait for room, as an application would.
            let id = loop {
                match client.send(to, &body).await {
                    Err(client_sdk::Error::Busy) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    r => break r?,
                }
            };
            ids.push((client.clone(), id));
            sent += 1;
            next_send = Instant::now() + Duration::from_millis(opts.send_interval_ms);
            continue;
        }
        tokio::select! {
            Some(r) = alice_inbox.recv() => {
                if t.record(r, alice.id()) { progress(&format!("[{}/{}] delivered to alice", t.got.len(), opts.messages)); }
            }
            Some(r) = bob_inbox.recv() => {
                if t.record(r, bob.id()) { progress(&format!("[{}/{}] delivered to bob", t.got.len(), opts.messages)); }
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    // Anything arriving shortly after would be a duplicate: give it a moment.
    let settle = Instant::now() + Duration::from_millis(opts.fetch_interval_ms * 4);
    while Instant::now() < settle {
        tokio::select! {
            Some(r) = alice_inbox.recv() => { t.record(r, alice.id()); }
            Some(r) = bob_inbox.recv() => { t.record(r, bob.id()); }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    alice.shutdown();
    bob.shutdown();
    t.latencies.sort_by(f64::total_cmp);
    let delivered = t.got.len();
    // A message both delivered and reported failed counts as delivered (its
    // ack was lost after the store): the application got it.
    let failed = ids
        .iter()
        .filter(|(c, id)| c.status(id).is_some_and(|s| s.is_failure()))
        .count()
        .min(sent - delivered);
    Ok(DemoReport {
        sent,
        delivered,
        failed,
        lost: sent - delivered - failed,
        duplicates: t.got.values().map(|n| n - 1).sum(),
        corrupted: t.corrupted,
        p50_ms: (percentile(&t.latencies, 0.5) * 10.0).round() / 10.0,
        p99_ms: (percentile(&t.latencies, 0.99) * 10.0).round() / 10.0,
    })
}

/// What arrived, checked against what was sent.
#[derive(Default)]
struct Tally {
    /// body → (sender, sent at)
    expected: HashMap<Vec<u8>, (client_sdk::ContactId, Instant)>,
    /// body → copies received
    got: HashMap<Vec<u8>, usize>,
    latencies: Vec<f64>,
    corrupted: usize,
}

impl Tally {
    /// Records a message received by `to`; true if it is a first, intact delivery.
    fn record(&mut self, r: Received, to: client_sdk::ContactId) -> bool {
        match self.expected.get(&r.body) {
            Some((from, at)) if *from == r.from && *from != to => {
                let n = self.got.entry(r.body).or_default();
                *n += 1;
                if *n == 1 {
                    self.latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                }
                *n == 1
            }
            _ => {
                self.corrupted += 1;
                false
            }
        }
    }
}
