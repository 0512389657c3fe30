//! `umbra eval anonymity`: a whole network on a virtual clock, and a global
//! passive adversary trying to name the sender of target messages.
//!
//! Built from the real protocol code: topology documents with the real
//! deterministic layer assignment, `choose_mix_route` for routes,
//! `sample_delays` for per-hop delays, `cover::ClientStream` for each client's
//! Poisson payload and loop streams. No sockets, no crypto per packet: a
//! packet is its route and its times, which is all a link observer sees
//! (every packet has the same size: checked with real packets, see
//! [`packet_sizes_equal`]).
//!
//! The adversary records every link event and is told which packet arriving
//! at a dropbox gateway is the target. At each mix an output at time t is
//! attributed to each earlier input i with weight μ·e^(−μ(t−t_i)) and to the
//! mix's own loop cover with weight λ_M; those weights are propagated back
//! through all three layers to the entry gateways, which add no delay, and so
//! to clients. Because the weights are exponential, each mix keeps one
//! exponentially decayed vector over senders, updated per event: the attack is
//! exact and runs in O(events × clients).

use protocol::cover::{ClientStream, Emission, Poisson};
use protocol::epoch::EpochSchedule;
use protocol::packet::{self, Hop};
use protocol::topology::{
    self, EpochPublicKey, NetworkParams, NodeDescriptor, Role, TopologyDocument,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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
    /// Evaluation only: no cover traffic (clients send only real messages).
    pub dangerous_no_cover: bool,
    /// Evaluation only: no mixing delay.
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
#[derive(Debug, Clone, Serialize)]
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
    /// Every kind of packet has the same size (checked with real packets).
    pub same_size: bool,
    /// Packets per second an idle client sends.
    pub client_send_pps: f64,
    /// Mean time from queueing a message to its arrival at the dropbox gateway, seconds.
    pub mean_latency_s: f64,
    /// Simulated seconds.
    pub simulated_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Real {
        sender: usize,
        target: bool,
        queued_at_us: u64,
    },
    Cover,
}

struct Flight {
    /// Mix indices still to traverse, with the delay each holds the packet.
    hops: Vec<(usize, f64)>,
    next: usize,
    kind: Kind,
    /// The adversary's distribution for this packet (senders…, noise).
    dist: Vec<f64>,
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

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    ClientTick(usize),
    RealMessage(usize),
    MixLoop(usize),
    /// Packet id departs its current mix.
    Depart(usize),
}

