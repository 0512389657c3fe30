//! Directory outage: on a network of 5 s epochs, the only authority is
//! stopped (connections to it refused) for two epochs while two clients
//! exchange messages, then started again on the same address and data.
//!
//! What happens: every refresh fails and is counted and warned about (with
//! how long the topology held stays usable); clients and nodes go on with
//! the last valid topology, then with the next epoch's, fetched ahead. Its
//! keys are kept by the nodes for its epoch plus `3 · max_delay + 120 s`,
//! at most one epoch (5 s here), so they outlast the outage and
//! messages keep flowing on them: nothing is lost, and the
//! test prints the delays before, during and after the outage. Once the
//! authority is back, the nodes register again and the clients take the new
//! epoch's topology. (When an outage outlasts the keys, fragments and
//! fetches wait instead of being sent into erased keys: see the client-sdk
//! unit test `fragments_and_fetches_wait_while_the_topology_keys_are_gone`.)

use client_sdk::{Client, Identity, Status};
use protocol::topology::NetworkParams;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use umbra::testnet::{MixNetwork, NetworkOptions, wait_until};

/// Epoch length, seconds (production: 3600).
const EPOCH_SECS: u64 = 5;

/// Everything logged at warn and above, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Sends one message each way; remembers when.
struct Traffic {
    t0: Instant,
    sent: HashMap<Vec<u8>, (Duration, &'static str)>,
    arrived: HashMap<Vec<u8>, Vec<Duration>>,
    ids: Vec<(Client, client_sdk::MessageId)>,
}

impl Traffic {
    fn take(&mut self, inbox: &mut client_sdk::Inbox) {
        while let Some(m) = inbox.try_recv() {
            assert!(self.sent.contains_key(&m.body), "a message no one sent");
            self.arrived
                .entry(m.body)
                .or_default()
                .push(self.t0.elapsed());
        }
    }

    fn delays(&self, phase: &str) -> Vec<Duration> {
        let mut d: Vec<Duration> = self
            .sent
            .iter()
            .filter(|(_, (_, p))| *p == phase)
            .filter_map(|(m, (at, _))| Some(self.arrived.get(m)?[0] - *at))
            .collect();
        d.sort();
        d
    }
}

fn summary(d: &[Duration]) -> String {
    if d.is_empty() {
        return "none".into();
    }
    format!(
        "{} messages, median {:.2} s, max {:.2} s",
        d.len(),
        d[d.len() / 2].as_secs_f64(),
        d[d.len() - 1].as_secs_f64()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_epochs_without_a_directory_lose_nothing() {
    let logs = Captured::default();
    let sink = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || sink.clone())
            .finish(),
    )
    .unwrap();
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
    let mut tr = Traffic {
        t0: Instant::now(),
        sent: HashMap::new(),
        arrived: HashMap::new(),
        ids: Vec::new(),
    };
    let mut n = 0;
    let mut send = async |tr: &mut Traffic, phase: &'static str| {
        let a = format!("{phase} alice→bob {n}").into_bytes();
        tr.ids
            .push((alice.clone(), alice.send(&to_bob, &a).await.unwrap()));
        tr.sent.insert(a, (tr.t0.elapsed(), phase));
        let b = format!("{phase} bob→alice {n}").into_bytes();
        tr.ids
            .push((bob.clone(), bob.send(&to_alice, &b).await.unwrap()));
        tr.sent.insert(b, (tr.t0.elapsed(), phase));
        n += 1;
    };

    // Before: five each way, delivered.
    for _ in 0..5 {
        send(&mut tr, "before").await;
    }
    wait_until("the first messages", Duration::from_secs(30), || {
        tr.take(&mut a_in);
        tr.take(&mut b_in);
        tr.arrived.len() == 10
    })
    .await
    .unwrap();

