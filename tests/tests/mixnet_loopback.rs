//! A directory and three mix nodes (one per layer) on loopback with real QUIC.
//! A test sender pushes 1000 Sphinx packets L1 → L2 → L3 → test receiver,
//! then replays 100 of them at L1, then sends 100 junk frames to L1.

use protocol::frame::{self, FRAME_LEN, FrameKind};
use protocol::packet::{PACKET_SIZE, build_packet, sample_delays};
use protocol::topology::NetworkParams;
use rand::{Rng, RngExt};
use std::collections::HashSet;
use std::time::Duration;
use umbra::testnet::{FinalMode, Injector, LocalNet, wait_until};

const N: usize = 1000;
const REPLAYS: usize = 100;
const JUNK: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_packets_replays_and_junk() {
    let net = LocalNet::start(3, NetworkParams::default(), FinalMode::Peel, |_| {})
        .await
        .expect("local network");
    let topo = net.topology().await.unwrap();
    let l: Vec<_> = (1..=3)
        .map(|i| topo.layer(i).next().expect("a node per layer").clone())
        .collect();
    let recv = topo
        .node(&net.receiver.identity)
        .expect("receiver in topology")
        .clone();
    let route = [l[0].hop(), l[1].hop(), l[2].hop(), recv.hop()];
    let l1 = net
        .mixnodes
        .iter()
        .find(|m| m.identity == l[0].identity)
        .unwrap();

    // 1000 packets with real per-hop delays (mean 5 ms).
    let mut rng = rand::rng();
    let mut sent = HashSet::new();
    let mut frames = Vec::new();
    for i in 0..N {
        let msg = format!("packet {i} {}", rng.next_u64()).into_bytes();
        let delays = sample_delays(&mut rng, 4, Duration::from_millis(5));
        let p = build_packet(&mut rng, &route, &[1; 32], [0; 16], &delays, &msg).unwrap();
        frames.push(frame::encode(FrameKind::Sphinx, topo.epoch, &p).unwrap());
        sent.insert(msg);
    }
    let mut inj = Injector::connect(
        &net.receiver.creds,
        l[0].identity,
        l[0].socket_addr().unwrap(),
    )
    .await
    .unwrap();
    for f in &frames {
        inj.send_raw(f).await.unwrap();
    }
    let delivered = net.receiver.delivered.clone();
    wait_until("1000 deliveries", Duration::from_secs(60), || {
        delivered.lock().unwrap().len() >= N
    })
    .await
    .unwrap();
    let got: Vec<Vec<u8>> = delivered.lock().unwrap().clone();
    let got_set: HashSet<Vec<u8>> = got.iter().cloned().collect();
    assert_eq!(got.len(), N, "no duplicates");
    assert_eq!(got_set, sent, "every payload intact");

    // Replay 100 of them at L1.
    for f in frames.iter().take(REPLAYS) {
        inj.send_raw(f).await.unwrap();
    }
    let m1 = l1.metrics().clone();
    wait_until("100 replays dropped at L1", Duration::from_secs(20), || {
        m1.dropped("replay") >= REPLAYS as u64
    })
    .await
    .unwrap();

    // 100 junk frames: half with a bad length (refused by the codec), half of
    // the right size but random (refused by the Sphinx MAC).
    let link1 = l1.link_metrics().clone();
    for i in 0..JUNK {
        if i % 2 == 0 {
            let len = rng.random_range(0..4000usize);
            let mut junk = (len as u16).to_be_bytes().to_vec();
            junk.extend((0..len).map(|_| rng.random::<u8>()));
            inj.send_raw(&junk).await.unwrap();
        } else {
            let mut p = vec![0u8; PACKET_SIZE];
            rng.fill_bytes(&mut p);
            inj.send_raw(&frame::encode(FrameKind::Sphinx, topo.epoch, &p).unwrap())
                .await
                .unwrap();
        }
    }
    let junk_dropped =
        || link1.dropped.with_label_values(&["malformed"]).get() + m1.dropped("malformed");
    wait_until("100 junk frames dropped", Duration::from_secs(20), || {
        junk_dropped() >= JUNK as u64
    })
    .await
    .unwrap();

    // The link still works: ten fresh packets arrive.
    for i in 0..10 {
        let p = build_packet(
            &mut rng,
            &route,
            &[1; 32],
            [0; 16],
            &[Duration::ZERO; 4],
            format!("after {i}").as_bytes(),
        )
        .unwrap();
        inj.send_packet(topo.epoch, &p).await.unwrap();
    }
    wait_until("10 packets after junk", Duration::from_secs(20), || {
        delivered.lock().unwrap().len() >= N + 10
    })
    .await
    .unwrap();
    let final_count = delivered.lock().unwrap().len();
    assert_eq!(final_count, N + 10, "replays were never delivered");
    assert_eq!(
        net.receiver
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(junk_dropped(), JUNK as u64);
    assert_eq!(m1.dropped("replay"), REPLAYS as u64);
    let _ = FRAME_LEN;
    println!(
        "delivered={} replays_dropped={} junk_dropped={} (codec {} + sphinx {})",
        N,
        m1.dropped("replay"),
        junk_dropped(),
        link1.dropped.with_label_values(&["malformed"]).get(),
        m1.dropped("malformed")
    );
    inj.close().await;
    net.stop().await;
}
