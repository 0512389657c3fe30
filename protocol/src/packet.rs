//! Sphinx packets on top of `sphinx-packet`: creation, one-hop processing, delays.
//!
//! Every packet Umbra sends — data, acks, cover, fetches and replies — has the same
//! size, [`PACKET_SIZE`], so no kind of packet forms its own anonymity set.

use crate::{Error, NodeId};
use rand::{CryptoRng, Rng};
use rand_distr::{Distribution, Exp};
use sphinx_packet::header::delays::Delay;
use sphinx_packet::payload::key::{PayloadKey, derive_payload_key};
use sphinx_packet::payload::{PAYLOAD_OVERHEAD_SIZE, Payload};
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::{ProcessedPacketData, SphinxPacket, SphinxPacketBuilder};
use std::time::Duration;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Sphinx payload size. 2048 bytes carries a useful fragment of a picture or
/// voice note in one packet while keeping a packet under two QUIC stream frames.
pub const PAYLOAD_SIZE: usize = 2048;
/// Sphinx header size for sphinx-packet 0.8 (max path length 5).
pub const HEADER_SIZE: usize = sphinx_packet::header::HEADER_SIZE;
/// Size of every Sphinx packet on every link.
pub const PACKET_SIZE: usize = HEADER_SIZE + PAYLOAD_SIZE;
/// Largest plaintext that fits one packet.
pub const MAX_MESSAGE_LEN: usize = PAYLOAD_SIZE - PAYLOAD_OVERHEAD_SIZE;
/// Longest route Sphinx supports.
pub const MAX_HOPS: usize = sphinx_packet::constants::MAX_PATH_LENGTH;
/// Size of the final hop's destination address.
pub const DESTINATION_LEN: usize = 32;
/// Size of the SURB identifier delivered to the final hop.
pub const IDENTIFIER_LEN: usize = 16;

/// Output of the Sphinx replay oracle for one hop.
pub type ReplayTag = [u8; 32];

/// One hop of a route: who it is, and the Sphinx key it holds for the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The node's identity, written into the previous hop's routing info.
    pub id: NodeId,
    /// The node's x25519 Sphinx public key for the packet's epoch.
    pub sphinx_key: [u8; 32],
}

/// What one node learns by peeling its layer.
#[derive(Debug)]
pub enum Peeled {
    /// Forward `packet` to `next_hop` after `delay`.
    Forward {
        /// Identity of the next node.
        next_hop: NodeId,
        /// How long the sender asked this node to hold the packet.
        delay: Duration,
        /// The re-encrypted packet, still [`PACKET_SIZE`] bytes.
        packet: Vec<u8>,
    },
    /// This node is the final hop.
    Final {
        /// Destination address chosen by the sender (e.g. a dropbox id).
        destination: [u8; DESTINATION_LEN],
        /// SURB identifier, or zeros for a forward packet.
        identifier: [u8; IDENTIFIER_LEN],
        /// The payload with every layer removed; for a forward packet
        /// [`recover_plaintext`] opens it.
        payload: Vec<u8>,
    },
}

fn sphinx_err(e: sphinx_packet::Error) -> Error {
    Error::InvalidPacket(e.to_string())
}

/// The time a route's hops hold a packet built with `delays`: every hop's
/// but the last (the final hop delivers at once; sphinx-packet carries no
/// delay for it), each clamped to `max` as nodes clamp it.
pub fn applied_delay(delays: &[Duration], max: Duration) -> Duration {
    let n = delays.len().saturating_sub(1);
    delays[..n].iter().map(|d| (*d).min(max)).sum()
}

/// Draws one delay per hop from Exp(mean). A zero mean gives zero delays.
pub fn sample_delays<R: Rng + ?Sized>(rng: &mut R, hops: usize, mean: Duration) -> Vec<Duration> {
    let mean_s = mean.as_secs_f64();
    if mean_s <= 0.0 {
        return vec![Duration::ZERO; hops];
    }
    let Ok(exp) = Exp::new(1.0 / mean_s) else {
        return vec![Duration::ZERO; hops];
    };
    (0..hops)
        .map(|_| Duration::from_secs_f64(exp.sample(rng).min(1.0e6)))
        .collect()
}

