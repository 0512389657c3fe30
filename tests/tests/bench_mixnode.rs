//! `umbra bench mixnode` on a small run: every packet arrives, every
//! figure is a real measurement (positive, finite, shares of the cores that
//! add up).

use umbra::bench;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_run_reports_consistent_figures() {
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        bench::mixnode(400, 0, false),
    )
    .await
    .expect("the benchmark finishes")
    .expect("the benchmark runs");

    assert_eq!(r.packets, 400);
    assert_eq!(r.dropped, 0, "the node dropped packets: {r:?}");
    for (name, v) in [
        ("raw_unwrap_pps", r.raw_unwrap_pps),
        ("mixnode_pps", r.mixnode_pps),
        ("mixnode_pps_whole_run", r.mixnode_pps_whole_run),
        ("link_pps", r.link_pps),
        ("raw_cpu_us_per_packet", r.raw_cpu_us_per_packet),
        ("node_efficiency", r.node_efficiency),
        ("half_load_pps", r.half_load_pps),
    ] {
        assert!(v.is_finite() && v > 0.0, "{name} = {v}");
    }
    assert!((r.ratio - r.mixnode_pps / r.raw_unwrap_pps).abs() < 1e-9);
    // Interleaved rounds; the one reported is their median by ratio.
    assert_eq!(r.rounds.len(), 3, "{:?}", r.rounds);
    let below = r.rounds.iter().filter(|x| x.ratio < r.ratio).count();
    let above = r.rounds.iter().filter(|x| x.ratio > r.ratio).count();
    assert!(below <= 1 && above <= 1, "{:?}", r.rounds);
    assert!(r.rounds.iter().any(|x| x.ratio == r.ratio));
    // Jumbo datagrams carry about three frames each; a fall back to 1200
    // bytes would take two datagrams per frame.
    assert!(
        r.datagrams_per_packet > 0.0 && r.datagrams_per_packet < 1.0,
        "{} datagrams per packet",
        r.datagrams_per_packet
    );
    assert!(r.half_load_p50_ms.is_finite() && r.half_load_p50_ms >= 0.0);
    assert!(r.half_load_p99_ms >= r.half_load_p50_ms);
    // The node forwarded, so its workers and its runtime had CPU time, and
    // the shares of the cores are shares: none negative, together at most
    // all of them (schedstat is read per thread at slightly different
    // moments, hence the small margin).
    let s = r.cpu_share;
    assert!(
        s.workers > 0.0 && s.node_io > 0.0 && s.bench >= 0.0,
        "{s:?}"
    );
    assert!(s.workers + s.node_io + s.bench <= 1.05, "{s:?}");
    assert!(r.cpu_us_per_packet.workers > 0.0);
    assert!(r.soak.is_none());
}
