//! Node descriptors and the topology document, with their signatures.
//!
//! Signed things travel as an envelope holding the exact JSON bytes that were
//! signed, so verification never depends on re-serialising: a second
//! implementation verifies `domain || 0x00 || body` with ed25519 and only
//! then parses `body`.

use crate::epoch::EpochSchedule;
use crate::packet::Hop;
use crate::{Error, NodeId};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

/// Number of mix layers.
pub const LAYERS: u8 = 3;
/// Signature domain of node descriptors.
pub const DESCRIPTOR_DOMAIN: &str = "umbra-descriptor-v1";
/// Signature domain of topology documents.
pub const TOPOLOGY_DOMAIN: &str = "umbra-topology-v1";
/// Signature domain of an authority's vote.
pub const VOTE_DOMAIN: &str = "umbra-vote-v1";
/// Most Sphinx keys a descriptor may carry.
pub const MAX_DESCRIPTOR_KEYS: usize = 4;
/// Clock skew tolerated when checking validity windows.
pub const CLOCK_SKEW_MS: u64 = 60_000;

/// Hex encoding of 32-byte keys in JSON.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Serialises as lowercase hex.
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    /// Parses 64 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

/// What a node does in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A mix node, placed in one of the layers.
    Mix,
    /// A gateway: entry for clients, final hop for dropboxes.
    Gateway,
}

/// A Sphinx public key and the epoch it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochPublicKey {
    /// The epoch.
    pub epoch: u64,
    /// x25519 public key.
    #[serde(with = "hex32")]
    pub key: [u8; 32],
}

/// What a node says about itself, signed with its identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDescriptor {
    /// ed25519 identity public key.
    #[serde(with = "hex32")]
    pub identity: NodeId,
    /// Mix node or gateway.
    pub role: Role,
    /// QUIC listening address, `ip:port`.
    pub address: String,
    /// Gateways: the QUIC address clients connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// Sphinx keys for the current and coming epochs.
    pub sphinx_keys: Vec<EpochPublicKey>,
    /// When the node made this descriptor, Unix ms.
    pub published_ms: u64,
}

impl NodeDescriptor {
    /// The Sphinx key for `epoch`, if the descriptor carries one.
    pub fn key_for(&self, epoch: u64) -> Option<[u8; 32]> {
        self.sphinx_keys
            .iter()
            .find(|k| k.epoch == epoch)
            .map(|k| k.key)
    }
}

/// Network-wide parameters every client and node uses alike.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkParams {
    /// Mean per-hop delay (the 1/μ of Loopix), milliseconds. The default,
    /// 800 ms, is what keeps a dropbox gateway colluding with a global
    /// observer from naming a pair's sender after 1000 linked messages
    /// (docs/anonymity.md); 400 ms let it name most of them.
    pub mix_delay_mean_ms: u64,
    /// Largest per-hop delay a node honours; longer ones are clamped.
    pub max_delay_ms: u64,
    /// Client payload stream rate λ_P, packets/s.
    pub lambda_payload: f64,
    /// Client loop cover rate λ_L, packets/s.
    pub lambda_loop: f64,
    /// Mix node loop cover rate λ_M, packets/s.
    pub lambda_mix_loop: f64,
    /// Rate of the constant downlink an entry gateway sends each client,
    /// λ_D, Deliver frames/s: a Poisson stream of real replies when queued
    /// and dummies otherwise. Clients pace their fetches to fit it.
    pub lambda_downlink: f64,
}

impl Default for NetworkParams {
    fn default() -> Self {
        Self {
            mix_delay_mean_ms: 800,
            max_delay_ms: 10_000,
            lambda_payload: 5.0,
            lambda_loop: 1.0,
            lambda_mix_loop: 1.0,
            lambda_downlink: 12.0,
        }
    }
}

/// One node as the topology publishes it for one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyNode {
    /// ed25519 identity; also its Sphinx node address and TLS key.
    #[serde(with = "hex32")]
    pub identity: NodeId,
    /// Mix node or gateway.
    pub role: Role,
    /// QUIC address.
    pub address: String,
    /// Gateways: the QUIC address clients connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// Sphinx key for this document's epoch.
    #[serde(with = "hex32")]
    pub sphinx_key: [u8; 32],
    /// 1..=3 for mix nodes, 0 for gateways.
    pub layer: u8,
}

impl TopologyNode {
    /// This node as a route hop.
    pub fn hop(&self) -> Hop {
        Hop {
            id: self.identity,
            sphinx_key: self.sphinx_key,
        }
    }

