//! What a contact sends inside the pair-secret layer besides fragments of
//! messages: a session reset (`Reset::decode`, a control message) and the
//! end-to-end Olm envelope every message body is (`Sessions::open`, run
//! through a fresh account with no session, as after a reinstall).
//!
//! Checks: a reset that decodes re-encodes to the same bytes; no envelope
//! opens without a session.
#![no_main]

use client_sdk::fuzzing as sdk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = sdk::Reset::decode(data) {
        assert_eq!(r.encode(), data);
    }
    let _ = sdk::open_envelope([0x31; 32], data);
});
