//! `umbra bench gateway`: what one gateway spends on N idle clients. The
//! network runs as separate processes (a directory, six mix nodes, one
//! gateway), so the gateway's CPU and memory are read from its own
//! process; the clients run in this one.

use super::{KillOnDrop, cores, process_cpu_seconds, rss_mib};
use crate::testnet::{BoxError, metric_sum, metrics_text};
use client_sdk::{AuthorityRef, Client, ClientConfig, Identity};
use protocol::NodeId;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Figures of `umbra bench gateway`.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayBench {
    /// Idle clients, all entering at the measured gateway.
    pub clients: usize,
    /// Seconds measured (after every client connected and the warm-up).
    pub seconds: f64,
    /// Cores the gateway process used in the window (utime + stime).
    pub gateway_cpu_cores: f64,
    /// The same over a few seconds before any client connected: its own
    /// loops, the topology, the metrics.
    pub gateway_idle_cpu_cores: f64,
    /// clients / gateway_cpu_cores.
    pub clients_per_gateway_core: f64,
    /// The gateway's resident memory before any client connected, MiB.
    pub gateway_rss_start_mib: f64,
    /// At the start of the window, MiB.
    pub gateway_rss_window_start_mib: f64,
    /// At the end of the window, MiB.
    pub gateway_rss_end_mib: f64,
    /// (end − start) / clients, KiB. At small N it is mostly the first
    /// segment of the replay cache's Bloom filter, which fills its pages
    /// within seconds of traffic whatever N: see
    /// `rss_marginal_per_client_kib` for the cost of one more client.
    pub rss_per_client_kib: f64,
    /// What the second half of the clients added to the gateway's memory,
    /// per client, KiB: from the RSS once it settled with the first half
    /// (up to 30 s after the warm-up) to the RSS at the window's start
    /// (NaN below 4 clients).
    pub rss_marginal_per_client_kib: f64,
    /// Loops (λ_L) the clients sent in the window.
    pub loops_sent: u64,
    /// Loops back at their sender in the window within their expected time.
    pub loops_returned: u64,
    /// Loops back later than that.
    pub loops_late: u64,
    /// Loops given up as lost in the window (30 s past their expected time).
    pub loops_lost: u64,
    /// Fetches the gateway answered per second (authorised).
    pub fetches_per_s: f64,
    /// Replies (loops, fetch answers) the gateway handed to its clients
    /// per second.
    pub deliveries_per_s: f64,
    /// Frames per second the gateway wrote on its clients' constant-rate
    /// downlinks (replies and dummies).
    pub downlink_frames_per_s: f64,
    /// Packets per second into the gateway: from its clients and from the
    /// mix nodes.
    pub packets_in_per_s: f64,
    /// Of which from its clients.
    pub client_packets_in_per_s: f64,
    /// Of which from the mix nodes (final hop: loops, drop cover, fetches,
    /// and the gateway's own loops).
    pub mix_packets_in_per_s: f64,
    /// Packets the gateway dropped in the window (any reason).
    pub gateway_dropped: u64,
    /// Cores this process (the clients) used in the window.
    pub client_cpu_cores: f64,
    /// Cores the directory and the six mix nodes used in the window.
    pub network_cpu_cores: f64,
    /// Cores the machine was busy with beyond the gateway, the clients and
    /// the network: other work on a shared machine.
    pub other_cpu_cores: f64,
    /// Resident memory this process gained per client, KiB.
    pub client_rss_per_client_kib: f64,
    /// Packets the clients sent / what their rates ask for
    /// (clients × (λ_P + λ_L) × seconds): below 0.9 the client process
    /// could not keep up.
    pub client_send_share: f64,
    /// Share of the machine's CPU time that was idle in the window.
    pub machine_idle_share: f64,
    /// Cores of the machine.
    pub machine_cores: usize,
    /// λ_P + λ_L of the network, packets/s per client.
    pub client_pps: f64,
    /// λ_D, downlink frames/s per client.
    pub downlink_pps: f64,
    /// False when the figures cannot be trusted: see `invalid_reasons`.
    pub valid: bool,
    /// Why the run is not valid (empty when it is).
    pub invalid_reasons: Vec<String>,
}

