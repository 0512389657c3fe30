//! `umbra eval anonymity`: a whole network of real clients on a virtual
//! clock, and a global passive adversary trying to name the sender of target
//! messages.
//!
//! **What runs.** The network is [`crate::sim`]'s: every client is the SDK's
//! own state machine, [`client_sdk::ClientState`], driven as the SDK's driver
//! drives it, so what a client sends and when (its Poisson payload ticks at
//! λ_P carrying a fragment, receipt, retransmission or fetch when one is due
//! and drop cover otherwise, its loops at λ_L, its fetch rounds paced to the
//! downlink) is decided by the client's code, not by a model of it. Every
//! packet is a real Sphinx packet that each hop peels with its own key; the
//! final hop runs the gateway's own dropbox code, whose SURB-acks and fetch
//! replies travel back through the mix layers as real replies. Mix nodes send
//! their own loops at λ_M, built as `mixnode`'s loop task builds them (one
//! node per layer, then back to the node; [`Sim::send_packet`]). Links add
//! no latency. `dangerous_no_cover` sets the clients' own
//! `dangerous().set_no_cover` and stops the nodes' loops;
//! `dangerous_zero_delay` makes the nodes ignore the header's delays
//! ([`Sim::set_dangerous_zero_delay`]).
//!
//! **The workload.** Nearly every client has three contacts among the
//! others (a random graph from the seed). Its user sends a short message at
//! Poisson times at `real_rate` to a random contact (`ClientState::send`).
//! The clients' settings are the SDK's defaults but one: they catch up on 2
//! past dropbox periods at start, not 24 (all clients start together, with
//! empty boxes). Client 0's user also queues a burst of 50 messages
//! with its first message after the warm-up (for the KS check).
//!
//! **What the adversary sees.** Every packet put on a link between nodes and
//! every frame a client sends to its entry gateway, with its time (the
//! simulation's observer, [`Sim::set_observer`]). The constant-rate downlink
//! (gateway → client) is simulated as `sim` does it (a Poisson stream at λ_D
//! of queued replies, or dummies) but left out of the observation: the attack
//! does not use it. The ground truth is the simulation's: it follows each
//! packet hop by hop (what each node's key made of it), and at the final hop
//! the decrypted request: a `Store` into a dropbox names its sender (the box
//! id is the pair's), which must be the client that injected the packet. A
//! **target** is the first copy of a message queued after the warm-up,
//! arriving at its dropbox gateway (the client reports a message `Sent` at
//! the instant that copy leaves); receipts, retransmissions, fetches and
//! cover are traffic around the targets.
//!
//! **The attack** is the one of the modelled evaluation this one replaced,
//! unchanged. At each mix an output at time t is attributed to each earlier
//! input i with weight μ·e^(−μ(t−t_i)) and to the mix's own loop cover with
//! weight λ_M; an input from a client (through its entry gateway, which adds
//! no delay) carries that client, a packet a gateway sends of its own (a
//! SURB reply) carries no client, a packet from a mix carries the mix's
//! attribution of it. Because the weights are exponential, each mix keeps
//! one exponentially decayed vector over senders, updated per event: the
//! attack is exact and runs in O(events × clients). With
//! `dangerous_zero_delay` (μ = ∞) an output carries the input that arrived
//! at the same instant. The guess for a target is the attribution of the
//! packet arriving at the dropbox gateway.
//!
//! **Determinism.** The seed decides the topology, the clients' and nodes'
//! choices and the workload; [`crate::sim`]'s module doc says where that
//! ends. A test checks that a seed replays a run exactly.
//!
//! **Cost.** The attack is cheap; the real packets are not: about 0.7 ms of
//! CPU to build one (a fragment also builds its SURB-ack, a fetch four SURBs)
//! and 0.13 ms per hop to peel, about 25 ms per simulated client-second at
//! the default rates. The default run (100 clients, 5000 targets, 109
//! simulated seconds) takes 4–5 minutes in a release build (250–280 s on
//! a shared two-core machine).

