//! The client as a sans-IO state machine, in the way of quinn-proto: no
//! sockets, no tasks, no clock reads. Time comes in as a [`Now`] on every
//! call, randomness as an RNG, frames from the entry gateway through
//! [`ClientState::handle_delivery`]; frames to send come out of
//! [`ClientState::poll_transmit`], things the application should know out of
//! [`ClientState::poll_event`] and [`ClientState::poll_received`], and
//! [`ClientState::poll_timeout`] says when to call
//! [`ClientState::handle_timeout`] next. The async [`crate::Client`] drives
//! it over QUIC in real time; tests drive many of them on a virtual clock.
//!
//! One state hosts any number of identities: they share one Loopix stream
//! (payload ticks at λ_P, loops at λ_L) and one entry gateway, so an
//! identity costs no bandwidth.

use crate::boxes::{self, BoxState, FETCH_WINDOW};
use crate::config::ClientConfig;
use crate::content::{self, Attachment, ContentKind};
use crate::group::{self, BoxItem, Group, GroupId, GroupKeys, GroupRecord, Opened};
use crate::invite::Invite;
use crate::ratchet::{self, Olm, OpenError, Reset, Sessions};
use crate::{ContactId, Error, Received};
use protocol::NodeId;
use protocol::cover::{
    ClientStream, DownlinkBudget, Emission, FETCH_COST, LoopOutcome, LoopTracker,
};
use protocol::dropbox::{self, Dropbox, PairSecret};
use protocol::frame::{self, FrameKind};
use protocol::messages::{
    ACK_BODY, BATCH_MAX, BatchAck, FETCH_SURBS, FetchReply, FetchRequest, Listing,
    MAX_ACKED_STORED_LEN, MAX_BATCH_WAIT_MS, MAX_LISTING, RefusalReason, Refused, Request,
    StoreRefused,
};
use protocol::packet::{self, Hop, ReplyKey};
use protocol::reliable::{
    self, BatchAsk, BatchSlot, Complete, Fragment, Kind, MessageId, OutRecord, Outbox,
    OutboxConfig, Outgoing, PartialRecord, Progress, Reassembler, Sequencer, SequencerRecord,
    Status, Transmission,
};
use protocol::topology::{self, TopologyDocument, TopologyNode};
use rand::{CryptoRng, Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use x25519_dalek::{PublicKey, StaticSecret};

/// Largest message body [`ClientState::send`] accepts: 8 MiB, which with
/// its Olm envelope is 5,586 fragments. At the default payload rate (5/s,
/// of which fetches take a little) that is about 22 minutes, well within
/// the default one-hour time to live, and it fits a dropbox's default
/// quota of 10,000 messages even if every fragment lands in one period's
/// box. The wire format allows up to [`protocol::reliable::MAX_MESSAGE_SIZE`]
/// (16 MiB), which at default rates would need 44 of the TTL's 60 minutes
/// and overflow that quota; see docs/reliability.md.
pub const MAX_BODY_LEN: usize = 8 * 1024 * 1024;
// What the SDK sends, envelope included, a receiver takes.
const _: () =
    assert!(MAX_BODY_LEN + ratchet::ENVELOPE_RESERVE <= protocol::reliable::MAX_MESSAGE_SIZE);
/// Bytes of a message each fragment carries: one acked stored message less
/// the encryption and the fragment header.
pub const CHUNK_LEN: usize =
    MAX_ACKED_STORED_LEN - boxes::NONCE_LEN - boxes::TAG_LEN - protocol::reliable::FRAGMENT_HEADER;
/// Bytes of a message each fragment carries when it is sent in batches
/// (protocol.md §13.3): a batched store carries no SURB.
pub const BATCH_CHUNK_LEN: usize = protocol::messages::MAX_BATCHED_STORED_LEN
    - boxes::NONCE_LEN
    - boxes::TAG_LEN
    - protocol::reliable::FRAGMENT_HEADER;
/// How much longer than the sampled delays say a gateway is asked to wait
/// for a batch's last fragments (link latency, a retransmitted datagram).
const BATCH_WAIT_SLACK: f64 = 1.0;

/// Whether a body of `len` bytes takes fewer packets in batches (fragments
/// of [`BATCH_CHUNK_LEN`] and one ask per [`BATCH_MAX`]) than in
/// fragments of [`CHUNK_LEN`] that each carry a SURB-ack.
pub fn batching_pays(len: usize) -> bool {
    let single = protocol::reliable::fragment_count(len, CHUNK_LEN);
    let batched = protocol::reliable::fragment_count(len, BATCH_CHUNK_LEN);
    batched + batched.div_ceil(BATCH_MAX as u32) < single
}

/// Queues `m` in `outbox`, in batches when `batches` allows and that
/// takes fewer packets.
fn queue(outbox: &mut Outbox<Peer>, m: Outgoing<Peer>, t: f64, batches: bool) -> Result<(), Error> {
    let r = if batches && batching_pays(m.body.len()) {
        outbox.push_batched(m, BATCH_CHUNK_LEN, t)
    } else {
        outbox.push(m, CHUNK_LEN, t)
    };
    r.map_err(|_| Error::Busy)
}

/// How long a fetch's reply keys are kept for its replies.
const PENDING_TTL: f64 = 120.0;
/// Reply keys and loops held at once.
const MAX_PENDING: usize = 20_000;
/// How far back (periods) a client that was away (its device asleep, or
/// closed) probes the hours it missed, and keeps fetching boxes that hold
/// more: the gateways' default message TTL (`dropbox_ttl_secs`, 7 days).
pub const OFFLINE_CATCH_UP_PERIODS: u64 = 168;
/// What a loop carries (sealed: only its identifier names it).
const LOOP_BODY: &[u8] = b"loop";

/// A moment on the client's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time: every timer of the client runs on it.
    pub at: Instant,
    /// Wall-clock time, Unix milliseconds: dropbox periods and the
    /// timestamps of fetch requests need it.
    pub unix_ms: u64,
}

impl Now {
    /// `d` later on both clocks.
    pub fn after(self, d: Duration) -> Self {
        Self {
            at: self.at + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

/// What the application is told, besides received messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message this client sent moved on: queued → sent → stored → read,
    /// or failed.
    Status {
        /// The message.
        id: MessageId,
        /// Its new status.
        status: Status,
    },
    /// [`LOOPS_LOST_IN_A_ROW`] of the client's own loops went missing in a
    /// row: a node of the topology (or the entry gateway) stopped passing
    /// packets. Fetch a new topology now rather than at the next refresh;
    /// a node that is gone drops out of it.
    TopologyStale,
    /// A gateway refused a fetch (protocol.md §12.2): nothing was read or
    /// deleted. For its time, the clock this client stamps fetches with is
    /// more than the gateway's window off the gateway's clock.
    FetchRefused {
        /// Why.
        reason: RefusalReason,
        /// The gateway's clock minus ours when it refused, ms (coarse: it
        /// includes the mixing delays of the fetch).
        gateway_offset_ms: i64,
    },
    /// A message from a contact could not be decrypted: our session with
    /// them broke (a lost one-time key, a restored backup on either side)
    /// or the message was replayed. The contact is sent a session reset
    /// naming it, so that their status for it ends
    /// [`Status::FailedUndecryptable`] and their next message starts a new
    /// session; nothing is handed over for it.
    Undecryptable {
        /// Which of my identities it was sent to.
        to: ContactId,
        /// Who sent it.
        from: ContactId,
        /// The sender's id for it.
        id: MessageId,
        /// What Olm said (no secrets).
        reason: String,
    },
    /// A group of one of my identities changed (protocol.md §13.11).
    Group {
        /// Which of my identities.
        me: ContactId,
        /// The group.
        group: GroupId,
        /// What happened.
        change: GroupChange,
    },
}

/// What happened to a group ([`Event::Group`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupChange {
    /// A contact invited me: I am a member now.
    Joined {
        /// The contact who invited me.
        by: ContactId,
    },
    /// A member added someone.
    MemberAdded {
        /// The new member.
        member: ContactId,
        /// Who added them.
        by: ContactId,
    },
    /// A member left.
    MemberLeft {
        /// Who.
        member: ContactId,
    },
    /// A member made a new epoch (someone was removed): messages from now
    /// on go to boxes and sessions the removed members do not know.
    Rekeyed {
        /// The new epoch.
        epoch: u32,
        /// The contact it came from (me if I made it).
        by: ContactId,
    },
}

/// Loops lost in a row (none back in between) that make the client ask
/// for a new topology ([`Event::TopologyStale`]). At a loop loss of p per
/// loop, a healthy network gives this with probability p³ per run of
/// three; a route through a dead node of a layer of n loses 1/n of them.
pub const LOOPS_LOST_IN_A_ROW: u32 = 3;
/// Seconds between two [`Event::TopologyStale`] at most: as long as a loop
/// has to come back before it is judged lost.
const STALE_EVERY: f64 = protocol::cover::LOOP_LOST_AFTER_S;

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
    /// Times [`LOOPS_LOST_IN_A_ROW`] loops went missing in a row and the
    /// client asked for a new topology ([`Event::TopologyStale`]).
    pub stale_topology: u64,
    /// Fetch replies that were refusals (one per SURB of a refused fetch).
    pub refused_replies: u64,
    /// Payload ticks that sent drop cover instead of a waiting fragment or
    /// fetch because the topology's keys had expired (the directory was
    /// unreachable for longer than the keys live).
    pub held_ticks: u64,
}

/// One of my identities and one of its contacts: who a message is between.
/// (mine, theirs), both x25519 public keys.
type Peer = ([u8; 32], [u8; 32]);

/// A fetch waiting for a payload tick: a probe of a box, or a window fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fetch {
    peer: Peer,
    period: u64,
    kind: FetchKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FetchKind {
    /// Answers from above what is known, with a listing.
    Probe,
    /// Listed messages not yet received.
    Window,
}

struct Contact {
    name: String,
    pair: PairSecret,
    /// Our Olm sessions with them (content encryption, §13.2).
    sessions: Sessions,
    /// The boxes the contact writes to me, by slot (period and index).
    inbound: BTreeMap<u64, BoxState>,
    /// Past periods (`catch_up_periods`) were probed once since the contact
    /// was added; after that, rounds take up the periods missed since the
    /// last one.
    caught_up: bool,
    /// Not a contact: the boxes of one epoch of this group (the entry's key
    /// is the epoch key; `pair` is the epoch's secret).
    group: Option<[u8; 32]>,
}

impl Contact {
    /// The box at `slot` that `me` writes to and, for a group, reads.
    fn outbound_box(&self, me: &[u8; 32], them: &[u8; 32], slot: u64) -> Dropbox {
        match self.group {
            Some(_) => self.pair.dropbox(them, them, slot),
            None => self.pair.dropbox(me, them, slot),
        }
    }

    /// The box at `slot` that `me` reads.
    fn inbound_box(&self, me: &[u8; 32], them: &[u8; 32], slot: u64) -> Dropbox {
        match self.group {
            Some(_) => self.pair.dropbox(them, them, slot),
            None => self.pair.dropbox(them, me, slot),
        }
    }

    /// Gives the boxes of `periods` a state (the box may hold messages), so
    /// that rounds probe them until an answer says they hold nothing more.
    fn mark_unread(&mut self, me: &[u8; 32], them: &[u8; 32], periods: Range<u64>) {
        for p in periods {
            if !self.inbound.contains_key(&p) {
                let b = BoxState::new(self.inbound_box(me, them, p));
                self.inbound.insert(p, b);
            }
        }
    }
}

/// One identity this client hosts.
struct Me {
    secret: StaticSecret,
    /// This identity's Olm account.
    olm: Olm,
    contacts: BTreeMap<[u8; 32], Contact>,
    /// Next seq per contact (seqs restart with each session).
    next_seq: HashMap<[u8; 32], u64>,
    /// Groups this identity is a member of, by group id.
    groups: BTreeMap<[u8; 32], Group>,
}

/// A fetch's reply key and what its replies answer.
struct Pending {
    key: ReplyKey,
    peer: Peer,
    period: u64,
    /// The seq the fetch's answers start above: `max(after_seq, cursor)`.
    cursor: u64,
    /// How far the box was known when the fetch left.
    known: u64,
    created: f64,
}

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

/// The whole client, without I/O.
pub struct ClientState {
    cfg: ClientConfig,
    /// Zero of the client's seconds (the `f64` times of the protocol's
    /// sans-IO pieces).
    origin: Instant,
    topology: Arc<TopologyDocument>,
    entry: TopologyNode,
    /// Since when (client seconds) the topologies taken have not listed the
    /// entry gateway (revoked, or no longer registering).
    entry_unlisted_since: Option<f64>,
    /// Where our entry gateway hands us replies. Random per state.
    address: [u8; 32],
    /// This run's session number: seqs restart with it.
    session: u64,
    identities: BTreeMap<[u8; 32], Me>,
    /// The first identity added: the default one of a client.
    primary: Option<[u8; 32]>,
    stream: ClientStream<()>,
    downlink: DownlinkBudget,
    loops: LoopTracker,
    outbox: Outbox<Peer>,
    /// SURB-acks in flight: identifier → (reply key, sent at, to whom and
    /// the slot of the box the acked stores went to).
    acks: HashMap<[u8; 16], (ReplyKey, f64, Peer, u64)>,
    /// Batches being sent: the outbox's number → (the batch id on the wire,
    /// the slot of the box all its fragments and its ask go to).
    batch_routes: BTreeMap<u64, ([u8; 16], u64)>,
    /// Which of a period's boxes we write to someone: (to, period) →
    /// (index, stores acknowledged in it). The next after
    /// [`dropbox::BOX_STORES`]. Not persisted: after a restart the run
    /// starts again at box 0, which its reader always fetches.
    writing: HashMap<(Peer, u64), (u32, u64)>,
    pending: HashMap<[u8; 16], Pending>,
    fetches: VecDeque<Fetch>,
    reassembly: Reassembler<Peer>,
    sequencer: Sequencer<Peer>,
    statuses: StatusBoard,
    receipts_due: BTreeMap<Peer, Vec<MessageId>>,
    /// Messages from a contact we could not decrypt: a session reset naming
    /// them goes to the contact at the next round.
    resets_due: BTreeMap<Peer, Vec<MessageId>>,
    /// Olm records (accounts, sessions) changed since the last
    /// [`Self::take_changes`]: only those are written.
    olm_dirty: BTreeSet<Vec<u8>>,
    received: VecDeque<Received>,
    /// Messages handed to the application that it has not said it is done
    /// with (`received_done`, or asking for the next one): after a restart
    /// they are handed over again, marked `redelivered`.
    handed: Vec<Received>,
    events: VecDeque<Event>,
    stats: CoverStats,
    /// Payload ticks alternate between a fragment and a fetch when both wait.
    fetch_turn: bool,
    /// The next fetch to leave is the first of the current or previous
    /// period's boxes in the queue, not its front (they take turns).
    recent_turn: bool,
    /// Loops lost since the last one came back.
    loops_lost_in_row: u32,
    /// When the client last asked for a new topology for lost loops.
    last_stale: Option<f64>,
    /// When the next periodic fetch round (and upkeep) is due.
    next_round: f64,
    /// The period of the last fetch round (restored: of the last save).
    /// After a gap (the device asleep, or the client closed) the next round
    /// gives every period missed since a box state, kept and probed until
    /// answered, up to [`OFFLINE_CATCH_UP_PERIODS`] back: otherwise the hours
    /// in between would never be fetched.
    probed_through: Option<u64>,
    /// The last absence: the first period it missed and the period the
    /// client came back in. Keys of a group epoch that arrive soon after
    /// (from the pairwise boxes of the hours missed) may be for an epoch
    /// written to all that time: its boxes are read back to the absence.
    absence: Option<(u64, u64)>,
    /// Groups left (identity, group), newest last, at most [`MAX_LEFT`]:
    /// a new epoch's keys for one of them, from a member who had not read
    /// the "left" yet, do not make us a member again (an invite does).
    left: VecDeque<([u8; 32], [u8; 32])>,
    /// For what timers decide (receipt ids), seeded by the caller's RNG.
    rng: rand::rngs::StdRng,
    /// What was last handed out for persisting (see [`Self::take_changes`]).
    persisted: Persisted,
    /// Something may have changed since the last [`Self::take_changes`].
    dirty: bool,
    /// A fetch left that confirms (deletes at the gateway) more than was
    /// persisted: persist before sending it.
    confirm_unpersisted: bool,
    /// The last `poll_transmit` held fragments and fetches back: the
    /// topology's keys have expired.
    holding: bool,
    /// The wall clock and the state's clock at the last call that gave them
    /// (for group work done while handling a message: its box's period).
    unix_ms: u64,
    last_t: f64,
}

/// What a store holds of this state, to send it only what changed.
#[derive(Default)]
struct Persisted {
    snapshot: Vec<u8>,
    blobs: HashSet<Vec<u8>>,
    done: HashSet<MessageId>,
    /// Per box: the confirmed seq persisted.
    confirmed: HashMap<(Peer, u64), u64>,
    /// Group records as last written.
    groups: HashMap<Vec<u8>, Vec<u8>>,
    absence: Option<(u64, u64)>,
    groups_v2: bool,
    left: Vec<([u8; 32], [u8; 32])>,
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientState")
            .field("identities", &self.identities.len())
            .field("epoch", &self.topology.epoch)
            .finish_non_exhaustive()
    }
}

/// A SURB, its identifier, its reply key and its hops' delays.
type HomeSurb = (Vec<u8>, [u8; 16], ReplyKey, Vec<Duration>);

/// A SURB that brings a reply to `address` through the three mix layers
/// and our entry gateway, under a fresh non-zero identifier: the SURB, its
/// identifier, the key that opens the reply, and the delays its hops will
/// hold it.
fn surb_home<R: CryptoRng + ?Sized>(
    topo: &TopologyDocument,
    entry: &TopologyNode,
    address: &[u8; 32],
    rng: &mut R,
) -> Result<HomeSurb, Error> {
    let mut route = mix_route(topo, rng)?;
    route.push(entry.hop());
    let delays = packet::sample_delays(rng, route.len(), delay_mean(topo));
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    id[0] |= 1; // non-zero: marks a reply at the gateway
    let (surb, key) = packet::build_surb(rng, &route, address, id, &delays)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok((surb, id, key, delays))
}

