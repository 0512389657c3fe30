#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod invite;

pub use invite::Invite;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use net::dirclient::Authorities;
pub use net::dirclient::AuthorityRef;
use net::link::{LinkConfig, LinkMetrics};
use protocol::NodeId;
use protocol::cover::{
    ClientStream, DownlinkBudget, Emission, FETCH_COST, LoopOutcome, LoopTracker,
};
use protocol::dropbox::{self, Dropbox, PairSecret};
use protocol::frame::{self, Frame, FrameKind};
use protocol::messages::{
    ACK_BODY, FETCH_SURBS, FetchReply, FetchRequest, Listing, MAX_ACKED_STORED_LEN, MAX_LISTING,
    Request,
};
use protocol::packet::{self, Hop, ReplyKey};
use protocol::reliable::{
    Complete, Fragment, Kind, Outbox, OutboxConfig, Outgoing, Reassembler, Sequencer,
};
pub use protocol::reliable::{MessageId, Progress, Status};
use protocol::topology::{self, TopologyDocument, TopologyNode};
use rand::{Rng, RngExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use x25519_dalek::{PublicKey, StaticSecret};

/// Largest message body [`Client::send`] accepts (16 MiB, sent in fragments).
pub const MAX_BODY_LEN: usize = protocol::reliable::MAX_MESSAGE_SIZE;
/// Bytes of a message each fragment carries: one acked stored message less
/// the encryption and the fragment header.
pub const CHUNK_LEN: usize =
    MAX_ACKED_STORED_LEN - NONCE_LEN - TAG_LEN - protocol::reliable::FRAGMENT_HEADER;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Errors of the SDK. Each says whose fault it is.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unusable (the application's fault).
    #[error("config: {0}")]
    Config(String),
    /// An invite string could not be read (the user pasted something else).
    #[error("invalid invite: {0}")]
    InvalidInvite(String),
    /// The contact is not known (the application's fault).
    #[error("unknown contact {0}")]
    UnknownContact(ContactId),
    /// The message is larger than [`MAX_BODY_LEN`].
    #[error("message of {len} bytes exceeds {max}")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The directory is unreachable or its topology does not verify (network's or directory's fault).
    #[error("directory: {0}")]
    Directory(String),
    /// The topology has no usable route (the network's fault: too few nodes).
    #[error("no route: {0}")]
    NoRoute(String),
    /// The connection to the entry gateway failed.
    #[error(transparent)]
    Net(#[from] net::Error),
    /// The client has shut down.
    #[error("client is closed")]
    Closed,
    /// The outbox is full (`max_outbox_bytes` of messages not yet stored):
    /// the application sends faster than the payload rate (retry later).
    #[error("send queue full")]
    Busy,
}

/// Settings of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The network's directory authorities (URL and public key of each).
    pub authorities: Vec<AuthorityRef>,
    /// Signatures of `authorities` a topology needs (k of n); fewer are refused.
    pub authority_threshold: usize,
    /// The entry gateway to use; `None` picks one at random.
    pub entry_gateway: Option<NodeId>,
    /// How often to fetch every dropbox.
    pub fetch_interval: Duration,
    /// How often to refresh the topology.
    pub topology_refresh: Duration,
    /// Messages buffered for the application.
    pub inbox_capacity: usize,
    /// On connecting (and for a newly added contact), fetch the boxes of this
    /// many past periods (hours), to collect what arrived while offline.
    pub catch_up_periods: u64,
    /// DANGEROUS, evaluation and tests only: send every packet at once with
    /// no cover traffic. An observer then sees exactly when you are active.
    pub dangerous_no_cover: bool,
    /// Transmissions of one fragment before its message is reported failed.
    pub max_attempts: u32,
    /// A message not stored within this time is reported failed.
    pub message_ttl: Duration,
    /// Bytes of messages not yet stored the client holds; beyond it `send` says `Busy`.
    pub max_outbox_bytes: usize,
    /// Time allowed beyond a route's sampled delays for a SURB-ack (links,
    /// the gateway's commit) before the fragment is sent again.
    pub ack_slack: Duration,
    /// A message after a gap in a contact's stream waits this long for the
    /// gap to fill before it is handed over anyway.
    pub reorder_hold: Duration,
    /// A contact's stream met past its start (this client restarted) is
    /// collected this long before its lowest message is handed over.
    pub reorder_settle: Duration,
    /// Bytes of partly received messages held per contact.
    pub max_reassembly_bytes: usize,
}

impl ClientConfig {
    /// A config for a network of one directory authority at `directory_url`
    /// whose key is `authority_hex`.
    pub fn new(directory_url: &str, authority_hex: &str) -> Result<Self, Error> {
        Self::with_authorities(
            vec![AuthorityRef {
                url: directory_url.to_string(),
                key: authority_hex.trim().to_string(),
            }],
            1,
        )
    }

    /// A config for a network of several authorities, of which `threshold`
    /// must sign a topology.
    pub fn with_authorities(
        authorities: Vec<AuthorityRef>,
        threshold: usize,
    ) -> Result<Self, Error> {
        Authorities::new(&authorities, threshold).map_err(Error::Config)?;
        Ok(Self {
            authorities,
            authority_threshold: threshold,
            entry_gateway: None,
            fetch_interval: Duration::from_secs(5),
            topology_refresh: Duration::from_secs(60),
            inbox_capacity: 1024,
            catch_up_periods: 24,
            dangerous_no_cover: false,
            max_attempts: 8,
            message_ttl: Duration::from_secs(3600),
            max_outbox_bytes: 64 * 1024 * 1024,
            ack_slack: Duration::from_secs(3),
            reorder_hold: Duration::from_secs(60),
            reorder_settle: Duration::from_secs(5),
            max_reassembly_bytes: 48 * 1024 * 1024,
        })
    }
}

/// A user's identity: an x25519 key pair. No phone number, no account.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", ContactId(self.public))
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(seed.as_mut());
        Self::from_secret(*seed)
    }

    /// The identity with this secret (for applications that store it).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The secret, to store (encrypted) and restore later.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The public key contacts know this identity by.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// A contact, named by their public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactId(pub [u8; 32]);

impl std::fmt::Display for ContactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..6]))
    }
}

/// A message received from a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Who sent it.
    pub from: ContactId,
    /// The sender's id for it (the same id their status reports use).
    pub id: MessageId,
    /// What they sent.
    pub body: Vec<u8>,
}

struct BoxState {
    dropbox: Dropbox,
    /// Every message with seq ≤ this was received; the next fetch confirms it.
    confirmed: u64,
    /// Received seqs above `confirmed`.
    received: BTreeSet<u64>,
    /// The box may hold more: keep fetching it (true until a reply says otherwise).
    more: bool,
    /// Seqs known to be in the box above `confirmed`: every message with a
    /// seq in `(confirmed, list_end]` is here (replies and listings name
    /// the first messages above a cursor, so their seqs are exact).
    listed: BTreeSet<u64>,
    list_end: u64,
    /// The box holds messages beyond `list_end`.
    beyond: bool,
    /// Window fetches in flight: cursor → sent at.
    outstanding: BTreeMap<u64, Instant>,
}

impl BoxState {
    fn new(dropbox: Dropbox) -> Self {
        Self {
            dropbox,
            confirmed: 0,
            received: BTreeSet::new(),
            more: true,
            listed: BTreeSet::new(),
            list_end: 0,
            beyond: false,
            outstanding: BTreeMap::new(),
        }
    }

    /// Where a probe (a fetch with a listing) starts: above what is known.
    fn probe_cursor(&self) -> u64 {
        self.list_end.max(self.confirmed)
    }

    /// The listed seq before `x`, or `confirmed`.
    fn before(&self, x: u64) -> u64 {
        self.listed
            .range(..x)
            .next_back()
            .copied()
            .unwrap_or(self.confirmed)
            .max(self.confirmed)
    }

