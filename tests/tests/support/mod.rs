//! What several test files share: a fast local network and a client
//! config for it (`churn.rs`, `restart.rs`, the daemon tests); daemons on
//! it and an API client that keeps the events it reads while waiting for
//! replies (`daemon.rs`, `browser.rs`); and the loss tests' progress
//! printer.
#![allow(dead_code)] // each test file uses part of it

use client_sdk::store::KdfParams;
use daemon::{Daemon, DaemonConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite;
use umbra::testnet::{MixNetwork, NetworkOptions};

/// Bound on anything that crosses the mixnet.
pub const WAIT: Duration = Duration::from_secs(90);

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A local network of one mix node per layer and one gateway, fast
/// (20 ms mean delays, λ_P = 50/s).
pub async fn network() -> MixNetwork {
    network_with(1).await
}

/// One mix node per layer and `gateways` gateways, with 20 ms mix delays
/// and fast Poisson streams.
pub async fn network_with(gateways: usize) -> MixNetwork {
    MixNetwork::start_with(NetworkOptions {
        per_layer: 1,
        gateways,
        params: protocol::topology::NetworkParams {
            mix_delay_mean_ms: 20,
            lambda_payload: 50.0,
            lambda_downlink: 120.0,
            ..Default::default()
        },
        ..NetworkOptions::default()
    })
    .await
    .unwrap()
}

/// `net`'s client config, fetching every 500 ms and two periods back.
pub fn client_config(net: &MixNetwork) -> client_sdk::ClientConfig {
    let mut cfg = net.client_config().unwrap();
    cfg.fetch_interval = Duration::from_millis(500);
    cfg.catch_up_periods = 2;
    cfg
}

/// A daemon on `net` with quick test settings (fetches every 300 ms, a
/// cheap key derivation), listening on `listen`.
pub async fn start_on(
    net: &MixNetwork,
    dir: &Path,
    pass: &[u8],
    listen: std::net::SocketAddr,
) -> Result<Daemon, daemon::Error> {
    let mut client = net.client_config().unwrap();
    client.fetch_interval = Duration::from_millis(300);
    client.store_kdf = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };
    let mut cfg = DaemonConfig::new(client, dir.to_owned());
    cfg.listen = listen;
    Daemon::start(cfg, pass).await
}

/// An API connection that keeps the events it read while waiting for replies.
pub struct Api {
    pub ws: Ws,
    next: u64,
    events: Vec<Value>,
}

impl Api {
    pub async fn open(d: &Daemon) -> Api {
        let url = format!("ws://{}/v1/ws?token={}", d.addr(), d.token());
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let hello = read(&mut ws).await;
        assert_eq!(hello["event"], "hello");
        assert_eq!(hello["me"], hex::encode(d.id().0));
        Api {
            ws,
            next: 0,
            events: Vec::new(),
        }
    }

    /// Sends a request and returns its reply (ok or not).
    pub async fn call(&mut self, op: &str, mut args: Value) -> Value {
        self.next += 1;
        args["op"] = json!(op);
        args["id"] = json!(self.next);
        self.ws
            .send(tungstenite::Message::text(args.to_string()))
            .await
            .unwrap();
        loop {
            let v = read(&mut self.ws).await;
            if v["reply"] == json!(self.next) {
                return v;
            }
            self.events.push(v);
        }
    }

    /// A request that must succeed: its result.
    pub async fn ok(&mut self, op: &str, args: Value) -> Value {
        let r = self.call(op, args).await;
        assert_eq!(r["ok"], true, "{op}: {r}");
        r["result"].clone()
    }

    /// Waits for an event that `f` accepts (events already read count).
    pub async fn event(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&f) {
            return self.events.remove(i);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = tokio::time::timeout_at(deadline, read(&mut self.ws))
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"));
            if f(&v) {
                return v;
            }
        }
    }
}

/// The next text frame, as JSON.
pub async fn read(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.expect("connection open").unwrap() {
            tungstenite::Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            tungstenite::Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// A demo's progress printer for test logs: each line stamped with the
/// seconds since the run began, and only every 50th "delivered" line (CI
/// keeps a test's first and last lines; the ones that say why it failed
/// should not be pushed out by hundreds of deliveries).
pub fn progress() -> impl Fn(&str) {
    let t0 = std::time::Instant::now();
    move |l: &str| {
        let routine = l.starts_with('[') && l.contains("] delivered to ");
        let nth = l
            .strip_prefix('[')
            .and_then(|s| s.split('/').next())
            .and_then(|n| n.parse::<usize>().ok());
        if !routine || nth.is_some_and(|n| n % 50 == 0) {
            eprintln!("{:7.1} s  {l}", t0.elapsed().as_secs_f64());
        }
    }
}
