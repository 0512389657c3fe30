//! Node descriptors, the signed JSON a node registers with an authority
//! (`topology::verify_descriptor`). The first byte picks the mode:
//!
//! - 0: the rest is a whole signed envelope;
//! - 1: the rest is a descriptor body, signed here with the identity key
//!   the seeds name, so that what is checked after the signature is
//!   reached (addresses, Sphinx keys, epochs).
//!
//! Both address policies are tried (public only, test network).
//!
//! Checks: a verified descriptor has a key for the epoch or the next; a
//! topology built from it passes `check_rules`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::topology::{
    AddressPolicy, DESCRIPTOR_DOMAIN, MAX_DESCRIPTOR_KEYS, NetworkParams, Signed, TopologyDocument,
    verify_descriptor,
};
use umbra_fuzz::{EPOCH, node_key, schedule, sign_text};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let signed = if mode % 2 == 0 {
        let Ok(s) = serde_json::from_str::<Signed>(text) else {
            return;
        };
        s
    } else {
        sign_text(text, DESCRIPTOR_DOMAIN, &node_key())
    };
    for policy in [AddressPolicy::PublicOnly, AddressPolicy::TestNetwork] {
        let Ok(d) = verify_descriptor(&signed, EPOCH, policy) else {
            continue;
        };
        assert!(!d.sphinx_keys.is_empty() && d.sphinx_keys.len() <= MAX_DESCRIPTOR_KEYS);
        assert!(d.key_for(EPOCH).is_some() || d.key_for(EPOCH + 1).is_some());
        for e in [EPOCH, EPOCH + 1] {
            let doc = TopologyDocument::build(
                e,
                1,
                schedule(),
                NetworkParams::default(),
                std::slice::from_ref(&d),
            );
            doc.check_rules()
                .expect("a topology of a verified descriptor breaks the rules");
        }
    }
});
