//! Frames between a client and its entry gateway: the gateway reads Inject
//! and Subscribe frames, the client reads Deliver frames and opens the SURB
//! reply inside with its key (`packet::open_reply`), then reads the reply as
//! an ack, a store refusal, a fetch refusal, a listing or a fetch reply, and
//! a fetched message as a sealed fragment.
#![no_main]

use client_sdk::fuzzing as sdk;
use libfuzzer_sys::fuzz_target;
use protocol::frame::{self, FrameKind};
use protocol::messages::{FetchReply, Listing, Refused, StoreRefused};
use protocol::packet::{self, PACKET_SIZE, PAYLOAD_SIZE};
use protocol::reliable::Fragment;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static KEY: OnceLock<packet::ReplyKey> = OnceLock::new();
    let key = KEY.get_or_init(|| umbra_fuzz::surb().1);
    let mut dec = frame::FrameDecoder::new();
    dec.push(data);
    while let Some(body) = dec.next_body() {
        let Ok(f) = frame::decode_body(body) else {
            continue;
        };
        match f.kind {
            FrameKind::Inject => {
                let (Some(_first_hop), Some(p)) = (f.node_or_address(), f.packet()) else {
                    panic!("an Inject frame without its hop or packet");
                };
                assert_eq!(p.len(), PACKET_SIZE);
            }
            FrameKind::Subscribe => {
                assert!(f.node_or_address().is_some());
            }
            FrameKind::Deliver => {
                let (_id, payload) = f.delivery().expect("a Deliver frame's delivery");
                assert_eq!(payload.len(), PAYLOAD_SIZE);
                let Ok(reply) = packet::open_reply(key, payload) else {
                    continue;
                };
                let _ = StoreRefused::from_body(&reply);
                if Refused::decode(&reply).is_ok() || Listing::decode(&reply).is_ok() {
                    continue;
                }
                if let Ok(FetchReply {
                    message: Some((_, ct)),
                    ..
                }) = FetchReply::decode(&reply)
                    && let Some(plain) = sdk::open_sealed(&umbra_fuzz::dropbox(), &ct)
                {
                    let _ = Fragment::decode(&plain);
                }
            }
            _ => {}
        }
    }
});
