//! Groups: a shared secret per *epoch* from which the group's dropboxes
//! derive, and Megolm (Matrix's sender ratchet, from `vodozemac`) for the
//! content. protocol.md §13.11 specifies what travels.
//!
//! Every member writes into the group's box of the current period and
//! fetches it (by cursor, without deleting: the others read it too). Each
//! member encrypts with its own outbound Megolm session and announces the
//! session's key in the box, under the epoch's box key, so every member of
//! the epoch can read it. Membership changes travel pairwise, Olm-encrypted:
//! an invite carries the epoch's secret to a new member; removing a member
//! makes a new epoch whose secret goes only to those who stay (and each
//! passes it on to its own contacts among them), and every member starts a
//! new Megolm session in it. The removed member keeps old secrets but learns
//! no new one: it reads nothing sent after.
//!
//! The pieces here are pure: no clock, no I/O. Megolm draws its own
//! randomness from the operating system.

use crate::Error;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet, VecDeque};
use vodozemac::megolm::{
    DecryptionError, GroupSession, GroupSessionPickle, InboundGroupSession,
    InboundGroupSessionPickle, MegolmMessage, SessionConfig, SessionKey,
};
use zeroize::Zeroizing;

/// Members a group may have (a rekey sends the new secret to each, pairwise).
pub const MAX_MEMBERS: usize = 64;
/// Version byte of every group wire format. 2: control items are signed by
/// their sender's identity key, and a message names its sender inside the
/// encryption too.
pub const GROUP_VERSION: u8 = 2;
/// Domain of the signatures on control items.
const SIGNED_DOMAIN: &[u8] = b"umbra-group-control-v2";
/// Pairwise (Olm-encrypted) group message: you were invited.
pub const OP_INVITE: u8 = 1;
/// Pairwise (Olm-encrypted) group message: a new epoch (a member was removed).
pub const OP_REKEY: u8 = 2;
/// Group-box message body type: a Megolm-encrypted message.
pub const BOX_MESSAGE: u8 = 0x10;
/// Group-box message body type: a Megolm-encrypted message whose
/// plaintext is typed content (protocol.md §13.12).
pub const BOX_TYPED: u8 = 0x14;
/// Group-box control type: a member's Megolm session key.
pub const BOX_ANNOUNCE: u8 = 0x11;
/// Group-box control type: a member added someone.
pub const BOX_ADDED: u8 = 0x12;
/// Group-box control type: the sender left.
pub const BOX_LEFT: u8 = 0x13;
/// Inbound Megolm sessions kept per group (the oldest goes first).
const MAX_INBOUND: usize = 4 * MAX_MEMBERS;
/// Sessions, and keys kept, per sender: beyond it the sender's own oldest
/// goes (a member reads at most 1 + `MAX_RETIRED` epochs, a session each).
const MAX_PER_SENDER: usize = 8;
/// Megolm messages remembered per group to refuse replays.
const MAX_SEEN: usize = 20_000;
/// Messages held per group while their session's key has not come.
pub const MAX_HELD: usize = 1_000;
/// Bytes of the messages held per group (group messages may be 8 MiB).
pub const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;
/// Earlier epochs whose boxes are still read (a member who had not yet
/// heard of a new epoch may still write there).
pub(crate) const MAX_RETIRED: usize = 4;

/// A group's id: 32 random bytes chosen by its creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 32]);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn megolm_config() -> SessionConfig {
    SessionConfig::version_1()
}

/// The key under which an epoch's boxes are derived and its messages are
/// filed: `SHA-256("umbra-group-epoch-v1" || id || epoch:u32 || secret)`.
/// Two members who made the same epoch at once get different keys.
pub fn epoch_key(id: &[u8; 32], epoch: u32, secret: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"umbra-group-epoch-v1");
    h.update(id);
    h.update(epoch.to_be_bytes());
    h.update(secret);
    h.finalize().into()
}

fn clean_name(s: &str) -> String {
    s.chars()
        .filter(|c| *c != ':' && !c.is_control())
        .take(64)
        .collect()
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(255);
    // Cut at a char boundary.
    let n = (0..=n).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    v.push(n as u8);
    v.extend_from_slice(&b[..n]);
}

/// A cursor over bytes that fails with `None` instead of panicking.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn key(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        Some(clean_name(std::str::from_utf8(self.take(n)?).ok()?))
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// A group's keys as they travel pairwise, Olm-encrypted (`Kind::Group`):
/// an invite to a new member, or a new epoch to those who stay.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKeys {
    /// [`OP_INVITE`] or [`OP_REKEY`].
    pub op: u8,
    pub id: [u8; 32],
    pub epoch: u32,
    pub secret: Zeroizing<[u8; 32]>,
    pub name: String,
    /// Members of the epoch (x25519 public key, the epoch they were last
    /// added in, name), the recipient included.
    pub members: Vec<([u8; 32], u32, String)>,
}

impl std::fmt::Debug for GroupKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupKeys")
            .field("op", &self.op)
            .field("epoch", &self.epoch)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl GroupKeys {
    /// `0x02 || op || id[32] || epoch:u32 || secret[32] || name || n:u8 ||
    /// (member[32] || since:u32 || name)×n`, names as `len:u8 || UTF-8`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![GROUP_VERSION, self.op];
        v.extend_from_slice(&self.id);
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.extend_from_slice(self.secret.as_ref());
        put_str(&mut v, &self.name);
        let n = self.members.len().min(MAX_MEMBERS);
        v.push(n as u8);
        for (k, since, name) in &self.members[..n] {
            v.extend_from_slice(k);
            v.extend_from_slice(&since.to_be_bytes());
            put_str(&mut v, name);
        }
        v
    }

    /// Decodes what [`Self::encode`] made; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Rd(b);
        if r.u8()? != GROUP_VERSION {
            return None;
        }
        let op = r.u8()?;
        if op != OP_INVITE && op != OP_REKEY {
            return None;
        }
        let id = r.key()?;
        let epoch = r.u32()?;
        let secret = Zeroizing::new(r.key()?);
        let name = r.str()?;
        let n = r.u8()? as usize;
        if n == 0 || n > MAX_MEMBERS {
            return None;
        }
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let (k, since) = (r.key()?, r.u32()?);
            // Added later than the epoch it is listed in: nonsense.
            if since > epoch {
                return None;
            }
            members.push((k, since, r.str()?));
        }
        r.rest().is_empty().then_some(Self {
            op,
            id,
            epoch,
            secret,
            name,
            members,
        })
    }
}

