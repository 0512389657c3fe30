//! The node's own loop cover (Loopix λ_M): packets through one mix node per
//! layer and back to this node. They add cover on every link, and their
//! returns tell the operator whether packets are being held or dropped.

use crate::pipeline::Shared;
use protocol::cover::{LoopOutcome, LoopTracker, Poisson};
use protocol::packet;
use protocol::topology;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loops tracked at once.
const MAX_LOOPS: usize = 4096;
/// What the loop carries; the identifier alone names it.
const LOOP_BODY: &[u8] = b"umbra-node-loop";

/// State of the node's loops, kept in [`Shared`].
pub(crate) struct Loops {
    tracker: std::sync::Mutex<LoopTracker>,
    origin: Instant,
}

impl Loops {
    pub(crate) fn new() -> Self {
        Self {
            tracker: std::sync::Mutex::new(LoopTracker::standard(MAX_LOOPS)),
            origin: Instant::now(),
        }
    }

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// A final-hop packet addressed to this node: true if it was one of its loops.
    pub(crate) fn on_return(&self, shared: &Shared, identifier: &[u8; 16]) -> bool {
        let now = self.now();
        let outcome = self
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .returned(identifier, now);
        match outcome {
            LoopOutcome::OnTime => {
                shared.metrics.loops_returned.inc();
                shared.health.loop_back(net::now_ms());
            }
            LoopOutcome::Late => shared.metrics.loops_late.inc(),
            LoopOutcome::Unknown => return false,
        }
        true
    }
}

/// Sends loops at the topology's λ_M until the task is aborted.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let start = shared.loops.now();
    let mut rate = 0.0;
    let mut poisson = Poisson::new(rate, start, &mut rng);
    loop {
        let now = shared.loops.now();
        let lost = shared
            .loops
            .tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire(now);
        shared.metrics.loops_lost.inc_by(lost as u64);
        let doc = shared
            .topologies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone();
        let want = doc.as_ref().map_or(0.0, |d| d.params.lambda_mix_loop);
        if want != rate {
            rate = want;
            poisson = Poisson::new(rate, now, &mut rng);
        }
        if poisson.poll(now, &mut rng).is_some()
            && let Some(doc) = doc
        {
            send_one(&shared, &doc, now, &mut rng);
        }
        let wait = (poisson.next_at() - shared.loops.now()).clamp(0.0, 1.0);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

fn send_one(
    shared: &Shared,
    doc: &topology::TopologyDocument,
    now: f64,
    rng: &mut rand::rngs::StdRng,
) {
    let Some(me) = doc.node(&shared.identity) else {
        return; // not in this epoch's topology
    };
    let Ok(mixes) = topology::choose_mix_route(doc, rng) else {
        return;
    };
    let mut route: Vec<_> = mixes.iter().map(|n| n.hop()).collect();
    route.push(me.hop());
    let mean = Duration::from_millis(doc.params.mix_delay_mean_ms);
    let delays = packet::sample_delays(rng, route.len(), mean);
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    let Ok(pkt) = packet::build_packet(rng, &route, &shared.identity, id, &delays, LOOP_BODY)
    else {
        return;
    };
    let max = Duration::from_millis(doc.params.max_delay_ms);
    let total = packet::applied_delay(&delays, max).as_secs_f64();
    shared
        .loops
        .tracker
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sent(id, now, total);
    shared.metrics.loops_sent.inc();
    shared.health.loop_sent(net::now_ms());
    shared.forward(doc.epoch, route[0].id, &pkt);
}
