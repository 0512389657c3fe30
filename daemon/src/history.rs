//! The daemon's record of conversations: every message sent and received,
//! with statuses, the contacts the user verified and how far each
//! conversation was read. The SDK hands a received message over once and
//! forgets it; the chat page needs it again after a reload, so the daemon
//! keeps it, in an encrypted store of its own (the SDK's store format, its
//! own file, the same passphrase).
//!
//! Sans-IO: [`History`] changes in memory and hands out [`Changes`] for the
//! caller to commit; it never reads a clock.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use client_sdk::state::Changes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Messages kept (the oldest go first beyond it).
pub const MAX_MESSAGES: usize = 50_000;
/// Bytes of attachment data kept; beyond it the oldest attachments keep
/// their metadata and thumbnail but lose their data.
pub const MAX_DATA_BYTES: usize = 256 * 1024 * 1024;
/// Bytes of thumbnails (base64) kept; beyond it the oldest lose theirs (a
/// contact could otherwise send 50,000 previews of 16 KiB each).
pub const MAX_THUMBNAIL_BYTES: usize = 32 * 1024 * 1024;

/// A conversation: with a contact or in a group (ids in hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conv {
    /// With a contact of the daemon's identity.
    Contact(String),
    /// In a group.
    Group(String),
}

impl Conv {
    fn key(&self) -> String {
        match self {
            Conv::Contact(c) => format!("c:{c}"),
            Conv::Group(g) => format!("g:{g}"),
        }
    }
}

/// An attachment's metadata, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// File name.
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Bytes of data.
    pub size: u64,
    /// Pictures: pixels (0 if not given).
    pub width: u16,
    /// See `width`.
    pub height: u16,
    /// Audio: milliseconds (0 if not given).
    pub duration_ms: u32,
    /// The thumbnail, base64 (empty if none).
    pub thumbnail: String,
}

impl AttachmentMeta {
    /// From the SDK's metadata.
    pub fn from_sdk(a: &client_sdk::Attachment) -> Self {
        Self {
            name: a.name.clone(),
            mime: a.mime.clone(),
            size: a.size,
            width: a.width,
            height: a.height,
            duration_ms: a.duration_ms,
            thumbnail: B64.encode(&a.thumbnail),
        }
    }

    /// To the SDK's metadata (the thumbnail decoded).
    pub fn to_sdk(&self) -> client_sdk::Attachment {
        client_sdk::Attachment {
            name: self.name.clone(),
            mime: self.mime.clone(),
            size: self.size,
            width: self.width,
            height: self.height,
            duration_ms: self.duration_ms,
            thumbnail: B64.decode(&self.thumbnail).unwrap_or_default(),
            preview_of: None,
        }
    }
}

/// One message, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The daemon's number for it.
    pub seq: u64,
    /// The SDK's id (the sender's), hex.
    pub id: String,
    /// Where it belongs.
    pub conversation: Conv,
    /// Who sent it (hex; the daemon's own identity for outgoing ones).
    pub from: String,
    /// Sent by this daemon.
    pub outgoing: bool,
    /// When it was sent or arrived (Unix ms, the network's clock).
    pub time_ms: u64,
    /// `text`, `image`, `audio`, `file` or `bytes`.
    pub kind: String,
    /// The text (text messages, and untyped bodies that are UTF-8).
    pub text: Option<String>,
    /// An attachment's metadata.
    pub attachment: Option<AttachmentMeta>,
    /// The attachment's data is here (false while only its preview arrived,
    /// or after it was dropped to keep the bound).
    pub has_data: bool,
    /// Outgoing only: the SDK's status, snake case.
    pub status: Option<String>,
    /// Incoming preview: the id (hex) of the message that carries the
    /// data, until it arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<String>,
    /// Incoming preview whose data arrived: that message's id (hex), so
    /// that a redelivery after a restart is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_id: Option<String>,
}

/// Order of statuses: a status never moves back (a late or stale report
/// of `sent` after `stored` is ignored). Failures are final.
fn rank(status: Option<&str>) -> u8 {
    match status {
        None | Some("queued") => 0,
        Some("sent") => 1,
        Some("stored") => 2,
        Some("read") => 3,
        Some(_) => 4,
    }
}

