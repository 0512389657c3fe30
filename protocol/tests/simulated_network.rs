//! Many nodes on a virtual clock, running the real processing code.
//!
//! Like quinn-proto's test `Pair`: no sockets, no tokio, time is a number the
//! test advances. Each node is a `KeyRing`; links add a fixed latency; every
//! forward hop holds its packet for the (clamped) delay in the header.

use protocol::keys::{EpochKey, KeyRing};
use protocol::packet::{
    Hop, Peeled, build_packet, recover_plaintext, sample_delays, sphinx_keypair,
};
use protocol::replay::ReplayCache;
use protocol::{Error, NodeId};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

const EPOCH: u64 = 1;
const LINK_LATENCY_US: u64 = 500;

struct SimNode {
    ring: KeyRing,
    hop: Hop,
}

struct Arrival {
    at_us: u64,
    seq: u64,
    to: NodeId,
    packet: Vec<u8>,
}

impl PartialEq for Arrival {
    fn eq(&self, o: &Self) -> bool {
        (self.at_us, self.seq) == (o.at_us, o.seq)
    }
}
impl Eq for Arrival {}
impl PartialOrd for Arrival {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Arrival {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(o.at_us, o.seq))
    }
}

struct Sim {
    nodes: HashMap<NodeId, SimNode>,
    layers: Vec<Vec<NodeId>>,
    gateways: Vec<NodeId>,
    queue: BinaryHeap<Reverse<Arrival>>,
    seq: u64,
    now_us: u64,
    max_delay: Duration,
    delivered: Vec<(u64, [u8; 32], Vec<u8>)>,
    dropped: HashMap<&'static str, u64>,
}

impl Sim {
    fn new(rng: &mut ChaCha20Rng, per_layer: usize, gateways: usize, max_delay: Duration) -> Self {
        let mut nodes = HashMap::new();
        let mut next_id = 1u8;
        let mut make = |rng: &mut ChaCha20Rng| {
            let (secret, public) = sphinx_keypair(rng);
            let mut ring = KeyRing::new();
            ring.insert(EpochKey::new(
                EPOCH,
                secret,
                ReplayCache::new(100_000, 1e-6),
            ));
            let id = [next_id; 32];
            next_id += 1;
            (
                id,
                SimNode {
                    ring,
                    hop: Hop {
                        id,
                        sphinx_key: public,
                    },
                },
            )
        };
        let mut layers = vec![];
        for _ in 0..3 {
            let mut layer = vec![];
            for _ in 0..per_layer {
                let (id, n) = make(rng);
                nodes.insert(id, n);
                layer.push(id);
            }
            layers.push(layer);
        }
        let mut gws = vec![];
        for _ in 0..gateways {
            let (id, n) = make(rng);
            nodes.insert(id, n);
            gws.push(id);
        }
        Sim {
            nodes,
            layers,
            gateways: gws,
            queue: BinaryHeap::new(),
            seq: 0,
            now_us: 0,
            max_delay,
            delivered: vec![],
            dropped: HashMap::new(),
        }
    }

    fn route(&self, rng: &mut ChaCha20Rng) -> Vec<Hop> {
        let mut r: Vec<Hop> = self
            .layers
            .iter()
            .map(|l| self.nodes[&l[rng.random_range(0..l.len())]].hop)
            .collect();
        let g = self.gateways[rng.random_range(0..self.gateways.len())];
        r.push(self.nodes[&g].hop);
        r
    }

    fn inject(&mut self, at_us: u64, to: NodeId, packet: Vec<u8>) {
        self.seq += 1;
        self.queue.push(Reverse(Arrival {
            at_us,
            seq: self.seq,
            to,
            packet,
        }));
    }

