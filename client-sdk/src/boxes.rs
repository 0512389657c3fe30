//! One dropbox as its reader sees it, and the content encryption of the
//! messages in it. Sans-IO: times are the client's seconds, passed in.
//!
//! The reader fetches a box by cursor: a *probe* asks for what lies above
//! everything known, with a listing of the seqs there; *window* fetches ask
//! for listed messages not received yet, many at once. Replies overtake each
//! other in the mixnet and may be lost, so what a box holds is learnt only
//! from exact answers, and a message is confirmed (deleted at the gateway by
//! the next fetch's `after_seq`) only once every message below it was
//! received: nothing is deleted unread.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use protocol::dropbox::Dropbox;
use protocol::messages::FETCH_SURBS;
use rand::CryptoRng;
use std::collections::{BTreeMap, BTreeSet};

/// Window fetches of one box in flight at once while it holds more (each
/// returns up to [`FETCH_SURBS`] messages): enough to drain a box at the
/// payload rate across a round trip of several seconds.
pub(crate) const FETCH_WINDOW: usize = 32;

/// Bytes of the random nonce before each ciphertext.
pub(crate) const NONCE_LEN: usize = 12;
/// Bytes of the AEAD tag.
pub(crate) const TAG_LEN: usize = 16;

/// Encrypts `plaintext` for `dropbox`: ChaCha20-Poly1305 under its content
/// key, a random nonce first, the box id as associated data.
pub(crate) fn seal<R: CryptoRng + ?Sized>(
    dropbox: &Dropbox,
    plaintext: &[u8],
    rng: &mut R,
) -> Option<Vec<u8>> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&dropbox.content_key));
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &dropbox.id,
            },
        )
        .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Some(out)
}

