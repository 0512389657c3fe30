#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod admission;
mod config;
mod http;
mod store;

pub use admission::{Admission, parse as parse_admission, parse_identity};
pub use config::DirectoryConfig;
pub use http::{HttpLimits, Limiter, Refusal, Source};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use net::dirclient::DirectoryClient;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use protocol::NodeId;
use protocol::epoch::EpochSchedule;
use protocol::topology::{
    self, AddressPolicy, NodeDescriptor, Role, Signed, TOPOLOGY_DOMAIN, VOTE_DOMAIN, Vote, VoteNode,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;
use thiserror::Error;
use tokio::sync::Notify;

/// Errors of the directory authority.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (operator's fault).
    #[error("config: {0}")]
    Config(String),
    /// The embedded store failed (local fault: disk, permissions, corruption).
    #[error("store {path}: {reason}")]
    Store {
        /// Database file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A descriptor was refused (the registering node's fault).
    #[error(transparent)]
    Refused(#[from] protocol::Error),
    /// Keys or sockets (see the inner error for whose fault).
    #[error(transparent)]
    Net(#[from] net::Error),
    /// Local I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub use net::now_ms;

/// This authority's vote for one epoch.
struct OwnVote {
    vote: Vote,
    signed: Arc<Signed>,
}

/// Everything that changes while the authority runs.
struct Held {
    descriptors: BTreeMap<NodeId, (NodeDescriptor, Signed)>,
    admission: Admission,
    /// This authority's votes, by epoch.
    votes: BTreeMap<u64, OwnVote>,
    /// The other authorities' latest verified votes, by epoch and authority.
    peer_votes: BTreeMap<u64, BTreeMap<[u8; 32], Vote>>,
    /// The consensus this authority computed, by epoch, with its own
    /// signature first and every matching signature collected since.
    candidates: BTreeMap<u64, Signed>,
    /// The newest consensus with at least `threshold` signatures, by epoch.
    published: BTreeMap<u64, Arc<Signed>>,
    /// The same documents as JSON, serialised once per change: a GET
    /// copies a reference-counted buffer.
    served: BTreeMap<u64, axum::body::Bytes>,
}

struct Inner {
    key: SigningKey,
    cfg: DirectoryConfig,
    schedule: EpochSchedule,
    policy: AddressPolicy,
    /// Every authority's key (this one's included) and k.
    keys: Vec<[u8; 32]>,
    threshold: usize,
    /// The other authorities.
    peers: Vec<([u8; 32], DirectoryClient)>,
    store: Store,
    state: Mutex<Held>,
    /// Serialises writers of the store, so that `state` is never held
    /// across the store's fsync and readers never wait for a disk.
    writer: Mutex<()>,
    /// Wakes the vote round early (a registration changed the vote).
    round: Notify,
    metrics: Metrics,
    registry: Registry,
    limiter: Arc<Limiter>,
}

#[derive(Clone)]
struct Metrics {
    registrations: IntCounterVec,
    nodes: IntGauge,
    signatures: IntGauge,
    peer_failures: IntCounter,
    http_refused: IntCounterVec,
}

/// A running directory authority's shared state.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

fn metric_err(e: prometheus::Error) -> Error {
    Error::Config(e.to_string())
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, Error> {
        let m = Self {
            registrations: IntCounterVec::new(
                Opts::new(
                    "umbra_directory_registrations_total",
                    "Descriptor registrations by outcome",
                ),
                &["outcome"],
            )
            .map_err(metric_err)?,
            nodes: IntGauge::new(
                "umbra_directory_nodes",
                "Nodes in the published topology of the current epoch",
            )
            .map_err(metric_err)?,
            signatures: IntGauge::new(
                "umbra_directory_consensus_signatures",
                "Authority signatures on the published topology of the current epoch",
            )
            .map_err(metric_err)?,
            peer_failures: IntCounter::new(
                "umbra_directory_peer_fetch_failures_total",
                "Votes or signatures another authority did not give",
            )
            .map_err(metric_err)?,
            http_refused: IntCounterVec::new(
                Opts::new(
                    "umbra_directory_http_refused_total",
                    "HTTP connections and requests refused or cut, by reason",
                ),
                &["reason"],
            )
            .map_err(metric_err)?,
        };
        for c in [
            Box::new(m.registrations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.nodes.clone()),
            Box::new(m.signatures.clone()),
            Box::new(m.peer_failures.clone()),
            Box::new(m.http_refused.clone()),
        ] {
            registry.register(c).map_err(metric_err)?;
        }
        Ok(m)
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Mix => "mix",
        Role::Gateway => "gateway",
    }
}

impl Directory {
    /// Opens (or creates) the authority's key and store under `cfg.data_dir`,
    /// and checks the authority set it is configured with.
    pub fn open(cfg: DirectoryConfig) -> Result<Self, Error> {
        let schedule = EpochSchedule::new(
            cfg.genesis_unix_ms,
            cfg.epoch_length_secs.saturating_mul(1000),
        )
        .ok_or_else(|| Error::Config("epoch_length_secs must be above zero".into()))?;
        net::identity::create_private_dir(&cfg.data_dir)?;
        let key = net::identity::load_or_create_identity(&cfg.data_dir.join("authority.key"))?;
        let me = key.verifying_key().to_bytes();
        if let Some(p) = cfg.problems(Some(&me)).into_iter().next() {
            return Err(Error::Config(p));
        }
        for w in cfg.warnings() {
            tracing::warn!("{w}");
        }
        let cfg_http = cfg.http.clone();
        let timeout = Duration::from_millis(cfg.vote_interval_ms.clamp(500, 5_000));
        let mut keys = Vec::new();
        let mut peers = Vec::new();
        for a in &cfg.authorities {
            let k = a
                .key_bytes()
                .map_err(|e| Error::Config(format!("key `authorities`: {e}")))?;
            keys.push(k);
            if k != me {
                peers.push((k, DirectoryClient::with_timeout(&a.url, timeout)?));
            }
        }
        if keys.is_empty() {
            keys.push(me);
        }
        let policy = if cfg.test_network {
            AddressPolicy::TestNetwork
        } else {
            AddressPolicy::PublicOnly
        };
        let admission = Admission::load(&cfg.admission_path())?;
        let store = Store::open(&cfg.data_dir.join("directory.redb"))?;
        // Load what was registered before a restart; verify it once here.
        let now_epoch = schedule.epoch_at(now_ms());
        let mut descriptors = BTreeMap::new();
        for signed in store.all()? {
            match topology::verify_descriptor(&signed, now_epoch, policy) {
                Ok(d) => {
                    descriptors.insert(d.identity, (d, signed));
                }
                // Stale since we last ran: forget it.
                Err(_) => {
                    if let Ok(d) = signed.parse_unverified::<NodeDescriptor>() {
                        let _ = store.delete(&d.identity);
                    }
                }
            }
        }
        let registry = Registry::new();
        let metrics = Metrics::new(&registry)?;
        let dir = Self {
            inner: Arc::new(Inner {
                key,
                schedule,
                policy,
                keys,
                threshold: cfg.threshold,
                peers,
                cfg,
                store,
                writer: Mutex::new(()),
                state: Mutex::new(Held {
                    descriptors,
                    admission,
                    votes: BTreeMap::new(),
                    peer_votes: BTreeMap::new(),
                    candidates: BTreeMap::new(),
                    published: BTreeMap::new(),
                    served: BTreeMap::new(),
                }),
                round: Notify::new(),
                metrics,
                registry,
                limiter: Arc::new(Limiter::new(cfg_http)),
            }),
        };
        dir.update(now_ms());
        Ok(dir)
    }

    /// The authority's public key, which clients and nodes pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.inner.key.verifying_key().to_bytes()
    }

    /// The epoch schedule the authority publishes.
    pub fn schedule(&self) -> EpochSchedule {
        self.inner.schedule
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits `id` for `role` (saved to the allowlist file) and re-votes.
    pub fn admit(&self, id: NodeId, role: Role) -> Result<(), Error> {
        self.state().admission.admit(id, role)?;
        self.changed();
        Ok(())
    }

    /// Revokes `id` (saved to the allowlist file) and re-votes; false if it
    /// was not admitted.
    pub fn revoke(&self, id: &NodeId) -> Result<bool, Error> {
        let was = self.state().admission.revoke(id)?;
        self.changed();
        Ok(was)
    }

    /// Verifies and stores a descriptor at time `now_ms`. Refused unless the
    /// node is admitted for its role. A descriptor older than the one held
    /// for the same node is refused, so nobody can roll a node back to keys
    /// it has erased.
    pub fn register(&self, signed: &Signed, now_ms: u64) -> Result<NodeDescriptor, Error> {
        let outcome = self.register_inner(signed, now_ms);
        let label = match &outcome {
            Ok(_) => "accepted",
            Err(Error::Refused(_)) => "refused",
            Err(_) => "failed",
        };
        self.inner
            .metrics
            .registrations
            .with_label_values(&[label])
            .inc();
        if outcome.is_ok() {
            self.changed();
        }
        outcome
    }

    fn register_inner(&self, signed: &Signed, now_ms: u64) -> Result<NodeDescriptor, Error> {
        let epoch = self.inner.schedule.epoch_at(now_ms);
        let d = topology::verify_descriptor(signed, epoch, self.inner.policy)?;
        let _writer = self.writer();
        let stale = {
            let mut state = self.state();
            state.admission.refresh();
            let id = hex::encode(d.identity);
            match state.admission.role(&d.identity) {
                None => {
                    return Err(Error::Refused(protocol::Error::Rejected(format!(
                        "node {id} is not admitted by this authority (its operator admits it \
                         with `umbra directory admit {id} --role {}`)",
                        role_name(d.role)
                    ))));
                }
                Some(r) if r != d.role => {
                    return Err(Error::Refused(protocol::Error::Rejected(format!(
                        "node {id} is admitted as a {} node, not as a {}",
                        role_name(r),
                        role_name(d.role)
                    ))));
                }
                Some(_) => {}
            }
            let stale = self.prune(&mut state, epoch);
            match state.descriptors.get(&d.identity) {
                Some((old, _)) if old.published_ms > d.published_ms => {
                    return Err(Error::Refused(protocol::Error::Rejected(
                        "descriptor is older than the one registered for this node".into(),
                    )));
                }
                None if state.descriptors.len() as u64 >= self.inner.cfg.max_nodes => {
                    return Err(Error::Refused(protocol::Error::Rejected(
                        "directory is full".into(),
                    )));
                }
                _ => {}
            }
            stale
        };
        // The disk is written with only the writer lock held.
        self.forget(stale);
        self.inner.store.put(&d.identity, signed)?;
        self.state()
            .descriptors
            .insert(d.identity, (d.clone(), signed.clone()));
        Ok(d)
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes pruned descriptors from the store (writer lock held).
    fn forget(&self, stale: Vec<NodeId>) {
        for id in stale {
            if let Err(e) = self.inner.store.delete(&id) {
                tracing::warn!(error = %e, "cannot delete a stale descriptor");
            }
        }
    }

    /// Something this authority votes on changed: re-vote now and let the
    /// round collect the others' signatures.
    fn changed(&self) {
        self.update(now_ms());
        self.inner.round.notify_one();
    }

    /// Forgets descriptors with no key for `now_epoch` or the next one, and
    /// votes and documents of epochs before the previous one. Returns the
    /// forgotten nodes, for [`Self::forget`] once `state` is unlocked.
    fn prune(&self, state: &mut Held, now_epoch: u64) -> Vec<NodeId> {
        let stale: Vec<NodeId> = state
            .descriptors
            .iter()
            .filter(|(_, (d, _))| {
                d.key_for(now_epoch).is_none() && d.key_for(now_epoch + 1).is_none()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            state.descriptors.remove(id);
        }
        let floor = now_epoch.saturating_sub(1);
        state.votes.retain(|e, _| *e >= floor);
        state.peer_votes.retain(|e, _| *e >= floor);
        state.candidates.retain(|e, _| *e >= floor);
        state.published.retain(|e, _| *e >= floor);
        state.served.retain(|e, _| *e >= floor);
        stale
    }

    /// This authority's vote for `epoch`: the admitted nodes it holds a key
    /// for. Re-signed, with a higher revision, only when they change.
    fn own_vote(&self, state: &mut Held, epoch: u64, now_ms: u64) -> Arc<Signed> {
        let nodes: Vec<VoteNode> = state
            .descriptors
            .values()
            .filter(|(d, _)| state.admission.role(&d.identity) == Some(d.role))
            .filter_map(|(d, _)| VoteNode::from_descriptor(d, epoch))
            .collect();
        if let Some(v) = state.votes.get(&epoch)
            && v.vote.nodes == nodes
        {
            return v.signed.clone();
        }
        // Revisions grow across restarts too: the clock, never less than last + 1.
        let revision = state
            .votes
            .get(&epoch)
            .map_or(now_ms, |v| (v.vote.revision + 1).max(now_ms));
        let vote = Vote {
            authority: self.public_key(),
            epoch,
            revision,
            schedule: self.inner.schedule,
            params: self.inner.cfg.params,
            nodes,
        };
        // Serialising a vote of plain fields cannot fail; an empty body
        // (refused by every verifier) stands in if it ever did.
        let signed = Arc::new(
            Signed::sign(&vote, VOTE_DOMAIN, &self.inner.key).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot sign a vote");
                Signed {
                    body: String::new(),
                    signatures: Vec::new(),
                }
            }),
        );
        state.votes.insert(
            epoch,
            OwnVote {
                vote,
                signed: signed.clone(),
            },
        );
        signed
    }

    /// Recomputes this authority's vote and consensus candidate for `epoch`
    /// from what it holds, and publishes the candidate if it has enough
    /// signatures.
    fn recompute(&self, state: &mut Held, epoch: u64, now_ms: u64) {
        self.own_vote(state, epoch, now_ms);
        let mut votes: Vec<Vote> = state
            .votes
            .get(&epoch)
            .map(|v| v.vote.clone())
            .into_iter()
            .collect();
        if let Some(p) = state.peer_votes.get(&epoch) {
            votes.extend(p.values().cloned());
        }
        let Some(doc) = topology::consensus(
            epoch,
            self.inner.schedule,
            self.inner.cfg.params,
            &votes,
            self.inner.threshold,
        ) else {
            return;
        };
        let body = match serde_json::to_string(&doc) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise the consensus");
                return;
            }
        };
        if state.candidates.get(&epoch).map(|c| &c.body) != Some(&body) {
            let mut signed = Signed {
                body,
                signatures: Vec::new(),
            };
            signed.cosign(TOPOLOGY_DOMAIN, &self.inner.key);
            state.candidates.insert(epoch, signed);
        }
        self.publish(state, epoch);
    }

    /// Publishes the candidate for `epoch` if `threshold` authorities signed it.
    fn publish(&self, state: &mut Held, epoch: u64) {
        let Some(c) = state.candidates.get(&epoch) else {
            return;
        };
        let signers = c.valid_signers(TOPOLOGY_DOMAIN, &self.inner.keys).len();
        if signers < self.inner.threshold {
            return;
        }
        if state.published.get(&epoch).is_some_and(|p| **p == *c) {
            return;
        }
        match serde_json::to_vec(c) {
            Ok(json) => {
                state.served.insert(epoch, json.into());
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise the published topology");
                return;
            }
        }
        state.published.insert(epoch, Arc::new(c.clone()));
        self.gauges(state);
    }

    /// The gauges describe the published document of the current epoch.
    fn gauges(&self, state: &Held) {
        let epoch = self.inner.schedule.epoch_at(now_ms());
        let (nodes, signers) = state.published.get(&epoch).map_or((0, 0), |p| {
            let nodes = p
                .parse_unverified::<topology::TopologyDocument>()
                .map_or(0, |d| d.nodes.len());
            (
                nodes,
                p.valid_signers(TOPOLOGY_DOMAIN, &self.inner.keys).len(),
            )
        });
        self.inner.metrics.nodes.set(nodes as i64);
        self.inner.metrics.signatures.set(signers as i64);
    }

    /// Re-reads the allowlist, prunes, and recomputes the current and next epoch.
    /// Blocking (it may delete from the store): not on an async thread.
    fn update(&self, now_ms: u64) {
        let epoch = self.inner.schedule.epoch_at(now_ms);
        let _writer = self.writer();
        let stale = {
            let mut state = self.state();
            state.admission.refresh();
            let stale = self.prune(&mut state, epoch);
            for e in [epoch, epoch + 1] {
                self.recompute(&mut state, e, now_ms);
            }
            self.gauges(&state);
            stale
        };
        self.forget(stale);
    }

    /// One vote round: fetch the other authorities' votes for the current
    /// and next epoch, recompute the consensus, collect their signatures on
    /// it, and publish it once `threshold` authorities signed the same bytes.
    pub async fn round(&self) {
        let me = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || me.update(now_ms())).await {
            tracing::error!(error = %e, "update task failed");
        }
        if self.inner.peers.is_empty() {
            return;
        }
        let epoch = self.inner.schedule.epoch_at(now_ms());
        for e in [epoch, epoch + 1] {
            let mut fresh = Vec::new();
            for (key, got) in self.ask_peers(format!("/v1/vote/{e}")).await {
                match got {
                    Ok(s) => match topology::verify_vote(&s, &self.inner.keys) {
                        Ok(v) if v.authority == key && v.epoch == e => fresh.push(v),
                        Ok(_) => tracing::warn!(
                            authority = %hex::encode(&key[..4]),
                            "an authority served a vote for another authority or epoch"
                        ),
                        Err(err) => tracing::warn!(
                            authority = %hex::encode(&key[..4]),
                            error = %err,
                            "vote refused"
                        ),
                    },
                    Err(err) => {
                        self.inner.metrics.peer_failures.inc();
                        tracing::debug!(authority = %hex::encode(&key[..4]), error = %err, "no vote");
                    }
                }
            }
            {
                let mut state = self.state();
                let held = state.peer_votes.entry(e).or_default();
                for v in fresh {
                    if held
                        .get(&v.authority)
                        .is_none_or(|o| o.revision <= v.revision)
                    {
                        held.insert(v.authority, v);
                    }
                }
                self.recompute(&mut state, e, now_ms());
            }
            for (key, got) in self.ask_peers(format!("/v1/candidate/{e}")).await {
                let theirs = match got {
                    Ok(s) => s,
                    Err(err) => {
                        self.inner.metrics.peer_failures.inc();
                        tracing::debug!(authority = %hex::encode(&key[..4]), error = %err, "no signature");
                        continue;
                    }
                };
                let mut state = self.state();
                let Some(ours) = state.candidates.get_mut(&e) else {
                    continue;
                };
                if theirs.body != ours.body {
                    continue;
                }
                // Keep every valid signature of a known authority on the same bytes.
                let mut have = ours.valid_signers(TOPOLOGY_DOMAIN, &self.inner.keys);
                for sig in theirs.signatures {
                    if have.contains(&sig.signer) || !self.inner.keys.contains(&sig.signer) {
                        continue;
                    }
                    let probe = Signed {
                        body: ours.body.clone(),
                        signatures: vec![sig.clone()],
                    };
                    if !probe
                        .valid_signers(TOPOLOGY_DOMAIN, &self.inner.keys)
                        .is_empty()
                    {
                        have.push(sig.signer);
                        ours.signatures.push(sig);
                    }
                }
                self.publish(&mut state, e);
            }
        }
    }

    /// GETs `path` from every other authority at once (each bounded by the
    /// client's timeout and body cap).
    async fn ask_peers(&self, path: String) -> Vec<([u8; 32], Result<Signed, net::Error>)> {
        let mut set = tokio::task::JoinSet::new();
        for (key, c) in &self.inner.peers {
            let (key, c, path) = (*key, c.clone(), path.clone());
            set.spawn(async move { (key, c.get_signed(&path).await) });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    }

    /// The published topology for `epoch`: the newest consensus with at
    /// least `threshold` signatures, if there is one yet.
    pub fn topology(&self, epoch: u64, now_ms: u64) -> Option<Arc<Signed>> {
        self.servable(epoch, now_ms)?;
        self.state().published.get(&epoch).cloned()
    }

    /// [`Self::topology`] as the JSON the API serves, serialised once.
    fn topology_json(&self, epoch: u64, now_ms: u64) -> Option<axum::body::Bytes> {
        self.servable(epoch, now_ms)?;
        self.state().served.get(&epoch).cloned()
    }

    /// Topologies are served for the previous, current and next epoch.
    fn servable(&self, epoch: u64, now_ms: u64) -> Option<()> {
        let now_epoch = self.inner.schedule.epoch_at(now_ms);
        (epoch + 1 >= now_epoch && epoch <= now_epoch + 1).then_some(())
    }

    fn vote(&self, epoch: u64, now_ms: u64) -> Option<Arc<Signed>> {
        let now_epoch = self.inner.schedule.epoch_at(now_ms);
        if epoch != now_epoch && epoch != now_epoch + 1 {
            return None;
        }
        let mut state = self.state();
        // Every change and every round re-votes; a GET serves the last vote.
        if let Some(v) = state.votes.get(&epoch) {
            return Some(v.signed.clone());
        }
        Some(self.own_vote(&mut state, epoch, now_ms))
    }

    fn candidate(&self, epoch: u64) -> Option<Signed> {
        self.state().candidates.get(&epoch).cloned()
    }

    /// The HTTP API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/descriptors", post(register_handler))
            .route("/v1/topology", get(current_handler))
            .route("/v1/topology/next", get(next_handler))
            .route("/v1/vote/{epoch}", get(vote_handler))
            .route("/v1/candidate/{epoch}", get(candidate_handler))
            .route("/v1/authority", get(authority_handler))
            .route("/metrics", get(metrics_handler))
            .merge(net::health::routes(self.readiness()))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
            .layer(axum::middleware::from_fn_with_state(
                self.guard(),
                http::limit,
            ))
            .with_state(self.clone())
    }

    /// `/readyz`: ready once it serves a topology for the current epoch
    /// (signed by the threshold of authorities).
    fn readiness(&self) -> net::health::Readiness {
        let dir = self.clone();
        std::sync::Arc::new(move || {
            let now = now_ms();
            let epoch = dir.inner.schedule.epoch_at(now);
            vec![if dir.topology_json(epoch, now).is_some() {
                net::health::Check::pass("topology", "")
            } else {
                net::health::Check::fail(
                    "topology",
                    format!(
                        "no topology for epoch {epoch} yet: fewer than {} authorities signed one",
                        dir.inner.threshold
                    ),
                )
            }]
        })
    }

    fn guard(&self) -> http::Guard {
        http::Guard {
            limiter: self.inner.limiter.clone(),
            refused: self.inner.metrics.http_refused.clone(),
        }
    }

    /// Serves the API on `listener` until `shutdown` completes, and runs the
    /// vote rounds with the other authorities meanwhile.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            epoch_length_s = self.inner.cfg.epoch_length_secs,
            authorities = self.inner.keys.len(),
            threshold = self.inner.threshold,
            admitted = self.state().admission.len(),
            "directory authority serving"
        );
        let me = self.clone();
        let rounds = tokio::spawn(async move {
            let every = Duration::from_millis(me.inner.cfg.vote_interval_ms);
            loop {
                me.round().await;
                let until_epoch = Duration::from_millis(
                    me.inner.schedule.until_next_ms(now_ms()).saturating_add(50),
                );
                tokio::select! {
                    _ = tokio::time::sleep(every.min(until_epoch)) => {}
                    _ = me.inner.round.notified() => {}
                }
            }
        });
        let served = http::serve(listener, self.router(), self.guard(), shutdown).await;
        rounds.abort();
        served?;
        Ok(())
    }
}

