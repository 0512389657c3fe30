//! What an application's handles see when a client stops.
//!
//! `StatusUpdates::next` and `GroupUpdates::next` return `None` once the
//! client was closed, even while other handles to it (clones of the
//! `Client`, the `Inbox`) are still held, as applications do.
//!
//! `cargo test -p tests --test sdk_lifecycle`

use client_sdk::state::GroupChange;
use client_sdk::{Client, Identity, Status};
use std::time::Duration;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_updates_end_when_the_client_closes_while_handles_remain() {
    let net = support::network().await;
    let cfg = support::client_config(&net);
    let (alice, _alice_in) = Client::connect(cfg.clone(), Identity::generate())
        .await
        .unwrap();
    let (bob, mut bob_in) = Client::connect(cfg, Identity::generate()).await.unwrap();
    let to_bob = alice.add_contact(&bob.invite("bob")).unwrap();
    bob.add_contact(&alice.invite("alice")).unwrap();
    let mut updates = alice.subscribe_status();
    let id = alice.send(&to_bob, b"before closing").await.unwrap();
    // The stream works: the message is stored at Bob's gateway.
    let stored = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some((m, s)) = updates.next().await {
            if m == id && matches!(s, Status::Stored | Status::Read) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(stored, Ok(true), "no Stored status for the message");
    assert!(
        tokio::time::timeout(Duration::from_secs(60), bob_in.recv())
            .await
            .is_ok_and(|m| m.is_some()),
        "Bob did not get the message"
    );
    // Bob's group changes: Alice's invitation arrives as Joined.
    let mut groups = bob.subscribe_groups();
    let team = alice.create_group("team").await.unwrap();
    alice.invite_to_group(&team, &to_bob).await.unwrap();
    let joined = tokio::time::timeout(Duration::from_secs(60), groups.next())
        .await
        .expect("a group change within 60 s")
        .expect("the stream open");
    assert_eq!(joined.group, team);
    assert!(
        matches!(joined.change, GroupChange::Joined { by } if by == alice.id()),
        "{joined:?}"
    );
    assert_eq!(groups.skipped(), 0);
    let bob_kept = bob.clone();
    bob.close().await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while groups.next().await.is_some() {}
    })
    .await;
    assert!(
        end.is_ok(),
        "the group stream did not end when the client closed"
    );
    drop(bob_kept);
    // Another handle stays alive, as in an application's other tasks.
    let kept = alice.clone();
    alice.close().await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while updates.next().await.is_some() {}
    })
    .await;
    assert!(
        end.is_ok(),
        "the status stream did not end when the client closed"
    );
    drop(kept);
}
