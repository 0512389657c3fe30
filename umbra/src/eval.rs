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
//! id is the pair's), which must be the client that injected the packet.
//! **Targets** are of two kinds, each attacked and reported on its own: a
//! `message` target is the first copy of a message queued after the
//! warm-up, arriving at its dropbox gateway (the client reports a message
//! `Sent` at the instant that copy leaves); a `store` target is any packet
//! sent after the warm-up that stores user data (first copies,
//! retransmissions, receipts). Fetches and cover are traffic around them.
//!
//! **The attack** is the exponential-mixing one, with a prior for the
//! targets it is given. At each mix an output at time t is attributed to
//! each earlier input i with weight μ·e^(−μ(t−t_i)) and to the mix's own
//! loop cover with weight λ_M; an input from a client (through its entry
//! gateway, which adds no delay) carries the chance that it is a target of
//! that client, a packet a gateway sends of its own (a SURB reply) carries
//! none, a packet from a mix carries the mix's attribution of it. Two
//! attacks run side by side, one per kind of target:
//! - `message`: the first copy of each message;
//! - `store`: every packet that stores user data in a dropbox (messages,
//!   retransmissions, receipts).
//!
//! The chance that a client packet is a target is not uniform (a message
//! leaves on the first payload tick after it was queued, so a packet after
//! a long silence of its sender is likelier to carry one: the inspection
//! paradox). The adversary learns it per kind from what it sees of the
//! sender, as it could by running the network itself ([`Learned`]).
//!
//! Because the weights are exponential, each mix keeps one exponentially
//! decayed vector over senders per attack, updated per event: the attack is
//! exact and runs in O(events × clients). There is no shortcut at zero
//! delay: `dangerous_zero_delay` runs the same attack with a 1 µs mean. The
//! guess for a target is the attribution of the packet arriving at its
//! dropbox gateway.
//!
//! **The discounting adversary** (`discount`) keeps, per mix, the expected
//! make-up of what the mix holds instead of a decayed sum: an input adds
//! its attribution, an output (every held packet is equally likely to be
//! the next to leave, exponential delays being memoryless) is attributed
//! as the contents and takes that share away. So outputs already
//! attributed are discounted, and the count of packets that left is used.
//! It also labels mix loops by their links (ordinary traffic only goes
//! from layer l to l + 1): their first hops leave no share behind, their
//! last hops take a non-target packet away.
//!
//! **Calibration.** If the posteriors p are calibrated, the mean of
//! p(true sender) equals the mean of Σp² (and the mean top probability
//! equals the top-1 accuracy). Every run reports both per kind and the
//! difference in standard errors; a run beyond [`CALIBRATION_Z`] is not
//! calibrated and `umbra eval anonymity` fails.
//!
//! **The long-term attack.** A dropbox gateway sees which stores share a
//! box; with a global observer it combines the posteriors of K of them
//! (Σ ln p over senders, as independent evidence). For each trial a random
//! sender with at least K targets and K different ones of its targets'
//! posteriors; reported as the share of trials that name the sender, with a
//! Wilson interval over the trials and one that counts senders (a sender's
//! trials share its stores), for each K. Where fewer than ten senders have K targets
//! (`pool` is the mean), draws repeat posteriors and the figure says so
//! (`independent: false`): the curve there is the pool's mean evidence,
//! which may understate an adversary with K truly different messages.
//!
//! **Determinism.** The seed decides the topology, the clients' and nodes'
//! choices and the workload; [`crate::sim`]'s module doc says where that
//! ends. A test checks that a seed replays a run exactly.
//!
//! **Cost.** The attack is cheap; the real packets are not: about 0.7 ms of
//! CPU to build one (a fragment also builds its SURB-ack, a fetch four SURBs)
//! and 0.13 ms per hop to peel, about 25 ms per simulated client-second at
//! the default rates. The default run (100 clients, 5000 targets, about
//! 113 simulated seconds) takes 3–5 minutes in a release build (168 s on
//! an idle two-core machine, 250–280 s on a shared one).

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
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
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
    /// Numbers K of linked messages for the long-term attack.
    pub long_term_k: Vec<usize>,
    /// Trials per K of the long-term attack.
    pub long_term_trials: usize,
    /// A stronger adversary: it tracks what each mix holds, takes away
    /// what each output carried (outputs already attributed are
    /// discounted), and labels mix loops by the links they use.
    pub discount: bool,
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
            long_term_k: vec![1, 10, 100, 1000],
            long_term_trials: 1000,
            discount: false,
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
    /// The same, counting clustered targets as fewer observations (see
    /// [`KindReport::top1_ci95_clustered`]).
    pub top1_ci95_clustered: [f64; 2],
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
    /// The single-packet attack per kind of target (`message`: the first
    /// copy of each message; `store`: every packet that stores user data in
    /// a dropbox: messages, retransmissions and receipts), each with its
    /// calibration.
    pub kinds: Vec<KindReport>,
    /// Every kind's posteriors are calibrated (see [`KindReport::calibrated`]).
    pub calibrated: bool,
    /// The long-term attack: a dropbox gateway that links the stores of one
    /// sender, with a global observer, combines K of them (K different
    /// ones of one sender, whichever boxes they went to: as if one gateway
    /// linked every box of a pair).
    pub long_term: Vec<LongTerm>,
    /// The same, K different stores of one box (kind `store_box`): what one
    /// gateway links in the running system. Only the K some box reaches.
    pub long_term_box: Vec<LongTerm>,
    /// The most stores one box received in the run (targets or not).
    pub largest_box: usize,
    /// The adversary: `exponential` (each input weighted by the chance it
    /// is still held) or `discount` (what each mix holds, less what left).
    pub adversary: &'static str,
}

/// The attack on one kind of target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindReport {
    /// `message` or `store`.
    pub kind: &'static str,
    /// Targets of this kind attacked.
    pub targets: usize,
    /// Mean entropy of the posterior over senders, bits.
    pub entropy_bits: f64,
    /// Share of targets whose most likely sender was the true one.
    pub top1_accuracy: f64,
    /// Wilson 95 % interval of the top-1 accuracy, as if the targets were
    /// independent.
    pub top1_ci95: [f64; 2],
    /// The interval when targets are clustered: targets of one sender,
    /// and targets within [`CLUSTER_S`] of each other (they crossed the
    /// same mixes at nearly the same time), are not independent. The wider
    /// of the two intervals taken at their effective sample sizes (the
    /// design effect, as for the long-term attack's `ci95_senders`).
    pub top1_ci95_clustered: [f64; 2],
    /// Mean posterior probability of the true sender.
    pub mean_p_true: f64,
    /// Mean Σp² of the posteriors: what `mean_p_true` is if they are calibrated.
    pub mean_sum_p2: f64,
    /// Mean probability of the top guess: what `top1_accuracy` is if calibrated.
    pub mean_p_max: f64,
    /// (mean p_true − mean Σp²) over its standard error.
    pub calibration_z: f64,
    /// (mean p_true − mean Σp²) / mean Σp².
    pub calibration_rel: f64,
    /// |mean p_true − mean Σp²| ≤ [`CALIBRATION_Z`] standard errors +
    /// [`CALIBRATION_REL`] × mean Σp².
    pub calibrated: bool,
}