/// The route, delays and destination in sphinx-packet's types.
fn to_sphinx(
    route: &[Hop],
    delays: &[Duration],
    destination: &[u8; DESTINATION_LEN],
    identifier: [u8; IDENTIFIER_LEN],
) -> (Vec<Node>, Vec<Delay>, Destination) {
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
    (nodes, delays, dest)
}

/// Builds one packet for `route`, ending at `destination` with `identifier`,
/// asking hop `i` to wait `delays[i]` (the final hop delivers at once:
/// sphinx-packet does not carry its delay). Randomness comes only from `rng`
/// and the crate's own padding.
pub fn build_packet<R: CryptoRng + ?Sized>(
    rng: &mut R,
    route: &[Hop],
    destination: &[u8; DESTINATION_LEN],
    identifier: [u8; IDENTIFIER_LEN],
    delays: &[Duration],
    message: &[u8],
) -> Result<Vec<u8>, Error> {
    if route.is_empty() || route.len() > MAX_HOPS {
        return Err(Error::InvalidArgument(format!(
            "route has {} hops; 1..={MAX_HOPS} allowed",
            route.len()
        )));
    }
    if delays.len() != route.len() {
        return Err(Error::InvalidArgument(format!(
            "{} delays for {} hops",
            delays.len(),
            route.len()
        )));
    }
    if message.len() > MAX_MESSAGE_LEN {
        return Err(Error::InvalidArgument(format!(
            "message of {} bytes exceeds {MAX_MESSAGE_LEN}",
            message.len()
        )));
    }
    let (nodes, sphinx_delays, dest) = to_sphinx(route, delays, destination, identifier);
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    let initial = StaticSecret::from(*seed);
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(PAYLOAD_SIZE)
        .with_initial_secret(&initial)
        .build_packet(message, &nodes, &dest, &sphinx_delays)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(packet.to_bytes())
}

/// What [`peel`] asks of the replay cache: whether a tag is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStep {
    /// Only look: is the tag new? Records nothing.
    Look,
    /// Record the tag, and say whether it was new (another copy of the
    /// packet may have been recorded since the look).
    Record,
}

/// Peels one layer with `key`.
///
/// Order matters. A replay is refused after the DH and one look at the
/// cache (`is_fresh(tag, Look)`), before any other crypto. The header MAC
/// is checked once, inside the unwrap, and only a packet whose MAC holds
/// has its tag recorded (`is_fresh(tag, Record)`), so that junk cannot fill
/// the replay cache. Nothing here panics on any input.
pub fn peel(
    packet: &[u8],
    key: &StaticSecret,
    mut is_fresh: impl FnMut(&ReplayTag, ReplayStep) -> bool,
) -> Result<Peeled, Error> {
    if packet.len() != PACKET_SIZE {
        return Err(Error::InvalidPacket(format!(
            "packet of {} bytes, expected {PACKET_SIZE}",
            packet.len()
        )));
    }
    let packet = SphinxPacket::from_bytes(packet).map_err(sphinx_err)?;
    let expanded = packet.header.compute_expanded_shared_secret(key);
    if !is_fresh(expanded.replay_tag(), ReplayStep::Look) {
        return Err(Error::Replay);
    }
    // Checks the header MAC before it unwraps anything (sphinx-packet's
    // `process_with_expanded_secret`): checking it here as well cost a
    // second HMAC per packet.
    let processed = packet
        .process_with_expanded_secret(&expanded)
        .map_err(sphinx_err)?;
    if !is_fresh(expanded.replay_tag(), ReplayStep::Record) {
        return Err(Error::Replay);
    }
    Ok(match processed.data {
        ProcessedPacketData::ForwardHop {
            next_hop_packet,
            next_hop_address,
            delay,
        } => Peeled::Forward {
            next_hop: next_hop_address.to_bytes(),
            delay: delay.to_duration(),
            packet: packet_bytes(&next_hop_packet),
        },
        ProcessedPacketData::FinalHop {
            destination,
            identifier,
            payload,
        } => Peeled::Final {
            destination: destination.as_bytes(),
            identifier,
            payload: payload.into_bytes(),
        },
    })
}