use crate::sim::{self, ClientHandle, Endpoint, Observed, OnLink, Sim, SimConfig};
use client_sdk::{ClientConfig, MessageId, Status};
use protocol::NodeId;
use protocol::cover::Poisson;
use protocol::frame;
use protocol::messages::Request;
use protocol::packet::{self, Hop, Peeled};
use protocol::topology::{self, NetworkParams, Role};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::hash::{DefaultHasher, Hasher};
use std::rc::Rc;
use std::time::Duration;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Clients.
    pub clients: usize,
    /// Mix nodes per layer.
    pub per_layer: usize,
    /// Gateways.
    pub gateways: usize,
    /// Network parameters (rates and mean delay).
    pub params: NetworkParams,
    /// Real messages per client per second (the users' own traffic).
    pub real_rate: f64,
    /// Target messages to attack.
    pub targets: usize,
    /// Simulated seconds after the warm-up, at most; `None`: long enough
    /// for `targets`.
    pub duration_s: Option<f64>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Evaluation only: no cover traffic (clients send only their messages,
    /// receipts and fetches, as soon as they are due; no loops anywhere).
    pub dangerous_no_cover: bool,
    /// Evaluation only: no mixing delay (nodes ignore the header's delays).
    pub dangerous_zero_delay: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            clients: 100,
            per_layer: 2,
            gateways: 2,
            params: NetworkParams::default(),
            real_rate: 0.5,
            targets: 5000,
            duration_s: None,
            seed: 1,
            dangerous_no_cover: false,
            dangerous_zero_delay: false,
        }
    }
}

/// What the adversary achieved, and what the network cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Clients.
    pub clients: usize,
    /// Target messages attacked.
    pub targets: usize,
    /// Mean entropy of the adversary's distribution over senders, bits.
    pub entropy_bits: f64,
    /// log2(clients).
    pub max_entropy_bits: f64,
    /// Share of targets whose most likely sender was the true one.
    pub top1_accuracy: f64,
    /// Wilson 95 % interval of the top-1 accuracy.
    pub top1_ci95: [f64; 2],
    /// 1 / clients.
    pub chance: f64,
    /// Share of clients whose send times pass a KS test for Poisson (α = 0.05).
    pub ks_pass_share: f64,
    /// KS statistic of a client that sent a burst of 50 real messages, and its 5 % critical value.
    pub ks_burst: [f64; 2],
    /// Every kind of packet has the same size (checked with real packets,
    /// and on every link of the run).
    pub same_size: bool,
    /// Packets per second a client sent (measured, mean over all clients;
    /// with cover an idle client and a busy one send alike).
    pub client_send_pps: f64,
    /// Mean time from queueing a message to its arrival at the dropbox gateway, seconds.
    pub mean_latency_s: f64,
    /// Simulated seconds.
    pub simulated_s: f64,
}

/// Contacts (nearly) every client has.
const CONTACTS: usize = 3;
/// Messages client 0 queues at once, after the warm-up.
const BURST: usize = 50;
/// The attack catches up with the simulation every this many virtual seconds.
const CHECK_S: f64 = 0.5;
/// What a node's loop carries (as `mixnode`'s loop task).
const NODE_LOOP_BODY: &[u8] = b"umbra-node-loop";

