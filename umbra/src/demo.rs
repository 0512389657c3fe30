//! `umbra demo`: a whole network in one process, and two people talking over it.
//!
//! Every message is followed by its id to one final state:
//!
//! - **delivered**: its recipient's application got it, intact (same body,
//!   same sender), at least once; copies after the first are counted as
//!   `duplicates`, copies that differ as `corrupted`;
//! - **failed**: not delivered, and its sender's client reported it failed
//!   (`FailedAttempts`, `FailedExpired`, `FailedRefused` or
//!   `FailedUndecryptable`);
//! - **lost**: neither, when the run ends.
//!
//! A message can be both reported failed (its acks were lost) and delivered:
//! it counts as delivered, and also in `failed_but_delivered`.
//!
//! The run ends when nothing can change any more, by bounds derived from the
//! client's settings ([`Bounds`]), not when the counts add up: every message
//! has its sender's verdict (stored or failed), every copy still in flight
//! has had time to arrive (so duplicates are counted to the end), and a
//! message not delivered has had every chance to be.

use crate::testnet::{BoxError, MixNetwork, NetworkOptions};
use client_sdk::{Client, ClientConfig, ContactId, Identity, MessageId, Received, Status};
use protocol::topology::NetworkParams;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
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
    /// How often clients fetch, milliseconds, at least: at payload rates
    /// below 50/s the interval grows as 12,500 / λ_P ms (2.5 s at the
    /// network's default 5/s), so that fetch rounds take the same share of
    /// the payload stream as 250 ms do at 50/s instead of half of it.
    pub fetch_interval_ms: u64,
    /// Time between two sends, milliseconds.
    pub send_interval_ms: u64,
    /// Size of each message in bytes; `None` sends short text messages.
    /// Large messages travel in fragments (at most `client_sdk::MAX_BODY_LEN`).
    pub message_size: Option<usize>,
    /// Send large messages in batches (the client's `batch_acks`).
    pub batch_acks: bool,
    /// The messages' time to live, before 2/λ_P s per fragment sent in all
    /// is added: the client reports a message failed if it is not stored
    /// within it. The run's end follows from it ([`Bounds`]).
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
    /// DANGEROUS, evaluation only: cut the link between the first mix node
    /// of layer 1 and the first of layer 2 (both ways) for this long from
    /// the first send. Needs the fault-injecting sockets: set
    /// `net::faults::dangerous_set_link_faults` (`LinkFaults::default()` for
    /// no other fault) before the run.
    pub partition: Option<Duration>,
    /// Epoch length of the demo network, seconds (production: 3600). With
    /// short epochs the sends are spread over [`EPOCHS_SPANNED`] epochs
    /// (unless `send_interval_ms` asks for longer), so that traffic crosses
    /// key rotations: keys published ahead, kept for their grace, erased.
    pub epoch_secs: u64,
}

/// Epochs a short-epoch demo spreads its sends over: they cross at least
/// three boundaries.
pub const EPOCHS_SPANNED: f64 = 3.5;

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
            batch_acks: true,
            lambda_payload: 50.0,
            timeout: Duration::from_secs(60),
            authorities: 1,
            threshold: 1,
            authorities_down: 0,
            partition: None,
            epoch_secs: 3600,
        }
    }
}

