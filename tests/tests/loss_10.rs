//! 10 % of the datagrams on every link of a whole network are dropped, each
//! independently (by the fault-injecting socket under QUIC): 200 messages
//! each way all arrive, exactly once and intact, and the injector really
//! dropped 10 % of what it saw. (Its own test binary: the fault setting is
//! process-wide.)

mod support;

use std::time::Duration;
use umbra::demo::{DemoOptions, run};

/// What the whole run may take at most: the demo ends by itself within the
/// bounds it derives from the client's settings (about 3½ min here if a
/// message never arrived); this only catches a hang.
const GUARD: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_delivers_every_message() {
    let loss = 0.10;
    net::faults::dangerous_set_link_faults(Some(net::faults::LinkFaults {
        loss,
        seed: 10,
        ..Default::default()
    }));
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
    eprintln!("10% loss: {r:?}");
    let i = r.injector.clone().expect("the injector was on");
    eprintln!("{}", i.summary());
    assert_eq!(r.sent, 400);
    assert_eq!(r.ended, "settled", "every message got its verdict: {r:?}");
    assert_eq!((r.lost, r.duplicates, r.corrupted), (0, 0, 0), "{r:?}");
    assert_eq!((r.delivered, r.failed), (400, 0), "{r:?}");
    // The fault fired, at the rate asked (5 binomial sd), and no other.
    i.check_random_loss(loss).unwrap();
}
