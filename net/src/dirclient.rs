//! HTTP client for the directory authorities' API.
//!
//! Plain HTTP is enough: every document is signed, and what it carries is
//! public. A network has `n` authorities; a topology counts only with
//! signatures from `k` of them ([`Authorities`]), so a client may fetch it
//! from any one that answers.

use crate::Error;
use protocol::topology::{self, Signed, TopologyDocument, TrustPolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest topology, vote or candidate document read from an authority
/// (10,000 nodes take about 3.5 MB).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// How long an idle connection to an authority is kept for reuse: under
/// the authorities' header timeout (`header_timeout_ms`, 5 s by default),
/// after which they close it.
const POOL_IDLE: Duration = Duration::from_secs(2);
/// Largest answer to a registration read from an authority.
const MAX_SMALL_BYTES: usize = 64 * 1024;

/// One directory authority as a node or client is configured with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityRef {
    /// Base URL of its HTTP API, e.g. `http://198.51.100.4:8000`.
    pub url: String,
    /// Its ed25519 public key, 64 hex digits (`umbra directory key`).
    pub key: String,
}

impl AuthorityRef {
    /// The key as bytes, or why not.
    pub fn key_bytes(&self) -> Result<[u8; 32], String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.key.trim(), &mut out)
            .map_err(|e| format!("key {:?} is not 64 hex digits ({e})", self.key))?;
        Ok(out)
    }
}

/// A failed request as an error that says why: reqwest's own message
/// ("error sending request for url …") names no cause; its sources do
/// (timed out, connection refused, closed before the answer).
fn http_error(e: reqwest::Error) -> Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let part = s.to_string();
        if !msg.contains(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        source = s.source();
    }
    Error::Connect(msg)
}