/// What travels in a group's box (under the epoch's box key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoxItem {
    /// A member's message: its Megolm session id and the Megolm message;
    /// `typed` if the plaintext is typed content.
    Message {
        sender: [u8; 32],
        session_id: String,
        megolm: Vec<u8>,
        typed: bool,
    },
    /// A member's Megolm session key (from the index it was exported at).
    Announce {
        sender: [u8; 32],
        sig: [u8; 64],
        session_key: Vec<u8>,
    },
    /// `sender` added `member` (named `name`) to the group.
    Added {
        sender: [u8; 32],
        sig: [u8; 64],
        member: [u8; 32],
        name: String,
    },
    /// `sender` left the group.
    Left { sender: [u8; 32], sig: [u8; 64] },
}

impl BoxItem {
    /// `0x02 || type || sender[32] || …`, control items with `sig[64]`
    /// after the sender (protocol.md §13.11).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.unsigned();
        if let Some(sig) = self.sig() {
            v.splice(2 + 32..2 + 32, sig.iter().copied());
        }
        v
    }

    /// A control item's signature.
    fn sig(&self) -> Option<&[u8; 64]> {
        match self {
            BoxItem::Message { .. } => None,
            BoxItem::Announce { sig, .. }
            | BoxItem::Added { sig, .. }
            | BoxItem::Left { sig, .. } => Some(sig),
        }
    }

    /// The sender's identity key.
    pub fn sender(&self) -> [u8; 32] {
        match self {
            BoxItem::Message { sender, .. }
            | BoxItem::Announce { sender, .. }
            | BoxItem::Added { sender, .. }
            | BoxItem::Left { sender, .. } => *sender,
        }
    }

    /// What a control item's signature covers: `SIGNED_DOMAIN || epoch key
    /// || the item as encoded without its signature`.
    fn signed(&self, ek: &[u8; 32]) -> Vec<u8> {
        let mut m = SIGNED_DOMAIN.to_vec();
        m.extend_from_slice(ek);
        m.extend_from_slice(&self.unsigned());
        m
    }

    /// Signs a control item with the sender's identity secret (XEdDSA), for
    /// the box of epoch `ek`. Messages are left as they are.
    pub(crate) fn sign(mut self, secret: &x25519_dalek::StaticSecret, ek: &[u8; 32]) -> Self {
        use xeddsa::Sign;
        if self.sig().is_none() {
            return self;
        }
        let m = self.signed(ek);
        let key = xeddsa::xed25519::PrivateKey(secret.to_bytes());
        let s: [u8; 64] = key.sign(&m, rand::rng());
        match &mut self {
            BoxItem::Message { .. } => {}
            BoxItem::Announce { sig, .. }
            | BoxItem::Added { sig, .. }
            | BoxItem::Left { sig, .. } => *sig = s,
        }
        self
    }

    /// Whether a control item was signed by its sender for the box of
    /// epoch `ek` (messages: true; their sessions' keys came signed).
    pub fn verify(&self, ek: &[u8; 32]) -> bool {
        use xeddsa::Verify;
        let Some(sig) = self.sig() else {
            return true;
        };
        xeddsa::xed25519::PublicKey(self.sender())
            .verify(&self.signed(ek), sig)
            .is_ok()
    }

    /// The encoding without a control item's signature.
    fn unsigned(&self) -> Vec<u8> {
        let mut v = vec![GROUP_VERSION];
        match self {
            BoxItem::Message {
                sender,
                session_id,
                megolm,
                typed,
            } => {
                v.push(if *typed { BOX_TYPED } else { BOX_MESSAGE });
                v.extend_from_slice(sender);
                put_str(&mut v, session_id);
                v.extend_from_slice(megolm);
            }
            BoxItem::Announce {
                sender,
                session_key,
                ..
            } => {
                v.push(BOX_ANNOUNCE);
                v.extend_from_slice(sender);
                v.extend_from_slice(session_key);
            }
            BoxItem::Added {
                sender,
                member,
                name,
                ..
            } => {
                v.push(BOX_ADDED);
                v.extend_from_slice(sender);
                v.extend_from_slice(member);
                put_str(&mut v, name);
            }
            BoxItem::Left { sender, .. } => {
                v.push(BOX_LEFT);
                v.extend_from_slice(sender);
            }
        }
        v
    }

    /// Decodes what [`Self::encode`] made; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = Rd(b);
        if r.u8()? != GROUP_VERSION {
            return None;
        }
        let t = r.u8()?;
        let sender = r.key()?;
        let mut sig = [0u8; 64];
        if matches!(t, BOX_ANNOUNCE | BOX_ADDED | BOX_LEFT) {
            sig.copy_from_slice(r.take(64)?);
        }
        Some(match t {
            BOX_MESSAGE | BOX_TYPED => {
                let n = r.u8()? as usize;
                let session_id = std::str::from_utf8(r.take(n)?).ok()?.to_string();
                BoxItem::Message {
                    sender,
                    session_id,
                    megolm: r.rest().to_vec(),
                    typed: t == BOX_TYPED,
                }
            }
            BOX_ANNOUNCE => BoxItem::Announce {
                sender,
                sig,
                session_key: r.rest().to_vec(),
            },
            BOX_ADDED => {
                let member = r.key()?;
                let name = r.str()?;
                if !r.rest().is_empty() {
                    return None;
                }
                BoxItem::Added {
                    sender,
                    sig,
                    member,
                    name,
                }
            }
            BOX_LEFT if r.rest().is_empty() => BoxItem::Left { sender, sig },
            _ => return None,
        })
    }
}

/// A message held until its sender's session key comes.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Held {
    pub(crate) msg_id: [u8; 16],
    pub(crate) typed: bool,
    pub(crate) sender: [u8; 32],
    pub(crate) session_id: String,
    pub(crate) megolm: Vec<u8>,
}

/// Why a group message was not handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Opened {
    /// Decrypted: the sender, the plaintext, and whether it is typed content.
    Plain([u8; 32], Vec<u8>, bool),
    /// Our own message, back from the box.
    Own,
    /// Its session's key has not come yet: held.
    Held,
    /// A replay, a forgery, junk, or a sender who is not a member.
    Refused(String),
}

/// One group as one member sees it.
pub(crate) struct Group {
    pub(crate) id: [u8; 32],
    pub(crate) name: String,
    pub(crate) epoch: u32,
    secret: Zeroizing<[u8; 32]>,
    /// Members of the current epoch: x25519 public key → name.
    pub(crate) members: BTreeMap<[u8; 32], String>,
    /// The membership record: when members were added, who left, and the
    /// numbers of the old epochs still read.
    pub(crate) ledger: Ledger,
    /// Our own sender ratchet in this epoch.
    outbound: GroupSession,
    /// Members' sender ratchets: session id → (sender, session), oldest first.
    inbound: VecDeque<(String, [u8; 32], InboundGroupSession)>,
    seen: HashSet<(String, u32)>,
    seen_order: VecDeque<(String, u32)>,
    pub(crate) held: VecDeque<Held>,
    /// Session keys from senders not (yet) known as members: the news of
    /// their joining travels separately and may come later.
    pending_keys: VecDeque<([u8; 32], Vec<u8>)>,
    /// Earlier epochs still read: (epoch key, secret, until period).
    pub(crate) retired: Vec<([u8; 32], [u8; 32], u64)>,
    /// The (epoch, period) whose box last got our session's key.
    pub(crate) announced: Option<(u32, u64)>,
}

