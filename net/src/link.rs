//! Long-lived QUIC links carrying fixed-size frames on one unidirectional stream.
//!
//! Outbound: one task per peer owns the connection, reconnects with
//! exponential backoff, and drains a bounded queue; when the queue is full
//! the frame is dropped and counted, so memory never grows without bound.
//! Inbound: each stream is cut into frames by the sans-IO decoder; malformed
//! frames are counted and skipped while the stream goes on.

use crate::conn::PeerConn;
#[cfg(not(feature = "server"))]
use crate::counters::{IntCounter, IntCounterVec, IntGauge, Opts};
use crate::{Error, tls};
#[cfg(feature = "server")]
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use protocol::NodeId;
use protocol::frame::{self, Frame, FrameDecoder};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// Decides whether a dialler that proved `identity` may use a node link
/// (the node's topology, current and next epoch).
pub type PeerFilter = Arc<dyn Fn(&NodeId) -> bool + Send + Sync>;

/// Tunables for links.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Frames queued per outbound peer before new ones are dropped.
    pub queue_capacity: usize,
    /// Inbound connections served at once (taken once the handshake is
    /// done); more are refused.
    pub max_inbound_connections: usize,
    /// Handshakes in progress at once; more are refused.
    pub max_handshakes: usize,
    /// Connections and handshakes from one IP address at once.
    pub max_per_ip: usize,
    /// A handshake not done in this long is abandoned.
    pub handshake_timeout: Duration,
    /// Distinct outbound peers; frames to further peers are dropped.
    pub max_peers: usize,
    /// Bytes queued for all outbound peers together; frames beyond are
    /// dropped (`node_queue_full`).
    pub max_queued_bytes: usize,
    /// Failed connects in a row after which a peer's queued frames are
    /// dropped (`peer_unreachable`): a mixnet packet that waited that long
    /// is late anyway, and the memory goes back.
    pub drop_queue_after_failures: u32,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Under load, how long an outbound link waits to gather more frames
    /// into one write. Only applies when frames are already queued or the
    /// link wrote less than this long ago, so an idle link adds no latency.
    pub coalesce: Duration,
    /// Inbound frames per second allowed per connection (token bucket); `None` = unlimited.
    pub inbound_rate: Option<f64>,
    /// Burst size of the inbound token bucket.
    pub inbound_burst: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            max_inbound_connections: 1024,
            max_handshakes: 256,
            max_per_ip: 32,
            handshake_timeout: Duration::from_secs(10),
            max_peers: 4096,
            max_queued_bytes: 256 << 20,
            drop_queue_after_failures: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            inbound_rate: None,
            inbound_burst: 0.0,
            coalesce: Duration::from_millis(1),
        }
    }
}

/// Link counters, registered in the caller's registry.
#[derive(Clone)]
pub struct LinkMetrics {
    /// Well-formed frames received.
    pub frames_in: IntCounter,
    /// Frames sent to peers.
    pub frames_out: IntCounter,
    /// Frames dropped, by reason (`malformed`, `queue_full`, `link_error`,
    /// `too_many_peers`, `rate_limited`, `node_queue_full`: all queues
    /// together hold `max_queued_bytes`; `peer_unreachable`: queued for a
    /// peer whose connects kept failing; `evicted`: queued for a peer that
    /// left the topology).
    pub dropped: IntCounterVec,
    /// Failed connection attempts.
    pub connect_failures: IntCounter,
    /// Frames waiting in outbound queues.
    pub queue_depth: IntGauge,
    /// Open inbound connections.
    pub inbound_connections: IntGauge,
    /// Inbound connections refused, by reason (`limit`: too many open;
    /// `handshake`: the TLS handshake failed, e.g. no or a bad client
    /// certificate on a node link; `unknown_peer`: a proven identity that is
    /// not in the topology).
    pub connections_refused: IntCounterVec,
}

impl LinkMetrics {
    /// Creates the counters and registers them in `registry`.
    #[cfg(feature = "server")]
    pub fn new(registry: &Registry) -> Self {
        Self::with_prefix(registry, "umbra_link")
    }

