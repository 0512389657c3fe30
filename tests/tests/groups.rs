//! Groups between whole clients on the virtual clock (`umbra::sim`):
//! protocol.md §13.11. Five members who joined through each other's
//! invitations each receive every other member's messages exactly once; a
//! removed member reads nothing sent after its removal, while a member who
//! is not a contact of the one who removed it still gets the new epoch
//! (passed on by a member who is); a member offline for an hour catches up;
//! a member asleep while another is removed reads the new epoch's messages
//! written meanwhile.
//! The Megolm pieces themselves are tested in `client-sdk/src/group.rs`.
//!
//! `cargo test -p tests --test groups -- --nocapture`

use client_sdk::GroupId;
use client_sdk::state::GroupChange;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use umbra::sim::{ClientHandle, Endpoint, Sim, SimConfig};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn create(sim: &mut Sim, c: ClientHandle, name: &str) -> GroupId {
    let me = sim.persona(c).id;
    sim.act(c, |st, now, rng| st.create_group(now, &me, name, rng))
        .unwrap()
}

fn invite(sim: &mut Sim, by: ClientHandle, g: GroupId, who: ClientHandle) {
    let (me, them) = (sim.persona(by).id, sim.persona(who).id);
    sim.act(by, |st, now, _| st.invite_to_group(now, &me, &g, &them))
        .unwrap();
}

fn send(sim: &mut Sim, c: ClientHandle, g: GroupId, body: &str) {
    let me = sim.persona(c).id;
    sim.act(c, |st, now, _| st.send_group(now, &me, &g, body.as_bytes()))
        .unwrap();
}

fn is_member(sim: &Sim, c: ClientHandle, g: GroupId) -> bool {
    sim.state(c).groups(&sim.persona(c).id).contains(&g)
}

fn members(sim: &Sim, c: ClientHandle, g: GroupId) -> usize {
    sim.state(c)
        .group_members(&sim.persona(c).id, &g)
        .map(|(_, m)| m.len())
        .unwrap_or(0)
}

/// Group bodies `c` received, counted.
fn group_bodies(sim: &Sim, c: ClientHandle, g: GroupId) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in &sim.log(c).received {
        if r.group == Some(g) {
            *out.entry(String::from_utf8_lossy(&r.body).into_owned())
                .or_insert(0) += 1;
        }
    }
    out
}

/// A (creator) knows B and C; B knows D; D knows E. Each joins through
/// the invitation of a member who knows them, so the group's member list
/// travels through the group's box, not only pairwise.
fn five(seed: u64) -> (Sim, Vec<ClientHandle>, GroupId) {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let c: Vec<ClientHandle> = (0..5).map(|_| sim.add_client()).collect();
    for (x, y) in [(0, 1), (0, 2), (1, 3), (3, 4)] {
        sim.connect_contacts(c[x], c[y]);
    }
    let g = create(&mut sim, c[0], "five");
    invite(&mut sim, c[0], g, c[1]);
    invite(&mut sim, c[0], g, c[2]);
    assert!(sim.run_until_cond(secs(120), |s| is_member(s, c[1], g)));
    invite(&mut sim, c[1], g, c[3]);
    assert!(sim.run_until_cond(secs(120), |s| is_member(s, c[3], g)));
    invite(&mut sim, c[3], g, c[4]);
    let joined = sim.run_until_cond(secs(120), |s| {
        c.iter().all(|x| is_member(s, *x, g)) && c.iter().all(|x| members(s, *x, g) == 5)
    });
    let counts: Vec<usize> = c.iter().map(|x| members(&sim, *x, g)).collect();
    assert!(joined, "member counts {counts:?}");
    (sim, c, g)
}

