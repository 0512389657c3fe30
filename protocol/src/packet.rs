//! Sphinx packets on top of `sphinx-packet`: creation, one-hop processing, delays.
//!
//! Every packet Umbra sends — data, acks, cover, fetches and replies — has the same
//! size, [`PACKET_SIZE`], so no kind of packet forms its own anonymity set.

use crate::{Error, NodeId};
use rand::{CryptoRng, Rng};
use rand_distr::{Distribution, Exp};
use sphinx_packet::header::delays::Delay;
use sphinx_packet::payload::{PAYLOAD_OVERHEAD_SIZE, Payload};
use sphinx_packet::route::{Destination, DestinationAddressBytes, Node, NodeAddressBytes};
use sphinx_packet::{ProcessedPacketData, SphinxPacket, SphinxPacketBuilder};
use std::time::Duration;
use x25519_dalek::{PublicKey, StaticSecret};

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
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let initial = StaticSecret::from(seed);
    let packet = SphinxPacketBuilder::new()
        .with_payload_size(PAYLOAD_SIZE)
        .with_initial_secret(&initial)
        .build_packet(message, &nodes, &dest, &sphinx_delays)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(packet.to_bytes())
}

/// Peels one layer with `key`.
///
/// Order matters: length check, then the header MAC, and only then the
/// replay check (`is_fresh` records the tag and says whether it was new), so
/// that junk cannot fill the replay cache. Nothing here panics on any input.
pub fn peel(
    packet: &[u8],
    key: &StaticSecret,
    is_fresh: impl FnOnce(&ReplayTag) -> bool,
) -> Result<Peeled, Error> {
    if packet.len() != PACKET_SIZE {
        return Err(Error::InvalidPacket(format!(
            "packet of {} bytes, expected {PACKET_SIZE}",
            packet.len()
        )));
    }
    let packet = SphinxPacket::from_bytes(packet).map_err(sphinx_err)?;
    let expanded = packet.header.compute_expanded_shared_secret(key);
    packet
        .header
        .ensure_header_integrity(&expanded)
        .map_err(sphinx_err)?;
    if !is_fresh(expanded.replay_tag()) {
        return Err(Error::Replay);
    }
    let processed = packet
        .process_with_expanded_secret(&expanded)
        .map_err(sphinx_err)?;
    Ok(match processed.data {
        ProcessedPacketData::ForwardHop {
            next_hop_packet,
            next_hop_address,
            delay,
        } => Peeled::Forward {
            next_hop: next_hop_address.to_bytes(),
            delay: delay.to_duration(),
            packet: next_hop_packet.to_bytes(),
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

/// Bytes of a serialised single-seed SURB: header, first hop, one payload key seed.
pub const SURB_LEN: usize = HEADER_SIZE + 32 + 16;

/// What a SURB's creator keeps to read the reply: every hop's payload key seed.
pub use sphinx_packet::SurbReplyRecovery as ReplyKey;

/// Builds a single-block reply (SURB) for `route`, ending at `destination`
/// with the non-zero `identifier` the creator looks its [`ReplyKey`] up by.
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
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let material = sphinx_packet::SURBMaterial::new(
        nodes,
        sphinx_delays,
        dest,
        sphinx_packet::version::SINGLE_SEED_SURB_VERSION,
    );
    let (surb, key) = sphinx_packet::SURB::new_recoverable(StaticSecret::from(seed), material)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok((surb.to_bytes(), key))
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
pub fn open_reply(key: &ReplyKey, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let p = Payload::from_bytes(payload).map_err(sphinx_err)?;
    key.recover_plaintext(p).map_err(sphinx_err)
}

/// Opens the payload of a forward packet at its final hop.
pub fn recover_plaintext(payload: &[u8]) -> Result<Vec<u8>, Error> {
    Payload::from_bytes(payload)
        .and_then(Payload::recover_plaintext)
        .map_err(sphinx_err)
}

/// A fresh x25519 Sphinx key pair from `rng`.
pub fn sphinx_keypair<R: CryptoRng + ?Sized>(rng: &mut R) -> (StaticSecret, [u8; 32]) {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let secret = StaticSecret::from(seed);
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
            match peel(&pkt, &secrets[i], |_| true).unwrap() {
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
        match peel(&pkt, &secrets[3], |_| true).unwrap() {
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
    fn wrong_key_fails_before_replay_check() {
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
        let mut consulted = false;
        let r = peel(&pkt, &other, |_| {
            consulted = true;
            true
        });
        assert!(matches!(r, Err(Error::InvalidPacket(_))));
        assert!(
            !consulted,
            "replay cache must not see unauthenticated packets"
        );
    }

    #[test]
    fn replay_verdict_is_honoured() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
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
        assert!(matches!(
            peel(&pkt, &secrets[0], |_| false),
            Err(Error::Replay)
        ));
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
            match peel(&pkt, s, |_| true).unwrap() {
                Peeled::Forward { packet, .. } => pkt = packet,
                Peeled::Final { .. } => panic!("early final"),
            }
        }
        match peel(&pkt, &secrets[3], |_| true).unwrap() {
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
                match peel(&pkt, s, |_| true).unwrap() {
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
