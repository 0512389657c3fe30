//! `umbra dangerous-flood`: floods a local network the way an attacker
//! would while an honest pair keeps talking through it, and reports, per
//! attack, the honest messages delivered and their latency, and the
//! servers' memory before, during and after.
//!
//! The network runs in a child process (`umbra testnet`), so its resident
//! memory is the servers' alone; the attacker and the honest pair run in
//! this process. The attacker speaks from 127.0.0.2 and the honest pair
//! from 127.0.0.1, so per-source limits apply as they would on the
//! internet. Every attack runs for `seconds` at the rate this process
//! reaches (two cores: about one core for the attacker), and counts what
//! it did, so a run shows that the attack really happened.

use crate::testnet::BoxError;
use client_sdk::{Client, Identity};
use net::dirclient::{Authorities, AuthorityRef};
use protocol::frame::{self, FrameKind};
use protocol::messages::Request;
use protocol::packet;
use protocol::topology::{self, TopologyDocument};
use rand::RngExt;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The attacks, each against what issue-tracked hardening protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// No attack: the honest pair alone, for comparison.
    Baseline,
    /// QUIC handshakes as fast as possible to every gateway's client port
    /// and every mix node's link port, held open (connection slots).
    Connections,
    /// Client connections sending Subscribe frames for random addresses
    /// without end (subscription slots).
    Subscribe,
    /// Random UDP datagrams to every QUIC port, and malformed frames and
    /// undecryptable Sphinx packets on client connections.
    Junk,
    /// One valid Sphinx packet injected over and over (the replay cache).
    Replay,
    /// Fresh valid packets storing random bytes in random dropboxes (the
    /// gateways' disks, quotas and replay caches).
    Stores,
    /// The directory: idle connections, request heads never finished, and
    /// GETs as fast as possible.
    Directory,
}

impl Attack {
    /// Every attack, the baseline first.
    pub const ALL: [Attack; 7] = [
        Attack::Baseline,
        Attack::Connections,
        Attack::Subscribe,
        Attack::Junk,
        Attack::Replay,
        Attack::Stores,
        Attack::Directory,
    ];

    /// Its name on the command line and in the table.
    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FloodOptions {
    /// The `umbra` binary that runs the network (`umbra testnet`).
    pub umbra: std::path::PathBuf,
    /// Attacks, in order.
    pub attacks: Vec<Attack>,
    /// Length of each attack.
    pub seconds: u64,
    /// Pause after each attack before the next (memory "after" is read at
    /// its end).
    pub cool_down: Duration,
    /// The honest pair sends one message per this interval (alternating).
    pub honest_interval: Duration,
    /// How long honest messages may take to arrive after the last attack.
    pub drain: Duration,
}

impl Default for FloodOptions {
    fn default() -> Self {
        Self {
            umbra: std::path::PathBuf::from("umbra"),
            attacks: Attack::ALL.to_vec(),
            seconds: 30,
            cool_down: Duration::from_secs(5),
            honest_interval: Duration::from_millis(500),
            drain: Duration::from_secs(90),
        }
    }
}

/// One attack's row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct AttackRow {
    pub attack: Attack,
    /// What the attacker did, in its own units (handshakes, frames, …).
    pub volume: u64,
    pub volume_unit: &'static str,
    /// Attempts the attacker saw refused or cut (closed, 429s, …).
    pub refused: u64,
    /// What the servers' own counters say they saw of it (the delta of
    /// `server_counter` over the attack).
    pub server_saw: u64,
    pub server_counter: &'static str,
    /// Honest messages sent during the attack, and delivered by the end.
    pub honest_sent: usize,
    pub honest_delivered: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The servers' resident memory (MiB): before, the most during, after
    /// the cool-down.
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_after_mib: f64,
}

