//! An in-process local network on loopback with real QUIC: a directory, mix
//! nodes, and final-hop receivers. Used by `umbra bench` and the integration tests.

use directory::{Directory, DirectoryConfig};
use ed25519_dalek::SigningKey;
use mixnode::{Mixnode, MixnodeConfig};
use net::dirclient::DirectoryClient;
use net::link::{LinkConfig, LinkMetrics};
use protocol::NodeId;
use protocol::frame::{Frame, FrameKind};
use protocol::keys::{EpochKey, KeyRing};
use protocol::packet::Peeled;
use protocol::replay::ReplayCache;
use protocol::topology::{
    self, EpochPublicKey, NetworkParams, NodeDescriptor, Role, Signed, TopologyDocument,
    TrustPolicy,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Boxed error for harness plumbing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A directory authority serving on an ephemeral loopback port.
pub struct LocalDirectory {
    /// Base URL of its API.
    pub url: String,
    /// Its public key.
    pub authority: [u8; 32],
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalDirectory {
    /// Starts one with epochs of `epoch_length_secs` beginning now.
    pub async fn start(
        data_dir: &Path,
        params: NetworkParams,
        epoch_length_secs: u64,
    ) -> Result<Self, BoxError> {
        let cfg = DirectoryConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: data_dir.to_owned(),
            epoch_length_secs,
            genesis_unix_ms: now_ms(),
            params,
            ..DirectoryConfig::default()
        };
        let dir = Directory::open(cfg)?;
        let authority = dir.public_key();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _ = dir
                .serve(listener, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(Self {
            url,
            authority,
            stop,
            task,
        })
    }

    /// The client for its API.
    pub fn client(&self) -> Result<DirectoryClient, BoxError> {
        Ok(DirectoryClient::new(&self.url)?)
    }

    /// Fetches and verifies the current topology.
    pub async fn topology(&self) -> Result<TopologyDocument, BoxError> {
        let signed = self.client()?.topology(false).await?;
        let trust = TrustPolicy {
            authorities: vec![self.authority],
            threshold: 1,
        };
        Ok(topology::verify_topology(&signed, &trust, now_ms(), None)?)
    }

    /// Stops serving.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Config for a loopback mix node registered with `dir`.
pub fn mixnode_config(dir: &LocalDirectory, data_dir: PathBuf) -> MixnodeConfig {
    MixnodeConfig {
        listen: "127.0.0.1:0"
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into()),
        metrics_listen: "127.0.0.1:0"
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into()),
        directory_url: dir.url.clone(),
        authority_key: hex::encode(dir.authority),
        data_dir,
        topology_refresh_secs: 5,
        // Many nodes share one machine here: size the replay caches for a
        // test network's rate (each key's cache is sized for rate × lifetime).
        replay_max_pps: 2_000,
        ..MixnodeConfig::default()
    }
}

/// What a [`FinalHop`] does with arriving packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalMode {
    /// Peel the last layer and keep the plaintexts.
    Peel,
    /// Only count frames (benchmarks: keeps the receiver off the CPU).
    Count,
}

/// A test receiver registered as a gateway: the route's final hop.
pub struct FinalHop {
    /// Its identity.
    pub identity: NodeId,
    /// Its QUIC address.
    pub addr: std::net::SocketAddr,
    /// Frames received.
    pub frames: Arc<AtomicU64>,
    /// Plaintexts delivered (Peel mode), in arrival order.
    pub delivered: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Packets refused at the final hop (replays, malformed).
    pub refused: Arc<AtomicU64>,
    /// While true, each frame's arrival time is recorded in `arrivals`.
    pub record_arrivals: Arc<std::sync::atomic::AtomicBool>,
    /// Arrival times (at most a million), while recording.
    pub arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
    endpoint: quinn::Endpoint,
}

