//! `umbra bench mixnode`: the raw Sphinx unwrap rate beside the rate one
//! mix node forwards over QUIC on loopback, on the same cores, measured in
//! one run, at production settings unless told otherwise; the load
//! generator on a core of its own where the machine allows.
//! `umbra bench client`: what an idle client costs, and how long 1 MiB takes.
//! `umbra bench gateway`: what one gateway spends on N idle clients.

mod capacity;
pub use capacity::{GatewayBench, GatewayOptions, gateway};

use crate::testnet::{BoxError, FinalMode, Injector, LocalNet};
use node::sched::parse_cpu_list;
use protocol::packet::{Hop, build_packet, sample_delays, sphinx_keypair};
use protocol::topology::NetworkParams;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How `umbra bench mixnode` runs. [`Default`] is production: the node's
/// default config, packets that ask for delays drawn at the network's
/// default mean, 1500-byte-MTU datagrams, and several peers on each side.
#[derive(Debug, Clone)]
pub struct MixnodeOptions {
    /// Packets in each measurement (each node round, each raw run); with
    /// `fit_rounds`, the least a node round takes.
    pub packets: usize,
    /// Size the node rounds from the first raw run's rate, so that a
    /// round's steady window lasts ten mean delays on a machine of any
    /// speed (`packets` alone, sized for one speed, left a faster
    /// machine's rounds too short to quote). Off when `--packets` is given.
    pub fit_rounds: bool,
    /// Mean per-hop delay the packets ask of the node, milliseconds (drawn
    /// from an exponential, as clients draw them); 0 forwards at once.
    pub delay_ms: u64,
    /// Jumbo datagrams on the node's links (off in the node's default
    /// config: internet paths carry 1500 bytes).
    pub jumbo: bool,
    /// Peers that send to the node, and as many it forwards to.
    pub peers: usize,
    /// Then run this many seconds at 80 % of the measured rate.
    pub soak_secs: u64,
    /// Print progress on stderr.
    pub progress: bool,
    /// Where the load generator (the senders and receivers) runs: on a
    /// core of its own where the machine allows it (the default), as a
    /// node whose machine is its own does not carry its peers.
    pub placement: Placement,
}

/// Where `umbra bench mixnode` runs its load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On cores of its own (one in eight) when the process has at least
    /// two whole CPUs, else sharing them, and the result says why.
    #[default]
    Auto,
    /// On cores of its own, or not at all (`--own-cores`).
    Own,
    /// On the same cores as the node and the raw unwrap (`--shared-cores`):
    /// the node's rate then carries the generator's QUIC too.
    Shared,
}

/// Node-round packets per second of mean delay per raw packet/s: ten
/// mean delays over a 0.8 share of the round is 12.5; 13 leaves room for
/// the raw rate to drift up during the run.
const ROUND_FIT: f64 = 13.0;

/// Peers on each side of the node by default: a layer's nodes in a
/// 3-layer network of 9.
pub const DEFAULT_PEERS: usize = 3;

/// Packets per measurement for a mean delay of `delay_ms`: a round's
/// steady middle must last ten mean delays, and at about 15,000 packets/s
/// (both cores of the project's machine) that takes 200 packets per
/// millisecond of mean delay (160,000 at 800 ms; 80,000 gave 4.9 s there,
/// under the 8 s needed), and never fewer than 80,000. On a faster machine
/// the node rounds grow beyond it ([`MixnodeOptions::fit_rounds`]).
pub fn packets_for(delay_ms: u64) -> usize {
    (delay_ms as usize).saturating_mul(200).max(80_000)
}

impl Default for MixnodeOptions {
    fn default() -> Self {
        let delay_ms = NetworkParams::default().mix_delay_mean_ms;
        Self {
            packets: packets_for(delay_ms),
            fit_rounds: true,
            delay_ms,
            jumbo: mixnode::MixnodeConfig::default().jumbo_frames,
            peers: DEFAULT_PEERS,
            soak_secs: 0,
            progress: false,
            placement: Placement::Auto,
        }
    }
}

impl MixnodeOptions {
    /// The old, easy setting, kept as a ceiling: no delay (the direct
    /// forward), jumbo datagrams, one peer on each side.
    pub fn easy() -> Self {
        Self {
            packets: 10_000,
            fit_rounds: false,
            delay_ms: 0,
            jumbo: true,
            peers: 1,
            // As its recorded figures were taken.
            placement: Placement::Shared,
            ..Self::default()
        }
    }
}

/// Most CPU other processes may use during any measured window, in cores:
/// above it the raw rate and the node's rate are both cut by an unknown
/// share and their ratio means nothing (it rose to 1.3–1.8 under load).
pub const MAX_OUTSIDE_CORES: f64 = 0.10;
/// Largest idle share of the measured cores during a raw run: the raw
/// unwrap must fill every one, or it understates what they can do.
pub const MAX_RAW_IDLE: f64 = 0.10;
/// A node round's steady window must last this many mean delays, or its
/// edges (packets still held at the start, the tail draining at the end)
/// bias the rate.
pub const MIN_WINDOW_DELAYS: f64 = 10.0;