    /// The address clients connect to (gateways only), parsed.
    pub fn client_socket_addr(&self) -> Option<SocketAddr> {
        self.client_address.as_ref()?.parse().ok()
    }

    /// The QUIC address, parsed.
    pub fn socket_addr(&self) -> Result<SocketAddr, Error> {
        self.address
            .parse()
            .map_err(|_| Error::Rejected(format!("bad node address {:?}", self.address)))
    }
}

/// The network as clients and nodes see it during one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyDocument {
    /// The epoch whose keys the document lists.
    pub epoch: u64,
    /// Bumped when the authority republishes the same epoch (a node joined).
    pub revision: u64,
    /// The epoch schedule.
    pub schedule: EpochSchedule,
    /// Start of validity, Unix ms.
    pub valid_from_ms: u64,
    /// End of validity, Unix ms.
    pub valid_until_ms: u64,
    /// Network parameters.
    pub params: NetworkParams,
    /// Every node, sorted by identity.
    pub nodes: Vec<TopologyNode>,
}

impl TopologyDocument {
    /// Builds the document for `epoch` from verified descriptors. Nodes without a
    /// key for the epoch are left out; mix layers come from [`assign_layers`].
    pub fn build(
        epoch: u64,
        revision: u64,
        schedule: EpochSchedule,
        params: NetworkParams,
        descriptors: &[NodeDescriptor],
    ) -> Self {
        let nodes = descriptors
            .iter()
            .filter_map(|d| VoteNode::from_descriptor(d, epoch))
            .collect();
        Self::from_nodes(epoch, revision, schedule, params, nodes)
    }

    /// The document for `epoch` listing `nodes` (the first entry of an
    /// identity wins), sorted by identity, with mix layers from [`assign_layers`].
    pub fn from_nodes(
        epoch: u64,
        revision: u64,
        schedule: EpochSchedule,
        params: NetworkParams,
        nodes: Vec<VoteNode>,
    ) -> Self {
        let mut seen = HashSet::new();
        let mut nodes: Vec<TopologyNode> = nodes
            .into_iter()
            .filter(|n| seen.insert(n.identity))
            .map(|n| TopologyNode {
                identity: n.identity,
                role: n.role,
                address: n.address,
                client_address: n.client_address,
                sphinx_key: n.sphinx_key,
                layer: 0,
            })
            .collect();
        nodes.sort_by_key(|n| n.identity);
        let mix_ids: Vec<NodeId> = nodes
            .iter()
            .filter(|n| n.role == Role::Mix)
            .map(|n| n.identity)
            .collect();
        let layers: BTreeMap<NodeId, u8> = assign_layers(epoch, &mix_ids).into_iter().collect();
        for n in nodes.iter_mut().filter(|n| n.role == Role::Mix) {
            n.layer = layers.get(&n.identity).copied().unwrap_or(0);
        }
        Self {
            epoch,
            revision,
            schedule,
            valid_from_ms: schedule.start_ms(epoch),
            valid_until_ms: schedule.end_ms(epoch),
            params,
            nodes,
        }
    }

    /// Mix nodes of `layer` (1..=3).
    pub fn layer(&self, layer: u8) -> impl Iterator<Item = &TopologyNode> {
        self.nodes
            .iter()
            .filter(move |n| n.role == Role::Mix && n.layer == layer)
    }

    /// Gateways.
    pub fn gateways(&self) -> impl Iterator<Item = &TopologyNode> {
        self.nodes.iter().filter(|n| n.role == Role::Gateway)
    }

    /// The node with identity `id`.
    pub fn node(&self, id: &NodeId) -> Option<&TopologyNode> {
        self.nodes
            .binary_search_by(|n| n.identity.cmp(id))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Checks the rules a signature cannot: sorted unique nodes, parseable
    /// addresses, and layers equal to the deterministic assignment.
    pub fn check_rules(&self) -> Result<(), Error> {
        if !self.nodes.windows(2).all(|w| w[0].identity < w[1].identity) {
            return Err(Error::Rejected("nodes not sorted or not unique".into()));
        }
        for n in &self.nodes {
            n.socket_addr()?;
            if n.role == Role::Gateway && n.layer != 0 {
                return Err(Error::Rejected("gateway placed in a mix layer".into()));
            }
            if !crate::keys::is_contributory_key(&n.sphinx_key) {
                return Err(Error::Rejected(format!(
                    "node {} has a small-order sphinx key",
                    hex::encode(&n.identity[..4])
                )));
            }
        }
        let mix_ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Mix)
            .map(|n| n.identity)
            .collect();
        for (id, layer) in assign_layers(self.epoch, &mix_ids) {
            if self.node(&id).map(|n| n.layer) != Some(layer) {
                return Err(Error::Rejected(
                    "layer assignment differs from the deterministic one".into(),
                ));
            }
        }
        self.params.check()
    }
}