/// What the store keeps of a [`Group`] (secret: the client's store is encrypted).
#[derive(Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    pub(crate) id: [u8; 32],
    pub(crate) name: String,
    pub(crate) epoch: u32,
    pub(crate) secret: [u8; 32],
    pub(crate) members: Vec<([u8; 32], String)>,
    pub(crate) outbound: String,
    pub(crate) inbound: Vec<(String, [u8; 32], String)>,
    pub(crate) seen: Vec<(String, u32)>,
    pub(crate) held: Vec<Held>,
    pub(crate) pending_keys: Vec<([u8; 32], Vec<u8>)>,
    pub(crate) retired: Vec<([u8; 32], [u8; 32], u64)>,
    pub(crate) announced: Option<(u32, u64)>,
}

/// Who is a member, kept so that the order in which items are read and
/// replays of signed items do not matter: `member` is a member if the
/// epoch it was last added in is later than the epoch of any `left` of
/// it read (a member who left comes back only in a later epoch). Stored
/// as a record of its own (stores from before it read as all zero).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    /// The epoch each member was last added in (absent: 0).
    since: BTreeMap<[u8; 32], u32>,
    /// The latest epoch of a `left` read, per identity (bounded).
    left: BTreeMap<[u8; 32], u32>,
    /// The numbers of the old epochs still read, by epoch key.
    retired: BTreeMap<[u8; 32], u32>,
}

/// Leavers remembered per group (the oldest lefts go first).
const MAX_LEFT_MEMBERS: usize = 4 * MAX_MEMBERS;

impl Ledger {
    pub(crate) fn since(&self, k: &[u8; 32]) -> u32 {
        self.since.get(k).copied().unwrap_or(0)
    }

    /// Whether `k` left in epoch `epoch` or later.
    fn left_since(&self, k: &[u8; 32], epoch: u32) -> bool {
        self.left.get(k).is_some_and(|e| *e >= epoch)
    }

    fn note_left(&mut self, k: [u8; 32], epoch: u32) {
        let e = self.left.entry(k).or_insert(epoch);
        *e = (*e).max(epoch);
        while self.left.len() > MAX_LEFT_MEMBERS {
            let Some(oldest) = self.left.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) else {
                break;
            };
            self.left.remove(&oldest);
        }
    }

    /// The members of an epoch from its keys' list, but those whose
    /// `left` was read for an epoch at or after the one they were added in
    /// (the keys' maker had not read it); `me` stays. A later adding we
    /// know of than the list says counts (its maker had not read it).
    fn take_list(
        &mut self,
        list: &[([u8; 32], u32, String)],
        me: Option<[u8; 32]>,
    ) -> BTreeMap<[u8; 32], String> {
        let mut members = BTreeMap::new();
        let mut since = BTreeMap::new();
        for (k, listed, name) in list {
            let s = (*listed).max(self.since(k));
            if Some(*k) != me && self.left_since(k, s) {
                continue;
            }
            if s > 0 {
                since.insert(*k, s);
            }
            members.insert(*k, name.clone());
        }
        self.since = since;
        members
    }
}

impl Group {
    /// A new group with `me` (named `my_name`) as its only member.
    pub(crate) fn create(
        id: [u8; 32],
        name: &str,
        me: [u8; 32],
        my_name: &str,
        secret: [u8; 32],
    ) -> Self {
        let mut members = BTreeMap::new();
        members.insert(me, clean_name(my_name));
        Self::from_parts(id, clean_name(name), 0, secret, members)
    }

    /// Joins from an invite's keys.
    pub(crate) fn join(k: &GroupKeys) -> Self {
        let mut g = Self::from_parts(k.id, k.name.clone(), k.epoch, *k.secret, BTreeMap::new());
        g.members = g.ledger.take_list(&k.members, None);
        g
    }

    fn from_parts(
        id: [u8; 32],
        name: String,
        epoch: u32,
        secret: [u8; 32],
        members: BTreeMap<[u8; 32], String>,
    ) -> Self {
        Self {
            id,
            name,
            epoch,
            secret: Zeroizing::new(secret),
            members,
            ledger: Ledger::default(),
            outbound: GroupSession::new(megolm_config()),
            inbound: VecDeque::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            held: VecDeque::new(),
            pending_keys: VecDeque::new(),
            retired: Vec::new(),
            announced: None,
        }
    }

    /// The current epoch's secret.
    pub(crate) fn secret(&self) -> [u8; 32] {
        *self.secret
    }

    /// The current epoch's key (its boxes and its entry among the contacts).
    pub(crate) fn epoch_key(&self) -> [u8; 32] {
        epoch_key(&self.id, self.epoch, &self.secret)
    }

    /// The last period whose box of epoch key `ek` is read: no limit for
    /// the current epoch, an old one's `until`; `None` for an epoch no
    /// longer read.
    pub(crate) fn read_until(&self, ek: &[u8; 32]) -> Option<u64> {
        if *ek == self.epoch_key() {
            return Some(u64::MAX);
        }
        self.retired.iter().find(|r| r.0 == *ek).map(|r| r.2)
    }

    /// Keys to send pairwise: an invite, or a new epoch.
    pub(crate) fn keys(&self, op: u8) -> GroupKeys {
        GroupKeys {
            op,
            id: self.id,
            epoch: self.epoch,
            secret: self.secret.clone(),
            name: self.name.clone(),
            members: self.list(),
        }
    }

    /// The members as keys list them: key, epoch last added in, name.
    pub(crate) fn list(&self) -> Vec<([u8; 32], u32, String)> {
        self.members
            .iter()
            .map(|(k, n)| (*k, self.ledger.since(k), n.clone()))
            .collect()
    }

    /// Moves to a new epoch (ours, or one a member sent): the old epoch's
    /// boxes are read until `until_period`; a new sender ratchet starts.
    /// Returns the old epoch key.
    /// `members` is the new epoch's list as its keys gave it (`me` is kept
    /// whatever the ledger says).
    pub(crate) fn advance(
        &mut self,
        epoch: u32,
        secret: [u8; 32],
        members: &[([u8; 32], u32, String)],
        me: [u8; 32],
        until_period: u64,
    ) -> [u8; 32] {
        let old = self.epoch_key();
        self.retire(old, self.epoch, *self.secret, until_period);
        self.epoch = epoch;
        self.secret = Zeroizing::new(secret);
        self.members = self.ledger.take_list(members, Some(me));
        self.outbound = GroupSession::new(megolm_config());
        old
    }