    /// The next window fetch's cursor: just below the first listed message
    /// neither received nor asked for within `timeout`; records it as asked.
    fn next_window(&mut self, timeout: Duration) -> Option<u64> {
        self.outstanding.retain(|_, at| at.elapsed() < timeout);
        if self.outstanding.len() >= FETCH_WINDOW {
            return None;
        }
        let x = self.listed.iter().copied().find(|x| {
            if self.received.contains(x) {
                return false;
            }
            // A fetch at cursor c answers the FETCH_SURBS listed seqs above c.
            let mut c = self.before(*x);
            for _ in 0..FETCH_SURBS {
                if self.outstanding.contains_key(&c) {
                    return false;
                }
                if c <= self.confirmed {
                    break;
                }
                c = self.before(c);
            }
            true
        })?;
        let c = self.before(x);
        self.outstanding.insert(c, Instant::now());
        Some(c)
    }

    /// A reply or listing named `seqs`: the first messages above `cursor`
    /// (and `remaining` more), answering a fetch sent when the box was known
    /// up to `known` (its [`probe_cursor`](Self::probe_cursor) then). Then
    /// confirms every message received in a row.
    fn learn(&mut self, cursor: u64, known: u64, seqs: &[u64], remaining: u32) {
        // Only a run that starts within what is known extends it.
        if cursor <= self.probe_cursor() {
            // The answer is exact for (cursor, its last seq]: anything listed
            // there and missing from it is gone (expired at the gateway).
            // An empty answer proves only that what was known when the fetch
            // left is gone: replies overtake each other in the mixnet, and a
            // message listed since may have been stored after the gateway
            // answered. (Forgetting it would let a later confirmation delete
            // it unread.) Seqs grow, so a non-empty answer has no such gap.
            let upto = match seqs.last() {
                Some(l) => *l,
                None if remaining == 0 => known,
                None => cursor,
            };
            let from = cursor.saturating_add(1);
            // (A bad gateway may name seqs at or below the cursor: no range.)
            let gone: Vec<u64> = if upto >= from {
                self.listed
                    .range(from..=upto)
                    .filter(|x| seqs.binary_search(x).is_err())
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            for x in gone {
                self.listed.remove(&x);
            }
            for s in seqs.iter().filter(|s| **s > self.confirmed) {
                self.listed.insert(*s);
            }
            if let Some(last) = seqs.last()
                && *last >= self.list_end
            {
                self.list_end = *last;
                self.beyond = remaining > 0;
            } else if seqs.is_empty() && cursor >= self.list_end && known >= self.list_end {
                self.beyond = false;
            }
        }
        while let Some(x) = self.listed.first().copied() {
            if !self.received.contains(&x) {
                break;
            }
            self.listed.pop_first();
            self.confirmed = x;
        }
        let confirmed = self.confirmed;
        self.received.retain(|s| *s > confirmed);
        self.outstanding.retain(|c, _| *c >= confirmed);
    }

    /// Whether a fetched message with this seq is new to us.
    fn wants(&self, seq: u64) -> bool {
        seq > self.confirmed && !self.received.contains(&seq)
    }

    /// Listed messages not received yet.
    fn unread(&self) -> usize {
        self.listed
            .iter()
            .filter(|s| !self.received.contains(s))
            .count()
    }
}

struct Contact {
    name: String,
    pair: PairSecret,
    inbound: HashMap<u64, BoxState>,
    /// Past periods were fetched once since the contact was added or we connected.
    caught_up: bool,
}

struct Pending {
    key: ReplyKey,
    contact: [u8; 32],
    period: u64,
    /// The seq the fetch's answers start above: `max(after_seq, cursor)`.
    cursor: u64,
    /// How far the box was known when the fetch left.
    known: u64,
    created: Instant,
}

/// Window fetches of one box in flight at once while it holds more (each
/// returns up to [`FETCH_SURBS`] messages): enough to drain a box at the
/// payload rate across a round trip of several seconds.
const FETCH_WINDOW: usize = 32;
/// A queued fetch: a probe (answers from above what is known, with a listing).
const PROBE: u16 = 0;
/// A queued fetch: a window fetch of listed messages not yet received.
const WINDOW: u16 = 1;

const MAX_PENDING: usize = 20_000;

/// Latest status per message, for the most recent messages.
#[derive(Default)]
struct StatusBoard {
    map: HashMap<MessageId, Status>,
    order: VecDeque<MessageId>,
}

impl StatusBoard {
    const CAP: usize = 100_000;
    fn set(&mut self, id: MessageId, s: Status) {
        // Read is final (even after a failure report: the message was
        // stored after all and only its acks were lost); Stored does not go
        // back to Sent.
        if let Some(old) = self.map.get(&id)
            && (*old == Status::Read || (*old == Status::Stored && s == Status::Sent))
        {
            return;
        }
        if self.map.insert(id, s).is_none() {
            self.order.push_back(id);
            if self.order.len() > Self::CAP
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
        }
    }
}

#[derive(Default)]
struct CoverCounters {
    downlink_dummies: AtomicU64,
    real: AtomicU64,
    fetches: AtomicU64,
    drop_cover: AtomicU64,
    loops_sent: AtomicU64,
    loops_returned: AtomicU64,
    loops_late: AtomicU64,
    loops_lost: AtomicU64,
}

/// What the client's Poisson stream has sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoverStats {
    /// Real packets (messages).
    pub real: u64,
    /// Fetch requests (sent in place of drop cover).
    pub fetches: u64,
    /// Drop-cover packets.
    pub drop_cover: u64,
    /// Loops sent.
    pub loops_sent: u64,
    /// Loops that came back within their expected time (sampled delays + 2 s).
    pub loops_returned: u64,
    /// Loops that came back later than that: a hop held them.
    pub loops_late: u64,
    /// Dummy frames of the constant-rate downlink received (the gateway
    /// sends them when it holds nothing for this client).
    pub downlink_dummies: u64,
    /// Loops not back 30 s after their expected time: a broken route, or
    /// someone dropping packets (n−1 attack).
    pub loops_lost: u64,
}
const PENDING_TTL: Duration = Duration::from_secs(120);
/// What a loop carries (sealed: only its identifier names it).
const LOOP_BODY: &[u8] = b"loop";

struct Inner {
    cfg: ClientConfig,
    identity: Identity,
    /// Where our entry gateway hands us SURB replies. Random per session.
    address: [u8; 32],
    entry: TopologyNode,
    dir: Authorities,
    /// What the constant-rate downlink can carry: fetches wait for it.
    downlink: Mutex<DownlinkBudget>,
    topology: RwLock<Arc<TopologyDocument>>,
    contacts: Mutex<HashMap<[u8; 32], Contact>>,
    pending: Mutex<HashMap<[u8; 16], Pending>>,
    /// Messages being delivered (fragments, acks, retransmission).
    outbox: Mutex<Outbox<[u8; 32]>>,
    /// SURB-acks in flight: identifier → (reply key, sent at).
    acks: Mutex<HashMap<[u8; 16], (ReplyKey, Instant)>>,
    /// Partly received messages.
    reassembly: Mutex<Reassembler<[u8; 32]>>,
    /// Per-contact ordering.
    sequencer: Mutex<Sequencer<[u8; 32]>>,
    /// This client run's session number (seqs restart with it).
    session: u64,
    /// Next seq per contact.
    next_seq: Mutex<HashMap<[u8; 32], u64>>,
    /// Latest status of recent messages.
    statuses: Mutex<StatusBoard>,
    status_tx: broadcast::Sender<(MessageId, Status)>,
    /// Receipts to send, batched per contact.
    receipts_due: Mutex<HashMap<[u8; 32], Vec<MessageId>>>,
    /// Messages the inbox had no room for yet.
    overflow: Mutex<VecDeque<Received>>,
    /// Wakes the sender when there is something to send (without cover).
    wake: Notify,
    out: mpsc::Sender<Vec<u8>>,
    /// The Loopix stream's clocks: payload ticks and loop ticks.
    stream: Mutex<ClientStream<()>>,
    /// Fetches due, sent in payload ticks that find no real packet.
    /// (contact, period, skip)
    fetches: Mutex<VecDeque<([u8; 32], u64, u16)>>,
    /// Loops in flight: identifier → sent at.
    loops: Mutex<LoopTracker>,
    /// Origin of the client's clock (Poisson stream, loops, reliability).
    clock: Instant,
    cover: CoverCounters,
    inbox: mpsc::Sender<Received>,
    stop: watch::Sender<bool>,
    local_addr: Mutex<Option<std::net::SocketAddr>>,
    /// The current connection to the entry gateway, for its byte counts.
    conn: Mutex<Option<quinn::Connection>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A connected client. Cheap to clone; when the last clone is dropped the
/// client shuts down.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _guard: Arc<StopOnDrop>,
}

