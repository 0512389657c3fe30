use ed25519_dalek::SigningKey;
use net::link::{self, LinkConfig, LinkMetrics, Links, PeerFilter};
use net::tls::Credentials;
use protocol::frame::{self, FrameKind};
use protocol::packet::PACKET_SIZE;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    // Generous: only reached when something is wrong.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
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

/// Whether a client datagram carries a QUIC Handshake packet (RFC 9000
/// §17.2: long-header packets may be coalesced; a short header ends them).
fn carries_handshake(mut d: &[u8]) -> bool {
    fn varint(d: &[u8]) -> Option<(usize, usize)> {
        let b = *d.first()?;
        let n = 1usize << (b >> 6);
        let mut v = u64::from(b & 0x3f);
        for x in d.get(1..n)? {
            v = v << 8 | u64::from(*x);
        }
        Some((usize::try_from(v).ok()?, n))
    }
    let next = |d: &[u8]| -> Option<(u8, usize)> {
        let b0 = *d.first()?;
        if b0 & 0x80 == 0 {
            return None;
        }
        let ty = (b0 >> 4) & 0x03;
        let mut i = 5;
        i += 1 + usize::from(*d.get(i)?);
        i += 1 + usize::from(*d.get(i)?);
        if ty == 0 {
            let (token, n) = varint(d.get(i..)?)?;
            i += n + token;
        }
        let (len, n) = varint(d.get(i..)?)?;
        Some((ty, i + n + len))
    };
    while let Some((ty, len)) = next(d) {
        if ty == 2 {
            return true;
        }
        d = d.get(len..).unwrap_or(&[]);
    }
    false
}

/// Relays one client's datagrams to `server`, dropping every one that
/// carries a Handshake packet (the client's Finished) until `hold` after
/// the first: (the address to dial, how many it dropped).
async fn finished_dropping_relay(
    server: std::net::SocketAddr,
    hold: Duration,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        let mut first: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    client = Some(from);
                    if carries_handshake(&up[..n])
                        && first.get_or_insert_with(tokio::time::Instant::now).elapsed() < hold
                    {
                        d.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let _ = back.send(&up[..n]).await;
                }
                Ok(n) = back.recv(&mut down) => {
                    if let Some(c) = client {
                        let _ = front.send_to(&down[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, dropped)
}

/// A listener discards 1-RTT packets that come before the dialler's
/// Finished. With the Finished lost for a while, frames written as soon as
/// the dialler's handshake completed are lost to QUIC and retransmitted
/// as its congestion control recovers (measured: with the Finished held
/// 300 ms, they arrived 6.7 s after the handshake); frames written after
/// `link::confirmed` lose nothing (0.33 s).
#[tokio::test]
async fn writes_wait_until_the_listener_confirms_the_handshake() {
    let a = SigningKey::from_bytes(&[6; 32]);
    let (ep, count, _) = server(&a);
    let hold = Duration::from_millis(300);
    let frames = 40u64;
    let good = frame::encode(FrameKind::Sphinx, 1, &vec![0u8; PACKET_SIZE]).unwrap();
    let mut seen = Vec::new();
    for wait in [false, true] {
        let before = count.load(Ordering::SeqCst);
        let (relay, dropped) = finished_dropping_relay(ep.local_addr().unwrap(), hold).await;
        let client = link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = link::connect(&client, a.verifying_key().to_bytes(), relay)
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        if wait {
            assert!(link::confirmed(&conn).await, "the handshake was confirmed");
        }
        let waited = started.elapsed();
        let mut send = conn.open_uni().await.unwrap();
        for _ in 0..frames {
            send.write_all(&good).await.unwrap();
        }
        wait_for("every frame", || {
            count.load(Ordering::SeqCst) == before + frames
        })
        .await;
        eprintln!("frames arrived {:?} after the handshake", started.elapsed());
        let lost = conn.stats().path.lost_bytes;
        let dropped = dropped.load(Ordering::SeqCst);
        eprintln!(
            "confirmation awaited: {wait}, for {waited:?}; Finished datagrams dropped {dropped}, bytes lost {lost}"
        );
        assert!(dropped >= 1, "the relay dropped the dialler's Finished");
        seen.push((waited, lost));
    }
    let [(_, lost_at_once), (waited, lost_waiting)] = seen[..] else {
        unreachable!()
    };
    let frame_bytes = PACKET_SIZE as u64;
    // The fault bites: written at once, at least half the frames were lost.
    assert!(
        lost_at_once >= frames / 2 * frame_bytes,
        "written at once: {lost_at_once} bytes lost"
    );
    // Waiting took until the Finished got through, and no frame was lost.
    assert!(waited >= hold / 2, "confirmed after {waited:?}");
    assert!(
        lost_waiting < frame_bytes,
        "written after confirmation: {lost_waiting} bytes lost"
    );
}
