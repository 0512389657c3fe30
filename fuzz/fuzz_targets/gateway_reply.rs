//! Replies of a dropbox gateway as the client reads them once the SURB
//! reply is open: the store ack or refusal (`StoreRefused::from_body`), and
//! fetch answers tried in the client's order (`Refused::decode`,
//! `Listing::decode`, `FetchReply::decode`), then a fetched message opened
//! with the box key and read as a fragment.
//!
//! Checks: every reply that decodes re-encodes to the bytes it came from
//! (a fetch reply to a prefix of them).
#![no_main]

use client_sdk::fuzzing as sdk;
use libfuzzer_sys::fuzz_target;
use protocol::messages::{FetchReply, Listing, Refused, StoreRefused};
use protocol::reliable::Fragment;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = StoreRefused::from_body(data) {
        assert_eq!(r.body(), data);
    }
    if let Ok(r) = Refused::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(l) = Listing::decode(data) {
        assert_eq!(l.encode().expect("a decoded listing re-encodes"), data);
    }
    if let Ok(r) = FetchReply::decode(data) {
        let again = r.encode().expect("a decoded fetch reply re-encodes");
        assert!(data.starts_with(&again));
        if let Some((_, ct)) = &r.message
            && let Some(plain) = sdk::open_sealed(&umbra_fuzz::dropbox(), ct)
        {
            let _ = Fragment::decode(&plain);
        }
    }
});
