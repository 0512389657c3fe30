//! What travels inside Sphinx payloads to and from a dropbox gateway.
//!
//! Requests are the plaintext of a forward packet whose final hop is the
//! gateway. Replies are the plaintext of a SURB reply, readable only by the
//! SURB's creator. All integers are big-endian.
//!
//! ```text
//! Store = 0x01 dropbox[32] len:u16 ciphertext[len]                   (len ≤ MAX_STORED_LEN)
//! Fetch = 0x02 dropbox[32] capability[32] signature[64] after_seq:u64 cursor:u64 list:u8
//!         timestamp_ms:u64 reply_epoch:u64 n:u8 surb[n][SURB_LEN]    (1 ≤ n ≤ FETCH_SURBS)
//! Drop  = 0x03 …                                                     (cover; discarded)
//! StoreAcked = 0x04 dropbox[32] reply_epoch:u64 surb[SURB_LEN] len:u16 ciphertext[len]
//!                                                          (len ≤ MAX_ACKED_STORED_LEN)
//! Ack   = ACK_BODY, sent through the SURB once the store is durable
//! StoreBatched = 0x05 dropbox[32] batch[16] slot:u8 len:u16 ciphertext[len]
//!                                                          (len ≤ MAX_BATCHED_STORED_LEN)
//! AckBatch = 0x06 batch[16] count:u8 wait_ms:u32 reply_epoch:u64 surb[SURB_LEN]
//! BatchAck = BATCH_ACK_PREFIX count:u8 stored[4] refused:u8, sent through the
//!            AckBatch's SURB once the batch's stores are durable (or its wait ended)
//! Reply = 0x01 count:u8 seq[count]:u64 remaining:u32 has:u8 [seq:u64 len:u16 ciphertext[len]]
//! ```
//!
//! A fetch is answered with exactly `n` replies, one per SURB; reply `i`
//! carries the `i`-th message if there is one. Every message the gateway
//! stored with `seq ≤ after_seq` is deleted first: a fetch confirms what
//! the previous one delivered. Replies carry the messages with seq above
//! `max(after_seq, cursor)`. With `list = 1` the last reply is instead a
//! [`Listing`] of up to [`MAX_LISTING`] seqs above that point: knowing them,
//! a client asks for exactly the messages it lacks (cursor = the seq before
//! one) with several fetches in flight, and drains a large box at its
//! payload rate instead of four messages per round trip. Seqs, unlike
//! positions, do not shift when a fetch deletes what was confirmed.
//!
//! ```text
//! Listing = 0x02 count:u16 seq[count]:u64 remaining:u32
//! ```
//!
//! A fetch the gateway refuses (a timestamp outside its window, a
//! capability that does not verify) is answered with `n` copies of
//! [`Refused`], so that the requester can tell a refusal from an empty box.
//! Only the requester can read a reply, and every refusal of a kind gets
//! the same bytes whatever the box holds.
//!
//! ```text
//! Refused = 0x03 reason:u8 gateway_s:u64        (reason 1: time, 2: capability)
//! ```

use crate::Error;
use crate::dropbox::{Dropbox, verify_capability};
use crate::packet::SURB_LEN;
use sha2::{Digest, Sha256};

/// Largest stored ciphertext.
pub const MAX_STORED_LEN: usize = 1980;
/// Largest stored ciphertext of a store that carries a SURB-ack.
pub const MAX_ACKED_STORED_LEN: usize = MAX_STORED_LEN - 8 - SURB_LEN;
/// Largest stored ciphertext of a batched store (which carries no SURB:
/// one [`Request::AckBatch`] acknowledges up to [`BATCH_MAX`] of them).
/// Keeps the 16 bytes of spare room a `Store` keeps.
pub const MAX_BATCHED_STORED_LEN: usize = MAX_STORED_LEN - 16 - 1;
/// Batched stores one [`Request::AckBatch`] covers at most (its bitmap's bits).
pub const BATCH_MAX: usize = 32;
/// The longest a gateway is asked to wait for a batch's stragglers.
pub const MAX_BATCH_WAIT_MS: u32 = 60_000;
/// What a batch acknowledgement begins with ([`BatchAck`]).
pub const BATCH_ACK_PREFIX: &[u8] = b"umbra-batch-v1";
/// The body a gateway sends through a store's SURB once the message is durable.
pub const ACK_BODY: &[u8] = b"umbra-stored-v1";
/// What a refusal sent through a store's SURB begins with; one byte of
/// [`StoreRefused`] follows.
pub const REFUSED_PREFIX: &[u8] = b"umbra-refused-v1";

