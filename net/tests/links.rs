use ed25519_dalek::SigningKey;
use net::link::{self, LinkConfig, LinkMetrics, Links, PeerFilter};
use net::tls::Credentials;
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

/// A client endpoint's server (anonymous diallers), counting Sphinx frames.
fn server_with(key: &SigningKey, jumbo: bool) -> (quinn::Endpoint, Arc<AtomicU64>, LinkMetrics) {
    let creds = Credentials::new(key).unwrap();
    let ep = link::bind_for_clients("127.0.0.1:0".parse().unwrap(), &creds, jumbo).unwrap();
    serve_counting(ep, None)
}

/// Serves `ep`, counting Sphinx frames; node links when `peers` is given.
fn serve_counting(
    ep: quinn::Endpoint,
    peers: Option<PeerFilter>,
) -> (quinn::Endpoint, Arc<AtomicU64>, LinkMetrics) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let metrics = LinkMetrics::unregistered();
    tokio::spawn(link::serve(
        ep.clone(),
        Arc::new(move |f: frame::Frame<'_>, _: &net::conn::PeerConn| {
            assert_eq!(f.packet().map(<[u8]>::len), Some(PACKET_SIZE));
            c.fetch_add(1, Ordering::SeqCst);
        }),
        metrics.clone(),
        LinkConfig::default(),
        peers,
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
    let me = Credentials::new(&SigningKey::from_bytes(&[6; 32])).unwrap();
    let links = Links::new(client, me, cfg, metrics.clone());
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

/// What a node queues for its peers stays bounded and goes back: a peer
/// whose connects keep failing has its queue dropped, all queues together
/// hold at most `max_queued_bytes`, and peers that left the topology are
/// evicted with what was queued for them. Each drop is counted by reason.
#[tokio::test]
async fn links_drop_what_they_cannot_deliver_and_stay_bounded() {
    let a = SigningKey::from_bytes(&[8; 32]);
    let (ep, count, _) = server(&a);
    let client = link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let metrics = LinkMetrics::unregistered();
    let good = frame::encode(FrameKind::Sphinx, 1, &vec![0u8; PACKET_SIZE]).unwrap();
    let cfg = LinkConfig {
        drop_queue_after_failures: 3,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        max_queued_bytes: 40 * good.len(),
        ..LinkConfig::default()
    };
    let me = Credentials::new(&SigningKey::from_bytes(&[9; 32])).unwrap();
    let links = Links::new(client, me, cfg, metrics.clone());
    let dropped = |r: &str| metrics.dropped.with_label_values(&[r]).get();

    // A live address that does not hold the identity asked for: every
    // connect fails at once; after 3 the 10 queued frames are dropped.
    let impostor = SigningKey::from_bytes(&[10; 32]).verifying_key().to_bytes();
    for _ in 0..10 {
        assert!(links.send(impostor, ep.local_addr().unwrap(), good.clone()));
    }
    wait_for("the unreachable peer's queue dropped", || {
        dropped("peer_unreachable") == 10
    })
    .await;
    assert!(metrics.connect_failures.get() >= 3);
    assert_eq!(links.queued_bytes(), 0);
    assert_eq!(count.load(Ordering::SeqCst), 0);

    // Nobody listens here: frames wait, up to the node-wide byte bound.
    let dead: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let ghost = SigningKey::from_bytes(&[11; 32]).verifying_key().to_bytes();
    let accepted = (0..50)
        .filter(|_| links.send(ghost, dead, good.clone()))
        .count();
    assert_eq!(accepted, 40);
    assert_eq!(dropped("node_queue_full"), 10);
    assert_eq!(links.queued_bytes(), 40 * good.len());

    // The ghost left the topology: its link goes, and its queue with it
    // (once its pending dial gives up, within 5 s).
    assert_eq!(links.retain(|id| *id != ghost), 1);
    wait_for("the evicted peer's queue dropped", || {
        dropped("evicted") == 40
    })
    .await;
    assert_eq!(links.queued_bytes(), 0);
    assert_eq!(metrics.queue_depth.get(), 0);

    // The real peer still works.
    let id = a.verifying_key().to_bytes();
    assert!(links.send(id, ep.local_addr().unwrap(), good.clone()));
    wait_for("a frame to the real peer", || {
        count.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// Connection slots: at most `max_per_ip` connections from one address
/// (the next is refused and counted), and a slot is free again once its
/// connection closes. Every connection here passed QUIC Retry first.
#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let key = SigningKey::from_bytes(&[12; 32]);
    let creds = Credentials::new(&key).unwrap();
    let ep = link::bind_for_clients("127.0.0.1:0".parse().unwrap(), &creds, false).unwrap();
    let metrics = LinkMetrics::unregistered();
    tokio::spawn(link::serve(
        ep.clone(),
        Arc::new(|_: frame::Frame<'_>, _: &net::conn::PeerConn| {}),
        metrics.clone(),
        LinkConfig {
            max_per_ip: 4,
            ..LinkConfig::default()
        },
        None,
    ));
    let client = link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(dial(&client, &key, &ep).await);
    }
    wait_for("4 connections served", || {
        metrics.inbound_connections.get() == 4
    })
    .await;
    let fifth = link::connect(
        &client,
        key.verifying_key().to_bytes(),
        ep.local_addr().unwrap(),
    )
    .await;
    assert!(fifth.is_err(), "a fifth connection from one address");
    assert_eq!(
        metrics
            .connections_refused
            .with_label_values(&["per_ip"])
            .get(),
        1
    );
    // One goes: its slot is free again.
    open.pop().unwrap().close(0u8.into(), b"bye");
    wait_for("the slot given back", || {
        metrics.inbound_connections.get() == 3
    })
    .await;
    let again = link::connect(
        &client,
        key.verifying_key().to_bytes(),
        ep.local_addr().unwrap(),
    )
    .await;
    assert!(again.is_ok(), "{again:?}");
}

/// Node links are mutually authenticated: a dialler must prove an identity
/// key, and only identities the node's topology lists may use the link.
#[tokio::test]
async fn node_links_admit_only_proven_identities_in_the_topology() {
    let node = SigningKey::from_bytes(&[7; 32]);
    let member = Credentials::new(&SigningKey::from_bytes(&[8; 32])).unwrap();
    let stranger = Credentials::new(&SigningKey::from_bytes(&[9; 32])).unwrap();
    let allowed = member.id();
    let ep = link::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Credentials::new(&node).unwrap(),
        false,
    )
    .unwrap();
    let filter: PeerFilter = Arc::new(move |id: &[u8; 32]| *id == allowed);
    let (ep, count, metrics) = serve_counting(ep, Some(filter));
    let addr = ep.local_addr().unwrap();
    let id = node.verifying_key().to_bytes();
    let refused = |r: &str| metrics.connections_refused.with_label_values(&[r]).get();
    let good = frame::encode(FrameKind::Sphinx, 1, &vec![0u8; PACKET_SIZE]).unwrap();

    // Anonymous (as an SDK client dials its gateway): the handshake fails.
    let client = link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let anon = link::connect(&client, id, addr).await;
    if let Ok(c) = &anon {
        // TLS 1.3 may report the refusal only after the client's finish.
        let _ = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
    }
    wait_for("a refused handshake", || refused("handshake") == 1).await;

    // A proven identity that is not in the topology: closed at once,
    // nothing it sends is taken.
    let c = link::connect_as(&client, &stranger, id, addr)
        .await
        .unwrap();
    if let Ok(mut s) = c.open_uni().await {
        let _ = s.write_all(&good).await;
    }
    let why = tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .expect("the node closes the connection");
    assert!(
        matches!(&why, quinn::ConnectionError::ApplicationClosed(a) if a.reason.as_ref() == b"not in topology"),
        "{why:?}"
    );
    assert_eq!(refused("unknown_peer"), 1);

    // A node of the topology: its frames arrive.
    let c = link::connect_as(&client, &member, id, addr).await.unwrap();
    let mut s = c.open_uni().await.unwrap();
    s.write_all(&good).await.unwrap();
    wait_for("the member's frame", || count.load(Ordering::SeqCst) == 1).await;
    assert_eq!(refused("unknown_peer"), 1);
    assert_eq!(refused("handshake"), 1);
}