/// `packet`'s bytes, as [`SphinxPacket::to_bytes`] gives them but copied
/// as two slices: `to_bytes` collects the 2 kB payload byte by byte, a
/// measurable share of a mix node's CPU beside the unwrap.
fn packet_bytes(packet: &SphinxPacket) -> Vec<u8> {
    let header = packet.header.to_bytes();
    let payload = packet.payload.as_bytes();
    let mut v = Vec::with_capacity(header.len() + payload.len());
    v.extend_from_slice(&header);
    v.extend_from_slice(payload);
    v
}

/// Bytes of a payload key seed (`K_i[32..48]`, §2.3 of `docs/protocol.md`)
/// and of a SURB's reply seed.
pub const SEED_LEN: usize = 16;

/// Bytes of a serialised SURB: header, first hop, reply seed.
pub const SURB_LEN: usize = HEADER_SIZE + 32 + SEED_LEN;

/// What a SURB's creator keeps to read the reply: the SURB's identifier,
/// the reply seed `k̃` carried in the SURB, and every hop's payload key seed
/// in route order.
///
/// Nobody else holds all of it: the replier knows only `k̃`, each hop only
/// its own seed. Zeroized on drop; `Debug` shows only the number of hops.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ReplyKey {
    identifier: [u8; IDENTIFIER_LEN],
    reply_seed: [u8; SEED_LEN],
    hop_seeds: Vec<[u8; SEED_LEN]>,
}

impl std::fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The identifier is no key, but it links the reply to its Deliver
        // frame: it is left out too.
        f.debug_struct("ReplyKey")
            .field("hops", &self.hop_seeds.len())
            .finish_non_exhaustive()
    }
}

impl ReplyKey {
    /// The identifier the reply arrives under (delivered to the final hop
    /// in the clear); the creator files this key under it.
    pub fn identifier(&self) -> &[u8; IDENTIFIER_LEN] {
        &self.identifier
    }

    /// Hops of the SURB's route.
    pub fn num_hops(&self) -> usize {
        self.hop_seeds.len()
    }

    /// Length of [`Self::to_bytes`] for a route of `hops` hops.
    pub const fn serialized_len(hops: usize) -> usize {
        IDENTIFIER_LEN + SEED_LEN + hops * SEED_LEN
    }

    /// `identifier[16] || k̃[16] || seed_0[16] || … || seed_{n-1}[16]`,
    /// seeds in route order. Secret: the buffer is zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(Self::serialized_len(
            self.hop_seeds.len(),
        )));
        out.extend_from_slice(&self.identifier);
        out.extend_from_slice(&self.reply_seed);
        for seed in &self.hop_seeds {
            out.extend_from_slice(seed);
        }
        out
    }

    /// Parses [`Self::to_bytes`]: 1..=[`MAX_HOPS`] seeds, nothing left over.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let fixed = IDENTIFIER_LEN + SEED_LEN;
        let body = bytes.len().saturating_sub(fixed);
        let hops = body / SEED_LEN;
        if bytes.len() < Self::serialized_len(1)
            || !body.is_multiple_of(SEED_LEN)
            || hops > MAX_HOPS
        {
            return Err(Error::InvalidArgument(format!(
                "reply key of {} bytes; expected {} + 16·n with 1 ≤ n ≤ {MAX_HOPS}",
                bytes.len(),
                fixed
            )));
        }
        let mut key = Self {
            identifier: [0; IDENTIFIER_LEN],
            reply_seed: [0; SEED_LEN],
            hop_seeds: Vec::with_capacity(hops),
        };
        key.identifier.copy_from_slice(&bytes[..IDENTIFIER_LEN]);
        key.reply_seed
            .copy_from_slice(&bytes[IDENTIFIER_LEN..fixed]);
        let (seeds, _) = bytes[fixed..].as_chunks::<SEED_LEN>();
        key.hop_seeds.extend_from_slice(seeds);
        Ok(key)
    }
}

