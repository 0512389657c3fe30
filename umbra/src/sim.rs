//! Whole clients on a virtual clock, in the way of quinn-proto's test
//! `Pair`: no sockets, no tokio, no wall clock; time is a number the
//! simulation advances from one event to the next, so a minute of network
//! life runs in about as long as its cryptography takes.
//!
//! What runs for real:
//! - every client is a [`client_sdk::ClientState`], driven as the SDK's own
//!   driver does (`handle_timeout`, `poll_transmit` until `None`,
//!   `handle_delivery`, `poll_event`, `poll_received`);
//! - every hop peels with its own Sphinx key and replay cache
//!   ([`KeyRing::peel`]);
//! - the entry gateway's first-hop rule (an Inject passes only to a layer-1
//!   mix node of its epoch) and the same rule for replies sent through SURBs;
//! - the final hop's request handling, and the gateway's own dropbox code
//!   ([`gateway::Dropboxes`]: quotas, the seq counter, the fetch window,
//!   authorisation with `fetch_max_age_secs`, deletes by `after_seq`).
//!
//! What is modelled: links (a latency, and the faults of [`LinkFaults`]),
//! the hop delays (the header's, clamped to `params.max_delay_ms`), the
//! constant-rate downlink (a Poisson process at λ_D per subscribed client,
//! a bounded queue, dummies when it is empty, as `gateway::deliver`), and
//! the storage thread (each request commits alone, at once). Left out: QUIC
//! (reconnection, flow control), client rate limits, the directory (one
//! topology, one epoch), the nodes' own loops (λ_M) and key rotation.
//!
//! Looking in: [`Sim::set_observer`] is told everything put on a link and
//! every packet a node peels (what a global passive adversary sees, and the
//! ground truth behind it); `umbra eval anonymity` ([`crate::eval`]) attacks
//! that. [`Sim::send_packet`] lets a caller send a node's own packets (the
//! evaluation's λ_M loops); [`Sim::set_dangerous_zero_delay`] makes every node
//! forward at once, as a node's `dangerous_zero_delay` does. Neither is used
//! unless called.
//!
//! Persistence: a client added with [`ClientOptions::persistent`] writes
//! `ClientState::take_changes` to a [`Disk`] in memory when `Client::open`'s
//! driver would (after a send, before handing a message over, before a
//! fetch that confirms, and every `persist_interval`), and a restart
//! restores from it with `ClientState::restore`; without it a restart keeps
//! only the identities and contacts. [`Sim::set_restart_hook`] replaces
//! either.
//!
//! Determinism: every choice the simulation makes comes from RNGs seeded
//! from [`SimConfig::seed`], and events are ordered by (virtual time,
//! sequence number). Two things are outside its reach: sphinx-packet's
//! padding bytes (OS randomness; they decide nothing), and the iteration
//! order of the `HashMap`s inside `ClientState` (std's random hasher, new
//! per map), which decides, for example, the order in which fragments whose
//! acks timed out together are sent again, and so which RNG draw goes to
//! which packet. Runs without simultaneous timeouts replay exactly; runs
//! with them (faults) differ in detail from one run to the next.

use client_sdk::{ClientConfig, ClientState, ContactId, Event, MessageId, Now, Status};
use gateway::{Dropboxes, GatewayConfig};
use protocol::NodeId;
use protocol::epoch::EpochSchedule;
use protocol::frame::{self, FrameKind};
use protocol::keys::{EpochKey, KeyRing};
use protocol::messages::{ACK_BODY, FetchReply, Request};
use protocol::packet::{self, Peeled};
use protocol::replay::ReplayCache;
use protocol::topology::{NetworkParams, Role, TopologyDocument, VoteNode};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};
use x25519_dalek::StaticSecret;

/// Where the virtual wall clock starts: 2026-01-01 00:20 UTC, twenty
/// minutes into a dropbox period, so that a jump of ±10 minutes stays in it.
pub const UNIX_START_MS: u64 = 1_767_225_600_000 + 20 * 60_000;

/// The authority clients are configured with. Never contacted: the
/// simulation hands clients their topology.
const SIM_AUTHORITY_URL: &str = "http://127.0.0.1:9";
const SIM_AUTHORITY_KEY: &str = "0707070707070707070707070707070707070707070707070707070707070707";

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds every RNG of the simulation and its clients.
    pub seed: u64,
    /// Mix nodes in each of the three layers (at least 1).
    pub mixes_per_layer: usize,
    /// Gateways (at least 1); each is an entry and hosts dropboxes.
    pub gateways: usize,
    /// The topology's parameters.
    pub params: NetworkParams,
    /// Length of the epoch schedule (the simulation stays in one epoch:
    /// its nodes hold one key). Clients whose wall clock passes the end of
    /// the epoch plus the keys' grace hold their fragments and fetches
    /// (`ClientState::topology_usable`), so keep every client's clock
    /// within it.
    pub epoch_length_ms: u64,
    /// The wall clock at virtual time zero, Unix ms.
    pub unix_start_ms: u64,
    /// One-way latency of every link.
    pub link_latency: Duration,
    /// Gateway limits: `client_queue`, `fetch_max_age_secs`, quotas, TTL.
    pub gateway: GatewayConfig,
    /// Settings clients are made with (see [`sim_client_config`]).
    pub client: ClientConfig,
    /// Tags each node's replay cache is sized for.
    pub replay_capacity: u64,
}

impl Default for SimConfig {
    /// Realistic shapes, fast numbers: 30 ms mean hop delay, λ_P = 20/s,
    /// λ_L = 2/s, λ_D = 50/s, fetches every second, 5 ms links, two nodes per
    /// layer and two gateways.
    fn default() -> Self {
        Self {
            seed: 1,
            mixes_per_layer: 2,
            gateways: 2,
            params: NetworkParams {
                mix_delay_mean_ms: 30,
                max_delay_ms: 1_000,
                lambda_payload: 20.0,
                lambda_loop: 2.0,
                lambda_mix_loop: 1.0,
                lambda_downlink: 50.0,
            },
            epoch_length_ms: 3_600_000,
            unix_start_ms: UNIX_START_MS,
            link_latency: Duration::from_millis(5),
            gateway: GatewayConfig::default(),
            client: sim_client_config(),
            replay_capacity: 200_000,
        }
    }
}

/// The authority simulated clients are configured with (never contacted:
/// the simulation hands them their topology).
pub fn sim_authority() -> client_sdk::AuthorityRef {
    client_sdk::AuthorityRef {
        url: SIM_AUTHORITY_URL.into(),
        key: SIM_AUTHORITY_KEY.into(),
    }
}

/// The SDK's defaults, with the timers a simulation wants: fetches every
/// second, two periods of catch-up (not 24: each is a fetch per contact at
/// start), 1 s of ack slack (links here add milliseconds, not seconds).
pub fn sim_client_config() -> ClientConfig {
    let mut cfg = ClientConfig::builder(vec![sim_authority()], 1)
        .fetch_interval(Duration::from_secs(1))
        .catch_up_periods(2)
        .message_ttl(Duration::from_secs(600))
        .build()
        .expect("a fixed, valid client config");
    cfg.ack_slack = Duration::from_secs(1);
    cfg
}

/// What a [`Sim::set_observer`] observer is told.
#[derive(Debug, Clone, Copy)]
pub enum Observed<'a> {
    /// Something was put on the link `from → to`, leaving at `depart`
    /// (virtual time), before the link's faults and partitions.
    Link {
        /// The sender.
        from: Endpoint,
        /// The receiver.
        to: Endpoint,
        /// When it leaves `from`.
        depart: Duration,
        /// What it is.
        what: OnLink<'a>,
    },
    /// Node `node` peeled `packet`, which arrived at `at`: `peeled` is what
    /// came out (`None`: dropped as a replay, malformed or of an unknown epoch).
    Peel {
        /// The node.
        node: NodeId,
        /// Virtual time.
        at: Duration,
        /// The packet as it arrived.
        packet: &'a [u8],
        /// What the node's key made of it.
        peeled: Option<&'a Peeled>,
    },
}

