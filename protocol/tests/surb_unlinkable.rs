//! SURB replies can be followed only by the SURB's creator.
//!
//! Umbra's SURB routes are L1, L2, L3, G where G is the creator's entry
//! gateway, not the creator. The old construction (sphinx-packet's
//! single-seed SURB, kept here as a fixture) put G's own payload key seed in
//! the SURB, so the replier (the dropbox gateway) encrypted with a key G
//! can derive: G and the replier together recognise the reply among all the
//! replier's outputs. The new one puts a fresh seed k̃ there, so no hop shares
//! a key with the replier. These tests play the attackers exactly and
//! check both constructions.

use protocol::messages::ACK_BODY;
use protocol::packet::{
    self, HEADER_SIZE, Hop, PAYLOAD_SIZE, Peeled, ReplyKey, SURB_LEN, build_surb, open_reply, peel,
    sample_delays, sphinx_keypair, use_surb,
};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sphinx_packet::SphinxPacket;
use sphinx_packet::header::delays::Delay;
use sphinx_packet::payload::Payload;
use sphinx_packet::payload::key::{PayloadKey, derive_payload_key};
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::{SURB, SURBMaterial, SurbReplyRecovery};
use std::time::Duration;
use x25519_dalek::{PublicKey, StaticSecret};

const TRIALS: usize = 50;
const CANDIDATES: usize = 32;
const MIXES_PER_LAYER: usize = 4;
const SEED_AT: usize = HEADER_SIZE + 32;

// ---------------------------------------------------------------------------
// The OLD construction, as `protocol::packet::build_surb` / `open_reply` did
// it before: sphinx-packet's single-seed SURB, whose 16 seed bytes are the
// last hop's own payload key seed. Test fixture only.
// ---------------------------------------------------------------------------

fn old_build_surb(
    rng: &mut ChaCha20Rng,
    route: &[Hop],
    destination: &[u8; 32],
    identifier: [u8; 16],
    delays: &[Duration],
) -> (Vec<u8>, SurbReplyRecovery) {
    let nodes = route
        .iter()
        .map(|h| {
            Node::new(
                NodeAddressBytes::from_bytes(h.id),
                PublicKey::from(h.sphinx_key),
            )
        })
        .collect();
    let delays = delays
        .iter()
        .map(|d| Delay::new_from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
        .collect();
    let dest = Destination::new(
        DestinationAddressBytes::from_bytes(*destination),
        identifier,
    );
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let material = SURBMaterial::new(
        nodes,
        delays,
        dest,
        sphinx_packet::version::SINGLE_SEED_SURB_VERSION,
    );
    let (surb, key) = SURB::new_recoverable(StaticSecret::from(seed), material).unwrap();
    (surb.to_bytes(), key)
}

fn old_open_reply(key: &SurbReplyRecovery, payload: &[u8]) -> Option<Vec<u8>> {
    key.recover_plaintext(Payload::from_bytes(payload).ok()?)
        .ok()
}

// ---------------------------------------------------------------------------
// The network: three mix layers and the one entry gateway G.
// ---------------------------------------------------------------------------

struct Mix {
    hop: Hop,
    secret: StaticSecret,
}

struct Net {
    layers: Vec<Vec<Mix>>,
    g: Mix,
}

fn mix(rng: &mut ChaCha20Rng, id: u8) -> Mix {
    let (secret, sphinx_key) = sphinx_keypair(rng);
    Mix {
        hop: Hop {
            id: [id; 32],
            sphinx_key,
        },
        secret,
    }
}

fn network(rng: &mut ChaCha20Rng) -> Net {
    let mut id = 0u8;
    let mut next = || {
        id += 1;
        id
    };
    let layers = (0..3)
        .map(|_| (0..MIXES_PER_LAYER).map(|_| mix(rng, next())).collect())
        .collect();
    let g = mix(rng, 200);
    Net { layers, g }
}

/// L1, L2, L3 drawn at random from their layers, then G.
fn route<'a>(net: &'a Net, rng: &mut ChaCha20Rng) -> Vec<&'a Mix> {
    let mut r: Vec<&Mix> = net
        .layers
        .iter()
        .map(|l| &l[rng.random_range(0..l.len())])
        .collect();
    r.push(&net.g);
    r
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Construction {
    New,
    Old,
}

enum Opener {
    New(ReplyKey),
    Old(SurbReplyRecovery),
}