/// The long-term attack at one K.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongTerm {
    /// `message` or `store`: whose posteriors were combined.
    pub kind: &'static str,
    /// Linked stores combined.
    pub k: usize,
    /// Share of trials whose combined guess named the sender.
    pub identified: f64,
    /// Wilson 95 % interval over the trials, as if they were independent.
    pub ci95: [f64; 2],
    /// 95 % interval that counts senders, not trials: the trials of one
    /// sender share its stores (near its pool, nearly all of them), so the
    /// Wilson interval is taken at the effective sample size the spread
    /// between senders gives (the design effect), at most the trials.
    pub ci95_senders: [f64; 2],
    /// Trials.
    pub trials: usize,
    /// Mean number of targets of a sender to draw from (see `independent`
    /// for what a K above most senders' pools does).
    pub pool: f64,
    /// The K stores of a trial are K different ones (drawn without
    /// replacement, from the senders that have at least K); false: too
    /// few senders had K, and draws repeat posteriors.
    pub independent: bool,
    /// Senders the trials were drawn from.
    pub senders: usize,
}

/// Fewest senders with K targets each for a long-term figure drawn
/// without replacement.
const MIN_INDEPENDENT_SENDERS: usize = 10;

/// Boxes per period and direction the ground truth knows (a sender moves
/// to the next after `BOX_STORES` acked stores): 64 × 300 stores an hour
/// is more than any pair here sends. A store beyond them is `mismatched`.
const BOX_INDICES: u32 = 64;

/// How far mean p(true sender) may stray from mean Σp² before a run is
/// called uncalibrated: 3 standard errors plus [`CALIBRATION_REL`] of mean
/// Σp² (with thousands of targets the standard error alone would flag
/// differences of half a per cent that change no figure).
pub const CALIBRATION_Z: f64 = 3.0;
/// The relative part of the calibration tolerance.
pub const CALIBRATION_REL: f64 = 0.02;

impl EvalReport {
    /// Whether the run may be believed: its attack is calibrated.
    pub fn ok(&self) -> bool {
        self.calibrated
    }
}

/// Contacts (nearly) every client has.
const CONTACTS: usize = 3;
/// Messages client 0 queues at once, after the warm-up.
const BURST: usize = 50;
/// The attack catches up with the simulation every this many virtual seconds.
const CHECK_S: f64 = 0.5;

/// Targets this close in time count as one cluster for
/// [`KindReport::top1_ci95_clustered`]: about ten mean delays at the
/// default, so that what one mix held is shared within a block, rarely
/// across.
pub const CLUSTER_S: f64 = 10.0;
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
    /// A packet arrives at mix `mix`; `loop_ret`: it came on a link only
    /// mix loops use, and is the last hop of one with this probability.
    MixIn {
        mix: usize,
        key: u64,
        loop_ret: Option<f64>,
    },
    /// A packet leaves mix `mix`; `loop_ret` as for `MixIn`.
    MixOut {
        mix: usize,
        key: u64,
        loop_ret: Option<f64>,
    },
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
    /// The dropbox: what its gateway links.
    dropbox: [u8; 32],
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

/// The two priors an attack may put on a client's packet being a target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prior {
    /// Targets are the first copies of messages: a message rides the first
    /// payload tick after it was queued, so a packet after a long silence of
    /// its sender is more likely one (the inspection paradox).
    Message = 0,
    /// Targets are every store: messages, retransmissions, receipts.
    Store = 1,
}

const PRIORS: [Prior; 2] = [Prior::Message, Prior::Store];

impl Prior {
    fn name(self) -> &'static str {
        match self {
            Prior::Message => "message",
            Prior::Store => "store",
        }
    }
}

/// One exponential-mixing attack: a decayed vector per mix, and the
/// attribution of each packet on a link from a mix. Index `n` of a vector is
/// the mass of "not a target" (loops, replies, cover).
struct Attack {
    mixes: Vec<Mix>,
    pending: HashMap<u64, Vec<f64>>,
    /// The stronger adversary (`EvalOptions::discount`): a mix's vector is
    /// the expected make-up of what it holds, not a decayed sum.
    discount: bool,
}

impl Attack {
    fn mix_in(&mut self, mix: usize, t: f64, mu: f64, dist: &[f64]) {
        let m = &mut self.mixes[mix];
        if !self.discount {
            m.decay(t, mu);
        }
        for (s, x) in m.sum.iter_mut().zip(dist) {
            *s += x;
        }
    }

    fn mix_out(&mut self, mix: usize, t: f64, key: u64, mu: f64, lambda_m: f64, n: usize) {
        let m = &mut self.mixes[mix];
        let dist = if self.discount {
            take_one(m, n)
        } else {
            output_dist(m, t, mu, lambda_m, n)
        };
        self.pending.insert(key, dist);
    }
}

/// The stronger adversary's output of a mix on an ordinary link: with
/// exponential delays every packet held is equally likely to be the next
/// to leave (memorylessness), so the output is distributed as the mix's
/// expected contents `m.sum`, and takes that share away from them. The
/// mix's own loops leave on links of their own and are labelled, so they
/// take no weight here.
fn take_one(m: &mut Mix, n: usize) -> Vec<f64> {
    let total: f64 = m.sum.iter().sum();
    if total <= 1e-9 {
        return one_hot(n, n);
    }
    let d: Vec<f64> = m.sum.iter().map(|x| x / total).collect();
    let take = total.min(1.0);
    for (s, x) in m.sum.iter_mut().zip(&d) {
        *s = (*s - x * take).max(0.0);
    }
    d
}

/// How long after a client packet left the adversary waits before counting
/// what it turned out to be, at least: by then it has surely arrived.
const LABEL_LAG_US: u64 = 5_000_000;

