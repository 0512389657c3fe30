//! Loopix cover-traffic scheduling, sans-IO: times are arguments (seconds as
//! `f64` since any origin), randomness comes from the caller's RNG.
//!
//! A client emits only at the ticks of a Poisson process of rate λ_P; at each
//! tick it sends its oldest queued real packet, or else a drop-cover packet.
//! Loops run as their own Poisson process of rate λ_L. Because the tick times
//! never depend on whether real packets are queued, an observer of the send
//! times learns nothing about when the user is active.

use rand::Rng;
use rand_distr::{Distribution, Exp};
use std::collections::VecDeque;

/// A Poisson process: exponential gaps of mean 1/rate.
#[derive(Debug, Clone)]
pub struct Poisson {
    exp: Option<Exp<f64>>,
    next: f64,
}

impl Poisson {
    /// A process of `rate` events per second starting at `now`; a rate of zero never fires.
    pub fn new<R: Rng + ?Sized>(rate: f64, now: f64, rng: &mut R) -> Self {
        let exp = (rate > 0.0 && rate.is_finite())
            .then(|| Exp::new(rate).ok())
            .flatten();
        let mut p = Self {
            exp,
            next: f64::INFINITY,
        };
        p.next = p.after(now, rng);
        p
    }

    fn after<R: Rng + ?Sized>(&self, t: f64, rng: &mut R) -> f64 {
        match &self.exp {
            Some(e) => t + e.sample(rng),
            None => f64::INFINITY,
        }
    }

    /// When the next event is due.
    pub fn next_at(&self) -> f64 {
        self.next
    }

    /// If an event is due at `now`, consumes it and returns its time.
    pub fn poll<R: Rng + ?Sized>(&mut self, now: f64, rng: &mut R) -> Option<f64> {
        if self.next > now {
            return None;
        }
        let at = self.next;
        self.next = self.after(at, rng);
        Some(at)
    }
}

/// What a client sends at a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emission<T> {
    /// A queued real packet (message fragment, ack, receipt, fetch).
    Real(T),
    /// A drop-cover packet to a random gateway.
    DropCover,
    /// A loop-cover packet back to the client itself.
    Loop,
}

/// A client's outgoing stream: the payload process (real or drop cover) and
/// the loop process. With `cover` off (evaluation only) real packets leave
/// the moment they are queued and nothing else is sent.
#[derive(Debug, Clone)]
pub struct ClientStream<T> {
    payload: Poisson,
    loops: Poisson,
    queue: VecDeque<T>,
    capacity: usize,
    cover: bool,
}

impl<T> ClientStream<T> {
    /// A stream with rates λ_P and λ_L, holding at most `capacity` queued real packets.
    pub fn new<R: Rng + ?Sized>(
        lambda_payload: f64,
        lambda_loop: f64,
        capacity: usize,
        cover: bool,
        now: f64,
        rng: &mut R,
    ) -> Self {
        Self {
            payload: Poisson::new(lambda_payload, now, rng),
            loops: Poisson::new(if cover { lambda_loop } else { 0.0 }, now, rng),
            queue: VecDeque::new(),
            capacity,
            cover,
        }
    }

    /// Queues a real packet; gives it back if the queue is full.
    pub fn push(&mut self, packet: T) -> Result<(), T> {
        if self.queue.len() >= self.capacity {
            return Err(packet);
        }
        self.queue.push_back(packet);
        Ok(())
    }

