//! Fault injection for tests and evaluation: a wrapper around the QUIC UDP
//! socket that drops, duplicates, reorders and delays datagrams, driven by a
//! seed, and counts what it did.
//! (tc/netem is not available on every kernel we run on.)
//!
//! Three kinds of loss, applied in this order to each outgoing datagram:
//!
//! 1. a **partition** ([`dangerous_partition`]): every datagram between two
//!    sockets, both ways, is dropped for a window of time;
//! 2. **independent loss** ([`LinkFaults::loss`]): each datagram is dropped
//!    with the same probability, independently of the others;
//! 3. **burst loss** ([`BurstLoss`], a Gilbert–Elliott channel): each link
//!    (a socket and a destination) is in a good or a bad state, each with
//!    its own loss rate, and changes state at random between datagrams.
//!
//! Every drop is counted ([`fault_counts`], [`link_counts`],
//! [`Partition::report`]), so that a test can check the fault it asked for
//! really fired.
//!
//! Never for production: it makes links worse on purpose. It is enabled
//! process-wide with [`dangerous_set_link_faults`] and
//! [`dangerous_set_burst_loss`], which log a warning, and applies to every
//! endpoint bound afterwards.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What to do to outgoing datagrams; each probability is per datagram.
/// The default does nothing (but still counts datagrams, and lets a
/// [`dangerous_partition`] apply).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkFaults {
    /// Drop it (independently of every other datagram).
    pub loss: f64,
    /// Send it twice.
    pub duplicate: f64,
    /// Send it 1–10 ms late, so that datagrams sent after it overtake it.
    pub reorder: f64,
    /// Send it `delay_ms` late (it then also arrives out of order).
    pub delay: f64,
    /// How late a delayed datagram is sent, milliseconds.
    pub delay_ms: u64,
    /// Spread of that lateness: uniform in `delay_ms ± jitter_ms`.
    pub jitter_ms: u64,
    /// Seed of the decisions (each socket derives its own stream from it).
    pub seed: u64,
}

/// Burst loss after Gilbert and Elliott: every link (one socket sending to
/// one destination) is a two-state Markov chain, stepped once per datagram.
/// In the good state a datagram is lost with probability `loss_good`, in
/// the bad state with `loss_bad`; after each datagram a good link turns bad
/// with probability `good_to_bad` and a bad link turns good with
/// `bad_to_good`. A bad spell lasts `1 / bad_to_good` datagrams on
/// average, a good one `1 / good_to_bad`. Each link starts in a state drawn
/// from the chain's stationary distribution, so the loss rate is
/// [`BurstLoss::mean_loss`] from the first datagram on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstLoss {
    /// Probability that a good link turns bad after a datagram.
    pub good_to_bad: f64,
    /// Probability that a bad link turns good after a datagram.
    pub bad_to_good: f64,
    /// Loss rate in the good state.
    pub loss_good: f64,
    /// Loss rate in the bad state.
    pub loss_bad: f64,
}

impl Default for BurstLoss {
    /// A mean loss of 10 %, the figure of the independent-loss test
    /// `loss_10`, but in bursts: bad spells of 4 datagrams on average
    /// (`bad_to_good` = 0.25) that lose every datagram (`loss_bad` = 1),
    /// between good spells of 40 datagrams on average (`good_to_bad` =
    /// 0.025) that lose 1 % (`loss_good`). The link is bad 1/11 of the time:
    /// 10/11 × 0.01 + 1/11 × 1 = 0.1.
    fn default() -> Self {
        Self {
            good_to_bad: 0.025,
            bad_to_good: 0.25,
            loss_good: 0.01,
            loss_bad: 1.0,
        }
    }
}

