//! `umbra bench mixnode`: the raw Sphinx unwrap rate on all cores beside the
//! rate one mix node forwards over QUIC on loopback, measured in one run.
//! `umbra bench client`: what an idle client costs, and how long 1 MiB takes.
//! `umbra bench gateway`: what one gateway spends on N idle clients.

mod capacity;
pub use capacity::{GatewayBench, GatewayOptions, gateway};

use crate::testnet::{BoxError, FinalMode, Injector, LocalNet};
use protocol::packet::{Hop, build_packet, sphinx_keypair};
use protocol::topology::NetworkParams;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Figures from one run.
#[derive(Debug, Clone, Serialize)]
pub struct MixnodeBench {
    /// Sphinx unwraps per second on all cores, no networking: the mean of
    /// the raw runs before and after the median round.
    pub raw_unwrap_pps: f64,
    /// Packets per second one mix node forwarded end to end over QUIC in
    /// the median round, in its steady middle (10th to 90th percentile
    /// arrival).
    pub mixnode_pps: f64,
    /// The same over that whole round, from the first write to the last
    /// arrival.
    pub mixnode_pps_whole_run: f64,
    /// mixnode_pps / raw_unwrap_pps: the median of the rounds. The other
    /// figures above and below are that round's.
    pub ratio: f64,
    /// Every round: the node's rate beside the mean raw rate just before
    /// and just after it.
    pub rounds: Vec<Round>,
    /// Cores used.
    pub cores: usize,
    /// Packets in each measurement (each round, each raw run).
    pub packets: usize,
    /// Packets the node dropped (any reason) during the forwarding rounds.
    pub dropped: u64,
    /// UDP datagrams the sender sent per packet in the forwarding run, ACKs
    /// and retransmissions included: about a third with jumbo datagrams
    /// (three frames each), 2 or more if they fell back to 1200 bytes.
    pub datagrams_per_packet: f64,
    /// The sender's path MTU to the node at the end of that run, bytes.
    pub path_mtu: u16,
    /// Frames per second QUIC alone carries sender → receiver (no mix node).
    pub link_pps: f64,
    /// CPU (all threads, sender and receiver) per frame QUIC alone carries, µs.
    pub link_us_per_frame: f64,
    /// Mean time the node's workers spent peeling one packet, µs.
    pub peel_us: f64,
    /// CPU time one raw unwrap took (cores / raw rate), µs.
    pub raw_us_per_packet: f64,
    /// On-CPU time per forwarded packet in the steady middle, µs: the
    /// node's Sphinx workers, the node's other threads (QUIC, tokio), the
    /// benchmark's sender and receiver.
    pub cpu_us_per_packet: ThreadCpu,
    /// Share of all cores each had then; the rest was idle.
    pub cpu_share: ThreadCpu,
    /// Times each group's threads were put on a CPU per forwarded packet
    /// then: every one is a context switch, which on two cores preempts a
    /// Sphinx worker.
    pub runs_per_packet: ThreadCpu,
    /// On-CPU time of the raw unwrap threads per unwrap, µs (below
    /// `raw_us_per_packet` by what the machine gave to others meanwhile).
    pub raw_cpu_us_per_packet: f64,
    /// Raw unwrap CPU per packet / the node's CPU per forwarded packet
    /// (workers + its QUIC), both on-CPU time: how close the node is to the
    /// crypto, whatever the sender and receiver beside it cost.
    pub node_efficiency: f64,
    /// Rate of the half-load run (half of `mixnode_pps`), packets/s.
    pub half_load_pps: f64,
    /// Latency the node adds at half load, beyond the (zero) sampled delay:
    /// median and 99th percentile, milliseconds.
    pub half_load_p50_ms: f64,
    /// See `half_load_p50_ms`.
    pub half_load_p99_ms: f64,
    /// The soak at 80 % of `mixnode_pps`, if asked for.
    pub soak: Option<Soak>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Builds `n` packets on all cores; hop 0 is `first`, the rest are `rest`.
fn build_all(n: usize, route: &[Hop]) -> Vec<Vec<u8>> {
    let threads = cores();
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = per.min(n.saturating_sub(t * per));
                s.spawn(move || {
                    let mut rng = rand::rng();
                    let zero = vec![Duration::ZERO; route.len()];
                    (0..count)
                        .filter_map(|i| {
                            let msg = format!("bench packet {t}/{i}");
                            build_packet(&mut rng, route, &[0; 32], [0; 16], &zero, msg.as_bytes())
                                .ok()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// `packets` in Sphinx frames for `epoch`, back to back.
fn sphinx_frames(packets: &[Vec<u8>], epoch: u64) -> Result<Vec<u8>, BoxError> {
    let mut frames = Vec::with_capacity(packets.len() * protocol::frame::FRAME_LEN);
    for p in packets {
        protocol::frame::encode_into(&mut frames, protocol::frame::FrameKind::Sphinx, epoch, p)?;
    }
    Ok(frames)
}

/// Raw unwrap rate of sphinx-packet on all cores, and the on-CPU time per
/// unwrap (µs) of the threads that did it: compared with the node's on-CPU
/// time per packet it is not skewed by time the machine gave to others.
fn raw_unwrap(packets: &[Vec<u8>], secret: &x25519_dalek::StaticSecret) -> (f64, f64) {
    // Threads take packets from a shared index, as the node's workers take
    // them from a shared queue: a fixed split would leave a thread idle
    // once it finished its share if its core ran slower (shared machine),
    // understating what the cores can do.
    const TAKE: usize = 16;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    let (ok, cpu): (usize, f64) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cores())
            .map(|_| {
                let next = &next;
                s.spawn(move || {
                    let cpu0 = own_cpu_seconds();
                    let mut ok = 0;
                    loop {
                        let at = next.fetch_add(TAKE, Ordering::Relaxed);
                        let Some(batch) = packets.get(at..(at + TAKE).min(packets.len())) else {
                            break;
                        };
                        ok += batch
                            .iter()
                            .filter(|p| {
                                sphinx_packet::SphinxPacket::from_bytes(p)
                                    .and_then(|sp| sp.process(secret))
                                    .is_ok()
                            })
                            .count();
                    }
                    let cpu = own_cpu_seconds().zip(cpu0).map_or(f64::NAN, |(b, a)| b - a);
                    (ok, cpu)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or((0, f64::NAN)))
            .fold((0, 0.0), |(n, c), (k, d)| (n + k, c + d))
    });
    (
        ok as f64 / start.elapsed().as_secs_f64(),
        cpu / ok.max(1) as f64 * 1e6,
    )
}

/// On-CPU seconds of the calling thread (Linux schedstat).
fn own_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(schedstat_field(&s, ON_CPU_NS)? as f64 / 1e9)
}

/// Fields of a schedstat file: on-CPU nanoseconds, and the times the
/// thread was put on a CPU.
const ON_CPU_NS: usize = 0;
const RUNS: usize = 2;

/// Field `n` of a schedstat file's text.
fn schedstat_field(schedstat: &str, n: usize) -> Option<u64> {
    schedstat.split_whitespace().nth(n)?.parse().ok()
}

/// Runs both measurements with `packets` packets each.
pub async fn mixnode(
    packets: usize,
    soak_secs: u64,
    progress: bool,
) -> Result<MixnodeBench, BoxError> {
    // The node gets its own runtime, as in its own process: its threads
    // ("node-io", and its "sphinx-" workers) are then told apart from the
    // benchmark's sender and receiver when the CPU is counted.
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("node-io")
        .enable_all()
        .build()?;
    let result = mixnode_on(node_rt.handle(), packets, soak_secs, progress).await;
    // A runtime may not be dropped from async code; its tasks are done.
    node_rt.shutdown_background();
    result
}

async fn mixnode_on(
    node_rt: &tokio::runtime::Handle,
    packets: usize,
    soak_secs: u64,
    progress: bool,
) -> Result<MixnodeBench, BoxError> {
    let net = LocalNet::start_on(
        Some(node_rt),
        1,
        NetworkParams::default(),
        FinalMode::Count,
        |c| {
            c.max_delay_ms = 0;
            // Loopback carries jumbo frames, as data-centre links do.
            c.jumbo_frames = true;
            // Only the benchmark's packets: no loop cover of the node's own.
            c.dangerous_no_cover = true;
            // Sized for the full rate, as a production node.
            c.replay_max_pps = mixnode::MixnodeConfig::default().replay_max_pps;
            c.worker_queue = packets + 1024;
            // The soak cycles one set of packets for minutes: the replay cache
            // records them all (its memory and work are those of a real node)
            // but lets them through. Only when a soak is asked for.
            c.dangerous_accept_replays = soak_secs > 0;
            if let Some(w) = std::env::var("UMBRA_BENCH_WORKERS")
                .ok()
                .and_then(|w| w.parse().ok())
            {
                c.workers = w;
            }
        },
    )
    .await?;
    let topo = net.topology().await?;
    let mix = topo
        .layer(1)
        .next()
        .ok_or("no mix node in the topology")?
        .clone();
    let recv = topo
        .node(&net.receiver.identity)
        .ok_or("receiver missing from topology")?
        .clone();
    let route = [mix.hop(), recv.hop()];

    // The raw measurement needs the node's secret; build a twin route with a
    // local key of the same kind for it.
    let (secret, public) = sphinx_keypair(&mut rand::rng());
    let twin = [
        Hop {
            id: mix.identity,
            sphinx_key: public,
        },
        recv.hop(),
    ];
    if progress {
        eprintln!(
            "building {} packets on {} cores…",
            packets * (ROUNDS + 1),
            cores()
        );
    }
    let raw_packets = build_all(packets, &twin);
    let node_packets = build_all(packets * ROUNDS, &route);

    let node = &net.mixnodes[0];
    let mut inj = Injector::connect(&net.receiver.creds, mix.identity, mix.socket_addr()?).await?;
    // Warm up first, untimed: a running node has its links open, their
    // path MTU found and their congestion window grown; a fresh one spends
    // its first fraction of a second on that.
    let warm = build_all((packets / 10).clamp(100, 1000), &route);
    let warm_frames = sphinx_frames(&warm, topo.epoch)?;
    let warm_target = net.receiver.frames.load(Ordering::Relaxed) + warm.len() as u64;
    push(&mut inj, &warm_frames, &net.receiver.frames, warm_target).await?;

    // Raw, node, raw, node, …, raw: the machine's speed drifts (shared,
    // noisy), so each node round is set beside the mean of the raw rates
    // measured just before and just after it, and the run reports the
    // median round.
    let mut raws = vec![raw_unwrap(&raw_packets, &secret)];
    if progress {
        eprintln!("raw unwrap: {:.0} packets/s", raws[0].0);
    }
    let mut rounds: Vec<(Round, NodeRound)> = Vec::with_capacity(ROUNDS);
    let mut frames = Vec::new();
    for (i, chunk) in node_packets.chunks(packets.max(1)).enumerate() {
        frames = sphinx_frames(chunk, topo.epoch)?;
        let r = node_round(&mut inj, &net.receiver.frames, &frames, chunk.len() as u64).await?;
        raws.push(raw_unwrap(&raw_packets, &secret));
        let raw = (raws[i].0 + raws[i + 1].0) / 2.0;
        let raw_cpu_us = (raws[i].1 + raws[i + 1].1) / 2.0;
        if progress {
            eprintln!(
                "round {}: mix node {:.0} packets/s, raw unwrap after it {:.0} packets/s, ratio {:.3}",
                i + 1,
                r.pps,
                raws[i + 1].0,
                r.pps / raw
            );
        }
        rounds.push((
            Round {
                raw_unwrap_pps: raw,
                mixnode_pps: r.pps,
                mixnode_pps_whole_run: r.whole_pps,
                ratio: r.pps / raw,
                raw_cpu_us_per_packet: raw_cpu_us,
            },
            r,
        ));
    }
    let mut by_ratio: Vec<&(Round, NodeRound)> = rounds.iter().collect();
    by_ratio.sort_by(|a, b| a.0.ratio.total_cmp(&b.0.ratio));
    let Some(&(median, m_node)) = by_ratio.get(by_ratio.len() / 2) else {
        return Err("no round measured".into());
    };
    let (raw, raw_cpu_us, pps, whole_pps) = (
        median.raw_unwrap_pps,
        median.raw_cpu_us_per_packet,
        median.mixnode_pps,
        median.mixnode_pps_whole_run,
    );
    let (share, us_per_packet, runs_per_packet) = (m_node.share, m_node.us, m_node.runs);
    let (datagrams_per_packet, path_mtu) = (m_node.datagrams_per_packet, m_node.path_mtu);
    let m = node.metrics();
    let peel_us =
        m.processing.get_sample_sum() / m.processing.get_sample_count().max(1) as f64 * 1e6;
    let dropped = m.total_dropped();

    // Half of the measured maximum, paced, with fresh packets (the first
    // batch is in the replay cache now): what the node adds per packet.
    let half = pps / 2.0;
    let n_half = (packets / 2).max(1);
    if progress {
        eprintln!("latency at half load: {n_half} packets at {half:.0} packets/s…");
    }
    let half_packets = build_all(n_half, &route);
    let (half_p50, half_p99) =
        paced_latency(&mut inj, &net, &half_packets, topo.epoch, half).await?;
    let soak = if soak_secs > 0 {
        if progress {
            eprintln!(
                "soak: {soak_secs} s at 80 % of {whole_pps:.0} packets/s, packets cycled (replays let through)…"
            );
        }
        // 80 % of the whole-run rate: during a soak the sender writes all
        // the time, as during the whole run (the steady middle comes after
        // the sender has finished writing).
        let dropped_before = node.metrics().total_dropped();
        let mut s = soak_run(
            &mut inj,
            &net,
            &frames,
            0.8 * whole_pps,
            soak_secs,
            progress,
        )
        .await?;
        s.dropped = node.metrics().total_dropped() - dropped_before;
        Some(s)
    } else {
        None
    };
    inj.close().await;

    // The same frames straight to the receiver: what QUIC alone carries here.
    let mut direct =
        Injector::connect(&net.receiver.creds, recv.identity, recv.socket_addr()?).await?;
    let base = net.receiver.frames.load(Ordering::Relaxed);
    let n = (frames.len() / protocol::frame::FRAME_LEN) as u64;
    let c0 = thread_cpu_seconds();
    let (link_got, link_elapsed, _) =
        push(&mut direct, &frames, &net.receiver.frames, base + n).await?;
    let c1 = thread_cpu_seconds();
    let link_pps = (link_got - base) as f64 / link_elapsed.as_secs_f64();
    let link_us_per_frame = c0.zip(c1).map_or(f64::NAN, |(a, b)| {
        b.minus(&a).bench / (link_got - base).max(1) as f64 * 1e6
    });
    direct.close().await;
    net.stop().await;
    Ok(MixnodeBench {
        raw_unwrap_pps: raw,
        mixnode_pps: pps,
        mixnode_pps_whole_run: whole_pps,
        ratio: pps / raw,
        rounds: rounds.into_iter().map(|(r, _)| r).collect(),
        cores: cores(),
        packets,
        dropped,
        datagrams_per_packet,
        path_mtu,
        link_pps,
        link_us_per_frame,
        peel_us,
        raw_us_per_packet: cores() as f64 / raw * 1e6,
        cpu_us_per_packet: us_per_packet,
        cpu_share: share,
        runs_per_packet,
        raw_cpu_us_per_packet: raw_cpu_us,
        node_efficiency: raw_cpu_us / (us_per_packet.workers + us_per_packet.node_io),
        half_load_pps: half,
        half_load_p50_ms: half_p50,
        half_load_p99_ms: half_p99,
        soak,
    })
}

/// Node rounds in one run, each between two raw measurements.
const ROUNDS: usize = 3;

/// One node round beside the raw rate around it.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Mean of the raw unwrap rates just before and just after the round.
    pub raw_unwrap_pps: f64,
    /// The node's rate in the steady middle of the round.
    pub mixnode_pps: f64,
    /// The node's rate over the whole round.
    pub mixnode_pps_whole_run: f64,
    /// mixnode_pps / raw_unwrap_pps.
    pub ratio: f64,
    /// Mean on-CPU time per raw unwrap of the two raw runs, µs.
    pub raw_cpu_us_per_packet: f64,
}

/// What one node round measured.
struct NodeRound {
    pps: f64,
    whole_pps: f64,
    share: ThreadCpu,
    us: ThreadCpu,
    runs: ThreadCpu,
    datagrams_per_packet: f64,
    path_mtu: u16,
}

/// Sends `frames` (`n` packets) through the node as a sustained load and
/// measures its rate and where the cores went.
async fn node_round(
    inj: &mut Injector,
    counter: &std::sync::atomic::AtomicU64,
    frames: &[u8],
    n: u64,
) -> Result<NodeRound, BoxError> {
    let target = counter.load(Ordering::Relaxed) + n;
    let dgrams0 = inj.datagrams_sent();
    let cpu0 = sched_snapshot();
    let (got, elapsed, steady) = push(inj, frames, counter, target).await?;
    let got = got - (target - n);
    let cpu1 = sched_snapshot();
    let datagrams_per_packet = (inj.datagrams_sent() - dgrams0) as f64 / n.max(1) as f64;
    let whole_pps = got as f64 / elapsed.as_secs_f64();
    // The node's forwarding rate is the steady middle of the run (10th to
    // 90th percentile arrival): the first packets wait for the sender to
    // get going, the last for the queue to drain.
    let pps = steady.map_or(whole_pps, |s| s.arrived as f64 / s.secs);
    // Where the cores went while the node forwarded (the steady middle):
    // its Sphinx workers, its QUIC and tokio threads, the benchmark's
    // sender and receiver, idle.
    let window = match steady {
        Some(Steady {
            arrived,
            secs,
            cpu: Some((a, b)),
        }) => Some((a, b, secs, arrived)),
        _ => cpu0
            .zip(cpu1)
            .map(|(a, b)| (a, b, elapsed.as_secs_f64(), got)),
    };
    let (share, us, runs) = match window {
        Some(((a, ra), (b, rb), secs, arrived)) => {
            let d = b.minus(&a);
            (
                d.scaled(1.0 / (secs * cores() as f64)),
                d.scaled(1e6 / arrived.max(1) as f64),
                rb.minus(&ra).scaled(1.0 / arrived.max(1) as f64),
            )
        }
        None => (ThreadCpu::NAN, ThreadCpu::NAN, ThreadCpu::NAN),
    };
    Ok(NodeRound {
        pps,
        whole_pps,
        share,
        us,
        runs,
        datagrams_per_packet,
        path_mtu: inj.path_mtu(),
    })
}

/// A long run at a fixed rate: resident memory at its start and end.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    /// Seconds run.
    pub secs: f64,
    /// Packets per second sent.
    pub rate_pps: f64,
    /// Packets forwarded to the receiver per second.
    pub forwarded_pps: f64,
    /// Process resident set size at the start, MiB.
    pub rss_start_mib: f64,
    /// At the end, MiB.
    pub rss_end_mib: f64,
    /// Largest sample (every 10 s), MiB.
    pub rss_max_mib: f64,
    /// Packets the node dropped during the soak (full queues: it is bounded).
    pub dropped: u64,
}

/// A file of `/proc/<pid>`, or of `/proc/self` with `None` (Linux).
fn proc_file(pid: Option<u32>, file: &str) -> Option<String> {
    let dir = pid.map_or_else(|| "self".to_string(), |p| p.to_string());
    std::fs::read_to_string(format!("/proc/{dir}/{file}")).ok()
}

/// Resident set size (VmRSS) of process `pid`, or of this one with
/// `None`, MiB (Linux).
pub(crate) fn rss_mib(pid: Option<u32>) -> Option<f64> {
    let status = proc_file(pid, "status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// Sends `frames` (cycled) at `rate` for `secs`, sampling RSS every 10 s.
async fn soak_run(
    inj: &mut Injector,
    net: &LocalNet,
    frames: &[u8],
    rate: f64,
    secs: u64,
    progress: bool,
) -> Result<Soak, BoxError> {
    let len = protocol::frame::FRAME_LEN;
    let n = frames.len() / len;
    let base = net.receiver.frames.load(Ordering::Relaxed);
    let rss_start = rss_mib(None).unwrap_or(f64::NAN);
    let mut rss_max = rss_start;
    let start = Instant::now();
    let mut next_sample = 10.0;
    let (mut sent, mut at) = (0usize, 0usize);
    while start.elapsed().as_secs() < secs {
        let t = start.elapsed().as_secs_f64();
        let due = (t * rate) as usize;
        while sent < due {
            // Up to the end of the set, then wrap.
            let k = (due - sent).min(n - at);
            inj.send_raw(&frames[at * len..(at + k) * len]).await?;
            sent += k;
            at = (at + k) % n;
        }
        if t >= next_sample {
            let r = rss_mib(None).unwrap_or(f64::NAN);
            rss_max = rss_max.max(r);
            if progress {
                let fwd = net.receiver.frames.load(Ordering::Relaxed) - base;
                eprintln!("soak {t:.0} s: RSS {r:.1} MiB, sent {sent}, forwarded {fwd}");
            }
            next_sample += 10.0;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let forwarded = net.receiver.frames.load(Ordering::Relaxed) - base;
    let rss_end = rss_mib(None).unwrap_or(f64::NAN);
    Ok(Soak {
        secs,
        rate_pps: sent as f64 / secs,
        forwarded_pps: forwarded as f64 / secs,
        rss_start_mib: rss_start,
        rss_end_mib: rss_end,
        rss_max_mib: rss_max.max(rss_end),
        dropped: 0,
    })
}

/// Sends `packets` at `rate` per second and matches arrivals to sends in
/// order (workers may swap neighbours, which shifts a pair by one gap):
/// median and 99th-percentile latency, milliseconds.
async fn paced_latency(
    inj: &mut Injector,
    net: &LocalNet,
    packets: &[Vec<u8>],
    epoch: u64,
    rate: f64,
) -> Result<(f64, f64), BoxError> {
    let rx = &net.receiver;
    let base = rx.frames.load(Ordering::Relaxed);
    rx.arrivals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    rx.record_arrivals.store(true, Ordering::Relaxed);
    let mut sent_at = Vec::with_capacity(packets.len());
    let start = Instant::now();
    let mut i = 0;
    while i < packets.len() {
        let due = ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(packets.len());
        let mut buf = Vec::new();
        while i < due {
            protocol::frame::encode_into(
                &mut buf,
                protocol::frame::FrameKind::Sphinx,
                epoch,
                &packets[i],
            )?;
            i += 1;
        }
        if !buf.is_empty() {
            let now = Instant::now();
            inj.send_raw(&buf).await?;
            sent_at.resize(i, now);
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let target = base + packets.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx.frames.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rx.record_arrivals.store(false, Ordering::Relaxed);
    let arrivals = rx
        .arrivals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut lat: Vec<f64> = arrivals
        .iter()
        .zip(&sent_at)
        .map(|(a, s)| a.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok((q(0.5), q(0.99)))
}

/// The middle of a run: from the 10th to the 90th percentile arrival.
#[derive(Debug, Clone, Copy)]
struct Steady {
    arrived: u64,
    secs: f64,
    /// Thread CPU seconds and runs at both ends, if readable.
    cpu: Option<(Sched, Sched)>,
}

/// Frames the benchmark's sender keeps ahead of the arrivals: enough that
/// the node always has work queued (tenths of a second of it), few enough
/// that it takes packets in throughout the run.
const BACKLOG: u64 = 1000;
/// Frames per write of the sender.
const CHUNK: u64 = 100;
/// How often the sender and the arrival watcher look at the count: each
/// look wakes a thread that preempts a Sphinx worker, so not more often
/// than the figures need (5 ms is under 0.5 % of a run).
const POLL: Duration = Duration::from_millis(5);
/// No arrival for this long: report what arrived and stop waiting.
const STALL: Duration = Duration::from_secs(5);

/// Writes `frames` (each one frame of the same length) and waits until
/// `counter` reaches `target` (or stalls 5 s): arrivals and time, and the
/// steady middle of the run.
async fn push(
    inj: &mut Injector,
    frames: &[u8],
    counter: &std::sync::atomic::AtomicU64,
    target: u64,
) -> Result<(u64, Duration, Option<Steady>), BoxError> {
    let start = Instant::now();
    let base = counter.load(Ordering::Relaxed);
    let n = target.saturating_sub(base);
    let (lo, hi) = (base + n / 10, base + n - n / 10);
    let watch = async {
        let mut last = (0u64, Instant::now());
        let mut at_lo: Option<(u64, Instant, Option<Sched>)> = None;
        let mut steady = None;
        loop {
            let got = counter.load(Ordering::Relaxed);
            if at_lo.is_none() && got >= lo {
                at_lo = Some((got, Instant::now(), sched_snapshot()));
            }
            if steady.is_none()
                && got >= hi
                && let Some((g0, t0, c0)) = at_lo
            {
                let c1 = sched_snapshot();
                steady = Some(Steady {
                    arrived: got - g0,
                    secs: t0.elapsed().as_secs_f64(),
                    cpu: c0.zip(c1),
                });
            }
            if got >= target {
                return (got, start.elapsed(), steady);
            }
            if got != last.0 {
                last = (got, Instant::now());
            } else if last.1.elapsed() > STALL {
                return (got, last.1 - start, steady);
            }
            tokio::time::sleep(POLL).await;
        }
    };
    // Sustained load, not one burst: the sender keeps at most `BACKLOG`
    // frames ahead of the arrivals, so the node takes packets in while it
    // forwards them through the whole run (a burst would be all taken in
    // by the 10th percentile, leaving the node's intake out of the steady
    // middle), and is never idle.
    let send = async {
        let per = protocol::frame::FRAME_LEN;
        let total = (frames.len() / per) as u64;
        let mut sent = 0u64;
        let mut progress = (0u64, Instant::now());
        while sent < total {
            let arrived = counter.load(Ordering::Relaxed).saturating_sub(base);
            if arrived != progress.0 {
                progress = (arrived, Instant::now());
            }
            if sent.saturating_sub(arrived) >= BACKLOG {
                // Packets lost or the node stalled: the watcher gives up
                // after 5 s without an arrival, and so does the sender.
                if progress.1.elapsed() > STALL {
                    break;
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            let k = CHUNK.min(total - sent);
            let at = sent as usize * per;
            inj.send_raw(&frames[at..at + k as usize * per]).await?;
            sent += k;
        }
        Ok::<(), BoxError>(())
    };
    let (written, watched) = tokio::join!(send, watch);
    written?;
    Ok(watched)
}

/// Figures of `umbra bench client`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientBench {
    /// Seconds the idle clients were measured.
    pub idle_seconds: f64,
    /// Share of one core one idle client uses (user + system time of the
    /// three clients, divided by three).
    pub idle_cpu_share: f64,
    /// UDP bytes/s a client hosting one identity sends while idle (QUIC
    /// overhead included; the mean of two such clients).
    pub idle_up_bytes_per_s: f64,
    /// UDP bytes/s a client hosting one identity receives while idle.
    pub idle_down_bytes_per_s: f64,
    /// Identities hosted by the third client, measured in the same window.
    pub identities: usize,
    /// UDP bytes/s the client hosting `identities` identities sends.
    pub many_up_bytes_per_s: f64,
    /// UDP bytes/s it receives.
    pub many_down_bytes_per_s: f64,
    /// many / one, up and down.
    pub many_over_one: [f64; 2],
    /// Three standard deviations of that ratio from Poisson noise alone
    /// (packets in the window at λ_P + λ_L up, λ_D down): a ratio within
    /// 1 ± this is "the same within noise".
    pub noise_3sigma: [f64; 2],
    /// Bytes the process wrote to disk per second, per client, in the first
    /// idle window (their encrypted stores; Linux `write_bytes`): new stores
    /// fetch the boxes of the past `catch_up_periods` hours, and write what
    /// they learn.
    pub catch_up_store_bytes_per_s: f64,
    /// The same once the clients are settled (20 s, from 10 s after the
    /// last short message arrived).
    pub idle_store_bytes_per_s: f64,
    /// Short messages sent for the store-cost figure.
    pub short_messages: usize,
    /// Bytes written to disk per short message (sender's and recipient's
    /// stores together, from `send` until the recipient took it).
    pub store_bytes_per_short_message: f64,
    /// Bytes of the message timed.
    pub message_bytes: usize,
    /// Seconds from `send` to the recipient's inbox.
    pub delivery_seconds: f64,
    /// Bytes written to disk while it was sent and received (both stores).
    pub store_bytes_for_message: f64,
}

/// Bytes this process has caused to be written to disk (Linux
/// `/proc/self/io`), or `None` where that is not available.
fn disk_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time split by who spent it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ThreadCpu {
    /// The node's Sphinx worker threads ("sphinx-").
    pub workers: f64,
    /// The node's runtime ("node-io"): its QUIC links, tokio.
    pub node_io: f64,
    /// Every other thread: the benchmark's sender and receiver.
    pub bench: f64,
}

impl ThreadCpu {
    const NAN: Self = Self {
        workers: f64::NAN,
        node_io: f64::NAN,
        bench: f64::NAN,
    };

    fn minus(&self, o: &Self) -> Self {
        Self {
            workers: self.workers - o.workers,
            node_io: self.node_io - o.node_io,
            bench: self.bench - o.bench,
        }
    }

    fn scaled(&self, k: f64) -> Self {
        Self {
            workers: self.workers * k,
            node_io: self.node_io * k,
            bench: self.bench * k,
        }
    }
}

/// On-CPU time of this process's threads, seconds, split by thread name
/// (Linux schedstat, ns).
fn thread_cpu_seconds() -> Option<ThreadCpu> {
    sched_snapshot().map(|(cpu, _)| cpu)
}

/// Per thread group: on-CPU seconds, and how many times its threads were
/// put on a CPU (schedstat's third field; each is a wake-up or a return
/// after preemption, and each costs a context switch).
type Sched = (ThreadCpu, ThreadCpu);

/// A [`Sched`] of this process's threads now (Linux schedstat).
fn sched_snapshot() -> Option<Sched> {
    let mut ns = [0u64; 3];
    let mut runs = [0u64; 3];
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = t.ok()?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended
        };
        let Ok(sched) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let i = if comm.starts_with("sphinx-") {
            0
        } else if comm.starts_with("node-io") {
            1
        } else {
            2
        };
        ns[i] += schedstat_field(&sched, ON_CPU_NS)?;
        runs[i] += schedstat_field(&sched, RUNS).unwrap_or(0);
    }
    let group = |v: [u64; 3], k: f64| ThreadCpu {
        workers: v[0] as f64 * k,
        node_io: v[1] as f64 * k,
        bench: v[2] as f64 * k,
    };
    Some((group(ns, 1e-9), group(runs, 1.0)))
}

/// CPU time (user + system) of process `pid`, or of this one with `None`,
/// seconds, from /proc (Linux).
pub(crate) fn process_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let stat = proc_file(pid, "stat")?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // Clock ticks: 100 per second on Linux.
    Some((utime + stime) / 100.0)
}

/// Starts `umbra testnet` (default network parameters) as a separate
/// process, so that this process runs only the clients and its CPU time is
/// theirs. Three clients, each with its own encrypted store as an
/// application would use: two hosting one identity and one hosting
/// `identities`, each identity with a contact whose boxes it fetches. It
/// measures them idle side by side for `idle_seconds`, then what the stores
/// write for a few short messages, then the delivery of one `message_bytes`
/// message.
pub async fn client(
    exe: &std::path::Path,
    idle_seconds: u64,
    message_bytes: usize,
    identities: usize,
    progress: impl Fn(&str),
) -> Result<ClientBench, BoxError> {
    use client_sdk::{Client, ClientConfig, Identity};
    use std::io::BufRead;
    let identities = identities.max(1);
    let mut child = std::process::Command::new(exe)
        .arg("testnet")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let guard = KillOnDrop(child.id());
    let stdout = child.stdout.take().ok_or("no stdout")?;
    // `umbra testnet` prints `threshold = K` and one `authority = URL KEY`
    // line per authority, then how to point a client at it.
    let (refs, threshold) = tokio::task::spawn_blocking(move || {
        let mut refs = Vec::new();
        let mut threshold = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.ok()?;
            let line = line.trim();
            if let Some(v) = line.strip_prefix("threshold = ") {
                threshold = v.parse().ok();
            }
            if let Some((url, key)) = line
                .strip_prefix("authority = ")
                .and_then(|v| v.split_once(' '))
            {
                refs.push(client_sdk::AuthorityRef {
                    url: url.to_string(),
                    key: key.to_string(),
                });
            }
            if line.starts_with("Point an SDK client") {
                return Some((refs, threshold?));
            }
        }
        None
    })
    .await?
    .ok_or("umbra testnet did not start")?;
    progress(&format!(
        "testnet running in a separate process; opening three clients (two with one identity, one with {identities})"
    ));
    let cfg = ClientConfig::with_authorities(refs, threshold)?;
    let dir = tempfile::tempdir()?;
    let pass = b"bench passphrase";
    // Each store in a directory of its own, which the SDK creates 0700.
    let store = |who: &str| dir.path().join(who).join("client.umbra");
    let (alice, _a_inbox) = Client::open(cfg.clone(), store("alice"), pass).await?;
    let (bob, mut b_inbox) = Client::open(cfg.clone(), store("bob"), pass).await?;
    let (carol, _c_inbox) = Client::open(cfg, store("carol"), pass).await?;
    let bob_id = alice.add_contact(&bob.invite("bob"))?;
    bob.add_contact(&alice.invite("alice"))?;
    let mut carols = vec![carol.id()];
    for _ in 1..identities {
        carols.push(carol.add_identity(&Identity::generate()));
    }
    for me in &carols {
        carol.add_contact_as(me, &alice.invite("alice"))?;
    }
    // Let the streams and the first catch-up fetches settle.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let traffic = || (alice.traffic(), bob.traffic(), carol.traffic());
    let (cpu0, (a0, b0, c0), w0, t0) = (
        process_cpu_seconds(None),
        traffic(),
        disk_write_bytes(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let (cpu1, (a1, b1, c1), w1) = (process_cpu_seconds(None), traffic(), disk_write_bytes());
    let wall = t0.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / wall;
    let one_up = (rate(a0.0, a1.0) + rate(b0.0, b1.0)) / 2.0;
    let one_down = (rate(a0.1, a1.1) + rate(b0.1, b1.1)) / 2.0;
    let many_up = rate(c0.0, c1.0);
    let many_down = rate(c0.1, c1.1);
    let params = alice.topology().params;
    // Relative sd of a Poisson count is 1/sqrt(n); of a ratio of one
    // client to the mean of two, sqrt(1/n + 1/(2n)).
    let sigma = |lambda: f64| (1.5 / (lambda * wall)).sqrt();
    let noise = [
        3.0 * sigma(params.lambda_payload + params.lambda_loop),
        3.0 * sigma(params.lambda_downlink),
    ];
    let written = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64,
        _ => f64::NAN,
    };
    progress(&format!(
        "idle: {:.1} % of a core per client; one identity up {one_up:.0} B/s down {one_down:.0} B/s; {identities} identities up {many_up:.0} B/s down {many_down:.0} B/s; sending {message_bytes} bytes",
        100.0 * cpu / wall / 3.0
    ));

    let body: Vec<u8> = (0..message_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let w_big0 = disk_write_bytes();
    let started = Instant::now();
    let id = alice.send(&bob_id, &body).await?;
    let mut last = Instant::now();
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(5), b_inbox.recv()).await {
            Ok(Some(m)) if m.id == id => break m,
            Ok(Some(_)) => {}
            Ok(None) => return Err("inbox closed".into()),
            Err(_) => {
                if let Some(p) = alice.progress(&id)
                    && last.elapsed() > Duration::from_secs(10)
                {
                    last = Instant::now();
                    progress(&format!("{}/{} fragments stored", p.have, p.count));
                }
                if alice.status(&id).is_some_and(|s| s.is_failure()) {
                    return Err("the message failed".into());
                }
            }
        }
    };
    let delivery = started.elapsed().as_secs_f64();
    let big_written = written(w_big0, disk_write_bytes());
    if got.body != body {
        return Err("the message arrived altered".into());
    }
    progress(&format!(
        "{message_bytes} bytes delivered in {delivery:.1} s"
    ));
    drop(got);
    b_inbox.done().await?;

    // Store cost of short messages, sender and recipient together.
    let short = 20usize;
    let w_short0 = disk_write_bytes();
    let mut ids = Vec::new();
    for i in 0..short {
        ids.push(
            alice
                .send(&bob_id, format!("short message {i}").as_bytes())
                .await?,
        );
    }
    let mut got = 0;
    while got < short {
        match tokio::time::timeout(Duration::from_secs(120), b_inbox.recv()).await {
            Ok(Some(m)) if ids.contains(&m.id) => got += 1,
            Ok(Some(_)) => {}
            Ok(None) => return Err("inbox closed".into()),
            Err(_) => return Err(format!("only {got}/{short} short messages in 120 s").into()),
        }
    }
    let per_short = written(w_short0, disk_write_bytes()) / short as f64;
    progress(&format!(
        "{short} short messages: {per_short:.0} bytes written to the stores per message"
    ));
    // Store writes of idle clients once everything has settled: catch-up
    // fetches done (the first window still holds them), receipts and
    // confirmations of the messages above written. 10 s to settle, then
    // 20 s measured.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let w_idle0 = disk_write_bytes();
    let t_idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let settled_idle = written(w_idle0, disk_write_bytes()) / t_idle.elapsed().as_secs_f64() / 3.0;

    alice.close().await;
    bob.close().await;
    carol.close().await;
    drop(guard);
    let _ = child.wait();
    Ok(ClientBench {
        idle_seconds: wall,
        idle_cpu_share: cpu / wall / 3.0,
        idle_up_bytes_per_s: one_up,
        idle_down_bytes_per_s: one_down,
        identities,
        many_up_bytes_per_s: many_up,
        many_down_bytes_per_s: many_down,
        many_over_one: [many_up / one_up, many_down / one_down],
        noise_3sigma: noise,
        catch_up_store_bytes_per_s: written(w0, w1) / wall / 3.0,
        idle_store_bytes_per_s: settled_idle,
        short_messages: short,
        store_bytes_per_short_message: per_short,
        message_bytes,
        delivery_seconds: delivery,
        store_bytes_for_message: big_written,
    })
}

/// Stops a child process (SIGTERM) when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}
