#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod config;
mod store;

pub use config::DirectoryConfig;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use protocol::NodeId;
use protocol::epoch::EpochSchedule;
use protocol::topology::{self, NodeDescriptor, Signed, TopologyDocument, TopologyNode};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use store::Store;
use thiserror::Error;

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

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Published {
    revision: u64,
    signed: Arc<Signed>,
    nodes: Vec<TopologyNode>,
}

#[derive(Default)]
struct Descriptors {
    descriptors: BTreeMap<NodeId, (NodeDescriptor, Signed)>,
    published: HashMap<u64, Published>,
}

struct Inner {
    key: SigningKey,
    cfg: DirectoryConfig,
    schedule: EpochSchedule,
    store: Store,
    state: Mutex<Descriptors>,
    metrics: Metrics,
    registry: Registry,
}

#[derive(Clone)]
struct Metrics {
    registrations: IntCounterVec,
    nodes: IntGauge,
}

/// A running directory authority's shared state.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

impl Directory {
    /// Opens (or creates) the authority's key and store under `cfg.data_dir`.
    pub fn open(cfg: DirectoryConfig) -> Result<Self, Error> {
        let schedule = EpochSchedule::new(
            cfg.genesis_unix_ms,
            cfg.epoch_length_secs.saturating_mul(1000),
        )
        .ok_or_else(|| Error::Config("epoch_length_secs must be above zero".into()))?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        let key = net::identity::load_or_create_identity(&cfg.data_dir.join("authority.key"))?;
        let store = Store::open(&cfg.data_dir.join("directory.redb"))?;
        // Load what was registered before a restart; verify it once here.
        let now_epoch = schedule.epoch_at(now_ms());
        let mut state = Descriptors::default();
        for signed in store.all()? {
            match topology::verify_descriptor(&signed, now_epoch) {
                Ok(d) => {
                    state.descriptors.insert(d.identity, (d, signed));
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
        let metrics = Metrics {
            registrations: IntCounterVec::new(
                Opts::new(
                    "umbra_directory_registrations_total",
                    "Descriptor registrations by outcome",
                ),
                &["outcome"],
            )
            .map_err(|e| Error::Config(e.to_string()))?,
            nodes: IntGauge::new("umbra_directory_nodes", "Nodes in the current topology")
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        registry
            .register(Box::new(metrics.registrations.clone()))
            .and_then(|_| registry.register(Box::new(metrics.nodes.clone())))
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                key,
                cfg,
                schedule,
                store,
                state: Mutex::new(state),
                metrics,
                registry,
            }),
        })
    }

    /// The authority's public key, which clients and nodes pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.inner.key.verifying_key().to_bytes()
    }

    /// The epoch schedule the authority publishes.
    pub fn schedule(&self) -> EpochSchedule {
        self.inner.schedule
    }

    /// Verifies and stores a descriptor at time `now_ms`. A descriptor older
    /// than the one held for the same node is refused, so nobody can roll a
    /// node back to keys it has erased.
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
        outcome
    }

    fn register_inner(&self, signed: &Signed, now_ms: u64) -> Result<NodeDescriptor, Error> {
        let epoch = self.inner.schedule.epoch_at(now_ms);
        let d = topology::verify_descriptor(signed, epoch)?;
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut state, epoch);
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
        self.inner.store.put(&d.identity, signed)?;
        state
            .descriptors
            .insert(d.identity, (d.clone(), signed.clone()));
        Ok(d)
    }

    /// Forgets descriptors with no key for `now_epoch` or the next one.
    fn prune(&self, state: &mut Descriptors, now_epoch: u64) {
        let stale: Vec<NodeId> = state
            .descriptors
            .iter()
            .filter(|(_, (d, _))| {
                d.key_for(now_epoch).is_none() && d.key_for(now_epoch + 1).is_none()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            state.descriptors.remove(&id);
            if let Err(e) = self.inner.store.delete(&id) {
                tracing::warn!(error = %e, "cannot delete a stale descriptor");
            }
        }
        state.published.retain(|e, _| *e + 1 >= now_epoch);
    }

    /// The signed topology for `epoch`. It is re-signed, with a higher
    /// revision, only when the nodes serving that epoch change.
    pub fn topology(&self, epoch: u64, now_ms: u64) -> Result<Arc<Signed>, Error> {
        let now_epoch = self.inner.schedule.epoch_at(now_ms);
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        self.prune(&mut state, now_epoch);
        let descriptors: Vec<NodeDescriptor> =
            state.descriptors.values().map(|(d, _)| d.clone()).collect();
        let mut doc = TopologyDocument::build(
            epoch,
            0,
            self.inner.schedule,
            self.inner.cfg.params,
            &descriptors,
        );
        if let Some(p) = state.published.get(&epoch)
            && p.nodes == doc.nodes
        {
            return Ok(p.signed.clone());
        }
        // Revisions must grow across restarts too: use the clock, never less than last + 1.
        doc.revision = state
            .published
            .get(&epoch)
            .map_or(now_ms, |p| (p.revision + 1).max(now_ms));
        if epoch == now_epoch {
            self.inner.metrics.nodes.set(doc.nodes.len() as i64);
        }
        let signed = Arc::new(
            Signed::sign(&doc, topology::TOPOLOGY_DOMAIN, &self.inner.key)
                .map_err(|e| Error::Config(e.to_string()))?,
        );
        state.published.insert(
            epoch,
            Published {
                revision: doc.revision,
                signed: signed.clone(),
                nodes: doc.nodes,
            },
        );
        Ok(signed)
    }

    /// The HTTP API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/descriptors", post(register_handler))
            .route("/v1/topology", get(current_handler))
            .route("/v1/topology/next", get(next_handler))
            .route("/v1/authority", get(authority_handler))
            .route("/metrics", get(metrics_handler))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
            .with_state(self.clone())
    }

    /// Serves the API on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, epoch_length_s = self.inner.cfg.epoch_length_secs, "directory authority serving");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
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

async fn register_handler(State(dir): State<Directory>, body: axum::body::Bytes) -> Response {
    let signed: Signed = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("undecodable descriptor: {e}"),
            );
        }
    };
    match dir.register(&signed, now_ms()) {
        Ok(d) => {
            tracing::info!(node = %hex::encode(&d.identity[..6]), role = ?d.role, "descriptor accepted");
            Json(serde_json::json!({ "status": "accepted" })).into_response()
        }
        Err(Error::Refused(e)) => {
            tracing::info!(error = %e, "descriptor refused");
            error_response(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store descriptor");
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
    match dir.topology(epoch, now) {
        Ok(s) => Json(&*s).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot build topology");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "topology unavailable".into(),
            )
        }
    }
}

async fn current_handler(State(dir): State<Directory>) -> Response {
    topology_response(&dir, false)
}

async fn next_handler(State(dir): State<Directory>) -> Response {
    topology_response(&dir, true)
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
