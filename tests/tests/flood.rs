//! Every attack of `umbra dangerous-flood`, briefly, against a network in
//! a child process, while an honest pair talks through it: every honest
//! message arrives, every attack reached the servers (their own counters
//! moved), and the servers' memory stays bounded.
//!
//! Needs the `umbra` binary: `cargo test --workspace` builds it (as
//! target/<profile>/umbra); set UMBRA_BIN to use another. The full-length
//! run and its table: `umbra dangerous-flood --seconds 30` (docs/reliability.md).

use std::path::PathBuf;
use std::time::Duration;
use umbra::flood::{Attack, FloodOptions};

fn umbra_bin() -> PathBuf {
    umbra::testnet::built_binary("UMBRA_BIN", "umbra", "cargo build -p umbra")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_messages_survive_every_flood() {
    let report = tokio::time::timeout(
        Duration::from_secs(300),
        umbra::flood::run(
            FloodOptions {
                umbra: umbra_bin(),
                seconds: 4,
                cool_down: Duration::from_secs(2),
                ..FloodOptions::default()
            },
            |m| eprintln!("{m}"),
        ),
    )
    .await
    .expect("the flood run finished in time")
    .expect("the flood run started");
    println!("{}", report.table());
    assert_eq!(report.rows.len(), Attack::ALL.len());
    for r in &report.rows {
        assert!(
            r.honest_sent >= 4,
            "{:?}: too few honest messages",
            r.attack
        );
        assert_eq!(
            r.honest_delivered, r.honest_sent,
            "{:?}: honest messages lost",
            r.attack
        );
        if r.attack != Attack::Baseline {
            assert!(r.volume > 0, "{:?}: the attacker did nothing", r.attack);
            assert!(
                r.reached_servers(),
                "{:?}: the servers' counters did not move beyond honest traffic ({}: {})",
                r.attack,
                r.server_counter,
                r.server_saw
            );
        }
        // Bounded: no attack grows the servers by more than 256 MiB.
        assert!(
            r.rss_peak_mib < r.rss_before_mib + 256.0,
            "{:?}: servers grew from {:.0} to {:.0} MiB",
            r.attack,
            r.rss_before_mib,
            r.rss_peak_mib
        );
    }
    assert!(report.ok());
}