impl BurstLoss {
    /// Whether every probability is in [0, 1] and the chain can leave
    /// either state (`good_to_bad + bad_to_good > 0`).
    pub fn check(&self) -> Result<(), String> {
        for (name, p) in [
            ("good_to_bad", self.good_to_bad),
            ("bad_to_good", self.bad_to_good),
            ("loss_good", self.loss_good),
            ("loss_bad", self.loss_bad),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1], not {p}"));
            }
        }
        if self.good_to_bad + self.bad_to_good <= 0.0 {
            return Err("good_to_bad + bad_to_good must be above 0".into());
        }
        Ok(())
    }

    /// Share of datagrams a link spends in the bad state, in the long run.
    pub fn bad_share(&self) -> f64 {
        self.good_to_bad / (self.good_to_bad + self.bad_to_good)
    }

    /// Long-run loss rate: `(1 − b) loss_good + b loss_bad` with `b` the
    /// [`bad_share`](Self::bad_share).
    pub fn mean_loss(&self) -> f64 {
        let b = self.bad_share();
        (1.0 - b) * self.loss_good + b * self.loss_bad
    }

    /// Long-run variance of the number of drops per datagram: the share of
    /// `n` datagrams dropped has a standard deviation of about
    /// `sqrt(drop_variance() / n)`. Higher than the binomial `m (1 − m)`
    /// because drops come in bursts: successive datagrams share their
    /// state, whose correlation decays as `λ^k`, `λ = 1 − good_to_bad −
    /// bad_to_good`, which adds `2 (loss_bad − loss_good)² b (1 − b) λ /
    /// (1 − λ)`.
    pub fn drop_variance(&self) -> f64 {
        let m = self.mean_loss();
        let b = self.bad_share();
        let lambda = 1.0 - self.good_to_bad - self.bad_to_good;
        let d = self.loss_bad - self.loss_good;
        let burst = if lambda < 1.0 {
            2.0 * d * d * b * (1.0 - b) * lambda / (1.0 - lambda)
        } else {
            0.0
        };
        (m * (1.0 - m) + burst).max(0.0)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Config {
    faults: LinkFaults,
    burst: Option<BurstLoss>,
}

impl LinkFaults {
    /// The environment variable [`LinkFaults::from_env`] reads.
    pub const ENV: &'static str = "UMBRA_DANGEROUS_LINK_FAULTS";

    /// Parses `key=value` pairs separated by commas: `loss`, `duplicate`,
    /// `reorder` and `delay` (probabilities), `delay_ms`, `jitter_ms` and
    /// `seed`. `latency_ms=D` is shorthand for `delay=1,delay_ms=D`: every
    /// datagram late, as on a long path (with `jitter_ms`, a varying one).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let prob = |v: &str| -> Result<f64, String> {
                v.parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("{k} = {v:?} is not a probability"))
            };
            let int = |v: &str| -> Result<u64, String> {
                v.parse::<u64>()
                    .map_err(|_| format!("{k} = {v:?} is not a whole number"))
            };
            match k {
                "loss" => f.loss = prob(v)?,
                "duplicate" => f.duplicate = prob(v)?,
                "reorder" => f.reorder = prob(v)?,
                "delay" => f.delay = prob(v)?,
                "delay_ms" => f.delay_ms = int(v)?,
                "latency_ms" => {
                    f.delay = 1.0;
                    f.delay_ms = int(v)?;
                }
                "jitter_ms" => f.jitter_ms = int(v)?,
                "seed" => f.seed = int(v)?,
                _ => return Err(format!("unknown fault {k:?}")),
            }
        }
        if f.loss >= 1.0 {
            return Err("loss must be below 1".into());
        }
        Ok(f)
    }

    /// The faults [`Self::ENV`] asks for, if set: how a test gives a node
    /// process a long, lossy path where the kernel has no netem.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(Self::ENV) {
            Ok(spec) => Self::parse(&spec)
                .map(Some)
                .map_err(|e| format!("{}: {e}", Self::ENV)),
            Err(_) => Ok(None),
        }
    }
}