    /// Reads an epoch that lost to ours (made at the same time by another
    /// member) as an old one until `until_period`.
    pub(crate) fn retire(&mut self, ek: [u8; 32], epoch: u32, secret: [u8; 32], until_period: u64) {
        self.ledger.retired.insert(ek, epoch);
        self.retired.push((ek, secret, until_period));
        if self.retired.len() > MAX_RETIRED {
            let (gone, ..) = self.retired.remove(0);
            self.ledger.retired.remove(&gone);
        }
    }

    /// The number of the epoch whose key is `ek`, if it is read.
    pub(crate) fn epoch_of(&self, ek: &[u8; 32]) -> Option<u32> {
        if *ek == self.epoch_key() {
            return Some(self.epoch);
        }
        self.ledger.retired.get(ek).copied()
    }

    /// `member` was added (or invited) in the current epoch. False if it
    /// left in this epoch: an `added` of it is then a replay or came
    /// before its `left`; a leaver comes back only in a later epoch.
    pub(crate) fn add_member(&mut self, member: [u8; 32], name: String) -> bool {
        if self.ledger.left_since(&member, self.epoch) {
            return false;
        }
        self.ledger.since.insert(member, self.epoch);
        self.members.entry(member).or_insert(name);
        true
    }

    /// `member` left, by its `left` signed for epoch `epoch`: true if that
    /// ends its membership (it was last added no later than that epoch;
    /// otherwise the item is older than its adding, or replayed).
    pub(crate) fn member_left(&mut self, member: [u8; 32], epoch: u32) -> bool {
        // Lefts of non-members are noted only for the current epoch (an
        // `added` of it may come later, read out of order): a removed
        // member posting lefts of made-up identities into an old epoch's
        // box cannot push real ones out of the ledger.
        if self.members.contains_key(&member) || epoch == self.epoch {
            self.ledger.note_left(member, epoch);
        }
        if self.ledger.since(&member) > epoch || self.members.remove(&member).is_none() {
            return false;
        }
        self.ledger.since.remove(&member);
        true
    }

    /// Drops the numbers of old epochs no longer read.
    pub(crate) fn ledger_follow_retired(&mut self) {
        let retired = &self.retired;
        self.ledger
            .retired
            .retain(|ek, _| retired.iter().any(|r| r.0 == *ek));
    }

    /// Whether new keys (`epoch`, `secret`) win over ours: a later epoch,
    /// or the same epoch made at the same time by another member with the
    /// larger epoch key (every member settles on the same one).
    pub(crate) fn is_newer(&self, epoch: u32, secret: &[u8; 32]) -> bool {
        epoch > self.epoch
            || (epoch == self.epoch && epoch_key(&self.id, epoch, secret) > self.epoch_key())
    }

    /// Our sender ratchet's key from its next index, as a box announcement.
    /// (Unsigned: [`BoxItem::sign`] it for the epoch's box.)
    pub(crate) fn announce(&self, me: [u8; 32]) -> BoxItem {
        BoxItem::Announce {
            sender: me,
            sig: [0; 64],
            session_key: self.outbound.session_key().to_bytes(),
        }
    }

    /// Encrypts `body` with our sender ratchet, as a box message.
    pub(crate) fn seal(&mut self, me: [u8; 32], body: &[u8]) -> BoxItem {
        self.seal_as(me, body, false)
    }

    /// [`Self::seal`], saying whether `body` is typed content.
    /// The plaintext is `me || typed:u8 || body`: a member who claimed our
    /// session as its own cannot pass our messages off as its, nor a copy
    /// change how the body is read.
    pub(crate) fn seal_as(&mut self, me: [u8; 32], body: &[u8], typed: bool) -> BoxItem {
        let session_id = self.outbound.session_id();
        let mut plain = Zeroizing::new(Vec::with_capacity(33 + body.len()));
        plain.extend_from_slice(&me);
        plain.push(typed.into());
        plain.extend_from_slice(body);
        let megolm = self.outbound.encrypt(&plain[..]).to_bytes();
        BoxItem::Message {
            sender: me,
            session_id,
            megolm,
            typed,
        }
    }

    /// A member's session key came: keep it (two exports of one session
    /// are merged, so the one reaching further back counts). Returns the
    /// session's id.
    pub(crate) fn add_session(
        &mut self,
        sender: [u8; 32],
        session_key: &[u8],
    ) -> Result<String, String> {
        let key = SessionKey::from_bytes(session_key).map_err(|e| e.to_string())?;
        if !self.members.contains_key(&sender) {
            // Kept until the news that they joined comes (or pushed out):
            // a sender's own oldest first, so that one flooding the box
            // pushes out no one else's.
            let theirs = self
                .pending_keys
                .iter()
                .filter(|(s, _)| *s == sender)
                .count();
            if theirs >= MAX_PER_SENDER {
                if let Some(i) = self.pending_keys.iter().position(|(s, _)| *s == sender) {
                    self.pending_keys.remove(i);
                }
            } else if self.pending_keys.len() >= MAX_HELD {
                self.pending_keys.pop_front();
            }
            self.pending_keys.push_back((sender, session_key.to_vec()));
            return Err("session key from someone not (yet) a member: kept".into());
        }
        let mut s = InboundGroupSession::new(&key, megolm_config());
        let sid = s.session_id();
        // Kept per (session, sender): a member who claims another's session
        // as its own gets an entry of its own, which opens nothing (the
        // sender inside the messages is the other), and the owner's own
        // announce is still taken.
        if let Some(i) = self
            .inbound
            .iter()
            .position(|(id, owner, _)| *id == sid && *owner == sender)
        {
            let old = &mut self.inbound[i].2;
            if let Some(merged) = old.merge(&mut s) {
                *old = merged;
            }
            return Ok(sid);
        }
        // A sender's own oldest session goes first once it has
        // MAX_PER_SENDER (one per epoch read is at most 5): a member who
        // announces many pushes out no one else's.
        let theirs = self.inbound.iter().filter(|(_, o, _)| *o == sender).count();
        if theirs >= MAX_PER_SENDER
            && let Some(i) = self.inbound.iter().position(|(_, o, _)| *o == sender)
        {
            self.inbound.remove(i);
        }
        self.inbound.push_back((sid.clone(), sender, s));
        if self.inbound.len() > MAX_INBOUND {
            self.inbound.pop_front();
        }
        Ok(sid)
    }

    /// Opens a box message from `sender` under `session_id`.
    #[cfg(test)]
    pub(crate) fn open(
        &mut self,
        me: [u8; 32],
        msg_id: [u8; 16],
        sender: [u8; 32],
        session_id: &str,
        megolm: &[u8],
    ) -> Opened {
        self.open_as(me, msg_id, sender, session_id, megolm, false)
    }

