#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod boxes;
mod config;
pub mod content;
pub use content::{Attachment, ContentKind};
mod group;
pub use group::{GroupId, MAX_MEMBERS};
mod invite;
mod ratchet;
pub use ratchet::ENVELOPE_RESERVE;
pub mod state;
pub mod store;
pub mod verify;

/// Entry points for the fuzz targets (`fuzz/` at the repository root): the
/// SDK's parsers of bytes that come from contacts, reachable without a
/// running client. Not part of the supported API.
#[doc(hidden)]
pub mod fuzzing {
    use protocol::dropbox::Dropbox;

    pub use crate::group::{BoxItem, GroupKeys};
    pub use crate::ratchet::{ENVELOPE_VERSION, Reset, TYPE_NORMAL, TYPE_PRE_KEY};

    /// Opens a message sealed for `dropbox` (what a fetch reply carries).
    pub fn open_sealed(dropbox: &Dropbox, ciphertext: &[u8]) -> Option<Vec<u8>> {
        crate::boxes::open(dropbox, ciphertext)
    }

    /// Seals `plaintext` for `dropbox` with a nonce from `rng`.
    pub fn seal<R: rand::CryptoRng + ?Sized>(
        dropbox: &Dropbox,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Option<Vec<u8>> {
        crate::boxes::seal(dropbox, plaintext, rng)
    }

    /// Runs a contact's end-to-end envelope through a fresh Olm account with
    /// no session: what a message from an unknown session meets. `Ok` only
    /// if it opened.
    pub fn open_envelope(their_identity: [u8; 32], envelope: &[u8]) -> Result<Vec<u8>, String> {
        let mut olm = crate::ratchet::Olm::new();
        let mut sessions = crate::ratchet::Sessions::new(their_identity);
        sessions.open(&mut olm, envelope).map_err(|e| match e {
            crate::ratchet::OpenError::Malformed => "malformed".to_string(),
            crate::ratchet::OpenError::Undecryptable(r) => r,
        })
    }
}

/// The SDK guide (docs/sdk-guide.md), included so that its Rust blocks are
/// compiled as doctests and cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../../docs/sdk-guide.md")]
pub struct SdkGuide;

pub use config::{ClientConfig, ClientConfigBuilder, Dangerous};
pub use invite::Invite;
pub use net::dirclient::AuthorityRef;
pub use protocol::reliable::{MessageId, Progress, Status};
pub use state::{
    BATCH_CHUNK_LEN, CHUNK_LEN, ClientState, CoverStats, Event, LOOPS_LOST_IN_A_ROW, MAX_BODY_LEN,
    Now,
};

use net::dirclient::Authorities;
use net::link::{LinkConfig, LinkMetrics};
use protocol::clock::{ClockNews, ClockWatch};
use protocol::frame::{self, Frame, FrameKind};
use protocol::topology::TopologyDocument;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use x25519_dalek::{PublicKey, StaticSecret};

/// Errors of the SDK. Each says whose fault it is.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unusable (the application's fault).
    #[error("config: {0}")]
    Config(String),
    /// An invite string could not be read (the user pasted something else),
    /// or names a key that cannot be used.
    #[error("invalid invite: {0}")]
    InvalidInvite(String),
    /// The contact is not known (the application's fault).
    #[error("unknown contact {0}")]
    UnknownContact(ContactId),
    /// The identity is not hosted by this client (the application's fault).
    #[error("unknown identity {0}")]
    UnknownIdentity(ContactId),
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
    /// The client's store cannot be read or written (local fault: disk,
    /// permissions, a damaged file).
    #[error("client store: {0}")]
    Store(String),
    /// The passphrase does not open the client's store (the user's fault).
    /// Nothing was changed.
    #[error("wrong passphrase for the client store")]
    WrongPassphrase,
    /// A contact of this name is known with another key (the user's or the
    /// contact's decision: a forged invite, or a new identity). Nothing was
    /// changed; remove the old contact to accept the new key.
    #[error("{name} is known with key {old}, not {new}: verify the new key before accepting it")]
    KeyChanged {
        /// The name in the invite.
        name: String,
        /// The key known for it.
        old: ContactId,
        /// The key the invite carries.
        new: ContactId,
    },
    /// The group is not known to this identity (the application's fault).
    #[error("unknown group {0}")]
    UnknownGroup(GroupId),
    /// A group operation that cannot be done (the application's fault):
    /// the text says why.
    #[error("group: {0}")]
    Group(String),
    /// The outbox is full (`max_outbox_bytes` of messages not yet stored):
    /// the application sends faster than the payload rate (retry later).
    #[error("send queue full")]
    Busy,
    /// Something that should not fail did (a packet that could not be
    /// built from a verified topology, a task that died): a bug in the SDK
    /// or its dependencies. Report it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Whose fault an [`Error`] is, so that an application can decide what to
/// do without matching every variant: tell the user, fix the code, retry
/// later, or report a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The application's: a bad configuration or call (fix the code).
    Application,
    /// The user's: something they typed or chose (tell them).
    User,
    /// The network's: the directory, the entry gateway, the topology
    /// (retry later).
    Network,
    /// This device's: its disk, its store files (tell the user; retrying
    /// may not help).
    Local,
    /// A bug in the SDK (report it).
    Bug,
}

impl Error {
    /// Whose fault this error is.
    pub fn fault(&self) -> Fault {
        match self {
            Error::Config(_)
            | Error::UnknownContact(_)
            | Error::UnknownIdentity(_)
            | Error::UnknownGroup(_)
            | Error::Group(_)
            | Error::MessageTooLarge { .. }
            | Error::Busy
            | Error::Closed => Fault::Application,
            Error::InvalidInvite(_) | Error::WrongPassphrase | Error::KeyChanged { .. } => {
                Fault::User
            }
            Error::Directory(_) | Error::NoRoute(_) => Fault::Network,
            Error::Net(net::Error::Connect(_)) => Fault::Network,
            // Wrong authority keys or threshold in the config.
            Error::Net(net::Error::Untrusted(_)) => Fault::Application,
            Error::Net(_) => Fault::Local,
            Error::Store(_) => Fault::Local,
            Error::Internal(_) => Fault::Bug,
        }
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

    /// Its id, as contacts know it.
    pub fn id(&self) -> ContactId {
        ContactId(self.public)
    }
}

/// A contact (or one of my identities), named by its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactId(pub [u8; 32]);

impl std::fmt::Display for ContactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..6]))
    }
}

