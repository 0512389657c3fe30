//! Clock skew: one client's clock is ten minutes ahead, another's ten
//! minutes behind (`dangerous().set_clock_offset_ms`). Each learns its
//! offset from the directory's answers (the HTTP `Date` header), logs one
//! warning saying how far off it is, and goes by the directory's time for
//! topology checks, dropbox periods and (coarse) fetch timestamps. They
//! exchange messages both ways: every one arrives once, none fails, and no
//! gateway refuses a fetch for its time.
//!
//! Without the correction neither could work: the client behind could not
//! even accept the topology (it is not valid yet on its clock; checked
//! below), and the gateway would refuse the fetches of the client behind
//! (their timestamps 600 s plus the transit old).

use client_sdk::{Client, Identity, Status};
use protocol::topology::NetworkParams;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use umbra::testnet::{MixNetwork, NetworkOptions, wait_until};

/// How far each client's clock is off, ms.
const SKEW_MS: i64 = 10 * 60_000;
/// Messages each way.
const N: usize = 10;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_ten_minutes_ahead_and_behind_exchange_messages() {
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
    let net = MixNetwork::start_with(NetworkOptions {
        per_layer: 1,
        gateways: 2,
        params,
        ..NetworkOptions::default()
    })
    .await
    .unwrap();
    let mut cfg = net.client_config().unwrap();
    cfg.fetch_interval = Duration::from_millis(500);
    cfg.catch_up_periods = 2;
    let mut ahead_cfg = cfg.clone();
    ahead_cfg.dangerous().set_clock_offset_ms(SKEW_MS);
    let mut behind_cfg = cfg;
    behind_cfg.dangerous().set_clock_offset_ms(-SKEW_MS);

    // The fault is real: on the clock of the client behind, the network's
    // topology is not valid yet (the network started a moment ago).
    let signed = net
        .directory
        .client()
        .unwrap()
        .topology(false)
        .await
        .unwrap();
    let behind_clock = net::now_ms() - SKEW_MS as u64;
    let refused =
        protocol::topology::verify_topology(&signed, &net.directory.trust(), behind_clock, None);
    assert!(
        refused.is_err(),
        "the topology verified on a clock 10 min behind"
    );

    let (ahead, mut ahead_in) = Client::connect(ahead_cfg, Identity::generate())
        .await
        .unwrap();
    let (behind, mut behind_in) = Client::connect(behind_cfg, Identity::generate())
        .await
        .unwrap();
    let to_behind = ahead.add_contact(&behind.invite("behind")).unwrap();
    let to_ahead = behind.add_contact(&ahead.invite("ahead")).unwrap();

    // The offsets were applied and learned: each device clock is 10 min
    // off, and each client's network time is within 2 s of the true one.
    for (c, skew) in [(&ahead, SKEW_MS), (&behind, -SKEW_MS)] {
        let truth = net::now_ms() as i64;
        let device = c.device_time_ms() as i64 - truth;
        assert!(
            (device - skew).abs() < 1_000,
            "device clock off by {device} ms"
        );
        let h = c.health();
        let learned = h.clock_offset_ms.expect("an offset from the directory");
        assert!(
            (learned + skew).abs() < 2_000,
            "learned offset {learned} ms"
        );
        let network = c.network_time_ms() as i64 - truth;
        assert!(network.abs() < 2_000, "network time off by {network} ms");
    }

    let started = Instant::now();
    let mut to_b: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut to_a: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..N {
        let m = format!("ahead→behind {i}").into_bytes();
        ids.push((ahead.clone(), ahead.send(&to_behind, &m).await.unwrap()));
        to_b.insert(m, 0);
        let m = format!("behind→ahead {i}").into_bytes();
        ids.push((behind.clone(), behind.send(&to_ahead, &m).await.unwrap()));
        to_a.insert(m, 0);
    }
    wait_until("every message delivered", Duration::from_secs(60), || {
        while let Some(m) = behind_in.try_recv() {
            *to_b.get_mut(&m.body).expect("a message ahead sent") += 1;
        }
        while let Some(m) = ahead_in.try_recv() {
            *to_a.get_mut(&m.body).expect("a message behind sent") += 1;
        }
        to_b.values().all(|n| *n >= 1) && to_a.values().all(|n| *n >= 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {to_b:?} {to_a:?}; {}", net.diagnostics()));
    let delivered_in = started.elapsed();
    wait_until("every message stored", Duration::from_secs(30), || {
        ids.iter()
            .all(|(c, id)| matches!(c.status(id), Some(Status::Stored | Status::Read)))
    })
    .await
    .unwrap();
    // A late duplicate would show within a few fetch rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(m) = behind_in.try_recv() {
        *to_b.get_mut(&m.body).unwrap() += 1;
    }
    while let Some(m) = ahead_in.try_recv() {
        *to_a.get_mut(&m.body).unwrap() += 1;
    }
    let delivered = to_b
        .values()
        .chain(to_a.values())
        .filter(|n| **n >= 1)
        .count();
    let dups: usize = to_b.values().chain(to_a.values()).map(|n| n - 1).sum();
    let failed = ids
        .iter()
        .filter(|(c, id)| c.status(id).is_some_and(|s| s.is_failure()))
        .count();
    let refused_time: u64 = net
        .gateways
        .iter()
        .map(|g| g.metrics().fetches_refused_time.get())
        .sum();

    // One clear warning each, naming the direction and the size.
    let warnings: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("this device's clock is"))
        .collect();
    let (ha, hb) = (ahead.health(), behind.health());
    eprintln!(
        "{delivered} of {} delivered in {delivered_in:?}, duplicates {dups}, failed {failed}; \
         fetches refused for time {refused_time}; learned offsets: ahead {:?} ms, behind {:?} ms; \
         clock warnings logged: {}",
        2 * N,
        ha.clock_offset_ms,
        hb.clock_offset_ms,
        warnings.len()
    );
    for w in &warnings {
        eprintln!("  {w}");
    }
    assert_eq!(delivered, 2 * N);
    assert_eq!(dups, 0);
    assert_eq!(failed, 0);
    assert_eq!(refused_time, 0, "a fetch was refused for its time");
    assert_eq!((ha.refused_replies, hb.refused_replies), (0, 0));
    assert_eq!((ha.clock_warnings, hb.clock_warnings), (1, 1));
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w.contains(" s ahead of the directory"))
            .count(),
        1,
        "{warnings:#?}"
    );
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w.contains(" s behind the directory"))
            .count(),
        1,
        "{warnings:#?}"
    );
    // The size is in each: 600 s, give or take the second of the `Date`.
    assert!(
        warnings.iter().all(
            |w| w.contains("WARN") && ["599 s", "600 s", "601 s"].iter().any(|s| w.contains(s))
        ),
        "{warnings:#?}"
    );
    ahead.shutdown();
    behind.shutdown();
    net.stop().await;
}