impl NetworkParams {
    /// The largest delay is at least the mean; rates are finite and not
    /// negative; the payload stream and the downlink run (with λ_P = 0 a
    /// client sends nothing, with λ_D = 0 it never receives a reply).
    pub fn check(&self) -> Result<(), Error> {
        let p = self;
        if p.max_delay_ms < p.mix_delay_mean_ms {
            return Err(Error::Rejected("max delay below mean delay".into()));
        }
        for (name, v) in [
            ("lambda_payload", p.lambda_payload),
            ("lambda_loop", p.lambda_loop),
            ("lambda_mix_loop", p.lambda_mix_loop),
            ("lambda_downlink", p.lambda_downlink),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::Rejected(format!("{name} = {v} is not a rate")));
            }
        }
        if p.lambda_downlink <= 0.0 || p.lambda_payload <= 0.0 {
            return Err(Error::Rejected(
                "lambda_payload and lambda_downlink must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// Picks one mix node per layer, each uniformly at random among its layer.
pub fn choose_mix_route<'a, R: rand::Rng + ?Sized>(
    doc: &'a TopologyDocument,
    rng: &mut R,
) -> Result<Vec<&'a TopologyNode>, Error> {
    (1..=LAYERS)
        .map(|l| {
            let nodes: Vec<&TopologyNode> = doc.layer(l).collect();
            if nodes.is_empty() {
                return Err(Error::Rejected(format!("layer {l} is empty")));
            }
            let i = rand::RngExt::random_range(rng, 0..nodes.len());
            Ok(nodes[i])
        })
        .collect()
}

/// Places mix nodes in layers 1..=3 as a function of the epoch and their ids
/// only: nodes are ranked by SHA-256("umbra-layer" || epoch || id) and dealt
/// round-robin, so layers differ in size by at most one and no authority's
/// randomness decides placement.
pub fn assign_layers(epoch: u64, mix_ids: &[NodeId]) -> Vec<(NodeId, u8)> {
    let mut ranked: Vec<([u8; 32], NodeId)> = mix_ids
        .iter()
        .map(|id| {
            let mut h = Sha256::new();
            h.update(b"umbra-layer");
            h.update(epoch.to_be_bytes());
            h.update(id);
            (h.finalize().into(), *id)
        })
        .collect();
    ranked.sort();
    ranked.dedup_by_key(|(_, id)| *id);
    ranked
        .into_iter()
        .enumerate()
        .map(|(i, (_, id))| (id, (i % usize::from(LAYERS)) as u8 + 1))
        .collect()
}

/// One signature on an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// Signer's ed25519 public key.
    #[serde(with = "hex32")]
    pub signer: [u8; 32],
    /// ed25519 signature over `domain || 0x00 || body`, hex.
    pub signature: String,
}

/// Signed JSON: the exact bytes signed, and the signatures over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// JSON text of the signed value.
    pub body: String,
    /// Signatures over `body`.
    pub signatures: Vec<SignatureEntry>,
}

fn signing_input(domain: &str, body: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(domain.len() + 1 + body.len());
    v.extend_from_slice(domain.as_bytes());
    v.push(0);
    v.extend_from_slice(body.as_bytes());
    v
}

impl Signed {
    /// Serialises `value` and signs it under `domain`.
    pub fn sign<T: Serialize>(value: &T, domain: &str, key: &SigningKey) -> Result<Self, Error> {
        let body =
            serde_json::to_string(value).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let sig = key.sign(&signing_input(domain, &body));
        Ok(Self {
            signatures: vec![SignatureEntry {
                signer: key.verifying_key().to_bytes(),
                signature: hex::encode(sig.to_bytes()),
            }],
            body,
        })
    }

    /// Adds a co-signature (another authority).
    pub fn cosign(&mut self, domain: &str, key: &SigningKey) {
        let sig = key.sign(&signing_input(domain, &self.body));
        self.signatures.push(SignatureEntry {
            signer: key.verifying_key().to_bytes(),
            signature: hex::encode(sig.to_bytes()),
        });
    }

    /// The distinct keys in `trusted` that validly signed the body.
    pub fn valid_signers(&self, domain: &str, trusted: &[[u8; 32]]) -> Vec<[u8; 32]> {
        let input = signing_input(domain, &self.body);
        let mut ok: Vec<[u8; 32]> = Vec::new();
        for entry in &self.signatures {
            if !trusted.contains(&entry.signer) || ok.contains(&entry.signer) {
                continue;
            }
            let mut raw = [0u8; 64];
            if hex::decode_to_slice(&entry.signature, &mut raw).is_err() {
                continue;
            }
            let Ok(vk) = VerifyingKey::from_bytes(&entry.signer) else {
                continue;
            };
            if vk
                .verify_strict(&input, &Signature::from_bytes(&raw))
                .is_ok()
            {
                ok.push(entry.signer);
            }
        }
        ok
    }