    // The directory goes down, and stays down for two epochs, 3 to 4 s
    // into an epoch (where this run's timing put it anyway): the clients
    // fetch the next epoch's document 1 s into each epoch, and stopped in
    // an epoch's first second they did not have it, and the outage outlasted
    // the keys they held (one failure in a workspace run, every one of four
    // when the test waited for a new epoch). Stopped 1.5 to 3 s in, two of
    // three runs had messages sent in the outage's first 5 s arrive only
    // after it, before the node links were fixed; six of six passed after
    // (see docs/reliability.md).
    let schedule = alice.topology().schedule;
    wait_until(
        "3 to 4 s into an epoch",
        Duration::from_secs(2 * EPOCH_SECS),
        || {
            let now = alice.network_time_ms();
            let into = now.saturating_sub(schedule.start_ms(schedule.epoch_at(now)));
            (3_000..4_000).contains(&into)
        },
    )
    .await
    .unwrap();
    let held_epoch = alice.topology().epoch;
    let nodes_failed_before: u64 = net
        .mixnodes
        .iter()
        .map(|m| m.metrics().topology_refresh_failures.get())
        .sum();
    net.directory.stop_all().await;
    let down_at = tr.t0.elapsed();
    let down_epoch = schedule.epoch_at(alice.network_time_ms());
    let addr = net.directory.url.trim_start_matches("http://").to_string();
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(
        refused.is_err(),
        "the directory still accepts connections at {addr}"
    );
    let down_since = Instant::now();
    while down_since.elapsed() < Duration::from_secs(2 * EPOCH_SECS) {
        send(&mut tr, "during").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        tr.take(&mut a_in);
        tr.take(&mut b_in);
    }
    // Both clients tried (at each epoch start) and failed, and said so.
    wait_until("refreshes to fail", Duration::from_secs(15), || {
        tr.take(&mut a_in);
        tr.take(&mut b_in);
        alice.health().topology_refresh_failures >= 2 && bob.health().topology_refresh_failures >= 2
    })
    .await
    .unwrap();
    let up_at = tr.t0.elapsed();
    let (ha, hb) = (alice.health(), bob.health());
    let now = alice.network_time_ms();
    let nodes_failed: u64 = net
        .mixnodes
        .iter()
        .map(|m| m.metrics().topology_refresh_failures.get())
        .sum::<u64>()
        - nodes_failed_before;
    let during_delivered = tr
        .sent
        .iter()
        .filter(|(m, (_, p))| *p == "during" && tr.arrived.contains_key(*m))
        .count();
    let during_sent = tr.sent.values().filter(|(_, p)| *p == "during").count();
    assert!(
        schedule.epoch_at(now) >= down_epoch + 2,
        "the outage spanned two epoch boundaries"
    );
    assert!(nodes_failed > 0, "the mix nodes' refreshes failed too");
    assert!(
        now < ha.topology_usable_until_ms,
        "the held topology's keys are still kept"
    );
    assert!(
        ha.topology_epoch > held_epoch,
        "the clients moved to the next epoch's topology, published ahead"
    );