/// Why a dropbox gateway refused a store, as it tells the sender through
/// the store's SURB (the body is [`REFUSED_PREFIX`] and this byte; SURB
/// replies are padded to one size, so it looks like an ack on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreRefused {
    /// The box holds its gateway's `dropbox_max_messages` already.
    BoxFull = 1,
    /// The gateway's `storage_max_bytes` is reached.
    GatewayFull = 2,
    /// The gateway's disk is down to its reserve.
    DiskReserve = 3,
    /// The gateway's database cannot write at the moment.
    Unavailable = 4,
}

impl StoreRefused {
    /// The reply body.
    pub fn body(self) -> Vec<u8> {
        let mut b = REFUSED_PREFIX.to_vec();
        b.push(self as u8);
        b
    }

    /// The refusal a reply body carries, if it is one.
    pub fn from_body(b: &[u8]) -> Option<Self> {
        match b.strip_prefix(REFUSED_PREFIX)? {
            [1] => Some(Self::BoxFull),
            [2] => Some(Self::GatewayFull),
            [3] => Some(Self::DiskReserve),
            [4] => Some(Self::Unavailable),
            _ => None,
        }
    }
}
/// Seqs one listing reply carries at most.
pub const MAX_LISTING: usize = 250;
/// SURBs in a fetch request, hence replies per fetch.
pub const FETCH_SURBS: usize = 4;

const STORE: u8 = 1;
const FETCH: u8 = 2;
const DROP: u8 = 3;
const STORE_ACKED: u8 = 4;
const STORE_BATCHED: u8 = 5;
const ACK_BATCH: u8 = 6;

/// A request to a dropbox gateway. `Debug` shows no box id or capability.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// Store `ciphertext` in `dropbox`.
    Store {
        /// The box.
        dropbox: [u8; 32],
        /// End-to-end encrypted message.
        ciphertext: Vec<u8>,
    },
    /// Store `ciphertext` in `dropbox`, then send [`ACK_BODY`] through `surb`.
    StoreAcked {
        /// The box.
        dropbox: [u8; 32],
        /// End-to-end encrypted message.
        ciphertext: Vec<u8>,
        /// Epoch of the Sphinx keys the SURB was built with.
        reply_epoch: u64,
        /// The SURB-ack, [`SURB_LEN`] bytes.
        surb: Vec<u8>,
    },
    /// Fetch from a box.
    Fetch(FetchRequest),
    /// Drop cover: discard.
    Drop,
    /// Store `ciphertext` in `dropbox` as slot `slot` of batch `batch`; a
    /// later [`Request::AckBatch`] asks which slots are stored.
    StoreBatched {
        /// The box.
        dropbox: [u8; 32],
        /// The batch: random, chosen by the sender.
        batch: [u8; 16],
        /// Its place in the batch, below [`BATCH_MAX`].
        slot: u8,
        /// End-to-end encrypted message.
        ciphertext: Vec<u8>,
    },
    /// Once slots `0..count` of `batch` are durably stored, or `wait_ms`
    /// after this request arrived, send a [`BatchAck`] through `surb`.
    AckBatch {
        /// The batch.
        batch: [u8; 16],
        /// Slots sent, `1..=BATCH_MAX`.
        count: u8,
        /// How long to wait for slots still on their way, at most
        /// [`MAX_BATCH_WAIT_MS`].
        wait_ms: u32,
        /// Epoch of the Sphinx keys the SURB was built with.
        reply_epoch: u64,
        /// The SURB, [`SURB_LEN`] bytes.
        surb: Vec<u8>,
    },
}

/// What a gateway answers an [`Request::AckBatch`] with: the slots of the
/// batch it holds durably, and whether it refused any (then `refused` is
/// the [`StoreRefused`] reason of one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAck {
    /// The `count` the request carried.
    pub count: u8,
    /// Bit `i` (of byte `i / 8`, least significant first, as a big-endian
    /// u32 on the wire: bit `i` is `1 << i`) set: slot `i` is stored.
    pub stored: u32,
    /// A refusal among the batch's slots, if any.
    pub refused: Option<StoreRefused>,
}