/// Figures from one run.
#[derive(Debug, Clone, Serialize)]
pub struct MixnodeBench {
    /// Sphinx unwraps per second on the measured cores, no networking, over
    /// the steady window (10th to 90th percentile completion): the mean of the
    /// raw runs before and after the median round.
    pub raw_unwrap_pps: f64,
    /// Packets per second one mix node forwarded end to end over QUIC in
    /// the median round, over the same kind of window (10th to 90th
    /// percentile arrival).
    pub mixnode_pps: f64,
    /// The same over that whole round, from the first write to the last
    /// arrival (with delays, the drain of the last held packets is in it).
    pub mixnode_pps_whole_run: f64,
    /// mixnode_pps / raw_unwrap_pps: the median of the rounds. The other
    /// figures above and below are that round's.
    pub ratio: f64,
    /// True when every window passed the checks below: a ratio may be
    /// quoted only then.
    pub valid: bool,
    /// Why the run is not valid (empty when it is).
    pub invalid_reasons: Vec<String>,
    /// Mean per-hop delay the packets asked for, ms.
    pub delay_ms: u64,
    /// Jumbo datagrams on the links.
    pub jumbo: bool,
    /// Peers sending to the node, and peers it forwarded to.
    pub peers: usize,
    /// Most CPU other processes used in any window, cores.
    pub outside_load_cores: f64,
    /// Largest idle share of the cores in any raw run.
    pub raw_idle_share: f64,
    /// Idle share of the cores in the median round's steady window.
    pub node_idle_share: f64,
    /// Share of the generator's own cores its threads kept busy then (NaN
    /// when it shared the node's): near 1 it may have fed the node too
    /// slowly, which can only lower the node's rate.
    pub generator_busy_share: f64,
    /// Every round: the node's rate beside the mean raw rate just before
    /// and just after it.
    pub rounds: Vec<Round>,
    /// Cores the node and the raw unwrap ran on.
    pub cores: usize,
    /// Cores the load generator had to itself; 0: it shared the node's.
    pub generator_cores: usize,
    /// Why the load generator shared the node's cores, if it did.
    pub shared_because: Option<String>,
    /// Packets in each node round (the raw runs take
    /// [`MixnodeOptions::packets`]; with `fit_rounds` the rounds may take more).
    pub packets: usize,
    /// Packets the node dropped (any reason) during the forwarding rounds.
    pub dropped: u64,
    /// Most packets the node held for their delay at once, and its bound
    /// of rate × the largest delay (with the default 10 s clamp this is
    /// what memory must allow).
    pub held_max: u64,
    /// UDP datagrams the senders sent per packet in the median round, ACKs
    /// and retransmissions included: about 1.7 at a 1500-byte MTU, a third
    /// with jumbo datagrams (three frames each).
    pub datagrams_per_packet: f64,
    /// A sender's path MTU to the node at the end of that round, bytes.
    pub path_mtu: u16,
    /// Frames per second QUIC alone carries sender → receiver (no mix node),
    /// on the generator's cores when it has its own.
    pub link_pps: f64,
    /// CPU (all threads, sender and receiver) per frame QUIC alone carries, µs.
    pub link_us_per_frame: f64,
    /// Mean time the node's workers spent peeling one packet, µs.
    pub peel_us: f64,
    /// CPU time one raw unwrap took (cores / raw rate), µs.
    pub raw_us_per_packet: f64,
    /// On-CPU time per forwarded packet in the steady middle, µs: the
    /// node's Sphinx workers, the node's other threads (QUIC, tokio), the
    /// benchmark's senders and receivers.
    pub cpu_us_per_packet: ThreadCpu,
    /// Share of all cores each had then; the rest was idle or others'.
    pub cpu_share: ThreadCpu,
    /// Times each group's threads were put on a CPU per forwarded packet
    /// then: every one is a context switch, and on a shared core takes it
    /// from a Sphinx worker.
    pub runs_per_packet: ThreadCpu,
    /// On-CPU time of the raw unwrap threads per unwrap, µs (below
    /// `raw_us_per_packet` by what the machine gave to others meanwhile).
    pub raw_cpu_us_per_packet: f64,
    /// Raw unwrap CPU per packet / the node's CPU per forwarded packet
    /// (workers + its QUIC), both on-CPU time: how close the node is to the
    /// crypto, whatever the senders and receivers beside it cost.
    pub node_efficiency: f64,
    /// Latency through the node at 10, 50 and 90 % of `mixnode_pps`.
    pub latency: Vec<LoadLatency>,
    /// The soak at 80 % of `mixnode_pps`, if asked for.
    pub soak: Option<Soak>,
}

/// Latency through the node at one paced load.
#[derive(Debug, Clone, Serialize)]
pub struct LoadLatency {
    /// Share of the measured rate.
    pub load: f64,
    /// Packets per second sent.
    pub rate_pps: f64,
    /// Packets sent (all arrived, or `arrived` says how many).
    pub packets: usize,
    /// Packets that arrived.
    pub arrived: usize,
    /// Send to arrival, median and 99th percentile, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// What the sampled delays alone give, median and 99th percentile, ms.
    pub delay_p50_ms: f64,
    /// See `delay_p50_ms`.
    pub delay_p99_ms: f64,
    /// What the node adds beyond each packet's own delay (arrivals matched
    /// to due times in order), median and 99th percentile, ms.
    pub added_p50_ms: f64,
    /// See `added_p50_ms`.
    pub added_p99_ms: f64,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// When the load generator has a core of its own: the CPUs the node and
/// the raw unwrap run on, and the generator's.
#[derive(Clone, Debug)]
struct Split {
    node: Vec<usize>,
    generator: Vec<usize>,
}

static SPLIT: std::sync::Mutex<Option<Split>> = std::sync::Mutex::new(None);

fn split() -> Option<Split> {
    SPLIT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The cores measured: the node's and the raw unwrap's (all of them,
/// unless the load generator has its own).
fn measured_cores() -> usize {
    split().map_or_else(cores, |s| s.node.len())
}

/// The CPUs this process may run on (Linux `Cpus_allowed_list`, e.g.
/// `0-3,6`) that are online (some machines list every possible CPU);
/// `0..cores()` where that cannot be read.
fn allowed_cpus() -> Vec<usize> {
    let listed = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            parse_cpu_list(line.trim())
        });
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()));
    match (listed, online) {
        (Some(l), Some(o)) => l.into_iter().filter(|c| o.contains(c)).collect(),
        (Some(l), None) => l,
        _ => (0..cores()).collect(),
    }
}

/// Pins this process's threads for a split run: the node's (`node-io`,
/// `sphinx-`) to the node's CPUs, every other (senders, receivers,
/// directory) to the generator's. Called again before each measurement,
/// for threads started since.
fn pin_threads() {
    let Some(s) = split() else { return };
    for_each_thread(|tid, comm| {
        let node = thread_group(comm) != BENCH_THREADS;
        let _ = node::sched::pin(tid, if node { &s.node } else { &s.generator });
    });
}

/// Calls `f` with the id and name of each of this process's threads.
fn for_each_thread(mut f: impl FnMut(i32, &str)) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        f(tid, &comm);
    }
}

/// Busy and total ticks of `cpus` (Linux `/proc/stat`).
fn cpu_ticks(cpus: &[usize]) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (mut busy, mut total, mut found) = (0, 0, 0);
    for line in stat.lines() {
        let Some((name, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some(n) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&n) {
            continue;
        }
        let (b, t) = capacity::line_ticks(rest)?;
        busy += b;
        total += t;
        found += 1;
    }
    (found == cpus.len()).then_some((busy, total))
}

/// Every core the run uses: the measured ones and the generator's.
fn all_cores() -> usize {
    split().map_or_else(cores, |s| s.node.len() + s.generator.len())
}

