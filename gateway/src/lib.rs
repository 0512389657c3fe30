#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod batch;
mod config;
mod metrics;
mod storage;
mod storage_bench;

pub use config::GatewayConfig;
pub use metrics::GatewayMetrics;
pub use storage::{Dropboxes, MAX_BATCHES, ROW_OVERHEAD, Refusal, StorageError, SurbReply};
pub use storage_bench::{StoreBatch, StoreBenchOptions, store_bench};

use net::link::{LinkConfig, LinkMetrics};
use node::{Handler, Node, NodeOptions, NodeRef, PeerConn};
use protocol::cover::Poisson;
use protocol::frame::{self, Frame, FrameKind};
use protocol::messages::Request;
use protocol::topology::{NetworkParams, Role};
use rand::SeedableRng;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::{Limits, Op, Storage};
use thiserror::Error;
use tokio::sync::mpsc;

/// Errors of the gateway.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The Sphinx node part failed to start (see inner error for whose fault).
    #[error(transparent)]
    Node(#[from] node::Error),
    /// Networking or key files (see inner error for whose fault).
    #[error(transparent)]
    Net(#[from] net::Error),
    /// The dropbox store (local fault).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Local I/O (this machine's fault).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A subscribed client: where its replies go.
struct Client {
    generation: u64,
    /// The connection that subscribed it.
    conn: usize,
    tx: mpsc::Sender<Vec<u8>>,
}

/// State shared by the gateway's parts.
struct Shared {
    metrics: GatewayMetrics,
    storage: crossbeam_channel::Sender<Op>,
    clients: Mutex<HashMap<[u8; 32], Client>>,
    /// The address each client connection subscribed (one per connection).
    by_conn: Mutex<HashMap<usize, [u8; 32]>>,
    generation: AtomicU64,
    max_clients: usize,
    client_queue: usize,
}

impl Shared {
    fn to_storage(&self, node: &NodeRef, op: Op) {
        match self.storage.try_send(op) {
            Ok(()) => self.metrics.storage_queue.inc(),
            Err(_) => node.metrics().drop("queue_full"),
        }
    }

    /// A client subscribed `address` on `conn`: its replies go to a stream on
    /// that connection, as part of the constant-rate downlink.
    /// One subscription per connection: a second Subscribe on it replaces
    /// the first (whose slot goes), so a connection cannot take many slots.
    fn subscribe(self: &Arc<Self>, address: [u8; 32], conn: &PeerConn, node: &NodeRef) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self
            .by_conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn.id(), address);
        // Dropping its sender ends the old downlink task. Only if it is still
        // this connection's: another connection may have taken the address
        // over since (a client that reconnected).
        if let Some(old) = previous.filter(|old| *old != address)
            && clients.get(&old).is_some_and(|c| c.conn == conn.id())
        {
            clients.remove(&old);
            node.metrics().drop("resubscribed");
        }
        if !clients.contains_key(&address) && clients.len() >= self.max_clients {
            node.metrics().drop("too_many_clients");
            return;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.client_queue);
        clients.insert(
            address,
            Client {
                generation,
                conn: conn.id(),
                tx,
            },
        );
        self.metrics.clients.set(clients.len() as i64);
        drop(clients);
        let shared = self.clone();
        let conn = conn.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let id = conn.id();
            deliver(conn, rx, node, shared.metrics.clone()).await;
            let mut clients = shared.clients.lock().unwrap_or_else(|p| p.into_inner());
            if clients
                .get(&address)
                .is_some_and(|c| c.generation == generation)
            {
                clients.remove(&address);
            }
            // The connection's record goes too, unless it subscribed the
            // address again since: also when another connection took the
            // address over (a client that reconnected), else every such
            // takeover would leave a record behind for ever.
            if clients.get(&address).is_none_or(|c| c.conn != id) {
                let mut by_conn = shared.by_conn.lock().unwrap_or_else(|p| p.into_inner());
                if by_conn.get(&id) == Some(&address) {
                    by_conn.remove(&id);
                }
            }
            shared.metrics.clients.set(clients.len() as i64);
        });
    }
}