impl BatchAck {
    /// The reply body.
    pub fn body(&self) -> Vec<u8> {
        let mut b = BATCH_ACK_PREFIX.to_vec();
        b.push(self.count);
        b.extend_from_slice(&self.stored.to_be_bytes());
        b.push(self.refused.map_or(0, |r| r as u8));
        b
    }

    /// The batch ack a reply body carries, if it is one.
    pub fn from_body(b: &[u8]) -> Option<Self> {
        let rest = b.strip_prefix(BATCH_ACK_PREFIX)?;
        let [count, s0, s1, s2, s3, refused] = rest else {
            return None;
        };
        let refused = match refused {
            0 => None,
            r => Some(StoreRefused::from_body(&[REFUSED_PREFIX, &[*r]].concat())?),
        };
        if *count == 0 || usize::from(*count) > BATCH_MAX {
            return None;
        }
        Some(Self {
            count: *count,
            stored: u32::from_be_bytes([*s0, *s1, *s2, *s3]),
            refused,
        })
    }
}

/// An anonymous fetch: a capability and the SURBs to answer through.
/// `Debug` shows no box id or capability.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// The box.
    pub dropbox: [u8; 32],
    /// Capability public key; hashes to `dropbox`.
    pub capability: [u8; 32],
    /// Signature over [`FetchRequest::signing_input`].
    pub signature: [u8; 64],
    /// Messages up to this sequence number were received: delete them.
    pub after_seq: u64,
    /// Answer with messages whose seq is above `max(after_seq, cursor)`.
    pub cursor: u64,
    /// The last reply is a [`Listing`] instead of a message.
    pub list: bool,
    /// When the client made the request, Unix ms.
    pub timestamp_ms: u64,
    /// Epoch of the Sphinx keys the SURBs were built with.
    pub reply_epoch: u64,
    /// SURBs, each [`SURB_LEN`] bytes.
    pub surbs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for FetchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchRequest")
            .field("after_seq", &self.after_seq)
            .field("reply_epoch", &self.reply_epoch)
            .field("surbs", &self.surbs.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Store { ciphertext, .. } => write!(f, "Store({} bytes)", ciphertext.len()),
            Request::StoreAcked { ciphertext, .. } => {
                write!(f, "StoreAcked({} bytes)", ciphertext.len())
            }
            Request::Fetch(r) => r.fmt(f),
            Request::Drop => f.write_str("Drop"),
            Request::StoreBatched {
                slot, ciphertext, ..
            } => write!(f, "StoreBatched(slot {slot}, {} bytes)", ciphertext.len()),
            Request::AckBatch { count, wait_ms, .. } => {
                write!(f, "AckBatch({count} slots, wait {wait_ms} ms)")
            }
        }
    }
}

impl FetchRequest {
    /// Builds and signs a request for `dropbox`.
    pub fn new_signed(
        dropbox: &Dropbox,
        after_seq: u64,
        timestamp_ms: u64,
        reply_epoch: u64,
        surbs: Vec<Vec<u8>>,
    ) -> Self {
        Self::new_signed_at(
            dropbox,
            after_seq,
            0,
            false,
            timestamp_ms,
            reply_epoch,
            surbs,
        )
    }

    /// Builds and signs a request answered from above `cursor`, with a
    /// listing if `list`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_signed_at(
        dropbox: &Dropbox,
        after_seq: u64,
        cursor: u64,
        list: bool,
        timestamp_ms: u64,
        reply_epoch: u64,
        surbs: Vec<Vec<u8>>,
    ) -> Self {
        let mut r = Self {
            dropbox: dropbox.id,
            capability: dropbox.capability.verifying_key().to_bytes(),
            signature: [0; 64],
            after_seq,
            cursor,
            list,
            timestamp_ms,
            reply_epoch,
            surbs,
        };
        r.signature = dropbox.sign(&r.signing_input());
        r
    }

    /// `"umbra-fetch-v2" || dropbox || after_seq || cursor || list || timestamp_ms || reply_epoch || SHA-256(surbs)`.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        for s in &self.surbs {
            h.update(s);
        }
        let mut v = b"umbra-fetch-v2".to_vec();
        v.extend_from_slice(&self.dropbox);
        v.extend_from_slice(&self.after_seq.to_be_bytes());
        v.extend_from_slice(&self.cursor.to_be_bytes());
        v.push(u8::from(self.list));
        v.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        v.extend_from_slice(&self.reply_epoch.to_be_bytes());
        v.extend_from_slice(&h.finalize());
        v
    }

    /// Whether the capability authorises this request.
    pub fn authorised(&self) -> bool {
        verify_capability(
            &self.dropbox,
            &self.capability,
            &self.signature,
            &self.signing_input(),
        )
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Decode("truncated message".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn end(&self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Decode("trailing bytes".into()))
        }
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
}