/// Opens what [`seal`] made for `dropbox`; `None` if it is not ours or was altered.
pub(crate) fn open(dropbox: &Dropbox, ciphertext: &[u8]) -> Option<Vec<u8>> {
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

/// The reader's knowledge of one box.
pub(crate) struct BoxState {
    pub(crate) dropbox: Dropbox,
    /// Every message with seq ≤ this was received; the next fetch confirms it.
    pub(crate) confirmed: u64,
    /// Received seqs above `confirmed`.
    pub(crate) received: BTreeSet<u64>,
    /// The box may hold more: keep fetching it (true until a reply says otherwise).
    pub(crate) more: bool,
    /// Seqs known to be in the box above `confirmed`: every message with a
    /// seq in `(confirmed, list_end]` is here (replies and listings name
    /// the first messages above a cursor, so their seqs are exact).
    pub(crate) listed: BTreeSet<u64>,
    pub(crate) list_end: u64,
    /// The box holds messages beyond `list_end`.
    pub(crate) beyond: bool,
    /// Window fetches in flight: cursor → sent at (client seconds).
    pub(crate) outstanding: BTreeMap<u64, f64>,
    /// How many messages this box was seen to hold, all told (each seq
    /// counts once, when first listed). From
    /// [`dropbox::NEXT_BOX_AFTER`](protocol::dropbox::NEXT_BOX_AFTER) on,
    /// the period's next box is fetched too.
    pub(crate) seen: u64,
}

impl BoxState {
    pub(crate) fn new(dropbox: Dropbox) -> Self {
        Self {
            dropbox,
            confirmed: 0,
            received: BTreeSet::new(),
            more: true,
            listed: BTreeSet::new(),
            list_end: 0,
            beyond: false,
            outstanding: BTreeMap::new(),
            seen: 0,
        }
    }

    /// Where a probe (a fetch with a listing) starts: above what is known.
    pub(crate) fn probe_cursor(&self) -> u64 {
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
    /// neither received nor asked for within `timeout` seconds of `now`;
    /// records it as asked at `now`.
    pub(crate) fn next_window(&mut self, now: f64, timeout: f64) -> Option<u64> {
        self.forget_outstanding(now, timeout);
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
        self.outstanding.insert(c, now);
        Some(c)
    }

    /// Forgets window fetches asked more than `timeout` seconds before `now`:
    /// their answers are not coming.
    pub(crate) fn forget_outstanding(&mut self, now: f64, timeout: f64) {
        self.outstanding.retain(|_, at| now - *at < timeout);
    }

    /// A reply or listing named `seqs`: the first messages above `cursor`
    /// (and `remaining` more), answering a fetch sent when the box was known
    /// up to `known` (its [`probe_cursor`](Self::probe_cursor) then). Then
    /// confirms every message received in a row.
    pub(crate) fn learn(&mut self, cursor: u64, known: u64, seqs: &[u64], remaining: u32) {
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
                self.seen += u64::from(self.listed.insert(*s));
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
    pub(crate) fn wants(&self, seq: u64) -> bool {
        seq > self.confirmed && !self.received.contains(&seq)
    }

    /// Listed messages not received yet.
    pub(crate) fn unread(&self) -> usize {
        self.listed
            .iter()
            .filter(|s| !self.received.contains(s))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::dropbox::PairSecret;

    #[test]
    fn sealed_messages_open_only_with_their_box() {
        let pair = PairSecret::from_bytes([1; 32]);
        let a = pair.dropbox(&[1; 32], &[2; 32], 5);
        let b = pair.dropbox(&[1; 32], &[2; 32], 6);
        let ct = seal(&a, b"hi", &mut rand::rng()).unwrap();
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
        let t = 60.0;
        assert_eq!(st.next_window(0.0, t), None, "nothing listed yet");
        assert_eq!(st.probe_cursor(), 0);
        // A probe from 0 lists 10..=120 (step 10); its first reply carried 10.
        let all: Vec<u64> = (1..=12).map(|i| i * 10).collect();
        st.received.insert(10);
        st.learn(0, 0, &all, 0);
        assert_eq!(st.confirmed, 10);
        assert_eq!((st.list_end, st.beyond), (120, false));
        // Windows ask just below the first listed messages not yet asked for.
        assert_eq!(st.next_window(0.0, t), Some(10)); // answers 20, 30, 40, 50
        assert_eq!(st.next_window(0.0, t), Some(50)); // answers 60, 70, 80, 90
        assert_eq!(st.next_window(0.0, t), Some(90));
        assert_eq!(st.next_window(0.0, t), None, "everything asked for");
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
        assert_eq!(st.next_window(0.0, 60.0), Some(0));
        // An empty answer to a fetch that left knowing 10: it expired.
        st.learn(0, 20, &[], 0);
        assert!(st.listed.is_empty());
        assert_eq!(st.next_window(0.0, 0.0), None);
        // Answers a bad gateway might give do not panic the client.
        st.learn(30, 30, &[], 5);
        st.learn(30, 30, &[7, 3], 0);
    }

    #[test]
    fn seen_counts_each_message_once_however_often_it_is_listed() {
        let pair = PairSecret::from_bytes([1; 32]);
        let mut st = BoxState::new(pair.dropbox(&[1; 32], &[2; 32], 5));
        st.learn(0, 0, &[10, 20, 30], 2);
        st.learn(0, 30, &[10, 20, 30], 2); // the same listing again
        assert_eq!(st.seen, 3);
        st.learn(30, 30, &[40, 50], 0);
        assert_eq!(st.seen, 5);
        // Received and confirmed away: still counted, and not again.
        for s in [10, 20, 30, 40, 50] {
            st.received.insert(s);
        }
        st.learn(50, 50, &[], 0);
        assert_eq!(st.confirmed, 50);
        st.learn(0, 50, &[10, 20, 60], 0);
        assert_eq!(st.seen, 6, "only 60 is new");
    }

    mod fetch_model {
        use super::*;
        use proptest::prelude::*;
        use protocol::messages::MAX_LISTING;

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
                            let t = if expired { 0.0 } else { 3600.0 };
                            if let Some(c) = w.st.next_window(0.0, t) { w.send(c, false) }
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
                    while let Some(c) = w.st.next_window(0.0, 0.0) {
                        w.send(c, false);
                        if w.requests.len() > FETCH_WINDOW { break; }
                    }
                }
                let all: BTreeSet<u64> = (1..w.gw.next).collect();
                let got: BTreeSet<u64> = w.ever.union(&expired).copied().collect();
                prop_assert_eq!(&got, &all, "not every stored message was received");
                // Nothing is left to ask for: no window fetch loops on a
                // message that is gone.
                prop_assert_eq!(w.st.next_window(0.0, 0.0), None);
            }
        }
    }
}