impl DemoOptions {
    /// The demo network's parameters. A demo wants answers in well under a
    /// second: short delays, and a payload rate high enough that fetching
    /// every 250 ms fits in the stream; the downlink keeps its default
    /// ratio to the payload rate.
    pub fn params(&self) -> NetworkParams {
        let defaults = NetworkParams::default();
        NetworkParams {
            mix_delay_mean_ms: self.delay_mean_ms,
            lambda_payload: self.lambda_payload,
            lambda_downlink: defaults.lambda_downlink * self.lambda_payload
                / defaults.lambda_payload,
            ..defaults
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Messages sent.
    pub sent: usize,
    /// Messages whose recipient got them intact, at least once.
    pub delivered: usize,
    /// Messages not delivered that the sender's client reported failed.
    pub failed: usize,
    /// Messages neither delivered nor reported failed when the run ended:
    /// lost silently.
    pub lost: usize,
    /// Messages reported failed to their sender that were delivered all
    /// the same (their acks were lost); counted in `delivered`.
    pub failed_but_delivered: usize,
    /// Extra intact copies handed to an application, counted to the end.
    pub duplicates: usize,
    /// Copies handed over altered, from the wrong contact, or unknown.
    pub corrupted: usize,
    /// Median send-to-receive latency of the delivered messages, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// From the first send to the end of the run, seconds.
    pub seconds: f64,
    /// `settled` if the run ended because nothing could change any more,
    /// `deadline` if a message still had no verdict at the latest time one
    /// was due (a client that never reported on a message).
    pub ended: String,
    /// What the fault injector did during the run, if it was on.
    pub injector: Option<InjectorReport>,
    /// Epoch boundaries the clients' topology crossed during the run.
    pub boundaries: u64,
    /// Fragments of the messages sent, as their senders cut them (a large
    /// message is sent in batches, in fewer and larger fragments:
    /// protocol.md §13.3).
    pub fragments: u64,
}

impl DemoReport {
    /// True if every message arrived exactly once and intact, or was
    /// reported failed to its sender; none was lost silently.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.corrupted == 0 && self.sent > 0
    }
}

/// What the fault injector (`net::faults`) did during a run.
#[derive(Debug, Clone, Serialize)]
pub struct InjectorReport {
    /// Datagrams the fault-injecting sockets were asked to send.
    pub seen: u64,
    /// Of them dropped, for any reason.
    pub dropped: u64,
    /// Datagrams that faced independent loss, and those it dropped.
    pub random_faced: u64,
    /// Dropped by independent loss.
    pub dropped_random: u64,
    /// Datagrams that faced the burst-loss channel, and those it dropped.
    pub burst_faced: u64,
    /// Dropped by burst loss.
    pub dropped_burst: u64,
    /// Runs of consecutive burst drops on one link.
    pub burst_runs: u64,
    /// Dropped by the partition.
    pub dropped_partition: u64,
    /// The partition, if there was one.
    pub partition: Option<PartitionSummary>,
}

/// What the partition did; times are seconds from the start of its window.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSummary {
    /// One end of the link (the first mix node of layer 1).
    pub a: String,
    /// The other end (the first mix node of layer 2).
    pub b: String,
    /// Length of the window.
    pub secs: f64,
    /// Datagrams on the link, either way, before the window.
    pub before: u64,
    /// Datagrams on it dropped (all those sent in the window).
    pub dropped: u64,
    /// When the first was dropped.
    pub first_drop_s: Option<f64>,
    /// When the last was dropped.
    pub last_drop_s: Option<f64>,
    /// Datagrams on it after the window (it works again).
    pub after: u64,
    /// When the first of those was sent.
    pub first_after_s: Option<f64>,
}

impl InjectorReport {
    /// Whether independent loss fired at the rate asked and nothing else
    /// dropped: the drops of n independent draws are Binomial(n, p), so
    /// they must lie within 5 standard deviations of n·p (and n must be
    /// large enough to judge).
    pub fn check_random_loss(&self, loss: f64) -> Result<(), String> {
        if self.random_faced <= 10_000 {
            return Err(format!("too few datagrams to judge: {self:?}"));
        }
        let n = self.random_faced as f64;
        let sd = (n * loss * (1.0 - loss)).sqrt();
        if (self.dropped_random as f64 - n * loss).abs() > 5.0 * sd {
            return Err(format!(
                "dropped {} of {} datagrams, expected {:.0} ± {:.0}",
                self.dropped_random,
                self.random_faced,
                n * loss,
                5.0 * sd
            ));
        }
        if self.dropped != self.dropped_random {
            return Err(format!("another fault dropped datagrams: {self:?}"));
        }
        Ok(())
    }

