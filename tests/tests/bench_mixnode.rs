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
    let r = tokio::time::timeout(std::time::Duration::from_secs(300), bench::mixnode(opts))
        .await
        .expect("the benchmark finishes")
        .expect("the benchmark runs");

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