    /// [`Self::open`] of a message that says whether it is typed.
    pub(crate) fn open_as(
        &mut self,
        me: [u8; 32],
        msg_id: [u8; 16],
        sender: [u8; 32],
        session_id: &str,
        megolm: &[u8],
        typed: bool,
    ) -> Opened {
        if sender == me {
            return Opened::Own;
        }
        let hold = |held: &mut VecDeque<Held>| {
            let mut bytes: usize = held.iter().map(|h| h.megolm.len()).sum();
            while held.len() >= MAX_HELD || bytes + megolm.len() > MAX_HELD_BYTES {
                let Some(h) = held.pop_front() else { break };
                bytes -= h.megolm.len();
            }
            held.push_back(Held {
                msg_id,
                typed,
                sender,
                session_id: session_id.to_string(),
                megolm: megolm.to_vec(),
            });
            Opened::Held
        };
        // A sender not (yet) a member, or a session whose key has not
        // come: held until they do. (A removed member's messages are never
        // read: they wait here until pushed out.)
        let known = self.members.contains_key(&sender);
        let Some((_, _, s)) = self
            .inbound
            .iter_mut()
            .find(|(id, owner, _)| known && id == session_id && *owner == sender)
        else {
            return hold(&mut self.held);
        };
        let Ok(m) = MegolmMessage::from_bytes(megolm) else {
            return Opened::Refused("not a Megolm message".into());
        };
        match s.decrypt(&m) {
            Ok(d) => {
                if d.plaintext.get(..32) != Some(&sender[..]) {
                    return Opened::Refused(
                        "the sender inside differs from the one outside".into(),
                    );
                }
                if d.plaintext.get(32) != Some(&u8::from(typed)) {
                    return Opened::Refused("typed inside differs from outside".into());
                }
                let k = (session_id.to_string(), d.message_index);
                if !self.seen.insert(k.clone()) {
                    return Opened::Refused("replayed".into());
                }
                self.seen_order.push_back(k);
                if self.seen_order.len() > MAX_SEEN
                    && let Some(old) = self.seen_order.pop_front()
                {
                    self.seen.remove(&old);
                }
                Opened::Plain(sender, d.plaintext[33..].to_vec(), typed)
            }
            // Older than the key we hold: each period's box carries the
            // sender's key as it was there, and boxes are not read in
            // order. Held until a key reaching further back comes.
            Err(DecryptionError::UnknownMessageIndex(..)) => hold(&mut self.held),
            Err(e) => Opened::Refused(e.to_string()),
        }
    }