/// Binds `cfg.listen` and serves until `shutdown`.
pub async fn run(
    cfg: DirectoryConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listen: SocketAddr = cfg.listen;
    let dir = Directory::open(cfg)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| net::Error::Bind {
            addr: listen,
            source,
        })?;
    dir.serve(listener, shutdown).await
}

fn error_response(status: StatusCode, msg: String) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

/// Reads the body of a descriptor registration (`POST /v1/descriptors`):
/// a signed envelope, not yet verified ([`Directory::register`] does that).
pub fn decode_registration(body: &[u8]) -> Result<Signed, serde_json::Error> {
    serde_json::from_slice(body)
}

async fn register_handler(State(dir): State<Directory>, body: axum::body::Bytes) -> Response {
    let signed: Signed = match decode_registration(&body) {
        Ok(s) => s,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("undecodable descriptor: {e}"),
            );
        }
    };
    // Verification and the store's fsync stay off the async threads.
    let d2 = dir.clone();
    let outcome = tokio::task::spawn_blocking(move || d2.register(&signed, now_ms())).await;
    match outcome {
        Ok(Ok(d)) => {
            tracing::info!(node = %hex::encode(&d.identity[..6]), role = ?d.role, "descriptor accepted");
            Json(serde_json::json!({ "status": "accepted" })).into_response()
        }
        Ok(Err(Error::Refused(e))) => {
            tracing::info!(error = %e, "descriptor refused");
            error_response(StatusCode::BAD_REQUEST, e.to_string())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot store descriptor");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot store descriptor".into(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "registration task failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot store descriptor".into(),
            )
        }
    }
}

