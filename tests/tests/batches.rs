//! Large messages in batches over real QUIC (protocol.md §11.1, §13.3): on a
//! local network with 10 % of the datagrams on every link lost, messages of
//! 100 kB each way are cut into batched fragments (fewer than fragments
//! that each carry a SURB-ack would need), the gateways answer the batch
//! asks from their storage threads, and every message arrives exactly once
//! and intact and is stored by its sender's verdict. (Its own test binary:
//! the fault setting is process-wide.)

use std::time::Duration;
use umbra::demo::{DemoOptions, run};

/// Only catches a hang: the demo ends by itself within its bounds.
const GUARD: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_go_in_batches_and_arrive_once() {
    net::faults::dangerous_set_link_faults(Some(net::faults::LinkFaults {
        loss: 0.10,
        seed: 11,
        ..Default::default()
    }));
    const SIZE: usize = 100_000;
    const MESSAGES: usize = 4;
    let r = tokio::time::timeout(
        GUARD,
        run(
            DemoOptions {
                messages: MESSAGES,
                message_size: Some(SIZE),
                send_interval_ms: 20,
                timeout: Duration::from_secs(120),
                ..DemoOptions::default()
            },
            |l| eprintln!("{l}"),
        ),
    )
    .await
    .expect("the demo ends by itself")
    .unwrap();
    eprintln!("batches: {r:?}");
    let i = r.injector.clone().expect("the injector was on");
    assert!(i.dropped_random > 100, "the loss fired: {i:?}");
    assert_eq!(r.ended, "settled", "every message got its verdict: {r:?}");
    assert_eq!(
        (r.delivered, r.failed, r.lost, r.duplicates, r.corrupted),
        (MESSAGES, 0, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.failed_but_delivered, 0, "every sender saw Stored: {r:?}");
    // Batched: fragments of BATCH_CHUNK_LEN, fewer than SURB-acked ones.
    let per = r.fragments as usize / MESSAGES;
    assert!(
        (SIZE / client_sdk::BATCH_CHUNK_LEN..SIZE / client_sdk::CHUNK_LEN).contains(&per),
        "{per} fragments per {SIZE}-byte message"
    );
}