/// The wait for a mean per-hop delay of `mean_s`: 12.5 means, which three
/// exponential hops outlast with probability 3 × 10⁻⁴ (5 s at 400 ms, 10 s
/// at 800 ms), so the learned target rate is not biased low by stragglers.
fn label_lag_us(mean_s: f64) -> u64 {
    LABEL_LAG_US.max((12.5 * mean_s * 1e6) as u64)
}

/// The chance (up to a constant) that a target queued since the client's
/// previous payload tick rides its packet at `t`, given its earlier send
/// times `prev` (oldest first): each packet is a payload tick with
/// probability `q` = λ_P / (λ_P + λ_L), independently (Poisson splitting);
/// targets are queued at rate `r`.
fn message_prior(prev: &[f64], t: f64, q: f64, r: f64) -> f64 {
    let (mut w, mut further) = (0.0, 1.0);
    for &tp in prev.iter().rev() {
        w += further * q * (1.0 - (-r * (t - tp)).exp());
        further *= 1.0 - q;
        if further < 1e-9 {
            break;
        }
    }
    // No payload tick seen before: a target surely waits.
    q * (w + further)
}

/// The rate of each kind of target per client, learned as the adversary
/// goes (it could as well run the network itself): the share of client
/// packets that turned out to be targets, counted only [`label_lag_us`]
/// after they left, so the past only.
struct Learned {
    /// How long after a packet left it is counted, µs.
    lag_us: u64,
    all_total: u64,
    all_hits: [u64; 2],
    /// Client packets not yet counted: (sent µs, origin).
    waiting: VecDeque<(u64, (usize, u64))>,
    /// What packets that arrived turned out to be, by origin, per prior.
    labels: HashMap<(usize, u64), [bool; 2]>,
}

impl Learned {
    fn new(lag_us: u64) -> Self {
        Learned {
            lag_us,
            all_total: 0,
            all_hits: [0; 2],
            waiting: VecDeque::new(),
            labels: HashMap::new(),
        }
    }

    /// Counts every packet sent before `until_us` − the lag.
    fn mature(&mut self, until_us: u64) {
        while let Some(&(at, origin)) = self.waiting.front() {
            if at + self.lag_us > until_us {
                break;
            }
            self.waiting.pop_front();
            let label = self.labels.remove(&origin).unwrap_or_default();
            self.all_total += 1;
            for (a, l) in label.iter().enumerate() {
                self.all_hits[a] += u64::from(*l);
            }
        }
    }

    /// Targets of prior `a` per second of a client sending `pps` packets/s;
    /// `fallback` until 1000 packets are counted.
    fn rate(&self, a: usize, pps: f64, fallback: f64) -> f64 {
        if self.all_total < 1000 {
            return fallback;
        }
        self.all_hits[a] as f64 / self.all_total as f64 * pps
    }
}

/// What one kind of target gave the attack.
#[derive(Default)]
struct Tally {
    targets: usize,
    hits: usize,
    entropy: f64,
    p_true: f64,
    sum_p2: f64,
    p_max: f64,
    /// Σ d and Σ d², d = p_true − Σp².
    d: f64,
    d2: f64,
    /// The posterior of each target, by true sender (for the long-term attack).
    by_sender: Vec<Vec<Vec<f32>>>,
    /// (targets, hits) per sender and per [`CLUSTER_S`] block of time.
    per_sender: Vec<(usize, usize)>,
    per_block: BTreeMap<u64, (usize, usize)>,
    /// `store` targets by dropbox: (sender, indices into its `by_sender`).
    /// Ordered, so that a seed replays the trials.
    by_box: BTreeMap<[u8; 32], (usize, Vec<usize>)>,
}

impl Tally {
    /// Scores the attack's distribution `dist` (n clients + noise) for a
    /// target of `sender` arriving at `at_us`; false if it named no client
    /// at all.
    fn score(&mut self, dist: &[f64], sender: usize, keep: bool, at_us: u64) -> bool {
        let n = dist.len() - 1;
        let total: f64 = dist[..n].iter().sum();
        if total <= 0.0 || !total.is_finite() {
            return false;
        }
        let (mut best, mut h, mut p2) = (0usize, 0.0f64, 0.0f64);
        for (i, x) in dist[..n].iter().enumerate() {
            let q = x / total;
            if q > 0.0 {
                h -= q * q.log2();
            }
            p2 += q * q;
            if *x > dist[best] {
                best = i;
            }
        }
        let p_true = dist[sender] / total;
        self.targets += 1;
        self.entropy += h;
        let hit = usize::from(best == sender);
        self.hits += hit;
        if self.per_sender.len() < n {
            self.per_sender.resize(n, (0, 0));
        }
        self.per_sender[sender].0 += 1;
        self.per_sender[sender].1 += hit;
        let block = self
            .per_block
            .entry(at_us / (CLUSTER_S * 1e6) as u64)
            .or_default();
        block.0 += 1;
        block.1 += hit;
        self.p_true += p_true;
        self.sum_p2 += p2;
        self.p_max += dist[best] / total;
        let d = p_true - p2;
        self.d += d;
        self.d2 += d * d;
        if keep {
            if self.by_sender.len() < n {
                self.by_sender.resize(n, Vec::new());
            }
            self.by_sender[sender].push(dist[..n].iter().map(|x| (x / total) as f32).collect());
        }
        true
    }