/// Stops the background tasks when the last [`Client`] handle goes away.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Receives the messages contacts send.
pub type Inbox = mpsc::Receiver<Received>;

impl Client {
    /// Fetches and verifies the topology, connects to an entry gateway and
    /// starts fetching. Returns the client and its inbox.
    pub async fn connect(cfg: ClientConfig, identity: Identity) -> Result<(Client, Inbox), Error> {
        net::install_crypto_provider();
        let dir =
            Authorities::new(&cfg.authorities, cfg.authority_threshold).map_err(Error::Config)?;
        let topo = dir
            .topology(false, now_ms(), None)
            .await
            .map_err(|e| Error::Directory(e.to_string()))?;
        let gateways: Vec<&TopologyNode> = topo
            .gateways()
            .filter(|g| g.client_socket_addr().is_some())
            .collect();
        let entry = match cfg.entry_gateway {
            Some(id) => gateways.iter().find(|g| g.identity == id).copied(),
            None if gateways.is_empty() => None,
            None => Some(gateways[rand::rng().random_range(0..gateways.len())]),
        }
        .cloned()
        .ok_or_else(|| Error::NoRoute("no entry gateway in the topology".into()))?;

        let mut address = [0u8; 32];
        rand::rng().fill_bytes(&mut address);
        let (out_tx, out_rx) = mpsc::channel(4096);
        let (inbox_tx, inbox_rx) = mpsc::channel(cfg.inbox_capacity.max(1));
        let (stop, _) = watch::channel(false);
        let params = topo.params;
        let cover_on = !cfg.dangerous_no_cover;
        if !cover_on {
            tracing::warn!(
                "dangerous_no_cover: sending without cover traffic; never do this for real users"
            );
        }
        let stream = ClientStream::new(
            params.lambda_payload,
            params.lambda_loop,
            // Nothing is queued in the stream: each payload tick asks the
            // outbox, then the fetch queue, for a real packet.
            1,
            cover_on,
            0.0,
            &mut rand::rng(),
        );
        let outbox = Outbox::new(OutboxConfig {
            max_attempts: cfg.max_attempts.max(1),
            ttl: cfg.message_ttl.as_secs_f64(),
            max_bytes: cfg.max_outbox_bytes,
            ..OutboxConfig::default()
        });
        let reassembly = Reassembler::new(cfg.max_reassembly_bytes, cfg.message_ttl.as_secs_f64());
        let sequencer = Sequencer::new(
            cfg.reorder_hold.as_secs_f64(),
            cfg.reorder_settle.as_secs_f64(),
            10_000,
        );
        let inner = Arc::new(Inner {
            stream: Mutex::new(stream),
            fetches: Mutex::new(VecDeque::new()),
            loops: Mutex::new(LoopTracker::standard(MAX_PENDING)),
            clock: Instant::now(),
            cover: CoverCounters::default(),
            cfg,
            identity,
            address,
            entry,
            dir,
            downlink: Mutex::new(DownlinkBudget::new(
                params.lambda_downlink,
                if cover_on { params.lambda_loop } else { 0.0 },
                0.0,
            )),
            topology: RwLock::new(Arc::new(topo)),
            contacts: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            outbox: Mutex::new(outbox),
            acks: Mutex::new(HashMap::new()),
            reassembly: Mutex::new(reassembly),
            sequencer: Mutex::new(sequencer),
            session: rand::rng().random(),
            next_seq: Mutex::new(HashMap::new()),
            statuses: Mutex::new(StatusBoard::default()),
            status_tx: broadcast::channel(4096).0,
            receipts_due: Mutex::new(HashMap::new()),
            overflow: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            out: out_tx,
            inbox: inbox_tx,
            stop,
            local_addr: Mutex::new(None),
            conn: Mutex::new(None),
        });
        // Connect once before returning, so configuration errors surface here.
        let conn = inner.dial().await?;
        tokio::spawn(connection_task(inner.clone(), out_rx, conn));
        tokio::spawn(fetch_task(inner.clone()));
        tokio::spawn(sender_task(inner.clone()));
        tokio::spawn(topology_task(inner.clone()));
        let guard = Arc::new(StopOnDrop(inner.stop.clone()));
        Ok((
            Client {
                inner,
                _guard: guard,
            },
            inbox_rx,
        ))
    }

    /// The verified topology the client routes by (refreshed every
    /// `topology_refresh` and at each epoch).
    pub fn topology(&self) -> Arc<TopologyDocument> {
        self.inner.topology()
    }

    /// This client's identity's public key.
    pub fn id(&self) -> ContactId {
        ContactId(self.inner.identity.public)
    }

    /// An invite string to give to someone (any channel: it holds only a public key and a name).
    pub fn invite(&self, name: &str) -> String {
        Invite {
            public: self.inner.identity.public,
            name: name.to_string(),
        }
        .to_string()
    }

    /// Adds a contact from their invite string.
    pub fn add_contact(&self, invite: &str) -> Result<ContactId, Error> {
        let inv: Invite = invite.parse()?;
        if inv.public == self.inner.identity.public {
            return Err(Error::InvalidInvite("that is your own invite".into()));
        }
        // A key of small order would make the pair secret follow from public keys.
        let pair = PairSecret::derive(&self.inner.identity.secret, &inv.public)
            .map_err(|e| Error::InvalidInvite(format!("unusable contact key: {e}")))?;
        self.inner
            .contacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                inv.public,
                Contact {
                    name: inv.name,
                    pair,
                    inbound: HashMap::new(),
                    caught_up: false,
                },
            );
        Ok(ContactId(inv.public))
    }

    /// The name a contact gave in their invite.
    pub fn contact_name(&self, id: &ContactId) -> Option<String> {
        self.inner
            .contacts
            .lock()
            .ok()?
            .get(&id.0)
            .map(|c| c.name.clone())
    }

    /// Sends `body` (up to [`MAX_BODY_LEN`]) to `to`. It is split into
    /// fragments, each end-to-end encrypted for the pair and stored in the
    /// pair's dropbox through the mixnet, acknowledged by the gateway and
    /// retransmitted until stored. Returns the message's id at once; follow
    /// it with [`Client::status`], [`Client::progress`] or
    /// [`Client::subscribe_status`]. Every message ends `Stored` (then
    /// `Read`) or failed: none is lost silently.
    pub async fn send(&self, to: &ContactId, body: &[u8]) -> Result<MessageId, Error> {
        if body.len() > MAX_BODY_LEN {
            return Err(Error::MessageTooLarge {
                len: body.len(),
                max: MAX_BODY_LEN,
            });
        }
        if !self
            .inner
            .contacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&to.0)
        {
            return Err(Error::UnknownContact(*to));
        }
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        // The seq lock is held until the message is queued: concurrent sends
        // to one contact must not share a seq, and only a queued message
        // takes one, so the receiver sees no gap.
        let mut seqs = self
            .inner
            .next_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let next = seqs.entry(to.0).or_insert(1);
        let seq = *next;
        let now = self.inner.now();
        self.inner
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(
                Outgoing {
                    id,
                    to: to.0,
                    kind: Kind::Message,
                    session: self.inner.session,
                    seq,
                    body: body.to_vec(),
                },
                CHUNK_LEN,
                now,
            )
            .map_err(|_| Error::Busy)?;
        *next = seq + 1;
        drop(seqs);
        self.inner.publish_events();
        self.inner.wake.notify_one();
        Ok(id)
    }

    /// The latest status of a recent message sent by this client.
    pub fn status(&self, id: &MessageId) -> Option<Status> {
        self.inner.publish_events();
        self.inner
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(id)
            .copied()
    }

    /// Fragments of a message being sent that the dropbox gateway has
    /// acknowledged (`None` once it is stored or failed).
    pub fn progress(&self, id: &MessageId) -> Option<Progress> {
        self.inner
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .progress(id)
    }

    /// Every status change from now on: queued → sent → stored → read, or
    /// failed. A receiver that falls behind loses old events (see
    /// [`Client::status`] for the latest).
    pub fn subscribe_status(&self) -> broadcast::Receiver<(MessageId, Status)> {
        self.inner.status_tx.subscribe()
    }

    /// Messages not yet stored, and bytes of them held.
    pub fn outbox_len(&self) -> (usize, usize) {
        let o = self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner());
        (o.pending(), o.bytes())
    }

    /// Counts of the cover stream: what was sent, and which loops came back.
    pub fn cover_stats(&self) -> CoverStats {
        let c = &self.inner.cover;
        self.inner.expire_loops();
        CoverStats {
            real: c.real.load(Ordering::Relaxed),
            fetches: c.fetches.load(Ordering::Relaxed),
            drop_cover: c.drop_cover.load(Ordering::Relaxed),
            loops_sent: c.loops_sent.load(Ordering::Relaxed),
            loops_returned: c.loops_returned.load(Ordering::Relaxed),
            loops_late: c.loops_late.load(Ordering::Relaxed),
            loops_lost: c.loops_lost.load(Ordering::Relaxed),
            downlink_dummies: c.downlink_dummies.load(Ordering::Relaxed),
        }
    }

    /// UDP bytes sent and received on the current connection to the entry
    /// gateway (QUIC and TLS overhead included; reset on reconnect).
    pub fn traffic(&self) -> (u64, u64) {
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or((0, 0), |c| {
                let s = c.stats();
                (s.udp_tx.bytes, s.udp_rx.bytes)
            })
    }

    /// The local UDP address of the connection to the entry gateway.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        *self
            .inner
            .local_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the client's tasks and closes its connection.
    pub fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
    }
}