    /// Creates the counters named `<prefix>_*` and registers them in `registry`.
    #[cfg(feature = "server")]
    pub fn with_prefix(registry: &Registry, prefix: &str) -> Self {
        let m = Self::named(prefix);
        for c in [
            Box::new(m.frames_in.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.frames_out.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.connect_failures.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.inbound_connections.clone()),
            Box::new(m.connections_refused.clone()),
        ] {
            // Registering the same name twice is a programming error caught in tests.
            let _ = registry.register(c);
        }
        m
    }

    /// Counters not attached to any registry (tests, tools).
    pub fn unregistered() -> Self {
        Self::named("umbra_link")
    }

    fn named(p: &str) -> Self {
        let c = |n: &str, h: &str| {
            IntCounter::new(format!("{p}_{n}"), h).unwrap_or_else(|_| unreachable_metric())
        };
        let g = |n: &str, h: &str| {
            IntGauge::new(format!("{p}_{n}"), h).unwrap_or_else(|_| unreachable_metric())
        };
        let m = Self {
            frames_in: c("frames_in_total", "Well-formed frames received"),
            frames_out: c("frames_out_total", "Frames written to peers"),
            dropped: IntCounterVec::new(
                Opts::new(
                    format!("{p}_frames_dropped_total"),
                    "Frames dropped at the link layer",
                ),
                &["reason"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            connect_failures: c("connect_failures_total", "Failed connection attempts"),
            queue_depth: g("queue_depth", "Frames waiting in outbound queues"),
            inbound_connections: g("inbound_connections", "Open inbound connections"),
            connections_refused: IntCounterVec::new(
                Opts::new(
                    format!("{p}_connections_refused_total"),
                    "Inbound connections refused",
                ),
                &["reason"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
        };
        for r in ["malformed", "queue_full", "link_error", "rate_limited"] {
            m.dropped.with_label_values(&[r]);
        }
        for r in ["limit", "handshake", "unknown_peer"] {
            m.connections_refused.with_label_values(&[r]);
        }
        m
    }

    fn drop(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    fn refuse(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }
}

#[allow(clippy::panic)]
fn unreachable_metric() -> ! {
    // Metric names above are static and valid; this cannot happen at run time.
    panic!("invalid static metric definition")
}

/// Receives inbound frames. Called on the connection's task: keep it cheap
/// (hand the packet to a worker queue).
pub trait FrameSink: Send + Sync + 'static {
    /// One well-formed frame, and the connection it came on.
    fn on_frame(&self, frame: Frame<'_>, conn: &PeerConn);
}

impl<F: Fn(Frame<'_>, &PeerConn) + Send + Sync + 'static> FrameSink for F {
    fn on_frame(&self, frame: Frame<'_>, conn: &PeerConn) {
        self(frame, conn)
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Binds a QUIC endpoint that serves node links and can dial peers. Every
/// dialler must prove an identity key (mutual TLS); [`serve`] then admits
/// only the identities its [`PeerFilter`] accepts.
///
/// With `jumbo`, it uses UDP payloads up to 8952 bytes where the path
/// allows: on jumbo-frame paths (data-centre links, loopback) three Sphinx
/// frames then share a datagram instead of one frame taking two. Off by
/// default (the `jumbo_frames` config key): on a lossy path, quinn's
/// black-hole detection takes lost large datagrams for an MTU limit and
/// falls back to 1200 bytes, three datagrams per frame (measured: 30 %
/// loss, p50 7.9 s → 21.8 s).
pub fn bind(
    addr: SocketAddr,
    creds: &tls::Credentials,
    jumbo: bool,
) -> Result<quinn::Endpoint, Error> {
    bind_as(addr, creds, jumbo, tls::Diallers::Nodes)
}

/// Binds a gateway's client endpoint: anyone may dial it without a
/// certificate (clients are anonymous to their gateway's TLS).
pub fn bind_for_clients(
    addr: SocketAddr,
    creds: &tls::Credentials,
    jumbo: bool,
) -> Result<quinn::Endpoint, Error> {
    bind_as(addr, creds, jumbo, tls::Diallers::Anyone)
}

fn bind_as(
    addr: SocketAddr,
    creds: &tls::Credentials,
    jumbo: bool,
    diallers: tls::Diallers,
) -> Result<quinn::Endpoint, Error> {
    crate::install_crypto_provider();
    crate::faults::endpoint(addr, Some(tls::server_config(creds, diallers)?), jumbo)
        .map_err(|source| Error::Bind { addr, source })
}

/// A client-only endpoint on an ephemeral loopback or wildcard port, for an
/// SDK client: datagrams of at most 1472 bytes, so its receive buffers stay
/// small (a phone's path to its gateway is no jumbo path anyway).
pub fn client_endpoint(bind_addr: SocketAddr) -> Result<quinn::Endpoint, Error> {
    crate::install_crypto_provider();
    crate::faults::endpoint(bind_addr, None, false).map_err(|source| Error::Bind {
        addr: bind_addr,
        source,
    })
}

/// A client-only endpoint that may use jumbo datagrams where the path and
/// the peer allow (load generators, benchmarks): a peer bound without
/// `jumbo` still caps its links at 1472 bytes.
pub fn bulk_client_endpoint(bind_addr: SocketAddr) -> Result<quinn::Endpoint, Error> {
    crate::install_crypto_provider();
    crate::faults::endpoint(bind_addr, None, true).map_err(|source| Error::Bind {
        addr: bind_addr,
        source,
    })
}

/// Accepts connections on `endpoint` until it is closed, feeding frames to `sink`.
///
/// With `peers`, the endpoint serves node links: a connection whose
/// dialler proved no identity, or one `peers` refuses, is closed at once
/// (application error 1, reason `not in topology`) and counted.
pub async fn serve(
    endpoint: quinn::Endpoint,
    sink: Arc<dyn FrameSink>,
    metrics: LinkMetrics,
    cfg: LinkConfig,
    peers: Option<PeerFilter>,
) {
    let limit = Arc::new(Semaphore::new(cfg.max_inbound_connections));
    let handshakes = Arc::new(Semaphore::new(cfg.max_handshakes));
    let per_ip: Arc<Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    while let Some(incoming) = endpoint.accept().await {
        // Address validation first (QUIC Retry): a spoofed source address
        // cannot take a handshake slot or make the node send to a victim.
        if !incoming.remote_address_validated() {
            if incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            continue;
        }
        let ip = incoming.remote_address().ip();
        let Some(slot) = IpSlot::take(&per_ip, ip, cfg.max_per_ip) else {
            incoming.refuse();
            metrics.refuse("per_ip");
            continue;
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            metrics.refuse("handshakes");
            continue;
        };
        let limit = limit.clone();
        let sink = sink.clone();
        let metrics = metrics.clone();
        let cfg = cfg.clone();
        let peers = peers.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = match tokio::time::timeout(cfg.handshake_timeout, incoming).await {
                Ok(Ok(c)) => c,
                _ => {
                    metrics.refuse("handshake");
                    return;
                }
            };
            drop(handshake);
            // The connection slot is taken only now: half-open handshakes
            // cannot lock everyone out.
            let Ok(permit) = limit.try_acquire_owned() else {
                metrics.refuse("limit");
                conn.close(2u8.into(), b"busy");
                return;
            };
            if let Some(admit) = &peers {
                let known = tls::peer_identity(&conn).is_some_and(|id| admit(&id));
                if !known {
                    metrics.refuse("unknown_peer");
                    conn.close(1u8.into(), b"not in topology");
                    return;
                }
            }
            metrics.inbound_connections.inc();
            serve_connection(conn, sink, metrics.clone(), &cfg).await;
            metrics.inbound_connections.dec();
            drop(permit);
        });
    }
}

/// Reads frames from every unidirectional stream the peer opens on `conn`
/// until the connection closes. Clients use it on their gateway connection.
pub async fn serve_connection(
    conn: quinn::Connection,
    sink: Arc<dyn FrameSink>,
    metrics: LinkMetrics,
    cfg: &LinkConfig,
) {
    let bucket = cfg.inbound_rate.map(|rate| {
        Arc::new(Mutex::new(Bucket {
            rate,
            burst: cfg.inbound_burst.max(1.0),
            tokens: cfg.inbound_burst.max(1.0),
            last: tokio::time::Instant::now(),
        }))
    });
    // A peer may open streams; each gets a reader, and the connection's
    // stream limit (transport config) bounds how many run at once.
    while let Ok(recv) = conn.accept_uni().await {
        tokio::spawn(read_stream(
            recv,
            PeerConn::new(&conn),
            sink.clone(),
            metrics.clone(),
            bucket.clone(),
        ));
    }
}

async fn read_stream(
    mut recv: quinn::RecvStream,
    conn: PeerConn,
    sink: Arc<dyn FrameSink>,
    metrics: LinkMetrics,
    bucket: Option<Arc<Mutex<Bucket>>>,
) {
    let mut dec = FrameDecoder::new();
    // quinn's own chunks, not a copy of them into a buffer of ours: one
    // copy of every frame fewer (the decoder keeps what spans two chunks).
    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
        dec.push(&chunk.bytes);
        while let Some(body) = dec.next_body() {
            if let Some(b) = &bucket
                && !b.lock().unwrap_or_else(|p| p.into_inner()).take()
            {
                metrics.drop("rate_limited");
                continue;
            }
            match frame::decode_body(body) {
                Ok(f) => {
                    metrics.frames_in.inc();
                    sink.on_frame(f, &conn);
                }
                Err(_) => metrics.drop("malformed"),
            }
        }
    }
}

/// One connection or handshake counted against its IP address; given
/// back when dropped.
struct IpSlot {
    map: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl IpSlot {
    fn take(
        map: &Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<Self> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

struct Peer {
    addr: SocketAddr,
    tx: mpsc::Sender<Vec<u8>>,
}

/// Outbound links to many peers, one task and one bounded queue each.
#[derive(Clone)]
pub struct Links {
    endpoint: quinn::Endpoint,
    creds: tls::Credentials,
    peers: Arc<Mutex<HashMap<NodeId, Peer>>>,
    /// Bytes queued for all peers together.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Told when connects to a peer keep failing.
    unreachable: Arc<tokio::sync::Notify>,
    cfg: LinkConfig,
    metrics: LinkMetrics,
}

impl Links {
    /// Outbound links dialled from `endpoint`, proving `creds` to each peer.
    pub fn new(
        endpoint: quinn::Endpoint,
        creds: tls::Credentials,
        cfg: LinkConfig,
        metrics: LinkMetrics,
    ) -> Self {
        Self {
            endpoint,
            creds,
            peers: Arc::default(),
            queued: Arc::default(),
            unreachable: Arc::default(),
            cfg,
            metrics,
        }
    }

    /// Notified when connects to a peer fail (the first two times, then
    /// every third): the peer may have moved, so the node should refresh
    /// its topology now rather than at its next periodic refresh.
    pub fn unreachable(&self) -> Arc<tokio::sync::Notify> {
        self.unreachable.clone()
    }

    /// Keeps the links to the peers `keep` accepts (the nodes of the
    /// current and next topology) and ends the others: their tasks stop
    /// and their queued frames are dropped (`evicted`). Returns how many
    /// went.
    pub fn retain(&self, keep: impl Fn(&NodeId) -> bool) -> usize {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let before = peers.len();
        peers.retain(|id, _| keep(id));
        before - peers.len()
    }

    /// Bytes queued for all peers together.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues an encoded frame for `peer` at `addr`. Returns false if it was
    /// dropped (queue full or too many peers); the drop is counted.
    pub fn send(&self, peer: NodeId, addr: SocketAddr, frame: Vec<u8>) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let stale = peers
            .get(&peer)
            .is_some_and(|p| p.addr != addr || p.tx.is_closed());
        if stale {
            peers.remove(&peer);
        }
        if !peers.contains_key(&peer) {
            if peers.len() >= self.cfg.max_peers {
                self.metrics.drop("too_many_peers");
                return false;
            }
            let (tx, rx) = mpsc::channel(self.cfg.queue_capacity);
            tokio::spawn(peer_task(
                self.endpoint.clone(),
                self.creds.clone(),
                peer,
                addr,
                rx,
                self.cfg.clone(),
                self.metrics.clone(),
                self.queued.clone(),
                self.unreachable.clone(),
            ));
            peers.insert(peer, Peer { addr, tx });
        }
        let Some(p) = peers.get(&peer) else {
            return false;
        };
        use std::sync::atomic::Ordering::Relaxed;
        let len = frame.len();
        if self.queued.fetch_add(len, Relaxed) + len > self.cfg.max_queued_bytes {
            self.queued.fetch_sub(len, Relaxed);
            self.metrics.drop("node_queue_full");
            return false;
        }
        match p.tx.try_send(frame) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                true
            }
            Err(_) => {
                self.queued.fetch_sub(len, Relaxed);
                self.metrics.drop("queue_full");
                false
            }
        }
    }

    /// Number of peers with a link task.
    pub fn peer_count(&self) -> usize {
        self.peers.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Stops every link task (their queues are dropped).
    pub fn shutdown(&self) {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Dials `peer` at `addr` anonymously (a client to its gateway), checking
/// it holds the identity key `peer`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, Error> {
    dial(endpoint, peer, addr, None).await
}

/// Dials `peer` at `addr` as the node `me` (node links are mutually
/// authenticated), checking it holds the identity key `peer`.
pub async fn connect_as(
    endpoint: &quinn::Endpoint,
    me: &tls::Credentials,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<quinn::Connection, Error> {
    dial(endpoint, peer, addr, Some(me)).await
}

async fn dial(
    endpoint: &quinn::Endpoint,
    peer: NodeId,
    addr: SocketAddr,
    me: Option<&tls::Credentials>,
) -> Result<quinn::Connection, Error> {
    let cfg = tls::client_config(peer, me)?;
    endpoint
        .connect_with(cfg, addr, tls::SERVER_NAME)
        .map_err(|e| Error::Connect(e.to_string()))?
        .await
        .map_err(|e| Error::Connect(e.to_string()))
}

/// How long a dialler waits for its handshake to be confirmed before it
/// writes anyway.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// Waits, at most [`CONFIRM_WAIT`], until the listener has confirmed the
/// handshake (its HANDSHAKE_DONE frame came); true if it did. A dialler
/// calls it before its first write: until the listener has our Finished
/// it discards our 1-RTT packets (quinn does), so frames written while a
/// lost Finished waits for its retransmission would be lost with them,
/// and those losses collapse the new connection's congestion window for
/// seconds (measured under 30 % loss: docs/reliability.md).
pub async fn confirmed(conn: &quinn::Connection) -> bool {
    let start = tokio::time::Instant::now();
    loop {
        if conn.stats().frame_rx.handshake_done > 0 {
            return true;
        }
        if conn.close_reason().is_some() || start.elapsed() >= CONFIRM_WAIT {
            return false;
        }
        // Polled: quinn has no event for it, and it comes within one round
        // trip of the handshake unless a packet was lost.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Frames per write at most.
const BATCH_FRAMES: usize = 32;

#[allow(clippy::too_many_arguments)]
async fn peer_task(
    endpoint: quinn::Endpoint,
    creds: tls::Credentials,
    peer: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    cfg: LinkConfig,
    metrics: LinkMetrics,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    unreachable: Arc<tokio::sync::Notify>,
) {
    // Whatever is still queued when the task ends (the peer was evicted,
    // the node stops) is dropped and counted.
    struct Leftover<'a> {
        rx: &'a mut mpsc::Receiver<Vec<u8>>,
        metrics: &'a LinkMetrics,
        queued: &'a std::sync::atomic::AtomicUsize,
    }
    impl Leftover<'_> {
        fn drain(&mut self, reason: &str) {
            let (mut n, mut bytes) = (0u64, 0usize);
            while let Ok(f) = self.rx.try_recv() {
                n += 1;
                bytes += f.len();
            }
            if n > 0 {
                self.metrics.queue_depth.sub(n as i64);
                self.metrics.dropped.with_label_values(&[reason]).inc_by(n);
                self.queued
                    .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    impl Drop for Leftover<'_> {
        fn drop(&mut self) {
            self.rx.close();
            self.drain("evicted");
        }
    }
    let mut left = Leftover {
        rx: &mut rx,
        metrics: &metrics,
        queued: &queued,
    };
    let mut backoff = cfg.backoff_min;
    let mut failures = 0u32;
    loop {
        // A node that does not complete a handshake in 5 s is down (UDP:
        // nothing says so sooner); QUIC alone would wait its idle timeout.
        let dialled = tokio::time::timeout(
            Duration::from_secs(5),
            connect_as(&endpoint, &creds, peer, addr),
        )
        .await
        .unwrap_or_else(|_| Err(Error::Connect("no handshake within 5 s".into())));
        let conn = match dialled {
            Ok(c) => {
                if !confirmed(&c).await {
                    tracing::debug!(peer = %hex::encode(&peer[..4]), "handshake not confirmed; writing anyway");
                }
                c
            }
            Err(e) => {
                metrics.connect_failures.inc();
                tracing::debug!(peer = %hex::encode(&peer[..4]), error = %e, "link connect failed");
                if left.rx.is_closed() {
                    return;
                }
                failures += 1;
                if failures <= 2 || failures.is_multiple_of(3) {
                    unreachable.notify_one();
                }
                if failures >= cfg.drop_queue_after_failures {
                    left.drain("peer_unreachable");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        let Ok(mut send) = conn.open_uni().await else {
            metrics.connect_failures.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cfg.backoff_max);
            continue;
        };
        // The backoff resets only once frames went through: a peer that
        // completes the handshake and then closes (a node that does not
        // know us yet) is not dialled again in a tight loop.
        let mut delivered = false;
        // Frames go to quinn as they are (`Bytes` owns each frame's buffer):
        // no copy into a batch buffer, none into quinn's send buffer.
        let mut batch: Vec<bytes::Bytes> = Vec::with_capacity(BATCH_FRAMES);
        let mut last_write: Option<tokio::time::Instant> = None;
        let rx = &mut *left.rx;
        loop {
            let Some(f) = rx.recv().await else {
                let _ = send.finish();
                conn.close(0u8.into(), b"shutdown");
                return;
            };
            batch.push(f.into());
            let mut waited = false;
            // Frames arriving faster than one per `coalesce` (a busy node:
            // each worker hands over one frame per peel) are gathered into
            // one write; written one by one, each would cost a datagram, an
            // ACK and a wake-up at both ends (measured: half the node's
            // non-Sphinx CPU at full load).
            let busy = last_write.is_some_and(|t| t.elapsed() < cfg.coalesce);
            while batch.len() < BATCH_FRAMES {
                match rx.try_recv() {
                    Ok(f) => batch.push(f.into()),
                    // Under load, wait a moment for more frames: one write of
                    // many frames costs far less than many writes of one.
                    Err(_) if !waited && !cfg.coalesce.is_zero() && (batch.len() > 1 || busy) => {
                        waited = true;
                        tokio::time::sleep(cfg.coalesce).await;
                    }
                    Err(_) => break,
                }
            }
            let n = batch.len();
            metrics.queue_depth.sub(n as i64);
            let bytes: usize = batch.iter().map(|b| b.len()).sum();
            queued.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
            let written = send.write_all_chunks(&mut batch).await;
            batch.clear();
            if written.is_err() {
                metrics
                    .dropped
                    .with_label_values(&["link_error"])
                    .inc_by(n as u64);
                break;
            }
            metrics.frames_out.inc_by(n as u64);
            last_write = Some(tokio::time::Instant::now());
            if !delivered {
                delivered = true;
                backoff = cfg.backoff_min;
                failures = 0;
            }
        }
        if !delivered {
            metrics.connect_failures.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cfg.backoff_max);
        }
    }
}