    fn new(c: &net::faults::FaultCounts, p: Option<net::faults::PartitionReport>) -> Self {
        let rel = |t: Option<Instant>, from: Instant| {
            t.map(|t| (t.saturating_duration_since(from).as_secs_f64() * 1000.0).round() / 1000.0)
        };
        Self {
            seen: c.seen,
            dropped: c.dropped(),
            random_faced: c.random_faced,
            dropped_random: c.dropped_random,
            burst_faced: c.burst_faced,
            dropped_burst: c.dropped_burst,
            burst_runs: c.burst_runs,
            dropped_partition: c.dropped_partition,
            partition: p.map(|p| PartitionSummary {
                a: p.a.to_string(),
                b: p.b.to_string(),
                secs: (p.until - p.from).as_secs_f64(),
                before: p.before,
                dropped: p.dropped,
                first_drop_s: rel(p.first_drop, p.from),
                last_drop_s: rel(p.last_drop, p.from),
                after: p.after,
                first_after_s: rel(p.first_after, p.from),
            }),
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let pct = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
        let mut s = format!(
            "injector: {} datagrams, {} dropped; at random {} of {} ({:.2} %)",
            self.seen,
            self.dropped,
            self.dropped_random,
            self.random_faced,
            pct(self.dropped_random, self.random_faced)
        );
        if self.burst_faced > 0 {
            s += &format!(
                "; in bursts {} of {} ({:.2} %, {} runs of {:.1} on average)",
                self.dropped_burst,
                self.burst_faced,
                pct(self.dropped_burst, self.burst_faced),
                self.burst_runs,
                self.dropped_burst as f64 / self.burst_runs.max(1) as f64
            );
        }
        if let Some(p) = &self.partition {
            let t = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1} s"));
            s += &format!(
                "; partition {}–{} for {:.0} s: {} before, {} dropped (first at {}, last at {}), {} after (first at {})",
                p.a,
                p.b,
                p.secs,
                p.before,
                p.dropped,
                t(p.first_drop_s),
                t(p.last_drop_s),
                p.after,
                t(p.first_after_s)
            );
        }
        s
    }
}

/// The `p` quantile of `sorted` (nearest rank); 0 if it is empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the demo; `progress` gets one line per event worth showing.
pub async fn run(opts: DemoOptions, progress: impl Fn(&str)) -> Result<DemoReport, BoxError> {
    let faults_before = net::faults::fault_counts();
    let params = opts.params();
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
        epoch_secs: opts.epoch_secs,
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
    let mut cfg = net.client_config()?;
    let scaled = 12_500.0 / opts.lambda_payload.max(0.1);
    cfg.fetch_interval = Duration::from_millis(opts.fetch_interval_ms.max(scaled as u64));
    let target = Target {
        cfg,
        gateways: net.gateways.iter().map(|g| g.node().identity).collect(),
        topology: match opts.partition {
            Some(_) => Some(net.directory.topology().await?),
            None => None,
        },
    };
    let result = talk(target, &opts, &params, &progress).await;
    let faults = net::faults::fault_counts().since(&faults_before);
    let result = result.map(|(mut r, partition)| {
        if faults.seen > 0 {
            r.injector = Some(InjectorReport::new(&faults, partition));
        }
        r
    });
    if !result.as_ref().is_ok_and(DemoReport::ok) {
        progress(&net.diagnostics());
    }
    net.stop().await;
    result
}

/// Time bounds of a run, derived from the client's reliability settings and
/// the network's delays. A message's life after `send`:
///
/// 1. **Verdict.** Its client reports it stored or failed within
///    [`Bounds::verdict`]: the outbox fails a message at its TTL
///    (`message_ttl`) whatever happened, and its retransmissions (ack
///    timeouts doubling up to the outbox's `max_timeout`, at most
///    `max_attempts` per fragment) can only end sooner. They do not give a
///    tighter bound: each attempt's timeout is the sampled delay of both
///    routes plus `ack_slack`, over 60 s at the clamp (`max_delay_ms` per
///    hop), and an attempt lost on a broken entry link is given back
///    (`ClientState::handle_reconnect`). Plus a moment for the client to
///    notice: 20 payload ticks and a fetch round.
/// 2. **Drain.** Its last transmission left before the verdict. That copy
///    (stored even if the verdict is a failure: only its ack may be lost)
///    reaches its dropbox within one route's delay; the recipient's next
///    fetch round asks for it within `fetch_interval`, and the answer comes
///    within two round trips (probe, then the window fetch), plus one
///    fetch timeout if an answer was lost and asked again: [`Bounds::drain`].
///    A route's delay is the sum of three mix hops, each Exp(mean) clamped
///    at `max_delay_ms`; over 25 means that sum has probability
///    e^-25 (1 + 25 + 25²/2) < 5e-9, so a route is bounded by
///    min(3 max_delay, 25 mean), plus [`LINK_SLACK`] for QUIC to recover
///    lost datagrams on its links. A partition adds its window (a copy can
///    sit in a cut link until it heals).
/// 3. **Undelivered.** A message not delivered by then may still wait
///    behind a gap in its contact's order (`reorder_hold`, or
///    `reorder_settle` behind its session's late first message), and its
///    fragments are fetched at most at the payload rate: 2/λ_P s per
///    fragment of the run ([`Bounds::undelivered`]).
///
/// A run ends once every message has its verdict and its drain has passed
/// (plus, if undelivered, `undelivered`), or when the verdict of a message
/// is overdue by all of these (then `ended` = `deadline`).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    verdict: Duration,
    drain: Duration,
    undelivered: Duration,
}

