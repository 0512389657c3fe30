//! Batch acknowledgements (protocol.md §11.1): which slots of each batch of
//! `StoreBatched` requests are durably stored, and the `AckBatch` requests
//! waiting for the rest. Sans-IO: time is an argument, and what to send is
//! returned; `R` is whatever the caller needs to send a reply (the SURB and
//! the node it leaves from).
//!
//! Everything is bounded: at most `cap` batches are remembered (the oldest
//! is forgotten first, answering what waits on it), each for
//! [`KEEP_MS`]; at most [`MAX_WAITING`] requests wait at once, and a
//! request beyond that is answered at once with what is known.

use protocol::messages::{BATCH_MAX, BatchAck, MAX_BATCH_WAIT_MS, StoreRefused};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// How long a batch's slots are remembered after its first slot or request
/// arrived: long enough for a sender to ask again after a lost answer.
pub const KEEP_MS: u64 = 10 * 60 * 1000;
/// Requests waiting for stragglers at once, over all batches.
pub const MAX_WAITING: usize = 16_384;

/// A request waiting for the rest of its batch.
struct Ask<R> {
    count: u8,
    due_ms: u64,
    reply: R,
}

struct Entry<R> {
    /// Slots stored durably.
    stored: u32,
    /// Slots refused (and the reason of the last refusal).
    refused: u32,
    reason: Option<StoreRefused>,
    created_ms: u64,
    waiting: Vec<Ask<R>>,
}

impl<R> Entry<R> {
    fn answer(&self, count: u8) -> BatchAck {
        BatchAck {
            count,
            stored: self.stored & mask(count),
            refused: self.reason.filter(|_| self.refused & mask(count) != 0),
        }
    }

    fn complete(&self, count: u8) -> bool {
        let m = mask(count);
        (self.stored | self.refused) & m == m
    }
}

/// Bits of slots `0..count`.
fn mask(count: u8) -> u32 {
    match u32::from(count) {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => (1u32 << n) - 1,
    }
}

/// The batches a gateway is tracking.
pub struct Batches<R> {
    entries: HashMap<[u8; 16], Entry<R>>,
    /// Batches by age, to forget the oldest (an entry forgotten early and
    /// made again has a newer time: stale rows are skipped).
    order: VecDeque<([u8; 16], u64)>,
    /// Waiting requests by when their wait ends.
    deadlines: BTreeSet<(u64, [u8; 16])>,
    waiting: usize,
    cap: usize,
}

