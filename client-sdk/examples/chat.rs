//! A two-party chat on the terminal that keeps its state in an encrypted
//! store, so it goes on where it stopped after a restart (or a crash).
//!
//! ```text
//! UMBRA_PASSPHRASE='a long passphrase' cargo run -p client-sdk --example chat -- \
//!     --store alice.umbra --authority http://127.0.0.1:8000=<authority key hex>
//! ```
//!
//! The passphrase comes from the `UMBRA_PASSPHRASE` environment variable or
//! the file named by `--passphrase-file`, never from the command line.
//! `umbra testnet` prints the authority lines to use.
//!
//! Commands, one per line on standard input:
//!
//! - `invite [name]`: print your invite string, to give to someone;
//! - `add <invite>`: add a contact (prints `contact <id>`);
//! - `send <contact> <text>`: send a text (a contact is named by a prefix of its id);
//! - `sendfile <contact> <path>`: send a file's bytes;
//! - `contacts`: list contacts;
//! - `quit`.
//!
//! Received messages are kept in a history file beside the store
//! (`<store>.history`, one line per message: `<from> <message id> <bytes>
//! <sha256>`), written before the next message is asked for, so that each
//! message lands there exactly once even across crashes (see `Inbox`).
//!
//! Everything that happens is printed as one line: `ready <my id>`,
//! `received <from> <message id> <bytes> <sha256> [text]`,
//! `status <message id> <status>`, `progress <message id> <acked>/<fragments>`,
//! `unconfirmed <n>` (fragments fetched, not yet deleted at the gateway),
//! `redelivered <message id> (already in the history)`.

use client_sdk::{AuthorityRef, Client, ClientConfig, ContactId, MessageId};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

fn usage() -> ! {
    eprintln!(
        "usage: chat --store PATH --authority URL=KEY [--authority URL=KEY …] [--threshold K] \
         [--passphrase-file PATH] [--fetch-interval-ms N]\n\
         the passphrase comes from UMBRA_PASSPHRASE or --passphrase-file"
    );
    std::process::exit(2)
}

struct Args {
    store: std::path::PathBuf,
    authorities: Vec<AuthorityRef>,
    threshold: usize,
    passphrase: zeroize::Zeroizing<String>,
    fetch_interval: Option<Duration>,
}

