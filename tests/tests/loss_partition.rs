//! One link of a whole network, between the first mix node of layer 1 and
//! the first of layer 2, is cut for 30 s (every datagram on it, both ways,
//! is dropped) while 300 messages are sent, one every 100 ms. A quarter of
//! the routes cross it. Each message arrives exactly once and intact or is
//! reported failed to its sender; none is lost silently. The cut really
//! happened: datagrams on that link were dropped from the start of the
//! window until late in it, none on any other link, messages that crossed
//! it were held up; the link carries traffic again after the window. (Its own test binary: the fault setting is
//! process-wide.)

mod support;

use std::time::Duration;
use umbra::demo::{DemoOptions, run};

/// What the whole run may take at most: the demo ends by itself within the
/// bounds it derives from the client's settings (about 4 min here if a
/// message never arrived); this only catches a hang.
const GUARD: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_for_30_s_loses_nothing_silently() {
    let window = Duration::from_secs(30);
    // No fault but the partition (which needs the fault-injecting sockets).
    net::faults::dangerous_set_link_faults(Some(net::faults::LinkFaults::default()));
    let r = tokio::time::timeout(
        GUARD,
        run(
            DemoOptions {
                messages: 300,
                send_interval_ms: 100,
                timeout: Duration::from_secs(90),
                partition: Some(window),
                ..DemoOptions::default()
            },
            support::progress(),
        ),
    )
    .await
    .expect("the demo ends by itself")
    .unwrap();
    eprintln!("partition: {r:?}");
    let i = r.injector.clone().expect("the injector was on");
    eprintln!("{}", i.summary());
    assert_eq!(r.sent, 300);
    assert_eq!(r.ended, "settled", "every message got its verdict: {r:?}");
    assert_eq!((r.lost, r.duplicates, r.corrupted), (0, 0, 0), "{r:?}");
    assert_eq!(r.delivered + r.failed, 300, "{r:?}");
    assert!(r.delivered > 0, "{r:?}");
    // Only the partition dropped anything ...
    assert!(i.dropped_partition > 0, "{i:?}");
    assert_eq!(i.dropped, i.dropped_partition, "no other fault: {i:?}");
    // ... and it held for its window: the link was in use when it started
    // (the first drop comes at once); QUIC, getting no answer, probed it
    // at doubling intervals and was refused until late in the window (the
    // last probe inside a window of W comes after W/2 − one probe timeout,
    // so past W/3); nothing on it got through until the window ended, and
    // then traffic flowed again.
    let p = i.partition.clone().expect("a partition");
    assert_eq!(p.secs, window.as_secs_f64());
    assert_eq!(p.dropped, i.dropped_partition, "{p:?}");
    let first = p.first_drop_s.expect("a drop");
    let last = p.last_drop_s.expect("a drop");
    assert!(first < 2.0, "first drop at {first} s: {p:?}");
    assert!(
        last > p.secs / 3.0 && last < p.secs,
        "last drop at {last} s: {p:?}"
    );
    assert!(
        p.after > 0,
        "the link carried nothing after the window: {p:?}"
    );
    assert!(p.first_after_s.is_some_and(|t| t >= p.secs), "{p:?}");
    // The cut hit messages, not only the link's own probes: a message
    // whose first route crossed it (a quarter of them) waited at least its
    // ack timeout (over `ack_slack`, 3 s) before going again.
    assert!(r.p99_ms > 3000.0, "{r:?}");
}
