//! Every truncated, extended or bit-flipped packet is rejected without a panic:
//! header damage at the first hop, payload damage at the final hop (Sphinx
//! payloads are only authenticated end to end, by the Lioness padding check).

use proptest::prelude::*;
use protocol::packet::{
    HEADER_SIZE, Hop, PACKET_SIZE, Peeled, build_packet, peel, recover_plaintext, sphinx_keypair,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::time::Duration;
use x25519_dalek::StaticSecret;

fn fixture() -> (Vec<u8>, Vec<StaticSecret>) {
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let mut hops = vec![];
    let mut secrets = vec![];
    for i in 0..4u8 {
        let (s, p) = sphinx_keypair(&mut rng);
        hops.push(Hop {
            id: [i + 1; 32],
            sphinx_key: p,
        });
        secrets.push(s);
    }
    let pkt = build_packet(
        &mut rng,
        &hops,
        &[7; 32],
        [0; 16],
        &[Duration::ZERO; 4],
        b"payload",
    )
    .unwrap();
    (pkt, secrets)
}

/// Runs the packet through every hop; Ok(message) only if all hops accept and
/// the final payload opens.
fn deliver(mut pkt: Vec<u8>, secrets: &[StaticSecret]) -> Result<Vec<u8>, ()> {
    for (i, s) in secrets.iter().enumerate() {
        match peel(&pkt, s, |_, _| true).map_err(|_| ())? {
            Peeled::Forward { packet, .. } if i + 1 < secrets.len() => pkt = packet,
            Peeled::Final { payload, .. } if i + 1 == secrets.len() => {
                return recover_plaintext(&payload).map_err(|_| ());
            }
            _ => return Err(()),
        }
    }
    Err(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn header_bit_flips_fail_at_the_first_hop(bit in 0usize..HEADER_SIZE * 8) {
        // Bit 255 is the top bit of the group element α (bytes 0..32), which
        // X25519 ignores (RFC 7748 §5): the flipped packet peels the same,
        // with the same replay tag, so a replay of it is still refused.
        prop_assume!(bit != 255);
        let (mut pkt, secrets) = fixture();
        pkt[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(peel(&pkt, &secrets[0], |_, _| true).is_err());
    }

    #[test]
    fn payload_bit_flips_never_deliver(bit in HEADER_SIZE * 8..PACKET_SIZE * 8) {
        let (mut pkt, secrets) = fixture();
        pkt[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(deliver(pkt, &secrets).is_err());
    }

    #[test]
    fn wrong_lengths_are_rejected(len in 0usize..PACKET_SIZE * 2) {
        prop_assume!(len != PACKET_SIZE);
        let (pkt, secrets) = fixture();
        let mut v = pkt.clone();
        v.resize(len, 0);
        prop_assert!(peel(&v, &secrets[0], |_, _| true).is_err());
    }
}

#[test]
fn untouched_packet_is_delivered() {
    let (pkt, secrets) = fixture();
    assert_eq!(deliver(pkt, &secrets).unwrap(), b"payload");
}

/// The one header bit that changes nothing: the top bit of α.
#[test]
fn the_top_bit_of_alpha_is_ignored_and_keeps_the_replay_tag() {
    let (mut pkt, secrets) = fixture();
    let mut tags = Vec::new();
    peel(&pkt, &secrets[0], |t, _| {
        tags.push(*t);
        true
    })
    .unwrap();
    pkt[31] ^= 0x80;
    peel(&pkt, &secrets[0], |t, _| {
        tags.push(*t);
        true
    })
    .unwrap();
    // Each peel looks the tag up, then records it.
    assert_eq!(tags.len(), 4);
    assert!(tags.iter().all(|t| *t == tags[0]));
}