static LINK_FAULTS: Mutex<Option<LinkFaults>> = Mutex::new(None);
static BURST: Mutex<Option<BurstLoss>> = Mutex::new(None);
static SOCKETS: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies `faults` to every endpoint bound from now on in this process.
/// Evaluation and tests only.
pub fn dangerous_set_link_faults(faults: Option<LinkFaults>) {
    if let Some(f) = &faults {
        tracing::warn!(
            loss = f.loss,
            duplicate = f.duplicate,
            reorder = f.reorder,
            delay = f.delay,
            delay_ms = f.delay_ms,
            jitter_ms = f.jitter_ms,
            "dangerous: injecting link faults"
        );
    }
    *lock(&LINK_FAULTS) = faults;
}

/// Applies burst loss to every endpoint bound from now on in this process,
/// on top of the [`LinkFaults`] set (if none is set, the other faults are
/// off and the seed is 0). Evaluation and tests only.
pub fn dangerous_set_burst_loss(burst: Option<BurstLoss>) {
    if let Some(b) = &burst {
        tracing::warn!(
            good_to_bad = b.good_to_bad,
            bad_to_good = b.bad_to_good,
            loss_good = b.loss_good,
            loss_bad = b.loss_bad,
            mean_loss = b.mean_loss(),
            "dangerous: injecting burst loss"
        );
    }
    *lock(&BURST) = burst;
}

fn current() -> Option<Config> {
    let faults = *lock(&LINK_FAULTS);
    let burst = *lock(&BURST);
    if faults.is_none() && burst.is_none() {
        return None;
    }
    Some(Config {
        faults: faults.unwrap_or_default(),
        burst,
    })
}

/// What the fault-injecting sockets did, summed over sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Datagrams they were asked to send.
    pub seen: u64,
    /// Dropped by a partition.
    pub dropped_partition: u64,
    /// Datagrams that faced the independent loss draw (all but those a
    /// partition dropped).
    pub random_faced: u64,
    /// Dropped by independent loss.
    pub dropped_random: u64,
    /// Datagrams that faced the burst-loss channel (those neither a
    /// partition nor independent loss dropped), if it is on.
    pub burst_faced: u64,
    /// Dropped by burst loss.
    pub dropped_burst: u64,
    /// Runs of consecutive burst drops on one link: `dropped_burst /
    /// burst_runs` is the mean length of a run of lost datagrams.
    pub burst_runs: u64,
    /// Sent twice.
    pub duplicated: u64,
    /// Sent late (reordered or delayed).
    pub delayed: u64,
}

impl FaultCounts {
    /// Datagrams dropped, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_partition + self.dropped_random + self.dropped_burst
    }

    /// What happened since `earlier` (an earlier reading of [`fault_counts`]).
    pub fn since(&self, earlier: &FaultCounts) -> FaultCounts {
        FaultCounts {
            seen: self.seen - earlier.seen,
            dropped_partition: self.dropped_partition - earlier.dropped_partition,
            random_faced: self.random_faced - earlier.random_faced,
            dropped_random: self.dropped_random - earlier.dropped_random,
            burst_faced: self.burst_faced - earlier.burst_faced,
            dropped_burst: self.dropped_burst - earlier.dropped_burst,
            burst_runs: self.burst_runs - earlier.burst_runs,
            duplicated: self.duplicated - earlier.duplicated,
            delayed: self.delayed - earlier.delayed,
        }
    }

    fn add(&mut self, o: &FaultCounts) {
        self.seen += o.seen;
        self.dropped_partition += o.dropped_partition;
        self.random_faced += o.random_faced;
        self.dropped_random += o.dropped_random;
        self.burst_faced += o.burst_faced;
        self.dropped_burst += o.dropped_burst;
        self.burst_runs += o.burst_runs;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
    }
}

/// What one link (a fault-injecting socket and one destination) saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkCount {
    /// The sending socket's address.
    pub from: SocketAddr,
    /// The destination.
    pub to: SocketAddr,
    /// Datagrams sent (asked to be sent) on it.
    pub seen: u64,
    /// Of them dropped, for any reason.
    pub dropped: u64,
}

/// Every fault-injecting socket bound in this process (they are few: one
/// per endpoint), so that their counts can be read after they close.
static REGISTRY: Mutex<Vec<Arc<SocketShared>>> = Mutex::new(Vec::new());

