//! Fault injection for tests and evaluation: a wrapper around the QUIC UDP
//! socket that drops, duplicates, reorders and delays datagrams, driven by a
//! seed.
//! (tc/netem is not available on every kernel we run on.)
//!
//! Never for production: it makes links worse on purpose. It is enabled
//! process-wide with [`dangerous_set_link_faults`], which logs a warning, and
//! applies to every endpoint bound afterwards.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::{Rng, SeedableRng};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// What to do to outgoing datagrams; each probability is per datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Drop it.
    pub loss: f64,
    /// Send it twice.
    pub duplicate: f64,
    /// Send it 1–10 ms late, so that datagrams sent after it overtake it.
    pub reorder: f64,
    /// Send it `delay_ms` late (it then also arrives out of order).
    pub delay: f64,
    /// How late a delayed datagram is sent, milliseconds.
    pub delay_ms: u64,
    /// Seed of the decisions (each socket derives its own stream from it).
    pub seed: u64,
}

static GLOBAL: Mutex<Option<LinkFaults>> = Mutex::new(None);
static SOCKETS: AtomicU64 = AtomicU64::new(0);

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
            "dangerous: injecting link faults"
        );
    }
    *GLOBAL.lock().unwrap_or_else(|p| p.into_inner()) = faults;
}

pub(crate) fn current() -> Option<LinkFaults> {
    *GLOBAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A UDP socket that misbehaves as configured.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: LinkFaults,
    rng: Mutex<rand::rngs::StdRng>,
    /// Datagrams dropped so far.
    pub dropped: AtomicU64,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, faults: LinkFaults) -> Self {
        let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            faults,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(
                faults.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )),
            dropped: AtomicU64::new(0),
        }
    }
}

fn uniform(rng: &mut rand::rngs::StdRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, t: &Transmit) -> io::Result<()> {
        let (drop, dup, late) = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let drop = uniform(&mut rng) < self.faults.loss;
            let dup = uniform(&mut rng) < self.faults.duplicate;
            let late = if uniform(&mut rng) < self.faults.reorder {
                Some(1 + rng.next_u64() % 10)
            } else if uniform(&mut rng) < self.faults.delay {
                Some(self.faults.delay_ms)
            } else {
                None
            };
            (drop, dup, late)
        };
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

/// Binds an endpoint at `addr`, through a [`FaultySocket`] if faults are set.
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
        Some(f) => Arc::new(FaultySocket::new(inner, f)),
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