fn seal(dropbox: &Dropbox, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&dropbox.content_key));
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &dropbox.id,
            },
        )
        .map_err(|_| Error::Config("encryption failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(dropbox: &Dropbox, ciphertext: &[u8]) -> Option<Vec<u8>> {
    if ciphertext.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&dropbox.content_key));
    let (nonce, ct) = ciphertext.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: &dropbox.id,
            },
        )
        .ok()
}

/// One node per mix layer, each uniformly at random.
fn mix_route(topo: &TopologyDocument) -> Result<Vec<Hop>, Error> {
    let mut rng = rand::rng();
    (1..=topology::LAYERS)
        .map(|l| {
            let nodes: Vec<&TopologyNode> = topo.layer(l).collect();
            if nodes.is_empty() {
                return Err(Error::NoRoute(format!("layer {l} is empty")));
            }
            Ok(nodes[rng.random_range(0..nodes.len())].hop())
        })
        .collect()
}

impl Inner {
    /// Seconds on the client's clock (Poisson stream, loops, reliability).
    fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// Moves the outbox's status changes to the board and to subscribers.
    fn publish_events(&self) {
        let events: Vec<(MessageId, Status)> = {
            let mut o = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| o.poll_event()).collect()
        };
        if events.is_empty() {
            return;
        }
        let mut board = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        for (id, st) in events {
            if st.is_failure() {
                tracing::warn!(status = ?st, "a message could not be delivered");
            }
            board.set(id, st);
            let _ = self.status_tx.send((id, st));
        }
    }

    /// The next fragment due, as a frame with a fresh SURB-ack, or `None`.
    fn next_fragment_frame(&self) -> Option<Vec<u8>> {
        let now = self.now();
        let t = self
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next(now)?;
        match self.fragment_frame(&t) {
            Ok((frame, ack, key, timeout)) => {
                {
                    let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
                    if acks.len() >= MAX_PENDING {
                        let horizon = Duration::from_secs(600);
                        acks.retain(|_, (_, at)| at.elapsed() < horizon);
                    }
                    acks.insert(ack, (key, Instant::now()));
                }
                self.outbox.lock().unwrap_or_else(|p| p.into_inner()).sent(
                    &t,
                    ack,
                    now,
                    timeout.as_secs_f64(),
                );
                // Its ack takes one downlink frame.
                self.downlink
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(1.0, now);
                self.publish_events();
                Some(frame)
            }
            Err(e) => {
                tracing::debug!(error = %e, "fragment not built; will retry");
                self.outbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .unsent(&t);
                None
            }
        }
    }

    /// Builds a fragment's acked store: (frame, ack id, reply key, ack timeout).
    fn fragment_frame(
        &self,
        t: &protocol::reliable::Transmission<[u8; 32]>,
    ) -> Result<(Vec<u8>, [u8; 16], ReplyKey, Duration), Error> {
        let topo = self.topology();
        let period = dropbox::period_at(now_ms());
        let dropbox = {
            let contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
            let c = contacts
                .get(&t.to)
                .ok_or(Error::UnknownContact(ContactId(t.to)))?;
            c.pair.dropbox(&self.identity.public, &t.to, period)
        };
        let ciphertext = seal(&dropbox, &t.fragment.encode())?;
        let entry = topo
            .node(&self.entry.identity)
            .ok_or_else(|| Error::NoRoute("entry gateway left the topology".into()))?;
        let mut rng = rand::rng();
        let mut back = mix_route(&topo)?;
        back.push(entry.hop());
        let back_delays = packet::sample_delays(&mut rng, back.len(), Self::delay_mean(&topo));
        let mut ack = [0u8; 16];
        rng.fill_bytes(&mut ack);
        ack[0] |= 1; // non-zero: marks a reply at the gateway
        let (surb, key) = packet::build_surb(&mut rng, &back, &self.address, ack, &back_delays)
            .map_err(|e| Error::Config(e.to_string()))?;
        let request = Request::StoreAcked {
            dropbox: dropbox.id,
            ciphertext,
            reply_epoch: topo.epoch,
            surb,
        }
        .encode()
        .map_err(|e| Error::Config(e.to_string()))?;
        let (frame, there) = self.packet_to_box_timed(&topo, &dropbox, &request)?;
        let max = Duration::from_millis(topo.params.max_delay_ms);
        let back = packet::applied_delay(&back_delays, max);
        Ok((frame, ack, key, there + back + self.cfg.ack_slack))
    }

    /// Receipts, timeouts, stale partial messages, held messages, the inbox.
    fn maintain_reliability(&self) {
        let now = self.now();
        let due: Vec<([u8; 32], Vec<MessageId>)> = self
            .receipts_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (contact, ids) in due {
            // One receipt names up to a fragment's worth of messages.
            for chunk in ids.chunks(CHUNK_LEN / 16) {
                let body: Vec<u8> = chunk.iter().flatten().copied().collect();
                let mut id = [0u8; 16];
                rand::rng().fill_bytes(&mut id);
                let receipt = Outgoing {
                    id,
                    to: contact,
                    kind: Kind::Receipt,
                    session: self.session,
                    seq: 0,
                    body,
                };
                let _ = self
                    .outbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(receipt, CHUNK_LEN, now);
            }
        }
        let ready = self
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .has_ready(now);
        self.publish_events();
        if ready {
            self.wake.notify_one();
        }
        self.reassembly
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire(now);
        let released = self
            .sequencer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire(now);
        for m in released {
            self.hand_over(m);
        }
        self.drain_overflow();
    }

    /// Gives a complete message to the application, and schedules its receipt.
    fn hand_over(&self, m: Complete<[u8; 32]>) {
        self.receipts_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(m.from)
            .or_default()
            .push(m.msg_id);
        self.overflow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Received {
                from: ContactId(m.from),
                id: m.msg_id,
                body: m.body,
            });
        self.drain_overflow();
    }

    fn drain_overflow(&self) {
        let mut q = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(r) = q.pop_front() {
            match self.inbox.try_send(r) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(r)) => {
                    q.push_front(r);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    q.clear();
                    return;
                }
            }
        }
    }

    /// Whether the application has room for more messages.
    fn inbox_has_room(&self) -> bool {
        self.overflow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
            && self.inbox.capacity() > 0
    }

    fn topology(&self) -> Arc<TopologyDocument> {
        self.topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn delay_mean(topo: &TopologyDocument) -> Duration {
        Duration::from_millis(topo.params.mix_delay_mean_ms)
    }

    /// How long a window fetch's replies may take before it is asked again:
    /// twice the mean mixing delay of a round trip, plus transport.
    fn fetch_timeout(topo: &TopologyDocument) -> Duration {
        Self::delay_mean(topo) * 12 + Duration::from_secs(2)
    }

    /// An Inject frame carrying `request` to the gateway hosting `dropbox`.
    fn packet_to_box(&self, dropbox: &Dropbox, request: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self
            .packet_to_box_timed(&self.topology(), dropbox, request)?
            .0)
    }

    /// [`Self::packet_to_box`], also returning the delay its hops will add.
    fn packet_to_box_timed(
        &self,
        topo: &TopologyDocument,
        dropbox: &Dropbox,
        request: &[u8],
    ) -> Result<(Vec<u8>, Duration), Error> {
        let gateways: Vec<NodeId> = topo.gateways().map(|g| g.identity).collect();
        let gw = dropbox
            .gateway(&gateways)
            .and_then(|id| topo.node(&id))
            .ok_or_else(|| Error::NoRoute("no gateway in the topology".into()))?;
        self.packet_via_timed(topo, gw.hop(), &[0; 32], [0; 16], request)
    }

    /// A fetch of `contact`'s box for `period`, with SURBs back to us.
    fn fetch_frame(
        &self,
        contact: &[u8; 32],
        period: u64,
        kind: u16,
    ) -> Result<Option<Vec<u8>>, Error> {
        let topo = self.topology();
        // Check for room before a window fetch is recorded as asked.
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|_, p| p.created.elapsed() < PENDING_TTL);
            if pending.len() + FETCH_SURBS > MAX_PENDING {
                return Ok(None);
            }
        }
        let (request, keys, cursor, known) = {
            let mut contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
            let Some(c) = contacts.get_mut(contact) else {
                return Ok(None);
            };
            let pair = c.pair.clone();
            let me = self.identity.public;
            let state = c
                .inbound
                .entry(period)
                .or_insert_with(|| BoxState::new(pair.dropbox(contact, &me, period)));
            let (cursor, list) = if kind == WINDOW {
                match state.next_window(Self::fetch_timeout(&topo)) {
                    Some(c) => (c, false),
                    None => return Ok(None),
                }
            } else {
                (state.probe_cursor(), true)
            };
            let entry = topo
                .node(&self.entry.identity)
                .ok_or_else(|| Error::NoRoute("entry gateway left the topology".into()))?;
            let mut rng = rand::rng();
            let mut surbs = Vec::with_capacity(FETCH_SURBS);
            let mut keys = Vec::with_capacity(FETCH_SURBS);
            for _ in 0..FETCH_SURBS {
                let mut route = mix_route(&topo)?;
                route.push(entry.hop());
                let delays = packet::sample_delays(&mut rng, route.len(), Self::delay_mean(&topo));
                let mut identifier = [0u8; 16];
                rng.fill_bytes(&mut identifier);
                identifier[0] |= 1; // non-zero: marks a reply at the gateway
                let (surb, key) =
                    packet::build_surb(&mut rng, &route, &self.address, identifier, &delays)
                        .map_err(|e| Error::Config(e.to_string()))?;
                surbs.push(surb);
                keys.push((identifier, key));
            }
            let req = FetchRequest::new_signed_at(
                &state.dropbox,
                state.confirmed,
                cursor,
                list,
                now_ms(),
                topo.epoch,
                surbs,
            );
            let known = state.probe_cursor();
            (
                Request::Fetch(req),
                keys,
                cursor.max(state.confirmed),
                known,
            )
        };
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (id, key) in keys {
                pending.insert(
                    id,
                    Pending {
                        key,
                        contact: *contact,
                        period,
                        cursor,
                        known,
                        created: Instant::now(),
                    },
                );
            }
        }
        let bytes = request.encode().map_err(|e| Error::Config(e.to_string()))?;
        let dropbox = {
            let contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
            contacts
                .get(contact)
                .map(|c| c.pair.dropbox(contact, &self.identity.public, period))
        };
        let Some(dropbox) = dropbox else {
            return Ok(None);
        };
        self.packet_to_box(&dropbox, &bytes).map(Some)
    }

    /// The next queued fetch, if the downlink has room for its replies
    /// (otherwise it waits: replies beyond λ_D would only pile up at the
    /// gateway).
    fn paced_fetch_frame(&self) -> Option<Vec<u8>> {
        let now = self.now();
        if !self
            .downlink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .can_take(FETCH_COST, now)
        {
            return None;
        }
        let f = self.next_fetch_frame()?;
        self.downlink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(FETCH_COST, now);
        Some(f)
    }

    /// The next queued fetch that has something to ask, built, or `None`.
    fn next_fetch_frame(&self) -> Option<Vec<u8>> {
        loop {
            let due = self
                .fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()?;
            match self.fetch_frame(&due.0, due.1, due.2) {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {} // a window with nothing left to ask
                Err(e) => {
                    tracing::debug!(error = %e, "fetch not built");
                    return None;
                }
            }
        }
    }

    /// A drop-cover packet: a `Drop` request to a random gateway.
    fn drop_cover_frame(&self) -> Result<Vec<u8>, Error> {
        let topo = self.topology();
        let gateways: Vec<&TopologyNode> = topo.gateways().collect();
        if gateways.is_empty() {
            return Err(Error::NoRoute("no gateway".into()));
        }
        let gw = gateways[rand::rng().random_range(0..gateways.len())];
        let body = Request::Drop
            .encode()
            .map_err(|e| Error::Config(e.to_string()))?;
        self.packet_via(&topo, gw.hop(), &[0; 32], [0; 16], &body)
    }

    /// A loop: through the mixnet back to ourselves via our own entry gateway.
    ///
    /// The loop is built as a reply through a SURB of our own, so that at
    /// our entry gateway (its final hop) it looks exactly like the replies
    /// it delivers to us: a sealed payload under a random identifier. A
    /// forward packet would arrive there readable, and a gateway that tells
    /// loops from replies could drop replies and pass loops unnoticed.
    fn loop_frame(&self) -> Result<Vec<u8>, Error> {
        let topo = self.topology();
        let entry = topo
            .node(&self.entry.identity)
            .ok_or_else(|| Error::NoRoute("entry gateway left the topology".into()))?;
        let mut rng = rand::rng();
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        id[0] |= 1; // non-zero: a reply at the gateway
        let mut route = mix_route(&topo)?;
        route.push(entry.hop());
        let delays = packet::sample_delays(&mut rng, route.len(), Self::delay_mean(&topo));
        let (surb, _key) = packet::build_surb(&mut rng, &route, &self.address, id, &delays)
            .map_err(|e| Error::Config(e.to_string()))?;
        let (first, pkt) =
            packet::use_surb(&surb, LOOP_BODY).map_err(|e| Error::Config(e.to_string()))?;
        let f = frame::encode_parts(FrameKind::Inject, topo.epoch, &[&first, &pkt])
            .map_err(|e| Error::Config(e.to_string()))?;
        let max = Duration::from_millis(topo.params.max_delay_ms);
        let delays = packet::applied_delay(&delays, max);
        self.expire_loops();
        let now = self.now();
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sent(id, now, delays.as_secs_f64());
        Ok(f)
    }

    /// Counts loops overdue for good as lost.
    fn expire_loops(&self) {
        let now = self.now();
        let lost = self
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire(now);
        self.cover
            .loops_lost
            .fetch_add(lost as u64, Ordering::Relaxed);
    }

    /// An Inject frame for a packet through one node per layer to `last`.
    fn packet_via(
        &self,
        topo: &TopologyDocument,
        last: Hop,
        dest: &[u8; 32],
        id: [u8; 16],
        body: &[u8],
    ) -> Result<Vec<u8>, Error> {
        Ok(self.packet_via_timed(topo, last, dest, id, body)?.0)
    }

    /// [`Self::packet_via`], also returning the delay its hops will add.
    fn packet_via_timed(
        &self,
        topo: &TopologyDocument,
        last: Hop,
        dest: &[u8; 32],
        id: [u8; 16],
        body: &[u8],
    ) -> Result<(Vec<u8>, Duration), Error> {
        let mut route = mix_route(topo)?;
        route.push(last);
        let mut rng = rand::rng();
        let delays = packet::sample_delays(&mut rng, route.len(), Self::delay_mean(topo));
        let pkt = packet::build_packet(&mut rng, &route, dest, id, &delays, body)
            .map_err(|e| Error::Config(e.to_string()))?;
        let f = frame::encode_parts(FrameKind::Inject, topo.epoch, &[&route[0].id, &pkt])
            .map_err(|e| Error::Config(e.to_string()))?;
        let max = Duration::from_millis(topo.params.max_delay_ms);
        Ok((f, packet::applied_delay(&delays, max)))
    }

    /// A reply arrived from our entry gateway.
    fn on_delivery(&self, identifier: [u8; 16], payload: &[u8]) {
        if identifier == [0; 16] {
            // A dummy of the constant-rate downlink: nothing was queued for us.
            self.cover.downlink_dummies.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = self.now();
        let outcome = self
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .returned(&identifier, now);
        match outcome {
            LoopOutcome::OnTime => {
                self.cover.loops_returned.fetch_add(1, Ordering::Relaxed);
                return;
            }
            LoopOutcome::Late => {
                self.cover.loops_late.fetch_add(1, Ordering::Relaxed);
                return;
            }
            LoopOutcome::Unknown => {}
        }
        let ack = self
            .acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&identifier);
        if let Some((key, _)) = ack {
            // Only the SURB's maker can read it: a forged ack does not open.
            if packet::open_reply(&key, payload).is_ok_and(|b| b == ACK_BODY) {
                self.outbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_ack(&identifier);
                self.publish_events();
            }
            return;
        }
        let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&identifier)
        else {
            return;
        };
        let Ok(body) = packet::open_reply(&p.key, payload) else {
            tracing::debug!("unreadable fetch reply");
            return;
        };
        let mut contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = contacts.get_mut(&p.contact) else {
            return;
        };
        let Some(state) = c.inbound.get_mut(&p.period) else {
            return;
        };
        if let Ok(listing) = Listing::decode(&body) {
            state.learn(p.cursor, p.known, &listing.seqs, listing.remaining);
        } else {
            let Ok(reply) = FetchReply::decode(&body) else {
                tracing::debug!("undecodable fetch reply");
                return;
            };
            if let Some((seq, ct)) = &reply.message
                && state.wants(*seq)
            {
                let handed_over = match open(&state.dropbox, ct).map(|b| Fragment::decode(&b)) {
                    Some(Ok(f)) => {
                        if !self.inbox_has_room() {
                            // Application not keeping up: leave it unconfirmed, it comes again.
                            false
                        } else {
                            self.on_fragment(p.contact, f);
                            true
                        }
                    }
                    // Not ours to read (someone wrote junk into the box): confirm it away.
                    _ => true,
                };
                if handed_over {
                    state.received.insert(*seq);
                }
            }
            state.learn(p.cursor, p.known, &reply.seqs, reply.remaining);
            // Listed messages still unread keep an old period's box alive
            // even when this answer (above its cursor) was empty.
            state.more = !reply.seqs.is_empty() || reply.remaining > 0 || state.unread() > 0;
        }
        if self.cfg.dangerous_no_cover {
            return;
        }
        // A box that holds more is drained by a window of fetches at once,
        // and probed for more while listings say there is. Window fetches
        // whose answers did not come in time are asked again.
        let timeout = Self::fetch_timeout(&self.topology());
        state.outstanding.retain(|_, at| at.elapsed() < timeout);
        let want = state
            .unread()
            .div_ceil(FETCH_SURBS)
            .min(FETCH_WINDOW)
            .saturating_sub(state.outstanding.len());
        let window = (p.contact, p.period, WINDOW);
        let probe = (p.contact, p.period, PROBE);
        let probe_now = state.beyond && state.unread() < MAX_LISTING;
        let mut q = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        let queued = q.iter().filter(|x| **x == window).count();
        for _ in queued..want {
            if q.len() < MAX_PENDING {
                q.push_front(window);
            }
        }
        if probe_now && !q.contains(&probe) && q.len() < MAX_PENDING {
            q.push_front(probe);
        }
    }

    /// A fragment from `contact`, decrypted and authenticated.
    fn on_fragment(&self, contact: [u8; 32], f: Fragment) {
        let now = self.now();
        let done = self
            .reassembly
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(contact, f, now);
        let m = match done {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "fragment refused");
                return;
            }
        };
        match m.kind {
            Kind::Receipt => {
                let mut o = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
                for id in m.body.chunks_exact(16) {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(id);
                    o.on_receipt(&a);
                }
                drop(o);
                self.publish_events();
            }
            Kind::Message => {
                let ready = self
                    .sequencer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(m, now);
                for m in ready {
                    self.hand_over(m);
                }
            }
        }
    }

    async fn dial(self: &Arc<Self>) -> Result<quinn::Connection, Error> {
        let addr = self
            .entry
            .client_socket_addr()
            .ok_or_else(|| Error::NoRoute("entry gateway has no client address".into()))?;
        let bind = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let endpoint =
            net::link::client_endpoint(bind.parse().map_err(|_| Error::Config("bind".into()))?)?;
        let conn = net::link::connect(&endpoint, self.entry.identity, addr).await?;
        *self.local_addr.lock().unwrap_or_else(|p| p.into_inner()) = endpoint.local_addr().ok();
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        let me = self.clone();
        let sink = move |f: Frame<'_>, _: &quinn::Connection| {
            if let Some((id, payload)) = f.delivery() {
                me.on_delivery(id, payload);
            }
        };
        let c = conn.clone();
        tokio::spawn(async move {
            net::link::serve_connection(
                c,
                Arc::new(sink),
                LinkMetrics::unregistered(),
                &LinkConfig::default(),
            )
            .await;
        });
        Ok(conn)
    }
}