#[test]
fn five_members_receive_every_other_members_messages_exactly_once() {
    let started = Instant::now();
    let (mut sim, c, g) = five(31);
    for (i, x) in c.iter().enumerate() {
        for k in 0..3 {
            send(&mut sim, *x, g, &format!("m{i}-{k}"));
        }
    }
    let want = |i: usize| -> BTreeMap<String, usize> {
        (0..5)
            .filter(|j| *j != i)
            .flat_map(|j| (0..3).map(move |k| (format!("m{j}-{k}"), 1)))
            .collect()
    };
    let done = sim.run_until_cond(secs(300), |s| {
        (0..5).all(|i| group_bodies(s, c[i], g).len() == 12)
    });
    // A little longer: a duplicate would show up now.
    sim.run_for(secs(60));
    for (i, x) in c.iter().enumerate() {
        assert_eq!(
            group_bodies(&sim, *x, g),
            want(i),
            "member {i} (done {done})"
        );
    }
    // Every sender is named as who it is.
    for x in &c {
        for r in sim.log(*x).received.iter().filter(|r| r.group == Some(g)) {
            let j: usize = r.body[1..2].iter().map(|b| (b - b'0') as usize).sum();
            assert_eq!(r.from, sim.persona(c[j]).id);
        }
    }
    eprintln!(
        "5-member group: 15 messages, each delivered to 4 members exactly once, in {:.0} s virtual, {:.1} s wall",
        sim.now().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_removed_member_reads_nothing_sent_after() {
    let (mut sim, c, g) = five(32);
    // A removes C. A's only other contact among the members is B; D and E
    // get the new epoch passed on: A → B → D → E.
    let (a, removed) = (sim.persona(c[0]).id, sim.persona(c[2]).id);
    let rng_epoch = sim.act(c[0], |st, now, rng| {
        st.remove_from_group(now, &a, &g, &removed, rng).unwrap();
        st.group_members(&a, &g).unwrap().0
    });
    assert_eq!(rng_epoch, 1);
    let stayers = [c[0], c[1], c[3], c[4]];
    let rekeyed = sim.run_until_cond(secs(180), |s| {
        stayers.iter().all(|x| {
            s.state(*x)
                .group_members(&s.persona(*x).id, &g)
                .is_some_and(|(e, m)| e == 1 && m.len() == 4)
        })
    });
    assert!(rekeyed, "the new epoch reached every member who stays");
    // D and E got it passed on (neither is a contact of A).
    for x in [c[3], c[4]] {
        assert!(
            sim.log(x)
                .groups
                .iter()
                .any(|(_, _, gg, ch)| *gg == g
                    && matches!(ch, GroupChange::Rekeyed { epoch: 1, .. }))
        );
    }
    // The removed member still thinks it is in epoch 0.
    assert_eq!(
        sim.state(c[2]).group_members(&removed, &g).map(|(e, _)| e),
        Some(0)
    );
    for (i, x) in stayers.iter().enumerate() {
        send(&mut sim, *x, g, &format!("after-{i}"));
    }
    // The removed member writes into its old epoch: nobody reads it as a member's.
    send(&mut sim, c[2], g, "from the removed");
    let all = sim.run_until_cond(secs(300), |s| {
        stayers.iter().all(|x| {
            group_bodies(s, *x, g)
                .keys()
                .filter(|b| b.starts_with("after-"))
                .count()
                == 3
        })
    });
    assert!(all, "every member who stays got the 3 others' messages");
    sim.run_for(secs(120));
    let got = group_bodies(&sim, c[2], g);
    assert!(
        got.keys().all(|b| !b.starts_with("after-")),
        "the removed member read {got:?}"
    );
    for x in stayers {
        assert!(!group_bodies(&sim, x, g).contains_key("from the removed"));
    }
}

/// A simulation for hours of virtual time: slower streams than the
/// simulator's default (λ_P = 2/s, loops 0.2/s, downlink 5/s), and
/// topology keys that outlive the test (the simulator hands out one).
fn hours_long(seed: u64) -> Sim {
    let mut cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    cfg.params.lambda_payload = 2.0;
    cfg.params.lambda_loop = 0.2;
    cfg.params.lambda_mix_loop = 0.1;
    cfg.params.lambda_downlink = 5.0;
    cfg.epoch_length_ms = 4 * 3_600_000;
    Sim::new(cfg)
}

#[test]
fn a_member_offline_for_an_hour_catches_up() {
    let started = Instant::now();
    let mut sim = hours_long(33);
    let c: Vec<ClientHandle> = (0..3).map(|_| sim.add_client()).collect();
    sim.connect_contacts(c[0], c[1]);
    sim.connect_contacts(c[0], c[2]);
    let g = create(&mut sim, c[0], "three");
    invite(&mut sim, c[0], g, c[1]);
    invite(&mut sim, c[0], g, c[2]);
    assert!(sim.run_until_cond(secs(120), |s| { c.iter().all(|x| members(s, *x, g) == 3) }));
    let off = c[2];
    let from = sim.now();
    let until = from + secs(3600);
    sim.partition(Endpoint::Client(off), from, until);
    // Spread over the hour: the box rotates with the period.
    for k in 0..6u64 {
        let at = from + secs(60 + k * 600);
        let who = c[(k % 2) as usize];
        sim.schedule(at, move |s| send(s, who, g, &format!("while-away-{k}")));
    }
    sim.run_until(until);
    assert!(
        group_bodies(&sim, off, g).is_empty(),
        "the partition really kept it offline"
    );
    // Each online member has the other's three.
    for x in &c[..2] {
        let got = group_bodies(&sim, *x, g);
        assert_eq!(got.len(), 3, "{got:?}");
    }
    let caught_up = sim.run_until_cond(secs(600), |s| group_bodies(s, off, g).len() == 6);
    let got = group_bodies(&sim, off, g);
    eprintln!(
        "offline member: {} of 6 messages within {:.0} s of coming back ({:.1} s wall)",
        got.len(),
        (sim.now() - until).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(caught_up, "{got:?}");
    assert!(got.values().all(|n| *n == 1));
}

/// A member asleep for two and a half hours while another is removed:
/// the new epoch's keys wait for it in a pairwise box of the hours it
/// missed, and the others write to the new epoch all that time. Back, it
/// reads every message, the ones written two hours and more before it
/// woke included (before the fix only the current and previous hour's
/// boxes of an epoch learned late were read).
#[test]
fn a_member_asleep_while_another_is_removed_reads_the_new_epoch_written_meanwhile() {
    let started = Instant::now();
    let mut sim = hours_long(35);
    let c: Vec<ClientHandle> = (0..4).map(|_| sim.add_client()).collect();
    for x in &c[1..] {
        sim.connect_contacts(c[0], *x);
    }
    let g = create(&mut sim, c[0], "four");
    for x in &c[1..] {
        invite(&mut sim, c[0], g, *x);
    }
    assert!(sim.run_until_cond(secs(180), |s| c.iter().all(|x| members(s, *x, g) == 4)));
    let (asleep, removed) = (c[3], c[1]);
    let from = sim.now();
    let until = from + secs(9000);
    sim.sleep(asleep, from, until);
    sim.run_for(secs(30));
    let (a, gone) = (sim.persona(c[0]).id, sim.persona(removed).id);
    sim.act(c[0], |st, now, rng| {
        st.remove_from_group(now, &a, &g, &gone, rng)
    })
    .unwrap();
    let epoch = |s: &Sim, x: ClientHandle| {
        s.state(x)
            .group_members(&s.persona(x).id, &g)
            .map(|(e, m)| (e, m.len()))
    };
    let writers = [c[0], c[2]];
    assert!(sim.run_until_cond(secs(180), |s| {
        writers.iter().all(|x| epoch(s, *x) == Some((1, 3)))
    }));
    // Six messages over the next two hours, into the new epoch.
    let t0 = sim.now();
    for k in 0..6u64 {
        let who = writers[(k % 2) as usize];
        sim.schedule(t0 + secs(60 + k * 1400), move |s| {
            send(s, who, g, &format!("while-asleep-{k}"))
        });
    }
    sim.run_until(until);
    assert!(
        group_bodies(&sim, asleep, g).is_empty() && epoch(&sim, asleep) == Some((0, 4)),
        "it really slept through the change"
    );
    // The first message was written more than two hours before it woke.
    assert!(until - (t0 + secs(60)) > secs(2 * 3600));
    for x in writers {
        assert_eq!(group_bodies(&sim, x, g).len(), 3);
    }
    let caught_up = sim.run_until_cond(secs(900), |s| group_bodies(s, asleep, g).len() == 6);
    let got = group_bodies(&sim, asleep, g);
    eprintln!(
        "member asleep 2.5 h: {} of 6 new-epoch messages within {:.0} s of waking ({:.1} s wall)",
        got.len(),
        (sim.now() - until).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(caught_up, "{got:?}");
    assert!(got.values().all(|n| *n == 1));
    assert_eq!(epoch(&sim, asleep), Some((1, 3)));
}

/// Groups live in the encrypted store: after both members restart, the
/// group, its epoch and the sender ratchets are back, and messages flow.
#[test]
fn a_group_survives_restarts_through_the_store() {
    let mut sim = Sim::new(SimConfig {
        seed: 34,
        ..SimConfig::default()
    });
    let persistent = umbra::sim::ClientOptions {
        persistent: true,
        ..umbra::sim::ClientOptions::default()
    };
    let a = sim.add_client_with(persistent.clone()).unwrap();
    let b = sim.add_client_with(persistent).unwrap();
    sim.connect_contacts(a, b);
    let g = create(&mut sim, a, "kept");
    invite(&mut sim, a, g, b);
    assert!(sim.run_until_cond(secs(120), |s| is_member(s, b, g)));
    send(&mut sim, a, g, "before");
    assert!(sim.run_until_cond(secs(120), |s| group_bodies(s, b, g).len() == 1));
    sim.restart(a).unwrap();
    sim.restart(b).unwrap();
    assert!(is_member(&sim, a, g) && is_member(&sim, b, g));
    assert_eq!(
        sim.state(b).group_name(&sim.persona(b).id, &g).as_deref(),
        Some("kept")
    );
    send(&mut sim, a, g, "after a restart, a");
    send(&mut sim, b, g, "after a restart, b");
    let ok = sim.run_until_cond(secs(120), |s| {
        group_bodies(s, b, g).len() == 2 && group_bodies(s, a, g).len() == 1
    });
    assert!(
        ok,
        "{:?} {:?}",
        group_bodies(&sim, a, g),
        group_bodies(&sim, b, g)
    );
    sim.run_for(secs(30));
    assert!(
        group_bodies(&sim, b, g).values().all(|n| *n == 1),
        "nothing twice"
    );
    // A picture to the group: typed, with its metadata and thumbnail.
    let meta = client_sdk::Attachment {
        name: "map.png".into(),
        mime: "image/png".into(),
        width: 640,
        height: 480,
        thumbnail: vec![9; 300],
        ..client_sdk::Attachment::default()
    };
    let me = sim.persona(a).id;
    let picture = vec![0x5A; 5_000];
    let id = sim.act(a, |st, now, _| {
        st.send_group_content(
            now,
            &me,
            &g,
            client_sdk::ContentKind::Image,
            Some(&meta),
            &picture,
        )
        .unwrap()
    });
    assert!(sim.run_until_cond(secs(120), |s| s.log(b).received.iter().any(|r| r.id == id)));
    let r = sim.log(b).received.iter().find(|r| r.id == id).unwrap();
    assert_eq!(
        (r.group, r.kind, r.body.len()),
        (Some(g), Some(client_sdk::ContentKind::Image), 5_000)
    );
    let m = r.attachment.as_ref().unwrap();
    assert_eq!(
        (m.name.as_str(), m.width, m.thumbnail.len()),
        ("map.png", 640, 300)
    );
}

/// `umbra demo --group 5` over real QUIC nodes on loopback: every member's
/// messages reach every other member exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_demo_delivers_every_message_to_every_member_once() {
    let opts = umbra::demo::DemoOptions {
        messages: 10,
        ..umbra::demo::DemoOptions::default()
    };
    let r = umbra::group_demo::run(opts, 5, |l| eprintln!("{l}"))
        .await
        .unwrap();
    eprintln!("{r:?}");
    assert_eq!((r.sent, r.expected), (10, 40));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.delivered, 40);
}

/// Two members remove a third at the same moment: two different new
/// epochs meet; every member who stays settles on the same one (the larger
/// epoch key), and messages flow in it.
#[test]
fn two_members_removing_at_once_settle_on_one_epoch() {
    let (mut sim, c, g) = five(35);
    let (a, b, gone) = (
        sim.persona(c[0]).id,
        sim.persona(c[1]).id,
        sim.persona(c[4]).id,
    );
    sim.act(c[0], |st, now, rng| {
        st.remove_from_group(now, &a, &g, &gone, rng)
    })
    .unwrap();
    sim.act(c[1], |st, now, rng| {
        st.remove_from_group(now, &b, &g, &gone, rng)
    })
    .unwrap();
    let stayers = [c[0], c[1], c[2], c[3]];
    // Each member's current epoch key, as its contacts entry: compare the
    // epochs' member lists and that sends reach everyone.
    let settled = sim.run_until_cond(secs(180), |s| {
        stayers.iter().all(|x| {
            s.state(*x)
                .group_members(&s.persona(*x).id, &g)
                .is_some_and(|(e, m)| e == 1 && m.len() == 4)
        })
    });
    assert!(settled);
    for (i, x) in stayers.iter().enumerate() {
        send(&mut sim, *x, g, &format!("settled-{i}"));
    }
    let all = sim.run_until_cond(secs(300), |s| {
        stayers.iter().all(|x| {
            group_bodies(s, *x, g)
                .keys()
                .filter(|b| b.starts_with("settled-"))
                .count()
                == 3
        })
    });
    let seen: Vec<Vec<String>> = stayers
        .iter()
        .map(|x| {
            group_bodies(&sim, *x, g)
                .into_keys()
                .filter(|b| b.starts_with("settled-"))
                .collect()
        })
        .collect();
    let changes: Vec<_> = stayers.iter().map(|x| sim.log(*x).groups.clone()).collect();
    assert!(
        all,
        "every member who stays reads the other three in the epoch they settled on: {seen:?} {changes:?}"
    );
    assert!(
        group_bodies(&sim, c[4], g)
            .keys()
            .all(|b| !b.starts_with("settled-")),
        "the removed member reads none of it"
    );
}
