//! Who may put packets into the mixnet, and where.
//!
//! - A party that is not a node of the topology cannot open a node link to a
//!   mix node: anonymously the TLS handshake fails (no client certificate),
//!   and with an identity of its own the node closes the connection; both
//!   are counted.
//! - A client reaches the network only through its gateway's client
//!   endpoint, and only at layer 1: an Inject whose first hop is a layer-2
//!   node is dropped and counted (`bad_first_hop`), and never reaches it.
//! - A dropbox gateway sends a fetch's replies only into layer 1: a SURB
//!   whose first hop is deeper gets no reply.
//!
//! Nodes send no loop cover here, so every packet a node receives is one
//! this test sent.

use ed25519_dalek::SigningKey;
use net::tls::Credentials;
use protocol::dropbox::PairSecret;
use protocol::frame::{self, FrameKind};
use protocol::messages::{FetchRequest, Request};
use protocol::packet::{self, Hop};
use protocol::topology::NetworkParams;
use std::time::Duration;
use umbra::testnet::{MixNetwork, NetworkOptions, wait_until};

use net::now_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_topology_nodes_dial_mix_nodes_and_clients_enter_at_layer_one() {
    let net = MixNetwork::start_with(NetworkOptions {
        per_layer: 1,
        gateways: 1,
        params: NetworkParams {
            mix_delay_mean_ms: 5,
            ..NetworkParams::default()
        },
        dangerous_no_cover: true,
        ..NetworkOptions::default()
    })
    .await
    .unwrap();
    let topo = net.directory.topology().await.unwrap();
    let layer = |l: u8| topo.layer(l).next().unwrap().clone();
    let (l1, l2, l3) = (layer(1), layer(2), layer(3));
    let node = |id: [u8; 32]| net.mixnodes.iter().find(|m| m.identity == id).unwrap();
    let gw = &net.gateways[0];
    let g = topo.node(&gw.node().identity).unwrap().clone();

    // 1. Dialling a mix node's node endpoint.
    let client = net::link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let refused = |r: &str| {
        node(l2.identity)
            .link_metrics()
            .connections_refused
            .with_label_values(&[r])
            .get()
    };
    let anon = net::link::connect(&client, l2.identity, l2.socket_addr().unwrap()).await;
    if let Ok(c) = &anon {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
    }
    wait_until(
        "the anonymous handshake refused",
        Duration::from_secs(10),
        || refused("handshake") >= 1,
    )
    .await
    .unwrap();
    let stranger = Credentials::new(&SigningKey::from_bytes(&[0x5a; 32])).unwrap();
    let c = net::link::connect_as(&client, &stranger, l2.identity, l2.socket_addr().unwrap())
        .await
        .expect("the TLS handshake itself succeeds");
    let why = tokio::time::timeout(Duration::from_secs(10), c.closed())
        .await
        .expect("the node closes a link from outside the topology");
    assert!(
        matches!(&why, quinn::ConnectionError::ApplicationClosed(a) if a.reason.as_ref() == b"not in topology"),
        "{why:?}"
    );
    assert_eq!(refused("unknown_peer"), 1);
    eprintln!(
        "layer-2 node refused: handshake {}, unknown_peer {}",
        refused("handshake"),
        refused("unknown_peer")
    );

    // 2. A client injecting at layer 2, then (control) at layer 1. Both carry
    //    a Drop request for the gateway, which counts what arrives.
    let conn = net::link::connect(&client, g.identity, gw.client_addr)
        .await
        .unwrap();
    let mut up = conn.open_uni().await.unwrap();
    up.write_all(&frame::encode(FrameKind::Subscribe, 0, &[7u8; 32]).unwrap())
        .await
        .unwrap();
    let drop_req = Request::Drop.encode().unwrap();
    let build = |route: &[Hop]| {
        let mut rng = rand::rng();
        let delays = packet::sample_delays(&mut rng, route.len(), Duration::from_millis(5));
        let p =
            packet::build_packet(&mut rng, route, &[0; 32], [0; 16], &delays, &drop_req).unwrap();
        frame::encode_parts(FrameKind::Inject, topo.epoch, &[&route[0].id, &p]).unwrap()
    };
    let received = |id: [u8; 32]| node(id).metrics().received.get();
    let bad_first_hop = || gw.node().metrics().dropped("bad_first_hop");
    up.write_all(&build(&[l2.hop(), l3.hop(), g.hop()]))
        .await
        .unwrap();
    wait_until(
        "the layer-2 injection dropped",
        Duration::from_secs(10),
        || bad_first_hop() == 1,
    )
    .await
    .unwrap();
    assert_eq!(received(l2.identity), 0, "the layer-2 node got the packet");
    assert_eq!(received(l1.identity), 0);
    up.write_all(&build(&[l1.hop(), l2.hop(), l3.hop(), g.hop()]))
        .await
        .unwrap();
    wait_until(
        "the layer-1 injection to arrive",
        Duration::from_secs(10),
        || gw.metrics().cover.get() == 1,
    )
    .await
    .unwrap();
    assert_eq!(
        received(l2.identity),
        1,
        "only the layer-1 packet crossed L2"
    );
    assert_eq!(bad_first_hop(), 1);

    // 3. A fetch whose first SURB starts at layer 2: three replies go out,
    //    the fourth is dropped and counted.
    let pair = PairSecret::from_bytes([3; 32]);
    let dropbox = pair.dropbox(&[1; 32], &[2; 32], 1);
    let mut rng = rand::rng();
    let mut surbs = Vec::new();
    for i in 0..4 {
        let mut route = if i == 0 {
            vec![l2.hop(), l3.hop()]
        } else {
            vec![l1.hop(), l2.hop(), l3.hop()]
        };
        route.push(g.hop());
        let delays = vec![Duration::ZERO; route.len()];
        let (surb, _) =
            packet::build_surb(&mut rng, &route, &[7; 32], [i + 1; 16], &delays).unwrap();
        surbs.push(surb);
    }
    let fetch = Request::Fetch(FetchRequest::new_signed_at(
        &dropbox,
        0,
        0,
        false,
        now_ms(),
        topo.epoch,
        surbs,
    ))
    .encode()
    .unwrap();
    let replies_before = gw.metrics().replies.get();
    let route = [l1.hop(), l2.hop(), l3.hop(), g.hop()];
    let delays = vec![Duration::ZERO; 4];
    let p = packet::build_packet(&mut rng, &route, &[0; 32], [0; 16], &delays, &fetch).unwrap();
    up.write_all(&frame::encode_parts(FrameKind::Inject, topo.epoch, &[&l1.identity, &p]).unwrap())
        .await
        .unwrap();
    wait_until(
        "three replies sent, one refused",
        Duration::from_secs(10),
        || gw.metrics().replies.get() == replies_before + 3 && bad_first_hop() == 2,
    )
    .await
    .unwrap();

    // 4. One connection subscribing 200 addresses holds one slot: each
    //    Subscribe replaces the one before.
    let clients_before = gw.metrics().clients.get();
    let address = |i: u32| {
        let mut a = [0u8; 32];
        a[..4].copy_from_slice(&i.to_be_bytes());
        a[31] = 0xee;
        a
    };
    for i in 0..200u32 {
        up.write_all(&frame::encode(FrameKind::Subscribe, 0, &address(i)).unwrap())
            .await
            .unwrap();
    }
    wait_until(
        "200 subscriptions replaced in turn",
        Duration::from_secs(10),
        || gw.node().metrics().dropped("resubscribed") == 200,
    )
    .await
    .unwrap();
    assert_eq!(gw.metrics().clients.get(), clients_before);
    eprintln!(
        "one connection, 201 Subscribe frames: {} subscribed client(s)",
        gw.metrics().clients.get()
    );

    // 5. A second connection takes the last address over (a client that
    //    reconnected); the first then subscribes another: the second's
    //    subscription stays.
    let last = address(199);
    // A new connection subscribing `address`, once its downlink runs (a
    // first dummy Deliver frame came on it).
    let subscribed = async |address: [u8; 32]| {
        let conn = net::link::connect(&client, g.identity, gw.client_addr)
            .await
            .unwrap();
        let mut up = conn.open_uni().await.unwrap();
        up.write_all(&frame::encode(FrameKind::Subscribe, 0, &address).unwrap())
            .await
            .unwrap();
        let mut down = conn.accept_uni().await.unwrap();
        let mut first = vec![0u8; frame::FRAME_LEN];
        down.read_exact(&mut first).await.unwrap();
        (conn, up, down)
    };
    let (conn2, _up2, mut down2) = subscribed(last).await;
    up.write_all(&frame::encode(FrameKind::Subscribe, 0, &[0xab; 32]).unwrap())
        .await
        .unwrap();
    wait_until(
        "the first connection's new subscription",
        Duration::from_secs(10),
        || gw.metrics().clients.get() == clients_before + 1,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {} clients", gw.metrics().clients.get()));
    assert_eq!(
        gw.node().metrics().dropped("resubscribed"),
        200,
        "the address taken over was not the first connection's to drop"
    );
    // And the second connection's downlink still runs.
    let mut frame_buf = vec![0u8; frame::FRAME_LEN];
    for _ in 0..20 {
        down2.read_exact(&mut frame_buf).await.unwrap();
    }
    assert_eq!(gw.subscribed_connections(), 2);
    // 6. A client reconnecting with its address: a third connection takes
    //    the second's over. The second's record goes with its downlink.
    let (conn3, _up3, _down3) = subscribed(last).await;
    wait_until(
        "the taken-over connection's record gone",
        Duration::from_secs(10),
        || gw.subscribed_connections() == 2,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {} records", gw.subscribed_connections()));
    assert_eq!(gw.metrics().clients.get(), clients_before + 1);
    conn3.close(0u8.into(), b"done");
    conn2.close(0u8.into(), b"done");
    conn.close(0u8.into(), b"done");
    net.stop().await;
}