impl Request {
    /// Encodes the request.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut v = Vec::new();
        match self {
            Request::Store {
                dropbox,
                ciphertext,
            } => {
                if ciphertext.len() > MAX_STORED_LEN {
                    return Err(Error::InvalidArgument(format!(
                        "ciphertext of {} bytes exceeds {MAX_STORED_LEN}",
                        ciphertext.len()
                    )));
                }
                v.push(STORE);
                v.extend_from_slice(dropbox);
                v.extend_from_slice(&(ciphertext.len() as u16).to_be_bytes());
                v.extend_from_slice(ciphertext);
            }
            Request::StoreAcked {
                dropbox,
                ciphertext,
                reply_epoch,
                surb,
            } => {
                if ciphertext.len() > MAX_ACKED_STORED_LEN || surb.len() != SURB_LEN {
                    return Err(Error::InvalidArgument(format!(
                        "acked store: ciphertext of {} bytes (max {MAX_ACKED_STORED_LEN}), SURB of {}",
                        ciphertext.len(),
                        surb.len()
                    )));
                }
                v.push(STORE_ACKED);
                v.extend_from_slice(dropbox);
                v.extend_from_slice(&reply_epoch.to_be_bytes());
                v.extend_from_slice(surb);
                v.extend_from_slice(&(ciphertext.len() as u16).to_be_bytes());
                v.extend_from_slice(ciphertext);
            }
            Request::Fetch(f) => {
                if f.surbs.is_empty()
                    || f.surbs.len() > FETCH_SURBS
                    || f.surbs.iter().any(|s| s.len() != SURB_LEN)
                {
                    return Err(Error::InvalidArgument(
                        "fetch needs 1..=4 SURBs of SURB_LEN bytes".into(),
                    ));
                }
                v.push(FETCH);
                v.extend_from_slice(&f.dropbox);
                v.extend_from_slice(&f.capability);
                v.extend_from_slice(&f.signature);
                v.extend_from_slice(&f.after_seq.to_be_bytes());
                v.extend_from_slice(&f.cursor.to_be_bytes());
                v.push(u8::from(f.list));
                v.extend_from_slice(&f.timestamp_ms.to_be_bytes());
                v.extend_from_slice(&f.reply_epoch.to_be_bytes());
                v.push(f.surbs.len() as u8);
                for s in &f.surbs {
                    v.extend_from_slice(s);
                }
            }
            Request::Drop => v.push(DROP),
            Request::StoreBatched {
                dropbox,
                batch,
                slot,
                ciphertext,
            } => {
                if ciphertext.len() > MAX_BATCHED_STORED_LEN || usize::from(*slot) >= BATCH_MAX {
                    return Err(Error::InvalidArgument(format!(
                        "batched store: ciphertext of {} bytes (max {MAX_BATCHED_STORED_LEN}), slot {slot}",
                        ciphertext.len()
                    )));
                }
                v.push(STORE_BATCHED);
                v.extend_from_slice(dropbox);
                v.extend_from_slice(batch);
                v.push(*slot);
                v.extend_from_slice(&(ciphertext.len() as u16).to_be_bytes());
                v.extend_from_slice(ciphertext);
            }
            Request::AckBatch {
                batch,
                count,
                wait_ms,
                reply_epoch,
                surb,
            } => {
                if *count == 0
                    || usize::from(*count) > BATCH_MAX
                    || *wait_ms > MAX_BATCH_WAIT_MS
                    || surb.len() != SURB_LEN
                {
                    return Err(Error::InvalidArgument(format!(
                        "batch ack request: count {count}, wait {wait_ms} ms, SURB of {}",
                        surb.len()
                    )));
                }
                v.push(ACK_BATCH);
                v.extend_from_slice(batch);
                v.push(*count);
                v.extend_from_slice(&wait_ms.to_be_bytes());
                v.extend_from_slice(&reply_epoch.to_be_bytes());
                v.extend_from_slice(surb);
            }
        }
        Ok(v)
    }

    /// Decodes a request; any malformation is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<Self, Error> {
        let mut r = Reader(b);
        match r.u8()? {
            STORE => {
                let dropbox = r.arr()?;
                let len = usize::from(r.u16()?);
                if len > MAX_STORED_LEN {
                    return Err(Error::Decode("stored message too long".into()));
                }
                let ciphertext = r.take(len)?.to_vec();
                r.end()?;
                Ok(Request::Store {
                    dropbox,
                    ciphertext,
                })
            }
            STORE_ACKED => {
                let dropbox = r.arr()?;
                let reply_epoch = r.u64()?;
                let surb = r.take(SURB_LEN)?.to_vec();
                let len = usize::from(r.u16()?);
                if len > MAX_ACKED_STORED_LEN {
                    return Err(Error::Decode("stored message too long".into()));
                }
                let ciphertext = r.take(len)?.to_vec();
                r.end()?;
                Ok(Request::StoreAcked {
                    dropbox,
                    ciphertext,
                    reply_epoch,
                    surb,
                })
            }
            STORE_BATCHED => {
                let dropbox = r.arr()?;
                let batch = r.arr()?;
                let slot = r.u8()?;
                if usize::from(slot) >= BATCH_MAX {
                    return Err(Error::Decode("batch slot out of range".into()));
                }
                let len = usize::from(r.u16()?);
                if len > MAX_BATCHED_STORED_LEN {
                    return Err(Error::Decode("stored message too long".into()));
                }
                let ciphertext = r.take(len)?.to_vec();
                r.end()?;
                Ok(Request::StoreBatched {
                    dropbox,
                    batch,
                    slot,
                    ciphertext,
                })
            }
            ACK_BATCH => {
                let batch = r.arr()?;
                let count = r.u8()?;
                if count == 0 || usize::from(count) > BATCH_MAX {
                    return Err(Error::Decode("batch count out of range".into()));
                }
                let wait_ms = r.u32()?;
                if wait_ms > MAX_BATCH_WAIT_MS {
                    return Err(Error::Decode("batch wait too long".into()));
                }
                let reply_epoch = r.u64()?;
                let surb = r.take(SURB_LEN)?.to_vec();
                r.end()?;
                Ok(Request::AckBatch {
                    batch,
                    count,
                    wait_ms,
                    reply_epoch,
                    surb,
                })
            }
            FETCH => {
                let dropbox = r.arr()?;
                let capability = r.arr()?;
                let signature = r.arr()?;
                let after_seq = r.u64()?;
                let cursor = r.u64()?;
                let list = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(Error::Decode("list flag not 0 or 1".into())),
                };
                let timestamp_ms = r.u64()?;
                let reply_epoch = r.u64()?;
                let n = usize::from(r.u8()?);
                if n == 0 || n > FETCH_SURBS {
                    return Err(Error::Decode(format!("fetch with {n} SURBs")));
                }
                let surbs = (0..n)
                    .map(|_| r.take(SURB_LEN).map(<[u8]>::to_vec))
                    .collect::<Result<_, _>>()?;
                r.end()?;
                Ok(Request::Fetch(FetchRequest {
                    dropbox,
                    capability,
                    signature,
                    after_seq,
                    cursor,
                    list,
                    timestamp_ms,
                    reply_epoch,
                    surbs,
                }))
            }
            DROP => Ok(Request::Drop),
            t => Err(Error::Decode(format!("unknown request type {t}"))),
        }
    }
}