/// What every fault-injecting socket bound in this process did so far
/// (take a reading before a run and use [`FaultCounts::since`]).
pub fn fault_counts() -> FaultCounts {
    let mut total = FaultCounts::default();
    for s in lock(&REGISTRY).iter() {
        total.add(&lock(&s.state).counts);
    }
    total
}

/// Per link, what every fault-injecting socket bound in this process sent
/// and dropped so far.
pub fn link_counts() -> Vec<LinkCount> {
    let mut out = Vec::new();
    for s in lock(&REGISTRY).iter() {
        for (to, l) in &lock(&s.state).links {
            out.push(LinkCount {
                from: s.local,
                to: *to,
                seen: l.seen,
                dropped: l.dropped,
            });
        }
    }
    out
}

/// What a partition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionReport {
    /// One end.
    pub a: SocketAddr,
    /// The other end.
    pub b: SocketAddr,
    /// Start of the window.
    pub from: Instant,
    /// End of the window (exclusive).
    pub until: Instant,
    /// Datagrams between `a` and `b` (either way) sent before the window.
    pub before: u64,
    /// Datagrams between them the partition dropped (all those sent in the
    /// window).
    pub dropped: u64,
    /// When the first of them was dropped.
    pub first_drop: Option<Instant>,
    /// When the last of them was dropped.
    pub last_drop: Option<Instant>,
    /// Datagrams between them sent after the window.
    pub after: u64,
    /// When the first of those was sent.
    pub first_after: Option<Instant>,
}

struct PartitionShared {
    id: u64,
    report: Mutex<PartitionReport>,
}

static PARTITIONS: Mutex<Vec<Arc<PartitionShared>>> = Mutex::new(Vec::new());
static ANY_PARTITION: AtomicBool = AtomicBool::new(false);
static PARTITION_IDS: AtomicU64 = AtomicU64::new(0);

/// A partition of one link; it lasts (and counts) while this handle lives.
pub struct Partition {
    shared: Arc<PartitionShared>,
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("report", &self.report())
            .finish()
    }
}

impl Partition {
    /// What it did so far.
    pub fn report(&self) -> PartitionReport {
        *lock(&self.shared.report)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let mut all = lock(&PARTITIONS);
        all.retain(|p| p.id != self.shared.id);
        ANY_PARTITION.store(!all.is_empty(), Ordering::Relaxed);
    }
}

/// Drops every datagram between the fault-injecting sockets bound at `a`
/// and at `b`, both ways, sent from `from` for `length`: the link between
/// them is cut for that window, and works before and after it. Errors if no
/// fault-injecting socket is bound at `a` or at `b` (set
/// [`dangerous_set_link_faults`], `LinkFaults::default()` for no other
/// fault, before binding them). Evaluation and tests only.
pub fn dangerous_partition(
    a: SocketAddr,
    b: SocketAddr,
    from: Instant,
    length: Duration,
) -> Result<Partition, String> {
    {
        let sockets = lock(&REGISTRY);
        for end in [a, b] {
            if !sockets.iter().any(|s| s.local == end) {
                return Err(format!(
                    "no fault-injecting socket is bound at {end}: set link faults before binding"
                ));
            }
        }
    }
    tracing::warn!(%a, %b, secs = length.as_secs_f64(), "dangerous: partitioning a link");
    let shared = Arc::new(PartitionShared {
        id: PARTITION_IDS.fetch_add(1, Ordering::Relaxed),
        report: Mutex::new(PartitionReport {
            a,
            b,
            from,
            until: from + length,
            before: 0,
            dropped: 0,
            first_drop: None,
            last_drop: None,
            after: 0,
            first_after: None,
        }),
    });
    let mut all = lock(&PARTITIONS);
    all.push(shared.clone());
    ANY_PARTITION.store(true, Ordering::Relaxed);
    Ok(Partition { shared })
}

