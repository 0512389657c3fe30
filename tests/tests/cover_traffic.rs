//! An idle client sends only cover: drop cover to gateways and loops that come
//! back to it through the mixnet; gateways count the drop cover they discard.
//! Mix nodes and gateways send loops of their own, which come back to them.

use client_sdk::{Client, Identity};
use protocol::topology::NetworkParams;
use std::time::Duration;
use umbra::testnet::{MixNetwork, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_sends_drop_cover_and_loops_that_return() {
    let params = NetworkParams {
        mix_delay_mean_ms: 20,
        lambda_payload: 20.0,
        lambda_loop: 5.0,
        ..Default::default()
    };
    let net = MixNetwork::start(1, 1, params, 1).await.unwrap();
    let mut cfg = net.client_config().unwrap();
    cfg.fetch_interval = Duration::from_secs(3600);
    cfg.catch_up_periods = 2;
    let (client, _inbox) = Client::connect(cfg, Identity::generate()).await.unwrap();
    wait_until(
        "loops to return and drop cover to flow",
        Duration::from_secs(30),
        || {
            let s = client.cover_stats();
            s.loops_returned >= 5 && s.drop_cover >= 10
        },
    )
    .await
    .unwrap();
    let s = client.cover_stats();
    assert_eq!(s.real, 0, "an idle client sends nothing real: {s:?}");
    assert_eq!(s.loops_lost, 0, "{s:?}");
    wait_until(
        "the gateway to discard drop cover",
        Duration::from_secs(10),
        || net.gateways[0].metrics().cover.get() >= 5,
    )
    .await
    .unwrap();
    client.shutdown();
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mix_nodes_and_gateways_send_loops_that_return() {
    let params = NetworkParams {
        mix_delay_mean_ms: 20,
        lambda_mix_loop: 10.0,
        ..Default::default()
    };
    let net = MixNetwork::start(1, 1, params, 1).await.unwrap();
    let nodes: Vec<&node::Metrics> = net
        .mixnodes
        .iter()
        .map(|m| m.metrics())
        .chain(net.gateways.iter().map(|g| g.node().metrics()))
        .collect();
    let r = wait_until(
        "every node's loops to come back",
        Duration::from_secs(30),
        || nodes.iter().all(|m| m.loops_returned.get() >= 5),
    )
    .await;
    assert!(r.is_ok(), "{}", net.diagnostics());
    for m in &nodes {
        assert!(m.loops_sent.get() >= m.loops_returned.get());
        assert_eq!(m.loops_lost.get(), 0, "{}", net.diagnostics());
        // A loop's packet ends at its sender, and is not dropped as unexpected.
        assert_eq!(m.dropped("unexpected_final"), 0, "{}", net.diagnostics());
    }
    net.stop().await;
}