/// A message received from a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// Which of my identities it was sent to.
    pub to: ContactId,
    /// Who sent it.
    pub from: ContactId,
    /// The sender's id for it (the same id their status reports use).
    pub id: MessageId,
    /// What they sent.
    pub body: Vec<u8>,
    /// Handed over before, and the client restarted before the application
    /// asked for the next message: check your own record (by `from` and
    /// `id`) before showing it again.
    pub redelivered: bool,
    /// The group it was sent to, or `None` for a message to me alone.
    pub group: Option<GroupId>,
    /// What it is, if the sender said (typed content, protocol.md §13.12);
    /// `None` for plain bytes ([`Client::send`]).
    pub kind: Option<ContentKind>,
    /// An attachment's metadata (name, type, size, dimensions, thumbnail);
    /// for a [`ContentKind::Preview`], the id of the message with the data.
    pub attachment: Option<Attachment>,
}

/// A change to a group of one of this client's identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupUpdate {
    /// Which identity.
    pub me: ContactId,
    /// The group.
    pub group: GroupId,
    /// What happened.
    pub change: state::GroupChange,
}

/// The messages contacts send, in the order each contact sent them.
///
/// With a store ([`Client::open`]) nothing is lost or handed over twice
/// across a crash, with the application's help: taking a message is written
/// to the store before it is returned, and asking for the next one (or
/// [`Inbox::done`]) says the application is done with it. A message taken
/// and not done with when the process died is handed over again after the
/// restart with [`Received::redelivered`] set: save each message before
/// asking for the next, and skip a redelivered one your record already
/// holds; then each message reaches you exactly once.
pub struct Inbox {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// The next message; `None` once the client has stopped and no message waits.
    pub async fn recv(&mut self) -> Option<Received> {
        let mut stop = self.shared.stop.subscribe();
        loop {
            let arrived = self.shared.received.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let m = self.shared.state().poll_received();
            if let Some(m) = m {
                if let Err(e) = persist(&self.shared).await {
                    tracing::error!(error = %e, "cannot write the client store");
                }
                return Some(m);
            }
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                _ = &mut arrived => {}
                _ = stopped(&mut stop) => {}
            }
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Received> {
        let m = self.shared.state().poll_received()?;
        if let Err(e) = persist_blocking(&self.shared) {
            tracing::error!(error = %e, "cannot write the client store");
        }
        Some(m)
    }

    /// Says the application is done with every message it took (it saved
    /// or showed them), and writes that: none of them is handed over again
    /// after a restart. Asking for the next message does the same, written
    /// with the next change.
    pub async fn done(&mut self) -> Result<(), Error> {
        self.shared.state().received_done();
        persist(&self.shared).await
    }
}

/// A stream of changes from the driver that ends once the client has
/// stopped and every change sent before was read (a broadcast channel
/// alone ends only when every handle is dropped). A reader that falls
/// behind skips the oldest changes and counts them.
#[derive(Debug)]
struct Updates<T> {
    rx: broadcast::Receiver<T>,
    /// Set once the client has stopped and sent its last changes.
    closed: watch::Receiver<bool>,
    skipped: u64,
}

impl<T: Clone> Updates<T> {
    fn new(tx: &broadcast::Sender<T>, closed: &watch::Sender<bool>) -> Self {
        Updates {
            rx: tx.subscribe(),
            closed: closed.subscribe(),
            skipped: 0,
        }
    }

    async fn next(&mut self) -> Option<T> {
        use broadcast::error::{RecvError, TryRecvError};
        loop {
            let closed = *self.closed.borrow_and_update();
            match self.rx.try_recv() {
                Ok(x) => return Some(x),
                Err(TryRecvError::Lagged(n)) => self.skipped += n,
                Err(TryRecvError::Closed) => return None,
                Err(TryRecvError::Empty) if closed => return None,
                Err(TryRecvError::Empty) => {}
            }
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(x) => return Some(x),
                    Err(RecvError::Lagged(n)) => self.skipped += n,
                    Err(RecvError::Closed) => return None,
                },
                // Stopped: what it sent last is read above first.
                _ = self.closed.changed() => {}
            }
        }
    }

    fn try_next(&mut self) -> Option<T> {
        loop {
            match self.rx.try_recv() {
                Ok(x) => return Some(x),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.skipped += n,
                Err(_) => return None,
            }
        }
    }
}

/// Status changes of the messages this client sends.
#[derive(Debug)]
pub struct StatusUpdates(Updates<(MessageId, Status)>);

impl StatusUpdates {
    /// The next change; `None` once the client has stopped (closed, shut
    /// down, or every handle dropped) and every change before that was
    /// read. A reader that falls behind skips the oldest changes
    /// ([`Client::status`] has the latest).
    pub async fn next(&mut self) -> Option<(MessageId, Status)> {
        self.0.next().await
    }
}

/// Changes to the groups of this client's identities.
#[derive(Debug)]
pub struct GroupUpdates(Updates<GroupUpdate>);

impl GroupUpdates {
    /// The next change; `None` once the client has stopped (closed, shut
    /// down, or every handle dropped) and every change before that was
    /// read. A reader more than 1,024 changes behind skips the oldest
    /// ([`GroupUpdates::skipped`] counts them; [`Client::groups`] and
    /// [`Client::group_members`] have the current state).
    pub async fn next(&mut self) -> Option<GroupUpdate> {
        self.0.next().await
    }

    /// The next change if one is waiting (skipping as [`Self::next`]
    /// does).
    pub fn try_next(&mut self) -> Option<GroupUpdate> {
        self.0.try_next()
    }

    /// Changes skipped so far because this reader fell behind.
    pub fn skipped(&self) -> u64 {
        self.0.skipped
    }
}

/// What the handles of one client share with its driver task.
struct Shared {
    /// The client itself: every decision is made in here, under this one lock.
    state: Mutex<ClientState>,
    /// The identity `connect` was called with: the default for `send` & co.
    me: ContactId,
    /// Wakes the driver (a message was queued, a contact added).
    wake: Notify,
    /// Wakes the inbox (messages arrived).
    received: Notify,
    /// Asks the topology task to refresh now: the entry gateway could not
    /// be reached (it may have restarted with new keys or a new address).
    refresh_now: Notify,
    /// When the last frame came from the entry gateway (`net::now_ms`):
    /// its downlink is constant-rate, so silence means a dead connection.
    last_delivery_ms: std::sync::atomic::AtomicU64,
    /// Times the client moved to another entry gateway.
    failovers: std::sync::atomic::AtomicU64,
    /// The encrypted store of a persistent client; its lock orders writes.
    /// Emptied when the client closes, so that the file is free again.
    store: Option<Arc<Mutex<Option<store::Store>>>>,
    /// Set once the driver has written its last changes and let the store go.
    closed: watch::Sender<bool>,
    status_tx: broadcast::Sender<(MessageId, Status)>,
    group_tx: broadcast::Sender<GroupUpdate>,
    stop: watch::Sender<bool>,
    conn: Mutex<Option<quinn::Connection>>,
    local_addr: Mutex<Option<std::net::SocketAddr>>,
    /// The wall clock as this client reads it, and how far the network's is.
    clock: Clock,
    /// Topology refreshes that failed.
    refresh_failures: AtomicU64,
    /// When a refused fetch was last warned about (device ms; 0: never).
    refusal_warned_ms: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one clock the client reads: the monotonic clock, and the wall
    /// clock corrected to the directory's.
    fn now(&self) -> Now {
        self.clock.now()
    }
}

