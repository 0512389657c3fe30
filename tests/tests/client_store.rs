//! The client's store keeps nothing readable without the passphrase.
//!
//! Every file the store leaves on disk is scanned for what would tell who
//! talks to whom or what they said: the identity's secret and public keys,
//! the contact's key and name, the pair secret, the current and previous
//! dropbox ids, message ids, message text, the passphrase. The scan must
//! find none of them; and, to show the scan finds what is there, the same
//! records written without encryption are found by it.

use client_sdk::state::{ClientState, Now};
use client_sdk::store::{KdfParams, Store};
use client_sdk::{Client, ClientConfig, Error, Identity};
use protocol::dropbox::{self, PairSecret};
use protocol::topology::{EpochPublicKey, NetworkParams, NodeDescriptor, Role, TopologyDocument};
use rand::SeedableRng;
use std::path::Path;
use std::time::{Duration, Instant};
use umbra::testnet::{MixNetwork, NetworkOptions};

const PASSPHRASE: &[u8] = b"tulip-pencil-orbit-9471";
const NAME: &str = "Zyxwvut Contactname";
const TEXT: &str = "meet at the north gate at nine, bring the documents";

use net::now_ms as unix_ms;

/// Byte strings that must not appear in a store's files: each raw and as hex.
fn needles(me: &Identity, contact: &Identity, msg_ids: &[[u8; 16]]) -> Vec<(String, Vec<u8>)> {
    let pair = PairSecret::derive(
        &x25519_dalek::StaticSecret::from(me.secret_bytes()),
        &contact.public(),
    )
    .unwrap();
    let period = dropbox::period_at(unix_ms());
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("identity secret".into(), me.secret_bytes().to_vec()),
        ("identity public key".into(), me.public().to_vec()),
        ("contact key".into(), contact.public().to_vec()),
        ("contact name".into(), NAME.as_bytes().to_vec()),
        ("message text".into(), TEXT.as_bytes().to_vec()),
        ("passphrase".into(), PASSPHRASE.to_vec()),
    ];
    for p in [period, period - 1] {
        for (from, to) in [
            (me.public(), contact.public()),
            (contact.public(), me.public()),
        ] {
            let b = pair.dropbox(&from, &to, p);
            v.push((format!("dropbox id ({p})"), b.id.to_vec()));
            v.push((format!("dropbox content key ({p})"), b.content_key.to_vec()));
        }
    }
    for id in msg_ids {
        v.push(("message id".into(), id.to_vec()));
    }
    let hexed: Vec<(String, Vec<u8>)> = v
        .iter()
        .filter(|(what, _)| {
            what != "contact name" && what != "message text" && what != "passphrase"
        })
        .map(|(what, b)| {
            (
                format!("{what} (hex)"),
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
                    .into_bytes(),
            )
        })
        .collect();
    v.extend(hexed);
    v
}

/// Every needle found in any file under `dir`: (needle, file).
fn scan(dir: &Path, needles: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let mut hits = Vec::new();
    for entry in walk(dir) {
        let data = std::fs::read(&entry).unwrap();
        for (what, n) in needles {
            if data.windows(n.len()).any(|w| w == n.as_slice()) {
                hits.push((what.clone(), entry.display().to_string()));
            }
        }
    }
    hits
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn fake_topology() -> TopologyDocument {
    let descriptors: Vec<NodeDescriptor> = (1..=4u8)
        .map(|i| NodeDescriptor {
            identity: [i; 32],
            role: if i == 4 { Role::Gateway } else { Role::Mix },
            address: format!("127.0.0.1:{}", 4000 + u16::from(i)),
            client_address: (i == 4).then(|| "127.0.0.1:5000".to_string()),
            sphinx_keys: vec![EpochPublicKey {
                epoch: 0,
                key: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([i; 32]))
                    .to_bytes(),
            }],
            published_ms: 0,
        })
        .collect();
    let schedule = protocol::epoch::EpochSchedule::new(0, u64::MAX / 4).unwrap();
    TopologyDocument::build(0, 0, schedule, NetworkParams::default(), &descriptors)
}