/// What travels on a link, as an observer sees it.
#[derive(Debug, Clone, Copy)]
pub enum OnLink<'a> {
    /// A client's Inject frame to its entry gateway (length prefix included).
    Inject {
        /// The whole frame.
        frame: &'a [u8],
    },
    /// A Sphinx packet between nodes.
    Packet {
        /// Its bytes.
        packet: &'a [u8],
    },
    /// A Deliver frame of a client's constant-rate downlink.
    Deliver {
        /// The reply's identifier (zero for a dummy).
        identifier: [u8; 16],
    },
}

/// Told everything put on a link and every packet peeled (see [`Observed`]).
pub type Observer = Box<dyn FnMut(Observed<'_>)>;

/// A client of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientHandle(pub usize);

/// One identity hosted by one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Persona {
    /// The client hosting it.
    pub client: ClientHandle,
    /// Its public key, as contacts know it.
    pub id: ContactId,
}

/// One end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A client (its link to its entry gateway).
    Client(ClientHandle),
    /// A mix node or gateway.
    Node(NodeId),
}

/// Faults of a link, each drawn independently per packet.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFaults {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet arrives twice (the copy on its own delay).
    pub duplicate: f64,
    /// Probability that a packet (or copy) is held an extra time, uniform
    /// in `[0, max_extra_delay)`: it then overtakes and is overtaken.
    pub delay: f64,
    /// Longest extra hold.
    pub max_extra_delay: Duration,
}

impl LinkFaults {
    /// No faults.
    pub const NONE: Self = Self {
        loss: 0.0,
        duplicate: 0.0,
        delay: 0.0,
        max_extra_delay: Duration::ZERO,
    };
}

/// What happened in the network, counted as a real deployment's metrics
/// would (drops by the reasons the nodes use), plus what the fault knobs did.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    /// Events handled.
    pub events: u64,
    /// Inject frames clients sent.
    pub client_frames: u64,
    /// Packets put on a link (every hop, both directions, downlink included).
    pub transmissions: u64,
    /// Of those, dropped by the loss knob.
    pub lost: u64,
    /// Extra copies the duplication knob made.
    pub duplicated: u64,
    /// Redelivered messages (taken before a restart, not yet done with)
    /// that the application's record already held.
    pub redelivered_skipped: u64,
    /// Packets (or copies) the delay knob held back.
    pub delayed: u64,
    /// Packets dropped because an end of their link was partitioned.
    pub partitioned: u64,
    /// SURB-acks the ack knob dropped.
    pub acks_withheld: u64,
    /// SURB-acks the ack knob held back.
    pub acks_delayed: u64,
    /// Sphinx layers peeled.
    pub peels: u64,
    /// Packets nodes dropped, by the reason their metrics would give
    /// (`replay`, `malformed`, `unknown_epoch`, `bad_first_hop`,
    /// `unknown_next_hop`, `unexpected_final`, `no_client`, `queue_full`,
    /// `downlink_full`).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Messages the gateways stored.
    pub stored: u64,
    /// Stores the gateways refused (quotas).
    pub store_refused: u64,
    /// SURB-acks the gateways sent.
    pub acks_sent: u64,
    /// Fetch requests the gateways answered (refused ones included).
    pub fetches: u64,
    /// Fetch replies the gateways sent.
    pub fetch_replies_sent: u64,
    /// Drop-cover packets that reached a gateway.
    pub cover_received: u64,
    /// SURB replies (acks, fetch replies, loops) queued for a client.
    pub replies_queued: u64,
    /// Downlink frames that carried a queued reply.
    pub downlink_real: u64,
    /// Dummies sent on downlinks.
    pub downlink_dummy: u64,
    /// Client restarts.
    pub restarts: u64,
    /// Writes of persistent clients' changes.
    pub persists: u64,
    /// Bytes those writes carried.
    pub persisted_bytes: u64,
    /// Times a client's `poll_timeout` named a moment already past right
    /// after it ran (its float seconds rounding below the instant); the
    /// simulation moves the wake-up 1 µs on.
    pub stale_timeouts: u64,
}

/// What a gateway did with a dropbox request, for tracing a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoxEvent {
    /// A message was stored under `seq`.
    Stored {
        /// Virtual time.
        at: Duration,
        /// The box.
        dropbox: [u8; 32],
        /// Its seq.
        seq: u64,
    },
    /// A fetch was answered.
    Fetched {
        /// Virtual time.
        at: Duration,
        /// The box.
        dropbox: [u8; 32],
        /// The request's `after_seq` (everything up to it was deleted).
        after_seq: u64,
        /// The request's cursor.
        cursor: u64,
        /// Whether it asked for a listing.
        list: bool,
        /// Whether the gateway accepted it (fresh timestamp, capability).
        authorised: bool,
        /// The seqs its replies carry.
        seqs: Vec<u64>,
    },
}

/// A message a client's application sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// When (virtual time).
    pub at: Duration,
    /// Its id.
    pub id: MessageId,
    /// From which of the client's identities.
    pub from: ContactId,
    /// To which contact.
    pub to: ContactId,
    /// The body.
    pub body: Vec<u8>,
    /// The client's incarnation (restarts so far) when it was sent.
    pub incarnation: u64,
}

/// A message a client handed to its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRecord {
    /// When (virtual time).
    pub at: Duration,
    /// Which of the client's identities it was for.
    pub to: ContactId,
    /// Who sent it.
    pub from: ContactId,
    /// The sender's id of it.
    pub id: MessageId,
    /// The body.
    pub body: Vec<u8>,
    /// The group it was sent to, if any.
    pub group: Option<client_sdk::GroupId>,
    /// Its kind, if typed.
    pub kind: Option<client_sdk::ContentKind>,
    /// Its attachment's metadata, if any.
    pub attachment: Option<client_sdk::Attachment>,
}

/// What a client's application saw, across restarts (the application's
/// own log, not the client's state).
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    /// Messages sent, in order.
    pub sent: Vec<SentRecord>,
    /// Messages received, in the order they were handed over.
    pub received: Vec<ReceivedRecord>,
    /// Every status event per message, in order.
    pub statuses: BTreeMap<MessageId, Vec<(Duration, Status)>>,
    /// Messages received that did not decrypt (`Event::Undecryptable`):
    /// when, from whom, the sender's id.
    pub undecryptable: Vec<(Duration, ContactId, MessageId)>,
    /// Group changes (`Event::Group`): when, which identity, which group, what.
    pub groups: Vec<(
        Duration,
        ContactId,
        client_sdk::GroupId,
        client_sdk::state::GroupChange,
    )>,
}

impl ClientLog {
    /// The last status reported for `id`.
    pub fn status(&self, id: &MessageId) -> Option<Status> {
        self.statuses.get(id)?.last().map(|(_, s)| *s)
    }

    /// Whether `id` was ever reported failed.
    pub fn failed(&self, id: &MessageId) -> bool {
        self.statuses
            .get(id)
            .is_some_and(|v| v.iter().any(|(_, s)| s.is_failure()))
    }
}