/// What `umbra bench gateway` runs.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The `umbra` binary the network's processes run.
    pub exe: PathBuf,
    /// Idle clients.
    pub clients: usize,
    /// Seconds measured.
    pub seconds: u64,
    /// Seconds between the last client connecting and the window.
    pub warmup: u64,
}

/// Mix nodes of the network: two per layer, as deploy/local/generate.sh.
const MIX_NODES: usize = 6;

/// Clients connecting at once.
const CONNECT_PARALLEL: usize = 16;

/// Seconds the gateway is measured before any client.
const IDLE_SECONDS: u64 = 5;

/// Below this idle share the machine was saturated.
const MIN_IDLE_SHARE: f64 = 0.10;

/// Below this share of their packets the clients fell behind.
const MIN_SEND_SHARE: f64 = 0.9;

/// The network as separate processes of the `umbra` binary.
struct ProcessNet {
    /// SIGTERM to every process on drop.
    guards: Vec<KillOnDrop>,
    children: Vec<(String, std::process::Child)>,
    gateway_pid: u32,
    gateway_id: NodeId,
    gateway_metrics: SocketAddr,
    mix_metrics: Vec<SocketAddr>,
    authority: AuthorityRef,
    /// Configs, data and logs (removed on drop, after the guards).
    tmp: tempfile::TempDir,
}

/// A TCP port on 127.0.0.1 free just now.
fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The last lines of a log file, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

impl ProcessNet {
    /// Writes the configs (network defaults: only addresses, data
    /// directories, the authority and a 5 s topology refresh for a quick
    /// start are set), admits the nodes, starts every process and waits
    /// until every node routes to every other.
    async fn start(exe: &Path, progress: &impl Fn(&str)) -> Result<Self, BoxError> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let dir_data = root.join("directory");
        net::identity::create_private_dir(&dir_data)?;
        let authority_key =
            net::identity::load_or_create_identity(&dir_data.join("authority.key"))?;
        let dir_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let authority = AuthorityRef {
            url: format!("http://{dir_addr}"),
            key: hex::encode(authority_key.verifying_key().to_bytes()),
        };
        let dcfg = directory::DirectoryConfig {
            listen: dir_addr,
            data_dir: dir_data.clone(),
            // Epochs from now: no key rotation within an hour.
            genesis_unix_ms: net::now_ms(),
            vote_interval_ms: 500,
            test_network: true,
            // Every client connects from 127.0.0.1.
            http: crate::testnet::local_http_limits(),
            ..directory::DirectoryConfig::default()
        };
        let dir_cfg = root.join("directory.toml");
        std::fs::write(&dir_cfg, toml::to_string(&dcfg)?)?;
        let mut admission = directory::Admission::load(&dcfg.admission_path())?;

