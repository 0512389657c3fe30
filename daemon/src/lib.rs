#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod access;
mod api;
pub mod config;
pub mod history;
mod server;

pub use config::{DaemonConfig, DaemonFile};
pub use server::MAX_REQUEST;

use client_sdk::state::Changes;
use client_sdk::store::Store;
use client_sdk::{Client, ContactId};
use history::History;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;

/// Errors of the daemon. Each says whose fault it is.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is unusable (the operator's fault): names the key and the file.
    #[error("{file}: {key}: {reason}")]
    Config {
        /// The file (or `command line`).
        file: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client did not start or its store did not open.
    #[error(transparent)]
    Client(#[from] client_sdk::Error),
    /// A file in the data directory cannot be read or written (local fault).
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The API's address cannot be bound (local fault: in use, or not ours).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What the daemon's tasks and connections share.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) me: ContactId,
    /// The record of conversations; its lock also orders the writes.
    pub(crate) history: Mutex<History>,
    pub(crate) store: Arc<Store>,
    /// Events for every connection (JSON text).
    pub(crate) events: broadcast::Sender<Arc<str>>,
    /// Set when the daemon stops: connections close.
    pub(crate) stop: watch::Sender<bool>,
}

impl Ctx {
    /// Writes `ch` to the history store, after any earlier changes whose
    /// write failed; under the history lock the caller holds, so writes land
    /// in the order they were made. On failure what was not written is kept
    /// in `h` for the next call: memory and disk never part for good.
    pub(crate) async fn save(&self, h: &mut History, ch: Changes) -> Result<(), Error> {
        let mut queue = h.take_unsaved();
        if !ch.is_empty() {
            queue.push(ch);
        }
        if queue.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut q = queue.into_iter();
            while let Some(c) = q.next() {
                if let Err(e) = store.commit(&c) {
                    let mut left = vec![c];
                    left.extend(q);
                    return (left, Err(e));
                }
            }
            (Vec::new(), Ok(()))
        })
        .await;
        let (left, res) = written.map_err(|e| Error::File {
            path: self.store.path().to_owned(),
            reason: e.to_string(),
        })?;
        for c in left {
            h.push_unsaved(c);
        }
        res.map_err(Error::Client)
    }

    /// Sends an event to every connection.
    pub(crate) fn emit(&self, v: serde_json::Value) {
        let _ = self.events.send(Arc::from(v.to_string()));
    }
}

/// The client, its history and the tasks that turn the client's inbox,
/// statuses and group changes into history and events: all of a daemon
/// but its HTTP server.
struct Core {
    ctx: Arc<Ctx>,
    tasks: Vec<JoinHandle<()>>,
    /// Events from the start: messages the store held for the application
    /// are handed over as soon as the tasks run.
    first: Option<broadcast::Receiver<Arc<str>>>,
}

impl Core {
    /// Opens the client's store and the history in `cfg.data_dir` (made
    /// 0700 if missing) with `passphrase`, and starts the tasks.
    async fn open(cfg: &DaemonConfig, passphrase: &[u8]) -> Result<Core, Error> {
        let file_err = |path: &std::path::Path, e: &dyn std::fmt::Display| Error::File {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        net::identity::create_private_dir(&cfg.data_dir)
            .map_err(|e| file_err(&cfg.data_dir, &e))?;
        let history_path = cfg.data_dir.join("history.umbra");
        let pass = passphrase.to_vec();
        let kdf = cfg.client.store_kdf;
        // The client first: a wrong passphrase is refused before the
        // history file is created.
        let (client, inbox) = Client::open(
            cfg.client.clone(),
            cfg.data_dir.join("client.umbra"),
            passphrase,
        )
        .await?;
        let (store, records) =
            match tokio::task::spawn_blocking(move || Store::open(&history_path, &pass, kdf)).await
            {
                Ok(Ok(opened)) => opened,
                Ok(Err(e)) => {
                    client.close().await;
                    return Err(e.into());
                }
                Err(e) => {
                    client.close().await;
                    return Err(file_err(&cfg.data_dir, &e));
                }
            };
        let ctx = Arc::new(Ctx {
            me: client.id(),
            client,
            history: Mutex::new(History::restore(records)),
            store: Arc::new(store),
            events: broadcast::channel(1024).0,
            stop: watch::channel(false).0,
        });
        let first = Some(ctx.events.subscribe());
        let tasks = vec![
            tokio::spawn(api::inbox_task(ctx.clone(), inbox)),
            tokio::spawn(api::status_task(ctx.clone())),
            tokio::spawn(api::groups_task(ctx.clone())),
            tokio::spawn(api::ticker_task(ctx.clone())),
        ];
        Ok(Core { ctx, tasks, first })
    }

    /// Stops the tasks and closes the client (its last changes written).
    async fn close(mut self) {
        self.ctx.stop.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.ctx.client.clone().close().await;
    }
}

/// Dropped without [`Core::close`]: the tasks stop, and with them their
/// handles to the client, which then shuts down as a `Client` whose last
/// handle is dropped does (its last changes written in the background).
impl Drop for Core {
    fn drop(&mut self) {
        self.ctx.stop.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A running daemon: its client, its API and page on loopback.
pub struct Daemon {
    addr: SocketAddr,
    token_path: PathBuf,
    served: Arc<server::Served>,
    core: Core,
}

impl Daemon {
    /// Opens the client's store and the daemon's history in
    /// `cfg.data_dir` with `passphrase` (creating them, with a new
    /// identity, on the first start), starts the client, reads its API
    /// token (made on the first start) and starts serving.
    pub async fn start(cfg: DaemonConfig, passphrase: &[u8]) -> Result<Daemon, Error> {
        cfg.check()?;
        let file_err = |path: &std::path::Path, e: &dyn std::fmt::Display| Error::File {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        net::identity::create_private_dir(&cfg.data_dir)
            .map_err(|e| file_err(&cfg.data_dir, &e))?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: cfg.listen,
            source,
        })?;
        // The token is kept across restarts, so that an open page (and its
        // queue of messages written offline) reconnects by itself; delete
        // the file to make a new one.
        let token_path = cfg.data_dir.join("api-token");
        let existing = token_path.exists();
        let token = if existing {
            net::identity::read_secret(&token_path).map_err(|e| file_err(&token_path, &e))?
        } else {
            access::new_token()
        };
        let mut core = Core::open(&cfg, passphrase).await?;
        // Connections see events from when they connect.
        core.first = None;
        if !existing && let Err(e) = net::identity::write_secret(&token_path, &token) {
            core.close().await;
            return Err(file_err(&token_path, &e));
        }
        let served = Arc::new(server::Served {
            ctx: core.ctx.clone(),
            access: access::Access::new(addr, hex::encode(token)),
        });
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "dangerous_listen_non_loopback: the API and page are served beyond this machine; \
                 anyone who reaches the port and holds the token drives this client"
            );
        }
        core.tasks
            .push(tokio::spawn(server::serve(served.clone(), listener)));
        tracing::info!(%addr, "umbra daemon serving its API and page on loopback");
        Ok(Daemon {
            addr,
            token_path,
            served,
            core,
        })
    }

