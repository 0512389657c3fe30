//! 10 % of the datagrams on every link of a whole network are dropped (by
//! the fault-injecting socket under QUIC): 200 messages each way all arrive,
//! exactly once and intact. (Its own test binary: the fault setting is
//! process-wide.)

use std::time::Duration;
use umbra::demo::{DemoOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_delivers_every_message() {
    net::faults::dangerous_set_link_faults(Some(net::faults::LinkFaults {
        loss: 0.10,
        duplicate: 0.0,
        reorder: 0.0,
        delay: 0.0,
        delay_ms: 0,
        seed: 10,
    }));
    let r = run(
        DemoOptions {
            messages: 400,
            send_interval_ms: 20,
            timeout: Duration::from_secs(90),
            ..DemoOptions::default()
        },
        |l| eprintln!("{l}"),
    )
    .await
    .unwrap();
    eprintln!("10% loss: {r:?}");
    assert_eq!(r.sent, 400);
    assert_eq!((r.lost, r.duplicates, r.corrupted), (0, 0, 0), "{r:?}");
    assert_eq!(r.delivered, 400, "{r:?}");
}
