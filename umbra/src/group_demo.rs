//! `umbra demo --group N`: a whole network in one process and N people in
//! one group (protocol.md §13.11), each sending and receiving.
//!
//! The first member creates the group and invites the others (each is its
//! contact, through invite strings). Once every member knows all N, each
//! sends its share of the messages into the group. Every message must reach
//! every other member exactly once, intact and named as from its sender:
//! the run ends when all have, or when the time allowed runs out (then the
//! missing deliveries are counted).

use crate::demo::{DemoOptions, percentile};
use crate::testnet::{BoxError, MixNetwork, NetworkOptions};
use client_sdk::{Client, ContactId, Identity, Inbox, MessageId};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a group demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// Members of the group.
    pub members: usize,
    /// Messages sent into the group, in all.
    pub sent: usize,
    /// Deliveries due: every message to every member but its sender.
    pub expected: usize,
    /// Deliveries that happened once, intact, from the right sender.
    pub delivered: usize,
    /// Deliveries due that did not happen by the end.
    pub missing: usize,
    /// Extra copies of a message handed to a member.
    pub duplicates: usize,
    /// Copies altered or named as from the wrong member.
    pub corrupted: usize,
    /// Seconds from creating the group until every member knew all of them.
    pub join_s: f64,
    /// Median send-to-receive latency over all deliveries, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// From the first send to the end, seconds.
    pub seconds: f64,
}

impl GroupReport {
    /// Every message reached every other member exactly once, intact.
    pub fn ok(&self) -> bool {
        self.sent > 0
            && self.missing == 0
            && self.duplicates == 0
            && self.corrupted == 0
            && self.delivered == self.expected
    }
}

/// Runs the group demo with `n` members; `opts.messages` are shared out
/// among them (at least one each).
pub async fn run(
    opts: DemoOptions,
    n: usize,
    progress: impl Fn(&str),
) -> Result<GroupReport, BoxError> {
    if !(2..=client_sdk::MAX_MEMBERS).contains(&n) {
        return Err(format!("--group must be 2 to {}", client_sdk::MAX_MEMBERS).into());
    }
    let params = opts.params();
    progress(&format!(
        "starting a directory, {} mix nodes and {} gateways on loopback…",
        opts.per_layer * 3,
        opts.gateways
    ));
    let net = MixNetwork::start_with(NetworkOptions {
        per_layer: opts.per_layer,
        gateways: opts.gateways,
        params,
        workers: 1,
        ..NetworkOptions::default()
    })
    .await?;
    let result = talk(&net, &opts, n, &progress).await;
    if !result.as_ref().is_ok_and(GroupReport::ok) {
        progress(&net.diagnostics());
    }
    net.stop().await;
    result
}

async fn talk(
    net: &MixNetwork,
    opts: &DemoOptions,
    n: usize,
    progress: &impl Fn(&str),
) -> Result<GroupReport, BoxError> {
    let mut cfg = net.client_config()?;
    cfg.fetch_interval = Duration::from_millis(opts.fetch_interval_ms);
    cfg.catch_up_periods = 2;
    let gateways: Vec<protocol::NodeId> = net.gateways.iter().map(|g| g.node().identity).collect();
    let mut clients: Vec<Client> = Vec::with_capacity(n);
    let mut inboxes: Vec<Inbox> = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = cfg.clone();
        c.entry_gateway = gateways.get(i % gateways.len().max(1)).copied();
        let (client, inbox) = Client::connect(c, Identity::generate()).await?;
        clients.push(client);
        inboxes.push(inbox);
    }
    let ids: Vec<ContactId> = clients.iter().map(|c| c.id()).collect();
    // The first member knows everyone; the others know the first.
    for (i, c) in clients.iter().enumerate().skip(1) {
        clients[0].add_contact(&c.invite(&format!("member {i}")))?;
        c.add_contact(&clients[0].invite("member 0"))?;
    }
    let created = Instant::now();
    let group = clients[0].create_group("demo group").await?;
    for id in &ids[1..] {
        clients[0].invite_to_group(&group, id).await?;
    }
    progress(&format!(
        "member 0 created a group and invited {} contacts; waiting until every member knows all {n}…",
        n - 1
    ));
    let join_deadline = created + opts.timeout;
    loop {
        let known: Vec<usize> = clients
            .iter()
            .map(|c| c.group_members(&group).map_or(0, |(_, m)| m.len()))
            .collect();
        if known.iter().all(|k| *k == n) {
            break;
        }
        if Instant::now() > join_deadline {
            return Err(format!("members did not all join in time: they know {known:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let join_s = created.elapsed().as_secs_f64();
    progress(&format!(
        "every member knows all {n} after {join_s:.1} s; sending"
    ));

    let per = opts.messages.div_ceil(n).max(1);
    let size = opts.message_size.unwrap_or(0);
    let started = Instant::now();
    // body → (sender index, sent at)
    let mut sent: HashMap<Vec<u8>, (usize, Instant)> = HashMap::new();
    let mut order: Vec<(usize, MessageId)> = Vec::new();
    for k in 0..per {
        for (i, c) in clients.iter().enumerate() {
            let mut body = format!("member {i}, message {k}").into_bytes();
            body.resize(body.len().max(size), b'.');
            let id = c.send_group(&group, &body).await?;
            sent.insert(body, (i, Instant::now()));
            order.push((i, id));
        }
        tokio::time::sleep(Duration::from_millis(opts.send_interval_ms)).await;
    }
    let expected = sent.len() * (n - 1);
    let mut got: HashMap<(usize, Vec<u8>), usize> = HashMap::new();
    let mut latencies = Vec::new();
    let mut corrupted = 0;
    let deadline = started
        + opts.timeout
        + Duration::from_secs_f64(
            expected as f64 * size.div_ceil(client_sdk::CHUNK_LEN).max(1) as f64 * 2.0
                / opts.lambda_payload.max(0.1),
        );
    let mut last_note = Instant::now();
    loop {
        for (j, inbox) in inboxes.iter_mut().enumerate() {
            while let Some(m) = inbox.try_recv() {
                if m.group != Some(group) {
                    continue;
                }
                match sent.get(&m.body) {
                    Some((i, at)) if ids[*i] == m.from && *i != j => {
                        let c = got.entry((j, m.body.clone())).or_insert(0);
                        *c += 1;
                        if *c == 1 {
                            latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    _ => corrupted += 1,
                }
            }
        }
        let delivered = got.len();
        if delivered == expected {
            // A moment more: a duplicate would show now.
            tokio::time::sleep(Duration::from_secs(2)).await;
            for (j, inbox) in inboxes.iter_mut().enumerate() {
                while let Some(m) = inbox.try_recv() {
                    if m.group == Some(group) {
                        *got.entry((j, m.body.clone())).or_insert(0) += 1;
                    }
                }
            }
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            progress(&format!("{delivered} of {expected} deliveries so far"));
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored = order
        .iter()
        .filter(|(i, id)| clients[*i].status(id) == Some(client_sdk::Status::Stored))
        .count();
    progress(&format!(
        "{stored} of {} group messages acknowledged by their dropbox gateway",
        order.len()
    ));
    latencies.sort_by(|a, b| a.total_cmp(b));
    let duplicates = got.values().map(|c| c - 1).sum();
    for c in clients {
        c.close().await;
    }
    Ok(GroupReport {
        members: n,
        sent: sent.len(),
        expected,
        delivered: got.len(),
        missing: expected - got.len(),
        duplicates,
        corrupted,
        join_s,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        seconds,
    })
}