    /// Parses the body without checking signatures. Only for display.
    pub fn parse_unverified<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.body).map_err(|e| Error::Decode(e.to_string()))
    }
}

/// Which node addresses an authority accepts in descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPolicy {
    /// Public unicast addresses only (production).
    PublicOnly,
    /// Any dialable address, loopback and private ranges included: an
    /// explicit test network.
    TestNetwork,
}

/// Whether `ip` is a public unicast address: not unspecified, loopback,
/// private, shared (CGNAT), link-local, multicast, broadcast, documentation,
/// benchmarking or reserved; IPv4-mapped IPv6 addresses are judged as IPv4.
pub fn is_public_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_unicast(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)
                || seg[0] & 0xe000 != 0x2000)
        }
    }
}

/// Verifies a node's descriptor: signed by the identity it names, with a
/// usable address (public unless `policy` says this is a test network),
/// contributory Sphinx keys, and one for `now_epoch` or the next one.
pub fn verify_descriptor(
    signed: &Signed,
    now_epoch: u64,
    policy: AddressPolicy,
) -> Result<NodeDescriptor, Error> {
    let d: NodeDescriptor = signed.parse_unverified()?;
    if signed
        .valid_signers(DESCRIPTOR_DOMAIN, &[d.identity])
        .is_empty()
    {
        return Err(Error::BadSignature(
            "descriptor is not signed by the identity it names",
        ));
    }
    let usable = |a: &str| {
        a.parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_unspecified() && a.port() != 0)
    };
    let public = |a: &str| {
        policy == AddressPolicy::TestNetwork
            || a.parse::<SocketAddr>()
                .is_ok_and(|a| is_public_unicast(a.ip()))
    };
    if !usable(&d.address) {
        return Err(Error::Rejected(format!(
            "address {:?} is not a dialable ip:port (set public_address)",
            d.address
        )));
    }
    if !public(&d.address) {
        return Err(Error::Rejected(format!(
            "address {:?} is not a public unicast address (set public_address; \
             private and loopback addresses need an authority with test_network = true)",
            d.address
        )));
    }
    if let Some(c) = &d.client_address
        && (d.role != Role::Gateway || !usable(c) || !public(c))
    {
        return Err(Error::Rejected(format!("bad client address {c:?}")));
    }
    if d.sphinx_keys.is_empty() || d.sphinx_keys.len() > MAX_DESCRIPTOR_KEYS {
        return Err(Error::Rejected(format!(
            "descriptor carries {} sphinx keys; 1..={MAX_DESCRIPTOR_KEYS} allowed",
            d.sphinx_keys.len()
        )));
    }
    if d.sphinx_keys
        .iter()
        .any(|k| !crate::keys::is_contributory_key(&k.key))
    {
        return Err(Error::Rejected("small-order sphinx key".into()));
    }
    if d.key_for(now_epoch).is_none() && d.key_for(now_epoch + 1).is_none() {
        return Err(Error::Rejected(format!(
            "stale descriptor: no sphinx key for epoch {now_epoch} or {}",
            now_epoch + 1
        )));
    }
    if d.sphinx_keys.iter().any(|k| k.epoch > now_epoch + 2) {
        return Err(Error::Rejected("sphinx key for a far-future epoch".into()));
    }
    Ok(d)
}

/// One node as an authority votes for it in one epoch: what the topology
/// will say of it, but its layer (the consensus assigns layers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteNode {
    /// ed25519 identity.
    #[serde(with = "hex32")]
    pub identity: NodeId,
    /// Mix node or gateway.
    pub role: Role,
    /// QUIC address.
    pub address: String,
    /// Gateways: the QUIC address clients connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// Sphinx key for the vote's epoch.
    #[serde(with = "hex32")]
    pub sphinx_key: [u8; 32],
}

impl VoteNode {
    /// What `d` says of itself for `epoch`, if it has a key for it.
    pub fn from_descriptor(d: &NodeDescriptor, epoch: u64) -> Option<Self> {
        Some(Self {
            identity: d.identity,
            role: d.role,
            address: d.address.clone(),
            client_address: d.client_address.clone(),
            sphinx_key: d.key_for(epoch)?,
        })
    }
}