/// One of the replies to a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReply {
    /// Sequence numbers of every message this fetch returns, ascending.
    pub seqs: Vec<u64>,
    /// Messages still in the box after these.
    pub remaining: u32,
    /// This reply's message, if its slot has one.
    pub message: Option<(u64, Vec<u8>)>,
}

/// The seqs of a box above a fetch's cursor: the last reply of a fetch
/// with `list = 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Up to [`MAX_LISTING`] seqs, ascending.
    pub seqs: Vec<u64>,
    /// Messages in the box after those.
    pub remaining: u32,
}

/// Why a gateway refused a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// `timestamp_ms` is further from the gateway's clock than its window
    /// (`fetch_max_age_secs`).
    Time,
    /// The capability does not hash to the box id, or the signature does
    /// not verify.
    Capability,
}

/// Every reply to a refused fetch: why, and the gateway's clock (whole
/// seconds) when it refused, from which the requester learns how far off
/// its own clock is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: RefusalReason,
    /// The gateway's clock, Unix seconds.
    pub gateway_s: u64,
}

/// Bytes of an encoded [`Refused`].
pub const REFUSED_LEN: usize = 10;

impl Refused {
    /// Encodes the refusal.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![
            3u8,
            match self.reason {
                RefusalReason::Time => 1,
                RefusalReason::Capability => 2,
            },
        ];
        v.extend_from_slice(&self.gateway_s.to_be_bytes());
        v
    }

    /// Decodes a refusal; nothing may follow it.
    pub fn decode(b: &[u8]) -> Result<Self, Error> {
        let mut r = Reader(b);
        if r.u8()? != 3 {
            return Err(Error::Decode("not a refusal".into()));
        }
        let reason = match r.u8()? {
            1 => RefusalReason::Time,
            2 => RefusalReason::Capability,
            x => return Err(Error::Decode(format!("unknown refusal reason {x}"))),
        };
        let gateway_s = r.u64()?;
        r.end()?;
        Ok(Self { reason, gateway_s })
    }
}