impl Opener {
    fn open(&self, payload: &[u8]) -> Option<Vec<u8>> {
        match self {
            Opener::New(k) => open_reply(k, payload).ok(),
            Opener::Old(k) => old_open_reply(k, payload),
        }
    }
}

fn identifier(rng: &mut ChaCha20Rng) -> [u8; 16] {
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    id[0] |= 1;
    id
}

fn make_surb(c: Construction, rng: &mut ChaCha20Rng, route: &[&Mix]) -> (Vec<u8>, Opener) {
    let hops: Vec<Hop> = route.iter().map(|m| m.hop).collect();
    let delays = sample_delays(rng, hops.len(), Duration::from_millis(50));
    let id = identifier(rng);
    let dest = [0xA5; 32];
    let (surb, opener) = match c {
        Construction::New => {
            let (s, k) = build_surb(rng, &hops, &dest, id, &delays).unwrap();
            (s, Opener::New(k))
        }
        Construction::Old => {
            let (s, k) = old_build_surb(rng, &hops, &dest, id, &delays);
            (s, Opener::Old(k))
        }
    };
    assert_eq!(
        surb.len(),
        SURB_LEN,
        "both constructions share the wire format"
    );
    (surb, opener)
}

fn message(rng: &mut ChaCha20Rng) -> Vec<u8> {
    let len = rng.random_range(1..=600);
    let mut m = vec![0u8; len];
    rng.fill_bytes(&mut m);
    m
}

/// What a reply looks like along its way.
struct Journey {
    /// The payload as it left the replier.
    sent: Vec<u8>,
    /// The payload after L1's, L2's and L3's peel, then after G's.
    after: Vec<Vec<u8>>,
    /// The whole packet as G receives it.
    at_g: Vec<u8>,
}

impl Journey {
    fn final_payload(&self) -> &[u8] {
        self.after.last().unwrap()
    }
}

/// The replier uses `surb` for `msg`; the route's hops peel it in turn.
fn travel(surb: &[u8], msg: &[u8], route: &[&Mix]) -> Journey {
    let (first, mut pkt) = use_surb(surb, msg).unwrap();
    assert_eq!(first, route[0].hop.id);
    let sent = pkt[HEADER_SIZE..].to_vec();
    let mut after = vec![];
    let mut at_g = None;
    for (i, m) in route.iter().enumerate() {
        if i == route.len() - 1 {
            at_g = Some(pkt.clone());
        }
        match peel(&pkt, &m.secret, |_, _| true).unwrap() {
            Peeled::Forward {
                next_hop, packet, ..
            } => {
                assert_eq!(next_hop, route[i + 1].hop.id);
                after.push(packet[HEADER_SIZE..].to_vec());
                pkt = packet;
            }
            Peeled::Final {
                payload,
                identifier,
                ..
            } => {
                assert_eq!(i, route.len() - 1, "only G is final");
                assert_ne!(identifier, [0; 16]);
                after.push(payload);
            }
        }
    }
    Journey {
        sent,
        after,
        at_g: at_g.unwrap(),
    }
}

/// The payload key seed a hop holding `secret` derives from `packet`: all a
/// hop can compute about the payload.
fn hop_seed(secret: &StaticSecret, packet: &[u8]) -> [u8; 16] {
    let p = SphinxPacket::from_bytes(packet).unwrap();
    *p.header
        .compute_expanded_shared_secret(secret)
        .payload_key_seed()
}

fn unwrap_with(key: &PayloadKey, payload: &[u8]) -> Vec<u8> {
    Payload::from_bytes(payload)
        .unwrap()
        .unwrap(key)
        .unwrap()
        .into_bytes()
}

fn add_layer(key: &PayloadKey, payload: &[u8]) -> Vec<u8> {
    Payload::from_bytes(payload)
        .unwrap()
        .add_encryption_layer(key)
        .unwrap()
        .into_bytes()
}

/// Unwrapping `payload` once with `key` gives valid padding.
fn opens_with(key: &PayloadKey, payload: &[u8]) -> Option<Vec<u8>> {
    Payload::from_bytes(&unwrap_with(key, payload))
        .unwrap()
        .recover_plaintext()
        .ok()
}

fn has_valid_padding(payload: &[u8]) -> bool {
    packet::recover_plaintext(payload).is_ok()
}

// ---------------------------------------------------------------------------
// 1. The entry gateway and the replier collude.
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Collusion {
    linked: usize,
    false_hits: usize,
    read_at_g: usize,
}

