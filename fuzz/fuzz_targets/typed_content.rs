//! What contacts and group members send inside the end-to-end layers:
//! typed content (`content::decode`: kinds, metadata, zstd with its size
//! bound), a group's keys sent pairwise (`GroupKeys::decode`) and what
//! travels in a group's box (`BoxItem::decode`).
//!
//! Checks: decoded data never exceeds the bound asked for; content that
//! decodes re-encodes to content that decodes to the same; group keys and
//! box items that decode re-encode to the same value.
#![no_main]

use client_sdk::content;
use client_sdk::fuzzing::{BoxItem, GroupKeys};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = content::decode(data, MAX) {
        assert!(c.data.len() <= MAX);
        let again = content::decode(
            &content::encode(c.kind, c.attachment.as_ref(), &c.data),
            MAX,
        )
        .expect("re-encoded content decodes");
        assert_eq!((again.kind, again.data), (c.kind, c.data));
    }
    if let Some(k) = GroupKeys::decode(data) {
        assert_eq!(GroupKeys::decode(&k.encode()), Some(k));
    }
    if let Some(b) = BoxItem::decode(data) {
        assert_eq!(BoxItem::decode(&b.encode()), Some(b));
    }
});