/// Resolves once the client is told to stop.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Owns the gateway connection: subscribes, writes frames, reconnects with backoff.
async fn connection_task(
    inner: Arc<Inner>,
    mut out: mpsc::Receiver<Vec<u8>>,
    first: quinn::Connection,
) {
    let mut stop = inner.stop.subscribe();
    let mut conn = Some(first);
    let mut backoff = Duration::from_millis(200);
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None => match inner.dial().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach entry gateway; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            },
        };
        let Ok(mut send) = c.open_uni().await else {
            continue;
        };
        let Ok(sub) = frame::encode(FrameKind::Subscribe, 0, &inner.address) else {
            return;
        };
        if send.write_all(&sub).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(200);
        loop {
            tokio::select! {
                f = out.recv() => {
                    let Some(f) = f else { return };
                    if send.write_all(&f).await.is_err() {
                        break;
                    }
                }
                _ = stopped(&mut stop) => {
                    let _ = send.finish();
                    c.close(0u8.into(), b"bye");
                    return;
                }
            }
        }
    }
}

/// Fetches every contact's current and previous box each interval.
async fn fetch_task(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut tick = tokio::time::interval(inner.cfg.fetch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        inner.maintain_reliability();
        let period = dropbox::period_at(now_ms());
        let contacts: Vec<[u8; 32]> = inner
            .contacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let catch_up = inner.cfg.catch_up_periods.max(2);
        for c in contacts {
            // Current and previous period always; older ones once after
            // connecting, and then while they still hold messages.
            let periods: Vec<u64> = {
                let mut cs = inner.contacts.lock().unwrap_or_else(|p| p.into_inner());
                let Some(ct) = cs.get_mut(&c) else { continue };
                let oldest = period.saturating_sub(catch_up - 1);
                let mut ps: Vec<u64> = if ct.caught_up {
                    ct.inbound
                        .iter()
                        .filter(|(k, s)| s.more && **k >= oldest)
                        .map(|(k, _)| *k)
                        .collect()
                } else {
                    (oldest..=period).collect()
                };
                ct.caught_up = true;
                ps.extend([period, period.saturating_sub(1)]);
                ps.sort_unstable();
                ps.dedup();
                ps
            };
            if !inner.cfg.dangerous_no_cover {
                // Fetches ride the payload stream: queue them for idle ticks.
                let mut q = inner.fetches.lock().unwrap_or_else(|p| p.into_inner());
                for p in periods {
                    if !q.contains(&(c, p, 0)) && q.len() < MAX_PENDING {
                        q.push_back((c, p, 0));
                    }
                }
            } else {
                for p in periods {
                    match inner.fetch_frame(&c, p, 0) {
                        Ok(Some(f)) => {
                            if inner.out.send(f).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(error = %e, "fetch not sent"),
                    }
                }
            }
            // Forget boxes of periods we no longer fetch.
            if let Some(ct) = inner
                .contacts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&c)
            {
                ct.inbound
                    .retain(|k, s| *k + 1 >= period || (s.more && *k + catch_up > period));
            }
        }
    }
}

