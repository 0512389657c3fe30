//! Requests to a dropbox gateway (`Request::decode`): stores, acked stores,
//! batched stores and batch asks, fetches and cover; then what the gateway does with the fields before it
//! touches storage: checks a fetch's capability signature and builds the
//! reply packets through the request's SURBs (`packet::use_surb`).
//!
//! Checks: a request that decodes re-encodes to the same bytes (cover
//! drops carry anything after their type byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::messages::{ACK_BODY, BatchAck, Request, StoreRefused};
use protocol::packet;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = Request::decode(data) else {
        return;
    };
    if req != Request::Drop {
        assert_eq!(req.encode().expect("a decoded request re-encodes"), data);
    }
    match req {
        Request::StoreAcked { surb, .. } => {
            let _ = packet::use_surb(&surb, ACK_BODY);
            let _ = packet::use_surb(&surb, &StoreRefused::BoxFull.body());
        }
        Request::Fetch(f) => {
            let _ = f.authorised();
            for s in &f.surbs {
                let _ = packet::use_surb(s, &[0u8; 16]);
            }
        }
        Request::AckBatch { surb, count, .. } => {
            let a = BatchAck {
                count,
                stored: u32::MAX,
                refused: None,
            };
            assert_eq!(BatchAck::from_body(&a.body()), Some(a));
            let _ = packet::use_surb(&surb, &a.body());
        }
        Request::Store { .. } | Request::StoreBatched { .. } | Request::Drop => {}
    }
});