/// Whether a partition cuts the datagram from `local` to `to` sent `now`
/// (and counts it in that partition).
fn partitioned(local: SocketAddr, to: SocketAddr, now: Instant) -> bool {
    if !ANY_PARTITION.load(Ordering::Relaxed) {
        return false;
    }
    for p in lock(&PARTITIONS).iter() {
        let mut r = lock(&p.report);
        if !((local == r.a && to == r.b) || (local == r.b && to == r.a)) {
            continue;
        }
        if now < r.from {
            r.before += 1;
            return false;
        }
        if now >= r.until {
            r.after += 1;
            r.first_after.get_or_insert(now);
            return false;
        }
        r.dropped += 1;
        r.first_drop.get_or_insert(now);
        r.last_drop = Some(now);
        return true;
    }
    false
}

/// One link's state and counts.
#[derive(Debug, Default)]
struct LinkState {
    seen: u64,
    dropped: u64,
    /// Burst loss: the chain is in the bad state (drawn on first use).
    bad: Option<bool>,
    /// Burst loss: the last datagram that faced the chain was dropped.
    in_run: bool,
}

struct SocketState {
    rng: rand::rngs::StdRng,
    counts: FaultCounts,
    links: HashMap<SocketAddr, LinkState>,
}

/// What a socket decided for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    drop: bool,
    dup: bool,
    late: Option<u64>,
}

fn uniform(rng: &mut rand::rngs::StdRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl SocketState {
    /// Decides the fate of one datagram to `to` (`cut`: a partition drops
    /// it), and counts it.
    fn decide(&mut self, cfg: &Config, to: SocketAddr, cut: bool) -> Decision {
        let Self { rng, counts, links } = self;
        let link = links.entry(to).or_default();
        counts.seen += 1;
        link.seen += 1;
        if cut {
            counts.dropped_partition += 1;
            link.dropped += 1;
            return Decision {
                drop: true,
                dup: false,
                late: None,
            };
        }
        let f = &cfg.faults;
        counts.random_faced += 1;
        let mut drop = uniform(rng) < f.loss;
        let dup = uniform(rng) < f.duplicate;
        let late = if uniform(rng) < f.reorder {
            Some(1 + rng.next_u64() % 10)
        } else if uniform(rng) < f.delay {
            let j = f.jitter_ms.min(f.delay_ms);
            Some(f.delay_ms - j + rng.next_u64() % (2 * j + 1))
        } else {
            None
        };
        if drop {
            counts.dropped_random += 1;
        } else if let Some(b) = &cfg.burst {
            counts.burst_faced += 1;
            let bad = *link.bad.get_or_insert_with(|| uniform(rng) < b.bad_share());
            let lost = uniform(rng) < if bad { b.loss_bad } else { b.loss_good };
            if lost {
                counts.dropped_burst += 1;
                if !link.in_run {
                    counts.burst_runs += 1;
                }
                drop = true;
            }
            link.in_run = lost;
            let turn = uniform(rng) < if bad { b.bad_to_good } else { b.good_to_bad };
            link.bad = Some(bad != turn);
        }
        if drop {
            link.dropped += 1;
            return Decision {
                drop,
                dup: false,
                late: None,
            };
        }
        if dup {
            counts.duplicated += 1;
        }
        if late.is_some() {
            counts.delayed += 1;
        }
        Decision { drop, dup, late }
    }
}

/// A socket's state, shared with the registry so that its counts outlive it.
struct SocketShared {
    local: SocketAddr,
    state: Mutex<SocketState>,
}

/// A UDP socket that misbehaves as configured.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    cfg: Config,
    shared: Arc<SocketShared>,
    /// Datagrams dropped so far.
    pub dropped: AtomicU64,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("faults", &self.cfg.faults)
            .field("burst", &self.cfg.burst)
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Wraps `inner`, with `faults` and no burst loss.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, faults: LinkFaults) -> Self {
        Self::with(
            inner,
            Config {
                faults,
                burst: None,
            },
        )
    }

    /// Wraps `inner`, with `faults` and `burst` loss.
    pub fn with_burst(
        inner: Arc<dyn AsyncUdpSocket>,
        faults: LinkFaults,
        burst: Option<BurstLoss>,
    ) -> Self {
        Self::with(inner, Config { faults, burst })
    }

    fn with(inner: Arc<dyn AsyncUdpSocket>, cfg: Config) -> Self {
        let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
        let local = inner
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let shared = Arc::new(SocketShared {
            local,
            state: Mutex::new(SocketState {
                rng: rand::rngs::StdRng::seed_from_u64(
                    cfg.faults.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ),
                counts: FaultCounts::default(),
                links: HashMap::new(),
            }),
        });
        lock(&REGISTRY).push(shared.clone());
        Self {
            inner,
            cfg,
            shared,
            dropped: AtomicU64::new(0),
        }
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        let cut = partitioned(self.shared.local, t.destination, Instant::now());
        let Decision { drop, dup, late } =
            lock(&self.shared.state).decide(&self.cfg, t.destination, cut);
        if drop {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let Some(ms) = late
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // Sent later from a task: never held waiting for another send.
            let inner = self.inner.clone();
            let (destination, ecn, segment_size, src_ip) =
                (t.destination, t.ecn, t.segment_size, t.src_ip);
            let contents = t.contents.to_vec();
            rt.spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                let _ = inner.try_send(&Transmit {
                    destination,
                    ecn,
                    contents: &contents,
                    segment_size,
                    src_ip,
                });
            });
            return Ok(());
        }
        self.inner.try_send(t)?;
        if dup {
            let _ = self.inner.try_send(t);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// One datagram per transmit, so each loss decision is one datagram.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// One transmit a socket made: what an observer of the wire sees of it.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    /// When it left.
    pub at: std::time::Instant,
    /// The sending socket's address.
    pub from: SocketAddr,
    /// Where it went.
    pub to: SocketAddr,
    /// UDP payload bytes in all.
    pub bytes: usize,
    /// Datagrams (a segmentation-offload send carries several).
    pub datagrams: usize,
}

