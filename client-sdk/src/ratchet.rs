//! End-to-end sessions: Olm (a Double Ratchet) from `vodozemac`, Matrix's
//! audited implementation. protocol.md §13.2 specifies what travels.
//!
//! Each identity has one Olm [`Account`] (an identity key, one-time keys);
//! each contact a few Olm [`Session`]s, newest first. A message is
//! encrypted once, whole, with the first session, and the result (the
//! *envelope*) is cut into fragments as before. The receiver decrypts a
//! complete envelope with the session it names (a pre-key message) or the
//! first of its sessions that opens it (a normal message), and moves that
//! session to the front, so both sides settle on the session both use.
//!
//! The pieces here are pure: no clock, no I/O. Olm draws its own
//! randomness from the operating system (vodozemac takes no RNG).

use crate::Error;
use serde::{Deserialize, Serialize};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{
    Account, AccountPickle, OlmMessage, PreKeyMessage, Session, SessionConfig, SessionPickle,
};
use zeroize::Zeroizing;

/// Version byte of an envelope (and of a control message).
pub const ENVELOPE_VERSION: u8 = 1;
/// Version byte of an envelope whose plaintext is typed content
/// (`content.rs`, protocol.md §13.12); otherwise the same as version 1.
pub const ENVELOPE_TYPED: u8 = 2;
/// Envelope type: an Olm pre-key message (it starts a session).
pub const TYPE_PRE_KEY: u8 = 0;
/// Envelope type: an Olm normal message.
pub const TYPE_NORMAL: u8 = 1;
/// Control message type: a session reset.
pub const CONTROL_RESET: u8 = 1;
/// Sessions kept per contact; the least recently used goes first.
pub const MAX_SESSIONS: usize = 4;
/// Bytes an envelope may add to a body: the Olm pre-key message's keys,
/// headers, padding (up to 16) and MAC, with room to spare.
pub const ENVELOPE_RESERVE: usize = 256;
/// Header of a reset: version, type, identity key, one-time key.
pub const RESET_HEADER: usize = 2 + 32 + 32;

/// The Olm session parameters every Umbra client uses (libolm's: AES-256-CBC,
/// HMAC-SHA-256 truncated to 8 bytes).
fn config() -> SessionConfig {
    SessionConfig::version_1()
}

fn key(bytes: &[u8; 32]) -> Curve25519PublicKey {
    Curve25519PublicKey::from_bytes(*bytes)
}

/// One identity's Olm account.
pub struct Olm {
    account: Account,
}

impl Default for Olm {
    fn default() -> Self {
        Self::new()
    }
}

impl Olm {
    /// A fresh account: a new identity key, no one-time keys.
    pub fn new() -> Self {
        Self {
            account: Account::new(),
        }
    }

    /// The account's Curve25519 identity key (what invites carry).
    pub fn identity_key(&self) -> [u8; 32] {
        self.account.curve25519_key().to_bytes()
    }

    /// A new one-time key, for one invite or one reset. The account keeps
    /// its secret until a pre-key message uses it (at most 5,000 unused
    /// ones: beyond that the oldest are forgotten).
    pub fn new_one_time_key(&mut self) -> [u8; 32] {
        let created = self.account.generate_one_time_keys(1).created;
        self.account.mark_keys_as_published();
        created
            .first()
            .map(|k| k.to_bytes())
            .unwrap_or_else(|| self.account.curve25519_key().to_bytes())
    }

    /// The account as bytes for the encrypted store (JSON; secret).
    pub fn pickle(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(&self.account.pickle()).unwrap_or_default())
    }

    /// The account from [`Self::pickle`]'s bytes.
    pub fn unpickle(bytes: &[u8]) -> Result<Self, Error> {
        let p: AccountPickle = serde_json::from_slice(bytes)
            .map_err(|_| Error::Store("unreadable Olm account record".into()))?;
        Ok(Self {
            account: Account::from_pickle(p),
        })
    }
}

/// Why an envelope did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Not an envelope of a version we read.
    Malformed,
    /// No session opens it: a lost one-time key, a session this side no
    /// longer has (a restored backup), a message key already used (a
    /// replay) or dropped (more than 40 skipped in one chain). The text
    /// says which, without secrets.
    Undecryptable(String),
}

/// The sessions with one contact, newest (or last used) first.
pub struct Sessions {
    /// The contact's Olm identity key (from their invite).
    their_identity: [u8; 32],
    list: Vec<Session>,
}