    /// The address the API and page are served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API token (also in [`Daemon::token_path`]).
    pub fn token(&self) -> &str {
        self.served.access.token()
    }

    /// The file holding the API token (mode 0600).
    pub fn token_path(&self) -> &std::path::Path {
        &self.token_path
    }

    /// The page's address with the token, for the user to open.
    pub fn page_url(&self) -> String {
        format!("http://{}/#token={}", self.addr, self.token())
    }

    /// The daemon's identity.
    pub fn id(&self) -> ContactId {
        self.core.ctx.me
    }

    /// The client (for tests and embedding).
    pub fn client(&self) -> &Client {
        &self.core.ctx.client
    }

    /// Stops serving and closes the client (its last changes written).
    pub async fn stop(self) {
        self.core.close().await;
    }
}

/// The daemon's API in this process, without a server: the same requests,
/// replies and events as the WebSocket API (docs/api.md), as strings. The C
/// ABI (crate `umbra-ffi`) is built on it. Requests are answered one at a
/// time, in order, like those of one WebSocket connection. Dropped without
/// [`Embedded::close`], it stops as a `Client` whose last handle is dropped
/// does (its last changes written in the background).
pub struct Embedded {
    core: Core,
    conn: Mutex<api::Conn>,
    events: Mutex<broadcast::Receiver<Arc<str>>>,
}

impl Embedded {
    /// Opens the client's store and the history in `cfg.data_dir` with
    /// `passphrase` (creating them, with a new identity, on the first
    /// open) and starts the client. `cfg.listen` is not used.
    pub async fn open(cfg: DaemonConfig, passphrase: &[u8]) -> Result<Embedded, Error> {
        let mut core = Core::open(&cfg, passphrase).await?;
        let events = match core.first.take() {
            Some(rx) => rx,
            None => core.ctx.events.subscribe(),
        };
        let events = Mutex::new(events);
        Ok(Embedded {
            core,
            conn: Mutex::new(api::Conn::default()),
            events,
        })
    }

    /// The `hello` event a connection gets first: the API version and our
    /// identity.
    pub fn hello(&self) -> String {
        api::hello(&self.core.ctx)
    }

    /// Answers one request (a JSON object, as over the WebSocket); a
    /// request over [`MAX_REQUEST`] bytes gets a `bad_request` reply.
    pub async fn call(&self, request: &str) -> String {
        if request.len() > MAX_REQUEST {
            return api::bad_request("a request over 1 MiB: split uploads into upload calls");
        }
        let mut conn = self.conn.lock().await;
        api::request(&self.core.ctx, &mut conn, request).await
    }

    /// The next event, or `None` if none came within `timeout`. Events not
    /// taken are kept, up to 1,024; beyond that the oldest are dropped and
    /// the next call returns `{"event":"lagged","missed":N}`: ask
    /// `history` for what was missed. Callers waiting at once take turns;
    /// the wait for the turn counts in `timeout`.
    pub async fn next_event(&self, timeout: Duration) -> Option<String> {
        let next = async { self.events.lock().await.recv().await };
        match tokio::time::timeout(timeout, next).await {
            Ok(Ok(e)) => Some(e.to_string()),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                Some(serde_json::json!({"event": "lagged", "missed": n}).to_string())
            }
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => None,
        }
    }

    /// The identity of this client.
    pub fn id(&self) -> ContactId {
        self.core.ctx.me
    }

    /// Stops the client (its last changes written).
    pub async fn close(self) {
        self.core.close().await;
    }
}