/// The client's downlink: Deliver frames as a Poisson stream at the
/// topology's λ_D, a queued reply when there is one and a dummy (identifier
/// zero, zero payload) when there is none, until the client goes away. An
/// observer of the link (the client's network, or anyone who sees its
/// traffic) sees the same stream whether the client is idle, sending or
/// fetching; replies wait in the bounded queue for their tick.
async fn deliver(
    conn: PeerConn,
    mut rx: mpsc::Receiver<Vec<u8>>,
    node: NodeRef,
    metrics: GatewayMetrics,
) {
    // A client that grants no stream, or stops reading, is dropped: no
    // task waits on it for ever.
    let Ok(Ok(mut send)) = tokio::time::timeout(STALL, conn.open_uni()).await else {
        return;
    };
    let Ok(dummy) = frame::encode_parts(
        FrameKind::Deliver,
        0,
        &[&[0u8; 16], &[0u8; protocol::packet::PAYLOAD_SIZE]],
    ) else {
        return;
    };
    let (real, dummies) = (
        metrics.downlink.with_label_values(&["real"]),
        metrics.downlink.with_label_values(&["dummy"]),
    );
    let rate_now = || {
        node.topology()
            .map_or(NetworkParams::default().lambda_downlink, |t| {
                t.params.lambda_downlink
            })
    };
    let origin = tokio::time::Instant::now();
    let secs = |t: tokio::time::Instant| t.duration_since(origin).as_secs_f64();
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut rate = rate_now();
    let mut ticks = Poisson::new(rate, 0.0, &mut rng);
    loop {
        // Wake at the next tick, or within a second to follow a new rate.
        let wait = (ticks.next_at() - secs(tokio::time::Instant::now())).clamp(0.0, 1.0);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
            _ = conn.closed() => return,
        }
        let now = tokio::time::Instant::now();
        if ticks.poll(secs(now), &mut rng).is_none() {
            let want = rate_now();
            if want != rate {
                rate = want;
                ticks = Poisson::new(rate, secs(now), &mut rng);
            }
            continue;
        }
        let owned;
        let frame: &[u8] = match rx.try_recv() {
            Ok(f) => {
                real.inc();
                owned = f;
                &owned
            }
            Err(mpsc::error::TryRecvError::Empty) => {
                dummies.inc();
                &dummy
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
        };
        let written = tokio::select! {
            w = tokio::time::timeout(STALL, send.write_all(frame)) => w,
            _ = conn.closed() => return,
        };
        if !matches!(written, Ok(Ok(()))) {
            conn.close(2, b"downlink stalled");
            return;
        }
        // The rate follows the topology; after a stall (a slow client's flow
        // control) the stream restarts from now instead of bursting.
        let after = tokio::time::Instant::now();
        let want = rate_now();
        if want != rate || ticks.next_at() + 1.0 < secs(after) {
            rate = want;
            ticks = Poisson::new(rate, secs(after), &mut rng);
        }
    }
}

/// How long a client's downlink may stall (no stream granted, a write
/// blocked by its flow control) before the gateway drops the client.
const STALL: Duration = Duration::from_secs(10);

struct GatewayHandler(Arc<Shared>);