/// One authority's vote for one epoch: the nodes it admitted and holds a
/// key for, signed by it under [`VOTE_DOMAIN`]. Authorities exchange votes
/// and each computes the same [`consensus`] from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    /// The voting authority's key.
    #[serde(with = "hex32")]
    pub authority: [u8; 32],
    /// The epoch voted on.
    pub epoch: u64,
    /// Grows each time this authority's vote for the epoch changes
    /// (a Unix ms timestamp in practice).
    pub revision: u64,
    /// The epoch schedule the authority is configured with.
    pub schedule: EpochSchedule,
    /// The network parameters the authority is configured with.
    pub params: NetworkParams,
    /// The nodes, strictly ascending by identity.
    pub nodes: Vec<VoteNode>,
}

/// Verifies a vote: it parses, names an authority of `authorities` and is
/// signed by it, and its nodes are sorted and unique with parseable
/// addresses and contributory Sphinx keys.
pub fn verify_vote(signed: &Signed, authorities: &[[u8; 32]]) -> Result<Vote, Error> {
    let v: Vote = signed.parse_unverified()?;
    if !authorities.contains(&v.authority) {
        return Err(Error::BadSignature("vote from an unknown authority"));
    }
    if signed.valid_signers(VOTE_DOMAIN, &[v.authority]).is_empty() {
        return Err(Error::BadSignature(
            "vote is not signed by the authority it names",
        ));
    }
    if !v.nodes.windows(2).all(|w| w[0].identity < w[1].identity) {
        return Err(Error::Rejected(
            "vote nodes not sorted or not unique".into(),
        ));
    }
    for n in &v.nodes {
        n.address
            .parse::<SocketAddr>()
            .map_err(|_| Error::Rejected(format!("bad node address {:?}", n.address)))?;
        if !crate::keys::is_contributory_key(&n.sphinx_key) {
            return Err(Error::Rejected("small-order sphinx key in a vote".into()));
        }
    }
    Ok(v)
}

/// The topology `threshold` authorities agree on for `epoch`: the
/// deterministic result of their votes, so that every authority that holds
/// the same votes signs the same bytes.
///
/// - Only votes for `epoch` with exactly this `schedule` and `params` (the
///   computing authority's own) count, one per authority (the first).
/// - A node is listed if at least `threshold` counted votes list it with
///   identical entries (role, addresses, Sphinx key). Should several entries
///   of one identity each reach the threshold, the one with the most votes
///   wins, then the smallest.
/// - The revision is the `threshold`-th highest revision among the counted
///   votes, so fewer than `threshold` authorities cannot push it up.
///
/// `None` if fewer than `threshold` votes count.
pub fn consensus(
    epoch: u64,
    schedule: EpochSchedule,
    params: NetworkParams,
    votes: &[Vote],
    threshold: usize,
) -> Option<TopologyDocument> {
    let mut seen = HashSet::new();
    let counted: Vec<&Vote> = votes
        .iter()
        .filter(|v| v.epoch == epoch && v.schedule == schedule && v.params == params)
        .filter(|v| seen.insert(v.authority))
        .collect();
    if threshold == 0 || counted.len() < threshold {
        return None;
    }
    let mut tally: BTreeMap<&VoteNode, usize> = BTreeMap::new();
    for v in &counted {
        let mut ids = HashSet::new();
        for n in v.nodes.iter().filter(|n| ids.insert(n.identity)) {
            *tally.entry(n).or_default() += 1;
        }
    }
    let mut best: BTreeMap<NodeId, (&VoteNode, usize)> = BTreeMap::new();
    for (n, c) in tally.into_iter().filter(|(_, c)| *c >= threshold) {
        // The tally iterates in ascending entry order, so on a tie the
        // smaller entry, met first, stays.
        let e = best.entry(n.identity).or_insert((n, c));
        if c > e.1 {
            *e = (n, c);
        }
    }
    let mut revisions: Vec<u64> = counted.iter().map(|v| v.revision).collect();
    revisions.sort_unstable_by(|a, b| b.cmp(a));
    let revision = revisions[threshold - 1];
    let nodes = best.into_values().map(|(n, _)| n.clone()).collect();
    Some(TopologyDocument::from_nodes(
        epoch, revision, schedule, params, nodes,
    ))
}

/// Whom a client or node trusts to sign topologies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Pinned authority keys.
    pub authorities: Vec<[u8; 32]>,
    /// Signatures needed (k of n).
    pub threshold: usize,
}

