//! The network as separate OS processes of the `umbra` binary, configured by
//! `deploy/local/generate.sh`, on loopback. Two SDK clients (in this
//! process) exchange 50 messages each way; a 5 MiB file arrives byte-identical
//! and the sender's heap returns to its baseline; a mix node is killed
//! (SIGKILL) mid-run and no acknowledged message is lost; then the dropbox
//! gateway is killed (SIGKILL) while it holds acknowledged, unfetched
//! messages, restarted, and they are still delivered.
//!
//! Needs the `umbra` binary: `cargo test --workspace` builds it (as
//! target/<profile>/umbra); set UMBRA_BIN to use another.

use client_sdk::{Client, ClientConfig, ContactId, Identity, Inbox, Status};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

fn umbra_bin() -> PathBuf {
    umbra::testnet::built_binary("UMBRA_BIN", "umbra", "cargo build -p umbra")
}

/// Counts live heap bytes: only the clients allocate in this process (the
/// network runs in other processes), so this is the clients' memory.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `realloc` itself.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A base port with the 80 ports above it free for TCP and UDP.
fn free_base() -> u16 {
    for attempt in 0..50u16 {
        let base = 20_000 + (std::process::id() as u16 % 300) * 100 + attempt * 97 % 9000;
        let free = (0..80).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", base + i)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free port range");
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(addr: &str, name: &str) -> Option<f64> {
    let body = http_get(addr, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Procs(Vec<(String, PathBuf, Child)>);

impl Procs {
    fn spawn(&mut self, role: &str, cfg: &Path) {
        let log = std::fs::File::create(cfg.with_extension("log")).unwrap();
        let child = Command::new(umbra_bin())
            .args([role, "run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.0.push((role.to_string(), cfg.to_path_buf(), child));
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill9(&mut self, cfg: &Path) {
        let i = self.0.iter().position(|(_, c, _)| c == cfg).unwrap();
        let (_, _, mut child) = self.0.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn stop(&mut self, cfg: &Path) {
        let i = self.0.iter().position(|(_, c, _)| c == cfg).unwrap();
        let (_, _, mut child) = self.0.remove(i);
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{} exits cleanly", cfg.display());
                return;
            }
            assert!(Instant::now() < deadline, "{} did not stop", cfg.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn receive(inbox: &mut Inbox, want: usize, secs: u64) -> Vec<client_sdk::Received> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while got.len() < want {
        match tokio::time::timeout_at(deadline, inbox.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => break,
        }
    }
    // Anything more within a few fetch rounds would be a duplicate.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(1500), inbox.recv()).await {
        got.push(m);
    }
    got
}

/// Everything received was sent, unaltered, once.
fn check_subset(got: &[client_sdk::Received], sent: &HashMap<Vec<u8>, ContactId>) {
    let mut seen = std::collections::HashSet::new();
    for m in got {
        assert_eq!(
            sent.get(&m.body),
            Some(&m.from),
            "unexpected or altered message"
        );
        assert!(seen.insert(m.body.clone()), "duplicate delivery");
    }
}

/// Everything sent was received, unaltered, once.
fn check(got: &[client_sdk::Received], sent: &HashMap<Vec<u8>, ContactId>) {
    check_subset(got, sent);
    assert_eq!(got.len(), sent.len(), "every message arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_deliver_and_survive_a_gateway_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let base = free_base();
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/local/generate.sh"))
        .arg(tmp.path())
        .arg(base.to_string())
        .env("UMBRA", umbra_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generate.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let (url, key) = (field("directory_url"), field("authority_key"));

    let mut procs = Procs(Vec::new());
    let nodes = std::fs::read_to_string(tmp.path().join("nodes.txt")).unwrap();
    for line in nodes.lines() {
        let (role, cfg) = line.split_once(' ').unwrap();
        procs.spawn(role, Path::new(cfg));
    }
    let dir_addr = format!("127.0.0.1:{base}");
    // Every node registered, and every node routes to all 8.
    wait_for("8 nodes in the topology", 60, || {
        http_get(&dir_addr, "/v1/topology").is_some_and(|t| t.matches("sphinx_key").count() == 8)
    })
    .await;
    let metrics_addrs: Vec<(String, &str)> = (0..6)
        .map(|i| {
            (
                format!("127.0.0.1:{}", base + 30 + i),
                "umbra_mixnode_topology_nodes",
            )
        })
        .chain((0..2).map(|j| {
            (
                format!("127.0.0.1:{}", base + 70 + j),
                "umbra_gateway_topology_nodes",
            )
        }))
        .collect();
    wait_for("every node to route to all 8", 60, || {
        metrics_addrs.iter().all(|(a, m)| metric(a, m) == Some(8.0))
    })
    .await;

    let gateway_id = |j: usize| -> [u8; 32] {
        let t = http_get(&dir_addr, "/v1/topology").unwrap();
        let port = format!("127.0.0.1:{}", base + 60 + j as u16);
        // The identity of the gateway whose client address is `port`.
        let body = t.split("\r\n\r\n").nth(1).unwrap();
        let signed: serde_json::Value = serde_json::from_str(body).unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(signed["body"].as_str().unwrap()).unwrap();
        let node = doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["client_address"] == port.as_str())
            .unwrap();
        let mut id = [0u8; 32];
        hex::decode_to_slice(node["identity"].as_str().unwrap(), &mut id).unwrap();
        id
    };
    let mut cfg = ClientConfig::new(&url, &key).unwrap();
    cfg.fetch_interval = Duration::from_millis(250);
    // A restarted node has new Sphinx keys: clients learn them at their next
    // topology refresh (60 s by default; 5 s keeps this test short).
    cfg.topology_refresh = Duration::from_secs(5);
    let mut a_cfg = cfg.clone();
    a_cfg.entry_gateway = Some(gateway_id(0));
    let mut b_cfg = cfg.clone();
    b_cfg.entry_gateway = Some(gateway_id(1));
    // Bob keeps his state in a store: when he comes back (phase 4) he must
    // get what waited for him, and nothing he already had.
    let bob_store = tmp.path().join("bob.umbra");
    let (alice, mut alice_inbox) = Client::connect(a_cfg, Identity::generate()).await.unwrap();
    let (bob, mut bob_inbox) = Client::open(b_cfg.clone(), &bob_store, b"bob's passphrase")
        .await
        .unwrap();
    let bob_id = alice.add_contact(&bob.invite("bob")).unwrap();
    let alice_id = bob.add_contact(&alice.invite("alice")).unwrap();

    // 50 messages each way.
    let mut to_bob = HashMap::new();
    let mut to_alice = HashMap::new();
    for i in 0..50 {
        let a = format!("alice→bob {i}").into_bytes();
        alice.send(&bob_id, &a).await.unwrap();
        to_bob.insert(a, alice.id());
        let b = format!("bob→alice {i}").into_bytes();
        bob.send(&alice_id, &b).await.unwrap();
        to_alice.insert(b, bob.id());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (got_b, got_a) = tokio::join!(
        receive(&mut bob_inbox, 50, 90),
        receive(&mut alice_inbox, 50, 90)
    );
    check(&got_b, &to_bob);
    check(&got_a, &to_alice);
    println!("phase 1: 50/50 each way delivered exactly once");

    // A 5 MiB file, in fragments, with the sender's heap measured around it.
    let baseline = live_mib();
    let file: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let file_id = alice.send(&bob_id, &file).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(400), bob_inbox.recv())
        .await
        .expect("5 MiB file within 400 s")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(got.id, file_id);
    assert!(got.body == file, "the file arrives byte-identical");
    drop(got);
    drop(file);
    // Saved: the client may forget it (until then it keeps a copy, to hand
    // it over again if the process dies).
    bob_inbox.done().await.unwrap();
    wait_for("the file to be acknowledged and read", 60, || {
        alice.status(&file_id) == Some(Status::Read) && alice.outbox_len() == (0, 0)
    })
    .await;
    let after = live_mib();
    println!(
        "phase 2: 5 MiB delivered byte-identical in {:.1} s; client heap {baseline:.1} MiB before, {after:.1} MiB after",
        took.as_secs_f64()
    );
    assert!(
        after - baseline < 2.0,
        "client memory returns near its baseline: {baseline:.1} → {after:.1} MiB"
    );

    // A mix node is killed mid-run: its packets are lost, their fragments
    // are retransmitted over fresh routes. Every acknowledged message arrives.
    let mut in_flight = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..20 {
        let m = format!("through a dying mix node {i}").into_bytes();
        ids.push(alice.send(&bob_id, &m).await.unwrap());
        in_flight.insert(m, alice.id());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = tmp.path().join("mix0.toml");
    procs.kill9(&victim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    procs.spawn("mixnode", &victim);
    wait_for("every message stored or failed", 180, || {
        ids.iter().all(|id| {
            alice
                .status(id)
                .is_some_and(|s| s == Status::Stored || s == Status::Read || s.is_failure())
        })
    })
    .await;
    let acked: Vec<_> = ids
        .iter()
        .filter(|id| matches!(alice.status(id), Some(Status::Stored | Status::Read)))
        .collect();
    let got = receive(&mut bob_inbox, acked.len(), 120).await;
    for id in &acked {
        assert!(
            got.iter().any(|m| m.id == **id),
            "an acknowledged message was lost: {} acknowledged, {} received; statuses {:?}",
            acked.len(),
            got.len(),
            ids.iter().map(|i| alice.status(i)).collect::<Vec<_>>()
        );
    }
    check_subset(&got, &in_flight);
    println!(
        "phase 3: mix0 killed (SIGKILL) mid-run: {} of 20 acknowledged, all {} delivered; {} reported failed",
        acked.len(),
        got.len(),
        20 - acked.len()
    );

    // Bob goes offline; Alice leaves 5 messages in his dropbox and waits
    // for the gateway's acks: they are durably stored.
    drop(bob_inbox);
    bob.close().await;
    let stored = |j: u16| {
        metric(
            &format!("127.0.0.1:{}", base + 70 + j),
            "umbra_gateway_dropbox_stored_total",
        )
        .unwrap_or(0.0)
    };
    let before = [stored(0), stored(1)];
    let mut offline = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = format!("while bob was away {i}").into_bytes();
        ids.push(alice.send(&bob_id, &m).await.unwrap());
        offline.insert(m, alice.id());
    }
    wait_for("5 messages acknowledged", 60, || {
        ids.iter()
            .all(|id| alice.status(id) == Some(Status::Stored))
    })
    .await;
    let holder = if stored(0) > before[0] { 0 } else { 1 };

    // Kill the gateway that holds them (SIGKILL), and start it again.
    let cfg_path = tmp.path().join(format!("gateway{holder}.toml"));
    procs.kill9(&cfg_path);
    procs.spawn("gateway", &cfg_path);
    let maddr = format!("127.0.0.1:{}", base + 70 + holder as u16);
    wait_for("restarted gateway routes to all 8", 60, || {
        metric(&maddr, "umbra_gateway_topology_nodes") == Some(8.0)
    })
    .await;
    // Mix nodes pick up the gateway's new Sphinx key within a refresh or two.
    let mix_routes = || {
        (0..6).all(|i| {
            metric(
                &format!("127.0.0.1:{}", base + 30 + i),
                "umbra_mixnode_topology_nodes",
            ) == Some(8.0)
        })
    };
    wait_for("mix nodes route to the restarted gateway", 60, mix_routes).await;

    // Bob comes back from his store and fetches what waited for him, and
    // is handed nothing he already had.
    let (bob2, mut bob2_inbox) = Client::open(b_cfg, &bob_store, b"bob's passphrase")
        .await
        .unwrap();
    assert_eq!(bob2.id(), bob_id, "the store kept Bob's identity");
    assert_eq!(bob2.contacts(), vec![alice.id()], "and his contact");
    let got = receive(&mut bob2_inbox, 5, 90).await;
    check(&got, &offline);
    println!(
        "phase 4: 5/5 acknowledged messages delivered, once, after the dropbox gateway was killed (SIGKILL) and restarted (gateway{holder}), to a recipient back from its store"
    );
    alice.shutdown();
    bob2.shutdown();

    // Every process stops cleanly on SIGTERM.
    let cfgs: Vec<PathBuf> = procs.0.iter().map(|(_, c, _)| c.clone()).collect();
    for c in cfgs {
        procs.stop(&c);
    }
}