        let node_cfg = |name: &str| -> Result<(node::NodeConfig, NodeId, SocketAddr), BoxError> {
            let data_dir = root.join(name);
            net::identity::create_private_dir(&data_dir)?;
            let id = net::identity::load_or_create_identity(&data_dir.join("identity.key"))?
                .verifying_key()
                .to_bytes();
            let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            let cfg = node::NodeConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                metrics_listen: metrics,
                data_dir,
                authorities: vec![authority.clone()],
                authority_threshold: 1,
                topology_refresh_secs: 5,
                ..node::NodeConfig::default()
            };
            Ok((cfg, id, metrics))
        };
        let write = |name: &str, text: String| -> Result<PathBuf, BoxError> {
            let path = root.join(format!("{name}.toml"));
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let mut mixes = Vec::new();
        for i in 0..MIX_NODES {
            // Not measured: one worker, and replay caches sized for a test
            // network's rate (six nodes share this machine).
            let (cfg, id, metrics) = node_cfg(&format!("mix{i}"))?;
            let cfg = node::NodeConfig {
                workers: 1,
                replay_max_pps: crate::testnet::TEST_REPLAY_MAX_PPS,
                ..cfg
            };
            let path = write(&format!("mix{i}"), toml::to_string(&cfg)?)?;
            admission.admit(id, protocol::topology::Role::Mix)?;
            mixes.push((path, metrics));
        }
        // The measured gateway: every setting at its default.
        let (node, gateway_id, gateway_metrics) = node_cfg("gateway")?;
        let gcfg = gateway::GatewayConfig {
            node,
            client_listen: ([127, 0, 0, 1], 0).into(),
            ..gateway::GatewayConfig::default()
        };
        let gw_cfg = write("gateway", toml::to_string(&gcfg)?)?;
        admission.admit(gateway_id, protocol::topology::Role::Gateway)?;

        let spawn = |role: &str, cfg: &Path| -> Result<std::process::Child, BoxError> {
            let log = std::fs::File::create(cfg.with_extension("log"))?;
            Ok(std::process::Command::new(exe)
                .args([role, "run", "--config"])
                .arg(cfg)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", exe.display()))?)
        };
        let mut net = Self {
            guards: Vec::new(),
            children: Vec::new(),
            gateway_pid: 0,
            gateway_id,
            gateway_metrics,
            mix_metrics: mixes.iter().map(|m| m.1).collect(),
            authority,
            tmp,
        };
        net.adopt("directory", spawn("directory", &dir_cfg)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(dir_addr).await.is_err() {
            net.check_alive()?;
            if Instant::now() > deadline {
                return Err("the directory did not listen within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (i, (path, _)) in mixes.iter().enumerate() {
            net.adopt(&format!("mix{i}"), spawn("mixnode", path)?);
        }
        let gw = spawn("gateway", &gw_cfg)?;
        net.gateway_pid = gw.id();
        net.adopt("gateway", gw);
        progress(&format!(
            "network started as {} processes (directory, {MIX_NODES} mix nodes, one gateway); waiting for routes…",
            net.children.len()
        ));
        net.wait_for_routes().await?;
        Ok(net)
    }

    /// Keeps `child`, to be stopped with the network.
    fn adopt(&mut self, name: &str, child: std::process::Child) {
        self.guards.push(KillOnDrop(child.id()));
        self.children.push((name.to_string(), child));
    }

    /// Every node knows every node (the gateway and the six mix nodes).
    async fn wait_for_routes(&mut self) -> Result<(), BoxError> {
        let total = (MIX_NODES + 1) as f64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            let mut ready = true;
            let gw = metrics_text(self.gateway_metrics).await.unwrap_or_default();
            ready &= metric_sum(&gw, "umbra_gateway_topology_nodes", "") >= total;
            for m in &self.mix_metrics {
                let t = metrics_text(*m).await.unwrap_or_default();
                ready &= metric_sum(&t, "umbra_mixnode_topology_nodes", "") >= total;
            }
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the nodes did not learn each other within 60 s; gateway log:\n{}",
                    log_tail(&self.tmp.path().join("gateway.log"))
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// An error naming the first process that exited, with its log's end.
    fn check_alive(&mut self) -> Result<(), BoxError> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                return Err(format!(
                    "{name} exited ({status}); its log ends:\n{}",
                    log_tail(&self.tmp.path().join(format!("{name}.log")))
                )
                .into());
            }
        }
        Ok(())
    }

    /// SIGTERM to every process, then waits up to 10 s for them to exit.
    async fn stop(mut self) {
        self.guards.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, child) in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Counters read at one moment.
struct Sample {
    at: Instant,
    gateway_cpu: Option<f64>,
    own_cpu: Option<f64>,
    /// The directory's and the mix nodes' processes together.
    network_cpu: Option<f64>,
    machine: Option<(u64, u64)>,
    gateway: GatewayCounters,
    cover: CoverTotals,
}

/// The gateway's counters (from its `/metrics`).
#[derive(Default)]
struct GatewayCounters {
    client_frames: f64,
    mix_packets: f64,
    fetches: f64,
    deliveries: f64,
    downlink: f64,
    dropped: f64,
}

/// The clients' cover counters, summed.
#[derive(Default)]
struct CoverTotals {
    sent: u64,
    loops_sent: u64,
    loops_returned: u64,
    loops_late: u64,
    loops_lost: u64,
}

/// Busy and total CPU ticks of the whole machine (first line of
/// /proc/stat; idle and iowait count as not busy).
pub(crate) fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    line_ticks(stat.lines().next()?.strip_prefix("cpu ")?)
}

/// Busy and total ticks from the fields of one `/proc/stat` CPU line
/// (after its name).
pub(crate) fn line_ticks(fields: &str) -> Option<(u64, u64)> {
    let v: Vec<u64> = fields
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

async fn sample(net: &ProcessNet, clients: &[Client]) -> Sample {
    let text = metrics_text(net.gateway_metrics).await.unwrap_or_default();
    let m = |name: &str, label: &str| metric_sum(&text, name, label);
    let mut cover = CoverTotals::default();
    for c in clients {
        let s = c.cover_stats();
        cover.sent += s.real + s.fetches + s.drop_cover + s.loops_sent;
        cover.loops_sent += s.loops_sent;
        cover.loops_returned += s.loops_returned;
        cover.loops_late += s.loops_late;
        cover.loops_lost += s.loops_lost;
    }
    Sample {
        at: Instant::now(),
        gateway_cpu: process_cpu_seconds(Some(net.gateway_pid)),
        own_cpu: process_cpu_seconds(None),
        network_cpu: net
            .children
            .iter()
            .filter(|(_, c)| c.id() != net.gateway_pid)
            .map(|(_, c)| process_cpu_seconds(Some(c.id())))
            .sum(),
        machine: machine_ticks(),
        gateway: GatewayCounters {
            client_frames: m("umbra_gateway_client_frames_in_total", ""),
            mix_packets: m("umbra_gateway_packets_received_total", ""),
            fetches: m("umbra_gateway_fetches_total", "authorised"),
            deliveries: m("umbra_gateway_client_deliveries_total", ""),
            downlink: m("umbra_gateway_downlink_frames_total", ""),
            dropped: m("umbra_gateway_packets_dropped_total", ""),
        },
        cover,
    }
}

/// The gateway's RSS once it grew less than 1 MiB in 5 s (at most 30 s):
/// the replay cache's first Bloom segment (34 MiB at the default
/// `replay_max_pps`) takes its pages as tags arrive, so right after the
/// first clients it is still growing whatever N.
async fn settled_rss(pid: u32) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = rss_mib(Some(pid)).unwrap_or(f64::NAN);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = rss_mib(Some(pid)).unwrap_or(f64::NAN);
        if below(now - last, 1.0) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// `x` is below `min`, or unknown (NaN).
fn below(x: f64, min: f64) -> bool {
    x.is_nan() || x < min
}

/// Cores used between two CPU-time readings `wall` seconds apart.
fn cores_used(a: Option<f64>, b: Option<f64>, wall: f64) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => (b - a) / wall,
        _ => f64::NAN,
    }
}