    /// Real packets waiting for a tick.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the next emission is due (for the caller's timer).
    pub fn next_at(&self) -> f64 {
        if !self.cover {
            return if self.queue.is_empty() {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
        }
        self.payload.next_at().min(self.loops.next_at())
    }

    /// The next emission due at or before `now`, with its scheduled time.
    pub fn poll<R: Rng + ?Sized>(&mut self, now: f64, rng: &mut R) -> Option<(f64, Emission<T>)> {
        if !self.cover {
            return self.queue.pop_front().map(|p| (now, Emission::Real(p)));
        }
        if self.loops.next_at() <= self.payload.next_at()
            && let Some(at) = self.loops.poll(now, rng)
        {
            return Some((at, Emission::Loop));
        }
        let at = self.payload.poll(now, rng)?;
        Some((
            at,
            match self.queue.pop_front() {
                Some(p) => Emission::Real(p),
                None => Emission::DropCover,
            },
        ))
    }
}

/// How much a client may ask of its constant-rate downlink (λ_D Deliver
/// frames/s from its entry gateway). Every reply the client provokes takes
/// one frame: a fetch [`FETCH_COST`] (one per SURB), an acked fragment one,
/// a loop one. The budget refills at a safe share of λ_D less the loop rate,
/// so that replies never pile up at the gateway faster than the downlink
/// drains them; a fetch waits for budget, a fragment may overdraw it (its
/// ack is what keeps delivery reliable).
#[derive(Debug, Clone)]
pub struct DownlinkBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

/// Downlink frames one fetch provokes (its SURBs).
pub const FETCH_COST: f64 = crate::messages::FETCH_SURBS as f64;
/// Share of λ_D a client plans to use: the rest absorbs the bursts of
/// replies that mixing delays bring together.
pub const DOWNLINK_HEADROOM: f64 = 0.8;

impl DownlinkBudget {
    /// The budget for a downlink of `lambda_downlink` frames/s to a client
    /// sending loops at `lambda_loop`, full at `now`. A non-positive or
    /// unknown downlink rate gives an unlimited budget.
    pub fn new(lambda_downlink: f64, lambda_loop: f64, now: f64) -> Self {
        let rate = Self::rate_for(lambda_downlink, lambda_loop);
        // Room for two fetches' worth of replies at once.
        let burst = 2.0 * FETCH_COST;
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn rate_for(lambda_downlink: f64, lambda_loop: f64) -> f64 {
        if lambda_downlink > 0.0 && lambda_downlink.is_finite() {
            (DOWNLINK_HEADROOM * lambda_downlink - lambda_loop.max(0.0)).max(0.0)
        } else {
            f64::INFINITY
        }
    }

    /// Frames per second the client may provoke.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Follows new rates (a new topology), keeping what is left of the budget.
    pub fn retune(&mut self, lambda_downlink: f64, lambda_loop: f64, now: f64) {
        self.refill(now);
        self.rate = Self::rate_for(lambda_downlink, lambda_loop);
    }

    fn refill(&mut self, now: f64) {
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last) * self.rate).min(self.burst);
            self.last = now;
        }
    }

    /// Whether the budget holds `cost` frames at `now`.
    pub fn can_take(&mut self, cost: f64, now: f64) -> bool {
        self.refill(now);
        self.rate.is_infinite() || self.tokens >= cost
    }

    /// Takes `cost` frames if the budget holds them.
    pub fn try_take(&mut self, cost: f64, now: f64) -> bool {
        if !self.can_take(cost, now) {
            return false;
        }
        self.take(cost, now);
        true
    }

    /// Takes `cost` frames even if that overdraws the budget (bounded at one
    /// burst of debt, so an upload cannot lock fetches out for long).
    pub fn take(&mut self, cost: f64, now: f64) {
        self.refill(now);
        if self.rate.is_finite() {
            self.tokens = (self.tokens - cost).max(-self.burst);
        }
    }
}

/// What became of a loop packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopOutcome {
    /// Back within its expected time.
    OnTime,
    /// Back, but after its expected time: some hop held it longer than its
    /// header asked (congestion, or a node delaying traffic on purpose).
    Late,
    /// Not one of ours (or already counted lost).
    Unknown,
}

/// Loops in flight, sans-IO: times are arguments, in seconds.
///
/// A loop is expected back by `sent + sum of its hop delays + slack`. One that
/// returns later is *late*; one not back `lost_after` seconds after that is
/// *lost*. Rising late or lost counts are how a client or node notices a
/// broken route or an n−1 attack (an adversary holding or dropping packets).
/// Bounded: beyond `capacity` loops in flight new ones are not tracked.
#[derive(Debug, Clone)]
pub struct LoopTracker {
    pending: std::collections::HashMap<[u8; 16], f64>,
    capacity: usize,
    slack: f64,
    lost_after: f64,
}

/// Transport time allowed beyond a loop's sampled delays before it is late, s.
pub const LOOP_SLACK_S: f64 = 2.0;
/// A loop this long past its expected return counts as lost, s.
pub const LOOP_LOST_AFTER_S: f64 = 30.0;

impl LoopTracker {
    /// A tracker of at most `capacity` loops with the network's rules:
    /// [`LOOP_SLACK_S`] and [`LOOP_LOST_AFTER_S`]. Clients and nodes alike use it.
    pub fn standard(capacity: usize) -> Self {
        Self::new(capacity, LOOP_SLACK_S, LOOP_LOST_AFTER_S)
    }

    /// A tracker allowing `slack` seconds of transport time beyond the
    /// sampled delays, and counting loops lost `lost_after` seconds later.
    pub fn new(capacity: usize, slack: f64, lost_after: f64) -> Self {
        Self {
            pending: std::collections::HashMap::new(),
            capacity,
            slack,
            lost_after,
        }
    }

    /// Records a loop sent at `now` whose hops add `delays` seconds; false
    /// if the tracker is full (the loop is then not tracked).
    pub fn sent(&mut self, id: [u8; 16], now: f64, delays: f64) -> bool {
        if self.pending.len() >= self.capacity {
            return false;
        }
        self.pending.insert(id, now + delays + self.slack);
        true
    }

