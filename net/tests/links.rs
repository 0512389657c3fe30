use ed25519_dalek::SigningKey;
use net::link::{self, LinkConfig, LinkMetrics, Links};
use protocol::frame::{self, FrameKind};
use protocol::packet::PACKET_SIZE;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn server(key: &SigningKey) -> (quinn::Endpoint, Arc<AtomicU64>, LinkMetrics) {
    server_with(key, false)
}

fn server_with(key: &SigningKey, jumbo: bool) -> (quinn::Endpoint, Arc<AtomicU64>, LinkMetrics) {
    let ep = link::bind("127.0.0.1:0".parse().unwrap(), key, jumbo).unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let metrics = LinkMetrics::unregistered();
    tokio::spawn(link::serve(
        ep.clone(),
        Arc::new(move |f: frame::Frame<'_>, _: &quinn::Connection| {
            assert_eq!(f.packet().map(<[u8]>::len), Some(PACKET_SIZE));
            c.fetch_add(1, Ordering::SeqCst);
        }),
        metrics.clone(),
        LinkConfig::default(),
    ));
    (ep, count, metrics)
}

/// Connects from `client` to the server `ep` holding the identity `key`.
async fn dial(
    client: &quinn::Endpoint,
    key: &SigningKey,
    ep: &quinn::Endpoint,
) -> quinn::Connection {
    link::connect(
        client,
        key.verifying_key().to_bytes(),
        ep.local_addr().unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn pinned_identity_is_required() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let b = SigningKey::from_bytes(&[2; 32]);
    let (ep, _, _) = server(&a);
    let addr = ep.local_addr().unwrap();
    let client = link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(
        link::connect(&client, a.verifying_key().to_bytes(), addr)
            .await
            .is_ok()
    );
    let wrong = link::connect(&client, b.verifying_key().to_bytes(), addr).await;
    assert!(
        wrong.is_err(),
        "a server without the pinned key must be refused"
    );
}

/// A burst over a jumbo link is sent in full-size datagrams and none is
/// lost. quinn batches up to 10 datagrams per GSO send; 10 jumbo datagrams
/// exceed what one send may hold, and the kernel's refusal was silent: every
/// full batch was lost and the link fell back to 1200-byte datagrams.
#[tokio::test]
async fn jumbo_bursts_arrive_whole_in_full_datagrams() {
    let a = SigningKey::from_bytes(&[4; 32]);
    let (ep, count, _) = server_with(&a, true);
    let client = link::bulk_client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = dial(&client, &a, &ep).await;
    // Path-MTU discovery first reaches the jumbo size.
    wait_for("a jumbo path MTU", || conn.stats().path.current_mtu >= 8000).await;
    let mut send = conn.open_uni().await.unwrap();
    let good = frame::encode(FrameKind::Sphinx, 1, &vec![0u8; PACKET_SIZE]).unwrap();
    let frames = 600;
    send.write_all(&good.repeat(frames)).await.unwrap();
    wait_for("every frame", || {
        count.load(Ordering::SeqCst) == frames as u64
    })
    .await;
    let stats = conn.stats();
    assert_eq!(stats.path.lost_packets, 0, "{:?}", stats.path);
    assert_eq!(stats.path.black_holes_detected, 0, "{:?}", stats.path);
    // Three frames per datagram; 1200-byte datagrams would need two per frame.
    assert!(
        stats.udp_tx.datagrams < frames as u64 / 2,
        "{} datagrams for {frames} frames",
        stats.udp_tx.datagrams
    );
}

#[tokio::test]
async fn junk_frames_are_counted_and_the_stream_goes_on() {
    let a = SigningKey::from_bytes(&[3; 32]);
    let (ep, count, metrics) = server(&a);
    let client = link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = dial(&client, &a, &ep).await;
    let mut send = conn.open_uni().await.unwrap();
    let good = frame::encode(FrameKind::Sphinx, 1, &vec![0u8; PACKET_SIZE]).unwrap();
    for i in 0..20u16 {
        send.write_all(&good).await.unwrap();
        let junk = vec![0xAB; usize::from(i) * 37];
        send.write_all(&(junk.len() as u16).to_be_bytes())
            .await
            .unwrap();
        send.write_all(&junk).await.unwrap();
    }
    send.write_all(&good).await.unwrap();
    wait_for("21 good frames", || count.load(Ordering::SeqCst) == 21).await;
    wait_for("20 junk frames", || {
        metrics.dropped.with_label_values(&["malformed"]).get() == 20
    })
    .await;
}

#[tokio::test]
async fn links_deliver_and_bound_their_queues() {
    let a = SigningKey::from_bytes(&[4; 32]);
    let (ep, count, _) = server(&a);
    let client = link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let metrics = LinkMetrics::unregistered();
    let cfg = LinkConfig {
        queue_capacity: 16,
        ..LinkConfig::default()
    };
    let links = Links::new(client, cfg, metrics.clone());
    let id = a.verifying_key().to_bytes();
    let good = frame::encode(FrameKind::Sphinx, 1, &vec![0u8; PACKET_SIZE]).unwrap();
    for _ in 0..10 {
        assert!(links.send(id, ep.local_addr().unwrap(), good.clone()));
    }
    wait_for("10 frames", || count.load(Ordering::SeqCst) == 10).await;

    // A peer nobody listens on: the queue fills to its bound and further frames are dropped.
    let dead: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let ghost = SigningKey::from_bytes(&[5; 32]).verifying_key().to_bytes();
    let accepted = (0..100)
        .filter(|_| links.send(ghost, dead, good.clone()))
        .count();
    assert!(accepted <= 17, "queue must be bounded, accepted {accepted}");
    assert!(metrics.dropped.with_label_values(&["queue_full"]).get() >= 83);
}