    /// Runs until no event is left; returns the number of events handled.
    fn run(&mut self) -> u64 {
        let mut events = 0;
        while let Some(Reverse(a)) = self.queue.pop() {
            assert!(a.at_us >= self.now_us, "virtual time went backwards");
            self.now_us = a.at_us;
            events += 1;
            let node = &self.nodes[&a.to];
            match node.ring.peel(EPOCH, &a.packet) {
                Ok(Peeled::Forward {
                    next_hop,
                    delay,
                    packet,
                }) => {
                    if !self.nodes.contains_key(&next_hop) {
                        *self.dropped.entry("unknown next hop").or_default() += 1;
                        continue;
                    }
                    let held = delay.min(self.max_delay).as_micros() as u64;
                    self.inject(self.now_us + held + LINK_LATENCY_US, next_hop, packet);
                }
                Ok(Peeled::Final {
                    destination,
                    payload,
                    ..
                }) => {
                    let msg = recover_plaintext(&payload).expect("intact payload");
                    self.delivered.push((self.now_us, destination, msg));
                }
                Err(Error::Replay) => *self.dropped.entry("replay").or_default() += 1,
                Err(_) => *self.dropped.entry("malformed").or_default() += 1,
            }
        }
        events
    }
}

#[test]
fn packets_cross_three_layers_and_honour_their_delays() {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let max_delay = Duration::from_millis(400);
    let mut sim = Sim::new(&mut rng, 3, 2, max_delay);
    let n = 300u64;
    let mut expected = HashMap::new();
    let mut copies = vec![];
    for i in 0..n {
        let route = sim.route(&mut rng);
        let delays = sample_delays(&mut rng, 4, Duration::from_millis(100));
        let send_at = i * 1_000;
        // Arrival = send + 4 link latencies + the clamped delays of the 3 mix hops
        // (the final hop delivers at once).
        let due = send_at
            + 4 * LINK_LATENCY_US
            + delays[..3]
                .iter()
                .map(|d| d.min(&max_delay).as_micros() as u64)
                .sum::<u64>();
        let mut dest = [0u8; 32];
        dest[..8].copy_from_slice(&i.to_be_bytes());
        let msg = format!("message {i}").into_bytes();
        let pkt = build_packet(&mut rng, &route, &dest, [0; 16], &delays, &msg).unwrap();
        expected.insert(dest, (due, msg));
        if i % 10 == 0 {
            copies.push((send_at + 50, route[0].id, pkt.clone()));
        }
        sim.inject(send_at + LINK_LATENCY_US, route[0].id, pkt);
    }
    // Replays of every tenth packet, injected at L1 after the originals.
    for (at, to, p) in copies.clone() {
        sim.inject(at + LINK_LATENCY_US, to, p);
    }
    sim.run();
    assert_eq!(sim.delivered.len() as u64, n, "every packet delivered once");
    for (at, dest, msg) in &sim.delivered {
        let (due, want) = &expected[dest];
        assert_eq!(at, due, "delivery time honours the header delays");
        assert_eq!(msg, want);
    }
    assert_eq!(
        sim.dropped.get("replay").copied().unwrap_or(0),
        copies.len() as u64
    );
    // Some delays were long enough to be clamped: the clamp is exercised.
    assert!(
        sim.delivered
            .iter()
            .all(|(at, _, _)| *at < n * 1_000 + 3 * 400_000 + 10_000)
    );
}

#[test]
fn junk_and_unknown_next_hops_are_counted_not_fatal() {
    let mut rng = ChaCha20Rng::seed_from_u64(43);
    let mut sim = Sim::new(&mut rng, 2, 1, Duration::from_secs(1));
    let l1 = sim.layers[0][0];
    for i in 0..50u64 {
        let mut junk = vec![0u8; protocol::packet::PACKET_SIZE];
        rng.fill(&mut junk[..]);
        sim.inject(i, l1, junk);
    }
    // A route through a node the network does not know.
    let mut route = sim.route(&mut rng);
    route[1] = Hop {
        id: [200; 32],
        sphinx_key: route[1].sphinx_key,
    };
    let pkt = build_packet(
        &mut rng,
        &route,
        &[0; 32],
        [0; 16],
        &[Duration::ZERO; 4],
        b"x",
    )
    .unwrap();
    sim.inject(100, route[0].id, pkt);
    // And a good one afterwards.
    let route = sim.route(&mut rng);
    let pkt = build_packet(
        &mut rng,
        &route,
        &[1; 32],
        [0; 16],
        &[Duration::ZERO; 4],
        b"ok",
    )
    .unwrap();
    sim.inject(200, route[0].id, pkt);
    sim.run();
    assert_eq!(sim.dropped["malformed"], 50);
    assert_eq!(sim.dropped["unknown next hop"], 1);
    assert_eq!(sim.delivered.len(), 1);
    assert_eq!(sim.delivered[0].2, b"ok");
}