/// What a client is rebuilt from after a restart: what its application
/// keeps (the identities' secrets, the invites it accepted, its settings).
#[derive(Clone)]
pub struct Profile {
    /// Settings, with the entry gateway fixed.
    pub config: ClientConfig,
    /// The x25519 secrets of the identities hosted, in order.
    pub secrets: Vec<[u8; 32]>,
    /// Accepted invites: (my identity, their invite string).
    pub contacts: Vec<(ContactId, String)>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("identities", &self.secrets.len())
            .field("contacts", &self.contacts.len())
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// A fresh state hosting the profile's identities and contacts.
    pub fn fresh_state(
        &self,
        topology: TopologyDocument,
        now: Now,
        rng: &mut StdRng,
    ) -> Result<ClientState, client_sdk::Error> {
        let mut st = ClientState::new(self.config.clone(), topology, now, rng)?;
        for s in &self.secrets {
            st.add_identity(StaticSecret::from(*s));
        }
        for (me, invite) in &self.contacts {
            st.add_contact(me, invite)?;
        }
        Ok(st)
    }
}

/// What a restart hook gets: the state being dropped, what the application
/// keeps, what the client had persisted (if it persists), and the moment.
pub struct Restart<'a> {
    /// The state that crashed; dropped after the hook returns.
    pub old: &'a mut ClientState,
    /// What the application keeps.
    pub profile: &'a Profile,
    /// The records a persistent client had written when it crashed
    /// (`ClientState::take_changes`, applied in order); `None` for a client
    /// without persistence.
    pub disk: Option<&'a Disk>,
    /// The topology the network serves now.
    pub topology: TopologyDocument,
    /// The client's clocks.
    pub now: Now,
    /// The client's RNG for the new state.
    pub rng: &'a mut StdRng,
}

/// A persistent client's store: record key → value, as
/// `ClientState::take_changes` writes them (in memory: a crash loses
/// nothing written, and nothing else).
pub type Disk = BTreeMap<Vec<u8>, Vec<u8>>;

/// Builds the state a client restarts with (default: [`default_restart`]).
pub type RestartHook = Box<dyn FnMut(Restart<'_>) -> Result<ClientState, client_sdk::Error>>;

/// The restart of a client without a store: a new state with the same
/// identities and contacts; outbox, box state, reply keys and the seen
/// message ids are gone.
pub fn fresh_restart(r: Restart<'_>) -> Result<ClientState, client_sdk::Error> {
    r.profile.fresh_state(r.topology, r.now, r.rng)
}

/// `ClientState::restore` from the client's disk if it persists (as
/// `Client::open` does), else [`fresh_restart`].
pub fn default_restart(r: Restart<'_>) -> Result<ClientState, client_sdk::Error> {
    match r.disk {
        Some(disk) if !disk.is_empty() => ClientState::restore(
            r.profile.config.clone(),
            r.topology,
            disk.iter().map(|(k, v)| (k.clone(), v.clone())),
            r.now,
            r.rng,
        ),
        _ => fresh_restart(r),
    }
}

/// How a client is added.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Identities it hosts (0 counts as 1).
    pub identities: usize,
    /// Index of its entry gateway among [`Sim::gateways`]; `None`: the
    /// client picks one at random.
    pub entry: Option<usize>,
    /// Its settings; `None`: [`SimConfig::client`].
    pub config: Option<ClientConfig>,
    /// It persists its state as `Client::open`'s driver does (on a [`Disk`]
    /// in memory) and a restart restores from it.
    pub persistent: bool,
}

struct SimClient {
    state: ClientState,
    profile: Profile,
    rng: StdRng,
    entry: NodeId,
    /// Restarts so far; frames for an earlier incarnation's connection are lost.
    incarnation: u64,
    /// Offset of its wall clock from the true one, ms.
    skew_ms: i64,
    /// When it next wants `handle_timeout` (virtual µs).
    wake_us: u64,
    frames_sent: u64,
    log: ClientLog,
    /// Its store, if it persists.
    disk: Option<Disk>,
    last_persist_us: u64,
}

struct SimNode {
    role: Role,
    ring: KeyRing,
    dropboxes: Option<Dropboxes>,
}

/// A subscription at a gateway: the client's downlink.
struct Sub {
    client: usize,
    incarnation: u64,
    queue: VecDeque<([u8; 16], Vec<u8>)>,
    generation: u64,
}

/// What travels on a link.
#[derive(Clone)]
enum Carried {
    Inject {
        gateway: NodeId,
        frame: Vec<u8>,
    },
    Packet {
        to: NodeId,
        epoch: u64,
        packet: Vec<u8>,
    },
    Deliver {
        client: usize,
        incarnation: u64,
        identifier: [u8; 16],
        payload: Vec<u8>,
    },
}

type Call = Box<dyn FnOnce(&mut Sim)>;

enum What {
    Arrive(Carried),
    Tick {
        gateway: NodeId,
        address: [u8; 32],
        generation: u64,
    },
    Expire,
    /// A gateway's batch acks whose wait ends now.
    BatchAcks {
        gateway: NodeId,
    },
    Call(Call),
}

