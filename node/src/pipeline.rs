//! The packet path: link → bounded worker queue → Sphinx workers (one per
//! core) → outbound link, at once or when the packet's delay is up.
//!
//! Each worker holds the delayed packets it peeled in its own heap and
//! releases those that are due between jobs, in a batch, or when its wait
//! for the next job times out at the earliest due time. No packet crosses a
//! thread or wakes a task to be delayed: a single scheduler task fed by a
//! channel cost about 26 µs of QUIC/tokio CPU per packet against 3 µs for a
//! direct forward.

use crate::metrics::Metrics;
use crate::{Handler, NodeRef};
use net::link::Links;
use protocol::NodeId;
use protocol::frame::{self, Frame, FrameKind};
use protocol::keys::KeyRing;
use protocol::packet::Peeled;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub(crate) struct Job {
    epoch: u64,
    packet: Vec<u8>,
}

/// A peeled packet waiting for its delay, in a worker's slab.
struct Parked {
    epoch: u64,
    next_hop: NodeId,
    packet: Vec<u8>,
}

/// The verified topologies a node holds: the current one, and those of the
/// previous, current and next epochs (packets built for each are in flight
/// around a boundary, and layers differ between epochs).
#[derive(Default)]
pub(crate) struct Topologies {
    pub(crate) current: Option<Arc<protocol::topology::TopologyDocument>>,
    pub(crate) by_epoch: std::collections::BTreeMap<u64, Arc<protocol::topology::TopologyDocument>>,
}

impl Topologies {
    /// Takes the newly verified current document and (when one verified) the next.
    pub(crate) fn update(
        &mut self,
        current: Arc<protocol::topology::TopologyDocument>,
        next: Option<Arc<protocol::topology::TopologyDocument>>,
    ) {
        let epoch = current.epoch;
        self.by_epoch.insert(epoch, current.clone());
        if let Some(n) = next {
            self.by_epoch.insert(n.epoch, n);
        }
        self.by_epoch
            .retain(|e, _| *e + 1 >= epoch && *e <= epoch + 1);
        self.current = Some(current);
    }
}