/// Emits the Loopix stream: at each payload tick a due fragment or a due
/// fetch (taking turns when both wait), else drop cover; loops at their own
/// rate. Nothing bypasses it.
async fn sender_task(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut fetch_turn = false;
    if inner.cfg.dangerous_no_cover {
        // Without cover, fragments leave as soon as they are due.
        loop {
            while let Some(f) = inner.next_fragment_frame() {
                inner.cover.real.fetch_add(1, Ordering::Relaxed);
                if inner.out.send(f).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }
    loop {
        let now = inner.now();
        let mut emitted = Vec::new();
        {
            let mut st = inner.stream.lock().unwrap_or_else(|p| p.into_inner());
            let mut rng = rand::rng();
            while let Some((_, e)) = st.poll(now, &mut rng) {
                emitted.push(e);
            }
        }
        for e in emitted {
            let frame = match e {
                Emission::Real(()) | Emission::DropCover => {
                    // A payload tick: a fragment (receipt, retransmission) or a
                    // due fetch, taking turns when both wait, so that a large
                    // upload never starves the client's own fetches; else
                    // drop cover.
                    fetch_turn = !fetch_turn;
                    let real = if fetch_turn {
                        inner
                            .paced_fetch_frame()
                            .map(|f| (f, true))
                            .or_else(|| inner.next_fragment_frame().map(|f| (f, false)))
                    } else {
                        inner
                            .next_fragment_frame()
                            .map(|f| (f, false))
                            .or_else(|| inner.paced_fetch_frame().map(|f| (f, true)))
                    };
                    match real {
                        Some((f, true)) => {
                            inner.cover.fetches.fetch_add(1, Ordering::Relaxed);
                            Ok(f)
                        }
                        Some((f, false)) => {
                            inner.cover.real.fetch_add(1, Ordering::Relaxed);
                            Ok(f)
                        }
                        None => {
                            inner.cover.drop_cover.fetch_add(1, Ordering::Relaxed);
                            inner.drop_cover_frame()
                        }
                    }
                }
                Emission::Loop => {
                    inner.cover.loops_sent.fetch_add(1, Ordering::Relaxed);
                    inner.loop_frame()
                }
            };
            match frame {
                Ok(f) => {
                    if inner.out.send(f).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cover packet not built"),
            }
        }
        let next = inner
            .stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_at();
        let wait = (next - inner.now()).clamp(0.0, 1.0);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Keeps the topology fresh (new epochs bring new Sphinx keys).
async fn topology_task(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        // Refresh periodically, and right after each epoch begins: the new
        // epoch brings new Sphinx keys and a new layer assignment.
        let to_epoch =
            Duration::from_millis(inner.topology().schedule.until_next_ms(now_ms()) + 1_000);
        tokio::select! {
            _ = tokio::time::sleep(inner.cfg.topology_refresh.min(to_epoch)) => {}
            _ = stopped(&mut stop) => return,
        }
        let last = {
            let t = inner.topology();
            Some((t.epoch, t.revision))
        };
        match inner.dir.topology(false, now_ms(), last).await {
            Ok(doc) => {
                // The downlink's rate follows the network's parameters.
                let loops = if inner.cfg.dangerous_no_cover {
                    0.0
                } else {
                    doc.params.lambda_loop
                };
                inner
                    .downlink
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retune(doc.params.lambda_downlink, loops, inner.now());
                *inner.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(doc)
            }
            Err(e) => tracing::warn!(error = %e, "topology refresh failed; keeping the old one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_messages_open_only_with_their_box() {
        let pair = PairSecret::from_bytes([1; 32]);
        let a = pair.dropbox(&[1; 32], &[2; 32], 5);
        let b = pair.dropbox(&[1; 32], &[2; 32], 6);
        let ct = seal(&a, b"hi").unwrap();
        assert_eq!(open(&a, &ct).unwrap(), b"hi");
        assert!(open(&b, &ct).is_none());
        let mut bad = ct.clone();
        bad[20] ^= 1;
        assert!(open(&a, &bad).is_none());
        assert!(open(&a, &ct[..10]).is_none());
    }

    #[test]
    fn window_fetches_ask_for_listed_messages_and_confirm_in_order() {
        let pair = PairSecret::from_bytes([1; 32]);
        let mut st = BoxState::new(pair.dropbox(&[1; 32], &[2; 32], 5));
        let t = Duration::from_secs(60);
        assert_eq!(st.next_window(t), None, "nothing listed yet");
        assert_eq!(st.probe_cursor(), 0);
        // A probe from 0 lists 10..=120 (step 10); its first reply carried 10.
        let all: Vec<u64> = (1..=12).map(|i| i * 10).collect();
        st.received.insert(10);
        st.learn(0, 0, &all, 0);
        assert_eq!(st.confirmed, 10);
        assert_eq!((st.list_end, st.beyond), (120, false));
        // Windows ask just below the first listed messages not yet asked for.
        assert_eq!(st.next_window(t), Some(10)); // answers 20, 30, 40, 50
        assert_eq!(st.next_window(t), Some(50)); // answers 60, 70, 80, 90
        assert_eq!(st.next_window(t), Some(90));
        assert_eq!(st.next_window(t), None, "everything asked for");
        // Replies arrive out of order; confirmation waits for 20.
        for s in [60, 70, 30] {
            st.received.insert(s);
        }
        st.learn(50, 120, &[60, 70, 80, 90], 3);
        assert_eq!(st.confirmed, 10);
        st.received.insert(20);
        st.learn(10, 120, &[20, 30, 40, 50], 7);
        assert_eq!(st.confirmed, 30, "20 and 30 held, 40 missing");
        assert_eq!(st.unread(), 7);
        // A listing from beyond what is known does not extend it.
        st.learn(500, 120, &[510], 0);
        assert!(!st.listed.contains(&510));
        // A probe from the end of the list finds a new message.
        st.learn(st.probe_cursor(), 120, &[130], 0);
        assert_eq!(st.list_end, 130);
        // An answer that skips a listed seq means it expired: forget it.
        st.learn(30, 120, &[50, 60, 70, 80], 4);
        assert!(!st.listed.contains(&40));
        for s in [50, 80] {
            st.received.insert(s);
        }
        st.learn(30, 120, &[50, 60, 70, 80], 4);
        assert_eq!(st.confirmed, 80);
    }

    #[test]
    fn a_late_empty_answer_forgets_only_what_was_known_when_it_left() {
        let pair = PairSecret::from_bytes([1; 32]);
        let mut st = BoxState::new(pair.dropbox(&[1; 32], &[2; 32], 5));
        // Probe A leaves knowing nothing; the box is empty when it arrives.
        // Then 10 and 20 are stored, and probe B lists them first.
        st.learn(0, 0, &[10, 20], 0);
        assert_eq!(st.list_end, 20);
        // A's empty answer comes last: it says nothing about 10 and 20.
        st.learn(0, 0, &[], 0);
        assert!(st.listed.contains(&10) && st.listed.contains(&20));
        // So receiving 20 cannot confirm (delete) 10 unread.
        st.received.insert(20);
        st.learn(0, 20, &[10, 20], 0);
        assert_eq!(st.confirmed, 0);
        assert_eq!(st.next_window(Duration::from_secs(60)), Some(0));
        // An empty answer to a fetch that left knowing 10: it expired.
        st.learn(0, 20, &[], 0);
        assert!(st.listed.is_empty());
        assert_eq!(st.next_window(Duration::from_secs(0)), None);
        // Answers a bad gateway might give do not panic the client.
        st.learn(30, 30, &[], 5);
        st.learn(30, 30, &[7, 3], 0);
    }

    #[test]
    fn a_full_fragment_fits_an_acked_store() {
        let pair = PairSecret::from_bytes([1; 32]);
        let a = pair.dropbox(&[1; 32], &[2; 32], 5);
        let env = vec![0u8; protocol::reliable::FRAGMENT_HEADER + CHUNK_LEN];
        assert_eq!(seal(&a, &env).unwrap().len(), MAX_ACKED_STORED_LEN);
    }

    #[test]
    fn the_status_board_is_bounded_and_never_goes_back() {
        let mut b = StatusBoard::default();
        b.set([1; 16], Status::Stored);
        b.set([1; 16], Status::Sent);
        assert_eq!(b.map[&[1; 16]], Status::Stored);
        b.set([1; 16], Status::Read);
        b.set([1; 16], Status::Stored);
        assert_eq!(b.map[&[1; 16]], Status::Read);
        for i in 0..(StatusBoard::CAP as u64 + 10) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            b.set(id, Status::Queued);
        }
        assert_eq!(b.map.len(), StatusBoard::CAP);
    }

    /// The fetch protocol against a model of the gateway's box (the rules of
    /// `gateway::storage`): requests and replies overtake each other and
    /// replies get lost; no message is ever deleted before it was received,
    /// and once the network settles every message is received.
    mod fetch_model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Default)]
        struct Gateway {
            held: BTreeSet<u64>,
            next: u64,
        }

        struct Req {
            after: u64,
            cursor: u64,
            known: u64,
            list: bool,
        }

        enum Reply {
            Message(Option<u64>, Vec<u64>, u32),
            Listing(Vec<u64>, u32),
        }

        impl Gateway {
            /// Answers a fetch as `storage.rs` does; `Err` names a message
            /// deleted before the client received it.
            fn fetch(&mut self, r: &Req, ever: &BTreeSet<u64>) -> Result<Vec<Reply>, u64> {
                let gone: Vec<u64> = self.held.range(..=r.after).copied().collect();
                for s in gone {
                    if !ever.contains(&s) {
                        return Err(s);
                    }
                    self.held.remove(&s);
                }
                let start = r.after.max(r.cursor);
                let above: Vec<u64> = self.held.range(start + 1..).copied().collect();
                let slots = FETCH_SURBS - usize::from(r.list);
                let msgs: Vec<u64> = above.iter().take(slots).copied().collect();
                let remaining = (above.len() - msgs.len()) as u32;
                let mut out: Vec<Reply> = (0..slots)
                    .map(|i| Reply::Message(msgs.get(i).copied(), msgs.clone(), remaining))
                    .collect();
                if r.list {
                    let l: Vec<u64> = above.iter().take(MAX_LISTING).copied().collect();
                    let after = (above.len() - l.len()) as u32;
                    out.push(Reply::Listing(l, after));
                }
                Ok(out)
            }
        }

        #[derive(Debug, Clone)]
        enum Op {
            Store(u8),
            Probe,
            Window(bool),
            ArriveRequest(usize),
            ArriveReply(usize),
            LoseReply(usize),
            /// The gateway expires a message (its TTL passed).
            Expire(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (1u8..4).prop_map(Op::Store),
                Just(Op::Probe),
                any::<bool>().prop_map(Op::Window),
                any::<usize>().prop_map(Op::ArriveRequest),
                any::<usize>().prop_map(Op::ArriveReply),
                any::<usize>().prop_map(Op::ArriveReply),
                any::<usize>().prop_map(Op::LoseReply),
                any::<usize>().prop_map(Op::Expire),
            ]
        }

        struct World {
            gw: Gateway,
            st: BoxState,
            ever: BTreeSet<u64>,
            requests: Vec<Req>,
            replies: Vec<(u64, u64, Reply)>,
        }

        impl World {
            fn send(&mut self, cursor: u64, list: bool) {
                let known = self.st.probe_cursor();
                let after = self.st.confirmed;
                self.requests.push(Req {
                    after,
                    cursor,
                    known,
                    list,
                });
            }
            fn arrive_request(&mut self, i: usize) -> Result<(), u64> {
                let r = self.requests.remove(i);
                for reply in self.gw.fetch(&r, &self.ever)? {
                    self.replies.push((r.cursor.max(r.after), r.known, reply));
                }
                Ok(())
            }
            fn arrive_reply(&mut self, i: usize) {
                let (cursor, known, reply) = self.replies.remove(i);
                match reply {
                    Reply::Listing(seqs, rem) => self.st.learn(cursor, known, &seqs, rem),
                    Reply::Message(m, seqs, rem) => {
                        if let Some(s) = m
                            && self.st.wants(s)
                        {
                            self.st.received.insert(s);
                            self.ever.insert(s);
                        }
                        self.st.learn(cursor, known, &seqs, rem);
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn nothing_is_deleted_unread_and_everything_arrives(
                ops in proptest::collection::vec(op(), 1..120)
            ) {
                let pair = PairSecret::from_bytes([1; 32]);
                let mut w = World {
                    gw: Gateway { next: 1, ..Gateway::default() },
                    st: BoxState::new(pair.dropbox(&[1; 32], &[2; 32], 5)),
                    ever: BTreeSet::new(),
                    requests: Vec::new(),
                    replies: Vec::new(),
                };
                let mut expired = BTreeSet::new();
                for op in ops {
                    match op {
                        Op::Store(n) => for _ in 0..n {
                            w.gw.held.insert(w.gw.next);
                            w.gw.next += 1;
                        },
                        Op::Probe => { let c = w.st.probe_cursor(); w.send(c, true) }
                        Op::Window(expired) => {
                            let t = if expired { Duration::ZERO } else { Duration::from_secs(3600) };
                            if let Some(c) = w.st.next_window(t) { w.send(c, false) }
                        }
                        Op::ArriveRequest(i) if !w.requests.is_empty() => {
                            let i = i % w.requests.len();
                            if let Err(s) = w.arrive_request(i) {
                                prop_assert!(false, "message {s} deleted unread");
                            }
                        }
                        Op::ArriveReply(i) if !w.replies.is_empty() => {
                            let i = i % w.replies.len();
                            w.arrive_reply(i);
                        }
                        Op::LoseReply(i) if !w.replies.is_empty() => {
                            let i = i % w.replies.len();
                            w.replies.remove(i);
                        }
                        Op::Expire(i) if !w.gw.held.is_empty() => {
                            let s = *w.gw.held.iter().nth(i % w.gw.held.len()).unwrap();
                            w.gw.held.remove(&s);
                            expired.insert(s);
                        }
                        _ => {}
                    }
                }
                // The network settles: everything in flight arrives, then
                // the client fetches (probe and windows) until done.
                for _ in 0..200 {
                    while !w.requests.is_empty() {
                        if let Err(s) = w.arrive_request(0) {
                            prop_assert!(false, "message {s} deleted unread");
                        }
                    }
                    while !w.replies.is_empty() {
                        w.arrive_reply(0);
                    }
                    if w.ever.union(&expired).count() as u64 == w.gw.next - 1
                        && w.st.unread() == 0
                    {
                        break;
                    }
                    let c = w.st.probe_cursor();
                    w.send(c, true);
                    while let Some(c) = w.st.next_window(Duration::ZERO) {
                        w.send(c, false);
                        if w.requests.len() > FETCH_WINDOW { break; }
                    }
                }
                let all: BTreeSet<u64> = (1..w.gw.next).collect();
                let got: BTreeSet<u64> = w.ever.union(&expired).copied().collect();
                prop_assert_eq!(&got, &all, "not every stored message was received");
                // Nothing is left to ask for: no window fetch loops on a
                // message that is gone.
                prop_assert_eq!(w.st.next_window(Duration::ZERO), None);
            }
        }
    }
}
