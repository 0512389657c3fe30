//! The gateway → client link looks the same whatever the client does.
//!
//! An observer of a client's link (its ISP, or anyone who sees its traffic)
//! watches three clients of one entry gateway: one idle, one sending a
//! 1 MiB message, one draining a full dropbox. Before the constant-rate
//! downlink, the fetching client got four Deliver frames per fetch, the
//! sender one per acked fragment and the idle client only its loops, so
//! frame counts told them apart at a glance. Now the gateway sends each
//! client a Poisson stream at λ_D, a dummy when nothing is queued: the
//! frames each client receives in a window, and the times between them,
//! must be indistinguishable (two-sample KS at α = 0.01 on each pair, and
//! equal counts within Poisson noise), while the clients really were idle,
//! sending and fetching (checked from their own counters).

use client_sdk::{Client, ClientConfig, Identity, Invite, Status};
use net::faults::{LinkObserver, Observed};
use protocol::topology::NetworkParams;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use umbra::testnet::{MixNetwork, NetworkOptions, wait_until};

/// Transmits of at least this many bytes carry a Deliver frame (2076 bytes
/// on the stream); ACK-only packets and keep-alives are far smaller.
const FRAME_BYTES: usize = 1000;
/// λ_D of the test network, frames/s.
const LAMBDA_D: f64 = 48.0;

/// An invite for an identity whose client does not run yet: its public
/// key, with session keys of no account (messages to it are stored and
/// fetched, which is what this test watches, but do not decrypt).
fn invite(id: &Identity, name: &str) -> String {
    let key = || Identity::generate().public();
    Invite {
        public: id.public(),
        olm_identity: key(),
        one_time_key: key(),
        name: name.into(),
    }
    .to_string()
}

/// Two-sample Kolmogorov–Smirnov statistic and its asymptotic p-value.
fn ks(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    let en = (n * m / (n + m)).sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    let mut p = 0.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let term = 2.0 * (-1f64).powf(k - 1.0) * (-2.0 * k * k * lambda * lambda).exp();
        p += term;
        if term.abs() < 1e-12 {
            break;
        }
    }
    (d, p.clamp(0.0, 1.0))
}

/// What the observer saw of one client's downlink in `[from, to)`: the
/// frame-carrying transmits' times.
fn frames(seen: &[Observed], client_port: u16, from: Instant, to: Instant) -> Vec<Instant> {
    seen.iter()
        .filter(|o| o.to.port() == client_port && o.bytes >= FRAME_BYTES)
        .filter(|o| o.at >= from && o.at < to)
        .map(|o| o.at)
        .collect()
}

fn gaps(times: &[Instant]) -> Vec<f64> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect()
}

struct Window {
    counts: [usize; 3],
    p: [f64; 3],
    d: [f64; 3],
    counts_ok: bool,
}