/// State the packet path shares across threads.
pub(crate) struct Shared {
    pub(crate) keys: RwLock<KeyRing>,
    pub(crate) routes: RwLock<HashMap<NodeId, SocketAddr>>,
    pub(crate) links: Links,
    pub(crate) metrics: Metrics,
    max_delay: Duration,
    delay_capacity: usize,
    /// Packets held in all workers' heaps together.
    held: AtomicUsize,
    jobs: crossbeam_channel::Sender<Job>,
    refresh: Arc<Notify>,
    closed: AtomicBool,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) topologies: RwLock<Topologies>,
    pub(crate) identity: NodeId,
    pub(crate) loops: crate::loops::Loops,
    /// What `/readyz` judges by.
    pub(crate) health: crate::health::HealthState,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        keys: KeyRing,
        links: Links,
        metrics: Metrics,
        max_delay: Duration,
        worker_queue: usize,
        delay_queue: usize,
        refresh: Arc<Notify>,
        handler: Arc<dyn Handler>,
        identity: NodeId,
    ) -> (Arc<Self>, crossbeam_channel::Receiver<Job>) {
        let (jobs, job_rx) = crossbeam_channel::bounded(worker_queue.max(1));
        let s = Arc::new(Self {
            keys: RwLock::new(keys),
            routes: RwLock::new(HashMap::new()),
            links,
            metrics,
            max_delay,
            delay_capacity: delay_queue.max(1),
            held: AtomicUsize::new(0),
            jobs,
            refresh,
            closed: AtomicBool::new(false),
            handler,
            topologies: RwLock::new(Topologies::default()),
            identity,
            loops: crate::loops::Loops::new(),
            health: crate::health::HealthState::default(),
        });
        (s, job_rx)
    }

    /// Called by the link layer for every well-formed frame.
    pub(crate) fn submit(self: &Arc<Self>, f: Frame<'_>, conn: &net::conn::PeerConn) {
        if f.kind != FrameKind::Sphinx {
            self.handler.on_frame(&NodeRef(self.clone()), f, conn);
            return;
        }
        self.submit_packet(f.epoch, f.data);
    }

    /// Queues a Sphinx packet for this node to peel.
    pub(crate) fn submit_packet(&self, epoch: u64, packet: &[u8]) {
        self.metrics.received.inc();
        let job = Job {
            epoch,
            packet: packet.to_vec(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => self.metrics.workers_queue.inc(),
            Err(_) => self.metrics.drop("queue_full"),
        }
    }

    /// Asks the control task to refresh the topology (it does so at most once a second).
    pub(crate) fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Peels `job`; a packet to forward later goes into `held`, this
    /// worker's heap.
    fn process(self: &Arc<Self>, job: Job, held: &mut Held) {
        let started = Instant::now();
        let key = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(job.epoch);
        let Some(key) = key else {
            self.metrics.drop("unknown_epoch");
            return;
        };
        let result = key.peel(&job.packet);
        self.metrics
            .processing
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Peeled::Forward {
                next_hop,
                delay,
                packet,
            }) => {
                let delay = delay.min(self.max_delay);
                if delay.is_zero() {
                    self.forward(job.epoch, next_hop, &packet);
                    return;
                }
                // The bound is over all workers: a reservation that
                // overshoots is given back.
                if self.held.fetch_add(1, Ordering::Relaxed) >= self.delay_capacity {
                    self.held.fetch_sub(1, Ordering::Relaxed);
                    self.metrics.drop("queue_full");
                    return;
                }
                self.metrics.delay_queue.inc();
                held.park(
                    started + delay,
                    Parked {
                        epoch: job.epoch,
                        next_hop,
                        packet,
                    },
                );
            }
            Ok(Peeled::Final {
                destination,
                identifier,
                ..
            }) if destination == self.identity && self.loops.on_return(self, &identifier) => {}
            Ok(Peeled::Final {
                destination,
                identifier,
                payload,
            }) => self.handler.on_final(
                &NodeRef(self.clone()),
                job.epoch,
                destination,
                identifier,
                payload,
            ),
            Err(protocol::Error::Replay) => self.metrics.drop("replay"),
            Err(protocol::Error::UnknownEpoch(_)) => self.metrics.drop("unknown_epoch"),
            Err(_) => self.metrics.drop("malformed"),
        }
    }

    /// Sends `packet` to `next_hop` now; false if it was dropped (counted).
    pub(crate) fn forward(&self, epoch: u64, next_hop: NodeId, packet: &[u8]) -> bool {
        let addr = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&next_hop)
            .copied();
        let Some(addr) = addr else {
            self.metrics.drop("unknown_next_hop");
            self.refresh.notify_one();
            return false;
        };
        let Ok(frame) = frame::encode(FrameKind::Sphinx, epoch, packet) else {
            self.metrics.drop("malformed");
            return false;
        };
        // A refused send is counted by the link layer (queue_full there).
        let sent = self.links.send(next_hop, addr, frame);
        if sent {
            self.metrics.forwarded.inc();
        }
        sent
    }
}

/// One worker's delayed packets, earliest first (`seq` keeps packets due
/// at the same instant in the order they were peeled).
///
/// The heap orders small keys (due time, sequence, slot) and the packets
/// wait in a slab beside it: a pop then moves 40-byte entries, not the
/// packets' 90-byte records, and a heap of a few thousand entries stays in
/// the cache (the records' heap cost 0.6 % of a worker's CPU at 800 ms
/// delays).
#[derive(Default)]
pub(crate) struct Held {
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slots: Vec<Option<Parked>>,
    free: Vec<usize>,
    seq: u64,
}