/// Pins the calling thread to the measured CPUs (a raw unwrap thread).
fn pin_measured() {
    if let Some(s) = split() {
        let _ = node::sched::pin(0, &s.node);
    }
}

/// Packets built for a route, and the delay each asks of its first hop.
struct Built {
    packets: Vec<Vec<u8>>,
    delays: Vec<Duration>,
}

/// Builds `n` packets on all cores; packet `i` takes `routes[i %
/// routes.len()]`, and asks its first hop for a delay drawn at `mean`.
fn build_all(n: usize, routes: &[Vec<Hop>], mean: Duration) -> Built {
    // Building is not measured: on every core the process may use.
    let all = split().map(|s| [s.node, s.generator].concat());
    let threads = all.as_ref().map_or_else(cores, Vec::len);
    let per = n.div_ceil(threads);
    let parts: Vec<Vec<(Vec<u8>, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = per.min(n.saturating_sub(t * per));
                let all = all.as_deref();
                let thread = std::thread::Builder::new().name("bench-build".into());
                let spawned = thread.spawn_scoped(s, move || {
                    if let Some(all) = all {
                        let _ = node::sched::pin(0, all);
                    }
                    let mut rng = rand::rng();
                    (0..count)
                        .filter_map(|i| {
                            let route = &routes[(t * per + i) % routes.len().max(1)];
                            let mut delays = sample_delays(&mut rng, route.len(), mean);
                            // The final hop delivers at once.
                            if let Some(last) = delays.last_mut() {
                                *last = Duration::ZERO;
                            }
                            let msg = format!("bench packet {t}/{i}");
                            build_packet(
                                &mut rng,
                                route,
                                &[0; 32],
                                [0; 16],
                                &delays,
                                msg.as_bytes(),
                            )
                            .ok()
                            .map(|p| (p, delays[0]))
                        })
                        .collect::<Vec<_>>()
                });
                spawned.expect("a packet-building thread starts")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let (packets, delays) = parts.into_iter().flatten().unzip();
    Built { packets, delays }
}

/// Runs `f`, seconds of work on all cores, without holding up the tasks
/// queued on this runtime thread (the directory, the benchmark's links'
/// keep-alives): they move to another thread meanwhile.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// `packets` in Sphinx frames for `epoch`, back to back.
fn sphinx_frames(packets: &[Vec<u8>], epoch: u64) -> Result<Vec<u8>, BoxError> {
    let mut frames = Vec::with_capacity(packets.len() * protocol::frame::FRAME_LEN);
    for p in packets {
        protocol::frame::encode_into(&mut frames, protocol::frame::FrameKind::Sphinx, epoch, p)?;
    }
    Ok(frames)
}

/// The machine and this process at one instant: what a window's outside
/// load and idle share are computed from.
#[derive(Clone, Copy)]
struct Snap {
    at: Instant,
    /// Busy and total ticks of the whole machine.
    machine: Option<(u64, u64)>,
    /// Busy and total ticks of the measured CPUs.
    measured: Option<(u64, u64)>,
    /// This process's CPU seconds.
    own: Option<f64>,
    /// Its threads' schedstat, by group.
    sched: Option<Sched>,
}

fn snap() -> Snap {
    Snap {
        at: Instant::now(),
        machine: capacity::machine_ticks(),
        measured: split().and_then(|s| cpu_ticks(&s.node)),
        own: process_cpu_seconds(None),
        sched: sched_snapshot(),
    }
}

/// One measured window: `n` packets done in `secs`.
#[derive(Debug, Clone, Copy)]
struct Window {
    n: u64,
    secs: f64,
    /// Cores other processes used.
    outside_cores: f64,
    /// Share of our cores nobody used.
    idle_share: f64,
    /// Share of the generator's own cores its threads kept busy (NaN: it
    /// has none): near 1 it may not have kept the node busy, which lowers
    /// the node's rate.
    generator_busy: f64,
}

impl Window {
    fn between(a: &Snap, b: &Snap, n: u64) -> Self {
        let secs = b.at.duration_since(a.at).as_secs_f64();
        // Ticks are 1/100 s (USER_HZ) in /proc/stat and /proc/<pid>/stat.
        // Cores the whole machine kept busy.
        let busy = match (a.machine, b.machine) {
            (Some((b0, _)), Some((b1, _))) if secs > 0.0 => {
                b1.saturating_sub(b0) as f64 / 100.0 / secs
            }
            _ => f64::NAN,
        };
        let outside = match (a.own, b.own) {
            (Some(o0), Some(o1)) if secs > 0.0 => (busy - (o1 - o0) / secs).max(0.0),
            _ => f64::NAN,
        };
        // With the generator on cores of its own, of the node's cores only
        // (the generator's idle while the raw unwrap runs, and that is no
        // fault); else of the cores this process may use, as the machine's
        // busy time over them.
        let split = split();
        let idle_share = if split.is_some() {
            match (a.measured, b.measured) {
                (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                    1.0 - b1.saturating_sub(b0) as f64 / (t1 - t0) as f64
                }
                _ => f64::NAN,
            }
        } else {
            1.0 - busy / cores() as f64
        };
        // From its threads' own on-CPU time: /proc/stat's per-CPU ticks
        // miss the short bursts of a mostly idle CPU on a tickless kernel
        // (they showed the generator's core 1 % busy when its threads
        // were on it 8 % of the time).
        let generator_busy = match (split, a.sched, b.sched) {
            (Some(s), Some((a, _)), Some((b, _))) if secs > 0.0 => {
                (b.bench - a.bench) / secs / s.generator.len() as f64
            }
            _ => f64::NAN,
        };
        Self {
            n,
            secs,
            outside_cores: outside,
            idle_share: idle_share.clamp(0.0, 1.0),
            generator_busy: generator_busy.clamp(0.0, 1.0),
        }
    }

    fn pps(&self) -> f64 {
        self.n as f64 / self.secs
    }
}

/// One raw run: its steady window, and the on-CPU time per unwrap (µs)
/// of the threads that did it.
struct RawRun {
    window: Window,
    cpu_us: f64,
}

/// Raw unwrap rate of sphinx-packet on the measured cores over the same kind of
/// window as the node's (10th to 90th percentile completion), and the
/// on-CPU time per unwrap (µs) of the threads that did it: compared with
/// the node's on-CPU time per packet it is not skewed by time the machine
/// gave to others.
fn raw_unwrap(packets: &[Vec<u8>], secret: &x25519_dalek::StaticSecret) -> RawRun {
    // Threads take packets from a shared index, as the node's workers take
    // them from a shared queue: a fixed split would leave a thread idle
    // once it finished its share if its core ran slower (shared machine),
    // understating what the cores can do.
    const TAKE: usize = 16;
    let n = packets.len();
    let (lo, hi) = (n / 10, n - n / 10);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let marks: std::sync::Mutex<[Option<(Snap, usize)>; 2]> = std::sync::Mutex::new([None; 2]);
    let (ok, cpu): (usize, f64) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..measured_cores())
            .map(|_| {
                let (next, done, marks) = (&next, &done, &marks);
                // Named, so that its placement can be seen in /proc.
                let thread = std::thread::Builder::new().name("raw-unwrap".into());
                let spawned = thread.spawn_scoped(s, move || {
                    pin_measured();
                    // The node's Sphinx workers' policy (SCHED_BATCH, as
                    // are the benchmark's own threads).
                    node::sched::worker_thread();
                    let cpu0 = own_cpu_seconds();
                    let mut ok = 0;
                    loop {
                        let at = next.fetch_add(TAKE, Ordering::Relaxed);
                        let Some(batch) = packets.get(at..(at + TAKE).min(n)) else {
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
                        // The thread whose batch crosses a mark records it.
                        let k = batch.len();
                        let d = done.fetch_add(k, Ordering::Relaxed) + k;
                        for (i, mark) in [lo, hi].into_iter().enumerate() {
                            if d - k < mark && d >= mark {
                                let s = snap();
                                marks.lock().unwrap_or_else(|p| p.into_inner())[i] = Some((s, d));
                            }
                        }
                    }
                    let cpu = own_cpu_seconds().zip(cpu0).map_or(f64::NAN, |(b, a)| b - a);
                    (ok, cpu)
                });
                spawned.expect("a raw unwrap thread starts")
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or((0, f64::NAN)))
            .fold((0, 0.0), |(n, c), (k, d)| (n + k, c + d))
    });
    let marks = marks.into_inner().unwrap_or_else(|p| p.into_inner());
    let window = match marks {
        [Some((a, da)), Some((b, db))] => Window::between(&a, &b, (db - da) as u64),
        _ => Window {
            n: ok as u64,
            secs: f64::NAN,
            outside_cores: f64::NAN,
            idle_share: f64::NAN,
            generator_busy: f64::NAN,
        },
    };
    RawRun {
        window,
        cpu_us: cpu / ok.max(1) as f64 * 1e6,
    }
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

/// Why a run is not valid, from its raw runs, node rounds and drops.
fn judge(raws: &[Window], nodes: &[Window], dropped: u64, mean_delay: Duration) -> Vec<String> {
    let mut why = Vec::new();
    let outside = raws
        .iter()
        .chain(nodes)
        .map(|w| w.outside_cores)
        .fold(0.0, f64::max);
    if raws.iter().chain(nodes).any(|w| w.outside_cores.is_nan()) {
        why.push("the machine's CPU counters could not be read (/proc/stat)".into());
    } else if outside > MAX_OUTSIDE_CORES {
        why.push(format!(
            "other processes used {outside:.2} cores during a measurement (at most {MAX_OUTSIDE_CORES} allowed)"
        ));
    }
    let idle = raws.iter().map(|w| w.idle_share).fold(0.0, f64::max);
    if raws.iter().chain(nodes).any(|w| w.idle_share.is_nan()) {
        why.push("the measured cores' CPU counters could not be read (/proc/stat)".into());
    } else if idle > MAX_RAW_IDLE {
        why.push(format!(
            "a raw run left {:.0} % of the cores idle (at most {:.0} %)",
            idle * 100.0,
            MAX_RAW_IDLE * 100.0
        ));
    }
    if dropped > 0 {
        why.push(format!("the node dropped {dropped} packets"));
    }
    let need = MIN_WINDOW_DELAYS * mean_delay.as_secs_f64();
    if let Some(short) = nodes.iter().map(|w| w.secs).reduce(f64::min)
        && short < need
    {
        why.push(format!(
            "a round's steady window lasted {short:.1} s, under {MIN_WINDOW_DELAYS} mean delays ({need:.1} s): use more --packets"
        ));
    }
    why
}

/// The generator's own cores (one in eight, the last ones) and the
/// node's, of `cpus` of which the process may keep `usable` busy, or why
/// it cannot have them.
fn own_split(cpus: &[usize], usable: usize) -> Result<Split, String> {
    if cpus.len() < 2 {
        return Err(format!(
            "the load generator needs a core of its own, and this process may run on {} CPU",
            cpus.len()
        ));
    }
    // A CPU quota (a container's `--cpus`) lets the process use less than
    // the CPUs it may run on: pinned by CPU, the split would count
    // throttled time as idle.
    if usable < cpus.len() {
        return Err(format!(
            "this process may run on {} CPUs but use only {usable} (a CPU quota), so the load generator cannot have a core of its own; give it whole CPUs (taskset, cpuset)",
            cpus.len()
        ));
    }
    let (node, generator) = cpus.split_at(cpus.len() - cpus.len().div_ceil(8));
    Ok(Split {
        node: node.to_vec(),
        generator: generator.to_vec(),
    })
}

/// Runs both measurements as `opts` says.
pub async fn mixnode(opts: MixnodeOptions) -> Result<MixnodeBench, BoxError> {
    let cpus = allowed_cpus();
    let (split, shared_because) = match opts.placement {
        Placement::Shared => (None, Some(SHARED_ASKED.to_string())),
        Placement::Own => (Some(own_split(&cpus, cores())?), None),
        Placement::Auto => match own_split(&cpus, cores()) {
            Ok(s) => (Some(s), None),
            Err(why) => (None, Some(why)),
        },
    };
    *SPLIT.lock().unwrap_or_else(|p| p.into_inner()) = split.clone();
    // Whatever happens from here (an error, a panic, the future dropped
    // by a timeout), the process's threads may use every CPU again after.
    let _unpin = Unpin(cpus);
    // The benchmark's own threads go to the generator's core now.
    pin_threads();
    let result = mixnode_split(&opts, split).await;
    result.map(|r| MixnodeBench {
        shared_because,
        ..r
    })
}

/// `shared_because` when told to share (`--easy` shares too: its
/// recorded figures were taken so).
const SHARED_ASKED: &str = "asked for (--shared-cores or --easy)";

/// Ends a split run: every thread of the process back on `.0`.
struct Unpin(Vec<usize>);

impl Drop for Unpin {
    fn drop(&mut self) {
        if SPLIT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_none()
        {
            return;
        }
        // Twice: a thread started by a still-pinned one during the first
        // pass inherits the pinned set.
        for _ in 0..2 {
            for_each_thread(|tid, _| {
                let _ = node::sched::pin(tid, &self.0);
            });
        }
    }
}

async fn mixnode_split(
    opts: &MixnodeOptions,
    split: Option<Split>,
) -> Result<MixnodeBench, BoxError> {
    // The node gets its own runtime, as in its own process: its threads
    // ("node-io", and its "sphinx-" workers) are then told apart from the
    // benchmark's senders and receivers when the CPU is counted.
    let node_cpus = split.map(|s| s.node);
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(measured_cores())
        .thread_name("node-io")
        .on_thread_start(move || {
            node::sched::io_thread();
            if let Some(c) = &node_cpus {
                let _ = node::sched::pin(0, c);
            }
        })
        .enable_all()
        .build()?;
    let result = mixnode_on(node_rt.handle(), opts).await;
    // A runtime may not be dropped from async code; its tasks are done.
    node_rt.shutdown_background();
    result
}

async fn mixnode_on(
    node_rt: &tokio::runtime::Handle,
    opts: &MixnodeOptions,
) -> Result<MixnodeBench, BoxError> {
    let (packets, progress) = (opts.packets.max(10), opts.progress);
    let peers = opts.peers.max(1);
    let mean = Duration::from_millis(opts.delay_ms);
    let mut net = LocalNet::start_on(
        Some(node_rt),
        1,
        NetworkParams::default(),
        FinalMode::Count,
        |c| {
            // The node's default config, but for these:
            c.jumbo_frames = opts.jumbo;
            // Only the benchmark's packets: the node's own loop cover (one
            // packet a second) would route through layers this one-node
            // network does not have.
            c.dangerous_no_cover = true;
            // The soak cycles one set of packets for minutes: the replay cache
            // records them all (its memory and work are those of a real node)
            // but lets them through. Only when a soak is asked for.
            c.dangerous_accept_replays = opts.soak_secs > 0;
            // One worker per core, of the cores the node has.
            c.workers = measured_cores();
            if let Some(w) = std::env::var("UMBRA_BENCH_WORKERS")
                .ok()
                .and_then(|w| w.parse().ok())
            {
                c.workers = w;
            }
        },
    )
    .await?;
    net.add_receivers(peers - 1, FinalMode::Count).await?;
    let topo = net.topology().await?;
    let mix = topo
        .layer(1)
        .next()
        .ok_or("no mix node in the topology")?
        .clone();
    let mut receivers = Vec::new();
    for r in net.receivers() {
        receivers.push(
            topo.node(&r.identity)
                .ok_or("receiver missing from topology")?
                .clone(),
        );
    }
    let routes: Vec<Vec<Hop>> = receivers.iter().map(|r| vec![mix.hop(), r.hop()]).collect();

    // The raw measurement needs the node's secret; build twin routes with a
    // local key of the same kind for it.
    let (secret, public) = sphinx_keypair(&mut rand::rng());
    let twins: Vec<Vec<Hop>> = receivers
        .iter()
        .map(|r| {
            vec![
                Hop {
                    id: mix.identity,
                    sphinx_key: public,
                },
                r.hop(),
            ]
        })
        .collect();
    if progress {
        eprintln!(
            "{peers} peers on each side, mean delay {} ms, jumbo {}; building {packets} packets for the raw runs on {} cores…",
            opts.delay_ms,
            opts.jumbo,
            measured_cores()
        );
    }
    let built_at = Instant::now();
    let raw_packets = off_runtime(|| build_all(packets, &twins, mean).packets);
    if progress {
        eprintln!(
            "built {packets} packets in {:.1} s; each round's are built before it",
            built_at.elapsed().as_secs_f64()
        );
    }

    let node = &net.mixnodes[0];
    // One sender per peer, each proving a registered node's identity (the
    // receivers' own): the node takes packets in on `peers` links.
    let mut inj = Vec::new();
    for r in net.receivers() {
        inj.push(Injector::connect(&r.creds, mix.identity, mix.socket_addr()?).await?);
    }
    let m = node.metrics();
    let arrived = || net.frames_received();
    let peeled = || m.processing.get_sample_count();
    // Warm up first, untimed: a running node has its links open, their
    // path MTU found and their congestion window grown; a fresh one spends
    // its first fraction of a second on that.
    let warm = build_all((packets / 10).clamp(100, 1000), &routes, mean).packets;
    let warm_frames = sphinx_frames(&warm, topo.epoch)?;
    let warm_target = arrived() + warm.len() as u64;
    push(&mut inj, &warm_frames, &arrived, &peeled, warm_target).await?;

    // Raw, node, raw, node, …, raw: the machine's speed drifts (shared,
    // noisy), so each node round is set beside the mean of the raw rates
    // measured just before and just after it, and the run reports the
    // median round.
    pin_threads();
    let mut raws = vec![off_runtime(|| raw_unwrap(&raw_packets, &secret))];
    if progress {
        eprintln!("raw unwrap: {:.0} packets/s", raws[0].window.pps());
    }
    // The node never forwards faster than the raw unwrap: sized from its
    // rate, a round's steady window lasts ten mean delays (`ROUND_FIT`).
    let packets = if opts.fit_rounds {
        let fit = ROUND_FIT * mean.as_secs_f64() * raws[0].window.pps();
        packets.max(fit.ceil() as usize)
    } else {
        packets
    };
    if progress {
        eprintln!("{packets} packets in each node round");
    }
    let dropped_before = m.total_dropped();
    let mut rounds: Vec<(Round, NodeRound)> = Vec::with_capacity(ROUNDS);
    let mut frames = Vec::new();
    for i in 0..ROUNDS {
        // Built between the raw runs, not held for the whole run: a round
        // is tens of thousands of 2.4 kB packets.
        drop(std::mem::take(&mut frames));
        let chunk = off_runtime(|| build_all(packets, &routes, mean).packets);
        frames = sphinx_frames(&chunk, topo.epoch)?;
        drop(chunk);
        pin_threads();
        let r = node_round(&mut inj, &arrived, &peeled, &frames, packets as u64).await?;
        raws.push(off_runtime(|| raw_unwrap(&raw_packets, &secret)));
        let raw = (raws[i].window.pps() + raws[i + 1].window.pps()) / 2.0;
        let raw_cpu_us = (raws[i].cpu_us + raws[i + 1].cpu_us) / 2.0;
        if progress {
            eprintln!(
                "round {}: mix node {:.0} packets/s, raw unwrap after it {:.0} packets/s, ratio {:.3}, outside load {:.2} cores",
                i + 1,
                r.window.pps(),
                raws[i + 1].window.pps(),
                r.window.pps() / raw,
                r.window.outside_cores.max(raws[i + 1].window.outside_cores)
            );
        }
        rounds.push((
            Round {
                raw_unwrap_pps: raw,
                mixnode_pps: r.window.pps(),
                mixnode_pps_whole_run: r.whole_pps,
                ratio: r.window.pps() / raw,
                raw_cpu_us_per_packet: raw_cpu_us,
                arrived: r.arrived,
            },
            r,
        ));
    }
    let dropped = m.total_dropped() - dropped_before;
    let raw_windows: Vec<Window> = raws.iter().map(|r| r.window).collect();
    let node_windows: Vec<Window> = rounds.iter().map(|(_, r)| r.window).collect();
    let mut invalid_reasons = judge(&raw_windows, &node_windows, dropped, mean);
    for (i, (round, _)) in rounds.iter().enumerate() {
        if round.arrived < packets as u64 {
            invalid_reasons.push(format!(
                "round {}: {} of {packets} packets arrived",
                i + 1,
                round.arrived
            ));
        }
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
    let held_max = rounds.iter().map(|(_, r)| r.held_max).max().unwrap_or(0);
    let peel_us =
        m.processing.get_sample_sum() / m.processing.get_sample_count().max(1) as f64 * 1e6;

    // Paced loads below the measured maximum, with fresh packets (the
    // rounds' are in the replay cache now): what the node adds per packet
    // beyond the delay each asked for.
    let mut latency = Vec::new();
    for load in LOADS {
        let rate = pps * load;
        // About LATENCY_SECS of sending, at least enough for a 99th
        // percentile.
        let n = ((rate * LATENCY_SECS) as usize).clamp(500, packets);
        if progress {
            eprintln!(
                "latency at {:.0} % load: {n} packets at {rate:.0} packets/s…",
                load * 100.0
            );
        }
        let built = off_runtime(|| build_all(n, &routes, mean));
        let mut l = paced_latency(&mut inj, &net, &built, topo.epoch, rate).await?;
        l.load = load;
        latency.push(l);
    }
    let soak = if opts.soak_secs > 0 {
        if progress {
            eprintln!(
                "soak: {} s at 80 % of {pps:.0} packets/s, packets cycled (replays let through)…",
                opts.soak_secs
            );
        }
        let dropped_before = m.total_dropped();
        let mut s = soak_run(&mut inj, &net, &frames, 0.8 * pps, opts.soak_secs, progress).await?;
        s.dropped = m.total_dropped() - dropped_before;
        Some(s)
    } else {
        None
    };
    for i in inj {
        i.close().await;
    }

    // The same frames straight to a receiver: what QUIC alone carries here.
    let mut direct = vec![
        Injector::connect(
            &net.receiver.creds,
            receivers[0].identity,
            receivers[0].socket_addr()?,
        )
        .await?,
    ];
    let base = arrived();
    let n = (frames.len() / protocol::frame::FRAME_LEN) as u64;
    let c0 = thread_cpu_seconds();
    let (link_got, link_elapsed, _) =
        push(&mut direct, &frames, &arrived, &arrived, base + n).await?;
    let c1 = thread_cpu_seconds();
    let link_pps = (link_got - base) as f64 / link_elapsed.as_secs_f64();
    let link_us_per_frame = c0.zip(c1).map_or(f64::NAN, |(a, b)| {
        b.minus(&a).bench / (link_got - base).max(1) as f64 * 1e6
    });
    for d in direct {
        d.close().await;
    }
    net.stop().await;
    let valid = invalid_reasons.is_empty();
    Ok(MixnodeBench {
        raw_unwrap_pps: raw,
        mixnode_pps: pps,
        mixnode_pps_whole_run: whole_pps,
        ratio: pps / raw,
        valid,
        invalid_reasons,
        delay_ms: opts.delay_ms,
        jumbo: opts.jumbo,
        peers,
        outside_load_cores: raw_windows
            .iter()
            .chain(&node_windows)
            .map(|w| w.outside_cores)
            .fold(0.0, f64::max),
        raw_idle_share: raw_windows.iter().map(|w| w.idle_share).fold(0.0, f64::max),
        node_idle_share: m_node.window.idle_share,
        generator_busy_share: m_node.window.generator_busy,
        rounds: rounds.into_iter().map(|(r, _)| r).collect(),
        cores: measured_cores(),
        generator_cores: split().map_or(0, |s| s.generator.len()),
        shared_because: None,
        packets,
        dropped,
        held_max,
        datagrams_per_packet,
        path_mtu,
        link_pps,
        link_us_per_frame,
        peel_us,
        raw_us_per_packet: measured_cores() as f64 / raw * 1e6,
        cpu_us_per_packet: us_per_packet,
        cpu_share: share,
        runs_per_packet,
        raw_cpu_us_per_packet: raw_cpu_us,
        node_efficiency: raw_cpu_us / (us_per_packet.workers + us_per_packet.node_io),
        latency,
        soak,
    })
}

/// Node rounds in one run, each between two raw measurements.
const ROUNDS: usize = 3;
/// Loads (shares of the measured rate) latency is measured at.
const LOADS: [f64; 3] = [0.1, 0.5, 0.9];
/// Seconds of sending in each latency run.
const LATENCY_SECS: f64 = 3.0;

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
    /// Packets of the round that arrived.
    pub arrived: u64,
}

/// What one node round measured.
struct NodeRound {
    window: Window,
    whole_pps: f64,
    arrived: u64,
    share: ThreadCpu,
    us: ThreadCpu,
    runs: ThreadCpu,
    datagrams_per_packet: f64,
    path_mtu: u16,
    held_max: u64,
}

/// Sends `frames` (`n` packets) through the node as a sustained load and
/// measures its rate and where the cores went.
async fn node_round(
    inj: &mut [Injector],
    arrived: &impl Fn() -> u64,
    peeled: &impl Fn() -> u64,
    frames: &[u8],
    n: u64,
) -> Result<NodeRound, BoxError> {
    let target = arrived() + n;
    let dgrams0: u64 = inj.iter().map(|i| i.datagrams_sent()).sum();
    let (got, elapsed, steady) = push(inj, frames, arrived, peeled, target).await?;
    let got = got - (target - n);
    let datagrams_per_packet =
        (inj.iter().map(|i| i.datagrams_sent()).sum::<u64>() - dgrams0) as f64 / n.max(1) as f64;
    let whole_pps = got as f64 / elapsed.as_secs_f64();
    let Some(steady) = steady else {
        return Err(format!("only {got} of {n} packets arrived: no steady window").into());
    };
    // Where the cores went while the node forwarded (the steady middle):
    // its Sphinx workers, its QUIC and tokio threads, the benchmark's
    // senders and receivers, idle.
    let (share, us, runs) = match (steady.from.sched, steady.to.sched) {
        (Some((a, ra)), Some((b, rb))) => {
            let d = b.minus(&a);
            let arrived = steady.window.n.max(1) as f64;
            (
                d.scaled(1.0 / (steady.window.secs * all_cores() as f64)),
                d.scaled(1e6 / arrived),
                rb.minus(&ra).scaled(1.0 / arrived),
            )
        }
        _ => (ThreadCpu::NAN, ThreadCpu::NAN, ThreadCpu::NAN),
    };
    Ok(NodeRound {
        window: steady.window,
        whole_pps,
        arrived: got,
        share,
        us,
        runs,
        datagrams_per_packet,
        path_mtu: inj.first().map_or(0, |i| i.path_mtu()),
        held_max: steady.held_max,
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
    inj: &mut [Injector],
    net: &LocalNet,
    frames: &[u8],
    rate: f64,
    secs: u64,
    progress: bool,
) -> Result<Soak, BoxError> {
    let len = protocol::frame::FRAME_LEN;
    let n = frames.len() / len;
    let base = net.frames_received();
    let rss_start = rss_mib(None).unwrap_or(f64::NAN);
    let mut rss_max = rss_start;
    let start = Instant::now();
    let mut next_sample = 10.0;
    let (mut sent, mut at, mut turn) = (0usize, 0usize, 0usize);
    while start.elapsed().as_secs() < secs {
        let t = start.elapsed().as_secs_f64();
        let due = (t * rate) as usize;
        while sent < due {
            // Up to the end of the set, then wrap.
            let k = (due - sent).min(n - at);
            let senders = inj.len().max(1);
            inj[turn % senders]
                .send_raw(&frames[at * len..(at + k) * len])
                .await?;
            turn += 1;
            sent += k;
            at = (at + k) % n;
        }
        if t >= next_sample {
            let r = rss_mib(None).unwrap_or(f64::NAN);
            rss_max = rss_max.max(r);
            if progress {
                let fwd = net.frames_received() - base;
                eprintln!("soak {t:.0} s: RSS {r:.1} MiB, sent {sent}, forwarded {fwd}");
            }
            next_sample += 10.0;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let forwarded = net.frames_received() - base;
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

/// Sends `built` at `rate` per second, spread over the senders, and
/// matches arrivals to due times (send time + the packet's own delay) in
/// order: what the node adds is arrival − due. Workers may swap
/// neighbours, which shifts a pair by one gap.
async fn paced_latency(
    inj: &mut [Injector],
    net: &LocalNet,
    built: &Built,
    epoch: u64,
    rate: f64,
) -> Result<LoadLatency, BoxError> {
    let packets = &built.packets;
    let base = net.frames_received();
    for rx in net.receivers() {
        rx.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        rx.record_arrivals.store(true, Ordering::Relaxed);
    }
    let mut sent_at = Vec::with_capacity(packets.len());
    let start = Instant::now();
    let mut i = 0;
    let mut turn = 0;
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
            let k = inj.len().max(1);
            inj[turn % k].send_raw(&buf).await?;
            turn += 1;
            sent_at.resize(i, now);
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let target = base + packets.len() as u64;
    let longest = built.delays.iter().max().copied().unwrap_or_default();
    let deadline = Instant::now() + longest + Duration::from_secs(10);
    while net.frames_received() < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut arrivals = Vec::new();
    for rx in net.receivers() {
        rx.record_arrivals.store(false, Ordering::Relaxed);
        arrivals.extend(
            rx.arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied(),
        );
    }
    arrivals.sort();
    // Sends in the order they are due (send time + own delay); the k-th
    // arrival is matched to the k-th due send.
    let due = |k: usize| sent_at[k] + built.delays[k];
    let mut order: Vec<usize> = (0..sent_at.len()).collect();
    order.sort_by_key(|&k| due(k));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut added, mut total): (Vec<f64>, Vec<f64>) = arrivals
        .iter()
        .zip(&order)
        .map(|(a, &k)| {
            (
                ms(a.saturating_duration_since(due(k))),
                ms(a.saturating_duration_since(sent_at[k])),
            )
        })
        .unzip();
    let mut delays: Vec<f64> = built.delays.iter().map(|d| ms(*d)).collect();
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(LoadLatency {
        load: f64::NAN,
        rate_pps: rate,
        packets: packets.len(),
        arrived: arrivals.len(),
        p50_ms: q(&mut total, 0.5),
        p99_ms: q(&mut total, 0.99),
        delay_p50_ms: q(&mut delays, 0.5),
        delay_p99_ms: q(&mut delays, 0.99),
        added_p50_ms: q(&mut added, 0.5),
        added_p99_ms: q(&mut added, 0.99),
    })
}

/// The middle of a run: from the 10th to the 90th percentile arrival.
#[derive(Clone, Copy)]
struct Steady {
    window: Window,
    from: Snap,
    to: Snap,
    /// Most packets peeled but not yet arrived at once: held for their
    /// delay or queued on a link.
    held_max: u64,
}

/// Frames the benchmark's senders keep ahead of the node's peeling: enough
/// that the node always has work queued (tenths of a second of it), few
/// enough that it takes packets in throughout the run. Packets held for
/// their delay do not count: they wait, they cost no work.
const BACKLOG: u64 = 1000;
/// Frames per write of a sender.
const CHUNK: u64 = 100;
/// How often the senders and the arrival watcher look at the counts: each
/// look wakes a thread, a context switch, so not more often than the
/// figures need (5 ms is under 0.5 % of a run).
const POLL: Duration = Duration::from_millis(5);
/// No arrival for this long: report what arrived and stop waiting.
const STALL: Duration = Duration::from_secs(5);

/// Writes `frames` (each one frame of the same length), in turn on each
/// sender, keeping at most `BACKLOG` ahead of `peeled`, and waits until
/// `arrived` reaches `target` (or stalls 5 s): arrivals and time, and the
/// steady middle of the run.
async fn push(
    inj: &mut [Injector],
    frames: &[u8],
    arrived: &impl Fn() -> u64,
    peeled: &impl Fn() -> u64,
    target: u64,
) -> Result<(u64, Duration, Option<Steady>), BoxError> {
    let start = Instant::now();
    let base = arrived();
    let peeled_base = peeled();
    let n = target.saturating_sub(base);
    let (lo, hi) = (base + n / 10, base + n - n / 10);
    let watch = async {
        let mut last = (0u64, Instant::now());
        let mut at_lo: Option<(u64, Snap)> = None;
        let mut steady = None;
        let mut held_max = 0;
        let (got, t, steady) = loop {
            let got = arrived();
            held_max = held_max.max(
                peeled()
                    .saturating_sub(peeled_base)
                    .saturating_sub(got - base),
            );
            if at_lo.is_none() && got >= lo {
                at_lo = Some((got, snap()));
            }
            if steady.is_none()
                && got >= hi
                && let Some((g0, from)) = at_lo
            {
                let to = snap();
                steady = Some(Steady {
                    window: Window::between(&from, &to, got - g0),
                    from,
                    to,
                    held_max: 0,
                });
            }
            if got >= target {
                break (got, start.elapsed(), steady);
            }
            if got != last.0 {
                last = (got, Instant::now());
            } else if last.1.elapsed() > STALL {
                break (got, last.1 - start, steady);
            }
            tokio::time::sleep(POLL).await;
        };
        (got, t, steady.map(|s| Steady { held_max, ..s }))
    };
    // Sustained load, not one burst: the senders keep at most `BACKLOG`
    // frames ahead of the node's peeling, so the node takes packets in
    // while it forwards them through the whole run (a burst would be all
    // taken in by the 10th percentile, leaving the node's intake out of the
    // steady middle), and is never idle.
    let send = async {
        let per = protocol::frame::FRAME_LEN;
        let total = (frames.len() / per) as u64;
        let mut sent = 0u64;
        let mut turn = 0usize;
        let mut progress = (0u64, Instant::now());
        while sent < total {
            let done = peeled().saturating_sub(peeled_base);
            if done != progress.0 {
                progress = (done, Instant::now());
            }
            if sent.saturating_sub(done) >= BACKLOG {
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
            let senders = inj.len().max(1);
            inj[turn % senders]
                .send_raw(&frames[at..at + k as usize * per])
                .await?;
            turn += 1;
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

/// A thread's group by its name: 0 the node's Sphinx workers (`sphinx-`),
/// 1 its runtime (`node-io`), [`BENCH_THREADS`] the benchmark's own.
fn thread_group(comm: &str) -> usize {
    if comm.starts_with("sphinx-") {
        0
    } else if comm.starts_with("node-io") {
        1
    } else {
        BENCH_THREADS
    }
}

/// [`thread_group`] of the benchmark's own threads.
const BENCH_THREADS: usize = 2;

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
        let i = thread_group(&comm);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn w(secs: f64, outside_cores: f64, idle_share: f64) -> Window {
        Window {
            n: 1000,
            secs,
            outside_cores,
            idle_share,
            generator_busy: f64::NAN,
        }
    }

    #[test]
    fn the_generator_gets_the_last_core_in_eight_or_the_reason_it_cannot() {
        let s = own_split(&[0, 1], 2).expect("two whole CPUs");
        assert_eq!((s.node, s.generator), (vec![0], vec![1]));
        let cpus: Vec<usize> = (0..16).collect();
        let s = own_split(&cpus, 16).expect("sixteen");
        assert_eq!(s.node, (0..14).collect::<Vec<_>>());
        assert_eq!(s.generator, vec![14, 15]);
        let s = own_split(&[2, 5, 7], 3).expect("a taskset list");
        assert_eq!((s.node, s.generator), (vec![2, 5], vec![7]));
        let one = own_split(&[3], 1).err().unwrap_or_default();
        assert!(one.contains("1 CPU"), "{one}");
        let quota = own_split(&[0, 1, 2, 3], 2).err().unwrap_or_default();
        assert!(quota.contains("a CPU quota"), "{quota}");
    }

    #[test]
    fn cpu_lists_parse_as_linux_writes_them() {
        assert_eq!(parse_cpu_list("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("0-x"), None);
        // This process's own list names at least the CPU it runs on.
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn a_quiet_run_with_long_windows_is_valid() {
        let raws = [w(3.0, 0.02, 0.01), w(3.0, 0.05, 0.0)];
        let nodes = [w(5.0, 0.03, 0.2)];
        assert!(judge(&raws, &nodes, 0, Duration::from_millis(400)).is_empty());
    }

    #[test]
    fn outside_load_idle_cores_drops_and_short_windows_each_invalidate() {
        let d = Duration::from_millis(400);
        let quiet = [w(3.0, 0.0, 0.0)];
        let node = [w(5.0, 0.0, 0.3)];
        // Two busy loops elsewhere on the machine during a node round.
        let why = judge(&quiet, &[w(5.0, 1.6, 0.0)], 0, d);
        assert!(why.len() == 1 && why[0].contains("1.60 cores"), "{why:?}");
        // A raw run that left a core idle.
        let why = judge(&[w(3.0, 0.0, 0.4)], &node, 0, d);
        assert!(why.len() == 1 && why[0].contains("40 %"), "{why:?}");
        let why = judge(&quiet, &node, 7, d);
        assert!(why.len() == 1 && why[0].contains("dropped 7"), "{why:?}");
        let why = judge(&quiet, &[w(3.9, 0.0, 0.0)], 0, d);
        assert!(
            why.len() == 1 && why[0].contains("steady window"),
            "{why:?}"
        );
        // Unreadable counters are not taken for a quiet machine.
        let why = judge(&quiet, &[w(5.0, f64::NAN, 0.0)], 0, d);
        assert!(why.len() == 1 && why[0].contains("/proc/stat"), "{why:?}");
        // Zero delay: no window length is asked for.
        assert!(judge(&quiet, &[w(0.5, 0.0, 0.0)], 0, Duration::ZERO).is_empty());
    }
}