impl AttackRow {
    /// The servers' counters moved by more than honest traffic could have
    /// moved them. The series chosen do not move for honest traffic, except
    /// the bytes in dropboxes: there the honest messages of the attack,
    /// were each a maximal fragment stored and never fetched, are the floor.
    pub fn reached_servers(&self) -> bool {
        let floor = match self.attack {
            Attack::Baseline => return true,
            Attack::Stores => {
                self.honest_sent as u64
                    * (protocol::messages::MAX_STORED_LEN as u64 + gateway::ROW_OVERHEAD)
            }
            _ => 0,
        };
        self.server_saw > floor
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    pub rows: Vec<AttackRow>,
    pub seconds: u64,
    pub honest_interval_ms: u64,
}

impl FloodReport {
    /// Every honest message delivered, and every attack really happened.
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| {
            r.honest_sent > 0
                && r.honest_delivered == r.honest_sent
                && (r.attack == Attack::Baseline || (r.volume > 0 && r.reached_servers()))
        })
    }

    /// A Markdown table.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| attack | attacker did | refused/cut | servers saw | honest delivered | p50 ms | p99 ms | server RSS MiB before / peak / after |\n|---|---|---|---|---|---|---|---|\n",
        );
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} {} | {} | {} {} | {}/{} | {} | {} | {:.0} / {:.0} / {:.0} |\n",
                r.attack.name(),
                r.volume,
                r.volume_unit,
                r.refused,
                r.server_saw,
                r.server_counter,
                r.honest_delivered,
                r.honest_sent,
                ms(r.p50_ms),
                ms(r.p99_ms),
                r.rss_before_mib,
                r.rss_peak_mib,
                r.rss_after_mib
            ));
        }
        s
    }
}

/// The network in its own process.
struct Servers {
    child: tokio::process::Child,
    pid: u32,
    refs: Vec<AuthorityRef>,
    threshold: usize,
    /// Every node's `/metrics`, and the first authority's.
    metrics: Vec<SocketAddr>,
}