impl Handler for GatewayHandler {
    fn on_final(
        &self,
        node: &NodeRef,
        _epoch: u64,
        destination: [u8; 32],
        identifier: [u8; 16],
        payload: Vec<u8>,
    ) {
        let shared = &self.0;
        if identifier != [0; 16] {
            // A SURB reply for one of our clients: hand it over, still sealed.
            let frame = frame::encode_parts(FrameKind::Deliver, 0, &[&identifier, &payload]);
            let clients = shared.clients.lock().unwrap_or_else(|p| p.into_inner());
            match (clients.get(&destination), frame) {
                (Some(c), Ok(f)) => match c.tx.try_send(f) {
                    Ok(()) => shared.metrics.deliveries.inc(),
                    // That client's downlink is behind (its link is slow
                    // or lossy), not this node: its own reason, so the
                    // node's saturation alert does not fire for it.
                    Err(_) => node.metrics().drop("downlink_full"),
                },
                _ => node.metrics().drop("no_client"),
            }
            return;
        }
        let request =
            protocol::packet::recover_plaintext(&payload).and_then(|p| Request::decode(&p));
        match request {
            Ok(Request::Store {
                dropbox,
                ciphertext,
            }) => shared.to_storage(
                node,
                Op::Store {
                    dropbox,
                    ciphertext,
                    ack: None,
                },
            ),
            Ok(Request::StoreAcked {
                dropbox,
                ciphertext,
                reply_epoch,
                surb,
            }) => shared.to_storage(
                node,
                Op::Store {
                    dropbox,
                    ciphertext,
                    ack: Some(storage::StoreAck {
                        reply_epoch,
                        surb,
                        node: node.clone(),
                    }),
                },
            ),
            Ok(Request::StoreBatched {
                dropbox,
                batch,
                slot,
                ciphertext,
            }) => shared.to_storage(
                node,
                Op::StoreBatched {
                    dropbox,
                    ciphertext,
                    batch,
                    slot,
                },
            ),
            Ok(Request::AckBatch {
                batch,
                count,
                wait_ms,
                reply_epoch,
                surb,
            }) => shared.to_storage(
                node,
                Op::AckBatch {
                    batch,
                    count,
                    wait_ms,
                    ack: storage::StoreAck {
                        reply_epoch,
                        surb,
                        node: node.clone(),
                    },
                },
            ),
            Ok(Request::Fetch(req)) => shared.to_storage(
                node,
                Op::Fetch {
                    req,
                    node: node.clone(),
                },
            ),
            Ok(Request::Drop) => shared.metrics.cover.inc(),
            Err(_) => node.metrics().drop("malformed"),
        }
    }
}

/// Handles frames from clients on the client endpoint.
fn client_frame(shared: &Arc<Shared>, node: &NodeRef, f: Frame<'_>, conn: &PeerConn) {
    match f.kind {
        FrameKind::Inject => {
            let (Some(first_hop), Some(packet)) = (f.node_or_address(), f.packet()) else {
                node.metrics().drop("malformed");
                return;
            };
            // Clients enter at layer 1 of the epoch their packet was built
            // for (layers reshuffle each epoch; the node holds the previous,
            // current and next epoch's topology), never deeper or at a gateway.
            if !node.is_first_layer(f.epoch, &first_hop) {
                node.metrics().drop("bad_first_hop");
                return;
            }
            node.forward(f.epoch, first_hop, packet);
        }
        FrameKind::Subscribe => {
            if let Some(address) = f.node_or_address() {
                shared.subscribe(address, conn, node);
            }
        }
        _ => node.metrics().drop("malformed"),
    }
}