fn args() -> Args {
    let mut store = None;
    let mut authorities = Vec::new();
    let mut threshold = 1;
    let mut pass_file = None;
    let mut fetch_interval = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--store" => store = Some(val().into()),
            "--authority" => {
                let v = val();
                let Some((url, key)) = v.rsplit_once('=') else {
                    usage()
                };
                authorities.push(AuthorityRef {
                    url: url.into(),
                    key: key.into(),
                });
            }
            "--threshold" => threshold = val().parse().unwrap_or_else(|_| usage()),
            "--passphrase-file" => pass_file = Some(val()),
            "--fetch-interval-ms" => {
                fetch_interval = Some(Duration::from_millis(
                    val().parse().unwrap_or_else(|_| usage()),
                ))
            }
            _ => usage(),
        }
    }
    let passphrase = match (pass_file, std::env::var("UMBRA_PASSPHRASE")) {
        (Some(f), _) => std::fs::read_to_string(&f)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .unwrap_or_else(|e| {
                eprintln!("error: passphrase file {f}: {e}");
                std::process::exit(1)
            }),
        (None, Ok(p)) => p,
        (None, Err(_)) => usage(),
    };
    Args {
        store: store.unwrap_or_else(|| usage()),
        authorities,
        threshold,
        passphrase: zeroize::Zeroizing::new(passphrase),
        fetch_interval,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut cfg = ClientConfig::with_authorities(a.authorities, a.threshold).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    if let Some(i) = a.fetch_interval {
        cfg.fetch_interval = i;
    }
    let (client, mut inbox) = match Client::open(cfg, &a.store, a.passphrase.as_bytes()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    drop(a.passphrase);
    say(&format!("ready {}", hex(&client.id().0)));

    // Received messages, as they come. The application's own record is a
    // history file beside the store: each message is written there (and
    // synced) before the next is asked for, and a message the SDK hands over
    // again after a crash (`redelivered`) is skipped if the history holds
    // it. So each message lands in the history exactly once.
    let history_path = std::path::PathBuf::from(format!("{}.history", a.store.display()));
    let mut seen: std::collections::HashSet<(ContactId, MessageId)> =
        std::fs::read_to_string(&history_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let from = unhex(f.next()?)?;
                let id = unhex(f.next()?)?;
                Some((ContactId(from), id))
            })
            .collect();
    let mut history = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&history_path)
        .unwrap_or_else(|e| {
            eprintln!("error: {}: {e}", history_path.display());
            std::process::exit(1)
        });
    tokio::spawn(async move {
        while let Some(m) = inbox.recv().await {
            if m.redelivered && seen.contains(&(m.from, m.id)) {
                say(&format!(
                    "redelivered {} (already in the history)",
                    hex(&m.id)
                ));
                continue;
            }
            let text = std::str::from_utf8(&m.body)
                .ok()
                .filter(|t| t.len() <= 200 && !t.contains('\n'))
                .unwrap_or("");
            let line = format!(
                "{} {} {} {}",
                hex(&m.from.0),
                hex(&m.id),
                m.body.len(),
                hex(&Sha256::digest(&m.body)),
            );
            // One write of one line, then synced: a crash leaves it whole or absent.
            if let Err(e) = history
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|_| history.sync_data())
            {
                eprintln!("error: {}: {e}", history_path.display());
                std::process::exit(1)
            }
            seen.insert((m.from, m.id));
            say(&format!("received {line} {text}"));
        }
    });
    // Status changes, and the progress of messages in flight.
    let mut statuses = client.subscribe_status();
    tokio::spawn(async move {
        while let Some((id, s)) = statuses.next().await {
            say(&format!("status {} {s:?}", hex(&id)));
        }
    });
    let progress_client = client.clone();
    // Messages resumed from the store are watched too.
    let sent: std::sync::Arc<std::sync::Mutex<HashMap<MessageId, u32>>> =
        std::sync::Arc::new(std::sync::Mutex::new(
            client
                .pending_messages()
                .into_iter()
                .map(|id| (id, 0))
                .collect(),
        ));
    let watched = sent.clone();
    tokio::spawn(async move {
        let mut unconfirmed = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Fragments fetched and not yet confirmed at the gateway.
            let u = progress_client.unconfirmed();
            if u != unconfirmed {
                unconfirmed = u;
                say(&format!("unconfirmed {u}"));
            }
            let mut w = watched.lock().unwrap_or_else(|p| p.into_inner());
            w.retain(|id, last| match progress_client.progress(id) {
                Some(p) => {
                    if p.have != *last {
                        *last = p.have;
                        say(&format!("progress {} {}/{}", hex(id), p.have, p.count));
                    }
                    true
                }
                None => false,
            });
        }
    });

    let contact = |prefix: &str| -> Option<ContactId> {
        client
            .contacts()
            .into_iter()
            .find(|c| hex(&c.0).starts_with(&prefix.to_lowercase()))
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "invite" => say(&format!(
                "invite {}",
                client.invite(if rest.is_empty() { "me" } else { rest })
            )),
            "add" => match client.add_contact(rest) {
                Ok(c) => say(&format!("contact {}", hex(&c.0))),
                Err(e) => say(&format!("error {e}")),
            },
            "contacts" => {
                for c in client.contacts() {
                    say(&format!(
                        "contact {} {}",
                        hex(&c.0),
                        client.contact_name(&c).unwrap_or_default()
                    ));
                }
            }
            "send" | "sendfile" => {
                let (who, what) = rest.split_once(' ').unwrap_or((rest, ""));
                let Some(to) = contact(who) else {
                    say(&format!("error no contact {who}"));
                    continue;
                };
                let body = if cmd == "send" {
                    what.as_bytes().to_vec()
                } else {
                    match std::fs::read(what) {
                        Ok(b) => b,
                        Err(e) => {
                            say(&format!("error {what}: {e}"));
                            continue;
                        }
                    }
                };
                match client.send(&to, &body).await {
                    Ok(id) => {
                        sent.lock().unwrap_or_else(|p| p.into_inner()).insert(id, 0);
                        say(&format!("queued {}", hex(&id)));
                    }
                    Err(e) => say(&format!("error {e}")),
                }
            }
            "quit" => break,
            "" => {}
            _ => say(&format!("error unknown command {cmd}")),
        }
    }
    client.shutdown();
    // Let the driver write its last changes.
    tokio::time::sleep(Duration::from_millis(300)).await;
}