#[test]
fn the_store_holds_no_plaintext_and_the_scan_would_see_it() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Identity::generate();
    let contact = Identity::generate();
    let cfg = ClientConfig::new("http://127.0.0.1:1", &"ab".repeat(32)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let now = Now {
        at: Instant::now(),
        unix_ms: unix_ms(),
    };
    // The contact's invite, made by the contact's own state.
    let mut theirs = ClientState::new(cfg.clone(), fake_topology(), now, &mut rng).unwrap();
    let their_id = theirs.add_identity(x25519_dalek::StaticSecret::from(contact.secret_bytes()));
    let invite = theirs.invite(&their_id, NAME).unwrap();
    let mut st = ClientState::new(cfg, fake_topology(), now, &mut rng).unwrap();
    let id = st.add_identity(x25519_dalek::StaticSecret::from(me.secret_bytes()));
    let c = st.add_contact(&id, &invite).unwrap();
    let m1 = st.send(now, &id, &c, TEXT.as_bytes(), &mut rng).unwrap();
    let m2 = st.send(now, &id, &c, &vec![1; 10_000], &mut rng).unwrap();
    // Fetch state of the contact's boxes too.
    st.handle_timeout(now);
    while st.poll_transmit(now, &mut rng).is_some() {}
    let changes = st
        .take_changes(now.after(Duration::from_millis(1)))
        .unwrap();
    let needles = needles(&me, &contact, &[m1, m2]);

    // Sanity: the same records without encryption; the scan finds them.
    let raw = tmp.path().join("raw");
    std::fs::create_dir(&raw).unwrap();
    let mut plain = Vec::new();
    for (k, v) in &changes.puts {
        plain.extend_from_slice(k);
        plain.extend_from_slice(v);
    }
    std::fs::write(raw.join("records.bin"), &plain).unwrap();
    let found = scan(&raw, &needles);
    let kinds: std::collections::BTreeSet<&str> = found.iter().map(|(w, _)| w.as_str()).collect();
    eprintln!("unencrypted: {} hits ({kinds:?})", found.len());
    for must in [
        "identity secret",
        "contact key",
        "contact name",
        "message id",
    ] {
        assert!(
            kinds.contains(must),
            "the sanity scan misses {must}: {kinds:?}"
        );
    }

    // The store: nothing.
    let dir = tmp.path().join("store");
    let kdf = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };
    let (store, recs) = Store::open(&dir.join("client.umbra"), PASSPHRASE, kdf).unwrap();
    assert!(recs.is_empty());
    store.commit(&changes).unwrap();
    drop(store);
    let hits = scan(&dir, &needles);
    eprintln!(
        "encrypted store: {} hits of {} needles; {} bytes of records for 2 messages ({} B of bodies)",
        hits.len(),
        needles.len(),
        changes.bytes(),
        TEXT.len() + 10_000
    );
    assert!(hits.is_empty(), "readable in the store: {hits:?}");

    // A wrong passphrase: refused, and the store still opens with the right one.
    assert!(matches!(
        Store::open(&dir.join("client.umbra"), b"wrong", kdf),
        Err(Error::WrongPassphrase)
    ));
    let (_, recs) = Store::open(&dir.join("client.umbra"), PASSPHRASE, kdf).unwrap();
    assert_eq!(recs.len(), changes.puts.len());
    // And restores the same client.
    let back = ClientState::restore(
        ClientConfig::new("http://127.0.0.1:1", &"ab".repeat(32)).unwrap(),
        fake_topology(),
        recs,
        now,
        &mut rng,
    )
    .unwrap();
    assert_eq!(back.identities(), vec![id]);
    assert_eq!(back.contact_name(&id, &c).as_deref(), Some(NAME));
    let mut pending = back.pending_messages();
    pending.sort();
    let mut want = vec![m1, m2];
    want.sort();
    assert_eq!(pending, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_running_on_its_store_leaves_no_plaintext() {
    let net = MixNetwork::start_with(NetworkOptions {
        per_layer: 1,
        gateways: 1,
        params: NetworkParams {
            mix_delay_mean_ms: 20,
            lambda_payload: 50.0,
            lambda_downlink: 120.0,
            ..NetworkParams::default()
        },
        ..NetworkOptions::default()
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("me").join("client.umbra");
    let mut cfg = net.client_config().unwrap();
    cfg.fetch_interval = Duration::from_millis(300);
    cfg.catch_up_periods = 2;
    cfg.store_kdf = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };
    let contact = Identity::generate();
    let (other, mut other_in) = Client::connect(cfg.clone(), contact.clone()).await.unwrap();
    let (me_client, mut inbox) = Client::open(cfg.clone(), &path, PASSPHRASE).await.unwrap();
    let c = me_client.add_contact(&other.invite(NAME)).unwrap();
    let to_me = other.add_contact(&me_client.invite("x")).unwrap();
    let sent = me_client.send(&c, TEXT.as_bytes()).await.unwrap();
    let back = other.send(&to_me, TEXT.as_bytes()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), other_in.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.body, TEXT.as_bytes());
    let mine = tokio::time::timeout(Duration::from_secs(60), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mine.body, TEXT.as_bytes());
    // The secret is the store's: recover it from a reopened client.
    me_client.close().await;
    drop(inbox);
    let (again, _) = Client::open(cfg.clone(), &path, PASSPHRASE).await.unwrap();
    assert_eq!(again.contacts(), vec![c], "contacts survive a restart");
    assert_eq!(again.contact_name(&c).as_deref(), Some(NAME));
    let me_id = again.id();
    again.close().await;
    assert!(matches!(
        Client::open(cfg, &path, b"not the passphrase").await,
        Err(Error::WrongPassphrase)
    ));
    // Scan: we know the public keys and ids; the secret we check through
    // the pair secret's dropbox ids and keys, which derive from it.
    let needles: Vec<(String, Vec<u8>)> = {
        let mut v = vec![
            ("identity public key".to_string(), me_id.0.to_vec()),
            ("contact key".into(), contact.public().to_vec()),
            ("contact name".into(), NAME.as_bytes().to_vec()),
            ("message text".into(), TEXT.as_bytes().to_vec()),
            ("passphrase".into(), PASSPHRASE.to_vec()),
            ("message id".into(), sent.to_vec()),
            ("message id".into(), back.to_vec()),
        ];
        let pair = PairSecret::derive(
            &x25519_dalek::StaticSecret::from(contact.secret_bytes()),
            &me_id.0,
        )
        .unwrap();
        let period = dropbox::period_at(unix_ms());
        for p in [period, period - 1] {
            for (from, to) in [(me_id.0, contact.public()), (contact.public(), me_id.0)] {
                v.push(("dropbox id".into(), pair.dropbox(&from, &to, p).id.to_vec()));
            }
        }
        v
    };
    let hits = scan(tmp.path(), &needles);
    assert!(hits.is_empty(), "readable in the store: {hits:?}");
    other.shutdown();
    net.stop().await;
}