impl Servers {
    async fn start(umbra: &std::path::Path) -> Result<Self, BoxError> {
        let mut child = tokio::process::Command::new(umbra)
            .args([
                "testnet",
                "--per-layer",
                "2",
                "--gateways",
                "2",
                "--production-http-limits",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {} testnet: {e}", umbra.display()))?;
        let pid = child.id().ok_or("testnet exited at once")?;
        let mut out = child.stdout.take().ok_or("no stdout")?;
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !text.contains("Point an SDK client") {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, out.read(&mut buf))
                .await
                .map_err(|_| "the testnet did not start within 60 s")??;
            if n == 0 {
                return Err(format!("the testnet exited: {text}").into());
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Keep reading so the child never blocks on a full pipe.
        tokio::spawn(async move { while out.read(&mut buf).await.is_ok_and(|n| n > 0) {} });
        let mut refs = Vec::new();
        let mut threshold = 1;
        let mut metrics = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(m) = line.strip_prefix("metrics = http://") {
                metrics.push(m.trim_end_matches("/metrics").parse()?);
            } else if let Some(t) = line.strip_prefix("threshold = ") {
                threshold = t.parse()?;
            } else if let Some(a) = line.strip_prefix("authority = ") {
                let mut it = a.split_whitespace();
                let (Some(url), Some(key)) = (it.next(), it.next()) else {
                    return Err(format!("bad authority line {line:?}").into());
                };
                refs.push(AuthorityRef {
                    url: url.into(),
                    key: key.into(),
                });
            }
        }
        if let Some(a) = refs.first() {
            metrics.push(a.url.trim_start_matches("http://").parse()?);
        }
        Ok(Self {
            child,
            pid,
            refs,
            threshold,
            metrics,
        })
    }

    /// Resident memory of the network's process, MiB.
    fn rss_mib(&self) -> f64 {
        crate::bench::rss_mib(Some(self.pid)).unwrap_or(0.0)
    }
}

/// The sum, over every server, of the series whose name ends with one of
/// `names` and whose labels contain one of `labels` (any labels if empty).
async fn scrape(servers: &[SocketAddr], names: &[&str], labels_wanted: &[&str]) -> u64 {
    let mut total = 0.0;
    for addr in servers {
        let Some(body) = crate::testnet::metrics_text(*addr).await else {
            continue;
        };
        total += crate::testnet::metric_sum_where(&body, |name, labels| {
            names.iter().any(|n| name.ends_with(n))
                && (labels_wanted.is_empty() || labels_wanted.iter().any(|l| labels.contains(l)))
        });
    }
    total as u64
}

/// The server-side series that show an attack reached its target, and
/// that honest traffic does not move, except the bytes in dropboxes
/// ([`AttackRow::reached_servers`] discounts the honest share there).
type Evidence = (
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
);

fn evidence(a: Attack) -> Evidence {
    match a {
        Attack::Baseline => (&[], &[], "-"),
        Attack::Connections => (
            &["_connections_refused_total"],
            &[],
            "connections refused (gateway client ports and node links)",
        ),
        Attack::Subscribe => (
            &["_packets_dropped_total", "_frames_dropped_total"],
            &["resubscribed", "rate_limited"],
            "frames dropped as resubscriptions or over the rate",
        ),
        Attack::Junk => (
            &["_frames_dropped_total", "_packets_dropped_total"],
            &["malformed"],
            "frames and packets dropped as malformed",
        ),
        Attack::Replay => (
            &["_packets_dropped_total", "_frames_dropped_total"],
            &["replay", "rate_limited"],
            "packets dropped as replays or over the rate",
        ),
        Attack::Stores => (
            &["_dropbox_bytes"],
            &[],
            "bytes more in the gateways' dropboxes",
        ),
        Attack::Directory => (
            &["_http_refused_total"],
            &[],
            "HTTP connections and requests refused or cut",
        ),
    }
}

/// What an attack task counts.
#[derive(Default)]
struct Count {
    done: AtomicU64,
    refused: AtomicU64,
}

impl Count {
    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

fn attacker_endpoint() -> Result<quinn::Endpoint, BoxError> {
    Ok(net::link::client_endpoint(SocketAddr::new(ATTACKER, 0))?)
}

/// Client connections to the gateways' client ports, from the attacker.
async fn client_conn(
    ep: &quinn::Endpoint,
    gw: &topology::TopologyNode,
) -> Result<quinn::Connection, BoxError> {
    let addr = gw
        .client_socket_addr()
        .ok_or("gateway without client address")?;
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        net::link::connect(ep, gw.identity, addr),
    )
    .await
    .map_err(|_| "timeout")??)
}

/// Writes `frames()` on uni streams of fresh client connections until
/// `until`, reconnecting when the gateway closes one.
async fn pump_frames(
    topo: Arc<TopologyDocument>,
    until: Instant,
    count: Arc<Count>,
    mut frames: impl FnMut() -> Vec<u8> + Send,
) {
    let Ok(ep) = attacker_endpoint() else { return };
    let gws: Vec<topology::TopologyNode> = topo.gateways().cloned().collect();
    let mut i = 0;
    while Instant::now() < until {
        let gw = &gws[i % gws.len()];
        i += 1;
        let Ok(conn) = client_conn(&ep, gw).await else {
            count.refuse();
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(mut send) = conn.open_uni().await else {
            count.refuse();
            continue;
        };
        while Instant::now() < until {
            let f = frames();
            if send.write_all(&f).await.is_err() {
                count.refuse();
                break;
            }
            count.add(1);
        }
        conn.close(0u32.into(), b"");
    }
    ep.close(0u32.into(), b"");
}

async fn connections(topo: Arc<TopologyDocument>, until: Instant, count: Arc<Count>) {
    let mut held = Vec::new();
    let mut targets: Vec<(protocol::NodeId, SocketAddr)> = topo
        .gateways()
        .filter_map(|g| Some((g.identity, g.client_socket_addr()?)))
        .collect();
    targets.extend(
        topo.nodes
            .iter()
            .filter_map(|n| Some((n.identity, n.socket_addr().ok()?))),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let mut k = 0usize;
    while Instant::now() < until {
        while tasks.len() < 64 {
            let (id, addr) = targets[k % targets.len()];
            k += 1;
            let c = count.clone();
            tasks.spawn(async move {
                // A fresh endpoint (and so a fresh source port) per attempt.
                let ep = attacker_endpoint().ok()?;
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    net::link::connect(&ep, id, addr),
                )
                .await
                {
                    Ok(Ok(conn)) => {
                        c.add(1);
                        Some((ep, conn))
                    }
                    _ => {
                        c.add(1);
                        c.refuse();
                        None
                    }
                }
            });
        }
        if let Some(Ok(Some(held_conn))) = tasks.join_next().await {
            // Hold up to 2,000 open, like an attacker keeping slots.
            if held.len() < 2_000 {
                held.push(held_conn);
            }
        }
    }
    tasks.abort_all();
    for (ep, c) in held {
        c.close(0u32.into(), b"");
        ep.close(0u32.into(), b"");
    }
}

async fn junk(topo: Arc<TopologyDocument>, until: Instant, count: Arc<Count>) {
    let mut ports: Vec<SocketAddr> = topo
        .gateways()
        .filter_map(|g| g.client_socket_addr())
        .collect();
    ports.extend(topo.nodes.iter().filter_map(|n| n.socket_addr().ok()));
    let udp = tokio::spawn({
        let count = count.clone();
        async move {
            let Ok(sock) = tokio::net::UdpSocket::bind(SocketAddr::new(ATTACKER, 0)).await else {
                return;
            };
            let mut buf = vec![0u8; 1200];
            let mut k = 0usize;
            while Instant::now() < until {
                rand::rng().fill(&mut buf[..]);
                // Half look like QUIC long-header Initials.
                if k.is_multiple_of(2) {
                    buf[0] = 0xc0 | (buf[0] & 0x0f);
                    buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
                if sock.send_to(&buf, ports[k % ports.len()]).await.is_ok() {
                    count.add(1);
                }
                k += 1;
                if k.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    // Undecryptable packets in well-formed Inject frames, and garbage
    // frames, on client connections.
    let first = topo.layer(1).next().map(|n| n.identity).unwrap_or([0; 32]);
    let epoch = topo.epoch;
    let mut n = 0u64;
    pump_frames(topo, until, count, move || {
        n += 1;
        let mut pkt = vec![0u8; packet::PACKET_SIZE];
        rand::rng().fill(&mut pkt[..]);
        if n.is_multiple_of(4) {
            pkt.truncate(300);
            pkt
        } else {
            frame::encode_parts(FrameKind::Inject, epoch, &[&first, &pkt]).unwrap_or_default()
        }
    })
    .await;
    let _ = udp.await;
}

/// A valid Inject frame carrying `body` to `last` through one node per
/// layer.
fn inject_frame(
    topo: &TopologyDocument,
    last: &topology::TopologyNode,
    body: &[u8],
) -> Option<Vec<u8>> {
    let mut rng = rand::rng();
    let mut route: Vec<packet::Hop> = topology::choose_mix_route(topo, &mut rng)
        .ok()?
        .into_iter()
        .map(|n| n.hop())
        .collect();
    route.push(last.hop());
    let delays = packet::sample_delays(
        &mut rng,
        route.len(),
        Duration::from_millis(topo.params.mix_delay_mean_ms),
    );
    let pkt = packet::build_packet(&mut rng, &route, &[0; 32], [0; 16], &delays, body).ok()?;
    frame::encode_parts(FrameKind::Inject, topo.epoch, &[&route[0].id, &pkt]).ok()
}

async fn run_attack(
    attack: Attack,
    topo: Arc<TopologyDocument>,
    directory: SocketAddr,
    until: Instant,
    count: Arc<Count>,
) {
    match attack {
        Attack::Baseline => tokio::time::sleep_until(until.into()).await,
        Attack::Connections => connections(topo, until, count).await,
        Attack::Subscribe => {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let (topo, count) = (topo.clone(), count.clone());
                tasks.spawn(pump_frames(topo, until, count, || {
                    let address: [u8; 32] = rand::random();
                    frame::encode(FrameKind::Subscribe, 0, &address).unwrap_or_default()
                }));
            }
            while tasks.join_next().await.is_some() {}
        }
        Attack::Junk => junk(topo, until, count).await,
        Attack::Replay => {
            let Some(gw) = topo.gateways().next().cloned() else {
                return;
            };
            let Ok(body) = Request::Drop.encode() else {
                return;
            };
            let Some(f) = inject_frame(&topo, &gw, &body) else {
                return;
            };
            pump_frames(topo, until, count, move || f.clone()).await;
        }
        Attack::Stores => {
            let gws: Vec<topology::TopologyNode> = topo.gateways().cloned().collect();
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..2 {
                let (topo, count, gws) = (topo.clone(), count.clone(), gws.clone());
                tasks.spawn(async move {
                    let mut k = t;
                    pump_frames(topo.clone(), until, count, move || {
                        k += 1;
                        let mut ciphertext = vec![0u8; protocol::messages::MAX_STORED_LEN];
                        rand::rng().fill(&mut ciphertext[..]);
                        let body = Request::Store {
                            dropbox: rand::random(),
                            ciphertext,
                        }
                        .encode()
                        .unwrap_or_default();
                        inject_frame(&topo, &gws[k % gws.len()], &body).unwrap_or_default()
                    })
                    .await
                });
            }
            while tasks.join_next().await.is_some() {}
        }
        Attack::Directory => directory_flood(directory, until, count).await,
    }
}

async fn directory_flood(dir: SocketAddr, until: Instant, count: Arc<Count>) {
    let connect = move || async move {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(SocketAddr::new(ATTACKER, 0)).ok()?;
        sock.connect(dir).await.ok()
    };
    let mut tasks = tokio::task::JoinSet::new();
    // Idle connections and request heads never finished (slowloris).
    for slow in [false, true] {
        let count = count.clone();
        tasks.spawn(async move {
            let mut held = Vec::new();
            while Instant::now() < until {
                let Some(mut s) = connect().await else {
                    count.refuse();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                if slow {
                    let _ = s
                        .write_all(b"GET /v1/topology HTTP/1.1\r\nHost: x\r\n")
                        .await;
                }
                count.add(1);
                held.push(s);
                if held.len() >= 200 {
                    held.remove(0);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    // GETs as fast as possible.
    for _ in 0..8 {
        let count = count.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while Instant::now() < until {
                let Some(mut s) = connect().await else {
                    count.refuse();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                if s.write_all(b"GET /v1/topology HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .is_err()
                {
                    count.refuse();
                    continue;
                }
                count.add(1);
                let mut first = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if first.len() < 16 {
                        first.extend_from_slice(&buf[..n.min(16)]);
                    }
                }
                if first.starts_with(b"HTTP/1.1 429") || first.is_empty() {
                    count.refuse();
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn unit(a: Attack) -> &'static str {
    match a {
        Attack::Baseline => "-",
        Attack::Connections => "handshakes",
        Attack::Subscribe => "subscribes",
        Attack::Junk => "datagrams+frames",
        Attack::Replay => "replays",
        Attack::Stores => "stores",
        Attack::Directory => "http connections",
    }
}

/// The honest pair's record: per message, the attack it was sent during,
/// when, and when it arrived.
struct Honest {
    sent: std::sync::Mutex<Vec<(Attack, Instant, Option<Duration>)>>,
}

/// Runs the attacks in `opts` one after another against a fresh local
/// network, with the honest pair talking throughout.
pub async fn run(opts: FloodOptions, progress: impl Fn(&str)) -> Result<FloodReport, BoxError> {
    progress("starting the network in a child process (umbra testnet)…");
    let servers = Servers::start(&opts.umbra).await?;
    let authorities = Authorities::new(&servers.refs, servers.threshold)?;
    let topo = Arc::new(authorities.topology(false, net::now_ms(), None).await?);
    let directory: SocketAddr = servers.refs[0]
        .url
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("directory url: {e}"))?;

    let mut cfg =
        client_sdk::ClientConfig::with_authorities(servers.refs.clone(), servers.threshold)?;
    cfg.catch_up_periods = 2;
    let (alice, mut alice_in) = Client::connect(cfg.clone(), Identity::generate()).await?;
    let (bob, mut bob_in) = Client::connect(cfg, Identity::generate()).await?;
    let bob_id = alice.add_contact(&bob.invite("bob"))?;
    let alice_id = bob.add_contact(&alice.invite("alice"))?;
    progress("the honest pair is connected");

    let honest = Arc::new(Honest {
        sent: std::sync::Mutex::new(Vec::new()),
    });
    let phase = Arc::new(std::sync::Mutex::new(Attack::Baseline));
    let receivers = {
        let honest = honest.clone();
        tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    m = alice_in.recv() => m,
                    m = bob_in.recv() => m,
                };
                let Some(m) = got else { break };
                let Some(i) = std::str::from_utf8(&m.body)
                    .ok()
                    .and_then(|s| s.strip_prefix("honest "))
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    continue;
                };
                let mut sent = honest.sent.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(e) = sent.get_mut(i)
                    && e.2.is_none()
                {
                    e.2 = Some(e.1.elapsed());
                }
            }
        })
    };
    let sending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let (honest, phase, sending) = (honest.clone(), phase.clone(), sending.clone());
        let interval = opts.honest_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut i = 0usize;
            while sending.load(Ordering::Relaxed) {
                tick.tick().await;
                let now_phase = *phase.lock().unwrap_or_else(|p| p.into_inner());
                let body = format!("honest {i}");
                let r = if i.is_multiple_of(2) {
                    alice.send(&bob_id, body.as_bytes()).await
                } else {
                    bob.send(&alice_id, body.as_bytes()).await
                };
                if r.is_ok() {
                    honest.sent.lock().unwrap_or_else(|p| p.into_inner()).push((
                        now_phase,
                        Instant::now(),
                        None,
                    ));
                    i += 1;
                }
            }
            (alice, bob)
        })
    };

    let mut rows = Vec::new();
    for &attack in &opts.attacks {
        let before = servers.rss_mib();
        *phase.lock().unwrap_or_else(|p| p.into_inner()) = attack;
        progress(&format!(
            "attack {}: {} s (servers at {before:.0} MiB)",
            attack.name(),
            opts.seconds
        ));
        let (names, labels, what) = evidence(attack);
        let seen_before = scrape(&servers.metrics, names, labels).await;
        let count = Arc::new(Count::default());
        let until = Instant::now() + Duration::from_secs(opts.seconds);
        let task = tokio::spawn(run_attack(
            attack,
            topo.clone(),
            directory,
            until,
            count.clone(),
        ));
        let mut peak = before;
        while !task.is_finished() {
            peak = peak.max(servers.rss_mib());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The honest messages of the cool-down count for this attack too.
        tokio::time::sleep(opts.cool_down).await;
        let after = servers.rss_mib();
        let seen = scrape(&servers.metrics, names, labels)
            .await
            .saturating_sub(seen_before);
        rows.push(AttackRow {
            attack,
            volume: count.done.load(Ordering::Relaxed),
            volume_unit: unit(attack),
            refused: count.refused.load(Ordering::Relaxed),
            server_saw: seen,
            server_counter: what,
            honest_sent: 0,
            honest_delivered: 0,
            p50_ms: None,
            p99_ms: None,
            rss_before_mib: before,
            rss_peak_mib: peak.max(after),
            rss_after_mib: after,
        });
    }
    sending.store(false, Ordering::Relaxed);
    let (alice, bob) = sender.await?;
    progress("attacks done; waiting for the honest messages still on their way…");
    let deadline = Instant::now() + opts.drain;
    while Instant::now() < deadline {
        let missing = honest
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.2.is_none())
            .count();
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    receivers.abort();
    let sent = honest
        .sent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for row in &mut rows {
        let mine: Vec<_> = sent.iter().filter(|e| e.0 == row.attack).collect();
        let mut lat: Vec<f64> = mine
            .iter()
            .filter_map(|e| e.2)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        lat.sort_by(f64::total_cmp);
        row.honest_sent = mine.len();
        row.honest_delivered = lat.len();
        let quantile = |p| (!lat.is_empty()).then(|| crate::demo::percentile(&lat, p));
        row.p50_ms = quantile(0.5);
        row.p99_ms = quantile(0.99);
    }
    alice.close().await;
    bob.close().await;
    let mut servers = servers;
    let _ = servers.child.kill().await;
    Ok(FloodReport {
        rows,
        seconds: opts.seconds,
        honest_interval_ms: opts.honest_interval.as_millis() as u64,
    })
}
