//! k-of-n directory authorities: no single authority can add nodes.
//!
//! Three authorities, two of whose signatures a topology needs. The third is
//! rogue: it admits four nodes of its own (three mix nodes and a gateway)
//! that the others never approved, and it signs, alone, a topology that
//! lists them, served to clients from its own URL. Those nodes must never
//! reach a client or a node: the published consensus leaves them out, the
//! rogue's own document is refused for its single signature, honest nodes
//! never route to them, and they carry none of the clients' traffic. The
//! test also checks that the fault was real: the rogue's signed vote lists
//! its nodes, and its document does verify under its key.

use axum::Router;
use axum::routing::get;
use client_sdk::{Client, ClientConfig, Identity};
use net::dirclient::{Authorities, AuthorityRef, DirectoryClient};
use protocol::topology::{
    self, NetworkParams, NodeDescriptor, Role, Signed, TOPOLOGY_DOMAIN, TopologyDocument,
    TrustPolicy,
};
use std::collections::HashSet;
use std::time::Duration;
use umbra::testnet::{MixNetwork, NetworkOptions, gateway_config, mixnode_config, wait_until};

use net::now_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_authority_cannot_add_its_own_nodes() {
    let params = NetworkParams {
        mix_delay_mean_ms: 20,
        lambda_payload: 20.0,
        lambda_downlink: 48.0,
        ..NetworkParams::default()
    };
    let net = MixNetwork::start_with(NetworkOptions {
        per_layer: 1,
        gateways: 2,
        params,
        authorities: 3,
        threshold: 2,
        ..NetworkOptions::default()
    })
    .await
    .unwrap();
    let rogue = &net.directory.members[2];
    let honest: Vec<&AuthorityRef> = net.directory.refs[..2].iter().collect();

    // The rogue's nodes: admitted by the rogue alone.
    let mut rogue_mixes = Vec::new();
    for i in 0..3 {
        let cfg = mixnode_config(&net.directory, net.tmp.path().join(format!("rogue{i}"))).unwrap();
        unadmit(&net, rogue_identity(&cfg.data_dir));
        rogue_mixes.push(mixnode::start(cfg).await.unwrap());
    }
    let cfg = gateway_config(&net.directory, net.tmp.path().join("rogue-gw")).unwrap();
    unadmit(&net, rogue_identity(&cfg.node.data_dir));
    let rogue_gw = gateway::start(cfg).await.unwrap();
    let rogue_nodes: Vec<node::NodeRef> = rogue_mixes
        .iter()
        .map(|m| m.handle())
        .chain([rogue_gw.node().handle()])
        .collect();
    let rogue_ids: HashSet<[u8; 32]> = rogue_nodes.iter().map(|h| h.identity()).collect();

    // The fault is real: the rogue votes for its nodes.
    let epoch = net.directory.topology().await.unwrap().epoch;
    let trust = net.directory.trust();
    wait_until(
        "the rogue's vote to list its nodes",
        Duration::from_secs(20),
        || rogue.directory.topology(epoch, now_ms()).is_some(),
    )
    .await
    .unwrap();
    let rogue_client = DirectoryClient::new(&rogue.url).unwrap();
    let mut listed = 0;
    for _ in 0..100 {
        let vote = rogue_client
            .get_signed(&format!("/v1/vote/{epoch}"))
            .await
            .unwrap();
        let vote = topology::verify_vote(&vote, &trust.authorities).unwrap();
        listed = vote
            .nodes
            .iter()
            .filter(|n| rogue_ids.contains(&n.identity))
            .count();
        if listed == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, 4, "the rogue's vote lists its four nodes");

    // The rogue signs, alone, a topology that lists them, and serves it.
    let consensus = net.directory.topology().await.unwrap();
    let rogue_key = net::identity::load_or_create_identity(
        &net.tmp
            .path()
            .join("directory")
            .join("a2")
            .join("authority.key"),
    )
    .unwrap();
    let mut descriptors: Vec<NodeDescriptor> = consensus
        .nodes
        .iter()
        .map(|n| NodeDescriptor {
            identity: n.identity,
            role: n.role,
            address: n.address.clone(),
            client_address: n.client_address.clone(),
            sphinx_keys: vec![topology::EpochPublicKey {
                epoch,
                key: n.sphinx_key,
            }],
            published_ms: 0,
        })
        .collect();
    for h in &rogue_nodes {
        // Any key will do for a forged listing: no one may use it.
        descriptors.push(NodeDescriptor {
            identity: h.identity(),
            role: Role::Mix,
            address: "127.0.0.1:9".into(),
            client_address: None,
            sphinx_keys: vec![topology::EpochPublicKey {
                epoch,
                key: [9; 32],
            }],
            published_ms: 0,
        });
    }
    let forged = TopologyDocument::build(
        epoch,
        consensus.revision + 1,
        consensus.schedule,
        consensus.params,
        &descriptors,
    );
    let forged = Signed::sign(&forged, TOPOLOGY_DOMAIN, &rogue_key).unwrap();
    let one = TrustPolicy {
        authorities: vec![rogue.key],
        threshold: 1,
    };
    assert!(
        topology::verify_topology(&forged, &one, now_ms(), None).is_ok(),
        "the forged document is validly signed by the rogue"
    );
    let e = topology::verify_topology(&forged, &trust, now_ms(), None).unwrap_err();
    assert!(e.to_string().contains("signatures"), "{e}");
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_url = format!("http://{}", fake.local_addr().unwrap());
    let served = serde_json::to_string(&forged).unwrap();
    let app = Router::new().route(
        "/v1/topology",
        get(move || {
            let s = served.clone();
            async move { s }
        }),
    );
    tokio::spawn(async move { axum::serve(fake, app).await });

    // Clients that ask the rogue's URL first (among the three).
    let mut refs: Vec<AuthorityRef> = vec![AuthorityRef {
        url: fake_url.clone(),
        key: hex::encode(rogue.key),
    }];
    refs.extend(honest.iter().map(|r| (*r).clone()));
    let only_rogue = Authorities::new(&refs[..1], 1).unwrap();
    assert!(
        only_rogue.topology(false, now_ms(), None).await.is_ok(),
        "with k = 1 the forged document would be taken"
    );
    let k_of_n = Authorities::new(&refs, 2).unwrap();
    for _ in 0..20 {
        let t = k_of_n.topology(false, now_ms(), None).await.unwrap();
        assert!(
            t.nodes.iter().all(|n| !rogue_ids.contains(&n.identity)),
            "a rogue node reached a verified topology"
        );
    }
    let mut cfg = ClientConfig::with_authorities(refs, 2).unwrap();
    cfg.catch_up_periods = 2;
    cfg.fetch_interval = Duration::from_millis(500);
    let (alice, mut alice_in) = Client::connect(cfg.clone(), Identity::generate())
        .await
        .unwrap();
    let (bob, mut bob_in) = Client::connect(cfg, Identity::generate()).await.unwrap();
    let to_bob = alice.add_contact(&bob.invite("bob")).unwrap();
    let to_alice = bob.add_contact(&alice.invite("alice")).unwrap();
    for i in 0..5u8 {
        alice.send(&to_bob, &[i; 100]).await.unwrap();
        bob.send(&to_alice, &[i; 100]).await.unwrap();
    }
    let mut got = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got != (5, 5) {
        tokio::select! {
            Some(_) = bob_in.recv() => got.0 += 1,
            Some(_) = alice_in.recv() => got.1 += 1,
            _ = tokio::time::sleep_until(deadline) => panic!("only {got:?} of (5, 5) delivered"),
        }
    }
    for c in [&alice, &bob] {
        assert!(
            c.topology()
                .nodes
                .iter()
                .all(|n| !rogue_ids.contains(&n.identity)),
            "a client routes by a topology with rogue nodes"
        );
    }
    for m in &net.mixnodes {
        let t = m.handle().topology().unwrap();
        assert!(t.nodes.iter().all(|n| !rogue_ids.contains(&n.identity)));
    }
    // The rogue nodes carried nothing: no honest node or client sent them a packet.
    for h in &rogue_nodes {
        assert_eq!(h.metrics().received.get(), 0, "a rogue node got traffic");
    }
    // Keys that are none of the authorities': the client is told its
    // configuration is wrong (the application's fault), not to retry later.
    let wrong: Vec<AuthorityRef> = net
        .directory
        .refs
        .iter()
        .enumerate()
        .map(|(i, r)| AuthorityRef {
            url: r.url.clone(),
            key: hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[i as u8 + 1; 32])
                    .verifying_key()
                    .to_bytes(),
            ),
        })
        .collect();
    let refused = Client::connect(
        ClientConfig::with_authorities(wrong, 2).unwrap(),
        Identity::generate(),
    )
    .await
    .err()
    .expect("a client connected with keys that are not the authorities'");
    assert!(
        matches!(refused, client_sdk::Error::Net(net::Error::Untrusted(_))),
        "{refused:?}"
    );
    assert_eq!(refused.fault(), client_sdk::Fault::Application, "{refused}");
    eprintln!(
        "rogue vote listed {listed} nodes; forged document refused under 2-of-3; 10 messages delivered; rogue nodes received 0 packets; wrong authority keys: {refused}"
    );
    alice.shutdown();
    bob.shutdown();
    rogue_gw.shutdown().await;
    for m in rogue_mixes {
        m.shutdown().await;
    }
    net.stop().await;
}

fn rogue_identity(data_dir: &std::path::Path) -> [u8; 32] {
    net::identity::load_or_create_identity(&data_dir.join("identity.key"))
        .unwrap()
        .verifying_key()
        .to_bytes()
}

/// The harness admitted the node everywhere; only the rogue keeps it.
fn unadmit(net: &MixNetwork, id: [u8; 32]) {
    for m in &net.directory.members[..2] {
        assert!(m.directory.revoke(&id).unwrap());
    }
}
