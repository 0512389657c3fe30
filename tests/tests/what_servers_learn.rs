//! What each server learns, checked against what it logs and stores: after
//! Alice and Bob exchange messages, no info-level log line names a dropbox id,
//! a client's address or a user's key, and no server's files hold a user's
//! key or a message's plaintext.

use client_sdk::{Client, Identity};
use protocol::dropbox::{self, PairSecret};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use umbra::testnet::{MixNetwork, wait_until};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn files_under(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_logs_or_stores_who_talks_to_whom() {
    let logs = Capture::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();

    let net = MixNetwork::start(1, 2, Default::default(), 1)
        .await
        .unwrap();
    let mut cfg = net.client_config().unwrap();
    cfg.fetch_interval = Duration::from_millis(200);
    let (a_id, b_id) = (Identity::generate(), Identity::generate());
    let mut ca = cfg.clone();
    ca.entry_gateway = Some(net.gateways[0].node().identity);
    let mut cb = cfg;
    cb.entry_gateway = Some(net.gateways[1].node().identity);
    let (alice, _ai) = Client::connect(ca, a_id.clone()).await.unwrap();
    let (bob, mut bi) = Client::connect(cb, b_id.clone()).await.unwrap();
    let bob_c = alice.add_contact(&bob.invite("bob")).unwrap();
    bob.add_contact(&alice.invite("alice")).unwrap();
    let secret = b"the plaintext nobody but bob may read".to_vec();
    for _ in 0..3 {
        alice.send(&bob_c, &secret).await.unwrap();
    }
    let got = Arc::new(Mutex::new(0));
    let g = got.clone();
    tokio::spawn(async move {
        while let Some(m) = bi.recv().await {
            assert_eq!(m.body, b"the plaintext nobody but bob may read");
            *g.lock().unwrap() += 1;
        }
    });
    wait_until("3 messages to bob", Duration::from_secs(30), || {
        *got.lock().unwrap() == 3
    })
    .await
    .unwrap();
    // Send three more and stop Bob first, so the gateway holds them on disk.
    bob.shutdown();
    for _ in 0..3 {
        alice.send(&bob_c, &secret).await.unwrap();
    }
    wait_until("3 messages stored", Duration::from_secs(30), || {
        net.gateways
            .iter()
            .map(|g| g.metrics().stored.get())
            .sum::<u64>()
            >= 6
    })
    .await
    .unwrap();
    for g in &net.gateways {
        g.sync_storage().await;
    }

    // Secrets whose appearance would leak who talks to whom.
    let now = net::now_ms();
    let pair = PairSecret::derive(
        &x25519_dalek::StaticSecret::from(a_id.secret_bytes()),
        &b_id.public(),
    )
    .unwrap();
    let period = dropbox::period_at(now);
    let mut ids = vec![];
    for p in [period, period - 1] {
        ids.push(pair.dropbox(&a_id.public(), &b_id.public(), p).id);
        ids.push(pair.dropbox(&b_id.public(), &a_id.public(), p).id);
    }
    let mut forbidden: Vec<String> = ids
        .iter()
        .flat_map(|id| [hex::encode(id), hex::encode(&id[..6])])
        .collect();
    for who in [a_id.public(), b_id.public()] {
        forbidden.push(hex::encode(who));
        forbidden.push(hex::encode(&who[..6]));
    }
    for c in [&alice, &bob] {
        let port = c.local_addr().unwrap().port();
        forbidden.push(format!("127.0.0.1:{port}"));
    }

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.lines().count() > 10, "logs were captured:\n{text}");
    for f in &forbidden {
        assert!(
            !text.contains(f.as_str()),
            "an info-level log line names {f}:\n{text}"
        );
    }

    // What the servers keep on disk: dropbox ids and ciphertext at the
    // dropbox gateway (by design), never a user's key or any plaintext.
    let files = files_under(net.tmp.path());
    assert!(!files.is_empty());
    let stored_id = files.iter().any(|f| ids.iter().any(|id| contains(f, id)));
    assert!(
        stored_id,
        "the dropbox gateway stores the box id (sanity check of the scan)"
    );
    for f in &files {
        assert!(!contains(f, &secret), "plaintext on a server's disk");
        assert!(
            !contains(f, &a_id.public()) && !contains(f, &b_id.public()),
            "a user's key on a server's disk"
        );
    }
    alice.shutdown();
    net.stop().await;
}