/// What QUIC may take to get a datagram through a route's links under the
/// injected loss (several probe timeouts in a row on one of four links).
const LINK_SLACK: Duration = Duration::from_secs(1);

impl Bounds {
    fn new(cfg: &ClientConfig, params: &NetworkParams, fragments: usize) -> Self {
        let mean = Duration::from_millis(params.mix_delay_mean_ms);
        let cap = Duration::from_millis(params.max_delay_ms);
        let tick = Duration::from_secs_f64(1.0 / params.lambda_payload.max(0.1));
        let route = (cap * 3).min(mean * 25) + LINK_SLACK;
        let verdict = cfg.message_ttl + tick * 20 + cfg.fetch_interval;
        let round_trip = route * 2 + tick * 2;
        let fetch_timeout = mean * 12 + Duration::from_secs(2); // the SDK's
        let drain = route + cfg.fetch_interval + round_trip * 2 + fetch_timeout;
        let undelivered = cfg.reorder_hold.max(cfg.reorder_settle) + tick * 2 * fragments as u32;
        Self {
            verdict,
            drain,
            undelivered,
        }
    }
}

/// One message sent, followed to its final state.
struct Sent {
    id: MessageId,
    from: ContactId,
    to: ContactId,
    body: Vec<u8>,
    at: Instant,
    /// Intact copies handed to the recipient.
    copies: usize,
    /// The first failure its sender reported.
    failed: Option<Status>,
    /// When its sender's client first reported it stored, read or failed.
    verdict_at: Option<Instant>,
}

/// Messages by final state (see [`DemoReport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    sent: usize,
    delivered: usize,
    failed: usize,
    lost: usize,
    failed_but_delivered: usize,
    duplicates: usize,
}

/// Every message sent, by id.
#[derive(Default)]
struct Ledger {
    msgs: Vec<Sent>,
    by_id: HashMap<MessageId, usize>,
    latencies: Vec<f64>,
    corrupted: usize,
    delivered: usize,
}

impl Ledger {
    /// Records a copy `r` handed to the application of `to`; true if it is
    /// the first intact one.
    fn received(&mut self, r: Received, to: ContactId) -> bool {
        self.copy(&r.id, r.from, r.to, &r.body, to)
    }

    /// Records a copy of message `id` from `from`, addressed to
    /// `addressed`, handed to the application of `to`; true if it is the
    /// first intact one.
    fn copy(
        &mut self,
        id: &MessageId,
        from: ContactId,
        addressed: ContactId,
        body: &[u8],
        to: ContactId,
    ) -> bool {
        let Some(m) = self.by_id.get(id).map(|&i| &mut self.msgs[i]) else {
            self.corrupted += 1;
            return false;
        };
        if m.body != body || m.from != from || m.to != to || addressed != to {
            self.corrupted += 1;
            return false;
        }
        m.copies += 1;
        if m.copies == 1 {
            self.latencies.push(m.at.elapsed().as_secs_f64() * 1000.0);
            self.delivered += 1;
        }
        m.copies == 1
    }