    /// Held messages of `session_id`, taken out to be opened again.
    #[cfg(test)]
    pub(crate) fn take_held(&mut self, session_id: &str) -> Vec<Held> {
        let (take, keep): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.session_id == session_id);
        self.held = keep.into();
        take
    }

    /// After news (a session key, a new member): keys kept for senders who
    /// are members now are taken in, and every held message is tried
    /// again (those still missing something are held again).
    pub(crate) fn retry(&mut self, me: [u8; 32]) -> Vec<([u8; 16], Opened)> {
        self.take_in_kept_keys();
        self.reopen(me, |_| true)
    }

    /// Adds the kept keys of senders who have become members (the others
    /// are kept again); returns the sessions added.
    fn take_in_kept_keys(&mut self) -> Vec<String> {
        let keys: Vec<([u8; 32], Vec<u8>)> = std::mem::take(&mut self.pending_keys).into();
        keys.into_iter()
            .filter_map(|(sender, key)| self.add_session(sender, &key).ok())
            .collect()
    }

    /// Tries again the held messages of one session, whose key just came
    /// (each announce: the others would only be checked again in vain),
    /// and of the keys kept for senders who have become members since.
    pub(crate) fn retry_session(
        &mut self,
        me: [u8; 32],
        session_id: &str,
    ) -> Vec<([u8; 16], Opened)> {
        let mut sessions = self.take_in_kept_keys();
        sessions.push(session_id.to_string());
        self.reopen(me, |h| sessions.contains(&h.session_id))
    }

    fn reopen(&mut self, me: [u8; 32], which: impl Fn(&Held) -> bool) -> Vec<([u8; 16], Opened)> {
        let (again, keep): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(which);
        self.held = keep.into();
        again
            .into_iter()
            .map(|h| {
                (
                    h.msg_id,
                    self.open_as(me, h.msg_id, h.sender, &h.session_id, &h.megolm, h.typed),
                )
            })
            .collect()
    }

    /// Drops what an SDK before group format 2 took in without signatures
    /// (members' sessions, keys kept, messages held) and announces our
    /// session again, signed: the others drop theirs too.
    pub(crate) fn forget_unsigned(&mut self) {
        self.inbound.clear();
        self.pending_keys.clear();
        self.held.clear();
        self.announced = None;
    }

    /// Takes the stored ledger (a store from before it has none: every
    /// member counts as added in epoch 0). The numbers of old epochs it
    /// lacks are found by trying the 1,024 epochs before ours.
    pub(crate) fn restore_ledger(&mut self, ledger: Option<Ledger>) {
        if let Some(l) = ledger {
            self.ledger = l;
        }
        for (ek, secret, _) in &self.retired {
            if self.ledger.retired.contains_key(ek) {
                continue;
            }
            let lowest = self.epoch.saturating_sub(1024);
            if let Some(e) = (lowest..=self.epoch)
                .rev()
                .find(|e| epoch_key(&self.id, *e, secret) == *ek)
            {
                self.ledger.retired.insert(*ek, e);
            }
        }
        self.ledger_follow_retired();
    }

    pub(crate) fn record(&self) -> GroupRecord {
        GroupRecord {
            id: self.id,
            name: self.name.clone(),
            epoch: self.epoch,
            secret: *self.secret,
            members: self.members.iter().map(|(k, n)| (*k, n.clone())).collect(),
            outbound: serde_json::to_string(&self.outbound.pickle()).unwrap_or_default(),
            inbound: self
                .inbound
                .iter()
                .map(|(id, s, g)| {
                    (
                        id.clone(),
                        *s,
                        serde_json::to_string(&g.pickle()).unwrap_or_default(),
                    )
                })
                .collect(),
            seen: self.seen_order.iter().cloned().collect(),
            held: self.held.iter().cloned().collect(),
            pending_keys: self.pending_keys.iter().cloned().collect(),
            retired: self.retired.clone(),
            announced: self.announced,
        }
    }

    pub(crate) fn from_record(r: GroupRecord) -> Result<Self, Error> {
        let bad = || Error::Store("unreadable group record".into());
        let outbound: GroupSessionPickle = serde_json::from_str(&r.outbound).map_err(|_| bad())?;
        let mut inbound = VecDeque::new();
        for (id, s, p) in r.inbound {
            let p: InboundGroupSessionPickle = serde_json::from_str(&p).map_err(|_| bad())?;
            inbound.push_back((id, s, InboundGroupSession::from_pickle(p)));
        }
        Ok(Self {
            id: r.id,
            name: r.name,
            epoch: r.epoch,
            secret: Zeroizing::new(r.secret),
            members: r.members.into_iter().collect(),
            ledger: Ledger::default(),
            outbound: GroupSession::from_pickle(outbound),
            inbound,
            seen: r.seen.iter().cloned().collect(),
            seen_order: r.seen.into(),
            held: r.held.into(),
            pending_keys: r.pending_keys.into(),
            retired: r.retired,
            announced: r.announced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[test]
    fn wire_formats_round_trip_and_refuse_junk() {
        let keys = GroupKeys {
            op: OP_INVITE,
            id: k(1),
            epoch: 7,
            secret: Zeroizing::new(k(2)),
            name: "team:\u{7}x".into(),
            members: vec![(k(3), 0, "ann".into()), (k(4), 7, "bob".into())],
        };
        let d = GroupKeys::decode(&keys.encode()).unwrap();
        assert_eq!(d.name, "teamx", "names are cleaned as invites' are");
        assert_eq!((d.epoch, *d.secret), (7, k(2)));
        assert_eq!(d.members, keys.members);
        // A member listed as added after the epoch it is listed in.
        let mut later = keys.clone();
        later.members[1].1 = 8;
        assert!(GroupKeys::decode(&later.encode()).is_none());
        let enc = keys.encode();
        for cut in 0..enc.len() {
            assert!(GroupKeys::decode(&enc[..cut]).is_none(), "cut at {cut}");
        }
        for item in [
            BoxItem::Message {
                sender: k(5),
                session_id: "abc".into(),
                megolm: vec![1, 2, 3],
                typed: true,
            },
            BoxItem::Announce {
                sender: k(5),
                sig: [7; 64],
                session_key: vec![9; 40],
            },
            BoxItem::Added {
                sender: k(5),
                sig: [7; 64],
                member: k(6),
                name: "cy".into(),
            },
            BoxItem::Left {
                sender: k(5),
                sig: [7; 64],
            },
        ] {
            let enc = item.encode();
            assert_eq!(BoxItem::decode(&enc), Some(item));
            // Version 1 (unsigned control items) is not read.
            let mut old = enc.clone();
            old[0] = 1;
            assert!(BoxItem::decode(&old).is_none());
        }
        assert!(BoxItem::decode(&[2, 0x99]).is_none());
        assert!(BoxItem::decode(&[2, BOX_LEFT]).is_none());
        let mut left = vec![2, BOX_LEFT];
        left.extend_from_slice(&[5; 32]);
        assert!(BoxItem::decode(&left).is_none(), "no signature");
    }

    /// A control item verifies only as signed by its sender's identity, for
    /// the box of the epoch it was signed for, unchanged.
    #[test]
    fn control_items_verify_only_as_their_senders_for_their_epoch() {
        let alice = x25519_dalek::StaticSecret::from([41; 32]);
        let mallory = x25519_dalek::StaticSecret::from([42; 32]);
        let a = x25519_dalek::PublicKey::from(&alice).to_bytes();
        let m = x25519_dalek::PublicKey::from(&mallory).to_bytes();
        let (ek, other_ek) = (k(1), k(2));
        let g = Group::create(k(3), "g", a, "a", k(9));
        let announce = g.announce(a).sign(&alice, &ek);
        assert!(announce.verify(&ek));
        let wire = BoxItem::decode(&announce.encode()).unwrap();
        assert!(wire.verify(&ek), "verifies after the wire");
        assert!(
            !announce.verify(&other_ek),
            "replayed into another epoch's box"
        );
        assert!(!g.announce(a).verify(&ek), "unsigned");
        // Mallory signs an announcement in Alice's name: refused.
        assert!(!g.announce(a).sign(&mallory, &ek).verify(&ek));
        // Mallory relabels Alice's signed announcement as hers: refused.
        let BoxItem::Announce {
            sig, session_key, ..
        } = announce.clone()
        else {
            panic!()
        };
        let relabelled = BoxItem::Announce {
            sender: m,
            sig,
            session_key: session_key.clone(),
        };
        assert!(!relabelled.verify(&ek));
        // A changed key under Alice's signature: refused.
        let mut changed = session_key;
        changed[10] ^= 1;
        assert!(
            !BoxItem::Announce {
                sender: a,
                sig,
                session_key: changed
            }
            .verify(&ek)
        );
        // Added and Left, in Alice's name by Mallory: refused; by Alice: fine.
        let added = BoxItem::Added {
            sender: a,
            sig: [0; 64],
            member: m,
            name: "m".into(),
        };
        let signed = added.clone().sign(&alice, &ek);
        assert!(signed.verify(&ek));
        assert!(!added.sign(&mallory, &ek).verify(&ek));
        // Its member and name are signed too; a signature of one type does
        // not pass as another's.
        let BoxItem::Added { sig, .. } = signed else {
            panic!()
        };
        for changed in [
            BoxItem::Added {
                sender: a,
                sig,
                member: k(5),
                name: "m".into(),
            },
            BoxItem::Added {
                sender: a,
                sig,
                member: m,
                name: "n".into(),
            },
            BoxItem::Left { sender: a, sig },
        ] {
            assert!(!changed.verify(&ek), "{changed:?}");
        }
        let left = BoxItem::Left {
            sender: a,
            sig: [0; 64],
        };
        assert!(left.clone().sign(&alice, &ek).verify(&ek));
        assert!(!left.sign(&mallory, &ek).verify(&ek));
    }

    /// A member who announces another member's session key as its own
    /// first (copied from the box, signed by itself) cannot pass that
    /// member's messages off as its own: the sender is inside the
    /// encryption too.
    #[test]
    fn a_session_claimed_by_another_member_does_not_relabel_its_messages() {
        let (a, b, m) = (k(10), k(11), k(12));
        let mut ga = Group::create(k(1), "g", a, "a", k(9));
        ga.members.insert(b, "b".into());
        ga.members.insert(m, "m".into());
        let mut gb = Group::join(&ga.keys(OP_INVITE));
        let BoxItem::Announce { session_key, .. } = gb.announce(b) else {
            panic!()
        };
        // Mallory's claim reaches Alice first.
        ga.add_session(m, &session_key).unwrap();
        let BoxItem::Message {
            session_id, megolm, ..
        } = gb.seal(b, b"from b")
        else {
            panic!()
        };
        // Posted as Mallory's: the plaintext names Bob.
        let o = ga.open(a, [1; 16], m, &session_id, &megolm);
        assert!(
            matches!(&o, Opened::Refused(r) if r.contains("inside")),
            "{o:?}"
        );
        // Bob's own announce is still taken, and his message opens as his:
        // the claim that came first silences no one.
        ga.add_session(b, &session_key).unwrap();
        assert_eq!(
            ga.open(a, [2; 16], b, &session_id, &megolm),
            Opened::Plain(b, b"from b".to_vec(), false)
        );
        // The typed flag outside cannot be flipped by a copy.
        let BoxItem::Message {
            session_id, megolm, ..
        } = gb.seal_as(b, b"typed?", false)
        else {
            panic!()
        };
        let o = ga.open_as(a, [3; 16], b, &session_id, &megolm, true);
        assert!(
            matches!(&o, Opened::Refused(r) if r.contains("typed")),
            "{o:?}"
        );
    }

    /// Three members: each reads the others once, not its own; a replay and
    /// an outsider's session are refused; a message before its key is held.
    #[test]
    fn members_read_each_other_once_and_replays_are_refused() {
        let (a, b, c) = (k(10), k(11), k(12));
        let mut ga = Group::create(k(1), "g", a, "a", k(9));
        ga.members.insert(b, "b".into());
        ga.members.insert(c, "c".into());
        let mut gb = Group::join(&ga.keys(OP_INVITE));
        let mut gc = Group::join(&ga.keys(OP_INVITE));
        assert_eq!(ga.epoch_key(), gb.epoch_key());
        // B's message reaches C before B's announcement: held, then opened.
        let BoxItem::Message {
            session_id, megolm, ..
        } = gb.seal(b, b"hi")
        else {
            panic!()
        };
        assert_eq!(gc.open(c, [1; 16], b, &session_id, &megolm), Opened::Held);
        let BoxItem::Announce { session_key, .. } = gb.announce(b) else {
            panic!()
        };
        // The announce was exported after the first message: index 1
        // onwards. The message is held again, for a key reaching further
        // back (none will come for it here).
        gc.add_session(b, &session_key).unwrap();
        let held = gc.take_held(&session_id);
        assert_eq!(held.len(), 1);
        assert_eq!(
            gc.open(c, [1; 16], b, &session_id, &held[0].megolm),
            Opened::Held
        );
        // Announce first, as the SDK does.
        let mut gb = Group::join(&ga.keys(OP_INVITE));
        let BoxItem::Announce { session_key, .. } = gb.announce(b) else {
            panic!()
        };
        let mut gc = Group::join(&ga.keys(OP_INVITE));
        gc.add_session(b, &session_key).unwrap();
        ga.add_session(b, &session_key).unwrap();
        let BoxItem::Message {
            session_id, megolm, ..
        } = gb.seal(b, b"hello")
        else {
            panic!()
        };
        assert_eq!(
            gc.open(c, [2; 16], b, &session_id, &megolm),
            Opened::Plain(b, b"hello".to_vec(), false)
        );
        assert_eq!(
            ga.open(a, [2; 16], b, &session_id, &megolm),
            Opened::Plain(b, b"hello".to_vec(), false)
        );
        assert_eq!(gb.open(b, [2; 16], b, &session_id, &megolm), Opened::Own);
        assert!(
            matches!(gc.open(c, [3; 16], b, &session_id, &megolm), Opened::Refused(r) if r == "replayed")
        );
        // B's message posted as A's: A has no such session (it is B's):
        // held, never opened.
        assert_eq!(gc.open(c, [4; 16], a, &session_id, &megolm), Opened::Held);
        // Someone outside the member list cannot announce.
        assert!(gc.add_session(k(99), &session_key).is_err());
    }

    /// A member who announces hundreds of sessions (a flood) pushes out
    /// only its own: another member's session stays, and its messages
    /// open. The same for keys kept from someone not yet a member.
    #[test]
    fn a_flood_of_announces_pushes_out_only_the_flooders_sessions() {
        let (a, b, m) = (k(10), k(11), k(12));
        let mut ga = Group::create(k(1), "g", a, "a", k(9));
        ga.members.insert(b, "b".into());
        ga.members.insert(m, "m".into());
        let mut gb = Group::join(&ga.keys(OP_INVITE));
        let BoxItem::Announce { session_key, .. } = gb.announce(b) else {
            panic!()
        };
        ga.add_session(b, &session_key).unwrap();
        for _ in 0..2 * MAX_INBOUND {
            let gm = Group::join(&ga.keys(OP_INVITE));
            let BoxItem::Announce { session_key, .. } = gm.announce(m) else {
                panic!()
            };
            ga.add_session(m, &session_key).unwrap();
        }
        assert_eq!(
            ga.inbound.iter().filter(|(_, o, _)| *o == m).count(),
            MAX_PER_SENDER
        );
        let BoxItem::Message {
            session_id, megolm, ..
        } = gb.seal(b, b"still here")
        else {
            panic!()
        };
        assert_eq!(
            ga.open(a, [1; 16], b, &session_id, &megolm),
            Opened::Plain(b, b"still here".to_vec(), false)
        );
        // Keys from someone not (yet) a member: a flooder keeps at most
        // MAX_PER_SENDER; another's key stays.
        let (x, y) = (k(20), k(21));
        assert!(ga.add_session(y, &session_key).is_err());
        for _ in 0..2 * MAX_HELD {
            assert!(ga.add_session(x, &session_key).is_err());
        }
        assert_eq!(
            ga.pending_keys.iter().filter(|(s, _)| *s == x).count(),
            MAX_PER_SENDER
        );
        assert!(ga.pending_keys.iter().any(|(s, _)| *s == y));
    }

    /// Each period's box carries the sender's key as it was there, and
    /// boxes are read in any order: a message older than the key read
    /// first is held, and opens once the earlier key comes (it was
    /// refused, and lost).
    #[test]
    fn a_message_older_than_the_key_read_first_opens_when_the_earlier_key_comes() {
        let (a, b) = (k(10), k(11));
        let mut ga = Group::create(k(1), "g", a, "a", k(9));
        ga.members.insert(b, "b".into());
        let mut gb = Group::join(&ga.keys(OP_INVITE));
        let mut gr = Group::join(&ga.keys(OP_INVITE));
        let item = |i: BoxItem| match i {
            BoxItem::Announce { session_key, .. } => (String::new(), session_key),
            BoxItem::Message {
                session_id, megolm, ..
            } => (session_id, megolm),
            _ => panic!(),
        };
        // Hour 1's box: B's key, then a message; hour 2's: the key again
        // (exported later), then a message.
        let (_, key1) = item(gb.announce(b));
        let (sid, m1) = item(gb.seal(b, b"first"));
        let (_, key2) = item(gb.announce(b));
        let (_, m2) = item(gb.seal(b, b"second"));
        // Hour 2's box read first.
        gr.add_session(b, &key2).unwrap();
        assert_eq!(
            gr.open(a, [2; 16], b, &sid, &m2),
            Opened::Plain(b, b"second".to_vec(), false)
        );
        assert_eq!(gr.open(a, [1; 16], b, &sid, &m1), Opened::Held);
        // Then hour 1's.
        gr.add_session(b, &key1).unwrap();
        let opened = gr.retry(a);
        assert_eq!(
            opened,
            vec![([1; 16], Opened::Plain(b, b"first".to_vec(), false))]
        );
        // Read again (hour 1's box fetched twice): refused as a replay.
        assert!(matches!(
            gr.open(a, [1; 16], b, &sid, &m1),
            Opened::Refused(r) if r == "replayed"
        ));
    }

    /// A key from someone not yet a member is kept; when they have become
    /// one (added by us, which retries nothing), the next announce of any
    /// member takes the kept key in and opens what waited for it.
    #[test]
    fn a_kept_key_opens_its_messages_at_the_next_announce() {
        let (a, b, d) = (k(10), k(11), k(13));
        let mut ga = Group::create(k(1), "g", a, "a", k(9));
        ga.members.insert(b, "b".into());
        let gb = Group::join(&ga.keys(OP_INVITE));
        let mut gd = Group::join(&ga.keys(OP_INVITE));
        let BoxItem::Announce { session_key, .. } = gd.announce(d) else {
            panic!()
        };
        assert!(ga.add_session(d, &session_key).is_err(), "kept, not taken");
        let BoxItem::Message {
            session_id, megolm, ..
        } = gd.seal(d, b"from d")
        else {
            panic!()
        };
        assert_eq!(ga.open(a, [1; 16], d, &session_id, &megolm), Opened::Held);
        ga.members.insert(d, "d".into());
        let BoxItem::Announce {
            session_key: bk, ..
        } = gb.announce(b)
        else {
            panic!()
        };
        let sid = ga.add_session(b, &bk).unwrap();
        assert_eq!(
            ga.retry_session(a, &sid),
            vec![([1; 16], Opened::Plain(d, b"from d".to_vec(), false))]
        );
    }

    /// Held messages are bounded in bytes as well as in number: group
    /// messages may be 8 MiB, and a thousand of them would not fit in
    /// memory. The oldest go first.
    #[test]
    fn held_messages_are_bounded_in_bytes() {
        let (a, b) = (k(10), k(11));
        let mut ga = Group::create(k(1), "g", a, "a", k(9));
        ga.members.insert(b, "b".into());
        let big = vec![7u8; 8 * 1024 * 1024];
        for i in 0..20u8 {
            assert_eq!(ga.open(a, [i; 16], b, "not announced", &big), Opened::Held);
        }
        let bytes: usize = ga.held.iter().map(|h| h.megolm.len()).sum();
        assert!(bytes <= MAX_HELD_BYTES, "{bytes}");
        assert_eq!(ga.held.len(), MAX_HELD_BYTES / big.len());
        assert_eq!(ga.held.back().unwrap().msg_id, [19; 16]);
        assert_eq!(ga.held.front().unwrap().msg_id, [12; 16]);
    }

    /// After a new epoch without C, C's old group cannot open what B sends
    /// in it, and the epoch keys differ; concurrent epochs settle on one.
    #[test]
    fn a_removed_member_reads_nothing_of_the_next_epoch() {
        let (a, b, c) = (k(10), k(11), k(12));
        let mut ga = Group::create(k(1), "g", a, "a", k(9));
        ga.members.insert(b, "b".into());
        ga.members.insert(c, "c".into());
        let mut gb = Group::join(&ga.keys(OP_INVITE));
        let mut gc = Group::join(&ga.keys(OP_INVITE));
        let mut stay = ga.list();
        stay.retain(|m| m.0 != c);
        ga.advance(1, k(20), &stay, a, 100);
        let rekey = ga.keys(OP_REKEY);
        assert!(gb.is_newer(rekey.epoch, &rekey.secret));
        gb.advance(rekey.epoch, *rekey.secret, &rekey.members, b, 100);
        assert_eq!(ga.epoch_key(), gb.epoch_key());
        assert_ne!(gc.epoch_key(), gb.epoch_key());
        let BoxItem::Announce { session_key, .. } = gb.announce(b) else {
            panic!()
        };
        ga.add_session(b, &session_key).unwrap();
        let BoxItem::Message {
            session_id, megolm, ..
        } = gb.seal(b, b"after")
        else {
            panic!()
        };
        assert_eq!(
            ga.open(a, [5; 16], b, &session_id, &megolm),
            Opened::Plain(b, b"after".to_vec(), false)
        );
        // Even given the announcement (it travels under the new epoch's key,
        // which C does not have), C is no longer in the member list A sent.
        assert!(!gb.members.contains_key(&c));
        assert_eq!(gc.open(c, [5; 16], b, &session_id, &megolm), Opened::Held);
        // The same epoch made twice: both sides pick the larger key.
        let x = epoch_key(&k(1), 2, &k(30));
        let y = epoch_key(&k(1), 2, &k(31));
        let (win, lose) = if x > y {
            (k(30), k(31))
        } else {
            (k(31), k(30))
        };
        let mut g1 = Group::join(&ga.keys(OP_INVITE));
        g1.advance(2, lose, &stay, a, 100);
        assert!(g1.is_newer(2, &win));
        g1.advance(2, win, &stay, a, 100);
        assert!(!g1.is_newer(2, &lose));
    }

    #[test]
    fn a_record_restores_the_ratchets() {
        let (a, b) = (k(10), k(11));
        let mut ga = Group::create(k(1), "g", a, "a", k(9));
        ga.members.insert(b, "b".into());
        let mut gb = Group::join(&ga.keys(OP_INVITE));
        let BoxItem::Announce { session_key, .. } = gb.announce(b) else {
            panic!()
        };
        ga.add_session(b, &session_key).unwrap();
        let bytes = postcard::to_stdvec(&ga.record()).unwrap();
        let mut ga2 = Group::from_record(postcard::from_bytes(&bytes).unwrap()).unwrap();
        let BoxItem::Message {
            session_id, megolm, ..
        } = gb.seal(b, b"x")
        else {
            panic!()
        };
        assert_eq!(
            ga2.open(a, [1; 16], b, &session_id, &megolm),
            Opened::Plain(b, b"x".to_vec(), false)
        );
        let BoxItem::Message {
            session_id, megolm, ..
        } = gb.seal(b, b"y")
        else {
            panic!()
        };
        // Restoring our own sender ratchet continues it (no index reused).
        let mut gb2 = Group::from_record(
            postcard::from_bytes(&postcard::to_stdvec(&gb.record()).unwrap()).unwrap(),
        )
        .unwrap();
        let BoxItem::Message { megolm: m2, .. } = gb2.seal(b, b"z") else {
            panic!()
        };
        assert_eq!(
            ga2.open(a, [2; 16], b, &session_id, &megolm),
            Opened::Plain(b, b"y".to_vec(), false)
        );
        assert_eq!(
            ga2.open(a, [3; 16], b, &session_id, &m2),
            Opened::Plain(b, b"z".to_vec(), false)
        );
    }
}