/// Builds a single-block reply (SURB) for `route`, ending at `destination`
/// with the non-zero `identifier` the creator looks its [`ReplyKey`] up by.
///
/// The SURB carries a fresh reply seed `k̃` drawn from `rng`, not any hop's
/// payload key seed: the replier encrypts with `k̃` only, every hop (the
/// final one included) removes a layer with its own key, and only the
/// creator, holding every seed, can undo both. See §2.9 of
/// `docs/protocol.md`.
pub fn build_surb<R: CryptoRng + ?Sized>(
    rng: &mut R,
    route: &[Hop],
    destination: &[u8; DESTINATION_LEN],
    identifier: [u8; IDENTIFIER_LEN],
    delays: &[Duration],
) -> Result<(Vec<u8>, ReplyKey), Error> {
    if route.is_empty() || route.len() > MAX_HOPS || delays.len() != route.len() {
        return Err(Error::InvalidArgument(format!(
            "SURB route of {} hops with {} delays",
            route.len(),
            delays.len()
        )));
    }
    let (nodes, sphinx_delays, dest) = to_sphinx(route, delays, destination, identifier);
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    let mut reply_seed = Zeroizing::new([0u8; SEED_LEN]);
    rng.fill_bytes(reply_seed.as_mut());
    // The crate's single-seed SURB gives the header (version 260) and, in
    // its recovery material, every hop's seed. Its own seed slot holds the
    // last hop's seed; that is overwritten with k̃ below.
    let material = sphinx_packet::SURBMaterial::new(
        nodes,
        sphinx_delays,
        dest,
        sphinx_packet::version::SINGLE_SEED_SURB_VERSION,
    );
    let (surb, recovery) =
        sphinx_packet::SURB::new_recoverable(StaticSecret::from(*seed), material)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let mut bytes = surb.to_bytes();
    let recovery = Zeroizing::new(recovery.to_bytes());
    // `identifier[16] || seed_0[16] || … || seed_{n-1}[16]`
    let seeds = recovery.get(IDENTIFIER_LEN..).unwrap_or_default();
    if bytes.len() != SURB_LEN || seeds.len() != route.len() * SEED_LEN {
        bytes.zeroize();
        return Err(Error::InvalidArgument(
            "sphinx-packet built a SURB of unexpected shape".into(),
        ));
    }
    bytes[HEADER_SIZE + 32..].copy_from_slice(reply_seed.as_ref());
    let (hop_seeds, _) = seeds.as_chunks::<SEED_LEN>();
    let key = ReplyKey {
        identifier,
        reply_seed: *reply_seed,
        hop_seeds: hop_seeds.to_vec(),
    };
    Ok((bytes, key))
}

/// Uses a SURB received from a peer: returns the first hop and the reply packet.
pub fn use_surb(surb: &[u8], message: &[u8]) -> Result<(NodeId, Vec<u8>), Error> {
    if surb.len() != SURB_LEN {
        return Err(Error::InvalidPacket(format!(
            "SURB of {} bytes, expected {SURB_LEN}",
            surb.len()
        )));
    }
    if message.len() > MAX_MESSAGE_LEN {
        return Err(Error::InvalidArgument(format!(
            "reply of {} bytes exceeds {MAX_MESSAGE_LEN}",
            message.len()
        )));
    }
    let surb = sphinx_packet::SURB::from_bytes(surb).map_err(sphinx_err)?;
    let (packet, first) = surb.use_surb(message, PAYLOAD_SIZE).map_err(sphinx_err)?;
    Ok((first.to_bytes(), packet.to_bytes()))
}