/// Reads at most `max` bytes of a response body.
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Error> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(Error::Connect(format!("answer larger than {max} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > max {
            return Err(Error::Connect(format!("answer larger than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The `Date` header of an answer, as Unix seconds.
fn server_date(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(reqwest::header::DATE)?.to_str().ok()?;
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// A verified topology and what its answer said about our clock.
#[derive(Debug, Clone)]
pub struct Timed {
    /// The document.
    pub doc: TopologyDocument,
    /// The authority's clock minus ours (ms), from the answer's `Date`
    /// header and the request's round trip (`protocol::clock::offset_ms`);
    /// `None` if it sent no `Date`.
    pub offset_ms: Option<i64>,
}

/// Talks to one directory authority.
#[derive(Clone, Debug)]
pub struct DirectoryClient {
    base: String,
    http: reqwest::Client,
}

impl DirectoryClient {
    /// A client for the authority at `base` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base: &str) -> Result<Self, Error> {
        Self::with_timeout(base, Duration::from_secs(10))
    }

    /// As [`Self::new`], with every request bounded by `timeout`.
    pub fn with_timeout(base: &str, timeout: Duration) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // An authority closes a connection idle for its header timeout
            // (5 s by default); a pooled one kept longer was sometimes
            // reused just as it closed and the request failed ("connection
            // closed before message completed": a node warned every other
            // topology refresh). Reuse only within a burst of requests.
            .pool_idle_timeout(POOL_IDLE)
            .no_proxy()
            .build()
            .map_err(http_error)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Registers a signed node descriptor. The error carries the authority's reason.
    pub async fn register(&self, descriptor: &Signed) -> Result<(), Error> {
        let resp = self
            .http
            .post(format!("{}/v1/descriptors", self.base))
            .json(descriptor)
            .send()
            .await
            .map_err(http_error)?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let body = read_capped(resp, MAX_SMALL_BYTES).await.unwrap_or_default();
        Err(Error::Connect(format!(
            "directory {} refused descriptor ({status}): {}",
            self.base,
            String::from_utf8_lossy(&body)
        )))
    }

    /// GETs `path` and parses a signed envelope from it.
    pub async fn get_signed(&self, path: &str) -> Result<Signed, Error> {
        Ok(self.get_signed_dated(path).await?.0)
    }

    /// As [`Self::get_signed`], with the authority's clock when it answered
    /// (its HTTP `Date` header, Unix seconds) if it sent one.
    pub async fn get_signed_dated(&self, path: &str) -> Result<(Signed, Option<u64>), Error> {
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .map_err(http_error)?;
        if !resp.status().is_success() {
            return Err(Error::Connect(format!(
                "directory {} answered {} for {path}",
                self.base,
                resp.status()
            )));
        }
        let date = server_date(&resp);
        let body = read_capped(resp, MAX_DOCUMENT_BYTES).await?;
        Ok((parse_signed(&body)?, date))
    }

    /// Fetches the signed topology of the current epoch (`next = false`) or the next one.
    pub async fn topology(&self, next: bool) -> Result<Signed, Error> {
        self.get_signed(if next {
            "/v1/topology/next"
        } else {
            "/v1/topology"
        })
        .await
    }

    /// The authority's public key, for testnets that do not pin it in advance.
    pub async fn authority_key(&self) -> Result<[u8; 32], Error> {
        let resp = self
            .http
            .get(format!("{}/v1/authority", self.base))
            .send()
            .await
            .map_err(http_error)?;
        let text = read_capped(resp, MAX_SMALL_BYTES).await?;
        parse_authority_key(&text)
    }
}

/// Parses a signed envelope an authority answered with (a topology, vote
/// or candidate); the caller verifies it.
pub fn parse_signed(body: &[u8]) -> Result<Signed, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Connect(e.to_string()))
}

/// Parses an authority's answer to `GET /v1/authority`: its public key in
/// hex, surrounding whitespace allowed.
pub fn parse_authority_key(body: &[u8]) -> Result<[u8; 32], Error> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(String::from_utf8_lossy(body).trim(), &mut out)
        .map_err(|e| Error::Connect(e.to_string()))?;
    Ok(out)
}

/// The authorities of a network and how many must sign: what nodes and
/// clients trust. Topologies are fetched from any authority that gives one
/// with `threshold` valid signatures; descriptors go to all of them.
#[derive(Clone, Debug)]
pub struct Authorities {
    clients: Vec<DirectoryClient>,
    trust: TrustPolicy,
}

impl Authorities {
    /// From configured references: keys must be distinct 64-hex-digit keys,
    /// and `1 ≤ threshold ≤ n`. The error says which of those fails.
    pub fn new(refs: &[AuthorityRef], threshold: usize) -> Result<Self, String> {
        if refs.is_empty() {
            return Err("no directory authority configured".into());
        }
        let mut keys = Vec::new();
        let mut clients = Vec::new();
        for r in refs {
            let k = r.key_bytes()?;
            if keys.contains(&k) {
                return Err(format!("authority key {} is listed twice", r.key));
            }
            keys.push(k);
            clients.push(DirectoryClient::new(&r.url).map_err(|e| e.to_string())?);
        }
        if threshold == 0 || threshold > keys.len() {
            return Err(format!(
                "threshold {threshold} must be between 1 and the {} authorities listed",
                keys.len()
            ));
        }
        Ok(Self {
            clients,
            trust: TrustPolicy {
                authorities: keys,
                threshold,
            },
        })
    }

    /// Whom topologies must be signed by.
    pub fn trust(&self) -> &TrustPolicy {
        &self.trust
    }

    /// The authorities' URLs, in configured order.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.clients.iter().map(DirectoryClient::url)
    }

    /// The first topology (current epoch, or the next with `next`) that
    /// verifies, asking the authorities in a random order; `now_ms` and
    /// `last_seen` as for [`topology::verify_topology`]. A verification
    /// error is preferred to a connection error in the result, since it
    /// names what is wrong.
    pub async fn topology(
        &self,
        next: bool,
        now_ms: u64,
        last_seen: Option<(u64, u64)>,
    ) -> Result<TopologyDocument, Error> {
        self.first_valid(|c| async move {
            let signed = c.topology(next).await.map_err(|e| e.to_string())?;
            Ok(topology::verify_topology(
                &signed,
                &self.trust,
                now_ms,
                last_seen,
            ))
        })
        .await
    }

    /// Asks the authorities, in a random order, until one gives an answer
    /// that `fetch` gets (`Err`: it could not, with why) and verifies
    /// (`Ok(Err)`: it did not). The error says whose fault: authorities
    /// serve only documents with `threshold` of their own signatures, so if
    /// every one of them fails our signature check, our keys or threshold
    /// are wrong ([`Error::Untrusted`]), not the network.
    async fn first_valid<T, Fut>(&self, fetch: impl Fn(DirectoryClient) -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<Result<T, protocol::Error>, String>>,
    {
        let n = self.clients.len();
        let start = rand::random_range(0..n);
        let mut errors = Vec::new();
        let mut untrusted = 0;
        for i in 0..n {
            let c = &self.clients[(start + i) % n];
            match fetch(c.clone()).await {
                Ok(Ok(d)) => return Ok(d),
                Ok(Err(e)) => {
                    untrusted += usize::from(matches!(e, protocol::Error::BadSignature(_)));
                    errors.push(format!("{}: {e}", c.url()));
                }
                Err(e) => errors.push(e),
            }
        }
        let why = format!("no authority gave a valid topology: {}", errors.join("; "));
        Err(if untrusted == n {
            Error::Untrusted(why)
        } else {
            Error::Connect(why)
        })
    }

    /// The current epoch's topology, verified on the authority's clock: for
    /// each answer, `clock()` (our wall clock, Unix ms) is read before and
    /// after the request, the answer's `Date` header gives the offset of the
    /// authority's clock (see [`Timed`]), and the document's freshness is
    /// checked at our time plus that offset. So a process whose clock is
    /// off still accepts the network's current document, and learns by how
    /// much it is off. Otherwise as [`Self::topology`].
    pub async fn current_topology(
        &self,
        clock: impl Fn() -> u64,
        last_seen: Option<(u64, u64)>,
    ) -> Result<Timed, Error> {
        let clock = &clock;
        self.first_valid(|c| async move {
            let sent = clock();
            let (signed, date) = c
                .get_signed_dated("/v1/topology")
                .await
                .map_err(|e| e.to_string())?;
            let received = clock();
            let offset_ms = date.map(|s| protocol::clock::offset_ms(sent, received, s));
            let at = received.saturating_add_signed(offset_ms.unwrap_or(0));
            Ok(
                topology::verify_topology(&signed, &self.trust, at, last_seen)
                    .map(|doc| Timed { doc, offset_ms }),
            )
        })
        .await
    }

    /// Registers `descriptor` with every authority at once; how many accepted,
    /// and the refusals.
    pub async fn register(&self, descriptor: &Signed) -> (usize, Vec<String>) {
        let mut tasks = tokio::task::JoinSet::new();
        for c in &self.clients {
            let (c, d) = (c.clone(), descriptor.clone());
            tasks.spawn(async move { c.register(&d).await });
        }
        let mut ok = 0;
        let mut refused = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => refused.push(e.to_string()),
                Err(e) => refused.push(e.to_string()),
            }
        }
        (ok, refused)
    }
}
