//! 30 % of the datagrams on every link of a whole network are dropped: of
//! 200 messages each way, each arrives exactly once and intact or is
//! reported failed to its sender; none is lost silently. (Its own test
//! binary: the fault setting is process-wide.)

use std::time::Duration;
use umbra::demo::{DemoOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_loss_loses_nothing_silently() {
    net::faults::dangerous_set_link_faults(Some(net::faults::LinkFaults {
        loss: 0.30,
        duplicate: 0.0,
        reorder: 0.0,
        delay: 0.0,
        delay_ms: 0,
        seed: 30,
    }));
    let r = run(
        DemoOptions {
            messages: 400,
            send_interval_ms: 20,
            timeout: Duration::from_secs(120),
            ..DemoOptions::default()
        },
        |l| eprintln!("{l}"),
    )
    .await
    .unwrap();
    eprintln!("30% loss: {r:?}");
    assert_eq!(r.sent, 400);
    assert_eq!((r.lost, r.duplicates, r.corrupted), (0, 0, 0), "{r:?}");
    assert_eq!(r.delivered + r.failed, 400, "{r:?}");
    assert!(r.delivered > 0, "{r:?}");
}
