//! Burst loss on every link of a whole network: a Gilbert–Elliott channel
//! per link (`net::faults::BurstLoss::default()`: 10 % lost on average, as
//! in `loss_10`, but in bad spells of 4 datagrams that lose them all). Of
//! 200 messages each way, each arrives exactly once and intact or is
//! reported failed to its sender; none is lost silently. The injector
//! really dropped, at the mean rate asked and in runs. (Its own test
//! binary: the fault setting is process-wide.)

mod support;

use net::faults::BurstLoss;
use std::time::Duration;
use umbra::demo::{DemoOptions, run};

/// What the whole run may take at most: the demo ends by itself within the
/// bounds it derives from the client's settings (about 3½ min here if a
/// message never arrived); this only catches a hang.
const GUARD: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_loss_loses_nothing_silently() {
    let burst = BurstLoss::default();
    net::faults::dangerous_set_link_faults(Some(net::faults::LinkFaults {
        seed: 7,
        ..Default::default()
    }));
    net::faults::dangerous_set_burst_loss(Some(burst));
    let r = tokio::time::timeout(
        GUARD,
        run(
            DemoOptions {
                messages: 400,
                send_interval_ms: 20,
                timeout: Duration::from_secs(90),
                ..DemoOptions::default()
            },
            support::progress(),
        ),
    )
    .await
    .expect("the demo ends by itself")
    .unwrap();
    eprintln!("burst loss: {r:?}");
    let i = r.injector.clone().expect("the injector was on");
    eprintln!("{}", i.summary());
    assert_eq!(r.sent, 400);
    assert_eq!(r.ended, "settled", "every message got its verdict: {r:?}");
    assert_eq!((r.lost, r.duplicates, r.corrupted), (0, 0, 0), "{r:?}");
    assert_eq!(r.delivered + r.failed, 400, "{r:?}");
    assert!(r.delivered > 0, "{r:?}");
    // The fault fired: at its mean rate, within 5 standard deviations of
    // the drops of a Gilbert–Elliott channel (wider than binomial: drops
    // come in bursts) ...
    assert!(i.burst_faced > 10_000, "too few datagrams to judge: {i:?}");
    assert_eq!(i.dropped, i.dropped_burst, "no other fault: {i:?}");
    let n = i.burst_faced as f64;
    let rate = i.dropped_burst as f64 / n;
    let sd = (burst.drop_variance() / n).sqrt();
    assert!(
        (rate - burst.mean_loss()).abs() <= 5.0 * sd,
        "dropped {rate:.4} of {n} datagrams, expected {:.4} ± {:.4}",
        burst.mean_loss(),
        5.0 * sd
    );
    // ... and in runs: independent loss at 10 % loses 1.1 datagrams in a
    // row on average, these bursts about 3.
    let run_len = i.dropped_burst as f64 / i.burst_runs as f64;
    assert!(run_len > 2.0, "drops came in runs of {run_len:.2}: {i:?}");
}
