//! The authority's HTTP server: its own accept loop so that every
//! connection and request is bounded (connections in total and per source
//! address, a token bucket of requests per source address, a deadline for
//! the request head, for each whole request and for each connection), with
//! every refusal counted.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Limits of the HTTP API (`[http]` in the directory's config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Open connections in total; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one source (an IPv4 address or an IPv6 /64).
    pub max_connections_per_ip: usize,
    /// Requests per second one source may make on average.
    pub requests_per_sec_per_ip: f64,
    /// Requests one source may make in a burst.
    pub request_burst_per_ip: f64,
    /// Time a client has to send a request's head, milliseconds.
    pub header_timeout_ms: u64,
    /// Time one request may take, its body and the answer included, ms.
    pub request_timeout_ms: u64,
    /// Longest life of one connection (keep-alive included), ms.
    pub connection_lifetime_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_ip: 32,
            requests_per_sec_per_ip: 20.0,
            request_burst_per_ip: 60.0,
            header_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            connection_lifetime_ms: 60_000,
        }
    }
}

/// Sources tracked at once; past this, new sources are refused until
/// idle ones can be forgotten.
const MAX_SOURCES: usize = 65_536;

/// Where a request comes from: an IPv4 address or an IPv6 /64 (one host
/// usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source([u8; 8], bool);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let mut b = [0; 8];
                b[..4].copy_from_slice(&v4.octets());
                Self(b, false)
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                None => {
                    let mut b = [0; 8];
                    b.copy_from_slice(&v6.octets()[..8]);
                    Self(b, true)
                }
            },
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    conns: usize,
}

/// Per-source connection counts and request token buckets. Time is an
/// argument, so the rules are tested without a clock.
pub struct Limiter {
    limits: HttpLimits,
    sources: Mutex<HashMap<Source, Bucket>>,
}

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source has `max_connections_per_ip` open already.
    PerIp,
    /// The source spent its request tokens.
    Rate,
    /// `MAX_SOURCES` sources are active.
    Sources,
}

impl Limiter {
    pub fn new(limits: HttpLimits) -> Self {
        Self {
            limits,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Bucket>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bucket of `src`, made (full) if new; `None` if the table is full
    /// of active sources.
    fn bucket<'a>(
        &self,
        map: &'a mut HashMap<Source, Bucket>,
        src: Source,
        now: Instant,
    ) -> Option<&'a mut Bucket> {
        if !map.contains_key(&src) {
            if map.len() >= MAX_SOURCES {
                let (rate, burst) = (
                    self.limits.requests_per_sec_per_ip,
                    self.limits.request_burst_per_ip,
                );
                // Forget sources with no connection whose bucket is full again.
                map.retain(|_, b| {
                    b.conns > 0
                        || b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate
                            < burst
                });
                if map.len() >= MAX_SOURCES {
                    return None;
                }
            }
            map.insert(
                src,
                Bucket {
                    tokens: self.limits.request_burst_per_ip,
                    at: now,
                    conns: 0,
                },
            );
        }
        let b = map.get_mut(&src)?;
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.limits.requests_per_sec_per_ip)
            .min(self.limits.request_burst_per_ip);
        b.at = now;
        Some(b)
    }

    /// Counts a new connection from `src`, if it may open one.
    pub fn connect(&self, src: Source, now: Instant) -> Result<(), Refusal> {
        let mut map = self.lock();
        let b = self.bucket(&mut map, src, now).ok_or(Refusal::Sources)?;
        if b.conns >= self.limits.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        b.conns += 1;
        Ok(())
    }

    /// A connection from `src` closed.
    pub fn disconnect(&self, src: Source) {
        if let Some(b) = self.lock().get_mut(&src) {
            b.conns = b.conns.saturating_sub(1);
        }
    }

    /// Takes one request token of `src`.
    pub fn request(&self, src: Source, now: Instant) -> Result<(), Refusal> {
        let mut map = self.lock();
        let b = self.bucket(&mut map, src, now).ok_or(Refusal::Sources)?;
        if b.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.lock().len()
    }
}

/// Shared by the accept loop and the request middleware.
#[derive(Clone)]
pub(crate) struct Guard {
    pub limiter: Arc<Limiter>,
    pub refused: IntCounterVec,
}