struct Scheduled {
    at: u64,
    seq: u64,
    what: What,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn dur(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// A seed for one purpose of one party, from the simulation's seed.
fn sub_seed(seed: u64, purpose: u64, index: u64) -> u64 {
    // SplitMix64 finaliser over the three: distinct inputs, unrelated streams.
    let mut z = seed
        .wrapping_add(purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An exponential gap at `rate` per second, in µs (at least 1).
fn exp_gap_us<R: Rng + ?Sized>(rng: &mut R, rate: f64) -> u64 {
    let u: f64 = rng.random();
    let s = -(1.0 - u).ln() / rate.max(1e-9);
    ((s * 1e6) as u64).max(1)
}

/// Gateways expire old messages this often, as the real one does.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);
/// How often [`Sim::run_until_cond`] looks at its condition, virtual time.
const COND_EVERY: Duration = Duration::from_millis(100);

/// A network of mix nodes, gateways and whole clients on a virtual clock.
pub struct Sim {
    cfg: SimConfig,
    /// `Now::at` of virtual time zero.
    base: Instant,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    topology: TopologyDocument,
    nodes: BTreeMap<NodeId, SimNode>,
    gateways: Vec<NodeId>,
    clients: Vec<SimClient>,
    subs: BTreeMap<(NodeId, [u8; 32]), Sub>,
    next_generation: u64,
    faults: LinkFaults,
    link_faults: BTreeMap<(Endpoint, Endpoint), LinkFaults>,
    endpoint_faults: BTreeMap<Endpoint, LinkFaults>,
    partitions: Vec<(Endpoint, u64, u64)>,
    /// Clients asleep (client, from, until; virtual µs).
    asleep: Vec<(usize, u64, u64)>,
    ack_faults: LinkFaults,
    restart_hook: RestartHook,
    fault_rng: StdRng,
    net_rng: StdRng,
    stats: SimStats,
    /// Successful stores per dropbox id, retransmissions included.
    stores_by_box: BTreeMap<[u8; 32], u64>,
    box_events: Vec<BoxEvent>,
    observer: Option<Observer>,
    zero_delay: bool,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now())
            .field("clients", &self.clients.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A network of `3 × mixes_per_layer` mix nodes and `gateways` gateways,
    /// each holding a Sphinx key for the one epoch, listed in one topology.
    ///
    /// Panics if redb cannot make an in-memory database (and, later, if one
    /// fails): a bug, not a condition a simulation handles.
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(sub_seed(cfg.seed, 1, 0));
        let schedule = EpochSchedule::new(0, cfg.epoch_length_ms.max(1)).unwrap_or(EpochSchedule {
            genesis_ms: 0,
            length_ms: 1,
        });
        let epoch = schedule.epoch_at(cfg.unix_start_ms);
        let mut nodes = BTreeMap::new();
        let mut votes = Vec::new();
        let mixes = 3 * cfg.mixes_per_layer.max(1);
        let gateways = cfg.gateways.max(1);
        for i in 0..mixes + gateways {
            let role = if i < mixes { Role::Mix } else { Role::Gateway };
            let mut identity = [0u8; 32];
            rng.fill_bytes(&mut identity);
            let (secret, public) = packet::sphinx_keypair(&mut rng);
            let mut ring = KeyRing::new();
            ring.insert(EpochKey::new(
                epoch,
                secret,
                ReplayCache::new(cfg.replay_capacity.max(1), 1e-9),
            ));
            let dropboxes = (role == Role::Gateway)
                .then(|| Dropboxes::new(&cfg.gateway).expect("in-memory dropboxes"));
            nodes.insert(
                identity,
                SimNode {
                    role,
                    ring,
                    dropboxes,
                },
            );
            votes.push(VoteNode {
                identity,
                role,
                address: format!("127.0.0.1:{}", 9000 + i),
                client_address: (role == Role::Gateway).then(|| format!("127.0.0.1:{}", 9600 + i)),
                sphinx_key: public,
            });
        }
        let topology = TopologyDocument::from_nodes(epoch, 1, schedule, cfg.params, votes);
        let gateways: Vec<NodeId> = topology.gateways().map(|g| g.identity).collect();
        let mut sim = Self {
            base: Instant::now(),
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            topology,
            nodes,
            gateways,
            clients: Vec::new(),
            subs: BTreeMap::new(),
            next_generation: 0,
            faults: LinkFaults::NONE,
            link_faults: BTreeMap::new(),
            endpoint_faults: BTreeMap::new(),
            partitions: Vec::new(),
            asleep: Vec::new(),
            ack_faults: LinkFaults::NONE,
            restart_hook: Box::new(default_restart),
            fault_rng: StdRng::seed_from_u64(sub_seed(cfg.seed, 2, 0)),
            net_rng: StdRng::seed_from_u64(sub_seed(cfg.seed, 3, 0)),
            stats: SimStats::default(),
            stores_by_box: BTreeMap::new(),
            box_events: Vec::new(),
            observer: None,
            zero_delay: false,
            cfg,
        };
        sim.schedule_what(us(EXPIRY_EVERY), What::Expire);
        sim
    }

    // ---- looking ----

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        dur(self.now_us)
    }

    /// The true wall clock (the gateways'), Unix ms.
    pub fn unix_ms(&self) -> u64 {
        self.cfg.unix_start_ms + self.now_us / 1000
    }

    /// The topology every party routes by.
    pub fn topology(&self) -> &TopologyDocument {
        &self.topology
    }

    /// The gateways' identities, in topology order.
    pub fn gateways(&self) -> &[NodeId] {
        &self.gateways
    }

    /// The dropboxes of gateway `gateway`.
    pub fn dropboxes(&self, gateway: &NodeId) -> Option<&Dropboxes> {
        self.nodes.get(gateway)?.dropboxes.as_ref()
    }

    /// Fetches the gateways refused (stale timestamp or bad capability).
    pub fn fetches_refused(&self) -> u64 {
        self.nodes
            .values()
            .filter_map(|n| n.dropboxes.as_ref())
            .map(|d| d.metrics().fetches.with_label_values(&["refused"]).get())
            .sum()
    }

    /// The dropbox period of the true clock.
    pub fn period(&self) -> u64 {
        protocol::dropbox::period_at(self.unix_ms())
    }

    /// The id of the box `from` writes to `to` at `slot` (a period, for
    /// its box 0; both personas hosted here).
    pub fn dropbox_id(&self, from: Persona, to: Persona, slot: u64) -> Option<[u8; 32]> {
        Some(
            self.pair_secret(from, to)?
                .dropbox(&from.id.0, &to.id.0, slot)
                .id,
        )
    }

    /// The secret `from` and `to` share (both hosted here): one X25519 for
    /// as many box ids as wanted.
    pub fn pair_secret(&self, from: Persona, to: Persona) -> Option<protocol::dropbox::PairSecret> {
        let secret = self.clients[from.client.0]
            .profile
            .secrets
            .iter()
            .map(|s| StaticSecret::from(*s))
            .find(|s| x25519_dalek::PublicKey::from(s).to_bytes() == from.id.0)?;
        protocol::dropbox::PairSecret::derive(&secret, &to.id.0).ok()
    }

    /// Messages stored in dropbox `id` so far, every copy counted: more than
    /// were sent means retransmitted fragments were stored twice, and the
    /// reader had to drop the copies.
    pub fn stores_in(&self, id: &[u8; 32]) -> u64 {
        self.stores_by_box.get(id).copied().unwrap_or(0)
    }

    /// Every store and fetch the gateways handled, in order.
    pub fn box_events(&self) -> &[BoxEvent] {
        &self.box_events
    }

    /// A persistent client's store.
    pub fn disk(&self, c: ClientHandle) -> Option<&Disk> {
        self.clients[c.0].disk.as_ref()
    }

    /// What a client's application keeps (identities, contacts, settings).
    pub fn profile(&self, c: ClientHandle) -> &Profile {
        &self.clients[c.0].profile
    }

    /// What happened so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// A client's current state.
    pub fn state(&self, c: ClientHandle) -> &ClientState {
        &self.clients[c.0].state
    }

    /// A client's application log.
    pub fn log(&self, c: ClientHandle) -> &ClientLog {
        &self.clients[c.0].log
    }

    /// A client's entry gateway.
    pub fn entry(&self, c: ClientHandle) -> NodeId {
        self.clients[c.0].entry
    }

    /// Inject frames a client sent, over all its incarnations.
    pub fn frames_sent(&self, c: ClientHandle) -> u64 {
        self.clients[c.0].frames_sent
    }

    /// The identities a client hosts.
    pub fn personas(&self, c: ClientHandle) -> Vec<Persona> {
        self.clients[c.0]
            .profile
            .secrets
            .iter()
            .map(|s| Persona {
                client: c,
                id: ContactId(x25519_dalek::PublicKey::from(&StaticSecret::from(*s)).to_bytes()),
            })
            .collect()
    }

    /// A client's first identity.
    pub fn persona(&self, c: ClientHandle) -> Persona {
        self.personas(c)[0]
    }

    /// The clocks client `i` reads now.
    fn client_now(&self, i: usize) -> Now {
        let unix = self.unix_ms() as i64 + self.clients[i].skew_ms;
        Now {
            at: self.base + dur(self.now_us),
            unix_ms: unix.max(0) as u64,
        }
    }

    // ---- setting up ----

    /// Adds a client with one identity and a random entry gateway.
    pub fn add_client(&mut self) -> ClientHandle {
        self.add_client_with(ClientOptions::default())
            .expect("a client in the simulation's own topology")
    }

    /// Adds a client. It subscribes at its entry gateway at once.
    pub fn add_client_with(
        &mut self,
        opts: ClientOptions,
    ) -> Result<ClientHandle, client_sdk::Error> {
        let i = self.clients.len();
        let mut rng = StdRng::seed_from_u64(sub_seed(self.cfg.seed, 10, i as u64));
        let mut config = opts.config.unwrap_or_else(|| self.cfg.client.clone());
        if let Some(g) = opts.entry {
            config.entry_gateway = Some(self.gateways[g % self.gateways.len()]);
        }
        let mut secrets = Vec::new();
        for _ in 0..opts.identities.max(1) {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            secrets.push(s);
        }
        let mut profile = Profile {
            config,
            secrets,
            contacts: Vec::new(),
        };
        let now = Now {
            at: self.base + dur(self.now_us),
            unix_ms: self.unix_ms(),
        };
        let state = profile.fresh_state(self.topology.clone(), now, &mut rng)?;
        let entry = state.entry().identity;
        // A restart keeps the entry gateway, as an application would.
        profile.config.entry_gateway = Some(entry);
        self.clients.push(SimClient {
            state,
            profile,
            rng,
            entry,
            incarnation: 0,
            skew_ms: 0,
            wake_us: 0,
            frames_sent: 0,
            log: ClientLog::default(),
            disk: opts.persistent.then(Disk::new),
            last_persist_us: self.now_us,
        });
        self.persist(i);
        self.subscribe(i);
        self.rewake(i);
        Ok(ClientHandle(i))
    }

    /// Makes the first identities of `a` and `b` contacts of each other.
    pub fn connect_contacts(&mut self, a: ClientHandle, b: ClientHandle) {
        let (pa, pb) = (self.persona(a), self.persona(b));
        self.connect_personas(pa, pb)
            .expect("two fresh identities accept each other's invites");
    }

    /// Makes `a` and `b` contacts of each other, through invite strings as
    /// users exchange them.
    pub fn connect_personas(&mut self, a: Persona, b: Persona) -> Result<(), client_sdk::Error> {
        for (me, them) in [(a, b), (b, a)] {
            // Their invite, made by their state (a fresh one-time key).
            let invite = self.clients[them.client.0]
                .state
                .invite(&them.id, &format!("client {}", them.client.0))?;
            self.persist(them.client.0);
            let c = &mut self.clients[me.client.0];
            c.state.add_contact(&me.id, &invite)?;
            c.profile.contacts.push((me.id, invite));
            self.persist(me.client.0);
            self.rewake(me.client.0);
        }
        Ok(())
    }

    /// Sends `body` from the first identity of `a` to the first of `b`.
    pub fn send(
        &mut self,
        a: ClientHandle,
        b: ClientHandle,
        body: &[u8],
    ) -> Result<MessageId, client_sdk::Error> {
        let (pa, pb) = (self.persona(a), self.persona(b));
        self.send_as(pa, pb, body)
    }

    /// Sends `body` from `from` to its contact `to`, now.
    pub fn send_as(
        &mut self,
        from: Persona,
        to: Persona,
        body: &[u8],
    ) -> Result<MessageId, client_sdk::Error> {
        let i = from.client.0;
        let now = self.client_now(i);
        let at = self.now();
        let c = &mut self.clients[i];
        let id = c.state.send(now, &from.id, &to.id, body, &mut c.rng)?;
        // Queued means on disk (`Client::send_as`).
        self.persist(i);
        let c = &mut self.clients[i];
        c.log.sent.push(SentRecord {
            at,
            id,
            from: from.id,
            to: to.id,
            body: body.to_vec(),
            incarnation: c.incarnation,
        });
        self.collect(i);
        self.rewake(i);
        Ok(id)
    }

    /// Runs `f` on a client's state now (with its clock and RNG), as an
    /// application's call would: what it changed is persisted, its events
    /// and messages collected, the client woken. For calls the simulator
    /// has no helper for (groups, renames).
    pub fn act<T>(
        &mut self,
        c: ClientHandle,
        f: impl FnOnce(&mut ClientState, Now, &mut StdRng) -> T,
    ) -> T {
        let i = c.0;
        let now = self.client_now(i);
        let cl = &mut self.clients[i];
        let out = f(&mut cl.state, now, &mut cl.rng);
        self.persist(i);
        self.collect(i);
        self.rewake(i);
        out
    }

    // ---- faults ----

    /// Faults of every link without a more specific setting.
    pub fn set_faults(&mut self, f: LinkFaults) {
        self.faults = f;
    }

    /// Faults of the link from `from` to `to` (one direction).
    pub fn set_link_faults(&mut self, from: Endpoint, to: Endpoint, f: LinkFaults) {
        self.link_faults.insert((from, to), f);
    }

    /// Faults of every link to or from `e` (a link setting wins).
    pub fn set_endpoint_faults(&mut self, e: Endpoint, f: LinkFaults) {
        self.endpoint_faults.insert(e, f);
    }

    /// Cuts `e` off between virtual times `from` and `until`: whatever it
    /// sends or would receive in that interval is lost. A partitioned
    /// gateway keeps its dropboxes; a partitioned client keeps running.
    pub fn partition(&mut self, e: Endpoint, from: Duration, until: Duration) {
        self.partitions.push((e, us(from), us(until)));
    }

    /// Puts a client to sleep between virtual times `from` and `until`, as
    /// a phone's system does with an app: it does not run (no timers, no
    /// frames, no fetch rounds) and loses whatever would reach it. At
    /// `until` it runs again and sees the time gone by.
    pub fn sleep(&mut self, c: ClientHandle, from: Duration, until: Duration) {
        self.asleep.push((c.0, us(from), us(until)));
        self.partition(Endpoint::Client(c), from, until);
    }

    fn partitioned(&self, e: Endpoint, at: u64) -> bool {
        self.partitions
            .iter()
            .any(|(p, a, b)| *p == e && (*a..*b).contains(&at))
    }

    fn faults_of(&self, from: Endpoint, to: Endpoint) -> LinkFaults {
        self.link_faults
            .get(&(from, to))
            .or_else(|| self.endpoint_faults.get(&to))
            .or_else(|| self.endpoint_faults.get(&from))
            .copied()
            .unwrap_or(self.faults)
    }

    /// Faults of the SURB-acks gateways send, on top of their links': a
    /// loss here drops an ack (not the store), a delay holds it back (a slow
    /// commit). The network cannot tell acks from other replies; the
    /// gateway that sends them can, and so can this knob.
    pub fn set_ack_faults(&mut self, f: LinkFaults) {
        self.ack_faults = f;
    }

    /// Replaces how restarted clients are rebuilt (default: [`default_restart`]).
    pub fn set_restart_hook(&mut self, hook: RestartHook) {
        self.restart_hook = hook;
    }

    /// Tells `observer` everything put on a link and every packet a node
    /// peels, from now on (replacing any earlier observer). It changes
    /// nothing in the run.
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// DANGEROUS, evaluation only: every node forwards at once, ignoring the
    /// delay in the packet's header (a node's `dangerous_zero_delay`).
    pub fn set_dangerous_zero_delay(&mut self, on: bool) {
        self.zero_delay = on;
    }

    /// Node `from` sends a Sphinx `packet` (of the topology's epoch) to node
    /// `to` now: for packets of the nodes' own, such as their loops. (A loop
    /// back at its mix node is counted in `dropped["unexpected_final"]`: the
    /// simulation keeps no loop tracker for nodes.)
    pub fn send_packet(&mut self, from: NodeId, to: NodeId, packet: Vec<u8>) {
        let epoch = self.topology.epoch;
        self.transmit(
            Endpoint::Node(from),
            Endpoint::Node(to),
            self.now_us,
            Carried::Packet { to, epoch, packet },
        );
    }

    /// Restarts a client now, as a crash would: its state is dropped (what
    /// a persistent client had not written is lost) and rebuilt by the
    /// restart hook; its connection closes, so the gateway forgets its
    /// subscription and the replies queued on it, and Deliver frames in
    /// flight to it are lost. It subscribes again with the new state's address.
    pub fn restart(&mut self, c: ClientHandle) -> Result<(), client_sdk::Error> {
        let i = c.0;
        let now = self.client_now(i);
        let old_key = (self.clients[i].entry, self.clients[i].state.address());
        let incarnation = self.clients[i].incarnation + 1;
        let mut rng = StdRng::seed_from_u64(sub_seed(self.cfg.seed, 11 + incarnation, i as u64));
        let client = &mut self.clients[i];
        let new = (self.restart_hook)(Restart {
            old: &mut client.state,
            profile: &client.profile,
            disk: client.disk.as_ref(),
            topology: self.topology.clone(),
            now,
            rng: &mut rng,
        })?;
        client.entry = new.entry().identity;
        client.state = new;
        client.rng = rng;
        client.incarnation = incarnation;
        client.last_persist_us = self.now_us;
        self.stats.restarts += 1;
        self.subs.remove(&old_key);
        self.subscribe(i);
        self.rewake(i);
        Ok(())
    }

    /// Moves a client's wall clock by `by_ms` (its monotonic clock runs on).
    pub fn jump_clock(&mut self, c: ClientHandle, by_ms: i64) {
        self.clients[c.0].skew_ms += by_ms;
    }

    /// How far a client's wall clock is off, ms.
    pub fn clock_skew(&self, c: ClientHandle) -> i64 {
        self.clients[c.0].skew_ms
    }

    /// Runs `f` at virtual time `at` (or now, if that has passed).
    pub fn schedule(&mut self, at: Duration, f: impl FnOnce(&mut Sim) + 'static) {
        let at = us(at).max(self.now_us);
        self.schedule_what(at, What::Call(Box::new(f)));
    }

    // ---- running ----

    /// Runs every event and client timer due up to virtual time `at`.
    pub fn run_until(&mut self, at: Duration) {
        let limit = us(at);
        while self.step(limit) {}
        self.now_us = self.now_us.max(limit);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now() + d);
    }

    /// Runs until `cond` holds (looked at every 100 ms of virtual time) or
    /// `max` of virtual time has passed; whether it held.
    pub fn run_until_cond(&mut self, max: Duration, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now() + max;
        loop {
            if cond(self) {
                return true;
            }
            if self.now() >= deadline {
                return false;
            }
            self.run_until((self.now() + COND_EVERY).min(deadline));
        }
    }

    /// One thing: the clients due, or the next event. False if nothing is
    /// due by `limit`.
    fn step(&mut self, limit: u64) -> bool {
        let event = self.queue.peek().map_or(u64::MAX, |Reverse(e)| e.at);
        let client = self
            .clients
            .iter()
            .map(|c| c.wake_us)
            .min()
            .unwrap_or(u64::MAX);
        let t = event.min(client);
        if t > limit {
            return false;
        }
        self.now_us = self.now_us.max(t);
        if client <= event {
            // Clients whose timers are due run before the event at the same time.
            for i in 0..self.clients.len() {
                if self.clients[i].wake_us <= self.now_us {
                    self.service(i);
                }
            }
        } else if let Some(Reverse(e)) = self.queue.pop() {
            self.stats.events += 1;
            self.handle(e.what);
        }
        true
    }

    fn schedule_what(&mut self, at: u64, what: What) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            what,
        }));
    }

    fn handle(&mut self, what: What) {
        match what {
            What::Arrive(Carried::Inject { gateway, frame }) => self.on_inject(gateway, &frame),
            What::Arrive(Carried::Packet { to, epoch, packet }) => {
                self.on_packet(to, epoch, &packet)
            }
            What::Arrive(Carried::Deliver {
                client,
                incarnation,
                identifier,
                payload,
            }) => {
                if self.clients[client].incarnation != incarnation {
                    // Its connection closed with the restart.
                    return;
                }
                let now = self.client_now(client);
                self.clients[client]
                    .state
                    .handle_delivery(now, identifier, &payload);
                self.collect(client);
                self.rewake(client);
            }
            What::Tick {
                gateway,
                address,
                generation,
            } => self.on_tick(gateway, address, generation),
            What::Expire => {
                let now = self.unix_ms();
                for n in self.nodes.values() {
                    if let Some(d) = &n.dropboxes {
                        d.expire(now).expect("in-memory dropboxes");
                    }
                }
                self.schedule_what(self.now_us + us(EXPIRY_EVERY), What::Expire);
            }
            What::BatchAcks { gateway } => {
                let now = self.unix_ms();
                let due = self
                    .nodes
                    .get(&gateway)
                    .and_then(|n| n.dropboxes.as_ref())
                    .map(|d| d.batch_acks_due(now))
                    .unwrap_or_default();
                let replies = due.into_iter().map(|(e, s, b)| (e, s, b, true)).collect();
                self.send_replies(gateway, replies);
            }
            What::Call(f) => f(self),
        }
    }

    // ---- clients ----

    /// What the SDK's driver does at a wake-up: timers, then every frame due.
    fn service(&mut self, i: usize) {
        let waking = self
            .asleep
            .iter()
            .filter(|(c, from, until)| *c == i && (*from..*until).contains(&self.now_us))
            .map(|s| s.2)
            .max();
        if let Some(until) = waking {
            self.clients[i].wake_us = until;
            return;
        }
        let now = self.client_now(i);
        let c = &mut self.clients[i];
        c.state.handle_timeout(now);
        let mut frames = Vec::new();
        while let Some(f) = c.state.poll_transmit(now, &mut c.rng) {
            frames.push(f);
        }
        // As `Client::open`'s driver: a fetch that confirms (deletes at the
        // gateway) what was received leaves only once that is on disk; the
        // rest is written every `persist_interval`.
        if c.disk.is_some()
            && (c.state.must_persist_before_sending()
                || self.now_us.saturating_sub(c.last_persist_us)
                    >= us(c.profile.config.persist_interval))
        {
            self.persist(i);
        }
        let c = &mut self.clients[i];
        c.frames_sent += frames.len() as u64;
        self.stats.client_frames += frames.len() as u64;
        let gateway = c.entry;
        for frame in frames {
            self.transmit(
                Endpoint::Client(ClientHandle(i)),
                Endpoint::Node(gateway),
                self.now_us,
                Carried::Inject { gateway, frame },
            );
        }
        self.collect(i);
        if self.rewake(i) {
            self.stats.stale_timeouts += 1;
        }
    }

    /// Moves status events and received messages to the application's log.
    fn collect(&mut self, i: usize) {
        let at = self.now();
        let c = &mut self.clients[i];
        while let Some(ev) = c.state.poll_event() {
            match ev {
                Event::Status { id, status } => {
                    c.log.statuses.entry(id).or_default().push((at, status));
                }
                Event::Undecryptable { from, id, .. } => {
                    c.log.undecryptable.push((at, from, id));
                }
                Event::Group { me, group, change } => {
                    c.log.groups.push((at, me, group, change));
                }
                _ => {}
            }
        }
        while let Some(m) = self.clients[i].state.poll_received() {
            // Written before the application gets it (`Inbox::recv`).
            self.persist(i);
            // The application's own record: a redelivered message it
            // already holds is skipped, as the SDK guide tells apps to.
            let log = &mut self.clients[i].log.received;
            if m.redelivered && log.iter().any(|r| r.from == m.from && r.id == m.id) {
                self.stats.redelivered_skipped += 1;
                continue;
            }
            log.push(ReceivedRecord {
                at,
                to: m.to,
                from: m.from,
                id: m.id,
                body: m.body,
                group: m.group,
                kind: m.kind,
                attachment: m.attachment,
            });
        }
        // Saved in the log: done with them.
        self.clients[i].state.received_done();
    }

    /// Writes what changed to a persistent client's disk, in one step.
    fn persist(&mut self, i: usize) {
        let now = self.client_now(i);
        let c = &mut self.clients[i];
        let Some(disk) = &mut c.disk else {
            return;
        };
        c.last_persist_us = self.now_us;
        let Some(changes) = c.state.take_changes(now) else {
            return;
        };
        self.stats.persists += 1;
        self.stats.persisted_bytes += changes.bytes() as u64;
        for (k, v) in changes.puts {
            disk.insert(k, v);
        }
        for k in changes.deletes {
            disk.remove(&k);
        }
    }

    /// When client `i` next wants to run. A deadline that is already past
    /// (a new state's first round, or the state's float seconds rounding
    /// below the instant it named) is moved 1 µs on, so that time always
    /// advances; true if it was.
    fn rewake(&mut self, i: usize) -> bool {
        let at = self.clients[i]
            .state
            .poll_timeout()
            .saturating_duration_since(self.base);
        let wake = u64::try_from(at.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX);
        self.clients[i].wake_us = wake.max(self.now_us + 1);
        wake <= self.now_us
    }

    /// The client's Subscribe: its replies go into a bounded queue at its
    /// entry gateway, sent on its downlink.
    fn subscribe(&mut self, i: usize) {
        let c = &self.clients[i];
        let key = (c.entry, c.state.address());
        self.next_generation += 1;
        let generation = self.next_generation;
        self.subs.insert(
            key,
            Sub {
                client: i,
                incarnation: c.incarnation,
                queue: VecDeque::new(),
                generation,
            },
        );
        let gap = exp_gap_us(&mut self.net_rng, self.topology.params.lambda_downlink);
        self.schedule_what(
            self.now_us + gap,
            What::Tick {
                gateway: key.0,
                address: key.1,
                generation,
            },
        );
    }

    /// One tick of a client's constant-rate downlink: the oldest queued
    /// reply, or a dummy (identifier zero, zero payload).
    fn on_tick(&mut self, gateway: NodeId, address: [u8; 32], generation: u64) {
        let Some(sub) = self.subs.get_mut(&(gateway, address)) else {
            return;
        };
        if sub.generation != generation {
            return;
        }
        let (identifier, payload) = match sub.queue.pop_front() {
            Some(r) => {
                self.stats.downlink_real += 1;
                r
            }
            None => {
                self.stats.downlink_dummy += 1;
                ([0u8; 16], vec![0u8; packet::PAYLOAD_SIZE])
            }
        };
        let (client, incarnation) = (sub.client, sub.incarnation);
        self.transmit(
            Endpoint::Node(gateway),
            Endpoint::Client(ClientHandle(client)),
            self.now_us,
            Carried::Deliver {
                client,
                incarnation,
                identifier,
                payload,
            },
        );
        let gap = exp_gap_us(&mut self.net_rng, self.topology.params.lambda_downlink);
        self.schedule_what(
            self.now_us + gap,
            What::Tick {
                gateway,
                address,
                generation,
            },
        );
    }

    // ---- the network ----

    fn drop_packet(&mut self, reason: &'static str) {
        *self.stats.dropped.entry(reason).or_default() += 1;
    }

    /// Puts `what` on the link `from → to`, leaving at `depart` (µs), under
    /// the link's faults and partitions.
    fn transmit(&mut self, from: Endpoint, to: Endpoint, depart: u64, what: Carried) {
        self.stats.transmissions += 1;
        if let Some(observe) = self.observer.as_mut() {
            let what = match &what {
                Carried::Inject { frame, .. } => OnLink::Inject { frame },
                Carried::Packet { packet, .. } => OnLink::Packet { packet },
                Carried::Deliver { identifier, .. } => OnLink::Deliver {
                    identifier: *identifier,
                },
            };
            observe(Observed::Link {
                from,
                to,
                depart: dur(depart),
                what,
            });
        }
        if self.partitioned(from, depart) {
            self.stats.partitioned += 1;
            return;
        }
        let f = self.faults_of(from, to);
        if f.loss > 0.0 && self.fault_rng.random::<f64>() < f.loss {
            self.stats.lost += 1;
            return;
        }
        let copies = if f.duplicate > 0.0 && self.fault_rng.random::<f64>() < f.duplicate {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut arrive = depart + us(self.cfg.link_latency);
            if f.delay > 0.0 && self.fault_rng.random::<f64>() < f.delay {
                self.stats.delayed += 1;
                let max = us(f.max_extra_delay).max(1);
                arrive += self.fault_rng.random_range(0..max);
            }
            if self.partitioned(to, arrive) {
                self.stats.partitioned += 1;
                continue;
            }
            self.schedule_what(arrive, What::Arrive(what.clone()));
        }
    }

    /// Whether `id` is a layer-1 mix node of `epoch` (`NodeRef::is_first_layer`).
    fn is_first_layer(&self, epoch: u64, id: &NodeId) -> bool {
        self.topology.epoch == epoch
            && self
                .topology
                .node(id)
                .is_some_and(|n| n.role == Role::Mix && n.layer == 1)
    }

    /// An Inject frame at the entry gateway (`gateway::client_frame`): passed
    /// on unpeeled and undelayed, only to a layer-1 node of its epoch.
    fn on_inject(&mut self, gateway: NodeId, frame: &[u8]) {
        let body = match frame.get(2..) {
            Some(b) if usize::from(u16::from_be_bytes([frame[0], frame[1]])) == b.len() => b,
            _ => return self.drop_packet("malformed"),
        };
        let (epoch, first_hop, packet) = match frame::decode_body(body) {
            Ok(f) if f.kind == FrameKind::Inject => match (f.node_or_address(), f.packet()) {
                (Some(h), Some(p)) => (f.epoch, h, p.to_vec()),
                _ => return self.drop_packet("malformed"),
            },
            _ => return self.drop_packet("malformed"),
        };
        if !self.is_first_layer(epoch, &first_hop) {
            return self.drop_packet("bad_first_hop");
        }
        self.transmit(
            Endpoint::Node(gateway),
            Endpoint::Node(first_hop),
            self.now_us,
            Carried::Packet {
                to: first_hop,
                epoch,
                packet,
            },
        );
    }

    /// A Sphinx packet at a node: peel, then hold and forward, or handle as
    /// the final hop.
    fn on_packet(&mut self, to: NodeId, epoch: u64, packet: &[u8]) {
        let Some(node) = self.nodes.get(&to) else {
            return self.drop_packet("unknown_next_hop");
        };
        let role = node.role;
        self.stats.peels += 1;
        let peeled = node.ring.peel(epoch, packet);
        if let Some(observe) = self.observer.as_mut() {
            observe(Observed::Peel {
                node: to,
                at: dur(self.now_us),
                packet,
                peeled: peeled.as_ref().ok(),
            });
        }
        match peeled {
            Err(protocol::Error::UnknownEpoch(_)) => self.drop_packet("unknown_epoch"),
            Err(protocol::Error::Replay) => self.drop_packet("replay"),
            Err(_) => self.drop_packet("malformed"),
            Ok(Peeled::Forward {
                next_hop,
                delay,
                packet,
            }) => {
                if self.topology.node(&next_hop).is_none() {
                    return self.drop_packet("unknown_next_hop");
                }
                let held = if self.zero_delay {
                    Duration::ZERO
                } else {
                    delay.min(Duration::from_millis(self.topology.params.max_delay_ms))
                };
                self.transmit(
                    Endpoint::Node(to),
                    Endpoint::Node(next_hop),
                    self.now_us + us(held),
                    Carried::Packet {
                        to: next_hop,
                        epoch,
                        packet,
                    },
                );
            }
            Ok(Peeled::Final {
                destination,
                identifier,
                payload,
            }) => {
                if role == Role::Gateway {
                    self.on_final(to, destination, identifier, payload);
                } else {
                    self.drop_packet("unexpected_final");
                }
            }
        }
    }

    /// The final hop at a gateway (`GatewayHandler::on_final` and the
    /// storage thread, committing at once).
    fn on_final(
        &mut self,
        gateway: NodeId,
        destination: [u8; 32],
        identifier: [u8; 16],
        payload: Vec<u8>,
    ) {
        if identifier != [0; 16] {
            // A reply for a subscribed client, still sealed.
            let cap = self.cfg.gateway.client_queue.max(1);
            match self.subs.get_mut(&(gateway, destination)) {
                Some(sub) if sub.queue.len() < cap => {
                    sub.queue.push_back((identifier, payload));
                    self.stats.replies_queued += 1;
                }
                Some(_) => self.drop_packet("downlink_full"),
                None => self.drop_packet("no_client"),
            }
            return;
        }
        let now_ms = self.unix_ms();
        let Some(boxes) = self.nodes.get(&gateway).and_then(|n| n.dropboxes.as_ref()) else {
            return;
        };
        let request = packet::recover_plaintext(&payload).and_then(|p| Request::decode(&p));
        // (reply epoch, SURB, body) to send once "committed".
        let mut replies = Vec::new();
        match request {
            Ok(Request::Drop) => self.stats.cover_received += 1,
            Ok(Request::Store {
                dropbox,
                ciphertext,
            }) => match boxes
                .store(&dropbox, &ciphertext, now_ms)
                .expect("in-memory dropboxes")
            {
                Ok(_) => {
                    self.stats.stored += 1;
                    *self.stores_by_box.entry(dropbox).or_default() += 1;
                }
                Err(_) => self.stats.store_refused += 1,
            },
            Ok(Request::StoreAcked {
                dropbox,
                ciphertext,
                reply_epoch,
                surb,
            }) => match boxes
                .store(&dropbox, &ciphertext, now_ms)
                .expect("in-memory dropboxes")
            {
                Ok(seq) => {
                    self.note_store(dropbox, seq);
                    replies.push((reply_epoch, surb, ACK_BODY.to_vec(), true));
                }
                // Refused: the sender is told why.
                Err(why) => {
                    self.stats.store_refused += 1;
                    replies.push((reply_epoch, surb, why.told().body(), true));
                }
            },
            Ok(Request::StoreBatched {
                dropbox,
                batch,
                slot,
                ciphertext,
            }) => {
                let (r, answers) = boxes
                    .store_batched(&dropbox, batch, slot, &ciphertext, now_ms)
                    .expect("in-memory dropboxes");
                replies.extend(answers.into_iter().map(|(e, s, b)| (e, s, b, true)));
                match r {
                    Ok(seq) => self.note_store(dropbox, seq),
                    Err(_) => self.stats.store_refused += 1,
                }
            }
            Ok(Request::AckBatch {
                batch,
                count,
                wait_ms,
                reply_epoch,
                surb,
            }) => {
                let answers = boxes.ack_batch(batch, count, wait_ms, reply_epoch, surb, now_ms);
                let due = boxes.next_batch_ack_due();
                replies.extend(answers.into_iter().map(|(e, s, b)| (e, s, b, true)));
                if let Some(due) = due {
                    let at = due.saturating_sub(self.cfg.unix_start_ms) * 1000;
                    self.schedule_what(at.max(self.now_us), What::BatchAcks { gateway });
                }
            }
            Ok(Request::Fetch(req)) => {
                self.stats.fetches += 1;
                let refused_before = boxes
                    .metrics()
                    .fetches
                    .with_label_values(&["refused"])
                    .get();
                let bodies = boxes.fetch(&req, now_ms).expect("in-memory dropboxes");
                let authorised = boxes
                    .metrics()
                    .fetches
                    .with_label_values(&["refused"])
                    .get()
                    == refused_before;
                let seqs = bodies
                    .first()
                    .and_then(|b| FetchReply::decode(b).ok())
                    .map(|r| r.seqs)
                    .unwrap_or_default();
                self.box_events.push(BoxEvent::Fetched {
                    at: dur(self.now_us),
                    dropbox: req.dropbox,
                    after_seq: req.after_seq,
                    cursor: req.cursor,
                    list: req.list,
                    authorised,
                    seqs,
                });
                for (surb, body) in req.surbs.into_iter().zip(bodies) {
                    replies.push((req.reply_epoch, surb, body, false));
                }
            }
            Err(_) => self.drop_packet("malformed"),
        }
        self.send_replies(gateway, replies);
    }

    /// Sends SURB replies from `gateway`: (reply epoch, SURB, body, whether
    /// it is a store's or a batch's ack, which the ack faults may withhold
    /// or delay).
    fn send_replies(&mut self, gateway: NodeId, replies: Vec<(u64, Vec<u8>, Vec<u8>, bool)>) {
        for (epoch, surb, body, ack) in replies {
            let mut depart = self.now_us;
            if ack {
                let f = self.ack_faults;
                if f.loss > 0.0 && self.fault_rng.random::<f64>() < f.loss {
                    self.stats.acks_withheld += 1;
                    continue;
                }
                if f.delay > 0.0 && self.fault_rng.random::<f64>() < f.delay {
                    self.stats.acks_delayed += 1;
                    depart += self.fault_rng.random_range(0..us(f.max_extra_delay).max(1));
                }
            }
            if self.reply(gateway, epoch, &surb, &body, depart) {
                if ack {
                    self.stats.acks_sent += 1;
                } else {
                    self.stats.fetch_replies_sent += 1;
                }
            }
        }
    }

    fn note_store(&mut self, dropbox: [u8; 32], seq: u64) {
        self.stats.stored += 1;
        *self.stores_by_box.entry(dropbox).or_default() += 1;
        self.box_events.push(BoxEvent::Stored {
            at: dur(self.now_us),
            dropbox,
            seq,
        });
    }

    /// Sends `body` through `surb` (`gateway::storage::reply`), leaving at
    /// `depart`: only to a layer-1 mix node of `epoch`.
    fn reply(
        &mut self,
        gateway: NodeId,
        epoch: u64,
        surb: &[u8],
        body: &[u8],
        depart: u64,
    ) -> bool {
        match packet::use_surb(surb, body) {
            Ok((first_hop, packet)) if self.is_first_layer(epoch, &first_hop) => {
                self.transmit(
                    Endpoint::Node(gateway),
                    Endpoint::Node(first_hop),
                    depart,
                    Carried::Packet {
                        to: first_hop,
                        epoch,
                        packet,
                    },
                );
                true
            }
            Ok(_) => {
                self.drop_packet("bad_first_hop");
                false
            }
            Err(_) => {
                self.drop_packet("malformed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest whole path: one message, one hop per layer, one gateway.
    #[test]
    fn sim_one_message_crosses_the_network() {
        let mut sim = Sim::new(SimConfig {
            mixes_per_layer: 1,
            gateways: 1,
            ..SimConfig::default()
        });
        let a = sim.add_client();
        let b = sim.add_client();
        sim.connect_contacts(a, b);
        let id = sim.send(a, b, b"hello").unwrap();
        let read = sim.run_until_cond(Duration::from_secs(30), |s| {
            s.log(a).status(&id) == Some(Status::Read)
        });
        assert!(read, "{:?} {:?}", sim.log(a).statuses, sim.stats());
        assert_eq!(sim.log(b).received.len(), 1);
        assert_eq!(sim.log(b).received[0].body, b"hello");
        assert_eq!(sim.stats().dropped.get("replay"), None);
        assert!(sim.stats().downlink_dummy > 0 && sim.stats().cover_received > 0);
    }

    /// Same seed, same story: the decisions do not depend on the wall clock
    /// or on sphinx-packet's padding bytes.
    #[test]
    fn sim_is_deterministic_for_a_seed() {
        let run = || {
            let mut sim = Sim::new(SimConfig {
                mixes_per_layer: 1,
                gateways: 1,
                seed: 9,
                ..SimConfig::default()
            });
            let a = sim.add_client();
            let b = sim.add_client();
            sim.connect_contacts(a, b);
            sim.send(a, b, b"x").unwrap();
            sim.run_for(Duration::from_secs(3));
            let s = sim.stats();
            (
                s.transmissions,
                s.peels,
                s.stored,
                sim.frames_sent(a),
                sim.log(b).received.len(),
            )
        };
        assert_eq!(run(), run());
    }
}
