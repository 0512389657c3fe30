#![doc = include_str!("../README.md")]
// Unsafe only in `sched` (two system calls, each with its SAFETY note).
#![deny(unsafe_code)]

pub mod config;
pub mod health;
mod loops;
mod metrics;
mod pipeline;
pub mod sched;

pub use config::{ConfigKeys, NodeConfig, authorities_example};
pub use metrics::Metrics;
pub use net::conn::PeerConn;

use protocol::frame::Frame;

use ed25519_dalek::SigningKey;
use net::dirclient::Authorities;
use net::link::{LinkConfig, LinkMetrics, Links, PeerFilter};
use pipeline::Shared;
use protocol::NodeId;
use protocol::clock::ClockNews;
use protocol::epoch::EpochSchedule;
use protocol::keys::{EpochKey, KeyRing};
use protocol::replay::ReplayCache;
use protocol::topology::{self, EpochPublicKey, NodeDescriptor, Role, Signed};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Notify, watch};

/// Errors of a Sphinx node (mix node, or a gateway's packet path). Each
/// variant says whose fault it is.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (operator's fault); names the key.
    #[error("config key `{key}`: {reason}")]
    Config {
        /// The offending key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// Networking or key files: binding (config), the authorities
    /// (theirs or the network's), key files (config); see the inner error.
    #[error(transparent)]
    Net(#[from] net::Error),
    /// Local I/O (this machine's fault: disk, threads).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

use net::now_ms;

/// What a role adds to the Sphinx node: what to do with packets for which
/// it is the final hop, and with frames other than Sphinx packets.
/// The defaults (a mix node's) drop both and count them.
pub trait Handler: Send + Sync + 'static {
    /// A packet this node is the final hop of. Runs on a Sphinx worker thread.
    fn on_final(
        &self,
        node: &NodeRef,
        epoch: u64,
        destination: [u8; 32],
        identifier: [u8; 16],
        payload: Vec<u8>,
    ) {
        let _ = (epoch, destination, identifier, payload);
        node.metrics().drop("unexpected_final");
    }

    /// A non-Sphinx frame, and the connection it came on (to learn who sent
    /// it, or to answer on it). Runs on the connection's task.
    fn on_frame(&self, node: &NodeRef, frame: Frame<'_>, conn: &PeerConn) {
        let _ = (frame, conn);
        node.metrics().drop("malformed");
    }
}

/// A handle on a running node's packet path, given to its [`Handler`].
#[derive(Clone)]
pub struct NodeRef(Arc<Shared>);

impl NodeRef {
    /// Sends a Sphinx packet built for `epoch` keys to `next_hop` now.
    /// False if it was dropped (and counted).
    pub fn forward(&self, epoch: u64, next_hop: NodeId, packet: &[u8]) -> bool {
        self.0.forward(epoch, next_hop, packet)
    }

    /// Queues a Sphinx packet for this node itself to peel.
    pub fn process(&self, epoch: u64, packet: &[u8]) {
        self.0.submit_packet(epoch, packet)
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The node's identity.
    pub fn identity(&self) -> NodeId {
        self.0.identity
    }

    /// The latest verified topology.
    pub fn topology(&self) -> Option<Arc<topology::TopologyDocument>> {
        self.0
            .topologies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone()
    }

    /// The verified topology of `epoch`, if the node holds it (the previous,
    /// current and next epoch's).
    pub fn topology_for(&self, epoch: u64) -> Option<Arc<topology::TopologyDocument>> {
        self.0
            .topologies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_epoch
            .get(&epoch)
            .cloned()
    }

    /// The node's `/readyz` checks now ([`health::checks`]).
    pub fn ready_checks(&self, refresh_period_ms: u64, loops_on: bool) -> Vec<net::health::Check> {
        let topology = self
            .topology()
            .map(|t| (t.epoch, t.node(&self.0.identity).is_some()));
        health::checks(
            &self
                .0
                .health
                .snapshot(now_ms(), refresh_period_ms, topology, loops_on),
        )
    }

    /// Whether `id` is a layer-1 mix node in the topology of `epoch`: the
    /// only hop a client's packet or a SURB reply may enter the mixnet at.
    pub fn is_first_layer(&self, epoch: u64, id: &NodeId) -> bool {
        self.topology_for(epoch)
            .and_then(|t| t.node(id).map(|n| n.role == Role::Mix && n.layer == 1))
            .unwrap_or(false)
    }
}

/// How long into a new epoch the previous epoch's key still peels packets
/// (beyond three maximal delays): clients refresh their topology around the
/// boundary, and packets already in flight must still get through. (In
/// `protocol::clock`, so that clients know when a topology's keys are gone.)
pub use protocol::clock::KEY_GRACE_MS;

/// A running Sphinx node (mix node, or the packet path of a gateway).
pub struct Node {
    /// Where the QUIC endpoint listens.
    pub quic_addr: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// The node's identity.
    pub identity: NodeId,
    shared: Arc<Shared>,
    link_metrics: LinkMetrics,
    endpoint: quinn::Endpoint,
    shutdown: watch::Sender<bool>,
    refresh: Arc<Notify>,
    workers: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    role: Role,
}

struct Control {
    identity: SigningKey,
    cfg: NodeConfig,
    /// What to publish (resolved at each registration), and the bound
    /// address, published when it is unset.
    public_address: Option<net::HostPort>,
    quic_addr: SocketAddr,
    dir: Authorities,
    shared: Arc<Shared>,
    last_seen: Mutex<Option<(u64, u64)>>,
    role: Role,
    client_address: Option<net::HostPort>,
    /// Refreshes failed in a row, and the last topology's epoch and when
    /// its keys go (for the outage warnings).
    outage: Mutex<Outage>,
}

/// Failed refreshes in a row, for the outage warnings.
#[derive(Default)]
struct Outage {
    failures: u64,
    usable_until_ms: u64,
    epoch: u64,
    expired_said: bool,
}

impl Node {
    /// A handle on the packet path.
    pub fn handle(&self) -> NodeRef {
        NodeRef(self.shared.clone())
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The link layer's metrics (malformed frames, link queues).
    pub fn link_metrics(&self) -> &LinkMetrics {
        &self.link_metrics
    }

    /// Nodes the node can currently route to.
    pub fn known_nodes(&self) -> usize {
        self.shared.routes.read().map(|r| r.len()).unwrap_or(0)
    }

    /// Asks the node to refresh its topology now.
    pub fn refresh_topology(&self) {
        self.refresh.notify_one();
    }

    /// Stops accepting, stops the workers and link tasks, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.endpoint.close(0u8.into(), b"shutdown");
        self.shared.close();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        for w in self.workers {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        self.shared.links.shutdown();
        tracing::info!(role = ?self.role, "node stopped");
    }
}

fn sphinx_key(epoch: u64, cfg: &NodeConfig, schedule: &EpochSchedule) -> EpochKey {
    let (secret, _) = protocol::packet::sphinx_keypair(&mut rand::rng());
    // A key serves its epoch plus the grace period for packets in flight.
    let lifetime_s = schedule.length_ms / 1000 + (3 * cfg.max_delay_ms + KEY_GRACE_MS) / 1000;
    let cache = ReplayCache::for_rate(
        cfg.replay_max_pps,
        lifetime_s,
        cfg.replay_false_positive_rate,
    );
    let cache = if cfg.dangerous_accept_replays {
        cache.dangerous_accept_replays()
    } else {
        cache
    };
    EpochKey::new(epoch, secret, cache)
}

impl Control {
    /// The addresses to publish now: names resolved (each registration,
    /// so that a changed DNS record is published within one).
    async fn addresses(&self) -> Result<(SocketAddr, Option<SocketAddr>), String> {
        let address = match &self.public_address {
            Some(a) => a
                .resolve(self.quic_addr)
                .await
                .map_err(|e| format!("config key `public_address` = {a}: {e}"))?,
            None => self.quic_addr,
        };
        let client = match &self.client_address {
            Some(a) => Some(
                a.resolve(self.quic_addr)
                    .await
                    .map_err(|e| format!("config key `public_client_address` = {a}: {e}"))?,
            ),
            None => None,
        };
        Ok((address, client))
    }

    fn descriptor(
        &self,
        address: SocketAddr,
        client_address: Option<SocketAddr>,
    ) -> Result<Signed, Error> {
        let ring = self.shared.keys.read().unwrap_or_else(|p| p.into_inner());
        let sphinx_keys = ring
            .epochs()
            .into_iter()
            .rev()
            .take(topology::MAX_DESCRIPTOR_KEYS)
            .filter_map(|e| {
                ring.get(e).map(|k| EpochPublicKey {
                    epoch: e,
                    key: k.public(),
                })
            })
            .collect();
        let d = NodeDescriptor {
            identity: self.identity.verifying_key().to_bytes(),
            role: self.role,
            address: address.to_string(),
            client_address: client_address.map(|a| a.to_string()),
            sphinx_keys,
            published_ms: now_ms(),
        };
        Signed::sign(&d, topology::DESCRIPTOR_DOMAIN, &self.identity).map_err(|e| Error::Config {
            key: "data_dir",
            reason: e.to_string(),
        })
    }

    /// Registers with every authority. Fine if at least `threshold` accepted
    /// (a node appears only if that many admit it); the refusals are logged.
    async fn register(&self) -> Result<(), String> {
        let (address, client) = self.addresses().await?;
        let d = self
            .descriptor(address, client)
            .map_err(|e| e.to_string())?;
        let (accepted, refused) = self.dir.register(&d).await;
        for r in &refused {
            tracing::warn!(reason = %r, "an authority did not take the descriptor");
        }
        if accepted >= self.dir.trust().threshold {
            Ok(())
        } else {
            Err(format!(
                "{accepted} authorities accepted the descriptor, {} needed",
                self.dir.trust().threshold
            ))
        }
    }

    /// Fetches and verifies the current and next topologies; rebuilds the routing table.
    /// A refresh failed: counted, and warned with what the node goes on
    /// with and until when.
    fn refresh_failed(&self, e: &str) {
        self.shared.metrics.topology_refresh_failures.inc();
        let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        o.failures += 1;
        let now = now_ms();
        if o.usable_until_ms == 0 {
            tracing::warn!(error = %e, failures = o.failures, "topology refresh failed; no topology yet");
        } else if now <= o.usable_until_ms {
            tracing::warn!(
                error = %e,
                failures = o.failures,
                epoch = o.epoch,
                usable_for_s = (o.usable_until_ms - now) / 1000,
                "topology refresh failed; routing by the last valid topology until its keys expire"
            );
        } else if !std::mem::replace(&mut o.expired_said, true) {
            tracing::warn!(
                error = %e,
                failures = o.failures,
                epoch = o.epoch,
                "topology refresh failed and the keys of the last valid topology have expired: \
                 packets built for it are dropped until the directory answers"
            );
        } else {
            tracing::warn!(error = %e, failures = o.failures, "topology refresh failed");
        }
    }

    async fn refresh(&self) -> Result<u64, String> {
        let last = *self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        let timed = self
            .dir
            .current_topology(now_ms, last)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(offset) = timed.offset_ms {
            self.shared
                .metrics
                .clock_offset_seconds
                .set((offset as f64 / 1000.0).round() as i64);
            let news = self
                .shared
                .health
                .clock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(offset);
            match news {
                Some(ClockNews::Off { offset_ms }) => tracing::warn!(
                    offset_s = (offset_ms as f64 / 1000.0).round() as i64,
                    bound_s = protocol::clock::CLOCK_WARN_MS / 1000,
                    "this node's clock is {} the directory's: fix the system clock (NTP). \
                     Its epochs and key rotation follow its own clock, and a gateway \
                     refuses fetches more than fetch_max_age_secs off its clock",
                    protocol::clock::describe(offset_ms)
                ),
                Some(ClockNews::Back { offset_ms }) => tracing::info!(
                    offset_ms,
                    "this node's clock is within the bound of the directory's again"
                ),
                None => {}
            }
        }
        let doc = timed.doc;
        let mut routes: HashMap<NodeId, SocketAddr> = HashMap::new();
        let next = self
            .dir
            .topology(true, doc.valid_until_ms, None)
            .await
            .ok()
            .map(Arc::new);
        if let Some(n) = &next {
            routes.extend(
                n.nodes
                    .iter()
                    .filter_map(|x| Some((x.identity, x.socket_addr().ok()?))),
            );
        }
        routes.extend(
            doc.nodes
                .iter()
                .filter_map(|x| Some((x.identity, x.socket_addr().ok()?))),
        );
        let n = routes.len();
        self.shared.metrics.topology_nodes.set(n as i64);
        // Links to nodes no longer in the current or next topology go, with
        // whatever was queued for them.
        let gone = self.shared.links.retain(|id| routes.contains_key(id));
        if gone > 0 {
            tracing::info!(peers = gone, "links to nodes that left the topology closed");
        }
        *self
            .shared
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner()) = routes;
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((doc.epoch, doc.revision));
        let epoch = doc.epoch;
        self.shared.health.refreshed(now_ms());
        {
            let mut o = self.outage.lock().unwrap_or_else(|p| p.into_inner());
            if o.failures > 0 {
                tracing::info!(
                    failures = o.failures,
                    epoch,
                    "topology refreshed again after the directory was unreachable"
                );
            }
            *o = Outage {
                failures: 0,
                usable_until_ms: protocol::clock::keys_usable_until(
                    next.as_deref().unwrap_or(&doc),
                ),
                epoch: next.as_ref().map_or(epoch, |n| n.epoch),
                expired_said: false,
            };
        }
        self.shared
            .topologies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .update(Arc::new(doc), next);
        Ok(epoch)
    }
}

/// What distinguishes one kind of Sphinx node from another.
pub struct NodeOptions {
    /// Published role.
    pub role: Role,
    /// Final-hop packets and client frames.
    pub handler: Arc<dyn Handler>,
    /// Metrics registry, served on `metrics_listen` (the role may add series).
    pub registry: prometheus::Registry,
    /// Limits on connections the node accepts.
    pub inbound: LinkConfig,
    /// Gateways: where clients connect, published in the descriptor (a
    /// name is resolved at each registration).
    pub client_address: Option<net::HostPort>,
    /// The role's own `/readyz` checks, after the node's (a gateway's storage).
    pub checks: Option<net::health::Readiness>,
}

impl NodeOptions {
    /// A node of `role` handing its final-hop packets and other frames to
    /// `handler`, with a fresh registry, the default inbound limits and no
    /// client address.
    pub fn new(role: Role, handler: Arc<dyn Handler>) -> Self {
        Self {
            role,
            handler,
            registry: prometheus::Registry::new(),
            inbound: LinkConfig::default(),
            client_address: None,
            checks: None,
        }
    }
}

/// Starts a Sphinx node as `opts` describe: binds, makes fresh Sphinx keys,
/// registers with the directory and starts routing. Returns once the sockets
/// are bound.
pub async fn start_node(cfg: NodeConfig, opts: NodeOptions) -> Result<Node, Error> {
    let NodeOptions {
        role,
        handler,
        registry,
        inbound,
        client_address,
        checks,
    } = opts;
    let role_name = match role {
        Role::Mix => "mixnode",
        Role::Gateway => "gateway",
    };
    let dir = Authorities::new(&cfg.authorities, cfg.authority_threshold).map_err(|reason| {
        Error::Config {
            key: "authorities",
            reason,
        }
    })?;
    net::identity::create_private_dir(&cfg.data_dir)?;
    let identity = net::identity::load_or_create_identity(&cfg.data_dir.join("identity.key"))?;
    let id = identity.verifying_key().to_bytes();
    let creds = net::tls::Credentials::new(&identity)?;

    // The directory's schedule comes with its topology; until we have one we
    // learn it from the first document. Keys are made fresh on every start:
    // a key used before a restart lost its replay cache and is never used again.
    // The authorities may still be starting (same host, same boot): retry for a while.
    let mut wait = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let schedule = loop {
        match dir.topology(false, now_ms(), None).await {
            Ok(t) => break t.schedule,
            Err(e @ net::Error::Untrusted(_)) => {
                return Err(Error::Config {
                    key: "authorities",
                    reason: format!("{e}; check the authorities' keys and authority_threshold"),
                });
            }
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(Error::Config {
                    key: "authorities",
                    reason: format!(
                        "no valid topology from {} ({e}); are the authorities running, and \
                         are their keys and authority_threshold right?",
                        dir.urls().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "no topology from the authorities yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    };

    let endpoint = net::link::bind(cfg.listen, &creds, cfg.jumbo_frames)?;
    let quic_addr = endpoint.local_addr()?;

    let metrics = Metrics::new(&registry, role_name);
    let link_metrics = LinkMetrics::new(&registry);
    let links = Links::new(
        endpoint.clone(),
        creds,
        LinkConfig {
            queue_capacity: cfg.link_queue,
            ..LinkConfig::default()
        },
        link_metrics.clone(),
    );

    let epoch = schedule.epoch_at(now_ms());
    let mut ring = KeyRing::new();
    ring.insert(sphinx_key(epoch, &cfg, &schedule));
    ring.insert(sphinx_key(epoch + 1, &cfg, &schedule));

    if cfg.dangerous_accept_replays {
        tracing::warn!(
            "DANGEROUS: dangerous_accept_replays is set: replayed packets are forwarded; \
             benchmarks only"
        );
    }
    if cfg.dangerous_zero_delay {
        tracing::warn!(
            "DANGEROUS: dangerous_zero_delay is set: packets are forwarded without their \
             mixing delay, which removes this node's mixing; evaluation only"
        );
    }
    if cfg.dangerous_no_cover {
        tracing::warn!(
            "DANGEROUS: dangerous_no_cover is set: this node sends no loop cover and cannot \
             notice packets being held or dropped; evaluation only"
        );
    }
    let max_delay = if cfg.dangerous_zero_delay {
        Duration::ZERO
    } else {
        Duration::from_millis(cfg.max_delay_ms)
    };
    // Demand refreshes: an unknown next hop, or one whose connects fail
    // (it may have restarted elsewhere).
    let refresh = links.unreachable();
    let (shared, job_rx) = Shared::new(
        ring,
        links,
        metrics,
        max_delay,
        cfg.worker_queue,
        cfg.delay_queue,
        refresh.clone(),
        handler,
        id,
    );
    let workers_n = if cfg.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.workers
    };
    let workers = pipeline::spawn_workers(
        workers_n,
        shared.clone(),
        job_rx,
        tokio::runtime::Handle::current(),
    )?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if !cfg.dangerous_no_cover {
        tasks.push(tokio::spawn(loops::run(shared.clone())));
    }
    let sink_shared = shared.clone();
    // Node links only from nodes of the topology (current or next epoch). An
    // unknown dialler may be a node that just joined: refresh (at most once
    // a second) so that its retry finds it known.
    let filter_shared = shared.clone();
    let peers: PeerFilter = Arc::new(move |id: &NodeId| {
        let known = filter_shared
            .routes
            .read()
            .map(|r| r.contains_key(id))
            .unwrap_or(false);
        if !known {
            filter_shared.request_refresh();
        }
        known
    });
    tasks.push(tokio::spawn(net::link::serve(
        endpoint.clone(),
        Arc::new(move |f: Frame<'_>, c: &net::conn::PeerConn| sink_shared.submit(f, c)),
        link_metrics.clone(),
        inbound,
        Some(peers),
    )));

    let metrics_listener = tokio::net::TcpListener::bind(cfg.metrics_listen)
        .await
        .map_err(|source| net::Error::Bind {
            addr: cfg.metrics_listen,
            source,
        })?;
    let metrics_addr = metrics_listener.local_addr()?;
    let ready = {
        let node = NodeRef(shared.clone());
        let period_ms = cfg.topology_refresh_secs.max(1) * 1000;
        let loops_on = !cfg.dangerous_no_cover;
        let readiness: net::health::Readiness = Arc::new(move || {
            let mut out = node.ready_checks(period_ms, loops_on);
            if let Some(role) = &checks {
                out.extend(role());
            }
            out
        });
        readiness
    };
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let _ = net::metrics::serve(metrics_listener, registry, ready, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await;
    }));

    let control = Arc::new(Control {
        identity,
        public_address: cfg.public_address.clone(),
        quic_addr,
        dir,
        shared: shared.clone(),
        last_seen: Mutex::new(None),
        outage: Mutex::new(Outage::default()),
        cfg: cfg.clone(),
        role,
        client_address,
    });
    let registered = match control.register().await {
        Ok(()) => {
            tracing::info!("registered with the directory");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "registration failed; will retry");
            false
        }
    };
    if let Err(e) = control.refresh().await {
        control.refresh_failed(&e);
    }
    tasks.push(tokio::spawn(maintain(
        control,
        schedule,
        refresh.clone(),
        registered,
    )));

    tracing::info!(
        identity = %hex::encode(&id[..6]),
        role = role_name,
        workers = workers_n,
        epoch,
        "node running"
    );
    Ok(Node {
        quic_addr,
        metrics_addr,
        identity: id,
        shared,
        link_metrics,
        endpoint,
        shutdown,
        refresh,
        workers,
        tasks,
        role,
    })
}

/// Key rotation, re-registration and topology refresh.
async fn maintain(
    control: Arc<Control>,
    schedule: EpochSchedule,
    refresh: Arc<Notify>,
    registered: bool,
) {
    let period = Duration::from_secs(control.cfg.topology_refresh_secs.max(1));
    let grace_ms = 3 * control.cfg.max_delay_ms + KEY_GRACE_MS;
    // `None` until a registration succeeds: retried every round until then.
    let mut registered_epoch = registered.then(|| schedule.epoch_at(now_ms()));
    let mut last_refresh = tokio::time::Instant::now();
    loop {
        let until_epoch = Duration::from_millis(schedule.until_next_ms(now_ms()).max(1));
        // A topology older than our clock's epoch (the authorities had not
        // published the new one yet when we asked): ask again in a second
        // rather than at the next refresh, so that packets built for the new
        // epoch are not refused here for long. (Not while refreshes fail:
        // then at the usual pace.)
        let failing = control
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures
            > 0;
        let behind = !failing
            && control
                .last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|(e, _)| e < schedule.epoch_at(now_ms()));
        let wait = if behind {
            Duration::from_secs(1)
        } else {
            period.min(until_epoch)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = refresh.notified() => {
                // Demand refreshes (unknown next hop) at most once a second.
                if last_refresh.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(Duration::from_secs(1) - last_refresh.elapsed()).await;
                }
            }
        }
        let now = now_ms();
        let epoch = schedule.epoch_at(now);
        {
            let mut ring = control
                .shared
                .keys
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if ring.get(epoch + 1).is_none() {
                ring.insert(sphinx_key(epoch + 1, &control.cfg, &schedule));
            }
            // The previous epoch's key lives on for packets still in flight.
            let floor = if now.saturating_sub(schedule.start_ms(epoch)) > grace_ms {
                epoch
            } else {
                epoch.saturating_sub(1)
            };
            for e in ring.retire_before(floor) {
                tracing::info!(epoch = e, "sphinx key erased");
            }
            let held = ring.epochs();
            let m = &control.shared.metrics;
            m.sphinx_keys.set(held.len() as i64);
            m.sphinx_key_oldest_epoch
                .set(held.first().copied().unwrap_or(0) as i64);
            if let Some(k) = ring.get(epoch) {
                control
                    .shared
                    .metrics
                    .replay_entries
                    .set(k.replay_stats().0 as i64);
            }
        }
        if registered_epoch != Some(epoch) || now % 600_000 < period.as_millis() as u64 {
            match control.register().await {
                Ok(()) => registered_epoch = Some(epoch),
                Err(e) => tracing::warn!(error = %e, "re-registration failed"),
            }
        }
        last_refresh = tokio::time::Instant::now();
        if let Err(e) = control.refresh().await {
            control.refresh_failed(&e);
        }
    }
}