/// The client's wall clock: the device's (`net::now_ms`, plus the offset a
/// test injects with `dangerous().set_clock_offset_ms`), and the offset of
/// the directory's clock from it, learned from every topology answer. Every
/// time the client puts on the wire or uses for dropbox periods is the
/// device's clock plus that offset: the network's time.
struct Clock {
    injected_ms: i64,
    offset_ms: AtomicI64,
    watch: Mutex<ClockWatch>,
}

impl Clock {
    fn new(cfg: &ClientConfig) -> Self {
        Self {
            injected_ms: cfg.dangerous.clock_offset_ms,
            offset_ms: AtomicI64::new(0),
            watch: Mutex::new(ClockWatch::new()),
        }
    }

    /// The device's wall clock, Unix ms.
    fn device_ms(&self) -> u64 {
        net::now_ms().saturating_add_signed(self.injected_ms)
    }

    fn now(&self) -> Now {
        Now {
            at: Instant::now(),
            unix_ms: self
                .device_ms()
                .saturating_add_signed(self.offset_ms.load(Ordering::Relaxed)),
        }
    }

    /// Takes a new estimate of the directory's clock minus ours; warns once
    /// when it is beyond the bound.
    fn learn(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
        let news = self
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(offset_ms);
        match news {
            Some(ClockNews::Off { offset_ms }) => tracing::warn!(
                offset_s = (offset_ms as f64 / 1000.0).round() as i64,
                bound_s = protocol::clock::CLOCK_WARN_MS / 1000,
                "this device's clock is {} the directory's: the client goes by the \
                 directory's time (dropbox periods, fetch timestamps, topology checks); \
                 fix the system clock",
                protocol::clock::describe(offset_ms)
            ),
            Some(ClockNews::Back { offset_ms }) => tracing::info!(
                offset_ms,
                "this device's clock is within the bound of the directory's again"
            ),
            None => {}
        }
    }
}

/// How the client stands with the network's clock and its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The directory's clock minus this device's, ms, as last learned
    /// (`None` before any authority sent its time).
    pub clock_offset_ms: Option<i64>,
    /// Times the device's clock was found further off than
    /// `protocol::clock::CLOCK_WARN_MS` (each logged one warning).
    pub clock_warnings: u64,
    /// Topology refreshes that failed (each logged a warning).
    pub topology_refresh_failures: u64,
    /// The epoch of the topology the client routes by.
    pub topology_epoch: u64,
    /// Until when (Unix ms, network time) the nodes keep that topology's
    /// keys; after it fragments and fetches wait for a new topology.
    pub topology_usable_until_ms: u64,
    /// Fetch replies that were refusals (protocol.md §12.2).
    pub refused_replies: u64,
}

/// Writes what changed to the store, in one transaction, and returns once
/// it is durable. A client without a store has nothing to write.
fn persist_blocking(shared: &Shared) -> Result<(), Error> {
    let Some(store) = &shared.store else {
        return Ok(());
    };
    // The store's lock first: changes are taken and written in order.
    let store = store.lock().unwrap_or_else(|p| p.into_inner());
    let Some(store) = store.as_ref() else {
        return Ok(()); // closed
    };
    let Some(changes) = shared.state().take_changes(shared.now()) else {
        return Ok(());
    };
    let written = store.commit(&changes);
    if written.is_err() {
        shared.state().persist_failed();
    }
    written
}

/// [`persist_blocking`] off the async threads.
async fn persist(shared: &Arc<Shared>) -> Result<(), Error> {
    if shared.store.is_none() {
        return Ok(());
    }
    let s = shared.clone();
    tokio::task::spawn_blocking(move || persist_blocking(&s))
        .await
        .map_err(|e| Error::Store(e.to_string()))?
}

/// A connected client: the async driver of a [`ClientState`] over QUIC.
/// Cheap to clone; when the last clone is dropped the client shuts down.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Shared>,
    _guard: Arc<StopOnDrop>,
}