struct Mix {
    /// Σ e^(−μ(t−t_i)) · dist_i over inputs, at time `t`.
    sum: Vec<f64>,
    t: f64,
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

fn topology(opts: &EvalOptions) -> TopologyDocument {
    let mut ds = Vec::new();
    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed ^ 0x5eed);
    for i in 0..opts.per_layer * 3 + opts.gateways {
        let mut id = [0u8; 32];
        rand::Rng::fill_bytes(&mut rng, &mut id);
        ds.push(NodeDescriptor {
            identity: id,
            role: if i < opts.per_layer * 3 {
                Role::Mix
            } else {
                Role::Gateway
            },
            address: format!("127.0.0.1:{}", 10_000 + i),
            client_address: None,
            sphinx_keys: vec![EpochPublicKey {
                epoch: 0,
                key: [0; 32],
            }],
            published_ms: 0,
        });
    }
    let schedule = EpochSchedule {
        genesis_ms: 0,
        length_ms: 3_600_000,
    };
    TopologyDocument::build(0, 0, schedule, opts.params, &ds)
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

/// Runs the simulation and the attack.
pub fn run(opts: &EvalOptions) -> EvalReport {
    let n = opts.clients.max(2);
    let doc = topology(opts);
    let mix_index: HashMap<[u8; 32], usize> = doc
        .nodes
        .iter()
        .filter(|x| x.role == Role::Mix)
        .enumerate()
        .map(|(i, x)| (x.identity, i))
        .collect();
    let layer_of: Vec<u8> = doc
        .nodes
        .iter()
        .filter(|x| x.role == Role::Mix)
        .map(|x| x.layer)
        .collect();
    let mixes = mix_index.len();
    let p = opts.params;
    let cover = !opts.dangerous_no_cover;
    let mean = if opts.dangerous_zero_delay {
        Duration::ZERO
    } else {
        Duration::from_millis(p.mix_delay_mean_ms)
    };
    let mu = if mean.is_zero() {
        f64::INFINITY
    } else {
        1.0 / mean.as_secs_f64()
    };
    let lambda_m = if cover { p.lambda_mix_loop } else { 0.0 };

    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
    let warmup = if cover {
        10.0 * mean.as_secs_f64().max(0.01) + 2.0
    } else {
        1.0
    };
    // Generous: the run stops as soon as `targets` have arrived.
    let duration = warmup
        + opts.duration_s.unwrap_or(
            1.5 * opts.targets as f64 / (n as f64 * opts.real_rate)
                + 20.0 * mean.as_secs_f64()
                + 10.0,
        );
    let burst_client = 0usize;

    let mut streams: Vec<ClientStream<(u64, bool)>> = (0..n)
        .map(|_| {
            ClientStream::new(
                p.lambda_payload,
                p.lambda_loop,
                10_000,
                cover,
                0.0,
                &mut rng,
            )
        })
        .collect();
    let mut real: Vec<Poisson> = (0..n)
        .map(|_| Poisson::new(opts.real_rate, 0.0, &mut rng))
        .collect();
    let mut mix_loops: Vec<Poisson> = (0..mixes)
        .map(|_| Poisson::new(lambda_m, 0.0, &mut rng))
        .collect();
    let mut heap: BinaryHeap<Reverse<(At, Ev)>> = BinaryHeap::new();
    for c in 0..n {
        heap.push(Reverse((
            At(streams[c].next_at().max(0.0)),
            Ev::ClientTick(c),
        )));
        heap.push(Reverse((At(real[c].next_at()), Ev::RealMessage(c))));
    }
    for (m, l) in mix_loops.iter().enumerate() {
        heap.push(Reverse((At(l.next_at()), Ev::MixLoop(m))));
    }
    let mut burst_done = false;
    let mut state: Vec<Mix> = (0..mixes)
        .map(|_| Mix {
            sum: vec![0.0; n + 1],
            t: 0.0,
        })
        .collect();
    let mut flights: HashMap<usize, Flight> = HashMap::new();
    let mut next_id = 0usize;
    let mut sends: Vec<Vec<f64>> = vec![Vec::new(); n];
    let (mut targets, mut hits, mut entropy, mut latency) = (0usize, 0usize, 0.0f64, 0.0f64);

    // Routes through the mix layers from `from_layer` (1-based) to 3, then the
    // layers before it: the real route chooser, cut and rotated for mix loops.
    let route = |rng: &mut ChaCha20Rng| -> Vec<usize> {
        topology::choose_mix_route(&doc, rng)
            .map(|r| r.iter().map(|x| mix_index[&x.identity]).collect())
            .unwrap_or_default()
    };

    while let Some(Reverse((At(t), ev))) = heap.pop() {
        if t > duration || targets >= opts.targets {
            break;
        }
        // Enter a new packet at its first mix, carrying `dist`.
        let mut launch = |hops: Vec<usize>,
                          kind: Kind,
                          dist: Vec<f64>,
                          rng: &mut ChaCha20Rng,
                          heap: &mut BinaryHeap<Reverse<(At, Ev)>>,
                          state: &mut Vec<Mix>| {
            let delays = packet::sample_delays(rng, hops.len(), mean);
            let hops: Vec<(usize, f64)> = hops
                .into_iter()
                .zip(delays.iter().map(Duration::as_secs_f64))
                .collect();
            let Some(&(first, d)) = hops.first() else {
                return;
            };
            let m = &mut state[first];
            if mu.is_finite() {
                m.decay(t, mu);
                for (s, x) in m.sum.iter_mut().zip(&dist) {
                    *s += x;
                }
            }
            let id = next_id;
            next_id += 1;
            flights.insert(
                id,
                Flight {
                    hops,
                    next: 0,
                    kind,
                    dist,
                },
            );
            heap.push(Reverse((At(t + d), Ev::Depart(id))));
        };
        match ev {
            Ev::RealMessage(c) => {
                let target = t > warmup;
                let _ = streams[c].push(((t * 1e6) as u64, target));
                if let Some(at) = real[c].poll(t, &mut rng) {
                    let _ = at;
                }
                heap.push(Reverse((At(real[c].next_at()), Ev::RealMessage(c))));
                if !burst_done && t > warmup && c == burst_client {
                    burst_done = true;
                    for _ in 0..50 {
                        let _ = streams[c].push(((t * 1e6) as u64, false));
                    }
                }
                if !cover {
                    heap.push(Reverse((At(t), Ev::ClientTick(c))));
                }
            }
            Ev::ClientTick(c) => {
                while let Some((at, e)) = streams[c].poll(t, &mut rng) {
                    sends[c].push(at);
                    let mut dist = vec![0.0; n + 1];
                    dist[c] = 1.0;
                    let kind = match e {
                        Emission::Real((q, target)) => Kind::Real {
                            sender: c,
                            target,
                            queued_at_us: q,
                        },
                        _ => Kind::Cover,
                    };
                    let hops = route(&mut rng);
                    launch(hops, kind, dist, &mut rng, &mut heap, &mut state);
                }
                let next = streams[c].next_at();
                if next.is_finite() {
                    heap.push(Reverse((At(next.max(t)), Ev::ClientTick(c))));
                }
            }
            Ev::MixLoop(m) => {
                mix_loops[m].poll(t, &mut rng);
                heap.push(Reverse((At(mix_loops[m].next_at()), Ev::MixLoop(m))));
                // The loop leaves m looking like any output of m.
                let layer = layer_of[m] as usize;
                let full = route(&mut rng);
                let mut hops: Vec<usize> = full[layer..].to_vec();
                hops.extend_from_slice(&full[..layer.saturating_sub(1)]);
                hops.push(m);
                let st = &mut state[m];
                let dist = output_dist(st, t, mu, lambda_m, n);
                launch(hops, Kind::Cover, dist, &mut rng, &mut heap, &mut state);
            }
            Ev::Depart(id) => {
                let Some(mut f) = flights.remove(&id) else {
                    continue;
                };
                let (m, _) = f.hops[f.next];
                if mu.is_finite() {
                    f.dist = output_dist(&mut state[m], t, mu, lambda_m, n);
                }
                f.next += 1;
                if let Some(&(next_mix, d)) = f.hops.get(f.next) {
                    let st = &mut state[next_mix];
                    if mu.is_finite() {
                        st.decay(t, mu);
                        for (s, x) in st.sum.iter_mut().zip(&f.dist) {
                            *s += x;
                        }
                    }
                    heap.push(Reverse((At(t + d), Ev::Depart(id))));
                    flights.insert(id, f);
                } else if let Kind::Real {
                    sender,
                    target: true,
                    queued_at_us,
                } = f.kind
                {
                    // Arrival at the dropbox gateway: the adversary's guess.
                    let total: f64 = f.dist[..n].iter().sum();
                    if total > 0.0 {
                        targets += 1;
                        latency += t - queued_at_us as f64 / 1e6;
                        let (mut best, mut h) = (0usize, 0.0f64);
                        for (i, x) in f.dist[..n].iter().enumerate() {
                            let q = x / total;
                            if q > 0.0 {
                                h -= q * q.log2();
                            }
                            if *x > f.dist[best] {
                                best = i;
                            }
                        }
                        entropy += h;
                        hits += (best == sender) as usize;
                    }
                }
            }
        }
    }
    let rate = if cover {
        p.lambda_payload + p.lambda_loop
    } else {
        opts.real_rate
    };
    let pass = (0..n)
        .filter(|c| *c != burst_client)
        .filter(|c| {
            let (d, crit) = ks(&sends[*c], rate);
            d <= crit
        })
        .count() as f64
        / (n - 1) as f64;
    let (d_burst, crit_burst) = ks(&sends[burst_client], rate);
    let k = targets.max(1);
    EvalReport {
        clients: n,
        targets,
        entropy_bits: entropy / k as f64,
        max_entropy_bits: (n as f64).log2(),
        top1_accuracy: hits as f64 / k as f64,
        top1_ci95: wilson(hits, targets),
        chance: 1.0 / n as f64,
        ks_pass_share: pass,
        ks_burst: [d_burst, crit_burst],
        same_size: packet_sizes_equal(),
        client_send_pps: if cover {
            p.lambda_payload + p.lambda_loop
        } else {
            0.0
        },
        mean_latency_s: latency / k as f64,
        simulated_s: duration.min(heap.peek().map_or(duration, |Reverse((At(t), _))| *t)),
    }
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
            targets: 400,
            ..EvalOptions::default()
        };
        let mixed = run(&base);
        let exposed = run(&EvalOptions {
            dangerous_no_cover: true,
            dangerous_zero_delay: true,
            ..base.clone()
        });
        assert!(mixed.same_size);
        assert_eq!(mixed.targets, 400);
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
    }
}
