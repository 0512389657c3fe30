//! The fault-injecting socket: with 20 % loss, 5 % duplication and 5 %
//! reordering and 5 % delayed by 30 ms on every datagram both ways, QUIC still delivers every frame
//! exactly once and in order, and the wrapper really dropped datagrams.
//! (Own test binary: the fault setting is process-wide.)

use ed25519_dalek::SigningKey;
use net::faults::{LinkFaults, dangerous_set_link_faults};
use net::link::{self, LinkConfig, LinkMetrics};
use protocol::frame::{self, FrameKind};
use protocol::packet::PACKET_SIZE;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_recovers_from_injected_faults() {
    dangerous_set_link_faults(Some(LinkFaults {
        loss: 0.2,
        duplicate: 0.05,
        reorder: 0.05,
        delay: 0.05,
        delay_ms: 30,
        jitter_ms: 10,
        seed: 1,
    }));
    let key = SigningKey::from_bytes(&[9; 32]);
    let creds = net::tls::Credentials::new(&key).unwrap();
    let server = link::bind_for_clients("127.0.0.1:0".parse().unwrap(), &creds, false).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(link::serve(
        server.clone(),
        Arc::new(move |f: frame::Frame<'_>, _: &net::conn::PeerConn| {
            g.lock().unwrap().push(f.epoch)
        }),
        LinkMetrics::unregistered(),
        LinkConfig::default(),
        None,
    ));
    let client = link::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = link::connect(
        &client,
        key.verifying_key().to_bytes(),
        server.local_addr().unwrap(),
    )
    .await
    .unwrap();
    let mut send = conn.open_uni().await.unwrap();
    for i in 0..200u64 {
        send.write_all(&frame::encode(FrameKind::Sphinx, i, &vec![1u8; PACKET_SIZE]).unwrap())
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out with {} frames",
            got.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = got.lock().unwrap().clone();
    assert_eq!(
        v,
        (0..200).collect::<Vec<u64>>(),
        "every frame once, in order"
    );
    let stats = conn.stats();
    assert!(
        stats.path.lost_packets > 0,
        "the wrapper dropped datagrams: {stats:?}"
    );
    dangerous_set_link_faults(None);
}