/// Opens a reply payload as delivered by the final hop, with the creator's key.
///
/// Every hop removed one layer with its own payload key, first hop first;
/// this re-adds them last hop first, which leaves the replier's single
/// layer under `k̃`, removes that, and checks the padding. A payload made
/// for another key fails the padding check.
pub fn open_reply(key: &ReplyKey, payload: &[u8]) -> Result<Vec<u8>, Error> {
    if payload.len() != PAYLOAD_SIZE {
        return Err(Error::InvalidPacket(format!(
            "reply payload of {} bytes, expected {PAYLOAD_SIZE}",
            payload.len()
        )));
    }
    // The derived keys are passed by reference, so that the only copy is
    // the one zeroized on drop.
    let mut p = Payload::from_bytes(payload).map_err(sphinx_err)?;
    for seed in key.hop_seeds.iter().rev() {
        let hop_key = Zeroizing::new(derive_payload_key(seed));
        let hop_key: &PayloadKey = &hop_key;
        p = p.add_encryption_layer(hop_key).map_err(sphinx_err)?;
    }
    let reply_key = Zeroizing::new(derive_payload_key(&key.reply_seed));
    let reply_key: &PayloadKey = &reply_key;
    p.unwrap(reply_key)
        .and_then(Payload::recover_plaintext)
        .map_err(sphinx_err)
}

/// Opens the payload of a forward packet at its final hop.
pub fn recover_plaintext(payload: &[u8]) -> Result<Vec<u8>, Error> {
    Payload::from_bytes(payload)
        .and_then(Payload::recover_plaintext)
        .map_err(sphinx_err)
}