/// Clients per loopback address: a gateway takes at most
/// `max_clients_per_ip` (32 by default, which the bench keeps) connections
/// from one address, as it would from one host.
const CLIENTS_PER_IP: usize = 16;

/// The loopback address of client `i`: 127.1.x.y, `CLIENTS_PER_IP` each
/// (all of 127/8 is this machine's on Linux).
fn client_ip(i: usize) -> std::net::IpAddr {
    let k = i / CLIENTS_PER_IP;
    std::net::Ipv4Addr::new(127, 1, (k / 250) as u8, (k % 250 + 1) as u8).into()
}

/// Connects `n` idle clients (numbered from `first`) entering at the gateway, `CONNECT_PARALLEL`
/// at a time, each with one contact (the next client) whose boxes it
/// fetches.
async fn connect_clients(
    cfg: &ClientConfig,
    first: usize,
    n: usize,
    progress: &impl Fn(&str),
) -> Result<Vec<Client>, BoxError> {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECT_PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (mut cfg, slots) = (cfg.clone(), slots.clone());
        cfg.bind_ip = Some(client_ip(first + i));
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            let mut tries = 0;
            loop {
                match Client::connect(cfg.clone(), Identity::generate()).await {
                    // The inbox is dropped: idle clients receive nothing.
                    Ok((c, _inbox)) => return Ok::<_, BoxError>((i, c)),
                    Err(e) if tries >= 3 => {
                        return Err(format!(
                            "client {i} could not connect after 4 tries ({e}): is the machine saturated? try fewer --clients"
                        )
                        .into());
                    }
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    let mut clients: Vec<Option<Client>> = vec![None; n];
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, c) = r??;
        clients[i] = Some(c);
        done += 1;
        if done % 100 == 0 && done < n {
            progress(&format!("{done}/{n} clients connected"));
        }
    }
    let clients: Vec<Client> = clients.into_iter().flatten().collect();
    if clients.len() > 1 {
        for (i, c) in clients.iter().enumerate() {
            let next = &clients[(i + 1) % clients.len()];
            c.add_contact(&next.invite("peer"))?;
        }
    }
    Ok(clients)
}

