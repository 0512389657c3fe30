//! Topology documents and votes, the signed JSON a node or client gets from
//! an authority and authorities get from each other. The first byte picks
//! the mode:
//!
//! - 0: the rest is a whole signed envelope, checked with
//!   `topology::verify_topology` (pinned authority, clock, rules) and
//!   `topology::verify_vote`;
//! - 1: the rest is a document body, signed here by the pinned authority,
//!   so that what is checked after the signatures is reached: parsing,
//!   validity window, `check_rules`; a document that passes is then used as
//!   a client uses it (routes, gateways, node lookups);
//! - 2: the rest is a vote body, signed here; a vote that verifies goes
//!   through `topology::consensus`.
//!
//! Checks: the consensus of one verified vote with valid parameters is a
//! topology that passes `check_rules`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::topology::{
    self, Signed, TOPOLOGY_DOMAIN, VOTE_DOMAIN, choose_mix_route, consensus, verify_topology,
    verify_vote,
};
use umbra_fuzz::{NOW_MS, authority_key, rng, sign_text, trust};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let authorities = trust().authorities;
    match mode % 3 {
        0 => {
            let Ok(signed) = serde_json::from_str::<Signed>(text) else {
                return;
            };
            let _ = verify_topology(&signed, &trust(), NOW_MS, None);
            let _ = verify_vote(&signed, &authorities);
        }
        1 => {
            let signed = sign_text(text, TOPOLOGY_DOMAIN, &authority_key());
            let Ok(doc) = verify_topology(&signed, &trust(), NOW_MS, Some((0, 0))) else {
                return;
            };
            let _ = choose_mix_route(&doc, &mut rng(3));
            for g in doc.gateways() {
                let _ = (g.socket_addr(), g.client_socket_addr(), g.hop());
                assert!(doc.node(&g.identity).is_some());
            }
        }
        _ => {
            let signed = sign_text(text, VOTE_DOMAIN, &authority_key());
            let Ok(vote) = verify_vote(&signed, &authorities) else {
                return;
            };
            let Some(doc) = consensus(
                vote.epoch,
                vote.schedule,
                vote.params,
                std::slice::from_ref(&vote),
                1,
            ) else {
                panic!("one vote with threshold 1 makes no topology");
            };
            if vote.params.check().is_ok() {
                doc.check_rules()
                    .expect("the consensus of a verified vote breaks the rules");
            }
            let _ = topology::assign_layers(doc.epoch, &[]);
        }
    }
});