impl Held {
    /// Holds `p` until `due`.
    fn park(&mut self, due: Instant, p: Parked) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(p);
                i
            }
            None => {
                self.slots.push(Some(p));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((due, self.seq, slot)));
    }

    /// When the earliest packet is due.
    fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((due, _, _))| *due)
    }

    /// The earliest packet if it is due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Parked> {
        while self
            .heap
            .peek()
            .is_some_and(|Reverse((due, _, _))| *due <= now)
        {
            let Reverse((_, _, slot)) = self.heap.pop()?;
            self.free.push(slot);
            if let Some(p) = self.slots.get_mut(slot).and_then(Option::take) {
                return Some(p);
            }
        }
        None
    }

    /// Forwards every packet due by `now`.
    fn release(&mut self, shared: &Shared, now: Instant) {
        let mut n = 0;
        while let Some(p) = self.pop_due(now) {
            shared.forward(p.epoch, p.next_hop, &p.packet);
            n += 1;
        }
        if n > 0 {
            shared.held.fetch_sub(n, Ordering::Relaxed);
            shared.metrics.delay_queue.sub(n as i64);
        }
    }

    /// Drops what is held (the node is stopping).
    fn clear(&mut self, shared: &Shared) {
        let n = self.heap.len();
        self.heap.clear();
        self.slots.clear();
        self.free.clear();
        shared.held.fetch_sub(n, Ordering::Relaxed);
        shared.metrics.delay_queue.sub(n as i64);
    }
}

/// How long an idle worker waits for a job before it looks at `closed`.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Starts `n` Sphinx worker threads. They stop when the job queue closes
/// or the node is closed.
pub(crate) fn spawn_workers(
    n: usize,
    shared: Arc<Shared>,
    rx: crossbeam_channel::Receiver<Job>,
    rt: tokio::runtime::Handle,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..n.max(1))
        .map(|i| {
            let shared = shared.clone();
            let rx = rx.clone();
            let rt = rt.clone();
            std::thread::Builder::new()
                .name(format!("sphinx-{i}"))
                .spawn(move || {
                    // SCHED_BATCH, whatever spawned it: a woken worker then
                    // lets the I/O thread finish queueing (`sched`).
                    crate::sched::worker_thread();
                    // Links spawn their tasks on the node's runtime.
                    let _guard = rt.enter();
                    let mut held = Held::default();
                    while !shared.closed.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        held.release(&shared, now);
                        let wait = held
                            .next_due()
                            .map_or(IDLE_WAIT, |due| due.saturating_duration_since(now))
                            .min(IDLE_WAIT);
                        match rx.recv_timeout(wait) {
                            Ok(job) => {
                                shared.metrics.workers_queue.dec();
                                shared.process(job, &mut held);
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    held.clear(&shared);
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(tag: u8) -> Parked {
        Parked {
            epoch: u64::from(tag),
            next_hop: [tag; 32],
            packet: vec![tag],
        }
    }

    #[test]
    fn held_packets_leave_when_due_earliest_first_and_in_order_at_the_same_instant() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = Held::default();
        for (due, tag) in [(30, 1), (10, 2), (20, 3), (10, 4), (20, 5)] {
            h.park(ms(due), parked(tag));
        }
        assert!(h.pop_due(ms(9)).is_none(), "nothing is due yet");
        let order = |h: &mut Held, now| {
            std::iter::from_fn(|| h.pop_due(now))
                .map(|p| p.packet[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&mut h, ms(20)), vec![2, 4, 3, 5]);
        assert_eq!(h.next_due(), Some(ms(30)));
        // Freed slots are used again, and what they held is not.
        h.park(ms(25), parked(6));
        h.park(ms(26), parked(7));
        h.park(ms(5), parked(8));
        assert_eq!(h.slots.len(), 5, "slab grew past the freed slots");
        assert_eq!(order(&mut h, ms(100)), vec![8, 6, 7, 1]);
        assert!(h.next_due().is_none());
    }
}