/// Verifies a topology: k-of-n pinned signatures, freshness at `now_ms`,
/// an epoch (and revision) not older than `last_seen`, and the document rules.
pub fn verify_topology(
    signed: &Signed,
    trust: &TrustPolicy,
    now_ms: u64,
    last_seen: Option<(u64, u64)>,
) -> Result<TopologyDocument, Error> {
    if trust.threshold == 0 || trust.threshold > trust.authorities.len() {
        return Err(Error::InvalidArgument(format!(
            "threshold {} of {} authorities",
            trust.threshold,
            trust.authorities.len()
        )));
    }
    let signers = signed.valid_signers(TOPOLOGY_DOMAIN, &trust.authorities);
    if signers.len() < trust.threshold {
        return Err(Error::BadSignature(
            "topology lacks enough valid signatures from pinned authorities",
        ));
    }
    let doc: TopologyDocument = signed.parse_unverified()?;
    if now_ms.saturating_add(CLOCK_SKEW_MS) < doc.valid_from_ms
        || now_ms > doc.valid_until_ms.saturating_add(CLOCK_SKEW_MS)
    {
        return Err(Error::Rejected(format!(
            "topology for epoch {} is not valid now",
            doc.epoch
        )));
    }
    if let Some((epoch, revision)) = last_seen
        && (doc.epoch, doc.revision) < (epoch, revision)
    {
        return Err(Error::Rejected(format!(
            "topology epoch {}.{} is older than {epoch}.{revision}",
            doc.epoch, doc.revision
        )));
    }
    doc.check_rules()?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn descriptor(k: &SigningKey, role: Role, port: u16, epoch: u64) -> NodeDescriptor {
        NodeDescriptor {
            identity: k.verifying_key().to_bytes(),
            role,
            address: format!("127.0.0.1:{port}"),
            client_address: None,
            sphinx_keys: vec![EpochPublicKey {
                epoch,
                key: [port as u8; 32],
            }],
            published_ms: 0,
        }
    }

    fn schedule() -> EpochSchedule {
        EpochSchedule::new(0, 1000).unwrap()
    }

    #[test]
    fn descriptor_signature_and_staleness() {
        let k = key(1);
        let d = descriptor(&k, Role::Mix, 1000, 5);
        let s = Signed::sign(&d, DESCRIPTOR_DOMAIN, &k).unwrap();
        assert_eq!(
            verify_descriptor(&s, 5, AddressPolicy::TestNetwork).unwrap(),
            d
        );
        assert_eq!(
            verify_descriptor(&s, 4, AddressPolicy::TestNetwork).unwrap(),
            d
        );
        assert!(matches!(
            verify_descriptor(&s, 6, AddressPolicy::TestNetwork),
            Err(Error::Rejected(_))
        ));
        // signed by someone else
        let s2 = Signed::sign(&d, DESCRIPTOR_DOMAIN, &key(2)).unwrap();
        assert!(matches!(
            verify_descriptor(&s2, 5, AddressPolicy::TestNetwork),
            Err(Error::BadSignature(_))
        ));
        // tampered body
        let mut s3 = s.clone();
        s3.body = s3.body.replace("1000", "1001");
        assert!(matches!(
            verify_descriptor(&s3, 5, AddressPolicy::TestNetwork),
            Err(Error::BadSignature(_))
        ));
        // wrong domain
        let s4 = Signed::sign(&d, TOPOLOGY_DOMAIN, &k).unwrap();
        assert!(verify_descriptor(&s4, 5, AddressPolicy::TestNetwork).is_err());
    }

    #[test]
    fn production_authorities_take_public_addresses_only() {
        let k = key(1);
        let mut d = descriptor(&k, Role::Mix, 1000, 5);
        let s = Signed::sign(&d, DESCRIPTOR_DOMAIN, &k).unwrap();
        let e = verify_descriptor(&s, 5, AddressPolicy::PublicOnly).unwrap_err();
        assert!(
            e.to_string().contains("not a public unicast address"),
            "{e}"
        );
        d.address = "198.51.100.9:9000".into(); // documentation range
        let s = Signed::sign(&d, DESCRIPTOR_DOMAIN, &k).unwrap();
        assert!(verify_descriptor(&s, 5, AddressPolicy::PublicOnly).is_err());
        d.address = "84.17.33.2:9000".into();
        let s = Signed::sign(&d, DESCRIPTOR_DOMAIN, &k).unwrap();
        assert!(verify_descriptor(&s, 5, AddressPolicy::PublicOnly).is_ok());
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "127.0.0.1",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "::",
        ] {
            assert!(!is_public_unicast(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["84.17.33.2", "2a01:4f8::1", "::ffff:84.17.33.2"] {
            assert!(is_public_unicast(ip.parse().unwrap()), "{ip}");
        }
        // A gateway's client address obeys the same rule.
        let mut g = descriptor(&k, Role::Gateway, 1000, 5);
        g.address = "84.17.33.2:9000".into();
        g.client_address = Some("192.168.0.4:9600".into());
        let s = Signed::sign(&g, DESCRIPTOR_DOMAIN, &k).unwrap();
        assert!(verify_descriptor(&s, 5, AddressPolicy::PublicOnly).is_err());
        assert!(verify_descriptor(&s, 5, AddressPolicy::TestNetwork).is_ok());
    }

    #[test]
    fn small_order_sphinx_keys_are_refused() {
        let k = key(1);
        let mut d = descriptor(&k, Role::Mix, 1000, 5);
        d.sphinx_keys[0].key = [0; 32];
        let s = Signed::sign(&d, DESCRIPTOR_DOMAIN, &k).unwrap();
        let e = verify_descriptor(&s, 5, AddressPolicy::TestNetwork).unwrap_err();
        assert!(e.to_string().contains("small-order"), "{e}");
        let mut doc = topo(3);
        doc.nodes[0].sphinx_key = [0; 32];
        assert!(doc.check_rules().is_err());
    }

    #[test]
    fn layers_are_balanced_and_deterministic() {
        let ids: Vec<NodeId> = (0..10u8).map(|i| [i; 32]).collect();
        let a = assign_layers(7, &ids);
        let mut rev = ids.clone();
        rev.reverse();
        let mut b = assign_layers(7, &rev);
        let mut a_sorted = a.clone();
        a_sorted.sort();
        b.sort();
        assert_eq!(a_sorted, b);
        let counts: Vec<usize> = (1..=3)
            .map(|l| a.iter().filter(|x| x.1 == l).count())
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 10);
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        // another epoch shuffles
        let c = assign_layers(8, &ids);
        assert_ne!(a, c);
    }

    fn topo(epoch: u64) -> TopologyDocument {
        let ds: Vec<_> = (1..=7u8)
            .map(|i| {
                let role = if i > 6 { Role::Gateway } else { Role::Mix };
                descriptor(&key(i), role, 1000 + u16::from(i), epoch)
            })
            .collect();
        TopologyDocument::build(epoch, 0, schedule(), NetworkParams::default(), &ds)
    }

    #[test]
    fn topology_verification() {
        let auth = key(100);
        let trust = TrustPolicy {
            authorities: vec![auth.verifying_key().to_bytes()],
            threshold: 1,
        };
        let doc = topo(3);
        assert_eq!(doc.layer(1).count(), 2);
        assert_eq!(doc.gateways().count(), 1);
        let s = Signed::sign(&doc, TOPOLOGY_DOMAIN, &auth).unwrap();
        assert_eq!(verify_topology(&s, &trust, 3500, None).unwrap(), doc);
        // freshness
        assert!(verify_topology(&s, &trust, 3500 + 10 * CLOCK_SKEW_MS, None).is_err());
        // monotonic epoch
        assert!(verify_topology(&s, &trust, 3500, Some((4, 0))).is_err());
        assert!(verify_topology(&s, &trust, 3500, Some((3, 0))).is_ok());
        // untrusted signer
        let s2 = Signed::sign(&doc, TOPOLOGY_DOMAIN, &key(101)).unwrap();
        assert!(matches!(
            verify_topology(&s2, &trust, 3500, None),
            Err(Error::BadSignature(_))
        ));
        // a forged layer assignment, validly signed, is still refused
        let mut bad = doc.clone();
        let l = bad.nodes[0].layer;
        bad.nodes[0].layer = l % 3 + 1;
        let s3 = Signed::sign(&bad, TOPOLOGY_DOMAIN, &auth).unwrap();
        assert!(matches!(
            verify_topology(&s3, &trust, 3500, None),
            Err(Error::Rejected(_))
        ));
    }

    #[test]
    fn k_of_n_counts_distinct_authorities() {
        let (a, b, c) = (key(100), key(101), key(102));
        let trust = TrustPolicy {
            authorities: [&a, &b, &c].map(|k| k.verifying_key().to_bytes()).to_vec(),
            threshold: 2,
        };
        let doc = topo(3);
        let mut s = Signed::sign(&doc, TOPOLOGY_DOMAIN, &a).unwrap();
        s.cosign(TOPOLOGY_DOMAIN, &a); // same authority twice counts once
        assert!(verify_topology(&s, &trust, 3500, None).is_err());
        s.cosign(TOPOLOGY_DOMAIN, &b);
        assert!(verify_topology(&s, &trust, 3500, None).is_ok());
    }

    fn vote(auth: &SigningKey, epoch: u64, revision: u64, nodes: &[VoteNode]) -> Vote {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        Vote {
            authority: auth.verifying_key().to_bytes(),
            epoch,
            revision,
            schedule: schedule(),
            params: NetworkParams::default(),
            nodes,
        }
    }

    fn vote_nodes(first: u8, n: u8, epoch: u64) -> Vec<VoteNode> {
        (first..first + n)
            .map(|i| {
                let role = if i % 4 == 0 { Role::Gateway } else { Role::Mix };
                VoteNode::from_descriptor(
                    &descriptor(&key(i), role, 1000 + u16::from(i), epoch),
                    epoch,
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn consensus_lists_nodes_admitted_by_k_and_is_the_same_for_everyone() {
        let (a, b, c) = (key(100), key(101), key(102));
        let honest = vote_nodes(1, 8, 3);
        let rogue_extra = vote_nodes(50, 5, 3);
        let mut rogue_nodes = honest.clone();
        rogue_nodes.extend(rogue_extra.iter().cloned());
        let votes = vec![
            vote(&a, 3, 10, &honest),
            vote(&b, 3, 30, &honest),
            vote(&c, 3, u64::MAX, &rogue_nodes),
        ];
        let p = NetworkParams::default();
        let doc = consensus(3, schedule(), p, &votes, 2).unwrap();
        assert_eq!(doc.nodes.len(), honest.len());
        for r in &rogue_extra {
            assert!(
                doc.node(&r.identity).is_none(),
                "a node one authority admits is listed"
            );
        }
        doc.check_rules().unwrap();
        // The rogue's huge revision does not carry: the 2nd highest does.
        assert_eq!(doc.revision, 30);
        // The order votes arrive in does not matter: same bytes to sign.
        let mut rev = votes.clone();
        rev.reverse();
        let doc2 = consensus(3, schedule(), p, &rev, 2).unwrap();
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            serde_json::to_string(&doc2).unwrap()
        );
        // Fewer than k votes: no consensus. A vote for another epoch or with
        // other params does not count.
        assert!(consensus(3, schedule(), p, &votes[..1], 2).is_none());
        let mut other = votes[1].clone();
        other.params.mix_delay_mean_ms += 1;
        assert!(consensus(3, schedule(), p, &[votes[0].clone(), other], 2).is_none());
        let mut dup = votes[0].clone();
        dup.revision = 99;
        assert!(
            consensus(3, schedule(), p, &[votes[0].clone(), dup], 2).is_none(),
            "one authority's two votes count once"
        );
    }

    #[test]
    fn consensus_needs_identical_entries() {
        let (a, b, c) = (key(100), key(101), key(102));
        let nodes = vote_nodes(1, 6, 3);
        let mut moved = nodes.clone();
        moved[0].address = "127.0.0.1:4444".into();
        let votes = vec![
            vote(&a, 3, 1, &nodes),
            vote(&b, 3, 1, &moved),
            vote(&c, 3, 1, &moved),
        ];
        let doc = consensus(3, schedule(), NetworkParams::default(), &votes, 2).unwrap();
        assert_eq!(
            doc.node(&nodes[0].identity).unwrap().address,
            "127.0.0.1:4444"
        );
        let doc3 = consensus(3, schedule(), NetworkParams::default(), &votes, 3).unwrap();
        assert!(
            doc3.node(&nodes[0].identity).is_none(),
            "no 3 votes agree on it"
        );
        assert_eq!(doc3.nodes.len(), nodes.len() - 1);
    }

    #[test]
    fn votes_verify_only_under_their_authority() {
        let (a, b) = (key(100), key(101));
        let v = vote(&a, 3, 1, &vote_nodes(1, 3, 3));
        let s = Signed::sign(&v, VOTE_DOMAIN, &a).unwrap();
        let set = [a.verifying_key().to_bytes(), b.verifying_key().to_bytes()];
        assert_eq!(verify_vote(&s, &set).unwrap(), v);
        assert!(verify_vote(&s, &set[1..]).is_err(), "unknown authority");
        let forged = Signed::sign(&v, VOTE_DOMAIN, &b).unwrap();
        assert!(
            verify_vote(&forged, &set).is_err(),
            "signed by another authority"
        );
        let wrong_domain = Signed::sign(&v, TOPOLOGY_DOMAIN, &a).unwrap();
        assert!(verify_vote(&wrong_domain, &set).is_err());
        let mut unsorted = v.clone();
        unsorted.nodes.reverse();
        let s = Signed::sign(&unsorted, VOTE_DOMAIN, &a).unwrap();
        assert!(verify_vote(&s, &set).is_err());
    }
}