/// The daemon's record, in memory; every change comes with the records to write.
#[derive(Debug, Default)]
pub struct History {
    messages: BTreeMap<u64, Message>,
    data: HashMap<u64, Vec<u8>>,
    data_bytes: usize,
    thumb_bytes: usize,
    /// SDK message id (hex) of an outgoing message → its seq.
    outgoing: HashMap<String, u64>,
    verified: BTreeMap<String, bool>,
    read_upto: HashMap<String, u64>,
    next_seq: u64,
    /// Changes made in memory whose write failed, in order: written before
    /// the next ones.
    unsaved: Vec<Changes>,
}

fn msg_key(seq: u64) -> Vec<u8> {
    format!("msg/{seq:016x}").into_bytes()
}

fn data_key(seq: u64) -> Vec<u8> {
    format!("data/{seq:016x}").into_bytes()
}

impl History {
    /// Rebuilds the record from the store's records.
    pub fn restore(records: client_sdk::store::Records) -> Self {
        let mut h = History {
            next_seq: 1,
            ..Default::default()
        };
        for (k, v) in records {
            let Ok(k) = String::from_utf8(k) else {
                continue;
            };
            if let Some(seq) = k.strip_prefix("msg/") {
                if let (Ok(_), Ok(m)) = (
                    u64::from_str_radix(seq, 16),
                    serde_json::from_slice::<Message>(&v),
                ) {
                    if m.outgoing {
                        h.outgoing.insert(m.id.clone(), m.seq);
                    }
                    h.thumb_bytes += thumb_len(&m);
                    h.next_seq = h.next_seq.max(m.seq + 1);
                    h.messages.insert(m.seq, m);
                }
            } else if let Some(seq) = k.strip_prefix("data/") {
                if let Ok(seq) = u64::from_str_radix(seq, 16) {
                    h.data_bytes += v.len();
                    h.data.insert(seq, v);
                }
            } else if let Some(c) = k.strip_prefix("verified/") {
                h.verified.insert(c.to_string(), v == b"1");
            } else if let Some(c) = k.strip_prefix("read/")
                && let Ok(s) = std::str::from_utf8(&v).unwrap_or("").parse()
            {
                h.read_upto.insert(c.to_string(), s);
            }
        }
        h
    }

    /// Adds a message (its `seq` is assigned here) with its data, if any.
    pub fn add(&mut self, mut m: Message, data: Option<Vec<u8>>) -> (Message, Changes) {
        m.seq = self.next_seq;
        self.next_seq += 1;
        let mut ch = Changes::default();
        if m.outgoing {
            self.outgoing.insert(m.id.clone(), m.seq);
        }
        if let Some(d) = data {
            self.put_data(m.seq, d, &mut ch);
        }
        self.thumb_bytes += thumb_len(&m);
        ch.puts.push((msg_key(m.seq), to_json(&m)));
        self.messages.insert(m.seq, m.clone());
        while self.messages.len() > MAX_MESSAGES {
            let Some((&old, _)) = self.messages.iter().next() else {
                break;
            };
            self.forget(old, &mut ch);
        }
        self.bound_data(&mut ch);
        (m, ch)
    }

    fn forget(&mut self, seq: u64, ch: &mut Changes) {
        if let Some(m) = self.messages.remove(&seq) {
            self.thumb_bytes -= thumb_len(&m);
            self.outgoing.remove(&m.id);
            ch.deletes.push(msg_key(seq));
        }
        if let Some(d) = self.data.remove(&seq) {
            self.data_bytes -= d.len();
            ch.deletes.push(data_key(seq));
        }
    }

    fn put_data(&mut self, seq: u64, d: Vec<u8>, ch: &mut Changes) {
        self.data_bytes += d.len();
        ch.puts.push((data_key(seq), d.clone()));
        self.data.insert(seq, d);
    }

    /// Drops the oldest attachments' data beyond [`MAX_DATA_BYTES`], and
    /// the oldest thumbnails beyond [`MAX_THUMBNAIL_BYTES`].
    fn bound_data(&mut self, ch: &mut Changes) {
        if self.thumb_bytes > MAX_THUMBNAIL_BYTES {
            for (seq, m) in self.messages.iter_mut() {
                if self.thumb_bytes <= MAX_THUMBNAIL_BYTES {
                    break;
                }
                let n = thumb_len(m);
                if let (Some(a), true) = (m.attachment.as_mut(), n > 0) {
                    a.thumbnail.clear();
                    self.thumb_bytes -= n;
                    ch.puts.push((msg_key(*seq), to_json(m)));
                }
            }
        }
        while self.data_bytes > MAX_DATA_BYTES {
            let Some(&oldest) = self.data.keys().min() else {
                break;
            };
            if let Some(d) = self.data.remove(&oldest) {
                self.data_bytes -= d.len();
                ch.deletes.push(data_key(oldest));
            }
            if let Some(m) = self.messages.get_mut(&oldest) {
                m.has_data = false;
                ch.puts.push((msg_key(oldest), to_json(m)));
            }
        }
    }