    /// Records status `s` of message `id`; the failure, the first time one
    /// is reported.
    fn status(&mut self, id: &MessageId, s: Status) -> Option<Status> {
        let m = &mut self.msgs[*self.by_id.get(id)?];
        let verdict = s.is_failure() || matches!(s, Status::Stored | Status::Read);
        if verdict && m.verdict_at.is_none() {
            m.verdict_at = Some(Instant::now());
        }
        if s.is_failure() && m.failed.is_none() {
            m.failed = Some(s);
            return Some(s);
        }
        None
    }

    /// Each message's final state, counted.
    fn tally(&self) -> Tally {
        let count = |f: &dyn Fn(&Sent) -> bool| self.msgs.iter().filter(|m| f(m)).count();
        let delivered = count(&|m| m.copies > 0);
        let failed = count(&|m| m.copies == 0 && m.failed.is_some());
        Tally {
            sent: self.msgs.len(),
            delivered,
            failed,
            lost: self.msgs.len() - delivered - failed,
            failed_but_delivered: count(&|m| m.copies > 0 && m.failed.is_some()),
            duplicates: self.msgs.iter().map(|m| m.copies.saturating_sub(1)).sum(),
        }
    }

    /// When nothing can change any more about any message sent, if that is
    /// known yet (every message has its verdict); else the time by which
    /// the last verdict is due.
    fn settles_at(&self, b: &Bounds, healed: Option<Instant>) -> (Instant, bool) {
        let mut at = self.msgs.first().map_or_else(Instant::now, |m| m.at);
        let mut known = true;
        for m in &self.msgs {
            let end = match m.verdict_at {
                Some(v) => {
                    let quiet = healed.map_or(v, |h| h.max(v));
                    quiet
                        + b.drain
                        + if m.copies == 0 {
                            b.undelivered
                        } else {
                            Duration::ZERO
                        }
                }
                None => {
                    known = false;
                    let quiet = healed.map_or(m.at + b.verdict, |h| h.max(m.at + b.verdict));
                    quiet + b.drain + b.undelivered
                }
            };
            at = at.max(end);
        }
        (at, known)
    }
}

/// The network the demo's two clients talk through.
struct Target {
    /// Client settings: the authorities, and (for the demo's own network)
    /// the demo's fetch interval.
    cfg: ClientConfig,
    /// Gateways, by identity: Alice enters at the first, Bob at the second.
    gateways: Vec<protocol::NodeId>,
    /// The topology, when a partition needs the mix nodes' addresses.
    topology: Option<protocol::topology::TopologyDocument>,
}

/// Runs Alice and Bob through a network already running elsewhere (the
/// authorities `refs`, `threshold` of whose signatures a topology needs),
/// at its own parameters and the SDK's default fetch interval: the check
/// that a deployed network carries messages. Only `messages`,
/// `message_size`, `send_interval_ms` and `timeout` of `opts` apply.
pub async fn run_on(
    opts: DemoOptions,
    refs: Vec<net::dirclient::AuthorityRef>,
    threshold: usize,
    progress: impl Fn(&str),
) -> Result<DemoReport, BoxError> {
    let dir = net::dirclient::Authorities::new(&refs, threshold)?;
    let doc = dir.topology(false, net::now_ms(), None).await?;
    let gateways: Vec<protocol::NodeId> = doc
        .nodes
        .iter()
        .filter(|n| n.role == protocol::topology::Role::Gateway)
        .map(|n| n.identity)
        .collect();
    if gateways.is_empty() {
        return Err("the network's topology has no gateway".into());
    }
    progress(&format!(
        "the network's topology (epoch {}): {} mix nodes, {} gateways; λ_P = {}/s, mean delay {} ms",
        doc.epoch,
        doc.nodes.len() - gateways.len(),
        gateways.len(),
        doc.params.lambda_payload,
        doc.params.mix_delay_mean_ms
    ));
    let opts = DemoOptions {
        lambda_payload: doc.params.lambda_payload,
        delay_mean_ms: doc.params.mix_delay_mean_ms,
        partition: None,
        ..opts
    };
    let target = Target {
        cfg: ClientConfig::with_authorities(refs, threshold)?,
        gateways,
        topology: None,
    };
    Ok(talk(target, &opts, &doc.params, &progress).await?.0)
}

