//! What the fuzz targets share: fixed keys, a fixed clock, and builders of
//! the real (valid) inputs the seed corpora hold. Everything is
//! deterministic, so that `examples/seeds.rs` regenerates the same seeds
//! and a target's keys open what the seeds were made for.

use client_sdk::fuzzing as sdk;
use ed25519_dalek::SigningKey;
use protocol::dropbox::{Dropbox, PairSecret};
use protocol::epoch::EpochSchedule;
use protocol::keys::EpochKey;
use protocol::packet::{self, Hop, ReplyKey};
use protocol::replay::ReplayCache;
use protocol::topology::{
    EpochPublicKey, NetworkParams, NodeDescriptor, Role, Signed, TopologyDocument, TrustPolicy,
    Vote, VoteNode,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::time::Duration;
use x25519_dalek::{PublicKey, StaticSecret};

/// The clock every target runs at, Unix ms (in epoch [`EPOCH`]).
pub const NOW_MS: u64 = 1_800_000_000_000;
/// Epoch length, ms.
pub const EPOCH_LEN_MS: u64 = 3_600_000;
/// The epoch at [`NOW_MS`].
pub const EPOCH: u64 = NOW_MS / EPOCH_LEN_MS;
/// Hops of the fixed route.
pub const HOPS: usize = 3;

/// Epochs from genesis 0, one hour each.
pub fn schedule() -> EpochSchedule {
    EpochSchedule::new(0, EPOCH_LEN_MS).expect("non-zero length")
}

/// A deterministic RNG.
pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Sphinx secret of hop `i` of the fixed route.
pub fn sphinx_secret(i: usize) -> StaticSecret {
    StaticSecret::from([0x21 + i as u8; 32])
}

/// Hop `i` of the fixed route: identity `[0x10 + i; 32]`.
pub fn hop(i: usize) -> Hop {
    Hop {
        id: [0x10 + i as u8; 32],
        sphinx_key: PublicKey::from(&sphinx_secret(i)).to_bytes(),
    }
}

/// The fixed route, hop 0 first.
pub fn route() -> Vec<Hop> {
    (0..HOPS).map(hop).collect()
}

/// Node `i`'s key, as a node with a fresh replay cache holds it.
pub fn epoch_key(i: usize) -> EpochKey {
    EpochKey::new(EPOCH, sphinx_secret(i), ReplayCache::new(64, 1e-6))
}

/// The identity key of the node whose descriptors the targets sign.
pub fn node_key() -> SigningKey {
    SigningKey::from_bytes(&[0x41; 32])
}

/// The key of the one directory authority the targets trust.
pub fn authority_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// Trust in [`authority_key`] alone.
pub fn trust() -> TrustPolicy {
    TrustPolicy {
        authorities: vec![authority_key().verifying_key().to_bytes()],
        threshold: 1,
    }
}

/// The dropbox the targets read and write.
pub fn dropbox() -> Dropbox {
    PairSecret::from_bytes([0x51; 32]).dropbox(&[0x52; 32], &[0x53; 32], 7)
}

/// A SURB over the fixed route back to destination `[0x77; 32]`, and the
/// key that opens replies sent through it.
pub fn surb() -> (Vec<u8>, ReplyKey) {
    packet::build_surb(
        &mut rng(1),
        &route(),
        &[0x77; 32],
        [0x99; 16],
        &[Duration::ZERO; HOPS],
    )
    .expect("a SURB over the fixed route")
}

/// A descriptor of [`node_key`] for the current epoch and the next, at a
/// loopback address (an authority with `test_network` accepts it).
pub fn descriptor(role: Role) -> NodeDescriptor {
    let key = |e: u64| EpochPublicKey {
        epoch: e,
        key: PublicKey::from(&StaticSecret::from([e as u8 | 1; 32])).to_bytes(),
    };
    NodeDescriptor {
        identity: node_key().verifying_key().to_bytes(),
        role,
        address: "127.0.0.1:4000".into(),
        client_address: (role == Role::Gateway).then(|| "127.0.0.1:4001".into()),
        sphinx_keys: vec![key(EPOCH), key(EPOCH + 1)],
        published_ms: NOW_MS,
    }
}

/// Nodes of a small network: three mixes (one per layer) and a gateway.
pub fn vote_nodes() -> Vec<VoteNode> {
    let mut nodes: Vec<VoteNode> = (0..4u8)
        .map(|i| VoteNode {
            identity: [0x60 + i; 32],
            role: if i == 3 { Role::Gateway } else { Role::Mix },
            address: format!("127.0.0.1:{}", 5000 + u16::from(i)),
            client_address: (i == 3).then(|| "127.0.0.1:6000".into()),
            sphinx_key: PublicKey::from(&StaticSecret::from([0x70 + i; 32])).to_bytes(),
        })
        .collect();
    nodes.sort();
    nodes
}

/// The topology of [`vote_nodes`] for [`EPOCH`].
pub fn topology() -> TopologyDocument {
    TopologyDocument::from_nodes(EPOCH, 1, schedule(), NetworkParams::default(), vote_nodes())
}

/// The authority's vote for [`EPOCH`].
pub fn vote() -> Vote {
    Vote {
        authority: authority_key().verifying_key().to_bytes(),
        epoch: EPOCH,
        revision: NOW_MS,
        schedule: schedule(),
        params: NetworkParams::default(),
        nodes: vote_nodes(),
    }
}

/// Signs `body` (any text) under `domain` with `key`, as
/// [`Signed::sign`] signs a serialised value.
pub fn sign_text(body: &str, domain: &str, key: &SigningKey) -> Signed {
    let mut s = Signed {
        body: body.to_owned(),
        signatures: Vec::new(),
    };
    s.cosign(domain, key);
    s
}

/// Splits `data` into records: each is a length byte `n` and the `n` bytes
/// after it (fewer at the end). How sequence targets read many inputs out
/// of one.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&n, rest) = data.split_first()?;
        let n = usize::from(n).min(rest.len());
        let (rec, rest) = rest.split_at(n);
        data = rest;
        Some(rec)
    })
}

/// Like [`records`] with a two-byte big-endian length (records up to 64 KiB).
pub fn records16(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let n = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        let rec = &data[2..2 + n];
        data = &data[2 + n..];
        Some(rec)
    })
}

/// Seals `plaintext` into the fixed dropbox.
pub fn seal(plaintext: &[u8]) -> Vec<u8> {
    sdk::seal(&dropbox(), plaintext, &mut rng(2)).expect("sealing cannot fail")
}
