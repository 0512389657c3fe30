//! Typed messages between whole clients on the virtual clock
//! (`umbra::sim`): protocol.md §13.12. A picture with a thumbnail arrives
//! as a preview first (metadata and thumbnail, naming the data message),
//! then the data, with its kind and metadata; text that compresses travels
//! in fewer fragments; the receiver sees the data's progress. (That the
//! type survives a restore is `client-sdk`'s `received_types_survive_a_restore`.)
//!
//! `cargo test -p tests --test attachments -- --nocapture`

use client_sdk::Status;
use client_sdk::{Attachment, ContentKind};
use std::time::Duration;
use umbra::sim::{ClientOptions, LinkFaults, Sim, SimConfig};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_picture_arrives_as_a_preview_then_its_data_and_text_is_compressed() {
    let mut sim = Sim::new(SimConfig {
        seed: 41,
        ..SimConfig::default()
    });
    let a = sim.add_client();
    let b = sim
        .add_client_with(ClientOptions {
            persistent: true,
            ..ClientOptions::default()
        })
        .unwrap();
    sim.connect_contacts(a, b);
    let (pa, pb) = (sim.persona(a), sim.persona(b));
    // A "photo" of 60 kB that does not compress, and its thumbnail.
    let photo: Vec<u8> = (0..60_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let meta = Attachment {
        name: "street.jpg".into(),
        mime: "image/jpeg".into(),
        width: 1600,
        height: 1200,
        thumbnail: vec![0xAB; 2_000],
        ..Attachment::default()
    };
    let (preview, data) = sim.act(a, |st, now, rng| {
        st.send_attachment(now, &pa.id, &pb.id, ContentKind::Image, &meta, &photo, rng)
            .unwrap()
    });
    let preview = preview.expect("a thumbnail makes a preview");
    // The receiver sees the data message progress while it arrives.
    let mut seen_progress = None;
    let got = sim.run_until_cond(secs(120), |s| {
        if let Some(p) = s.state(b).receive_progress(&pb.id, &pa.id, &data) {
            seen_progress.get_or_insert(p);
        }
        s.log(b).received.iter().any(|r| r.id == data)
    });
    assert!(got);
    let p = seen_progress.expect("progress was visible while the data arrived");
    assert!(p.have < p.count);
    // In bytes too: part of the data message's envelope (body and
    // metadata, encrypted).
    assert!(p.bytes < p.total && p.total as usize > photo.len(), "{p:?}");
    // Sent in batches (protocol.md §13.3): fragments of BATCH_CHUNK_LEN,
    // fewer than fragments that each carry a SURB-ack would need.
    let n = p.count as usize;
    assert!(
        (photo.len() / client_sdk::BATCH_CHUNK_LEN..photo.len() / client_sdk::CHUNK_LEN)
            .contains(&n),
        "{n} fragments for {} bytes",
        photo.len()
    );
    let log = &sim.log(b).received;
    let ip = log.iter().position(|r| r.id == preview).unwrap();
    let id = log.iter().position(|r| r.id == data).unwrap();
    assert!(ip < id, "the preview is handed over first");
    let (pr, dr) = (&log[ip], &log[id]);
    assert_eq!(pr.kind, Some(ContentKind::Preview));
    let pm = pr.attachment.as_ref().unwrap();
    assert_eq!(
        (pm.preview_of, pm.thumbnail.len(), pm.size),
        (Some(data), 2_000, 60_000)
    );
    assert_eq!(dr.kind, Some(ContentKind::Image));
    let dm = dr.attachment.as_ref().unwrap();
    assert_eq!(
        (dm.name.as_str(), dm.mime.as_str(), dm.width, dm.height),
        ("street.jpg", "image/jpeg", 1600, 1200)
    );
    assert!(
        dm.thumbnail.is_empty(),
        "the thumbnail travels once, in the preview"
    );
    assert_eq!(dr.body, photo);

    // Text that compresses: fewer fragments than its length needs.
    let text = "the meeting moves to the library at six. ".repeat(400);
    let tid = sim.act(a, |st, now, rng| {
        st.send_content(
            now,
            &pa.id,
            &pb.id,
            ContentKind::Text,
            None,
            text.as_bytes(),
            rng,
        )
        .unwrap()
    });
    let frags = sim.state(a).progress(&tid).map(|p| p.count).unwrap();
    assert!(
        (frags as usize) < text.len() / client_sdk::CHUNK_LEN / 4,
        "{frags} fragments for {} bytes",
        text.len()
    );
    assert!(sim.run_until_cond(secs(60), |s| s.log(b).received.iter().any(|r| r.id == tid)));
    let r = sim.log(b).received.iter().find(|r| r.id == tid).unwrap();
    assert_eq!(
        (r.kind, r.body.as_slice()),
        (Some(ContentKind::Text), text.as_bytes())
    );
}

/// A large message travels in batches (protocol.md §13.3) and still
/// arrives whole and once, and its sender learns it is stored, although
/// packets are lost on every link (so batches come back with holes and
/// their missing fragments go again) and half of the gateways' answers
/// are withheld (so batches are asked again, or sent again).
#[test]
fn batches_survive_lost_fragments_and_lost_answers() {
    let mut sim = Sim::new(SimConfig {
        seed: 43,
        ..SimConfig::default()
    });
    let a = sim.add_client();
    let b = sim.add_client();
    sim.connect_contacts(a, b);
    sim.set_faults(LinkFaults {
        loss: 0.05,
        ..LinkFaults::NONE
    });
    sim.set_ack_faults(LinkFaults {
        loss: 0.5,
        ..LinkFaults::NONE
    });
    let body: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 13) as u8)
        .collect();
    let id = sim.send(a, b, &body).unwrap();
    let n = sim.state(a).progress(&id).unwrap().count as usize;
    assert!(
        n < body.len() / client_sdk::CHUNK_LEN,
        "{n} fragments: not batched"
    );
    let stored = sim.run_until_cond(secs(1800), |s| {
        matches!(s.log(a).status(&id), Some(Status::Stored | Status::Read))
    });
    assert!(stored, "{:?}", sim.log(a).statuses.get(&id));
    assert!(sim.run_until_cond(secs(300), |s| s.log(b).received.iter().any(|r| r.id == id)));
    sim.run_for(secs(60));
    let copies: Vec<_> = sim.log(b).received.iter().filter(|r| r.id == id).collect();
    assert_eq!(copies.len(), 1, "handed over exactly once");
    assert_eq!(copies[0].body, body);
    // The faults fired: packets were lost and answers withheld.
    let s = sim.stats();
    assert!(s.lost > 0 && s.acks_withheld > 0, "{s:?}");
    let history: Vec<Status> = sim.log(a).statuses[&id].iter().map(|(_, s)| *s).collect();
    assert!(!history.iter().any(|s| s.is_failure()), "{history:?}");
}