    /// An incoming message is already recorded (a redelivery after a restart).
    pub fn has_incoming(&self, from: &str, id: &str) -> bool {
        self.messages.values().rev().any(|m| {
            !m.outgoing && m.from == from && (m.id == id || m.data_id.as_deref() == Some(id))
        })
    }

    /// The incoming preview waiting for data message `id` from `from`.
    pub fn awaiting(&self, from: &str, id: &str) -> Option<u64> {
        self.messages
            .values()
            .rev()
            .find(|m| !m.outgoing && m.from == from && m.awaiting.as_deref() == Some(id))
            .map(|m| m.seq)
    }

    /// Incoming previews whose data has not arrived: (seq, from, data id).
    pub fn awaiting_all(&self) -> Vec<(u64, String, String)> {
        self.messages
            .values()
            .filter_map(|m| {
                m.awaiting
                    .as_ref()
                    .map(|a| (m.seq, m.from.clone(), a.clone()))
            })
            .collect()
    }

    /// The data of a preview's message arrived.
    pub fn complete(&mut self, seq: u64, data: Vec<u8>) -> Option<(Message, Changes)> {
        let mut ch = Changes::default();
        let m = self.messages.get_mut(&seq)?;
        m.data_id = m.awaiting.take();
        m.has_data = true;
        let out = m.clone();
        ch.puts.push((msg_key(seq), to_json(&out)));
        self.put_data(seq, data, &mut ch);
        self.bound_data(&mut ch);
        Some((out, ch))
    }

    /// The seq of outgoing message `id` (hex).
    pub fn outgoing_seq(&self, id: &str) -> Option<u64> {
        self.outgoing.get(id).copied()
    }

    /// Sets an outgoing message's status; `None` if unknown or unchanged.
    pub fn set_status(&mut self, seq: u64, status: &str) -> Option<(Message, Changes)> {
        let m = self.messages.get_mut(&seq)?;
        if rank(Some(status)) <= rank(m.status.as_deref()) {
            return None; // the same, or a stale report of an earlier one
        }
        m.status = Some(status.to_string());
        let out = m.clone();
        let mut ch = Changes::default();
        ch.puts.push((msg_key(seq), to_json(&out)));
        Some((out, ch))
    }

    /// Outgoing messages whose status is not final: (seq, id hex).
    pub fn unfinished(&self) -> Vec<(u64, String)> {
        self.messages
            .values()
            .filter(|m| {
                m.outgoing && matches!(m.status.as_deref(), Some("queued") | Some("sent") | None)
            })
            .map(|m| (m.seq, m.id.clone()))
            .collect()
    }

    /// Keeps changes whose write failed, to be written first next time.
    pub fn push_unsaved(&mut self, ch: Changes) {
        self.unsaved.push(ch);
    }

    /// The changes whose write failed, in order (and forgets them).
    pub fn take_unsaved(&mut self) -> Vec<Changes> {
        std::mem::take(&mut self.unsaved)
    }

    /// A message.
    pub fn get(&self, seq: u64) -> Option<&Message> {
        self.messages.get(&seq)
    }

    /// A message's attachment data.
    pub fn data(&self, seq: u64) -> Option<&[u8]> {
        self.data.get(&seq).map(|d| d.as_slice())
    }

    /// Up to `limit` messages of a conversation before `before` (all if
    /// `None`), oldest first.
    pub fn page(&self, conv: &Conv, before: Option<u64>, limit: usize) -> Vec<Message> {
        let end = before.unwrap_or(u64::MAX);
        let mut out: Vec<Message> = self
            .messages
            .range(..end)
            .rev()
            .filter(|(_, m)| &m.conversation == conv)
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect();
        out.reverse();
        out
    }