    // The directory comes back on the same address and data.
    net.directory.restart().await.unwrap();
    let back = Instant::now();
    wait_until("a new topology", Duration::from_secs(30), || {
        alice.topology().epoch > ha.topology_epoch && bob.topology().epoch > hb.topology_epoch
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", net.diagnostics()));
    let refreshed_in = back.elapsed();
    for _ in 0..5 {
        send(&mut tr, "after").await;
    }
    wait_until("every message delivered", Duration::from_secs(60), || {
        tr.take(&mut a_in);
        tr.take(&mut b_in);
        tr.arrived.len() == tr.sent.len()
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} of {} arrived; {}",
            tr.arrived.len(),
            tr.sent.len(),
            net.diagnostics()
        )
    });
    wait_until("every message stored", Duration::from_secs(60), || {
        tr.ids
            .iter()
            .all(|(c, id)| matches!(c.status(id), Some(Status::Stored | Status::Read)))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tr.take(&mut a_in);
    tr.take(&mut b_in);
    let dups: usize = tr.arrived.values().map(|v| v.len() - 1).sum();
    let failed = tr
        .ids
        .iter()
        .filter(|(c, id)| c.status(id).is_some_and(|s| s.is_failure()))
        .count();
    eprintln!(
        "outage 1: directory down {:.1} s (epochs {down_epoch}..{}, connections refused); \
         clients kept epoch {held_epoch}'s topology, then took epoch {}'s published ahead; \
         refresh failures: alice {}, bob {}, mix nodes {nodes_failed}; \
         {during_delivered} of {during_sent} sent during it delivered before it ended; \
         new topology {:.1} s after the directory came back (epoch {}); \
         {} of {} delivered, duplicates {dups}, failed {failed}",
        (up_at - down_at).as_secs_f64(),
        schedule.epoch_at(now),
        ha.topology_epoch,
        ha.topology_refresh_failures,
        hb.topology_refresh_failures,
        refreshed_in.as_secs_f64(),
        alice.topology().epoch,
        tr.arrived.len(),
        tr.sent.len(),
    );
    for phase in ["before", "during", "after"] {
        eprintln!("  delay {phase}: {}", summary(&tr.delays(phase)));
    }
    assert_eq!(tr.arrived.len(), tr.sent.len());
    assert_eq!(dups, 0);
    assert_eq!(failed, 0);
    // Messages kept flowing while the directory was down: every one sent
    // more than 5 s before it came back had arrived by then.
    let early_missing = tr
        .sent
        .iter()
        .filter(|(m, (at, p))| {
            *p == "during" && *at + Duration::from_secs(5) < up_at && tr.arrived[*m][0] > up_at
        })
        .count();
    assert_eq!(early_missing, 0, "messages waited for the directory");

    // Outage 2: down until the keys of every topology the clients hold are
    // erased. They hold their fragments and fetches (drop cover only) and
    // say so once; nothing is sent into erased keys, nothing fails.
    let held_before = (alice.cover_stats().held_ticks, bob.cover_stats().held_ticks);
    net.directory.stop_all().await;
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    let down2 = Instant::now();
    let mut held_since = None;
    while held_since.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(2)) {
        assert!(
            down2.elapsed() < Duration::from_secs(30),
            "the clients never held: {:?} {:?}",
            alice.health(),
            alice.cover_stats()
        );
        send(&mut tr, "long").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        tr.take(&mut a_in);
        tr.take(&mut b_in);
        if held_since.is_none()
            && alice.cover_stats().held_ticks > held_before.0
            && bob.cover_stats().held_ticks > held_before.1
        {
            held_since = Some(Instant::now());
        }
    }
    let expired = alice.network_time_ms() > alice.health().topology_usable_until_ms;
    assert!(expired, "the held topology's keys had not expired");
    let long_down = down2.elapsed();
    let held_for = held_since.map_or(Duration::ZERO, |t| t.elapsed());
    let failed_sends = tr
        .ids
        .iter()
        .filter(|(c, id)| c.status(id).is_some_and(|s| s.is_failure()))
        .count();
    net.directory.restart().await.unwrap();
    let back2 = Instant::now();
    wait_until(
        "every message delivered after outage 2",
        Duration::from_secs(60),
        || {
            tr.take(&mut a_in);
            tr.take(&mut b_in);
            tr.arrived.len() == tr.sent.len()
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} of {} arrived; {}",
            tr.arrived.len(),
            tr.sent.len(),
            net.diagnostics()
        )
    });
    let drained_in = back2.elapsed();
    wait_until("every message stored", Duration::from_secs(60), || {
        tr.ids
            .iter()
            .all(|(c, id)| matches!(c.status(id), Some(Status::Stored | Status::Read)))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tr.take(&mut a_in);
    tr.take(&mut b_in);
    let dups: usize = tr.arrived.values().map(|v| v.len() - 1).sum();
    let failed = tr
        .ids
        .iter()
        .filter(|(c, id)| c.status(id).is_some_and(|s| s.is_failure()))
        .count();
    let expired_warnings = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("have expired: messages and fetches wait"))
        .count();
    let (ca, cb) = (alice.cover_stats(), bob.cover_stats());
    eprintln!(
        "outage 2: directory down {:.1} s, until the held topologies' keys expired; \
         clients held for {:.1} s ({} and {} payload ticks held, each client warned {} time(s) in all); \
         0 failed while held ({failed_sends}); everything delivered {:.1} s after the directory came back; \
         {} of {} delivered in all, duplicates {dups}, failed {failed}",
        long_down.as_secs_f64(),
        held_for.as_secs_f64(),
        ca.held_ticks - held_before.0,
        cb.held_ticks - held_before.1,
        expired_warnings as f64 / 2.0,
        drained_in.as_secs_f64(),
        tr.arrived.len(),
        tr.sent.len(),
    );
    eprintln!("  delay long: {}", summary(&tr.delays("long")));
    assert_eq!(failed_sends, 0);
    assert_eq!(tr.arrived.len(), tr.sent.len());
    assert_eq!(dups, 0);
    assert_eq!(failed, 0);
    assert_eq!(expired_warnings, 2, "one expiry warning per client");
    alice.shutdown();
    bob.shutdown();
    net.stop().await;
}
