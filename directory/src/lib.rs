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
use protocol::epoch::EpochSchedule;
use protocol::topology::{self, NodeDescriptor, Signed, TopologyDocument};
use std::collections::HashMap;
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
    epoch: u64,
    revision: u64,
    signed: Arc<Signed>,
    node_set: Vec<NodeDescriptor>,
}

struct Inner {
    key: SigningKey,
    cfg: DirectoryConfig,
    schedule: EpochSchedule,
    store: Store,
    published: Mutex<HashMap<u64, Published>>,
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
                published: Mutex::new(HashMap::new()),
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

    /// Verifies and stores a descriptor at time `now_ms`.
    pub fn register(
        &self,
        signed: &Signed,
        now_ms: u64,
    ) -> Result<NodeDescriptor, protocol::Error> {
        let epoch = self.inner.schedule.epoch_at(now_ms);
        let outcome = topology::verify_descriptor(signed, epoch);
        let label = if outcome.is_ok() {
            "accepted"
        } else {
            "refused"
        };
        self.inner
            .metrics
            .registrations
            .with_label_values(&[label])
            .inc();
        let d = outcome?;
        if self.inner.store.count().unwrap_or(0) >= self.inner.cfg.max_nodes
            && self.inner.store.get(&d.identity).ok().flatten().is_none()
        {
            return Err(protocol::Error::Rejected("directory is full".into()));
        }
        self.inner
            .store
            .put(&d.identity, signed)
            .map_err(|e| protocol::Error::Rejected(format!("could not store descriptor: {e}")))?;
        Ok(d)
    }

    /// The signed topology for `epoch`, rebuilt (with a higher revision) if
    /// the set of nodes serving that epoch changed since it was last signed.
    pub fn topology(&self, epoch: u64, now_ms: u64) -> Result<Arc<Signed>, Error> {
        let now_epoch = self.inner.schedule.epoch_at(now_ms);
        let mut nodes: Vec<NodeDescriptor> = self
            .inner
            .store
            .all()?
            .into_iter()
            // Re-verify what we load: the store is ours, but a descriptor
            // verified at registration must still name a key for this epoch.
            .filter_map(|s| topology::verify_descriptor(&s, now_epoch).ok())
            .filter(|d| d.key_for(epoch).is_some())
            .collect();
        nodes.sort_by_key(|d| d.identity);
        let mut published = self
            .inner
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        published.retain(|e, _| *e + 1 >= now_epoch);
        if let Some(p) = published.get(&epoch)
            && p.node_set == nodes
        {
            return Ok(p.signed.clone());
        }
        let revision = published.get(&epoch).map_or(0, |p| p.revision + 1);
        let doc = TopologyDocument::build(
            epoch,
            revision,
            self.inner.schedule,
            self.inner.cfg.params,
            &nodes,
        );
        if epoch == now_epoch {
            self.inner.metrics.nodes.set(doc.nodes.len() as i64);
        }
        let signed = Arc::new(
            Signed::sign(&doc, topology::TOPOLOGY_DOMAIN, &self.inner.key)
                .map_err(|e| Error::Config(e.to_string()))?,
        );
        published.insert(
            epoch,
            Published {
                epoch,
                revision,
                signed: signed.clone(),
                node_set: nodes,
            },
        );
        debug_assert!(published.values().all(|p| p.epoch + 1 >= now_epoch));
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
        Err(e) => {
            tracing::info!(error = %e, "descriptor refused");
            error_response(StatusCode::BAD_REQUEST, e.to_string())
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
    out.into_response()
}