    fn report(&self, kind: &'static str) -> KindReport {
        let k = self.targets.max(1) as f64;
        let mean_d = self.d / k;
        let var = (self.d2 / k - mean_d * mean_d).max(0.0);
        let se = (var / k).sqrt();
        let z = if se > 0.0 { mean_d / se } else { 0.0 };
        KindReport {
            kind,
            targets: self.targets,
            entropy_bits: self.entropy / k,
            top1_accuracy: self.hits as f64 / k,
            top1_ci95: wilson(self.hits, self.targets),
            top1_ci95_clustered: {
                let by_sender = clustered_interval(&self.per_sender);
                let blocks: Vec<(usize, usize)> = self.per_block.values().copied().collect();
                let by_time = clustered_interval(&blocks);
                [by_sender[0].min(by_time[0]), by_sender[1].max(by_time[1])]
            },
            mean_p_true: self.p_true / k,
            mean_sum_p2: self.sum_p2 / k,
            mean_p_max: self.p_max / k,
            calibration_z: z,
            calibration_rel: if self.sum_p2 > 0.0 {
                self.d / self.sum_p2
            } else {
                0.0
            },
            calibrated: mean_d.abs() <= CALIBRATION_Z * se + CALIBRATION_REL * self.sum_p2 / k,
        }
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
    /// λ_P / (λ_P + λ_L): the share of a client's packets that are payload
    /// ticks; 1 without cover.
    payload_share: f64,
    /// λ_P + λ_L.
    client_pps: f64,
    real_rate: f64,
    warmup_us: u64,
    learned: Learned,
    targets_wanted: usize,
    mix_index: HashMap<NodeId, usize>,
    /// Each mix's layer (1–3), by index.
    mix_layer: Vec<u8>,
    /// Mixes in layers 1 and 3.
    layer_1_3: (usize, usize),
    /// Packets seen on a link only mix loops use, not yet at their mix:
    /// the chance each is a loop's last hop.
    loop_in: HashMap<u64, f64>,
    /// Dropbox id → the client writing to it.
    box_owner: HashMap<[u8; 32], usize>,
    // ---- what the observer records ----
    steps: BinaryHeap<Reverse<Timed>>,
    seq: u64,
    /// Packets clients injected, by key, not yet seen at their first mix:
    /// the client and each prior's weight.
    injected: HashMap<u64, (usize, [f64; 2])>,
    /// Ground truth: a packet in flight → (client that injected it, when).
    origin: HashMap<u64, (usize, u64)>,
    /// Each client's send times, seconds.
    sends: Vec<Vec<f64>>,
    frame_lens: BTreeSet<usize>,
    packet_lens: BTreeSet<usize>,
    // ---- the attacks, one per prior ----
    attacks: Vec<Attack>,
    tallies: Vec<Tally>,
    latency: f64,
    /// Stores whose dropbox named another client than the one that sent them.
    mismatched: u64,
    /// Stores each dropbox received (all of them, targets or not).
    box_stores: HashMap<[u8; 32], usize>,
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

    /// A link from mix `a` to mix `b` that ordinary traffic never uses
    /// (only layer l → l + 1 does): a mix loop's first or last hop. The
    /// chance it is the last: certain into layers 2 and 3 from layer 3; from
    /// layer 3 into layer 1 also the first hops of layer 3's own loops, as
    /// often as layer 1's loops return (λ_M each); from layers 1 and 2,
    /// always a first hop.
    fn loop_link(&self, a: usize, b: usize) -> Option<f64> {
        let (la, lb) = (self.mix_layer[a], self.mix_layer[b]);
        if lb == la + 1 {
            return None;
        }
        let (n1, n3) = self.layer_1_3;
        Some(match (la, lb) {
            (3, 1) => n1 as f64 / (n1 + n3).max(1) as f64,
            (3, _) => 1.0,
            _ => 0.0,
        })
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
                let t = depart.as_secs_f64();
                let mut w = [1.0; 2];
                if self.payload_share < 1.0 {
                    for (a, fallback) in [self.real_rate, 2.0 * self.real_rate].iter().enumerate() {
                        let r = self.learned.rate(a, self.client_pps, *fallback);
                        w[a] = message_prior(&self.sends[c.0], t, self.payload_share, r);
                    }
                }
                self.sends[c.0].push(t);
                if let Some(p) = inject_packet(frame) {
                    let k = key(p);
                    self.injected.insert(k, (c.0, w));
                    self.origin.insert(k, (c.0, us(depart)));
                    self.learned
                        .waiting
                        .push_back((us(depart), (c.0, us(depart))));
                }
            }
            Observed::Link {
                from: Endpoint::Node(node),
                to,
                depart,
                what: OnLink::Packet { packet },
            } => {
                self.packet_lens.insert(packet.len());
                if let Some(&mix) = self.mix_index.get(&node) {
                    let key = key(packet);
                    let loop_ret = match to {
                        Endpoint::Node(y) => {
                            self.mix_index.get(&y).and_then(|&j| self.loop_link(mix, j))
                        }
                        Endpoint::Client(_) => None,
                    };
                    if let Some(p) = loop_ret {
                        self.loop_in.insert(key, p);
                    }
                    self.push(depart, Step::MixOut { mix, key, loop_ret });
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
                    let loop_ret = self.loop_in.remove(&k);
                    self.push(
                        at,
                        Step::MixIn {
                            mix,
                            key: k,
                            loop_ret,
                        },
                    );
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
                                dropbox,
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

    /// Runs the attacks over everything observed up to `until_us`.
    /// `first_copies` maps (client, send time) to the message whose first
    /// copy left then.
    fn drain(
        &mut self,
        until_us: u64,
        first_copies: &HashMap<(usize, u64), usize>,
        msgs: &[Message],
    ) {
        let (n, mu, lambda_m) = (self.n, self.mu, self.lambda_m);
        self.learned.mature(until_us);
        while self.steps.peek().is_some_and(|Reverse(s)| s.at <= until_us) {
            let Some(Reverse(Timed { at, step, .. })) = self.steps.pop() else {
                break;
            };
            let t = at as f64 / 1e6;
            match step {
                Step::MixIn { mix, key, loop_ret } => {
                    let from_client = self.injected.remove(&key);
                    for (a, attack) in self.attacks.iter_mut().enumerate() {
                        if attack.discount
                            && let Some(p) = loop_ret
                        {
                            // A mix loop: no target; held unless it ends here.
                            attack.pending.remove(&key);
                            let mut d = vec![0.0; n + 1];
                            d[n] = 1.0 - p;
                            attack.mix_in(mix, t, mu, &d);
                            continue;
                        }
                        let dist = if let Some((c, w)) = from_client {
                            let mut d = vec![0.0; n + 1];
                            d[c] = w[a];
                            d[n] = 1.0 - w[a];
                            d
                        } else if let Some(d) = attack.pending.remove(&key) {
                            d
                        } else {
                            // Sent by a gateway of its own: a SURB reply.
                            one_hot(n, n)
                        };
                        attack.mix_in(mix, t, mu, &dist);
                    }
                }
                Step::MixOut { mix, key, loop_ret } => {
                    for attack in &mut self.attacks {
                        match loop_ret {
                            Some(p) if attack.discount => {
                                // A mix loop leaving: a returning one was
                                // held here; neither is a target.
                                let x = &mut attack.mixes[mix].sum[n];
                                *x = (*x - p).max(0.0);
                                attack.pending.insert(key, one_hot(n, n));
                            }
                            _ => attack.mix_out(mix, t, key, mu, lambda_m, n),
                        }
                    }
                }
                Step::AtGateway { key, store } => {
                    let dists: Vec<Option<Vec<f64>>> = self
                        .attacks
                        .iter_mut()
                        .map(|a| a.pending.remove(&key))
                        .collect();
                    let Some(store) = store else {
                        continue;
                    };
                    let Some((sender, sent_us)) = store.origin else {
                        continue;
                    };
                    if store.owner != Some(sender) {
                        self.mismatched += 1;
                        continue;
                    }
                    *self.box_stores.entry(store.dropbox).or_default() += 1;
                    let first = first_copies.contains_key(&(sender, sent_us));
                    self.learned.labels.insert((sender, sent_us), [first, true]);
                    let done = self.tallies[Prior::Message as usize].targets >= self.targets_wanted;
                    if sent_us > self.warmup_us
                        && !done
                        && let Some(d) = &dists[Prior::Store as usize]
                    {
                        let tally = &mut self.tallies[Prior::Store as usize];
                        if tally.score(d, sender, true, at) {
                            let i = tally.by_sender[sender].len() - 1;
                            let entry = tally
                                .by_box
                                .entry(store.dropbox)
                                .or_insert((sender, Vec::new()));
                            entry.1.push(i);
                        }
                    }
                    let Some(msg) = first_copies.get(&(sender, sent_us)).map(|i| &msgs[*i]) else {
                        continue; // a receipt or a retransmission
                    };
                    if !msg.target || done {
                        continue;
                    }
                    if let Some(d) = &dists[Prior::Message as usize]
                        && self.tallies[Prior::Message as usize].score(d, sender, true, at)
                    {
                        self.latency += t - msg.queued_us as f64 / 1e6;
                    }
                }
            }
        }
    }
}

/// The long-term attack: for each trial a random sender with at least K
/// targets and K different ones of its targets' posteriors (drawn with
/// replacement from every sender when fewer than
/// [`MIN_INDEPENDENT_SENDERS`] have K), combined as independent evidence
/// (Σ ln p); identified if the true sender scores highest.
fn long_term(
    tally: &Tally,
    kind: &'static str,
    ks: &[usize],
    trials: usize,
    rng: &mut ChaCha20Rng,
) -> Vec<LongTerm> {
    let senders: Vec<usize> = (0..tally.by_sender.len())
        .filter(|s| !tally.by_sender[*s].is_empty())
        .collect();
    if senders.is_empty() || trials == 0 {
        return Vec::new();
    }
    let pool = senders
        .iter()
        .map(|s| tally.by_sender[*s].len())
        .sum::<usize>() as f64
        / senders.len() as f64;
    let n = tally.by_sender.len();
    ks.iter()
        .map(|&k| {
            let mut score = vec![0.0f64; n];
            let rich: Vec<usize> = senders
                .iter()
                .copied()
                .filter(|s| tally.by_sender[*s].len() >= k)
                .collect();
            let independent = rich.len() >= MIN_INDEPENDENT_SENDERS;
            let from = if independent { &rich } else { &senders };
            let mut order: Vec<usize> = Vec::new();
            // Per sender: (trials, hits).
            let mut per = vec![(0usize, 0usize); n];
            for _ in 0..trials {
                let s = from[rng.random_range(0..from.len())];
                let posts = &tally.by_sender[s];
                score.iter_mut().for_each(|x| *x = 0.0);
                if independent {
                    order.clear();
                    order.extend(0..posts.len());
                }
                for i in 0..k {
                    let j = if independent {
                        // A partial Fisher–Yates shuffle: K distinct stores.
                        let j = rng.random_range(i..posts.len());
                        order.swap(i, j);
                        order[i]
                    } else {
                        rng.random_range(0..posts.len())
                    };
                    add_evidence(&mut score, &posts[j]);
                }
                per[s].0 += 1;
                per[s].1 += usize::from(most_likely(&score) == s);
            }
            let hits: usize = per.iter().map(|(_, h)| h).sum();
            LongTerm {
                kind,
                k,
                identified: hits as f64 / trials as f64,
                ci95: wilson(hits, trials),
                ci95_senders: clustered_interval(&per),
                trials,
                pool,
                independent,
                senders: from.len(),
            }
        })
        .collect()
}

/// Adds one target's posterior to a combined score, as independent
/// evidence (Σ ln p).
fn add_evidence(score: &mut [f64], posterior: &[f32]) {
    for (x, q) in score.iter_mut().zip(posterior) {
        *x += f64::from(q.max(1e-30)).ln();
    }
}

/// The sender a combined score names.
fn most_likely(score: &[f64]) -> usize {
    (0..score.len())
        .max_by(|a, b| score[*a].total_cmp(&score[*b]))
        .unwrap_or(0)
}

/// The long-term attack as the running system allows it: each trial
/// combines K different `store` targets *of one dropbox*, what its gateway
/// links (a sender moves to a new box after
/// [`BOX_STORES`](protocol::dropbox::BOX_STORES) acked stores). A K that no
/// box reaches is left out: no gateway links that many. The interval
/// counts senders, as [`long_term`]'s does.
fn long_term_in_boxes(
    tally: &Tally,
    ks: &[usize],
    trials: usize,
    rng: &mut ChaCha20Rng,
) -> Vec<LongTerm> {
    let n = tally.by_sender.len();
    let boxes: Vec<(usize, &[usize])> = tally
        .by_box
        .values()
        .map(|(s, ix)| (*s, ix.as_slice()))
        .collect();
    ks.iter()
        .filter_map(|&k| {
            let eligible: Vec<usize> = (0..boxes.len())
                .filter(|b| k > 0 && boxes[*b].1.len() >= k)
                .collect();
            if eligible.is_empty() || trials == 0 {
                return None;
            }
            let pool = eligible.iter().map(|b| boxes[*b].1.len()).sum::<usize>() as f64
                / eligible.len() as f64;
            let mut score = vec![0.0f64; n];
            let mut order: Vec<usize> = Vec::new();
            let mut per = vec![(0usize, 0usize); n];
            for _ in 0..trials {
                let (s, ix) = boxes[eligible[rng.random_range(0..eligible.len())]];
                score.iter_mut().for_each(|x| *x = 0.0);
                order.clear();
                order.extend(0..ix.len());
                for i in 0..k {
                    let j = rng.random_range(i..ix.len());
                    order.swap(i, j);
                    add_evidence(&mut score, &tally.by_sender[s][ix[order[i]]]);
                }
                per[s].0 += 1;
                per[s].1 += usize::from(most_likely(&score) == s);
            }
            let hits: usize = per.iter().map(|(_, h)| h).sum();
            let senders: BTreeSet<usize> = eligible.iter().map(|b| boxes[*b].0).collect();
            Some(LongTerm {
                kind: "store_box",
                k,
                identified: hits as f64 / trials as f64,
                ci95: wilson(hits, trials),
                ci95_senders: clustered_interval(&per),
                trials,
                pool,
                independent: true,
                senders: senders.len(),
            })
        })
        .collect()
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
    // No shortcut at zero delay: the same attack, with a mean of 1 µs (an
    // output is then attributed to the input of the same instant).
    let mu = 1.0 / mean.max(1e-6);
    let lambda_m = if cover { p.lambda_mix_loop } else { 0.0 };
    // Long enough for the mixes to fill and for the adversary to learn the
    // targets' rates from 5 s of traffic.
    let lag_us = label_lag_us(mean);
    let warmup = (10.0 * mean.max(0.01) + 2.0).max(lag_us as f64 / 1e6 + 5.0);
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
            let (pa, pb) = (sim.persona(clients[a]), sim.persona(clients[b]));
            let Some(pair) = sim.pair_secret(pa, pb) else {
                continue;
            };
            for period in first_period..=last_period {
                // Each of the period's boxes a sender may move on to.
                for index in 0..BOX_INDICES {
                    let slot = protocol::dropbox::slot(period, index);
                    box_owner.insert(pair.dropbox(&pa.id.0, &pb.id.0, slot).id, a);
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
    let mix_layer: Vec<u8> = mix_ids
        .iter()
        .map(|id| sim.topology().node(id).map_or(0, |x| x.layer))
        .collect();
    let eval = Rc::new(RefCell::new(Eval {
        n,
        mu,
        lambda_m,
        payload_share: if cover {
            p.lambda_payload / (p.lambda_payload + p.lambda_loop)
        } else {
            1.0
        },
        client_pps: p.lambda_payload + p.lambda_loop,
        real_rate: opts.real_rate,
        warmup_us: (warmup * 1e6) as u64,
        learned: Learned::new(lag_us),
        targets_wanted: opts.targets,
        mix_index: mix_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
        layer_1_3: (
            mix_layer.iter().filter(|&&l| l == 1).count(),
            mix_layer.iter().filter(|&&l| l == 3).count(),
        ),
        mix_layer,
        loop_in: HashMap::new(),
        box_owner,
        steps: BinaryHeap::new(),
        seq: 0,
        injected: HashMap::new(),
        origin: HashMap::new(),
        sends: vec![Vec::new(); n],
        frame_lens: BTreeSet::new(),
        packet_lens: BTreeSet::new(),
        attacks: PRIORS
            .iter()
            .map(|_| Attack {
                mixes: (0..mix_ids.len())
                    .map(|_| Mix {
                        sum: vec![0.0; n + 1],
                        t: 0.0,
                    })
                    .collect(),
                pending: HashMap::new(),
                discount: opts.discount,
            })
            .collect(),
        tallies: PRIORS.iter().map(|_| Tally::default()).collect(),
        latency: 0.0,
        mismatched: 0,
        box_stores: HashMap::new(),
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
                if e.tallies[Prior::Message as usize].targets >= opts.targets || t >= duration {
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
    let kinds: Vec<KindReport> = PRIORS
        .iter()
        .map(|p| e.tallies[*p as usize].report(p.name()))
        .collect();
    let mut lt_rng = ChaCha20Rng::seed_from_u64(opts.seed ^ 0x10_4e7e);
    let long_term_curve: Vec<LongTerm> = PRIORS
        .iter()
        .flat_map(|p| {
            long_term(
                &e.tallies[*p as usize],
                p.name(),
                &opts.long_term_k,
                opts.long_term_trials,
                &mut lt_rng,
            )
        })
        .collect();
    let long_term_box = long_term_in_boxes(
        &e.tallies[Prior::Store as usize],
        &opts.long_term_k,
        opts.long_term_trials,
        &mut lt_rng,
    );
    let m = &kinds[Prior::Message as usize];
    let k = m.targets.max(1);
    let same_on_links =
        e.frame_lens.len() <= 1 && e.packet_lens.iter().all(|l| *l == packet::PACKET_SIZE);
    EvalReport {
        clients: n,
        targets: m.targets,
        entropy_bits: m.entropy_bits,
        max_entropy_bits: (n as f64).log2(),
        top1_accuracy: m.top1_accuracy,
        top1_ci95: m.top1_ci95,
        top1_ci95_clustered: m.top1_ci95_clustered,
        chance: 1.0 / n as f64,
        ks_pass_share: pass,
        ks_burst: [d_burst, crit_burst],
        same_size: packet_sizes_equal() && same_on_links,
        client_send_pps: frames as f64 / (n as f64 * simulated_s.max(1e-9)),
        mean_latency_s: e.latency / k as f64,
        simulated_s,
        calibrated: kinds.iter().all(|k| k.calibrated),
        kinds,
        long_term: long_term_curve,
        long_term_box,
        largest_box: e.box_stores.values().copied().max().unwrap_or(0),
        adversary: if opts.discount {
            "discount"
        } else {
            "exponential"
        },
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
    wilson_at(k as f64 / n as f64, n as f64)
}

/// A 95 % interval for the share of hits when trials come in clusters
/// (`per`: trials and hits per cluster): the ratio estimator's variance
/// across clusters gives the effective sample size p(1 − p) / V, and the
/// Wilson interval is taken there. With every cluster all hits or all
/// misses it is one observation per cluster; with every trial a hit or
/// every trial a miss, the number of clusters.
fn clustered_interval(per: &[(usize, usize)]) -> [f64; 2] {
    let used: Vec<(f64, f64)> = per
        .iter()
        .filter(|(t, _)| *t > 0)
        .map(|&(t, h)| (t as f64, h as f64))
        .collect();
    let m = used.len() as f64;
    let total: f64 = used.iter().map(|(t, _)| t).sum();
    if used.is_empty() {
        return [0.0, 1.0];
    }
    let p = used.iter().map(|(_, h)| h).sum::<f64>() / total;
    let n_eff = if m < 2.0 {
        1.0
    } else {
        let v = m / (m - 1.0) * used.iter().map(|(t, h)| (h - p * t).powi(2)).sum::<f64>()
            / (total * total);
        if v > 0.0 {
            (p * (1.0 - p) / v).clamp(1.0, total)
        } else if p > 0.0 && p < 1.0 {
            // Every cluster at exactly p̂: no worse than independent.
            total
        } else {
            m.min(total)
        }
    };
    wilson_at(p, n_eff)
}

/// The Wilson 95 % interval for a share `p` of `n` (not necessarily whole)
/// observations.
fn wilson_at(p: f64, n_f: f64) -> [f64; 2] {
    let z = 1.96f64;
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

    /// 20 clients and 200 targets at the defaults, and the ablation (no
    /// cover and a 1 ms mean delay, through the same attack).
    fn mixed_and_exposed(discount: bool) -> (EvalOptions, EvalReport, EvalReport) {
        let base = EvalOptions {
            clients: 20,
            targets: 200,
            discount,
            ..EvalOptions::default()
        };
        let mixed = run(&base);
        let mut fast = base.params;
        fast.mix_delay_mean_ms = 1;
        let exposed = run(&EvalOptions {
            dangerous_no_cover: true,
            params: fast,
            ..base.clone()
        });
        (base, mixed, exposed)
    }

    #[test]
    fn cover_and_delay_hide_the_sender_and_their_absence_does_not() {
        let (base, mixed, exposed) = mixed_and_exposed(false);
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
        // The attack is calibrated for both kinds of targets, mixed or not.
        assert!(mixed.calibrated, "{:?}", mixed.kinds);
        let stores = &mixed.kinds[Prior::Store as usize];
        assert!(stores.targets > mixed.targets, "{stores:?}");
        let lt = |r: &EvalReport, kind: &str, k: usize| {
            r.long_term
                .iter()
                .find(|l| l.kind == kind && l.k == k)
                .map(|l| l.ci95)
                .unwrap_or([f64::NAN; 2])
        };

        // Without cover, receipts and retransmissions of many clients leave
        // at the same instants: stores are ambiguous, but still calibrated.
        assert!(exposed.calibrated, "{:?}", exposed.kinds);
        assert!(
            lt(&exposed, "message", 1)[0] >= 0.9,
            "{:?}",
            exposed.long_term
        );
        // Linking helps when each store says something: 10 linked stores
        // name the sender more often than one, beyond both intervals.
        assert!(
            lt(&exposed, "store", 10)[0] > lt(&exposed, "store", 1)[1],
            "{:?}",
            exposed.long_term
        );
    }

    #[test]
    fn long_term_trials_combine_different_stores_while_senders_have_enough() {
        // Ten senders, three stores each: two point mildly at their sender,
        // one strongly at the next sender. All three together name the
        // wrong one, so K = 3 different stores never identifies a sender;
        // drawing with replacement would miss the misleading one
        // (2/3)^3 = 30 % of the time.
        let n = 10;
        let mut tally = Tally::default();
        for s in 0..n {
            for misleading in [false, false, true] {
                let mut d = vec![0.0; n + 1];
                if misleading {
                    d.iter_mut().for_each(|x| *x = 0.009 / 8.0);
                    d[s] = 0.001;
                    d[(s + 1) % n] = 0.99;
                } else {
                    d.iter_mut().for_each(|x| *x = 0.7 / 9.0);
                    d[s] = 0.3;
                }
                d[n] = 0.0;
                assert!(tally.score(&d, s, true, 0));
            }
        }
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let curve = long_term(&tally, "store", &[1, 3, 4], 2000, &mut rng);
        let (one, three, four) = (&curve[0], &curve[1], &curve[2]);
        assert!(one.independent && three.independent, "{curve:?}");
        assert_eq!(three.senders, n);
        assert!((one.identified - 2.0 / 3.0).abs() < 0.05, "{one:?}");
        assert_eq!(three.identified, 0.0, "{three:?}");
        // K above every sender's pool: draws repeat, and say so. Only four
        // mild draws name the sender: (2/3)^4 = 20 %.
        assert!(!four.independent, "{four:?}");
        assert!((four.identified - 0.198).abs() < 0.05, "{four:?}");
    }

    #[test]
    fn the_clustered_top1_interval_widens_only_when_hits_cluster() {
        let n = 10;
        let named = |who: usize| {
            let mut d = vec![0.05; n + 1];
            d[who] = 0.5;
            d[n] = 0.0;
            d
        };
        // 10 senders × 100 targets over 100 s: only sender 0 is ever named,
        // so 10 % of 1000 targets but one sender's worth of evidence.
        let mut clustered = Tally::default();
        // The same 10 %, spread evenly over senders and time.
        let mut spread = Tally::default();
        for i in 0..1000usize {
            let (s, at) = (i % n, (i as u64) * 100_000);
            assert!(clustered.score(&named(0), s, false, at));
            let who = if (i / n) % 10 == 0 { s } else { (s + 1) % n };
            assert!(spread.score(&named(who), s, false, at));
        }
        let (c, e) = (clustered.report("message"), spread.report("message"));
        assert_eq!(c.top1_accuracy, 0.1);
        assert_eq!(e.top1_accuracy, 0.1);
        assert_eq!(c.top1_ci95, e.top1_ci95);
        let ten = wilson(1, 10);
        for (got, want) in c.top1_ci95_clustered.iter().zip(ten) {
            assert!((got - want).abs() < 0.02, "{c:?}");
        }
        for (got, want) in e.top1_ci95_clustered.iter().zip(e.top1_ci95) {
            assert!((got - want).abs() < 0.01, "{e:?}");
        }
    }

    #[test]
    fn the_box_curve_combines_stores_of_one_box_only() {
        // One sender, two boxes of three stores: box A's all point mildly
        // at the sender, box B's each strongly at another client. K = 3
        // within A always names the sender, within B never; across both
        // (the sender curve) it usually does not. No box has 4.
        let n = 10;
        let mut tally = Tally::default();
        for (b, strong) in [([0xa; 32], false), ([0xb; 32], true)] {
            for _ in 0..3 {
                let mut d = vec![0.7 / 9.0; n + 1];
                d[0] = 0.3;
                if strong {
                    d.iter_mut().for_each(|x| *x = 0.009 / 8.0);
                    d[0] = 0.001;
                    d[1] = 0.99;
                }
                d[n] = 0.0;
                assert!(tally.score(&d, 0, true, 0));
                let i = tally.by_sender[0].len() - 1;
                tally.by_box.entry(b).or_insert((0, Vec::new())).1.push(i);
            }
        }
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let curve = long_term_in_boxes(&tally, &[3, 4], 4000, &mut rng);
        assert_eq!(curve.len(), 1, "no box holds 4: {curve:?}");
        let three = &curve[0];
        assert_eq!((three.kind, three.k, three.senders), ("store_box", 3, 1));
        // Half the trials draw box A (named), half box B (not).
        assert!((three.identified - 0.5).abs() < 0.05, "{three:?}");
    }

    #[test]
    fn the_sender_interval_counts_senders_when_their_trials_agree() {
        // 10 senders × 100 trials; 3 senders always named, 7 never: 30 %
        // of 1000 trials, but only 10 observations.
        let agree: Vec<(usize, usize)> = (0..10)
            .map(|s| (100, if s < 3 { 100 } else { 0 }))
            .collect();
        let senders = clustered_interval(&agree);
        let as_ten = wilson(3, 10);
        for i in 0..2 {
            assert!(
                (senders[i] - as_ten[i]).abs() < 0.02,
                "{senders:?} {as_ten:?}"
            );
        }
        assert!(senders[1] - senders[0] > 0.45, "{senders:?}");
        // The same 30 % with every sender named 30 times of 100: the
        // trials are as good as independent.
        let spread: Vec<(usize, usize)> = (0..10).map(|_| (100, 30)).collect();
        let trials = wilson(300, 1000);
        let senders = clustered_interval(&spread);
        for i in 0..2 {
            assert!(
                (senders[i] - trials[i]).abs() < 1e-9,
                "{senders:?} {trials:?}"
            );
        }
    }

    #[test]
    fn the_discounting_adversary_takes_away_what_left_and_the_default_does_not() {
        // One mix, two clients: A's packet enters and leaves, then B's
        // enters and leaves, 1 ms apart (μ = 2.5/s: almost no decay). The
        // discounting adversary knows A's packet is gone, so the second
        // output is B's; the decayed sum still counts A nearly in full.
        let (n, mu) = (2, 2.5);
        let second_output = |discount: bool| {
            let mut attack = Attack {
                mixes: vec![Mix {
                    sum: vec![0.0; n + 1],
                    t: 0.0,
                }],
                pending: HashMap::new(),
                discount,
            };
            attack.mix_in(0, 0.000, mu, &one_hot(n, 0));
            attack.mix_out(0, 0.001, 1, mu, 0.0, n);
            assert!(attack.pending[&1][0] > 0.999, "{:?}", attack.pending);
            attack.mix_in(0, 0.002, mu, &one_hot(n, 1));
            attack.mix_out(0, 0.003, 2, mu, 0.0, n);
            attack.pending[&2].clone()
        };
        let discounted = second_output(true);
        let decayed = second_output(false);
        assert!(discounted[1] > 0.999, "{discounted:?}");
        assert!((decayed[1] - 0.5).abs() < 0.01, "{decayed:?}");
        for d in [&discounted, &decayed] {
            assert!((d.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{d:?}");
        }
    }

    #[test]
    fn the_discounting_adversary_is_calibrated_and_wins_the_ablation() {
        let (_, mixed, exposed) = mixed_and_exposed(true);
        assert_eq!(
            (mixed.adversary, exposed.adversary),
            ("discount", "discount")
        );
        assert!(mixed.calibrated, "{:?}", mixed.kinds);
        assert!(exposed.calibrated, "{:?}", exposed.kinds);
        assert!(exposed.top1_accuracy >= 0.9, "{exposed:?}");
        assert!(
            mixed.top1_accuracy < exposed.top1_accuracy - 0.5,
            "{mixed:?}"
        );
    }

    #[test]
    fn the_prior_grows_with_the_silence_before_a_packet() {
        // Only payload ticks (q = 1): the chance a target was queued since
        // the previous packet.
        let w = message_prior(&[0.0], 0.2, 1.0, 0.5);
        assert!((w - (1.0 - (-0.1f64).exp())).abs() < 1e-12);
        // A longer silence, a likelier target.
        let q = 5.0 / 6.0;
        let short = message_prior(&[0.0, 1.0, 1.1], 1.15, q, 0.5);
        let long = message_prior(&[0.0, 1.0, 1.1], 2.1, q, 0.5);
        assert!(long > 5.0 * short, "{short} {long}");
        // Never above the share of payload ticks.
        assert!(message_prior(&[], 1.0, q, 0.5) <= q + 1e-12);
    }

    #[test]
    fn the_label_lag_grows_with_the_delay_so_stragglers_are_rare() {
        // Three exponential hops outlast the lag with probability
        // e^-x (1 + x + x²/2), x = lag / mean: the same 3 × 10⁻⁴ at any mean.
        for mean in [0.0, 0.02, 0.4, 0.8, 2.0] {
            let lag = label_lag_us(mean) as f64 / 1e6;
            assert!(lag >= 5.0, "{mean}: {lag}");
            if mean > 0.0 {
                let x = lag / mean;
                let late = (-x).exp() * (1.0 + x + x * x / 2.0);
                assert!(late < 4e-4, "{mean}: {late}");
            }
        }
        assert_eq!(label_lag_us(0.4), 5_000_000);
        assert_eq!(label_lag_us(0.8), 10_000_000);
    }

    #[test]
    fn the_learned_rate_counts_only_what_has_surely_arrived() {
        let mut l = Learned::new(LABEL_LAG_US);
        for i in 0..2000u64 {
            l.waiting.push_back((i, (0, i)));
            if i % 4 == 0 {
                l.labels.insert((0, i), [true, true]);
            } else if i % 4 == 1 {
                l.labels.insert((0, i), [false, true]);
            }
        }
        // Not yet: they might still be on their way.
        l.mature(LABEL_LAG_US - 1);
        assert_eq!(l.all_total, 0);
        assert_eq!(l.rate(0, 6.0, 0.7), 0.7);
        l.mature(LABEL_LAG_US + 2000);
        assert_eq!(l.all_total, 2000);
        assert!((l.rate(0, 6.0, 0.7) - 1.5).abs() < 1e-9);
        assert!((l.rate(1, 6.0, 0.7) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_calibration_check_tells_honest_posteriors_from_overconfident_ones() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let n = 10;
        let (mut honest, mut overconfident) = (Tally::default(), Tally::default());
        for _ in 0..5000 {
            // A posterior with one favourite at 0.3, the rest even.
            let fav = rng.random_range(0..n);
            let mut d = vec![0.7 / (n - 1) as f64; n + 1];
            d[fav] = 0.3;
            d[n] = 0.0;
            // Honest: the sender drawn from the posterior itself.
            let u: f64 = rng.random();
            let sender = if u < 0.3 {
                fav
            } else {
                (fav + 1 + rng.random_range(0..n - 1)) % n
            };
            assert!(honest.score(&d, sender, false, 0));
            // Overconfident: the favourite is right only at chance.
            let sender = rng.random_range(0..n);
            assert!(overconfident.score(&d, sender, false, 0));
        }
        let (h, o) = (honest.report("h"), overconfident.report("o"));
        assert!(h.calibrated, "{h:?}");
        assert!(!o.calibrated && o.calibration_z < -CALIBRATION_Z, "{o:?}");
        assert!((h.mean_p_max - h.top1_accuracy).abs() < 0.03, "{h:?}");
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