/// What the store keeps of [`Sessions`].
#[derive(Serialize, Deserialize)]
struct SessionsRecord {
    their_identity: [u8; 32],
    sessions: Vec<SessionPickle>,
}

impl Sessions {
    /// No session yet with the contact whose Olm identity key this is.
    pub fn new(their_identity: [u8; 32]) -> Self {
        Self {
            their_identity,
            list: Vec::new(),
        }
    }

    /// The contact's Olm identity key.
    pub fn their_identity(&self) -> [u8; 32] {
        self.their_identity
    }

    /// The contact has a new Olm account (they reinstalled, or lost their
    /// store but kept their identity): sessions start with this key now.
    pub fn set_their_identity(&mut self, key: [u8; 32]) {
        self.their_identity = key;
    }

    /// How many sessions are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.len()
    }

    /// Starts an outbound session to the contact's one-time (or fallback)
    /// key `their_key`; it becomes the one messages are sent with. Fails
    /// for a key of small order (the invite is unusable).
    pub fn start(&mut self, olm: &Olm, their_key: &[u8; 32]) -> Result<(), Error> {
        let s = olm
            .account
            .create_outbound_session(config(), key(&self.their_identity), key(their_key))
            .map_err(|e| Error::InvalidInvite(format!("unusable session key: {e}")))?;
        self.push_front(s);
        Ok(())
    }

    fn push_front(&mut self, s: Session) {
        self.list.insert(0, s);
        self.list.truncate(MAX_SESSIONS);
    }

    /// Encrypts `plaintext` with the first session: the envelope.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.seal_as(ENVELOPE_VERSION, plaintext)
    }

    /// [`Self::seal`] with the envelope version given ([`ENVELOPE_TYPED`]
    /// for typed content).
    pub fn seal_as(&mut self, version: u8, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let s = self
            .list
            .first_mut()
            .ok_or_else(|| Error::Internal("no session with the contact".into()))?;
        let m = s
            .encrypt(plaintext)
            .map_err(|e| Error::Internal(format!("olm encryption: {e}")))?;
        let (ty, bytes) = match &m {
            OlmMessage::PreKey(p) => (TYPE_PRE_KEY, p.to_bytes()),
            OlmMessage::Normal(n) => (TYPE_NORMAL, n.to_bytes()),
        };
        let mut out = Vec::with_capacity(2 + bytes.len());
        out.push(version);
        out.push(ty);
        out.extend_from_slice(&bytes);
        Ok(out)
    }

    /// Decrypts an envelope from the contact. A pre-key message opens with
    /// the session it names or starts a new one (using up one of `olm`'s
    /// one-time keys); a normal message with the first session that opens
    /// it. The session that opened it moves to the front.
    pub fn open(&mut self, olm: &mut Olm, envelope: &[u8]) -> Result<Vec<u8>, OpenError> {
        let [ENVELOPE_VERSION | ENVELOPE_TYPED, ty, rest @ ..] = envelope else {
            return Err(OpenError::Malformed);
        };
        let message = match *ty {
            TYPE_PRE_KEY => OlmMessage::PreKey(
                PreKeyMessage::from_bytes(rest).map_err(|_| OpenError::Malformed)?,
            ),
            TYPE_NORMAL => OlmMessage::Normal(
                vodozemac::olm::Message::from_bytes(rest).map_err(|_| OpenError::Malformed)?,
            ),
            _ => return Err(OpenError::Malformed),
        };
        let mut last = String::from("no session with the contact");
        match &message {
            OlmMessage::PreKey(p) => {
                let id = p.session_id();
                if let Some(i) = self.list.iter().position(|s| s.session_id() == id) {
                    return match self.list[i].decrypt(&message) {
                        Ok(plain) => {
                            let s = self.list.remove(i);
                            self.list.insert(0, s);
                            Ok(plain)
                        }
                        Err(e) => Err(OpenError::Undecryptable(e.to_string())),
                    };
                }
                // The sender's Olm identity key is taken from the message:
                // the outer layer (the pair secret) has already shown it
                // comes from the contact, who may have a new Olm account.
                match olm
                    .account
                    .create_inbound_session(config(), p.identity_key(), p)
                {
                    Ok(r) => {
                        self.their_identity = p.identity_key().to_bytes();
                        self.push_front(r.session);
                        Ok(r.plaintext)
                    }
                    Err(e) => Err(OpenError::Undecryptable(e.to_string())),
                }
            }
            OlmMessage::Normal(_) => {
                for i in 0..self.list.len() {
                    match self.list[i].decrypt(&message) {
                        Ok(plain) => {
                            let s = self.list.remove(i);
                            self.list.insert(0, s);
                            return Ok(plain);
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(OpenError::Undecryptable(last))
            }
        }
    }

    /// The sessions as bytes for the encrypted store (JSON; secret).
    pub fn pickle(&self) -> Zeroizing<Vec<u8>> {
        let r = SessionsRecord {
            their_identity: self.their_identity,
            sessions: self.list.iter().map(|s| s.pickle()).collect(),
        };
        Zeroizing::new(serde_json::to_vec(&r).unwrap_or_default())
    }

    /// The sessions from [`Self::pickle`]'s bytes.
    pub fn unpickle(bytes: &[u8]) -> Result<Self, Error> {
        let r: SessionsRecord = serde_json::from_slice(bytes)
            .map_err(|_| Error::Store("unreadable Olm session record".into()))?;
        Ok(Self {
            their_identity: r.their_identity,
            list: r.sessions.into_iter().map(Session::from_pickle).collect(),
        })
    }
}

/// A session reset: "start a new session with this one-time key; I could
/// not decrypt these messages of yours". It travels under the outer layer
/// only (the pair secret authenticates it), so that it gets through when
/// the sessions are what broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// The sender's Olm identity key (a new one replaces the one we knew).
    pub identity: [u8; 32],
    /// A fresh one-time key of the sender's.
    pub one_time_key: [u8; 32],
    /// The messages it could not decrypt.
    pub undecryptable: Vec<[u8; 16]>,
}

impl Reset {
    /// The body of a control fragment.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(RESET_HEADER + 16 * self.undecryptable.len());
        v.push(ENVELOPE_VERSION);
        v.push(CONTROL_RESET);
        v.extend_from_slice(&self.identity);
        v.extend_from_slice(&self.one_time_key);
        for id in &self.undecryptable {
            v.extend_from_slice(id);
        }
        v
    }

    /// Reads a control body; `None` if it is not a reset of this version.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < RESET_HEADER
            || b[0] != ENVELOPE_VERSION
            || b[1] != CONTROL_RESET
            || !(b.len() - RESET_HEADER).is_multiple_of(16)
        {
            return None;
        }
        let identity = b[2..34].try_into().ok()?;
        let one_time_key = b[34..66].try_into().ok()?;
        let undecryptable = b[RESET_HEADER..]
            .chunks_exact(16)
            .filter_map(|c| c.try_into().ok())
            .collect();
        Some(Self {
            identity,
            one_time_key,
            undecryptable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alice and Bob as after exchanging invites: each has the other's
    /// identity key, Alice starts a session with the one-time key of Bob's
    /// invite.
    fn pair() -> (Olm, Sessions, Olm, Sessions) {
        let alice = Olm::new();
        let mut bob = Olm::new();
        let otk = bob.new_one_time_key();
        let mut a = Sessions::new(bob.identity_key());
        let b = Sessions::new(alice.identity_key());
        a.start(&alice, &otk).unwrap();
        (alice, a, bob, b)
    }

    /// The device's state as a thief copies it: what the store holds.
    fn copy(olm: &Olm, s: &Sessions) -> (Olm, Sessions) {
        (
            Olm::unpickle(&olm.pickle()).unwrap(),
            Sessions::unpickle(&s.pickle()).unwrap(),
        )
    }

    #[test]
    fn first_message_starts_the_session_and_both_sides_talk() {
        let (mut alice, mut a, mut bob, mut b) = pair();
        let e1 = a.seal(b"hello bob").unwrap();
        assert_eq!(e1[1], TYPE_PRE_KEY);
        assert_eq!(b.open(&mut bob, &e1).unwrap(), b"hello bob");
        let r = b.seal(b"hello alice").unwrap();
        assert_eq!(r[1], TYPE_NORMAL, "bob has received: a normal message");
        assert_eq!(a.open(&mut alice, &r).unwrap(), b"hello alice");
        let e2 = a.seal(b"again").unwrap();
        assert_eq!(e2[1], TYPE_NORMAL, "alice has received: no more pre-keys");
        assert_eq!(b.open(&mut bob, &e2).unwrap(), b"again");
        assert_eq!((a.len(), b.len()), (1, 1));
    }

    #[test]
    fn a_copied_device_reads_nothing_from_before_forward_secrecy() {
        let (mut alice, mut a, mut bob, mut b) = pair();
        // Before t: a conversation, recorded by an observer of the boxes.
        let mut recorded_to_bob = Vec::new();
        let mut recorded_to_alice = Vec::new();
        for i in 0..5 {
            let m = a.seal(format!("a{i}").as_bytes()).unwrap();
            b.open(&mut bob, &m).unwrap();
            recorded_to_bob.push(m);
            let r = b.seal(format!("b{i}").as_bytes()).unwrap();
            a.open(&mut alice, &r).unwrap();
            recorded_to_alice.push(r);
        }
        // t: Bob's device state is copied.
        let (mut thief_olm, mut thief) = copy(&bob, &b);
        for m in &recorded_to_bob {
            assert!(
                thief.open(&mut thief_olm, m).is_err(),
                "a message Bob received before the copy must not open with it"
            );
        }
        // Bob's own past messages: his sending chains moved on (and Olm never
        // decrypts its own messages).
        for r in &recorded_to_alice {
            assert!(thief.open(&mut thief_olm, r).is_err());
        }
        // The copy is not broken: a message Bob had not received yet at t
        // does open with it (what forward secrecy cannot cover).
        let late = a.seal(b"in flight at t").unwrap();
        let (mut o2, mut t2) = copy(&bob, &b);
        assert_eq!(t2.open(&mut o2, &late).unwrap(), b"in flight at t");
    }

    #[test]
    fn after_both_sides_sent_again_the_copy_reads_nothing_post_compromise() {
        let (mut alice, mut a, mut bob, mut b) = pair();
        let m = a.seal(b"hi").unwrap();
        b.open(&mut bob, &m).unwrap();
        let r = b.seal(b"hi back").unwrap();
        a.open(&mut alice, &r).unwrap();
        // t: Bob's state is copied; the thief then only listens.
        let (mut thief_olm, mut thief) = copy(&bob, &b);
        // Alice sends once more: the thief still follows (it holds Bob's
        // ratchet secret) — healing needs Bob's next ratchet step.
        let m1 = a.seal(b"alice after t").unwrap();
        assert_eq!(
            thief.open(&mut thief_olm, &m1).unwrap(),
            b"alice after t",
            "before Bob sends again the copy still reads (the test can fail)"
        );
        assert_eq!(b.open(&mut bob, &m1).unwrap(), b"alice after t");
        // Bob sends once more: a fresh ratchet key the copy never saw.
        let r1 = b.seal(b"bob after t").unwrap();
        assert_eq!(a.open(&mut alice, &r1).unwrap(), b"bob after t");
        // From now on, nothing Alice sends opens with the copy.
        for i in 0..3 {
            let m = a.seal(format!("healed {i}").as_bytes()).unwrap();
            let (mut o, mut s) = (
                Olm::unpickle(&thief_olm.pickle()).unwrap(),
                Sessions::unpickle(&thief.pickle()).unwrap(),
            );
            assert!(
                s.open(&mut o, &m).is_err(),
                "message {i} after both sides sent again opened with the copy"
            );
            assert_eq!(
                b.open(&mut bob, &m).unwrap(),
                format!("healed {i}").as_bytes()
            );
            let r = b.seal(b"ok").unwrap();
            assert!(s.open(&mut o, &r).is_err());
            a.open(&mut alice, &r).unwrap();
        }
    }

    #[test]
    fn replays_are_refused_and_reordering_is_bounded_by_the_skipped_key_limit() {
        let (mut alice, mut a, mut bob, mut b) = pair();
        let first = a.seal(b"first").unwrap();
        b.open(&mut bob, &first).unwrap();
        let r = b.seal(b"r").unwrap();
        a.open(&mut alice, &r).unwrap();
        // Replay: the message key is gone after its first use.
        let m = a.seal(b"once").unwrap();
        assert_eq!(b.open(&mut bob, &m).unwrap(), b"once");
        assert!(matches!(
            b.open(&mut bob, &m),
            Err(OpenError::Undecryptable(_))
        ));
        // Replaying the pre-key message does not start a second session:
        // the session it names opens it, and its key was used.
        assert!(b.open(&mut bob, &first).is_err());
        assert_eq!(b.len(), 1);
        // Reordered within the limit: all open, in any order.
        let ms: Vec<Vec<u8>> = (0..10)
            .map(|i| a.seal(format!("m{i}").as_bytes()).unwrap())
            .collect();
        for i in [9, 3, 0, 5, 1, 2, 8, 4, 7, 6] {
            assert_eq!(
                b.open(&mut bob, &ms[i]).unwrap(),
                format!("m{i}").as_bytes()
            );
        }
        // Beyond it: vodozemac keeps 40 skipped message keys per chain, so
        // when the 46th message of a chain comes first, the oldest 5 of the
        // 45 skipped ones are dropped and those messages never open.
        let ms: Vec<Vec<u8>> = (0..46).map(|_| a.seal(b"x").unwrap()).collect();
        b.open(&mut bob, &ms[45]).unwrap();
        let opened: Vec<bool> = ms[..45]
            .iter()
            .map(|m| b.open(&mut bob, m).is_ok())
            .collect();
        assert_eq!(opened.iter().filter(|o| !**o).count(), 5);
        assert!(opened[..5].iter().all(|o| !o) && opened[5..].iter().all(|o| *o));
        // The session goes on.
        let m = a.seal(b"still").unwrap();
        assert_eq!(b.open(&mut bob, &m).unwrap(), b"still");
    }

    /// Olm keeps the 5 newest receiving chains of a session: a message
    /// that arrives after its sender's chain was followed by five more
    /// ratchet steps (five round trips of a conversation) does not open.
    /// Why the receiver hands envelopes over in send order and waits
    /// `reorder_settle` as long as `reorder_hold` for a session's first
    /// message: had Alice started at Bob's second message, his first
    /// would be lost after five answers.
    #[test]
    fn a_message_five_ratchet_steps_late_does_not_open() {
        for (rounds, opens) in [(0, true), (4, true), (5, false), (8, false)] {
            let (mut alice, mut a, mut bob, mut b) = pair();
            let first = a.seal(b"first").unwrap();
            let second = a.seal(b"second").unwrap();
            // Bob starts the session at the second message (same chain).
            assert_eq!(b.open(&mut bob, &second).unwrap(), b"second");
            for _ in 0..rounds {
                let r = b.seal(b"ping").unwrap();
                a.open(&mut alice, &r).unwrap();
                let m = a.seal(b"pong").unwrap();
                b.open(&mut bob, &m).unwrap();
            }
            let late = b.open(&mut bob, &first);
            assert_eq!(late.is_ok(), opens, "{rounds} round trips: {late:?}");
            if opens {
                assert_eq!(late.unwrap(), b"first");
            }
        }
    }

    #[test]
    fn a_lost_one_time_key_fails_clearly_and_a_reset_recovers() {
        let alice = Olm::new();
        let mut bob = Olm::new();
        // Bob's device state from before he made his invite: restoring it
        // loses the invite's one-time key.
        let bob_backup = bob.pickle();
        let otk = bob.new_one_time_key();
        let mut a = Sessions::new(bob.identity_key());
        a.start(&alice, &otk).unwrap();
        let mut bob = Olm::unpickle(&bob_backup).unwrap();
        let mut b = Sessions::new(alice.identity_key());
        let m = a.seal(b"lost?").unwrap();
        let Err(OpenError::Undecryptable(why)) = b.open(&mut bob, &m) else {
            panic!("opened without the one-time key");
        };
        assert!(why.contains("one-time key"), "{why}");
        // Bob answers with a reset carrying a fresh one-time key; Alice
        // starts a new session with it and her next message opens.
        let reset = Reset {
            identity: bob.identity_key(),
            one_time_key: bob.new_one_time_key(),
            undecryptable: vec![[7; 16]],
        };
        let got = Reset::decode(&reset.encode()).unwrap();
        assert_eq!(got, reset);
        a.start(&alice, &got.one_time_key).unwrap();
        let again = a.seal(b"lost? (sent again)").unwrap();
        assert_eq!(b.open(&mut bob, &again).unwrap(), b"lost? (sent again)");
    }

    #[test]
    fn a_restored_old_backup_fails_clearly_and_a_reset_recovers() {
        let (mut alice, mut a, mut bob, mut b) = pair();
        let m = a.seal(b"1").unwrap();
        b.open(&mut bob, &m).unwrap();
        let r = b.seal(b"r").unwrap();
        a.open(&mut alice, &r).unwrap();
        // Alice's backup. (A backup taken while her chain is still the
        // pre-key one would not break: Bob keeps that chain, and its next
        // index is unused, so Olm opens it.)
        let (old_alice, old_a) = copy(&alice, &a);
        // Later traffic both ways, then Alice restores the old backup.
        for _ in 0..3 {
            let r = b.seal(b"b").unwrap();
            a.open(&mut alice, &r).unwrap();
            let m = a.seal(b"a").unwrap();
            b.open(&mut bob, &m).unwrap();
        }
        let (mut alice, mut a) = (old_alice, old_a);
        // Her next message reuses a chain Bob has moved past: it fails.
        let stale = a.seal(b"from the backup").unwrap();
        assert!(matches!(
            b.open(&mut bob, &stale),
            Err(OpenError::Undecryptable(_))
        ));
        // Bob's messages fail at her side too.
        let r = b.seal(b"to the backup").unwrap();
        assert!(a.open(&mut alice, &r).is_err());
        // Reset from Bob: Alice's new session works; Bob keeps the old one
        // for messages still in flight and moves to the new one.
        a.start(&alice, &bob.new_one_time_key()).unwrap();
        let m = a.seal(b"fresh").unwrap();
        assert_eq!(b.open(&mut bob, &m).unwrap(), b"fresh");
        assert_eq!(b.len(), 2);
        let r = b.seal(b"fresh back").unwrap();
        assert_eq!(a.open(&mut alice, &r).unwrap(), b"fresh back");
    }

    #[test]
    fn both_sides_starting_at_once_keep_both_sessions_and_settle() {
        let mut alice = Olm::new();
        let mut bob = Olm::new();
        let (ka, kb) = (alice.new_one_time_key(), bob.new_one_time_key());
        let mut a = Sessions::new(bob.identity_key());
        let mut b = Sessions::new(alice.identity_key());
        a.start(&alice, &kb).unwrap();
        b.start(&bob, &ka).unwrap();
        let ma = a.seal(b"from a").unwrap();
        let mb = b.seal(b"from b").unwrap();
        assert_eq!(b.open(&mut bob, &ma).unwrap(), b"from a");
        assert_eq!(a.open(&mut alice, &mb).unwrap(), b"from b");
        // Ping-pong: every message opens, whichever session each side picked.
        for i in 0..4 {
            let m = a.seal(format!("{i}").as_bytes()).unwrap();
            assert_eq!(b.open(&mut bob, &m).unwrap(), format!("{i}").as_bytes());
            let r = b.seal(format!("{i}").as_bytes()).unwrap();
            assert_eq!(a.open(&mut alice, &r).unwrap(), format!("{i}").as_bytes());
        }
    }

    #[test]
    fn sizes_of_the_envelope() {
        let (mut alice, mut a, mut bob, mut b) = pair();
        let pre = a.seal(&[0u8; 100]).unwrap();
        b.open(&mut bob, &pre).unwrap();
        let r = b.seal(&[0u8; 100]).unwrap();
        a.open(&mut alice, &r).unwrap();
        let normal = a.seal(&[0u8; 100]).unwrap();
        // 100 bytes pad to 112 (PKCS#7 to 16); the rest is overhead.
        let (pre_over, normal_over) = (pre.len() - 100, normal.len() - 100);
        println!("envelope overhead on 100 bytes: pre-key {pre_over}, normal {normal_over}");
        assert!(pre_over <= ENVELOPE_RESERVE && normal_over < pre_over);
        // The largest body one fragment carries, as a pre-key message (the
        // first of a session) and as a normal one.
        let fits = |s: &Sessions| {
            (0..crate::CHUNK_LEN)
                .rev()
                .find(|n| {
                    let mut probe = Sessions::unpickle(&s.pickle()).unwrap();
                    probe.seal(&vec![0u8; *n]).unwrap().len() <= crate::CHUNK_LEN
                })
                .unwrap()
        };
        let mut fresh = Sessions::new(bob.identity_key());
        fresh.start(&alice, &bob.new_one_time_key()).unwrap();
        let (pre_fit, normal_fit) = (fits(&fresh), fits(&a));
        println!(
            "one fragment ({} bytes) carries a body of up to {pre_fit} bytes as a pre-key message, {normal_fit} as a normal one",
            crate::CHUNK_LEN
        );
        assert!(pre_fit >= 1300 && normal_fit > pre_fit);
        let big = a.seal(&vec![0u8; 1 << 20]).unwrap();
        println!("envelope overhead on 1 MiB: {}", big.len() - (1 << 20));
        assert!(big.len() - (1 << 20) <= ENVELOPE_RESERVE);
        assert!(Reset::decode(&[1, 1, 0]).is_none());
        assert!(Sessions::new([1; 32]).open(&mut bob, &[9, 9, 9]) == Err(OpenError::Malformed));
    }
}
