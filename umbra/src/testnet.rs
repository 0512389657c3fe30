//! An in-process local network on loopback with real QUIC: a directory, mix
//! nodes, and final-hop receivers. Used by `umbra bench` and the integration tests.

use directory::{Directory, DirectoryConfig};
use ed25519_dalek::SigningKey;
use mixnode::{Mixnode, MixnodeConfig};
use net::dirclient::{Authorities, AuthorityRef, DirectoryClient};
use net::link::{LinkConfig, LinkMetrics};
pub use net::tls::Credentials;
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
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Boxed error for harness plumbing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

use net::now_ms;

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

/// The text of a node's (or authority's) `/metrics` at `addr`, or `None`
/// if it does not answer within 2 s.
pub async fn metrics_text(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wait = Duration::from_secs(2);
    let mut s = tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut body)).await;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The sum of the series named `name` in a `/metrics` text whose labels
/// contain `label` (any labels if empty).
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    metric_sum_where(text, |n, labels| n == name && labels.contains(label))
}

/// The sum of the series in a `/metrics` text that `keep(name, labels)`
/// accepts (`labels` is what stands between the braces, empty if none).
pub fn metric_sum_where(text: &str, keep: impl Fn(&str, &str) -> bool) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            keep(n, labels)
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// A binary of this workspace, for tests that run it as a separate
/// process: the path in `$env_var` if set, else `rel` under the running
/// test's profile directory (tests run from `target/<profile>/deps`).
/// Panics, saying how to build it, if it is missing.
pub fn built_binary(env_var: &str, rel: &str, build_with: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test runs from target/<profile>/deps")
        .join(rel);
    assert!(
        bin.exists(),
        "{} missing: run `{build_with}` or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// One directory authority serving on an ephemeral loopback port.
pub struct LocalAuthority {
    /// Base URL of its API.
    pub url: String,
    /// Its public key.
    pub key: [u8; 32],
    /// The authority itself (admission, rounds).
    pub directory: Directory,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalAuthority {
    /// Opens the authority `cfg` describes and serves it on `listener`.
    pub fn serve(
        cfg: DirectoryConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Self, BoxError> {
        Self::serve_opened(Directory::open(cfg)?, listener)
    }

    fn serve_opened(
        directory: Directory,
        listener: tokio::net::TcpListener,
    ) -> Result<Self, BoxError> {
        let key = directory.public_key();
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, mut rx) = watch::channel(false);
        let d = directory.clone();
        let task = tokio::spawn(async move {
            let _ = d
                .serve(listener, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(Self {
            url,
            key,
            directory,
            stop,
            task,
        })
    }

    /// Stops serving.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The directory authorities of a loopback network: `n` of them, of which
/// `threshold` must sign a topology. A test network: loopback addresses are
/// accepted, and votes are exchanged every 200 ms.
pub struct LocalDirectory {
    /// Base URL of the first authority's API.
    pub url: String,
    /// The first authority's key.
    pub authority: [u8; 32],
    /// Every authority still running, in start order.
    pub members: Vec<LocalAuthority>,
    /// Every authority's URL and key (stopped ones included): what nodes and
    /// clients are configured with.
    pub refs: Vec<AuthorityRef>,
    /// Signatures a topology needs.
    pub threshold: usize,
    /// The configs of every authority, in start order (to restart them).
    configs: Vec<DirectoryConfig>,
}

/// The HTTP limits of a local network's authorities: the defaults, but
/// with the per-source limits raised to the totals, since every node and
/// client of a local network connects from the same loopback address.
pub fn local_http_limits() -> directory::HttpLimits {
    let d = directory::HttpLimits::default();
    directory::HttpLimits {
        max_connections_per_ip: d.max_connections,
        requests_per_sec_per_ip: 2_000.0,
        request_burst_per_ip: 4_000.0,
        ..d
    }
}

/// How often a local network's authorities exchange votes.
const LOCAL_VOTE_INTERVAL_MS: u64 = 200;

impl LocalDirectory {
    /// Starts one authority with epochs of `epoch_length_secs` beginning now.
    pub async fn start(
        data_dir: &Path,
        params: NetworkParams,
        epoch_length_secs: u64,
    ) -> Result<Self, BoxError> {
        Self::start_many(data_dir, params, epoch_length_secs, 1, 1).await
    }

    /// Starts `n` authorities of which `threshold` must sign, with epochs of
    /// `epoch_length_secs` beginning now. Their data lives in `data_dir/a<i>`
    /// (a single authority: `data_dir` itself, so it restarts on the same data).
    pub async fn start_many(
        data_dir: &Path,
        params: NetworkParams,
        epoch_length_secs: u64,
        n: usize,
        threshold: usize,
    ) -> Result<Self, BoxError> {
        Self::start_many_with(
            data_dir,
            params,
            epoch_length_secs,
            n,
            threshold,
            local_http_limits(),
        )
        .await
    }

    /// As [`Self::start_many`], with the authorities' HTTP limits `http`.
    pub async fn start_many_with(
        data_dir: &Path,
        params: NetworkParams,
        epoch_length_secs: u64,
        n: usize,
        threshold: usize,
        http: directory::HttpLimits,
    ) -> Result<Self, BoxError> {
        if n == 0 {
            return Err("a network needs at least one authority".into());
        }
        let genesis = now_ms();
        // Bind first: every authority's config lists every URL and key.
        let mut listeners = Vec::new();
        let mut refs = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = if n == 1 {
                data_dir.to_owned()
            } else {
                data_dir.join(format!("a{i}"))
            };
            net::identity::create_private_dir(&dir)?;
            let key = net::identity::load_or_create_identity(&dir.join("authority.key"))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            refs.push(AuthorityRef {
                url: format!("http://{}", listener.local_addr()?),
                key: hex::encode(key.verifying_key().to_bytes()),
            });
            listeners.push(listener);
            dirs.push(dir);
        }
        let mut members = Vec::new();
        let mut configs = Vec::new();
        for (listener, dir) in listeners.into_iter().zip(dirs) {
            let cfg = DirectoryConfig {
                listen: listener.local_addr()?,
                data_dir: dir,
                epoch_length_secs,
                genesis_unix_ms: genesis,
                params,
                authorities: if n == 1 { Vec::new() } else { refs.clone() },
                threshold,
                vote_interval_ms: LOCAL_VOTE_INTERVAL_MS,
                test_network: true,
                http: http.clone(),
                ..DirectoryConfig::default()
            };
            configs.push(cfg.clone());
            members.push(LocalAuthority::serve(cfg, listener)?);
        }
        Ok(Self {
            url: members[0].url.clone(),
            authority: members[0].key,
            members,
            refs,
            threshold,
            configs,
        })
    }

    /// Stops every authority: the directory is down, and connections to its
    /// URLs are refused until [`Self::restart`].
    pub async fn stop_all(&mut self) {
        for m in std::mem::take(&mut self.members) {
            m.stop().await;
        }
    }

    /// Starts every authority again on its address and its data (after
    /// [`Self::stop_all`]).
    pub async fn restart(&mut self) -> Result<(), BoxError> {
        self.stop_all().await;
        for cfg in &self.configs {
            // The stopped authority's tasks let its database go as they end.
            let deadline = Instant::now() + Duration::from_secs(10);
            let directory = loop {
                match Directory::open(cfg.clone()) {
                    Ok(d) => break d,
                    Err(e) if Instant::now() > deadline => return Err(e.into()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
            self.members
                .push(LocalAuthority::serve_opened(directory, listener)?);
        }
        Ok(())
    }

    /// What nodes and clients trust.
    pub fn trust(&self) -> TrustPolicy {
        TrustPolicy {
            authorities: self
                .refs
                .iter()
                .filter_map(|r| r.key_bytes().ok())
                .collect(),
            threshold: self.threshold,
        }
    }

    /// Admits `id` for `role` on every running authority.
    pub fn admit(&self, id: NodeId, role: Role) -> Result<(), BoxError> {
        for m in &self.members {
            m.directory.admit(id, role)?;
        }
        Ok(())
    }

    /// Creates the identity of a node that will keep its data in `data_dir`
    /// and admits it for `role` on every running authority.
    pub fn admit_node(&self, data_dir: &Path, role: Role) -> Result<NodeId, BoxError> {
        let key = net::identity::load_or_create_identity(&data_dir.join("identity.key"))?;
        let id = key.verifying_key().to_bytes();
        self.admit(id, role)?;
        Ok(id)
    }

    /// The client for the first authority's API.
    pub fn client(&self) -> Result<DirectoryClient, BoxError> {
        Ok(DirectoryClient::new(&self.url)?)
    }

    /// The client for all authorities, trusting `threshold` of them.
    pub fn authorities(&self) -> Result<Authorities, BoxError> {
        Ok(Authorities::new(&self.refs, self.threshold)?)
    }

    /// Fetches and verifies the current topology (from any authority).
    pub async fn topology(&self) -> Result<TopologyDocument, BoxError> {
        Ok(self.authorities()?.topology(false, now_ms(), None).await?)
    }

    /// Stops the authority at `index` of `members`, leaving the others.
    pub async fn stop_member(&mut self, index: usize) {
        if index < self.members.len() {
            self.members.remove(index).stop().await;
        }
    }

    /// Stops serving.
    pub async fn stop(self) {
        for m in self.members {
            m.stop().await;
        }
    }
}

/// The replay-cache rate of a local network's nodes: many share one
/// machine, so each key's cache (sized for rate × lifetime) is sized for a
/// test network's rate, not a production node's.
pub const TEST_REPLAY_MAX_PPS: u64 = 2_000;

/// Config for a loopback mix node registered with `dir` (its identity is
/// created in `data_dir` and admitted by every authority).
pub fn mixnode_config(dir: &LocalDirectory, data_dir: PathBuf) -> Result<MixnodeConfig, BoxError> {
    dir.admit_node(&data_dir, Role::Mix)?;
    Ok(MixnodeConfig {
        listen: "127.0.0.1:0"
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into()),
        metrics_listen: "127.0.0.1:0"
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into()),
        authorities: dir.refs.clone(),
        authority_threshold: dir.threshold,
        data_dir,
        topology_refresh_secs: 5,
        replay_max_pps: TEST_REPLAY_MAX_PPS,
        ..MixnodeConfig::default()
    })
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
    /// Its TLS credentials: a registered node's, so an [`Injector`] may dial
    /// mix nodes with them.
    pub creds: Credentials,
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
        dir.admit(id, Role::Gateway)?;
        let creds = Credentials::new(&identity)?;
        let endpoint = net::link::bind("127.0.0.1:0".parse()?, &creds, jumbo)?;
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
        let (accepted, refused) = dir
            .authorities()?
            .register(&Signed::sign(&d, topology::DESCRIPTOR_DOMAIN, &identity)?)
            .await;
        if accepted < dir.threshold {
            return Err(format!("final hop not registered: {refused:?}").into());
        }
        let frames = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let (f, r, dl) = (frames.clone(), refused.clone(), delivered.clone());
        let record_arrivals = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (rec, arr) = (record_arrivals.clone(), arrivals.clone());
        let ring = Arc::new(ring);
        let sink = move |frame: Frame<'_>, _: &net::conn::PeerConn| {
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
            None,
        ));
        Ok(Self {
            creds,
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

/// A sender that writes frames straight to a node, as an entry gateway
/// would, proving a registered node's identity (node links are mutually
/// authenticated).
pub struct Injector {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    stream: quinn::SendStream,
}

impl Injector {
    /// Connects to `node` at `addr` as `me`, checking its identity.
    pub async fn connect(
        me: &Credentials,
        node: NodeId,
        addr: std::net::SocketAddr,
    ) -> Result<Self, BoxError> {
        let endpoint = net::link::bulk_client_endpoint("127.0.0.1:0".parse()?)?;
        let conn = net::link::connect_as(&endpoint, me, node, addr).await?;
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
    /// Further final hops (see [`LocalNet::add_receivers`]).
    pub more_receivers: Vec<FinalHop>,
    jumbo: bool,
}

impl LocalNet {
    /// Registers `n` more final hops and waits until every mix node can
    /// route to them: a node then has several peers to forward to.
    pub async fn add_receivers(&mut self, n: usize, mode: FinalMode) -> Result<(), BoxError> {
        for _ in 0..n {
            let r = FinalHop::start(&self.directory, mode, self.jumbo).await?;
            self.more_receivers.push(r);
        }
        let total = self.mixnodes.len() + 1 + self.more_receivers.len();
        for m in &self.mixnodes {
            m.refresh_topology();
        }
        let nodes = &self.mixnodes;
        wait_until(
            "mix nodes to learn the new final hops",
            Duration::from_secs(20),
            || nodes.iter().all(|m| m.known_nodes() >= total),
        )
        .await
    }

    /// Every final hop, the first one first.
    pub fn receivers(&self) -> impl Iterator<Item = &FinalHop> {
        std::iter::once(&self.receiver).chain(&self.more_receivers)
    }

    /// Frames all final hops have received.
    pub fn frames_received(&self) -> u64 {
        self.receivers()
            .map(|r| r.frames.load(Ordering::Relaxed))
            .sum()
    }

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
        Self::start_epochs(node_rt, mix_count, params, receiver_mode, 3600, tweak).await
    }

    /// As `start_on`, with epochs of `epoch_secs` beginning now (tests of
    /// key rotation use a few seconds; production uses 3600).
    pub async fn start_epochs(
        node_rt: Option<&tokio::runtime::Handle>,
        mix_count: usize,
        params: NetworkParams,
        receiver_mode: FinalMode,
        epoch_secs: u64,
        tweak: impl Fn(&mut MixnodeConfig),
    ) -> Result<Self, BoxError> {
        let tmp = tempfile::tempdir()?;
        let directory =
            LocalDirectory::start(&tmp.path().join("directory"), params, epoch_secs).await?;
        let mut mixnodes = Vec::new();
        let mut jumbo = false;
        for i in 0..mix_count {
            let mut cfg = mixnode_config(&directory, tmp.path().join(format!("mix{i}")))?;
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
            more_receivers: Vec::new(),
            jumbo,
        })
    }

    /// The verified current topology.
    pub async fn topology(&self) -> Result<TopologyDocument, BoxError> {
        self.directory.topology().await
    }

    /// Stops everything.
    pub async fn stop(self) {
        for r in self.receivers() {
            r.stop();
        }
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

/// A gateway config for loopback, registered with `dir` (its identity is
/// created in `data_dir` and admitted by every authority).
pub fn gateway_config(
    dir: &LocalDirectory,
    data_dir: PathBuf,
) -> Result<gateway::GatewayConfig, BoxError> {
    dir.admit_node(&data_dir, Role::Gateway)?;
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let d = gateway::GatewayConfig::default();
    Ok(gateway::GatewayConfig {
        node: node::NodeConfig {
            listen: any,
            metrics_listen: any,
            authorities: dir.refs.clone(),
            authority_threshold: dir.threshold,
            data_dir,
            topology_refresh_secs: 5,
            replay_max_pps: TEST_REPLAY_MAX_PPS,
            ..d.node
        },
        client_listen: any,
        ..d
    })
}

/// The shape of a [`MixNetwork`].
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// Mix nodes per layer.
    pub per_layer: usize,
    /// Gateways.
    pub gateways: usize,
    /// Network parameters the authorities publish.
    pub params: NetworkParams,
    /// Sphinx workers per node.
    pub workers: usize,
    /// Directory authorities.
    pub authorities: usize,
    /// Signatures a topology needs.
    pub threshold: usize,
    /// Epoch length, seconds.
    pub epoch_secs: u64,
    /// DANGEROUS, tests only: nodes send no loop cover (so that a test can
    /// count exactly the packets it sent).
    pub dangerous_no_cover: bool,
    /// The authorities' HTTP limits; by default [`local_http_limits`]
    /// (per-source limits raised, since everything shares 127.0.0.1).
    pub directory_http: Option<directory::HttpLimits>,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            per_layer: 2,
            gateways: 2,
            params: NetworkParams::default(),
            workers: 1,
            authorities: 1,
            threshold: 1,
            epoch_secs: 3600,
            dangerous_no_cover: false,
            directory_http: None,
        }
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
        Self::start_with(NetworkOptions {
            per_layer,
            gateways,
            params,
            workers,
            ..NetworkOptions::default()
        })
        .await
    }

    /// Starts the network `opts` describes and waits until every node can
    /// route to every node.
    pub async fn start_with(opts: NetworkOptions) -> Result<Self, BoxError> {
        let tmp = tempfile::tempdir()?;
        let directory = LocalDirectory::start_many_with(
            &tmp.path().join("directory"),
            opts.params,
            opts.epoch_secs,
            opts.authorities,
            opts.threshold,
            opts.directory_http
                .clone()
                .unwrap_or_else(local_http_limits),
        )
        .await?;
        let mut mixnodes = Vec::new();
        for i in 0..opts.per_layer * 3 {
            let mut cfg = mixnode_config(&directory, tmp.path().join(format!("mix{i}")))?;
            cfg.workers = opts.workers;
            cfg.dangerous_no_cover = opts.dangerous_no_cover;
            mixnodes.push(mixnode::start(cfg).await?);
        }
        let mut gws = Vec::new();
        for i in 0..opts.gateways {
            let mut cfg = gateway_config(&directory, tmp.path().join(format!("gateway{i}")))?;
            cfg.node.workers = opts.workers;
            cfg.node.dangerous_no_cover = opts.dangerous_no_cover;
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
        Ok(client_sdk::ClientConfig::with_authorities(
            self.directory.refs.clone(),
            self.directory.threshold,
        )?)
    }

    /// One line per node with its counters, for when something went wrong.
    pub fn diagnostics(&self) -> String {
        let drops = |m: &node::Metrics| {
            node::Metrics::DROP_REASONS
                .iter()
                .filter(|r| m.dropped(r) > 0)
                .map(|r| format!("{r}={}", m.dropped(r)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let loops = |m: &node::Metrics| {
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
