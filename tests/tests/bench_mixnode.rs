//! `umbra bench mixnode` on a small run at production settings (delays at
//! the default mean, 1500-byte MTU, three peers each side): every packet
//! arrives through every peer, every figure is a real measurement, and the
//! run's own check says the rounds were too short to quote a ratio from.

use umbra::bench;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_production_run_reports_consistent_figures_and_judges_itself() {
    let opts = bench::MixnodeOptions {
        packets: 600,
        fit_rounds: false,
        ..bench::MixnodeOptions::default()
    };
    let mean = protocol::topology::NetworkParams::default().mix_delay_mean_ms;
    assert_eq!(opts.delay_ms, mean, "the network's default mean delay");
    assert!(!opts.jumbo);
    assert_eq!(opts.peers, bench::DEFAULT_PEERS);
    assert_eq!(opts.placement, bench::Placement::Auto);
    let allowed = allowed_cpus("/proc/self/status");
    let watch = Watch::start();
    let r = tokio::time::timeout(std::time::Duration::from_secs(300), bench::mixnode(opts))
        .await
        .expect("the benchmark finishes")
        .expect("the benchmark runs");
    let seen = watch.stop();
    check_placement(&r, &allowed, &seen);

    assert_eq!(
        (r.packets, r.delay_ms, r.jumbo, r.peers),
        (600, mean, false, 3)
    );
    assert_eq!(r.dropped, 0, "the node dropped packets: {r:?}");
    assert!(r.rounds.iter().all(|x| x.arrived == 600), "{:?}", r.rounds);
    for (name, v) in [
        ("raw_unwrap_pps", r.raw_unwrap_pps),
        ("mixnode_pps", r.mixnode_pps),
        ("mixnode_pps_whole_run", r.mixnode_pps_whole_run),
        ("link_pps", r.link_pps),
        ("raw_cpu_us_per_packet", r.raw_cpu_us_per_packet),
        ("node_efficiency", r.node_efficiency),
    ] {
        assert!(v.is_finite() && v > 0.0, "{name} = {v}");
    }
    assert!((r.ratio - r.mixnode_pps / r.raw_unwrap_pps).abs() < 1e-9);
    // Interleaved rounds; the one reported is their median by ratio.
    assert_eq!(r.rounds.len(), 3, "{:?}", r.rounds);
    let below = r.rounds.iter().filter(|x| x.ratio < r.ratio).count();
    let above = r.rounds.iter().filter(|x| x.ratio > r.ratio).count();
    assert!(below <= 1 && above <= 1, "{:?}", r.rounds);
    // Packets waited for their delays: the node held many at once (at a
    // few thousand packets/s and 800 ms, hundreds), and the whole round,
    // which includes the drain of the longest delays, was slower than its
    // steady middle.
    assert!(r.held_max >= 50, "held at most {}", r.held_max);
    assert!(r.mixnode_pps_whole_run < r.mixnode_pps, "{r:?}");
    // A 2.4 kB frame at a 1500-byte MTU takes two datagrams, less what
    // stream packing saves; jumbo ones would carry three frames each.
    assert!(
        r.datagrams_per_packet > 1.2 && r.datagrams_per_packet < 3.0,
        "{} datagrams per packet",
        r.datagrams_per_packet
    );
    assert!(r.path_mtu <= 1500, "path MTU {}", r.path_mtu);
    // 600 packets at thousands per second is well under the ten mean
    // delays (8 s) a window needs: the run says it is not valid, and why.
    assert!(!r.valid);
    assert_eq!(r.valid, r.invalid_reasons.is_empty());
    assert!(
        r.invalid_reasons
            .iter()
            .any(|w| w.contains("steady window")),
        "{:?}",
        r.invalid_reasons
    );
    // Latency at 10, 50 and 90 % load: the sampled delays (median ln 2 ×
    // the mean: 555 ms at 800 ms) dominate what the packets took; all arrived.
    assert_eq!(r.latency.len(), 3);
    for l in &r.latency {
        assert_eq!(l.arrived, l.packets, "{l:?}");
        let m = mean as f64;
        assert!(
            l.delay_p50_ms > 0.375 * m && l.delay_p50_ms < 1.125 * m,
            "{l:?}"
        );
        assert!(
            l.added_p50_ms >= 0.0 && l.added_p99_ms >= l.added_p50_ms,
            "{l:?}"
        );
        assert!(l.p50_ms >= l.delay_p50_ms * 0.8, "{l:?}");
    }
    let s = r.cpu_share;
    assert!(
        s.workers > 0.0 && s.node_io > 0.0 && s.bench >= 0.0,
        "{s:?}"
    );
    assert!(s.workers + s.node_io + s.bench <= 1.05, "{s:?}");
    assert!(r.soak.is_none());
}