/// Runs the network, `opts.clients` idle clients against its one gateway,
/// and measures the gateway for `opts.seconds` after `opts.warmup`.
pub async fn gateway(
    opts: &GatewayOptions,
    progress: impl Fn(&str),
) -> Result<GatewayBench, BoxError> {
    if opts.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let net = ProcessNet::start(&opts.exe, &progress).await?;
    let result = measure(&net, opts, &progress).await;
    net.stop().await;
    result
}

async fn measure(
    net: &ProcessNet,
    opts: &GatewayOptions,
    progress: &impl Fn(&str),
) -> Result<GatewayBench, BoxError> {
    let n = opts.clients;
    // The gateway alone, before any client.
    let idle0 = sample(net, &[]).await;
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS)).await;
    let idle1 = sample(net, &[]).await;
    let gateway_idle = cores_used(
        idle0.gateway_cpu,
        idle1.gateway_cpu,
        idle1.at.duration_since(idle0.at).as_secs_f64(),
    );
    let rss_start = rss_mib(Some(net.gateway_pid)).unwrap_or(f64::NAN);
    let own_rss_start = rss_mib(None).unwrap_or(f64::NAN);
    progress(&format!(
        "gateway before clients: {rss_start:.1} MiB, {:.1} % of a core; connecting {n} clients…",
        100.0 * gateway_idle
    ));

    let mut cfg = ClientConfig::with_authorities(vec![net.authority.clone()], 1)?;
    cfg.entry_gateway = Some(net.gateway_id);
    // The fewest past periods: the first fetch round is then the same as
    // every later one, and the warm-up need not wait for a catch-up.
    cfg.catch_up_periods = 2;
    // Half the clients first, then the rest, each followed by the warm-up:
    // the memory the second half adds is what a client costs, without the
    // fixed costs the first traffic brings (the replay cache's first
    // segment fills its pages within seconds, whatever N).
    let first = if n >= 4 { n / 2 } else { n };
    let warmup = Duration::from_secs(opts.warmup);
    let started = Instant::now();
    let mut clients = connect_clients(&cfg, 0, first, progress).await?;
    let mut rss_half = f64::NAN;
    if first < n {
        progress(&format!(
            "{first} clients connected in {:.1} s; warming up {} s before the other {}…",
            started.elapsed().as_secs_f64(),
            opts.warmup,
            n - first
        ));
        tokio::time::sleep(warmup).await;
        rss_half = settled_rss(net.gateway_pid).await;
        clients.extend(connect_clients(&cfg, first, n - first, progress).await?);
    }
    progress(&format!(
        "{n} clients connected; warming up {} s…",
        opts.warmup
    ));
    tokio::time::sleep(warmup).await;

    let rss_window_start = rss_mib(Some(net.gateway_pid)).unwrap_or(f64::NAN);
    let a = sample(net, &clients).await;
    tokio::time::sleep(Duration::from_secs(opts.seconds.max(1))).await;
    let b = sample(net, &clients).await;
    let rss_end = rss_mib(Some(net.gateway_pid)).unwrap_or(f64::NAN);
    let own_rss_end = rss_mib(None).unwrap_or(f64::NAN);
    let wall = b.at.duration_since(a.at).as_secs_f64();

    let params = clients
        .first()
        .map(|c| c.topology().params)
        .unwrap_or_default();
    let client_pps = params.lambda_payload + params.lambda_loop;
    let per_s = |x: f64, y: f64| (y - x).max(0.0) / wall;
    let (ga, gb) = (&a.gateway, &b.gateway);
    let client_in = per_s(ga.client_frames, gb.client_frames);
    let mix_in = per_s(ga.mix_packets, gb.mix_packets);
    let gateway_cpu = cores_used(a.gateway_cpu, b.gateway_cpu, wall);
    let client_cpu = cores_used(a.own_cpu, b.own_cpu, wall);
    let network_cpu = cores_used(a.network_cpu, b.network_cpu, wall);
    let machine_idle = match (a.machine, b.machine) {
        (Some((busy0, t0)), Some((busy1, t1))) if t1 > t0 => {
            1.0 - (busy1 - busy0) as f64 / (t1 - t0) as f64
        }
        _ => f64::NAN,
    };
    // From the ticks themselves (USER_HZ = 100, as `process_cpu_seconds`
    // assumes): /proc/stat counts every CPU of the host, which may be more
    // than this process may use (`available_parallelism`).
    let busy_cores = match (a.machine, b.machine) {
        (Some((busy0, _)), Some((busy1, _))) => busy1.saturating_sub(busy0) as f64 / 100.0 / wall,
        _ => f64::NAN,
    };
    let send_share =
        b.cover.sent.saturating_sub(a.cover.sent) as f64 / (n as f64 * client_pps * wall);
    let loops_returned = b
        .cover
        .loops_returned
        .saturating_sub(a.cover.loops_returned);

    let mut invalid = Vec::new();
    if below(machine_idle, MIN_IDLE_SHARE) {
        invalid.push(format!(
            "the machine was saturated: {:.0} % idle (below {:.0} %)",
            100.0 * machine_idle,
            100.0 * MIN_IDLE_SHARE
        ));
    }
    if below(send_share, MIN_SEND_SHARE) {
        invalid.push(format!(
            "the clients sent {:.0} % of the packets their rates ask for: the client process ({:.2} cores) could not keep up",
            100.0 * send_share,
            client_cpu
        ));
    }
    if loops_returned == 0 {
        invalid.push("no loop came back through the gateway".into());
    }
    if below(gateway_cpu, f64::MIN_POSITIVE) {
        invalid.push("the gateway's CPU time could not be read".into());
    }

    for c in clients {
        c.shutdown();
    }
    Ok(GatewayBench {
        clients: n,
        seconds: wall,
        gateway_cpu_cores: gateway_cpu,
        gateway_idle_cpu_cores: gateway_idle,
        clients_per_gateway_core: n as f64 / gateway_cpu,
        gateway_rss_start_mib: rss_start,
        gateway_rss_window_start_mib: rss_window_start,
        gateway_rss_end_mib: rss_end,
        rss_per_client_kib: (rss_end - rss_start) * 1024.0 / n as f64,
        rss_marginal_per_client_kib: (rss_window_start - rss_half) * 1024.0 / (n - first) as f64,
        loops_sent: b.cover.loops_sent.saturating_sub(a.cover.loops_sent),
        loops_returned,
        loops_late: b.cover.loops_late.saturating_sub(a.cover.loops_late),
        loops_lost: b.cover.loops_lost.saturating_sub(a.cover.loops_lost),
        fetches_per_s: per_s(ga.fetches, gb.fetches),
        deliveries_per_s: per_s(ga.deliveries, gb.deliveries),
        downlink_frames_per_s: per_s(ga.downlink, gb.downlink),
        packets_in_per_s: client_in + mix_in,
        client_packets_in_per_s: client_in,
        mix_packets_in_per_s: mix_in,
        gateway_dropped: (gb.dropped - ga.dropped).max(0.0) as u64,
        client_cpu_cores: client_cpu,
        network_cpu_cores: network_cpu,
        other_cpu_cores: busy_cores - gateway_cpu - client_cpu - network_cpu,
        client_rss_per_client_kib: (own_rss_end - own_rss_start) * 1024.0 / n as f64,
        client_send_share: send_share,
        machine_idle_share: machine_idle,
        machine_cores: cores(),
        client_pps,
        downlink_pps: params.lambda_downlink,
        valid: invalid.is_empty(),
        invalid_reasons: invalid,
    })
}
