//! Sphinx packets at a node: the node-side `EpochKey::peel` (length check,
//! replay look, header MAC and layer removal, replay record) with fixed
//! keys along a fixed three-hop route, then at the final hop
//! `packet::recover_plaintext` and the gateway's `Request::decode`.
//!
//! Checks: a forwarded packet keeps the packet size; a packet that peeled
//! is refused as a replay the second time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::Error;
use protocol::messages::Request;
use protocol::packet::{self, PACKET_SIZE, Peeled};

fuzz_target!(|data: &[u8]| {
    let mut packet = data.to_vec();
    for i in 0..umbra_fuzz::HOPS {
        let key = umbra_fuzz::epoch_key(i);
        let Ok(peeled) = key.peel(&packet) else {
            return;
        };
        assert!(matches!(key.peel(&packet), Err(Error::Replay)));
        match peeled {
            Peeled::Forward {
                next_hop,
                packet: next,
                ..
            } => {
                assert_eq!(next.len(), PACKET_SIZE);
                if i + 1 == umbra_fuzz::HOPS || next_hop != umbra_fuzz::hop(i + 1).id {
                    return;
                }
                packet = next;
            }
            Peeled::Final { payload, .. } => {
                if let Ok(plain) = packet::recover_plaintext(&payload) {
                    let _ = Request::decode(&plain);
                }
                return;
            }
        }
    }
});