fn topology_response(dir: &Directory, next: bool) -> Response {
    let now = now_ms();
    let epoch = dir.inner.schedule.epoch_at(now) + u64::from(next);
    match dir.topology_json(epoch, now) {
        Some(json) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        None => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no topology for epoch {epoch} yet: fewer than {} authorities signed one",
                dir.inner.threshold
            ),
        ),
    }
}

async fn current_handler(State(dir): State<Directory>) -> Response {
    topology_response(&dir, false)
}

async fn next_handler(State(dir): State<Directory>) -> Response {
    topology_response(&dir, true)
}

async fn vote_handler(State(dir): State<Directory>, UrlPath(epoch): UrlPath<u64>) -> Response {
    match dir.vote(epoch, now_ms()) {
        Some(v) => Json(&*v).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            format!("no vote for epoch {epoch}: only the current and next epoch are voted on"),
        ),
    }
}

async fn candidate_handler(State(dir): State<Directory>, UrlPath(epoch): UrlPath<u64>) -> Response {
    match dir.candidate(epoch) {
        Some(c) => Json(&c).into_response(),
        None => error_response(
            StatusCode::NOT_FOUND,
            format!("no consensus computed for epoch {epoch}"),
        ),
    }
}

async fn authority_handler(State(dir): State<Directory>) -> String {
    hex::encode(dir.public_key())
}

async fn metrics_handler(State(dir): State<Directory>) -> Response {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&dir.inner.registry.gather(), &mut out);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