impl<R> Batches<R> {
    /// Tracks at most `cap` batches.
    pub fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            deadlines: BTreeSet::new(),
            waiting: 0,
            cap: cap.max(1),
        }
    }

    /// Batches remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// The entry of `batch`, made if new (forgetting the oldest at the cap).
    fn entry(&mut self, batch: [u8; 16], now_ms: u64, out: &mut Vec<(R, BatchAck)>) {
        if self.entries.contains_key(&batch) {
            return;
        }
        while self.entries.len() >= self.cap {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            self.forget(&old, at, out);
        }
        self.order.push_back((batch, now_ms));
        self.entries.insert(
            batch,
            Entry {
                stored: 0,
                refused: 0,
                reason: None,
                created_ms: now_ms,
                waiting: Vec::new(),
            },
        );
    }

    /// Forgets `batch` if it is the one made at `at`, answering what waits
    /// on it with what is known.
    fn forget(&mut self, batch: &[u8; 16], at: u64, out: &mut Vec<(R, BatchAck)>) {
        if self.entries.get(batch).is_none_or(|e| e.created_ms != at) {
            return;
        }
        let Some(e) = self.entries.remove(batch) else {
            return;
        };
        self.take(batch, e, |_| true, out);
    }

    /// Answers the requests of entry `e` (of `batch`) that `pick` selects;
    /// returns the entry with the others.
    fn take(
        &mut self,
        batch: &[u8; 16],
        mut e: Entry<R>,
        pick: impl Fn(&Ask<R>) -> bool,
        out: &mut Vec<(R, BatchAck)>,
    ) -> Entry<R> {
        let (done, keep): (Vec<_>, Vec<_>) = e.waiting.drain(..).partition(|a| pick(a));
        e.waiting = keep;
        for a in done {
            self.waiting -= 1;
            self.deadlines.remove(&(a.due_ms, *batch));
            // Another request of the batch may share the deadline.
            for k in &e.waiting {
                if k.due_ms == a.due_ms {
                    self.deadlines.insert((k.due_ms, *batch));
                }
            }
            out.push((a.reply, e.answer(a.count)));
        }
        e
    }

    /// Slot `slot` of `batch` was committed (`Ok`) or refused. Returns the
    /// requests it completes, with their answers.
    pub fn stored(
        &mut self,
        batch: [u8; 16],
        slot: u8,
        outcome: Result<(), StoreRefused>,
        now_ms: u64,
    ) -> Vec<(R, BatchAck)> {
        let mut out = Vec::new();
        if usize::from(slot) >= BATCH_MAX {
            return out;
        }
        self.entry(batch, now_ms, &mut out);
        let Some(mut e) = self.entries.remove(&batch) else {
            return out;
        };
        match outcome {
            Ok(()) => e.stored |= 1 << slot,
            Err(why) => {
                e.refused |= 1 << slot;
                e.reason = Some(why);
            }
        }
        let stored = e.stored | e.refused;
        let e = self.take(
            &batch,
            e,
            |a| stored & mask(a.count) == mask(a.count),
            &mut out,
        );
        self.entries.insert(batch, e);
        out
    }

    /// A request for `batch`'s first `count` slots arrived, asking to wait
    /// up to `wait_ms` for the rest. Returns the answers to send now: this
    /// one's if the batch is complete (or nothing more may wait), and any
    /// that making room answered.
    pub fn ask(
        &mut self,
        batch: [u8; 16],
        count: u8,
        wait_ms: u32,
        reply: R,
        now_ms: u64,
    ) -> Vec<(R, BatchAck)> {
        let mut out = Vec::new();
        let count = count.clamp(1, BATCH_MAX as u8);
        let full = self.waiting >= MAX_WAITING;
        self.entry(batch, now_ms, &mut out);
        let Some(e) = self.entries.get_mut(&batch) else {
            return out;
        };
        if e.complete(count) || wait_ms == 0 || full {
            out.push((reply, e.answer(count)));
            return out;
        }
        let due_ms = now_ms + u64::from(wait_ms.min(MAX_BATCH_WAIT_MS));
        e.waiting.push(Ask {
            count,
            due_ms,
            reply,
        });
        self.waiting += 1;
        self.deadlines.insert((due_ms, batch));
        out
    }

    /// Answers the requests whose wait is over, and forgets batches older
    /// than [`KEEP_MS`].
    pub fn due(&mut self, now_ms: u64) -> Vec<(R, BatchAck)> {
        let mut out = Vec::new();
        while let Some(&(at, batch)) = self.deadlines.first() {
            if at > now_ms {
                break;
            }
            self.deadlines.pop_first();
            if let Some(e) = self.entries.remove(&batch) {
                let e = self.take(&batch, e, |a| a.due_ms <= now_ms, &mut out);
                self.entries.insert(batch, e);
            }
        }
        while let Some((b, at)) = self.order.front().copied() {
            if at + KEEP_MS > now_ms {
                break;
            }
            self.order.pop_front();
            self.forget(&b, at, &mut out);
        }
        out
    }

    /// When [`Self::due`] next has an answer to give, if a request waits.
    pub fn next_due(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: [u8; 16] = [1; 16];

    #[test]
    fn a_request_after_every_slot_is_answered_at_once() {
        let mut t = Batches::new(8);
        for s in 0..3 {
            assert!(t.stored(B, s, Ok(()), 10).is_empty());
        }
        let out = t.ask(B, 3, 5000, "r", 11);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "r");
        assert_eq!(out[0].1.stored, 0b111);
        assert_eq!(out[0].1.refused, None);
        assert_eq!(t.waiting(), 0);
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn a_request_waits_for_stragglers_until_they_come_or_its_wait_ends() {
        let mut t = Batches::new(8);
        t.stored(B, 0, Ok(()), 0);
        assert!(t.ask(B, 3, 2000, "first", 100).is_empty());
        assert_eq!(t.next_due(), Some(2100));
        assert!(
            t.stored(B, 2, Ok(()), 150).is_empty(),
            "slot 1 still missing"
        );
        let out = t.stored(B, 1, Ok(()), 200);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.stored, 0b111);
        assert_eq!(t.next_due(), None);
        // A second batch whose slot 1 never comes: answered at its deadline
        // with what is there.
        let c = [2; 16];
        t.stored(c, 0, Ok(()), 0);
        assert!(t.ask(c, 2, 1000, "second", 300).is_empty());
        assert!(t.due(1299).is_empty());
        let out = t.due(1300);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].0, out[0].1.stored, out[0].1.count),
            ("second", 0b01, 2)
        );
        assert_eq!(t.waiting(), 0);
        // Asked again (its answer was lost): answered at once, the same.
        let out = t.ask(c, 2, 0, "again", 2000);
        assert_eq!(out[0].1.stored, 0b01);
    }

    #[test]
    fn a_refusal_completes_its_slot_and_is_told() {
        let mut t = Batches::new(8);
        t.stored(B, 0, Ok(()), 0);
        assert!(t.ask(B, 2, 5000, (), 1).is_empty());
        let out = t.stored(B, 1, Err(StoreRefused::BoxFull), 2);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.stored, 0b01);
        assert_eq!(out[0].1.refused, Some(StoreRefused::BoxFull));
    }

    #[test]
    fn batches_are_bounded_and_forgotten_after_keep_ms() {
        let mut t = Batches::new(2);
        assert!(t.ask([1; 16], 2, 5000, 1, 0).is_empty());
        t.stored([2; 16], 0, Ok(()), 1);
        // A third batch forgets the oldest, answering its waiting request.
        let out = t.stored([3; 16], 0, Ok(()), 2);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1.stored), (1, 0));
        assert_eq!(t.len(), 2);
        assert_eq!(t.waiting(), 0);
        assert_eq!(t.next_due(), None);
        assert!(t.due(KEEP_MS).is_empty());
        assert_eq!(t.len(), 2);
        assert!(t.due(KEEP_MS + 1).is_empty());
        assert_eq!(t.len(), 1, "the batch made at 1 ms is gone at KEEP_MS + 1");
        t.due(KEEP_MS + 2);
        assert_eq!(t.len(), 0);
        // Out-of-range slots are ignored.
        assert!(t.stored(B, BATCH_MAX as u8, Ok(()), 0).is_empty());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn two_requests_of_one_batch_with_one_deadline_are_both_answered() {
        let mut t = Batches::new(8);
        assert!(t.ask(B, 1, 1000, "a", 0).is_empty());
        assert!(t.ask(B, 2, 1000, "b", 0).is_empty());
        let out = t.stored(B, 0, Ok(()), 10);
        assert_eq!(out.len(), 1, "slot 0 completes the request for one slot");
        assert_eq!(t.next_due(), Some(1000));
        let out = t.due(1000);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1.stored), ("b", 0b01));
        assert_eq!(t.waiting(), 0);
    }
}