fn collude(c: Construction, seed: u64) -> Collusion {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let net = network(&mut rng);
    let mut out = Collusion::default();
    for _ in 0..TRIALS {
        // The true reply, and where among the replier's outputs it is.
        let true_route = route(&net, &mut rng);
        let (true_surb, opener) = make_surb(c, &mut rng, &true_route);
        let true_msg = message(&mut rng);
        let true_at = rng.random_range(0..CANDIDATES);
        let journey = travel(&true_surb, &true_msg, &true_route);
        // Not vacuous: the reply is real and its creator reads it.
        assert_eq!(
            opener.open(journey.final_payload()).as_deref(),
            Some(&true_msg[..])
        );

        // The replier's 32 output payloads: 31 decoys (other SURBs ending at
        // G, other messages) and the true one.
        let mut candidates = Vec::with_capacity(CANDIDATES);
        for i in 0..CANDIDATES {
            if i == true_at {
                candidates.push(journey.sent.clone());
            } else {
                let r = route(&net, &mut rng);
                let (s, _) = make_surb(c, &mut rng, &r);
                let (_, p) = use_surb(&s, &message(&mut rng)).unwrap();
                candidates.push(p[HEADER_SIZE..].to_vec());
            }
        }

        // G, final hop of the true reply, computes all it can.
        let g_key = derive_payload_key(&hop_seed(&net.g.secret, &journey.at_g));
        let arrived = journey.at_g[HEADER_SIZE..].to_vec();
        let final_payload = journey.final_payload();
        assert_eq!(unwrap_with(&g_key, &arrived), final_payload);

        // The attack: which candidates open under G's key, or equal what G saw?
        let matches: Vec<usize> = (0..CANDIDATES)
            .filter(|&i| {
                let cand = &candidates[i];
                opens_with(&g_key, cand).is_some() || cand == &arrived || cand == final_payload
            })
            .collect();
        if matches == [true_at] {
            out.linked += 1;
        }
        out.false_hits += matches.iter().filter(|&&i| i != true_at).count();
        // And the final-hop payload itself: G reads it as delivered, or once more unwrapped.
        if has_valid_padding(final_payload) || opens_with(&g_key, final_payload).is_some() {
            out.read_at_g += 1;
        }
    }
    out
}

#[test]
fn surb_unlinkable_entry_gateway_and_replier_collusion() {
    let new = collude(Construction::New, 0x5eed_0001);
    let old = collude(Construction::Old, 0x5eed_0001);
    eprintln!(
        "surb_unlinkable collusion: new construction {}/{TRIALS} linked, {} false hits, {} read at G; \
         old construction {}/{TRIALS} linked, {} false hits, {} read at G",
        new.linked, new.false_hits, new.read_at_g, old.linked, old.false_hits, old.read_at_g
    );
    assert_eq!(new.linked, 0, "new: {new:?}");
    assert_eq!(new.false_hits, 0, "new: {new:?}");
    assert_eq!(new.read_at_g, 0, "new: {new:?}");
    // The fixture reproduces the attack on the old construction.
    assert_eq!(old.linked, TRIALS, "old: {old:?}");
    assert_eq!(old.false_hits, 0, "old: {old:?}");
    assert_eq!(old.read_at_g, 0, "old: {old:?}");
}

// ---------------------------------------------------------------------------
// 2. The replier alone cannot predict any hop's payload.
// ---------------------------------------------------------------------------

/// Which of the replier's predictions come true for one SURB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Predictions {
    /// Some hop's payload equals the replier's output, or that output with
    /// one `k̃` layer added or removed.
    hop_payload_predicted: bool,
    /// Unwrapping some hop's payload with `k̃`'s key gives valid padding.
    hop_payload_opens_with_seed: bool,
    /// Some hop derives the very seed the SURB carries.
    hop_shares_the_seed: bool,
    /// The replier's output, unwrapped with the final hop's payload key,
    /// is the plaintext.
    final_hop_key_opens_output: bool,
}