/// One node per mix layer, each uniformly at random.
fn mix_route<R: Rng + ?Sized>(topo: &TopologyDocument, rng: &mut R) -> Result<Vec<Hop>, Error> {
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

fn delay_mean(topo: &TopologyDocument) -> Duration {
    Duration::from_millis(topo.params.mix_delay_mean_ms)
}

/// How long a window fetch's replies may take before it is asked again:
/// twice the mean mixing delay of a round trip, plus transport.
fn fetch_timeout(topo: &TopologyDocument) -> f64 {
    (delay_mean(topo) * 12 + Duration::from_secs(2)).as_secs_f64()
}

/// A plaintext's data, kind and metadata if it is typed content. Content
/// that does not decode is handed over as it came (nothing is lost), untyped.
fn untype(body: Vec<u8>, typed: bool) -> (Vec<u8>, Option<ContentKind>, Option<Attachment>) {
    if !typed {
        return (body, None, None);
    }
    match content::decode(&body, MAX_BODY_LEN) {
        Ok(c) => (c.data, Some(c.kind), c.attachment),
        Err(e) => {
            tracing::warn!(error = %e, "a message's content did not decode; handed over as bytes");
            (body, None, None)
        }
    }
}

/// Refuses a body above [`MAX_BODY_LEN`].
fn check_len(len: usize) -> Result<(), Error> {
    if len > MAX_BODY_LEN {
        return Err(Error::MessageTooLarge {
            len,
            max: MAX_BODY_LEN,
        });
    }
    Ok(())
}

/// The public key of an x25519 secret.
fn public_of(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

impl ClientState {
    /// A client routing by `topology` (verified by the caller), with no
    /// identity yet. Picks the entry gateway (`cfg.entry_gateway`, or one at
    /// random among those with a client address) and a subscribe address.
    pub fn new<R: CryptoRng + ?Sized>(
        cfg: ClientConfig,
        topology: TopologyDocument,
        now: Now,
        rng: &mut R,
    ) -> Result<Self, Error> {
        cfg.check()?;
        let gateways: Vec<&TopologyNode> = topology
            .gateways()
            .filter(|g| g.client_socket_addr().is_some())
            .collect();
        let entry = match cfg.entry_gateway {
            Some(id) => gateways.iter().find(|g| g.identity == id).copied(),
            None if gateways.is_empty() => None,
            None => Some(gateways[rng.random_range(0..gateways.len())]),
        }
        .cloned()
        .ok_or_else(|| Error::NoRoute("no entry gateway in the topology".into()))?;
        let mut address = [0u8; 32];
        rng.fill_bytes(&mut address);
        let params = topology.params;
        let cover = !cfg.dangerous.no_cover;
        let stream = ClientStream::new(
            params.lambda_payload,
            params.lambda_loop,
            // Nothing is queued in the stream: each payload tick asks the
            // outbox, then the fetch queue, for a real packet.
            1,
            cover,
            0.0,
            rng,
        );
        let downlink = DownlinkBudget::new(
            params.lambda_downlink,
            if cover { params.lambda_loop } else { 0.0 },
            0.0,
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
        Ok(Self {
            origin: now.at,
            topology: Arc::new(topology),
            entry,
            entry_unlisted_since: None,
            address,
            session: rng.random(),
            identities: BTreeMap::new(),
            primary: None,
            stream,
            downlink,
            loops: LoopTracker::standard(MAX_PENDING),
            outbox,
            acks: HashMap::new(),
            batch_routes: BTreeMap::new(),
            writing: HashMap::new(),
            pending: HashMap::new(),
            fetches: VecDeque::new(),
            reassembly,
            sequencer,
            statuses: StatusBoard::default(),
            receipts_due: BTreeMap::new(),
            resets_due: BTreeMap::new(),
            olm_dirty: BTreeSet::new(),
            received: VecDeque::new(),
            handed: Vec::new(),
            events: VecDeque::new(),
            stats: CoverStats::default(),
            fetch_turn: false,
            recent_turn: false,
            loops_lost_in_row: 0,
            last_stale: None,
            unix_ms: now.unix_ms,
            last_t: 0.0,
            // The first round (catching up on past periods) at once.
            next_round: 0.0,
            probed_through: None,
            absence: None,
            left: VecDeque::new(),
            rng: rand::rngs::StdRng::from_rng(rng),
            persisted: Persisted::default(),
            dirty: true,
            confirm_unpersisted: false,
            holding: false,
            cfg,
        })
    }

    /// Seconds on the client's clock.
    fn secs(&self, now: Now) -> f64 {
        now.at.saturating_duration_since(self.origin).as_secs_f64()
    }

    fn instant(&self, secs: f64) -> Instant {
        self.origin + Duration::from_secs_f64(secs.clamp(0.0, 1.0e9))
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The entry gateway this client uses (until [`Self::fail_over`]).
    pub fn entry(&self) -> &TopologyNode {
        &self.entry
    }

    /// Moves to another entry gateway, at random among the topology's
    /// others with a client address, after the current one stayed
    /// unreachable; returns it, or `None` (staying) if there is no other.
    /// The subscribe address is new, so the two gateways see unrelated
    /// ones. Replies on their way to the old gateway are lost: what was in
    /// flight goes again, as after a reconnect; fetches whose answers went
    /// there are asked again when they time out. Dropboxes stay where they
    /// are (their ids pick their gateways).
    pub fn fail_over(&mut self, now: Now) -> Option<NodeId> {
        let others: Vec<&TopologyNode> = self
            .topology
            .gateways()
            .filter(|g| g.identity != self.entry.identity && g.client_socket_addr().is_some())
            .collect();
        if others.is_empty() {
            return None;
        }
        self.entry = others[self.rng.random_range(0..others.len())].clone();
        self.entry_unlisted_since = None;
        self.rng.fill_bytes(&mut self.address);
        self.handle_reconnect(now);
        Some(self.entry.identity)
    }

    /// How long the topologies taken have not listed the entry gateway
    /// (`None` while the current one lists it). Without it in the topology
    /// no SURB or loop can be built: after `entry_failover` the client moves
    /// to another gateway even if this one still answers.
    pub fn entry_unlisted_for(&self, now: Now) -> Option<Duration> {
        self.entry_unlisted_since
            .map(|since| Duration::from_secs_f64((self.secs(now) - since).max(0.0)))
    }

    /// The address our entry gateway delivers our replies to (sent in the
    /// Subscribe frame).
    pub fn address(&self) -> [u8; 32] {
        self.address
    }

    /// The topology the client routes by.
    pub fn topology(&self) -> Arc<TopologyDocument> {
        self.topology.clone()
    }

    /// Until when (Unix ms, network time) the nodes keep the keys of the
    /// topology the client holds (protocol.md §7, §13.6).
    pub fn topology_usable_until(&self) -> u64 {
        protocol::clock::keys_usable_until(&self.topology)
    }

    /// Whether packets built now with the topology held are still peeled:
    /// false once its keys have expired. Fragments and fetches then wait.
    pub fn topology_usable(&self, now: Now) -> bool {
        now.unix_ms <= self.topology_usable_until()
    }

    /// Takes a newer verified topology (the caller checked its signatures,
    /// freshness and (epoch, revision)). The downlink budget follows its λ_D.
    pub fn set_topology(&mut self, doc: TopologyDocument, now: Now) {
        let loops = if self.cfg.dangerous.no_cover {
            0.0
        } else {
            doc.params.lambda_loop
        };
        let t = self.secs(now);
        self.downlink.retune(doc.params.lambda_downlink, loops, t);
        // The entry gateway as the new document describes it: a gateway that
        // restarted may listen elsewhere and has new keys.
        if let Some(e) = doc.node(&self.entry.identity) {
            self.entry = e.clone();
            self.entry_unlisted_since = None;
        } else {
            self.entry_unlisted_since.get_or_insert(t);
        }
        self.topology = Arc::new(doc);
    }

    // ---- identities and contacts ----

    /// Hosts the identity with this x25519 secret; its public key names it.
    /// Adding one already hosted changes nothing.
    pub fn add_identity(&mut self, secret: StaticSecret) -> ContactId {
        self.dirty = true;
        let public = public_of(&secret);
        self.primary.get_or_insert(public);
        if !self.identities.contains_key(&public) {
            self.olm_dirty.insert(key(PREFIX_ACCOUNT, &[&public]));
        }
        self.identities.entry(public).or_insert_with(|| Me {
            secret,
            olm: Olm::new(),
            contacts: BTreeMap::new(),
            next_seq: HashMap::new(),
            groups: BTreeMap::new(),
        });
        ContactId(public)
    }

    /// A new invite string of identity `me` (protocol.md §13.1): its public
    /// key, its Olm identity key and a fresh one-time key, so that the
    /// first message a contact sends already starts a forward-secret
    /// session. Every call makes a new one-time key (persisted with the next
    /// [`Self::take_changes`]); an invite used by two people still works for
    /// the second, after one session reset.
    pub fn invite(&mut self, me: &ContactId, name: &str) -> Result<String, Error> {
        let mine = self
            .identities
            .get_mut(&me.0)
            .ok_or(Error::UnknownIdentity(*me))?;
        let one_time_key = mine.olm.new_one_time_key();
        self.olm_dirty.insert(key(PREFIX_ACCOUNT, &[&me.0]));
        self.dirty = true;
        Ok(Invite {
            public: me.0,
            olm_identity: mine.olm.identity_key(),
            one_time_key,
            name: name.to_string(),
        }
        .to_string())
    }

    /// The identities hosted.
    pub fn identities(&self) -> Vec<ContactId> {
        self.identities.keys().map(|k| ContactId(*k)).collect()
    }

    /// The first identity added (kept across restores): a client's default.
    pub fn primary(&self) -> Option<ContactId> {
        self.primary.map(ContactId)
    }

    /// Whether messages wait for the application.
    pub fn has_received(&self) -> bool {
        !self.received.is_empty()
    }

    fn me(&self, me: &ContactId) -> Result<&Me, Error> {
        self.identities
            .get(&me.0)
            .ok_or(Error::UnknownIdentity(*me))
    }

    /// Adds a contact of identity `me` from their invite string.
    pub fn add_contact(&mut self, me: &ContactId, invite: &str) -> Result<ContactId, Error> {
        self.dirty = true;
        let inv: Invite = invite.parse()?;
        let mine = self
            .identities
            .get_mut(&me.0)
            .ok_or(Error::UnknownIdentity(*me))?;
        if inv.public == me.0 {
            return Err(Error::InvalidInvite("that is your own invite".into()));
        }
        if mine.contacts.contains_key(&inv.public) {
            // Known already: adding again changes nothing (rename it to rename).
            return Ok(ContactId(inv.public));
        }
        // Someone we know under this name, with another key: the invite may
        // be forged, or they made a new identity. The application decides
        // (remove the old contact to accept the new key).
        if !inv.name.is_empty()
            && let Some((old, _)) = mine.contacts.iter().find(|(_, c)| c.name == inv.name)
        {
            return Err(Error::KeyChanged {
                name: inv.name,
                old: ContactId(*old),
                new: ContactId(inv.public),
            });
        }
        // A key of small order would make the pair secret follow from public keys.
        let pair = PairSecret::derive(&mine.secret, &inv.public)
            .map_err(|e| Error::InvalidInvite(format!("unusable contact key: {e}")))?;
        // The first message starts a session from the invite's one-time key.
        let mut sessions = Sessions::new(inv.olm_identity);
        sessions.start(&mine.olm, &inv.one_time_key)?;
        self.olm_dirty
            .insert(key(PREFIX_SESSIONS, &[&me.0, &inv.public]));
        mine.contacts.insert(
            inv.public,
            Contact {
                name: inv.name,
                pair,
                sessions,
                inbound: BTreeMap::new(),
                caught_up: false,
                group: None,
            },
        );
        // Catch up on the new contact's boxes at the next round.
        Ok(ContactId(inv.public))
    }

    /// The contacts of identity `me`.
    pub fn contacts(&self, me: &ContactId) -> Vec<ContactId> {
        self.identities
            .get(&me.0)
            .map(|m| {
                m.contacts
                    .iter()
                    .filter(|(_, c)| c.group.is_none())
                    .map(|(k, _)| ContactId(*k))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Renames a contact of `me`.
    pub fn rename_contact(
        &mut self,
        me: &ContactId,
        contact: &ContactId,
        name: &str,
    ) -> Result<(), Error> {
        self.dirty = true;
        let c = self
            .identities
            .get_mut(&me.0)
            .ok_or(Error::UnknownIdentity(*me))?
            .contacts
            .get_mut(&contact.0)
            .filter(|c| c.group.is_none())
            .ok_or(Error::UnknownContact(*contact))?;
        // The same cleaning as an invite's name.
        c.name = name
            .chars()
            .filter(|ch| *ch != ':' && !ch.is_control())
            .take(64)
            .collect();
        Ok(())
    }

    /// Removes a contact of `me`: their boxes are no longer fetched.
    /// Messages to them already queued still go out.
    pub fn remove_contact(&mut self, me: &ContactId, contact: &ContactId) -> Result<(), Error> {
        if self.group_of(&(me.0, contact.0)).is_some() {
            return Err(Error::UnknownContact(*contact));
        }
        self.dirty = true;
        self.olm_dirty
            .insert(key(PREFIX_SESSIONS, &[&me.0, &contact.0]));
        self.identities
            .get_mut(&me.0)
            .ok_or(Error::UnknownIdentity(*me))?
            .contacts
            .remove(&contact.0)
            .map(|_| ())
            .ok_or(Error::UnknownContact(*contact))
    }

    /// The name a contact of `me` gave in their invite.
    pub fn contact_name(&self, me: &ContactId, contact: &ContactId) -> Option<String> {
        self.identities
            .get(&me.0)?
            .contacts
            .get(&contact.0)
            .filter(|c| c.group.is_none())
            .map(|c| c.name.clone())
    }

    // ---- sending ----

    /// Queues `body` (up to [`MAX_BODY_LEN`]) from identity `me` to `to`: it
    /// leaves in fragments at payload ticks, each end-to-end encrypted and
    /// acknowledged by the dropbox gateway. Follow it with
    /// [`Self::status`] or the [`Event::Status`] events.
    pub fn send<R: Rng + ?Sized>(
        &mut self,
        now: Now,
        me: &ContactId,
        to: &ContactId,
        body: &[u8],
        rng: &mut R,
    ) -> Result<MessageId, Error> {
        check_len(body.len())?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        self.send_enveloped(now, me, to, id, ratchet::ENVELOPE_VERSION, body)
    }

    /// Queues typed content (protocol.md §13.12): text, or an attachment
    /// with its metadata; compressed when that pays. The receiver gets the
    /// data with [`Received::kind`] and [`Received::attachment`] set.
    #[allow(clippy::too_many_arguments)]
    pub fn send_content<R: Rng + ?Sized>(
        &mut self,
        now: Now,
        me: &ContactId,
        to: &ContactId,
        kind: ContentKind,
        attachment: Option<&Attachment>,
        data: &[u8],
        rng: &mut R,
    ) -> Result<MessageId, Error> {
        check_len(data.len())?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let body = content::encode(kind, attachment, data);
        self.send_enveloped(now, me, to, id, ratchet::ENVELOPE_TYPED, &body)
    }

    /// Sends an attachment: first, if it has a thumbnail, a preview (its
    /// metadata and thumbnail, a fragment or two, naming the message to
    /// come), then the data. The contact shows the preview at once and can
    /// follow the data with [`Self::receive_progress`]. Returns (preview,
    /// data) message ids.
    #[allow(clippy::too_many_arguments)]
    pub fn send_attachment<R: Rng + ?Sized>(
        &mut self,
        now: Now,
        me: &ContactId,
        to: &ContactId,
        kind: ContentKind,
        attachment: &Attachment,
        data: &[u8],
        rng: &mut R,
    ) -> Result<(Option<MessageId>, MessageId), Error> {
        check_len(data.len())?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let mut a = attachment.clone();
        a.size = data.len() as u64;
        a.preview_of = None;
        let preview = if a.thumbnail.is_empty() {
            None
        } else {
            let mut pid = [0u8; 16];
            rng.fill_bytes(&mut pid);
            let p = Attachment {
                preview_of: Some(id),
                ..a.clone()
            };
            let body = content::encode(ContentKind::Preview, Some(&p), &[]);
            Some(self.send_enveloped(now, me, to, pid, ratchet::ENVELOPE_TYPED, &body)?)
        };
        // The data message carries the metadata, not the thumbnail again.
        a.thumbnail = Vec::new();
        let body = content::encode(kind, Some(&a), data);
        let id = self.send_enveloped(now, me, to, id, ratchet::ENVELOPE_TYPED, &body)?;
        Ok((preview, id))
    }

    /// Fragments of a message from `from` being received: how far it is
    /// (`None` once complete, or before its first fragment came).
    pub fn receive_progress(
        &self,
        me: &ContactId,
        from: &ContactId,
        id: &MessageId,
    ) -> Option<Progress> {
        self.reassembly.progress(&(me.0, from.0), id)
    }

    fn send_enveloped(
        &mut self,
        now: Now,
        me: &ContactId,
        to: &ContactId,
        id: MessageId,
        version: u8,
        body: &[u8],
    ) -> Result<MessageId, Error> {
        // (Typed content adds its header and metadata to MAX_BODY_LEN.)
        if body.len() > MAX_BODY_LEN + 1024 + content::MAX_THUMBNAIL {
            return Err(Error::MessageTooLarge {
                len: body.len(),
                max: MAX_BODY_LEN,
            });
        }
        self.dirty = true;
        let mine = self
            .identities
            .get_mut(&me.0)
            .ok_or(Error::UnknownIdentity(*me))?;
        let Some(contact) = mine.contacts.get_mut(&to.0).filter(|c| c.group.is_none()) else {
            return Err(Error::UnknownContact(*to));
        };
        // Encrypted once, whole, with the contact's session; the envelope
        // is what is fragmented (and what the outbox and store hold).
        let envelope = contact.sessions.seal_as(version, body)?;
        self.olm_dirty.insert(key(PREFIX_SESSIONS, &[&me.0, &to.0]));
        let seq = *mine.next_seq.get(&to.0).unwrap_or(&1);
        let t = now.at.saturating_duration_since(self.origin).as_secs_f64();
        queue(
            &mut self.outbox,
            Outgoing {
                id,
                to: (me.0, to.0),
                kind: Kind::Message,
                session: self.session,
                seq,
                body: envelope,
            },
            t,
            self.cfg.batch_acks,
        )?;
        // Only a queued message takes a seq, so the receiver sees no gap.
        mine.next_seq.insert(to.0, seq + 1);
        self.publish_statuses();
        Ok(id)
    }

    /// The latest status of a recent message sent by this client.
    pub fn status(&self, id: &MessageId) -> Option<Status> {
        self.statuses.map.get(id).copied()
    }

    /// Fragments of a message being sent that the dropbox gateway has
    /// acknowledged (`None` once it is stored or failed).
    pub fn progress(&self, id: &MessageId) -> Option<Progress> {
        self.outbox.progress(id)
    }

    /// The messages (not receipts) this client is still sending: not yet
    /// stored or failed.
    pub fn pending_messages(&self) -> Vec<MessageId> {
        self.outbox
            .export()
            .0
            .into_iter()
            .filter(|r| r.kind == Kind::Message)
            .map(|r| r.id)
            .collect()
    }

    /// Fragments fetched whose deletion at the gateway no fetch has asked
    /// for yet: what a crash right now must not deliver twice.
    pub fn unconfirmed(&self) -> usize {
        self.identities
            .values()
            .flat_map(|m| m.contacts.values())
            .filter(|c| c.group.is_none())
            .flat_map(|c| c.inbound.values())
            .map(|b| b.received.len())
            .sum()
    }

    /// Messages not yet stored, and bytes of them held.
    pub fn outbox_len(&self) -> (usize, usize) {
        (self.outbox.pending(), self.outbox.bytes())
    }

    /// Counts of the cover stream.
    pub fn cover_stats(&self) -> CoverStats {
        self.stats
    }

    // ---- the application's side ----

    /// The next status change (or other event), if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next message for the application, if any. Messages wait here (at
    /// most `inbox_capacity`; beyond that fetched fragments are left at the
    /// gateway and fetched again) until the application takes them.
    ///
    /// Asking for the next message says the application is done with the
    /// ones it took before (as [`Self::received_done`]). A message taken and
    /// not done with when the state was last persisted is handed over again
    /// after a restart, with `redelivered` set: an application that saves
    /// messages checks its own record for those, and so gets each exactly
    /// once.
    pub fn poll_received(&mut self) -> Option<Received> {
        self.received_done();
        let m = self.received.pop_front()?;
        self.handed.push(m.clone());
        self.dirty = true;
        Some(m)
    }

    /// The application is done with every message it took (it saved or
    /// showed them): none of them is handed over again after a restart.
    pub fn received_done(&mut self) {
        if !self.handed.is_empty() {
            self.handed.clear();
            self.dirty = true;
        }
    }

    fn inbox_has_room(&self) -> bool {
        self.received.len() + self.handed.len() < self.cfg.inbox_capacity
    }

    /// Moves the outbox's status changes to the board and the events.
    fn publish_statuses(&mut self) {
        while let Some((id, status)) = self.outbox.poll_event() {
            self.statuses.set(id, status);
            self.events.push_back(Event::Status { id, status });
        }
    }

    /// The connection to the entry gateway broke and is back (or moved to
    /// a restarted gateway): what left on the broken connection was lost,
    /// so every fragment awaiting its ack goes again at the next ticks,
    /// without waiting out its (backed-off) ack timeout and without using
    /// up an attempt.
    pub fn handle_reconnect(&mut self, _now: Now) {
        if self.outbox.retry_in_flight() > 0 {
            self.dirty = true;
        }
    }

    // ---- time ----

    /// When [`Self::handle_timeout`] or [`Self::poll_transmit`] has work next.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_round;
        if self.cfg.dangerous.no_cover && self.holding {
            // Nothing leaves until a usable topology comes: the round.
        } else if self.cfg.dangerous.no_cover {
            // Without cover, fragments and fetches leave as soon as due;
            // fetches, once their reply keys have room again.
            if !self.fetches.is_empty() {
                next = if self.pending.len() + FETCH_SURBS > MAX_PENDING {
                    let oldest = self.pending.values().map(|p| p.created);
                    next.min(oldest.fold(f64::INFINITY, f64::min) + PENDING_TTL)
                } else {
                    f64::NEG_INFINITY
                };
            }
            if let Some(d) = self.outbox.next_deadline() {
                next = next.min(d);
            }
        } else {
            next = next.min(self.stream.next_at());
        }
        self.instant(next)
    }

    /// Counts loops that went missing; after [`LOOPS_LOST_IN_A_ROW`] in a
    /// row, asks for a new topology: at most once per [`STALE_EVERY`],
    /// since a loop is judged lost long after it left and, once the fault
    /// is gone, losses of before still interleave with returns.
    fn loops_lost(&mut self, lost: usize, t: f64) {
        if lost == 0 {
            return;
        }
        self.stats.loops_lost += lost as u64;
        self.loops_lost_in_row = self.loops_lost_in_row.saturating_add(lost as u32);
        if self.loops_lost_in_row >= LOOPS_LOST_IN_A_ROW
            && self.last_stale.is_none_or(|at| t - at >= STALE_EVERY)
        {
            self.last_stale = Some(t);
            self.stats.stale_topology += 1;
            self.events.push_back(Event::TopologyStale);
        }
    }

    /// Runs what is due at `now`: the periodic fetch round (every
    /// `fetch_interval`: receipts, expiry of partial and held messages,
    /// probes of every contact's current and recent boxes) and loop expiry.
    pub fn handle_timeout(&mut self, now: Now) {
        self.dirty = true;
        let t = self.secs(now);
        (self.unix_ms, self.last_t) = (now.unix_ms, t);
        let lost = self.loops.expire(t);
        self.loops_lost(lost, t);
        if t < self.next_round {
            return;
        }
        self.next_round = t + self.cfg.fetch_interval.as_secs_f64();
        self.maintain_reliability(now);
        self.queue_fetch_round(now);
    }

    /// Receipts, stale partial messages, held messages.
    fn maintain_reliability(&mut self, now: Now) {
        let t = self.secs(now);
        let session = self.session;
        for (peer, ids) in std::mem::take(&mut self.receipts_due) {
            // One receipt names up to a fragment's worth of messages.
            for chunk in ids.chunks(CHUNK_LEN / 16) {
                let body = reliable::encode_receipt(chunk);
                let mut id = [0u8; 16];
                self.rng.fill_bytes(&mut id);
                let receipt = Outgoing {
                    id,
                    to: peer,
                    kind: Kind::Receipt,
                    session,
                    seq: 0,
                    body,
                };
                let _ = self.outbox.push(receipt, CHUNK_LEN, t);
            }
        }
        for ((me, them), ids) in std::mem::take(&mut self.resets_due) {
            let Some(mine) = self.identities.get_mut(&me) else {
                continue;
            };
            if !mine.contacts.contains_key(&them) {
                continue;
            }
            // One reset names up to a fragment's worth of messages; each
            // carries a fresh one-time key.
            for chunk in ids.chunks((CHUNK_LEN - ratchet::RESET_HEADER) / 16) {
                let reset = Reset {
                    identity: mine.olm.identity_key(),
                    one_time_key: mine.olm.new_one_time_key(),
                    undecryptable: chunk.to_vec(),
                };
                self.olm_dirty.insert(key(PREFIX_ACCOUNT, &[&me]));
                let mut id = [0u8; 16];
                self.rng.fill_bytes(&mut id);
                let control = Outgoing {
                    id,
                    to: (me, them),
                    kind: Kind::Control,
                    session,
                    seq: 0,
                    body: reset.encode(),
                };
                let _ = self.outbox.push(control, CHUNK_LEN, t);
            }
        }
        self.publish_statuses();
        self.reassembly.expire(t);
        for m in self.sequencer.expire(t) {
            self.hand_over(m);
        }
    }

    /// Queues a probe of every contact's current and previous box, and of
    /// older ones: the `catch_up_periods` before once after the contact was
    /// added, those missed since the last round (kept until answered), and
    /// any that may hold more.
    fn queue_fetch_round(&mut self, now: Now) {
        let period = dropbox::period_at(now.unix_ms);
        let catch_up = self.cfg.catch_up_periods.max(2);
        let oldest = period.saturating_sub(catch_up - 1);
        // Boxes are fetched while they may hold messages, and the periods
        // missed while away are probed, as far back as gateways keep them.
        // A message stored during period `P − OFFLINE_CATCH_UP_PERIODS` may
        // still be younger than the gateways' TTL: that period is kept too.
        let keep = catch_up.max(OFFLINE_CATCH_UP_PERIODS + 1);
        let kept_from = period.saturating_sub(keep - 1);
        // The periods missed since the last round, older than the previous
        // one (none when no round was missed; a clock set back gives none).
        let missed = self
            .probed_through
            .map_or(period, |p| p.saturating_sub(1).max(kept_from))
            ..period.saturating_sub(1);
        self.probed_through = Some(period);
        // An absence: rounds missed for more than an hour boundary (a
        // round in a new hour always counts the period before the last).
        if missed.end.saturating_sub(missed.start) >= 2 {
            // An absence that began within two hours of the end of the
            // last (a client killed, or asleep, while catching up on it)
            // extends it.
            let start = match self.absence {
                Some((s, back)) if missed.start <= back.saturating_add(2) => s.min(missed.start),
                _ => missed.start,
            };
            self.absence = Some((start, period));
            self.dirty = true;
        }
        self.prune_groups(period, kept_from, missed.clone());
        let mut due = Vec::new();
        for (me, mine) in &mut self.identities {
            for (them, c) in &mut mine.contacts {
                // An old epoch of a group is read up to its period. A group
                // left, or an epoch no longer read: only its last messages
                // go out.
                let read_until = match c.group.map(|g| mine.groups.get(&g)) {
                    None => u64::MAX,
                    Some(g) => match g.and_then(|g| g.read_until(them)) {
                        Some(until) => until,
                        None => continue,
                    },
                };
                let mut ps: Vec<u64> = if c.caught_up {
                    // Each hour missed gets its box's state, so it is kept
                    // (and saved with the store) and probed at every round
                    // until an answer says the box holds nothing more.
                    c.mark_unread(
                        me,
                        them,
                        missed.start..missed.end.min(read_until.saturating_add(1)),
                    );
                    c.inbound
                        .iter()
                        .filter(|(k, s)| s.more && dropbox::slot_period(**k) >= kept_from)
                        .map(|(k, _)| *k)
                        .collect()
                } else {
                    (oldest..=period).collect()
                };
                c.caught_up = true;
                ps.extend([period, period.saturating_sub(1)]);
                // A box that has held its share: the sender may have moved
                // on to the period's next box.
                ps.extend(
                    c.inbound
                        .iter()
                        .filter(|(k, s)| {
                            s.seen >= dropbox::NEXT_BOX_AFTER
                                && dropbox::slot_period(**k) >= kept_from
                        })
                        .map(|(k, _)| dropbox::next_slot(*k)),
                );
                ps.retain(|p| dropbox::slot_period(*p) <= read_until);
                ps.sort_unstable();
                ps.dedup();
                // Kept from now on like any box (while it may hold more),
                // even when its predecessor is forgotten below.
                for k in &ps {
                    if dropbox::slot_index(*k) > 0 && !c.inbound.contains_key(k) {
                        let b = BoxState::new(c.inbound_box(me, them, *k));
                        c.inbound.insert(*k, b);
                    }
                }
                // Forget boxes of periods we no longer fetch.
                c.inbound.retain(|k, s| {
                    let p = dropbox::slot_period(*k);
                    p + 1 >= period || (s.more && p + keep > period)
                });
                for p in ps {
                    due.push(Fetch {
                        peer: (*me, *them),
                        period: p,
                        kind: FetchKind::Probe,
                    });
                }
                // Listed messages whose window fetches got no answer are
                // asked for again now, not only when some other reply comes
                // (under heavy loss none may come for a long time).
                for (p, b) in &c.inbound {
                    if b.unread() > 0 {
                        due.push(Fetch {
                            peer: (*me, *them),
                            period: *p,
                            kind: FetchKind::Window,
                        });
                    }
                }
            }
        }
        let mut queued: HashSet<Fetch> = self.fetches.iter().copied().collect();
        for f in due {
            if self.fetches.len() < MAX_PENDING && queued.insert(f) {
                self.fetches.push_back(f);
            }
        }
    }

    // ---- the wire ----

    /// The next Inject frame to send to the entry gateway, if one is due at
    /// `now`. With cover (always, but in evaluations), a frame leaves only at
    /// a tick of the Poisson stream: at a payload tick a due fragment or
    /// fetch (taking turns when both wait; fetches only as the downlink
    /// allows), else drop cover; at a loop tick a loop. Call it until it
    /// gives `None`.
    pub fn poll_transmit<R: CryptoRng + ?Sized>(
        &mut self,
        now: Now,
        rng: &mut R,
    ) -> Option<Vec<u8>> {
        let t = self.secs(now);
        (self.unix_ms, self.last_t) = (now.unix_ms, t);
        self.dirty = true;
        // The nodes have erased the keys of our topology (the directory has
        // been unreachable that long): what we would build now is dropped at
        // the first hop. Fragments and fetches wait, without using attempts,
        // until a topology comes; the stream goes on with cover.
        let hold = !self.topology_usable(now);
        self.holding = hold;
        if self.cfg.dangerous.no_cover {
            if hold {
                return None;
            }
            // Without cover: fragments and fetches leave as soon as due.
            if let Some(f) = self.next_fragment_frame(now, rng) {
                self.stats.real += 1;
                return Some(f);
            }
            let f = self.next_fetch_frame(now, rng)?;
            self.stats.fetches += 1;
            return Some(f);
        }
        while let Some((_, e)) = self.stream.poll(t, rng) {
            let frame = match e {
                Emission::Real(()) | Emission::DropCover if hold => {
                    if self.outbox.next_deadline().is_some_and(|d| d <= t)
                        || !self.fetches.is_empty()
                    {
                        self.stats.held_ticks += 1;
                    }
                    self.stats.drop_cover += 1;
                    self.drop_cover_frame(rng)
                }
                Emission::Real(()) | Emission::DropCover => {
                    self.fetch_turn = !self.fetch_turn;
                    let real = if self.fetch_turn {
                        self.paced_fetch_frame(now, rng)
                            .map(|f| (f, true))
                            .or_else(|| self.next_fragment_frame(now, rng).map(|f| (f, false)))
                    } else {
                        self.next_fragment_frame(now, rng)
                            .map(|f| (f, false))
                            .or_else(|| self.paced_fetch_frame(now, rng).map(|f| (f, true)))
                    };
                    match real {
                        Some((f, true)) => {
                            self.stats.fetches += 1;
                            Ok(f)
                        }
                        Some((f, false)) => {
                            self.stats.real += 1;
                            Ok(f)
                        }
                        None => {
                            self.stats.drop_cover += 1;
                            self.drop_cover_frame(rng)
                        }
                    }
                }
                Emission::Loop => {
                    self.stats.loops_sent += 1;
                    self.loop_frame(now, rng)
                }
            };
            match frame {
                Ok(f) => return Some(f),
                Err(e) => tracing::debug!(error = %e, "cover packet not built"),
            }
        }
        None
    }

    /// The next fragment due, as a frame with a fresh SURB-ack, or `None`.
    fn next_fragment_frame<R: CryptoRng + ?Sized>(
        &mut self,
        now: Now,
        rng: &mut R,
    ) -> Option<Vec<u8>> {
        let t = self.secs(now);
        // A closed batch's ask goes before more fragments.
        if let Some(ask) = self.outbox.next_ask(t) {
            match self.batch_ask_frame(&ask, now, rng) {
                Ok((frame, ack, key, timeout)) => {
                    let slot = self.batch_routes.get(&ask.batch).map_or(0, |r| r.1);
                    self.remember_ack(ack, key, t, ask.to, slot);
                    self.outbox.asked(ask.batch, ack, t, timeout.as_secs_f64());
                    // Its answer takes one downlink frame.
                    self.downlink.take(1.0, t);
                    return Some(frame);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "batch ask not built; will retry");
                    self.outbox.unasked(ask.batch);
                    return None;
                }
            }
        }
        let tx = self.outbox.next(t)?;
        if let Some(slot) = tx.batch {
            return match self.batched_fragment_frame(&tx, slot, now, rng) {
                Ok((frame, there)) => {
                    self.outbox.sent_batched(&tx, t + there.as_secs_f64());
                    self.publish_statuses();
                    Some(frame)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "fragment not built; will retry");
                    self.outbox.unsent(&tx);
                    None
                }
            };
        }
        let slot = self.writing_slot(tx.to, now.unix_ms);
        match self.fragment_frame(&tx, slot, rng) {
            Ok((frame, ack, key, timeout)) => {
                self.remember_ack(ack, key, t, tx.to, slot);
                self.outbox.sent(&tx, ack, t, timeout.as_secs_f64());
                // Its ack takes one downlink frame.
                self.downlink.take(1.0, t);
                self.publish_statuses();
                Some(frame)
            }
            Err(e) => {
                tracing::debug!(error = %e, "fragment not built; will retry");
                self.outbox.unsent(&tx);
                None
            }
        }
    }

    /// Keeps the reply key of SURB `ack` (bounded: the oldest go first).
    fn remember_ack(&mut self, ack: [u8; 16], key: ReplyKey, t: f64, to: Peer, slot: u64) {
        if self.acks.len() >= MAX_PENDING {
            let horizon = 600.0;
            self.acks.retain(|_, (_, at, _, _)| t - *at < horizon);
        }
        if self.acks.len() < MAX_PENDING {
            self.acks.insert(ack, (key, t, to, slot));
        }
    }

    /// The slot of the box a store to `to` goes to now: the period's box we
    /// are writing (§10.3 of the protocol: the next one after
    /// [`dropbox::BOX_STORES`] acknowledged stores).
    fn writing_slot(&self, to: Peer, now_ms: u64) -> u64 {
        let period = dropbox::period_at(now_ms);
        let index = self.writing.get(&(to, period)).map_or(0, |w| w.0);
        dropbox::slot(period, index)
    }

    /// `n` stores to `to` at `slot` were acknowledged: when the box we are
    /// writing has had its share, the next stores go to the next box.
    fn count_stored(&mut self, to: Peer, slot: u64, n: u64) {
        let period = dropbox::period_at(self.unix_ms);
        let at = dropbox::slot_period(slot);
        if at + 1 < period {
            return; // a period we no longer write to
        }
        if !self.writing.contains_key(&(to, at)) {
            // A new (recipient, period): past periods' counts go.
            self.writing.retain(|(_, p), _| *p + 1 >= period);
        }
        let w = self.writing.entry((to, at)).or_insert((0, 0));
        if dropbox::slot_index(slot) == w.0 {
            w.1 += n;
            if w.1 >= dropbox::BOX_STORES {
                *w = (w.0.saturating_add(1), 0);
            }
        }
    }

    /// The box a transmission to `to` goes to at `slot`.
    fn box_to(&self, to: Peer, slot: u64) -> Result<Dropbox, Error> {
        let (me, them) = to;
        Ok(self
            .identities
            .get(&me)
            .and_then(|m| m.contacts.get(&them))
            .ok_or(Error::UnknownContact(ContactId(them)))?
            .outbound_box(&me, &them, slot))
    }

    /// Builds a batched store of `tx` (no SURB): (frame, the delay before
    /// it reaches the gateway). Every fragment of a batch goes to the box
    /// its first one went to, so they meet at one gateway.
    fn batched_fragment_frame<R: CryptoRng + ?Sized>(
        &mut self,
        tx: &Transmission<Peer>,
        slot: BatchSlot,
        now: Now,
        rng: &mut R,
    ) -> Result<(Vec<u8>, Duration), Error> {
        if self.batch_routes.len() > 4 * MAX_PENDING {
            let outbox = &self.outbox;
            self.batch_routes.retain(|b, _| outbox.batch_live(*b));
        }
        let (wire, at) = match self.batch_routes.get(&slot.batch) {
            Some(r) => *r,
            None => {
                let mut wire = [0u8; 16];
                rng.fill_bytes(&mut wire);
                let r = (wire, self.writing_slot(tx.to, now.unix_ms));
                self.batch_routes.insert(slot.batch, r);
                r
            }
        };
        let topo = self.topology.clone();
        let dropbox = self.box_to(tx.to, at)?;
        let ciphertext = boxes::seal(&dropbox, &tx.fragment.encode(), rng)
            .ok_or_else(|| Error::Internal("encryption failed".into()))?;
        let request = Request::StoreBatched {
            dropbox: dropbox.id,
            batch: wire,
            slot: slot.slot,
            ciphertext,
        }
        .encode()
        .map_err(|e| Error::Internal(e.to_string()))?;
        self.packet_to_box(&topo, &dropbox, &request, rng)
    }

    /// Builds a batch's ask, to the gateway its fragments went to: (frame,
    /// ack id, reply key, answer timeout). The gateway is asked to wait
    /// until the last fragment's sampled delays have passed.
    fn batch_ask_frame<R: CryptoRng + ?Sized>(
        &self,
        ask: &BatchAsk<Peer>,
        now: Now,
        rng: &mut R,
    ) -> Result<(Vec<u8>, [u8; 16], ReplyKey, Duration), Error> {
        let (wire, slot) = *self
            .batch_routes
            .get(&ask.batch)
            .ok_or_else(|| Error::Internal("a batch without its route".into()))?;
        let topo = self.topology.clone();
        let dropbox = self.box_to(ask.to, slot)?;
        let entry = topo
            .node(&self.entry.identity)
            .ok_or_else(|| Error::NoRoute("entry gateway left the topology".into()))?;
        let (surb, ack, key, back_delays) = surb_home(&topo, entry, &self.address, rng)?;
        // The request's own route decides when it arrives, hence how long
        // the gateway should wait after it.
        let t = self.secs(now);
        let mut wait_ms = 0;
        let (frame, there) = self.packet_via_with(
            &topo,
            self.box_gateway(&topo, &dropbox)?,
            |there| {
                let wait = (ask.arrive_by - (t + there.as_secs_f64())).max(0.0) + BATCH_WAIT_SLACK;
                wait_ms = ((wait * 1000.0) as u32).min(MAX_BATCH_WAIT_MS);
                Request::AckBatch {
                    batch: wire,
                    count: ask.count,
                    wait_ms,
                    reply_epoch: topo.epoch,
                    surb,
                }
                .encode()
                .map_err(|e| Error::Internal(e.to_string()))
            },
            rng,
        )?;
        let max = Duration::from_millis(topo.params.max_delay_ms);
        let back = packet::applied_delay(&back_delays, max);
        let waited = Duration::from_millis(u64::from(wait_ms));
        Ok((frame, ack, key, there + waited + back + self.cfg.ack_slack))
    }

    /// Builds a fragment's acked store: (frame, ack id, reply key, ack timeout).
    fn fragment_frame<R: CryptoRng + ?Sized>(
        &self,
        tx: &Transmission<Peer>,
        slot: u64,
        rng: &mut R,
    ) -> Result<(Vec<u8>, [u8; 16], ReplyKey, Duration), Error> {
        let topo = self.topology.clone();
        let dropbox = self.box_to(tx.to, slot)?;
        let ciphertext = boxes::seal(&dropbox, &tx.fragment.encode(), rng)
            .ok_or_else(|| Error::Internal("encryption failed".into()))?;
        let entry = topo
            .node(&self.entry.identity)
            .ok_or_else(|| Error::NoRoute("entry gateway left the topology".into()))?;
        let (surb, ack, key, back_delays) = surb_home(&topo, entry, &self.address, rng)?;
        let request = Request::StoreAcked {
            dropbox: dropbox.id,
            ciphertext,
            reply_epoch: topo.epoch,
            surb,
        }
        .encode()
        .map_err(|e| Error::Internal(e.to_string()))?;
        let (frame, there) = self.packet_to_box(&topo, &dropbox, &request, rng)?;
        let max = Duration::from_millis(topo.params.max_delay_ms);
        let back = packet::applied_delay(&back_delays, max);
        Ok((frame, ack, key, there + back + self.cfg.ack_slack))
    }

    /// An Inject frame carrying `request` to the gateway hosting `dropbox`,
    /// and the delay its hops will add.
    fn packet_to_box<R: CryptoRng + ?Sized>(
        &self,
        topo: &TopologyDocument,
        dropbox: &Dropbox,
        request: &[u8],
        rng: &mut R,
    ) -> Result<(Vec<u8>, Duration), Error> {
        self.packet_via(topo, self.box_gateway(topo, dropbox)?, request, rng)
    }

    /// The last hop of packets to `dropbox`: its hosting gateway.
    fn box_gateway(&self, topo: &TopologyDocument, dropbox: &Dropbox) -> Result<Hop, Error> {
        let gateways: Vec<NodeId> = topo.gateways().map(|g| g.identity).collect();
        dropbox
            .gateway(&gateways)
            .and_then(|id| topo.node(&id))
            .map(|gw| gw.hop())
            .ok_or_else(|| Error::NoRoute("no gateway in the topology".into()))
    }

    /// An Inject frame for a forward packet through one node per layer to
    /// `last`, and the delay its hops will add.
    fn packet_via<R: CryptoRng + ?Sized>(
        &self,
        topo: &TopologyDocument,
        last: Hop,
        body: &[u8],
        rng: &mut R,
    ) -> Result<(Vec<u8>, Duration), Error> {
        self.packet_via_with(topo, last, |_| Ok(body.to_vec()), rng)
    }

    /// [`Self::packet_via`] whose body is made once the route's delay is
    /// known (a batch's ask tells the gateway how long to wait after it).
    fn packet_via_with<R: CryptoRng + ?Sized>(
        &self,
        topo: &TopologyDocument,
        last: Hop,
        body: impl FnOnce(Duration) -> Result<Vec<u8>, Error>,
        rng: &mut R,
    ) -> Result<(Vec<u8>, Duration), Error> {
        let mut route = mix_route(topo, rng)?;
        route.push(last);
        let delays = packet::sample_delays(rng, route.len(), delay_mean(topo));
        let max = Duration::from_millis(topo.params.max_delay_ms);
        let there = packet::applied_delay(&delays, max);
        let body = body(there)?;
        let pkt = packet::build_packet(rng, &route, &[0; 32], [0; 16], &delays, &body)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let f = frame::encode_parts(FrameKind::Inject, topo.epoch, &[&route[0].id, &pkt])
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok((f, there))
    }

    /// The next queued fetch, if the downlink has room for its replies
    /// (otherwise it waits: replies beyond λ_D would only pile up at the
    /// gateway).
    fn paced_fetch_frame<R: CryptoRng + ?Sized>(
        &mut self,
        now: Now,
        rng: &mut R,
    ) -> Option<Vec<u8>> {
        let t = self.secs(now);
        if !self.downlink.can_take(FETCH_COST, t) {
            return None;
        }
        let f = self.next_fetch_frame(now, rng)?;
        self.downlink.take(FETCH_COST, t);
        Some(f)
    }

    /// The next queued fetch that has something to ask, built, or `None`.
    fn next_fetch_frame<R: CryptoRng + ?Sized>(
        &mut self,
        now: Now,
        rng: &mut R,
    ) -> Option<Vec<u8>> {
        // No room for the replies' keys: the fetch waits in the queue
        // (checked before a window fetch is recorded as asked).
        let t = self.secs(now);
        self.pending.retain(|_, p| t - p.created < PENDING_TTL);
        if self.pending.len() + FETCH_SURBS > MAX_PENDING {
            return None;
        }
        loop {
            let due = self.next_fetch(now)?;
            match self.fetch_frame(due, now, rng) {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {} // a window with nothing left to ask
                Err(e) => {
                    tracing::debug!(error = %e, "fetch not built");
                    return None;
                }
            }
        }
    }

    /// Takes the next fetch from the queue: the front, and every other
    /// time the first fetch of a current or previous period's box. After
    /// days away the queue holds a probe for every hour missed of every
    /// contact; new messages do not wait behind all of them, nor do the
    /// hours missed wait behind the probes every round brings.
    fn next_fetch(&mut self, now: Now) -> Option<Fetch> {
        self.recent_turn = !self.recent_turn;
        if self.recent_turn {
            let recent = dropbox::period_at(now.unix_ms).saturating_sub(1);
            let i = self
                .fetches
                .iter()
                .position(|f| dropbox::slot_period(f.period) >= recent);
            if let Some(i) = i {
                return self.fetches.remove(i);
            }
        }
        self.fetches.pop_front()
    }

    /// A fetch of a box, with SURBs back to us.
    fn fetch_frame<R: CryptoRng + ?Sized>(
        &mut self,
        due: Fetch,
        now: Now,
        rng: &mut R,
    ) -> Result<Option<Vec<u8>>, Error> {
        // (The caller checked that the reply keys have room.)
        let t = self.secs(now);
        let topo = self.topology.clone();
        let (me, them) = due.peer;
        let timeout = fetch_timeout(&topo);
        let Some(c) = self
            .identities
            .get_mut(&me)
            .and_then(|m| m.contacts.get_mut(&them))
        else {
            return Ok(None);
        };
        let dropbox = c.inbound_box(&me, &them, due.period);
        let for_state = c.inbound_box(&me, &them, due.period);
        // A group's box is read by every member: nothing is deleted, the
        // cursor alone says where to answer from.
        let shared = c.group.is_some();
        let state = c
            .inbound
            .entry(due.period)
            .or_insert_with(|| BoxState::new(for_state));
        let (cursor, list) = match due.kind {
            FetchKind::Window => match state.next_window(t, timeout) {
                Some(c) => (c, false),
                None => return Ok(None),
            },
            FetchKind::Probe => (state.probe_cursor(), true),
        };
        let entry = topo
            .node(&self.entry.identity)
            .ok_or_else(|| Error::NoRoute("entry gateway left the topology".into()))?;
        let mut surbs = Vec::with_capacity(FETCH_SURBS);
        let mut keys = Vec::with_capacity(FETCH_SURBS);
        for _ in 0..FETCH_SURBS {
            let (surb, identifier, key, _) = surb_home(&topo, entry, &self.address, rng)?;
            surbs.push(surb);
            keys.push((identifier, key));
        }
        let (after_seq, cursor) = if shared {
            (0, cursor.max(state.confirmed))
        } else {
            (state.confirmed, cursor)
        };
        let req = FetchRequest::new_signed_at(
            &state.dropbox,
            after_seq,
            cursor,
            list,
            // Coarse: the gateway's window is ten minutes; the minute is all
            // it needs, and all it learns of our clock.
            protocol::clock::coarse(now.unix_ms),
            topo.epoch,
            surbs,
        );
        let known = state.probe_cursor();
        let answers_from = cursor.max(state.confirmed);
        // This fetch deletes at the gateway what it confirms: the receipt of
        // those messages must be on disk before it leaves.
        if !shared
            && state.confirmed
                > self
                    .persisted
                    .confirmed
                    .get(&(due.peer, due.period))
                    .copied()
                    .unwrap_or(0)
        {
            self.confirm_unpersisted = true;
        }
        let bytes = Request::Fetch(req)
            .encode()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (frame, _) = self.packet_to_box(&topo, &dropbox, &bytes, rng)?;
        for (id, key) in keys {
            self.pending.insert(
                id,
                Pending {
                    key,
                    peer: due.peer,
                    period: due.period,
                    cursor: answers_from,
                    known,
                    created: t,
                },
            );
        }
        Ok(Some(frame))
    }

    /// A drop-cover packet: a `Drop` request to a random gateway.
    fn drop_cover_frame<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Result<Vec<u8>, Error> {
        let topo = self.topology.clone();
        let gateways: Vec<&TopologyNode> = topo.gateways().collect();
        if gateways.is_empty() {
            return Err(Error::NoRoute("no gateway".into()));
        }
        let gw = gateways[rng.random_range(0..gateways.len())].hop();
        let body = Request::Drop
            .encode()
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(self.packet_via(&topo, gw, &body, rng)?.0)
    }

    /// A loop: through the mixnet back to ourselves via our own entry gateway.
    ///
    /// The loop is built as a reply through a SURB of our own, so that at
    /// our entry gateway (its final hop) it looks exactly like the replies
    /// it delivers to us: a sealed payload under a random identifier. A
    /// forward packet would arrive there readable, and a gateway that tells
    /// loops from replies could drop replies and pass loops unnoticed.
    fn loop_frame<R: CryptoRng + ?Sized>(
        &mut self,
        now: Now,
        rng: &mut R,
    ) -> Result<Vec<u8>, Error> {
        let topo = self.topology.clone();
        let entry = topo
            .node(&self.entry.identity)
            .ok_or_else(|| Error::NoRoute("entry gateway left the topology".into()))?;
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        id[0] |= 1; // non-zero: a reply at the gateway
        let mut route = mix_route(&topo, rng)?;
        route.push(entry.hop());
        let delays = packet::sample_delays(rng, route.len(), delay_mean(&topo));
        let (surb, _key) = packet::build_surb(rng, &route, &self.address, id, &delays)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let (first, pkt) =
            packet::use_surb(&surb, LOOP_BODY).map_err(|e| Error::Internal(e.to_string()))?;
        let f = frame::encode_parts(FrameKind::Inject, topo.epoch, &[&first, &pkt])
            .map_err(|e| Error::Internal(e.to_string()))?;
        let max = Duration::from_millis(topo.params.max_delay_ms);
        let expected = packet::applied_delay(&delays, max).as_secs_f64();
        let t = self.secs(now);
        let lost = self.loops.expire(t);
        self.loops_lost(lost, t);
        self.loops.sent(id, t, expected);
        Ok(f)
    }

    /// A Deliver frame from our entry gateway: a reply (fetch reply,
    /// store-ack or loop) under its identifier, or a dummy of the
    /// constant-rate downlink (identifier zero).
    pub fn handle_delivery(&mut self, now: Now, identifier: [u8; 16], payload: &[u8]) {
        if identifier == [0; 16] {
            self.stats.downlink_dummies += 1;
            return;
        }
        self.dirty = true;
        let t = self.secs(now);
        (self.unix_ms, self.last_t) = (now.unix_ms, t);
        match self.loops.returned(&identifier, t) {
            LoopOutcome::OnTime => {
                self.stats.loops_returned += 1;
                self.loops_lost_in_row = 0;
                return;
            }
            LoopOutcome::Late => {
                self.stats.loops_late += 1;
                self.loops_lost_in_row = 0;
                return;
            }
            LoopOutcome::Unknown => {}
        }
        if let Some((key, _, to, slot)) = self.acks.remove(&identifier) {
            // Only the SURB's maker can read it: a forged ack does not open.
            match packet::open_reply(&key, payload) {
                Ok(b) if b == ACK_BODY => {
                    self.count_stored(to, slot, 1);
                    self.outbox.on_ack(&identifier);
                    self.publish_statuses();
                }
                Ok(b) if BatchAck::from_body(&b).is_some() => {
                    if let Some(a) = BatchAck::from_body(&b) {
                        if let Some(why) = a.refused {
                            tracing::debug!(reason = ?why, "a batched fragment was refused by its dropbox gateway");
                        }
                        self.count_stored(to, slot, u64::from(a.stored.count_ones()));
                        self.outbox
                            .on_batch_ack(&identifier, a.stored, a.refused.is_some());
                        self.publish_statuses();
                    }
                }
                Ok(b) => {
                    if let Some(why) = StoreRefused::from_body(&b) {
                        tracing::debug!(reason = ?why, "a fragment was refused by its dropbox gateway");
                        self.outbox.on_refused(&identifier);
                        self.publish_statuses();
                    }
                }
                Err(_) => {}
            }
            return;
        }
        let Some(p) = self.pending.remove(&identifier) else {
            return;
        };
        let Ok(body) = packet::open_reply(&p.key, payload) else {
            tracing::debug!("unreadable fetch reply");
            return;
        };
        if let Ok(r) = Refused::decode(&body) {
            // Nothing was read or deleted: what we know of the box stands
            // (taking this for an empty box would forget listed messages).
            // The fetch goes again with the next round.
            self.stats.refused_replies += 1;
            self.events.push_back(Event::FetchRefused {
                reason: r.reason,
                gateway_offset_ms: (r.gateway_s as i64)
                    .saturating_mul(1000)
                    .saturating_add(500)
                    .saturating_sub(now.unix_ms as i64),
            });
            return;
        }
        self.on_fetch_reply(p, &body, t);
    }

    fn on_fetch_reply(&mut self, p: Pending, body: &[u8], t: f64) {
        let (me, them) = p.peer;
        let room = self.inbox_has_room();
        let mut fragment = None;
        {
            let Some(state) = self
                .identities
                .get_mut(&me)
                .and_then(|m| m.contacts.get_mut(&them))
                .and_then(|c| c.inbound.get_mut(&p.period))
            else {
                return;
            };
            if let Ok(listing) = Listing::decode(body) {
                state.learn(p.cursor, p.known, &listing.seqs, listing.remaining);
            } else {
                let Ok(reply) = FetchReply::decode(body) else {
                    tracing::debug!("undecodable fetch reply");
                    return;
                };
                if let Some((seq, ct)) = &reply.message
                    && state.wants(*seq)
                {
                    let handed_over = match boxes::open(&state.dropbox, ct)
                        .map(|b| Fragment::decode(&b))
                    {
                        // Application not keeping up, or the contact's partial
                        // messages fill their memory bound: leave it unconfirmed,
                        // it comes again.
                        Some(Ok(f)) if !room || self.reassembly.would_refuse(&p.peer, &f) => false,
                        Some(Ok(f)) => {
                            fragment = Some(f);
                            true
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
        }
        if let Some(f) = fragment {
            self.on_fragment(p.peer, f, t);
        }
        if self.cfg.dangerous.no_cover {
            return;
        }
        // A box that holds more is drained by a window of fetches at once,
        // and probed for more while listings say there is. Window fetches
        // whose answers did not come in time are asked again.
        let timeout = fetch_timeout(&self.topology);
        let Some(state) = self
            .identities
            .get_mut(&me)
            .and_then(|m| m.contacts.get_mut(&them))
            .and_then(|c| c.inbound.get_mut(&p.period))
        else {
            return;
        };
        state.forget_outstanding(t, timeout);
        let want = state
            .unread()
            .div_ceil(FETCH_SURBS)
            .min(FETCH_WINDOW)
            .saturating_sub(state.outstanding.len());
        let probe_now = state.beyond && state.unread() < MAX_LISTING;
        let has_had_its_share = state.seen >= dropbox::NEXT_BOX_AFTER;
        let window = Fetch {
            peer: p.peer,
            period: p.period,
            kind: FetchKind::Window,
        };
        let probe = Fetch {
            kind: FetchKind::Probe,
            ..window
        };
        let queued = self.fetches.iter().filter(|x| **x == window).count();
        for _ in queued..want {
            if self.fetches.len() < MAX_PENDING {
                self.fetches.push_front(window);
            }
        }
        if probe_now && !self.fetches.contains(&probe) && self.fetches.len() < MAX_PENDING {
            self.fetches.push_front(probe);
        }
        // The sender may have moved on to the period's next box: look there
        // now rather than at the next round.
        let next = dropbox::next_slot(p.period);
        let known = self
            .identities
            .get(&me)
            .and_then(|m| m.contacts.get(&them))
            .is_some_and(|c| c.inbound.contains_key(&next));
        let next = Fetch {
            period: next,
            ..probe
        };
        if has_had_its_share
            && !known
            && !self.fetches.contains(&next)
            && self.fetches.len() < MAX_PENDING
        {
            self.fetches.push_back(next);
        }
    }

    /// A fragment from `peer.1` to my identity `peer.0`, decrypted and authenticated.
    fn on_fragment(&mut self, peer: Peer, f: Fragment, t: f64) {
        let m = match self.reassembly.insert(peer, f, t) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "fragment refused");
                return;
            }
        };
        if let Some(gid) = self.group_of(&peer) {
            self.on_group_box(peer, gid, m);
            return;
        }
        match m.kind {
            Kind::Receipt => {
                for id in reliable::decode_receipt(&m.body) {
                    self.outbox.on_receipt(&id);
                }
                self.publish_statuses();
            }
            Kind::Message | Kind::Group => {
                for m in self.sequencer.push(m, t) {
                    self.hand_over(m);
                }
            }
            Kind::Control => self.on_control(m),
        }
    }

    /// A control message from a contact: a session reset. Start a new
    /// session with its one-time key, and report the messages it names.
    fn on_control(&mut self, m: Complete<Peer>) {
        let (me, them) = m.from;
        let Some(reset) = Reset::decode(&m.body) else {
            tracing::debug!("unknown control message");
            return;
        };
        let Some(mine) = self.identities.get_mut(&me) else {
            return;
        };
        let Some(contact) = mine.contacts.get_mut(&them) else {
            return;
        };
        if reset.identity != contact.sessions.their_identity() {
            // Authenticated by the pair secret: the contact has a new Olm
            // account (a reinstall, a lost store).
            tracing::info!("contact's session identity key changed");
            contact.sessions.set_their_identity(reset.identity);
        }
        if let Err(e) = contact.sessions.start(&mine.olm, &reset.one_time_key) {
            tracing::warn!(error = %e, "session reset with an unusable key: ignored");
            return;
        }
        self.olm_dirty.insert(key(PREFIX_SESSIONS, &[&me, &them]));
        self.dirty = true;
        for id in &reset.undecryptable {
            self.outbox.on_undecryptable(id);
        }
        self.publish_statuses();
    }

    /// Gives a complete message to the application, and schedules its receipt.
    ///
    /// Messages come here in the order the contact sent them (the
    /// sequencer's), which is the order Olm encrypted them in: skipped
    /// message keys are needed only for real gaps.
    fn hand_over(&mut self, m: Complete<Peer>) {
        let (me, them) = m.from;
        let opened = match self
            .identities
            .get_mut(&me)
            .and_then(|mine| Some((&mut mine.olm, mine.contacts.get_mut(&them)?)))
        {
            Some((olm, contact)) => {
                let r = contact.sessions.open(olm, &m.body);
                self.olm_dirty.insert(key(PREFIX_SESSIONS, &[&me, &them]));
                // Only a pre-key message can use up a one-time key.
                if m.body.get(1) == Some(&ratchet::TYPE_PRE_KEY) {
                    self.olm_dirty.insert(key(PREFIX_ACCOUNT, &[&me]));
                }
                r
            }
            None => return,
        };
        let body = match opened {
            Ok(b) => b,
            Err(e) => {
                let reason = match e {
                    OpenError::Malformed => "not an envelope".to_string(),
                    OpenError::Undecryptable(r) => r,
                };
                tracing::warn!(reason = %reason, "a message could not be decrypted; asking the contact for a new session");
                self.resets_due.entry(m.from).or_default().push(m.msg_id);
                self.events.push_back(Event::Undecryptable {
                    to: ContactId(me),
                    from: ContactId(them),
                    id: m.msg_id,
                    reason,
                });
                return;
            }
        };
        if m.kind == Kind::Group {
            self.on_group_keys(me, them, &body);
            return;
        }
        // Typed content: its data, kind and metadata. Content that does not
        // decode is handed over as it came (nothing is lost), untyped.
        let (body, kind, attachment) =
            untype(body, m.body.first() == Some(&ratchet::ENVELOPE_TYPED));
        self.receipts_due.entry(m.from).or_default().push(m.msg_id);
        self.received.push_back(Received {
            to: ContactId(me),
            from: ContactId(them),
            id: m.msg_id,
            body,
            redelivered: false,
            group: None,
            kind,
            attachment,
        });
    }

    /// Checks that `me` is hosted (for callers that take an identity).
    pub fn has_identity(&self, me: &ContactId) -> bool {
        self.me(me).is_ok()
    }
}

// ---- groups ----

impl ClientState {
    /// Queues a message of the client layer (not an application message's
    /// body) to `to`.
    fn push_out(
        &mut self,
        t: f64,
        to: Peer,
        kind: Kind,
        seq: u64,
        body: Vec<u8>,
    ) -> Result<MessageId, Error> {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        queue(
            &mut self.outbox,
            Outgoing {
                id,
                to,
                kind,
                session: self.session,
                seq,
                body,
            },
            t,
            self.cfg.batch_acks,
        )?;
        self.dirty = true;
        Ok(id)
    }

    /// Olm-encrypts a group's keys for contact `them` and queues them in
    /// their stream (a seq, like a message).
    fn send_keys(
        &mut self,
        t: f64,
        me: [u8; 32],
        them: [u8; 32],
        keys: &GroupKeys,
    ) -> Result<(), Error> {
        let mine = self
            .identities
            .get_mut(&me)
            .ok_or(Error::UnknownIdentity(ContactId(me)))?;
        let c = mine
            .contacts
            .get_mut(&them)
            .filter(|c| c.group.is_none())
            .ok_or(Error::UnknownContact(ContactId(them)))?;
        let envelope = c.sessions.seal(&keys.encode())?;
        self.olm_dirty.insert(key(PREFIX_SESSIONS, &[&me, &them]));
        let seq = *mine.next_seq.get(&them).unwrap_or(&1);
        self.push_out(t, (me, them), Kind::Group, seq, envelope)?;
        if let Some(mine) = self.identities.get_mut(&me) {
            mine.next_seq.insert(them, seq + 1);
        }
        Ok(())
    }

    /// [`Self::add_epoch_entry`] for an epoch learned now, whose boxes of
    /// `unread` periods are probed until answered.
    fn read_epoch(
        mine: &mut Me,
        me: [u8; 32],
        gid: [u8; 32],
        ek: [u8; 32],
        secret: [u8; 32],
        unread: Range<u64>,
    ) {
        Self::add_epoch_entry(mine, gid, ek, secret, true);
        if let Some(c) = mine.contacts.get_mut(&ek) {
            c.mark_unread(&me, &ek, unread);
        }
    }

    /// Makes the contacts entry through which an epoch's boxes are fetched
    /// and written.
    fn add_epoch_entry(
        mine: &mut Me,
        gid: [u8; 32],
        ek: [u8; 32],
        secret: [u8; 32],
        caught_up: bool,
    ) {
        mine.contacts.entry(ek).or_insert_with(|| Contact {
            name: String::new(),
            pair: PairSecret::from_bytes(secret),
            sessions: Sessions::new([0; 32]),
            inbound: BTreeMap::new(),
            caught_up,
            group: Some(gid),
        });
    }

    fn group_mut(&mut self, me: &ContactId, group: &GroupId) -> Result<&mut Group, Error> {
        self.identities
            .get_mut(&me.0)
            .ok_or(Error::UnknownIdentity(*me))?
            .groups
            .get_mut(&group.0)
            .ok_or(Error::UnknownGroup(*group))
    }

    /// Queues `item` into the current epoch's box of the group; a control
    /// item signed by identity `me` for that box.
    fn post(
        &mut self,
        t: f64,
        me: [u8; 32],
        gid: [u8; 32],
        kind: Kind,
        item: &BoxItem,
    ) -> Result<MessageId, Error> {
        let ek = self.group_mut(&ContactId(me), &GroupId(gid))?.epoch_key();
        let secret = &self
            .identities
            .get(&me)
            .ok_or(Error::UnknownIdentity(ContactId(me)))?
            .secret;
        let body = match item {
            BoxItem::Message { .. } => item.encode(),
            _ => item.clone().sign(secret, &ek).encode(),
        };
        self.push_out(t, (me, ek), kind, 0, body)
    }

    /// Our sender ratchet's key goes into the epoch's box of this period
    /// before our first message there: a member who joins later, or reads
    /// only recent periods, finds it next to the messages it opens.
    fn announce_if_due(&mut self, t: f64, me: [u8; 32], gid: [u8; 32]) -> Result<(), Error> {
        let period = dropbox::period_at(self.unix_ms);
        let g = self.group_mut(&ContactId(me), &GroupId(gid))?;
        if g.announced == Some((g.epoch, period)) {
            return Ok(());
        }
        let item = g.announce(me);
        g.announced = Some((g.epoch, period));
        self.post(t, me, gid, Kind::Control, &item)?;
        Ok(())
    }

    /// Creates a group with identity `me` as its only member. Invite
    /// contacts with [`Self::invite_to_group`].
    pub fn create_group<R: Rng + ?Sized>(
        &mut self,
        now: Now,
        me: &ContactId,
        name: &str,
        rng: &mut R,
    ) -> Result<GroupId, Error> {
        self.unix_ms = now.unix_ms;
        let t = self.secs(now);
        let mine = self
            .identities
            .get_mut(&me.0)
            .ok_or(Error::UnknownIdentity(*me))?;
        let mut gid = [0u8; 32];
        rng.fill_bytes(&mut gid);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let g = Group::create(gid, name, me.0, "", secret);
        // A new box: nothing to catch up on.
        Self::add_epoch_entry(mine, gid, g.epoch_key(), secret, true);
        mine.groups.insert(gid, g);
        self.dirty = true;
        self.announce_if_due(t, me.0, gid)?;
        Ok(GroupId(gid))
    }

    /// Adds contact `member` to the group: they get the group's keys
    /// pairwise (Olm), and the members learn it from the group's box. The
    /// new member reads what the current epoch's boxes still hold. A
    /// member who left in the current epoch comes back in a new epoch
    /// (its keys go to every member), so that its "left", signed for this
    /// epoch, cannot be posted again to remove it.
    pub fn invite_to_group(
        &mut self,
        now: Now,
        me: &ContactId,
        group: &GroupId,
        member: &ContactId,
    ) -> Result<(), Error> {
        self.unix_ms = now.unix_ms;
        let t = self.secs(now);
        let name = self
            .identities
            .get(&me.0)
            .and_then(|m| m.contacts.get(&member.0))
            .filter(|c| c.group.is_none())
            .map(|c| c.name.clone())
            .ok_or(Error::UnknownContact(*member))?;
        let g = self.group_mut(me, group)?;
        if !g.members.contains_key(&member.0) && g.members.len() >= group::MAX_MEMBERS {
            return Err(Error::Group(format!(
                "a group has at most {} members",
                group::MAX_MEMBERS
            )));
        }
        if g.add_member(member.0, name.clone()) {
            let keys = g.keys(group::OP_INVITE);
            self.dirty = true;
            self.send_keys(t, me.0, member.0, &keys)?;
        } else {
            // It left in this epoch, and its signed "left" could be posted
            // again into this epoch's boxes: it comes back in a new one.
            let list = g.list();
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let joining = Some((member.0, name.clone()));
            let mut keys = self.start_epoch(now, me, group, list, joining, secret)?;
            keys.op = group::OP_INVITE;
            self.send_keys(t, me.0, member.0, &keys)?;
        }
        let added = BoxItem::Added {
            sender: me.0,
            sig: [0; 64],
            member: member.0,
            name,
        };
        self.post(t, me.0, group.0, Kind::Control, &added)?;
        self.publish_statuses();
        Ok(())
    }

    /// Removes `member` from the group: a new epoch, whose secret goes
    /// pairwise to the members who stay (those who are not my contacts get
    /// it from the members who are theirs), with new boxes and new sender
    /// ratchets. The removed member reads nothing sent after.
    pub fn remove_from_group<R: Rng + ?Sized>(
        &mut self,
        now: Now,
        me: &ContactId,
        group: &GroupId,
        member: &ContactId,
        rng: &mut R,
    ) -> Result<(), Error> {
        self.unix_ms = now.unix_ms;
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let g = self.group_mut(me, group)?;
        if member.0 == me.0 || !g.members.contains_key(&member.0) {
            return Err(Error::Group(format!(
                "{member} is not another member of the group"
            )));
        }
        let mut stay = g.list();
        stay.retain(|m| m.0 != member.0);
        self.start_epoch(now, me, group, stay, None, secret)?;
        self.publish_statuses();
        Ok(())
    }

    /// Makes the group's next epoch with members `list` (and `joining`,
    /// added in it) and `secret`, and sends its keys to the members who
    /// are my contacts but the one joining.
    fn start_epoch(
        &mut self,
        now: Now,
        me: &ContactId,
        group: &GroupId,
        mut list: Vec<([u8; 32], u32, String)>,
        joining: Option<([u8; 32], String)>,
        secret: [u8; 32],
    ) -> Result<GroupKeys, Error> {
        let t = self.secs(now);
        let until = dropbox::period_at(now.unix_ms) + self.cfg.catch_up_periods.max(2);
        let g = self.group_mut(me, group)?;
        let epoch = g
            .epoch
            .checked_add(1)
            .ok_or_else(|| Error::Group("epochs exhausted".into()))?;
        let except = joining.as_ref().map(|j| j.0);
        list.extend(joining.map(|(k, name)| (k, epoch, name)));
        g.advance(epoch, secret, &list, me.0, until);
        let ek = g.epoch_key();
        let keys = g.keys(group::OP_REKEY);
        let mine = self
            .identities
            .get_mut(&me.0)
            .ok_or(Error::UnknownIdentity(*me))?;
        Self::add_epoch_entry(mine, group.0, ek, secret, true);
        self.dirty = true;
        self.forward_keys(t, me.0, except, &keys);
        self.announce_if_due(t, me.0, group.0)?;
        self.events.push_back(Event::Group {
            me: *me,
            group: *group,
            change: GroupChange::Rekeyed { epoch, by: *me },
        });
        Ok(keys)
    }

    /// Sends an epoch's keys to every member who is my contact, but `except`.
    fn forward_keys(&mut self, t: f64, me: [u8; 32], except: Option<[u8; 32]>, keys: &GroupKeys) {
        let to: Vec<[u8; 32]> = match self.identities.get(&me) {
            Some(mine) => keys
                .members
                .iter()
                .map(|m| m.0)
                .filter(|k| *k != me && Some(*k) != except)
                .filter(|k| mine.contacts.get(k).is_some_and(|c| c.group.is_none()))
                .collect(),
            None => return,
        };
        for k in to {
            if let Err(e) = self.send_keys(t, me, k, keys) {
                tracing::warn!(error = %e, "a group's new keys could not be queued for a member");
            }
        }
    }

    /// Leaves the group: the members are told (in its box) and this
    /// identity forgets it.
    pub fn leave_group(&mut self, now: Now, me: &ContactId, group: &GroupId) -> Result<(), Error> {
        self.unix_ms = now.unix_ms;
        let t = self.secs(now);
        self.post(
            t,
            me.0,
            group.0,
            Kind::Control,
            &BoxItem::Left {
                sender: me.0,
                sig: [0; 64],
            },
        )?;
        if let Some(mine) = self.identities.get_mut(&me.0) {
            mine.groups.remove(&group.0);
        }
        self.left.retain(|l| *l != (me.0, group.0));
        self.left.push_back((me.0, group.0));
        if self.left.len() > MAX_LEFT {
            self.left.pop_front();
        }
        self.dirty = true;
        self.publish_statuses();
        Ok(())
    }

    /// Queues `body` (up to [`MAX_BODY_LEN`]) from identity `me` to every
    /// member of the group: one copy, Megolm-encrypted, into the group's
    /// box. Its status ends at [`Status::Stored`] (groups have no receipts).
    pub fn send_group(
        &mut self,
        now: Now,
        me: &ContactId,
        group: &GroupId,
        body: &[u8],
    ) -> Result<MessageId, Error> {
        check_len(body.len())?;
        self.unix_ms = now.unix_ms;
        let t = self.secs(now);
        self.announce_if_due(t, me.0, group.0)?;
        let item = self.group_mut(me, group)?.seal(me.0, body);
        let id = self.post(t, me.0, group.0, Kind::Message, &item)?;
        self.publish_statuses();
        Ok(id)
    }

    /// [`Self::send_group`] of typed content (protocol.md §13.12): text or
    /// an attachment with its metadata (a thumbnail travels with it: groups
    /// send no separate preview).
    pub fn send_group_content(
        &mut self,
        now: Now,
        me: &ContactId,
        group: &GroupId,
        kind: ContentKind,
        attachment: Option<&Attachment>,
        data: &[u8],
    ) -> Result<MessageId, Error> {
        check_len(data.len())?;
        self.unix_ms = now.unix_ms;
        let t = self.secs(now);
        self.announce_if_due(t, me.0, group.0)?;
        let body = content::encode(kind, attachment, data);
        let item = self.group_mut(me, group)?.seal_as(me.0, &body, true);
        let id = self.post(t, me.0, group.0, Kind::Message, &item)?;
        self.publish_statuses();
        Ok(id)
    }

    /// The groups identity `me` is a member of.
    pub fn groups(&self, me: &ContactId) -> Vec<GroupId> {
        self.identities
            .get(&me.0)
            .map(|m| m.groups.keys().map(|k| GroupId(*k)).collect())
            .unwrap_or_default()
    }

    /// A group's name.
    pub fn group_name(&self, me: &ContactId, group: &GroupId) -> Option<String> {
        Some(
            self.identities
                .get(&me.0)?
                .groups
                .get(&group.0)?
                .name
                .clone(),
        )
    }

    /// A group's members as this identity knows them (itself included,
    /// with an empty name), and the current epoch.
    pub fn group_members(
        &self,
        me: &ContactId,
        group: &GroupId,
    ) -> Option<(u32, Vec<(ContactId, String)>)> {
        let g = self.identities.get(&me.0)?.groups.get(&group.0)?;
        Some((
            g.epoch,
            g.members
                .iter()
                .map(|(k, n)| (ContactId(*k), n.clone()))
                .collect(),
        ))
    }

    /// The first period whose box is read of a group epoch learned now:
    /// the `catch_up_periods` before, or, soon after an absence, back to
    /// its start (the keys may have waited in the boxes of the hours
    /// missed while the group wrote to the epoch); no further back than
    /// gateways keep messages.
    fn read_back_from(&self, period: u64) -> u64 {
        let catch_up = self.cfg.catch_up_periods.max(2);
        let mut from = period.saturating_sub(catch_up - 1);
        if let Some((start, back)) = self.absence
            && back.saturating_add(catch_up) > period
        {
            from = from.min(start);
        }
        from.max(period.saturating_sub(OFFLINE_CATCH_UP_PERIODS))
    }

    /// A group's keys came from contact `them` (Olm-decrypted): join, or
    /// move to a newer epoch and pass it on.
    fn on_group_keys(&mut self, me: [u8; 32], them: [u8; 32], plaintext: &[u8]) {
        let Some(keys) = GroupKeys::decode(plaintext) else {
            tracing::debug!("unreadable group keys from a contact");
            return;
        };
        if !keys.members.iter().any(|m| m.0 == me) || !keys.members.iter().any(|m| m.0 == them) {
            tracing::debug!("group keys that do not name both of us: ignored");
            return;
        }
        // A group we left: a new epoch's keys (from a member who had not
        // read our "left") are not an invitation; an invitation is.
        if let Some(i) = self.left.iter().position(|l| *l == (me, keys.id)) {
            if keys.op != group::OP_INVITE {
                tracing::debug!("keys of a group we left: ignored");
                return;
            }
            self.left.remove(i);
        }
        let t = self.secs_now();
        let period = dropbox::period_at(self.unix_ms);
        let until = period.saturating_add(self.cfg.catch_up_periods.max(2));
        // The boxes before the previous period (which rounds probe anyway)
        // that a new epoch may have been written to unseen.
        let unread = self.read_back_from(period)..period.saturating_sub(1);
        let Some(mine) = self.identities.get_mut(&me) else {
            return;
        };
        self.dirty = true;
        let change = match mine.groups.get_mut(&keys.id) {
            None => {
                let g = Group::join(&keys);
                let ek = g.epoch_key();
                Self::read_epoch(mine, me, keys.id, ek, *keys.secret, unread);
                mine.groups.insert(keys.id, g);
                GroupChange::Joined {
                    by: ContactId(them),
                }
            }
            Some(g) if g.is_newer(keys.epoch, &keys.secret) => {
                g.advance(keys.epoch, *keys.secret, &keys.members, me, until);
                let ek = g.epoch_key();
                let opened = g.retry(me);
                Self::read_epoch(mine, me, keys.id, ek, *keys.secret, unread);
                let mut fwd = keys.clone();
                fwd.op = group::OP_REKEY;
                self.forward_keys(t, me, Some(them), &fwd);
                self.deliver_group(me, keys.id, opened);
                GroupChange::Rekeyed {
                    epoch: keys.epoch,
                    by: ContactId(them),
                }
            }
            Some(g) => {
                // Older or losing keys from a member who stays: it has not
                // heard of ours. A losing epoch made at the same time as
                // ours was written to meanwhile: read its boxes as an old
                // epoch's. And send it ours, so that it moves on.
                if !g.members.contains_key(&them) {
                    return;
                }
                // An older epoch we never had (keys of two epochs come in
                // any order after an absence: we moved past it) was
                // written to too: read it as well.
                let ek = group::epoch_key(&keys.id, keys.epoch, &keys.secret);
                let unknown = ek != g.epoch_key() && !g.retired.iter().any(|r| r.0 == ek);
                let losing = unknown && keys.epoch == g.epoch;
                // An older one only while there is room for it: it must
                // not push out an old epoch still being read.
                let read = losing
                    || (unknown && keys.epoch < g.epoch && g.retired.len() < group::MAX_RETIRED);
                if read {
                    g.retire(ek, keys.epoch, *keys.secret, until);
                }
                let reply = ((keys.epoch, *keys.secret) != (g.epoch, g.secret()))
                    .then(|| g.keys(group::OP_REKEY));
                if read {
                    Self::read_epoch(mine, me, keys.id, ek, *keys.secret, unread);
                }
                if losing {
                    // The members who know only the winner read it too:
                    // messages were written there before its makers heard.
                    let mut fwd = keys.clone();
                    fwd.op = group::OP_REKEY;
                    self.forward_keys(t, me, Some(them), &fwd);
                }
                if let Some(ours) = reply
                    && let Err(e) = self.send_keys(t, me, them, &ours)
                {
                    tracing::warn!(error = %e, "a group's keys could not be queued for a member");
                }
                return;
            }
        };
        if let Err(e) = self.announce_if_due(t, me, keys.id) {
            tracing::warn!(error = %e, "group session key not queued");
        }
        self.events.push_back(Event::Group {
            me: ContactId(me),
            group: GroupId(keys.id),
            change,
        });
    }

    /// A complete message from a group's box.
    fn on_group_box(&mut self, peer: Peer, gid: [u8; 32], m: Complete<Peer>) {
        let me = peer.0;
        let Some(item) = BoxItem::decode(&m.body) else {
            tracing::debug!("unreadable group message");
            return;
        };
        // Control items are signed by their sender's identity for this
        // epoch's box: a member cannot announce a session, add or leave in
        // another's name, nor replay such an item from another group.
        if !item.verify(&peer.1) {
            tracing::debug!("group control item not signed by its sender: dropped");
            return;
        }
        let Some(g) = self
            .identities
            .get_mut(&me)
            .and_then(|x| x.groups.get_mut(&gid))
        else {
            return;
        };
        self.dirty = true;
        let mut opened = Vec::new();
        let mut change = None;
        // An "added" counts only from the current epoch's box: an old
        // epoch's box is still read, and a removed member (who holds its
        // secret) could copy a signed "added" of itself there. A "left"
        // counts from any box read: the leaver may not have heard of the
        // newest epoch yet. Both go through the ledger, so that a replayed
        // or late item does not undo a later change.
        let current = peer.1 == g.epoch_key();
        let box_epoch = g.epoch_of(&peer.1);
        match (m.kind, item) {
            (
                Kind::Message,
                BoxItem::Message {
                    sender,
                    session_id,
                    megolm,
                    typed,
                },
            ) => opened.push((
                m.msg_id,
                g.open_as(me, m.msg_id, sender, &session_id, &megolm, typed),
            )),
            (
                Kind::Control,
                BoxItem::Announce {
                    sender,
                    session_key,
                    ..
                },
            ) if sender != me => match g.add_session(sender, &session_key) {
                Ok(sid) => opened.extend(g.retry_session(me, &sid)),
                Err(e) => tracing::debug!(reason = %e, "group session key not taken"),
            },
            (
                Kind::Control,
                BoxItem::Added {
                    sender,
                    member,
                    name,
                    ..
                },
            ) if sender != me
                && current
                && g.members.contains_key(&sender)
                && (g.members.contains_key(&member) || g.members.len() < group::MAX_MEMBERS) =>
            {
                // A member added again (re-invited) keeps its name; its
                // `since` rises all the same, as at the one who added it.
                let new = !g.members.contains_key(&member);
                if g.add_member(member, name) && new {
                    opened.extend(g.retry(me));
                    change = Some(GroupChange::MemberAdded {
                        member: ContactId(member),
                        by: ContactId(sender),
                    });
                }
            }
            (Kind::Control, BoxItem::Left { sender, .. }) if sender != me => {
                if let Some(e) = box_epoch
                    && g.member_left(sender, e)
                {
                    change = Some(GroupChange::MemberLeft {
                        member: ContactId(sender),
                    });
                }
            }
            _ => {}
        }
        self.deliver_group(me, gid, opened);
        if let Some(change) = change {
            self.events.push_back(Event::Group {
                me: ContactId(me),
                group: GroupId(gid),
                change,
            });
        }
    }

    /// Hands opened group messages to the application.
    fn deliver_group(&mut self, me: [u8; 32], gid: [u8; 32], opened: Vec<([u8; 16], Opened)>) {
        for (id, o) in opened {
            match o {
                Opened::Plain(sender, body, typed) => {
                    let (body, kind, attachment) = untype(body, typed);
                    self.received.push_back(Received {
                        to: ContactId(me),
                        from: ContactId(sender),
                        id,
                        body,
                        redelivered: false,
                        group: Some(GroupId(gid)),
                        kind,
                        attachment,
                    })
                }
                Opened::Refused(reason) => {
                    tracing::debug!(%reason, "a group message was refused")
                }
                Opened::Own | Opened::Held => {}
            }
        }
    }

    /// The group a contacts entry reads for, if it is a group's epoch.
    fn group_of(&self, peer: &Peer) -> Option<[u8; 32]> {
        self.identities.get(&peer.0)?.contacts.get(&peer.1)?.group
    }

    /// Client seconds at the last wall-clock time seen.
    fn secs_now(&self) -> f64 {
        self.last_t
    }

    /// Forgets epochs no longer read and the entries of groups left, once
    /// nothing waits to be sent into them. An old epoch is read up to its
    /// `until` period; past it, it is kept while a box of its reading time
    /// (as far back as gateways keep messages, `kept_from`) has not been
    /// answered, or was missed while away (`missed`).
    fn prune_groups(&mut self, period: u64, kept_from: u64, missed: Range<u64>) {
        let waiting: HashSet<Peer> = self.outbox.export().0.into_iter().map(|r| r.to).collect();
        for (me, mine) in &mut self.identities {
            let contacts = &mine.contacts;
            let unread = |ek: &[u8; 32], until: u64| {
                (!missed.is_empty() && missed.start <= until)
                    || contacts.get(ek).is_some_and(|c| {
                        c.inbound
                            .iter()
                            .any(|(k, s)| s.more && dropbox::slot_period(*k) <= until)
                    })
            };
            for g in mine.groups.values_mut() {
                g.retired.retain(|(ek, _, until)| {
                    *until >= period || (*until >= kept_from && unread(ek, *until))
                });
                g.ledger_follow_retired();
            }
            let live: HashSet<[u8; 32]> = mine
                .groups
                .values()
                .flat_map(|g| std::iter::once(g.epoch_key()).chain(g.retired.iter().map(|r| r.0)))
                .collect();
            mine.contacts.retain(|k, c| {
                c.group.is_none() || live.contains(k) || waiting.contains(&(*me, *k))
            });
        }
    }
}

// ---- persistence ----

/// Version of the snapshot format.
const SNAPSHOT_VERSION: u32 = 3;

/// Record keys: the snapshot, and the byte strings kept apart from it.
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// The last absence (first period missed, period back), kept apart from
/// the snapshot so that stores written before it still read.
const KEY_ABSENCE: &[u8] = b"absence";
/// Present once the groups were written by an SDK that signs group
/// control items (group format 2): what an older one took in unsigned is
/// dropped at the first restore without it.
const KEY_GROUPS_V2: &[u8] = b"groups/v2";
/// The groups left ([`ClientState::left`]).
const KEY_LEFT: &[u8] = b"groups/left";
/// Groups left that are remembered.
const MAX_LEFT: usize = 1024;
const PREFIX_OUT: &[u8] = b"out/";
const PREFIX_CHUNK: &[u8] = b"chunk/";
const PREFIX_MSG: &[u8] = b"msg/";
const PREFIX_DONE: &[u8] = b"done/";
/// What a received typed message is (kind, attachment): `meta/` || id.
const PREFIX_META: &[u8] = b"meta/";
/// An identity's Olm account: `olm/a/` || identity.
const PREFIX_ACCOUNT: &[u8] = b"olm/a/";
/// Olm sessions with a contact: `olm/s/` || identity || contact.
const PREFIX_SESSIONS: &[u8] = b"olm/s/";
/// A group of an identity: `group/` || identity || group id.
const PREFIX_GROUP: &[u8] = b"group/";
/// A group's membership ledger (`group::Ledger`), kept apart from the
/// group's record so that stores written before it still read:
/// `ledger/` || identity || group id.
const PREFIX_LEDGER: &[u8] = b"ledger/";

fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// The durable part of a [`ClientState`], without its large byte strings.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    /// The state's clock and the wall clock when it was taken.
    saved_at: f64,
    saved_unix_ms: u64,
    session: u64,
    primary: Option<[u8; 32]>,
    identities: Vec<IdentityRecord>,
    outbox: Vec<OutRecord<Peer>>,
    awaiting_read: Vec<MessageId>,
    partials: Vec<PartialRecord<Peer>>,
    sequencer: SequencerRecord<Peer>,
    /// Messages handed over, not yet taken by the application (bodies apart).
    inbox: Vec<(Peer, MessageId)>,
    /// Messages the application took and had not said it was done with.
    handed: Vec<(Peer, MessageId)>,
    receipts_due: Vec<(Peer, Vec<MessageId>)>,
    /// Undecryptable messages whose session reset has not left yet.
    resets_due: Vec<(Peer, Vec<MessageId>)>,
}

#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    secret: [u8; 32],
    contacts: Vec<ContactRecord>,
}

#[derive(Serialize, Deserialize)]
struct ContactRecord {
    public: [u8; 32],
    name: String,
    next_seq: u64,
    caught_up: bool,
    boxes: Vec<BoxRecord>,
}

/// What the store keeps of one group of an identity.
#[derive(Serialize, Deserialize)]
struct GroupFile {
    group: GroupRecord,
    /// The epochs' entries: epoch key, caught up, boxes.
    entries: Vec<([u8; 32], bool, Vec<BoxRecord>)>,
    /// Messages of this group waiting for the application (or taken and
    /// not done with).
    inbox: Vec<MessageId>,
}

fn box_record(period: u64, b: &BoxState) -> BoxRecord {
    BoxRecord {
        period,
        confirmed: b.confirmed,
        received: b.received.clone(),
        more: b.more,
        listed: b.listed.clone(),
        list_end: b.list_end,
        beyond: b.beyond,
    }
}

fn box_state(dropbox: Dropbox, b: BoxRecord) -> BoxState {
    let mut bs = BoxState::new(dropbox);
    bs.confirmed = b.confirmed;
    bs.received = b.received;
    bs.more = b.more;
    bs.listed = b.listed;
    bs.list_end = b.list_end;
    bs.beyond = b.beyond;
    // How many it held is not kept: a box that held any may have had its
    // share, so its successor is fetched too.
    if bs.confirmed > 0 || !bs.listed.is_empty() {
        bs.seen = dropbox::NEXT_BOX_AFTER;
    }
    bs
}

#[derive(Serialize, Deserialize)]
struct BoxRecord {
    /// The box's slot (its period, for box 0).
    period: u64,
    confirmed: u64,
    received: BTreeSet<u64>,
    more: bool,
    listed: BTreeSet<u64>,
    list_end: u64,
    beyond: bool,
}

/// What changed since the last [`ClientState::take_changes`]: records to
/// write (key, value) and keys to delete, to be applied together, atomically.
#[derive(Debug, Default)]
pub struct Changes {
    /// Records to write.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Records to delete.
    pub deletes: Vec<Vec<u8>>,
}

impl Changes {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    /// Bytes of record values to write.
    pub fn bytes(&self) -> usize {
        self.puts.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl ClientState {
    /// The last [`Self::take_changes`] was not written (the store failed):
    /// the next one hands out everything again.
    pub fn persist_failed(&mut self) {
        self.persisted = Persisted::default();
        self.dirty = true;
        for (me, mine) in &self.identities {
            self.olm_dirty.insert(key(PREFIX_ACCOUNT, &[me]));
            for (them, c) in &mine.contacts {
                if c.group.is_none() {
                    self.olm_dirty.insert(key(PREFIX_SESSIONS, &[me, them]));
                }
            }
        }
    }

    /// Whether a fetch about to leave confirms messages whose receipt is not
    /// persisted yet: a persistent driver writes [`Self::take_changes`]
    /// before it sends anything more.
    pub fn must_persist_before_sending(&self) -> bool {
        self.confirm_unpersisted
    }

    /// What changed since the last call, as records for a store (`None` if
    /// nothing did): a snapshot of the small state, and the byte strings
    /// kept apart from it (message bodies, fragments, held and received
    /// messages, ids of completed messages). Apply them in one transaction;
    /// then the state counts them as persisted.
    pub fn take_changes(&mut self, now: Now) -> Option<Changes> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        self.confirm_unpersisted = false;
        let mut ch = Changes::default();
        // Byte strings kept apart: what the components hold now.
        let mut blobs: HashMap<Vec<u8>, &[u8]> = HashMap::new();
        for id in self.outbox.ids() {
            if let Some(b) = self.outbox.body(&id) {
                blobs.insert(key(PREFIX_OUT, &[&id]), b);
            }
        }
        for ((me, them), id, i, c) in self.reassembly.chunks() {
            blobs.insert(key(PREFIX_CHUNK, &[me, them, id, &i.to_be_bytes()]), c);
        }
        for (id, b) in self.sequencer.held_bodies() {
            blobs.insert(key(PREFIX_MSG, &[id]), b);
        }
        let mut metas: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for m in self.received.iter().chain(&self.handed) {
            blobs.insert(key(PREFIX_MSG, &[&m.id]), &m.body);
            if m.kind.is_some()
                && let Ok(v) = postcard::to_stdvec(&(m.kind, &m.attachment))
            {
                metas.push((key(PREFIX_META, &[&m.id]), v));
            }
        }
        for (k, v) in &metas {
            blobs.insert(k.clone(), v);
        }
        for (k, v) in &blobs {
            if !self.persisted.blobs.contains(k) {
                ch.puts.push((k.clone(), v.to_vec()));
            }
        }
        for k in &self.persisted.blobs {
            if !blobs.contains_key(k) {
                ch.deletes.push(k.clone());
            }
        }
        let blob_keys: HashSet<Vec<u8>> = blobs.into_keys().collect();
        // Olm accounts and sessions: rewritten when they changed (they hold
        // the ratchet's secrets: an old copy must not linger).
        for k in std::mem::take(&mut self.olm_dirty) {
            match self.olm_record(&k) {
                Some(v) => ch.puts.push((k, v.to_vec())),
                None => ch.deletes.push(k),
            }
        }
        // Groups: each record rewritten when it changed.
        let groups = self.group_files();
        for (k, v) in &groups {
            if self.persisted.groups.get(k) != Some(v) {
                ch.puts.push((k.clone(), v.clone()));
            }
        }
        for k in self.persisted.groups.keys() {
            if !groups.contains_key(k) {
                ch.deletes.push(k.clone());
            }
        }
        self.persisted.groups = groups;
        // The last absence: an epoch learned after a restart is read back
        // to its start too.
        if self.absence != self.persisted.absence {
            match self.absence.and_then(|a| postcard::to_stdvec(&a).ok()) {
                Some(v) => ch.puts.push((KEY_ABSENCE.to_vec(), v)),
                None => ch.deletes.push(KEY_ABSENCE.to_vec()),
            }
            self.persisted.absence = self.absence;
        }
        if !self.persisted.groups_v2 {
            ch.puts.push((KEY_GROUPS_V2.to_vec(), vec![1]));
            self.persisted.groups_v2 = true;
        }
        let left: Vec<([u8; 32], [u8; 32])> = self.left.iter().copied().collect();
        if left != self.persisted.left {
            if let Ok(v) = postcard::to_stdvec(&left) {
                ch.puts.push((KEY_LEFT.to_vec(), v));
            }
            self.persisted.left = left;
        }
        let (partials, done) = self.reassembly.export();
        let done_now: HashSet<MessageId> = done.iter().copied().collect();
        for (n, id) in done.iter().enumerate() {
            if !self.persisted.done.contains(id) {
                ch.puts
                    .push((key(PREFIX_DONE, &[id]), (n as u64).to_be_bytes().to_vec()));
            }
        }
        for id in &self.persisted.done {
            if !done_now.contains(id) {
                ch.deletes.push(key(PREFIX_DONE, &[id]));
            }
        }
        // Written only when its content changed: the clock pair it carries
        // (any consistent pair maps its times to the wall clock) is left out
        // of the comparison, so an idle client writes nothing.
        let mut snapshot = self.snapshot(now, partials);
        let (at, unix_ms) = (snapshot.saved_at, snapshot.saved_unix_ms);
        (snapshot.saved_at, snapshot.saved_unix_ms) = (0.0, 0);
        let content = postcard::to_stdvec(&snapshot).unwrap_or_default();
        if content != self.persisted.snapshot {
            (snapshot.saved_at, snapshot.saved_unix_ms) = (at, unix_ms);
            let bytes = postcard::to_stdvec(&snapshot).unwrap_or_default();
            ch.puts.push((KEY_SNAPSHOT.to_vec(), bytes));
        }
        self.persisted.snapshot = content;
        self.persisted.blobs = blob_keys;
        self.persisted.done = done_now;
        self.persisted.confirmed = self
            .identities
            .iter()
            .flat_map(|(me, m)| {
                m.contacts.iter().flat_map(move |(them, c)| {
                    c.inbound
                        .iter()
                        .map(move |(p, b)| (((*me, *them), *p), b.confirmed))
                })
            })
            .collect();
        (!ch.is_empty()).then_some(ch)
    }

    /// Every group's record, by key.
    fn group_files(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut out = HashMap::new();
        for (me, mine) in &self.identities {
            for (gid, g) in &mine.groups {
                let mut eks = vec![g.epoch_key()];
                eks.extend(g.retired.iter().map(|r| r.0));
                let entries = eks
                    .iter()
                    .filter_map(|ek| {
                        let c = mine.contacts.get(ek)?;
                        let boxes = c.inbound.iter().map(|(p, b)| box_record(*p, b)).collect();
                        Some((*ek, c.caught_up, boxes))
                    })
                    .collect();
                let inbox = self
                    .received
                    .iter()
                    .chain(&self.handed)
                    .filter(|m| m.to.0 == *me && m.group == Some(GroupId(*gid)))
                    .map(|m| m.id)
                    .collect();
                let file = GroupFile {
                    group: g.record(),
                    entries,
                    inbox,
                };
                if let Ok(v) = postcard::to_stdvec(&file) {
                    out.insert(key(PREFIX_GROUP, &[me, gid]), v);
                }
                if let Ok(v) = postcard::to_stdvec(&g.ledger) {
                    out.insert(key(PREFIX_LEDGER, &[me, gid]), v);
                }
            }
        }
        out
    }

    /// The current value of an Olm record, `None` if its identity or
    /// contact is gone.
    fn olm_record(&self, k: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        if let Some(rest) = k.strip_prefix(PREFIX_ACCOUNT) {
            let me: [u8; 32] = rest.try_into().ok()?;
            return Some(self.identities.get(&me)?.olm.pickle());
        }
        let rest = k.strip_prefix(PREFIX_SESSIONS)?;
        let me: [u8; 32] = rest.get(..32)?.try_into().ok()?;
        let them: [u8; 32] = rest.get(32..)?.try_into().ok()?;
        let c = self.identities.get(&me)?.contacts.get(&them)?;
        Some(c.sessions.pickle())
    }

    fn snapshot(&self, now: Now, partials: Vec<PartialRecord<Peer>>) -> Snapshot {
        let (outbox, awaiting_read) = self.outbox.export();
        Snapshot {
            version: SNAPSHOT_VERSION,
            saved_at: self.secs(now),
            saved_unix_ms: now.unix_ms,
            session: self.session,
            primary: self.primary,
            identities: self
                .identities
                .values()
                .map(|m| IdentityRecord {
                    secret: m.secret.to_bytes(),
                    contacts: m
                        .contacts
                        .iter()
                        .filter(|(_, c)| c.group.is_none())
                        .map(|(them, c)| ContactRecord {
                            public: *them,
                            name: c.name.clone(),
                            next_seq: *m.next_seq.get(them).unwrap_or(&1),
                            caught_up: c.caught_up,
                            boxes: c
                                .inbound
                                .iter()
                                .map(|(period, b)| BoxRecord {
                                    period: *period,
                                    confirmed: b.confirmed,
                                    received: b.received.clone(),
                                    more: b.more,
                                    listed: b.listed.clone(),
                                    list_end: b.list_end,
                                    beyond: b.beyond,
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            outbox,
            awaiting_read,
            partials,
            sequencer: self.sequencer.export(),
            inbox: self
                .received
                .iter()
                .map(|m| ((m.to.0, m.from.0), m.id))
                .collect(),
            handed: self
                .handed
                .iter()
                .map(|m| ((m.to.0, m.from.0), m.id))
                .collect(),
            receipts_due: self
                .receipts_due
                .iter()
                .map(|(p, ids)| (*p, ids.clone()))
                .collect(),
            resets_due: self
                .resets_due
                .iter()
                .map(|(p, ids)| (*p, ids.clone()))
                .collect(),
        }
    }

    /// A client restored from the records a store holds (everything
    /// [`Self::take_changes`] ever handed out, applied in order), routing
    /// by `topology`. It goes on where the saved state stopped: messages
    /// not stored are sent again (their unacknowledged fragments), boxes
    /// are fetched from their confirmed seqs, partial messages complete,
    /// received messages not taken by the application wait for it. An
    /// empty set of records gives a fresh state.
    pub fn restore<R: CryptoRng + ?Sized>(
        cfg: ClientConfig,
        topology: TopologyDocument,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        now: Now,
        rng: &mut R,
    ) -> Result<Self, Error> {
        let mut st = Self::new(cfg, topology, now, rng)?;
        let mut snapshot = None;
        let mut out_bodies = HashMap::new();
        let mut chunks: HashMap<(Peer, MessageId), BTreeMap<u32, Vec<u8>>> = HashMap::new();
        let mut bodies: HashMap<MessageId, Vec<u8>> = HashMap::new();
        let mut done: Vec<(u64, MessageId)> = Vec::new();
        let mut accounts: HashMap<[u8; 32], Olm> = HashMap::new();
        let mut sessions: HashMap<Peer, Sessions> = HashMap::new();
        let mut blob_keys = HashSet::new();
        let mut group_files: Vec<([u8; 32], GroupFile)> = Vec::new();
        let mut ledgers: HashMap<([u8; 32], [u8; 32]), group::Ledger> = HashMap::new();
        let mut metas: HashMap<MessageId, (Option<ContentKind>, Option<Attachment>)> =
            HashMap::new();
        let corrupt = |what: &str| Error::Store(format!("unreadable {what} record"));
        for (k, v) in records {
            if k == KEY_SNAPSHOT {
                let s: Snapshot = postcard::from_bytes(&v).map_err(|_| corrupt("snapshot"))?;
                if s.version != SNAPSHOT_VERSION {
                    return Err(Error::Store(format!(
                        "snapshot version {} (this SDK reads {SNAPSHOT_VERSION})",
                        s.version
                    )));
                }
                snapshot = Some((s, v));
            } else if k == KEY_GROUPS_V2 {
                st.persisted.groups_v2 = true;
            } else if k == KEY_LEFT {
                let left: Vec<([u8; 32], [u8; 32])> =
                    postcard::from_bytes(&v).map_err(|_| corrupt("groups left"))?;
                st.left = left.iter().copied().collect();
                st.persisted.left = left;
            } else if k == KEY_ABSENCE {
                let a: (u64, u64) = postcard::from_bytes(&v).map_err(|_| corrupt("absence"))?;
                st.absence = Some(a);
                st.persisted.absence = Some(a);
            } else if let Some(rest) = k.strip_prefix(PREFIX_OUT) {
                let id: MessageId = rest.try_into().map_err(|_| corrupt("outbox"))?;
                blob_keys.insert(k.clone());
                out_bodies.insert(id, v);
            } else if let Some(rest) = k.strip_prefix(PREFIX_CHUNK) {
                if rest.len() != 32 + 32 + 16 + 4 {
                    return Err(corrupt("fragment"));
                }
                let me: [u8; 32] = rest[..32].try_into().map_err(|_| corrupt("fragment"))?;
                let them: [u8; 32] = rest[32..64].try_into().map_err(|_| corrupt("fragment"))?;
                let id: MessageId = rest[64..80].try_into().map_err(|_| corrupt("fragment"))?;
                let i = u32::from_be_bytes(rest[80..].try_into().map_err(|_| corrupt("fragment"))?);
                blob_keys.insert(k.clone());
                chunks.entry(((me, them), id)).or_default().insert(i, v);
            } else if let Some(rest) = k.strip_prefix(PREFIX_META) {
                let id: MessageId = rest.try_into().map_err(|_| corrupt("message type"))?;
                let m: (Option<ContentKind>, Option<Attachment>) =
                    postcard::from_bytes(&v).map_err(|_| corrupt("message type"))?;
                blob_keys.insert(k.clone());
                metas.insert(id, m);
            } else if let Some(rest) = k.strip_prefix(PREFIX_MSG) {
                let id: MessageId = rest.try_into().map_err(|_| corrupt("message"))?;
                blob_keys.insert(k.clone());
                bodies.insert(id, v);
            } else if let Some(rest) = k.strip_prefix(PREFIX_ACCOUNT) {
                let me: [u8; 32] = rest.try_into().map_err(|_| corrupt("Olm account"))?;
                accounts.insert(me, Olm::unpickle(&v)?);
            } else if let Some(rest) = k.strip_prefix(PREFIX_SESSIONS) {
                if rest.len() != 64 {
                    return Err(corrupt("Olm session"));
                }
                let me: [u8; 32] = rest[..32].try_into().map_err(|_| corrupt("Olm session"))?;
                let them: [u8; 32] = rest[32..].try_into().map_err(|_| corrupt("Olm session"))?;
                sessions.insert((me, them), Sessions::unpickle(&v)?);
            } else if let Some(rest) = k.strip_prefix(PREFIX_LEDGER) {
                if rest.len() != 64 {
                    return Err(corrupt("group ledger"));
                }
                let me: [u8; 32] = rest[..32].try_into().map_err(|_| corrupt("group ledger"))?;
                let gid: [u8; 32] = rest[32..].try_into().map_err(|_| corrupt("group ledger"))?;
                let l: group::Ledger =
                    postcard::from_bytes(&v).map_err(|_| corrupt("group ledger"))?;
                st.persisted.groups.insert(k.clone(), v.clone());
                ledgers.insert((me, gid), l);
            } else if let Some(rest) = k.strip_prefix(PREFIX_GROUP) {
                if rest.len() != 64 {
                    return Err(corrupt("group"));
                }
                let me: [u8; 32] = rest[..32].try_into().map_err(|_| corrupt("group"))?;
                let f: GroupFile = postcard::from_bytes(&v).map_err(|_| corrupt("group"))?;
                st.persisted.groups.insert(k.clone(), v.clone());
                group_files.push((me, f));
            } else if let Some(rest) = k.strip_prefix(PREFIX_DONE) {
                let id: MessageId = rest.try_into().map_err(|_| corrupt("done"))?;
                let n = u64::from_be_bytes(v.as_slice().try_into().map_err(|_| corrupt("done"))?);
                done.push((n, id));
            }
        }
        let Some((s, snapshot_bytes)) = snapshot else {
            return Ok(st);
        };
        // Times of the saved state, moved onto this state's clock: the wall
        // clock says how long it was away.
        let t = st.secs(now);
        let away = (now.unix_ms as f64 - s.saved_unix_ms as f64) / 1000.0;
        let shift = t - away - s.saved_at;
        st.session = s.session;
        st.primary = s.primary;
        // Closed since then: the first round probes every period since.
        st.probed_through = Some(dropbox::period_at(s.saved_unix_ms));
        for idr in s.identities {
            let secret = StaticSecret::from(idr.secret);
            let me = public_of(&secret);
            let mut mine = Me {
                secret,
                olm: accounts.remove(&me).ok_or_else(|| corrupt("Olm account"))?,
                contacts: BTreeMap::new(),
                next_seq: HashMap::new(),
                groups: BTreeMap::new(),
            };
            for c in idr.contacts {
                let pair =
                    PairSecret::derive(&mine.secret, &c.public).map_err(|_| corrupt("contact"))?;
                let mut inbound = BTreeMap::new();
                for b in c.boxes {
                    let (period, confirmed) = (b.period, b.confirmed);
                    let bs = box_state(pair.dropbox(&c.public, &me, period), b);
                    st.persisted
                        .confirmed
                        .insert(((me, c.public), period), confirmed);
                    inbound.insert(period, bs);
                }
                mine.next_seq.insert(c.public, c.next_seq);
                mine.contacts.insert(
                    c.public,
                    Contact {
                        name: c.name,
                        pair,
                        sessions: sessions
                            .remove(&(me, c.public))
                            .ok_or_else(|| corrupt("Olm session"))?,
                        inbound,
                        caught_up: c.caught_up,
                        group: None,
                    },
                );
            }
            st.identities.insert(me, mine);
        }
        let mut group_inbox: HashMap<MessageId, GroupId> = HashMap::new();
        for (me, f) in group_files {
            let Some(mine) = st.identities.get_mut(&me) else {
                continue;
            };
            let mut g = Group::from_record(f.group)?;
            if !st.persisted.groups_v2 {
                g.forget_unsigned();
            }
            g.restore_ledger(ledgers.remove(&(me, g.id)));
            let mut secrets: HashMap<[u8; 32], [u8; 32]> =
                g.retired.iter().map(|r| (r.0, r.1)).collect();
            secrets.insert(g.epoch_key(), g.secret());
            for (ek, caught_up, boxes) in f.entries {
                let Some(secret) = secrets.get(&ek) else {
                    continue;
                };
                Self::add_epoch_entry(mine, g.id, ek, *secret, caught_up);
                if let Some(c) = mine.contacts.get_mut(&ek) {
                    for b in boxes {
                        let d = c.inbound_box(&me, &ek, b.period);
                        c.inbound.insert(b.period, box_state(d, b));
                    }
                }
            }
            for id in f.inbox {
                group_inbox.insert(id, GroupId(g.id));
            }
            mine.groups.insert(g.id, g);
        }
        let records = s
            .outbox
            .into_iter()
            .filter_map(|r| Some((r.clone(), out_bodies.remove(&r.id)?)))
            .collect();
        let outbox_cfg = OutboxConfig {
            max_attempts: st.cfg.max_attempts.max(1),
            ttl: st.cfg.message_ttl.as_secs_f64(),
            max_bytes: st.cfg.max_outbox_bytes,
            ..OutboxConfig::default()
        };
        st.outbox = Outbox::restore(outbox_cfg, records, s.awaiting_read.clone(), shift)
            .map_err(|_| corrupt("outbox"))?;
        // The board shows what the outbox knows: queued or sent, or stored
        // and waiting to be read.
        for id in &s.awaiting_read {
            st.statuses.set(*id, Status::Stored);
        }
        let partials = s
            .partials
            .into_iter()
            .map(|p| {
                let c = chunks.remove(&(p.from, p.msg_id)).unwrap_or_default();
                (p, c)
            })
            .collect();
        done.sort_unstable();
        let done_ids: Vec<MessageId> = done.into_iter().map(|(_, id)| id).collect();
        st.persisted.done = done_ids.iter().copied().collect();
        st.reassembly = Reassembler::restore(
            st.cfg.max_reassembly_bytes,
            st.cfg.message_ttl.as_secs_f64(),
            partials,
            done_ids,
            shift,
        );
        let held_ids: HashSet<MessageId> = s.sequencer.held.iter().map(|h| h.msg_id).collect();
        let held_bodies = bodies
            .iter()
            .filter(|(id, _)| held_ids.contains(*id))
            .map(|(id, b)| (*id, b.clone()))
            .collect();
        st.sequencer = Sequencer::restore(
            st.cfg.reorder_hold.as_secs_f64(),
            st.cfg.reorder_settle.as_secs_f64(),
            10_000,
            s.sequencer,
            held_bodies,
            shift,
        );
        // Taken but not done with: first, and marked, so that the
        // application can check its own record.
        let handed = s.handed.into_iter().map(|p| (p, true));
        for (((me, them), id), redelivered) in handed.chain(s.inbox.into_iter().map(|p| (p, false)))
        {
            if let Some(body) = bodies.remove(&id) {
                let (kind, attachment) = metas.remove(&id).unwrap_or((None, None));
                st.received.push_back(Received {
                    to: ContactId(me),
                    from: ContactId(them),
                    id,
                    body,
                    redelivered,
                    group: group_inbox.get(&id).copied(),
                    kind,
                    attachment,
                });
            }
        }
        st.receipts_due = s.receipts_due.into_iter().collect();
        st.resets_due = s.resets_due.into_iter().collect();
        st.persisted.snapshot = snapshot_bytes;
        st.persisted.blobs = blob_keys;
        // The next take writes whatever the restore dropped.
        st.dirty = true;
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(b.map.len() <= StatusBoard::CAP);
        assert_eq!(b.map.len(), b.order.len());
    }

    /// A topology of three mix nodes and one gateway for `epoch` of a
    /// schedule of 10 s epochs from zero (keys at random: nothing is peeled).
    fn topology(epoch: u64) -> TopologyDocument {
        let key = |i: u8| PublicKey::from(&StaticSecret::from([i; 32])).to_bytes();
        let mut nodes: Vec<TopologyNode> = (1..=3u8)
            .map(|layer| TopologyNode {
                identity: [layer; 32],
                role: protocol::topology::Role::Mix,
                address: format!("127.0.0.1:{}", 1000 + u16::from(layer)),
                client_address: None,
                sphinx_key: key(layer),
                layer,
            })
            .collect();
        nodes.push(TopologyNode {
            identity: [9; 32],
            role: protocol::topology::Role::Gateway,
            address: "127.0.0.1:2000".into(),
            client_address: Some("127.0.0.1:2001".into()),
            sphinx_key: key(9),
            layer: 0,
        });
        let schedule = protocol::epoch::EpochSchedule::new(0, 10_000).unwrap();
        TopologyDocument {
            epoch,
            revision: 1,
            schedule,
            valid_from_ms: schedule.start_ms(epoch),
            valid_until_ms: schedule.start_ms(epoch + 1),
            params: protocol::topology::NetworkParams {
                mix_delay_mean_ms: 10,
                max_delay_ms: 100,
                lambda_payload: 50.0,
                ..Default::default()
            },
            nodes,
        }
    }

    /// Once the nodes have erased the keys of the topology held (the
    /// directory unreachable for longer than they live), fragments and
    /// fetches wait: payload ticks send drop cover, no attempt is used,
    /// nothing fails. A new topology lets them go.
    #[test]
    fn fragments_and_fetches_wait_while_the_topology_keys_are_gone() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cfg = ClientConfig::new("http://127.0.0.1:1", &hex::encode([1u8; 32])).unwrap();
        let doc = topology(100);
        let until = protocol::clock::keys_usable_until(&doc);
        // Epochs of 10 s: the previous key is kept one epoch at most.
        assert_eq!(until, doc.valid_until_ms + 10_000);
        let at = Instant::now();
        let start = Now {
            at,
            unix_ms: doc.valid_from_ms,
        };
        let (mut st, me, c) = with_contact(&cfg, &doc, start, &mut rng);
        // Run the stream for `secs` from `from`, in 10 ms steps.
        let run = |st: &mut ClientState, from: Now, secs: u64| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(2);
            for i in 0..secs * 100 {
                let t = from.after(Duration::from_millis(i * 10));
                st.handle_timeout(t);
                while st.poll_transmit(t, &mut rng).is_some() {}
            }
        };
        // Past the keys' end: the message and the fetches wait.
        let late = start.after(Duration::from_millis(until + 1 - start.unix_ms));
        assert!(!st.topology_usable(late));
        let id = st.send(late, &me, &c, b"hello", &mut rng).unwrap();
        run(&mut st, late, 5);
        let held = st.cover_stats();
        assert_eq!((held.real, held.fetches), (0, 0), "{held:?}");
        assert!(held.held_ticks > 100, "{held:?}");
        assert!(held.drop_cover > 100, "{held:?}");
        assert_eq!(st.status(&id), Some(Status::Queued));
        // A topology of a later epoch comes: the fragment and the fetches go.
        let later = late.after(Duration::from_secs(5));
        let newer = topology(later.unix_ms / 10_000);
        st.set_topology(newer, later);
        assert!(st.topology_usable(later));
        run(&mut st, later, 2);
        let after = st.cover_stats();
        assert!(after.real >= 1, "{after:?}");
        assert!(after.fetches >= 1, "{after:?}");
        assert_eq!(after.held_ticks, held.held_ticks);
        assert!(!st.status(&id).unwrap().is_failure());
    }

    /// A typed message received and not yet taken by the application (or
    /// taken and not done with) comes back after a restore with its kind
    /// and metadata, as well as its data.
    #[test]
    fn received_types_survive_a_restore() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let cfg = ClientConfig::new("http://127.0.0.1:1", &hex::encode([1u8; 32])).unwrap();
        let doc = topology(100);
        let start = Now {
            at: Instant::now(),
            unix_ms: doc.valid_from_ms,
        };
        let mut st = ClientState::new(cfg.clone(), doc.clone(), start, &mut rng).unwrap();
        let me = st.add_identity(StaticSecret::from([21; 32]));
        let meta = Attachment {
            name: "note.ogg".into(),
            mime: "audio/ogg".into(),
            size: 3,
            duration_ms: 4_000,
            ..Attachment::default()
        };
        for (i, kind) in [(1u8, Some(ContentKind::Audio)), (2, None)] {
            st.received.push_back(Received {
                to: me,
                from: ContactId([9; 32]),
                id: [i; 16],
                body: vec![i; 3],
                redelivered: false,
                group: None,
                kind,
                attachment: kind.map(|_| meta.clone()),
            });
        }
        let taken = st.poll_received().unwrap();
        assert_eq!(taken.kind, Some(ContentKind::Audio));
        let ch = st.take_changes(start).unwrap();
        let mut r = ClientState::restore(cfg, doc, ch.puts, start, &mut rng).unwrap();
        let again = r.poll_received().unwrap();
        assert!(again.redelivered);
        assert_eq!(
            (again.kind, again.attachment.as_ref()),
            (Some(ContentKind::Audio), Some(&meta))
        );
        let plain = r.poll_received().unwrap();
        assert_eq!(
            (plain.kind, plain.attachment, plain.body),
            (None, None, vec![2; 3])
        );
    }

    /// A client state with one identity and one contact (made by another
    /// state's invite): the state, my identity, the contact.
    fn with_contact(
        cfg: &ClientConfig,
        doc: &TopologyDocument,
        start: Now,
        rng: &mut rand::rngs::StdRng,
    ) -> (ClientState, ContactId, ContactId) {
        let mut other = ClientState::new(cfg.clone(), doc.clone(), start, rng).unwrap();
        let them = other.add_identity(StaticSecret::from([22; 32]));
        let invite = other.invite(&them, "them").unwrap();
        let mut st = ClientState::new(cfg.clone(), doc.clone(), start, rng).unwrap();
        let me = st.add_identity(StaticSecret::from([21; 32]));
        let c = st.add_contact(&me, &invite).unwrap();
        (st, me, c)
    }

    /// The periods a fetch round probes, drained.
    fn probed(st: &mut ClientState) -> BTreeSet<u64> {
        st.fetches
            .drain(..)
            .filter(|f| f.kind == FetchKind::Probe)
            .map(|f| dropbox::slot_period(f.period))
            .collect()
    }

    /// A device asleep for hours, or a client closed and opened again,
    /// probes every period it missed (within `catch_up_periods`), not only
    /// the current and previous one: messages written in the hours between
    /// would otherwise never be fetched.
    #[test]
    fn every_period_since_the_last_round_is_probed_after_a_gap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let cfg = ClientConfig::new("http://127.0.0.1:1", &hex::encode([1u8; 32])).unwrap();
        let doc = topology(100);
        let p = 490_000; // an hour period of 2025
        let start = Now {
            at: Instant::now(),
            unix_ms: p * dropbox::PERIOD_MS + 600_000,
        };
        let at = |h: u64| start.after(Duration::from_secs(h * 3600));
        let (mut st, _, _) = with_contact(&cfg, &doc, start, &mut rng);
        let catch_up = cfg.catch_up_periods;
        assert_eq!(catch_up, 24);
        // Every box answered "nothing more", but the one of period `except`.
        let answer = |st: &mut ClientState, except: Option<u64>| {
            for mine in st.identities.values_mut() {
                for c in mine.contacts.values_mut() {
                    for (k, b) in c.inbound.iter_mut() {
                        if Some(dropbox::slot_period(*k)) != except {
                            b.more = false;
                        }
                    }
                }
            }
        };

        // A new contact: the whole catch-up window once.
        st.queue_fetch_round(start);
        assert_eq!(probed(&mut st), (p - catch_up + 1..=p).collect());
        // Then the current and previous period.
        st.queue_fetch_round(start.after(Duration::from_secs(60)));
        assert_eq!(probed(&mut st), BTreeSet::from([p - 1, p]));
        // Asleep five hours: every hour since the last round.
        st.queue_fetch_round(at(5));
        assert_eq!(probed(&mut st), (p - 1..=p + 5).collect());
        // Unanswered, the hours missed are asked again at the next round.
        st.queue_fetch_round(at(5));
        assert_eq!(probed(&mut st), (p - 1..=p + 5).collect());
        answer(&mut st, None);
        // Asleep 100 hours, more than `catch_up_periods`: every hour since.
        st.queue_fetch_round(at(105));
        assert_eq!(probed(&mut st), (p + 4..=p + 105).collect());
        answer(&mut st, None);
        // Asleep 300 hours: as far back as gateways keep messages, no more.
        let keep = OFFLINE_CATCH_UP_PERIODS + 1;
        st.queue_fetch_round(at(405));
        assert_eq!(probed(&mut st), (p + 405 - keep + 1..=p + 405).collect());
        answer(&mut st, None);
        // A clock set back: the current and previous period only.
        st.queue_fetch_round(at(100));
        assert_eq!(probed(&mut st), BTreeSet::from([p + 99, p + 100]));
        // Back after three hours with the fetch queue full: nothing fits,
        // but the hours missed keep their boxes' states and are probed
        // once there is room.
        let filler = Fetch {
            peer: ([0; 32], [0; 32]),
            period: 0,
            kind: FetchKind::Window,
        };
        st.fetches.extend(std::iter::repeat_n(filler, MAX_PENDING));
        st.queue_fetch_round(at(103));
        assert!(st.fetches.iter().all(|f| *f == filler));
        st.fetches.clear();
        st.queue_fetch_round(at(103));
        assert_eq!(probed(&mut st), (p + 99..=p + 103).collect());

        // Saved at hour 105 with hour 103's box not answered yet, opened
        // again at hour 110: that box and every hour since the save.
        st.queue_fetch_round(at(105));
        probed(&mut st);
        answer(&mut st, Some(p + 103));
        let ch = st.take_changes(at(105)).unwrap();
        let mut r = ClientState::restore(cfg, doc, ch.puts, at(110), &mut rng).unwrap();
        r.queue_fetch_round(at(110));
        assert_eq!(probed(&mut r), (p + 103..=p + 110).collect());
    }

    /// Back after 100 hours, a round queues a probe for every hour missed
    /// (oldest first) and for the current and previous hour. Those two
    /// leave among the first three fetches, not after the hundred; the
    /// hours missed take every other fetch until they are through, and
    /// none is lost.
    #[test]
    fn new_boxes_do_not_wait_behind_the_hours_missed() {
        let (mut st, _, _, _, start) = ten_past_hour_p(8);
        let p = P;
        let at = |h: u64| start.after(Duration::from_secs(h * 3600));
        st.queue_fetch_round(start);
        answer_all(&mut st);
        st.fetches.clear();
        st.queue_fetch_round(at(100));
        let queue: Vec<u64> = st
            .fetches
            .iter()
            .map(|f| dropbox::slot_period(f.period))
            .collect();
        let queued: BTreeSet<u64> = queue.iter().copied().collect();
        assert_eq!(queued, (p - 1..=p + 100).collect());
        assert_eq!(queue.len(), queued.len());
        // In the queue, the hours missed come first.
        assert_eq!(queue[..2], [p - 1, p]);
        let mut order = Vec::new();
        while let Some(f) = st.next_fetch(at(100)) {
            order.push(dropbox::slot_period(f.period));
        }
        let pos = |q: u64| order.iter().position(|x| *x == q).unwrap();
        assert!(pos(p + 100) < 3 && pos(p + 99) < 3, "{:?}", &order[..4]);
        // Every other fetch is the front of the queue: the oldest hours.
        assert_eq!(order[1], p - 1);
        assert_eq!(order.len(), queued.len());
        assert_eq!(order.iter().copied().collect::<BTreeSet<u64>>(), queued);
    }

    /// An hour period of 2025, for tests that count periods.
    const P: u64 = 490_000;

    /// A client with one contact, ten minutes into period [`P`]: the
    /// client, its identity, the contact, its config and the time.
    fn ten_past_hour_p(seed: u64) -> (ClientState, ContactId, ContactId, ClientConfig, Now) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let cfg = ClientConfig::new("http://127.0.0.1:1", &hex::encode([1u8; 32])).unwrap();
        let start = Now {
            at: Instant::now(),
            unix_ms: P * dropbox::PERIOD_MS + 600_000,
        };
        let (st, me, c) = with_contact(&cfg, &topology(100), start, &mut rng);
        (st, me, c, cfg, start)
    }

    /// [`ten_past_hour_p`] in a group of the two of us (epoch 0, key
    /// returned), its first fetch round made and answered.
    fn in_a_group(
        seed: u64,
    ) -> (
        ClientState,
        ContactId,
        ContactId,
        ClientConfig,
        Now,
        [u8; 32],
    ) {
        let (mut st, me, c, cfg, start) = ten_past_hour_p(seed);
        let e0 = group_keys(&mut st, start, (me, c), group::OP_INVITE, 0, 8);
        st.queue_fetch_round(start);
        answer_all(&mut st);
        (st, me, c, cfg, start, e0)
    }

    /// Every box a fetch round left to answer, answered "nothing more".
    fn answer_all(st: &mut ClientState) {
        for mine in st.identities.values_mut() {
            for c in mine.contacts.values_mut() {
                for b in c.inbound.values_mut() {
                    b.more = false;
                }
            }
        }
    }

    /// The periods probed of the boxes of group epoch `ek`, drained.
    fn probed_epoch(st: &mut ClientState, ek: [u8; 32]) -> BTreeSet<u64> {
        let (ours, rest): (Vec<Fetch>, Vec<Fetch>) =
            st.fetches.drain(..).partition(|f| f.peer.1 == ek);
        st.fetches.extend(rest);
        ours.iter()
            .filter(|f| f.kind == FetchKind::Probe)
            .map(|f| dropbox::slot_period(f.period))
            .collect()
    }

    /// Group keys (`op`, `epoch`, `secret`) from contact `them`, for a group
    /// of the two of us, as they come out of the pairwise stream at `now`.
    fn group_keys(
        st: &mut ClientState,
        now: Now,
        (me, them): (ContactId, ContactId),
        op: u8,
        epoch: u32,
        secret: u8,
    ) -> [u8; 32] {
        let id = [7u8; 32];
        offer_group_keys(st, now, (me, them), op, epoch, secret);
        let g = &st.identities[&me.0].groups[&id];
        let ek = group::epoch_key(&id, epoch, &[secret; 32]);
        assert!(g.read_until(&ek).is_some(), "the keys were taken");
        ek
    }

    /// [`group_keys`], without asserting they were taken.
    fn offer_group_keys(
        st: &mut ClientState,
        now: Now,
        (me, them): (ContactId, ContactId),
        op: u8,
        epoch: u32,
        secret: u8,
    ) {
        let members = vec![(me.0, 0, "me".into()), (them.0, 0, "them".into())];
        offer_keys_listing(st, now, (me, them), op, (epoch, secret), members);
    }

    /// [`offer_group_keys`] listing `members` (key, epoch added, name).
    fn offer_keys_listing(
        st: &mut ClientState,
        now: Now,
        (me, them): (ContactId, ContactId),
        op: u8,
        (epoch, secret): (u32, u8),
        members: Vec<([u8; 32], u32, String)>,
    ) {
        let keys = GroupKeys {
            op,
            id: [7u8; 32],
            epoch,
            secret: zeroize::Zeroizing::new([secret; 32]),
            name: "g".into(),
            members,
        };
        st.unix_ms = now.unix_ms;
        st.on_group_keys(me.0, them.0, &keys.encode());
    }

    /// A member's "left" and "added" stay signed items that anyone holding
    /// the epoch's secret can post again, and items are read in any order.
    /// Neither undoes a later change: a left older than the member's
    /// last adding (it came back in a later epoch), an "added" of a member
    /// who left in that epoch, a new epoch's list from a member who had not
    /// read a left; also after a restore.
    #[test]
    fn replayed_or_late_membership_items_do_not_undo_later_changes() {
        let (mut st, me, c, cfg, start) = ten_past_hour_p(20);
        let gid = [7u8; 32];
        let x_secret = StaticSecret::from([23; 32]);
        let x = public_of(&x_secret);
        let c_secret = StaticSecret::from([22; 32]);
        let list = |sx: u32| {
            vec![
                (me.0, 0, "me".to_string()),
                (c.0, 0, "c".to_string()),
                (x, sx, "x".to_string()),
            ]
        };
        let is_member =
            |st: &ClientState| st.identities[&me.0].groups[&gid].members.contains_key(&x);
        let left = BoxItem::Left {
            sender: x,
            sig: [0; 64],
        };
        offer_keys_listing(&mut st, start, (me, c), group::OP_INVITE, (0, 8), list(0));
        let e0 = group::epoch_key(&gid, 0, &[8; 32]);
        assert!(is_member(&st));
        // X leaves in epoch 0. A list from a member who had not read that
        // (epoch 1, X added in 0) does not bring X back.
        read_control(&mut st, me, e0, &left.clone().sign(&x_secret, &e0), 1);
        assert!(!is_member(&st));
        offer_keys_listing(&mut st, start, (me, c), group::OP_REKEY, (1, 9), list(0));
        assert_eq!(st.identities[&me.0].groups[&gid].epoch, 1);
        assert!(!is_member(&st), "a stale list");
        // C invites X back: epoch 2, X added in it.
        offer_keys_listing(&mut st, start, (me, c), group::OP_REKEY, (2, 10), list(2));
        let e2 = group::epoch_key(&gid, 2, &[10; 32]);
        assert!(is_member(&st));
        // X's left of epoch 0, posted again to that (still read) box.
        read_control(&mut st, me, e0, &left.clone().sign(&x_secret, &e0), 2);
        assert!(is_member(&st), "an old left posted again");
        // X leaves in epoch 2; C's "added" of X in epoch 2, read late or
        // posted again, does not bring it back.
        read_control(&mut st, me, e2, &left.clone().sign(&x_secret, &e2), 3);
        assert!(!is_member(&st));
        let added = BoxItem::Added {
            sender: c.0,
            sig: [0; 64],
            member: x,
            name: "x".into(),
        };
        read_control(&mut st, me, e2, &added.clone().sign(&c_secret, &e2), 4);
        assert!(!is_member(&st), "an added from before the left");
        // Back again in epoch 3; then saved, restored, and the lefts of
        // epochs 0 and 2 posted again: X stays.
        offer_keys_listing(&mut st, start, (me, c), group::OP_REKEY, (3, 11), list(3));
        assert!(is_member(&st));
        let ch = st.take_changes(start).unwrap();
        assert!(ch.puts.iter().any(|(k, _)| k.starts_with(PREFIX_LEDGER)));
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        // A store from before the ledger: old epochs' numbers are found.
        let old: Vec<_> = ch
            .puts
            .iter()
            .filter(|(k, _)| !k.starts_with(PREFIX_LEDGER))
            .cloned()
            .collect();
        let r = ClientState::restore(cfg.clone(), topology(100), old, start, &mut rng).unwrap();
        let g = &r.identities[&me.0].groups[&gid];
        assert_eq!((g.epoch_of(&e0), g.epoch_of(&e2)), (Some(0), Some(2)));
        assert_eq!(g.ledger.since(&x), 0);
        let mut st = ClientState::restore(cfg, topology(100), ch.puts, start, &mut rng).unwrap();
        assert!(is_member(&st));
        for (n, ek) in [(5, e0), (6, e2)] {
            read_control(&mut st, me, ek, &left.clone().sign(&x_secret, &ek), n);
        }
        assert!(is_member(&st), "old lefts after a restore");
        // Its left of the epoch it came back in counts.
        let e3 = group::epoch_key(&gid, 3, &[11; 32]);
        read_control(&mut st, me, e3, &left.sign(&x_secret, &e3), 7);
        assert!(!is_member(&st));
    }

    /// A member one epoch behind posts a "left" of the old epoch and is
    /// then invited again (an "added" of someone still listed) in the
    /// current one. Read in either order, it ends a member: the added is
    /// later than the left. (An added of a member keeps its name.)
    #[test]
    fn a_left_and_a_later_added_agree_in_either_order() {
        for added_first in [true, false] {
            let (mut st, me, c, _, start) = ten_past_hour_p(23);
            let gid = [7u8; 32];
            let c_secret = StaticSecret::from([22; 32]);
            let x_secret = StaticSecret::from([23; 32]);
            let x = public_of(&x_secret);
            let list = vec![
                (me.0, 0, "me".to_string()),
                (c.0, 0, "c".to_string()),
                (x, 0, "x".to_string()),
            ];
            offer_keys_listing(
                &mut st,
                start,
                (me, c),
                group::OP_INVITE,
                (0, 8),
                list.clone(),
            );
            offer_keys_listing(&mut st, start, (me, c), group::OP_REKEY, (1, 9), list);
            let e0 = group::epoch_key(&gid, 0, &[8; 32]);
            let e1 = group::epoch_key(&gid, 1, &[9; 32]);
            assert!(st.identities[&me.0].groups[&gid].members.contains_key(&x));
            let added = |n: &str| BoxItem::Added {
                sender: c.0,
                sig: [0; 64],
                member: x,
                name: n.into(),
            };
            let left = BoxItem::Left {
                sender: x,
                sig: [0; 64],
            }
            .sign(&x_secret, &e0);
            let again = added("renamed").sign(&c_secret, &e1);
            if added_first {
                read_control(&mut st, me, e1, &again, 2);
                read_control(&mut st, me, e0, &left, 3);
            } else {
                read_control(&mut st, me, e0, &left, 2);
                read_control(&mut st, me, e1, &again, 3);
            }
            let g = &st.identities[&me.0].groups[&gid];
            assert!(g.members.contains_key(&x), "added first: {added_first}");
            assert_eq!(g.ledger.since(&x), 1);
            assert_eq!(g.members[&x], if added_first { "x" } else { "renamed" });
        }
    }

    /// Inviting back a member who left in the current epoch makes a new
    /// epoch (its keys to every member, the invite to the member), so its
    /// signed left of the old epoch no longer counts.
    #[test]
    fn a_member_who_left_is_invited_back_into_a_new_epoch() {
        let (mut st, me, c, _, start) = ten_past_hour_p(22);
        let gid = GroupId([7u8; 32]);
        let e0 = group_keys(&mut st, start, (me, c), group::OP_INVITE, 0, 8);
        let c_secret = StaticSecret::from([22; 32]);
        let left = BoxItem::Left {
            sender: c.0,
            sig: [0; 64],
        }
        .sign(&c_secret, &e0);
        read_control(&mut st, me, e0, &left, 1);
        let members = |st: &ClientState| st.group_members(&me, &gid).unwrap();
        assert_eq!(members(&st).0, 0);
        assert!(!members(&st).1.iter().any(|m| m.0 == c));
        st.events.clear();
        st.invite_to_group(start, &me, &gid, &c).unwrap();
        assert_eq!(members(&st).0, 1, "a new epoch");
        assert!(members(&st).1.iter().any(|m| m.0 == c));
        assert!(st.events.iter().any(|e| matches!(
            e,
            Event::Group {
                change: GroupChange::Rekeyed { epoch: 1, .. },
                ..
            }
        )));
        assert_eq!(st.identities[&me.0].groups[&gid.0].ledger.since(&c.0), 1);
        read_control(&mut st, me, e0, &left, 2);
        assert!(
            members(&st).1.iter().any(|m| m.0 == c),
            "its old left again"
        );
        // Invited while a member in good standing: the same epoch.
        st.invite_to_group(start, &me, &gid, &c).unwrap();
        assert_eq!(members(&st).0, 1);
    }

    /// A member who left is not made a member again by a new epoch's keys
    /// from a member who had not read its "left" yet (they may come
    /// after it left), also after a restore; an invitation makes it one.
    #[test]
    fn a_group_left_is_not_rejoined_by_a_new_epoch() {
        let (mut st, me, c, cfg, start) = ten_past_hour_p(18);
        let gid = [7u8; 32];
        group_keys(&mut st, start, (me, c), group::OP_INVITE, 0, 8);
        st.leave_group(start, &me, &GroupId(gid)).unwrap();
        let ch = st.take_changes(start).unwrap();
        assert!(ch.puts.iter().any(|(k, _)| k == KEY_LEFT));
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let mut st = ClientState::restore(cfg, topology(100), ch.puts, start, &mut rng).unwrap();
        offer_group_keys(&mut st, start, (me, c), group::OP_REKEY, 1, 9);
        assert!(!st.identities[&me.0].groups.contains_key(&gid));
        offer_group_keys(&mut st, start, (me, c), group::OP_INVITE, 1, 9);
        assert!(st.identities[&me.0].groups.contains_key(&gid));
    }

    /// Control item `item` (the `n`th) read by `me` from the box of epoch
    /// `ek` of the group `group_keys` makes.
    fn read_control(st: &mut ClientState, me: ContactId, ek: [u8; 32], item: &BoxItem, n: u8) {
        let m = Complete {
            from: (me.0, ek),
            kind: Kind::Control,
            msg_id: [n; 16],
            session: 0,
            seq: n.into(),
            body: item.encode(),
        };
        st.on_group_box((me.0, ek), [7; 32], m);
    }

    /// A group's control items count only when signed by their sender's
    /// identity for the epoch's box: "added" in a member's name but signed
    /// by someone else (another member, say) changes nothing; signed by the
    /// member, it adds.
    #[test]
    fn group_control_items_count_only_signed_by_their_sender() {
        let (mut st, me, c, _, start) = ten_past_hour_p(14);
        let ek = group_keys(&mut st, start, (me, c), group::OP_INVITE, 0, 8);
        let gid = [7u8; 32];
        let newcomer = [77u8; 32];
        let added = BoxItem::Added {
            sender: c.0,
            sig: [0; 64],
            member: newcomer,
            name: "x".into(),
        };
        let deliver = |st: &mut ClientState, item: BoxItem, n: u8| {
            read_control(st, me, ek, &item, n);
            st.identities[&me.0].groups[&gid]
                .members
                .contains_key(&newcomer)
        };
        let forger = StaticSecret::from([23; 32]);
        assert!(!deliver(&mut st, added.clone(), 1), "unsigned");
        assert!(
            !deliver(&mut st, added.clone().sign(&forger, &ek), 2),
            "signed by another key"
        );
        assert!(
            !deliver(
                &mut st,
                added.clone().sign(&StaticSecret::from([22; 32]), &[1; 32]),
                3
            ),
            "signed for another box"
        );
        // The contact's identity secret (`with_contact`): taken.
        let theirs = StaticSecret::from([22; 32]);
        assert!(deliver(&mut st, added.clone().sign(&theirs, &ek), 4));
        // Their signed "left": they are no longer a member, and the
        // newcomer stays.
        let left = BoxItem::Left {
            sender: c.0,
            sig: [0; 64],
        };
        let members = |st: &ClientState| st.identities[&me.0].groups[&gid].members.clone();
        deliver(&mut st, left.clone().sign(&forger, &ek), 5);
        assert!(
            members(&st).contains_key(&c.0),
            "a forged left removes no one"
        );
        deliver(&mut st, left.sign(&theirs, &ek), 6);
        assert!(!members(&st).contains_key(&c.0));
    }

    /// An "added" counts only from the current epoch's box: a removed
    /// member, who still holds an old epoch's secret and reads its box,
    /// cannot add itself back with a signed "added" copied there. A "left"
    /// counts from an old epoch's box too (its sender had not heard of the
    /// new epoch).
    #[test]
    fn membership_news_from_an_old_epochs_box_is_ignored() {
        let (mut st, me, c, _, start) = ten_past_hour_p(15);
        let gid = [7u8; 32];
        let e0 = group_keys(&mut st, start, (me, c), group::OP_INVITE, 0, 8);
        let e1 = group_keys(&mut st, start, (me, c), group::OP_REKEY, 1, 9);
        assert_ne!(e0, e1);
        let theirs = StaticSecret::from([22; 32]);
        let back = [78u8; 32];
        let added = BoxItem::Added {
            sender: c.0,
            sig: [0; 64],
            member: back,
            name: "back".into(),
        };
        let deliver = |st: &mut ClientState, ek: [u8; 32], n: u8| {
            read_control(st, me, ek, &added.clone().sign(&theirs, &ek), n);
            st.identities[&me.0].groups[&gid]
                .members
                .contains_key(&back)
        };
        assert!(!deliver(&mut st, e0, 1), "from the old epoch's box");
        assert!(deliver(&mut st, e1, 2), "from the current one");
        let left = BoxItem::Left {
            sender: c.0,
            sig: [0; 64],
        };
        read_control(&mut st, me, e0, &left.sign(&theirs, &e0), 3);
        assert!(
            !st.identities[&me.0].groups[&gid].members.contains_key(&c.0),
            "a left from the old epoch's box counts"
        );
    }

    /// Groups saved by an SDK before group format 2 (no `groups/v2`
    /// record) lose what it took in unsigned at the first restore, and
    /// announce again; saved since, they keep it.
    #[test]
    fn groups_saved_before_signed_controls_drop_what_was_unsigned() {
        let (mut st, me, c, cfg, start) = ten_past_hour_p(16);
        let gid = [7u8; 32];
        group_keys(&mut st, start, (me, c), group::OP_INVITE, 0, 8);
        st.queue_fetch_round(start);
        assert!(st.identities[&me.0].groups[&gid].announced.is_some());
        let ch = st.take_changes(start).unwrap();
        assert!(ch.puts.iter().any(|(k, _)| k == KEY_GROUPS_V2));
        let announced = |puts: Vec<(Vec<u8>, Vec<u8>)>| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(17);
            let r =
                ClientState::restore(cfg.clone(), topology(100), puts, start, &mut rng).unwrap();
            r.identities[&me.0].groups[&gid].announced
        };
        assert!(announced(ch.puts.clone()).is_some());
        let old: Vec<_> = ch
            .puts
            .into_iter()
            .filter(|(k, _)| k != KEY_GROUPS_V2)
            .collect();
        assert_eq!(announced(old), None);
    }

    /// An absence that begins within two hours of the end of the last (a
    /// phone asleep again while it caught up) extends it: keys read after
    /// the second are read back to the start of the first. One that
    /// begins later is an absence of its own.
    #[test]
    fn an_absence_soon_after_another_extends_it() {
        let (mut st, me, c, _, start) = ten_past_hour_p(11);
        let p = P;
        let at = |h: u64| start.after(Duration::from_secs(h * 3600));
        group_keys(&mut st, start, (me, c), group::OP_INVITE, 0, 8);
        st.queue_fetch_round(start);
        // Away 0 → 30, back one hour, away 31 → 40.
        st.queue_fetch_round(at(30));
        st.queue_fetch_round(at(31));
        st.queue_fetch_round(at(40));
        assert_eq!(st.absence, Some((p - 1, p + 40)));
        // Back ten hours (a round each hour), then away 50 → 60: its own.
        for h in 41..=50 {
            st.queue_fetch_round(at(h));
        }
        st.queue_fetch_round(at(60));
        assert_eq!(st.absence, Some((p + 49, p + 60)));
        st.fetches.clear();
        let e1 = group_keys(&mut st, at(60), (me, c), group::OP_REKEY, 1, 9);
        st.queue_fetch_round(at(60));
        assert_eq!(probed_epoch(&mut st, e1), (p + 37..=p + 60).collect());
    }

    /// Back from 29 hours away, a member reads the keys of epoch 2 before
    /// those of epoch 1 (they came from different contacts, whose boxes
    /// are read in any order). Epoch 1 was written to meanwhile: it is
    /// read back like the newest, not ignored as older keys.
    #[test]
    fn an_epoch_skipped_over_is_read_when_its_keys_come_late() {
        let (mut st, me, c, _, start, _) = in_a_group(9);
        let p = P;
        let at = |h: u64| start.after(Duration::from_secs(h * 3600));
        st.fetches.clear();
        st.queue_fetch_round(at(30));
        st.fetches.clear();
        let e2 = group_keys(&mut st, at(30), (me, c), group::OP_REKEY, 2, 10);
        let e1 = group_keys(&mut st, at(30), (me, c), group::OP_REKEY, 1, 9);
        assert_eq!(st.identities[&me.0].groups[&[7u8; 32]].epoch, 2);
        st.queue_fetch_round(at(30));
        assert_eq!(probed_epoch(&mut st, e1), (p - 1..=p + 30).collect());
        assert_eq!(probed_epoch(&mut st, e2), (p - 1..=p + 30).collect());
    }

    /// When the reply keys of fetches in flight fill their table, the
    /// queued fetches wait for room: they were taken from the queue and
    /// dropped, one after another.
    #[test]
    fn fetches_wait_while_the_reply_keys_are_full() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let cfg = ClientConfig::new("http://127.0.0.1:1", &hex::encode([1u8; 32])).unwrap();
        let doc = topology(100);
        let start = Now {
            at: Instant::now(),
            unix_ms: doc.valid_from_ms,
        };
        let (mut st, me, c) = with_contact(&cfg, &doc, start, &mut rng);
        st.queue_fetch_round(start);
        let period = dropbox::period_at(start.unix_ms);
        for back in 1..4 {
            st.fetches.push_back(Fetch {
                peer: (me.0, c.0),
                period: period.saturating_sub(back),
                kind: FetchKind::Probe,
            });
        }
        let queued = st.fetches.len();
        assert!(queued >= 4, "{queued}");
        let (_, _, key, _) = surb_home(&st.topology, &st.entry, &st.address, &mut rng).unwrap();
        for i in 0..MAX_PENDING {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let pending = Pending {
                key: key.clone(),
                peer: (me.0, c.0),
                period: 0,
                cursor: 0,
                known: 0,
                created: st.secs(start),
            };
            st.pending.insert(id, pending);
        }
        assert!(st.next_fetch_frame(start, &mut rng).is_none());
        assert_eq!(st.fetches.len(), queued);
        // Without cover, the driver sleeps until the oldest key expires
        // rather than spinning (fetches are otherwise due at once).
        st.cfg.dangerous.set_no_cover(true);
        st.next_round = st.secs(start) + 1000.0;
        assert!(st.poll_timeout() >= start.at + Duration::from_secs_f64(PENDING_TTL));
        // Room again: the first goes.
        st.pending.clear();
        assert!(st.next_fetch_frame(start, &mut rng).is_some());
        assert_eq!(st.fetches.len(), queued - 1);
    }

    /// A member away for a day and more learns of the group's new epoch
    /// only when it is back (the keys wait in a contact's box of the hours
    /// missed), while the others wrote to the new epoch's boxes all along:
    /// those boxes are read back to the start of the absence, not only the
    /// current and previous hour.
    #[test]
    fn an_epoch_learned_after_an_absence_is_read_back_to_its_start() {
        let (mut st, me, c, cfg, start) = ten_past_hour_p(6);
        let p = P;
        let at = |h: u64| start.after(Duration::from_secs(h * 3600));
        let catch_up = cfg.catch_up_periods;

        // Joined: the epoch's last `catch_up_periods` boxes.
        let e0 = group_keys(&mut st, start, (me, c), group::OP_INVITE, 0, 8);
        st.queue_fetch_round(start);
        assert_eq!(probed_epoch(&mut st, e0), (p - catch_up + 1..=p).collect());
        answer_all(&mut st);
        st.queue_fetch_round(at(1));
        st.fetches.clear();

        // Away from hour 1 to hour 30. The new epoch's keys come from the
        // pairwise boxes caught up on.
        st.queue_fetch_round(at(30));
        st.fetches.clear();
        let e1 = group_keys(&mut st, at(30), (me, c), group::OP_REKEY, 1, 9);
        st.queue_fetch_round(at(30));
        assert_eq!(probed_epoch(&mut st, e1), (p..=p + 30).collect());
        // Unanswered, they are asked again.
        st.queue_fetch_round(at(30));
        assert_eq!(probed_epoch(&mut st, e1), (p..=p + 30).collect());
        answer_all(&mut st);

        // Back for longer than `catch_up_periods` (a round every hour): a
        // new epoch is read `catch_up_periods` back, as a group joined.
        for h in 31..=56 {
            st.queue_fetch_round(at(h));
            answer_all(&mut st);
            st.fetches.clear();
        }
        let e2 = group_keys(&mut st, at(56), (me, c), group::OP_REKEY, 2, 10);
        st.queue_fetch_round(at(56));
        assert_eq!(
            probed_epoch(&mut st, e2),
            (p + 56 - catch_up + 1..=p + 56).collect()
        );
    }

    /// The last absence is saved with the store: a client back from 30
    /// hours away, closed for an hour and opened again, still reads an
    /// epoch whose keys it finds only then back to the absence's start,
    /// not `catch_up_periods`.
    #[test]
    fn an_absence_survives_a_restore() {
        let (mut st, me, c, cfg, start, _) = in_a_group(12);
        let p = P;
        let at = |h: u64| start.after(Duration::from_secs(h * 3600));
        st.queue_fetch_round(at(1));
        // Away from hour 1 to hour 30, then saved and closed.
        st.queue_fetch_round(at(30));
        assert_eq!(st.absence, Some((p, p + 30)));
        let ch = st.take_changes(at(30)).unwrap();
        assert!(ch.puts.iter().any(|(k, _)| k == KEY_ABSENCE));
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut r = ClientState::restore(cfg, topology(100), ch.puts, at(31), &mut rng).unwrap();
        assert_eq!(r.absence, Some((p, p + 30)));
        r.queue_fetch_round(at(31));
        r.fetches.clear();
        let e1 = group_keys(&mut r, at(31), (me, c), group::OP_REKEY, 1, 9);
        r.queue_fetch_round(at(31));
        assert_eq!(probed_epoch(&mut r, e1), (p..=p + 31).collect());
        // Written once: an unchanged absence is not written again.
        let ch = r.take_changes(at(31)).unwrap_or_default();
        assert!(!ch.puts.iter().any(|(k, _)| k == KEY_ABSENCE));
    }

    /// An old epoch is read for `catch_up_periods` after the new one came.
    /// A member who went away during that time reads the old epoch's boxes
    /// of the hours it missed (others may have written there before they
    /// heard of the new epoch) before the old epoch is forgotten.
    #[test]
    fn an_old_epoch_is_read_for_the_hours_missed_before_it_is_forgotten() {
        let (mut st, me, c, cfg, start, e0) = in_a_group(7);
        let p = P;
        let at = |h: u64| start.after(Duration::from_secs(h * 3600));
        let catch_up = cfg.catch_up_periods;
        st.fetches.clear();

        // The new epoch at hour 1: the old one is read until hour 1 + 24.
        let e1 = group_keys(&mut st, at(1), (me, c), group::OP_REKEY, 1, 9);
        st.queue_fetch_round(at(1));
        // (A round an hour after the last asks for the hour before that too.)
        assert_eq!(probed_epoch(&mut st, e0), (p - 1..=p + 1).collect());
        answer_all(&mut st);
        st.fetches.clear();

        // What the epochs' boxes had waiting (our session keys) was sent.
        st.outbox = Outbox::new(OutboxConfig::default());
        // Away from hour 1 to hour 50: the old epoch's hours missed, up to
        // its last one, and the new epoch's every hour since.
        let until = p + 1 + catch_up;
        st.queue_fetch_round(at(50));
        assert_eq!(probed_epoch(&mut st, e0), (p..=until).collect());
        assert_eq!(probed_epoch(&mut st, e1), (p..=p + 50).collect());
        // Kept (and asked again) until answered, then forgotten.
        st.queue_fetch_round(at(50));
        assert_eq!(probed_epoch(&mut st, e0), (p..=until).collect());
        answer_all(&mut st);
        st.queue_fetch_round(at(50));
        assert_eq!(probed_epoch(&mut st, e0), BTreeSet::new());
        assert!(st.identities[&me.0].groups[&[7u8; 32]].retired.is_empty());
        assert!(!st.identities[&me.0].contacts.contains_key(&e0));
    }

    /// A fragment that the contact's reassembly memory bound refuses is not
    /// confirmed at the gateway (confirmed, it would be deleted there and its
    /// message could never complete): it is fetched again and taken once
    /// there is room.
    #[test]
    fn a_fragment_over_the_reassembly_bound_stays_in_its_box() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut cfg = ClientConfig::new("http://127.0.0.1:1", &hex::encode([1u8; 32])).unwrap();
        cfg.max_reassembly_bytes = 10_000;
        let doc = topology(100);
        let start = Now {
            at: Instant::now(),
            unix_ms: doc.valid_from_ms,
        };
        let (mut st, me, c) = with_contact(&cfg, &doc, start, &mut rng);
        let peer = (me.0, c.0);
        let slot = dropbox::period_at(start.unix_ms);
        let contact = st
            .identities
            .get_mut(&me.0)
            .unwrap()
            .contacts
            .get_mut(&c.0)
            .unwrap();
        let dropbox = contact.inbound_box(&me.0, &c.0, slot);
        let state = BoxState::new(contact.inbound_box(&me.0, &c.0, slot));
        contact.inbound.insert(slot, state);
        // Two messages of two 1 kB fragments, each reserving 8 kB.
        let frag = |id: u8, index: u32| Fragment {
            kind: Kind::Message,
            msg_id: [id; 16],
            session: 1,
            seq: u64::from(id),
            index,
            count: 2,
            total_len: 8000,
            chunk: vec![id; 1024],
        };
        let key = ReplyKey::from_bytes(&vec![1; ReplyKey::serialized_len(4)]).unwrap();
        let mut reply = |st: &mut ClientState, seq: u64, f: Fragment, t: f64| {
            let ct = boxes::seal(&dropbox, &f.encode(), &mut rng).unwrap();
            let body = FetchReply {
                seqs: vec![seq],
                remaining: 0,
                message: Some((seq, ct)),
            }
            .encode()
            .unwrap();
            let pending = Pending {
                key: key.clone(),
                peer,
                period: slot,
                cursor: seq - 1,
                known: 0,
                created: t,
            };
            st.on_fetch_reply(pending, &body, t);
        };
        // The seqs taken (to be confirmed at the next fetch), of the first three.
        let received = |st: &ClientState| -> BTreeSet<u64> {
            let b = &st.identities[&me.0].contacts[&c.0].inbound[&slot];
            (1..=3).filter(|s| !b.wants(*s)).collect()
        };
        reply(&mut st, 1, frag(1, 0), 1.0);
        assert_eq!(received(&st), BTreeSet::from([1]));
        // The second message does not fit beside the first: left in the box.
        reply(&mut st, 2, frag(2, 0), 1.1);
        assert_eq!(received(&st), BTreeSet::from([1]), "refused, not confirmed");
        assert_eq!(st.reassembly.bytes(), 8000 + 256 + 32);
        // The first message completes; the second, fetched again, now fits.
        reply(&mut st, 3, frag(1, 1), 1.2);
        assert_eq!(st.reassembly.bytes(), 0);
        reply(&mut st, 2, frag(2, 0), 1.3);
        assert_eq!(received(&st), BTreeSet::from([1, 2, 3]));
        assert_eq!(st.reassembly.bytes(), 8000 + 256 + 32);
    }

    /// An entry gateway that the topology stops listing (revoked, or no
    /// longer registering) is timed from the first topology without it; a
    /// topology listing it again, or a move to another gateway, ends that.
    #[test]
    fn an_entry_gateway_left_out_of_the_topology_is_timed_and_left() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let cfg = ClientConfig::new("http://127.0.0.1:1", &hex::encode([1u8; 32])).unwrap();
        let with_two = |epoch: u64| {
            let mut d = topology(epoch);
            let mut g = d.nodes.last().unwrap().clone();
            g.identity = [8; 32];
            g.client_address = Some("127.0.0.1:2003".into());
            d.nodes.push(g);
            d.nodes.sort_by_key(|n| n.identity);
            d
        };
        let doc = with_two(100);
        let start = Now {
            at: Instant::now(),
            unix_ms: doc.valid_from_ms,
        };
        let mut st = ClientState::new(cfg, doc.clone(), start, &mut rng).unwrap();
        let first = st.entry().identity;
        assert_eq!(st.entry_unlisted_for(start), None);
        let without = |d: &TopologyDocument, id: NodeId| {
            let mut d = d.clone();
            d.revision += 1;
            d.nodes.retain(|n| n.identity != id);
            d
        };
        let t1 = start.after(Duration::from_secs(1));
        st.set_topology(without(&doc, first), t1);
        let t2 = start.after(Duration::from_secs(11));
        st.set_topology(without(&doc, first), t2);
        assert_eq!(st.entry_unlisted_for(t2), Some(Duration::from_secs(10)));
        // Listed again: not timed any more.
        st.set_topology(doc.clone(), t2);
        assert_eq!(st.entry_unlisted_for(t2), None);
        st.set_topology(without(&doc, first), t2);
        let moved = st.fail_over(start.after(Duration::from_secs(40))).unwrap();
        assert_ne!(moved, first);
        assert_eq!(st.entry().identity, moved);
        assert_eq!(
            st.entry_unlisted_for(start.after(Duration::from_secs(41))),
            None
        );
    }

    #[test]
    fn a_full_fragment_fits_an_acked_store() {
        let pair = PairSecret::from_bytes([1; 32]);
        let a = pair.dropbox(&[1; 32], &[2; 32], 5);
        let env = vec![0u8; protocol::reliable::FRAGMENT_HEADER + CHUNK_LEN];
        assert_eq!(
            boxes::seal(&a, &env, &mut rand::rng()).unwrap().len(),
            MAX_ACKED_STORED_LEN
        );
    }
}