/// Stops the background tasks when the last [`Client`] handle goes away.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Client {
    /// Fetches and verifies the topology, connects to an entry gateway and
    /// starts the client's stream, hosting `identity`. Returns the client
    /// and its inbox. Nothing is stored: a restart loses what is in flight
    /// (see [`Client::open`] for a client that goes on after a restart).
    pub async fn connect(cfg: ClientConfig, identity: Identity) -> Result<(Client, Inbox), Error> {
        let (dir, topo, clock) = Self::first_topology(&cfg).await?;
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let mut state = ClientState::new(cfg, topo, clock.now(), &mut rng)?;
        state.add_identity(identity.secret.clone());
        Self::start(state, dir, None, rng, clock).await
    }

    /// Opens the encrypted store at `path` with `passphrase` (creating it,
    /// with a new identity, if there is none) and starts the client where
    /// it stopped: messages not yet stored are sent again, boxes fetched
    /// from where they were confirmed, received messages the application
    /// had not taken are handed over. A wrong passphrase gives
    /// [`Error::WrongPassphrase`] and changes nothing.
    pub async fn open(
        cfg: ClientConfig,
        path: impl AsRef<std::path::Path>,
        passphrase: &[u8],
    ) -> Result<(Client, Inbox), Error> {
        let path = path.as_ref().to_owned();
        let pass = zeroize::Zeroizing::new(passphrase.to_vec());
        let kdf = cfg.store_kdf;
        let (store, records) =
            tokio::task::spawn_blocking(move || store::Store::open(&path, &pass, kdf))
                .await
                .map_err(|e| Error::Store(e.to_string()))??;
        let (dir, topo, clock) = Self::first_topology(&cfg).await?;
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let mut state = ClientState::restore(cfg, topo, records, clock.now(), &mut rng)?;
        if state.primary().is_none() {
            state.add_identity(Identity::generate().secret);
        }
        Self::start(state, dir, Some(store), rng, clock).await
    }

    /// The authorities, their topology (verified on their clock) and the
    /// client's clock with what that answer said about it.
    async fn first_topology(
        cfg: &ClientConfig,
    ) -> Result<(Authorities, TopologyDocument, Clock), Error> {
        net::install_crypto_provider();
        cfg.check()?;
        if cfg.dangerous.clock_offset_ms != 0 {
            tracing::warn!(
                offset_ms = cfg.dangerous.clock_offset_ms,
                "dangerous clock_offset_ms: this client reads a wrong wall clock on purpose \
                 (tests only)"
            );
        }
        let dir = Authorities::new(&cfg.authorities, cfg.authority_threshold)
            .map_err(|e| Error::Config(format!("authorities/authority_threshold: {e}")))?;
        let clock = Clock::new(cfg);
        let timed = dir
            .current_topology(|| clock.device_ms(), None)
            .await
            .map_err(|e| match e {
                // Every authority answered and none verified: our keys or
                // threshold are wrong, not the network (`Fault::Application`).
                net::Error::Untrusted(_) => Error::Net(e),
                e => Error::Directory(e.to_string()),
            })?;
        if let Some(o) = timed.offset_ms {
            clock.learn(o);
        }
        Ok((dir, timed.doc, clock))
    }

    async fn start(
        state: ClientState,
        dir: Authorities,
        store: Option<store::Store>,
        rng: rand::rngs::StdRng,
        clock: Clock,
    ) -> Result<(Client, Inbox), Error> {
        if state.config().dangerous.no_cover() {
            tracing::warn!(
                "dangerous no_cover: sending without cover traffic; never do this for real users"
            );
        }
        let me = state
            .primary()
            .ok_or_else(|| Error::Store("the store holds no identity".into()))?;
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            me,
            wake: Notify::new(),
            received: Notify::new(),
            refresh_now: Notify::new(),
            last_delivery_ms: std::sync::atomic::AtomicU64::new(net::now_ms()),
            failovers: std::sync::atomic::AtomicU64::new(0),
            store: store.map(|s| Arc::new(Mutex::new(Some(s)))),
            closed: watch::channel(false).0,
            status_tx: broadcast::channel(4096).0,
            group_tx: broadcast::channel(1024).0,
            stop,
            conn: Mutex::new(None),
            local_addr: Mutex::new(None),
            clock,
            refresh_failures: AtomicU64::new(0),
            refusal_warned_ms: AtomicU64::new(0),
        });
        // What the restore changed, and a new store's first records.
        persist(&shared).await?;
        let (out_tx, out_rx) = mpsc::channel(4096);
        let (deliver_tx, deliver_rx) = mpsc::channel(4096);
        let (topo_tx, topo_rx) = mpsc::channel(4);
        // Connect once before returning, so configuration errors surface here.
        let conn = dial(&shared, deliver_tx.clone()).await?;
        tokio::spawn(connection_task(shared.clone(), out_rx, conn, deliver_tx));
        tokio::spawn(topology_task(shared.clone(), dir, topo_tx));
        tokio::spawn(drive(shared.clone(), rng, out_tx, deliver_rx, topo_rx));
        let guard = Arc::new(StopOnDrop(shared.stop.clone()));
        let inbox = Inbox {
            shared: shared.clone(),
        };
        Ok((
            Client {
                inner: shared,
                _guard: guard,
            },
            inbox,
        ))
    }

    /// The identity `connect` was called with.
    pub fn id(&self) -> ContactId {
        self.inner.me
    }

    /// Hosts another identity on this client: it shares the client's cover
    /// stream and entry gateway, so it costs no bandwidth. Its messages
    /// arrive in the same inbox (see [`Received::to`]).
    pub fn add_identity(&self, identity: &Identity) -> ContactId {
        let id = self.inner.state().add_identity(identity.secret.clone());
        self.inner.wake.notify_one();
        id
    }

    /// The identities this client hosts.
    pub fn identities(&self) -> Vec<ContactId> {
        self.inner.state().identities()
    }

    /// A new invite string for the default identity (any channel: it holds
    /// only public keys and a name). Each call makes a new one-time key for
    /// the first message's session; it is written to the store within
    /// `persist_interval`.
    pub fn invite(&self, name: &str) -> String {
        self.invite_as(&self.inner.me, name)
            .unwrap_or_else(|_| String::new())
    }

    /// A new invite string for identity `me` (see [`Client::invite`]).
    pub fn invite_as(&self, me: &ContactId, name: &str) -> Result<String, Error> {
        let s = self.inner.state().invite(me, name)?;
        self.inner.wake.notify_one();
        Ok(s)
    }

    /// Adds a contact of the default identity from their invite string.
    pub fn add_contact(&self, invite: &str) -> Result<ContactId, Error> {
        self.add_contact_as(&self.inner.me, invite)
    }

    /// Adds a contact of identity `me` from their invite string.
    pub fn add_contact_as(&self, me: &ContactId, invite: &str) -> Result<ContactId, Error> {
        let c = self.inner.state().add_contact(me, invite)?;
        self.inner.wake.notify_one();
        Ok(c)
    }

    /// The name a contact of the default identity gave in their invite (or
    /// was renamed to).
    pub fn contact_name(&self, id: &ContactId) -> Option<String> {
        self.inner.state().contact_name(&self.inner.me, id)
    }

    /// The contacts of the default identity.
    pub fn contacts(&self) -> Vec<ContactId> {
        self.inner.state().contacts(&self.inner.me)
    }

    /// Renames a contact of the default identity.
    pub fn rename_contact(&self, id: &ContactId, name: &str) -> Result<(), Error> {
        self.inner
            .state()
            .rename_contact(&self.inner.me, id, name)?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Removes a contact of the default identity: their boxes are no longer fetched.
    pub fn remove_contact(&self, id: &ContactId) -> Result<(), Error> {
        self.inner.state().remove_contact(&self.inner.me, id)?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// The safety number of the default identity and a contact: 60 digits
    /// both sides see alike; compared in person (or over a call), they
    /// prove the invites were not swapped.
    pub fn safety_number(&self, id: &ContactId) -> verify::SafetyNumber {
        verify::safety_number(&self.inner.me.0, &id.0)
    }

    /// The default identity's invite as a QR code in SVG.
    pub fn invite_qr_svg(&self, name: &str) -> Result<String, Error> {
        verify::qr_svg(&self.invite(name)).map_err(|e| Error::InvalidInvite(e.to_string()))
    }

    /// The default identity's invite as a QR code for a terminal
    /// (light modules on a dark background).
    pub fn invite_qr_text(&self, name: &str) -> Result<String, Error> {
        verify::qr_text(&self.invite(name)).map_err(|e| Error::InvalidInvite(e.to_string()))
    }

    /// Sends `body` (up to [`MAX_BODY_LEN`]) from the default identity to
    /// `to`. It is split into fragments, each end-to-end encrypted for the
    /// pair and stored in the pair's dropbox through the mixnet,
    /// acknowledged by the gateway and retransmitted until stored. Returns
    /// the message's id at once; follow it with [`Client::status`],
    /// [`Client::progress`] or [`Client::subscribe_status`]. Every message
    /// ends `Stored` (then `Read`) or failed: none is lost silently.
    pub async fn send(&self, to: &ContactId, body: &[u8]) -> Result<MessageId, Error> {
        self.send_as(&self.inner.me, to, body).await
    }

    /// [`Client::send`] from identity `me`.
    pub async fn send_as(
        &self,
        me: &ContactId,
        to: &ContactId,
        body: &[u8],
    ) -> Result<MessageId, Error> {
        self.check_open()?;
        let id = self
            .inner
            .state()
            .send(self.inner.now(), me, to, body, &mut rand::rng())?;
        // Queued means on disk: the message survives a restart from here.
        self.changed().await?;
        Ok(id)
    }

    /// The latest status of a recent message sent by this client.
    pub fn status(&self, id: &MessageId) -> Option<Status> {
        self.inner.state().status(id)
    }

    /// After a call that changed the state: written to the store (what was
    /// queued survives a crash from here), and the driver woken.
    async fn changed(&self) -> Result<(), Error> {
        persist(&self.inner).await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    fn check_open(&self) -> Result<(), Error> {
        if *self.inner.stop.borrow() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Sends typed content (protocol.md §13.12) from the default identity:
    /// text (`attachment` `None`) or an attachment with its metadata.
    /// Compressed with zstd when that saves space. The contact receives the
    /// data with [`Received::kind`] and [`Received::attachment`] set.
    pub async fn send_content(
        &self,
        to: &ContactId,
        kind: ContentKind,
        attachment: Option<&Attachment>,
        data: &[u8],
    ) -> Result<MessageId, Error> {
        self.check_open()?;
        let me = self.inner.me;
        let id = self.inner.state().send_content(
            self.inner.now(),
            &me,
            to,
            kind,
            attachment,
            data,
            &mut rand::rng(),
        )?;
        self.changed().await?;
        Ok(id)
    }

    /// Sends a picture, voice note or file from the default identity: a
    /// preview first if `attachment.thumbnail` is not empty (metadata and
    /// thumbnail, naming the data message), then the data. Returns
    /// (preview id, data id); follow the data with [`Client::progress`].
    pub async fn send_attachment(
        &self,
        to: &ContactId,
        kind: ContentKind,
        attachment: &Attachment,
        data: &[u8],
    ) -> Result<(Option<MessageId>, MessageId), Error> {
        self.check_open()?;
        let me = self.inner.me;
        let ids = self.inner.state().send_attachment(
            self.inner.now(),
            &me,
            to,
            kind,
            attachment,
            data,
            &mut rand::rng(),
        )?;
        self.changed().await?;
        Ok(ids)
    }

    /// How much of a message from `from` has arrived (fragments), while it
    /// does: a preview's [`Attachment::preview_of`] names the message to
    /// follow. `None` before its first fragment and once it is complete.
    pub fn receive_progress(&self, from: &ContactId, id: &MessageId) -> Option<Progress> {
        self.inner
            .state()
            .receive_progress(&self.inner.me, from, id)
    }

    /// Creates a group with the default identity as its only member
    /// (protocol.md §13.11); add contacts with [`Client::invite_to_group`].
    pub async fn create_group(&self, name: &str) -> Result<GroupId, Error> {
        let me = self.inner.me;
        let g = self
            .inner
            .state()
            .create_group(self.inner.now(), &me, name, &mut rand::rng())?;
        self.changed().await?;
        Ok(g)
    }

    /// Adds contact `member` to a group: they get its keys pairwise and
    /// the members hear of it.
    pub async fn invite_to_group(&self, group: &GroupId, member: &ContactId) -> Result<(), Error> {
        let me = self.inner.me;
        self.inner
            .state()
            .invite_to_group(self.inner.now(), &me, group, member)?;
        self.changed().await?;
        Ok(())
    }

    /// Removes `member` from a group: a new epoch the removed member does
    /// not learn, so it reads nothing sent after.
    pub async fn remove_from_group(
        &self,
        group: &GroupId,
        member: &ContactId,
    ) -> Result<(), Error> {
        let me = self.inner.me;
        self.inner.state().remove_from_group(
            self.inner.now(),
            &me,
            group,
            member,
            &mut rand::rng(),
        )?;
        self.changed().await?;
        Ok(())
    }

    /// Leaves a group (the members are told) and forgets it.
    pub async fn leave_group(&self, group: &GroupId) -> Result<(), Error> {
        let me = self.inner.me;
        self.inner
            .state()
            .leave_group(self.inner.now(), &me, group)?;
        self.changed().await?;
        Ok(())
    }

    /// Sends `body` to every member of a group: one Megolm-encrypted copy
    /// into the group's box. Its status ends at `Stored` (no receipts in
    /// groups). Members receive it with [`Received::group`] set.
    pub async fn send_group(&self, group: &GroupId, body: &[u8]) -> Result<MessageId, Error> {
        self.check_open()?;
        let me = self.inner.me;
        let id = self
            .inner
            .state()
            .send_group(self.inner.now(), &me, group, body)?;
        self.changed().await?;
        Ok(id)
    }

    /// Sends typed content (a picture, a voice note, a file, or text) to a
    /// group: one Megolm-encrypted copy; the thumbnail travels with it.
    pub async fn send_group_content(
        &self,
        group: &GroupId,
        kind: ContentKind,
        attachment: Option<&Attachment>,
        data: &[u8],
    ) -> Result<MessageId, Error> {
        self.check_open()?;
        let me = self.inner.me;
        let id = self.inner.state().send_group_content(
            self.inner.now(),
            &me,
            group,
            kind,
            attachment,
            data,
        )?;
        self.changed().await?;
        Ok(id)
    }

    /// The groups of the default identity.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.state().groups(&self.inner.me)
    }

    /// A group's name.
    pub fn group_name(&self, group: &GroupId) -> Option<String> {
        self.inner.state().group_name(&self.inner.me, group)
    }

    /// A group's epoch and members (the default identity included, with an empty name).
    pub fn group_members(&self, group: &GroupId) -> Option<(u32, Vec<(ContactId, String)>)> {
        self.inner.state().group_members(&self.inner.me, group)
    }

    /// Every group change from now on (joined, member added or left, new epoch).
    pub fn subscribe_groups(&self) -> GroupUpdates {
        GroupUpdates(Updates::new(&self.inner.group_tx, &self.inner.closed))
    }

    /// Fragments of a message being sent that the dropbox gateway has
    /// acknowledged (`None` once it is stored or failed).
    pub fn progress(&self, id: &MessageId) -> Option<Progress> {
        self.inner.state().progress(id)
    }

    /// Every status change from now on: queued → sent → stored → read, or
    /// failed.
    pub fn subscribe_status(&self) -> StatusUpdates {
        StatusUpdates(Updates::new(&self.inner.status_tx, &self.inner.closed))
    }

    /// The messages this client is still sending (after [`Client::open`],
    /// those it resumed too): follow them with [`Client::progress`].
    pub fn pending_messages(&self) -> Vec<MessageId> {
        self.inner.state().pending_messages()
    }

    /// Fragments fetched whose deletion at the gateway was not asked for yet.
    pub fn unconfirmed(&self) -> usize {
        self.inner.state().unconfirmed()
    }

    /// Messages not yet stored, and bytes of them held.
    pub fn outbox_len(&self) -> (usize, usize) {
        self.inner.state().outbox_len()
    }

    /// Counts of the cover stream: what was sent, and which loops came back.
    pub fn cover_stats(&self) -> CoverStats {
        self.inner.state().cover_stats()
    }

    /// How the client stands with the network's clock and its directory:
    /// the clock offset it goes by and how often it warned about it, failed
    /// topology refreshes, and until when its topology's keys are kept.
    pub fn health(&self) -> Health {
        let watch = *self
            .inner
            .clock
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let st = self.inner.state();
        Health {
            clock_offset_ms: watch.offset_ms(),
            clock_warnings: watch.warnings(),
            topology_refresh_failures: self.inner.refresh_failures.load(Ordering::Relaxed),
            topology_epoch: st.topology().epoch,
            topology_usable_until_ms: st.topology_usable_until(),
            refused_replies: st.cover_stats().refused_replies,
        }
    }

    /// The wall clock this client goes by (Unix ms): the device's, corrected
    /// by the directory's.
    pub fn network_time_ms(&self) -> u64 {
        self.inner.now().unix_ms
    }

    /// The device's wall clock as this client reads it (Unix ms).
    pub fn device_time_ms(&self) -> u64 {
        self.inner.clock.device_ms()
    }

    /// The verified topology the client routes by (refreshed every
    /// `topology_refresh` and at each epoch).
    pub fn topology(&self) -> Arc<TopologyDocument> {
        self.inner.state().topology()
    }

    /// The entry gateway the client uses now (it moves to another after
    /// the current one was unreachable for `entry_failover`).
    pub fn entry_gateway(&self) -> protocol::NodeId {
        self.inner.state().entry().identity
    }

    /// Time since the last frame came from the entry gateway. Its downlink
    /// is constant-rate, so more than a few seconds means no connection.
    pub fn since_last_frame(&self) -> Duration {
        Duration::from_millis(
            net::now_ms().saturating_sub(self.inner.last_delivery_ms.load(Ordering::Relaxed)),
        )
    }

    /// Whether the client sends cover traffic (false only with the
    /// dangerous no-cover setting).
    pub fn cover_on(&self) -> bool {
        !self.inner.state().config().dangerous.no_cover()
    }

    /// Times the client moved to another entry gateway.
    pub fn entry_failovers(&self) -> u64 {
        self.inner
            .failovers
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// Stops the client's tasks and closes its connection (at once; its
    /// last changes are written in the background: see [`Client::close`]).
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Stops the client, writes its last changes and closes its store, so
    /// that the store can be opened again (by this process or another).
    pub async fn close(self) {
        let mut closed = self.inner.closed.subscribe();
        self.inner.stop.send_replace(true);
        let _ = closed.wait_for(|c| *c).await;
    }
}

/// Resolves once the client is told to stop.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The driver: the one task that moves the state machine. It hands frames
/// to the connection, deliveries and new topologies to the state, status
/// changes to the application, writes the store when it must, and sleeps
/// until the state's next deadline or the next thing that arrives.
async fn drive(
    shared: Arc<Shared>,
    rng: rand::rngs::StdRng,
    out: mpsc::Sender<Vec<u8>>,
    deliveries: mpsc::Receiver<([u8; 16], Vec<u8>)>,
    topologies: mpsc::Receiver<TopologyDocument>,
) {
    run(&shared, rng, out, deliveries, topologies).await;
    // However it ended: the last changes, then the store is free.
    if let Err(e) = persist(&shared).await {
        tracing::error!(error = %e, "cannot write the client store");
    }
    if let Some(store) = &shared.store {
        store.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
    // (`send_replace`: the value changes even when no one watches yet.)
    shared.stop.send_replace(true);
    shared.closed.send_replace(true);
    shared.received.notify_waiters();
}

async fn run(
    shared: &Arc<Shared>,
    mut rng: rand::rngs::StdRng,
    out: mpsc::Sender<Vec<u8>>,
    mut deliveries: mpsc::Receiver<([u8; 16], Vec<u8>)>,
    mut topologies: mpsc::Receiver<TopologyDocument>,
) {
    let mut stop = shared.stop.subscribe();
    let interval = shared.state().config().persist_interval;
    let mut last_persist = Instant::now();
    loop {
        let (frames, deadline, must_persist) = {
            let mut st = shared.state();
            let t = shared.now();
            st.handle_timeout(t);
            let mut frames = Vec::new();
            while let Some(f) = st.poll_transmit(t, &mut rng) {
                frames.push(f);
            }
            while let Some(ev) = st.poll_event() {
                match ev {
                    Event::Status { id, status } => {
                        if status.is_failure() {
                            tracing::warn!(status = ?status, "a message could not be delivered");
                        }
                        let _ = shared.status_tx.send((id, status));
                    }
                    Event::TopologyStale => {
                        tracing::info!("own loops went missing; refreshing the topology now");
                        shared.refresh_now.notify_one();
                    }
                    Event::FetchRefused {
                        reason,
                        gateway_offset_ms,
                    } => fetch_refused(shared, reason, gateway_offset_ms),
                    Event::Undecryptable { reason, .. } => {
                        tracing::warn!(%reason, "a message from a contact could not be decrypted; a session reset was queued");
                    }
                    Event::Group { me, group, change } => {
                        tracing::debug!(%group, "group changed");
                        let _ = shared.group_tx.send(GroupUpdate { me, group, change });
                    }
                }
            }
            if st.has_received() {
                shared.received.notify_waiters();
            }
            (frames, st.poll_timeout(), st.must_persist_before_sending())
        };
        // A fetch that confirms (deletes at the gateway) what we received
        // leaves only once that is on disk; the rest is written at least
        // every `persist_interval`.
        if shared.store.is_some() && (must_persist || last_persist.elapsed() >= interval) {
            if let Err(e) = persist(shared).await {
                tracing::error!(error = %e, "cannot write the client store");
                if must_persist {
                    // Not sending a confirmation that is not on disk: the
                    // fetch goes again later, when the store works.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            last_persist = Instant::now();
        }
        for f in frames {
            // The connection task takes frames as it writes them; a stop
            // must not wait for a full queue.
            tokio::select! {
                r = out.send(f) => if r.is_err() { return },
                _ = stopped(&mut stop) => return,
            }
        }
        let cap = Instant::now() + interval.min(Duration::from_secs(1));
        let until = tokio::time::Instant::from_std(deadline.min(cap));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            d = deliveries.recv() => {
                let Some((id, payload)) = d else { return };
                let mut st = shared.state();
                st.handle_delivery(shared.now(), id, &payload);
                // Take whatever else arrived meanwhile under the same lock.
                while let Ok((id, payload)) = deliveries.try_recv() {
                    st.handle_delivery(shared.now(), id, &payload);
                }
            }
            t = topologies.recv() => {
                if let Some(doc) = t {
                    shared.state().set_topology(doc, shared.now());
                }
            }
            _ = shared.wake.notified() => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// A gateway refused one of our fetches: warned (at most every 10 minutes),
/// and the topology refreshed at once, which measures our clock offset again.
fn fetch_refused(
    shared: &Shared,
    reason: protocol::messages::RefusalReason,
    gateway_offset_ms: i64,
) {
    let now = shared.clock.device_ms();
    let last = shared.refusal_warned_ms.load(Ordering::Relaxed);
    if last == 0 || now.saturating_sub(last) > 600_000 {
        shared.refusal_warned_ms.store(now, Ordering::Relaxed);
        match reason {
            protocol::messages::RefusalReason::Time => tracing::warn!(
                gateway_offset_s = gateway_offset_ms / 1000,
                "a gateway refused a fetch for its timestamp: our clock is {} the gateway's \
                 (beyond its window); nothing was read or deleted, the fetch goes again",
                protocol::clock::describe(gateway_offset_ms)
            ),
            _ => tracing::warn!(?reason, "a gateway refused a fetch; it goes again"),
        }
    }
    shared.refresh_now.notify_one();
}

/// Dials the entry gateway and starts reading its Deliver frames into `deliveries`.
async fn dial(
    shared: &Arc<Shared>,
    deliveries: mpsc::Sender<([u8; 16], Vec<u8>)>,
) -> Result<quinn::Connection, Error> {
    let entry = shared.state().entry().clone();
    let addr = entry
        .client_socket_addr()
        .ok_or_else(|| Error::NoRoute("entry gateway has no client address".into()))?;
    let bind = match shared.state().config().bind_ip {
        Some(ip) => std::net::SocketAddr::new(ip, 0),
        None if addr.is_ipv4() => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        None => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = net::link::client_endpoint(bind)?;
    // A gateway that is down never answers (UDP): give up after 5 s rather
    // than QUIC's 30 s idle timeout, and try again with a fresh topology.
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        net::link::connect(&endpoint, entry.identity, addr),
    )
    .await
    .map_err(|_| Error::Net(net::Error::Connect("no answer within 5 s".into())))??;
    // Frames written before the gateway has our Finished could be lost
    // with it (§ node links in the protocol).
    net::link::confirmed(&conn).await;
    *shared.local_addr.lock().unwrap_or_else(|p| p.into_inner()) = endpoint.local_addr().ok();
    *shared.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
    shared
        .last_delivery_ms
        .store(net::now_ms(), std::sync::atomic::Ordering::Relaxed);
    let heard = shared.clone();
    let sink = move |f: Frame<'_>, _: &net::conn::PeerConn| {
        heard
            .last_delivery_ms
            .store(net::now_ms(), std::sync::atomic::Ordering::Relaxed);
        if let Some((id, payload)) = f.delivery() {
            // A full queue drops the frame: the reliability layer asks again.
            let _ = deliveries.try_send((id, payload.to_vec()));
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

/// Owns the gateway connection: subscribes, writes frames, reconnects with backoff.
async fn connection_task(
    shared: Arc<Shared>,
    mut out: mpsc::Receiver<Vec<u8>>,
    first: quinn::Connection,
    deliveries: mpsc::Sender<([u8; 16], Vec<u8>)>,
) {
    let mut stop = shared.stop.subscribe();
    let mut conn = Some(first);
    let mut backoff = Duration::from_millis(200);
    let failover = shared.state().config().entry_failover;
    // Since when the entry gateway has been unreachable.
    let mut down_since: Option<tokio::time::Instant> = None;
    let mut first = true;
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None => match dial(&shared, deliveries.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                    if !failover.is_zero() && since.elapsed() >= failover {
                        let moved = shared.state().fail_over(shared.now());
                        if moved.is_some() {
                            tracing::warn!(
                                secs = since.elapsed().as_secs(),
                                "entry gateway unreachable; moving to another gateway"
                            );
                            shared
                                .failovers
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            down_since = None;
                            backoff = Duration::from_millis(200);
                            continue;
                        }
                    }
                    tracing::warn!(error = %e, "cannot reach entry gateway; retrying");
                    shared.refresh_now.notify_one();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop) => return,
                    }
                    // At most 5 s between dials: a gateway that comes back
                    // (perhaps at a new address, from the next topology) is
                    // found within seconds.
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let Ok(mut send) = c.open_uni().await else {
            continue;
        };
        let address = shared.state().address();
        let Ok(sub) = frame::encode(FrameKind::Subscribe, 0, &address) else {
            return;
        };
        if send.write_all(&sub).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(200);
        down_since = None;
        if !std::mem::take(&mut first) {
            // Back after a break: what was in flight on it is lost.
            shared.state().handle_reconnect(shared.now());
            shared.wake.notify_one();
        }
        // The gateway sends λ_D frames a second whatever happens; no frame
        // for 30/λ_D (at least 3 s: a healthy link misses that with
        // probability e^-30) means it is gone, long before QUIC's idle
        // timeout (30 s) would say so.
        let silence = {
            let lambda = shared.state().topology().params.lambda_downlink.max(0.1);
            Duration::from_secs_f64((30.0 / lambda).max(3.0))
        };
        let mut watchdog = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = watchdog.tick() => {
                    // The gateway answers, but the topologies no longer list
                    // it (revoked, or it stopped registering): no SURB can
                    // name it, so nothing could be fetched or acked through it.
                    let unlisted = shared.state().entry_unlisted_for(shared.now());
                    if !failover.is_zero()
                        && unlisted.is_some_and(|d| d >= failover)
                        && shared.state().fail_over(shared.now()).is_some()
                    {
                        tracing::warn!(
                            secs = unlisted.map_or(0, |d| d.as_secs()),
                            "entry gateway left the topology; moving to another gateway"
                        );
                        shared
                            .failovers
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        c.close(0u8.into(), b"moving");
                        break;
                    }
                    let last = shared.last_delivery_ms.load(std::sync::atomic::Ordering::Relaxed);
                    if net::now_ms().saturating_sub(last) > silence.as_millis() as u64 {
                        tracing::warn!("entry gateway silent; reconnecting");
                        c.close(0u8.into(), b"silent");
                        shared.refresh_now.notify_one();
                        break;
                    }
                }
                f = out.recv() => {
                    let Some(f) = f else { return };
                    if send.write_all(&f).await.is_err() {
                        // The gateway went away: it may come back with new
                        // keys, or elsewhere.
                        shared.refresh_now.notify_one();
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

/// Keeps the topology fresh (new epochs bring new Sphinx keys), and the
/// clock offset with it. While no authority answers, the client goes on with
/// the topology it holds and says until when its keys are kept.
async fn topology_task(
    shared: Arc<Shared>,
    dir: Authorities,
    to_driver: mpsc::Sender<TopologyDocument>,
) {
    let mut stop = shared.stop.subscribe();
    let refresh = shared.state().config().topology_refresh;
    // After the entry gateway was lost: refreshes at 0, 1, 2, 4, 8 s until a
    // newer document comes (a restarted gateway registers its new keys and
    // address within a few seconds).
    let mut urgent: Option<u32> = None;
    // Refreshes failed in a row, and whether the expiry of the topology's
    // keys was said.
    let mut failing = 0u64;
    let mut expired_said = false;
    // The next epoch's document, fetched ahead: if the authorities cannot
    // be reached when its epoch begins, the client moves to it.
    let mut next: Option<TopologyDocument> = {
        let until = shared.state().topology().valid_until_ms;
        dir.topology(true, until, None).await.ok()
    };
    loop {
        // Refresh periodically, and right after each epoch begins: the new
        // epoch brings new Sphinx keys and a new layer assignment.
        let (last, to_epoch, behind) = {
            let t = shared.state().topology();
            let now = shared.now().unix_ms;
            (
                Some((t.epoch, t.revision)),
                Duration::from_millis(t.schedule.until_next_ms(now) + 1_000),
                t.epoch < t.schedule.epoch_at(now),
            )
        };
        let mut wait = match urgent {
            Some(0) => Duration::ZERO,
            Some(n) => Duration::from_secs(1 << (n - 1).min(3)),
            None => refresh.min(to_epoch),
        };
        if behind && failing == 0 {
            // Our topology is of an epoch that has ended (the authorities
            // had not published the new one when we asked, or were away):
            // packets built with it live on the previous keys' grace only.
            wait = wait.min(Duration::from_secs(1));
        }
        if failing > 0 {
            // The directory is away: ask often enough to be back soon after it.
            wait = wait.min(Duration::from_secs(10));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.refresh_now.notified(), if urgent.is_none() => {
                urgent = Some(0);
                continue;
            }
            _ = stopped(&mut stop) => return,
        }
        let clock = shared.clone();
        match dir
            .current_topology(move || clock.clock.device_ms(), last)
            .await
        {
            Ok(timed) => {
                if let Some(o) = timed.offset_ms {
                    shared.clock.learn(o);
                }
                let doc = timed.doc;
                if failing > 0 {
                    tracing::info!(
                        failures = failing,
                        epoch = doc.epoch,
                        "the directory answers again: topology refreshed"
                    );
                    failing = 0;
                    expired_said = false;
                }
                let newer = Some((doc.epoch, doc.revision)) != last;
                // While the entry gateway stays silent, keep asking every
                // 8 s: a newer document may not yet carry its new address
                // (its registration waits for the authorities' next vote).
                let down = net::now_ms()
                    .saturating_sub(shared.last_delivery_ms.load(Ordering::Relaxed))
                    > 3_000;
                urgent = match urgent {
                    Some(n) if down => Some((n + 1).min(4)),
                    Some(n) if !newer && n < 4 => Some(n + 1),
                    _ => None,
                };
                // The next epoch's document, verified as of the start of its
                // epoch (as nodes do); kept for an outage.
                if next.as_ref().is_none_or(|n| n.epoch <= doc.epoch) {
                    next = dir.topology(true, doc.valid_until_ms, None).await.ok();
                }
                if newer && to_driver.send(doc).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                urgent = urgent.filter(|n| *n < 4).map(|n| n + 1);
                shared.refresh_failures.fetch_add(1, Ordering::Relaxed);
                failing += 1;
                let now = shared.now().unix_ms;
                // Usable as long as the held topology's keys, or the next
                // epoch's (fetched ahead), are kept.
                let (epoch, until) = {
                    let st = shared.state();
                    (st.topology().epoch, st.topology_usable_until())
                };
                let until = until.max(next.as_ref().map_or(0, protocol::clock::keys_usable_until));
                if now <= until {
                    tracing::warn!(
                        error = %e,
                        failures = failing,
                        epoch,
                        usable_for_s = (until - now) / 1000,
                        has_next_epoch = next.is_some(),
                        "topology refresh failed; going on with the last valid topology \
                         (and the next epoch's, published ahead) until its keys expire"
                    );
                } else if !std::mem::replace(&mut expired_said, true) {
                    tracing::warn!(
                        error = %e,
                        failures = failing,
                        epoch,
                        "topology refresh failed and the keys of the last valid topology \
                         have expired: messages and fetches wait (nothing is lost, only \
                         delayed) until the directory answers"
                    );
                } else {
                    tracing::warn!(error = %e, failures = failing, "topology refresh failed");
                }
            }
        }
        // Our topology's epoch is over and the authorities gave no newer
        // one, but the next epoch's document came ahead: move to it (its
        // keys are the nodes' current ones).
        let (held, now) = (last.map_or(0, |l| l.0), shared.now().unix_ms);
        let begun = next
            .as_ref()
            .is_some_and(|n| n.epoch > held && n.valid_from_ms <= now);
        if begun
            && let Some(n) = next.take()
            && shared.state().topology().epoch < n.epoch
        {
            tracing::info!(
                epoch = n.epoch,
                "no topology from the authorities for the new epoch: using the one \
                 they published ahead"
            );
            expired_said = false;
            if to_driver.send(n).await.is_err() {
                return;
            }
        }
    }
}