fn judge(seen: &[Observed], ports: [u16; 3], from: Instant, to: Instant) -> Window {
    let f: Vec<Vec<Instant>> = ports.iter().map(|p| frames(seen, *p, from, to)).collect();
    let g: Vec<Vec<f64>> = f.iter().map(|t| gaps(t)).collect();
    let pairs = [(0, 1), (0, 2), (1, 2)];
    let mut p = [0.0; 3];
    let mut d = [0.0; 3];
    let mut counts_ok = true;
    for (k, (i, j)) in pairs.iter().enumerate() {
        (d[k], p[k]) = ks(&g[*i], &g[*j]);
        let (a, b) = (f[*i].len() as f64, f[*j].len() as f64);
        // Difference of two Poisson counts: z-test at α = 0.01.
        counts_ok &= (a - b).abs() <= 2.576 * (a + b).sqrt();
    }
    Window {
        counts: [f[0].len(), f[1].len(), f[2].len()],
        p,
        d,
        counts_ok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sending_and_fetching_clients_have_the_same_downlink() {
    let observer = Arc::new(LinkObserver::default());
    net::faults::observe_links(Some(observer.clone()));
    let params = NetworkParams {
        mix_delay_mean_ms: 20,
        lambda_payload: 20.0,
        lambda_loop: 1.0,
        lambda_downlink: LAMBDA_D,
        ..NetworkParams::default()
    };
    let net = MixNetwork::start_with(NetworkOptions {
        per_layer: 1,
        gateways: 1,
        params,
        ..NetworkOptions::default()
    })
    .await
    .unwrap();
    // Only the network's sockets are watched; clients' own are not needed.
    net::faults::observe_links(None);
    let gw = &net.gateways[0];
    let gw_addr: SocketAddr = gw.client_addr;
    let mut cfg: ClientConfig = net.client_config().unwrap();
    cfg.entry_gateway = Some(gw.node().identity);
    cfg.catch_up_periods = 2;
    cfg.fetch_interval = Duration::from_secs(2);

    // 1. Fill a dropbox while its reader is offline: three writers, so that
    //    it fills in a few seconds at λ_P = 20 each.
    let reader = Identity::generate();
    let mut writers = Vec::new();
    for i in 0..3 {
        let (w, _inbox) = Client::connect(cfg.clone(), Identity::generate())
            .await
            .unwrap();
        let to = w.add_contact(&invite(&reader, "reader")).unwrap();
        let body = vec![i as u8; 240 * client_sdk::CHUNK_LEN];
        let id = w.send(&to, &body).await.unwrap();
        writers.push((w, _inbox, id));
    }
    wait_until(
        "the reader's boxes to fill (3 × 191 batched fragments, with the envelope)",
        Duration::from_secs(120),
        || {
            writers
                .iter()
                .all(|(w, _, id)| w.status(id) == Some(Status::Stored))
        },
    )
    .await
    .unwrap();

    // 2. The three observed clients.
    let (idle, _i_inbox) = Client::connect(cfg.clone(), Identity::generate())
        .await
        .unwrap();
    let (sender, _s_inbox) = Client::connect(cfg.clone(), Identity::generate())
        .await
        .unwrap();
    let absent = Identity::generate();
    let to = sender.add_contact(&invite(&absent, "absent")).unwrap();
    let upload = sender.send(&to, &vec![7u8; 1024 * 1024]).await.unwrap();
    let (fetcher, mut f_inbox) = Client::connect(cfg.clone(), reader).await.unwrap();
    for (i, (w, _, _)) in writers.iter().enumerate() {
        fetcher
            .add_contact(&w.invite(&format!("writer{i}")))
            .unwrap();
    }
    // Let each stream settle, then watch two back-to-back windows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let port = |c: &Client| c.local_addr().expect("connected").port();
    let ports = [port(&idle), port(&sender), port(&fetcher)];
    let before = [
        idle.cover_stats(),
        sender.cover_stats(),
        fetcher.cover_stats(),
    ];
    let sent_before = sender.progress(&upload).map_or(0, |p| p.have);
    let t0 = Instant::now();
    let half = Duration::from_secs(12);
    tokio::time::sleep(2 * half).await;
    let t2 = Instant::now();
    let after = [
        idle.cover_stats(),
        sender.cover_stats(),
        fetcher.cover_stats(),
    ];
    let sent_after = sender.progress(&upload).map_or(0, |p| p.have);

    let seen = observer.sent_by(gw_addr);
    let windows = [
        judge(&seen, ports, t0, t0 + half),
        judge(&seen, ports, t0 + half, t2),
    ];
    for (k, w) in windows.iter().enumerate() {
        eprintln!(
            "window {k}: frames idle/sending/fetching {:?}; KS (idle,sending) D={:.3} p={:.3}, (idle,fetching) D={:.3} p={:.3}, (sending,fetching) D={:.3} p={:.3}; counts within Poisson noise: {}",
            w.counts, w.d[0], w.p[0], w.d[1], w.p[1], w.d[2], w.p[2], w.counts_ok
        );
    }

    // The three were what they were meant to be during the windows: the
    // fetcher's frames were mostly real, the idle client's mostly dummies,
    // and the sender's upload advanced.
    let dummies: Vec<u64> = (0..3)
        .map(|i| after[i].downlink_dummies - before[i].downlink_dummies)
        .collect();
    let expected = LAMBDA_D * (2 * half).as_secs_f64();
    eprintln!(
        "dummies received idle/sending/fetching {dummies:?} of about {expected:.0} frames each; upload fragments acked {sent_before} → {sent_after}"
    );
    assert!(
        (dummies[0] as f64) > 0.8 * expected,
        "the idle client got real traffic? {dummies:?}"
    );
    assert!(
        (dummies[2] as f64) < 0.5 * expected,
        "the fetcher was not fetching much: {dummies:?}"
    );
    assert!(
        sent_after >= sent_before + 100,
        "the upload stalled: {sent_before} → {sent_after}"
    );
    // The observer saw about λ_D frames a second on each link.
    for w in &windows {
        for c in w.counts {
            let e = LAMBDA_D * half.as_secs_f64();
            assert!(
                (c as f64 - e).abs() < 5.0 * e.sqrt() + 0.1 * e,
                "{c} frames, about {e:.0} expected: {:?}",
                w.counts
            );
        }
    }
    // Indistinguishable: every pair passes KS at α = 0.01 and the counts
    // agree within Poisson noise, in one window at least. (Under the null,
    // three tests at α = 0.01 all pass with probability 0.97; asking it of
    // one of two independent windows keeps a false failure near 1 in 1000,
    // while a real difference, such as the old downlink's 1 frame a second
    // against 20, fails both by a wide margin: p < 1e-20.)
    assert!(
        windows
            .iter()
            .any(|w| w.p.iter().all(|p| *p > 0.01) && w.counts_ok),
        "an observer tells the clients apart"
    );
    drop(f_inbox.try_recv());
    net.stop().await;
}