async fn talk(
    target: Target,
    opts: &DemoOptions,
    params: &NetworkParams,
    progress: &impl Fn(&str),
) -> Result<(DemoReport, Option<net::faults::PartitionReport>), BoxError> {
    let Target {
        mut cfg,
        gateways,
        topology,
    } = target;
    // New identities have no backlog to catch up on.
    cfg.catch_up_periods = 2;
    cfg.batch_acks = opts.batch_acks;
    // Large messages need one payload tick per fragment: the TTL leaves
    // 2/λ_P s per fragment of the run on top of `timeout`.
    let fragments = opts
        .message_size
        .map_or(1, |n| n.div_ceil(client_sdk::CHUNK_LEN).max(1))
        * opts.messages;
    cfg.message_ttl = opts.timeout
        + Duration::from_secs_f64(fragments as f64 * 2.0 / opts.lambda_payload.max(0.1));
    let bounds = Bounds::new(&cfg, params, fragments);
    progress(&format!(
        "each message: verdict within {:.1} s of its send, then {:.1} s for late copies ({:.1} s more if undelivered)",
        bounds.verdict.as_secs_f64(),
        bounds.drain.as_secs_f64(),
        bounds.undelivered.as_secs_f64()
    ));
    // The partitioned link: the first mix node of layer 1 and of layer 2.
    let cut = match (opts.partition, &topology) {
        (Some(len), Some(topo)) => {
            let addr = |layer: u8| -> Result<SocketAddr, BoxError> {
                let n = topo
                    .layer(layer)
                    .next()
                    .ok_or_else(|| format!("layer {layer} is empty"))?;
                Ok(n.address.parse()?)
            };
            Some((addr(1)?, addr(2)?, len))
        }
        _ => None,
    };
    let gw = |i: usize| gateways.get(i % gateways.len().max(1)).copied();
    let mut a_cfg = cfg.clone();
    a_cfg.entry_gateway = gw(0);
    let mut b_cfg = cfg;
    b_cfg.entry_gateway = gw(1);
    let (alice, mut alice_inbox) = Client::connect(a_cfg, Identity::generate()).await?;
    let (bob, mut bob_inbox) = Client::connect(b_cfg, Identity::generate()).await?;
    let mut alice_status = alice.subscribe_status();
    let mut bob_status = bob.subscribe_status();
    let bob_id = alice.add_contact(&bob.invite("bob"))?;
    let alice_id = bob.add_contact(&alice.invite("alice"))?;
    progress("alice and bob exchanged invites; each fetches its dropboxes through the mixnet");

    let mut book = Ledger::default();
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut partition = None;
    let mut next_send = Instant::now();
    let mut next_poll = Instant::now();
    let mut last_progress = Instant::now();
    let mut settled_note = false;
    let mut cut_fragments = 0u64;
    let first_epoch = alice.topology().epoch;
    let mut last_epoch = first_epoch;
    // Spread the sends over a few epochs when they are short.
    let send_interval = if opts.epoch_secs < 3600 {
        let spread = opts.epoch_secs as f64 * EPOCHS_SPANNED / opts.messages.max(1) as f64;
        Duration::from_secs_f64(spread).max(Duration::from_millis(opts.send_interval_ms))
    } else {
        Duration::from_millis(opts.send_interval_ms)
    };
    let note_failure = |s: Option<Status>, i: usize| {
        if let Some(s) = s {
            progress(&format!("message {i} was reported failed: {s:?}"));
        }
    };
    let ended = loop {
        let now = Instant::now();
        let sent = book.msgs.len();
        let epoch = alice.topology().epoch;
        if epoch != last_epoch {
            progress(&format!("the clients' topology moved to epoch {epoch}"));
            last_epoch = epoch;
        }
        if now >= next_poll {
            // Status changes come through the subscriptions below; one
            // that fell behind would skip some, so ask now and then as well,
            // for the messages still without a verdict (after one, only a
            // failure can change, to `Read`).
            next_poll = now + Duration::from_secs(1);
            for i in 0..sent {
                if book.msgs[i].verdict_at.is_some() {
                    continue;
                }
                let (id, from) = (book.msgs[i].id, book.msgs[i].from);
                let client = if from == alice.id() { &alice } else { &bob };
                if let Some(s) = client.status(&id) {
                    note_failure(book.status(&id, s), i);
                }
            }
        }
        if sent == opts.messages {
            let healed = partition
                .as_ref()
                .map(|p: &net::faults::Partition| p.report().until);
            let (at, known) = book.settles_at(&bounds, healed);
            if known && book.delivered == sent && !settled_note {
                settled_note = true;
                progress(&format!(
                    "every message delivered and settled at its sender; reading on {:.1} s for late copies",
                    at.saturating_duration_since(now).as_secs_f64()
                ));
            }
            if now >= at {
                break if known { "settled" } else { "deadline" };
            }
        }
        if opts.message_size.is_some() && last_progress.elapsed() > Duration::from_secs(5) {
            last_progress = Instant::now();
            for (id, &i) in &book.by_id {
                let client = if book.msgs[i].from == alice.id() {
                    &alice
                } else {
                    &bob
                };
                if let Some(p) = client.progress(id) {
                    progress(&format!("sending: {}/{} fragments stored", p.have, p.count));
                }
            }
        }
        if sent < opts.messages && now >= next_send {
            if sent == 0
                && let Some((a, b, len)) = cut
            {
                partition = Some(net::faults::dangerous_partition(a, b, Instant::now(), len)?);
                progress(&format!(
                    "DANGEROUS: the link {a}–{b} (layer 1 to layer 2) is cut for {:.0} s from now",
                    len.as_secs_f64()
                ));
            }
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
            let (client, contact, to) = if from_alice {
                (&alice, &bob_id, bob.id())
            } else {
                (&bob, &alice_id, alice.id())
            };
            // Busy: the outbox is full; wait for room, as an application would.
            let give_up = started + bounds.verdict;
            let id = loop {
                match client.send(contact, &body).await {
                    Err(client_sdk::Error::Busy) if Instant::now() < give_up => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    r => break r?,
                }
            };
            cut_fragments += client.progress(&id).map_or(0, |p| u64::from(p.count));
            book.by_id.insert(id, sent);
            book.msgs.push(Sent {
                id,
                from: client.id(),
                to,
                body,
                at: Instant::now(),
                copies: 0,
                failed: None,
                verdict_at: None,
            });
            next_send = Instant::now() + send_interval;
            continue;
        }
        let n = opts.messages;
        tokio::select! {
            Some(r) = alice_inbox.recv() => {
                if book.received(r, alice.id()) { progress(&format!("[{}/{n}] delivered to alice", book.delivered)); }
            }
            Some(r) = bob_inbox.recv() => {
                if book.received(r, bob.id()) { progress(&format!("[{}/{n}] delivered to bob", book.delivered)); }
            }
            Some((id, s)) = alice_status.next() => {
                let i = book.by_id.get(&id).copied().unwrap_or(usize::MAX);
                note_failure(book.status(&id, s), i);
            }
            Some((id, s)) = bob_status.next() => {
                let i = book.by_id.get(&id).copied().unwrap_or(usize::MAX);
                note_failure(book.status(&id, s), i);
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if ended == "deadline" {
        progress("a message had no verdict from its sender by the latest time one was due");
    }
    let partition = partition.map(|p| p.report());
    alice.shutdown();
    bob.shutdown();
    book.latencies.sort_by(f64::total_cmp);
    let t = book.tally();
    let report = DemoReport {
        sent: t.sent,
        delivered: t.delivered,
        failed: t.failed,
        lost: t.lost,
        failed_but_delivered: t.failed_but_delivered,
        duplicates: t.duplicates,
        corrupted: book.corrupted,
        p50_ms: (percentile(&book.latencies, 0.5) * 10.0).round() / 10.0,
        p99_ms: (percentile(&book.latencies, 0.99) * 10.0).round() / 10.0,
        seconds: (seconds * 10.0).round() / 10.0,
        ended: ended.into(),
        injector: None,
        boundaries: last_epoch.saturating_sub(first_epoch),
        fragments: cut_fragments,
    };
    Ok((report, partition))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(b: u8) -> ContactId {
        ContactId([b; 32])
    }

    /// A ledger of four messages from 1 to 2, sent `ago` before now.
    fn ledger(ago: Duration) -> Ledger {
        let mut l = Ledger::default();
        for i in 0..4u8 {
            l.by_id.insert([i; 16], i as usize);
            l.msgs.push(Sent {
                id: [i; 16],
                from: contact(1),
                to: contact(2),
                body: vec![i; 10],
                at: Instant::now() - ago,
                copies: 0,
                failed: None,
                verdict_at: None,
            });
        }
        l
    }

    #[test]
    fn each_message_ends_in_one_state_by_its_id() {
        let mut l = ledger(Duration::ZERO);
        let (a, b) = (contact(1), contact(2));
        // 0: delivered twice (one duplicate) and stored.
        assert!(l.copy(&[0; 16], a, b, &[0; 10], b));
        assert!(!l.copy(&[0; 16], a, b, &[0; 10], b));
        l.status(&[0; 16], Status::Stored);
        // 1: reported failed, then delivered all the same.
        assert_eq!(
            l.status(&[1; 16], Status::FailedExpired),
            Some(Status::FailedExpired)
        );
        assert!(l.copy(&[1; 16], a, b, &[1; 10], b));
        // 2: reported failed, never delivered; a second failure is not news.
        l.status(&[2; 16], Status::FailedAttempts);
        assert_eq!(l.status(&[2; 16], Status::FailedExpired), None);
        // 3: nothing, but copies that are not it: another body, another
        // sender, another recipient, an id never sent.
        assert!(!l.copy(&[3; 16], a, b, &[9; 10], b));
        assert!(!l.copy(&[3; 16], contact(7), b, &[3; 10], b));
        assert!(!l.copy(&[3; 16], a, a, &[3; 10], a));
        assert!(!l.copy(&[8; 16], a, b, &[3; 10], b));
        assert_eq!(
            l.tally(),
            Tally {
                sent: 4,
                delivered: 2,
                failed: 1,
                lost: 1,
                failed_but_delivered: 1,
                duplicates: 1,
            }
        );
        assert_eq!(l.corrupted, 4);
        assert_eq!(l.delivered, 2);
    }

    #[test]
    fn the_run_settles_only_when_every_message_has_had_its_chances() {
        let b = Bounds {
            verdict: Duration::from_secs(100),
            drain: Duration::from_secs(10),
            undelivered: Duration::from_secs(60),
        };
        let mut l = ledger(Duration::from_secs(1));
        let sent = l.msgs.iter().map(|m| m.at).max().unwrap();
        // No verdict yet: the latest a verdict is due, then all the rest.
        let (at, known) = l.settles_at(&b, None);
        assert!(!known);
        assert_eq!(at, sent + Duration::from_secs(170));
        // Every verdict in and every message delivered: its drain after
        // the last verdict, or after the partition healed if later.
        for i in 0..4u8 {
            l.status(&[i; 16], Status::Stored);
            l.copy(&[i; 16], contact(1), contact(2), &[i; 10], contact(2));
        }
        let last = l.msgs.iter().filter_map(|m| m.verdict_at).max().unwrap();
        assert_eq!(
            l.settles_at(&b, None),
            (last + Duration::from_secs(10), true)
        );
        let healed = last + Duration::from_secs(30);
        assert_eq!(
            l.settles_at(&b, Some(healed)),
            (healed + Duration::from_secs(10), true)
        );
        // A run whose messages settled long ago is over now (the end is
        // not pushed past the present).
        let mut old = ledger(Duration::from_secs(300));
        for m in &mut old.msgs {
            m.verdict_at = Some(m.at);
            m.copies = 1;
        }
        let (at, known) = old.settles_at(&b, None);
        assert!(known && at < Instant::now(), "{at:?}");
        // One undelivered: it may still wait out the reorder hold.
        l.msgs[2].copies = 0;
        let v = l.msgs[2].verdict_at.unwrap();
        assert_eq!(
            l.settles_at(&b, None).0,
            (v + Duration::from_secs(70)).max(last + Duration::from_secs(10))
        );
    }
}