/// A running gateway.
pub struct Gateway {
    node: Node,
    /// Where clients connect.
    pub client_addr: SocketAddr,
    client_endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    storage_thread: Option<std::thread::JoinHandle<()>>,
    expiry: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// The Sphinx node under the gateway.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Gateway-specific metrics.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.shared.metrics
    }

    /// Client connections with a subscription on record (tests: the
    /// records are bounded by the connections that hold a subscription).
    #[doc(hidden)]
    pub fn subscribed_connections(&self) -> usize {
        self.shared
            .by_conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Waits until every storage request queued so far is committed.
    pub async fn sync_storage(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.shared.storage.send(Op::Sync(tx)).is_ok() {
            self.shared.metrics.storage_queue.inc();
            let _ =
                tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await;
        }
    }

    /// Stops the gateway; committed messages stay on disk.
    pub async fn shutdown(mut self) {
        self.client_endpoint.close(0u8.into(), b"shutdown");
        self.expiry.abort();
        self.node.shutdown().await;
        // The storage thread commits what it holds, then stops.
        if self.shared.storage.send(Op::Stop).is_ok() {
            self.shared.metrics.storage_queue.inc();
        }
        if let Some(t) = self.storage_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Starts a gateway.
pub async fn start(cfg: GatewayConfig) -> Result<Gateway, Error> {
    let data_dir = &cfg.node.data_dir;
    net::identity::create_private_dir(data_dir)?;
    let identity = net::identity::load_or_create_identity(&data_dir.join("identity.key"))?;
    let creds = net::tls::Credentials::new(&identity)?;
    let client_endpoint =
        net::link::bind_for_clients(cfg.client_listen, &creds, cfg.node.jumbo_frames)?;
    let client_addr = client_endpoint.local_addr()?;

    let registry = prometheus::Registry::new();
    let metrics = GatewayMetrics::new(&registry);
    let storage = Storage::open(&data_dir.join("dropboxes.redb"), Limits::from_config(&cfg))?;
    let (storage_tx, storage_rx) = crossbeam_channel::bounded(cfg.storage_queue.max(1));
    let m = metrics.clone();
    let rt = tokio::runtime::Handle::current();
    let storage_thread = std::thread::Builder::new()
        .name("dropbox-store".into())
        .spawn(move || storage::run(storage, storage_rx, m, rt))?;
    let shared = Arc::new(Shared {
        metrics,
        storage: storage_tx,
        clients: Mutex::new(HashMap::new()),
        by_conn: Mutex::new(HashMap::new()),
        generation: AtomicU64::new(0),
        max_clients: cfg.max_clients,
        client_queue: cfg.client_queue.max(1),
    });

    let node = node::start_node(
        cfg.node.clone(),
        NodeOptions {
            role: Role::Gateway,
            handler: Arc::new(GatewayHandler(shared.clone())),
            registry: registry.clone(),
            inbound: LinkConfig::default(),
            client_address: Some(
                cfg.public_client_address
                    .clone()
                    .unwrap_or(net::HostPort::Ip(client_addr)),
            ),
            checks: Some({
                let m = shared.metrics.clone();
                Arc::new(move || {
                    vec![if m.storage_ok.get() == 1 {
                        net::health::Check::pass("storage", "")
                    } else {
                        net::health::Check::fail(
                            "storage",
                            "the last dropbox commit failed (disk full or failing): \
                             stores are refused, fetches still served",
                        )
                    }]
                })
            }),
        },
    )
    .await?;

    // Clients: their own endpoint, rate limited per connection.
    let handle = node.handle();
    let sink_shared = shared.clone();
    let client_cfg = LinkConfig {
        inbound_rate: Some(cfg.client_rate_pps),
        inbound_burst: cfg.client_burst,
        max_inbound_connections: cfg.max_clients,
        max_per_ip: cfg.max_clients_per_ip,
        ..LinkConfig::default()
    };
    tokio::spawn(net::link::serve(
        client_endpoint.clone(),
        Arc::new(move |f: Frame<'_>, c: &PeerConn| client_frame(&sink_shared, &handle, f, c)),
        LinkMetrics::with_prefix(&registry, "umbra_gateway_client"),
        client_cfg,
        None,
    ));

    let expire_tx = shared.storage.clone();
    let expire_metrics = shared.metrics.clone();
    let expiry = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if expire_tx.try_send(Op::Expire).is_ok() {
                expire_metrics.storage_queue.inc();
            }
        }
    });
    tracing::info!("gateway running");
    Ok(Gateway {
        node,
        client_addr,
        client_endpoint,
        shared,
        storage_thread: Some(storage_thread),
        expiry,
    })
}

/// Runs a gateway until `shutdown` completes.
pub async fn run(cfg: GatewayConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let gw = start(cfg).await?;
    shutdown.await;
    gw.shutdown().await;
    Ok(())
}