/// A fresh x25519 Sphinx key pair from `rng`.
pub fn sphinx_keypair<R: CryptoRng + ?Sized>(rng: &mut R) -> (StaticSecret, [u8; 32]) {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    let secret = StaticSecret::from(*seed);
    let public = PublicKey::from(&secret).to_bytes();
    (secret, public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    pub(crate) fn route(rng: &mut ChaCha20Rng, n: usize) -> (Vec<Hop>, Vec<StaticSecret>) {
        let mut hops = Vec::new();
        let mut secrets = Vec::new();
        for i in 0..n {
            let (s, p) = sphinx_keypair(rng);
            hops.push(Hop {
                id: [i as u8 + 1; 32],
                sphinx_key: p,
            });
            secrets.push(s);
        }
        (hops, secrets)
    }

    #[test]
    fn sizes_match_the_design() {
        assert_eq!(HEADER_SIZE, 348);
        assert_eq!(PACKET_SIZE, 2396);
    }

    #[test]
    fn four_hops_round_trip_with_delays() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (hops, secrets) = route(&mut rng, 4);
        let delays = sample_delays(&mut rng, 4, Duration::from_millis(50));
        let dest = [9u8; 32];
        let mut pkt = build_packet(&mut rng, &hops, &dest, [0; 16], &delays, b"hello").unwrap();
        for i in 0..3 {
            assert_eq!(pkt.len(), PACKET_SIZE);
            match peel(&pkt, &secrets[i], |_, _| true).unwrap() {
                Peeled::Forward {
                    next_hop,
                    delay,
                    packet,
                } => {
                    assert_eq!(next_hop, hops[i + 1].id);
                    assert_eq!(delay, delays[i]);
                    pkt = packet;
                }
                Peeled::Final { .. } => panic!("final too early"),
            }
        }
        match peel(&pkt, &secrets[3], |_, _| true).unwrap() {
            Peeled::Final {
                destination,
                payload,
                ..
            } => {
                assert_eq!(destination, dest);
                assert_eq!(recover_plaintext(&payload).unwrap(), b"hello");
            }
            Peeled::Forward { .. } => panic!("expected final hop"),
        }
    }

    #[test]
    fn a_peeled_packets_bytes_are_sphinx_packets_own() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (hops, secrets) = route(&mut rng, 2);
        let delays = [Duration::from_millis(3), Duration::ZERO];
        let pkt = build_packet(&mut rng, &hops, &[1; 32], [0; 16], &delays, b"x").unwrap();
        let Ok(Peeled::Forward { packet, .. }) = peel(&pkt, &secrets[0], |_, _| true) else {
            panic!("expected a forward hop");
        };
        let sphinx = SphinxPacket::from_bytes(&packet).unwrap();
        assert_eq!(packet, sphinx.to_bytes());
        assert_eq!(packet_bytes(&sphinx), packet);
    }

    #[test]
    fn wrong_key_fails_before_the_tag_is_recorded() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (hops, _) = route(&mut rng, 3);
        let (other, _) = sphinx_keypair(&mut rng);
        let pkt = build_packet(
            &mut rng,
            &hops,
            &[0; 32],
            [0; 16],
            &[Duration::ZERO; 3],
            b"x",
        )
        .unwrap();
        let mut steps = Vec::new();
        let r = peel(&pkt, &other, |_, step| {
            steps.push(step);
            true
        });
        assert!(matches!(r, Err(Error::InvalidPacket(_))));
        assert_eq!(
            steps,
            [ReplayStep::Look],
            "an unauthenticated packet's tag must not be recorded"
        );
    }

    #[test]
    fn a_fresh_packet_is_looked_up_then_recorded_once_and_a_late_copy_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (hops, secrets) = route(&mut rng, 3);
        let pkt = build_packet(
            &mut rng,
            &hops,
            &[0; 32],
            [0; 16],
            &[Duration::ZERO; 3],
            b"x",
        )
        .unwrap();
        let mut steps = Vec::new();
        let mut tags = Vec::new();
        let r = peel(&pkt, &secrets[0], |tag, step| {
            steps.push(step);
            tags.push(*tag);
            true
        });
        assert!(matches!(r, Ok(Peeled::Forward { .. })));
        assert_eq!(steps, [ReplayStep::Look, ReplayStep::Record]);
        assert_eq!(tags[0], tags[1], "the tag looked up is the one recorded");
        // A copy recorded between the look and the record (another worker
        // peeling the same packet) makes this one a replay.
        let r = peel(&pkt, &secrets[0], |_, step| step == ReplayStep::Look);
        assert!(matches!(r, Err(Error::Replay)));
        // A tag already recorded is refused at the look, before the unwrap.
        let mut steps = Vec::new();
        let r = peel(&pkt, &secrets[0], |_, step| {
            steps.push(step);
            false
        });
        assert!(matches!(r, Err(Error::Replay)));
        assert_eq!(steps, [ReplayStep::Look]);
    }

    #[test]
    fn oversize_message_and_bad_routes_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (hops, _) = route(&mut rng, 6);
        let z = [Duration::ZERO; 6];
        let big = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert!(build_packet(&mut rng, &hops[..3], &[0; 32], [0; 16], &z[..3], &big).is_err());
        assert!(build_packet(&mut rng, &hops, &[0; 32], [0; 16], &z, b"x").is_err());
        assert!(build_packet(&mut rng, &[], &[0; 32], [0; 16], &[], b"x").is_err());
        assert!(build_packet(&mut rng, &hops[..3], &[0; 32], [0; 16], &z[..2], b"x").is_err());
        let max = vec![7u8; MAX_MESSAGE_LEN];
        assert!(build_packet(&mut rng, &hops[..4], &[0; 32], [0; 16], &z[..4], &max).is_ok());
    }

    #[test]
    fn surb_reply_reaches_its_creator() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let (hops, secrets) = route(&mut rng, 4);
        let (surb, key) =
            build_surb(&mut rng, &hops, &[5; 32], [9; 16], &[Duration::ZERO; 4]).unwrap();
        assert_eq!(surb.len(), SURB_LEN);
        let (first, mut pkt) = use_surb(&surb, b"reply body").unwrap();
        assert_eq!(first, hops[0].id);
        for s in &secrets[..3] {
            match peel(&pkt, s, |_, _| true).unwrap() {
                Peeled::Forward { packet, .. } => pkt = packet,
                Peeled::Final { .. } => panic!("early final"),
            }
        }
        match peel(&pkt, &secrets[3], |_, _| true).unwrap() {
            Peeled::Final {
                destination,
                identifier,
                payload,
            } => {
                assert_eq!(destination, [5; 32]);
                assert_eq!(identifier, [9; 16]);
                // The final hop cannot read it; the creator can.
                assert!(recover_plaintext(&payload).is_err());
                assert_eq!(open_reply(&key, &payload).unwrap(), b"reply body");
            }
            Peeled::Forward { .. } => panic!("expected final"),
        }
        assert!(use_surb(&surb[..10], b"x").is_err());
    }

    #[test]
    fn surb_carries_the_reply_seed_not_a_hop_seed() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let (hops, secrets) = route(&mut rng, 4);
        let (surb, key) =
            build_surb(&mut rng, &hops, &[5; 32], [9; 16], &[Duration::ZERO; 4]).unwrap();
        assert_eq!(key.num_hops(), 4);
        assert_eq!(key.identifier(), &[9; 16]);
        assert_eq!(&surb[HEADER_SIZE + 32..], &key.reply_seed);
        // The recorded seeds are the hops' own: each hop derives its seed
        // from its DH with the header it receives.
        let mut pkt = use_surb(&surb, b"r").unwrap().1;
        for (i, s) in secrets.iter().enumerate() {
            let parsed = SphinxPacket::from_bytes(&pkt).unwrap();
            let seed = *parsed
                .header
                .compute_expanded_shared_secret(s)
                .payload_key_seed();
            assert_eq!(seed, key.hop_seeds[i], "hop {i}");
            assert_ne!(seed, key.reply_seed, "hop {i}");
            if let Peeled::Forward { packet, .. } = peel(&pkt, s, |_, _| true).unwrap() {
                pkt = packet;
            }
        }
    }

    #[test]
    fn reply_seed_comes_from_the_callers_rng() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        let (hops, _) = route(&mut rng, 4);
        let z = [Duration::ZERO; 4];
        let build = |seed| {
            let mut r = ChaCha20Rng::seed_from_u64(seed);
            build_surb(&mut r, &hops, &[5; 32], [9; 16], &z).unwrap()
        };
        let (s1, k1) = build(1);
        let (s2, k2) = build(1);
        let (s3, k3) = build(2);
        // Same rng, same secrets (the header's random padding comes from
        // sphinx-packet's own RNG, so compare alpha and the seed slot).
        assert_eq!(s1[..32], s2[..32]);
        assert_eq!(s1[HEADER_SIZE + 32..], s2[HEADER_SIZE + 32..]);
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        assert_ne!(s1[HEADER_SIZE + 32..], s3[HEADER_SIZE + 32..]);
        assert_ne!(k1.reply_seed, k3.reply_seed);
    }

    #[test]
    fn reply_key_round_trips_and_redacts() {
        let mut rng = ChaCha20Rng::seed_from_u64(15);
        let (hops, secrets) = route(&mut rng, 4);
        let (surb, key) =
            build_surb(&mut rng, &hops, &[5; 32], [9; 16], &[Duration::ZERO; 4]).unwrap();
        let bytes = key.to_bytes();
        assert_eq!(bytes.len(), ReplyKey::serialized_len(4));
        assert_eq!(bytes.len(), 16 + 16 + 4 * 16);
        assert_eq!(&bytes[..16], &[9; 16]);
        assert_eq!(&bytes[16..32], &surb[HEADER_SIZE + 32..]);
        let back = ReplyKey::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);

        // The restored key opens the reply.
        let mut pkt = use_surb(&surb, b"persisted").unwrap().1;
        let mut payload = None;
        for s in &secrets {
            match peel(&pkt, s, |_, _| true).unwrap() {
                Peeled::Forward { packet, .. } => pkt = packet,
                Peeled::Final { payload: p, .. } => payload = Some(p),
            }
        }
        let payload = payload.unwrap();
        assert_eq!(open_reply(&back, &payload).unwrap(), b"persisted");
        // Any changed byte of the key fails the padding check.
        for i in 16..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 1;
            let bad = ReplyKey::from_bytes(&bad).unwrap();
            assert!(open_reply(&bad, &payload).is_err(), "byte {i}");
        }
        assert!(open_reply(&back, &payload[..PAYLOAD_SIZE - 1]).is_err());

        for len in [0, 16, 32, 47, 48 + 1, 32 + 16 * (MAX_HOPS + 1)] {
            assert!(ReplyKey::from_bytes(&vec![1; len]).is_err(), "len {len}");
        }
        for hops in 1..=MAX_HOPS {
            assert!(ReplyKey::from_bytes(&vec![1; ReplyKey::serialized_len(hops)]).is_ok());
        }

        let debug = format!("{key:?}");
        assert!(
            debug.contains("ReplyKey") && debug.contains("hops: 4"),
            "{debug}"
        );
        assert!(!debug.contains(&hex::encode([9u8; 16])), "{debug}");
        assert!(!debug.contains("9, 9, 9"), "{debug}");
        for secret in std::iter::once(&key.reply_seed).chain(&key.hop_seeds) {
            assert!(!debug.contains(&hex::encode(secret)), "{debug}");
            assert!(
                !debug.contains(&format!("{}, {}", secret[0], secret[1])),
                "{debug}"
            );
        }
    }

    #[test]
    fn surb_needs_a_non_zero_identifier() {
        let mut rng = ChaCha20Rng::seed_from_u64(16);
        let (hops, _) = route(&mut rng, 4);
        let r = build_surb(&mut rng, &hops, &[5; 32], [0; 16], &[Duration::ZERO; 4]);
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn exponential_delays_have_the_requested_mean() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let d = sample_delays(&mut rng, 20_000, Duration::from_millis(100));
        let mean = d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len() as f64;
        assert!((mean - 0.1).abs() < 0.005, "mean {mean}");
        assert!(
            sample_delays(&mut rng, 3, Duration::ZERO)
                .iter()
                .all(|d| d.is_zero())
        );
    }

    #[test]
    fn path_length_is_not_visible_in_the_header_padding() {
        // Kuhn et al. 2020: zero padding after the final routing block leaks how
        // many hops remain. sphinx-packet pads with random bytes; check that the
        // header of the last hop of a 2-hop and of a 4-hop route look alike
        // (no long runs of zeros).
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        for n in [1usize, 2, 4] {
            let (hops, secrets) = route(&mut rng, n);
            let mut pkt = build_packet(
                &mut rng,
                &hops,
                &[0; 32],
                [0; 16],
                &vec![Duration::ZERO; n],
                b"x",
            )
            .unwrap();
            for s in &secrets[..n - 1] {
                match peel(&pkt, s, |_, _| true).unwrap() {
                    Peeled::Forward { packet, .. } => pkt = packet,
                    Peeled::Final { .. } => panic!(),
                }
            }
            let header = &pkt[..HEADER_SIZE];
            let longest_zero_run = header
                .split(|b| *b != 0)
                .map(<[u8]>::len)
                .max()
                .unwrap_or(0);
            assert!(longest_zero_run < 6, "n={n}: zero run {longest_zero_run}");
        }
    }
}