impl FinalHop {
    /// Binds, makes Sphinx keys for the current and next epoch, registers
    /// with `dir`. With `jumbo`, its endpoint takes jumbo datagrams (as the
    /// nodes that send to it may, see `net::link::bind`).
    pub async fn start(
        dir: &LocalDirectory,
        mode: FinalMode,
        jumbo: bool,
    ) -> Result<Self, BoxError> {
        let mut seed = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
        let identity = SigningKey::from_bytes(&seed);
        let id = identity.verifying_key().to_bytes();
        let endpoint = net::link::bind("127.0.0.1:0".parse()?, &identity, jumbo)?;
        let addr = endpoint.local_addr()?;
        let schedule = dir.topology().await?.schedule;
        let epoch = schedule.epoch_at(now_ms());
        let mut ring = KeyRing::new();
        let mut keys = vec![];
        for e in [epoch, epoch + 1] {
            let (secret, public) = protocol::packet::sphinx_keypair(&mut rand::rng());
            ring.insert(EpochKey::new(e, secret, ReplayCache::new(1_000_000, 1e-6)));
            keys.push(EpochPublicKey {
                epoch: e,
                key: public,
            });
        }
        let d = NodeDescriptor {
            identity: id,
            role: Role::Gateway,
            address: addr.to_string(),
            client_address: None,
            sphinx_keys: keys,
            published_ms: now_ms(),
        };
        dir.client()?
            .register(&Signed::sign(&d, topology::DESCRIPTOR_DOMAIN, &identity)?)
            .await?;
        let frames = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let (f, r, dl) = (frames.clone(), refused.clone(), delivered.clone());
        let record_arrivals = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (rec, arr) = (record_arrivals.clone(), arrivals.clone());
        let ring = Arc::new(ring);
        let sink = move |frame: Frame<'_>, _: &quinn::Connection| {
            f.fetch_add(1, Ordering::Relaxed);
            if rec.load(Ordering::Relaxed) {
                let mut a = arr.lock().unwrap_or_else(|p| p.into_inner());
                if a.len() < 1_000_000 {
                    a.push(std::time::Instant::now());
                }
            }
            if mode == FinalMode::Count {
                return;
            }
            match ring.peel(frame.epoch, frame.data) {
                Ok(Peeled::Final { payload, .. }) => {
                    match protocol::packet::recover_plaintext(&payload) {
                        Ok(m) => dl.lock().unwrap_or_else(|p| p.into_inner()).push(m),
                        Err(_) => {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                _ => {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        tokio::spawn(net::link::serve(
            endpoint.clone(),
            Arc::new(sink),
            LinkMetrics::unregistered(),
            LinkConfig::default(),
        ));
        Ok(Self {
            identity: id,
            addr,
            frames,
            delivered,
            refused,
            record_arrivals,
            arrivals,
            endpoint,
        })
    }

    /// Stops listening.
    pub fn stop(&self) {
        self.endpoint.close(0u8.into(), b"done");
    }
}

/// A sender that writes frames straight to a node, as an entry gateway would.
pub struct Injector {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    stream: quinn::SendStream,
}

impl Injector {
    /// Connects to `node` at `addr`, checking its identity.
    pub async fn connect(node: NodeId, addr: std::net::SocketAddr) -> Result<Self, BoxError> {
        let endpoint = net::link::bulk_client_endpoint("127.0.0.1:0".parse()?)?;
        let conn = net::link::connect(&endpoint, node, addr).await?;
        let stream = conn.open_uni().await?;
        Ok(Self {
            endpoint,
            conn,
            stream,
        })
    }

    /// Writes one Sphinx packet in a frame for `epoch`.
    pub async fn send_packet(&mut self, epoch: u64, packet: &[u8]) -> Result<(), BoxError> {
        let f = protocol::frame::encode(FrameKind::Sphinx, epoch, packet)?;
        self.stream.write_all(&f).await?;
        Ok(())
    }

    /// The connection's current path MTU (UDP payload bytes).
    pub fn path_mtu(&self) -> u16 {
        self.conn.stats().path.current_mtu
    }

    /// UDP datagrams sent on the connection so far.
    pub fn datagrams_sent(&self) -> u64 {
        self.conn.stats().udp_tx.datagrams
    }

    /// Writes raw bytes (junk included) to the stream.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.stream.finish();
        let _ = self.stream.stopped().await;
        self.conn.close(0u8.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// A directory, `mix_count` mix nodes and one final hop, all on loopback.
pub struct LocalNet {
    /// Temporary data directory (removed on drop).
    pub tmp: tempfile::TempDir,
    /// The directory authority.
    pub directory: LocalDirectory,
    /// Mix nodes.
    pub mixnodes: Vec<Mixnode>,
    /// The final hop.
    pub receiver: FinalHop,
}

impl LocalNet {
    /// Starts the network and waits until every mix node can route to every node.
    pub async fn start(
        mix_count: usize,
        params: NetworkParams,
        receiver_mode: FinalMode,
        tweak: impl Fn(&mut MixnodeConfig),
    ) -> Result<Self, BoxError> {
        Self::start_on(None, mix_count, params, receiver_mode, tweak).await
    }

    /// As `start`, with the mix nodes (their tasks and I/O) on `node_rt`
    /// when given, so their threads can be told apart from the rest.
    pub async fn start_on(
        node_rt: Option<&tokio::runtime::Handle>,
        mix_count: usize,
        params: NetworkParams,
        receiver_mode: FinalMode,
        tweak: impl Fn(&mut MixnodeConfig),
    ) -> Result<Self, BoxError> {
        let tmp = tempfile::tempdir()?;
        let directory = LocalDirectory::start(&tmp.path().join("directory"), params, 3600).await?;
        let mut mixnodes = Vec::new();
        let mut jumbo = false;
        for i in 0..mix_count {
            let mut cfg = mixnode_config(&directory, tmp.path().join(format!("mix{i}")));
            tweak(&mut cfg);
            jumbo |= cfg.jumbo_frames;
            let node = match node_rt {
                Some(rt) => rt.spawn(mixnode::start(cfg)).await??,
                None => mixnode::start(cfg).await?,
            };
            mixnodes.push(node);
        }
        let receiver = FinalHop::start(&directory, receiver_mode, jumbo).await?;
        let total = mix_count + 1;
        for m in &mixnodes {
            m.refresh_topology();
        }
        wait_until(
            "mix nodes to learn the topology",
            Duration::from_secs(20),
            || mixnodes.iter().all(|m| m.known_nodes() >= total),
        )
        .await?;
        Ok(Self {
            tmp,
            directory,
            mixnodes,
            receiver,
        })
    }

    /// The verified current topology.
    pub async fn topology(&self) -> Result<TopologyDocument, BoxError> {
        self.directory.topology().await
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.receiver.stop();
        for m in self.mixnodes {
            m.shutdown().await;
        }
        self.directory.stop().await;
    }
}

/// A whole network in one process: a directory, `per_layer` mix nodes in each
/// of the three layers, and `gateways` gateways, on loopback with real QUIC.
pub struct MixNetwork {
    /// Temporary data directory (removed on drop).
    pub tmp: tempfile::TempDir,
    /// The directory authority.
    pub directory: LocalDirectory,
    /// Mix nodes.
    pub mixnodes: Vec<Mixnode>,
    /// Gateways.
    pub gateways: Vec<gateway::Gateway>,
}

/// A gateway config for loopback, registered with `dir`.
pub fn gateway_config(dir: &LocalDirectory, data_dir: PathBuf) -> gateway::GatewayConfig {
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    gateway::GatewayConfig {
        listen: any,
        client_listen: any,
        metrics_listen: any,
        directory_url: dir.url.clone(),
        authority_key: hex::encode(dir.authority),
        data_dir,
        topology_refresh_secs: 5,
        replay_max_pps: 2_000,
        ..gateway::GatewayConfig::default()
    }
}

impl MixNetwork {
    /// Starts the network and waits until every node can route to every node.
    pub async fn start(
        per_layer: usize,
        gateways: usize,
        params: NetworkParams,
        workers: usize,
    ) -> Result<Self, BoxError> {
        let tmp = tempfile::tempdir()?;
        let directory = LocalDirectory::start(&tmp.path().join("directory"), params, 3600).await?;
        let mut mixnodes = Vec::new();
        for i in 0..per_layer * 3 {
            let mut cfg = mixnode_config(&directory, tmp.path().join(format!("mix{i}")));
            cfg.workers = workers;
            mixnodes.push(mixnode::start(cfg).await?);
        }
        let mut gws = Vec::new();
        for i in 0..gateways {
            let mut cfg = gateway_config(&directory, tmp.path().join(format!("gateway{i}")));
            cfg.workers = workers;
            gws.push(gateway::start(cfg).await?);
        }
        let net = Self {
            tmp,
            directory,
            mixnodes,
            gateways: gws,
        };
        net.wait_for_routes().await?;
        Ok(net)
    }

    /// Every node sees every node.
    pub async fn wait_for_routes(&self) -> Result<(), BoxError> {
        let total = self.mixnodes.len() + self.gateways.len();
        for m in &self.mixnodes {
            m.refresh_topology();
        }
        for g in &self.gateways {
            g.node().refresh_topology();
        }
        wait_until(
            "every node to learn the topology",
            Duration::from_secs(30),
            || {
                self.mixnodes.iter().all(|m| m.known_nodes() >= total)
                    && self
                        .gateways
                        .iter()
                        .all(|g| g.node().known_nodes() >= total)
            },
        )
        .await
    }

    /// A client config for this network.
    pub fn client_config(&self) -> Result<client_sdk::ClientConfig, BoxError> {
        Ok(client_sdk::ClientConfig::new(
            &self.directory.url,
            &hex::encode(self.directory.authority),
        )?)
    }

    /// One line per node with its counters, for when something went wrong.
    pub fn diagnostics(&self) -> String {
        let drops = |m: &mixnode::Metrics| {
            mixnode::Metrics::DROP_REASONS
                .iter()
                .filter(|r| m.dropped(r) > 0)
                .map(|r| format!("{r}={}", m.dropped(r)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let loops = |m: &mixnode::Metrics| {
            format!(
                "loops sent={} back={} late={} lost={}",
                m.loops_sent.get(),
                m.loops_returned.get(),
                m.loops_late.get(),
                m.loops_lost.get()
            )
        };
        let mut out = String::from("diagnostics:");
        for (i, m) in self.mixnodes.iter().enumerate() {
            let x = m.metrics();
            out += &format!(
                "\n  mix{i}: received={} forwarded={} dropped[{}] {}",
                x.received.get(),
                x.forwarded.get(),
                drops(x),
                loops(x)
            );
        }
        for (i, g) in self.gateways.iter().enumerate() {
            let x = g.node().metrics();
            let gm = g.metrics();
            out += &format!(
                "\n  gateway{i}: received={} forwarded={} stored={} fetches_ok={} fetches_refused={} replies={} deliveries={} dropped[{}] {}",
                x.received.get(),
                x.forwarded.get(),
                gm.stored.get(),
                gm.fetches.with_label_values(&["authorised"]).get(),
                gm.fetches.with_label_values(&["refused"]).get(),
                gm.replies.get(),
                gm.deliveries.get(),
                drops(x),
                loops(x)
            );
        }
        out
    }

    /// Stops everything.
    pub async fn stop(self) {
        for g in self.gateways {
            g.shutdown().await;
        }
        for m in self.mixnodes {
            m.shutdown().await;
        }
        self.directory.stop().await;
    }
}
