//! Read receipts (`reliable::decode_receipt`): the body of a receipt
//! fragment, the ids of messages the contact read, applied to a sender's
//! `Outbox` that holds a few messages (`Outbox::on_receipt`).
//!
//! Checks: the ids re-encode to the body (less a trailing partial id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::reliable::{Kind, Outbox, OutboxConfig, Outgoing, decode_receipt, encode_receipt};

fuzz_target!(|data: &[u8]| {
    let ids: Vec<[u8; 16]> = decode_receipt(data).collect();
    assert_eq!(encode_receipt(&ids), data[..data.len() / 16 * 16]);
    let mut outbox = Outbox::<u8>::new(OutboxConfig::default());
    for i in 1..=3u8 {
        let m = Outgoing {
            id: [i; 16],
            to: 1,
            kind: Kind::Message,
            session: 1,
            seq: u64::from(i),
            body: vec![i; 3000],
        };
        outbox
            .push(m, 1024, 0.0)
            .expect("a small message is queued");
    }
    for ack in 0..64u8 {
        let Some(t) = outbox.next(0.0) else {
            break;
        };
        outbox.sent(&t, [ack; 16], 0.0, 60.0);
    }
    for id in &ids {
        outbox.on_receipt(id);
    }
    while outbox.poll_event().is_some() {}
});