    /// Incoming messages of a conversation after what was read, and the
    /// conversation's last seq.
    pub fn unread(&self, conv: &Conv) -> (u64, u64) {
        self.unread_all().get(conv).copied().unwrap_or((0, 0))
    }

    /// [`History::unread`] of every conversation, in one pass over the
    /// messages (a contact list would otherwise scan them once per contact).
    pub fn unread_all(&self) -> HashMap<&Conv, (u64, u64)> {
        let mut upto: HashMap<&Conv, u64> = HashMap::new();
        let mut out: HashMap<&Conv, (u64, u64)> = HashMap::new();
        for m in self.messages.values() {
            let c = &m.conversation;
            let read = *upto
                .entry(c)
                .or_insert_with(|| self.read_upto.get(&c.key()).copied().unwrap_or(0));
            let e = out.entry(c).or_default();
            e.1 = m.seq;
            if !m.outgoing && m.seq > read {
                e.0 += 1;
            }
        }
        out
    }

    /// Marks a conversation read up to its last message.
    pub fn mark_read(&mut self, conv: &Conv) -> Changes {
        let last = self.next_seq.saturating_sub(1);
        let k = conv.key();
        self.read_upto.insert(k.clone(), last);
        let mut ch = Changes::default();
        ch.puts.push((
            format!("read/{k}").into_bytes(),
            last.to_string().into_bytes(),
        ));
        ch
    }

    /// Whether the user verified a contact's safety number.
    pub fn verified(&self, contact: &str) -> bool {
        self.verified.get(contact).copied().unwrap_or(false)
    }

    /// Records (or clears) a contact's verification.
    pub fn set_verified(&mut self, contact: &str, on: bool) -> Changes {
        self.verified.insert(contact.to_string(), on);
        let mut ch = Changes::default();
        let k = format!("verified/{contact}").into_bytes();
        if on {
            ch.puts.push((k, b"1".to_vec()));
        } else {
            self.verified.remove(contact);
            ch.deletes.push(k);
        }
        ch
    }
}

fn thumb_len(m: &Message) -> usize {
    m.attachment.as_ref().map_or(0, |a| a.thumbnail.len())
}

