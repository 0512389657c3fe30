//! Fault injection for tests and evaluation: a wrapper around the QUIC UDP
//! socket that drops, duplicates and reorders datagrams, driven by a seed.
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
    /// Hold it back and send it after the next one.
    pub reorder: f64,
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
            "dangerous: injecting link faults"
        );
    }
    *GLOBAL.lock().unwrap_or_else(|p| p.into_inner()) = faults;
}

pub(crate) fn current() -> Option<LinkFaults> {
    *GLOBAL.lock().unwrap_or_else(|p| p.into_inner())
}

struct Held {
    destination: SocketAddr,
    contents: Vec<u8>,
    ecn: Option<quinn::udp::EcnCodepoint>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
}

/// A UDP socket that misbehaves as configured.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: LinkFaults,
    state: Mutex<(rand::rngs::StdRng, Option<Held>)>,
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
            state: Mutex::new((
                rand::rngs::StdRng::seed_from_u64(
                    faults.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ),
                None,
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
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (drop, dup, hold) = {
            let rng = &mut st.0;
            (
                uniform(rng) < self.faults.loss,
                uniform(rng) < self.faults.duplicate,
                uniform(rng) < self.faults.reorder,
            )
        };
        if drop {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if hold && st.1.is_none() {
            st.1 = Some(Held {
                destination: t.destination,
                contents: t.contents.to_vec(),
                ecn: t.ecn,
                segment_size: t.segment_size,
                src_ip: t.src_ip,
            });
            return Ok(());
        }
        self.inner.try_send(t)?;
        if dup {
            let _ = self.inner.try_send(t);
        }
        if let Some(h) = st.1.take() {
            let _ = self.inner.try_send(&Transmit {
                destination: h.destination,
                ecn: h.ecn,
                contents: &h.contents,
                segment_size: h.segment_size,
                src_ip: h.src_ip,
            });
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

/// Binds an endpoint at `addr`, through a [`FaultySocket`] if faults are set.
pub(crate) fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime"))?;
    let sock = std::net::UdpSocket::bind(addr)?;
    let inner = runtime.wrap_udp_socket(sock)?;
    let socket: Arc<dyn AsyncUdpSocket> = match current() {
        Some(f) => Arc::new(FaultySocket::new(inner, f)),
        None => inner,
    };
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        server,
        socket,
        runtime,
    )
}
