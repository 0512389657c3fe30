//! Epoch boundaries with real nodes, on networks whose epochs last a few
//! seconds (production: an hour).
//!
//! - Packets at the Sphinx level, over three boundaries: a packet built for
//!   epoch e is accepted in e and, during the key's grace, in e + 1; its
//!   replay is refused in e + 1 (the replay cache lives as long as the key);
//!   once e + 2 begins the key and its cache are erased and the packet is
//!   dropped as `unknown_epoch`.
//! - Real clients exchanging messages across at least three boundaries,
//!   with a mix node restarted (new Sphinx keys, the same identity) right at
//!   a boundary: every message arrives once and intact; none is reported
//!   failed.

use client_sdk::{Client, Identity, Status};
use protocol::frame::{self, FrameKind};
use protocol::packet::build_packet;
use protocol::topology::NetworkParams;
use std::collections::HashMap;
use std::time::Duration;
use umbra::testnet::{
    FinalMode, Injector, LocalNet, MixNetwork, NetworkOptions, mixnode_config, wait_until,
};

/// Epoch length of the client network, seconds (production: 3600).
const EPOCH_SECS: u64 = 6;
/// Messages each way, sent over about four epochs.
const N: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_three_epoch_boundaries_and_a_node_restart() {
    let params = NetworkParams {
        mix_delay_mean_ms: 20,
        lambda_payload: 50.0,
        lambda_downlink: 120.0,
        ..NetworkParams::default()
    };
    let mut net = MixNetwork::start_with(NetworkOptions {
        per_layer: 1,
        gateways: 2,
        params,
        epoch_secs: EPOCH_SECS,
        ..NetworkOptions::default()
    })
    .await
    .unwrap();
    let mut cfg = net.client_config().unwrap();
    cfg.fetch_interval = Duration::from_millis(500);
    cfg.catch_up_periods = 2;
    let (alice, mut a_in) = Client::connect(cfg.clone(), Identity::generate())
        .await
        .unwrap();
    let (bob, mut b_in) = Client::connect(cfg, Identity::generate()).await.unwrap();
    let to_bob = alice.add_contact(&bob.invite("bob")).unwrap();
    let to_alice = bob.add_contact(&alice.invite("alice")).unwrap();
    let first_epoch = alice.topology().epoch;

    // Send over about four epochs; restart the layer-2 mix node right at
    // the second boundary.
    let gap = Duration::from_millis(EPOCH_SECS * 1000 * 4 / N as u64);
    let mut sent_to_bob = HashMap::new();
    let mut sent_to_alice = HashMap::new();
    let mut ids = Vec::new();
    let mut epochs_seen = vec![first_epoch];
    let mut restarted_at = None;
    for i in 0..N {
        let a = format!("alice→bob {i}").into_bytes();
        ids.push((alice.clone(), alice.send(&to_bob, &a).await.unwrap()));
        sent_to_bob.insert(a, 0usize);
        let b = format!("bob→alice {i}").into_bytes();
        ids.push((bob.clone(), bob.send(&to_alice, &b).await.unwrap()));
        sent_to_alice.insert(b, 0usize);
        tokio::time::sleep(gap).await;
        let e = alice.topology().epoch;
        if e != *epochs_seen.last().unwrap() {
            epochs_seen.push(e);
        }
        if restarted_at.is_none() && e >= first_epoch + 2 {
            // Layer 2's node: every route passes it.
            let topo = alice.topology();
            let l2 = topo.layer(2).next().unwrap().identity;
            let idx = net.mixnodes.iter().position(|m| m.identity == l2).unwrap();
            let node = net.mixnodes.remove(idx);
            let dir = net.tmp.path().join(format!("mix{idx}"));
            node.shutdown().await;
            let cfg = mixnode_config(&net.directory, dir).unwrap();
            let again = mixnode::start(cfg).await.unwrap();
            assert_eq!(again.identity, l2, "the same identity, new keys");
            net.mixnodes.insert(idx, again);
            restarted_at = Some(e);
        }
    }

    // Every message arrives once, intact; every sender learns it is stored.
    let deadline = Duration::from_secs(120);
    let receive = |inbox: &mut client_sdk::Inbox| inbox.try_recv();
    wait_until("every message delivered", deadline, || {
        while let Some(m) = receive(&mut b_in) {
            *sent_to_bob.get_mut(&m.body).expect("a message alice sent") += 1;
        }
        while let Some(m) = receive(&mut a_in) {
            *sent_to_alice.get_mut(&m.body).expect("a message bob sent") += 1;
        }
        sent_to_bob.values().all(|n| *n >= 1) && sent_to_alice.values().all(|n| *n >= 1)
    })
    .await
    .unwrap_or_else(|e| {
        let missing = sent_to_bob
            .iter()
            .chain(&sent_to_alice)
            .filter(|(_, n)| **n == 0)
            .count();
        panic!("{e}: {missing} missing; {}", net.diagnostics())
    });
    wait_until("every message stored", Duration::from_secs(60), || {
        ids.iter()
            .all(|(c, id)| matches!(c.status(id), Some(Status::Stored | Status::Read)))
    })
    .await
    .unwrap();
    // A late duplicate would show within a few fetch rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(m) = b_in.try_recv() {
        *sent_to_bob.get_mut(&m.body).unwrap() += 1;
    }
    while let Some(m) = a_in.try_recv() {
        *sent_to_alice.get_mut(&m.body).unwrap() += 1;
    }
    let dups: usize = sent_to_bob
        .values()
        .chain(sent_to_alice.values())
        .map(|n| n - 1)
        .sum();
    let failed = ids
        .iter()
        .filter(|(c, id)| c.status(id).is_some_and(|s| s.is_failure()))
        .count();
    let last_epoch = alice.topology().epoch;
    eprintln!(
        "epochs {first_epoch}..={last_epoch} (client saw {epochs_seen:?}); layer-2 node restarted in epoch {restarted_at:?}; {} of {} delivered, duplicates {dups}, failed {failed}",
        2 * N,
        2 * N
    );
    assert!(
        last_epoch >= first_epoch + 3,
        "crossed only {} boundaries",
        last_epoch - first_epoch
    );
    assert!(restarted_at.is_some(), "the node was restarted");
    assert_eq!(dups, 0);
    assert_eq!(failed, 0);
    alice.shutdown();
    bob.shutdown();
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sphinx_keys_roll_over_and_replays_stay_refused_across_boundaries() {
    const EPOCH: u64 = 4;
    let net = LocalNet::start_epochs(
        None,
        3,
        NetworkParams::default(),
        FinalMode::Count,
        EPOCH,
        |_| {},
    )
    .await
    .unwrap();
    // One node link to each mix node, opened now: layers may move between
    // epochs, and links are checked against the topology when they open.
    let topo0 = net.topology().await.unwrap();
    let mut links = HashMap::new();
    for m in &net.mixnodes {
        let node = topo0.node(&m.identity).unwrap();
        let inj = Injector::connect(&net.receiver.creds, m.identity, node.socket_addr().unwrap())
            .await
            .unwrap();
        links.insert(m.identity, inj);
    }
    let node = |id| net.mixnodes.iter().find(|m| m.identity == id).unwrap();
    let wait_clock = |until_ms: u64| {
        wait_until(
            "the clock to pass a boundary",
            Duration::from_secs(3 * EPOCH),
            move || net::now_ms() >= until_ms,
        )
    };
    let mut rng = rand::rng();
    let mut summary = Vec::new();
    for _round in 0..3 {
        let topo = net.topology().await.unwrap();
        let e = topo.epoch;
        let l: Vec<_> = (1..=3)
            .map(|i| topo.layer(i).next().unwrap().clone())
            .collect();
        let route = [l[0].hop(), l[1].hop(), l[2].hop()];
        let frames: Vec<Vec<u8>> = (0..25)
            .map(|i| {
                let msg = format!("epoch {e} packet {i}");
                let p = build_packet(
                    &mut rng,
                    &route,
                    &[1; 32],
                    [0; 16],
                    &[Duration::ZERO; 3],
                    msg.as_bytes(),
                )
                .unwrap();
                frame::encode(FrameKind::Sphinx, e, &p).unwrap()
            })
            .collect();
        let (l1, l3) = (node(l[0].identity), node(l[2].identity));
        // The route ends at layer 3, which counts what it fully peeled.
        let through = || l3.metrics().dropped("unexpected_final");
        let (through0, replay0, unknown0) = (
            through(),
            l1.metrics().dropped("replay"),
            l1.metrics().dropped("unknown_epoch"),
        );
        let inj = links.get_mut(&l[0].identity).unwrap();

        // In its own epoch: 10 accepted.
        assert!(
            net::now_ms() < topo.schedule.end_ms(e),
            "epoch {e} still running"
        );
        for f in &frames[..10] {
            inj.send_raw(f).await.unwrap();
        }
        wait_until("10 packets through", Duration::from_secs(10), || {
            through() >= through0 + 10
        })
        .await
        .unwrap();

        // In e + 1, during the key's grace: 10 more accepted, and the
        // first 10 again refused as replays.
        wait_clock(topo.schedule.start_ms(e + 1) + 100)
            .await
            .unwrap();
        for f in &frames[10..20] {
            inj.send_raw(f).await.unwrap();
        }
        for f in &frames[..10] {
            inj.send_raw(f).await.unwrap();
        }
        wait_until(
            "10 more through, 10 replays refused",
            Duration::from_secs(10),
            || through() >= through0 + 20 && l1.metrics().dropped("replay") >= replay0 + 10,
        )
        .await
        .unwrap();

        // In e + 2: the key of e and its replay cache are gone.
        wait_clock(topo.schedule.start_ms(e + 2)).await.unwrap();
        wait_until("the key of epoch e erased", Duration::from_secs(10), || {
            l1.metrics().sphinx_key_oldest_epoch.get() > e as i64
        })
        .await
        .unwrap();
        for f in &frames[20..] {
            inj.send_raw(f).await.unwrap();
        }
        wait_until(
            "5 packets of an erased key dropped",
            Duration::from_secs(10),
            || l1.metrics().dropped("unknown_epoch") >= unknown0 + 5,
        )
        .await
        .unwrap();
        let passed = through() - through0;
        summary.push((e, passed, l1.metrics().dropped("replay") - replay0));
        assert_eq!(passed, 20, "only the 20 fresh packets got through");
    }
    eprintln!(
        "(epoch, packets through, replays refused) per round: {summary:?}; each round also saw 5 packets of an erased key dropped"
    );
    for (_, inj) in links {
        inj.close().await;
    }
    net.stop().await;
}