/// Names a packet on a link (its bytes change at every hop).
fn key(packet: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(packet);
    h.finish()
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A distribution over the `n` clients and noise (index `n`) sure of `i`.
fn one_hot(n: usize, i: usize) -> Vec<f64> {
    let mut d = vec![0.0; n + 1];
    d[i] = 1.0;
    d
}

/// The Sphinx packet inside a client's Inject frame.
fn inject_packet(frame: &[u8]) -> Option<&[u8]> {
    frame::decode_body(frame.get(2..)?).ok()?.packet()
}

/// One thing the adversary sees, in time order.
enum Step {
    /// A packet arrives at mix `mix`.
    MixIn { mix: usize, key: u64 },
    /// A packet leaves mix `mix`.
    MixOut { mix: usize, key: u64 },
    /// A packet arrives at a gateway, its final hop; `store` if it carried a
    /// store into a dropbox.
    AtGateway { key: u64, store: Option<Store> },
}

/// Ground truth of a store arriving at its dropbox gateway.
struct Store {
    /// The client that injected the packet, and when (µs).
    origin: Option<(usize, u64)>,
    /// The client that writes to the dropbox.
    owner: Option<usize>,
}

struct Timed {
    at: u64,
    seq: u64,
    step: Step,
}

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Mix {
    /// Σ e^(−μ(t−t_i)) · dist_i over inputs, at time `t`.
    sum: Vec<f64>,
    t: f64,
    /// With μ = ∞: the last input, and when it came (µs).
    last: Option<(u64, Vec<f64>)>,
}

impl Mix {
    fn decay(&mut self, t: f64, mu: f64) {
        let f = (-mu * (t - self.t)).exp();
        if f < 1.0 {
            for x in &mut self.sum {
                *x *= f;
            }
        }
        self.t = t;
    }
}

/// A message the workload sent.
struct Message {
    client: usize,
    id: MessageId,
    queued_us: u64,
    target: bool,
}

/// The observation (filled by the simulation's observer) and the attack on it.
struct Eval {
    n: usize,
    mu: f64,
    lambda_m: f64,
    targets_wanted: usize,
    mix_index: HashMap<NodeId, usize>,
    /// Dropbox id → the client writing to it.
    box_owner: HashMap<[u8; 32], usize>,
    // ---- what the observer records ----
    steps: BinaryHeap<Reverse<Timed>>,
    seq: u64,
    /// Packets clients injected, by key, not yet seen at their first mix.
    injected: HashMap<u64, usize>,
    /// Ground truth: a packet in flight → (client that injected it, when).
    origin: HashMap<u64, (usize, u64)>,
    /// Each client's send times, seconds.
    sends: Vec<Vec<f64>>,
    frame_lens: BTreeSet<usize>,
    packet_lens: BTreeSet<usize>,
    // ---- the attack ----
    mixes: Vec<Mix>,
    /// The attribution of each packet on a link from a mix.
    pending: HashMap<u64, Vec<f64>>,
    targets: usize,
    hits: usize,
    entropy: f64,
    latency: f64,
    /// Stores whose dropbox named another client than the one that sent them.
    mismatched: u64,
}

impl Eval {
    fn push(&mut self, at: Duration, step: Step) {
        self.seq += 1;
        self.steps.push(Reverse(Timed {
            at: us(at),
            seq: self.seq,
            step,
        }));
    }

    /// What the simulation shows: the adversary's view and the ground truth.
    fn observe(&mut self, o: Observed<'_>) {
        match o {
            Observed::Link {
                from: Endpoint::Client(c),
                depart,
                what: OnLink::Inject { frame },
                ..
            } => {
                self.frame_lens.insert(frame.len());
                self.sends[c.0].push(depart.as_secs_f64());
                if let Some(p) = inject_packet(frame) {
                    let k = key(p);
                    self.injected.insert(k, c.0);
                    self.origin.insert(k, (c.0, us(depart)));
                }
            }
            Observed::Link {
                from: Endpoint::Node(node),
                depart,
                what: OnLink::Packet { packet },
                ..
            } => {
                self.packet_lens.insert(packet.len());
                if let Some(&mix) = self.mix_index.get(&node) {
                    let key = key(packet);
                    self.push(depart, Step::MixOut { mix, key });
                }
            }
            Observed::Link { .. } => {}
            Observed::Peel {
                node,
                at,
                packet,
                peeled,
            } => {
                let k = key(packet);
                let origin = self.origin.remove(&k);
                if let Some(&mix) = self.mix_index.get(&node) {
                    self.push(at, Step::MixIn { mix, key: k });
                    if let (Some(Peeled::Forward { packet, .. }), Some(o)) = (peeled, origin) {
                        self.origin.insert(key(packet), o);
                    }
                    return;
                }
                let store = match peeled {
                    Some(Peeled::Final {
                        identifier,
                        payload,
                        ..
                    }) if *identifier == [0; 16] => {
                        match packet::recover_plaintext(payload).and_then(|p| Request::decode(&p)) {
                            Ok(
                                Request::Store { dropbox, .. }
                                | Request::StoreAcked { dropbox, .. }
                                | Request::StoreBatched { dropbox, .. },
                            ) => Some(Store {
                                origin,
                                owner: self.box_owner.get(&dropbox).copied(),
                            }),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                self.push(at, Step::AtGateway { key: k, store });
            }
        }
    }

    /// Runs the attack over everything observed up to `until_us`.
    /// `first_copies` maps (client, send time) to the message whose first
    /// copy left then.
    fn drain(
        &mut self,
        until_us: u64,
        first_copies: &HashMap<(usize, u64), usize>,
        msgs: &[Message],
    ) {
        while self.steps.peek().is_some_and(|Reverse(s)| s.at <= until_us) {
            let Some(Reverse(Timed { at, step, .. })) = self.steps.pop() else {
                break;
            };
            let t = at as f64 / 1e6;
            match step {
                Step::MixIn { mix, key } => {
                    let dist = if let Some(c) = self.injected.remove(&key) {
                        one_hot(self.n, c)
                    } else if let Some(d) = self.pending.remove(&key) {
                        d
                    } else {
                        // Sent by a gateway of its own: a SURB reply.
                        one_hot(self.n, self.n)
                    };
                    let m = &mut self.mixes[mix];
                    if self.mu.is_finite() {
                        m.decay(t, self.mu);
                        for (s, x) in m.sum.iter_mut().zip(&dist) {
                            *s += x;
                        }
                    } else {
                        m.last = Some((at, dist));
                    }
                }
                Step::MixOut { mix, key } => {
                    let (mu, lambda_m, n) = (self.mu, self.lambda_m, self.n);
                    let m = &mut self.mixes[mix];
                    let dist = if mu.is_finite() {
                        output_dist(m, t, mu, lambda_m, n)
                    } else {
                        match &m.last {
                            Some((when, d)) if *when == at => d.clone(),
                            // Nothing came in at this instant: the mix's own loop.
                            _ => one_hot(n, n),
                        }
                    };
                    self.pending.insert(key, dist);
                }
                Step::AtGateway { key, store } => {
                    let dist = self.pending.remove(&key);
                    let (Some(dist), Some(store)) = (dist, store) else {
                        continue;
                    };
                    let Some((sender, sent_us)) = store.origin else {
                        continue;
                    };
                    if store.owner != Some(sender) {
                        self.mismatched += 1;
                        continue;
                    }
                    let Some(msg) = first_copies.get(&(sender, sent_us)).map(|i| &msgs[*i]) else {
                        continue; // a receipt or a retransmission
                    };
                    if !msg.target || self.targets >= self.targets_wanted {
                        continue;
                    }
                    self.score(&dist, sender, t - msg.queued_us as f64 / 1e6);
                }
            }
        }
    }

    /// The adversary's guess for one target.
    fn score(&mut self, dist: &[f64], sender: usize, latency: f64) {
        let n = self.n;
        let total: f64 = dist[..n].iter().sum();
        if total <= 0.0 {
            return;
        }
        self.targets += 1;
        self.latency += latency;
        let (mut best, mut h) = (0usize, 0.0f64);
        for (i, x) in dist[..n].iter().enumerate() {
            let q = x / total;
            if q > 0.0 {
                h -= q * q.log2();
            }
            if *x > dist[best] {
                best = i;
            }
        }
        self.entropy += h;
        self.hits += usize::from(best == sender);
    }
}

/// A loop of mix node `me`, as `mixnode`'s loop task builds it: one node per
/// layer, then back to `me`. (first hop, packet)
fn node_loop(sim: &Sim, me: NodeId, rng: &mut ChaCha20Rng) -> Option<(NodeId, Vec<u8>)> {
    let doc = sim.topology();
    let mut route: Vec<Hop> = topology::choose_mix_route(doc, rng)
        .ok()?
        .iter()
        .map(|x| x.hop())
        .collect();
    route.push(doc.node(&me)?.hop());
    let mean = Duration::from_millis(doc.params.mix_delay_mean_ms);
    let delays = packet::sample_delays(rng, route.len(), mean);
    let mut id = [0u8; 16];
    rand::Rng::fill_bytes(rng, &mut id);
    let pkt = packet::build_packet(rng, &route, &me, id, &delays, NODE_LOOP_BODY).ok()?;
    Some((route[0].id, pkt))
}

#[derive(Debug)]
struct At(f64);
impl PartialEq for At {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for At {}
impl PartialOrd for At {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for At {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// What the driver does next, besides running the simulation.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A user sends a message.
    User(usize),
    /// A mix node sends a loop.
    NodeLoop(usize),
    /// The attack catches up.
    Check,
}

/// Runs the simulation and the attack.
pub fn run(opts: &EvalOptions) -> EvalReport {
    let n = opts.clients.max(2);
    let p = opts.params;
    let cover = !opts.dangerous_no_cover;
    let mean = if opts.dangerous_zero_delay {
        0.0
    } else {
        p.mix_delay_mean_ms as f64 / 1000.0
    };
    let mu = if mean > 0.0 {
        1.0 / mean
    } else {
        f64::INFINITY
    };
    let lambda_m = if cover { p.lambda_mix_loop } else { 0.0 };
    let warmup = if cover {
        10.0 * mean.max(0.01) + 2.0
    } else {
        1.0
    };
    // Generous: the run stops as soon as `targets` have arrived.
    let for_targets = if opts.real_rate > 0.0 {
        1.5 * opts.targets as f64 / (n as f64 * opts.real_rate)
    } else {
        0.0
    };
    let duration = warmup + opts.duration_s.unwrap_or(for_targets + 20.0 * mean + 10.0);

    // The SDK's defaults, but the catch-up at start (see the module doc).
    let mut client = ClientConfig::builder(vec![sim::sim_authority()], 1)
        .catch_up_periods(2)
        .build()
        .expect("a fixed, valid client config");
    client.dangerous().set_no_cover(!cover);
    // Each node's replay cache holds every packet it may see, twice over:
    // a node sees at most its layer's (or the gateways') share of the
    // clients' uplink and downlink and of the nodes' loops.
    let per_node_pps = (n as f64 * (p.lambda_payload + p.lambda_loop + p.lambda_downlink)
        + 3.0 * opts.per_layer as f64 * lambda_m)
        / opts.per_layer.min(opts.gateways).max(1) as f64;
    let mut sim = Sim::new(SimConfig {
        seed: opts.seed,
        mixes_per_layer: opts.per_layer.max(1),
        gateways: opts.gateways.max(1),
        params: p,
        link_latency: Duration::ZERO,
        client,
        replay_capacity: ((2.0 * per_node_pps * duration) as u64).max(200_000),
        ..SimConfig::default()
    });
    sim.set_dangerous_zero_delay(opts.dangerous_zero_delay);
    let clients: Vec<ClientHandle> = (0..n).map(|_| sim.add_client()).collect();

    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed ^ 0xe7a1_5eed);
    // A random graph in which (nearly) every client has CONTACTS contacts.
    let mut contacts: Vec<Vec<usize>> = vec![Vec::new(); n];
    for a in 0..n {
        while contacts[a].len() < CONTACTS {
            let free: Vec<usize> = (0..n)
                .filter(|b| *b != a && contacts[*b].len() < CONTACTS && !contacts[a].contains(b))
                .collect();
            let Some(&b) = free.get(rng.random_range(0..free.len().max(1))) else {
                break;
            };
            contacts[a].push(b);
            contacts[b].push(a);
            sim.connect_contacts(clients[a], clients[b]);
        }
        if contacts[a].is_empty() {
            // Everyone else is full: take any other client.
            let b = (a + 1) % n;
            contacts[a].push(b);
            contacts[b].push(a);
            sim.connect_contacts(clients[a], clients[b]);
        }
    }
    let first_period = sim.period();
    let last_period = protocol::dropbox::period_at(sim.unix_ms() + (duration * 1000.0) as u64 + 1);
    let mut box_owner = HashMap::new();
    for a in 0..n {
        for &b in &contacts[a] {
            for period in first_period..=last_period {
                if let Some(id) =
                    sim.dropbox_id(sim.persona(clients[a]), sim.persona(clients[b]), period)
                {
                    box_owner.insert(id, a);
                }
            }
        }
    }
    let mix_ids: Vec<NodeId> = sim
        .topology()
        .nodes
        .iter()
        .filter(|x| x.role == Role::Mix)
        .map(|x| x.identity)
        .collect();
    let eval = Rc::new(RefCell::new(Eval {
        n,
        mu,
        lambda_m,
        targets_wanted: opts.targets,
        mix_index: mix_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
        box_owner,
        steps: BinaryHeap::new(),
        seq: 0,
        injected: HashMap::new(),
        origin: HashMap::new(),
        sends: vec![Vec::new(); n],
        frame_lens: BTreeSet::new(),
        packet_lens: BTreeSet::new(),
        mixes: (0..mix_ids.len())
            .map(|_| Mix {
                sum: vec![0.0; n + 1],
                t: 0.0,
                last: None,
            })
            .collect(),
        pending: HashMap::new(),
        targets: 0,
        hits: 0,
        entropy: 0.0,
        latency: 0.0,
        mismatched: 0,
    }));
    let observer = eval.clone();
    sim.set_observer(Box::new(move |o| observer.borrow_mut().observe(o)));

    let mut users: Vec<Poisson> = (0..n)
        .map(|_| Poisson::new(opts.real_rate, 0.0, &mut rng))
        .collect();
    let mut loops: Vec<Poisson> = (0..mix_ids.len())
        .map(|_| Poisson::new(lambda_m, 0.0, &mut rng))
        .collect();
    let mut heap: BinaryHeap<Reverse<(At, Ev)>> = BinaryHeap::new();
    for (c, u) in users.iter().enumerate() {
        heap.push(Reverse((At(u.next_at()), Ev::User(c))));
    }
    for (m, l) in loops.iter().enumerate() {
        heap.push(Reverse((At(l.next_at()), Ev::NodeLoop(m))));
    }
    heap.push(Reverse((At(CHECK_S), Ev::Check)));
    let burst_client = 0usize;
    let mut burst_done = false;
    let mut msgs: Vec<Message> = Vec::new();
    // Messages not yet reported sent, and the first copies of those that were.
    let mut unsent: Vec<usize> = Vec::new();
    let mut first_copies: HashMap<(usize, u64), usize> = HashMap::new();
    let mut body_counter = 0u64;

    while let Some(Reverse((At(at), ev))) = heap.pop() {
        let t = at.min(duration);
        sim.run_until(Duration::from_secs_f64(t));
        // Past the end, whatever comes next: the last look.
        let ev = if at >= duration { Ev::Check } else { ev };
        match ev {
            Ev::User(c) => {
                users[c].poll(t, &mut rng);
                heap.push(Reverse((At(users[c].next_at()), Ev::User(c))));
                let to = contacts[c][rng.random_range(0..contacts[c].len())];
                let target = t > warmup;
                let burst = if !burst_done && target && c == burst_client {
                    burst_done = true;
                    BURST
                } else {
                    0
                };
                for i in 0..=burst {
                    body_counter += 1;
                    let body = body_counter.to_be_bytes();
                    if let Ok(id) = sim.send(clients[c], clients[to], &body) {
                        unsent.push(msgs.len());
                        msgs.push(Message {
                            client: c,
                            id,
                            queued_us: us(sim.now()),
                            target: target && i == 0,
                        });
                    }
                }
            }
            Ev::NodeLoop(m) => {
                loops[m].poll(t, &mut rng);
                heap.push(Reverse((At(loops[m].next_at()), Ev::NodeLoop(m))));
                if let Some((first, pkt)) = node_loop(&sim, mix_ids[m], &mut rng) {
                    sim.send_packet(mix_ids[m], first, pkt);
                }
            }
            Ev::Check => {
                unsent.retain(|&i| {
                    let m = &msgs[i];
                    let sent = sim
                        .log(clients[m.client])
                        .statuses
                        .get(&m.id)
                        .and_then(|v| v.iter().find(|(_, s)| *s == Status::Sent));
                    match sent {
                        Some((at, _)) => {
                            first_copies.insert((m.client, us(*at)), i);
                            false
                        }
                        None => true,
                    }
                });
                let mut e = eval.borrow_mut();
                e.drain(us(sim.now()), &first_copies, &msgs);
                if e.targets >= opts.targets || t >= duration {
                    break;
                }
                heap.push(Reverse((At(t + CHECK_S), Ev::Check)));
            }
        }
    }

    let e = eval.borrow();
    tracing::debug!(stats = ?sim.stats(), "simulation");
    debug_assert_eq!(e.mismatched, 0, "ground truth disagrees with itself");
    if e.mismatched > 0 {
        tracing::warn!(
            stores = e.mismatched,
            "stores whose dropbox names another sender than the packet's"
        );
    }
    let simulated_s = sim.now().as_secs_f64();
    let rate = if cover {
        p.lambda_payload + p.lambda_loop
    } else {
        opts.real_rate
    };
    let pass = (0..n)
        .filter(|c| *c != burst_client)
        .filter(|c| {
            let (d, crit) = ks(&e.sends[*c], rate);
            d <= crit
        })
        .count() as f64
        / (n - 1) as f64;
    let (d_burst, crit_burst) = ks(&e.sends[burst_client], rate);
    let frames: usize = e.sends.iter().map(Vec::len).sum();
    let k = e.targets.max(1);
    let same_on_links =
        e.frame_lens.len() <= 1 && e.packet_lens.iter().all(|l| *l == packet::PACKET_SIZE);
    EvalReport {
        clients: n,
        targets: e.targets,
        entropy_bits: e.entropy / k as f64,
        max_entropy_bits: (n as f64).log2(),
        top1_accuracy: e.hits as f64 / k as f64,
        top1_ci95: wilson(e.hits, e.targets),
        chance: 1.0 / n as f64,
        ks_pass_share: pass,
        ks_burst: [d_burst, crit_burst],
        same_size: packet_sizes_equal() && same_on_links,
        client_send_pps: frames as f64 / (n as f64 * simulated_s.max(1e-9)),
        mean_latency_s: e.latency / k as f64,
        simulated_s,
    }
}

/// Builds one packet of every kind a client sends with the real code and
/// checks they are all [`packet::PACKET_SIZE`] bytes.
pub fn packet_sizes_equal() -> bool {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let route: Vec<Hop> = (0..4u8)
        .map(|i| Hop {
            id: [i; 32],
            sphinx_key: packet::sphinx_keypair(&mut rng).1,
        })
        .collect();
    let z = [Duration::ZERO; 4];
    let pair = protocol::dropbox::PairSecret::from_bytes([1; 32]);
    let bx = pair.dropbox(&[1; 32], &[2; 32], 0);
    let (surb, _) = match packet::build_surb(&mut rng, &route, &[0; 32], [1; 16], &z) {
        Ok(s) => s,
        Err(_) => return false,
    };
    let bodies: Vec<Vec<u8>> = [
        protocol::messages::Request::Store {
            dropbox: bx.id,
            ciphertext: vec![0; 10],
        }
        .encode(),
        protocol::messages::Request::Store {
            dropbox: bx.id,
            ciphertext: vec![0; protocol::messages::MAX_STORED_LEN],
        }
        .encode(),
        protocol::messages::Request::Drop.encode(),
        protocol::messages::Request::Fetch(protocol::messages::FetchRequest::new_signed(
            &bx,
            0,
            0,
            0,
            vec![surb.clone(); 4],
        ))
        .encode(),
    ]
    .into_iter()
    .filter_map(Result::ok)
    .collect();
    let mut sizes: Vec<usize> = bodies
        .iter()
        .filter_map(|b| packet::build_packet(&mut rng, &route, &[0; 32], [0; 16], &z, b).ok())
        .map(|p| p.len())
        .collect();
    if let Ok((_, reply)) = packet::use_surb(&surb, b"reply") {
        sizes.push(reply.len());
    }
    sizes.len() == 5 && sizes.iter().all(|s| *s == packet::PACKET_SIZE)
}

fn wilson(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (z, n_f, p) = (1.96f64, n as f64, k as f64 / n as f64);
    let d = 1.0 + z * z / n_f;
    let c = (p + z * z / (2.0 * n_f)) / d;
    let h = z * ((p * (1.0 - p) / n_f) + z * z / (4.0 * n_f * n_f)).sqrt() / d;
    [(c - h).max(0.0), (c + h).min(1.0)]
}

/// KS statistic of inter-event gaps against Exp(rate).
fn ks(times: &[f64], rate: f64) -> (f64, f64) {
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let n = gaps.len().max(1) as f64;
    let d = gaps
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let f = 1.0 - (-rate * g).exp();
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max);
    (d, 1.36 / n.sqrt())
}

/// The adversary's distribution for an output of `m` at `t`.
fn output_dist(m: &mut Mix, t: f64, mu: f64, lambda_m: f64, n: usize) -> Vec<f64> {
    m.decay(t, mu);
    let mut d: Vec<f64> = m.sum.iter().map(|x| x * mu).collect();
    d[n] += lambda_m;
    let total: f64 = d.iter().sum();
    if total > 0.0 {
        for x in &mut d {
            *x /= total;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_and_delay_hide_the_sender_and_their_absence_does_not() {
        let base = EvalOptions {
            clients: 20,
            targets: 200,
            ..EvalOptions::default()
        };
        let mixed = run(&base);
        let exposed = run(&EvalOptions {
            dangerous_no_cover: true,
            dangerous_zero_delay: true,
            ..base.clone()
        });
        assert!(mixed.same_size);
        assert_eq!((mixed.targets, exposed.targets), (200, 200));
        assert!(
            exposed.top1_accuracy >= 0.9,
            "ablation must let the attack win: {exposed:?}"
        );
        assert!(
            mixed.top1_accuracy < exposed.top1_accuracy - 0.5,
            "gap: {mixed:?} vs {exposed:?}"
        );
        assert!(mixed.entropy_bits > exposed.entropy_bits + 2.0);
        assert!(
            mixed.ks_pass_share > 0.8,
            "send times look Poisson: {mixed:?}"
        );
        assert!(
            mixed.ks_burst[0] <= mixed.ks_burst[1],
            "a burst does not show: {mixed:?}"
        );
        // The clients' own streams set the rate: λ_P + λ_L with cover (the
        // mean of 20 × 26 s of Poisson sends is within 5 % of it), far less
        // without.
        let rate = base.params.lambda_payload + base.params.lambda_loop;
        assert!(
            (mixed.client_send_pps - rate).abs() < 0.05 * rate,
            "{mixed:?}"
        );
        assert!(exposed.client_send_pps < rate / 2.0, "{exposed:?}");
    }

    #[test]
    fn a_seed_replays_the_evaluation_exactly() {
        let opts = EvalOptions {
            clients: 4,
            targets: 12,
            seed: 3,
            ..EvalOptions::default()
        };
        let a = run(&opts);
        assert_eq!(a.targets, 12);
        assert_eq!(a, run(&opts));
        let other = run(&EvalOptions { seed: 4, ..opts });
        assert_ne!(a, other, "the seed decides the run");
    }
}