impl Listing {
    /// Encodes the listing.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if self.seqs.len() > MAX_LISTING {
            return Err(Error::InvalidArgument("listing too long".into()));
        }
        let mut v = vec![2u8];
        v.extend_from_slice(&(self.seqs.len() as u16).to_be_bytes());
        for s in &self.seqs {
            v.extend_from_slice(&s.to_be_bytes());
        }
        v.extend_from_slice(&self.remaining.to_be_bytes());
        Ok(v)
    }

    /// Decodes a listing; seqs must ascend.
    pub fn decode(b: &[u8]) -> Result<Self, Error> {
        let mut r = Reader(b);
        if r.u8()? != 2 {
            return Err(Error::Decode("not a listing".into()));
        }
        let n = usize::from(r.u16()?);
        if n > MAX_LISTING {
            return Err(Error::Decode("listing too long".into()));
        }
        let seqs = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        if seqs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Decode("listing not ascending".into()));
        }
        let remaining = r.u32()?;
        r.end()?;
        Ok(Self { seqs, remaining })
    }
}

impl FetchReply {
    /// Encodes the reply.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if self.seqs.len() > FETCH_SURBS {
            return Err(Error::InvalidArgument("too many seqs".into()));
        }
        let mut v = vec![1u8, self.seqs.len() as u8];
        for s in &self.seqs {
            v.extend_from_slice(&s.to_be_bytes());
        }
        v.extend_from_slice(&self.remaining.to_be_bytes());
        match &self.message {
            Some((seq, ct)) => {
                if ct.len() > MAX_STORED_LEN {
                    return Err(Error::InvalidArgument("stored message too long".into()));
                }
                v.push(1);
                v.extend_from_slice(&seq.to_be_bytes());
                v.extend_from_slice(&(ct.len() as u16).to_be_bytes());
                v.extend_from_slice(ct);
            }
            None => v.push(0),
        }
        Ok(v)
    }

    /// Decodes a reply.
    pub fn decode(b: &[u8]) -> Result<Self, Error> {
        let mut r = Reader(b);
        if r.u8()? != 1 {
            return Err(Error::Decode("not a fetch reply".into()));
        }
        let n = usize::from(r.u8()?);
        if n > FETCH_SURBS {
            return Err(Error::Decode("too many seqs".into()));
        }
        let seqs = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let remaining = r.u32()?;
        let message = match r.u8()? {
            0 => None,
            1 => {
                let seq = r.u64()?;
                let len = usize::from(r.u16()?);
                if len > MAX_STORED_LEN {
                    return Err(Error::Decode("stored message too long".into()));
                }
                Some((seq, r.take(len)?.to_vec()))
            }
            _ => return Err(Error::Decode("bad slot flag".into())),
        };
        Ok(Self {
            seqs,
            remaining,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropbox::PairSecret;
    use crate::packet::MAX_MESSAGE_LEN;
    use proptest::prelude::*;

    fn fetch() -> FetchRequest {
        let b = PairSecret::from_bytes([1; 32]).dropbox(&[1; 32], &[2; 32], 3);
        FetchRequest::new_signed(&b, 5, 1000, 9, vec![vec![7u8; SURB_LEN]; FETCH_SURBS])
    }

    #[test]
    fn largest_messages_fit_one_packet() {
        let store = Request::Store {
            dropbox: [0; 32],
            ciphertext: vec![0; MAX_STORED_LEN],
        }
        .encode()
        .unwrap();
        assert!(store.len() <= MAX_MESSAGE_LEN);
        let acked = Request::StoreAcked {
            dropbox: [0; 32],
            ciphertext: vec![0; MAX_ACKED_STORED_LEN],
            reply_epoch: 1,
            surb: vec![0; SURB_LEN],
        }
        .encode()
        .unwrap();
        assert!(acked.len() <= MAX_MESSAGE_LEN);
        assert!(Request::Fetch(fetch()).encode().unwrap().len() <= MAX_MESSAGE_LEN);
        let listing = Listing {
            seqs: (1..=MAX_LISTING as u64).collect(),
            remaining: 9,
        };
        assert!(listing.encode().unwrap().len() <= MAX_MESSAGE_LEN);
        assert_eq!(
            Listing::decode(&listing.encode().unwrap()).unwrap(),
            listing
        );
        let mut bad = listing.encode().unwrap();
        bad[3..11].copy_from_slice(&5u64.to_be_bytes()); // 5, 2, 3…: not ascending
        assert!(Listing::decode(&bad).is_err());
        let reply = FetchReply {
            seqs: vec![1; 4],
            remaining: 0,
            message: Some((1, vec![0; MAX_STORED_LEN])),
        };
        assert!(reply.encode().unwrap().len() <= MAX_MESSAGE_LEN);
        let batched = Request::StoreBatched {
            dropbox: [0; 32],
            batch: [7; 16],
            slot: (BATCH_MAX - 1) as u8,
            ciphertext: vec![0; MAX_BATCHED_STORED_LEN],
        }
        .encode()
        .unwrap();
        assert_eq!(batched.len(), store.len(), "the same room as a Store");
        let ask = Request::AckBatch {
            batch: [7; 16],
            count: BATCH_MAX as u8,
            wait_ms: MAX_BATCH_WAIT_MS,
            reply_epoch: 3,
            surb: vec![0; SURB_LEN],
        }
        .encode()
        .unwrap();
        assert!(ask.len() <= MAX_MESSAGE_LEN);
    }

    #[test]
    fn batched_stores_and_batch_acks_round_trip_and_refuse_what_is_out_of_range() {
        let store = Request::StoreBatched {
            dropbox: [1; 32],
            batch: [2; 16],
            slot: 31,
            ciphertext: vec![3; 100],
        };
        assert_eq!(Request::decode(&store.encode().unwrap()).unwrap(), store);
        let mut bad = store.encode().unwrap();
        bad[49] = 32; // slot 32
        assert!(Request::decode(&bad).is_err());
        let ask = Request::AckBatch {
            batch: [2; 16],
            count: 5,
            wait_ms: 1500,
            reply_epoch: 9,
            surb: vec![4; SURB_LEN],
        };
        let enc = ask.encode().unwrap();
        assert_eq!(Request::decode(&enc).unwrap(), ask);
        for (at, v) in [(17, 0u8), (17, 33)] {
            let mut bad = enc.clone();
            bad[at] = v;
            assert!(Request::decode(&bad).is_err(), "count {v}");
        }
        let mut long_wait = enc.clone();
        long_wait[18..22].copy_from_slice(&(MAX_BATCH_WAIT_MS + 1).to_be_bytes());
        assert!(Request::decode(&long_wait).is_err());
        assert!(Request::decode(&[enc.as_slice(), &[0]].concat()).is_err());
        let a = BatchAck {
            count: 5,
            stored: 0b10111,
            refused: Some(StoreRefused::BoxFull),
        };
        assert_eq!(BatchAck::from_body(&a.body()), Some(a));
        let none = BatchAck { refused: None, ..a };
        assert_eq!(BatchAck::from_body(&none.body()), Some(none));
        // Not a batch ack: an ordinary ack, a refusal, junk, a bad reason.
        assert_eq!(BatchAck::from_body(ACK_BODY), None);
        assert_eq!(BatchAck::from_body(&StoreRefused::BoxFull.body()), None);
        let mut junk = a.body();
        *junk.last_mut().unwrap() = 9;
        assert_eq!(BatchAck::from_body(&junk), None);
        assert_eq!(BatchAck::from_body(&a.body()[..19]), None);
    }

    #[test]
    fn a_refusal_is_told_apart_from_an_ack_and_from_junk() {
        for r in [
            StoreRefused::BoxFull,
            StoreRefused::GatewayFull,
            StoreRefused::DiskReserve,
            StoreRefused::Unavailable,
        ] {
            assert_eq!(StoreRefused::from_body(&r.body()), Some(r));
        }
        assert_eq!(StoreRefused::from_body(ACK_BODY), None);
        assert_eq!(StoreRefused::from_body(REFUSED_PREFIX), None);
        let mut odd = REFUSED_PREFIX.to_vec();
        odd.extend([9, 9]);
        assert_eq!(StoreRefused::from_body(&odd), None);
        odd.truncate(REFUSED_PREFIX.len() + 1);
        assert_eq!(StoreRefused::from_body(&odd), None);
    }

    #[test]
    fn a_refusal_is_told_from_every_other_reply() {
        for reason in [RefusalReason::Time, RefusalReason::Capability] {
            let r = Refused {
                reason,
                gateway_s: 1_700_000_000,
            };
            let b = r.encode();
            assert_eq!(b.len(), REFUSED_LEN);
            assert_eq!(Refused::decode(&b).unwrap(), r);
            assert!(FetchReply::decode(&b).is_err());
            assert!(Listing::decode(&b).is_err());
        }
        let empty = FetchReply {
            seqs: vec![],
            remaining: 0,
            message: None,
        };
        assert!(Refused::decode(&empty.encode().unwrap()).is_err());
        let listing = Listing {
            seqs: vec![],
            remaining: 0,
        };
        assert!(Refused::decode(&listing.encode().unwrap()).is_err());
        assert!(Refused::decode(&[3, 9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Refused::decode(&[3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn fetch_signature_binds_every_field() {
        let f = fetch();
        assert!(f.authorised());
        let mut g = f.clone();
        g.after_seq += 1;
        assert!(!g.authorised());
        let mut g = f.clone();
        g.cursor += 1;
        assert!(!g.authorised());
        let mut g = f.clone();
        g.list = !g.list;
        assert!(!g.authorised());
        let mut g = f.clone();
        g.surbs[0][0] ^= 1;
        assert!(!g.authorised());
        let mut g = f.clone();
        g.dropbox[0] ^= 1;
        assert!(!g.authorised());
    }

    proptest! {
        #[test]
        fn round_trips(ct in proptest::collection::vec(any::<u8>(), 0..MAX_STORED_LEN), seq in any::<u64>(), rem in any::<u32>()) {
            let s = Request::Store { dropbox: [3; 32], ciphertext: ct.clone() };
            prop_assert_eq!(Request::decode(&s.encode().unwrap()).unwrap(), s);
            let a = Request::StoreAcked {
                dropbox: [4; 32],
                ciphertext: ct[..ct.len().min(MAX_ACKED_STORED_LEN)].to_vec(),
                reply_epoch: seq,
                surb: vec![9; SURB_LEN],
            };
            prop_assert_eq!(Request::decode(&a.encode().unwrap()).unwrap(), a);
            let f = Request::Fetch(fetch());
            prop_assert_eq!(Request::decode(&f.encode().unwrap()).unwrap(), f);
            let b = PairSecret::from_bytes([1; 32]).dropbox(&[1; 32], &[2; 32], 3);
            let g = Request::Fetch(FetchRequest::new_signed_at(&b, 5, seq, true, 1, 2, vec![vec![7u8; SURB_LEN]; 2]));
            prop_assert_eq!(Request::decode(&g.encode().unwrap()).unwrap(), g);
            let r = FetchReply { seqs: vec![seq], remaining: rem, message: Some((seq, ct)) };
            prop_assert_eq!(FetchReply::decode(&r.encode().unwrap()).unwrap(), r);
        }

        #[test]
        fn truncations_and_garbage_are_errors(cut in 0usize..1700, junk in proptest::collection::vec(any::<u8>(), 0..2100)) {
            let f = Request::Fetch(fetch()).encode().unwrap();
            if cut < f.len() {
                prop_assert!(Request::decode(&f[..cut]).is_err());
            }
            let _ = Request::decode(&junk);
            let _ = FetchReply::decode(&junk);
        }
    }
}