/// Records what every socket bound while it is installed sends: the view of
/// a network observer who sees sizes, times and endpoints (never contents,
/// which QUIC encrypts). For tests and evaluations of traffic analysis.
#[derive(Debug, Default)]
pub struct LinkObserver {
    seen: Mutex<Vec<Observed>>,
}

/// Transmits an observer keeps at most.
const MAX_OBSERVED: usize = 4_000_000;

impl LinkObserver {
    /// The transmits of the socket at `from`, in order.
    pub fn sent_by(&self, from: SocketAddr) -> Vec<Observed> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|o| o.from == from)
            .copied()
            .collect()
    }

    /// Transmits recorded so far.
    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn record(&self, o: Observed) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < MAX_OBSERVED {
            s.push(o);
        }
    }
}

static OBSERVER: Mutex<Option<Arc<LinkObserver>>> = Mutex::new(None);

/// Watches every endpoint bound from now on in this process (`None` stops
/// watching new ones). Tests and evaluations only.
pub fn observe_links(observer: Option<Arc<LinkObserver>>) {
    *OBSERVER.lock().unwrap_or_else(|p| p.into_inner()) = observer;
}

/// A socket whose transmits an observer records.
#[derive(Debug)]
struct ObservedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    local: SocketAddr,
    observer: Arc<LinkObserver>,
}