fn to_json(m: &Message) -> Vec<u8> {
    serde_json::to_vec(m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conv: Conv, outgoing: bool, id: &str) -> Message {
        Message {
            seq: 0,
            id: id.into(),
            conversation: conv,
            from: if outgoing { "me".into() } else { "bob".into() },
            outgoing,
            time_ms: 1,
            kind: "text".into(),
            text: Some("hi".into()),
            attachment: None,
            has_data: false,
            status: outgoing.then(|| "queued".into()),
            awaiting: None,
            data_id: None,
        }
    }

    /// Replays the changes into a record set, as a store would hold it.
    fn apply(recs: &mut BTreeMap<Vec<u8>, Vec<u8>>, ch: Changes) {
        for (k, v) in ch.puts {
            recs.insert(k, v);
        }
        for k in ch.deletes {
            recs.remove(&k);
        }
    }

    #[test]
    fn what_is_written_restores_the_same_history() {
        let bob = Conv::Contact("bob".into());
        let mut h = History::restore(vec![]);
        let mut recs = BTreeMap::new();
        let (a, ch) = h.add(msg(bob.clone(), true, "01"), None);
        apply(&mut recs, ch);
        let (b, ch) = h.add(msg(bob.clone(), false, "02"), Some(vec![7; 10]));
        apply(&mut recs, ch);
        let (_, ch) = h.set_status(a.seq, "stored").unwrap();
        apply(&mut recs, ch);
        apply(&mut recs, h.set_verified("bob", true));
        assert_eq!(h.unread(&bob), (1, b.seq));
        apply(&mut recs, h.mark_read(&bob));
        assert_eq!(h.unread(&bob).0, 0);

        let back = History::restore(recs.into_iter().collect());
        assert_eq!(back.page(&bob, None, 10), h.page(&bob, None, 10));
        assert_eq!(back.get(a.seq).unwrap().status.as_deref(), Some("stored"));
        assert_eq!(back.data(b.seq), Some(&[7u8; 10][..]));
        assert!(back.verified("bob"));
        assert_eq!(back.unread(&bob).0, 0);
        assert_eq!(back.outgoing_seq("01"), Some(a.seq));
        // New messages continue the numbering.
        let mut back = back;
        let (c, _) = back.add(msg(bob, false, "03"), None);
        assert!(c.seq > b.seq);
    }

    #[test]
    fn pages_go_back_in_order_and_stay_in_their_conversation() {
        let (bob, grp) = (Conv::Contact("bob".into()), Conv::Group("g".into()));
        let mut h = History::restore(vec![]);
        for i in 0..10 {
            h.add(msg(bob.clone(), i % 2 == 0, &format!("{i}")), None);
            h.add(msg(grp.clone(), false, &format!("g{i}")), None);
        }
        let last = h.page(&bob, None, 3);
        assert_eq!(last.len(), 3);
        assert!(last.windows(2).all(|w| w[0].seq < w[1].seq));
        let before = h.page(&bob, Some(last[0].seq), 100);
        assert_eq!(before.len(), 7);
        assert!(before.iter().all(|m| m.conversation == bob));
        assert!(before.last().unwrap().seq < last[0].seq);
    }

    #[test]
    fn a_preview_is_completed_by_its_data() {
        let bob = Conv::Contact("bob".into());
        let mut h = History::restore(vec![]);
        let mut p = msg(bob, false, "aa");
        p.kind = "image".into();
        p.awaiting = Some("bb".into());
        let (p, _) = h.add(p, None);
        assert_eq!(h.awaiting("bob", "bb"), Some(p.seq));
        assert_eq!(h.awaiting("eve", "bb"), None);
        let (m, _) = h.complete(p.seq, vec![1, 2, 3]).unwrap();
        assert!(m.has_data && m.awaiting.is_none());
        assert_eq!(h.awaiting("bob", "bb"), None);
        // The data message handed over again after a restart is known.
        assert!(h.has_incoming("bob", "bb"));
        assert!(!h.has_incoming("eve", "bb"));
        assert_eq!(h.data(p.seq), Some(&[1u8, 2, 3][..]));
    }

    #[test]
    fn a_status_never_moves_back() {
        let mut h = History::restore(vec![]);
        let (m, _) = h.add(msg(Conv::Contact("bob".into()), true, "01"), None);
        assert!(h.set_status(m.seq, "stored").is_some());
        assert!(h.set_status(m.seq, "sent").is_none(), "stale");
        assert!(h.set_status(m.seq, "stored").is_none(), "unchanged");
        assert!(h.set_status(m.seq, "read").is_some());
        assert_eq!(h.get(m.seq).unwrap().status.as_deref(), Some("read"));
    }

    #[test]
    fn thumbnails_are_bounded_oldest_first() {
        let bob = Conv::Contact("bob".into());
        let mut h = History::restore(vec![]);
        let thumb = "A".repeat(20_000);
        let n = MAX_THUMBNAIL_BYTES / thumb.len() + 10;
        let mut first = 0;
        for i in 0..n {
            let mut m = msg(bob.clone(), false, &format!("{i}"));
            m.attachment = Some(AttachmentMeta {
                name: "x".into(),
                mime: "image/jpeg".into(),
                size: 1,
                width: 1,
                height: 1,
                duration_ms: 0,
                thumbnail: thumb.clone(),
            });
            let (m, _) = h.add(m, None);
            if i == 0 {
                first = m.seq;
            }
        }
        assert!(h.thumb_bytes <= MAX_THUMBNAIL_BYTES);
        assert!(
            h.get(first)
                .unwrap()
                .attachment
                .as_ref()
                .unwrap()
                .thumbnail
                .is_empty()
        );
        let last = h.page(&bob, None, 1).pop().unwrap();
        assert_eq!(last.attachment.unwrap().thumbnail, thumb);
    }

    #[test]
    fn attachment_data_is_bounded_oldest_first() {
        let bob = Conv::Contact("bob".into());
        let mut h = History::restore(vec![]);
        let chunk = MAX_DATA_BYTES / 3 + 1;
        let seqs: Vec<u64> = (0..3)
            .map(|i| {
                let mut m = msg(bob.clone(), false, &format!("{i}"));
                m.has_data = true;
                h.add(m, Some(vec![0; chunk])).0.seq
            })
            .collect();
        assert!(h.data(seqs[0]).is_none(), "the oldest data went");
        assert!(!h.get(seqs[0]).unwrap().has_data);
        assert!(h.data(seqs[1]).is_some() && h.data(seqs[2]).is_some());
        assert!(h.data_bytes <= MAX_DATA_BYTES);
    }
}