impl Guard {
    fn refuse(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

fn reason(r: Refusal) -> &'static str {
    match r {
        Refusal::PerIp => "per_ip_connections",
        Refusal::Rate => "rate",
        Refusal::Sources => "sources",
    }
}

/// Every request: one token of its source, and a deadline.
pub(crate) async fn limit(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if let Some(src) = req.extensions().get::<Source>().copied()
        && let Err(r) = g.limiter.request(src, Instant::now())
    {
        g.refuse(reason(r));
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "1")],
            "too many requests from this address\n",
        )
            .into_response();
    }
    let deadline = Duration::from_millis(g.limiter.limits.request_timeout_ms);
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            g.refuse("request_timeout");
            (StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response()
        }
    }
}

/// Accepts connections on `listener` and serves `router` on each within the
/// limits, until `shutdown`; open connections then get 5 s to finish.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    guard: Guard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = guard.limiter.limits.clone();
    let total = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            guard.refuse("connections");
            continue;
        };
        let src = Source::of(peer.ip());
        if let Err(r) = guard.limiter.connect(src, Instant::now()) {
            guard.refuse(reason(r));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // Requests this connection has made: a deadline that cuts a
        // connection after some is ordinary keep-alive housekeeping (an
        // idle pooled connection, a long-lived scraper), not a refusal.
        let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = served.clone();
        let svc = hyper::service::service_fn(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                req.extensions_mut().insert(src);
                let mut r = router.clone();
                async move { tower_service::Service::call(&mut r, req.map(axum::body::Body::new)).await }
            },
        );
        let g = guard.clone();
        let mut stop = stop_rx.clone();
        let lifetime = Duration::from_millis(limits.connection_lifetime_ms);
        let header_timeout = Duration::from_millis(limits.header_timeout_ms);
        conns.spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let ended = tokio::time::timeout(lifetime, async {
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
                    }
                }
            })
            .await;
            if served.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                match ended {
                    Err(_) => g.refuse("connection_lifetime"),
                    Ok(Err(e)) if e.is_timeout() => g.refuse("header_timeout"),
                    Ok(_) => {}
                }
            }
            g.limiter.disconnect(src);
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_connections_per_ip: 2,
            requests_per_sec_per_ip: 10.0,
            request_burst_per_ip: 5.0,
            ..HttpLimits::default()
        }
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = Limiter::new(limits());
        let src = Source::of("192.0.2.1".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.request(src, t0), Ok(()));
        }
        assert_eq!(l.request(src, t0), Err(Refusal::Rate));
        // 10/s: 100 ms buys one request, 50 ms none.
        assert_eq!(
            l.request(src, t0 + Duration::from_millis(50)),
            Err(Refusal::Rate)
        );
        assert_eq!(l.request(src, t0 + Duration::from_millis(150)), Ok(()));
        assert_eq!(
            l.request(src, t0 + Duration::from_millis(150)),
            Err(Refusal::Rate)
        );
        // Another source has its own bucket.
        let other = Source::of("192.0.2.2".parse().unwrap());
        assert_eq!(l.request(other, t0), Ok(()));
    }

    #[test]
    fn connections_per_source_are_capped_and_released() {
        let l = Limiter::new(limits());
        let a = Source::of("2001:db8::1".parse().unwrap());
        // The same /64 is the same source.
        let a2 = Source::of("2001:db8::ffff:1".parse().unwrap());
        let b = Source::of("2001:db8:0:1::1".parse().unwrap());
        let now = Instant::now();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(l.connect(a, now), Ok(()));
        assert_eq!(l.connect(a2, now), Ok(()));
        assert_eq!(l.connect(a, now), Err(Refusal::PerIp));
        assert_eq!(l.connect(b, now), Ok(()));
        l.disconnect(a);
        assert_eq!(l.connect(a, now), Ok(()));
        // IPv4-mapped addresses count as the IPv4 address.
        assert_eq!(
            Source::of("::ffff:192.0.2.1".parse().unwrap()),
            Source::of("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn the_source_table_is_bounded_and_forgets_idle_sources() {
        let l = Limiter::new(limits());
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            let src = Source::of(IpAddr::V4(i.into()));
            assert_eq!(l.request(src, t0), Ok(()));
        }
        let late = Source::of("2001:db8::1".parse().unwrap());
        // Every source is still refilling: the newcomer is refused.
        assert_eq!(l.request(late, t0), Err(Refusal::Sources));
        assert_eq!(l.sources(), MAX_SOURCES);
        // A second later every bucket is full again and idle: forgotten.
        assert_eq!(l.request(late, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(l.sources(), 1);
    }
}