impl AsyncUdpSocket for ObservedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        self.inner.try_send(t)?;
        let bytes = t.contents.len();
        self.observer.record(Observed {
            at: std::time::Instant::now(),
            from: self.local,
            to: t.destination,
            bytes,
            datagrams: t.segment_size.map_or(1, |s| bytes.div_ceil(s.max(1))),
        });
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Socket buffer size asked for, bytes.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Binds an endpoint at `addr`, through a [`FaultySocket`] if link faults or
/// burst loss are set.
pub(crate) fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    jumbo: bool,
) -> io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime"))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // A node takes bursts from many peers: the default socket buffers
    // (~200 kB) overflow at a few thousand packets/s and every overflow is a
    // lost datagram to QUIC's congestion control. The kernel caps these at
    // net.core.{r,w}mem_max (see the operator guide); asking is harmless.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(false);
    }
    sock.bind(&addr.into())?;
    let max_payload = if jumbo {
        usize::from(crate::tls::MAX_UDP_PAYLOAD)
    } else {
        crate::udp::DEFAULT_UDP_PAYLOAD
    };
    let inner: Arc<dyn AsyncUdpSocket> = Arc::new(crate::udp::GsoCapped::new(
        runtime.wrap_udp_socket(sock.into())?,
        max_payload,
    ));
    let socket: Arc<dyn AsyncUdpSocket> = match current() {
        Some(cfg) => Arc::new(FaultySocket::with(inner, cfg)),
        None => inner,
    };
    let observer = OBSERVER.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let socket: Arc<dyn AsyncUdpSocket> = match observer {
        Some(observer) => Arc::new(ObservedSocket {
            local: socket.local_addr()?,
            inner: socket,
            observer,
        }),
        None => socket,
    };
    let mut cfg = quinn::EndpointConfig::default();
    // Nodes: up to jumbo frames where the path allows (loopback, data-centre
    // links): path-MTU discovery (`tls::transport`) then fits three Sphinx
    // frames in a datagram instead of needing two datagrams for one. The
    // default (1472) caps discovery below one frame, but keeps receive
    // buffers small, which is what a client wants.
    if jumbo {
        cfg.max_udp_payload_size(crate::tls::MAX_UDP_PAYLOAD)
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    quinn::Endpoint::new_with_abstract_socket(cfg, server, socket, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(seed: u64) -> SocketState {
        SocketState {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            counts: FaultCounts::default(),
            links: HashMap::new(),
        }
    }

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], port))
    }

    #[test]
    fn specs_parse_and_latency_is_spread_by_the_jitter() {
        let f = LinkFaults::parse("latency_ms=30, jitter_ms=10,loss=0.01,seed=3").unwrap();
        assert_eq!(
            (f.delay, f.delay_ms, f.jitter_ms, f.loss, f.seed),
            (1.0, 30, 10, 0.01, 3)
        );
        for (bad, why) in [
            ("loss=1", "below 1"),
            ("loss=2", "probability"),
            ("delay_ms=-1", "whole number"),
            ("latency", "key=value"),
            ("lag=1", "unknown fault"),
        ] {
            let e = LinkFaults::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let cfg = Config {
            faults: f,
            burst: None,
        };
        let mut s = state(1);
        let mut lates = Vec::new();
        for i in 0..20_000u64 {
            if let Some(l) = s.decide(&cfg, addr(1, (i % 7) as u16), false).late {
                lates.push(l);
            }
        }
        assert!(lates.len() > 19_000, "every datagram not lost is late");
        assert_eq!(*lates.iter().min().unwrap(), 20);
        assert_eq!(*lates.iter().max().unwrap(), 40);
        let mean = lates.iter().sum::<u64>() as f64 / lates.len() as f64;
        assert!((mean - 30.0).abs() < 0.5, "{mean}");
    }

    #[test]
    fn independent_loss_drops_its_share() {
        let cfg = Config {
            faults: LinkFaults {
                loss: 0.3,
                ..LinkFaults::default()
            },
            burst: None,
        };
        let mut s = state(1);
        let n = 200_000u64;
        for i in 0..n {
            s.decide(&cfg, addr(1, (i % 7) as u16), false);
        }
        let c = s.counts;
        assert_eq!((c.seen, c.random_faced), (n, n));
        assert_eq!(
            (c.burst_faced, c.dropped_burst, c.dropped_partition),
            (0, 0, 0)
        );
        let sigma = (n as f64 * 0.3 * 0.7).sqrt();
        assert!(
            (c.dropped_random as f64 - 0.3 * n as f64).abs() < 5.0 * sigma,
            "{c:?}"
        );
        let links: u64 = s.links.values().map(|l| l.dropped).sum();
        assert_eq!(links, c.dropped());
    }

    #[test]
    fn burst_loss_has_its_mean_and_comes_in_runs() {
        let b = BurstLoss::default();
        b.check().unwrap();
        assert!((b.mean_loss() - 0.1).abs() < 1e-12, "{}", b.mean_loss());
        let cfg = Config {
            faults: LinkFaults::default(),
            burst: Some(b),
        };
        let mut s = state(2);
        let n = 1_000_000u64;
        for i in 0..n {
            s.decide(&cfg, addr(1, (i % 10) as u16), false);
        }
        let c = s.counts;
        assert_eq!((c.burst_faced, c.dropped_random), (n, 0));
        let rate = c.dropped_burst as f64 / n as f64;
        let sigma = (b.drop_variance() / n as f64).sqrt();
        assert!(
            (rate - b.mean_loss()).abs() < 5.0 * sigma,
            "{rate} ± {sigma}"
        );
        // Independent loss at 10 % gives runs of 1/0.9 = 1.1 on average.
        // Here a cycle of a good spell (40 datagrams, 0.4 lost, alone) and
        // a bad one (4, all lost) holds about 4.4 drops in 1.4 runs: 3.1.
        let run = c.dropped_burst as f64 / c.burst_runs as f64;
        assert!((2.7..3.5).contains(&run), "mean run {run}");
        // The variance is the burst's, not the binomial's: check it on the
        // spread of the loss rate over blocks of 10,000 datagrams of one link.
        let mut s = state(3);
        let block = 10_000;
        let rates: Vec<f64> = (0..200)
            .map(|_| {
                let before = s.counts.dropped_burst;
                for _ in 0..block {
                    s.decide(&cfg, addr(1, 1), false);
                }
                (s.counts.dropped_burst - before) as f64 / block as f64
            })
            .collect();
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (rates.len() - 1) as f64;
        let predicted = b.drop_variance() / block as f64;
        assert!(
            (0.6 * predicted..1.6 * predicted).contains(&var),
            "block variance {var}, predicted {predicted}, binomial {}",
            0.09 / block as f64
        );
    }

    #[test]
    fn a_partition_cuts_both_ways_for_its_window_only() {
        let (a, b, c) = (addr(10, 1), addr(11, 2), addr(12, 3));
        let from = Instant::now() + Duration::from_secs(100);
        let shared = Arc::new(PartitionShared {
            id: PARTITION_IDS.fetch_add(1, Ordering::Relaxed),
            report: Mutex::new(PartitionReport {
                a,
                b,
                from,
                until: from + Duration::from_secs(30),
                before: 0,
                dropped: 0,
                first_drop: None,
                last_drop: None,
                after: 0,
                first_after: None,
            }),
        });
        lock(&PARTITIONS).push(shared.clone());
        ANY_PARTITION.store(true, Ordering::Relaxed);
        let p = Partition { shared };
        let s = |x: u64| from + Duration::from_secs(x);
        assert!(!partitioned(a, b, from - Duration::from_secs(1)));
        assert!(partitioned(a, b, from));
        assert!(partitioned(b, a, s(15)));
        assert!(!partitioned(a, c, s(15)), "another link");
        assert!(!partitioned(c, b, s(15)), "another link");
        assert!(partitioned(b, a, s(30) - Duration::from_millis(1)));
        assert!(!partitioned(a, b, s(30)));
        let r = p.report();
        assert_eq!((r.before, r.dropped, r.after), (1, 3, 1));
        assert_eq!(r.first_drop, Some(from));
        assert_eq!(r.last_drop, Some(s(30) - Duration::from_millis(1)));
        assert_eq!(r.first_after, Some(s(30)));
        drop(p);
        assert!(!partitioned(a, b, s(15)), "gone with its handle");
        // A partition between sockets that are not fault-injecting is refused.
        assert!(dangerous_partition(a, b, from, Duration::from_secs(1)).is_err());
    }
}