/// The CPUs a task's status file allows (`Cpus_allowed_list`, e.g. `0-3,6`).
fn allowed_cpus(status: impl AsRef<std::path::Path>) -> Vec<usize> {
    let s = std::fs::read_to_string(status).unwrap_or_default();
    let Some(list) = s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")) else {
        return Vec::new();
    };
    node::sched::parse_cpu_list(list.trim()).unwrap_or_default()
}

/// Samples of (thread group, allowed CPUs) over this process's threads,
/// taken every 5 ms while the benchmark ran, counted. The generator's
/// group is every thread but the node's, the raw unwrap's, the packet
/// builders' (which use every CPU on purpose) and the watcher's own.
type Seen = std::collections::BTreeMap<(String, Vec<usize>), usize>;

struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Seen>,
}

impl Watch {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("watch".into());
        let thread = thread.spawn(move || {
            let mut seen = Seen::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for t in std::fs::read_dir("/proc/self/task")
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                    let cpus = allowed_cpus(t.path().join("status"));
                    if cpus.is_empty() {
                        continue; // the thread ended
                    }
                    let group = if comm.starts_with("sphinx-") {
                        "sphinx"
                    } else if comm.starts_with("node-io") {
                        "node-io"
                    } else if comm.starts_with("raw-unwrap") {
                        "raw-unwrap"
                    } else if comm.starts_with("watch") || comm.starts_with("bench-build") {
                        continue;
                    } else {
                        "generator"
                    };
                    *seen.entry((group.to_string(), cpus)).or_default() += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            seen
        });
        Self {
            stop,
            thread: thread.expect("the watcher starts"),
        }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the watcher")
    }
}

/// With two whole CPUs or more the load generator had cores of its own
/// (the last one in eight) and the node's and the raw unwrap's threads
/// the rest, and most samples of each group found it so (a thread starts
/// on its creator's CPUs and moves at once; all move back at the end);
/// afterwards every thread may use every CPU again. Else it shared them,
/// and the result says why.
fn check_placement(r: &bench::MixnodeBench, allowed: &[usize], seen: &Seen) {
    let whole = std::thread::available_parallelism().map_or(1, |n| n.get()) >= allowed.len();
    // Samples of group `g` on exactly `cpus`, and on anything else.
    let count = |g: &str, cpus: &[usize]| {
        seen.iter()
            .filter(|((n, _), _)| n == g)
            .fold((0, 0), |(on, off), ((_, c), k)| {
                if c == cpus {
                    (on + k, off)
                } else {
                    (on, off + k)
                }
            })
    };
    if allowed.len() >= 2 && whole {
        let own = allowed.len().div_ceil(8);
        assert_eq!((r.cores, r.generator_cores), (allowed.len() - own, own));
        assert!(r.shared_because.is_none(), "{:?}", r.shared_because);
        assert!(
            (0.0..=1.0).contains(&r.generator_busy_share),
            "{}",
            r.generator_busy_share
        );
        let (node, generator) = allowed.split_at(allowed.len() - own);
        for (g, cpus) in [
            ("sphinx", node),
            ("node-io", node),
            ("raw-unwrap", node),
            ("generator", generator),
        ] {
            let (on, off) = count(g, cpus);
            assert!(
                on > off,
                "{g} threads on {cpus:?} in {on} samples, elsewhere in {off}: {seen:?}"
            );
        }
    } else {
        assert_eq!((r.cores, r.generator_cores), (allowed.len(), 0));
        assert!(r.shared_because.is_some());
        assert!(r.generator_busy_share.is_nan());
        assert!(seen.keys().all(|(_, c)| c == allowed), "{seen:?}");
    }
    // Unpinned: every thread left may use every CPU again.
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let cpus = allowed_cpus(t.path().join("status"));
        assert!(
            cpus.is_empty() || cpus == allowed,
            "{:?} still on {cpus:?}",
            t.path()
        );
    }
}
