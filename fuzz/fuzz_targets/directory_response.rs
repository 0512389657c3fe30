//! What the directory client reads from an authority's HTTP answers: a
//! signed envelope (`dirclient::parse_signed`, then `verify_topology` as
//! nodes and clients do, and `verify_vote` as authorities do) and the
//! authority key (`dirclient::parse_authority_key`).
//!
//! Checks: a parsed authority key prints back to the hex it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::dirclient::{parse_authority_key, parse_signed};
use protocol::topology::{verify_topology, verify_vote};
use umbra_fuzz::{NOW_MS, trust};

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = parse_signed(data) {
        let _ = verify_topology(&signed, &trust(), NOW_MS, None);
        let _ = verify_vote(&signed, &trust().authorities);
    }
    if let Ok(key) = parse_authority_key(data) {
        let text = String::from_utf8_lossy(data);
        assert_eq!(hex::encode(key), text.trim().to_ascii_lowercase());
    }
});