fn predictions(c: Construction, rng: &mut ChaCha20Rng, net: &Net) -> Predictions {
    let r = route(net, rng);
    let (surb, opener) = make_surb(c, rng, &r);
    let msg = message(rng);
    let j = travel(&surb, &msg, &r);
    assert_eq!(opener.open(j.final_payload()).as_deref(), Some(&msg[..]));

    // What the replier holds and computes.
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&surb[SEED_AT..]);
    let k = derive_payload_key(&seed);
    let known = [
        j.sent.clone(),
        add_layer(&k, &j.sent),
        unwrap_with(&k, &j.sent),
    ];
    // Not vacuous: the seed's key is the replier's one layer.
    assert_eq!(opens_with(&k, &j.sent).as_deref(), Some(&msg[..]));

    let mut p = Predictions::default();
    for h in &j.after {
        assert_eq!(h.len(), PAYLOAD_SIZE);
        p.hop_payload_predicted |= known.contains(h);
        p.hop_payload_opens_with_seed |= opens_with(&k, h).is_some();
    }
    // Each hop's seed, from the packet it receives.
    let (_, mut pkt) = use_surb(&surb, &msg).unwrap();
    let mut g_seed = [0u8; 16];
    for m in &r {
        let s = hop_seed(&m.secret, &pkt);
        p.hop_shares_the_seed |= s == seed;
        g_seed = s;
        if let Peeled::Forward { packet, .. } = peel(&pkt, &m.secret, |_, _| true).unwrap() {
            pkt = packet;
        }
    }
    p.final_hop_key_opens_output =
        opens_with(&derive_payload_key(&g_seed), &j.sent).as_deref() == Some(&msg[..]);
    p
}

#[test]
fn surb_unlinkable_replier_cannot_predict_hop_payloads() {
    const SURBS: usize = 20;
    let mut rng = ChaCha20Rng::seed_from_u64(0x5eed_0002);
    let net = network(&mut rng);
    for i in 0..SURBS {
        let new = predictions(Construction::New, &mut rng, &net);
        assert_eq!(new, Predictions::default(), "new construction, SURB {i}");
        // The old construction: the replier cannot predict hop payloads
        // either, but it shares its one key with the final hop.
        let old = predictions(Construction::Old, &mut rng, &net);
        assert_eq!(
            old,
            Predictions {
                hop_payload_predicted: false,
                hop_payload_opens_with_seed: false,
                hop_shares_the_seed: true,
                final_hop_key_opens_output: true,
            },
            "old construction, SURB {i}"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Store-acks carry nothing a hop can recognise.
// ---------------------------------------------------------------------------

fn equal_positions(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

#[test]
fn surb_unlinkable_store_ack_carries_no_pattern() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x5eed_0003);
    let net = network(&mut rng);
    for trial in 0..10 {
        // Two SURBs over the very same route, both carrying ACK_BODY.
        let r = route(&net, &mut rng);
        let (s1, k1) = make_surb(Construction::New, &mut rng, &r);
        let (s2, k2) = make_surb(Construction::New, &mut rng, &r);
        let a = travel(&s1, ACK_BODY, &r);
        let b = travel(&s2, ACK_BODY, &r);
        assert_eq!(k1.open(a.final_payload()).as_deref(), Some(ACK_BODY));
        assert_eq!(k2.open(b.final_payload()).as_deref(), Some(ACK_BODY));

        let stages = std::iter::once((&a.sent, &b.sent)).chain(a.after.iter().zip(&b.after));
        for (stage, (x, y)) in stages.enumerate() {
            assert_ne!(x, y, "trial {trial}, stage {stage}");
            // Random 2048-byte strings agree in about 8 positions.
            let eq = equal_positions(x, y);
            assert!(eq < 48, "trial {trial}, stage {stage}: {eq} equal bytes");
        }

        // G cannot open an ack, alone or with the replier's output.
        for (j, surb) in [(&a, &s1), (&b, &s2)] {
            let g_key = derive_payload_key(&hop_seed(&net.g.secret, &j.at_g));
            assert!(!has_valid_padding(j.final_payload()), "trial {trial}");
            assert!(opens_with(&g_key, j.final_payload()).is_none());
            assert!(opens_with(&g_key, &j.at_g[HEADER_SIZE..]).is_none());
            assert!(opens_with(&g_key, &j.sent).is_none(), "trial {trial}");
            // Only the replier's seed opens the replier's output.
            let mut seed = [0u8; 16];
            seed.copy_from_slice(&surb[SEED_AT..]);
            assert_eq!(
                opens_with(&derive_payload_key(&seed), &j.sent).as_deref(),
                Some(ACK_BODY)
            );
        }

        // Contrast: with the old construction G opens the replier's ack.
        let (s_old, _) = make_surb(Construction::Old, &mut rng, &r);
        let o = travel(&s_old, ACK_BODY, &r);
        let g_key = derive_payload_key(&hop_seed(&net.g.secret, &o.at_g));
        assert_eq!(opens_with(&g_key, &o.sent).as_deref(), Some(ACK_BODY));
    }
}