    /// A packet with `id` came back at `now`.
    pub fn returned(&mut self, id: &[u8; 16], now: f64) -> LoopOutcome {
        match self.pending.remove(id) {
            Some(due) if now <= due => LoopOutcome::OnTime,
            Some(_) => LoopOutcome::Late,
            None => LoopOutcome::Unknown,
        }
    }

    /// Forgets loops overdue by more than `lost_after` at `now`; returns how many.
    pub fn expire(&mut self, now: f64) -> usize {
        let before = self.pending.len();
        let lost_after = self.lost_after;
        self.pending.retain(|_, due| now <= *due + lost_after);
        before - self.pending.len()
    }

    /// Loops in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn ticks_do_not_depend_on_real_traffic() {
        // Same seed, one stream idle, one with a burst: identical send times.
        let mut r1 = ChaCha20Rng::seed_from_u64(1);
        let mut r2 = ChaCha20Rng::seed_from_u64(1);
        let mut idle: ClientStream<u32> = ClientStream::new(5.0, 1.0, 100, true, 0.0, &mut r1);
        let mut busy: ClientStream<u32> = ClientStream::new(5.0, 1.0, 100, true, 0.0, &mut r2);
        for i in 0..20 {
            busy.push(i).unwrap();
        }
        let (mut t1, mut t2, mut real) = (vec![], vec![], 0);
        for step in 0..2000 {
            let now = step as f64 * 0.01;
            while let Some((at, _)) = idle.poll(now, &mut r1) {
                t1.push(at);
            }
            while let Some((at, e)) = busy.poll(now, &mut r2) {
                t2.push(at);
                real += matches!(e, Emission::Real(_)) as usize;
            }
        }
        assert_eq!(t1, t2);
        assert_eq!(real, 20);
        let rate = t1.len() as f64 / 20.0;
        assert!((rate - 6.0).abs() < 0.8, "rate {rate}");
    }

    #[test]
    fn without_cover_only_real_packets_leave() {
        let mut r = ChaCha20Rng::seed_from_u64(2);
        let mut s: ClientStream<u32> = ClientStream::new(5.0, 1.0, 2, false, 0.0, &mut r);
        assert!(s.poll(100.0, &mut r).is_none());
        s.push(1).unwrap();
        s.push(2).unwrap();
        assert_eq!(s.push(3), Err(3), "bounded queue");
        assert_eq!(s.poll(1.0, &mut r), Some((1.0, Emission::Real(1))));
    }

    #[test]
    fn loops_are_on_time_late_or_lost() {
        let mut t = LoopTracker::new(2, 1.0, 10.0);
        assert!(t.sent([1; 16], 0.0, 2.0));
        assert!(t.sent([2; 16], 0.0, 2.0));
        assert!(!t.sent([3; 16], 0.0, 2.0), "bounded");
        assert_eq!(t.returned(&[1; 16], 3.0), LoopOutcome::OnTime);
        assert_eq!(
            t.returned(&[1; 16], 3.0),
            LoopOutcome::Unknown,
            "counted once"
        );
        assert!(t.sent([4; 16], 0.0, 2.0));
        assert_eq!(t.returned(&[4; 16], 3.5), LoopOutcome::Late);
        assert_eq!(t.expire(12.9), 0);
        assert_eq!(t.expire(13.1), 1);
        assert_eq!(t.returned(&[2; 16], 14.0), LoopOutcome::Unknown);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn downlink_budget_paces_fetches_to_the_downlink() {
        // λ_D = 12, λ_L = 1: 0.8 × 12 − 1 = 8.6 frames/s for replies.
        let mut b = DownlinkBudget::new(12.0, 1.0, 0.0);
        assert!((b.rate() - 8.6).abs() < 1e-9);
        // A client that would fetch at every tick of a 50/s stream for 100 s.
        let mut fetches = 0u32;
        let mut t = 0.0;
        while t < 100.0 {
            if b.try_take(FETCH_COST, t) {
                fetches += 1;
            }
            t += 0.02;
        }
        let frames = f64::from(fetches) * FETCH_COST;
        assert!(
            frames <= 8.6 * 100.0 + 2.0 * FETCH_COST && frames > 8.0 * 100.0,
            "{frames} reply frames in 100 s"
        );
        // Fragments overdraw it, boundedly, and fetches wait until it refills.
        let mut b = DownlinkBudget::new(12.0, 1.0, 0.0);
        for _ in 0..100 {
            b.take(1.0, 0.0);
        }
        assert!(!b.try_take(FETCH_COST, 0.5));
        assert!(b.try_take(FETCH_COST, 2.0));
        // No downlink rate published: no pacing.
        let mut free = DownlinkBudget::new(0.0, 1.0, 0.0);
        assert!((0..1000).all(|_| free.try_take(FETCH_COST, 0.0)));
    }
}
