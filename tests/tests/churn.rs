//! Churn: the entry gateway of a busy client is killed and comes back on
//! the same data (its stored messages, its identity) but with new Sphinx
//! keys and a new port, as a gateway restarted on another machine or with
//! another port would. The client notices the lost connection, refreshes
//! the topology at once, and reconnects to the gateway's new address.
//! Every message is delivered once or reported failed, none is lost, and
//! the test prints how long delivery stopped.
//!
//! Failover: the entry gateway of a busy client is killed for good. After
//! `entry_failover` (30 s by default) the client moves to another gateway
//! and goes on; its dropboxes stay where their ids put them.
//!
//! Revocation: the directory revokes a busy client's entry gateway, which
//! goes on running; after `entry_failover` the client leaves it.

use client_sdk::{Client, Identity, Status};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use umbra::testnet::{MixNetwork, gateway_config, wait_until};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_clients_entry_gateway_restarts_and_nothing_is_lost() {
    let mut net = support::network_with(2).await;
    let ids: Vec<protocol::NodeId> = net.gateways.iter().map(|g| g.node().identity).collect();
    let gw = |i: usize| ids[i];
    let cfg = support::client_config(&net);
    // The default topology refresh (60 s): a restart must not wait for it.
    assert_eq!(cfg.topology_refresh, Duration::from_secs(60));
    // The pair's boxes live on the other gateway: this tests the entry
    // role. (Senders to boxes on a restarted gateway learn its new keys at
    // their next topology refresh, within `topology_refresh`; not here.)
    let secrets = pair_avoiding(&ids, gw(0));
    let (alice, _a_in, bob, mut b_in, to_bob) = pair(&cfg, secrets, gw(0), gw(1)).await;

    // Alice sends every 100 ms for 12 s; her entry gateway is killed at 3 s
    // and started again 1 s later.
    let t0 = Instant::now();
    let mut sent: HashMap<Vec<u8>, (client_sdk::MessageId, Duration)> = HashMap::new();
    let mut arrivals: HashMap<Vec<u8>, Vec<Duration>> = HashMap::new();
    let mut killed_at = None;
    let mut old_port = None;
    for i in 0..120 {
        let m = format!("busy {i}").into_bytes();
        let id = alice.send(&to_bob, &m).await.unwrap();
        sent.insert(m, (id, t0.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Some(r) = b_in.try_recv() {
            arrivals.entry(r.body).or_default().push(t0.elapsed());
        }
        if i == 30 {
            old_port = client_port(&net, gw(0)).await;
            let g = net.gateways.remove(0);
            g.shutdown().await;
            killed_at = Some(t0.elapsed());
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cfg = gateway_config(&net.directory, net.tmp.path().join("gateway0")).unwrap();
            net.gateways.insert(0, gateway::start(cfg).await.unwrap());
        }
    }
    let killed_at = killed_at.unwrap();
    let deadline = Duration::from_secs(180);
    wait_until("every message delivered or failed", deadline, || {
        while let Some(r) = b_in.try_recv() {
            arrivals.entry(r.body).or_default().push(t0.elapsed());
        }
        sent.iter().all(|(m, (id, _))| {
            arrivals.contains_key(m) || alice.status(id).is_some_and(|s| s.is_failure())
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", net.diagnostics()));
    // Late duplicates would show within a few fetch rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(r) = b_in.try_recv() {
        arrivals.entry(r.body).or_default().push(t0.elapsed());
    }

    let delivered = sent.keys().filter(|m| arrivals.contains_key(*m)).count();
    let failed = sent
        .values()
        .filter(|(id, _)| alice.status(id).is_some_and(|s| s.is_failure()))
        .count();
    let lost = sent
        .iter()
        .filter(|(m, (id, _))| {
            !arrivals.contains_key(*m) && !alice.status(id).is_some_and(|s| s.is_failure())
        })
        .count();
    let dups: usize = arrivals.values().map(|v| v.len() - 1).sum();
    // Delivery stopped: the longest time without an arrival, from the kill on.
    let mut times: Vec<Duration> = arrivals.values().flatten().copied().collect();
    times.push(killed_at);
    times.sort();
    let outage = times
        .windows(2)
        .filter(|w| w[1] >= killed_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let new_port = client_port(&net, gw(0)).await;
    let stored = sent
        .values()
        .filter(|(id, _)| matches!(alice.status(id), Some(Status::Stored | Status::Read)))
        .count();
    eprintln!(
        "entry gateway killed at {:.1} s, back 1 s later on port {new_port:?} (was {old_port:?}): {delivered}/{} delivered, {failed} failed, {lost} lost, {dups} duplicates, {stored} stored; delivery stopped for {:.1} s",
        killed_at.as_secs_f64(),
        sent.len(),
        outage.as_secs_f64()
    );
    assert_ne!(new_port, old_port, "the gateway came back elsewhere");
    assert!(
        alice.traffic().0 > 0,
        "the client reconnected to the restarted gateway"
    );
    assert_eq!(lost, 0);
    assert_eq!(dups, 0);
    assert_eq!(delivered, sent.len(), "{failed} failed");
    assert!(
        outage < Duration::from_secs(30),
        "delivery stopped for {outage:?}"
    );
    alice.shutdown();
    bob.shutdown();
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_client_moves_to_another_gateway_when_its_entry_dies() {
    let mut net = support::network_with(3).await;
    let topo = net.directory.topology().await.unwrap();
    let gateways: Vec<protocol::NodeId> = topo.gateways().map(|g| g.identity).collect();
    assert_eq!(gateways.len(), 3);
    // Alice enters through the gateway that dies; it must host none of
    // the pair's boxes now or in the next period (else what is stored
    // there waits for it to come back, which is not what this tests).
    let doomed = gateways[0];
    let secrets = pair_avoiding(&gateways, doomed);
    let cfg = support::client_config(&net);
    let failover = cfg.entry_failover;
    assert_eq!(failover, Duration::from_secs(30), "the default");
    let (alice, _a_in, bob, mut b_in, to_bob) = pair(&cfg, secrets, doomed, gateways[1]).await;
    assert_eq!(alice.entry_gateway(), doomed);

    // Alice sends every 100 ms for 8 s, her entry gateway dying at 3 s,
    // then 20 more once she has moved.
    let t0 = Instant::now();
    let mut sent: HashMap<Vec<u8>, client_sdk::MessageId> = HashMap::new();
    let mut arrivals: HashMap<Vec<u8>, Vec<Duration>> = HashMap::new();
    let mut killed_at = Duration::ZERO;
    for i in 0..80 {
        let m = format!("busy {i}").into_bytes();
        let id = alice.send(&to_bob, &m).await.unwrap();
        sent.insert(m, id);
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Some(r) = b_in.try_recv() {
            arrivals.entry(r.body).or_default().push(t0.elapsed());
        }
        if i == 30 {
            let idx = net
                .gateways
                .iter()
                .position(|g| g.node().identity == doomed)
                .unwrap();
            net.gateways.remove(idx).shutdown().await;
            killed_at = t0.elapsed();
        }
    }
    wait_until("alice moved", failover + Duration::from_secs(30), || {
        alice.entry_failovers() > 0
    })
    .await
    .unwrap();
    let moved_at = t0.elapsed();
    assert_ne!(alice.entry_gateway(), doomed);
    for i in 80..100 {
        let m = format!("busy {i}").into_bytes();
        let id = alice.send(&to_bob, &m).await.unwrap();
        sent.insert(m, id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until(
        "every message delivered or failed",
        Duration::from_secs(180),
        || {
            while let Some(r) = b_in.try_recv() {
                arrivals.entry(r.body).or_default().push(t0.elapsed());
            }
            sent.iter().all(|(m, id)| {
                arrivals.contains_key(m) || alice.status(id).is_some_and(|s| s.is_failure())
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", net.diagnostics()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(r) = b_in.try_recv() {
        arrivals.entry(r.body).or_default().push(t0.elapsed());
    }
    let delivered = sent.keys().filter(|m| arrivals.contains_key(*m)).count();
    let failed = sent
        .values()
        .filter(|id| alice.status(id).is_some_and(|s| s.is_failure()))
        .count();
    let lost = sent.len() - delivered - failed;
    let dups: usize = arrivals.values().map(|v| v.len() - 1).sum();
    let mut times: Vec<Duration> = arrivals.values().flatten().copied().collect();
    times.push(killed_at);
    times.sort();
    let outage = times
        .windows(2)
        .filter(|w| w[1] >= killed_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "entry gateway killed for good at {:.1} s; alice moved to another at {:.1} s ({} failover); {delivered}/{} delivered, {failed} failed, {lost} lost, {dups} duplicates; delivery stopped for {:.1} s",
        killed_at.as_secs_f64(),
        moved_at.as_secs_f64(),
        alice.entry_failovers(),
        sent.len(),
        outage.as_secs_f64()
    );
    assert_eq!(lost, 0);
    assert_eq!(dups, 0);
    assert_eq!(delivered, sent.len(), "{failed} failed");
    assert!(
        outage < failover + Duration::from_secs(20),
        "delivery stopped for {outage:?}"
    );
    alice.shutdown();
    bob.shutdown();
    net.stop().await;
}

/// Revocation: the directory's operators revoke a busy client's entry
/// gateway, which goes on running and answering. With it out of the
/// topology the client could build no SURB through it (nothing fetched, no
/// ack): after `entry_failover` it moves to another gateway, and nothing
/// sent before, during or after is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaves_an_entry_gateway_the_directory_revoked() {
    let net = support::network_with(3).await;
    let topo = net.directory.topology().await.unwrap();
    let gateways: Vec<protocol::NodeId> = topo.gateways().map(|g| g.identity).collect();
    let revoked = gateways[0];
    // None of the pair's boxes on it: what is stored there is not what this tests.
    let secrets = pair_avoiding(&gateways, revoked);
    let mut cfg = support::client_config(&net);
    cfg.topology_refresh = Duration::from_secs(1);
    cfg.entry_failover = Duration::from_secs(5);
    let failover = cfg.entry_failover;
    let (alice, _a_in, bob, mut b_in, to_bob) = pair(&cfg, secrets, revoked, gateways[1]).await;
    assert_eq!(alice.entry_gateway(), revoked);
    let gw = net
        .gateways
        .iter()
        .find(|g| g.node().identity == revoked)
        .unwrap();

    let t0 = Instant::now();
    let mut sent: HashMap<Vec<u8>, client_sdk::MessageId> = HashMap::new();
    let mut arrivals: HashMap<Vec<u8>, Vec<Duration>> = HashMap::new();
    let send = async |i: usize, sent: &mut HashMap<_, _>| {
        let m = format!("message {i}").into_bytes();
        let id = alice.send(&to_bob, &m).await.unwrap();
        sent.insert(m, id);
    };
    for i in 0..10 {
        send(i, &mut sent).await;
    }
    // Alice's messages reach Bob through her entry gateway.
    let through_it = gw.node().metrics().received.get();
    for m in &net.directory.members {
        assert!(m.directory.revoke(&revoked).unwrap());
    }
    let revoked_at = t0.elapsed();
    wait_until(
        "the topology drops the revoked gateway",
        Duration::from_secs(30),
        || alice.topology().node(&revoked).is_none(),
    )
    .await
    .unwrap();
    let dropped_at = t0.elapsed();
    // Alice is still subscribed there: the gateway answers her.
    assert_eq!(gw.metrics().clients.get(), 1);
    for i in 10..20 {
        send(i, &mut sent).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("alice moved", failover + Duration::from_secs(20), || {
        alice.entry_failovers() > 0
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", net.diagnostics()));
    let moved_at = t0.elapsed();
    assert_ne!(alice.entry_gateway(), revoked);
    // The revoked gateway was still running and answering her: the move
    // was for the revocation, not an outage; she left it.
    assert!(gw.node().metrics().received.get() > through_it);
    wait_until(
        "alice gone from the revoked gateway",
        Duration::from_secs(10),
        || gw.metrics().clients.get() == 0,
    )
    .await
    .unwrap();
    for i in 20..30 {
        send(i, &mut sent).await;
    }
    wait_until("every message delivered", Duration::from_secs(120), || {
        while let Some(r) = b_in.try_recv() {
            arrivals.entry(r.body).or_default().push(t0.elapsed());
        }
        sent.keys().all(|m| arrivals.contains_key(m))
    })
    .await
    .unwrap_or_else(|e| {
        let failed = sent
            .values()
            .filter(|id| alice.status(id).is_some_and(|s| s.is_failure()))
            .count();
        panic!(
            "{e}: {} of {} arrived, {failed} failed; {}",
            arrivals.len(),
            sent.len(),
            net.diagnostics()
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(r) = b_in.try_recv() {
        arrivals.entry(r.body).or_default().push(t0.elapsed());
    }
    let dups: usize = arrivals.values().map(|v| v.len() - 1).sum();
    eprintln!(
        "entry gateway revoked at {:.1} s, out of alice's topology at {:.1} s; she moved at {:.1} s \
         ({} failover) while it still answered; {} of {} delivered, {dups} duplicates",
        revoked_at.as_secs_f64(),
        dropped_at.as_secs_f64(),
        moved_at.as_secs_f64(),
        alice.entry_failovers(),
        arrivals.len(),
        sent.len()
    );
    assert_eq!(dups, 0);
    alice.shutdown();
    bob.shutdown();
    net.stop().await;
}

/// Alice (entering through `a_entry`) and Bob (through `b_entry`), with
/// these identity secrets, each the other's contact: Alice, her inbox, Bob,
/// his inbox, and Bob as Alice's contact.
async fn pair(
    cfg: &client_sdk::ClientConfig,
    (a_secret, b_secret): ([u8; 32], [u8; 32]),
    a_entry: protocol::NodeId,
    b_entry: protocol::NodeId,
) -> (
    Client,
    client_sdk::Inbox,
    Client,
    client_sdk::Inbox,
    client_sdk::ContactId,
) {
    let mut a_cfg = cfg.clone();
    a_cfg.entry_gateway = Some(a_entry);
    let mut b_cfg = cfg.clone();
    b_cfg.entry_gateway = Some(b_entry);
    let (alice, a_in) = Client::connect(a_cfg, Identity::from_secret(a_secret))
        .await
        .unwrap();
    let (bob, b_in) = Client::connect(b_cfg, Identity::from_secret(b_secret))
        .await
        .unwrap();
    let to_bob = alice.add_contact(&bob.invite("bob")).unwrap();
    bob.add_contact(&alice.invite("alice")).unwrap();
    (alice, a_in, bob, b_in, to_bob)
}

/// Two identity secrets none of whose pair's boxes (both directions, this
/// period and the next) lives on `avoid`.
fn pair_avoiding(gateways: &[protocol::NodeId], avoid: protocol::NodeId) -> ([u8; 32], [u8; 32]) {
    let period = protocol::dropbox::period_at(net::now_ms());
    loop {
        let (a, b): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
        let (pa, pb) = (
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(a)).to_bytes(),
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(b)).to_bytes(),
        );
        let pair = protocol::dropbox::PairSecret::derive(&x25519_dalek::StaticSecret::from(a), &pb)
            .unwrap();
        let hosts_none = [period, period + 1].iter().all(|&p| {
            [(pa, pb), (pb, pa)]
                .iter()
                .all(|(s, r)| pair.dropbox(s, r, p).gateway(gateways) != Some(avoid))
        });
        if hosts_none {
            return (a, b);
        }
    }
}

/// The client port a gateway publishes in the current topology.
async fn client_port(net: &MixNetwork, id: protocol::NodeId) -> Option<u16> {
    let t = net.directory.topology().await.ok()?;
    Some(t.node(&id)?.client_socket_addr()?.port())
}
