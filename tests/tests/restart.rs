//! Exactly once across restarts, with clients in separate processes killed
//! with SIGKILL (`kill -9`): the persistent client is the SDK's example
//! `chat` (client-sdk/examples/chat.rs) on an encrypted store; the network
//! and the other party run in this process.
//!
//! - The sender is killed in the middle of a 1 MiB message; restarted on
//!   its store, it resumes (it does not start the message over) and the
//!   message arrives once, intact.
//! - The recipient is killed three times while messages are fetched and not
//!   yet confirmed at the gateway; across its four runs every message lands
//!   in the application's record (the example's history file, written
//!   before it asks for the next message) exactly once.
//!
//! Needs the example: `cargo test --workspace` builds it (as
//! target/<profile>/examples/chat); set UMBRA_CHAT_BIN to use another.

use client_sdk::{Client, Identity};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use umbra::testnet::MixNetwork;

mod support;

fn chat_bin() -> PathBuf {
    umbra::testnet::built_binary(
        "UMBRA_CHAT_BIN",
        "examples/chat",
        "cargo build -p client-sdk --examples",
    )
}

/// The acked count of a `progress <id> <acked>/<count>` line.
fn acked(line: &str) -> u32 {
    line.rsplit(' ')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One run of the example, its stdout lines on a channel.
struct Chat {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: Vec<String>,
}

impl Chat {
    fn spawn(net: &MixNetwork, store: &Path) -> Self {
        let mut cmd = Command::new(chat_bin());
        cmd.arg("--store").arg(store);
        for a in &net.directory.refs {
            cmd.arg("--authority").arg(format!("{}={}", a.url, a.key));
        }
        cmd.args(["--threshold", &net.directory.threshold.to_string()])
            .args(["--fetch-interval-ms", "500"])
            .env("UMBRA_PASSPHRASE", "correct horse battery staple")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            reader: Some(reader),
            log: Vec::new(),
        }
    }

    fn cmd(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Lines until one satisfies `pred` (returned), within `secs`.
    fn until(&mut self, secs: u64, mut pred: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "timed out after {secs} s; last lines: {:?}",
                    &self.log[self.log.len().saturating_sub(10)..]
                ),
            }
        }
    }

    /// Every line that has arrived so far, without waiting.
    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
    }

    fn kill9(&mut self) {
        // SIGKILL: no chance to write anything more.
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-9", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = self.child.wait();
        // Every line it wrote before it died, to the end of its stdout.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.drain();
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_message_resumes_and_it_arrives_once() {
    let net = support::network().await;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("alice.umbra");
    let (bob, mut bob_in) = Client::connect(support::client_config(&net), Identity::generate())
        .await
        .unwrap();

    let mut alice = Chat::spawn(&net, &store);
    let ready = alice.until(60, |l| l.starts_with("ready "));
    let alice_id = ready["ready ".len()..].to_string();
    alice.cmd(&format!("add {}", bob.invite("bob")));
    alice.until(10, |l| l.starts_with("contact "));
    alice.cmd("invite alice");
    let inv = alice.until(10, |l| l.starts_with("invite "))["invite ".len()..].to_string();
    bob.add_contact(&inv).unwrap();

    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = tmp.path().join("picture.bin");
    std::fs::write(&file, &body).unwrap();
    alice.cmd(&format!(
        "sendfile {} {}",
        &hex(&bob.id().0)[..12],
        file.display()
    ));
    let queued = alice.until(30, |l| l.starts_with("queued "));
    let msg = queued["queued ".len()..].to_string();
    // Kill it a good way into the message.
    let at = alice.until(120, |l| {
        l.starts_with(&format!("progress {msg} ")) && acked(l) >= 150
    });
    alice.kill9();
    let acked_before = acked(&at);
    let count: u32 = at.rsplit('/').next().unwrap().parse().unwrap();
    assert!(acked_before < count, "killed before the message was stored");

    // Restarted on the same store: the same identity, the message resumed.
    let mut alice = Chat::spawn(&net, &store);
    let ready = alice.until(60, |l| l.starts_with("ready "));
    assert_eq!(ready["ready ".len()..], alice_id, "the identity survives");
    let resumed = alice.until(60, |l| l.starts_with(&format!("progress {msg} ")));
    let acked_after = acked(&resumed);
    eprintln!(
        "sender killed at {acked_before}/{count} fragments acked; resumed at {acked_after}/{count}"
    );
    assert!(
        acked_after + 100 >= acked_before,
        "it started over: {acked_after} after {acked_before}"
    );

    // Bob gets it once, intact.
    let m = tokio::time::timeout(Duration::from_secs(240), bob_in.recv())
        .await
        .expect("the message arrives")
        .unwrap();
    assert_eq!(hex(&m.id), msg);
    assert_eq!(Sha256::digest(&m.body), Sha256::digest(&body), "intact");
    alice.until(60, |l| l == format!("status {msg} Stored"));
    let again = tokio::time::timeout(Duration::from_secs(5), bob_in.recv()).await;
    assert!(again.is_err(), "a second copy arrived: {again:?}");
    eprintln!("sender restart: delivered once, duplicates 0");
    drop(alice);
    bob.shutdown();
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_killed_between_fetch_and_confirm_gets_each_message_once() {
    let net = support::network().await;
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("bob.umbra");
    let (alice, _alice_in) = Client::connect(support::client_config(&net), Identity::generate())
        .await
        .unwrap();
    let mut bob = Chat::spawn(&net, &store);
    bob.until(60, |l| l.starts_with("ready "));
    bob.cmd(&format!("add {}", alice.invite("alice")));
    bob.until(10, |l| l.starts_with("contact "));
    bob.cmd("invite bob");
    let inv = bob.until(10, |l| l.starts_with("invite "))["invite ".len()..].to_string();
    let to_bob = alice.add_contact(&inv).unwrap();

    const N: usize = 60;
    let mut sent = Vec::new();
    for i in 0..N {
        // Multi-fragment messages keep fetches in flight for longer.
        let body = vec![i as u8; 3 * client_sdk::CHUNK_LEN];
        sent.push(hex(&alice.send(&to_bob, &body).await.unwrap()));
    }

    // What the application holds: the example's history file, written
    // (and synced) before it asks for the next message.
    let history = PathBuf::from(format!("{}.history", store.display()));
    let held = || -> HashMap<String, usize> {
        let mut m: HashMap<String, usize> = HashMap::new();
        for l in std::fs::read_to_string(&history)
            .unwrap_or_default()
            .lines()
        {
            let id = l.split(' ').nth(1).unwrap().to_string();
            *m.entry(id).or_default() += 1;
        }
        m
    };
    let mut kills_with_unconfirmed = 0;
    let mut redelivered = 0;
    for round in 0..3 {
        // Wait until this run has received some and holds fetched,
        // unconfirmed fragments, then kill it.
        let target = 10 * (round + 1);
        let before = held().values().sum::<usize>();
        let mut got = 0;
        bob.until(180, |l| {
            if l.starts_with("received ") {
                got += 1;
            }
            got + before >= target && l.starts_with("unconfirmed ") && l != "unconfirmed 0"
        });
        bob.kill9();
        kills_with_unconfirmed += 1;
        redelivered += bob
            .log
            .iter()
            .filter(|l| l.starts_with("redelivered "))
            .count();
        bob = Chat::spawn(&net, &store);
        bob.until(60, |l| l.starts_with("ready "));
    }
    // The last run takes the rest.
    let deadline = Instant::now() + Duration::from_secs(240);
    while held().len() < N && Instant::now() < deadline {
        bob.drain();
        std::thread::sleep(Duration::from_millis(200));
    }
    // Anything more would be a duplicate: give it a moment to show.
    std::thread::sleep(Duration::from_secs(3));
    bob.drain();
    redelivered += bob
        .log
        .iter()
        .filter(|l| l.starts_with("redelivered "))
        .count();
    let total = held();
    let dups: usize = total.values().map(|n| n - 1).sum();
    let missing: Vec<&String> = sent.iter().filter(|id| !total.contains_key(*id)).collect();
    eprintln!(
        "recipient restarts: {kills_with_unconfirmed} kills with fetched, unconfirmed fragments; {} of {N} delivered, duplicates {dups}, missing {}; {redelivered} handed over again after a kill and found in the history",
        total.len(),
        missing.len()
    );
    assert_eq!(kills_with_unconfirmed, 3);
    assert!(
        missing.is_empty(),
        "lost: {:?}",
        missing
            .iter()
            .map(|id| (
                sent.iter().position(|s| s == *id),
                alice.status(&{
                    let mut b = [0u8; 16];
                    for (i, c) in b.iter_mut().enumerate() {
                        *c = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap();
                    }
                    b
                })
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(dups, 0, "handed over twice: {total:?}");
    drop(bob);
    alice.shutdown();
    net.stop().await;
}
